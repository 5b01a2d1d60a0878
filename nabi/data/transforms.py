"""Composable image transforms on float32 arrays shaped (C, H, W).

Every transform is a callable ``t(x, rng=None) -> x``. ``rng`` is a NumPy
``Generator``: the DataLoader hands each batch a generator derived from
(seed, epoch, batch number), so augmentation is reproducible from the seed. With
``rng=None`` a fresh generator is drawn from nabi's global one.

Value range: ``ImageFolder`` returns pixels in [0, 1] (pixel/255).
``Pixel256Scale()`` turns that into pixel/256 = x * 255/256 (the "RGB/256"
input scale of the 2019 campus-cat report); ``Scale(divisor)`` divides raw values.

``expand_offline`` writes an offline augmentation to disk, as the 2019 report
did: each photo becomes 8 variants (original, flip, crops, rotations).
"""
from __future__ import annotations

import math
import warnings
import zlib
from pathlib import Path

import numpy as np

from .. import backend
from .folder import ImageDecodeError, ImageFolder, IMG_EXTENSIONS, load_image, normalize_size, save_image


def _rng(rng):
    return rng if rng is not None else backend.new_rng(None)


def _check_chw(x, who):
    if not hasattr(x, "ndim") or x.ndim != 3:
        raise ValueError(f"{who} expects an image array shaped (C, H, W), got shape {getattr(x, 'shape', None)}")


def _pil_image_module():
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover
        raise ImportError("this transform needs Pillow: pip install pillow") from exc
    return Image


def resize_array(x: np.ndarray, size, resample: str = "bilinear") -> np.ndarray:
    """Resize (C, H, W) float32 to (C, h, w) with Pillow (per channel, mode 'F')."""
    Image = _pil_image_module()
    h, w = size
    if x.shape[1:] == (h, w):
        return np.asarray(x, dtype=np.float32)
    method = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "bicubic": Image.BICUBIC}[resample]
    out = np.empty((x.shape[0], h, w), dtype=np.float32)
    for c in range(x.shape[0]):
        ch = Image.fromarray(np.ascontiguousarray(x[c], dtype=np.float32))
        out[c] = np.asarray(ch.resize((w, h), method), dtype=np.float32)
    return out


def _crop(x, top, left, h, w):
    return np.ascontiguousarray(x[:, top:top + h, left:left + w])


class Compose:
    """Apply transforms in order: ``Compose([t1, t2])(x, rng)``."""

    def __init__(self, transforms):
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise ValueError(f"Compose needs callables t(x, rng), got {t!r}")

    def __call__(self, x, rng=None):
        rng = _rng(rng)
        for t in self.transforms:
            x = t(x, rng)
        return x

    def __repr__(self):
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


class Lambda:
    """Wrap a deterministic function ``fn(x)`` as a transform."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x, rng=None):
        return self.fn(x)


class RandomCrop:
    """Pad by ``padding`` (zeros, or ``fill``) on every side, then crop a random ``size`` (int or (h, w))."""

    def __init__(self, size, padding: int = 0, fill: float = 0.0):
        self.size = normalize_size(size, "size")
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding, self.fill = int(padding), float(fill)

    def __call__(self, x, rng=None):
        _check_chw(x, "RandomCrop")
        rng = _rng(rng)
        p = self.padding
        h, w = self.size
        H, W = x.shape[1] + 2 * p, x.shape[2] + 2 * p
        if H < h or W < w:
            raise ValueError(f"RandomCrop size {self.size} is larger than the (padded) image {(H, W)}")
        top, left = int(rng.integers(0, H - h + 1)) - p, int(rng.integers(0, W - w + 1)) - p
        if p == 0:
            return _crop(x, top, left, h, w)
        # Crop window in the unpadded image's coordinates; the rest is fill.
        out = np.full((x.shape[0], h, w), self.fill, dtype=np.float32)
        y0, y1 = max(top, 0), min(top + h, x.shape[1])
        x0, x1 = max(left, 0), min(left + w, x.shape[2])
        if y1 > y0 and x1 > x0:
            out[:, y0 - top:y1 - top, x0 - left:x1 - left] = x[:, y0:y1, x0:x1]
        return out

    def __repr__(self):
        return f"RandomCrop({self.size}, padding={self.padding})"


class CenterCrop:
    """Crop the central ``size`` (int or (h, w)); zero-pads first if the image is smaller."""

    def __init__(self, size):
        self.size = normalize_size(size, "size")

    def __call__(self, x, rng=None):
        _check_chw(x, "CenterCrop")
        h, w = self.size
        H, W = x.shape[1:]
        if H < h or W < w:
            ph, pw = max(0, h - H), max(0, w - W)
            x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
            H, W = x.shape[1:]
        return _crop(x, (H - h) // 2, (W - w) // 2, h, w)

    def __repr__(self):
        return f"CenterCrop({self.size})"


class Resize:
    """Resize: an int sets the shorter side (aspect kept); (h, w) sets the exact size."""

    def __init__(self, size, resample: str = "bilinear"):
        if resample not in ("bilinear", "nearest", "bicubic"):
            raise ValueError(f"resample must be 'bilinear', 'nearest' or 'bicubic', got {resample!r}")
        self.shorter = isinstance(size, (int, np.integer))
        self.size = normalize_size(size, "size")
        self.resample = resample

    def __call__(self, x, rng=None):
        _check_chw(x, "Resize")
        if self.shorter:
            s = self.size[0]
            H, W = x.shape[1:]
            size = (s, max(1, round(W * s / H))) if H <= W else (max(1, round(H * s / W)), s)
        else:
            size = self.size
        return resize_array(x, size, self.resample)

    def __repr__(self):
        return f"Resize({self.size[0] if self.shorter else self.size})"


class RandomResizedCrop:
    """Crop a random area fraction in ``scale`` with aspect ratio in ``ratio`` (log-uniform),
    then resize to ``size`` (int or (h, w)). Falls back to a center crop after 10 tries."""

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        self.size = normalize_size(size, "size")
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    def _box(self, H, W, rng):
        area = H * W
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            ar = math.exp(rng.uniform(*log_r))
            w = int(round(math.sqrt(target * ar)))
            h = int(round(math.sqrt(target / ar)))
            if 0 < w <= W and 0 < h <= H:
                return int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1)), h, w
        in_ratio = W / H
        if in_ratio < self.ratio[0]:
            w, h = W, int(round(W / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = H, int(round(H * self.ratio[1]))
        else:
            h, w = H, W
        return (H - h) // 2, (W - w) // 2, h, w

    def __call__(self, x, rng=None):
        _check_chw(x, "RandomResizedCrop")
        rng = _rng(rng)
        top, left, h, w = self._box(x.shape[1], x.shape[2], rng)
        return resize_array(_crop(x, top, left, h, w), self.size)

    def __repr__(self):
        return f"RandomResizedCrop({self.size}, scale={self.scale}, ratio={self.ratio})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def __call__(self, x, rng=None):
        _check_chw(x, "RandomHorizontalFlip")
        if _rng(rng).random() < self.p:
            return np.ascontiguousarray(x[:, :, ::-1])
        return x

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class RandomVerticalFlip:
    """Mirror top-bottom with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def __call__(self, x, rng=None):
        _check_chw(x, "RandomVerticalFlip")
        if _rng(rng).random() < self.p:
            return np.ascontiguousarray(x[:, ::-1, :])
        return x


def rotate_array(x: np.ndarray, angle: float, fill: float = 0.0) -> np.ndarray:
    """Rotate (C, H, W) counter-clockwise by ``angle`` degrees about the centre; same shape, bilinear."""
    Image = _pil_image_module()
    out = np.empty_like(x, dtype=np.float32)
    for c in range(x.shape[0]):
        ch = Image.fromarray(np.ascontiguousarray(x[c], dtype=np.float32))
        out[c] = np.asarray(ch.rotate(angle, resample=Image.BILINEAR, fillcolor=float(fill)), dtype=np.float32)
    return out


class RandomRotation:
    """Rotate by a uniform angle in [-degrees, degrees] (or the (min, max) given); corners filled with ``fill``."""

    def __init__(self, degrees, fill: float = 0.0):
        if isinstance(degrees, (int, float)):
            if degrees < 0:
                raise ValueError(f"degrees must be >= 0, got {degrees}")
            degrees = (-float(degrees), float(degrees))
        self.degrees = (float(degrees[0]), float(degrees[1]))
        self.fill = float(fill)

    def __call__(self, x, rng=None):
        _check_chw(x, "RandomRotation")
        angle = _rng(rng).uniform(*self.degrees)
        return rotate_array(x, angle, self.fill)

    def __repr__(self):
        return f"RandomRotation({self.degrees})"


class RandomRotate90:
    """Rotate by k * 90 degrees, k drawn from ``ks`` (non-square images swap H and W for odd k)."""

    def __init__(self, ks=(0, 1, 2, 3)):
        self.ks = tuple(int(k) for k in ks)

    def __call__(self, x, rng=None):
        _check_chw(x, "RandomRotate90")
        k = self.ks[int(_rng(rng).integers(0, len(self.ks)))]
        return np.ascontiguousarray(np.rot90(x, k, axes=(1, 2)))


def _gray(x):
    if x.shape[0] == 3:
        return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
    return x.mean(axis=0, keepdims=True)


class ColorJitter:
    """Random brightness, contrast and saturation factors in [1 - v, 1 + v]; result clipped to [0, 1]
    when ``clip`` (apply before ``Normalize``). Saturation only changes 3-channel images."""

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, clip: bool = True):
        for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        self.brightness, self.contrast, self.saturation = float(brightness), float(contrast), float(saturation)
        self.clip = clip

    @staticmethod
    def _factor(v, rng):
        return rng.uniform(max(0.0, 1 - v), 1 + v) if v > 0 else 1.0

    def __call__(self, x, rng=None):
        _check_chw(x, "ColorJitter")
        rng = _rng(rng)
        b, c, s = (self._factor(v, rng) for v in (self.brightness, self.contrast, self.saturation))
        x = np.asarray(x, dtype=np.float32) * np.float32(b)
        if c != 1.0:
            m = _gray(x).mean()
            x = (x - m) * np.float32(c) + np.float32(m)
        if s != 1.0 and x.shape[0] == 3:
            g = _gray(x)
            x = (x - g) * np.float32(s) + g
        if self.clip:
            x = np.clip(x, 0.0, 1.0)
        return x.astype(np.float32, copy=False)

    def __repr__(self):
        return f"ColorJitter({self.brightness}, {self.contrast}, {self.saturation})"


class Normalize:
    """Per-channel ``(x - mean) / std``; ``mean``/``std`` are scalars or length-C sequences."""

    def __init__(self, mean, std):
        self.mean = np.atleast_1d(np.asarray(mean, dtype=np.float32))
        self.std = np.atleast_1d(np.asarray(std, dtype=np.float32))
        if np.any(self.std <= 0):
            raise ValueError(f"std must be positive, got {self.std.tolist()}")

    def __call__(self, x, rng=None):
        _check_chw(x, "Normalize")
        C = x.shape[0]
        for name, v in (("mean", self.mean), ("std", self.std)):
            if v.size not in (1, C):
                raise ValueError(f"Normalize {name} has {v.size} values but the image has {C} channels")
        return ((x - self.mean.reshape(-1, 1, 1)) / self.std.reshape(-1, 1, 1)).astype(np.float32)

    def __repr__(self):
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class Scale:
    """Divide by ``divisor``: for raw 0..255 arrays, ``Scale(256.0)`` is the 2019 report's RGB/256."""

    def __init__(self, divisor: float = 256.0):
        if divisor == 0:
            raise ValueError("divisor must be non-zero")
        self.divisor = float(divisor)

    def __call__(self, x, rng=None):
        return (np.asarray(x, dtype=np.float32) / np.float32(self.divisor)).astype(np.float32)


class Pixel256Scale:
    """Map [0, 1] (pixel/255, as ``ImageFolder`` returns) to pixel/256 = x * 255/256."""

    def __call__(self, x, rng=None):
        return np.asarray(x, dtype=np.float32) * np.float32(255.0 / 256.0)

    def __repr__(self):
        return "Pixel256Scale()"


# -- offline expansion -----------------------------------------------------------

def _variant(x, k, rng):
    """Variant ``k`` of image x (C, H, W): 0 original, 1 flip, 2 crop, 3 crop+flip, 4/5 rotation
    (+flip), 6/7 crop+rotation (+flip); k >= 8 repeats the random kinds 2..7."""
    if k >= 8:
        k = 2 + (k - 8) % 6
    H, W = x.shape[1:]
    if k in (2, 3, 6, 7):
        f = rng.uniform(0.8, 0.95)
        h, w = max(1, int(round(H * f))), max(1, int(round(W * f)))
        top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        x = resize_array(_crop(x, top, left, h, w), (H, W))
    if k in (4, 5, 6, 7):
        angle = rng.uniform(5.0, 15.0) * (1 if rng.random() < 0.5 else -1)
        x = rotate_array(x, angle)
    if k in (1, 3, 5, 7):
        x = x[:, :, ::-1]
    return np.clip(x, 0.0, 1.0)


def expand_offline(folder_in, folder_out, variants: int = 8, seed: int = 0, channels: int = 3,
                   image_size=None, strict: bool = False, extensions=IMG_EXTENSIONS, exclude=(),
                   fit: str = "crop", background_kinds: bool = False) -> list[Path]:
    """Write ``variants`` augmented copies of every image in a class-per-folder tree.

    Variant 0 is the original, 1 the mirror image, then random crops and small
    rotations (with and without mirroring). Output: ``folder_out/<class>/<name>_v<k>.png``
    (``name`` is the file's path inside its class folder, with the extension, made
    flat). Each file is written to a temp file and moved into place
    (``os.replace``). The same ``seed`` gives the same pixels; an image's
    variants depend only on the seed and its relative path. Unreadable files are
    skipped with a warning (or raise with ``strict=True``). ``background_kinds``: each
    ``background/<kind>/`` is a class of its own (``ImageFolder``'s option) and its copies go to
    ``folder_out/background/<kind>/``. Returns the written paths.
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if int(variants) < 1:
        raise ValueError(f"variants must be >= 1, got {variants}")
    src, dst = Path(folder_in).resolve(), Path(folder_out).resolve()
    if dst == src or src in dst.parents:
        raise ValueError(f"folder_out {folder_out} must not be folder_in or inside it "
                         "(its files would be read back as a class)")
    ds = ImageFolder(src, image_size=image_size, channels=channels, strict=strict,
                     extensions=extensions, exclude=exclude, fit=fit, background_kinds=background_kinds)
    written = []
    for path, label in ds.samples:
        try:
            x = load_image(path, channels, image_size, fit)
        except ImageDecodeError as exc:
            if strict:
                raise
            warnings.warn(f"expand_offline: skipping unreadable image: {exc}", stacklevel=2)
            continue
        rel = Path(*Path(path).relative_to(src).parts[1:])  # path inside its class folder
        flat = "__".join(rel.with_suffix("").parts) + "_" + rel.suffix.lstrip(".").lower()
        key = zlib.crc32(rel.as_posix().encode("utf-8")) & 0xFFFFFFFF
        out_dir = dst / ds.classes[label]
        for k in range(int(variants)):
            rng = np.random.default_rng([int(seed), label, key, k])
            out = save_image(_variant(x, k, rng), out_dir / f"{flat}_v{k}.png", "png")
            written.append(out)
    return written


__all__ = ["Compose", "Lambda", "RandomCrop", "CenterCrop", "Resize", "RandomResizedCrop",
           "RandomHorizontalFlip", "RandomVerticalFlip", "RandomRotation", "RandomRotate90",
           "ColorJitter", "Normalize", "Scale", "Pixel256Scale", "expand_offline", "resize_array",
           "rotate_array"]


def __getattr__(name):
    """``SeedScale``: the old name of :class:`Pixel256Scale` (warns)."""
    if name == "SeedScale":
        import warnings
        warnings.warn("SeedScale is now called Pixel256Scale", FutureWarning, stacklevel=2)
        return Pixel256Scale
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
