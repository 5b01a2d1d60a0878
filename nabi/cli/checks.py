"""Every command-line flag's allowed values, checked before anything is read or written.

The flags of the training settings take their rules from the settings' declaration
(``nabi.training.config``, via ``nabi.training.flags.flag_rules``); ``OWN_RULES[command][dest]`` is the
rule of each other flag ``--dest`` (underscores as dashes) of ``nabi command``, and ``GLOBAL_RULES``
covers the flags before the command. ``RULES[command]`` is both together. ``check_args`` walks a parsed
namespace; the resolved configuration (flags, recipe and ``--config`` TOML file alike) is checked by the
training library's one ``check``. A value outside its range raises ``BadArgument`` naming the flag, the
value and what is allowed; ``nabi`` exits with 1. Flags with ``choices`` are refused by argparse itself
(exit 2, naming the flag).
"""
from __future__ import annotations

from ..training.config import PRETRAIN, SELF_TRAIN, TRAIN, EXPERIMENT, check, flag, settings
from ..training.flags import flag_rules
from ..training.rules import BadArgument, Float, Int, ModelName, NON_NEGATIVE, POSITIVE, RATIO

# the embedding head of `nabi train --head` (re-identification)
EMBEDDING = {"embedding_dim": POSITIVE, "margin": Float(0.0), "scale": Float(0.0, None, low_open=True), "k": Int(2)}
OWN_RULES = {
    "check": {},
    "train": EMBEDDING,
    "demo": {"epochs": POSITIVE, "seed": NON_NEGATIVE},
    "eval": {},
    "predict": {"topk": POSITIVE},
    "summary": {"model": ModelName(), "classes": Int(2), "batch_size": POSITIVE},
    "export": {"classes": Int(2)},
    "explain": {},
    "experiment": {"runs": POSITIVE, "jobs": Int(1, 256), "seed": NON_NEGATIVE, "embedding_dim": POSITIVE,
                   "iterations_per_class": POSITIVE, "cpus_per_run": Float(0.0, None, low_open=True),
                   "gpus_per_run": Float(0.0)},
    "ablate": {"jobs": Int(1, 256), "cpus_per_run": Float(0.0, None, low_open=True), "gpus_per_run": Float(0.0)},
    "sweep": {"cpus_per_trial": Int(1, 1024)},
    "pretrain": {"batch_size": Int(2), "temperature": Float(0.0, None, low_open=True), "projection_dim": POSITIVE,
                 "ema_momentum": RATIO},
    "identify": {"topk": POSITIVE},
    "self-train": {"rounds": POSITIVE, "student_model": ModelName(),
                   "threshold": Float(0.0, 1.0, low_open=True, high_open=False), "max_per_class": POSITIVE,
                   "dropout": RATIO, "stochastic_depth": RATIO},
    "train-descriptor": {"weight_decay": Float(0.0), "width": POSITIVE, "epochs": POSITIVE, "iterations": POSITIVE,
                         "batch_size": Int(2), "lr": Float(0.0, None, low_open=True),
                         "margin": Float(0.0, None, low_open=True), "dropout": RATIO, "val_ratio": RATIO,
                         "matched_repeats": POSITIVE, "seed": NON_NEGATIVE, "nfeatures": POSITIVE,
                         "max_side": Int(16), "warps": NON_NEGATIVE, "pairs_per_warp": POSITIVE,
                         "pairs_per_match": NON_NEGATIVE, "min_inliers": Int(4), "checkpoint_every": POSITIVE},
    "serve": {"port": Int(1, 65535), "threshold": Float(0.0, 1.0, high_open=False),
              "max_upload_mb": Float(0.0, None, low_open=True), "max_pixels": POSITIVE, "max_files": POSITIVE},
}
GLOBAL_RULES = {"threads": Int(1, 1024)}
# The commands whose flags include training settings (nabi.training.config: TRAIN, PRETRAIN, ...).
SETTING_COMMANDS = (TRAIN, PRETRAIN, SELF_TRAIN, EXPERIMENT)


def rules_for(command) -> dict:
    """``{dest: rule}`` of every flag of ``command``: its settings' (from their declaration), then its own."""
    return {**(flag_rules(command) if command in SETTING_COMMANDS else {}), **OWN_RULES.get(command, {})}


RULES = {command: rules_for(command) for command in OWN_RULES}
# Settings a TOML file sets that have no flag: messages name them by key alone.
CONFIG_ONLY = tuple(s.name for s in settings() if s.option is None and s.rule is not None)


def _check(rules, values, name_of):
    for dest, rule in rules.items():
        v = values.get(dest)
        if v is None:
            continue
        problem = rule.problem(v)
        if problem:
            raise BadArgument(f"{name_of(dest)} {problem}")


def check_args(args) -> None:
    """Check a parsed ``nabi`` namespace against ``GLOBAL_RULES`` and its command's rules (``rules_for``)."""
    values = vars(args)
    _check(GLOBAL_RULES, values, flag)
    command = values.get("command")
    if command == "summary" and values.get("list"):
        return
    _check(rules_for(command), values, flag)


def check_train_config(cfg) -> None:
    """Check a resolved ``TrainConfig``: ``nabi.training.config.check``, the one check of the settings."""
    check(cfg)
