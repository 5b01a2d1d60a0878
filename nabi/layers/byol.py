"""``BYOLLoss``: BYOL's symmetric normalised mean squared error with a stop-gradient on the target
(``nabi.functional.byol``)."""
from __future__ import annotations

from ..functional import byol as F
from .simsiam import StopGradientPairLoss


class BYOLLoss(StopGradientPairLoss):
    """L = mean over the N photos of ‖p̂₁ − sg(ẑ'₂)‖² + ‖p̂₂ − sg(ẑ'₁)‖² (x̂ = x/‖x‖), on the network's output
    (2N, 2D) = [online predictions p | target projections z'].

    ``backward()`` returns ∂L/∂out with zeros in the target columns: the stop-gradient. ``correct``
    counts the rows whose prediction p̂ is most similar to their partner's target projection ẑ' among the
    other rows' target projections.
    """

    loss_forward = staticmethod(F.byol_forward)
    loss_backward = staticmethod(F.byol_backward)
