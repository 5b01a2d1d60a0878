"""Mixed precision: float16 compute, float32 master weights, dynamic loss scaling.

Meant for the GPU (CuPy's float16 GEMMs use the tensor cores); it runs on the CPU
too, through NumPy's float16, which is slow but exact enough to test with.

One training step with ``MixedPrecision(model, optimizer)``:

    1. the model holds float16 working copies of its weights; the optimiser holds
       the float32 masters (the parameters it was built with);
    2. forward in float16; the logits are cast to float32 for the loss;
    3. backward of S·loss (S the loss scale), so that small float16 gradients do
       not flush to zero;
    4. master.grad = float32(working.grad) / S; if any of them is inf or NaN the
       step is skipped and S ← S·backoff (the overflow came from the scale, not
       from the data), otherwise the optimiser steps on the masters and the
       working copies are refreshed: working = float16(master);
    5. after ``growth_interval`` finite steps in a row, S ← S·growth.

Batch-norm running statistics and every other buffer stay float32. The
reductions of batch norm (statistics and the backward sums), softmax and
cross-entropy, LRN, average pooling and gradient norms accumulate float16 values
in float32: a float16 sum overflows past 65 504 and stops growing well before
(2048 + 1 rounds back to 2048).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import backend
from ..layers.module import Parameter

PRECISIONS = ("float32", "float16")


class DynamicLossScaler:
    """The loss scale S and its rule: ×``backoff`` on an overflow, ×``growth`` after
    ``growth_interval`` finite steps (PyTorch's ``GradScaler`` defaults)."""

    def __init__(self, init_scale=2.0 ** 16, growth=2.0, backoff=0.5, growth_interval=2000, min_scale=1.0):
        if init_scale <= 0 or growth <= 1 or not 0 < backoff < 1 or growth_interval < 1:
            raise ValueError("loss scaler: need init_scale > 0, growth > 1, 0 < backoff < 1, growth_interval >= 1")
        self.scale = float(init_scale)
        self.growth, self.backoff = float(growth), float(backoff)
        self.growth_interval = int(growth_interval)
        self.min_scale = float(min_scale)
        self.good_steps = 0
        self.skipped = 0

    def update(self, found_inf: bool) -> None:
        if found_inf:
            self.scale = max(self.min_scale, self.scale * self.backoff)
            self.good_steps = 0
            self.skipped += 1
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale *= self.growth
            self.good_steps = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps, "skipped": self.skipped}

    def load_state_dict(self, d) -> None:
        self.scale = float(d["scale"])
        self.good_steps = int(d["good_steps"])
        self.skipped = int(d.get("skipped", 0))


class MixedPrecision:
    """Run ``model`` in float16 while ``optimizer`` updates float32 masters.

    Built after the model and the optimiser (whose parameters become the masters).
    The model's parameters are replaced by float16 copies; ``state_dict()`` of the
    model then holds float16 weights, so save ``master_state_dict()`` instead (the
    trainer does).
    """

    def __init__(self, model, optimizer, dtype="float16", scaler=None):
        if str(dtype) != "float16":
            raise ValueError(f"mixed precision: compute dtype must be 'float16', got {dtype!r}")
        self.model, self.optimizer = model, optimizer
        self.dtype = np.dtype(np.float16)
        self.scaler = scaler or DynamicLossScaler()
        by_id = {id(p): name for name, p in optimizer.params.items()}
        self.pairs = []                                  # (name, master Parameter, working Parameter)
        for mname, m in model.named_modules():
            for pname, p in list(m._parameters.items()):
                name = f"{mname}.{pname}" if mname else pname
                if id(p) not in by_id and not m.frozen:        # a frozen stage's stay as they are
                    raise ValueError(f"mixed precision: parameter {name!r} is not in the optimiser")
                if p.data.dtype != np.float32:
                    raise ValueError(f"mixed precision: parameter {name!r} is {p.data.dtype}, expected float32 masters")
                work = Parameter(p.data.astype(self.dtype))
                setattr(m, pname, work)
                self.pairs.append((name, p, work))
        # Buffers (batch-norm running statistics) stay float32: batch norm computes its
        # statistics in float32 for float16 input and updates them there.

    def cast_input(self, x):
        return x.astype(self.dtype, copy=False) if x.dtype.kind == "f" else x

    def backward(self, dlogits, daux=None):
        """Backward of S·loss: ``dlogits`` is ∂loss/∂logits in float32."""
        s = self.scaler.scale
        with np.errstate(over="ignore", invalid="ignore"):    # an overflow here is expected and handled by step()
            d = (dlogits * s).astype(self.dtype)
            if daux is None:
                return self.model.backward(d)
            return self.model.backward(d, daux=tuple((a * s).astype(self.dtype) for a in daux))

    def unscale(self) -> bool:
        """master.grad = float32(working.grad) / S for every parameter; True when all are finite."""
        inv = 1.0 / self.scaler.scale
        finite = True
        for _, master, work in self.pairs:
            g = work.grad
            if g is None:
                master.grad = None
                continue
            g32 = g.astype(np.float32)
            with np.errstate(invalid="ignore"):
                g32 *= inv
            xp = backend.get_array_module(g32)
            if finite and not bool(xp.isfinite(g32).all()):
                finite = False
            master.grad = g32
        return finite

    def step(self, clip=None) -> bool:
        """Unscale, check, step the optimiser on the masters (``clip(params)`` first, if given),
        refresh the float16 copies, update the scale. Returns False when the step was skipped."""
        finite = self.unscale()
        if finite:
            if clip is not None:
                clip(self.optimizer.params)
            self.optimizer.step()
            for _, master, work in self.pairs:
                work.data[...] = master.data
        self.scaler.update(not finite)
        return finite

    def master_state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """The model's ``state_dict`` with float32 master weights and float32 buffers."""
        state = self.model.state_dict()
        for name, master, _ in self.pairs:
            state[name] = backend.to_numpy(master.data).copy()
        for k, v in state.items():
            if v.dtype == np.float16:
                state[k] = v.astype(np.float32)
        return state

    def load_master_state_dict(self, state) -> None:
        """Load float32 weights into the masters and their float16 copies into the model."""
        self.model.load_state_dict(state)                    # casts into the float16 working arrays
        for name, master, work in self.pairs:
            xp = backend.get_array_module(master.data)
            master.data[...] = xp.asarray(state[name]).astype(master.data.dtype)


def check_precision(value) -> str:
    value = str(value)
    if value not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {value!r}")
    return value

