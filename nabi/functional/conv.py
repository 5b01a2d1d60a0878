"""2-D convolution (cross-correlation, as every framework computes it) by im2col + GEMM.

Notation: input x (N, C, H, W); weight w (F, C, KH, KW); bias b (F,); stride (SH, SW);
zero padding (PH, PW); output y (N, F, OH, OW) with OH = ⌊(H − KH + 2PH)/SH⌋ + 1; P = OH·OW.

    y[n, f, i, j] = b[f] + Σ_c Σ_u Σ_v w[f, c, u, v] · x_pad[n, c, i·SH + u, j·SW + v]

im2col unrolls every receptive field into a column, so the sum over (c, u, v) is one
matrix product:  col (C·KH·KW, N·P),  W = w as (F, C·KH·KW),  y = W · col + b.
Backward, for the upstream gradient δ = ∂L/∂y taken as δ (F, N·P):

    ∂L/∂b = Σ_{n,i,j} δ          ∂L/∂W = δ · colᵀ          ∂L/∂x = col2im(Wᵀ · δ)

col2im is the adjoint of im2col (it sums each column entry back onto the pixel it was
copied from), so ∂L/∂x is the "full" convolution of the stride-dilated δ with the kernel
flipped by 180° (the loop version in ``conv_loops.py`` computes it that way).

This module is the readable convolution. The primitives (im2col, col2im and the moves
between (N, F, P) and the GEMM layout (F, N·P)) come from the implementation that serves
the arrays (``dispatch.for_arrays``: compiled CPU loops, CUDA kernels, or the array code
below). The layers run the same convolution through ``conv_fast``, which adds what makes a
training step fast: buffers kept between steps, batch chunks under a memory budget, a
fused ReLU and a fused SGD update.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ._checks import check_input
from .dispatch import for_arrays, reference
from .shape import output_hw, pair, same_padding
from .accumulate import sum_over


def conv2d_forward(x, w, b=None, stride=1, padding=0, layer="conv2d"):
    """y = conv2d(x, w) + b. x (N, C, H, W), w (F, C, KH, KW), b (F,) or None; stride an int
    or pair; padding an int, a pair, ``'same'`` or ``'valid'``. Returns ``(y, cache)``, y (N, F, OH, OW)."""
    geom = conv_geometry(x, w, stride, padding, layer)
    impl = for_arrays(x, w, b)
    N, F = x.shape[0], w.shape[0]
    col = impl.im2col(x, geom)                                   # (C·KH·KW, N·P)
    y = impl.from_gemm(w.reshape(F, -1) @ col, b, N)             # W·col + b → (N, F, P)
    return y.reshape(N, F, geom[6], geom[7]), (col, w, x.shape, geom, b is not None)


def conv2d_backward(dy, cache, need_dx=True):
    """Gradients of ``conv2d_forward``: dy (N, F, OH, OW) → ``(dx, dw, db)``; dx is None without
    ``need_dx``, db None for a convolution without bias."""
    col, w, x_shape, geom, has_bias = cache
    impl = for_arrays(dy, col, w)
    F = w.shape[0]
    dy_mat, db = impl.to_gemm(dy, need_db=has_bias)              # δ as (F, N·P), Σδ
    dw = (dy_mat @ col.T).reshape(w.shape)                       # ∂L/∂W = δ·colᵀ
    dx = impl.col2im(w.reshape(F, -1).T @ dy_mat, x_shape, geom) if need_dx else None   # col2im(Wᵀ·δ)
    return dx, dw, db


def conv_geometry(x, w, stride, padding, layer="conv2d"):
    """Check x and w; return ``geom`` = (KH, KW, SH, SW, PH, PW, OH, OW)."""
    check_input(x, 4, layer)
    if w.ndim != 4:
        raise ValueError(f"{layer}: weight must be (F, C, KH, KW), got shape {tuple(w.shape)}")
    F, C, kh, kw = w.shape
    if x.shape[1] != C:
        raise ValueError(f"{layer}: expected {C} input channels, got input of shape {tuple(x.shape)}")
    sh, sw = pair(stride, "stride")
    ph, pw = resolve_padding(padding, (kh, kw), (sh, sw), layer)
    oh, ow = output_hw(x.shape[2:], (kh, kw), (sh, sw), (ph, pw), layer=layer, x_shape=x.shape)
    return kh, kw, sh, sw, ph, pw, oh, ow


def resolve_padding(padding, kernel_size, stride, layer="conv2d"):
    """An int, a pair, ``'same'`` (stride 1, odd kernel) or ``'valid'`` → ``(PH, PW)``."""
    if isinstance(padding, str):
        if padding == "same":
            return same_padding(kernel_size, stride, layer=layer)
        if padding == "valid":
            return (0, 0)
        raise ValueError(f"{layer}: padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    return pair(padding, "padding")


# ---------------------------------------------------------------------------
# The primitives as array code (NumPy or CuPy): the reference implementation.
# ---------------------------------------------------------------------------
def pad_input(x, ph, pw, value=0.0):
    """Zero-pad (N, C, H, W) by PH rows and PW columns on each side."""
    xp = get_array_module(x)
    if ph == 0 and pw == 0:
        return xp.ascontiguousarray(x)
    return xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), mode="constant", constant_values=value)


@reference
def im2col(x, geom, out=None):
    """Unpadded x (N, C, H, W) → columns (C·KH·KW, N·OH·OW): row (c, u, v), column (n, i, j) holds
    x_pad[n, c, i·SH + u, j·SW + v]. A strided view of the padded input and one copy, no loop.
    (``out`` is accepted for the common signature and not used: the array code builds its own.)"""
    kh, kw, sh, sw, ph, pw, oh, ow = geom
    x_pad = pad_input(x, ph, pw)
    xp = get_array_module(x_pad)
    N, C = x_pad.shape[:2]
    if kh == 1 and kw == 1 and sh == 1 and sw == 1:
        return x_pad.transpose(1, 0, 2, 3).reshape(C, N * oh * ow)
    sN, sC, sH, sW = x_pad.strides
    shape, strides = (C, kh, kw, N, oh, ow), (sC, sH, sW, sN, sH * sh, sW * sw)
    if xp is np:
        view = np.lib.stride_tricks.as_strided(x_pad, shape=shape, strides=strides, writeable=False)
    else:
        view = xp.lib.stride_tricks.as_strided(x_pad, shape=shape, strides=strides)
    return view.reshape(C * kh * kw, N * oh * ow)


@reference
def col2im(col, x_shape, geom):
    """Adjoint of ``im2col``: columns (C·KH·KW, N·OH·OW) → (N, C, H, W) of the *unpadded* input,
    overlaps summed. Each kernel offset (u, v) adds its columns to the rows u + SH·i − PH (and
    columns alike) that fall inside the input; what lands on the padding is dropped. The loop
    runs over the KH·KW offsets only, never over pixels."""
    kh, kw, sh, sw, ph, pw, oh, ow = geom
    N, C, H, W = x_shape
    xp = get_array_module(col)
    if kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0:
        return col.reshape(C, N, oh, ow).transpose(1, 0, 2, 3)
    col = col.reshape(C, kh, kw, N, oh, ow)
    dx = xp.zeros((N, C, H, W), dtype=col.dtype)
    for u in range(kh):
        i0, i1 = _valid_range(u, sh, oh, ph, H)
        if i0 >= i1:
            continue
        r0 = u + sh * i0 - ph
        for v in range(kw):
            j0, j1 = _valid_range(v, sw, ow, pw, W)
            if j0 >= j1:
                continue
            c0 = v + sw * j0 - pw
            dx[:, :, r0:r0 + sh * (i1 - i0 - 1) + 1:sh, c0:c0 + sw * (j1 - j0 - 1) + 1:sw] += \
                col[:, u, v, :, i0:i1, j0:j1].transpose(1, 0, 2, 3)
    return dx


def _valid_range(u, s, o, p, size):
    """Output indices i in [i0, i1) whose input row u + s·i − p lies in [0, size)."""
    i0 = max(0, -((u - p) // s)) if u < p else 0
    i1 = min(o, (size - 1 + p - u) // s + 1) if size - 1 + p - u >= 0 else 0
    return i0, i1


@reference
def from_gemm(ymat, b, N, relu=False):
    """GEMM result (F, N·P) plus bias (F,) or None, then max(·, 0) with ``relu`` → contiguous (N, F, P)."""
    xp = get_array_module(ymat)
    F = ymat.shape[0]
    y = xp.ascontiguousarray(ymat.reshape(F, N, -1).transpose(1, 0, 2))
    if b is not None:
        y += b.reshape(1, F, 1)
    if relu:
        xp.maximum(y, 0, out=y)
    return y


@reference
def to_gemm(dy, relu_y=None, out=None, need_db=True):
    """δ (N, F, OH, OW), masked by [relu_y > 0] when given → (δ as (F, N·P), Σ_{n,i,j} δ (F,) or None)."""
    N, F = dy.shape[:2]
    if relu_y is not None:
        dy = dy * (relu_y > 0)
    db = sum_over(dy, (0, 2, 3)) if need_db else None
    if N == 1:
        return dy.reshape(F, -1), db
    return dy.transpose(1, 0, 2, 3).reshape(F, -1), db
