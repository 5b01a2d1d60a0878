"""Model registry: ``register(name)``, ``get(name, **kwargs)``, ``names()``, ``count_parameters``.

Every registered builder returns a model built only from nabi layers and the
generic containers, and records on it

    model.arch        {'name': <registry name>, 'kwargs': {every argument, defaults filled in}}
    model.input_size  (C, H, W) the network is designed for

so ``get(model.arch['name'], **model.arch['kwargs'])`` rebuilds it.

Top-level networks are ``Network``: a ``Sequential`` (``isinstance(m, Sequential)``
holds; forward and backward are Sequential's) whose forward re-raises a layer's
``ValueError`` prefixed with the model name and the dotted path of the failing
layer, e.g. ``alexnet: layer 'features.6' (MaxPool2d) failed on an input of
shape (1, 3, 32, 32): MaxPool2d(k=(3, 3), …): input … is too small …``.
"""
from __future__ import annotations

import functools
import inspect
from collections import OrderedDict

import numpy as np

from .. import backend
from ..layers import Sequential

_REGISTRY: "OrderedDict[str, callable]" = OrderedDict()


def _normalise(name: str) -> str:
    return str(name).strip().lower().replace("-", "_")


def records_arch(name: str):
    """Decorator: the builder's model gets ``model.arch = {'name': name, 'kwargs': {...}}``."""
    def deco(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def builder(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            model = fn(*args, **kwargs)
            model.arch = {"name": name, "kwargs": dict(bound.arguments)}
            return model
        return builder
    return deco


def register(name: str, replace: bool = False):
    """Decorator registering a builder under ``name`` (and recording ``model.arch``).

    A second builder under the same name is a ``ValueError`` unless ``replace=True``.
    """
    key = _normalise(name)

    def deco(fn):
        if key in _REGISTRY and not replace:
            raise ValueError(f"model {key!r} is already registered (pass replace=True to override)")
        builder = records_arch(key)(fn)
        _REGISTRY[key] = builder
        return builder
    return deco


def names():
    """Sorted names of every registered model."""
    return sorted(_REGISTRY)


def builder(name: str):
    """The registered builder function for ``name`` (``ValueError`` listing the known names)."""
    key = _normalise(name)
    if key in _REGISTRY:
        return _REGISTRY[key]
    squashed = {k.replace("_", ""): k for k in _REGISTRY}      # 'ResNet-18', 'resnet_18' → 'resnet18'
    alias = squashed.get(key.replace("_", ""))
    if alias is not None:
        return _REGISTRY[alias]
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(names())}")


def get(name: str, **kwargs):
    """Build the registered model ``name`` with ``kwargs`` (e.g. ``num_classes=10``).

    Case, '-' and '_' are ignored in ``name``: 'ResNet-18' is 'resnet18'.
    """
    return builder(name)(**kwargs)


def with_defaults(arch):
    """``arch`` (``{'name', 'kwargs'}``, as a model or a sidecar records it) with every argument its builder
    declares and the record lacks filled in from the builder's defaults. A network recorded by an older nabi,
    before an argument existed (``drop_path``, ``pool``), then reads as the same network recorded now.
    An unknown name or a record of another shape is returned as it is."""
    if not isinstance(arch, dict) or not isinstance(arch.get("kwargs"), dict):
        return arch
    try:
        fn = builder(arch.get("name"))
    except ValueError:
        return arch
    params = inspect.signature(fn).parameters
    filled = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    filled.update(arch["kwargs"])
    return {**arch, "kwargs": filled}


def same_architecture(a, b) -> bool:
    """Whether two architecture records describe the same network (``with_defaults`` on both)."""
    return with_defaults(a) == with_defaults(b)


def _shape_only(shape, rng=None, fan_in=None):
    """An initialiser that allocates nothing: a read-only zero-stride view of one zero."""
    return np.broadcast_to(np.zeros((), dtype=backend.get_default_dtype()), shape)


def count_parameters(name: str, **kwargs) -> int:
    """Number of trainable parameters of ``get(name, **kwargs)`` without allocating the weights.

    Weights are built as zero-stride views (``init`` is overridden), so even VGG-19
    (143 M parameters) counts in milliseconds; the model itself is thrown away.
    """
    kwargs["init"] = _shape_only
    return int(get(name, **kwargs).num_parameters())


# -- clear errors ------------------------------------------------------------------

def failing_layer(model, exc):
    """``(path, module)`` of the deepest module of ``model`` on ``exc``'s traceback, or ``(None, None)``."""
    by_id = {id(m): n for n, m in model.named_modules()}
    found = (None, None)
    tb = exc.__traceback__
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if obj is not None and id(obj) in by_id and obj is not model:
            found = (by_id[id(obj)], obj)
        tb = tb.tb_next
    return found


def located_error(model, exc, x):
    """A ``ValueError`` naming the model, the failing layer's path and the input shape."""
    path, module = failing_layer(model, exc)
    arch = getattr(model, "arch", None)
    label = arch["name"] if arch else type(model).__name__
    where = f"layer '{path}' ({type(module).__name__})" if path else "a layer"
    hint = ""
    size = getattr(model, "input_size", None)
    if size is not None:
        hint = f" [{label} is designed for inputs (N, {', '.join(str(s) for s in size)})]"
    shape = tuple(getattr(x, "shape", ()))
    return ValueError(f"{label}: {where} failed on an input of shape {shape}: {exc}{hint}")


class Network(Sequential):
    """A whole model: a ``Sequential`` of named stages whose errors name the failing layer's path."""

    def eval_chain(self):
        """The modules applied in eval order (for the ONNX exporter): the stages, in order."""
        return list(self)

    def forward(self, x):
        try:
            return Sequential.forward(self, x)
        except ValueError as exc:
            raise located_error(self, exc, x) from exc


def set_input_size(model, size: int) -> int:
    """Train a size-agnostic model (global pooling before its classifier) at ``size``×``size``.

    A probe forward on zeros checks that the network accepts it; one that cannot (a fixed
    ``Linear`` after the convolutions, a map that vanishes) is a ``ValueError`` naming the model.
    """
    C = model_input_size(model)[0]
    xp = backend.array_module(model.device)
    was_training = model.training
    model.eval()
    try:
        model(xp.zeros((1, C, size, size), dtype=backend.get_default_dtype()))
    except ValueError as e:
        name = (getattr(model, "arch", None) or {}).get("name", type(model).__name__)
        raise ValueError(f"--image-size {size}: {name} cannot take {size}×{size} inputs (it is built for "
                         f"{model_input_size(model)[1]}×{model_input_size(model)[2]}): {e}") from None
    finally:
        model.train(was_training)
    model.input_size = (C, size, size)
    return size


def model_input_size(model):
    size = getattr(model, "input_size", None)
    if size is None:
        raise ValueError(f"model {type(model).__name__} has no input_size; set model.input_size = (C, H, W)")
    return tuple(int(s) for s in size)
