"""Stochastic depth (Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016), per sample.

A residual block computes y = shortcut(x) + branch(x); stochastic depth drops the branch of
some samples during training. This op is applied to the branch output, the "row" mode of
``torchvision.ops.stochastic_depth`` (often called DropPath):

    input   x  (N, ...)   the branch output of N samples
    mask    m_n ~ Bernoulli(1 − p), one draw per sample, s_n = m_n / (1 − p)
    output  y[n] = s_n · x[n]                  (training)
            y = x                              (evaluation, or p = 0)
    backward  dx[n] = s_n · δ[n]

The expectation of y over the mask is x, so the evaluation network (every branch kept,
no scaling) sees the activations it was trained on in expectation. ``p`` is the drop
probability and must lie in [0, 1): p = 1 would drop every branch and divide by zero.
"""
from __future__ import annotations

import numbers


def check_drop_probability(p, where="drop_path"):
    """``p`` as a float, or ``ValueError`` naming ``where`` unless 0 ≤ p < 1."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
        raise ValueError(f"{where}: the drop probability p must lie in [0, 1) (p = 1 would drop every "
                         f"residual branch), got {p!r}")
    return float(p)


def drop_path_forward(x, p, training, rng):
    """Scale each sample of ``x`` (N, ...) by s_n = m_n / (1 − p), m_n ~ Bernoulli(1 − p).

    ``rng`` is a NumPy Generator (CPU) or a CuPy generator (GPU); it draws N uniforms u_n and
    keeps sample n when u_n ≥ p. Returns ``(y, scale)``: ``scale`` (N, 1, …, 1) in x's dtype,
    or None when the op is the identity (evaluation or p = 0).
    """
    p = check_drop_probability(p)
    if not training or p == 0.0:
        return x, None
    if x.ndim < 1:
        raise ValueError(f"drop_path: expected an input (N, ...) with a batch axis, got shape {tuple(x.shape)}")
    draw = x.dtype if x.dtype.itemsize >= 4 else "float32"      # generators draw float32/float64 only
    keep = rng.random((x.shape[0],), dtype=draw) >= p
    scale = keep.astype(x.dtype).reshape((x.shape[0],) + (1,) * (x.ndim - 1)) / x.dtype.type(1.0 - p)
    return x * scale, scale


def drop_path_backward(dy, scale):
    """dx = s_n · δ[n] (the identity when the forward was)."""
    return dy if scale is None else dy * scale
