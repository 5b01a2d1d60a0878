"""Background descriptors: keypoint descriptors of other animals that tell LNBNN what "anybody" looks like.

LNBNN (``nabi.reid.matcher``) weighs a gallery descriptor's vote by how much closer it is to the query's
descriptor than the (k + 1)-th nearest one — a descriptor of "anybody". In a gallery of a few animals that
(k + 1)-th neighbour is far: there are few other animals' descriptors to be close, so every vote weighs much
and a stranger's evidence looks like a known animal's. The same evidence means less in a large gallery, where
the calibration (fitted on many individuals) was made. A background — descriptors from photos of animals that
are neither enrolled nor queried — is searched beside the gallery: the (k + 1)-th neighbour is taken over both,
and background descriptors never vote. Evidence then means about the same in a gallery of 4 animals as in one
of 200.

A background file is a safetensors file with a JSON sidecar (``nabi.files.save_weights``): ``descriptors``
(B, D) uint8, the unit-length descriptors times ``scale`` rounded (RootSIFT's components lie in [0, 1]), and
its provenance (``format`` ``nabi-background``, ``descriptor``, ``photos``, ``individuals``, ``command``).

    from nabi.reid.background import build_background, save_background, load_background
    d, meta = build_background("other_animals/", per_photo=150, limit=16000)   # one folder per individual
    save_background("background.safetensors", d, meta)
    load_background("background.safetensors")                                  # (B, D) float32
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

FORMAT = "nabi-background"
SCALE = 255.0


def quantise(descriptors) -> np.ndarray:
    """Unit descriptors (B, D) with components in [0, 1] → uint8 (rounded × ``SCALE``)."""
    d = np.asarray(descriptors, np.float64)
    if d.ndim != 2:
        raise ValueError(f"background descriptors must be a (count, dim) array, got shape {d.shape}")
    if d.size and (d.min() < -1e-6 or d.max() > 1 + 1e-6):
        raise ValueError("background descriptors must have components in [0, 1] (RootSIFT's), got "
                         f"{d.min():.3g} … {d.max():.3g}")
    return np.clip(np.rint(d * SCALE), 0, 255).astype(np.uint8)


def save_background(path, descriptors, metadata=None) -> None:
    """Write descriptors (B, D) in [0, 1] as a background file (atomic, checksummed)."""
    from nabi.files.weight_files import save_weights
    q = quantise(descriptors)
    if not len(q):
        raise ValueError(f"a background needs at least one descriptor; none for {path}")
    meta = dict(metadata or {})
    meta.update(format=FORMAT, count=int(len(q)), dim=int(q.shape[1]), scale=SCALE)
    save_weights(path, {"descriptors": q}, meta, overwrite=True)


@lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int) -> np.ndarray:
    from nabi.files.weight_files import load_weights
    state, meta = load_weights(path)
    if meta.get("format") != FORMAT or "descriptors" not in state:
        raise ValueError(f"{path} is not a nabi background file (format {FORMAT!r} with 'descriptors' expected, "
                         f"got {meta.get('format')!r}); make one with nabi.reid.background.build_background")
    q = state["descriptors"]
    if q.dtype != np.uint8 or q.ndim != 2 or not len(q):
        raise ValueError(f"{path}: 'descriptors' should be a non-empty (count, dim) uint8 array, "
                         f"got {q.dtype} {q.shape}")
    d = q.astype(np.float32) / np.float32(meta.get("scale", SCALE))
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)   # rounding moved them off the sphere
    d.setflags(write=False)
    return d


def load_background(spec) -> np.ndarray | None:
    """The background descriptors (B, D) float32 of ``spec``: 'none' (None) or a file's path."""
    if spec in (None, "none"):
        return None
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"background descriptor file {path} not found (matcher setting background="
                                f"{spec!r}; expected 'none' or a file written by save_background)")
    return _load(str(path.resolve()), path.stat().st_mtime_ns)


def build_background(photos, settings=None, per_photo=150, limit=16000, seed=0, log=None):
    """Descriptors of ``photos`` (a folder of individual folders, or a list of photo paths) for a background:
    up to ``per_photo`` of each photo's keypoints drawn at random, then ``limit`` in all. Returns
    ``(descriptors (B, D) float32, metadata)``."""
    from .folders import individual_folders
    from .local_features import LocalSettings, extract
    settings = settings or LocalSettings()
    if settings.descriptor != "rootsift":
        raise ValueError(f"a background is made of RootSIFT descriptors; the settings ask for {settings.descriptor!r}")
    if isinstance(photos, (str, Path)):
        folders = individual_folders(photos)
        paths = [p for _, ps in folders for p in ps]
        individuals = len(folders)
    else:
        paths, individuals = [Path(p) for p in photos], None
    if not paths:
        raise ValueError(f"no photos to make a background from in {photos}")
    rng = np.random.default_rng(seed)
    parts = []
    for i, p in enumerate(paths):
        f = extract(p, settings)
        if len(f):
            take = rng.permutation(len(f))[:per_photo]
            parts.append(f.descriptors[np.sort(take)])
        if log and (i + 1) % 25 == 0:
            log(f"background: {i + 1}/{len(paths)} photos")
    if not parts:
        raise ValueError(f"no keypoints found in the {len(paths)} photos of {photos}")
    d = np.concatenate(parts)
    if len(d) > limit:
        d = d[np.sort(rng.permutation(len(d))[:limit])]
    meta = {"descriptor": "rootsift", "local_settings": settings.to_dict(), "photos": len(paths),
            "individuals": individuals, "per_photo": per_photo, "limit": limit, "seed": seed}
    return np.ascontiguousarray(d, np.float32), meta
