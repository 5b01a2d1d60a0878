"""Convolution and pooling layers: ``Conv2d``, ``MaxPool2d``, ``AvgPool2d``, ``AdaptiveAvgPool2d``."""
from __future__ import annotations

import numpy as np

from .. import init as initialisers
from ..functional import conv as C
from ..functional import conv_fast as CF
from ..functional import pool as P
from ..functional.shape import pair
from .module import Module, Parameter
from .weighted import WeightedLayer


class Conv2d(WeightedLayer):
    """2-D convolution: (N, in_channels, H, W) → (N, out_channels, OH, OW).

    OH = ⌊(H − KH + 2·PH)/SH⌋ + 1. ``padding`` is an int, a pair or ``'same'``
    (stride 1, odd kernel). Weight (out, in, KH, KW) as PyTorch stores it.
    ``init`` fills the weight (default He uniform: He et al., 2015); the bias
    starts at zero (``bias_init``).

    Runs ``functional.conv_fast``: in training the layer keeps its buffers (im2col columns,
    GEMM results) in ``_workspace`` between steps; an eval-mode forward uses the calling
    thread's scratch buffers and writes nothing to the layer, so threads may share it.
    A ``Sequential`` may fuse a following ReLU into it (``fuses_relu``).
    """

    fuses_relu = True
    """``forward(x, relu=True)`` returns max(conv + b, 0) in the same pass, and ``backward(dy, relu_y=y)``
    applies that ReLU's mask as it reads δ."""

    fresh_input_grad = True     # ∂L/∂x is always a new array (col2im's or Winograd's)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 init="he_uniform", bias_init="zeros", rng=None):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.padding = C.resolve_padding(padding, self.kernel_size, self.stride, layer="Conv2d")
        self.padding_arg = padding
        kh, kw = self.kernel_size
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError(f"Conv2d: channel counts must be positive, got in={in_channels}, out={out_channels}")
        fan_in = self.in_channels * kh * kw
        self.weight = Parameter(initialisers.make((self.out_channels, self.in_channels, kh, kw), init, rng, fan_in))
        self.bias = Parameter(initialisers.make((self.out_channels,), bias_init, rng, fan_in)) if bias else None
        self._init_state()
        self._workspace = CF.Workspace()    # buffers kept between training steps (see forward)

    def forward(self, x, relu=False):
        """``relu=True``: return max(conv + b, 0) in the same pass (``Sequential`` fuses a following ReLU)."""
        b = self.bias.data if self.bias is not None else None
        # Training keeps the columns and GEMM buffers between steps (``self._workspace``); they are
        # reused only once the backward that needed the last columns has run. In eval mode the
        # layer's own are dropped and, when no cache is kept, the thread's scratch buffers serve.
        if self.training:
            ws = self._workspace if self._cache is None else None
        else:
            if self._workspace:
                self._workspace = CF.Workspace()
            ws = None if self.keep_cache else CF.scratch()
        y, cache = CF.conv2d_forward(x, self.weight.data, b, self.stride, self.padding, layer=self._name(),
                                     relu=relu, workspace=ws, purpose="train" if self.training else "eval",
                                     need_dx=self.compute_input_grad)
        self._store_cache(cache)
        return y

    def _backward(self, dy, cache, dw_out, relu_y):
        ws = self._workspace if self.training else None
        return CF.conv2d_backward(dy, cache, need_dx=self.compute_input_grad, dw_out=dw_out, relu_y=relu_y,
                                  consume=True, workspace=ws)

    def _sgd_backward(self, dy, cache, lr, relu_y):
        bias = self.bias.data if self.bias is not None else None
        return CF.conv2d_sgd_backward(dy, cache, self.weight.data, bias, lr, need_dx=self.compute_input_grad,
                                      relu_y=relu_y, workspace=self._workspace if self.training else None)

    def _on_device_change(self, device):
        self._workspace = CF.Workspace()    # host buffers are of no use on another device

    def _name(self):
        return f"Conv2d({self.in_channels}→{self.out_channels}, k={self.kernel_size}, s={self.stride}, p={self.padding})"

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}")

    def summary_geometry(self):
        return _window_geometry(self)

    def summary_macs(self, x_shape, y_shape):
        kh, kw = self.kernel_size
        return int(np.prod(y_shape)) * self.in_channels * kh * kw


def _window_geometry(m):
    k, s, p = tuple(m.kernel_size), tuple(m.stride), tuple(m.padding)
    text = f"{k[0]}×{k[1]} /{_fmt_pair(s)} p{_fmt_pair(p)}"
    if getattr(m, "ceil_mode", False):
        text += " ceil"
    return k, s, p, text


def _fmt_pair(p):
    return f"{p[0]}" if p[0] == p[1] else f"{p[0]}×{p[1]}"


class _Pool(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False):
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride") if stride is not None else self.kernel_size
        self.padding = pair(padding, "padding")
        self.ceil_mode = bool(ceil_mode)
        self._cache = None

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}")

    def _name(self):
        return f"{type(self).__name__}(k={self.kernel_size}, s={self.stride}, p={self.padding})"

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError(f"{self._name()}: backward called without a forward pass in training mode")
        dx = self._backward(dy, self._cache)
        self._cache = None
        return dx

    def summary_geometry(self):
        return _window_geometry(self)


class MaxPool2d(_Pool):
    """Max pooling; ties send the gradient to the first maximum of the window."""

    def forward(self, x):
        y, cache = P.max_pool2d_forward(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                                        layer=self._name())
        self._store_cache(cache)
        return y

    _backward = staticmethod(P.max_pool2d_backward)


class AvgPool2d(_Pool):
    """Average pooling (``count_include_pad`` as in PyTorch)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
        super().__init__(kernel_size, stride, padding, ceil_mode)
        self.count_include_pad = bool(count_include_pad)

    def forward(self, x):
        y, cache = P.avg_pool2d_forward(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                                        self.count_include_pad, layer=self._name())
        self._store_cache(cache)
        return y

    _backward = staticmethod(P.avg_pool2d_backward)


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed (OH, OW); ``AdaptiveAvgPool2d(1)`` is global average pooling."""

    def __init__(self, output_size=1):
        super().__init__()
        self.output_size = pair(output_size, "output_size")
        self._cache = None

    def forward(self, x):
        y, self._cache = P.adaptive_avg_pool2d_forward(x, self.output_size)
        return y

    def backward(self, dy):
        return P.adaptive_avg_pool2d_backward(dy, self._cache)

    def extra_repr(self):
        return f"output_size={self.output_size}"

    def summary_geometry(self):
        return None, None, None, f"→{self.output_size[0]}×{self.output_size[1]}"
