"""Design-scheme blocks (dense connections, channel attention, bottlenecks) and DenseNet / SE-ResNet.

Gradient checks: float64 central differences, random upstream gradient, bar 1e-6.
Against PyTorch twins written here (torchvision's code, same key names), forward,
input gradient and every parameter gradient (and BN running statistics):
    float64  rtol 1e-7, atol 1e-9 (blocks), 1e-6 / 1e-8 (whole networks, training mode)
    float32  rtol 1e-4, atol 1e-5 (blocks), 1e-3 / 1e-4 (whole networks, eval mode only:
             with training-mode BN on 1×1 or 2×2 maps float32 gradients are ill-conditioned
             in either library, see test_models.py)
"""
from collections import OrderedDict as OD

import numpy as np
import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as tF

import nabi.models as zoo
from nabi import backend
from nabi.gradcheck import check_module
from nabi.layers import (BatchNorm2d, Bottleneck, Conv2d, DenseBlock, DenseLayer, Residual, SEBasicBlock,
                         SEBottleneck, Sequential, SqueezeExcitation, Transition)
from nabi.models import registry
from nabi.models.densenet import densenet121, densenet_cifar
from nabi.models.senet import se_resnet18
from nabi.summary import summary
from helpers import compare_with_torch

TOL = 1e-6
F64 = dict(dtype=np.float64, rtol=1e-7, atol=1e-9)
F32 = dict(dtype=np.float32, rtol=1e-4, atol=1e-5)
NET64 = dict(dtype=np.float64, rtol=1e-6, atol=1e-8)
NET32 = dict(dtype=np.float32, rtol=1e-3, atol=1e-4)


# ----------------------------------------------------------------------------------
# PyTorch twins (torchvision's code, non-inplace ReLUs)
# ----------------------------------------------------------------------------------

class TDenseLayer(tnn.Module):
    def __init__(self, cin, k, bn_size=4, drop_rate=0.0):
        super().__init__()
        self.norm1, self.relu1 = tnn.BatchNorm2d(cin), tnn.ReLU()
        self.conv1 = tnn.Conv2d(cin, bn_size * k, 1, bias=False)
        self.norm2, self.relu2 = tnn.BatchNorm2d(bn_size * k), tnn.ReLU()
        self.conv2 = tnn.Conv2d(bn_size * k, k, 3, padding=1, bias=False)
        self.drop_rate = drop_rate

    def forward(self, x):
        x = torch.cat(x, 1) if isinstance(x, list) else x
        new = self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))
        return tF.dropout(new, p=self.drop_rate, training=self.training) if self.drop_rate > 0 else new


class TDenseBlock(tnn.ModuleDict):
    def __init__(self, num_layers, cin, bn_size, k, drop_rate=0.0):
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}", TDenseLayer(cin + i * k, k, bn_size, drop_rate))

    def forward(self, x):
        feats = [x]
        for layer in self.values():
            feats.append(layer(feats))
        return torch.cat(feats, 1)


class TTransition(tnn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(OD([("norm", tnn.BatchNorm2d(cin)), ("relu", tnn.ReLU()),
                             ("conv", tnn.Conv2d(cin, cout, 1, bias=False)), ("pool", tnn.AvgPool2d(2, 2))]))


class TDenseNet(tnn.Module):
    """torchvision.models.DenseNet; ``cifar=True``: conv0 3×3/1 stem only (DenseNet-BC for CIFAR)."""

    def __init__(self, k=32, blocks=(6, 12, 24, 16), c0=64, bn_size=4, num_classes=1000, cifar=False):
        super().__init__()
        if cifar:
            head = [("conv0", tnn.Conv2d(3, c0, 3, padding=1, bias=False))]
        else:
            head = [("conv0", tnn.Conv2d(3, c0, 7, 2, 3, bias=False)), ("norm0", tnn.BatchNorm2d(c0)),
                    ("relu0", tnn.ReLU()), ("pool0", tnn.MaxPool2d(3, 2, 1))]
        self.features = tnn.Sequential(OD(head))
        c = c0
        for i, n in enumerate(blocks):
            self.features.add_module(f"denseblock{i + 1}", TDenseBlock(n, c, bn_size, k))
            c += n * k
            if i != len(blocks) - 1:
                self.features.add_module(f"transition{i + 1}", TTransition(c, c // 2))
                c //= 2
        self.features.add_module("norm5", tnn.BatchNorm2d(c))
        self.classifier = tnn.Linear(c, num_classes)

    def forward(self, x):
        out = tF.adaptive_avg_pool2d(tF.relu(self.features(x)), (1, 1))
        return self.classifier(torch.flatten(out, 1))


class TSqueezeExcitation(tnn.Module):
    """torchvision.ops.SqueezeExcitation."""

    def __init__(self, c, s):
        super().__init__()
        self.avgpool = tnn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = tnn.Conv2d(c, s, 1), tnn.Conv2d(s, c, 1)
        self.activation, self.scale_activation = tnn.ReLU(), tnn.Sigmoid()

    def forward(self, x):
        return x * self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))


def _t_downsample(cin, cout, stride):
    if stride == 1 and cin == cout:
        return None
    return tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout))


class TSEBasicBlock(tnn.Module):
    expansion = 1

    def __init__(self, cin, c, stride=1, reduction=16):
        super().__init__()
        self.conv1, self.bn1 = tnn.Conv2d(cin, c, 3, stride, 1, bias=False), tnn.BatchNorm2d(c)
        self.relu = tnn.ReLU()
        self.conv2, self.bn2 = tnn.Conv2d(c, c, 3, 1, 1, bias=False), tnn.BatchNorm2d(c)
        self.se = TSqueezeExcitation(c, max(1, c // reduction))
        self.downsample = _t_downsample(cin, c, stride)

    def forward(self, x):
        out = self.se(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TBottleneck(tnn.Module):
    """torchvision's Bottleneck generalised: mid/out channels, k×k middle conv; optional SE."""
    expansion = 4

    def __init__(self, cin, mid, cout, k=3, stride=1, se_reduction=None, residual=True):
        super().__init__()
        self.conv1, self.bn1 = tnn.Conv2d(cin, mid, 1, bias=False), tnn.BatchNorm2d(mid)
        self.conv2, self.bn2 = tnn.Conv2d(mid, mid, k, stride, k // 2, bias=False), tnn.BatchNorm2d(mid)
        self.conv3, self.bn3 = tnn.Conv2d(mid, cout, 1, bias=False), tnn.BatchNorm2d(cout)
        self.se = TSqueezeExcitation(cout, max(1, cout // se_reduction)) if se_reduction else None
        self.downsample = _t_downsample(cin, cout, stride) if residual else None
        self.residual = residual

    def forward(self, x):
        out = tF.relu(self.bn1(self.conv1(x)))
        out = tF.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return tF.relu(out)


class TSEBottleneck(TBottleneck):
    def __init__(self, cin, c, stride=1, reduction=16):
        super().__init__(cin, c, 4 * c, 3, stride, se_reduction=reduction)


class TResNet(tnn.Module):
    """torchvision.models.ResNet with the blocks above."""

    def __init__(self, block, layers, num_classes=1000, reduction=16):
        super().__init__()
        self.conv1, self.bn1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False), tnn.BatchNorm2d(64)
        self.relu, self.maxpool = tnn.ReLU(), tnn.MaxPool2d(3, 2, 1)
        c = 64
        for i, (w, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(n):
                blocks.append(block(c, w, (1 if i == 0 else 2) if j == 0 else 1, reduction))
                c = w * block.expansion
            setattr(self, f"layer{i + 1}", tnn.Sequential(*blocks))
        self.avgpool, self.fc = tnn.AdaptiveAvgPool2d(1), tnn.Linear(c, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ----------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------

def build(make, dtype=np.float64, seed=0):
    """Build in ``dtype``; BN γ, β, running statistics and every bias randomised (not the trivial 1, 0)."""
    rng = np.random.default_rng(seed)
    with backend.default_dtype(dtype):
        m = make()
    for mod in m.modules():
        if isinstance(mod, BatchNorm2d):
            n = mod.num_features
            mod.weight.data[...] = rng.uniform(0.5, 1.5, n)
            mod.bias.data[...] = rng.standard_normal(n) * 0.2
            mod.running_mean[...] = rng.standard_normal(n) * 0.1
            mod.running_var[...] = rng.uniform(0.5, 2.0, n)
        if isinstance(mod, Conv2d) and mod.bias is not None:
            mod.bias.data[...] = rng.standard_normal(mod.out_channels) * 0.2
    return m


def assert_grads(module, x, **kw):
    errors = check_module(module, x, **kw)
    bad = {k: v for k, v in errors.items() if not v < TOL}
    assert not bad, f"gradient errors above {TOL}: {bad} (all: {errors})"
    assert len(errors) == 1 + len(list(module.parameters()))
    return errors


def randn(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape)


# ----------------------------------------------------------------------------------
# gradient checks
# ----------------------------------------------------------------------------------

GRAD_CASES = {
    "dense_layer": (lambda: DenseLayer(3, 2, bn_size=2), (2, 3, 5, 5)),
    "dense_block": (lambda: DenseBlock(3, 3, bn_size=2, growth_rate=2), (2, 3, 4, 5)),
    "transition": (lambda: Transition(4, 2), (2, 4, 6, 6)),
    "squeeze_excitation": (lambda: SqueezeExcitation(6, reduction=2), (2, 6, 4, 5)),
    "bottleneck_identity": (lambda: Bottleneck(6, 2, 6), (2, 6, 5, 5)),
    "bottleneck_projection": (lambda: Bottleneck(3, 2, 5, kernel_size=3, stride=2), (2, 3, 6, 5)),
    "bottleneck_plain": (lambda: Bottleneck(3, 2, 4, kernel_size=5, residual=False), (2, 3, 6, 6)),
    "se_basic_identity": (lambda: SEBasicBlock(4, 4, reduction=2), (2, 4, 5, 4)),
    "se_basic_projection": (lambda: SEBasicBlock(3, 4, stride=2, reduction=2), (2, 3, 6, 6)),
    "se_bottleneck": (lambda: SEBottleneck(4, 2, stride=2, reduction=4), (2, 4, 6, 6)),
}


@pytest.mark.parametrize("name", list(GRAD_CASES))
def test_block_gradients(name):
    make, shape = GRAD_CASES[name]
    assert_grads(build(make), randn(shape), max_coords=60)


def test_dense_layer_gradients_with_dropout():
    layer = build(lambda: DenseLayer(3, 4, bn_size=2, drop_rate=0.3))
    assert list(layer._modules)[-1] == "dropout"
    state = backend.rng_state(layer.dropout.rng)
    assert_grads(layer, randn((2, 3, 4, 4)), max_coords=60,
                 before_forward=lambda: backend.set_rng_state(layer.dropout.rng, state))


def test_eval_mode_gradients_with_keep_cache():
    """Running statistics in use (BN eval); SE and DenseBlock keep their caches with keep_cache."""
    net = build(lambda: Sequential(DenseBlock(2, 3, bn_size=2, growth_rate=2), SqueezeExcitation(7, 2)))
    net.eval().set_keep_cache()
    assert_grads(net, randn((2, 3, 4, 4)), max_coords=40)


# ----------------------------------------------------------------------------------
# blocks against PyTorch
# ----------------------------------------------------------------------------------

TORCH_CASES = {
    "dense_layer": (lambda: DenseLayer(5, 3, bn_size=2), lambda: TDenseLayer(5, 3, 2), (3, 5, 6, 6)),
    "dense_block": (lambda: DenseBlock(3, 4, bn_size=2, growth_rate=3), lambda: TDenseBlock(3, 4, 2, 3),
                    (2, 4, 6, 5)),
    "transition": (lambda: Transition(6, 3), lambda: TTransition(6, 3), (2, 6, 7, 8)),
    "squeeze_excitation": (lambda: SqueezeExcitation(8, reduction=4), lambda: TSqueezeExcitation(8, 2),
                           (3, 8, 5, 4)),
    "bottleneck_identity": (lambda: Bottleneck(8, 3, 8), lambda: TBottleneck(8, 3, 8), (2, 8, 5, 5)),
    "bottleneck_projection": (lambda: Bottleneck(4, 3, 8, kernel_size=5, stride=2),
                              lambda: TBottleneck(4, 3, 8, k=5, stride=2), (2, 4, 9, 8)),
    "bottleneck_plain": (lambda: Bottleneck(4, 3, 6, residual=False),
                         lambda: TBottleneck(4, 3, 6, residual=False), (2, 4, 5, 5)),
    "se_basic_identity": (lambda: SEBasicBlock(8, 8, reduction=4), lambda: TSEBasicBlock(8, 8, 1, 4),
                          (2, 8, 5, 5)),
    "se_basic_projection": (lambda: SEBasicBlock(4, 8, 2, reduction=4), lambda: TSEBasicBlock(4, 8, 2, 4),
                            (2, 4, 8, 7)),
    "se_bottleneck": (lambda: SEBottleneck(8, 4, 2, reduction=8), lambda: TSEBottleneck(8, 4, 2, 8),
                      (2, 8, 6, 6)),
}


@pytest.mark.parametrize("tol", [F64, F32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", list(TORCH_CASES))
def test_block_vs_torch(name, tol, xp):
    make, make_t, shape = TORCH_CASES[name]
    model = build(make, tol["dtype"])
    y = compare_with_torch(model, make_t(), randn(shape), xp, **tol)
    assert y.dtype == tol["dtype"]


def test_block_eval_vs_torch():
    """Eval mode (running statistics) through DenseBlock + Transition + SE."""
    make = lambda: Sequential(DenseBlock(2, 4, 2, 3), Transition(10, 5), SqueezeExcitation(5, 2))  # noqa: E731
    ref = tnn.Sequential(TDenseBlock(2, 4, 2, 3), TTransition(10, 5), TSqueezeExcitation(5, 2))
    model = build(make).set_keep_cache()
    compare_with_torch(model, ref, randn((2, 4, 6, 6)), train=False, rtol=1e-7, atol=1e-9)


def test_dense_block_concatenates_and_accumulates():
    block = build(lambda: DenseBlock(3, 4, bn_size=2, growth_rate=3))
    x = randn((2, 4, 5, 5))
    y = block(x)
    assert y.shape == (2, 4 + 3 * 3, 5, 5) and block.out_channels == 13
    np.testing.assert_array_equal(y[:, :4], x)                      # x_0 passes through untouched
    layers = block.layers()
    assert [n for n, _ in block.named_parameters()][:2] == ["denselayer1.norm1.weight", "denselayer1.norm1.bias"]
    assert [m.in_channels for m in layers] == [4, 7, 10]
    # only the last output slice upstream: the last layer's input gradient is the whole answer
    dy = np.zeros_like(y)
    dy[:, 10:] = randn((2, 3, 5, 5), seed=2)
    dy_before = dy.copy()
    dx = block.backward(dy)
    np.testing.assert_array_equal(dy, dy_before)                    # the caller's gradient is not modified
    block(x)
    g_last = layers[2].backward(dy[:, 10:].copy())                   # grads w.r.t. [x_0, x_1, x_2]
    g = g_last.copy()
    g[:, :7] += layers[1].backward(g_last[:, 7:10].copy())
    g[:, :4] += layers[0].backward(g[:, 4:7].copy())
    np.testing.assert_allclose(dx, g[:, :4], rtol=1e-12, atol=1e-14)


def test_block_errors():
    block = DenseBlock(2, 4, growth_rate=3)
    with pytest.raises(ValueError, match=r"DenseBlock\(4→10\): expected input \(N, 4, H, W\)"):
        block(np.zeros((1, 5, 4, 4), np.float32))
    with pytest.raises(RuntimeError, match="backward"):
        DenseBlock(1, 2, growth_rate=2).backward(np.zeros((1, 4, 2, 2), np.float32))
    with pytest.raises(ValueError, match="num_layers"):
        DenseBlock(0, 4)
    se = SqueezeExcitation(6, 2)
    with pytest.raises(ValueError, match=r"SqueezeExcitation\(6\)"):
        se(np.zeros((1, 5, 4, 4), np.float32))
    with pytest.raises(RuntimeError, match="without a forward"):
        se.backward(np.zeros((1, 6, 2, 2), np.float32))
    se.eval()(np.ones((1, 6, 2, 2), np.float32))
    with pytest.raises(RuntimeError, match="training mode"):
        se.backward(np.ones((1, 6, 2, 2), np.float32))
    with pytest.raises(ValueError, match="stride_on"):
        SEBottleneck(4, 2, stride_on="2x2")
    with pytest.raises(ValueError, match="6n \\+ 4"):
        densenet_cifar(depth=41)


def test_block_structure_and_names():
    assert isinstance(Bottleneck(4, 2, 4), Residual) and Bottleneck(4, 2, 4).shortcut_module is None
    assert isinstance(Bottleneck(4, 2, 8).shortcut_module, Sequential)
    assert type(Bottleneck(4, 2, 4, residual=False)) is Sequential
    se = SEBasicBlock(4, 8, stride=2)
    assert [n for n, _ in se.named_parameters()] == [
        "conv1.weight", "bn1.weight", "bn1.bias", "conv2.weight", "bn2.weight", "bn2.bias", "se.fc1.weight",
        "se.fc1.bias", "se.fc2.weight", "se.fc2.bias", "downsample.0.weight", "downsample.1.weight",
        "downsample.1.bias"]
    assert se.se.squeeze_channels == 1 and SqueezeExcitation(64).squeeze_channels == 4
    assert SqueezeExcitation(64, squeeze_channels=10).fc1.out_channels == 10
    assert list(Transition(8, 4)._modules) == ["norm", "relu", "conv", "pool"]
    assert list(DenseLayer(8, 4)._modules) == ["norm1", "relu1", "conv1", "norm2", "relu2", "conv2"]
    assert DenseLayer(8, 4).conv1.out_channels == 16


# ----------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------

def _torch_keys(module):
    return [k for k in module.state_dict() if not k.endswith("num_batches_tracked")]


@pytest.mark.parametrize("name,count,ref", [
    ("densenet121", 7_978_856, lambda: TDenseNet()),
    ("densenet169", 14_149_480, lambda: TDenseNet(32, (6, 12, 32, 32))),
    ("densenet201", 20_013_928, lambda: TDenseNet(32, (6, 12, 48, 32))),
    ("densenet161", 28_681_000, lambda: TDenseNet(48, (6, 12, 36, 24), 96)),
    ("densenet_cifar", 769_162, lambda: TDenseNet(12, (16, 16, 16), 24, num_classes=10, cifar=True)),
    ("se_resnet18", 11_778_592, lambda: TResNet(TSEBasicBlock, [2, 2, 2, 2])),
    ("se_resnet50", 28_088_024, lambda: TResNet(TSEBottleneck, [3, 4, 6, 3])),
])
def test_model_parameter_count_and_keys(name, count, ref):
    with torch.device("meta"):                                       # shapes only, nothing allocated
        t = ref()
    assert sum(p.numel() for p in t.parameters()) == count
    assert zoo.count_parameters(name) == count
    model = zoo.get(name, init=registry._shape_only)
    assert model.num_parameters() == count
    assert list(model.state_dict()) == _torch_keys(t)


def test_densenet121_real_build():
    model = densenet121()
    assert model.num_parameters() == 7_978_856
    names = dict(model.named_modules())
    for key in ("features.conv0", "features.norm0", "features.denseblock1.denselayer1.norm1",
                "features.transition1.norm", "features.denseblock4.denselayer16.conv2", "features.norm5",
                "classifier"):
        assert key in names, key
    assert "features.transition4" not in names
    assert names["features.denseblock4"].in_channels == 512 and names["features.norm5"].num_features == 1024
    assert model.input_size == (3, 224, 224)
    assert model.arch == {"name": "densenet121", "kwargs": {"num_classes": 1000, "drop_rate": 0.0,
                                                            "init": "he_uniform"}}


def test_registry_and_arch():
    for name in ("densenet121", "densenet169", "densenet201", "densenet161", "densenet_cifar", "se_resnet18",
                 "se_resnet50"):
        assert name in zoo.names()
    model = zoo.get("DenseNet-CIFAR", depth=40, num_classes=100)
    assert model.arch == {"name": "densenet_cifar", "kwargs": {
        "depth": 40, "growth_rate": 12, "compression": 0.5, "bn_size": 4, "num_classes": 100, "drop_rate": 0.0,
        "init": "he_uniform"}}
    assert model.input_size == (3, 32, 32)
    again = zoo.get(model.arch["name"], **model.arch["kwargs"])
    assert list(again.state_dict()) == list(model.state_dict())
    assert [len(model.features._modules[f"denseblock{i}"].layers()) for i in (1, 2, 3)] == [6, 6, 6]
    se = zoo.get("SE-ResNet-50", num_classes=10, reduction=8, init=registry._shape_only)
    assert se.arch == {"name": "se_resnet50", "kwargs": {"num_classes": 10, "reduction": 8, "init": se.arch[
        "kwargs"]["init"], "stride_on": "3x3", "zero_init_residual": False, "drop_path": 0.0}}
    assert se.input_size == (3, 224, 224)
    assert se.layer1[0].se.squeeze_channels == 256 // 8 and se.layer4[2].se.channels == 2048
    zi = se_resnet18(zero_init_residual=True)
    assert np.all(zi.layer1[0].bn2.weight.data == 0) and np.all(zi.layer1[0].se.fc2.weight.data != 0)


def test_densenet_cifar_vs_torch():
    model = build(lambda: densenet_cifar(depth=16, num_classes=10))
    ref = TDenseNet(12, (2, 2, 2), 24, num_classes=10, cifar=True)
    y = compare_with_torch(model, ref, randn((2, 3, 32, 32)), **NET64)
    assert y.shape == (2, 10)


def test_se_resnet18_vs_torch():
    """Training mode (batch statistics) in float64: the whole network's function and gradients.

    64×64 so layer4's batch norm sees 2·2·2 values per channel (at 32×32 only 2, and a
    3-element ~2e-6 relative disagreement in conv1's 1e3-sized gradients appears in float64)."""
    model = build(lambda: se_resnet18(num_classes=10))
    ref = TResNet(TSEBasicBlock, [2, 2, 2, 2], num_classes=10)
    y = compare_with_torch(model, ref, randn((2, 3, 64, 64)), **NET64)
    assert y.shape == (2, 10)


def test_se_resnet18_eval_vs_torch_float32():
    """float32, eval mode (running statistics, well conditioned): forward and every gradient."""
    model = build(lambda: se_resnet18(num_classes=10), np.float32).set_keep_cache()
    ref = TResNet(TSEBasicBlock, [2, 2, 2, 2], num_classes=10)
    y = compare_with_torch(model, ref, randn((2, 3, 32, 32)), train=False, **NET32)
    assert y.dtype == np.float32


def test_densenet121_vs_torch():
    """torchvision's DenseNet-121 at 1×3×64×64, training mode, float64: forward and every gradient."""
    model = build(lambda: densenet121(num_classes=10))
    y = compare_with_torch(model, TDenseNet(num_classes=10), randn((1, 3, 64, 64)), **NET64)
    assert y.shape == (1, 10)


# ----------------------------------------------------------------------------------
# summary and ONNX export
# ----------------------------------------------------------------------------------

@pytest.mark.parametrize("make,shape,probe,count", [
    (lambda: densenet_cifar(depth=16), (3, 32, 32), "features.denseblock3.denselayer2.conv2", 44_410),
    (lambda: se_resnet18(num_classes=10), (3, 64, 64), "layer4.1.se.fc2", 11_270_722),
])
def test_summary(make, shape, probe, count):
    model = make().train()
    res = summary(model, shape, file=False)
    leaves = [n for n, m in model.named_modules() if not m._modules]
    assert len(res.rows) == len(leaves) > 0                          # every leaf ran exactly once
    assert [r["name"] for r in res.rows if r["name"] == probe] == [probe]
    assert res.total_params == model.num_parameters() == count == sum(r["params"] for r in res.rows)
    assert res.rows[-1]["output_shape"] == (10,) and res.total_macs > 0
    assert model.training                                            # flags restored


def test_onnx_export_of_container_blocks(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from nabi.files.onnx import export_onnx, verify_onnx
    net = build(lambda: Sequential(DenseLayer(4, 4, bn_size=2), Transition(4, 6), Bottleneck(6, 3, 8, stride=2),
                                   Bottleneck(8, 2, 8), Bottleneck(8, 2, 4, residual=False)), np.float32)
    export_onnx(net, tmp_path / "blocks.onnx", (4, 16, 16))
    assert verify_onnx(net, tmp_path / "blocks.onnx", randn((2, 4, 16, 16)).astype(np.float32)) < 1e-4


@pytest.mark.parametrize("make,shape", [
    (lambda: densenet_cifar(depth=10), (3, 32, 32)),
    (lambda: se_resnet18(num_classes=4), (3, 32, 32)),
    (lambda: Sequential(SEBottleneck(8, 2)), (8, 4, 4)),
])
def test_onnx_export_of_dense_and_se_models(tmp_path, make, shape):
    """DenseBlock and SqueezeExcitation write their own ONNX sub-graphs (Concat of every earlier map;
    Mul by the sigmoid gate); the zoo models export whole and agree with onnxruntime."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from nabi.files.onnx import export_onnx, verify_onnx
    model = build(make, np.float32).train()
    rng = np.random.default_rng(3)
    for m in model.modules():                       # non-trivial batch-norm statistics
        if isinstance(m, BatchNorm2d):
            m.running_mean[:] = rng.normal(0, 0.1, m.num_features)
            m.running_var[:] = rng.uniform(0.5, 1.5, m.num_features)
    export_onnx(model, tmp_path / "m.onnx", shape)
    assert verify_onnx(model, tmp_path / "m.onnx", randn((2,) + shape).astype(np.float32)) < 1e-4
    assert model.training                           # export restores the training flag
