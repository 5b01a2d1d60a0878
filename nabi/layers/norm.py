"""``Dropout``, ``BatchNorm1d``, ``BatchNorm2d`` and ``LocalResponseNorm``."""
from __future__ import annotations

import numpy as np

from .. import backend
from ..functional import norm as F
from .module import Module, Parameter


def mask_generator(layer, x):
    """The generator a random-mask layer (``Dropout``, ``DropPath``) draws its mask for ``x`` from.

    On the CPU it is the layer's own NumPy Generator ``layer.rng`` (its state is saved in
    checkpoints, so a resumed run draws the masks an uninterrupted one would). On the GPU it is
    a CuPy generator seeded once from ``layer.rng``; restoring ``layer.rng`` sets
    ``layer._cupy_rng`` to None so the next draw reseeds it.
    """
    if backend.get_array_module(x) is np:
        return layer.rng
    if getattr(layer, "_cupy_rng", None) is None:
        import cupy
        object.__setattr__(layer, "_cupy_rng", cupy.random.default_rng(int(layer.rng.integers(2**63 - 1))))
    return layer._cupy_rng


class Dropout(Module):
    """Inverted dropout with drop probability ``p``: active in training, identity in eval."""

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = float(p)
        self.rng = backend.new_rng(seed)
        self._mask = None

    def forward(self, x):
        y, self._mask = F.dropout_forward(x, self.p, self.training, mask_generator(self, x))
        return y

    def backward(self, dy):
        return F.dropout_backward(dy, self._mask)

    def extra_repr(self):
        return f"p={self.p}"


class _BatchNorm(Module):
    """``sync``: None (the statistics of this batch), or ``all_reduce(a) -> Σ a over the replicas`` of a
    data-parallel run, which makes the training statistics those of every replica's shard together
    (synchronised batch norm, ``functional.norm.sync_batch_norm_forward``)."""
    _rank = None
    fresh_output = True         # y is new; the cache keeps x̂, not y
    sync = None

    @property
    def fuses_relu(self):
        """A ReLU right after it may run inside it (``Sequential``, ``Residual``: ``forward(x, relu=True)``,
        ``backward(δ, relu_y=…)``); not with synchronised statistics."""
        return self.sync is None

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True):
        super().__init__()
        self.num_features = int(num_features)
        self.eps, self.momentum = float(eps), float(momentum)
        dtype = backend.get_default_dtype()
        self.affine = bool(affine)
        if self.affine:         # without: γ = 1, β = 0 fixed, no parameters (PyTorch's affine=False, same keys)
            self.weight = Parameter(np.ones(self.num_features, dtype=dtype))
            self.bias = Parameter(np.zeros(self.num_features, dtype=dtype))
        self.register_buffer("running_mean", np.zeros(self.num_features, dtype=dtype))
        self.register_buffer("running_var", np.ones(self.num_features, dtype=dtype))
        self._cache = None

    def _gamma_beta(self):
        if self.affine:
            return self.weight.data, self.bias.data
        xp = backend.get_array_module(self.running_mean)
        return (xp.ones(self.num_features, dtype=self.running_mean.dtype),
                xp.zeros(self.num_features, dtype=self.running_mean.dtype))

    def forward(self, x, relu=False):
        """``relu``: return max(y, 0) — a ReLU after this layer fused into it (see ``fuses_relu``)."""
        name = f"{type(self).__name__}({self.num_features})"
        if x.ndim != self._rank or x.shape[1] != self.num_features:
            want = "(N, C)" if self._rank == 2 else "(N, C, H, W)"
            raise ValueError(f"{name}: expected input {want} with C = {self.num_features}, got shape {tuple(x.shape)}")
        gamma, beta = self._gamma_beta()
        if self.sync is not None:
            if relu:
                raise ValueError(f"{name}: a ReLU cannot be fused into synchronised batch norm")
            y, self._cache = F.sync_batch_norm_forward(x, gamma, beta, self.running_mean, self.running_var,
                                                       self.training, self.momentum, self.eps, self.sync)
            return y
        y, self._cache = F.batch_norm_forward(x, gamma, beta, self.running_mean,
                                              self.running_var, self.training, self.momentum, self.eps, relu)
        return y

    def backward(self, dy, relu_y=None):
        """``relu_y``: the fused ReLU's output (``forward(x, relu=True)``); δ is then that output's gradient."""
        backward = F.sync_batch_norm_backward if self.sync is not None else F.batch_norm_backward
        # x̂ is freed once used: kept, it would outlive the step (through the optimiser's update, whose
        # momentum buffers are allocated at the first step) and add one activation per layer to the peak
        cache, self._cache = self._cache, None
        dx, dgamma, dbeta = backward(dy, cache) if relu_y is None else backward(dy, cache, relu_y)
        if self.affine:
            self.weight.accumulate(dgamma)
            self.bias.accumulate(dbeta)
        return dx

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}" + ("" if self.affine else ", affine=False")


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C): statistics per feature across the batch."""
    _rank = 2


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W): statistics per channel across N, H, W."""
    _rank = 4


class LocalResponseNorm(Module):
    """AlexNet's normalisation across ``size`` neighbouring channels (PyTorch's form, see functional.norm)."""

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)
        self._cache = None

    def forward(self, x):
        y, self._cache = F.lrn_forward(x, self.size, self.alpha, self.beta, self.k)
        return y

    def backward(self, dy):
        return F.lrn_backward(dy, self._cache)

    def extra_repr(self):
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
