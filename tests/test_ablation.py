"""nabi.studies.ablation: a tiny SE ablation end to end (report arithmetic, paired init, resume) and the input checks."""
import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from nabi.studies import ablation as A
from nabi.studies import experiment as X
from nabi import models as zoo
from nabi.training import trainer as T

ROOT = Path(__file__).resolve().parents[1]
COLOURS = [(220, 40, 40), (40, 70, 220), (40, 180, 60)]


def _write_folder(root, n_train=10, n_test=4, size=16, seed=0):
    """train/ and test/ with three classes: a coloured square on a noisy ground."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for k, cls in enumerate("abc"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for j in range(n):
                img = rng.integers(90, 150, size=(size, size, 3)).astype(np.float64)
                y, x = rng.integers(2, size // 2, 2)
                img[y:y + size // 2, x:x + size // 2] = COLOURS[k]
                Image.fromarray(img.astype(np.uint8)).save(root / split / cls / f"{j:02d}.png")
    return root


def se_config(data, **top):
    cfg = {"data": str(data), "factor": "se", "seeds": 2, "seed": 3,
           "base": {"model": "resnet20", "image_size": 16, "iterations": 2, "batch_size": 8, "optimizer": "sgd",
                    "lr": 0.05, "val_ratio": 0.2},
           "variants": [{"name": "plain", "se": False}, {"name": "se", "se": 4}]}
    cfg.update(top)
    return cfg


def digits_config(**top):
    cfg = {"data": "embedded:digits8x8", "factor": "activation", "seeds": 2, "max_train": 100,
           "base": {"model": "lenet5", "iterations": 2, "batch_size": 8},
           "variants": [{"name": "tanh", "activation": "tanh"}, {"name": "relu", "activation": "relu"}]}
    cfg.update(top)
    return cfg


@pytest.fixture
def no_training(monkeypatch):
    """Any attempt to build a Trainer, fit, or train a run fails the test."""
    def boom(*a, **k):
        pytest.fail("training was started")
    monkeypatch.setattr(T.Trainer, "__init__", boom)
    monkeypatch.setattr(T.Trainer, "fit", boom)
    monkeypatch.setattr(A, "_train_run", boom)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The SE ablation (resnet20 vs SE-resnet20, 2 seeds), run in 2 worker processes."""
    tmp = tmp_path_factory.mktemp("ablation")
    data = _write_folder(tmp / "data")
    out = tmp / "out"
    logs = []
    report = A.run_ablation(se_config(data), out_dir=out, jobs=2, log=logs.append)
    return {"report": report, "out": out, "data": data, "logs": logs}


def _results(out):
    res = {}
    for p in sorted(Path(out, "runs").glob("*/seed-*/result.json")):
        r = json.loads(p.read_text(encoding="utf-8"))
        res[(r["variant"], r["seeds"]["run"])] = r
    return res


# -- end to end ------------------------------------------------------------------------------------------------
def test_report_files_and_arithmetic(finished):
    out, rep = finished["out"], finished["report"]
    for name in ("ablation.md", "ablation.csv", "ablation.json", "ablation.png", "ablation_setup.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert any("worker processes" in m for m in finished["logs"])
    res = _results(out)
    assert sorted(res) == [("plain", 1), ("plain", 2), ("se", 1), ("se", 2)]
    on_disk = json.loads((out / "ablation.json").read_text(encoding="utf-8"))
    assert on_disk["variants"] == rep["variants"]
    for v in rep["variants"]:
        for key in ("test_acc", "val_acc", "train_seconds"):
            vals = [res[(v["name"], s)]["models"][v["name"]][key] for s in (1, 2)]
            assert v[key]["values"] == vals
            assert v[key]["mean"] == pytest.approx(np.mean(vals))
            assert v[key]["std"] == pytest.approx(np.std(vals, ddof=1))
        for s in (1, 2):
            m = res[(v["name"], s)]["models"][v["name"]]
            assert m["iterations"] == 2 and 0 <= m["test_acc"] <= 1 and m["n_test"] == 12 and m["n_val"] == 6
            assert m["train_seconds"] > 0
    plain, se = rep["variants"]
    assert (plain["model"], se["model"]) == ("resnet20", "se_resnet20") and se["model_args"] == {"reduction": 4}
    assert plain["params"] == zoo.get("resnet20", num_classes=3).num_parameters()
    assert se["params"] == zoo.get("se_resnet20", num_classes=3, reduction=4).num_parameters() > plain["params"]
    assert se["macs"] > plain["macs"] > 0
    # every parameter of the plain network is in the SE network (same name and shape): shared
    assert plain["shared"]["arrays"] == plain["shared"]["total_arrays"]
    assert se["shared"]["arrays"] == plain["shared"]["total_arrays"] < se["shared"]["total_arrays"]
    assert se["shared"]["params"] == plain["params"]
    # paired differences: d = se − plain per seed
    d = [res[("se", s)]["models"]["se"]["test_acc"] - res[("plain", s)]["models"]["plain"]["test_acc"] for s in (1, 2)]
    comp = rep["comparisons"]["se"]["test_acc"]
    assert comp["n"] == 2 and comp["mean_diff"] == pytest.approx(np.mean(d))
    assert (comp["a"], comp["b"]) == ("plain", "se") and "val_acc" in rep["comparisons"]["se"]
    # CSV: one row per run, same numbers
    rows = list(csv.DictReader((out / "ablation.csv").open(encoding="utf-8")))
    assert len(rows) == 4
    for r in rows:
        m = res[(r["variant"], int(r["run"]))]["models"][r["variant"]]
        assert float(r["test_acc"]) == pytest.approx(m["test_acc"])
        assert float(r["val_acc"]) == pytest.approx(m["val_acc"])
    md = (out / "ablation.md").read_text(encoding="utf-8")
    assert "| plain | false | resnet20 |" in md and "| se | 4 | se_resnet20 |" in md
    assert "se − plain" in md and f"{plain['params']:,}" in md


def test_shared_initial_weights_are_identical_per_seed(finished):
    res = _results(finished["out"])
    plan = A.plan_ablation(se_config(finished["data"]))
    hashes = []
    for s in (1, 2):
        built = A.paired_variant_models(plan, s)
        (m_plain, _), (m_se, k_se) = built["plain"], built["se"]
        assert set(k_se) < set(m_se.state_dict()) and not any(".se." in k for k in k_se)
        p_state, s_state = m_plain.state_dict(), m_se.state_dict()
        h_plain = X.state_sha256({k: p_state[k] for k in k_se})
        h_se = X.state_sha256({k: s_state[k] for k in k_se})
        assert h_plain == h_se
        # the runs trained from exactly these weights, and recorded the same shared hash
        assert res[("plain", s)]["init"]["sha256"] == X.state_sha256(p_state)
        assert res[("se", s)]["init"]["sha256"] == X.state_sha256(s_state)
        assert res[("se", s)]["init"]["shared_sha256"] == res[("se", s)]["init"]["reference_shared_sha256"] == h_se
        # same data order and init seed for every variant of a seed
        assert res[("se", s)]["seeds"] == res[("plain", s)]["seeds"]
        hashes.append(h_plain)
    assert hashes[0] != hashes[1]  # the seeds differ
    # without pairing the same seed does not give the SE network the plain one's weights
    plan["paired_init"] = False
    built = A.paired_variant_models(plan, 1)
    (m_plain, _), (m_se, k_se) = built["plain"], built["se"]
    p_state, s_state = m_plain.state_dict(), m_se.state_dict()
    assert X.state_sha256({k: p_state[k] for k in k_se}) != X.state_sha256({k: s_state[k] for k in k_se})


def test_resume_keeps_finished_runs(finished, no_training):
    out = finished["out"]
    before = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed-*/result.json")}
    logs = []
    rep = A.run_ablation(se_config(finished["data"]), out_dir=out, jobs=1, log=logs.append)
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed-*/result.json")} == before
    assert sum("complete, kept" in m for m in logs) == 4
    assert rep["variants"] == finished["report"]["variants"]


def test_missing_run_is_retrained_alone_and_reproduced(finished, monkeypatch, tmp_path):
    import shutil
    out = tmp_path / "copy"
    shutil.copytree(finished["out"], out)
    target = out / "runs" / "se" / "seed-02" / "result.json"
    old = json.loads(target.read_text(encoding="utf-8"))
    target.unlink()
    calls = []
    fit = T.Trainer.fit

    def counting_fit(self):
        calls.append(self.out_dir)
        return fit(self)
    monkeypatch.setattr(T.Trainer, "fit", counting_fit)
    rep = A.run_ablation(se_config(finished["data"]), out_dir=out, jobs=1, log=None)
    assert calls == [target.parent]
    new = json.loads(target.read_text(encoding="utf-8"))
    assert new["init"] == old["init"]
    assert new["models"]["se"]["test_acc"] == old["models"]["se"]["test_acc"]
    assert new["models"]["se"]["final_train_loss"] == pytest.approx(old["models"]["se"]["final_train_loss"])
    assert rep["variants"][1]["test_acc"]["values"] == finished["report"]["variants"][1]["test_acc"]["values"]


def test_other_setup_in_out_dir_is_refused(finished, no_training, tmp_path):
    import shutil
    out = tmp_path / "copy"
    shutil.copytree(finished["out"], out)
    cfg = se_config(finished["data"])
    cfg["base"]["lr"] = 0.01
    with pytest.raises(ValueError, match="different setup"):
        A.run_ablation(cfg, out_dir=out, log=None)


def test_no_validation_and_a_single_listed_seed(tmp_path):
    cfg = digits_config(factor="pool", seeds=[5], max_test=60,
                        variants=[{"name": "avg", "pool": "avg"}, {"name": "max", "pool": "max"}])
    cfg["base"].update(val_ratio=0.0, iterations=1)
    rep = A.run_ablation(cfg, out_dir=tmp_path / "out", log=None)
    assert [v["name"] for v in rep["variants"]] == ["avg", "max"]
    assert all("val_acc" not in v and v["test_acc"]["std"] is None for v in rep["variants"])
    comp = rep["comparisons"]["max"]
    assert list(comp) == ["test_acc"] and comp["test_acc"]["n"] == 1 and comp["test_acc"]["ci_low"] is None
    assert any("n=1 < 2" in n for n in comp["test_acc"]["notes"])
    assert rep["seed_labels"] == ["5"] and rep["runs"][0]["val_acc"] is None
    md = (tmp_path / "out" / "ablation.md").read_text(encoding="utf-8")
    assert "Val acc" not in md and "| 5 |" in md and "(listed)" in md
    assert (tmp_path / "out" / "ablation.png").stat().st_size > 0
    assert (tmp_path / "out" / "runs" / "max" / "seed-01" / "model.safetensors").is_file()
    assert not (tmp_path / "out" / "runs" / "max" / "seed-01" / "checkpoints").exists()


# -- checks before training -------------------------------------------------------------------------------------
def _with(cfg, **base):
    cfg = json.loads(json.dumps(cfg))
    cfg["base"].update(base)
    return cfg


BAD = {
    "unknown factor": (digits_config(factor="nope"), "unknown factor 'nope'"),
    "unknown model": (_with(digits_config(), model="lenet7"), "unknown model 'lenet7'"),
    "unknown model as a value": (digits_config(factor="model", variants=[{"name": "a"}, {"name": "b",
                                 "model": "resnet7"}]), "unknown model 'resnet7'"),
    "SE on LeNet": (digits_config(factor="se", variants=[{"name": "a", "se": False}, {"name": "b", "se": True}]),
                    "no SE counterpart"),
    "growth rate on a ResNet": (_with(digits_config(factor="growth_rate", variants=[
        {"name": "a", "growth_rate": 4}, {"name": "b", "growth_rate": 8}]), model="resnet20"), "densenet_cifar"),
    "dropout on LeNet": (digits_config(factor="dropout", variants=[{"name": "a", "dropout": 0.0},
                                                                   {"name": "b", "dropout": 0.5}]), "does not take"),
    "variant sets another key": (digits_config(variants=[{"name": "tanh", "activation": "tanh"},
                                                         {"name": "relu", "activation": "relu", "lr": 0.1}]),
                                 "may set only name and activation"),
    "bad factor value": (digits_config(variants=[{"name": "a", "activation": "tanh"},
                                                 {"name": "b", "activation": "gelu"}]), "must be one of"),
    "no shared parameter": (digits_config(factor="model", variants=[
        {"name": "lenet", "model": "lenet5"}, {"name": "cnn", "model": {"name": "cifar_cnn",
                                                                        "args": {"in_channels": 1}}}]),
        "shares no parameter"),
    "model args that do not fit": (_with(digits_config(factor="model", variants=[
        {"name": "a"}, {"name": "b", "model": "cifar_cnn"}]), model_args={"activation": "relu"}),
        "does not take model_args \\['activation'\\]"),
    "invalid depth": (_with(digits_config(factor="depth", variants=[{"name": "a", "depth": 10},
                                                                    {"name": "b", "depth": 11}]),
                            model="densenet_cifar"), "6n \\+ 4"),
    "data the model cannot take": (digits_config(factor="se", base={"model": "resnet20", "iterations": 2},
                                                 variants=[{"name": "a", "se": False}, {"name": "b", "se": True}]),
                                   "cannot take this data"),
    "one variant": (digits_config(variants=[{"name": "tanh", "activation": "tanh"}]), "at least two"),
    "same name twice": (digits_config(variants=[{"name": "x", "activation": "tanh"},
                                                {"name": "x", "activation": "relu"}]), "two variants are named"),
    "same configuration": (digits_config(variants=[{"name": "x", "activation": "tanh"},
                                                   {"name": "y", "activation": "tanh"}]), "same configuration"),
    "bad seeds": (digits_config(seeds=[1, 1]), "duplicates"),
    "zero seeds": (digits_config(seeds=0), "at least 1"),
    "unknown base key": (_with(digits_config(), colour="red"), "unknown key"),
    "seed in base": (_with(digits_config(), seed=1), "cannot set 'seed'"),
    "unknown top-level key": (digits_config(sedes=3), "unknown top-level"),
    "bad training value": (_with(digits_config(), optimizer="rmsprop"), "optimizer must be one of"),
    "max_train below the classes": (digits_config(max_train=5), "below the number of classes"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_raises_before_training(case, no_training, tmp_path):
    cfg, message = BAD[case]
    with pytest.raises(ValueError, match=message):
        A.run_ablation(cfg, out_dir=tmp_path / "out", log=None)
    assert not (tmp_path / "out").exists()


def test_independent_init_needs_no_shared_parameter(no_training):
    cfg = BAD["no shared parameter"][0]
    plan = A.plan_ablation(dict(cfg, paired_init=False))
    assert [v["shared"]["arrays"] for v in plan["variants"]] == [10, 0]
    assert plan["variants"][1]["config"]["model"] == "cifar_cnn"


def test_factor_registry():
    base = A._base_config({"model": "resnet20", "model_args": {"zero_init_residual": True}})
    se = A.FACTORS["se"]
    on = se.apply(base, 8)
    assert on["model"] == "se_resnet20" and on["model_args"] == {"zero_init_residual": True, "reduction": 8}
    off = se.apply(on, False)
    assert off["model"] == "resnet20" and off["model_args"] == {"zero_init_residual": True}
    assert base["model_args"] == {"zero_init_residual": True}  # the base is not changed
    dense = A._base_config({"model": "densenet_cifar"})
    assert A.FACTORS["growth_rate"].apply(dense, 6)["model_args"] == {"growth_rate": 6}
    assert A.FACTORS["dropout"].apply(dense, 0.2)["model_args"] == {"drop_rate": 0.2}
    assert A.FACTORS["iterations"].apply(dense, 5)["epochs"] is None
    with pytest.raises(ValueError, match="se_resnet"):
        A.FACTORS["reduction"].check(base, 4)
    for name in ("se_resnet20", "se_resnet18_cifar"):
        m = zoo.get(name, num_classes=10)
        assert m.input_size == (3, 32, 32) and m(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 10)
    A.register_factor("test_width", lambda b, v: dict(b, batch_size=v))
    try:
        with pytest.raises(ValueError, match="already registered"):
            A.register_factor("test_width", lambda b, v: b)
    finally:
        del A.FACTORS["test_width"]


# -- command line and the example ---------------------------------------------------------------------------------
def test_cli_check_and_overrides(tmp_path, no_training, capsys):
    cfg = tmp_path / "a.toml"
    cfg.write_text('data = "embedded:digits8x8"\nfactor = "lr"\nseeds = [4, 9]\nmax_train = 100\n'
                   '[base]\nmodel = "lenet5"\nepochs = 5\n'
                   '[[variants]]\nname = "slow"\nlr = 0.001\n[[variants]]\nname = "fast"\nlr = 0.01\n')
    parser = A.add_arguments(argparse.ArgumentParser())
    args = parser.parse_args([str(cfg), "--check", "--set", "base.iterations=3", "--set", "max_test=50",
                              "--out", str(tmp_path / "out")])
    lines = []
    assert A.main_from_args(args, log=lines.append) == 0
    assert lines[-1] == "config OK (nothing trained)" and any("shares 10/10 arrays" in m for m in lines)
    assert not (tmp_path / "out").exists()
    plan = A.plan_ablation(A.load_config(cfg, {"base.iterations": 3, "max_test": 50}))
    assert plan["counts"]["test"] <= 50 and [v["config"]["lr"] for v in plan["variants"]] == [0.001, 0.01]
    assert [s["seed"] for s in plan["seeds"]] == [4, 9]
    assert plan["seeds"][1]["init_seed"] == X.run_seeds(9, 1)[0]["init_seed"]
    with pytest.raises(ValueError, match="variants cannot be overridden"):
        A.load_config(cfg, {"variants.0.lr": 1})


def test_example_config_parses():
    path = ROOT / "examples" / "ablation_cifar10.toml"
    setup = A._parse(A.load_config(path))
    assert setup["factor"] == "se" and len(setup["seeds"]) == 2
    assert [v["config"]["model"] for v in setup["variants"]] == ["resnet20", "se_resnet20"]
    assert setup["limits"]["train"] <= 5000 and setup["base"]["epochs"] <= 3


# -- factor 'init': pretrained weights against the paired random initialisation ---------------------------------
def _pretrained_lenet(path, n_classes=3, seed=11):
    """A lenet5 weight file whose classifier has ``n_classes`` outputs (another task's head)."""
    from nabi.files import save_weights
    from nabi.training.build import build_model
    model = build_model("lenet5", n_classes, {}, seed=seed)
    save_weights(path, model.state_dict())
    return {k: np.asarray(v) for k, v in model.state_dict().items()}


def test_init_factor_starts_from_the_file_where_names_and_shapes_match(tmp_path):
    file_state = _pretrained_lenet(tmp_path / "pre.safetensors")
    cfg = digits_config(factor="init", seeds=1, variants=[{"name": "scratch", "init": False},
                                                           {"name": "pretrained", "init": str(tmp_path / "pre.safetensors")}])
    plan = A.plan_ablation(cfg)
    start = A.paired_variant_models(plan, 1)
    scratch_model, _ = start["scratch"]
    from nabi.training.init_from import load_matching
    model, _ = start["pretrained"]
    report = load_matching(model, str(tmp_path / "pre.safetensors"))
    head = {k for k in file_state if file_state[k].shape != np.shape(model.state_dict()[k])}
    assert head and set(report["skipped"]) and all(k.split(":")[0] in head for k in report["skipped"])
    A.run_ablation(cfg, out_dir=tmp_path / "out", log=None)
    res = _results(tmp_path / "out")
    pre, scratch = res[("pretrained", 1)]["init"], res[("scratch", 1)]["init"]
    assert pre["sha256"] == X.state_sha256(model.state_dict()) != scratch["sha256"]
    assert scratch["sha256"] == X.state_sha256(scratch_model.state_dict()) and "pretrained" not in scratch
    assert pre["pretrained"]["loaded"] == len(report["loaded"]) == len(file_state) - len(head)
    assert pre["pretrained"]["file_sha256"] and pre["pretrained"]["skipped"] == report["skipped"]
    # the head the file could not fill is the paired initialisation, shared with the reference
    for k in head:
        np.testing.assert_array_equal(np.asarray(model.state_dict()[k]), np.asarray(scratch_model.state_dict()[k]))
    # other weights in the same file name are another setup: the finished runs are not reused
    _pretrained_lenet(tmp_path / "pre.safetensors", seed=12)
    with pytest.raises(ValueError, match="different setup"):
        A.run_ablation(cfg, out_dir=tmp_path / "out", log=None)


@pytest.mark.parametrize("value, match", [(str(Path("no") / "such.safetensors"), "such.safetensors"),
                                          (3, "weight file or run folder")])
def test_init_factor_bad_values(value, match, no_training):
    cfg = digits_config(factor="init", variants=[{"name": "scratch", "init": False}, {"name": "pre", "init": value}])
    with pytest.raises(ValueError, match=match):
        A.plan_ablation(cfg)


def test_init_factor_refuses_weights_of_another_architecture(tmp_path, no_training):
    from nabi.files import save_weights
    save_weights(tmp_path / "mlp.safetensors", {"stem.weight": np.zeros((4, 4), np.float32)})
    cfg = digits_config(factor="init", variants=[{"name": "scratch", "init": False},
                                                 {"name": "pre", "init": str(tmp_path / "mlp.safetensors")}])
    with pytest.raises(ValueError, match="mlp.safetensors"):
        A.plan_ablation(cfg)
