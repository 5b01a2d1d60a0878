"""Self-supervised pretraining: NT-Xent (finite differences and PyTorch), the SimCLR model and data,
``nabi pretrain``, and ``nabi train --init`` from the pretrained backbone."""
import numpy as np
import pytest
import torch

from nabi.gradcheck import numerical_gradient
from nabi.functional.contrastive import nt_xent_backward, nt_xent_forward, positive_top1
from nabi.layers.contrastive import NTXentLoss


def torch_nt_xent(z, temperature):
    """NT-Xent written with PyTorch ops: normalise, cosine logits with the diagonal masked, cross-entropy."""
    M = z.shape[0]
    u = torch.nn.functional.normalize(z, dim=1)
    logits = u @ u.T / temperature
    logits = logits.masked_fill(torch.eye(M, dtype=torch.bool), float("-inf"))
    target = (torch.arange(M) + M // 2) % M
    return torch.nn.functional.cross_entropy(logits, target)


@pytest.mark.parametrize("N,D,tau", [(1, 3, 0.5), (2, 4, 0.1), (3, 5, 1.0), (4, 2, 0.07)])
def test_nt_xent_gradient_matches_finite_differences(N, D, tau):
    rng = np.random.default_rng(N * 100 + D)
    z = rng.standard_normal((2 * N, D))
    g = float(rng.uniform(0.5, 2.0)) * (1 if rng.random() < 0.5 else -1)      # random upstream scalar
    loss, cache = nt_xent_forward(z, tau)
    dz = nt_xent_backward(cache, g)
    a = z.copy()
    num = numerical_gradient(lambda: g * float(nt_xent_forward(a, tau)[0]), a)
    np.testing.assert_allclose(dz, num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype,rtol,atol", [(np.float64, 1e-10, 1e-12), (np.float32, 2e-5, 1e-6)])
@pytest.mark.parametrize("N,D,tau", [(1, 4, 0.5), (4, 8, 0.5), (8, 16, 0.1), (16, 3, 0.2), (5, 32, 1.0)])
def test_nt_xent_equals_pytorch(N, D, tau, dtype, rtol, atol):
    rng = np.random.default_rng(7 * N + D)
    z = (rng.standard_normal((2 * N, D)) * rng.uniform(0.1, 5.0)).astype(dtype)
    g = float(rng.uniform(-2.0, 2.0))
    loss, cache = nt_xent_forward(z, tau)
    assert loss.dtype == dtype
    dz = nt_xent_backward(cache, g)
    zt = torch.tensor(z, requires_grad=True)
    lt = torch_nt_xent(zt, tau)
    lt.backward(torch.tensor(g, dtype=zt.dtype))
    np.testing.assert_allclose(float(loss), lt.item(), rtol=rtol, atol=atol)
    assert dz.dtype == dtype
    np.testing.assert_allclose(dz, zt.grad.numpy(), rtol=rtol, atol=atol)


def test_nt_xent_on_every_array_module_equals_numpy(xp):
    """The same numbers where z lives on the device (emulated CuPy runs the GPU code path on the CPU)."""
    from nabi import backend
    z = np.random.default_rng(5).standard_normal((8, 6))
    loss, cache = nt_xent_forward(z, 0.2)
    dz = nt_xent_backward(cache, 1.5)
    zd = xp.asarray(z)
    loss_d, cache_d = nt_xent_forward(zd, 0.2)
    dz_d = nt_xent_backward(cache_d, 1.5)
    assert backend.get_array_module(dz_d) is xp
    np.testing.assert_allclose(float(backend.to_numpy(loss_d)), float(loss), rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(dz_d), dz, rtol=1e-10, atol=1e-13)
    assert positive_top1(cache_d) == positive_top1(cache)


def test_nt_xent_zero_row_uses_the_clamped_norm_like_pytorch():
    z = np.random.default_rng(1).standard_normal((4, 3))
    z[2] = 0.0
    loss, cache = nt_xent_forward(z, 0.5)
    dz = nt_xent_backward(cache, 1.0)
    zt = torch.tensor(z, requires_grad=True)
    lt = torch_nt_xent(zt, 0.5)
    lt.backward()
    np.testing.assert_allclose(float(loss), lt.item(), rtol=1e-12)
    np.testing.assert_allclose(dz, zt.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_nt_xent_top1_counts_anchors_whose_other_view_is_nearest():
    base = np.eye(4)
    z = np.concatenate([base, base + 0.01])               # every view's nearest row is its pair
    _, cache = nt_xent_forward(z, 0.5)
    assert positive_top1(cache) == 8
    z2 = np.concatenate([base, base[[1, 0, 3, 2]]])       # the pairs are swapped: no positive is nearest
    _, cache2 = nt_xent_forward(z2, 0.5)
    assert positive_top1(cache2) == 0


def test_nt_xent_loss_layer_ignores_labels_and_rejects_bad_input():
    z = np.random.default_rng(2).standard_normal((6, 4))
    f = NTXentLoss(0.3)
    a = f(z, np.full(6, -1))
    b = f(z, None)
    assert a == b == pytest.approx(float(nt_xent_forward(z, 0.3)[0]))
    np.testing.assert_allclose(f.backward(2.0), nt_xent_backward(nt_xent_forward(z, 0.3)[1], 2.0))
    with pytest.raises(ValueError, match="even number"):
        f(z[:5])
    with pytest.raises(ValueError, match=r"\(2N, D\)"):
        f(z[None])
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(0.0)
    with pytest.raises(RuntimeError, match="before the loss"):
        NTXentLoss().backward()


# -- the SimCLR model and its data -------------------------------------------------------------------
import json  # noqa: E402
import re  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from nabi import data as D, files, models  # noqa: E402
from nabi.cli.main import main as nabi_main  # noqa: E402
from nabi.selfsup.data import TwoViewBatches, TwoViewImages, simclr_augmentation  # noqa: E402
from nabi.selfsup.model import SimCLR, backbone_of  # noqa: E402
from nabi.training.init_from import format_report, load_matching  # noqa: E402


def write_photos(root, n_per_folder=12, size=20, seed=0):
    """Small random RGB photos in two nested folders (the pretraining ignores the folder names)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for c, value in (("spotted", 40), ("plain", 210)):
        d = Path(root) / c / "2026"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_folder):
            arr = (rng.random((size, size, 3)) * 255).astype(np.uint8)
            arr[: size // 2] = value
            Image.fromarray(arr).save(d / f"{i:02d}.png")
    return Path(root)


def test_backbone_drops_only_the_classifier_and_keeps_the_zoo_names():
    zoo = models.get("cifar_cnn", num_classes=4)
    backbone, feature_dim = backbone_of(zoo)
    assert feature_dim == 2048
    full, kept = zoo.state_dict(), backbone.state_dict()
    assert list(kept) == [k for k in full if not k.startswith("fc.")]
    x = np.random.default_rng(0).random((2, 3, 32, 32)).astype(np.float32)
    feats = backbone(x)
    np.testing.assert_allclose(zoo(x), feats @ full["fc.weight"].T + full["fc.bias"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="vgg11.*not a Linear"):
        backbone_of(models.get("vgg11", num_classes=2, init=models.registry._shape_only))


def test_simclr_model_forward_backward_shapes_and_names():
    backbone, f = backbone_of(models.get("cifar_cnn", num_classes=2))
    m = SimCLR(backbone, f, projection_dim=8)
    names = [n for n, _ in m.named_parameters()]
    assert names[-4:] == ["head.fc1.weight", "head.fc1.bias", "head.fc2.weight", "head.fc2.bias"]
    assert all(n.startswith("backbone.") for n in names[:-4])
    assert list(m.backbone_state()) == list(backbone.state_dict())
    x = np.random.default_rng(1).random((6, 3, 32, 32)).astype(np.float32)
    z = m(x)
    assert z.shape == (6, 8)
    loss = NTXentLoss(0.5)
    loss(z)
    m.zero_grad()
    dx = m.backward(loss.backward())
    assert dx.shape == x.shape and np.abs(m.backbone.conv1.weight.grad).sum() > 0


def test_two_view_batches_pair_rows_i_and_i_plus_n(tmp_path):
    root = write_photos(tmp_path / "photos", n_per_folder=3)
    ds = TwoViewImages(root, 16, simclr_augmentation((16, 16)))
    assert len(ds) == 6                                   # found in nested folders
    loader = D.DataLoader(ds, batch_size=4, shuffle=True, seed=3, drop_last=True)
    x, y = next(iter(TwoViewBatches(loader)))
    assert x.shape == (8, 3, 16, 16) and x.dtype == np.float32
    assert (y == -1).all() and y.shape == (8,)
    views, _ = next(iter(D.DataLoader(ds, batch_size=4, shuffle=True, seed=3, drop_last=True)))
    np.testing.assert_array_equal(x[:4], views[:, 0])
    np.testing.assert_array_equal(x[4:], views[:, 1])
    assert not np.array_equal(views[:, 0], views[:, 1])   # two different draws of the augmentation
    x2, _ = next(iter(TwoViewBatches(D.DataLoader(ds, batch_size=4, shuffle=True, seed=3, drop_last=True))))
    np.testing.assert_array_equal(x, x2)                  # the same seed gives the same views


def test_two_view_images_rejects_a_missing_or_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        TwoViewImages(tmp_path / "nowhere", 16, [])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no photos")
    with pytest.raises(ValueError, match="holds 0 image"):
        TwoViewImages(tmp_path / "empty", 16, [])


# -- loading matching weights (--init) -------------------------------------------------------------------
def _save(path, state, meta=None):
    files.save_weights(path, state, meta or {})
    return path


def test_load_matching_loads_the_backbone_and_reports_the_new_classifier(tmp_path):
    src = models.get("cifar_cnn", num_classes=3)
    backbone, _ = backbone_of(src)
    path = _save(tmp_path / "backbone.safetensors", backbone.state_dict())
    dst = models.get("cifar_cnn", num_classes=5)
    fc_before = dst.fc.weight.data.copy()
    report = load_matching(dst, path)
    assert report["loaded"] == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
    assert report["new"] == ["fc.weight", "fc.bias"] and report["skipped"] == [] and report["unused"] == []
    np.testing.assert_array_equal(dst.conv2.weight.data, src.conv2.weight.data)
    np.testing.assert_array_equal(dst.fc.weight.data, fc_before)
    text = format_report(report)
    assert "loaded 4 arrays" in text and "new (kept as initialised): fc.weight, fc.bias" in text
    assert load_matching(models.get("cifar_cnn", num_classes=5), tmp_path)["loaded"] == report["loaded"]  # run folder


def test_load_matching_skips_mis_shaped_and_reports_unused_keys(tmp_path):
    src = models.get("cifar_cnn", num_classes=3)
    state = src.state_dict()
    state["head.fc1.weight"] = np.ones((2, 2), np.float32)
    path = _save(tmp_path / "w.safetensors", state)
    dst = models.get("cifar_cnn", num_classes=5)
    fc_before = dst.fc.weight.data.copy()
    report = load_matching(dst, path)
    assert report["loaded"] == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
    assert report["skipped"] == ["fc.weight: file (3, 2048), model (5, 2048)", "fc.bias: file (3,), model (5,)"]
    assert report["unused"] == ["head.fc1.weight"] and report["new"] == []
    np.testing.assert_array_equal(dst.fc.weight.data, fc_before)
    np.testing.assert_array_equal(dst.conv1.weight.data, src.conv1.weight.data)


def test_load_matching_rejects_files_that_do_not_fit(tmp_path):
    bad = tmp_path / "notes.safetensors"
    bad.write_text("these are not weights")
    with pytest.raises(ValueError, match="notes.safetensors.*not a readable weight file"):
        load_matching(models.get("cifar_cnn"), bad)
    with pytest.raises(FileNotFoundError, match="absent"):
        load_matching(models.get("cifar_cnn"), tmp_path / "absent.safetensors")
    other = _save(tmp_path / "lenet.safetensors", models.get("lenet5").state_dict(), {"arch": {"name": "lenet5"}})
    with pytest.raises(ValueError, match="none of its .* arrays matches.*lenet5"):
        load_matching(models.get("cifar_cnn"), other)


# -- nabi pretrain, then nabi train --init, end to end ---------------------------------------------------
def _pretrain_argv(photos, out, *extra):
    return ["pretrain", str(photos), "--model", "cifar_cnn", "--image-size", "32", "--epochs", "2",
            "--batch-size", "6", "--projection-dim", "16", "--temperature", "0.5", "--seed", "1",
            "--out", str(out), "--no-progress", *extra]


def test_pretrain_then_train_init_loads_the_backbone(tmp_path, capsys):
    photos = write_photos(tmp_path / "photos")
    run = tmp_path / "pre"
    assert nabi_main(_pretrain_argv(photos, run)) == 0
    state, meta = files.load_weights(run / "backbone.safetensors")
    assert meta["format"] == "nabi-backbone" and meta["arch"]["name"] == "cifar_cnn"
    assert meta["pretraining"]["method"] == "simclr" and meta["pretraining"]["status"] == "finished"
    assert list(state) == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(np.isfinite(r["train_loss"]) and 0 <= r["train_acc"] <= 1 for r in rows)
    ck_state, _ = files.load_weights(run / "model.safetensors")          # the full network: backbone and head
    np.testing.assert_array_equal(ck_state["backbone.conv1.weight"], state["conv1.weight"])
    assert "head.fc2.weight" in ck_state
    capsys.readouterr()
    out = tmp_path / "fine"
    assert nabi_main(["train", str(photos), "--model", "cifar_cnn", "--init", str(run / "backbone.safetensors"),
                      "--epochs", "1", "--batch-size", "8", "--val-ratio", "0.2", "--test-ratio", "0",
                      "--out", str(out), "--no-progress", "--seed", "2"]) == 0
    printed = capsys.readouterr().out
    assert "loaded 4 arrays matching by name and shape" in printed
    assert "new (kept as initialised): fc.weight, fc.bias" in printed
    assert json.loads((out / "config.json").read_text())["init"] == str(run / "backbone.safetensors")


def test_pretrain_rejects_bad_arguments(tmp_path, capsys):
    photos = write_photos(tmp_path / "photos", n_per_folder=2)
    assert nabi_main(_pretrain_argv(photos, tmp_path / "a", "--batch-size", "8")) == 1
    assert "fewer than --batch-size 8" in capsys.readouterr().err
    assert nabi_main(_pretrain_argv(photos, tmp_path / "b", "--model", "vgg11")) == 1
    assert "not a Linear" in capsys.readouterr().err
    assert nabi_main(_pretrain_argv(tmp_path / "missing", tmp_path / "c")) == 1
    assert "missing does not exist" in capsys.readouterr().err
    # a setting of another method is refused, not silently ignored, and nothing is written
    assert nabi_main(_pretrain_argv(photos, tmp_path / "d", "--method", "simsiam")) == 1
    assert "--temperature is a setting of --method simclr; --method simsiam has no use for it" in capsys.readouterr().err
    assert nabi_main(_pretrain_argv(photos, tmp_path / "e", "--ema-momentum", "0.9")) == 1
    assert "--ema-momentum is a setting of --method byol; --method simclr" in capsys.readouterr().err
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()


_SLOW_STEP = """
import sys, time
from nabi.selfsup.pretrain import ContrastiveTrainer
step = ContrastiveTrainer._step
def slow(self, x, y, sums):          # the same computation, slowed so the test can kill it mid-run
    time.sleep(0.3)
    return step(self, x, y, sums)
ContrastiveTrainer._step = slow
from nabi.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_pretrain_killed_then_resumed_gives_the_weights_of_an_uninterrupted_run(tmp_path, capsys):
    photos = write_photos(tmp_path / "photos")                # 24 photos, 4 steps per epoch, 8 steps
    argv = lambda out, *extra: _pretrain_argv(photos, out, "--checkpoint-every", "1", *extra)  # noqa: E731
    assert nabi_main(argv(tmp_path / "ref")) == 0
    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    # The child uses this process's thread count: the compiled kernels split their sums by it, so the
    # killed-and-resumed run can only equal the reference bit for bit with the same count.
    threads = []
    try:
        import numba
        threads = ["--threads", str(numba.get_num_threads())]
    except ImportError:
        pass
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_STEP, *threads, *argv(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 300
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert not (killed / "backbone.safetensors").exists()      # it really stopped before the end
    capsys.readouterr()
    assert nabi_main(argv(killed, "--resume")) == 0
    resumed_at = [line for line in capsys.readouterr().out.splitlines() if line.startswith("resumed from")]
    # "(epoch 1, batch 2 of 4, iteration 2)", "(after epoch 1's last batch, iteration 4; …)" or "(after epoch 1, …)"
    at = [int(m) for m in re.findall(r"iteration (\d+)", resumed_at[0])] if len(resumed_at) == 1 else []
    assert len(at) == 1 and 1 <= at[0] < 8, resumed_at
    ref, _ = files.load_weights(tmp_path / "ref" / "backbone.safetensors")
    got, meta = files.load_weights(killed / "backbone.safetensors")
    assert meta["pretraining"]["iterations"] == 8
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    ref_rows = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    got_rows = (killed / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["train_loss"] for r in got_rows] == [json.loads(r)["train_loss"] for r in ref_rows]


def test_load_matching_starts_a_classifier_from_an_embedding_runs_network(tmp_path):
    """An embedding run keeps the zoo network under ``backbone.``: a classifier of that zoo model takes it."""
    emb = models.get("embedding_net", backbone="cifar_cnn", num_classes=6, embedding_dim=8)
    path = _save(tmp_path / "model.safetensors", emb.state_dict())
    dst = models.get("cifar_cnn", num_classes=5)
    fc_before = dst.fc.weight.data.copy()
    report = load_matching(dst, path)
    assert report["prefix"] == "backbone." and report["new"] == ["fc.weight", "fc.bias"]
    assert report["loaded"] == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
    assert report["unused"] and all(k.startswith("neck.") or k.startswith("classifier.") for k in report["unused"])
    np.testing.assert_array_equal(dst.conv2.weight.data, emb.backbone.conv2.weight.data)
    np.testing.assert_array_equal(dst.fc.weight.data, fc_before)
    assert "backbone.* arrays" in format_report(report)
    # a model that itself has a backbone. prefix is matched name for name, not stripped
    same = models.get("embedding_net", backbone="cifar_cnn", num_classes=6, embedding_dim=8)
    assert load_matching(same, path)["prefix"] == ""
