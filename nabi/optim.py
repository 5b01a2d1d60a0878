"""Optimizers, gradient clipping and learning-rate schedules.

Every update rule is written to match ``torch.optim`` step for step, so a
model trained here and one trained in PyTorch from the same start and the
same gradients stay together (the tests check this in float64).

Optimizers hold parameters by NAME (as ``Module.named_parameters()`` spells
them), and their state -- momentum buffers, Adam moments -- is keyed by those
names too, never by ``id()``, so a saved optimizer state can be loaded into a
freshly built model in a new process. ``SGD(net.parameters(), lr=0.1)`` works
too, as in PyTorch: bare Parameters are named by their position in the sequence,
``'0'``, ``'1'``, … (``torch.optim`` numbers them the same way), which is stable
as long as the model is built the same way, since ``parameters()`` follows the
fixed order of ``named_parameters()``. A state saved from one kind of optimizer
(names or positions) loads only into the same kind; the error says so.

Array math goes through ``xp = backend.get_array_module(p.data)``, so the
same code updates NumPy (CPU) and CuPy (GPU) parameters, in place.

Per-parameter learning rates (``torch.optim``'s parameter groups with their
own ``lr``) are multipliers: ``lr_scale = {name: s}`` makes parameter ``name``
step with ``s · lr`` (weight decay included, as a torch group of lr ``s · lr``
does); the others use ``lr``. Layer-wise learning-rate decay
(``nabi.training.fine_tune``) is built on them.

Schedules set ``optimizer.lr``, so they scale every parameter's rate alike;
the caller calls ``schedule.step()`` once per
epoch or once per iteration, as it likes. Each schedule has a closed form
``get_lr(t)`` for the rate after ``t`` calls to ``step()``.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from . import backend
from .functional import cpu_kernels as K
from .functional.blas import axpy
from .layers.module import Parameter

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW", "clip_grad_norm",
    "LRSchedule", "ConstantLR", "StepLR", "CosineAnnealingLR", "LinearWarmup", "LinearStepDecay",
    "SCHEDULES", "make_schedule",
]


# ---------------------------------------------------------------------------
# collecting parameters
# ---------------------------------------------------------------------------
def _named_params(params, who: str) -> "OrderedDict[str, Parameter]":
    """Normalise a Module, a dict name -> Parameter, an iterable of (name, Parameter), or an iterable of
    Parameters (``net.parameters()``; named ``'0'``, ``'1'``, … by position)."""
    if hasattr(params, "named_parameters") and callable(params.named_parameters):
        items = list(params.named_parameters())
    elif isinstance(params, Mapping):
        items = list(params.items())
    else:
        try:
            items = list(params)
        except TypeError:
            raise TypeError(f"{who} needs model.parameters(), model.named_parameters(), a dict name -> Parameter "
                            f"or a Module; got {type(params).__name__}") from None
    bare = [isinstance(item, Parameter) for item in items]
    if any(bare):
        if not all(bare):
            raise TypeError(f"{who}: give model.parameters() (Parameters) or model.named_parameters() (pairs of "
                            f"name and Parameter), not a mix of the two")
        items = [(str(i), p) for i, p in enumerate(items)]
    out: "OrderedDict[str, Parameter]" = OrderedDict()
    seen = set()
    for item in items:
        try:
            name, p = item
        except (TypeError, ValueError):
            raise TypeError(f"{who} expected (name, Parameter) pairs, got {item!r}") from None
        if not isinstance(name, str):
            raise TypeError(f"{who}: parameter names must be strings, got {name!r}")
        if not isinstance(p, Parameter):
            raise TypeError(f"{who}: {name!r} is a {type(p).__name__}, not a Parameter")
        if name in out:
            raise ValueError(f"{who}: the parameter name {name!r} appears twice")
        if id(p) in seen:  # a shared (tied) parameter is updated once, under its first name
            continue
        seen.add(id(p))
        out[name] = p
    if not out:
        raise ValueError(f"{who} got an empty parameter list")
    return out


def _host_copy(a) -> np.ndarray:
    h = backend.to_numpy(a)
    return h.copy() if h is a else h


def _check_nonneg(name, value):
    value = float(value)
    if not value >= 0.0:  # also catches NaN
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


# ---------------------------------------------------------------------------
# optimizers
# ---------------------------------------------------------------------------
class Optimizer:
    """Base class: holds named parameters, the learning rate ``lr`` and per-name state.

    Subclasses list their hyper-parameters in ``_hyper`` (attribute names) and
    implement ``_update(name, p, state)`` for one parameter whose ``grad`` is set,
    stepping with ``lr_of(name)``: ``lr · lr_scale[name]`` (``lr_scale`` defaults to 1).
    Parameters whose ``grad`` is ``None`` are skipped by ``step()`` (no update,
    no state change), as in PyTorch.
    """

    _hyper: tuple = ()
    _int_state: tuple = ()  # state keys kept as Python ints (saved as int64 0-d arrays)

    def __init__(self, params, lr: float, lr_scale=None):
        self.params = _named_params(params, type(self).__name__)
        self.lr = _check_nonneg("lr", lr)
        self.lr_scale = self._check_lr_scale(lr_scale)
        self.state: "dict[str, dict]" = {}
        self.step_count = 0

    def _check_lr_scale(self, lr_scale) -> dict:
        """``{name: multiplier}`` for parameters of this optimizer, each multiplier > 0 and finite."""
        out = {}
        for name, s in dict(lr_scale or {}).items():
            if name not in self.params:
                raise KeyError(f"{type(self).__name__}: lr_scale names {name!r}, which is not one of its parameters")
            s = float(s)
            if not (s > 0 and math.isfinite(s)):
                raise ValueError(f"{type(self).__name__}: lr_scale[{name!r}] must be a finite number > 0, got {s}")
            if s != 1.0:
                out[name] = s
        return out

    def lr_of(self, name: str) -> float:
        """The learning rate parameter ``name`` steps with now: ``lr · lr_scale[name]``."""
        return self.lr * self.lr_scale.get(name, 1.0)

    # -- running ------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zero every gradient in place (or drop it with ``set_to_none=True``)."""
        for p in self.params.values():
            if set_to_none:
                p.grad = None
            else:
                p.zero_grad()

    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        for name, p in self.params.items():
            if p.grad is None:
                continue
            state = self.state.setdefault(name, {})
            if state:
                self._follow_device(p, state)
            self._update(name, p, state)
        self.step_count += 1

    @staticmethod
    def _follow_device(p, state) -> None:
        """Move state buffers to the parameter's device if the model was moved (``model.to``) since."""
        xp = backend.get_array_module(p.data)
        for k, v in state.items():
            if not isinstance(v, int) and backend.get_array_module(v) is not xp:
                state[k] = backend.to_device(v, backend.device_of(p.data))

    def _update(self, name, p, state):  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def hyper(self) -> dict:
        return {k: getattr(self, k) for k in self._hyper}

    # -- saving ---------------------------------------------------------------
    def state_dict(self) -> dict:
        """``{'optimizer', 'lr', 'hyper', 'step_count', 'param_names', 'state'}``; arrays are host NumPy copies."""
        state = {}
        for name, st in self.state.items():
            state[name] = {k: (np.asarray(v, dtype=np.int64) if k in self._int_state else _host_copy(v))
                           for k, v in st.items()}
        return {
            "optimizer": type(self).__name__,
            "lr": self.lr,
            "lr_scale": dict(self.lr_scale),
            "hyper": dict(self.hyper),
            "step_count": int(self.step_count),
            "param_names": list(self.params),
            "state": state,
        }

    def load_state_dict(self, d: Mapping) -> None:
        """Restore a ``state_dict()``; state arrays go to each parameter's device and dtype.

        Raises ``KeyError`` naming the parameters the saved state has and this
        optimizer lacks (unknown) or the reverse (missing), ``ValueError`` for a
        different optimizer class, unknown hyper-parameters or shape mismatches.
        Nothing changes unless the whole state fits.
        """
        kind = d.get("optimizer", type(self).__name__)
        if kind != type(self).__name__:
            raise ValueError(f"this is a {type(self).__name__}, but the saved state is from a {kind}")
        saved_state = d.get("state", {})
        saved_names = list(d.get("param_names", saved_state.keys()))
        unknown = [n for n in saved_names if n not in self.params]
        unknown += [n for n in saved_state if n not in self.params and n not in unknown]
        missing = [n for n in self.params if n not in saved_names] if "param_names" in d else []
        if unknown or missing:
            parts = []
            if unknown:
                parts.append("unknown parameter names (in the saved state, not in this optimizer): " + ", ".join(unknown))
            if missing:
                parts.append("missing parameter names (in this optimizer, not in the saved state): " + ", ".join(missing))
            positional = lambda names: bool(names) and all(n.isdigit() for n in names)  # noqa: E731
            if positional(saved_names) != positional(list(self.params)):
                parts.append("the saved state was made from model." + ("parameters()" if positional(saved_names)
                             else "named_parameters()") + ": build this optimizer from the same")
            raise KeyError(f"{type(self).__name__}.load_state_dict: " + "; ".join(parts))
        hyper = dict(d.get("hyper", {}))
        bad = [k for k in hyper if k not in self._hyper]
        if bad:
            raise ValueError(f"{type(self).__name__}.load_state_dict: unknown hyper-parameters {bad}")
        new_state = {}
        for name, st in saved_state.items():
            p = self.params[name]
            device = backend.device_of(p.data)
            xp = backend.get_array_module(p.data)
            out = {}
            for k, v in st.items():
                if k in self._int_state:
                    out[k] = int(np.asarray(backend.to_numpy(v)).item())
                    continue
                v = backend.to_numpy(v)
                if tuple(v.shape) != tuple(p.data.shape):
                    raise ValueError(f"{type(self).__name__}.load_state_dict: state {name!r}/{k!r} has shape "
                                     f"{tuple(v.shape)}, the parameter has {tuple(p.data.shape)}")
                arr = backend.to_device(v, device) if device != "cpu" else v
                out[k] = xp.array(arr, dtype=p.data.dtype, copy=True)
            new_state[name] = out
        lr = float(d.get("lr", self.lr))
        lr_scale = self._check_lr_scale(d["lr_scale"]) if "lr_scale" in d else self.lr_scale
        step_count = int(d.get("step_count", 0))
        # everything checked: apply
        for k, v in hyper.items():
            setattr(self, k, tuple(v) if isinstance(v, list) else v)
        self.lr, self.lr_scale, self.step_count = lr, lr_scale, step_count
        self.state = new_state

    def __repr__(self):
        hp = ", ".join(f"{k}={v!r}" for k, v in self.hyper.items())
        return f"{type(self).__name__}(lr={self.lr!r}{', ' if hp else ''}{hp}, params={len(self.params)})"


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, exactly as ``torch.optim.SGD``.

    With ``g = grad + weight_decay * p``::

        b = g                                   (first step)
        b = momentum * b + (1 - dampening) * g  (later steps)
        d = g + momentum * b   if nesterov  else  b      (d = g when momentum == 0)
        p = p - lr * d
    """

    _hyper = ("momentum", "dampening", "weight_decay", "nesterov")

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, lr_scale=None):
        super().__init__(params, lr, lr_scale)
        self.momentum = _check_nonneg("momentum", momentum)
        self.dampening = float(dampening)
        self.weight_decay = _check_nonneg("weight_decay", weight_decay)
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum > 0 and zero dampening")

    def _update(self, name, p, state):
        g = p.grad
        if self.momentum != 0 and K.enabled(p.data, g) and p.data.flags.c_contiguous and g.flags.c_contiguous:
            buf = state.get("momentum_buffer")          # one compiled pass instead of four array passes
            first = buf is None
            if first:
                buf = state["momentum_buffer"] = np.empty_like(p.data)
            K.sgd_momentum_step(p.data, g, buf, self.lr_of(name), self.momentum, self.dampening, self.weight_decay,
                                self.nesterov, first)
            return
        if self.weight_decay != 0:
            g = g + self.weight_decay * p.data
        if self.momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = g.copy()
                state["momentum_buffer"] = buf
            else:
                buf *= self.momentum
                if self.dampening == 0:
                    buf += g
                else:
                    buf += (1.0 - self.dampening) * g
            g = g + self.momentum * buf if self.nesterov else buf
        axpy(p.data, g, -self.lr_of(name))       # p -= lr·g, in place


class Adam(Optimizer):
    """Adam, exactly as ``torch.optim.Adam`` (``decoupled=False``) and ``AdamW`` (``decoupled=True``).

    At step ``t`` (counted per parameter, from 1) with ``g = grad``::

        p = p * (1 - lr * wd)          (AdamW: decoupled decay)   or   g = g + wd * p   (Adam: L2)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        vmax = max(vmax, v)            (amsgrad only; then v -> vmax below)
        p = p - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)
    """

    _hyper = ("betas", "eps", "weight_decay", "amsgrad")
    _int_state = ("step",)
    _decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, lr_scale=None):
        super().__init__(params, lr, lr_scale)
        b1, b2 = (float(b) for b in betas)
        for i, b in enumerate((b1, b2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"betas[{i}] must be in [0, 1), got {b}")
        self.betas = (b1, b2)
        self.eps = _check_nonneg("eps", eps)
        self.weight_decay = _check_nonneg("weight_decay", weight_decay)
        self.amsgrad = bool(amsgrad)

    def _update(self, name, p, state):
        xp = backend.get_array_module(p.data)
        b1, b2 = self.betas
        g = p.grad
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
            if self.amsgrad:
                state["max_exp_avg_sq"] = xp.zeros_like(p.data)
        state["step"] += 1
        t = state["step"]
        lr = self.lr_of(name)
        if K.enabled(p.data, g) and g.dtype == p.data.dtype and p.data.flags.c_contiguous and g.flags.c_contiguous:
            if self.amsgrad and state.get("max_exp_avg_sq") is None:   # amsgrad switched on mid-run
                state["max_exp_avg_sq"] = state["exp_avg_sq"].copy()
            K.adam_step(p.data, g, state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq"), lr,
                        self.betas, self.eps, self.weight_decay, self._decoupled, self.amsgrad, t)
            return
        if self.weight_decay != 0:
            if self._decoupled:
                p.data *= 1.0 - lr * self.weight_decay
            else:
                g = g + self.weight_decay * p.data
        m, v = state["exp_avg"], state["exp_avg_sq"]
        tmp = g - m                    # m.lerp_(g, 1 - beta1)
        tmp *= 1.0 - b1
        m += tmp
        v *= b2                        # v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        tmp = (1.0 - b2) * g
        tmp *= g
        v += tmp
        if self.amsgrad:
            vmax = state.get("max_exp_avg_sq")
            if vmax is None:  # amsgrad switched on mid-run
                vmax = state["max_exp_avg_sq"] = v.copy()
            xp.maximum(vmax, v, out=vmax)
            v = vmax
        step_size = lr / (1.0 - b1 ** t)
        denom = xp.sqrt(v)
        denom /= math.sqrt(1.0 - b2 ** t)
        denom += self.eps
        tmp = step_size * m
        tmp /= denom
        p.data -= tmp


class AdamW(Adam):
    """Adam with decoupled weight decay (``p *= 1 - lr * weight_decay`` before the Adam step), as ``torch.optim.AdamW``."""

    _decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, lr_scale=None):
        super().__init__(params, lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         lr_scale=lr_scale)


# ---------------------------------------------------------------------------
# gradient clipping
# ---------------------------------------------------------------------------
def clip_grad_norm(params_or_named, max_norm: float, norm_type: float = 2.0) -> float:
    """Scale all gradients together so their joint norm is at most ``max_norm``; return the norm before.

    As ``torch.nn.utils.clip_grad_norm_``: ``total = ||(||g_1||, ..., ||g_n||)||``,
    ``coef = min(1, max_norm / (total + 1e-6))``, every ``g *= coef``.
    Accepts a Module, an Optimizer, a dict, ``named_parameters()`` pairs or bare
    Parameters; parameters without a gradient are left out. The norms of float16
    gradients are accumulated in float32.
    """
    if isinstance(params_or_named, Optimizer):
        params = list(params_or_named.params.values())
    elif hasattr(params_or_named, "parameters") and callable(params_or_named.parameters):
        params = list(params_or_named.parameters())
    elif isinstance(params_or_named, Mapping):
        params = list(params_or_named.values())
    elif isinstance(params_or_named, Parameter):
        params = [params_or_named]
    else:
        params = [item if isinstance(item, Parameter) else item[1] for item in params_or_named]
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm_type = float(norm_type)
    # one device sync per array module, not one per parameter
    groups: dict = {}
    for g in grads:
        groups.setdefault(backend.get_array_module(g), []).append(g)
    parts = []
    for xp, gs in groups.items():
        if math.isinf(norm_type):
            norms = xp.stack([xp.max(xp.abs(g)) if g.size else xp.zeros((), g.dtype) for g in gs])
            parts.append(float(xp.max(norms)))
        else:
            # float16 gradients: the sum of |g|^p in float32 (a float16 one overflows past 65 504)
            norms = xp.stack([xp.linalg.norm(g.ravel().astype("float32") if g.dtype.itemsize < 4 else g.ravel(),
                                             ord=norm_type) for g in gs])
            parts.append(float(xp.linalg.norm(norms, ord=norm_type)))
    if math.isinf(norm_type):
        total = max(parts)
    else:
        total = float(np.linalg.norm(np.asarray(parts, dtype=np.float64), ord=norm_type))
    coef = float(max_norm) / (total + 1e-6)
    if coef < 1.0:
        for g in grads:
            g *= coef
    return total


# ---------------------------------------------------------------------------
# learning-rate schedules
# ---------------------------------------------------------------------------
class LRSchedule:
    """Base schedule: ``t`` counts ``step()`` calls; ``optimizer.lr = get_lr(t)`` after each.

    ``base_lr`` is the optimizer's ``lr`` when the schedule is made; the
    constructor already sets ``optimizer.lr = get_lr(0)`` (as PyTorch does).
    """

    def __init__(self, optimizer):
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"a schedule needs an optimizer with an .lr attribute, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)
        self.t = 0
        self.optimizer.lr = self.get_lr(0)

    def get_lr(self, t: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def lr(self) -> float:
        return self.get_lr(self.t)

    def step(self) -> float:
        """Advance one epoch or iteration; sets and returns the new ``optimizer.lr``."""
        self.t += 1
        self.optimizer.lr = self.get_lr(self.t)
        return self.optimizer.lr

    def _config(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {"schedule": type(self).__name__, "t": self.t, "base_lr": self.base_lr, **self._config()}

    def load_state_dict(self, d: Mapping) -> None:
        kind = d.get("schedule", type(self).__name__)
        if kind != type(self).__name__:
            raise ValueError(f"this is a {type(self).__name__}, but the saved state is from a {kind}")
        for k, v in self._config().items():
            if k in d and not isinstance(v, dict):
                setattr(self, k, v if v is None else type(v)(d[k]))
        self.t = int(d["t"])
        self.base_lr = float(d.get("base_lr", self.base_lr))
        self.optimizer.lr = self.get_lr(self.t)

    def __repr__(self):
        cfg = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({cfg}{', ' if cfg else ''}t={self.t}, lr={self.lr:.6g})"


class ConstantLR(LRSchedule):
    """``lr(t) = base_lr``."""

    def get_lr(self, t):
        return self.base_lr


class StepLR(LRSchedule):
    """``lr(t) = base_lr * gamma ** (t // step_size)``, as ``torch.optim.lr_scheduler.StepLR``."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1):
        if int(step_size) < 1:
            raise ValueError(f"step_size must be >= 1, got {step_size}")
        self.step_size = int(step_size)
        self.gamma = float(gamma)
        super().__init__(optimizer)

    def get_lr(self, t):
        return self.base_lr * self.gamma ** (int(t) // self.step_size)

    def _config(self):
        return {"step_size": self.step_size, "gamma": self.gamma}


class CosineAnnealingLR(LRSchedule):
    """``lr(t) = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2`` (torch's closed form).

    It reaches ``eta_min`` at ``t = T_max``; past that the cosine climbs again,
    as PyTorch's does.
    """

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0):
        if int(T_max) < 1:
            raise ValueError(f"T_max must be >= 1, got {T_max}")
        self.T_max = int(T_max)
        self.eta_min = float(eta_min)
        super().__init__(optimizer)

    def get_lr(self, t):
        return self.eta_min + (self.base_lr - self.eta_min) * (1.0 + math.cos(math.pi * t / self.T_max)) / 2.0

    def _config(self):
        return {"T_max": self.T_max, "eta_min": self.eta_min}


class LinearWarmup(LRSchedule):
    """Linear warm-up, then another schedule.

    ``lr(t) = base_lr * (t + 1) / warmup_steps`` for ``t < warmup_steps``; after that
    ``after.get_lr(t - warmup_steps)`` when an ``after`` schedule is given (build
    it first, on the same optimizer), else ``base_lr``.
    """

    def __init__(self, optimizer, warmup_steps: int, after: LRSchedule | None = None):
        if int(warmup_steps) < 1:
            raise ValueError(f"warmup_steps must be >= 1, got {warmup_steps}")
        if after is not None and after.optimizer is not optimizer:
            raise ValueError("the 'after' schedule must drive the same optimizer")
        self.warmup_steps = int(warmup_steps)
        self.after = after
        super().__init__(optimizer)

    def get_lr(self, t):
        t = int(t)
        if t < self.warmup_steps:
            return self.base_lr * (t + 1) / self.warmup_steps
        if self.after is None:
            return self.base_lr
        return self.after.get_lr(t - self.warmup_steps)

    def _config(self):
        return {"warmup_steps": self.warmup_steps}

    def state_dict(self):
        d = super().state_dict()
        d["after"] = None if self.after is None else self.after.state_dict()
        return d

    def load_state_dict(self, d):
        if (d.get("after") is None) != (self.after is None):
            raise ValueError("saved LinearWarmup state and this one differ in having an 'after' schedule")
        if self.after is not None:
            self.after.load_state_dict(d["after"])
        super().load_state_dict(d)


class LinearStepDecay(LRSchedule):
    """A staircase from ``lr_start`` down to ``lr_end`` in ``n_steps`` equal decreases.

    With its defaults (1.5e-5 → 5e-6 in 10 steps) it is the schedule of the 2019
    campus-cat report's AlexNet (``nabi experiment --recipe alexnet336-2019``).

    Piecewise constant. The run of ``total_steps`` steps (epochs or iterations,
    whichever the caller steps it by) is split into ``n_steps + 1`` equal phases;
    step ``t`` is in phase ``k = min(n_steps, t * (n_steps + 1) // total_steps)``
    and uses ``lr = lr_start + (lr_end - lr_start) * k / n_steps``. So the first
    phase uses ``lr_start``, the last ``lr_end``, with ``n_steps`` equal decreases
    in between; past ``total_steps`` it stays at ``lr_end``. The optimizer's own
    ``lr`` is replaced by ``lr_start``. Needs ``total_steps >= n_steps + 1``.
    """

    def __init__(self, optimizer, total_steps: int, lr_start: float = 1.5e-5, lr_end: float = 5e-6,
                 n_steps: int = 10):
        total_steps, n_steps = int(total_steps), int(n_steps)
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        if total_steps < n_steps + 1:
            raise ValueError(f"LinearStepDecay needs total_steps >= n_steps + 1 = {n_steps + 1} to make "
                             f"{n_steps} decreases, got total_steps={total_steps} (step it per iteration "
                             "instead of per epoch, or lower n_steps)")
        self.total_steps = total_steps
        self.lr_start = float(lr_start)
        self.lr_end = float(lr_end)
        self.n_steps = n_steps
        super().__init__(optimizer)
        self.base_lr = self.lr_start

    def phase(self, t: int) -> int:
        return min(self.n_steps, max(0, int(t)) * (self.n_steps + 1) // self.total_steps)

    def get_lr(self, t):
        k = self.phase(t)
        if k == self.n_steps:
            return self.lr_end
        return self.lr_start + (self.lr_end - self.lr_start) * k / self.n_steps

    def _config(self):
        return {"total_steps": self.total_steps, "lr_start": self.lr_start, "lr_end": self.lr_end,
                "n_steps": self.n_steps}


class OneCycleLR(LRSchedule):
    """The one-cycle learning rate of Smith & Topin (2019), "Super-convergence: very fast training of neural
    networks using large learning rates": up from ``max_lr / div_factor`` to ``max_lr`` (the optimizer's
    ``lr``) over the first ``pct_start`` of the run, then down to ``max_lr / div_factor / final_div_factor``,
    each half a cosine. The values of ``torch.optim.lr_scheduler.OneCycleLR(anneal_strategy='cos',
    three_phase=False)``; the momentum is not cycled (torch's ``cycle_momentum=False``).

    With ``lr_0 = max_lr / div_factor``, ``lr_min = lr_0 / final_div_factor``, ``a = pct_start * total_steps - 1``
    and ``b = total_steps - 1``::

        lr(t) = max_lr + (lr_0 - max_lr) * (1 + cos(pi * t / a)) / 2                  for t <= a
        lr(t) = lr_min + (max_lr - lr_min) * (1 + cos(pi * (t - a) / (b - a))) / 2    for a < t <= b

    and ``lr_min`` past ``b`` (torch refuses to step that far). Needs ``a > 0`` and ``b > a``.
    """

    def __init__(self, optimizer, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
                 final_div_factor: float = 1e4):
        total_steps, pct_start = int(total_steps), float(pct_start)
        self.check(total_steps, pct_start)
        if div_factor <= 0 or final_div_factor <= 0:
            raise ValueError(f"div_factor and final_div_factor must be positive, got {div_factor}, "
                             f"{final_div_factor}")
        self.total_steps, self.pct_start = total_steps, pct_start
        self.div_factor, self.final_div_factor = float(div_factor), float(final_div_factor)
        super().__init__(optimizer)

    @staticmethod
    def check(total_steps: int, pct_start: float) -> None:
        """``ValueError`` unless ``0 < pct_start < 1`` and ``0 < a < b`` (a rise and a fall of a step or more)."""
        if not 0 < pct_start < 1:
            raise ValueError(f"one_cycle's rising share (pct_start, --warmup-fraction) must be in (0, 1), got "
                             f"{pct_start:g}")
        if not 0 < pct_start * total_steps - 1 < total_steps - 1:
            raise ValueError(f"one_cycle needs its rising share × the run's steps above 1 and below the steps (a "
                             f"rise and a fall of at least one step each); got {pct_start:g} × {total_steps}: train "
                             f"longer or change the share")

    def get_lr(self, t):
        top = self.base_lr
        lr0 = top / self.div_factor
        low = lr0 / self.final_div_factor
        a, b = self.pct_start * self.total_steps - 1, self.total_steps - 1
        t = int(t)
        if t <= a:
            return top + (lr0 - top) * (1.0 + math.cos(math.pi * t / a)) / 2.0
        if t <= b:
            return low + (top - low) * (1.0 + math.cos(math.pi * (t - a) / (b - a))) / 2.0
        return low

    def _config(self):
        return {"total_steps": self.total_steps, "pct_start": self.pct_start, "div_factor": self.div_factor,
                "final_div_factor": self.final_div_factor}


def _warmup_cosine(optimizer, warmup_steps: int, T_max: int | None = None, eta_min: float = 0.0,
                   total_steps: int | None = None):
    """Linear warm-up for ``warmup_steps``, then cosine annealing over ``T_max``
    (default ``total_steps - warmup_steps``) down to ``eta_min``."""
    if T_max is None:
        if total_steps is None:
            raise TypeError("warmup_cosine needs T_max (cosine length) or total_steps (warm-up included)")
        T_max = int(total_steps) - int(warmup_steps)
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, int(T_max)), eta_min=eta_min)
    return LinearWarmup(optimizer, warmup_steps, after=cosine)


def _cosine(optimizer, T_max: int | None = None, eta_min: float = 0.0, total_steps: int | None = None):
    if T_max is None:
        if total_steps is None:
            raise TypeError("cosine needs T_max (or total_steps)")
        T_max = total_steps
    return CosineAnnealingLR(optimizer, T_max=T_max, eta_min=eta_min)


SCHEDULES = {
    "constant": ConstantLR,
    "step": StepLR,
    "cosine": _cosine,
    "linear_step": LinearStepDecay,
    "warmup_cosine": _warmup_cosine,
    "one_cycle": OneCycleLR,
}


RENAMED_SCHEDULES = {"seed2019": "linear_step"}
"""Schedules that were renamed: the old name still works, with a FutureWarning (``nabi train --schedule`` too)."""


def make_schedule(name: str, optimizer, **kw) -> LRSchedule:
    """Build a schedule by name: 'constant', 'step', 'cosine', 'warmup_cosine', 'linear_step' or 'one_cycle'.

    Keyword arguments go to the class (``cosine`` and ``warmup_cosine`` also take
    ``total_steps`` in place of ``T_max``).
    """
    if name in RENAMED_SCHEDULES:
        import warnings
        warnings.warn(f"schedule {name!r} is now called {RENAMED_SCHEDULES[name]!r}; the old name will be removed",
                      FutureWarning, stacklevel=2)
        name = RENAMED_SCHEDULES[name]
    try:
        factory = SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}") from None
    return factory(optimizer, **kw)


def __getattr__(name):
    """``SeedStepDecay``: the old name of :class:`LinearStepDecay` (warns)."""
    if name == "SeedStepDecay":
        import warnings
        warnings.warn("SeedStepDecay is now called LinearStepDecay", FutureWarning, stacklevel=2)
        return LinearStepDecay
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
