"""Synthetic individuals for the re-identification tests: each one a colour and a stripe pattern, each
photo of it shifted, brightness-jittered and noisy (32×32 PNG files written by the tests)."""
import colorsys
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32


def individual_look(i, n_looks=24):
    """(RGB colour, stripe angle, stripe period) of individual ``i``: hues and patterns spread apart."""
    hue = (i * 0.618034) % 1.0
    colour = np.array(colorsys.hsv_to_rgb(hue, 0.85, 0.9))
    angle = (i * 2.4) % np.pi
    period = 4 + (i * 3) % 9
    return colour, angle, period


def photo(i, j, seed=0):
    """Photo ``j`` of individual ``i``: (32, 32, 3) uint8."""
    rng = np.random.default_rng([seed, i, j])
    colour, angle, period = individual_look(i)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    phase = rng.uniform(0, 2 * np.pi)
    t = np.cos(angle) * xx + np.sin(angle) * yy
    stripes = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * t / period + phase))
    img = colour[None, None, :] * (0.35 + 0.65 * stripes[..., None])
    img = img * rng.uniform(0.85, 1.15) + rng.normal(0, 0.04, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def background_photo(j, seed=0):
    """An empty scene: a grey-green gradient with noise, no stripes."""
    rng = np.random.default_rng([seed, 999, j])
    yy = np.linspace(0, 1, SIZE)[:, None, None]
    img = np.array([0.35, 0.45, 0.3])[None, None, :] * (0.7 + 0.6 * yy) + rng.normal(0, 0.05, (SIZE, SIZE, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_photos(root, individuals, photos, start=0, seed=0, background=0, prefix="ind"):
    """Write ``root/<prefix><i>/<j>.png`` for each individual i and photos j in [start, start + photos);
    ``background`` > 0 adds that many photos under ``root/background/``. Returns ``root``."""
    root = Path(root)
    for i in individuals:
        d = root / f"{prefix}{i:02d}"
        d.mkdir(parents=True, exist_ok=True)
        for j in range(start, start + photos):
            Image.fromarray(photo(i, j, seed)).save(d / f"{j:03d}.png")
    if background:
        d = root / "background"
        d.mkdir(parents=True, exist_ok=True)
        for j in range(start, start + background):
            Image.fromarray(background_photo(j, seed)).save(d / f"{j:03d}.png")
    return root
