"""HardNet's loss: the triplet margin loss with the hardest negative in the batch (Mishchuk et al., 2017).

Input: descriptors x (2n, D) of n matching pairs stacked as (anchors a = x[:n], positives p = x[n:]),
a_i and p_i two views of one point. With margin m (1 in the paper) and ε = 1e-6 (HardNet's):

    s_ij   = max(‖a_i‖² + ‖p_j‖² − 2 a_i·p_j, 0)              (n, n) squared distances
    D_ij   = √(s_ij + ε)                                       distance of anchor i and positive j
    h_i    = min( min_{j≠i} D_ij , min_{j≠i} D_ji )            the hardest negative of pair i: the closest
                                                               non-matching positive to a_i, or the closest
                                                               non-matching anchor to p_i
    L      = (1/n) Σ_i max(0, m + D_ii − h_i)

Which entry is h_i: the candidates of pair i are taken in the order D_i0 … D_i,n−1 (row i, without D_ii),
then D_0i … D_n−1,i (column i, without D_ii), and the first smallest is chosen; on a tie the gradient
goes to that one entry only (so a row entry wins over an equal column entry, a lower index over a higher).

Backward, for an upstream scalar g = ∂out/∂L: G = ∂L/∂D is zero but for the active pairs
(m + D_ii − h_i > 0), where G_ii += g/n and G_{entry of h_i} −= g/n. Then, with W_ij = G_ij / (2 D_ij)
where s_ij was not clamped (the raw value ≥ 0) and 0 where it was,

    ∂L/∂a_i = 2 Σ_j W_ij (a_i − p_j) = 2 (a_i · Σ_j W_ij − (W p)_i)
    ∂L/∂p_j = 2 Σ_i W_ij (p_j − a_i) = 2 (p_j · Σ_i W_ij − (Wᵀ a)_j)

``positive_top1`` counts the anchors whose closest positive is their own (D_ii below every other D_ij):
the matching accuracy of the batch.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module

EPS = 1e-6


def _check(x, margin, layer):
    if not hasattr(x, "ndim") or x.ndim != 2:
        raise ValueError(f"{layer}: descriptors must be (2n, D), got shape {getattr(x, 'shape', None)}")
    if x.shape[0] < 4 or x.shape[0] % 2:
        raise ValueError(f"{layer}: need an even number 2n ≥ 4 of rows, n anchors then their n positives "
                         f"(at least two pairs, so each has a negative), got {x.shape[0]}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{layer}: descriptors must be floating point, got dtype {x.dtype}")
    if not (isinstance(margin, (int, float, np.floating)) and margin >= 0):
        raise ValueError(f"{layer}: margin must be a number ≥ 0, got {margin!r}")


def hardnet_loss_forward(x, margin=1.0, layer="HardNetLoss"):
    """HardNet's loss of ``x`` (2n, D) = (anchors; positives). Returns ``(loss, cache)``, loss a 0-d array."""
    _check(x, margin, layer)
    xp = get_array_module(x)
    n = x.shape[0] // 2
    a, p = x[:n], x[n:]
    s_raw = (a * a).sum(axis=1)[:, None] + (p * p).sum(axis=1)[None, :] - 2.0 * (a @ p.T)
    dist = xp.sqrt(xp.maximum(s_raw, 0.0) + x.dtype.type(EPS))
    off = dist + xp.diag(xp.full(n, xp.inf, dtype=x.dtype))               # the diagonal is no negative
    candidates = xp.concatenate([off, off.T], axis=1)                     # (n, 2n): row i, then column i
    pick = candidates.argmin(axis=1)                                      # first smallest (see the docstring)
    rows = xp.arange(n)
    hardest = candidates[rows, pick]
    positive = dist[rows, rows]
    hinge = margin + positive - hardest
    active = hinge > 0
    loss = xp.where(active, hinge, 0.0).sum() / n
    cache = (a, p, dist, s_raw >= 0, pick, active)
    return loss.astype(x.dtype), cache


def hardnet_loss_backward(cache, dloss=1.0):
    """∂L/∂x (2n, D) for an upstream scalar ``dloss`` (see the module docstring)."""
    a, p, dist, unclamped, pick, active = cache
    xp = get_array_module(a)
    n = a.shape[0]
    rows = xp.arange(n)
    w = active.astype(a.dtype) * a.dtype.type(float(dloss) / n)
    in_row = pick < n                                                     # h_i is D_i,pick  (else D_pick−n,i)
    flat = xp.where(in_row, rows * n + pick, (pick - n) * n + rows)       # one entry may be two pairs' h
    G = -xp.bincount(flat, weights=w, minlength=n * n).reshape(n, n).astype(a.dtype)
    G[rows, rows] += w
    W = G / (2.0 * dist) * unclamped
    da = 2.0 * (a * W.sum(axis=1)[:, None] - W @ p)
    dp = 2.0 * (p * W.sum(axis=0)[:, None] - W.T @ a)
    return xp.concatenate([da, dp], axis=0)


def positive_top1(cache) -> int:
    """How many anchors have their own positive as the closest one (D_ii < D_ij for every j ≠ i)."""
    dist = cache[2]
    xp = get_array_module(dist)
    n = dist.shape[0]
    off = dist + xp.diag(xp.full(n, xp.inf, dtype=dist.dtype))
    return int((xp.diagonal(dist) < off.min(axis=1)).sum())
