"""Extensions of the trainer: everything a run does around its steps, each a small object with a trigger.

The trainer (``nabi.training.trainer``) only loops: batches through the updater, an end-of-epoch
row of the epoch's sums. At three moments it offers itself to its extensions — after every
update (``"iteration"``), after every epoch's row (``"epoch"``) and once when the run ends
(``"end"``, finished or stopped early) — and each extension whose ``trigger`` fires is called with
the trainer, highest ``priority`` first. At the epoch moment ``trainer.history[-1]`` is the epoch's
row, which extensions of higher priority are still filling in for the ones below them.

    extension          trigger                         priority  does
    LearningRateSchedule  every iteration or epoch     900   schedule.step()
    ProgressBar        every iteration                 800   the bar (tqdm on a terminal, lines in a log)
    Validation         every epoch                     800   val_loss, val_acc (val_top5) into the row
    BestModel          every epoch                     700   best_acc into the row; best.safetensors
    MetricsLog         every epoch                     600   metrics.jsonl, rewritten whole from the history
    Curves             every epoch                     590   curves.png
    PrintRow           every epoch                     500   the row as one line of the log
    EarlyStopping      every epoch                     400   stop after N epochs without a better score
    Checkpoints        every N iterations, every epoch, at the end
                                                       100   checkpoints/; at the end model.safetensors
    StopOnSignal       every iteration                   0   Ctrl-C / SIGTERM: save, then stop

Add one from outside with ``trainer.extend(extension)``; ``trainer.extensions`` maps names to
them (``del trainer.extensions["curves"]`` leaves the plot out). An extension may also define
``initialize`` (the run starts, after any resume), ``before_epoch`` (an epoch's batches start, at
``trainer.batch_in_epoch`` on a resume) and ``finalize`` (the run ends, by an error too: release
what ``initialize`` took); and keep state in every checkpoint: ``state_dict`` returns entries of
the checkpoint's ``state.json`` (top-level keys; two parts may not claim the same one) and
``load_state_dict`` reads them back, so a resumed run continues exactly.
"""
from __future__ import annotations

import json
import signal
import threading

from .. import files
from .checkpoint import latest_checkpoint, prune_checkpoints, save_checkpoint
from .evaluation import evaluate
from .faults import fault_point

PRIORITY_EDITOR = 800     # fills in the epoch's row
PRIORITY_WRITER = 600     # writes the row out
PRIORITY_READER = 400     # decides from the row
PRIORITY_CHECKPOINT = 100  # saves the state once everything above has changed it


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM: the state was saved at a step boundary."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a file-size limit); the previous one is intact."""


class Trigger:
    """When an extension runs: every ``iterations`` optimiser steps, every ``epochs`` epochs, and/or once
    at the end of the run (``end``). ``Trigger(iterations=500, epochs=1)`` fires at both moments."""

    def __init__(self, iterations=None, epochs=None, end=False):
        self.iterations, self.epochs, self.end = iterations, epochs, bool(end)

    def __call__(self, trainer) -> bool:
        moment = trainer.moment
        if moment == "iteration":
            return bool(self.iterations) and trainer.iteration % self.iterations == 0
        if moment == "epoch":
            return bool(self.epochs) and trainer.epoch % self.epochs == 0
        return self.end and moment == "end"

    def __repr__(self):
        return f"Trigger(iterations={self.iterations}, epochs={self.epochs}, end={self.end})"


class Extension:
    """Something a run does at its ``trigger``'s moments (see the module docstring)."""

    name = "extension"
    trigger = Trigger(epochs=1)
    priority = PRIORITY_READER

    def __call__(self, trainer) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def initialize(self, trainer) -> None:
        pass

    def before_epoch(self, trainer) -> None:
        pass

    def finalize(self, trainer) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state) -> None:
        pass

    def resume_differences(self, path, state) -> list:
        """``[(flag, saved, new)]``: settings a resumed run must share with the checkpoint (none here)."""
        return []

    def __repr__(self):
        return f"{type(self).__name__}(trigger={self.trigger!r}, priority={self.priority})"


def save_run_weights(trainer, name, extra=None, same_as=()):
    """``out_dir/<name>.safetensors`` with the run's metadata (+ ``extra``) in its sidecar; a hard link to
    one of ``same_as`` when that file holds the same bytes (``nabi.files.save_weights``)."""
    meta = dict(trainer.metadata)
    meta.update(extra or {})
    path = trainer.out_dir / f"{name}.safetensors"
    files.save_weights(path, trainer.model_state(), meta, same_as=same_as)
    return path


# -- the row of each epoch -----------------------------------------------------------------------------
class LearningRateSchedule(Extension):
    """``schedule.step()`` after every optimiser step (``unit='iteration'``) or every epoch (``'epoch'``)."""

    name = "schedule"
    priority = 900

    def __init__(self, schedule, unit="iteration"):
        if unit not in ("iteration", "epoch"):
            raise ValueError(f"schedule_unit must be 'iteration' or 'epoch', got {unit!r}")
        self.schedule, self.unit = schedule, unit
        self.trigger = Trigger(iterations=1) if unit == "iteration" else Trigger(epochs=1)

    def __call__(self, trainer):
        self.schedule.step()

    def state_dict(self):
        return {"schedule": self.schedule.state_dict()}

    def load_state_dict(self, state):
        if state.get("schedule"):
            self.schedule.load_state_dict(state["schedule"])


class Validation(Extension):
    """``val_loss``, ``val_acc`` and, with more than five classes, ``val_top{topk}`` of ``loader`` into the
    epoch's row (the trainer's loss function, the model in eval mode)."""

    name = "validation"
    priority = PRIORITY_EDITOR

    def __init__(self, loader, topk=5):
        self.loader, self.topk = loader, topk

    def __call__(self, trainer):
        row = trainer.history[-1]
        ev = evaluate(trainer.model, self.loader, trainer.loss_fn, topk=self.topk)
        row.update(val_loss=ev["loss"], val_acc=ev["acc"])
        classes = trainer.metadata.get("classes")
        if classes and len(classes) > 5:
            row[f"val_top{self.topk}"] = ev["topk"]
        fault_point("validated")


class BestModel(Extension):
    """The best score so far (``val_acc``, or ``train_acc`` without validation), the epoch it came from and
    the epochs since; ``best_acc`` into every row. With validation and a run folder, the best weights go
    to ``best.safetensors`` (without validation no best is chosen: accuracy under augmentation says little)."""

    name = "best"
    priority = 700

    def __init__(self):
        self.best_acc, self.best_epoch, self.epochs_without_improvement = -1.0, None, 0

    def __call__(self, trainer):
        row = trainer.history[-1]
        score = row.get("val_acc", row["train_acc"])
        if score > self.best_acc:
            self.best_acc, self.best_epoch = score, trainer.epoch
            self.epochs_without_improvement = 0
            if "val_acc" in row and trainer.out_dir is not None and getattr(trainer, "writes_files", True):
                latest = latest_checkpoint(trainer.out_dir)
                save_run_weights(trainer, "best", {"best_epoch": trainer.epoch, "best_acc": score,
                                                   "chosen_by": "validation accuracy"},
                                 same_as=[latest / "model.safetensors"] if latest else ())
                fault_point("best_saved")
        else:
            self.epochs_without_improvement += 1
        row["best_acc"] = self.best_acc

    def state_dict(self):
        return {"best_acc": self.best_acc, "best_epoch": self.best_epoch,
                "epochs_without_improvement": self.epochs_without_improvement}

    def load_state_dict(self, state):
        self.best_acc, self.best_epoch = float(state["best_acc"]), state["best_epoch"]
        self.epochs_without_improvement = int(state["epochs_without_improvement"])


class MetricsLog(Extension):
    """``metrics.jsonl``: one JSON object per epoch, the whole history rewritten atomically each time (so a
    resumed run's file is the uninterrupted run's, whatever was cut off)."""

    name = "metrics"
    priority = PRIORITY_WRITER

    def __call__(self, trainer):
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in trainer.history)
        files.atomic_write_text(trainer.out_dir / "metrics.jsonl", lines)
        fault_point("metrics_written")


class Curves(Extension):
    """``curves.png``: loss and accuracy per epoch (skipped without matplotlib; the log has every number)."""

    name = "curves"
    priority = PRIORITY_WRITER - 10

    def __call__(self, trainer):
        try:
            from ..plots import plot_curves
            plot_curves(trainer.history, trainer.out_dir / "curves.png")
        except ImportError:
            pass


class PrintRow(Extension):
    """The epoch's row as one line of the log: ``epoch 3 · loss 0.4120 · acc 0.8810 · val_acc ... · 950 img/s``."""

    name = "log"
    priority = PRIORITY_WRITER - 100

    def __call__(self, trainer):
        trainer.log(format_row(trainer.history[-1]))


class EarlyStopping(Extension):
    """Stop after ``patience`` epochs without a better score (as ``BestModel`` counts them)."""

    name = "early_stopping"
    priority = PRIORITY_READER

    def __init__(self, patience):
        self.patience = int(patience)

    def __call__(self, trainer):
        best = trainer.extensions.get("best")
        if best is None:
            raise ValueError("early stopping needs the trainer's BestModel extension (named 'best')")
        if best.epochs_without_improvement >= self.patience:
            trainer.status = "early_stopped"
            trainer.log(f"early stopping: no better accuracy for {self.patience} epochs "
                        f"(best {best.best_acc:.4f} at epoch {best.best_epoch})")


# -- the files of a run -------------------------------------------------------------------------------------
class Checkpoints(Extension):
    """``checkpoints/ckpt-<iteration>/`` (``nabi.training.checkpoint``) every ``every`` iterations and at
    every epoch's end; at the end of the run a last one and ``model.safetensors``, the final weights.

    ``keep_last``: the checkpoints a finished run keeps (the newest ones). While it runs, at least two are
    kept, so that a damaged newest one still leaves one to resume from. Weight files with the same bytes
    are one file: the final weights, the last checkpoint's and, when the last epoch was the best,
    ``best.safetensors`` are hard links to one copy (a copy each where the file system has no links).
    """

    name = "checkpoints"
    priority = PRIORITY_CHECKPOINT

    def __init__(self, every=None, keep_last=1):
        if keep_last is None or int(keep_last) < 1:
            raise ValueError(f"keep_last must be at least 1 (the newest checkpoint), got {keep_last}")
        self.every, self.keep_last = every, int(keep_last)
        self.trigger = Trigger(iterations=every, epochs=1, end=True)

    def __call__(self, trainer):
        if trainer.moment == "end":
            self.save(trainer)
            fault_point("final_weights")
            latest = latest_checkpoint(trainer.out_dir)
            save_run_weights(trainer, "model", {"status": trainer.status, "epochs_trained": trainer.epoch,
                                                "iterations": trainer.iteration},
                             same_as=[latest / "model.safetensors", trainer.out_dir / "best.safetensors"])
            prune_checkpoints(trainer.out_dir, keep=self.keep_last)
            return
        self.save(trainer)
        if trainer.moment == "epoch":
            fault_point("epoch_saved")

    def save(self, trainer):
        """Write a checkpoint of the trainer's state now; returns its folder."""
        out = trainer.out_dir
        try:
            return save_checkpoint(out, trainer.model_state(), trainer.optimizer, trainer.checkpoint_state(),
                                   trainer.metadata, keep_last=max(self.keep_last, 2),
                                   same_as=[out / "best.safetensors"])
        except OSError as e:
            previous = latest_checkpoint(out)
            raise CheckpointWriteError(
                f"could not write the checkpoint of iteration {trainer.iteration} in {out / 'checkpoints'}: "
                f"{e.strerror or e}" + (f" ({e.filename})" if e.filename else "") + ". Nothing of it was kept; "
                + (f"the previous checkpoint {previous} is intact: free some space and continue with --resume"
                   if previous else "there is no earlier checkpoint: free some space and start again")) from e


# -- the person watching -----------------------------------------------------------------------------------
class ProgressBar(Extension):
    """Each epoch's bar (``nabi.training.progress``): loss, accuracy, images/s and the learning rate so far."""

    name = "progress"
    priority = PRIORITY_EDITOR
    trigger = Trigger(iterations=1)

    def __init__(self, progress=None):
        from .progress import Progress
        self.progress = progress if progress is not None else Progress(enabled=True)
        self.bar = None

    def before_epoch(self, trainer):
        self.bar = self.progress.epoch(len(trainer.train_loader), trainer.batch_in_epoch,
                                       f"epoch {trainer.epoch + 1}/{trainer.epochs}")

    def __call__(self, trainer):
        if self.bar is None:
            return
        s = trainer.epoch_sums
        n = max(s["n"], 1)
        self.bar.update(1, loss=f"{s['loss'] / n:.4f}", acc=f"{s['correct'] / n:.3f}",
                        img_s=f"{s['n'] / max(s['time'], 1e-9):.0f}", lr=f"{trainer.optimizer.lr:.3g}")
        if trainer.epoch_batches_done():
            self._close()

    def _close(self):
        if self.bar is not None:
            bar, self.bar = self.bar, None
            bar.close()

    def finalize(self, trainer):
        self._close()


class StopOnSignal(Extension):
    """Ctrl-C (SIGINT) or SIGTERM become a flag checked after each step (never half an update): the step
    finishes, a checkpoint is saved and ``TrainingInterrupted`` says how to continue. A second Ctrl-C stops
    at once. Only in the main thread (signals cannot be caught elsewhere)."""

    name = "signals"
    priority = 0
    trigger = Trigger(iterations=1)

    def __init__(self):
        self.signal = None
        self._old = {}

    def initialize(self, trainer):
        self.signal = None
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __call__(self, trainer):
        if self.signal is None:
            return
        trainer.status = "interrupted"
        path = trainer.save_checkpoint()
        raise TrainingInterrupted(f"stopped by signal {self.signal} at epoch {trainer.epoch + 1}, "
                                  f"iteration {trainer.iteration}; state saved to {path}; continue with --resume")

    def finalize(self, trainer):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def format_row(row):
    parts = [f"epoch {row['epoch']}", f"loss {row['train_loss']:.4f}", f"acc {row['train_acc']:.4f}"]
    if "val_acc" in row:
        parts += [f"val_loss {row['val_loss']:.4f}", f"val_acc {row['val_acc']:.4f}"]
    for k, v in row.items():
        if k.startswith("val_top"):
            parts.append(f"{k} {v:.4f}")
    parts.append(f"{row['train_images_per_s']:.0f} img/s")
    return " · ".join(parts)
