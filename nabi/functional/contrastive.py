"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al., 2020), forward and backward.

Input: projections z (M, D) of M = 2N views, where rows i and i + N are two views of
the same image. With temperature τ:

    n_i      = max(‖z_i‖, ε)                         (ε = 1e-12, as torch.nn.functional.normalize)
    u_i      = z_i / n_i                              (M, D)   unit rows
    s_ij     = u_i · u_j                              (M, M)   cosine similarities
    ℓ_ij     = s_ij / τ   for j ≠ i,   ℓ_ii = −∞      (M, M)   logits, the self-similarity masked out
    p(i)     = (i + N) mod M                                   the positive of anchor i: its other view
    L        = (1/M) Σ_i [ −ℓ_i,p(i) + log Σ_{k≠i} e^(ℓ_ik) ]   mean over the M anchors

Backward, for an upstream scalar g = ∂out/∂L:

    P        = softmax over each row of ℓ (P_ii = 0),  Y_ij = [j = p(i)]
    ∂L/∂ℓ    = (P − Y) / M                            the cross-entropy gradient
    ∂L/∂s    = ∂L/∂ℓ / τ                              (diagonal 0: the masked entries carry none)
    ∂L/∂u    = (∂L/∂s + ∂L/∂sᵀ) · u                   s = u uᵀ uses u twice
    ∂L/∂z_i  = (∂L/∂u_i − u_i (u_i · ∂L/∂u_i)) / n_i  the L2-normalisation's backward
               (= ∂L/∂u_i / ε where ‖z_i‖ < ε: the clamp passes no gradient to the norm)

The same loss is softmax cross-entropy over the M × M masked logits with targets p(i),
so "the positive is the most similar other view" (``positive_top1``) is its accuracy.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module

NORM_EPS = 1e-12


def _check(z, temperature, layer):
    if not hasattr(z, "ndim") or z.ndim != 2:
        raise ValueError(f"{layer}: projections must be (2N, D), got shape {getattr(z, 'shape', None)}")
    M = z.shape[0]
    if M < 2 or M % 2:
        raise ValueError(f"{layer}: need an even number (2N ≥ 2) of rows, the two views of N images stacked as "
                         f"(view 1 of all, view 2 of all), got {M}")
    if not (isinstance(temperature, (int, float, np.floating)) and temperature > 0):
        raise ValueError(f"{layer}: temperature must be a positive number, got {temperature!r}")
    if not np.issubdtype(z.dtype, np.floating):
        raise TypeError(f"{layer}: projections must be floating point, got dtype {z.dtype}")


def positives(M: int, xp=np):
    """p(i) = (i + M/2) mod M: the index of the other view of row i, as int64 (M,)."""
    return (xp.arange(M, dtype=np.int64) + M // 2) % M


def nt_xent_forward(z, temperature=0.5, layer="nt_xent"):
    """NT-Xent of projections ``z`` (2N, D); returns ``(loss, cache)``, ``loss`` a 0-d array of z's dtype."""
    _check(z, temperature, layer)
    xp = get_array_module(z)
    M = z.shape[0]
    norms_raw = xp.sqrt((z * z).sum(axis=1, keepdims=True))
    norms = xp.maximum(norms_raw, z.dtype.type(NORM_EPS))
    u = z / norms
    logits = (u @ u.T) / z.dtype.type(temperature)
    idx = xp.arange(M)
    logits[idx, idx] = -xp.inf
    m = logits.max(axis=1, keepdims=True)
    e = xp.exp(logits - m)                       # e_ii = 0
    sum_e = e.sum(axis=1, keepdims=True)
    log_sum = xp.log(sum_e) + m                  # (M, 1) log Σ_{k≠i} e^(ℓ_ik)
    pos = positives(M, xp)
    loss = (log_sum[:, 0] - logits[idx, pos]).mean()
    prob = e / sum_e
    cache = (u, norms, norms_raw >= NORM_EPS, prob, pos, float(temperature), logits)
    return loss, cache


def nt_xent_backward(cache, dloss=1.0):
    """∂L/∂z (2N, D) for an upstream scalar ``dloss`` (see the module docstring)."""
    u, norms, unclamped, prob, pos, tau, _ = cache
    xp = get_array_module(u)
    M = u.shape[0]
    dlogits = prob.copy()
    dlogits[xp.arange(M), pos] -= 1.0
    ds = dlogits * (u.dtype.type(dloss) / u.dtype.type(M * tau))      # diagonal of prob is 0 already
    du = (ds + ds.T) @ u
    radial = (u * du).sum(axis=1, keepdims=True)
    return xp.where(unclamped, du - u * radial, du) / norms


def positive_top1(cache) -> int:
    """How many anchors have their positive as the most similar other row (the contrastive top-1 count)."""
    logits, pos = cache[6], cache[4]
    return int((logits.argmax(axis=1) == pos).sum())
