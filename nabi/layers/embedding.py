"""Embedding layers and metric-learning losses (see ``nabi.functional.embedding`` for the formulas).

Layers: ``L2Normalize`` (rows to unit length), ``CosineLinear`` (cosines to class centres,
optionally k sub-centres per class with a max over them), ``EmbeddingHead`` (the BN-neck:
features → Linear (no bias) → BatchNorm1d → L2 normalisation, (N, F) → (N, D)).

Losses, called like ``CrossEntropyLoss`` (``loss = f(out, labels)`` a float, ``f.backward()`` the
gradient with respect to ``out``): ``ArcFaceLoss`` and ``CosFaceLoss`` take the cosines of a
``CosineLinear``; ``TripletLoss`` takes the embeddings themselves (batch-hard mining).
"""
from __future__ import annotations

from .. import init as initialisers
from ..functional import embedding as F
from .linear import Linear
from .module import Module, Parameter
from .norm import BatchNorm1d


class L2Normalize(Module):
    """y = x / max(‖x‖, ε) per row: (N, D) → (N, D)."""

    def __init__(self):
        super().__init__()
        self._cache = None

    def forward(self, x):
        y, self._cache = F.l2_normalize_forward(x)
        return y

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError("L2Normalize: backward called before forward")
        return F.l2_normalize_backward(dy, self._cache)


class CosineLinear(Module):
    """Cosines between embeddings (N, D) and learned class centres: (N, num_classes).

    With ``subcenters`` k > 1 each class has k centres (weight (num_classes·k, D), class j owning
    rows j·k … j·k + k − 1) and its cosine is the largest of its k (sub-centre ArcFace).
    """

    def __init__(self, in_features, num_classes, subcenters=1, rng=None):
        super().__init__()
        self.in_features, self.num_classes, self.subcenters = int(in_features), int(num_classes), int(subcenters)
        if min(self.in_features, self.num_classes, self.subcenters) < 1:
            raise ValueError(f"CosineLinear: sizes must be positive, got in={in_features}, "
                             f"classes={num_classes}, subcenters={subcenters}")
        shape = (self.num_classes * self.subcenters, self.in_features)
        self.weight = Parameter(initialisers.make(shape, "xavier_uniform", rng, self.in_features))
        self.compute_input_grad = True
        self._cache = None

    def forward(self, x):
        c, cache = F.cosine_linear_forward(x, self.weight.data, layer=self._name())
        y, sub_cache = F.subcenter_max_forward(c, self.subcenters)
        self._cache = (cache, sub_cache) if self.training or self.keep_cache else None
        return y

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError(f"{self._name()}: backward called without a forward pass in training mode")
        cache, sub_cache = self._cache
        self._cache = None
        dx, dw = F.cosine_linear_backward(F.subcenter_max_backward(dy, sub_cache), cache,
                                          need_dx=self.compute_input_grad)
        self.weight.accumulate(dw, owned=True)
        return dx

    def _name(self):
        return f"CosineLinear({self.in_features}→{self.num_classes}×{self.subcenters})"

    def extra_repr(self):
        return f"in_features={self.in_features}, num_classes={self.num_classes}, subcenters={self.subcenters}"


class EmbeddingHead(Module):
    """The BN-neck: features (N, in_features) → Linear (no bias) → BatchNorm1d → L2 normalisation → (N, dim).

    The output rows have unit length, so the similarity of two photos is the dot product of their
    embeddings (their cosine).
    """

    def __init__(self, in_features, dim=128, rng=None):
        super().__init__()
        self.in_features, self.dim = int(in_features), int(dim)
        self.fc = Linear(self.in_features, self.dim, bias=False, init="xavier_uniform", rng=rng)
        self.bn = BatchNorm1d(self.dim)
        self.norm = L2Normalize()

    def forward(self, x):
        self._in_shape = x.shape
        if x.ndim != 2:
            x = x.reshape(x.shape[0], -1)
        return self.norm(self.bn(self.fc(x)))

    def backward(self, dy):
        dx = self.fc.backward(self.bn.backward(self.norm.backward(dy)))
        return dx if dx is None or dx.shape == self._in_shape else dx.reshape(self._in_shape)

    def extra_repr(self):
        return f"in_features={self.in_features}, dim={self.dim}"


class _Loss:
    _name = "loss"

    def __init__(self):
        self._cache = None

    def __call__(self, out, labels):
        return self.forward(out, labels)

    def backward(self, dloss=1.0):
        if self._cache is None:
            raise RuntimeError(f"{self._name}: backward called before the loss was computed")
        return self._backward(self._cache, dloss)


class ArcFaceLoss(_Loss):
    """Additive angular margin loss on cosines (N, C): cross-entropy of s·cos(θ + m) for the target
    class and s·cos θ for the others; ``easy_margin`` as in ``nabi.functional.embedding``."""
    _name = "ArcFaceLoss"
    _backward = staticmethod(F.arcface_backward)

    def __init__(self, scale=30.0, margin=0.5, easy_margin=False):
        super().__init__()
        self.scale, self.margin, self.easy_margin = float(scale), float(margin), bool(easy_margin)

    def forward(self, cosines, labels):
        loss, self._cache = F.arcface_forward(cosines, labels, self.scale, self.margin, self.easy_margin)
        return float(loss)


class CosFaceLoss(_Loss):
    """Additive cosine margin loss on cosines (N, C): cross-entropy of s·(cos θ_y − m) and s·cos θ_j."""
    _name = "CosFaceLoss"
    _backward = staticmethod(F.cosface_backward)

    def __init__(self, scale=30.0, margin=0.35):
        super().__init__()
        self.scale, self.margin = float(scale), float(margin)

    def forward(self, cosines, labels):
        loss, self._cache = F.cosface_forward(cosines, labels, self.scale, self.margin)
        return float(loss)


class TripletLoss(_Loss):
    """Batch-hard triplet loss on embeddings (N, D) with margin α (Hermans et al. 2017)."""
    _name = "TripletLoss"
    _backward = staticmethod(F.triplet_batch_hard_backward)

    def __init__(self, margin=0.3):
        super().__init__()
        self.margin = float(margin)

    def forward(self, embeddings, labels):
        loss, self._cache = F.triplet_batch_hard_forward(embeddings, labels, self.margin)
        return float(loss)
