"""From a data argument and a config to datasets, loaders, a model and an optimiser.

The command line and the experiment runner share this so that a run folder
always says how to rebuild its model: ``model.json`` (the weights' sidecar)
holds the architecture and its arguments, the class names, the input size and
the normalisation, and ``load_run`` rebuilds the model from it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from . import __version__, backend, io
from . import data as D

EMBEDDED_PREFIX = "embedded:"


@dataclass
class TrainConfig:
    """Every knob of ``nabi train``; a TOML file may set any of them (same names)."""
    data: str = "embedded:mnist5k"
    model: str = "lenet5"
    model_args: dict = field(default_factory=dict)
    epochs: int = 10
    iterations: int | None = None
    batch_size: int = 64
    optimizer: str = "adam"            # sgd | adam | adamw
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"         # constant | step | cosine | warmup_cosine | seed2019
    schedule_unit: str = "iteration"
    warmup: int = 0
    step_size: int = 10
    gamma: float = 0.1
    label_smoothing: float = 0.0
    clip_norm: float | None = None
    fused_sgd: bool = False            # plain SGD applied inside backward (no gradient buffers)
    precision: str = "float32"         # float32 | float16 (mixed precision: float32 masters, loss scaling)
    image_size: int | None = None      # default: the model's input size
    channels: int | None = None        # default: the model's input channels
    normalize: str = "unit"            # unit (pixel/255) | seed2019 (pixel/256) | dataset (mean/std) | imagenet
    augment: str = "none"              # none | flip | standard | strong
    val_ratio: float = 0.1
    test_ratio: float = 0.1
    exclude: list = field(default_factory=list)
    strict: bool = False
    seed: int = 0
    device: str = "cpu"
    workers: int = 0
    cache: bool = False                # keep decoded images in memory (uint8) after the first epoch
    out: str = "runs/train"
    checkpoint_every: int | None = None
    keep_last: int = 3
    early_stopping: int | None = None
    progress: bool = True

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


# -- data --------------------------------------------------------------------------------------------
class _Pad:
    """Zero-pad (C, h, w) to (C, H, W), centred (MNIST's 28×28 into LeNet's 32×32)."""

    def __init__(self, hw):
        self.hw = hw

    def __call__(self, x, rng=None):
        H, W = self.hw
        h, w = x.shape[1:]
        if (h, w) == (H, W):
            return x
        if h > H or w > W:
            return D.Resize((H, W))(x)
        out = np.zeros((x.shape[0], H, W), dtype=x.dtype)
        t, l = (H - h) // 2, (W - w) // 2
        out[:, t:t + h, l:l + w] = x
        return out


def normalization_transform(spec: dict):
    kind = spec["kind"]
    if kind == "unit":
        return None
    if kind == "seed2019":
        return D.SeedScale()
    return D.Normalize(spec["mean"], spec["std"])


def augmentation(kind: str, hw):
    H, W = hw
    if kind == "none":
        return []
    if kind == "flip":
        return [D.RandomHorizontalFlip()]
    if kind == "standard":
        return [D.RandomCrop((H, W), padding=max(1, H // 8)), D.RandomHorizontalFlip()]
    if kind == "strong":
        return [D.RandomResizedCrop((H, W), scale=(0.5, 1.0)), D.RandomHorizontalFlip(), D.RandomRotation(10),
                D.ColorJitter(0.3, 0.3, 0.3)]
    raise ValueError(f"augment must be one of none, flip, standard, strong; got {kind!r}")


class _Transformed:
    """A dataset view that applies ``transforms`` (each ``t(x, rng)``) to every example."""

    def __init__(self, base, transforms):
        self.base, self.transforms = base, [t for t in transforms if t is not None]
        self.classes = getattr(base, "classes", None)
        self.transform = self._apply if self.transforms else None

    def __len__(self):
        return len(self.base)

    def _apply(self, x, rng):
        for t in self.transforms:
            x = t(x, rng)
        return x

    def get(self, i, rng=None):
        x, y = self.base[i]
        return (self._apply(x, rng) if self.transforms else x), y

    def __getitem__(self, i):
        return self.get(i, np.random.default_rng(i))

    @property
    def targets(self):
        return _targets(self.base)


class _Cached:
    """Decode each image once and keep it in memory as uint8 (images from ``ImageFolder`` are pixel/255,
    so the round trip is exact); later epochs index the cache. Thread-safe for the loader's workers."""

    def __init__(self, base):
        self.base = base
        self.classes = getattr(base, "classes", None)
        self._store = [None] * len(base)
        self._labels = [None] * len(base)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        hit = self._store[i]
        if hit is None:
            x, y = self.base[i]
            q = np.round(np.asarray(x) * 255.0)
            if np.abs(q / 255.0 - x).max() > 1e-6:     # not pixel/255 data: cache as it is
                hit = np.asarray(x, np.float32)
            else:
                hit = q.astype(np.uint8)
            self._store[i], self._labels[i] = hit, y
        y = self._labels[i]
        return (hit.astype(np.float32) / 255.0 if hit.dtype == np.uint8 else hit), y

    @property
    def targets(self):
        return _targets(self.base)


def _targets(ds):
    if hasattr(ds, "targets"):
        return np.asarray(ds.targets)
    return np.asarray([ds[i][1] for i in range(len(ds))])


def load_datasets(data: str, image_size=None, channels=3, val_ratio=0.1, test_ratio=0.1, seed=0, exclude=(),
                  strict=False, classes=None):
    """``{'train', 'val', 'test', 'classes', 'source'}`` from a folder or ``embedded:NAME``.

    A folder with ``train/`` (and optionally ``val/``, ``test/``) is used as it
    is; any other folder is one class per sub-folder, split by ratio
    (stratified, seeded). Missing val/test parts are split off ``train``.
    """
    if data.startswith(EMBEDDED_PREFIX):
        name = data[len(EMBEDDED_PREFIX):]
        full = D.embedded_dataset(name)
        parts = _split(full, val_ratio, test_ratio, seed)
        parts.update(classes=list(full.classes), source=data)
        return parts
    root = Path(data)
    if not root.exists():
        raise FileNotFoundError(f"data folder {root} does not exist (give a folder with one sub-folder per class, "
                                f"or {EMBEDDED_PREFIX}mnist5k)")
    splits = D.find_splits(root)
    kw = dict(image_size=image_size, channels=channels, strict=strict, exclude=tuple(exclude))
    if splits:
        train = D.ImageFolder(splits["train"], classes=classes, **kw)
        _verify(train, strict)
        cls = list(train.classes)
        val = D.ImageFolder(splits["val"], classes=cls, **kw) if "val" in splits else None
        test = D.ImageFolder(splits["test"], classes=cls, **kw) if "test" in splits else None
        for part in (val, test):
            if part is not None:
                _verify(part, strict)
        out = {"train": train, "val": val, "test": test}
        if val is None and val_ratio > 0:
            idx = D.stratified_split(train.targets, (1 - val_ratio, val_ratio), seed)
            out["train"], out["val"] = D.Subset(train, idx[0]), D.Subset(train, idx[1])
        out.update(classes=cls, source=str(root))
        return out
    full = D.ImageFolder(root, classes=classes, **kw)
    _verify(full, strict)
    parts = _split(full, val_ratio, test_ratio, seed)
    parts.update(classes=list(full.classes), source=str(root))
    return parts


def _verify(folder, strict):
    folder.verify()
    if len(folder) == 0:
        raise ValueError(f"no readable images in {folder.root}")


def _split(full, val_ratio, test_ratio, seed):
    ratios = [1 - val_ratio - test_ratio]
    names = ["train"]
    for name, r in (("val", val_ratio), ("test", test_ratio)):
        if r > 0:
            ratios.append(r)
            names.append(name)
    if ratios[0] <= 0:
        raise ValueError(f"val_ratio + test_ratio must be below 1, got {val_ratio} + {test_ratio}")
    if len(ratios) == 1:
        return {"train": full, "val": None, "test": None}
    idx = D.stratified_split(_targets(full), tuple(ratios), seed)
    out = {"train": None, "val": None, "test": None}
    for name, ix in zip(names, idx):
        out[name] = D.Subset(full, ix)
    return out


def dataset_mean_std(ds, limit=2000, seed=0):
    """Per-channel mean and std over up to ``limit`` examples."""
    n = len(ds)
    idx = np.random.default_rng(seed).permutation(n)[:limit]
    xs = np.stack([ds[int(i)][0] for i in idx]).astype(np.float64)
    return xs.mean(axis=(0, 2, 3)).tolist(), (xs.std(axis=(0, 2, 3)) + 1e-8).tolist()


def normalization_spec(kind: str, train_ds=None, channels=3) -> dict:
    if kind in ("unit", "seed2019"):
        return {"kind": kind}
    if kind == "imagenet":
        if channels != 3:
            raise ValueError("normalize='imagenet' needs 3 channels")
        return {"kind": kind, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    if kind == "dataset":
        mean, std = dataset_mean_std(train_ds)
        return {"kind": kind, "mean": mean, "std": std}
    raise ValueError(f"normalize must be one of unit, seed2019, dataset, imagenet; got {kind!r}")


def eval_transforms(input_hw, norm_spec):
    return [_Pad(input_hw), normalization_transform(norm_spec)]


# -- model -------------------------------------------------------------------------------------------
def build_model(name: str, num_classes: int, model_args=None, seed=None):
    from . import models
    rng_seed = backend.new_rng(seed) if seed is not None else None
    args = dict(model_args or {})
    if rng_seed is not None:
        backend.seed(int(rng_seed.integers(2**63 - 1)))
    return models.get(name, num_classes=num_classes, **args)


def model_metadata(model, classes, norm_spec, config=None) -> dict:
    arch = getattr(model, "arch", None) or {"name": type(model).__name__, "kwargs": {}}
    return {"format": "nabi-model", "nabi_version": __version__, "arch": arch, "classes": list(classes),
            "input_size": list(model_input_size(model)), "normalization": norm_spec, "config": config or {}}


def set_input_size(model, size: int) -> int:
    """Train a size-agnostic model (global pooling before its classifier) at ``size``×``size``.

    A probe forward on zeros checks that the network accepts it; one that cannot (a fixed
    ``Linear`` after the convolutions, a map that vanishes) is a ``ValueError`` naming the model.
    """
    C = model_input_size(model)[0]
    xp = backend.array_module(model.device)
    was_training = model.training
    model.eval()
    try:
        model(xp.zeros((1, C, size, size), dtype=backend.get_default_dtype()))
    except ValueError as e:
        name = (getattr(model, "arch", None) or {}).get("name", type(model).__name__)
        raise ValueError(f"--image-size {size}: {name} cannot take {size}×{size} inputs (it is built for "
                         f"{model_input_size(model)[1]}×{model_input_size(model)[2]}): {e}") from None
    finally:
        model.train(was_training)
    model.input_size = (C, size, size)
    return size


def model_input_size(model):
    size = getattr(model, "input_size", None)
    if size is None:
        raise ValueError(f"model {type(model).__name__} has no input_size; set model.input_size = (C, H, W)")
    return tuple(int(s) for s in size)


def make_optimizer(cfg: TrainConfig, model):
    from . import optim
    params = model.named_parameters()
    if cfg.optimizer == "sgd":
        return optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                         nesterov=cfg.nesterov)
    if cfg.optimizer == "adam":
        return optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer must be sgd, adam or adamw; got {cfg.optimizer!r}")


def make_schedule(cfg: TrainConfig, optimizer, steps_per_epoch: int):
    from . import optim
    total = cfg.iterations or cfg.epochs * steps_per_epoch
    if cfg.schedule_unit == "epoch":
        total = cfg.epochs
    name = cfg.schedule
    if name == "constant":
        return None
    if name == "step":
        return optim.make_schedule("step", optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if name == "cosine":
        return optim.make_schedule("cosine", optimizer, total_steps=total)
    if name == "warmup_cosine":
        return optim.make_schedule("warmup_cosine", optimizer, warmup_steps=cfg.warmup, total_steps=total)
    if name == "seed2019":
        return optim.make_schedule("seed2019", optimizer, total_steps=total)
    raise ValueError(f"schedule must be constant, step, cosine, warmup_cosine or seed2019; got {name!r}")


# -- loading a run -------------------------------------------------------------------------------------
def find_weights(run) -> Path:
    """A run folder (its best, else final weights) or a ``.safetensors`` file."""
    run = Path(run)
    if run.is_file():
        return run
    if not run.exists():
        raise FileNotFoundError(f"run {run} does not exist")
    for name in ("best.safetensors", "model.safetensors"):
        if (run / name).is_file():
            return run / name
    raise FileNotFoundError(f"{run} holds no best.safetensors or model.safetensors: is it a nabi run folder?")


def load_run(run, device="cpu"):
    """Rebuild the model a run saved: ``(model, metadata)``; the model is in eval mode."""
    path = find_weights(run)
    state, meta = io.load_weights(path)
    if meta.get("format") != "nabi-model" or "arch" not in meta:
        raise ValueError(f"{path} has no nabi model sidecar ({io.sidecar_path(path)}) naming its architecture")
    from . import models
    arch = meta["arch"]
    model = models.get(arch["name"], **arch.get("kwargs", {}))
    model.load_state_dict(state)
    model.to(device)
    model.eval()
    return model, meta


def write_config(out_dir, cfg: TrainConfig, extra=None):
    d = cfg.to_dict()
    d.update(extra or {})
    io.atomic_write_json(Path(out_dir) / "config.json", d)
    return d


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def run_training(cfg: TrainConfig, resume=False, log=print):
    """Train as ``cfg`` says; writes the run folder; returns ``(trainer, parts)``."""
    from .layers import CrossEntropyLoss
    from .train import Trainer
    backend.check_device(cfg.device)
    if cfg.device == "gpu":
        backend.array_module("gpu")
    out = Path(cfg.out)
    Trainer._check_writable(out)
    # Build the model first (it fixes the input size), then the data.
    probe_classes = None
    model_args = dict(cfg.model_args)
    parts = load_datasets(cfg.data, image_size=None, channels=3, val_ratio=cfg.val_ratio,
                          test_ratio=cfg.test_ratio, seed=cfg.seed, exclude=cfg.exclude, strict=cfg.strict) \
        if cfg.data.startswith(EMBEDDED_PREFIX) else None
    if parts is not None:
        probe_classes = parts["classes"]
    if probe_classes is None:
        folder_classes = _folder_classes(cfg.data, cfg.exclude)
        probe_classes = folder_classes
    if len(probe_classes) < 2:
        raise ValueError(f"{cfg.data}: need at least two classes, found {probe_classes}")
    model = build_model(cfg.model, len(probe_classes), model_args, seed=cfg.seed)
    C, H, W = model_input_size(model)
    if cfg.image_size and (cfg.image_size, cfg.image_size) != (H, W):
        H = W = set_input_size(model, cfg.image_size)
    channels = cfg.channels or C
    size = cfg.image_size or H
    if parts is None:
        parts = load_datasets(cfg.data, image_size=(size, size), channels=channels, val_ratio=cfg.val_ratio,
                              test_ratio=cfg.test_ratio, seed=cfg.seed, exclude=cfg.exclude, strict=cfg.strict)
    classes = parts["classes"]
    norm = normalization_spec(cfg.normalize, parts["train"], channels)
    base = eval_transforms((H, W), norm)
    if cfg.cache:
        for name in ("train", "val"):
            if parts.get(name) is not None:
                parts[name] = _Cached(parts[name])
    train_ds = _Transformed(parts["train"], [base[0]] + augmentation(cfg.augment, (H, W)) + base[1:])
    train_loader = D.DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed,
                                num_workers=cfg.workers, device=cfg.device)
    val_loader = None
    if parts.get("val") is not None:
        val_loader = D.DataLoader(_Transformed(parts["val"], base), batch_size=max(cfg.batch_size, 64),
                                  num_workers=cfg.workers, device=cfg.device)
    model.to(cfg.device)
    optimizer = make_optimizer(cfg, model)
    schedule = make_schedule(cfg, optimizer, len(train_loader))
    resolved = write_config(out, cfg, {"classes": classes, "input_size": [C, H, W], "normalization": norm,
                                       "num_train": len(parts["train"]),
                                       "num_val": len(parts["val"]) if parts.get("val") is not None else 0,
                                       "num_test": len(parts["test"]) if parts.get("test") is not None else 0})
    meta = model_metadata(model, classes, norm, resolved)
    trainer = Trainer(model, optimizer, train_loader, val_loader,
                      loss_fn=CrossEntropyLoss(label_smoothing=cfg.label_smoothing), schedule=schedule,
                      schedule_unit=cfg.schedule_unit, epochs=cfg.epochs, iterations=cfg.iterations, out_dir=out,
                      clip_norm=cfg.clip_norm, checkpoint_every=cfg.checkpoint_every, keep_last=cfg.keep_last,
                      early_stopping=cfg.early_stopping, progress=cfg.progress, metadata=meta, config=resolved,
                      log=log, fused_sgd=cfg.fused_sgd, precision=cfg.precision)
    if resume:
        if trainer.resume() is None:
            log(f"no checkpoint in {out}: starting from the beginning")
    trainer.fit()
    return trainer, parts


def _folder_classes(data, exclude):
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist (give a folder with one sub-folder per class, "
                                f"or {EMBEDDED_PREFIX}mnist5k)")
    splits = D.find_splits(root)
    base = Path(splits["train"]) if splits else root
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")
                     and p.name not in set(exclude))
    if not classes:
        raise ValueError(f"data folder {base} has no class sub-folders (expected {base}/<class>/<images>)")
    return classes


def eval_loader(parts_or_ds, meta, batch_size=64, device="cpu"):
    """A loader over a dataset with the run's evaluation transforms."""
    C, H, W = meta["input_size"]
    return D.DataLoader(_Transformed(parts_or_ds, eval_transforms((H, W), meta["normalization"])),
                        batch_size=batch_size, device=device)
