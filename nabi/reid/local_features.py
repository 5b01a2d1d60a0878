"""A photo's local features: keypoints and their descriptors, computed once per photo.

    grey photo, its longer side shrunk to ``max_side`` (never enlarged)
    SIFT keypoints (OpenCV's detector, Lowe 2004): the ``nfeatures`` strongest
    a 128-d unit descriptor at each keypoint:
        rootsift   SIFT's histogram d made d ← √(d / ‖d‖₁) (Arandjelović & Zisserman 2012: the Euclidean
                   distance of RootSIFT is the Hellinger kernel of SIFT; the rows have unit L2 length)
        learned    a patch network trained by ``nabi train-descriptor`` (``nabi.reid.descriptors``), given as
                   ``learned`` (the descriptor shipped with nabi) or ``learned:PATH`` (a descriptor file)

``LocalSettings`` names the choice; a gallery stores it with the features, so features of different
settings are never compared. ``Features`` holds one photo's points (n, 2) — (x, y) in the pixels of
the *original* photo, so they do not depend on ``max_side`` — and descriptors (n, 128) float32.
Needs ``opencv-python-headless`` (``pip install "nabi[reid]"``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

DESCRIPTORS = ("rootsift", "learned")


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ImportError('local-feature matching needs OpenCV: pip install "nabi[reid]"') from None
    return cv2


@dataclass(frozen=True)
class LocalSettings:
    """How local features are computed (see the module docstring)."""
    nfeatures: int = 2000
    max_side: int = 512
    descriptor: str = "rootsift"

    def __post_init__(self):
        for name, low in (("nfeatures", 1), ("max_side", 16)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise ValueError(f"local features: {name} must be an integer ≥ {low}, got {v!r}")
        kind = str(self.descriptor).split(":", 1)[0]
        if kind not in DESCRIPTORS:
            raise ValueError(f"local features: unknown descriptor {self.descriptor!r}; expected rootsift, learned or "
                             "learned:PATH (a file written by nabi train-descriptor)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d, where="the local-feature settings"):
        try:
            return cls(int(d["nfeatures"]), int(d["max_side"]), str(d["descriptor"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where} are not usable ({e}); expected nfeatures, max_side and descriptor") from None


@dataclass
class Features:
    """One photo's keypoints (points (n, 2) float32, original pixels) and unit descriptors (n, D) float32."""
    points: np.ndarray
    descriptors: np.ndarray

    def __len__(self):
        return len(self.points)

    @classmethod
    def empty(cls, dim=128):
        return cls(np.zeros((0, 2), np.float32), np.zeros((0, dim), np.float32))


def grey(item, max_side=512):
    """``(uint8 grey image with its longer side at most max_side, scale from it back to the original)`` of a
    photo path or an image array ((H, W), (H, W, 1|3) uint8, or (1|3, H, W) float in [0, 1])."""
    cv2 = _cv2()
    if isinstance(item, (str, Path)):
        from PIL import Image, ImageOps
        try:
            with Image.open(item) as im:
                img = np.asarray(ImageOps.exif_transpose(im).convert("L"))
        except Exception as e:
            raise ValueError(f"could not read photo {item} for local features: {type(e).__name__}: {e}") from None
    else:
        a = np.asarray(item)
        if hasattr(item, "convert") and hasattr(item, "size"):       # a Pillow image
            a = np.asarray(item.convert("L"))
        if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
            a = a.transpose(1, 2, 0)
        if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (1, 3)) or a.size == 0:
            raise ValueError(f"a photo for local features must be (H, W), (H, W, 1|3) or (1|3, H, W), got shape "
                             f"{a.shape}")
        if a.dtype != np.uint8:
            a = (np.clip(a, 0, 1) * 255).astype(np.uint8)
        if a.ndim == 3:
            a = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY) if a.shape[-1] == 3 else a[..., 0]
        img = a
    h, w = img.shape[:2]
    scale = 1.0
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        scale = 1.0 / s
    return np.ascontiguousarray(img), scale


def detect(img, nfeatures):
    """SIFT keypoints (``cv2.KeyPoint``) of a uint8 grey image, the strongest ``nfeatures``."""
    cv2 = _cv2()
    return cv2.SIFT_create(nfeatures=int(nfeatures)).detect(img, None)


def rootsift(img, keypoints):
    """RootSIFT descriptors (n, 128) float32 (unit rows) at ``keypoints``, and the keypoints kept."""
    cv2 = _cv2()
    if not keypoints:
        return [], np.zeros((0, 128), np.float32)
    kps, desc = cv2.SIFT_create().compute(img, keypoints)
    if desc is None or not len(kps):
        return [], np.zeros((0, 128), np.float32)
    desc = desc.astype(np.float32)
    desc /= np.maximum(desc.sum(axis=1, keepdims=True), 1e-7)
    return list(kps), np.sqrt(desc)


_LEARNED = {}


def _learned(descriptor):
    """The patch network named by ``learned`` or ``learned:PATH``, loaded once per process."""
    if descriptor not in _LEARNED:
        from .descriptors import PatchDescriptor, default_path
        path = descriptor.split(":", 1)[1] if ":" in descriptor else default_path()
        _LEARNED[descriptor] = PatchDescriptor.load(path)
    return _LEARNED[descriptor]


def extract(item, settings: LocalSettings = LocalSettings()) -> Features:
    """The ``Features`` of one photo (path or image array) under ``settings``; no keypoint: empty features."""
    img, scale = grey(item, settings.max_side)
    kps = detect(img, settings.nfeatures)
    if settings.descriptor == "rootsift":
        kps, desc = rootsift(img, kps)
    else:
        desc = _learned(settings.descriptor).describe(img, kps) if kps else np.zeros((0, 128), np.float32)
    if not len(kps):
        return Features.empty(desc.shape[1] if desc.ndim == 2 else 128)
    pts = np.array([k.pt for k in kps], np.float32) * np.float32(scale)
    return Features(pts, np.ascontiguousarray(desc, dtype=np.float32))


def pack(features) -> dict:
    """Many photos' ``Features`` as three arrays: points (K, 2) float32, descriptors (K, D) float16 and offsets
    (M + 1,) int64 (photo j's rows are offsets[j]:offsets[j+1])."""
    features = list(features)
    dim = next((f.descriptors.shape[1] for f in features if len(f)), 128)
    counts = np.array([len(f) for f in features], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    pts = np.concatenate([f.points for f in features]) if features else np.zeros((0, 2), np.float32)
    desc = np.concatenate([f.descriptors.reshape(-1, dim) for f in features]) if features else np.zeros((0, dim))
    return {"points": np.ascontiguousarray(pts, np.float32).reshape(-1, 2),
            "descriptors": np.ascontiguousarray(desc, np.float16).reshape(-1, dim), "offsets": offsets}


def unpack(arrays) -> list:
    """The inverse of ``pack`` (descriptors back to float32)."""
    pts, desc, off = arrays["points"], arrays["descriptors"], np.asarray(arrays["offsets"], np.int64)
    if off.ndim != 1 or off.size < 1 or off[0] != 0 or np.any(np.diff(off) < 0) or off[-1] != len(pts) \
            or len(pts) != len(desc):
        raise ValueError("local features: offsets, points and descriptors do not agree")
    d32 = np.asarray(desc, np.float32)
    return [Features(np.asarray(pts[a:b], np.float32), d32[a:b]) for a, b in zip(off[:-1], off[1:])]


def gray_image(item, max_side=512):
    """The uint8 grey image of a photo with its longer side at most ``max_side`` (``grey`` without the scale)."""
    return grey(item, max_side)[0]
