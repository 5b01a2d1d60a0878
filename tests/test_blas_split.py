"""``functional.blas.matmul``: products split over nabi's threads equal NumPy's, whatever the shape, layout or
number of callers, and the BLAS's own thread count is back to what it was once they return."""
import threading

import numpy as np
import pytest

from nabi.functional import blas

threadpoolctl = pytest.importorskip("threadpoolctl")
numba = pytest.importorskip("numba")


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.setattr(blas, "gemm_threads", lambda: 2)
    monkeypatch.setattr(blas, "SPLIT_MIN_FLOPS", 1)
    monkeypatch.setattr(blas, "MIN_BLOCK", 4)


def _blas_threads():
    return sorted((i["filepath"], i["num_threads"]) for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas")


def _split_count(monkeypatch):
    """Count the blocks (single-threaded BLAS calls) of split products."""
    calls = []
    real = blas._block

    def counting(a, b, out):
        calls.append(a.shape)
        real(a, b, out)
    monkeypatch.setattr(blas, "_block", counting)
    return calls


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shapes", [((6, 40), (40, 90)), ((90, 40), (40, 6)), ((3, 7, 5), (3, 5, 50)),
                                    ((16, 6, 9), (16, 9, 8))], ids=["columns", "rows", "few-matrices", "stack"])
def test_split_product_equals_numpy(two_threads, monkeypatch, shapes, dtype):
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal(s).astype(dtype) for s in shapes)
    before = _blas_threads()
    calls = _split_count(monkeypatch)
    got = blas.matmul(a, b)
    assert len(calls) > 1                                           # it was split
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(got, a @ b, rtol=tol, atol=tol)
    assert got.dtype == dtype
    out = np.full(got.shape, np.nan, dtype)
    assert blas.matmul(a, b, out=out) is out
    np.testing.assert_allclose(out, a @ b, rtol=tol, atol=tol)
    assert _blas_threads() == before


def test_transposed_views_and_a_view_as_output(two_threads):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((50, 12)).T                            # (12, 50), column-major
    b = rng.standard_normal((70, 50)).T                            # (50, 70)
    big = np.zeros((20, 80))
    blas.matmul(a, b, out=big[3:15, 5:75])
    np.testing.assert_allclose(big[3:15, 5:75], a @ b, rtol=1e-12)
    assert not big[:3].any() and not big[15:].any() and not big[:, :5].any() and not big[:, 75:].any()
    s = rng.standard_normal((4, 9, 30)).transpose(0, 2, 1)         # stacks of transposed matrices
    t = rng.standard_normal((4, 9, 40))
    np.testing.assert_allclose(blas.matmul(s, t), s @ t, rtol=1e-12)


def test_small_products_other_dtypes_and_one_thread_are_one_call(monkeypatch):
    calls = _split_count(monkeypatch)
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((8, 8)), rng.standard_normal((8, 8))
    blas.matmul(a, b)                                               # under SPLIT_MIN_FLOPS
    monkeypatch.setattr(blas, "SPLIT_MIN_FLOPS", 1)
    monkeypatch.setattr(blas, "gemm_threads", lambda: 2)
    blas.matmul(a.astype(np.float16), b.astype(np.float16))        # float16: NumPy's own loops
    blas.matmul(a.astype(np.float32), b)                           # mixed dtypes
    monkeypatch.setenv("NABI_GEMM", "blas")
    blas.matmul(a, b)
    monkeypatch.delenv("NABI_GEMM")
    monkeypatch.setattr(blas, "gemm_threads", lambda: 1)
    blas.matmul(a, b)
    assert calls == []                                              # none went through the split


def test_many_callers_at_once_get_the_serial_results_and_the_blas_threads_back(two_threads):
    rng = np.random.default_rng(3)
    pairs = [(rng.standard_normal((20, 30)), rng.standard_normal((30, 60 + i))) for i in range(8)]
    serial = [blas.matmul(a, b) for a, b in pairs]
    before = _blas_threads()
    results = [None] * len(pairs)
    start = threading.Barrier(len(pairs))

    def run(i):
        start.wait()
        for _ in range(20):
            results[i] = blas.matmul(*pairs[i])
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(pairs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, serial):
        np.testing.assert_array_equal(got, want)                   # same blocks, same bits
    assert _blas_threads() == before
    assert blas._single_blas.active == 0
