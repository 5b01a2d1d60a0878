"""Convolution computed directly on the padded input planes: no im2col columns (stride 1 below; larger strides on
phase planes, see ``strided``).

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
    """Whether the direct convolution computes this call: the compiled kernels serve x and w, and at most
    ``MAX_CHANNELS`` channels in and out (any stride: see ``strided``)."""
    return (K.enabled(x, w) and x.dtype == w.dtype
            and x.shape[1] <= MAX_CHANNELS and w.shape[0] <= MAX_CHANNELS)


def strided(geom) -> bool:
    """Whether a stride is above 1. Then the padded input is cut into SH·SW phase planes
    (``cpu_kernels.direct_phase_pad``), on which every tap is again a shifted run — output (i, j) at i·Wq + j, tap
    (u, v) in phase (u mod SH, v mod SW) at (i + u // SH, j + v // SW) — so the forward and ∂L/∂w kernels run
    unchanged; ∂L/∂x is one stride-1 ∂L/∂x per phase of the padded input, with the taps that read that phase
    (``input_gradient``)."""
    return geom[2] != 1 or geom[3] != 1


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
    """y = conv2d(x, w) + b [then max(·, 0) with ``relu``] for ``geom`` (``conv.conv_geometry``; any stride).

    ``buffer(name, shape, dtype)``: a buffer to fill, or None (``conv_fast`` hands out its shared scratch this way);
    the padded planes die within the call. Returns ``(y, cache)``, y (N, F, OH, OW)."""
    buffer = buffer or _no_buffer
    if strided(geom):
        y = K.direct_strided_forward(_phases(x, geom, buffer), w, b, geom, relu)
    else:
        y = K.direct_forward(_padded(x, geom, buffer), w, b, geom, relu)
    return y, DirectCache(x, w, geom, b is not None)


def _phases(x, geom, buffer):
    N, C = x.shape[:2]
    return K.direct_phase_pad(x, geom, out=buffer("direct_pad", (N, C, K.direct_phase_layout(geom)[2]), x.dtype))


def weight_gradients(dy, cache, relu_y=None, dw_out=None, buffer=None):
    """(∂L/∂w, ∂L/∂b or None) of a strided ``conv2d_forward`` (``strided``) for δ = ``dy`` (masked by [relu_y > 0]
    when given); ∂L/∂w into ``dw_out`` when given."""
    return K.direct_strided_weight_grad(dy, _phases(cache.x, cache.geom, buffer or _no_buffer), cache.w.shape,
                                        cache.geom, relu_y, need_db=cache.has_bias, out=dw_out)


def input_gradient(dy, cache, relu_y=None, buffer=None):
    """∂L/∂x of a strided ``conv2d_forward`` (``strided``) for δ = ``dy`` (masked by [relu_y > 0] when given): per
    phase (a, b) of the padded input, the forward kernel on δ with the sub-kernel w[:, :, a::SH, b::SW] flipped and
    its channels swapped (``cpu_kernels.direct_strided_input_grad``). Against col2im(Wᵀ·δ), alternated on 2 Zen 4
    cores: the patch descriptor's 8→16 and 16→32 stride-2 layers at batch 512 14.3 → 10.1 and 11.0 → 5.2 ms (their
    whole training steps 28.5 → 26.1 and 20.6 → 18.5 ms), ResNet's 7×7 stem at batch 32 8.4 → 5.8 ms."""
    return K.direct_strided_input_grad(dy, cache.w, cache.x.shape, cache.geom, relu_y, buffer=buffer or _no_buffer)


def conv2d_backward(dy, cache, need_dx=True, dw_out=None, relu_y=None, consume=False, buffer=None):
    """Gradients of a stride-1 ``conv2d_forward``: ``(dx, dw, db)``; dx None without ``need_dx``, db None without a
    bias (strided: ``weight_gradients`` and ``input_gradient``, which ``conv_fast`` calls).
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
