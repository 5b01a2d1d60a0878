"""``BYOLLoss``: BYOL's symmetric normalised mean squared error with a stop-gradient on the target
(``nabi.functional.byol``)."""
from __future__ import annotations

from ..functional import byol as F


class BYOLLoss:
    """L = mean over the N photos of ‖p̂₁ − sg(ẑ'₂)‖² + ‖p̂₂ − sg(ẑ'₁)‖² (x̂ = x/‖x‖), on the network's output
    (2N, 2D) = [online predictions p | target projections z'].

    ``loss = loss_fn(out, labels)`` ignores ``labels`` (the trainer's ``loss_fn(out, y)`` calls it
    unchanged). ``backward()`` returns ∂L/∂out with zeros in the target columns: the stop-gradient.
    After each call ``correct`` holds how many of the 2N rows' predictions p̂ are most similar (cosine)
    to their partner's target projection ẑ' among the other rows' target projections.
    """

    def __init__(self):
        self.correct = 0
        self._cache = None

    def __call__(self, out, labels=None):
        return self.forward(out, labels)

    def forward(self, out, labels=None):
        loss, self._cache = F.byol_forward(out, layer="BYOLLoss")
        self.correct = F.pair_top1(self._cache)
        return float(loss)

    def backward(self, dloss=1.0):
        if self._cache is None:
            raise RuntimeError("BYOLLoss: backward called before the loss was computed")
        return F.byol_backward(self._cache, dloss)
