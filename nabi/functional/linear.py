"""Fully connected layer and flatten.

Linear: x (N, in), w (out, in) as PyTorch stores it, b (out,):
    y = x · wᵀ + b
    ∂L/∂x = δ · w,   ∂L/∂w = δᵀ · x,   ∂L/∂b = Σ_n δ[n]
For a batch of one, ∂L/∂w is the rank-1 outer product δᵀx (the setting of the 2019 report
"CNN을 이용한 고려대학교 길고양이 분류 및 배경 학습을 통한 성능 개선", COSE362, Korea University).
"""
from __future__ import annotations

from ._checks import check_input
from .blas import gemm_inplace, matmul, matmul_into
from .dispatch import for_arrays, reference
from .accumulate import sum_over


def linear_forward(x, w, b=None, layer="linear"):
    check_input(x, 2, layer, what="(N, in_features)")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"{layer}: expected {w.shape[1]} input features, got input of shape {tuple(x.shape)}")
    y = matmul(x, w.T)
    if b is not None:
        y += b
    return y, (x, w, b is not None)


def linear_backward(dy, cache, need_dx=True, dw_out=None):
    """Returns ``(dx, dw, db)``; dx is None when ``need_dx`` is False.

    ``dw_out``: a buffer to write ∂L/∂w into (the parameter's kept gradient buffer).
    """
    x, w, has_bias = cache
    dw = matmul_into(dy.T, x, out=dw_out)
    db = sum_over(dy, 0) if has_bias else None
    dx = matmul(dy, w) if need_dx else None
    return dx, dw, db


def linear_sgd_backward(dy, cache, w, b, lr, need_dx=True):
    """Backward fused with plain SGD: dx = δ·w first, then w ← w − lr·δᵀx and b ← b − lr·Σδ in place.

    The weight gradient is never materialised (BLAS ``ger``/``gemm`` with beta = 1).
    """
    x, _, has_bias = cache
    if need_dx and dy.shape[0] == 1 and w.flags.c_contiguous:
        # batch of one: dx = δ·w and w −= lr·δᵀx (the compiled CPU loop does both in one pass over w)
        dx = for_arrays(dy, w, x).vecmat_rank1_update(w, dy[0], -lr * dy[0], x[0])[None, :]
    else:
        dx = dy @ w if need_dx else None
        gemm_inplace(w, dy.T, x, -lr)
    if has_bias:
        b -= lr * sum_over(dy, 0)
    return dx


@reference
def vecmat_rank1_update(w, v, a, row):
    """Return v·w (v (M,), w (M, K)) with the old w, then w += a ⊗ row in place."""
    dx = (v[None, :] @ w)[0]
    gemm_inplace(w, a[:, None], row[None, :], 1.0)
    return dx


def flatten_forward(x, start_dim=1):
    """(N, C, H, W) → (N, C·H·W)."""
    return x.reshape(x.shape[:start_dim] + (-1,)), x.shape


def flatten_backward(dy, shape):
    return dy.reshape(shape)
