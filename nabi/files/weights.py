"""Deprecated path: weight files live in ``nabi.files.weight_files``; save and load a model with
``nabi.save_model`` and ``nabi.load_model`` (or ``nabi.files.save_weights``/``load_weights``).

Every name still resolves here, with a ``DeprecationWarning`` naming the new path.
"""
import warnings as _warnings

_TOP_LEVEL = {"save_model": "nabi.save_model", "load_model_weights": "nabi.load_model", "load_model": "nabi.load_model"}


def __getattr__(name):
    from . import weight_files
    try:
        value = getattr(weight_files, "load_model" if name == "load_model_weights" else name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    where = _TOP_LEVEL.get(name, f"nabi.files.weight_files.{name}" if name.startswith("_") else f"nabi.files.{name}")
    _warnings.warn(f"nabi.files.weights is deprecated: use {where} (the old path will be removed)",
                   DeprecationWarning, stacklevel=2)
    return value


def __dir__():
    from . import weight_files
    return dir(weight_files)
