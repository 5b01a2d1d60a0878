"""Every command-line flag's allowed values, in one table, checked before anything is read or written.

``RULES[command][dest]`` is the rule for the flag ``--dest`` (underscores as dashes) of
``nabi command``; ``GLOBAL_RULES`` covers the flags before the command. ``check_args``
walks a parsed namespace, ``check_train_config`` the resolved training configuration
(flags and a ``--config`` TOML file alike). A value outside its range raises
``BadArgument`` naming the flag, the value and what is allowed; ``nabi`` exits with 1.
Flags with ``choices`` are refused by argparse itself (exit 2, naming the flag).
"""
from __future__ import annotations

import math
from dataclasses import dataclass


class BadArgument(ValueError):
    """A flag's value is outside its allowed range."""


@dataclass(frozen=True)
class Int:
    """An integer ``low ≤ v`` (and ``v ≤ high`` when given)."""
    low: int
    high: int | None = None

    def problem(self, v):
        if isinstance(v, bool) or not isinstance(v, int):
            return f"must be a whole number, got {v!r}"
        if v < self.low:
            return f"must be at least {self.low}, got {v}"
        if self.high is not None and v > self.high:
            return f"must be at most {self.high}, got {v}"
        return None

    def describe(self):
        return f"an integer ≥ {self.low}" + (f" and ≤ {self.high}" if self.high is not None else "")


@dataclass(frozen=True)
class Float:
    """A finite number in ``[low, high)`` / ``(low, high)`` / ``[low, ∞)`` as the fields say."""
    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = True

    def problem(self, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"must be a number, got {v!r}"
        if not math.isfinite(v):
            return f"must be a finite number, got {v}"
        below = v <= self.low if self.low_open else v < self.low
        above = self.high is not None and (v >= self.high if self.high_open else v > self.high)
        if below or above:
            return f"must be {self.describe()}, got {v}"
        return None

    def describe(self):
        lo = ("(" if self.low_open else "[") + f"{self.low:g}"
        hi = "∞)" if self.high is None else f"{self.high:g}" + (")" if self.high_open else "]")
        return f"a finite number in {lo}, {hi}"


@dataclass(frozen=True)
class ModelName:
    """The name of a model in the zoo (``nabi summary --list``)."""

    def problem(self, v):
        from .. import models
        names = models.names()
        if v not in names:
            import difflib
            close = difflib.get_close_matches(str(v), names, n=3)
            return (f"must be a zoo model name, got unknown model {v!r}"
                    + (f" (did you mean {', '.join(close)}?)" if close else "; see `nabi summary --list`"))
        return None

    def describe(self):
        return "a zoo model name (nabi summary --list)"


POSITIVE, NON_NEGATIVE = Int(1), Int(0)
RATIO = Float(0.0, 1.0)                          # [0, 1)
TRAIN = {
    "model": ModelName(), "epochs": POSITIVE, "iterations": POSITIVE, "batch_size": POSITIVE,
    "lr": Float(0.0, None, low_open=True), "momentum": RATIO, "weight_decay": Float(0.0),
    "layer_lr_decay": Float(0.0, 1.0, low_open=True, high_open=False),
    "warmup": NON_NEGATIVE, "warmup_fraction": RATIO, "step_size": POSITIVE,
    "gamma": Float(0.0, 1.0, low_open=True, high_open=False),
    "label_smoothing": RATIO, "clip_norm": Float(0.0, None, low_open=True), "image_size": Int(8, 4096),
    "channels": Int(1, 4), "val_ratio": RATIO, "test_ratio": RATIO, "seed": NON_NEGATIVE, "workers": Int(0, 256),
    "checkpoint_every": POSITIVE, "keep_last": POSITIVE, "early_stopping": POSITIVE,
    # embedding heads (re-identification)
    "embedding_dim": POSITIVE, "margin": Float(0.0), "scale": Float(0.0, None, low_open=True), "k": Int(2),
}
RULES = {
    "check": {},
    "train": TRAIN,
    "demo": {"epochs": POSITIVE, "seed": NON_NEGATIVE},
    "eval": {},
    "predict": {"topk": POSITIVE},
    "summary": {"model": ModelName(), "classes": Int(2), "batch_size": POSITIVE},
    "export": {"classes": Int(2)},
    "explain": {},
    "experiment": {"runs": POSITIVE, "jobs": Int(1, 256), "seed": NON_NEGATIVE, "epochs": POSITIVE,
                   "embedding_dim": POSITIVE,
                   "iterations": POSITIVE, "iterations_per_class": POSITIVE, "image_size": Int(8, 4096),
                   "cpus_per_run": Float(0.0, None, low_open=True), "gpus_per_run": Float(0.0)},
    "ablate": {"jobs": Int(1, 256), "cpus_per_run": Float(0.0, None, low_open=True), "gpus_per_run": Float(0.0)},
    "sweep": {"cpus_per_trial": Int(1, 1024)},
    "pretrain": {"model": ModelName(), "image_size": Int(8, 4096), "epochs": POSITIVE, "iterations": POSITIVE,
                 "batch_size": Int(2), "temperature": Float(0.0, None, low_open=True), "projection_dim": POSITIVE,
                 "ema_momentum": RATIO,
                 "lr": Float(0.0, None, low_open=True), "momentum": RATIO, "weight_decay": Float(0.0),
                 "warmup": NON_NEGATIVE, "seed": NON_NEGATIVE, "workers": Int(0, 256), "checkpoint_every": POSITIVE,
                 "keep_last": POSITIVE},
    "identify": {"topk": POSITIVE},
    "self-train": {"rounds": POSITIVE, "model": ModelName(), "student_model": ModelName(),
                   "threshold": Float(0.0, 1.0, low_open=True, high_open=False), "max_per_class": POSITIVE,
                   "dropout": RATIO, "stochastic_depth": RATIO, "epochs": POSITIVE, "batch_size": POSITIVE,
                   "lr": Float(0.0, None, low_open=True), "momentum": RATIO, "weight_decay": Float(0.0),
                   "image_size": Int(8, 4096), "val_ratio": RATIO, "test_ratio": RATIO, "seed": NON_NEGATIVE,
                   "workers": Int(0, 256), "warmup_fraction": RATIO, "label_smoothing": RATIO,
                   "layer_lr_decay": Float(0.0, 1.0, low_open=True, high_open=False)},
    "serve": {"port": Int(1, 65535), "threshold": Float(0.0, 1.0, high_open=False),
              "max_upload_mb": Float(0.0, None, low_open=True), "max_pixels": POSITIVE, "max_files": POSITIVE},
}
GLOBAL_RULES = {"threads": Int(1, 1024)}


def flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _check(rules, values, name_of):
    for dest, rule in rules.items():
        v = values.get(dest)
        if v is None:
            continue
        problem = rule.problem(v)
        if problem:
            raise BadArgument(f"{name_of(dest)} {problem}")


def check_args(args) -> None:
    """Check a parsed ``nabi`` namespace against ``GLOBAL_RULES`` and its command's ``RULES``."""
    values = vars(args)
    _check(GLOBAL_RULES, values, flag)
    command = values.get("command")
    if command == "summary" and values.get("list"):
        return
    _check(RULES.get(command, {}), values, flag)


CONFIG_ONLY = ("step_size", "gamma", "channels")    # TrainConfig keys a TOML file sets; no flag


def check_train_config(cfg) -> None:
    """Check a resolved ``TrainConfig`` (flags and TOML keys alike) against ``RULES['train']``."""
    values = cfg.to_dict()
    _check(TRAIN, values, lambda d: f"config key {d}" if d in CONFIG_ONLY else f"{flag(d)} (config key {d})")
    freeze = values.get("freeze_until")
    if freeze is not None and (not isinstance(freeze, str) or not freeze.strip()):
        raise BadArgument(f"--freeze-until (config key freeze_until) must be a stage name such as layer2, "
                          f"got {freeze!r}")
    if values["val_ratio"] + values["test_ratio"] >= 1:
        raise BadArgument(f"--val-ratio + --test-ratio must be below 1 (something must be left to train on), "
                          f"got {values['val_ratio']} + {values['test_ratio']}")
    if values["warmup"] and values["schedule"] != "warmup_cosine":
        raise BadArgument(f"--warmup {values['warmup']} only applies to --schedule warmup_cosine "
                          f"(the schedule is {values['schedule']})")
    if values["warmup_fraction"] is not None and values["schedule"] not in ("warmup_cosine", "one_cycle"):
        raise BadArgument(f"--warmup-fraction {values['warmup_fraction']} only applies to --schedule warmup_cosine "
                          f"or one_cycle (the schedule is {values['schedule']})")
    if values["warmup"] and values["warmup_fraction"] is not None:
        raise BadArgument(f"give the warm-up one way: --warmup {values['warmup']} (iterations) or "
                          f"--warmup-fraction {values['warmup_fraction']} (a share of the run), not both")
    from ..data.folder import FITS
    from ..training.config import AUGMENTS
    for key, choices in (("fit", tuple(FITS)), ("augment", AUGMENTS)):
        if values[key] not in choices:
            raise BadArgument(f"{flag(key)} (config key {key}) must be one of {', '.join(choices)}, "
                              f"got {values[key]!r}")
