"""``nabi train-descriptor``: train the ``hardnet`` patch descriptor on pairs mined from a folder of photos.

The pairs (``nabi.reid.descriptor_data``: a photo against its warped, relit copies, and RANSAC-verified
matches between photos of one individual) are split by individual: ``val_ratio`` of the individuals
(at least one) are held out, their pairs kept for validation. Batches hold n pairs as 2n patches
(anchors, then positives; the matched pairs repeated ``matched_repeats`` times per epoch, since they are
few and teach what the warped ones cannot), trained with HardNet's loss (``HardNetLoss``, margin 1) by
nabi's trainer: progress, the metrics log, checkpoints and exact resume.

Columns of ``metrics.jsonl``: ``train_acc`` is the share of pairs whose anchor has its own positive
as the nearest of the batch's positives; after each epoch the held-out pairs give
``val_fpr95`` — HardNet's false-positive rate at 95 % recall: the share of non-matching patch pairs
(each held-out anchor with another pair's positive) closer than the distance that 95 % of the matching
pairs are within (lower is better) — and ``val_fpr95_matched`` on the matched pairs alone, with
``val_match_top1``, the ``train_acc`` of the held-out pairs in batches of the training size. SIFT
descriptors of the same held-out patches are scored once for reference (``sift_val_fpr95``, in
``config.json``).

The run folder holds ``config.json``, ``metrics.jsonl``, ``checkpoints/``, ``model.safetensors`` (the
trainer's float32 weights) and ``descriptor.safetensors`` with its sidecar ``descriptor.json`` (format
``nabi-descriptor``: what ``nabi.reid.descriptors.PatchDescriptor.load`` reads; float16 unless
``half=False``), whose ``training`` entry records the command, the photos, the pairs, the commit and the date.
"""
from __future__ import annotations

import datetime
import subprocess
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import __version__, backend, files
from ..data.loader import DataLoader, LoaderView
from ..layers.hardnet_loss import HardNetLoss
from ..training.extensions import PRIORITY_EDITOR, Extension
from ..training.trainer import Trainer
from .descriptor_data import MATCHED, MiningSettings, cached_pairs
from .descriptors import FORMAT
from .patches import MAGNIFICATION, PATCH_SIZE, standardise

DESCRIPTOR_FILE = "descriptor.safetensors"
VAL_PAIRS = 3000                 # held-out pairs scored after each epoch (a seeded sample)
NO_LABEL = -1


class PairPatches:
    """The pairs ``rows`` of uint8 patches (N, 2, P, P) as a dataset: ``get_batch`` gives standardised float32
    (n, 2, 1·P, P) → (n, 2, P, P) and labels −1."""

    def __init__(self, patches, rows):
        self.patches, self.rows = patches, np.asarray(rows, np.int64)

    def __len__(self):
        return len(self.rows)

    def get_batch(self, indices):
        sel = self.patches[np.sort(self.rows[np.asarray(indices)])]          # sorted: fewer seeks in a mapped file
        n, _, p, _ = sel.shape
        x = standardise(sel.reshape(2 * n, p, p)).reshape(n, 2, p, p)
        return x, np.full(n, NO_LABEL, np.int64)

    def __getitem__(self, i):
        x, y = self.get_batch([i])
        return x[0], y[0]


class PairBatches(LoaderView):
    """Batches of n pairs as ``(x (2n, 1, P, P), y (2n,) = −1)``: rows i and i + n the two patches of pair i."""

    def __iter__(self):
        for x, _ in self.loader:
            xp = backend.get_array_module(x)
            n = x.shape[0]
            yield (xp.ascontiguousarray(x.swapaxes(0, 1).reshape(2 * n, 1, *x.shape[2:])),
                   xp.full((2 * n,), NO_LABEL, dtype=np.int64))


def fpr_at_recall(positive, negative, recall=0.95) -> float:
    """The share of ``negative`` distances at or below the distance that ``recall`` of ``positive`` are within."""
    threshold = np.quantile(np.asarray(positive, np.float64), recall)
    return float((np.asarray(negative) <= threshold).mean())


def pair_scores(anchors, positives, batch=256, seed=0) -> dict:
    """FPR at 95 % recall (each anchor against the positive of a random other pair) and the matching top-1 in
    batches of ``batch`` pairs, of descriptors (n, D) of n pairs."""
    n = len(anchors)
    rng = np.random.default_rng(seed)
    other = (np.arange(n) + rng.integers(1, n, n)) % n                      # never the pair itself
    pos = np.linalg.norm(anchors - positives, axis=1)
    neg = np.linalg.norm(anchors - positives[other], axis=1)
    correct = 0
    for s in range(0, n, batch):
        a, p = anchors[s:s + batch], positives[s:s + batch]
        d = (a * a).sum(1)[:, None] + (p * p).sum(1)[None, :] - 2 * a @ p.T
        correct += int((d.argmin(axis=1) == np.arange(len(a))).sum())
    return {"fpr95": fpr_at_recall(pos, neg), "match_top1": correct / n}


def sift_descriptors(patches) -> np.ndarray:
    """RootSIFT (n, 128) of uint8 patches (n, P, P), one keypoint at each centre covering the patch (size P/6)."""
    from .local_features import _cv2
    cv2 = _cv2()
    sift = cv2.SIFT_create()
    p = patches.shape[1]
    kp = [cv2.KeyPoint((p - 1) / 2.0, (p - 1) / 2.0, p / MAGNIFICATION, 0.0)]
    out = np.zeros((len(patches), 128), np.float32)
    for i, patch in enumerate(patches):
        _, d = sift.compute(np.ascontiguousarray(patch), kp)
        if d is not None and len(d):
            out[i] = d[0]
    out /= np.maximum(out.sum(axis=1, keepdims=True), 1e-7)
    return np.sqrt(out)


class PairValidation(Extension):
    """After each epoch, the held-out pairs' scores into the epoch's row (``val_fpr95`` …), before the best
    model is chosen."""

    name = "pair_validation"
    priority = PRIORITY_EDITOR

    def __call__(self, trainer):
        trainer.history[-1].update({f"val_{k}": v for k, v in trainer.validate().items()})


class DescriptorTrainer(Trainer):
    """The trainer with HardNet's loss; ``train_acc`` counts pairs matched in their batch, and after each epoch
    the held-out pairs are scored (``val_fpr95``, ``val_fpr95_matched``, ``val_match_top1``)."""

    def __init__(self, *args, margin=1.0, val_patches=None, val_matched=None, **kwargs):
        kwargs["loss_fn"] = HardNetLoss(margin)
        super().__init__(*args, **kwargs)
        self.val_patches = val_patches                   # uint8 (m, 2, P, P) or None
        self.val_matched = val_matched                   # bool (m,): the matched pairs among them
        if val_patches is not None and len(val_patches):
            self.extend(PairValidation())

    def _step(self, x, y, sums):
        super()._step(x, y, sums)
        sums["correct"] += 2 * self.loss_fn.correct      # the trainer divides by its 2n rows; n pairs were scored

    def validate(self) -> dict:
        from .descriptors import PatchDescriptor
        was_training = self.model.training
        try:
            net = PatchDescriptor(self.model, {"patch": {"size": PATCH_SIZE}})
            a = net.describe_patches(self.val_patches[:, 0])
            p = net.describe_patches(self.val_patches[:, 1])
        finally:
            self.model.train(was_training)
        batch = max(2, self.train_loader.loader.batch_size)
        out = pair_scores(a, p, batch)
        if self.val_matched is not None and self.val_matched.sum() >= 2:
            out["fpr95_matched"] = pair_scores(a[self.val_matched], p[self.val_matched], batch)["fpr95"]
        return out


def source_commit() -> str | None:
    """The git commit of this nabi checkout (``+dirty`` when its tracked files under nabi/ differ from it), or
    None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if head.returncode != 0 or not head.stdout.strip():
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", str(here.parent)],
                               cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def split_pairs(pairs, val_ratio, seed, matched_repeats):
    """``(train rows, val rows)`` of a ``PairSet``: the pairs of a ``val_ratio`` share of the individuals held out;
    the training rows list each matched pair ``matched_repeats`` times."""
    from .metrics import leave_individuals_out
    names = list(pairs.individuals)
    held = []
    if val_ratio > 0:
        _, held = leave_individuals_out(names, val_ratio, seed)
    held_ids = np.array([names.index(n) for n in held], np.int64)
    is_val = np.isin(pairs.individual, held_ids)
    train = np.nonzero(~is_val)[0]
    matched = train[pairs.source[train] == MATCHED]
    train = np.concatenate([train] + [matched] * max(0, int(matched_repeats) - 1))
    return train, np.nonzero(is_val)[0], held


def run_descriptor_training(photos, out, *, width=8, embedding_dim=128, dropout=0.3, epochs=2, iterations=None,
                            batch_size=256, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4,
                            schedule="cosine", margin=1.0, val_ratio=0.05, matched_repeats=4, seed=0,
                            mining=None, cache_dir=None, checkpoint_every=200, keep_last=2, resume=False,
                            overwrite=False, half=True, progress=True, command=None, log=print):
    """Mine (or read the cached) pairs of the photos under ``photos``, train, and write the run folder ``out``.
    Returns ``(trainer, descriptor_path)``."""
    from ..runs import open_run_folder, resolved_config, write_config
    from ..training.build import build_trainer
    from ..training.config import TrainConfig
    from ..training.progress import Progress
    from .. import models

    mining = (mining or MiningSettings()).check()
    if batch_size < 2:
        raise ValueError(f"--batch-size must be at least 2 pairs (each pair's negatives are the others), got {batch_size}")
    if not 0 <= val_ratio < 1:
        raise ValueError(f"--val-ratio must be in [0, 1), got {val_ratio}")
    if int(matched_repeats) < 1:
        raise ValueError(f"--matched-repeats must be at least 1, got {matched_repeats}")
    out = Path(out)
    commit = source_commit()                    # the code that trains, taken before the run starts
    with open_run_folder(out, resume=resume, overwrite=overwrite, log=log):
        pairs, cache_file = cached_pairs(photos, mining, cache_dir, progress=Progress(enabled=progress), log=log)
        train_rows, val_rows, held = split_pairs(pairs, val_ratio, seed, matched_repeats)
        if len(train_rows) < batch_size:
            raise ValueError(f"{photos}: {len(train_rows)} training pairs, fewer than --batch-size {batch_size}; give a "
                             f"smaller batch size or more photos")
        rng = np.random.default_rng(seed)
        val_rows = np.sort(rng.choice(val_rows, min(VAL_PAIRS, len(val_rows)), replace=False)) if len(val_rows) else val_rows
        val_patches = np.asarray(pairs.patches[val_rows]) if len(val_rows) else None
        val_matched = pairs.source[val_rows] == MATCHED if len(val_rows) else None
        steps = len(train_rows) // int(batch_size)
        if iterations is not None:                      # the iteration budget decides; epochs follow from it
            epochs = -(-int(iterations) // steps)
        cfg = TrainConfig(data=str(photos), model="hardnet",
                          model_args={"width": int(width), "embedding_dim": int(embedding_dim), "dropout": float(dropout)},
                          epochs=int(epochs), iterations=iterations, batch_size=int(batch_size), optimizer=optimizer,
                          lr=float(lr), momentum=float(momentum), weight_decay=float(weight_decay), schedule=schedule,
                          val_ratio=float(val_ratio), test_ratio=0.0, seed=int(seed), out=str(out),
                          checkpoint_every=checkpoint_every, keep_last=int(keep_last), progress=bool(progress))
        backend.seed(int(backend.new_rng(seed).integers(2**63 - 1)))
        model = models.get("hardnet", **cfg.model_args)
        loader = PairBatches(DataLoader(PairPatches(pairs.patches, train_rows), batch_size=int(batch_size),
                                        shuffle=True, seed=int(seed), drop_last=True))
        counts = pairs.counts()
        reference = {}
        if val_patches is not None:
            sift = sift_descriptors(val_patches.reshape(-1, PATCH_SIZE, PATCH_SIZE)).reshape(len(val_patches), 2, -1)
            reference = {f"sift_val_{k}": v for k, v in pair_scores(sift[:, 0], sift[:, 1], int(batch_size)).items()}
            if val_matched.sum() >= 2:
                reference["sift_val_fpr95_matched"] = pair_scores(sift[val_matched, 0], sift[val_matched, 1])["fpr95"]
            log("SIFT on the held-out patches: " + ", ".join(f"{k[9:]} {v:.4f}" for k, v in reference.items()))
        descriptor_info = {
            "pairs": counts, "pairs_cache": str(cache_file), "mining": asdict(mining),
            "train_pairs_per_epoch": int(len(train_rows)), "matched_repeats": int(matched_repeats),
            "validation_individuals": held, "validation_pairs": int(len(val_rows)), "margin": float(margin),
            "photos": len(pairs.paths), "individuals": len(pairs.individuals), **reference}
        ran = {"input_size": [1, PATCH_SIZE, PATCH_SIZE], "descriptor": descriptor_info}
        resolved = resolved_config(cfg, ran)
        meta = {"format": "nabi-descriptor-run", "nabi_version": __version__, "arch": model.arch, "classes": [],
                "input_size": [1, PATCH_SIZE, PATCH_SIZE], "config": resolved}
        log(f"hardnet width {width} ({sum(p.size for p in model.parameters()):,} parameters) on "
            f"{len(train_rows):,} pairs per epoch ({counts['warped']:,} warped, {counts['matched']:,} matched × "
            f"{matched_repeats}, of {len(pairs.individuals) - len(held)} individuals); validation: {len(val_rows)} "
            f"pairs of {len(held)} held-out individuals")

        class _Trainer(DescriptorTrainer):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, margin=margin, val_patches=val_patches, val_matched=val_matched, **kwargs)
        _Trainer.__name__ = _Trainer.__qualname__ = "DescriptorTrainer"
        trainer = build_trainer(cfg, model, loader, None, out_dir=out, metadata=meta, config=resolved, log=log,
                                trainer_class=_Trainer)
        if resume and trainer.resume() is None:
            log(f"no checkpoint in {out}: starting from the beginning")
        write_config(out, cfg, ran)             # after the resume: a refused one leaves config.json as it was
        trainer.fit()
        last = trainer.history[-1] if trainer.history else {}
        training = {"command": command, "photos": str(Path(photos).resolve()), **descriptor_info,
                    "epochs_trained": trainer.epoch, "iterations": trainer.iteration, "status": trainer.status,
                    "final": {k: v for k, v in last.items() if k.startswith(("val_", "train_"))},
                    "optimizer": {"name": optimizer, "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                                  "schedule": schedule, "batch_pairs": batch_size},
                    "commit": commit, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "seed": int(seed)}
        path = out / DESCRIPTOR_FILE
        save_descriptor(path, model, training, half=half)
        log(f"descriptor: {path} ({'float16' if half else 'float32'} weights; nabi.reid.descriptors.PatchDescriptor.load)")
        return trainer, path


def save_descriptor(path, model, training, half=True) -> None:
    """Write ``model``'s weights (float16 when ``half``) as a ``nabi-descriptor`` file with its sidecar."""
    state = model.state_dict()
    if half:
        state = {k: np.asarray(backend.to_numpy(v), np.float16) for k, v in state.items()}
    files.save_weights(path, state, {
        "format": FORMAT, "nabi_version": __version__, "arch": model.arch, "input_size": [1, PATCH_SIZE, PATCH_SIZE],
        "patch": {"size": PATCH_SIZE, "magnification": MAGNIFICATION,
                  "input": "each patch standardised: zero mean, unit standard deviation"},
        "keypoints": "OpenCV SIFT, the photo shrunk to 512 px on its longer side (nabi.reid.matcher)",
        "storage": "float16" if half else "float32", "training": training})
