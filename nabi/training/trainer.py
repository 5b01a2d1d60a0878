"""The trainer: epochs of forward, loss, backward and update, with everything a long run needs.

Per iteration: ``logits = model(x)``; ``loss = loss_fn(logits, y)``; a NaN/Inf
guard; ``model.zero_grad()``; ``model.backward(loss_fn.backward())``; optional
gradient clipping by norm; ``optimizer.step()``; the schedule steps (per
iteration or per epoch). Per epoch: train and validation loss and accuracy
(top-5 with more than 5 classes), a JSON-lines log, a training-curve PNG, the
best model kept, early stopping, and a checkpoint. Checkpoints also go out every
``checkpoint_every`` iterations, so a killed run resumes mid-epoch; Ctrl-C
finishes the current step, saves and stops cleanly.

Resuming is exact at every point, the end of an epoch included. The end-of-epoch
work (validation, the schedule's epoch step, the best model, the metrics row, the
end-of-epoch checkpoint) is one unit: a checkpoint taken after an epoch's last
batch but before that work records ``end_of_epoch: "pending"`` and a resumed run
does the whole unit, without training another batch; the end-of-epoch checkpoint
records ``"done"``. Every part is redone from the checkpoint's state and gives the
same result again (validation is deterministic; ``best.safetensors`` is rewritten
with the same bits; ``metrics.jsonl`` is rewritten whole from the history), so a
kill between any two of them loses nothing. Without a validation set no "best"
model is chosen (training accuracy under augmentation says little): the final
weights are the run's weights.
"""
from __future__ import annotations

import json
import math
import signal
import threading
import time
from pathlib import Path

import numpy as np

from .. import backend
from .. import files
from .checkpoint import checkpoints, latest_checkpoint, load_checkpoint, save_checkpoint
from .faults import fault_point
from ..layers import CrossEntropyLoss, DropPath, Dropout
from .amp import MixedPrecision, check_precision
from .optim import clip_grad_norm
from .progress import Progress


AUX_LOSS_WEIGHT = 0.3
"""Weight of each auxiliary classifier's loss (GoogLeNet, as in the paper): L = L_main + 0.3·(L_aux1 + L_aux2)."""


def _count_correct(logits, y) -> int:
    """Σ [argmax logits = y], compared where the arrays live: on the GPU only the count crosses to the host."""
    if backend.get_array_module(logits) is backend.get_array_module(y):
        return int((logits.argmax(axis=1) == y).sum())
    return int((backend.to_numpy(logits.argmax(axis=1)) == backend.to_numpy(y)).sum())


class _Weights:
    """What ``save_checkpoint`` needs of a model: its ``state_dict``."""

    def __init__(self, state):
        self._state = state

    def state_dict(self):
        return self._state


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a file-size limit); the previous one is intact."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM: the state was saved at a step boundary."""


def evaluate(model, loader, loss_fn=None, topk=5, return_outputs=False):
    """Loss, accuracy and top-k accuracy of ``model`` (in eval mode) over ``loader``.

    Returns ``{'loss', 'acc', 'topk', 'n'}`` and, with ``return_outputs``, also
    ``'probs'`` (N, K) and ``'labels'`` (N,) as NumPy arrays.
    """
    from ..functional.activation import softmax
    loss_fn = loss_fn or CrossEntropyLoss()
    was_training = model.training
    model.eval()
    total_loss = correct = correct_k = n = 0
    probs, labels = [], []
    try:
        for x, y in loader:
            logits = model(x)
            bs = int(y.shape[0])
            total_loss += loss_fn(logits, y) * bs
            p = backend.to_numpy(softmax(logits, axis=1))
            t = backend.to_numpy(y)
            correct += int((p.argmax(1) == t).sum())
            k = min(topk, p.shape[1])
            top = np.argsort(-p, axis=1, kind="stable")[:, :k]
            correct_k += int((top == t[:, None]).any(1).sum())
            n += bs
            if return_outputs:
                probs.append(p)
                labels.append(t)
    finally:
        model.train(was_training)
    out = {"loss": total_loss / max(n, 1), "acc": correct / max(n, 1), "topk": correct_k / max(n, 1), "n": n}
    if return_outputs:
        out["probs"] = np.concatenate(probs) if probs else np.zeros((0, 0))
        out["labels"] = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    return out


def skip_input_gradient(model):
    """Tell the network's first layer not to compute ∂L/∂input (nobody uses the image gradient in training).

    Follows first children through ``Sequential`` containers only, so a branch or a
    residual at the very start is never touched. Returns the layer, or None.
    """
    from ..layers import Conv2d, Linear, Sequential
    m = model
    while isinstance(m, Sequential) and len(m):
        m = m[0]
    if isinstance(m, (Conv2d, Linear)):
        m.compute_input_grad = False
        return m
    return None


def enable_fused_sgd(model, optimizer, clip_norm=None):
    """Make every Conv2d and Linear apply plain SGD inside its backward; returns those layers.

    Only for ``SGD`` without momentum, weight decay or Nesterov (the 2019 report's rule,
    w ← w − lr·∂L/∂w), and without gradient clipping (which needs all gradients
    before any update). Their weight gradients are never stored; other
    parameters (batch norm) still go through ``optimizer.step()``. Layers whose weight
    the optimiser does not hold (a frozen stage) are left alone; each layer's rate is
    the optimiser's for its weight (``lr_of``: layer-wise learning rates apply).
    """
    from ..layers import Conv2d, Linear
    from .optim import SGD
    hyper = getattr(optimizer, "hyper", {})
    if not isinstance(optimizer, SGD) or hyper.get("momentum", 0) or hyper.get("weight_decay", 0) \
            or hyper.get("nesterov", False):
        raise ValueError("fused SGD needs plain SGD (no momentum, weight decay or Nesterov); got "
                         f"{type(optimizer).__name__} with {hyper}")
    if clip_norm:
        raise ValueError("fused SGD cannot clip the gradient norm (each layer updates before the next "
                         "layer's gradient exists); drop --clip-norm or the fused update")
    names = {id(p): name for name, p in optimizer.params.items()}
    layers = [m for m in model.modules() if isinstance(m, (Conv2d, Linear)) and id(m.weight) in names]
    for m in layers:
        m.weight.grad = None
        if m.bias is not None:
            m.bias.grad = None
        m.fused_lr = optimizer.lr_of(names[id(m.weight)])
    return layers


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


class _StopFlag:
    """Turn SIGINT/SIGTERM into a flag checked between steps (never half an update)."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


class Trainer:
    """Train ``model`` on ``train_loader`` (batches ``(x (N, C, H, W), y (N,))``).

    ``epochs`` (or ``iterations``) bound the run; ``schedule_unit`` is
    ``'iteration'`` or ``'epoch'``; ``out_dir`` receives ``metrics.jsonl``,
    ``curves.png``, ``checkpoints/``, ``model.safetensors`` and, with a validation loader, ``best.safetensors``
    (each with a JSON sidecar carrying ``metadata``). ``early_stopping``: stop
    after that many epochs without a better validation accuracy.
    ``fused_sgd``: for plain SGD, apply each layer's update inside backward
    (see ``nabi.fused``); results equal the unfused step within float tolerance.
    ``precision``: ``'float32'``, or ``'float16'`` for mixed precision (float16
    compute, float32 master weights, dynamic loss scaling; ``nabi.training.amp``). Saved
    weights and checkpoints hold the float32 masters either way.
    """

    def __init__(self, model, optimizer, train_loader, val_loader=None, loss_fn=None, schedule=None,
                 schedule_unit="iteration", epochs=1, iterations=None, out_dir=None, clip_norm=None,
                 checkpoint_every=None, keep_last=3, early_stopping=None, progress=True, metadata=None,
                 config=None, log=print, topk=5, fused_sgd=False, precision="float32"):
        if schedule_unit not in ("iteration", "epoch"):
            raise ValueError(f"schedule_unit must be 'iteration' or 'epoch', got {schedule_unit!r}")
        if epochs is None and iterations is None:
            raise ValueError("give epochs or iterations")
        self.model, self.optimizer = model, optimizer
        self.train_loader, self.val_loader = train_loader, val_loader
        self.loss_fn = loss_fn or CrossEntropyLoss()
        self.schedule, self.schedule_unit = schedule, schedule_unit
        self.epochs = int(epochs) if epochs is not None else math.ceil(iterations / len(train_loader))
        self.max_iterations = int(iterations) if iterations is not None else None
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.clip_norm = clip_norm
        self.checkpoint_every = checkpoint_every
        self.keep_last = keep_last
        self.early_stopping = early_stopping
        self.progress = progress
        self._progress = Progress(enabled=progress)
        self.metadata = dict(metadata or {})
        self.config = dict(config or {})
        self.log = log or (lambda *a, **k: None)
        self.topk = topk
        # counters and history
        self.epoch = 0              # completed epochs
        self.iteration = 0          # completed optimiser steps
        self.batch_in_epoch = 0     # completed batches of the current epoch
        self.best_acc = -1.0
        self.best_epoch = None
        self.epochs_without_improvement = 0
        self.history = []
        self._epoch_sums = {"loss": 0.0, "correct": 0, "n": 0, "time": 0.0}
        self.status = "new"
        self.precision = check_precision(precision)
        if fused_sgd and self.precision != "float32":
            raise ValueError("fused SGD and mixed precision cannot be combined: the fused update needs the "
                             "float32 weights inside backward (use one or the other)")
        self.fused_layers = enable_fused_sgd(model, optimizer, clip_norm) if fused_sgd else []
        names = {id(p): name for name, p in optimizer.params.items()}
        self._fused_names = [names[id(layer.weight)] for layer in self.fused_layers]
        self.amp = MixedPrecision(model, optimizer, self.precision) if self.precision != "float32" else None
        skip_input_gradient(model)
        if self.out_dir is not None:
            self._check_writable(self.out_dir)

    # -- files -------------------------------------------------------------------------
    @staticmethod
    def _check_writable(path: Path):
        try:
            files.ensure_writable_folder(path)
        except OSError as e:
            raise PermissionError(f"output folder {path} cannot be written: {e.strerror or e}") from None

    def _state(self):
        return {
            "epoch": self.epoch, "iteration": self.iteration, "batch_in_epoch": self.batch_in_epoch,
            "best_acc": self.best_acc, "best_epoch": self.best_epoch,
            "epochs_without_improvement": self.epochs_without_improvement,
            "epoch_sums": self._epoch_sums, "history": self.history,
            "loader": self.train_loader.state_dict() if hasattr(self.train_loader, "state_dict") else None,
            "schedule": self.schedule.state_dict() if self.schedule is not None else None,
            "rng": _rng_states(self.model), "config": self.config, "status": self.status,
            "nabi_version": self.metadata.get("nabi_version"),
            "amp": self.amp.scaler.state_dict() if self.amp is not None else None,
            "end_of_epoch": "pending" if self._batches_done() else "done",
        }

    def model_state(self):
        """The weights to save: the model's, or the float32 masters under mixed precision."""
        return self.amp.master_state_dict() if self.amp is not None else self.model.state_dict()

    def save_checkpoint(self):
        if self.out_dir is None:
            return None
        try:
            return save_checkpoint(self.out_dir, _Weights(self.model_state()), self.optimizer, self._state(),
                                   self.metadata, keep_last=self.keep_last)
        except OSError as e:
            previous = latest_checkpoint(self.out_dir)
            raise CheckpointWriteError(
                f"could not write the checkpoint of iteration {self.iteration} in {self.out_dir / 'checkpoints'}: "
                f"{e.strerror or e}" + (f" ({e.filename})" if e.filename else "") + ". Nothing of it was kept; "
                + (f"the previous checkpoint {previous} is intact: free some space and continue with --resume"
                   if previous else "there is no earlier checkpoint: free some space and start again")) from e

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

    def _setting_differences(self, ck) -> list:
        """``[(flag, saved value, new value)]``: the settings in which the checkpoint ``ck``'s run and this
        one differ although a resumed run must keep them (the fine-tuning ones here; subclasses add theirs)."""
        return fine_tuning_differences(ck["state"].get("config") or {}, self.config)

    def _check_resumable(self, path, ck) -> None:
        arch_saved = ck["model_metadata"].get("arch")
        arch_now = self.metadata.get("arch")
        if arch_saved and arch_now and arch_saved != arch_now:
            raise ValueError(f"checkpoint {path} is of architecture {arch_saved}, but this run builds {arch_now}")
        _refuse_other_settings(path, self._setting_differences(ck))

    def _resume_from(self, path, ck):
        self._check_resumable(path, ck)
        if self.amp is not None:
            self.amp.load_master_state_dict(ck["model"])
        else:
            self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        st = ck["state"]
        if self.amp is not None and st.get("amp"):
            self.amp.scaler.load_state_dict(st["amp"])
        self.epoch, self.iteration = int(st["epoch"]), int(st["iteration"])
        self.batch_in_epoch = int(st["batch_in_epoch"])
        self.best_acc, self.best_epoch = float(st["best_acc"]), st["best_epoch"]
        self.epochs_without_improvement = int(st["epochs_without_improvement"])
        self._epoch_sums = dict(st["epoch_sums"])
        self.history = list(st["history"])
        if st.get("loader") and hasattr(self.train_loader, "load_state_dict"):
            self.train_loader.load_state_dict(st["loader"])
        if st.get("schedule") and self.schedule is not None:
            self.schedule.load_state_dict(st["schedule"])
        _set_rng_states(self.model, st.get("rng", {}))
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

    def _save_weights(self, name, extra=None):
        if self.out_dir is None:
            return
        meta = dict(self.metadata)
        meta.update(extra or {})
        files.save_weights(self.out_dir / f"{name}.safetensors", self.model_state(), meta)

    def _write_metrics(self, row):
        if self.out_dir is None:
            return
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.history)
        files.atomic_write_text(self.out_dir / "metrics.jsonl", lines)
        try:
            from ..plots import plot_curves
            plot_curves(self.history, self.out_dir / "curves.png")
        except ImportError:  # matplotlib missing: the log still has every number
            pass

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

    def fit(self):
        """Run to the end (or to early stopping); returns the history (one dict per epoch)."""
        self.model.train()
        if self.status != "early_stopped":
            self.status = "running"
        with _StopFlag() as stop:
            while self.status != "early_stopped":
                if not self._batches_done():
                    if self._done():
                        break
                    self._run_epoch(stop)
                if self._batches_done():
                    self._end_epoch()
        if self.status in ("running", "finished"):
            self.status = "finished"
        if self.out_dir is not None:
            self.save_checkpoint()
            fault_point("final_weights")
            self._save_weights("model", {"status": self.status, "epochs_trained": self.epoch,
                                         "iterations": self.iteration})
        return self.history

    def _run_epoch(self, stop):
        loader = self.train_loader
        n_batches = len(loader)
        bar = self._progress.epoch(n_batches, self.batch_in_epoch, f"epoch {self.epoch + 1}/{self.epochs}")
        sums = self._epoch_sums
        t0 = time.perf_counter()
        try:
            for x, y in loader:
                self._step(x, y, sums)
                if bar is not None:
                    elapsed = sums["time"] + time.perf_counter() - t0
                    bar.update(1, loss=f"{sums['loss'] / max(sums['n'], 1):.4f}",
                               acc=f"{sums['correct'] / max(sums['n'], 1):.3f}",
                               img_s=f"{sums['n'] / max(elapsed, 1e-9):.0f}", lr=f"{self.optimizer.lr:.3g}")
                if self.checkpoint_every and self.iteration % self.checkpoint_every == 0:
                    sums["time"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    self.save_checkpoint()
                if stop.signal is not None:
                    sums["time"] += time.perf_counter() - t0
                    self.status = "interrupted"
                    path = self.save_checkpoint()
                    raise TrainingInterrupted(f"stopped by signal {stop.signal} at epoch {self.epoch + 1}, "
                                              f"iteration {self.iteration}; state saved to {path}; "
                                              f"continue with --resume")
                if self.max_iterations is not None and self.iteration >= self.max_iterations:
                    break
        finally:
            if bar is not None:
                bar.close()
        sums["time"] += time.perf_counter() - t0

    def _step(self, x, y, sums):
        model, loss_fn = self.model, self.loss_fn
        for layer, name in zip(self.fused_layers, self._fused_names):   # the schedule may have changed the rate
            layer.fused_lr = self.optimizer.lr_of(name)
        amp = self.amp
        logits = model(amp.cast_input(x) if amp else x)
        if amp:
            logits = logits.astype("float32")                # the loss in float32
        loss = loss_fn(logits, y)
        aux = getattr(model, "aux_outputs", None)     # GoogLeNet's auxiliary heads, in training only
        daux = None
        if aux:
            aux_fns = [CrossEntropyLoss(label_smoothing=getattr(loss_fn, "label_smoothing", 0.0)) for _ in aux]
            loss += sum(AUX_LOSS_WEIGHT * f(a.astype(logits.dtype, copy=False), y) for f, a in zip(aux_fns, aux))
            daux = tuple(f.backward(AUX_LOSS_WEIGHT) for f in aux_fns)
        if not math.isfinite(loss):
            ck = latest_checkpoint(self.out_dir) if self.out_dir else None
            self.status = "diverged"
            raise TrainingDiverged(
                f"the loss became {loss} at epoch {self.epoch + 1}, iteration {self.iteration + 1}; training stopped "
                f"without saving this state. Last good checkpoint: {ck or 'none'}. Lower the learning rate "
                f"(now {self.optimizer.lr:.3g}), add gradient clipping (--clip-norm), or check the input data"
                + (" (under float16, an activation may have passed 65504: try --precision float32)." if amp else "."))
        model.zero_grad()
        if amp:
            amp.backward(loss_fn.backward(), daux)
            amp.step(clip=(lambda ps: clip_grad_norm(ps, self.clip_norm)) if self.clip_norm else None)
        else:
            if daux is None:
                model.backward(loss_fn.backward())
            else:
                model.backward(loss_fn.backward(), daux=daux)
            if self.clip_norm:
                clip_grad_norm(self.optimizer.params, self.clip_norm)
            self.optimizer.step()
        self.iteration += 1
        self.batch_in_epoch += 1
        if self.schedule is not None and self.schedule_unit == "iteration":
            self.schedule.step()
        bs = int(y.shape[0])
        sums["loss"] += loss * bs
        sums["correct"] += _count_correct(logits, y)
        sums["n"] += bs
        fault_point("step")

    def _end_epoch(self):
        sums = self._epoch_sums
        row = {"epoch": self.epoch + 1, "iteration": self.iteration, "lr": self.optimizer.lr,
               "train_loss": sums["loss"] / max(sums["n"], 1), "train_acc": sums["correct"] / max(sums["n"], 1),
               "train_images_per_s": sums["n"] / max(sums["time"], 1e-9), "epoch_time_s": sums["time"]}
        row.update(self._epoch_extras(sums))
        if self.val_loader is not None:
            ev = evaluate(self.model, self.val_loader, self.loss_fn, topk=self.topk)
            row.update(val_loss=ev["loss"], val_acc=ev["acc"])
            if self._num_classes() > 5:
                row[f"val_top{self.topk}"] = ev["topk"]
            fault_point("validated")
        self.epoch += 1
        self.batch_in_epoch = 0
        self._epoch_sums = {"loss": 0.0, "correct": 0, "n": 0, "time": 0.0}
        if self.schedule is not None and self.schedule_unit == "epoch":
            self.schedule.step()
        score = row.get("val_acc", row["train_acc"])
        if score > self.best_acc:
            self.best_acc, self.best_epoch = score, self.epoch
            self.epochs_without_improvement = 0
            if self.val_loader is not None:      # "best" by training accuracy under augmentation means little
                self._save_weights("best", {"best_epoch": self.epoch, "best_acc": score,
                                            "chosen_by": "validation accuracy"})
                fault_point("best_saved")
        else:
            self.epochs_without_improvement += 1
        row["best_acc"] = self.best_acc
        self.history.append(row)
        self._write_metrics(row)
        fault_point("metrics_written")
        self.log(_format_row(row))
        if self.early_stopping and self.epochs_without_improvement >= self.early_stopping:
            self.status = "early_stopped"
            self.log(f"early stopping: no better accuracy for {self.early_stopping} epochs "
                     f"(best {self.best_acc:.4f} at epoch {self.best_epoch})")
        self.save_checkpoint()
        fault_point("epoch_saved")

    def _epoch_extras(self, sums) -> dict:
        """More columns for the epoch's metrics row, from the epoch's running sums (none here; a
        subclass that adds its own sums in ``_step`` reports them)."""
        return {}

    def _num_classes(self):
        classes = self.metadata.get("classes")
        return len(classes) if classes else 0


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


def _format_row(row):
    parts = [f"epoch {row['epoch']}", f"loss {row['train_loss']:.4f}", f"acc {row['train_acc']:.4f}"]
    if "val_acc" in row:
        parts += [f"val_loss {row['val_loss']:.4f}", f"val_acc {row['val_acc']:.4f}"]
    for k, v in row.items():
        if k.startswith("val_top"):
            parts.append(f"{k} {v:.4f}")
    parts.append(f"{row['train_images_per_s']:.0f} img/s")
    return " · ".join(parts)
