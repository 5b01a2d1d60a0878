"""``nabi demo``: LeNet-5 on the MNIST sample stored in nabi, trained, tested and evaluated in under a minute."""
from __future__ import annotations

from pathlib import Path

from .command import EXIT_ERROR, Command

DEMO_OUT = "runs/demo"


def add_arguments(p):
    p.add_argument("--out", default=DEMO_OUT, help="the run folder to write (runs/demo is replaced on every run)")
    p.add_argument("--epochs", type=int, default=6, help="passes over the training digits")
    p.add_argument("--seed", type=int, default=0, help="seeds the split, the initial weights and the batch order")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: off)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (default: off)")


def run(args):
    """Train LeNet-5 on the embedded 5,000-image MNIST sample, evaluate it, and keep the run folder."""
    from ..runs import open_run_folder
    from ..training.config import TrainConfig
    from ..training.run import train
    from .eval import eval_report
    cfg = TrainConfig(data="embedded:mnist5k", model="lenet5", model_args={"activation": "relu", "pool": "max"},
                      epochs=args.epochs, batch_size=32, optimizer="adam", lr=2e-3, schedule="cosine",
                      val_ratio=0.1, test_ratio=0.2, seed=args.seed, out=args.out, progress=not args.no_progress)
    print("nabi demo: LeNet-5 on the 5,000-digit MNIST sample stored in nabi (70% train, 10% validation, 20% test)")
    # The demo's own folder is replaced on every run; any other --out is replaced only with --overwrite.
    overwrite = args.overwrite or Path(args.out) == Path(DEMO_OUT)
    with open_run_folder(cfg.out, overwrite=overwrite):
        finished = train(cfg)
        eval_report(cfg.out, finished.parts["test"], cfg.device, Path(cfg.out) / "eval")
    print(f"({finished.next})")
    return 0 if finished.test is not None else EXIT_ERROR


COMMAND = Command(
    "demo", "train LeNet-5 on the embedded MNIST sample (under a minute on 2 cores)", add_arguments, run,
    description="Train LeNet-5 on the 5,000-digit MNIST sample stored in nabi (70% train, 10% validation, 20% "
                "test), evaluate it, and keep the run folder.",
    examples=("nabi demo", "nabi demo --epochs 2 --out /tmp/demo > demo.log 2>&1"))
