"""``nabi pretrain``: self-supervised pretraining (SimCLR, SimSiam, BYOL) of a zoo model's backbone.

The training flags are the declared settings (``nabi.training.config``) with pretraining's defaults;
the run is ``nabi.selfsup.pretrain.run_pretraining``.
"""
from __future__ import annotations

from .command import Command

# Pretraining's own defaults where they differ from nabi train's, and the choices it allows.
DEFAULTS = {"model": "resnet18_cifar", "epochs": 100, "batch_size": 256, "weight_decay": 1e-6, "schedule": "cosine",
            "out": "runs/pretrain"}
CHOICES = {"schedule": ("constant", "cosine", "warmup_cosine"), "normalize": ("unit", "pixel256", "imagenet")}
NOTES = {"model": "one ending in a Linear classifier", "batch_size": "each photo gives two views",
         "normalize": "`nabi train --init` should use the same", "schedule": "here constant, cosine or warmup_cosine"}


def add_arguments(p):
    from ..selfsup import METHODS
    from ..training.config import PRETRAIN
    from ..training.flags import add_setting_flags
    p.add_argument("photos", help="a folder of photos (searched recursively; labels are not used)")
    p.add_argument("--method", default="simclr", choices=list(METHODS),
                   help="the self-supervised method: simclr (NT-Xent), simsiam (predictor + stop-gradient) or byol "
                        "(predictor + a target network that is a moving average of the online one)")
    p.add_argument("--temperature", type=float,
                   help="τ of NT-Xent (SimCLR only: refused with the other methods; default 0.5)")
    p.add_argument("--projection-dim", type=int, default=128,
                   help="output size of the projection head (SimSiam: also the predictor's, whose hidden layer "
                        "is a quarter of it; BYOL: also the predictor's)")
    p.add_argument("--ema-momentum", type=float,
                   help="BYOL only (refused with the other methods): the target network's starting momentum "
                        "τ in [0, 1); after each step its weights become τ·target + (1−τ)·online, τ rising to 1 on a "
                        "cosine over the run (default 0.99, for short runs; the paper's 0.996 suits 1000 epochs)")
    add_setting_flags(p, PRETRAIN, defaults=DEFAULTS, choices=CHOICES, suffix=NOTES)
    p.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint "
                                                         "(default: off)")


def run(args):
    from ..selfsup.pretrain import run_pretraining
    from ..training.config import PRETRAIN, TrainConfig
    from ..training.flags import given_settings
    cfg = TrainConfig.from_dict({**given_settings(args, PRETRAIN), "data": args.photos, "val_ratio": 0.0,
                                 "test_ratio": 0.0})
    for flag, value, method in (("--temperature", args.temperature, "simclr"),
                                ("--ema-momentum", args.ema_momentum, "byol")):
        if value is not None and args.method != method:
            raise ValueError(f"{flag} is a setting of --method {method}; --method {args.method} has no use for it "
                             f"(leave it out, or choose --method {method})")
    run_pretraining(cfg, method=args.method, temperature=0.5 if args.temperature is None else args.temperature,
                    projection_dim=args.projection_dim, resume=args.resume,
                    ema_momentum=0.99 if args.ema_momentum is None else args.ema_momentum)
    print(f"run folder: {cfg.out}")
    return 0


COMMAND = Command(
    "pretrain", "self-supervised pretraining (SimCLR, SimSiam, BYOL) of a zoo model's backbone on unlabelled photos",
    add_arguments, run,
    description="Pretrain a zoo model's backbone with SimCLR's contrastive loss (NT-Xent; wants large "
                "batches), SimSiam's stop-gradient cosine loss (no negatives; suits small batches) or BYOL's (a "
                "predictor chasing a moving average of the network; no negatives) on every "
                "photo under PHOTOS (sub-folders are searched; their names are ignored). Writes "
                "OUT/backbone.safetensors (+ backbone.json naming the architecture) for "
                "`nabi train DATA --model SAME --init OUT/backbone.safetensors`. The log's acc column is "
                "the contrastive top-1: how often a view's nearest other view is its own pair; SimSiam and BYOL "
                "also log z_std, and warn when their projections collapse.",
    examples=("nabi pretrain nyala_more/ --model resnet18_cifar --image-size 64 --epochs 50 --out runs/pretrain",
              "nabi pretrain nyala_more/ --method byol --model resnet20 --image-size 64 --batch-size 64 --out runs/byol",
              "nabi train photos/ --model resnet18_cifar --image-size 64 --init runs/pretrain/backbone.safetensors"))
