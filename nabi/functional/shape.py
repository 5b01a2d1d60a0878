"""Output-size arithmetic shared by convolution and pooling (one function, one rule).

    out = floor((W - F + 2P) / S) + 1            (floor mode, convolution and pooling)
    out = ceil((W - F + 2P) / S) + 1             (ceil mode, pooling only; the last
                                                  window must start inside the input
                                                  or its left padding, as in PyTorch)
"""
from __future__ import annotations

import math


def pair(v, name: str = "value"):
    """``3`` → ``(3, 3)``; ``(3, 5)`` stays; anything else is a ``ValueError``."""
    if isinstance(v, bool):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    if isinstance(v, int):
        return (v, v)
    try:
        a, b = v
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}") from None
    if not (isinstance(a, int) and isinstance(b, int)):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return (int(a), int(b))


def same_padding(kernel_size, stride=1, dilation=1, layer: str = "conv2d"):
    """Padding that keeps H×W for stride 1: P = (F - 1) / 2 per side (F odd).

    A 7×7 kernel on 32×32 pads 3. ``'same'`` with stride > 1 or an even
    kernel would need asymmetric padding and is refused.
    """
    kh, kw = pair(kernel_size, "kernel_size")
    sh, sw = pair(stride, "stride")
    if sh != 1 or sw != 1:
        raise ValueError(f"{layer}: padding='same' needs stride 1, got stride {(sh, sw)}")
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"{layer}: padding='same' needs an odd kernel size, got {(kh, kw)}")
    return ((kh - 1) // 2, (kw - 1) // 2)


def output_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool = False) -> int:
    """Output length along one axis: ⌊(W − F + 2P)/S⌋ + 1, or ⌈…⌉ + 1 in ceil mode."""
    span = size + 2 * pad - kernel
    if span < 0:
        return 0
    if ceil_mode:
        out = math.ceil(span / stride) + 1
        if (out - 1) * stride >= size + pad:  # last window would start in the right padding
            out -= 1
        return out
    return span // stride + 1


def output_hw(in_hw, kernel, stride, padding, ceil_mode=False, layer="layer", x_shape=None):
    """Output (H, W) of a conv or pooling window, or a ``ValueError`` naming the layer.

    Raises when the output would be empty (the kernel does not fit the padded input).
    """
    H, W = in_hw
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    if sh < 1 or sw < 1:
        raise ValueError(f"{layer}: stride must be >= 1, got {(sh, sw)}")
    if kh < 1 or kw < 1:
        raise ValueError(f"{layer}: kernel size must be >= 1, got {(kh, kw)}")
    if ph < 0 or pw < 0:
        raise ValueError(f"{layer}: padding must be >= 0, got {(ph, pw)}")
    oh = output_size(H, kh, sh, ph, ceil_mode)
    ow = output_size(W, kw, sw, pw, ceil_mode)
    if oh <= 0 or ow <= 0:
        shape = tuple(x_shape) if x_shape is not None else (H, W)
        raise ValueError(
            f"{layer}: input of shape {shape} is too small for kernel {(kh, kw)} with stride {(sh, sw)} "
            f"and padding {(ph, pw)}: the output would be empty ({oh}×{ow})")
    return oh, ow


def check_divides(size: int, kernel: int, stride: int, pad: int) -> bool:
    """True when (W − F + 2P) is a multiple of S, i.e. the windows tile the input exactly.

    cs231n's example: a 7×7 input, 3×3 filter and stride 3 gives (7 − 3)/3 + 1 = 2.33 —
    nabi floors it to 2 (the last column is not covered), as PyTorch and Caffe do; this
    helper lets a caller refuse such a configuration instead.
    """
    return (size + 2 * pad - kernel) % stride == 0
