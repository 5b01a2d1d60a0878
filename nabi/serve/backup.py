"""``nabi serve --backup DEST``: a copy of a data folder that is a data folder itself, made while a server runs.

    nabi serve --data club-data --backup backups/2024-05-01

writes ``DEST`` (which must not exist yet) with

    nabi.sqlite3        SQLite's online backup of the database: one consistent state, even while a server
                        writes (individuals, decisions, sightings, the change log, and the photos the server
                        enrolled in the re-identification search with their embeddings)
    photos/, work/      every photo (and working copy) that copy of the database refers to, each checked
                        against its SHA-256
    backup.json         what was copied: time, schema version, row counts, the source served, photos

It is built in a hidden folder beside ``DEST`` and renamed into place at the end, so a ``DEST`` that
exists is always complete. Thumbnails and heat-maps (``cache/``) are left out: they are made again.

Restore: stop the server, then serve the backup folder (or a copy of it) as the data folder, with the
same gallery or run as before::

    nabi serve GALLERY_OR_RUN --data backups/2024-05-01

The gallery folder is not part of the backup: it is never written by the server (it is identified by
the SHA-256 of its index, recorded in the database), so keep it — or the photos and command that built
it — alongside.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
from pathlib import Path

from ..files import atomic_write_json
from .storage import DB_NAME, utc_now


class BackupError(RuntimeError):
    """The backup cannot be made (no database, a destination that exists, a missing photo)."""


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def backup(data, dest, log=print) -> dict:
    """Copy the data folder ``data`` to the new folder ``dest``; returns the manifest (also in backup.json)."""
    data, dest = Path(data), Path(dest)
    db = data / DB_NAME
    if not db.is_file():
        raise BackupError(f"{data} holds no nabi serve database ({DB_NAME}): give the --data folder a server used")
    if dest.exists():
        raise BackupError(f"{dest} already exists: give a new folder for the backup (it is never overwritten)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir()
    try:
        src = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        out = sqlite3.connect(partial / DB_NAME)
        try:
            src.backup(out)                     # SQLite's online backup: pages copied under a read transaction
        finally:
            src.close()
        out.row_factory = sqlite3.Row
        try:
            version = out.execute("PRAGMA user_version").fetchone()[0]
            rows = out.execute("SELECT sha256, format, work_width FROM photos").fetchall()
            counts = {t: out.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                      for t in ("individuals", "photos", "sightings", "decisions", "audit")}
            try:
                sources = [dict(r) for r in out.execute("SELECT kind, path, checksum, last_used_at FROM sources")]
                counts["enrolments"] = out.execute("SELECT COUNT(*) FROM enrolments").fetchone()[0]
            except sqlite3.OperationalError:     # a database from before schema version 3
                sources = []
        finally:
            out.close()
        missing, total = [], 0
        for r in rows:
            files = [Path("photos") / r["sha256"][:2] / f"{r['sha256']}.{r['format']}"]
            if r["work_width"]:
                files.append(Path("work") / r["sha256"][:2] / f"{r['sha256']}.jpg")
            for rel in files:
                source = data / rel
                if not source.is_file():
                    missing.append(str(rel))
                    continue
                target = partial / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
                if rel.parts[0] == "photos" and _sha256(target) != r["sha256"]:
                    raise BackupError(f"{source} does not match its SHA-256 (the file was changed or damaged); "
                                      "the backup was not made")
                total += target.stat().st_size
        if missing:
            raise BackupError(f"{len(missing)} photo file(s) the database refers to are missing from {data}: "
                              + ", ".join(missing[:5]) + (" …" if len(missing) > 5 else ""))
        manifest = {"format": "nabi-serve-backup", "created_at": utc_now(), "from": str(data.resolve()),
                    "nabi_version": __import__("nabi").__version__, "schema_version": version, "counts": counts,
                    "photo_files": len(rows), "bytes": total, "sources": sources}
        atomic_write_json(partial / "backup.json", manifest)
        os.replace(partial, dest)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if log:
        log(f"nabi serve: backed up {data} to {dest}: {counts['individuals']} individuals, {counts['photos']} "
            f"photos ({total / 2**20:.1f} MiB), {counts['sightings']} sightings, schema version {version}")
    return manifest
