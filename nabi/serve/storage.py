"""The data folder of ``nabi serve``: one SQLite database and the photos, stored by content hash.

Layout::

    DATA/
        nabi.sqlite3        individuals, labels, photos (with the embedding identify made), sightings,
                            decisions, enrolments (the photos this server added to the search), the change
                            log, the sources served (WAL mode)
        photos/ab/abcdef….jpg   each photo once, named by the SHA-256 of its bytes
        work/ab/abcdef….jpg     the working copy of a photo above images.WORK_PIXELS
        cache/              thumbnails and heat-maps (can be deleted at any time)
        .lock               held while a server uses the folder

The folder is the whole state the server changes (a gallery it serves is only read). A backup:
``nabi serve --data DATA --backup DEST`` (``backup``), also while a server runs. The schema
version is SQLite's ``user_version``; opening an older database migrates it forward step by
step, each step in one transaction; a database newer than this nabi is refused.

Writes go through ``Store.write()``: one writer at a time (a process-wide lock, then
``BEGIN IMMEDIATE``), committed with ``synchronous=FULL`` so that an acknowledged change
survives the process being killed. Reads use one connection per thread and see the last
committed state (WAL readers never block the writer).
"""
from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path

from ..files import atomic_write_bytes

DB_NAME = "nabi.sqlite3"

_V1 = """
CREATE TABLE individuals (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL UNIQUE,          -- the name folded for comparison (NFC, case-folded)
    merged_into INTEGER REFERENCES individuals(id),
    created_at TEXT NOT NULL
);
CREATE TABLE labels (                      -- the identifier's name for an individual
    label TEXT PRIMARY KEY,
    individual_id INTEGER NOT NULL REFERENCES individuals(id)
);
CREATE TABLE photos (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    format TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    original_name TEXT,                     -- shown to people only, never used as a path
    uploaded_at TEXT NOT NULL,
    taken_at TEXT,
    latitude REAL,
    longitude REAL,
    place TEXT,
    status TEXT NOT NULL DEFAULT 'pending', -- pending | decided
    answer TEXT,                            -- background | known | unknown
    proposed_label TEXT,
    similarity REAL,
    margin REAL,
    result_json TEXT
);
CREATE TABLE sightings (
    id INTEGER PRIMARY KEY,
    photo_id INTEGER NOT NULL UNIQUE REFERENCES photos(id),
    individual_id INTEGER NOT NULL REFERENCES individuals(id),
    time TEXT NOT NULL,
    time_source TEXT NOT NULL,              -- exif | upload
    latitude REAL,
    longitude REAL,
    place TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE decisions (
    id INTEGER PRIMARY KEY,
    photo_id INTEGER NOT NULL REFERENCES photos(id),
    action TEXT NOT NULL,
    individual_id INTEGER REFERENCES individuals(id),
    created_at TEXT NOT NULL
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL                    -- JSON
);
"""

# Version 2: a client-chosen request id makes a retried decision land once; indexes for the
# review queue (least confident first) and the sightings filters.
_V2 = """
ALTER TABLE decisions ADD COLUMN request_id TEXT;
CREATE UNIQUE INDEX decisions_request_id ON decisions(request_id) WHERE request_id IS NOT NULL;
CREATE INDEX photos_queue ON photos(status, similarity);
CREATE INDEX sightings_individual_time ON sightings(individual_id, time);
"""

# Version 3: identity by id and one folder that owns the state.
# - An answer keeps the id of the individual it proposes (``proposed_individual_id``), never a name:
#   rename and merge cannot break a waiting card or refile a photo.
# - The identify request's embedding is kept with the photo (``embedding``, float32 bytes, and the SHA-256
#   of the weights that made it), so a decision enrols it without decoding or embedding the photo again.
# - ``enrolments``: the photos this server added to the re-identification search, with their embeddings;
#   the built gallery it started from is never written (``sources`` records its checksum).
# - Decisions can be reverted (``reverted_at``); changes record who made them (``actor``). A deleted photo's or
#   individual's id is never given again (``retired_ids``): a page still showing it cannot act on another.
# - Individuals get free notes and the club's own fields (``individual_fields``).
# - ``confidence`` (0: unsure … 1: sure) orders the review queue; ``work_*``: the downscaled working copy
#   of a photo above the working size (the original is kept).
_V3 = """
ALTER TABLE photos ADD COLUMN proposed_individual_id INTEGER REFERENCES individuals(id);
ALTER TABLE photos ADD COLUMN confidence REAL;
ALTER TABLE photos ADD COLUMN embedding BLOB;
ALTER TABLE photos ADD COLUMN embedding_model TEXT;
ALTER TABLE photos ADD COLUMN taken_offset TEXT;
ALTER TABLE photos ADD COLUMN work_width INTEGER;
ALTER TABLE photos ADD COLUMN work_height INTEGER;
UPDATE photos SET proposed_individual_id = (SELECT individual_id FROM labels WHERE labels.label = photos.proposed_label),
                  confidence = margin;
CREATE INDEX photos_review ON photos(status, confidence);
ALTER TABLE individuals ADD COLUMN notes TEXT NOT NULL DEFAULT '';
CREATE TABLE individual_fields (
    individual_id INTEGER NOT NULL REFERENCES individuals(id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (individual_id, key)
);
CREATE TABLE enrolments (
    id INTEGER PRIMARY KEY,
    photo_id INTEGER NOT NULL UNIQUE REFERENCES photos(id),
    individual_id INTEGER NOT NULL REFERENCES individuals(id),
    model_sha256 TEXT NOT NULL,
    embedding BLOB NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE sources (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,                     -- classifier | gallery
    path TEXT NOT NULL,
    checksum TEXT NOT NULL,                 -- SHA-256 of the gallery's index.json or of the run's weights
    first_used_at TEXT NOT NULL,
    last_used_at TEXT NOT NULL,
    UNIQUE (kind, checksum)
);
ALTER TABLE decisions ADD COLUMN reverted_at TEXT;
ALTER TABLE decisions ADD COLUMN actor TEXT;
ALTER TABLE audit ADD COLUMN actor TEXT;
CREATE TABLE retired_ids (                -- the highest id ever deleted per table: ids are never used twice
    tbl TEXT PRIMARY KEY,
    id INTEGER NOT NULL
);
CREATE INDEX decisions_photo ON decisions(photo_id, id);
CREATE INDEX sightings_time ON sightings(time);
"""

MIGRATIONS = [_V1, _V2, _V3]     # MIGRATIONS[k] takes the schema from version k to k + 1
SCHEMA_VERSION = len(MIGRATIONS)


def utc_now() -> str:
    """The current UTC time as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class StoreError(RuntimeError):
    """The data folder cannot be used (newer schema, held by another server, not writable)."""


def _connect(path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION, db_name="the database") -> int:
    """Bring the schema of ``conn`` forward to ``target``, one transaction per step; returns the old version."""
    old = conn.execute("PRAGMA user_version").fetchone()[0]
    if old > SCHEMA_VERSION:
        raise StoreError(f"{db_name} has schema version {old}, newer than this nabi understands "
                         f"({SCHEMA_VERSION}); upgrade nabi to open it")
    for version in range(old, target):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return old


class Store:
    """The data folder: ``Store(path)`` creates or opens it (and migrates its schema forward)."""

    def __init__(self, root, lock=True):
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "photos").mkdir(exist_ok=True)
            (self.root / "cache").mkdir(exist_ok=True)
        except OSError as e:
            raise StoreError(f"data folder {self.root} cannot be created or written: {e}") from None
        self._lock_file = self._take_folder_lock() if lock else None
        self.db_path = self.root / DB_NAME
        self._writer = threading.Lock()
        self._local = threading.local()
        self._all = []
        self._all_lock = threading.Lock()
        conn = self._conn()
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"{self.db_path}: SQLite refused WAL mode (journal_mode is {mode})")
        with self._writer:
            self.migrated_from = migrate(conn, db_name=str(self.db_path))

    def _take_folder_lock(self):
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no cross-process guard
            return None
        f = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise StoreError(f"data folder {self.root} is in use by another nabi serve; "
                             f"stop it or give another --data folder") from None
        return f

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.db_path)
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def read(self) -> sqlite3.Connection:
        """This thread's connection, for queries (autocommit: each query sees the last commit)."""
        return self._conn()

    @contextlib.contextmanager
    def write(self):
        """``with store.write() as conn:`` one transaction, the only writer while it lasts."""
        conn = self._conn()
        with self._writer:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @property
    def schema_version(self) -> int:
        return self.read().execute("PRAGMA user_version").fetchone()[0]

    def close(self):
        with self._all_lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()
        self._local = threading.local()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # -- photos ----------------------------------------------------------------------------
    def photo_path(self, sha256: str, ext: str) -> Path:
        """Where the photo with this hash lives; ``sha256`` must be 64 hex digits (it never comes from a client)."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        if ext not in ("jpg", "png", "webp"):
            raise ValueError(f"unexpected photo extension {ext!r}")
        return self.root / "photos" / sha256[:2] / f"{sha256}.{ext}"

    def put_photo(self, data: bytes, ext: str) -> tuple[str, Path]:
        """Store ``data`` once under its hash (atomically); ``(sha256, path)``."""
        sha = hashlib.sha256(data).hexdigest()
        path = self.photo_path(sha, ext)
        if not path.is_file():
            path.parent.mkdir(exist_ok=True)
            atomic_write_bytes(path, data)
        return sha, path

    def work_path(self, sha256: str) -> Path:
        """Where the working copy (JPEG) of a very large photo lives."""
        self.photo_path(sha256, "jpg")                     # the same check of the hash
        return self.root / "work" / sha256[:2] / f"{sha256}.jpg"

    def put_work_copy(self, sha256: str, data: bytes) -> Path:
        """Store the working copy of the photo ``sha256`` (atomically); its path."""
        path = self.work_path(sha256)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)
        return path

    def remove_photo_files(self, sha256: str, ext: str):
        """Delete a photo's file, its working copy and what the cache holds of it."""
        self.photo_path(sha256, ext).unlink(missing_ok=True)
        self.work_path(sha256).unlink(missing_ok=True)
        for cached in (self.root / "cache").glob(f"*-{sha256}*"):
            cached.unlink(missing_ok=True)

    def cache_path(self, key: str, suffix: str) -> Path:
        return self.root / "cache" / f"{key}{suffix}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

