"""What ``nabi serve`` does, without HTTP: identify photos, record decisions, rename, merge, list sightings.

Concurrency: every database change runs in ``Store.write()`` (one writer at a time); every
call into the identifier runs under ``model_lock`` (nabi models keep per-call caches, so one
inference at a time: requests queue on the lock). A decision takes the writer first and the
model lock inside it (to enrol the photo in a gallery before the transaction commits);
identification takes only the model lock, so the two orders never cross.

Individuals and labels: the identifier has its own name for each individual (a class of a
classifier run, a name in a gallery): its *label*. The database maps labels to individuals,
so renaming an individual of a classifier run changes the name people see while the run keeps
its class, and merging two individuals points both labels at one.
"""
from __future__ import annotations

import csv
import io
import json
import re
import threading
from pathlib import Path

from .identifiers import EnrolRefused, Identifier
from .storage import Store, sha256_hex, utc_now
from .uploads import UploadRefused, check_photo, clean_name, clean_place, display_name, name_key

ACTIONS = ("confirm", "other", "new", "not_identifiable", "background")


class Refused(ValueError):
    """A request that is understood but not done; ``status`` is the HTTP status to answer with."""

    def __init__(self, message, status=400, **extra):
        super().__init__(message)
        self.status = status
        self.extra = extra


def _audit(conn, event, **detail):
    """One row of the audit log: what happened (``event``) and its details as JSON."""
    conn.execute("INSERT INTO audit (at, action, detail) VALUES (?, ?, ?)",
                 (utc_now(), event, json.dumps(detail, ensure_ascii=False, sort_keys=True)))


def _date(value, what):
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise Refused(f"{what} must be a date written YYYY-MM-DD, got {value!r}", 400)
    return value


class Service:
    """The app's operations over a ``Store`` and an ``Identifier``."""

    def __init__(self, store: Store, identifier: Identifier, max_bytes=20 * 2**20, max_pixels=40_000_000,
                 topk=5):
        self.store, self.identifier = store, identifier
        self.max_bytes, self.max_pixels, self.topk = int(max_bytes), int(max_pixels), int(topk)
        self.model_lock = threading.Lock()
        self._external_photos = {}          # key -> path of a gallery photo outside the data folder
        self._external_lock = threading.Lock()
        self.sync_labels()

    # -- individuals and labels ---------------------------------------------------------------
    def sync_labels(self):
        """Give every name the identifier knows an individual (created on first sight, audited)."""
        with self.model_lock:
            labels = self.identifier.names()
        with self.store.write() as conn:
            for label in labels:
                if conn.execute("SELECT 1 FROM labels WHERE label = ?", (label,)).fetchone():
                    continue
                row = conn.execute("SELECT id FROM individuals WHERE name_key = ?", (name_key(label),)).fetchone()
                if row is None:
                    ind = conn.execute("INSERT INTO individuals (name, name_key, created_at) VALUES (?, ?, ?)",
                                       (label, name_key(label), utc_now())).lastrowid
                    _audit(conn, "individual.created", individual_id=ind, name=label, source=self.identifier.kind)
                else:
                    ind = row["id"]
                conn.execute("INSERT INTO labels (label, individual_id) VALUES (?, ?)", (label, ind))

    @staticmethod
    def _resolve(conn, individual_id):
        """Follow merges to the individual that stands for ``individual_id`` now."""
        seen = set()
        while individual_id is not None and individual_id not in seen:
            seen.add(individual_id)
            row = conn.execute("SELECT merged_into FROM individuals WHERE id = ?", (individual_id,)).fetchone()
            if row is None or row["merged_into"] is None:
                return individual_id
            individual_id = row["merged_into"]
        return individual_id

    def _individual_for_label(self, conn, label):
        row = conn.execute("SELECT individual_id FROM labels WHERE label = ?", (label,)).fetchone()
        if row is None:
            return None
        ind = self._resolve(conn, row["individual_id"])
        return conn.execute("SELECT id, name FROM individuals WHERE id = ?", (ind,)).fetchone()

    def _label_of(self, conn, individual_id):
        rows = conn.execute("SELECT label FROM labels WHERE individual_id = ? ORDER BY label",
                            (individual_id,)).fetchall()
        return [r["label"] for r in rows]

    def _active_individual(self, conn, individual_id, what="individual"):
        try:
            individual_id = int(individual_id)
        except (TypeError, ValueError):
            raise Refused(f"{what} must be an individual's id (a whole number), got {individual_id!r}", 400) from None
        row = conn.execute("SELECT * FROM individuals WHERE id = ?", (individual_id,)).fetchone()
        if row is None:
            raise Refused(f"there is no individual #{individual_id}", 404)
        if row["merged_into"] is not None:
            dst = self._resolve(conn, individual_id)
            raise Refused(f"individual #{individual_id} ({row['name']}) was merged into #{dst}", 409)
        return row

    def _check_new_name(self, conn, name, exclude_id=None):
        try:
            name = clean_name(name)
        except ValueError as e:
            raise Refused(str(e), 422) from None
        row = conn.execute("SELECT id, name, merged_into FROM individuals WHERE name_key = ?",
                           (name_key(name),)).fetchone()
        if row is not None and row["id"] != exclude_id:
            extra = f" (merged into #{self._resolve(conn, row['id'])})" if row["merged_into"] is not None else ""
            raise Refused(f"the name {name!r} is already taken by individual #{row['id']} {row['name']!r}{extra}",
                          409)
        return name

    # -- photos -------------------------------------------------------------------------------
    def photo_url(self, photo_id):
        return f"/api/photos/{int(photo_id)}/image"

    def _candidate_photo(self, conn, individual_id, photo):
        """A photo id (in the data folder) or an external key for a candidate's closest gallery photo."""
        if photo:
            p = Path(photo)
            stem = p.stem
            if re.fullmatch(r"[0-9a-f]{64}", stem):
                row = conn.execute("SELECT id FROM photos WHERE sha256 = ?", (stem,)).fetchone()
                if row is not None:
                    return self.photo_url(row["id"])
            import hashlib
            key = hashlib.sha256(str(p).encode("utf-8", "surrogatepass")).hexdigest()[:32]
            with self._external_lock:
                self._external_photos[key] = p
            return f"/api/gallery-photos/{key}"
        if individual_id is None:
            return None
        row = conn.execute("SELECT photo_id FROM sightings WHERE individual_id = ? ORDER BY time DESC, id DESC "
                           "LIMIT 1", (individual_id,)).fetchone()
        return self.photo_url(row["photo_id"]) if row else None

    def external_photo(self, key):
        """The path of a gallery photo an answer pointed to (only those; never a client's path)."""
        with self._external_lock:
            return self._external_photos.get(key)

    def _enrich(self, conn, raw):
        """The identifier's answer with labels turned into today's individuals (ids, names, photos)."""
        out = {"answer": raw["answer"], "similarity": raw["similarity"], "margin": raw["margin"],
               "label": raw.get("name"), "name": None, "individual_id": None, "candidates": []}
        if raw.get("name") is not None and raw["answer"] != "background":
            ind = self._individual_for_label(conn, raw["name"])
            if ind is not None:
                out["name"], out["individual_id"] = ind["name"], ind["id"]
            else:
                out["name"] = raw["name"]
        seen = set()
        for c in raw["candidates"]:
            ind = self._individual_for_label(conn, c["name"])
            ind_id = ind["id"] if ind is not None else None
            key = ind_id if ind_id is not None else ("label", c["name"])
            if key in seen:          # two labels of one individual after a merge: keep the better
                continue
            seen.add(key)
            out["candidates"].append({"name": ind["name"] if ind is not None else c["name"], "individual_id": ind_id,
                                      "similarity": c["similarity"],
                                      "photo_url": self._candidate_photo(conn, ind_id, c.get("photo"))})
        return out

    def _photo_dict(self, conn, row):
        d = {k: row[k] for k in ("id", "sha256", "width", "height", "bytes", "original_name", "uploaded_at",
                                 "taken_at", "latitude", "longitude", "place", "status")}
        d["url"] = self.photo_url(row["id"])
        d["heatmap_url"] = f"/api/photos/{row['id']}/heatmap" if getattr(self.identifier, "has_heatmap", False) \
            else None
        d["result"] = self._enrich(conn, json.loads(row["result_json"])) if row["result_json"] else None
        dec = conn.execute("SELECT action, individual_id, created_at FROM decisions WHERE photo_id = ? "
                           "ORDER BY id DESC LIMIT 1", (row["id"],)).fetchone()
        if dec is not None:
            ind = None
            if dec["individual_id"] is not None:
                ind = conn.execute("SELECT id, name FROM individuals WHERE id = ?",
                                   (self._resolve(conn, dec["individual_id"]),)).fetchone()
            d["decision"] = {"action": dec["action"], "at": dec["created_at"],
                             "individual_id": ind["id"] if ind else None, "name": ind["name"] if ind else None}
        else:
            d["decision"] = None
        return d

    def photo(self, photo_id):
        conn = self.store.read()
        row = conn.execute("SELECT * FROM photos WHERE id = ?", (int(photo_id),)).fetchone()
        if row is None:
            raise Refused(f"there is no photo #{photo_id}", 404)
        return self._photo_dict(conn, row)

    def photo_file(self, photo_id):
        """``(path, media type)`` of a stored photo: the path comes from its hash in the database."""
        from .uploads import MEDIA_TYPES
        row = self.store.read().execute("SELECT sha256, format FROM photos WHERE id = ?", (int(photo_id),)).fetchone()
        if row is None:
            raise Refused(f"there is no photo #{photo_id}", 404)
        return self.store.photo_path(row["sha256"], row["format"]), MEDIA_TYPES[row["format"]]

    def heatmap(self, photo_id):
        """PNG bytes of the photo's heat-map (cached in the data folder)."""
        path, _ = self.photo_file(photo_id)
        served = sha256_hex(str(getattr(self.identifier, "source", "")).encode("utf-8", "surrogatepass"))[:12]
        cached = self.store.cache_path(f"heatmap-{path.stem}-{served}", ".png")   # per photo and per run served
        if cached.is_file():
            return cached.read_bytes()
        with self.model_lock:
            png = self.identifier.heatmap(path)
        if png is None:
            raise Refused(f"this {self.identifier.kind} gives no heat-map", 404)
        from ..files import atomic_write_bytes
        atomic_write_bytes(cached, png)
        return png

    # -- identify -----------------------------------------------------------------------------
    def identify(self, uploads, place=None):
        """``uploads``: [(file name as the client gave it, bytes)]. Returns one dict per upload, in order:
        ``{"ok": True, "photo": {...}}`` or ``{"ok": False, "file", "error", "status"}``."""
        try:
            place = clean_place(place)
        except ValueError as e:
            raise Refused(str(e), 422) from None
        results, accepted, seen = [], [], {}
        for i, (filename, data) in enumerate(uploads):
            shown = display_name(filename) or f"upload {i + 1}"
            try:
                photo = check_photo(data, self.max_bytes, self.max_pixels, label=shown)
            except UploadRefused as e:
                results.append({"ok": False, "file": shown, "error": str(e), "status": e.status})
                continue
            sha = sha256_hex(photo.data)
            old = self.store.read().execute("SELECT id, uploaded_at FROM photos WHERE sha256 = ?", (sha,)).fetchone()
            if old is not None:
                results.append({"ok": False, "file": shown, "status": 409, "photo_id": old["id"],
                                "error": f"{shown} was already uploaded (photo #{old['id']}, {old['uploaded_at']})"})
                continue
            if sha in seen:
                results.append({"ok": False, "file": shown, "status": 409,
                                "error": f"{shown} is the same photo as {seen[sha]} in this upload"})
                continue
            seen[sha] = shown
            _, path = self.store.put_photo(photo.data, photo.ext)
            results.append(None)
            accepted.append((i, shown, photo, sha, path))
        if accepted:
            try:
                with self.model_lock:
                    answers = self.identifier.identify([a[4] for a in accepted], topk=self.topk)
            except Exception as e:      # the photos stay stored by hash; nothing enters the database
                for i, shown, *_ in accepted:
                    results[i] = {"ok": False, "file": shown, "status": 500,
                                  "error": f"{shown} could not be identified: {type(e).__name__}: {e}"}
                return results
            now = utc_now()
            for (i, shown, photo, sha, path), raw in zip(accepted, answers):
                raw = {"answer": raw["answer"], "name": raw.get("name"), "similarity": float(raw["similarity"]),
                       "margin": float(raw["margin"]), "candidates": raw["candidates"]}
                try:
                    with self.store.write() as conn:
                        old = conn.execute("SELECT id, uploaded_at FROM photos WHERE sha256 = ?", (sha,)).fetchone()
                        if old is not None:
                            raise Refused(f"{shown} was already uploaded (photo #{old['id']}, {old['uploaded_at']})",
                                          409, photo_id=old["id"])
                        pid = conn.execute(
                            "INSERT INTO photos (sha256, format, width, height, bytes, original_name, uploaded_at, "
                            "taken_at, latitude, longitude, place, status, answer, proposed_label, similarity, "
                            "margin, result_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
                            (sha, photo.ext, photo.width, photo.height, len(photo.data), shown, now, photo.taken_at,
                             photo.latitude, photo.longitude, place, raw["answer"], raw["name"], raw["similarity"],
                             raw["margin"], json.dumps(raw, ensure_ascii=False))).lastrowid
                    results[i] = {"ok": True, "photo": self._photo_dict(self.store.read(), self.store.read().execute(
                        "SELECT * FROM photos WHERE id = ?", (pid,)).fetchone())}
                except Refused as e:
                    results[i] = {"ok": False, "file": shown, "error": str(e), "status": e.status, **e.extra}
        return results

    # -- decisions ----------------------------------------------------------------------------
    def decide(self, photo_id, action, individual_id=None, name=None, place=None, request_id=None):
        """Record a person's decision on a photo; identified photos become sightings (and join a gallery)."""
        if action not in ACTIONS:
            raise Refused(f"action must be one of {', '.join(ACTIONS)}; got {action!r}", 422)
        if request_id is not None and (not isinstance(request_id, str) or not 1 <= len(request_id) <= 100):
            raise Refused("request_id must be text of 1 to 100 characters", 422)
        try:
            place = clean_place(place)
        except ValueError as e:
            raise Refused(str(e), 422) from None
        try:
            photo_id = int(photo_id)
        except (TypeError, ValueError):
            raise Refused(f"photo_id must be a whole number, got {photo_id!r}", 422) from None
        with self.store.write() as conn:
            if request_id is not None:
                done = conn.execute("SELECT photo_id FROM decisions WHERE request_id = ?", (request_id,)).fetchone()
                if done is not None:      # a retry of a decision already recorded
                    return self._decision_result(conn, done["photo_id"], repeated=True)
            photo = conn.execute("SELECT * FROM photos WHERE id = ?", (photo_id,)).fetchone()
            if photo is None:
                raise Refused(f"there is no photo #{photo_id}", 404)
            if photo["status"] != "pending":
                last = conn.execute("SELECT action, created_at FROM decisions WHERE photo_id = ? ORDER BY id DESC",
                                    (photo_id,)).fetchone()
                raise Refused(f"photo #{photo_id} was already decided ({last['action']}, {last['created_at']}); "
                              f"rename or merge individuals to correct a name", 409)
            target, new_label = None, None
            if action == "confirm":
                if photo["answer"] == "background":
                    action = "background"
                else:
                    if photo["proposed_label"] is None:
                        raise Refused(f"photo #{photo_id} has no proposed individual to confirm", 409)
                    ind = self._individual_for_label(conn, photo["proposed_label"])
                    if ind is None:
                        raise Refused(f"the proposed individual {photo['proposed_label']!r} is not known here", 409)
                    target = ind["id"]
            elif action == "other":
                if individual_id is None:
                    raise Refused("'other' needs individual_id: pick an individual from the list", 422)
                target = self._active_individual(conn, individual_id)["id"]
            elif action == "new":
                if not self.identifier.can_enrol_new():
                    raise Refused(f"a new individual cannot be added to a {self.identifier.kind}: it knows only the "
                                  f"individuals it was trained on; serve a re-identification gallery to enrol new "
                                  f"individuals", 409)
                if name is None:
                    raise Refused("'new' needs a name for the new individual", 422)
                new_label = self._check_new_name(conn, name)
                target = conn.execute("INSERT INTO individuals (name, name_key, created_at) VALUES (?, ?, ?)",
                                      (new_label, name_key(new_label), utc_now())).lastrowid
                conn.execute("INSERT INTO labels (label, individual_id) VALUES (?, ?)", (new_label, target))
                _audit(conn, "individual.created", individual_id=target, name=new_label, photo_id=photo_id)
            now = utc_now()
            conn.execute("INSERT INTO decisions (photo_id, action, individual_id, created_at, request_id) "
                         "VALUES (?, ?, ?, ?, ?)", (photo_id, action, target, now, request_id))
            conn.execute("UPDATE photos SET status = 'decided', place = COALESCE(?, place) WHERE id = ?",
                         (place, photo_id))
            if target is not None:
                if photo["taken_at"]:
                    time, source = photo["taken_at"], "exif"
                else:
                    time, source = photo["uploaded_at"], "upload"
                conn.execute("INSERT INTO sightings (photo_id, individual_id, time, time_source, latitude, longitude, "
                             "place, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (photo_id, target, time, source, photo["latitude"], photo["longitude"],
                              place or photo["place"], now))
                label = new_label or self._label_of(conn, target)[0]
                path = self.store.photo_path(photo["sha256"], photo["format"])
                with self.model_lock:
                    try:
                        self.identifier.enrol(label, [path])
                    except EnrolRefused as e:
                        raise Refused(str(e), 409) from None
            _audit(conn, "decision", photo_id=photo_id, action=action, individual_id=target)
            return self._decision_result(conn, photo_id)

    def _decision_result(self, conn, photo_id, repeated=False):
        row = conn.execute("SELECT * FROM photos WHERE id = ?", (photo_id,)).fetchone()
        out = {"photo": self._photo_dict(conn, row), "repeated": repeated}
        s = conn.execute("SELECT id FROM sightings WHERE photo_id = ?", (photo_id,)).fetchone()
        out["sighting_id"] = s["id"] if s else None
        return out

    def delete_photo(self, photo_id):
        """Remove a photo that is not a sighting (waiting, not identifiable, background) and its file."""
        with self.store.write() as conn:
            row = conn.execute("SELECT * FROM photos WHERE id = ?", (int(photo_id),)).fetchone()
            if row is None:
                raise Refused(f"there is no photo #{photo_id}", 404)
            if conn.execute("SELECT 1 FROM sightings WHERE photo_id = ?", (row["id"],)).fetchone():
                raise Refused(f"photo #{row['id']} is a sighting; sightings are kept", 409)
            conn.execute("DELETE FROM decisions WHERE photo_id = ?", (row["id"],))
            conn.execute("DELETE FROM photos WHERE id = ?", (row["id"],))
            _audit(conn, "photo.deleted", photo_id=row["id"], sha256=row["sha256"])
        path = self.store.photo_path(row["sha256"], row["format"])
        path.unlink(missing_ok=True)
        return {"deleted": row["id"]}

    # -- rename and merge ---------------------------------------------------------------------
    def rename(self, individual_id, new_name):
        with self.store.write() as conn:
            ind = self._active_individual(conn, individual_id)
            new_name = self._check_new_name(conn, new_name, exclude_id=ind["id"])
            if new_name == ind["name"]:
                raise Refused(f"individual #{ind['id']} is already called {new_name!r}", 409)
            conn.execute("UPDATE individuals SET name = ?, name_key = ? WHERE id = ?",
                         (new_name, name_key(new_name), ind["id"]))
            if self.identifier.renames_itself:
                for label in self._label_of(conn, ind["id"]):
                    with self.model_lock:
                        try:
                            self.identifier.rename(label, new_name)
                        except EnrolRefused as e:
                            raise Refused(str(e), 409) from None
                    conn.execute("UPDATE labels SET label = ? WHERE label = ?", (new_name, label))
            _audit(conn, "individual.renamed", individual_id=ind["id"], old=ind["name"], new=new_name)
        return self.individual(ind["id"])

    def merge(self, src_id, dst_id):
        """Merge individual ``src`` into ``dst`` (two names that turned out to be one animal)."""
        with self.store.write() as conn:
            src = self._active_individual(conn, src_id, "source")
            dst = self._active_individual(conn, dst_id, "target")
            if src["id"] == dst["id"]:
                raise Refused("an individual cannot be merged into itself", 409)
            moved = conn.execute("UPDATE sightings SET individual_id = ? WHERE individual_id = ?",
                                 (dst["id"], src["id"])).rowcount
            conn.execute("UPDATE individuals SET merged_into = ? WHERE id = ?", (dst["id"], src["id"]))
            if self.identifier.renames_itself:
                dst_label = self._label_of(conn, dst["id"])[0]
                for label in self._label_of(conn, src["id"]):
                    with self.model_lock:
                        try:
                            self.identifier.merge(label, dst_label)
                        except EnrolRefused as e:
                            raise Refused(str(e), 409) from None
                    conn.execute("DELETE FROM labels WHERE label = ?", (label,))
            else:
                conn.execute("UPDATE labels SET individual_id = ? WHERE individual_id = ?", (dst["id"], src["id"]))
            _audit(conn, "individual.merged", source_id=src["id"], source=src["name"], target_id=dst["id"],
                   target=dst["name"], sightings_moved=moved)
        return self.individual(dst["id"])

    # -- reading ------------------------------------------------------------------------------
    def individuals(self):
        conn = self.store.read()
        rows = conn.execute(
            "SELECT i.id, i.name, i.created_at, COUNT(s.id) AS sightings, MIN(s.time) AS first_seen, "
            "MAX(s.time) AS last_seen FROM individuals i LEFT JOIN sightings s ON s.individual_id = i.id "
            "WHERE i.merged_into IS NULL GROUP BY i.id ORDER BY i.name COLLATE NOCASE").fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["labels"] = self._label_of(conn, r["id"])
            d["photo_url"] = self._candidate_photo(conn, r["id"], None)
            out.append(d)
        return out

    def individual(self, individual_id):
        conn = self.store.read()
        try:
            individual_id = int(individual_id)
        except (TypeError, ValueError):
            raise Refused(f"not an individual id: {individual_id!r}", 404) from None
        row = conn.execute("SELECT * FROM individuals WHERE id = ?", (individual_id,)).fetchone()
        if row is None:
            raise Refused(f"there is no individual #{individual_id}", 404)
        d = {"id": row["id"], "name": row["name"], "created_at": row["created_at"],
             "merged_into": self._resolve(conn, row["id"]) if row["merged_into"] is not None else None,
             "labels": self._label_of(conn, row["id"])}
        d["sightings"] = self.sightings(individual_id=row["id"])
        times = [s["time"] for s in d["sightings"]]
        d.update(count=len(times), first_seen=min(times) if times else None, last_seen=max(times) if times else None)
        d["merged_from"] = [dict(r) for r in conn.execute(
            "SELECT id, name FROM individuals WHERE merged_into = ? ORDER BY id", (row["id"],))]
        return d

    def review_queue(self, limit=200):
        """Photos waiting for a decision, least confident first."""
        conn = self.store.read()
        rows = conn.execute("SELECT * FROM photos WHERE status = 'pending' ORDER BY similarity ASC, id ASC LIMIT ?",
                            (int(limit),)).fetchall()
        return [self._photo_dict(conn, r) for r in rows]

    def sightings(self, individual_id=None, date_from=None, date_to=None):
        date_from, date_to = _date(date_from, "from"), _date(date_to, "to")
        where, args = [], []
        if individual_id not in (None, ""):
            try:
                individual_id = int(individual_id)
            except (TypeError, ValueError):
                raise Refused(f"individual must be an individual's id, got {individual_id!r}", 400) from None
            where.append("s.individual_id = ?")
            args.append(individual_id)
        if date_from:
            where.append("substr(s.time, 1, 10) >= ?")
            args.append(date_from)
        if date_to:
            where.append("substr(s.time, 1, 10) <= ?")
            args.append(date_to)
        sql = ("SELECT s.id, s.photo_id, s.individual_id, i.name, s.time, s.time_source, s.latitude, s.longitude, "
               "s.place, s.created_at, p.sha256, p.original_name FROM sightings s "
               "JOIN individuals i ON i.id = s.individual_id JOIN photos p ON p.id = s.photo_id")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY s.time DESC, s.id DESC"
        out = []
        for r in self.store.read().execute(sql, args):
            d = dict(r)
            d["photo_url"] = self.photo_url(r["photo_id"])
            out.append(d)
        return out

    CSV_COLUMNS = ("sighting_id", "individual_id", "individual", "time", "time_source", "latitude", "longitude",
                   "place", "photo_id", "photo_sha256", "file_name", "recorded_at")

    def sightings_csv(self, **filters) -> str:
        """The sightings table as CSV (UTF-8); text that a spreadsheet would run as a formula gets a leading '."""
        def cell(v):
            if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r"):
                return "'" + v
            return "" if v is None else v
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")
        w.writerow(self.CSV_COLUMNS)
        for s in self.sightings(**filters):
            w.writerow([cell(v) for v in (s["id"], s["individual_id"], s["name"], s["time"], s["time_source"],
                                           s["latitude"], s["longitude"], s["place"], s["photo_id"], s["sha256"],
                                           s["original_name"], s["created_at"])])
        return buf.getvalue()

    def audit(self, limit=200):
        rows = self.store.read().execute("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (int(limit),)).fetchall()
        return [{"id": r["id"], "at": r["at"], "action": r["action"], "detail": json.loads(r["detail"])} for r in rows]

    def counts(self):
        conn = self.store.read()
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("individuals", "photos", "sightings", "decisions", "audit")}
