"""Every op and layer, forward and backward, equal to PyTorch CPU on identical inputs and weights.

Tolerances: float64 rtol 1e-7 / atol 1e-9 (the same math, different summation order);
float32 rtol 1e-4 / atol 1e-5 (BLAS blocking differs between the two libraries).
"""
import numpy as np
import pytest
import torch
import torch.nn as tnn

from nabi import backend
from nabi import layers as L
from helpers import compare_with_torch

TOLS = {np.float64: dict(rtol=1e-7, atol=1e-9), np.float32: dict(rtol=1e-4, atol=1e-5)}
DTYPES = [np.float64, np.float32]


def build(make, dtype):
    with backend.default_dtype(dtype):
        return make()


CASES = {
    "conv3x3_pad1": (lambda: L.Conv2d(3, 5, 3, padding=1), lambda: tnn.Conv2d(3, 5, 3, padding=1), (2, 3, 9, 8)),
    "conv11x11_s4": (lambda: L.Conv2d(3, 4, 11, stride=4), lambda: tnn.Conv2d(3, 4, 11, stride=4), (2, 3, 31, 27)),
    "conv1x1": (lambda: L.Conv2d(6, 4, 1, bias=False), lambda: tnn.Conv2d(6, 4, 1, bias=False), (3, 6, 5, 5)),
    "conv_rect_s2": (lambda: L.Conv2d(2, 3, (3, 5), stride=(2, 1), padding=(1, 2)),
                     lambda: tnn.Conv2d(2, 3, (3, 5), stride=(2, 1), padding=(1, 2)), (2, 2, 9, 10)),
    "conv_same7": (lambda: L.Conv2d(2, 3, 7, padding="same"), lambda: tnn.Conv2d(2, 3, 7, padding="same"), (1, 2, 12, 12)),
    "maxpool3s2": (lambda: L.MaxPool2d(3, 2), lambda: tnn.MaxPool2d(3, 2), (2, 3, 13, 12)),
    "maxpool3s2_ceil": (lambda: L.MaxPool2d(3, 2, ceil_mode=True), lambda: tnn.MaxPool2d(3, 2, ceil_mode=True), (2, 3, 12, 14)),
    "maxpool2": (lambda: L.MaxPool2d(2), lambda: tnn.MaxPool2d(2), (2, 3, 8, 9)),
    "maxpool3s1p1": (lambda: L.MaxPool2d(3, 1, 1), lambda: tnn.MaxPool2d(3, 1, 1), (2, 3, 6, 7)),
    "avgpool3s2p1": (lambda: L.AvgPool2d(3, 2, 1), lambda: tnn.AvgPool2d(3, 2, 1), (2, 3, 9, 8)),
    "avgpool_ceil_nopad": (lambda: L.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
                           lambda: tnn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), (2, 2, 10, 9)),
    "avgpool_ceil": (lambda: L.AvgPool2d(2, 2, ceil_mode=True), lambda: tnn.AvgPool2d(2, 2, ceil_mode=True), (1, 2, 7, 5)),
    "adaptive1": (lambda: L.AdaptiveAvgPool2d(1), lambda: tnn.AdaptiveAvgPool2d(1), (2, 4, 5, 6)),
    "adaptive_uneven": (lambda: L.AdaptiveAvgPool2d((3, 4)), lambda: tnn.AdaptiveAvgPool2d((3, 4)), (2, 2, 7, 10)),
    "adaptive_even": (lambda: L.AdaptiveAvgPool2d((2, 2)), lambda: tnn.AdaptiveAvgPool2d((2, 2)), (2, 2, 6, 4)),
    "linear": (lambda: L.Linear(7, 5), lambda: tnn.Linear(7, 5), (4, 7)),
    "relu": (lambda: L.ReLU(), lambda: tnn.ReLU(), (2, 3, 4, 4)),
    "leaky": (lambda: L.LeakyReLU(0.2), lambda: tnn.LeakyReLU(0.2), (3, 6)),
    "sigmoid": (lambda: L.Sigmoid(), lambda: tnn.Sigmoid(), (3, 6)),
    "tanh": (lambda: L.Tanh(), lambda: tnn.Tanh(), (3, 6)),
    "softmax": (lambda: L.Softmax(1), lambda: tnn.Softmax(1), (3, 6)),
    "logsoftmax": (lambda: L.LogSoftmax(1), lambda: tnn.LogSoftmax(1), (3, 6)),
    "flatten": (lambda: L.Flatten(), lambda: tnn.Flatten(), (2, 3, 4, 5)),
    "bn1d": (lambda: L.BatchNorm1d(5), lambda: tnn.BatchNorm1d(5), (8, 5)),
    "bn2d": (lambda: L.BatchNorm2d(3), lambda: tnn.BatchNorm2d(3), (4, 3, 5, 6)),
    "bn1d_no_affine": (lambda: L.BatchNorm1d(5, affine=False), lambda: tnn.BatchNorm1d(5, affine=False), (8, 5)),
    "bn2d_no_affine": (lambda: L.BatchNorm2d(3, affine=False), lambda: tnn.BatchNorm2d(3, affine=False), (4, 3, 5, 6)),
    "bn2d_relu": (lambda: L.Sequential(L.BatchNorm2d(3), L.ReLU()), lambda: tnn.Sequential(tnn.BatchNorm2d(3), tnn.ReLU()),
                  (4, 3, 5, 6)),                    # the ReLU runs inside the batch norm (Sequential.fuse)
    "bn1d_relu": (lambda: L.Sequential(L.BatchNorm1d(5), L.ReLU()), lambda: tnn.Sequential(tnn.BatchNorm1d(5), tnn.ReLU()),
                  (8, 5)),
    "lrn_alexnet": (lambda: L.LocalResponseNorm(5, 1e-4, 0.75, 2.0), lambda: tnn.LocalResponseNorm(5, 1e-4, 0.75, 2.0),
                    (2, 8, 4, 4)),
    "lrn_even": (lambda: L.LocalResponseNorm(4, 0.3, 0.6, 1.0), lambda: tnn.LocalResponseNorm(4, 0.3, 0.6, 1.0),
                 (2, 7, 3, 3)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_equals_torch(case, dtype, xp):
    make_nabi, make_torch, shape = CASES[case]
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    layer = build(make_nabi, dtype)
    for p in layer.parameters():  # random, non-trivial weights (also for batch-norm's γ, β)
        p.data = rng.uniform(-1, 1, p.shape).astype(dtype)
    compare_with_torch(layer, make_torch(), rng.standard_normal(shape), xp=xp, dtype=dtype, **TOLS[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_batchnorm_eval_equals_torch(dtype, xp):
    rng = np.random.default_rng(1)
    bn = build(lambda: L.BatchNorm2d(3), dtype)
    bn.running_mean[:] = rng.standard_normal(3)
    bn.running_var[:] = rng.uniform(0.5, 2, 3)
    bn.weight.data = rng.uniform(0.5, 1.5, 3).astype(dtype)
    bn.set_keep_cache()
    compare_with_torch(bn, tnn.BatchNorm2d(3), rng.standard_normal((2, 3, 4, 4)), xp=xp, dtype=dtype, train=False,
                       **TOLS[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_equals_torch(dtype, weighted, smoothing, xp):
    rng = np.random.default_rng(2)
    z = rng.standard_normal((6, 5)).astype(dtype) * 3
    y = rng.integers(0, 5, 6)
    w = rng.uniform(0.2, 2, 5).astype(dtype) if weighted else None
    loss_fn = L.CrossEntropyLoss(weight=None if w is None else xp.asarray(w), label_smoothing=smoothing)
    loss = loss_fn(xp.asarray(z), xp.asarray(y))
    dz = backend.to_numpy(loss_fn.backward())
    zt = torch.tensor(z, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(zt, torch.tensor(y), weight=None if w is None else torch.tensor(w),
                                           label_smoothing=smoothing)
    lt.backward()
    assert isinstance(loss, float)
    np.testing.assert_allclose(loss, lt.item(), **TOLS[dtype])
    np.testing.assert_allclose(dz, zt.grad.numpy(), **TOLS[dtype])


def test_cross_entropy_gradient_is_p_minus_y():
    """For one example the logit gradient is softmax output − one-hot answer (the 2019 report's Algorithm 1)."""
    z = np.array([[2.0, -1.0, 0.5, 0.0]])
    loss_fn = L.CrossEntropyLoss()
    loss_fn(z, np.array([2]))
    p = np.exp(z) / np.exp(z).sum()
    np.testing.assert_allclose(loss_fn.backward(), p - np.array([[0, 0, 1, 0]]), rtol=1e-12)


def test_cross_entropy_is_stable_for_huge_logits():
    z = np.array([[1000.0, -1000.0, 0.0], [-5e4, 5e4, 0.0]])
    loss_fn = L.CrossEntropyLoss()
    loss = loss_fn(z, np.array([0, 0]))
    assert np.isfinite(loss) and abs(loss - 5e4) < 1e-6
    assert np.all(np.isfinite(loss_fn.backward()))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_mse_equals_torch(dtype, xp):
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((4, 3)).astype(dtype), rng.standard_normal((4, 3)).astype(dtype)
    loss_fn = L.MSELoss()
    loss = loss_fn(xp.asarray(a), xp.asarray(b))
    at = torch.tensor(a, requires_grad=True)
    lt = torch.nn.functional.mse_loss(at, torch.tensor(b))
    lt.backward()
    np.testing.assert_allclose(loss, lt.item(), **TOLS[dtype])
    np.testing.assert_allclose(backend.to_numpy(loss_fn.backward()), at.grad.numpy(), **TOLS[dtype])


def test_dropout_train_and_eval(xp):
    drop = L.Dropout(0.3, seed=0)
    x = xp.ones((200, 50))
    y = backend.to_numpy(drop(x))
    kept = y != 0
    np.testing.assert_allclose(y[kept], 1 / 0.7)                      # inverted scaling
    assert abs(kept.mean() - 0.7) < 0.02
    dx = backend.to_numpy(drop.backward(xp.ones((200, 50))))
    np.testing.assert_array_equal(dx, y)                               # same mask, same scale
    drop.eval()
    np.testing.assert_array_equal(backend.to_numpy(drop(x)), backend.to_numpy(x))


class TorchBasicBlock(tnn.Module):
    def __init__(self):
        super().__init__()
        self.body = tnn.Sequential(tnn.Conv2d(3, 4, 3, 2, 1, bias=False), tnn.BatchNorm2d(4), tnn.ReLU(),
                                   tnn.Conv2d(4, 4, 3, 1, 1, bias=False), tnn.BatchNorm2d(4))
        self.shortcut = tnn.Sequential(tnn.Conv2d(3, 4, 1, 2, bias=False), tnn.BatchNorm2d(4))

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


class TorchInception(tnn.Module):
    def __init__(self):
        super().__init__()
        self.b1 = tnn.Conv2d(4, 2, 1)
        self.b2 = tnn.Sequential(tnn.Conv2d(4, 3, 1), tnn.ReLU(), tnn.Conv2d(3, 4, 3, padding=1))
        self.b3 = tnn.Sequential(tnn.Conv2d(4, 1, 1), tnn.ReLU(), tnn.Conv2d(1, 2, 5, padding=2))
        self.b4 = tnn.Sequential(tnn.MaxPool2d(3, 1, 1), tnn.Conv2d(4, 2, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


def nabi_basic_block():
    body = L.Sequential(L.Conv2d(3, 4, 3, 2, 1, bias=False), L.BatchNorm2d(4), L.ReLU(),
                        L.Conv2d(4, 4, 3, 1, 1, bias=False), L.BatchNorm2d(4))
    return L.Residual(body, L.Sequential(L.Conv2d(3, 4, 1, 2, bias=False), L.BatchNorm2d(4)))


def nabi_inception():
    from collections import OrderedDict
    return L.Concat(OrderedDict(
        b1=L.Conv2d(4, 2, 1),
        b2=L.Sequential(L.Conv2d(4, 3, 1), L.ReLU(), L.Conv2d(3, 4, 3, padding=1)),
        b3=L.Sequential(L.Conv2d(4, 1, 1), L.ReLU(), L.Conv2d(1, 2, 5, padding=2)),
        b4=L.Sequential(L.MaxPool2d(3, 1, 1), L.Conv2d(4, 2, 1))))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_small_residual_network_equals_torch(dtype, xp):
    rng = np.random.default_rng(4)
    net = build(lambda: L.Sequential(nabi_basic_block(), L.ReLU(), L.Residual(L.Sequential(L.Conv2d(4, 4, 3, padding=1))),
                                     L.AdaptiveAvgPool2d(1), L.Flatten(), L.Linear(4, 3)), dtype)
    tnet = tnn.Sequential(TorchBasicBlock(), tnn.ReLU(), _TorchIdentityResidual(), tnn.AdaptiveAvgPool2d(1),
                          tnn.Flatten(), tnn.Linear(4, 3))
    compare_with_torch(net, tnet, rng.standard_normal((3, 3, 9, 8)), xp=xp, dtype=dtype, **TOLS[dtype])


class _TorchIdentityResidual(tnn.Module):
    def __init__(self):
        super().__init__()
        self.body = tnn.Sequential(tnn.Conv2d(4, 4, 3, padding=1))

    def forward(self, x):
        return self.body(x) + x


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_inception_block_equals_torch(dtype, xp):
    rng = np.random.default_rng(5)
    compare_with_torch(build(nabi_inception, dtype), TorchInception(), rng.standard_normal((2, 4, 7, 6)), xp=xp,
                       dtype=dtype, **TOLS[dtype])


@pytest.mark.parametrize("k,s,shape", [(2, 2, (1, 2, 4, 6)), (3, 2, (1, 2, 7, 7)), (3, 1, (2, 1, 5, 4))])
def test_max_pool_ties_follow_torch(k, s, shape, xp):
    """Equal values in a window: the gradient goes to the first one in row-major order, once
    (with overlapping windows each window adds its own δ to that cell), as PyTorch's CPU kernel."""
    x = np.ones(shape, np.float32)
    x[..., ::3, 1::2] = 2.0                                       # some windows tie at 2, some at 1
    pool = L.MaxPool2d(k, s)
    y = pool(xp.asarray(x))
    rng = np.random.default_rng(0)
    g = rng.standard_normal(tuple(y.shape)).astype(np.float32)
    dx = backend.to_numpy(pool.backward(xp.asarray(g)))
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.max_pool2d(xt, k, s).backward(torch.tensor(g))
    np.testing.assert_array_equal(dx, xt.grad.numpy())
