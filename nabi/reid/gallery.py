"""A gallery of enrolled individuals and the answer it gives for a photo.

A gallery holds, for every enrolled photo, its individual's name, its encounter (``nabi.data.encounters``),
its embedding (``nabi.reid.embedder``) and, unless built without, its local features
(``nabi.reid.local_features``), stored in a folder (``nabi.reid.store``). For a query photo:

    similarity_u   the embedding's cosine with u's closest photo
    evidence_u     the keypoint matcher's evidence for u (``nabi.reid.matcher``: one index over every
                   gallery descriptor, LNBNN, RANSAC on a shortlist)
    p_u            the probability that the photo shows u, from those scores (``nabi.reid.calibration``:
                   each score calibrated on pairs of known truth, the probabilities fused), and
    P(u), P(unknown)   the open-set posterior over "one of the U enrolled individuals, or none"

The answer for a photo is

    background  the closest group by embedding is ``background`` or ``background/<kind>`` (photos of empty
                scenes enrolled under that reserved name), or a classifier run's background class wins
    known       the most probable hypothesis is an enrolled individual: its name and its probability
    unknown     the most probable hypothesis is "none of them": P(unknown)

Each answer carries ``probability`` (of the answer given), ``p_unknown``, ``similarity`` (the top
candidate's embedding cosine), ``margin`` (the top two individuals' difference, in probability when
calibrated) and the top-k ``candidates`` with their probability, similarity, evidence and closest photo.
A gallery without a probability calibration answers with its closest individual, or by the cosine
threshold of an older calibration, and says ``calibrated: False``.

Calibration (``calibrate``): from photos of other individuals (a folder of individuals that are neither
enrolled nor queried) or, without one, leave-one-encounter-out over the gallery's own photos (each
encounter a query against the gallery without it). ``nabi.reid.calibrate`` makes the pairs.

A ``Gallery`` is an in-memory object safe to share between threads of one process: searches read a
consistent snapshot, and writes (``add``, ``remove``, ``rename``, ``merge``, ``calibrate``) take a lock,
replace the snapshot and save.
"""
from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.background import is_background
from ..data.encounters import DEFAULT_GAP_MINUTES, encounter_keys, parse_rule
from ..files.digest import file_sha256
from . import store
from .embedder import Embedder
from .folders import check_name, individual_folders, list_photos, unique_photos  # noqa: F401 (public names)
from .store import INDEX, GalleryError  # noqa: F401 (public names)

TOPK = 5


def _descriptor_identity(settings) -> dict:
    """The learned descriptor's file and SHA-256: the gallery's keypoints were described by it, and a query
    described by another network would be compared with them in vain."""
    f = settings.descriptor_file()
    if not f.is_file():
        raise FileNotFoundError(f"the descriptor file {f} (local-feature setting {settings.descriptor!r}) does not "
                                "exist")
    return {"file": str(f), "sha256": file_sha256(f)}


def _check_descriptor(path, index):
    """Refuse a gallery whose learned descriptor file is gone or now holds another network than the one its keypoints
    were described by (galleries saved before the file's SHA-256 was recorded are taken as they are)."""
    want = index.get("descriptor")
    if not isinstance(want, dict) or "sha256" not in want or not isinstance(index.get("local_settings"), dict):
        return
    from .local_features import LocalSettings
    try:                             # the file the settings name today (the shipped one moves with nabi's install)
        f = LocalSettings.from_dict(index["local_settings"]).descriptor_file()
    except ValueError:
        return                       # unusable settings: the gallery's constructor says what is wrong
    if f is None:
        return
    how = ("put the original file back, or build the gallery again (nabi gallery build) to describe its photos with "
           "the descriptor as it is now")
    if not f.is_file():
        raise GalleryError(f"gallery {path} describes its keypoints with the learned descriptor {f}, which no longer "
                           f"exists: {how}")
    now = file_sha256(f)
    if now != want["sha256"]:
        raise GalleryError(f"gallery {path} was built with the learned descriptor {f} (SHA-256 "
                           f"{want['sha256'][:12]}…), which now holds another network (SHA-256 {now[:12]}…): its "
                           f"keypoints and a query's would not be comparable; {how}")


@dataclass(frozen=True)
class Snapshot:
    """One consistent state of a gallery (never changed in place; writers make a new one)."""
    entries: tuple
    embeddings: np.ndarray
    local: tuple | None = None                 # Features per entry, or None
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def names(self) -> list:
        if "names" not in self._cache:
            self._cache["names"] = sorted({e["name"] for e in self.entries})
        return self._cache["names"]

    @property
    def columns(self) -> np.ndarray:
        """(M,) each entry's column in ``names``."""
        if "columns" not in self._cache:
            col = {n: i for i, n in enumerate(self.names)}
            self._cache["columns"] = np.array([col[e["name"]] for e in self.entries], np.int64)
        return self._cache["columns"]

    @property
    def people(self) -> np.ndarray:
        """(N,) bool: which names are individuals (not background)."""
        return np.array([not is_background(n) for n in self.names], bool)

    def encounter_of(self, j) -> tuple:
        e = self.entries[j]
        return e["name"], e.get("encounter") or f"photo:{e['sha256']}"


class Gallery:
    """Enrolled individuals, their photos' embeddings and local features; see the module docstring."""

    def __init__(self, embedder, path=None, entries=None, embeddings=None, local=None, local_settings=None,
                 matcher_settings=None, calibration=None, threshold=None, encounter_rule="auto",
                 gap_minutes=DEFAULT_GAP_MINUTES):
        from .local_features import LocalSettings
        from .matcher import MatcherSettings
        self.embedder = embedder
        self.path = Path(path) if path is not None else None
        entries = tuple(dict(e) for e in (entries or ()))
        D = None if embeddings is None else embeddings.shape[1]
        E = embeddings if embeddings is not None else np.zeros((0, D or 0), np.float32)
        if local is not None and len(local) != len(entries):
            raise ValueError(f"local features for {len(local)} photos given with {len(entries)} entries")
        self._snap = Snapshot(entries, E, None if local is None else tuple(local))
        self.local_settings = local_settings if local_settings is None or isinstance(local_settings, LocalSettings) \
            else LocalSettings.from_dict(local_settings)
        self.matcher_settings = matcher_settings if isinstance(matcher_settings, MatcherSettings) else \
            MatcherSettings() if matcher_settings is None else MatcherSettings.from_dict(matcher_settings)
        self.calibration = calibration
        self.threshold = threshold
        parse_rule(encounter_rule)
        self.encounter_rule, self.gap_minutes = encounter_rule, float(gap_minutes)
        self._lock = threading.RLock()
        self._index = None                 # (LocalIndex, {entry sha256: index photo id}) once built
        self._files = ()
        self._on_disk = None               # (the snapshot the folder holds, its local-feature chunks)
        self._descriptor = None            # the learned descriptor's file and SHA-256 its keypoints were made with
        self.skipped = []

    # -- the state ---------------------------------------------------------------------------------------
    @property
    def entries(self) -> list:
        return list(self._snap.entries)

    @property
    def embeddings(self) -> np.ndarray:
        return self._snap.embeddings

    @property
    def local(self):
        return self._snap.local

    def snapshot(self) -> Snapshot:
        return self._snap

    def names(self) -> list:
        """Enrolled names (background names included), sorted."""
        return list(self._snap.names)

    def individuals(self) -> list:
        """Enrolled names without the background ones."""
        return [n for n in self._snap.names if not is_background(n)]

    def __len__(self):
        return len(self._snap.entries)

    @property
    def has_local_features(self) -> bool:
        return self.local_settings is not None and self._snap.local is not None

    @property
    def calibrated(self) -> bool:
        """True when the gallery answers with probabilities (a version-2 calibration)."""
        return bool((self.calibration or {}).get("fusion"))

    # -- creating and opening -------------------------------------------------------------------------------
    @classmethod
    def create(cls, run, out=None, device="cpu", local=True, encounters="auto", gap_minutes=DEFAULT_GAP_MINUTES,
               matcher_settings=None, flip=False):
        """An empty gallery for ``run``'s model (saved to ``out`` when given). ``local``: compute local features
        (True: the default ``LocalSettings``; a ``LocalSettings``; False: none, no keypoint matcher);
        ``matcher_settings``: a ``MatcherSettings``; ``flip``: embeddings with test-time flip."""
        from .local_features import LocalSettings
        settings = LocalSettings() if local is True else (local or None)
        g = cls(Embedder(run, device=device, flip=flip), out, local_settings=settings,
                local=[] if settings is not None else None, encounter_rule=encounters, gap_minutes=gap_minutes,
                matcher_settings=matcher_settings)
        if out is not None:
            g.save()
        return g

    @classmethod
    def build(cls, run, photos_dir, out, device="cpu", log=None, local=True, encounters="auto",
              gap_minutes=DEFAULT_GAP_MINUTES, strict=False, calibration=None, matcher_settings=None, flip=False):
        """Enrol every individual of ``photos_dir`` (one sub-folder each, ``background/`` optional) and save
        the gallery at ``out``.

        A file repeated within one individual's folder (same SHA-256) is enrolled once; the same file under two
        names is an error naming both. A photo that cannot be read is left out with a line through ``log``
        (default ``warnings.warn``) — an error naming it with ``strict``. ``encounters``/``gap_minutes`` group
        each individual's photos into encounters (``nabi.data.encounters``). ``calibration``: a calibration
        dict to start from (``nabi.reid.calibrate.default_calibration``); ``g.skipped`` lists the copies and
        the unreadable photos."""
        if (Path(out) / INDEX).exists():
            raise ValueError(f"{out} already holds a gallery; add photos to it with nabi gallery add "
                             "(Gallery.add) or build into another folder")
        say = log or (lambda m: warnings.warn(m, stacklevel=3))
        folders, skipped = unique_photos(individual_folders(photos_dir))
        if skipped:
            say(f"{len(skipped)} photo(s) in {photos_dir} repeat another file of the same individual and were "
                "enrolled once: " + ", ".join(f"{p} (= {q})" for p, q in skipped[:5]) + (" …" if len(skipped) > 5 else ""))
        g = cls.create(run, None, device, local, encounters, gap_minutes, matcher_settings, flip)
        unreadable = []
        for name, photos in folders:
            keys = encounter_keys(photos, encounters, gap_minutes, individual_dir=Path(photos_dir) / name) \
                if not is_background(name) else [None] * len(photos)
            readable, rkeys = [], []
            for p, k in zip(photos, keys):
                problem = g.embedder.check_readable(p)
                if problem is None:
                    readable.append(p)
                    rkeys.append(k)
                elif strict:
                    raise ValueError(problem)
                else:
                    unreadable.append(p)
                    say(f"skipped: {problem}")
            if readable:
                g.add(name, readable, save=False, encounters=rkeys)
        if unreadable:
            say(f"{len(unreadable)} photo(s) could not be read and were left out (--strict makes this an error)")
        if not len(g):
            raise ValueError(f"no photo of {photos_dir} could be enrolled")
        g.calibration = calibration
        g.path = Path(out)
        g.save()
        g.skipped = skipped + [(p, None) for p in unreadable]
        return g

    @classmethod
    def open(cls, path, run=None, device="cpu"):
        """Load a saved gallery; ``run`` (default: the weights it was built with) must have the same SHA-256."""
        path = Path(path)
        index = store.read_index(path)
        emb_file, E = store.read_embeddings(path, index)
        local_file, local = store.read_local(path, index)
        model = index["model"] if isinstance(index["model"], dict) else {}
        weights = run if run is not None else model.get("weights")
        if run is None and (not weights or not Path(weights).is_file()):
            raise FileNotFoundError(f"gallery {path} was built with the weights {weights}, which no longer exist; "
                                    "give the run (or a copy of the same weights) with --run / "
                                    "Gallery.open(path, run=…)")
        embedder = Embedder(weights, device=device, flip=bool(model.get("flip", False)))
        if embedder.sha256 != model.get("sha256"):
            raise GalleryError(f"gallery {path} was built with the model {model.get('weights')} (SHA-256 "
                               f"{str(model.get('sha256'))[:12]}…), not with {embedder.weights} (SHA-256 "
                               f"{embedder.sha256[:12]}…): embeddings of different models cannot be compared; "
                               "build a new gallery with this model")
        calibration = index.get("calibration")
        threshold = index.get("threshold")
        if local is not None:
            _check_descriptor(path, index)
        try:
            g = cls(embedder, path, index["entries"], E, local, index.get("local_settings") if local is not None
                    else None, index.get("matcher_settings", {}), calibration, threshold,
                    index.get("encounter_rule", "auto"), index.get("gap_minutes", DEFAULT_GAP_MINUTES))
        except ValueError as e:
            raise GalleryError(f"gallery index {path / INDEX} is not usable: {e}") from None
        g._files = (emb_file, local_file)
        g._descriptor = index.get("descriptor") if local is not None else None     # checked above
        g._on_disk = (g._snap, store.local_chunks(index))
        return g

    def save(self):
        """Write the array files, then the index (atomically), then drop the files the old index named."""
        if self.path is None:
            raise ValueError("this gallery has no folder: give one with gallery.path = ... before saving")
        with self._lock:
            snap = self._snap
            index = {"model": self.embedder.identity(), "entries": list(snap.entries),
                     "encounter_rule": self.encounter_rule, "gap_minutes": self.gap_minutes,
                     "local_settings": self.local_settings.to_dict() if self.has_local_features else None,
                     "matcher_settings": self.matcher_settings.to_dict(),
                     "calibration": self.calibration, "threshold": self.threshold}
            if self.has_local_features and self.local_settings.descriptor_file() is not None:
                if self._descriptor is None:    # recorded once, when its keypoints were described, not at each save
                    self._descriptor = _descriptor_identity(self.local_settings)
                index["descriptor"] = self._descriptor
            index = store.write(self.path, index, snap.embeddings,
                                snap.local if self.has_local_features else None, self._files)
            self._files = (index["embeddings"]["file"], [c["file"] for c in store.local_chunks(index)])
            self._on_disk = (snap, store.local_chunks(index))

    # -- writing ------------------------------------------------------------------------------------------
    def _collision(self, name, existing):
        fold = name.casefold()
        for other in existing:
            if other != name and other.casefold() == fold:
                return other
        return None

    def add(self, name, paths, save=True, merge=False, encounters=None) -> list:
        """Enrol photos under ``name`` (a new individual, or more photos of an enrolled one).

        ``encounters``: one key per photo, one key for all (photos of one sighting), or None (grouped by the
        gallery's encounter rule). Returns the added entries ``[{'name', 'photo', 'sha256', 'encounter'}]``. A
        photo already in the gallery (same SHA-256), twice in ``paths``, or unreadable is a ``ValueError``
        naming it, and nothing is added. A name equal to an enrolled one but for letter case is refused unless
        ``merge``.
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
        if encounters is None:
            keys = [None] * len(paths) if is_background(name) else encounter_keys(paths, self.encounter_rule,
                                                                                  self.gap_minutes)
        elif isinstance(encounters, str):
            keys = [encounters] * len(paths)
        else:
            keys = [None if k is None else str(k) for k in encounters]
            if len(keys) != len(paths):
                raise ValueError(f"{len(keys)} encounter keys given for {len(paths)} photos")
        self._check_new(name, paths, hashes, merge)
        E = self.embedder.embed(paths)                     # outside the lock: searches go on meanwhile
        feats = self._local_features(paths) if self.has_local_features else None
        with self._lock:
            name = self._check_new(name, paths, hashes, merge)     # again: another writer may have been quicker
            new = [{"name": name, "photo": str(p.resolve()), "sha256": h, "encounter": k}
                   for p, h, k in zip(paths, hashes, keys)]
            snap = self._snap
            E_all = E if len(snap.entries) == 0 else np.concatenate([snap.embeddings, E])
            local = None if snap.local is None else snap.local + tuple(feats if feats is not None else ())
            self._snap = Snapshot(snap.entries + tuple(new), E_all, local)
            self._extend_index(new, feats)
            if save and self.path is not None:
                self.save()
            return new

    def _local_features(self, items, settings=None):
        from .local_features import extract
        return [extract(p, settings or self.local_settings) for p in items]

    def _check_new(self, name, paths, hashes, merge):
        """The name to enrol under (a letter-case collision only with ``merge``); duplicates are refused."""
        with self._lock:
            other = self._collision(name, set(self._snap.names))
            if other is not None:
                if not merge:
                    raise ValueError(f"name {name!r} collides with the enrolled individual {other!r}; use "
                                     f"{other!r}, or --merge to add the photos to {other!r}")
                name = other
            known = {e["sha256"]: e for e in self._snap.entries}
            seen = {}
            for p, h in zip(paths, hashes):
                if h in known:
                    raise ValueError(f"photo {p} is already in the gallery as {known[h]['photo']} "
                                     f"(individual {known[h]['name']!r}, same SHA-256)")
                if h in seen:
                    raise ValueError(f"photo {p} is the same file as {seen[h]} (same SHA-256)")
                seen[h] = p
            return name

    def remove(self, sha256s) -> list:
        """Take photos out of the gallery by their SHA-256 (one or several); returns the removed entries. An
        unknown SHA-256 is a ``ValueError`` and nothing is removed."""
        wanted = [sha256s] if isinstance(sha256s, str) else list(sha256s)
        with self._lock:
            snap = self._snap
            have = {e["sha256"] for e in snap.entries}
            missing = [h for h in wanted if h not in have]
            if missing:
                raise ValueError(f"no photo with SHA-256 {missing[0][:12]}… in the gallery")
            keep = [j for j, e in enumerate(snap.entries) if e["sha256"] not in set(wanted)]
            removed = [e for e in snap.entries if e["sha256"] in set(wanted)]
            local = None if snap.local is None else tuple(snap.local[j] for j in keep)
            self._snap = Snapshot(tuple(snap.entries[j] for j in keep), snap.embeddings[keep], local)
            if self.path is not None:
                self.save()
            return removed

    def rename(self, old, new, merge=False):
        """Rename an individual; to an enrolled name only with ``merge`` (the photos join that individual)."""
        old, new = check_name(old), check_name(new)
        with self._lock:
            snap = self._snap
            names = set(snap.names)
            if old not in names:
                raise ValueError(f"no individual {old!r} in the gallery (enrolled: {', '.join(sorted(names))})")
            clash = new if new in names else self._collision(new, names - {old})
            if clash is not None and clash != old and not merge:
                raise ValueError(f"name {new!r} collides with the enrolled individual {clash!r}; "
                                 f"use merge to join {old!r} into it")
            target = clash if clash is not None and clash != old else new
            entries = tuple(dict(e, name=target) if e["name"] == old else e for e in snap.entries)
            self._snap = Snapshot(entries, snap.embeddings, snap.local)
            if self.path is not None:
                self.save()

    def merge(self, src, dst):
        """Move every photo of ``src`` to the enrolled individual ``dst``."""
        dst = check_name(dst)
        with self._lock:
            if dst not in set(self._snap.names):
                raise ValueError(f"no individual {dst!r} in the gallery to merge into")
            self.rename(src, dst, merge=True)

    def ensure_local_features(self, settings=None, log=None):
        """Compute the local features of every enrolled photo (a gallery built without them, or an older one),
        under ``settings`` (default ``LocalSettings()``), and save."""
        from .local_features import LocalSettings
        settings = settings or self.local_settings or LocalSettings()
        with self._lock:
            if self.has_local_features and settings == self.local_settings:
                return
            snap = self._snap
        if log:
            log(f"computing the local features of {len(snap.entries)} gallery photo(s) (once)")
        feats = self._local_features([Path(e["photo"]) for e in snap.entries], settings)
        with self._lock:
            if self._snap is not snap:
                raise RuntimeError("the gallery changed while its local features were computed; try again")
            self.local_settings = settings
            self._descriptor = None
            self._snap = Snapshot(snap.entries, snap.embeddings, tuple(feats))
            self._index = None
            if self.path is not None:
                self.save()

    # -- the keypoint index ---------------------------------------------------------------------------------
    def local_index(self, snap=None):
        """``(LocalIndex, (M,) index photo id of each entry of snap)`` — the index over every enrolled photo's
        keypoints, built once and extended as photos are added (``LocalIndex.with_photos``); photos taken out
        stay in it, never searched."""
        from .matcher import LocalIndex
        snap = snap or self._snap
        with self._lock:
            state = self._index
            if state is not None and state[0].settings != self.matcher_settings:
                state = self._index = None
            covered = state is not None and all(e["sha256"] in state[1] for e in snap.entries)
            if not covered:
                fresh = (self._built_index(snap), {e["sha256"]: j for j, e in enumerate(snap.entries)})
                if snap is not self._snap:            # an older snapshot than the gallery's: its own index
                    return fresh[0], np.arange(len(snap.entries))
                state = self._index = fresh
            index, ids = state
        return index, np.array([ids[e["sha256"]] for e in snap.entries], np.int64)

    def _built_index(self, snap):
        """The keypoint index of ``snap``: loaded from the folder's cached trees when the folder holds this very
        snapshot and a cache fits (``store.load_keypoint_tree``), else built — and then cached there when one
        tree covers the whole gallery."""
        from .matcher import LocalIndex
        on_disk = self.path is not None and self._on_disk is not None and self._on_disk[0] is snap
        index = store.load_keypoint_tree(self.path, self._on_disk[1], list(snap.local), self.matcher_settings) \
            if on_disk else None
        if index is None:
            index = LocalIndex(list(snap.local), self.matcher_settings)
        if on_disk and index.whole_tree and not self._tree_cached():
            store.save_keypoint_tree(self.path, index, self._on_disk[1])
        return index

    def _tree_cached(self) -> bool:
        """Whether the folder already caches trees over the gallery's chunks as they are now."""
        shas = [c["sha256"] for c in self._on_disk[1]]
        return any(meta["chunks"] == shas for _, meta in store.saved_trees(self.path))

    def _extend_index(self, new_entries, feats):
        """Under the lock: add just-enrolled photos to a built index (nothing when none is built yet)."""
        if self._index is None or feats is None:
            return
        index, ids = self._index
        ids = dict(ids)
        for k, e in enumerate(new_entries):
            ids[e["sha256"]] = len(index) + k
        self._index = (index.with_photos(feats), ids)

    # -- scoring --------------------------------------------------------------------------------------------
    def use_matcher(self, matcher=None) -> bool:
        """Whether answers use the keypoint matcher: ``matcher`` True/False, or None: when the gallery has local
        features and its calibration includes the matcher (or, uncalibrated, whenever it has local features)."""
        if matcher is None:
            if not self.has_local_features:
                return False
            if self.calibrated:
                return "matcher" in self.calibration["fusion"].get("scorers", {})
            return False
        if matcher and not self.has_local_features:
            raise ValueError(f"gallery {self.path or ''} has no local features: build it with them (the default) or "
                             "compute them with Gallery.ensure_local_features (nabi gallery calibrate --matcher)")
        return bool(matcher)

    def scores(self, q, items=None, skip=None, matcher=False, snap=None, query_features=None, verify_top=5):
        """Every query's scores for every enrolled name (``snap.names``):

        photo_similarity (Q, M)  cosine with each gallery photo; NaN where ``skip`` (Q, M) is set
        similarity (Q, N)        the closest photo's cosine (NaN: no photo of that name left)
        with ``matcher``: evidence (Q, N) (NaN for background names and names with no photo left), lnbnn
        (Q, N), inliers and verified (Q, M) (the photo's RANSAC inliers and their LNBNN weight; NaN: not
        verified). ``query_features``: the queries' local
        features when already computed (else from ``items``); ``verify_top``: the embedding's closest photos
        verified besides the matcher's shortlist.
        """
        snap = snap or self._snap
        S = (np.asarray(q, np.float32) @ snap.embeddings.T).astype(np.float64)
        if skip is not None:
            S[skip] = np.nan
        cols = snap.columns
        N = len(snap.names)
        sim = np.full((len(S), N), np.nan)
        for c in range(N):
            block = S[:, cols == c]
            if block.shape[1]:
                filled = np.where(np.isnan(block), -np.inf, block).max(axis=1)
                sim[:, c] = np.where(np.isinf(filled), np.nan, filled)
        out = {"names": list(snap.names), "photo_similarity": S, "similarity": sim}
        if not matcher:
            return out
        index, pid = self.local_index(snap)
        feats = query_features if query_features is not None else self._local_features(items)
        people = snap.people
        owners = np.full(len(index), -1, np.int64)
        searched = people[cols]                                   # background photos are not matched
        owners[pid[searched]] = cols[searched]
        ev = np.full((len(S), N), np.nan)
        ln = np.full((len(S), N), np.nan)
        inl = np.full(S.shape, np.nan)
        ver = np.full(S.shape, np.nan)
        rows = np.flatnonzero(searched)

        def one(r):
            sk = None if skip is None else pid[np.flatnonzero(skip[r])]
            also = []
            if verify_top:
                order = np.argsort(-np.nan_to_num(S[r, rows], nan=-np.inf), kind="stable")[:int(verify_top)]
                also = [int(pid[rows[o]]) for o in order if not np.isnan(S[r, rows[o]])]
            return index.match(feats[r], owners, N, skip=sk, also=also)
        for r, m in enumerate(_map(one, range(len(feats)))):
            ev[r, people] = m["evidence"][people]
            ln[r, people] = m["lnbnn"][people]
            inl[r] = m["inliers"][pid]
            ver[r] = m["verified"][pid]
        out.update(evidence=ev, lnbnn=ln, inliers=inl, verified=ver)
        return out

    def _fusion(self, matcher):
        """The calibrated ``Fusion`` for the answer (embedding alone when ``matcher`` is False), or None."""
        if not self.calibrated:
            return None
        from .calibration import Fusion
        where = f"gallery {self.path}'s calibration" if self.path is not None else "the gallery's calibration"
        fu = Fusion.from_dict(self.calibration["fusion"], where)
        if matcher and "matcher" not in fu.calibrations:
            raise ValueError(f"{where} does not include the keypoint matcher: calibrate with it (nabi gallery "
                             "calibrate GALLERY --matcher)")
        if matcher:
            want = self.calibration.get("local_settings")
            if want is not None and want != self.local_settings.to_dict():
                raise ValueError(f"{where} was made with local features {want}, the gallery has "
                                 f"{self.local_settings.to_dict()}; calibrate again")
            return fu
        if "embedding" not in fu.calibrations:
            raise ValueError(f"{where} has no calibration of the embedding alone")
        return Fusion({"embedding": fu.calibrations["embedding"]}, prior=fu.calibrations["embedding"].prior)

    def probabilities(self, scored, matcher, groups=None, prior_known=None):
        """(P (Q, N) over the names, P_unknown (Q,), p_same (Q, N), α used) from ``scores`` with the calibration; background
        names get P 0. ``groups``: a key per query; queries sharing one are a sighting whose answer combines
        their evidence (the mean of each individual's log likelihood ratios). ``prior_known``: α (default: the
        calibration's), or 'auto' to estimate it from these queries (``calibration.estimate_prior_known``: one
        sighting counted once). None when not calibrated."""
        from .calibration import answer_temperature, posterior
        fusion = self._fusion(matcher)
        if fusion is None:
            return None
        names = scored["names"]
        people = np.array([not is_background(n) for n in names])
        inputs = {"embedding": scored["similarity"]}
        if matcher:
            inputs["matcher"] = scored["evidence"]
        p = fusion.probabilities(inputs)
        p = np.where(people[None, :], p, np.nan)
        prior_known = self.calibration.get("prior_known", 0.5) if prior_known is None else prior_known
        if groups is not None:
            p = _combine_groups(p, groups, fusion.prior)
        if prior_known == "auto":
            from .calibration import estimate_prior_known
            rows = np.unique([str(g) for g in groups], return_index=True)[1] if groups is not None else slice(None)
            prior_known = estimate_prior_known(p[rows][:, people], fusion.prior) if len(p) > 1 else 0.5
        P, P0 = posterior(p[:, people], fusion.prior, float(prior_known), answer_temperature(self.calibration))
        full = np.zeros(p.shape)
        full[:, people] = P
        return full, P0, p, float(prior_known)

    def identify(self, paths_or_images, topk=TOPK, matcher=None, groups=None, prior_known=None) -> list:
        """The answer for each photo (path or image array); see the module docstring.

        ``matcher``: use the keypoint matcher (None: as the gallery is calibrated). ``groups``: one key per photo;
        photos with the same key are one sighting and get one answer from their evidence together.
        ``prior_known``: the prior that a photo shows an enrolled individual (default: the calibration's; 'auto':
        estimated from these photos). A photo that cannot be read gets ``{'answer': 'error', 'error': message}``
        and the others are answered.
        """
        items = [paths_or_images] if isinstance(paths_or_images, (str, Path)) else list(paths_or_images)
        snap = self._snap
        if not snap.entries:
            raise ValueError("the gallery is empty: enrol individuals first (nabi gallery add)")
        matcher = self.use_matcher(matcher)
        check = getattr(self.embedder, "check_readable", None)          # embedders without it read everything
        problems = [check(it) if check is not None and isinstance(it, (str, Path)) else None for it in items]
        ok = [i for i, pr in enumerate(problems) if pr is None]
        results = [{"answer": "error", "error": pr, "name": None} for pr in problems]
        if not ok:
            return results
        good = [items[i] for i in ok]
        q, probs = self.embedder.embed(good, with_probs=True)
        bg_wins = self.embedder.background_wins(probs)
        scored = self.scores(q, good, matcher=matcher, snap=snap)
        g = None if groups is None else [groups[i] for i in ok]
        post = self.probabilities(scored, matcher, g, prior_known)
        for r, i in enumerate(ok):
            results[i] = self._answer(scored, post, r, bool(bg_wins[r]) if bg_wins is not None else False,
                                      int(topk), snap, matcher)
        return results

    def _answer(self, scored, post, r, bg_win, topk, snap, matcher):
        names = scored["names"]
        sim = scored["similarity"][r]
        people = np.array([not is_background(n) for n in names])
        by_sim = [i for i in np.argsort(-np.nan_to_num(sim, nan=-np.inf), kind="stable") if not np.isnan(sim[i])]
        if post is not None:
            P, P0, p_same = post[0][r], float(post[1][r]), post[2][r]
            ranked = [i for i in np.lexsort((-np.nan_to_num(sim, nan=-np.inf), -P)) if people[i]]   # ties: similarity
        elif matcher:
            ev = np.nan_to_num(scored["evidence"][r], nan=-np.inf)
            ranked = [i for i in np.lexsort((-np.nan_to_num(sim, nan=-np.inf), -ev)) if people[i]]
            P = P0 = p_same = None
        else:
            ranked = [i for i in by_sim if people[i]]
            P = P0 = p_same = None
        photo_sim = scored["photo_similarity"][r]
        top_sim = by_sim[0] if by_sim else None
        background = bg_win or (top_sim is not None and not people[top_sim])
        cands = []
        for i in (by_sim if background else ranked)[:topk]:     # a background answer: the closest groups
            rows = np.flatnonzero(snap.columns == i)
            j = rows[int(np.argmax(np.nan_to_num(photo_sim[rows], nan=-np.inf)))]
            c = {"name": names[i], "similarity": float(sim[i]), "photo": snap.entries[j]["photo"]}
            if P is not None and people[i]:
                c["probability"] = float(P[i])
                c["p_same"] = float(p_same[i])
            if matcher and people[i]:
                c["evidence"] = float(np.nan_to_num(scored["evidence"][r, i]))
                n = scored["inliers"][r, rows]
                c["inliers"] = int(np.nanmax(n)) if np.any(~np.isnan(n)) else 0
            cands.append(c)
        out = {"calibrated": P is not None, "candidates": cands, "threshold": None}
        if post is not None:
            out["p_unknown"] = P0
        bg_sims = [float(sim[i]) for i in range(len(names)) if not people[i] and not np.isnan(sim[i])]
        out["background_similarity"] = max(bg_sims) if bg_sims else None
        best = ranked[0] if ranked else None
        second = ranked[1] if len(ranked) > 1 else None
        if P is not None:
            out["margin"] = None if second is None else float(P[best] - P[second])
        else:
            out["margin"] = None if second is None else float(sim[best] - sim[second]) if not matcher else \
                float(np.nan_to_num(scored["evidence"][r, best]) - np.nan_to_num(scored["evidence"][r, second]))
        out["similarity"] = float(sim[best]) if best is not None else (float(sim[top_sim]) if top_sim is not None
                                                                        else 0.0)
        if background:
            out.update(answer="background", name=None, probability=None)
        elif best is None:
            out.update(answer="unknown", name=None, probability=P0)
        elif P is not None:
            if P[best] >= P0:
                out.update(answer="known", name=names[best], probability=float(P[best]))
            else:
                out.update(answer="unknown", name=None, probability=P0)
        elif self.threshold is not None and not matcher and sim[best] <= self.threshold:
            out.update(answer="unknown", name=None, probability=None, threshold=self.threshold)
        else:
            out.update(answer="known", name=names[best], probability=None, threshold=self.threshold)
        if P is not None and out["probability"] is not None:
            from .calibration import answer_map
            amap = answer_map(self.calibration)
            if amap is not None:         # how often such answers are right; the posterior's own value kept beside
                out["posterior_probability"] = out["probability"]
                out["probability"] = amap(out["probability"])
        return out

    # -- calibration and evaluation ------------------------------------------------------------------------
    def calibrate(self, calibration_dir=None, matcher=None, prior_known=None, kind="isotonic", fusion="logistic",
                  log=None, answer="platt"):
        """Fit the probability calibration and save it; returns its summary (``nabi.reid.calibrate``)."""
        from .calibrate import calibrate_gallery
        return calibrate_gallery(self, calibration_dir, matcher=matcher, prior_known=prior_known, kind=kind,
                                 fusion=fusion, answer=answer, log=log)

    def evaluate(self, queries_dir=None, matcher=None, groups="encounter", log=None, prior_known=None,
                 scored=None) -> dict:
        """Figures on labelled query photos (``nabi.reid.evaluation.evaluate``; ``scored``: what
        ``nabi.reid.evaluation.score_queries`` returned, to answer again without scoring again)."""
        from .evaluation import evaluate
        return evaluate(self, queries_dir, matcher=matcher, groups=groups, log=log, prior_known=prior_known,
                        scored=scored)


def _map(fn, items):
    """``map`` over threads when there is more than one item (OpenCV and NumPy release the GIL while matching)."""
    items = list(items)
    if len(items) < 2:
        return [fn(i) for i in items]
    import os
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=max(1, min(len(items), os.cpu_count() or 1))) as ex:
        return list(ex.map(fn, items))


def _combine_groups(p, groups, prior):
    """Pair probabilities of a sighting's photos combined: each individual's log likelihood ratios averaged over
    the photos that scored it, back to a probability at the same pair prior. Averaged, not summed: photos of one
    sighting share the place, the light and the pose, so they are not independent evidence (summed, a pair of
    flank photos made the nyala sightings' answers overconfident: calibration error 0.31 against 0.10 per
    photo, most strangers called known)."""
    from .calibration import _logit
    groups = list(groups)
    if len(groups) != len(p):
        raise ValueError(f"one group key per photo is needed, got {len(groups)} for {len(p)} photos")
    out = p.copy()
    logit = _logit(np.clip(np.nan_to_num(p, nan=0.5), 1e-12, 1 - 1e-12))
    base = np.log(prior / (1 - prior))
    keys = np.array([str(k) for k in groups], dtype=object)
    for key in set(keys.tolist()):
        rows = np.flatnonzero(keys == key)
        if len(rows) < 2:
            continue
        have = ~np.isnan(p[rows])
        n = np.maximum(have.sum(axis=0), 1)
        z = np.where(have, logit[rows] - base, 0.0).sum(axis=0) / n + base
        combined = 0.5 * (1.0 + np.tanh(0.5 * z))
        out[rows] = np.where(have.any(axis=0), combined, np.nan)[None, :]
    return out
