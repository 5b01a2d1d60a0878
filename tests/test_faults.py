"""Faults a training run must survive: SIGKILL at named points and at random ones, a full disk during a
checkpoint, a damaged newest checkpoint, a truncated weight file, two writers on one run folder.

Every kill is a real SIGKILL of a real ``nabi train`` process (``nabi.training.faults``: the variable
``NABI_FAULT=POINT:COUNT`` makes the trainer kill itself there). The killed run is continued with
``--resume`` and compared with a run that was never stopped: every tensor of ``model.safetensors``,
``best.safetensors`` and the last checkpoint (weights and optimiser state) bit for bit, and
``metrics.jsonl`` line for line with its two timing fields (``epoch_time_s``, ``train_images_per_s``)
removed, since wall-clock times differ between any two runs.
"""
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nabi import files
from nabi.training.checkpoint import latest_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from test_cli import write_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TIME_FIELDS = ("epoch_time_s", "train_images_per_s")
# 24 training photos in batches of 4: 6 iterations per epoch; a checkpoint every 3 iterations falls
# in the middle of each epoch and on its last batch.
TRAIN_ARGS = ["--model", "cifar_cnn", "--image-size", "32", "--batch-size", "4", "--epochs", "3",
              "--checkpoint-every", "3", "--val-ratio", "0.25", "--test-ratio", "0", "--augment", "flip",
              "--optimizer", "sgd", "--momentum", "0.9", "--lr", "0.01", "--schedule", "warmup_cosine",
              "--warmup", "4", "--no-progress"]


def nabi_train(data, out, *extra, fault=None, log=None, preexec_fn=None, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("NABI_FAULT", None)
    if fault:
        env["NABI_FAULT"] = fault
    if log:
        env["NABI_FAULT_LOG"] = str(log)
    return subprocess.run([sys.executable, "-m", "nabi", "train", str(data), *TRAIN_ARGS, "--out", str(out),
                           *extra], env=env, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("faults") / "photos", classes=("a", "b", "c", "d"), per_class=8)


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory):
    """The uninterrupted run, and the names of the fault points it passed, in order."""
    root = tmp_path_factory.mktemp("reference")
    trace = root / "points.txt"
    done = nabi_train(photos, root / "run", log=trace)
    assert done.returncode == 0, done.stderr
    return root / "run", trace.read_text().split()


def tensors(path):
    return files.load_weights(path)[0]


def metrics_without_times(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIME_FIELDS} for row in rows]


def assert_same_run(ref, run):
    compared = [("model.safetensors", "model.safetensors"), ("best.safetensors", "best.safetensors")]
    ref_ck, run_ck = latest_checkpoint(ref), latest_checkpoint(run)
    assert ref_ck.name == run_ck.name
    for name in ("model.safetensors", "optimizer.safetensors"):
        compared.append((ref_ck / name, run_ck / name))
    for a, b in compared:
        wa, wb = tensors(ref / a), tensors(run / b)
        assert list(wa) == list(wb), a
        for k in wa:
            assert wa[k].dtype == wb[k].dtype and np.array_equal(wa[k], wb[k]), f"{a}: {k} differs"
    assert metrics_without_times(run) == metrics_without_times(ref)
    state = lambda ck: {k: v for k, v in json.loads((ck / "state.json").read_text()).items()
                        if k not in ("epoch_sums", "history", "rng", "config")}
    assert state(run_ck) == state(ref_ck)


def kill_and_resume(photos, ref, out, fault):
    killed = nabi_train(photos, out, fault=fault)
    assert killed.returncode == -signal.SIGKILL, f"{fault} was never reached: {killed.stdout}{killed.stderr}"
    resumed = nabi_train(photos, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert_same_run(ref, out)
    return resumed


# step:9 — mid-epoch 2; checkpoint_saved:2 — the checkpoint-every save on epoch 1's last batch (iteration 6),
# before its end-of-epoch work; epoch_saved:1 — right after the end-of-epoch checkpoint; best_saved:1 —
# after best.safetensors, before the metrics row; checkpoint_written:4 / checkpoint_swapped:1 — during the
# rename of the end-of-epoch checkpoint onto the one of the same iteration; metrics_written:2;
# final_weights:1 — after the last checkpoint, before model.safetensors; validated:3; checkpoint_renamed:5.
QUICK_POINTS = ["checkpoint_saved:2", "checkpoint_swapped:1", "best_saved:1"]
ALL_POINTS = QUICK_POINTS + ["step:9", "epoch_saved:1", "checkpoint_written:4", "metrics_written:2",
                             "final_weights:1", "validated:3", "checkpoint_renamed:5", "step:1"]


@pytest.mark.parametrize("fault", QUICK_POINTS)
def test_sigkill_then_resume_is_exact(photos, reference, tmp_path, fault):
    ref, _ = reference
    out = kill_and_resume(photos, ref, tmp_path / "run", fault)
    if fault == "checkpoint_saved:2":
        assert "after epoch 1's last batch, iteration 6" in out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("fault", [p for p in ALL_POINTS if p not in QUICK_POINTS])
def test_sigkill_then_resume_is_exact_everywhere(photos, reference, tmp_path, fault):
    ref, _ = reference
    kill_and_resume(photos, ref, tmp_path / "run", fault)


@pytest.mark.slow
@pytest.mark.parametrize("draw", range(5))
def test_sigkill_at_random_points_then_resume_is_exact(photos, reference, tmp_path, draw):
    ref, points = reference
    k = int(np.random.default_rng([2019, draw]).integers(1, len(points) + 1))
    print(f"killed at point {k} of {len(points)}: {points[k - 1]}")
    kill_and_resume(photos, ref, tmp_path / "run", f"any:{k}")


# -- two writers, an existing run, rejected arguments ----------------------------------------------
def test_second_writer_on_a_run_folder_is_refused_at_once_naming_the_holder(photos, tmp_path):
    import time
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    first = subprocess.Popen([sys.executable, "-m", "nabi", "train", str(photos), *TRAIN_ARGS, "--epochs", "200",
                              "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (out / ".lock-owner.json").is_file() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()
        for extra in ([], ["--resume"], ["--overwrite"]):
            started = time.time()
            second = nabi_train(photos, out, *extra)
            assert second.returncode == 1
            assert f"run folder {out} is in use by process {first.pid}" in second.stderr, second.stderr
            assert "Traceback" not in second.stderr and time.time() - started < 60
        assert first.poll() is None                        # the first run goes on untouched
    finally:
        first.kill()
        first.wait()


def test_existing_run_needs_resume_or_overwrite(photos, reference, tmp_path, capsys):
    import shutil
    from nabi.cli import main
    ref, _ = reference
    out = tmp_path / "run"
    shutil.copytree(ref, out)
    (out / "old-notes.txt").write_text("from the previous run")
    argv = ["train", str(photos), *TRAIN_ARGS, "--epochs", "1", "--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert (out / "old-notes.txt").is_file() and len(list((out / "checkpoints").glob("ckpt-*"))) >= 1
    assert main(argv + ["--resume", "--overwrite"]) == 1
    assert "contradict" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0
    stdout = capsys.readouterr().out
    assert "--overwrite: deleted the previous run" in stdout
    assert not (out / "old-notes.txt").exists()
    assert [json.loads(s)["epoch"] for s in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert [p.name for p in (out / "checkpoints").glob("ckpt-*")] == ["ckpt-000000006"]


@pytest.mark.parametrize("extra", [["--batch-size", "0"], ["--model", "alexnett"], ["--epochs", "-1"],
                                   ["--lr", "nan"], ["--image-size", "0"], ["--val-ratio", "1.5"]])
def test_a_rejected_argument_leaves_no_folder(photos, tmp_path, capsys, extra):
    from nabi.cli import main
    out = tmp_path / "new" / "run"
    assert main(["train", str(photos), *TRAIN_ARGS, *extra, "--out", str(out)]) == 1
    assert extra[0] in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_a_failure_before_the_first_checkpoint_leaves_no_folder(tmp_path, capsys):
    from nabi.cli import main
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "no-such-photos"), "--out", str(out), "--no-progress"]) == 1
    assert "no-such-photos does not exist" in capsys.readouterr().err
    assert not out.exists()


# -- damaged files -------------------------------------------------------------------------------------
def cli(argv, capsys):
    from nabi.cli import main
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_weight_file_cut_in_half_is_caught_by_check_and_on_load(photos, reference, tmp_path, capsys):
    import shutil
    ref, _ = reference
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    code, out, err = cli(["check", run], capsys)
    assert code == 0 and "0 damaged" in out and "BAD" not in out, out
    blob = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(blob[:len(blob) // 2])
    code, out, err = cli(["predict", run, photos / "a" / "사진_0.png"], capsys)
    assert code == 0                                        # predict reads best.safetensors, which is sound
    code, out, err = cli(["check", run], capsys)
    assert code == 1 and "BAD  model.safetensors" in out and "cut short" in out and "1 damaged" in out, out
    for command in (["predict", run / "model.safetensors", photos / "a" / "사진_0.png"],
                    ["eval", run / "model.safetensors", photos],
                    ["export", run / "model.safetensors", "--onnx", tmp_path / "m.onnx"]):
        code, out, err = cli(command, capsys)
        assert code == 1 and "model.safetensors" in err and "cut short" in err and "Traceback" not in err, err


def test_weight_file_replaced_by_another_is_caught(photos, reference, tmp_path, capsys):
    import shutil
    ref, _ = reference
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    ck = latest_checkpoint(run)
    shutil.copy(ck / "optimizer.safetensors", run / "best.safetensors")   # a sound file, but not this one
    code, out, err = cli(["predict", run, photos / "a" / "사진_0.png"], capsys)
    assert code == 1 and "best.safetensors does not match the SHA-256 recorded in" in err and "best.json" in err
    code, out, err = cli(["check", run], capsys)
    assert code == 1 and "BAD  best.safetensors" in out
    (run / "checkpoints" / "latest").write_text("ckpt-000000099\n")
    (ck / "state.json").write_text('{"iteration": 1')
    code, out, err = cli(["check", run], capsys)
    assert "BAD  checkpoints/latest" in out and f"BAD  checkpoints/{ck.name}/state.json" in out


# -- a full disk during a checkpoint, a damaged newest checkpoint ----------------------------------------
ADAM = ["--optimizer", "adam", "--lr", "0.003"]      # Adam's two moment buffers: the optimiser file is ~2x the weights


def file_size_limit(limit):
    """A real limit on the size of any file the child writes (RLIMIT_FSIZE): past it a write fails with EFBIG
    (SIGXFSZ, which would kill the process, is ignored so that the write returns the error)."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.fixture(scope="module")
def adam_reference(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("adam") / "run"
    done = nabi_train(photos, out, *ADAM)
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_keeps_the_previous_one(photos, adam_reference, tmp_path):
    out = tmp_path / "run"
    killed = nabi_train(photos, out, *ADAM, fault="epoch_saved:1")          # a run with epoch 1's checkpoint
    assert killed.returncode == -signal.SIGKILL
    before = latest_checkpoint(out)
    model_bytes = (before / "model.safetensors").stat().st_size
    opt_bytes = (before / "optimizer.safetensors").stat().st_size
    assert opt_bytes > 1.5 * model_bytes
    limit = (model_bytes + opt_bytes) // 2            # the weights fit, the optimiser state does not
    full = nabi_train(photos, out, *ADAM, "--resume", preexec_fn=file_size_limit(limit))
    assert full.returncode == 1, full.stderr
    assert "could not write the checkpoint of iteration 9" in full.stderr and "File too large" in full.stderr
    assert f"the previous checkpoint {before} is intact" in full.stderr and "Traceback" not in full.stderr
    assert latest_checkpoint(out) == before                               # untouched, and nothing half-written
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    resumed = nabi_train(photos, out, *ADAM, "--resume")                  # space again: continue
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(adam_reference, out)


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(photos, reference, tmp_path):
    ref, _ = reference
    out = tmp_path / "run"
    killed = nabi_train(photos, out, fault="step:14")                    # checkpoints 6, 9, 12 on disk
    assert killed.returncode == -signal.SIGKILL
    newest = latest_checkpoint(out)
    assert newest.name == "ckpt-000000012"
    blob = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(blob[: len(blob) // 3])
    resumed = nabi_train(photos, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"checkpoint {newest} cannot be read" in resumed.stdout and "cut short" in resumed.stdout
    assert "resuming from" in resumed.stdout and "ckpt-000000009" in resumed.stdout
    assert_same_run(ref, out)


def test_no_readable_checkpoint_is_a_clear_error(photos, tmp_path):
    out = tmp_path / "run"
    killed = nabi_train(photos, out, fault="step:8")
    assert killed.returncode == -signal.SIGKILL
    for ck in (out / "checkpoints").glob("ckpt-*"):
        (ck / "state.json").write_text("{")
    resumed = nabi_train(photos, out, "--resume")
    assert resumed.returncode == 1 and "no checkpoint of" in resumed.stderr and "--overwrite" in resumed.stderr
    assert "Traceback" not in resumed.stderr


def test_a_folder_of_other_files_is_never_used_or_deleted(photos, tmp_path, capsys):
    from nabi.cli import main
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    for extra in ([], ["--overwrite"], ["--resume"]):
        assert main(["train", str(photos), *TRAIN_ARGS, "--out", str(out), *extra]) == 1
        assert "not a nabi run" in capsys.readouterr().err
        assert (out / "thesis.tex").read_text() == "years of work" and sorted(os.listdir(out)) == ["thesis.tex"]


@pytest.mark.slow
def test_sigkill_at_an_iteration_budget_that_ends_mid_epoch(photos, tmp_path):
    """--iterations 9 ends in the middle of epoch 2, where a checkpoint also falls: killed right after that
    checkpoint (the 4th save: iterations 3, 6, 6 at the end of epoch 1, 9), the resumed run still writes
    epoch 2's partial row, as the uninterrupted run does."""
    ref = tmp_path / "ref"
    assert nabi_train(photos, ref, "--iterations", "9").returncode == 0
    out = tmp_path / "run"
    killed = nabi_train(photos, out, "--iterations", "9", fault="checkpoint_saved:4")
    assert killed.returncode == -signal.SIGKILL
    assert nabi_train(photos, out, "--iterations", "9", "--resume").returncode == 0
    assert [r["epoch"] for r in metrics_without_times(out)] == [1, 2]
    assert_same_run(ref, out)
