"""Does learning from unlabelled photos help tell individuals apart? A paired study over data splits.

    python -m benchmarks.unlabelled_photos LABELLED UNLABELLED --out OUT \\
        [--init NAME=WEIGHTS ...] [--splits 0 1 2 3 4] [--rounds 1] [--model resnet20] [--image-size 64] [--epochs 40]

LABELLED has one folder per individual (a few dozen photos each); UNLABELLED is any folder tree of
photos (their labels, if any, are not used). For every split seed ``s`` the labelled photos are split
within each individual (``--test-ratio`` of them for testing, no validation part: every arm is scored
with its final weights) and these arms are trained on the same training photos and scored on the
same test photos:

* ``scratch``: the network from its seeded random initialisation;
* one arm per ``--init NAME=WEIGHTS``: the same network, started from WEIGHTS (a ``nabi pretrain``
  run, or a classifier trained on other photos such as CIFAR-10) wherever name and shape match,
  everything else as in ``scratch`` (``nabi ablate`` with the factor ``init``: same initial classifier
  and data order as ``scratch``);
* ``self-trained``: Noisy Student (``nabi self-train``): a teacher trained like ``scratch`` labels
  UNLABELLED, a student trains on both with strong augmentation, for ``--rounds`` rounds.

The arms are compared with ``scratch`` split by split (``nabi.studies.stats.paired_summary``: mean
difference, its 95 % t interval, Wilcoxon signed-rank and sign tests). Writes ``OUT/study.md``,
``OUT/study.json`` and ``OUT/study.png``; each split's runs stay in ``OUT/split-XX/`` and a second
call with the same arguments reuses every finished run.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np


def parse_init(items):
    out = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--init expects NAME=WEIGHTS (e.g. simclr=runs/ssl), got {item!r}")
        if name in ("scratch", "self-trained") or name in out:
            raise SystemExit(f"--init name {name!r} is taken: choose another")
        if not Path(path).exists():
            raise SystemExit(f"--init {name}: {path} does not exist")
        out[name] = path
    return out


def base_settings(args) -> dict:
    return {"model": args.model, "image_size": args.image_size, "epochs": args.epochs, "batch_size": args.batch_size,
            "optimizer": "adamw", "lr": args.lr, "weight_decay": args.weight_decay, "schedule": "cosine",
            "augment": args.augment, "label_smoothing": args.label_smoothing, "val_ratio": 0.0,
            "test_ratio": args.test_ratio, "cache": True}


def run_init_arms(args, inits, split, out):
    from nabi.studies.ablation import run_ablation
    config = {"data": str(args.labelled), "factor": "init", "seed": split, "seeds": [split],
              "base": base_settings(args),
              "variants": [{"name": "scratch", "init": False}] + [{"name": n, "init": p} for n, p in inits.items()]}
    report = run_ablation(config, out_dir=out, log=lambda m: print(f"  {m}", flush=True))
    return {run["variant"]: run["test_acc"] for run in report["runs"]}


def run_self_training_arm(args, split, out):
    from nabi.selfsup.selftrain import SUMMARY_JSON, run_self_training
    from nabi.training.config import TrainConfig
    done = out / SUMMARY_JSON
    if done.is_file():
        summary = json.loads(done.read_text(encoding="utf-8"))
        if len(summary["rounds"]) == args.rounds + 1:
            return summary
    if out.exists():
        shutil.rmtree(out)   # an unfinished self-training of this study: start it again
    cfg = TrainConfig(data=str(args.labelled), seed=split, out=str(out), progress=False, **base_settings(args))
    return run_self_training(cfg, str(args.unlabelled), rounds=args.rounds, student_augment="strong",
                             threshold=args.threshold, log=lambda m: print(f"  {m}", flush=True))


def summarise(table, arms):
    from nabi.studies.stats import paired_summary
    scratch = [table[s]["scratch"] for s in sorted(table)]
    out = {}
    for arm in arms:
        if arm == "scratch":
            continue
        other = [table[s][arm] for s in sorted(table)]
        out[arm] = paired_summary(scratch, other).to_dict()
    return out


def write_report(out, args, table, arms, comparisons, extra):
    from nabi import files
    from nabi.studies.jobs import strict_json
    splits = sorted(table)
    lines = ["# Learning from unlabelled photos: paired over data splits", "",
             f"- Labelled: `{Path(args.labelled).name}`, split within each individual, {args.test_ratio:.0%} of "
             f"each one's photos for testing; unlabelled pool: `{Path(args.unlabelled).name}`",
             f"- Network and recipe (every arm): {args.model} at {args.image_size}×{args.image_size}, "
             f"{args.epochs} epochs, batch {args.batch_size}, AdamW lr {args.lr:g} (cosine), weight decay "
             f"{args.weight_decay:g}, label smoothing {args.label_smoothing:g}, augmentation `{args.augment}`; "
             f"final weights scored",
             f"- Self-training: {args.rounds} round(s), pseudo-label threshold {args.threshold:g}, "
             f"students with strong augmentation", "",
             "| split | " + " | ".join(arms) + " |", "|---|" + "---:|" * len(arms)]
    for s in splits:
        lines.append(f"| {s} | " + " | ".join(f"{table[s][a]:.4f}" for a in arms) + " |")
    means = {a: np.mean([table[s][a] for s in splits]) for a in arms}
    stds = {a: (np.std([table[s][a] for s in splits], ddof=1) if len(splits) > 1 else float("nan")) for a in arms}
    lines.append("| mean ± std | " + " | ".join(f"{means[a]:.4f} ± {stds[a]:.4f}" for a in arms) + " |")
    lines += ["", "Paired against `scratch` (difference = arm − scratch, per split):", "",
              "| arm | mean difference | 95 % CI | better / worse / equal | Wilcoxon p | sign p |",
              "|---|---:|---|---|---:|---:|"]
    for arm, c in comparisons.items():
        lines.append(f"| {arm} | {c['mean_diff']:+.4f} | [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] | "
                     f"{c['n_pos']} / {c['n_neg']} / {c['n_zero']} | {c['wilcoxon_p']:.3g} | {c['sign_p']:.3g} |")
    if extra:
        lines += ["", "Self-training, per split: " + "; ".join(
            f"split {s}: teacher {e['teacher']:.4f}, " + ", ".join(
                f"round {r['round']} {r['test_acc']:.4f} ({r['num_pseudo_labelled']} pseudo-labels)"
                for r in e["students"]) for s, e in sorted(extra.items()))]
    lines += ["", f"Made by `python -m benchmarks.unlabelled_photos {' '.join(sys.argv[1:])}`", ""]
    files.atomic_write_text(out / "study.md", "\n".join(lines))
    files.atomic_write_json(out / "study.json", strict_json({"arms": arms, "splits": splits,
                                                             "test_acc": {str(s): table[s] for s in splits},
                                                             "paired_against_scratch": comparisons,
                                                             "self_training": {str(s): e for s, e in extra.items()},
                                                             "settings": vars(args) | {"labelled": str(args.labelled),
                                                                                       "unlabelled": str(args.unlabelled),
                                                                                       "out": str(args.out)}}))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(arms), 3.6))
    for s in splits:
        ax.plot(range(len(arms)), [table[s][a] for a in arms], "-o", color="0.6", lw=0.8, ms=3)
    ax.errorbar(range(len(arms)), [means[a] for a in arms], yerr=[0 if np.isnan(stds[a]) else stds[a] for a in arms],
                fmt="s", color="C3", capsize=4, label="mean ± std")
    ax.set_xticks(range(len(arms)), arms)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{len(splits)} paired splits (grey: one split)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = out / "study.png.tmp"
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(out / "study.png")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.unlabelled_photos", description=__doc__.split("\n")[0])
    p.add_argument("labelled", type=Path)
    p.add_argument("unlabelled", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--init", action="append", metavar="NAME=WEIGHTS", help="a pretrained arm (repeatable)")
    p.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--rounds", type=int, default=1, help="self-training rounds (0: no self-trained arm)")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--augment", default="strong")
    p.add_argument("--test-ratio", type=float, default=0.5)
    args = p.parse_args(argv)
    for what in ("labelled", "unlabelled"):
        if not getattr(args, what).is_dir():
            raise SystemExit(f"{what} folder {getattr(args, what)} does not exist")
    inits = parse_init(args.init)
    arms = ["scratch", *inits] + (["self-trained"] if args.rounds > 0 else [])
    args.out.mkdir(parents=True, exist_ok=True)
    table, extra = {}, {}
    for split in args.splits:
        t0 = time.perf_counter()
        here = args.out / f"split-{split:02d}"
        print(f"split {split}: {', '.join(arms)}", flush=True)
        table[split] = run_init_arms(args, inits, split, here / "init")
        if args.rounds > 0:
            summary = run_self_training_arm(args, split, here / "self-train")
            table[split]["self-trained"] = summary["rounds"][-1]["test_acc"]
            extra[split] = {"teacher": summary["rounds"][0]["test_acc"],
                            "students": [{k: r.get(k) for k in ("round", "test_acc", "num_pseudo_labelled",
                                                                "pseudo_label_counts")}
                                         for r in summary["rounds"][1:]]}
        print(f"split {split} done in {time.perf_counter() - t0:.0f} s: "
              + ", ".join(f"{a} {table[split][a]:.4f}" for a in arms), flush=True)
        write_report(args.out, args, table, arms, summarise(table, arms), extra)
    print((args.out / "study.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
