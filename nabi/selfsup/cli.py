"""``nabi pretrain`` and ``nabi self-train``: the self-supervised commands of the command line."""
from __future__ import annotations

from ..data.folder import FITS
from ..studies.recipes import RECIPES
from ..training.config import AUGMENTS, renamed_value
from . import METHODS

# The rounds' training settings when neither --recipe nor a flag gives them (TrainConfig field names;
# "augment" is the first teacher's, --teacher-augment).
SELF_TRAIN_DEFAULTS = {"model": "resnet18_cifar", "epochs": 10, "batch_size": 64, "optimizer": "adam", "lr": 1e-3,
                       "momentum": 0.9, "weight_decay": 0.0, "schedule": "constant", "label_smoothing": 0.0,
                       "fit": "crop", "normalize": "unit", "augment": "standard", "val_ratio": 0.1,
                       "test_ratio": 0.1}


def _default(text: str, key: str) -> str:
    """A self-train flag's help ending with its default, which --recipe replaces."""
    return f"{text} (default: {SELF_TRAIN_DEFAULTS[key]}; with --recipe, the recipe's)"


def add_commands(subparsers):
    """Add ``pretrain`` and ``self-train`` to the ``nabi`` sub-command parser."""
    _add_self_train(subparsers)
    p = subparsers.add_parser(
        "pretrain", help="self-supervised pretraining (SimCLR, SimSiam, BYOL) of a zoo model's backbone on "
                         "unlabelled photos",
        description="Pretrain a zoo model's backbone with SimCLR's contrastive loss (NT-Xent; wants large "
                    "batches), SimSiam's stop-gradient cosine loss (no negatives; suits small batches) or BYOL's (a "
                    "predictor chasing a moving average of the network; no negatives) on every "
                    "photo under PHOTOS (sub-folders are searched; their names are ignored). Writes "
                    "OUT/backbone.safetensors (+ backbone.json naming the architecture) for "
                    "`nabi train DATA --model SAME --init OUT/backbone.safetensors`. The log's acc column is "
                    "the contrastive top-1: how often a view's nearest other view is its own pair; SimSiam and BYOL "
                    "also log z_std, and warn when their projections collapse.")
    p.add_argument("photos", help="a folder of photos (searched recursively; labels are not used)")
    p.add_argument("--method", default="simclr", choices=list(METHODS),
                   help="the self-supervised method: simclr (NT-Xent), simsiam (predictor + stop-gradient) or byol "
                        "(predictor + a target network that is a moving average of the online one)")
    p.add_argument("--model", default="resnet18_cifar", help="a zoo model ending in a Linear classifier "
                                                             "(default resnet18_cifar)")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE", dest="model_arg",
                   help="an argument of the model's builder (repeatable; default: none)")
    p.add_argument("--image-size", type=int, help="train at this size (default: the model's)")
    p.add_argument("--fit", default="crop", choices=list(FITS),
                   help="how a photo is brought to the square image size when read: crop = resize the shorter side "
                        "and keep the centre, squash = resize the whole photo (aspect ratio distorted), pad = "
                        "resize the longer side and pad with black")
    p.add_argument("--epochs", type=int, default=100, help="passes over the photos")
    p.add_argument("--iterations", type=int, help="stop after this many optimiser steps instead "
                                                  "(default: none: --epochs decides)")
    p.add_argument("--batch-size", type=int, default=256, help="photos per step; each gives two views")
    p.add_argument("--temperature", type=float,
                   help="τ of NT-Xent (SimCLR only: refused with the other methods; default 0.5)")
    p.add_argument("--projection-dim", type=int, default=128,
                   help="output size of the projection head (SimSiam: also the predictor's, whose hidden layer "
                        "is a quarter of it; BYOL: also the predictor's)")
    p.add_argument("--ema-momentum", type=float,
                   help="BYOL only (refused with the other methods): the target network's starting momentum "
                        "τ in [0, 1); after each step its weights become τ·target + (1−τ)·online, τ rising to 1 on a cosine over the run "
                        "(default 0.99, for short runs; the paper's 0.996 suits 1000 epochs)")
    p.add_argument("--optimizer", default="adam", choices=["sgd", "adam", "adamw"], help="the update rule")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (the schedule's starting value)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=1e-6, help="L2 weight decay (decoupled for adamw)")
    p.add_argument("--schedule", default="cosine", choices=["constant", "cosine", "warmup_cosine"],
                   help="how the learning rate changes")
    p.add_argument("--warmup", type=int, default=0, help="warm-up steps for warmup_cosine")
    p.add_argument("--normalize", default="unit", choices=["unit", "pixel256", "imagenet"],
                   type=renamed_value("normalize"),
                   help="pixel scaling; `nabi train --init` should use the same")
    p.add_argument("--seed", type=int, default=0, help="seeds the initial weights, the views and the order")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="gpu needs the gpu extra")
    p.add_argument("--workers", type=int, default=0, help="background threads decoding photos")
    p.add_argument("--cache", action="store_true", help="keep decoded photos in memory (uint8) (default: off)")
    p.add_argument("--out", default="runs/pretrain", help="the run folder to write")
    p.add_argument("--checkpoint-every", type=int, help="also checkpoint every N iterations "
                                                        "(default: at each epoch end only)")
    p.add_argument("--keep-last", type=int, default=1, help="checkpoints a finished run keeps, the newest ones "
                                                            "(default: 1; while it runs, at least 2)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint "
                                                         "(default: off)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (default: a bar on a terminal, a line every 15 s in a log)")
    p.set_defaults(func=cmd_pretrain)


def _model_args(items, flag="--model-arg"):
    import json
    model_args = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} must look like KEY=VALUE, got {item!r}")
        try:
            model_args[key] = json.loads(value)
        except json.JSONDecodeError:
            model_args[key] = value
    return model_args


def cmd_pretrain(args):
    from ..training.config import TrainConfig
    from .pretrain import run_pretraining
    model_args = _model_args(args.model_arg)
    cfg = TrainConfig(data=args.photos, model=args.model, model_args=model_args, epochs=args.epochs,
                      iterations=args.iterations, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                      momentum=args.momentum, weight_decay=args.weight_decay, schedule=args.schedule,
                      warmup=args.warmup, image_size=args.image_size, fit=args.fit, normalize=args.normalize,
                      seed=args.seed,
                      device=args.device, workers=args.workers, cache=args.cache, out=args.out,
                      checkpoint_every=args.checkpoint_every, keep_last=args.keep_last, progress=args.progress,
                      val_ratio=0.0, test_ratio=0.0)
    for name in ("epochs", "batch_size", "projection_dim"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for flag, value, method in (("--temperature", args.temperature, "simclr"),
                                ("--ema-momentum", args.ema_momentum, "byol")):
        if value is not None and args.method != method:
            raise ValueError(f"{flag} is a setting of --method {method}; --method {args.method} has no use for it "
                             f"(leave it out, or choose --method {method})")
    trainer, path = run_pretraining(cfg, method=args.method,
                                    temperature=0.5 if args.temperature is None else args.temperature,
                                    projection_dim=args.projection_dim, resume=args.resume,
                                    ema_momentum=0.99 if args.ema_momentum is None else args.ema_momentum)
    print(f"run folder: {cfg.out}")
    return 0


def _add_self_train(subparsers):
    p = subparsers.add_parser(
        "self-train", help="self-training with a noisy student: pseudo-label unlabelled photos, retrain, repeat",
        description="Train a teacher on LABELLED (one sub-folder per class), let it label the photos under "
                    "UNLABELLED (any folder tree), train a noised student on both, and repeat with the student "
                    "as the next teacher for --rounds rounds. Writes OUT/round-K/ (the pseudo-label manifest, "
                    "the round's run and round.json) and OUT/summary.json + summary.md: per round the "
                    "pseudo-label counts per class and the accuracy on the labelled test split.",
        epilog="examples:\n"
               "  nabi self-train photos/ more_photos/ --model resnet18_cifar --rounds 2 --out runs/noisy\n"
               "  nabi self-train photos/ more_photos/ --model resnet18_cifar --init runs/ssl --freeze-until layer1 "
               "--soft --out runs/soft\n"
               "  nabi self-train photos/ more_photos/ --model resnet20 --student-model resnet32 "
               "--stochastic-depth 0.2 --out runs/deep")
    p.add_argument("labelled", help="a folder with one sub-folder per class (or train/ val/ test/)")
    p.add_argument("unlabelled", help="a folder of unlabelled photos (searched recursively; if its sub-folders "
                                      "are named like the classes, the pseudo-label accuracy is reported)")
    p.add_argument("--rounds", type=int, default=1, help="student rounds after the teacher")
    p.add_argument("--recipe", choices=sorted(RECIPES), type=renamed_value("recipe"),
                   help="take the teacher's and students' training settings from a named recipe (as `nabi train "
                        "--recipe`; resnet18-160 is the strong from-scratch baseline); flags given win "
                        "(default: none: the defaults below)")
    p.add_argument("--model", help=_default("the teacher's zoo model", "model"))
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE", dest="model_arg",
                   help="an argument of the teacher's builder (repeatable; default: none)")
    p.add_argument("--init", metavar="WEIGHTS",
                   help="start the first teacher and every student from these weights (a .safetensors file such "
                        "as a pretrain run's backbone.safetensors, or a run folder), as `nabi train --init`: every "
                        "array matching by name and shape is loaded; a student of another architecture loads what "
                        "matches; each round.json records what was loaded, new and skipped (default: none: each "
                        "round starts from the model's own initialisation)")
    p.add_argument("--freeze-until", metavar="LAYER", dest="freeze_until",
                   help="in the teacher and every student, do not train the stages up to and including LAYER (a "
                        "stage name as the weights' names begin: conv1, layer2, features.6 …), as `nabi train "
                        "--freeze-until`: no step, eval mode (so --stochastic-depth never drops a frozen block), no "
                        "backward below them; meant for --init "
                        "(default: none: every stage trains)")
    p.add_argument("--layer-lr-decay", type=float, metavar="D", dest="layer_lr_decay",
                   help="layer-wise learning-rate decay for the teacher and every student, D in (0, 1], as `nabi "
                        "train --layer-lr-decay`: the classifier trains at --lr, the stage below at --lr·D, the "
                        "next at --lr·D² … (default: 1.0: one rate for every stage)")
    p.add_argument("--student-model", help="the students' zoo model, at least as large (default: --model)")
    p.add_argument("--student-model-arg", action="append", metavar="KEY=VALUE", dest="student_model_arg",
                   help="an argument of the students' builder (repeatable; default: --model-arg for the same "
                        "model, else none)")
    p.add_argument("--soft", action="store_true",
                   help="train on the teacher's probabilities instead of its argmax (default: hard labels)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="keep a pseudo-label when the teacher's top probability is at least this, in (0, 1]")
    p.add_argument("--max-per-class", type=int,
                   help="at most this many pseudo-labels per class, the most confident first (default: the "
                        "size of the largest class of the labelled training split)")
    p.add_argument("--augment", default="strong", choices=AUGMENTS,
                   help="the students' augmentation noise (levels as in `nabi train --augment`)")
    p.add_argument("--teacher-augment", choices=AUGMENTS, help=_default("the first teacher's augmentation",
                                                                       "augment"))
    p.add_argument("--dropout", type=float,
                   help="the students' dropout rate, for models that have dropout (default: the model's)")
    p.add_argument("--stochastic-depth", type=float, metavar="P",
                   help="the students' stochastic depth, for ResNets (resnet*, se_resnet*): in training each "
                        "residual block drops its branch per photo, with a probability rising linearly from 0 "
                        "at the first block to P at the last; P in [0, 1); blocks frozen by --freeze-until run in eval mode "
                        "and are never dropped (default: none)")
    p.add_argument("--epochs", type=int, help=_default("epochs of each round's training", "epochs"))
    p.add_argument("--batch-size", type=int, help=_default("photos per step", "batch_size"))
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], help=_default("the update rule", "optimizer"))
    p.add_argument("--lr", type=float, help=_default("learning rate (the schedule's starting value)", "lr"))
    p.add_argument("--momentum", type=float, help=_default("SGD momentum", "momentum"))
    p.add_argument("--weight-decay", type=float, help=_default("L2 weight decay (decoupled for adamw)",
                                                               "weight_decay"))
    p.add_argument("--schedule", choices=["constant", "cosine", "warmup_cosine", "one_cycle"],
                   help=_default("how the learning rate changes (warmup_cosine needs --warmup-fraction)",
                                 "schedule"))
    p.add_argument("--warmup-fraction", type=float, dest="warmup_fraction",
                   help="the warm-up of warmup_cosine (the rise of one_cycle) as a share of each round's run, in "
                        "[0, 1) (default: none; with --recipe, the recipe's)")
    p.add_argument("--label-smoothing", type=float, dest="label_smoothing",
                   help=_default("spread this much of each target's probability over the other classes",
                                 "label_smoothing"))
    p.add_argument("--image-size", type=int, help="bring photos to this size, see --fit (default: the model's; "
                                                  "with --recipe, the recipe's)")
    p.add_argument("--fit", choices=list(FITS),
                   help=_default("how a photo is brought to the square image size when read: crop = resize the "
                                 "shorter side and keep the centre, squash = resize the whole photo (aspect ratio "
                                 "distorted), pad = resize the longer side and pad with black", "fit"))
    p.add_argument("--normalize", choices=["unit", "pixel256", "dataset", "imagenet"],
                   help=_default("pixel scaling", "normalize"))
    p.add_argument("--val-ratio", type=float, help=_default("labelled photos kept for choosing the best epoch",
                                                            "val_ratio"))
    p.add_argument("--test-ratio", type=float,
                   help=_default("labelled photos kept for each round's test accuracy (never trained on)",
                                 "test_ratio"))
    p.add_argument("--exclude", action="append", default=[],
                   help="leave out a labelled class folder (repeatable; default: none)")
    p.add_argument("--seed", type=int, default=0, help="seeds the split, the initial weights and the order")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="gpu needs the gpu extra")
    p.add_argument("--workers", type=int, default=0, help="background threads decoding photos")
    p.add_argument("--cache", action="store_true", help="keep decoded photos in memory (uint8) (default: off)")
    p.add_argument("--out", default="runs/self-train", help="the folder to write the rounds and the summary to")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (default: a bar on a terminal, a line every 15 s in a log)")
    p.set_defaults(func=cmd_self_train)


def self_train_settings(args) -> dict:
    """The rounds' training settings: ``SELF_TRAIN_DEFAULTS``, then ``--recipe``'s, then the flags given."""
    settings = dict(SELF_TRAIN_DEFAULTS)
    if args.recipe:
        from ..studies.recipes import recipe_train_settings
        settings.update(recipe_train_settings(args.recipe))
    given = {key: getattr(args, "teacher_augment" if key == "augment" else key) for key in SELF_TRAIN_DEFAULTS}
    given.update(image_size=args.image_size, warmup_fraction=args.warmup_fraction)
    given = {k: v for k, v in given.items() if v is not None}
    if args.model_arg:
        given["model_args"] = _model_args(args.model_arg)
    settings.update(given)
    return settings


def cmd_self_train(args):
    from ..training.config import TrainConfig
    from ..training.build import check_warmup
    from .selftrain import run_self_training
    settings = self_train_settings(args)
    for name in ("epochs", "batch_size"):
        if settings[name] < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {settings[name]}")
    if settings["schedule"] == "warmup_cosine" and settings.get("warmup_fraction") is None \
            and not settings.get("warmup"):
        raise ValueError("--schedule warmup_cosine needs --warmup-fraction (the warm-up's share of each round)")
    cfg = TrainConfig.from_dict({**settings, "data": args.labelled, "exclude": list(args.exclude), "seed": args.seed,
                                 "device": args.device, "workers": args.workers, "cache": args.cache,
                                 "out": args.out, "progress": args.progress, "init": args.init,
                                 "freeze_until": args.freeze_until,
                                 **({"layer_lr_decay": args.layer_lr_decay} if args.layer_lr_decay is not None
                                    else {})})
    check_warmup(cfg)
    student_args = _model_args(args.student_model_arg, "--student-model-arg") if args.student_model_arg else None
    summary = run_self_training(cfg, args.unlabelled, rounds=args.rounds, student_model=args.student_model,
                                student_model_args=student_args, student_augment=args.augment, soft=args.soft,
                                threshold=args.threshold, max_per_class=args.max_per_class, dropout=args.dropout,
                                stochastic_depth=args.stochastic_depth)
    last = summary["rounds"][-1]
    print(f"round {last['round']}: test accuracy {last['test_acc']:.4f}; summary: {args.out}/summary.md")
    return 0
