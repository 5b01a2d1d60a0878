"""Ops for learning identity embeddings: L2 normalisation, cosine classifiers, margin losses, triplets.

Shapes: embeddings x (N, D); class centres w (C, D) (or (C·k, D) with k sub-centres);
cosines c (N, C); integer labels y (N,).

L2 normalisation (row-wise), r = max(‖x‖, ε):
    y = x / r
    ∂L/∂x = (δ − y·⟨y, δ⟩) / r            (while ‖x‖ > ε; δ / ε otherwise)

Cosine linear (the weight of ArcFace / CosFace, no bias):
    c = x̂ · ŵᵀ,   x̂ = x/‖x‖, ŵ = w/‖w‖
    ∂L/∂x̂ = δ · ŵ,   ∂L/∂ŵ = δᵀ · x̂, then through the two normalisations.

Sub-centre max (sub-centre ArcFace, Deng et al. 2020): with k sub-centres per class the
cosines (N, C·k) are grouped per class, class j owning columns j·k … j·k + k − 1:
    c[n, j] = max_i c_sub[n, j·k + i]
    the gradient goes to the maximal sub-centre only (the first one on a tie).

ArcFace (additive angular margin, Deng et al. 2019), scale s, margin m, on the target class only:
    c_y clipped to [−1 + 1e-7, 1 − 1e-7] (no gradient through the clip, as torch.clamp)
    φ = cos(θ_y + m) = c_y·cos m − √(1 − c_y²)·sin m
    Convention when θ_y + m would pass π (c_y ≤ th = cos(π − m)): the common ArcFace
    implementations' (InsightFace, arcface-pytorch) fall-back φ = c_y − mm, mm = sin(π − m)·m,
    which keeps the target logit decreasing in θ. With ``easy_margin`` the margin applies
    only where c_y > 0 (φ = c_y elsewhere).
    z = s·c with z[n, y_n] = s·φ_n;  L = cross-entropy(z, y) (mean over the batch)
    ∂L/∂c = s·∂L/∂z, except ∂L/∂c_y = s·∂L/∂z_y · dφ/dc_y,
    dφ/dc = cos m + sin m · c / √(1 − c²) on the margin branch, 1 on the fall-back branch.

CosFace (additive cosine margin, Wang et al. 2018): φ = c_y − m, z = s·c with z_y = s·φ;
    ∂L/∂c = s·∂L/∂z.

Triplet loss with batch-hard mining (Hermans et al. 2017), margin α, Euclidean d:
    d(a, b) = √max(‖x_a − x_b‖², 1e-12)
    p(a) = argmax_{j ≠ a, y_j = y_a} d(a, j)     (hardest positive; first index on a tie)
    n(a) = argmin_{y_j ≠ y_a} d(a, j)            (hardest negative; first index on a tie)
    ℓ_a = max(0, d(a, p(a)) − d(a, n(a)) + α);   L = mean of ℓ_a over anchors having both
    ∂d(a, b)/∂x_a = (x_a − x_b)/d(a, b) = −∂d(a, b)/∂x_b, summed over the selected pairs.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module
from .loss import _check_labels, cross_entropy_backward, cross_entropy_forward

NORM_EPS = 1e-12
CLIP_EPS = 1e-7


def l2_normalize_forward(x, eps=NORM_EPS):
    """Row-wise x / max(‖x‖, ε): (N, D) → (N, D). Returns ``(y, cache)``."""
    xp = get_array_module(x)
    if x.ndim != 2:
        raise ValueError(f"l2_normalize: input must be (N, D), got shape {tuple(x.shape)}")
    norm = xp.sqrt((x * x).sum(axis=1, keepdims=True))
    r = xp.maximum(norm, eps)
    y = x / r
    return y, (y, r, norm > eps)


def l2_normalize_backward(dy, cache):
    """∂L/∂x = (δ − y·⟨y, δ⟩)/r where ‖x‖ > ε, δ/ε where the norm was clamped."""
    y, r, live = cache
    proj = (y * dy).sum(axis=1, keepdims=True)
    return (dy - y * (proj * live)) / r


def cosine_linear_forward(x, w, layer="cosine_linear"):
    """Cosines between the rows of x (N, D) and of w (M, D): (N, M). Returns ``(c, cache)``."""
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"{layer}: expected x (N, D) and w (M, D) with the same D, got {tuple(x.shape)} "
                         f"and {tuple(w.shape)}")
    xn, cx = l2_normalize_forward(x)
    wn, cw = l2_normalize_forward(w)
    return xn @ wn.T, (xn, wn, cx, cw)


def cosine_linear_backward(dc, cache, need_dx=True):
    """Returns ``(dx, dw)``; dx is None when ``need_dx`` is False."""
    xn, wn, cx, cw = cache
    dw = l2_normalize_backward(dc.T @ xn, cw)
    dx = l2_normalize_backward(dc @ wn, cx) if need_dx else None
    return dx, dw


def subcenter_max_forward(c, k):
    """(N, C·k) sub-centre cosines → (N, C) per-class maxima. Returns ``(y, cache)``."""
    if k == 1:
        return c, (None, c.shape, 1)
    N, M = c.shape
    if M % k:
        raise ValueError(f"sub-centre max: {M} columns are not a multiple of {k} sub-centres")
    g = c.reshape(N, M // k, k)
    idx = g.argmax(axis=2)
    y = g.max(axis=2)
    return y, (idx, c.shape, k)


def subcenter_max_backward(dy, cache):
    idx, shape, k = cache
    if k == 1:
        return dy
    xp = get_array_module(dy)
    N, C = dy.shape
    dc = xp.zeros((N, C, k), dtype=dy.dtype)
    rows = xp.arange(N)[:, None]
    cols = xp.arange(C)[None, :]
    dc[rows, cols, idx] = dy
    return dc.reshape(shape)


def _target_cosines(c, labels, layer):
    xp, labels = _check_labels(c, labels, layer)
    rows = xp.arange(c.shape[0])
    return xp, labels, rows, c[rows, labels]


def arcface_forward(c, labels, scale=30.0, margin=0.5, easy_margin=False, layer="ArcFaceLoss"):
    """Additive angular margin loss on cosines c (N, C). Returns ``(loss, cache)``; loss is 0-d."""
    if not 0.0 <= margin < math.pi / 2:
        raise ValueError(f"{layer}: margin must be in [0, π/2) radians, got {margin}")
    if scale <= 0:
        raise ValueError(f"{layer}: scale must be positive, got {scale}")
    xp, labels, rows, ct = _target_cosines(c, labels, layer)
    inside = (ct > -1.0 + CLIP_EPS) & (ct < 1.0 - CLIP_EPS)
    cc = xp.clip(ct, -1.0 + CLIP_EPS, 1.0 - CLIP_EPS)
    sin = xp.sqrt(1.0 - cc * cc)
    cos_m, sin_m = math.cos(margin), math.sin(margin)
    phi_margin = cc * cos_m - sin * sin_m
    if easy_margin:
        on_margin = cc > 0
        phi = xp.where(on_margin, phi_margin, cc)
    else:
        th, mm = math.cos(math.pi - margin), math.sin(math.pi - margin) * margin
        on_margin = cc > th
        phi = xp.where(on_margin, phi_margin, cc - mm)
    z = c * scale
    z[rows, labels] = phi * scale
    loss, ce_cache = cross_entropy_forward(z, labels, layer=layer)
    dphi = xp.where(on_margin, cos_m + sin_m * cc / sin, 1.0) * inside
    return loss, (ce_cache, labels, rows, dphi, scale)


def arcface_backward(cache, dloss=1.0):
    """∂L/∂c (N, C)."""
    ce_cache, labels, rows, dphi, scale = cache
    dc = cross_entropy_backward(ce_cache, dloss) * scale
    dc[rows, labels] *= dphi
    return dc


def cosface_forward(c, labels, scale=30.0, margin=0.35, layer="CosFaceLoss"):
    """Additive cosine margin loss on cosines c (N, C). Returns ``(loss, cache)``."""
    if margin < 0:
        raise ValueError(f"{layer}: margin must be >= 0, got {margin}")
    if scale <= 0:
        raise ValueError(f"{layer}: scale must be positive, got {scale}")
    xp, labels, rows, ct = _target_cosines(c, labels, layer)
    z = c * scale
    z[rows, labels] = (ct - margin) * scale
    loss, ce_cache = cross_entropy_forward(z, labels, layer=layer)
    return loss, (ce_cache, scale)


def cosface_backward(cache, dloss=1.0):
    ce_cache, scale = cache
    return cross_entropy_backward(ce_cache, dloss) * scale


def pairwise_distances(x):
    """Euclidean distances (N, N) via the Gram matrix, clamped at 0 before the root."""
    xp = get_array_module(x)
    sq = (x * x).sum(axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    return xp.sqrt(xp.maximum(d2, 0.0))


def batch_hard_pairs(x, labels):
    """Hardest positive and negative of each anchor: ``(anchors, positives, negatives)`` index arrays.

    Anchors without a positive (an individual alone in the batch) or without a negative are left out.
    Ties go to the first index (``argmax``/``argmin`` order).
    """
    xp = get_array_module(x)
    labels = xp.asarray(labels)
    N = x.shape[0]
    d = pairwise_distances(x)
    same = labels[:, None] == labels[None, :]
    eye = xp.eye(N, dtype=bool)
    pos_mask = same & ~eye
    neg_mask = ~same
    valid = pos_mask.any(axis=1) & neg_mask.any(axis=1)
    pos = xp.where(pos_mask, d, -xp.inf).argmax(axis=1)
    neg = xp.where(neg_mask, d, xp.inf).argmin(axis=1)
    anchors = xp.nonzero(valid)[0]
    return anchors, pos[anchors], neg[anchors]


def triplet_batch_hard_forward(x, labels, margin=0.3, layer="TripletLoss"):
    """Batch-hard triplet loss of embeddings x (N, D) with labels (N,). Returns ``(loss, cache)``."""
    xp = get_array_module(x)
    if x.ndim != 2:
        raise ValueError(f"{layer}: embeddings must be (N, D), got shape {tuple(x.shape)}")
    labels = xp.asarray(labels)
    if labels.shape != (x.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{layer}: labels must be (N,) = ({x.shape[0]},) integers, got shape "
                         f"{tuple(labels.shape)} and dtype {labels.dtype}")
    if margin < 0:
        raise ValueError(f"{layer}: margin must be >= 0, got {margin}")
    a, p, n = batch_hard_pairs(x, labels)
    if a.size == 0:
        raise ValueError(f"{layer}: no anchor in the batch has both a positive and a negative; batches need "
                         "at least two photos of some individual and two individuals (use a P×K sampler)")
    dap_vec = x[a] - x[p]
    dan_vec = x[a] - x[n]
    dap = xp.sqrt(xp.maximum((dap_vec * dap_vec).sum(axis=1), 1e-12))
    dan = xp.sqrt(xp.maximum((dan_vec * dan_vec).sum(axis=1), 1e-12))
    hinge = dap - dan + margin
    active = hinge > 0
    loss = xp.where(active, hinge, 0.0).sum() / a.size
    return loss, (x.shape, a, p, n, dap_vec, dan_vec, dap, dan, active)


def triplet_batch_hard_backward(cache, dloss=1.0):
    """∂L/∂x (N, D): each active triplet adds (x_a − x_p)/d_ap − (x_a − x_n)/d_an at a, and the opposite
    parts at p and n, scaled by dloss / (number of anchors)."""
    shape, a, p, n, dap_vec, dan_vec, dap, dan, active = cache
    xp = get_array_module(dap_vec)
    w = (active * (dloss / a.size))[:, None]
    gp = dap_vec / dap[:, None] * w
    gn = dan_vec / dan[:, None] * w
    eye = xp.eye(shape[0], dtype=dap_vec.dtype)      # one-hot rows: the sums over repeated indices as products
    return eye[a].T @ (gp - gn) - eye[p].T @ gp + eye[n].T @ gn
