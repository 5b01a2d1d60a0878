"""``HardNetLoss``: the hardest-in-batch triplet margin loss of local descriptors (``nabi.functional.hardnet_loss``)."""
from __future__ import annotations

from ..functional import hardnet_loss as F


class HardNetLoss:
    """HardNet's loss over descriptors x (2n, D), rows i and i + n a matching pair (anchor, positive):
    L = (1/n) Σ_i max(0, m + D(a_i, p_i) − min(min_{j≠i} D(a_i, p_j), min_{j≠i} D(a_j, p_i))).

    ``loss = loss_fn(x, labels)`` ignores ``labels`` (the pairing is the row order; the argument is there so
    the trainer's ``loss_fn(out, y)`` calls it unchanged). After each call ``correct`` holds how many of
    the n anchors have their own positive as the closest positive.
    """

    def __init__(self, margin=1.0):
        if not margin >= 0:
            raise ValueError(f"HardNetLoss: margin must be ≥ 0, got {margin!r}")
        self.margin = float(margin)
        self.correct = 0
        self._cache = None

    def __call__(self, x, labels=None):
        return self.forward(x, labels)

    def forward(self, x, labels=None):
        loss, self._cache = F.hardnet_loss_forward(x, self.margin, layer="HardNetLoss")
        self.correct = F.positive_top1(self._cache)
        return float(loss)

    def backward(self, dloss=1.0):
        if self._cache is None:
            raise RuntimeError("HardNetLoss: backward called before the loss was computed")
        return F.hardnet_loss_backward(self._cache, dloss)
