"""A gallery folder on disk: what is enrolled, its embeddings and local features, its calibration.

    index.json                     the format and version; the model's identity (weights path, SHA-256);
                                   one entry per enrolled photo {name, photo, sha256, encounter}; the
                                   encounter rule; the local-feature settings; the calibration; and the
                                   name and SHA-256 of each array file
    embeddings-<hash>.safetensors  (M, D) float32 unit embeddings, one row per entry
    local-<hash>.safetensors       the entries' local features (``nabi.reid.local_features.pack``: points,
                                   float16 descriptors, offsets), present once local features are computed

Each save writes new array files (named by their content), then the index atomically, then removes the
files the old index named — so the index and the arrays always agree, and a crash leaves the old
gallery or the new one, never a mixture. Every array file is checked against the SHA-256 in the index
when read: an edited index or a damaged file is a ``GalleryError`` naming it.
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
VERSION = 2                     # 2: encounters, local features, probability calibration; 1 is still read


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


def read_local(path, index):
    """``(file name, [Features] per entry)`` or ``(None, None)`` when the gallery has no local features."""
    if not index.get("local"):
        return None, None
    from .local_features import unpack
    name, state = _array_file(path, index, "local", "local features")
    try:
        feats = unpack(state)
    except (KeyError, ValueError) as e:
        raise GalleryError(f"gallery local features file {Path(path) / name} is unusable: {e}") from None
    if len(feats) != len(index["entries"]):
        raise GalleryError(f"gallery index {Path(path) / INDEX} lists {len(index['entries'])} photos and the local "
                           f"features file {Path(path) / name} holds {len(feats)} (was the index edited?)")
    return name, feats


def _write_arrays(folder, prefix, arrays, metadata):
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    name = f"{prefix}-{h.hexdigest()[:16]}.safetensors"
    if not (folder / name).exists():
        io.save_weights(folder / name, arrays, metadata)
    return {"file": name, "sha256": file_sha256(folder / name)}


def write(path, index: dict, embeddings, local=None, previous=()) -> dict:
    """Write a gallery: the array files, then ``index`` (with their names and SHA-256 filled in), then remove
    the files of ``previous`` (names the old index referred to) that the new one does not. Returns the index."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    E = np.ascontiguousarray(embeddings, dtype=np.float32)
    index = dict(index, format=FORMAT, version=VERSION)
    index["embeddings"] = _write_arrays(folder, "embeddings", {"embeddings": E},
                                        {"format": FORMAT, "rows": int(E.shape[0])})
    index["embedding_dim"] = int(E.shape[1]) if E.ndim == 2 else 0
    if local is not None:
        from .local_features import pack
        index["local"] = _write_arrays(folder, "local", pack(local), {"format": FORMAT, "photos": len(local)})
    else:
        index["local"] = None
    io.atomic_write_json(folder / INDEX, index)
    keep = {index["embeddings"]["file"]} | ({index["local"]["file"]} if index["local"] else set())
    for old in previous:
        if old and old not in keep:
            for f in (folder / old, Path(io.sidecar_path(folder / old))):
                try:
                    os.remove(f)
                except FileNotFoundError:
                    pass
    return index


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
