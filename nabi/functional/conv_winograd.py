"""3×3 stride-1 convolution by Winograd's minimal filtering F(2×2, 3×3) or F(4×4, 3×3) (Lavin & Gray, "Fast
Algorithms for Convolutional Neural Networks", CVPR 2016): 16 multiplications for 4 outputs instead of 36, or 36
for 16 outputs instead of 144.

Notation as in ``conv.py``: x (N, C, H, W), w (F, C, 3, 3), zero padding (PH, PW), stride 1, y (N, F, OH, OW).
The output is cut into TH × TW tiles of 2×2 (TH = ⌈OH/2⌉, TW = ⌈OW/2⌉; T = N·TH·TW tiles in all); tile
t = (n, a, b) covers output rows 2a, 2a+1 and columns 2b, 2b+1 and reads the 4×4 input patch d_t at rows
2a − PH … 2a − PH + 3 (columns alike; zero outside the image). With

    Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]
    G  = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]
    Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]

the forward pass is four steps, ξ running over the 16 positions of a 4×4 tile:

    U[ξ, f, c] = (G w[f, c] Gᵀ)[ξ]          weight transform           U (16, F, C)
    V[ξ, c, t] = (Bᵀ d_t[c] B)[ξ]             input transform            V (16, C, T)
    M[ξ] = U[ξ] · V[ξ]                         16 matrix products (F×C)(C×T), batched through BLAS
    y_t[f] = Aᵀ M_t[f] A + b[f]                output transform (2×2 per tile, cut at the image's edge)

Backward, for δ = ∂L/∂y (zero on a tile's cells beyond the edge), each step's adjoint in reverse:

    ∂M_t[f] = A δ_t[f] Aᵀ                      output transform's adjoint   (16, F, T)
    ∂U[ξ] = ∂M[ξ] · V[ξ]ᵀ     ∂w[f, c] = Gᵀ ∂U[f, c] G                       16 products (F×T)(T×C)
    ∂V[ξ] = U[ξ]ᵀ · ∂M[ξ]     ∂x = Σ_t B ∂V_t Bᵀ, added onto each tile's patch (tiles overlap by 2 rows
                                                and columns), padding dropped; 16 products (C×F)(F×T)
    ∂b = Σ δ

so the gradients are the exact derivatives of the forward computation: a gradient check in float64 holds to
rounding. Each of the three passes does 4·F·C·N·P multiply-adds in its products instead of im2col's 9·F·C·N·P
(P = OH·OW; 2.25× fewer for even OH and OW), and V holds 4·C·N·P numbers where im2col's columns hold 9·C·N·P.
A large batch runs a chunk of whole images at a time (``CHUNK_BYTES``), so V and M stay small; ∂U sums the
chunks' products.

Numerical error. Winograd's transforms add and subtract inputs before the products, so its float32 results
are further from the exact (float64) convolution than im2col's. Measured on random normal inputs and He-scaled
weights (C = F = 3…512, 5×5…17×17; ``python -m benchmarks.winograd_error``), the norm-relative error
‖r − r₆₄‖ / ‖r₆₄‖ of the output and of both gradients was at most 5.1e-7 (im2col: at most 3.0e-7), about 1–1.7×
im2col's; ``tests/test_conv_winograd.py``
bounds it at 1.5e-6 per result, and the float64 results equal im2col's to 1e-11.

F(4×4, 3×3) (``tile=4``; the algorithm 'winograd4' in ``conv_algo``) is the same four steps on 4×4 output tiles
and the 6×6 input patches at rows 4a − PH … 4a − PH + 5, with ξ over 36 positions and the matrices ``BT4``,
``G4``, ``AT4`` below (interpolation points 0, ±1, ±2, ∞). Its products do 2.25·F·C·N·P multiply-adds (1.78× fewer
than F(2×2, 3×3), 4× fewer than im2col) and V holds 2.25·C·N·P numbers; its transforms multiply by up to 8 and
divide by 6 and 24, so its float32 error is larger: at most 3.4e-6 in the same measurement (C = F = 3…512,
5×5…17×17; about 11× im2col's, largest for ∂L/∂x of 512-channel layers), bounded at 1e-5 in the tests. That is
still far below the noise of a training step; ``NABI_CONV_ALGO`` or ``conv_algo.algorithm`` keeps a run on
F(2×2, 3×3) or im2col where a closer result matters.

The primitives (the transforms) come from the implementation that serves the arrays (``dispatch.for_arrays``):
compiled CPU loops (``cpu_kernels``) or the array code below, which is their reference and the CuPy path. The
layers reach this module through ``conv_fast``, where ``conv_algo`` chooses it per layer shape by measurement.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from .accumulate import sum_over
from .blas import matmul as split_matmul
from .dispatch import for_arrays, reference

BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])

BT4 = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]])
G4 = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
               [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
AT4 = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]])

TRANSFORMS = {2: (BT, G, AT), 4: (BT4, G4, AT4)}
"""(Bᵀ, G, Aᵀ) per output tile size: F(2×2, 3×3) and F(4×4, 3×3)."""

TILES = (2, 4)


def positions(tile=2) -> int:
    """α² = (tile + 2)²: the products per tile, 16 for F(2×2, 3×3), 36 for F(4×4, 3×3)."""
    return (tile + 2) ** 2


def applies(geom, dtype=np.float32) -> bool:
    """Whether Winograd F(2×2, 3×3) computes a convolution of geometry ``geom`` on arrays of ``dtype``: a 3×3
    kernel, stride 1, float32 or float64 (in float16 its transforms would lose too much; im2col serves it)."""
    kh, kw, sh, sw = geom[:4]
    return kh == 3 and kw == 3 and sh == 1 and sw == 1 and np.dtype(dtype) in (np.float32, np.float64)


def tiles(geom, tile=2):
    """(TH, TW): the tile × tile output tiles per image."""
    oh, ow = geom[6], geom[7]
    return -(-oh // tile), -(-ow // tile)


CHUNK_BYTES = 8 * 2**20
"""Largest V (16, C, T) or M (16, F, T) built at once: a batch whose arrays would be larger is transformed,
multiplied and transformed back a chunk of whole images at a time, through the same buffers (at least one image
per chunk). Without chunks these two arrays were the largest of a step's buffers: 64 MB each for 64 channels at
32×32, batch 64 (SimCLR's ResNet-18), where PyTorch's whole step needed 485–583 MB; that step's peak went from 584
to 489 MB with 16 MB chunks and to 462 MB with 8 MB. The products stay long — at least 2,048 tiles for 64
channels, 1,024 for 128 — and the layer's time did not change beyond the noise (64→64 at 32×32 batch 64, forward
+ backward, alternated: 107.5 ms whole, 109.2 in 16 MB chunks, 113.8 in 8 MB, 145 in 2 MB)."""


def chunk_bounds(N, C, F, geom, itemsize, budget=None, tile=2):
    """[(start, end), …]: the images of each chunk, so that V and M of a chunk fit ``budget`` (``CHUNK_BYTES``)."""
    th, tw = tiles(geom, tile)
    per_image = positions(tile) * max(C, F) * th * tw * itemsize
    n = max(1, int((budget or CHUNK_BYTES) // per_image))
    return [(a, min(N, a + n)) for a in range(0, N, n)]


def workspace_bytes(x_shape, F, geom, itemsize, tile=2) -> int:
    """Bytes of the larger of V (α², C, T) and M (α², F, T) for the largest chunk of images."""
    th, tw = tiles(geom, tile)
    a, e = chunk_bounds(x_shape[0], x_shape[1], F, geom, itemsize, tile=tile)[0]
    return positions(tile) * max(x_shape[1], F) * (e - a) * th * tw * itemsize


class WinogradCache:
    """What backward needs: the input x and the weight w the forward used (references, no copies: U and V are
    computed again in backward, so a layer keeps nothing of its own between forward and backward), the
    geometry, whether there is a bias, and the output tile size (2 or 4)."""

    __slots__ = ("x", "w", "geom", "has_bias", "tile")

    def __init__(self, x, w, geom, has_bias, tile=2):
        self.x, self.w, self.geom, self.has_bias, self.tile = x, w, geom, has_bias, tile


def _no_buffer(name, shape, dtype):
    return None


# ---------------------------------------------------------------------------
# forward and backward
# ---------------------------------------------------------------------------
def conv2d_forward(x, w, b, geom, relu=False, buffer=None, batched_matmul=None, tile=2):
    """y = conv2d(x, w) + b [then max(·, 0) with ``relu``] for a 3×3 stride-1 ``geom`` (``conv.conv_geometry``).

    x (N, C, H, W), w (F, C, 3, 3), b (F,) or None. ``tile``: 2 for F(2×2, 3×3), 4 for F(4×4, 3×3).
    ``buffer(name, shape, dtype)``: a buffer to fill, or None (``conv_fast`` hands out its shared scratch this
    way); U, V and M die within the call. ``batched_matmul(a, b, out=None)``: the α² products (default:
    ``blas.matmul``, over nabi's threads). A batch is done in chunks of images (``chunk_bounds``). Returns
    ``(y, cache)``, y (N, F, OH, OW). The cache holds x and w themselves: neither may change before backward.
    """
    if tile not in TRANSFORMS:
        raise ValueError(f"conv_winograd: tile must be one of {TILES}, got {tile!r}")
    impl = for_arrays(x, w, b)
    buffer = buffer or _no_buffer
    matmul = batched_matmul or split_matmul
    N, C = x.shape[:2]
    F = w.shape[0]
    a2 = positions(tile)
    chunks = chunk_bounds(N, C, F, geom, x.dtype.itemsize, tile=tile)
    U = impl.winograd_weight(w, out=buffer("wino_u", (a2, F, C), w.dtype), tile=tile)
    if len(chunks) == 1:
        V = impl.winograd_input(x, geom, out=buffer("wino_v", (a2, C, _tiles_of(N, geom, tile)), x.dtype),
                                tile=tile)
        M = matmul(U, V, out=buffer("wino_m", (a2, F, V.shape[2]), np.result_type(U, V)))
        return impl.winograd_output(M, b, N, geom, relu, tile=tile), WinogradCache(x, w, geom, b is not None, tile)
    xp = get_array_module(x)
    y = xp.empty((N, F, geom[6], geom[7]), dtype=np.result_type(U, x))
    step = chunks[0][1]
    for a, e in chunks:
        V = impl.winograd_input(x[a:e], geom, out=_part(buffer, "wino_v", C, step, e - a, geom, x.dtype, tile),
                                tile=tile)
        M = matmul(U, V, out=_part(buffer, "wino_m", F, step, e - a, geom, np.result_type(U, V), tile))
        impl.winograd_output(M, b, e - a, geom, relu, out=y[a:e], tile=tile)
    return y, WinogradCache(x, w, geom, b is not None, tile)


def _tiles_of(n, geom, tile=2):
    th, tw = tiles(geom, tile)
    return n * th * tw


def _part(buffer, name, rows, step, n, geom, dtype, tile=2):
    """A (α², rows, T) array for a chunk of ``n`` images: the first bytes of one buffer sized for a full chunk of
    ``step`` images, which every chunk reuses (contiguous); None without a buffer."""
    a2 = positions(tile)
    buf = buffer(name, (a2 * rows * _tiles_of(step, geom, tile),), dtype)
    t = _tiles_of(n, geom, tile)
    return None if buf is None else buf[:a2 * rows * t].reshape(a2, rows, t)


def conv2d_backward(dy, cache, need_dx=True, dw_out=None, relu_y=None, consume=False, buffer=None,
                    batched_matmul=None):
    """Gradients of ``conv2d_forward``: ``(dx, dw, db)``; dx None without ``need_dx``, db None without a bias.

    ``relu_y``: the output of a ReLU fused after the convolution (δ is masked by [y > 0] first). ``dw_out``: a
    buffer shaped like w for ∂L/∂w. (``consume`` is accepted for ``conv_fast``'s signature: V is always computed
    afresh here, so ∂V is always written over it.)
    """
    dx, dw, db = _gradients(dy, cache, need_dx, relu_y, buffer or _no_buffer, batched_matmul, dw_out)
    return dx, dw, db


def conv2d_sgd_backward(dy, cache, w, b, lr, need_dx=True, relu_y=None, buffer=None, batched_matmul=None):
    """Backward fused with plain SGD: dx with the old weights, then w ← w − lr·∂L/∂w, b ← b − lr·Σδ in place."""
    dw_buf = buffer("dw", tuple(w.shape), w.dtype) if buffer else None
    dx, dw, db = _gradients(dy, cache, need_dx, relu_y, buffer or _no_buffer, batched_matmul, dw_buf)
    w -= w.dtype.type(lr) * dw
    if b is not None and db is not None:
        b -= b.dtype.type(lr) * db
    return dx


def _gradients(dy, cache, need_dx, relu_y, buffer, batched_matmul, dw_out):
    """U again; per chunk of images V again, ∂M = A δ Aᵀ per tile, ∂b = Σδ, ∂U += ∂M · Vᵀ, ∂V = Uᵀ · ∂M (over V)
    and ∂x = Σ_t B ∂V_t Bᵀ scattered onto the chunk's input; then ∂w = Gᵀ ∂U G."""
    x, w, geom, tile = cache.x, cache.w, cache.geom, cache.tile
    impl = for_arrays(dy, relu_y, x, w)
    matmul = batched_matmul or split_matmul
    N, C = x.shape[:2]
    F = w.shape[0]
    a2 = positions(tile)
    chunks = chunk_bounds(N, C, F, geom, x.dtype.itemsize, tile=tile)
    step = chunks[0][1]
    U = impl.winograd_weight(w, out=buffer("wino_u", (a2, F, C), w.dtype), tile=tile)
    xp = get_array_module(x)
    dx = xp.empty(x.shape, dtype=np.result_type(dy, w)) if need_dx and len(chunks) > 1 else None
    dU = db = None
    for a, e in chunks:
        whole = len(chunks) == 1
        V = impl.winograd_input(x if whole else x[a:e], geom,
                                out=_part(buffer, "wino_v", C, step, e - a, geom, x.dtype, tile), tile=tile)
        dM, db_part = impl.winograd_output_backward(
            dy if whole else dy[a:e], geom, relu_y if relu_y is None or whole else relu_y[a:e],
            need_db=cache.has_bias, out=_part(buffer, "wino_m", F, step, e - a, geom, dy.dtype, tile), tile=tile)
        if dU is None:
            dU = matmul(dM, V.transpose(0, 2, 1), out=buffer("wino_du", (a2, F, C), np.result_type(dM, V)))
            db = db_part
        else:
            dU += matmul(dM, V.transpose(0, 2, 1), out=buffer("wino_dup", (a2, F, C), np.result_type(dM, V)))
            if db is not None:
                db += db_part
        if need_dx:
            spare = V if type(V) is np.ndarray and V.dtype == np.result_type(U, dM) else None
            dV = matmul(U.transpose(0, 2, 1), dM, out=spare)
            if whole:
                dx = impl.winograd_input_backward(dV, x.shape, geom, tile=tile)
            else:
                impl.winograd_input_backward(dV, (e - a,) + x.shape[1:], geom, out=dx[a:e], tile=tile)
    return dx, impl.winograd_weight_backward(dU, out=dw_out, tile=tile), db


# ---------------------------------------------------------------------------
# The transforms as array code (NumPy or CuPy): the reference implementation. Each applies a small matrix
# (Bᵀ, G, Aᵀ or a transpose) along one axis of length 3 or 4 by slicing, with its entries as Python numbers,
# so nothing is copied to the device on the GPU.
# ---------------------------------------------------------------------------
def _along(matrix, a, axis):
    """out[..., r, ...] = Σ_k matrix[r][k] · a[..., k, ...] along ``axis``."""
    xp = get_array_module(a)
    a = xp.moveaxis(a, axis, 0)
    rows = []
    for coeffs in matrix:
        acc = None
        for k, m in enumerate(coeffs):
            if m == 0:
                continue
            term = a[k] if m == 1 else (-a[k] if m == -1 else a[k] * a.dtype.type(m))
            acc = term if acc is None else acc + term
        rows.append(acc)
    return xp.moveaxis(xp.stack(rows), 0, axis)


def _both(matrix, a):
    """matrix · a · matrixᵀ on the last two axes."""
    return _along(matrix, _along(matrix, a, -2), -1)


@reference("winograd_weight")
def weight_transform(w, out=None, tile=2):
    """U[ξ, f, c] = (G w[f, c] Gᵀ)[ξ]: w (F, C, 3, 3) → U (α², F, C)."""
    xp = get_array_module(w)
    F, C = w.shape[:2]
    _, g, _ = TRANSFORMS[tile]
    u = _both(g, w).reshape(F, C, positions(tile)).transpose(2, 0, 1)
    if out is None:
        return xp.ascontiguousarray(u)
    out[...] = u
    return out


@reference("winograd_weight_backward")
def weight_transform_backward(du, out=None, tile=2):
    """∂w[f, c] = Gᵀ ∂U[f, c] G: ∂U (α², F, C) → ∂w (F, C, 3, 3) (into ``out`` when given)."""
    F, C = du.shape[1:]
    _, g, _ = TRANSFORMS[tile]
    a = tile + 2
    dw = _both(g.T, du.transpose(1, 2, 0).reshape(F, C, a, a))
    if out is None:
        return dw
    out[...] = dw
    return out


def _padded(x, geom, tile=2):
    """x zero-padded to the (tile·TH + 2, tile·TW + 2) rows and columns the tiles read, the image at (PH, PW)."""
    xp = get_array_module(x)
    N, C, H, W = x.shape
    ph, pw = geom[4], geom[5]
    th, tw = tiles(geom, tile)
    out = xp.zeros((N, C, tile * th + 2, tile * tw + 2), dtype=x.dtype)
    out[:, :, ph:ph + H, pw:pw + W] = x
    return out


@reference
def winograd_input(x, geom, out=None, tile=2):
    """V[ξ, c, (n, a, b)] = (Bᵀ d B)[ξ], d = the α×α patch of x_pad[n, c] at (tile·a, tile·b): x (N, C, H, W) →
    (α², C, T). (``out`` is accepted for the common signature and not used.)"""
    xp = get_array_module(x)
    N, C = x.shape[:2]
    th, tw = tiles(geom, tile)
    bt, _, _ = TRANSFORMS[tile]
    a = tile + 2
    xpad = _padded(x, geom, tile)
    sN, sC, sH, sW = xpad.strides
    lib = np.lib if xp is np else xp.lib
    d = lib.stride_tricks.as_strided(xpad, shape=(N, C, th, tw, a, a),
                                     strides=(sN, sC, tile * sH, tile * sW, sH, sW))
    v = _both(bt, d)                                                        # (N, C, TH, TW, α, α)
    return xp.ascontiguousarray(v.transpose(4, 5, 1, 0, 2, 3)).reshape(a * a, C, N * th * tw)


@reference
def winograd_output(m, b, N, geom, relu=False, out=None, tile=2):
    """y[n, f, tile·a + i, tile·b + j] = (Aᵀ M_t A)[i, j] + b[f] (cut at OH, OW) [then max(·, 0)]:
    (α², F, T) → (N, F, OH, OW) (copied into ``out`` when given)."""
    xp = get_array_module(m)
    F = m.shape[1]
    oh, ow = geom[6], geom[7]
    th, tw = tiles(geom, tile)
    _, _, at = TRANSFORMS[tile]
    a = tile + 2
    mt = m.reshape(a, a, F, N, th, tw).transpose(3, 2, 4, 5, 0, 1)          # (N, F, TH, TW, α, α)
    yt = _both(at, mt)                                                       # (N, F, TH, TW, tile, tile)
    y = yt.transpose(0, 1, 2, 4, 3, 5).reshape(N, F, tile * th, tile * tw)[:, :, :oh, :ow]
    y = xp.ascontiguousarray(y)
    if b is not None:
        y += b.reshape(1, F, 1, 1)
    if relu:
        xp.maximum(y, 0, out=y)
    if out is not None:
        out[...] = y
        return out
    return y


@reference
def winograd_output_backward(dy, geom, relu_y=None, need_db=True, out=None, tile=2):
    """∂M_t = A δ_t Aᵀ (δ masked by [relu_y > 0] when given, zero beyond OH, OW): dy (N, F, OH, OW) →
    (∂M (α², F, T), Σδ (F,) or None). (``out`` is accepted for the common signature and not used.)"""
    xp = get_array_module(dy)
    N, F, oh, ow = dy.shape
    th, tw = tiles(geom, tile)
    _, _, at = TRANSFORMS[tile]
    a = tile + 2
    if relu_y is not None:
        dy = dy * (relu_y > 0)
    db = sum_over(dy, (0, 2, 3)) if need_db else None
    d = xp.zeros((N, F, tile * th, tile * tw), dtype=dy.dtype)
    d[:, :, :oh, :ow] = dy
    dt = d.reshape(N, F, th, tile, tw, tile).transpose(1, 0, 2, 4, 3, 5)    # (F, N, TH, TW, tile, tile)
    dm = _both(at.T, dt)                                                     # (F, N, TH, TW, α, α)
    return xp.ascontiguousarray(dm.transpose(4, 5, 0, 1, 2, 3)).reshape(a * a, F, N * th * tw), db


@reference
def winograd_input_backward(dv, x_shape, geom, out=None, tile=2):
    """∂x: each tile's B ∂V_t Bᵀ (α×α) added onto its patch of the padded input, padding dropped:
    (α², C, T) → (N, C, H, W) (copied into ``out`` when given). The loop runs over the α² patch offsets only,
    never over pixels."""
    xp = get_array_module(dv)
    N, C, H, W = x_shape
    ph, pw = geom[4], geom[5]
    th, tw = tiles(geom, tile)
    bt, _, _ = TRANSFORMS[tile]
    a = tile + 2
    v = dv.reshape(a, a, C, N, th, tw).transpose(3, 2, 4, 5, 0, 1)          # (N, C, TH, TW, α, α)
    d = _both(bt.T, v)
    dpad = xp.zeros((N, C, tile * th + 2, tile * tw + 2), dtype=dv.dtype)
    for u in range(a):
        for s in range(a):
            dpad[:, :, u:u + tile * th:tile, s:s + tile * tw:tile] += d[..., u, s]
    if out is not None:
        out[...] = dpad[:, :, ph:ph + H, pw:pw + W]
        return out
    return xp.ascontiguousarray(dpad[:, :, ph:ph + H, pw:pw + W])
