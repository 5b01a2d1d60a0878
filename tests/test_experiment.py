"""The paired background-class experiment (nabi.studies.experiment) end to end on small generated photo folders."""
import argparse
import csv
import importlib.util
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from nabi.studies import experiment as X
from nabi import models as zoo
from nabi.studies.jobs import as_float
from nabi.studies.stats import TABLE1_COLUMNS

COLOURS = [(220, 40, 40), (40, 70, 220), (40, 180, 60), (230, 200, 30)]
TINY = {"iterations_per_class": 3}


# -- generated data ------------------------------------------------------------------------------------------
def _photo(kind, rng, size=40):
    """A learnable 'photo': individual ``kind`` is a coloured shape on a noisy ground; None is habitat texture."""
    from PIL import Image
    img = rng.integers(90, 150, size=(size, size, 3)).astype(np.float64) + rng.normal(0, 12, size=(1, 1, 3))
    yy, xx = np.mgrid[0:size, 0:size]
    if kind is None:
        for _ in range(3):
            cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(4, 10)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] += rng.normal(0, 25, 3)
    else:
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        r = rng.uniform(size * 0.18, size * 0.28)
        img[(np.abs(yy - cy) < r) & (np.abs(xx - cx) < r)] = np.add(COLOURS[kind % 4], rng.normal(0, 10, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_data(root, individuals=("aaa", "bbb", "ccc"), background="background", n_train=8, n_test=3,
              layout="train/test", test_individuals=None, test_background=True, seed=0):
    rng = np.random.default_rng(seed)
    root = Path(root)

    def write(folder, cls, kind, n):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for j in range(n):
            _photo(kind, rng).save(folder / cls / f"{j:03d}.png")

    if layout == "split":
        for i, c in enumerate(individuals):
            write(root, c, i, n_train + n_test)
        if background:
            write(root, background, None, n_train + n_test)
        return root
    for i, c in enumerate(individuals):
        write(root / "train", c, i, n_train)
    if background:
        write(root / "train", background, None, n_train)
    for c in (individuals if test_individuals is None else test_individuals):
        write(root / "test", c, individuals.index(c) if c in individuals else 3, n_test)
    if background and test_background:
        write(root / "test", background, None, n_test)
    return root


@pytest.fixture(scope="module")
def exp1(tmp_path_factory):
    """Two runs, jobs=1, train/test layout: ``(data, out, report)``."""
    base = tmp_path_factory.mktemp("exp1")
    data = make_data(base / "data")
    report = X.run_experiment(data, base / "out", runs=2, recipe="tiny", jobs=1, overrides=TINY, log=None)
    return data, base / "out", report


def _results(exp_dir, runs):
    return [json.loads((exp_dir / "runs" / f"run-{r:02d}" / "result.json").read_text(encoding="utf-8"))
            for r in range(1, runs + 1)]


def _recompute(model_result, background):
    """P1-P4 from the saved per-photo probabilities, independently of nabi.evaluate."""
    classes = model_result["classes"]
    preds = model_result["predictions"]
    probs = np.array([p["scores"] if "scores" in p else p["probs"] for p in preds])   # model E saves scores
    true = [p["true"] for p in preds]
    argmax = [classes[i] for i in probs.argmax(1)]
    assert argmax == [p["pred"] for p in preds]
    ind_cols = [i for i, c in enumerate(classes) if c != background]
    pred_ind = [classes[ind_cols[i]] for i in probs[:, ind_cols].argmax(1)]
    assert pred_ind == [p["pred_individual"] for p in preds]
    animal = [t != background for t in true]
    right = [a == t for a, t in zip(argmax, true)]
    n2 = sum(animal)
    kept = [a and p != background for a, p in zip(animal, argmax)]
    return {"p1": sum(right) / len(true),
            "p2": sum(r for r, a in zip(right, animal) if a) / n2,
            "p3": (sum(r for r, k in zip(right, kept) if k) / sum(kept)) if sum(kept) else float("nan"),
            "p4": sum(p == t for p, t, a in zip(pred_ind, true, animal) if a) / n2,
            "called": sum(a and p == background for a, p in zip(animal, argmax))}


def _close(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


# -- the end-to-end experiment --------------------------------------------------------------------------------
def test_report_structure(exp1):
    data, out, report = exp1
    exp_dir = out / "tiny"
    for name in ("experiment.json", "split.json", "report.md", "report.csv", "report.json", "report.png"):
        assert (exp_dir / name).is_file(), name
    assert (exp_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (exp_dir / "report.md").read_text(encoding="utf-8")
    assert "| Run | A·P2 | B·P1 | B·P2 | B·P3 | B·P4 |" in md
    assert "| **Avg** |" in md and "| **Std** |" in md
    assert "B·P4 − A·P2" in md and "B·P3 − A·P2" in md and "B·P2 − A·P2" in md
    assert "called background" in md
    with open(exp_dir / "report.csv", encoding="utf-8") as f:
        table = list(csv.reader(f))
    assert table[0] == ["run", *TABLE1_COLUMNS]
    assert [r[0] for r in table[1:]] == ["1", "2", "Avg", "Std"]
    rj = json.loads((exp_dir / "report.json").read_text(encoding="utf-8"))
    assert rj["columns"] == list(TABLE1_COLUMNS) and len(rj["rows"]) == 2
    assert set(rj["comparisons"]) == {"A·P2 vs B·P2", "A·P2 vs B·P3", "A·P2 vs B·P4"}
    for s in rj["comparisons"].values():
        assert s["n"] == 2 and {"mean_diff", "ci_low", "ci_high", "wilcoxon_p", "sign_p"} <= set(s)
    assert [c["run"] for c in rj["called_background"]] == [1, 2]
    assert report["files"]["report_md"] == str(exp_dir / "report.md")
    exp = json.loads((exp_dir / "experiment.json").read_text(encoding="utf-8"))
    assert exp["counts"] == {"train_B": 32, "train_A": 24, "test": 12, "test_background": 3,
                             "train_per_class": {"aaa": 8, "background": 8, "bbb": 8, "ccc": 8},
                             "test_per_class": {"aaa": 3, "background": 3, "bbb": 3, "ccc": 3}}
    # seeds recorded, drawn from the experiment seed, distinct per run, prefix-stable
    assert exp["run_seeds"] == X.run_seeds(0, 2) == X.run_seeds(0, 5)[:2]
    assert exp["run_seeds"][0]["init_seed"] != exp["run_seeds"][1]["init_seed"]
    # training length: 3 iterations per class, and A never saw a background photo
    for res in _results(exp_dir, 2):
        assert res["models"]["A"]["training"]["iterations"] == 9
        assert res["models"]["B"]["training"]["iterations"] == 12
        assert res["models"]["A"]["training"]["num_train"] == 24
        assert res["models"]["A"]["classes"] == ["aaa", "bbb", "ccc"]
        assert res["models"]["B"]["classes"] == ["aaa", "background", "bbb", "ccc"]
        assert (exp_dir / "runs" / f"run-{res['run']:02d}" / "A" / "model.safetensors").is_file()


def test_report_arithmetic_matches_saved_predictions(exp1):
    data, out, report = exp1
    exp_dir = out / "tiny"
    results = _results(exp_dir, 2)
    with open(exp_dir / "report.csv", encoding="utf-8") as f:
        table = {r[0]: [float(v) for v in r[1:]] for r in list(csv.reader(f))[1:]}
    per_run = []
    for res in results:
        a = _recompute(res["models"]["A"], "background")
        b = _recompute(res["models"]["B"], "background")
        assert a["called"] == 0 and _close(a["p3"], a["p2"]) and _close(a["p4"], a["p2"])
        assert res["models"]["B"]["statistics"]["n_called_background"] == b["called"]
        expected = [a["p2"], b["p1"], b["p2"], b["p3"], b["p4"]]
        assert all(_close(x, y) for x, y in zip(table[str(res["run"])], expected)), (table, expected)
        assert all(_close(report["rows"][res["run"] - 1][c], v) for c, v in zip(TABLE1_COLUMNS, expected))
        assert len(res["models"]["A"]["predictions"]) == 12
        per_run.append(expected)
    m = np.array(per_run)
    assert np.allclose(table["Avg"], m.mean(axis=0), atol=1e-12, equal_nan=True)
    assert np.allclose(table["Std"], m.std(axis=0, ddof=1), atol=1e-12, equal_nan=True)
    comp = report["comparisons"]["A·P2 vs B·P4"]
    assert comp["mean_diff"] == pytest.approx(np.mean(m[:, 4] - m[:, 0]), abs=1e-12)
    assert [c["n_called_background"] for c in report["called_background"]] == \
        [r["models"]["B"]["statistics"]["n_called_background"] for r in results]


def test_runs_recorded_paired_initial_weights(exp1):
    data, out, report = exp1
    results = _results(out / "tiny", 2)
    for res in results:
        a, b = res["models"]["A"]["init"], res["models"]["B"]["init"]
        assert a["sha256"] == b["shared_sha256"] != b["sha256"]
        assert b["classifier_keys"] == ["fc.weight", "fc.bias"]
        ma, mb, _ = X.paired_models("cifar_cnn", {}, ["aaa", "background", "bbb", "ccc"], "background",
                                    res["seeds"]["init_seed"])
        assert X.state_sha256(ma.state_dict()) == a["sha256"] and X.state_sha256(mb.state_dict()) == b["sha256"]
    assert results[0]["models"]["A"]["init"]["sha256"] != results[1]["models"]["A"]["init"]["sha256"]


def test_paired_models_share_every_weight():
    classes = ["a", "background", "c"]  # the background row sits in the middle
    ma, mb, changed = X.paired_models("cifar_cnn", {}, classes, "background", 123)
    sa, sb = ma.state_dict(), mb.state_dict()
    assert changed == ["fc.weight", "fc.bias"] and list(sa) == list(sb)
    for k in sa:
        if k in changed:
            assert sb[k].shape[0] == 3 and sa[k].shape[0] == 2
            np.testing.assert_array_equal(sa[k], sb[k][[0, 2]])
        else:
            np.testing.assert_array_equal(sa[k], sb[k])
    assert np.any(sb["fc.weight"][1] != 0)  # B's background row is a real draw, not a placeholder
    ma2, mb2, _ = X.paired_models("cifar_cnn", {}, classes, "background", 123)
    assert X.state_sha256(mb2.state_dict()) == X.state_sha256(sb)
    _, mb3, _ = X.paired_models("cifar_cnn", {}, classes, "background", 124)
    assert not np.array_equal(mb3.state_dict()["conv1.weight"], sb["conv1.weight"])
    with pytest.raises(ValueError, match="cannot pair"):
        X.derive_a_state({"w": np.zeros((5, 2))}, {"w": np.zeros((3, 2))}, 0)


def test_model_a_visits_b_order_without_background(exp1):
    data, out, report = exp1
    spec = X.prepare_data(data, "background", 0)
    ds = X.training_datasets(spec, (3, 32, 32))
    cfg = X.resolve_recipe("tiny", TINY)
    loaders = X.training_loaders(ds, cfg, 7, (3, 32, 32), {"kind": "unit"})
    la, lb = loaders["A"], loaders["B"]
    bg = ds["B"].classes.index("background")
    orders = []
    for epoch in (0, 1):
        b_paths = [ds["B"].samples[i][0] for i in lb.order(epoch) if ds["B"].samples[i][1] != bg]
        a_paths = [ds["A"].samples[i][0] for i in la.order(epoch)]
        assert a_paths == b_paths and len(a_paths) == 24
        orders.append(a_paths)
    assert orders[0] != orders[1]
    # the batches themselves: A's labels in that order, batch size kept
    labels = np.concatenate([y for _, y in la])
    assert labels.tolist() == [ds["A"].samples[i][1] for i in la.order(0)]
    assert len(la) == 3 and len(lb) == 4
    assert not any("background" in p for p, _ in ds["A"].samples)


def test_resume_does_not_rerun_finished_runs(tmp_path, monkeypatch):
    data = make_data(tmp_path / "data", n_train=6, n_test=2)
    out = tmp_path / "out"
    calls = []
    real = X._train_model

    def flaky(key, *args, **kwargs):
        run = Path(args[7]).parent.name  # out = runs/run-XX/<model>
        calls.append((run, key))
        if run == "run-02" and key == "A" and fail["on"]:
            raise RuntimeError("simulated crash in run 2")
        return real(key, *args, **kwargs)

    fail = {"on": True}
    monkeypatch.setattr(X, "_train_model", flaky)
    over = {"iterations_per_class": 2}
    with pytest.raises(RuntimeError, match="simulated crash"):
        X.run_experiment(data, out, runs=2, recipe="tiny", overrides=over, log=None)
    run1, run2 = out / "tiny" / "runs" / "run-01", out / "tiny" / "runs" / "run-02"
    assert calls == [("run-01", "B"), ("run-01", "A"), ("run-02", "B"), ("run-02", "A")]
    assert (run1 / "result.json").is_file() and not (run2 / "result.json").exists()
    assert (run2 / "B" / "eval.json").is_file() and not (out / "tiny" / "report.md").exists()
    before = (run1 / "result.json").stat().st_mtime_ns, (run1 / "result.json").read_bytes()
    b_eval = (run2 / "B" / "eval.json").read_bytes()

    fail["on"] = False
    calls.clear()
    report = X.run_experiment(data, out, runs=2, recipe="tiny", overrides=over, log=None)
    assert calls == [("run-02", "A")]  # run 1 kept whole; run 2's model B kept
    assert ((run1 / "result.json").stat().st_mtime_ns, (run1 / "result.json").read_bytes()) == before
    assert (run2 / "B" / "eval.json").read_bytes() == b_eval
    assert [r["run"] for r in report["rows"]] == [1, 2]

    calls.clear()
    X.run_experiment(data, out, runs=2, recipe="tiny", overrides=over, log=None)
    assert calls == []
    with pytest.raises(ValueError, match="different setup.*iterations_per_class"):
        X.run_experiment(data, out, runs=2, recipe="tiny", overrides={"iterations_per_class": 3}, log=None)


def test_killed_model_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    data = make_data(tmp_path / "data", individuals=("aaa", "bbb"), n_train=4, n_test=2)
    over = {"iterations_per_class": 3, "batch_size": 4}  # A: 6 iterations, 2 per epoch
    make = X.study_trainer_class
    crash = {"on": True}

    def crashing_trainer():
        base = make()

        class Crashing(base):
            def _end_epoch(self):
                super()._end_epoch()  # writes the epoch's checkpoint
                if crash["on"] and self.epoch == 1 and self.metadata["classes"] == ["aaa", "bbb"]:
                    raise RuntimeError("killed after A's first epoch")
        return Crashing

    monkeypatch.setattr(X, "study_trainer_class", crashing_trainer)
    with pytest.raises(RuntimeError, match="killed"):
        X.run_experiment(data, tmp_path / "out", runs=1, recipe="tiny", overrides=over, log=None)
    a_dir = tmp_path / "out" / "tiny" / "runs" / "run-01" / "A"
    assert (a_dir / "checkpoints" / "latest").is_file() and not (a_dir / "eval.json").exists()
    crash["on"] = False
    lines = []
    X.run_experiment(data, tmp_path / "out", runs=1, recipe="tiny", overrides=over, log=lines.append)
    assert any("resumed from" in l and "iteration 2" in l for l in lines), lines
    assert not any("training model B" in l for l in lines)
    res = _results(tmp_path / "out" / "tiny", 1)[0]["models"]["A"]
    assert res["training"]["iterations"] == 6
    epochs = [json.loads(l)["epoch"] for l in (a_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3] and not (a_dir / "checkpoints").exists()
    # the same run never interrupted gives the same model A
    X.run_experiment(data, tmp_path / "clean", runs=1, recipe="tiny", overrides=over, log=None)
    clean = _results(tmp_path / "clean" / "tiny", 1)[0]["models"]["A"]
    np.testing.assert_allclose([p["probs"] for p in res["predictions"]],
                               [p["probs"] for p in clean["predictions"]], rtol=1e-5, atol=1e-6)


def test_offline_expansion_is_made_once_and_reused(tmp_path):
    data = make_data(tmp_path / "data", individuals=("aaa", "bbb"), n_train=2, n_test=1)
    out = tmp_path / "out"
    over = {"offline_variants": 3, "iterations_per_class": 1}
    X.run_experiment(data, out, runs=1, recipe="tiny", overrides=over, log=None)
    cache = out / "tiny" / "cache" / "train-x3"
    files = sorted(cache.rglob("*.png"))
    assert len(files) == 3 * 6 and {p.parent.name for p in files} == {"aaa", "bbb", "background"}
    assert sorted(p.name for p in (cache / "aaa").iterdir()) == [f"{j:03d}_png_v{k}.png" for j in range(2)
                                                                 for k in range(3)]
    stamps = {p: p.stat().st_mtime_ns for p in files}
    res = _results(out / "tiny", 1)[0]
    assert res["models"]["B"]["training"]["num_train"] == 18 and res["models"]["A"]["training"]["num_train"] == 12
    X.run_experiment(data, out, runs=2, recipe="tiny", overrides=over, log=None)
    assert {p: p.stat().st_mtime_ns for p in sorted(cache.rglob("*.png"))} == stamps
    assert not list((out / "tiny" / "cache").glob(".train-src-*"))


def test_parallel_jobs_split_layout_korean_names(tmp_path):
    data = make_data(tmp_path / "data", individuals=("뾰또", "베찌"), background="배경", n_train=5, n_test=2,
                     layout="split")
    out = tmp_path / "out"
    report = X.run_experiment(data, out, runs=2, recipe="tiny", jobs=2, background="배경",
                              overrides={"iterations_per_class": 2, "test_ratio": 2 / 7}, log=None)
    exp_dir = out / "tiny"
    results = _results(exp_dir, 2)
    split = json.loads((exp_dir / "split.json").read_text(encoding="utf-8"))
    test_files = sorted(os.path.relpath(p, data) for p, _ in split["test"])
    assert len(test_files) == 6 and {c for _, c in split["test"]} == {"뾰또", "베찌", "배경"}
    assert not set(p for p, _ in split["test"]) & set(p for p, _ in split["train"])
    for res in results:
        assert res["process"] != os.getpid()  # trained in a worker process
        assert res["models"]["B"]["classes"] == sorted(["뾰또", "베찌", "배경"])
        for m in ("A", "B"):  # one split for every run and both models
            assert sorted(p["file"] for p in res["models"][m]["predictions"]) == test_files
            st = res["models"][m]["statistics"]
            assert st["n_test1"] == 6 and st["n_test2"] == 4
        a = _recompute(res["models"]["A"], "배경")
        assert _close(report["rows"][res["run"] - 1]["A·P2"], a["p2"])
    assert (exp_dir / "runs" / "run-01" / "run.log").is_file()
    assert "배경" in (exp_dir / "report.md").read_text(encoding="utf-8")


def test_failed_worker_runs_are_reported(exp1, tmp_path):
    data, out, report = exp1
    spec = X.prepare_data(data, "background", 0)
    spec["train"] = spec["train"] + [[str(data / "train" / "aaa" / "gone.png"), "aaa"]]
    jobs = [{"run": r, "run_dir": str(tmp_path / f"run-{r:02d}"), "seeds": s, "models": ["A", "B"],
             "fingerprint": "x", "data": spec, "config": X.resolve_recipe("tiny"), "input_size": [3, 32, 32],
             "normalization": {"kind": "unit"}} for r, s in zip((1, 2), X.run_seeds(0, 2))]
    with pytest.raises(RuntimeError, match=r"2 run\(s\) failed \(run 01: RuntimeError: the photos under"):
        X.run_parallel(jobs, 2, lambda *a: None, X._run_one)
    assert "failed: RuntimeError" in (tmp_path / "run-02" / "run.log").read_text(encoding="utf-8")
    assert not (tmp_path / "run-01" / "result.json").exists()


def test_compare_recipes_side_by_side(exp1, tmp_path):
    data, out, report = exp1
    root = tmp_path / "many"
    shutil.copytree(out / "tiny", root / "tiny")
    shutil.copytree(out / "tiny", root / "tiny-copy")
    f = root / "tiny-copy" / "report.json"
    rj = json.loads(f.read_text(encoding="utf-8"))
    rj["recipe"] = "tiny-copy"
    f.write_text(json.dumps(rj), encoding="utf-8")
    md = X.compare_recipes(root)
    lines = md.splitlines()
    assert any(l.startswith("| tiny | cifar_cnn 32×32 | one class | 2 |") for l in lines)
    assert any(l.startswith("| tiny-copy |") for l in lines)
    assert "| 2019 report | alexnet336 336×336 | one class | 10 | 0.5300 | 0.5080 | 0.5225 |" in md
    a = report["summary"]["A·P2"]
    assert f"{a['mean']:.4f} ± {a['std']:.4f}" in md
    with pytest.raises(ValueError, match="no <recipe>/report.json"):
        X.compare_recipes(tmp_path / "empty-dir-that-is-missing")


# -- bad input: each a ValueError before anything is trained -------------------------------------------------
@pytest.mark.parametrize("case, kwargs, data_kw, match", [
    ("B without background", {}, {"background": None}, "no 'background' folder"),
    ("test individual unknown", {}, {"test_individuals": ("aaa", "zzz")}, r"\['zzz'\] .*no training photos"),
    ("no animal test photos", {}, {"test_individuals": ()}, "no animal photos"),
    ("one individual", {}, {"individuals": ("aaa",)}, "at least two individuals"),
    ("unknown recipe", {"recipe": "fancy"}, {}, "unknown recipe 'fancy'"),
    ("zero runs", {"runs": 0}, {}, "runs must be a positive integer"),
    ("bad model letter", {"models": ("A", "C")}, {}, "models must be some of A, B"),
    ("embedding arm on a model without a Linear classifier", {"models": "A,B,E", "overrides": {"model": "googlenet"}},
     {}, "model E .* cannot use the recipe's model 'googlenet'.*does not end with a Linear classifier"),
    ("embedding arm with a bad size", {"models": "A,B,E", "embedding": {"embedding_dim": 0}}, {},
     "--embedding-dim must be a positive integer, got 0"),
    ("embedding arm with an unknown head", {"models": "A,B,E", "embedding": {"head": "softmax"}}, {},
     "--embedding-head must be one of arcface"),
    ("unknown override", {"overrides": {"colour": 1}}, {}, r"unknown setting\(s\) \['colour'\]"),
    ("fixed-size model resized", {"overrides": {"image_size": 64}}, {}, "cannot take 64×64 inputs"),
])
def test_bad_input_is_a_value_error_before_training(tmp_path, case, kwargs, data_kw, match):
    data = make_data(tmp_path / "data", n_train=2, n_test=1, **data_kw)
    out = tmp_path / "out"
    args = {"runs": 2, "recipe": "tiny", "log": None, **kwargs}
    with pytest.raises(ValueError, match=match):
        X.run_experiment(data, out, **args)
    assert not out.exists()


def test_model_a_alone_needs_no_background(tmp_path):
    data = make_data(tmp_path / "data", background=None, n_train=2, n_test=1)
    spec = X.prepare_data(data, "background", 0, models=("A",))
    assert spec["individuals"] == ["aaa", "bbb", "ccc"] and not spec["has_background"]
    with pytest.raises(ValueError, match="no 'background' folder"):
        X.prepare_data(data, "background", 0, models=("A", "B"))


# -- recipes -------------------------------------------------------------------------------------------------
def test_recipes_are_valid_zoo_configs():
    names = zoo.names()
    s = X.resolve_recipe("alexnet336-2019")
    assert s["model"] == "alexnet336" in names
    assert (s["batch_size"], s["optimizer"], s["momentum"], s["lr"], s["schedule"]) == (1, "sgd", 0.0, 1.5e-5,
                                                                                         "linear_step")
    assert (s["normalize"], s["offline_variants"], s["iterations_per_class"], s["image_size"]) == \
        ("pixel256", 8, 2000, 336)
    assert zoo.count_parameters("alexnet336", num_classes=5) == 108_629_381
    assert X._model_length(s, 5, 100) == (None, 10_000) and X._model_length(s, 4, 100) == (None, 8_000)
    m = X.resolve_recipe("modern")
    assert m["model"] in names and m["image_size"] in (112, 128) and m["label_smoothing"] == 0.1
    assert (m["batch_size"], m["augment"], m["schedule"], m["epochs"]) == (32, "strong", "warmup_cosine", 30)
    t = X.resolve_recipe("tiny")
    assert t["model"] == "cifar_cnn" and t["image_size"] == 32
    assert X.probe_input_size(t) == [3, 32, 32]
    # overriding the length replaces the recipe's choice; two lengths at once are refused
    o = X.resolve_recipe("alexnet336-2019", {"epochs": 3})
    assert o["epochs"] == 3 and o["iterations_per_class"] is None
    with pytest.warns(FutureWarning, match="'seed2019' is now called 'alexnet336-2019'"):   # the old name
        assert X.resolve_recipe("seed2019")["recipe"] == "alexnet336-2019"
    with pytest.raises(ValueError, match="exactly one of"):
        X.resolve_recipe("tiny", {"epochs": 2, "iterations": 5})
    # the recipe's old name still works, with a warning naming the new one
    with pytest.warns(FutureWarning, match="alexnet336-2019"):
        assert X.resolve_recipe("seed2019") == s
    with pytest.raises(ValueError, match="unknown model"):
        X.resolve_recipe("tiny", {"model": "nope"})
    # each recipe's optimiser and schedule build for its model
    from nabi.training.build import make_optimizer, make_schedule
    for name in ("alexnet336-2019", "modern"):
        cfg = X.resolve_recipe(name, {"model": "cifar_cnn", "image_size": 32})
        tc, epochs, iterations = X._train_config(cfg, 5, 40, "/tmp/unused", 0)
        opt = make_optimizer(tc, zoo.get("cifar_cnn", num_classes=5))
        sched = make_schedule(tc, opt, 40)
        assert sched is not None and opt.lr > 0


def test_modern_recipe_runs_resnet18_at_its_size():
    assert X.probe_input_size(X.resolve_recipe("modern")) == [3, 128, 128]
    assert X.probe_input_size(X.resolve_recipe("modern", {"image_size": 112})) == [3, 112, 112]


# -- command-line helpers and the example ---------------------------------------------------------------------
def test_add_arguments_and_main_from_args(monkeypatch):
    p = X.add_arguments(argparse.ArgumentParser())
    args = p.parse_args(["DATA", "--runs", "3", "--recipe", "tiny", "--models", "A,B", "--jobs", "2",
                         "--background", "배경", "--set", "lr=0.01", "--set", "augment=none", "--epochs", "4"])
    seen = {}

    def fake(data, out, **kw):
        seen.update(kw, data=data, out=out)
        return {"markdown": "table", "files": {"report_md": "x"}}

    monkeypatch.setattr(X, "run_experiment", fake)
    assert X.main_from_args(args, log=lambda *a: None) == 0
    assert seen["data"] == "DATA" and seen["runs"] == 3 and seen["jobs"] == 2 and seen["background"] == "배경"
    assert seen["overrides"] == {"lr": 0.01, "augment": "none", "epochs": 4} and seen["recipe"] == "tiny"
    assert seen["background_classes"] == "one"
    assert seen["models"] == "A,B" and seen["embedding"] == {"head": "arcface", "embedding_dim": 128}
    X.main_from_args(p.parse_args(["DATA", "--models", "A,B,E", "--embedding-head", "cosface", "--embedding-dim",
                                   "32"]), log=lambda *a: None)
    assert seen["models"] == "A,B,E" and seen["embedding"] == {"head": "cosface", "embedding_dim": 32}
    X.main_from_args(p.parse_args(["DATA", "--background-classes", "kinds"]), log=lambda *a: None)
    assert seen["background_classes"] == "kinds"
    with pytest.raises(ValueError, match="KEY=VALUE"):
        X.main_from_args(p.parse_args(["DATA", "--set", "oops"]))


def test_example_builds_a_photo_dataset(tmp_path):
    pytest.importorskip("skimage")
    path = Path(__file__).resolve().parents[1] / "examples" / "campus_cats_example.py"
    spec = importlib.util.spec_from_file_location("campus_cats_example", path)
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    root = ex.build_dataset(tmp_path / "photos", n_train=2, n_test=1, n_background_train=3, n_background_test=2)
    for split, n, nb in (("train", 2, 3), ("test", 1, 2)):
        folders = sorted(p.name for p in (root / split).iterdir())
        assert folders == sorted([*ex.SUBJECTS, "background"])
        for f in folders:
            assert len(list((root / split / f).glob("*.png"))) == (nb if f == "background" else n)
    spec_data = X.prepare_data(root, "background", 0)
    assert spec_data["individuals"] == sorted(ex.SUBJECTS) and spec_data["has_background"]


# -- background kinds: model B learns one class per background/<kind>/ folder --------------------------------
KINDS = ("trees", "pavement")


def make_kinds_data(root, n_train=4, n_test=2, layout="train/test", direct=0):
    """``make_data`` without a flat background: ``background/<kind>/`` folders for each of ``KINDS`` (and
    ``direct`` photos directly in ``background/`` of the training part)."""
    root = make_data(root, background=None, n_train=n_train, n_test=n_test, layout=layout)
    rng = np.random.default_rng(9)
    parts = [(root, n_train + n_test)] if layout == "split" else [(root / "train", n_train), (root / "test", n_test)]
    for folder, n in parts:
        for kind in KINDS:
            d = folder / "background" / kind
            d.mkdir(parents=True)
            for j in range(n):
                _photo(None, rng).save(d / f"{j:03d}.png")
    if direct:
        d = parts[0][0] / "background"
        for j in range(direct):
            _photo(None, rng).save(d / f"direct{j}.png")
    return root


def _recompute_kinds(model_result):
    """P1-P4 from the saved probabilities with every name starting 'background/' as background, by hand."""
    classes, preds = model_result["classes"], model_result["predictions"]
    bg = lambda name: name == "background" or name.startswith("background/")  # noqa: E731
    probs = np.array([p["scores"] if "scores" in p else p["probs"] for p in preds])   # model E saves scores
    true = [p["true"] for p in preds]
    argmax = [classes[i] for i in probs.argmax(1)]
    ind_cols = [i for i, c in enumerate(classes) if not bg(c)]
    pred_ind = [classes[ind_cols[i]] for i in probs[:, ind_cols].argmax(1)]
    right = [bg(p) if bg(t) else p == t for p, t in zip(argmax, true)]
    animal = [not bg(t) for t in true]
    kept = [a and not bg(p) for a, p in zip(animal, argmax)]
    n2 = sum(animal)
    return {"p1": sum(right) / len(true), "p2": sum(r for r, a in zip(right, animal) if a) / n2,
            "p3": (sum(r for r, k in zip(right, kept) if k) / sum(kept)) if sum(kept) else float("nan"),
            "p4": sum(p == t for p, t, a in zip(pred_ind, true, animal) if a) / n2,
            "n_called_background": sum(a and bg(p) for a, p in zip(animal, argmax))}


def test_experiment_with_background_kinds_end_to_end(tmp_path):
    data = make_kinds_data(tmp_path / "data", direct=2)
    out = tmp_path / "out"
    lines = []
    report = X.run_experiment(data, out, runs=1, recipe="tiny", overrides=TINY, background_classes="kinds",
                              log=lines.append)
    exp_dir = out / "tiny-kinds"                         # beside OUT/tiny/, which a 'one' run would use
    assert report["dir"] == str(exp_dir) and report["background_classes"] == "kinds"
    exp = json.loads((exp_dir / "experiment.json").read_text(encoding="utf-8"))
    b_classes = ["aaa", "background", "background/pavement", "background/trees", "bbb", "ccc"]
    assert exp["data"]["classes_B"] == b_classes and exp["data"]["background_classes"] == "kinds"
    assert exp["counts"]["train_B"] == 12 + 2 + 8 and exp["counts"]["train_A"] == 12
    assert exp["counts"]["test_background"] == 4 and exp["counts"]["test"] == 10
    res = _results(exp_dir, 1)[0]
    a, b = res["models"]["A"], res["models"]["B"]
    assert b["classes"] == b_classes and a["classes"] == ["aaa", "bbb", "ccc"]
    assert b["training"]["iterations"] == 3 * 6 and a["training"]["iterations"] == 3 * 3
    assert a["init"]["sha256"] == b["init"]["shared_sha256"] != b["init"]["sha256"]
    assert b["init"]["classifier_keys"] == ["fc.weight", "fc.bias"]
    assert {p["true"] for p in b["predictions"]} >= {"background/pavement", "background/trees"}
    for m in (a, b):
        mine = _recompute_kinds(m)
        for k, v in mine.items():
            assert _close(float(m["statistics"][k]), v), (m["model"], k, m["statistics"][k], v)
    md = (exp_dir / "report.md").read_text(encoding="utf-8")
    assert "B learns the background kinds" in md and "## Table 1 (B learns 3 background kinds)" in md
    assert "`background/pavement`" in md and "A = B without the background output rows" in md
    assert "| Run | A·P2 | B·P1 | B·P2 | B·P3 | B·P4 |" in md
    row = report["rows"][0]
    assert _close(row["B·P4"], _recompute_kinds(b)["p4"]) and _close(row["A·P2"], _recompute_kinds(a)["p2"])
    # resume: the finished run is kept; the fingerprint tells the two designs apart
    lines.clear()
    X.run_experiment(data, out, runs=1, recipe="tiny", overrides=TINY, background_classes="kinds", log=lines.append)
    assert any("complete, kept" in l for l in lines), lines
    cfg = X.resolve_recipe("tiny", TINY)
    one = X.prepare_data(data, "background", 0, cfg["test_ratio"])
    kinds = X.prepare_data(data, "background", 0, cfg["test_ratio"], background_classes="kinds")
    assert one["classes_B"] == ["aaa", "background", "bbb", "ccc"] and one["background_classes"] == "one"
    assert X._fingerprint(one, cfg, 0) != X._fingerprint(kinds, cfg, 0) == exp["fingerprint"]
    # the fingerprint of a one-class experiment is what it was before kinds existed
    legacy = {k: v for k, v in one.items() if k != "background_classes"}
    assert X._fingerprint(legacy, cfg, 0) == X._fingerprint(one, cfg, 0)
    assert X.experiment_folder(out, "tiny") == out / "tiny"
    # the recipes table names which background each experiment learnt
    X.run_experiment(data, out, runs=1, recipe="tiny", overrides=TINY, log=None)
    md = (out / "recipes.md").read_text(encoding="utf-8")
    assert "| tiny | cifar_cnn 32×32 | one class | 1 |" in md and "| tiny | cifar_cnn 32×32 | 3 kinds | 1 |" in md


def test_kinds_split_layout_is_stratified_by_kind(tmp_path):
    data = make_kinds_data(tmp_path / "data", n_train=4, n_test=1, layout="split")
    spec = X.prepare_data(data, "background", 0, test_ratio=0.2, background_classes="kinds")
    assert spec["classes_B"] == ["aaa", "background/pavement", "background/trees", "bbb", "ccc"]
    assert sorted(c for _, c in spec["test"]) == spec["classes_B"]            # one photo of each, kinds too
    assert spec["test_classes"] == spec["classes_B"]


def test_derive_a_state_removes_every_background_row():
    rng = np.random.default_rng(0)
    w, bias, conv = rng.normal(size=(5, 3)), rng.normal(size=5), rng.normal(size=(2, 2))
    state_b = {"conv": conv, "fc.weight": w, "fc.bias": bias}
    template = {"conv": np.zeros((2, 2)), "fc.weight": np.zeros((3, 3)), "fc.bias": np.zeros(3)}
    state, changed = X.derive_a_state(state_b, template, [1, 3])
    assert changed == ["fc.weight", "fc.bias"]
    # the direct check: rows 0, 2, 4 of B, written out by hand
    assert np.array_equal(state["fc.weight"], np.stack([w[0], w[2], w[4]]))
    assert np.array_equal(state["fc.bias"], np.array([bias[0], bias[2], bias[4]]))
    assert np.array_equal(state["conv"], conv)
    with pytest.raises(ValueError, match="cannot pair"):
        X.derive_a_state(state_b, template, [1])                 # one row fewer than the shapes differ by
    with pytest.raises(ValueError, match="distinct rows"):
        X.derive_a_state(state_b, template, [1, 1])
    # the zoo model: A's logits are B's individual logits for the same input
    classes = ["aaa", "background/pavement", "bbb", "background/trees", "ccc"]
    ma, mb, changed = X.paired_models("cifar_cnn", {}, classes, "background", 5)
    assert X.background_rows(classes) == [1, 3] and changed == ["fc.weight", "fc.bias"]
    x = rng.random((2, 3, 32, 32)).astype(np.float32)
    ma.eval(), mb.eval()
    np.testing.assert_allclose(np.asarray(ma(x)), np.asarray(mb(x))[:, [0, 2, 4]], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case, data_kw, kwargs, match", [
    ("kinds without kind folders", {"flat": True}, {"background_classes": "kinds"}, "needs sub-folders <kind>/"),
    ("unknown design", {}, {"background_classes": "many"}, "background_classes must be one of one, kinds"),
    ("empty kind folder", {"empty": "rocks"}, {"background_classes": "kinds"}, r"rocks.*hold no image files"),
    ("kind named like an individual", {"empty": "aaa", "fill": True}, {"background_classes": "kinds"},
     r"named like individual\(s\) \['aaa'\]"),
])
def test_bad_background_kinds_input(tmp_path, case, data_kw, kwargs, match):
    if data_kw.get("flat"):
        data = make_data(tmp_path / "data", n_train=2, n_test=1)
    else:
        data = make_kinds_data(tmp_path / "data", n_train=2, n_test=1, direct=1)
    if "empty" in data_kw:
        d = data / "train" / "background" / data_kw["empty"]
        d.mkdir()
        if data_kw.get("fill"):
            _photo(None, np.random.default_rng(0)).save(d / "x.png")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        X.run_experiment(data, out, runs=1, recipe="tiny", overrides=TINY, log=None, **kwargs)
    assert not out.exists()


def test_offline_expansion_keeps_the_kinds(tmp_path):
    data = make_kinds_data(tmp_path / "data", n_train=2, n_test=1, direct=1)
    out = tmp_path / "out"
    X.run_experiment(data, out, runs=1, recipe="tiny", overrides={"offline_variants": 2, "iterations_per_class": 1},
                     background_classes="kinds", log=None)
    cache = out / "tiny-kinds" / "cache" / "train-x2"
    folders = sorted({p.parent.relative_to(cache).as_posix() for p in cache.rglob("*.png")})
    assert folders == ["aaa", "background", "background/pavement", "background/trees", "bbb", "ccc"]
    assert len(list((cache / "background" / "trees").glob("*.png"))) == 2 * 2
    res = _results(out / "tiny-kinds", 1)[0]
    assert res["models"]["B"]["classes"] == ["aaa", "background", "background/pavement", "background/trees",
                                             "bbb", "ccc"]
    assert res["models"]["B"]["training"]["num_train"] == 2 * (6 + 1 + 4)
    assert res["models"]["A"]["training"]["num_train"] == 2 * 6


# -- the embedding arm (model E) ------------------------------------------------------------------------------
def test_embedding_arm_joins_an_ab_experiment_end_to_end(tmp_path, monkeypatch):
    """E added to a finished A/B experiment: only E trains, the fingerprint stays, the report pairs E with A and B,
    E's P1-P4 follow from its saved gallery scores, and a rerun keeps everything."""
    data = make_data(tmp_path / "data", n_train=6, n_test=2)
    out = tmp_path / "out"
    X.run_experiment(data, out, runs=2, recipe="tiny", overrides=TINY, log=None)
    exp_dir = out / "tiny"
    fp_ab = json.loads((exp_dir / "experiment.json").read_text(encoding="utf-8"))["fingerprint"]
    kept = {(r, m): (exp_dir / "runs" / r / m / "eval.json").read_bytes() for r in ("run-01", "run-02") for m in "AB"}
    calls, real = [], X._train_model

    def spy(key, *args, **kwargs):
        calls.append((Path(args[7]).parent.name, key))
        return real(key, *args, **kwargs)

    monkeypatch.setattr(X, "_train_model", spy)
    report = X.run_experiment(data, out, runs=2, recipe="tiny", models="A,B,E", overrides=TINY, log=None)
    assert calls == [("run-01", "E"), ("run-02", "E")]
    exp = json.loads((exp_dir / "experiment.json").read_text(encoding="utf-8"))
    assert exp["fingerprint"] == fp_ab and exp["models"] == ["A", "B", "E"]
    assert exp["embedding"] == {"head": "arcface", "embedding_dim": 128}
    assert all((exp_dir / "runs" / r / m / "eval.json").read_bytes() == b for (r, m), b in kept.items())

    assert report["columns"] == list(TABLE1_COLUMNS) + ["E·P1", "E·P2", "E·P3", "E·P4"]
    for a, b in [("A·P2", "B·P4"), ("A·P2", "E·P2"), ("A·P2", "E·P4"), ("B·P1", "E·P1"), ("B·P2", "E·P2"),
                 ("B·P4", "E·P4")]:
        comp = report["comparisons"][f"{a} vs {b}"]
        assert comp["n"] == 2 and _close(as_float(comp["mean_diff"]),
                                         np.mean([r[b] - r[a] for r in report["rows"]]))
    md = (exp_dir / "report.md").read_text(encoding="utf-8")
    assert "| Run | A·P2 | B·P1 | B·P2 | B·P3 | B·P4 | E·P1 | E·P2 | E·P3 | E·P4 |" in md
    assert "| E·P4 − A·P2 | 2 |" in md and "| E·P1 − B·P1 | 2 |" in md and "head arcface, 128-d" in md
    with open(exp_dir / "report.csv", newline="", encoding="utf-8") as f:
        assert next(csv.reader(f))[-4:] == ["E·P1", "E·P2", "E·P3", "E·P4"]

    for res, row in zip(_results(exp_dir, 2), report["rows"]):
        e = res["models"]["E"]
        assert e["classes"] == ["aaa", "background", "bbb", "ccc"]   # E learns what B learns
        assert e["init"]["embedding"] == {"head": "arcface", "embedding_dim": 128}
        assert (exp_dir / "runs" / f"run-{res['run']:02d}" / "E" / "model.safetensors").is_file()
        scores = np.array([p["scores"] for p in e["predictions"]])
        assert scores.shape == (12 - 4, 4) and np.all(np.abs(scores) <= 1 + 1e-5)   # best cosine per class
        want = _recompute(e, "background")
        for k in ("p1", "p2", "p3", "p4"):
            assert _close(row[f"E·{k.upper()}"], want[k]) and _close(as_float(e["statistics"][k]), want[k])
        assert e["statistics"]["n_called_background"] == want["called"]

    calls.clear()
    lines = []
    X.run_experiment(data, out, runs=2, recipe="tiny", models="A,B,E", overrides=TINY, log=lines.append)
    assert calls == [] and sum("complete, kept" in l for l in lines) == 2
    X.run_experiment(data, out, runs=2, recipe="tiny", overrides=TINY, log=None)      # an A/B rerun in between
    assert calls == [] and json.loads((exp_dir / "experiment.json").read_text(encoding="utf-8"))["embedding"] \
        == {"head": "arcface", "embedding_dim": 128}
    with pytest.raises(ValueError, match="model E runs with embedding"):
        X.run_experiment(data, out, runs=2, recipe="tiny", models="A,B,E", overrides=TINY, log=None,
                         embedding={"head": "cosface"})


def test_embedding_arm_scores_are_the_best_cosine_to_each_class():
    """gallery_scores: per query and class, the largest dot product of unit embeddings with that class's photos."""
    from nabi.training.build import build_model
    rng = np.random.default_rng(0)
    net = build_model("embedding_net", 3, {"backbone": "cifar_cnn", "embedding_dim": 8}, seed=0)
    gx, gy = rng.normal(size=(7, 3, 32, 32)).astype(np.float32), np.array([0, 0, 1, 1, 1, 2, 2])
    qx = rng.normal(size=(5, 3, 32, 32)).astype(np.float32)
    scores, truth = X.gallery_scores(net, [(gx[:4], gy[:4]), (gx[4:], gy[4:])], [(qx, np.arange(5))], 3)
    net.eval()
    g, q = np.asarray(net.embed(gx), np.float64), np.asarray(net.embed(qx), np.float64)
    want = np.stack([(q @ g[gy == c].T).max(1) for c in range(3)], axis=1)
    assert np.allclose(np.linalg.norm(g, axis=1), 1, atol=1e-5)
    assert np.allclose(scores, want, atol=1e-5) and truth.tolist() == [0, 1, 2, 3, 4]


def test_ab_fingerprint_is_unchanged_by_the_embedding_arm():
    """An A/B experiment's fingerprint is the value it had before model E existed, so its runs resume."""
    spec = {"root": "/photos", "layout": "train/test", "background": "background",
            "train": [["/photos/train/aaa/1.png", "aaa"], ["/photos/train/background/1.png", "background"],
                      ["/photos/train/bbb/1.png", "bbb"]],
            "test": [["/photos/test/aaa/2.png", "aaa"], ["/photos/test/bbb/2.png", "bbb"]]}
    cfg = X.resolve_recipe("tiny", {"iterations_per_class": 3})
    assert X._fingerprint(spec, cfg, 0) == "02f59a51e3e00ff1b3bfbcd9d59df7957b72e971c4e5e965534bf70e84c51091"


def test_embedding_arm_learns_the_background_kinds_like_b(tmp_path):
    data = make_kinds_data(tmp_path / "data", n_train=3, n_test=1)
    report = X.run_experiment(data, tmp_path / "out", runs=1, recipe="tiny", models="A,B,E",
                              overrides={"iterations_per_class": 1}, background_classes="kinds",
                              embedding={"head": "cosface", "embedding_dim": 16}, log=None)
    res = _results(tmp_path / "out" / "tiny-kinds", 1)[0]
    e, b = res["models"]["E"], res["models"]["B"]
    assert e["classes"] == b["classes"] == ["aaa", "background/pavement", "background/trees", "bbb", "ccc"]
    assert e["training"]["iterations"] == b["training"]["iterations"] == 5
    want = _recompute_kinds(e)
    for k in ("p1", "p2", "p3", "p4"):
        assert _close(report["rows"][0][f"E·{k.upper()}"], want[k])
    assert e["statistics"]["n_called_background"] == want["n_called_background"]
