"""In-place matrix updates ``C += α·A·B`` through BLAS, without a temporary for A·B.

Used by the fused SGD path (``W -= lr·δᵀx`` inside backward): for AlexNet-336's
fc6 at batch 1 this is a rank-1 update of 105 million weights that never
materialises the 420 MB gradient. NumPy float32/float64 arrays go to SciPy's
BLAS ``?gemm`` with ``beta = 1`` on the Fortran-ordered view Cᵀ (so C is
updated in place); anything else (CuPy, other dtypes, no SciPy) falls back to
``C += α·(A @ B)``.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module

try:
    from scipy.linalg import blas as _blas
except Exception:  # pragma: no cover - SciPy is optional
    _blas = None


def matmul_into(a, b, out=None):
    """a @ b, written into ``out`` when given. An inner dimension of 1 (batch-1 weight gradients)
    is an outer product: an element-wise broadcast multiply is ~4× faster than GEMM there."""
    xp = get_array_module(a)
    if a.shape[1] == 1:
        return xp.multiply(a, b, out=out)
    return xp.matmul(a, b, out=out)


def gemm_inplace(c, a, b, alpha: float) -> None:
    """c += alpha · (a @ b), in place; c (M, K) C-contiguous, a (M, N), b (N, K).

    Rank-1 (N = 1) goes to BLAS ``?ger``, otherwise ``?gemm`` with beta = 1, both on Cᵀ.
    """
    xp = get_array_module(c)
    if (_blas is not None and xp is np and c.flags.c_contiguous and c.dtype in (np.float32, np.float64)
            and a.dtype == c.dtype and b.dtype == c.dtype):
        single = c.dtype == np.float32
        if a.shape[1] == 1:
            ger = _blas.sger if single else _blas.dger
            out = ger(alpha, np.ascontiguousarray(b[0]), np.ascontiguousarray(a[:, 0]), a=c.T, overwrite_a=True)
        else:
            gemm = _blas.sgemm if single else _blas.dgemm
            # Cᵀ (K, M) is Fortran-contiguous: Cᵀ ← α·bᵀ·aᵀ + Cᵀ
            out = gemm(alpha, b, a, beta=1.0, c=c.T, trans_a=True, trans_b=True, overwrite_c=True)
        if np.shares_memory(out, c):
            return
        c[...] = out.T  # pragma: no cover - the BLAS wrapper copied after all
        return
    c += alpha * matmul_into(a, b)


def axpy(y, x, alpha: float) -> None:
    """y += alpha · x in place without a temporary (BLAS ``?axpy`` on NumPy float arrays).

    The plain SGD step p ← p − lr·g is ``axpy(p, g, -lr)``: one pass over memory
    instead of allocating lr·g (419 MB for AlexNet-336's fc6) every step.
    """
    xp = get_array_module(y)
    if (_blas is not None and xp is np and y.flags.c_contiguous and x.flags.c_contiguous
            and y.dtype in (np.float32, np.float64) and x.dtype == y.dtype and x.shape == y.shape):
        f = _blas.saxpy if y.dtype == np.float32 else _blas.daxpy
        out = f(x.reshape(-1), y.reshape(-1), a=alpha)
        if np.shares_memory(out, y):
            return
        y[...] = out.reshape(y.shape)  # pragma: no cover - the BLAS wrapper copied after all
        return
    y += alpha * x
