"""``Linear`` and ``Flatten``."""
from __future__ import annotations

from .. import init as initialisers
from ..functional import linear as L
from .module import Module, Parameter, WeightedLayer


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

    _backward_fn = staticmethod(L.linear_backward)
    _sgd_backward_fn = staticmethod(L.linear_sgd_backward)

    def _name(self):
        return f"Linear({self.in_features}→{self.out_features})"

    def forward(self, x):
        b = self.bias.data if self.bias is not None else None
        y, cache = L.linear_forward(x, self.weight.data, b, layer=self._name())
        self._cache = cache if self.training or self.keep_cache else None
        return y

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
