"""Background photos and their kinds: the reserved class names ``background`` and ``background/<kind>``.

Photos of empty scenes (the places the animals are seen, without an animal) live in a
``background/`` folder beside one folder per individual. Its sub-folders name kinds of scene::

    root/
        tom/  a.jpg ...
        background/  x.jpg            -> class ``background``
            trees/  t1.jpg ...        -> class ``background/trees``
            pavement/  p1.jpg ...     -> class ``background/pavement``

``expand_background_kinds`` is the one place that turns the files of the background folder
into those classes (the image folders, classification training, the experiment runner and
re-identification all call it); ``is_background`` tells any of these names apart from an
individual's.
"""
from __future__ import annotations

import os
import unicodedata
from pathlib import Path

BACKGROUND = "background"


def is_background(name, background: str = BACKGROUND) -> bool:
    """``background`` or ``background/<kind>`` (for the given background folder name): a background class."""
    if not isinstance(name, str):
        return False
    bg = unicodedata.normalize("NFC", str(background))
    name = unicodedata.normalize("NFC", name)
    return name == bg or name.startswith(bg + "/")


def background_kinds(classes, background: str = BACKGROUND) -> list:
    """The ``<kind>`` of every ``background/<kind>`` name in ``classes``, in order."""
    bg = unicodedata.normalize("NFC", str(background))
    return [unicodedata.normalize("NFC", c)[len(bg) + 1:] for c in classes
            if isinstance(c, str) and unicodedata.normalize("NFC", c).startswith(bg + "/")]


def expand_background_kinds(files_by_class: dict, background_folder, background: str = BACKGROUND,
                            is_hidden=lambda name: name.startswith(".")) -> dict:
    """Split the background class of ``files_by_class`` (class name -> list of file paths) by kind.

    Each file under ``background_folder/<kind>/`` (at any depth below it) goes to the class
    ``<background>/<kind>``; files directly in ``background_folder`` stay in ``<background>``.
    Other classes are kept as they are. Returns a new dict; ``ValueError`` when a kind folder
    holds no image file (naming it) or a kind is named like one of the other classes.
    """
    bg = unicodedata.normalize("NFC", str(background))
    if bg not in files_by_class:
        return dict(files_by_class)
    folder = Path(background_folder)
    kind_dirs = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_dir() and not is_hidden(entry.name):
            kind_dirs[unicodedata.normalize("NFC", entry.name)] = Path(entry.path)
    if not kind_dirs:
        return dict(files_by_class)
    others = [c for c in files_by_class if c != bg]
    clash = sorted(k for k in kind_dirs if k in others)
    if clash:
        raise ValueError(f"background kind folder(s) {[str(kind_dirs[k]) for k in clash]} are named like "
                         f"individual(s) {clash} of {folder.parent}: rename the kind (e.g. {clash[0]}-scene) "
                         "so a background photo is never read as that individual")
    by_kind = {k: [] for k in kind_dirs}
    direct = []
    for path in files_by_class[bg]:
        rel = Path(path).relative_to(folder)
        if len(rel.parts) > 1:
            by_kind[unicodedata.normalize("NFC", rel.parts[0])].append(path)
        else:
            direct.append(path)
    empty = [str(kind_dirs[k]) for k, files in by_kind.items() if not files]
    if empty:
        raise ValueError(f"background kind folder(s) {empty} hold no image files; put photos of that kind of "
                         f"scene in each (or remove the empty folder)")
    out = {c: files for c, files in files_by_class.items() if c != bg}
    if direct:
        out[bg] = direct
    for k, files in by_kind.items():
        out[f"{bg}/{k}"] = files
    return out
