"""A photo's local features: keypoints and their descriptors, computed once per photo.

    grey photo, its longer side shrunk to ``max_side`` (never enlarged)
    SIFT keypoints (OpenCV's detector, Lowe 2004): the ``nfeatures`` strongest
    a 128-d unit descriptor at each keypoint:
        rootsift   SIFT's histogram d made d ← √(d / ‖d‖₁) (Arandjelović & Zisserman 2012: the Euclidean
                   distance of RootSIFT is the Hellinger kernel of SIFT; the rows have unit L2 length)
        learned    a patch network trained by ``nabi train-descriptor`` (``nabi.reid.descriptors``), given as
                   ``learned`` (the descriptor shipped with nabi) or ``learned:PATH`` (a descriptor file)

    foreground (optional)
                   ``grabcut``: only keypoints on the animal are kept — OpenCV's GrabCut (Rother et al. 2004),
                   started from the photo less a 2 % margin (photos of one animal are framed on it), at 160 px
                   on the longer side, one round of its colour-model refinement (more rounds let the habitat's
                   colours take the animal over: with four, a third of the nyala photos ended with nothing
                   kept, with one a tenth), its regions under a quarter of the largest dropped (specks of habitat),
                   the mask grown by 3 % of that side so outline keypoints stay; a mask
                   under 10 % of the photo (GrabCut lost the animal) keeps the whole photo. The default; ``none``:
                   the whole photo (and what a gallery written before the option holds). Keypoints on the
                   habitat then cannot vote for an individual seen there.

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
FOREGROUNDS = ("none", "grabcut")


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
    foreground: str = "grabcut"

    def __post_init__(self):
        for name, low in (("nfeatures", 1), ("max_side", 16)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise ValueError(f"local features: {name} must be an integer ≥ {low}, got {v!r}")
        kind = str(self.descriptor).split(":", 1)[0]
        if kind not in DESCRIPTORS:
            raise ValueError(f"local features: unknown descriptor {self.descriptor!r}; expected rootsift, learned or "
                             "learned:PATH (a file written by nabi train-descriptor)")
        if self.foreground not in FOREGROUNDS:
            raise ValueError(f"local features: unknown foreground {self.foreground!r}; expected none or grabcut")

    def descriptor_file(self):
        """The patch network's file of a learned descriptor (``learned``: the one shipped with nabi); None for
        RootSIFT."""
        if str(self.descriptor).split(":", 1)[0] != "learned":
            return None
        from .descriptors import default_path
        return Path(self.descriptor.split(":", 1)[1]) if ":" in self.descriptor else default_path()

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["foreground"] == "none":       # galleries and calibrations written before the option read the same
            del d["foreground"]
        return d

    @classmethod
    def from_dict(cls, d, where="the local-feature settings"):
        try:
            return cls(int(d["nfeatures"]), int(d["max_side"]), str(d["descriptor"]), str(d.get("foreground", "none")))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where} are not usable ({e}); expected nfeatures, max_side, descriptor and optionally "
                             "foreground") from None


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


def _open(item):
    """A photo path opened as a loaded Pillow image (EXIF orientation applied); anything else as it is."""
    if not isinstance(item, (str, Path)):
        return item
    from PIL import Image, ImageOps
    try:
        with Image.open(item) as im:
            img = ImageOps.exif_transpose(im)
            img.load()
            return img
    except Exception as e:
        raise ValueError(f"could not read photo {item} for local features: {type(e).__name__}: {e}") from None


def grey(item, max_side=512):
    """``(uint8 grey image with its longer side at most max_side, scale from it back to the original)`` of a
    photo path or an image array ((H, W), (H, W, 1|3) uint8, or (1|3, H, W) float in [0, 1])."""
    cv2 = _cv2()
    item = _open(item)
    if hasattr(item, "convert") and hasattr(item, "size"):       # a Pillow image (a photo file, opened)
        img = np.asarray(item.convert("L"))
    else:
        a = np.asarray(item)
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


def detect(img, nfeatures, mask=None):
    """SIFT keypoints (``cv2.KeyPoint``) of a uint8 grey image, the strongest ``nfeatures`` (within ``mask``, a
    uint8 image of img's size, nonzero where keypoints may lie, when given)."""
    cv2 = _cv2()
    return cv2.SIFT_create(nfeatures=int(nfeatures)).detect(img, mask)


GRABCUT_SIDE, GRABCUT_MARGIN, GRABCUT_GROW, GRABCUT_MIN_AREA, GRABCUT_ROUNDS, GRABCUT_KEEP = 160, 0.02, 0.03, 0.10, 1, 0.25


def _colour(item):
    """uint8 (H, W, 3) RGB of a photo path or image (as ``grey`` accepts), grey replicated when it has one
    channel."""
    item = _open(item)
    a = np.asarray(item.convert("RGB")) if hasattr(item, "convert") and hasattr(item, "size") else np.asarray(item)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).astype(np.uint8)
    if a.ndim == 2:
        a = a[..., None]
    return np.ascontiguousarray(np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a)


def foreground_mask(item, shape):
    """uint8 mask (255 on the animal) of a photo at ``shape`` (H, W) by GrabCut (see the module docstring), or
    None when GrabCut found too little to trust (the whole photo is used then)."""
    cv2 = _cv2()
    rgb = _colour(item)
    h, w = rgb.shape[:2]
    s = min(1.0, GRABCUT_SIDE / max(h, w))
    small = cv2.resize(rgb, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_AREA)
    sh, sw = small.shape[:2]
    mx, my = max(1, int(GRABCUT_MARGIN * sw)), max(1, int(GRABCUT_MARGIN * sh))
    labels = np.zeros((sh, sw), np.uint8)
    cv2.setRNGSeed(0)                           # GrabCut's colour models start from k-means: the same mask every time
    cv2.grabCut(np.ascontiguousarray(small[..., ::-1]), labels, (mx, my, sw - 2 * mx, sh - 2 * my),
                np.zeros((1, 65)), np.zeros((1, 65)), GRABCUT_ROUNDS, cv2.GC_INIT_WITH_RECT)
    fg = ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).astype(np.uint8)
    n, parts, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n > 2:                                   # the animal is the largest region; specks of habitat are dropped
        areas = stats[1:, cv2.CC_STAT_AREA]
        fg = np.isin(parts, 1 + np.flatnonzero(areas >= GRABCUT_KEEP * areas.max())).astype(np.uint8)
    fg *= 255
    if fg.mean() < 255 * GRABCUT_MIN_AREA:
        return None
    grow = max(1, round(GRABCUT_GROW * max(sh, sw)))
    fg = cv2.dilate(fg, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8))
    return cv2.resize(fg, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)


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
        from .descriptors import PatchDescriptor
        _LEARNED[descriptor] = PatchDescriptor.load(LocalSettings(descriptor=descriptor).descriptor_file())
    return _LEARNED[descriptor]


def extract(item, settings: LocalSettings = LocalSettings()) -> Features:
    """The ``Features`` of one photo (path or image array) under ``settings``; no keypoint: empty features."""
    item = _open(item)                          # a photo file is read once, for the grey image and GrabCut
    img, scale = grey(item, settings.max_side)
    mask = foreground_mask(item, img.shape[:2]) if settings.foreground == "grabcut" else None
    kps = detect(img, settings.nfeatures, mask)
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
