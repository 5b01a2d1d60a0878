"""Watching for collapse in the methods without negatives (SimSiam, BYOL).

Without negatives nothing stops the network from mapping every photo to the same vector: the loss
reaches its floor and the backbone learns nothing. SimSiam's paper (Chen & He 2021, figure 2) watches
the per-dimension standard deviation of the l2-normalised projection z/‖z‖ over a batch:

    u_i   = z_i / max(‖z_i‖, ε)                    z (M, D) the projector's outputs of M views
    s     = (1/D) Σ_d std_i(u_id)                  (the population std over the M rows, per dimension)

For z spread like a zero-mean Gaussian each coordinate of u has std ≈ 1/√D (the healthy value); a
collapsed projector gives the same u for every photo, and s → 0. ``nabi pretrain`` logs the epoch's mean
of s over its batches (``z_std``, beside ``z_std_healthy`` = 1/√D in ``metrics.jsonl``) and warns once
when it falls below ``COLLAPSE_FRACTION``/√D.
"""
from __future__ import annotations

import math

from ..backend import get_array_module

COLLAPSE_FRACTION = 0.2
"""``z_std`` below this fraction of the healthy 1/√D counts as collapse."""

NORM_EPS = 1e-12


def normalised_std(z) -> float:
    """s = mean over the D dimensions of the std over the M rows of z/‖z‖, for z (M, D); a Python float."""
    xp = get_array_module(z)
    z = z.astype("float64", copy=False) if z.dtype.itemsize < 8 else z
    u = z / xp.maximum(xp.sqrt((z * z).sum(axis=1, keepdims=True)), NORM_EPS)
    return float(u.std(axis=0).mean())


def healthy_std(dim: int) -> float:
    """1/√D: the per-dimension std of a unit vector pointing in a uniformly random direction."""
    return 1.0 / math.sqrt(int(dim))


def is_collapsing(z_std: float, dim: int) -> bool:
    """Whether ``z_std`` is below ``COLLAPSE_FRACTION``/√D."""
    return z_std < COLLAPSE_FRACTION * healthy_std(dim)


def collapse_warning(z_std: float, dim: int, epoch: int) -> str:
    """The one line ``nabi pretrain`` prints when the projections collapse."""
    return (f"nabi pretrain: the projections are collapsing (std of normalised z {z_std:.2g}, healthy ≈ "
            f"{healthy_std(dim):.2g}) at epoch {epoch}: every photo is mapped to nearly the same vector, so the "
            f"loss can still fall while the backbone learns nothing useful; try a lower --lr, a larger "
            f"--batch-size, or --method simclr")
