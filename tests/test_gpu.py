"""GPU checks, each run twice: on CuPy emulated on the CPU (``tests/cupy_emulator.py``: NumPy
memory, CuPy's refusal of host arrays, the CUDA kernels built with g++) in every test run, and on
a real CUDA device where there is one (``pytest -m gpu``).

No host↔device copy of an array inside a training step: every conversion CuPy offers
between host and device is counted while steps run; only the loss value and the count
of correct predictions (two scalars) may cross. Mixed precision trains on the GPU. The
CUDA kernels equal the CuPy array code they replace.
"""
import numpy as np
import pytest

from nabi import backend, layers as L, models
from nabi import optim
from nabi.data import ArrayDataset, DataLoader


@pytest.fixture(params=["emulated", pytest.param("device", marks=pytest.mark.gpu)])
def cupy(request, monkeypatch):
    if request.param == "emulated":
        import cupy_emulator
        return cupy_emulator.install(monkeypatch)
    if not backend.gpu_available():
        pytest.skip("CuPy with a CUDA device is not available here")
    import cupy
    return cupy


class _Transfers:
    """Count calls of CuPy's host↔device conversions (scalars excluded) while active."""

    def __init__(self, cupy, monkeypatch):
        self.calls = []
        nd = cupy.ndarray
        for owner, name in ((cupy, "asarray"), (cupy, "array"), (cupy, "asnumpy"), (nd, "get"), (nd, "set")):
            orig = getattr(owner, name)

            def wrapped(*args, _orig=orig, _name=name, **kwargs):
                first = args[0] if args else None
                size = getattr(first, "size", None)
                host = isinstance(first, np.ndarray) and not isinstance(first, nd)
                if host or _name in ("asnumpy", "get", "set"):
                    if size is None or size > 1:
                        self.calls.append(_name)
                return _orig(*args, **kwargs)
            monkeypatch.setattr(owner, name, wrapped)


def _one_step(model, opt, loss_fn, x, y):
    out = model(x)
    loss = loss_fn(out, y)
    model.zero_grad()
    model.backward(loss_fn.backward())
    opt.step()
    return loss


@pytest.mark.parametrize("name,kwargs", [("cifar_cnn", {}),
                                         pytest.param("resnet20", {}, marks=pytest.mark.slow),   # _gem covers it
                                         ("resnet20", {"pool": "gem"})],
                         ids=["cifar_cnn", "resnet20", "resnet20_gem"])
def test_no_array_crosses_host_device_inside_a_training_step(cupy, monkeypatch, name, kwargs):
    model = models.get(name, num_classes=10, **kwargs).to("gpu")
    model.train()
    opt = optim.SGD(model.named_parameters(), lr=0.01, momentum=0.9)
    loss_fn = L.CrossEntropyLoss()
    x = cupy.asarray(np.random.default_rng(0).standard_normal((8, 3, 32, 32), dtype=np.float32))
    y = cupy.asarray(np.arange(8) % 10)
    _one_step(model, opt, loss_fn, x, y)                 # first step: allocations, kernel compilation
    counter = _Transfers(cupy, monkeypatch)
    for _ in range(3):
        loss = _one_step(model, opt, loss_fn, x, y)
    assert np.isfinite(loss)
    assert counter.calls == [], counter.calls


def test_trainer_with_gpu_loader_moves_only_batches(cupy, monkeypatch):
    """Through the Trainer: batches go host→device once each (the loader's copy); nothing comes back
    but scalars."""
    from nabi.training.trainer import Trainer
    rng = np.random.default_rng(1)
    ds = ArrayDataset(rng.standard_normal((32, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 32))
    loader = DataLoader(ds, batch_size=8, device="gpu")
    model = models.get("cifar_cnn", num_classes=10).to("gpu")
    t = Trainer(model, optim.SGD(model.named_parameters(), lr=0.01), loader, epochs=1, progress=False,
                log=lambda *a: None)
    counter = _Transfers(cupy, monkeypatch)
    t.fit()
    assert set(counter.calls) <= {"asarray", "array"}           # host→device: the batches
    assert len(counter.calls) <= 2 * len(loader)                  # x and y of each batch, no more


@pytest.mark.slow              # 18 s on the emulated CuPy; on a GPU `-m gpu` runs it
def test_mixed_precision_trains_on_the_gpu(cupy):
    from nabi.training.amp import MixedPrecision
    model = models.get("cifar_cnn", num_classes=10).to("gpu")
    opt = optim.SGD(model.named_parameters(), lr=0.05, momentum=0.9)
    amp = MixedPrecision(model, opt)
    assert all(p.data.dtype == np.float16 and isinstance(p.data, cupy.ndarray) for p in model.parameters())
    rng = np.random.default_rng(2)
    x = cupy.asarray(rng.standard_normal((16, 3, 32, 32)).astype(np.float32))
    y = cupy.asarray(rng.integers(0, 10, 16))
    loss_fn = L.CrossEntropyLoss()
    first = None
    for _ in range(30):
        out = model(amp.cast_input(x)).astype(cupy.float32)
        loss = loss_fn(out, y)
        first = loss if first is None else first
        model.zero_grad()
        amp.backward(loss_fn.backward())
        amp.step()
    assert loss < 0.5 * first


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geom", [(3, 2, 11, 4, 0, False, 19), (4, 5, 5, 1, 2, False, 13), (2, 3, 3, 2, 1, True, 9)])
def test_cuda_kernels_equal_the_cupy_array_code(cupy, dtype, geom):
    """The raw CUDA kernels (one launch each) against the CuPy array code they replace, on the device:
    convolution (im2col, col2im, the GEMM-layout moves with bias and a fused ReLU) and max pooling
    (forward and backward, ties and a NaN included)."""
    from nabi import functional as F
    from nabi.functional import conv_fast as CF, gpu_kernels as G
    n, c, k, s, p, ceil, hw = geom
    pk, ps, pp = min(k, 3), max(1, s), min(p, min(k, 3) // 2)
    rng = np.random.default_rng(hw)
    x = rng.integers(-3, 4, (n, c, hw, hw)).astype(dtype)            # ties in the pools
    x[-1, -1, 1, 1] = np.nan                                          # one NaN, in the last plane
    w = rng.standard_normal((5, c, k, k)).astype(dtype)
    xg, wg = cupy.asarray(x), cupy.asarray(w)

    bg = cupy.asarray(rng.standard_normal(5).astype(dtype))

    def run():
        r = np.random.default_rng(7)
        y, cache = CF.conv2d_forward(xg, wg, bg, s, p, relu=True)         # bias and a fused ReLU
        dx, dw, db = CF.conv2d_backward(cupy.asarray(r.standard_normal(y.shape).astype(dtype)), cache, relu_y=y)
        py, pcache = F.max_pool2d_forward(xg, pk, ps, pp, ceil)
        pdx = F.max_pool2d_backward(cupy.asarray(r.standard_normal(py.shape).astype(dtype)), pcache)
        return [cupy.asnumpy(a) for a in (y, dx, dw, db, py, pdx)]

    with G.kernels(True):
        got = run()
    with G.kernels(False):
        want = run()
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5)
    for name, a, b in zip(["conv y", "conv dx", "conv dw", "conv db", "pool y", "pool dx"], got, want):
        if name == "pool dx":      # a NaN window: the array code sends no gradient, the kernel sends it (as torch)
            a, b = a.reshape(-1, hw, hw)[:-1], b.reshape(-1, hw, hw)[:-1]
        np.testing.assert_allclose(a, b, err_msg=name, **tol)


# One of each kind of layer and container in the zoo, at small inputs and widths (dropout off: the
# device draws its masks from its own generator). AlexNet and VGG add only layers that these, and
# the xp-parametrised layer tests, already run (LRN, dropout, large linear layers).
def _bottleneck_resnet(num_classes):
    from nabi.models.resnet import bottleneck, resnet
    return resnet(bottleneck, [1, 1, 1, 1], num_classes=num_classes, widths=(8, 8, 16, 16))


ZOO = [("lenet5", {}, (2, 1, 32, 32)), ("cifar_cnn", {}, (2, 3, 32, 32)), ("resnet20", {}, (2, 3, 32, 32)),
       ("resnet20", dict(pool="gem"), (2, 3, 32, 32)),
       (_bottleneck_resnet, {}, (2, 3, 64, 64)), ("se_resnet20", {}, (2, 3, 32, 32)),
       ("densenet_cifar", dict(depth=16, growth_rate=6), (2, 3, 32, 32)),
       ("googlenet", dict(aux_logits=True, dropout=0.0, aux_dropout=0.0), (2, 3, 64, 64))]


@pytest.mark.parametrize("name,kwargs,shape", ZOO, ids=[(z[0] if isinstance(z[0], str) else "resnet_bottleneck")
                                                          + ("_gem" if z[1].get("pool") == "gem" else "")
                                                          for z in ZOO])
def test_zoo_models_train_on_the_gpu_as_on_the_cpu(cupy, name, kwargs, shape):
    """Two SGD-with-momentum steps (float64) on the device give the CPU's losses and weights, and an
    eval-mode forward the CPU's outputs: every layer's GPU branch computes what its CPU branch does."""
    from nabi.functional import cpu_kernels as K
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape)
    y = rng.integers(0, 10, shape[0])
    runs = []
    for device in ("cpu", "gpu"):
        backend.seed(0)                             # the same initial weights for both
        with backend.default_dtype(np.float64):
            model = models.get(name, num_classes=10, **kwargs) if isinstance(name, str) else name(10)
        model.to(device).train()
        xd, yd = (x, y) if device == "cpu" else (cupy.asarray(x), cupy.asarray(y))
        opt = optim.SGD(model.named_parameters(), lr=0.01, momentum=0.9)
        loss_fn = L.CrossEntropyLoss()
        losses = []
        with K.kernels(False):                      # the NumPy reference on the CPU
            for _ in range(2):
                loss = loss_fn(model(xd), yd)
                aux = getattr(model, "aux_outputs", None) or ()       # GoogLeNet's two auxiliary heads
                aux_fns = [L.CrossEntropyLoss() for _ in aux]
                loss = loss + sum(0.3 * f(a, yd) for f, a in zip(aux_fns, aux))
                model.zero_grad()
                if aux:
                    model.backward(loss_fn.backward(), daux=tuple(f.backward(0.3) for f in aux_fns))
                else:
                    model.backward(loss_fn.backward())
                opt.step()
                losses.append(float(loss))
            model.eval()
            out = backend.to_numpy(model(xd))
        runs.append((losses, out, model.state_dict()))
    (l_cpu, o_cpu, s_cpu), (l_gpu, o_gpu, s_gpu) = runs
    np.testing.assert_allclose(l_gpu, l_cpu, rtol=1e-10)
    np.testing.assert_allclose(o_gpu, o_cpu, rtol=1e-8, atol=1e-10)
    assert list(s_gpu) == list(s_cpu)
    for k in s_cpu:
        assert isinstance(s_gpu[k], np.ndarray) and not isinstance(s_gpu[k], cupy.ndarray), k
        # sums that cancel to ~0 differ in the last bits; the CPU splits its products into blocks over its threads
        # (functional.blas.matmul), which sums in another order than one BLAS call: measured up to 2e-12 here
        scale = max(1.0, float(np.abs(s_cpu[k]).max(initial=0)))
        np.testing.assert_allclose(s_gpu[k], s_cpu[k], rtol=1e-8, atol=1e-11 * scale, err_msg=k)
