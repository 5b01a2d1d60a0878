"""Every SQL statement of ``nabi serve``: small functions over one SQLite connection.

Each function takes the connection first (``store.read()`` for queries, the ``conn`` of a
``with store.write() as conn:`` block for changes) and returns rows (``sqlite3.Row``), ids or
plain values; none of them checks a request or calls a model (``service`` does). Names of
tables and columns: ``storage`` (the schema and its versions).
"""
from __future__ import annotations

import json

from .storage import utc_now

# -- audit ---------------------------------------------------------------------------------------


def audit(conn, event, actor=None, **detail):
    """One row of the change log: what happened (``event``), who (``actor``) and the details as JSON."""
    conn.execute("INSERT INTO audit (at, action, detail, actor) VALUES (?, ?, ?, ?)",
                 (utc_now(), event, json.dumps(detail, ensure_ascii=False, sort_keys=True), actor))


def audit_rows(conn, limit=200, before=None):
    sql, args = "SELECT * FROM audit", []
    if before is not None:
        sql, args = sql + " WHERE id < ?", [int(before)]
    return conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, int(limit))).fetchall()


def counts(conn) -> dict:
    return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("individuals", "photos", "sightings", "decisions", "enrolments", "audit")}


# -- individuals and labels -------------------------------------------------------------------------

def individual(conn, individual_id):
    return conn.execute("SELECT * FROM individuals WHERE id = ?", (int(individual_id),)).fetchone()


def individual_by_name_key(conn, key):
    return conn.execute("SELECT * FROM individuals WHERE name_key = ?", (key,)).fetchone()


def _next_id(conn, table) -> int:
    """A new row id for ``table`` that no row ever had (deleted ids are not given again)."""
    top = conn.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()[0]
    row = conn.execute("SELECT id FROM retired_ids WHERE tbl = ?", (table,)).fetchone()
    return max(top, row["id"] if row else 0) + 1


def _retire(conn, table, row_id):
    conn.execute("INSERT INTO retired_ids (tbl, id) VALUES (?, ?) ON CONFLICT (tbl) DO UPDATE SET "
                 "id = MAX(id, excluded.id)", (table, int(row_id)))


def insert_individual(conn, name, key) -> int:
    return conn.execute("INSERT INTO individuals (id, name, name_key, created_at) VALUES (?, ?, ?, ?)",
                        (_next_id(conn, "individuals"), name, key, utc_now())).lastrowid


def rename_individual(conn, individual_id, name, key):
    conn.execute("UPDATE individuals SET name = ?, name_key = ? WHERE id = ?", (name, key, int(individual_id)))


def delete_individual(conn, individual_id):
    """Remove an individual nothing refers to any more but undone decisions (they keep no individual; the change
    log keeps who it was)."""
    conn.execute("UPDATE decisions SET individual_id = NULL WHERE individual_id = ? AND reverted_at IS NOT NULL",
                 (int(individual_id),))
    conn.execute("DELETE FROM individual_fields WHERE individual_id = ?", (int(individual_id),))
    conn.execute("DELETE FROM labels WHERE individual_id = ?", (int(individual_id),))
    conn.execute("DELETE FROM individuals WHERE id = ?", (int(individual_id),))
    _retire(conn, "individuals", individual_id)


def merge_individual(conn, src, dst) -> int:
    """Point ``src`` at ``dst`` and move its sightings and enrolments there; the number of sightings moved."""
    moved = conn.execute("UPDATE sightings SET individual_id = ? WHERE individual_id = ?", (dst, src)).rowcount
    conn.execute("UPDATE enrolments SET individual_id = ? WHERE individual_id = ?", (dst, src))
    conn.execute("UPDATE individuals SET merged_into = ? WHERE id = ?", (dst, src))
    return moved


def resolve(conn, individual_id):
    """The individual that stands for ``individual_id`` now (following merges); None stays None."""
    seen = set()
    while individual_id is not None and individual_id not in seen:
        seen.add(individual_id)
        row = conn.execute("SELECT merged_into FROM individuals WHERE id = ?", (individual_id,)).fetchone()
        if row is None or row["merged_into"] is None:
            return individual_id
        individual_id = row["merged_into"]
    return individual_id


def names(conn) -> dict:
    """``{id: name}`` of every individual, merged ones included."""
    return {r["id"]: r["name"] for r in conn.execute("SELECT id, name FROM individuals")}


def merge_targets(conn) -> dict:
    """``{id: merged_into}`` of the merged individuals."""
    return {r["id"]: r["merged_into"]
            for r in conn.execute("SELECT id, merged_into FROM individuals WHERE merged_into IS NOT NULL")}


def merged_from(conn, individual_id):
    return conn.execute("SELECT id, name FROM individuals WHERE merged_into = ? ORDER BY id",
                        (int(individual_id),)).fetchall()


def individuals_summary(conn, first_seen_from=None, last_seen_before=None):
    """Active individuals with their sighting count and first/last sighting time, by name; optionally only those
    first seen on or after a date, or last seen before one (never-seen individuals count as not seen)."""
    sql = ("SELECT i.id, i.name, i.created_at, COUNT(s.id) AS sightings, MIN(s.time) AS first_seen, "
           "MAX(s.time) AS last_seen FROM individuals i LEFT JOIN sightings s ON s.individual_id = i.id "
           "WHERE i.merged_into IS NULL GROUP BY i.id")
    having, args = [], []
    if first_seen_from is not None:
        having.append("substr(MIN(s.time), 1, 10) >= ?")
        args.append(first_seen_from)
    if last_seen_before is not None:
        having.append("(MAX(s.time) IS NULL OR substr(MAX(s.time), 1, 10) < ?)")
        args.append(last_seen_before)
    if having:
        sql += " HAVING " + " AND ".join(having)
    return conn.execute(sql + " ORDER BY i.name COLLATE NOCASE, i.id", args).fetchall()


def label_ids(conn) -> dict:
    """``{label: individual id}``: the identifier's own names (classes of a run, names in a built gallery)."""
    return {r["label"]: r["individual_id"] for r in conn.execute("SELECT label, individual_id FROM labels")}


def labels_of(conn, individual_id) -> list:
    return [r["label"] for r in conn.execute("SELECT label FROM labels WHERE individual_id = ? ORDER BY label",
                                             (int(individual_id),))]


def insert_label(conn, label, individual_id):
    conn.execute("INSERT INTO labels (label, individual_id) VALUES (?, ?)", (label, int(individual_id)))


def set_notes(conn, individual_id, notes):
    conn.execute("UPDATE individuals SET notes = ? WHERE id = ?", (notes, int(individual_id)))


def fields_of(conn, individual_id) -> dict:
    return {r["key"]: r["value"] for r in conn.execute(
        "SELECT key, value FROM individual_fields WHERE individual_id = ?", (int(individual_id),))}


def set_field(conn, individual_id, key, value):
    if value is None:
        conn.execute("DELETE FROM individual_fields WHERE individual_id = ? AND key = ?", (int(individual_id), key))
    else:
        conn.execute("INSERT INTO individual_fields (individual_id, key, value, updated_at) VALUES (?, ?, ?, ?) "
                     "ON CONFLICT (individual_id, key) DO UPDATE SET value = excluded.value, "
                     "updated_at = excluded.updated_at", (int(individual_id), key, value, utc_now()))


def latest_sighting_photo(conn, individual_id):
    row = conn.execute("SELECT photo_id FROM sightings WHERE individual_id = ? ORDER BY time DESC, id DESC LIMIT 1",
                       (int(individual_id),)).fetchone()
    return row["photo_id"] if row else None


# -- photos ----------------------------------------------------------------------------------------

def photo(conn, photo_id):
    return conn.execute("SELECT * FROM photos WHERE id = ?", (int(photo_id),)).fetchone()


def photo_by_sha(conn, sha256):
    return conn.execute("SELECT id, uploaded_at FROM photos WHERE sha256 = ?", (sha256,)).fetchone()


def photo_ids_by_sha(conn, shas) -> dict:
    shas = list(shas)
    if not shas:
        return {}
    marks = ",".join("?" * len(shas))
    return {r["sha256"]: r["id"] for r in conn.execute(f"SELECT id, sha256 FROM photos WHERE sha256 IN ({marks})",
                                                       shas)}


PHOTO_COLUMNS = ("sha256", "format", "width", "height", "bytes", "original_name", "uploaded_at", "taken_at",
                 "taken_offset", "latitude", "longitude", "place", "answer", "proposed_label",
                 "proposed_individual_id", "similarity", "margin", "confidence", "result_json", "embedding",
                 "embedding_model", "work_width", "work_height")


def insert_photo(conn, **values) -> int:
    unknown = set(values) - set(PHOTO_COLUMNS)
    if unknown:
        raise ValueError(f"not photo columns: {sorted(unknown)}")
    cols = ["id"] + [c for c in PHOTO_COLUMNS if c in values]
    return conn.execute(f"INSERT INTO photos ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                        [_next_id(conn, "photos")] + [values[c] for c in cols[1:]]).lastrowid


def set_photo_status(conn, photo_id, status, place=None):
    conn.execute("UPDATE photos SET status = ?, place = COALESCE(?, place) WHERE id = ?", (status, place, int(photo_id)))


def delete_photo(conn, photo_id):
    conn.execute("DELETE FROM decisions WHERE photo_id = ?", (int(photo_id),))
    conn.execute("DELETE FROM photos WHERE id = ?", (int(photo_id),))
    _retire(conn, "photos", photo_id)


def review_queue(conn, limit=200):
    """Photos waiting for a decision, least sure answer first (``confidence`` ascending)."""
    return conn.execute("SELECT * FROM photos WHERE status = 'pending' ORDER BY confidence ASC, id ASC LIMIT ?",
                        (int(limit),)).fetchall()


def photos_by_id(conn, ids):
    ids = [int(i) for i in ids]
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    return {r["id"]: r for r in conn.execute(f"SELECT * FROM photos WHERE id IN ({marks})", ids)}


# -- decisions -------------------------------------------------------------------------------------

def decision(conn, decision_id):
    return conn.execute("SELECT * FROM decisions WHERE id = ?", (int(decision_id),)).fetchone()


def decision_by_request(conn, request_id):
    return conn.execute("SELECT * FROM decisions WHERE request_id = ?", (request_id,)).fetchone()


def current_decision(conn, photo_id):
    """The photo's decision in force (the last one not reverted), or None."""
    return conn.execute("SELECT * FROM decisions WHERE photo_id = ? AND reverted_at IS NULL ORDER BY id DESC LIMIT 1",
                        (int(photo_id),)).fetchone()


def current_decisions(conn, photo_ids) -> dict:
    ids = [int(i) for i in photo_ids]
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    out = {}
    for r in conn.execute(f"SELECT * FROM decisions WHERE reverted_at IS NULL AND photo_id IN ({marks}) "
                          "ORDER BY id", ids):
        out[r["photo_id"]] = r
    return out


def insert_decision(conn, photo_id, action, individual_id, request_id=None, actor=None) -> int:
    return conn.execute("INSERT INTO decisions (photo_id, action, individual_id, created_at, request_id, actor) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (int(photo_id), action, individual_id, utc_now(), request_id, actor)).lastrowid


def revert_decision(conn, decision_id):
    conn.execute("UPDATE decisions SET reverted_at = ? WHERE id = ?", (utc_now(), int(decision_id)))


# -- sightings -------------------------------------------------------------------------------------

def sighting_of_photo(conn, photo_id):
    return conn.execute("SELECT * FROM sightings WHERE photo_id = ?", (int(photo_id),)).fetchone()


def sighting_ids_of_photos(conn, photo_ids) -> dict:
    ids = [int(i) for i in photo_ids]
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    return {r["photo_id"]: r["id"] for r in conn.execute(
        f"SELECT id, photo_id FROM sightings WHERE photo_id IN ({marks})", ids)}


def insert_sighting(conn, photo_id, individual_id, time, time_source, latitude, longitude, place) -> int:
    return conn.execute("INSERT INTO sightings (photo_id, individual_id, time, time_source, latitude, longitude, "
                        "place, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (int(photo_id), int(individual_id), time, time_source, latitude, longitude, place,
                         utc_now())).lastrowid


def delete_sighting(conn, photo_id):
    conn.execute("DELETE FROM sightings WHERE photo_id = ?", (int(photo_id),))


def count_sightings(conn, individual_id) -> int:
    return conn.execute("SELECT COUNT(*) FROM sightings WHERE individual_id = ?", (int(individual_id),)).fetchone()[0]


def sightings(conn, individual_id=None, date_from=None, date_to=None, with_gps=False):
    """Sightings with their individual's name and the photo's hash and file name, newest first."""
    where, args = [], []
    if individual_id is not None:
        where.append("s.individual_id = ?")
        args.append(int(individual_id))
    if date_from:
        where.append("substr(s.time, 1, 10) >= ?")
        args.append(date_from)
    if date_to:
        where.append("substr(s.time, 1, 10) <= ?")
        args.append(date_to)
    if with_gps:
        where.append("s.latitude IS NOT NULL AND s.longitude IS NOT NULL")
    sql = ("SELECT s.id, s.photo_id, s.individual_id, i.name, s.time, s.time_source, s.latitude, s.longitude, "
           "s.place, s.created_at, p.sha256, p.original_name, p.taken_offset FROM sightings s "
           "JOIN individuals i ON i.id = s.individual_id JOIN photos p ON p.id = s.photo_id")
    if where:
        sql += " WHERE " + " AND ".join(where)
    return conn.execute(sql + " ORDER BY s.time DESC, s.id DESC", args).fetchall()


# -- enrolments (this server's additions to the re-identification search) ---------------------------------

def enrolment_of_photo(conn, photo_id):
    return conn.execute("SELECT * FROM enrolments WHERE photo_id = ?", (int(photo_id),)).fetchone()


def insert_enrolment(conn, photo_id, individual_id, model_sha256, embedding: bytes) -> int:
    return conn.execute("INSERT INTO enrolments (photo_id, individual_id, model_sha256, embedding, created_at) "
                        "VALUES (?, ?, ?, ?, ?)", (int(photo_id), int(individual_id), model_sha256, embedding,
                                                   utc_now())).lastrowid


def delete_enrolment(conn, photo_id):
    conn.execute("DELETE FROM enrolments WHERE photo_id = ?", (int(photo_id),))


def enrolments(conn):
    """Every enrolment with its photo's hash and format (to find the photo file)."""
    return conn.execute("SELECT e.photo_id, e.individual_id, e.model_sha256, e.embedding, p.sha256, p.format, "
                        "p.work_width FROM enrolments e JOIN photos p ON p.id = e.photo_id ORDER BY e.id").fetchall()


def update_enrolment_embedding(conn, photo_id, model_sha256, embedding: bytes):
    conn.execute("UPDATE enrolments SET model_sha256 = ?, embedding = ? WHERE photo_id = ?",
                 (model_sha256, embedding, int(photo_id)))


# -- sources (what the server identified with) --------------------------------------------------------------

def record_source(conn, kind, path, checksum):
    """Note that ``kind`` at ``path`` with this checksum serves now; returns the source used last before, or None."""
    last = conn.execute("SELECT * FROM sources WHERE kind = ? ORDER BY last_used_at DESC, id DESC LIMIT 1",
                        (kind,)).fetchone()
    now = utc_now()
    conn.execute("INSERT INTO sources (kind, path, checksum, first_used_at, last_used_at) VALUES (?, ?, ?, ?, ?) "
                 "ON CONFLICT (kind, checksum) DO UPDATE SET last_used_at = excluded.last_used_at, "
                 "path = excluded.path", (kind, str(path), checksum, now, now))
    return last
