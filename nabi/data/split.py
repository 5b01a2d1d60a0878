"""In-memory datasets, subsets and stratified train/val/test splits."""
from __future__ import annotations

from pathlib import Path

import numpy as np


class ArrayDataset:
    """Images and labels already in memory.

    ``images`` (N, C, H, W) (an (N, H, W) array gets a channel axis), ``labels``
    (N,) integers. ``ds[i]`` -> ``(x, y)`` with ``x`` float32 (C, H, W);
    ``transform`` is a callable ``t(x, rng)``. ``classes`` defaults to
    ``['0', '1', ...]``.
    """

    def __init__(self, images, labels, classes=None, transform=None):
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[:, None]
        if images.ndim != 4:
            raise ValueError(f"images must be shaped (N, C, H, W) or (N, H, W), got {images.shape}")
        if images.dtype != np.float32:
            images = images.astype(np.float32)
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(f"labels must be shaped (N,) = ({len(images)},) to match images, got {labels.shape}")
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            if not np.all(np.mod(labels, 1) == 0):
                raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
        if labels.size and labels.min() < 0:
            raise ValueError(f"labels must be >= 0, got {labels.min()}")
        if classes is None:
            classes = [str(i) for i in range(int(labels.max()) + 1 if labels.size else 0)]
        classes = list(classes)
        if labels.size and labels.max() >= len(classes):
            raise ValueError(f"label {labels.max()} has no class name: classes has only {len(classes)} entries")
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable t(x, rng), got {transform!r}")
        self.images, self.labels, self.classes, self.transform = images, labels, classes, transform

    @property
    def class_to_idx(self) -> dict:
        return {c: i for i, c in enumerate(self.classes)}

    @property
    def targets(self) -> np.ndarray:
        """Labels, int64 (N,)."""
        return self.labels

    def __len__(self) -> int:
        return len(self.images)

    def get(self, i, rng=None):
        """``(x, y)``: x float32 (C, H, W) with ``transform(x, rng)`` applied."""
        x = self.images[i]
        if self.transform is not None:
            x = self.transform(x.copy(), rng)
        return x, int(self.labels[i])

    def __getitem__(self, i):
        return self.get(int(i))

    def get_batch(self, indices):
        """Fast path (no transform): ``(images[indices] (N, C, H, W), labels[indices] (N,))``."""
        indices = np.asarray(indices, dtype=np.int64)
        return self.images[indices], self.labels[indices]

    def __repr__(self) -> str:
        return f"ArrayDataset(n={len(self)}, shape={self.images.shape[1:]}, classes={len(self.classes)})"


class Subset:
    """A view of ``dataset`` restricted to ``indices`` (order kept)."""

    def __init__(self, dataset, indices):
        indices = np.asarray(indices)
        if indices.ndim != 1 or (indices.size and not np.issubdtype(indices.dtype, np.integer)):
            raise ValueError(f"indices must be a 1-D array of integers, got {indices.dtype} {indices.shape}")
        indices = indices.astype(np.int64)
        n = len(dataset)
        if indices.size and (indices.min() < 0 or indices.max() >= n):
            raise ValueError(f"indices must lie in [0, {n}) for a dataset of {n} examples, "
                             f"got min {indices.min()} max {indices.max()}")
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def classes(self):
        return getattr(self.dataset, "classes", None)

    @property
    def class_to_idx(self):
        return getattr(self.dataset, "class_to_idx", None)

    @property
    def transform(self):
        return getattr(self.dataset, "transform", None)

    @property
    def targets(self) -> np.ndarray:
        return np.asarray(_targets(self.dataset), dtype=np.int64)[self.indices]

    def get(self, i, rng=None):
        j = int(self.indices[i])
        if hasattr(self.dataset, "get"):
            return self.dataset.get(j, rng)
        return self.dataset[j]

    def __getitem__(self, i):
        return self.get(int(i))

    def __getattr__(self, name):
        # get_batch only when the wrapped dataset has it (keeps the DataLoader fast path).
        if name == "get_batch" and hasattr(self.__dict__.get("dataset"), "get_batch"):
            return lambda idx: self.dataset.get_batch(self.indices[np.asarray(idx, dtype=np.int64)])
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"Subset(n={len(self)}, of={self.dataset!r})"


def _targets(dataset):
    t = getattr(dataset, "targets", None)
    if t is None:
        t = [dataset[i][1] for i in range(len(dataset))]
    return t


def _largest_remainder(n: int, ratios) -> np.ndarray:
    exact = n * np.asarray(ratios, dtype=np.float64)
    counts = np.floor(exact + 1e-9).astype(np.int64)
    rest = n - counts.sum()
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:rest]] += 1
    # Every part gets at least one example; take from the largest part.
    for k in range(len(counts)):
        if counts[k] == 0:
            counts[np.argmax(counts)] -= 1
            counts[k] = 1
    return counts


def stratified_split(labels, ratios=(0.8, 0.2), seed: int = 0) -> list[np.ndarray]:
    """Split example indices into parts with the class mix of ``labels`` kept in each.

    ``labels`` (N,) (or a dataset with ``targets``); ``ratios`` e.g. (0.8, 0.2) or
    (0.7, 0.15, 0.15), positive and summing to 1. Returns one sorted int64 index
    array per part; every example is in exactly one part, every class has at
    least one example in every part, and the result depends only on ``seed``.
    Raises ValueError when a class has fewer examples than there are parts.
    """
    if hasattr(labels, "targets") and not isinstance(labels, np.ndarray):
        labels = labels.targets
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {labels.shape}")
    try:
        ratios = [float(r) for r in ratios]
    except TypeError:
        raise ValueError(f"ratios must be a sequence like (0.8, 0.2), got {ratios!r}") from None
    if len(ratios) < 2:
        raise ValueError(f"ratios needs at least two parts, got {ratios}")
    if any(not np.isfinite(r) or r <= 0 for r in ratios):
        raise ValueError(f"ratios must all be positive, got {ratios}")
    if abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"ratios must sum to 1, got {ratios} (sum {sum(ratios):g})")
    rng = np.random.default_rng(seed)
    parts = [[] for _ in ratios]
    classes, inverse = np.unique(labels, return_inverse=True)
    for c, cls in enumerate(classes):
        idx = np.flatnonzero(inverse == c)
        if len(idx) < len(ratios):
            name = cls.item() if hasattr(cls, "item") else cls
            raise ValueError(f"class {name!r} has only {len(idx)} example(s); a split into {len(ratios)} "
                             f"parts needs at least {len(ratios)} per class")
        idx = idx[rng.permutation(len(idx))]
        counts = _largest_remainder(len(idx), ratios)
        start = 0
        for k, cnt in enumerate(counts):
            parts[k].append(idx[start:start + cnt])
            start += cnt
    return [np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, np.int64) for p in parts]


_SPLIT_NAMES = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation", "dev"),
    "test": ("test", "testing"),
}


def find_splits(root):
    """``{'train': Path, 'val': Path, 'test': Path}`` (val/test only when present) when
    ``root`` has split sub-folders (train/val/test; also training, valid,
    validation, dev, testing; any case), else ``None`` (a plain class-per-folder tree)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    subdirs = {p.name.lower(): p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    found = {}
    for key, names in _SPLIT_NAMES.items():
        for n in names:
            if n in subdirs:
                found[key] = subdirs[n]
                break
    if "train" not in found:
        if found:
            raise ValueError(f"{root} has {sorted(p.name for p in found.values())} split folder(s) but no "
                             "'train' folder; expected train/ (plus val/ and/or test/) or one folder per class")
        return None
    return found
