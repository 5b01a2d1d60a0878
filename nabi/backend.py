"""The one place that knows NumPy from CuPy.

Layer math asks ``xp = get_array_module(x)`` and uses ``xp`` wherever it means
"the array module", so one code path serves the CPU (NumPy) and an NVIDIA GPU
(CuPy). This module also holds the default floating dtype and the seeded
random generators every initialiser, dropout mask and data shuffle draws from.
"""
from __future__ import annotations

import os

import numpy as np

try:  # CuPy is optional: ``pip install nabi[gpu]``.
    import cupy as _cupy
except Exception:  # pragma: no cover - depends on the machine
    _cupy = None

DEVICES = ("cpu", "gpu")
_default_dtype = np.dtype(np.float32)


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    if _cupy is None:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # pragma: no cover - driver problems
        return False


def get_array_module(*arrays):
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def array_module(device: str):
    """The array module for a device name, ``'cpu'`` or ``'gpu'``."""
    device = check_device(device)
    if device == "gpu":
        if not gpu_available():
            raise RuntimeError("device 'gpu' was asked for, but CuPy is not installed or sees no CUDA device "
                               "(install nabi[gpu] on a machine with an NVIDIA GPU, or use device='cpu')")
        return _cupy
    return np


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    return device


def device_of(x) -> str:
    """``'gpu'`` for a CuPy array, ``'cpu'`` otherwise."""
    return "gpu" if get_array_module(x) is not np else "cpu"


def to_device(x, device: str):
    """Copy an array to ``device`` (no copy when it is already there)."""
    xp = array_module(device)
    if xp is np:
        return to_numpy(x)
    return _cupy.asarray(x)


def to_numpy(x) -> np.ndarray:
    """A NumPy array on the host, whatever ``x`` is."""
    if _cupy is not None and isinstance(x, _cupy.ndarray):
        return _cupy.asnumpy(x)
    return np.asarray(x)


def get_default_dtype() -> np.dtype:
    """The floating dtype parameters are created in (float32 unless changed)."""
    return _default_dtype


def set_default_dtype(dtype) -> None:
    """Set the floating dtype for new parameters: float32, or float64 for gradient checks."""
    global _default_dtype
    dtype = np.dtype(dtype)
    if dtype not in (np.float16, np.float32, np.float64):
        raise ValueError(f"default dtype must be float16, float32 or float64, got {dtype}")
    _default_dtype = dtype


class default_dtype:
    """Context manager: ``with default_dtype(np.float64): model = ...``."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)

    def __enter__(self):
        self._old = get_default_dtype()
        set_default_dtype(self.dtype)
        return self.dtype

    def __exit__(self, *exc):
        set_default_dtype(self._old)
        return False


_global_rng = np.random.default_rng()


def seed(value: int) -> None:
    """Seed nabi's global generator (initialisers and dropout fall back to it)."""
    global _global_rng
    _global_rng = np.random.default_rng(value)


def get_rng() -> np.random.Generator:
    """The global generator, a NumPy ``Generator`` (weights are drawn on the host)."""
    return _global_rng


def new_rng(seed_value=None) -> np.random.Generator:
    """A fresh generator: seeded from ``seed_value``, or from the global generator."""
    if seed_value is None:
        seed_value = int(_global_rng.integers(0, 2**63 - 1))
    return np.random.default_rng(seed_value)


def rng_state(gen: np.random.Generator) -> dict:
    """A JSON-able snapshot of a generator's state (for exact resume)."""
    return gen.bit_generator.state


def set_rng_state(gen: np.random.Generator, state: dict) -> None:
    gen.bit_generator.state = state


_thread_limits = None
_cpu_threads = None


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def cpu_threads() -> int:
    """Threads nabi splits its CPU matrix products over: what ``set_num_threads`` set, else the usable cores."""
    return max(1, min(_cpu_threads or usable_cores(), usable_cores()))


def _set_numba_threads(n: int) -> None:
    """Threads nabi's compiled CPU kernels split their loops over (at most numba's NUMBA_NUM_THREADS)."""
    try:
        import numba
    except Exception:  # pragma: no cover - numba is optional
        return
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))


_freed_memory_kept = None
ALLOCATOR_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_",
                 "GLIBC_TUNABLES")


def freed_memory_kept() -> bool:
    """Whether ``keep_freed_memory`` has set the allocator in this process."""
    return bool(_freed_memory_kept)


def keep_freed_memory() -> bool:
    """Ask the C library's allocator (glibc's malloc, Linux) to keep the memory that a training step frees for
    the next step's arrays instead of handing it back to the system after each step: ``mallopt``'s trim
    threshold at 1 GiB, a top pad of 256 MB, and no block of its own mapping (``M_MMAP_MAX`` 0). Every step
    allocates and frees the same activation-sized arrays; given back and taken again, each page of them is faulted
    in anew (ResNet-18 training steps, alternated processes: 160×160 batch 16 738 → 678 ms, 64×64 batch 32
    384 → 302 ms; docs/speed.md). Blocks above malloc's mapping threshold (128 KB, raised only by earlier frees and
    frozen by the first setting; never above 32 MB) would otherwise still get a mapping of their own, unmapped
    when freed: a step's largest arrays (im2col columns of 59 MB at ResNet-18 160×160 batch 16) were faulted in
    afresh every step, 2,100 page faults and up to 0.4–0.6 s of system time a step on a virtual machine. Called
    once by the trainer; it changes how much memory the process keeps between steps (up to its peak), not the
    peak itself.

    Left alone when ``NABI_MALLOC=system`` is set, when the user set glibc's own ``MALLOC_…_``/``GLIBC_TUNABLES``
    variables, or off Linux/glibc. Returns whether it was set (the answer of the first call is kept)."""
    global _freed_memory_kept
    if _freed_memory_kept is not None:
        return _freed_memory_kept
    _freed_memory_kept = False
    if os.environ.get("NABI_MALLOC", "").strip().lower() == "system" or any(os.environ.get(v) for v in ALLOCATOR_ENV):
        return False
    import sys
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version                                   # glibc only (musl has no such function)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
    _freed_memory_kept = (mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1 and mallopt(M_TOP_PAD, 256 << 20) == 1
                          and mallopt(M_MMAP_MAX, 0) == 1)
    return _freed_memory_kept


def set_num_threads(n: int, required: bool = True) -> bool:
    """Use ``n`` CPU threads: nabi's compiled kernels, the matrix products nabi splits over its own threads
    (``cpu_threads``, see ``functional.blas.matmul``) and NumPy's BLAS (through threadpoolctl).

    Returns True when both were limited. Without threadpoolctl the BLAS stays as it is: an
    ImportError with ``required``, else False.
    """
    global _thread_limits, _cpu_threads
    n = int(n)
    if n < 1:
        raise ValueError(f"threads must be at least 1, got {n}")
    _cpu_threads = n
    _set_numba_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError as e:  # pragma: no cover - threadpoolctl comes with nabi[tools]
        if required:
            raise ImportError("setting the thread count needs threadpoolctl (pip install threadpoolctl)") from e
        return False
    _thread_limits = threadpool_limits(limits=n)
    return True
