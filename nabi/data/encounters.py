"""Encounters: the photos of one individual taken together, and splits that keep each encounter whole.

Photos taken at one sighting share the place, the light and often the pose. A split that puts one of
them on the gallery (or training) side and another on the query (or test) side measures how well the
scene is recognised, not the animal: a club photographs its animals again on other days, in other
places. Every split of photos into parts that nabi makes for re-identification can therefore keep each
encounter on one side.

An encounter is named by a key, unique within its individual. How photos are grouped (``RULES``):

    name      the first run of digits in the file name: ``275_leftphoto.jpg`` and ``275_rightphoto.jpg`` are
              encounter 275 (a prefix such as ``train_`` is skipped); ``name:REGEX`` uses the first group of
              a regular expression searched in the file name instead
    folder    one more folder level: ``PHOTOS/<individual>/<encounter>/<photo>`` (photos directly in the
              individual's folder are each their own encounter)
    time      the EXIF time: an individual's photos taken within ``gap`` minutes of the previous one (in time
              order) are one encounter; a photo without an EXIF time is its own encounter
    photo     every photo its own encounter (no grouping)
    auto      ``folder`` when a photo lies in a sub-folder of its individual, else ``time`` when every photo
              has an EXIF time, else ``photo``

``encounter_keys`` gives the keys; ``split_by_encounter`` divides an individual's encounters (not its
photos) between parts.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

RULES = ("auto", "name", "folder", "time", "photo")
DEFAULT_GAP_MINUTES = 30.0
_DIGITS = re.compile(r"(\d+)")


def parse_rule(rule):
    """``(kind, regex or None)`` of a rule string (``name:REGEX`` included); a clear ``ValueError`` otherwise."""
    if not isinstance(rule, str) or not rule:
        raise ValueError(f"an encounter rule must be one of {', '.join(RULES)} or name:REGEX, got {rule!r}")
    if rule.startswith("name:"):
        pattern = rule[len("name:"):]
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"encounter rule {rule!r}: {pattern!r} is not a regular expression ({e})") from None
        if regex.groups < 1:
            raise ValueError(f"encounter rule {rule!r}: the regular expression needs one group (…) that captures "
                             "the encounter, e.g. name:^(\\d+)_")
        return "name", regex
    if rule not in RULES:
        raise ValueError(f"unknown encounter rule {rule!r}: expected one of {', '.join(RULES)} or name:REGEX")
    return rule, (_DIGITS if rule == "name" else None)


def _key_from_name(path, regex):
    m = regex.search(Path(path).name)
    return None if m is None or m.group(1) in (None, "") else m.group(1)


def encounter_keys(paths, rule="auto", gap_minutes=DEFAULT_GAP_MINUTES, individual_dir=None) -> list:
    """One encounter key (a string) per photo of ONE individual.

    paths          the individual's photo paths
    rule           see the module docstring
    gap_minutes    for ``time``: the largest gap between consecutive photos of one encounter
    individual_dir the individual's folder, for ``folder`` (default: the common parent of the photos)

    Photos that the rule cannot group (no digits in the name, no EXIF time) get a key of their own,
    ``photo:<file name>``, so they are never put together with another photo by accident.
    """
    kind, regex = parse_rule(rule)
    paths = [Path(p) for p in paths]
    if not paths:
        return []
    if gap_minutes is None or not float(gap_minutes) >= 0:
        raise ValueError(f"the encounter gap must be a number of minutes ≥ 0, got {gap_minutes!r}")
    alone = [f"photo:{p.name}" for p in paths]
    if kind == "auto":
        base = Path(individual_dir) if individual_dir is not None else _common_parent(paths)
        if any(p.parent != base for p in paths):
            kind = "folder"
        else:
            from .exif import photo_time
            times = [photo_time(p) for p in paths]
            if all(t is not None for t in times):
                return _group_by_time(paths, times, gap_minutes)
            return alone
    if kind == "photo":
        return alone
    if kind == "name":
        return [k if k is not None else a for k, a in zip((_key_from_name(p, regex) for p in paths), alone)]
    if kind == "folder":
        base = Path(individual_dir) if individual_dir is not None else _common_parent(paths)
        out = []
        for p, a in zip(paths, alone):
            try:
                rel = p.parent.relative_to(base)
            except ValueError:
                rel = Path(".")
            out.append(f"folder:{rel.as_posix()}" if rel != Path(".") else a)
        return out
    from .exif import photo_time
    return _group_by_time(paths, [photo_time(p) for p in paths], gap_minutes)


def _common_parent(paths):
    parents = {p.parent for p in paths}
    if len(parents) == 1:
        return parents.pop()
    import os
    return Path(os.path.commonpath([str(p.parent) for p in paths]))


def _group_by_time(paths, times, gap_minutes):
    """Keys ``time:<first photo's time>`` for runs of photos at most ``gap_minutes`` apart."""
    keys = [f"photo:{p.name}" for p in paths]
    timed = sorted((t, i) for i, t in enumerate(times) if t is not None)
    start = prev = None
    for t, i in timed:
        if prev is None or (t - prev).total_seconds() > float(gap_minutes) * 60.0:
            start = t
        keys[i] = f"time:{start.isoformat()}"
        prev = t
    return keys


def count_encounters(keys) -> int:
    return len(set(keys))


def split_by_encounter(labels, encounters, fractions, seed=0, min_per_part=1) -> list:
    """Divide each individual's encounters between parts; returns one sorted index array per part.

    labels      (N,) the individual of each photo
    encounters  (N,) each photo's encounter key (unique within its individual)
    fractions   the share of each individual's *encounters* per part, e.g. (0.5, 0.5); positive, summing to 1
    seed        the split depends only on it (and on the photos)
    min_per_part  every part gets at least this many encounters of an individual when it has enough
                (an individual with fewer encounters than parts fills the first parts)

    Every photo is in exactly one part, and the photos of one encounter are all in the same part.
    """
    labels = np.asarray(labels, dtype=object)
    encounters = np.asarray(encounters, dtype=object)
    if labels.shape != encounters.shape or labels.ndim != 1:
        raise ValueError(f"labels and encounters must both be (N,), got {labels.shape} and {encounters.shape}")
    fractions = [float(f) for f in fractions]
    if len(fractions) < 2 or any(not f > 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be at least two positive shares summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    parts = [[] for _ in fractions]
    for name in sorted(set(labels.tolist()), key=str):
        idx = np.flatnonzero(labels == name)
        keys = sorted(set(encounters[idx].tolist()), key=str)
        order = [keys[i] for i in rng.permutation(len(keys))]
        counts = _shares(len(order), fractions, min_per_part)
        start = 0
        for k, c in enumerate(counts):
            chosen = set(order[start:start + c])
            parts[k].extend(i for i in idx if encounters[i] in chosen)
            start += c
    return [np.array(sorted(p), dtype=np.int64) for p in parts]


def _shares(n, fractions, min_per_part):
    """Encounters per part: the largest-remainder rounding of n·fractions, each part at least
    ``min_per_part`` while enough remain (taken from the largest part)."""
    exact = n * np.asarray(fractions)
    counts = np.floor(exact + 1e-9).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[:n - counts.sum()]:
        counts[i] += 1
    for k in range(len(counts)):
        while counts[k] < min_per_part and counts.max() > min_per_part:
            counts[np.argmax(counts)] -= 1
            counts[k] += 1
    return counts


def split_photos(paths, labels, ratios, seed=0, rule="photo", class_dirs=None) -> list:
    """Split labelled photos into parts (train/val/test), each encounter whole on one side.

    paths       (N,) photo paths; labels (N,) their classes
    ratios      the share of each part, e.g. (0.8, 0.1, 0.1)
    rule        an encounter rule (module docstring); ``photo`` is the plain stratified split of
                ``nabi.data.split.stratified_split``, so a run without encounters splits as it always did
    class_dirs  {label: the class's folder}, for the ``folder`` and ``auto`` rules

    With another rule, each class's *encounters* are shared out by ``ratios``: a class with fewer
    encounters than parts fills the first parts (training first), so its photos are never seen twice.
    Returns one sorted int64 index array per part.
    """
    from .split import stratified_split
    kind, _ = parse_rule(rule)
    labels = np.asarray(labels)
    if kind == "photo":
        return stratified_split(labels, tuple(ratios), seed)
    paths = [Path(p) for p in paths]
    if len(paths) != len(labels):
        raise ValueError(f"paths and labels differ in length ({len(paths)} and {len(labels)})")
    keys = [None] * len(paths)
    for label in sorted(set(labels.tolist()), key=str):
        idx = np.flatnonzero(labels == label)
        where = None if class_dirs is None else class_dirs.get(label)
        for i, k in zip(idx, encounter_keys([paths[i] for i in idx], rule, individual_dir=where)):
            keys[i] = k
    return split_by_encounter(labels, np.array(keys, dtype=object), tuple(ratios), seed)
