"""Who is in this photo? The ``Identifier`` adapters ``nabi serve`` asks.

Every identifier answers ``identify(image_paths)`` with one dict per photo::

    {"answer": "background" | "known" | "unknown",
     "name": str | None,                 # the proposed individual (None for background)
     "similarity": float,                # confidence of the answer, in [0, 1] for a classifier
     "margin": float,                    # best minus second-best candidate similarity
     "candidates": [{"name", "similarity", "photo"}, ...]}   # best first, at most ``topk``

- ``ClassifierIdentifier``: a nabi classifier run (``nabi train``). The similarity is the
  softmax probability p_k = exp(z_k) / Σ_j exp(z_j). The answer is ``background`` when the run
  has a class named ``background`` and it wins, ``unknown`` when the top probability is under
  ``threshold``, else ``known``. It cannot learn a new individual without retraining, so
  ``enrol`` of a name it does not know is refused. ``heatmap`` draws Grad-CAM
  (``nabi.explain.grad_cam``) over the photo.
- ``GalleryIdentifier``: a re-identification gallery (``nabi.reid.gallery.Gallery``): new
  photos and new individuals are embedded and join at once.

Neither is thread-safe on its own: the caller runs one call at a time (``service`` holds a lock).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..data.background import BACKGROUND, is_background


class EnrolRefused(ValueError):
    """The identifier refuses a change: these photos under this name, a rename, a merge."""


class Identifier:
    """The interface ``nabi serve`` uses; see the module docstring for the answer's shape."""

    kind = "abstract"                 # 'classifier' | 'gallery'
    has_heatmap = False               # whether ``heatmap`` can draw one
    renames_itself = False            # True: rename/merge change the identifier's own names

    def identify(self, images, topk=5) -> list[dict]:
        raise NotImplementedError

    def names(self) -> list[str]:
        raise NotImplementedError

    def enrol(self, name, image_paths) -> None:
        raise NotImplementedError

    def can_enrol_new(self) -> bool:
        return False

    def rename(self, old, new) -> None:
        """Called after the app renamed an individual; identifiers that keep their own names follow."""

    def merge(self, src, dst) -> None:
        """Called after the app merged ``src`` into ``dst``."""

    def heatmap(self, image_path, name=None) -> bytes | None:
        """A PNG of the photo with a heat-map of what decided the answer, or None when not available."""
        return None

    def describe(self) -> dict:
        return {"kind": self.kind, "source": str(getattr(self, "source", ""))}


def _result(answer, name, similarity, candidates) -> dict:
    sims = [c["similarity"] for c in candidates]
    margin = (sims[0] - sims[1]) if len(sims) > 1 else (sims[0] if sims else 0.0)
    return {"answer": answer, "name": name, "similarity": float(similarity), "margin": float(margin),
            "candidates": candidates}


class ClassifierIdentifier(Identifier):
    """A classifier run: top-k class probabilities, the background answer, Grad-CAM heat-maps."""

    kind = "classifier"
    has_heatmap = True

    def __init__(self, run, threshold=0.5, device="cpu"):
        from ..data.prepare import eval_transforms
        from ..runs import image_fit, load_run
        self.source = Path(run)
        self.model, self.meta = load_run(run, device=device)
        self.device = device
        self.classes = list(self.meta["classes"])
        self.threshold = float(threshold)
        C, H, W = (int(s) for s in self.meta["input_size"])
        self.channels, self.hw = C, (H, W)
        self.transforms = [t for t in eval_transforms((H, W), self.meta["normalization"]) if t is not None]
        self.fit = image_fit(self.meta)
        self.background = self.classes.index(BACKGROUND) if BACKGROUND in self.classes else None

    def names(self):
        return [c for i, c in enumerate(self.classes) if i != self.background]

    def _input(self, path):
        """(C, H, W) the way ``nabi predict`` prepares a photo: read at the input size, then the run's transforms."""
        from ..data import load_image
        x = load_image(path, channels=self.channels, image_size=self.hw, fit=self.fit)
        for t in self.transforms:
            x = t(x, None)
        return x

    def probabilities(self, image_paths) -> np.ndarray:
        """(N, K) softmax probabilities of the run's K classes."""
        from .. import backend
        from ..functional.activation import softmax
        x = np.stack([self._input(p) for p in image_paths]).astype(np.float32)
        logits = self.model(backend.to_device(x, self.device))
        return backend.to_numpy(softmax(logits, axis=1)).astype(np.float64)

    def identify(self, images, topk=5):
        probs = self.probabilities(images)
        out = []
        for p in probs:
            order = [int(i) for i in np.argsort(-p, kind="stable") if i != self.background]
            cands = [{"name": self.classes[i], "similarity": float(p[i]), "photo": None} for i in order[:topk]]
            best = int(np.argmax(p))
            if best == self.background:
                out.append(_result(BACKGROUND, None, p[best], cands))
            elif p[best] < self.threshold:
                out.append(_result("unknown", self.classes[best], p[best], cands))
            else:
                out.append(_result("known", self.classes[best], p[best], cands))
        return out

    def enrol(self, name, image_paths):
        if name not in self.names():
            raise EnrolRefused(f"a classifier run ({self.source}) knows only the individuals it was trained on; "
                               f"adding the new individual {name!r} needs a re-identification gallery "
                               f"(serve a gallery instead of a run) or retraining")
        # A known individual: the photo is kept as one of its photos; the classifier itself does not change.

    def heatmap(self, image_path, name=None, size=384):
        """PNG bytes: the photo (cropped, squashed or padded as the model saw it) with Grad-CAM of class
        ``name`` (default: the predicted class) drawn over it in the 'jet' colours, 45 % opaque."""
        from ..explain import grad_cam
        target = self.classes.index(name) if name in self.classes else None
        try:
            cam, _ = grad_cam(self.model, self._input(image_path), target_class=target)
        except ValueError:          # a model without convolutional layers: no Grad-CAM
            return None
        return heatmap_png(cam, image_path, self.hw, size, self.fit)

    def describe(self):
        return {"kind": self.kind, "source": str(self.source), "classes": self.classes,
                "threshold": self.threshold, "background": self.background is not None}


class GalleryIdentifier(Identifier):
    """A re-identification gallery (``nabi.reid.gallery.Gallery``): enrolment without retraining.

    The gallery is used through ``add(name, paths)``, ``identify(paths, topk)``, ``names()``,
    ``rename(old, new)`` and ``merge(src, dst)``; its answers are checked into the shape above.
    """

    kind = "gallery"
    renames_itself = True

    def __init__(self, gallery, source=None):
        self.gallery = gallery
        self.source = source

    @classmethod
    def open(cls, path):
        try:
            from ..reid.gallery import Gallery
        except ImportError as e:
            raise ImportError(f"{path} is not a classifier run, and re-identification galleries need "
                              f"nabi.reid.gallery, which this nabi lacks ({e})") from None
        return cls(Gallery.open(path), Path(path))

    def names(self):
        """The enrolled individuals (the reserved ``background`` and ``background/<kind>`` names left out)."""
        return [n for n in self.gallery.names() if not is_background(n)]

    def identify(self, images, topk=5):
        if not self.gallery.names():          # an empty gallery knows nobody yet: every photo is someone new
            return [_result("unknown", None, 0.0, []) for _ in images]
        raw = self.gallery.identify([str(p) for p in images], topk=topk)
        out = []
        for r in raw:
            cands = [{"name": str(c["name"]), "similarity": float(c["similarity"]),
                      "photo": None if c.get("photo") is None else str(c["photo"])}
                     for c in (r.get("candidates") or []) if not is_background(c["name"])][:topk]
            answer = r.get("answer")
            if answer not in ("background", "known", "unknown"):
                raise ValueError(f"the gallery answered {answer!r}; expected background, known or unknown")
            res = _result(answer, r.get("name"), r.get("similarity") or 0.0, cands)
            if r.get("margin") is not None:
                res["margin"] = float(r["margin"])
            out.append(res)
        return out

    def can_enrol_new(self):
        return True

    def heatmap(self, image_path, name=None, size=384):
        """PNG bytes: Grad-CAM of the photo's cosine similarity to the closest gallery photo of ``name``
        (default: the best match), drawn over the photo; None for a gallery built with a classifier run
        or one that knows nobody yet."""
        emb = getattr(self.gallery, "embedder", None)
        if getattr(emb, "kind", None) != "embedding" or not self.names():
            return None
        from ..explain import grad_cam
        from ..reid.explain import SimilarityToEmbedding
        result = self.gallery.identify([str(image_path)], topk=max(5, len(self.names())))[0]
        cands = [c for c in result.get("candidates") or [] if c.get("photo") and not is_background(c["name"])]
        chosen = [c for c in cands if name is None or c["name"] == name][:1]
        if not chosen:
            return None
        target = emb.embed([Path(chosen[0]["photo"])])[0]
        try:
            cam, _ = grad_cam(SimilarityToEmbedding(emb.model, target), emb.load(Path(image_path)), target_class=0)
        except ValueError:          # a backbone without convolutional layers: no Grad-CAM
            return None
        return heatmap_png(cam, image_path, emb.input_size[1:], size, emb.fit)

    @property
    def has_heatmap(self):
        return getattr(getattr(self.gallery, "embedder", None), "kind", None) == "embedding"

    def enrol(self, name, image_paths):
        try:
            self.gallery.add(name, [str(p) for p in image_paths])
        except ValueError as e:
            raise EnrolRefused(f"the gallery refused {name!r}: {e}") from None

    def rename(self, old, new):
        try:
            self.gallery.rename(old, new)
        except ValueError as e:
            raise EnrolRefused(f"the gallery refused to rename {old!r} to {new!r}: {e}") from None

    def merge(self, src, dst):
        try:
            self.gallery.merge(src, dst)
        except ValueError as e:
            raise EnrolRefused(f"the gallery refused to merge {src!r} into {dst!r}: {e}") from None


def heatmap_png(cam, image_path, hw, size=384, fit="crop") -> bytes:
    """PNG bytes: the photo (brought to the model's aspect ``hw`` as the run's ``fit`` says, ``size`` pixels
    high) with the heat-map ``cam`` (values in [0, 1]) drawn over it in the 'jet' colours, 45 % opaque."""
    from PIL import Image
    from ..data.folder import fit_image, open_image, pil_to_array
    H, W = hw
    shown = fit_image(open_image(image_path, 3, None), (size, max(1, round(size * W / H))), fit)
    cam_img = Image.fromarray((np.clip(cam, 0, 1) * 255).astype(np.uint8)).resize(shown.size, Image.BILINEAR)
    t = np.asarray(cam_img, dtype=np.float64) / 255.0
    jet = np.stack([np.clip(1.5 - np.abs(4 * t - k), 0, 1) for k in (3, 2, 1)], axis=-1)
    photo = pil_to_array(shown).transpose(1, 2, 0).astype(np.float64)
    mixed = np.clip(0.55 * photo + 0.45 * jet, 0, 1)
    buf = io.BytesIO()
    Image.fromarray((mixed * 255 + 0.5).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def is_classifier_run(path) -> bool:
    """True for a run folder or weights file whose sidecar says ``nabi-model``."""
    from ..files import sidecar_path
    from ..runs import find_weights
    try:
        weights = find_weights(path)
    except FileNotFoundError:
        return False
    side = Path(sidecar_path(weights))
    if not side.is_file():
        return False
    import json
    try:
        return json.loads(side.read_text(encoding="utf-8")).get("format") == "nabi-model"
    except (OSError, ValueError):
        return False


def open_identifier(path, kind="auto", threshold=0.5, device="cpu") -> Identifier:
    """A classifier run or a gallery at ``path``; ``kind`` 'auto' looks at what is there."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (give a nabi run folder or a re-identification gallery)")
    if kind == "classifier" or (kind == "auto" and is_classifier_run(path)):
        return ClassifierIdentifier(path, threshold=threshold, device=device)
    if kind in ("gallery", "auto"):
        return GalleryIdentifier.open(path)
    raise ValueError(f"kind must be auto, classifier or gallery, got {kind!r}")
