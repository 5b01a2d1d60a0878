"""Generalised-mean (GeM) pooling (Radenović, Tolias & Chum, "Fine-tuning CNN Image Retrieval with No
Human Annotation", TPAMI 2018): a global pooling between the average (p = 1) and the maximum (p → ∞).

    input   x (N, C, H, W), the exponent p > 0 (a scalar; a learnable one is a (1,) array), ε > 0
    clamp   z[n,c,h,w] = max(x[n,c,h,w], ε)
    output  y[n,c] = ( (1/HW) Σ_{h,w} z[n,c,h,w]^p )^{1/p}                     → y (N, C, 1, 1)

A large p lets the few strongest responses of a channel (a stripe, a spot) decide its value, where
average pooling dilutes them over the whole image.

Computed with each channel's maximum s = max_{h,w} z taken out, r = z / s ∈ (0, 1]:

    m = (1/HW) Σ r^p,   q = m^{1/p},   y = s · q

the same value as the formula (s^p cancels), but r^p cannot overflow, whatever p and x.

Backward, with δ = ∂L/∂y (N, C, 1, 1):

    ∂y/∂z[h,w] = m^{1/p − 1} · r[h,w]^{p − 1} / HW = q · r^{p−1} / (HW · m)
    dx = δ · ∂y/∂z · [x ≥ ε]                          (the clamp passes no gradient below ε)
    ∂y/∂p = (y / p) · ( Σ r^p ln r / Σ r^p − ln q )
    dp = Σ_{n,c} δ[n,c] · ∂y[n,c]/∂p

(ln y = ln(Σ z^p / HW) / p; differentiating in p gives y · (Σ z^p ln z / (p Σ z^p) − ln y / p), and
the s terms cancel.) float16 input is computed in float32 and y cast back, as average pooling does.
"""
from __future__ import annotations

from ..backend import get_array_module
from ._checks import check_input

DEFAULT_EPS = 1e-6


def check_gem_exponent(p, where="GeM"):
    """``p`` as a float, or a ``ValueError`` naming ``where`` unless it is a finite number > 0."""
    import math
    import numbers
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not math.isfinite(p) or p <= 0:
        raise ValueError(f"{where}: the exponent p must be a finite number > 0 (1 is average pooling, "
                         f"larger values approach max pooling), got {p!r}")
    return float(p)


def gem_forward(x, p, eps=DEFAULT_EPS, layer="gem"):
    """Global generalised-mean pooling of x (N, C, H, W) with exponent ``p`` (a float, or a (1,) or 0-d
    array on x's device: a learnable p). Returns ``(y, cache)``, y (N, C, 1, 1) in x's dtype."""
    xp = check_input(x, 4, layer)
    if not eps > 0:
        raise ValueError(f"{layer}: eps must be > 0 (it keeps z^p and ln z finite), got {eps!r}")
    out_dtype = x.dtype
    if x.dtype.kind == "f" and x.dtype.itemsize < 4:
        x = x.astype("float32")
    if not isinstance(p, (int, float)):
        p = p.reshape(()).astype(x.dtype, copy=False)
    z = xp.maximum(x, x.dtype.type(eps))
    s = z.max(axis=(2, 3), keepdims=True)                   # (N, C, 1, 1), ≥ ε
    r = z / s
    rp = r ** p
    m = rp.mean(axis=(2, 3), keepdims=True)
    q = m ** (1.0 / p)
    y = s * q
    return y.astype(out_dtype, copy=False), (x >= eps, r, rp, m, q, y, p, out_dtype)


def gem_backward(dy, cache, need_dp=True):
    """``(dx, dp)``: dx (N, C, H, W) in dy's dtype; dp the gradient of the exponent, shaped like the p
    given to forward (None for a float p, or with ``need_dp=False``)."""
    passes, r, rp, m, q, y, p, out_dtype = cache
    N, C, H, W = r.shape
    d = dy.astype(r.dtype, copy=False)
    dz = (d * q / (H * W * m)) * (rp / r)                   # r^{p−1} = r^p / r (r ≥ ε/s > 0)
    dx = (dz * passes).astype(dy.dtype, copy=False)
    dp = None
    if need_dp and not isinstance(p, (int, float)):
        xp = get_array_module(r)
        ln_r = xp.log(r)
        ratio = (rp * ln_r).sum(axis=(2, 3), keepdims=True) / (rp.sum(axis=(2, 3), keepdims=True))
        dydp = (y / p) * (ratio - xp.log(q))
        dp = (d * dydp).sum().reshape((1,))
    return dx, dp
