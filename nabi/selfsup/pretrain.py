"""``nabi pretrain``: SimCLR, SimSiam or BYOL on a folder of unlabelled photos with nabi's trainer; keeps the
backbone.

Per step: two augmented views of N photos → x (2N, C, H, W) → backbone → heads → loss → backward →
optimiser step. SimCLR: projection head → z (2N, D) → NT-Xent(z, τ), which needs many negatives
(large batches). SimSiam: projector → z, predictor → p, loss ½ D(p₁, sg(z₂)) + ½ D(p₂, sg(z₁)) with
D the negative cosine and sg the stop-gradient: no negatives, so it suits small batches and CPUs.
BYOL: the same online predictor, but the other view's projection z' comes from a target network, a
copy of backbone and projector whose weights are an exponential moving average of the online ones
(updated after each optimiser step, momentum τ rising from ``--ema-momentum`` to 1); loss
‖p̂₁ − sg(ẑ'₂)‖² + ‖p̂₂ − sg(ẑ'₁)‖² over unit vectors. The trainer brings progress, the
metrics log, checkpoints (``--checkpoint-every``; BYOL's target weights and update count included) and
exact resume (``--resume``).

The run folder holds what ``nabi train`` writes (``config.json``, ``metrics.jsonl``,
``checkpoints/``, ``model.safetensors``: backbone and heads, for BYOL the target too) and
``backbone.safetensors`` with its sidecar ``backbone.json`` (format ``nabi-backbone``, the zoo
architecture and its arguments, input size, normalisation, how it was pretrained): the weights that
``nabi train --init RUN/backbone.safetensors`` starts a classifier from (for BYOL the online backbone).

The ``acc`` column of the log is the contrastive top-1: the fraction of the 2N views
whose most similar other view (cosine similarity of z; for SimSiam, of p against the others' z; for BYOL,
of p against the others' target z') is the other view of the same photo. SimSiam and BYOL, which have no
negatives to keep the photos apart, also log ``z_std`` (``nabi.selfsup.collapse``) and warn when their
projections collapse.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

from .. import __version__, backend, files
from .. import data as D
from ..data.prepare import normalization_spec, normalization_transform
from ..layers.byol import BYOLLoss
from ..layers.contrastive import NTXentLoss
from ..layers.simsiam import SimSiamLoss
from ..models.registry import model_input_size, set_input_size
from ..runs import resolved_config, write_config
from ..training.build import build_model, build_trainer
from ..training.config import TrainConfig, check
from ..training.extensions import Extension
from ..training.trainer import Trainer
from ..training.updater import StandardUpdater, skip_input_gradient
from . import METHODS
from .collapse import collapse_warning, healthy_std, is_collapsing, normalised_std
from .data import TwoViewBatches, TwoViewImages, simclr_augmentation
from .ema import check_momentum, ema_momentum as target_momentum
from .model import BYOL, SimCLR, SimSiam, backbone_of

BACKBONE_FILE = "backbone.safetensors"


class ContrastiveUpdater(StandardUpdater):
    """The step with a two-view loss (``nabi.training.updater``); its ``correct`` counts the contrastive top-1.

    The batches' labels are −1 (``TwoViewBatches``), so the standard argmax-equals-label count is
    always 0; each step adds the loss layer's count of anchors whose positive is the nearest other
    view instead.

    For a model that exposes its projections (SimSiam and BYOL set ``model.projection``, the online z of
    the step) each step also adds the collapse statistic ``normalised_std(z)`` (``nabi.selfsup.collapse``);
    each epoch's metrics row gets its mean over the epoch's batches as ``z_std``, with ``z_std_healthy`` =
    1/√D (``CollapseWarning`` warns once when it falls below 0.2/√D).
    """

    def update(self, x, y):
        batch = super().update(x, y)
        batch["correct"] += self.loss_fn.correct
        z = getattr(self.model, "projection", None)
        if z is not None:
            batch["z_std"] = normalised_std(z)
            batch["z_batches"] = 1
        return batch

    def epoch_columns(self, sums):
        if not sums.get("z_batches"):
            return {}
        return {"z_std": sums["z_std"] / sums["z_batches"], "z_std_healthy": healthy_std(self.model.projection_dim)}


class BYOLUpdater(ContrastiveUpdater):
    """The contrastive step with, after every optimiser step, the target update ξ ← τ_k ξ + (1 − τ_k) θ,
    τ_k rising from ``ema_momentum`` to 1 over the run's K steps (``nabi.selfsup.ema``). The target's
    weights are part of the model's ``state_dict`` and so of every checkpoint; the count k of target
    updates is saved beside the trainer's counters (``state.json``, key ``ema``), so a resumed run
    continues exactly where the killed one stopped. A resume with another starting momentum or another
    K (the momentum schedule) is refused, naming both values."""

    def __init__(self, model, optimizer, ema_momentum=0.99, **kwargs):
        super().__init__(model, optimizer, **kwargs)
        self.ema_momentum = check_momentum(ema_momentum)
        self.ema_steps = 0

    @property
    def total_steps(self) -> int:
        """K: the optimiser steps of the whole run (the iteration budget when it ends the run sooner)."""
        t = self.trainer
        total = t.epochs * len(t.train_loader)
        return min(total, t.max_iterations) if t.max_iterations is not None else total

    def update(self, x, y):
        batch = super().update(x, y)
        self.model.update_target(target_momentum(self.ema_steps, self.total_steps, self.ema_momentum))
        self.ema_steps += 1
        return batch

    def state_dict(self):
        state = super().state_dict()
        state["ema"] = {"steps": self.ema_steps, "momentum_base": self.ema_momentum, "total_steps": self.total_steps}
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.ema_steps = int(state["ema"]["steps"])

    def resume_differences(self, path, state):
        """The two settings that fix the target's momentum schedule τ_k: the starting momentum
        (``--ema-momentum``) and the run's K optimiser steps (``--epochs``/``--iterations`` with
        ``--batch-size`` and the number of photos). Checkpoints that do not record them are not compared;
        one without BYOL's target state is refused."""
        ema = state.get("ema")
        if not isinstance(ema, dict) or "steps" not in ema:
            raise ValueError(f"checkpoint {path} holds no BYOL target state (state.json has no 'ema' entry); "
                             f"it is not from a `nabi pretrain --method byol` run")
        out = super().resume_differences(path, state)
        if "momentum_base" in ema and float(ema["momentum_base"]) != self.ema_momentum:
            out.append(("--ema-momentum", float(ema["momentum_base"]), self.ema_momentum))
        if "total_steps" in ema and int(ema["total_steps"]) != self.total_steps:
            out.append(("the run's length in optimiser steps (--epochs/--iterations, --batch-size)",
                        int(ema["total_steps"]), self.total_steps))
        return out


class CollapseWarning(Extension):
    """One warning for the run, at the first epoch whose ``z_std`` is below 0.2/√D (``nabi.selfsup.collapse``)."""

    name = "collapse_warning"
    priority = 450

    def __call__(self, trainer):
        rows = [r for r in trainer.history if "z_std" in r]
        if not rows or rows[-1] is not trainer.history[-1]:
            return
        dim = trainer.model.projection_dim
        if is_collapsing(rows[-1]["z_std"], dim) and not any(is_collapsing(r["z_std"], dim) for r in rows[:-1]):
            trainer.log(collapse_warning(rows[-1]["z_std"], dim, rows[-1]["epoch"]))


class ContrastiveTrainer(Trainer):
    """A ``Trainer`` with the contrastive step (``ContrastiveUpdater``; NT-Xent at ``temperature``, or ``loss``)
    and the collapse warning."""

    def __init__(self, *args, temperature=0.5, loss=None, **kwargs):
        loss = loss if loss is not None else NTXentLoss(temperature)
        if kwargs.get("replicas") is not None:     # the pairs (and NT-Xent's negatives) of the whole batch
            loss = kwargs["replicas"].whole_batch(loss, "two_views")
        kwargs["loss_fn"] = loss
        if kwargs.get("updater") is None:
            kwargs["updater"] = ContrastiveUpdater
        kwargs["extensions"] = [*kwargs.get("extensions", ()), CollapseWarning()]
        super().__init__(*args, **kwargs)


class BYOLTrainer(ContrastiveTrainer):
    """A ``Trainer`` with BYOL's step (``BYOLUpdater``, target momentum from ``ema_momentum``) and loss."""

    def __init__(self, *args, ema_momentum=0.99, **kwargs):
        kwargs.pop("temperature", None)
        kwargs["updater"] = partial(BYOLUpdater, ema_momentum=ema_momentum)
        super().__init__(*args, loss=BYOLLoss(), **kwargs)

    @property
    def ema_total_steps(self) -> int:
        """K: the optimiser steps of the whole run (``BYOLUpdater.total_steps``)."""
        return self.updater.total_steps

    @property
    def ema_steps(self) -> int:
        """k: the target updates so far."""
        return self.updater.ema_steps


def _contrastive_trainer(temperature, method="simclr", ema_momentum=0.99):
    if method == "byol":
        return partial(BYOLTrainer, ema_momentum=ema_momentum)
    return partial(ContrastiveTrainer, temperature=temperature,
                   loss=SimSiamLoss() if method == "simsiam" else None)


def run_pretraining(cfg: TrainConfig, method="simclr", temperature=0.5, projection_dim=128, resume=False,
                    log=print, ema_momentum=0.99, replicas=None):
    """Pretrain ``cfg.model``'s backbone on the photos under ``cfg.data``; returns ``(trainer, backbone_path)``.

    Uses of ``cfg``: model, model_args, image_size, channels, normalize, epochs/iterations, batch_size,
    optimizer, lr, momentum, weight_decay, schedule, warmup, clip_norm, seed, device, workers, cache,
    out, checkpoint_every, keep_last, progress. ``method``: simclr, simsiam or byol; ``temperature``: NT-Xent's
    τ (simclr); ``ema_momentum``: BYOL's starting target momentum τ_base, in [0, 1). BYOL runs in float32
    only (``cfg.precision`` other than float32 is refused): its target network is updated outside the optimiser.
    A bad configuration is refused first (``nabi.training.config.check``).

    With ``cfg.replicas`` ≥ 2 the run is data-parallel (``nabi.training.replicas``): each replica makes the
    two views of its share of every batch's photos, and the loss is computed over the whole batch gathered
    from all of them (NT-Xent's negatives, the contrastive top-1), so the run is the one a single process
    makes (to rounding; batch norm per replica unless ``cfg.sync_batch_norm``). ``trainer`` is then replica
    0's report (``ReplicatedRun``). ``replicas``: this process's place in such a run (set by the launcher).
    """
    check(cfg)
    args = dict(method=method, temperature=temperature, projection_dim=projection_dim, ema_momentum=ema_momentum)
    if cfg.replicas > 1 and replicas is None:
        _check_pretraining(cfg, method, temperature, ema_momentum)
        from ..training.replicas import train_replicated
        trainer = train_replicated(cfg, resume=resume, log=log,
                                   job={"entry": f"{__name__}:pretraining_replica_job", "args": args})
        return trainer, Path(trainer.extra["backbone"])
    return _pretrain(cfg, resume=resume, log=log, replicas=replicas, **args)


def pretraining_replica_job(cfg, *, resume, log, replicas, **args):
    """One replica of a data-parallel pretraining run (``nabi.training.replicas.replica_main``)."""
    trainer, path = _pretrain(cfg, resume=resume, log=log, replicas=replicas, **args)
    return trainer, {"backbone": str(path)}


def _check_pretraining(cfg, method, temperature, ema_momentum):
    if method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}; got {method!r}")
    if not temperature > 0:
        raise ValueError(f"--temperature must be positive, got {temperature}")
    ema_momentum = check_momentum(ema_momentum)
    if method == "byol" and cfg.precision != "float32":
        raise ValueError(f"BYOL pretraining runs in float32 only, got precision {cfg.precision!r}: its target "
                         f"network is a moving average of the online weights, outside the optimiser, and mixed "
                         f"precision keeps float32 masters only of the optimiser's parameters (give precision "
                         f"'float32', or another method)")
    if cfg.batch_size < 2:
        raise ValueError(f"--batch-size must be at least 2 photos (each batch holds 2 × batch-size views), "
                         f"got {cfg.batch_size}")
    backend.check_device(cfg.device)


def _pretrain(cfg, method, temperature, projection_dim, resume, log, ema_momentum, replicas):
    _check_pretraining(cfg, method, temperature, ema_momentum)
    ema_momentum = check_momentum(ema_momentum)
    out = Path(cfg.out)
    first = replicas is None or replicas.rank == 0          # the process that writes the run folder
    if first:
        Trainer._check_writable(out)
    zoo = build_model(cfg.model, 2, dict(cfg.model_args), seed=cfg.seed)
    C, H, W = model_input_size(zoo)
    if cfg.image_size and (cfg.image_size, cfg.image_size) != (H, W):
        H = W = set_input_size(zoo, cfg.image_size)
    channels = cfg.channels or C
    backbone, feature_dim = backbone_of(zoo)
    if method == "simsiam":
        model = SimSiam(backbone, feature_dim, projection_dim)   # the heads draw from the generator seeded above
        skip_input_gradient(backbone)          # the trainer's own call stops at SimSiam, which is no Sequential
    elif method == "byol":
        model = BYOL(backbone, feature_dim, projection_dim)      # the target starts as a copy of the online net
        skip_input_gradient(backbone)
    else:
        model = SimCLR(backbone, feature_dim, projection_dim)    # the head draws from the generator seeded above
    norm = normalization_spec(cfg.normalize, None, channels)
    photos = TwoViewImages(cfg.data, H, simclr_augmentation((H, W)) + [normalization_transform(norm)],
                           channels=channels, cache=cfg.cache, fit=cfg.fit)
    if len(photos) < cfg.batch_size:
        raise ValueError(f"{cfg.data}: {len(photos)} photos, fewer than --batch-size {cfg.batch_size}; "
                         f"give a smaller batch size")
    loader = TwoViewBatches(D.DataLoader(photos, batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed,
                                         drop_last=True, num_workers=cfg.workers, device=cfg.device))
    model.to(cfg.device)
    pretraining = {"method": method, "projection_dim": int(projection_dim), "num_photos": len(photos)}
    if method == "simclr":
        pretraining["temperature"] = float(temperature)
    if method == "byol":
        pretraining["ema_momentum"] = ema_momentum
    ran = {"input_size": [C, H, W], "normalization": norm, "pretraining": pretraining}
    resolved = resolved_config(cfg, ran)
    meta = {"format": f"nabi-{method}", "nabi_version": __version__, "arch": model.arch, "classes": [],
            "input_size": [C, H, W], "normalization": norm, "config": resolved}
    trainer = build_trainer(cfg, model, loader, None, out_dir=out, metadata=meta, config=resolved, log=log,
                            trainer_class=_contrastive_trainer(temperature, method, ema_momentum),
                            replicas=replicas)
    if resume and trainer.resume() is None:
        log(f"no checkpoint in {out}: starting from the beginning")
    if first:
        write_config(out, cfg, ran)             # after the resume: a refused one leaves config.json as it was
    trainer.fit()
    path = out / BACKBONE_FILE
    if not first:
        return trainer, path
    files.save_weights(path, model.backbone_state(), {
        "format": "nabi-backbone", "nabi_version": __version__, "arch": backbone.arch,
        "input_size": [C, H, W], "normalization": norm, "feature_dim": feature_dim,
        "removed_classifier": backbone.classifier_name,
        "pretraining": dict(pretraining, epochs_trained=trainer.epoch, iterations=trainer.iteration,
                            status=trainer.status)})
    log(f"backbone weights: {path} ({backbone.arch['name']} without its '{backbone.classifier_name}' classifier)")
    return trainer, path
