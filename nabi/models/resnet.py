"""ResNet (He et al., 2015) in torchvision's layout, plus CIFAR-style ResNets.

ImageNet ResNets, (N, 3, 224, 224) → (N, num_classes):

    conv1 7×7/2 p3, 64 (no bias), bn1, relu, maxpool 3/2 p1      → 64×56×56
    layer1 … layer4: blocks of 64, 128, 256, 512 base channels   → 56, 28, 14, 7
    avgpool AdaptiveAvgPool2d(1) (or GeM, ``pool='gem'``), flatten, fc (512·expansion → num_classes)

    basic block (18, 34)       conv1 3×3/s, bn1, relu, conv2 3×3, bn2
    bottleneck (50, 101, 152)  conv1 1×1, bn1, relu1, conv2 3×3, bn2, relu2, conv3 1×1 (×4), bn3

Each block is ``Residual(body, downsample, after=ReLU())``: y = relu(body(x) + shortcut(x));
the shortcut is the identity, or ``downsample`` = 1×1 conv/s (no bias) + BN where the
shape changes. ``stride_on='3x3'`` (default) puts a bottleneck's stride on its 3×3
conv (torchvision, "ResNet v1.5"); ``'1x1'`` on its first 1×1 conv (the paper, v1);
same parameters either way. Keys are torchvision's (``layer1.0.conv1.weight``,
``layer2.0.downsample.0.weight``, ``fc.bias``). Parameters at 1000 classes:
resnet18 11,689,512; resnet34 21,797,672; resnet50 25,557,032; resnet101 44,549,160;
resnet152 60,192,808.

CIFAR ResNets (paper §4.2), (N, 3, 32, 32): conv1 3×3 16 + bn1 + relu, no max-pool,
three stages of n basic blocks with 16, 32, 64 channels (depth 6n + 2: resnet20, 32,
44, 56), global average pool, fc. Where the shape changes the shortcut is a 1×1
projection + BN (the paper's option B; the paper's CIFAR runs used option A,
zero-padding identity, which has no parameters). ``resnet18_cifar``: torchvision's
ResNet-18 blocks behind a 3×3/1 stem with no max-pool (11,173,962 parameters at 10 classes).

Stochastic depth (Huang et al., 2016), ``drop_path`` = P > 0: in training, residual block
i of the L blocks (i = 0 … L−1, in forward order) drops its body for each sample with
probability p_i = P · i/(L − 1), rising linearly from 0 at the first block to P at the
last, and scales a kept body by 1/(1 − p_i) (``DropPath``, last in the body, before the
addition); evaluation keeps every body unscaled. The blocks get their ``DropPath`` after
every weight is drawn, and it has no parameters: a seed gives the same initial weights and
the same ``state_dict`` keys as with P = 0, and P = 0 (the default) builds no ``DropPath``.

Global pooling, ``pool``: ``'avg'`` (default) is torchvision's ``AdaptiveAvgPool2d(1)``; ``'gem'`` is
generalised-mean pooling (Radenović et al., 2018; ``GeneralizedMeanPool2d``), y_c = (mean_hw
max(x_c, ε)^p)^{1/p} with one learnable p starting at 3, which lets a channel's strongest responses
(a stripe, a spot) decide its value instead of being averaged over the photo, as image-retrieval and
re-identification embeddings do. The stage keeps its name, so every torchvision key is unchanged and
the one new array is ``avgpool.p`` (shape (1,)); the initial weights of a seed are the same either way.
"""
from __future__ import annotations

from collections import OrderedDict


from ..functional.drop_path import check_drop_probability
from ..layers import (AdaptiveAvgPool2d, BatchNorm2d, Conv2d, DropPath, Flatten, GeneralizedMeanPool2d, Linear,
                      MaxPool2d, ReLU, Residual, Sequential)
from .registry import Network, register


def _conv(i, o, k, s=1, init="he_uniform"):
    return Conv2d(i, o, k, stride=s, padding=k // 2, bias=False, init=init)


def _downsample(i, o, s, init):
    if s == 1 and i == o:
        return None
    return Sequential(_conv(i, o, 1, s, init), BatchNorm2d(o))


def basic_block(in_channels, channels, stride=1, init="he_uniform", stride_on="3x3"):
    """3×3 → 3×3 block; output ``channels``. (``stride_on`` has no effect: the first conv is the 3×3.)"""
    body = OrderedDict([
        ("conv1", _conv(in_channels, channels, 3, stride, init)), ("bn1", BatchNorm2d(channels)), ("relu", ReLU()),
        ("conv2", _conv(channels, channels, 3, 1, init)), ("bn2", BatchNorm2d(channels)),
    ])
    return Residual(body, _downsample(in_channels, channels, stride, init), after=ReLU(), shortcut_name="downsample")


basic_block.expansion = 1


def bottleneck(in_channels, channels, stride=1, init="he_uniform", stride_on="3x3"):
    """1×1 → 3×3 → 1×1 (×4) block; output ``4 · channels``."""
    out = channels * 4
    s1, s3 = (1, stride) if stride_on == "3x3" else (stride, 1)
    body = OrderedDict([
        ("conv1", _conv(in_channels, channels, 1, s1, init)), ("bn1", BatchNorm2d(channels)), ("relu1", ReLU()),
        ("conv2", _conv(channels, channels, 3, s3, init)), ("bn2", BatchNorm2d(channels)), ("relu2", ReLU()),
        ("conv3", _conv(channels, out, 1, 1, init)), ("bn3", BatchNorm2d(out)),
    ])
    return Residual(body, _downsample(in_channels, out, stride, init), after=ReLU(), shortcut_name="downsample")


bottleneck.expansion = 4


def _stage(block, in_channels, channels, blocks, stride, init, stride_on):
    layers = [block(in_channels, channels, stride, init, stride_on)]
    c = channels * block.expansion
    layers += [block(c, channels, 1, init, stride_on) for _ in range(blocks - 1)]
    return Sequential(*layers), c


def _zero_last_bn(model):
    """γ = 0 in each block's last BN, so every residual block starts as the identity."""
    for m in model.modules():
        if isinstance(m, Residual):
            bns = [b for b in m.body_modules if isinstance(b, BatchNorm2d)]
            bns[-1].weight.data[...] = 0


def add_drop_path(model, drop_path):
    """Stochastic depth on every ``Residual`` block of ``model``: block i of L gets a ``DropPath`` of
    rate P · i/(L − 1) (P = ``drop_path``; one block alone gets P) last in its body; blocks whose rate is 0
    get none. Returns the rates, in block order."""
    drop_path = check_drop_probability(drop_path, "resnet: drop_path")
    blocks = [m for m in model.modules() if isinstance(m, Residual)]
    last = max(len(blocks) - 1, 1)
    rates = [drop_path * i / last if len(blocks) > 1 else drop_path for i in range(len(blocks))]
    for block, rate in zip(blocks, rates):
        if rate > 0:
            block.append_to_body("drop_path", DropPath(rate))
    return rates


def _check_stride_on(stride_on):
    if stride_on not in ("3x3", "1x1"):
        raise ValueError(f"resnet: stride_on must be '3x3' (torchvision v1.5) or '1x1' (paper v1), got {stride_on!r}")


POOLS = ("avg", "gem")


def global_pool(pool, where="resnet"):
    """The global pooling before the classifier: ``'avg'`` ``AdaptiveAvgPool2d(1)`` (torchvision's),
    ``'gem'`` ``GeneralizedMeanPool2d`` with a learnable exponent p (starting at 3; saved as ``avgpool.p``)."""
    if pool == "avg":
        return AdaptiveAvgPool2d(1)
    if pool == "gem":
        return GeneralizedMeanPool2d()
    raise ValueError(f"{where}: pool must be one of {', '.join(repr(p) for p in POOLS)} (average or "
                     f"generalised-mean pooling), got {pool!r}")


def resnet(block, layers, num_classes=1000, widths=(64, 128, 256, 512), stem="imagenet", init="he_uniform",
           stride_on="3x3", zero_init_residual=False, drop_path=0.0, pool="avg"):
    """A ResNet: ``block`` (basic_block or bottleneck), blocks per stage ``layers``.

    ``stem='imagenet'``: 7×7/2 conv + 3×3/2 max-pool (input 224×224);
    ``stem='cifar'``: 3×3/1 conv, no max-pool (input 32×32).
    ``drop_path``: the stochastic-depth rate of the last block (see the module docstring).
    ``pool``: the global pooling, ``'avg'`` or ``'gem'`` (see the module docstring).
    """
    _check_stride_on(stride_on)
    pooling = global_pool(pool)
    check_drop_probability(drop_path, "resnet: drop_path")
    c0 = widths[0]
    if stem == "imagenet":
        head = [("conv1", Conv2d(3, c0, 7, stride=2, padding=3, bias=False, init=init)), ("bn1", BatchNorm2d(c0)),
                ("relu", ReLU()), ("maxpool", MaxPool2d(3, 2, 1))]
    elif stem == "cifar":
        head = [("conv1", _conv(3, c0, 3, 1, init)), ("bn1", BatchNorm2d(c0)), ("relu", ReLU())]
    else:
        raise ValueError(f"resnet: stem must be 'imagenet' or 'cifar', got {stem!r}")
    stages, c = [], c0
    for i, (w, n) in enumerate(zip(widths, layers)):
        stage, c = _stage(block, c, w, n, 1 if i == 0 else 2, init, stride_on)
        stages.append((f"layer{i + 1}", stage))
    model = Network(OrderedDict(head + stages + [
        ("avgpool", pooling), ("flatten", Flatten()), ("fc", Linear(c, num_classes, init=init))]))
    if zero_init_residual:
        _zero_last_bn(model)
    if drop_path:
        add_drop_path(model, drop_path)
    model.input_size = (3, 224, 224) if stem == "imagenet" else (3, 32, 32)
    return model


_IMAGENET = {"resnet18": (basic_block, [2, 2, 2, 2]), "resnet34": (basic_block, [3, 4, 6, 3]),
             "resnet50": (bottleneck, [3, 4, 6, 3]), "resnet101": (bottleneck, [3, 4, 23, 3]),
             "resnet152": (bottleneck, [3, 8, 36, 3])}


def _imagenet_variant(name):
    block, layers = _IMAGENET[name]

    def build(num_classes=1000, init="he_uniform", stride_on="3x3", zero_init_residual=False, drop_path=0.0,
              pool="avg"):
        return resnet(block, layers, num_classes, init=init, stride_on=stride_on,
                      zero_init_residual=zero_init_residual, drop_path=drop_path, pool=pool)
    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"{name}, torchvision layout ({block.__name__} blocks {layers}): "
                     f"(N, 3, 224, 224) → (N, num_classes).")
    return register(name)(build)


def _cifar_variant(depth):
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
    n = (depth - 2) // 6
    name = f"resnet{depth}"

    def build(num_classes=10, init="he_uniform", zero_init_residual=False, drop_path=0.0, pool="avg"):
        return resnet(basic_block, [n, n, n], num_classes, widths=(16, 32, 64), stem="cifar", init=init,
                      zero_init_residual=zero_init_residual, drop_path=drop_path, pool=pool)
    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"CIFAR {name}: 3×3 stem, 3 stages × {n} basic blocks (16, 32, 64 channels), "
                     f"1×1 projection shortcuts: (N, 3, 32, 32) → (N, num_classes).")
    return register(name)(build)


resnet18 = _imagenet_variant("resnet18")
resnet34 = _imagenet_variant("resnet34")
resnet50 = _imagenet_variant("resnet50")
resnet101 = _imagenet_variant("resnet101")
resnet152 = _imagenet_variant("resnet152")
resnet20 = _cifar_variant(20)
resnet32 = _cifar_variant(32)
resnet44 = _cifar_variant(44)
resnet56 = _cifar_variant(56)


@register("resnet18_cifar")
def resnet18_cifar(num_classes=10, init="he_uniform", zero_init_residual=False, drop_path=0.0, pool="avg"):
    """ResNet-18 blocks behind a 3×3/1 stem without max-pool: (N, 3, 32, 32) → (N, num_classes)."""
    return resnet(basic_block, [2, 2, 2, 2], num_classes, stem="cifar", init=init,
                  zero_init_residual=zero_init_residual, drop_path=drop_path, pool=pool)


__all__ = ["basic_block", "bottleneck", "resnet", "global_pool", "POOLS", "add_drop_path", "resnet18", "resnet34",
           "resnet50", "resnet101", "resnet152", "resnet20", "resnet32", "resnet44", "resnet56", "resnet18_cifar"]
