"""Learned local descriptors: a trained ``hardnet`` patch network describing SIFT keypoints.

    from nabi.reid.descriptors import PatchDescriptor, learned_features
    net = PatchDescriptor.load()                   # the descriptor shipped with nabi (or a path)
    d = net.describe(gray_uint8, keypoints)        # (n, 128) float32 unit rows at cv2.KeyPoints
    points, d = learned_features("photo.jpg")      # like nabi.reid.matcher.rootsift, other descriptors

``describe`` cuts each keypoint's 32×32 patch (``nabi.reid.patches``: side 6 × the keypoint's size, turned
to its angle, from the image pyramid), standardises it and runs the network in eval mode, in batches.
``learned_features(item, nfeatures, max_side)`` finds the same SIFT keypoints ``rootsift`` does (OpenCV, the
photo shrunk to ``max_side``) and returns ``(points (n, 2) float32, descriptors (n, 128) float32)``, so
``nabi.reid.matcher.inliers`` matches either kind (both have unit rows compared by Euclidean distance).

A descriptor file is a safetensors file with a JSON sidecar (``nabi.files``): ``format`` ``nabi-descriptor``,
the zoo architecture (``arch``), the patch geometry, and how it was trained (``training``: command, photos,
pairs, commit, date). Weights may be stored in float16; they are loaded as float32.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .patches import MAGNIFICATION, PATCH_SIZE, extract_patches, keypoint_array, standardise

FORMAT = "nabi-descriptor"
DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_NAME = "descriptor-hardnet8.safetensors"


def default_path() -> Path:
    """The descriptor file shipped in the package."""
    return DATA_DIR / DEFAULT_NAME


class PatchDescriptor:
    """A patch network (in eval mode) and its description: ``describe``, ``describe_patches``, ``dim``."""

    def __init__(self, model, metadata=None, batch_size=512):
        self.model = model.eval()
        self.metadata = dict(metadata or {})
        self.batch_size = int(batch_size)
        patch = self.metadata.get("patch", {})
        self.patch_size = int(patch.get("size", PATCH_SIZE))
        self.magnification = float(patch.get("magnification", MAGNIFICATION))
        if tuple(getattr(model, "input_size", (1, PATCH_SIZE, PATCH_SIZE))) != (1, self.patch_size, self.patch_size):
            raise ValueError(f"a patch descriptor takes 1×{self.patch_size}×{self.patch_size} patches, the model takes "
                             f"{model.input_size}")

    @property
    def dim(self) -> int:
        return int(self.model.arch["kwargs"].get("embedding_dim", 128))

    @classmethod
    def load(cls, path=None, batch_size=512) -> "PatchDescriptor":
        """Read a descriptor file (default: the one shipped with nabi); errors name the file."""
        from .. import files, models
        path = Path(path) if path is not None else default_path()
        state, meta = files.load_weights(path)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a nabi descriptor file: its sidecar {files.sidecar_path(path)} says "
                             f"format {meta.get('format')!r}, expected {FORMAT!r} (written by nabi train-descriptor)")
        arch = meta.get("arch") or {}
        try:
            model = models.get(arch["name"], **arch.get("kwargs", {}))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: its sidecar's architecture {arch!r} cannot be built: {e}") from None
        state = {k: np.asarray(v, dtype=np.float32) for k, v in state.items()}
        try:
            model.load_state_dict(state, strict=True)
        except (KeyError, ValueError) as e:
            raise ValueError(f"{path} does not fit its architecture {arch.get('name')}: {e}") from None
        return cls(model, meta, batch_size)

    def describe_patches(self, patches) -> np.ndarray:
        """(n, D) float32 unit rows of uint8 patches (n, P, P)."""
        patches = np.asarray(patches)
        if patches.ndim != 3 or patches.shape[1:] != (self.patch_size, self.patch_size):
            raise ValueError(f"patches must be (n, {self.patch_size}, {self.patch_size}), got shape {patches.shape}")
        out = np.empty((len(patches), self.dim), np.float32)
        for s in range(0, len(patches), self.batch_size):
            x = standardise(patches[s:s + self.batch_size])
            out[s:s + len(x)] = np.asarray(self.model(x), dtype=np.float32)
        return out

    def describe(self, gray, keypoints) -> np.ndarray:
        """(n, D) float32 unit rows at ``keypoints`` (``cv2.KeyPoint``s or (n, 4) x, y, size, angle) of a uint8
        grey image (H, W)."""
        kp = keypoint_array(keypoints)
        if not len(kp):
            return np.zeros((0, self.dim), np.float32)
        return self.describe_patches(extract_patches(gray, kp, self.patch_size, self.magnification))


_loaded = {}


def _descriptor(descriptor) -> PatchDescriptor:
    if isinstance(descriptor, PatchDescriptor):
        return descriptor
    key = str(Path(descriptor).resolve()) if descriptor is not None else str(default_path())
    if key not in _loaded:
        _loaded[key] = PatchDescriptor.load(descriptor)
    return _loaded[key]


def sift_keypoints(gray, nfeatures=2000):
    """The ``nfeatures`` strongest SIFT keypoints of a uint8 grey image (OpenCV), as ``rootsift`` finds them."""
    from .local_features import _cv2
    return _cv2().SIFT_create(nfeatures=nfeatures).detect(gray, None)


def learned_features(item, nfeatures=2000, max_side=512, descriptor=None):
    """``(points (n, 2) float32, descriptors (n, D) float32)`` of a photo (path or array, as ``rootsift``
    takes) at its SIFT keypoints, described by ``descriptor`` (a ``PatchDescriptor``, a file, or None for the
    shipped one)."""
    from .local_features import gray_image as _gray
    net = _descriptor(descriptor)
    gray = _gray(item, max_side)
    kps = sift_keypoints(gray, nfeatures)
    if not kps:
        return np.zeros((0, 2), np.float32), np.zeros((0, net.dim), np.float32)
    return np.array([k.pt for k in kps], np.float32), net.describe(gray, kps)
