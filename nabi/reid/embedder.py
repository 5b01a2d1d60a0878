"""Photos → unit-length identity embeddings with a trained run, and the model's identity.

An embedding run (``embedding_net``) gives its BN-neck embeddings. A classifier run gives the
features its final ``Linear`` reads, L2-normalised, and also its class probabilities, so that a
classifier trained with a background class can answer "background" when that class wins.
The model's identity is the SHA-256 of its weights file: a gallery remembers it and refuses
to be searched with any other weights.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from .. import backend
from ..files.digest import file_sha256
from ..data import load_image
from ..data.background import is_background


def _final_linear(model):
    from ..layers import Linear, Sequential
    m = model
    while isinstance(m, Sequential) and len(m):
        last = list(m._modules.values())[-1]
        if isinstance(last, Linear):
            return last
        m = last
    raise ValueError(f"model {type(model).__name__} does not end with a Linear classifier: cannot take its "
                     "features as embeddings")


class Embedder:
    """``embed(items) -> (N, D)`` unit rows for photo paths or image arrays, with the run's preprocessing."""

    def __init__(self, run, device="cpu", batch_size=32, flip=False):
        from ..data.prepare import eval_transforms
        from ..runs import find_weights, image_fit, load_run
        self.weights = find_weights(run)
        self.model, self.meta = load_run(run, device=device)
        self.sha256 = file_sha256(self.weights)
        self.device, self.batch_size, self.flip = device, int(batch_size), bool(flip)
        self.input_size = tuple(self.meta["input_size"])
        self.fit = image_fit(self.meta)     # how photos are brought to the input size, as in training
        self.transforms = [t for t in eval_transforms(self.input_size[1:], self.meta["normalization"])
                           if t is not None]
        self.kind = "embedding" if hasattr(self.model, "embed") else "classifier"
        self.classes = list(self.meta.get("classes") or [])
        self._linear = _final_linear(self.model) if self.kind == "classifier" else None
        self._lock = threading.Lock()       # one forward at a time: layers keep per-call state

    def identity(self) -> dict:
        """What a gallery records of the model: weights path, their SHA-256, architecture, kind."""
        return {"weights": str(Path(self.weights).resolve()), "sha256": self.sha256,
                "arch": self.meta.get("arch", {}).get("name"), "kind": self.kind,
                "input_size": list(self.input_size), "fit": self.fit, "flip": self.flip}

    def load(self, item) -> np.ndarray:
        """One photo path, a Pillow image, or an image array ((H, W, C) or (H, W) uint8, (C, H, W) float in
        [0, 1]) → the model's input (C, H, W), brought to the input size as the run's ``fit`` says (resized and
        centre-cropped, squashed or padded), normalised as in training."""
        C, H, W = self.input_size
        if isinstance(item, (str, Path)):
            x = load_image(item, channels=C, image_size=(H, W), fit=self.fit)
        else:
            from ..data import array_to_pil, pil_to_array
            from ..data.folder import fit_image
            if hasattr(item, "convert") and hasattr(item, "size"):          # a Pillow image
                item = item.convert("RGB")
            a = np.asarray(item)
            if a.ndim == 2:
                a = np.repeat(a[..., None], 3, axis=2)
            if a.ndim == 3 and a.shape[-1] in (1, 3) and a.shape[0] not in (1, 3):
                a = a.transpose(2, 0, 1)
            if a.dtype == np.uint8:
                a = a.astype(np.float32) / 255.0
            if a.ndim != 3 or a.shape[0] not in (1, 3):
                raise ValueError(f"an image array must be (H, W, C) or (C, H, W) with 1 or 3 channels, got "
                                 f"shape {np.asarray(item).shape}")
            img = array_to_pil(np.clip(a, 0, 1)).convert("RGB" if C == 3 else "L")
            x = pil_to_array(fit_image(img, (H, W), self.fit))
        for t in self.transforms:
            x = t(x, None)
        return x

    def _forward(self, x):
        """(embeddings (n, D), class probabilities (n, K) or None) of a batch."""
        from ..functional.activation import softmax
        xb = backend.to_device(np.ascontiguousarray(x, dtype=np.float32), self.device)
        if self.kind == "embedding":
            return backend.to_numpy(self.model.embed(xb)).astype(np.float32), None
        feats = {}

        def capture(module, forward, z):          # the classifier's input: the features it reads
            feats["x"] = z
            return forward(z)
        remove = self._linear.add_forward_hook(capture)
        try:
            logits = self.model(xb)
        finally:
            remove()
        f = backend.to_numpy(feats["x"]).astype(np.float64)
        f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        return f.astype(np.float32), backend.to_numpy(softmax(logits, axis=1))

    def check_readable(self, item):
        """None when the photo can be read, else a message naming it (the photo is decoded once to check)."""
        if not isinstance(item, (str, Path)):
            return None
        try:
            self.load(item)
        except (OSError, ValueError) as e:
            return str(e) if str(item) in str(e) else f"could not read photo {item}: {e}"
        return None

    def embed(self, items, with_probs=False):
        """Unit embeddings (N, D) (and class probabilities (N, K) or None with ``with_probs``).

        With ``flip`` set (``Embedder(..., flip=True)``), each photo's embedding is the normalised mean of its
        own and its mirror image's (test-time augmentation)."""
        items = list(items)
        embs, probs = [], []
        for s in range(0, len(items), self.batch_size):
            x = np.stack([self.load(it) for it in items[s:s + self.batch_size]])
            with self._lock:
                e, p = self._forward(x)
                if self.flip:
                    e2, _ = self._forward(np.ascontiguousarray(x[..., ::-1]))
                    e = e + e2
                    e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
            embs.append(e)
            probs.append(p)
        E = np.concatenate(embs) if embs else np.zeros((0, 0), np.float32)
        P = np.concatenate(probs) if probs and probs[0] is not None else None
        return (E, P) if with_probs else E

    def background_wins(self, probs) -> np.ndarray:
        """(N,) bool: a classifier's arg-max is a background class (``background`` or ``background/<kind>``)."""
        if probs is None or not self.classes:
            return None
        bg = np.array([is_background(c) for c in self.classes])
        if not bg.any():
            return None
        return bg[np.asarray(probs).argmax(axis=1)]
