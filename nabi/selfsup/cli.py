"""``nabi pretrain``: the self-supervised commands of the command line."""
from __future__ import annotations

from . import METHODS


def add_commands(subparsers):
    """Add ``pretrain`` to the ``nabi`` sub-command parser."""
    p = subparsers.add_parser(
        "pretrain", help="self-supervised pretraining (SimCLR) of a zoo model's backbone on unlabelled photos",
        description="Pretrain a zoo model's backbone with SimCLR's contrastive loss (NT-Xent) on every photo "
                    "under PHOTOS (sub-folders are searched; their names are ignored). Writes "
                    "OUT/backbone.safetensors (+ backbone.json naming the architecture) for "
                    "`nabi train DATA --model SAME --init OUT/backbone.safetensors`. The log's acc column is "
                    "the contrastive top-1: how often a view's nearest other view is its own pair.")
    p.add_argument("photos", help="a folder of photos (searched recursively; labels are not used)")
    p.add_argument("--method", default="simclr", choices=list(METHODS), help="the self-supervised method")
    p.add_argument("--model", default="resnet18_cifar", help="a zoo model ending in a Linear classifier "
                                                             "(default resnet18_cifar)")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE", dest="model_arg",
                   help="an argument of the model's builder (repeatable; default: none)")
    p.add_argument("--image-size", type=int, help="train at this size (default: the model's)")
    p.add_argument("--epochs", type=int, default=100, help="passes over the photos")
    p.add_argument("--iterations", type=int, help="stop after this many optimiser steps instead "
                                                  "(default: none: --epochs decides)")
    p.add_argument("--batch-size", type=int, default=256, help="photos per step; each gives two views")
    p.add_argument("--temperature", type=float, default=0.5, help="τ of NT-Xent (default 0.5)")
    p.add_argument("--projection-dim", type=int, default=128, help="output size of the projection head")
    p.add_argument("--optimizer", default="adam", choices=["sgd", "adam", "adamw"], help="the update rule")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (the schedule's starting value)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=1e-6, help="L2 weight decay (decoupled for adamw)")
    p.add_argument("--schedule", default="cosine", choices=["constant", "cosine", "warmup_cosine"],
                   help="how the learning rate changes")
    p.add_argument("--warmup", type=int, default=0, help="warm-up steps for warmup_cosine")
    p.add_argument("--normalize", default="unit", choices=["unit", "pixel256", "imagenet", "seed2019"],
                   help="pixel scaling; `nabi train --init` should use the same")
    p.add_argument("--seed", type=int, default=0, help="seeds the initial weights, the views and the order")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="gpu needs the gpu extra")
    p.add_argument("--workers", type=int, default=0, help="background threads decoding photos")
    p.add_argument("--cache", action="store_true", help="keep decoded photos in memory (uint8) (default: off)")
    p.add_argument("--out", default="runs/pretrain", help="the run folder to write")
    p.add_argument("--checkpoint-every", type=int, help="also checkpoint every N iterations "
                                                        "(default: at each epoch end only)")
    p.add_argument("--keep-last", type=int, default=3, help="checkpoints to keep")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint "
                                                         "(default: off)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (default: a bar on a terminal, a line every 15 s in a log)")
    p.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args):
    import json

    from ..training.config import TrainConfig
    from .pretrain import run_pretraining
    model_args = {}
    for item in args.model_arg or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-arg must look like KEY=VALUE, got {item!r}")
        try:
            model_args[key] = json.loads(value)
        except json.JSONDecodeError:
            model_args[key] = value
    cfg = TrainConfig(data=args.photos, model=args.model, model_args=model_args, epochs=args.epochs,
                      iterations=args.iterations, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                      momentum=args.momentum, weight_decay=args.weight_decay, schedule=args.schedule,
                      warmup=args.warmup, image_size=args.image_size, normalize=args.normalize, seed=args.seed,
                      device=args.device, workers=args.workers, cache=args.cache, out=args.out,
                      checkpoint_every=args.checkpoint_every, keep_last=args.keep_last, progress=args.progress,
                      val_ratio=0.0, test_ratio=0.0)
    for name in ("epochs", "batch_size", "projection_dim"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    trainer, path = run_pretraining(cfg, method=args.method, temperature=args.temperature,
                                    projection_dim=args.projection_dim, resume=args.resume)
    print(f"run folder: {cfg.out}")
    return 0
