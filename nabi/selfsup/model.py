"""The pretraining networks: a zoo model's feature part (the backbone) followed by heads.

SimCLR:
    x (2N, C, H, W) → backbone → h (2N, F) → head: Linear(F, F) → ReLU → Linear(F, D) → z (2N, D)
SimSiam:
    x → backbone → h (2N, F) → projector: Linear(F, F) → BN → ReLU → Linear(F, D) → BN → z (2N, D)
      → predictor: Linear(D, D/4) → BN → ReLU → Linear(D/4, D) → p (2N, D);  output [p | z] (2N, 2D)
BYOL:
    online: x → backbone → h (2N, F) → projector: Linear(F, F) → BN → ReLU → Linear(F, D) → z (2N, D)
              → predictor: Linear(D, F) → BN → ReLU → Linear(F, D) → p (2N, D)
    target: x → backbone' → projector' → z' (2N, D)     (copies whose weights follow the online ones by EMA)
    output [p | z'] (2N, 2D)

The backbone is the zoo model with its final classifier ``Linear`` removed: the same
stages under the same names (``conv1.weight``, ``layer1.0.bn1.running_mean``, …), so its
weights load into ``nabi train --init`` of the same model by name, and only the new
classifier starts from scratch. F is the removed ``Linear``'s input size. After
pretraining the head is thrown away (SimCLR's finding: h transfers better than z).
"""
from __future__ import annotations

import copy
from collections import OrderedDict

from ..backend import get_array_module
from ..layers import BatchNorm1d, Linear, Module, ReLU, Sequential
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


def simsiam_projector(in_features: int, hidden: int | None = None, out_features: int = 128):
    """Linear(F, hidden) → BN → ReLU → Linear(hidden, D) → BN (SimSiam's CIFAR projector; no bias before a BN)."""
    hidden = int(hidden or in_features)
    return Sequential(OrderedDict([("fc1", Linear(in_features, hidden, bias=False)), ("bn1", BatchNorm1d(hidden)),
                                   ("relu", ReLU()), ("fc2", Linear(hidden, out_features, bias=False)),
                                   ("bn2", BatchNorm1d(out_features))]))


def simsiam_predictor(dim: int, hidden: int | None = None):
    """Linear(D, D/4) → BN → ReLU → Linear(D/4, D): SimSiam's bottleneck predictor."""
    hidden = int(hidden or max(1, dim // 4))
    return Sequential(OrderedDict([("fc1", Linear(dim, hidden, bias=False)), ("bn1", BatchNorm1d(hidden)),
                                   ("relu", ReLU()), ("fc2", Linear(hidden, dim))]))


class SimSiam(Module):
    """``backbone`` → ``projector`` → z, then ``predictor`` → p; the output is [p | z] (2N, 2D) so that
    ``SimSiamLoss`` sees both. Backward: the loss's ∂L/∂z columns (zeros: the stop-gradient) are added to
    what the predictor sends back to z, then through the projector and the backbone. Parameters are named
    ``backbone.*``, ``projector.*`` and ``predictor.*``; ``backbone_state()`` is the part that is kept.
    ``projection`` is z of the last forward (for the collapse monitor)."""

    def __init__(self, backbone, feature_dim: int, projection_dim: int = 128, hidden_dim: int | None = None,
                 predictor_dim: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.projector = simsiam_projector(feature_dim, hidden_dim, projection_dim)
        self.predictor = simsiam_predictor(projection_dim, predictor_dim)
        self.input_size = model_input_size(backbone)
        self.feature_dim, self.projection_dim = int(feature_dim), int(projection_dim)
        self.projection = None
        self.arch = {"name": "simsiam", "backbone": backbone.arch, "feature_dim": self.feature_dim,
                     "projection_dim": self.projection_dim, "hidden_dim": int(hidden_dim or feature_dim),
                     "predictor_dim": int(predictor_dim or max(1, projection_dim // 4))}

    def forward(self, x):
        z = self.projector(self.backbone(x))
        p = self.predictor(z)
        self.projection = z
        return get_array_module(z).concatenate([p, z], axis=1)

    def backward(self, dout):
        xp = get_array_module(dout)
        D = self.projection_dim
        dz = self.predictor.backward(xp.ascontiguousarray(dout[:, :D])) + dout[:, D:]
        return self.backbone.backward(self.projector.backward(dz))

    def backbone_state(self):
        """The backbone's weights and buffers under the zoo model's own names."""
        return self.backbone.state_dict()


def byol_mlp(in_features: int, hidden: int, out_features: int):
    """Linear(in, hidden) → BN → ReLU → Linear(hidden, out): BYOL's projector and predictor
    (no bias before a BN)."""
    return Sequential(OrderedDict([("fc1", Linear(in_features, hidden, bias=False)), ("bn1", BatchNorm1d(hidden)),
                                   ("relu", ReLU()), ("fc2", Linear(hidden, out_features))]))


class BYOL(Module):
    """BYOL's online and target networks: ``backbone`` → ``projector`` → z → ``predictor`` → p (online) and
    ``target`` = (``backbone``, ``projector``) copies → z'; the output is [p | z'] (2N, 2D) for ``BYOLLoss``.

    Backward runs through the online network only: the loss's ∂L/∂z' columns (zeros: the stop-gradient)
    are dropped and ∂L/∂p goes back through the predictor, the projector and the backbone. The target
    gets no gradient; ``update_target(τ)`` moves its weights towards the online ones after each optimiser
    step (ξ ← τ ξ + (1 − τ) θ, ``nabi.selfsup.ema``), and starts as an exact copy of them.

    The target runs in training mode, normalising with the batch's own statistics, as in the paper's
    code (which runs the target with ``is_training=True``): the target's projections are then computed
    exactly like the online network's (whose batch norm also uses batch statistics), and the target's
    running statistics are its own (updated by its forward passes, never averaged from the online network)
    and are never used. Like any training-mode forward it keeps its layers' backward caches (memory of one
    more forward pass), though no backward runs through it. The target starts as an exact copy of the
    online network (the paper's code draws it separately and reports no difference).

    Parameters are named ``backbone.*``, ``projector.*``, ``predictor.*`` (online, trained) and
    ``target.backbone.*``, ``target.projector.*``. ``named_parameters()`` (what an optimiser is given,
    what ``zero_grad`` clears) yields the online ones only; ``state_dict()`` holds both, so checkpoints
    and ``model.safetensors`` keep the target and a resumed run continues it exactly.
    ``backbone_state()`` is the online backbone, the part that is kept (as BYOL keeps it).
    ``projection`` is the online z of the last forward (for the collapse monitor).
    """

    def __init__(self, backbone, feature_dim: int, projection_dim: int = 128, hidden_dim: int | None = None,
                 predictor_dim: int | None = None):
        super().__init__()
        hidden = int(hidden_dim or feature_dim)
        predictor_hidden = int(predictor_dim or hidden)
        self.backbone = backbone
        self.projector = byol_mlp(feature_dim, hidden, projection_dim)
        self.predictor = byol_mlp(projection_dim, predictor_hidden, projection_dim)
        self.target = Sequential(OrderedDict([("backbone", copy.deepcopy(backbone)),
                                              ("projector", copy.deepcopy(self.projector))]))
        self.input_size = model_input_size(backbone)
        self.feature_dim, self.projection_dim = int(feature_dim), int(projection_dim)
        self.projection = None
        self.arch = {"name": "byol", "backbone": backbone.arch, "feature_dim": self.feature_dim,
                     "projection_dim": self.projection_dim, "hidden_dim": hidden, "predictor_dim": predictor_hidden}

    def named_parameters(self, prefix: str = ""):
        """The online network's parameters (the trained ones); the target's pair with them in ``weight_pairs()``."""
        for name, p in super().named_parameters(prefix):
            if not name[len(prefix) + 1 if prefix else 0:].startswith("target."):
                yield name, p

    def weight_pairs(self):
        """``[(target Parameter, online Parameter), ...]`` matched by name: target.X ↔ X."""
        online = dict(self.named_parameters())
        return [(p, online[name]) for name, p in self._modules["target"].named_parameters()]

    def update_target(self, tau: float) -> None:
        """ξ ← τ ξ + (1 − τ) θ for every target weight (``nabi.selfsup.ema.ema_update``)."""
        from .ema import ema_update
        pairs = self.weight_pairs()
        ema_update([t.data for t, _ in pairs], [o.data for _, o in pairs], tau)

    def forward(self, x):
        z = self.projector(self.backbone(x))
        p = self.predictor(z)
        self.projection = z
        z_target = self.target(x)
        return get_array_module(z).concatenate([p, z_target.astype(p.dtype, copy=False)], axis=1)

    def backward(self, dout):
        xp = get_array_module(dout)
        dz = self.predictor.backward(xp.ascontiguousarray(dout[:, :self.projection_dim]))
        return self.backbone.backward(self.projector.backward(dz))

    def backbone_state(self):
        """The online backbone's weights and buffers under the zoo model's own names."""
        return self.backbone.state_dict()
