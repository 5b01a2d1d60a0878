"""The training settings, each declared once: ``TrainConfig``'s fields, with what every command makes of them.

A field of ``TrainConfig`` is a setting: its name is the TOML key (``nabi train --config``, an ablation's
``[base]``, a sweep's ``[base]`` and ``[search]``, ``nabi experiment --set``) and, dashed, the flag
(``--batch-size``); its ``setting(...)`` declares the default, the help text, the rule its values obey
(``nabi.training.rules``), which commands take it as a flag, whether a recipe may set it, and whether it
enters a study's fingerprint. From that declaration come

- the flags of ``nabi train`` (and ``train --head``), ``pretrain``, ``self-train`` and ``experiment``,
  with their help and defaults (``nabi.training.flags``), and the keys ``experiment --set``,
  ``ablate`` and ``sweep`` accept, listed in their help;
- ``check(cfg)``, the one check of a configuration (each value against its rule, then the rules that
  tie settings together), which every command runs before reading a photo and every library entry
  (``run_training``, ``train``, embedding training, pretraining, self-training) runs first;
- ``fingerprint_settings(cfg)``, the settings that decide what a study computes.

Adding a setting is adding a field here (and the code that uses it).
"""
from __future__ import annotations

import warnings
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_args

from ..data.folder import FITS as _FITS
from ..data.prepare import AUGMENTS, NORMALIZATIONS
from ..optim import RENAMED_SCHEDULES
from .rules import NON_NEGATIVE, POSITIVE, RATIO, BadArgument, EncounterRule, Flag, Float, Int, ModelName, OneOf, Text

SCHEDULES = ("constant", "step", "cosine", "warmup_cosine", "linear_step", "one_cycle")
ONE_CYCLE_RISE = 0.3                   # one_cycle's rising share of the run when warmup_fraction is not given
FITS = tuple(_FITS)                    # how a photo is brought to the input size (nabi.data.folder)
OPTIMIZERS = ("sgd", "adam", "adamw")
BACKGROUND_KINDS = ("split", "merge")
EXECUTORS = ("local", "ray")           # where the replicas of a --replicas run are started
# Names that were renamed: the old ones are still accepted, with a FutureWarning, in TOML files, on the
# command line and in recipes, but no help text lists them.
RENAMED = {
    "schedule": RENAMED_SCHEDULES,
    "normalize": {"seed2019": "pixel256"},
    "recipe": {"seed2019": "alexnet336-2019"},
}

# The commands whose flags a setting can be: `train` (also `train --head`), `pretrain`, `self-train`, and
# `experiment` (which gives a few of the recipe's settings as flags). Every setting is a `train` flag.
TRAIN, PRETRAIN, SELF_TRAIN, EXPERIMENT = "train", "pretrain", "self-train", "experiment"
# How a setting enters a study's fingerprint (the hash that says two runs computed the same thing):
ALWAYS = "always"                  # its value is part of every fingerprint
NEVER = "never"                    # it changes how, not what, is computed (the device, checkpoints)
UNLESS_DEFAULT = "unless_default"  # added after studies were first fingerprinted: part of a fingerprint only
#                                    when it differs from its default, so a study started before it existed resumes
# recipe=GIVEN: a recipe or `--set` may set it, but a recipe holds it only when given (it was added to the
# recipes' keys after experiments were first fingerprinted); recipe=True: every recipe holds it.
GIVEN = "given"
KEEP_CHECKPOINTS = 3                   # --keep-checkpoints: the checkpoints kept before --keep-last existed


@dataclass(frozen=True)
class Shorthand:
    """A flag that stands for one value of a setting (``--keep-checkpoints`` is ``--keep-last 3``), on the
    commands whose setting flags are layered (a flag not given is None, so the setting's own flag, when
    given too, wins)."""
    flag: str
    value: Any
    help: str
    commands: tuple = (TRAIN,)

    @property
    def dest(self) -> str:
        """The argparse ``dest`` of the flag: ``--keep-checkpoints`` → ``keep_checkpoints``."""
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Setting:
    """One training setting as declared by ``setting(...)`` on a ``TrainConfig`` field (see the module doc)."""
    help: str
    rule: Any = None                   # a nabi.training.rules rule, or None (anything of the field's type)
    flag: str | None = ""              # "": --name-with-dashes; None: a TOML key only; or the flag (--no-progress)
    metavar: str | None = None
    shown: str | None = None           # the default as help shows it, when not the value itself ("none: …")
    commands: tuple = (TRAIN,)         # the commands that take it as a flag
    recipe: bool | str = False         # a recipe, `nabi experiment --set`, `self-train --recipe` may set it (GIVEN)
    fingerprint: str = UNLESS_DEFAULT
    shorthand: Shorthand | None = None  # another flag that gives it one value (--keep-checkpoints)
    name: str = ""                     # filled in from the field by settings()
    default: Any = None
    type: type | None = None           # int, float, str, bool, dict or list, from the field's annotation

    @property
    def option(self) -> str | None:
        """The command-line flag (``--batch-size``), or None for a TOML-only setting."""
        if self.flag is None:
            return None
        return self.flag or flag(self.name)


def setting(default, help, rule=None, **declared):
    """A ``TrainConfig`` field declared as a setting: ``default``, ``help`` (what the flag does), the value
    ``rule``, and any ``Setting`` attribute (``flag``, ``metavar``, ``shown``, ``commands``, ``recipe``,
    ``fingerprint``, ``shorthand``)."""
    meta = {"setting": Setting(help=help, rule=rule, **declared)}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


ALL = (TRAIN, PRETRAIN, SELF_TRAIN)
_SIZE = Int(8, 4096)


@dataclass
class TrainConfig:
    """Every setting of a training run (``nabi train``); a TOML file may set any of them (same names)."""
    data: str = setting("embedded:mnist5k", "a folder with one sub-folder per class (or train/ val/ test/), or "
                        "embedded:mnist5k / embedded:digits8x8", Text("a folder or embedded:NAME"), flag=None,
                        fingerprint=ALWAYS)
    model: str = setting("lenet5", "a zoo model name; `nabi summary --list` lists them", ModelName(),
                         commands=ALL, recipe=True, fingerprint=ALWAYS)
    model_args: dict = setting({}, "an argument of the model's builder, e.g. --model-arg activation=relu "
                               "(repeatable; default: none)", flag="--model-arg", metavar="KEY=VALUE",
                               commands=ALL, recipe=True, fingerprint=ALWAYS)
    init: str | None = setting(None, "start from these weights (e.g. a pretrain run's backbone.safetensors): every "
                               "array matching by name and shape is loaded", Text("a weight file or run folder"),
                               metavar="WEIGHTS", shown="none: the model's own initialisation",
                               commands=(TRAIN, SELF_TRAIN), fingerprint=ALWAYS)
    freeze_until: str | None = setting(
        None, "do not train the network's stages up to and including LAYER, a stage name as its weights' "
        "names begin (conv1, layer2, features.6, backbone.layer3 …; an unknown name lists them): "
        "their weights get no step, no weight decay and no momentum, they run in eval mode while "
        "the rest trains (batch norm uses and keeps the running statistics it was loaded with, "
        "dropout is off), and backward stops above them; the run prints the frozen stages and "
        "the trainable and frozen parameter counts; GoogLeNet's auxiliary heads, even when frozen, still "
        "run in training and add their 0.3× loss to train_loss; with --init, a frozen stage whose "
        "arrays it did not all load is refused; meant for --init", Text("a stage name such as layer2"),
        metavar="LAYER", shown="none: every stage trains", commands=(TRAIN, SELF_TRAIN))
    layer_lr_decay: float = setting(
        1.0, "layer-wise learning-rate decay, D in (0, 1]: the last stage (the classifier) trains at "
        "--lr, the stage below it at --lr·D, the next at --lr·D² … down to the first (stages "
        "without parameters do not count, and a stage of batch norm alone, such as a ResNet's "
        "bn1, shares the rate of the stage before it); the --schedule scales every stage's rate alike",
        Float(0.0, 1.0, low_open=True, high_open=False), metavar="D", shown="1.0: one rate for every stage",
        commands=(TRAIN, SELF_TRAIN))
    epochs: int = setting(10, "passes over the training images", POSITIVE, commands=(*ALL, EXPERIMENT),
                          recipe=True, fingerprint=ALWAYS)
    iterations: int | None = setting(None, "stop after this many optimiser steps instead of --epochs", POSITIVE,
                                     shown="none: --epochs decides", commands=(TRAIN, PRETRAIN, EXPERIMENT),
                                     recipe=True, fingerprint=ALWAYS)
    batch_size: int = setting(64, "images per optimiser step", POSITIVE, commands=ALL, recipe=True,
                              fingerprint=ALWAYS)
    optimizer: str = setting("adam", "the update rule", OneOf(OPTIMIZERS), commands=ALL, recipe=True,
                             fingerprint=ALWAYS)
    lr: float = setting(1e-3, "learning rate (the schedule's starting value)", Float(0.0, None, low_open=True),
                        commands=ALL, recipe=True, fingerprint=ALWAYS)
    momentum: float = setting(0.9, "SGD momentum", RATIO, commands=ALL, recipe=True, fingerprint=ALWAYS)
    nesterov: bool = setting(False, "Nesterov momentum (SGD)", Flag(), flag=None, recipe=True, fingerprint=ALWAYS)
    weight_decay: float = setting(0.0, "L2 weight decay (decoupled for adamw)", Float(0.0), commands=ALL,
                                  recipe=True, fingerprint=ALWAYS)
    schedule: str = setting(
        "constant", "how the learning rate changes: step multiplies it by gamma (0.1) every step_size (10) "
        "steps (TOML keys step_size, gamma, schedule_unit), cosine anneals it to 0, warmup_cosine ramps up for "
        "--warmup steps (or --warmup-fraction of the run) first, linear_step lowers it from 1.5e-5 to 5e-6 in 10 "
        "equal steps (the 2019 report's schedule), one_cycle (Smith & Topin 2019) rises from "
        "--lr/25 to --lr over --warmup-fraction of the run (0.3 if not given) and falls by cosine "
        "to --lr/250000", OneOf(SCHEDULES), commands=ALL, recipe=True, fingerprint=ALWAYS)
    schedule_unit: str = setting("iteration", "what the schedule counts: iteration or epoch",
                                 OneOf(("iteration", "epoch")), flag=None, recipe=True, fingerprint=ALWAYS)
    warmup: int = setting(0, "warm-up steps for warmup_cosine", NON_NEGATIVE, commands=(TRAIN, PRETRAIN),
                          recipe=True, fingerprint=ALWAYS)
    warmup_fraction: float | None = setting(
        None, "or the warm-up of warmup_cosine (the rise of one_cycle) as a share of the whole run, in [0, 1), "
        "e.g. 0.3", RATIO, shown="none: --warmup decides", commands=(TRAIN, SELF_TRAIN), recipe=True)
    step_size: int = setting(10, "steps between the step schedule's cuts", POSITIVE, flag=None, recipe=True,
                             fingerprint=ALWAYS)
    gamma: float = setting(0.1, "the step schedule's factor at each cut", Float(0.0, 1.0, low_open=True,
                                                                                  high_open=False),
                           flag=None, recipe=True, fingerprint=ALWAYS)
    label_smoothing: float = setting(0.0, "spread this much of each target's probability over the other classes",
                                     RATIO, commands=(TRAIN, SELF_TRAIN), recipe=True, fingerprint=ALWAYS)
    clip_norm: float | None = setting(None, "clip the gradient's global L2 norm to this value",
                                      Float(0.0, None, low_open=True), shown="none: no clipping", recipe=True,
                                      fingerprint=ALWAYS)
    fused_sgd: bool = setting(False, "plain SGD only: update each layer inside backward, never storing weight "
                              "gradients", Flag(), recipe=GIVEN, fingerprint=ALWAYS)
    precision: str = setting("float32", "float16: mixed precision (float16 compute, float32 master weights, "
                             "dynamic loss scaling); meant for --device gpu, slow on the CPU",
                             OneOf(("float32", "float16")), recipe=GIVEN, fingerprint=ALWAYS)
    image_size: int | None = setting(None, "bring photos to this size (see --fit)", _SIZE,
                                     shown="the model’s input size", commands=(*ALL, EXPERIMENT), recipe=True,
                                     fingerprint=ALWAYS)
    fit: str = setting(
        "crop", "how a photo is brought to the square --image-size when read: crop = resize the shorter "
        "side and keep the centre (the sides of a wide photo are lost), squash = resize the whole "
        "photo (aspect ratio distorted, nothing lost), pad = resize the longer side and pad with "
        "black; recorded in the run, so eval, predict, the gallery and the web app read photos the "
        "same way", OneOf(FITS), commands=ALL, recipe=True)
    channels: int | None = setting(None, "input channels", Int(1, 4), flag=None, shown="the model's",
                                   fingerprint=ALWAYS)
    normalize: str = setting(
        "unit", "input scaling: unit = pixel/255, pixel256 = pixel/256 (the 2019 report's), dataset = the "
        "training images' per-channel mean and std, imagenet = ImageNet's mean and std", OneOf(NORMALIZATIONS),
        commands=ALL, recipe=True, fingerprint=ALWAYS)
    augment: str = setting(
        "none", "online augmentation: flip = horizontal flips, standard = flips and padded random "
        "crops, strong = random resized crops (area 0.5–1), flips, rotation ±10° and colour "
        "jitter 0.3, crop_flip_jitter = random resized crops (area 0.5–1), flips and colour "
        "jitter 0.2", OneOf(AUGMENTS), commands=(TRAIN, SELF_TRAIN), recipe=True, fingerprint=ALWAYS)
    val_ratio: float = setting(0.1, "share of each class held out for validation (ignored when DATA has val/)",
                               RATIO, commands=(TRAIN, SELF_TRAIN), fingerprint=ALWAYS)
    test_ratio: float = setting(0.1, "share of each class held out for the final test (ignored when DATA has "
                                "test/)", RATIO, commands=(TRAIN, SELF_TRAIN), fingerprint=ALWAYS)
    encounters: str = setting(
        "photo", "how a folder's photos are grouped into encounters (photos taken together), each kept whole on "
        "one side of the train/val/test split: photo = every photo alone (a plain stratified split), name = the "
        "first number in the file name (275_left.jpg, 275_right.jpg), name:REGEX = its first group, folder = one "
        "more folder level per class, time = EXIF times within 30 minutes, auto = folder, else time, else photo. "
        "Burst photos on both sides of a split flatter the test score", EncounterRule(),
        commands=(TRAIN, SELF_TRAIN), recipe=GIVEN, fingerprint=UNLESS_DEFAULT)
    exclude: list = setting([], "leave out a class folder, or one background kind as background/<kind> "
                            "(repeatable; default: none)", commands=(TRAIN, SELF_TRAIN), fingerprint=ALWAYS)
    background_kinds: str = setting(
        "split", "split: each sub-folder <kind>/ of DATA/background/ is a class background/<kind> of its own "
        "(photos directly in background/ stay 'background'), as re-identification and the gallery "
        "already read it, so a user who sorted the empty scenes by kind gets the kinds; merge: the "
        "whole folder is one class 'background', as before kinds existed (a background folder "
        "without sub-folders is one class either way)", OneOf(BACKGROUND_KINDS), fingerprint=ALWAYS)
    strict: bool = setting(False, "a corrupt image is an error, not a warning", Flag(), recipe=True,
                           fingerprint=ALWAYS)
    seed: int = setting(0, "seeds the split, the initial weights and the batch order", NON_NEGATIVE, commands=ALL,
                        fingerprint=ALWAYS)
    device: str = setting("cpu", "gpu needs the gpu extra", OneOf(("cpu", "gpu")), commands=(*ALL, EXPERIMENT),
                          recipe=True, fingerprint=NEVER)
    workers: int = setting(0, "background threads decoding images", Int(0, 256), commands=ALL, recipe=True,
                           fingerprint=NEVER)
    replicas: int = setting(
        1, "data-parallel replicas of this one run: N worker processes, each computing the gradients of its "
        "share of every batch; the gradients are summed once per step and every replica takes the same step, "
        "so --batch-size stays the global batch and the learning rate and schedule are unchanged (needs the "
        "distributed extra; batch norm normalises each replica's share unless --sync-batch-norm)",
        Int(1, 1024), commands=(TRAIN, PRETRAIN, SELF_TRAIN), fingerprint=UNLESS_DEFAULT)
    sync_batch_norm: bool = setting(
        False, "with --replicas: batch norm statistics over the whole global batch (summed across the "
        "replicas in the forward and the backward pass), as one process would compute them",
        Flag(), commands=(TRAIN, PRETRAIN, SELF_TRAIN), fingerprint=UNLESS_DEFAULT)
    overlap_sum: bool = setting(
        False, "with --replicas: send each bucket of gradients to be summed as soon as the backward pass has "
        "produced it, while the backward pass goes on (as DistributedDataParallel does), instead of after it",
        Flag(), commands=(TRAIN, PRETRAIN, SELF_TRAIN), fingerprint=NEVER)
    executor: str = setting(
        "local", "where --replicas run: local = worker processes on this machine; ray = Ray actors on a local "
        "Ray instance or the cluster at --address (the run folder must be on a filesystem every node sees at "
        "the same path)", OneOf(EXECUTORS), commands=(TRAIN, PRETRAIN, SELF_TRAIN), fingerprint=NEVER)
    address: str | None = setting(
        None, "with --executor ray: the Ray cluster (host:port, ray://host:port or auto)", Text("a Ray address"),
        metavar="ADDR", shown="none: start a local Ray instance", commands=(TRAIN, PRETRAIN, SELF_TRAIN), fingerprint=NEVER)
    replica_timeout: float = setting(
        60.0, "with --replicas: seconds a replica waits for the others (to meet them at the start, or inside a "
        "step) before it stops with an error naming the replica that did not answer", Float(0.0, None, low_open=True),
        commands=(TRAIN, PRETRAIN, SELF_TRAIN), fingerprint=NEVER)
    cache: bool = setting(False, "keep decoded images in memory after the first epoch (uint8; CIFAR-10 needs "
                          "~150 MB)", Flag(), commands=ALL, fingerprint=ALWAYS)
    out: str = setting("runs/train", "the run folder to write", Text("a folder"), commands=ALL, fingerprint=ALWAYS)
    checkpoint_every: int | None = setting(None, "also checkpoint every N iterations", POSITIVE,
                                           shown="at each epoch end only", commands=(TRAIN, PRETRAIN), recipe=True,
                                           fingerprint=NEVER)
    keep_last: int = setting(
        1, "checkpoints a finished run keeps, the newest ones (while it runs, at least 2, so a damaged newest one "
        "has a fallback)", POSITIVE, commands=(TRAIN, PRETRAIN), recipe=True, fingerprint=NEVER,
        shorthand=Shorthand("--keep-checkpoints", KEEP_CHECKPOINTS,
                            f"the same as --keep-last {KEEP_CHECKPOINTS} (kept for older scripts)"))
    early_stopping: int | None = setting(None, "stop after N epochs without a better validation accuracy",
                                         POSITIVE, shown="none: never stop early", fingerprint=ALWAYS)
    progress: bool = setting(True, "no progress bar", Flag(), flag="--no-progress",
                             shown="a bar on a terminal, a line every 15 s in a log", commands=ALL,
                             fingerprint=ALWAYS)

    def __post_init__(self):
        for s in settings(type(self)):
            if s.name in RENAMED:
                setattr(self, s.name, current_name(s.name, getattr(self, s.name)))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "dict": dict, "list": list}


def settings(config_class=None) -> list:
    """The declared settings of ``config_class`` (default: ``TrainConfig``), in declaration order, each a
    ``Setting`` with its ``name``, ``default`` and ``type`` filled in."""
    out = []
    for f in fields(config_class or TrainConfig):
        declared = f.metadata.get("setting")
        if declared is None:
            continue
        default = f.default_factory() if f.default is MISSING else f.default
        out.append(replace(declared, name=f.name, default=default, type=_value_type(f.type)))
    return out


def _value_type(annotation):
    """``int`` of ``int``, ``int | None`` or the string ``"int | None"`` (a postponed annotation)."""
    if isinstance(annotation, str):
        return next(_TYPES[t.strip()] for t in annotation.split("|") if t.strip() in _TYPES)
    return next(t for t in (get_args(annotation) or (annotation,)) if t in _TYPES.values())


def setting_named(name: str) -> Setting:
    return next(s for s in settings() if s.name == name)


def choices(name: str) -> tuple:
    """The values setting ``name`` allows (its ``OneOf`` rule)."""
    return setting_named(name).rule.values


def recipe_settings(held=False) -> tuple:
    """The names of the settings a recipe may set (``nabi experiment --set``, ``self-train --recipe``); with
    ``held``, only those every recipe holds (not the ``GIVEN`` ones)."""
    return tuple(s.name for s in settings() if (s.recipe is True if held else s.recipe))


def flag(name: str) -> str:
    """The command-line flag of setting (or option) ``name``: ``batch_size`` → ``--batch-size``."""
    return "--" + name.replace("_", "-")


def named(s: Setting) -> str:
    """How a message names setting ``s``: its flag and TOML key, or the key alone for a TOML-only setting."""
    return f"{s.option} (config key {s.name})" if s.option else f"config key {s.name}"


# -- the one check --------------------------------------------------------------------------------------------
def check(cfg, name_of=named) -> None:
    """Refuse a configuration that cannot run, before anything is read or written: ``BadArgument`` (a
    ``ValueError``) naming the flag and config key, the value and what is allowed.

    ``cfg``: a ``TrainConfig`` or a dict of settings (settings it lacks are not checked). Each value is
    checked against its setting's rule, then the rules that tie settings together: the validation and
    test shares leave something to train on, a warm-up is given one way and only to a schedule that
    warms up, fused SGD is plain SGD in float32 without clipping. What depends on the data (a warm-up as
    long as the run, early stopping without a validation part) is refused when the data is known
    (``nabi.training.build.what_ran``).
    """
    values = cfg if isinstance(cfg, dict) else cfg.to_dict()
    declared = settings(None if isinstance(cfg, dict) else type(cfg))
    for s in declared:
        v = values.get(s.name)
        if v is None or s.rule is None:
            continue
        problem = s.rule.problem(v)
        if problem:
            raise BadArgument(f"{name_of(s)} {problem}")
    by_name = {s.name: s for s in declared}

    def given(name):
        return name in values and name in by_name

    def label(name):
        return by_name[name].option or name
    if given("val_ratio") and given("test_ratio") and values["val_ratio"] + values["test_ratio"] >= 1:
        raise BadArgument(f"--val-ratio + --test-ratio must be below 1 (something must be left to train on), "
                          f"got {values['val_ratio']} + {values['test_ratio']}")
    schedule = values.get("schedule", "constant")
    if values.get("warmup") and schedule != "warmup_cosine":
        raise BadArgument(f"--warmup {values['warmup']} only applies to --schedule warmup_cosine "
                          f"(the schedule is {schedule})")
    if values.get("warmup_fraction") is not None and schedule not in ("warmup_cosine", "one_cycle"):
        raise BadArgument(f"--warmup-fraction {values['warmup_fraction']} only applies to --schedule warmup_cosine "
                          f"or one_cycle (the schedule is {schedule})")
    if values.get("warmup") and values.get("warmup_fraction") is not None:
        raise BadArgument(f"give the warm-up one way: --warmup {values['warmup']} (iterations) or "
                          f"--warmup-fraction {values['warmup_fraction']} (a share of the run), not both")
    replicas = values.get("replicas") or 1
    if replicas > 1:
        refused = [label(k) if values[k] is True else f"{label(k)} {values[k]}" for k, bad in (("fused_sgd", True), ("precision", "float16"),
                                                            ("device", "gpu")) if given(k) and values[k] == bad]
        if refused:
            raise BadArgument(f"--replicas {replicas} sums the replicas' gradients between backward and the "
                              f"optimiser's step, on the CPU in float32 or float64; it cannot be combined with "
                              f"{', '.join(refused)}")
    else:
        alone = [label(k) if values[k] is True else f"{label(k)} {values[k]}" for k, want in (("sync_batch_norm", False), ("overlap_sum", False), ("executor", "local"),
                                                           ("address", None)) if given(k) and values[k] != want]
        if alone:
            raise BadArgument(f"{', '.join(alone)} only applies to a run of --replicas 2 or more")
    if given("address") and values["address"] is not None and values.get("executor", "local") != "ray":
        raise BadArgument(f"--address {values['address']} needs --executor ray")
    if values.get("fused_sgd"):
        plain = {"optimizer": "sgd", "momentum": 0, "weight_decay": 0, "nesterov": False, "clip_norm": None,
                 "precision": "float32"}
        wrong = [f"{label(k)} {values[k]}" for k, want in plain.items() if given(k) and values[k] != want]
        if wrong:
            raise BadArgument(f"--fused-sgd updates each layer inside backward with plain SGD in float32: it needs "
                              f"--optimizer sgd, --momentum 0 and --weight-decay 0, no Nesterov, no --clip-norm "
                              f"and --precision float32; got {', '.join(wrong)}")


# -- studies --------------------------------------------------------------------------------------------------
def fingerprint_settings(cfg: dict) -> dict:
    """The entries of ``cfg`` (settings and a study's own keys) that decide what a study computes: without
    the settings declared ``NEVER``, and without those declared ``UNLESS_DEFAULT`` while they hold their
    default. Keys that are not settings are kept."""
    declared = {s.name: s for s in settings()}

    def kept(k, v):
        s = declared.get(k)
        return s is None or s.fingerprint == ALWAYS or (s.fingerprint == UNLESS_DEFAULT and v != s.default)
    return {k: v for k, v in cfg.items() if kept(k, v)}


# -- old names, TOML -------------------------------------------------------------------------------------------
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
