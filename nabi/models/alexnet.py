"""AlexNet in three forms: the 2012 paper (``alexnet``), torchvision's (``alexnet_tv``)
and the 336×336 network of the 2019 campus-cat report (``alexnet336``: the report
"CNN을 이용한 고려대학교 길고양이 분류 및 배경 학습을 통한 성능 개선", COSE362, Korea University, 2019).

``alexnet`` — Krizhevsky et al. 2012, one tower (no grouped convolutions), 3×227×227:

    conv1 96 11×11/4        → 96×55×55   relu, LRN, maxpool 3/2 → 27×27
    conv2 256 5×5 p2        → 256×27×27  relu, LRN, maxpool 3/2 → 13×13
    conv3 384 3×3 p1, conv4 384 3×3 p1, conv5 256 3×3 p1 (relu each) → 256×13×13, maxpool 3/2 → 6×6
    dropout, fc6 9216→4096, relu, dropout, fc7 4096→4096, relu, fc8 4096→num_classes

62,378,344 parameters at 1000 classes. LRN is ``LocalResponseNorm(5, 1e-4, 0.75, 2)``
in PyTorch's/Caffe's form (α divided by the window size n = 5); the paper's formula
without the 1/n is ``lrn_alpha=5e-4``.
"""
from __future__ import annotations

from collections import OrderedDict

from .. import init as initialisers
from ..layers import (AdaptiveAvgPool2d, Conv2d, Dropout, Flatten, Linear, LocalResponseNorm, MaxPool2d, ReLU,
                      Sequential)
from .registry import Network, register


def _paper_init(init):
    """'paper' → weights N(0, 0.01²) and biases 1 where the paper sets them (conv2, 4, 5, fc6, fc7)."""
    if init == "paper":
        return initialisers.gaussian(0.01), "ones"
    return init, "zeros"


@register("alexnet")
def alexnet(num_classes=1000, dropout=0.5, lrn_alpha=1e-4, init="he_uniform"):
    """The 2012 AlexNet, single tower: (N, 3, 227, 227) → (N, num_classes).

    ``init='paper'`` uses N(0, 0.01²) weights and the paper's unit biases.
    """
    w, one = _paper_init(init)

    def conv(i, o, k, s=1, p=0, bias1=False):
        return Conv2d(i, o, k, stride=s, padding=p, init=w, bias_init=one if bias1 else "zeros")

    def lrn():
        return LocalResponseNorm(5, lrn_alpha, 0.75, 2.0)

    features = Sequential(OrderedDict([
        ("conv1", conv(3, 96, 11, 4)), ("relu1", ReLU()), ("norm1", lrn()), ("pool1", MaxPool2d(3, 2)),
        ("conv2", conv(96, 256, 5, p=2, bias1=True)), ("relu2", ReLU()), ("norm2", lrn()), ("pool2", MaxPool2d(3, 2)),
        ("conv3", conv(256, 384, 3, p=1)), ("relu3", ReLU()),
        ("conv4", conv(384, 384, 3, p=1, bias1=True)), ("relu4", ReLU()),
        ("conv5", conv(384, 256, 3, p=1, bias1=True)), ("relu5", ReLU()), ("pool5", MaxPool2d(3, 2)),
    ]))
    classifier = Sequential(OrderedDict([
        ("drop6", Dropout(dropout)), ("fc6", Linear(256 * 6 * 6, 4096, init=w, bias_init=one)), ("relu6", ReLU()),
        ("drop7", Dropout(dropout)), ("fc7", Linear(4096, 4096, init=w, bias_init=one)), ("relu7", ReLU()),
        ("fc8", Linear(4096, num_classes, init=w)),
    ]))
    model = Network(OrderedDict([("features", features), ("flatten", Flatten()), ("classifier", classifier)]))
    model.input_size = (3, 227, 227)
    return model


@register("alexnet_tv")
def alexnet_tv(num_classes=1000, dropout=0.5, init="he_uniform"):
    """torchvision's AlexNet (keys ``features.0.weight`` … ``classifier.6.bias``): (N, 3, H, W) → (N, num_classes).

    features: conv 64 11×11/4 p2, relu, maxpool 3/2, conv 192 5×5 p2, relu, maxpool 3/2,
    conv 384 3×3 p1, relu, conv 256 3×3 p1, relu, conv 256 3×3 p1, relu, maxpool 3/2;
    avgpool AdaptiveAvgPool2d((6, 6)); flatten; classifier: dropout, 9216→4096, relu,
    dropout, 4096→4096, relu, 4096→num_classes. 61,100,840 parameters at 1000
    classes; 224×224 by design, any H, W ≥ 63 works.
    """
    features = Sequential(
        Conv2d(3, 64, 11, stride=4, padding=2, init=init), ReLU(), MaxPool2d(3, 2),
        Conv2d(64, 192, 5, padding=2, init=init), ReLU(), MaxPool2d(3, 2),
        Conv2d(192, 384, 3, padding=1, init=init), ReLU(),
        Conv2d(384, 256, 3, padding=1, init=init), ReLU(),
        Conv2d(256, 256, 3, padding=1, init=init), ReLU(), MaxPool2d(3, 2),
    )
    classifier = Sequential(
        Dropout(dropout), Linear(256 * 6 * 6, 4096, init=init), ReLU(),
        Dropout(dropout), Linear(4096, 4096, init=init), ReLU(),
        Linear(4096, num_classes, init=init),
    )
    model = Network(OrderedDict([("features", features), ("avgpool", AdaptiveAvgPool2d((6, 6))),
                                 ("flatten", Flatten()), ("classifier", classifier)]))
    model.input_size = (3, 224, 224)
    return model


@register("alexnet336")
def alexnet336(num_classes=5, init="he_uniform"):
    """The 2019 campus-cat report's AlexNet-style network (its §3, §8.4, tables 3–9): (N, 3, 336, 336) → (N, num_classes).

    One tower, two fully connected layers, no LRN, no dropout, He-uniform init (§8.3):

        conv1 96 11×11/4 p0   → 96×82×82     relu1   (table 3 says 81×81: (336−11)/4+1 = 82.25 floors to 82)
        pool1 max 3/2 (floor) → 96×40×40             ((82−3)/2+1 = 40.5 → 40; ceil would give 41)
        conv2 256 5×5 p2      → 256×40×40    relu2
        pool2 max 3/2 ceil    → 256×20×20            ((40−3)/2+1 = 19.5: floor 19; ceil_mode=True: table 4's 20)
        conv3 384 3×3 p1      → 384×20×20    relu3
        conv4 384 3×3 p1      → 384×20×20    relu4   (table 6's "3*3*284" filter is 3×3×384)
        conv5 256 3×3 p1      → 256×20×20    relu5
        pool5 max 3/2 ceil    → 256×10×10            ((20−3)/2+1 = 9.5: ceil_mode=True gives table 7's 10)
        flatten → 25,600;  fc6 25600→4096, relu6;  fc7 4096→num_classes (softmax in the loss)

    108,629,381 parameters at 5 classes (four cats + background, §3.2); 108,625,284 at 4.
    """
    model = Network(OrderedDict([
        ("conv1", Conv2d(3, 96, 11, stride=4, init=init)), ("relu1", ReLU()), ("pool1", MaxPool2d(3, 2)),
        ("conv2", Conv2d(96, 256, 5, padding=2, init=init)), ("relu2", ReLU()),
        ("pool2", MaxPool2d(3, 2, ceil_mode=True)),
        ("conv3", Conv2d(256, 384, 3, padding=1, init=init)), ("relu3", ReLU()),
        ("conv4", Conv2d(384, 384, 3, padding=1, init=init)), ("relu4", ReLU()),
        ("conv5", Conv2d(384, 256, 3, padding=1, init=init)), ("relu5", ReLU()),
        ("pool5", MaxPool2d(3, 2, ceil_mode=True)),
        ("flatten", Flatten()),
        ("fc6", Linear(256 * 10 * 10, 4096, init=init)), ("relu6", ReLU()),
        ("fc7", Linear(4096, num_classes, init=init)),
    ]))
    model.input_size = (3, 336, 336)
    return model
