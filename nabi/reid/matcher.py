"""Local-feature matching between two photos: RootSIFT keypoints, Lowe's ratio test, RANSAC.

Coat patterns (stripes, spots) are individual; two photos of the same animal share many keypoints
that agree on one geometric transform, photos of different animals few. For photos a and b:

    keypoints and SIFT descriptors (OpenCV), each descriptor made RootSIFT: d ← √(d / ‖d‖₁)
    (Arandjelović & Zisserman 2012: Euclidean distance of RootSIFT is the Hellinger kernel of SIFT)
    for each descriptor of a its two nearest in b; kept when d₁ < ratio · d₂ (Lowe 2004)
    a homography fitted to the kept pairs by RANSAC (reprojection error ≤ 5 px); the score is the
    number of inlier pairs (0 with fewer than 4 kept pairs)

Fusion with the embedding similarity s (cosine) of the same query and individual:

    fused = s + w · log(1 + max(0, inliers − 7)) / log(1 + 50)

(RANSAC fits a homography to any four pairs, so photos of two different animals still agree on 4 to
about 7 inliers by chance; only the inliers beyond that count as evidence.)

computed for a query's top-5 individuals by embedding similarity, the best fused one answering; the
weight w is chosen on validation photos (``fit_fusion_weight``: the w of a small grid with the best
AUROC of known against unknown queries, then the widest gap between them). Needs ``opencv-python-headless``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

INLIER_SCALE = math.log1p(50)
CHANCE_INLIERS = 7          # inliers a RANSAC homography finds between unrelated photos (4 by construction)
WEIGHT_GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ImportError('the local-feature matcher needs OpenCV: pip install "nabi[reid]"') from None
    return cv2


def _gray(item, max_side=512):
    """uint8 grey image from a path or an array (H, W, C) uint8 / (C, H, W) float in [0, 1]."""
    cv2 = _cv2()
    if isinstance(item, (str, Path)):
        img = cv2.imread(str(item), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise ValueError(f"could not decode image file {item} for local-feature matching")
    else:
        a = np.asarray(item)
        if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
            a = a.transpose(1, 2, 0)
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


def rootsift(item, nfeatures=500):
    """``(points (n, 2) float32, descriptors (n, 128) float32)`` of a photo; RootSIFT descriptors."""
    cv2 = _cv2()
    sift = cv2.SIFT_create(nfeatures=nfeatures)
    kps, desc = sift.detectAndCompute(_gray(item), None)
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


def fused_score(similarity, n_inliers, weight) -> float:
    evidence = max(0, int(n_inliers) - CHANCE_INLIERS)
    return float(similarity) + float(weight) * math.log1p(evidence) / INLIER_SCALE


class LocalMatcher:
    """Keeps each gallery photo's RootSIFT features (computed once); ``best_inliers(query, photos)``."""

    def __init__(self, nfeatures=500, ratio=0.8, max_photos=5):
        self.nfeatures, self.ratio, self.max_photos = int(nfeatures), float(ratio), int(max_photos)
        self._cache = {}

    def features(self, item):
        if isinstance(item, (str, Path)):
            key = str(item)
            if key not in self._cache:
                self._cache[key] = rootsift(item, self.nfeatures)
            return self._cache[key]
        return rootsift(item, self.nfeatures)

    def best_inliers(self, query, photos) -> int:
        """The most RANSAC inliers between ``query`` and any of (up to ``max_photos`` of) ``photos``."""
        fq = self.features(query)
        return max((inliers(fq, self.features(p), self.ratio) for p in list(photos)[:self.max_photos]), default=0)


def fused_best(candidates, weight):
    """``(fused score, index)`` of the best of a query's candidates ``[(similarity, inliers), ...]``."""
    scores = [fused_score(sim, n, weight) for sim, n in candidates]
    i = int(np.argmax(scores))
    return scores[i], i


def fit_fusion_weight(known, unknown, grid=WEIGHT_GRID):
    """The fusion weight w with the best AUROC of known against unknown queries.

    ``known`` / ``unknown``: for each query the list of its candidates' (similarity, inliers); a query's
    score is its best fused candidate. Among weights with the same AUROC the one with the widest gap
    (lowest known score − highest unknown score) wins, then the smaller w. Returns ``(w, auroc at w)``.
    """
    from .metrics import auroc
    best = None
    for w in grid:
        ks = [fused_best(c, w)[0] for c in known]
        us = [fused_best(c, w)[0] for c in unknown]
        key = (round(auroc(ks, us), 12), round(min(ks) - max(us), 12))
        if best is None or key > best[1]:
            best = (float(w), key)
    return best[0], best[1][0]
