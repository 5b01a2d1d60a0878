"""SimSiam's loss (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021): the symmetric
negative cosine similarity between each view's prediction and the other view's projection, with the
projection behind a stop-gradient. Forward and backward.

Input: out (M, 2D), M = 2N views, rows i and i + N two views of one photo; columns [0, D) are the
predictions p, columns [D, 2D) the projections z. With the partner t(i) = (i + N) mod M:

    n_i      = max(‖p_i‖, ε),  m_j = max(‖z_j‖, ε)      (ε = 1e-12, as torch.nn.functional.normalize)
    u_i      = p_i / n_i,      v_j = z_j / m_j
    L        = −(1/M) Σ_i u_i · v_t(i)
             = ½ D(p₁, sg(z₂)) + ½ D(p₂, sg(z₁)),   D(p, z) = −mean over the N photos of cos(p, z)

Backward, for an upstream scalar g = ∂out/∂L; the stop-gradient sg(·) makes z a constant:

    ∂L/∂u_i  = −(g/M) v_t(i)
    ∂L/∂p_i  = (∂L/∂u_i − u_i (u_i · ∂L/∂u_i)) / n_i      the L2-normalisation's backward
               (= ∂L/∂u_i / ε where ‖p_i‖ < ε: the clamp passes no gradient to the norm)
    ∂L/∂z    = 0                                           the stop-gradient

"The partner's projection is the most similar of all other views' projections" (``pair_top1``)
is a collapse-free sanity count like NT-Xent's contrastive top-1.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module

NORM_EPS = 1e-12


def _check(out, layer):
    if getattr(out, "ndim", None) != 2 or out.shape[1] % 2 or out.shape[1] < 2:
        raise ValueError(f"{layer}: expected (2N, 2D) = [predictions | projections], got shape "
                         f"{tuple(getattr(out, 'shape', ()))}")
    M = out.shape[0]
    if M < 2 or M % 2:
        raise ValueError(f"{layer}: need an even number (2N ≥ 2) of rows, the two views of N photos stacked as "
                         f"(view 1 of all, view 2 of all), got {M}")
    if not np.issubdtype(out.dtype, np.floating):
        raise TypeError(f"{layer}: input must be floating point, got dtype {out.dtype}")


def _normalise(a, xp):
    raw = xp.sqrt((a * a).sum(axis=1, keepdims=True))
    n = xp.maximum(raw, a.dtype.type(NORM_EPS))
    return a / n, n, raw >= NORM_EPS


def partners(M: int, xp=np):
    """t(i) = (i + M/2) mod M: the row of the other view of row i, as int64 (M,)."""
    return (xp.arange(M, dtype=np.int64) + M // 2) % M


def normalised_pairs(out, layer):
    """Checks ``out`` (2N, 2D) = [p | z] and returns the cache both losses keep: (p̂, ‖p‖ clamped to ε,
    whether ‖p‖ ≥ ε, ẑ, partner rows t)."""
    _check(out, layer)
    xp = get_array_module(out)
    D = out.shape[1] // 2
    u, n, unclamped = _normalise(out[:, :D], xp)
    v, _, _ = _normalise(out[:, D:], xp)
    return u, n, unclamped, v, partners(out.shape[0], xp)


def through_normalisation(du, cache):
    """∂L/∂out (2N, 2D) from ∂L/∂p̂ ``du`` (2N, D): through p̂ = p/‖p‖, (du − p̂·(p̂·du))/‖p‖ (plain du/ε where
    ‖p‖ was clamped), and zeros in the z columns: the stop-gradient."""
    u, n, unclamped, _, _ = cache
    xp = get_array_module(u)
    M, D = u.shape
    radial = (u * du).sum(axis=1, keepdims=True)
    grad = xp.zeros((M, 2 * D), dtype=u.dtype)
    grad[:, :D] = xp.where(unclamped, du - u * radial, du) / n
    return grad


def simsiam_forward(out, layer="simsiam"):
    """SimSiam loss of ``out`` (2N, 2D) = [p | z]; returns ``(loss, cache)``, ``loss`` a 0-d array of out's dtype."""
    cache = normalised_pairs(out, layer)
    u, _, _, v, t = cache
    loss = -(u * v[t]).sum() / out.dtype.type(out.shape[0])
    return loss, cache


def simsiam_backward(cache, dloss=1.0):
    """∂L/∂out (2N, 2D): the predictions' gradient in columns [0, D), zeros (stop-gradient) in [D, 2D)."""
    u, _, _, v, t = cache
    return through_normalisation(v[t] * (-u.dtype.type(dloss) / u.dtype.type(u.shape[0])), cache)


def pair_top1(cache) -> int:
    """How many rows' prediction is most similar (cosine) to its partner's projection among the other rows."""
    u, _, _, v, t = cache
    xp = get_array_module(u)
    s = u @ v.T
    M = s.shape[0]
    s[xp.arange(M), xp.arange(M)] = -xp.inf
    return int((s.argmax(axis=1) == t).sum())
