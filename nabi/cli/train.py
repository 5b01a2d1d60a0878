"""``nabi train``: a classifier, or with ``--head`` an identity embedding, trained into a run folder.

The flags are the training settings (``nabi.training.config``); the run is ``nabi.training.run.train``
(``nabi.reid.train.train_embedding`` with an embedding head).
"""
from __future__ import annotations

from .command import Command


def add_arguments(p):
    from ..models.embedding import HEADS
    from ..studies.recipes import RECIPES
    from ..training import config as C
    from ..training.flags import add_setting_flags
    p.add_argument("data", nargs="?", help=f"{C.setting_named('data').help} (default: {C.TrainConfig().data})")
    p.add_argument("--config", help="a TOML file whose keys stand in for these flags; flags given win "
                                    "(default: none)")
    p.add_argument("--recipe", choices=sorted(RECIPES), type=C.renamed_value("recipe"),
                   help="start from a named recipe's settings (nabi experiment --help describes them; resnet18-160 "
                        "is the strong from-scratch baseline; reid-resnet20-64 the identity embedding (its head "
                        "and size too); alexnet336-2019 and tiny need the experiment's offline variants or "
                        "iterations per class); --config and the flags given win (default: none)")
    add_setting_flags(p, C.TRAIN, layered=True)
    p.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint "
                                                         "(default: off)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (default: off)")
    g = p.add_argument_group("embedding (re-identification)")
    g.add_argument("--head", choices=["softmax", *HEADS], help="softmax (default): a classifier; the others train an "
                   "identity embedding on held-in individuals and validate by rank-1 on held-out ones")
    g.add_argument("--embedding-dim", type=int, help="embedding size of an embedding head (default 128)")
    g.add_argument("--margin", type=float, help="margin (radians for arcface; default 0.5 arcface, 0.35 "
                   "cosface, 0.3 triplet)")
    g.add_argument("--scale", type=float, default=30.0, help="logit scale s of arcface/cosface (default 30)")
    g.add_argument("--k", type=int, default=4, help="photos per individual in a P×K batch (P = batch size / K)")


def train_config(args, base=None):
    """The ``TrainConfig`` of a parsed ``nabi train``: ``base``, then ``--recipe``'s settings, then the
    ``--config`` TOML file, then the flags given, each winning over the ones before. A warm-up given later
    in one form (``warmup`` iterations or ``warmup_fraction``) replaces one given earlier in the other;
    ``--model-arg`` items are added to the ``model_args`` before them."""
    from ..training.config import TRAIN, TrainConfig, load_toml
    from ..training.flags import given_settings
    cfg = dict(base or {})
    later = {}
    if getattr(args, "recipe", None):
        from ..studies.recipes import recipe_train_settings
        cfg.update(recipe_train_settings(args.recipe))
    if getattr(args, "config", None):
        later.update(load_toml(args.config))
    flags = given_settings(args, TRAIN)
    model_args = flags.pop("model_args", {})
    later.update(flags)
    if getattr(args, "data", None) is not None:          # the positional DATA
        later["data"] = args.data
    if later.get("warmup") and "warmup_fraction" not in later:
        cfg.pop("warmup_fraction", None)
    if later.get("warmup_fraction") is not None and "warmup" not in later:
        cfg.pop("warmup", None)
    cfg.update(later)
    if model_args:
        cfg["model_args"] = {**cfg.get("model_args", {}), **model_args}
    return TrainConfig.from_dict(cfg)


def run(args):
    recipe_head = None
    if getattr(args, "recipe", None):
        from ..studies.recipes import recipe_embedding
        recipe_head = recipe_embedding(args.recipe)       # a recipe may train an embedding; --head given wins
    head = args.head or (recipe_head or {}).get("head") or "softmax"
    if args.embedding_dim is None and recipe_head and head != "softmax":
        args.embedding_dim = recipe_head["embedding_dim"]
    cfg = train_config(args)
    if head == "softmax":
        if args.embedding_dim is not None:
            raise ValueError("--embedding-dim needs an embedding head (--head arcface, cosface, triplet …)")
        if cfg.data is None:
            raise ValueError("give a data folder (or embedded:mnist5k)")
        from ..training.run import train
        train(cfg, resume=args.resume, overwrite=args.overwrite)
        return 0
    from ..reid.train import train_embedding
    finished = train_embedding(cfg, head=head, embedding_dim=args.embedding_dim or 128, margin=args.margin,
                               scale=args.scale, k=args.k, resume=args.resume, overwrite=args.overwrite)
    print(f"next: {finished.next}")
    return 0


COMMAND = Command(
    "train", "train a zoo model on an image folder", add_arguments, run,
    description="Train a zoo model on a folder of photos (one sub-folder per class) and keep the run folder: "
                "weights, checkpoints, metrics.jsonl, test.json. Settings come from the flags, then a --config "
                "TOML file, then the defaults shown.",
    examples=("nabi train photos/ --model resnet18 --epochs 20 --augment standard --background-kinds merge "
              "--out runs/cats   # photos/background/{trees,pavement}/ as one class",
              "nabi train photos/ --model resnet18 --image-size 160 --fit squash --augment crop_flip_jitter "
              "--normalize imagenet --epochs 60 --batch-size 16 --optimizer adamw --lr 2e-3 --weight-decay 0.05 "
              "--schedule warmup_cosine --warmup-fraction 0.3 --label-smoothing 0.1 --out runs/individuals"
              "    # the strong baseline (recipe resnet18-160)",
              "nabi train --config cats.toml --resume"))
