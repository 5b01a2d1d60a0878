"""A small CIFAR-10 network (``cifar_cnn``), 3×32×32 → num_classes.

    conv1  conv 3→16, 3×3 'same'   → 16×32×32   relu1   pool1 max 2 → 16×16×16
    conv2  conv 16→32, 3×3 'same'  → 32×16×16   relu2   pool2 max 2 → 32×8×8
    flatten → 2048,  fc  linear 2048→num_classes

25,578 parameters at 10 classes.
"""
from __future__ import annotations

from collections import OrderedDict

from ..layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU
from .registry import Network, register


@register("cifar_cnn")
def cifar_cnn(num_classes=10, in_channels=3, init="he_uniform"):
    """(N, in_channels, 32, 32) → (N, num_classes) logits."""
    model = Network(OrderedDict([
        ("conv1", Conv2d(in_channels, 16, 3, padding="same", init=init)), ("relu1", ReLU()), ("pool1", MaxPool2d(2)),
        ("conv2", Conv2d(16, 32, 3, padding="same", init=init)), ("relu2", ReLU()), ("pool2", MaxPool2d(2)),
        ("flatten", Flatten()),
        ("fc", Linear(32 * 8 * 8, num_classes, init=init)),
    ]))
    model.input_size = (in_channels, 32, 32)
    return model
