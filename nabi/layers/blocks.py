"""Design-scheme blocks: dense connections, channel attention, bottlenecks, SE-ResNet blocks.

    DenseLayer         h = conv2(relu2(norm2(conv1(relu1(norm1(x))))))            (N, C, H, W) → (N, k, H, W)
                       (conv1 1×1 → bn_size·k, conv2 3×3 → k; only the k new channels come out)
    DenseBlock         x_0 = x,  x_i = layer_i([x_0, …, x_{i−1}]),  y = [x_0, x_1, …, x_L]  (C + L·k channels)
                       backward: g = δ; for i = L…1:  g[:, :C_i] += layer_i.backward(g[:, new_i]);  dx = g[:, :C]
                       (the gradient of x_j is its slice of δ plus every later layer's input-gradient slice)
    Transition         norm → relu → conv 1×1 → AvgPool2d(2, 2)
    SqueezeExcitation  s = σ(fc2(relu(fc1(mean_hw x)))),  y = x · s  (per channel)
                       ∂L/∂s = Σ_hw δ·x,   dx = δ·s + broadcast(∂L/∂pooled)/(H·W)
    Bottleneck         relu(bn3(conv3 1×1(relu(bn2(conv2 k×k/s(relu(bn1(conv1 1×1(x))))))) + shortcut(x))
    SEBasicBlock       relu(se(bn2(conv2(relu(bn1(conv1(x)))))) + shortcut(x))
    SEBottleneck       relu(se(bn3(conv3(…))) + shortcut(x))

Names follow torchvision (``denselayer1.norm1.weight``, ``transition1.conv.weight``,
``se.fc1.weight``, ``downsample.0.weight``) so its state_dicts load directly.
DenseLayer, Transition, Bottleneck and the SE blocks' outer structure are the generic
containers (``Sequential``/``Residual``); ``DenseBlock`` and ``SqueezeExcitation`` have
their own forward and backward. ONNX export cannot walk those two yet: their
``eval_chain()`` raises a ``NotImplementedError`` saying what the exporter would need.
"""
from __future__ import annotations

from collections import OrderedDict

from ..backend import get_array_module
from .activation import ReLU, Sigmoid
from .container import Residual, Sequential
from .conv import AdaptiveAvgPool2d, AvgPool2d, Conv2d
from .module import Module
from .norm import BatchNorm2d, Dropout

__all__ = ["DenseLayer", "DenseBlock", "Transition", "SqueezeExcitation", "Bottleneck", "SEBasicBlock",
           "SEBottleneck"]


def _conv(i, o, k, stride=1, init="he_uniform", bias=False):
    return Conv2d(i, o, k, stride=stride, padding=k // 2, bias=bias, init=init)


def _downsample(i, o, stride, init):
    """torchvision's projection: 1×1 conv/stride (no bias) + BN, or None when the shape is kept."""
    if stride == 1 and i == o:
        return None
    return Sequential(_conv(i, o, 1, stride, init), BatchNorm2d(o))


# -- dense connections ---------------------------------------------------------------

class DenseLayer(Sequential):
    """BN-ReLU-Conv1×1(bn_size·k)-BN-ReLU-Conv3×3(k) [-Dropout]: (N, C, H, W) → (N, k, H, W).

    The output is only the k new feature maps; ``DenseBlock`` concatenates them.
    """

    def __init__(self, in_channels, growth_rate, bn_size=4, drop_rate=0.0, init="he_uniform"):
        c, k, mid = int(in_channels), int(growth_rate), int(bn_size) * int(growth_rate)
        layers = OrderedDict([
            ("norm1", BatchNorm2d(c)), ("relu1", ReLU()), ("conv1", _conv(c, mid, 1, init=init)),
            ("norm2", BatchNorm2d(mid)), ("relu2", ReLU()), ("conv2", _conv(mid, k, 3, init=init)),
        ])
        if drop_rate > 0:
            layers["dropout"] = Dropout(drop_rate)
        super().__init__(layers)
        self.in_channels, self.growth_rate, self.drop_rate = c, k, float(drop_rate)

    def extra_repr(self):
        return f"{self.in_channels}, growth_rate={self.growth_rate}"


class DenseBlock(Module):
    """``num_layers`` DenseLayers, each fed every earlier feature map: (N, C, H, W) → (N, C + L·k, H, W).

    x_i = denselayer_i([x_0, …, x_{i−1}]) with x_0 = x; y = [x_0, …, x_L] on channels.
    Backward walks the layers in reverse with one accumulator g (starts as δ):
    g[:, :C_i] += denselayer_i.backward(g[:, channels of x_i]), and dx = g[:, :C].
    """

    def __init__(self, num_layers, in_channels, bn_size=4, growth_rate=32, drop_rate=0.0, init="he_uniform"):
        super().__init__()
        if int(num_layers) < 1:
            raise ValueError(f"DenseBlock: num_layers must be at least 1, got {num_layers}")
        self.num_layers, self.in_channels, self.growth_rate = int(num_layers), int(in_channels), int(growth_rate)
        self.out_channels = self.in_channels + self.num_layers * self.growth_rate
        for i in range(self.num_layers):
            setattr(self, f"denselayer{i + 1}",
                    DenseLayer(self.in_channels + i * self.growth_rate, growth_rate, bn_size, drop_rate, init))
        self._shape = None

    def layers(self):
        return list(self._modules.values())

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"DenseBlock({self.in_channels}→{self.out_channels}): expected input (N, "
                             f"{self.in_channels}, H, W), got shape {tuple(x.shape)}")
        xp = get_array_module(x)
        c = self.in_channels
        layers = self.layers()
        new = layers[0](x)
        # one output buffer; layer i reads the channel prefix [0, C_i) (a view, already filled)
        out = xp.empty((x.shape[0], self.out_channels) + tuple(new.shape[2:]), dtype=xp.result_type(x, new))
        out[:, :c] = x
        out[:, c:c + new.shape[1]] = new
        c += new.shape[1]
        for layer in layers[1:]:
            new = layer(out[:, :c])
            out[:, c:c + new.shape[1]] = new
            c += new.shape[1]
        self._shape = out.shape
        return out

    def backward(self, dy):
        if self._shape is None or tuple(dy.shape) != tuple(self._shape):
            raise RuntimeError(f"DenseBlock: backward needs a gradient of the last forward's output shape "
                               f"{self._shape}, got {tuple(dy.shape)}")
        xp = get_array_module(dy)
        g = dy.copy()
        end = self.out_channels
        for layer in reversed(self.layers()):
            start = end - self.growth_rate
            g[:, :start] += layer.backward(xp.ascontiguousarray(g[:, start:end]))
            end = start
        return xp.ascontiguousarray(g[:, :self.in_channels])

    def onnx_emit(self, ex, x, path):
        """ONNX: feats = [x]; each layer reads Concat(feats); the output is Concat(feats) on channels."""
        feats = [x]
        for name, layer in self._modules.items():
            inp = feats[0] if len(feats) == 1 else ex.node("Concat", feats, path, f".{name}.in", axis=1)
            feats.append(ex.emit(layer, inp, f"{path}.{name}" if path else name))
        return ex.node("Concat", feats, path, ".out", axis=1)

    def extra_repr(self):
        return f"num_layers={self.num_layers}, in_channels={self.in_channels}, growth_rate={self.growth_rate}"


class Transition(Sequential):
    """DenseNet transition: norm → relu → conv 1×1 (no bias) → AvgPool2d(2, 2).

    (N, C, H, W) → (N, out_channels, ⌊H/2⌋, ⌊W/2⌋).
    """

    def __init__(self, in_channels, out_channels, init="he_uniform"):
        super().__init__(OrderedDict([
            ("norm", BatchNorm2d(in_channels)), ("relu", ReLU()),
            ("conv", _conv(in_channels, out_channels, 1, init=init)), ("pool", AvgPool2d(2, 2)),
        ]))


# -- channel attention ---------------------------------------------------------------

class SqueezeExcitation(Module):
    """Squeeze-and-excitation (Hu et al., 2017), torchvision's layout (fc1/fc2 are 1×1 convs with bias).

    s = σ(fc2(relu(fc1(mean_hw x)))) of shape (N, C, 1, 1), y = x · s.
    Backward: ∂L/∂s = Σ_hw δ·x, pushed back through σ, fc2, relu, fc1 to ∂L/∂pooled;
    dx = δ·s + ∂L/∂pooled / (H·W) (broadcast over H, W).
    ``squeeze_channels`` defaults to max(1, channels // reduction).
    """

    def __init__(self, channels, reduction=16, squeeze_channels=None, init="he_uniform"):
        super().__init__()
        self.channels = int(channels)
        self.squeeze_channels = int(squeeze_channels or max(1, self.channels // int(reduction)))
        self.avgpool = AdaptiveAvgPool2d(1)
        self.fc1 = Conv2d(self.channels, self.squeeze_channels, 1, init=init)
        self.fc2 = Conv2d(self.squeeze_channels, self.channels, 1, init=init)
        self.activation = ReLU()
        self.scale_activation = Sigmoid()
        self._cache = None

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"SqueezeExcitation({self.channels}): expected input (N, {self.channels}, H, W), "
                             f"got shape {tuple(x.shape)}")
        s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        self._cache = (x, s) if self.training or self.keep_cache else None
        return x * s

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError(f"SqueezeExcitation({self.channels}): backward called without a forward pass in "
                               f"training mode")
        x, s = self._cache
        ds = (dy * x).sum(axis=(2, 3), keepdims=True)
        dpooled = self.fc1.backward(self.activation.backward(self.fc2.backward(self.scale_activation.backward(ds))))
        self._cache = None
        return dy * s + dpooled / (x.shape[2] * x.shape[3])

    def onnx_emit(self, ex, x, path):
        """ONNX: gate = Sigmoid(fc2(Relu(fc1(GlobalAveragePool(x))))); output Mul(x, gate)."""
        def sub(name):
            return f"{path}.{name}" if path else name
        g = x
        for name in ("avgpool", "fc1", "activation", "fc2", "scale_activation"):
            g = ex.emit(self._modules[name], g, sub(name))
        return ex.node("Mul", [x, g], path, ".scale")

    def extra_repr(self):
        return f"{self.channels}, squeeze_channels={self.squeeze_channels}"


# -- bottlenecks and SE-ResNet blocks --------------------------------------------------

def Bottleneck(in_channels, mid_channels, out_channels, kernel_size=3, stride=1, residual=True,
               init="he_uniform"):
    """Generic bottleneck: 1×1 reduce (→ mid) → k×k/stride → 1×1 expand (→ out), each with BN, ReLUs between.

    ``residual=True``: a ``Residual`` y = relu(body(x) + shortcut(x)); the shortcut is the
    identity, or ``downsample`` = 1×1 conv/stride + BN when stride ≠ 1 or in ≠ out.
    ``residual=False``: a ``Sequential`` of the same layers with ``relu`` at the end.
    Children: conv1, bn1, relu1, conv2, bn2, relu2, conv3, bn3 (torchvision's names).
    Grouped convolutions are not supported (nabi's Conv2d has no groups).
    """
    body = OrderedDict([
        ("conv1", _conv(in_channels, mid_channels, 1, init=init)), ("bn1", BatchNorm2d(mid_channels)),
        ("relu1", ReLU()),
        ("conv2", _conv(mid_channels, mid_channels, kernel_size, stride, init)), ("bn2", BatchNorm2d(mid_channels)),
        ("relu2", ReLU()),
        ("conv3", _conv(mid_channels, out_channels, 1, init=init)), ("bn3", BatchNorm2d(out_channels)),
    ])
    if not residual:
        body["relu"] = ReLU()
        return Sequential(body)
    return Residual(body, _downsample(in_channels, out_channels, stride, init), after=ReLU(),
                    shortcut_name="downsample")


class SEBasicBlock(Residual):
    """ResNet basic block with SE on the body: relu(se(bn2(conv2(relu(bn1(conv1 3×3/s(x)))))) + shortcut(x)).

    Output ``channels``; ``downsample`` (1×1 conv/s + BN) where the shape changes.
    """
    expansion = 1

    def __init__(self, in_channels, channels, stride=1, reduction=16, init="he_uniform"):
        body = OrderedDict([
            ("conv1", _conv(in_channels, channels, 3, stride, init)), ("bn1", BatchNorm2d(channels)),
            ("relu", ReLU()),
            ("conv2", _conv(channels, channels, 3, 1, init)), ("bn2", BatchNorm2d(channels)),
            ("se", SqueezeExcitation(channels, reduction, init=init)),
        ])
        super().__init__(body, _downsample(in_channels, channels, stride, init), after=ReLU(),
                         shortcut_name="downsample")


class SEBottleneck(Residual):
    """ResNet bottleneck with SE on the body (1×1 → 3×3 → 1×1 ×4 → se), output ``4 · channels``.

    ``stride_on='3x3'`` puts the stride on the 3×3 conv (torchvision v1.5), ``'1x1'`` on conv1.
    """
    expansion = 4

    def __init__(self, in_channels, channels, stride=1, reduction=16, init="he_uniform", stride_on="3x3"):
        if stride_on not in ("3x3", "1x1"):
            raise ValueError(f"SEBottleneck: stride_on must be '3x3' or '1x1', got {stride_on!r}")
        out = channels * self.expansion
        s1, s3 = (1, stride) if stride_on == "3x3" else (stride, 1)
        body = OrderedDict([
            ("conv1", _conv(in_channels, channels, 1, s1, init)), ("bn1", BatchNorm2d(channels)), ("relu1", ReLU()),
            ("conv2", _conv(channels, channels, 3, s3, init)), ("bn2", BatchNorm2d(channels)), ("relu2", ReLU()),
            ("conv3", _conv(channels, out, 1, 1, init)), ("bn3", BatchNorm2d(out)),
            ("se", SqueezeExcitation(out, reduction, init=init)),
        ])
        super().__init__(body, _downsample(in_channels, out, stride, init), after=ReLU(), shortcut_name="downsample")
