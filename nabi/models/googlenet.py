"""GoogLeNet / Inception v1 (Szegedy et al., 2014) in torchvision's layout.

    conv1 7×7/2 64, maxpool1 3/2 ceil, conv2 1×1 64, conv3 3×3 192, maxpool2 3/2 ceil   → 192×28×28
    inception3a (256), inception3b (480), maxpool3 3/2 ceil                                → 480×14×14
    inception4a (512) [→ aux1], 4b (512), 4c (512), 4d (528) [→ aux2], 4e (832), maxpool4 2/2 ceil → 832×7×7
    inception5a (832), inception5b (1024), avgpool (global), flatten, dropout 0.2, fc 1024→num_classes

Every convolution is torchvision's BasicConv2d: ``Sequential(conv=Conv2d(bias=False),
bn=BatchNorm2d(eps=0.001), relu=ReLU())``. An inception module is ``Concat`` of
branch1 (1×1), branch2 (1×1 → 3×3), branch3 (1×1 → k×k), branch4 (3×3/1 max-pool → 1×1).
torchvision's branch3 uses k = 3 (a known deviation from the paper's 5×5):
``branch3_kernel=3`` (default, 6,624,904 parameters at 1000 classes, 13,004,888 with
the auxiliary heads) or ``5`` (the paper, 7,005,832 without them).

Auxiliary heads (``aux_logits=True``), on the outputs of inception4a and 4d: adaptive
average pool to 4×4, BasicConv2d 1×1 128, flatten, fc1 2048→1024, ReLU, dropout 0.7,
fc2 1024→num_classes. Keys are torchvision's (``conv1.conv.weight``,
``inception3a.branch2.0.conv.weight``, ``aux1.fc1.weight``), so its state_dicts load
directly once ``*.num_batches_tracked`` (a counter nabi does not keep) is dropped — and
``aux1.*``/``aux2.*`` too when building with ``aux_logits=False``. torchvision's
``transform_input`` (re-normalising ImageNet inputs) is not part of the model:
normalise the images in the data pipeline instead.

Training API with auxiliary heads (the paper weighs each auxiliary loss by 0.3)::

    logits = model(x)                        # main logits; model.aux_outputs = (aux1, aux2) logits
    a1, a2 = model.aux_outputs
    loss = ce(logits, y) + 0.3 * (ce1(a1, y) + ce2(a2, y))
    model.backward(ce.backward(), daux=(0.3 * ce1.backward(), 0.3 * ce2.backward()))

``model.backward(dmain)`` without ``daux`` leaves the auxiliary heads untrained. In
eval mode (or with ``aux_logits=False``) the heads are skipped, ``aux_outputs`` is
None and the forward pass is the plain chain ``model.eval_chain()``.
"""
from __future__ import annotations

from collections import OrderedDict

from ..layers import (AdaptiveAvgPool2d, BatchNorm2d, Concat, Conv2d, Dropout, Flatten, Linear, MaxPool2d, Module,
                      ReLU, Sequential)
from .registry import located_error, register


def basic_conv(in_channels, out_channels, kernel_size, stride=1, padding=0, init="he_uniform"):
    """torchvision's BasicConv2d: conv (no bias) → BatchNorm2d(eps=0.001) → ReLU."""
    return Sequential(OrderedDict([
        ("conv", Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False,
                        init=init)),
        ("bn", BatchNorm2d(out_channels, eps=0.001)),
        ("relu", ReLU()),
    ]))


def inception(in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj, branch3_kernel=3,
              init="he_uniform"):
    """Inception module (dimension-reduced): (N, in, H, W) → (N, ch1x1 + ch3x3 + ch5x5 + pool_proj, H, W)."""
    k = branch3_kernel
    return Concat(OrderedDict([
        ("branch1", basic_conv(in_channels, ch1x1, 1, init=init)),
        ("branch2", Sequential(basic_conv(in_channels, ch3x3red, 1, init=init),
                               basic_conv(ch3x3red, ch3x3, 3, padding=1, init=init))),
        ("branch3", Sequential(basic_conv(in_channels, ch5x5red, 1, init=init),
                               basic_conv(ch5x5red, ch5x5, k, padding=k // 2, init=init))),
        ("branch4", Sequential(MaxPool2d(3, 1, 1, ceil_mode=True), basic_conv(in_channels, pool_proj, 1, init=init))),
    ]))


def inception_aux(in_channels, num_classes, dropout=0.7, init="he_uniform"):
    """Auxiliary classifier: (N, in, H, W) → (N, num_classes)."""
    return Sequential(OrderedDict([
        ("pool", AdaptiveAvgPool2d((4, 4))),
        ("conv", basic_conv(in_channels, 128, 1, init=init)),
        ("flatten", Flatten()),
        ("fc1", Linear(2048, 1024, init=init)), ("relu", ReLU()), ("dropout", Dropout(dropout)),
        ("fc2", Linear(1024, num_classes, init=init)),
    ]))


# name: (in, #1×1, #3×3 reduce, #3×3, #5×5 reduce, #5×5, pool proj) — table 1 of the paper
INCEPTION = OrderedDict([
    ("inception3a", (192, 64, 96, 128, 16, 32, 32)),
    ("inception3b", (256, 128, 128, 192, 32, 96, 64)),
    ("inception4a", (480, 192, 96, 208, 16, 48, 64)),
    ("inception4b", (512, 160, 112, 224, 24, 64, 64)),
    ("inception4c", (512, 128, 128, 256, 24, 64, 64)),
    ("inception4d", (512, 112, 144, 288, 32, 64, 64)),
    ("inception4e", (528, 256, 160, 320, 32, 128, 128)),
    ("inception5a", (832, 256, 160, 320, 32, 128, 128)),
    ("inception5b", (832, 384, 192, 384, 48, 128, 128)),
])
AUX_TAPS = (("inception4a", "aux1", 512), ("inception4d", "aux2", 528))
AUX_WEIGHT = 0.3


class GoogLeNet(Module):
    """GoogLeNet: (N, 3, 224, 224) → (N, num_classes) logits; see the module docstring.

    Children are registered in torchvision's order. ``eval_chain()`` lists the modules
    the eval forward applies, in order (a plain chain: no branching outside the
    ``Concat`` blocks); the auxiliary heads tap inception4a and inception4d in training.
    """

    def __init__(self, num_classes=1000, aux_logits=False, branch3_kernel=3, dropout=0.2, aux_dropout=0.7,
                 init="he_uniform"):
        super().__init__()
        if branch3_kernel not in (3, 5):
            raise ValueError(f"googlenet: branch3_kernel must be 3 (torchvision) or 5 (paper), got {branch3_kernel}")
        self.aux_logits = bool(aux_logits)
        self.conv1 = basic_conv(3, 64, 7, stride=2, padding=3, init=init)
        self.maxpool1 = MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = basic_conv(64, 64, 1, init=init)
        self.conv3 = basic_conv(64, 192, 3, padding=1, init=init)
        self.maxpool2 = MaxPool2d(3, 2, ceil_mode=True)
        for name, spec in INCEPTION.items():
            setattr(self, name, inception(*spec, branch3_kernel=branch3_kernel, init=init))
            if name == "inception3b":
                self.maxpool3 = MaxPool2d(3, 2, ceil_mode=True)
            elif name == "inception4e":
                self.maxpool4 = MaxPool2d(2, 2, ceil_mode=True)
        if self.aux_logits:
            for _, aux, channels in AUX_TAPS:
                setattr(self, aux, inception_aux(channels, num_classes, aux_dropout, init))
        self.avgpool = AdaptiveAvgPool2d(1)
        self.flatten = Flatten()
        self.dropout = Dropout(dropout)
        self.fc = Linear(1024, num_classes, init=init)
        self.aux_outputs = None
        self._aux_ran = False
        self.input_size = (3, 224, 224)

    _CHAIN = ("conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
              "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
              "inception5a", "inception5b", "avgpool", "flatten", "dropout", "fc")

    def named_eval_chain(self):
        """``[(name, module), …]`` applied one after the other in eval mode."""
        return [(n, self._modules[n]) for n in self._CHAIN]

    def eval_chain(self):
        """The modules applied one after the other in eval mode (what an exporter should follow)."""
        return [m for _, m in self.named_eval_chain()]

    onnx_children = named_eval_chain

    def _heads_active(self):
        return self.aux_logits and self.training

    def forward(self, x):
        try:
            return self._forward(x)
        except ValueError as exc:
            raise located_error(self, exc, x) from exc

    def _forward(self, x):
        taps = {tap: aux for tap, aux, _ in AUX_TAPS} if self._heads_active() else {}
        outs = {}
        for name, m in self.named_eval_chain():
            x = m(x)
            if name in taps:
                outs[taps[name]] = self._modules[taps[name]](x)
        self._aux_ran = bool(taps)
        self.aux_outputs = (outs["aux1"], outs["aux2"]) if taps else None
        return x

    def backward(self, dy, daux=None):
        """Gradient of the input from ``dy`` (main logits) and, in training, ``daux = (d_aux1, d_aux2)``.

        ``daux`` already carries the loss weights (0.3 each in the paper); leave it None to
        train the main path only.
        """
        if daux is not None and not self._aux_ran:
            raise ValueError("googlenet: daux given but the auxiliary heads did not run "
                             "(they run only in training mode with aux_logits=True)")
        grads = {}
        if daux is not None:
            if len(daux) != 2:
                raise ValueError(f"googlenet: daux must be (d_aux1, d_aux2), got {len(daux)} arrays")
            grads = {tap: (aux, g) for (tap, aux, _), g in zip(AUX_TAPS, daux) if g is not None}
        chain = self.named_eval_chain()
        for i in range(len(chain) - 1, -1, -1):
            name, m = chain[i]
            if m.frozen or dy is None:
                # frozen stages (``Module.frozen``) and everything before them get no gradient; an
                # auxiliary head that still trains gets its own backward (its input gradient is unused)
                for tap, _ in chain[:i + 1]:
                    if tap in grads and not self._modules[grads[tap][0]].frozen:
                        self._modules[grads[tap][0]].backward(grads[tap][1])
                return None
            if name in grads:
                aux, g = grads[name]
                if not self._modules[aux].frozen:
                    dy = dy + self._modules[aux].backward(g)
            dy = m.backward(dy)
        return dy

    def extra_repr(self):
        return f"aux_logits={self.aux_logits}"


@register("googlenet")
def googlenet(num_classes=1000, aux_logits=False, branch3_kernel=3, dropout=0.2, aux_dropout=0.7,
              init="he_uniform"):
    """GoogLeNet, torchvision layout: (N, 3, 224, 224) → (N, num_classes); see ``GoogLeNet``."""
    return GoogLeNet(num_classes, aux_logits, branch3_kernel, dropout, aux_dropout, init)


__all__ = ["GoogLeNet", "googlenet", "basic_conv", "inception", "inception_aux", "INCEPTION", "AUX_WEIGHT"]
