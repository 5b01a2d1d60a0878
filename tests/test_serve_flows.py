"""nabi serve as a club uses it, through its HTTP API (uvicorn in a thread, httpx): identities that survive
renames and merges, decisions undone and moved, confidence in words, the club's fields and lists, how many
animals, a backup restored with identical answers, very large photos.

The identifier is a real in-memory re-identification gallery (``nabi.reid.gallery.Gallery``) whose embedder is
a stand-in for the network (a photo's mean colour), so that which individual a photo resembles is known.
"""
import csv
import io
import shutil
import sqlite3

import numpy as np
import pytest
from PIL import Image

from nabi.serve import confidence
from nabi.serve.app import Settings, create_app
from nabi.serve.backup import BackupError, backup
from nabi.serve.fields import load_fields
from nabi.serve.service import Service
from nabi.serve.storage import Store

from serve_support import COLOURS, OTHER_COLOURS, ThreadServer, client, colour_identifier, exif_with, photo_bytes, upload

PALETTE = {**COLOURS, **OTHER_COLOURS, "orange": (230, 130, 30), "red-orange": (226, 86, 34)}
_seed = iter(range(60_000, 10**6))


def jpg(colour, **kw):
    return photo_bytes(PALETTE[colour], seed=next(_seed), **kw)


class App:
    """A service over a data folder, served on loopback; ``identify``/``decide``/… go through HTTP."""

    def __init__(self, root, fields=None, **identifier):
        self.store = Store(root)
        self.ident = colour_identifier(**identifier)
        self.service = Service(self.store, self.ident, max_bytes=8 * 2**20, max_pixels=120_000_000, fields=fields)
        self.server = ThreadServer(create_app(self.service, Settings())).__enter__()
        self.c = client(self.server)

    def close(self):
        self.c.close()
        self.server.__exit__()
        self.store.close()

    def identify(self, colour, **kw):
        r = upload(self.c, (f"{colour}.jpg", jpg(colour, **kw)))
        assert r.status_code == 200, r.text
        return r.json()["results"][0]["photo"]

    def decide(self, photo, action, status=200, **kw):
        r = self.c.post("/api/decisions", json={"photo_id": photo["id"], "action": action, **kw})
        assert r.status_code == status, r.text
        return r.json()

    def enrol(self, colour, name):
        """A new individual from a photo of ``colour``; its id."""
        return self.decide(self.identify(colour), "new", name=name)["photo"]["decision"]["individual"]["id"]

    def post(self, path, status=200, **body):
        r = self.c.post(path, json=body or None)
        assert r.status_code == status, r.text
        return r.json()

    def get(self, path, status=200, **params):
        r = self.c.get(path, params=params)
        assert r.status_code == status, r.text
        return r.json()


@pytest.fixture
def app(tmp_path):
    a = App(tmp_path / "data")
    try:
        yield a
    finally:
        a.close()


def test_rename_and_merge_never_break_a_waiting_card(app):
    """The sequences of the issue: cards wait while "11" is renamed, "32" merged into "149", and another animal
    renamed to "11"; each Confirm files the photo under the animal its card proposed."""
    eleven, thirty_two, one_four_nine = app.enrol("nabi", "11"), app.enrol("momo", "32"), app.enrol("yellow", "149")
    a, b, c = app.identify("nabi"), app.identify("momo"), app.identify("nabi")
    assert (a["result"]["individual"]["id"], b["result"]["individual"]["id"]) == (eleven, thirty_two)
    app.post(f"/api/individuals/{eleven}/rename", name="Eleven")
    assert app.decide(a, "confirm")["photo"]["decision"]["individual"] == {"id": eleven, "name": "Eleven"}
    app.post("/api/individuals/merge", source_id=thirty_two, target_id=one_four_nine)
    assert app.decide(b, "confirm")["photo"]["decision"]["individual"] == {"id": one_four_nine, "name": "149"}
    app.post(f"/api/individuals/{one_four_nine}/rename", name="11")       # another animal takes the name "11"
    filed = app.decide(c, "confirm")["photo"]
    assert filed["decision"]["individual"] == {"id": eleven, "name": "Eleven"}
    assert filed["result"]["individual"] == {"id": eleven, "name": "Eleven"}      # the card reads today's name
    pages = {i: app.get(f"/api/individuals/{i}") for i in (eleven, one_four_nine)}
    assert {s["photo_id"] for s in pages[eleven]["timeline"]} >= {a["id"], c["id"]}
    assert c["id"] not in {s["photo_id"] for s in pages[one_four_nine]["timeline"]}
    # and its gallery photo joined the right animal: the next photo of that colour is Eleven's
    assert app.identify("nabi")["result"]["individual"]["id"] == eleven
    db = sqlite3.connect(app.store.db_path)
    assert db.execute("SELECT individual_id FROM enrolments WHERE photo_id = ?", (c["id"],)).fetchone()[0] == eleven
    db.close()


def test_undo_and_move_take_the_sighting_and_the_enrolment_along(app):
    app.c.headers["X-Nabi-User"] = "Mina"
    a, b = app.enrol("nabi", "A"), app.enrol("momo", "B")
    p = app.identify("nabi")
    app.decide(p, "confirm")
    assert app.get(f"/api/individuals/{a}")["count"] == 2
    undone = app.post(f"/api/photos/{p['id']}/undo")
    assert undone["photo"]["status"] == "pending" and undone["sighting_id"] is None and undone["photo"]["decision"] is None
    assert app.get(f"/api/individuals/{a}")["count"] == 1
    assert p["id"] in {q["id"] for q in app.get("/api/review")}
    later = app.identify("nabi")["result"]["candidates"]                  # the removed photo is not searched
    assert all(c_["photo_url"] != p["url"] for c_ in later)
    assert app.decide(p, "confirm")["sighting_id"] is not None
    again = app.c.post("/api/decisions", json={"photo_id": p["id"], "action": "other", "individual_id": b})
    assert again.status_code == 409 and "undo that decision or move" in again.json()["detail"]
    moved = app.post(f"/api/photos/{p['id']}/move", individual_id=b)
    assert moved["photo"]["decision"]["individual"] == {"id": b, "name": "B"}
    assert p["id"] in {s["photo_id"] for s in app.get(f"/api/individuals/{b}")["timeline"]}
    assert p["id"] not in {s["photo_id"] for s in app.get(f"/api/individuals/{a}")["timeline"]}
    closest_b = [c_ for c_ in app.identify("nabi")["result"]["candidates"] if c_["individual"]["id"] == b]
    assert closest_b[0]["photo_url"] == p["url"] and closest_b[0]["similarity"] > 0.99     # it counts for B now
    assert app.c.post(f"/api/photos/{p['id']}/move", json={"individual_id": b}).status_code == 409
    log = app.get("/api/audit")
    moved_entry = next(e for e in log if e["action"] == "decision.moved")
    assert moved_entry["text"] == f"Moved photo #{p['id']} from A (#{a}) to B (#{b})"
    assert moved_entry["actor"].startswith("Mina (") and moved_entry["undo"] == f"/api/photos/{p['id']}/undo"
    reverted = next(e for e in log if e["action"] == "decision.reverted")
    assert reverted["text"].startswith(f"Undid the decision on photo #{p['id']} (it was confirmed as A (#{a}))")
    app.post(moved_entry["undo"])                                          # undone from the change log
    assert app.get(f"/api/photos/{p['id']}")["status"] == "pending"
    assert not any(e["undo"] for e in app.get("/api/audit") if e["photo_id"] == p["id"])
    # a photo decided "not identifiable" can be moved to an individual: it becomes a sighting
    n = app.identify("nabi")
    app.decide(n, "not_identifiable")
    assert app.post(f"/api/photos/{n['id']}/move", individual_id=a)["sighting_id"] is not None
    # undoing a "new" removes the individual it created, and its id is never given again
    q = app.identify("purple")
    made = app.decide(q, "new", name="P")["photo"]["decision"]["individual"]["id"]
    app.post(f"/api/photos/{q['id']}/undo")
    assert app.c.get(f"/api/individuals/{made}").status_code == 404
    assert app.enrol("purple", "P") > made
    assert app.c.post("/api/photos/999999/undo").status_code == 404


def test_a_decision_enrols_the_embedding_identify_made(app):
    calls = []
    embed = app.ident.served.base.embedder.embed

    def counted(items, with_probs=False):
        calls.append(len(list(items)))
        return embed(items, with_probs=with_probs)
    app.ident.served.base.embedder.embed = counted
    first = app.identify("nabi")
    assert calls == [1]
    app.decide(first, "new", name="A")
    second = app.identify("nabi")
    app.decide(second, "confirm")
    assert calls == [1, 1]                        # identify embedded each photo once; the decisions did not
    db = sqlite3.connect(app.store.db_path)
    rows = db.execute("SELECT p.embedding, e.embedding FROM photos p JOIN enrolments e ON e.photo_id = p.id").fetchall()
    db.close()
    assert len(rows) == 2 and all(kept == enrolled for kept, enrolled in rows)


def test_review_queue_puts_the_least_sure_answer_first(app):
    app.enrol("nabi", "A")
    app.enrol("orange", "B")
    sure = app.identify("nabi")
    between = app.identify("red-orange")                                  # nearly as close to A as to B
    assert between["result"]["level"] == "check" and " or " in between["result"]["words"]
    assert sure["result"]["words"] == "very likely A"
    assert between["result"]["similarity"] > sure["result"]["similarity"] - 0.05     # similarity alone misleads
    queue = app.get("/api/review")
    assert queue[0]["id"] == between["id"]
    assert [q["result"]["confidence"] for q in queue] == sorted(q["result"]["confidence"] for q in queue)


def test_confidence_words_from_probability_or_threshold_and_margin():
    names = {11: "11", 32: "32"}.get

    def known(**kw):
        return {"answer": "known", "individual_id": 11, **kw}
    cands = lambda p1, p2: [{"individual_id": 11, "probability": p1}, {"individual_id": 32, "probability": p2}]
    assert confidence.words(known(probability=0.95, candidates=cands(0.95, 0.10)), names) == ("very likely 11", "sure")
    assert confidence.words(known(probability=0.80, candidates=cands(0.80, 0.70)), names)[0] == \
        "11 or 32 — please check"
    assert confidence.words(known(probability=0.60, candidates=cands(0.60, 0.05)), names)[0] == \
        "11 or 32 — please check"                                       # the top is in between
    new = {"answer": "unknown", "individual_id": None}
    # an unknown answer's probability is that of "none of them" (the gallery's P(unknown)), not the best's
    assert confidence.words(dict(new, probability=0.95, candidates=cands(0.04, 0.01)), names)[0] == \
        "probably an animal not seen before"
    assert confidence.words(dict(new, probability=0.55, candidates=cands(0.40, 0.01)), names)[0] == \
        "an animal not seen before, or 11 — please check"
    assert confidence.confidence(dict(new, probability=0.95, candidates=cands(0.04, 0.01))) == pytest.approx(0.9)
    two = [{"individual_id": 11}, {"individual_id": 32}]
    t = dict(threshold=0.70, candidates=two)
    assert confidence.words(known(similarity=0.90, margin=0.20, **t), names)[0] == "very likely 11"
    assert confidence.words(known(similarity=0.90, margin=0.01, **t), names)[0] == "11 or 32 — please check"
    assert confidence.words(known(similarity=0.72, margin=0.20, **t), names)[0] == \
        "11, or an animal not seen before — please check"
    assert confidence.words(dict(new, similarity=0.50, margin=0.1, **t), names)[0] == "probably an animal not seen before"
    assert confidence.words(dict(new, similarity=0.68, margin=0.1, **t), names)[1] == "check"
    assert confidence.words(known(similarity=0.99, margin=0.3, threshold=None, candidates=two), names) == \
        ("closest: 11 — not calibrated, please check", "uncalibrated")
    assert confidence.words({"answer": "background"}, names) == ("no animal (background)", "background")
    # the number the queue sorts by: a 0.1 % margin is less sure than a 30 % one, whatever the similarity
    assert confidence.confidence(known(similarity=0.999, margin=0.001, **t)) < \
        confidence.confidence(known(similarity=0.90, margin=0.30, **t))
    assert confidence.confidence(known(probability=0.55, candidates=cands(0.55, 0.5))) < \
        confidence.confidence(known(probability=0.99, candidates=cands(0.99, 0.01)))


def test_an_uncalibrated_gallery_says_so(tmp_path):
    a = App(tmp_path / "data", calibrated=False)
    try:
        s = a.get("/api/session")
        assert s["calibrated"] is False and s["calibrate_hint"] == "nabi gallery calibrate colour gallery"
        a.enrol("nabi", "A")
        assert a.identify("yellow")["result"]["words"] == "closest: A — not calibrated, please check"
    finally:
        a.close()


def test_the_clubs_fields_notes_and_lists(tmp_path):
    fields = tmp_path / "fields.toml"
    fields.write_text('[[field]]\nkey = "sex"\nlabel = "Sex"\ntype = "choice"\nchoices = ["female", "male"]\n\n'
                      '[[field]]\nkey = "horn_length"\nlabel = "Horn length (cm)"\ntype = "number"\n\n'
                      '[[field]]\nkey = "collared_on"\nlabel = "Collared on"\ntype = "date"\n', encoding="utf-8")
    a = App(tmp_path / "data", fields=load_fields(fields))
    try:
        assert [f["key"] for f in a.get("/api/session")["fields"]] == ["sex", "horn_length", "collared_on"]
        nyala = a.enrol("nabi", "N1")
        page = a.post(f"/api/individuals/{nyala}/details", notes="limps on the left hind leg",
                      fields={"sex": "male", "horn_length": "41.5", "collared_on": "2024-03-02"})
        assert page["fields"] == {"sex": "male", "horn_length": "41.5", "collared_on": "2024-03-02"}
        assert page["notes"] == "limps on the left hind leg"
        for body, needle in (({"collared_on": "2 March"}, "Collared on: a date is written YYYY-MM-DD"),
                             ({"sex": "other"}, "Sex: expected one of female, male"),
                             ({"weight": "3"}, "unknown field(s) weight")):
            r = a.c.post(f"/api/individuals/{nyala}/details", json={"fields": body})
            assert r.status_code == 422 and needle in r.json()["detail"]
        assert a.post(f"/api/individuals/{nyala}/details", fields={"horn_length": ""})["fields"] == \
            {"sex": "male", "collared_on": "2024-03-02"}                  # cleared
        log = a.get("/api/audit")
        assert log[0]["text"] == f"Updated N1 (#{nyala}): horn_length"
        assert log[1]["detail"]["changes"]["notes"] == {"old": "", "new": "limps on the left hind leg"}
        # lists: new this month, not seen for N days (EXIF times of 2019 are long ago)
        a.decide(a.identify("momo", exif=exif_with("2019:05:01 09:30:00")), "new", name="N2")
        from datetime import date
        month = date.today().replace(day=1).isoformat()
        assert {i["name"] for i in a.get("/api/individuals", new_since=month)} == {"N1"}
        assert {i["name"] for i in a.get("/api/individuals", not_seen_days=30)} == {"N2"}
        assert a.c.get("/api/individuals", params={"new_since": "May"}).status_code == 400
    finally:
        a.close()
    with pytest.raises(ValueError, match="type must be one of"):
        bad = tmp_path / "bad.toml"
        bad.write_text('[[field]]\nkey = "x"\ntype = "colour"\n')
        load_fields(bad)


def test_how_many_animals_from_the_sightings(app):
    ids = {c: app.enrol(c, c) for c in ("nabi", "momo", "yellow")}
    days = {"nabi": ["01", "02", "03"], "momo": ["01", "03"], "yellow": ["02"]}
    gps = {"01": (37.5894, 127.0325), "02": (37.5900, 127.0330), "03": (37.5894, 127.0325)}
    for colour, ds in days.items():
        for d in ds:
            p = app.identify(colour, exif=exif_with(f"2024:05:{d} 10:00:00", gps[d]))
            app.decide(p, "confirm")
    pop = app.get("/api/population", occasion="day", date_from="2024-05-01", date_to="2024-05-31")
    assert pop["occasions"] == ["2024-05-01", "2024-05-02", "2024-05-03"] and pop["individuals"] == 3
    assert pop["caught"] == [2, 2, 2] and pop["recaptured"] == [0, 1, 2] and pop["frequencies"] == [1, 1, 1]
    assert [e["method"] for e in pop["estimates"]] == ["Schnabel", "Chao M_h"]
    assert pop["estimates"][0]["n"] == pytest.approx((2 * 0 + 2 * 2 + 2 * 3) / 3)
    assert pop["estimates"][1]["n"] == pytest.approx(3 + 1 / 2)

    def table(layout, **kw):
        r = app.c.get("/api/capture-histories.csv", params={"layout": layout, "date_from": "2024-05-01", "date_to": "2024-05-31", **kw})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        return list(csv.DictReader(io.StringIO(r.text)))
    matrix = table("matrix")
    assert {int(r["individual_id"]): [r[d] for d in pop["occasions"]] for r in matrix} == \
        {ids["nabi"]: ["1", "1", "1"], ids["momo"]: ["1", "0", "1"], ids["yellow"]: ["0", "1", "0"]}
    assert {r["ch"] for r in table("rmark")} == {"111", "101", "010"} and {r["freq"] for r in table("rmark")} == {"1"}
    secr = table("secr")
    assert set(secr[0]) == {"Session", "ID", "Occasion", "Detector"} and len(secr) == 6
    dets = {r["Detector"]: r for r in table("detectors")}
    assert len(dets) == 2 and all(abs(float(r["x"])) < 100 and abs(float(r["y"])) < 100 for r in dets.values())
    cam = table("camtrapr")
    assert set(cam[0]) >= {"Station", "Species", "Individual", "DateTimeOriginal", "Date", "Time"}
    assert cam[0]["DateTimeOriginal"] == "2024-05-01 10:00:00" and cam[0]["Station"] in dets
    assert len(table("matrix", occasion="week")[0]) == 3                 # one week: id, name, one occasion
    assert app.c.get("/api/capture-histories.csv", params={"layout": "excel"}).status_code == 422


def test_a_backup_restored_in_a_fresh_folder_gives_identical_answers(tmp_path):
    a = App(tmp_path / "data")
    try:
        ids = [a.enrol(c, c) for c in ("nabi", "momo")]
        a.decide(a.identify("nabi"), "confirm")
        a.post("/api/individuals/merge", source_id=ids[1], target_id=ids[0])
        manifest = backup(tmp_path / "data", tmp_path / "backup", log=None)        # the server is running
        with pytest.raises(BackupError, match="already exists"):
            backup(tmp_path / "data", tmp_path / "backup", log=None)
        queries = [jpg(c) for c in ("nabi", "momo", "yellow")]
        before = [r["photo"]["result"] for r in upload(a.c, *[(f"{i}.jpg", q) for i, q in enumerate(queries)]).json()["results"]]
    finally:
        a.close()
    assert manifest["counts"]["photos"] == 3 and manifest["counts"]["enrolments"] == 3
    assert manifest["schema_version"] == 3 and not list((tmp_path / "backup").glob(".*partial*"))
    shutil.copytree(tmp_path / "backup", tmp_path / "restored")
    b = App(tmp_path / "restored")
    try:
        after = [r["photo"]["result"] for r in upload(b.c, *[(f"{i}.jpg", q) for i, q in enumerate(queries)]).json()["results"]]
        assert after == before
        assert b.get(f"/api/individuals/{ids[0]}")["count"] == 3
    finally:
        b.close()
    with pytest.raises(BackupError, match="holds no nabi serve database"):
        backup(tmp_path / "nothing", tmp_path / "b2", log=None)


def test_a_48_megapixel_photo_is_identified_through_a_working_copy(app):
    small = np.stack(np.broadcast_arrays(np.uint8(210), np.arange(80, dtype=np.uint8)[None, :] // 2,
                                         np.arange(60, dtype=np.uint8)[:, None] // 2), axis=-1)
    buf = io.BytesIO()
    Image.fromarray(small).resize((8000, 6000), Image.NEAREST).save(buf, format="JPEG", quality=70)
    assert len(buf.getvalue()) < 8 * 2**20
    r = upload(app.c, ("phone.jpg", buf.getvalue()))
    photo = r.json()["results"][0]["photo"]
    assert r.status_code == 200 and photo["working_copy"] and (photo["width"], photo["height"]) == (8000, 6000)
    original = app.c.get(photo["url"])
    assert original.content == buf.getvalue()                             # the original is kept as uploaded
    row = {"sha256": photo["sha256"], "format": "jpg", "work_width": 1}
    work = app.store.work_path(photo["sha256"])
    assert app.service.model_path(row) == work and work.is_file()        # what the model and thumbnails read
    with Image.open(work) as w:
        assert 2048 <= max(w.size) <= 4096
    thumb = Image.open(io.BytesIO(app.c.get(photo["thumb_url"]).content))
    assert max(thumb.size) == 384
