"""Activation layers: ``ReLU``, ``LeakyReLU``, ``Sigmoid``, ``Tanh``, ``Softmax``, ``LogSoftmax``, ``Identity``."""
from __future__ import annotations

from ..functional import activation as A
from .module import Module


class _Elementwise(Module):
    _fwd = _bwd = None

    def __init__(self):
        super().__init__()
        self._cache = None

    def forward(self, x):
        y, self._cache = type(self)._fwd(x)
        return y

    def backward(self, dy):
        cache, self._cache = self._cache, None      # freed once used: it would otherwise outlive the step
        return type(self)._bwd(dy, cache)


class ReLU(_Elementwise):
    """y = max(x, 0); the gradient passes where x > 0.

    A layer before it that ``fuses_relu`` (``Conv2d``) may compute it instead: ``Sequential``
    then hands this ReLU the output (``take_fused_output``) and gives it back to that layer's
    backward (``release_fused_output``), which applies the mask [y > 0] itself.
    """
    _fwd, _bwd = staticmethod(A.relu_forward), staticmethod(A.relu_backward)
    fusable_relu = True

    def summary_activation(self):
        return "relu"

    def forward_inplace(self, x):
        """``forward`` written over x, which the caller owns and nothing else reads (``Residual``'s sum)."""
        y, self._cache = A.relu_forward_inplace(x)
        return y

    def take_fused_output(self, y):
        """Record y = max(x, 0) computed by the layer before (a fused Conv2d) as this ReLU's output."""
        self._cache = y
        return y

    def release_fused_output(self):
        """The recorded output, for the fused layer's backward (which applies the mask [y > 0])."""
        y, self._cache = self._cache, None
        return y


class Sigmoid(_Elementwise):
    """y = 1 / (1 + e^(−x))."""
    _fwd, _bwd = staticmethod(A.sigmoid_forward), staticmethod(A.sigmoid_backward)

    def summary_activation(self):
        return "sigmoid"


class Tanh(_Elementwise):
    """y = tanh x."""
    _fwd, _bwd = staticmethod(A.tanh_forward), staticmethod(A.tanh_backward)

    def summary_activation(self):
        return "tanh"


class LeakyReLU(Module):
    """y = x for x > 0, a·x otherwise."""

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)
        self._cache = None

    def forward(self, x):
        y, self._cache = A.leaky_relu_forward(x, self.negative_slope)
        return y

    def backward(self, dy):
        return A.leaky_relu_backward(dy, self._cache)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"

    def summary_activation(self):
        return f"leaky_relu({self.negative_slope:g})"


class Softmax(Module):
    """Softmax along ``dim`` (default the class axis 1 of (N, K))."""

    def __init__(self, dim=1):
        super().__init__()
        self.dim = dim
        self._cache = None

    def forward(self, x):
        y, self._cache = A.softmax_forward(x, self.dim)
        return y

    def backward(self, dy):
        return A.softmax_backward(dy, self._cache)

    def summary_activation(self):
        return f"softmax(dim={self.dim})"


class LogSoftmax(Softmax):
    """log softmax along ``dim``."""

    def forward(self, x):
        y, self._cache = A.log_softmax_forward(x, self.dim)
        return y

    def backward(self, dy):
        return A.log_softmax_backward(dy, self._cache)

    def summary_activation(self):
        return f"log_softmax(dim={self.dim})"


class Identity(Module):
    def forward(self, x):
        return x

    def backward(self, dy):
        return dy
