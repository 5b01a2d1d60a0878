"""The outer-product convolution (``functional.conv_outer``): a first layer's few input channels, any stride.

Per shape family (ResNet's 7×7 stride-2 stem with an output-channel count that is no multiple of the kernel's block
of 32; AlexNet's 11×11 stride 4; one gray channel; four channels at padding 0; unequal strides and paddings; a 1×1
kernel at batch 1): the forward and all gradients equal im2col's in float64 (with and without ∂L/∂x, with and
without a fused ReLU) and the forward stays within im2col's error bound in float32; the layer passes finite
differences in float64 with a random upstream gradient and equals PyTorch; fused ReLU keeps NaN; the parallel builds
compute the one-thread builds' bits whatever the thread count; it runs only where it applies, and ``conv_algo`` times
it beside im2col.
"""
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as tnn

from nabi import backend, gradcheck
from nabi import layers as L
from nabi.functional import conv, conv_algo, conv_fast, conv_outer as CO, cpu_kernels as K
from helpers import compare_with_torch, count_calls

pytestmark = pytest.mark.skipif(not K.available(), reason="the outer-product convolution is compiled CPU code (numba)")

# (N, C, F, H, W, KH, KW, stride, padding)
FAMILIES = {
    "stem_7x7_s2": (2, 3, 40, 17, 19, 7, 7, 2, 3),
    "alexnet_11x11_s4": (1, 3, 8, 35, 35, 11, 11, 4, 2),
    "gray_3x3_s1": (3, 1, 5, 9, 11, 3, 3, 1, 1),
    "rgba_5x5_s2_p0": (2, 4, 33, 12, 10, 5, 5, 2, 0),
    "strides_2x3": (2, 2, 7, 13, 16, 3, 5, (2, 3), (1, 2)),
    "batch1_1x1": (1, 3, 64, 5, 6, 1, 1, 1, 0),
}
FLOAT32_BOUND = 1e-6       # norm-relative error against float64 (im2col's own bound in the other algorithms' tests)


def _data(n, c, f, h, w, kh, kw, s, p, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((f, c, kh, kw)) * np.sqrt(2.0 / (kh * kw * c))
    b = rng.standard_normal(f)
    geom = conv.conv_geometry(x, wt, s, p)
    dy = rng.standard_normal((n, f, geom[6], geom[7]))
    return [a.astype(dtype) for a in (x, wt, b, dy)]


@pytest.fixture
def calls(monkeypatch):
    """How many times the outer-product kernel ran (the real one: this only counts)."""
    return count_calls(monkeypatch, CO, "conv2d_forward")


def _both(family, relu, need_dx, dtype=np.float64, x=None):
    """(outer's y, dx, dw, db), (im2col's y, dx, dw, db) through ``conv_fast`` as the layers call it."""
    n, c, f, h, w, kh, kw, s, p = FAMILIES[family]
    x0, wt, b, dy = _data(n, c, f, h, w, kh, kw, s, p, dtype=dtype)
    x = x0 if x is None else x
    results = []
    for algo in ("outer", "im2col"):
        with conv_algo.algorithm(algo):
            y, cache = conv_fast.conv2d_forward(x, wt, b, s, p, relu=relu, need_dx=need_dx)
            dx, dw, db = conv_fast.conv2d_backward(dy, cache, need_dx=need_dx, relu_y=y if relu else None)
        results.append((y, dx, dw, db))
    return results


@pytest.mark.parametrize("need_dx", [True, False], ids=["dx", "no_dx"])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_outer_equals_im2col_in_float64(family, relu, need_dx, calls):
    got, want = _both(family, relu, need_dx)
    assert calls[0] == 1
    for g, e in zip(got, want):
        if e is None:
            assert g is None
            continue
        assert g.shape == e.shape and g.dtype == np.float64
        np.testing.assert_allclose(g, e, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_float32_error_against_float64_is_within_im2cols_bound(family):
    n, c, f, h, w, kh, kw, s, p = FAMILIES[family]
    x, wt, b, _ = _data(n, c, f, h, w, kh, kw, s, p)
    y64, _ = conv.conv2d_forward(x, wt, b, s, p)
    with conv_algo.algorithm("outer"):
        y, _ = conv_fast.conv2d_forward(*(a.astype(np.float32) for a in (x, wt, b)), s, p)
    assert y.dtype == np.float32
    assert np.linalg.norm(y - y64) / np.linalg.norm(y64) < FLOAT32_BOUND


@pytest.mark.parametrize("family", ["stem_7x7_s2", "gray_3x3_s1", "strides_2x3"])
def test_layer_gradients_pass_finite_differences(family, calls):
    n, c, f, h, w, kh, kw, s, p = FAMILIES[family]
    f = min(f, 6)                                                   # a smaller network for the differences
    rng = np.random.default_rng(3)
    with backend.default_dtype(np.float64), conv_algo.algorithm("outer"):
        net = L.Sequential(L.Conv2d(c, f, (kh, kw), stride=s, padding=p), L.ReLU(),
                           L.Conv2d(f, 3, 3, padding=1, bias=False))
        errors = gradcheck.check_module(net, rng.standard_normal((n, c, h, w)))
    assert calls[0] > 0
    assert max(errors.values()) < 1e-7, errors


class _TorchPair(tnn.Module):
    def __init__(self, c, f, k, s, p):
        super().__init__()
        self.a = tnn.Conv2d(c, f, k, stride=s, padding=p)
        self.b = tnn.Conv2d(f, 3, 3, padding=1, bias=False)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_layer_equals_torch(family, dtype, calls):
    n, c, f, h, w, kh, kw, s, p = FAMILIES[family]
    with backend.default_dtype(dtype), conv_algo.algorithm("outer"):
        net = L.Sequential(OrderedDict(a=L.Conv2d(c, f, (kh, kw), stride=s, padding=p), r=L.ReLU(),
                                       b=L.Conv2d(f, 3, 3, padding=1, bias=False)))
        tol = dict(rtol=1e-9, atol=1e-11) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
        compare_with_torch(net, _TorchPair(c, f, (kh, kw), s, p),
                           np.random.default_rng(5).standard_normal((n, c, h, w)), dtype=dtype, **tol)
    assert calls[0] > 0


def test_a_nan_in_the_input_spreads_as_im2cols_does_through_the_fused_relu():
    n, c, f, h, w, kh, kw, s, p = FAMILIES["stem_7x7_s2"]
    x = _data(n, c, f, h, w, kh, kw, s, p)[0]
    x[1, 2, 8, 9] = np.nan
    got, want = _both("stem_7x7_s2", relu=True, need_dx=False, x=x)
    assert np.isnan(got[0]).sum() == f * 3 * 4        # every channel, the 3 rows × 4 columns of outputs whose window holds it
    np.testing.assert_array_equal(np.isnan(got[0]), np.isnan(want[0]))
    np.testing.assert_allclose(got[0], want[0], rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("family", ["stem_7x7_s2", "rgba_5x5_s2_p0"])
def test_the_parallel_build_computes_the_one_thread_builds_bits(family, monkeypatch):
    n, c, f, h, w, kh, kw, s, p = FAMILIES[family]
    x, wt, b, _ = _data(n, c, f, h, w, kh, kw, s, p, dtype=np.float32)
    geom = conv.conv_geometry(x, wt, s, p)
    runs = []
    for limit in (1 << 40, 0):                                    # the one-thread build, then the parallel one
        monkeypatch.setattr(K, "PARALLEL_MIN_ELEMENTS", limit)
        runs.append(K.outer_forward(x, wt, b, geom, relu=True))
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.parametrize("relu", [False, True])
def test_fused_sgd_updates_as_the_gradients_say(relu, calls):
    n, c, f, h, w, kh, kw, s, p = FAMILIES["strides_2x3"]
    x, wt, b, dy = _data(n, c, f, h, w, kh, kw, s, p)
    (_, dx_ref, dw_ref, db_ref), _ = _both("strides_2x3", relu, need_dx=True)
    w2, b2 = wt.copy(), b.copy()
    with conv_algo.algorithm("outer"):
        y, cache = conv_fast.conv2d_forward(x, w2, b2, s, p, relu=relu)
        dx = conv_fast.conv2d_sgd_backward(dy, cache, w2, b2, 0.5, relu_y=y if relu else None)
    assert calls[0] == 2
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-11, atol=1e-12)            # with the old weights
    np.testing.assert_allclose(w2, wt - 0.5 * dw_ref, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(b2, b - 0.5 * db_ref, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("family", ["stem_7x7_s2", "strides_2x3"])
def test_the_weight_gradient_does_not_depend_on_threads(family, monkeypatch):
    n, c, f, h, w, kh, kw, s, p = FAMILIES[family]
    x, wt, b, dy = _data(n, c, f, h, w, kh, kw, s, p, dtype=np.float32)
    geom = conv.conv_geometry(x, wt, s, p)
    relu_y = np.maximum(dy, 0)
    old = K._nb.get_num_threads()
    runs = []
    try:
        for threads, limit in ((1, 1 << 40), (1, 0), (old, 0)):    # one-thread build, parallel on 1, parallel on all
            K.set_num_threads(threads)
            monkeypatch.setattr(K, "PARALLEL_MIN_ELEMENTS", limit)
            runs.append(K.outer_weight_grad(x, dy, geom, relu_y))
    finally:
        K.set_num_threads(old)
    for other in runs[1:]:
        for a, e in zip(other, runs[0]):
            np.testing.assert_array_equal(a, e)


def test_outer_only_where_it_applies(calls):
    rng = np.random.default_rng(0)
    with conv_algo.algorithm("outer"):
        for x, w in ((rng.standard_normal((1, CO.MAX_CHANNELS + 1, 9, 9)), rng.standard_normal((3, 5, 3, 3))),
                     (rng.standard_normal((1, 3, 3, 3)), rng.standard_normal((4, 3, 3, 3))),       # the whole input
                     (rng.standard_normal((1, 3, 9, 9)).astype(np.float32), rng.standard_normal((4, 3, 3, 3)))):
            y, _ = conv_fast.conv2d_forward(x, w, None, 1, 0)
            np.testing.assert_allclose(y, conv.conv2d_forward(x, w, None, 1, 0)[0], rtol=1e-6)
        assert calls[0] == 0                                      # too many channels, a product, mixed dtypes
        with K.kernels(False):                                     # no compiled kernels: im2col
            conv_fast.conv2d_forward(rng.standard_normal((1, 3, 9, 9)), rng.standard_normal((4, 3, 3, 3)), None, 2, 1)
        assert calls[0] == 0


def test_auto_times_outer_beside_the_others_for_an_image_layer_as_it_trains(tmp_path, monkeypatch):
    # A first layer computes no image gradient: it is timed so, under a key of its own (stride named), apart from
    # the same shape computing one.
    import json
    monkeypatch.setenv("NABI_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("NABI_CONV_ALGO", raising=False)
    conv_algo.forget()
    try:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((16, 3, 64, 64)).astype(np.float32)
        w = (rng.standard_normal((64, 3, 7, 7)) / 12).astype(np.float32)
        y, _ = conv_fast.conv2d_forward(x, w, None, 2, 3, need_dx=False)
        conv_fast.conv2d_forward(x, w, None, 2, 3)
        table = json.loads(tmp_path.joinpath(conv_algo.CACHE_FILE).read_text())["machines"][conv_algo.machine_key()]
        assert sorted(table) == ["train 16x3x64x64 -> 64 7x7 s2x2 p3x3 float32",
                                 "train, no dx 16x3x64x64 -> 64 7x7 s2x2 p3x3 float32"]
        for entry in table.values():
            assert set(entry["ms"]) == {"im2col", "outer", "direct"} and entry["algorithm"] in entry["ms"]
        np.testing.assert_allclose(y, conv.conv2d_forward(x, w, None, 2, 3)[0], rtol=1e-4, atol=1e-5)
    finally:
        conv_algo.forget()
