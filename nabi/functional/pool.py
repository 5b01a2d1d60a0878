"""Max and average pooling over KH×KW windows, and adaptive average pooling.

Input x (N, C, H, W) → y (N, C, OH, OW), with OH from ``shape.output_size``
(floor, or ceil with ``ceil_mode``; windows may overlap, as AlexNet's 3×3
stride 2). Each kernel offset (u, v) is one strided slice of the padded input;
the ops loop over the KH·KW offsets, never over pixels.

Max:      y[n,c,i,j] = max_{u,v} x_pad[n,c,i·SH+u, j·SW+v]     (padding = −∞)
          backward sends δ[n,c,i,j] to the argmax of its window only. Ties go to
          the first maximum in row-major window order (as PyTorch's CPU kernel).
          Overlapping windows that share a maximum each add their own δ to it:
          every input gets Σ of δ over the windows whose argmax it is, no more.
          (The compiled CPU kernel records the argmax in forward instead; it also
          sends the gradient of a NaN window to its NaN, where this code sends none.)
Average:  y[n,c,i,j] = (1/D_ij) Σ_{u,v} x_pad[n,c,i·SH+u, j·SW+v]
          D_ij = window cells inside the zero-padded input (``count_include_pad``,
          PyTorch's default) or inside the unpadded input otherwise; cells that ceil
          mode adds beyond the padding never count.
          backward: δ[n,c,i,j]/D_ij to every cell of the window.
          float16 input: the window sums (and adaptive means) accumulate in float32,
          then y is cast back (KH·KW float16 values overflow a float16 sum long
          before their mean does).
"""
from __future__ import annotations

from ..backend import get_array_module
from ._checks import check_input
from .dispatch import for_arrays, reference
from .shape import output_hw, pair


def _geometry(x, kernel_size, stride, padding, ceil_mode, layer):
    kh, kw = pair(kernel_size, "kernel_size")
    sh, sw = pair(stride if stride is not None else (kh, kw), "stride")
    ph, pw = pair(padding, "padding")
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"{layer}: padding {(ph, pw)} must be at most half the kernel size {(kh, kw)}")
    H, W = x.shape[2:]
    oh, ow = output_hw((H, W), (kh, kw), (sh, sw), (ph, pw), ceil_mode, layer=layer, x_shape=x.shape)
    # Extra cells on the bottom/right that ceil mode's last window reaches past the padding.
    eh = max(0, (oh - 1) * sh + kh - (H + 2 * ph))
    ew = max(0, (ow - 1) * sw + kw - (W + 2 * pw))
    return kh, kw, sh, sw, ph, pw, oh, ow, eh, ew


def _pad(x, ph, pw, eh, ew, value):
    xp = get_array_module(x)
    if ph == pw == eh == ew == 0:
        return xp.ascontiguousarray(x)
    return xp.pad(x, ((0, 0), (0, 0), (ph, ph + eh), (pw, pw + ew)), mode="constant", constant_values=value)


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False, layer="max_pool2d"):
    """Returns ``(y, cache)``; y (N, C, OH, OW). A NaN in a window reaches the output, as in PyTorch."""
    check_input(x, 4, layer)
    g = _geometry(x, kernel_size, stride, padding, ceil_mode, layer)
    impl = for_arrays(x)
    y, state = impl.max_pool(x, g)
    return y, (impl, state, x.shape, g)


def max_pool2d_backward(dy, cache):
    """dx at each window's maximum += δ of that window; returns dx (N, C, H, W)."""
    impl, state, x_shape, g = cache
    return impl.max_pool_backward(dy, state, x_shape, g)


@reference
def max_pool(x, g):
    """y = a running ``maximum`` over the KH·KW window offsets, each a strided slice of the padded
    input. No index array is built: backward finds the maxima again by comparing with y, so the
    state kept is (x_pad, y). (The compiled implementations record each window's argmax instead.)"""
    kh, kw, sh, sw, ph, pw, oh, ow, eh, ew = g
    xp = get_array_module(x)
    x_pad = _pad(x, ph, pw, eh, ew, -xp.inf)
    y = _window_reduce(x_pad, kh, kw, sh, sw, oh, ow, xp.maximum)
    return y, (x_pad, y)


@reference
def max_pool_backward(dy, state, x_shape, g):
    """Offsets are visited in row-major window order and a ``taken`` mask keeps only the first
    cell equal to the maximum, so a tie sends δ to one cell, never two. Overlapping windows add
    their own δ to a shared maximum. A window whose maximum is NaN passes no gradient."""
    x_pad, y = state
    kh, kw, sh, sw, ph, pw, oh, ow, eh, ew = g
    xp = get_array_module(dy)
    N, C, H, W = x_shape
    dx_pad = xp.zeros(x_pad.shape, dtype=dy.dtype)
    overlap = kh > sh or kw > sw
    taken = xp.zeros(y.shape, dtype=bool)
    for u in range(kh):
        for v in range(kw):
            hit = x_pad[:, :, u:u + sh * oh:sh, v:v + sw * ow:sw] == y
            hit &= ~taken
            taken |= hit
            target = dx_pad[:, :, u:u + sh * oh:sh, v:v + sw * ow:sw]
            if overlap:
                target += dy * hit
            else:
                xp.multiply(dy, hit, out=target)
    return dx_pad[:, :, ph:ph + H, pw:pw + W]


def _avg_divisor(xp, H, W, g, count_include_pad, dtype):
    kh, kw, sh, sw, ph, pw, oh, ow, eh, ew = g
    ones = xp.zeros((1, 1, H + 2 * ph + eh, W + 2 * pw + ew), dtype=dtype)
    if count_include_pad:
        ones[:, :, :H + 2 * ph, :W + 2 * pw] = 1
    else:
        ones[:, :, ph:ph + H, pw:pw + W] = 1
    return _window_reduce(ones, kh, kw, sh, sw, oh, ow, xp.add)      # (1, 1, OH, OW)


def _window_reduce(x_pad, kh, kw, sh, sw, oh, ow, op):
    """op-reduce (``maximum`` or ``add``) each KH×KW window: one strided slice per kernel offset,
    combined in place into the (N, C, OH, OW) result."""
    y = None
    for u in range(kh):
        for v in range(kw):
            s = x_pad[:, :, u:u + sh * oh:sh, v:v + sw * ow:sw]
            if y is None:
                y = s.copy()
            else:
                op(y, s, out=y)
    return y


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                       layer="avg_pool2d"):
    """Returns ``(y, cache)``; y (N, C, OH, OW)."""
    xp = check_input(x, 4, layer)
    if x.dtype.kind == "f" and x.dtype.itemsize < 4:
        y, cache = avg_pool2d_forward(x.astype("float32"), kernel_size, stride, padding, ceil_mode,
                                      count_include_pad, layer)
        return y.astype(x.dtype), cache
    g = _geometry(x, kernel_size, stride, padding, ceil_mode, layer)
    kh, kw, sh, sw, ph, pw, oh, ow, eh, ew = g
    x_pad = _pad(x, ph, pw, eh, ew, 0.0)
    div = _avg_divisor(xp, x.shape[2], x.shape[3], g, count_include_pad, x.dtype)
    y = _window_reduce(x_pad, kh, kw, sh, sw, oh, ow, xp.add)
    y /= div
    return y, (div, x.shape, g)


def avg_pool2d_backward(dy, cache):
    div, x_shape, (kh, kw, sh, sw, ph, pw, oh, ow, eh, ew) = cache
    xp = get_array_module(dy)
    N, C, H, W = x_shape
    g = dy / div
    dx_pad = xp.zeros((N, C, H + 2 * ph + eh, W + 2 * pw + ew), dtype=dy.dtype)
    for u in range(kh):
        for v in range(kw):
            dx_pad[:, :, u:u + sh * oh:sh, v:v + sw * ow:sw] += g
    return dx_pad[:, :, ph:ph + H, pw:pw + W]


def _adaptive_bounds(size, out):
    """PyTorch's bins: start = ⌊i·S/O⌋, end = ⌈(i+1)·S/O⌉."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def adaptive_avg_pool2d_forward(x, output_size, layer="adaptive_avg_pool2d"):
    """Average over adaptive bins so the output is exactly ``output_size`` (OH, OW).

    ``output_size=1`` is global average pooling: y[n,c] = mean_{h,w} x[n,c,h,w].
    """
    xp = check_input(x, 4, layer)
    oh, ow = pair(output_size, "output_size")
    N, C, H, W = x.shape
    if x.dtype.kind == "f" and x.dtype.itemsize < 4:
        y, cache = adaptive_avg_pool2d_forward(x.astype("float32"), output_size, layer)
        return y.astype(x.dtype), cache
    if (oh, ow) == (1, 1):
        y = x.mean(axis=(2, 3), keepdims=True)
    elif H % oh == 0 and W % ow == 0:
        y = x.reshape(N, C, oh, H // oh, ow, W // ow).mean(axis=(3, 5))
    else:
        y = xp.empty((N, C, oh, ow), dtype=x.dtype)
        for i, (h0, h1) in enumerate(_adaptive_bounds(H, oh)):
            for j, (w0, w1) in enumerate(_adaptive_bounds(W, ow)):
                y[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return y, (x.shape, (oh, ow))


def adaptive_avg_pool2d_backward(dy, cache):
    x_shape, (oh, ow) = cache
    xp = get_array_module(dy)
    N, C, H, W = x_shape
    if (oh, ow) == (1, 1):
        return xp.broadcast_to(dy / (H * W), x_shape).copy()
    if H % oh == 0 and W % ow == 0:
        kh, kw = H // oh, W // ow
        g = (dy / (kh * kw))[:, :, :, None, :, None]
        return xp.broadcast_to(g, (N, C, oh, kh, ow, kw)).reshape(x_shape).copy()
    dx = xp.zeros(x_shape, dtype=dy.dtype)
    for i, (h0, h1) in enumerate(_adaptive_bounds(H, oh)):
        for j, (w0, w1) in enumerate(_adaptive_bounds(W, ow)):
            dx[:, :, h0:h1, w0:w1] += (dy[:, :, i, j] / ((h1 - h0) * (w1 - w0)))[:, :, None, None]
    return dx
