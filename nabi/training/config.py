"""The training configuration: every knob of ``nabi train``, and TOML files that set them."""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..optim import RENAMED_SCHEDULES

SCHEDULES = ("constant", "step", "cosine", "warmup_cosine", "linear_step", "one_cycle")
ONE_CYCLE_RISE = 0.3                   # one_cycle's rising share of the run when warmup_fraction is not given
NORMALIZATIONS = ("unit", "pixel256", "dataset", "imagenet")
# Online augmentation levels (``nabi.data.prepare.augmentation`` builds each).
AUGMENTS = ("none", "flip", "standard", "strong", "crop_flip_jitter")
BACKGROUND_KINDS = ("split", "merge")
# Names that were renamed: the old ones are still accepted, with a FutureWarning, in TOML files, on the
# command line and in recipes, but no help text lists them.
RENAMED = {
    "schedule": RENAMED_SCHEDULES,
    "normalize": {"seed2019": "pixel256"},
    "recipe": {"seed2019": "alexnet336-2019"},
}


def renamed_value(key: str):
    """An argparse ``type`` for the flag of setting ``key``: maps an old name to the current one (warning)
    before argparse checks ``choices``, so the choices list only current names."""
    return lambda value: current_name(key, value)


def current_name(key: str, value):
    """``value`` of setting ``key`` under its current name; an old name warns (FutureWarning) and is mapped."""
    new = RENAMED.get(key, {}).get(value)
    if new is None:
        return value
    warnings.warn(f"{key} {value!r} is now called {new!r}; the old name will be removed", FutureWarning,
                  stacklevel=3)
    return new


@dataclass
class TrainConfig:
    """Every knob of ``nabi train``; a TOML file may set any of them (same names)."""
    data: str = "embedded:mnist5k"
    model: str = "lenet5"
    model_args: dict = field(default_factory=dict)
    init: str | None = None            # start from these weights (matching names and shapes)
    freeze_until: str | None = None    # freeze the stages up to and including this one (nabi.training.fine_tune)
    layer_lr_decay: float = 1.0        # the head trains at lr, each stage below at D times the one above
    epochs: int = 10
    iterations: int | None = None
    batch_size: int = 64
    optimizer: str = "adam"            # sgd | adam | adamw
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"         # constant | step | cosine | warmup_cosine | linear_step | one_cycle
    schedule_unit: str = "iteration"
    warmup: int = 0                    # warm-up iterations of warmup_cosine
    warmup_fraction: float | None = None   # or the warm-up (one_cycle: the rise) as a share of the run, in [0, 1)
    step_size: int = 10
    gamma: float = 0.1
    label_smoothing: float = 0.0
    clip_norm: float | None = None
    fused_sgd: bool = False            # plain SGD applied inside backward (no gradient buffers)
    precision: str = "float32"         # float32 | float16 (mixed precision: float32 masters, loss scaling)
    image_size: int | None = None      # default: the model's input size
    fit: str = "crop"                  # crop | squash | pad: how a photo is brought to image_size when read
    channels: int | None = None        # default: the model's input channels
    normalize: str = "unit"            # unit (pixel/255) | pixel256 (pixel/256) | dataset (mean/std) | imagenet
    augment: str = "none"              # none | flip | standard | strong | crop_flip_jitter
    val_ratio: float = 0.1
    test_ratio: float = 0.1
    exclude: list = field(default_factory=list)
    background_kinds: str = "split"    # split: background/<kind>/ folders are classes of their own | merge
    strict: bool = False
    seed: int = 0
    device: str = "cpu"
    workers: int = 0
    cache: bool = False                # keep decoded images in memory (uint8) after the first epoch
    out: str = "runs/train"
    checkpoint_every: int | None = None
    keep_last: int = 1                 # checkpoints a finished run keeps (while it runs, at least 2)
    early_stopping: int | None = None
    progress: bool = True

    def __post_init__(self):
        self.schedule = current_name("schedule", self.schedule)
        self.normalize = current_name("normalize", self.normalize)
        if self.background_kinds not in BACKGROUND_KINDS:
            raise ValueError(f"background_kinds must be one of {', '.join(BACKGROUND_KINDS)}; "
                             f"got {self.background_kinds!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def load_toml(path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config file {path} is not valid TOML: {e}") from None
