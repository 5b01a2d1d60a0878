"""float16 reductions: every sum over float16 values accumulates in float32.

A float16 sum overflows past 65 504 and, accumulated in float16, stops growing long
before (2048 + 1 rounds back to 2048). Each case below builds a float16 input whose
naive float16 reduction fails (checked first, so the case cannot pass vacuously),
then runs the op and compares it with the same op in float64 on the same float16
values. Runs on NumPy, on the emulated CuPy and on CuPy where a GPU is present.
"""
import copy

import numpy as np
import pytest

from nabi import backend, layers as L, models
from nabi import optim
from nabi.training.amp import DynamicLossScaler, MixedPrecision
from nabi.functional import activation as A, loss as LF, norm as NF, pool as PF

F16_MAX = float(np.finfo(np.float16).max)


def naive_fails(terms, axis=None):
    """Precondition: NumPy's float16 sum of ``terms`` is not finite, or off by more than 10 %."""
    with np.errstate(over="ignore", invalid="ignore"):
        naive = np.asarray(terms, np.float16).sum(axis=axis).astype(np.float64)
    exact = np.asarray(terms, np.float64).sum(axis=axis)
    if not np.isfinite(naive).all():
        return True
    return bool(np.max(np.abs(naive - exact)) > 0.1 * np.max(np.abs(exact)))


def host(a):
    return backend.to_numpy(a)


def f64(a):
    return host(a).astype(np.float64)


def close(got, want, rtol, scale=None):
    """Finite, and |got − want| ≤ rtol · scale elementwise (scale: max |want| unless given)."""
    got = host(got).astype(np.float64)
    assert np.isfinite(got).all()
    scale = np.max(np.abs(want)) if scale is None else scale
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale)


# ---------------------------------------------------------------------------
# batch norm
# ---------------------------------------------------------------------------
def bn_case(shape=(64, 4, 32, 32), seed=0):
    rng = np.random.default_rng(seed)
    x = (10.0 + 3.0 * rng.standard_normal(shape)).astype(np.float16)       # M·σ² = 65536 · 9
    gamma = (1.0 + 0.1 * rng.standard_normal(shape[1])).astype(np.float16)
    beta = (0.1 * rng.standard_normal(shape[1])).astype(np.float16)
    return x, gamma, beta


def test_batch_norm_statistics_and_output_in_float16(xp):
    x, gamma, beta = bn_case()
    with np.errstate(over="ignore", invalid="ignore"):
        assert not np.isfinite(x.var(axis=(0, 2, 3))).all()              # NumPy's float16 var overflows
    rm, rv = xp.zeros(4, np.float32), xp.ones(4, np.float32)
    y, _ = NF.batch_norm_forward(xp.asarray(x), xp.asarray(gamma), xp.asarray(beta), rm, rv, True)
    rm64, rv64 = np.zeros(4), np.ones(4)
    y64, _ = NF.batch_norm_forward(x.astype(np.float64), gamma.astype(np.float64), beta.astype(np.float64),
                                   rm64, rv64, True)
    assert host(y).dtype == np.float16
    assert host(rm).dtype == np.float32 and host(rv).dtype == np.float32
    close(rm, rm64, 1e-5)
    close(rv, rv64, 1e-5)
    close(y, y64, 2e-3)                       # float16 output: half an ulp at |y| ≈ 4 is 2e-3 · 4
    per_channel_std = host(y).astype(np.float64).std(axis=(0, 2, 3))
    np.testing.assert_allclose(per_channel_std, np.abs(gamma.astype(np.float64)), rtol=1e-2)   # no collapse


def test_batch_norm_eval_with_float32_buffers_and_float16_input(xp):
    x, gamma, beta = bn_case((8, 4, 8, 8))
    rm = np.array([10.0, 9.0, 11.0, 10.5], np.float32)
    rv = np.array([9e4, 8e4, 1e5, 7e4], np.float32)             # beyond float16: σ² must stay float32
    y, _ = NF.batch_norm_forward(xp.asarray(x), xp.asarray(gamma), xp.asarray(beta), xp.asarray(rm),
                                 xp.asarray(rv), False)
    y64, _ = NF.batch_norm_forward(x.astype(np.float64), gamma.astype(np.float64), beta.astype(np.float64),
                                   rm.astype(np.float64), rv.astype(np.float64), False)
    close(y, y64, 2e-3)


def test_batch_norm_backward_sums_in_float16(xp):
    """Σ δ and Σ δ·x̂ over the first half of the batch pass 65 504 and the second half cancels
    them: the float16 sums overflow, the float32 ones give dx, dγ, dβ of float64's accuracy."""
    x, gamma, beta = bn_case((64, 4, 16, 16), seed=1)
    x64 = x.astype(np.float64)
    _, cache64 = NF.batch_norm_forward(x64, gamma.astype(np.float64), beta.astype(np.float64),
                                       np.zeros(4), np.ones(4), True)
    x_hat = cache64[0]
    sign = np.where(np.arange(64) < 32, 1.0, -1.0)[:, None, None, None]
    dy = (sign * (10.0 * x_hat + 10.0)).astype(np.float16)
    assert naive_fails(np.moveaxis(dy, 1, -1).reshape(-1, 4), axis=0)
    assert naive_fails(np.moveaxis(dy * x_hat.astype(np.float16), 1, -1).reshape(-1, 4), axis=0)

    rm, rv = xp.zeros(4, np.float32), xp.ones(4, np.float32)
    _, cache = NF.batch_norm_forward(xp.asarray(x), xp.asarray(gamma), xp.asarray(beta), rm, rv, True)
    dx, dgamma, dbeta = NF.batch_norm_backward(xp.asarray(dy), cache)
    dx64, dgamma64, dbeta64 = NF.batch_norm_backward(dy.astype(np.float64), cache64)
    assert host(dx).dtype == host(dgamma).dtype == host(dbeta).dtype == np.float16
    close(dx, dx64, 2e-3)
    terms = np.abs(dy.astype(np.float64) * x_hat).sum(axis=(0, 2, 3)).max()     # size of the summed terms
    close(dgamma, dgamma64, 1e-3, scale=terms)
    close(dbeta, dbeta64, 1e-3, scale=np.abs(dy.astype(np.float64)).sum(axis=(0, 2, 3)).max())


def test_mixed_precision_keeps_batch_norm_buffers_float32():
    rng = np.random.default_rng(0)
    net = L.Sequential(L.Conv2d(3, 4, 3, padding=1, rng=rng), L.BatchNorm2d(4), L.ReLU(), L.Flatten(),
                       L.Linear(4 * 8 * 8, 3, rng=rng))
    amp = MixedPrecision(net, optim.SGD(net.named_parameters(), lr=0.1), scaler=DynamicLossScaler(2.0 ** 8))
    assert all(b.dtype == np.float32 for _, b in net.named_buffers())
    x = (20.0 * rng.standard_normal((32, 3, 8, 8))).astype(np.float32)
    loss = L.CrossEntropyLoss()
    loss(net(amp.cast_input(x)).astype(np.float32), rng.integers(0, 3, 32))
    net.zero_grad()
    amp.backward(loss.backward())
    assert amp.step()
    bn = net[1]
    assert bn.running_mean.dtype == np.float32 and bn.running_var.dtype == np.float32
    assert np.isfinite(bn.running_var).all() and (bn.running_var > 1.0).all()
    assert all(v.dtype == np.float32 for v in amp.master_state_dict().values())


def test_resnet20_float16_training_step_at_batch_64():
    """resnet20, batch 64 of 8×8 inputs with standard deviation 8: the first batch norm sees
    M = 64·8·8 = 4096 values per channel with σ² ≫ 16, so M·σ² passes 65 504."""
    rng = np.random.default_rng(0)
    net = models.resnet20(num_classes=10)
    ref = copy.deepcopy(net)
    x = (8.0 * rng.standard_normal((64, 3, 8, 8))).astype(np.float32)
    y = rng.integers(0, 10, 64)
    loss32 = L.CrossEntropyLoss()(ref(x), y)
    M = 64 * 8 * 8
    sigma2 = (ref.bn1.running_var.astype(np.float64) - 0.9) / 0.1 * (M - 1) / M   # r = 0.9·1 + 0.1·M/(M−1)·σ²
    assert M * sigma2.min() > F16_MAX

    amp = MixedPrecision(net, optim.SGD(net.named_parameters(), lr=0.1, momentum=0.9),
                         scaler=DynamicLossScaler(init_scale=2.0 ** 8))
    loss_fn = L.CrossEntropyLoss()
    loss16 = loss_fn(net(amp.cast_input(x)).astype(np.float32), y)
    net.zero_grad()
    amp.backward(loss_fn.backward())
    assert amp.step()                                                  # finite gradients, step taken
    assert np.isfinite(loss16) and abs(loss16 - loss32) < 0.05 * loss32
    for (name, b16), (_, b32) in zip(net.named_buffers(), ref.named_buffers()):
        assert b16.dtype == np.float32 and np.isfinite(b16).all(), name
        if name.endswith("running_var"):
            np.testing.assert_allclose(b16, b32, rtol=2e-2, err_msg=name)


# ---------------------------------------------------------------------------
# softmax, log-softmax, cross-entropy, mean squared error
# ---------------------------------------------------------------------------
K_BIG = 70_000                      # more classes than float16's largest finite value


def test_softmax_and_log_softmax_over_70000_classes(xp):
    rng = np.random.default_rng(2)
    x = (1000.0 - 2.0 * (rng.random((2, K_BIG)) < 0.02)).astype(np.float16)   # Σ e^(x − max) ≈ 68 700
    x64 = x.astype(np.float64)
    assert naive_fails(np.exp(x64 - x64.max(axis=1, keepdims=True)), axis=1)
    p = A.softmax(xp.asarray(x), axis=1)
    logp = A.log_softmax(xp.asarray(x), axis=1)
    assert host(p).dtype == host(logp).dtype == np.float16
    p64, logp64 = A.softmax(x64, axis=1), A.log_softmax(x64, axis=1)
    close(logp, logp64, 1e-3)
    close(p, p64, 1e-2)                  # p ≈ 1.4e-5 is subnormal in float16: 6e-8 steps
    np.testing.assert_allclose(f64(p).sum(axis=1), 1.0, rtol=1e-2)


def test_softmax_backward_sums_along_a_strided_axis(xp):
    """Σ_k δ_k y_k over 70 000 classes on axis 0: accumulated in float16 it stalls near 2048."""
    rng = np.random.default_rng(3)
    x = (0.5 * rng.standard_normal((K_BIG, 3))).astype(np.float16)
    dy = (30000.0 + 100.0 * rng.standard_normal((K_BIG, 3))).astype(np.float16)
    y, cache = A.softmax_forward(xp.asarray(x), axis=0)
    y64, dy64 = f64(y), dy.astype(np.float64)                  # the reference uses the same float16 y
    assert naive_fails(dy64 * y64, axis=0)
    dx = A.softmax_backward(xp.asarray(dy), cache)
    dx64 = A.softmax_backward(dy64, (y64, 0))
    assert host(dx).dtype == np.float16
    close(dx, dx64, 2e-3)


def test_log_softmax_backward_sum_of_upstream_gradients(xp):
    rng = np.random.default_rng(4)
    x = (0.5 * rng.standard_normal((2, K_BIG))).astype(np.float16)
    dy = (1.0 + 0.1 * rng.standard_normal((2, K_BIG))).astype(np.float16)
    assert naive_fails(dy, axis=1)
    y, cache = A.log_softmax_forward(xp.asarray(x), axis=1)
    dx = A.log_softmax_backward(xp.asarray(dy), cache)
    dx64 = A.log_softmax_backward(dy.astype(np.float64), (f64(y), 1))     # the same float16 log p
    assert host(dx).dtype == np.float16
    close(dx, dx64, 2e-3)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_over_70000_examples(xp, smoothing):
    """N = 70 000 overflows float16 itself, and so does Σ_n −log p[n, y_n] ≈ 70 000 · 3."""
    rng = np.random.default_rng(5)
    z = (3.0 * rng.standard_normal((K_BIG, 5))).astype(np.float16)
    labels = rng.integers(0, 5, K_BIG)
    z64 = z.astype(np.float64)
    assert naive_fails(-A.log_softmax(z64, axis=1)[np.arange(K_BIG), labels])
    loss, cache = LF.cross_entropy_forward(xp.asarray(z), xp.asarray(labels), label_smoothing=smoothing)
    loss64, cache64 = LF.cross_entropy_forward(z64, labels, label_smoothing=smoothing)
    assert host(loss).dtype == np.float16
    close(loss, loss64, 1e-3)
    dz = LF.cross_entropy_backward(cache, dloss=float(K_BIG))     # (p − q) per example, O(1)
    dz64 = LF.cross_entropy_backward(cache64, dloss=float(K_BIG))
    assert host(dz).dtype == np.float16
    close(dz, dz64, 2e-3)


def test_mse_of_float16_differences_past_256_squared(xp):
    rng = np.random.default_rng(6)
    y = (200.0 * rng.standard_normal((64, 10))).astype(np.float16)      # mean (y − t)² ≈ 40 000
    t = np.zeros_like(y)
    d64 = y.astype(np.float64)
    assert naive_fails(d64 * d64)
    loss, _ = LF.mse_forward(xp.asarray(y), xp.asarray(t))
    loss64, _ = LF.mse_forward(d64, t.astype(np.float64))
    close(loss, loss64, 1e-3)


# ---------------------------------------------------------------------------
# local response normalisation
# ---------------------------------------------------------------------------
def test_lrn_forward_and_backward_of_large_activations(xp):
    """x ≈ 300: x² > 65 504 already, and the running sum over 16 channels even more so."""
    rng = np.random.default_rng(7)
    x = (300.0 * rng.standard_normal((2, 16, 4, 4))).astype(np.float16)
    dy = rng.standard_normal(x.shape).astype(np.float16)
    x64 = x.astype(np.float64)
    assert naive_fails(x64 * x64, axis=1)
    y, cache = NF.lrn_forward(xp.asarray(x), 5, alpha=1e-3, beta=0.75, k=2.0)
    y64, cache64 = NF.lrn_forward(x64, 5, alpha=1e-3, beta=0.75, k=2.0)
    assert host(y).dtype == np.float16
    close(y, y64, 2e-3)
    dx = NF.lrn_backward(xp.asarray(dy), cache)
    dx64 = NF.lrn_backward(dy.astype(np.float64), cache64)
    assert host(dx).dtype == np.float16
    close(dx, dx64, 2e-3)


# ---------------------------------------------------------------------------
# average pooling
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_windows_of_large_values(xp, count_include_pad):
    """3×3 windows of values ≈ 20 000: their float16 sum overflows, their mean does not."""
    rng = np.random.default_rng(8)
    x = (20000.0 + 1000.0 * rng.standard_normal((2, 3, 9, 9))).astype(np.float16)
    dy = rng.standard_normal((2, 3, 5, 5)).astype(np.float16)
    assert naive_fails(x[:, :, :3, :3].astype(np.float64).reshape(2, 3, 9), axis=2)
    args = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=count_include_pad)
    y, cache = PF.avg_pool2d_forward(xp.asarray(x), **args)
    y64, cache64 = PF.avg_pool2d_forward(x.astype(np.float64), **args)
    assert host(y).dtype == np.float16 and y.shape == (2, 3, 5, 5)
    close(y, y64, 1e-3)
    dx = PF.avg_pool2d_backward(xp.asarray(dy), cache)
    dx64 = PF.avg_pool2d_backward(dy.astype(np.float64), cache64)
    assert host(dx).dtype == np.float16
    close(dx, dx64, 1e-3)


@pytest.mark.parametrize("output_size", [1, (2, 2), (3, 2)])
def test_adaptive_avg_pool_of_large_values(xp, output_size):
    rng = np.random.default_rng(9)
    x = (20000.0 + 1000.0 * rng.standard_normal((2, 3, 16, 16))).astype(np.float16)
    assert naive_fails(x[:, :, :5, :5].astype(np.float64).reshape(2, 3, 25), axis=2)
    y, _ = PF.adaptive_avg_pool2d_forward(xp.asarray(x), output_size)
    y64, _ = PF.adaptive_avg_pool2d_forward(x.astype(np.float64), output_size)
    assert host(y).dtype == np.float16
    close(y, y64, 1e-3)


# ---------------------------------------------------------------------------
# gradient norms
# ---------------------------------------------------------------------------
def test_clip_grad_norm_of_float16_gradients(xp):
    rng = np.random.default_rng(10)
    grads = [(300.0 * rng.standard_normal(2000)).astype(np.float16),
             (100.0 * rng.standard_normal((50, 40))).astype(np.float16)]
    assert naive_fails(grads[0].astype(np.float64) ** 2)
    params = []
    for g in grads:
        p = L.Parameter(xp.zeros(g.shape, np.float16))
        p.grad = xp.asarray(g.copy())
        params.append(p)
    exact = float(np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads)))
    total = optim.clip_grad_norm(params, max_norm=1000.0)
    assert np.isfinite(total) and abs(total - exact) <= 1e-3 * exact
    for p, g in zip(params, grads):
        assert host(p.grad).dtype == np.float16
        close(p.grad, g.astype(np.float64) * (1000.0 / exact), 2e-3)


# ---------------------------------------------------------------------------
# bias gradients of convolution and fully connected layers
# ---------------------------------------------------------------------------
def _up_then_down(rows, cols):
    """(rows, cols) float16: +2 in the first half of the rows, −2 in the second. Exact column sums are 0; a
    float16 running sum climbs to 4096, where adding 2 no longer changes it, and ends near −36 000."""
    half = rows // 2
    return np.concatenate([np.full((half, cols), 2.0), np.full((rows - half, cols), -2.0)]).astype(np.float16)


def _half(layer, xp):
    """The layer with float16 parameters on the device of ``xp``."""
    layer.to("cpu" if xp is np else "gpu")
    for p in layer.parameters():
        p.data = xp.asarray(host(p.data).astype(np.float16))
    return layer


def test_conv2d_bias_gradient_of_80000_positions(xp):
    conv = _half(L.Conv2d(3, 2, 1), xp)
    x = np.random.default_rng(1).standard_normal((80, 3, 32, 32)).astype(np.float16)
    rows = _up_then_down(80 * 32 * 32, 2)                          # (N·H·W, F), positions in order
    assert naive_fails(rows, axis=0)
    dy = np.ascontiguousarray(rows.reshape(80, 32, 32, 2).transpose(0, 3, 1, 2))
    conv.train()
    conv.zero_grad()
    conv(xp.asarray(x))
    conv.backward(xp.asarray(dy))
    close(conv.bias.grad, dy.astype(np.float64).sum(axis=(0, 2, 3)), rtol=0, scale=1.0)


def test_linear_bias_gradient_of_80000_examples(xp):
    fc = _half(L.Linear(4, 3), xp)
    x = np.random.default_rng(3).standard_normal((80_000, 4)).astype(np.float16)
    dy = _up_then_down(80_000, 3)
    assert naive_fails(dy, axis=0)
    fc.train()
    fc.zero_grad()
    fc(xp.asarray(x))
    fc.backward(xp.asarray(dy))
    close(fc.bias.grad, dy.astype(np.float64).sum(axis=0), rtol=0, scale=1.0)
