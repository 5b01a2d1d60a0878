"""BYOL: its loss (finite differences, PyTorch, the stop-gradient), the target's moving average and its
momentum schedule, the network's backward through the online side only, and ``nabi pretrain --method byol``
end to end (``nabi train --init``, exact resume after a kill with the target restored)."""
import json
from collections import OrderedDict

import numpy as np
import pytest
import torch

from nabi.gradcheck import numerical_gradient
from nabi import backend, files
from nabi.cli.main import main as nabi_main
from nabi.functional.byol import byol_backward, byol_forward, pair_top1
from nabi.layers import Flatten, Linear, ReLU
from nabi.layers.byol import BYOLLoss
from nabi.models.registry import Network
from nabi.selfsup.ema import check_momentum, ema_momentum, ema_update
from nabi.selfsup.model import BYOL
from nabi.selfsup.pretrain import BYOLTrainer
from nabi import optim


def torch_byol(out):
    """BYOL's loss in PyTorch ops, as its paper writes it: mean over the batch of
    ‖p̂₁ − ẑ'₂‖² + ‖p̂₂ − ẑ'₁‖², the target projections detached."""
    M, D = out.shape[0], out.shape[1] // 2
    N = M // 2
    p = torch.nn.functional.normalize(out[:, :D], dim=1)
    z = torch.nn.functional.normalize(out[:, D:].detach(), dim=1)
    return (((p[:N] - z[N:]) ** 2).sum(1) + ((p[N:] - z[:N]) ** 2).sum(1)).mean()


# -- the loss -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("N,D", [(1, 2), (2, 3), (4, 5)])
def test_byol_prediction_gradient_matches_finite_differences(N, D):
    rng = np.random.default_rng(N * 10 + D)
    out = rng.standard_normal((2 * N, 2 * D))
    g = float(rng.uniform(0.5, 2.0)) * (1 if rng.random() < 0.5 else -1)       # random upstream scalar
    _, cache = byol_forward(out)
    grad = byol_backward(cache, g)
    # with the target projections held constant (the stop-gradient), L is a function of p alone
    a = out.copy()
    num = numerical_gradient(lambda: g * float(byol_forward(a)[0]), a,
                             coords=np.flatnonzero(np.arange(a.size) % a.shape[1] < D))   # p's columns
    np.testing.assert_allclose(grad[:, :D], num[:, :D], rtol=1e-6, atol=1e-9)
    assert (grad[:, D:] == 0).all()                                            # nothing reaches the target


@pytest.mark.parametrize("dtype,rtol,atol", [(np.float64, 1e-11, 1e-14), (np.float32, 2e-5, 1e-6)])
@pytest.mark.parametrize("N,D", [(1, 4), (4, 8), (8, 16), (3, 2)])
def test_byol_equals_pytorch_with_detach(N, D, dtype, rtol, atol):
    rng = np.random.default_rng(N + 31 * D)
    out = (rng.standard_normal((2 * N, 2 * D)) * rng.uniform(0.2, 5.0)).astype(dtype)
    g = float(rng.uniform(-2.0, 2.0))
    loss, cache = byol_forward(out)
    grad = byol_backward(cache, g)
    ot = torch.tensor(out, requires_grad=True)
    lt = torch_byol(ot)
    lt.backward(torch.tensor(g, dtype=ot.dtype))
    assert loss.dtype == dtype and grad.dtype == dtype
    np.testing.assert_allclose(float(loss), lt.item(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(grad, ot.grad.numpy(), rtol=rtol, atol=atol)
    assert (ot.grad.numpy()[:, D:] == 0).all()                    # PyTorch agrees: no gradient through z'
    # the paper's form: 2 − 2 cos per term, both terms summed, averaged over the N photos
    ott = torch.tensor(out)
    cos = torch.nn.CosineSimilarity(dim=1)
    paper = (2 - 2 * cos(ott[:N, :D], ott[N:, D:])).mean() + (2 - 2 * cos(ott[N:, :D], ott[:N, D:])).mean()
    np.testing.assert_allclose(float(loss), paper.item(), rtol=max(rtol, 1e-5), atol=max(atol, 1e-6))


def test_byol_target_side_gets_no_gradient_in_pytorch_either():
    """In PyTorch's graph of the same loss the target's projections get zeros, and they would not without the
    detach (so the zero columns of ``byol_backward`` are the stop-gradient, not an accident of the formula)."""
    rng = np.random.default_rng(3)
    p = torch.tensor(rng.standard_normal((6, 4)), requires_grad=True)
    z = torch.tensor(rng.standard_normal((6, 4)), requires_grad=True)
    torch_byol(torch.cat([p, z], dim=1)).backward()
    assert (z.grad == 0).all() and p.grad.abs().sum() > 0
    _, cache = byol_forward(torch.cat([p, z], dim=1).detach().numpy())
    np.testing.assert_allclose(byol_backward(cache)[:, :4], p.grad.numpy(), rtol=1e-12, atol=1e-15)
    z_free = z.detach().clone().requires_grad_(True)
    pn, zn = torch.nn.functional.normalize(p.detach(), dim=1), torch.nn.functional.normalize(z_free, dim=1)
    (((pn[:3] - zn[3:]) ** 2).sum(1) + ((pn[3:] - zn[:3]) ** 2).sum(1)).mean().backward()
    assert z_free.grad.abs().sum() > 0


def test_byol_zero_prediction_uses_the_clamped_norm_like_pytorch():
    out = np.random.default_rng(1).standard_normal((4, 6))
    out[1, :3] = 0.0
    loss, cache = byol_forward(out)
    ot = torch.tensor(out, requires_grad=True)
    torch_byol(ot).backward()
    np.testing.assert_allclose(float(loss), torch_byol(torch.tensor(out)).item(), rtol=1e-12)
    np.testing.assert_allclose(byol_backward(cache), ot.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_byol_loss_layer_counts_pairs_and_rejects_bad_input():
    z = np.concatenate([np.eye(4), np.eye(4) + 0.01])
    out = np.concatenate([z[[4, 5, 6, 7, 0, 1, 2, 3]], z], axis=1)        # p_i = z' of the partner: loss 0
    f = BYOLLoss()
    assert f(out, np.full(8, -1)) == pytest.approx(0.0, abs=1e-12) and f.correct == 8
    assert pair_top1(byol_forward(out)[1]) == 8
    assert BYOLLoss()(np.concatenate([z, -z[[4, 5, 6, 7, 0, 1, 2, 3]]], axis=1)) == pytest.approx(8.0)  # opposite
    with pytest.raises(ValueError, match="even number"):
        f(out[:5])
    with pytest.raises(ValueError, match=r"\(2N, 2D\)"):
        f(out[:, :7])
    with pytest.raises(RuntimeError, match="before the loss"):
        BYOLLoss().backward()


def test_byol_loss_on_every_array_module_equals_numpy(xp):
    out = np.random.default_rng(5).standard_normal((8, 6))
    loss, cache = byol_forward(out)
    grad = byol_backward(cache, 1.5)
    loss_d, cache_d = byol_forward(xp.asarray(out))
    grad_d = byol_backward(cache_d, 1.5)
    assert backend.get_array_module(grad_d) is xp
    np.testing.assert_allclose(float(backend.to_numpy(loss_d)), float(loss), rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(grad_d), grad, rtol=1e-10, atol=1e-13)


# -- the target's moving average ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ema_update_equals_the_torch_formula(dtype):
    rng = np.random.default_rng(7)
    shapes = [(3, 4), (5,), (2, 3, 2, 2)]
    xi = [rng.standard_normal(s).astype(dtype) for s in shapes]
    theta = [rng.standard_normal(s).astype(dtype) for s in shapes]
    tau = 0.9937
    xi_t = [torch.tensor(a) for a in xi]
    lerp = [torch.tensor(a) for a in xi]
    ema_update(xi, theta, tau)
    for a, b in zip(xi_t, theta):
        a.mul_(tau).add_(torch.tensor(b), alpha=1 - tau)
    torch._foreach_lerp_(lerp, [torch.tensor(b) for b in theta], 1 - tau)
    for got, want, other in zip(xi, xi_t, lerp):
        np.testing.assert_array_equal(got, want.numpy())                    # the same operations, bit for bit
        np.testing.assert_allclose(got, other.numpy(), rtol=1e-6 if dtype == np.float32 else 1e-14, atol=1e-7)
    with pytest.raises(ValueError, match="shape"):
        ema_update([np.zeros(3)], [np.zeros(4)], 0.5)


def test_ema_momentum_schedule_rises_from_the_base_to_one():
    K = 100
    assert ema_momentum(0, K, 0.99) == pytest.approx(0.99, abs=1e-15)
    assert ema_momentum(K // 2, K, 0.99) == pytest.approx(0.995, abs=1e-15)      # (1 + τ_base)/2
    assert ema_momentum(K, K, 0.99) == 1.0
    assert ema_momentum(K // 4, K, 0.996) == pytest.approx(1 - 0.004 * (np.cos(np.pi / 4) + 1) / 2, abs=1e-15)
    values = [ema_momentum(k, K, 0.9) for k in range(K + 1)]
    assert all(a < b for a, b in zip(values, values[1:]))                         # rising all the way


@pytest.mark.parametrize("bad", [1.0, -0.01, 1.5, float("nan"), float("inf")])
def test_ema_momentum_outside_zero_one_is_refused_naming_the_flag(bad, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"--ema-momentum must be a number in \[0, 1\)"):
        check_momentum(bad)
    assert nabi_main(["pretrain", str(tmp_path / "photos"), "--method", "byol", "--ema-momentum", str(bad),
                      "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "--ema-momentum" in err and ("[0, 1)" in err or "finite" in err) and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    assert check_momentum(0.0) == 0.0 and check_momentum(0.996) == 0.996


# -- the network ----------------------------------------------------------------------------------------------
def _tiny_byol(seed=0):
    backend.seed(seed)
    with backend.default_dtype(np.float64):
        backbone = Network(OrderedDict([("flatten", Flatten()), ("fc0", Linear(12, 6)), ("relu0", ReLU())]))
        backbone.input_size = (3, 2, 2)
        backbone.arch = {"name": "tiny", "kwargs": {}}
        return BYOL(backbone, 6, projection_dim=4, hidden_dim=5, predictor_dim=7)


def test_byol_network_names_target_copy_and_trained_parameters():
    model = _tiny_byol()
    names = [n for n, _ in model.named_parameters()]
    assert names[:2] == ["backbone.fc0.weight", "backbone.fc0.bias"]
    assert not any(n.startswith("target.") for n in names)                       # what an optimiser gets
    state = model.state_dict()
    target_keys = [k for k in state if k.startswith("target.")]
    assert target_keys == ["target." + k for k in state if k.startswith(("backbone.", "projector."))]
    for k in target_keys:                                                        # an exact copy at the start
        np.testing.assert_array_equal(state[k], state[k[len("target."):]])
    assert list(model.backbone_state()) == ["fc0.weight", "fc0.bias"]
    assert model(np.zeros((4, 3, 2, 2))).shape == (4, 8)
    assert model.predictor.fc1.weight.shape == (7, 4) and model.projector.fc1.weight.shape == (5, 6)


def test_byol_network_gradient_is_the_loss_with_a_frozen_target():
    """Every online parameter's gradient equals the finite difference of L(θ) with the target's projections
    fixed at their current values; the target's parameters get no gradient at all."""
    model = _tiny_byol()
    model.train()
    rng = np.random.default_rng(2)
    for name, p in model._modules["target"].named_parameters():                 # a target apart from the online
        p.data = p.data + 0.1 * rng.standard_normal(p.data.shape)
    x = rng.standard_normal((6, 3, 2, 2))
    g = 1.7
    out = model(x)
    D = 4
    z_fixed = out[:, D:].copy()
    loss = BYOLLoss()
    loss(out)
    model.zero_grad()
    dout = loss.backward(g)
    assert (dout[:, D:] == 0).all()
    model.backward(dout)
    for name, p in model._modules["target"].named_parameters():
        assert p.grad is None, name

    def frozen_loss():
        o = model(x)
        return g * float(byol_forward(np.concatenate([o[:, :D], z_fixed], axis=1))[0])

    checked = 0
    for name, p in model.named_parameters():
        flat = p.data.reshape(-1)
        for k in np.random.default_rng(len(name)).choice(flat.size, size=min(3, flat.size), replace=False):
            old = flat[k]
            flat[k] = old + 1e-6
            fp = frozen_loss()
            flat[k] = old - 1e-6
            fm = frozen_loss()
            flat[k] = old
            np.testing.assert_allclose(p.grad.reshape(-1)[k], (fp - fm) / 2e-6, rtol=1e-5, atol=1e-8, err_msg=name)
            checked += 1
    assert checked >= 30
    assert np.abs(model.backbone.fc0.weight.grad).sum() > 0


def test_one_training_step_moves_the_target_towards_the_online_weights_by_one_minus_tau():
    model = _tiny_byol(3)
    x = np.random.default_rng(4).standard_normal((8, 3, 2, 2))
    batches = [(x, np.full(8, -1))] * 3
    opt = optim.SGD(model.named_parameters(), lr=0.5)
    trainer = BYOLTrainer(model, opt, batches, epochs=1, ema_momentum=0.9, progress=False, log=None)
    assert trainer.ema_total_steps == 3
    before = model.state_dict()
    trainer._step(x, batches[0][1], {"loss": 0.0, "correct": 0, "n": 0, "time": 0.0})
    after = model.state_dict()
    tau = 0.9                                                                 # τ_0 = τ_base
    moved = 0
    for name, online_new in after.items():
        if name.startswith("target.") or name.startswith("predictor.") or "running" in name:
            continue
        online_old, target_old, target_new = before[name], before["target." + name], after["target." + name]
        np.testing.assert_array_equal(target_old, online_old)                  # the copy it started as
        expected = target_old.copy()
        expected *= tau
        expected += (1 - tau) * online_new
        np.testing.assert_array_equal(target_new, expected, err_msg=name)
        # moved from where it was towards the new online weights by exactly the fraction 1 − τ
        np.testing.assert_allclose(target_new - target_old, (1 - tau) * (online_new - target_old), atol=1e-15)
        if not np.array_equal(online_new, online_old):
            assert not np.array_equal(target_new, online_new), name
            assert np.abs(online_new - target_new).sum() < np.abs(online_new - target_old).sum()
            moved += 1
    assert moved >= 4 and trainer.ema_steps == 1
    tau1 = ema_momentum(1, 3, 0.9)                                             # the next step's τ is higher
    assert 0.9 < tau1 < 1


# -- nabi pretrain --method byol ------------------------------------------------------------------------------
def _argv(photos, out, *extra):
    return ["pretrain", str(photos), "--method", "byol", "--model", "cifar_cnn", "--image-size", "32",
            "--batch-size", "4", "--projection-dim", "16", "--seed", "2", "--out", str(out), "--no-progress", *extra]


def test_pretrain_byol_then_train_init_loads_the_online_backbone(tmp_path, capsys):
    from test_selfsup import write_photos
    photos = write_photos(tmp_path / "photos")
    run = tmp_path / "pre"
    assert nabi_main(_argv(photos, run, "--epochs", "2", "--ema-momentum", "0.9")) == 0
    state, meta = files.load_weights(run / "backbone.safetensors")
    assert meta["format"] == "nabi-backbone" and meta["pretraining"]["method"] == "byol"
    assert meta["pretraining"]["ema_momentum"] == 0.9 and meta["pretraining"]["status"] == "finished"
    assert list(state) == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
    full, full_meta = files.load_weights(run / "model.safetensors")
    assert full_meta["format"] == "nabi-byol" and "predictor.fc2.weight" in full
    assert "target.projector.fc2.weight" in full and "target.backbone.conv1.weight" in full
    np.testing.assert_array_equal(full["backbone.conv1.weight"], state["conv1.weight"])          # the online one
    assert not np.array_equal(full["target.backbone.conv1.weight"], state["conv1.weight"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(0 <= r["train_loss"] <= 8 and 0 <= r["train_acc"] <= 1 for r in rows)
    assert all(0 < r["z_std"] <= 1 and r["z_std_healthy"] == pytest.approx(0.25) for r in rows)  # 1/√16
    from nabi.training.build import build_model
    start = build_model("cifar_cnn", 2, {}, seed=2)
    assert not np.allclose(start.conv1.weight.data, state["conv1.weight"])          # pretraining moved them
    capsys.readouterr()
    out = tmp_path / "fine"
    assert nabi_main(["train", str(photos), "--model", "cifar_cnn", "--init", str(run), "--epochs", "1",
                      "--batch-size", "8", "--val-ratio", "0.2", "--test-ratio", "0", "--out", str(out),
                      "--no-progress"]) == 0
    assert "loaded 4 arrays matching by name and shape" in capsys.readouterr().out


class _Killed(Exception):
    """Stands in for a SIGKILL at a step (the process dies; only what was checkpointed survives)."""


@pytest.mark.slow
def test_pretrain_byol_killed_mid_epoch_and_resumed_equals_the_uninterrupted_run(tmp_path, monkeypatch, capsys):
    """24 photos, 4 a step: 6 steps an epoch, 12 in all, a checkpoint every 4 and at each epoch's end. The run
    dies after step 10; --resume continues from iteration 8 (batch 2 of epoch 2) and ends with the weights of
    the run that was never stopped: online and target, batch-norm statistics included, bit for bit."""
    from test_selfsup import write_photos
    import nabi.training.trainer as trainer_module
    photos = write_photos(tmp_path / "photos")
    extra = ("--epochs", "2", "--checkpoint-every", "4", "--keep-last", "5")
    assert nabi_main(_argv(photos, tmp_path / "ref", *extra)) == 0

    steps = {"n": 0}
    real_fault_point = trainer_module.fault_point

    def die_at_step_10(name):
        if name == "step":
            steps["n"] += 1
            if steps["n"] == 10:
                raise _Killed
        real_fault_point(name)
    monkeypatch.setattr(trainer_module, "fault_point", die_at_step_10)
    assert nabi_main(_argv(photos, tmp_path / "split", *extra)) == 1            # died at step 10
    monkeypatch.setattr(trainer_module, "fault_point", real_fault_point)
    assert steps["n"] == 10 and "_Killed" in capsys.readouterr().err
    latest = (tmp_path / "split" / "checkpoints" / "latest").read_text().strip()
    assert latest.endswith("ckpt-000000008"), latest
    assert not (tmp_path / "split" / "model.safetensors").exists()
    ckpt = json.loads((tmp_path / "split" / "checkpoints" / "ckpt-000000008" / "state.json").read_text())
    assert ckpt["ema"] == {"steps": 8, "momentum_base": 0.99, "total_steps": 12}
    capsys.readouterr()
    assert nabi_main(_argv(photos, tmp_path / "split", *extra, "--resume")) == 0
    resumed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("resumed from")]
    assert len(resumed) == 1 and "epoch 2, batch 2 of 6, iteration 8" in resumed[0], resumed
    ref, _ = files.load_weights(tmp_path / "ref" / "model.safetensors")
    got, _ = files.load_weights(tmp_path / "split" / "model.safetensors")
    assert list(got) == list(ref)
    assert any(k.startswith("target.") for k in ref) and any(k.endswith("running_mean") for k in ref)
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    final = json.loads((tmp_path / "split" / "checkpoints" / "ckpt-000000012" / "state.json").read_text())
    assert final["ema"]["steps"] == 12
    drop = ("train_images_per_s", "epoch_time_s")
    rows = [[{k: v for k, v in json.loads(line).items() if k not in drop}
             for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in ("ref", "split")]
    assert rows[0] == rows[1] and all("z_std" in r for r in rows[0])


def test_resuming_a_byol_run_from_another_methods_checkpoint_is_refused(tmp_path):
    model = _tiny_byol()
    trainer = BYOLTrainer(model, optim.SGD(model.named_parameters(), lr=0.1), [(np.zeros((4, 3, 2, 2)), None)],
                          epochs=1, progress=False, log=None)
    with pytest.raises(ValueError, match="no BYOL target state"):
        trainer._resume_from(tmp_path / "ckpt-000000004", {"state": {}, "model_metadata": {}})


@pytest.mark.parametrize("xp", ["emulated_cupy", pytest.param("cupy", marks=pytest.mark.gpu)], indirect=True)
def test_byol_steps_on_every_array_module_as_on_numpy(xp):
    """Two BYOL training steps (forward, loss, backward, SGD, the target's moving average, the collapse
    statistic) where the weights live on the device give the weights of the NumPy run (emulated CuPy runs
    the GPU code path on the CPU). NumPy itself is the reference, so it is not a case of its own."""
    from nabi.selfsup.collapse import normalised_std
    x = np.random.default_rng(6).standard_normal((8, 3, 2, 2))
    y = np.full(8, -1)

    def run(device):
        model = _tiny_byol(5)
        if device == "gpu":
            model.to("gpu")
        batches = [(xp.asarray(x) if device == "gpu" else x, y)] * 2
        trainer = BYOLTrainer(model, optim.SGD(model.named_parameters(), lr=0.3, momentum=0.9), batches,
                              epochs=1, progress=False, log=None)
        trainer.fit()
        return model.state_dict(), trainer.history[0]

    ref, ref_row = run("cpu")
    got, row = run("gpu")
    assert list(got) == list(ref) and any(k.startswith("target.") for k in ref)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-10, atol=1e-12, err_msg=k)
    assert row["z_std"] == pytest.approx(ref_row["z_std"], rel=1e-10)
    assert row["train_loss"] == pytest.approx(ref_row["train_loss"], rel=1e-10)
    z = xp.asarray(np.random.default_rng(2).standard_normal((6, 4)))
    assert normalised_std(z) == pytest.approx(normalised_std(backend.to_numpy(z)), rel=1e-12)


def test_resuming_byol_with_another_ema_momentum_or_run_length_is_refused_and_config_kept(tmp_path, capsys):
    from test_selfsup import write_photos
    photos = write_photos(tmp_path / "photos")
    run = tmp_path / "pre"
    assert nabi_main(_argv(photos, run, "--epochs", "1")) == 0           # 6 steps, τ_base 0.99
    before = (run / "config.json").read_bytes()
    capsys.readouterr()
    assert nabi_main(_argv(photos, run, "--epochs", "2", "--ema-momentum", "0.9", "--resume")) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "--ema-momentum: 0.99 in the checkpoint, 0.9 now" in err
    assert "(--epochs/--iterations, --batch-size): 6 in the checkpoint, 12 now" in err
    assert (run / "config.json").read_bytes() == before
    assert nabi_main(_argv(photos, run, "--epochs", "1", "--resume")) == 0            # its own settings: accepted


def test_byol_under_mixed_precision_is_refused_with_a_clear_message_before_anything_is_written(tmp_path):
    from test_selfsup import write_photos
    from nabi.selfsup.pretrain import run_pretraining
    from nabi.training.config import TrainConfig
    photos = write_photos(tmp_path / "photos")
    cfg = TrainConfig(data=str(photos), model="cifar_cnn", image_size=32, batch_size=4, iterations=1,
                      precision="float16", out=str(tmp_path / "run"), progress=False)
    with pytest.raises(ValueError, match=r"BYOL pretraining runs in float32 only, got precision 'float16'"):
        run_pretraining(cfg, method="byol", projection_dim=16, log=None)
    assert not (tmp_path / "run").exists()
