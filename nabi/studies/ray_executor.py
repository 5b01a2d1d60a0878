"""Runs of a study as Ray tasks: on this machine's local Ray instance or on a Ray cluster.

``run_on_ray(jobs_list, fn, log, ...)`` keeps ``run_parallel``'s contract (see ``jobs.py``): each
job is one call ``fn(job)`` that writes ``job['run_dir']/result.json`` last, a run that raises is
reported with the path of its ``run.log`` (which holds the traceback) while the other runs go
on, and then one ``RuntimeError`` names every failure. Each run is one Ray task with
``num_cpus=cpus_per_run`` and ``num_gpus=gpus_per_run``; a task whose worker process dies (killed,
out of memory, node lost) is started again up to ``max_retries`` times, and because a run
resumes from its own checkpoints and result files the retried run gives the result the
uninterrupted one would have. A run that raises an exception is not retried.

On a cluster every node must have nabi installed and see the output folder at the same path
(a shared filesystem): the tasks write their results there, not back through Ray.

Ray is imported only here and only when used: ``pip install "nabi[ray]"``.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

from ..training.ray_cluster import (_CLIENT_PORT, _CONNECT_TIMEOUT_S, _GCS_PORT, _connect,  # noqa: F401
                                    _failure_text, _host_port, probe_address, require_ray)

EXECUTORS = ("local", "ray")


def check_executor(executor, address=None, cpus_per_run=1, gpus_per_run=0, max_retries=2):
    """Raise ValueError for bad executor settings, ImportError when Ray is missing and RuntimeError when
    ``address`` does not answer: before anything is written or run."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    for name, v, low in (("cpus_per_run", cpus_per_run, 0), ("gpus_per_run", gpus_per_run, None)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > low if low is not None else v >= 0):
            what = "a positive number" if low is not None else "a number >= 0"
            raise ValueError(f"{name} must be {what}, got {v!r}")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
    if executor == "local":
        if address is not None:
            raise ValueError("--address needs --executor ray")
        if gpus_per_run:
            raise ValueError("--gpus-per-run needs --executor ray")
        if cpus_per_run != 1:
            raise ValueError("--cpus-per-run needs --executor ray (the local executor shares the cores by --jobs)")
        return
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise ValueError(f"address must be host:port, ray://host:port or 'auto', got {address!r}")
    require_ray()
    probe_address(address)


def _run_task(fn, job, threads):
    """One run inside a Ray worker: limit the threads, note where it runs in its run.log, then ``fn(job)``."""
    from .. import backend
    from .jobs import RunLog
    backend.set_num_threads(threads, required=False)
    run_dir = Path(job["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    RunLog(run_dir / "run.log", f"[run {job['run']:02d}]")(
        f"ray task on {socket.gethostname()}, process {os.getpid()}, {threads} thread(s)")
    return fn(job)


def run_on_ray(jobs_list, fn, log, address=None, cpus_per_run=1, gpus_per_run=0, max_retries=2):
    """Run ``fn(job)`` for every job as a Ray task; the same results and failure reports as ``run_parallel``.

    ``fn`` must be a module-level function of an importable module (the workers import it).
    ``address``: None starts a local Ray instance (shut down at the end); ``'auto'``, ``host:port``
    or ``ray://host:port`` connects to a running cluster. When Ray is already initialised in this
    process, that instance is used as it is. ``cpus_per_run``/``gpus_per_run`` are each task's
    Ray resources; each run uses ``max(1, int(cpus_per_run))`` threads. A task whose worker dies is
    retried up to ``max_retries`` times.
    """
    check_executor("ray", address, cpus_per_run, gpus_per_run, max_retries)
    if not jobs_list:
        return
    ray = require_ray()
    started = _connect(ray, address, log)
    try:
        threads = max(1, int(cpus_per_run))
        task = ray.remote(_run_task).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=max_retries,
                                             retry_exceptions=False)
        log(f"{len(jobs_list)} run(s) as Ray tasks, {cpus_per_run:g} CPU(s) and {gpus_per_run:g} GPU(s) each, "
            f"up to {max_retries} retries when a worker dies")
        pending = {task.remote(fn, job, threads): job for job in jobs_list}
        failures = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    ray.get(ref)
                    log(f"run {job['run']:02d}: done")
                except BaseException as e:  # noqa: BLE001 - reported below, the other runs go on
                    if isinstance(e, KeyboardInterrupt):
                        raise
                    exc, text = _failure_text(e)
                    if exc is e:  # Ray's own failure (the worker died every time): the run's log says so too
                        from .jobs import RunLog
                        Path(job["run_dir"]).mkdir(parents=True, exist_ok=True)
                        RunLog(Path(job["run_dir"]) / "run.log", f"[run {job['run']:02d}]")(
                            f"failed: {text} (after {max_retries} retries)")
                    failures.append((job["run"], exc, text))
                    log(f"run {job['run']:02d}: failed: {text} (see {job['run_dir']}/run.log)")
    finally:
        if started:
            ray.shutdown()  # a local instance stops; from a cluster this driver disconnects, the cluster goes on
    if failures:
        failures.sort(key=lambda f: f[0])
        msg = "; ".join(f"run {r:02d}: {text}" for r, _, text in failures)
        raise RuntimeError(f"{len(failures)} run(s) failed ({msg}); finished runs are kept, run the same "
                           "command again to resume") from failures[0][1]


# -- command line -------------------------------------------------------------------------------------------------
def add_executor_arguments(parser):
    """``--executor``, ``--address``, ``--cpus-per-run`` and ``--gpus-per-run`` for the study commands."""
    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help="local: this machine's worker processes (--jobs); ray: one Ray task per run "
                             '(pip install "nabi[ray]")')
    parser.add_argument("--address", metavar="ADDR",
                        help="with --executor ray: the Ray cluster (host:port, ray://host:port or auto; "
                             "default: start a local Ray instance). The output folder must be on a filesystem "
                             "every node sees at the same path")
    parser.add_argument("--cpus-per-run", type=float, default=1, metavar="N",
                        help="with --executor ray: CPUs each run reserves and uses as threads (default 1)")
    parser.add_argument("--gpus-per-run", type=float, default=0, metavar="N",
                        help="with --executor ray: GPUs each run reserves (default 0; use with --device gpu)")
    return parser


def executor_kwargs(args) -> dict:
    """The keyword arguments of run_experiment/run_ablation from parsed ``add_executor_arguments`` options."""
    cpus, gpus = args.cpus_per_run, args.gpus_per_run
    return {"executor": args.executor, "address": args.address,
            "cpus_per_run": int(cpus) if float(cpus).is_integer() else cpus,
            "gpus_per_run": int(gpus) if float(gpus).is_integer() else gpus}
