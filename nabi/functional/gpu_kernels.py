"""CUDA kernels for the GPU path, compiled once per dtype by CuPy (``RawModule``, cached on disk).

They replace the CuPy paths that cost one kernel launch and one pass over the whole array
per kernel offset: col2im (KH·KW slice-adds: 121 for AlexNet's conv1) and max pooling
(KH·KW ``maximum`` passes forward, as many compare-and-scatter passes backward), and the
two to three passes of moving a convolution's result into (N, F, H, W) with its bias and ReLU. Each is
one launch of one thread per *output* element that reads what it needs (a gather), so no
two threads write the same element, no atomics are needed, and sums run in the same order
as the CPU code — the results equal the NumPy path and the compiled CPU kernels bit for bit:

    im2col      col[(c,u,v), (n,i,j)] = x[n, c, i·SH+u−PH, j·SW+v−PW]   (0 outside the image)
    from_gemm   y[n,f,p] = ymat[f, n·P+p] + b[f], then max(·, 0) for a fused ReLU
    to_gemm     dmat[f, n·P+p] = δ[n,f,p] (0 where a fused ReLU's output is ≤ 0)
    col2im      dx[n,c,h,w] = Σ_u Σ_v col[(c,u,v), (n,i,j)]  over i·SH+u−PH = h, j·SW+v−PW = w
    max_pool    y = max of the window's cells inside the image, arg = h·W+w of the first maximum
                (row-major; a NaN wins and the last NaN is taken, as PyTorch's CPU kernel)
    max_pool_backward   dx[n,c,h,w] = Σ δ[n,c,i,j] over the windows (i, j) whose arg is (h, w)

float32 and float64 only (float16 keeps the CuPy path). ``KERNELS`` is the single table of
signatures: the launcher here and the CPU harness of ``tests/cupy_emulator.py`` (which
compiles this same source with a C++ compiler and runs the grid as loops, so the index
arithmetic and the launches are tested on machines without a GPU) are both generated from it.
``tests/test_gpu_kernels.py`` also compiles ``module_source`` with NVRTC to sm_90 machine code.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from . import cpu_kernels as K

SOURCE = r"""
#define GRID_LOOP(idx, total) \
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < (total); \
         idx += (long long)blockDim.x * gridDim.x)

extern "C" __global__ void im2col(const T* x, T* col, int N, int C, int H, int W, int kh, int kw,
                                  int sh, int sw, int ph, int pw, int oh, int ow) {
    long long P = (long long)N * oh * ow;
    GRID_LOOP(idx, (long long)C * kh * kw * P) {
        long long r = idx / P, q = idx % P;
        int j = (int)(q % ow), i = (int)((q / ow) % oh), n = (int)(q / ((long long)oh * ow));
        int v = (int)(r % kw), u = (int)((r / kw) % kh), c = (int)(r / ((long long)kh * kw));
        int h = i * sh + u - ph, w = j * sw + v - pw;
        col[idx] = (h >= 0 && h < H && w >= 0 && w < W) ? x[(((long long)n * C + c) * H + h) * W + w] : (T)0;
    }
}

extern "C" __global__ void col2im(const T* col, T* dx, int N, int C, int H, int W, int kh, int kw,
                                  int sh, int sw, int ph, int pw, int oh, int ow) {
    long long P = (long long)N * oh * ow;
    GRID_LOOP(idx, (long long)N * C * H * W) {
        int w = (int)(idx % W), h = (int)((idx / W) % H);
        int c = (int)((idx / ((long long)H * W)) % C), n = (int)(idx / ((long long)C * H * W));
        T s = (T)0;
        for (int u = 0; u < kh; ++u) {
            int hh = h + ph - u;
            if (hh < 0 || hh % sh != 0 || hh / sh >= oh) continue;
            int i = hh / sh;
            for (int v = 0; v < kw; ++v) {
                int ww = w + pw - v;
                if (ww < 0 || ww % sw != 0 || ww / sw >= ow) continue;
                int j = ww / sw;
                s += col[((long long)(c * kh + u) * kw + v) * P + ((long long)n * oh + i) * ow + j];
            }
        }
        dx[idx] = s;
    }
}

extern "C" __global__ void from_gemm(const T* ymat, const T* b, T* y, int N, int F, int P, int flag) {
    // y[n, f, p] = ymat[f, n·P + p] + b[f]; flag bit 0: there is a bias, bit 1: then max(·, 0)
    GRID_LOOP(idx, (long long)N * F * P) {
        long long p = idx % P, f = (idx / P) % F, n = idx / ((long long)P * F);
        T t = ymat[f * N * P + n * P + p];
        if (flag & 1) t += b[f];
        if ((flag & 2) && t < (T)0) t = (T)0;     // NaN stays NaN
        y[idx] = t;
    }
}

extern "C" __global__ void to_gemm(const T* dy, const T* relu_y, T* dmat, int N, int F, int P, int flag) {
    // dmat[f, n·P + p] = dy[n, f, p], or 0 where flag is set and relu_y[n, f, p] <= 0 (a fused ReLU's mask)
    GRID_LOOP(idx, (long long)N * F * P) {
        long long q = idx % ((long long)N * P), f = idx / ((long long)N * P);
        long long src = ((q / P) * F + f) * P + q % P;
        dmat[idx] = (!flag || relu_y[src] > (T)0) ? dy[src] : (T)0;
    }
}

extern "C" __global__ void max_pool(const T* x, T* y, int* arg, int N, int C, int H, int W, int kh, int kw,
                                    int sh, int sw, int ph, int pw, int oh, int ow) {
    GRID_LOOP(idx, (long long)N * C * oh * ow) {
        int j = (int)(idx % ow), i = (int)((idx / ow) % oh);
        long long plane = idx / ((long long)oh * ow);
        const T* src = x + plane * H * W;
        int ha = i * sh - ph, hb = ha + kh, wa = j * sw - pw, wb = wa + kw;
        if (ha < 0) ha = 0;
        if (hb > H) hb = H;
        if (wa < 0) wa = 0;
        if (wb > W) wb = W;
        int at = ha * W + wa;          // starting from the first cell is starting from −∞ here
        T best = src[at];
        for (int h = ha; h < hb; ++h)
            for (int w = wa; w < wb; ++w) {
                T t = src[h * W + w];
                if (t > best || t != t) { best = t; at = h * W + w; }     // t != t: NaN (no math header)
            }
        y[idx] = best;
        arg[idx] = at;
    }
}

extern "C" __global__ void max_pool_backward(const T* dy, const int* arg, T* dx, int N, int C, int H, int W,
                                             int kh, int kw, int sh, int sw, int ph, int pw, int oh, int ow) {
    GRID_LOOP(idx, (long long)N * C * H * W) {
        int w = (int)(idx % W), h = (int)((idx / W) % H);
        long long plane = idx / ((long long)H * W);
        const T* d = dy + plane * oh * ow;
        const int* a = arg + plane * oh * ow;
        int hi = (h + ph) / sh, wj = (w + pw) / sw;            // the last windows that can hold (h, w)
        int i0 = h + ph - kh + 1, j0 = w + pw - kw + 1;         // and the first: ceil(·/s), at least 0
        i0 = i0 <= 0 ? 0 : (i0 + sh - 1) / sh;
        j0 = j0 <= 0 ? 0 : (j0 + sw - 1) / sw;
        if (hi > oh - 1) hi = oh - 1;
        if (wj > ow - 1) wj = ow - 1;
        int me = h * W + w;
        T s = (T)0;
        for (int i = i0; i <= hi; ++i)
            for (int j = j0; j <= wj; ++j)
                if (a[i * ow + j] == me) s += d[i * ow + j];
        dx[idx] = s;
    }
}
"""

GEOMETRY = ("N", "C", "H", "W", "kh", "kw", "sh", "sw", "ph", "pw", "oh", "ow")
LAYOUT = ("N", "F", "P", "flag")

KERNELS = {
    # name: (pointer arguments as (C type, name), the int arguments that follow them)
    "im2col": ((("const T*", "x"), ("T*", "col")), GEOMETRY),
    "col2im": ((("const T*", "col"), ("T*", "dx")), GEOMETRY),
    "max_pool": ((("const T*", "x"), ("T*", "y"), ("int*", "arg")), GEOMETRY),
    "max_pool_backward": ((("const T*", "dy"), ("const int*", "arg"), ("T*", "dx")), GEOMETRY),
    "from_gemm": ((("const T*", "ymat"), ("const T*", "b"), ("T*", "y")), LAYOUT),
    "to_gemm": ((("const T*", "dy"), ("const T*", "relu_y"), ("T*", "dmat")), LAYOUT),
}

C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
COMPILE_OPTIONS = ("--std=c++11",)
THREADS = 256
_modules = {}
_on = os.environ.get("NABI_KERNELS", "compiled").lower() != "numpy"


def enabled(*arrays) -> bool:
    """Whether these kernels serve the arrays: CuPy float32/float64 arrays, kernels switched on
    (``NABI_KERNELS=numpy`` switches them off, as it does the CPU kernels)."""
    if not _on:
        return False
    for a in arrays:
        mod = type(a).__module__
        if not mod.startswith("cupy") or a.dtype not in C_TYPES:
            return False
    return all(_module(a.dtype) is not None for a in arrays)


def module_source(dtype) -> str:
    """The CUDA source compiled for one dtype: ``SOURCE`` with ``T`` defined."""
    return f"#define T {C_TYPES[np.dtype(dtype)]}\n" + SOURCE


def _module(dtype):
    """The compiled kernels for dtype, built on first use. Should the device's compiler refuse
    them, say why once and switch them off: the CuPy array code then runs, slower but correct."""
    global _on
    dtype = np.dtype(dtype)
    if dtype not in _modules:
        try:
            import cupy
            module = cupy.RawModule(code=module_source(dtype), options=COMPILE_OPTIONS)
            for name in KERNELS:
                module.get_function(name)          # compiles now, not in the middle of a step
        except Exception as exc:                   # noqa: BLE001 - any compiler or driver failure
            warnings.warn(f"nabi: the CUDA kernels did not compile ({type(exc).__name__}: {exc}); "
                          "using the CuPy array code instead", RuntimeWarning, stacklevel=3)
            _on = False
            return None
        _modules[dtype] = module
    return _modules[dtype]


def use_kernels(flag: bool) -> None:
    """Switch these kernels on or off (off: the CuPy array code, the reference)."""
    global _on
    _on = bool(flag)


def kernels(flag: bool):
    """``with kernels(False): ...`` runs the block on the CuPy array code."""
    return K.switched(lambda: _on, use_kernels, flag)


def _launch(name, dtype, args, total):
    blocks = int(max(1, min((total + THREADS - 1) // THREADS, 1 << 16)))
    _modules[np.dtype(dtype)].get_function(name)((blocks,), (THREADS,), tuple(args))


def _geometry(x_shape, geom):
    N, C, H, W = (int(s) for s in x_shape)
    kh, kw, sh, sw, ph, pw, oh, ow = (int(g) for g in geom)
    return [np.int32(v) for v in (N, C, H, W, kh, kw, sh, sw, ph, pw, oh, ow)]


def from_gemm(ymat, b, N, relu=False):
    """GEMM result (F, N·P) plus bias (F,) or None (then max(·, 0) with ``relu``) → (N, F, P) contiguous."""
    import cupy
    F, NP = ymat.shape
    ymat = cupy.ascontiguousarray(ymat)
    y = cupy.empty((N, F, NP // N), dtype=ymat.dtype)
    bias = ymat if b is None else cupy.ascontiguousarray(b.astype(ymat.dtype, copy=False))
    flag = (b is not None) | (2 if relu else 0)
    _launch("from_gemm", ymat.dtype, [ymat, bias, y, np.int32(N), np.int32(F), np.int32(NP // N), np.int32(flag)],
            y.size)
    return y


def to_gemm(dy, relu_y=None):
    """δ (N, F, OH, OW) → δ in GEMM layout (F, N·OH·OW), masked by [relu_y > 0] when given."""
    import cupy
    N, F = dy.shape[:2]
    dy = cupy.ascontiguousarray(dy)
    P = dy.size // (N * F)
    mask = dy if relu_y is None else cupy.ascontiguousarray(relu_y)
    dmat = cupy.empty((F, N * P), dtype=dy.dtype)
    _launch("to_gemm", dy.dtype, [dy, mask, dmat, np.int32(N), np.int32(F), np.int32(P),
                                  np.int32(relu_y is not None)], dmat.size)
    return dmat


def im2col(x, geom, out=None):
    """Unpadded x (N, C, H, W) → columns (C·KH·KW, N·OH·OW), zero padding applied on the fly."""
    import cupy
    kh, kw, sh, sw, ph, pw, oh, ow = geom
    N, C = x.shape[:2]
    x = cupy.ascontiguousarray(x)
    col = out if out is not None else cupy.empty((C * kh * kw, N * oh * ow), dtype=x.dtype)
    _launch("im2col", x.dtype, [x, col] + _geometry(x.shape, geom), col.size)
    return col


def col2im(col, x_shape, geom):
    """Adjoint of ``im2col``: (C·KH·KW, N·OH·OW) → (N, C, H, W), overlaps summed, padding dropped."""
    import cupy
    col = cupy.ascontiguousarray(col)
    dx = cupy.empty(tuple(x_shape), dtype=col.dtype)
    _launch("col2im", col.dtype, [col, dx] + _geometry(x_shape, geom), dx.size)
    return dx


def max_pool(x, geom):
    """(N, C, H, W) → (y (N, C, OH, OW), argmax (N, C, OH, OW) int32 flat index into H·W)."""
    import cupy
    kh, kw, sh, sw, ph, pw, oh, ow = geom
    N, C = x.shape[:2]
    x = cupy.ascontiguousarray(x)
    y = cupy.empty((N, C, oh, ow), dtype=x.dtype)
    arg = cupy.empty((N, C, oh, ow), dtype=np.int32)
    _launch("max_pool", x.dtype, [x, y, arg] + _geometry(x.shape, geom), y.size)
    return y, arg


def max_pool_backward(dy, arg, x_shape, geom):
    """δ (N, C, OH, OW) → dx (N, C, H, W): each input cell gathers the δ of the windows whose maximum it is."""
    import cupy
    dy = cupy.ascontiguousarray(dy)
    dx = cupy.empty(tuple(x_shape), dtype=dy.dtype)
    _launch("max_pool_backward", dy.dtype, [dy, arg, dx] + _geometry(x_shape, geom), dx.size)
    return dx
