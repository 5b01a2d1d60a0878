"""BYOL's target network update: an exponential moving average of the online weights, with a momentum
that rises to 1 over the run.

After optimiser step k of a run of K steps (k = 0, 1, …, K − 1):

    τ_k = 1 − (1 − τ_base) (cos(π k / K) + 1) / 2        τ_0 = τ_base, τ_{K/2} = (1 + τ_base)/2, τ_K = 1
    ξ  ← τ_k ξ + (1 − τ_k) θ                            for every target weight ξ and its online weight θ

(Grill et al. 2020, section 3.2 and appendix J: τ_base = 0.996 for 1000 ImageNet epochs; shorter runs
want the target to follow faster, hence 0.99 by default in ``nabi pretrain``.) Only the weights are
averaged; the target's batch-norm running statistics are its own (it runs in training mode, see
``nabi.selfsup.model.BYOL``).
"""
from __future__ import annotations

import math


def check_momentum(tau_base) -> float:
    """``tau_base`` as a float, or a ``ValueError`` naming ``--ema-momentum`` unless it lies in [0, 1)."""
    if isinstance(tau_base, bool) or not isinstance(tau_base, (int, float)) or not math.isfinite(tau_base) \
            or not 0 <= tau_base < 1:
        raise ValueError(f"--ema-momentum must be a number in [0, 1) (the target's starting EMA momentum τ; "
                         f"BYOL uses 0.99–0.996), got {tau_base!r}")
    return float(tau_base)


def ema_momentum(step: int, total_steps: int, tau_base: float) -> float:
    """τ_k = 1 − (1 − τ_base)(cos(π k/K) + 1)/2 for ``step`` k of ``total_steps`` K (k is clipped to [0, K])."""
    K = max(int(total_steps), 1)
    k = min(max(int(step), 0), K)
    return 1.0 - (1.0 - float(tau_base)) * (math.cos(math.pi * k / K) + 1.0) / 2.0


def ema_update(target, online, tau: float) -> None:
    """ξ ← τ ξ + (1 − τ) θ in place, for each target array ξ of ``target`` and online array θ of ``online``
    (same shapes and dtypes; NumPy or CuPy). Written as ``ξ *= τ; ξ += (1 − τ) θ``, the order of
    ``torch.Tensor.mul_(τ).add_(θ, alpha=1 − τ)``."""
    target, online = list(target), list(online)
    if len(target) != len(online):
        raise ValueError(f"ema_update: {len(target)} target arrays but {len(online)} online arrays")
    for xi, theta in zip(target, online):
        if xi.shape != theta.shape:
            raise ValueError(f"ema_update: a target array of shape {tuple(xi.shape)} pairs with an online "
                             f"array of shape {tuple(theta.shape)}")
        xi *= tau
        xi += (1.0 - tau) * theta
