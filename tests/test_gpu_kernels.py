"""The CUDA kernels of ``nabi.functional.gpu_kernels``, tested without a GPU.

Their source is compiled here by the machine's C++ compiler behind a small shim (the one the
CuPy emulator of ``tests/cupy_emulator.py`` uses): ``__global__`` becomes nothing and a launcher
runs the whole grid as two loops (blocks × threads, deliberately
few of each so the grid-stride loops wrap). Every thread writes only its own outputs, so running
them one after another is faithful. The results must equal the NumPy path (and the compiled CPU
kernels) bit for bit. ``tests/test_gpu.py`` repeats the comparison on a real device.

And NVRTC, the compiler CuPy uses on the device, compiles the same text here to H100/A100/T4
machine code (NVIDIA's ``nvidia-cuda-nvrtc-cu12`` wheel, a test dependency, needs no GPU), so a
source that g++ accepts but CUDA would refuse fails here too.
"""
import ctypes
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

import cupy_emulator
from strategies import window_axis
from nabi.functional import conv as CV, cpu_kernels as K, dispatch as D, gpu_kernels as G, pool as PL


@pytest.fixture(scope="module")
def harness():
    if cupy_emulator.CXX is None:
        pytest.skip("no C++ compiler to build the CUDA source for the CPU")
    libs = {dtype: cupy_emulator.compile_harness(G.module_source(dtype)) for dtype in G.C_TYPES}

    def run(name, dtype, arrays, x_shape, geom, grid=3, block=5):
        for a in arrays:
            assert a.flags.c_contiguous
        ints = [int(v) for v in tuple(x_shape) + tuple(geom)]
        assert len(ints) == len(G.KERNELS[name][1])
        getattr(libs[np.dtype(dtype)], f"launch_{name}")(
            ctypes.c_int(grid), ctypes.c_int(block), *[ctypes.c_void_p(a.ctypes.data) for a in arrays],
            *[ctypes.c_int(v) for v in ints])
    return run


def test_harness_is_generated_from_the_kernel_table():
    src = cupy_emulator.harness_source(G.module_source(np.float32))
    for name in G.KERNELS:
        assert f'extern "C" __global__ void {name}(' in src and f"launch_{name}(" in src


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 3),
       hg=window_axis((1, 10), (1, 5), (1, 3), (0, 4)), wg=window_axis((1, 10), (1, 5), (1, 3), (0, 4)),
       f64=st.booleans())
def test_im2col_and_col2im_equal_numpy(harness, n, c, hg, wg, f64):
    (h, kh, sh, ph), (w, kw, sw, pw) = hg, wg
    dtype = np.float64 if f64 else np.float32
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    geom = (kh, kw, sh, sw, ph, pw, oh, ow)
    rng = np.random.default_rng(h + 11 * w + 5 * kh)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    want = CV.im2col(x, geom)
    col = np.full(want.shape, np.nan, dtype)
    harness("im2col", dtype, [x, col], x.shape, geom)
    np.testing.assert_array_equal(col, want)
    dcol = rng.standard_normal(want.shape).astype(dtype)
    dx = np.full(x.shape, np.nan, dtype)
    harness("col2im", dtype, [dcol, dx], x.shape, geom)
    np.testing.assert_array_equal(dx, CV.col2im(dcol, x.shape, geom))


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 3),
       hg=window_axis((1, 11), (1, 4), (1, 3), (0, 2), pooling=True),
       wg=window_axis((1, 11), (1, 4), (1, 3), (0, 2), pooling=True),
       ceil=st.booleans(), ties=st.booleans(), f64=st.booleans())
@example(n=2, c=3, hg=(9, 4, 1, 1), wg=(6, 3, 1, 1), ceil=False, ties=False, f64=True)    # sums rounded apart
def test_max_pool_equals_numpy(harness, n, c, hg, wg, ceil, ties, f64):
    (h, kh, sh, ph), (w, kw, sw, pw) = hg, wg
    dtype = np.float64 if f64 else np.float32
    rng = np.random.default_rng(n + 3 * h + 7 * w + kh)
    x = rng.integers(-2, 3, (n, c, h, w)).astype(dtype) if ties else rng.standard_normal((n, c, h, w)).astype(dtype)
    with K.kernels(False):                                   # the NumPy reference
        y_ref, cache = PL.max_pool2d_forward(x, (kh, kw), (sh, sw), (ph, pw), ceil)
        dy = rng.standard_normal(y_ref.shape).astype(dtype)
        dx_ref = PL.max_pool2d_backward(dy, cache)
    geom = cache[3][:8]
    y = np.full(y_ref.shape, np.nan, dtype)
    arg = np.full(y_ref.shape, -1, np.int32)
    harness("max_pool", dtype, [x, y, arg], x.shape, geom)
    np.testing.assert_array_equal(y, y_ref)
    dx = np.full(x.shape, np.nan, dtype)
    harness("max_pool_backward", dtype, [dy, arg, dx], x.shape, geom)
    # Overlapping windows add several δ into one cell: NumPy adds them offset by offset, the
    # kernels window by window, so the sums may round differently from NumPy's — never from the CPU
    # kernel's. A sum of m terms in another order differs by at most (m − 1)·ε·Σ|terms|; m is at most
    # the windows that overlap one cell (a fixed 1e-15 failed on a 4×3 window at stride 1: 1.3e-15).
    overlap = -(-kh // sh) * -(-kw // sw)
    bound = 2 * max(overlap - 1, 1) * np.finfo(dtype).eps * max(float(np.abs(dy).max()), 1.0) * overlap
    np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=bound)
    if K.available():                                        # the compiled CPU kernel: the same bits
        with K.kernels(True):
            y_k, arg_k = K.max_pool(x, geom)
            dx_k = K.max_pool_backward(dy, arg_k, x.shape)
        np.testing.assert_array_equal(arg, arg_k)
        np.testing.assert_array_equal(dx, dx_k)


@pytest.mark.skipif(not K.available(), reason="numba is not installed")
def test_max_pool_nan_and_inf_match_the_cpu_kernel(harness):
    """NaN wins and the gradient goes to the window's last NaN; all −inf windows pick their first cell."""
    x = np.array([[[[1.0, np.nan, 3.0, -np.inf], [np.nan, 2.0, -np.inf, -np.inf],
                    [0.5, 0.5, np.inf, 1.0], [0.5, -1.0, 2.0, np.inf]]]], np.float32)
    geom = (3, 3, 1, 1, 1, 1, 4, 4)
    y = np.empty((1, 1, 4, 4), np.float32)
    arg = np.empty((1, 1, 4, 4), np.int32)
    harness("max_pool", np.float32, [x, y, arg], x.shape, geom)
    with K.kernels(True):
        y_k, arg_k = K.max_pool(x, geom)
        dy = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
        dx_k = K.max_pool_backward(dy, arg_k, x.shape)
    np.testing.assert_array_equal(y, y_k)
    np.testing.assert_array_equal(arg, arg_k)
    dx = np.empty_like(x)
    harness("max_pool_backward", np.float32, [dy, arg, dx], x.shape, geom)
    np.testing.assert_array_equal(dx, dx_k)


def test_kernels_serve_only_cupy_float_arrays():
    assert not G.enabled(np.zeros(3, np.float32))            # NumPy arrays go to the CPU paths
    with G.kernels(False):
        assert not G.enabled()
    with G.kernels(True):
        assert G.enabled()                                   # (no arrays: just the switch)


def test_a_kernel_compile_failure_falls_back_with_a_warning(monkeypatch):
    """Should the device's compiler refuse the source, nabi says so once and uses the CuPy array code."""
    import sys
    import types

    class RawModule:
        def __init__(self, code, options=()):
            raise RuntimeError("nvrtc: error: pretend")

    fake = types.ModuleType("cupy")
    fake.RawModule = RawModule
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(G, "_modules", {})
    FakeArray = type("ndarray", (), {"__module__": "cupy._core.core", "dtype": np.dtype(np.float32)})
    with G.kernels(True):
        with pytest.warns(RuntimeWarning, match="did not compile.*pretend"):
            assert not G.enabled(FakeArray())
        assert not G.enabled(FakeArray())                    # switched off: no second try, no second warning


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), f=st.integers(1, 4), p=st.integers(1, 30), bias=st.booleans(), relu=st.booleans(),
       f64=st.booleans())
def test_gemm_layout_moves_equal_the_cpu_kernels(harness, n, f, p, bias, relu, f64):
    """Bias + fused ReLU into (N, F, P), and δ (masked by a fused ReLU's output) into (F, N·P)."""
    dtype = np.float64 if f64 else np.float32
    rng = np.random.default_rng(n + 5 * f + 11 * p)
    ymat = rng.standard_normal((f, n * p)).astype(dtype)
    ymat.flat[0] = np.nan
    b = rng.standard_normal(f).astype(dtype)
    with K.kernels(False):
        want = D.REFERENCE.from_gemm(ymat.copy(), b if bias else None, n, relu).reshape(n, f, p)
    y = np.full((n, f, p), -7.0, dtype)
    harness("from_gemm", dtype, [ymat, b, y], (), (n, f, p, int(bias) | (2 if relu else 0)))
    np.testing.assert_array_equal(y, want)                     # NaN stays NaN through the ReLU
    dy = rng.standard_normal((n, f, p)).astype(dtype)
    dmat = np.full((f, n * p), -7.0, dtype)
    harness("to_gemm", dtype, [dy, y, dmat], (), (n, f, p, int(relu)))
    want = np.where(y > 0, dy, 0) if relu else dy
    np.testing.assert_array_equal(dmat, want.transpose(1, 0, 2).reshape(f, n * p))
    if K.available():
        with K.kernels(True):
            np.testing.assert_array_equal(dmat, K.to_gemm(dy, y if relu else None)[0])


def _nvrtc():
    """NVRTC, CUDA's runtime compiler (the one CuPy's ``RawModule`` calls), from NVIDIA's
    ``nvidia-cuda-nvrtc-cu12`` wheel: it compiles without a GPU or a driver."""
    try:
        import nvidia.cuda_nvrtc as pkg
    except ImportError:
        return None
    for folder in pkg.__path__:
        for lib in sorted((Path(folder) / "lib").glob("libnvrtc.so*")):
            if ".alt." not in lib.name and "builtins" not in lib.name:
                return ctypes.CDLL(str(lib))
    return None


def _nvrtc_compile(lib, source, options):
    """Compile source → (cubin bytes or None, log); ``lib`` is libnvrtc through ctypes."""
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    prog = ctypes.c_void_p()

    def check(code, what):
        assert code == 0, f"{what}: {lib.nvrtcGetErrorString(code).decode()}"
    check(lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"nabi_kernels.cu", 0, None, None), "create")
    try:
        opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        status = lib.nvrtcCompileProgram(prog, len(options), opts)
        size = ctypes.c_size_t()
        check(lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "log size")
        log = ctypes.create_string_buffer(size.value)
        check(lib.nvrtcGetProgramLog(prog, log), "log")
        if status != 0:
            return None, log.value.decode()
        check(lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "cubin size")
        cubin = ctypes.create_string_buffer(size.value)
        check(lib.nvrtcGetCUBIN(prog, cubin), "cubin")
        return cubin.raw, log.value.decode()
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


@pytest.mark.parametrize("arch", ["sm_90", "sm_80", "sm_75"])       # H100/H200, A100, T4
@pytest.mark.parametrize("dtype", list(G.C_TYPES))
def test_the_cuda_source_compiles_with_nvrtc_to_device_code(arch, dtype):
    """The very text CuPy compiles on the device (same ``#define T``, same options), compiled here by
    NVRTC all the way to machine code (cubin: ptxas included) with no warning, every kernel present."""
    lib = _nvrtc()
    if lib is None:
        pytest.skip("NVRTC (the nvidia-cuda-nvrtc-cu12 wheel) is not installed")
    source = G.module_source(dtype)
    cubin, log = _nvrtc_compile(lib, source, list(G.COMPILE_OPTIONS) + [f"--gpu-architecture={arch}"])
    assert cubin is not None, log
    assert log.strip() == "", log
    for name in G.KERNELS:                   # extern "C": the symbol is the plain name
        assert name.encode() + b"\0" in cubin, name


def test_nvrtc_reports_a_broken_source():
    """The check above can fail: a kernel with a type error does not compile."""
    lib = _nvrtc()
    if lib is None:
        pytest.skip("NVRTC (the nvidia-cuda-nvrtc-cu12 wheel) is not installed")
    broken = G.module_source(np.float32).replace("T s = (T)0;", "T s = (T)0; s += undeclared_name;", 1)
    cubin, log = _nvrtc_compile(lib, broken, list(G.COMPILE_OPTIONS) + ["--gpu-architecture=sm_90"])
    assert cubin is None and "undeclared_name" in log
