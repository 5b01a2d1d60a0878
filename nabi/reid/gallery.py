"""A gallery of enrolled individuals: their photos' embeddings, searched by cosine similarity.

On disk a gallery is a folder:

    index.json                      names, photo paths and SHA-256 of every enrolled photo, the model's
                                    identity (weights path and SHA-256), the unknown threshold and its
                                    calibration, and the name and SHA-256 of the embeddings file
    embeddings-<hash>.safetensors   the (M, D) float32 unit embeddings, one row per index entry

Each save writes a new embeddings file, then the index atomically, then removes the old file, so
the two always agree; an edited index or a damaged embeddings file is an error naming the file.

Search: the similarity of a query q to gallery row e_i is q·e_i (both unit length, so the cosine);
an individual's similarity is that of its closest photo. The answer for a photo is

    background  the closest individual is ``background`` or ``background/<kind>`` (photos of empty
                scenes enrolled under that reserved name), or a classifier run's background class wins
    known       otherwise, when the best similarity exceeds the calibrated threshold (always, before
                calibration): the name, its similarity, the margin to the runner-up individual
                (None when only one is enrolled) and the top-k candidates with their closest photo
    unknown     the best similarity is at or under the threshold

With a local-feature matcher (``nabi.reid.matcher``) each individual's score is instead the fusion of its
similarity and its keypoint evidence (``nabi.reid.fusion``), compared with the fused threshold of a
calibration made with the same matcher settings.

A ``Gallery`` is an in-memory object safe to share between threads of one process: searches read a
consistent snapshot, and writes (``add``, ``rename``, ``merge``, ``calibrate``) take a lock and save.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import unicodedata
import warnings
from pathlib import Path

import numpy as np

from .. import files as io
from ..data import IMG_EXTENSIONS
from ..files.digest import file_sha256
from ..data.background import BACKGROUND, is_background
from .embedder import Embedder
from . import metrics as M

INDEX = "index.json"
FORMAT = "nabi-gallery"
VERSION = 1


def _nfc(s):
    return unicodedata.normalize("NFC", str(s))


def check_name(name) -> str:
    """A usable individual name: non-empty, no path separators (except the reserved background/<kind>)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"an individual's name must be a non-empty string, got {name!r}")
    name = _nfc(name.strip())
    if is_background(name):
        kind = name[len(BACKGROUND) + 1:]
        if name != BACKGROUND and (not kind or "/" in kind or "\\" in kind):
            raise ValueError(f"background names are 'background' or 'background/<kind>', got {name!r}")
        return name
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"an individual's name cannot contain '/' or '\\' (got {name!r})")
    return name


def list_photos(folder) -> list:
    """Image files directly in ``folder``, sorted (hidden files skipped)."""
    exts = {e.lower().lstrip(".") for e in IMG_EXTENSIONS}
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower().lstrip(".") in exts)


def individual_folders(photos_dir) -> list:
    """``[(name, [photo paths])]`` of a folder with one sub-folder per individual; ``background/`` may hold
    photos and/or ``background/<kind>/`` sub-folders. An empty individual folder is an error naming it."""
    root = Path(photos_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"photo folder {root} does not exist")
    out = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        name = _nfc(sub.name)
        if name == BACKGROUND:
            photos = list_photos(sub)
            if photos:
                out.append((BACKGROUND, photos))
            for kind in sorted(p for p in sub.iterdir() if p.is_dir() and not p.name.startswith(".")):
                kp = list_photos(kind)
                if not kp:
                    raise ValueError(f"background folder {kind} holds no photos ({', '.join(sorted(IMG_EXTENSIONS))})")
                out.append((f"{BACKGROUND}/{_nfc(kind.name)}", kp))
            continue
        photos = list_photos(sub)
        if not photos:
            raise ValueError(f"individual folder {sub} holds no photos ({', '.join(sorted(IMG_EXTENSIONS))})")
        out.append((check_name(name), photos))
    if not out:
        raise ValueError(f"photo folder {root} has no individual sub-folders (expected {root}/<name>/<photos>)")
    return out


def unique_photos(folders):
    """``(folders without repeated files, [(copy, original)])``: a file whose SHA-256 already appeared in the
    same individual's folder is left out; the same file under two names is a ``ValueError`` naming both."""
    seen, out, skipped = {}, [], []
    for name, photos in folders:
        kept = []
        for p in photos:
            h = file_sha256(p)
            if h in seen:
                other_name, other = seen[h]
                if other_name != name:
                    raise ValueError(f"photo {p} (individual {name!r}) is the same file as {other} (individual "
                                     f"{other_name!r}); one photo cannot show two individuals")
                skipped.append((p, other))
                continue
            seen[h] = (name, p)
            kept.append(p)
        out.append((name, kept))
    return out, skipped


class GalleryError(ValueError):
    """A gallery folder that cannot be used (damaged, edited, or made with other weights)."""


class Gallery:
    """Enrolled individuals and their photo embeddings; see the module docstring."""

    def __init__(self, embedder, path=None, entries=None, embeddings=None, threshold=None, calibration=None):
        self.embedder = embedder
        self.path = Path(path) if path is not None else None
        self.entries = list(entries or [])
        D = None if embeddings is None else embeddings.shape[1]
        self.embeddings = embeddings if embeddings is not None else np.zeros((0, D or 0), np.float32)
        self.threshold = threshold
        self.calibration = calibration
        self._lock = threading.RLock()
        self._embeddings_file = None
        self._group_cache = None
        self.skipped = []

    # -- creating and opening ----------------------------------------------------------------
    @classmethod
    def create(cls, run, out=None, device="cpu"):
        """An empty gallery for ``run``'s model (saved to ``out`` when given)."""
        g = cls(Embedder(run, device=device), out)
        if out is not None:
            g.save()
        return g

    @classmethod
    def build(cls, run, photos_dir, out, device="cpu", log=None):
        """Enrol every individual of ``photos_dir`` (one sub-folder each, ``background/`` optional) and save
        the gallery at ``out``. A file repeated within one individual's folder (same SHA-256) is enrolled once
        (the copies are reported through ``log``, default ``warnings.warn``); the same file under two names
        is an error naming both. Nothing is written if a photo cannot be read. ``g.skipped`` lists the copies."""
        if (Path(out) / INDEX).exists():
            raise ValueError(f"{out} already holds a gallery; add photos to it with nabi gallery add "
                             "(Gallery.add) or build into another folder")
        folders, skipped = unique_photos(individual_folders(photos_dir))
        if skipped:
            msg = (f"{len(skipped)} photo(s) in {photos_dir} repeat another file of the same individual and were "
                   "enrolled once: " + ", ".join(f"{p} (= {q})" for p, q in skipped[:5])
                   + (" …" if len(skipped) > 5 else ""))
            (log or (lambda m: warnings.warn(m, stacklevel=3)))(msg)
        g = cls(Embedder(run, device=device), None)
        for name, photos in folders:
            g.add(name, photos, save=False)
        g.path = Path(out)
        g.save()
        g.skipped = skipped
        return g

    @classmethod
    def open(cls, path, run=None, device="cpu"):
        """Load a saved gallery; ``run`` (default: the weights it was built with) must have the same SHA-256."""
        path = Path(path)
        index_path = path / INDEX
        if not index_path.is_file():
            raise FileNotFoundError(f"{path} is not a gallery: {index_path} does not exist")
        try:
            with open(index_path, encoding="utf-8") as f:
                index = json.load(f)
        except ValueError as e:
            raise GalleryError(f"gallery index {index_path} is not valid JSON: {e}") from None
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise GalleryError(f"{index_path} is not a nabi gallery index (format {FORMAT!r} expected)")
        try:
            model, entries = index["model"], index["entries"]
            emb_name, emb_sha = index["embeddings"]["file"], index["embeddings"]["sha256"]
        except (KeyError, TypeError) as e:
            raise GalleryError(f"gallery index {index_path} lacks the field {e}") from None
        if not isinstance(emb_name, str) or Path(emb_name).name != emb_name:
            raise GalleryError(f"gallery index {index_path} names the embeddings file {emb_name!r}; expected a file "
                               "name inside the gallery folder")
        emb_path = path / emb_name
        if not emb_path.is_file():
            raise GalleryError(f"gallery index {index_path} names the embeddings file {emb_path}, which does "
                               "not exist")
        if file_sha256(emb_path) != emb_sha:
            raise GalleryError(f"gallery embeddings file {emb_path} does not match the SHA-256 recorded in "
                               f"{index_path}: the file was changed or damaged; rebuild the gallery")
        try:
            state, _ = io.load_weights(emb_path)
            E = np.asarray(state["embeddings"], dtype=np.float32)
        except (ValueError, KeyError) as e:
            raise GalleryError(f"gallery embeddings file {emb_path} is unreadable: {e}") from None
        if E.ndim != 2 or E.shape[0] != len(entries) or any(
                not isinstance(e, dict) or not {"name", "photo", "sha256"} <= set(e) for e in entries):
            raise GalleryError(f"gallery index {index_path} does not match {emb_path}: the index lists "
                               f"{len(entries)} photos, the embeddings file holds {E.shape[0] if E.ndim == 2 else '?'} "
                               "rows (was the index edited?)")
        weights = run if run is not None else model.get("weights")
        if run is None and (not weights or not Path(weights).is_file()):
            raise FileNotFoundError(f"gallery {path} was built with the weights {weights}, which no longer exist; "
                                    "give the run (or a copy of the same weights) with --run / "
                                    "Gallery.open(path, run=…)")
        embedder = Embedder(weights, device=device)
        if embedder.sha256 != model.get("sha256"):
            raise GalleryError(f"gallery {path} was built with the model {model.get('weights')} (SHA-256 "
                               f"{str(model.get('sha256'))[:12]}…), not with {embedder.weights} (SHA-256 "
                               f"{embedder.sha256[:12]}…): embeddings of different models cannot be compared; "
                               "build a new gallery with this model")
        g = cls(embedder, path, entries, E, index.get("threshold"), index.get("calibration"))
        g._embeddings_file = emb_name
        return g

    # -- saving ------------------------------------------------------------------------------------
    def save(self):
        """Write the embeddings file, then the index (atomically), then drop the previous embeddings file."""
        if self.path is None:
            raise ValueError("this gallery has no folder: give one with gallery.path = ... before saving")
        with self._lock:
            self.path.mkdir(parents=True, exist_ok=True)
            E = np.ascontiguousarray(self.embeddings, dtype=np.float32)
            digest = hashlib.sha256(E.tobytes() + json.dumps(self.entries).encode()).hexdigest()
            name = f"embeddings-{digest[:16]}.safetensors"
            io.save_weights(self.path / name, {"embeddings": E}, {"format": FORMAT, "rows": int(E.shape[0])})
            index = {"format": FORMAT, "version": VERSION, "model": self.embedder.identity(),
                     "embedding_dim": int(E.shape[1]) if E.ndim == 2 else 0,
                     "embeddings": {"file": name, "sha256": file_sha256(self.path / name)},
                     "threshold": self.threshold, "calibration": self.calibration, "entries": self.entries}
            io.atomic_write_json(self.path / INDEX, index)
            old = self._embeddings_file
            self._embeddings_file = name
            if old and old != name:
                for f in (self.path / old, Path(io.sidecar_path(self.path / old))):
                    try:
                        os.remove(f)
                    except FileNotFoundError:
                        pass

    # -- reading ----------------------------------------------------------------------------------------
    def names(self) -> list:
        """Enrolled names (background names included), sorted."""
        with self._lock:
            return sorted({e["name"] for e in self.entries})

    def individuals(self) -> list:
        """Enrolled names without the background ones."""
        return [n for n in self.names() if not is_background(n)]

    def __len__(self):
        return len(self.entries)

    def _snapshot(self):
        with self._lock:      # writers replace these objects, never change them in place
            return self.embeddings, self.entries, self.threshold

    def _collision(self, name, existing):
        fold = name.casefold()
        for other in existing:
            if other != name and other.casefold() == fold:
                return other
        return None

    # -- writing -----------------------------------------------------------------------------------------
    def add(self, name, paths, save=True, merge=False) -> list:
        """Enrol photos under ``name`` (a new individual, or more photos of an enrolled one).

        Returns the added entries ``[{'name', 'photo', 'sha256'}]``. A photo already in the gallery (same
        SHA-256), twice in ``paths``, or unreadable is a ``ValueError`` naming it, and nothing is added.
        A name equal to an enrolled one but for letter case is refused unless ``merge``.
        """
        name = check_name(name)
        paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
        if not paths:
            raise ValueError(f"no photos given for {name!r}")
        hashes = []
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"photo {p} does not exist")
            hashes.append(file_sha256(p))
        name = self._check_new(name, paths, hashes, merge)
        E = self.embedder.embed(paths)                     # outside the lock: searches go on meanwhile
        with self._lock:
            name = self._check_new(name, paths, hashes, merge)     # again: another writer may have been quicker
            new = [{"name": name, "photo": str(p.resolve()), "sha256": h} for p, h in zip(paths, hashes)]
            self.embeddings = E if len(self.entries) == 0 else np.concatenate([self.embeddings, E])
            self.entries = self.entries + new
            if save and self.path is not None:
                self.save()
            return new

    def _check_new(self, name, paths, hashes, merge):
        """The name to enrol under (a letter-case collision only with ``merge``); duplicates are refused."""
        with self._lock:
            other = self._collision(name, {e["name"] for e in self.entries})
            if other is not None:
                if not merge:
                    raise ValueError(f"name {name!r} collides with the enrolled individual {other!r}; use "
                                     f"{other!r}, or --merge to add the photos to {other!r}")
                name = other
            known = {e["sha256"]: e for e in self.entries}
            seen = {}
            for p, h in zip(paths, hashes):
                if h in known:
                    raise ValueError(f"photo {p} is already in the gallery as {known[h]['photo']} "
                                     f"(individual {known[h]['name']!r}, same SHA-256)")
                if h in seen:
                    raise ValueError(f"photo {p} is the same file as {seen[h]} (same SHA-256)")
                seen[h] = p
            return name

    def rename(self, old, new, merge=False):
        """Rename an individual; to an enrolled name only with ``merge`` (the photos join that individual)."""
        old, new = check_name(old), check_name(new)
        with self._lock:
            names = {e["name"] for e in self.entries}
            if old not in names:
                raise ValueError(f"no individual {old!r} in the gallery (enrolled: {', '.join(sorted(names))})")
            clash = new if new in names else self._collision(new, names - {old})
            if clash is not None and clash != old and not merge:
                raise ValueError(f"name {new!r} collides with the enrolled individual {clash!r}; "
                                 f"use merge to join {old!r} into it")
            target = clash if clash is not None and clash != old else new
            self.entries = [dict(e, name=target) if e["name"] == old else e for e in self.entries]
            if self.path is not None:
                self.save()

    def merge(self, src, dst):
        """Move every photo of ``src`` to the enrolled individual ``dst``."""
        dst = check_name(dst)
        with self._lock:
            if dst not in {e["name"] for e in self.entries}:
                raise ValueError(f"no individual {dst!r} in the gallery to merge into")
            self.rename(src, dst, merge=True)

    # -- searching ------------------------------------------------------------------------------------------
    @staticmethod
    def _groups(entries):
        """Entries grouped by name: (sorted names, permutation putting each name's rows together, group starts)."""
        names = np.array([e["name"] for e in entries], dtype=object)
        uniq = sorted(set(names.tolist()))
        col = np.searchsorted(np.array(uniq, dtype=object), names)
        perm = np.argsort(col, kind="stable")
        starts = np.searchsorted(col[perm], np.arange(len(uniq)))
        return uniq, perm, starts

    def _grouped(self, E, entries):
        """``_groups`` and the embeddings with each individual's rows together, kept until the next write."""
        cache = self._group_cache
        if cache is None or cache[0] is not E or cache[1] is not entries:
            uniq, perm, starts = self._groups(entries)
            cache = (E, entries, uniq, perm, starts, np.ascontiguousarray(E[perm]))
            self._group_cache = cache
        return cache[2:]

    def rank_embeddings(self, q, E, entries, probs_bg=None, topk=5):
        """Per query: (individuals ranked by best similarity, best similarity per individual, top-k candidates,
        background-class flag, sorted names). One matrix product (Q, D)·(D, M), then a max per individual."""
        uniq, perm, starts, grouped = self._grouped(E, entries)
        ends = np.append(starts[1:], len(perm))
        sims = q @ grouped.T                                   # (Q, M), each individual's rows together
        best_all = np.maximum.reduceat(sims, starts, axis=1)   # (Q, U)
        out = []
        for r in range(q.shape[0]):
            best = best_all[r]
            ranked = np.argsort(-best, kind="stable")
            cands = []
            for i in ranked[:topk]:
                j = perm[starts[i] + int(np.argmax(sims[r, starts[i]:ends[i]]))]
                cands.append({"name": uniq[i], "similarity": float(best[i]), "photo": entries[j]["photo"]})
            out.append((ranked, best, cands, bool(probs_bg[r]) if probs_bg is not None else False, uniq))
        return out

    def _per_individual(self, photo_scores, entries, reduce):
        """(Q, U) scores per sorted name from (Q, M) per-photo scores in entry order: ``reduce`` of each
        individual's columns ((Q, m) → (Q,))."""
        uniq, perm, starts = self._groups(entries)
        ends = np.append(starts[1:], len(perm))
        out = np.stack([reduce(photo_scores[:, perm[a:b]]) for a, b in zip(starts, ends)], axis=1)
        return uniq, out

    def _score(self, q, E, entries, items, matcher=None, skip=None) -> dict:
        """Every query's scores for every enrolled individual (sorted names ``names``):

        photo_similarity (Q, M)  cosine with each gallery photo (entry order); NaN where ``skip`` (Q, M) is set
        similarity (Q, U)        the closest photo's cosine (NaN: no photo of that individual left)
        with a ``LocalMatcher``: inliers (Q, M) with each matched photo (NaN: not matched; at most
        ``max_photos`` per individual) and evidence (Q, U) (``nabi.reid.matcher.individual_evidence``).
        """
        from .matcher import individual_evidence
        S = (q @ E.T).astype(np.float64)
        if skip is not None:
            S[skip] = np.nan

        def closest(x):
            filled = np.where(np.isnan(x), -np.inf, x).max(axis=1)
            return np.where(np.isinf(filled), np.nan, filled)
        names, best = self._per_individual(S, entries, closest)
        out = {"names": names, "photo_similarity": S, "similarity": best}
        if matcher is not None:
            leave = np.zeros(S.shape, bool) if skip is None else skip.copy()
            if matcher.max_photos is not None:
                seen = {}
                for j, e in enumerate(entries):
                    seen[e["name"]] = seen.get(e["name"], 0) + 1
                    leave[:, j] |= seen[e["name"]] > matcher.max_photos
            n = matcher.inlier_matrix(items, [Path(e["photo"]) for e in entries], skip=leave)
            out["inliers"] = n
            out["evidence"] = self._per_individual(n, entries, lambda x: individual_evidence(x, matcher.top))[1]
        return out

    def _fusion(self, matcher):
        """(``Fusion``, threshold) calibrated for ``matcher``'s settings; a clear error when there is none."""
        from .fusion import Fusion
        fu = (self.calibration or {}).get("fusion")
        where = f"gallery {self.path}" if self.path is not None else "the gallery"
        if not fu:
            raise ValueError(f"{where} has no calibration with the local-feature matcher: run nabi gallery calibrate "
                             "GALLERY VALIDATION --matcher (Gallery.calibrate(..., matcher=...)) first")
        if fu.get("matcher") != matcher.settings():
            raise ValueError(f"{where} was calibrated with matcher settings {fu.get('matcher')}, not "
                             f"{matcher.settings()}; calibrate again with these settings")
        return Fusion.from_dict(fu, f"{where}'s calibration"), fu.get("threshold")

    def identify(self, paths_or_images, topk=5, matcher=None) -> list:
        """The three-way answer for each photo (path or image array); see the module docstring.

        With a ``LocalMatcher`` (``nabi.reid.matcher``) every enrolled individual is scored by the fused score
        of ``nabi.reid.fusion`` (its weight, scales and threshold from a calibration with the same matcher
        settings, ``calibrate(..., matcher=...)``); ``similarity`` is then the fused score and each candidate
        also reports its ``embedding_similarity``, ``evidence`` and best photo's ``inliers``.
        """
        items = [paths_or_images] if isinstance(paths_or_images, (str, Path)) else list(paths_or_images)
        E, entries, threshold = self._snapshot()
        if not entries:
            raise ValueError("the gallery is empty: enrol individuals first (nabi gallery add)")
        if matcher is not None:
            fusion, threshold = self._fusion(matcher)
        q, probs = self.embedder.embed(items, with_probs=True)
        bg_wins = self.embedder.background_wins(probs)
        n_names = len({e["name"] for e in entries})
        ranked_all = self.rank_embeddings(q, E, entries, bg_wins, n_names if matcher is not None else int(topk))
        if matcher is not None:
            scored = self._score(q, E, entries, items, matcher)
            fused = fusion(scored["similarity"], scored["evidence"])
            photo_inliers = self._per_individual(scored["inliers"], entries,
                                                 lambda x: np.where(np.isnan(x), -1, x).max(axis=1))[1]
        results = []
        for r, (ranked, best, cands, bg, uniq) in enumerate(ranked_all):
            if matcher is not None:
                best = fused[r]
                ranked = np.argsort(-best, kind="stable")
                by_name = {c["name"]: c for c in cands}
                cands = []
                for i in ranked[:int(topk)]:
                    c = dict(by_name[uniq[i]])
                    c.update(embedding_similarity=c["similarity"], similarity=float(best[i]),
                             evidence=float(scored["evidence"][r, i]), inliers=max(0, int(photo_inliers[r, i])))
                    cands.append(c)
            top = uniq[ranked[0]]
            people = [i for i in ranked if not is_background(uniq[i])]
            sim = float(best[ranked[0]])
            if bg or is_background(top):
                answer, name = "background", None
                if people:
                    sim = float(best[people[0]])
            elif threshold is not None and sim <= threshold:
                answer, name = "unknown", None
            else:
                answer, name = "known", top
            margin = float(best[people[0]] - best[people[1]]) if len(people) > 1 else None
            results.append({"answer": answer, "name": name, "similarity": sim, "margin": margin,
                            "candidates": cands, "threshold": threshold,
                            "background_similarity": max((float(best[i]) for i in ranked if is_background(uniq[i])),
                                                         default=None)})
        return results

    @staticmethod
    def _ranking_metrics(scores, photo_scores, names, g_labels, labels, enrolled):
        """rank-1, rank-5, mAP (over gallery photos) of the known queries and, with unknown ones, AUROC and TAR at
        FAR 1 % / 5 % of the best score; background individuals and photos are left out of the ranking."""
        people = np.array([not is_background(n) for n in names])
        photo_people = np.array([not is_background(n) for n in g_labels])
        names_p = np.array(names, dtype=object)[people]
        scores = np.where(np.isnan(scores[:, people]), -np.inf, scores[:, people])
        known = np.array([n in enrolled for n in labels], bool)
        unknown = np.array([n not in enrolled and not is_background(n) for n in labels], bool)
        out = {}
        if not names_p.size:
            return out
        order = np.argsort(-scores, axis=1, kind="stable")
        top_name = names_p[order[:, 0]]
        best = scores[np.arange(len(scores)), order[:, 0]]
        if known.any():
            lab = np.array(labels, dtype=object)[known]
            hits = names_p[order[known]] == lab[:, None]
            out["rank1"] = float(hits[:, :1].any(axis=1).mean())
            out["rank5"] = float(hits[:, :5].any(axis=1).mean())
            ps = np.where(np.isnan(photo_scores), -np.inf, photo_scores)[known][:, photo_people]
            out["mAP"] = M.mean_average_precision(ps, lab, np.asarray(g_labels, dtype=object)[photo_people])
        if known.any() and unknown.any():
            kc = top_name[known] == np.array(labels, dtype=object)[known]
            out["auroc"] = M.auroc(best[known], best[unknown])
            out["tar_at_far_1pct"] = M.tar_at_far(best[known], kc, best[unknown], 0.01)["tar"]
            out["tar_at_far_5pct"] = M.tar_at_far(best[known], kc, best[unknown], 0.05)["tar"]
        return out

    def evaluate(self, queries_dir, matcher=None) -> dict:
        """Score the gallery on labelled query photos (``queries_dir``: one folder per individual).

        Folders of enrolled names are known queries: rank-1 and rank-5 over individuals (each ranked by its
        closest photo) and mAP over gallery photos. Folders of other names are unknowns: with both kinds,
        AUROC of the best similarity and the true-accept rate at 1 % and 5 % false accepts. ``background``
        folders expect the answer background. The three-way accuracy uses the current threshold.

        With a ``LocalMatcher`` the same figures are added for the matcher alone under ``"matcher"`` (individuals
        ranked by evidence, photos by log(1 + inliers beyond chance)) and, when the gallery is calibrated with
        this matcher, for the fused score under ``"fused"`` (its weight too); the three-way accuracy is then the
        fused answer's.
        """
        from .matcher import photo_evidence
        folders = individual_folders(queries_dir)
        E, entries, _ = self._snapshot()
        enrolled = set(self.individuals())
        items = [(n, p) for n, ps in folders for p in ps]
        labels = [n for n, _ in items]
        g_labels = [e["name"] for e in entries]
        q = self.embedder.embed([p for _, p in items])
        scored = self._score(q, E, entries, [p for _, p in items], matcher)
        out = {"queries": len(items), "known_queries": sum(n in enrolled for n in labels),
               "unknown_queries": sum(n not in enrolled and not is_background(n) for n in labels),
               "individuals_enrolled": len(enrolled)}
        args = (scored["names"], g_labels, labels, enrolled)
        out.update(self._ranking_metrics(scored["similarity"], scored["photo_similarity"], *args))
        fused_matcher = None
        if matcher is not None:
            out["matcher"] = self._ranking_metrics(scored["evidence"], photo_evidence(scored["inliers"]), *args)
            if (self.calibration or {}).get("fusion"):
                fusion, _ = self._fusion(matcher)
                fused_matcher = matcher
                out["fused"] = dict(self._ranking_metrics(fusion(scored["similarity"], scored["evidence"]),
                                                          fusion(scored["photo_similarity"],
                                                                 photo_evidence(scored["inliers"])), *args),
                                    weight=fusion.weight)
        answers = self.identify([p for _, p in items], matcher=fused_matcher)
        truths = [("background", None) if is_background(n) else ("known", n) if n in enrolled else ("unknown", None)
                  for n, _ in items]
        out["three_way_accuracy"] = M.three_way_accuracy([(a["answer"], a["name"]) for a in answers], truths)
        out["threshold"] = answers[0]["threshold"] if answers else None
        return out

    # -- calibration ------------------------------------------------------------------------------------------
    def _validation_scores(self, validation_dir, matcher):
        """Scores of validation queries for the enrolled individuals (background left out): ``(summary facts,
        similarity (Q, U), evidence (Q, U) or None, truth (Q,) column or −1 for unknown)``.

        From a folder: enrolled names are known queries, the others unknowns. Without one, leave-one-out over
        the enrolled photos: each photo is a known query against the gallery without it (when its individual
        has another photo) and an unknown query against the gallery without its individual.
        """
        E, entries, _ = self._snapshot()
        enrolled = sorted(set(self.individuals()))
        if not enrolled:
            raise ValueError("calibration needs a gallery with at least one enrolled individual")
        if validation_dir is not None:
            folders = [(n, p) for n, p in individual_folders(validation_dir) if not is_background(n)]
            known = [(n, p) for n, ps in folders if n in enrolled for p in ps]
            unknown = [(n, p) for n, ps in folders if n not in enrolled for p in ps]
            if not unknown:
                raise ValueError(f"validation folder {validation_dir} has no individual outside the gallery: hold "
                                 "some individuals out of it to stand for unknowns")
            items = known + unknown
            paths = [p for _, p in items]
            scored = self._score(self.embedder.embed(paths), E, entries, paths, matcher)
            truth = np.array([scored["names"].index(n) if n in enrolled else -1 for n, _ in items])
            facts = {"known_queries": len(known), "unknown_queries": len(unknown),
                     "unknown_individuals": sorted({n for n, _ in unknown}),
                     "validation": str(Path(validation_dir).resolve())}
        else:
            rows = [j for j, e in enumerate(entries) if not is_background(e["name"])]
            g_labels = np.array([e["name"] for e in entries], dtype=object)
            if len(enrolled) < 2:
                raise ValueError("calibrating without a validation folder (leave-one-out) needs at least two "
                                 "enrolled individuals")
            counts = {n: int((g_labels == n).sum()) for n in enrolled}
            if max(counts.values()) < 2:
                raise ValueError("calibrating without a validation folder (leave-one-out) needs an individual with "
                                 "at least two photos")
            paths = [Path(entries[j]["photo"]) for j in rows]
            ids = np.arange(len(entries))
            skip_self = ids[None, :] == np.array(rows)[:, None]                   # (R, M): the query itself
            skip_all = g_labels[None, :] == g_labels[rows][:, None]             # its whole individual
            q = E[rows]
            as_known = self._score(q, E, entries, paths, matcher, skip=skip_self)
            as_unknown = self._score(q, E, entries, paths, None, skip=skip_all)
            names = as_known["names"]
            if matcher is not None:            # the same pairs, with the individual's own photos left out
                n = np.where(skip_all, np.nan, as_known["inliers"])
                from .matcher import individual_evidence
                as_unknown["evidence"] = self._per_individual(n, entries,
                                                              lambda x: individual_evidence(x, matcher.top))[1]
            keep = np.array([counts[g_labels[j]] >= 2 for j in rows])
            scored = {"names": names,
                      "similarity": np.concatenate([as_known["similarity"][keep], as_unknown["similarity"]])}
            if matcher is not None:
                scored["evidence"] = np.concatenate([as_known["evidence"][keep], as_unknown["evidence"]])
            truth = np.concatenate([[names.index(g_labels[j]) for j, k in zip(rows, keep) if k],
                                    -np.ones(len(rows), int)]).astype(int)
            facts = {"known_queries": int(keep.sum()), "unknown_queries": len(rows), "unknown_individuals": [],
                     "validation": "leave-one-out over the enrolled photos"}
        people = np.array([not is_background(n) for n in scored["names"]])
        similarity = scored["similarity"][:, people]
        evidence = scored["evidence"][:, people] if matcher is not None else None
        remap = np.cumsum(people) - 1                                   # column among the people
        truth = np.where(truth >= 0, remap[np.maximum(truth, 0)], -1)
        return facts, similarity, evidence, truth

    @staticmethod
    def _operating_point(scores, truth, target_far):
        """(known best, known right, unknown best) of (Q, U) scores and the rates at ``target_far``."""
        from .fusion import best_of
        best, col = best_of(scores)
        known = truth >= 0
        ks, kc, us = best[known], col[known] == truth[known], best[~known]
        return ks, kc, us, M.tar_at_far(ks, kc, us, target_far)

    def calibrate(self, validation_dir=None, target_far=0.01, plot=None, matcher=None):
        """Choose the unknown threshold from validation queries.

        ``validation_dir`` holds one folder per individual: folders named like an enrolled individual are known
        queries, the others individuals held out as unknowns (at least one is needed); ``background`` folders are
        skipped. Without it, the enrolled photos themselves are the queries, leave-one-out (see
        ``_validation_scores``). The threshold is the lowest with a false-accept rate at most ``target_far`` over
        the unknowns. With a ``LocalMatcher`` the fusion of ``nabi.reid.fusion`` (weight and scales) is chosen on
        the same queries and its own threshold stored under ``"fusion"`` (with the selection table). Returns the
        calibration summary (also stored in the index) and writes the FAR/FRR curve as a PNG to ``plot``.
        """
        facts, similarity, evidence, truth = self._validation_scores(validation_dir, matcher)
        ks, kc, us, point = self._operating_point(similarity, truth, target_far)
        curve = M.far_frr_curve(ks, kc, us)
        summary = {"target_far": float(target_far), "threshold": point["threshold"], "far": point["far"],
                   "frr": point["frr"], "tar": point["tar"], **facts}
        if len(ks):
            summary["auroc"] = M.auroc(ks, us)
            for far in (0.01, 0.05):
                summary[f"tar_at_far_{int(far * 100)}pct"] = M.tar_at_far(ks, kc, us, far)["tar"]
        if matcher is not None:
            from .fusion import fit_fusion
            if not len(ks):
                raise ValueError("fusing the local-feature matcher needs known queries in the validation folder too")
            fusion, table = fit_fusion(similarity, evidence, truth)
            fks, _, fus, fpoint = self._operating_point(fusion(similarity, evidence), truth, target_far)
            summary["fusion"] = {**fusion.to_dict(), "auroc": M.auroc(fks, fus), "threshold": fpoint["threshold"],
                                 "far": fpoint["far"], "frr": fpoint["frr"], "tar": fpoint["tar"],
                                 "matcher": matcher.settings(), "selection": table}
        with self._lock:
            self.threshold = point["threshold"]
            self.calibration = summary
            if self.path is not None:
                self.save()
        if plot is not None:
            from .plots import plot_far_frr
            plot_far_frr(curve, point, plot)
        return summary, curve
