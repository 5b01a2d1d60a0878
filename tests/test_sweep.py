"""nabi sweep (nabi.studies.sweep): a search over training settings on Ray Tune with ASHA early stopping; the
best trial chosen by validation accuracy, the test split used once after selection; resuming; bad configs."""
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.tune", reason='nabi sweep needs Ray Tune: pip install "nabi[sweep]"')

from nabi.cli.main import main as nabi_main  # noqa: E402
from nabi.studies import sweep as S  # noqa: E402

# Good learning rates first, then rates too small to learn anything in 4 epochs: by the time the small ones
# reach ASHA's first rung (epoch 1), the good ones have recorded theirs, so ASHA has someone to compare with.
LRS = [3e-3, 1e-2, 1e-7, 3e-8, 1e-8, 3e-9]


def make_photos(root, classes=3, per_class=10, size=24, seed=0):
    """``classes`` folders of ``per_class`` noisy photos, each class its own colour (easy to tell apart)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    colours = [(210, 40, 40), (40, 210, 40), (40, 40, 210)][:classes]
    for c, colour in enumerate(colours):
        folder = Path(root) / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            a = np.clip(np.array(colour)[None, None] + rng.normal(0, 50, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(folder / f"{j:02d}.png")
    return Path(root)


def write_config(path, text):
    path = Path(path)
    path.write_text(text, encoding="utf-8")
    return path


SWEEP_TOML = """
data = "photos"
max_epochs = 4
grace_period = 1
reduction_factor = 2
seed = 0
out = "{out}"

[base]
model = "cifar_cnn"
batch_size = 8
val_ratio = 0.2
test_ratio = 0.2

[search]
lr = {lrs}
"""


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance (2 CPUs) for the whole module; shut down at the end."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def swept(ray_instance, tmp_path_factory):
    """A sweep of 6 tiny trials (cifar_cnn, 3 classes x 10 photos, 4 epochs, ASHA grace 1, factor 2)."""
    base = tmp_path_factory.mktemp("sweep")
    make_photos(base / "photos")
    config = write_config(base / "sweep.toml", SWEEP_TOML.format(out=base / "out", lrs=json.dumps(LRS)))
    lines = []
    report = S.run_sweep(S.load_config(config), cpus_per_trial=1, log=lines.append)
    return config, base / "out", report, lines


@pytest.mark.slow
def test_asha_stops_some_trials_and_the_report_names_the_best_by_validation(swept):
    config, out, report, _ = swept
    on_disk = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    trials = on_disk["trials"]
    assert len(trials) == 6
    assert sorted(t["params"]["lr"] for t in trials) == sorted(LRS)
    # Every trial's epochs and best validation accuracy are those of its own run folder.
    for t in trials:
        history = [json.loads(line) for line in
                   (Path(t["run_dir"]) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
        assert t["epochs"] == len(history) >= 1
        assert t["best_val_acc"] == max(h["val_acc"] for h in history)
        assert t["error"] is None
        assert t["status"] in ("finished", "stopped by ASHA")
        assert (t["status"] == "finished") == (t["epochs"] == 4)
    stopped = [t for t in trials if t["stopped_by_asha"]]
    assert stopped, "ASHA stopped no trial"
    assert all(t["epochs"] < 4 for t in stopped)
    assert on_disk["stopped_by_asha"] == len(stopped)
    # The best trial: the highest best val_acc, ties to the first trial in order.
    scores = [t["best_val_acc"] for t in trials]
    want = trials[int(np.argmax(scores))]
    assert on_disk["best"]["trial"] == want["trial"]
    assert on_disk["best"]["params"] == want["params"]
    assert want["params"]["lr"] in (3e-3, 1e-2)  # a rate that learns beats one that cannot
    md = (out / "sweep.md").read_text(encoding="utf-8")
    assert f"Best trial by validation accuracy: **{want['trial']}**" in md
    # The test split: evaluated once, for the selected trial only, after selection.
    test = on_disk["selected_test"]
    assert test["n"] == 6 and 0.0 <= test["test_acc"] <= 1.0
    assert "evaluated once after selection (not used to choose)" in md
    assert not any("test" in k for t in trials for k in t if k != "status")
    assert report["best"]["trial"] == want["trial"]
    # Tune's own files stay under OUT.
    assert (out / "tune" / "tuner.pkl").is_file()


@pytest.mark.slow
def test_same_out_again_resumes_without_retraining(swept):
    config, out, first, _ = swept
    before = {t["trial"]: (Path(t["run_dir"]) / "metrics.jsonl").stat().st_mtime_ns for t in first["trials"]}
    lines = []
    again = S.run_sweep(S.load_config(config), cpus_per_trial=1, log=lines.append)
    assert any(line.startswith("resuming the sweep in") for line in lines)
    assert [t["trial"] for t in again["trials"]] == [t["trial"] for t in first["trials"]]
    assert again["best"]["trial"] == first["best"]["trial"]
    assert [(t["epochs"], t["status"]) for t in again["trials"]] == \
        [(t["epochs"], t["status"]) for t in first["trials"]]
    after = {t["trial"]: (Path(t["run_dir"]) / "metrics.jsonl").stat().st_mtime_ns for t in again["trials"]}
    assert after == before  # no trial trained again


@pytest.mark.slow
def test_more_cpus_per_trial_than_ray_has_is_refused(swept, tmp_path):
    config, _, _, _ = swept
    with pytest.raises(ValueError, match="--cpus-per-trial 3: the Ray instance has only 2 CPU"):
        S.run_sweep(S.load_config(config, out=str(tmp_path / "o")), cpus_per_trial=3, log=lambda *a: None)


@pytest.mark.slow
def test_other_settings_with_the_same_out_are_refused(swept):
    config, out, _, _ = swept
    other = write_config(config.parent / "other.toml",
                         SWEEP_TOML.format(out=out, lrs=json.dumps(LRS[:2])))
    with pytest.raises(ValueError, match="holds a sweep of other settings"):
        S.run_sweep(S.load_config(other), log=lambda *a: None)


# -- bad configurations: clear errors naming the file and key, before anything runs ---------------------------------
BAD = [
    ('data = "photos"\nlearning_rate = 1\n[search]\nlr = [0.1]\n', r"unknown key\(s\) learning_rate"),
    ('data = "photos"\n[search]\n', r"\[search\] is missing or empty"),
    ('data = "photos"\n', r"\[search\] is missing or empty"),
    ('data = "photos"\nmetric = "test_acc"\n[search]\nlr = [0.1]\n', "selection on the test split is not allowed"),
    ('data = "photos"\nmetric = "train_acc"\n[search]\nlr = [0.1]\n', r'metric must be "val_acc"'),
    ('data = "photos"\nmode = "min"\n[search]\nlr = [0.1]\n', r'mode must be "max"'),
    ('data = "photos"\n[search]\nlr = []\n', r"\[search\] lr: an empty list"),
    ('data = "photos"\n[search]\nlearning_rate = [0.1]\n', r"\[search\] learning_rate: unknown setting"),
    ('data = "photos"\n[search]\nepochs = [1, 2]\n', r"\[search\] epochs: cannot be searched \(max_epochs"),
    ('data = "photos"\n[search]\nlr = {distribution = "normal", low = 0, high = 1}\n',
     r"\[search\] lr: distribution must be one of loguniform"),
    ('data = "photos"\n[search]\nlr = {distribution = "loguniform", low = 0, high = 1}\n', "loguniform needs low > 0"),
    ('data = "photos"\n[search]\nlr = {distribution = "uniform", low = 1, high = 0.5}\n', "low must be below high"),
    ('data = "photos"\n[search]\nmodel = {choice = ["cifar_cnn", "no_such_net"]}\n',
     r"\[search\] model = 'no_such_net': unknown model"),
    ('data = "photos"\n[base]\nout = "x"\n[search]\nlr = [0.1]\n', r"\[base\] cannot set 'out'"),
    ('data = "photos"\n[base]\nlearning_rate = 0.1\n[search]\nlr = [0.1]\n',
     r"\[base\] has unknown key 'learning_rate'"),
    ('data = "photos"\nmax_epochs = 2\ngrace_period = 3\n[search]\nlr = [0.1]\n',
     "grace_period \\(3\\) must not exceed"),
    ('data = "photos"\nreduction_factor = 1\n[search]\nlr = [0.1]\n', "reduction_factor must be a number > 1"),
    ('[search]\nlr = [0.1]\n', "data must name a folder"),
    ('data = "photos"\n[base]\nval_ratio = 0.0\n[search]\nlr = [0.1]\n', "selects on the validation split"),
    ('data = "no_such_folder"\n[search]\nlr = [0.1]\n', "data = 'no_such_folder': no folder"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_bad_config_is_a_clear_error_naming_the_file_and_key(tmp_path, text, message):
    (tmp_path / "photos").mkdir()
    path = write_config(tmp_path / "bad.toml", text)
    with pytest.raises(ValueError, match=message) as e:
        S.load_config(path)
    assert str(path) in str(e.value)


def test_search_space_kinds(tmp_path):
    (tmp_path / "photos").mkdir()
    path = write_config(tmp_path / "s.toml", 'data = "photos"\nsamples = 3\n[search]\n'
                        'lr = {distribution = "loguniform", low = 1e-4, high = 1e-1}\n'
                        'augment = ["none", "flip"]\nmodel = {choice = ["cifar_cnn", "lenet5"]}\n'
                        '"model_args.init" = ["he_uniform"]\nbatch_size = {distribution = "randint", low = 4, '
                        'high = 9}\n')
    sweep = S.load_config(path)
    assert sweep["data"] == str((tmp_path / "photos").resolve())
    assert {k: d["kind"] for k, d in sweep["search"].items()} == {
        "lr": "loguniform", "augment": "grid", "model": "choice", "model_args.init": "grid", "batch_size": "randint"}
    space = S.param_space(sweep["search"])
    assert space["augment"] == {"grid_search": ["none", "flip"]}
    assert space["lr"].lower == 1e-4 and space["lr"].upper == 1e-1
    assert S.trial_settings(sweep["base"], {"model_args.init": "he_uniform", "lr": 0.5})["model_args"] == {
        "init": "he_uniform"}


def test_cli_check_and_error(tmp_path, capsys):
    make_photos(tmp_path / "photos", per_class=2)
    good = write_config(tmp_path / "good.toml", 'data = "photos"\n[search]\nlr = [0.1, 0.01]\n')
    assert nabi_main(["sweep", str(good), "--check", "--out", str(tmp_path / "o")]) == 0
    assert "config OK" in capsys.readouterr().out
    bad = write_config(tmp_path / "bad.toml", 'data = "photos"\nmetric = "test_acc"\n[search]\nlr = [0.1]\n')
    assert nabi_main(["sweep", str(bad)]) != 0
    err = capsys.readouterr().err
    assert err.startswith("nabi sweep: error: ") and str(bad) in err and "selection on the test split" in err


@pytest.mark.slow
def test_interrupted_sweep_resumes_from_each_trials_checkpoint(ray_instance, tmp_path):
    """Ctrl+C (SIGINT) in the middle of a sweep: the report selects nothing and names the unfinished trials; the
    same command again restores Tune's experiment, and the trials that had started go on from their checkpoints."""
    import os
    import signal
    import subprocess
    import sys
    import time
    make_photos(tmp_path / "photos")
    out = tmp_path / "out"
    config = write_config(tmp_path / "sweep.toml", SWEEP_TOML.format(out=out, lrs=json.dumps(LRS[:4]))
                          .replace("max_epochs = 4", "max_epochs = 5"))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, "-m", "nabi", "sweep", str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            rows = sum(len(f.read_text(encoding="utf-8").splitlines()) for f in out.glob("trials/*/run/metrics.jsonl"))
            if rows >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[0]
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=90)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, output
    cut = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    assert not cut["complete"] and cut["unfinished"] and cut["best"] is None and cut["selected_test"] is None
    assert "no trial is selected yet" in (out / "sweep.md").read_text(encoding="utf-8")
    # the trials cut part-way, read from their run folders (Tune's own record of the epochs can lag behind on a
    # busy machine, and a trial may still finish its last epoch while the sweep shuts down)
    rows_before = {}
    for t in cut["trials"]:
        metrics = out / "trials" / t["trial"] / "run" / "metrics.jsonl"
        text = metrics.read_text(encoding="utf-8") if metrics.exists() else ""
        if t["status"] == "unfinished" and 0 < len(text.splitlines()) < 5:
            rows_before[t["trial"]] = text
    started = sorted(rows_before)
    assert started, (cut["trials"], output)

    lines = []
    done = S.run_sweep(S.load_config(config), log=lines.append)
    assert f"resuming the sweep in {out / 'tune'}" in lines
    assert done["complete"] and [t["trial"] for t in done["trials"]] == [t["trial"] for t in cut["trials"]]
    assert all(t["status"] in ("finished", "stopped by ASHA") for t in done["trials"])
    for trial in started:  # went on from its checkpoint: its earlier epochs kept as they were, not trained again
        assert "resumed from" in (out / "trials" / trial / "trial.log").read_text(encoding="utf-8")
        rows = (out / "trials" / trial / "run" / "metrics.jsonl").read_text(encoding="utf-8")
        assert rows.startswith(rows_before[trial])
        assert [json.loads(r)["epoch"] for r in rows.splitlines()] == list(range(1, len(rows.splitlines()) + 1))
    assert done["best"] is not None and done["selected_test"] is not None


def test_without_ray_tune_the_error_names_the_pip_line(tmp_path):
    """With only nabi's core dependencies importable, nabi sweep says which extra to install."""
    from test_install import _core_run
    (tmp_path / "photos").mkdir()
    config = write_config(tmp_path / "s.toml", 'data = "photos"\n[search]\nlr = [0.1]\n')
    proc, codes = _core_run([["sweep", str(config)]], tmp_path)
    assert codes == [1], proc.stdout[-2000:] + proc.stderr[-2000:]
    assert 'pip install "nabi[sweep]"' in proc.stderr and "Traceback" not in proc.stderr
