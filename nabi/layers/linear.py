"""``Linear`` and ``Flatten``."""
from __future__ import annotations

import numpy as np

from .. import init as initialisers
from ..functional import linear as L
from .module import Module, Parameter
from .weighted import WeightedLayer


class Linear(WeightedLayer):
    """y = x·wᵀ + b: (N, in_features) → (N, out_features); weight (out, in)."""

    def __init__(self, in_features, out_features, bias=True, init="he_uniform", bias_init="zeros", rng=None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        if self.in_features < 1 or self.out_features < 1:
            raise ValueError(f"Linear: feature counts must be positive, got in={in_features}, out={out_features}")
        self.weight = Parameter(initialisers.make((self.out_features, self.in_features), init, rng, self.in_features))
        self.bias = Parameter(initialisers.make((self.out_features,), bias_init, rng, self.in_features)) if bias else None
        self._init_state()

    def _name(self):
        return f"Linear({self.in_features}→{self.out_features})"

    def forward(self, x):
        b = self.bias.data if self.bias is not None else None
        y, cache = L.linear_forward(x, self.weight.data, b, layer=self._name())
        self._store_cache(cache)
        return y

    def _backward(self, dy, cache, dw_out, relu_y):
        return L.linear_backward(dy, cache, need_dx=self.compute_input_grad, dw_out=dw_out)

    def _sgd_backward(self, dy, cache, lr, relu_y):
        bias = self.bias.data if self.bias is not None else None
        return L.linear_sgd_backward(dy, cache, self.weight.data, bias, lr, need_dx=self.compute_input_grad)

    def summary_macs(self, x_shape, y_shape):
        return int(np.prod(y_shape)) * self.in_features

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Flatten(Module):
    """(N, C, H, W) → (N, C·H·W)."""

    def __init__(self, start_dim=1):
        super().__init__()
        self.start_dim = start_dim
        self._shape = None

    def forward(self, x):
        y, self._shape = L.flatten_forward(x, self.start_dim)
        return y

    def backward(self, dy):
        return L.flatten_backward(dy, self._shape)
