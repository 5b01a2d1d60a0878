"""Containers without an autograd tape: ``Sequential``, ``Residual``, ``Concat``.

Each container calls its children's ``backward`` itself, in reverse order:

    Sequential  y = f_n(…f_1(x))            dx = f_1'(…f_n'(δ))
    Residual    y = body(x) + shortcut(x)   dx = body.backward(δ) + shortcut.backward(δ)
                (the body's layer + ReLU pairs fused as in Sequential)
                (identity shortcut when ``shortcut`` is None: dx = body.backward(δ) + δ); each sum is
                added in place into the body's array when its module says that array is its own
                (``fresh_output``, ``fresh_input_grad``): no extra activation-sized array per block; a ReLU
                after the sum is then written over it too (``ReLU.forward_inplace``)
    Concat      y = [b_1(x), …, b_k(x)] on channels (axis 1)
                dx = Σ_i b_i.backward(δ[:, channels of b_i])
"""
from __future__ import annotations

from collections import OrderedDict

from ..backend import get_array_module
from .module import Module


def _named(args, kind):
    if len(args) == 1 and isinstance(args[0], (dict, OrderedDict)):
        items = list(args[0].items())
    else:
        items = [(str(i), m) for i, m in enumerate(args)]
    for name, m in items:
        if not isinstance(m, Module):
            raise TypeError(f"{kind}: item {name!r} is a {type(m).__name__}, not a nabi Module")
    return items


def _fusable(layer, relu):
    """A layer that ``fuses_relu`` (Conv2d, batch norm) followed by a ``fusable_relu`` (ReLU), in the same
    mode, neither with a forward hook (summary, Grad-CAM and shape probes hook single layers and must
    see them run one by one)."""
    return (getattr(layer, "fuses_relu", False) and getattr(relu, "fusable_relu", False)
            and layer.training == relu.training and not layer.has_forward_hooks and not relu.has_forward_hooks)


def _run_chain(mods, x, fuse):
    """``x`` through ``mods`` in order, each fusable layer + ReLU pair as one step when ``fuse``.
    Returns ``(y, fused)``: the places of the ReLUs that ran inside the layer before them."""
    fused = set()
    i = 0
    while i < len(mods):
        m = mods[i]
        if fuse and i + 1 < len(mods) and _fusable(m, mods[i + 1]):
            y = m.forward(x, relu=True)
            x = mods[i + 1].take_fused_output(y) if mods[i + 1]._keeps_cache() else y
            fused.add(i + 1)
            i += 2
            continue
        x = m(x)
        i += 1
    return x, fused


def _backward_chain(mods, dy, fused, stop_at_frozen):
    """The children's backward in reverse order (``_run_chain``'s ``fused`` pairs as one: the ReLU's output
    handed to the layer before it, which applies the mask). ``stop_at_frozen``: stop (return None) at a
    frozen child or when a child returned None."""
    i = len(mods) - 1
    while i >= 0:
        if stop_at_frozen and (dy is None or mods[i].frozen or (i in fused and mods[i - 1].frozen)):
            return None
        if i in fused:
            dy = mods[i - 1].backward(dy, relu_y=mods[i].release_fused_output())
            i -= 2
            continue
        dy = mods[i].backward(dy)
        i -= 1
    return dy


class Sequential(Module):
    """Layers run in order; children are named ``0``, ``1``, … (or by an ``OrderedDict``)."""

    def __init__(self, *layers):
        super().__init__()
        for name, m in _named(layers, "Sequential"):
            setattr(self, name, m)

    def __getitem__(self, i):
        mods = list(self._modules.values())
        if isinstance(i, slice):
            return Sequential(OrderedDict(list(self._modules.items())[i]))
        return mods[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, m):
        setattr(self, str(len(self._modules)), m)
        return self

    fuse = True
    """Run a ``Conv2d`` or a batch norm followed by a ``ReLU`` as one step: the ReLU is applied as the
    layer writes its output, and its mask as the layer's backward reads δ (two fewer passes over the
    activation). The result is the same (to the order of a sum); ``fuse = False`` runs them one by one."""

    def input_layer(self):
        return next(iter(self._modules.values())).input_layer() if self._modules else None

    def forward(self, x):
        x, fused = _run_chain(list(self._modules.values()), x, self.fuse)
        if self._keeps_cache():
            self._fused = fused
        return x

    def backward(self, dy):
        """Children's backward in reverse order. Stops (returns None) at a frozen child (``Module.frozen``:
        it and every child before it are frozen) or when a child returned None (it skipped ∂L/∂input,
        ``set_input_grad``): nothing below needs a gradient then."""
        return _backward_chain(list(self._modules.values()), dy, getattr(self, "_fused", set()), True)


class Residual(Module):
    """y = after(body(x) + shortcut(x)); identity shortcut when ``shortcut`` is None.

    ``body`` is a Module, or an ordered dict of modules run in order and registered
    under their own names (so a ResNet block's weights are ``conv1.weight``,
    ``bn1.weight``… as torchvision names them). ``shortcut_name`` names the
    projection (torchvision: ``downsample``); ``after`` (e.g. ``ReLU()``) runs on
    the sum.
    """

    def __init__(self, body, shortcut=None, after=None, shortcut_name="shortcut"):
        super().__init__()
        if isinstance(body, (dict, OrderedDict)):
            items = _named((body,), "Residual")
        else:
            items = _named((body,), "Residual") if not isinstance(body, Module) else [("body", body)]
        for name, m in items:
            setattr(self, name, m)
        self._body_names = [name for name, _ in items]
        self._shortcut_name = shortcut_name if shortcut is not None else None
        if shortcut is not None:
            setattr(self, shortcut_name, shortcut)
        if after is not None:
            self.after = after
        self._has_after = after is not None

    def append_to_body(self, name, module):
        """Run ``module`` (registered as ``name``) on the body's output, before the addition.

        Used to add stochastic depth (``DropPath``) to a built block; the module is listed
        after the body's others and before the shortcut and ``after``.
        """
        if name in self._modules or hasattr(type(self), name):
            raise ValueError(f"Residual: {name!r} is already taken in this block; give the new body module "
                             f"another name")
        setattr(self, name, module)
        self._body_names.append(name)
        for later in ([self._shortcut_name] if self._shortcut_name else []) + (["after"] if self._has_after else []):
            self._modules.move_to_end(later)

    @property
    def body_modules(self):
        return [self._modules[n] for n in self._body_names]

    @property
    def shortcut_module(self):
        return self._modules[self._shortcut_name] if self._shortcut_name else None

    fuse = True
    """Fuse a body layer and the ReLU after it (batch norm + ReLU in a ResNet block), as ``Sequential.fuse``."""

    def forward(self, x):
        y, fused = _run_chain(self.body_modules, x, self.fuse)
        if self._keeps_cache():
            self._fused = fused
        sc = self.shortcut_module
        s = sc(x) if sc is not None else x
        if y.shape != s.shape:
            raise ValueError(f"Residual: body output {tuple(y.shape)} and shortcut output {tuple(s.shape)} differ; "
                             f"give a projection shortcut (e.g. a 1×1 Conv2d with the body's stride)")
        body = self.body_modules
        last = body[-1] if body else None
        if (last is not None and last.fresh_output and not last.has_forward_hooks and y is not x and y is not s
                and y.dtype == get_array_module(y).result_type(y, s)):
            y += s                      # the body's own new array (batch norm's output), seen by no hook
            out = y
            after = self.after if self._has_after else None
            if (after is not None and not after.has_forward_hooks and hasattr(after, "forward_inplace")
                    and out.flags.c_contiguous):
                return after.forward_inplace(out)       # and the ReLU after it written over it: no new array
        else:
            out = y + s
        return self.after(out) if self._has_after else out

    def backward(self, dy):
        if self._has_after:
            dy = self.after.backward(dy)
        dx = _backward_chain(self.body_modules, dy, getattr(self, "_fused", set()), False)
        sc = self.shortcut_module
        ds = sc.backward(dy) if sc is not None else dy
        if dx is None:
            return ds
        body = self.body_modules
        if body and body[0].fresh_input_grad and dx is not dy and dx is not ds and dx.dtype == get_array_module(
                dx).result_type(dx, ds):
            dx += ds                    # the first layer's own new array (a convolution's ∂L/∂x)
            return dx
        return dx + ds


class Concat(Module):
    """Run every branch on the same input and join the outputs on channels (Inception)."""

    def __init__(self, *branches, axis=1):
        super().__init__()
        for name, m in _named(branches, "Concat"):
            setattr(self, name, m)
        self.axis = axis
        self._sizes = None

    def forward(self, x):
        outs = [m(x) for m in self._modules.values()]
        xp = get_array_module(*outs)
        self._sizes = [o.shape[self.axis] for o in outs]
        ref = outs[0].shape
        for name, o in zip(self._modules, outs):
            if o.shape[:self.axis] != ref[:self.axis] or o.shape[self.axis + 1:] != ref[self.axis + 1:]:
                raise ValueError(f"Concat: branch {name!r} gives {tuple(o.shape)}, the first gives {tuple(ref)}; "
                                 f"all but axis {self.axis} must agree")
        return xp.concatenate(outs, axis=self.axis)

    def backward(self, dy):
        dx = None
        start = 0
        for m, size in zip(self._modules.values(), self._sizes):
            index = [slice(None)] * dy.ndim
            index[self.axis] = slice(start, start + size)
            start += size
            g = m.backward(dy[tuple(index)])
            dx = g if dx is None else dx + g
        return dx
