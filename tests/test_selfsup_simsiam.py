"""SimSiam: its loss (finite differences, PyTorch, the stop-gradient), the network's backward with the
stop-gradient, and ``nabi pretrain --method simsiam`` end to end."""
import json
from collections import OrderedDict

import numpy as np
import pytest
import torch

from nabi.gradcheck import numerical_gradient
from nabi import backend, files
from nabi.cli.main import main as nabi_main
from nabi.functional.simsiam import pair_top1, simsiam_backward, simsiam_forward
from nabi.layers import Flatten, Linear, ReLU
from nabi.layers.simsiam import SimSiamLoss
from nabi.models.registry import Network
from nabi.selfsup.model import SimSiam


def torch_simsiam(out):
    """SimSiam's loss in PyTorch ops, as its paper writes it: ½ D(p₁, z₂.detach()) + ½ D(p₂, z₁.detach())."""
    M, D = out.shape[0], out.shape[1] // 2
    N = M // 2
    p, z = out[:, :D], out[:, D:].detach()
    d = lambda a, b: -(torch.nn.functional.normalize(a, dim=1) * torch.nn.functional.normalize(b, dim=1)).sum(1).mean()  # noqa: E731,E501
    return 0.5 * d(p[:N], z[N:]) + 0.5 * d(p[N:], z[:N])


@pytest.mark.parametrize("N,D", [(1, 2), (2, 3), (4, 5)])
def test_simsiam_prediction_gradient_matches_finite_differences(N, D):
    rng = np.random.default_rng(N * 10 + D)
    out = rng.standard_normal((2 * N, 2 * D))
    g = float(rng.uniform(0.5, 2.0)) * (1 if rng.random() < 0.5 else -1)       # random upstream scalar
    _, cache = simsiam_forward(out)
    grad = simsiam_backward(cache, g)
    # with the projections held constant (what the stop-gradient means), L is a function of p alone
    a = out.copy()
    num = numerical_gradient(lambda: g * float(simsiam_forward(a)[0]), a,
                             coords=np.flatnonzero(np.arange(a.size) % a.shape[1] < D))   # p's columns
    np.testing.assert_allclose(grad[:, :D], num[:, :D], rtol=1e-6, atol=1e-9)
    assert (grad[:, D:] == 0).all()                                            # the stop-gradient branch


@pytest.mark.parametrize("dtype,rtol,atol", [(np.float64, 1e-11, 1e-14), (np.float32, 2e-5, 1e-7)])
@pytest.mark.parametrize("N,D", [(1, 4), (4, 8), (8, 16), (3, 2)])
def test_simsiam_equals_pytorch_with_detach(N, D, dtype, rtol, atol):
    rng = np.random.default_rng(N + 31 * D)
    out = (rng.standard_normal((2 * N, 2 * D)) * rng.uniform(0.2, 5.0)).astype(dtype)
    g = float(rng.uniform(-2.0, 2.0))
    loss, cache = simsiam_forward(out)
    grad = simsiam_backward(cache, g)
    ot = torch.tensor(out, requires_grad=True)
    lt = torch_simsiam(ot)
    lt.backward(torch.tensor(g, dtype=ot.dtype))
    assert loss.dtype == dtype and grad.dtype == dtype
    np.testing.assert_allclose(float(loss), lt.item(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(grad, ot.grad.numpy(), rtol=rtol, atol=atol)
    assert (ot.grad.numpy()[:, D:] == 0).all()                    # PyTorch agrees: no gradient through z
    # the paper's form with nn.CosineSimilarity gives the same loss for non-zero vectors
    ott = torch.tensor(out)
    cos = torch.nn.CosineSimilarity(dim=1)
    paper = -0.5 * (cos(ott[:N, :D], ott[N:, D:]).mean() + cos(ott[N:, :D], ott[:N, D:]).mean())
    np.testing.assert_allclose(float(loss), paper.item(), rtol=max(rtol, 1e-6), atol=atol)


def test_simsiam_zero_prediction_uses_the_clamped_norm_like_pytorch():
    out = np.random.default_rng(1).standard_normal((4, 6))
    out[1, :3] = 0.0
    loss, cache = simsiam_forward(out)
    ot = torch.tensor(out, requires_grad=True)
    torch_simsiam(ot).backward()
    np.testing.assert_allclose(float(loss), torch_simsiam(torch.tensor(out)).item(), rtol=1e-12)
    np.testing.assert_allclose(simsiam_backward(cache), ot.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_simsiam_loss_layer_counts_pairs_and_rejects_bad_input():
    z = np.concatenate([np.eye(4), np.eye(4) + 0.01])
    out = np.concatenate([z, z[[4, 5, 6, 7, 0, 1, 2, 3]]], axis=1)        # p_i = z of the partner: all found
    f = SimSiamLoss()
    assert f(out, np.full(8, -1)) == pytest.approx(-1.0, abs=1e-4) and f.correct == 8
    assert pair_top1(simsiam_forward(out)[1]) == 8
    with pytest.raises(ValueError, match="even number"):
        f(out[:5])
    with pytest.raises(ValueError, match=r"\(2N, 2D\)"):
        f(out[:, :7])
    with pytest.raises(RuntimeError, match="before the loss"):
        SimSiamLoss().backward()


# -- the network: the stop-gradient inside backward ---------------------------------------------------------
def _tiny_simsiam(seed=0):
    backend.seed(seed)
    with backend.default_dtype(np.float64):
        backbone = Network(OrderedDict([("flatten", Flatten()), ("fc0", Linear(12, 6)), ("relu0", ReLU())]))
        backbone.input_size = (3, 2, 2)
        backbone.arch = {"name": "tiny", "kwargs": {}}
        return SimSiam(backbone, 6, projection_dim=4, predictor_dim=5)


def test_simsiam_network_gradient_is_the_loss_with_frozen_projections():
    """Every parameter's gradient equals the finite difference of L(θ) = −(1/M) Σ cos(p_i(θ), z_t(i)) with the
    projections z fixed at their current values: the stop-gradient branch sends nothing back."""
    model = _tiny_simsiam()
    model.train()
    x = np.random.default_rng(2).standard_normal((6, 3, 2, 2))
    g = 1.7
    out = model(x)
    D = 4
    z_fixed = out[:, D:].copy()
    loss = SimSiamLoss()
    loss(out)
    model.zero_grad()
    dout = loss.backward(g)
    assert (dout[:, D:] == 0).all()
    model.backward(dout)

    def frozen_loss():
        o = model(x)
        return g * float(simsiam_forward(np.concatenate([o[:, :D], z_fixed], axis=1))[0])

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
    assert np.abs(model.backbone.fc0.weight.grad).sum() > 0                # the backbone does learn, via p


def test_simsiam_network_names_and_output():
    model = _tiny_simsiam()
    names = [n for n, _ in model.named_parameters()]
    assert names[:2] == ["backbone.fc0.weight", "backbone.fc0.bias"]
    assert any(n.startswith("projector.") for n in names) and any(n.startswith("predictor.") for n in names)
    assert list(model.backbone_state()) == ["fc0.weight", "fc0.bias"]
    assert model(np.zeros((4, 3, 2, 2))).shape == (4, 8)


# -- nabi pretrain --method simsiam, then nabi train --init ---------------------------------------------------
def test_pretrain_simsiam_then_train_init_loads_the_backbone(tmp_path, capsys):
    from test_selfsup import write_photos
    photos = write_photos(tmp_path / "photos")
    run = tmp_path / "pre"
    argv = ["pretrain", str(photos), "--method", "simsiam", "--model", "cifar_cnn", "--image-size", "32",
            "--epochs", "2", "--batch-size", "6", "--projection-dim", "16", "--seed", "1", "--out", str(run),
            "--no-progress"]
    assert nabi_main(argv) == 0
    state, meta = files.load_weights(run / "backbone.safetensors")
    assert meta["format"] == "nabi-backbone" and meta["pretraining"]["method"] == "simsiam"
    assert "temperature" not in meta["pretraining"] and meta["pretraining"]["status"] == "finished"
    assert list(state) == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(-1 <= r["train_loss"] <= 1 and 0 <= r["train_acc"] <= 1 for r in rows)
    full, full_meta = files.load_weights(run / "model.safetensors")
    assert full_meta["format"] == "nabi-simsiam" and "predictor.fc2.weight" in full and "projector.bn2.running_mean" in full
    np.testing.assert_array_equal(full["backbone.conv1.weight"], state["conv1.weight"])
    from nabi.training.build import build_model
    start = build_model("cifar_cnn", 2, {}, seed=1)          # the weights the run started from (same seed)
    assert not np.allclose(start.conv1.weight.data, state["conv1.weight"])      # pretraining moved them
    capsys.readouterr()
    out = tmp_path / "fine"
    assert nabi_main(["train", str(photos), "--model", "cifar_cnn", "--init", str(run), "--epochs", "1",
                      "--batch-size", "8", "--val-ratio", "0.2", "--test-ratio", "0", "--out", str(out),
                      "--no-progress"]) == 0
    assert "loaded 4 arrays matching by name and shape" in capsys.readouterr().out


def test_simsiam_loss_on_every_array_module_equals_numpy(xp):
    """The same numbers where the output lives on the device (emulated CuPy runs the GPU code path on the CPU)."""
    out = np.random.default_rng(5).standard_normal((8, 6))
    loss, cache = simsiam_forward(out)
    grad = simsiam_backward(cache, 1.5)
    loss_d, cache_d = simsiam_forward(xp.asarray(out))
    grad_d = simsiam_backward(cache_d, 1.5)
    assert backend.get_array_module(grad_d) is xp
    np.testing.assert_allclose(float(backend.to_numpy(loss_d)), float(loss), rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(grad_d), grad, rtol=1e-10, atol=1e-13)
    assert pair_top1(cache_d) == pair_top1(cache)


def test_pretrain_simsiam_resumed_equals_the_uninterrupted_run(tmp_path, capsys):
    """One epoch, then --resume to two, gives the weights (batch-norm statistics included) of two epochs at once."""
    from test_selfsup import write_photos
    photos = write_photos(tmp_path / "photos")

    def argv(out, epochs, *extra):
        return ["pretrain", str(photos), "--method", "simsiam", "--model", "cifar_cnn", "--image-size", "32",
                "--epochs", str(epochs), "--batch-size", "6", "--projection-dim", "16", "--schedule", "constant",
                "--seed", "4", "--out", str(out), "--no-progress", *extra]
    assert nabi_main(argv(tmp_path / "ref", 2)) == 0
    assert nabi_main(argv(tmp_path / "split", 1)) == 0
    assert nabi_main(argv(tmp_path / "split", 2, "--resume")) == 0
    resumed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("resumed from")]
    assert len(resumed) == 1 and resumed[0].endswith("(after epoch 1, iteration 4)"), resumed     # 24 photos, 6 a step
    ref, _ = files.load_weights(tmp_path / "ref" / "model.safetensors")
    got, _ = files.load_weights(tmp_path / "split" / "model.safetensors")
    assert list(got) == list(ref) and any(k.endswith("running_mean") for k in ref)
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
