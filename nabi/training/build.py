"""Everything a training run is built from: the model, the optimiser, the schedule, the trainer, the run folder.

``build_trainer`` is the one place a ``Trainer`` is put together from a ``TrainConfig``:
``nabi train``, the background-class experiment and the ablations all call it, so the
same setting (fused SGD, precision, early stopping, label smoothing, ...) means the same
thing everywhere. ``run_training`` is ``nabi train``: data, model, trainer, fit.
"""
from __future__ import annotations

from pathlib import Path

from .. import backend
from .. import data as D
from ..data.prepare import (EMBEDDED_PREFIX, Cached, Transformed, augmentation, eval_transforms, load_datasets,
                            normalization_spec, folder_classes)
from ..models.registry import model_input_size, set_input_size
from ..runs import model_metadata, write_config
from .config import TrainConfig


# -- model -------------------------------------------------------------------------------------------
def build_model(name: str, num_classes: int, model_args=None, seed=None):
    from .. import models
    rng_seed = backend.new_rng(seed) if seed is not None else None
    args = dict(model_args or {})
    if rng_seed is not None:
        backend.seed(int(rng_seed.integers(2**63 - 1)))
    return models.get(name, num_classes=num_classes, **args)


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
    if name == "linear_step":
        return optim.make_schedule("linear_step", optimizer, total_steps=total)
    raise ValueError(f"schedule must be constant, step, cosine, warmup_cosine or linear_step; got {name!r}")


def build_trainer(cfg: TrainConfig, model, train_loader, val_loader=None, *, out_dir=None, metadata=None,
                  config=None, log=print, trainer_class=None):
    """The one place a ``Trainer`` is put together from a ``TrainConfig``.

    Makes the optimiser (``cfg.optimizer``, ``lr``, ``momentum``, ``weight_decay``, ``nesterov``), the
    schedule (``cfg.schedule`` over ``len(train_loader)`` steps per epoch) and the loss (cross-entropy
    with ``cfg.label_smoothing``), and passes every training option of ``cfg`` (length, clipping,
    checkpoints, early stopping, progress, fused SGD, precision) to the trainer. ``out_dir`` defaults
    to ``cfg.out``; ``metadata`` goes into every weight file's sidecar and ``config`` is the resolved
    configuration the run records. ``trainer_class``: a ``Trainer`` subclass, for runners that change
    what is written when (the experiment runner writes its curves once, at the end).
    """
    from ..layers import CrossEntropyLoss
    from .trainer import Trainer
    optimizer = make_optimizer(cfg, model)
    schedule = make_schedule(cfg, optimizer, len(train_loader))
    return (trainer_class or Trainer)(
        model, optimizer, train_loader, val_loader, loss_fn=CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
        schedule=schedule, schedule_unit=cfg.schedule_unit, epochs=cfg.epochs, iterations=cfg.iterations,
        out_dir=cfg.out if out_dir is None else out_dir, clip_norm=cfg.clip_norm,
        checkpoint_every=cfg.checkpoint_every, keep_last=cfg.keep_last, early_stopping=cfg.early_stopping,
        progress=cfg.progress, metadata=metadata, config=config, log=log, fused_sgd=cfg.fused_sgd,
        precision=cfg.precision)


def run_training(cfg: TrainConfig, resume=False, log=print):
    """Train as ``cfg`` says; writes the run folder; returns ``(trainer, parts)``."""
    from .trainer import Trainer
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
        probe_classes = folder_classes(cfg.data, cfg.exclude)
    if len(probe_classes) < 2:
        raise ValueError(f"{cfg.data}: need at least two classes, found {probe_classes}")
    model = build_model(cfg.model, len(probe_classes), model_args, seed=cfg.seed)
    C, H, W = model_input_size(model)
    if cfg.image_size and (cfg.image_size, cfg.image_size) != (H, W):
        H = W = set_input_size(model, cfg.image_size)
    if cfg.init:
        from .init_from import format_report, load_matching
        log(format_report(load_matching(model, cfg.init)))
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
                parts[name] = Cached(parts[name])
    train_ds = Transformed(parts["train"], [base[0]] + augmentation(cfg.augment, (H, W)) + base[1:])
    train_loader = D.DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed,
                                num_workers=cfg.workers, device=cfg.device)
    val_loader = None
    if parts.get("val") is not None:
        val_loader = D.DataLoader(Transformed(parts["val"], base), batch_size=max(cfg.batch_size, 64),
                                  num_workers=cfg.workers, device=cfg.device)
    model.to(cfg.device)
    resolved = write_config(out, cfg, {"classes": classes, "input_size": [C, H, W], "normalization": norm,
                                       "num_train": len(parts["train"]),
                                       "num_val": len(parts["val"]) if parts.get("val") is not None else 0,
                                       "num_test": len(parts["test"]) if parts.get("test") is not None else 0})
    meta = model_metadata(model, classes, norm, resolved)
    trainer = build_trainer(cfg, model, train_loader, val_loader, out_dir=out, metadata=meta, config=resolved,
                            log=log)
    if resume:
        if trainer.resume() is None:
            log(f"no checkpoint in {out}: starting from the beginning")
    trainer.fit()
    return trainer, parts
