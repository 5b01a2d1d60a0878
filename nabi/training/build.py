"""Everything a training run is built from: the model, the optimiser, the schedule, the trainer, the run folder.

``build_trainer`` is the one place a ``Trainer`` is put together from a ``TrainConfig``:
``nabi train``, the background-class experiment and the ablations all call it, so the
same setting (fused SGD, precision, early stopping, label smoothing, ...) means the same
thing everywhere. ``run_training`` trains: data, model, trainer, fit (``nabi.training.run.train`` is the
whole of ``nabi train``: this, then the test and the pruning).
"""
from __future__ import annotations

from pathlib import Path

from .. import backend
from .. import data as D
from ..data.prepare import (EMBEDDED_PREFIX, Cached, Transformed, augmentation, eval_transforms, load_datasets,
                            normalization_spec, folder_classes)
from ..models.registry import model_input_size, set_input_size
from ..runs import model_metadata, resolved_config, write_config
from .config import ONE_CYCLE_RISE, TrainConfig, check


# -- model -------------------------------------------------------------------------------------------
def build_model(name: str, num_classes: int, model_args=None, seed=None):
    from .. import models
    rng_seed = backend.new_rng(seed) if seed is not None else None
    args = dict(model_args or {})
    if rng_seed is not None:
        backend.seed(int(rng_seed.integers(2**63 - 1)))
    return models.get(name, num_classes=num_classes, **args)


def make_optimizer(cfg: TrainConfig, model, params=None, lr_scale=None):
    """``cfg.optimizer`` over ``params`` (``(name, Parameter)`` pairs; default: all of ``model``'s), each
    parameter stepping with ``lr · lr_scale[name]`` (default 1)."""
    from .. import optim
    params = model.named_parameters() if params is None else params
    if cfg.optimizer == "sgd":
        return optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                         nesterov=cfg.nesterov, lr_scale=lr_scale)
    if cfg.optimizer == "adam":
        return optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, lr_scale=lr_scale)
    if cfg.optimizer == "adamw":
        return optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, lr_scale=lr_scale)
    raise ValueError(f"optimizer must be sgd, adam or adamw; got {cfg.optimizer!r}")


def warmup_steps(cfg: TrainConfig, total: int) -> int:
    """The warm-up length of ``warmup_cosine`` in schedule steps: ``cfg.warmup``, or, when
    ``cfg.warmup_fraction`` is given, ``round(warmup_fraction * total)`` (at least 1)."""
    if cfg.warmup_fraction is None:
        return int(cfg.warmup)
    return max(1, int(round(float(cfg.warmup_fraction) * total)))


def make_schedule(cfg: TrainConfig, optimizer, steps_per_epoch: int):
    from .. import optim
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
        return optim.make_schedule("warmup_cosine", optimizer, warmup_steps=warmup_steps(cfg, total),
                                   total_steps=total)
    if name == "linear_step":
        return optim.make_schedule("linear_step", optimizer, total_steps=total)
    if name == "one_cycle":
        rise = ONE_CYCLE_RISE if cfg.warmup_fraction is None else cfg.warmup_fraction
        return optim.make_schedule("one_cycle", optimizer, total_steps=total, pct_start=rise)
    raise ValueError(f"schedule must be constant, step, cosine, warmup_cosine, linear_step or one_cycle; "
                     f"got {name!r}")


def build_trainer(cfg: TrainConfig, model, train_loader, val_loader=None, *, out_dir=None, metadata=None,
                  config=None, log=print, trainer_class=None, loss_fn=None, updater=None, extensions=(),
                  replicas=None):
    """The one place a ``Trainer`` is put together from a ``TrainConfig``.

    Makes the optimiser (``cfg.optimizer``, ``lr``, ``momentum``, ``weight_decay``, ``nesterov``), the
    schedule (``cfg.schedule`` over ``len(train_loader)`` steps per epoch) and the loss (cross-entropy
    with ``cfg.label_smoothing``), and passes every training option of ``cfg`` (length, clipping,
    checkpoints, early stopping, progress, fused SGD, precision) to the trainer. ``out_dir`` defaults
    to ``cfg.out``; ``metadata`` goes into every weight file's sidecar and ``config`` is the resolved
    configuration the run records. ``loss_fn`` replaces the cross-entropy (an embedding head's loss, soft
    targets); ``updater``: the step's class (``nabi.training.updater``; a contrastive or BYOL step);
    ``extensions``: more of them (``nabi.training.extensions``; retrieval columns, reporting to Ray Tune).
    ``trainer_class``: a ``Trainer`` subclass (the study runners leave the curves to the end).
    ``replicas``: this process's place in a data-parallel run (``nabi.training.replicas``); ``train_loader``
    is then sharded here and the model's batch norms synchronised with ``cfg.sync_batch_norm``.

    ``cfg.freeze_until`` and ``cfg.layer_lr_decay`` (``nabi.training.fine_tune``) freeze the stages up
    to one (left out of the optimiser, in eval mode, no backward) and give each stage its learning-rate
    multiplier; what they did is logged.
    """
    from ..layers import CrossEntropyLoss
    from . import fine_tune
    from .trainer import Trainer
    plan = fine_tune.prepare(model, cfg.freeze_until, cfg.layer_lr_decay)
    if cfg.freeze_until is not None and not cfg.init:
        log(f"note: --freeze-until {cfg.freeze_until} without --init freezes the model's initial weights")
    for line in plan["lines"]:
        log(line)
    optimizer = make_optimizer(cfg, model, plan["params"], plan["lr_scale"])
    schedule = make_schedule(cfg, optimizer, len(train_loader))
    kwargs = {}
    if replicas is not None:
        shard_train_loader(train_loader, replicas.rank, replicas.world)
        replicas.attach(model, cfg.sync_batch_norm, params=list(optimizer.params.values()),
                        overlap=cfg.overlap_sum)
        kwargs["replicas"] = replicas
    return (trainer_class or Trainer)(
        model, optimizer, train_loader, val_loader,
        loss_fn=loss_fn if loss_fn is not None else CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
        schedule=schedule, schedule_unit=cfg.schedule_unit, epochs=cfg.epochs, iterations=cfg.iterations,
        out_dir=cfg.out if out_dir is None else out_dir, clip_norm=cfg.clip_norm,
        checkpoint_every=cfg.checkpoint_every, keep_last=cfg.keep_last, early_stopping=cfg.early_stopping,
        progress=cfg.progress, metadata=metadata, config=config, log=log, fused_sgd=cfg.fused_sgd,
        precision=cfg.precision, updater=updater, extensions=extensions, **kwargs)


def shard_train_loader(loader, rank: int, world: int) -> None:
    """Make ``loader`` (a ``DataLoader``, or a view of one) yield shard ``rank`` of ``world`` of every batch;
    ``ValueError`` when some batch would leave a replica without an image."""
    inner = loader
    while not hasattr(inner, "shard") and hasattr(inner, "loader"):
        inner = inner.loader
    if not hasattr(inner, "shard"):
        raise ValueError(f"--replicas {world}: the training loader {type(loader).__name__} cannot be sharded")
    n, b = len(inner.dataset), inner.batch_size
    smallest = min(b, n) if inner.drop_last or n % b == 0 else min(b, n % b)
    if hasattr(inner, "p") and hasattr(inner, "k"):
        smallest = b                                   # P×K batches are all full
    if smallest < world:
        raise ValueError(f"--replicas {world}: a batch of {smallest} image(s) (the last of each epoch: "
                         f"{n} training images in batches of {b}) leaves a replica without an image; change "
                         f"--batch-size or --replicas so that every batch holds at least {world} images")
    inner.shard(rank, world)


def check_warmup(cfg: TrainConfig) -> None:
    """``ValueError`` unless the warm-up is given one way: ``warmup`` iterations or ``warmup_fraction``
    (the warm-up part of ``nabi.training.config.check``, for callers that check nothing else)."""
    f = cfg.warmup_fraction
    if f is not None:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f < 1:
            raise ValueError(f"--warmup-fraction must be a number in [0, 1), got {f!r}")
        if cfg.warmup:
            raise ValueError(f"give the warm-up one way: --warmup {cfg.warmup} (iterations) or --warmup-fraction "
                             f"{f:g} (a share of the run), not both")


# -- the record of a run -------------------------------------------------------------------------------
def _split_sources(cfg: TrainConfig) -> dict:
    """Where each part came from: a split folder, a stratified share of another part, or nowhere."""
    folders = None if cfg.data.startswith(EMBEDDED_PREFIX) else D.find_splits(cfg.data)
    if folders:
        train = str(folders["train"])
        val = (str(folders["val"]) if "val" in folders else
               f"{cfg.val_ratio:g} of {train}, stratified, seed {cfg.seed}" if cfg.val_ratio > 0 else None)
        return {"train": train if val is None or "val" in folders else f"the rest of {train}", "val": val,
                "test": str(folders["test"]) if "test" in folders else None}
    share = lambda r: f"{r:g} of {cfg.data}, stratified, seed {cfg.seed}" if r > 0 else None
    return {"train": f"{1 - cfg.val_ratio - cfg.test_ratio:g} of {cfg.data}, stratified, seed {cfg.seed}",
            "val": share(cfg.val_ratio), "test": share(cfg.test_ratio)}


def what_ran(cfg: TrainConfig, parts, input_size, channels, norm, steps_per_epoch: int) -> dict:
    """What ``write_config`` records beside ``cfg``: every resolved value, and the settings that did not
    apply as ``None`` (a ratio where a split folder was used, momentum for Adam, ...).

    Also refuses settings that cannot mean anything for this data: early stopping without a
    validation part, a warm-up as long as the whole run (the rest is ``config.check``'s, run before)."""
    splits = _split_sources(cfg)
    folders = None if cfg.data.startswith(EMBEDDED_PREFIX) else D.find_splits(cfg.data)
    if cfg.early_stopping and parts.get("val") is None:
        raise ValueError(f"--early-stopping {cfg.early_stopping} needs a validation part, and {cfg.data} gives none: "
                         f"use --val-ratio above 0 (or a val/ folder), or drop --early-stopping")
    total = cfg.iterations or cfg.epochs * steps_per_epoch
    warmup = warmup_steps(cfg, cfg.epochs if cfg.schedule_unit == "epoch" else total)
    if cfg.schedule == "warmup_cosine" and warmup >= (cfg.epochs if cfg.schedule_unit == "epoch" else total):
        given = (f"--warmup-fraction {cfg.warmup_fraction:g} ({warmup} steps)" if cfg.warmup_fraction is not None
                 else f"--warmup {cfg.warmup}")
        raise ValueError(f"{given} is not shorter than the whole run ({total} iterations): "
                         f"give fewer warm-up steps")
    if cfg.schedule == "one_cycle":
        from ..optim import OneCycleLR
        OneCycleLR.check(cfg.epochs if cfg.schedule_unit == "epoch" else total,
                         ONE_CYCLE_RISE if cfg.warmup_fraction is None else cfg.warmup_fraction)
    count = lambda name: len(parts[name]) if parts.get(name) is not None else 0
    sgd = cfg.optimizer == "sgd"
    from ..data.background import is_background
    return {
        "classes": parts["classes"], "background_classes": [c for c in parts["classes"] if is_background(c)],
        "input_size": list(input_size), "image_size": input_size[1],
        "channels": channels, "normalization": norm,
        "num_train": count("train"), "num_val": count("val"), "num_test": count("test"), "splits": splits,
        "val_ratio": cfg.val_ratio if splits["val"] and not (folders and "val" in folders) else None,
        "test_ratio": cfg.test_ratio if splits["test"] and not (folders and "test" in folders) else None,
        "momentum": cfg.momentum if sgd else None, "nesterov": cfg.nesterov if sgd else None,
        "warmup": warmup if cfg.schedule == "warmup_cosine" else None,
        "warmup_fraction": (cfg.warmup_fraction if cfg.schedule == "warmup_cosine" else
                            (ONE_CYCLE_RISE if cfg.warmup_fraction is None else cfg.warmup_fraction)
                            if cfg.schedule == "one_cycle" else None),
        "fit": cfg.fit if not cfg.data.startswith(EMBEDDED_PREFIX) else None,
        "step_size": cfg.step_size if cfg.schedule == "step" else None,
        "gamma": cfg.gamma if cfg.schedule == "step" else None,
        "iterations_per_epoch": steps_per_epoch, "total_iterations": total,
        "replicas": cfg.replicas,
        "batch_per_replica": _per_replica(cfg.batch_size, cfg.replicas),
        "best_weights": ("the epoch with the best validation accuracy (best.safetensors)"
                         if parts.get("val") is not None else
                         "none kept: no validation part to choose by; the final weights are the run's"),
    }


def _per_replica(batch_size: int, replicas: int):
    """What each replica holds of a global batch, as the run records it (None for one process)."""
    if replicas <= 1:
        return None
    low, high = batch_size // replicas, -(-batch_size // replicas)
    return f"{low if low == high else f'{low} or {high}'} of every {batch_size} images"


def run_training(cfg: TrainConfig, resume=False, log=print, overwrite=False, trainer_class=None, extensions=()):
    """Train as ``cfg`` says; writes the run folder; returns ``(trainer, parts)``.

    The run folder is locked for the whole run, and an existing run in it is continued
    (``resume``), replaced (``overwrite``) or refused (``nabi.runs.open_run_folder``).
    ``trainer_class``, ``extensions``: as in ``build_trainer`` (``nabi sweep`` reports each epoch to Ray Tune
    from an extension).
    The trainer's ``init_report`` is what ``cfg.init`` loaded (``init_from.load_matching``), or None.
    A bad configuration is refused first (``config.check``). One process: a run of ``cfg.replicas`` ≥ 2 goes
    through ``nabi.training.run.train`` (``nabi.training.replicas``)."""
    from ..runs import open_run_folder
    check(cfg)
    if cfg.replicas > 1:
        raise ValueError(f"--replicas {cfg.replicas}: run_training trains in this one process; a replicated run "
                         f"is started by nabi.training.run.train (nabi train)")
    with open_run_folder(cfg.out, resume=resume, overwrite=overwrite, log=log):
        return _train(cfg, resume, log, trainer_class, extensions)


def training_parts(cfg: TrainConfig, size=None, channels=3) -> dict:
    """The train/val/test parts ``nabi train`` reads for ``cfg`` at ``size`` × ``size`` pixels
    (``nabi.data.prepare.load_datasets``; embedded data comes at its own size). The same call gives the
    same parts, so a process that did not train (a data-parallel run's launcher) can score the run."""
    if cfg.data.startswith(EMBEDDED_PREFIX):
        return load_datasets(cfg.data, image_size=None, channels=3, val_ratio=cfg.val_ratio,
                             test_ratio=cfg.test_ratio, seed=cfg.seed, exclude=cfg.exclude, strict=cfg.strict)
    return load_datasets(cfg.data, image_size=(size, size), channels=channels, val_ratio=cfg.val_ratio,
                         test_ratio=cfg.test_ratio, seed=cfg.seed, exclude=cfg.exclude, strict=cfg.strict,
                         fit=cfg.fit, background_kinds=cfg.background_kinds == "split", encounters=cfg.encounters)


def _train(cfg: TrainConfig, resume, log, trainer_class=None, extensions=(), replicas=None):
    from .trainer import Trainer
    backend.check_device(cfg.device)
    if cfg.device == "gpu":
        backend.array_module("gpu")
    out = Path(cfg.out)
    first = replicas is None or replicas.rank == 0          # the process that writes the run folder
    if first:
        Trainer._check_writable(out)
    # Build the model first (it fixes the input size), then the data.
    probe_classes = None
    model_args = dict(cfg.model_args)
    kinds = cfg.background_kinds == "split"
    parts = training_parts(cfg) if cfg.data.startswith(EMBEDDED_PREFIX) else None
    if parts is not None:
        probe_classes = parts["classes"]
    if probe_classes is None:
        probe_classes = folder_classes(cfg.data, cfg.exclude, background_kinds=kinds)
    if len(probe_classes) < 2:
        raise ValueError(f"{cfg.data}: need at least two classes, found {probe_classes}")
    model = build_model(cfg.model, len(probe_classes), model_args, seed=cfg.seed)
    C, H, W = model_input_size(model)
    if cfg.image_size and (cfg.image_size, cfg.image_size) != (H, W):
        H = W = set_input_size(model, cfg.image_size)
    init_report = None
    if cfg.init:
        from .init_from import format_report, load_matching
        init_report = load_matching(model, cfg.init)
        log(format_report(init_report))
    if cfg.freeze_until is not None:       # refused before the data is read: an unknown stage, one that
        from .fine_tune import check_frozen_were_loaded, frozen_stages     # leaves nothing to train, or
        frozen_stages(model, cfg.freeze_until)                              # weights --init did not load
        if init_report is not None:
            check_frozen_were_loaded(model, cfg.freeze_until, init_report)
    channels = cfg.channels or C
    size = cfg.image_size or H
    if parts is None:
        parts = training_parts(cfg, size, channels)
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
    ran = what_ran(cfg, parts, [C, H, W], channels, norm, len(train_loader))
    resolved = resolved_config(cfg, ran)
    meta = model_metadata(model, classes, norm, resolved)
    trainer = build_trainer(cfg, model, train_loader, val_loader, out_dir=out, metadata=meta, config=resolved,
                            log=log, trainer_class=trainer_class, extensions=extensions, replicas=replicas)
    trainer.init_report = init_report           # what --init loaded (init_from.load_matching), or None
    if resume:
        if trainer.resume() is None:
            log(f"no checkpoint in {out}: starting from the beginning")
    if first:
        write_config(out, cfg, ran)                 # after the resume: a refused one leaves config.json as it was
    trainer.fit()
    return trainer, parts
