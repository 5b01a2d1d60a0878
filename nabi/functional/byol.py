"""BYOL's loss (Grill et al., "Bootstrap your own latent", NeurIPS 2020): the symmetric mean squared error
between each view's l2-normalised online prediction and the other view's l2-normalised target projection,
the target behind a stop-gradient. Forward and backward.

Input: out (M, 2D), M = 2N views, rows i and i + N two views of one photo; columns [0, D) are the online
network's predictions p, columns [D, 2D) the target network's projections z'. With the partner
t(i) = (i + N) mod M:

    n_i      = max(‖p_i‖, ε),  m_j = max(‖z'_j‖, ε)     (ε = 1e-12, as torch.nn.functional.normalize)
    u_i      = p_i / n_i,      v_j = z'_j / m_j          (p̂ and ẑ')
    L        = (1/N) Σ_i ‖u_i − v_t(i)‖²                 (the sum runs over all M = 2N rows)
             = mean over the N photos of ‖p̂₁ − ẑ'₂‖² + ‖p̂₂ − ẑ'₁‖²
             = 4 − (2/N) Σ_i cos(p_i, z'_t(i))           (for non-zero rows: ‖u − v‖² = 2 − 2 u·v)

so 0 ≤ L ≤ 8, and L = 0 when every prediction points where its partner's target projection points.

Backward, for an upstream scalar g = ∂out/∂L; the stop-gradient sg(·) makes z' a constant:

    ∂L/∂u_i  = (2g/N) (u_i − v_t(i))
    ∂L/∂p_i  = (∂L/∂u_i − u_i (u_i · ∂L/∂u_i)) / n_i      the L2-normalisation's backward
               (= ∂L/∂u_i / ε where ‖p_i‖ < ε: the clamp passes no gradient to the norm)
    ∂L/∂z'   = 0                                           the stop-gradient: the target never learns by
                                                           gradient, it follows the online network by EMA

The layout is SimSiam's [p | z] (``nabi.functional.simsiam``), whose checks, normalisation and partner rows
are shared; ``pair_top1`` counts the same "the partner is the nearest other view" sanity figure.
"""
from __future__ import annotations

from .simsiam import normalised_pairs, pair_top1, through_normalisation

__all__ = ["byol_forward", "byol_backward", "pair_top1"]


def byol_forward(out, layer="byol"):
    """BYOL loss of ``out`` (2N, 2D) = [p | z']; returns ``(loss, cache)``, ``loss`` a 0-d array of out's dtype."""
    cache = normalised_pairs(out, layer)
    u, _, _, v, t = cache
    diff = u - v[t]
    loss = (diff * diff).sum() / out.dtype.type(out.shape[0] // 2)
    return loss, cache


def byol_backward(cache, dloss=1.0):
    """∂L/∂out (2N, 2D): the predictions' gradient in columns [0, D), zeros (stop-gradient) in [D, 2D)."""
    u, _, _, v, t = cache
    return through_normalisation((u - v[t]) * (u.dtype.type(2 * dloss) / u.dtype.type(u.shape[0] // 2)), cache)
