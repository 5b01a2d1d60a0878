"""Readers for standard data sets whose files the user downloads themselves.

* MNIST / Fashion-MNIST: IDX files (``train-images-idx3-ubyte`` and friends, raw
  or ``.gz``), read by ``read_idx`` / ``load_mnist``.
* CIFAR-10 / CIFAR-100: the "python version" (pickled batches) or the "binary
  version" (``data_batch_1.bin`` ...), read by ``load_cifar10`` / ``load_cifar100``.

Pickles can run code when loaded, so CIFAR batches go through a restricted
unpickler that only builds dicts, lists, strings, bytes, numbers and plain
NumPy arrays; anything else (``os.system``, ``eval``, ...) is refused.

All loaders return ``(images, labels)``: float32 (N, C, H, W) in [0, 1]
(pixel/255) and int64 (N,).
"""
from __future__ import annotations

import codecs
import gzip
import io
import pickle
from pathlib import Path

import numpy as np

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]

# IDX type codes -> big-endian dtypes.
_IDX_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _read_bytes(path) -> bytes:
    """Whole file contents; ``.gz`` (or gzip magic) is decompressed. Clear errors naming the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, gzip.BadGzipFile) as exc:
            raise ValueError(f"{path} is a damaged or truncated gzip file: {exc}") from exc
    return raw


# -- IDX (MNIST) ---------------------------------------------------------------

def read_idx(path) -> np.ndarray:
    """Read an IDX file (raw or gzip) -> NumPy array with the file's shape and dtype.

    MNIST images come back uint8 (N, 28, 28), labels uint8 (N,). The magic
    number, type code, dimensions and data length are all checked.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path} is not an IDX file: only {len(data)} bytes")
    zero, code, ndim = data[:2], data[2], data[3]
    if zero != b"\x00\x00" or code not in _IDX_TYPES or not 1 <= ndim <= 8:
        raise ValueError(f"{path} is not an IDX file: bad magic number 0x{data[:4].hex()} "
                         "(expected 0x0000 then a type code 08/09/0b/0c/0d/0e and a dimension count, "
                         "e.g. 0x00000803 for MNIST images)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path} is truncated: header needs {header} bytes, file has {len(data)}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_TYPES[code]
    need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    have = len(data) - header
    if have < need:
        raise ValueError(f"{path} is truncated: dimensions {dims} need {need} data bytes, file has {have}")
    if have > need:
        raise ValueError(f"{path} has {have - need} unexpected bytes after the data for dimensions {dims}")
    arr = np.frombuffer(data, dtype=dtype, count=need // dtype.itemsize, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_file(root: Path, names, what: str) -> Path:
    tried = []
    for folder in (root, root / "raw"):
        for name in names:
            for candidate in (name, name + ".gz"):
                p = folder / candidate
                tried.append(p.name)
                if p.is_file():
                    return p
    raise FileNotFoundError(f"{what} not found in {root} (or {root / 'raw'}); looked for "
                            f"{', '.join(dict.fromkeys(tried))}")


def _check_split(split, allowed=("train", "test")):
    if split not in allowed:
        raise ValueError(f"split must be one of {allowed}, got {split!r}")
    return split


def load_mnist(root, split: str = "train"):
    """MNIST or Fashion-MNIST from IDX files in ``root`` (or ``root/raw``).

    Looks for ``train-images-idx3-ubyte[.gz]`` / ``train-labels-idx1-ubyte[.gz]``
    (``t10k-...`` for ``split='test'``; the ``train-images.idx3-ubyte`` spelling
    works too). Returns images float32 (N, 1, 28, 28) in [0, 1], labels int64 (N,).
    """
    root = Path(root)
    _check_split(split)
    if not root.is_dir():
        raise FileNotFoundError(f"MNIST folder not found: {root}")
    img_name, lab_name = _MNIST_FILES[split]
    alt = lambda n: n.replace("-idx", ".idx")  # noqa: E731 - Kaggle spelling
    img_path = _find_file(root, (img_name, alt(img_name)), f"MNIST {split} images")
    lab_path = _find_file(root, (lab_name, alt(lab_name)), f"MNIST {split} labels")
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{img_path}: expected uint8 images shaped (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{lab_path}: expected labels shaped (N,), got {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{img_path} has {len(images)} images but {lab_path} has {len(labels)} labels")
    x = images[:, None].astype(np.float32) * np.float32(1 / 255)
    return x, labels.astype(np.int64)


load_fashion_mnist = load_mnist


# -- restricted unpickling -------------------------------------------------------

def _safe_codecs_encode(text, encoding="utf-8", errors="strict"):
    # Python 3 writes bytes as _codecs.encode(str, 'latin1') under pickle protocols 0-2.
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError("pickle uses _codecs.encode for something other than latin-1 bytes")
    return text.encode("latin-1")


def _safe_bytes(*args):
    if args:
        raise pickle.UnpicklingError("pickle calls bytes() with arguments; only empty bytes are allowed")
    return b""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that builds only plain data and plain NumPy arrays.

    Allowed globals: ``numpy.ndarray``, ``numpy.dtype`` and
    ``numpy[._]core.multiarray._reconstruct``, plus latin-1 ``_codecs.encode``
    and empty ``bytes()`` (how Python 3 writes bytes under protocol 2).
    Everything else raises ``pickle.UnpicklingError``.
    """

    def find_class(self, module, name):
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # NumPy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        if module == "_codecs" and name == "encode":
            return _safe_codecs_encode
        if module in ("builtins", "__builtin__") and name == "bytes":
            return _safe_bytes
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name} from a pickle: only plain data and NumPy arrays "
            "are allowed (is this really a CIFAR batch file?)")


def safe_unpickle(path):
    """Load a pickle file with ``RestrictedUnpickler`` (bytes keys kept as bytes)."""
    path = Path(path)
    data = _read_bytes(path)
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise ValueError(f"refusing to load {path}: {exc}") from exc
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise ValueError(f"{path} is not a readable pickle (truncated or damaged?): "
                         f"{type(exc).__name__}: {exc}") from exc


# -- CIFAR ---------------------------------------------------------------------

def _key(d: dict, name: str):
    for k in (name.encode(), name):
        if k in d:
            return d[k]
    return None


def read_cifar_pickle(path, label_key: str = "labels"):
    """One CIFAR python batch -> (uint8 images (N, 3, 32, 32), int64 labels (N,)).

    ``label_key`` is ``'labels'`` (CIFAR-10), ``'fine_labels'`` or ``'coarse_labels'`` (CIFAR-100).
    """
    path = Path(path)
    d = safe_unpickle(path)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a CIFAR batch (a dict with b'data'), got {type(d).__name__}")
    data, labels = _key(d, "data"), _key(d, label_key)
    if data is None or labels is None:
        keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in d)
        raise ValueError(f"{path}: CIFAR batch needs keys 'data' and {label_key!r}, has {keys}")
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: expected 'data' shaped (N, 3072), got {data.shape}")
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(data):
        raise ValueError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data.astype(np.uint8).reshape(-1, 3, 32, 32), labels


def read_cifar_bin(path, label_bytes: int = 1, label_index: int = 0):
    """One CIFAR binary batch -> (uint8 images (N, 3, 32, 32), int64 labels (N,)).

    Each record is ``label_bytes`` label bytes (1 for CIFAR-10; 2 for CIFAR-100:
    coarse then fine) and 3072 pixel bytes. ``label_index`` picks the label byte.
    """
    path = Path(path)
    raw = _read_bytes(path)
    rec = label_bytes + 3072
    if len(raw) == 0 or len(raw) % rec:
        raise ValueError(f"{path} is truncated or not a CIFAR binary batch: {len(raw)} bytes is not a "
                         f"positive multiple of the {rec}-byte record ({label_bytes} label byte(s) + 3072)")
    arr = np.frombuffer(raw, dtype=np.uint8).reshape(-1, rec)
    return arr[:, label_bytes:].reshape(-1, 3, 32, 32).copy(), arr[:, label_index].astype(np.int64)


def _cifar_dir(root: Path, names) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return root


def _finish(parts, what):
    x = np.concatenate([p[0] for p in parts]).astype(np.float32) * np.float32(1 / 255)
    y = np.concatenate([p[1] for p in parts])
    return x, y


def load_cifar10(root, split: str = "train"):
    """CIFAR-10 from the python version (``data_batch_1`` ... ``test_batch``) or the
    binary version (``data_batch_1.bin`` ... ``test_batch.bin``).

    ``root`` is the batches folder or its parent (``cifar-10-batches-py`` /
    ``cifar-10-batches-bin`` inside it). Returns images float32 (N, 3, 32, 32)
    in [0, 1], labels int64 (N,). Class names: ``CIFAR10_CLASSES``.
    """
    root = Path(root)
    _check_split(split)
    if not root.is_dir():
        raise FileNotFoundError(f"CIFAR-10 folder not found: {root}")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    for folder in (_cifar_dir(root, ["cifar-10-batches-py"]), _cifar_dir(root, ["cifar-10-batches-bin"])):
        if all((folder / n).is_file() for n in names):
            return _finish([read_cifar_pickle(folder / n, "labels") for n in names], "CIFAR-10")
        if all((folder / (n + ".bin")).is_file() for n in names):
            return _finish([read_cifar_bin(folder / (n + ".bin"), 1, 0) for n in names], "CIFAR-10")
    raise FileNotFoundError(f"CIFAR-10 {split} batches not found in {root}: expected {', '.join(names)} "
                            f"(python version) or {', '.join(n + '.bin' for n in names)} (binary version)")


def load_cifar100(root, split: str = "train", label: str = "fine"):
    """CIFAR-100 from the python version (``train`` / ``test`` pickles) or the binary
    version (``train.bin`` / ``test.bin``: coarse byte, fine byte, 3072 pixels).

    ``label`` is ``'fine'`` (100 classes) or ``'coarse'`` (20 super-classes).
    Returns images float32 (N, 3, 32, 32) in [0, 1], labels int64 (N,).
    """
    root = Path(root)
    _check_split(split)
    if label not in ("fine", "coarse"):
        raise ValueError(f"label must be 'fine' or 'coarse', got {label!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"CIFAR-100 folder not found: {root}")
    for folder in (_cifar_dir(root, ["cifar-100-python"]), _cifar_dir(root, ["cifar-100-binary"])):
        if (folder / split).is_file():
            return _finish([read_cifar_pickle(folder / split, f"{label}_labels")], "CIFAR-100")
        if (folder / f"{split}.bin").is_file():
            return _finish([read_cifar_bin(folder / f"{split}.bin", 2, 1 if label == "fine" else 0)],
                           "CIFAR-100")
    raise FileNotFoundError(f"CIFAR-100 {split} file not found in {root}: expected {split!r} "
                            f"(python version) or '{split}.bin' (binary version)")


def cifar_class_names(root, dataset: str = "cifar10", label: str = "fine") -> list[str]:
    """Class names from the CIFAR meta file (``batches.meta`` / ``meta`` or their ``.txt`` versions)."""
    root = Path(root)
    if dataset == "cifar10":
        folders = [_cifar_dir(root, ["cifar-10-batches-py"]), _cifar_dir(root, ["cifar-10-batches-bin"])]
        pickles, key, txts = ["batches.meta"], "label_names", ["batches.meta.txt"]
    elif dataset == "cifar100":
        folders = [_cifar_dir(root, ["cifar-100-python"]), _cifar_dir(root, ["cifar-100-binary"])]
        pickles, key, txts = ["meta"], f"{label}_label_names", [f"{label}_label_names.txt"]
    else:
        raise ValueError(f"dataset must be 'cifar10' or 'cifar100', got {dataset!r}")
    for folder in folders:
        for n in pickles:
            if (folder / n).is_file():
                names = _key(safe_unpickle(folder / n), key)
                if names is None:
                    raise ValueError(f"{folder / n} has no {key!r} entry")
                return [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in names]
        for n in txts:
            if (folder / n).is_file():
                return [s.strip() for s in (folder / n).read_text("utf-8").splitlines() if s.strip()]
    raise FileNotFoundError(f"no CIFAR meta file ({', '.join(pickles + txts)}) found in {root}")
