"""In-place updates without full-size temporaries: ``C += α·A·B`` and ``y += α·x``.

Used by the optimiser step (p ← p − lr·g) and the fused SGD path (``W -= lr·δᵀx``
inside backward). For AlexNet-336's fc6 at batch 1 the update is a rank-1 product
of 105 million weights: computed block by block (a few MB at a time) it never
materialises the 420 MB gradient, and the blocks stay in cache. Pure NumPy/CuPy:
SciPy's BLAS was measured slower here, because its own OpenBLAS thread pool spins
against NumPy's on a 2-core machine.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..backend import get_array_module

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
    return xp.matmul(a, b, out=out)


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
