"""Training recipes for the studies: named sets of training settings, checked before anything runs.

``resolve_recipe(name, overrides)`` returns a recipe's settings with ``overrides`` applied and
every value checked. ``alexnet336-2019`` is the setup of the 2019 report "CNN을 이용한 고려대학교
길고양이 분류 및 배경 학습을 통한 성능 개선" (COSE362, Korea University, 2019): its AlexNet-style
network at 336×336, batch 1, plain SGD; ``resnet18-160`` is the strong from-scratch baseline
(ResNet-18 at 160×160, whole photos squashed to the square, 60 epochs of AdamW with a 30 % warm-up
and cosine decay); ``modern`` is an earlier, shorter from-scratch recipe (128×128, centre crops,
30 epochs); ``reid-resnet20-64`` is the identity embedding the re-identification figures use (an
``embedding`` head: ``nabi train --recipe`` only); ``tiny`` is for tests.

Warm-up: ``warmup_epochs`` (epochs) or ``warmup_fraction`` (a share of the whole run), not both.
"""
from __future__ import annotations

import copy
import json

import numpy as np

from .. import backend
from ..training.config import check, choices, current_name, fingerprint_settings, recipe_settings


# -- recipes -----------------------------------------------------------------------------------------------
RECIPES = {
    "alexnet336-2019": {
        "description": "the 2019 report's setup: AlexNet-style 336×336 (He-uniform), RGB/256, batch 1, plain SGD "
                       "1.5e-5 → 5e-6 in 10 steps, 2,000 iterations per class, offline ×8 augmentation",
        "model": "alexnet336", "model_args": {}, "image_size": 336, "normalize": "pixel256", "augment": "none",
        "offline_variants": 8, "batch_size": 1, "optimizer": "sgd", "lr": 1.5e-5, "momentum": 0.0,
        "weight_decay": 0.0, "schedule": "linear_step", "iterations_per_class": 2000, "label_smoothing": 0.0,
        "test_ratio": 0.1, "checkpoint_every": 1000,
    },
    "resnet18-160": {
        "description": "the strong from-scratch baseline: ResNet-18 at 160×160, each whole photo squashed to the "
                       "square (no centre crop), random resized crops of 0.5–1 of it, flips and colour jitter "
                       "0.2, ImageNet normalisation, batch 16, AdamW 2e-3 (weight decay 0.05) with a linear "
                       "warm-up over the first 30 % of training, then cosine, label smoothing 0.1, 60 epochs",
        "model": "resnet18", "model_args": {}, "image_size": 160, "fit": "squash", "normalize": "imagenet",
        "augment": "crop_flip_jitter", "batch_size": 16, "optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05,
        "schedule": "warmup_cosine", "warmup_fraction": 0.3, "label_smoothing": 0.1, "epochs": 60,
        "test_ratio": 0.2,
    },
    "modern": {
        "description": "an earlier, shorter from-scratch recipe (resnet18-160 is the stronger baseline): "
                       "ResNet-18 at 128×128 (centre crops), ImageNet normalisation, strong online augmentation, "
                       "batch 32, AdamW with warm-up + cosine, label smoothing 0.1, 30 epochs",
        "model": "resnet18", "model_args": {}, "image_size": 128, "normalize": "imagenet", "augment": "strong",
        "batch_size": 32, "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "schedule": "warmup_cosine",
        "warmup_epochs": 2, "label_smoothing": 0.1, "epochs": 30, "test_ratio": 0.2,
    },
    "reid-resnet20-64": {
        "description": "the identity embedding measured best on never-seen nyala: resnet20 at 64×64, random "
                       "resized crops of 0.5–1 of the photo, flips and colour jitter 0.2, ArcFace with a 128-d "
                       "embedding, P×K batches of 64 (4 photos an individual), Adam 1e-3, 30 epochs (nabi train "
                       "only; docs/reidentification.md)",
        "model": "resnet20", "model_args": {}, "image_size": 64, "normalize": "unit", "augment": "crop_flip_jitter",
        "batch_size": 64, "optimizer": "adam", "lr": 1e-3, "schedule": "constant", "epochs": 30,
        "test_ratio": 0.1, "embedding": {"head": "arcface", "embedding_dim": 128},
    },
    "tiny": {
        "description": "for tests and CI: the small CIFAR CNN at 32×32, Adam, a few iterations per class",
        "model": "cifar_cnn", "model_args": {}, "image_size": 32, "normalize": "unit", "augment": "flip",
        "batch_size": 8, "optimizer": "adam", "lr": 3e-3, "schedule": "constant", "iterations_per_class": 8,
        "test_ratio": 0.2,
    },
}

# Table 1 of the 2019 report (10 paired runs of AlexNet-336), for reference in reports.
REPORT2019_TABLE1 = {
    "A·P2": [0.5375, 0.5500, 0.5750, 0.5250, 0.4500, 0.5750, 0.5000, 0.5250, 0.6000, 0.4625],
    "B·P1": [0.5600, 0.5300, 0.5300, 0.4800, 0.4700, 0.5100, 0.5000, 0.4800, 0.5700, 0.4500],
    "B·P2": [0.5875, 0.5500, 0.5250, 0.5250, 0.5000, 0.5625, 0.4875, 0.4875, 0.5875, 0.4125],
    "B·P3": [0.5950, 0.5789, 0.5915, 0.5455, 0.5405, 0.6164, 0.5270, 0.5652, 0.6438, 0.4783],
    "B·P4": [0.6000, 0.5750, 0.5500, 0.5500, 0.5250, 0.5750, 0.5000, 0.5250, 0.6375, 0.4625],
}


# A recipe's keys: the training settings declared recipe=True (``nabi.training.config``, ``train_keys()``)
# and these of the studies' own.
EXTRA_KEYS = ("description", "iterations_per_class", "warmup_epochs", "offline_variants", "test_ratio",
              "keep_checkpoints", "embedding")
LENGTH_KEYS = ("iterations_per_class", "iterations", "epochs")
# The studies' own keys that change how, not what, is computed: left out of the fingerprint (the settings
# say for themselves whether they enter it).
EXECUTION_KEYS = ("keep_checkpoints", "description")


def train_keys() -> tuple:
    """The training settings a recipe (and ``nabi experiment --set``) may set."""
    return recipe_settings()


def fingerprint_config(cfg: dict) -> dict:
    """The entries of ``cfg`` that decide what a study computes: without the studies' ``EXECUTION_KEYS`` and
    as ``nabi.training.config.fingerprint_settings`` keeps the settings (none that only change how a run
    is computed, none added later while it holds its default: a classifier recipe's ``embedding`` of None)."""
    return fingerprint_settings({k: v for k, v in cfg.items()
                                 if k not in EXECUTION_KEYS and not (k == "embedding" and v is None)})


def recipe_defaults() -> dict:
    from ..training.config import TrainConfig
    keys = recipe_settings(held=True)
    d = {k: v for k, v in TrainConfig().to_dict().items() if k in keys}
    d.update(epochs=None, iterations=None, iterations_per_class=None, warmup_epochs=None, offline_variants=1,
             test_ratio=0.2, keep_checkpoints=False, description="", image_size=None, checkpoint_every=None,
             keep_last=2, embedding=None)
    return d


def resolve_recipe(recipe: str, overrides: dict | None = None) -> dict:
    """The recipe's settings with ``overrides`` applied and checked (``ValueError`` on anything wrong): the
    recipe's own keys here, the training settings also by ``nabi.training.config.check``.

    Training length: exactly one of ``iterations_per_class``, ``iterations``, ``epochs``;
    overriding any of them replaces the recipe's choice.
    """
    from .. import models
    recipe = current_name("recipe", recipe)
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    overrides = dict(overrides or {})
    allowed = set(train_keys()) | set(EXTRA_KEYS)
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown} for an experiment; known: {', '.join(sorted(allowed))}")
    cfg = recipe_defaults()
    cfg.update(copy.deepcopy(RECIPES[recipe]))
    if any(k in overrides for k in LENGTH_KEYS):
        for k in LENGTH_KEYS:
            cfg[k] = None
    cfg.update(copy.deepcopy(overrides))
    cfg["recipe"] = recipe
    given = [k for k in LENGTH_KEYS if cfg[k] is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {', '.join(LENGTH_KEYS)} (got {given or 'none'})")
    for k in given:
        if not isinstance(cfg[k], (int, np.integer)) or isinstance(cfg[k], bool) or cfg[k] < 1:
            raise ValueError(f"{k} must be a positive integer, got {cfg[k]!r}")
    models.builder(cfg["model"])  # ValueError listing the zoo's names
    if not isinstance(cfg["model_args"], dict):
        raise ValueError(f"model_args must be a dict, got {cfg['model_args']!r}")
    cfg["normalize"] = current_name("normalize", cfg["normalize"])      # old names warn and map
    cfg["schedule"] = current_name("schedule", cfg["schedule"])
    for key in ("optimizer", "normalize", "augment", "fit", "schedule", "schedule_unit", "device"):
        if cfg[key] not in choices(key):
            raise ValueError(f"{key} must be one of {', '.join(choices(key))}; got {cfg[key]!r}")
    if not isinstance(cfg["batch_size"], (int, np.integer)) or cfg["batch_size"] < 1:
        raise ValueError(f"batch_size must be a positive integer, got {cfg['batch_size']!r}")
    if cfg["image_size"] is not None and (not isinstance(cfg["image_size"], (int, np.integer))
                                          or cfg["image_size"] < 8):
        raise ValueError(f"image_size must be an integer >= 8 (or None for the model's), got {cfg['image_size']!r}")
    if not isinstance(cfg["offline_variants"], (int, np.integer)) or cfg["offline_variants"] < 1:
        raise ValueError(f"offline_variants must be a positive integer, got {cfg['offline_variants']!r}")
    if not 0 < float(cfg["test_ratio"]) < 1:
        raise ValueError(f"test_ratio must be between 0 and 1, got {cfg['test_ratio']!r}")
    if not float(cfg["lr"]) > 0:
        raise ValueError(f"lr must be positive, got {cfg['lr']!r}")
    if cfg["warmup_epochs"] is not None and cfg["warmup_epochs"] < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {cfg['warmup_epochs']!r}")
    f = cfg["warmup_fraction"]
    if f is not None:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f < 1:
            raise ValueError(f"warmup_fraction must be a number in [0, 1), got {f!r}")
        given = [k for k in ("warmup_epochs", "warmup") if cfg[k]]
        if given:
            raise ValueError(f"give the warm-up one way: warmup_fraction {f!r} or {given[0]} {cfg[given[0]]!r}, "
                             f"not both (set the other to null)")
        if cfg["schedule"] not in ("warmup_cosine", "one_cycle"):
            raise ValueError(f"warmup_fraction only applies to schedule warmup_cosine or one_cycle (the schedule "
                             f"is {cfg['schedule']})")
    emb = cfg["embedding"]
    if emb is not None:
        from ..models.embedding import HEADS
        if not isinstance(emb, dict) or set(emb) - {"head", "embedding_dim"} or emb.get("head") not in HEADS:
            raise ValueError(f"embedding must be a table with head (one of {', '.join(HEADS)}) and optionally "
                             f"embedding_dim, got {emb!r}")
        dim = emb.get("embedding_dim", 128)
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"embedding_dim must be a positive integer, got {dim!r}")
    check({k: cfg[k] for k in train_keys() if k in cfg}, name_of=lambda setting: setting.name)   # every other rule
    return cfg


def recipe_embedding(recipe: str):
    """The embedding head a recipe trains (``{'head', 'embedding_dim'}``), or None for a classifier recipe."""
    emb = resolve_recipe(recipe)["embedding"]
    return None if emb is None else {"head": emb["head"], "embedding_dim": int(emb.get("embedding_dim", 128))}


def refuse_embedding_recipe(recipe: str, where: str) -> None:
    """``ValueError`` when ``recipe`` trains an identity embedding: the studies (``where``) train classifiers."""
    if recipe is not None and recipe_embedding(recipe) is not None:
        raise ValueError(f"recipe {current_name('recipe', recipe)!r} trains an identity embedding, which {where} does "
                         f"not: nabi train DATA --recipe {current_name('recipe', recipe)}")


def recipe_train_settings(recipe: str) -> dict:
    """A recipe's settings as ``TrainConfig`` fields: the start of ``nabi train --recipe`` and of an
    ablation's ``[base]`` with ``recipe = NAME``.

    ``warmup_epochs`` becomes ``warmup_fraction = warmup_epochs / epochs`` (the same number of
    iterations, as the length is in epochs). A recipe that needs the experiment's own machinery
    (offline ×N variants, a length in iterations per class) is refused (``ValueError``).
    """
    from ..training.config import TrainConfig
    cfg = resolve_recipe(recipe)
    needs = [what for what, used in (
        (f"offline ×{cfg['offline_variants']} variants", cfg["offline_variants"] > 1),
        (f"{cfg['iterations_per_class']} iterations per class", cfg["iterations_per_class"] is not None)) if used]
    if needs:
        raise ValueError(f"recipe {cfg['recipe']!r} trains with {' and '.join(needs)}, which only the experiment "
                         f"does: nabi experiment DATA --recipe {cfg['recipe']}")
    fields = TrainConfig.__dataclass_fields__
    out = {k: copy.deepcopy(cfg[k]) for k in train_keys() if k in fields and cfg.get(k) is not None}
    out["test_ratio"] = cfg["test_ratio"]
    if cfg["warmup_epochs"] is not None:
        if cfg["epochs"] is None:
            raise ValueError(f"recipe {cfg['recipe']!r} gives its warm-up in epochs but its length in iterations")
        out["warmup_fraction"] = float(cfg["warmup_epochs"]) / int(cfg["epochs"])
    return out


def probe_input_size(cfg) -> list:
    """Build the model once and run one input through it: ``[C, H, W]`` it will be trained at."""
    from ..training.build import build_model
    from ..models.registry import model_input_size
    try:
        model = build_model(cfg["model"], 3, cfg["model_args"], seed=0)
    except TypeError as e:
        raise ValueError(f"model_args {cfg['model_args']} do not fit model {cfg['model']}: {e}") from None
    C, H, W = model_input_size(model)
    size = cfg["image_size"] or H
    if (size, size) != (H, W):
        model.eval()
        try:
            model(np.zeros((1, C, size, size), dtype=backend.get_default_dtype()))
        except ValueError as e:
            raise ValueError(f"recipe {cfg['recipe']!r}: model {cfg['model']} cannot take {size}×{size} inputs "
                             f"(it is built for {H}×{W}); set image_size={H}: {e}") from None
    return [int(C), int(size), int(size)]


# -- command line helpers -----------------------------------------------------------------------------------------
def parse_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


