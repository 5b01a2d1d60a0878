"""PyTorch twins of the nabi zoo models, used by the benchmarks and by tests/test_models.py, and weight copying.

Each twin is written so that its ``state_dict`` keys are exactly nabi's (torchvision's
names where torchvision has the model; torchvision itself is not a dependency).
``build_pair`` builds the nabi model from a fixed seed, builds the twin, checks that
the two key sets and every shape agree (``AssertionError`` otherwise) and copies
nabi's weights into the twin, so both compute the same function.

Architectures (mirroring ``nabi/models``):

    lenet5      c1 conv 1→6 5×5, tanh, avgpool 2/2, c3 conv 6→16 5×5, tanh, avgpool 2/2,
                c5 conv 16→120 5×5, tanh, flatten, f6 120→84, tanh, output 84→K
    cifar_cnn   conv 3→16 3×3 p1, relu, maxpool 2, conv 16→32 3×3 p1, relu, maxpool 2,
                flatten, fc 2048→K
    alexnet336  conv1 96 11×11/4, relu, pool1 max 3/2, conv2 256 5×5 p2, relu,
                pool2 max 3/2 ceil, conv3 384 3×3 p1, relu, conv4 384 3×3 p1, relu,
                conv5 256 3×3 p1, relu, pool5 max 3/2 ceil, flatten, fc6 25600→4096,
                relu, fc7 4096→K
    vgg11       torchvision VGG configuration A (no BN), AdaptiveAvgPool2d(7),
                classifier 25088→4096→4096→K with dropout
    resnet18    torchvision ResNet-18 (BasicBlock [2, 2, 2, 2], 7×7/2 stem + max-pool)
"""
from __future__ import annotations

from collections import OrderedDict as OD

import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as tF

from .common import build_nabi

# ----------------------------------------------------------------------------------
# the twins
# ----------------------------------------------------------------------------------


def t_lenet5(num_classes=10, activation="tanh", pool="avg", in_channels=1):
    act = {"tanh": tnn.Tanh, "relu": tnn.ReLU}[activation]
    pl = {"avg": tnn.AvgPool2d, "max": tnn.MaxPool2d}[pool]
    return tnn.Sequential(OD(
        c1=tnn.Conv2d(in_channels, 6, 5), act1=act(), s2=pl(2, 2),
        c3=tnn.Conv2d(6, 16, 5), act3=act(), s4=pl(2, 2),
        c5=tnn.Conv2d(16, 120, 5), act5=act(), flatten=tnn.Flatten(),
        f6=tnn.Linear(120, 84), act6=act(), output=tnn.Linear(84, num_classes)))


def t_cifar_cnn(num_classes=10, in_channels=3):
    return tnn.Sequential(OD(
        conv1=tnn.Conv2d(in_channels, 16, 3, padding=1), relu1=tnn.ReLU(), pool1=tnn.MaxPool2d(2),
        conv2=tnn.Conv2d(16, 32, 3, padding=1), relu2=tnn.ReLU(), pool2=tnn.MaxPool2d(2),
        flatten=tnn.Flatten(), fc=tnn.Linear(32 * 8 * 8, num_classes)))


def t_alexnet336(num_classes=5):
    return tnn.Sequential(OD(
        conv1=tnn.Conv2d(3, 96, 11, stride=4), relu1=tnn.ReLU(), pool1=tnn.MaxPool2d(3, 2),
        conv2=tnn.Conv2d(96, 256, 5, padding=2), relu2=tnn.ReLU(), pool2=tnn.MaxPool2d(3, 2, ceil_mode=True),
        conv3=tnn.Conv2d(256, 384, 3, padding=1), relu3=tnn.ReLU(),
        conv4=tnn.Conv2d(384, 384, 3, padding=1), relu4=tnn.ReLU(),
        conv5=tnn.Conv2d(384, 256, 3, padding=1), relu5=tnn.ReLU(), pool5=tnn.MaxPool2d(3, 2, ceil_mode=True),
        flatten=tnn.Flatten(), fc6=tnn.Linear(256 * 10 * 10, 4096), relu6=tnn.ReLU(),
        fc7=tnn.Linear(4096, num_classes)))


VGG_A = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class TAlexNet(tnn.Module):  # torchvision.models.AlexNet
    def __init__(self, num_classes=1000, dropout=0.5):
        super().__init__()
        self.features = tnn.Sequential(
            tnn.Conv2d(3, 64, 11, stride=4, padding=2), tnn.ReLU(inplace=True), tnn.MaxPool2d(3, 2),
            tnn.Conv2d(64, 192, 5, padding=2), tnn.ReLU(inplace=True), tnn.MaxPool2d(3, 2),
            tnn.Conv2d(192, 384, 3, padding=1), tnn.ReLU(inplace=True),
            tnn.Conv2d(384, 256, 3, padding=1), tnn.ReLU(inplace=True),
            tnn.Conv2d(256, 256, 3, padding=1), tnn.ReLU(inplace=True), tnn.MaxPool2d(3, 2))
        self.avgpool = tnn.AdaptiveAvgPool2d((6, 6))
        self.classifier = tnn.Sequential(
            tnn.Dropout(dropout), tnn.Linear(9216, 4096), tnn.ReLU(inplace=True),
            tnn.Dropout(dropout), tnn.Linear(4096, 4096), tnn.ReLU(inplace=True), tnn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class TVGG(tnn.Module):  # torchvision.models.VGG + make_layers
    CFG_A = VGG_A

    def __init__(self, cfg=VGG_A, batch_norm=False, num_classes=1000, dropout=0.5):
        super().__init__()
        layers, c = [], 3
        for v in cfg:
            if v == "M":
                layers.append(tnn.MaxPool2d(2, 2))
            else:
                layers += [tnn.Conv2d(c, v, 3, padding=1)] + ([tnn.BatchNorm2d(v)] if batch_norm else []) + [tnn.ReLU(inplace=True)]
                c = v
        self.features = tnn.Sequential(*layers)
        self.avgpool = tnn.AdaptiveAvgPool2d((7, 7))
        self.classifier = tnn.Sequential(
            tnn.Linear(25088, 4096), tnn.ReLU(True), tnn.Dropout(dropout),
            tnn.Linear(4096, 4096), tnn.ReLU(True), tnn.Dropout(dropout), tnn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _conv(i, o, k, s=1):
    return tnn.Conv2d(i, o, k, stride=s, padding=k // 2, bias=False)


class TBasicBlock(tnn.Module):  # torchvision.models.resnet.BasicBlock
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1, self.bn1 = _conv(inplanes, planes, 3, stride), tnn.BatchNorm2d(planes)
        self.relu = tnn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv(planes, planes, 3), tnn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


class TBottleneck(tnn.Module):  # torchvision.models.resnet.Bottleneck (v1.5: stride on the 3×3)
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1, self.bn1 = _conv(inplanes, planes, 1), tnn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv(planes, planes, 3, stride), tnn.BatchNorm2d(planes)
        self.conv3, self.bn3 = _conv(planes, planes * 4, 1), tnn.BatchNorm2d(planes * 4)
        self.relu = tnn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


class TResNet(tnn.Module):  # torchvision.models.ResNet (+ a CIFAR stem)
    def __init__(self, block, layers, num_classes=1000, widths=(64, 128, 256, 512), cifar=False):
        super().__init__()
        self.inplanes = widths[0]
        if cifar:
            self.conv1 = _conv(3, widths[0], 3)
        else:
            self.conv1 = tnn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1, self.relu = tnn.BatchNorm2d(widths[0]), tnn.ReLU(inplace=True)
        self.maxpool = tnn.Identity() if cifar else tnn.MaxPool2d(3, 2, 1)
        for i, (w, n) in enumerate(zip(widths, layers)):
            setattr(self, f"layer{i + 1}", self._make_layer(block, w, n, 1 if i == 0 else 2))
        self.n_stages = len(layers)
        self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
        self.fc = tnn.Linear(self.inplanes, num_classes)

    def _make_layer(self, block, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = tnn.Sequential(_conv(self.inplanes, planes * block.expansion, 1, stride),
                                        tnn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return tnn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.n_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TBasicConv2d(tnn.Module):  # torchvision.models.googlenet.BasicConv2d
    def __init__(self, i, o, **kw):
        super().__init__()
        self.conv = tnn.Conv2d(i, o, bias=False, **kw)
        self.bn = tnn.BatchNorm2d(o, eps=0.001)

    def forward(self, x):
        return tF.relu(self.bn(self.conv(x)), inplace=True)


class TInception(tnn.Module):
    def __init__(self, i, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
        super().__init__()
        self.branch1 = TBasicConv2d(i, ch1x1, kernel_size=1)
        self.branch2 = tnn.Sequential(TBasicConv2d(i, ch3x3red, kernel_size=1),
                                      TBasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1))
        self.branch3 = tnn.Sequential(TBasicConv2d(i, ch5x5red, kernel_size=1),
                                      TBasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1))
        self.branch4 = tnn.Sequential(tnn.MaxPool2d(3, 1, 1, ceil_mode=True), TBasicConv2d(i, pool_proj, kernel_size=1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class TInceptionAux(tnn.Module):
    def __init__(self, i, num_classes, dropout=0.7):
        super().__init__()
        self.conv = TBasicConv2d(i, 128, kernel_size=1)
        self.fc1, self.fc2 = tnn.Linear(2048, 1024), tnn.Linear(1024, num_classes)
        self.dropout = tnn.Dropout(dropout)

    def forward(self, x):
        x = torch.flatten(self.conv(tF.adaptive_avg_pool2d(x, (4, 4))), 1)
        return self.fc2(self.dropout(tF.relu(self.fc1(x), inplace=True)))


class TGoogLeNet(tnn.Module):  # torchvision.models.GoogLeNet, transform_input=False
    def __init__(self, num_classes=1000, aux_logits=True, dropout=0.2, dropout_aux=0.7):
        super().__init__()
        self.conv1 = TBasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = tnn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = TBasicConv2d(64, 64, kernel_size=1)
        self.conv3 = TBasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = tnn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = TInception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = TInception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = tnn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = TInception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = TInception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = TInception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = TInception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = TInception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = tnn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = TInception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = TInception(832, 384, 192, 384, 48, 128, 128)
        self.aux_logits = aux_logits
        if aux_logits:
            self.aux1 = TInceptionAux(512, num_classes, dropout_aux)
            self.aux2 = TInceptionAux(528, num_classes, dropout_aux)
        self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
        self.dropout = tnn.Dropout(dropout)
        self.fc = tnn.Linear(1024, num_classes)

    def forward(self, x):
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        aux1 = self.aux1(x) if self.aux_logits and self.training else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if self.aux_logits and self.training else None
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        x = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
        if self.aux_logits and self.training:
            return x, aux2, aux1          # torchvision's GoogLeNetOutputs(logits, aux_logits2, aux_logits1)
        return x


TWINS = {
    "lenet5": t_lenet5,
    "cifar_cnn": t_cifar_cnn,
    "alexnet336": t_alexnet336,
    "vgg11": lambda num_classes=1000: TVGG(VGG_A, False, num_classes),
    "resnet18": lambda num_classes=1000: TResNet(TBasicBlock, (2, 2, 2, 2), num_classes),
}


# ----------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------

def copy_weights(nabi_model, torch_model):
    """Copy every nabi parameter and buffer into the torch twin; the key sets and shapes must agree."""
    sd = nabi_model.state_dict()
    tsd = {k: v for k, v in torch_model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(tsd) - set(sd))
    extra = sorted(set(sd) - set(tsd))
    assert not missing and not extra, f"state_dict keys differ: torch-only {missing}, nabi-only {extra}"
    bad = [f"{k}: nabi {tuple(np.shape(sd[k]))} torch {tuple(tsd[k].shape)}" for k in sd
           if tuple(np.shape(sd[k])) != tuple(tsd[k].shape)]
    assert not bad, "shape mismatch: " + "; ".join(bad)
    with torch.no_grad():
        for k, v in tsd.items():
            v.copy_(torch.from_numpy(np.ascontiguousarray(sd[k])).to(v.dtype))
    return len(sd)


def build_pair(name, num_classes, device="cpu", seed=0, nabi_kwargs=None):
    """``(nabi_model, torch_model)`` holding the same float32 weights, on ``device`` ('cpu' or 'gpu')."""
    model = build_nabi(name, num_classes, "cpu", seed, nabi_kwargs)
    twin = TWINS[name](num_classes=num_classes).to(torch.float32)
    copy_weights(model, twin)
    if device == "gpu":
        model.to("gpu")
        twin = twin.to("cuda")
    return model, twin


# ----------------------------------------------------------------------------------
# the re-identification embedding and the SimCLR network
# ----------------------------------------------------------------------------------

class TEmbeddingNet(tnn.Module):
    """nabi's ``embedding_net`` (head 'arcface'): backbone without fc → Linear (no bias) → BatchNorm1d → L2
    normalisation → cosines to the class centres (``CosineLinear``)."""

    def __init__(self, backbone, features, dim, num_classes):
        super().__init__()
        backbone.fc = tnn.Identity()
        self.backbone = backbone
        self.neck = tnn.Module()
        self.neck.fc = tnn.Linear(features, dim, bias=False)
        self.neck.bn = tnn.BatchNorm1d(dim)
        self.classifier = tnn.Module()
        self.classifier.weight = tnn.Parameter(torch.zeros(num_classes, dim))

    def forward(self, x):
        e = tF.normalize(self.neck.bn(self.neck.fc(self.backbone(x))), dim=1)
        return e @ tF.normalize(self.classifier.weight, dim=1).T


def torch_arcface(c, y, s=30.0, m=0.5):
    """ArcFace on cosines c (N, C), as ``nabi.functional.arcface_forward`` (no easy margin)."""
    import math
    ct = c.gather(1, y[:, None])[:, 0].clamp(-1 + 1e-7, 1 - 1e-7)
    phi = ct * math.cos(m) - torch.sqrt(1 - ct * ct) * math.sin(m)
    phi = torch.where(ct > math.cos(math.pi - m), phi, ct - math.sin(math.pi - m) * m)
    z = torch.where(tF.one_hot(y, c.shape[1]).bool(), phi[:, None], c) * s
    return tF.cross_entropy(z, y)


def build_embedding_pair(backbone, num_classes, dim=128, seed=0):
    """nabi's ``embedding_net`` (``backbone``, ArcFace head) and its twin, same float32 weights."""
    model = build_nabi("embedding_net", num_classes, "cpu", seed,
                       {"backbone": backbone, "embedding_dim": dim, "head": "arcface"})
    twin = TEmbeddingNet(TWINS[backbone](num_classes=2), 512, dim, num_classes).to(torch.float32)
    copy_weights(model, twin)
    return model, twin


# ----------------------------------------------------------------------------------
# the local patch descriptor (HardNet) and its loss
# ----------------------------------------------------------------------------------
def t_hardnet(width=8, dim=128, dropout=0.3):
    """HardNet's PyTorch network (Mishchuk et al. 2017, as its reference code builds it), nabi's key names."""
    layers = []
    for c_in, c_out, stride in [(1, width, 1), (width, width, 1), (width, 2 * width, 2), (2 * width, 2 * width, 1),
                                (2 * width, 4 * width, 2), (4 * width, 4 * width, 1)]:
        layers += [tnn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                   tnn.BatchNorm2d(c_out, affine=False), tnn.ReLU()]
    layers += [tnn.Dropout(dropout), tnn.Conv2d(4 * width, dim, 8, bias=False), tnn.BatchNorm2d(dim, affine=False)]

    class HardNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.features = tnn.Sequential(*layers)

        def forward(self, x):
            return tF.normalize(self.features(x).flatten(1), dim=1)
    return HardNet()


def torch_hardnet_loss(x, margin=1.0, eps=1e-6):
    """HardNet's hardest-in-batch triplet margin loss in PyTorch ops (rows i and i + N are a matching pair)."""
    n = x.shape[0] // 2
    a, p = x[:n], x[n:]
    s = (a * a).sum(1)[:, None] + (p * p).sum(1)[None, :] - 2.0 * a @ p.T
    d = torch.sqrt(torch.clamp(s, min=0.0) + eps)
    off = d + torch.diag(torch.full((n,), float("inf"), dtype=x.dtype, device=x.device))
    hardest = torch.cat([off, off.T], dim=1).min(dim=1).values
    return torch.clamp(margin + torch.diagonal(d) - hardest, min=0.0).mean()


def build_hardnet_pair(width=8, seed=0):
    """nabi's ``hardnet`` zoo model and its twin, same float32 weights."""
    model = build_nabi("hardnet", None, "cpu", seed, {"width": width})
    twin = t_hardnet(width).to(torch.float32)
    copy_weights(model, twin)
    return model, twin

