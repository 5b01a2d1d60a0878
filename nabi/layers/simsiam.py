"""``SimSiamLoss``: SimSiam's symmetric negative cosine similarity with stop-gradient (``nabi.functional.simsiam``)."""
from __future__ import annotations

from ..functional import simsiam as F


class SimSiamLoss:
    """L = ½ D(p₁, sg(z₂)) + ½ D(p₂, sg(z₁)), D = −mean cosine, on the network's output (2N, 2D) = [p | z].

    ``loss = loss_fn(out, labels)`` ignores ``labels`` (the trainer's ``loss_fn(out, y)`` calls it
    unchanged). ``backward()`` returns ∂L/∂out with zeros in the projection columns: the stop-gradient.
    After each call ``correct`` holds how many of the 2N rows have their partner's projection as the most
    similar other projection.
    """

    def __init__(self):
        self.correct = 0
        self._cache = None

    def __call__(self, out, labels=None):
        return self.forward(out, labels)

    def forward(self, out, labels=None):
        loss, self._cache = F.simsiam_forward(out, layer="SimSiamLoss")
        self.correct = F.pair_top1(self._cache)
        return float(loss)

    def backward(self, dloss=1.0):
        if self._cache is None:
            raise RuntimeError("SimSiamLoss: backward called before the loss was computed")
        return F.simsiam_backward(self._cache, dloss)
