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

Backward is im2col's, on columns rebuilt from x a chunk of images at a time (as ``conv_fast`` does for a first
layer's large columns): the forward keeps nothing but x and w. So ∂L/∂x, ∂L/∂w and ∂L/∂b are exactly im2col's,
and the forward is checked against im2col's in float64 (``tests/test_conv_outer.py``), against PyTorch, and the
layer by finite differences. Where the compiled kernels do not serve (CuPy, float16, numba absent) the
convolution runs im2col, this method's reference. ``conv_algo`` decides per layer shape by measurement;
``NABI_CONV_ALGO=outer`` forces it wherever it applies.
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


def conv2d_forward(x, w, b, geom, relu=False):
    """y = conv2d(x, w) + b [then max(·, 0) with ``relu``] for any ``geom`` (``conv.conv_geometry``): y (N, F, OH, OW).
    The caller keeps what backward needs (``conv_fast``: x and w, for im2col's backward)."""
    return K.outer_forward(x, w, b, geom, relu)
