"""A gallery folder on disk: what is enrolled, its embeddings and local features, its calibration.

    index.json                     the format and version; the model's identity (weights path, SHA-256);
                                   one entry per enrolled photo {name, photo, sha256, encounter}; the
                                   encounter rule; the local-feature settings; the calibration; and the
                                   name and SHA-256 of each array file
    embeddings-<hash>.safetensors  (M, D) float32 unit embeddings, one row per entry
    local-<hash>.safetensors       the entries' local features (``nabi.reid.local_features.pack``: points,
                                   float16 descriptors, offsets), present once local features are computed,
                                   in chunks of consecutive entries (the index lists each chunk's file,
                                   SHA-256 and number of photos)

Each save writes new array files (named by their content), then the index atomically, then removes the
files the old index named — so the index and the arrays always agree, and a crash leaves the old
gallery or the new one, never a mixture. Every array file is checked against the SHA-256 in the index
when read: an edited index or a damaged file is a ``GalleryError`` naming it.

Local features are the bulk of a gallery (about 250 KB a photo), so a save keeps every chunk whose photos
are still the same photos at the same places under the same local-feature settings, and writes only the
rest: enrolling a few photos into 10,000 writes a small chunk, not 2.5 GB again. New photos become a chunk
that absorbs the chunks before it that are no larger (a binary counter: about log₂ M chunks for M photos,
each photo rewritten about log₂ M times over the gallery's life); taking a photo out rewrites the chunks
from the first one that held it.

    keypoint-tree-<key>.flann      a cache: the FLANN trees over the keypoints of the chunks its sidecar
    keypoint-tree-<key>.json       lists (SHA-256 of the trees, OpenCV's version), so a process that opens
                                   a large gallery loads the trees instead of building them (at 10,000 photos
                                   building takes minutes). Written by whoever first builds them; used while
                                   its chunks begin the gallery's chunk list (photos enrolled since are
                                   searched exactly beside it, as in memory); removed by the save that makes
                                   it stale. Deleting it is harmless.
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .. import files as io
from ..files.digest import file_sha256

INDEX = "index.json"
FORMAT = "nabi-gallery"
VERSION = 3                     # 3: local features in chunks; 2: encounters, local features, probability
#                                 calibration (2 and 1 are still read)


class GalleryError(ValueError):
    """A gallery folder that cannot be used (damaged, edited, or made with other weights)."""


def read_index(path) -> dict:
    """The index of the gallery folder ``path``, checked for its format (not its arrays)."""
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
    if not isinstance(index.get("version", 1), int) or index.get("version", 1) > VERSION:
        raise GalleryError(f"{index_path} is a gallery of format version {index.get('version')}; this nabi reads "
                           f"versions up to {VERSION}: upgrade nabi")
    for key in ("model", "entries", "embeddings"):
        if key not in index:
            raise GalleryError(f"gallery index {index_path} lacks the field {key!r}")
    entries = index["entries"]
    if not isinstance(entries, list) or any(not isinstance(e, dict) or not {"name", "photo", "sha256"} <= set(e)
                                            for e in entries):
        raise GalleryError(f"gallery index {index_path}: every entry needs name, photo and sha256")
    return index


def _array_file(path, index, key, what):
    """Read the array file the index names under ``key`` (``{"file", "sha256"}``), checking its SHA-256."""
    index_path = Path(path) / INDEX
    ref = index.get(key)
    try:
        name, sha = ref["file"], ref["sha256"]
    except (KeyError, TypeError):
        raise GalleryError(f"gallery index {index_path} has no usable {key!r} field (file and sha256)") from None
    if not isinstance(name, str) or Path(name).name != name:
        raise GalleryError(f"gallery index {index_path} names the {what} file {name!r}; expected a file name "
                           "inside the gallery folder")
    file = Path(path) / name
    if not file.is_file():
        raise GalleryError(f"gallery index {index_path} names the {what} file {file}, which does not exist")
    if file_sha256(file) != sha:
        raise GalleryError(f"gallery {what} file {file} does not match the SHA-256 recorded in {index_path}: the file "
                           "was changed or damaged; rebuild the gallery")
    try:
        state, _ = io.load_weights(file)
    except (ValueError, KeyError) as e:
        raise GalleryError(f"gallery {what} file {file} is unreadable: {e}") from None
    return name, state


def read_embeddings(path, index) -> tuple:
    """``(file name, (M, D) float32)``; a row count that differs from the entries is a ``GalleryError``."""
    name, state = _array_file(path, index, "embeddings", "embeddings")
    E = np.asarray(state.get("embeddings"), dtype=np.float32)
    n = len(index["entries"])
    if E.ndim != 2 or E.shape[0] != n:
        raise GalleryError(f"gallery index {Path(path) / INDEX} does not match {Path(path) / name}: the index lists "
                           f"{n} photos, the embeddings file holds {E.shape[0] if E.ndim == 2 else '?'} rows (was the "
                           "index edited?)")
    return name, E


def local_chunks(index) -> list:
    """The index's local-feature chunks ``[{"file", "sha256", "photos"}]`` in entry order (a version-2 index's
    single file is one chunk of every photo); ``[]`` without local features."""
    local = index.get("local")
    if not local:
        return []
    if isinstance(local, dict):
        return [dict(local, photos=len(index.get("entries", ())))]
    if not isinstance(local, list) or any(not isinstance(c, dict) or not isinstance(c.get("photos"), int)
                                         for c in local):
        raise GalleryError(f"gallery index field 'local' must list chunks (file, sha256, photos), got {local!r}")
    return local


def read_local(path, index):
    """``(file names, [Features] per entry)`` or ``(None, None)`` when the gallery has no local features."""
    chunks = local_chunks(index)
    if not chunks:
        return None, None
    from .local_features import unpack
    names, feats = [], []
    for chunk in chunks:
        name, state = _array_file(path, {"local": chunk}, "local", "local features")
        try:
            part = unpack(state)
        except (KeyError, ValueError) as e:
            raise GalleryError(f"gallery local features file {Path(path) / name} is unusable: {e}") from None
        if len(part) != chunk["photos"]:
            raise GalleryError(f"gallery index {Path(path) / INDEX} says the local features file {Path(path) / name} "
                               f"holds {chunk['photos']} photos; it holds {len(part)} (was the index edited?)")
        names.append(name)
        feats.extend(part)
    if len(feats) != len(index["entries"]):
        raise GalleryError(f"gallery index {Path(path) / INDEX} lists {len(index['entries'])} photos and its local "
                           f"features files hold {len(feats)} (was the index edited?)")
    return names, feats


def _write_arrays(folder, prefix, arrays, metadata):
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    name = f"{prefix}-{h.hexdigest()[:16]}.safetensors"
    if not (folder / name).exists():
        io.save_weights(folder / name, arrays, metadata)
    return {"file": name, "sha256": file_sha256(folder / name)}


def _saved_index(folder):
    """The index already in ``folder``, or None (none yet, or one this version cannot use)."""
    try:
        return read_index(folder)
    except (OSError, GalleryError):
        return None


def _reusable_chunks(folder, old, entries, local_settings) -> list:
    """The leading chunks of the ``old`` index that hold the same photos at the same places as ``entries``,
    computed under the same ``local_settings``, whose files are still there."""
    if old is None or old.get("local_settings") != local_settings:
        return []
    old_shas = [e.get("sha256") for e in old["entries"]]
    new_shas = [e["sha256"] for e in entries]
    kept, start = [], 0
    try:
        chunks = local_chunks(old)
    except GalleryError:
        return []
    for chunk in chunks:
        n = chunk["photos"]
        if start + n > len(new_shas) or new_shas[start:start + n] != old_shas[start:start + n] \
                or not (folder / str(chunk.get("file"))).is_file():
            break
        kept.append(chunk)
        start += n
    return kept


def _write_local(folder, entries, local, local_settings, old) -> list:
    """The chunk list for ``local`` (one ``Features`` per entry): the reusable chunks of the ``old`` index, then
    one new chunk of the rest that absorbs the kept chunks before it that are no larger than it."""
    from .local_features import pack
    chunks = _reusable_chunks(folder, old, entries, local_settings)
    start = sum(c["photos"] for c in chunks)
    if start == len(local):
        return chunks
    while chunks and chunks[-1]["photos"] <= len(local) - start:
        start -= chunks.pop()["photos"]
    part = list(local[start:])
    ref = _write_arrays(folder, "local", pack(part), {"format": FORMAT, "photos": len(part)})
    return chunks + [dict(ref, photos=len(part))]


def write(path, index: dict, embeddings, local=None, previous=()) -> dict:
    """Write a gallery: the array files (the local features' unchanged chunks kept), then ``index`` (with their
    names and SHA-256 filled in), then remove the files that the old index (and ``previous``, names an older
    index referred to) named and the new one does not. Returns the index."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    old = _saved_index(folder)
    E = np.ascontiguousarray(embeddings, dtype=np.float32)
    index = dict(index, format=FORMAT, version=VERSION)
    index["embeddings"] = _write_arrays(folder, "embeddings", {"embeddings": E},
                                        {"format": FORMAT, "rows": int(E.shape[0])})
    index["embedding_dim"] = int(E.shape[1]) if E.ndim == 2 else 0
    if local is not None:
        index["local"] = _write_local(folder, index["entries"], local, index.get("local_settings"), old)
    else:
        index["local"] = None
    io.atomic_write_json(folder / INDEX, index)
    _drop_stale_trees(folder, [c["sha256"] for c in local_chunks(index)])
    keep = {index["embeddings"]["file"]} | {c["file"] for c in local_chunks(index)}
    if old is not None:
        named = [(old.get("embeddings") or {}).get("file")]
        try:
            named += [c.get("file") for c in local_chunks(old)]
        except GalleryError:
            pass
        previous = list(previous) + named
    names = []
    for name in previous:                          # a file name, or a list of them (the local chunks)
        names.extend(name if isinstance(name, (list, tuple)) else [name])
    for name in names:
        if isinstance(name, str) and name and name not in keep:
            for f in (folder / name, Path(io.sidecar_path(folder / name))):
                try:
                    os.remove(f)
                except FileNotFoundError:
                    pass
    return index


TREE_PREFIX = "keypoint-tree-"


def _tree_key(chunk_shas) -> str:
    from .matcher import TREES
    return hashlib.sha256(json.dumps([list(chunk_shas), TREES]).encode()).hexdigest()[:16]


def saved_trees(folder):
    """``(sidecar path, its JSON)`` of every keypoint-tree cache in ``folder`` whose sidecar is readable."""
    out = []
    for meta_path in Path(folder).glob(f"{TREE_PREFIX}*.json"):
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
            if isinstance(meta, dict) and isinstance(meta.get("chunks"), list) and isinstance(meta.get("file"), str):
                out.append((meta_path, meta))
        except (OSError, ValueError):
            continue
    return out


def save_keypoint_tree(path, index, chunks) -> bool:
    """Cache ``index``'s trees (one FLANN tree over every descriptor of the gallery whose local-feature chunks
    are ``chunks``) in the gallery folder: the trees first (under a temporary name, then renamed), then their
    sidecar. False when the folder cannot take it (read-only, full); nothing is left half-written."""
    from .local_features import _cv2
    from .matcher import TREES
    folder = Path(path)
    shas = [c["sha256"] for c in chunks]
    key = _tree_key(shas)
    name = f"{TREE_PREFIX}{key}.flann"
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    try:
        index.save_tree(tmp)
        sha = file_sha256(tmp)
        os.replace(tmp, folder / name)
        io.atomic_write_json(folder / f"{TREE_PREFIX}{key}.json", {
            "format": "nabi-keypoint-tree", "file": name, "sha256": sha, "chunks": shas,
            "photos": int(sum(c["photos"] for c in chunks)), "rows": int(index.n_rows), "trees": TREES,
            "opencv": _cv2().__version__})
        return True
    except OSError:
        try:
            os.remove(tmp)
        except OSError:
            pass
        return False


def load_keypoint_tree(path, chunks, features, settings):
    """The ``LocalIndex`` over ``features`` (one per entry, the gallery's chunks ``chunks``) from the cached trees
    whose chunks begin ``chunks`` (the longest such), the photos after them added as ``with_photos`` adds
    them; None when no cache fits (or its file does not match its SHA-256, or another OpenCV wrote it)."""
    from .local_features import _cv2
    from .matcher import TREES, LocalIndex
    shas = [c["sha256"] for c in chunks]
    best = None
    for _, meta in saved_trees(path):
        covered = meta["chunks"]
        if covered and covered == shas[:len(covered)] and meta.get("trees") == TREES \
                and meta.get("opencv") == _cv2().__version__ and (best is None or len(covered) > len(best["chunks"])):
            best = meta
    if best is None:
        return None
    file = Path(path) / best["file"]
    if Path(best["file"]).name != best["file"] or not file.is_file() or file_sha256(file) != best.get("sha256"):
        return None
    m = sum(c["photos"] for c in chunks[:len(best["chunks"])])
    try:
        base = LocalIndex(features[:m], settings, tree_file=file)
    except ValueError:
        return None
    if not base.whole_tree or base.n_rows != best.get("rows"):
        return None
    return base.with_photos(features[m:])


def _drop_stale_trees(folder, chunk_shas):
    """Remove the keypoint-tree caches whose chunks no longer begin the gallery's, and leftovers of a crash."""
    for meta_path, meta in saved_trees(folder):
        covered = meta["chunks"]
        if not covered or covered != list(chunk_shas[:len(covered)]):
            for f in (Path(folder) / Path(meta["file"]).name, meta_path):
                try:
                    os.remove(f)
                except OSError:
                    pass
    for tmp in Path(folder).glob(f".{TREE_PREFIX}*.tmp"):
        try:
            os.remove(tmp)
        except OSError:
            pass


class GalleryBusy(GalleryError):
    """Another process is changing the gallery folder."""


LOCK = ".lock"


@contextmanager
def one_writer(path, create=False):
    """Hold the gallery folder ``path`` for one writer (``filelock``; ``path/.lock``): a second process that
    tries to change the same gallery meanwhile gets ``GalleryBusy`` at once instead of overwriting the
    first one's changes. Readers (``identify``, ``nabi serve``) never wait for it. ``create``: make the folder
    first (a gallery being built)."""
    from filelock import FileLock, Timeout
    path = Path(path)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    elif not path.is_dir():                  # nothing to hold: opening it will say what is wrong
        yield path
        return
    lock = FileLock(path / LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise GalleryBusy(f"gallery {path} is being changed by another nabi process (build, add, remove, rename or "
                          "calibrate); wait for it to finish, then try again") from None
    try:
        yield path
    finally:
        lock.release()
