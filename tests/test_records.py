"""What a run folder records is what ran: split sources, resolved settings, which weights were scored,
checkpoints pruned at the end, the folder's size."""
import json
import shutil
import sys
from pathlib import Path

import pytest

from nabi.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from test_cli import write_folder  # noqa: E402

FAST = ["--model", "cifar_cnn", "--epochs", "2", "--batch-size", "4", "--no-progress"]


@pytest.fixture(scope="module")
def split_photos(tmp_path_factory):
    """DATA/train/<class>/… and DATA/test/<class>/…, no val/."""
    root = tmp_path_factory.mktemp("records") / "photos"
    write_folder(root / "train", classes=("a", "b"), per_class=8, seed=1)
    write_folder(root / "test", classes=("a", "b"), per_class=3, seed=2)
    return root


def test_split_folders_and_no_validation_are_recorded_as_they_ran(split_photos, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(split_photos), *FAST, "--val-ratio", "0", "--test-ratio", "0.3",
                 "--optimizer", "adam", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["splits"] == {"train": str(split_photos / "train"), "val": None, "test": str(split_photos / "test")}
    assert cfg["test_ratio"] is None and cfg["val_ratio"] is None       # the ratios given were not applied
    assert cfg["momentum"] is None and cfg["warmup"] is None             # Adam; no warm-up schedule
    assert cfg["image_size"] == 32 and cfg["channels"] == 3 and cfg["num_test"] == 6 and cfg["num_val"] == 0
    assert cfg["iterations_per_epoch"] == 4 and cfg["total_iterations"] == 8
    assert not (out / "best.safetensors").exists()                       # no validation: no "best"
    test = json.loads((out / "test.json").read_text())
    assert test["weights"] == "final" and test["weights_file"] == "model.safetensors"
    assert "(final weights: no validation part to choose a best epoch by)" in stdout
    assert [p.name for p in (out / "checkpoints").glob("ckpt-*")] == ["ckpt-000000008"]
    assert f"run folder: {out} (" in stdout and "kB)" in stdout


def test_validation_split_off_train_and_best_weights_scored(split_photos, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(split_photos), *FAST, "--val-ratio", "0.25", "--schedule", "warmup_cosine",
                 "--warmup", "2", "--checkpoint-every", "1", "--keep-checkpoints", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["splits"]["val"] == f"0.25 of {split_photos / 'train'}, stratified, seed 0"
    assert cfg["splits"]["train"] == f"the rest of {split_photos / 'train'}"
    assert cfg["val_ratio"] == 0.25 and cfg["test_ratio"] is None and cfg["warmup"] == 2
    test = json.loads((out / "test.json").read_text())
    best = json.loads((out / "best.json").read_text())
    assert test["weights"] == "best" and f"epoch {best['best_epoch']}, chosen by validation accuracy" in stdout
    assert len(list((out / "checkpoints").glob("ckpt-*"))) == 3          # --keep-checkpoints: keep_last of them


@pytest.mark.parametrize("extra,needle", [
    (["--val-ratio", "0", "--early-stopping", "2"], "--early-stopping 2 needs a validation part"),
    (["--schedule", "warmup_cosine", "--warmup", "50"], "--warmup 50 is not shorter than the whole run"),
])
def test_settings_that_cannot_apply_are_refused_and_leave_no_folder(split_photos, tmp_path, capsys, extra, needle):
    out = tmp_path / "run"
    assert main(["train", str(split_photos), *FAST, *extra, "--out", str(out)]) == 1
    assert needle in capsys.readouterr().err
    assert not out.exists()
