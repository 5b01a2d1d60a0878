"""CuPy, emulated on NumPy and the machine's C++ compiler, so nabi's GPU code paths run on a CPU.

CI machines and most development machines have no GPU, so the code nabi runs only for CuPy
arrays (the ``xp is not np`` branches, the raw CUDA kernels and their launchers, the Dropout
generator on the device, the "nothing crosses host↔device" guarantee) would otherwise never run
in a test. ``install(monkeypatch)`` puts this module in CuPy's place for one test:

* A device array is ``ndarray``, a NumPy subclass whose type says ``cupy``: ``get_array_module``
  answers "cupy" and the code takes its GPU branches.
* Like CuPy, it refuses host arrays: a NumPy array (not a scalar) given to a device operation,
  or to a ``cupy.*`` function other than the two copies ``asarray``/``array``, raises TypeError.
  Code that builds a host array for a device input fails here as it would on the GPU.
* ``asarray``/``array`` of a host array copy it (host→device), ``asnumpy``/``ndarray.get`` copy
  back, ``ndarray.set`` copies in: the same calls as CuPy's, so counting them counts transfers.
* ``RawModule`` compiles the CUDA source with g++ behind a shim that runs the launch grid as two
  loops (blocks × threads; every nabi kernel writes only its own outputs, so that is faithful),
  and checks each launch as a real launch does not: the argument count, device arrays for the
  pointers with the kernel's element type and C order, ``numpy.int32`` for the ints.
* Reductions give 0-d device arrays, as CuPy's do.

Not emulated: functions CuPy lacks or spells differently from NumPy (``tests/test_gpu.py`` on a
device is the check for those), streams, the memory pool, speed.
"""
from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

from nabi.functional import gpu_kernels as G

__version__ = "emulated"
CXX = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")

# The CUDA built-ins the kernels use, for a C++ compiler: blockIdx/threadIdx/blockDim/gridDim
# become globals that the generated launcher sets before it calls the kernel for each thread.
SHIM = """
struct Dim3 { unsigned int x, y, z; };
static Dim3 blockIdx, threadIdx, blockDim, gridDim;
#define __global__
"""


def harness_source(cuda_source: str) -> str:
    """The CUDA source (``T`` defined) plus a ``launch_<kernel>(grid, block, args...)`` C function
    for every kernel of ``G.KERNELS``, running the grid as loops."""
    out = [SHIM, cuda_source]
    for name, (pointers, ints) in G.KERNELS.items():
        params = [f"{t} {n}" for t, n in pointers] + [f"int {g}" for g in ints]
        names = [n for _, n in pointers] + list(ints)
        out.append(f'extern "C" void launch_{name}(int grid, int block, {", ".join(params)}) {{\n'
                   f"  gridDim.x = grid; blockDim.x = block;\n"
                   f"  for (int blk_ = 0; blk_ < grid; ++blk_) for (int thr_ = 0; thr_ < block; ++thr_) {{\n"
                   f"    blockIdx.x = blk_; threadIdx.x = thr_; {name}({', '.join(names)}); }}\n}}")
    return "\n".join(out)


_build_dir = None
_libraries = {}


def compile_harness(cuda_source: str) -> ctypes.CDLL:
    """Build (once per source text) the harness as a shared library and load it."""
    global _build_dir
    if CXX is None:
        raise RuntimeError("no C++ compiler (g++, c++ or clang++) to build the CUDA kernels for the CPU")
    key = hashlib.sha1(cuda_source.encode()).hexdigest()[:16]
    if key not in _libraries:
        if _build_dir is None:
            _build_dir = tempfile.TemporaryDirectory(prefix="nabi-cuda-emulator-")
        src, lib = Path(_build_dir.name) / f"{key}.cpp", Path(_build_dir.name) / f"{key}.so"
        src.write_text(harness_source(cuda_source))
        r = subprocess.run([CXX, "-O1", "-shared", "-fPIC", "-std=c++11", "-o", str(lib), str(src)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"the CUDA source did not compile for the CPU:\n{r.stderr}")
        _libraries[key] = ctypes.CDLL(str(lib))
    return _libraries[key]


# ----------------------------------------------------------------------------- device arrays

def _is_host_array(a) -> bool:
    return isinstance(a, np.ndarray) and not isinstance(a, ndarray) and a.ndim > 0


def _refuse_host(tree, what):
    """TypeError when a host array (not a scalar) hides in args/kwargs, as CuPy raises."""
    if _is_host_array(tree):
        raise TypeError(f"emulated CuPy: {what} got a NumPy array {tree.shape} {tree.dtype} among device "
                        "arrays (CuPy refuses host arrays: copy with cupy.asarray first)")
    if isinstance(tree, (list, tuple)):
        for t in tree:
            _refuse_host(t, what)
    elif isinstance(tree, dict):
        for t in tree.values():
            _refuse_host(t, what)


def _host(tree):
    """Device arrays → plain NumPy views of the same memory (what NumPy computes on)."""
    if isinstance(tree, ndarray):
        return tree.view(np.ndarray)
    if isinstance(tree, list):
        return [_host(t) for t in tree]
    if isinstance(tree, tuple):
        return tuple(_host(t) for t in tree)
    if isinstance(tree, dict):
        return {k: _host(v) for k, v in tree.items()}
    return tree


def _device(result):
    """NumPy results → device arrays (views, no copy); scalars → 0-d device arrays, as CuPy gives."""
    if isinstance(result, np.ndarray):
        return result if isinstance(result, ndarray) else result.view(ndarray)
    if isinstance(result, np.generic):
        return np.asarray(result).view(ndarray)
    if isinstance(result, tuple):
        return tuple(_device(r) for r in result)
    if isinstance(result, list):
        return [_device(r) for r in result]
    return result


class ndarray(np.ndarray):
    """A device array: NumPy memory, CuPy's type, CuPy's refusal of host arrays."""
    __module__ = "cupy._core.core"

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        what = f"{ufunc.__name__}.{method}" if method != "__call__" else ufunc.__name__
        _refuse_host(inputs, what)
        if out is not None:
            _refuse_host(out, what)
            kwargs["out"] = _host(out)
        result = getattr(ufunc, method)(*_host(inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _device(result)

    def __array_function__(self, func, types_, args, kwargs):
        _refuse_host((args, kwargs), func.__name__)
        return _device(func(*_host(args), **_host(kwargs)))

    def get(self):
        """Device → host copy (``cupy.ndarray.get``)."""
        return np.array(self.view(np.ndarray))

    def set(self, arr):
        """Host → device copy into this array (``cupy.ndarray.set``)."""
        self.view(np.ndarray)[...] = arr


class _Function:
    """A ``cupy.*`` function or ufunc: device arrays in (host arrays refused), device arrays out."""

    def __init__(self, f, name):
        self._f, self._name = f, name

    def __call__(self, *args, **kwargs):
        _refuse_host((args, kwargs), f"cupy.{self._name}")
        return _device(self._f(*_host(args), **_host(kwargs)))

    def __getattr__(self, attr):                     # a ufunc's reduce / accumulate / at / outer
        inner = getattr(self._f, attr)
        return _Function(inner, f"{self._name}.{attr}") if callable(inner) else inner


def asarray(a, dtype=None, order=None):
    """Host → device (a copy), or the same device array (a view when no conversion is needed)."""
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    return np.array(a, dtype=dtype, order=order or "K").view(ndarray)


def array(a, dtype=None, copy=True, order="K", ndmin=0):
    """A new device array from host or device data (always a copy, as with ``copy=True``)."""
    return np.array(_host(a), dtype=dtype, copy=True, order=order, ndmin=ndmin).view(ndarray)


def asnumpy(a):
    """Device → host copy (host arrays pass through, as in CuPy)."""
    return a.get() if isinstance(a, ndarray) else np.asarray(a)


def get_array_module(*arrays):
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in arrays) else np


def __getattr__(name):
    """Everything else is NumPy's, behind CuPy's rules (dtypes, constants and types pass as they are)."""
    obj = getattr(np, name)
    if isinstance(obj, type) or not callable(obj):
        return obj
    return _Function(obj, name)


class _Generator:
    """``cupy.random.Generator``: NumPy's generator, results on the device."""

    def __init__(self, seed=None):
        self._g = np.random.default_rng(seed)

    def __getattr__(self, name):
        return _Function(getattr(self._g, name), f"random.Generator.{name}")


random = types.SimpleNamespace(default_rng=_Generator)
lib = types.SimpleNamespace(stride_tricks=types.SimpleNamespace(
    as_strided=_Function(np.lib.stride_tricks.as_strided, "lib.stride_tricks.as_strided")))
linalg = types.SimpleNamespace(norm=_Function(np.linalg.norm, "linalg.norm"))
cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))


# ----------------------------------------------------------------------------- raw kernels

class RawModule:
    """``cupy.RawModule``: the CUDA source built for the CPU (see ``compile_harness``)."""

    def __init__(self, code, options=()):
        first = code.split("\n", 1)[0]
        ctype = first[len("#define T "):].strip() if first.startswith("#define T ") else None
        dtypes = {c: d for d, c in G.C_TYPES.items()}
        if ctype not in dtypes:
            raise ValueError(f"emulated CuPy: the source must start with '#define T float|double', got {first!r}")
        self.dtype = dtypes[ctype]
        self._lib = compile_harness(code)
        self.launches = []

    def get_function(self, name):
        if name not in G.KERNELS:
            raise KeyError(f"emulated CuPy: no kernel named {name!r} in the module")
        return _Kernel(self, name)


class _Kernel:
    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, grid, block, args):
        pointers, ints = G.KERNELS[self.name]
        if len(args) != len(pointers) + len(ints):
            raise TypeError(f"{self.name}: {len(pointers) + len(ints)} arguments expected, got {len(args)}")
        c_args = []
        for (ctype, pname), a in zip(pointers, args):
            want = np.dtype(np.int32) if ctype.replace("const ", "").startswith("int") else self.module.dtype
            if not isinstance(a, ndarray):
                raise TypeError(f"{self.name}: {pname} must be a device array, got {type(a).__name__}")
            if a.dtype != want or not a.flags.c_contiguous:
                raise TypeError(f"{self.name}: {pname} must be a C-contiguous {want} array, got {a.dtype} "
                                f"(C-contiguous: {a.flags.c_contiguous})")
            c_args.append(ctypes.c_void_p(a.ctypes.data))
        for g, a in zip(ints, args[len(pointers):]):
            if type(a) is not np.int32:
                raise TypeError(f"{self.name}: {g} must be numpy.int32, got {type(a).__name__}")
            c_args.append(ctypes.c_int(int(a)))
        (blocks,), (threads,) = tuple(grid), tuple(block)
        self.module.launches.append(self.name)
        getattr(self.module._lib, f"launch_{self.name}")(ctypes.c_int(blocks), ctypes.c_int(threads), *c_args)


def install(monkeypatch):
    """Put this module in CuPy's place for one test (undone with ``monkeypatch``): ``import cupy``
    and nabi's backend find it, and the CUDA kernels are built afresh for it."""
    from nabi import backend
    if CXX is None:
        import pytest
        pytest.skip("no C++ compiler to build the CUDA kernels for the emulated GPU")
    me = sys.modules[__name__]
    monkeypatch.setitem(sys.modules, "cupy", me)
    monkeypatch.setattr(backend, "_cupy", me)
    monkeypatch.setattr(G, "_modules", {})
    return me
