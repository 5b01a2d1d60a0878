"""``Linear`` and ``Flatten``."""
from __future__ import annotations

from .. import init as initialisers
from ..functional import linear as L
from .module import Module, Parameter


class Linear(Module):
    """y = x·wᵀ + b: (N, in_features) → (N, out_features); weight (out, in)."""

    def __init__(self, in_features, out_features, bias=True, init="he_uniform", bias_init="zeros", rng=None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        if self.in_features < 1 or self.out_features < 1:
            raise ValueError(f"Linear: feature counts must be positive, got in={in_features}, out={out_features}")
        self.weight = Parameter(initialisers.make((self.out_features, self.in_features), init, rng, self.in_features))
        self.bias = Parameter(initialisers.make((self.out_features,), bias_init, rng, self.in_features)) if bias else None
        self.compute_input_grad = True
        self.fused_lr = None
        self._cache = None

    def forward(self, x):
        b = self.bias.data if self.bias is not None else None
        y, cache = L.linear_forward(x, self.weight.data, b, layer=f"Linear({self.in_features}→{self.out_features})")
        self._cache = cache if self.training or self.keep_cache else None
        return y

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError("Linear: backward called without a forward pass in training mode")
        if self.fused_lr is not None:  # plain SGD applied inside backward (see Trainer(fused_sgd=True))
            dx = L.linear_sgd_backward(dy, self._cache, self.weight.data,
                                       self.bias.data if self.bias is not None else None, self.fused_lr,
                                       need_dx=self.compute_input_grad)
            self._cache = None
            return dx
        buf = self.weight.overwrite_buffer(dy.dtype)
        dx, dw, db = L.linear_backward(dy, self._cache, need_dx=self.compute_input_grad, dw_out=buf)
        if buf is None:
            self.weight.accumulate(dw)
        if db is not None:
            self.bias.accumulate(db)
        self._cache = None
        return dx

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
