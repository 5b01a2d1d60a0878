"""Folders of photos of individuals: one sub-folder per individual, names checked, repeated files found.

    PHOTOS/<name>/<photo>                 an individual's photos
    PHOTOS/<name>/<encounter>/<photo>     … grouped by encounter (``nabi.data.encounters``, rule ``folder``)
    PHOTOS/background/<photo>             photos of empty scenes (optional)
    PHOTOS/background/<kind>/<photo>      … of one kind of scene
"""
from __future__ import annotations

import unicodedata
from pathlib import Path

from ..data import IMG_EXTENSIONS
from ..data.background import BACKGROUND, is_background
from ..files.digest import file_sha256


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


def list_photos(folder, recursive=False) -> list:
    """Image files in ``folder`` (and, with ``recursive``, in its sub-folders: one folder per encounter), sorted
    (hidden files and folders skipped)."""
    exts = {e.lower().lstrip(".") for e in IMG_EXTENSIONS}
    folder = Path(folder)
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found
                  if p.is_file() and p.suffix.lower().lstrip(".") in exts
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def individual_folders(photos_dir) -> list:
    """``[(name, [photo paths])]`` of a folder with one sub-folder per individual (its photos directly in it or
    in sub-folders, one per encounter); ``background/`` may hold photos and/or ``background/<kind>/``
    sub-folders. An empty individual folder is an error naming it."""
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
        photos = list_photos(sub, recursive=True)
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
