"""Every error a user can cause ends in one message naming the file or flag and what was expected, never a
Python traceback; warnings are one line each."""
import json
import shutil
import subprocess
import sys
import os
from pathlib import Path

import pytest

from nabi.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from test_cli import write_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("messages")
    data = write_folder(root / "data", classes=("a", "b", "c", "d"), per_class=5)
    run = root / "run"
    assert main(["train", str(data), "--model", "cifar_cnn", "--epochs", "1", "--batch-size", "8",
                 "--val-ratio", "0.2", "--test-ratio", "0", "--out", str(run), "--no-progress"]) == 0
    (root / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "bad.toml").write_text("epochs = [")
    other_arch = root / "other_arch"                              # a sidecar naming another architecture
    shutil.copytree(run, other_arch)
    for name in ("best.json", "model.json"):
        meta = json.loads((other_arch / name).read_text())
        meta["arch"] = {"name": "lenet5", "kwargs": {"num_classes": 4}}
        (other_arch / name).write_text(json.dumps(meta))
    bad_kwargs = root / "bad_kwargs"                               # ... or arguments it does not take
    shutil.copytree(run, bad_kwargs)
    for name in ("best.json", "model.json"):
        meta = json.loads((bad_kwargs / name).read_text())
        meta["arch"]["kwargs"]["wings"] = 3
        (bad_kwargs / name).write_text(json.dumps(meta))
    return root, data, run


def cases(root, data, run):
    img = data / "a" / "사진_0.png"
    return [
        # train
        (["train", root / "missing", "--out", root / "t1"], "missing does not exist"),
        (["train", root / "empty", "--out", root / "t2"], "no class sub-folders"),
        (["train", data, "--out", root / "notes.txt" / "r"], "notes.txt"),
        (["train", data, "--out", run], "already holds a run"),
        (["train", data, "--config", root / "bad.toml", "--out", root / "t3"], "bad.toml is not valid TOML"),
        (["train", data, "--config", root / "nope.toml"], "nope.toml does not exist"),
        (["train", data, "--model-arg", "oops", "--out", root / "t4"], "--model-arg must look like KEY=VALUE"),
        (["train", data, "--model", "lenet5", "--resume", "--out", run], "architecture"),
        (["train", data, "--epochs", "0", "--out", root / "t5"], "--epochs must be at least 1, got 0"),
        (["train", data, "--image-size", "0", "--out", root / "t6"], "--image-size must be at least 8"),
        (["train", data, "--model", "cifar_cnn", "--image-size", "40", "--out", root / "t7"], "cannot take 40"),
        # eval
        (["eval", root / "norun", data], "norun does not exist"),
        (["eval", run, root / "nodata"], "nodata does not exist"),
        (["eval", run, data, "--out", "/etc/passwd/x"], "--out /etc/passwd/x cannot be used"),
        (["eval", root / "other_arch", data], "do not fit the architecture its sidecar"),
        (["eval", root / "bad_kwargs", data], "describes an architecture nabi cannot build"),
        # predict
        (["predict", run, root / "nothing.png"], "nothing.png does not exist"),
        (["predict", run, root / "empty"], "holds no images"),
        (["predict", run, img, "--topk", "0"], "--topk must be at least 1, got 0"),
        (["predict", root / "other_arch", img], "best.json"),
        (["predict", root / "empty", img], "holds no best.safetensors or model.safetensors"),
        # summary, export, explain, check, demo
        (["summary", "alexnett"], "unknown model 'alexnett'"),
        (["summary", "lenet5", "--input", "3by3"], "--input must look like"),
        (["summary", "lenet5", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["export", root / "norun.safetensors", "--onnx", root / "m.onnx"], "unknown model"),
        (["export", "lenet5", "--onnx", root / "notes.txt" / "m.onnx"], "notes.txt"),
        (["explain", run, root / "nothing.png"], "nothing.png"),
        (["explain", run, img, "--layer", "nolayer"], "nolayer"),
        (["explain", run, img, "--target", "zebra"], "zebra"),
        (["explain", run, img, "--out", "/etc/passwd/x"], "--out /etc/passwd/x cannot be used"),
        (["check", root / "norun"], "norun does not exist"),
        (["check", root / "empty"], "does not look like a nabi run folder"),
        (["demo", "--epochs", "0"], "--epochs must be at least 1"),
        (["demo", "--epochs", "1", "--out", run, "--no-progress"], "already holds a run"),
    ]


def test_every_documented_error_is_one_message_without_traceback(made, capsys):
    root, data, run = made
    failures = []
    for argv, needle in cases(root, data, run):
        try:
            code = main([str(a) for a in argv])
        except BaseException as e:          # an exception escaping main would be a traceback for the user
            failures.append(f"{argv}: raised {type(e).__name__}: {e}")
            continue
        err = capsys.readouterr().err
        if code not in (1, 2) or needle not in err or "Traceback" in err or err.count("\n") > 2:
            failures.append(f"{[str(a) for a in argv]}: exit {code}, stderr {err!r}, expected {needle!r}")
    assert failures == []


def test_errors_in_a_real_process_print_no_traceback(made):
    root, data, run = made
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for argv in (["eval", run, data, "--out", "/etc/passwd/x"], ["predict", run, data / "a" / "사진_0.png",
                                                                  "--topk", "0"], ["check", root / "empty"]):
        done = subprocess.run([sys.executable, "-m", "nabi", *map(str, argv)], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 1 and "Traceback" not in done.stderr and "error:" in done.stderr, done.stderr


def test_skipped_images_are_one_line_each_and_a_count(made, tmp_path):
    root, data, run = made
    photos = write_folder(tmp_path / "photos", classes=("a", "b"), per_class=6)
    for name in ("x.png", "y.jpg"):
        (photos / "a" / name).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "nabi", "train", str(photos), "--model", "cifar_cnn", "--epochs",
                           "1", "--test-ratio", "0", "--out", str(tmp_path / "run"), "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [s for s in done.stderr.splitlines() if s.strip()]
    assert sum("skipping unreadable image" in s and ("x.png" in s or "y.jpg" in s) for s in lines) == 2
    assert any(s.startswith("nabi: warning: skipped 2 of 14 images in ") for s in lines), lines
    assert not any("UserWarning" in s or "warnings.warn" in s for s in lines), lines


def test_eval_on_some_of_the_classes_scores_them_and_says_so(made, capsys, tmp_path):
    root, data, run = made
    part = tmp_path / "part"
    for c in ("a", "b"):
        shutil.copytree(data / c, part / c)
    assert main(["eval", str(run), str(part), "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "the folder holds 2 of the model's 4 classes: c, d have no photos here" in out
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    full = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert report["n"] == 10 and "confusion_matrix" in report
    cm = report["confusion_matrix"]
    assert sum(map(sum, cm[2:])) == 0 and report["accuracy"] == (cm[0][0] + cm[1][1]) / 10
    assert 0 <= full["train_acc"] <= 1
