"""What ``nabi serve`` does, without HTTP: identify photos, decide, undo, move, rename, merge, keep notes.

Identity by id: an answer stores the *id* of the individual it proposes; names are labels people give
and change. A confirm files the photo under that id as it stands today (following merges), so a rename
or a merge never breaks a waiting card and can never refile a photo under another animal.

Concurrency and order of work:

- every database change runs in ``Store.write()`` (one writer at a time, committed before the answer);
- every call into the identifier (a forward pass, a change of its search) runs under ``model_lock``,
  never inside a database transaction: identify embeds first and then writes the photo row with its
  embedding; a decision writes sighting and enrolment (the embedding kept from identify, never computed
  again), commits, and only then brings the search in step with the database (``_sync_search``, which
  reads what is committed, so two decisions finishing in either order leave the same search).
- a process killed between a commit and its search update loses nothing: the search is rebuilt from the
  database at start.

The answers are shaped once, by ``Views``, into the models of ``schemas``.
"""
from __future__ import annotations

import csv
import io
import json
import re
import threading
from pathlib import Path

import numpy as np

from . import confidence as conf
from . import repository as repo
from . import schemas as S
from .fields import DEFAULT_FIELDS, check_fields, check_value
from .identifiers import Identifier
from .storage import Store, sha256_hex, utc_now
from .uploads import UploadRefused, check_photo, clean_name, clean_place, display_name, name_key

ACTIONS = ("confirm", "other", "new", "not_identifiable", "background")
MAX_NOTES = 10_000


class Refused(ValueError):
    """A request that is understood but not done; ``status`` is the HTTP status to answer with."""

    def __init__(self, message, status=400, **extra):
        super().__init__(message)
        self.status = status
        self.extra = extra


def _date(value, what):
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise Refused(f"{what} must be a date written YYYY-MM-DD, got {value!r}", 400)
    return value


def _request_id(request_id):
    if request_id is not None and (not isinstance(request_id, str) or not 1 <= len(request_id) <= 100):
        raise Refused("request_id must be text of 1 to 100 characters", 422)
    return request_id


def _whole(value, what, status=422):
    try:
        return int(value)
    except (TypeError, ValueError):
        raise Refused(f"{what} must be a whole number, got {value!r}", status) from None


def _place(place):
    try:
        return clean_place(place)
    except ValueError as e:
        raise Refused(str(e), 422) from None


def embedding_bytes(e) -> bytes:
    return np.ascontiguousarray(e, dtype="<f4").tobytes()


def embedding_array(b) -> np.ndarray:
    return np.frombuffer(b, dtype="<f4").astype(np.float32)


class Service:
    """The app's operations over a ``Store`` and an ``Identifier``.

    ``fields``: the club's fields for individuals (``fields.DEFAULT_FIELDS`` when None).
    ``notes`` lists what the start found worth saying (the gallery changed, enrolments re-embedded).
    """

    def __init__(self, store: Store, identifier: Identifier, max_bytes=20 * 2**20, max_pixels=120_000_000,
                 topk=5, fields=None):
        self.store, self.identifier = store, identifier
        self.max_bytes, self.max_pixels, self.topk = int(max_bytes), int(max_pixels), int(topk)
        self.fields = check_fields(fields if fields is not None else DEFAULT_FIELDS)
        self.model_lock = threading.Lock()
        self.notes = []
        self._external_photos = {}          # key -> path of a built gallery's photo (outside the data folder)
        self.views = Views(self)
        self._start()

    # -- start ---------------------------------------------------------------------------------------
    def _start(self):
        ident = self.identifier
        with self.store.write() as conn:
            last = repo.record_source(conn, ident.kind, ident.source or "", ident.checksum)
            if last is not None and last["checksum"] != ident.checksum:
                what = "gallery index" if ident.kind == "gallery" else "weights"
                self.notes.append(f"the {ident.kind} changed since the last start ({what} SHA-256 "
                                  f"{last['checksum'][:12]}… → {ident.checksum[:12]}…); its individuals are "
                                  f"matched to this folder's by name, and the photos enrolled here stay")
                repo.audit(conn, "source.changed", kind=ident.kind, old=last["checksum"], new=ident.checksum,
                           path=str(ident.source or ""))
            known = repo.label_ids(conn)
            for label in ident.labels():
                if label in known:
                    continue
                row = repo.individual_by_name_key(conn, name_key(label))
                if row is None:
                    ind = repo.insert_individual(conn, label, name_key(label))
                    repo.audit(conn, "individual.created", individual_id=ind, name=label, source=ident.kind)
                else:
                    ind = row["id"]
                repo.insert_label(conn, label, ind)
        self._refresh_enrolments()
        with self.model_lock:
            self._load_search()
        if ident.enrols:
            for path in getattr(ident, "gallery_photos", lambda: [])():
                self._external_photos[self._external_key(path)] = Path(path)

    def _refresh_enrolments(self):
        """Enrolments made with other weights (the gallery was rebuilt with another model) are embedded again
        from their photos in the data folder, so the search never compares embeddings of two models."""
        model = self.identifier.model_sha256
        if not self.identifier.enrols or model is None:
            return
        stale = [r for r in repo.enrolments(self.store.read()) if r["model_sha256"] != model]
        for start in range(0, len(stale), 64):
            chunk = stale[start:start + 64]
            with self.model_lock:
                E = self.identifier.embed([self.model_path(r) for r in chunk])
            with self.store.write() as conn:
                for r, e in zip(chunk, E):
                    repo.update_enrolment_embedding(conn, r["photo_id"], model, embedding_bytes(e))
        if stale:
            self.notes.append(f"{len(stale)} enrolled photo(s) were made with other weights and were embedded "
                              f"again with these")

    def _load_search(self):
        """(model lock held) The identifier's search as the database says: labels and enrolments, merges followed."""
        conn = self.store.read()
        targets = repo.merge_targets(conn)

        def now(i):
            seen = set()
            while i in targets and i not in seen:
                seen.add(i)
                i = targets[i]
            return i
        labels = {label: now(i) for label, i in repo.label_ids(conn).items()}
        enrolled = [(r["photo_id"], now(r["individual_id"]), self.model_path(r), embedding_array(r["embedding"]))
                    for r in repo.enrolments(conn)] if self.identifier.enrols else []
        self.identifier.load(labels, enrolled)

    def _sync_search(self, photo_ids):
        """Bring the search in step with what is committed for these photos (enrolled or not, under whom)."""
        if not self.identifier.enrols:
            return
        with self.model_lock:
            conn = self.store.read()
            for pid in photo_ids:
                row = repo.enrolment_of_photo(conn, pid)
                if row is None:
                    self.identifier.drop(pid)
                else:
                    photo = repo.photo(conn, pid)
                    self.identifier.put(pid, repo.resolve(conn, row["individual_id"]), self.model_path(photo),
                                        embedding_array(row["embedding"]))

    # -- files -----------------------------------------------------------------------------------------
    def model_path(self, row) -> Path:
        """The file the model reads for a photo row: its working copy when it has one, else the original."""
        if row["work_width"]:
            return self.store.work_path(row["sha256"])
        return self.store.photo_path(row["sha256"], row["format"])

    @staticmethod
    def _external_key(path):
        return sha256_hex(str(path).encode("utf-8", "surrogatepass"))[:32]

    def external_photo(self, key):
        """The path of a built gallery's photo an answer points to (only those; never a client's path)."""
        return self._external_photos.get(key)

    def photo_file(self, photo_id):
        """``(path, media type)`` of a stored original: the path comes from its hash in the database."""
        from .uploads import MEDIA_TYPES
        row = repo.photo(self.store.read(), _whole(photo_id, "photo_id", 404))
        if row is None:
            raise Refused(f"there is no photo #{photo_id}", 404)
        return self.store.photo_path(row["sha256"], row["format"]), MEDIA_TYPES[row["format"]]

    def thumbnail(self, photo_id=None, key=None, size=384) -> bytes:
        """JPEG bytes of a stored photo's (or a gallery photo's) thumbnail, made once and kept in the cache."""
        from ..files import atomic_write_bytes
        from .images import THUMB_SIZES, thumbnail
        if size not in THUMB_SIZES:
            raise Refused(f"size must be one of {', '.join(map(str, THUMB_SIZES))}, got {size}", 422)
        if photo_id is not None:
            row = repo.photo(self.store.read(), _whole(photo_id, "photo_id", 404))
            if row is None:
                raise Refused(f"there is no photo #{photo_id}", 404)
            source, stem = self.model_path(row), row["sha256"]
        else:
            source = self.external_photo(key)
            if source is None or not Path(source).is_file():
                raise Refused("no such gallery photo", 404)
            stem = f"gallery-{key}"
        cached = self.store.cache_path(f"thumb-{stem}-{size}", ".jpg")
        if cached.is_file():
            return cached.read_bytes()
        data = thumbnail(source, size)
        atomic_write_bytes(cached, data)
        return data

    def heatmap(self, photo_id):
        """PNG bytes of the photo's heat-map (cached in the data folder)."""
        from ..files import atomic_write_bytes
        conn = self.store.read()
        row = repo.photo(conn, _whole(photo_id, "photo_id", 404))
        if row is None:
            raise Refused(f"there is no photo #{photo_id}", 404)
        if not self.identifier.has_heatmap:
            raise Refused(f"this {self.identifier.kind} gives no heat-map", 404)
        served = self.identifier.checksum[:12]
        cached = self.store.cache_path(f"heatmap-{row['sha256']}-{served}", ".png")   # per photo and per source
        if cached.is_file():
            return cached.read_bytes()
        target = repo.resolve(conn, row["proposed_individual_id"])
        with self.model_lock:
            png = self.identifier.heatmap(self.model_path(row), target)
        if png is None:
            raise Refused(f"this {self.identifier.kind} gives no heat-map for this photo", 404)
        atomic_write_bytes(cached, png)
        return png

    # -- identify ----------------------------------------------------------------------------------------
    def identify(self, uploads, place=None, together=False) -> list:
        """``uploads``: [(file name as the client gave it, bytes)]. One ``schemas.UploadResult`` per upload, in
        order. The photos are checked, stored by hash and identified in one forward pass (outside any database
        transaction); each answer is then written with the photo's embedding. ``together``: the photos are
        one sighting of one animal, answered from all of them at once (the identifier's ``together``); each
        photo stores that answer and how many photos it came from."""
        place = _place(place)
        results, accepted, seen = [], [], {}
        for i, (filename, data) in enumerate(uploads):
            shown = display_name(filename) or f"upload {i + 1}"
            try:
                photo = check_photo(data, self.max_bytes, self.max_pixels, label=shown)
            except UploadRefused as e:
                results.append(S.UploadResult(ok=False, file=shown, error=str(e), status=e.status))
                continue
            sha = sha256_hex(photo.data)
            old = repo.photo_by_sha(self.store.read(), sha)
            if old is not None:
                results.append(S.UploadResult(ok=False, file=shown, status=409, photo_id=old["id"],
                               error=f"{shown} was already uploaded (photo #{old['id']}, {old['uploaded_at']})"))
                continue
            if sha in seen:
                results.append(S.UploadResult(ok=False, file=shown, status=409,
                                              error=f"{shown} is the same photo as {seen[sha]} in this upload"))
                continue
            seen[sha] = shown
            _, path = self.store.put_photo(photo.data, photo.ext)
            if photo.work is not None:
                path = self.store.put_work_copy(sha, photo.work)
            results.append(None)
            accepted.append((i, shown, photo, sha, path))
        if not accepted:
            return results
        try:
            with self.model_lock:
                answers = self.identifier.identify([a[4] for a in accepted], topk=self.topk,
                                                   together=together and len(accepted) > 1)
        except Exception as e:      # the photos stay stored by hash; nothing enters the database
            for i, shown, *_ in accepted:
                results[i] = S.UploadResult(ok=False, file=shown, status=500,
                                            error=f"{shown} could not be identified: {type(e).__name__}: {e}")
            return results
        model = self.identifier.model_sha256
        for (i, shown, photo, sha, path), raw in zip(accepted, answers):
            embedding = raw.pop("embedding", None)
            kept = {k: raw.get(k) for k in ("answer", "individual_id", "similarity", "margin", "probability",
                                            "threshold")}
            kept["candidates"] = [{k: c.get(k) for k in ("individual_id", "similarity", "probability", "photo")}
                                  for c in raw["candidates"]]
            if together and len(accepted) > 1:
                kept["sighting_photos"] = len(accepted)
            try:
                with self.store.write() as conn:
                    old = repo.photo_by_sha(conn, sha)
                    if old is not None:
                        raise Refused(f"{shown} was already uploaded (photo #{old['id']}, {old['uploaded_at']})",
                                      409, photo_id=old["id"])
                    pid = repo.insert_photo(
                        conn, sha256=sha, format=photo.ext, width=photo.width, height=photo.height,
                        bytes=len(photo.data), original_name=shown, uploaded_at=utc_now(), taken_at=photo.taken_at,
                        taken_offset=photo.taken_offset, latitude=photo.latitude, longitude=photo.longitude,
                        place=place, answer=kept["answer"], proposed_individual_id=kept["individual_id"],
                        similarity=kept["similarity"], margin=kept["margin"], confidence=conf.confidence(kept),
                        result_json=json.dumps(kept, ensure_ascii=False),
                        embedding=None if embedding is None else embedding_bytes(embedding),
                        embedding_model=None if embedding is None else model,
                        work_width=photo.work_size[0] if photo.work_size else None,
                        work_height=photo.work_size[1] if photo.work_size else None)
                results[i] = S.UploadResult(ok=True, photo=self.views.photo(pid))
            except Refused as e:
                results[i] = S.UploadResult(ok=False, file=shown, error=str(e), status=e.status, **e.extra)
        return results

    # -- decisions ---------------------------------------------------------------------------------------
    def _active(self, conn, individual_id, what="individual"):
        individual_id = _whole(individual_id, f"{what} (an individual's id)", 400)
        row = repo.individual(conn, individual_id)
        if row is None:
            raise Refused(f"there is no individual #{individual_id}", 404)
        if row["merged_into"] is not None:
            dst = repo.resolve(conn, individual_id)
            raise Refused(f"individual #{individual_id} ({row['name']}) was merged into #{dst}", 409)
        return row

    def _new_name(self, conn, name, exclude_id=None):
        try:
            name = clean_name(name)
        except ValueError as e:
            raise Refused(str(e), 422) from None
        row = repo.individual_by_name_key(conn, name_key(name))
        if row is not None and row["id"] != exclude_id:
            extra = f" (merged into #{repo.resolve(conn, row['id'])})" if row["merged_into"] is not None else ""
            raise Refused(f"the name {name!r} is already taken by individual #{row['id']} {row['name']!r}{extra}",
                          409)
        return name

    def _embedding_for(self, photo_id):
        """The photo's embedding by the served model: the one identify kept, else (another model served then)
        computed now, outside any transaction. None when the identifier enrols nothing."""
        if not self.identifier.enrols:
            return None
        row = repo.photo(self.store.read(), photo_id)
        if row is None:
            return None
        if row["embedding"] is not None and row["embedding_model"] == self.identifier.model_sha256:
            return embedding_array(row["embedding"])
        with self.model_lock:
            return np.asarray(self.identifier.embed([self.model_path(row)]), np.float32)[0]

    def _file(self, conn, photo, target, embedding, place=None):
        """The sighting of ``photo`` under ``target`` and, for a gallery, its enrolment (in ``conn``'s transaction)."""
        if photo["taken_at"]:
            time, source = photo["taken_at"], "exif"
        else:
            time, source = photo["uploaded_at"], "upload"
        repo.insert_sighting(conn, photo["id"], target, time, source, photo["latitude"], photo["longitude"],
                             place or photo["place"])
        if embedding is not None:
            repo.insert_enrolment(conn, photo["id"], target, self.identifier.model_sha256, embedding_bytes(embedding))

    def decide(self, photo_id, action, individual_id=None, name=None, place=None, request_id=None, actor=None):
        """Record a person's decision on a photo; identified photos become sightings (and, with a gallery, join
        its search after the commit)."""
        if action not in ACTIONS:
            raise Refused(f"action must be one of {', '.join(ACTIONS)}; got {action!r}", 422)
        request_id, place = _request_id(request_id), _place(place)
        photo_id = _whole(photo_id, "photo_id")
        embedding = self._embedding_for(photo_id) if action in ("confirm", "other", "new") else None
        with self.store.write() as conn:
            if request_id is not None:
                done = repo.decision_by_request(conn, request_id)
                if done is not None:      # a retry of a decision already recorded
                    return self._decision_result(done["photo_id"], repeated=True)
            photo = repo.photo(conn, photo_id)
            if photo is None:
                raise Refused(f"there is no photo #{photo_id}", 404)
            if photo["status"] != "pending":
                last = repo.current_decision(conn, photo_id)
                raise Refused(f"photo #{photo_id} was already decided ({last['action']}, {last['created_at']}); "
                              f"undo that decision or move the photo to another individual", 409)
            target = None
            if action == "confirm":
                if photo["answer"] == "background":
                    action = "background"
                elif photo["answer"] != "known" or photo["proposed_individual_id"] is None:
                    raise Refused(f"photo #{photo_id} has no proposed individual to confirm: pick one or name a "
                                  f"new one", 409)
                else:
                    target = repo.resolve(conn, photo["proposed_individual_id"])
                    if repo.individual(conn, target) is None:
                        raise Refused(f"the proposed individual #{photo['proposed_individual_id']} is not known "
                                      f"here", 409)
            elif action == "other":
                if individual_id is None:
                    raise Refused("'other' needs individual_id: pick an individual from the list", 422)
                target = self._active(conn, individual_id)["id"]
            elif action == "new":
                if not self.identifier.can_enrol_new():
                    raise Refused(f"a new individual cannot be added to a {self.identifier.kind}: it knows only the "
                                  f"individuals it was trained on; serve a re-identification gallery to enrol new "
                                  f"individuals", 409)
                if name is None:
                    raise Refused("'new' needs a name for the new individual", 422)
                new_name = self._new_name(conn, name)
                target = repo.insert_individual(conn, new_name, name_key(new_name))
                repo.audit(conn, "individual.created", actor, individual_id=target, name=new_name, photo_id=photo_id)
            did = repo.insert_decision(conn, photo_id, action, target, request_id, actor)
            repo.set_photo_status(conn, photo_id, "decided", place)
            if target is not None:
                self._file(conn, photo, target, embedding, place)
            repo.audit(conn, "decision", actor, photo_id=photo_id, decision_id=did, action=action,
                       individual_id=target, name=repo.individual(conn, target)["name"] if target else None)
        self._sync_search([photo_id])
        return self._decision_result(photo_id)

    def _decision_result(self, photo_id, repeated=False):
        photo = self.views.photo(photo_id)
        return S.DecisionResult(photo=photo, repeated=repeated, sighting_id=photo.sighting_id)

    def undo(self, photo_id, actor=None):
        """Revert the photo's decision in force: its sighting and enrolment go, the photo waits again (and an
        individual that this decision created, still without a sighting, is removed)."""
        photo_id = _whole(photo_id, "photo_id", 404)
        with self.store.write() as conn:
            photo = repo.photo(conn, photo_id)
            if photo is None:
                raise Refused(f"there is no photo #{photo_id}", 404)
            dec = repo.current_decision(conn, photo_id)
            if dec is None:
                raise Refused(f"photo #{photo_id} has no decision to undo", 409)
            repo.revert_decision(conn, dec["id"])
            repo.delete_sighting(conn, photo_id)
            repo.delete_enrolment(conn, photo_id)
            repo.set_photo_status(conn, photo_id, "pending")
            ind = repo.individual(conn, dec["individual_id"]) if dec["individual_id"] is not None else None
            repo.audit(conn, "decision.reverted", actor, photo_id=photo_id, decision_id=dec["id"],
                       action=dec["action"], individual_id=dec["individual_id"], name=ind["name"] if ind else None)
            if dec["action"] == "new" and ind is not None and self._removable(conn, ind["id"]):
                repo.delete_individual(conn, ind["id"])
                repo.audit(conn, "individual.removed", actor, individual_id=ind["id"], name=ind["name"],
                           photo_id=photo_id)
        self._sync_search([photo_id])
        return self._decision_result(photo_id)

    @staticmethod
    def _removable(conn, individual_id):
        """An individual with nothing attached: no sighting, label, enrolment, merged individual, answer proposing
        it or decision in force."""
        one = "SELECT 1 FROM {} WHERE {} = ? LIMIT 1"
        for table, column in (("sightings", "individual_id"), ("labels", "individual_id"),
                              ("enrolments", "individual_id"), ("individuals", "merged_into"),
                              ("photos", "proposed_individual_id")):
            if conn.execute(one.format(table, column), (individual_id,)).fetchone():
                return False
        return not conn.execute("SELECT 1 FROM decisions WHERE individual_id = ? AND reverted_at IS NULL LIMIT 1",
                                (individual_id,)).fetchone()

    def move(self, photo_id, individual_id, actor=None, request_id=None):
        """File a decided photo under another individual: its decision is replaced, and its sighting and
        enrolment move with it (a photo decided not identifiable or background becomes a sighting)."""
        photo_id = _whole(photo_id, "photo_id", 404)
        request_id = _request_id(request_id)
        embedding = self._embedding_for(photo_id)
        with self.store.write() as conn:
            if request_id is not None:
                done = repo.decision_by_request(conn, request_id)
                if done is not None:
                    return self._decision_result(done["photo_id"], repeated=True)
            photo = repo.photo(conn, photo_id)
            if photo is None:
                raise Refused(f"there is no photo #{photo_id}", 404)
            dec = repo.current_decision(conn, photo_id)
            if dec is None:
                raise Refused(f"photo #{photo_id} is waiting for a decision: decide it instead of moving it", 409)
            target = self._active(conn, individual_id)
            before = repo.resolve(conn, dec["individual_id"])
            if before == target["id"]:
                raise Refused(f"photo #{photo_id} is already filed under {target['name']} (#{target['id']})", 409)
            repo.revert_decision(conn, dec["id"])
            repo.delete_sighting(conn, photo_id)
            repo.delete_enrolment(conn, photo_id)
            did = repo.insert_decision(conn, photo_id, "other", target["id"], request_id, actor)
            self._file(conn, photo, target["id"], embedding)
            old = repo.individual(conn, before) if before is not None else None
            repo.audit(conn, "decision.moved", actor, photo_id=photo_id, decision_id=did, replaced=dec["id"],
                       from_id=before, from_name=old["name"] if old else None, from_action=dec["action"],
                       individual_id=target["id"], name=target["name"])
        self._sync_search([photo_id])
        return self._decision_result(photo_id)

    def delete_photo(self, photo_id, actor=None):
        """Remove a photo that is not a sighting (waiting, undone, not identifiable, background) and its files."""
        photo_id = _whole(photo_id, "photo_id", 404)
        with self.store.write() as conn:
            row = repo.photo(conn, photo_id)
            if row is None:
                raise Refused(f"there is no photo #{photo_id}", 404)
            if repo.sighting_of_photo(conn, photo_id):
                raise Refused(f"photo #{photo_id} is a sighting: undo its decision first", 409)
            repo.delete_enrolment(conn, photo_id)
            repo.delete_photo(conn, photo_id)
            repo.audit(conn, "photo.deleted", actor, photo_id=photo_id, sha256=row["sha256"],
                       original_name=row["original_name"])
        self.store.remove_photo_files(row["sha256"], row["format"])
        self._sync_search([photo_id])
        return S.Deleted(deleted=photo_id)

    # -- individuals --------------------------------------------------------------------------------------
    def rename(self, individual_id, new_name, actor=None):
        """A new name for an individual (a label only: answers, sightings and the search keep its id)."""
        with self.store.write() as conn:
            ind = self._active(conn, individual_id)
            new_name = self._new_name(conn, new_name, exclude_id=ind["id"])
            if new_name == ind["name"]:
                raise Refused(f"individual #{ind['id']} is already called {new_name!r}", 409)
            repo.rename_individual(conn, ind["id"], new_name, name_key(new_name))
            repo.audit(conn, "individual.renamed", actor, individual_id=ind["id"], old=ind["name"], new=new_name)
        return self.views.individual(ind["id"])

    def merge(self, src_id, dst_id, actor=None):
        """Merge individual ``src`` into ``dst`` (two names that turned out to be one animal): its sightings and
        enrolled photos move to ``dst``; answers that proposed ``src`` now propose ``dst``."""
        with self.store.write() as conn:
            src = self._active(conn, src_id, "source")
            dst = self._active(conn, dst_id, "target")
            if src["id"] == dst["id"]:
                raise Refused("an individual cannot be merged into itself", 409)
            moved = repo.merge_individual(conn, src["id"], dst["id"])
            repo.audit(conn, "individual.merged", actor, source_id=src["id"], source=src["name"],
                       target_id=dst["id"], target=dst["name"], sightings_moved=moved)
        with self.model_lock:
            self._load_search()
        return self.views.individual(dst["id"])

    def set_details(self, individual_id, notes=None, fields=None, actor=None):
        """Change an individual's notes and the club's fields (``fields``: {key: value or None to clear})."""
        specs = {f["key"]: f for f in self.fields}
        fields = dict(fields or {})
        unknown = sorted(set(fields) - set(specs))
        if unknown:
            raise Refused(f"unknown field(s) {', '.join(unknown)}; this server keeps "
                          f"{', '.join(specs) or 'no fields'}", 422)
        clean = {}
        try:
            for key, value in fields.items():
                clean[key] = check_value(specs[key], value)
        except ValueError as e:
            raise Refused(str(e), 422) from None
        if notes is not None:
            if not isinstance(notes, str) or len(notes) > MAX_NOTES:
                raise Refused(f"notes must be text of at most {MAX_NOTES:,} characters", 422)
            notes = notes.strip()
        with self.store.write() as conn:
            ind = self._active(conn, individual_id)
            old = repo.fields_of(conn, ind["id"])
            changed = {k: {"old": old.get(k), "new": v} for k, v in clean.items() if old.get(k) != v}
            for key in changed:
                repo.set_field(conn, ind["id"], key, clean[key])
            if notes is not None and notes != ind["notes"]:
                repo.set_notes(conn, ind["id"], notes)
                changed["notes"] = {"old": ind["notes"], "new": notes}
            if changed:
                repo.audit(conn, "individual.details", actor, individual_id=ind["id"], changes=changed)
        return self.views.individual(ind["id"])

    # -- export -------------------------------------------------------------------------------------------
    CSV_COLUMNS = ("sighting_id", "individual_id", "individual", "time", "time_source", "utc_offset", "latitude",
                   "longitude", "place", "photo_id", "photo_sha256", "file_name", "recorded_at")

    def sightings_csv(self, **filters) -> str:
        """The sightings table as CSV (UTF-8); text that a spreadsheet would run as a formula gets a leading '."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")
        w.writerow(self.CSV_COLUMNS)
        for s in self.views.sightings(**filters):
            w.writerow([csv_cell(v) for v in (s.id, s.individual_id, s.name, s.time, s.time_source, s.taken_offset,
                                               s.latitude, s.longitude, s.place, s.photo_id, s.sha256,
                                               s.original_name, s.created_at)])
        return buf.getvalue()

    def counts(self):
        return repo.counts(self.store.read())

    # -- how many animals ---------------------------------------------------------------------------------
    def _histories(self, occasion, date_from, date_to):
        from .population import capture_histories
        if occasion not in ("day", "week"):
            raise Refused(f"occasion must be day or week, got {occasion!r}", 422)
        rows = self.views.sightings(date_from=date_from, date_to=date_to)
        occasions, histories = capture_histories([(s.individual_id, s.time) for s in rows], occasion)
        return rows, occasions, histories

    def population(self, occasion="day", date_from=None, date_to=None) -> S.PopulationOut:
        from .population import estimates, summaries
        _, occasions, histories = self._histories(occasion, date_from, date_to)
        s = summaries(histories)
        return S.PopulationOut(occasion=occasion, occasions=occasions, individuals=s["individuals"],
                               caught=s["caught"], recaptured=s["recaptured"], frequencies=s["frequencies"],
                               estimates=[S.EstimateOut(**e.as_dict()) for e in estimates(histories)])

    def capture_histories_csv(self, occasion="day", layout="matrix", date_from=None, date_to=None):
        """``(file name, CSV text)`` of the capture histories in ``layout`` (see ``routes.population``)."""
        from .population import occasion_of, sighting_day
        rows, occasions, histories = self._histories(occasion, date_from, date_to)
        names = repo.names(self.store.read())
        index = {o: i + 1 for i, o in enumerate(occasions)}
        detectors = _detectors(rows)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")
        if layout == "matrix":
            w.writerow(["individual_id", "individual", *occasions])
            for ind, h in histories.items():
                w.writerow([ind, csv_cell(names.get(ind, "")), *h])
        elif layout == "rmark":
            w.writerow(["ch", "freq", "individual_id", "individual"])
            for ind, h in histories.items():
                w.writerow(["".join(map(str, h)), 1, ind, csv_cell(names.get(ind, ""))])
        elif layout == "secr":
            w.writerow(["Session", "ID", "Occasion", "Detector"])
            done = set()
            for s in sorted(rows, key=lambda s: (s.individual_id, s.time)):
                key = (s.individual_id, occasion_of(sighting_day(s.time), occasion), detectors[s.id][0])
                if key not in done:
                    done.add(key)
                    w.writerow([1, s.individual_id, index[key[1]], key[2]])
        elif layout == "camtrapr":
            w.writerow(["Station", "Species", "Individual", "DateTimeOriginal", "Date", "Time", "FileName"])
            for s in sorted(rows, key=lambda s: s.time):
                t = s.time[:-1] if s.time.endswith("Z") else s.time
                if s.time.endswith("Z"):          # an upload time: this computer's local time, as cameras write
                    from datetime import datetime
                    t = datetime.fromisoformat(s.time[:-1] + "+00:00").astimezone().strftime("%Y-%m-%dT%H:%M:%S")
                w.writerow([detectors[s.id][0], "animal", s.individual_id, t.replace("T", " ")[:19], t[:10],
                            t[11:19], csv_cell(s.original_name or "")])
        elif layout == "detectors":
            w.writerow(["Detector", "x", "y", "latitude", "longitude", "place"])
            for det, x, y, lat, lon, place in sorted(set(detectors.values())):
                w.writerow([det, x, y, lat, lon, csv_cell(place or "")])
        else:
            raise Refused(f"layout must be matrix, rmark, secr, camtrapr or detectors, got {layout!r}", 422)
        return f"capture_histories_{layout}_{occasion}.csv", buf.getvalue()


def _detectors(rows) -> dict:
    """{sighting id: (detector, x, y, latitude, longitude, place)}: one detector per GPS position (rounded to
    4 decimals, ~10 m) or, without GPS, per place; x, y in metres east and north of the positions' mean
    (an equirectangular projection, good over a few kilometres); empty without GPS."""
    import math
    gps = [(s.latitude, s.longitude) for s in rows if s.latitude is not None]
    lat0 = sum(a for a, _ in gps) / len(gps) if gps else 0.0
    lon0 = sum(b for _, b in gps) / len(gps) if gps else 0.0
    keys, out = {}, {}
    for s in sorted(rows, key=lambda s: s.id):
        if s.latitude is not None:
            key = ("gps", round(s.latitude, 4), round(s.longitude, 4))
        else:
            key = ("place", s.place or "")
        if key not in keys:
            det = f"D{len(keys) + 1}"
            if key[0] == "gps":
                x = round(math.radians(key[2] - lon0) * 6371000 * math.cos(math.radians(lat0)), 1)
                y = round(math.radians(key[1] - lat0) * 6371000, 1)
                keys[key] = (det, x, y, key[1], key[2], s.place)
            else:
                keys[key] = (det, "", "", "", "", key[1])
        out[s.id] = keys[key]
    return out


def csv_cell(v):
    """A CSV cell: text a spreadsheet would run as a formula (=, +, -, @, tab, CR first) gets a leading '."""
    if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + v
    return "" if v is None else v


class Views:
    """The answers of ``nabi serve``, shaped once from the database rows into ``schemas`` models."""

    def __init__(self, service: Service):
        self.service = service

    @property
    def _conn(self):
        return self.service.store.read()

    # -- small pieces ---------------------------------------------------------------------------------
    @staticmethod
    def photo_url(photo_id):
        return f"/api/photos/{int(photo_id)}/image"

    @staticmethod
    def thumb_url(photo_id, size=384):
        return f"/api/photos/{int(photo_id)}/thumb?size={size}"

    def _ref(self, conn, individual_id, names=None):
        if individual_id is None:
            return None
        individual_id = repo.resolve(conn, individual_id)
        names = names if names is not None else repo.names(conn)
        return S.IndividualRef(id=individual_id, name=names[individual_id]) if individual_id in names else None

    def _candidate_photo(self, conn, individual_id, photo):
        """(photo url, thumbnail url) of a candidate's closest photo: in the data folder, or the built gallery's."""
        if photo:
            p = Path(photo)
            if re.fullmatch(r"[0-9a-f]{64}", p.stem):
                row = repo.photo_by_sha(conn, p.stem)
                if row is not None:
                    return self.photo_url(row["id"]), self.thumb_url(row["id"], 192)
            key = self.service._external_key(p)
            if self.service.external_photo(key) is not None:
                return f"/api/gallery-photos/{key}", f"/api/gallery-photos/{key}?size=192"
        if individual_id is None:
            return None, None
        pid = repo.latest_sighting_photo(conn, individual_id)
        return (self.photo_url(pid), self.thumb_url(pid, 192)) if pid else (None, None)

    def answer(self, conn, raw, names) -> S.Answer:
        """The stored answer with today's individuals (ids followed through merges, today's names) and its words."""
        if "individual_id" not in raw:                   # written by schema version 2: names, not ids
            labels = repo.label_ids(conn)
            raw = dict(raw, individual_id=labels.get(raw.get("name")) if raw["answer"] == "known" else None,
                       candidates=[dict(c, individual_id=labels.get(c.get("name"))) for c in raw["candidates"]],
                       threshold=None)
        cands, seen = [], set()
        for c in raw["candidates"]:
            ref = self._ref(conn, c.get("individual_id"), names)
            key = ref.id if ref is not None else ("?", len(seen))
            if key in seen:          # two entries of one individual after a merge: keep the better
                continue
            seen.add(key)
            url, thumb = self._candidate_photo(conn, ref.id if ref else None, c.get("photo"))
            cands.append(S.Candidate(individual=ref, similarity=float(c["similarity"]),
                                     probability=c.get("probability"), photo_url=url, thumb_url=thumb))
        raw_for_words = dict(raw, candidates=[{"individual_id": c.individual.id if c.individual else None,
                                               "probability": c.probability, "similarity": c.similarity}
                                              for c in cands])
        if raw["answer"] == "known":
            raw_for_words["individual_id"] = repo.resolve(conn, raw.get("individual_id"))
        text, level = conf.words(raw_for_words, lambda i: names.get(i, f"#{i}"))
        individual = self._ref(conn, raw.get("individual_id"), names) if raw["answer"] == "known" else None
        return S.Answer(answer=raw["answer"], individual=individual, closest=cands[0].individual if cands else None,
                        similarity=float(raw["similarity"]), margin=raw.get("margin"),
                        probability=raw.get("probability"), threshold=raw.get("threshold"),
                        calibrated=raw.get("threshold") is not None or raw.get("probability") is not None,
                        words=text, level=level, confidence=conf.confidence(raw), candidates=cands,
                        sighting_photos=raw.get("sighting_photos"))

    def _photos(self, conn, rows) -> list:
        names = repo.names(conn)
        ids = [r["id"] for r in rows]
        decisions = repo.current_decisions(conn, ids)
        sightings = repo.sighting_ids_of_photos(conn, ids)
        heat = self.service.identifier.has_heatmap
        out = []
        for r in rows:
            dec = decisions.get(r["id"])
            decision = None if dec is None else S.DecisionOut(
                id=dec["id"], action=dec["action"], individual=self._ref(conn, dec["individual_id"], names),
                at=dec["created_at"], actor=dec["actor"])
            out.append(S.Photo(
                id=r["id"], sha256=r["sha256"], width=r["width"], height=r["height"], bytes=r["bytes"],
                original_name=r["original_name"], uploaded_at=r["uploaded_at"], taken_at=r["taken_at"],
                taken_offset=r["taken_offset"], latitude=r["latitude"], longitude=r["longitude"], place=r["place"],
                status=r["status"], url=self.photo_url(r["id"]), thumb_url=self.thumb_url(r["id"]),
                heatmap_url=f"/api/photos/{r['id']}/heatmap" if heat else None,
                working_copy=bool(r["work_width"]),
                result=self.answer(conn, json.loads(r["result_json"]), names) if r["result_json"] else None,
                decision=decision, sighting_id=sightings.get(r["id"])))
        return out

    # -- reads ----------------------------------------------------------------------------------------
    def photo(self, photo_id) -> S.Photo:
        conn = self._conn
        row = repo.photo(conn, _whole(photo_id, "photo_id", 404))
        if row is None:
            raise Refused(f"there is no photo #{photo_id}", 404)
        return self._photos(conn, [row])[0]

    def review_queue(self, limit=200) -> list:
        """Photos waiting for a decision, the least sure answer first."""
        conn = self._conn
        return self._photos(conn, repo.review_queue(conn, limit))

    def individuals(self, new_since=None, not_seen_days=None) -> list:
        """Active individuals by name; ``new_since`` (YYYY-MM-DD): only those first seen since that day;
        ``not_seen_days``: only those not seen for that many days (or never)."""
        new_since = _date(new_since, "new_since")
        before = None
        if not_seen_days is not None:
            from datetime import date, timedelta
            days = _whole(not_seen_days, "not_seen_days", 400)
            if days < 0:
                raise Refused("not_seen_days must be 0 or more", 400)
            before = (date.today() - timedelta(days=days)).isoformat()
        conn = self._conn
        out = []
        for r in repo.individuals_summary(conn, new_since, before):
            url, thumb = self._candidate_photo(conn, r["id"], None)
            out.append(S.IndividualSummary(id=r["id"], name=r["name"], created_at=r["created_at"],
                                           sightings=r["sightings"], first_seen=r["first_seen"],
                                           last_seen=r["last_seen"], labels=repo.labels_of(conn, r["id"]),
                                           photo_url=url, thumb_url=thumb))
        return out

    def individual(self, individual_id) -> S.Individual:
        conn = self._conn
        individual_id = _whole(individual_id, "individual id", 404)
        row = repo.individual(conn, individual_id)
        if row is None:
            raise Refused(f"there is no individual #{individual_id}", 404)
        names = repo.names(conn)
        timeline = self.sightings(individual_id=row["id"])
        times = [s.time for s in timeline]
        url, thumb = self._candidate_photo(conn, row["id"], None)
        return S.Individual(
            id=row["id"], name=row["name"], created_at=row["created_at"], sightings=len(times),
            first_seen=min(times) if times else None, last_seen=max(times) if times else None,
            labels=repo.labels_of(conn, row["id"]), photo_url=url, thumb_url=thumb,
            merged_into=self._ref(conn, row["merged_into"], names) if row["merged_into"] is not None else None,
            merged_from=[S.IndividualRef(id=r["id"], name=r["name"]) for r in repo.merged_from(conn, row["id"])],
            notes=row["notes"], fields=repo.fields_of(conn, row["id"]), count=len(times), timeline=timeline)

    def sightings(self, individual_id=None, date_from=None, date_to=None, with_gps=False) -> list:
        date_from, date_to = _date(date_from, "from"), _date(date_to, "to")
        if individual_id in ("",):
            individual_id = None
        if individual_id is not None:
            individual_id = _whole(individual_id, "individual (an individual's id)", 400)
        return [S.Sighting(**{k: r[k] for k in r.keys()}, photo_url=self.photo_url(r["photo_id"]),
                           thumb_url=self.thumb_url(r["photo_id"], 192))
                for r in repo.sightings(self._conn, individual_id, date_from, date_to, with_gps)]

    def audit(self, limit=200) -> list:
        conn = self._conn
        names = repo.names(conn)
        out = []
        for r in repo.audit_rows(conn, limit):
            detail = json.loads(r["detail"])
            undo = None
            if r["action"] in ("decision", "decision.moved") and detail.get("photo_id") is not None:
                now = repo.current_decision(conn, detail["photo_id"])
                if now is not None and now["id"] == detail.get("decision_id"):
                    undo = f"/api/photos/{detail['photo_id']}/undo"
            out.append(S.AuditEntry(id=r["id"], at=r["at"], action=r["action"], actor=r["actor"],
                                    text=describe(r["action"], detail, names), detail=detail,
                                    photo_id=detail.get("photo_id"), undo=undo))
        return out


_DECIDED = {"confirm": "confirmed as {name}", "other": "identified as {name}", "new": "a new individual, {name}",
            "not_identifiable": "marked not identifiable", "background": "marked background (no animal)"}


def describe(action, d, names) -> str:
    """One change of the log in words, with today's names (and the names at the time where they differ)."""
    def who(i, then=None):
        if i is None:
            return "nobody"
        now = names.get(i)
        if now is None:
            return f"{then or 'individual'} (#{i}, since removed)"
        return f"{now} (#{i})" + (f", then called {then}" if then and then != now else "")

    photo = f"photo #{d['photo_id']}" if d.get("photo_id") is not None else "a photo"
    if action == "decision":
        name = who(d.get("individual_id"), d.get("name"))
        return f"{photo.capitalize()} {_DECIDED.get(d.get('action'), d.get('action', '')).format(name=name)}"
    if action == "decision.reverted":
        name = who(d.get("individual_id"), d.get("name"))
        was = _DECIDED.get(d.get("action"), d.get("action", "")).format(name=name)
        return f"Undid the decision on {photo} (it was {was}); the photo waits for a decision again"
    if action == "decision.moved":
        was = who(d.get("from_id"), d.get("from_name")) if d.get("from_id") is not None else \
            "“" + str(d.get("from_action", "")).replace("_", " ") + "”"
        return f"Moved {photo} from {was} to {who(d.get('individual_id'), d.get('name'))}"
    if action == "individual.created":
        src = f" from {photo}" if d.get("photo_id") is not None else f" (known to the {d['source']})" \
            if d.get("source") else ""
        return f"New individual {who(d.get('individual_id'), d.get('name'))}{src}"
    if action == "individual.renamed":
        return f"Renamed #{d['individual_id']} from {d['old']} to {d['new']}"
    if action == "individual.merged":
        return (f"Merged {d['source']} (#{d['source_id']}) into {who(d['target_id'], d['target'])}; "
                f"{d['sightings_moved']} sighting(s) moved")
    if action == "individual.removed":
        return f"Removed {d['name']} (#{d['individual_id']}): created by a decision that was undone"
    if action == "individual.details":
        keys = ", ".join(sorted(d.get("changes", {})))
        return f"Updated {who(d.get('individual_id'))}: {keys}"
    if action == "photo.deleted":
        return f"Deleted {photo}" + (f" ({d['original_name']})" if d.get("original_name") else "")
    if action == "source.changed":
        return f"The {d.get('kind')} changed (SHA-256 {str(d.get('old'))[:12]}… → {str(d.get('new'))[:12]}…)"
    return f"{action}: " + json.dumps(d, ensure_ascii=False, sort_keys=True)
