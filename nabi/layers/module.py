"""``Parameter`` and the ``Module`` base class.

A module runs ``y = m(x)`` forward, keeps what its backward needs, and
``dx = m.backward(dy)`` returns the gradient with respect to its input while
adding each parameter's gradient into ``param.grad``. There is no autograd
tape: containers (``Sequential``, ``Residual``, ``Concat``) call their
children's ``backward`` in reverse order themselves.

Threads: an eval-mode forward (``model.eval()``) computes from the input, the parameters
and the buffers only. What a layer records for a backward is written only in training or
with ``set_keep_cache`` (Conv2d, Linear, pooling), or is never read by a forward (the
element-wise layers' and batch norm's last output), and the buffers a convolution
reuses belong to the calling thread. So one model may serve predictions from several
threads at once, each getting exactly what a serial call returns
(``tests/test_threads.py``). Training, or ``set_keep_cache(True)``, is one thread's job.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import backend
from ..summary import summary as _summary


class Parameter:
    """A trainable array ``data`` and its accumulated gradient ``grad`` (same shape).

    The gradient buffer is allocated once and reused: ``zero_grad`` only marks it
    stale, and the next backward writes straight into it (no 400 MB memset or
    page-faulting fresh buffer for AlexNet's fc6); reading ``grad`` before that
    gives zeros, as expected.
    """

    __slots__ = ("data", "_grad", "_stale")

    def __init__(self, data):
        self.data = data
        self._grad = None
        self._stale = False

    @property
    def grad(self):
        if self._stale:
            self._grad.fill(0)
            self._stale = False
        return self._grad

    @grad.setter
    def grad(self, value):
        self._grad = value
        self._stale = False

    @property
    def shape(self):
        return self.data.shape

    @property
    def size(self):
        return int(self.data.size)

    def accumulate(self, g, owned: bool = False) -> None:
        """``grad += g`` (``grad = g`` into the kept buffer after ``zero_grad``).

        ``owned``: g is a fresh array nobody else holds, so the first gradient may simply
        become the buffer (no copy: for AlexNet's fc6 that is 420 MB less at the first step).
        """
        if self._grad is None or self._grad.shape != g.shape:
            self._grad = g.astype(self.data.dtype, copy=not (owned and g.dtype == self.data.dtype
                                                              and g.flags.c_contiguous))
        elif self._stale:
            self._grad[...] = g
        else:
            self._grad += g
        self._stale = False

    def overwrite_buffer(self, dtype):
        """The kept gradient buffer when the next gradient may simply be written into it, else None.

        A caller that gets a buffer must fill all of it (it is then no longer stale).
        """
        g = self._grad
        if g is not None and self._stale and g.dtype == dtype and g.flags.c_contiguous:
            self._stale = False
            return g
        return None

    def zero_grad(self) -> None:
        if self._grad is not None:
            self._stale = True

    def __repr__(self):
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype})"


class Module:
    """Base class of every layer and network.

    Subclasses set parameters, buffers (non-trained state such as batch-norm
    running statistics, registered with ``register_buffer``) and child modules
    as attributes, and implement ``forward(x)`` and ``backward(dy)``.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # -- registration -------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() before setting attributes")
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, array) -> None:
        """A saved, non-trained array (shown in ``state_dict``, moved by ``to``)."""
        self._buffers[name] = True
        object.__setattr__(self, name, array)

    # -- running -------------------------------------------------------
    _forward_hooks = ()   # an instance's own tuple once a hook is added (see ``add_forward_hook``)

    def __call__(self, x):
        hooks = self._forward_hooks
        if not hooks:
            return self.forward(x)
        run = self.forward
        for hook in hooks:
            run = _hooked(hook, self, run)
        return run(x)

    def add_forward_hook(self, hook):
        """Run ``hook(module, forward, x)`` in place of ``forward(x)`` when the module is called;
        the hook calls ``forward(x)`` itself and returns the output (so it can see the input, the
        output and any error). Returns a function that removes the hook.

        A container never fuses a hooked layer with its neighbour (``Sequential`` fuses Conv2d +
        ReLU), so the hook sees exactly this layer's own output. The tuple of hooks is replaced,
        never changed in place, so a saved ``__dict__`` restores it (``summary.preserved_eval``).
        """
        object.__setattr__(self, "_forward_hooks", tuple(self._forward_hooks) + (hook,))

        def remove():
            object.__setattr__(self, "_forward_hooks", tuple(h for h in self._forward_hooks if h is not hook))
        return remove

    @property
    def has_forward_hooks(self) -> bool:
        return bool(self._forward_hooks)

    def forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} has no forward")

    def backward(self, dy):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} has no backward")

    fresh_output = False
    """True when ``forward`` always returns a new array that nothing the module keeps refers to, so a container
    may add into it in place (``Residual``)."""

    fresh_input_grad = False
    """True when ``backward`` always returns a new array that nothing the module keeps refers to."""

    keep_cache = False  # keep backward caches in eval mode too (Grad-CAM, gradient checks)

    def set_keep_cache(self, flag: bool = True):
        """Let ``backward`` run after an eval-mode forward (caches are otherwise dropped in eval)."""
        for m in self.modules():
            object.__setattr__(m, "keep_cache", bool(flag))
        return self

    def _keeps_cache(self) -> bool:
        """Whether a forward keeps what backward needs: in training, or when asked (``set_keep_cache``).
        An eval-mode forward otherwise writes nothing to the module, so threads may share it."""
        return self.training or self.keep_cache

    def _store_cache(self, cache) -> None:
        """``self._cache = cache`` when ``_keeps_cache()``; otherwise drop an older cache (once), so a
        backward after an eval-mode forward fails clearly instead of using a stale cache."""
        if self._keeps_cache():
            self._cache = cache
        elif getattr(self, "_cache", None) is not None:
            self._cache = None

    # -- the input gradient ----------------------------------------------
    def input_layer(self):
        """The layer that first sees this module's input and can skip ∂L/∂input, or None.
        Containers whose first child alone sees the input (``Sequential``) pass it on."""
        return None

    def set_input_grad(self, flag: bool = True):
        """Whether ``backward`` computes ∂L/∂input (the default). ``set_input_grad(False)`` tells
        the layer that sees the input (``input_layer()``) to skip it: training never uses the image
        gradient, and for AlexNet's first convolution it is a GEMM and a col2im per step. Backward
        then returns None. Returns the layer told, or None when no layer can skip it (the
        gradient is then still computed)."""
        layer = self.input_layer()
        if layer is not None:
            layer.compute_input_grad = bool(flag)
        return layer

    frozen = False
    """True on every module of a frozen stage (``nabi.training.fine_tune.freeze_until``): ``train()``
    leaves it in eval mode (batch norm keeps its running statistics, dropout is off), and containers do
    not run its backward: freezing is a prefix of the network, so a frozen child and every child
    before it get no gradient."""

    def train(self, mode: bool = True):
        """Training mode for every module (eval mode with ``mode=False``); frozen modules stay in eval."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode) and not m.frozen)
        return self

    def eval(self):
        return self.train(False)

    # -- walking the tree ------------------------------------------------
    def children(self):
        return iter(self._modules.values())

    def named_modules(self, prefix: str = ""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix: str = ""):
        """Yield ``(name, Parameter)`` in a fixed order, names as PyTorch spells them (``0.weight``)."""
        for mname, m in self.named_modules(prefix):
            for pname, p in m._parameters.items():
                yield (f"{mname}.{pname}" if mname else pname), p

    def parameters(self):
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix: str = ""):
        for mname, m in self.named_modules(prefix):
            for bname in m._buffers:
                yield (f"{mname}.{bname}" if mname else bname), getattr(m, bname)

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.zero_grad()

    # -- device ----------------------------------------------------------
    def to(self, device: str):
        """Move every parameter, gradient and buffer to ``'cpu'`` or ``'gpu'`` (in place)."""
        backend.check_device(device)
        for m in self.modules():
            for p in m._parameters.values():
                p.data = backend.to_device(p.data, device)
                if p.grad is not None:
                    p.grad = backend.to_device(p.grad, device)
            for bname in m._buffers:
                object.__setattr__(m, bname, backend.to_device(getattr(m, bname), device))
            m._on_device_change(device)
        return self

    def _on_device_change(self, device: str) -> None:
        """Hook for modules that cache device-specific state."""

    @property
    def device(self) -> str:
        for p in self.parameters():
            return backend.device_of(p.data)
        for _, b in self.named_buffers():
            return backend.device_of(b)
        return "cpu"

    # -- saving ------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Name → host (NumPy) copy of every parameter and buffer; the model stays where it is."""
        out = OrderedDict()
        for mname, m in self.named_modules():
            for pname, p in m._parameters.items():
                out[f"{mname}.{pname}" if mname else pname] = backend.to_numpy(p.data).copy()
            for bname in m._buffers:
                out[f"{mname}.{bname}" if mname else bname] = np.array(backend.to_numpy(getattr(m, bname)))
        return out

    def load_state_dict(self, state, strict: bool = True) -> dict:
        """Copy arrays from ``state`` (name → array) into this module, on its own device and dtype.

        Returns ``{'missing': [...], 'unexpected': [...], 'mismatched': [...]}``.
        With ``strict=True`` any of those raises a ``KeyError`` listing them all,
        and nothing is changed; with ``strict=False`` what fits is loaded.
        """
        targets = OrderedDict()
        for mname, m in self.named_modules():
            for pname in m._parameters:
                targets[f"{mname}.{pname}" if mname else pname] = (m, pname, "param")
            for bname in m._buffers:
                targets[f"{mname}.{bname}" if mname else bname] = (m, bname, "buffer")
        missing = [k for k in targets if k not in state]
        # PyTorch's BatchNorm counts its batches in ``num_batches_tracked``; nabi has no use for it.
        unexpected = [k for k in state if k not in targets and not k.endswith("num_batches_tracked")]
        mismatched = []
        for k, (m, name, kind) in targets.items():
            if k in state:
                cur = m._parameters[name].data if kind == "param" else getattr(m, name)
                if tuple(np.shape(state[k])) != tuple(cur.shape):
                    mismatched.append(f"{k}: file has {tuple(np.shape(state[k]))}, model needs {tuple(cur.shape)}")
        report = {"missing": missing, "unexpected": unexpected, "mismatched": mismatched}
        if strict and (missing or unexpected or mismatched):
            lines = [f"{label}: {', '.join(items)}" for label, items in
                     (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)) if items]
            raise KeyError("state_dict does not fit " + type(self).__name__ + "; " + "; ".join(lines))
        bad = {s.split(":")[0] for s in mismatched}
        for k, (m, name, kind) in targets.items():
            if k not in state or k in bad:
                continue
            cur = m._parameters[name].data if kind == "param" else getattr(m, name)
            xp = backend.get_array_module(cur)
            value = xp.asarray(backend.to_numpy(state[k]) if xp is np else state[k]).astype(cur.dtype, copy=True)
            if kind == "param":
                m._parameters[name].data = value
            else:
                object.__setattr__(m, name, value)
        return report

    # -- display -----------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        if self._modules:
            for name, child in self._modules.items():
                child_repr = repr(child).replace("\n", "\n  ")
                lines.append(f"  ({name}): {child_repr}")
            return "\n".join(lines) + "\n)"
        return lines[0] + ")"

    def summary(self, input_shape, batch_size: int = 1, file=None):
        """Print a per-layer table (shapes, parameters, MACs); see ``nabi.summary``."""
        return _summary(self, input_shape, batch_size=batch_size, file=file)

    # What ``nabi.summary`` shows of a layer (layers with a kernel, MACs or an activation override).
    def summary_geometry(self):
        """(kernel, stride, padding, text) of a layer with a window; Nones and '' otherwise."""
        return None, None, None, ""

    def summary_macs(self, x_shape, y_shape) -> int:
        """Multiply–accumulates of one call (torchvision/ptflops convention); 0 for most layers."""
        return 0

    def summary_activation(self):
        """The name of the activation function this layer applies, or None."""
        return None


def _hooked(hook, module, forward):
    return lambda x: hook(module, forward, x)
