"""The one place that chooses how the memory-bound primitives of an op are computed.

Three implementations offer the same methods:

    REFERENCE  the array code (NumPy or CuPy), written as the formula; defined next to each op
               (``conv.im2col``, ``pool.max_pool``, ``activation.relu``…) and registered here
               with ``@reference``. Always available; the proof the others are checked against.
    NUMBA      the compiled CPU loops of ``cpu_kernels``: NumPy float32/float64 arrays, numba
               installed and not switched off (``NABI_KERNELS=numpy``, ``cpu_kernels.use_kernels``).
    CUDA       the CUDA kernels of ``gpu_kernels``: CuPy float32/float64 arrays, kernels compiled.

``for_arrays(*arrays)`` picks the one that serves every array given (None entries are ignored):
NUMBA, else CUDA, else REFERENCE. A compiled implementation that lacks a method inherits the
reference one (the CUDA side has no batch-norm or ReLU kernels: CuPy's array code runs there).

The methods (geometry ``geom`` = (KH, KW, SH, SW, PH, PW, OH, OW); P = OH·OW):

    im2col(x, geom, out=None)               unpadded x (N, C, H, W) → columns (C·KH·KW, N·P)
    col2im(dcol, x_shape, geom)             the adjoint: columns → (N, C, H, W), overlaps summed
    from_gemm(ymat, b, N, relu=False)       (F, N·P) + b (F,) [then max(·, 0)] → (N, F, P)
    to_gemm(dy, relu_y=None, out=None, need_db=True)
                                            δ (N, F, OH, OW) [· [y > 0]] → (δ as (F, N·P), Σδ (F,) or None)
    max_pool(x, geom10)                     → (y, state): state is what max_pool_backward of the same
    max_pool_backward(dy, state, x_shape, geom10)   implementation needs (kept in the op's cache)
    relu(x), relu_backward(dy, y)
    vecmat_rank1_update(w, v, a, row)       v·w with the old w, then w += a ⊗ row (fused SGD, batch 1)
    winograd_weight(w, out=None, tile=2), winograd_weight_backward(du, out=None, tile=2)
                                            w (F, C, 3, 3) ↔ U (α², F, C): G w Gᵀ and its adjoint Gᵀ ∂U G
    winograd_input(x, geom, out=None, tile=2)   x (N, C, H, W) → V (α², C, T): Bᵀ d B per α×α patch
    winograd_output(m, b, N, geom, relu=False, out=None, tile=2)   M → Aᵀ M A + b [then max(·, 0)] (N, F, OH, OW)
    winograd_output_backward(dy, geom, relu_y=None, need_db=True, out=None, tile=2)  δ → (A δ Aᵀ, Σδ or None)
    winograd_input_backward(dv, x_shape, geom, out=None, tile=2)   ∂V → Σ_t B ∂V_t Bᵀ on the input (N, C, H, W)
                                            (``conv_winograd``: tile 2 is F(2×2, 3×3), α = 4; tile 4 is
                                            F(4×4, 3×3), α = 6)
    batch_norm_stats(x), batch_norm_apply(x, mean, inv_std, gamma, beta, relu),
    batch_norm_train_backward(dy, x_hat, inv_std, gamma, relu_y)  (4-D input; compiled CPU only)

``keeps_buffers``: whether the implementation writes into caller-kept buffers (``out=``): only
NUMBA (a CuPy memory pool already reuses device memory; the NumPy array code builds views).
"""
from __future__ import annotations

from . import cpu_kernels as K
from . import gpu_kernels as G
from .accumulate import sum_over


class Reference:
    """The array code (NumPy on the CPU, CuPy on the GPU). Its methods are registered by the op
    modules with ``@reference``, so each formula is written once, beside the op that uses it."""

    name = "reference"
    keeps_buffers = False
    has_batch_norm = False      # batch norm's reference is written inline in ``norm.py``

    @staticmethod
    def serves(*arrays) -> bool:
        return True

    def __repr__(self):
        return f"<nabi implementation {self.name}>"


def reference(fn_or_name):
    """Register a function as the reference implementation of the method of its own name
    (``@reference``), or of another name (``@reference("relu_backward")``)."""
    if isinstance(fn_or_name, str):
        def register(fn):
            setattr(Reference, fn_or_name, staticmethod(fn))
            return fn
        return register
    setattr(Reference, fn_or_name.__name__, staticmethod(fn_or_name))
    return fn_or_name


class Numba(Reference):
    """The compiled CPU loops (``cpu_kernels``), one pass per primitive, split over the cores."""

    name = "numba"
    keeps_buffers = True
    has_batch_norm = True
    serves = staticmethod(K.enabled)
    im2col = staticmethod(K.im2col)
    col2im = staticmethod(K.col2im)

    @staticmethod
    def from_gemm(ymat, b, N, relu=False):
        return K.from_gemm(ymat, b, N, relu)

    @staticmethod
    def to_gemm(dy, relu_y=None, out=None, need_db=True):
        if dy.shape[0] == 1 and relu_y is None:        # batch of one, no mask: a free reshape
            return Reference.to_gemm(dy, None, None, need_db)
        dmat, db = K.to_gemm(dy, relu_y, out=out)
        return dmat, (db if need_db else None)

    @staticmethod
    def max_pool(x, g):
        return K.max_pool(x, g[:8])                    # (y, argmax)

    @staticmethod
    def max_pool_backward(dy, arg, x_shape, g):
        return K.max_pool_backward(dy, arg, x_shape)

    relu = staticmethod(K.relu)

    @staticmethod
    def relu_backward(dy, y):
        if dy.shape != y.shape:
            return Reference.relu_backward(dy, y)
        return K.relu_backward(dy, y)

    vecmat_rank1_update = staticmethod(K.vecmat_rank1_update)
    winograd_weight = staticmethod(K.winograd_weight)
    winograd_weight_backward = staticmethod(K.winograd_weight_backward)
    winograd_input = staticmethod(K.winograd_input)
    winograd_output = staticmethod(K.winograd_output)
    winograd_output_backward = staticmethod(K.winograd_output_backward)
    winograd_input_backward = staticmethod(K.winograd_input_backward)
    batch_norm_stats = staticmethod(K.batch_norm_stats)
    batch_norm_apply = staticmethod(K.batch_norm_apply)
    batch_norm_train_backward = staticmethod(K.batch_norm_backward)


class Cuda(Reference):
    """The CUDA kernels (``gpu_kernels``): one launch per primitive, one thread per output element."""

    name = "cuda"
    serves = staticmethod(G.enabled)

    @staticmethod
    def im2col(x, geom, out=None):
        return G.im2col(x, geom)

    col2im = staticmethod(G.col2im)

    @staticmethod
    def from_gemm(ymat, b, N, relu=False):
        return G.from_gemm(ymat, b, N, relu)

    @staticmethod
    def to_gemm(dy, relu_y=None, out=None, need_db=True):
        if dy.shape[0] == 1 and relu_y is None:        # batch of one, no mask: a free reshape
            return Reference.to_gemm(dy, None, None, need_db)
        dmat = G.to_gemm(dy, relu_y)                   # one launch: mask and layout
        return dmat, (sum_over(dmat, 1) if need_db else None)

    @staticmethod
    def max_pool(x, g):
        return G.max_pool(x, g[:8])

    @staticmethod
    def max_pool_backward(dy, arg, x_shape, g):
        return G.max_pool_backward(dy, arg, x_shape, g[:8])


REFERENCE, NUMBA, CUDA = Reference(), Numba(), Cuda()


def for_arrays(*arrays):
    """The implementation that serves all these arrays: NUMBA, else CUDA, else REFERENCE."""
    arrays = [a for a in arrays if a is not None]
    if NUMBA.serves(*arrays):
        return NUMBA
    if CUDA.serves(*arrays):
        return CUDA
    return REFERENCE
