"""The updater: one training step — forward, loss, backward, update — and nothing else.

The trainer (``nabi.training.trainer``) feeds it one batch at a time and adds what it returns to
the epoch's running sums; everything around the step (checkpoints, validation, the metrics file,
early stopping, signals, progress) is an extension of the trainer (``nabi.training.extensions``).

``StandardUpdater.update(x, y)`` with x (N, C, H, W) and y (N,):

    logits = model(x)                          (float16 compute under mixed precision)
    L = loss_fn(logits, y) [+ 0.3·Σ loss_fn(aux_i, y) for GoogLeNet's auxiliary heads]
    refuse a NaN or infinite L (``NonFiniteLoss``) before anything changes
    model.zero_grad(); model.backward(∂L/∂logits)
    clip ‖∇‖₂ to ``clip_norm`` (optional); optimizer.step()
    returns {"loss": L·N, "correct": Σ [argmax logits = y], "n": N}

The returned numbers are sums over the batch, so the trainer's epoch totals are plain additions
and an epoch's mean loss is Σ loss / Σ n. A strategy that trains differently (a contrastive loss,
BYOL's moving-average target) subclasses ``StandardUpdater`` and overrides the public ``update``
(calling ``super().update``), may add sums of its own, turn them into metrics-row columns
(``epoch_columns``), keep state in every checkpoint (``state_dict``/``load_state_dict``) and refuse
a checkpoint it cannot continue (``resume_differences``). The trainer takes the class (or any
callable with its signature) as ``Trainer(..., updater=MyUpdater)``.

Fused SGD (``fused_sgd``): every Conv2d and Linear applies plain SGD inside its own backward and
never stores its weight gradient; mixed precision (``precision='float16'``, ``nabi.training.amp``):
float16 compute, float32 master weights in the optimiser, dynamic loss scaling.
"""
from __future__ import annotations

import math

from .. import backend
from ..layers import CrossEntropyLoss
from .amp import MixedPrecision, check_precision
from ..optim import clip_grad_norm

AUX_LOSS_WEIGHT = 0.3
"""Weight of each auxiliary classifier's loss (GoogLeNet, as in the paper): L = L_main + 0.3·(L_aux1 + L_aux2)."""


class NonFiniteLoss(ArithmeticError):
    """The step's loss is NaN or infinite; nothing was updated. ``loss``: the value; ``hint``: what to try."""

    def __init__(self, loss, hint=""):
        super().__init__(f"the loss became {loss}")
        self.loss, self.hint = loss, hint


def count_correct(logits, y) -> int:
    """Σ [argmax logits = y], compared where the arrays live: on the GPU only the count crosses to the host."""
    if backend.get_array_module(logits) is backend.get_array_module(y):
        return int((logits.argmax(axis=1) == y).sum())
    return int((backend.to_numpy(logits.argmax(axis=1)) == backend.to_numpy(y)).sum())


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
    from ..optim import SGD
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


class StandardUpdater:
    """Forward, loss, backward and the optimiser's step for one batch (see the module docstring).

    ``loss_fn`` (default cross-entropy) is called as ``loss_fn(outputs, y)`` and differentiated
    with ``loss_fn.backward()``; ``clip_norm``: clip the global gradient norm; ``fused_sgd``,
    ``precision``: as the module docstring says (they cannot be combined).
    """

    def __init__(self, model, optimizer, loss_fn=None, clip_norm=None, fused_sgd=False, precision="float32"):
        self.model, self.optimizer = model, optimizer
        self.loss_fn = loss_fn or CrossEntropyLoss()
        self.clip_norm = clip_norm
        self.precision = check_precision(precision)
        if fused_sgd and self.precision != "float32":
            raise ValueError("fused SGD and mixed precision cannot be combined: the fused update needs the "
                             "float32 weights inside backward (use one or the other)")
        self.fused_layers = enable_fused_sgd(model, optimizer, clip_norm) if fused_sgd else []
        names = {id(p): name for name, p in optimizer.params.items()}
        self._fused_names = [names[id(layer.weight)] for layer in self.fused_layers]
        self.amp = MixedPrecision(model, optimizer, self.precision) if self.precision != "float32" else None
        self.trainer = None
        self.replicas = None       # a data-parallel run's ``nabi.training.replicas.Replicas``, set by the trainer
        skip_input_gradient(model)

    def attach(self, trainer) -> None:
        """Called once by the trainer that drives this updater (its counters tell how long the run is)."""
        self.trainer = trainer

    # -- the step ---------------------------------------------------------------------------------------
    def update(self, x, y) -> dict:
        """One step on the batch ``(x, y)``; returns the batch's sums ``{"loss", "correct", "n"}``."""
        model, loss_fn, amp = self.model, self.loss_fn, self.amp
        for layer, name in zip(self.fused_layers, self._fused_names):   # the schedule may have changed the rate
            layer.fused_lr = self.optimizer.lr_of(name)
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
            raise NonFiniteLoss(loss, " (under float16, an activation may have passed 65504: try --precision "
                                      "float32)." if amp else ".")
        model.zero_grad()
        share = None                # a replica's weight of its shard's mean loss (``nabi.training.replicas``)
        if self.replicas is not None and not getattr(loss_fn, "whole_batch", False):
            share = self.replicas.loss_share(int(y.shape[0]))
        if amp:
            amp.backward(loss_fn.backward(), daux)
            amp.step(clip=(lambda ps: clip_grad_norm(ps, self.clip_norm)) if self.clip_norm else None)
        else:
            dout = loss_fn.backward()
            if share is not None:              # the gradient of this shard's part of the global batch's mean loss
                dout = dout * dout.dtype.type(share)
                daux = None if daux is None else tuple(d * d.dtype.type(share) for d in daux)
            if daux is None:
                model.backward(dout)
            else:
                model.backward(dout, daux=daux)
            if self.replicas is not None:
                self.replicas.sum_gradients(list(self.optimizer.params.values()), self.replicas.buffers)
            if self.clip_norm:
                clip_grad_norm(self.optimizer.params, self.clip_norm)
            self.optimizer.step()
        bs = int(y.shape[0])
        return {"loss": loss * bs, "correct": count_correct(logits, y), "n": bs}

    def epoch_columns(self, sums) -> dict:
        """More columns for the epoch's metrics row, from the epoch's sums (none here)."""
        return {}

    # -- the weights and the state a checkpoint keeps -----------------------------------------------
    def model_state(self):
        """The weights to save: the model's, or the float32 masters under mixed precision."""
        return self.amp.master_state_dict() if self.amp is not None else self.model.state_dict()

    def load_model_state(self, state) -> None:
        if self.amp is not None:
            self.amp.load_master_state_dict(state)
        else:
            self.model.load_state_dict(state)

    def state_dict(self) -> dict:
        """Entries for the checkpoint's ``state.json`` (top-level keys; the loss scale under ``amp``)."""
        return {"amp": self.amp.scaler.state_dict() if self.amp is not None else None}

    def load_state_dict(self, state) -> None:
        if self.amp is not None and state.get("amp"):
            self.amp.scaler.load_state_dict(state["amp"])

    def resume_differences(self, path, state) -> list:
        """``[(flag, saved value, new value)]``: settings in which the checkpoint ``path`` (its ``state.json``
        as ``state``) differs from this updater although a resumed run must keep them (none here). May raise
        ``ValueError`` for a checkpoint this updater cannot continue at all."""
        return []
