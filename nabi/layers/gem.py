"""``GeneralizedMeanPool2d`` (``GeM``): global generalised-mean pooling with a learnable exponent."""
from __future__ import annotations

import numpy as np

from .. import backend
from ..functional import gem as F
from .module import Module, Parameter


class GeneralizedMeanPool2d(Module):
    """(N, C, H, W) → (N, C, 1, 1): y[n,c] = ((1/HW) Σ_{h,w} max(x[n,c,h,w], ε)^p)^{1/p}
    (Radenović et al., 2018; ``nabi.functional.gem`` has the formulas and the backward).

    p = 1 is average pooling (``AdaptiveAvgPool2d(1)`` for inputs ≥ ε), p → ∞ max pooling; the
    default 3 is the paper's starting point. ``learn_p=True`` (default): p is one trainable scalar,
    the parameter ``p`` of shape (1,) (a ResNet built with ``pool='gem'`` saves it as ``avgpool.p``),
    learnt with the rest of the network. ``learn_p=False``: p is a buffer of the same name, saved and
    loaded but never trained.

    An eval-mode forward writes nothing to the layer (threads may share it); training (or
    ``set_keep_cache``) keeps what backward needs.
    """

    def __init__(self, p=3.0, learn_p=True, eps=F.DEFAULT_EPS):
        super().__init__()
        p = F.check_gem_exponent(p, "GeneralizedMeanPool2d")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"GeneralizedMeanPool2d: eps must be a number > 0, got {eps!r}")
        self.eps = float(eps)
        self.learn_p = bool(learn_p)
        value = np.full((1,), p, dtype=backend.get_default_dtype())
        if self.learn_p:
            self.p = Parameter(value)
        else:
            self.register_buffer("p", value)
        self._cache = None

    def _p_array(self):
        return self.p.data if self.learn_p else self.p

    def forward(self, x):
        y, cache = F.gem_forward(x, self._p_array(), self.eps, layer="GeneralizedMeanPool2d")
        self._store_cache(cache)
        return y

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError("GeneralizedMeanPool2d: backward called without a forward pass in training mode")
        dx, dp = F.gem_backward(dy, self._cache, need_dp=self.learn_p)
        self._cache = None
        if dp is not None:
            self.p.accumulate(dp, owned=True)
        return dx

    def exponent(self) -> float:
        """The current p, as a Python float (copied from the device when the layer is on the GPU)."""
        return float(backend.to_numpy(self._p_array()).reshape(-1)[0])

    def extra_repr(self):
        return f"p={self.exponent():.4g}, learn_p={self.learn_p}, eps={self.eps:g}"

    def summary_geometry(self):
        return None, None, None, f"→1×1 GeM p={self.exponent():.3g}"

    def onnx_emit(self, ex, x, path):
        """ONNX: Pow(GlobalAveragePool(Pow(Max(x, ε), p)), 1/p), p from the layer's (trained) value."""
        eps = ex.const(np.array(self.eps, np.float32), f"{path}.eps")
        p = ex.param(self, path, "p")
        z = ex.node("Max", [x, eps], path, ".clamp")
        z = ex.node("Pow", [z, p], path, ".pow")
        m = ex.node("GlobalAveragePool", [z], path, ".mean")
        inv = ex.node("Reciprocal", [p], path, ".inv_p")
        return ex.node("Pow", [m, inv], path)


GeM = GeneralizedMeanPool2d
