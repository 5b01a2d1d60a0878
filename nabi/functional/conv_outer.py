"""Convolution of few input channels (an image's 1–4) as outer products: no columns in the forward pass.

Notation as in ``conv.py``: x (N, C, H, W), w (F, C, KH, KW), zero padding (PH, PW), strides (SH, SW),
y (N, F, OH, OW). With the weights laid out as w_t[c, u, v, :] = w[:, c, u, v] (a vector over output channels),

    y[n, :, i, j] = b + Σ_c Σ_u Σ_v x_pad[n, c, i·SH + u, j·SW + v] · w_t[c, u, v, :]

is a sum of C·KH·KW outer products of one input value with one weight vector. A network's first layer has
C = 3: im2col's columns are then 3·KH·KW rows deep (147 for ResNet's 7×7 stride-2 stem), a matrix product too
shallow for BLAS to reach its speed, and the columns are 12.25 times the image. The compiled kernel
(``cpu_kernels.outer_forward``) keeps the sums of 32 output channels × 3 pixels of a row in 12 vector registers
while (c, u, v) run, each loaded weight vector feeding 3 multiply-adds: measured on 2 Zen 4 cores, ResNet's stem
at batch 16 of 160×160 took 16–17 ms against im2col's 28–36 (PyTorch's 11.5).

Backward, for δ = ∂L/∂y (masked by [y > 0] when a ReLU is fused):

    ∂w_t[c, u, v, :] = Σ_n Σ_i Σ_j x_pad[n, c, i·SH + u, j·SW + v] · δ[n, :, i, j]      ∂b = Σ δ

the same outer products, summed over pixels: δ is laid out pixel by pixel (channels last) once, and the compiled
kernel (``cpu_kernels.outer_weight_grad``) keeps 32 channels × 3 taps in 12 vector registers along a row's pixels.
∂L/∂x, where a layer computes it (a first layer does not), is im2col's col2im(Wᵀ·δ), which needs no columns of x.
The forward keeps nothing but x and w. Forward and gradients are checked against im2col's in float64
(``tests/test_conv_outer.py``), against PyTorch, and the layer by finite differences. Where the compiled kernels do
not serve (CuPy, float16, numba absent) the convolution runs im2col, this method's reference. ``conv_algo`` decides
per layer shape by measurement; ``NABI_CONV_ALGO=outer`` forces it wherever it applies.
"""
from __future__ import annotations

import numpy as np

from . import cpu_kernels as K

MAX_CHANNELS = 4
"""The method is offered (and timed) only for layers with at most this many input channels: deeper sums (C·KH·KW
rows of columns) make matrix products BLAS runs near its peak."""


def applies(x, w, geom) -> bool:
    """Whether the outer-product convolution computes this call: the compiled kernels serve x and w, of one float
    dtype (float32 or float64), with at most ``MAX_CHANNELS`` input channels."""
    return (K.enabled(x, w) and x.dtype == w.dtype and x.dtype in (np.float32, np.float64)
            and x.shape[1] <= MAX_CHANNELS)


class OuterCache:
    """What backward needs: x and w themselves (references, no copies: neither may change before backward), the
    geometry, and whether there is a bias."""

    __slots__ = ("x", "w", "geom", "has_bias")

    def __init__(self, x, w, geom, has_bias):
        self.x, self.w, self.geom, self.has_bias = x, w, geom, has_bias


def conv2d_forward(x, w, b, geom, relu=False):
    """y = conv2d(x, w) + b [then max(·, 0) with ``relu``] for any ``geom`` (``conv.conv_geometry``). Returns
    ``(y, cache)``, y (N, F, OH, OW)."""
    return K.outer_forward(x, w, b, geom, relu), OuterCache(x, w, geom, b is not None)


def weight_gradients(dy, cache, relu_y=None, dw_out=None):
    """(∂L/∂w, ∂L/∂b or None) of ``conv2d_forward`` for δ = ``dy`` (masked by [relu_y > 0] when given); ∂L/∂w into
    ``dw_out`` when given. (∂L/∂x is ``conv_fast``'s: im2col's col2im(Wᵀ·δ).)"""
    return K.outer_weight_grad(cache.x, dy, cache.geom, relu_y, need_db=cache.has_bias, out=dw_out)
