"""The direct convolution (``functional.conv_direct``): stride 1, flat padded planes, no columns.

Per shape family (3×3 padding 1; odd sizes; batch 1; channel counts that are no multiple of the kernels' block of 4;
the patch descriptor's 1→8, 8→8, 8→16, 16→32, 32→32; rows of exactly two vectors and rows narrower than one; 1×1,
5×5 and padding 0 and 2; a kernel wider than high): forward and all gradients equal the im2col convolution and the
flat-plane sums of ``conv_direct``'s docstring written in NumPy, in float64, and stay within im2col's own error
bound in float32; the layers' backward passes finite differences in float64 with a random upstream gradient and
equals PyTorch; fused ReLU (NaN kept), fused SGD, kept workspaces and the kernels' parallel builds change nothing;
it runs only where it applies, and ``conv_algo`` times it beside the others. Strides above 1 (phase planes; strides 2,
3 and 2×1, 1×1 to 5×5 kernels, the patch descriptor's 8→16 at stride 2): forward and all gradients equal im2col's
in float64, stay within its float32 bound, pass finite differences, equal PyTorch, update as fused SGD should, and
compute the same bits whatever the thread count and register block.
"""
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as tnn

from nabi import backend, gradcheck
from nabi import layers as L
from nabi.functional import conv, conv_algo, conv_direct as CD, conv_fast, cpu_kernels as K
from nabi.functional.conv import conv_geometry
from helpers import compare_with_torch, count_calls

pytestmark = pytest.mark.skipif(not K.available(), reason="the direct convolution is compiled CPU code (numba)")

# (N, C, F, H, W, KH, KW, padding)
FAMILIES = {
    "3x3p1": (2, 4, 6, 8, 8, 3, 3, 1),
    "odd_sizes": (2, 3, 5, 7, 9, 3, 3, 1),
    "batch1": (1, 5, 4, 6, 5, 3, 3, 1),
    "odd_channels": (3, 7, 11, 5, 6, 3, 3, 1),
    "1x1": (2, 3, 4, 5, 6, 1, 1, 0),
    "5x5p2": (2, 2, 3, 7, 6, 5, 5, 2),
    "3x3p0": (2, 3, 4, 7, 6, 3, 3, 0),
    "1x3": (2, 3, 2, 5, 7, 1, 3, (0, 1)),
    "1to8": (2, 1, 8, 10, 10, 3, 3, 1),
    "8to8_rows_of_16": (2, 8, 8, 5, 16, 3, 3, 1),
    "8to16": (3, 8, 16, 6, 6, 3, 3, 1),
    "16to32_batch1": (1, 16, 32, 4, 5, 3, 3, 1),
    "32to32": (2, 32, 32, 3, 3, 3, 3, 1),
    "narrow_p0": (3, 2, 3, 5, 3, 3, 3, 0),
}
FLOAT32_BOUND = 1e-6       # norm-relative error against float64, per output and gradient


def _data(n, c, f, h, w, kh, kw, p, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((f, c, kh, kw)) * np.sqrt(2.0 / (kh * kw * c))
    b = rng.standard_normal(f)
    geom = conv_geometry(x, wt, 1, p)
    dy = rng.standard_normal((n, f, geom[6], geom[7]))
    return [a.astype(dtype) for a in (x, wt, b, dy)] + [geom]


def _rel(a, b):
    return np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b)


def _reference(x, w, b, dy, p, relu=False):
    y, cache = conv.conv2d_forward(x, w, b, 1, p)
    if relu:
        y = np.maximum(y, 0)
        dy = dy * (y > 0)
    return (y,) + tuple(conv.conv2d_backward(dy, cache))


def _direct(x, w, b, dy, p, relu=False, ws=None):
    with conv_algo.algorithm("direct"):
        y, cache = conv_fast.conv2d_forward(x, w, b, 1, p, relu=relu, workspace=ws)
        assert isinstance(cache, CD.DirectCache)
        return (y,) + tuple(conv_fast.conv2d_backward(dy, cache, relu_y=y if relu else None, consume=True,
                                                      workspace=ws))


def _shifted_runs(x, w, b, dy, p):
    """The flat-plane sums of ``conv_direct``'s docstring, one NumPy product per kernel tap: y and ∂w summed over
    shifted runs, ∂x scattered back tap by tap (the route of the loops the compiled kernels replaced)."""
    ph, pw = (p, p) if np.isscalar(p) else p
    N, C, H, W = x.shape
    F, _, kh, kw = w.shape
    Hp, Wp = H + 2 * ph, W + 2 * pw
    oh, ow = Hp - kh + 1, Wp - kw + 1
    L = (oh - 1) * Wp + ow
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))).reshape(N, C, Hp * Wp)
    keep = (np.arange(oh)[:, None] * Wp + np.arange(ow)).ravel()           # flat k of output (i, j)
    yw = np.zeros((N, F, L))
    dyw = np.zeros((N, F, L))
    dyw[:, :, keep] = dy.reshape(N, F, -1)
    dxp = np.zeros((N, C, Hp * Wp))
    dw = np.zeros_like(w)
    for u in range(kh):
        for v in range(kw):
            o = u * Wp + v
            yw += np.einsum("fc,ncl->nfl", w[:, :, u, v], xp[:, :, o:o + L])
            dxp[:, :, o:o + L] += np.einsum("fc,nfl->ncl", w[:, :, u, v], dyw)
            dw[:, :, u, v] = np.einsum("nfl,ncl->fc", dyw, xp[:, :, o:o + L])
    y = yw[:, :, keep].reshape(N, F, oh, ow) + b[:, None, None]
    dx = dxp.reshape(N, C, Hp, Wp)[:, :, ph:ph + H, pw:pw + W]
    return y, dx, dw, dy.sum(axis=(0, 2, 3))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_direct_equals_the_flat_plane_sums_in_float64(family):
    x, w, b, dy, geom = _data(*FAMILIES[family])
    p = FAMILIES[family][-1]
    for got, want in zip(_direct(x, w, b, dy, p), _shifted_runs(x, w, b, dy, p)):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_direct_equals_im2col_in_float64(family, relu):
    x, w, b, dy, geom = _data(*FAMILIES[family])
    p = FAMILIES[family][-1]
    for got, want in zip(_direct(x, w, b, dy, p, relu), _reference(x, w, b, dy, p, relu)):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_float32_error_against_float64_is_within_im2cols_bound(family):
    n, c, f, h, w_, kh, kw, p = FAMILIES[family]
    args = (n, c + 29, f + 31, h, w_, kh, kw, p)                      # wider sums: the error of real layers
    exact = _reference(*_data(*args)[:4], p)
    x, w, b, dy, _ = _data(*args, dtype=np.float32)
    for got, want in zip(_direct(x, w, b, dy, p), exact):
        assert got.dtype == np.float32
        assert _rel(got, want) < FLOAT32_BOUND


@pytest.mark.parametrize("family", ["3x3p1", "odd_channels", "5x5p2", "1x3", "1to8", "8to16", "narrow_p0"])
def test_layer_gradients_pass_finite_differences(family):
    n, c, f, h, w, kh, kw, p = FAMILIES[family]
    rng = np.random.default_rng(3)
    with backend.default_dtype(np.float64), conv_algo.algorithm("direct"):
        net = L.Sequential(L.Conv2d(c, f, (kh, kw), padding=p), L.ReLU(), L.Conv2d(f, 3, 3, padding=1, bias=False))
        x = rng.standard_normal((n, c, h, w))
        net(x)
        assert isinstance(net[0]._cache, CD.DirectCache) and isinstance(net[2]._cache, CD.DirectCache)
        errors = gradcheck.check_module(net, x)
    assert max(errors.values()) < 1e-7, errors


class _TorchPair(tnn.Module):
    def __init__(self, c, f, k, p):
        super().__init__()
        self.a = tnn.Conv2d(c, f, k, padding=p)
        self.b = tnn.Conv2d(f, 3, 3, padding=1, bias=False)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("family", ["3x3p1", "batch1", "5x5p2", "1x3", "8to8_rows_of_16", "16to32_batch1", "32to32",
                                    "narrow_p0"])
def test_layer_equals_torch(family, dtype):
    n, c, f, h, w, kh, kw, p = FAMILIES[family]
    with backend.default_dtype(dtype), conv_algo.algorithm("direct"):
        net = L.Sequential(OrderedDict(a=L.Conv2d(c, f, (kh, kw), padding=p), r=L.ReLU(),
                                       b=L.Conv2d(f, 3, 3, padding=1, bias=False)))
        tol = dict(rtol=1e-9, atol=1e-11) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
        compare_with_torch(net, _TorchPair(c, f, (kh, kw), p), np.random.default_rng(5).standard_normal((n, c, h, w)),
                           dtype=dtype, **tol)


def test_the_patch_descriptor_equals_torch_with_the_direct_convolution():
    from benchmarks.torch_models import t_hardnet
    import nabi.models as zoo
    with backend.default_dtype(np.float64), conv_algo.algorithm("direct"):
        model = zoo.get("hardnet", width=4, embedding_dim=16, dropout=0.0)
        compare_with_torch(model, t_hardnet(4, 16, dropout=0.0), np.random.default_rng(3).standard_normal((4, 1, 32, 32)),
                           dtype=np.float64, rtol=1e-7, atol=1e-9)
        model.train(True)
        model(np.zeros((2, 1, 32, 32)))
        assert isinstance(model.features[3]._cache, CD.DirectCache)             # the stride-1 layers ran it


@pytest.mark.parametrize("relu", [False, True])
def test_fused_relu_fused_sgd_and_kept_buffers_change_nothing(relu):
    x, w, b, dy, geom = _data(2, 3, 5, 7, 6, 3, 3, 1)
    y_ref, dx_ref, dw_ref, db_ref = _reference(x, w, b, dy, 1, relu)
    ws = conv_fast.Workspace()
    for step in range(2):                                          # the second step reuses the kept buffers
        for got, want in zip(_direct(x, w, b, dy, 1, relu, ws), (y_ref, dx_ref, dw_ref, db_ref)):
            np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)
    w2, b2 = w.copy(), b.copy()
    with conv_algo.algorithm("direct"):
        y2, cache2 = conv_fast.conv2d_forward(x, w2, b2, 1, 1, relu=relu, workspace=ws)
        dx2 = conv_fast.conv2d_sgd_backward(dy, cache2, w2, b2, 0.5, relu_y=y2 if relu else None, workspace=ws)
    np.testing.assert_allclose(dx2, dx_ref, rtol=1e-11, atol=1e-12)        # with the old weights
    np.testing.assert_allclose(w2, w - 0.5 * dw_ref, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(b2, b - 0.5 * db_ref, rtol=1e-11, atol=1e-12)


def test_a_nan_in_the_input_spreads_as_im2cols_does_through_the_fused_relu():
    x, w, b, dy, geom = _data(2, 3, 5, 7, 9, 3, 3, 1)
    x[1, 2, 3, 4] = np.nan
    got = _direct(x, w, b, dy, 1, relu=True)
    want = _reference(x, w, b, dy, 1, relu=True)
    assert np.isnan(got[0]).sum() == 5 * 9                       # every channel, the 3×3 outputs that read it
    np.testing.assert_allclose(got[0], want[0], rtol=1e-11, atol=1e-12)     # NaN where im2col has NaN


@pytest.mark.parametrize("family", ["odd_channels", "8to16"])
def test_the_parallel_builds_compute_the_one_thread_builds_bits(family, monkeypatch):
    x, w, b, dy, geom = _data(*FAMILIES[family], dtype=np.float32)
    p = FAMILIES[family][-1]
    runs = []
    for limit in (1 << 40, 0):                                    # the one-thread build, then the parallel one
        monkeypatch.setattr(K, "PARALLEL_MIN_ELEMENTS", limit)
        runs.append(_direct(x, w, b, dy, p, relu=True))
    for serial, parallel in zip(*runs):
        np.testing.assert_array_equal(serial, parallel)


@pytest.mark.parametrize("family", ["odd_sizes", "odd_channels", "1x3", "8to8_rows_of_16", "16to32_batch1",
                                    "narrow_p0"])
def test_the_register_blocks_of_two_and_four_vectors_compute_the_same_bits(family, monkeypatch):
    # 4 vectors of each output channel serve CPUs with 32 vector registers, 2 the others; whichever this machine
    # runs, the other is checked against it here (and it against im2col above).
    x, w, b, dy, geom = _data(*FAMILIES[family], dtype=np.float32)
    p = FAMILIES[family][-1]
    runs = []
    for vectors in (2, 4):
        monkeypatch.setattr(K, "DIRECT_VECTORS", vectors)
        runs.append(_direct(x, w, b, dy, p, relu=True))
    for two, four in zip(*runs):
        np.testing.assert_array_equal(two, four)


def test_the_weight_gradient_does_not_depend_on_the_thread_count():
    x, w, b, dy, geom = _data(5, 3, 4, 9, 9, 3, 3, 1, dtype=np.float32)
    old = K._nb.get_num_threads()
    try:
        results = []
        for threads in (1, old):
            K.set_num_threads(threads)
            results.append(_direct(x, w, b, dy, 1)[2])
    finally:
        K.set_num_threads(old)
    np.testing.assert_array_equal(results[0], results[1])


def test_direct_only_where_it_applies():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 9, 9))
    with conv_algo.algorithm("direct"):
        for shape, s, p in (((3, 2, 9, 9), 1, 0),                  # the kernel covers the input: a product
                            ((CD.MAX_CHANNELS + 1, 2, 3, 3), 1, 1),    # too many channels
                            ((CD.MAX_CHANNELS + 1, 2, 3, 3), 2, 1)):
            w = rng.standard_normal(shape)
            y, cache = conv_fast.conv2d_forward(x, w, None, s, p)
            assert not isinstance(cache, CD.DirectCache)
            np.testing.assert_allclose(y, conv.conv2d_forward(x, w, None, s, p)[0], rtol=1e-12)
        with K.kernels(False):                                     # no compiled kernels: im2col
            _, cache = conv_fast.conv2d_forward(x, rng.standard_normal((3, 2, 3, 3)), None, 1, 1)
            assert not isinstance(cache, CD.DirectCache)


def test_auto_times_direct_beside_the_others_and_times_again_a_choice_made_without_it(tmp_path, monkeypatch):
    import json
    monkeypatch.setenv("NABI_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("NABI_CONV_ALGO", raising=False)
    conv_algo.forget()
    key = "train 64x8x32x32 -> 8 3x3 p1x1 float32"
    tmp_path.joinpath(conv_algo.CACHE_FILE).write_text(json.dumps({"format": conv_algo.FORMAT, "machines": {
        conv_algo.machine_key(): {key: {"algorithm": "winograd", "ms": {"im2col": 9.0, "winograd": 5.0}}}}}))
    try:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((64, 8, 32, 32)).astype(np.float32)
        w = (rng.standard_normal((8, 8, 3, 3)) / 9).astype(np.float32)
        _, cache = conv_fast.conv2d_forward(x, w, None, 1, 1)
        entry = json.loads(tmp_path.joinpath(conv_algo.CACHE_FILE).read_text())["machines"][conv_algo.machine_key()][key]
        assert set(entry["ms"]) == {"im2col", "winograd", "winograd4", "direct"}
        assert entry["algorithm"] == min(entry["ms"], key=entry["ms"].get)
        assert isinstance(cache, CD.DirectCache) == (entry["algorithm"] == "direct")
    finally:
        conv_algo.forget()


# Strides above 1: phase planes (``CD.strided``). (N, C, F, H, W, KH, KW, stride, padding)
STRIDED = {
    "s2_3x3p1": (2, 4, 6, 9, 8, 3, 3, 2, 1),
    "patch_descriptor_8to16_s2": (3, 8, 16, 16, 16, 3, 3, 2, 1),
    "s3_5x5p2": (2, 3, 5, 11, 13, 5, 5, 3, 2),
    "s2x1_p1x0": (2, 2, 3, 7, 9, 3, 3, (2, 1), (1, 0)),
    "1x1_s2": (1, 5, 4, 6, 6, 1, 1, 2, 0),
    "odd_channels_s2_p0": (3, 7, 11, 10, 7, 3, 3, 2, 0),
}


def _strided_data(family, dtype=np.float64, seed=0):
    n, c, f, h, w, kh, kw, s, p = STRIDED[family]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((f, c, kh, kw)) * np.sqrt(2.0 / (kh * kw * c))
    b = rng.standard_normal(f)
    geom = conv_geometry(x, wt, s, p)
    dy = rng.standard_normal((n, f, geom[6], geom[7]))
    return [a.astype(dtype) for a in (x, wt, b, dy)] + [s, p]


@pytest.fixture
def strided_calls(monkeypatch):
    """How many times the strided forward kernel ran (the real one: this only counts)."""
    return count_calls(monkeypatch, K, "direct_strided_forward")


@pytest.mark.parametrize("need_dx", [True, False], ids=["dx", "no_dx"])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("family", sorted(STRIDED))
def test_strided_direct_equals_im2col_in_float64(family, relu, need_dx, strided_calls, monkeypatch):
    x, w, b, dy, s, p = _strided_data(family)
    phase_dx_calls = count_calls(monkeypatch, K, "direct_strided_input_grad")
    results = []
    for algo in ("direct", "im2col"):
        with conv_algo.algorithm(algo):
            y, cache = conv_fast.conv2d_forward(x, w, b, s, p, relu=relu, need_dx=need_dx)
            results.append((y,) + conv_fast.conv2d_backward(dy, cache, need_dx=need_dx, relu_y=y if relu else None))
    assert strided_calls[0] == 1
    assert phase_dx_calls[0] == int(need_dx)                  # ∂L/∂x per input phase, not col2im
    for got, want in zip(*results):
        if want is None:
            assert got is None
            continue
        assert got.shape == want.shape and got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("family", sorted(STRIDED))
def test_strided_float32_error_against_float64_is_within_im2cols_bound(family):
    x, w, b, dy, s, p = _strided_data(family)
    y64, cache = conv.conv2d_forward(x, w, b, s, p)
    _, dw64, _ = conv.conv2d_backward(dy, cache)
    with conv_algo.algorithm("direct"):
        y, cache = conv_fast.conv2d_forward(*(a.astype(np.float32) for a in (x, w, b)), s, p)
        _, dw, _ = conv_fast.conv2d_backward(dy.astype(np.float32), cache)
    for got, want in ((y, y64), (dw, dw64)):
        assert got.dtype == np.float32 and _rel(got, want) < FLOAT32_BOUND


@pytest.mark.parametrize("family", ["s2_3x3p1", "s3_5x5p2", "s2x1_p1x0"])
def test_strided_layer_gradients_pass_finite_differences(family, strided_calls):
    n, c, f, h, w, kh, kw, s, p = STRIDED[family]
    rng = np.random.default_rng(3)
    with backend.default_dtype(np.float64), conv_algo.algorithm("direct"):
        net = L.Sequential(L.Conv2d(c, f, (kh, kw), stride=s, padding=p), L.ReLU(),
                           L.Conv2d(f, 3, 3, stride=2, padding=1, bias=False))
        errors = gradcheck.check_module(net, rng.standard_normal((n, c, h, w)))
    assert strided_calls[0] > 0
    assert max(errors.values()) < 1e-7, errors


class _TorchStrided(tnn.Module):
    def __init__(self, c, f, k, s, p):
        super().__init__()
        self.a = tnn.Conv2d(c, f, k, stride=s, padding=p)
        self.b = tnn.Conv2d(f, 3, 3, stride=2, padding=1, bias=False)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("family", sorted(STRIDED))
def test_strided_layer_equals_torch(family, dtype, strided_calls):
    n, c, f, h, w, kh, kw, s, p = STRIDED[family]
    with backend.default_dtype(dtype), conv_algo.algorithm("direct"):
        net = L.Sequential(OrderedDict(a=L.Conv2d(c, f, (kh, kw), stride=s, padding=p), r=L.ReLU(),
                                       b=L.Conv2d(f, 3, 3, stride=2, padding=1, bias=False)))
        tol = dict(rtol=1e-9, atol=1e-11) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
        compare_with_torch(net, _TorchStrided(c, f, (kh, kw), s, p),
                           np.random.default_rng(5).standard_normal((n, c, h, w)), dtype=dtype, **tol)
    assert strided_calls[0] > 0


@pytest.mark.parametrize("relu", [False, True])
def test_strided_fused_sgd_updates_as_the_gradients_say(relu):
    x, w, b, dy, s, p = _strided_data("patch_descriptor_8to16_s2")
    y0, cache = conv.conv2d_forward(x, w, b, s, p)
    if relu:
        y0 = np.maximum(y0, 0)
    dx_ref, dw_ref, db_ref = conv.conv2d_backward(dy * (y0 > 0) if relu else dy, cache)
    w2, b2 = w.copy(), b.copy()
    ws = conv_fast.Workspace()
    with conv_algo.algorithm("direct"):
        y, cache = conv_fast.conv2d_forward(x, w2, b2, s, p, relu=relu, workspace=ws)
        assert isinstance(cache, CD.DirectCache)
        dx = conv_fast.conv2d_sgd_backward(dy, cache, w2, b2, 0.5, relu_y=y if relu else None, workspace=ws)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-11, atol=1e-12)            # with the old weights
    np.testing.assert_allclose(w2, w - 0.5 * dw_ref, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(b2, b - 0.5 * db_ref, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_strided_input_gradient_per_phase_equals_col2im_on_many_geometries(dtype):
    # Kernels of 1 to 5 taps, wider or narrower than strides of 2 and 3 (a phase no tap reads has a zero ∂x),
    # padding 0 to 2, odd and even sizes, unequal strides, with and without a fused ReLU's mask.
    rng = np.random.default_rng(7)
    cases = [(h, w, k, s, p) for h in (5, 8, 9) for w in (6, 9) for k in (1, 2, 3, 5) for s in (2, 3)
             for p in (0, 1, 2) if p < k and h + 2 * p >= k and w + 2 * p >= k] + [(7, 9, 3, (2, 1), (1, 0))]
    for h, w, k, s, p in cases:
        x = rng.standard_normal((2, 3, h, w))
        wt = rng.standard_normal((4, 3, k, k))
        geom = conv_geometry(x, wt, s, p)
        y, cache = conv.conv2d_forward(x, wt, None, s, p)
        dy = rng.standard_normal(y.shape)
        mask = rng.standard_normal(y.shape)
        for relu_y in (None, mask):
            want = conv.conv2d_backward(dy if relu_y is None else dy * (relu_y > 0), cache)[0]
            got = K.direct_strided_input_grad(dy.astype(dtype), wt.astype(dtype), x.shape, geom,
                                              None if relu_y is None else relu_y.astype(dtype))
            assert got.dtype == dtype and got.shape == x.shape
            tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(got, want, **tol, err_msg=str((h, w, k, s, p)))
    assert len(cases) > 50


def test_strided_kernels_compute_the_same_bits_whatever_the_threads_and_register_block(monkeypatch):
    x, w, b, dy, s, p = _strided_data("patch_descriptor_8to16_s2", dtype=np.float32)
    old = K._nb.get_num_threads()
    runs = []
    try:
        for threads, limit, vectors in ((1, 1 << 40, 2), (1, 0, 4), (old, 0, 2), (old, 0, 4)):
            K.set_num_threads(threads)
            monkeypatch.setattr(K, "PARALLEL_MIN_ELEMENTS", limit)
            monkeypatch.setattr(K, "DIRECT_VECTORS", vectors)
            with conv_algo.algorithm("direct"):
                y, cache = conv_fast.conv2d_forward(x, w, b, s, p, relu=True)
                runs.append((y,) + conv_fast.conv2d_backward(dy, cache, relu_y=y))
    finally:
        K.set_num_threads(old)
    for other in runs[1:]:
        for a, e in zip(other, runs[0]):
            np.testing.assert_array_equal(a, e)
