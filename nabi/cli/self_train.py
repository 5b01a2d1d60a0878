"""``nabi self-train``: self-training with a noisy student, pseudo-labelling unlabelled photos round by round.

The rounds' training settings are the declared settings (``nabi.training.config``): ``SELF_TRAIN_DEFAULTS``,
then ``--recipe``'s, then the flags given; the run is ``nabi.selfsup.selftrain.run_self_training``.
"""
from __future__ import annotations

from .command import Command

# The rounds' training settings when neither --recipe nor a flag gives them (TrainConfig field names;
# "augment" is the first teacher's, --teacher-augment).
SELF_TRAIN_DEFAULTS = {"model": "resnet18_cifar", "epochs": 10, "batch_size": 64, "optimizer": "adam", "lr": 1e-3,
                       "momentum": 0.9, "weight_decay": 0.0, "schedule": "constant", "label_smoothing": 0.0,
                       "fit": "crop", "normalize": "unit", "augment": "standard", "val_ratio": 0.1,
                       "test_ratio": 0.1}
# Settings --recipe may set besides those (their own defaults: the model's size, no warm-up share).
RECIPE_ALSO = {"image_size": None, "warmup_fraction": None}
RENAME = {"augment": "teacher_augment"}          # --augment is the students' noise
CHOICES = {"schedule": ("constant", "cosine", "warmup_cosine", "one_cycle")}
ROLES = {"model": "the teacher's model", "model_args": "the teacher's builder",
         "init": "the first teacher and every student", "freeze_until": "in the teacher and every student",
         "layer_lr_decay": "for the teacher and every student", "augment": "the first teacher's augmentation"}
NOTES = {"init": "each round.json records what was loaded, new and skipped",
         "freeze_until": "--stochastic-depth never drops a frozen block", "augment": "the students' is --augment",
         "schedule": "here constant, cosine, warmup_cosine (with --warmup-fraction) or one_cycle",
         "warmup_fraction": "of each round's run"}
DEFAULTS = {"out": "runs/self-train"}


def add_arguments(p):
    from ..data.prepare import AUGMENTS
    from ..studies.recipes import RECIPES
    from ..training.config import SELF_TRAIN, renamed_value
    from ..training.flags import add_setting_flags
    p.add_argument("labelled", help="a folder with one sub-folder per class (or train/ val/ test/)")
    p.add_argument("unlabelled", help="a folder of unlabelled photos (searched recursively; if its sub-folders "
                                      "are named like the classes, the pseudo-label accuracy is reported)")
    p.add_argument("--rounds", type=int, default=1, help="student rounds after the teacher")
    p.add_argument("--recipe", choices=sorted(RECIPES), type=renamed_value("recipe"),
                   help="take the teacher's and students' training settings from a named recipe (as `nabi train "
                        "--recipe`; resnet18-160 is the strong from-scratch baseline); flags given win "
                        "(default: none: the defaults below)")
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
    p.add_argument("--dropout", type=float,
                   help="the students' dropout rate, for models that have dropout (default: the model's)")
    p.add_argument("--stochastic-depth", type=float, metavar="P",
                   help="the students' stochastic depth, for ResNets (resnet*, se_resnet*): in training each "
                        "residual block drops its branch per photo, with a probability rising linearly from 0 "
                        "at the first block to P at the last; P in [0, 1); blocks frozen by --freeze-until run in eval mode "
                        "and are never dropped (default: none)")
    add_setting_flags(p, SELF_TRAIN, defaults={**SELF_TRAIN_DEFAULTS, "warmup_fraction": None, **DEFAULTS},
                      layered=(*SELF_TRAIN_DEFAULTS, *RECIPE_ALSO), note="; with --recipe, the recipe's",
                      rename=RENAME, choices=CHOICES, prefix=ROLES, suffix=NOTES)


def self_train_settings(args) -> dict:
    """The rounds' training settings: ``SELF_TRAIN_DEFAULTS``, then ``--recipe``'s, then the flags given."""
    from ..training.config import SELF_TRAIN
    from ..training.flags import given_settings
    settings = dict(SELF_TRAIN_DEFAULTS)
    if args.recipe:
        from ..studies.recipes import recipe_train_settings
        settings.update(recipe_train_settings(args.recipe))
    given = given_settings(args, SELF_TRAIN, rename=RENAME)
    settings.update({k: v for k, v in given.items() if k in SELF_TRAIN_DEFAULTS or k in RECIPE_ALSO
                     or k == "model_args"})
    return settings


def run(args):
    from ..selfsup.selftrain import run_self_training
    from ..training.config import SELF_TRAIN, TrainConfig, check
    from ..training.flags import given_settings, parse_model_args
    settings = self_train_settings(args)
    if settings["schedule"] == "warmup_cosine" and settings.get("warmup_fraction") is None \
            and not settings.get("warmup"):
        raise ValueError("--schedule warmup_cosine needs --warmup-fraction (the warm-up's share of each round)")
    rest = {k: v for k, v in given_settings(args, SELF_TRAIN, rename=RENAME).items() if k not in settings}
    cfg = TrainConfig.from_dict({**settings, **rest, "data": args.labelled})
    check(cfg)
    student_args = parse_model_args(args.student_model_arg, "--student-model-arg") if args.student_model_arg \
        else None
    summary = run_self_training(cfg, args.unlabelled, rounds=args.rounds, student_model=args.student_model,
                                student_model_args=student_args, student_augment=args.augment, soft=args.soft,
                                threshold=args.threshold, max_per_class=args.max_per_class, dropout=args.dropout,
                                stochastic_depth=args.stochastic_depth)
    last = summary["rounds"][-1]
    print(f"round {last['round']}: test accuracy {last['test_acc']:.4f}; summary: {args.out}/summary.md")
    return 0


COMMAND = Command(
    "self-train", "self-training with a noisy student: pseudo-label unlabelled photos, retrain, repeat",
    add_arguments, run,
    description="Train a teacher on LABELLED (one sub-folder per class), let it label the photos under "
                "UNLABELLED (any folder tree), train a noised student on both, and repeat with the student "
                "as the next teacher for --rounds rounds. Writes OUT/round-K/ (the pseudo-label manifest, "
                "the round's run and round.json) and OUT/summary.json + summary.md: per round the "
                "pseudo-label counts per class and the accuracy on the labelled test split.",
    examples=("nabi self-train photos/ more_photos/ --model resnet18_cifar --rounds 2 --out runs/noisy",
              "nabi self-train photos/ more_photos/ --model resnet18_cifar --init runs/ssl --freeze-until layer1 "
              "--soft --out runs/soft",
              "nabi self-train photos/ more_photos/ --model resnet20 --student-model resnet32 "
              "--stochastic-depth 0.2 --out runs/deep"))
