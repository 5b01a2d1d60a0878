"""DenseNet (Huang et al., 2017) in torchvision's layout, plus a CIFAR DenseNet-BC.

ImageNet DenseNets, (N, 3, 224, 224) → (N, num_classes), growth rate k, bottleneck width bn_size·k:

    features.conv0 7×7/2 p3 (no bias), norm0, relu0, pool0 max 3/2 p1         → C0 × 56 × 56
    denseblock_i (n_i layers: C → C + n_i·k), transition_i (C → ⌊C/2⌋, avg 2/2)  for i < 4
    denseblock4, norm5; relu, global average pool, flatten, classifier (Linear)

Keys are torchvision's (``features.denseblock1.denselayer1.norm1.weight``,
``features.transition1.conv.weight``, ``features.norm5.bias``, ``classifier.weight``).
Parameters at 1000 classes: densenet121 7,978,856; densenet169 14,149,480;
densenet201 20,013,928; densenet161 28,681,000.

CIFAR DenseNet-BC (paper §3, depth L = 6n + 4, (N, 3, 32, 32)): conv0 3×3 → 2k channels,
three dense blocks of n bottleneck layers at 32, 16, 8 pixels, transitions with
compression θ (C → ⌊θC⌋), norm5, relu, global average pool, classifier.
DenseNet-BC-100, k = 12: 769,162 parameters at 10 classes.
"""
from __future__ import annotations

from collections import OrderedDict

from ..layers import (AdaptiveAvgPool2d, BatchNorm2d, Conv2d, DenseBlock, Flatten, Linear, MaxPool2d, ReLU,
                      Sequential, Transition)
from .registry import Network, register


def densenet(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, bn_size=4, drop_rate=0.0,
             num_classes=1000, stem="imagenet", compression=0.5, init="he_uniform"):
    """A DenseNet: ``block_config`` layers per dense block, transitions C → ⌊compression·C⌋.

    ``stem='imagenet'``: conv0 7×7/2 + norm0 + relu0 + pool0 max 3/2 (input 224×224);
    ``stem='cifar'``: conv0 3×3/1 only (input 32×32).
    """
    if stem == "imagenet":
        head = [("conv0", Conv2d(3, num_init_features, 7, stride=2, padding=3, bias=False, init=init)),
                ("norm0", BatchNorm2d(num_init_features)), ("relu0", ReLU()), ("pool0", MaxPool2d(3, 2, 1))]
    elif stem == "cifar":
        head = [("conv0", Conv2d(3, num_init_features, 3, padding=1, bias=False, init=init))]
    else:
        raise ValueError(f"densenet: stem must be 'imagenet' or 'cifar', got {stem!r}")
    if not 0.0 < compression <= 1.0:
        raise ValueError(f"densenet: compression must be in (0, 1], got {compression}")
    features, c = OrderedDict(head), num_init_features
    for i, n in enumerate(block_config):
        block = DenseBlock(n, c, bn_size, growth_rate, drop_rate, init=init)
        features[f"denseblock{i + 1}"] = block
        c = block.out_channels
        if i != len(block_config) - 1:
            out = int(c * compression)
            features[f"transition{i + 1}"] = Transition(c, out, init=init)
            c = out
    features["norm5"] = BatchNorm2d(c)
    model = Network(OrderedDict([
        ("features", Sequential(features)), ("relu", ReLU()), ("avgpool", AdaptiveAvgPool2d(1)),
        ("flatten", Flatten()), ("classifier", Linear(c, num_classes, init=init)),
    ]))
    model.input_size = (3, 224, 224) if stem == "imagenet" else (3, 32, 32)
    return model


_IMAGENET = {"densenet121": (32, (6, 12, 24, 16), 64), "densenet169": (32, (6, 12, 32, 32), 64),
             "densenet201": (32, (6, 12, 48, 32), 64), "densenet161": (48, (6, 12, 36, 24), 96)}


def _imagenet_variant(name):
    k, blocks, c0 = _IMAGENET[name]

    def build(num_classes=1000, drop_rate=0.0, init="he_uniform"):
        return densenet(k, blocks, c0, 4, drop_rate, num_classes, init=init)
    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"{name}, torchvision layout (growth {k}, blocks {blocks}, {c0} initial features, bn_size 4): "
                     f"(N, 3, 224, 224) → (N, num_classes).")
    return register(name)(build)


densenet121 = _imagenet_variant("densenet121")
densenet169 = _imagenet_variant("densenet169")
densenet201 = _imagenet_variant("densenet201")
densenet161 = _imagenet_variant("densenet161")


@register("densenet_cifar")
def densenet_cifar(depth=100, growth_rate=12, compression=0.5, bn_size=4, num_classes=10, drop_rate=0.0,
                   init="he_uniform"):
    """DenseNet-BC for 32×32 inputs: depth 6n + 4 (n bottleneck layers per block, 3 blocks), 3×3 stem
    with 2k channels: (N, 3, 32, 32) → (N, num_classes). depth=40 or 100 with k=12 as in the paper."""
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"densenet_cifar: DenseNet-BC depth must be 6n + 4 with n ≥ 1, got {depth}")
    n = (depth - 4) // 6
    return densenet(growth_rate, (n, n, n), 2 * growth_rate, bn_size, drop_rate, num_classes, stem="cifar",
                    compression=compression, init=init)


__all__ = ["densenet", "densenet121", "densenet169", "densenet201", "densenet161", "densenet_cifar"]
