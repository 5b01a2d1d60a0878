"""Fully connected layer and flatten.

Linear: x (N, in), w (out, in) as PyTorch stores it, b (out,):
    y = x · wᵀ + b
    ∂L/∂x = δ · w,   ∂L/∂w = δᵀ · x,   ∂L/∂b = Σ_n δ[n]
For a batch of one, ∂L/∂w is the rank-1 outer product δᵀx of seed 000's Algorithm 1.
"""
from __future__ import annotations

from ._checks import check_input


def linear_forward(x, w, b=None, layer="linear"):
    check_input(x, 2, layer, what="(N, in_features)")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"{layer}: expected {w.shape[1]} input features, got input of shape {tuple(x.shape)}")
    y = x @ w.T
    if b is not None:
        y += b
    return y, (x, w, b is not None)


def linear_backward(dy, cache, need_dx=True):
    """Returns ``(dx, dw, db)``; dx is None when ``need_dx`` is False."""
    x, w, has_bias = cache
    dw = dy.T @ x
    db = dy.sum(axis=0) if has_bias else None
    dx = dy @ w if need_dx else None
    return dx, dw, db


def flatten_forward(x, start_dim=1):
    """(N, C, H, W) → (N, C·H·W)."""
    return x.reshape(x.shape[:start_dim] + (-1,)), x.shape


def flatten_backward(dy, shape):
    return dy.reshape(shape)
