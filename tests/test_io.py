"""Weight files: safetensors + JSON sidecar, atomic writes, PyTorch files without unpickling."""
import json
import os
from collections import OrderedDict

import numpy as np
import pytest

from nabi import files as nio
from nabi.layers.module import Module, Parameter


@pytest.fixture
def torch():
    """PyTorch, for the tests that write .pth files: only they skip where it is not installed."""
    return pytest.importorskip("torch")


META = {"architecture": "tiny", "args": {"width": 8}, "class_names": ["고양이", "강아지", "나비"],
        "input_size": [3, 32, 32], "normalisation": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}


def _state():
    rng = np.random.default_rng(0)
    return OrderedDict([
        ("z.weight", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
        ("a.bias", rng.standard_normal(5)),                      # float64
        ("m.index", np.arange(-3, 9, dtype=np.int64).reshape(3, 4)),
        ("scalar", np.array(7.5, np.float32)),
    ])


def _no_temp_files(folder):
    return [f for f in os.listdir(folder) if f.endswith(".tmp")] == []


def test_round_trip_keeps_dtypes_values_order_and_korean_metadata(tmp_path):
    path = tmp_path / "model.safetensors"
    state = _state()
    nio.save_weights(path, state, META)
    side = tmp_path / "model.json"
    assert side.exists()
    text = side.read_text(encoding="utf-8")
    assert "고양이" in text and "\\u" not in text  # ensure_ascii=False
    written = json.loads(text)
    import hashlib
    assert written.pop("weights_file") == {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                           "bytes": path.stat().st_size}
    assert written == META
    loaded, meta = nio.load_weights(str(path))
    assert meta == META
    assert list(loaded) == list(state)
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape
        np.testing.assert_array_equal(loaded[k], v)
    assert _no_temp_files(tmp_path)


def test_missing_sidecar_gives_empty_metadata(tmp_path):
    path = tmp_path / "w.safetensors"
    nio.save_weights(path, {"w": np.ones(2)})
    assert list(json.loads((tmp_path / "w.json").read_text())) == ["weights_file"]   # only the file's own check
    assert nio.load_weights(path)[1] == {}
    os.remove(tmp_path / "w.json")
    state, meta = nio.load_weights(path)
    assert meta == {} and np.array_equal(state["w"], np.ones(2))


def test_missing_truncated_and_corrupted_files_give_clear_errors(tmp_path):
    path = tmp_path / "model.safetensors"
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        nio.load_weights(path)
    nio.save_weights(path, _state(), META)
    blob = path.read_bytes()
    for cut in (3, 40, len(blob) - 5):
        path.write_bytes(blob[:cut])
        with pytest.raises(ValueError, match=r"model\.safetensors is not a valid safetensors file"):
            nio.load_weights(path)
    path.write_bytes(b"PK\x03\x04 this is a zip, not weights" * 4)
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        nio.load_weights(path)
    # a flipped byte in the tensor data is caught by the checksum
    bad = bytearray(blob)
    bad[-3] ^= 0xFF
    path.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="corrupted"):
        nio.load_weights(path)
    path.write_bytes(blob)
    (tmp_path / "model.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="model.json"):
        nio.load_weights(path)


def test_failed_replace_leaves_the_good_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    nio.save_weights(path, {"w": np.ones(3)}, {"v": 1})
    good = path.read_bytes()
    good_side = (tmp_path / "model.json").read_text()

    def boom(*a, **k):
        raise OSError("disk on fire")
    monkeypatch.setattr(nio.atomic.os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        nio.save_weights(path, {"w": np.zeros(3)}, {"v": 2})
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert (tmp_path / "model.json").read_text() == good_side
    assert _no_temp_files(tmp_path) and sorted(os.listdir(tmp_path)) == ["model.json", "model.safetensors"]
    state, meta = nio.load_weights(path)
    assert meta == {"v": 1} and np.array_equal(state["w"], np.ones(3))


def test_failure_while_writing_the_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "notes.txt"
    nio.atomic_write_text(path, "good")
    real_fsync = os.fsync
    calls = []

    def failing_fsync(fd):
        calls.append(fd)
        raise OSError("fsync failed")
    monkeypatch.setattr(nio.atomic.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="fsync failed"):
        nio.atomic_write_bytes(path, b"half written" * 1000)
    monkeypatch.setattr(nio.atomic.os, "fsync", real_fsync)
    assert calls and path.read_text() == "good"
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_serialiser_failure_touches_nothing(tmp_path):
    path = tmp_path / "model.safetensors"
    nio.save_weights(path, {"w": np.ones(3)}, {"v": 1})
    good = path.read_bytes()
    with pytest.raises(TypeError):  # object arrays cannot be weights
        nio.save_weights(path, {"w": np.array([object()])}, {"v": 2})
    with pytest.raises(TypeError):  # metadata must be JSON-able: checked before any write
        nio.save_weights(path, {"w": np.zeros(3)}, {"v": object()})
    with pytest.raises(TypeError):
        nio.atomic_write_json(tmp_path / "model.json", {"v": object()})
    assert path.read_bytes() == good
    assert nio.load_weights(path)[1] == {"v": 1}
    assert _no_temp_files(tmp_path)


def test_atomic_json_and_permissions(tmp_path):
    p = tmp_path / "classes.json"
    nio.atomic_write_json(p, {"이름": "나비", "n": np.int64(3), "mean": np.array([0.5, 0.25])})
    text = p.read_text(encoding="utf-8")
    assert '"이름": "나비"' in text and text.startswith("{\n  ")
    assert json.loads(text) == {"이름": "나비", "n": 3, "mean": [0.5, 0.25]}
    os.chmod(p, 0o640)
    nio.atomic_write_json(p, [1])
    assert os.stat(p).st_mode & 0o777 == 0o640  # an existing file keeps its permissions
    q = tmp_path / "fresh.bin"
    nio.atomic_write_bytes(q, b"\x00\x01")
    assert q.read_bytes() == b"\x00\x01"
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(q).st_mode & 0o777 == 0o666 & ~umask  # the umask's mode, not mkstemp's private 0600


class _Tiny(Module):
    def __init__(self, n=3):
        super().__init__()
        self.weight = Parameter(np.arange(n * 2, dtype=np.float32).reshape(n, 2))
        self.bias = Parameter(np.zeros(n, np.float32))
        self.register_buffer("running_mean", np.ones(n, np.float32))


def test_save_model_and_load_model(tmp_path):
    path = tmp_path / "tiny.safetensors"
    src = _Tiny()
    src.bias.data[:] = [1, 2, 3]
    nio.save_model(src, path, {"class_names": ["가", "나", "다"]})
    dst = _Tiny()
    dst.weight.data[:] = 0
    report = nio.load_model(dst, path)
    assert report["missing"] == report["unexpected"] == report["mismatched"] == []
    assert report["metadata"]["class_names"] == ["가", "나", "다"] and "nabi_version" in report["metadata"]
    for k, v in src.state_dict().items():
        np.testing.assert_array_equal(dst.state_dict()[k], v)
    wrong = _Tiny(n=4)
    before = wrong.state_dict()
    with pytest.raises(KeyError, match="tiny.safetensors"):
        nio.load_model(wrong, path)
    for k, v in before.items():
        np.testing.assert_array_equal(wrong.state_dict()[k], v)
    report = nio.load_model(wrong, path, strict=False)
    assert len(report["mismatched"]) == 3


def test_torch_pth_and_checkpoint(tmp_path, torch):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    sd = net.state_dict()
    expected = OrderedDict((k, v.numpy()) for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    torch.save(sd, tmp_path / "plain.pth")
    torch.save({"epoch": 7, "state_dict": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}},
               tmp_path / "ckpt.pt")
    torch.save({"model": sd}, tmp_path / "model_ckpt.pth")
    import safetensors.torch
    safetensors.torch.save_file(dict(sd), str(tmp_path / "w.safetensors"))
    for name in ("plain.pth", "ckpt.pt", "model_ckpt.pth", "w.safetensors"):
        got = nio.load_torch_state_dict(tmp_path / name)
        assert isinstance(got, OrderedDict)
        assert sorted(got) == sorted(expected) and "1.num_batches_tracked" not in got, name
        if name != "w.safetensors":
            assert list(got) == list(expected)
        for k, v in expected.items():
            assert isinstance(got[k], np.ndarray) and got[k].dtype == v.dtype
            np.testing.assert_array_equal(got[k], v)


_EXECUTED = []


def _side_effect(tag):
    _EXECUTED.append(tag)
    return tag


class _Payload:
    """Unpickling this would call _side_effect: weights_only must refuse before that."""

    def __reduce__(self):
        return (_side_effect, ("ran",))


def test_pickled_objects_are_refused_without_running_them(tmp_path, torch):
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": _Payload()}, path)
    with pytest.raises(ValueError) as e:
        nio.load_torch_state_dict(path)
    msg = str(e.value)
    assert "evil.pth" in msg and "refusing" in msg and "other than tensors" in msg
    assert "weights_only=False" not in msg
    assert _EXECUTED == []


def test_bad_torch_files(tmp_path, torch):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        nio.load_torch_state_dict(tmp_path / "nope.pth")
    torch.save({"a": torch.ones(3)}, tmp_path / "ok.pth")
    blob = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="cut.pth is not a loadable PyTorch weights file"):
        nio.load_torch_state_dict(tmp_path / "cut.pth")
    (tmp_path / "junk.pth").write_bytes(b"hello world" * 10)
    with pytest.raises(ValueError, match="junk.pth is not a loadable PyTorch weights file"):
        nio.load_torch_state_dict(tmp_path / "junk.pth")
    torch.save({"a": torch.ones(3), "epoch": 3}, tmp_path / "mixed.pth")
    with pytest.raises(ValueError, match="epoch"):
        nio.load_torch_state_dict(tmp_path / "mixed.pth")
    torch.save([torch.ones(3)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="state dict"):
        nio.load_torch_state_dict(tmp_path / "list.pth")


def test_pth_without_torch_is_a_clear_error(tmp_path, monkeypatch, torch):
    torch.save({"a": torch.ones(3)}, tmp_path / "ok.pth")
    import builtins
    real_import = builtins.__import__

    def no_torch(name, *a, **k):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(ImportError, match="needs PyTorch"):
        nio.load_torch_state_dict(tmp_path / "ok.pth")
