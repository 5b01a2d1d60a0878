"""2-D convolution (cross-correlation, as every framework computes it) by im2col + GEMM.

Notation: input x (N, C, H, W); weight w (F, C, KH, KW); bias b (F,);
stride (SH, SW); zero padding (PH, PW); output y (N, F, OH, OW) with
OH = ⌊(H − KH + 2PH)/SH⌋ + 1 (``shape.output_size``).

    y[n, f, i, j] = b[f] + Σ_c Σ_u Σ_v w[f, c, u, v] · x_pad[n, c, i·SH + u, j·SW + v]

Backward, for an upstream gradient δ = ∂L/∂y:

    ∂L/∂b[f]          = Σ_{n,i,j} δ[n, f, i, j]
    ∂L/∂w[f, c, u, v] = Σ_{n,i,j} δ[n, f, i, j] · x_pad[n, c, i·SH + u, j·SW + v]
    ∂L/∂x_pad         = the "full" convolution of δ (dilated by the stride) with the
                        kernel flipped by 180° (seed 004), which im2col computes as
                        col2im(wᵀ · δ).

im2col unrolls every receptive field into a column, so the sum over (c, u, v)
becomes one matrix product: y = W · col with W (F, C·KH·KW) and
col (C·KH·KW, N·OH·OW). Columns are built with a strided view and one copy,
no Python loop over pixels; col2im loops only over the KH×KW kernel offsets.

Buffers: a ``Conv2d`` in training passes a ``workspace`` (a dict it keeps between steps) in
which the compiled path builds the columns, the forward GEMM result and δ in GEMM layout,
and backward writes wᵀ·δ over the columns once ∂L/∂w is done. Fresh multi-megabyte arrays
every step cost the operating system's page faults and cold caches: on 2 cores this took
cifar_cnn's training step from 1.45× to 1.12× PyTorch's time. Eval-mode forwards use the
thread's shared ``scratch()`` instead.
"""
from __future__ import annotations

import threading

import numpy as np

from ..backend import get_array_module
from . import cpu_kernels as K
from . import gpu_kernels as G
from ._checks import check_input
from .blas import gemm_inplace, matmul_into
from .shape import output_hw, pair, same_padding


def resolve_padding(padding, kernel_size, stride, layer="conv2d"):
    """An int, a pair, or ``'same'`` (stride 1, odd kernel) → ``(PH, PW)``."""
    if isinstance(padding, str):
        if padding == "same":
            return same_padding(kernel_size, stride, layer=layer)
        if padding == "valid":
            return (0, 0)
        raise ValueError(f"{layer}: padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    return pair(padding, "padding")


def _strided(xp, a, shape, strides):
    if xp is np:
        return np.lib.stride_tricks.as_strided(a, shape=shape, strides=strides, writeable=False)
    return xp.lib.stride_tricks.as_strided(a, shape=shape, strides=strides)


def pad_input(x, ph, pw, value=0.0):
    """Zero-pad (N, C, H, W) by PH rows and PW columns on each side."""
    xp = get_array_module(x)
    if ph == 0 and pw == 0:
        return xp.ascontiguousarray(x)
    return xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), mode="constant", constant_values=value)


def im2col(x_pad, kh, kw, sh, sw, oh, ow):
    """Padded input (N, C, Hp, Wp) → columns (C·KH·KW, N·OH·OW).

    Row (c, u, v), column (n, i, j) holds x_pad[n, c, i·SH + u, j·SW + v].
    """
    xp = get_array_module(x_pad)
    N, C = x_pad.shape[:2]
    if kh == 1 and kw == 1 and sh == 1 and sw == 1:
        return x_pad.transpose(1, 0, 2, 3).reshape(C, N * oh * ow)
    sN, sC, sH, sW = x_pad.strides
    view = _strided(xp, x_pad, (C, kh, kw, N, oh, ow), (sC, sH, sW, sN, sH * sh, sW * sw))
    return view.reshape(C * kh * kw, N * oh * ow)


def col2im(col, x_pad_shape, kh, kw, sh, sw, oh, ow, padding=(0, 0)):
    """Adjoint of ``im2col``: columns (C·KH·KW, N·OH·OW) → (N, C, H, W), summing overlaps.

    The result is the gradient of the *unpadded* input: H = Hp − 2·PH. Each kernel
    offset (u, v) adds its columns to the rows u + SH·i − PH (and columns alike)
    that fall inside the input; contributions to the zero padding are dropped, so
    no padded buffer is built and cropped.
    """
    xp = get_array_module(col)
    N, C, Hp, Wp = x_pad_shape
    ph, pw = padding
    H, W = Hp - 2 * ph, Wp - 2 * pw
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


COL_BUDGET_BYTES = 256 * 2**20
"""Largest im2col matrix built at once. Above it the batch is processed in chunks and
the columns are rebuilt in backward from the padded input (VGG-16's second layer at
224×224, batch 32, would otherwise need 3.7 GB of columns)."""


def _batch_chunks(N, per_sample_bytes):
    n = max(1, int(COL_BUDGET_BYTES // max(per_sample_bytes, 1)))
    return [(a, min(N, a + n)) for a in range(0, N, n)]


def workspace_buffer(workspace, name, shape, dtype):
    """A buffer kept in ``workspace`` (a ``Workspace`` a layer owns across steps, or any dict),
    made or remade when its shape or dtype changes; None without a workspace or over its
    ``limit``. Only compiled-kernel (NumPy) paths use one, for arrays they fill completely."""
    if workspace is None:
        return None
    buf = workspace.get(name)
    if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype:
        limit = getattr(workspace, "limit", None)
        if limit is not None and int(np.prod(shape)) * np.dtype(dtype).itemsize > limit:
            return None
        buf = workspace[name] = np.empty(shape, dtype=dtype)
    return buf


WORKSPACE_MAX_BYTES = 64 * 2**20
"""Largest buffer a ``Workspace`` keeps: above it a call allocates afresh (such layers are dominated
by their GEMM, so page faults matter little there), which bounds what layers and threads hold."""

_scratch = threading.local()


def scratch():
    """This thread's buffers for calls whose results keep no reference to them (an eval-mode
    forward): shared by every layer, so an inference pass faults in no fresh pages per layer."""
    d = getattr(_scratch, "buffers", None)
    if d is None:
        d = _scratch.buffers = Workspace()
    return d


def release_scratch():
    """Free this thread's scratch buffers (they are otherwise kept for the next inference pass)."""
    _scratch.buffers = None


class Workspace(dict):
    """Named buffers kept between calls (``workspace_buffer``); one over ``limit`` bytes
    (``WORKSPACE_MAX_BYTES``) is not kept: the call allocates a fresh array instead."""
    limit = WORKSPACE_MAX_BYTES


def _kernels(*arrays):
    """The compiled kernels that serve these arrays (None entries are skipped): the CPU ones
    (``K``) for NumPy arrays, the CUDA ones (``G``) for CuPy arrays, else None (array code)."""
    arrays = [a for a in arrays if a is not None]
    return K if K.enabled(*arrays) else G if G.enabled(*arrays) else None


def _columns(x, geom, workspace=None):
    """im2col of the unpadded x (N, C, H, W): a compiled kernel pads on the fly (on the CPU into
    the workspace's ``col`` buffer when given); the array code pads first."""
    kh, kw, sh, sw, ph, pw, oh, ow = geom
    kern = _kernels(x)
    if kern is not None:
        shape = (x.shape[1] * kh * kw, x.shape[0] * oh * ow)
        return kern.im2col(x, geom, out=workspace_buffer(workspace, "col", shape, x.dtype) if kern is K else None)
    return im2col(pad_input(x, ph, pw), kh, kw, sh, sw, oh, ow)


def _reusable_columns(cache):
    """The column matrix of a forward cache when it is a buffer of its own (not a view of the
    input: NumPy's 1×1 columns at batch 1 are), so backward may write over it — else None."""
    col = cache[0]
    if type(col) is not np.ndarray:          # None (chunked), or CuPy (its memory pool already reuses)
        return None
    return col if col.flags.owndata and col.flags.writeable else None


def _forward_gemm(w_mat, col, b, workspace):
    """w_mat (F, K) · col (K, P) → (F, P); into the workspace's ``gemm`` buffer when ``_to_nchw``
    takes the compiled path (which copies it out, so the buffer is free again at once)."""
    if workspace is not None and _kernels(col, w_mat, b) is K:
        out = workspace_buffer(workspace, "gemm", (w_mat.shape[0], col.shape[1]), np.result_type(w_mat, col))
        return np.matmul(w_mat, col, out=out)
    return w_mat @ col


def _to_nchw(y_mat, b, N, oh, ow, relu=False):
    """GEMM result (F, N·OH·OW) plus bias (then ReLU) → contiguous (N, F, OH, OW)."""
    F = y_mat.shape[0]
    kern = _kernels(y_mat, b)
    if kern is not None:                                       # one compiled pass for layout, bias and ReLU
        return kern.from_gemm(y_mat, b, N, relu).reshape(N, F, oh, ow)
    xp = get_array_module(y_mat)
    y = xp.ascontiguousarray(y_mat.reshape(F, N, oh, ow).transpose(1, 0, 2, 3))
    if b is not None:
        y += b.reshape(1, F, 1, 1)
    if relu:
        xp.maximum(y, 0, out=y)
    return y


def conv2d_forward(x, w, b=None, stride=1, padding=0, layer="conv2d", relu=False, workspace=None):
    """y = conv2d(x, w) + b, or max(conv2d(x, w) + b, 0) with ``relu`` (a fused ReLU).

    Inputs: x (N, C, H, W); w (F, C, KH, KW); b (F,) or None; stride int or pair;
    padding int, pair or ``'same'``. ``workspace``: a dict of buffers a layer keeps between
    steps (``workspace_buffer``): the columns and the GEMM result are built in them, so no
    fresh pages are faulted in each step. The columns stay in the cache until backward.
    Returns ``(y, cache)`` with y (N, F, OH, OW).
    """
    xp = check_input(x, 4, layer)
    if w.ndim != 4:
        raise ValueError(f"{layer}: weight must be (F, C, KH, KW), got shape {tuple(w.shape)}")
    F, C, kh, kw = w.shape
    if x.shape[1] != C:
        raise ValueError(f"{layer}: expected {C} input channels, got input of shape {tuple(x.shape)}")
    sh, sw = pair(stride, "stride")
    ph, pw = resolve_padding(padding, (kh, kw), (sh, sw), layer)
    N, _, H, W = x.shape
    oh, ow = output_hw((H, W), (kh, kw), (sh, sw), (ph, pw), layer=layer, x_shape=x.shape)
    geom = (kh, kw, sh, sw, ph, pw, oh, ow)
    x = xp.ascontiguousarray(x)
    w_mat = w.reshape(F, -1)
    chunks = _batch_chunks(N, C * kh * kw * oh * ow * x.dtype.itemsize)
    if len(chunks) == 1:
        col = _columns(x, geom, workspace)                     # (C·KH·KW, N·OH·OW)
        y = _to_nchw(_forward_gemm(w_mat, col, b, workspace), b, N, oh, ow, relu)   # (N, F, OH, OW)
        return y, (col, w, x.shape, geom, b is not None, None)
    y = xp.empty((N, F, oh, ow), dtype=xp.result_type(x, w))
    for a, e in chunks:
        y[a:e] = _to_nchw(w_mat @ _columns(x[a:e], geom), b, e - a, oh, ow, relu)
    return y, (None, w, x.shape, geom, b is not None, (x, chunks))


def _column_chunks(cache):
    """Yield ``(a, e, col)``: the columns of samples a..e (all of them when not chunked)."""
    col, w, x_shape, geom, has_bias, chunked = cache
    if chunked is None:
        yield 0, x_shape[0], col
        return
    x, chunks = chunked
    for a, e in chunks:
        yield a, e, _columns(x[a:e], geom)


def conv2d_backward(dy, cache, need_dx=True, dw_out=None, relu_y=None, consume=False, workspace=None):
    """Gradients of ``conv2d_forward``.

    Inputs: dy (N, F, OH, OW). Returns ``(dx, dw, db)``: dx (N, C, H, W) or None
    when ``need_dx`` is False (a network's first layer), dw like w, db (F,) or None.
    ``dw_out``: a buffer shaped like w to write ∂L/∂w into. ``relu_y``: the output of a
    ReLU that followed this convolution; dy is then the ReLU's upstream gradient and is
    masked by [y > 0] on its way into the GEMM layout (the ReLU's backward, fused).
    ``consume``: the cache is used once (a layer's): once ∂L/∂w is done, wᵀ·δ is written
    over the columns instead of into a fresh matrix of the same size. ``workspace``: the
    layer's buffers (see ``conv2d_forward``); δ in GEMM layout goes into its ``gemm`` buffer.
    """
    _, w, x_shape, geom, has_bias, _ = cache
    F = w.shape[0]
    xp = get_array_module(dy)
    dw = dw_out if dw_out is not None else xp.empty(w.shape, dtype=xp.result_type(dy, w))
    dw_mat = dw.reshape(F, -1)
    parts, db = [], None
    single = cache[5] is None
    for a, e, col in _column_chunks(cache):
        dy_mat, db_part = _dy_matrix(dy[a:e], geom, has_bias, _rows(relu_y, a, e),   # (F, n·OH·OW), (F,)
                                     workspace if single else None)
        if not parts:
            _weight_grad(dy_mat, col, dw_mat)
            db = db_part
        else:
            dw_mat += dy_mat @ col.T
            if has_bias:
                db += db_part
        spare = _reusable_columns(cache) if consume else None
        parts.append(_conv_input_grad(dy_mat, w, (e - a,) + tuple(x_shape[1:]), geom, spare) if need_dx else None)
    return (_join(parts, xp) if need_dx else None), dw, db


def _weight_grad(dy_mat, col, out):
    """out (F, K) = δ (F, P) · colᵀ (P, K). For P ≫ K (many small images) OpenBLAS is faster at
    col · δᵀ (K, F), transposed into ``out`` (measured: 15–25 % on CIFAR-sized layers)."""
    xp = get_array_module(col)
    if xp is np and col.shape[1] > 8 * col.shape[0]:
        out[...] = (col @ dy_mat.T).T
    else:
        xp.matmul(dy_mat, col.T, out=out)


def _join(parts, xp):
    """The batch chunks' input gradients as one contiguous (N, C, H, W) array."""
    return xp.ascontiguousarray(parts[0]) if len(parts) == 1 else xp.concatenate(parts)


def conv2d_sgd_backward(dy, cache, w, b, lr, need_dx=True, relu_y=None, workspace=None):
    """Backward fused with plain SGD: dx first (with the old w), then w ← w − lr·δ·colᵀ, b ← b − lr·Σδ in place.

    ``workspace``: the layer's buffers; δ in GEMM layout, wᵀ·δ (``dcol``: the columns are still
    needed for the update) and the update's δ·colᵀ (``dw``) are built in them.
    """
    col, w_fwd, x_shape, geom, has_bias, chunked = cache
    F = w.shape[0]
    xp = get_array_module(dy)
    ws = workspace if chunked is None else None
    mats = {}
    parts = []
    for a, e in _chunk_bounds(cache):   # every input gradient uses the old weights: it comes before any update
        mats[a] = _dy_matrix(dy[a:e], geom, has_bias, _rows(relu_y, a, e), ws)
        if need_dx:
            spare = workspace_buffer(ws, "dcol", col.shape, col.dtype) if ws is not None and K.enabled(col) else None
            parts.append(_conv_input_grad(mats[a][0], w_fwd, (e - a,) + tuple(x_shape[1:]), geom, spare))
    dx = _join(parts, xp) if need_dx else None
    for a, e, col in _column_chunks(cache):
        dy_mat, db = mats.pop(a)
        w_mat = w.reshape(F, -1)
        tmp = (workspace_buffer(ws, "dw", w_mat.shape, np.result_type(dy_mat, col))
               if ws is not None and K.enabled(dy_mat, col) and dy_mat.shape[1] > 1 else None)
        gemm_inplace(w_mat, dy_mat, col.T, -lr, tmp)
        if has_bias:
            b -= lr * db
    return dx


def _chunk_bounds(cache):
    chunked = cache[5]
    return [(0, cache[2][0])] if chunked is None else chunked[1]


def _rows(a, lo, hi):
    return None if a is None else a[lo:hi]


def _dy_matrix(dy, geom, need_db=False, relu_y=None, workspace=None):
    """δ (N, F, OH, OW) → (δ as (F, N·OH·OW), Σ_{n,i,j} δ (F,) or None); δ·[y > 0] first with ``relu_y``."""
    kh, kw, sh, sw, ph, pw, oh, ow = geom
    F, N = dy.shape[1], dy.shape[0]
    kern = _kernels(dy, relu_y) if N > 1 or relu_y is not None else None   # (N = 1, no mask: a free reshape)
    if kern is K:
        out = workspace_buffer(workspace, "gemm", (F, N * oh * ow), dy.dtype)
        dy_mat, db = K.to_gemm(dy, relu_y, out=out)
        return dy_mat, (db if need_db else None)
    if kern is G:
        dy_mat = G.to_gemm(dy, relu_y)                         # one CUDA pass: mask and layout
        return dy_mat, (dy_mat.sum(axis=1) if need_db else None)
    if relu_y is not None:
        dy = dy * (relu_y > 0)
    db = dy.sum(axis=(0, 2, 3)) if need_db else None
    if N == 1:
        return dy.reshape(F, oh * ow), db
    return dy.transpose(1, 0, 2, 3).reshape(F, N * oh * ow), db


def _conv_input_grad(dy_mat, w, x_shape, geom, out=None):
    """∂L/∂x = col2im(wᵀ·δ), straight into the unpadded input's shape; ``out`` may hold wᵀ·δ."""
    kh, kw, sh, sw, ph, pw, oh, ow = geom
    F = w.shape[0]
    w_t = w.reshape(F, -1).T
    shape = (w_t.shape[0], dy_mat.shape[1])
    if out is not None and (out.shape != shape or out.dtype != get_array_module(w).result_type(w, dy_mat)):
        out = None
    dcol = matmul_into(w_t, dy_mat, out=out)                   # (C·KH·KW, N·OH·OW)
    kern = _kernels(dcol)
    if kern is not None:                                       # one compiled pass instead of KH·KW slice-adds
        return kern.col2im(dcol, x_shape, geom)
    N, C, H, W = x_shape
    return col2im(dcol, (N, C, H + 2 * ph, W + 2 * pw), kh, kw, sh, sw, oh, ow, padding=(ph, pw))


# ---------------------------------------------------------------------------
# Slow reference, written straight from the seeds' formulas. Tests only.
# ---------------------------------------------------------------------------
def conv2d_reference_forward(x, w, b=None, stride=1, padding=0):
    """Loop version: y[n,f,i,j] = b[f] + Σ_{c,u,v} w[f,c,u,v] · x_pad[n,c,i·S+u,j·S+v]."""
    sh, sw = pair(stride, "stride")
    F, C, kh, kw = w.shape
    ph, pw = resolve_padding(padding, (kh, kw), (sh, sw))
    x_pad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    N, _, Hp, Wp = x_pad.shape
    oh = (Hp - kh) // sh + 1
    ow = (Wp - kw) // sw + 1
    y = np.zeros((N, F, oh, ow), dtype=np.result_type(x, w))
    for n in range(N):
        for f in range(F):
            for i in range(oh):
                for j in range(ow):
                    patch = x_pad[n, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
                    y[n, f, i, j] = np.sum(patch * w[f]) + (b[f] if b is not None else 0.0)
    return y


def conv2d_reference_backward(dy, x, w, stride=1, padding=0):
    """Loop version of the gradients.

    ∂L/∂w[f,c,u,v] = Σ_{n,i,j} δ[n,f,i,j] · x_pad[n,c,i·S+u,j·S+v];
    ∂L/∂x = full convolution of the stride-dilated δ with the 180°-flipped kernel
    (seed 004), cropped to the unpadded input; ∂L/∂b[f] = Σ δ[n,f,·,·].
    """
    sh, sw = pair(stride, "stride")
    F, C, kh, kw = w.shape
    ph, pw = resolve_padding(padding, (kh, kw), (sh, sw))
    x_pad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    N, _, Hp, Wp = x_pad.shape
    _, _, oh, ow = dy.shape
    dw = np.zeros_like(w, dtype=np.result_type(dy, x))
    for f in range(F):
        for c in range(C):
            for u in range(kh):
                for v in range(kw):
                    window = x_pad[:, c, u:u + sh * (oh - 1) + 1:sh, v:v + sw * (ow - 1) + 1:sw]
                    dw[f, c, u, v] = np.sum(dy[:, f] * window)
    # Dilate δ by the stride, pad it by K−1 and correlate with the flipped kernel.
    dil = np.zeros((N, F, (oh - 1) * sh + 1, (ow - 1) * sw + 1), dtype=dy.dtype)
    dil[:, :, ::sh, ::sw] = dy
    dil = np.pad(dil, ((0, 0), (0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1)))
    w_flip = w[:, :, ::-1, ::-1]
    hh, ww = dil.shape[2] - kh + 1, dil.shape[3] - kw + 1      # = (oh−1)·S + KH ≤ Hp
    dx_pad = np.zeros((N, C, Hp, Wp), dtype=dw.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(hh):
                for j in range(ww):
                    dx_pad[n, c, i, j] = np.sum(dil[n, :, i:i + kh, j:j + kw] * w_flip[:, c])
    dx = dx_pad[:, :, ph:Hp - ph, pw:Wp - pw]
    db = dy.sum(axis=(0, 2, 3))
    return dx, dw, db
