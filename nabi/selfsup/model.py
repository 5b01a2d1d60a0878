"""The SimCLR network: a zoo model's feature part (the backbone) followed by a projection head.

    x (2N, C, H, W) → backbone → h (2N, F) → head: Linear(F, F) → ReLU → Linear(F, D) → z (2N, D)

The backbone is the zoo model with its final classifier ``Linear`` removed: the same
stages under the same names (``conv1.weight``, ``layer1.0.bn1.running_mean``, …), so its
weights load into ``nabi train --init`` of the same model by name, and only the new
classifier starts from scratch. F is the removed ``Linear``'s input size. After
pretraining the head is thrown away (SimCLR's finding: h transfers better than z).
"""
from __future__ import annotations

from collections import OrderedDict

from ..layers import Linear, ReLU, Sequential
from ..models.registry import Network, model_input_size


def backbone_of(model):
    """The zoo ``model`` without its final classifier ``Linear``: ``(backbone, feature_dim)``.

    ``backbone.arch`` is the zoo model's (``name``, ``kwargs``), so the weights' sidecar names the
    architecture they fit. Models whose last stage is not one ``Linear`` (VGG and AlexNet end in a
    classifier block, GoogLeNet is not a plain chain of stages) are a ``ValueError`` naming the model.
    """
    name = (getattr(model, "arch", None) or {}).get("name", type(model).__name__)
    if type(model) is not Network or not len(model):
        raise ValueError(f"model {name}: self-supervised pretraining needs a zoo model that is a chain of stages "
                         f"ending in a Linear classifier (e.g. resnet18_cifar, resnet20, cifar_cnn, lenet5)")
    stages = list(model._modules.items())
    last_name, last = stages[-1]
    if not isinstance(last, Linear):
        raise ValueError(f"model {name}: its last stage {last_name!r} is a {type(last).__name__}, not a Linear "
                         f"classifier; pretrain one of the models ending in a Linear (resnet*, densenet*, "
                         f"cifar_cnn, lenet5)")
    backbone = Network(OrderedDict(stages[:-1]))
    backbone.input_size = model_input_size(model)
    backbone.arch = getattr(model, "arch", None)
    backbone.classifier_name = last_name
    return backbone, last.in_features


def projection_head(in_features: int, hidden: int | None = None, out_features: int = 128):
    """Linear(F, hidden) → ReLU → Linear(hidden, D); ``hidden`` defaults to F (SimCLR's choice)."""
    hidden = int(hidden or in_features)
    return Sequential(OrderedDict([("fc1", Linear(in_features, hidden)), ("relu", ReLU()),
                                   ("fc2", Linear(hidden, out_features))]))


class SimCLR(Sequential):
    """``backbone`` then ``head``: (2N, C, H, W) → projections (2N, D). Parameters are named
    ``backbone.*`` and ``head.*``; ``backbone_state()`` is the part that is kept."""

    def __init__(self, backbone, feature_dim: int, projection_dim: int = 128, hidden_dim: int | None = None):
        super().__init__(OrderedDict([("backbone", backbone),
                                      ("head", projection_head(feature_dim, hidden_dim, projection_dim))]))
        self.input_size = model_input_size(backbone)
        self.feature_dim, self.projection_dim = int(feature_dim), int(projection_dim)
        self.arch = {"name": "simclr", "backbone": backbone.arch, "feature_dim": self.feature_dim,
                     "projection_dim": self.projection_dim,
                     "hidden_dim": int(hidden_dim or feature_dim)}

    def backbone_state(self):
        """The backbone's weights and buffers under the zoo model's own names."""
        return self._modules["backbone"].state_dict()
