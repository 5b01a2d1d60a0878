"""Every layer's backward against float64 central differences, with a random upstream gradient.

Bar: relative error ‖analytic − numeric‖/max(‖·‖) below 1e-6 (observed ~1e-10).
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from nabi import backend
from nabi.gradcheck import check_module
from nabi.layers import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Concat, Conv2d, Dropout, Flatten,
                         Identity, LeakyReLU, Linear, LocalResponseNorm, LogSoftmax, MaxPool2d, ReLU, Residual,
                         Sequential, Sigmoid, Softmax, Tanh)

TOL = 1e-6


def f64(make):
    with backend.default_dtype(np.float64):
        return make()


def assert_grads(module, x, **kw):
    errors = check_module(module, x, **kw)
    bad = {k: v for k, v in errors.items() if not v < TOL}
    assert not bad, f"gradient errors above {TOL}: {bad} (all: {errors})"
    return errors


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 3), f=st.integers(1, 3), h=st.integers(5, 9), w=st.integers(5, 9),
       kh=st.integers(1, 4), kw=st.integers(1, 4), s=st.integers(1, 3), p=st.integers(0, 2), bias=st.booleans())
def test_conv2d_gradients_many_shapes(n, c, f, h, w, kh, kw, s, p, bias):
    rng = np.random.default_rng(n * 1000 + h * 10 + w)
    conv = f64(lambda: Conv2d(c, f, (kh, kw), stride=s, padding=p, bias=bias, bias_init="he_uniform", rng=rng))
    assert_grads(conv, rng.standard_normal((n, c, h, w)))


@pytest.mark.parametrize("cfg", [
    dict(c=3, f=2, k=11, s=4, p=0, hw=(23, 19)),   # AlexNet-style 11×11 stride 4, non-square input
    dict(c=2, f=3, k=1, s=1, p=0, hw=(5, 4)),      # 1×1 fast path
    dict(c=2, f=2, k=(3, 5), s=(2, 1), p=(1, 2), hw=(7, 9)),
    dict(c=2, f=2, k=7, s=1, p="same", hw=(9, 8)),
])
def test_conv2d_gradients_special(cfg):
    rng = np.random.default_rng(1)
    conv = f64(lambda: Conv2d(cfg["c"], cfg["f"], cfg["k"], stride=cfg["s"], padding=cfg["p"],
                              bias_init="he_uniform", rng=rng))
    assert_grads(conv, rng.standard_normal((2, cfg["c"]) + cfg["hw"]))


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 4), s=st.integers(1, 3), p=st.integers(0, 2), ceil=st.booleans(),
       h=st.integers(4, 9), w=st.integers(4, 9), kind=st.sampled_from(["max", "avg", "avg_nopad"]))
def test_pool_gradients_many_shapes(k, s, p, ceil, h, w, kind):
    if p > k // 2:
        p = k // 2
    rng = np.random.default_rng(k * 100 + h * 10 + w)
    if kind == "max":
        layer = MaxPool2d(k, s, p, ceil_mode=ceil)
    else:
        layer = AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=(kind == "avg"))
    assert_grads(layer, rng.standard_normal((2, 2, h, w)))


def test_overlapping_max_pool_alexnet():
    rng = np.random.default_rng(2)
    assert_grads(MaxPool2d(3, 2), rng.standard_normal((2, 3, 13, 11)))
    assert_grads(MaxPool2d(3, 2, ceil_mode=True), rng.standard_normal((1, 2, 12, 10)))


@pytest.mark.parametrize("make,shape", [
    (lambda: ReLU(), (3, 4, 5, 5)),
    (lambda: LeakyReLU(0.1), (3, 7)),
    (lambda: Sigmoid(), (3, 7)),
    (lambda: Tanh(), (3, 7)),
    (lambda: Softmax(dim=1), (4, 6)),
    (lambda: LogSoftmax(dim=1), (4, 6)),
    (lambda: Flatten(), (2, 3, 4, 5)),
    (lambda: Identity(), (2, 3)),
    (lambda: AdaptiveAvgPool2d(1), (2, 3, 5, 4)),
    (lambda: AdaptiveAvgPool2d((2, 3)), (2, 3, 6, 6)),
    (lambda: AdaptiveAvgPool2d((3, 2)), (2, 2, 7, 5)),
    (lambda: Linear(7, 4, bias_init="he_uniform"), (5, 7)),
    (lambda: BatchNorm1d(5), (6, 5)),
    (lambda: BatchNorm2d(3), (4, 3, 5, 4)),
    (lambda: LocalResponseNorm(5, alpha=1e-2, beta=0.75, k=2.0), (2, 7, 4, 3)),
    (lambda: LocalResponseNorm(4, alpha=0.5, beta=0.6, k=1.0), (2, 6, 3, 3)),
])
def test_layer_gradients(make, shape):
    rng = np.random.default_rng(3)
    layer = f64(make)
    if isinstance(layer, (BatchNorm1d, BatchNorm2d)):
        layer.weight.data = rng.uniform(0.5, 1.5, layer.num_features)
        layer.bias.data = rng.standard_normal(layer.num_features)
    assert_grads(layer, rng.standard_normal(shape))


def test_batchnorm_eval_gradients():
    rng = np.random.default_rng(4)
    bn = f64(lambda: BatchNorm2d(3))
    bn.running_mean[:] = rng.standard_normal(3)
    bn.running_var[:] = rng.uniform(0.5, 2, 3)
    bn.eval().set_keep_cache()
    assert_grads(bn, rng.standard_normal((2, 3, 4, 4)))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(4, 3, 5, 4), (6, 3)])
def test_batch_norm_with_its_relu_fused_gradients(training, shape):
    rng = np.random.default_rng(7)
    net = f64(lambda: Sequential(BatchNorm2d(3) if len(shape) == 4 else BatchNorm1d(3), ReLU()))
    bn = net[0]
    bn.weight.data = rng.uniform(0.5, 1.5, 3)
    bn.bias.data = rng.standard_normal(3) * 0.5
    bn.running_mean[:] = rng.standard_normal(3) * 0.3
    bn.running_var[:] = rng.uniform(0.5, 2, 3)
    if not training:
        net.eval().set_keep_cache()
    assert_grads(net, rng.standard_normal(shape))
    net.forward(rng.standard_normal(shape))
    assert net._fused == {1}                            # the ReLU ran inside the batch norm


def test_dropout_gradients_with_a_replayed_mask():
    rng = np.random.default_rng(5)
    drop = Dropout(0.4, seed=9)
    state = backend.rng_state(drop.rng)
    errors = assert_grads(drop, rng.standard_normal((4, 10)),
                          before_forward=lambda: backend.set_rng_state(drop.rng, state))
    assert errors["input"] < TOL


def test_containers_gradients():
    rng = np.random.default_rng(6)

    def make():
        body = Sequential(Conv2d(3, 4, 3, padding=1, bias=False, rng=rng), BatchNorm2d(4), ReLU(), Conv2d(4, 4, 3, padding=1, rng=rng))
        block = Residual(body, Sequential(Conv2d(3, 4, 1, rng=rng)))
        incep = Concat(Conv2d(4, 2, 1, rng=rng), Sequential(Conv2d(4, 2, 1, rng=rng), ReLU(), Conv2d(2, 3, 3, padding=1, rng=rng)),
                       Sequential(MaxPool2d(3, 1, 1), Conv2d(4, 2, 1, rng=rng)))
        return Sequential(block, ReLU(), Residual(Sequential(Conv2d(4, 4, 3, padding=1, rng=rng))), incep,
                          AdaptiveAvgPool2d(1), Flatten(), Linear(7, 3, rng=rng))
    net = f64(make)
    assert_grads(net, rng.standard_normal((2, 3, 6, 5)), max_coords=40)
