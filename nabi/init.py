"""Weight initialisers. Each fills a new array of ``shape`` from a NumPy generator.

fan_in n_in = C·KH·KW for a conv weight (F, C, KH, KW), in_features for a
linear weight (out, in); fan_out = F·KH·KW or out_features.

    he_uniform      U(−√(6/n_in), +√(6/n_in))          (He et al., 2015)
    he_normal       N(0, 2/n_in)
    xavier_uniform  U(−√(6/(n_in+n_out)), +√(6/(n_in+n_out)))
    xavier_normal   N(0, 2/(n_in+n_out))
    gaussian(σ)     N(0, σ²)                            (Caffe's "gaussian" filler)
    constant(v)     v
    torch_default   U(−1/√n_in, +1/√n_in)  (PyTorch's default for Conv2d/Linear weights and biases)
"""
from __future__ import annotations

import math

import numpy as np

from . import backend


def fans(shape):
    if len(shape) < 2:
        n = int(shape[0]) if shape else 1
        return n, n
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return int(shape[1]) * receptive, int(shape[0]) * receptive


def he_uniform(shape, rng, fan_in=None):
    fan_in = fan_in or fans(shape)[0]
    bound = math.sqrt(6.0 / fan_in)
    return rng.uniform(-bound, bound, size=shape)


def he_normal(shape, rng, fan_in=None):
    fan_in = fan_in or fans(shape)[0]
    return rng.normal(0.0, math.sqrt(2.0 / fan_in), size=shape)


def xavier_uniform(shape, rng, fan_in=None):
    fi, fo = fans(shape)
    bound = math.sqrt(6.0 / (fi + fo))
    return rng.uniform(-bound, bound, size=shape)


def xavier_normal(shape, rng, fan_in=None):
    fi, fo = fans(shape)
    return rng.normal(0.0, math.sqrt(2.0 / (fi + fo)), size=shape)


def torch_default(shape, rng, fan_in=None):
    fan_in = fan_in or fans(shape)[0]
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape)


def zeros(shape, rng=None, fan_in=None):
    return np.zeros(shape)


def ones(shape, rng=None, fan_in=None):
    return np.ones(shape)


def gaussian(std=0.01):
    def init(shape, rng, fan_in=None):
        return rng.normal(0.0, std, size=shape)
    init.__name__ = f"gaussian({std})"
    return init


def constant(value):
    def init(shape, rng=None, fan_in=None):
        return np.full(shape, float(value))
    init.__name__ = f"constant({value})"
    return init


INITIALISERS = {
    "he_uniform": he_uniform, "he_normal": he_normal, "kaiming_uniform": he_uniform, "kaiming_normal": he_normal,
    "xavier_uniform": xavier_uniform, "glorot_uniform": xavier_uniform, "xavier_normal": xavier_normal,
    "glorot_normal": xavier_normal, "torch_default": torch_default, "zeros": zeros, "ones": ones,
}


def get(init):
    """A name from ``INITIALISERS``, or a callable ``f(shape, rng, fan_in=None)``."""
    if callable(init):
        return init
    try:
        return INITIALISERS[init]
    except KeyError:
        raise ValueError(f"unknown initialiser {init!r}; known: {', '.join(sorted(INITIALISERS))}, "
                         f"or nabi.init.gaussian(std) / nabi.init.constant(v)") from None


def make(shape, init, rng=None, fan_in=None, dtype=None):
    """A new host array of ``shape`` in the default dtype, filled by ``init``."""
    rng = rng if rng is not None else backend.get_rng()
    dtype = dtype or backend.get_default_dtype()
    return np.asarray(get(init)(tuple(shape), rng, fan_in=fan_in), dtype=dtype)
