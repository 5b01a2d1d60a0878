"""``functional.conv_fast`` (what the layers run) computes what the readable ``functional.conv`` does,
with each speed-up (kept buffers, batch chunks, fused ReLU, fused SGD) on every implementation
``dispatch`` can choose; and ``dispatch`` chooses as documented."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from nabi.functional import conv, conv_algo, conv_fast, cpu_kernels as K, dispatch


def _paths():
    return [False, True] if K.available() else [False]


@pytest.mark.parametrize("kernels", _paths(), ids=lambda k: "numba" if k else "reference")
@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 3), f=st.integers(1, 4), h=st.integers(3, 9), w=st.integers(3, 9),
       k=st.integers(1, 3), s=st.integers(1, 2), p=st.integers(0, 1), bias=st.booleans(), relu=st.booleans(),
       chunked=st.booleans(), kept=st.booleans())
def test_fast_convolution_equals_the_readable_one(kernels, n, c, f, h, w, k, s, p, bias, relu, chunked, kept):
    rng = np.random.default_rng(n + 3 * c + 7 * h + 11 * w + 13 * k)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((f, c, k, k))
    b = rng.standard_normal(f) if bias else None
    with K.kernels(kernels), conv_algo.algorithm("im2col"):     # this test is about im2col's speed-ups
        y_ref, cache_ref = conv.conv2d_forward(x, wt, b, s, p)
        dy = rng.standard_normal(y_ref.shape)
        if relu:                                            # the ReLU after the convolution, by hand
            y_ref = np.maximum(y_ref, 0)
            dy_in = dy * (y_ref > 0)
        else:
            dy_in = dy
        dx_ref, dw_ref, db_ref = conv.conv2d_backward(dy_in, cache_ref)
        saved = conv_fast.COL_BUDGET_BYTES
        conv_fast.COL_BUDGET_BYTES = c * k * k * y_ref.shape[2] * y_ref.shape[3] * 8 if chunked else saved
        try:
            ws = conv_fast.Workspace() if kept else None
            y, cache = conv_fast.conv2d_forward(x, wt, b, s, p, relu=relu, workspace=ws)
            whole = p == 0 and k == h == w                         # no columns to chunk: the input is them
            assert (cache[5] is not None) == (chunked and n > 1 and not whole)
            dx, dw, db = conv_fast.conv2d_backward(dy, cache, relu_y=y if relu else None, consume=True, workspace=ws)
            w2, b2 = wt.copy(), None if b is None else b.copy()
            y2, cache2 = conv_fast.conv2d_forward(x, w2, b2, s, p, relu=relu, workspace=ws)
            dx2 = conv_fast.conv2d_sgd_backward(dy, cache2, w2, b2, 0.5, relu_y=y2 if relu else None, workspace=ws)
        finally:
            conv_fast.COL_BUDGET_BYTES = saved
    tol = dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, y_ref, **tol)
    np.testing.assert_allclose(dx, dx_ref, **tol)
    np.testing.assert_allclose(dw, dw_ref, **tol)
    assert (db is None) == (db_ref is None) == (not bias)
    if bias:
        np.testing.assert_allclose(db, db_ref, **tol)
        np.testing.assert_allclose(b2, b - 0.5 * db_ref, **tol)
    np.testing.assert_allclose(dx2, dx_ref, **tol)                  # the input gradient uses the old weights
    np.testing.assert_allclose(w2, wt - 0.5 * dw_ref, **tol)


@pytest.mark.parametrize("kernels", _paths(), ids=lambda k: "numba" if k else "reference")
@pytest.mark.parametrize("n,c,h,w,s", [(3, 2, 4, 3, 1), (1, 3, 5, 5, 2), (4, 1, 1, 1, 1)])
def test_a_kernel_covering_the_whole_input_runs_as_a_product_with_the_input(kernels, n, c, h, w, s):
    rng = np.random.default_rng(n + c + h)
    x, wt, b = rng.standard_normal((n, c, h, w)), rng.standard_normal((5, c, h, w)), rng.standard_normal(5)
    y_ref, cache_ref = conv.conv2d_forward(x, wt, b, s, 0)
    dy = rng.standard_normal(y_ref.shape)
    dx_ref, dw_ref, db_ref = conv.conv2d_backward(dy, cache_ref)
    with K.kernels(kernels), conv_algo.algorithm("im2col"):
        assert conv_fast.whole_window(x.shape, (h, w, s, s, 0, 0, 1, 1))
        ws = conv_fast.Workspace()
        y, cache = conv_fast.conv2d_forward(x, wt, b, s, 0, workspace=ws)
        assert np.shares_memory(cache[0], x)                     # the columns are the input itself
        dx, dw, db = conv_fast.conv2d_backward(dy, cache, consume=True, workspace=ws)
        w2, b2 = wt.copy(), b.copy()
        _, cache2 = conv_fast.conv2d_forward(x, w2, b2, s, 0, workspace=ws)
        dx2 = conv_fast.conv2d_sgd_backward(dy, cache2, w2, b2, 0.5, workspace=ws)
    for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref), (db, db_ref), (dx2, dx_ref), (w2, wt - 0.5 * dw_ref)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert dx.shape == x.shape and dx.flags.c_contiguous


@pytest.mark.parametrize("kernels", _paths(), ids=lambda k: "numba" if k else "reference")
def test_an_eval_forward_builds_its_columns_in_chunks_its_scratch_holds(kernels, monkeypatch):
    rng = np.random.default_rng(2)
    x, wt, b = rng.standard_normal((7, 3, 6, 5)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    y_ref, _ = conv.conv2d_forward(x, wt, b, 1, 1)
    ws = conv_fast.Workspace()
    ws.limit, ws.shares_transients = 2 * 27 * 30 * 8, False          # the columns of two images
    monkeypatch.setattr(conv_fast, "INPUT_LAYER_CHUNK_BYTES", 64)    # (a scratch under it is not chunked into)
    with K.kernels(kernels), conv_algo.algorithm("im2col"):
        y, cache = conv_fast.conv2d_forward(x, wt, b, 1, 1, workspace=ws, purpose="eval")
    assert [e - a for a, e in cache[5][1]] == [2, 2, 2, 1]
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    if kernels:                                          # the compiled path kept one buffer for every chunk
        assert ws["colchunk"].nbytes == ws.limit


def test_the_readable_convolution_matches_the_loops():
    from nabi.functional import conv_loops
    rng = np.random.default_rng(4)
    x, wt, b = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(4)
    y, cache = conv.conv2d_forward(x, wt, b, (2, 1), (1, 0))
    np.testing.assert_allclose(y, conv_loops.conv2d_reference_forward(x, wt, b, (2, 1), (1, 0)), rtol=1e-12)
    dy = rng.standard_normal(y.shape)
    for got, want in zip(conv.conv2d_backward(dy, cache), conv_loops.conv2d_reference_backward(dy, x, wt, (2, 1),
                                                                                                (1, 0))):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_dispatch_picks_by_array_and_switch():
    x32, x16 = np.zeros((1, 1, 2, 2), np.float32), np.zeros((1, 1, 2, 2), np.float16)
    assert dispatch.for_arrays(x16) is dispatch.REFERENCE                   # no float16 kernels
    assert dispatch.for_arrays(x32, None) is dispatch.for_arrays(x32)       # None entries are ignored
    with K.kernels(False):
        assert dispatch.for_arrays(x32) is dispatch.REFERENCE
    if K.available():
        with K.kernels(True):
            assert dispatch.for_arrays(x32) is dispatch.NUMBA
            assert dispatch.for_arrays(x32, x16) is dispatch.REFERENCE      # every array must be served
    # every implementation offers every method (the compiled ones inherit what they lack)
    methods = [m for m in vars(dispatch.Reference) if not m.startswith("_")]
    for impl in (dispatch.REFERENCE, dispatch.NUMBA, dispatch.CUDA):
        assert all(callable(getattr(impl, m)) for m in methods if m not in ("name", "keeps_buffers",
                                                                              "has_batch_norm"))
    assert {"im2col", "col2im", "from_gemm", "to_gemm", "max_pool", "max_pool_backward", "relu",
            "relu_backward", "vecmat_rank1_update"} <= set(methods)
