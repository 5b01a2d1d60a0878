"""Stochastic depth (``DropPath``): the op against finite differences and the same formula in PyTorch,
its edge cases, its generator (seeded and restored on resume), and the ResNets' ``drop_path`` schedule."""
import os
import signal

import numpy as np
import pytest
import torch

import nabi
from nabi import backend
from nabi import functional as F
from nabi import models as zoo
from nabi.gradcheck import check_module
from nabi.layers import (BatchNorm2d, Conv2d, DropPath, Flatten, Linear, MaxPool2d, ReLU, Residual, Sequential)

TOL = 1e-6
TOLS = {np.float64: dict(rtol=1e-12, atol=1e-12), np.float32: dict(rtol=1e-6, atol=1e-6)}


def f64(make):
    with backend.default_dtype(np.float64):
        return make()


def drop_path_in_torch(x, keep, p):
    """torchvision.ops.stochastic_depth(x, p, mode="row", training=True) written out, with the
    Bernoulli(1 − p) draw per row replaced by the given ``keep`` (so both sides use one mask)."""
    noise = torch.tensor(keep, dtype=x.dtype).reshape([x.shape[0]] + [1] * (x.ndim - 1))
    noise = noise / (1.0 - p)
    return x * noise


def _mixed_seed(p, n, start=0):
    """A seed whose first mask of n rows drops some rows and keeps others (so both cases are checked)."""
    for seed in range(start, start + 1000):
        keep = np.random.default_rng(seed).random(n) >= p
        if 0 < keep.sum() < n:
            return seed
    raise AssertionError("no mixed mask found")


# -- the op ----------------------------------------------------------------------------------------------------------

def test_drop_path_gradients_match_finite_differences_with_a_fixed_mask():
    rng = np.random.default_rng(0)
    seed = _mixed_seed(0.4, 6)
    layer = DropPath(0.4, seed=seed)
    state = backend.rng_state(layer.rng)
    x = rng.standard_normal((6, 3, 4, 5))
    errors = check_module(layer, x, before_forward=lambda: backend.set_rng_state(layer.rng, state))
    assert errors["input"] < TOL, errors
    kept = layer._scale.reshape(-1) != 0
    assert 0 < kept.sum() < 6                                           # both cases are in the check


def test_drop_path_functional_backward_matches_finite_differences():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 7))
    G = rng.standard_normal((5, 7))
    seed = _mixed_seed(0.3, 5, start=10)
    y, scale = F.drop_path_forward(x, 0.3, True, np.random.default_rng(seed))
    dx = F.drop_path_backward(G, scale)
    from nabi.gradcheck import numerical_gradient, relative_error
    num = numerical_gradient(lambda: float(np.sum(F.drop_path_forward(x, 0.3, True, np.random.default_rng(seed))[0]
                                                  * G)), x)
    assert relative_error(dx, num) < TOL


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(8, 3, 5, 4), (8, 6), (8,)])
def test_drop_path_equals_the_torchvision_formula_in_pytorch(dtype, shape):
    rng = np.random.default_rng(2)
    p = 0.35
    layer = DropPath(p, seed=_mixed_seed(p, shape[0], start=20))
    x = rng.standard_normal(shape).astype(dtype)
    G = rng.standard_normal(shape).astype(dtype)
    y = layer(x)
    dx = layer.backward(G)
    keep = layer._scale.reshape(-1) != 0
    assert 0 < keep.sum() < shape[0]
    xt = torch.tensor(x, requires_grad=True)
    yt = drop_path_in_torch(xt, keep, p)
    yt.backward(torch.tensor(G))
    assert y.dtype == dtype and dx.dtype == dtype
    np.testing.assert_allclose(y, yt.detach().numpy(), **TOLS[dtype])
    np.testing.assert_allclose(dx, xt.grad.numpy(), **TOLS[dtype])


def test_each_sample_is_kept_whole_or_dropped_whole_at_rate_one_minus_p(xp):
    p = 0.3
    layer = DropPath(p, seed=4)
    x = xp.ones((4000, 2, 3), dtype=xp.float32)
    y = backend.to_numpy(layer(x))
    rows = y.reshape(4000, -1)
    kept = rows[:, 0] != 0
    np.testing.assert_allclose(rows[kept], 1 / (1 - p), rtol=1e-6)      # a kept row: every entry scaled
    np.testing.assert_array_equal(rows[~kept], 0)                        # a dropped row: every entry 0
    assert abs(kept.mean() - (1 - p)) < 0.03
    dx = backend.to_numpy(layer.backward(xp.ones((4000, 2, 3), dtype=xp.float32)))
    np.testing.assert_array_equal(dx, y)                                 # the same mask and scale


def test_float16_input_keeps_its_dtype():
    layer = DropPath(0.5, seed=_mixed_seed(0.5, 6))
    y = layer(np.ones((6, 4), dtype=np.float16))
    assert y.dtype == np.float16
    assert set(np.unique(y).tolist()) == {0.0, 2.0}


def test_eval_and_p_zero_are_the_identity():
    x = np.random.default_rng(5).standard_normal((6, 3, 2, 2))
    layer = DropPath(0.5, seed=0)
    layer.eval()
    before = backend.rng_state(layer.rng)
    assert layer(x) is x and layer.backward(x) is x
    assert backend.rng_state(layer.rng) == before                       # eval draws nothing
    zero = DropPath(0.0, seed=0)
    assert zero(x) is x and zero.backward(x) is x
    y, scale = F.drop_path_forward(x, 0.0, True, np.random.default_rng(0))
    assert y is x and scale is None


@pytest.mark.parametrize("p", [1.0, 1.5, -0.1, float("nan"), True, "0.2"])
def test_bad_drop_probabilities_are_refused(p):
    with pytest.raises(ValueError, match=r"DropPath: the drop probability p must lie in \[0, 1\)"):
        DropPath(p)
    with pytest.raises(ValueError, match=r"drop_path: the drop probability p must lie in \[0, 1\)"):
        F.drop_path_forward(np.ones((2, 2)), p, True, np.random.default_rng(0))


def test_a_seed_gives_the_same_masks_and_a_restored_generator_repeats_them():
    x = np.ones((64, 3))
    a, b = DropPath(0.5, seed=11), DropPath(0.5, seed=11)
    masks_a = [a(x).copy() for _ in range(3)]
    masks_b = [b(x).copy() for _ in range(3)]
    for ma, mb in zip(masks_a, masks_b):
        np.testing.assert_array_equal(ma, mb)
    assert not np.array_equal(masks_a[0], masks_a[1])                   # the generator moves on
    state = backend.rng_state(a.rng)
    nxt = a(x).copy()
    backend.set_rng_state(a.rng, state)
    np.testing.assert_array_equal(a(x), nxt)


# -- in a residual block ---------------------------------------------------------------------------------------------

def _block(p, seed):
    rng = np.random.default_rng(seed)
    body = {"conv1": Conv2d(3, 3, 3, padding=1, bias=False, rng=rng), "bn1": BatchNorm2d(3), "relu": ReLU(),
            "conv2": Conv2d(3, 3, 3, padding=1, bias=False, rng=rng)}
    block = Residual(body, after=ReLU())
    if p:
        block.append_to_body("drop_path", DropPath(p, seed=seed))
    return block


def test_a_dropped_sample_passes_only_its_shortcut_and_a_kept_one_its_scaled_body():
    p = 0.5
    x = np.random.default_rng(6).standard_normal((8, 3, 5, 5))
    with_drop, plain = _block(p, 7), _block(0.0, 7)
    assert list(with_drop.state_dict()) == list(plain.state_dict())
    y = with_drop(x)
    body = plain.body_modules
    h = x
    for m in body:
        h = m(h)
    keep = with_drop.drop_path._scale.reshape(-1) != 0
    assert 0 < keep.sum() < 8
    np.testing.assert_allclose(y[~keep], np.maximum(x[~keep], 0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y[keep], np.maximum(h[keep] / (1 - p) + x[keep], 0), rtol=1e-5, atol=1e-5)
    with_drop.eval()
    plain.eval()
    np.testing.assert_array_equal(with_drop(x), plain(x))


def test_residual_block_with_drop_path_gradients_match_finite_differences():
    block = f64(lambda: _block(0.5, _mixed_seed(0.5, 4, start=30)))
    state = backend.rng_state(block.drop_path.rng)
    x = np.random.default_rng(8).standard_normal((4, 3, 4, 4))
    errors = check_module(block, x, before_forward=lambda: backend.set_rng_state(block.drop_path.rng, state))
    bad = {k: v for k, v in errors.items() if not v < TOL}
    assert not bad, errors


def test_append_to_body_refuses_a_taken_name():
    block = _block(0.2, 0)
    with pytest.raises(ValueError, match="'drop_path' is already taken"):
        block.append_to_body("drop_path", DropPath(0.1))


# -- the ResNets -----------------------------------------------------------------------------------------------------

def _drop_rates(model):
    return {name: m.p for name, m in model.named_modules() if isinstance(m, DropPath)}


@pytest.mark.parametrize("name", ["resnet20", "se_resnet20"])
def test_resnet_drop_path_rises_linearly_from_zero_at_the_first_block_to_the_rate_at_the_last(name):
    model = zoo.get(name, num_classes=3, drop_path=0.2)
    rates = _drop_rates(model)
    blocks = [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]      # 9 basic blocks
    assert "layer1.0.drop_path" not in rates                              # rate 0: no layer at all
    assert list(rates) == [f"{b}.drop_path" for b in blocks[1:]]
    np.testing.assert_allclose(list(rates.values()), [0.2 * i / 8 for i in range(1, 9)])
    assert model.arch["kwargs"]["drop_path"] == 0.2


def test_resnet_default_builds_no_drop_path_and_the_same_weights_and_keys_as_with_it():
    nabi.seed(3)
    plain = zoo.get("resnet20", num_classes=4)
    nabi.seed(3)
    dropped = zoo.get("resnet20", num_classes=4, drop_path=0.3)
    assert _drop_rates(plain) == {} and len(_drop_rates(dropped)) == 8
    a, b = plain.state_dict(), dropped.state_dict()
    assert list(a) == list(b)                                              # weights load across
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in dropped.named_parameters()]
    dropped.load_state_dict(plain.state_dict())
    x = np.random.default_rng(9).standard_normal((4, 3, 32, 32)).astype(np.float32)
    plain.eval()
    dropped.eval()
    np.testing.assert_array_equal(plain(x), dropped(x))                   # evaluation: identical networks


def test_resnet_default_training_step_is_unchanged_by_the_new_argument():
    """drop_path=0.0 (the default) builds the same model as before the argument existed: the same module
    tree, and in training the same output and gradients as an explicit drop_path=0.0."""
    x = np.random.default_rng(10).standard_normal((4, 3, 32, 32)).astype(np.float32)
    outs = []
    for kwargs in ({}, {"drop_path": 0.0}):
        nabi.seed(4)
        m = zoo.get("resnet20", num_classes=3, **kwargs)
        m.train()
        y = m(x)
        dx = m.backward(np.ones_like(y))
        outs.append((repr(m), y, dx, m.conv1.weight.grad.copy()))
    assert outs[0][0] == outs[1][0] and "DropPath" not in outs[0][0]
    for a, b in zip(outs[0][1:], outs[1][1:]):
        np.testing.assert_array_equal(a, b)


def test_resnet_drop_path_changes_training_outputs_only():
    nabi.seed(5)
    m = zoo.get("resnet20", num_classes=3, drop_path=0.5)
    nabi.seed(5)
    plain = zoo.get("resnet20", num_classes=3)
    x = np.random.default_rng(11).standard_normal((8, 3, 32, 32)).astype(np.float32)
    assert not np.allclose(m(x), plain(x))                                 # training: branches dropped


@pytest.mark.parametrize("p", [1.0, -0.2])
def test_resnet_refuses_a_bad_drop_path(p):
    with pytest.raises(ValueError, match=r"resnet: drop_path: the drop probability p must lie in \[0, 1\)"):
        zoo.get("resnet20", num_classes=3, drop_path=p)


def test_onnx_export_treats_drop_path_as_the_identity(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from nabi.files.onnx import export_onnx, verify_onnx
    model = zoo.get("resnet20", num_classes=3, drop_path=0.2)
    model.eval()
    export_onnx(model, tmp_path / "net.onnx", (3, 32, 32))
    x = np.random.default_rng(12).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert verify_onnx(model, tmp_path / "net.onnx", x) < 1e-4


# -- exact resume ----------------------------------------------------------------------------------------------------

def _trainer(out_dir, epochs=2):
    from sklearn.datasets import load_digits

    from nabi import data as D
    from nabi import optim
    from nabi.training.trainer import Trainer
    digits = load_digits()
    x = (digits.images[:96] / 16.0).astype(np.float32)[:, None]
    y = digits.target[:96].astype(np.int64)
    train = D.ArrayDataset(x[:64], y[:64], classes=[str(i) for i in range(10)])
    nabi.seed(0)
    body = {"conv1": Conv2d(4, 4, 3, padding=1), "relu": ReLU(), "conv2": Conv2d(4, 4, 3, padding=1),
            "drop_path": DropPath(0.5)}
    model = Sequential(Conv2d(1, 4, 3, padding=1), ReLU(), Residual(body, after=ReLU()), MaxPool2d(2), Flatten(),
                       Linear(4 * 16, 10))
    model.arch = {"name": "drop-path-resume-test", "kwargs": {}}
    opt = optim.SGD(model.named_parameters(), lr=0.05, momentum=0.9)
    loader = D.DataLoader(train, batch_size=8, shuffle=True, seed=7)
    return Trainer(model, opt, loader, None, epochs=epochs, out_dir=out_dir, checkpoint_every=1, progress=False,
                   metadata={"arch": model.arch}, log=lambda *a: None)


def test_resume_restores_the_drop_path_generator_and_equals_an_uninterrupted_run(tmp_path):
    from nabi.training.checkpoint import latest_checkpoint, load_checkpoint
    from nabi.training.trainer import TrainingInterrupted
    ref = _trainer(tmp_path / "ref")
    ref.fit()
    run = tmp_path / "stopped"
    t = _trainer(run)
    original = t.optimizer.step
    calls = {"n": 0}

    def step():
        original()
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGINT)                           # stop in the middle of epoch 1
    t.optimizer.step = step
    with pytest.raises(TrainingInterrupted):
        t.fit()
    assert "drop_path:2.drop_path" in load_checkpoint(latest_checkpoint(run))["state"]["rng"]
    resumed = _trainer(run)
    resumed.model[2].drop_path.rng.random(1000)                           # a different generator state ...
    resumed.resume()                                                      # ... until the checkpoint restores it
    resumed.fit()
    assert resumed.iteration == ref.iteration
    for (k, a), b in zip(ref.model.state_dict().items(), resumed.model.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in ref.history]
