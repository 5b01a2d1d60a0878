"""Engine: im2col against the loop formulas, textbook worked examples, bad input, overfitting."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import nabi
from nabi import backend, init
from nabi import functional as F
from nabi import layers as L
from nabi.functional.shape import check_divides, output_size
from strategies import square_window


# --- im2col path == the slow loop reference -----------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 3), f=st.integers(1, 3),
       geometry=square_window((3, 10), (1, 5), (1, 3), (0, 2)))
def test_im2col_conv_equals_loop_reference(n, c, f, geometry):
    h, w, k, s, p = geometry
    rng = np.random.default_rng(h * 31 + w)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((f, c, k, k))
    b = rng.standard_normal(f)
    y, cache = F.conv2d_forward(x, wt, b, s, p)
    np.testing.assert_allclose(y, F.conv2d_reference_forward(x, wt, b, s, p), rtol=1e-10, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = F.conv2d_backward(dy, cache)
    rdx, rdw, rdb = F.conv2d_reference_backward(dy, x, wt, s, p)
    np.testing.assert_allclose(dx, rdx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dw, rdw, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(db, rdb, rtol=1e-10, atol=1e-12)


def test_one_dimensional_formula():
    """The 1-D case O_i = Σ_j w_j x_(i+j−1), written as a 1×K convolution."""
    x = np.array([1.0, 2.0, -1.0, 3.0, 0.5]).reshape(1, 1, 1, 5)
    w = np.array([0.5, -1.0, 2.0]).reshape(1, 1, 1, 3)
    y, cache = F.conv2d_forward(x, w)
    expect = [sum(w[0, 0, 0, j] * x[0, 0, 0, i + j] for j in range(3)) for i in range(3)]
    np.testing.assert_allclose(y.ravel(), expect)
    dy = np.array([1.0, -2.0, 0.5]).reshape(1, 1, 1, 3)
    dx, dw, _ = F.conv2d_backward(dy, cache)
    # ∂L/∂w_j = Σ_i δ_i x_(i+j−1);  ∂L/∂x = full convolution of δ with the flipped kernel
    np.testing.assert_allclose(dw.ravel(), [sum(dy.ravel()[i] * x.ravel()[i + j] for i in range(3)) for j in range(3)])
    np.testing.assert_allclose(dx.ravel(), np.convolve(dy.ravel(), w.ravel(), mode="full"))


# --- worked examples (cs231n's, AlexNet's and the 2019 report's) --------------------------------
def test_seven_by_seven_input_with_a_3x3_filter():
    assert output_size(7, 3, 1, 0) == 5
    assert output_size(7, 3, 2, 0) == 3
    # stride 3 does not tile 7 with a 3×3 filter: (7 − 3)/3 + 1 = 2.33 — nabi floors to 2 (as PyTorch),
    # and check_divides tells a caller who wants to refuse it.
    assert output_size(7, 3, 3, 0) == 2
    assert not check_divides(7, 3, 3, 0) and check_divides(7, 3, 2, 0)
    y = L.Conv2d(1, 1, 3, stride=3)(np.zeros((1, 1, 7, 7), np.float32))
    assert y.shape == (1, 1, 2, 2)


def test_ten_5x5_filters_pad2():
    conv = L.Conv2d(3, 10, 5, stride=1, padding=2)
    assert conv(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 10, 32, 32)
    assert conv.num_parameters() == 760                         # (5·5·3 + 1)·10


def test_same_padding_7x7():
    conv = L.Conv2d(3, 4, 7, padding="same")
    assert conv.padding == (3, 3)
    assert conv(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 4, 32, 32)


def test_alexnet_first_layer():
    conv = L.Conv2d(3, 96, 11, stride=4)
    assert conv(np.zeros((1, 3, 227, 227), np.float32)).shape == (1, 96, 55, 55)
    assert conv.num_parameters() == 34944                       # (11·11·3 + 1)·96


def test_alexnet336_pooling_shapes():
    assert L.MaxPool2d(3, 2)(np.zeros((1, 96, 81, 81), np.float32)).shape == (1, 96, 40, 40)
    assert L.MaxPool2d(3, 2)(np.zeros((1, 256, 40, 40), np.float32)).shape == (1, 256, 19, 19)
    assert L.MaxPool2d(3, 2, ceil_mode=True)(np.zeros((1, 256, 40, 40), np.float32)).shape == (1, 256, 20, 20)


# --- initialisers ----------------------------------------------------------------------------------
def test_he_uniform_bounds():
    conv = L.Conv2d(96, 256, 5, init="he_uniform", rng=np.random.default_rng(0))
    bound = math.sqrt(6 / (96 * 25))
    w = conv.weight.data
    assert w.dtype == np.float32 and w.min() >= -bound and w.max() <= bound
    assert w.max() > 0.95 * bound and w.min() < -0.95 * bound   # the whole interval is used
    lin = L.Linear(4096, 5, init="he_uniform", rng=np.random.default_rng(0))
    assert np.abs(lin.weight.data).max() <= math.sqrt(6 / 4096)


@pytest.mark.parametrize("name,std", [("he_normal", math.sqrt(2 / 400)), ("xavier_normal", math.sqrt(2 / (400 + 800)))])
def test_normal_initialisers_have_the_stated_std(name, std):
    w = init.make((32, 16, 5, 5), name, np.random.default_rng(0))
    assert abs(w.std() - std) / std < 0.03 and abs(w.mean()) < 0.01 * std * 10


def test_gaussian_and_constant_fillers():
    w = init.make((100, 100), init.gaussian(0.01), np.random.default_rng(0))
    assert abs(w.std() - 0.01) < 5e-4
    assert np.all(init.make((3,), init.constant(0.1)) == np.float32(0.1))
    with pytest.raises(ValueError, match="unknown initialiser"):
        init.make((3,), "he_uniformm")


def test_seeded_initialisation_is_reproducible():
    a = L.Conv2d(3, 4, 3, rng=np.random.default_rng(7)).weight.data
    b = L.Conv2d(3, 4, 3, rng=np.random.default_rng(7)).weight.data
    np.testing.assert_array_equal(a, b)
    nabi.seed(3)
    c = L.Linear(5, 5).weight.data
    nabi.seed(3)
    np.testing.assert_array_equal(c, L.Linear(5, 5).weight.data)


# --- bad input ----------------------------------------------------------------------------------
def test_wrong_rank_names_layer_and_shape():
    with pytest.raises(ValueError, match=r"Conv2d.*4-D input.*\(3, 32, 32\)"):
        L.Conv2d(3, 4, 3)(np.zeros((3, 32, 32), np.float32))


def test_channel_mismatch():
    with pytest.raises(ValueError, match=r"expected 3 input channels.*\(1, 1, 8, 8\)"):
        L.Conv2d(3, 4, 3)(np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"expected 10 input features"):
        L.Linear(10, 2)(np.zeros((2, 9), np.float32))


def test_integer_input_is_refused():
    with pytest.raises(TypeError, match="floating-point"):
        L.Conv2d(3, 4, 3)(np.zeros((1, 3, 8, 8), np.uint8))


def test_empty_output_is_refused():
    with pytest.raises(ValueError, match=r"too small.*output would be empty"):
        L.Conv2d(3, 4, 11, stride=4)(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="too small"):
        L.MaxPool2d(3, 2)(np.zeros((1, 3, 2, 2), np.float32))


def test_same_padding_with_stride_is_refused():
    with pytest.raises(ValueError, match="'same' needs stride 1"):
        L.Conv2d(3, 4, 3, stride=2, padding="same")


def test_bad_labels_are_refused():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        L.CrossEntropyLoss()(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(TypeError, match="integer class indices"):
        L.CrossEntropyLoss()(np.zeros((2, 3)), np.array([0.0, 1.0]))


def test_nan_input_propagates_and_is_not_hidden():
    """Documented behaviour: a NaN in the input is not silently replaced; it reaches the loss,
    which is then NaN (the trainer's NaN guard stops there with a clear message)."""
    x = np.zeros((1, 3, 8, 8), np.float32)
    x[0, 0, 4, 4] = np.nan
    net = L.Sequential(L.Conv2d(3, 2, 3), L.ReLU(), L.MaxPool2d(2), L.Flatten(), L.Linear(18, 2))
    loss = L.CrossEntropyLoss()(net(x), np.array([0]))
    assert math.isnan(loss)


def test_backward_without_forward_is_a_clear_error():
    with pytest.raises(RuntimeError, match="backward called without a forward"):
        L.Conv2d(1, 1, 3).backward(np.zeros((1, 1, 2, 2), np.float32))


# --- module API ---------------------------------------------------------------------------------
def test_state_dict_names_and_strict_loading():
    net = L.Sequential(L.Conv2d(1, 2, 3), L.BatchNorm2d(2), L.ReLU(), L.Flatten(), L.Linear(2, 3))
    sd = net.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "4.weight",
                        "4.bias"]
    bad = dict(sd)
    del bad["0.bias"]
    bad["extra"] = np.zeros(1)
    bad["4.weight"] = np.zeros((3, 5))
    with pytest.raises(KeyError) as e:
        net.load_state_dict(bad)
    msg = str(e.value)
    assert "0.bias" in msg and "extra" in msg and "4.weight" in msg
    report = net.load_state_dict(bad, strict=False)
    assert report["missing"] == ["0.bias"] and report["unexpected"] == ["extra"] and len(report["mismatched"]) == 1
    other = L.Sequential(L.Conv2d(1, 2, 3), L.BatchNorm2d(2), L.ReLU(), L.Flatten(), L.Linear(2, 3))
    other.load_state_dict(sd)
    for (k, a), b in zip(sd.items(), other.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)


def test_zero_grad_and_accumulation():
    lin = L.Linear(3, 2)
    x = np.ones((1, 3), np.float32)
    lin(x)
    lin.backward(np.ones((1, 2), np.float32))
    g1 = lin.weight.grad.copy()
    buf = lin.weight.grad
    lin(x)
    lin.backward(np.ones((1, 2), np.float32))
    np.testing.assert_allclose(lin.weight.grad, 2 * g1)           # accumulates, as PyTorch
    lin.zero_grad()
    assert lin.weight.grad is buf and not lin.weight.grad.any()   # buffer kept, zeroed


def test_train_eval_switches_every_module():
    net = L.Sequential(L.Dropout(0.5), L.Sequential(L.BatchNorm1d(3)))
    net.eval()
    assert all(not m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())


def test_tiny_cnn_overfits_one_batch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 1, 12, 12)).astype(np.float32)
    y = np.arange(8) % 4
    net = L.Sequential(L.Conv2d(1, 8, 3, padding=1, rng=rng), L.ReLU(), L.MaxPool2d(2),
                       L.Conv2d(8, 16, 3, padding=1, rng=rng), L.ReLU(), L.MaxPool2d(2), L.Flatten(),
                       L.Linear(16 * 9, 4, rng=rng))
    loss_fn = L.CrossEntropyLoss()
    first = None
    for step in range(300):
        loss = loss_fn(net(x), y)
        first = first if first is not None else loss
        net.zero_grad()
        net.backward(loss_fn.backward())
        for p in net.parameters():
            p.data -= 0.05 * p.grad
        if loss < 0.01:
            break
    assert first > 1.0 and loss < 0.01, (first, loss)


def test_backend_device_helpers():
    x = np.ones(3, np.float32)
    assert backend.get_array_module(x) is np and backend.device_of(x) == "cpu"
    assert backend.to_device(x, "cpu") is not None
    with pytest.raises(ValueError, match="device must be one of"):
        backend.to_device(x, "tpu")
    if not backend.gpu_available():
        with pytest.raises(RuntimeError, match="CuPy is not installed or sees no CUDA device"):
            backend.to_device(x, "gpu")
    with backend.default_dtype(np.float64):
        assert L.Linear(2, 2).weight.data.dtype == np.float64
    assert L.Linear(2, 2).weight.data.dtype == np.float32


def test_model_moves_between_devices(xp):
    net = L.Sequential(L.Conv2d(1, 2, 3), L.BatchNorm2d(2))
    if xp is np:
        net.to("cpu")
        assert net.device == "cpu"
        return
    net.to("gpu")
    assert net.device == "gpu" and backend.device_of(net[1].running_mean) == "gpu"
    sd = net.state_dict()                                         # host copies; the model stays on the GPU
    assert isinstance(sd["0.weight"], np.ndarray) and net.device == "gpu"
    net.load_state_dict(sd)
    assert backend.device_of(net[0].weight.data) == "gpu"


def test_chunked_im2col_equals_unchunked(monkeypatch):
    """Above COL_BUDGET_BYTES the batch is processed in chunks; results must not change."""
    from nabi.functional import conv_fast as Cv
    rng = np.random.default_rng(9)
    x = rng.standard_normal((5, 3, 9, 8))
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    dy = rng.standard_normal((5, 4, 5, 4))
    y1, c1 = Cv.conv2d_forward(x, w, b, 2, 1)
    ref = Cv.conv2d_backward(dy, c1)
    monkeypatch.setattr(Cv, "COL_BUDGET_BYTES", 2 * 27 * 20 * 8)          # two samples' columns per chunk
    y2, c2 = Cv.conv2d_forward(x, w, b, 2, 1)
    assert c2[5] is not None and len(c2[5][1]) == 3
    np.testing.assert_allclose(y2, y1, rtol=1e-12)
    for got, want in zip(Cv.conv2d_backward(dy, c2), ref):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    w1, w2 = w.copy(), w.copy()
    b1, b2 = b.copy(), b.copy()
    dx1 = Cv.conv2d_sgd_backward(dy, c1, w1, b1, 0.1)
    dx2 = Cv.conv2d_sgd_backward(dy, c2, w2, b2, 0.1)
    np.testing.assert_allclose(dx2, dx1, rtol=1e-12)
    np.testing.assert_allclose(dx1, ref[0], rtol=1e-12)
    np.testing.assert_allclose(w2, w1, rtol=1e-12)
    np.testing.assert_allclose(w1, w - 0.1 * ref[1], rtol=1e-12)


def test_import_makes_idle_threads_sleep_unless_told_otherwise():
    """`import nabi` sets OMP_WAIT_POLICY=PASSIVE and OPENBLAS_THREAD_TIMEOUT=4 when unset (idle BLAS
    and kernel threads must not spin against each other), and never overrides the user's values."""
    import os
    import subprocess
    import sys
    code = "import os, nabi; print(os.environ['OMP_WAIT_POLICY'], os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["PASSIVE", "4"]
    env.update(OMP_WAIT_POLICY="ACTIVE", OPENBLAS_THREAD_TIMEOUT="28")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["ACTIVE", "28"]
