"""Matrix products split over nabi's threads, and in-place updates without full-size temporaries.

``matmul(a, b, out)`` is the product every convolution and fully connected layer runs. A product large enough
to be worth it is cut into blocks (columns or rows of the result; the matrices of a stack) that nabi's own
threads take one at a time from a shared queue, each calling NumPy's BLAS single-threaded; the BLAS's own
threads are set to one only while such a product runs (and put back when the last one returns). Why: OpenBLAS
splits a product statically between its threads and synchronises them many times, so on a machine whose cores
other processes also use, one descheduled thread stalls the others — measured on 2 shared cores (load 13):
2 OpenBLAS threads ran a 256×2304×512 product at 4.8 GFLOP/s, one thread at 26, and the same product cut into
8 blocks over 2 nabi threads at 34. A block that a slow thread has not taken is taken by the other. The
threads are ``nabi.backend.cpu_threads()`` (``set_num_threads``; by default the usable cores).
``NABI_GEMM=blas`` leaves every product to the BLAS as it is set up (its own threads), as do a BLAS other
than OpenBLAS with a pthreads pool (its thread count is one number per process only there) and a missing
``threadpoolctl``.

Used by the optimiser step (p ← p − lr·g) and the fused SGD path (``W -= lr·δᵀx``
inside backward). For AlexNet-336's fc6 at batch 1 the update is a rank-1 product
of 105 million weights: computed block by block (a few MB at a time) it never
materialises the 420 MB gradient, and the blocks stay in cache. Pure NumPy/CuPy:
SciPy's BLAS was measured slower here, because its own OpenBLAS thread pool spins
against NumPy's on a 2-core machine.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..backend import cpu_threads, get_array_module

BLOCK_ELEMENTS = 1 << 18
"""Elements per block of the blocked updates (1 MB of float32: stays in cache)."""

PARALLEL_MIN_ELEMENTS = 1 << 22
"""Updates larger than this are split over threads (NumPy releases the GIL in its loops): a
memory-bound update of fc6's 105 M weights takes ~90 ms on one core and ~60 ms on two."""

_pool = None


def _threads() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(4, n))


def _in_parallel(total: int, work) -> None:
    """Run ``work(lo, hi)`` over [0, total) split into one contiguous part per thread."""
    global _pool
    k = _threads() if total >= PARALLEL_MIN_ELEMENTS else 1
    if k == 1:
        work(0, total)
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=_threads(), thread_name_prefix="nabi-update")
    bounds = [(total * i // k, total * (i + 1) // k) for i in range(k)]
    for f in [_pool.submit(work, lo, hi) for lo, hi in bounds]:
        f.result()


def matmul_into(a, b, out=None):
    """a @ b, written into ``out`` when given. An inner dimension of 1 (batch-1 weight gradients)
    is an outer product: an element-wise broadcast multiply is ~4× faster than GEMM there."""
    xp = get_array_module(a)
    if a.shape[1] == 1:
        return xp.multiply(a, b, out=out)
    return matmul(a, b, out=out)


# ---------------------------------------------------------------------------
# matrix products over nabi's threads
# ---------------------------------------------------------------------------
SPLIT_MIN_FLOPS = 4_000_000
"""Products with fewer multiply-adds run as one BLAS call (a handoff between threads costs ~20 µs)."""

BLOCKS_PER_THREAD = 4
"""Blocks per thread a product is cut into: enough for one thread to take over a stalled one's share."""

MIN_BLOCK = 32
"""Fewest columns (or rows) in a block, so each block's BLAS call stays efficient."""

_gemm_pool = None
_gemm_pool_size = 0
_pool_lock = threading.Lock()


def gemm_threads() -> int:
    """Threads a product is split over: ``nabi.backend.cpu_threads()`` (the usable cores, or what
    ``set_num_threads`` set). The same in every calling thread, so a product's blocks, and so its bits, do not
    depend on which thread asks."""
    return cpu_threads()


class _SingleThreadedBLAS:
    """While at least one product runs here, OpenBLAS's thread count is 1 (each block is one BLAS call on one of
    nabi's threads); the last product to finish puts back what was there before. Only for OpenBLAS with its own
    (pthreads) thread pool, whose count is one number for the whole process: it is set through OpenBLAS's own
    ``openblas_set_num_threads`` (threadpoolctl lets only one thread of a process change it)."""

    PREFIXES, SUFFIXES = ("", "scipy_"), ("", "64_", "_64")

    def __init__(self):
        self.lock = threading.Lock()
        self.active = 0
        self.saved = None
        self.libs = None              # [(get_num_threads, set_num_threads)] of each OpenBLAS loaded

    def available(self) -> bool:
        if self.libs is None:
            self.libs = []
            try:
                import ctypes
                from threadpoolctl import threadpool_info
                for info in threadpool_info():
                    if info.get("internal_api") == "openblas" and info.get("threading_layer") == "pthreads":
                        self.libs.append(self._functions(ctypes.CDLL(info["filepath"])))
                if any(f is None for f in self.libs):
                    self.libs = []
            except Exception:  # pragma: no cover - threadpoolctl comes with nabi[tools]
                self.libs = []
        return bool(self.libs)

    def _functions(self, lib):
        import ctypes
        for prefix in self.PREFIXES:
            for suffix in self.SUFFIXES:
                get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype, get.argtypes = ctypes.c_int, []
                    put.restype, put.argtypes = None, [ctypes.c_int]
                    return get, put
        return None

    def __enter__(self):
        with self.lock:
            if self.active == 0:
                self.saved = [get() for get, _ in self.libs]
                for (_, put), n in zip(self.libs, self.saved):
                    if n != 1:
                        put(1)
            self.active += 1

    def __exit__(self, *exc):
        with self.lock:
            self.active -= 1
            if self.active == 0:
                for (_, put), n in zip(self.libs, self.saved):
                    if n != 1:
                        put(n)


_single_blas = _SingleThreadedBLAS()


def _gemm_workers(n):
    global _gemm_pool, _gemm_pool_size
    with _pool_lock:
        if _gemm_pool is None or _gemm_pool_size < n:
            _gemm_pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="nabi-gemm")
            _gemm_pool_size = n
        return _gemm_pool


def _block(a, b, out):
    """One block of a split product: one single-threaded BLAS call."""
    np.matmul(a, b, out=out)


def _splits(length, blocks):
    """Bounds [(lo, hi), …] of at most ``blocks`` blocks of one axis, each at least MIN_BLOCK long."""
    k = max(1, min(blocks, length // MIN_BLOCK))
    return [(length * i // k, length * (i + 1) // k) for i in range(k)]


def matmul(a, b, out=None):
    """a @ b into ``out`` (allocated when None): 2-D (M, K)·(K, N), or stacks (B, M, K)·(B, K, N) of equal B.

    NumPy float32/float64 arrays with more than one thread set: split over nabi's threads as the module docstring
    says when the product has at least ``SPLIT_MIN_FLOPS`` multiply-adds, else one block, each block one
    single-threaded BLAS call. So the result depends on the block bounds (the shapes and the thread count), never
    on which thread ran a block, when, or what else was running (OpenBLAS's bits can change with its thread
    count). Otherwise (CuPy, float16, mixed dtypes, one thread, ``NABI_GEMM=blas``): the array module's matmul.
    """
    xp = get_array_module(a)
    threads = gemm_threads() if xp is np else 1
    if (threads == 1 or a.dtype != b.dtype or a.dtype not in (np.float32, np.float64) or a.ndim not in (2, 3)
            or a.ndim != b.ndim or os.environ.get("NABI_GEMM", "") == "blas" or not _single_blas.available()):
        return xp.matmul(a, b, out=out)
    if out is None:
        out = np.empty(a.shape[:-1] + b.shape[-1:], dtype=a.dtype)
    macs = a.shape[-2] * a.shape[-1] * b.shape[-1] * (a.shape[0] if a.ndim == 3 else 1)
    blocks = threads * BLOCKS_PER_THREAD
    if macs < SPLIT_MIN_FLOPS:      # one block, still single-threaded: the same bits whoever else is running
        tasks = [(a, b, out)]
    elif a.ndim == 3:               # a stack: its matrices, each cut into columns when there are too few of them
        per = 1 if a.shape[0] >= 2 * threads else -(-blocks // a.shape[0])
        tasks = [(a[i], b[i][:, lo:hi], out[i][:, lo:hi]) for i in range(a.shape[0])
                 for lo, hi in _splits(b.shape[2], per)]
    elif b.shape[1] >= a.shape[0]:  # columns of the result
        tasks = [(a, b[:, lo:hi], out[:, lo:hi]) for lo, hi in _splits(b.shape[1], blocks)]
    else:                           # rows of the result
        tasks = [(a[lo:hi], b, out[lo:hi]) for lo, hi in _splits(a.shape[0], blocks)]
    if len(tasks) == 1:
        with _single_blas:
            xp.matmul(a, b, out=out)
        return out
    queue = iter(tasks)                                   # next() on it is atomic: each block runs once
    left = [len(tasks)]
    count = threading.Lock()
    finished = threading.Event()

    def work():
        for x, y, o in queue:
            _block(x, y, o)
            with count:
                left[0] -= 1
                if left[0] == 0:
                    finished.set()
    with _single_blas:
        pool = _gemm_workers(threads - 1)
        for _ in range(threads - 1):
            pool.submit(work)
        work()
        finished.wait()       # for the blocks others took; a worker that starts later finds the queue empty
    return out


def gemm_inplace(c, a, b, alpha: float, tmp=None) -> None:
    """c += alpha · (a @ b), in place; c (M, K), a (M, N), b (N, K).

    Rank-1 (N = 1, a batch of one): row blocks c[i:j] += (alpha·a[i:j]) ⊗ b[0], so
    the M×K product is never stored whole. Otherwise one GEMM (into ``tmp``, an (M, K)
    buffer, when given) and a blocked ``axpy``.
    """
    xp = get_array_module(c)
    if a.shape[1] != 1 or xp is not np:
        axpy(c, matmul_into(a, b, out=tmp), alpha)
        return
    rows = max(1, BLOCK_ELEMENTS // max(1, c.shape[1]))
    scaled = (alpha * a[:, 0]).astype(c.dtype)
    row = b[0]

    def work(lo, hi):
        for i in range(lo, hi, rows):
            j = min(i + rows, hi)
            c[i:j] += scaled[i:j, None] * row
    _in_parallel(c.shape[0], work) if c.size >= PARALLEL_MIN_ELEMENTS else work(0, c.shape[0])


def axpy(y, x, alpha: float) -> None:
    """y += alpha · x in place, in cache-sized blocks (no temporary the size of y).

    The plain SGD step p ← p − lr·g is ``axpy(p, g, -lr)``: for fc6 that avoids
    allocating lr·g (419 MB) every step.
    """
    xp = get_array_module(y)
    if xp is not np or y.size <= BLOCK_ELEMENTS or not (y.flags.c_contiguous and x.flags.c_contiguous):
        y += alpha * x
        return
    yf, xf = y.reshape(-1), x.reshape(-1)

    def work(lo, hi):
        buf = np.empty(min(BLOCK_ELEMENTS, hi - lo), dtype=y.dtype)
        for i in range(lo, hi, BLOCK_ELEMENTS):
            j = min(i + BLOCK_ELEMENTS, hi)
            t = buf[:j - i]
            np.multiply(xf[i:j], alpha, out=t)
            yf[i:j] += t
    _in_parallel(yf.size, work)
