"""Float32 error of each convolution algorithm against the exact (float64) convolution, the figures
``nabi/functional/conv_winograd.py`` states and ``tests/test_conv_winograd.py`` bounds.

    python -m benchmarks.winograd_error

For each layer shape (C input and F output channels, H×H, 3×3, stride 1, padding 1; random normal inputs, He-scaled
weights, a random upstream gradient), the norm-relative error ‖r − r₆₄‖ / ‖r₆₄‖ of the output and of both gradients
computed in float32 by im2col, Winograd F(2×2, 3×3) and F(4×4, 3×3), r₆₄ being im2col's float64 result. Prints a row
per shape and the largest error of each algorithm. Needs no PyTorch.
"""
from __future__ import annotations

import numpy as np

from nabi.functional import conv, conv_winograd as CW
from nabi.functional.conv import conv_geometry

# (C, F, H, N)
SHAPES = ((3, 8, 17, 2), (7, 11, 13, 3), (16, 16, 16, 2), (64, 64, 9, 2), (64, 64, 16, 2), (128, 128, 8, 2),
          (256, 256, 6, 2), (512, 512, 5, 2), (512, 512, 8, 1))


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def errors(C, F, H, N, seed=0):
    """{algorithm: (output, ∂L/∂x, ∂L/∂w) norm-relative float32 errors} for one shape."""
    rng = np.random.default_rng(seed + C + H)
    x = rng.standard_normal((N, C, H, H))
    w = rng.standard_normal((F, C, 3, 3)) * np.sqrt(2 / (9 * C))
    b = rng.standard_normal(F)
    dy = rng.standard_normal((N, F, H, H))
    y64, cache = conv.conv2d_forward(x, w, b, 1, 1)
    dx64, dw64, _ = conv.conv2d_backward(dy, cache)
    x32, w32, b32, dy32 = (a.astype(np.float32) for a in (x, w, b, dy))
    out = {}
    y, cache = conv.conv2d_forward(x32, w32, b32, 1, 1)
    dx, dw, _ = conv.conv2d_backward(dy32, cache)
    out["im2col"] = (_rel(y, y64), _rel(dx, dx64), _rel(dw, dw64))
    geom = conv_geometry(x32, w32, 1, 1)
    for tile, name in ((2, "F(2x2,3x3)"), (4, "F(4x4,3x3)")):
        y, cache = CW.conv2d_forward(x32, w32, b32, geom, tile=tile)
        dx, dw, _ = CW.conv2d_backward(dy32, cache)
        out[name] = (_rel(y, y64), _rel(dx, dx64), _rel(dw, dw64))
    return out


def main():
    worst = {}
    print("C×F at H×H (N)      " + "  ".join(f"{a:>26s}" for a in ("im2col y / dx / dw", "F(2x2,3x3)", "F(4x4,3x3)")))
    for C, F, H, N in SHAPES:
        row = errors(C, F, H, N)
        for name, e in row.items():
            worst[name] = max(worst.get(name, 0.0), max(e))
        print(f"{C:4d}×{F:<4d} at {H:2d}×{H:<2d} ({N}) " + "  ".join(
            f"{e[0]:8.1e} {e[1]:8.1e} {e[2]:8.1e}" for e in row.values()))
    print("largest: " + ", ".join(f"{name} {v:.1e}" for name, v in worst.items()))


if __name__ == "__main__":
    main()
