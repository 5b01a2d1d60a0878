"""Who is in this photo? The ``Identifier`` adapters ``nabi serve`` asks.

Every identifier answers ``identify(image_paths, together=False)`` with one dict per photo::

    {"answer": "background" | "known" | "unknown",
     "individual_id": int | None,        # the proposed individual (None: background, or nobody enrolled)
     "similarity": float,                # the best individual's score: probability (classifier) or cosine
     "margin": float | None,             # best minus second-best individual (None with one individual)
     "probability": float | None,        # calibrated P(same individual) of the best, when the gallery gives it
     "threshold": float | None,          # the score at or under which the answer is unknown (None: uncalibrated)
     "candidates": [{"individual_id", "similarity", "probability", "photo"}, ...],   # best first, ≤ topk
     "embedding": (D,) float32 | None}   # the photo's embedding, kept to enrol it on a decision

With ``together`` the photos are one sighting of one animal and every photo gets the sighting's answer,
from the evidence of all of them (a classifier: the photos' probabilities averaged; a gallery: its
sighting answer, ``nabi.reid.gallery.Gallery.identify`` with one group).

Individuals are the server's ids: ``load(label_ids, enrolments)`` gives the identifier the map from its
own names (classes of a run, names in a built gallery) to individual ids, and the photos enrolled by
the server.

- ``ClassifierIdentifier``: a nabi classifier run (``nabi train``). The similarity is the softmax
  probability p_k = exp(z_k) / Σ_j exp(z_j). The answer is ``background`` when the run has a class named
  ``background`` and it wins, ``unknown`` when the top probability is under ``threshold``, else
  ``known``. It knows only the individuals it was trained on (``can_enrol_new`` is False) and nothing is
  enrolled. ``heatmap`` draws Grad-CAM (``nabi.explain.grad_cam``) over the photo.
- ``GalleryIdentifier``: a re-identification gallery (``served_gallery.ServedGallery``): photos the people
  decide on join the search at once, new individuals too, without retraining.

Neither is thread-safe on its own: the caller runs one call at a time (``service`` holds a lock).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.background import BACKGROUND


class Identifier:
    """The interface ``nabi serve`` uses; see the module docstring for the answer's shape."""

    kind = "abstract"                 # 'classifier' | 'gallery'
    has_heatmap = False               # whether ``heatmap`` can draw one
    enrols = False                    # True: decided photos join the search (``put`` / ``drop``)
    source = None
    checksum = ""                     # identifies what is served (gallery index / weights SHA-256)
    model_sha256 = None               # the weights that make the embeddings (None: no embeddings)

    def labels(self) -> list:
        raise NotImplementedError

    def load(self, label_ids: dict, enrolments=()) -> None:
        raise NotImplementedError

    def identify(self, images, topk=5, together=False) -> list:
        raise NotImplementedError

    def can_enrol_new(self) -> bool:
        return False

    def put(self, photo_id, individual_id, path, embedding) -> None:
        """A decided photo joins the search under ``individual_id``."""

    def drop(self, photo_id) -> None:
        """A photo whose decision was undone leaves the search."""

    def embed(self, paths):
        """(N, D) embeddings of photos (None when this identifier has none)."""
        return None

    @property
    def threshold(self):
        return None

    @property
    def calibrated(self) -> bool:
        """Whether the unknown threshold was chosen on validation photos (a classifier's is given)."""
        return True

    def heatmap(self, image_path, individual_id=None) -> bytes | None:
        """A PNG of the photo with a heat-map of what decided the answer, or None when not available."""
        return None

    def describe(self) -> dict:
        return {"kind": self.kind, "source": str(self.source or ""), "threshold": self.threshold,
                "calibrated": self.calibrated, "can_enrol_new": self.can_enrol_new()}


def _margin(sims):
    return float(sims[0] - sims[1]) if len(sims) > 1 else None


class ClassifierIdentifier(Identifier):
    """A classifier run: top-k class probabilities, the background answer, Grad-CAM heat-maps."""

    kind = "classifier"
    has_heatmap = True

    def __init__(self, run, threshold=0.5, device="cpu"):
        from ..data.prepare import eval_transforms
        from ..files.digest import file_sha256
        from ..runs import find_weights, image_fit, load_run
        self.source = Path(run)
        self.model, self.meta = load_run(run, device=device)
        self.checksum = file_sha256(find_weights(run))
        self.device = device
        self.classes = list(self.meta["classes"])
        self._threshold = float(threshold)
        C, H, W = (int(s) for s in self.meta["input_size"])
        self.channels, self.hw = C, (H, W)
        self.transforms = [t for t in eval_transforms((H, W), self.meta["normalization"]) if t is not None]
        self.fit = image_fit(self.meta)
        self.background = self.classes.index(BACKGROUND) if BACKGROUND in self.classes else None
        self._ids = {}

    @property
    def threshold(self):
        return self._threshold

    def labels(self):
        return [c for i, c in enumerate(self.classes) if i != self.background]

    def load(self, label_ids, enrolments=()):
        missing = [c for c in self.labels() if c not in label_ids]
        if missing:
            raise ValueError(f"no individual for the classes {missing[:5]}")
        self._ids = dict(label_ids)

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

    def identify(self, images, topk=5, together=False):
        probs = self.probabilities(images)
        if together and len(probs) > 1:                    # one sighting: the photos' probabilities averaged
            probs = np.repeat(probs.mean(axis=0, keepdims=True), len(probs), axis=0)
        out = []
        for p in probs:
            order = [int(i) for i in np.argsort(-p, kind="stable") if i != self.background]
            cands = [{"individual_id": self._ids[self.classes[i]], "similarity": float(p[i]), "probability": None,
                      "photo": None} for i in order[:topk]]
            best = int(np.argmax(p))
            if best == self.background:
                answer, ind = BACKGROUND, None
            elif p[best] < self._threshold:
                answer, ind = "unknown", None
            else:
                answer, ind = "known", self._ids[self.classes[best]]
            out.append({"answer": answer, "individual_id": ind, "similarity": float(p[best]),
                        "margin": _margin([c["similarity"] for c in cands]), "probability": None,
                        "threshold": self._threshold, "candidates": cands, "embedding": None})
        return out

    def heatmap(self, image_path, individual_id=None, size=384):
        """PNG bytes: the photo (cropped, squashed or padded as the model saw it) with Grad-CAM of the class of
        ``individual_id`` (default: the predicted class) drawn over it in the 'jet' colours, 45 % opaque."""
        from ..explain import grad_cam
        classes = [c for c, i in self._ids.items() if i == individual_id]
        target = self.classes.index(classes[0]) if classes else None
        try:
            cam, _ = grad_cam(self.model, self._input(image_path), target_class=target)
        except ValueError:          # a model without convolutional layers: no Grad-CAM
            return None
        from .images import heatmap_png
        return heatmap_png(cam, image_path, self.hw, size, self.fit)

    def describe(self):
        return {**super().describe(), "classes": self.classes, "background": self.background is not None}


class GalleryIdentifier(Identifier):
    """A re-identification gallery and the server's enrolments (``served_gallery.ServedGallery``)."""

    kind = "gallery"
    enrols = True

    def __init__(self, served, source=None):
        self.served = served
        self.source = source if source is not None else served.path
        self.checksum = served.checksum or "in-memory"

    @classmethod
    def open(cls, path, device="cpu"):
        try:
            from .served_gallery import ServedGallery
            served = ServedGallery.open(path, device=device)
        except ImportError as e:
            raise ImportError(f"{path} is not a classifier run, and re-identification galleries need "
                              f"nabi.reid.gallery, which this nabi lacks ({e})") from None
        return cls(served, Path(path))

    @property
    def model_sha256(self):
        return self.served.model_sha256

    @property
    def threshold(self):
        return self.served.threshold

    @property
    def calibrated(self):
        return self.served.threshold is not None

    @property
    def has_heatmap(self):
        return self.served.embedding_kind == "embedding"

    def labels(self):
        return self.served.labels()

    def load(self, label_ids, enrolments=()):
        self.served.load(label_ids, enrolments)

    def identify(self, images, topk=5, together=False):
        out = self.served.identify(images, topk=topk, groups=[0] * len(images) if together else None)
        for r in out:
            if r["answer"] not in ("background", "known", "unknown"):
                raise ValueError(f"the gallery answered {r['answer']!r}; expected background, known or unknown")
        return out

    def can_enrol_new(self):
        return True

    def put(self, photo_id, individual_id, path, embedding):
        self.served.put(photo_id, individual_id, path, embedding)

    def drop(self, photo_id):
        self.served.drop(photo_id)

    def embed(self, paths):
        return self.served.embed(paths)

    def heatmap(self, image_path, individual_id=None, size=384):
        return self.served.heatmap(image_path, individual_id, size)

    def gallery_photos(self):
        return self.served.photos()


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
        return GalleryIdentifier.open(path, device=device)
    raise ValueError(f"kind must be auto, classifier or gallery, got {kind!r}")
