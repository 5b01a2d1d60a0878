"""A run folder keeps one copy of each weight file: equal bytes are one file (hard links), a file system
without links gets copies, every name is still checked against its own sidecar, and the newest
checkpoint is the one a finished run keeps (``--keep-last``, default 1)."""
import errno
import hashlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nabi import files
from nabi.cli import main
from nabi.runs import folder_size
from nabi.training.checkpoint import latest_checkpoint
from nabi.training.extensions import Extension, Trigger

sys.path.insert(0, str(Path(__file__).parent))
from resume_job import make_trainer  # noqa: E402
from test_cli import write_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--model", "cifar_cnn", "--image-size", "32", "--epochs", "2", "--batch-size", "4", "--val-ratio", "0.25",
        "--test-ratio", "0", "--optimizer", "adam", "--lr", "0.003", "--checkpoint-every", "3", "--no-progress"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("copies") / "photos", classes=("a", "b", "c"), per_class=8)


def weight_files(run):
    return sorted(Path(run).rglob("*.safetensors"))


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_one_copy_of_each(run):
    """Two weight files hold the same bytes exactly when they are one file (the same inode)."""
    for a, b in itertools.combinations([p for p in weight_files(run) if p.name != "optimizer.safetensors"], 2):
        same_bytes, same_file = digest(a) == digest(b), os.path.samefile(a, b)
        assert same_bytes == same_file, f"{a} and {b}: equal bytes {same_bytes}, one file {same_file}"


def test_a_finished_run_keeps_one_copy_of_identical_weights(photos, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(photos), *ARGS, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    ckpts = sorted((out / "checkpoints").glob("ckpt-*"))
    assert [c.name for c in ckpts] == [latest_checkpoint(out).name]                      # --keep-last 1
    final, last = out / "model.safetensors", ckpts[0] / "model.safetensors"
    assert os.path.samefile(final, last) and os.stat(final).st_nlink >= 2                 # one file, two names
    assert_one_copy_of_each(out)
    best = json.loads((out / "best.json").read_text())
    assert os.path.samefile(out / "best.safetensors", final) == (best["best_epoch"] == 2)
    # each name keeps its own sidecar (their metadata differ) and is checked against it
    assert json.loads((out / "model.json").read_text())["status"] == "finished"
    for path in weight_files(out):
        files.load_weights(path)
    assert main(["check", str(out)]) == 0 and "0 damaged" in capsys.readouterr().out
    # the size printed counts a file with two names once
    inodes = {os.stat(p).st_ino: p.stat().st_size for p in out.rglob("*") if p.is_file()}
    every_name = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert folder_size(out) == sum(inodes.values()) <= every_name - final.stat().st_size     # a copy not counted
    shown = float(re.search(rf"run folder: {re.escape(str(out))} \(([\d.]+) kB\)", printed).group(1)) * 1e3
    assert abs(shown - folder_size(out)) < 1e3                # (the run's lock file was there when printed)


def test_killed_before_the_final_weights_then_resumed_links_them_to_the_checkpoint(photos, tmp_path):
    def nabi_train(out, *extra, fault=None):      # both runs in a child: the same thread count, the same sums
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("NABI_FAULT", None)
        if fault:
            env["NABI_FAULT"] = fault
        return subprocess.run([sys.executable, "-m", "nabi", "train", str(photos), *ARGS, "--out", str(out), *extra],
                              env=env, capture_output=True, text=True, timeout=300)
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert nabi_train(ref).returncode == 0
    killed = nabi_train(out, fault="final_weights:1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "model.safetensors").exists() and len(list((out / "checkpoints").glob("ckpt-*"))) == 2
    resumed = nabi_train(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert os.path.samefile(out / "model.safetensors", latest_checkpoint(out) / "model.safetensors")
    assert_one_copy_of_each(out)
    for name in ("model.safetensors", "best.safetensors"):
        a, b = files.load_weights(ref / name)[0], files.load_weights(out / name)[0]
        assert all(np.array_equal(a[k], b[k]) for k in a), name


def test_keep_last_keeps_two_while_running_and_the_newest_ones_at_the_end(tmp_path):
    seen = []
    t = make_trainer(tmp_path / "one", epochs=2)                  # keep_last 1 by default; a checkpoint every 3
    t.extend(_CountCheckpoints(seen))
    t.fit()
    assert max(seen) == 2 and [p.name for p in (tmp_path / "one" / "checkpoints").glob("ckpt-*")] == \
        ["ckpt-000000032"]
    t = make_trainer(tmp_path / "three", epochs=2)
    t.extensions["checkpoints"].keep_last = 3
    t.fit()
    assert len(list((tmp_path / "three" / "checkpoints").glob("ckpt-*"))) == 3


class _CountCheckpoints(Extension):
    """Records how many checkpoints are on disk after each save."""
    name, priority = "count_checkpoints", -1

    def __init__(self, seen):
        self.seen, self.trigger = seen, Trigger(iterations=3, epochs=1)

    def __call__(self, trainer):
        self.seen.append(len(list((trainer.out_dir / "checkpoints").glob("ckpt-*"))))


def test_where_the_file_system_refuses_links_each_name_gets_its_own_copy(tmp_path, monkeypatch):
    def refuse(src, dst, *a, **k):
        raise OSError(errno.EPERM, "Operation not permitted", dst)
    monkeypatch.setattr(os, "link", refuse)
    t = make_trainer(tmp_path, epochs=1)
    t.fit()
    final, last = tmp_path / "model.safetensors", latest_checkpoint(tmp_path) / "model.safetensors"
    assert final.read_bytes() == last.read_bytes() and not os.path.samefile(final, last)
    assert os.stat(final).st_nlink == 1
    assert not [p for p in tmp_path.rglob(".*link*")]                   # no temporary link left behind


def test_save_weights_links_only_to_a_sound_file_with_the_same_bytes(tmp_path):
    w = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    files.save_weights(tmp_path / "a.safetensors", w, {"role": "a"})
    files.save_weights(tmp_path / "b.safetensors", w, {"role": "b"}, same_as=[tmp_path / "a.safetensors"])
    assert os.path.samefile(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert files.load_weights(tmp_path / "b.safetensors")[1]["role"] == "b"
    other = {"w": w["w"] + 1}
    files.save_weights(tmp_path / "c.safetensors", other, same_as=[tmp_path / "a.safetensors"])
    assert not os.path.samefile(tmp_path / "a.safetensors", tmp_path / "c.safetensors")
    # a twin whose sidecar still records the same SHA-256 but whose bytes were damaged is not linked to
    blob = bytearray((tmp_path / "a.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    damaged = tmp_path / "d.safetensors"
    files.save_weights(damaged, w)
    os.unlink(damaged)
    damaged.write_bytes(bytes(blob))
    files.save_weights(tmp_path / "e.safetensors", w, same_as=[damaged, tmp_path / "missing.safetensors"])
    assert not os.path.samefile(damaged, tmp_path / "e.safetensors")
    np.testing.assert_array_equal(files.load_weights(tmp_path / "e.safetensors")[0]["w"], w["w"])
    # rewriting a linked name replaces it under a new inode: the other name keeps its bytes
    files.save_weights(tmp_path / "b.safetensors", other)
    np.testing.assert_array_equal(files.load_weights(tmp_path / "a.safetensors")[0]["w"], w["w"])


def test_equal_weights_give_equal_bytes_every_time(tmp_path):
    """The safetensors library writes its header's metadata map in an order that varies between calls;
    nabi writes the header in one order, so equal weights are equal files (and can be one file)."""
    state = {f"layer{i}.weight": np.full((3, i + 1), i, np.float32) for i in range(20)}
    state["고양이.running_var"] = np.ones(4, np.float64)
    digests = set()
    for k in range(12):
        files.save_weights(tmp_path / f"{k}.safetensors", state, {"k": k})
        digests.add(digest(tmp_path / f"{k}.safetensors"))
    assert len(digests) == 1
    loaded, meta = files.load_weights(tmp_path / "3.safetensors")
    assert list(loaded) == list(state) and meta["k"] == 3
    assert all(np.array_equal(loaded[k], state[k]) and loaded[k].dtype == state[k].dtype for k in state)
    import safetensors.numpy as stnp                       # still a plain safetensors file for any reader
    assert set(stnp.load((tmp_path / "3.safetensors").read_bytes())) == set(state)
