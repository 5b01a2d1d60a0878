"""The `nabi` command line end to end, on image folders the tests write, and its errors."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nabi.cli import main


def write_folder(root, classes=("cat_a", "cat_b", "배경"), per_class=12, size=(40, 36), seed=0, fmt="png"):
    """Learnable images: each class a different dominant colour, plus noise; mixed sizes and modes."""
    rng = np.random.default_rng(seed)
    colours = [(220, 40, 40), (40, 200, 60), (50, 60, 210), (200, 200, 40)]
    for ci, name in enumerate(classes):
        d = Path(root) / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = (size[0] + (i % 3) * 4, size[1] + (i % 2) * 6)           # mixed sizes
            img = np.clip(np.array(colours[ci % 4]) + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
            im = Image.fromarray(img)
            if i % 5 == 4:
                im = im.convert("L")                                        # mixed modes
            im.save(d / f"사진_{i}.{fmt}")
    return Path(root)


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = write_folder(root / "data")
    out = root / "run"
    code = main(["train", str(data), "--model", "cifar_cnn", "--epochs", "3", "--batch-size", "8", "--lr", "3e-3",
                 "--val-ratio", "0.2", "--test-ratio", "0.2", "--out", str(out), "--no-progress", "--cache"])
    assert code == 0
    return root, data, out


def test_train_writes_a_complete_run_folder(trained_run):
    root, data, out = trained_run
    for name in ("config.json", "metrics.jsonl", "curves.png", "model.safetensors", "model.json", "best.safetensors",
                 "test.json"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "model.json").read_text(encoding="utf-8"))
    assert meta["classes"] == ["cat_a", "cat_b", "배경"] and meta["arch"]["name"] == "cifar_cnn"
    assert meta["input_size"] == [3, 32, 32] and meta["config"]["batch_size"] == 8
    cfg = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert cfg["num_train"] + cfg["num_val"] + cfg["num_test"] == 36
    test = json.loads((out / "test.json").read_text())
    assert test["n"] == cfg["num_test"] and test["test_acc"] > 0.5         # colours are easy


def test_predict_json(trained_run, capsys):
    root, data, out = trained_run
    code, stdout, _ = run(["predict", out, data / "cat_b" / "사진_0.png", "--json", "--topk", "2"], capsys)
    assert code == 0
    res = json.loads(stdout)
    assert len(res) == 1 and len(res[0]["top"]) == 2
    probs = [t["probability"] for t in res[0]["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_predict_folder_reports_a_corrupt_file(trained_run, tmp_path, capsys):
    root, data, out = trained_run
    (tmp_path / "good.png").write_bytes((data / "cat_a" / "사진_1.png").read_bytes())
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    code, stdout, _ = run(["predict", out, tmp_path], capsys)
    assert code == 1
    assert "bad.jpg: ERROR" in stdout and "good.png:" in stdout


def test_eval_writes_report_and_background_statistics(trained_run, tmp_path, capsys):
    root, data, out = trained_run
    code, stdout, _ = run(["eval", out, data, "--all-photos", "--background", "배경", "--out", tmp_path / "ev"],
                          capsys)       # every photo of the training folder, not only the held-out ones
    assert code == 0
    report = json.loads((tmp_path / "ev" / "eval.json").read_text(encoding="utf-8"))
    assert report["n"] == 36 and 0 <= report["accuracy"] <= 1
    bg = report["background_statistics"]
    assert bg["n_test1"] == 36 and bg["n_test2"] == 24
    assert (tmp_path / "ev" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert "P1" in stdout and "P4" in stdout


def test_eval_refuses_classes_the_model_never_saw(trained_run, tmp_path, capsys):
    root, data, out = trained_run
    other = write_folder(tmp_path / "other", classes=("cat_a", "dog"))
    code, _, err = run(["eval", out, other], capsys)
    assert code == 1 and "dog" in err and "not among the model's classes" in err


def test_resume_with_another_architecture_is_refused(trained_run, tmp_path, capsys):
    root, data, out = trained_run
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    code, _, err = run(["train", data, "--model", "lenet5", "--epochs", "1", "--out", copy, "--resume",
                        "--no-progress"], capsys)
    assert code == 1 and "architecture" in err


def test_summary_and_export(tmp_path, capsys, trained_run):
    code, stdout, _ = run(["summary", "cifar_cnn", "--classes", "10"], capsys)
    assert code == 0 and "25,578" in stdout           # 448 + 4,640 + 20,490 (the two-convolution CIFAR network)
    code, stdout, _ = run(["summary", "--list"], capsys)
    assert code == 0 and "alexnet336" in stdout.split()
    root, data, out = trained_run
    code, stdout, _ = run(["export", out, "--onnx", tmp_path / "m.onnx"], capsys)
    assert code == 0 and (tmp_path / "m.onnx").is_file() and "max |Δlogit|" in stdout


@pytest.mark.parametrize("argv,needle", [
    (["summary", "alexnett"], "unknown model"),
    (["summary", "alexnet", "--input", "3x32x32"], "too small"),
    (["summary", "alexnet", "--input", "3by32"], "--input must look like"),
    (["predict", "/nonexistent/run", "x.png"], "does not exist"),
])
def test_clear_errors(argv, needle, capsys):
    code, _, err = run(argv, capsys)
    assert code == 1 and needle in err, err


def test_train_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(["train", empty, "--out", tmp_path / "o1", "--no-progress"], capsys)
    assert code == 1 and "no class sub-folders" in err
    data = write_folder(tmp_path / "d", classes=("a", "b"), per_class=6)
    (data / "c").mkdir()
    code, _, err = run(["train", data, "--model", "cifar_cnn", "--out", tmp_path / "o2", "--no-progress"], capsys)
    assert code == 1 and "d/c has no image files" in err
    (data / "c").rmdir()
    (data / "a" / "notes.txt").write_text("not an image")                    # ignored by extension
    (data / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    code, _, err = run(["train", data, "--model", "cifar_cnn", "--out", blocker / "run", "--no-progress"], capsys)
    assert code == 1 and "cannot be written" in err
    with pytest.warns(UserWarning, match="broken.png"):
        code, _, err = run(["train", data, "--model", "cifar_cnn", "--epochs", "1", "--batch-size", "4",
                            "--out", tmp_path / "o3", "--no-progress"], capsys)
    assert code == 0
    code, _, err = run(["train", data, "--model", "cifar_cnn", "--epochs", "1", "--strict",
                        "--out", tmp_path / "o4", "--no-progress"], capsys)
    assert code == 1 and "broken.png" in err


def test_image_size_for_size_agnostic_models(tmp_path, capsys):
    data = write_folder(tmp_path / "d", classes=("a", "b"), per_class=6)
    code, _, err = run(["train", data, "--model", "resnet20", "--image-size", "40", "--epochs", "1",
                        "--test-ratio", "0", "--out", tmp_path / "r", "--no-progress"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "model.json").read_text())["input_size"] == [3, 40, 40]
    code, _, err = run(["train", data, "--model", "cifar_cnn", "--image-size", "40", "--epochs", "1",
                        "--out", tmp_path / "r2", "--no-progress"], capsys)
    assert code == 1 and "cifar_cnn cannot take 40×40 inputs" in err


def test_toml_config_stands_in_for_flags(tmp_path, capsys):
    data = write_folder(tmp_path / "d", classes=("a", "b"), per_class=6)
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'model = "cifar_cnn"\nepochs = 1\nbatch_size = 4\nout = "{(tmp_path / "r").as_posix()}"\n'
                   'test_ratio = 0.0\nprogress = false\n')
    code, _, err = run(["train", data, "--config", cfg], capsys)
    assert code == 0, err
    resolved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert resolved["batch_size"] == 4 and resolved["model"] == "cifar_cnn"
    code, _, err = run(["train", data, "--model", "lenet5", "--model-arg", "activation=relu", "--model-arg",
                        "in_channels=3", "--epochs", "1", "--test-ratio", "0", "--out", tmp_path / "r2",
                        "--no-progress"], capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "r2" / "model.json").read_text())
    assert meta["arch"]["kwargs"]["activation"] == "relu" and meta["arch"]["kwargs"]["in_channels"] == 3
    cfg.write_text('epochz = 3\n')
    code, _, err = run(["train", data, "--config", cfg], capsys)
    assert code == 1 and "unknown config keys: epochz" in err


def test_demo_runs_end_to_end(tmp_path, capsys):
    code, stdout, _ = run(["demo", "--epochs", "1", "--out", tmp_path / "demo", "--no-progress"], capsys)
    assert code == 0
    acc = json.loads((tmp_path / "demo" / "test.json").read_text())["test_acc"]
    assert acc > 0.8                                                         # one epoch of LeNet-5 on 3,500 digits


def test_threads_and_float16_training(tmp_path, capsys):
    """`nabi --threads 1 train … --precision float16`: mixed precision from the command line, the saved
    weights are the float32 masters; a bad thread count is a clear error."""
    from nabi import backend
    from nabi import files
    from nabi.functional import cpu_kernels
    data = write_folder(tmp_path / "data", per_class=6)
    try:
        code, _, err = run(["--threads", "1", "train", data, "--model", "cifar_cnn", "--epochs", "1",
                            "--batch-size", "6", "--precision", "float16", "--val-ratio", "0.2", "--test-ratio", "0",
                            "--out", tmp_path / "run", "--no-progress"], capsys)
    finally:
        if backend._thread_limits is not None:
            backend._thread_limits.restore_original_limits()
        if cpu_kernels.available():
            import numba
            cpu_kernels.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert code == 0, err
    state, meta = files.load_weights(tmp_path / "run" / "model.safetensors")
    assert all(v.dtype == np.float32 for v in state.values())
    assert meta["config"]["precision"] == "float16"
    code, _, err = run(["--threads", "0", "summary", "lenet5"], capsys)
    assert code == 1 and "threads must be at least 1" in err


def test_train_predict_and_eval_on_the_gpu(tmp_path, capsys, monkeypatch):
    """`--device gpu` through the whole command line, on the emulated CuPy (``tests/cupy_emulator.py``)
    or a real device: training runs on the device and saves host float32 weights; `predict` and `eval`
    on the device agree with the CPU on the same saved model."""
    from nabi import backend
    from nabi import files
    if not backend.gpu_available():
        import cupy_emulator
        cupy_emulator.install(monkeypatch)
    data = write_folder(tmp_path / "data", per_class=8)
    out = tmp_path / "run"
    code, _, err = run(["train", data, "--model", "cifar_cnn", "--epochs", "2", "--batch-size", "8", "--lr", "3e-3",
                        "--val-ratio", "0.25", "--test-ratio", "0", "--out", out, "--no-progress", "--cache",
                        "--device", "gpu"], capsys)
    assert code == 0, err
    state, meta = files.load_weights(out / "model.safetensors")
    assert all(type(v) is np.ndarray and v.dtype == np.float32 for v in state.values())
    assert meta["config"]["device"] == "gpu"
    image = data / "cat_b" / "사진_3.png"
    preds = {}
    for device in ("cpu", "gpu"):
        code, stdout, err = run(["predict", out, image, "--json", "--device", device], capsys)
        assert code == 0, err
        preds[device] = json.loads(stdout)[0]["top"]
        code, _, err = run(["eval", out, data, "--device", device, "--out", tmp_path / f"ev_{device}"], capsys)
        assert code == 0, err
    assert [t["class"] for t in preds["gpu"]] == [t["class"] for t in preds["cpu"]]
    np.testing.assert_allclose([t["probability"] for t in preds["gpu"]], [t["probability"] for t in preds["cpu"]],
                               rtol=1e-4, atol=1e-6)
    reports = [json.loads((tmp_path / f"ev_{d}" / "eval.json").read_text(encoding="utf-8")) for d in ("cpu", "gpu")]
    assert reports[0]["n"] == reports[1]["n"] == 24
    assert abs(reports[0]["accuracy"] - reports[1]["accuracy"]) <= 1 / 24     # one borderline image at most
