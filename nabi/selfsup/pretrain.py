"""``nabi pretrain``: SimCLR or SimSiam on a folder of unlabelled photos with nabi's trainer; keeps the backbone.

Per step: two augmented views of N photos → x (2N, C, H, W) → backbone → heads → loss → backward →
optimiser step. SimCLR: projection head → z (2N, D) → NT-Xent(z, τ), which needs many negatives
(large batches). SimSiam: projector → z, predictor → p, loss ½ D(p₁, sg(z₂)) + ½ D(p₂, sg(z₁)) with
D the negative cosine and sg the stop-gradient: no negatives, so it suits small batches and CPUs. The trainer brings progress, the
metrics log, checkpoints (``--checkpoint-every``) and exact resume (``--resume``).

The run folder holds what ``nabi train`` writes (``config.json``, ``metrics.jsonl``,
``checkpoints/``, ``model.safetensors``: backbone and head) and ``backbone.safetensors``
with its sidecar ``backbone.json`` (format ``nabi-backbone``, the zoo architecture and its
arguments, input size, normalisation, how it was pretrained): the weights that
``nabi train --init RUN/backbone.safetensors`` starts a classifier from.

The ``acc`` column of the log is the contrastive top-1: the fraction of the 2N views
whose most similar other view (cosine similarity of z; for SimSiam, of p against the others' z)
is the other view of the same photo.
"""
from __future__ import annotations

from pathlib import Path

from .. import __version__, backend, files
from .. import data as D
from ..data.prepare import normalization_spec, normalization_transform
from ..layers.contrastive import NTXentLoss
from ..layers.simsiam import SimSiamLoss
from ..models.registry import model_input_size, set_input_size
from ..runs import write_config
from ..training.build import build_model, build_trainer
from ..training.config import TrainConfig
from ..training.trainer import Trainer, skip_input_gradient
from . import METHODS
from .data import TwoViewBatches, TwoViewImages, simclr_augmentation
from .model import SimCLR, SimSiam, backbone_of

BACKBONE_FILE = "backbone.safetensors"


class ContrastiveTrainer(Trainer):
    """The trainer with a two-view loss (NT-Xent, or ``loss`` when given); its accuracy column counts
    the contrastive top-1.

    The batches' labels are −1 (``TwoViewBatches``), so the trainer's own argmax-equals-label
    count is always 0; each step adds the loss layer's count of anchors whose positive is the
    nearest other view instead.
    """

    def __init__(self, *args, temperature=0.5, loss=None, **kwargs):
        kwargs["loss_fn"] = loss if loss is not None else NTXentLoss(temperature)
        super().__init__(*args, **kwargs)

    def _step(self, x, y, sums):
        super()._step(x, y, sums)
        sums["correct"] += self.loss_fn.correct


def _contrastive_trainer(temperature, method="simclr"):
    class _Bound(ContrastiveTrainer):
        def __init__(self, *args, **kwargs):
            loss = SimSiamLoss() if method == "simsiam" else None
            super().__init__(*args, temperature=temperature, loss=loss, **kwargs)
    _Bound.__name__ = _Bound.__qualname__ = "ContrastiveTrainer"
    return _Bound


def run_pretraining(cfg: TrainConfig, method="simclr", temperature=0.5, projection_dim=128, resume=False,
                    log=print):
    """Pretrain ``cfg.model``'s backbone on the photos under ``cfg.data``; returns ``(trainer, backbone_path)``.

    Uses of ``cfg``: model, model_args, image_size, channels, normalize, epochs/iterations, batch_size,
    optimizer, lr, momentum, weight_decay, schedule, warmup, clip_norm, seed, device, workers, cache,
    out, checkpoint_every, keep_last, progress.
    """
    if method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}; got {method!r}")
    if not temperature > 0:
        raise ValueError(f"--temperature must be positive, got {temperature}")
    if cfg.batch_size < 2:
        raise ValueError(f"--batch-size must be at least 2 photos (each batch holds 2 × batch-size views), "
                         f"got {cfg.batch_size}")
    backend.check_device(cfg.device)
    out = Path(cfg.out)
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
    resolved = write_config(out, cfg, {"input_size": [C, H, W], "normalization": norm, "pretraining": pretraining})
    meta = {"format": f"nabi-{method}", "nabi_version": __version__, "arch": model.arch, "classes": [],
            "input_size": [C, H, W], "normalization": norm, "config": resolved}
    trainer = build_trainer(cfg, model, loader, None, out_dir=out, metadata=meta, config=resolved, log=log,
                            trainer_class=_contrastive_trainer(temperature, method))
    if resume and trainer.resume() is None:
        log(f"no checkpoint in {out}: starting from the beginning")
    trainer.fit()
    path = out / BACKBONE_FILE
    files.save_weights(path, model.backbone_state(), {
        "format": "nabi-backbone", "nabi_version": __version__, "arch": backbone.arch,
        "input_size": [C, H, W], "normalization": norm, "feature_dim": feature_dim,
        "removed_classifier": backbone.classifier_name,
        "pretraining": dict(pretraining, epochs_trained=trainer.epoch, iterations=trainer.iteration,
                            status=trainer.status)})
    log(f"backbone weights: {path} ({backbone.arch['name']} without its '{backbone.classifier_name}' classifier)")
    return trainer, path
