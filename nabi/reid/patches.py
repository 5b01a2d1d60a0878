"""Keypoint patches: the 32×32 grey square around each keypoint, rotated and scaled to the keypoint's frame.

A keypoint (x, y, size, angle) — OpenCV's ``cv2.KeyPoint``: centre in pixels, ``size`` the diameter of its
neighbourhood, ``angle`` in degrees, the direction (cos a, sin a) in image coordinates (x right, y down) —
gets the patch P (32 × 32) of side S = 6 · size, the window SIFT itself describes (4 bins of 1.5 · size),
with P's x axis along the keypoint's direction:

    spacing  h = S / 32                                   image pixels per patch pixel
    P[v, u]  = I(c + h·(u − 15.5)·d + h·(v − 15.5)·d⊥)    d = (cos a, sin a), d⊥ = (−sin a, cos a)

bilinear in I. So a keypoint found again in a rotated or rescaled photo (with its angle and size turned
and scaled with it) gives the same patch. To avoid aliasing when a large keypoint is sampled coarsely
(h > 1), I is the level ℓ = ⌊log₂ h⌋ of the image's Gaussian pyramid (``cv2.pyrDown``), where the spacing is
h / 2^ℓ ∈ [1, 2) pixels and the centre (x + ½)/2^ℓ − ½. Outside the photo the border pixels repeat.

The sampling is one ``cv2.remap`` per pyramid level over all of that level's keypoints (the sampling grids
stacked), the same bilinear interpolation ``cv2.warpAffine`` does for one patch at a time.

``standardise`` turns uint8 patches into the network's input: each patch minus its mean, divided by its
standard deviation (+ 1e-7), as HardNet's ``input_norm``; a flat patch becomes all zeros.
"""
from __future__ import annotations

import numpy as np

PATCH_SIZE = 32
MAGNIFICATION = 6.0          # patch side / keypoint size
_REMAP_ROWS = 32_000         # cv2.remap maps must have fewer than 32 767 rows


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ImportError('keypoint patches need OpenCV: pip install "nabi[reid]"') from None
    return cv2


def keypoint_array(keypoints) -> np.ndarray:
    """(n, 4) float64 rows (x, y, size, angle in degrees) from ``cv2.KeyPoint``s or an (n, 4) array."""
    if isinstance(keypoints, np.ndarray):
        kp = keypoints.astype(np.float64)
        if kp.ndim != 2 or kp.shape[1] != 4:
            raise ValueError(f"keypoints must be cv2.KeyPoints or an (n, 4) array of (x, y, size, angle), got "
                             f"shape {kp.shape}")
        return kp
    kps = list(keypoints)
    if kps and not all(hasattr(k, "pt") and hasattr(k, "size") for k in kps):
        raise ValueError("keypoints must be cv2.KeyPoints or an (n, 4) array of (x, y, size, angle)")
    return np.array([(k.pt[0], k.pt[1], k.size, k.angle) for k in kps], np.float64).reshape(-1, 4)


def patch_frames(kp, patch=PATCH_SIZE, magnification=MAGNIFICATION):
    """(n, 2, 3) affine maps A from patch pixel (u, v, 1) to image point (x, y) at level 0."""
    kp = np.asarray(kp, np.float64)
    h = magnification * kp[:, 2] / patch
    a = np.deg2rad(kp[:, 3])
    cos, sin = np.cos(a) * h, np.sin(a) * h
    half = (patch - 1) / 2.0
    A = np.empty((len(kp), 2, 3))
    A[:, 0, 0], A[:, 0, 1] = cos, -sin
    A[:, 1, 0], A[:, 1, 1] = sin, cos
    A[:, 0, 2] = kp[:, 0] - half * (cos - sin)
    A[:, 1, 2] = kp[:, 1] - half * (sin + cos)
    return A


def extract_patches(gray, keypoints, patch=PATCH_SIZE, magnification=MAGNIFICATION) -> np.ndarray:
    """uint8 (n, patch, patch) patches of a uint8 grey image (H, W) at ``keypoints`` (see the module docstring)."""
    cv2 = _cv2()
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.dtype != np.uint8 or gray.size == 0:
        raise ValueError(f"patches are cut from a uint8 grey image (H, W), got dtype {gray.dtype} and shape "
                         f"{gray.shape}")
    kp = keypoint_array(keypoints)
    out = np.empty((len(kp), patch, patch), np.uint8)
    if not len(kp):
        return out
    if not (np.isfinite(kp).all() and (kp[:, 2] > 0).all()):
        raise ValueError("keypoints need finite coordinates and angles and a positive size")
    spacing = magnification * kp[:, 2] / patch
    level = np.floor(np.log2(np.maximum(spacing, 1.0))).astype(int)
    pyramid = [gray]
    while len(pyramid) <= level.max() and min(pyramid[-1].shape) >= 2:
        pyramid.append(cv2.pyrDown(pyramid[-1]))
    level = np.minimum(level, len(pyramid) - 1)                       # past the pyramid's top: its last level
    frames = patch_frames(kp, patch, magnification)
    u, v = np.meshgrid(np.arange(patch, dtype=np.float32), np.arange(patch, dtype=np.float32))
    step = _REMAP_ROWS // patch
    for lev, image in enumerate(pyramid):
        chosen = np.nonzero(level == lev)[0]
        for s in range(0, len(chosen), step):
            rows = chosen[s:s + step]
            A = frames[rows] / 2.0 ** lev                             # x_ℓ = (x + ½)/2^ℓ − ½
            A[:, :, 2] += 0.5 / 2.0 ** lev - 0.5
            A = A.astype(np.float32)[:, :, :, None, None]             # (k, 2, 3, 1, 1)
            map_x = A[:, 0, 0] * u + A[:, 0, 1] * v + A[:, 0, 2]       # (k, patch, patch)
            map_y = A[:, 1, 0] * u + A[:, 1, 1] * v + A[:, 1, 2]
            k = len(rows)
            got = cv2.remap(image, map_x.reshape(k * patch, patch), map_y.reshape(k * patch, patch),
                            cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            out[rows] = got.reshape(k, patch, patch)
    return out


def standardise(patches) -> np.ndarray:
    """uint8 (n, P, P) → float32 (n, 1, P, P), each patch at zero mean and unit standard deviation."""
    x = np.asarray(patches, np.float32)
    if x.ndim != 3:
        raise ValueError(f"patches must be (n, P, P), got shape {x.shape}")
    mean = x.mean(axis=(1, 2), keepdims=True)
    std = x.std(axis=(1, 2), keepdims=True)
    return ((x - mean) / (std + 1e-7))[:, None]
