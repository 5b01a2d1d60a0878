"""``WeightedLayer``: the common part of ``Conv2d`` and ``Linear``.

A weight, an optional bias, and a backward that either accumulates ∂L/∂w, ∂L/∂b (written
straight into the kept gradient buffer after ``zero_grad``) or, with ``fused_lr`` set, applies
plain SGD in place (w ← w − lr·∂L/∂w inside backward: the weight gradient is never stored;
``Trainer(fused_sgd=True)``). ``compute_input_grad`` False skips ∂L/∂x (a network's first
layer in training, see ``Module.set_input_grad``).

Subclasses implement ``_backward(dy, cache, dw_out, relu_y) -> (dx, dw, db)`` and
``_sgd_backward(dy, cache, lr, relu_y) -> dx``, each honouring ``self.compute_input_grad``.
"""
from __future__ import annotations

from .module import Module


class WeightedLayer(Module):

    def _init_state(self):
        self.compute_input_grad = True   # False: backward returns None instead of ∂L/∂x
        self.fused_lr = None             # a learning rate: plain SGD applied inside backward
        self._cache = None

    def _name(self):
        return type(self).__name__

    def input_layer(self):
        return self

    def backward(self, dy, relu_y=None):
        """``relu_y``: the output of a ReLU fused after this layer (see ``Sequential``); dy is then
        that ReLU's upstream gradient and the layer applies the ReLU's mask itself."""
        if self._cache is None:
            raise RuntimeError(f"{self._name()}: backward called without a forward pass in training mode")
        cache, self._cache = self._cache, None
        if self.fused_lr is not None:
            return self._sgd_backward(dy, cache, self.fused_lr, relu_y)
        buf = self.weight.overwrite_buffer(dy.dtype)
        dx, dw, db = self._backward(dy, cache, buf, relu_y)
        if buf is None:
            self.weight.accumulate(dw, owned=True)
        if db is not None:
            self.bias.accumulate(db)
        return dx

    def _backward(self, dy, cache, dw_out, relu_y):  # pragma: no cover - abstract
        raise NotImplementedError

    def _sgd_backward(self, dy, cache, lr, relu_y):  # pragma: no cover - abstract
        raise NotImplementedError
