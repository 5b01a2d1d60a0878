"""Pseudo-labels: a teacher's predictions on unlabelled photos, their selection, manifest and dataset.

``list_photos(root)`` finds the unlabelled photos (any folder tree). ``predict(teacher, meta, photos)``
gives the teacher's class probabilities (N, K), unnoised: eval mode (no dropout, batch-norm
running statistics), the run's evaluation transforms (resize, centre crop, normalisation).
``select(probs, ...)`` keeps the photos whose confidence max_k p_k reaches the threshold and
balances the classes (see its docstring); ``write_manifest`` records the choice as JSON (the
photos are not copied); ``PseudoLabelled`` reads photos and their pseudo-labels back.
"""
from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import numpy as np

from .. import backend, files
from .. import data as D
from ..data.folder import IMG_EXTENSIONS, _list_images, check_fit

MANIFEST_FORMAT = "nabi-pseudo-labels"


def list_photos(root) -> list[Path]:
    """Every image under ``root`` (recursive, sorted); a missing folder or one without images is an error."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"unlabelled photo folder {root} does not exist (give a folder of images; "
                                f"sub-folders are searched)")
    photos = _list_images(root, IMG_EXTENSIONS)
    if not photos:
        raise ValueError(f"unlabelled photo folder {root} holds no image files with extensions "
                         f"{', '.join(IMG_EXTENSIONS)}; self-training needs unlabelled photos to label")
    return photos


class PhotoList:
    """Photos by path as ``(x (C, H, W) in [0, 1], label)``: decoded at ``size`` as ``fit`` says (``crop``:
    shorter side resized, centre crop; ``squash``; ``pad``). ``labels`` default to −1 (unknown)."""

    def __init__(self, paths, size, channels=3, labels=None, fit="crop"):
        self.paths = [str(p) for p in paths]
        self.size, self.channels, self.fit = tuple(size), int(channels), check_fit(fit)
        self.labels = np.full(len(self.paths), -1, np.int64) if labels is None else np.asarray(labels, np.int64)
        if self.labels.shape != (len(self.paths),):
            raise ValueError(f"PhotoList: {len(self.paths)} photos but {self.labels.shape} labels")

    def __len__(self):
        return len(self.paths)

    @property
    def targets(self):
        return self.labels

    def __getitem__(self, i):
        return D.load_image(self.paths[i], self.channels, self.size, self.fit), int(self.labels[i])


def predict(teacher, meta, photos, batch_size=64, device="cpu"):
    """The teacher's softmax probabilities (N, K) float64 over ``photos`` (paths), in eval mode."""
    from ..data.prepare import eval_loader
    from ..functional.activation import softmax
    from ..runs import image_fit
    C, H, W = meta["input_size"]
    loader = eval_loader(PhotoList(photos, (H, W), C, fit=image_fit(meta)), meta, batch_size=batch_size,
                         device=device)
    was_training = teacher.training
    teacher.eval()
    out = []
    try:
        for x, _ in loader:
            out.append(backend.to_numpy(softmax(teacher(x), axis=1)).astype(np.float64))
    finally:
        teacher.train(was_training)
    return np.concatenate(out)


def folder_labels(photos, root, classes) -> np.ndarray:
    """The class index of each photo's first folder under ``root`` when that folder is named like a class,
    else −1: the unlabelled photos' own labels, for the optional pseudo-label accuracy diagnostic."""
    index = {unicodedata.normalize("NFC", c): i for i, c in enumerate(classes)}
    out = np.full(len(photos), -1, np.int64)
    for n, p in enumerate(photos):
        parts = Path(os.path.relpath(p, root)).parts
        if len(parts) > 1:
            out[n] = index.get(unicodedata.normalize("NFC", parts[0]), -1)
    return out


def select(probs, threshold, max_per_class, background=None, soft=False):
    """Which photos to pseudo-label, with what target.

    probs (N, K): the teacher's probabilities. A photo is kept when its confidence
    max_k p_k ≥ ``threshold``; its hard label is the argmax. Class balance: of each class, at
    most ``max_per_class`` photos are kept, the most confident first (ties: the earlier photo),
    so one class the teacher favours cannot swamp the rest. ``background`` (a class index or
    None): photos whose argmax is that class stay background, with a one-hot target even under
    ``soft``, so a background photo never teaches a share of an individual's class.

    Returns ``(kept (M,) int64 photo indices in photo order, labels (M,) int64, targets (M, K) float64)``:
    targets are the teacher's probabilities (``soft``) or one-hot rows of the labels.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if not 0 < threshold <= 1:
        raise ValueError(f"--threshold must lie in (0, 1], got {threshold}")
    if max_per_class < 1:
        raise ValueError(f"the per-class cap must be at least 1, got {max_per_class}")
    N, K = probs.shape
    labels = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    keep = np.zeros(N, bool)
    for k in range(K):
        cand = np.flatnonzero((labels == k) & (conf >= threshold))
        order = cand[np.argsort(-conf[cand], kind="stable")]
        keep[order[:max_per_class]] = True
    kept = np.flatnonzero(keep)
    one_hot = np.eye(K)[labels[kept]]
    targets = probs[kept].copy() if soft else one_hot
    if soft and background is not None:
        bg = labels[kept] == background
        targets[bg] = one_hot[bg]
    return kept.astype(np.int64), labels[kept].astype(np.int64), targets


def write_manifest(path, root, photos, kept, labels, targets, probs, classes, soft, threshold, max_per_class):
    """Write the pseudo-labels as JSON (atomically): one entry per kept photo, its path relative to
    ``root``, label, confidence and (``soft``) target probabilities."""
    entries = []
    for i, lab, t in zip(kept, labels, targets):
        e = {"path": os.path.relpath(photos[i], root), "label": classes[lab], "label_index": int(lab),
             "confidence": float(probs[i].max())}
        if soft:
            e["target"] = [float(v) for v in t]
        entries.append(e)
    files.atomic_write_json(path, {"format": MANIFEST_FORMAT, "root": str(Path(root).resolve()),
                                   "classes": list(classes), "soft": bool(soft), "threshold": float(threshold),
                                   "max_per_class": int(max_per_class), "num_photos": len(photos),
                                   "photos": entries})


def read_manifest(path):
    """``(paths, labels (M,), targets (M, K) or None, classes)`` from a manifest ``write_manifest`` wrote."""
    d = files_read_json(path)
    if d.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a pseudo-label manifest (format {MANIFEST_FORMAT!r} expected)")
    root = Path(d["root"])
    entries = d["photos"]
    paths = [root / e["path"] for e in entries]
    labels = np.asarray([e["label_index"] for e in entries], np.int64)
    targets = np.asarray([e["target"] for e in entries], np.float64) if d["soft"] else None
    return paths, labels, targets, d["classes"]


def files_read_json(path):
    from ..runs import read_json
    try:
        return read_json(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None


class Concat:
    """The examples of ``parts`` one after another (labelled photos, then pseudo-labelled ones)."""

    def __init__(self, parts):
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.classes = getattr(self.parts[0], "classes", None)

    def __len__(self):
        return int(self.offsets[-1])

    def _locate(self, i):
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} examples")
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return self.parts[k], i - int(self.offsets[k])

    def __getitem__(self, i):
        part, j = self._locate(i)
        return part[j]

    @property
    def targets(self):
        from ..data.prepare import _targets
        return np.concatenate([np.asarray(_targets(p), np.int64) for p in self.parts])


class RowIndexed:
    """``dataset`` with each label replaced by the example's own index: the row of its soft target."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.classes = getattr(dataset, "classes", None)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i][0], int(i)


class SoftTargetBatches(D.LoaderView):
    """Wrap a ``DataLoader`` over ``RowIndexed`` data: yields ``(x, labels)`` with labels the argmax of each
    example's target row, and registers the rows ``targets[i]`` (N, K) with ``loss.expect`` for those labels.
    Length, state and resume are the loader's."""

    def __init__(self, loader, targets, loss):
        super().__init__(loader)
        self.loss = loss
        self.targets = np.asarray(targets)
        self._device_targets = None

    def __iter__(self):
        for x, rows in self.loader:
            xp = backend.get_array_module(rows)
            if self._device_targets is None or backend.get_array_module(self._device_targets) is not xp:
                self._device_targets = xp.asarray(self.targets.astype(np.float32))
            q = self._device_targets[rows]
            labels = q.argmax(axis=1)
            self.loss.expect(labels, q)
            yield x, labels
