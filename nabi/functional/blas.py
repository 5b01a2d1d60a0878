"""In-place updates without full-size temporaries: ``C += α·A·B`` and ``y += α·x``.

Used by the optimiser step (p ← p − lr·g) and the fused SGD path (``W -= lr·δᵀx``
inside backward). For AlexNet-336's fc6 at batch 1 the update is a rank-1 product
of 105 million weights: computed block by block (a few MB at a time) it never
materialises the 420 MB gradient, and the blocks stay in cache. Pure NumPy/CuPy:
SciPy's BLAS was measured slower here, because its own OpenBLAS thread pool spins
against NumPy's on a 2-core machine.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module

BLOCK_ELEMENTS = 1 << 20
"""Elements per block of the blocked updates (4 MB of float32)."""


def matmul_into(a, b, out=None):
    """a @ b, written into ``out`` when given. An inner dimension of 1 (batch-1 weight gradients)
    is an outer product: an element-wise broadcast multiply is ~4× faster than GEMM there."""
    xp = get_array_module(a)
    if a.shape[1] == 1:
        return xp.multiply(a, b, out=out)
    return xp.matmul(a, b, out=out)


def gemm_inplace(c, a, b, alpha: float) -> None:
    """c += alpha · (a @ b), in place; c (M, K), a (M, N), b (N, K).

    Rank-1 (N = 1, a batch of one): row blocks c[i:j] += (alpha·a[i:j]) ⊗ b[0], so
    the M×K product is never stored whole. Otherwise one GEMM and a blocked ``axpy``.
    """
    xp = get_array_module(c)
    if a.shape[1] != 1 or xp is not np:
        axpy(c, matmul_into(a, b), alpha)
        return
    rows = max(1, BLOCK_ELEMENTS // max(1, c.shape[1]))
    scaled = (alpha * a[:, 0]).astype(c.dtype)
    row = b[0]
    for i in range(0, c.shape[0], rows):
        c[i:i + rows] += scaled[i:i + rows, None] * row


def axpy(y, x, alpha: float) -> None:
    """y += alpha · x in place, in blocks (no temporary the size of y).

    The plain SGD step p ← p − lr·g is ``axpy(p, g, -lr)``: for fc6 that avoids
    allocating lr·g (419 MB) every step.
    """
    xp = get_array_module(y)
    if xp is not np or y.size <= BLOCK_ELEMENTS or not (y.flags.c_contiguous and x.flags.c_contiguous):
        y += alpha * x
        return
    yf, xf = y.reshape(-1), x.reshape(-1)
    for i in range(0, yf.size, BLOCK_ELEMENTS):
        yf[i:i + BLOCK_ELEMENTS] += alpha * xf[i:i + BLOCK_ELEMENTS]
