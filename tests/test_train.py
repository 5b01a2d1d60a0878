"""Trainer: the loop, metrics files, checkpoints, exact resume after SIGKILL, NaN guard, Ctrl-C, bad output."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nabi import files
from nabi.training.checkpoint import latest_checkpoint, load_checkpoint
from nabi.training.trainer import TrainingDiverged

sys.path.insert(0, str(Path(__file__).parent))
from resume_job import make_trainer  # noqa: E402


def test_fit_writes_metrics_curves_checkpoints_and_weights(tmp_path):
    t = make_trainer(tmp_path, epochs=2)
    history = t.fit()
    assert [r["epoch"] for r in history] == [1, 2]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert 0.0 <= history[-1]["val_acc"] <= 1.0 and "val_top5" not in history[-1]   # 10 classes but no class list
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == [1, 2]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state, meta = files.load_weights(tmp_path / "model.safetensors")
    assert meta["arch"]["name"] == "resume-test" and meta["status"] == "finished"
    np.testing.assert_array_equal(state["5.weight"], t.model.state_dict()["5.weight"])
    assert (tmp_path / "best.safetensors").is_file()
    ck = latest_checkpoint(tmp_path)
    assert ck is not None and load_checkpoint(ck)["state"]["iteration"] == t.iteration == 32
    assert len(list((tmp_path / "checkpoints").glob("ckpt-*"))) <= 3       # only the last N kept
    assert t.model[0].compute_input_grad is False                         # no image gradient in training


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(tmp_path):
    """Kill a training process with SIGKILL mid-epoch, resume it, and compare with a run that never stopped.

    The result is bitwise equal on the CPU (same code, same BLAS, same order of operations)."""
    ref = make_trainer(tmp_path / "ref")
    ref.fit()
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "resume_job.py"), str(run), "0.01"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed_at = None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        ck = latest_checkpoint(run)
        if ck is not None:
            st = json.loads((ck / "state.json").read_text())
            if st["iteration"] >= 20 and st["batch_in_epoch"] != 0:       # in the middle of epoch 2
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = st["iteration"]
                break
        time.sleep(0.02)
    proc.wait(timeout=30)
    assert killed_at is not None, f"the job ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    resumed = make_trainer(run)
    assert resumed.resume() is not None and resumed.iteration >= killed_at
    resumed.fit()
    assert resumed.iteration == ref.iteration
    for (k, a), b in zip(ref.model.state_dict().items(), resumed.model.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in ref.history]


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
    t = make_trainer(tmp_path, epochs=2)
    t.fit()
    good = latest_checkpoint(tmp_path)
    good_bytes = (good / "model.safetensors").read_bytes()
    t2 = make_trainer(tmp_path, epochs=3)
    t2.resume()
    t2.model[0].weight.data[:] = np.nan                                   # poison the weights
    with pytest.raises(TrainingDiverged, match=r"loss became nan.*Last good checkpoint: .*ckpt-"):
        t2.fit()
    assert latest_checkpoint(tmp_path) == good and (good / "model.safetensors").read_bytes() == good_bytes


def test_sigint_saves_and_stops_cleanly(tmp_path):
    from nabi.training.trainer import TrainingInterrupted
    t = make_trainer(tmp_path, epochs=2)
    original = t.optimizer.step
    calls = {"n": 0}

    def step():
        original()
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGINT)                           # Ctrl-C in the middle of a step
    t.optimizer.step = step
    with pytest.raises(TrainingInterrupted, match="continue with --resume"):
        t.fit()
    st = load_checkpoint(latest_checkpoint(tmp_path))["state"]
    assert st["iteration"] == 5 and st["status"] == "interrupted"        # the step finished, then it saved


def test_unwritable_output_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="cannot be written"):
        make_trainer(blocker / "run")


def test_failed_checkpoint_write_leaves_previous_one(tmp_path, monkeypatch):
    t = make_trainer(tmp_path, epochs=1)
    t.fit()
    good = latest_checkpoint(tmp_path)
    import nabi.training.checkpoint as C

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(C.files, "atomic_write_json", boom)
    t.iteration += 1
    with pytest.raises(OSError, match="disk full"):
        t.save_checkpoint()
    assert latest_checkpoint(tmp_path) == good
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_googlenet_auxiliary_losses_are_added_with_weight_0_3(tmp_path):
    """One training step of GoogLeNet with aux heads: loss = main + 0.3·(aux1 + aux2), and the
    parameters of both aux heads receive gradients (they would not without daux)."""
    import nabi.models as zoo
    from nabi import data as D
    from nabi import optim
    from nabi.layers import CrossEntropyLoss
    from nabi.training.trainer import Trainer
    rng = np.random.default_rng(0)
    x = rng.random((4, 3, 96, 96), dtype=np.float32)
    y = np.array([0, 1, 2, 1])
    model = zoo.get("googlenet", num_classes=3, aux_logits=True, dropout=0.0, aux_dropout=0.0)
    model.train()
    main = CrossEntropyLoss()(model(x), y)
    expect = main + 0.3 * sum(CrossEntropyLoss()(a, y) for a in model.aux_outputs)
    opt = optim.SGD(model.named_parameters(), lr=0.0)
    t = Trainer(model, opt, D.DataLoader(D.ArrayDataset(x, y), batch_size=4), epochs=1, progress=False,
                log=lambda *a: None)
    t.fit()
    assert abs(t.history[0]["train_loss"] - expect) < 1e-4 * abs(expect)
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert np.abs(grads["aux1.fc2.weight"]).sum() > 0 and np.abs(grads["aux2.fc2.weight"]).sum() > 0
