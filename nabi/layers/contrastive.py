"""``NTXentLoss``: SimCLR's contrastive loss as a loss layer (``nabi.functional.contrastive``)."""
from __future__ import annotations

from ..functional import contrastive as F


class NTXentLoss:
    """Normalised temperature-scaled cross-entropy over projections z (2N, D); rows i and i + N are
    two views of one image: L = (1/2N) Σ_i −log( e^(s_i,p(i)/τ) / Σ_{k≠i} e^(s_ik/τ) ), s = cosine similarity.

    ``loss = loss_fn(z, labels)`` ignores ``labels`` (a self-supervised loss has none; the argument is
    there so the trainer's ``loss_fn(out, y)`` calls it unchanged). After each call ``correct`` holds
    how many of the 2N anchors have their positive as the most similar other row.
    """

    def __init__(self, temperature=0.5):
        if not temperature > 0:
            raise ValueError(f"NTXentLoss: temperature must be positive, got {temperature!r}")
        self.temperature = float(temperature)
        self.correct = 0
        self._cache = None

    def __call__(self, z, labels=None):
        return self.forward(z, labels)

    def forward(self, z, labels=None):
        loss, self._cache = F.nt_xent_forward(z, self.temperature, layer="NTXentLoss")
        self.correct = F.positive_top1(self._cache)
        return float(loss)

    def backward(self, dloss=1.0):
        if self._cache is None:
            raise RuntimeError("NTXentLoss: backward called before the loss was computed")
        return F.nt_xent_backward(self._cache, dloss)
