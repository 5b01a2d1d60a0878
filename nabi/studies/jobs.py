"""Resumable jobs: each run of a study in its own folder, its result file the record that it is done.

A job is a dict with at least ``run_dir``, ``fingerprint`` (a hash of everything that decides
the result) and ``models``. ``run_resumable(job, label, work)`` returns the result already in
``run_dir/result.json`` when its fingerprint matches, and otherwise calls ``work(job, run_dir,
log)``, which writes that file last (atomically). A run cut short leaves no ``result.json`` and is
redone; its trainer resumes from its own checkpoints. ``run_parallel`` runs jobs in 'spawn'
worker processes, each limited to its share of the cores, and reports every failure with the
path of that run's log while the other runs go on.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from .. import backend


def relative_path(path, root) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()


def state_sha256(state) -> str:
    """SHA-256 over a state dict's names, dtypes, shapes and bytes (sorted by name)."""
    h = hashlib.sha256()
    for k in sorted(state):
        a = np.ascontiguousarray(backend.to_numpy(state[k]))
        h.update(k.encode("utf-8") + b"\0" + str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


def run_seeds(seed: int, runs: int) -> list:
    """Per-run seeds from ``SeedSequence(seed).spawn(runs)``: run r's do not depend on ``runs``."""
    out = []
    for r, child in enumerate(np.random.SeedSequence(int(seed)).spawn(int(runs))):
        init_ss, order_ss = child.spawn(2)
        out.append({"run": r + 1, "spawn_key": [int(k) for k in child.spawn_key],
                    "init_seed": int(init_ss.generate_state(1, np.uint64)[0] >> np.uint64(1)),
                    "order_seed": int(order_ss.generate_state(1, np.uint64)[0] >> np.uint64(1))})
    return out


# -- one run ---------------------------------------------------------------------------------------------------
def sha256_of_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def strict_json(x):
    """NaN/inf -> None, NumPy -> Python, recursively (strict JSON; ``nabi.evaluate.json_ready``)."""
    from ..evaluate import json_ready
    return json_ready(x)


def as_float(x) -> float:
    return float("nan") if x is None else float(x)


class RunLog:
    def __init__(self, path, prefix, echo=None):
        self.path, self.prefix, self.echo = Path(path), prefix, echo

    def __call__(self, msg, *args, **kwargs):
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {self.prefix} {msg}"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        if self.echo is not None:
            self.echo(f"{self.prefix} {msg}")


def study_trainer_class():
    """The trainer of a study's runs: every standard extension but the curves, which the study draws once,
    at the end of each run (``plot_history``)."""
    from ..training.trainer import Trainer

    class _ExperimentTrainer(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.extensions.pop("curves", None)
    return _ExperimentTrainer


def plot_history(history, path):
    try:
        from ..plots import plot_curves
    except ImportError:  # matplotlib missing
        return
    if history:
        try:
            plot_curves(history, path)
        except ImportError:
            pass


def read_json_or_none(path: Path):
    """The JSON object in ``path``, or None when the file is missing or not valid JSON (a run cut
    short before its atomic write, or damaged): the caller then redoes that work."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None


def completed_result(run_dir: Path, models, fingerprint):
    res = read_json_or_none(run_dir / "result.json")
    if res is None:
        return None
    if res.get("fingerprint") != fingerprint or not all(m in res.get("models", {}) for m in models):
        return None
    return res


def run_resumable(job: dict, label: str, work, log=None) -> dict:
    """``work(job, run_dir, log)`` unless ``run_dir`` already holds a complete ``result.json`` (then that
    is returned); a failure is written to ``run_dir/run.log`` with its traceback and raised again."""
    run_dir = Path(job["run_dir"])
    done = completed_result(run_dir, job["models"], job["fingerprint"])
    if done is not None:
        return done
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return work(job, run_dir, log)
    except BaseException as e:
        import traceback
        RunLog(run_dir / "run.log", label)(f"failed: {type(e).__name__}: {e}\n{traceback.format_exc()}")
        raise


def worker_init(threads: int):
    """Each worker process uses ``threads`` threads for BLAS and for nabi's compiled kernels."""
    from ..backend import set_num_threads
    set_num_threads(int(threads), required=False)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def run_parallel(jobs_list, jobs, log, fn):
    """Run ``fn(job)`` for every job in at most ``jobs`` 'spawn' worker processes, each with its share of the cores.

    ``fn`` must be a module-level function (it is pickled by name). A failed job is logged with the
    path of its ``run.log`` and the others go on; then one ``RuntimeError`` names every failure.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    n = min(int(jobs), len(jobs_list))
    threads = max(1, available_cores() // int(jobs))
    log(f"{len(jobs_list)} run(s) on {n} worker processes, {threads} BLAS thread(s) each")
    failures = []
    with ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn"), initializer=worker_init,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(fn, job): job for job in jobs_list}
        for f in as_completed(futures):
            job = futures[f]
            try:
                f.result()
                log(f"run {job['run']:02d}: done")
            except BaseException as e:  # noqa: BLE001 - reported below, the other runs go on
                failures.append((job["run"], e))
                log(f"run {job['run']:02d}: failed: {type(e).__name__}: {e} (see {job['run_dir']}/run.log)")
    if failures:
        failures.sort(key=lambda f: f[0])
        msg = "; ".join(f"run {r:02d}: {type(e).__name__}: {e}" for r, e in failures)
        raise RuntimeError(f"{len(failures)} run(s) failed ({msg}); finished runs are kept, run the same "
                           "command again to resume") from failures[0][1]


