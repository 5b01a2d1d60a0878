"""Compiled CPU loops (numba) for the memory-bound parts of a CNN step.

The matrix products stay in BLAS. What is left of a training step — unrolling
receptive fields (im2col), summing them back (col2im), max pooling and its
argmax scatter, ReLU, and moving between the GEMM layout (F, N·P) and the
tensor layout (N, F, P) — is memory traffic that NumPy spreads over several
passes, temporaries and one core. Here each is one pass, written as the loop
of its formula and compiled once by numba (cached on disk), split over the
CPU's cores with ``prange`` over independent rows or image planes (no two
threads ever write the same element, so results do not depend on the thread
count).

They mirror the array code in ``conv.py``, ``pool.py``, ``activation.py`` and
``norm.py``, which remains the reference (and the CuPy path): ``tests/test_cpu_kernels.py``
checks every kernel against it, and the whole gradient/PyTorch suite runs on
whichever path is active. ``dispatch.NUMBA`` presents them to the ops; ``enabled(x)``
says whether they apply: numba installed, ``x`` a NumPy float32/float64 array, and
not switched off with ``NABI_KERNELS=numpy`` or ``use_kernels(False)``.

Compiled once per machine: numba caches the machine code on disk (``cache=True``), so
only the first process compiles (it says so once on stderr) and later ones load it.
Parallel kernels may be called from several Python threads at once (see ``_guarded``).

Shapes: x (N, C, H, W); geometry (KH, KW, SH, SW, PH, PW, OH, OW); P = OH·OW.
"""
from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager

import numpy as np

from ..backend import _set_numba_threads, usable_cores

try:
    import numba as _nb
    from numba import prange
except Exception:  # pragma: no cover - numba is optional (pip install nabi[tools] brings it)
    _nb = None

_on = _nb is not None and os.environ.get("NABI_KERNELS", "numba").lower() != "numpy"
if _nb is not None and "NUMBA_NUM_THREADS" not in os.environ and usable_cores() < _nb.config.NUMBA_NUM_THREADS:
    # numba sizes its pool by the machine's core count; a process limited to fewer cores (a
    # container, ``taskset``) would otherwise run more kernel threads than it has cores.
    _set_numba_threads(usable_cores())
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def available() -> bool:
    """True when numba imported (the kernels can be switched on)."""
    return _nb is not None


def enabled(*arrays) -> bool:
    """Whether the compiled kernels serve these arrays (NumPy float32/float64, kernels on)."""
    if not _on:
        return False
    for a in arrays:
        if type(a) is not np.ndarray or a.dtype not in _DTYPES:
            return False
    return True


def use_kernels(flag: bool) -> None:
    """Switch the compiled kernels on (when numba is installed) or off (pure NumPy)."""
    global _on
    _on = bool(flag) and _nb is not None


@contextmanager
def switched(read, write, flag):
    """Run a block with a module's on/off switch set to ``flag`` (``read``/``write`` it), then restore it."""
    old = read()
    write(flag)
    try:
        yield
    finally:
        write(old)


def kernels(flag: bool):
    """``with kernels(False): ...`` runs the pure-NumPy reference path."""
    return switched(lambda: _on, use_kernels, flag)


def set_num_threads(n: int) -> None:
    """Threads the kernels split their loops over (at most numba's NUMBA_NUM_THREADS)."""
    _set_numba_threads(n)


def threading_layer() -> str:
    """numba's threading layer once a kernel has run ('omp', 'tbb', 'workqueue'), else '?'."""
    try:
        return _nb.threading_layer()
    except Exception:
        return "?"


# ---------------------------------------------------------------------------
# compiling: on disk once, announced once, safe to call from several threads
# ---------------------------------------------------------------------------
COMPILING_MESSAGE = "nabi: compiling CPU kernels (first run only, about 15 s)"


def _njit(fn, **options):
    """numba's ``njit`` with the compiled code cached on disk (next to this file, or in numba's
    user-wide cache directory when that is read-only). Where no cache directory can be written at
    all, numba refuses ``cache=True``; the kernels are then compiled in every process instead."""
    try:
        return _nb.njit(cache=True, nogil=True, **options)(fn)
    except RuntimeError:        # "cannot cache function …: no locator available for file …"
        return _nb.njit(cache=False, nogil=True, **options)(fn)


if _nb is not None:
    from numba.core import event as _event

    class _AnnounceCompiling(_event.Listener):
        """Say once, on stderr, that the kernels are being compiled: only when numba compiles one of
        them (no usable on-disk cache yet), never when it loads them from the cache."""
        said = False

        def on_start(self, event):
            if self.said:
                return
            dispatcher = (event.data or {}).get("dispatcher")
            if getattr(getattr(dispatcher, "py_func", None), "__module__", None) == __name__:
                type(self).said = True
                print(COMPILING_MESSAGE, file=sys.stderr, flush=True)

        def on_end(self, event):
            pass

    _event.register("numba:compile", _AnnounceCompiling())


_launch_lock = threading.Lock()
_threadsafe = None      # whether numba's threading layer may run kernels from several threads at once


PARALLEL_MIN_ELEMENTS = 1 << 20
"""Kernels whose largest array has fewer elements run their loops on the calling thread alone. A parallel loop
ends when its last thread does: on cores that other processes also use, a descheduled thread holds every such
loop up by a scheduler time slice (measured on 2 shared cores, load 15: batch-norm statistics of 0.5 M values
took 7.5 ms in two threads instead of ~0.3 ms), while a loop over a few MB takes well under a millisecond on
one core. Larger arrays are worth the threads. (PyTorch makes the same choice with a smaller grain.)"""


def _guarded(kernel, serial=None):
    """Call ``kernel`` (or ``serial``, its one-thread build, when every array is under ``PARALLEL_MIN_ELEMENTS``)
    directly when numba's threading layer is thread-safe ('omp', 'tbb'); under one lock otherwise: the
    'workqueue' layer aborts the process when two Python threads run parallel kernels at once (a web app serving
    one model from several threads would). The one-thread build needs no lock."""
    def launch(*args):
        global _threadsafe
        if serial is not None and _small(args):
            return serial(*args)
        if _threadsafe:
            return kernel(*args)
        with _launch_lock:
            out = kernel(*args)
            if _threadsafe is None:
                _threadsafe = threading_layer() in ("omp", "tbb")
            return out
    launch.__name__ = launch.__qualname__ = kernel.__name__ if hasattr(kernel, "__name__") else "kernel"
    launch.kernel = kernel
    launch.serial = serial
    return launch


def _small(args) -> bool:
    for a in args:
        if type(a) is np.ndarray and a.size >= PARALLEL_MIN_ELEMENTS:
            return False
    return True


def _serial_copy(fn):
    """``fn`` under another name, so numba caches its one-thread build in files of its own."""
    import types
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__, fn.__closure__)
    copy.__qualname__ = fn.__qualname__ + "_serial"
    return copy


def _jit(fn=None, *, reassociate=False):
    """Compile a parallel kernel and its one-thread build (see ``_njit``, ``_guarded``). ``reassociate`` lets a
    sum be vectorised (reordered additions; no other fast-math licence, so NaN and inf behave as usual). The two
    builds compute the same bits: no loop's result depends on how its iterations are split."""
    if fn is None:
        return lambda f: _jit(f, reassociate=reassociate)
    if _nb is None:
        return fn
    fastmath = {"reassoc"} if reassociate else False
    return _guarded(_njit(fn, parallel=True, fastmath=fastmath), _njit(_serial_copy(fn), fastmath=fastmath))


# ---------------------------------------------------------------------------
# convolution
# ---------------------------------------------------------------------------
def _scalar(fn):
    return fn if _nb is None else _njit(fn)


@_scalar
def _valid(v, s, o, p, size):
    # Output indices j in [j0, j1) whose input index j·s + v − p lies in [0, size).
    j0 = 0
    if v < p:
        j0 = (p - v + s - 1) // s
    j1 = o
    last = size - 1 + p - v
    if last < 0:
        j1 = 0
    elif last // s + 1 < o:
        j1 = last // s + 1
    return j0, max(j0, j1)


# Output rows at least this wide (stride 1) are copied row by row, in loops the compiler
# vectorises; narrower or strided ones as one 2-D slice assignment per (row of col, image), which
# costs far less per row: 1.1–4× faster for rows of 8–20 (LeNet's conv2, ResNet's last stages,
# AlexNet-336's conv3–5) and for conv1's stride 4, slower for wide padded rows (``/tmp``
# microbenchmarks, 10 geometries); 2–4 % of a LeNet-5, cifar_cnn or ResNet-20 training step.
ROW_COPY_MIN_WIDTH = 24

# Output planes of at most this many cells (OH·OW) are copied cell by cell, without slices: for the
# last stages of a ResNet on small images (2×2 to 5×5 planes, hundreds of channels) a slice costs more than
# the few numbers it moves. im2col, 3×3 kernels, padding 1, ms (slices → cells): 32×512×2×2 7.4 → 1.4,
# 32×256×4×4 4.8 → 2.0, the same at stride 2 6.5 → 0.8, 16×512×5×5 4.4 → 2.2; 6×6 and 8×8 planes were
# faster with slices (1.3 against 2.2, 3.0 against 3.4). col2im (stride 1 only; at stride 2 the cells were
# slower): 4×4 4.3 → 3.4, 5×5 6.0 → 3.0, 2×2 level.
TINY_PLANE_CELLS = 25


@_jit
def _im2col(x, kh, kw, sh, sw, ph, pw, oh, ow, col, row_min, tiny):
    # col[(c, u, v), (n, i, j)] = x[n, c, i·SH + u − PH, j·SW + v − PW], 0 outside the image.
    # The row loops index slices from 0 (never a possibly negative j + v − PW): numba then
    # drops its negative-index wraparound test and vectorises the copy (1.3–2× faster).
    N, C, H, W = x.shape
    P = oh * ow
    for r in prange(C * kh * kw):
        c = r // (kh * kw)
        u = (r // kw) % kh
        v = r % kw
        i0, i1 = _valid(u, sh, oh, ph, H)
        j0, j1 = _valid(v, sw, ow, pw, W)
        crow = col[r]
        if P <= tiny:                            # a few cells per image: one by one
            for n in range(N):
                for i in range(oh):
                    for j in range(ow):
                        k = n * P + i * ow + j
                        if i0 <= i < i1 and j0 <= j < j1:
                            crow[k] = x[n, c, i * sh + u - ph, j * sw + v - pw]
                        else:
                            crow[k] = 0
            continue
        if sw != 1 or ow < row_min:              # one 2-D block per image: (OH, OW) ← the strided window
            hs, ws = i0 * sh + u - ph, j0 * sw + v - pw
            for n in range(N):
                dst = crow[n * P:(n + 1) * P].reshape((oh, ow))
                if i1 <= i0 or j1 <= j0:
                    dst[:, :] = 0
                    continue
                dst[:i0, :] = 0
                dst[i1:, :] = 0
                dst[i0:i1, :j0] = 0
                dst[i0:i1, j1:] = 0
                dst[i0:i1, j0:j1] = x[n, c, hs:hs + (i1 - i0 - 1) * sh + 1:sh, ws:ws + (j1 - j0 - 1) * sw + 1:sw]
            continue
        nj = j1 - j0
        for n in range(N):
            for i in range(oh):
                dst = crow[n * P + i * ow:n * P + (i + 1) * ow]
                if i < i0 or i >= i1:
                    dst[:] = 0
                    continue
                dst[:j0] = 0
                d = dst[j0:j1]
                s = x[n, c, i * sh + u - ph, j0 + v - pw:j1 + v - pw]   # contiguous: vectorised
                for j in range(nj):
                    d[j] = s[j]
                dst[j1:] = 0


def im2col(x, geom, out=None):
    """Unpadded x (N, C, H, W) → columns (C·KH·KW, N·OH·OW), zero padding applied on the fly."""
    kh, kw, sh, sw, ph, pw, oh, ow = geom
    N, C = x.shape[:2]
    col = out if out is not None else np.empty((C * kh * kw, N * oh * ow), dtype=x.dtype)
    _im2col(x, kh, kw, sh, sw, ph, pw, oh, ow, col, ROW_COPY_MIN_WIDTH, TINY_PLANE_CELLS)
    return col


@_jit
def _col2im(col, N, C, H, W, kh, kw, sh, sw, ph, pw, oh, ow, dx, tiny):
    # dx[n, c, h, w] = Σ over (u, v, i, j) with i·SH + u − PH = h, j·SW + v − PW = w of col[(c,u,v),(n,i,j)],
    # summed in (u, v) order whichever path runs.
    P = oh * ow
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        plane = dx[n, c]
        plane[:, :] = 0
        for u in range(kh):
            i0, i1 = _valid(u, sh, oh, ph, H)
            for v in range(kw):
                j0, j1 = _valid(v, sw, ow, pw, W)
                nj = j1 - j0
                crow = col[(c * kh + u) * kw + v]
                if P <= tiny and sh == 1 and sw == 1:   # a few cells per image: one by one (``TINY_PLANE_CELLS``)
                    for i in range(i0, i1):
                        for j in range(j0, j1):
                            plane[i + u - ph, j + v - pw] += crow[n * P + i * ow + j]
                    continue
                for i in range(i0, i1):
                    src = crow[n * P + i * ow + j0:n * P + i * ow + j1]
                    if sw == 1:                  # contiguous: vectorised
                        dst = plane[i * sh + u - ph, j0 + v - pw:j1 + v - pw]
                        for j in range(nj):
                            dst[j] += src[j]
                    else:
                        dst = plane[i * sh + u - ph, j0 * sw + v - pw:]
                        for j in range(nj):
                            dst[j * sw] += src[j]


def col2im(col, x_shape, geom):
    """Adjoint of ``im2col``: (C·KH·KW, N·OH·OW) → (N, C, H, W), overlaps summed, padding dropped."""
    kh, kw, sh, sw, ph, pw, oh, ow = geom
    N, C, H, W = x_shape
    dx = np.empty((N, C, H, W), dtype=col.dtype)
    _col2im(col, N, C, H, W, kh, kw, sh, sw, ph, pw, oh, ow, dx, TINY_PLANE_CELLS)
    return dx


@_jit
def _from_gemm(ymat, b, N, relu, y):
    # y[n, f, p] = ymat[f, n·P + p] + b[f]   (then max(·, 0) when relu)
    F = ymat.shape[0]
    P = ymat.shape[1] // N
    for nf in prange(N * F):
        n = nf // F
        f = nf % F
        bf = b[f]
        src = ymat[f, n * P:(n + 1) * P]
        dst = y[n, f]
        if relu:
            for p in range(P):
                t = src[p] + bf
                dst[p] = 0 if t < 0 else t   # NaN stays NaN
        else:
            for p in range(P):
                dst[p] = src[p] + bf


def from_gemm(ymat, b, N, relu=False):
    """GEMM result (F, N·P) plus bias (F,) → (N, F, P) contiguous (bias may be None)."""
    F = ymat.shape[0]
    if b is None:
        b = np.zeros(F, dtype=ymat.dtype)
    y = np.empty((N, F, ymat.shape[1] // N), dtype=ymat.dtype)
    _from_gemm(ymat, b.astype(ymat.dtype, copy=False), N, relu, y)
    return y


@_jit(reassociate=True)
def _to_gemm(dy, y, masked, dmat, db):
    # dmat[f, n·P + p] = dy[n, f, p] (· [y[n, f, p] > 0] when masked: a fused ReLU's backward);
    # db[f] = Σ_{n,p} of the same.
    N, F, P = dy.shape
    for f in prange(F):
        s = 0.0
        for n in range(N):
            src = dy[n, f]
            dst = dmat[f, n * P:(n + 1) * P]
            if masked:
                mask = y[n, f]
                for p in range(P):
                    dst[p] = src[p] if mask[p] > 0 else 0
            else:
                for p in range(P):
                    dst[p] = src[p]
            for p in range(P):                   # one summing loop for both cases: the same bits
                s += dst[p]                      # whether a ReLU's mask was fused here or applied before
        db[f] = s


def to_gemm(dy, relu_y=None, out=None):
    """δ (N, F, OH, OW) → (δ in GEMM layout (F, N·OH·OW), Σ_{n,i,j} δ = ∂L/∂b (F,)).

    With ``relu_y`` (the output of a ReLU fused into the layer) δ is first masked by [y > 0].
    ``out``: an (F, N·OH·OW) buffer of δ's dtype to fill.
    """
    N, F = dy.shape[:2]
    d3 = np.ascontiguousarray(dy).reshape(N, F, -1)
    y3 = d3 if relu_y is None else np.ascontiguousarray(relu_y).reshape(N, F, -1)
    dmat = out if out is not None else np.empty((F, N * d3.shape[2]), dtype=dy.dtype)
    db = np.empty(F, dtype=dy.dtype)
    _to_gemm(d3, y3, relu_y is not None, dmat, db)
    return dmat, db


@_jit
def _vecmat_rank1_update(w, v, a, row, parts):
    # parts[k] = Σ_{i in chunk k} v[i] · w[i, :]   (with the old w), then w[i, :] += a[i] · row,
    # row by row: one read and one write of w in all.
    M, K = w.shape
    nchunks = parts.shape[0]
    for k in prange(nchunks):
        lo = M * k // nchunks
        hi = M * (k + 1) // nchunks
        acc = parts[k]
        acc[:] = 0
        for i in range(lo, hi):
            vi = v[i]
            ai = a[i]
            wi = w[i]
            for j in range(K):
                t = wi[j]
                acc[j] += vi * t
                wi[j] = t + ai * row[j]


def vecmat_rank1_update(w, v, a, row):
    """Return v·w (v (M,), w (M, K)) computed with the old w, and update w += a ⊗ row in place,
    in one pass over w: a batch-of-one Linear layer's input gradient and its fused SGD step."""
    nchunks = 4 * max(1, _nb.get_num_threads())
    parts = np.empty((nchunks, w.shape[1]), dtype=w.dtype)
    _vecmat_rank1_update(w, v.astype(w.dtype, copy=False), a.astype(w.dtype, copy=False),
                         row.astype(w.dtype, copy=False), parts)
    return parts.sum(axis=0)


# ---------------------------------------------------------------------------
# Winograd F(2×2, 3×3) transforms (see ``conv_winograd``): one pass each, split over image planes
# ---------------------------------------------------------------------------
def _chunks():
    return 4 * max(1, _nb.get_num_threads())


SMALL_PLANE = 16
"""Tiles per image plane below which the Winograd kernels move a plane's numbers one by one instead of as slices
(each slice has a fixed cost, which dominates a plane of a few tiles: ResNet-18's 2×2 and 4×4 planes at 64×64).
Above it slices are faster (whole rows of 16×16 planes and larger, 1.5–2×)."""


@_jit
def _wino_input(x, ph, pw, th, tw, V, nchunks):
    # V[ξ, c, (n, a, b)] = (Bᵀ d B)[ξ], d = x_pad[n, c, 2a:2a+4, 2b:2b+4]. Each plane is copied into a
    # zero-bordered buffer first (no bounds tests in the tile loop) and transformed into a small buffer
    # (16, TH·TW), whose 16 rows are then copied out whole: V's 16 planes lie a power of two apart for
    # common sizes, and storing to all 16 tile by tile made cache lines evict each other (3–5× slower).
    N, C, H, W = x.shape
    P = th * tw
    for k in prange(nchunks):
        lo = N * C * k // nchunks
        hi = N * C * (k + 1) // nchunks
        buf = np.zeros((2 * th + 2, 2 * tw + 2), dtype=x.dtype)
        v = np.empty((16, P), dtype=V.dtype)
        for nc in range(lo, hi):
            n = nc // C
            c = nc % C
            if P < SMALL_PLANE:
                for i in range(H):
                    for j in range(W):
                        buf[ph + i, pw + j] = x[n, c, i, j]
            else:
                buf[ph:ph + H, pw:pw + W] = x[n, c]
            for a in range(th):
                r0 = buf[2 * a]
                r1 = buf[2 * a + 1]
                r2 = buf[2 * a + 2]
                r3 = buf[2 * a + 3]
                for b in range(tw):
                    s = 2 * b
                    t = a * tw + b
                    # Bᵀ d: rows (d0 − d2, d1 + d2, d2 − d1, d1 − d3), per column j
                    z00 = r0[s] - r2[s]
                    z01 = r0[s + 1] - r2[s + 1]
                    z02 = r0[s + 2] - r2[s + 2]
                    z03 = r0[s + 3] - r2[s + 3]
                    z10 = r1[s] + r2[s]
                    z11 = r1[s + 1] + r2[s + 1]
                    z12 = r1[s + 2] + r2[s + 2]
                    z13 = r1[s + 3] + r2[s + 3]
                    z20 = r2[s] - r1[s]
                    z21 = r2[s + 1] - r1[s + 1]
                    z22 = r2[s + 2] - r1[s + 2]
                    z23 = r2[s + 3] - r1[s + 3]
                    z30 = r1[s] - r3[s]
                    z31 = r1[s + 1] - r3[s + 1]
                    z32 = r1[s + 2] - r3[s + 2]
                    z33 = r1[s + 3] - r3[s + 3]
                    # (·) B: the same combination of columns
                    v[0, t] = z00 - z02
                    v[1, t] = z01 + z02
                    v[2, t] = z02 - z01
                    v[3, t] = z01 - z03
                    v[4, t] = z10 - z12
                    v[5, t] = z11 + z12
                    v[6, t] = z12 - z11
                    v[7, t] = z11 - z13
                    v[8, t] = z20 - z22
                    v[9, t] = z21 + z22
                    v[10, t] = z22 - z21
                    v[11, t] = z21 - z23
                    v[12, t] = z30 - z32
                    v[13, t] = z31 + z32
                    v[14, t] = z32 - z31
                    v[15, t] = z31 - z33
            base = n * P
            if P < SMALL_PLANE:
                for xi in range(16):
                    for t in range(P):
                        V[xi, c, base + t] = v[xi, t]
            else:
                for xi in range(16):
                    V[xi, c, base:base + P] = v[xi]


@_jit
def _wino_weight(w, U):
    # U[ξ, f, c] = (G w[f, c] Gᵀ)[ξ]; G's rows combine g0, g1, g2 as (g0, (g0+g1+g2)/2, (g0−g1+g2)/2, g2). Per filter
    # f: its C·9 weights gathered into nine rows over c, then each row i of G·g and its four columns Gᵀ as one pass
    # over c straight into U's rows (vectorised over c; a loop per (f, c) was 2× the time of copying U).
    F, C = w.shape[:2]
    for f in prange(F):
        g = np.empty((9, C), dtype=np.float64)
        for c in range(C):
            for k in range(9):
                g[k, c] = w[f, c, k // 3, k % 3]
        for i in range(4):
            for c in range(C):
                if i == 0:
                    z0 = g[0, c]
                    z1 = g[1, c]
                    z2 = g[2, c]
                elif i == 1:
                    z0 = 0.5 * (g[0, c] + g[3, c] + g[6, c])
                    z1 = 0.5 * (g[1, c] + g[4, c] + g[7, c])
                    z2 = 0.5 * (g[2, c] + g[5, c] + g[8, c])
                elif i == 2:
                    z0 = 0.5 * (g[0, c] - g[3, c] + g[6, c])
                    z1 = 0.5 * (g[1, c] - g[4, c] + g[7, c])
                    z2 = 0.5 * (g[2, c] - g[5, c] + g[8, c])
                else:
                    z0 = g[6, c]
                    z1 = g[7, c]
                    z2 = g[8, c]
                U[4 * i, f, c] = z0
                U[4 * i + 1, f, c] = 0.5 * (z0 + z1 + z2)
                U[4 * i + 2, f, c] = 0.5 * (z0 - z1 + z2)
                U[4 * i + 3, f, c] = z2


def winograd_weight(w, out=None, tile=2):
    """Winograd weight transform: w (F, C, 3, 3) → U (α², F, C) (see ``conv_winograd``; α = tile + 2)."""
    F, C = w.shape[:2]
    U = out if out is not None else np.empty(((tile + 2) ** 2, F, C), dtype=w.dtype)
    (_wino4_weight if _tile(tile) == 4 else _wino_weight)(np.ascontiguousarray(w), U)
    return U


@_jit
def _wino_weight_backward(du, dw):
    # dw[f, c] = Gᵀ ∂U[f, c] G; Gᵀ's rows combine d0…d3 as (d0 + (d1+d2)/2, (d1−d2)/2, (d1+d2)/2 + d3). Per filter f:
    # Gᵀ down the columns and G along the rows as passes over c (vectorised, reading ∂U's rows where they lie)
    # into nine rows, then scattered into dw[f].
    F, C = dw.shape[:2]
    for f in prange(F):
        e = np.empty((12, C), dtype=np.float64)
        o = np.empty((9, C), dtype=np.float64)
        for j in range(4):
            for c in range(C):
                d0 = du[j, f, c]
                d1 = du[4 + j, f, c]
                d2 = du[8 + j, f, c]
                d3 = du[12 + j, f, c]
                e[j, c] = d0 + 0.5 * (d1 + d2)
                e[4 + j, c] = 0.5 * (d1 - d2)
                e[8 + j, c] = 0.5 * (d1 + d2) + d3
        for i in range(3):
            for c in range(C):
                e0 = e[4 * i, c]
                e1 = e[4 * i + 1, c]
                e2 = e[4 * i + 2, c]
                e3 = e[4 * i + 3, c]
                o[3 * i, c] = e0 + 0.5 * (e1 + e2)
                o[3 * i + 1, c] = 0.5 * (e1 - e2)
                o[3 * i + 2, c] = 0.5 * (e1 + e2) + e3
        for c in range(C):
            for k in range(9):
                dw[f, c, k // 3, k % 3] = o[k, c]


def winograd_weight_backward(du, out=None, tile=2):
    """Adjoint of the weight transform: ∂U (α², F, C) → ∂w (F, C, 3, 3) (into ``out`` when given)."""
    F, C = du.shape[1:]
    dw = out if out is not None else np.empty((F, C, 3, 3), dtype=du.dtype)
    (_wino4_weight_backward if _tile(tile) == 4 else _wino_weight_backward)(du, dw)
    return dw


def winograd_input(x, geom, out=None, tile=2):
    """Winograd input transform: x (N, C, H, W) → V (α², C, N·TH·TW) (see ``conv_winograd``)."""
    N, C = x.shape[:2]
    th, tw = -(-geom[6] // _tile(tile)), -(-geom[7] // tile)
    V = out if out is not None else np.empty(((tile + 2) ** 2, C, N * th * tw), dtype=x.dtype)
    (_wino4_input if tile == 4 else _wino_input)(np.ascontiguousarray(x), geom[4], geom[5], th, tw, V, _chunks())
    return V


@_jit
def _wino_output(m, b, N, oh, ow, th, tw, relu, y, nchunks):
    # y[n, f, 2a + i, 2b + j] = (Aᵀ M_t A)[i, j] + b[f], cut at (OH, OW); then max(·, 0) when relu.
    # The plane's 16 rows of M are copied into a small buffer first (see ``_wino_input``); each row of tiles is
    # transformed into two whole output rows in another (no bounds tests in the tile loop), which are then copied
    # into y cut at OW — 1.3–1.5× faster than storing tile by tile with the edge tested at each store.
    F = m.shape[1]
    P = th * tw
    for k in prange(nchunks):
        q = np.empty((16, P), dtype=m.dtype)
        r0 = np.empty(2 * tw, dtype=m.dtype)
        r1 = np.empty(2 * tw, dtype=m.dtype)
        for nf in range(N * F * k // nchunks, N * F * (k + 1) // nchunks):
            n = nf // F
            f = nf % F
            bf = b[f]
            dst = y[n, f]
            if P < SMALL_PLANE:
                for xi in range(16):
                    for t in range(P):
                        q[xi, t] = m[xi, f, n * P + t]
            else:
                for xi in range(16):
                    q[xi] = m[xi, f, n * P:(n + 1) * P]
            for a in range(th):
                for bb in range(tw):
                    t = a * tw + bb
                    # Aᵀ M: rows (m0 + m1 + m2, m1 − m2 − m3), per column j; then the same on columns
                    q0 = q[0, t] + q[4, t] + q[8, t]
                    q1 = q[1, t] + q[5, t] + q[9, t]
                    q2 = q[2, t] + q[6, t] + q[10, t]
                    q3 = q[3, t] + q[7, t] + q[11, t]
                    p0 = q[4, t] - q[8, t] - q[12, t]
                    p1 = q[5, t] - q[9, t] - q[13, t]
                    p2 = q[6, t] - q[10, t] - q[14, t]
                    p3 = q[7, t] - q[11, t] - q[15, t]
                    r0[2 * bb] = q0 + q1 + q2 + bf
                    r0[2 * bb + 1] = q1 - q2 - q3 + bf
                    r1[2 * bb] = p0 + p1 + p2 + bf
                    r1[2 * bb + 1] = p1 - p2 - p3 + bf
                i = 2 * a
                if relu:
                    for j in range(ow):
                        v = r0[j]
                        dst[i, j] = 0 if v < 0 else v          # NaN stays NaN
                    if i + 1 < oh:
                        for j in range(ow):
                            v = r1[j]
                            dst[i + 1, j] = 0 if v < 0 else v
                elif P < SMALL_PLANE:
                    for j in range(ow):
                        dst[i, j] = r0[j]
                    if i + 1 < oh:
                        for j in range(ow):
                            dst[i + 1, j] = r1[j]
                else:
                    dst[i, :] = r0[:ow]
                    if i + 1 < oh:
                        dst[i + 1, :] = r1[:ow]


def winograd_output(m, b, N, geom, relu=False, out=None, tile=2):
    """Winograd output transform: M (α², F, T) (+ b) [then max(·, 0)] → y (N, F, OH, OW) (into ``out``,
    C-contiguous, when given)."""
    F = m.shape[1]
    oh, ow = geom[6], geom[7]
    if b is None:
        b = np.zeros(F, dtype=m.dtype)
    y = out if out is not None else np.empty((N, F, oh, ow), dtype=m.dtype)
    th, tw = -(-oh // _tile(tile)), -(-ow // tile)
    (_wino4_output if tile == 4 else _wino_output)(m, b.astype(m.dtype, copy=False), N, oh, ow, th, tw, relu, y,
                                                   _chunks())
    return y


@_jit(reassociate=True)
def _wino_output_backward(dy, y, masked, th, tw, dm, db):
    # ∂M_t = A δ_t Aᵀ with δ_t the 2×2 tile of δ (· [y > 0] when masked; 0 beyond OH, OW); db[f] = Σ δ.
    # Each plane's 16 rows of ∂M are built in a small buffer and copied out whole (see ``_wino_input``).
    N, F, oh, ow = dy.shape
    P = th * tw
    for f in prange(F):
        s = 0.0
        e = np.empty((16, P), dtype=dm.dtype)
        for n in range(N):
            d = dy[n, f]
            mk = y[n, f]
            for a in range(th):
                for bb in range(tw):
                    i = 2 * a
                    j = 2 * bb
                    d00 = d[i, j]
                    d01 = d[i, j + 1] if j + 1 < ow else 0
                    d10 = d[i + 1, j] if i + 1 < oh else 0
                    d11 = d[i + 1, j + 1] if i + 1 < oh and j + 1 < ow else 0
                    if masked:
                        d00 = d00 if mk[i, j] > 0 else 0
                        if j + 1 < ow:
                            d01 = d01 if mk[i, j + 1] > 0 else 0
                        if i + 1 < oh:
                            d10 = d10 if mk[i + 1, j] > 0 else 0
                            if j + 1 < ow:
                                d11 = d11 if mk[i + 1, j + 1] > 0 else 0
                    s += d00 + d01 + d10 + d11
                    # A δ: rows (d0, d0 + d1, d0 − d1, −d1), per column j; then (·) Aᵀ on columns alike
                    e00 = d00
                    e01 = d01
                    e10 = d00 + d10
                    e11 = d01 + d11
                    e20 = d00 - d10
                    e21 = d01 - d11
                    e30 = -d10
                    e31 = -d11
                    t = a * tw + bb
                    e[0, t] = e00
                    e[1, t] = e00 + e01
                    e[2, t] = e00 - e01
                    e[3, t] = -e01
                    e[4, t] = e10
                    e[5, t] = e10 + e11
                    e[6, t] = e10 - e11
                    e[7, t] = -e11
                    e[8, t] = e20
                    e[9, t] = e20 + e21
                    e[10, t] = e20 - e21
                    e[11, t] = -e21
                    e[12, t] = e30
                    e[13, t] = e30 + e31
                    e[14, t] = e30 - e31
                    e[15, t] = -e31
            if P < SMALL_PLANE:
                for xi in range(16):
                    for t in range(P):
                        dm[xi, f, n * P + t] = e[xi, t]
            else:
                for xi in range(16):
                    dm[xi, f, n * P:(n + 1) * P] = e[xi]
        db[f] = s


def winograd_output_backward(dy, geom, relu_y=None, need_db=True, out=None, tile=2):
    """Adjoint of the output transform: δ (N, F, OH, OW) [· [relu_y > 0]] → (∂M (α², F, T), Σδ (F,) or None)."""
    N, F, oh, ow = dy.shape
    th, tw = -(-oh // _tile(tile)), -(-ow // tile)
    d = np.ascontiguousarray(dy)
    y = d if relu_y is None else np.ascontiguousarray(relu_y)
    dm = out if out is not None else np.empty(((tile + 2) ** 2, F, N * th * tw), dtype=dy.dtype)
    db = np.empty(F, dtype=dy.dtype)
    (_wino4_output_backward if tile == 4 else _wino_output_backward)(d, y, relu_y is not None, th, tw, dm, db)
    return dm, (db if need_db else None)


@_jit
def _wino_input_backward(dv, ph, pw, th, tw, dx, nchunks):
    # dx[n, c] = the padded plane's interior after adding B ∂V_t Bᵀ (4×4) at (2a, 2b) for every tile t.
    # The plane's 16 rows of ∂V are copied into a small buffer first (see ``_wino_input``).
    N, C, H, W = dx.shape
    P = th * tw
    for k in prange(nchunks):
        lo = N * C * k // nchunks
        hi = N * C * (k + 1) // nchunks
        buf = np.empty((2 * th + 2, 2 * tw + 2), dtype=dx.dtype)
        q = np.empty((16, P), dtype=dv.dtype)
        for nc in range(lo, hi):
            n = nc // C
            c = nc % C
            if P < SMALL_PLANE:
                for xi in range(16):
                    for t in range(P):
                        q[xi, t] = dv[xi, c, n * P + t]
            else:
                for xi in range(16):
                    q[xi] = dv[xi, c, n * P:(n + 1) * P]
            buf[:, :] = 0
            for a in range(th):
                r0 = buf[2 * a]
                r1 = buf[2 * a + 1]
                r2 = buf[2 * a + 2]
                r3 = buf[2 * a + 3]
                for b in range(tw):
                    t = a * tw + b
                    s = 2 * b
                    # B ∂V: rows (v0, v1 − v2 + v3, −v0 + v1 + v2, −v3), per column j
                    w00 = q[0, t]
                    w01 = q[1, t]
                    w02 = q[2, t]
                    w03 = q[3, t]
                    w10 = q[4, t] - q[8, t] + q[12, t]
                    w11 = q[5, t] - q[9, t] + q[13, t]
                    w12 = q[6, t] - q[10, t] + q[14, t]
                    w13 = q[7, t] - q[11, t] + q[15, t]
                    w20 = -q[0, t] + q[4, t] + q[8, t]
                    w21 = -q[1, t] + q[5, t] + q[9, t]
                    w22 = -q[2, t] + q[6, t] + q[10, t]
                    w23 = -q[3, t] + q[7, t] + q[11, t]
                    w30 = -q[12, t]
                    w31 = -q[13, t]
                    w32 = -q[14, t]
                    w33 = -q[15, t]
                    # (·) Bᵀ: columns (w0, w1 − w2 + w3, −w0 + w1 + w2, −w3), added onto the patch
                    r0[s] += w00
                    r0[s + 1] += w01 - w02 + w03
                    r0[s + 2] += -w00 + w01 + w02
                    r0[s + 3] -= w03
                    r1[s] += w10
                    r1[s + 1] += w11 - w12 + w13
                    r1[s + 2] += -w10 + w11 + w12
                    r1[s + 3] -= w13
                    r2[s] += w20
                    r2[s + 1] += w21 - w22 + w23
                    r2[s + 2] += -w20 + w21 + w22
                    r2[s + 3] -= w23
                    r3[s] += w30
                    r3[s + 1] += w31 - w32 + w33
                    r3[s + 2] += -w30 + w31 + w32
                    r3[s + 3] -= w33
            if P < SMALL_PLANE:
                for i in range(H):
                    for j in range(W):
                        dx[n, c, i, j] = buf[ph + i, pw + j]
            else:
                dx[n, c] = buf[ph:ph + H, pw:pw + W]


def winograd_input_backward(dv, x_shape, geom, out=None, tile=2):
    """Adjoint of the input transform: ∂V (α², C, T) → ∂x (N, C, H, W), overlaps summed, padding dropped (into
    ``out``, C-contiguous, when given)."""
    th, tw = -(-geom[6] // _tile(tile)), -(-geom[7] // tile)
    dx = out if out is not None else np.empty(x_shape, dtype=dv.dtype)
    (_wino4_input_backward if tile == 4 else _wino_input_backward)(dv, geom[4], geom[5], th, tw, dx, _chunks())
    return dx


def _tile(tile):
    if tile not in (2, 4):
        raise ValueError(f"Winograd transforms: tile must be 2 or 4, got {tile!r}")
    return tile


# ---------------------------------------------------------------------------
# Winograd F(4×4, 3×3) transforms (``conv_winograd``, tile=4): the same passes on 6×6 patches and 4×4 tiles, each
# transform's two one-dimensional halves as loops over all the tiles of an image plane (vectorised by the compiler:
# 0.53–1.05× the time of the same transforms written tile by tile as F(2×2, 3×3)'s are, alternated in one
# process; reading M and ∂V in place paid, writing V and ∂M in place did not).
# The one-dimensional transforms are written in additions (2a as a + a), so float32 stays float32 (numba would
# promote a product with an integer constant to float64) and the multiples of 2, 4 and 8 are exact; the weight
# transforms, with their thirds and sixths, run in float64 and round once when stored.
# ---------------------------------------------------------------------------
@_scalar
def _x2(a):
    return a + a


@_scalar
def _x4(a):
    b = a + a
    return b + b


@_scalar
def _bt6(d0, d1, d2, d3, d4, d5):
    # Bᵀ·d: rows (4d0 − 5d2 + d4, −4d1 − 4d2 + d3 + d4, 4d1 − 4d2 − d3 + d4, −2d1 − d2 + 2d3 + d4,
    # 2d1 − d2 − 2d3 + d4, 4d1 − 5d3 + d5)
    h = d4 - d2
    t = _x2(d3 - d1)
    return (_x4(d0 - d2) + h, (d3 + d4) - _x4(d1 + d2), (d4 - d3) + _x4(d1 - d2), h + t, h - t,
            _x4(d1 - d3) + (d5 - d3))


@_scalar
def _b6(v0, v1, v2, v3, v4, v5):
    # B·v, the adjoint of ``_bt6``: (4v0, 4(v2 − v1 + v5) + 2(v4 − v3), −(4(v0 + v1 + v2) + v0 + v3 + v4),
    # (v1 − v2) + 2(v3 − v4) − 5v5, v0 + v1 + v2 + v3 + v4, v5)
    s = v0 + v1 + v2
    return (_x4(v0), _x4(v2 - v1 + v5) + _x2(v4 - v3), -(_x4(s) + (v0 + v3 + v4)),
            (v1 - v2) + _x2(v3 - v4) - (_x4(v5) + v5), s + v3 + v4, v5)


@_scalar
def _at6(m0, m1, m2, m3, m4, m5):
    # Aᵀ·m: (m0 + m1 + m2 + m3 + m4, m1 − m2 + 2(m3 − m4), m1 + m2 + 4(m3 + m4), m1 − m2 + 8(m3 − m4) + m5)
    s12 = m1 + m2
    d12 = m1 - m2
    s34 = m3 + m4
    d34 = m3 - m4
    return m0 + s12 + s34, d12 + _x2(d34), s12 + _x4(s34), d12 + _x2(_x4(d34)) + m5


@_scalar
def _a4(d0, d1, d2, d3):
    # A·d, the adjoint of ``_at6``: (d0, d0 + d1 + d2 + d3, d0 − d1 + d2 − d3, d0 + 2d1 + 4d2 + 8d3,
    # d0 − 2d1 + 4d2 − 8d3, d3)
    s02 = d0 + d2
    s13 = d1 + d3
    t02 = d0 + _x4(d2)
    t13 = _x2(d1 + _x4(d3))
    return d0, s02 + s13, s02 - s13, t02 + t13, t02 - t13, d3


@_scalar
def _g6(g0, g1, g2):
    # G·g (float64): (g0/4, −(g0 + g1 + g2)/6, −(g0 − g1 + g2)/6, (g0/4 + g1/2 + g2)/6, (g0/4 − g1/2 + g2)/6, g2)
    g0 = 1.0 * g0
    g1 = 1.0 * g1
    g2 = 1.0 * g2
    q = 0.25 * g0
    h = 0.5 * g1
    return q, -(g0 + g1 + g2) / 6.0, -(g0 - g1 + g2) / 6.0, (q + h + g2) / 6.0, (q - h + g2) / 6.0, g2


@_scalar
def _gt6(e0, e1, e2, e3, e4, e5):
    # Gᵀ·e (float64): (e0/4 − (e1 + e2)/6 + (e3 + e4)/24, (e2 − e1)/6 + (e3 − e4)/12, (e3 + e4 − e1 − e2)/6 + e5)
    s12 = 1.0 * e1 + e2
    s34 = 1.0 * e3 + e4
    return (0.25 * e0 - s12 / 6.0 + s34 / 24.0, (1.0 * e2 - e1) / 6.0 + (1.0 * e3 - e4) / 12.0,
            (s34 - s12) / 6.0 + 1.0 * e5)


@_jit
def _wino4_input(x, ph, pw, th, tw, V, nchunks):
    # V[ξ, c, (n, a, b)] = (Bᵀ d B)[ξ], ξ = 6i + j, d = x_pad[n, c, 4a:4a+6, 4b:4b+6]. Per image plane: the plane in
    # a zero-bordered buffer; its 6×6 patches gathered into 36 rows over the plane's tiles (d[6k + l, t]); then
    # Bᵀ and B each as one pass over those rows, every loop running over all the plane's tiles at once (so the
    # compiler vectorises it), into a small (36, TH·TW) buffer whose rows are copied out whole.
    N, C, H, W = x.shape
    P = th * tw
    for k in prange(nchunks):
        lo = N * C * k // nchunks
        hi = N * C * (k + 1) // nchunks
        buf = np.zeros((4 * th + 2, 4 * tw + 2), dtype=x.dtype)
        d = np.empty((36, P), dtype=V.dtype)
        z = np.empty((36, P), dtype=V.dtype)
        for nc in range(lo, hi):
            n = nc // C
            c = nc % C
            buf[ph:ph + H, pw:pw + W] = x[n, c]
            for a in range(th):
                for r in range(6):
                    row = buf[4 * a + r]
                    for b in range(tw):
                        t = a * tw + b
                        s = 4 * b
                        for u in range(6):
                            d[6 * r + u, t] = row[s + u]
            for u in range(6):                      # Bᵀ down each column u of the patches
                for t in range(P):
                    z0, z1, z2, z3, z4, z5 = _bt6(d[u, t], d[6 + u, t], d[12 + u, t], d[18 + u, t], d[24 + u, t],
                                                  d[30 + u, t])
                    z[u, t] = z0
                    z[6 + u, t] = z1
                    z[12 + u, t] = z2
                    z[18 + u, t] = z3
                    z[24 + u, t] = z4
                    z[30 + u, t] = z5
            for i in range(6):                      # (·) B along each row i
                for t in range(P):
                    v0, v1, v2, v3, v4, v5 = _bt6(z[6 * i, t], z[6 * i + 1, t], z[6 * i + 2, t], z[6 * i + 3, t],
                                                  z[6 * i + 4, t], z[6 * i + 5, t])
                    d[6 * i, t] = v0
                    d[6 * i + 1, t] = v1
                    d[6 * i + 2, t] = v2
                    d[6 * i + 3, t] = v3
                    d[6 * i + 4, t] = v4
                    d[6 * i + 5, t] = v5
            base = n * P
            if P < SMALL_PLANE:
                for xi in range(36):
                    for t in range(P):
                        V[xi, c, base + t] = d[xi, t]
            else:
                for xi in range(36):
                    V[xi, c, base:base + P] = d[xi]


@_jit
def _wino4_weight(w, U):
    # U[ξ, f, c] = (G w[f, c] Gᵀ)[ξ], in float64, rounded once into U. Per filter f, as ``_wino_weight``: its
    # weights gathered into nine rows over c, then G and Gᵀ as passes over c (vectorised), the second into U.
    F, C = w.shape[:2]
    for f in prange(F):
        g = np.empty((9, C), dtype=np.float64)
        z = np.empty((18, C), dtype=np.float64)
        for c in range(C):
            for k in range(9):
                g[k, c] = w[f, c, k // 3, k % 3]
        for j in range(3):                      # G down each column j: z[3i + j] for the rows i of G·g
            for c in range(C):
                z0, z1, z2, z3, z4, z5 = _g6(g[j, c], g[3 + j, c], g[6 + j, c])
                z[j, c] = z0
                z[3 + j, c] = z1
                z[6 + j, c] = z2
                z[9 + j, c] = z3
                z[12 + j, c] = z4
                z[15 + j, c] = z5
        for i in range(6):                      # (·) Gᵀ along each row i, straight into U
            for c in range(C):
                u0, u1, u2, u3, u4, u5 = _g6(z[3 * i, c], z[3 * i + 1, c], z[3 * i + 2, c])
                U[6 * i, f, c] = u0
                U[6 * i + 1, f, c] = u1
                U[6 * i + 2, f, c] = u2
                U[6 * i + 3, f, c] = u3
                U[6 * i + 4, f, c] = u4
                U[6 * i + 5, f, c] = u5


@_jit
def _wino4_weight_backward(du, dw):
    # dw[f, c] = Gᵀ ∂U[f, c] G, in float64, rounded once into dw. Per filter f: Gᵀ down the columns (reading ∂U's
    # rows where they lie) and G along the rows as passes over c (vectorised), then scattered into dw[f].
    F, C = dw.shape[:2]
    for f in prange(F):
        e = np.empty((18, C), dtype=np.float64)
        o = np.empty((9, C), dtype=np.float64)
        for j in range(6):                      # Gᵀ down each column j: e[6i + j] for i = 0, 1, 2
            for c in range(C):
                e0, e1, e2 = _gt6(du[j, f, c], du[6 + j, f, c], du[12 + j, f, c], du[18 + j, f, c],
                                  du[24 + j, f, c], du[30 + j, f, c])
                e[j, c] = e0
                e[6 + j, c] = e1
                e[12 + j, c] = e2
        for i in range(3):                      # (·) G along each row i
            for c in range(C):
                o0, o1, o2 = _gt6(e[6 * i, c], e[6 * i + 1, c], e[6 * i + 2, c], e[6 * i + 3, c], e[6 * i + 4, c],
                                  e[6 * i + 5, c])
                o[3 * i, c] = o0
                o[3 * i + 1, c] = o1
                o[3 * i + 2, c] = o2
        for c in range(C):
            for k in range(9):
                dw[f, c, k // 3, k % 3] = o[k, c]


@_jit
def _wino4_output(m, b, N, oh, ow, th, tw, relu, y, nchunks):
    # y[n, f, 4a + i, 4b + j] = (Aᵀ M_t A)[i, j] + b[f], cut at (OH, OW); then max(·, 0) when relu. Per (image,
    # filter) plane: Aᵀ and A each as one pass over all the plane's tiles at once (vectorised; the first reads M's
    # rows where they lie: copying them first cost more), then each row of tiles scattered into four whole output
    # rows, copied into y cut at OW.
    F = m.shape[1]
    P = th * tw
    for k in prange(nchunks):
        q = np.empty((36, P), dtype=m.dtype)
        p = np.empty((24, P), dtype=m.dtype)
        rows = np.empty((4, 4 * tw), dtype=m.dtype)
        for nf in range(N * F * k // nchunks, N * F * (k + 1) // nchunks):
            n = nf // F
            f = nf % F
            bf = b[f]
            dst = y[n, f]
            base = n * P
            for j in range(6):                      # Aᵀ down each column j of M: p[6i + j] for output rows i
                for t in range(P):
                    p0, p1, p2, p3 = _at6(m[j, f, base + t], m[6 + j, f, base + t], m[12 + j, f, base + t],
                                          m[18 + j, f, base + t], m[24 + j, f, base + t], m[30 + j, f, base + t])
                    p[j, t] = p0
                    p[6 + j, t] = p1
                    p[12 + j, t] = p2
                    p[18 + j, t] = p3
            for i in range(4):                      # (·) A along each row i, + b: q[4i + j] for output columns j
                for t in range(P):
                    y0, y1, y2, y3 = _at6(p[6 * i, t], p[6 * i + 1, t], p[6 * i + 2, t], p[6 * i + 3, t],
                                          p[6 * i + 4, t], p[6 * i + 5, t])
                    q[4 * i, t] = y0 + bf
                    q[4 * i + 1, t] = y1 + bf
                    q[4 * i + 2, t] = y2 + bf
                    q[4 * i + 3, t] = y3 + bf
            for a in range(th):
                for i in range(4):
                    for bb in range(tw):
                        t = a * tw + bb
                        rows[i, 4 * bb] = q[4 * i, t]
                        rows[i, 4 * bb + 1] = q[4 * i + 1, t]
                        rows[i, 4 * bb + 2] = q[4 * i + 2, t]
                        rows[i, 4 * bb + 3] = q[4 * i + 3, t]
                for i in range(4):
                    r = 4 * a + i
                    if r < oh:
                        if relu:
                            for j in range(ow):
                                v = rows[i, j]
                                dst[r, j] = 0 if v < 0 else v          # NaN stays NaN
                        else:
                            dst[r, :] = rows[i, :ow]


@_jit
def _wino4_output_backward(dy, y, masked, th, tw, dm, db):
    # ∂M_t = A δ_t Aᵀ with δ_t the 4×4 tile of δ (· [y > 0] when masked; 0 beyond OH, OW); db[f] = Σ δ. Per plane:
    # δ copied into a zero-bordered buffer (masked on the way, summed in float64), its 4×4 tiles gathered into 16
    # rows over the plane's tiles, then A and Aᵀ each as one vectorised pass, into a small (36, TH·TW) buffer
    # copied out whole.
    N, F, oh, ow = dy.shape
    P = th * tw
    for f in prange(F):
        s = 0.0
        e = np.empty((36, P), dtype=dm.dtype)
        g = np.empty((24, P), dtype=dm.dtype)
        d = np.zeros((4 * th, 4 * tw), dtype=dm.dtype)
        for n in range(N):
            src = dy[n, f]
            mk = y[n, f]
            for i in range(oh):
                for j in range(ow):
                    if masked and not mk[i, j] > 0:
                        d[i, j] = 0
                    else:
                        d[i, j] = src[i, j]
                    s += d[i, j]
            for a in range(th):
                for r in range(4):
                    row = d[4 * a + r]
                    for bb in range(tw):
                        t = a * tw + bb
                        c0 = 4 * bb
                        e[4 * r, t] = row[c0]
                        e[4 * r + 1, t] = row[c0 + 1]
                        e[4 * r + 2, t] = row[c0 + 2]
                        e[4 * r + 3, t] = row[c0 + 3]
            for j in range(4):                      # A down each column j: g[4i + j] for rows i of the 6×6
                for t in range(P):
                    h0, h1, h2, h3, h4, h5 = _a4(e[j, t], e[4 + j, t], e[8 + j, t], e[12 + j, t])
                    g[j, t] = h0
                    g[4 + j, t] = h1
                    g[8 + j, t] = h2
                    g[12 + j, t] = h3
                    g[16 + j, t] = h4
                    g[20 + j, t] = h5
            for i in range(6):                      # (·) Aᵀ along each row i
                for t in range(P):
                    e0, e1, e2, e3, e4, e5 = _a4(g[4 * i, t], g[4 * i + 1, t], g[4 * i + 2, t], g[4 * i + 3, t])
                    e[6 * i, t] = e0
                    e[6 * i + 1, t] = e1
                    e[6 * i + 2, t] = e2
                    e[6 * i + 3, t] = e3
                    e[6 * i + 4, t] = e4
                    e[6 * i + 5, t] = e5
            if P < SMALL_PLANE:
                for xi in range(36):
                    for t in range(P):
                        dm[xi, f, n * P + t] = e[xi, t]
            else:
                for xi in range(36):
                    dm[xi, f, n * P:(n + 1) * P] = e[xi]
        db[f] = s


@_jit
def _wino4_input_backward(dv, ph, pw, th, tw, dx, nchunks):
    # dx[n, c] = the padded plane's interior after adding B ∂V_t Bᵀ (6×6) at (4a, 4b) for every tile t. Per plane:
    # B and Bᵀ each as one vectorised pass over the plane's tiles (the first reads ∂V's rows where they lie), then
    # each tile's 6×6 added onto the zeroed plane buffer.
    N, C, H, W = dx.shape
    P = th * tw
    for k in prange(nchunks):
        lo = N * C * k // nchunks
        hi = N * C * (k + 1) // nchunks
        buf = np.empty((4 * th + 2, 4 * tw + 2), dtype=dx.dtype)
        q = np.empty((36, P), dtype=dv.dtype)
        h = np.empty((36, P), dtype=dv.dtype)
        for nc in range(lo, hi):
            n = nc // C
            c = nc % C
            base = n * P
            for j in range(6):                      # B down each column j of ∂V
                for t in range(P):
                    h0, h1, h2, h3, h4, h5 = _b6(dv[j, c, base + t], dv[6 + j, c, base + t], dv[12 + j, c, base + t],
                                                 dv[18 + j, c, base + t], dv[24 + j, c, base + t],
                                                 dv[30 + j, c, base + t])
                    h[j, t] = h0
                    h[6 + j, t] = h1
                    h[12 + j, t] = h2
                    h[18 + j, t] = h3
                    h[24 + j, t] = h4
                    h[30 + j, t] = h5
            for i in range(6):                      # (·) Bᵀ along each row i
                for t in range(P):
                    o0, o1, o2, o3, o4, o5 = _b6(h[6 * i, t], h[6 * i + 1, t], h[6 * i + 2, t], h[6 * i + 3, t],
                                                 h[6 * i + 4, t], h[6 * i + 5, t])
                    q[6 * i, t] = o0
                    q[6 * i + 1, t] = o1
                    q[6 * i + 2, t] = o2
                    q[6 * i + 3, t] = o3
                    q[6 * i + 4, t] = o4
                    q[6 * i + 5, t] = o5
            buf[:, :] = 0
            for a in range(th):
                for r in range(6):
                    row = buf[4 * a + r]
                    for b in range(tw):
                        t = a * tw + b
                        s = 4 * b
                        row[s] += q[6 * r, t]
                        row[s + 1] += q[6 * r + 1, t]
                        row[s + 2] += q[6 * r + 2, t]
                        row[s + 3] += q[6 * r + 3, t]
                        row[s + 4] += q[6 * r + 4, t]
                        row[s + 5] += q[6 * r + 5, t]
            dx[n, c] = buf[ph:ph + H, pw:pw + W]



# ---------------------------------------------------------------------------
# short vectors: LANES numbers of an array held as one value (a register), for register-blocked loops
# ---------------------------------------------------------------------------
# numba vectorises a loop over array elements when it can prove that safe, and keeps every running sum in memory
# between the statements of a loop nest. A register-blocked kernel (a block of sums kept in registers while a whole
# reduction runs through them: the direct convolution below) needs its vectors by name, as C code names them with
# intrinsics. Each function here compiles to one LLVM vector operation on LANES numbers of the array's dtype, which
# the CPU's backend maps onto its registers (AVX2: one ymm register of float32, two of float64; a narrower CPU
# splits it), so the kernels stay portable (a CPU without FMA rounds vec_fma's product before adding it):
#
#     v = vec_load(a, i)        v[l] = a[i + l]                 (a 1-D C-contiguous array; bounds are the caller's)
#     vec_store(a, i, v)        a[i + l] = v[l]
#     vec_zeros(a)              v[l] = 0                        (of a's dtype)
#     vec_fma(acc, v, s)        acc[l] + v[l] · s               (s a scalar; fused where the CPU has FMA)
#     vec_fma2(acc, u, v)       acc[l] + u[l] · v[l]
#     vec_add(v, s)             v[l] + s
#     vec_relu(v)               0 where v[l] ≤ 0, else v[l]     (NaN kept, as max(x, 0) propagates it)
#     vec_total(v)              Σ_l v[l], added pairwise in a fixed order (halves, then quarters, then the last two)
#
# They live in this file because numba's on-disk cache of a kernel is keyed on the kernel's own source file: a
# change to them elsewhere would leave kernels compiled with the old ones.
LANES = 8

if _nb is not None:
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic, models, register_model

    class Vector(types.Type):
        """``LANES`` numbers of one dtype, held as an LLVM vector value."""

        def __init__(self, dtype):
            self.dtype = dtype
            super().__init__(name=f"vector{LANES}({dtype})")

    @register_model(Vector)
    class _VectorModel(models.PrimitiveModel):
        def __init__(self, dmm, fe_type):
            super().__init__(dmm, fe_type, ir.VectorType(dmm.lookup(fe_type.dtype).get_value_type(), LANES))

    def _vector_type(context, dtype):
        return ir.VectorType(context.get_value_type(dtype), LANES)

    def _address(context, builder, aryty, ary, i):
        data = context.make_array(aryty)(context, builder, ary).data
        ptr = builder.gep(data, [i], source_etype=context.get_value_type(aryty.dtype))
        return builder.bitcast(ptr, _vector_type(context, aryty.dtype).as_pointer())

    def _splat(context, builder, value, fromty, dtype):
        vt = _vector_type(context, dtype)
        s = context.cast(builder, value, fromty, dtype)
        v = builder.insert_element(ir.Constant(vt, ir.Undefined), s, ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(v, ir.Constant(vt, ir.Undefined),
                                      ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))

    def _fmuladd(builder, a, b, c):
        vt = a.type
        name = f"llvm.fmuladd.v{LANES}{vt.element.intrinsic_name}"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt, vt]), name)
        return builder.call(fn, [a, b, c])

    def _check_array(a):
        if not (isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
                and isinstance(a.dtype, types.Float)):
            raise TypeError(f"direct convolution's vectors: expected a 1-D C-contiguous float array, got {a}")

    @intrinsic
    def vec_load(typingctx, a, i):
        _check_array(a)

        def codegen(context, builder, sig, args):
            ptr = _address(context, builder, sig.args[0], args[0], args[1])
            return builder.load(ptr, align=sig.args[0].dtype.bitwidth // 8)
        return Vector(a.dtype)(a, i), codegen

    @intrinsic
    def vec_store(typingctx, a, i, v):
        _check_array(a)

        def codegen(context, builder, sig, args):
            ptr = _address(context, builder, sig.args[0], args[0], args[1])
            builder.store(args[2], ptr, align=sig.args[0].dtype.bitwidth // 8)
            return context.get_dummy_value()
        return types.none(a, i, v), codegen

    @intrinsic
    def vec_zeros(typingctx, a):
        def codegen(context, builder, sig, args):
            return ir.Constant(_vector_type(context, sig.args[0].dtype), None)
        return Vector(a.dtype)(a), codegen

    @intrinsic
    def vec_fma(typingctx, acc, v, s):
        def codegen(context, builder, sig, args):
            return _fmuladd(builder, args[1], _splat(context, builder, args[2], sig.args[2], sig.args[0].dtype),
                            args[0])
        return acc(acc, v, s), codegen

    @intrinsic
    def vec_fma2(typingctx, acc, u, v):
        def codegen(context, builder, sig, args):
            return _fmuladd(builder, args[1], args[2], args[0])
        return acc(acc, u, v), codegen

    @intrinsic
    def vec_add(typingctx, v, s):
        def codegen(context, builder, sig, args):
            return builder.fadd(args[0], _splat(context, builder, args[1], sig.args[1], sig.args[0].dtype))
        return v(v, s), codegen

    @intrinsic
    def vec_relu(typingctx, v):
        def codegen(context, builder, sig, args):
            zero = ir.Constant(args[0].type, None)
            return builder.select(builder.fcmp_ordered("<=", args[0], zero), zero, args[0])
        return v(v), codegen

    @intrinsic
    def vec_total(typingctx, v):
        def codegen(context, builder, sig, args):
            s, width = args[0], LANES
            while width > 1:                # s[:width/2] + s[width/2:width]: log2(LANES) vector additions
                width //= 2
                lanes = ir.VectorType(ir.IntType(32), width)
                lo = builder.shuffle_vector(s, s, ir.Constant(lanes, list(range(width))))
                hi = builder.shuffle_vector(s, s, ir.Constant(lanes, list(range(width, 2 * width))))
                s = builder.fadd(lo, hi)
            return builder.extract_element(s, ir.Constant(ir.IntType(32), 0))
        return v.dtype(v), codegen


# ---------------------------------------------------------------------------
# direct convolution, stride 1 (see ``conv_direct``): flat padded planes, register-blocked
# ---------------------------------------------------------------------------
BLOCK = 4
"""Output channels of the direct convolution's register block: ``BLOCK`` × 2 vectors of sums (8 outputs each) stay
in registers while the sum over input channels and kernel taps runs through them, each loaded input vector feeding
``BLOCK`` multiply-adds (AVX2: 8 of the 16 ymm registers for float32; float64 spills a few). The kernels name the
block's sums one by one: this is the layout of the weights they read, not a setting. (Measured on Zen 3 against
4 × 3 vectors, 12 sums: no faster; with 32 registers, 4 × 4 vectors are: ``DIRECT_VECTORS``.)"""


def direct_plane_length(hp, wp):
    """Length of a flat padded plane (Hp rows of Wp) as the direct kernels read it: Hp·Wp and one vector's room past
    its end (zeros), for the vectors that reach past the last row's end."""
    return hp * wp + LANES


def direct_weight_blocks(w):
    """w (F, C, KH, KW) → (⌈F/BLOCK⌉, C, KH·KW, BLOCK): each block's weights side by side, zero rows for missing
    output channels."""
    F, C, kh, kw = w.shape
    nb = -(-F // BLOCK)
    wt = np.zeros((nb * BLOCK, C, kh * kw), dtype=w.dtype)
    wt[:F] = w.reshape(F, C, kh * kw)
    return np.ascontiguousarray(wt.reshape(nb, BLOCK, C, kh * kw).transpose(0, 2, 3, 1))


def direct_tap_offsets(kh, kw, Wp):
    """Flat offsets u·Wp + v of the kernel taps (u, v), row by row."""
    return np.array([u * Wp + v for u in range(kh) for v in range(kw)], dtype=np.int64)


@_jit
def _direct_pad(x, ph, pw, xp):
    # xp[n, c, (i + PH)·Wp + j + PW] = x[n, c, i, j], zero elsewhere (the plane's tail included).
    N, C, H, W = x.shape
    Wp = W + 2 * pw
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        d = xp[n, c]
        d[:ph * Wp] = 0
        for i in range(H):
            row = d[(i + ph) * Wp:(i + ph + 1) * Wp]
            row[:pw] = 0
            src = x[n, c, i]
            for j in range(W):
                row[pw + j] = src[j]
            row[pw + W:] = 0
        d[(ph + H) * Wp:] = 0


def direct_pad(x, ph, pw, out=None):
    """x (N, C, H, W) → its zero-padded planes flattened, (N, C, ``direct_plane_length``(H + 2PH, W + 2PW))."""
    N, C, H, W = x.shape
    P = direct_plane_length(H + 2 * ph, W + 2 * pw)
    xp = out if out is not None else np.empty((N, C, P), dtype=x.dtype)
    _direct_pad(np.ascontiguousarray(x), ph, pw, xp)
    return xp


@_scalar
def _direct_put(row, j, v, bias, relu, tmp):
    # row[j:j + LANES] = v + bias [then max(·, 0)], only the lanes that fall inside the row.
    v = vec_add(v, bias)
    if relu:
        v = vec_relu(v)
    if j + LANES <= row.shape[0]:
        vec_store(row, j, v)
    else:
        vec_store(tmp, 0, v)
        for lane in range(row.shape[0] - j):
            row[j + lane] = tmp[lane]


@_jit
def _direct_blocked(xp, wt, offs, Wp, m0, b, relu, y):
    # y[n, f, i, j] = b[f] + Σ_c Σ_t wt[f // B, c, t, f % B] · xp[n, c, m0 + i·Wp + j + offs[t]] [then max(·, 0)].
    # Each output row is cut into vectors of LANES columns (the last one reaching past the row: computed, and only
    # its lanes inside the row stored); a block of B = 4 output channels × 2 vectors is summed in 8 registers over
    # all input channels and taps, each loaded input vector feeding 4 multiply-adds.
    N, C, _ = xp.shape
    NB, _, T, _ = wt.shape
    F, oh, ow = y.shape[1], y.shape[2], y.shape[3]
    per_row = (ow + LANES - 1) // LANES
    nv = oh * per_row
    for task in prange(N * NB):
        n = task // NB
        fb = task % NB
        tmp = np.empty(LANES, dtype=y.dtype)
        for q in range(0, nv, 2):
            q1 = min(q + 1, nv - 1)                 # an odd count: the last vector twice
            i0, j0 = q // per_row, (q % per_row) * LANES
            i1, j1 = q1 // per_row, (q1 % per_row) * LANES
            p0 = m0 + i0 * Wp + j0
            p1 = m0 + i1 * Wp + j1
            a00 = vec_zeros(y[n, 0, 0])
            a01, a10, a11, a20, a21, a30, a31 = a00, a00, a00, a00, a00, a00, a00
            for c in range(C):
                xc = xp[n, c]
                wc = wt[fb, c]
                for t in range(T):
                    o = offs[t]
                    x0 = vec_load(xc, p0 + o)
                    x1 = vec_load(xc, p1 + o)
                    w0, w1, w2, w3 = wc[t, 0], wc[t, 1], wc[t, 2], wc[t, 3]
                    a00 = vec_fma(a00, x0, w0)
                    a01 = vec_fma(a01, x1, w0)
                    a10 = vec_fma(a10, x0, w1)
                    a11 = vec_fma(a11, x1, w1)
                    a20 = vec_fma(a20, x0, w2)
                    a21 = vec_fma(a21, x1, w2)
                    a30 = vec_fma(a30, x0, w3)
                    a31 = vec_fma(a31, x1, w3)
            f = fb * 4
            _direct_put(y[n, f, i0], j0, a00, b[f], relu, tmp)
            _direct_put(y[n, f, i1], j1, a01, b[f], relu, tmp)
            if f + 1 < F:
                _direct_put(y[n, f + 1, i0], j0, a10, b[f + 1], relu, tmp)
                _direct_put(y[n, f + 1, i1], j1, a11, b[f + 1], relu, tmp)
            if f + 2 < F:
                _direct_put(y[n, f + 2, i0], j0, a20, b[f + 2], relu, tmp)
                _direct_put(y[n, f + 2, i1], j1, a21, b[f + 2], relu, tmp)
            if f + 3 < F:
                _direct_put(y[n, f + 3, i0], j0, a30, b[f + 3], relu, tmp)
                _direct_put(y[n, f + 3, i1], j1, a31, b[f + 3], relu, tmp)


@_jit
def _direct_blocked4(xp, wt, offs, Wp, m0, b, relu, y):
    # ``_direct_blocked`` with 4 vectors of each output channel in the block: 16 sums in registers, each loaded input
    # vector feeding 4 multiply-adds and each weight 4 (for CPUs with 32 vector registers: ``DIRECT_VECTORS``).
    N, C, _ = xp.shape
    NB, _, T, _ = wt.shape
    F, oh, ow = y.shape[1], y.shape[2], y.shape[3]
    per_row = (ow + LANES - 1) // LANES
    nv = oh * per_row
    for task in prange(N * NB):
        n = task // NB
        fb = task % NB
        tmp = np.empty(LANES, dtype=y.dtype)
        for q in range(0, nv, 4):
            q1 = min(q + 1, nv - 1)                 # fewer than 4 left: the last vector again
            q2 = min(q + 2, nv - 1)
            q3 = min(q + 3, nv - 1)
            i0, j0 = q // per_row, (q % per_row) * LANES
            i1, j1 = q1 // per_row, (q1 % per_row) * LANES
            i2, j2 = q2 // per_row, (q2 % per_row) * LANES
            i3, j3 = q3 // per_row, (q3 % per_row) * LANES
            p0 = m0 + i0 * Wp + j0
            p1 = m0 + i1 * Wp + j1
            p2 = m0 + i2 * Wp + j2
            p3 = m0 + i3 * Wp + j3
            a00 = vec_zeros(y[n, 0, 0])
            a01, a02, a03, a10, a11, a12, a13 = a00, a00, a00, a00, a00, a00, a00
            a20, a21, a22, a23, a30, a31, a32, a33 = a00, a00, a00, a00, a00, a00, a00, a00
            for c in range(C):
                xc = xp[n, c]
                wc = wt[fb, c]
                for t in range(T):
                    o = offs[t]
                    x0 = vec_load(xc, p0 + o)
                    x1 = vec_load(xc, p1 + o)
                    x2 = vec_load(xc, p2 + o)
                    x3 = vec_load(xc, p3 + o)
                    w0 = wc[t, 0]
                    a00 = vec_fma(a00, x0, w0)
                    a01 = vec_fma(a01, x1, w0)
                    a02 = vec_fma(a02, x2, w0)
                    a03 = vec_fma(a03, x3, w0)
                    w1 = wc[t, 1]
                    a10 = vec_fma(a10, x0, w1)
                    a11 = vec_fma(a11, x1, w1)
                    a12 = vec_fma(a12, x2, w1)
                    a13 = vec_fma(a13, x3, w1)
                    w2 = wc[t, 2]
                    a20 = vec_fma(a20, x0, w2)
                    a21 = vec_fma(a21, x1, w2)
                    a22 = vec_fma(a22, x2, w2)
                    a23 = vec_fma(a23, x3, w2)
                    w3 = wc[t, 3]
                    a30 = vec_fma(a30, x0, w3)
                    a31 = vec_fma(a31, x1, w3)
                    a32 = vec_fma(a32, x2, w3)
                    a33 = vec_fma(a33, x3, w3)
            f = fb * 4
            _direct_put(y[n, f, i0], j0, a00, b[f], relu, tmp)
            _direct_put(y[n, f, i1], j1, a01, b[f], relu, tmp)
            _direct_put(y[n, f, i2], j2, a02, b[f], relu, tmp)
            _direct_put(y[n, f, i3], j3, a03, b[f], relu, tmp)
            if f + 1 < F:
                _direct_put(y[n, f + 1, i0], j0, a10, b[f + 1], relu, tmp)
                _direct_put(y[n, f + 1, i1], j1, a11, b[f + 1], relu, tmp)
                _direct_put(y[n, f + 1, i2], j2, a12, b[f + 1], relu, tmp)
                _direct_put(y[n, f + 1, i3], j3, a13, b[f + 1], relu, tmp)
            if f + 2 < F:
                _direct_put(y[n, f + 2, i0], j0, a20, b[f + 2], relu, tmp)
                _direct_put(y[n, f + 2, i1], j1, a21, b[f + 2], relu, tmp)
                _direct_put(y[n, f + 2, i2], j2, a22, b[f + 2], relu, tmp)
                _direct_put(y[n, f + 2, i3], j3, a23, b[f + 2], relu, tmp)
            if f + 3 < F:
                _direct_put(y[n, f + 3, i0], j0, a30, b[f + 3], relu, tmp)
                _direct_put(y[n, f + 3, i1], j1, a31, b[f + 3], relu, tmp)
                _direct_put(y[n, f + 3, i2], j2, a32, b[f + 3], relu, tmp)
                _direct_put(y[n, f + 3, i3], j3, a33, b[f + 3], relu, tmp)


def _wide_vector_file() -> bool:
    """Whether the CPU numba compiles for has 32 vector registers (AVX-512): llvmlite's view of the host."""
    try:
        from llvmlite import binding
        features = binding.get_host_cpu_features()
        return bool(features.get("avx512f", False))
    except Exception:  # pragma: no cover - llvmlite without the query
        return False


DIRECT_VECTORS = 4 if _nb is not None and _wide_vector_file() else 2
"""Vectors of each output channel in the direct convolution's register block (forward and ∂L/∂x): 2 (8 sums, the
AVX2 build: 16 registers) or 4 (16 sums, where the CPU has 32 vector registers). Measured on 2 Zen 4 cores,
forward, ms (2 → 4): 16×64×40×40 → 64 18.8 → 15.3, 64×64×32×32 → 64 61.4 → 43.9, 512×16×16×16 → 16 11.3 → 8.6,
128×32×8×8 → 32 1.39 → 1.15. Both builds compute the same sums in the same order (the same bits)."""


def _direct_run(*args):
    (_direct_blocked4 if DIRECT_VECTORS == 4 else _direct_blocked)(*args)


def direct_forward(xp, w, b, geom, relu=False):
    """Padded planes (N, C, P) (``direct_pad``) and w (F, C, KH, KW) → y (N, F, OH, OW) [then max(·, 0)], stride 1."""
    kh, kw, sh, sw, ph, pw, oh, ow = geom
    Wp = ow + kw - 1
    y = np.empty((xp.shape[0], w.shape[0], oh, ow), dtype=xp.dtype)
    b = np.zeros(w.shape[0], dtype=xp.dtype) if b is None else np.ascontiguousarray(b, dtype=xp.dtype)
    _direct_run(xp, direct_weight_blocks(np.asarray(w, dtype=xp.dtype)), direct_tap_offsets(kh, kw, Wp), Wp, 0,
                b, bool(relu), y)
    return y


def direct_delta_layout(geom, x_shape):
    """(margin M, plane length) of the widened δ: δ[n, f, i, j] at M + i·Wp + j, M = (KH − 1)·Wp + KW − 1 zeros
    before it (∂L/∂x reads it through the flipped kernel) and room after it for both backward kernels' vectors."""
    kh, kw, sh, sw, ph, pw, oh, ow = geom
    Wp = ow + kw - 1
    M = (kh - 1) * Wp + kw - 1
    L = (oh - 1) * Wp + ow
    H, W = x_shape[2], x_shape[3]
    lanes = LANES
    input_reach = ph * Wp + pw + (H - 1) * Wp + -(-W // lanes) * lanes + M      # ∂x's last vector, last tap
    return M, max(M + -(-L // lanes) * lanes, input_reach)


@_jit
def _direct_widen(dy, y, masked, Wp, M, g):
    # g[n, f, M + i·Wp + j] = δ[n, f, i, j] [· [y > 0]], zero everywhere else in the plane.
    N, F, oh, ow = dy.shape
    for nf in prange(N * F):
        n = nf // F
        f = nf % F
        d = g[n, f]
        d[:M] = 0
        for i in range(oh):
            src = dy[n, f, i]
            row = d[M + i * Wp:M + i * Wp + ow]
            if masked:
                yr = y[n, f, i]
                for j in range(ow):
                    row[j] = src[j] if yr[j] > 0 else 0
            else:
                for j in range(ow):
                    row[j] = src[j]
            if i < oh - 1:
                d[M + i * Wp + ow:M + (i + 1) * Wp] = 0
        d[M + (oh - 1) * Wp + ow:] = 0


@_jit(reassociate=True)
def _direct_bias_grad(g, db):
    N, F, L = g.shape
    for f in prange(F):
        s = 0.0
        for n in range(N):
            d = g[n, f]
            for k in range(L):
                s += d[k]
        db[f] = s


def direct_widen(dy, geom, x_shape, relu_y=None, need_db=True, out=None):
    """δ (N, F, OH, OW) [· [y > 0]] → (δ widened as ``direct_delta_layout`` says (N, F, plane length), Σδ (F,) or
    None)."""
    N, F, oh, ow = dy.shape
    M, P = direct_delta_layout(geom, x_shape)
    g = out if out is not None else np.empty((N, F, P), dtype=dy.dtype)
    masked = relu_y is not None
    _direct_widen(np.ascontiguousarray(dy), np.ascontiguousarray(relu_y) if masked else dy, masked,
                  ow + geom[1] - 1, M, g)
    if not need_db:
        return g, None
    db = np.empty(F, np.float64)
    _direct_bias_grad(g, db)
    return g, db.astype(dy.dtype)


def direct_input_grad(g, w, x_shape, geom):
    """Widened δ (N, F, P) → ∂L/∂x (N, C, H, W): the forward kernel run on δ with the kernel flipped and its channels
    swapped, ∂x_pad[n, c, m] = Σ_{f,u,v} w[f, c, KH−1−u, KW−1−v] · g[n, f, m + u·Wp + v], read at the unpadded
    positions m = (i + PH)·Wp + j + PW."""
    kh, kw, sh, sw, ph, pw, oh, ow = geom
    Wp = ow + kw - 1
    dx = np.empty(x_shape, dtype=g.dtype)
    flipped = np.asarray(w, dtype=g.dtype)[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    _direct_run(g, direct_weight_blocks(flipped), direct_tap_offsets(kh, kw, Wp), Wp, ph * Wp + pw,
                np.zeros(x_shape[1], dtype=g.dtype), False, dx)
    return dx


@_jit
def _direct_weight_grad(g, M, L, xp, offs, group, parts):
    # parts[t, f, c, s] = Σ over chunk t's images n, Σ_k g[n, f, M + k] · xp[n, c, k + offs[s]], k < L rounded up to
    # whole vectors (g is zero there). A block of 4 output channels × 3 taps is summed in 12 vector registers over
    # the runs of ``group`` images (4 + 3 loads feed 12 multiply-adds), then each vector's lanes are added; the
    # groups add in float64.
    N, F, _ = g.shape
    C = xp.shape[1]
    T = parts.shape[0]
    S = offs.shape[0]
    for t in prange(T):
        p = parts[t]
        p[:] = 0
        n_end = (t + 1) * N // T
        for n0 in range(t * N // T, n_end, group):
            n1 = min(n0 + group, n_end)
            for f in range(0, F, 4):
                f1, f2, f3 = min(f + 1, F - 1), min(f + 2, F - 1), min(f + 3, F - 1)
                for c in range(C):
                    for s in range(0, S, 3):
                        o0, o1, o2 = offs[s], offs[min(s + 1, S - 1)], offs[min(s + 2, S - 1)]
                        a00 = vec_zeros(xp[n0, c])
                        a01, a02, a10, a11, a12, a20, a21, a22, a30, a31, a32 = (
                            a00, a00, a00, a00, a00, a00, a00, a00, a00, a00, a00)
                        for n in range(n0, n1):
                            xc = xp[n, c]
                            g0, g1, g2, g3 = g[n, f], g[n, f1], g[n, f2], g[n, f3]
                            for k in range(0, L, LANES):
                                x0 = vec_load(xc, k + o0)
                                x1 = vec_load(xc, k + o1)
                                x2 = vec_load(xc, k + o2)
                                d = vec_load(g0, M + k)
                                a00 = vec_fma2(a00, d, x0)
                                a01 = vec_fma2(a01, d, x1)
                                a02 = vec_fma2(a02, d, x2)
                                d = vec_load(g1, M + k)
                                a10 = vec_fma2(a10, d, x0)
                                a11 = vec_fma2(a11, d, x1)
                                a12 = vec_fma2(a12, d, x2)
                                d = vec_load(g2, M + k)
                                a20 = vec_fma2(a20, d, x0)
                                a21 = vec_fma2(a21, d, x1)
                                a22 = vec_fma2(a22, d, x2)
                                d = vec_load(g3, M + k)
                                a30 = vec_fma2(a30, d, x0)
                                a31 = vec_fma2(a31, d, x1)
                                a32 = vec_fma2(a32, d, x2)
                        _direct_add_taps(p[f, c], s, a00, a01, a02)
                        if f + 1 < F:
                            _direct_add_taps(p[f + 1, c], s, a10, a11, a12)
                        if f + 2 < F:
                            _direct_add_taps(p[f + 2, c], s, a20, a21, a22)
                        if f + 3 < F:
                            _direct_add_taps(p[f + 3, c], s, a30, a31, a32)


@_scalar
def _direct_add_taps(p, s, a0, a1, a2):
    # p[s + r] += Σ lanes of a_r, for the taps that exist.
    p[s] += vec_total(a0)
    if s + 1 < p.shape[0]:
        p[s + 1] += vec_total(a1)
    if s + 2 < p.shape[0]:
        p[s + 2] += vec_total(a2)


def direct_weight_grad(g, xp, w_shape, geom, out=None):
    """Widened δ (``direct_widen``) and the padded planes → ∂L/∂w (F, C, KH, KW): image chunks summed in float64, a
    fixed number of them (``DIRECT_WEIGHT_CHUNKS``) so the result does not depend on the thread count."""
    kh, kw, sh, sw, ph, pw, oh, ow = geom
    Wp = ow + kw - 1
    M = (kh - 1) * Wp + kw - 1
    return _weight_grad_of_runs(g, M, (oh - 1) * Wp + ow, xp, direct_tap_offsets(kh, kw, Wp), w_shape, out)


def _weight_grad_of_runs(g, M, L, xp, offs, w_shape, out):
    F, C, kh, kw = w_shape
    T = max(1, min(DIRECT_WEIGHT_CHUNKS, g.shape[0]))
    group = max(1, DIRECT_WEIGHT_GROUP_BYTES // ((F * g.shape[2] + C * xp.shape[2]) * g.itemsize))
    parts = np.empty((T, F, C, kh * kw), dtype=np.float64)
    _direct_weight_grad(g, M, L, xp, offs, group, parts)
    dw = out if out is not None else np.empty(w_shape, dtype=g.dtype)
    dw[...] = parts.sum(axis=0).reshape(w_shape)
    return dw


# Strides above 1: the padded input is cut into SH·SW phase planes, x_q[n, c, (a·SW + b)·Lq + r·Wq + s] =
# x_pad[n, c, r·SH + a, s·SW + b] (Wq = OW + (KW − 1) // SW columns, Hq = OH + (KH − 1) // SH rows, Lq = Hq·Wq). Output
# (i, j) sits at i·Wq + j of a phase plane, and tap (u, v) reads phase (u mod SH, v mod SW) at (i + u // SH, j + v // SW):
# a flat offset like a stride-1 tap's, so the stride-1 kernels (forward, ∂w) run on the phase planes unchanged.
def direct_phase_layout(geom):
    """(Hq, Wq, plane length) of the phase planes of a strided direct convolution (see above): SH·SW planes of Hq·Wq
    and one vector's room past their end."""
    kh, kw, sh, sw, ph, pw, oh, ow = geom
    hq, wq = oh + (kh - 1) // sh, ow + (kw - 1) // sw
    return hq, wq, sh * sw * hq * wq + LANES


def direct_phase_offsets(geom):
    """Flat offsets of the kernel taps (u, v), row by row, in the phase planes."""
    kh, kw, sh, sw = geom[:4]
    hq, wq, _ = direct_phase_layout(geom)
    return np.array([((u % sh) * sw + v % sw) * hq * wq + (u // sh) * wq + v // sw
                     for u in range(kh) for v in range(kw)], dtype=np.int64)


@_jit
def _direct_phase_pad(x, ph, pw, sh, sw, hq, wq, xq):
    # xq[n, c, (a·SW + b)·Lq + r·Wq + s] = x_pad[n, c, r·SH + a, s·SW + b], zero elsewhere (no tap reads a padded
    # row or column past Hq, Wq of its phase).
    N, C, H, W = x.shape
    lq = hq * wq
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        d = xq[n, c]
        src = x[n, c]
        for a in range(sh):
            for b in range(sw):
                base = (a * sw + b) * lq
                for r in range(hq):
                    i = r * sh + a - ph                      # the input row and columns this phase row holds
                    row = d[base + r * wq:base + (r + 1) * wq]
                    if i < 0 or i >= H:
                        row[:] = 0
                        continue
                    srow = src[i]
                    for q in range(wq):
                        j = q * sw + b - pw
                        row[q] = srow[j] if 0 <= j < W else 0
        d[sh * sw * lq:] = 0


def direct_phase_pad(x, geom, out=None):
    """x (N, C, H, W) → its padded planes cut into phases, (N, C, plane length of ``direct_phase_layout``)."""
    N, C = x.shape[:2]
    hq, wq, P = direct_phase_layout(geom)
    xq = out if out is not None else np.empty((N, C, P), dtype=x.dtype)
    _direct_phase_pad(np.ascontiguousarray(x), geom[4], geom[5], geom[2], geom[3], hq, wq, xq)
    return xq


def direct_strided_forward(xq, w, b, geom, relu=False):
    """Phase planes (``direct_phase_pad``) and w (F, C, KH, KW) → y (N, F, OH, OW) [then max(·, 0)], any stride."""
    kh, kw, sh, sw, ph, pw, oh, ow = geom
    y = np.empty((xq.shape[0], w.shape[0], oh, ow), dtype=xq.dtype)
    b = np.zeros(w.shape[0], dtype=xq.dtype) if b is None else np.ascontiguousarray(b, dtype=xq.dtype)
    _direct_run(xq, direct_weight_blocks(np.asarray(w, dtype=xq.dtype)), direct_phase_offsets(geom),
                direct_phase_layout(geom)[1], 0, b, bool(relu), y)
    return y


def direct_strided_weight_grad(dy, xq, w_shape, geom, relu_y=None, need_db=True, out=None):
    """∂L/∂w (F, C, KH, KW) and ∂L/∂b (F,) or None of a strided direct convolution: δ [· [y > 0]] laid out with the
    phase planes' row width, then the stride-1 weight-gradient kernel on the phase planes."""
    N, F, oh, ow = dy.shape
    hq, wq, _ = direct_phase_layout(geom)
    L = (oh - 1) * wq + ow
    g = np.empty((N, F, -(-L // LANES) * LANES), dtype=dy.dtype)
    masked = relu_y is not None
    _direct_widen(np.ascontiguousarray(dy), np.ascontiguousarray(relu_y) if masked else dy, masked, wq, 0, g)
    db = None
    if need_db:
        db = np.empty(F, np.float64)
        _direct_bias_grad(g, db)
        db = db.astype(dy.dtype)
    return _weight_grad_of_runs(g, 0, L, xq, direct_phase_offsets(geom), w_shape, out), db


def direct_strided_input_plan(geom, x_shape):
    """How ``direct_strided_input_grad`` lays out the widened δ and cuts ∂x_pad into phases:
    ``(Wd, M, P, R, Q, phases)``.

    phases: ``[(a, b, taps_u, taps_v, r0, r1, q0, q1), …]`` — phase (a, b) holds the padded input's rows SH·r + a and
    columns SW·q + b; its kernel taps are u = a, a + SH, … (taps_u of them) and v = b, b + SW, …; r0 ≤ r < r1 and
    q0 ≤ q < q1 are the rows and columns that fall inside the unpadded input (a phase no tap reads, where the kernel
    is narrower than the stride, has no taps: its part of ∂x is zero). Every phase is computed as R × Q outputs (the
    most rows and columns of any phase, so all fit one array), from r0 and q0. Wd: the widened δ's row width (room
    for the widest sub-kernel before a row wraps into the next, and for Q outputs); M: the zeros before δ; P: the
    plane length, every vector any phase reads."""
    kh, kw, sh, sw, ph, pw, oh, ow = geom
    H, W = x_shape[2], x_shape[3]
    phases = []
    for a in range(sh):
        for b in range(sw):
            tu, tv = -(-(kh - a) // sh), -(-(kw - b) // sw)
            r0, r1 = max(-(-(ph - a) // sh), 0), -(-(H + ph - a) // sh)
            q0, q1 = max(-(-(pw - b) // sw), 0), -(-(W + pw - b) // sw)
            if r1 > r0 and q1 > q0:
                phases.append((a, b, max(tu, 0), max(tv, 0), r0, r1, q0, q1))
    read = [p for p in phases if p[2] and p[3]]
    R = max(p[5] - p[4] for p in read)
    Q = max(p[7] - p[6] for p in read)
    max_tu = max(p[2] for p in read)
    max_tv = max(p[3] for p in read)
    Wd = max(ow + max_tv - 1, max(p[6] for p in read) + Q)
    M = (max_tu - 1) * Wd + max_tv - 1
    P = M + (oh - 1) * Wd + ow                                   # past δ's last value: zeros
    for a, b, tu, tv, r0, r1, q0, q1 in read:
        m0 = M - (tu - 1) * Wd - (tv - 1) + r0 * Wd + q0
        P = max(P, m0 + (R - 1) * Wd + -(-Q // LANES) * LANES + (tu - 1) * Wd + tv - 1)
    return Wd, M, P, R, Q, phases


@_jit
def _direct_phase_scatter(parts, meta, sh, sw, dx):
    # dx[n, c, i0 + SH·r, j0 + SW·q] = parts[k, n, c, r, q] for r < rows, q < cols, with (i0, j0, rows, cols) =
    # meta[k]: each phase's outputs into its rows and columns of ∂x, an image plane at a time.
    N, C = dx.shape[:2]
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        d = dx[n, c]
        for k in range(meta.shape[0]):
            i0, j0, rows, cols = meta[k, 0], meta[k, 1], meta[k, 2], meta[k, 3]
            src = parts[k, n, c]
            for r in range(rows):
                drow = d[i0 + sh * r]
                srow = src[r]
                for q in range(cols):
                    drow[j0 + sw * q] = srow[q]


def direct_strided_input_grad(dy, w, x_shape, geom, relu_y=None, buffer=None):
    """∂L/∂x (N, C, H, W) of a strided direct convolution, per phase of the padded input: the forward sum at
    stride 1 again. A stride-SH·SW forward is y = Σ_(a,b) conv(x_(a,b), w_(a,b)) over the phase planes x_(a,b) and
    the sub-kernels w_(a,b) = w[:, :, a::SH, b::SW]; so each phase of ∂x_pad is the stride-1 ∂L/∂x of its own
    term, ∂x_(a,b)[r, q] = Σ_f Σ_(t,t') w[f, c, a + SH·t, b + SW·t'] · δ[f, r − t, q − t'] — the forward kernel
    run on δ (widened once, as ``direct_widen`` does) with the sub-kernel flipped and its channels swapped, then
    scattered into the phase's rows and columns of ∂x (``direct_strided_input_plan``). No Wᵀ·δ columns (KH·KW
    times the input) and no col2im. ``buffer(name, shape, dtype)``: scratch for the widened δ and the phases'
    outputs, or None."""
    N, F, oh, ow = dy.shape
    C = x_shape[1]
    Wd, M, P, R, Q, phases = direct_strided_input_plan(geom, x_shape)
    read = [p for p in phases if p[2] and p[3]]
    g = (buffer and buffer("direct_dy", (N, F, P), dy.dtype))
    g = g if g is not None else np.empty((N, F, P), dtype=dy.dtype)
    masked = relu_y is not None
    _direct_widen(np.ascontiguousarray(dy), np.ascontiguousarray(relu_y) if masked else dy, masked, Wd, M, g)
    parts = (buffer and buffer("direct_pad", (len(read), N, C, R, Q), g.dtype))
    parts = parts if parts is not None else np.empty((len(read), N, C, R, Q), dtype=g.dtype)
    sh, sw, ph, pw = geom[2:6]
    zeros = np.zeros(C, dtype=g.dtype)
    w = np.asarray(w, dtype=g.dtype)
    meta = np.empty((len(read), 4), dtype=np.int64)
    for k, (a, b, tu, tv, r0, r1, q0, q1) in enumerate(read):
        sub = w[:, :, a::sh, b::sw][:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
        _direct_run(g, direct_weight_blocks(sub), direct_tap_offsets(tu, tv, Wd), Wd,
                    M - (tu - 1) * Wd - (tv - 1) + r0 * Wd + q0, zeros, False, parts[k])
        meta[k] = (sh * r0 + a - ph, sw * q0 + b - pw, r1 - r0, q1 - q0)
    dx = np.empty(x_shape, dtype=g.dtype)
    _direct_phase_scatter(parts, meta, sh, sw, dx)
    for a, b, tu, tv, r0, r1, q0, q1 in phases:
        if not (tu and tv):                                      # no tap reads these rows and columns
            dx[:, :, sh * r0 + a - ph::sh, sw * q0 + b - pw::sw] = 0
    return dx


DIRECT_WEIGHT_CHUNKS = 16
"""Image chunks of the direct convolution's weight gradient (each a thread's partial sum, added in float64)."""

DIRECT_WEIGHT_GROUP_BYTES = 256 * 2**10
"""Within a chunk, the weight gradient's vector sums run over as many images at once as have their δ and input
planes in this many bytes (a core's L2 cache holds them while every channel block and tap group passes over them):
small planes (8×8: 10 vectors a run) then pay the lanes' final additions once per group instead of per image."""


# ---------------------------------------------------------------------------
# the outer-product convolution (see ``conv_outer``): few input channels, any stride, vectors of output channels
# ---------------------------------------------------------------------------
OUTER_BLOCK = 32
"""Output channels of the outer-product kernel's register block (4 vectors of 8), over 3 output pixels of a row:
12 vectors of sums, each loaded weight vector feeding 3 multiply-adds (one per pixel's input value)."""

OUTER_PIXELS = 3


@_jit
def _outer_forward(xf, C, Hp, Wp, wf, SH, SW, KH, KW, OH, OW, OWp, Fp, F, b, relu, y):
    # y[n, f, i, j] = b[f] + Σ_c Σ_u Σ_v w[f, c, u, v] · x_pad[n, c, i·SH + u, j·SW + v]; the sums of 32 output
    # channels × 3 pixels are held in 12 vectors while (c, u, v) run, each weight vector w[c, u, v, f-block]
    # multiplied by the three pixels' input values. xf: x_pad flat (N·C·Hp·Wp), wide enough for OWp columns;
    # wf: the weights as (C, KH, KW, Fp) flat, zero past F.
    N = y.shape[0]
    nfb = Fp // OUTER_BLOCK
    for task in prange(N * OH * nfb):
        fb = task % nfb
        ni = task // nfb
        n = ni // OH
        i = ni % OH
        row = np.empty(OWp * OUTER_BLOCK, dtype=y.dtype)      # the row's sums, pixel by pixel (32 channels each)
        for j0 in range(0, OWp, OUTER_PIXELS):
            a00 = vec_zeros(row)
            a01 = vec_zeros(row)
            a02 = vec_zeros(row)
            a03 = vec_zeros(row)
            a10 = vec_zeros(row)
            a11 = vec_zeros(row)
            a12 = vec_zeros(row)
            a13 = vec_zeros(row)
            a20 = vec_zeros(row)
            a21 = vec_zeros(row)
            a22 = vec_zeros(row)
            a23 = vec_zeros(row)
            for c in range(C):
                for u in range(KH):
                    xrow = ((n * C + c) * Hp + i * SH + u) * Wp + j0 * SW
                    wrow = (c * KH + u) * KW * Fp + fb * OUTER_BLOCK
                    for v in range(KW):
                        x0 = xf[xrow + v]
                        x1 = xf[xrow + SW + v]
                        x2 = xf[xrow + 2 * SW + v]
                        wb = wrow + v * Fp
                        wv = vec_load(wf, wb)
                        a00 = vec_fma(a00, wv, x0)
                        a10 = vec_fma(a10, wv, x1)
                        a20 = vec_fma(a20, wv, x2)
                        wv = vec_load(wf, wb + LANES)
                        a01 = vec_fma(a01, wv, x0)
                        a11 = vec_fma(a11, wv, x1)
                        a21 = vec_fma(a21, wv, x2)
                        wv = vec_load(wf, wb + 2 * LANES)
                        a02 = vec_fma(a02, wv, x0)
                        a12 = vec_fma(a12, wv, x1)
                        a22 = vec_fma(a22, wv, x2)
                        wv = vec_load(wf, wb + 3 * LANES)
                        a03 = vec_fma(a03, wv, x0)
                        a13 = vec_fma(a13, wv, x1)
                        a23 = vec_fma(a23, wv, x2)
            q = j0 * OUTER_BLOCK
            vec_store(row, q, a00)
            vec_store(row, q + LANES, a01)
            vec_store(row, q + 2 * LANES, a02)
            vec_store(row, q + 3 * LANES, a03)
            vec_store(row, q + OUTER_BLOCK, a10)
            vec_store(row, q + OUTER_BLOCK + LANES, a11)
            vec_store(row, q + OUTER_BLOCK + 2 * LANES, a12)
            vec_store(row, q + OUTER_BLOCK + 3 * LANES, a13)
            vec_store(row, q + 2 * OUTER_BLOCK, a20)
            vec_store(row, q + 2 * OUTER_BLOCK + LANES, a21)
            vec_store(row, q + 2 * OUTER_BLOCK + 2 * LANES, a22)
            vec_store(row, q + 2 * OUTER_BLOCK + 3 * LANES, a23)
        for k in range(min(OUTER_BLOCK, F - fb * OUTER_BLOCK)):      # the row's channels into y, cut at OW
            f = fb * OUTER_BLOCK + k
            bf = b[f]
            dst = y[n, f, i]
            for j in range(OW):
                v = row[j * OUTER_BLOCK + k] + bf
                if relu:
                    v = 0 if v < 0 else v                      # NaN stays NaN
                dst[j] = v


def outer_forward(x, w, b, geom, relu=False, out=None):
    """The outer-product convolution's forward (``conv_outer``): x (N, C, H, W), w (F, C, KH, KW), b (F,) or None,
    any stride and padding → y (N, F, OH, OW) (into ``out`` when given) [then max(·, 0)]."""
    N, C, H, W = x.shape
    F = w.shape[0]
    kh, kw, sh, sw, ph, pw, oh, ow = geom
    owp = -(-ow // OUTER_PIXELS) * OUTER_PIXELS
    xp = _outer_padded(x, geom, extra_cols=(owp - ow) * sw)
    hp, wp = xp.shape[2:]
    fp = -(-F // OUTER_BLOCK) * OUTER_BLOCK
    wt = np.zeros((C, kh, kw, fp), dtype=x.dtype)
    wt[..., :F] = w.transpose(1, 2, 3, 0)
    bias = np.zeros(F, dtype=x.dtype) if b is None else b.astype(x.dtype, copy=False)
    y = out if out is not None else np.empty((N, F, oh, ow), dtype=x.dtype)
    _outer_forward(xp.reshape(-1), C, hp, wp, wt.reshape(-1), sh, sw, kh, kw, oh, ow, owp, fp, F, bias, relu, y)
    return y


OUTER_WEIGHT_CHUNKS = 16
"""Row chunks of the outer-product convolution's weight gradient: each chunk's sums are a thread's, the chunks are
added in float64 in a fixed order, so the result does not depend on the thread count."""


def _outer_padded(x, geom, extra_cols=0):
    """x zero-padded (N, C, H + 2PH, Wp) with Wp wide enough for every pixel and tap the kernels read."""
    N, C, H, W = x.shape
    kh, kw, sh, sw, ph, pw, oh, ow = geom
    wp = max(W + 2 * pw, (ow - 1) * sw + kw + extra_cols)
    xp = np.zeros((N, C, H + 2 * ph, wp), dtype=x.dtype)
    xp[:, :, ph:ph + H, pw:pw + W] = x
    return xp


@_jit
def _outer_delta_rows(dy, y, masked, dt):
    # dt[n, i, j, f] = dy[n, f, i, j] (· [y > 0] when masked); dt's channels past F are zero.
    N, F, OH, OW = dy.shape
    Fp = dt.shape[3]
    for ni in prange(N * OH):
        n = ni // OH
        i = ni % OH
        row = dt[n, i]
        for j0 in range(0, OW, 16):              # a 16-pixel × F tile at a time: its writes stay in the L1 cache
            j1 = min(j0 + 16, OW)
            for f in range(F):
                src = dy[n, f, i]
                mk = y[n, f, i]
                for j in range(j0, j1):
                    d = src[j]
                    if masked and not mk[j] > 0:
                        d = 0
                    row[j, f] = d
            for j in range(j0, j1):
                for f in range(F, Fp):
                    row[j, f] = 0


@_jit
def _outer_weight_grad(xf, C, Hp, Wp, dtf, SH, SW, KH, KWp, OH, OW, Fp, N, parts):
    # parts[k, (c, u, v), f] = Σ over chunk k's rows (n, i), Σ_j x_pad[n, c, i·SH + u, j·SW + v] · δ[n, f, i, j]:
    # a block of 32 channels (4 vectors) × 3 taps v is summed in 12 vector registers along a row's pixels, each
    # loaded δ vector feeding 3 multiply-adds and each input value 4. Taps v ≥ KW (KWp rounds KW up to 3) are
    # computed and dropped by the caller. dtf: δ as (N, OH, OW, Fp) flat.
    K = parts.shape[0]
    nfb = Fp // OUTER_BLOCK
    rows = N * OH
    for k in prange(K):
        p = parts[k]
        p[:] = 0
        pf = p.reshape(-1)
        for ni in range(rows * k // K, rows * (k + 1) // K):
            n = ni // OH
            i = ni % OH
            drow = (n * OH + i) * OW * Fp
            for fb in range(nfb):
                for c in range(C):
                    for u in range(KH):
                        xrow = ((n * C + c) * Hp + i * SH + u) * Wp
                        for v0 in range(0, KWp, 3):
                            q = ((c * KH + u) * KWp + v0) * Fp + fb * OUTER_BLOCK
                            a00 = vec_load(pf, q)
                            a01 = vec_load(pf, q + LANES)
                            a02 = vec_load(pf, q + 2 * LANES)
                            a03 = vec_load(pf, q + 3 * LANES)
                            a10 = vec_load(pf, q + Fp)
                            a11 = vec_load(pf, q + Fp + LANES)
                            a12 = vec_load(pf, q + Fp + 2 * LANES)
                            a13 = vec_load(pf, q + Fp + 3 * LANES)
                            a20 = vec_load(pf, q + 2 * Fp)
                            a21 = vec_load(pf, q + 2 * Fp + LANES)
                            a22 = vec_load(pf, q + 2 * Fp + 2 * LANES)
                            a23 = vec_load(pf, q + 2 * Fp + 3 * LANES)
                            for j in range(OW):
                                xo = xrow + j * SW + v0
                                x0 = xf[xo]
                                x1 = xf[xo + 1]
                                x2 = xf[xo + 2]
                                d = drow + j * Fp + fb * OUTER_BLOCK
                                dv = vec_load(dtf, d)
                                a00 = vec_fma(a00, dv, x0)
                                a10 = vec_fma(a10, dv, x1)
                                a20 = vec_fma(a20, dv, x2)
                                dv = vec_load(dtf, d + LANES)
                                a01 = vec_fma(a01, dv, x0)
                                a11 = vec_fma(a11, dv, x1)
                                a21 = vec_fma(a21, dv, x2)
                                dv = vec_load(dtf, d + 2 * LANES)
                                a02 = vec_fma(a02, dv, x0)
                                a12 = vec_fma(a12, dv, x1)
                                a22 = vec_fma(a22, dv, x2)
                                dv = vec_load(dtf, d + 3 * LANES)
                                a03 = vec_fma(a03, dv, x0)
                                a13 = vec_fma(a13, dv, x1)
                                a23 = vec_fma(a23, dv, x2)
                            vec_store(pf, q, a00)
                            vec_store(pf, q + LANES, a01)
                            vec_store(pf, q + 2 * LANES, a02)
                            vec_store(pf, q + 3 * LANES, a03)
                            vec_store(pf, q + Fp, a10)
                            vec_store(pf, q + Fp + LANES, a11)
                            vec_store(pf, q + Fp + 2 * LANES, a12)
                            vec_store(pf, q + Fp + 3 * LANES, a13)
                            vec_store(pf, q + 2 * Fp, a20)
                            vec_store(pf, q + 2 * Fp + LANES, a21)
                            vec_store(pf, q + 2 * Fp + 2 * LANES, a22)
                            vec_store(pf, q + 2 * Fp + 3 * LANES, a23)


def outer_weight_grad(x, dy, geom, relu_y=None, need_db=True, out=None):
    """The outer-product convolution's ∂L/∂w (F, C, KH, KW) (into ``out`` when given) and ∂L/∂b (F,) (None without
    ``need_db``) from x (N, C, H, W) and δ (N, F, OH, OW), masked by [relu_y > 0] when given; row chunks summed in
    float64 (``OUTER_WEIGHT_CHUNKS``)."""
    N, C = x.shape[:2]
    F, OH, OW = dy.shape[1:]
    kh, kw, sh, sw, ph, pw, oh, ow = geom
    kwp = -(-kw // 3) * 3
    fp = -(-F // OUTER_BLOCK) * OUTER_BLOCK
    d = np.ascontiguousarray(dy)
    dt = np.empty((N, OH, OW, fp), dtype=dy.dtype)
    _outer_delta_rows(d, d if relu_y is None else np.ascontiguousarray(relu_y), relu_y is not None, dt)
    xp = _outer_padded(np.ascontiguousarray(x, dtype=dy.dtype), geom, extra_cols=kwp - kw)
    K = max(1, min(OUTER_WEIGHT_CHUNKS, N * OH))
    parts = np.empty((K, C * kh * kwp, fp), dtype=dy.dtype)
    _outer_weight_grad(xp.reshape(-1), C, xp.shape[2], xp.shape[3], dt.reshape(-1), sh, sw, kh, kwp, OH, OW, fp, N,
                       parts)
    total = parts.sum(axis=0, dtype=np.float64).reshape(C, kh, kwp, fp)[:, :, :kw, :F]
    dw = out if out is not None else np.empty((F, C, kh, kw), dtype=dy.dtype)
    dw[...] = total.transpose(3, 0, 1, 2)
    db = dt.reshape(-1, fp)[:, :F].sum(axis=0, dtype=np.float64).astype(dy.dtype) if need_db else None
    return dw, db


# ---------------------------------------------------------------------------
# max pooling
# ---------------------------------------------------------------------------
@_scalar
def _window(i, s, p, k, size):
    # The input indices [a, b) of window i that lie inside the image.
    return max(i * s - p, 0), min(i * s - p + k, size)


@_scalar
def _max_pool_nan_plane(src, kh, kw, sh, sw, ph, pw, y, arg):
    # One plane (H, W) → y, arg (OH, OW) by PyTorch's CPU rule for a plane holding a NaN, line for line: a NaN
    # wins and propagates, and the gradient goes to the window's last NaN. Every max-pool kernel below runs its
    # fast loop without testing for NaN (that would make it 2–3× slower) and redoes such a plane here.
    H, W = src.shape
    oh, ow = y.shape
    for i in range(oh):
        ha, hb = _window(i, sh, ph, kh, H)
        for j in range(ow):
            wa, wb = _window(j, sw, pw, kw, W)
            best = -np.inf
            at = ha * W + wa
            for h in range(ha, hb):
                for w in range(wa, wb):
                    t = src[h, w]
                    if t > best or t != t:
                        best = t
                        at = h * W + w
            y[i, j] = best
            arg[i, j] = at


@_jit
def _max_pool(x, kh, kw, sh, sw, ph, pw, oh, ow, y, arg):
    # y = max over the window's cells inside the image; arg = flat h·W + w of the first maximum
    # in row-major window order (ties go to the first). A plane holding a NaN is redone by
    # ``_max_pool_nan_plane``.
    N, C, H, W = x.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        src = x[n, c]
        bad = False
        for i in range(oh):
            ha, hb = _window(i, sh, ph, kh, H)
            for j in range(ow):
                wa, wb = _window(j, sw, pw, kw, W)
                best = src[ha, wa]
                at = ha * W + wa
                for h in range(ha, hb):
                    for w in range(wa, wb):
                        t = src[h, w]
                        bad |= t != t
                        if t > best:
                            best = t
                            at = h * W + w
                y[n, c, i, j] = best
                arg[n, c, i, j] = at
        if bad:
            _max_pool_nan_plane(src, kh, kw, sh, sw, ph, pw, y[n, c], arg[n, c])


@_jit
def _max_pool_2x2(x, oh, ow, y, arg):
    # ``_max_pool`` for 2×2 windows, stride 2, no padding, every window inside the image: the same results
    # (first maximum in row-major window order; a plane holding a NaN redone by ``_max_pool_nan_plane``), its
    # four cells read at fixed offsets instead of through each window's clipped bounds.
    N, C, H, W = x.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        src = x[n, c]
        bad = False
        for i in range(oh):
            r = 2 * i
            for j in range(ow):
                q = 2 * j
                a = src[r, q]
                b = src[r, q + 1]
                d = src[r + 1, q]
                e = src[r + 1, q + 1]
                bad |= (a != a) | (b != b) | (d != d) | (e != e)
                best = a
                at = r * W + q
                if b > best:
                    best = b
                    at = r * W + q + 1
                if d > best:
                    best = d
                    at = (r + 1) * W + q
                if e > best:
                    best = e
                    at = (r + 1) * W + q + 1
                y[n, c, i, j] = best
                arg[n, c, i, j] = at
        if bad:
            _max_pool_nan_plane(src, 2, 2, 2, 2, 0, 0, y[n, c], arg[n, c])


@_jit
def _max_pool_3x3s2(x, ph, pw, oh, ow, y, arg):
    # ``_max_pool`` for 3×3 windows, stride 2 (AlexNet's pooling, and ResNet's with padding 1): a window wholly
    # inside the image reads its nine cells at fixed offsets, in row-major order (ties go to the first, as there);
    # one cut by the image's edge (padding, ceil mode) runs ``_max_pool``'s clipped loop. A plane holding a NaN is
    # redone by ``_max_pool_nan_plane``.
    N, C, H, W = x.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        src = x[n, c]
        bad = False
        for i in range(oh):
            r = 2 * i - ph
            for j in range(ow):
                q = 2 * j - pw
                if r >= 0 and q >= 0 and r + 3 <= H and q + 3 <= W:
                    best = src[r, q]
                    at = r * W + q
                    for h in range(r, r + 3):
                        for w in range(q, q + 3):
                            t = src[h, w]
                            bad |= t != t
                            if t > best:
                                best = t
                                at = h * W + w
                else:
                    ha, hb = _window(i, 2, ph, 3, H)
                    wa, wb = _window(j, 2, pw, 3, W)
                    best = src[ha, wa]
                    at = ha * W + wa
                    for h in range(ha, hb):
                        for w in range(wa, wb):
                            t = src[h, w]
                            bad |= t != t
                            if t > best:
                                best = t
                                at = h * W + w
                y[n, c, i, j] = best
                arg[n, c, i, j] = at
        if bad:
            _max_pool_nan_plane(src, 3, 3, 2, 2, ph, pw, y[n, c], arg[n, c])


def max_pool(x, geom):
    """(N, C, H, W) → (y (N, C, OH, OW), argmax (N, C, OH, OW) int32 flat index into H·W)."""
    kh, kw, sh, sw, ph, pw, oh, ow = geom
    N, C, H, W = x.shape
    y = np.empty((N, C, oh, ow), dtype=x.dtype)
    arg = np.empty((N, C, oh, ow), dtype=np.int32)
    if (kh, kw, sh, sw, ph, pw) == (2, 2, 2, 2, 0, 0) and 2 * oh <= H and 2 * ow <= W:
        _max_pool_2x2(np.ascontiguousarray(x), oh, ow, y, arg)
    elif (kh, kw, sh, sw) == (3, 3, 2, 2) and ph <= 1 and pw <= 1:
        _max_pool_3x3s2(np.ascontiguousarray(x), ph, pw, oh, ow, y, arg)
    else:
        _max_pool(np.ascontiguousarray(x), kh, kw, sh, sw, ph, pw, oh, ow, y, arg)
    return y, arg


@_jit
def _max_pool_backward(dy, arg, dx):
    N, C, oh, ow = dy.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        plane = dx[n, c].reshape(-1)
        plane[:] = 0
        for i in range(oh):
            for j in range(ow):
                plane[arg[n, c, i, j]] += dy[n, c, i, j]


def max_pool_backward(dy, arg, x_shape):
    """δ (N, C, OH, OW) → dx (N, C, H, W): each δ added to its window's recorded maximum."""
    dx = np.empty(x_shape, dtype=dy.dtype)
    _max_pool_backward(np.ascontiguousarray(dy), arg, dx)
    return dx


@_jit
def _sgd_momentum(p, g, buf, lr, momentum, keep, weight_decay, nesterov, first):
    # torch.optim.SGD's arithmetic, element by element, in one pass over p, g and the buffer.
    for k in prange(p.size):
        gk = g[k]
        if weight_decay != 0:
            gk = gk + weight_decay * p[k]
        if first:
            b = gk
        elif keep == 1:
            b = buf[k] * momentum + gk
        else:
            b = buf[k] * momentum + keep * gk
        buf[k] = b
        d = gk + momentum * b if nesterov else b
        p[k] = p[k] + d * (-lr)


def sgd_momentum_step(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    """p ← p − lr·d with the momentum buffer updated in place (see ``optim.SGD``); contiguous arrays."""
    dt = p.dtype.type
    # scalars in the array's precision, as NumPy treats Python floats (keep = 1 − dampening)
    _sgd_momentum(p.reshape(-1), g.reshape(-1), buf.reshape(-1), dt(lr), dt(momentum), dt(1.0 - dampening),
                  dt(weight_decay), bool(nesterov), bool(first))


@_jit
def _adam(p, g, m, v, vmax, one_b1, b2, one_b2, step_size, bias2_sqrt, eps, l2, amsgrad):
    # optim.Adam's arithmetic, element by element (same operations, same order, same precision).
    for k in prange(p.size):
        gk = g[k]
        if l2 != 0:
            gk = gk + l2 * p[k]
        mk = m[k] + (gk - m[k]) * one_b1
        vk = v[k] * b2 + (one_b2 * gk) * gk
        m[k] = mk
        v[k] = vk
        if amsgrad:
            if vk > vmax[k]:
                vmax[k] = vk
            vk = vmax[k]
        denom = np.sqrt(vk) / bias2_sqrt + eps
        p[k] = p[k] - (step_size * mk) / denom


def adam_step(p, g, m, v, vmax, lr, betas, eps, weight_decay, decoupled, amsgrad, t):
    """One Adam/AdamW step in place (see ``optim.Adam``); contiguous arrays of one dtype."""
    import math
    dt = p.dtype.type
    b1, b2 = betas
    if weight_decay != 0 and decoupled:
        p *= 1.0 - lr * weight_decay
    l2 = weight_decay if not decoupled else 0.0
    _adam(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), (vmax if amsgrad else m).reshape(-1),
          dt(1.0 - b1), dt(b2), dt(1.0 - b2), dt(lr / (1.0 - b1 ** t)), dt(math.sqrt(1.0 - b2 ** t)), dt(eps),
          dt(l2), bool(amsgrad))


# ---------------------------------------------------------------------------
# batch normalisation (4-D, per channel)
# ---------------------------------------------------------------------------
@_jit(reassociate=True)
def _bn_stats(x, mean, var):
    # mean[c] = Σ x / M, var[c] = Σ (x − mean)² / M over (n, h, w): two passes, float64 sums.
    N, C, P = x.shape
    for c in prange(C):
        s = 0.0
        for n in range(N):
            row = x[n, c]
            for p in range(P):
                s += row[p]
        m = s / (N * P)
        q = 0.0
        for n in range(N):
            row = x[n, c]
            for p in range(P):
                d = row[p] - m
                q += d * d
        mean[c] = m
        var[c] = q / (N * P)


@_jit
def _bn_apply(x, mean, inv_std, gamma, beta, x_hat, y, relu):
    # x̂ = (x − μ)·(1/σ), y = γ·x̂ + β per channel (then max(y, 0), NaN kept, when relu); x̂ is kept for backward.
    N, C, P = x.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        m, k, g, b = mean[c], inv_std[c], gamma[c], beta[c]
        src = x[n, c]
        dst = y[n, c]
        hat = x_hat[n, c]
        if relu:
            for p in range(P):
                t = (src[p] - m) * k
                hat[p] = t
                u = t * g + b
                dst[p] = u if u > 0 or np.isnan(u) else 0
        else:
            for p in range(P):
                t = (src[p] - m) * k
                hat[p] = t
                dst[p] = t * g + b


def batch_norm_stats(x):
    """Per-channel mean and (biased) variance of x (N, C, H, W), in float64."""
    N, C = x.shape[:2]
    mean = np.empty(C, np.float64)
    var = np.empty(C, np.float64)
    _bn_stats(np.ascontiguousarray(x).reshape(N, C, -1), mean, var)
    return mean, var


def batch_norm_apply(x, mean, inv_std, gamma, beta, relu=False):
    """(y, x̂) for x (N, C, H, W) with per-channel μ, 1/σ, γ, β; y = max(γ x̂ + β, 0) when ``relu``."""
    N, C = x.shape[:2]
    x3 = np.ascontiguousarray(x).reshape(N, C, -1)
    y = np.empty_like(x3)
    x_hat = np.empty_like(x3)
    dt = x.dtype
    _bn_apply(x3, mean.astype(dt), inv_std.astype(dt), gamma.astype(dt), beta.astype(dt), x_hat, y, bool(relu))
    return y.reshape(x.shape), x_hat.reshape(x.shape)


@_jit(reassociate=True)
def _bn_sums(dy, x_hat, dbeta, dgamma):
    N, C, P = dy.shape
    for c in prange(C):
        s = 0.0
        t = 0.0
        for n in range(N):
            d = dy[n, c]
            h = x_hat[n, c]
            for p in range(P):
                s += d[p]
                t += d[p] * h[p]
        dbeta[c] = s
        dgamma[c] = t


@_jit
def _bn_dx(dy, x_hat, scale, mb, mg, dx):
    # dx = γ·inv_std·(δ − Σδ/M − x̂·Σ(δ x̂)/M); scale = γ·inv_std, mb = Σδ/M, mg = Σ(δ x̂)/M.
    N, C, P = dy.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        k, b, g = scale[c], mb[c], mg[c]
        d = dy[n, c]
        h = x_hat[n, c]
        o = dx[n, c]
        for p in range(P):
            o[p] = k * (d[p] - b - h[p] * g)


def batch_norm_backward(dy, x_hat, inv_std, gamma, relu_y=None):
    """Training-mode gradients (dx, dγ, dβ) of batch norm over (N, H, W) for 4-D δ; with ``relu_y`` (the output
    of a ReLU fused after it) δ is first masked by [relu_y > 0]. The mask is its own pass (``relu_backward``):
    folded into the two passes below, the conditional sums were not vectorised and ran slower than the three
    passes (measured at ResNet-18's stem, (16, 64, 80, 80): 15.6 against 9.2 ms)."""
    if relu_y is not None:
        dy = relu_backward(dy, relu_y)
    N, C = dy.shape[:2]
    d3 = np.ascontiguousarray(dy).reshape(N, C, -1)
    h3 = np.ascontiguousarray(x_hat).reshape(N, C, -1)
    dbeta = np.empty(C, np.float64)
    dgamma = np.empty(C, np.float64)
    _bn_sums(d3, h3, dbeta, dgamma)
    M = d3.shape[0] * d3.shape[2]
    dt = dy.dtype
    dx = np.empty_like(d3)
    scale = (gamma.astype(np.float64) * inv_std.astype(np.float64)).astype(dt)
    _bn_dx(d3, h3, scale, (dbeta / M).astype(dt), (dgamma / M).astype(dt), dx)
    return dx.reshape(dy.shape), dgamma.astype(dt), dbeta.astype(dt)


# ---------------------------------------------------------------------------
# ReLU
# ---------------------------------------------------------------------------
@_jit
def _relu(x, y):
    for k in prange(x.size):
        t = x[k]
        y[k] = t if t > 0 or np.isnan(t) else 0


def relu(x, out=None):
    """y = max(x, 0), NaN kept (as ``np.maximum``); into ``out`` (x itself allowed) when given: a C-contiguous
    array of x's shape and dtype."""
    xc = np.ascontiguousarray(x)
    y = np.empty_like(xc) if out is None else out
    _relu(xc.reshape(-1), y.reshape(-1))
    return y


@_jit
def _relu_backward(dy, y, dx):
    for k in prange(dy.size):
        dx[k] = dy[k] if y[k] > 0 else 0


def relu_backward(dy, y):
    """dx = δ · [y > 0]."""
    dyc = np.ascontiguousarray(dy)
    dx = np.empty_like(dyc)
    _relu_backward(dyc.reshape(-1), np.ascontiguousarray(y).reshape(-1), dx.reshape(-1))
    return dx
