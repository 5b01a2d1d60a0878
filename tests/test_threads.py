"""One model shared by several threads (a web app serving predictions): eval-mode forwards
from 8 threads at once give exactly the serial predictions, bit for bit.

Eval-mode forwards compute from the input, the weights and the buffers only; each thread
has its own scratch buffers (``conv_fast.scratch``), the implementation choice is
stateless, and compiled kernels run concurrently only where numba's threading layer
allows it (``cpu_kernels._guarded``)."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from nabi import backend, models
from nabi.functional import cpu_kernels as K


def _paths():
    return [False, True] if K.available() else [False]


@pytest.mark.parametrize("kernels", _paths(), ids=lambda k: "numba" if k else "reference")
@pytest.mark.parametrize("name", ["resnet20", "cifar_cnn"])
def test_shared_model_predicts_the_same_in_8_threads(name, kernels):
    backend.seed(0)
    model = models.get(name, num_classes=10)
    rng = np.random.default_rng(1)
    model(rng.standard_normal((4, 3, 32, 32)).astype(np.float32))    # batch-norm statistics off 0 and 1
    model.eval()
    # batches of different sizes, so concurrent calls need buffers of different shapes
    batches = [rng.standard_normal((1 + i % 3, 3, 32, 32)).astype(np.float32) for i in range(16)]
    with K.kernels(kernels):
        serial = [model(x) for x in batches]
        with ThreadPoolExecutor(max_workers=8) as pool:
            parallel = list(pool.map(model, batches))
    for i, (a, b) in enumerate(zip(parallel, serial)):
        np.testing.assert_array_equal(a, b, err_msg=f"batch {i}")


def test_kernels_are_launched_through_the_thread_guard(monkeypatch):
    """Every parallel kernel goes through ``_guarded`` (direct calls where the threading layer is
    thread-safe, one at a time where it is not; its one-thread build for small arrays)."""
    if not K.available():
        pytest.skip("numba is not installed")
    import ast
    import inspect
    tree = ast.parse(inspect.getsource(K))
    parallel = [f.name for f in tree.body if isinstance(f, ast.FunctionDef)          # every kernel with a prange loop
                and any(isinstance(n, ast.Name) and n.id == "prange" for n in ast.walk(f))]
    assert {"_im2col", "_col2im", "_relu", "_bn_dx", "_adam", "_wino_input", "_direct_blocked",
            "_direct_weight_grad"} <= set(parallel)
    for name in parallel:
        assert hasattr(getattr(K, name), "kernel") and hasattr(getattr(K, name), "serial"), name
    monkeypatch.setattr(K, "PARALLEL_MIN_ELEMENTS", 0)           # the parallel build, whatever the size
    K.relu(np.ones(3, np.float32))
    assert K._threadsafe == (K.threading_layer() in ("omp", "tbb"))


@pytest.mark.parametrize("dtype", [np.float32, pytest.param(np.float64, marks=pytest.mark.slow)])   # float64: 30 s
def test_one_thread_and_parallel_builds_compute_the_same_bits(dtype, monkeypatch):
    """Small arrays run a kernel's one-thread build: a network's outputs and gradients are bit for bit those of
    the parallel build."""
    if not K.available():
        pytest.skip("numba is not installed")
    from nabi import layers as L

    def run():
        backend.seed(0)
        with backend.default_dtype(dtype):
            model = models.get("resnet20", num_classes=10)
        x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(dtype)
        loss = L.CrossEntropyLoss()
        out = loss(model(x), np.array([1, 2]))
        model.backward(loss.backward())
        return [out] + [p.grad.copy() for p in model.parameters()]
    with K.kernels(True):
        monkeypatch.setattr(K, "PARALLEL_MIN_ELEMENTS", 1 << 40)
        serial = run()
        monkeypatch.setattr(K, "PARALLEL_MIN_ELEMENTS", 0)
        parallel = run()
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)
