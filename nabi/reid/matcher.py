"""Local-feature matching: RootSIFT keypoints, Lowe's ratio test, RANSAC, and a score per individual.

Coat patterns (stripes, spots) are individual; two photos of the same animal share many keypoints
that agree on one geometric transform, photos of different animals few. For photos a and b:

    keypoints and SIFT descriptors (OpenCV), each descriptor made RootSIFT: d ← √(d / ‖d‖₁)
    (Arandjelović & Zisserman 2012: Euclidean distance of RootSIFT is the Hellinger kernel of SIFT)
    for each descriptor of a its two nearest in b; kept when d₁ < ratio · d₂ (Lowe 2004)
    a homography fitted to the kept pairs by RANSAC (reprojection error ≤ 5 px); n(a, b) is the
    number of inlier pairs (0 with fewer than 4 kept pairs)

RANSAC fits a homography to any four pairs, so photos of two different animals still agree on 4 to
about 7 inliers by chance; only the inliers beyond that count as evidence. The matcher's score of a
query q for an enrolled individual with photos g₁ … g_m is

    evidence(q) = log(1 + Σ_{k largest} max(0, n(q, g_j) − 7))

over the ``top`` (default 2) photos with the most inliers: a full ranking of every enrolled individual
by local features alone, with no training. ``nabi.reid.fusion`` puts it on the scale of the embedding's
cosine similarity. Needs ``opencv-python-headless``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

CHANCE_INLIERS = 7          # inliers a RANSAC homography finds between unrelated photos (4 by construction)


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ImportError('the local-feature matcher needs OpenCV: pip install "nabi[reid]"') from None
    return cv2


def _gray(item, max_side=512):
    """uint8 grey image from a path or an array (H, W, C) uint8 / (C, H, W) float in [0, 1], its longer side
    shrunk to ``max_side`` (never enlarged)."""
    cv2 = _cv2()
    if isinstance(item, (str, Path)):
        img = cv2.imread(str(item), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise ValueError(f"could not decode image file {item} for local-feature matching")
    else:
        a = np.asarray(item)
        if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
            a = a.transpose(1, 2, 0)
        if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (1, 3)) or a.size == 0:
            raise ValueError(f"a photo for local-feature matching must be (H, W), (H, W, 1|3) or (1|3, H, W), "
                             f"got shape {a.shape}")
        if a.dtype != np.uint8:
            a = (np.clip(a, 0, 1) * 255).astype(np.uint8)
        if a.ndim == 3:
            a = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY) if a.shape[-1] == 3 else a[..., 0]
        img = a
    h, w = img.shape[:2]
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img)


def rootsift(item, nfeatures=2000, max_side=512):
    """``(points (n, 2) float32, descriptors (n, 128) float32)`` of a photo; RootSIFT descriptors."""
    cv2 = _cv2()
    sift = cv2.SIFT_create(nfeatures=nfeatures)
    kps, desc = sift.detectAndCompute(_gray(item, max_side), None)
    if desc is None or len(kps) == 0:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32)
    desc = desc.astype(np.float32)
    desc /= np.maximum(desc.sum(axis=1, keepdims=True), 1e-7)
    return np.array([k.pt for k in kps], np.float32), np.sqrt(desc)


def inliers(features_a, features_b, ratio=0.8, reprojection_px=5.0) -> int:
    """RANSAC inliers among the ratio-test matches of two ``rootsift`` results."""
    cv2 = _cv2()
    (pa, da), (pb, db) = features_a, features_b
    if len(da) < 2 or len(db) < 2:
        return 0
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(da, db, k=2)
    good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < ratio * n.distance]
    if len(good) < 4:
        return 0
    src = pa[[m.queryIdx for m in good]].reshape(-1, 1, 2)
    dst = pb[[m.trainIdx for m in good]].reshape(-1, 1, 2)
    cv2.setRNGSeed(0)                                   # the same photos give the same count
    _, mask = cv2.findHomography(src, dst, cv2.RANSAC, reprojection_px)
    return int(mask.sum()) if mask is not None else 0


def photo_evidence(n_inliers):
    """log(1 + max(0, n − 7)) of inlier counts (any shape; NaN, for a pair not matched, stays NaN)."""
    n = np.asarray(n_inliers, dtype=np.float64)
    return np.log1p(np.maximum(n - CHANCE_INLIERS, 0.0))


def individual_evidence(n_inliers, top=2):
    """The matcher's score of one individual from a query's inlier counts with its photos.

    n_inliers: (..., m) counts over the individual's m photos (NaN: photo not matched, e.g. the query itself).
    Returns (...,): log(1 + Σ of the ``top`` largest max(0, n − 7)); NaN where no photo was matched.
    """
    n = np.asarray(n_inliers, dtype=np.float64)
    if n.shape[-1] == 0:
        raise ValueError("an individual's evidence needs at least one of its photos")
    beyond = np.where(np.isnan(n), -1.0, np.maximum(n - CHANCE_INLIERS, 0.0))
    k = min(int(top), n.shape[-1])
    best = -np.sort(-beyond, axis=-1)[..., :k]
    out = np.log1p(np.maximum(best, 0.0).sum(axis=-1))
    return np.where(np.isnan(n).all(axis=-1), np.nan, out)


class LocalMatcher:
    """RootSIFT + ratio test + RANSAC with fixed settings; keeps each photo file's features (computed once).

    nfeatures   SIFT keypoints kept per photo (strongest first)
    ratio       Lowe's ratio-test threshold
    max_side    photos are shrunk to this longer side before detection (never enlarged)
    top         how many of an individual's best-matching photos its evidence sums
    max_photos  at most this many photos per individual are matched (None: all)
    """

    def __init__(self, nfeatures=2000, ratio=0.8, max_side=512, top=2, max_photos=None):
        checks = {"nfeatures": (nfeatures, 1), "max_side": (max_side, 16), "top": (top, 1)}
        if max_photos is not None:
            checks["max_photos"] = (max_photos, 1)
        for name, (value, low) in checks.items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"LocalMatcher {name} must be an integer ≥ {low}, got {value!r}")
        if not 0.0 < float(ratio) < 1.0:
            raise ValueError(f"LocalMatcher ratio must be in (0, 1), got {ratio!r}")
        self.nfeatures, self.ratio, self.max_side = int(nfeatures), float(ratio), int(max_side)
        self.top, self.max_photos = int(top), None if max_photos is None else int(max_photos)
        self._features, self._pairs = {}, {}

    def settings(self) -> dict:
        return {"nfeatures": self.nfeatures, "ratio": self.ratio, "max_side": self.max_side, "top": self.top,
                "max_photos": self.max_photos}

    def features(self, item):
        if isinstance(item, (str, Path)):
            key = str(item)
            if key not in self._features:
                self._features[key] = rootsift(item, self.nfeatures, self.max_side)
            return self._features[key]
        return rootsift(item, self.nfeatures, self.max_side)

    def inlier_matrix(self, queries, photos, skip=None):
        """(Q, M) float inlier counts of each query with each photo; NaN where ``skip`` (a (Q, M) bool mask)
        is set. Counts between two photo files are kept, so a pair is matched once."""
        queries, photos = list(queries), list(photos)
        out = np.full((len(queries), len(photos)), np.nan)
        for i, q in enumerate(queries):
            fq = self.features(q)
            for j, p in enumerate(photos):
                if skip is not None and skip[i, j]:
                    continue
                key = (str(q), str(p)) if isinstance(q, (str, Path)) and isinstance(p, (str, Path)) else None
                if key is not None and key in self._pairs:
                    out[i, j] = self._pairs[key]
                    continue
                n = inliers(fq, self.features(p), self.ratio)
                if key is not None:
                    self._pairs[key] = n
                out[i, j] = n
        return out
