"""An identity-embedding network: a zoo backbone without its classifier, the BN-neck, and a training head.

    backbone   any zoo model whose last layer is a ``Linear`` classifier; that layer is replaced by
               ``Identity``, so the backbone ends with the features the classifier read (N, F)
    neck       ``EmbeddingHead``: Linear F→D (no bias) → BatchNorm1d → L2 normalisation → (N, D)
    classifier ``CosineLinear`` D→num_classes (k sub-centres for ``subcenter_arcface``); none for ``triplet``

In training ``forward`` returns what the head's loss takes: the cosines to the training individuals'
centres (``arcface``, ``subcenter_arcface``, ``cosface``) or the embeddings (``triplet``). ``embed(x)``
returns the unit-length embeddings (N, D) in eval mode: a photo's identity signature, compared with
others by dot product (cosine similarity).

Validation by retrieval: after ``set_gallery(embeddings, labels, num_ids)`` an eval-mode ``forward``
returns, for each query and each gallery individual, the best cosine similarity to that individual's
gallery photos (N, num_ids); its arg-max is the rank-1 answer, so a trainer's accuracy over these
scores is rank-1 identification accuracy (and its top-5 is rank-5).
"""
from __future__ import annotations

from ..backend import get_array_module
from ..layers import CosineLinear, EmbeddingHead, Identity, Linear, Module, Sequential
from .registry import register

HEADS = ("arcface", "subcenter_arcface", "cosface", "triplet")


def strip_classifier(model):
    """Replace the final ``Linear`` of a ``Sequential`` model (searched through trailing ``Sequential``
    stages) by ``Identity``; returns its number of input features."""
    m, name = model, type(model).__name__
    while isinstance(m, Sequential) and len(m):
        key = list(m._modules)[-1]
        last = m._modules[key]
        if isinstance(last, Linear):
            setattr(m, key, Identity())
            return last.in_features
        m = last
    raise ValueError(f"backbone {name} does not end with a Linear classifier; an embedding head needs one "
                     "to replace (choose a zoo model such as resnet20, cifar_cnn or resnet18)")


class EmbeddingNet(Module):
    """backbone → neck (unit embeddings) → classifier (cosines), see the module docstring."""

    def __init__(self, backbone, neck, classifier=None, head="arcface"):
        super().__init__()
        self.backbone, self.neck = backbone, neck
        if classifier is not None:
            self.classifier = classifier
        object.__setattr__(self, "_classifier", classifier)
        object.__setattr__(self, "head", head)
        object.__setattr__(self, "_gallery", None)
        self.input_size = getattr(backbone, "input_size", None)

    @property
    def embedding_dim(self):
        return self.neck.dim

    def set_gallery(self, embeddings, labels, num_ids):
        """Score eval-mode forwards against these gallery embeddings (G, D) of individuals ``labels`` (G,)."""
        xp = get_array_module(embeddings)
        labels = xp.asarray(labels)
        object.__setattr__(self, "_gallery", (embeddings, [labels == j for j in range(int(num_ids))]))

    def clear_gallery(self):
        object.__setattr__(self, "_gallery", None)

    def embed(self, x):
        """Unit-length embeddings (N, D) of images x (N, C, H, W); call in eval mode."""
        return self.neck(self.backbone(x))

    def forward(self, x):
        e = self.embed(x)
        if self._gallery is not None and not self.training:
            gal, masks = self._gallery
            xp = get_array_module(e)
            sims = e @ gal.T
            out = xp.full((e.shape[0], len(masks)), -2.0, dtype=e.dtype)     # below any cosine
            for j, mask in enumerate(masks):
                if bool(mask.any()):
                    out[:, j] = sims[:, mask].max(axis=1)
            return out
        return self._classifier(e) if self._classifier is not None else e

    def backward(self, dy):
        if self._classifier is not None:
            if self._classifier.frozen:
                return None
            dy = self._classifier.backward(dy)
        return self.backward_embed(dy)

    def backward_embed(self, de):
        """∂L/∂x from ∂L/∂embedding (N, D), after an ``embed`` with caches kept (None when the neck is
        frozen, ``Module.frozen``: the backbone before it is frozen too)."""
        if de is None or self.neck.frozen:
            return None
        return self.backbone.backward(self.neck.backward(de))


@register("embedding_net")
def embedding_net(backbone="resnet20", num_classes=10, embedding_dim=128, head="arcface", subcenters=3,
                  backbone_args=None):
    """A zoo ``backbone`` (built with ``backbone_args``) → BN-neck (``embedding_dim``) → ``head``'s classifier
    over ``num_classes`` training individuals (``subcenters`` per individual for ``subcenter_arcface``)."""
    from .registry import get
    if head not in HEADS:
        raise ValueError(f"embedding head must be one of {', '.join(HEADS)}; got {head!r}")
    if int(embedding_dim) < 1:
        raise ValueError(f"embedding_dim must be positive, got {embedding_dim}")
    net = get(backbone, num_classes=max(int(num_classes), 2), **dict(backbone_args or {}))
    features = strip_classifier(net)
    neck = EmbeddingHead(features, int(embedding_dim))
    classifier = None
    if head != "triplet":
        classifier = CosineLinear(int(embedding_dim), int(num_classes),
                                  subcenters=int(subcenters) if head == "subcenter_arcface" else 1)
    model = EmbeddingNet(net, neck, classifier, head)
    model.input_size = net.input_size
    return model
