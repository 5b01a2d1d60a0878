"""Fused SGD (the update applied inside backward, plain SGD at batch 1):
same weights as the unfused optimiser step, within float tolerance."""
import numpy as np
import pytest

from nabi import backend, layers as L
from nabi import optim
from nabi.functional.blas import gemm_inplace, matmul_into
from nabi.training.trainer import enable_fused_sgd


def small_alexnet(rng):
    return L.Sequential(L.Conv2d(3, 6, 5, stride=2, rng=rng), L.ReLU(), L.MaxPool2d(3, 2, ceil_mode=True),
                        L.Conv2d(6, 8, 3, padding=1, rng=rng), L.ReLU(), L.Flatten(),
                        L.Linear(8 * 4 * 4, 32, rng=rng), L.ReLU(), L.Linear(32, 5, rng=rng))


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("batch", [1, 3])
def test_fused_sgd_equals_unfused(dtype, rtol, batch, xp):
    with backend.default_dtype(dtype):
        a = small_alexnet(np.random.default_rng(0))
        b = small_alexnet(np.random.default_rng(0))
    if xp is not np:
        a.to("gpu"), b.to("gpu")
    opt_a = optim.SGD(a.named_parameters(), lr=0.05)
    opt_b = optim.SGD(b.named_parameters(), lr=0.05)
    fused = enable_fused_sgd(b, opt_b)
    assert len(fused) == 4
    rng = np.random.default_rng(1)
    loss_fn = L.CrossEntropyLoss()
    for step in range(4):
        x = xp.asarray(rng.standard_normal((batch, 3, 19, 19)).astype(dtype))
        y = xp.asarray(rng.integers(0, 5, batch))
        la = loss_fn(a(x), y)
        a.zero_grad()
        a.backward(loss_fn.backward())
        opt_a.step()
        lb = loss_fn(b(x), y)
        b.zero_grad()
        b.backward(loss_fn.backward())
        opt_b.step()
        np.testing.assert_allclose(float(lb), float(la), rtol=rtol * 10)
    for (k, wa), wb in zip(a.state_dict().items(), b.state_dict().values()):
        np.testing.assert_allclose(wb, wa, rtol=rtol, atol=rtol * 1e-2, err_msg=k)
    assert all(m.weight.grad is None for m in fused)          # the gradient was never stored


def test_fused_sgd_refuses_momentum_and_clipping():
    net = small_alexnet(np.random.default_rng(0))
    with pytest.raises(ValueError, match="plain SGD"):
        enable_fused_sgd(net, optim.SGD(net.named_parameters(), lr=0.1, momentum=0.9))
    with pytest.raises(ValueError, match="plain SGD"):
        enable_fused_sgd(net, optim.Adam(net.named_parameters()))
    with pytest.raises(ValueError, match="clip"):
        enable_fused_sgd(net, optim.SGD(net.named_parameters(), lr=0.1), clip_norm=1.0)


@pytest.mark.parametrize("n", [1, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blas_helpers(n, dtype):
    rng = np.random.default_rng(2)
    c = rng.standard_normal((7, 11)).astype(dtype)
    a = rng.standard_normal((7, n)).astype(dtype)
    b = rng.standard_normal((n, 11)).astype(dtype)
    expect = c - 0.3 * (a @ b)
    base = c
    gemm_inplace(c, a, b, -0.3)
    assert c is base
    np.testing.assert_allclose(c, expect, rtol=1e-5 if dtype == np.float32 else 1e-12)
    out = np.empty((7, 11), dtype)
    np.testing.assert_allclose(matmul_into(a, b, out=out), a @ b, rtol=1e-5)


def test_large_updates_split_over_threads_are_exact():
    """Above PARALLEL_MIN_ELEMENTS the blocked updates run in threads on disjoint slices."""
    from nabi.functional import blas
    rng = np.random.default_rng(3)
    m, k = 1100, blas.PARALLEL_MIN_ELEMENTS // 1000           # > PARALLEL_MIN_ELEMENTS elements
    c = rng.standard_normal((m, k)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    expect = c - np.float32(0.25) * x
    blas.axpy(c, x, -0.25)
    np.testing.assert_allclose(c, expect, rtol=1e-6, atol=1e-6)
    a = rng.standard_normal((m, 1)).astype(np.float32)
    b = rng.standard_normal((1, k)).astype(np.float32)
    expect = c + np.float32(0.5) * (a @ b)
    blas.gemm_inplace(c, a, b, 0.5)
    np.testing.assert_allclose(c, expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernels", [True, False])
@pytest.mark.parametrize("fused_sgd", [False, True])
def test_conv_relu_fusion_changes_nothing(kernels, fused_sgd):
    """``Sequential`` runs Conv2d+ReLU as one step (ReLU applied in the convolution's output pass,
    its mask in the convolution's backward). Outputs, input gradients, parameter gradients and
    (with fused SGD) the updated weights equal the layer-by-layer run exactly, on both CPU paths."""
    from nabi.functional import cpu_kernels as K
    if kernels and not K.available():
        pytest.skip("numba is not installed")
    with backend.default_dtype(np.float64):
        nets = [small_alexnet(np.random.default_rng(0)) for _ in range(2)]
    nets[1].fuse = False
    x = np.random.default_rng(2).standard_normal((3, 3, 19, 19))
    x[0, 0, :4, :4] = 0.0                                   # exact zeros reach a ReLU
    loss_fn = L.CrossEntropyLoss()
    results = []
    with K.kernels(kernels):
        for net in nets:
            for layer in net:                              # keep the input gradient of the first conv
                if isinstance(layer, L.Conv2d):
                    layer.compute_input_grad = True
            if fused_sgd:
                enable_fused_sgd(net, optim.SGD(net.named_parameters(), lr=0.1))
            out = net(x)
            loss_fn(out, np.array([0, 3, 1]))
            net.zero_grad()
            dx = net.backward(loss_fn.backward())
            params = [p.data.copy() if fused_sgd else p.grad.copy() for p in net.parameters()]
            results.append([out, dx] + params)
    assert nets[0]._fused == {1, 4} and nets[1]._fused == set()
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
