"""``SoftTargetCrossEntropyLoss``: cross-entropy against target distributions (``nabi.functional.soft_target``)."""
from __future__ import annotations

from ..functional import soft_target as F


class SoftTargetCrossEntropyLoss:
    """Softmax cross-entropy of logits (N, K) against target rows q (N, K): L = −(1/N) Σ q · log softmax(z).

    ``loss_fn(logits, targets)`` takes targets as (N, K) probabilities, or as integer labels (N,), which
    mean one-hot rows (so a validation loader with ordinary labels is scored with the same loss).

    A trainer passes the labels of its batches to ``loss_fn(logits, y)`` and counts accuracy as
    ``argmax(logits) == y``, so a batch's soft targets can travel beside its labels: ``expect(y, q)``
    registers q (N, K) for the label array ``y``; the next call whose labels are that very array
    object uses q, any other call uses one-hot rows of its labels.
    """

    def __init__(self):
        self._cache = None
        self._expected = None

    def __call__(self, logits, targets):
        return self.forward(logits, targets)

    def expect(self, labels, soft_targets):
        """Use ``soft_targets`` (N, K) on the next call whose labels are ``labels`` (the same object)."""
        self._expected = (labels, soft_targets)

    def forward(self, logits, targets):
        q = targets
        if getattr(targets, "ndim", None) == 1:
            if self._expected is not None and self._expected[0] is targets:
                q = self._expected[1]
            else:
                q = _one_hot(targets, logits, "SoftTargetCrossEntropyLoss")
        self._expected = None
        loss, self._cache = F.soft_cross_entropy_forward(logits, q, layer="SoftTargetCrossEntropyLoss")
        return float(loss)

    def backward(self, dloss=1.0):
        if self._cache is None:
            raise RuntimeError("SoftTargetCrossEntropyLoss: backward called before the loss was computed")
        return F.soft_cross_entropy_backward(self._cache, dloss)


def _one_hot(labels, logits, layer):
    from ..functional.loss import _check_labels
    xp, labels = _check_labels(logits, labels, layer)
    q = xp.zeros(logits.shape, dtype=logits.dtype if logits.dtype.itemsize >= 4 else "float32")
    q[xp.arange(labels.shape[0]), labels] = 1
    return q
