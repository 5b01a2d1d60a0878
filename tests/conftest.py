import os
import sys
from pathlib import Path

import numpy as np
import pytest

# The repository root, so that tests can share benchmarks/torch_models.py (the PyTorch twins).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nabi import backend


@pytest.fixture(autouse=True, scope="session")
def _private_algorithm_cache(tmp_path_factory):
    """The convolution-algorithm choices that ``nabi.functional.conv_algo`` measures go to a folder of this test
    run (children inherit it), never to the user's cache, so no test depends on what an earlier run measured."""
    old = os.environ.get("NABI_CACHE_DIR")
    os.environ["NABI_CACHE_DIR"] = str(tmp_path_factory.mktemp("nabi-cache"))
    yield
    if old is None:
        os.environ.pop("NABI_CACHE_DIR", None)
    else:
        os.environ["NABI_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def _restore_thread_counts():
    """A test that runs ``nabi --threads N …`` in this process changes its thread counts for good (numba's, and
    every BLAS loaded by then or later); put them back, so later tests (whose results depend on the summation
    order) see the process's own."""
    import numba
    from threadpoolctl import threadpool_info, threadpool_limits
    before = numba.get_num_threads()
    cpu_threads = backend._cpu_threads
    blas = sorted((i["filepath"], i["num_threads"]) for i in threadpool_info())
    yield
    backend._cpu_threads = cpu_threads
    if backend._thread_limits is not None:
        backend._thread_limits.restore_original_limits()
        backend._thread_limits = None
    if numba.get_num_threads() != before:
        numba.set_num_threads(before)
    now = threadpool_info()
    if sorted((i["filepath"], i["num_threads"]) for i in now) != blas:
        known = dict(blas)
        for info in now:
            want = known.get(info["filepath"], max(known.values(), default=before))
            if info["num_threads"] != want:
                threadpool_limits(limits={info["prefix"]: want})


def _cupy_or_skip():
    if not backend.gpu_available():
        pytest.skip("CuPy with a CUDA device is not available here")
    import cupy
    return cupy


@pytest.fixture(params=["numpy", "emulated_cupy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request, monkeypatch):
    """The array module under test: NumPy; CuPy emulated on the CPU (``tests/cupy_emulator.py``:
    the GPU code paths and CUDA kernels, run without a GPU); and CuPy where a GPU is present."""
    if request.param == "cupy":
        return _cupy_or_skip()
    if request.param == "emulated_cupy":
        import cupy_emulator
        return cupy_emulator.install(monkeypatch)
    return np


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def nabi_data_dir():
    """The folder named by $NABI_DATA_DIR (real photo data sets); tests that need it skip without it."""
    value = os.environ.get("NABI_DATA_DIR")
    if not value:
        pytest.skip("set NABI_DATA_DIR to a folder of real photo data sets to run this test")
    path = Path(value).expanduser()
    if not path.is_dir():
        pytest.skip(f"NABI_DATA_DIR={value} is not a folder")
    return path
