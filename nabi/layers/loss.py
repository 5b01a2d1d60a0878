"""Loss layers: ``CrossEntropyLoss`` and ``MSELoss``.

``loss = loss_fn(logits, labels)`` returns the mean loss as a Python float;
``dlogits = loss_fn.backward()`` returns its gradient with respect to the logits.
"""
from __future__ import annotations

from ..functional import loss as F


class CrossEntropyLoss:
    """Softmax cross-entropy on logits (N, K) and integer labels (N,), fused and stable.

    ``weight`` (K,) weighs classes; ``label_smoothing`` ε mixes the one-hot target
    with the uniform one: q = (1 − ε)·onehot + ε/K. Gradient: (p − q)/N without weights.
    """

    def __init__(self, weight=None, label_smoothing=0.0):
        self.weight = weight
        self.label_smoothing = float(label_smoothing)
        self._cache = None

    def __call__(self, logits, labels):
        return self.forward(logits, labels)

    def forward(self, logits, labels):
        loss, self._cache = F.cross_entropy_forward(logits, labels, self.weight, self.label_smoothing,
                                                    layer="CrossEntropyLoss")
        return float(loss)

    def backward(self, dloss=1.0):
        if self._cache is None:
            raise RuntimeError("CrossEntropyLoss: backward called before the loss was computed")
        return F.cross_entropy_backward(self._cache, dloss)


class MSELoss:
    """Mean squared error over every element: L = mean((y − t)²)."""

    def __init__(self):
        self._cache = None

    def __call__(self, y, target):
        loss, self._cache = F.mse_forward(y, target, layer="MSELoss")
        return float(loss)

    def backward(self, dloss=1.0):
        if self._cache is None:
            raise RuntimeError("MSELoss: backward called before the loss was computed")
        return F.mse_backward(self._cache, dloss)
