"""Study runs as Ray tasks (nabi.studies.ray_executor): the same results as the local executor, a killed
worker's run retried and resumed, failures reported per run, and clear errors for bad settings."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from nabi.studies import experiment as X
from nabi.studies import ray_executor as R
from test_experiment import make_data

TINY = {"iterations_per_class": 3}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance (2 CPUs) for the whole module; shut down at the end."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
    """Two tiny runs on the local executor, in this process with its 2 threads: ``(data, exp_dir)``. The Ray
    runs compared with them use 2 CPUs (threads) each too: a different thread count sums in another order."""
    base = tmp_path_factory.mktemp("ray_local")
    data = make_data(base / "data")
    X.run_experiment(data, base / "out", runs=2, recipe="tiny", jobs=1, overrides=TINY, log=None)
    return data, base / "out" / "tiny"


def _result(exp_dir, r):
    return json.loads((exp_dir / "runs" / f"run-{r:02d}" / "result.json").read_text(encoding="utf-8"))


def _assert_same_runs(exp_dir, reference_dir, runs=2):
    for r in range(1, runs + 1):
        got, want = _result(exp_dir, r), _result(reference_dir, r)
        assert got["seeds"] == want["seeds"]
        for m in ("A", "B"):
            assert got["models"][m]["statistics"] == want["models"][m]["statistics"], (r, m)
            np.testing.assert_allclose([p["probs"] for p in got["models"][m]["predictions"]],
                                       [p["probs"] for p in want["models"][m]["predictions"]], rtol=1e-6, atol=1e-7)
    assert json.loads((exp_dir / "report.json").read_text(encoding="utf-8"))["rows"] == \
        json.loads((reference_dir / "report.json").read_text(encoding="utf-8"))["rows"]


@pytest.mark.slow
def test_ray_runs_equal_local_runs(ray_instance, local_reference, tmp_path):
    data, reference = local_reference
    lines = []
    X.run_experiment(data, tmp_path / "out", runs=2, recipe="tiny", executor="ray", cpus_per_run=2, overrides=TINY,
                     log=lines.append)
    exp_dir = tmp_path / "out" / "tiny"
    _assert_same_runs(exp_dir, reference)
    for r in (1, 2):
        assert _result(exp_dir, r)["process"] != os.getpid()  # trained in a Ray worker
        assert "ray task on" in (exp_dir / "runs" / f"run-{r:02d}" / "run.log").read_text(encoding="utf-8")
    assert "2 run(s) as Ray tasks, 2 CPU(s) and 0 GPU(s) each, up to 2 retries when a worker dies" in lines
    assert {"run 01: done", "run 02: done"} <= set(lines)


@pytest.mark.slow
def test_killed_worker_is_retried_and_the_run_resumes(ray_instance, local_reference, tmp_path):
    data, reference = local_reference
    exp_dir = tmp_path / "out" / "tiny"
    run_log = exp_dir / "runs" / "run-01" / "run.log"
    outcome = {}

    def study():
        try:
            X.run_experiment(data, tmp_path / "out", runs=2, recipe="tiny", executor="ray", cpus_per_run=2,
                             overrides=TINY, log=None)
        except BaseException as e:  # noqa: BLE001 - checked below
            outcome["error"] = e

    thread = threading.Thread(target=study)
    thread.start()
    pid, deadline = None, time.monotonic() + 120
    while pid is None and time.monotonic() < deadline and thread.is_alive():
        if run_log.is_file():
            m = re.search(r"ray task on \S+, process (\d+)", run_log.read_text(encoding="utf-8"))
            pid = int(m.group(1)) if m else None
        time.sleep(0.02)
    assert pid is not None, "run 01 never started as a Ray task"
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive() and "error" not in outcome, outcome
    text = run_log.read_text(encoding="utf-8")
    starts = re.findall(r"ray task on \S+, process (\d+)", text)
    assert len(starts) == 2 and int(starts[0]) == pid and int(starts[1]) != pid, text  # killed, then retried
    assert text.count("result.json written") == 1, text  # the killed attempt never finished
    assert (exp_dir / "runs" / "run-02" / "run.log").read_text(encoding="utf-8").count("result.json written") == 1
    _assert_same_runs(exp_dir, reference)


def test_a_failing_run_is_reported_with_its_traceback_and_the_others_finish(ray_instance, local_reference, tmp_path):
    data, _ = local_reference
    spec = X.prepare_data(data, "background", 0)
    broken = dict(spec, train=spec["train"] + [[str(data / "train" / "aaa" / "gone.png"), "aaa"]])
    jobs = [{"run": r, "run_dir": str(tmp_path / f"run-{r:02d}"), "seeds": s, "models": ["A", "B"],
             "fingerprint": "x", "data": d, "config": X.resolve_recipe("tiny", TINY), "input_size": [3, 32, 32],
             "normalization": {"kind": "unit"}} for r, s, d in zip((1, 2), X.run_seeds(0, 2), (broken, spec))]
    lines = []
    with pytest.raises(RuntimeError, match=r"^1 run\(s\) failed \(run 01: RuntimeError: the photos under"):
        R.run_on_ray(jobs, X._run_one, lines.append)
    log1 = (tmp_path / "run-01" / "run.log").read_text(encoding="utf-8")
    assert "failed: RuntimeError" in log1 and "Traceback (most recent call last)" in log1
    assert log1.count("ray task on") == 1  # an exception in the run is not retried
    assert not (tmp_path / "run-01" / "result.json").exists()
    assert json.loads((tmp_path / "run-02" / "result.json").read_text(encoding="utf-8"))["run"] == 2
    assert any(l.startswith("run 01: failed: RuntimeError") and str(tmp_path / "run-01") + "/run.log" in l
               for l in lines), lines
    assert "run 02: done" in lines


def test_unreachable_address_is_a_clear_error_within_seconds(tmp_path):
    pytest.importorskip("ray")
    data = make_data(tmp_path / "data", individuals=("aaa", "bbb"), n_train=2, n_test=1)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", "import sys; from nabi.cli import main; sys.exit(main())",
                        "experiment", str(data), "--recipe", "tiny", "--runs", "1", "--out", str(tmp_path / "out"),
                        "--executor", "ray", "--address", address, "--iterations-per-class", "1"],
                       capture_output=True, text=True, env=env, timeout=120)
    seconds = time.monotonic() - t0
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert f"cannot reach a Ray cluster at {address}" in p.stderr and "ray start --head" in p.stderr
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    assert seconds < 60, seconds  # the connection attempt itself is limited to a few seconds
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_executor_settings_are_checked_before_anything_runs(monkeypatch):
    with pytest.raises(ValueError, match="executor must be one of local, ray, got 'dask'"):
        R.check_executor("dask")
    with pytest.raises(ValueError, match="--address needs --executor ray"):
        R.check_executor("local", address="head:6379")
    with pytest.raises(ValueError, match="--cpus-per-run needs --executor ray"):
        R.check_executor("local", cpus_per_run=4)
    with pytest.raises(ValueError, match="cpus_per_run must be a positive number, got 0"):
        R.check_executor("ray", cpus_per_run=0)
    with pytest.raises(ValueError, match="gpus_per_run must be a number >= 0, got -1"):
        R.check_executor("ray", gpus_per_run=-1)
    with pytest.raises(ValueError, match="max_retries must be an integer >= 0"):
        R.check_executor("ray", max_retries=-1)
    assert R._host_port("head:6380") == ("head", 6380)
    assert R._host_port("ray://10.0.0.2") == ("10.0.0.2", 10001)
    assert R._host_port("head") == ("head", 6379)
    assert R._host_port("[::1]:7000") == ("::1", 7000)
    with pytest.raises(ValueError, match="the port 'x' is not a number"):
        R._host_port("head:x")
    with pytest.raises(ValueError, match="--jobs is for the local executor"):
        X.run_experiment("no-such-folder", "out", jobs=2, executor="ray", log=None)
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    with pytest.raises(ImportError, match=r'pip install "nabi\[ray\]"'):
        R.check_executor("ray")
    with pytest.raises(ImportError, match=r'pip install "nabi\[ray\]"'):
        X.run_experiment("no-such-folder", "out", executor="ray", log=None)


def test_ablation_on_ray_equals_the_local_ablation(ray_instance, tmp_path):
    from nabi.studies import ablation as A
    config = {"data": "embedded:digits8x8", "factor": "activation", "seeds": 1, "max_train": 60,
              "base": {"model": "lenet5", "iterations": 2, "batch_size": 8},
              "variants": [{"name": "tanh", "activation": "tanh"}, {"name": "relu", "activation": "relu"}]}
    A.run_ablation(config, out_dir=tmp_path / "local", jobs=1, log=None)
    lines = []
    A.run_ablation(config, out_dir=tmp_path / "ray", log=lines.append, executor="ray", cpus_per_run=2)
    assert "2 run(s) as Ray tasks, 2 CPU(s) and 0 GPU(s) each, up to 2 retries when a worker dies" in lines
    keys = ("test_acc", "test_loss", "val_acc", "val_loss", "iterations", "final_train_loss", "final_train_acc")
    for variant in ("tanh", "relu"):
        got, want = (json.loads((tmp_path / w / "runs" / variant / "seed-01" / "result.json").read_text("utf-8"))
                     for w in ("ray", "local"))
        assert got["init"] == want["init"] and got["seeds"] == want["seeds"]
        assert {k: got["models"][variant][k] for k in keys} == {k: want["models"][variant][k] for k in keys}
        assert "ray task on" in (tmp_path / "ray" / "runs" / variant / "seed-01" / "run.log").read_text("utf-8")


@pytest.mark.slow           # a minute on 2 cores; the failing-run test covers how failures are reported
def test_a_worker_that_dies_past_its_retries_is_reported_in_the_run_log(ray_instance, local_reference, tmp_path):
    data, _ = local_reference
    spec = X.prepare_data(data, "background", 0)
    jobs = [{"run": r, "run_dir": str(tmp_path / f"run-{r:02d}"), "seeds": s, "models": ["A", "B"],
             "fingerprint": "x", "data": spec, "config": X.resolve_recipe("tiny", TINY), "input_size": [3, 32, 32],
             "normalization": {"kind": "unit"}} for r, s in zip((1, 2), X.run_seeds(0, 2))]
    run_log, outcome, lines = tmp_path / "run-01" / "run.log", {}, []

    def study():
        try:
            R.run_on_ray(jobs, X._run_one, lines.append, max_retries=0)
        except BaseException as e:  # noqa: BLE001 - checked below
            outcome["error"] = e

    thread = threading.Thread(target=study)
    thread.start()
    pid, deadline = None, time.monotonic() + 120
    while pid is None and time.monotonic() < deadline and thread.is_alive():
        if run_log.is_file():
            m = re.search(r"ray task on \S+, process (\d+)", run_log.read_text(encoding="utf-8"))
            pid = int(m.group(1)) if m else None
        time.sleep(0.02)
    assert pid is not None, "run 01 never started as a Ray task"
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert re.match(r"1 run\(s\) failed \(run 01: \w+", str(outcome.get("error"))), outcome
    text = run_log.read_text(encoding="utf-8")
    assert text.count("ray task on") == 1 and "(after 0 retries)" in text and "result.json written" not in text
    assert (tmp_path / "run-02" / "result.json").is_file() and "run 02: done" in lines
