"""Element-wise activations and (log-)softmax, forward and backward.

Each ``*_forward`` returns ``(y, cache)``; each ``*_backward(dy, cache)`` returns dx.

ReLU        y = max(x, 0)                 dx = δ · [x > 0]
Leaky ReLU  y = x if x > 0 else a·x       dx = δ · (1 if x > 0 else a)
Sigmoid     y = 1 / (1 + e^(−x))          dx = δ · y (1 − y)
Tanh        y = tanh x                    dx = δ · (1 − y²)
Softmax     y_k = e^(x_k − m) / Σ_j e^(x_j − m), m = max_j x_j (stable)
            dx = y ⊙ (δ − Σ_k δ_k y_k)
LogSoftmax  y_k = x_k − m − log Σ_j e^(x_j − m)
            dx = δ − softmax(x) · Σ_k δ_k
(Log-)softmax of float16 input runs in float32 and is cast back: a float16 sum
over more than 65 504 classes overflows, and loses digits long before.
"""
from __future__ import annotations

from ..backend import get_array_module
from .dispatch import for_arrays, reference


def relu_forward(x):
    y = for_arrays(x).relu(x)
    return y, y


def relu_forward_inplace(x):
    """``relu_forward`` written over x (a C-contiguous array nothing else needs): no new array."""
    y = for_arrays(x).relu(x, out=x)
    return y, y


def relu_backward(dy, cache):
    """The mask comes from the output: y > 0 exactly where x > 0."""
    return for_arrays(dy, cache).relu_backward(dy, cache)


@reference
def relu(x, out=None):
    """y = max(x, 0) (NaN stays NaN), into ``out`` when given."""
    return get_array_module(x).maximum(x, 0, out=out)


@reference("relu_backward")
def _relu_mask(dy, y):
    """dx = δ · [y > 0]."""
    return dy * (y > 0)


def leaky_relu_forward(x, negative_slope=0.01):
    xp = get_array_module(x)
    mask = x > 0
    return xp.where(mask, x, x * negative_slope), (mask, negative_slope)


def leaky_relu_backward(dy, cache):
    mask, a = cache
    xp = get_array_module(dy)
    return xp.where(mask, dy, dy * a)


def sigmoid_forward(x):
    xp = get_array_module(x)
    # Stable on both tails: e^(−|x|) never overflows.
    e = xp.exp(-xp.abs(x))
    y = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
    return y, y


def sigmoid_backward(dy, y):
    return dy * y * (1 - y)


def tanh_forward(x):
    xp = get_array_module(x)
    y = xp.tanh(x)
    return y, y


def tanh_backward(dy, y):
    return dy * (1 - y * y)


def _is_half(a):
    return a.dtype.kind == "f" and a.dtype.itemsize < 4


def softmax(x, axis=-1):
    if _is_half(x):
        return softmax(x.astype("float32"), axis).astype(x.dtype)
    xp = get_array_module(x)
    z = x - x.max(axis=axis, keepdims=True)
    e = xp.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    if _is_half(x):
        return log_softmax(x.astype("float32"), axis).astype(x.dtype)
    xp = get_array_module(x)
    z = x - x.max(axis=axis, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=axis, keepdims=True))


def softmax_forward(x, axis=-1):
    y = softmax(x, axis)
    return y, (y, axis)


def softmax_backward(dy, cache):
    y, axis = cache
    if _is_half(dy):
        return softmax_backward(dy.astype("float32"), (y.astype("float32"), axis)).astype(dy.dtype)
    return y * (dy - (dy * y).sum(axis=axis, keepdims=True))


def log_softmax_forward(x, axis=-1):
    y = log_softmax(x, axis)
    return y, (y, axis)


def log_softmax_backward(dy, cache):
    y, axis = cache
    if _is_half(dy):
        return log_softmax_backward(dy.astype("float32"), (y.astype("float32"), axis)).astype(dy.dtype)
    xp = get_array_module(dy)
    return dy - xp.exp(y) * dy.sum(axis=axis, keepdims=True)
