"""Input checks shared by the functional ops: rank, dtype, channels."""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module


def check_input(x, rank: int, layer: str, channels=None, what: str = "(N, C, H, W)"):
    """Refuse a wrong rank, a non-floating dtype or a channel mismatch with a clear message."""
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(f"{layer}: expected an array of shape {what}, got {type(x).__name__}")
    if x.ndim != rank:
        raise ValueError(f"{layer}: expected a {rank}-D input {what}, got shape {tuple(shape)}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{layer}: expected a floating-point input (float32 or float64), got dtype {x.dtype}; "
                        f"convert images with x.astype(np.float32)")
    if channels is not None and shape[1] != channels:
        raise ValueError(f"{layer}: expected {channels} input channels, got input of shape {tuple(shape)}")
    return get_array_module(x)
