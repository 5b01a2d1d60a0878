"""The trainer: the loop of a training run — batches through an updater, a row of figures per epoch —
and extensions that do everything else.

    trainer = Trainer(model, optimizer, train_loader, val_loader, epochs=10, out_dir="runs/x")
    trainer.extend(MyExtension())          # anything more, at its own trigger
    history = trainer.fit()                # one dict per epoch

The loop itself, per batch: ``updater.update(x, y)`` (``nabi.training.updater``: forward, loss,
backward, the optimiser's step; mixed precision, fused SGD and GoogLeNet's auxiliary heads live
there), whose batch sums are added to the epoch's; then the extensions of the ``"iteration"``
moment. Per epoch: a row (epoch, iteration, lr, train loss and accuracy, images/s, time, and the
updater's own columns) appended to ``history``; then the extensions of the ``"epoch"`` moment;
at the end, those of ``"end"``. What the standard ones do — the schedule, validation, the best
model, ``metrics.jsonl``, ``curves.png``, early stopping, checkpoints and ``model.safetensors``,
Ctrl-C, the progress bar — and how to write one: ``nabi.training.extensions``. The keyword
arguments of ``Trainer`` add the standard ones; a strategy that trains differently passes its
updater class (``updater=``).

Resuming is exact at every point, the end of an epoch included. The end-of-epoch
work (validation, the schedule's epoch step, the best model, the metrics row, the
end-of-epoch checkpoint) is one unit: a checkpoint taken after an epoch's last
batch but before that work records ``end_of_epoch: "pending"`` and a resumed run
does the whole unit, without training another batch; the end-of-epoch checkpoint
records ``"done"``. Every part is redone from the checkpoint's state and gives the
same result again (validation is deterministic; ``best.safetensors`` is rewritten
with the same bits; ``metrics.jsonl`` is rewritten whole from the history), so a
kill between any two of them loses nothing. A checkpoint's ``state.json`` holds the
loop's counters, the epoch's running sums, the history, the data loader's position,
every random generator's state, and each part's own entries (the updater's, every
extension's ``state_dict``).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from .. import backend
from .. import files
from .checkpoint import checkpoints, latest_checkpoint, load_checkpoint
from .evaluation import evaluate  # noqa: F401  (evaluate's home is nabi.training.evaluation)
from .extensions import (BestModel, CheckpointWriteError, Checkpoints, Curves, EarlyStopping,  # noqa: F401
                         LearningRateSchedule, MetricsLog, PrintRow, ProgressBar, StopOnSignal,
                         TrainingInterrupted, Validation)
from .faults import fault_point
from ..layers import DropPath, Dropout
from .progress import Progress
from .updater import AUX_LOSS_WEIGHT, NonFiniteLoss, StandardUpdater  # noqa: F401
from .updater import enable_fused_sgd, skip_input_gradient  # noqa: F401  (their home is nabi.training.updater)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _mask_layer_key(name, m):
    """The checkpoint key of a random-mask layer's generator state, or None for other modules."""
    if isinstance(m, Dropout):
        return f"dropout:{name}"
    if isinstance(m, DropPath):
        return f"drop_path:{name}"
    return None


def _rng_states(model):
    states = {"nabi_global": backend.rng_state(backend.get_rng())}
    for name, m in model.named_modules():
        key = _mask_layer_key(name, m)
        if key is not None:
            states[key] = backend.rng_state(m.rng)
    return states


def _set_rng_states(model, states):
    if "nabi_global" in states:
        backend.set_rng_state(backend.get_rng(), states["nabi_global"])
    for name, m in model.named_modules():
        key = _mask_layer_key(name, m)
        if key is not None and key in states:
            backend.set_rng_state(m.rng, states[key])
            object.__setattr__(m, "_cupy_rng", None)


def _fresh_sums():
    return {"loss": 0.0, "correct": 0, "n": 0, "time": 0.0}


class Trainer:
    """Train ``model`` on ``train_loader`` (batches ``(x (N, C, H, W), y (N,))``).

    ``epochs`` (or ``iterations``) bound the run. The other keywords add the standard extensions
    (``nabi.training.extensions``): ``schedule`` stepped per ``schedule_unit`` (``'iteration'`` or
    ``'epoch'``); ``val_loader`` validated each epoch (``topk``); the best model; with ``out_dir``,
    ``metrics.jsonl``, ``curves.png``, ``checkpoints/`` (also every ``checkpoint_every`` iterations;
    ``keep_last`` kept once the run ends), ``model.safetensors`` and, with a validation loader,
    ``best.safetensors`` (each with a JSON sidecar carrying ``metadata``); ``early_stopping``: stop after
    that many epochs without a better validation accuracy; ``progress``: the bar; Ctrl-C handling.
    ``extensions``: more of them.

    The step is the ``updater``'s: ``updater(model, optimizer, loss_fn=..., clip_norm=..., fused_sgd=...,
    precision=...)`` builds it (default ``StandardUpdater``; ``nabi.training.updater``): ``fused_sgd``
    applies plain SGD inside each layer's backward; ``precision='float16'`` trains in mixed precision
    (float32 masters, dynamic loss scaling; saved weights and checkpoints hold the float32 masters).

    ``replicas``: this process's ``nabi.training.replicas.Replicas`` in a data-parallel run (``train_loader``
    yields its shard of each batch): the gradients and the step's sums are summed over the replicas, and
    only replica 0 writes files or shows progress (the others read the run folder to resume).
    """

    def __init__(self, model, optimizer, train_loader, val_loader=None, loss_fn=None, schedule=None,
                 schedule_unit="iteration", epochs=1, iterations=None, out_dir=None, clip_norm=None,
                 checkpoint_every=None, keep_last=1, early_stopping=None, progress=True, metadata=None,
                 config=None, log=print, topk=5, fused_sgd=False, precision="float32", updater=None,
                 extensions=(), replicas=None):
        if schedule_unit not in ("iteration", "epoch"):
            raise ValueError(f"schedule_unit must be 'iteration' or 'epoch', got {schedule_unit!r}")
        if epochs is None and iterations is None:
            raise ValueError("give epochs or iterations")
        self.model, self.optimizer = model, optimizer
        self.train_loader, self.val_loader = train_loader, val_loader
        self.epochs = int(epochs) if epochs is not None else math.ceil(iterations / len(train_loader))
        self.max_iterations = int(iterations) if iterations is not None else None
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.metadata = dict(metadata or {})
        self.config = dict(config or {})
        self.log = log or (lambda *a, **k: None)
        # counters and history
        self.epoch = 0              # completed epochs
        self.iteration = 0          # completed optimiser steps
        self.batch_in_epoch = 0     # completed batches of the current epoch
        self.history = []
        self.epoch_sums = _fresh_sums()
        self.status = "new"
        self.moment = None          # "iteration", "epoch" or "end" while extensions run
        self.updater = (updater or StandardUpdater)(model, optimizer, loss_fn=loss_fn, clip_norm=clip_norm,
                                                    fused_sgd=fused_sgd, precision=precision)
        self.updater.attach(self)
        self.replicas = replicas
        self.updater.replicas = replicas
        self.writes_files = replicas is None or replicas.rank == 0
        if replicas is not None:
            replicas.loader = train_loader
        self.extensions = {}
        self._order = None          # the extensions in firing order, while fit runs
        writes = self.out_dir is not None and self.writes_files
        if writes:
            self._check_writable(self.out_dir)
        standard = [LearningRateSchedule(schedule, schedule_unit) if schedule is not None else None,
                    ProgressBar(Progress(enabled=True)) if progress and self.writes_files else None,
                    Validation(val_loader, topk) if val_loader is not None else None,
                    BestModel(),
                    MetricsLog() if writes else None,
                    Curves() if writes else None,
                    PrintRow(),
                    EarlyStopping(early_stopping) if early_stopping else None,
                    Checkpoints(checkpoint_every, keep_last) if writes else None,
                    StopOnSignal()]
        for ext in [e for e in standard if e is not None] + list(extensions):
            self.extend(ext)

    def extend(self, extension):
        """Add ``extension`` (``nabi.training.extensions.Extension``); its ``name`` must be new here."""
        name = extension.name
        if name in self.extensions:
            raise ValueError(f"the trainer already has an extension named {name!r} "
                             f"({type(self.extensions[name]).__name__}); give the new one another name")
        self.extensions[name] = extension
        return extension

    # -- what other parts read ---------------------------------------------------------------------------
    @property
    def loss_fn(self):
        return self.updater.loss_fn

    @loss_fn.setter
    def loss_fn(self, value):
        self.updater.loss_fn = value

    @property
    def amp(self):
        """The mixed-precision state (``nabi.training.amp.MixedPrecision``), or None in float32."""
        return self.updater.amp

    @property
    def fused_layers(self):
        return self.updater.fused_layers

    @property
    def best_acc(self):
        best = self.extensions.get("best")
        return best.best_acc if best is not None else None

    @property
    def best_epoch(self):
        best = self.extensions.get("best")
        return best.best_epoch if best is not None else None

    def model_state(self):
        """The weights to save: the model's, or the float32 masters under mixed precision."""
        return self.updater.model_state()

    # -- files -------------------------------------------------------------------------
    @staticmethod
    def _check_writable(path: Path):
        try:
            files.ensure_writable_folder(path)
        except OSError as e:
            raise PermissionError(f"output folder {path} cannot be written: {e.strerror or e}") from None

    def checkpoint_state(self) -> dict:
        """The checkpoint's ``state.json``: the loop's entries and every part's own."""
        state = {
            "epoch": self.epoch, "iteration": self.iteration, "batch_in_epoch": self.batch_in_epoch,
            "epoch_sums": self.epoch_sums, "history": self.history,
            "loader": self.train_loader.state_dict() if hasattr(self.train_loader, "state_dict") else None,
            "rng": _rng_states(self.model), "config": self.config, "status": self.status,
            "nabi_version": self.metadata.get("nabi_version"),
            "end_of_epoch": "pending" if self._batches_done() else "done",
        }
        for owner, part in [("the updater", self.updater)] + [(f"extension {n!r}", e) for n, e in
                                                               self.extensions.items()]:
            entries = part.state_dict()
            taken = sorted(set(entries) & set(state))
            if taken:
                raise ValueError(f"{owner} keeps {', '.join(taken)} in the checkpoint, which another part "
                                 f"already keeps; rename its entries")
            state.update(entries)
        return state

    def save_checkpoint(self):
        """Write a checkpoint now (with a run folder); returns its folder, or None."""
        ext = self.extensions.get("checkpoints")
        return ext.save(self) if ext is not None and self.out_dir is not None else None

    def resume(self, path=None):
        """Load the latest checkpoint of ``out_dir`` (or ``path``); returns its path, or None if there is none.

        A damaged newest checkpoint (a file cut short, a checksum that does not match) is
        reported and the previous one is used; if none can be read, the error names each."""
        if path is not None:
            return self._resume_from(Path(path), load_checkpoint(path))
        candidates = checkpoints(self.out_dir) if self.out_dir else []
        if not candidates:
            return None
        problems = []
        for candidate in candidates:
            try:
                ck = load_checkpoint(candidate)
            except (OSError, ValueError, KeyError) as e:
                problems.append(f"{candidate}: {e}")
                self.log(f"checkpoint {candidate} cannot be read ({e}); trying the previous one")
                continue
            if problems:
                self.log(f"resuming from {candidate}, the newest checkpoint that reads back whole "
                         f"({len(problems)} newer one(s) damaged)")
            return self._resume_from(candidate, ck)
        raise ValueError(f"no checkpoint of {self.out_dir} can be read: " + "; ".join(problems)
                         + ". Start the run again with --overwrite")

    def _check_resumable(self, path, ck) -> None:
        arch_saved = ck["model_metadata"].get("arch")
        arch_now = self.metadata.get("arch")
        if arch_saved and arch_now and arch_saved != arch_now:
            raise ValueError(f"checkpoint {path} is of architecture {arch_saved}, but this run builds {arch_now}")
        st = ck["state"]
        differences = fine_tuning_differences(st.get("config") or {}, self.config)
        for part in [self.updater, *self.extensions.values()]:
            differences += part.resume_differences(path, st)
        _refuse_other_settings(path, differences)

    def _resume_from(self, path, ck):
        self._check_resumable(path, ck)
        self.updater.load_model_state(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        st = ck["state"]
        self.epoch, self.iteration = int(st["epoch"]), int(st["iteration"])
        self.batch_in_epoch = int(st["batch_in_epoch"])
        self.epoch_sums = dict(st["epoch_sums"])
        self.history = list(st["history"])
        if st.get("loader") and hasattr(self.train_loader, "load_state_dict"):
            self.train_loader.load_state_dict(st["loader"])
        _set_rng_states(self.model, st.get("rng", {}))
        self.updater.load_state_dict(st)
        for ext in self.extensions.values():
            ext.load_state_dict(st)
        if st.get("status") in ("early_stopped", "finished"):
            self.status = st["status"]
        if self._batches_done():
            where = (f"after epoch {self.epoch + 1}'s last batch, iteration {self.iteration}; its end-of-epoch "
                     f"work (validation, metrics, best model, checkpoint) is done next")
        elif self.batch_in_epoch:
            where = f"epoch {self.epoch + 1}, batch {self.batch_in_epoch} of {len(self.train_loader)}, " \
                    f"iteration {self.iteration}"
        else:
            where = f"after epoch {self.epoch}, iteration {self.iteration}"
        self.log(f"resumed from {path} ({where})")
        return path

    # -- the loop --------------------------------------------------------------------------
    def _done(self):
        if self.max_iterations is not None and self.iteration >= self.max_iterations:
            return True
        return self.epoch >= self.epochs

    def _batches_done(self):
        """The current epoch's batches are all trained (or the iteration budget is spent inside it),
        but its end-of-epoch work is not done yet."""
        if self.batch_in_epoch == 0:
            return False
        if self.batch_in_epoch >= len(self.train_loader):
            return True
        return self.max_iterations is not None and self.iteration >= self.max_iterations

    def epoch_batches_done(self) -> bool:
        """True once the current epoch's batches are all trained (its end-of-epoch work comes next)."""
        return self._batches_done()

    def _in_order(self):
        """The extensions, highest priority first (in the order they were added among equals)."""
        return sorted(self.extensions.values(), key=lambda e: -e.priority)

    def _fire(self, moment):
        self.moment = moment
        try:
            for ext in self._order if self._order is not None else self._in_order():
                if ext.trigger(self):
                    ext(self)
        finally:
            self.moment = None

    def fit(self):
        """Run to the end (or to early stopping); returns the history (one dict per epoch)."""
        backend.keep_freed_memory()                 # steps reuse the memory the last one freed (see there)
        self.model.train()
        if self.status != "early_stopped":
            self.status = "running"
        self._order = order = self._in_order()      # extensions added during the run wait for the next fit
        started = []
        try:
            for ext in order:
                ext.initialize(self)
                started.append(ext)
            while self.status != "early_stopped":
                if not self._batches_done():
                    if self._done():
                        break
                    self._run_epoch()
                if self._batches_done():
                    self._end_epoch()
            if self.status in ("running", "finished"):
                self.status = "finished"
            self._fire("end")
        finally:
            for ext in reversed(started):
                ext.finalize(self)
            self._order = None
        return self.history

    def _run_epoch(self):
        for ext in self._order if self._order is not None else self._in_order():
            ext.before_epoch(self)
        sums = self.epoch_sums
        t0 = time.perf_counter()
        for x, y in self.train_loader:
            self._step(x, y, sums)
            now = time.perf_counter()
            sums["time"] += now - t0
            t0 = now
            self._fire("iteration")
            if self.max_iterations is not None and self.iteration >= self.max_iterations:
                break

    def _step(self, x, y, sums):
        replicas = self.replicas
        if replicas is not None:
            replicas.before_step()
        try:
            batch = self.updater.update(x, y)
        except NonFiniteLoss as e:
            ck = latest_checkpoint(self.out_dir) if self.out_dir else None
            self.status = "diverged"
            raise TrainingDiverged(
                f"the loss became {e.loss} at epoch {self.epoch + 1}, iteration {self.iteration + 1}; training "
                f"stopped without saving this state. Last good checkpoint: {ck or 'none'}. Lower the learning "
                f"rate (now {self.optimizer.lr:.3g}), add gradient clipping (--clip-norm), or check the input "
                f"data" + e.hint) from None
        if replicas is not None:
            replicas.after_step()
            batch = replicas.sum_batch(batch)
        self.iteration += 1
        self.batch_in_epoch += 1
        for key, value in batch.items():
            sums[key] = sums.get(key, 0) + value
        fault_point("step")

    def _end_epoch(self):
        sums = self.epoch_sums
        row = {"epoch": self.epoch + 1, "iteration": self.iteration, "lr": self.optimizer.lr,
               "train_loss": sums["loss"] / max(sums["n"], 1), "train_acc": sums["correct"] / max(sums["n"], 1),
               "train_images_per_s": sums["n"] / max(sums["time"], 1e-9), "epoch_time_s": sums["time"]}
        row.update(self.updater.epoch_columns(sums))
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_sums = _fresh_sums()
        self.history.append(row)
        self._fire("epoch")


FINE_TUNING_DEFAULTS = {"freeze_until": None, "layer_lr_decay": 1.0}
"""The fine-tuning settings a resumed run must share with its checkpoint, and their values when not recorded."""
FINE_TUNING_FLAGS = {"freeze_until": "--freeze-until", "layer_lr_decay": "--layer-lr-decay"}


def fine_tuning_differences(saved: dict, now: dict) -> list:
    """``[(flag, saved value, new value)]`` for each fine-tuning setting (``--freeze-until``,
    ``--layer-lr-decay``) in which the saved run configuration ``saved`` and this run's ``now`` differ."""
    out = []
    for key, default in FINE_TUNING_DEFAULTS.items():
        a, b = saved.get(key, default), now.get(key, default)
        if a != b:
            out.append((FINE_TUNING_FLAGS[key], a, b))
    return out


def _refuse_other_settings(path, differences) -> None:
    """``ValueError`` listing every ``(flag, saved, new)`` in ``differences``: continuing the checkpoint
    ``path`` with other settings would change the training."""
    if not differences:
        return
    shown = lambda v: "none" if v is None else f"{v:g}" if isinstance(v, float) else str(v)
    listed = "; ".join(f"{flag}: {shown(a)} in the checkpoint, {shown(b)} now" for flag, a, b in differences)
    raise ValueError(f"checkpoint {path} was trained with other settings than this run gives ({listed}): "
                     f"resume with the run's own settings (its config.json records them)")


