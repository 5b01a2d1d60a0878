"""Image folders: one sub-folder per class, decoded with Pillow.

Layout::

    root/
        cat/  a.jpg  b.png ...
        dog/  c.jpeg ...

Every example comes back as a float32 array shaped (C, H, W) with values in
[0, 1] (the 8-bit pixel value divided by 255), and an int64 label. Class names
are the folder names, sorted, so the label numbering is the same on every
machine; names are compared in Unicode NFC form, so a Korean folder such as
``뾰또`` written on macOS (NFD) and on Linux (NFC) is the same class.
"""
from __future__ import annotations

import io
import os
import unicodedata
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..files import atomic_write_bytes
from .background import BACKGROUND, expand_background_kinds

IMG_EXTENSIONS = (".bmp", ".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")

_SKIP_DIRS = {"__MACOSX", "@eaDir"}


class ImageDecodeError(ValueError):
    """An image file that Pillow could not decode (corrupt, truncated, not an image)."""


def _pil():
    try:
        from PIL import Image, ImageOps
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("reading images needs Pillow, a core dependency of nabi: pip install --force-reinstall nabi") from exc
    return Image, ImageOps


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def _check_channels(channels) -> int:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    return int(channels)


def normalize_size(image_size, name: str = "image_size"):
    """``None``, an int ``s`` or ``(h, w)`` -> ``None`` or a ``(h, w)`` tuple of positive ints."""
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        size = (int(image_size), int(image_size))
    else:
        try:
            size = tuple(int(s) for s in image_size)
        except TypeError:
            raise ValueError(f"{name} must be an int or a (height, width) pair, got {image_size!r}") from None
        if len(size) != 2:
            raise ValueError(f"{name} must be an int or a (height, width) pair, got {image_size!r}")
    if min(size) < 1:
        raise ValueError(f"{name} must be positive, got {image_size!r}")
    return size


def _to_mode(img, channels: int):
    """Convert any Pillow mode (L, LA, P, RGBA, CMYK, I;16, ...) to 'L' or 'RGB'. Alpha is dropped."""
    Image, _ = _pil()
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        # 16/32-bit integer or float pixels: rescale to 8 bits instead of clipping.
        arr = np.asarray(img, dtype=np.float64)
        peak = float(arr.max()) if arr.size else 0.0
        if mode.startswith("I;16") or (mode == "I" and peak > 255):
            top = 65535.0
        elif mode == "F" and peak <= 1.0:
            top = 1.0
        else:
            top = 255.0 if peak <= 255 else peak
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
        mode = img.mode
    if mode == "P":
        img = img.convert("RGBA")  # honours palette transparency without a warning
    target = "L" if channels == 1 else "RGB"
    if img.mode != target:
        img = img.convert(target)
    return img


def resize_center_crop(img, size):
    """Resize a Pillow image so it covers ``size`` = (h, w) (shorter side first), then center-crop."""
    Image, _ = _pil()
    th, tw = size
    w, h = img.size
    scale = max(th / h, tw / w)
    nw, nh = max(tw, round(w * scale)), max(th, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - tw) // 2, (nh - th) // 2
    if (nw, nh) != (tw, th):
        img = img.crop((left, top, left + tw, top + th))
    return img


def resize_squash(img, size):
    """Resize a Pillow image to exactly ``size`` = (h, w), the whole photo kept, its aspect ratio not
    (torchvision's ``Resize((h, w))``)."""
    Image, _ = _pil()
    th, tw = size
    return img if img.size == (tw, th) else img.resize((tw, th), Image.BILINEAR)


def resize_pad(img, size):
    """Resize a Pillow image so it fits inside ``size`` = (h, w) (longer side first, aspect kept), then
    pad it, centred, with black to exactly that size (letter-boxing)."""
    Image, _ = _pil()
    th, tw = size
    w, h = img.size
    scale = min(th / h, tw / w)
    nw, nh = min(tw, max(1, round(w * scale))), min(th, max(1, round(h * scale)))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BILINEAR)
    if (nw, nh) == (tw, th):
        return img
    canvas = Image.new(img.mode, (tw, th), 0)
    canvas.paste(img, ((tw - nw) // 2, (th - nh) // 2))
    return canvas


# How a photo is brought to the square (or (h, w)) input size when it is read:
#   crop    resize the shorter side to the size, cut the centre out (the sides of a wide photo are lost)
#   squash  resize the whole photo to the size (aspect ratio distorted, nothing lost)
#   pad     resize the longer side to the size, pad the rest with black (aspect kept, nothing lost)
FITS = {"crop": resize_center_crop, "squash": resize_squash, "pad": resize_pad}


def check_fit(fit, name: str = "fit") -> str:
    """``fit`` if it is one of ``FITS``, else a ValueError naming ``name`` and the choices."""
    if not isinstance(fit, str) or fit not in FITS:
        raise ValueError(f"{name} must be one of {', '.join(FITS)}; got {fit!r}")
    return fit


def fit_image(img, size, fit: str = "crop"):
    """A Pillow image brought to ``size`` = (h, w) the way ``fit`` says (see ``FITS``)."""
    return FITS[check_fit(fit)](img, size)


def open_image(path, channels: int = 3, image_size=None, fit: str = "crop"):
    """Decode ``path`` to a Pillow image in mode 'RGB' (channels=3) or 'L' (channels=1).

    EXIF orientation is applied; ``image_size`` (int or (h, w)) brings the photo to
    exactly that size as ``fit`` says: ``crop`` resizes the shorter side and
    center-crops, ``squash`` resizes the whole photo (aspect ratio not kept),
    ``pad`` resizes the longer side and pads with black. Raises ``ImageDecodeError``
    naming the file when Pillow cannot read it, ``FileNotFoundError`` when it is missing.
    """
    Image, ImageOps = _pil()
    channels = _check_channels(channels)
    size = normalize_size(image_size)
    check_fit(fit)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            img = _to_mode(img, channels)
            if size is not None:
                img = FITS[fit](img, size)
            img.load()
    except Exception as exc:  # Pillow raises many kinds: OSError, SyntaxError, ValueError, ...
        raise ImageDecodeError(f"could not decode image file {path}: {type(exc).__name__}: {exc}") from exc
    return img


def pil_to_array(img) -> np.ndarray:
    """Pillow 'L' or 'RGB' image -> float32 (C, H, W) in [0, 1]."""
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr, dtype=np.float32) * np.float32(1.0 / 255.0)


def load_image(path, channels: int = 3, image_size=None, fit: str = "crop") -> np.ndarray:
    """Read one image file -> float32 array (C, H, W), values in [0, 1] (pixel/255).

    ``channels`` is 3 (RGB) or 1 (grayscale); ``image_size`` (int or (h, w)) brings
    the photo to that size as ``fit`` says (``crop``, ``squash`` or ``pad``, see
    ``open_image``); ``None`` keeps the file's size.
    """
    return pil_to_array(open_image(path, channels, image_size, fit))


def array_to_pil(x):
    """float (C, H, W) in [0, 1] (or uint8 (C, H, W)) with C in {1, 3} -> Pillow image."""
    Image, _ = _pil()
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"expected an image array shaped (C, H, W) with C = 1 or 3, got shape {x.shape}")
    if x.dtype != np.uint8:
        x = np.clip(np.rint(np.asarray(x, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    x = np.ascontiguousarray(x.transpose(1, 2, 0))
    return Image.fromarray(x[:, :, 0] if x.shape[2] == 1 else x)


def save_image(x, path, fmt: str | None = None) -> Path:
    """Write an image array (C, H, W) in [0, 1] to ``path`` atomically (temp file, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = array_to_pil(x)
    fmt = (fmt or path.suffix.lstrip(".") or "png").upper()
    fmt = {"JPG": "JPEG", "TIF": "TIFF"}.get(fmt, fmt)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _norm_extensions(extensions):
    exts = []
    for e in extensions:
        e = str(e).lower()
        exts.append(e if e.startswith(".") else "." + e)
    return tuple(exts)


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in _SKIP_DIRS


def _list_images(folder: Path, extensions) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted, hidden files and other extensions ignored)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for f in sorted(filenames):
            if not _is_hidden(f) and os.path.splitext(f)[1].lower() in extensions:
                found.append(Path(dirpath) / f)
    found.sort(key=lambda p: _nfc(str(p.relative_to(folder))))
    return found


class ImageFolder:
    """A class-per-folder image dataset.

    ``ds[i]`` -> ``(x, y)``: ``x`` float32 (C, H, W) with values in [0, 1]
    (pixel/255, before ``transform``), ``y`` an int label. ``transform`` is a
    callable ``t(x, rng)`` (see ``nabi.data.transforms``); ``ds.get(i, rng)``
    passes a generator for reproducible augmentation.

    Arguments: ``image_size`` int or (h, w) brings each photo to exactly that
    size as ``fit`` says (``crop``: resize the shorter side and center-crop;
    ``squash``: resize the whole photo; ``pad``: resize the longer side and pad;
    ``None`` keeps each file's size; a batch of mixed sizes then fails in the
    collate step); ``channels`` 3 (RGB) or 1
    (grayscale); ``classes`` fixes the class list and its order (e.g. the
    training classes when reading a test folder; a folder not in it is an
    error); ``exclude`` drops class folders by name (e.g. ``'background'``);
    ``strict`` makes ``verify()`` raise on the first bad file instead of
    dropping it with a warning. ``background_kinds`` gives each sub-folder
    ``<kind>/`` of the ``background`` folder (its name: ``background``) a class
    ``background/<kind>`` of its own (photos directly in it stay ``background``;
    see ``nabi.data.background``); ``exclude`` may then also name such a class. Files are found recursively by extension
    (case-insensitive); hidden files are ignored. Images are decoded lazily;
    call ``verify()`` once to find corrupt files up front.
    """

    def __init__(self, root, transform=None, image_size=None, channels=3, classes=None, strict=False,
                 extensions=IMG_EXTENSIONS, exclude=(), fit="crop", background_kinds=False,
                 background=BACKGROUND):
        self.root = Path(root)
        self.transform = transform
        self.image_size = normalize_size(image_size)
        self.fit = check_fit(fit)
        self.channels = _check_channels(channels)
        self.strict = bool(strict)
        self.extensions = _norm_extensions(extensions)
        if isinstance(exclude, str):
            exclude = (exclude,)
        self.exclude = tuple(_nfc(str(e)) for e in exclude)
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable t(x, rng), got {transform!r}")

        if not self.root.exists():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        if not self.root.is_dir():
            raise NotADirectoryError(f"image folder {self.root} is not a directory")

        folders = {}
        for entry in sorted(os.scandir(self.root), key=lambda e: _nfc(e.name)):
            if not entry.is_dir() or _is_hidden(entry.name):
                continue
            name = _nfc(entry.name)
            if name in self.exclude:
                continue
            if name in folders:
                raise ValueError(f"class folders {folders[name]} and {entry.path} have the same name "
                                 "after Unicode normalisation")
            folders[name] = Path(entry.path)
        if not folders:
            loose = _list_images(self.root, self.extensions)[:1]
            hint = (f" (found image files directly in it, e.g. {loose[0].name}: put them in one "
                    "sub-folder per class)") if loose else ""
            raise ValueError(f"image folder {self.root} has no class sub-folders; expected one "
                             f"sub-folder per class{hint}")

        files_by_class = {}
        for name, folder in folders.items():
            files = _list_images(folder, self.extensions)
            if not files:
                raise ValueError(f"class folder {folder} has no image files with extensions "
                                 f"{', '.join(self.extensions)}")
            files_by_class[name] = files
        self.background_kinds = bool(background_kinds)
        kind_names = [e for e in self.exclude if "/" in e]
        if kind_names and not self.background_kinds:
            raise ValueError(f"exclude names background kind(s) {kind_names}, but this folder is read with the "
                             "background as one class; leave out the whole background folder by its name, or read "
                             "the kinds as classes (nabi train --background-kinds split)")
        if self.background_kinds:
            bg = _nfc(str(background))
            if bg in folders:
                files_by_class = expand_background_kinds(files_by_class, folders[bg], bg, _is_hidden)
            files_by_class = {n: f for n, f in files_by_class.items() if n not in self.exclude}

        if classes is None:
            class_list = sorted(files_by_class)
        else:
            if isinstance(classes, str):
                raise ValueError("classes must be a list of class names, not one string")
            class_list = [_nfc(str(c)) for c in classes]
            dup = sorted({c for c in class_list if class_list.count(c) > 1})
            if dup:
                raise ValueError(f"classes has duplicate names: {dup}")
            unknown = [n for n in files_by_class if n not in class_list]
            if unknown:
                raise ValueError(f"image folder {self.root} has class folder(s) {unknown} that are not in "
                                 f"the given classes {class_list}; pass exclude={unknown!r} to skip them")
        self.classes = class_list
        self.class_to_idx = {c: i for i, c in enumerate(class_list)}

        samples = []
        for name, files in files_by_class.items():
            label = self.class_to_idx[name]
            samples.extend((str(p), label) for p in files)
        samples.sort(key=lambda s: (s[1], _nfc(s[0])))
        self.samples = samples

    # -- dataset protocol -------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> np.ndarray:
        """Labels of all samples, int64 (N,)."""
        return np.array([s[1] for s in self.samples], dtype=np.int64)

    def load(self, i) -> np.ndarray:
        """Decode sample ``i`` without the transform -> float32 (C, H, W) in [0, 1]."""
        path, _ = self.samples[i]
        return load_image(path, self.channels, self.image_size, self.fit)

    def get(self, i, rng=None):
        """``(x, y)`` for sample ``i``, with ``transform(x, rng)`` applied."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for ImageFolder of {len(self)} images")
        x = self.load(i)
        if self.transform is not None:
            x = self.transform(x, rng)
        return x, self.samples[i][1]

    def __getitem__(self, i):
        return self.get(int(i))

    # -- checks ---------------------------------------------------------------
    def verify(self, num_workers: int = 0) -> list[str]:
        """Decode every file once. Bad files are dropped with a warning naming each
        (``strict=False``) or raise ``ImageDecodeError`` (``strict=True``).
        Returns the list of dropped paths."""
        def check(sample):
            try:
                open_image(sample[0], self.channels, None)
                return None
            except (ImageDecodeError, OSError) as exc:
                return exc

        if num_workers and num_workers > 0:
            with ThreadPoolExecutor(num_workers) as pool:
                results = list(pool.map(check, self.samples))
        else:
            results = [check(s) for s in self.samples]
        bad, kept = [], []
        for sample, err in zip(self.samples, results):
            if err is None:
                kept.append(sample)
                continue
            if self.strict:
                raise err
            warnings.warn(f"skipping unreadable image: {err}", stacklevel=2)
            bad.append(sample[0])
        if bad:
            warnings.warn(f"skipped {len(bad)} of {len(bad) + len(kept)} images in {self.root}: "
                          + ", ".join(os.path.basename(b) for b in bad[:5]) + (" …" if len(bad) > 5 else ""),
                          stacklevel=2)
            self.samples = kept
            emptied = sorted(set(self.classes) - {self.classes[s[1]] for s in kept})
            if not kept:
                raise ValueError(f"image folder {self.root} has no readable images left after verify()")
            if emptied:
                warnings.warn(f"class(es) {emptied} in {self.root} have no readable images left", stacklevel=2)
        return bad

    def __repr__(self) -> str:
        return (f"ImageFolder(root={str(self.root)!r}, images={len(self)}, classes={len(self.classes)}, "
                f"image_size={self.image_size}, fit={self.fit!r}, channels={self.channels})")
