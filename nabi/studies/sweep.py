"""``nabi sweep CONFIG.toml``: a search over training settings on Ray Tune, poor trials stopped early by ASHA.

The TOML file names the data (a folder with one sub-folder per class, or one with ``train/``, ``val/``,
``test/``; ``nabi.data.prepare.load_datasets`` splits it), a ``[base]`` of ``TrainConfig`` settings
shared by every trial, and a ``[search]`` table of the settings to vary::

    data = "photos"                 # relative paths are taken from the TOML file's folder
    samples = 4                     # trials per grid point, each with fresh random draws
    metric = "val_acc"              # the only metric a sweep selects on (never a test score)
    mode = "max"
    max_epochs = 8                  # every trial's length unless ASHA stops it earlier
    grace_period = 1                # ASHA: epochs every trial runs before it can be stopped
    reduction_factor = 2            # ASHA: 1/reduction_factor of the trials go on at each rung
    seed = 0                        # the random draws
    out = "runs/sweep"              # relative to the current folder, as nabi train's --out

    [base]
    model = "cifar_cnn"
    batch_size = 32

    [search]
    lr = {distribution = "loguniform", low = 1e-4, high = 1e-1}
    augment = ["none", "flip"]                   # a list: every value (grid)
    weight_decay = {choice = [0.0, 1e-4]}        # one value drawn per trial
    "model_args.init" = ["he_uniform", "xavier_uniform"]   # an argument of the model (an entry of model_args)

A search key is a ``TrainConfig`` field (``lr``, ``augment``, ``model``, ``image_size``, ``optimizer``,
``weight_decay``, ``label_smoothing``, ``batch_size``, ...) or ``model_args.NAME`` (a model's own
argument, such as an embedding dimension; it reaches the model as ``model_args``, so every model
a trial may build must take it). Its value is a list (grid search over every value), a
``{choice = [...]}`` (one drawn per trial) or ``{distribution = "loguniform" | "uniform" | "randint",
low, high}`` (randint: ``low <= v < high``).

Each trial trains with nabi's own trainer (``nabi.training.build.run_training``) into its own run
folder ``OUT/trials/<trial id>/run/`` (``metrics.jsonl``, ``best.safetensors``, checkpoints) and reports
``val_acc`` to Tune after every epoch; ASHA (asynchronous successive halving, Li et al., "A System
for Massively Parallel Hyperparameter Tuning", MLSys 2020) stops trials whose validation accuracy
at a rung (epoch ``grace_period * reduction_factor**k``) is below the top ``1/reduction_factor``.

The report ``OUT/sweep.json`` and ``OUT/sweep.md`` lists every trial (settings, best validation
accuracy, epochs run, stopped by ASHA or not) and names the best trial by its best validation
accuracy (ties: the earlier trial). Only then is that one trial's best weights evaluated, once, on
the test split; that number is reported as such and chooses nothing.

Resuming: Tune's own files are kept in ``OUT/tune/``. Running the same command again with the same
``out`` restores that experiment with ``Tuner.restore``: finished and ASHA-stopped trials are kept
as they are, trials that were running or pending are run again, and a trial that had started
continues from the last epoch checkpoint in its run folder (nabi's ``Trainer.resume``).
``OUT/sweep-config.json`` records the sweep's settings; a different configuration with the same
``out`` is an error rather than a mixed sweep.

Ray is imported only when a sweep runs: ``pip install "nabi[sweep]"``.
"""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path

from .. import files
from .jobs import RunLog, read_json_or_none, sha256_of_json, strict_json

SWEEP_KEYS = ("data", "base", "search", "samples", "metric", "mode", "max_epochs", "grace_period",
              "reduction_factor", "seed", "out")
DISTRIBUTIONS = ("loguniform", "uniform", "randint")
# TrainConfig fields that the sweep itself sets for every trial.
_FIXED = {"data": "the sweep's top-level data", "out": "each trial's run folder is OUT/trials/<trial id>/run",
          "epochs": "max_epochs sets every trial's length", "iterations": "trials run whole epochs (max_epochs)",
          "progress": "trials log to their run folders"}
TUNE_NAME = "tune"   # Tune's experiment folder under OUT
# A trial's folder OUT/trials/<trial id>/ holds these and its nabi run folder RUN.
RUN = "run"                    # the trial's run folder (config.json, metrics.jsonl, best.safetensors, checkpoints/)
PARAMS = "params.json"         # the trial's searched settings
TRIAL_LOG = "trial.log"        # what the trial's training logged (resumed from, early stopping, failures)
FINISHED = "finished.json"     # fit() returned (all epochs, or nabi's early stopping)
COMPLETED = "completed.json"   # Tune ended the trial without an error (ran to the end, or stopped by ASHA)


def require_tune():
    """``ray.tune``, or an ImportError that says how to install it."""
    try:
        from ray import tune
    except ImportError as e:
        raise ImportError('nabi sweep needs Ray Tune: pip install "nabi[sweep]"') from e
    return tune


# -- the configuration -------------------------------------------------------------------------------------------
def _int_at_least(where, v, low):
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{where} must be an integer >= {low}, got {v!r}")
    return v


def _search_dimension(where, key, value, known):
    """``{'kind': 'grid'|'choice'|DISTRIBUTION, ...}`` for one ``[search]`` entry (ValueError when malformed)."""
    field = key.split(".", 1)[0]
    if key.startswith("model_args."):
        if not key[len("model_args."):]:
            raise ValueError(f"{where}: give the argument's name, e.g. model_args.width")
    elif key == "model_args":
        raise ValueError(f"{where}: search model_args entries one by one, e.g. \"model_args.width\" = [16, 32]")
    elif field in _FIXED:
        raise ValueError(f"{where}: cannot be searched ({_FIXED[field]})")
    elif field not in known:
        raise ValueError(f"{where}: unknown setting; a search key is a training setting "
                         f"({', '.join(sorted(set(known) - set(_FIXED)))}) or model_args.NAME")
    if isinstance(value, list):
        if not value:
            raise ValueError(f"{where}: an empty list gives nothing to search")
        return {"kind": "grid", "values": value}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: give a list (grid), {{choice = [...]}} or "
                         f"{{distribution = \"loguniform\", low = ..., high = ...}}; got {value!r}")
    if "choice" in value:
        extra = sorted(set(value) - {"choice"})
        if extra or not isinstance(value["choice"], list) or not value["choice"]:
            raise ValueError(f"{where}: choice takes a non-empty list and nothing else, got {value!r}")
        return {"kind": "choice", "values": value["choice"]}
    if "distribution" in value:
        extra = sorted(set(value) - {"distribution", "low", "high"})
        if extra:
            raise ValueError(f"{where}: unknown key(s) {extra}; a distribution takes distribution, low, high")
        dist = value["distribution"]
        if dist not in DISTRIBUTIONS:
            raise ValueError(f"{where}: distribution must be one of {', '.join(DISTRIBUTIONS)}, got {dist!r}")
        low, high = value.get("low"), value.get("high")
        for name, v in (("low", low), ("high", high)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{where}: {name} must be a finite number, got {v!r}")
        if not low < high:
            raise ValueError(f"{where}: low must be below high, got low={low!r}, high={high!r}")
        if dist == "loguniform" and low <= 0:
            raise ValueError(f"{where}: loguniform needs low > 0, got {low!r}")
        if dist == "randint" and not (isinstance(low, int) and isinstance(high, int)):
            raise ValueError(f"{where}: randint needs integer low and high, got {low!r}, {high!r}")
        return {"kind": dist, "low": low, "high": high}
    raise ValueError(f"{where}: give a list (grid), {{choice = [...]}} or "
                     f"{{distribution = \"loguniform\", low = ..., high = ...}}; got {value!r}")


def trial_settings(base: dict, params: dict) -> dict:
    """The ``TrainConfig`` dict of one trial: ``base`` with the trial's ``params`` (``model_args.NAME`` keys
    go into ``model_args``)."""
    cfg = copy.deepcopy(base)
    for k, v in params.items():
        if k.startswith("model_args."):
            cfg.setdefault("model_args", {})[k[len("model_args."):]] = v
        else:
            cfg[k] = v
    return cfg


def _check_settings(where, settings):
    from ..training.config import TrainConfig, check
    try:
        cfg = TrainConfig.from_dict(settings)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: {e}") from None
    if not isinstance(cfg.model_args, dict):
        raise ValueError(f"{where}: model_args must be a table, got {cfg.model_args!r}")
    from .. import models
    if cfg.model not in models.names():
        raise ValueError(f"{where}: unknown model {cfg.model!r}; see nabi summary --list")
    if not (0 < cfg.val_ratio < 1 and 0 <= cfg.test_ratio < 1 and cfg.val_ratio + cfg.test_ratio < 1):
        raise ValueError(f"{where}: a sweep selects on the validation split: val_ratio must be in (0, 1), "
                         f"test_ratio in [0, 1), their sum below 1; got {cfg.val_ratio!r}, {cfg.test_ratio!r}")
    try:
        check(cfg)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def load_config(path, out=None) -> dict:
    """Read and check a sweep's TOML file; returns the resolved sweep (ValueError naming the file and key).

    ``out`` (the command line's ``--out``) replaces the file's ``out``.
    """
    from ..training.config import TrainConfig, load_toml
    path = Path(path).expanduser()
    raw = load_toml(path)
    where = str(path)
    unknown = sorted(set(raw) - set(SWEEP_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; a sweep takes {', '.join(SWEEP_KEYS)}")
    metric = raw.get("metric", "val_acc")
    if not isinstance(metric, str) or metric.startswith("test"):
        raise ValueError(f"{where}: metric = {metric!r}: selection on the test split is not allowed (the test "
                         "score of the chosen trial is reported after selection); use metric = \"val_acc\"")
    if metric != "val_acc":
        raise ValueError(f"{where}: metric must be \"val_acc\" (the validation accuracy), got {metric!r}")
    mode = raw.get("mode", "max")
    if mode != "max":
        raise ValueError(f"{where}: mode must be \"max\" for metric val_acc, got {mode!r}")
    if "data" not in raw or not isinstance(raw["data"], str) or not raw["data"]:
        raise ValueError(f"{where}: data must name a folder (one sub-folder per class), got {raw.get('data')!r}")
    data = raw["data"]
    if not data.startswith("embedded:") and not Path(data).expanduser().is_absolute():
        data = str((path.parent / data).resolve())
    if not data.startswith("embedded:") and not Path(data).is_dir():
        raise ValueError(f"{where}: data = {raw['data']!r}: no folder {data} (give a folder with one sub-folder "
                         "per class; a relative path is taken from the TOML file's folder)")
    base = raw.get("base", {})
    if not isinstance(base, dict):
        raise ValueError(f"{where}: [base] must be a table of training settings, got {base!r}")
    known = TrainConfig().to_dict()
    for k in sorted(base):
        if k in _FIXED:
            raise ValueError(f"{where}: [base] cannot set {k!r} ({_FIXED[k]})")
        if k not in known:
            raise ValueError(f"{where}: [base] has unknown key {k!r}; known: "
                             f"{', '.join(sorted(set(known) - set(_FIXED)))}")
    search = raw.get("search")
    if not isinstance(search, dict) or not search:
        raise ValueError(f"{where}: [search] is missing or empty: give at least one setting to search, "
                         "e.g. lr = [1e-3, 1e-2]")
    dims = {k: _search_dimension(f"{where}: [search] {k}", k, v, known) for k, v in search.items()}
    samples = _int_at_least(f"{where}: samples", raw.get("samples", 1), 1)
    max_epochs = _int_at_least(f"{where}: max_epochs", raw.get("max_epochs", 10), 1)
    grace = _int_at_least(f"{where}: grace_period", raw.get("grace_period", 1), 1)
    if grace > max_epochs:
        raise ValueError(f"{where}: grace_period ({grace}) must not exceed max_epochs ({max_epochs})")
    rf = raw.get("reduction_factor", 2)
    if isinstance(rf, bool) or not isinstance(rf, (int, float)) or not rf > 1:
        raise ValueError(f"{where}: reduction_factor must be a number > 1, got {rf!r}")
    seed = _int_at_least(f"{where}: seed", raw.get("seed", 0), 0)
    out_dir = out if out is not None else raw.get("out", "runs/sweep")
    if not isinstance(out_dir, str) or not out_dir:
        raise ValueError(f"{where}: out must be a folder name, got {out_dir!r}")
    base_settings = dict(known)
    base_settings.update(copy.deepcopy(base))
    base_settings.update(data=data, epochs=max_epochs, iterations=None, progress=False)
    base_settings.pop("out")
    # Every grid value and choice must make a valid training setting on its own.
    for k, d in dims.items():
        for v in d.get("values", []):
            _check_settings(f"{where}: [search] {k} = {v!r}", {**trial_settings(base_settings, {k: v}), "out": "x"})
    _check_settings(f"{where}: [base]", {**base_settings, "out": "x"})
    return {"source": where, "data": data, "base": base_settings, "search": dims, "samples": samples,
            "metric": metric, "mode": mode, "max_epochs": max_epochs, "grace_period": grace,
            "reduction_factor": rf, "seed": seed, "out": str(Path(out_dir).expanduser().resolve())}


def param_space(search: dict) -> dict:
    """Tune's search space for the resolved ``[search]`` entries."""
    tune = require_tune()
    space = {}
    for k, d in search.items():
        kind = d["kind"]
        if kind == "grid":
            space[k] = tune.grid_search(list(d["values"]))
        elif kind == "choice":
            space[k] = tune.choice(list(d["values"]))
        elif kind == "loguniform":
            space[k] = tune.loguniform(d["low"], d["high"])
        elif kind == "uniform":
            space[k] = tune.uniform(d["low"], d["high"])
        else:
            space[k] = tune.randint(d["low"], d["high"])
    return space


# -- one trial ---------------------------------------------------------------------------------------------------
def reporting_extension(report):
    """A trainer extension (``nabi.training.extensions``) that calls ``report(metrics)`` after each epoch,
    once its checkpoint is written."""
    from ..training.extensions import Extension

    class ReportEachEpoch(Extension):
        name = "report"
        priority = -100                                  # after the epoch's checkpoint

        def __call__(self, trainer):
            row = trainer.history[-1]
            report({"epoch": int(row["epoch"]), "val_acc": float(row.get("val_acc", float("nan"))),
                    "val_loss": float(row.get("val_loss", float("nan"))), "train_acc": float(row["train_acc"]),
                    "train_loss": float(row["train_loss"]), "best_val_acc": float(trainer.best_acc),
                    "early_stopped": trainer.status == "early_stopped"})
    return ReportEachEpoch()


def _trial_dirname(trial) -> str:
    return trial.trial_id


def run_trial(params: dict, sweep: dict):
    """One trial inside a Tune worker: train ``sweep['base']`` with ``params`` into the run folder
    ``OUT/trials/<trial id>/run``, resuming from its checkpoint when there is one, reporting to Tune after
    every epoch."""
    from ray import tune
    from .. import backend
    from ..training.build import run_training
    from ..training.config import TrainConfig
    backend.set_num_threads(int(sweep["cpus_per_trial"]), required=False)
    trial_id = tune.get_context().get_trial_id()
    trial_dir = Path(sweep["out"]) / "trials" / trial_id
    trial_dir.mkdir(parents=True, exist_ok=True)
    settings = trial_settings(sweep["base"], params)
    settings["out"] = str(trial_dir / RUN)
    cfg = TrainConfig.from_dict(settings)
    if cfg.val_ratio <= 0:
        raise ValueError("a sweep selects on the validation split: val_ratio must be above 0")
    log = RunLog(trial_dir / TRIAL_LOG, f"[trial {trial_id}]")
    files.atomic_write_json(trial_dir / PARAMS, strict_json(params))
    trainer, _ = run_training(cfg, resume=True, log=log, extensions=[reporting_extension(tune.report)])
    files.atomic_write_json(trial_dir / FINISHED, {"status": trainer.status, "epochs": trainer.epoch})


def completion_recorder(out):
    """A Tune callback that writes ``OUT/trials/<id>/completed.json`` when Tune ends a trial without an error: it
    ran to the end, or the scheduler (ASHA) stopped it. A trial cut short by an interrupted sweep has none."""
    tune = require_tune()

    class _CompletionRecorder(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            trial_dir = Path(out) / "trials" / trial.trial_id
            trial_dir.mkdir(parents=True, exist_ok=True)
            files.atomic_write_json(trial_dir / COMPLETED, {"trial": trial.trial_id,
                                                          "last_epoch": (trial.last_result or {}).get("epoch")})
    return _CompletionRecorder()


# -- the sweep ---------------------------------------------------------------------------------------------------
def _fingerprint(sweep: dict) -> str:
    keys = ("data", "base", "search", "samples", "metric", "mode", "max_epochs", "grace_period", "reduction_factor",
            "seed")
    return sha256_of_json({k: sweep[k] for k in keys})


def _read_history(run_dir: Path) -> list:
    import json
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def collect_trials(sweep: dict, result_grid) -> list:
    """One row per trial (in trial-id order): settings, best val_acc, epochs run, stopped by ASHA, error."""
    rows = []
    for result in result_grid:
        trial_id = Path(result.path).name
        trial_dir = Path(sweep["out"]) / "trials" / trial_id
        history = _read_history(trial_dir / RUN)
        vals = [h["val_acc"] for h in history if h.get("val_acc") is not None]
        best = max(vals) if vals else None
        best_epoch = next(h["epoch"] for h in history if h.get("val_acc") == best) if vals else None
        error = None if result.error is None else f"{type(result.error).__name__}: {result.error}".splitlines()[0]
        finished = read_json_or_none(trial_dir / FINISHED)
        completed = (trial_dir / COMPLETED).is_file()
        # ASHA also ends the trials that reach max_epochs (at that last report, before fit() returns).
        ran_all = finished is not None or len(history) >= sweep["max_epochs"]
        status = ("error" if error is not None else "finished" if ran_all else
                  "stopped by ASHA" if completed else "unfinished")
        params = dict(result.config or {}) or read_json_or_none(trial_dir / PARAMS)  # None: never started
        rows.append({"trial": trial_id, "params": strict_json(params),
                     "best_val_acc": best, "best_epoch": best_epoch, "epochs": len(history),
                     "stopped_by_asha": status == "stopped by ASHA",
                     "early_stopped": finished is not None and finished.get("status") == "early_stopped",
                     "status": status, "error": error, "trial_dir": str(trial_dir),
                     "run_dir": str(trial_dir / RUN)})
    rows.sort(key=lambda r: r["trial"])
    return rows


def select_best(trials: list):
    """Of the trials that ended without an error (ran to the end, or stopped by ASHA), the one with the highest
    best validation accuracy (ties: the first in trial order); None when there is none."""
    best = None
    for t in trials:
        eligible = t["status"] in ("finished", "stopped by ASHA") and t["best_val_acc"] is not None
        if eligible and (best is None or t["best_val_acc"] > best["best_val_acc"]):
            best = t
    return best


def evaluate_selected(sweep: dict, best: dict) -> dict | None:
    """The selected trial's best weights on the test split, evaluated once after selection (None: no test split)."""
    from ..data.prepare import eval_loader, load_datasets
    from ..runs import image_fit, load_run
    from ..training.config import TrainConfig
    from ..training.evaluation import evaluate
    cfg = TrainConfig.from_dict({**trial_settings(sweep["base"], best["params"]), "out": best["run_dir"]})
    model, meta = load_run(best["run_dir"], device=cfg.device)
    _, h, w = meta["input_size"]
    parts = load_datasets(cfg.data, image_size=(h, w), channels=meta["input_size"][0], val_ratio=cfg.val_ratio,
                          test_ratio=cfg.test_ratio, seed=cfg.seed, exclude=cfg.exclude, strict=cfg.strict,
                          fit=image_fit(meta), background_kinds=cfg.background_kinds == "split",
                          encounters=cfg.encounters)
    if parts.get("test") is None or len(parts["test"]) == 0:
        return None
    ev = evaluate(model, eval_loader(parts["test"], meta, device=cfg.device))
    return {"test_acc": float(ev["acc"]), "test_loss": float(ev["loss"]), "n": int(ev["n"]), "weights": "best"}


def _fmt(x, digits=4):
    return "–" if x is None else f"{x:.{digits}f}"


def _param_text(v):
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def format_markdown(report: dict) -> str:
    s = report["sweep"]
    keys = list(s["search"])
    lines = [f"# nabi sweep: {len(report['trials'])} trials",
             "",
             f"Data: `{s['data']}` · selection by **{s['metric']}** (validation split, {s['mode']}) · "
             f"ASHA: max {s['max_epochs']} epochs, grace period {s['grace_period']}, "
             f"reduction factor {s['reduction_factor']:g} · {report['stopped_by_asha']} trial(s) stopped early "
             "by ASHA",
             "",
             "| trial | " + " | ".join(keys) + " | best val_acc | best epoch | epochs | stopped by ASHA |",
             "|---" * (len(keys) + 5) + "|"]
    best_id = report["best"]["trial"] if report["best"] else None
    for t in report["trials"]:
        name = f"**{t['trial']}**" if t["trial"] == best_id else t["trial"]
        stop = {"stopped by ASHA": "yes", "finished": "no (early stopping)" if t["early_stopped"] else "no"}.get(
            t["status"], t["status"])
        params = t["params"] or {}
        lines.append(f"| {name} | " + " | ".join(_param_text(params.get(k, "–")) for k in keys) +
                     f" | {_fmt(t['best_val_acc'])} | {t['best_epoch'] or '–'} | {t['epochs']} | {stop} |")
    lines.append("")
    if report["best"]:
        b = report["best"]
        lines.append(f"Best trial by validation accuracy: **{b['trial']}** (val_acc {_fmt(b['best_val_acc'])} at "
                     f"epoch {b['best_epoch']}): " + ", ".join(f"{k} = {_param_text(v)}"
                                                               for k, v in b["params"].items()))
        lines.append(f"Run folder: `{b['run_dir']}`")
        t = report["selected_test"]
        lines.append("")
        if t is not None:
            lines.append(f"Test accuracy of the selected trial, evaluated once after selection (not used to "
                         f"choose): {_fmt(t['test_acc'])} on {t['n']} test images.")
        else:
            lines.append("The data has no test split: no test accuracy.")
    elif report["unfinished"]:
        lines.append(f"The sweep is not complete ({len(report['unfinished'])} trial(s) unfinished): no trial is "
                     "selected yet. Run the same command again (same out) to resume it.")
    else:
        lines.append("No trial reported a validation accuracy.")
    failed = [t for t in report["trials"] if t["error"]]
    if failed:
        lines += ["", f"Failed trials (see OUT/trials/<trial>/{TRIAL_LOG}): " +
                  "; ".join(f"{t['trial']}: {t['error']}" for t in failed)]
    return "\n".join(lines) + "\n"


def run_sweep(sweep: dict, cpus_per_trial=1, address=None, log=print) -> dict:
    """Run (or resume) the sweep ``load_config`` resolved; writes ``OUT/sweep.json`` and ``OUT/sweep.md``."""
    if isinstance(cpus_per_trial, bool) or not isinstance(cpus_per_trial, int) or cpus_per_trial < 1:
        raise ValueError(f"--cpus-per-trial must be an integer >= 1, got {cpus_per_trial!r}")
    tune = require_tune()
    import ray
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from .ray_executor import _connect, probe_address
    if address is not None:
        probe_address(address)
    out = Path(sweep["out"])
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(sweep)
    recorded = read_json_or_none(out / "sweep-config.json")
    tune_dir = out / TUNE_NAME
    if recorded is not None and recorded.get("fingerprint") != fingerprint:
        raise ValueError(f"{out} holds a sweep of other settings (from {recorded.get('source')}); give another "
                         "out, or delete that folder to start again")
    files.atomic_write_json(out / "sweep-config.json", strict_json({**sweep, "fingerprint": fingerprint}))
    started = _connect(ray, address, log)
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus_per_trial > cpus:
        if started:
            ray.shutdown()
        raise ValueError(f"--cpus-per-trial {cpus_per_trial}: the Ray instance has only {cpus:g} CPU(s), so no "
                         "trial could start")
    quiet = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"   # Tune's older console output, which verbose=0 silences
    try:
        context = {"base": sweep["base"], "out": sweep["out"], "cpus_per_trial": cpus_per_trial}
        trainable = tune.with_resources(tune.with_parameters(run_trial, sweep=context), {"cpu": cpus_per_trial})
        if tune.Tuner.can_restore(str(tune_dir)):
            log(f"resuming the sweep in {tune_dir}")
            tuner = tune.Tuner.restore(str(tune_dir), trainable, resume_unfinished=True, resume_errored=True)
        else:
            scheduler = ASHAScheduler(time_attr="epoch", metric=sweep["metric"], mode=sweep["mode"],
                                      max_t=sweep["max_epochs"], grace_period=sweep["grace_period"],
                                      reduction_factor=sweep["reduction_factor"])
            tuner = tune.Tuner(
                trainable, param_space=param_space(sweep["search"]),
                tune_config=tune.TuneConfig(num_samples=sweep["samples"], scheduler=scheduler,
                                            search_alg=BasicVariantGenerator(random_state=sweep["seed"]),
                                            trial_dirname_creator=_trial_dirname, reuse_actors=True),
                run_config=tune.RunConfig(name=TUNE_NAME, storage_path=str(out), verbose=0,
                                          log_to_file=True, callbacks=[completion_recorder(out)]))
        result_grid = tuner.fit()
    finally:
        if quiet is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = quiet
        if started:
            ray.shutdown()
    trials = collect_trials(sweep, result_grid)
    unfinished = [t["trial"] for t in trials if t["status"] == "unfinished"]
    # Selection only once every trial has ended; then the test split, once, for the selected trial alone.
    best = None if unfinished else select_best(trials)
    previous = read_json_or_none(out / "sweep.json") or {}
    if best is None:
        selected_test = None
    elif (previous.get("best") or {}).get("trial") == best["trial"] and previous.get("selected_test"):
        selected_test = previous["selected_test"]   # evaluated when this trial was first selected: not again
    else:
        selected_test = evaluate_selected(sweep, best)
    report = {"sweep": {k: sweep[k] for k in ("source", "data", "search", "samples", "metric", "mode", "max_epochs",
                                              "grace_period", "reduction_factor", "seed", "out")},
              "base": sweep["base"], "cpus_per_trial": cpus_per_trial,
              "complete": not unfinished, "unfinished": unfinished,
              "trials": trials, "stopped_by_asha": sum(t["stopped_by_asha"] for t in trials),
              "best": best,
              "selection": "highest best val_acc on the validation split among the trials that ended without an "
                           "error (ties: the first trial)",
              "selected_test": selected_test,
              "selected_test_note": "the selected trial's best weights evaluated once on the test split after "
                                    "selection; never used to choose"}
    report = strict_json(report)
    report["markdown"] = format_markdown(report)
    files.atomic_write_json(out / "sweep.json", {k: v for k, v in report.items() if k != "markdown"})
    files.atomic_write_text(out / "sweep.md", report["markdown"])
    report["files"] = {"json": str(out / "sweep.json"), "markdown": str(out / "sweep.md")}
    failed = [t for t in trials if t["status"] in ("error", "unfinished")]
    if failed:
        log(f"{len(failed)} trial(s) failed or unfinished; run the same command again to resume them")
    return report


# -- command line -------------------------------------------------------------------------------------------------
def add_arguments(parser):
    """Add ``nabi sweep``'s arguments to an argparse parser."""
    from ..training.flags import setting_keys_help
    parser.add_argument("config", help="the sweep's TOML file (data, [base], [search], samples, max_epochs, …); "
                                       "[base] and [search] take the training settings "
                                       f"{setting_keys_help(leave_out=_FIXED)} (`nabi train --help` describes each), "
                                       "[search] also model_args.NAME")
    parser.add_argument("--out", help="output folder (default: the config's out, else runs/sweep); the same "
                                      "folder again resumes the sweep")
    parser.add_argument("--cpus-per-trial", type=int, default=1, metavar="N",
                        help="CPUs each trial reserves and uses as threads (default: %(default)s)")
    parser.add_argument("--address", metavar="ADDR",
                        help="a running Ray cluster (host:port, ray://host:port or auto; default: start a local "
                             "Ray instance); OUT must be on a filesystem every node sees at the same path")
    parser.add_argument("--check", action="store_true", help="check the config; train nothing (default: off)")
    return parser


def main_from_args(args, log=print) -> int:
    """Run ``nabi sweep`` from parsed arguments; prints the report. Returns 0 (1 when a trial failed or the
    sweep was interrupted)."""
    sweep = load_config(args.config, out=args.out)
    if args.check:
        log(f"config OK: {len(sweep['search'])} searched setting(s), samples {sweep['samples']}, out {sweep['out']} "
            "(nothing trained)")
        return 0
    report = run_sweep(sweep, cpus_per_trial=args.cpus_per_trial, address=args.address, log=log)
    log(report["markdown"])
    log("written: " + ", ".join(report["files"].values()))
    return 1 if any(t["status"] in ("error", "unfinished") for t in report["trials"]) else 0
