"""nabi as a library, where a PyTorch user looks: ``nabi.optim``, ``nabi.save_model``/``nabi.load_model``,
optimisers over ``net.parameters()``, the README's example run as written, and the old import paths."""
import importlib
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import nabi
from nabi.layers import Linear, ReLU, Sequential

ROOT = Path(__file__).resolve().parents[1]


def readme_example():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## A network in a few lines"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    np.random.seed(0)
    scope = {}
    exec(compile(readme_example(), "README.md", "exec"), scope)
    assert re.fullmatch(r"loss after 10 steps: \d+\.\d{3}\n", capsys.readouterr().out)
    assert (tmp_path / "net.safetensors").is_file() and (tmp_path / "net.json").is_file()
    net, copy = scope["net"], scope["copy"]
    for (name, a), b in zip(net.state_dict().items(), copy.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert scope["loss"] < 2.3 * 0.9           # ten steps on four photos: well below chance (ln 10)


def _net():
    nabi.seed(0)
    return Sequential(Linear(5, 4), ReLU(), Linear(4, 3))


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_optimisers_take_parameters_as_torch_does_and_step_as_with_names(name):
    x, y = np.random.default_rng(0).standard_normal((6, 5)), np.array([0, 1, 2, 0, 1, 2])
    results = []
    for params in (lambda n: n.parameters(), lambda n: n.named_parameters()):
        net = _net()
        opt = getattr(nabi.optim, name)(params(net), lr=0.1)
        loss_fn = nabi.layers.CrossEntropyLoss()
        for _ in range(3):
            loss_fn(net(x), y)
            net.zero_grad()
            net.backward(loss_fn.backward())
            opt.step()
        results.append((net.state_dict(), opt))
    (by_position, opt_p), (by_name, opt_n) = results
    for k in by_name:
        np.testing.assert_array_equal(by_position[k], by_name[k], err_msg=k)
    assert list(opt_p.params) == ["0", "1", "2", "3"]          # named by position, as torch.optim numbers them
    again = getattr(nabi.optim, name)(_net().parameters(), lr=0.1)
    again.load_state_dict(opt_p.state_dict())                 # the same order in a fresh model: the same names
    with pytest.raises(KeyError, match=r"made from model.parameters\(\): build this optimizer from the same"):
        getattr(nabi.optim, name)(_net().named_parameters(), lr=0.1).load_state_dict(opt_p.state_dict())


def test_a_mix_of_parameters_and_named_pairs_is_refused():
    net = _net()
    with pytest.raises(TypeError, match=r"parameters\(\) .* or model.named_parameters\(\).*not a mix"):
        nabi.optim.SGD([next(net.parameters()), *list(net.named_parameters())[1:]], lr=0.1)


def test_save_model_refuses_to_replace_a_json_that_is_not_its_sidecar(tmp_path):
    net = _net()
    mine = tmp_path / "net.json"
    mine.write_text('{"my": "notes"}')
    with pytest.raises(FileExistsError, match=r"net\.json already exists and is not the metadata file of .*"
                                               r"net\.safetensors.*overwrite=True"):
        nabi.save_model(net, tmp_path / "net.safetensors")
    assert mine.read_text() == '{"my": "notes"}' and not (tmp_path / "net.safetensors").exists()
    (tmp_path / "notes.json").write_text("not even JSON")
    with pytest.raises(FileExistsError, match="notes.json already exists"):
        nabi.save_model(net, tmp_path / "notes.safetensors")
    nabi.save_model(net, tmp_path / "net.safetensors", overwrite=True)      # asked for: replaced
    nabi.save_model(net, tmp_path / "net.safetensors", {"epoch": 2})       # its own sidecar: rewritten
    other = _net()
    report = nabi.load_model(other, tmp_path / "net.safetensors")
    assert report["metadata"]["epoch"] == 2 and report["missing"] == []


@pytest.mark.parametrize("old,new,name", [
    ("nabi.training.optim", "nabi.optim", "SGD"),
    ("nabi.training.optim", "nabi.optim", "make_schedule"),
    ("nabi.files.weights", "nabi.files.weight_files", "save_weights"),
    ("nabi.files.weights", "nabi.files.weight_files", "load_weights"),
])
def test_old_import_paths_still_work_with_a_deprecation_warning(old, new, name):
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=rf"{re.escape(old)} .*(is now|use) "):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), name)


def test_old_names_of_save_and_load_point_to_the_top_level():
    from nabi import files
    with pytest.warns(DeprecationWarning, match="use nabi.save_model"):
        from nabi.files.weights import save_model
    assert save_model is nabi.save_model
    with pytest.warns(DeprecationWarning, match="now nabi.load_model"):
        assert files.load_model_weights is nabi.load_model
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from nabi.optim import SGD  # noqa: F401  (the new paths are silent)
        from nabi import load_model, save_model as _  # noqa: F401
