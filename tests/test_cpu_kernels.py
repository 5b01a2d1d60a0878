"""The compiled CPU kernels (numba) against the pure-NumPy path they replace.

Every other test runs on whichever path is active (the compiled one when numba is
installed, as in CI); these compare the two directly, op by op, on random
geometries, in float64 (to 1e-12) and float32, including ties, padding, ceil mode,
overlapping windows, NaN and ±inf, and a whole network's gradients.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from nabi import functional as F
from nabi import models
from nabi.functional import cpu_kernels as K
from nabi.layers import CrossEntropyLoss
from strategies import window_axis

pytestmark = pytest.mark.skipif(not K.available(), reason="numba is not installed")


def both(fn):
    """fn() with the kernels on, then off."""
    with K.kernels(True):
        a = fn()
    with K.kernels(False):
        b = fn()
    return a, b


def close(a, b, dtype):
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5)
    if isinstance(a, tuple):
        for p, q in zip(a, b):
            close(p, q, dtype)
        return
    if a is None or b is None:
        assert a is None and b is None
        return
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a, b, **tol)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 4), f=st.integers(1, 4),
       hg=window_axis((1, 12), (1, 5), (1, 4), (0, 3)), wg=window_axis((1, 12), (1, 5), (1, 4), (0, 3)),
       bias=st.booleans(), f32=st.booleans())
def test_conv_forward_and_backward_match_numpy(n, c, f, hg, wg, bias, f32):
    (h, kh, sh, ph), (w, kw, sw, pw) = hg, wg
    dtype = np.float32 if f32 else np.float64
    rng = np.random.default_rng(n + 7 * c + 31 * h + 97 * w)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((f, c, kh, kw)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype) if bias else None

    def run():
        y, cache = F.conv2d_forward(x, wt, b, (sh, sw), (ph, pw))
        dy = np.random.default_rng(3).standard_normal(y.shape).astype(dtype)
        return (y,) + tuple(F.conv2d_backward(dy, cache))
    close(*both(run), dtype)


@pytest.mark.parametrize("row_min, tiny", [(0, 0), (10**9, 0), (0, 10**9)], ids=["row-copies", "2d-blocks", "cells"])
@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 3),
       hg=window_axis((1, 11), (1, 5), (1, 3), (0, 6)), wg=window_axis((1, 11), (1, 5), (1, 3), (0, 6)))
def test_im2col_and_col2im_equal_numpy_exactly(row_min, tiny, n, c, hg, wg):
    """A copy and its adjoint: the kernels must give NumPy's bits, padding wider than the kernel included,
    on each of im2col's copy paths (row by row for wide unstrided rows, 2-D blocks otherwise, cell by cell for
    tiny planes)."""
    (h, kh, sh, ph), (w, kw, sw, pw) = hg, wg
    saved = K.ROW_COPY_MIN_WIDTH, K.TINY_PLANE_CELLS
    K.ROW_COPY_MIN_WIDTH, K.TINY_PLANE_CELLS = row_min, tiny
    try:
        _check_im2col_col2im(n, c, h, w, kh, kw, sh, sw, ph, pw)
    finally:
        K.ROW_COPY_MIN_WIDTH, K.TINY_PLANE_CELLS = saved


def _check_im2col_col2im(n, c, h, w, kh, kw, sh, sw, ph, pw):
    from nabi.functional.conv import col2im, im2col
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    geom = (kh, kw, sh, sw, ph, pw, oh, ow)
    rng = np.random.default_rng(h + 13 * w + 7 * kh)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    want = im2col(x, geom)
    got = K.im2col(x, geom, out=np.full(want.shape, np.nan, np.float32))   # every cell written, zeros too
    np.testing.assert_array_equal(got, want)
    dcol = rng.standard_normal(want.shape).astype(np.float32)
    np.testing.assert_array_equal(K.col2im(dcol, x.shape, geom), col2im(dcol, x.shape, geom))


def test_fused_bias_relu_keeps_nan():
    ymat = np.array([[np.nan, -1.0, 2.0, -0.5]], np.float32)
    y = K.from_gemm(ymat, np.array([0.25], np.float32), 2, relu=True)
    np.testing.assert_array_equal(y.reshape(-1), [np.nan, 0.0, 2.25, 0.0])


def test_conv_chunked_path_matches(monkeypatch):
    """Above the column budget the batch is done in chunks; both paths agree there too."""
    from nabi.functional import conv_fast
    monkeypatch.setattr(conv_fast, "COL_BUDGET_BYTES", 2000)
    rng = np.random.default_rng(0)
    x, wt, b = rng.standard_normal((5, 3, 9, 8)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)

    def run():
        y, cache = conv_fast.conv2d_forward(x, wt, b, 2, 1)
        assert cache[5] is not None                      # really chunked
        return (y,) + tuple(conv_fast.conv2d_backward(np.ones_like(y), cache))
    close(*both(run), np.float64)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 3),
       hg=window_axis((1, 11), (1, 4), (1, 3), (0, 2), pooling=True),
       wg=window_axis((1, 11), (1, 4), (1, 3), (0, 2), pooling=True),
       ceil=st.booleans(), ties=st.booleans(), f32=st.booleans())
def test_max_pool_matches_numpy_including_ties(n, c, hg, wg, ceil, ties, f32):
    (h, kh, sh, ph), (w, kw, sw, pw) = hg, wg
    dtype = np.float32 if f32 else np.float64
    rng = np.random.default_rng(h * 13 + w)
    x = rng.standard_normal((n, c, h, w))
    if ties:                                             # few distinct values: many tied maxima (ReLU zeros)
        x = np.maximum(np.round(x), 0)
    x = x.astype(dtype)

    def run():
        y, cache = F.max_pool2d_forward(x, (kh, kw), (sh, sw), (ph, pw), ceil)
        dy = np.random.default_rng(5).standard_normal(y.shape).astype(dtype)
        return y, F.max_pool2d_backward(dy, cache)
    close(*both(run), dtype)


def test_max_pool_nan_and_inf_follow_pytorch():
    """A NaN wins its window and gets the gradient (PyTorch's CPU rule); -inf windows are fine."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 6))
    x[0, 0, 1, 1] = np.nan
    x[0, 0, 1, 2] = np.nan
    x[1, 2, :3, :3] = -np.inf
    x[1, 1, 4, 4] = np.inf
    with K.kernels(True):
        y, cache = F.max_pool2d_forward(x, 3, 2, 1, True)
        dy = np.arange(y.size, dtype=np.float64).reshape(y.shape) + 1
        dx = F.max_pool2d_backward(dy, cache)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, 3, 2, 1, ceil_mode=True)
    yt.backward(torch.tensor(dy))
    np.testing.assert_array_equal(y, yt.detach().numpy())        # NaN where torch has NaN
    np.testing.assert_array_equal(dx, xt.grad.numpy())
    assert np.isnan(y[0, 0]).any()


@pytest.mark.parametrize("k, ceil, pad", [(2, False, 0), (3, False, 0), (3, True, 0), (3, False, 1), (3, True, 1)])
@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (1, 2, 7, 9)])       # even, and odd (a last row/column unread or cut)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_2x2_and_3x3_stride_2_max_pools_equal_the_general_kernel_and_numpy(shape, dtype, k, ceil, pad):
    """``_max_pool_2x2`` and ``_max_pool_3x3s2`` (AlexNet's, with ceil mode's windows cut by the edge; ResNet's,
    padding 1) against the general loop and the NumPy reference, with tied maxima (ReLU zeros), a NaN (PyTorch's
    rule: it wins and takes the gradient) and ±inf."""
    rng = np.random.default_rng(3)
    x = np.maximum(np.round(rng.standard_normal(shape) * 2), 0).astype(dtype)
    x[0, 0, 2, 3], x[0, 0, 3, 2] = np.nan, np.nan
    x[-1, -1, pad:pad + 2, pad:pad + 2] = -np.inf     # (a window of -inf and padding alone: against PyTorch above)
    x[-1, 0, 4, 4] = np.inf
    y_ref, _ = F.max_pool2d_forward(x, k, 2, pad, ceil)
    g = (k, k, 2, 2, pad, pad) + y_ref.shape[2:]
    y, arg = K.max_pool(x, g)
    y_gen = np.empty_like(y)
    arg_gen = np.empty_like(arg)
    K._max_pool(x, *g, y_gen, arg_gen)
    np.testing.assert_array_equal(y, y_gen)
    np.testing.assert_array_equal(arg, arg_gen)
    dy = rng.standard_normal(y.shape).astype(dtype)

    def run():
        out, cache = F.max_pool2d_forward(x, k, 2, pad, ceil)
        return out, F.max_pool2d_backward(dy, cache)
    (y1, d1), (y2, d2) = both(run)
    np.testing.assert_array_equal(y1, y2)
    ok = np.ones(x.shape, bool)
    ok[0, 0, :6, :6] = False                    # windows with a NaN: the reference passes them no gradient
    np.testing.assert_allclose(d1[ok], d2[ok], rtol=1e-12 if dtype == np.float64 else 1e-6, atol=0)  # sums' order
    if k == 2:
        assert d1[0, 0, 3, 2] == dy[0, 0, 1, 1]     # the window's last NaN takes it, as in PyTorch


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_matches_numpy(dtype):
    x = np.random.default_rng(1).standard_normal((3, 4, 5, 6)).astype(dtype)
    x[0, 0, 0, :3] = [0.0, np.nan, -0.0]
    dy = np.random.default_rng(2).standard_normal(x.shape).astype(dtype)

    def run():
        y, cache = F.relu_forward(x)
        return y, F.relu_backward(dy, cache)
    (y1, d1), (y2, d2) = both(run)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(d1, d2)


def test_kernels_leave_other_dtypes_and_switch_off():
    assert not K.enabled(np.zeros(3, np.float16)) and not K.enabled(np.zeros(3, np.int64))
    with K.kernels(False):
        assert not K.enabled(np.zeros(3, np.float32))
    with K.kernels(True):
        assert K.enabled(np.zeros(3, np.float32))


def test_a_network_trains_identically_on_both_paths():
    """resnet20 (convs with stride and 1×1 projections, BN, max-free) and cifar_cnn (max-pool):
    logits and every parameter gradient agree between the two paths in float64."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 3, 32, 32))
    y = np.array([1, 0, 2])
    for name in ("cifar_cnn", "resnet20"):
        def run():
            from nabi.backend import default_dtype
            with default_dtype(np.float64):
                m = models.get(name, num_classes=3)
            if name in state:                             # the second path gets the first one's weights
                m.load_state_dict(state[name])
            else:
                state[name] = m.state_dict()
            m.train()
            loss = CrossEntropyLoss()
            out = m(x)
            loss(out, y)
            m.zero_grad()
            m.backward(loss.backward())
            return (out,) + tuple(p.grad.copy() for p in m.parameters())
        state = {}
        close(*both(run), np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_matches_numpy(dtype, training):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((5, 3, 7, 6)) * 3 + 2).astype(dtype)
    gamma, beta = rng.standard_normal(3).astype(dtype), rng.standard_normal(3).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)

    def run():
        rm, rv = np.full(3, 0.5, dtype), np.full(3, 2.0, dtype)
        y, cache = F.batch_norm_forward(x, gamma, beta, rm, rv, training)
        return (y,) + tuple(F.batch_norm_backward(dy, cache)) + (rm, rv)
    a, b = both(run)
    tol = dict(rtol=1e-11, atol=1e-11) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-5)
    for p, q in zip(a, b):
        assert p.dtype == q.dtype
        np.testing.assert_allclose(p, q, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_with_a_fused_relu_equals_batch_norm_then_relu(dtype, training):
    from nabi.functional import activation as A
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((5, 3, 7, 6)) * 3 + 2).astype(dtype)
    x[0, 1, 2, 3] = np.nan                              # NaN passes the ReLU as the ReLU's own does
    gamma, beta = rng.standard_normal(3).astype(dtype), rng.standard_normal(3).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)

    def separate():
        rm, rv = np.full(3, 0.5, dtype), np.full(3, 2.0, dtype)
        y, cache = F.batch_norm_forward(x, gamma, beta, rm, rv, training)
        z, rcache = A.relu_forward(y)
        return (z,) + tuple(F.batch_norm_backward(A.relu_backward(dy, rcache), cache)) + (rm, rv)

    def fused():
        rm, rv = np.full(3, 0.5, dtype), np.full(3, 2.0, dtype)
        z, cache = F.batch_norm_forward(x, gamma, beta, rm, rv, training, relu=True)
        return (z,) + tuple(F.batch_norm_backward(dy, cache, relu_y=z)) + (rm, rv)
    a, b = both(fused)
    ref = separate()
    tol = dict(rtol=1e-11, atol=1e-11) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-5)
    for p, q, r in zip(a, b, ref):
        assert p.dtype == q.dtype == r.dtype
        np.testing.assert_allclose(p, r, **tol)
        np.testing.assert_allclose(q, r, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", [dict(momentum=0.9), dict(momentum=0.9, weight_decay=1e-3),
                                dict(momentum=0.8, dampening=0.3), dict(momentum=0.9, nesterov=True, weight_decay=0.01)])
def test_sgd_momentum_step_matches_numpy_exactly(dtype, kw):
    from nabi import optim
    from nabi.layers.module import Parameter
    rng = np.random.default_rng(6)
    p0 = rng.standard_normal((7, 5)).astype(dtype)
    grads = [rng.standard_normal((7, 5)).astype(dtype) for _ in range(4)]

    def run():
        p = Parameter(p0.copy())
        opt = optim.SGD({"w": p}, lr=0.1, **kw)
        for g in grads:
            p.grad = g.copy()
            opt.step()
        return p.data, opt.state["w"]["momentum_buffer"]
    (a, ab), (b, bb) = both(run)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ab, bb)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls,kw", [("Adam", {}), ("Adam", dict(weight_decay=0.01, amsgrad=True)),
                                    ("AdamW", dict(weight_decay=0.05)), ("AdamW", dict(amsgrad=True))])
def test_adam_step_matches_numpy(dtype, cls, kw):
    """Same operations in the same order: equal to the NumPy path (float64 exactly; float32 within
    an ulp, the compiled sqrt/divide may round the last bit differently)."""
    from nabi import optim
    from nabi.layers.module import Parameter
    rng = np.random.default_rng(7)
    p0 = rng.standard_normal((6, 5)).astype(dtype)
    grads = [rng.standard_normal((6, 5)).astype(dtype) for _ in range(5)]

    def run():
        p = Parameter(p0.copy())
        opt = getattr(optim, cls)({"w": p}, lr=0.01, **kw)
        for g in grads:
            p.grad = g.copy()
            opt.step()
        return (p.data,) + tuple(opt.state["w"][k] for k in ("exp_avg", "exp_avg_sq"))
    a, b = both(run)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-15 if dtype == np.float64 else 3e-7, atol=0)
