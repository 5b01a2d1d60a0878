"""The convolution of ``conv.py`` as the layers run it: the same formulas, with four speed-ups.

1. **Workspaces.** A ``Conv2d`` in training passes a ``Workspace`` (a dict it keeps between
   steps) in which the compiled CPU path builds the columns, the forward GEMM result and δ in
   GEMM layout; backward writes Wᵀ·δ over the columns once ∂L/∂W is done (``consume``). Buffers
   whose contents die within a call (``TRANSIENT``: GEMM results, Winograd's arrays) come from one
   scratch shared by all the layers a thread trains (``training_scratch``). Fresh
   multi-megabyte arrays every step cost the operating system's page faults and cold caches:
   on 2 cores this took cifar_cnn's training step from 1.45× to 1.12× PyTorch's time.
   Eval-mode forwards use the calling thread's ``scratch()`` buffers instead (never shared
   between threads; see ``Conv2d.forward``).
2. **Chunks.** Above ``COL_BUDGET_BYTES`` of columns the batch is done in chunks and the
   columns are rebuilt in backward from the input (VGG-16's second layer at 224×224, batch 32,
   would otherwise need 3.7 GB of columns).
3. **Fused ReLU.** ``relu=True`` applies max(·, 0) as the GEMM result is moved into (N, F, P);
   backward with ``relu_y`` (that output) masks δ by [y > 0] as it is moved into GEMM layout.
4. **Fused SGD.** ``conv2d_sgd_backward`` computes ∂L/∂x with the old weights, then applies
   W ← W − lr·δ·colᵀ, b ← b − lr·Σδ in place: the weight gradient is never stored.
5. **Another algorithm where it is faster.** 3×3 stride-1 layers may run Winograd F(2×2, 3×3) or F(4×4, 3×3)
   (``conv_winograd``), thin stride-1 layers a direct convolution (``conv_direct``), instead of im2col;
   ``conv_algo`` decides per layer shape, by measurement (or as ``NABI_CONV_ALGO`` forces). Their caches are
   a ``conv_winograd.WinogradCache``, a ``conv_direct.DirectCache`` and a ``conv_outer.OuterCache``.

Every result equals ``conv.conv2d_forward`` / ``conv2d_backward`` (``tests/test_conv_fast.py``).
The im2col cache is ``(col, w, x_shape, geom, has_bias, chunked)``; ``chunked`` is None or
``(x, [(start, end), …])`` (then ``col`` is None).
"""
from __future__ import annotations

import threading

import numpy as np

from ..backend import get_array_module
from . import conv_algo
from . import conv_direct as CD
from . import conv_outer as CO
from . import conv_winograd as CW
from .blas import gemm_inplace, matmul, matmul_into
from .conv import conv_geometry
from .dispatch import for_arrays

COL_BUDGET_BYTES = 256 * 2**20
"""Largest im2col matrix built at once; above it the batch is processed in chunks."""

WORKSPACE_MAX_BYTES = COL_BUDGET_BYTES
"""Largest buffer a layer's training ``Workspace`` keeps: as large as an im2col chunk can be, so every
layer keeps its columns. They exist during each step anyway (backward needs them for ∂L/∂w), so this
adds nothing to the peak, only holds it between steps; allocating them afresh instead costs page
faults on every step (measured, 2 cores: AlexNet-336 at batch 8 took 856 ms a step with a 64 MB cap
and 686 ms without it, ResNet-18 (CIFAR) at batch 64, 32×32, 2.0 s and 1.5 s)."""

INPUT_LAYER_CHUNK_BYTES = 4 * 2**20
"""Column chunk of a training layer that computes no ∂L/∂x (a network's first layer, ``set_input_grad(False)``)
whose columns would be over ``INPUT_LAYER_COL_RATIO`` times its input: its forward builds the columns this many
bytes of them at a time and its backward rebuilds them the same way for ∂L/∂w, instead of keeping them. A stem's
columns are many times its image (ResNet's 7×7 stride-2 layer on 3 channels: 12.25×, 57 MB at batch 16 of
160×160, the largest array of the step), and rebuilding them is one pass over a 3-channel input. A 3×3
stride-1 first layer (9×: cifar_cnn's) keeps its columns: there the chunks' extra passes and calls were
measured to cost more than a tenth of cifar_cnn's step."""

INPUT_LAYER_COL_RATIO = 9

INPUT_LAYER_MIN_COL_BYTES = 16 * 2**20
"""...and only when those columns would be at least this large: below it they are a small part of a step's memory
and the chunks' extra calls show (measured, alternated in one process: LeNet-5 at batch 64, 5 MB of columns,
20.4 ms a step kept and 22.7 ms chunked; ResNet-18 at batch 8 of 64×64, 4.8 MB: 2.7 % slower; at batch 32,
18 MB: 1.6 % slower, for 35 MB less at the step's peak)."""

SCRATCH_MAX_BYTES = 64 * 2**20
"""Largest buffer a thread's eval-mode ``scratch`` keeps (every serving thread holds its own)."""


TRANSIENT = frozenset({"gemm", "colchunk", "dcol", "dw", "wino_u", "wino_v", "wino_m", "wino_du", "wino_dup",
                       "direct_pad", "direct_dy"})
"""Buffers whose contents die within one call (a forward's GEMM result, backward's δ matrix, Wᵀ·δ, Winograd's
transformed arrays): a layer's ``Workspace`` takes them from its thread's shared ``training_scratch`` instead of
keeping its own, so a network holds one of each (as large as its largest layer needs), not one per layer. The
im2col columns (``col``) live from forward to backward and stay the layer's."""


class Workspace(dict):
    """Named buffers kept between calls (``workspace_buffer``); one over ``limit`` bytes
    (``WORKSPACE_MAX_BYTES``) is not kept: the call allocates a fresh array instead. With ``shares_transients``
    (a layer's training workspace) the ``TRANSIENT`` ones come from the thread's ``training_scratch``."""
    limit = WORKSPACE_MAX_BYTES
    shares_transients = True


def workspace_buffer(workspace, name, shape, dtype):
    """A buffer kept in ``workspace`` (a ``Workspace`` or any dict), made or remade when its shape or
    dtype changes; None without a workspace or over its ``limit``. Only implementations that
    ``keeps_buffers`` (the compiled CPU loops) are handed one, for arrays they fill completely."""
    if workspace is None:
        return None
    if name in TRANSIENT and getattr(workspace, "shares_transients", False):
        return _shared_buffer(name, shape, dtype)
    buf = workspace.get(name)
    if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype:
        limit = getattr(workspace, "limit", None)
        if limit is not None and int(np.prod(shape)) * np.dtype(dtype).itemsize > limit:
            return None
        buf = workspace[name] = np.empty(shape, dtype=dtype)
    return buf


_scratch = threading.local()


def scratch():
    """This thread's buffers for calls whose results keep no reference to them (an eval-mode
    forward): shared by every layer a thread runs, so an inference pass faults in no fresh pages
    per layer; each thread has its own, so concurrent inference never shares a buffer."""
    d = getattr(_scratch, "buffers", None)
    if d is None:
        d = _scratch.buffers = Workspace()
        d.limit = SCRATCH_MAX_BYTES
        d.shares_transients = False
    return d


def release_scratch():
    """Free this thread's scratch buffers (they are otherwise kept for the next inference pass)."""
    _scratch.buffers = None


def training_scratch():
    """This thread's shared buffers for the ``TRANSIENT`` names of training workspaces: name → flat bytes, grown
    to the largest request and handed out as views of the shape asked for (so layers of different shapes share
    one allocation instead of remaking it layer by layer)."""
    d = getattr(_scratch, "shared", None)
    if d is None:
        d = _scratch.shared = {}
    return d


def release_training_scratch():
    """Free this thread's shared training buffers."""
    _scratch.shared = None


def training_scratch_bytes() -> int:
    """Bytes this thread's shared training buffers hold."""
    return sum(b.nbytes for b in training_scratch().values())


def _shared_buffer(name, shape, dtype):
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes > WORKSPACE_MAX_BYTES:
        return None
    d = training_scratch()
    flat = d.get(name)
    if flat is None or flat.nbytes < nbytes:
        flat = d[name] = np.empty(nbytes, dtype=np.uint8)
    return flat[:nbytes].view(dtype).reshape(shape)


def _buffer(impl, workspace, name, shape, dtype):
    return workspace_buffer(workspace, name, shape, dtype) if impl.keeps_buffers else None


def _buffers(impl, workspace):
    """``buffer(name, shape, dtype)`` over a workspace, for ``conv_winograd``."""
    if workspace is None or not impl.keeps_buffers:
        return None
    return lambda name, shape, dtype: workspace_buffer(workspace, name, shape, dtype)


WINOGRAD_TILES = {"winograd": 2, "winograd4": 4}
"""``conv_algo``'s Winograd algorithms and their output tiles: F(2×2, 3×3) and F(4×4, 3×3)."""

WINOGRAD_MIN_OUTPUT = {2: 1, 4: 8}
"""Smallest output height and width at which each tile size is a candidate. F(4×4, 3×3) on smaller outputs pads
its tiles (a 4×4 output is one tile, a 2×2 output a quarter of one) and its transforms' fixed cost per image
plane dominates: on ResNet-18 at 64×64 batch 32 it lost to F(2×2, 3×3) by 1.9× at 8×8 and to im2col by 2–5× at
4×4 and 2×2 (trials of forward + backward), so it is not timed there (``NABI_CONV_ALGO=winograd4`` still runs it
wherever it applies)."""


def _batch_chunks(N, per_sample_bytes, budget=None):
    n = max(1, int((budget or COL_BUDGET_BYTES) // max(per_sample_bytes, 1)))
    return [(a, min(N, a + n)) for a in range(0, N, n)]


# ---------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------
def conv2d_forward(x, w, b=None, stride=1, padding=0, layer="conv2d", relu=False, workspace=None, purpose="train",
                   need_dx=True):
    """``conv.conv2d_forward`` [then max(·, 0) with ``relu``], its buffers in ``workspace``.

    The columns stay in the cache until backward. ``purpose``: 'train' (a backward follows) or 'eval', which
    ``conv_algo`` times when it chooses the algorithm. ``need_dx`` False (the backward that follows computes no
    ∂L/∂x): columns over ``INPUT_LAYER_COL_RATIO`` times the input and ``INPUT_LAYER_MIN_COL_BYTES`` in all are
    built in chunks of ``INPUT_LAYER_CHUNK_BYTES`` and rebuilt in backward instead of kept. An eval forward whose
    ``workspace`` (a thread's ``scratch``) has a limit of at least ``INPUT_LAYER_CHUNK_BYTES`` builds larger columns in
    chunks of that limit, in one reused buffer. Returns ``(y, cache)``, y (N, F, OH, OW).
    """
    geom = conv_geometry(x, w, stride, padding, layer)
    kh, kw, sh, sw, ph, pw, oh, ow = geom
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    impl = for_arrays(x, w, b)
    algo = algorithm_for(x, w, geom, impl, purpose, need_dx)
    if algo in WINOGRAD_TILES:
        return CW.conv2d_forward(x, w, b, geom, relu, buffer=_buffers(impl, workspace), tile=WINOGRAD_TILES[algo])
    if algo == "direct":
        return CD.conv2d_forward(x, w, b, geom, relu, buffer=_buffers(impl, workspace))
    if algo == "outer":
        return CO.conv2d_forward(x, w, b, geom, relu)
    col_sample = x.shape[1] * kh * kw * oh * ow * x.dtype.itemsize
    budget = _column_budget(x, col_sample, purpose, need_dx, workspace)
    return _im2col_forward(x, w, b, geom, relu, workspace, impl, budget)


def _column_budget(x, col_sample, purpose, need_dx, workspace):
    """Bytes of columns built at once (None: ``COL_BUDGET_BYTES``), as ``conv2d_forward``'s docstring says."""
    if (purpose == "train" and not need_dx and col_sample > INPUT_LAYER_COL_RATIO * (x[0].size * x.dtype.itemsize)
            and col_sample * x.shape[0] >= INPUT_LAYER_MIN_COL_BYTES):
        return INPUT_LAYER_CHUNK_BYTES
    limit = getattr(workspace, "limit", None) or 0
    if purpose == "eval" and limit >= INPUT_LAYER_CHUNK_BYTES:
        return min(COL_BUDGET_BYTES, limit)         # an eval forward's columns: in chunks its scratch holds
    return None


def whole_window(x_shape, geom) -> bool:
    """Whether the kernel covers the whole unpadded input (no padding, KH = H, KW = W: one output per image and
    filter, as in a descriptor network's last layer or a classifier written as a convolution). Its columns are
    then the input itself — col[(c, u, v), n] = x[n, c, u, v], x as (N, C·KH·KW) transposed, a view — and
    ∂L/∂x = δᵀ·W (N, F)(F, C·KH·KW) without col2im: the layer is a fully connected one."""
    kh, kw, sh, sw, ph, pw = geom[:6]
    return ph == 0 and pw == 0 and kh == x_shape[2] and kw == x_shape[3]




def _im2col_forward(x, w, b, geom, relu, workspace, impl, budget=None):
    kh, kw, sh, sw, ph, pw, oh, ow = geom
    xp = get_array_module(x)
    N, C = x.shape[:2]
    F = w.shape[0]
    w_mat = w.reshape(F, -1)
    whole = whole_window(x.shape, geom)
    chunks = [(0, N)] if whole else _batch_chunks(N, C * kh * kw * oh * ow * x.dtype.itemsize, budget)
    if len(chunks) == 1:
        col = (x.reshape(N, -1).T if whole else
               impl.im2col(x, geom, out=_buffer(impl, workspace, "col", (C * kh * kw, N * oh * ow), x.dtype)))
        gemm = _buffer(impl, workspace, "gemm", (F, col.shape[1]), np.result_type(w_mat, col))
        y_mat = matmul(w_mat, col, out=gemm)
        y = impl.from_gemm(y_mat, b, N, relu).reshape(N, F, oh, ow)
        return y, (col, w, x.shape, geom, b is not None, None)
    y = xp.empty((N, F, oh, ow), dtype=xp.result_type(x, w))
    step = chunks[0][1] - chunks[0][0]
    for a, e in chunks:
        col = impl.im2col(x[a:e], geom, out=_chunk_buffer(impl, workspace, C * kh * kw, oh * ow, step, e - a, x.dtype))
        y[a:e] = impl.from_gemm(matmul(w_mat, col), b, e - a, relu).reshape(e - a, F, oh, ow)
    return y, (None, w, x.shape, geom, b is not None, (x, chunks))


def _chunk_buffer(impl, workspace, rows, P, step, n, dtype):
    """Room for the columns (rows, n·P) of a chunk of ``n`` samples, in one workspace buffer sized for a full
    chunk of ``step`` that every chunk reuses (a shorter last chunk: its first bytes, contiguous); None without
    a workspace."""
    buf = _buffer(impl, workspace, "colchunk", (rows * step * P,), dtype)
    return None if buf is None else buf[:rows * n * P].reshape(rows, n * P)


def algorithm_for(x, w, geom, impl, purpose="train", need_dx=True):
    """'im2col', 'winograd', 'winograd4', 'direct' or 'outer' for this call, as ``conv_algo`` chooses (timed once per shape,
    purpose and machine) among those that apply. A training call that computes no ∂L/∂x (a first layer) is timed
    so, under a shape key of its own."""
    candidates = ["im2col"]
    if CW.applies(geom, np.result_type(x.dtype, w.dtype)):
        candidates += [name for name, tile in WINOGRAD_TILES.items()
                       if (min(geom[6], geom[7]) >= WINOGRAD_MIN_OUTPUT[tile] or conv_algo.setting() == name)
                       and CW.workspace_bytes(x.shape, w.shape[0], geom, x.dtype.itemsize, tile) <= COL_BUDGET_BYTES]
    if CD.applies(x, w, geom) and not whole_window(x.shape, geom):
        candidates.append("direct")
    if CO.applies(x, w, geom) and not whole_window(x.shape, geom):
        candidates.append("outer")
    if len(candidates) == 1:
        return "im2col"
    N, C, H, W = x.shape
    F = w.shape[0]
    kh, kw, sh, sw, ph, pw, oh, ow = geom
    need_dx = need_dx or purpose != "train"
    key = (f"{purpose if need_dx else 'train, no dx'} {N}x{C}x{H}x{W} -> {F} {kh}x{kw} "
           + (f"s{sh}x{sw} " if (sh, sw) != (1, 1) else "") + f"p{ph}x{pw} {x.dtype}")
    return conv_algo.choose(tuple(candidates), key, N * F * C * kh * kw * oh * ow, impl.keeps_buffers,
                            lambda name: _trial(name, x.shape, w.shape, geom, x.dtype, purpose, need_dx))


def _trial(name, x_shape, w_shape, geom, dtype, purpose, need_dx=True):
    """One step of algorithm ``name`` on random data of this shape, for ``conv_algo`` to time: its forward, and in
    training its backward (with ∂L/∂x or without, as the layer computes it)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(dtype)
    dy = rng.standard_normal((x_shape[0], w_shape[0], geom[6], geom[7])).astype(dtype)
    ws = Workspace()
    impl = for_arrays(x, w)
    col_sample = x_shape[1] * geom[0] * geom[1] * geom[6] * geom[7] * x.dtype.itemsize
    budget = _column_budget(x, col_sample, purpose, need_dx, ws)

    def step():
        if name in WINOGRAD_TILES:
            y, cache = CW.conv2d_forward(x, w, None, geom, buffer=_buffers(impl, ws), tile=WINOGRAD_TILES[name])
        elif name == "direct":
            y, cache = CD.conv2d_forward(x, w, None, geom, buffer=_buffers(impl, ws))
        elif name == "outer":
            y, cache = CO.conv2d_forward(x, w, None, geom)
        else:
            y, cache = _im2col_forward(x, w, None, geom, False, ws, impl, budget)
        if purpose == "train":
            conv2d_backward(dy, cache, need_dx=need_dx, consume=True, workspace=ws)
    return step


def _column_chunks(cache):
    """Yield ``(a, e, col)``: the columns of samples a..e (all of them when not chunked)."""
    col, w, x_shape, geom, has_bias, chunked = cache
    if chunked is None:
        yield 0, x_shape[0], col
        return
    x, chunks = chunked
    impl = for_arrays(x)
    for a, e in chunks:
        yield a, e, impl.im2col(x[a:e], geom)


def _chunk_bounds(cache):
    chunked = cache[5]
    return [(0, cache[2][0])] if chunked is None else chunked[1]


def _reusable_columns(cache):
    """The column matrix of a forward cache when it is a buffer of its own (not a view of the
    input: NumPy's 1×1 columns at batch 1 are), so backward may write over it — else None."""
    col = cache[0]
    if type(col) is not np.ndarray:          # None (chunked), or CuPy (its memory pool already reuses)
        return None
    return col if col.flags.owndata and col.flags.writeable else None


# ---------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------
def conv2d_backward(dy, cache, need_dx=True, dw_out=None, relu_y=None, consume=False, workspace=None):
    """``conv.conv2d_backward`` with the speed-ups: returns ``(dx, dw, db)``.

    ``dw_out``: a buffer shaped like w to write ∂L/∂w into. ``relu_y``: the output of a ReLU fused
    after this convolution; dy is then that ReLU's upstream gradient, masked by [y > 0] here.
    ``consume``: the cache is used once (a layer's), so Wᵀ·δ may be written over its columns once
    ∂L/∂w is done. ``workspace``: the layer's buffers; δ in GEMM layout goes into its ``gemm``.
    """
    if isinstance(cache, CW.WinogradCache):
        return CW.conv2d_backward(dy, cache, need_dx, dw_out, relu_y, consume,
                                  buffer=_buffers(for_arrays(dy, cache.x), workspace))
    if _without_columns(cache):
        return _gradients_without_columns(dy, cache, need_dx, relu_y, dw_out, workspace)
    if isinstance(cache, CD.DirectCache):
        return CD.conv2d_backward(dy, cache, need_dx, dw_out, relu_y, consume,
                                  buffer=_buffers(for_arrays(dy, cache.x), workspace))
    _, w, x_shape, geom, has_bias, chunked = cache
    F = w.shape[0]
    xp = get_array_module(dy)
    dw = dw_out if dw_out is not None else xp.empty(w.shape, dtype=xp.result_type(dy, w))
    dw_mat = dw.reshape(F, -1)
    parts, db = [], None
    ws = workspace if chunked is None else None
    for a, e, col in _column_chunks(cache):
        dy_mat, db_part = _dy_matrix(dy[a:e], has_bias, _rows(relu_y, a, e), ws)     # (F, n·P), (F,)
        if not parts:
            _weight_grad(dy_mat, col, dw_mat)
            db = db_part
        else:
            dw_mat += matmul(dy_mat, col.T)
            if has_bias:
                db += db_part
        spare = _reusable_columns(cache) if consume else None
        parts.append(_input_grad(dy_mat, w, (e - a,) + tuple(x_shape[1:]), geom, spare) if need_dx else None)
    return (_join(parts, xp) if need_dx else None), dw, db


def conv2d_sgd_backward(dy, cache, w, b, lr, need_dx=True, relu_y=None, workspace=None):
    """Backward fused with plain SGD: dx first (with the old w), then w ← w − lr·δ·colᵀ and
    b ← b − lr·Σδ in place. Returns dx (None without ``need_dx``).

    ``workspace``: the layer's buffers; δ in GEMM layout, Wᵀ·δ (``dcol``: the columns are still
    needed for the update) and the update's δ·colᵀ (``dw``) are built in them.
    """
    if isinstance(cache, CW.WinogradCache):
        return CW.conv2d_sgd_backward(dy, cache, w, b, lr, need_dx, relu_y,
                                      buffer=_buffers(for_arrays(dy, cache.x), workspace))
    if _without_columns(cache):             # every gradient from the old weights, then the update
        dx, dw, db = _gradients_without_columns(dy, cache, need_dx, relu_y, None, workspace)
        w -= w.dtype.type(lr) * dw
        if b is not None and db is not None:
            b -= b.dtype.type(lr) * db
        return dx
    if isinstance(cache, CD.DirectCache):
        return CD.conv2d_sgd_backward(dy, cache, w, b, lr, need_dx, relu_y,
                                      buffer=_buffers(for_arrays(dy, cache.x), workspace))
    col, w_fwd, x_shape, geom, has_bias, chunked = cache
    F = w.shape[0]
    xp = get_array_module(dy)
    ws = workspace if chunked is None else None
    mats, parts = {}, []
    for a, e in _chunk_bounds(cache):   # every input gradient uses the old weights: it comes before any update
        mats[a] = _dy_matrix(dy[a:e], has_bias, _rows(relu_y, a, e), ws)
        if need_dx:
            spare = _buffer(for_arrays(col), ws, "dcol", col.shape, col.dtype) if ws is not None else None
            parts.append(_input_grad(mats[a][0], w_fwd, (e - a,) + tuple(x_shape[1:]), geom, spare))
    dx = _join(parts, xp) if need_dx else None
    for a, e, col in _column_chunks(cache):
        dy_mat, db = mats.pop(a)
        w_mat = w.reshape(F, -1)
        tmp = (_buffer(for_arrays(dy_mat, col), ws, "dw", w_mat.shape, np.result_type(dy_mat, col))
               if ws is not None and dy_mat.shape[1] > 1 else None)
        gemm_inplace(w_mat, dy_mat, col.T, -lr, tmp)
        if has_bias:
            b -= lr * db
    return dx


def _rows(a, lo, hi):
    return None if a is None else a[lo:hi]


def _dy_matrix(dy, need_db, relu_y, workspace):
    """δ (N, F, OH, OW) [· [y > 0]] → (δ as (F, N·P), Σδ (F,) or None), into the ``gemm`` buffer."""
    N, F = dy.shape[:2]
    impl = for_arrays(dy, relu_y)
    out = None
    if workspace is not None and (N > 1 or relu_y is not None):     # (N = 1 without a mask: a free reshape)
        out = _buffer(impl, workspace, "gemm", (F, dy.size // F), dy.dtype)
    return impl.to_gemm(dy, relu_y, out=out, need_db=need_db)


def _weight_grad(dy_mat, col, out):
    """out (F, K) = δ (F, P) · colᵀ (P, K). For P ≫ K (many small images) OpenBLAS is faster at
    col · δᵀ (K, F), transposed into ``out`` (measured: 15–25 % on CIFAR-sized layers)."""
    xp = get_array_module(col)
    if xp is np and col.shape[1] > 8 * col.shape[0]:
        out[...] = matmul(col, dy_mat.T).T
    else:
        matmul(dy_mat, col.T, out=out)


def _input_grad(dy_mat, w, x_shape, geom, out=None):
    """∂L/∂x = col2im(Wᵀ·δ), straight into the unpadded input's shape; ``out`` may hold Wᵀ·δ. A kernel covering the
    whole input (``whole_window``): δᵀ·W, already in the input's layout."""
    F = w.shape[0]
    if whole_window(x_shape, geom):
        return matmul(dy_mat.T, w.reshape(F, -1)).reshape(x_shape)
    w_t = w.reshape(F, -1).T
    shape = (w_t.shape[0], dy_mat.shape[1])
    if out is not None and (out.shape != shape or out.dtype != get_array_module(w).result_type(w, dy_mat)):
        out = None
    dcol = matmul_into(w_t, dy_mat, out=out)                   # (C·KH·KW, N·OH·OW)
    return for_arrays(dcol).col2im(dcol, x_shape, geom)


def _without_columns(cache) -> bool:
    """Whether a cache's gradients come from its algorithm's own kernels with no columns kept: the outer-product
    convolution (∂L/∂x from col2im(Wᵀ·δ)), and the direct one at strides above 1 (∂L/∂x per input phase)."""
    return isinstance(cache, CO.OuterCache) or (isinstance(cache, CD.DirectCache) and CD.strided(cache.geom))


def _gradients_without_columns(dy, cache, need_dx, relu_y, dw_out, workspace):
    """``(dx, dw, db)`` of a cache ``_without_columns`` says is one."""
    if isinstance(cache, CO.OuterCache):
        dw, db = CO.weight_gradients(dy, cache, relu_y, dw_out)
        return (_col2im_input_grad(dy, cache, relu_y) if need_dx else None), dw, db
    buffer = _buffers(for_arrays(dy, cache.x), workspace)
    dw, db = CD.weight_gradients(dy, cache, relu_y, dw_out, buffer=buffer)
    return (CD.input_gradient(dy, cache, relu_y, buffer=buffer) if need_dx else None), dw, db


def _col2im_input_grad(dy, cache, relu_y):
    """∂L/∂x of a convolution whose cache holds x, w and geom (the outer-product one): im2col's
    col2im(Wᵀ·δ) (no columns of x needed), a chunk of images at a time within ``COL_BUDGET_BYTES`` of Wᵀ·δ."""
    x_shape, w, geom = cache.x.shape, cache.w, cache.geom
    col_sample = x_shape[1] * geom[0] * geom[1] * geom[6] * geom[7] * dy.dtype.itemsize
    parts = []
    for a, e in _batch_chunks(x_shape[0], col_sample):
        dy_mat, _ = _dy_matrix(dy[a:e], False, _rows(relu_y, a, e), None)
        parts.append(_input_grad(dy_mat, w, (e - a,) + tuple(x_shape[1:]), geom))
    return _join(parts, get_array_module(dy))


def _join(parts, xp):
    """The batch chunks' input gradients as one contiguous (N, C, H, W) array."""
    return xp.ascontiguousarray(parts[0]) if len(parts) == 1 else xp.concatenate(parts)
