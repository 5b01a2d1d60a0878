"""The re-identification search of ``nabi serve``: a built gallery (read-only) plus this server's enrolments.

The only module of the web app that uses ``nabi.reid.gallery``'s API, so that it can follow that API as
it changes. The built gallery folder is opened once and never written: the server records the SHA-256
of its ``index.json`` and keeps the photos it enrols (their embeddings) in its own data folder. Both are
searched together as one in-memory ``Gallery`` whose entries are named by *key*:

    str(individual id)      a photo of that individual (the built gallery's names are mapped to the
                            server's individuals by their labels, merges followed)
    background[/<kind>]     the reserved background names, unchanged

so the names people see are only labels: renaming never touches the search, and a merge only re-keys
the entries of the individual that went away.

Searching keeps each photo's embedding (``Answer["embedding"]``): a decision on the photo enrols that
row as it is, without decoding or embedding the photo again.

When the built gallery has local features (``nabi gallery build`` computes them), the server's photos get
theirs too — once per photo, kept in memory — and the keypoint index is carried from one search to the
next and extended, never built again for one new photo; answers then use the matcher exactly as
``nabi identify`` does on that gallery (its calibration decides).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.background import is_background


class _KeepsEmbeddings:
    """The gallery's embedder, remembering the embeddings of its last ``embed`` call (the caller holds the
    model lock, so "last" is this request's)."""

    def __init__(self, embedder):
        self._embedder = embedder
        self.last = None

    def embed(self, items, with_probs=False):
        out = self._embedder.embed(items, with_probs=with_probs)
        self.last = out[0] if with_probs else out
        return out

    def __getattr__(self, name):
        return getattr(self._embedder, name)


class ServedGallery:
    """``ServedGallery(gallery, path)``: the built ``Gallery`` (opened from ``path``, or given in memory) and the
    server's enrolments, searched as one. Not thread-safe: the service calls it under its model lock."""

    def __init__(self, gallery, path=None, checksum=None):
        self.base = gallery
        self.path = Path(path) if path is not None else None
        self.checksum = checksum
        self.embedder = _KeepsEmbeddings(gallery.embedder)
        self._label_ids = {}
        self._added = {}            # photo id -> (key, photo path, (D,) float32 embedding)
        self._features = {}         # photo id -> its local features (when the built gallery has them)
        self._feature_path = {}     # photo id -> the file its features were computed from
        self._index_state = None    # the last search's keypoint index, carried to the next
        self._search = None

    @classmethod
    def open(cls, path, device="cpu"):
        """Open the built gallery at ``path`` (read-only) and note the checksum of its index."""
        from ..files.digest import file_sha256
        from ..reid.gallery import INDEX, Gallery
        path = Path(path)
        gallery = Gallery.open(path, device=device)
        return cls(gallery, path, file_sha256(path / INDEX))

    # -- what it knows --------------------------------------------------------------------------------
    def labels(self) -> list:
        """The built gallery's individuals (background names left out), as it names them."""
        return sorted({e["name"] for e in self.base.entries if not is_background(e["name"])})

    @property
    def model_sha256(self) -> str:
        return self.base.embedder.sha256

    @property
    def threshold(self):
        return self.base.threshold

    @property
    def calibration(self):
        return self.base.calibration

    @property
    def embedding_kind(self):
        return getattr(self.base.embedder, "kind", None)

    def __len__(self):
        return len(self.base.entries) + len(self._added)

    # -- keeping it in step with the data folder ------------------------------------------------------
    def load(self, label_ids: dict, enrolments):
        """Key the built gallery's entries by ``label_ids`` ({label: individual id}, merges already followed) and
        replace the added photos by ``enrolments`` [(photo id, individual id, photo path, (D,) embedding)]."""
        missing = [n for n in self.labels() if n not in label_ids]
        if missing:
            raise ValueError(f"no individual for the gallery's names {missing[:5]}")
        self._label_ids = {k: int(v) for k, v in label_ids.items()}
        self._added = {int(p): (str(int(i)), str(path), np.asarray(e, np.float32)) for p, i, path, e in enrolments}
        self._features = {p: f for p, f in self._features.items() if p in self._added and
                          self._added[p][1] == self._feature_path.get(p)}
        self._search = None

    def put(self, photo_id, individual_id, path, embedding):
        """Add (or move) one photo of the server's to the search."""
        self._added[int(photo_id)] = (str(int(individual_id)), str(path), np.asarray(embedding, np.float32))
        if self._feature_path.get(int(photo_id)) != str(path):
            self._features.pop(int(photo_id), None)
        self._search = None

    def drop(self, photo_id):
        """Take one photo of the server's out of the search (nothing when it is not there)."""
        if self._added.pop(int(photo_id), None) is not None:
            self._features.pop(int(photo_id), None)
            self._search = None

    def _key(self, name):
        return name if is_background(name) else str(self._label_ids[name])

    def _local_features_of_added(self):
        """The local features of every added photo (computed once per photo), or None without a matcher."""
        base = self.base
        if not base.use_matcher(None):         # no local features, or a calibration without the matcher
            return None
        from ..reid.local_features import extract
        for pid, (_, path, _) in self._added.items():
            if pid not in self._features:
                self._features[pid] = extract(path, base.local_settings)
                self._feature_path[pid] = path
        return [self._features[pid] for pid in self._added]

    def _gallery(self):
        """The in-memory ``Gallery`` over the built entries and the additions (made again after a change, its
        keypoint index carried over and extended)."""
        if self._search is None:
            from ..reid.gallery import Gallery
            base = self.base
            entries = [{"name": self._key(e["name"]), "photo": e["photo"], "sha256": e["sha256"],
                        "encounter": e.get("encounter")} for e in base.entries]
            rows = [np.asarray(base.embeddings, np.float32)] if len(base.entries) else []
            for pid, (key, path, emb) in self._added.items():
                entries.append({"name": key, "photo": path, "sha256": f"photo-{pid}", "encounter": f"photo-{pid}"})
                rows.append(emb[None, :])
            E = np.concatenate(rows) if rows else None
            added = self._local_features_of_added()
            local = None if added is None else list(base.local) + added
            search = Gallery(self.embedder, path=None, entries=entries, embeddings=E, local=local,
                             local_settings=base.local_settings if local is not None else None,
                             matcher_settings=base.matcher_settings, threshold=base.threshold,
                             calibration=base.calibration, encounter_rule=base.encounter_rule,
                             gap_minutes=base.gap_minutes)
            if local is not None:
                self._carry_index(search, entries, local)
            self._search = search
        return self._search

    def _carry_index(self, search, entries, local):
        """Give ``search`` the keypoint index built for an earlier search, extended by its new photos (the
        index is by photo; photos taken out stay in it, never searched)."""
        state = self._index_state
        if state is None:
            return
        index, ids = state
        if index.settings != search.matcher_settings:
            return
        missing = [(e, f) for e, f in zip(entries, local) if e["sha256"] not in ids]
        ids = dict(ids)
        for k, (e, _) in enumerate(missing):
            ids[e["sha256"]] = len(index) + k
        search._index = (index.with_photos([f for _, f in missing]), ids)

    def _remember_index(self, search):
        if search._index is not None:
            self._index_state = search._index

    # -- searching ------------------------------------------------------------------------------------
    def identify(self, paths, topk=5, groups=None) -> list:
        """The gallery's answer for each photo, with ``individual_id`` (or None) in place of names and the
        photo's ``embedding``; see ``identifiers`` for the answer's shape. ``groups``: a key per photo, photos
        sharing one being a sighting with one answer (``Gallery.identify``)."""
        paths = [str(p) for p in paths]
        gallery = self._gallery()
        if not gallery.entries:             # nobody enrolled yet: every photo is someone new
            E = np.asarray(self.embedder.embed(paths), np.float32)
            return [{"answer": "unknown", "individual_id": None, "similarity": 0.0, "margin": None,
                     "threshold": self.threshold, "candidates": [], "embedding": E[i]} for i in range(len(paths))]
        self.embedder.last = None
        raw = gallery.identify(paths, topk=topk, groups=groups)
        self._remember_index(gallery)
        E = self.embedder.last
        if E is None or len(E) != len(paths):
            raise RuntimeError("the gallery's search did not embed the photos through its embedder")
        out = []
        for r, e in zip(raw, E):
            cands = [{"individual_id": int(c["name"]), "similarity": float(c["similarity"]),
                      "probability": _probability(c), "photo": c.get("photo")}
                     for c in (r.get("candidates") or []) if not is_background(c["name"])][:topk]
            name = r.get("name")
            res = {"answer": r["answer"], "individual_id": int(name) if name is not None else None,
                   "similarity": float(r.get("similarity") or 0.0),
                   "margin": None if r.get("margin") is None else float(r["margin"]),
                   "probability": _probability(r), "threshold": r.get("threshold", self.threshold),
                   "candidates": cands, "embedding": np.asarray(e, np.float32)}
            out.append(res)
        return out

    def embed(self, paths) -> np.ndarray:
        """(N, D) embeddings of photos (for enrolments made with other weights)."""
        return np.asarray(self.base.embedder.embed([str(p) for p in paths]), np.float32)

    def heatmap(self, image_path, individual_id=None, size=384):
        """PNG bytes: Grad-CAM of the photo's cosine similarity to the closest photo of ``individual_id``
        (default: the best match), drawn over the photo; None for a classifier-feature gallery or no match."""
        emb = self.base.embedder
        if getattr(emb, "kind", None) != "embedding" or not len(self):
            return None
        from ..explain import grad_cam
        from ..reid.explain import SimilarityToEmbedding
        from .images import heatmap_png
        result = self._gallery().identify([str(image_path)], topk=max(5, len(self)))[0]
        cands = [c for c in result.get("candidates") or [] if c.get("photo") and not is_background(c["name"])]
        chosen = [c for c in cands if individual_id is None or c["name"] == str(individual_id)][:1]
        if not chosen:
            return None
        target = emb.embed([Path(chosen[0]["photo"])])[0]
        try:
            cam, _ = grad_cam(SimilarityToEmbedding(emb.model, target), emb.load(Path(image_path)), target_class=0)
        except ValueError:          # a backbone without convolutional layers: no Grad-CAM
            return None
        return heatmap_png(cam, image_path, emb.input_size[1:], size, emb.fit)

    def photos(self) -> list:
        """Paths of the built gallery's photos (the only files outside the data folder an answer points to)."""
        return [e["photo"] for e in self.base.entries]


def _probability(d):
    """The calibrated probability of "same individual" when the gallery gives one, else None."""
    p = d.get("probability")
    return None if p is None else float(p)
