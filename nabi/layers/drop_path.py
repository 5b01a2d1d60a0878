"""``DropPath``: stochastic depth on a residual branch, one keep-or-drop draw per sample."""
from __future__ import annotations

from .. import backend
from ..functional import drop_path as F
from .module import Module
from .norm import mask_generator


class DropPath(Module):
    """y[n] = x[n] · m_n / (1 − p), m_n ~ Bernoulli(1 − p), in training; y = x in eval.

    Put last in a residual block's body (before the addition), it drops the whole branch of
    a sample, leaving it the shortcut (``nabi.functional.drop_path`` has the formulas). It
    has no parameters or buffers, so a model's ``state_dict`` is the same with or without
    it. The mask comes from the layer's own generator ``rng`` (``seed``; by default drawn
    from nabi's global generator), whose state checkpoints keep, as ``Dropout``'s.
    """

    def __init__(self, p=0.0, seed=None):
        super().__init__()
        self.p = F.check_drop_probability(p, "DropPath")
        self.rng = backend.new_rng(seed)
        self._scale = None

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        y, self._scale = F.drop_path_forward(x, self.p, True, mask_generator(self, x))
        return y

    def backward(self, dy):
        return F.drop_path_backward(dy, self._scale)

    def extra_repr(self):
        return f"p={self.p}"
