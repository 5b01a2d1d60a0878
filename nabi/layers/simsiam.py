"""``SimSiamLoss``: SimSiam's symmetric negative cosine similarity with stop-gradient (``nabi.functional.simsiam``),
and ``StopGradientPairLoss``, the layer shape it shares with ``BYOLLoss``."""
from __future__ import annotations

from ..functional import simsiam as F


class StopGradientPairLoss:
    """A loss on the network's output (2N, 2D) = [predictions p | projections z] of two views of N photos,
    rows i and i + N the two views of one photo, with a stop-gradient on z.

    Subclasses name their pure functions: ``loss_forward(out, layer) → (loss, cache)`` and
    ``loss_backward(cache, dloss) → ∂L/∂out`` (zeros in the z columns).
    ``loss = loss_fn(out, labels)`` ignores ``labels`` (the trainer's ``loss_fn(out, y)`` calls it
    unchanged). After each call ``correct`` holds how many of the 2N rows' p̂ are most similar (cosine) to
    their partner's ẑ among the other rows' ẑ.
    """

    loss_forward = loss_backward = None

    def __init__(self):
        self.correct = 0
        self._cache = None

    def __call__(self, out, labels=None):
        return self.forward(out, labels)

    def forward(self, out, labels=None):
        loss, self._cache = type(self).loss_forward(out, layer=type(self).__name__)
        self.correct = F.pair_top1(self._cache)
        return float(loss)

    def backward(self, dloss=1.0):
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}: backward called before the loss was computed")
        return type(self).loss_backward(self._cache, dloss)


class SimSiamLoss(StopGradientPairLoss):
    """L = ½ D(p₁, sg(z₂)) + ½ D(p₂, sg(z₁)), D = −mean cosine, on the network's output (2N, 2D) = [p | z].

    ``backward()`` returns ∂L/∂out with zeros in the projection columns: the stop-gradient.
    """

    loss_forward = staticmethod(F.simsiam_forward)
    loss_backward = staticmethod(F.simsiam_backward)
