"""Stride-1 convolution computed directly on the padded input planes: no im2col columns.

Notation as in ``conv.py``: x (N, C, H, W), w (F, C, KH, KW), zero padding (PH, PW), stride 1, y (N, F, OH, OW).
Pad each input plane once and read it flat: x_pad (N, C, Hp·Wp), Hp = H + 2PH, Wp = W + 2PW. Output (i, j) sits at
flat position k = i·Wp + j and kernel tap (u, v) at offset o = u·Wp + v, so

    y[n, f, k] = b[f] + Σ_c Σ_u Σ_v w[f, c, u, v] · x_pad[n, c, k + o(u, v)]          for k < L = (OH − 1)·Wp + OW

is a sum of C·KH·KW shifted runs of one plane (the Wp − OW positions past each row's end are not computed: each
output row is read in vectors of 8 columns). Backward, with δ widened the same way and M = (KH − 1)·Wp + KW − 1 zeros
before it (δ_w[n, f, M + i·Wp + j] = δ[n, f, i, j], zero past each row's end):

    ∂x_pad[n, c, m] = Σ_f Σ_u Σ_v w[f, c, KH−1−u, KW−1−v] · δ_w[n, f, m + o(u, v)]    (read at the unpadded m)
    ∂w[f, c, u, v] = Σ_n Σ_k δ_w[n, f, M + k] · x_pad[n, c, k + o(u, v)]
    ∂b[f] = Σ δ[n, f, ·, ·]

so ∂L/∂x is the forward sum itself, on δ with the kernel flipped and its channels swapped.

Nothing is kept between forward and backward but x and w themselves (backward pads x again: one pass over it),
against im2col's columns of KH·KW times the input. Where it pays: thin layers (a few to a few dozen channels, as in
a patch-descriptor network), whose matrix products are too thin for BLAS to reach its speed while im2col's
columns are 9× the activation. ``conv_algo`` decides per layer shape by measurement; ``NABI_CONV_ALGO=direct``
forces it wherever it applies.

The loops are the compiled CPU kernels ``cpu_kernels.direct_*`` (NumPy float32/float64, numba), register-blocked:
forward and ∂x keep the sums of 4 output channels × 16 outputs in 8 vector registers (``cpu_kernels.vec_*``) — × 32
outputs in 16 where the CPU has 32 vector registers (``cpu_kernels.DIRECT_VECTORS``) — while the sum over input
channels and taps runs through them, so each loaded input vector feeds 4 multiply-adds; ∂w keeps 4 output channels ×
3 taps. There is no array version: where the kernels do not serve (CuPy, float16, numba absent)
the convolution runs im2col, which is this method's reference (``tests/test_conv_direct.py``: equal to it and to
the sums above written in NumPy, in float64 to 1e-11; finite differences; PyTorch).
"""
from __future__ import annotations

import numpy as np

from . import cpu_kernels as K

MAX_CHANNELS = 64
"""The method is offered (and timed) only for layers with at most this many input and output channels: wider
layers give BLAS and Winograd matrices they run near their peak (at 64 channels the three are already close: a
64→64 16×16 training step at batch 32 took 29 ms of CPU time on 2 Zen 3 cores against Winograd's 23 and im2col's
35), and timing it there would only lengthen the first step."""


def applies(x, w, geom) -> bool:
    """Whether the direct convolution computes this call: stride 1, the compiled kernels serve x and w, and at most
    ``MAX_CHANNELS`` channels in and out."""
    sh, sw = geom[2], geom[3]
    return (sh == 1 and sw == 1 and K.enabled(x, w) and x.dtype == w.dtype
            and x.shape[1] <= MAX_CHANNELS and w.shape[0] <= MAX_CHANNELS)


class DirectCache:
    """What backward needs: x and w themselves (references, no copies: neither may change before backward), the
    geometry, and whether there is a bias."""

    __slots__ = ("x", "w", "geom", "has_bias")

    def __init__(self, x, w, geom, has_bias):
        self.x, self.w, self.geom, self.has_bias = x, w, geom, has_bias


def _no_buffer(name, shape, dtype):
    return None


def _padded(x, geom, buffer):
    kh, kw, sh, sw, ph, pw = geom[:6]
    N, C, H, W = x.shape
    P = K.direct_plane_length(H + 2 * ph, W + 2 * pw)
    return K.direct_pad(x, ph, pw, out=buffer("direct_pad", (N, C, P), x.dtype))


def conv2d_forward(x, w, b, geom, relu=False, buffer=None):
    """y = conv2d(x, w) + b [then max(·, 0) with ``relu``] for a stride-1 ``geom`` (``conv.conv_geometry``).

    ``buffer(name, shape, dtype)``: a buffer to fill, or None (``conv_fast`` hands out its shared scratch this way);
    the padded planes die within the call. Returns ``(y, cache)``, y (N, F, OH, OW)."""
    buffer = buffer or _no_buffer
    y = K.direct_forward(_padded(x, geom, buffer), w, b, geom, relu)
    return y, DirectCache(x, w, geom, b is not None)


def conv2d_backward(dy, cache, need_dx=True, dw_out=None, relu_y=None, consume=False, buffer=None):
    """Gradients of ``conv2d_forward``: ``(dx, dw, db)``; dx None without ``need_dx``, db None without a bias.
    ``relu_y``: the output of a ReLU fused after the convolution (δ is masked by [y > 0] first); ``dw_out``: a
    buffer shaped like w for ∂L/∂w. (``consume`` is accepted for ``conv_fast``'s signature.)"""
    return _gradients(dy, cache, need_dx, relu_y, buffer or _no_buffer, dw_out)


def conv2d_sgd_backward(dy, cache, w, b, lr, need_dx=True, relu_y=None, buffer=None):
    """Backward fused with plain SGD: dx with the old weights, then w ← w − lr·∂L/∂w, b ← b − lr·Σδ in place."""
    dw_buf = buffer("dw", tuple(w.shape), w.dtype) if buffer else None
    dx, dw, db = _gradients(dy, cache, need_dx, relu_y, buffer or _no_buffer, dw_buf)
    w -= w.dtype.type(lr) * dw
    if b is not None and db is not None:
        b -= b.dtype.type(lr) * db
    return dx


def _gradients(dy, cache, need_dx, relu_y, buffer, dw_out):
    x, w, geom = cache.x, cache.w, cache.geom
    N, F = dy.shape[:2]
    g, db = K.direct_widen(dy, geom, x.shape, relu_y, need_db=cache.has_bias,
                           out=buffer("direct_dy", (N, F, K.direct_delta_layout(geom, x.shape)[1]), dy.dtype))
    dw = K.direct_weight_grad(g, _padded(x, geom, buffer), w.shape, geom, out=dw_out)
    dx = K.direct_input_grad(g, w, x.shape, geom) if need_dx else None
    return dx, dw, db
