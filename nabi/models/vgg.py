"""VGG (Simonyan & Zisserman, 2014), configurations A, A-LRN, B, C, D, E, in torchvision's layout.

    features    the configuration's convolutions (3×3 pad 1, or 1×1 pad 0 in C), each
                followed by [BatchNorm2d] and ReLU; 'M' max-pool 2/2; 'LRN' LocalResponseNorm
    avgpool     AdaptiveAvgPool2d((7, 7))   (224×224 gives 7×7 already; smaller inputs are stretched)
    flatten
    classifier  25088→4096, ReLU, Dropout, 4096→4096, ReLU, Dropout, 4096→num_classes

Keys are torchvision's (``features.0.weight``, ``classifier.6.bias``); convolutions keep
their bias even before batch norm, as torchvision's do. Parameters at 1000 classes:
vgg11 132,863,336; vgg13 133,047,848; vgg16 138,357,544; vgg19 143,667,240;
vgg11_bn 132,868,840; vgg13_bn 133,053,736; vgg16_bn 138,365,992; vgg19_bn 143,678,248.
"""
from __future__ import annotations

from collections import OrderedDict

from ..layers import (AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten, Linear, LocalResponseNorm, MaxPool2d,
                      ReLU, Sequential)
from .registry import Network, register

# Table 1 of the paper. An int is a 3×3 conv with that many filters, (channels, 1) a 1×1
# conv (configuration C), 'M' a 2×2 max-pool, 'LRN' local response normalisation.
CONFIGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, (256, 1), "M", 512, 512, (512, 1), "M", 512, 512, (512, 1), "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def make_features(cfg, batch_norm=False, in_channels=3, init="he_uniform"):
    """The ``features`` Sequential of a configuration (a key of ``CONFIGS`` or a list)."""
    spec = CONFIGS[cfg] if isinstance(cfg, str) else cfg
    layers, c = [], in_channels
    for item in spec:
        if item == "M":
            layers.append(MaxPool2d(2, 2))
        elif item == "LRN":
            layers.append(LocalResponseNorm(5, 1e-4, 0.75, 2.0))
        else:
            out, k = item if isinstance(item, tuple) else (item, 3)
            layers.append(Conv2d(c, out, k, padding=k // 2, init=init))
            if batch_norm:
                layers.append(BatchNorm2d(out))
            layers.append(ReLU())
            c = out
    return Sequential(*layers), c


@register("vgg")
def vgg(cfg="D", batch_norm=False, num_classes=1000, dropout=0.5, init="he_uniform"):
    """VGG of configuration ``cfg`` ('A', 'A-LRN', 'B', 'C', 'D', 'E' or a list): (N, 3, H, W) → (N, num_classes).

    Designed for 224×224; any input ≥ 32×32 works (five 2×2 pools, then the adaptive 7×7 pool).
    """
    if isinstance(cfg, str) and cfg not in CONFIGS:
        raise ValueError(f"vgg: unknown configuration {cfg!r}; known: {', '.join(CONFIGS)}")
    features, c = make_features(cfg, batch_norm, 3, init)
    classifier = Sequential(
        Linear(c * 7 * 7, 4096, init=init), ReLU(), Dropout(dropout),
        Linear(4096, 4096, init=init), ReLU(), Dropout(dropout),
        Linear(4096, num_classes, init=init),
    )
    model = Network(OrderedDict([("features", features), ("avgpool", AdaptiveAvgPool2d((7, 7))),
                                 ("flatten", Flatten()), ("classifier", classifier)]))
    model.input_size = (3, 224, 224)
    return model


def _variant(name, cfg, batch_norm):
    def build(num_classes=1000, dropout=0.5, init="he_uniform"):
        return vgg(cfg, batch_norm, num_classes, dropout, init)
    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"VGG configuration {cfg}{' with batch norm' if batch_norm else ''}: "
                     f"(N, 3, 224, 224) → (N, num_classes).")
    return register(name)(build)


vgg11 = _variant("vgg11", "A", False)
vgg11_lrn = _variant("vgg11_lrn", "A-LRN", False)
vgg13 = _variant("vgg13", "B", False)
vgg16_c = _variant("vgg16_c", "C", False)
vgg16 = _variant("vgg16", "D", False)
vgg19 = _variant("vgg19", "E", False)
vgg11_bn = _variant("vgg11_bn", "A", True)
vgg13_bn = _variant("vgg13_bn", "B", True)
vgg16_bn = _variant("vgg16_bn", "D", True)
vgg19_bn = _variant("vgg19_bn", "E", True)

__all__ = ["CONFIGS", "make_features", "vgg", "vgg11", "vgg11_lrn", "vgg13", "vgg16_c", "vgg16", "vgg19",
           "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]
