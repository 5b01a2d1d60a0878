"""Sums that do not overflow in half precision.

NumPy (and CuPy) sum a float16 array in float16: 80,000 values of ±2 summed along one axis can
come out as −4096 instead of 0, and any sum past 65,504 is ``inf``. Bias gradients are such sums
over the batch (and the spatial positions), so for float16 they accumulate in float32 and are cast
back; float32 and float64 arrays are summed as they are, bit for bit as before.
"""
from __future__ import annotations

import numpy as np


def sum_over(a, axis):
    """``a.sum(axis)``, accumulated in float32 when ``a`` is float16 (the result keeps ``a``'s dtype)."""
    if a.dtype == np.float16:
        return a.sum(axis=axis, dtype=np.float32).astype(np.float16)
    return a.sum(axis=axis)
