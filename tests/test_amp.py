"""Mixed precision (float16 compute, float32 masters, dynamic loss scaling), tested on the CPU
through NumPy's float16; the same code runs on CuPy (the gpu-marked case)."""
import numpy as np
import pytest

from nabi import layers as L
from nabi import optim
from nabi.training.amp import DynamicLossScaler, MixedPrecision


def small_net(seed=0):
    rng = np.random.default_rng(seed)
    return L.Sequential(L.Conv2d(3, 8, 3, padding=1, rng=rng), L.BatchNorm2d(8), L.ReLU(), L.MaxPool2d(2),
                        L.Conv2d(8, 8, 3, padding=1, rng=rng), L.ReLU(), L.Flatten(),
                        L.Linear(8 * 4 * 4, 16, rng=rng), L.ReLU(), L.Dropout(0.0), L.Linear(16, 4, rng=rng))


def batch(seed=1, n=6):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.standard_normal((n, 3, 8, 8)).astype(np.float32) * 0.5
    x[np.arange(n), y % 3, :4, :4] += 2.0                  # a learnable signal
    return x, y


def grads_fp32(net, x, y):
    loss = L.CrossEntropyLoss()
    value = loss(net(x), y)
    net.zero_grad()
    net.backward(loss.backward())
    return value, {n: p.grad.copy() for n, p in net.named_parameters()}


def test_float16_gradients_match_float32():
    """Unscaled master gradients of the float16 run agree with the float32 gradients to float16
    accuracy (relative error of each parameter's gradient, in norm, below 1 %)."""
    x, y = batch()
    ref = small_net()
    _, g32 = grads_fp32(ref, x, y)
    net = small_net()
    opt = optim.SGD(net.named_parameters(), lr=0.1)
    masters = dict(net.named_parameters())
    amp = MixedPrecision(net, opt, scaler=DynamicLossScaler(init_scale=2.0 ** 10))
    assert all(p.data.dtype == np.float16 for p in net.parameters())
    loss = L.CrossEntropyLoss()
    value = loss(net(amp.cast_input(x)).astype(np.float32), y)
    net.zero_grad()
    amp.backward(loss.backward())
    assert amp.unscale()
    floor = 1e-2 * max(np.linalg.norm(g) for g in g32.values())   # conv bias before BN: gradient ~0
    for name, g in g32.items():
        got = masters[name].grad
        assert got.dtype == np.float32
        err = np.linalg.norm(got - g) / max(np.linalg.norm(g), floor)
        assert err < 1e-2, (name, err)


def test_overflow_skips_the_step_and_backs_off():
    x, y = batch()
    net = small_net()
    opt = optim.SGD(net.named_parameters(), lr=0.1)
    masters = {n: p.data.copy() for n, p in net.named_parameters()}
    amp = MixedPrecision(net, opt, scaler=DynamicLossScaler(init_scale=2.0 ** 40))   # float16 max is 65504
    loss = L.CrossEntropyLoss()
    loss(net(amp.cast_input(x)).astype(np.float32), y)
    net.zero_grad()
    amp.backward(loss.backward())
    assert amp.step() is False
    assert amp.scaler.scale == 2.0 ** 39 and amp.scaler.skipped == 1
    for n, p in opt.params.items():
        np.testing.assert_array_equal(p.data, masters[n])          # nothing moved
    assert opt.step_count == 0


def test_scaler_grows_after_finite_steps_and_saves_its_state():
    s = DynamicLossScaler(init_scale=8.0, growth_interval=3)
    for _ in range(3):
        s.update(False)
    assert s.scale == 16.0 and s.good_steps == 0
    s.update(False)
    s.update(True)
    assert s.scale == 8.0 and s.good_steps == 0
    t = DynamicLossScaler()
    t.load_state_dict(s.state_dict())
    assert t.state_dict() == s.state_dict()
    with pytest.raises(ValueError, match="backoff"):
        DynamicLossScaler(backoff=2.0)


def test_mixed_precision_trains_like_float32():
    x, y = batch(n=16)
    losses = {}
    for mode in ("fp32", "amp"):
        net = small_net()
        opt = optim.SGD(net.named_parameters(), lr=0.05, momentum=0.9)
        amp = MixedPrecision(net, opt) if mode == "amp" else None
        loss = L.CrossEntropyLoss()
        hist = []
        for _ in range(40):
            xin = amp.cast_input(x) if amp else x
            out = net(xin)
            hist.append(loss(out.astype(np.float32), y))
            net.zero_grad()
            if amp:
                amp.backward(loss.backward())
                amp.step()              # the first steps overflow at the default scale 2^16 and back off
            else:
                net.backward(loss.backward())
                opt.step()
        losses[mode] = hist
    assert losses["amp"][-1] < 0.3 * losses["amp"][0]
    assert abs(losses["amp"][-1] - losses["fp32"][-1]) < 0.05 + 0.1 * losses["fp32"][-1]
    assert 1 <= amp.scaler.skipped <= 8 and amp.scaler.scale < 2.0 ** 16
    state = amp.master_state_dict()
    assert all(v.dtype == np.float32 for v in state.values())


def test_refuses_non_float32_masters_and_unknown_dtype():
    net = small_net()
    opt = optim.SGD(net.named_parameters(), lr=0.1)
    with pytest.raises(ValueError, match="float16"):
        MixedPrecision(net, opt, dtype="bfloat16")
    other = optim.SGD(small_net().named_parameters(), lr=0.1)
    with pytest.raises(ValueError, match="not in the optimiser"):
        MixedPrecision(net, other)


def test_trainer_float16_saves_float32_masters_and_resumes(tmp_path):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from resume_job import make_trainer
    from nabi import files
    from nabi.training.checkpoint import latest_checkpoint, load_checkpoint

    t = make_trainer(tmp_path / "a", epochs=2, precision="float16")
    history = t.fit()
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_acc"] > 0.5                         # digits: it learns under float16
    state, _ = files.load_weights(tmp_path / "a" / "model.safetensors")
    assert all(v.dtype == np.float32 for v in state.values())
    for name, master in t.optimizer.params.items():
        np.testing.assert_array_equal(state[name], master.data)
    ck = load_checkpoint(latest_checkpoint(tmp_path / "a"))
    assert ck["state"]["amp"]["scale"] == t.amp.scaler.scale
    # a fresh trainer resumes the masters, their float16 copies and the loss scale
    u = make_trainer(tmp_path / "a", epochs=2, precision="float16")
    u.resume()
    assert u.amp.scaler.scale == t.amp.scaler.scale
    for name, master in u.optimizer.params.items():
        np.testing.assert_array_equal(master.data, t.optimizer.params[name].data)
    for (_, m, w) in u.amp.pairs:
        assert w.data.dtype == np.float16
        np.testing.assert_array_equal(w.data, m.data.astype(np.float16))
    with pytest.raises(ValueError, match="cannot be combined"):
        from nabi.training.trainer import Trainer
        Trainer(t.model, t.optimizer, t.train_loader, epochs=1, fused_sgd=True, precision="float16")
