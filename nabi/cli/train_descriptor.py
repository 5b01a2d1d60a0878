"""``nabi train-descriptor``: train a local patch descriptor on photos of individuals (``nabi.reid.descriptor_train``).

``COMMAND`` is the command (``nabi.cli.main.COMMANDS`` registers it); the work is ``run_descriptor_training``.
"""
from __future__ import annotations

import shlex
import sys

from .command import Command

DESCRIPTION = """\
Train a HardNet-style patch network (32x32 grey patches at SIFT keypoints -> 128-d unit vectors) on
pairs mined from PHOTOS, a folder with one sub-folder per individual, without any other label: each
photo against warped and relit copies of itself, and RANSAC-verified matches between photos of one
individual. The pairs are cached (--cache-dir), so a second run starts training at once. A share of
the individuals (--val-ratio) is held out; after each epoch their pairs give val_fpr95 (false
positives at 95% recall, lower is better) next to SIFT's on the same patches (config.json).

The run folder holds config.json, metrics.jsonl, checkpoints/ (--resume continues) and
descriptor.safetensors + descriptor.json, the file nabi.reid.descriptors.PatchDescriptor.load reads."""



def add_arguments(p):
    from ..reid.descriptor_data import MiningSettings
    mining = MiningSettings()
    p.add_argument("photos", help="a folder with one sub-folder per individual")
    p.add_argument("--out", required=True, help="the run folder to write")
    g = p.add_argument_group("network and training")
    g.add_argument("--width", type=int, default=8,
                   help="channels of the first layers (32 is HardNet's; 8 describes 2,000 keypoints ~16x faster) "
                        "(default: 8)")
    g.add_argument("--dropout", type=float, default=0.3, help="dropout before the last convolution (default: 0.3)")
    g.add_argument("--epochs", type=int, default=2, help="passes over the training pairs (default: 2)")
    g.add_argument("--iterations", type=int, help="stop after this many steps instead (default: --epochs)")
    g.add_argument("--batch-size", type=int, default=256,
                   help="pairs per step; each pair's negatives are the others' patches (default: 256)")
    g.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="sgd", help="(default: sgd)")
    g.add_argument("--lr", type=float, default=0.1, help="learning rate, cosine-decayed (default: 0.1)")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="(default: 1e-4)")
    g.add_argument("--margin", type=float, default=1.0, help="the triplet margin (default: 1.0)")
    g.add_argument("--val-ratio", type=float, default=0.05,
                   help="share of the individuals whose pairs are held out for validation (default: 0.05)")
    g.add_argument("--matched-repeats", type=int, default=4,
                   help="times each matched (cross-photo) pair is seen per epoch (default: 4)")
    g.add_argument("--seed", type=int, default=0, help="(default: 0)")
    g.add_argument("--float32", action="store_true",
                   help="store the descriptor's weights in float32 (default: float16, half the size)")
    m = p.add_argument_group("mining the pairs")
    m.add_argument("--nfeatures", type=int, default=mining.nfeatures,
                   help=f"SIFT keypoints per photo (default: {mining.nfeatures})")
    m.add_argument("--max-side", type=int, default=mining.max_side,
                   help=f"photos are shrunk to this longer side first (default: {mining.max_side})")
    m.add_argument("--warps", type=int, default=mining.warps,
                   help=f"warped, relit copies of each photo (default: {mining.warps})")
    m.add_argument("--pairs-per-warp", type=int, default=mining.pairs_per_warp,
                   help=f"at most this many pairs from each copy (default: {mining.pairs_per_warp})")
    m.add_argument("--pairs-per-match", type=int, default=mining.pairs_per_match,
                   help=f"at most this many pairs from two photos of one individual; 0: no matched pairs "
                        f"(default: {mining.pairs_per_match})")
    m.add_argument("--min-inliers", type=int, default=mining.min_inliers,
                   help=f"RANSAC inliers two photos need to give pairs (default: {mining.min_inliers})")
    m.add_argument("--cache-dir", help="where mined pairs are kept (default: $NABI_DESCRIPTOR_CACHE or "
                   "~/.cache/nabi-descriptor)")
    r = p.add_argument_group("the run")
    r.add_argument("--checkpoint-every", type=int, default=200,
                   help="also checkpoint every N steps (default: 200)")
    r.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint (default: off)")
    r.add_argument("--overwrite", action="store_true", help="replace a run already in --out (default: off)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar (default: off)")


def cmd_train_descriptor(args):
    from ..reid.descriptor_data import MiningSettings
    from ..reid.descriptor_train import run_descriptor_training
    mining = MiningSettings(nfeatures=args.nfeatures, max_side=args.max_side, warps=args.warps,
                            pairs_per_warp=args.pairs_per_warp, pairs_per_match=args.pairs_per_match,
                            min_inliers=args.min_inliers)
    launched = sys.argv[0] if sys.argv else ""
    command = ("nabi " + " ".join(shlex.quote(a) for a in sys.argv[1:])
               if launched.endswith(("nabi", "__main__.py")) and "train-descriptor" in sys.argv else None)
    _, path = run_descriptor_training(
        args.photos, args.out, width=args.width, dropout=args.dropout, epochs=args.epochs, iterations=args.iterations,
        batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
        margin=args.margin, val_ratio=args.val_ratio, matched_repeats=args.matched_repeats, seed=args.seed,
        mining=mining, cache_dir=args.cache_dir, checkpoint_every=args.checkpoint_every, resume=args.resume,
        overwrite=args.overwrite, half=not args.float32, progress=not args.no_progress, command=command)
    print(f"wrote {path}")
    return 0


COMMAND = Command(
    "train-descriptor", "train a local patch descriptor (HardNet-style) on photos of individuals",
    add_arguments, cmd_train_descriptor, definitions=DESCRIPTION,
    examples=("nabi train-descriptor nyala_more/ --out runs/descriptor",
              "nabi train-descriptor nyala_more/ --out runs/descriptor --resume            # continue a run",
              "nabi train-descriptor photos/ --out runs/desc16 --width 16 --iterations 3000 --lr 0.05"))
