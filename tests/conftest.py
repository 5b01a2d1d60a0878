import sys
from pathlib import Path

import numpy as np
import pytest

# The repository root, so that tests can share benchmarks/torch_models.py (the PyTorch twins).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nabi import backend


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
