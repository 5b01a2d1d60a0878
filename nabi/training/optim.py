"""Deprecated path: the optimisers and schedules live in ``nabi.optim`` (``from nabi.optim import SGD``).

Every name still resolves here, with a ``DeprecationWarning`` naming the new path.
"""
import warnings as _warnings


def __getattr__(name):
    from .. import optim
    try:
        value = getattr(optim, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    _warnings.warn(f"nabi.training.optim is now nabi.optim: import {name} from nabi.optim "
                   f"(the old path will be removed)", DeprecationWarning, stacklevel=2)
    return value


def __dir__():
    from .. import optim
    return dir(optim)
