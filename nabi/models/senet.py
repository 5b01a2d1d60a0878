"""SE-ResNet (Hu et al., 2017): torchvision's ResNet with a squeeze-and-excitation module
on every residual block's body output, before the addition:

    y = relu(se(body(x)) + shortcut(x)),   se(u) = u · σ(fc2(relu(fc1(mean_hw u))))

Blocks are ``SEBasicBlock`` (se_resnet18) and ``SEBottleneck`` (se_resnet50); fc1/fc2
are 1×1 convolutions with bias (torchvision's ``SqueezeExcitation``), C → C/reduction → C.
Keys are torchvision ResNet's plus ``layer1.0.se.fc1.weight`` … Parameters at 1000
classes, reduction 16: se_resnet18 11,778,592; se_resnet50 28,088,024 (the paper's 28.1 M).
``drop_path`` adds stochastic depth to the blocks as in ``nabi.models.resnet``.
"""
from __future__ import annotations

from ..layers import SEBasicBlock, SEBottleneck
from .registry import register
from .resnet import resnet


def _block(cls, reduction):
    def make(in_channels, channels, stride=1, init="he_uniform", stride_on="3x3"):
        if cls is SEBottleneck:
            return cls(in_channels, channels, stride, reduction, init, stride_on)
        return cls(in_channels, channels, stride, reduction, init)
    make.expansion = cls.expansion
    make.__name__ = cls.__name__
    return make


@register("se_resnet18")
def se_resnet18(num_classes=1000, reduction=16, init="he_uniform", zero_init_residual=False, drop_path=0.0):
    """SE-ResNet-18: SEBasicBlock [2, 2, 2, 2], (N, 3, 224, 224) → (N, num_classes)."""
    return resnet(_block(SEBasicBlock, reduction), [2, 2, 2, 2], num_classes, init=init,
                  zero_init_residual=zero_init_residual, drop_path=drop_path)


@register("se_resnet50")
def se_resnet50(num_classes=1000, reduction=16, init="he_uniform", stride_on="3x3", zero_init_residual=False,
                drop_path=0.0):
    """SE-ResNet-50: SEBottleneck [3, 4, 6, 3], (N, 3, 224, 224) → (N, num_classes)."""
    return resnet(_block(SEBottleneck, reduction), [3, 4, 6, 3], num_classes, init=init, stride_on=stride_on,
                  zero_init_residual=zero_init_residual, drop_path=drop_path)


__all__ = ["se_resnet18", "se_resnet50"]


def _cifar_se_resnet(depth):
    n = (depth - 2) // 6

    def build(num_classes=10, reduction=16, init="he_uniform", zero_init_residual=False, drop_path=0.0):
        return resnet(_block(SEBasicBlock, reduction), [n, n, n], num_classes, widths=(16, 32, 64),
                      stem="cifar", init=init, zero_init_residual=zero_init_residual, drop_path=drop_path)
    build.__name__ = build.__qualname__ = f"se_resnet{depth}"
    build.__doc__ = f"CIFAR resnet{depth} (3×3 stem, 16/32/64) with SEBasicBlock: (N, 3, 32, 32) → (N, num_classes)."
    return register(f"se_resnet{depth}")(build)


se_resnet20, se_resnet32, se_resnet44, se_resnet56 = (_cifar_se_resnet(d) for d in (20, 32, 44, 56))


@register("se_resnet18_cifar")
def se_resnet18_cifar(num_classes=10, reduction=16, init="he_uniform", zero_init_residual=False, drop_path=0.0):
    """resnet18_cifar (3×3 stem, no max-pool) with SEBasicBlock: (N, 3, 32, 32) → (N, num_classes)."""
    return resnet(_block(SEBasicBlock, reduction), [2, 2, 2, 2], num_classes, stem="cifar", init=init,
                  zero_init_residual=zero_init_residual, drop_path=drop_path)
