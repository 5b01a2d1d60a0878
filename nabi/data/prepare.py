"""From a data argument to datasets and loaders: folders or embedded samples, splits, transforms, normalisation.

``load_datasets`` reads a folder (one sub-folder per class, or ``train/``, ``val/``,
``test/``) or ``embedded:NAME``; ``Transformed`` applies the evaluation or training
transforms; ``eval_loader`` gives the batches a saved run is scored on.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import data as D

EMBEDDED_PREFIX = "embedded:"
# pixel/256 scaling, under its current name and the name older nabi versions wrote into run folders.
PIXEL256_KINDS = ("pixel256", "seed2019")
# Input scalings (``normalization_spec``) and online augmentation levels (``augmentation``).
NORMALIZATIONS = ("unit", "pixel256", "dataset", "imagenet")
AUGMENTS = ("none", "flip", "standard", "strong", "crop_flip_jitter")


# -- data --------------------------------------------------------------------------------------------
class _Pad:
    """Zero-pad (C, h, w) to (C, H, W), centred (MNIST's 28×28 into LeNet's 32×32)."""

    def __init__(self, hw):
        self.hw = hw

    def __call__(self, x, rng=None):
        H, W = self.hw
        h, w = x.shape[1:]
        if (h, w) == (H, W):
            return x
        if h > H or w > W:
            return D.Resize((H, W))(x)
        out = np.zeros((x.shape[0], H, W), dtype=x.dtype)
        t, l = (H - h) // 2, (W - w) // 2
        out[:, t:t + h, l:l + w] = x
        return out


def normalization_transform(spec: dict):
    kind = spec["kind"]
    if kind == "unit":
        return None
    if kind in PIXEL256_KINDS:
        return D.Pixel256Scale()
    return D.Normalize(spec["mean"], spec["std"])


def augmentation(kind: str, hw):
    """The online training transforms of augmentation level ``kind`` for inputs of size ``hw`` = (H, W).

    ``none``; ``flip``: horizontal flips; ``standard``: random crops of the image zero-padded by H/8,
    flips; ``strong``: random resized crops (area 0.5–1), flips, rotation by up to ±10°, colour
    jitter 0.3; ``crop_flip_jitter``: random resized crops (area 0.5–1), flips, colour jitter 0.2
    (the usual torchvision recipe ``RandomResizedCrop(s, scale=(0.5, 1))``, ``RandomHorizontalFlip()``,
    ``ColorJitter(0.2, 0.2, 0.2)``). Colour jitter ``j`` draws brightness, contrast and saturation
    factors from [1 - j, 1 + j], as torchvision's ``ColorJitter(j, j, j)``.
    """
    H, W = hw
    if kind == "none":
        return []
    if kind == "flip":
        return [D.RandomHorizontalFlip()]
    if kind == "standard":
        return [D.RandomCrop((H, W), padding=max(1, H // 8)), D.RandomHorizontalFlip()]
    if kind == "strong":
        return [D.RandomResizedCrop((H, W), scale=(0.5, 1.0)), D.RandomHorizontalFlip(), D.RandomRotation(10),
                D.ColorJitter(0.3, 0.3, 0.3)]
    if kind == "crop_flip_jitter":
        return [D.RandomResizedCrop((H, W), scale=(0.5, 1.0)), D.RandomHorizontalFlip(), D.ColorJitter(0.2, 0.2, 0.2)]
    raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}; got {kind!r}")


class Transformed:
    """A dataset view that applies ``transforms`` (each ``t(x, rng)``) to every example."""

    def __init__(self, base, transforms):
        self.base, self.transforms = base, [t for t in transforms if t is not None]
        self.classes = getattr(base, "classes", None)
        self.transform = self._apply if self.transforms else None

    def __len__(self):
        return len(self.base)

    def _apply(self, x, rng):
        for t in self.transforms:
            x = t(x, rng)
        return x

    def get(self, i, rng=None):
        x, y = self.base[i]
        return (self._apply(x, rng) if self.transforms else x), y

    def __getitem__(self, i):
        return self.get(i, np.random.default_rng(i))

    @property
    def targets(self):
        return _targets(self.base)


class Cached:
    """Decode each image once and keep it in memory as uint8 (images from ``ImageFolder`` are pixel/255,
    so the round trip is exact); later epochs index the cache. Thread-safe for the loader's workers."""

    def __init__(self, base):
        self.base = base
        self.classes = getattr(base, "classes", None)
        self._store = [None] * len(base)
        self._labels = [None] * len(base)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        hit = self._store[i]
        if hit is None:
            x, y = self.base[i]
            q = np.round(np.asarray(x) * 255.0)
            if np.abs(q / 255.0 - x).max() > 1e-6:     # not pixel/255 data: cache as it is
                hit = np.asarray(x, np.float32)
            else:
                hit = q.astype(np.uint8)
            self._store[i], self._labels[i] = hit, y
        y = self._labels[i]
        return (hit.astype(np.float32) / 255.0 if hit.dtype == np.uint8 else hit), y

    @property
    def targets(self):
        return _targets(self.base)


def _targets(ds):
    if hasattr(ds, "targets"):
        return np.asarray(ds.targets)
    return np.asarray([ds[i][1] for i in range(len(ds))])


def load_datasets(data: str, image_size=None, channels=3, val_ratio=0.1, test_ratio=0.1, seed=0, exclude=(),
                  strict=False, classes=None, fit="crop", background_kinds=False, encounters="photo"):
    """``{'train', 'val', 'test', 'classes', 'source'}`` from a folder or ``embedded:NAME``.

    A folder's photos are brought to ``image_size`` as ``fit`` says (``crop``, ``squash`` or
    ``pad``; see ``nabi.data.folder.FITS``); embedded samples come at their own size.
    A folder with ``train/`` (and optionally ``val/``, ``test/``) is used as it
    is; any other folder is one class per sub-folder, split by ratio
    (stratified, seeded). Missing val/test parts are split off ``train``.
    ``background_kinds``: each ``background/<kind>/`` sub-folder is a class
    ``background/<kind>`` of its own (``ImageFolder``'s option), in every part,
    and the ratio splits are stratified by it.
    ``encounters``: how a folder's photos are grouped into encounters, each kept whole in one part of a
    ratio split (``nabi.data.encounters``; ``photo``, the default, is the plain stratified split).
    """
    if data.startswith(EMBEDDED_PREFIX):
        name = data[len(EMBEDDED_PREFIX):]
        if encounters != "photo":
            raise ValueError(f"{data} has no photo files to group into encounters: encounters applies to a "
                             f"folder of photos (got encounters={encounters!r})")
        full = D.embedded_dataset(name)
        parts = _split(full, val_ratio, test_ratio, seed)
        parts.update(classes=list(full.classes), source=data)
        return parts
    root = Path(data)
    if not root.exists():
        raise FileNotFoundError(f"data folder {root} does not exist (give a folder with one sub-folder per class, "
                                f"or {EMBEDDED_PREFIX}mnist5k)")
    splits = D.find_splits(root)
    kw = dict(image_size=image_size, channels=channels, strict=strict, exclude=tuple(exclude), fit=fit,
              background_kinds=bool(background_kinds))
    if splits:
        train = D.ImageFolder(splits["train"], classes=classes, **kw)
        _verify(train, strict)
        cls = list(train.classes)
        val = D.ImageFolder(splits["val"], classes=cls, **kw) if "val" in splits else None
        test = D.ImageFolder(splits["test"], classes=cls, **kw) if "test" in splits else None
        for part in (val, test):
            if part is not None:
                _verify(part, strict)
        out = {"train": train, "val": val, "test": test}
        if val is None and val_ratio > 0:
            idx = _split_indices(train, (1 - val_ratio, val_ratio), seed, encounters)
            out["train"], out["val"] = D.Subset(train, idx[0]), D.Subset(train, idx[1])
        out.update(classes=cls, source=str(root))
        return out
    full = D.ImageFolder(root, classes=classes, **kw)
    _verify(full, strict)
    parts = _split(full, val_ratio, test_ratio, seed, encounters)
    parts.update(classes=list(full.classes), source=str(root))
    return parts


def _verify(folder, strict):
    folder.verify()
    if len(folder) == 0:
        raise ValueError(f"no readable images in {folder.root}")


def _split_indices(ds, ratios, seed, encounters="photo"):
    """Index arrays per part: stratified by class, and with a folder's encounters kept whole."""
    if encounters == "photo" or not hasattr(ds, "samples"):
        return D.stratified_split(_targets(ds), tuple(ratios), seed)
    from .encounters import split_photos
    paths = [p for p, _ in ds.samples]
    labels = [ds.classes[y] for _, y in ds.samples]
    class_dirs = {c: Path(ds.root, *c.split("/")) for c in ds.classes}
    return split_photos(paths, labels, ratios, seed, encounters, class_dirs)


def _split(full, val_ratio, test_ratio, seed, encounters="photo"):
    ratios = [1 - val_ratio - test_ratio]
    names = ["train"]
    for name, r in (("val", val_ratio), ("test", test_ratio)):
        if r > 0:
            ratios.append(r)
            names.append(name)
    if ratios[0] <= 0:
        raise ValueError(f"val_ratio + test_ratio must be below 1, got {val_ratio} + {test_ratio}")
    if len(ratios) == 1:
        return {"train": full, "val": None, "test": None}
    idx = _split_indices(full, ratios, seed, encounters)
    out = {"train": None, "val": None, "test": None}
    for name, ix in zip(names, idx):
        out[name] = D.Subset(full, ix)
    return out


def dataset_mean_std(ds, limit=2000, seed=0):
    """Per-channel mean and std over up to ``limit`` examples."""
    n = len(ds)
    idx = np.random.default_rng(seed).permutation(n)[:limit]
    xs = np.stack([ds[int(i)][0] for i in idx]).astype(np.float64)
    return xs.mean(axis=(0, 2, 3)).tolist(), (xs.std(axis=(0, 2, 3)) + 1e-8).tolist()


def normalization_spec(kind: str, train_ds=None, channels=3) -> dict:
    """The input scaling ``kind`` (one of ``NORMALIZATIONS``) as the run records it: ``{"kind": ...}``, with
    the per-channel ``mean`` and ``std`` for ``imagenet`` and ``dataset`` (measured on ``train_ds``).
    The old name of pixel256 is read as pixel256 (the settings warn about it: ``nabi.training.config``)."""
    kind = "pixel256" if kind in PIXEL256_KINDS else kind
    if kind in ("unit", "pixel256"):
        return {"kind": kind}
    if kind == "imagenet":
        if channels != 3:
            raise ValueError("normalize='imagenet' needs 3 channels")
        return {"kind": kind, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    if kind == "dataset":
        mean, std = dataset_mean_std(train_ds)
        return {"kind": kind, "mean": mean, "std": std}
    raise ValueError(f"normalize must be one of unit, pixel256, dataset, imagenet; got {kind!r}")


def eval_transforms(input_hw, norm_spec):
    return [_Pad(input_hw), normalization_transform(norm_spec)]


def folder_classes(data, exclude, background_kinds=False):
    """The sorted class names of a folder (of its ``train/`` part when it has one), without reading
    any image; ``background_kinds`` as in ``load_datasets``."""
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist (give a folder with one sub-folder per class, "
                                f"or {EMBEDDED_PREFIX}mnist5k)")
    splits = D.find_splits(root)
    base = Path(splits["train"]) if splits else root
    if background_kinds:
        return list(D.ImageFolder(base, exclude=tuple(exclude), background_kinds=True).classes)
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")
                     and p.name not in set(exclude))
    if not classes:
        raise ValueError(f"data folder {base} has no class sub-folders (expected {base}/<class>/<images>)")
    return classes


def eval_loader(parts_or_ds, meta, batch_size=64, device="cpu"):
    """A loader over a dataset with the run's evaluation transforms."""
    C, H, W = meta["input_size"]
    return D.DataLoader(Transformed(parts_or_ds, eval_transforms((H, W), meta["normalization"])),
                        batch_size=batch_size, device=device)
