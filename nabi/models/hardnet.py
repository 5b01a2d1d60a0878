"""A local-descriptor network (``hardnet``): a 32×32 grey patch → a 128-d unit vector.

The architecture of L2-Net (Tian et al., CVPR 2017) as HardNet trains it (Mishchuk et al., "Working hard
to know your neighbor's margins", NeurIPS 2017), with a width w (32 in the papers):

    features.0   conv 1→w, 3×3 pad 1, no bias        features.1  BN (no affine)   features.2  ReLU   → w×32×32
    features.3   conv w→w, 3×3 pad 1                 features.4  BN               features.5  ReLU   → w×32×32
    features.6   conv w→2w, 3×3 stride 2 pad 1       features.7  BN               features.8  ReLU   → 2w×16×16
    features.9   conv 2w→2w, 3×3 pad 1               features.10 BN               features.11 ReLU   → 2w×16×16
    features.12  conv 2w→4w, 3×3 stride 2 pad 1      features.13 BN               features.14 ReLU   → 4w×8×8
    features.15  conv 4w→4w, 3×3 pad 1               features.16 BN               features.17 ReLU   → 4w×8×8
    features.18  dropout p
    features.19  conv 4w→D, 8×8 (no padding)         features.20 BN (no affine)                      → D×1×1
    flatten → D,  norm: y = x / ‖x‖                                                                   → D

Every BN is ``BatchNorm2d(affine=False)``: a fixed scale, so only the L2 normalisation sets the length.
The key names are those of HardNet's PyTorch code (``features.19.weight``, ``features.1.running_mean``…),
so its state dicts load as they are. The input is a patch standardised on its own (zero mean, unit
standard deviation over its 32×32 pixels, HardNet's ``input_norm``); ``nabi.reid.patches`` does that
when it cuts the patches. Multiply-accumulates per patch: 39 M at w = 32 (1.33 M parameters), about
10 M at w = 16, 2.8 M at w = 8.
"""
from __future__ import annotations

from collections import OrderedDict

from ..layers import BatchNorm2d, Conv2d, Dropout, Flatten, L2Normalize, ReLU, Sequential
from .registry import Network, register

PATCH_SIZE = 32


@register("hardnet")
def hardnet(width=32, embedding_dim=128, dropout=0.3, init="he_uniform"):
    """(N, 1, 32, 32) standardised patches → (N, embedding_dim) unit rows; ``width`` w as above."""
    width, embedding_dim = int(width), int(embedding_dim)
    if width < 1 or embedding_dim < 1:
        raise ValueError(f"hardnet: width and embedding_dim must be positive, got {width} and {embedding_dim}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"hardnet: dropout must be in [0, 1), got {dropout}")
    plan = [(1, width, 1), (width, width, 1), (width, 2 * width, 2), (2 * width, 2 * width, 1),
            (2 * width, 4 * width, 2), (4 * width, 4 * width, 1)]
    layers = []
    for c_in, c_out, stride in plan:
        layers += [Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False, init=init),
                   BatchNorm2d(c_out, affine=False), ReLU()]
    layers += [Dropout(float(dropout)), Conv2d(4 * width, embedding_dim, 8, bias=False, init=init),
               BatchNorm2d(embedding_dim, affine=False)]
    model = Network(OrderedDict([
        ("features", Sequential(OrderedDict((str(i), m) for i, m in enumerate(layers)))),
        ("flatten", Flatten()),
        ("norm", L2Normalize()),
    ]))
    model.input_size = (1, PATCH_SIZE, PATCH_SIZE)
    return model
