"""Softmax cross-entropy against a target distribution (soft labels), forward and backward.

Logits z (N, K) and targets q (N, K), every row of q non-negative and summing to 1
(a one-hot row is an ordinary label; a teacher's softmax is a soft label):

    log p    = log_softmax(z)                         (N, K)
    L        = −(1/N) Σ_n Σ_k q_nk · log p_nk         mean over the N rows

Backward, for an upstream scalar g = ∂out/∂L:

    ∂L/∂z    = g · (p · Σ_k q_nk − q) / N  =  g · (p − q) / N   (rows of q sum to 1)

The first form is what is computed (it stays exact when a row's sum is off by rounding).
With one-hot q this is ``nabi.functional.loss.cross_entropy_forward`` without weights or smoothing.
float16 logits are computed in float32 and the gradient returned in float16, as that function does.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from .activation import log_softmax

ROW_SUM_TOLERANCE = 1e-3


def _check(z, q, layer):
    xp = get_array_module(z)
    if getattr(z, "ndim", None) != 2:
        raise ValueError(f"{layer}: logits must be (N, num_classes), got shape {tuple(getattr(z, 'shape', ()))}")
    q = xp.asarray(q)
    if q.shape != z.shape:
        raise ValueError(f"{layer}: targets must have the logits' shape {tuple(z.shape)}, got {tuple(q.shape)}")
    if not np.issubdtype(q.dtype, np.floating):
        raise TypeError(f"{layer}: targets must be floating point probabilities, got dtype {q.dtype}")
    if q.size:
        if float(q.min()) < 0:
            raise ValueError(f"{layer}: targets must be non-negative probabilities, got a minimum of {float(q.min())}")
        sums = q.sum(axis=1)
        worst = float(xp.abs(sums - 1).max())
        if worst > ROW_SUM_TOLERANCE:
            raise ValueError(f"{layer}: every target row must sum to 1, a row is off by {worst:.3g}")
    return xp, q


def soft_cross_entropy_forward(z, q, layer="soft_cross_entropy"):
    """Mean cross-entropy of logits ``z`` (N, K) against target rows ``q`` (N, K); returns ``(loss, cache)``."""
    xp, q = _check(z, q, layer)
    if z.dtype.kind == "f" and z.dtype.itemsize < 4:
        loss, cache = soft_cross_entropy_forward(z.astype("float32"), q, layer)
        return loss.astype(z.dtype), cache[:2] + (z.dtype,)
    q = q.astype(z.dtype, copy=False)
    logp = log_softmax(z, axis=1)
    loss = -(q * logp).sum() / z.dtype.type(z.shape[0])
    return loss, (logp, q, z.dtype)


def soft_cross_entropy_backward(cache, dloss=1.0):
    """∂L/∂z = g · (p · Σ_k q − q) / N."""
    logp, q, dtype = cache
    xp = get_array_module(logp)
    p = xp.exp(logp)
    g = (p * q.sum(axis=1, keepdims=True) - q) * (logp.dtype.type(dloss) / logp.dtype.type(logp.shape[0]))
    return g if dtype == logp.dtype else g.astype(dtype)
