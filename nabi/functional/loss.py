"""Losses: softmax cross-entropy (fused, stable) and mean squared error.

Cross-entropy of logits z (N, K) and integer labels y (N,), with optional class
weights w (K,) and label smoothing ε (PyTorch's definitions):

    q[n, k]  = (1 − ε)·[k = y_n] + ε / K                 (smoothed target)
    a[n, k]  = w[k] · q[n, k]                             (w = 1 without weights)
    L        = − Σ_n Σ_k a[n, k] · log softmax(z)[n, k]  /  Σ_n w[y_n]
    ∂L/∂z    = ( p · Σ_k a[n, k] − a ) / Σ_n w[y_n],   p = softmax(z)

Without weights or smoothing this is the mean of −log p[n, y_n] and its gradient
is (p − onehot(y)) / N.

float16 logits: the loss and its gradient are computed in float32 (the sum over
N·K terms and the count N overflow float16 past 65 504) and returned in float16.
The mean squared error sums (y − t)² in float32 for float16 input.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from .activation import log_softmax


def _check_labels(z, labels, layer):
    xp = get_array_module(z)
    if z.ndim != 2:
        raise ValueError(f"{layer}: logits must be (N, num_classes), got shape {tuple(z.shape)}")
    labels = xp.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != z.shape[0]:
        raise ValueError(f"{layer}: labels must be (N,) = ({z.shape[0]},) integers, got shape {tuple(labels.shape)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"{layer}: labels must be integer class indices, got dtype {labels.dtype}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= z.shape[1]):
        raise ValueError(f"{layer}: labels must lie in [0, {z.shape[1] - 1}], "
                         f"got values from {int(labels.min())} to {int(labels.max())}")
    return xp, labels


def cross_entropy_forward(z, labels, weight=None, label_smoothing=0.0, layer="cross_entropy"):
    """Mean softmax cross-entropy. Returns ``(loss, cache)``; ``loss`` is a 0-d array."""
    xp, labels = _check_labels(z, labels, layer)
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"{layer}: label_smoothing must be in [0, 1), got {label_smoothing}")
    if z.dtype.kind == "f" and z.dtype.itemsize < 4:
        loss, cache = cross_entropy_forward(z.astype("float32"), labels, weight, label_smoothing, layer)
        return loss.astype(z.dtype), cache[:3] + (z.dtype,)
    N, K = z.shape
    logp = log_softmax(z, axis=1)
    a = xp.full((N, K), label_smoothing / K, dtype=z.dtype)
    a[xp.arange(N), labels] += 1.0 - label_smoothing
    if weight is not None:
        weight = xp.asarray(weight, dtype=z.dtype)
        if weight.shape != (K,):
            raise ValueError(f"{layer}: class weights must have shape ({K},), got {tuple(weight.shape)}")
        a *= weight[None, :]
        denom = weight[labels].sum()
    else:
        denom = z.dtype.type(N)
    loss = -(a * logp).sum() / denom
    return loss, (logp, a, denom, z.dtype)


def cross_entropy_backward(cache, dloss=1.0):
    """∂L/∂z = (p·Σ_k a − a) / Σ_n w[y_n], scaled by the upstream ``dloss``."""
    logp, a, denom, dtype = cache
    xp = get_array_module(logp)
    p = xp.exp(logp)
    g = (p * a.sum(axis=1, keepdims=True) - a) * (dloss / denom)
    return g if dtype == logp.dtype else g.astype(dtype)            # float16 logits: computed in float32


def mse_forward(y, target, layer="mse_loss"):
    """L = mean((y − t)²) over every element."""
    if y.shape != target.shape:
        raise ValueError(f"{layer}: prediction shape {tuple(y.shape)} and target shape {tuple(target.shape)} differ")
    d = y - target
    if d.dtype.kind == "f" and d.dtype.itemsize < 4:
        d32 = d.astype("float32")
        return (d32 * d32).mean().astype(d.dtype), (d,)
    return (d * d).mean(), (d,)


def mse_backward(cache, dloss=1.0):
    """∂L/∂y = 2 (y − t) / numel."""
    (d,) = cache
    return d * (2.0 * dloss / d.size)
