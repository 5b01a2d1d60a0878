"""nabi serve's JSON API against a running server on loopback, with a real HTTP client (httpx).

The classifier server runs as `nabi serve` in a subprocess; the gallery server (new individuals join at once)
runs uvicorn in a thread over a real in-memory re-identification gallery whose embedder is a stand-in for the
network (a photo's mean colour).
"""
import csv
import io
import sqlite3
import struct
import sys
import zlib

import httpx
import pytest
from PIL import Image

from nabi.cli import main
from nabi.serve.app import Settings, create_app
from nabi.serve.service import Service
from nabi.serve.storage import Store

from serve_support import (COLOURS, OTHER_COLOURS, Server, ThreadServer, client, colour_identifier, exif_with,
                           photo_bytes, shared_run, upload)

LIMITS = ["--max-upload-mb", "0.25", "--max-pixels", "4000000", "--max-files", "4"]
_seed = iter(range(10_000, 10**6))


def jpg(name="nabi", **kw):
    """A fresh photo of ``name``'s colour (never the same bytes twice)."""
    return photo_bytes({**COLOURS, **OTHER_COLOURS}[name], seed=next(_seed), **kw)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return shared_run(tmp_path_factory)


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    with Server(run, tmp_path_factory.mktemp("serve_api") / "data", extra=LIMITS) as s:
        yield s


@pytest.fixture
def c(server):
    with client(server) as cl:
        yield cl


def identify_one(c, name="nabi", **kw):
    r = upload(c, (f"{name}.jpg", jpg(name, **kw)))
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    assert res["ok"], res
    return res["photo"]


def decide(c, photo_id, action, **kw):
    return c.post("/api/decisions", json={"photo_id": photo_id, "action": action, **kw})


def _name(x):
    return None if x is None else x["name"]


def test_session_pages_and_openapi(c):
    s = c.get("/api/session").json()
    assert s["token_required"] is False and s["identifier"]["kind"] == "classifier" and not s["can_enrol_new"]
    assert s["calibrated"] is True and [f["key"] for f in s["fields"]][:2] == ["sex", "age_class"]
    schema = c.get("/api/openapi.json").json()
    for path in ("/api/identify", "/api/decisions", "/api/individuals", "/api/individuals/merge",
                 "/api/individuals/{individual_id}/rename", "/api/individuals/{individual_id}/details",
                 "/api/photos/{photo_id}/undo", "/api/photos/{photo_id}/move", "/api/photos/{photo_id}/thumb",
                 "/api/sightings", "/api/sightings.csv", "/api/review", "/api/audit", "/api/signin"):
        assert path in schema["paths"], path
    for path, method in (("/api/review", "get"), ("/api/decisions", "post"), ("/api/individuals/{individual_id}", "get"),
                         ("/api/audit", "get"), ("/api/identify", "post")):      # every answer documented by a model
        answer = schema["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        assert "$ref" in answer or "$ref" in answer.get("items", {}), (path, answer)
        assert "404" in schema["paths"][path][method]["responses"]
    assert {"Photo", "Answer", "Candidate", "DecisionResult", "Individual", "AuditEntry", "Problem"} <= \
        set(schema["components"]["schemas"])
    for page in ("/", "/review", "/individuals", "/individuals/1", "/photos/1", "/sightings", "/map", "/population",
                 "/changes", "/signin"):
        r = c.get(page)
        assert r.status_code == 200 and "<script src=\"/static/" in r.text and "<noscript>" in r.text, page
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert "http" not in r.text.replace("http-equiv", "")          # nothing from another server
    assert c.get("/static/nabi.css").status_code == 200 and c.get("/docs").status_code == 404


def test_identify_several_then_confirm_background_and_not_identifiable(c, server):
    r = upload(c, ("a.jpg", jpg("nabi")), ("b.png", jpg("background", fmt="PNG")), ("c.webp", jpg("momo", fmt="WEBP")))
    assert r.status_code == 200
    photos = [x["photo"] for x in r.json()["results"]]
    answers = [(p["result"]["answer"], _name(p["result"]["individual"])) for p in photos]
    assert answers == [("known", "nabi"), ("background", None), ("known", "momo")]
    nabi = photos[0]
    assert [c_["individual"]["name"] for c_ in nabi["result"]["candidates"]] == ["nabi", "momo"]
    assert nabi["result"]["words"] in ("very likely nabi", "nabi or momo — please check",
                                       "nabi, or an animal not seen before — please check")
    assert photos[1]["result"]["words"] == "no animal (background)"
    assert nabi["status"] == "pending" and nabi["heatmap_url"]
    thumb = c.get(nabi["thumb_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 384
    img = c.get(nabi["url"])
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg" and img.content[:2] == b"\xff\xd8"
    heat = c.get(nabi["heatmap_url"])
    assert heat.status_code == 200 and heat.content[:4] == b"\x89PNG"

    before = c.get("/api/individuals").json()
    d = decide(c, nabi["id"], "confirm")
    assert d.status_code == 200 and d.json()["sighting_id"] is not None
    assert d.json()["photo"]["decision"]["individual"]["name"] == "nabi"
    d = decide(c, photos[1]["id"], "confirm")
    assert d.status_code == 200 and d.json()["sighting_id"] is None
    assert d.json()["photo"]["decision"]["action"] == "background"
    d = decide(c, photos[2]["id"], "not_identifiable")
    assert d.status_code == 200 and d.json()["sighting_id"] is None
    queue = {p["id"] for p in c.get("/api/review").json()}
    assert not queue & {p["id"] for p in photos}
    after = {i["name"]: i for i in c.get("/api/individuals").json()}
    assert after["nabi"]["sightings"] == {i["name"]: i for i in before}["nabi"]["sightings"] + 1
    assert after["nabi"]["last_seen"] is not None
    mine = [s for s in c.get("/api/sightings").json() if s["photo_id"] == nabi["id"]]
    assert len(mine) == 1 and mine[0]["name"] == "nabi" and mine[0]["time_source"] == "upload"
    # the confirmed photo is now nabi's closest photo in the next answer
    nxt = identify_one(c, "nabi")
    assert nxt["result"]["candidates"][0]["photo_url"] is not None


def test_another_individual_from_the_list(c):
    p = identify_one(c, "nabi")
    momo = {i["name"]: i["id"] for i in c.get("/api/individuals").json()}["momo"]
    d = decide(c, p["id"], "other", individual_id=momo)
    assert d.status_code == 200 and d.json()["photo"]["decision"]["individual"]["name"] == "momo"
    again = decide(c, p["id"], "confirm")
    assert again.status_code == 409 and "undo that decision or move" in again.json()["detail"]      # decided once
    assert decide(c, identify_one(c)["id"], "other").status_code == 422     # no individual picked
    assert decide(c, identify_one(c)["id"], "other", individual_id=999).status_code == 404


def test_review_queue_is_least_sure_first(c):
    for name in ("nabi", "momo", "background", "nabi"):
        identify_one(c, name)
    queue = c.get("/api/review").json()
    sure = [p["result"]["confidence"] for p in queue]
    assert len(queue) >= 4 and sure == sorted(sure)


def test_new_individual_is_refused_for_a_classifier(c):
    d = decide(c, identify_one(c, "momo")["id"], "new", name="뾰또")
    assert d.status_code == 409 and "re-identification gallery" in d.json()["detail"]


def test_sightings_time_place_filters_and_csv(c):
    ex = exif_with("2019:05:01 09:30:00", (37.5894, 127.0325))
    a = identify_one(c, "momo", exif=ex)
    assert a["taken_at"] == "2019-05-01T09:30:00" and a["latitude"] == pytest.approx(37.5894, abs=1e-4)
    assert decide(c, a["id"], "confirm", place="ignored: GPS wins").status_code == 200
    b = identify_one(c, "momo", exif=exif_with("2019:06:02 18:00:00"))
    assert decide(c, b["id"], "confirm", place="=HYPERLINK(\"x\")").status_code == 200
    momo = {i["name"]: i["id"] for i in c.get("/api/individuals").json()}["momo"]
    rows = c.get("/api/sightings", params={"individual": momo, "date_from": "2019-05-01",
                                           "date_to": "2019-05-31"}).json()
    assert [r["photo_id"] for r in rows] == [a["id"]]
    assert rows[0]["time"] == "2019-05-01T09:30:00" and rows[0]["time_source"] == "exif"
    assert rows[0]["latitude"] == pytest.approx(37.5894, abs=1e-4)
    assert c.get("/api/sightings", params={"date_from": "May 1"}).status_code == 400
    r = c.get("/api/sightings.csv", params={"individual": momo, "date_from": "2019-01-01", "date_to": "2019-12-31"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert [int(t["photo_id"]) for t in table] == [b["id"], a["id"]]           # newest first
    assert table[1]["individual"] == "momo" and table[1]["time"] == "2019-05-01T09:30:00"
    assert float(table[1]["latitude"]) == pytest.approx(37.5894, abs=1e-4)
    assert table[0]["place"] == "'=HYPERLINK(\"x\")"                            # not a formula in a spreadsheet


def test_rename_merge_and_the_audit_log(c):
    ids = {i["name"]: i["id"] for i in c.get("/api/individuals").json()}
    p = identify_one(c, "momo")
    assert decide(c, p["id"], "confirm").status_code == 200
    r = c.post(f"/api/individuals/{ids['nabi']}/rename", json={"name": "나비"})
    assert r.status_code == 200 and r.json()["name"] == "나비"
    assert c.post(f"/api/individuals/{ids['momo']}/rename", json={"name": "  나비 "}).status_code == 409
    bad = c.post(f"/api/individuals/{ids['momo']}/rename", json={"name": "momo\x00"})
    assert bad.status_code == 422 and "control characters" in bad.json()["detail"]
    # a classifier keeps its class: the next nabi photo is answered with the new name
    assert identify_one(c, "nabi")["result"]["individual"]["name"] == "나비"
    n_momo = c.get(f"/api/individuals/{ids['momo']}").json()["count"]
    n_nabi = c.get(f"/api/individuals/{ids['nabi']}").json()["count"]
    m = c.post("/api/individuals/merge", json={"source_id": ids["momo"], "target_id": ids["nabi"]})
    assert m.status_code == 200 and m.json()["count"] == n_momo + n_nabi
    assert [x["name"] for x in m.json()["merged_from"]] == ["momo"]
    assert c.get(f"/api/individuals/{ids['momo']}").json()["merged_into"] == {"id": ids["nabi"], "name": "나비"}
    assert "momo" not in {i["name"] for i in c.get("/api/individuals").json()}
    q = identify_one(c, "momo")["result"]
    assert q["individual"] == {"id": ids["nabi"], "name": "나비"}
    assert [x["individual"]["name"] for x in q["candidates"]] == ["나비"]
    again = c.post("/api/individuals/merge", json={"source_id": ids["momo"], "target_id": ids["nabi"]})
    assert again.status_code == 409 and "was merged into" in again.json()["detail"]
    audit = c.get("/api/audit").json()
    kinds = [a["action"] for a in audit]
    assert "individual.renamed" in kinds and "individual.merged" in kinds
    merged = next(a for a in audit if a["action"] == "individual.merged")["detail"]
    assert merged["source"] == "momo" and merged["target"] == "나비" and merged["sightings_moved"] == n_momo
    renamed = next(a for a in audit if a["action"] == "individual.renamed")
    assert renamed["detail"] == {"individual_id": ids["nabi"], "old": "nabi", "new": "나비"}
    assert renamed["text"] == f"Renamed #{ids['nabi']} from nabi to 나비"


def _png_header_only(width, height):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 4096, 9)) + chunk(b"IEND", b""))


def test_photos_of_one_sighting_are_answered_together(c, run, tmp_path):
    """``together``: two photos of one sighting get one answer, from both: the classifier's probabilities
    averaged over the photos (computed here by the same identifier on the same bytes), and each answer says
    how many photos it came from. Without it, each photo is answered alone."""
    import numpy as np
    from nabi.serve.identifiers import ClassifierIdentifier
    data = {"nabi.jpg": jpg("nabi"), "momo.jpg": jpg("momo")}
    r = c.post("/api/identify", files=[("files", (n, b, "image/jpeg")) for n, b in data.items()],
               data={"together": "true"})
    assert r.status_code == 200, r.text
    a, b = (x["photo"]["result"] for x in r.json()["results"])
    assert a["sighting_photos"] == b["sighting_photos"] == 2
    assert (a["answer"], _name(a["individual"]), a["similarity"]) == (b["answer"], _name(b["individual"]), b["similarity"])
    assert [_name(x["individual"]) for x in a["candidates"]] == [_name(x["individual"]) for x in b["candidates"]]
    paths = []
    for n, b_ in data.items():
        (tmp_path / n).write_bytes(b_)
        paths.append(tmp_path / n)
    ident = ClassifierIdentifier(run)
    mean = ident.probabilities(paths).mean(axis=0)
    order = [i for i in np.argsort(-mean) if ident.classes[i] != "background"]
    assert a["candidates"][0]["similarity"] == pytest.approx(float(mean[order[0]]), abs=1e-5)     # the best
    alone = [x["photo"]["result"] for x in upload(c, ("one.jpg", jpg("nabi")), ("two.jpg", jpg("momo"))).json()["results"]]
    assert [x["sighting_photos"] for x in alone] == [None, None]
    assert alone[0]["similarity"] != alone[1]["similarity"]         # each photo answered by itself


def test_upload_refusals(c, server):
    big = photo_bytes(COLOURS["nabi"], size=(600, 500), fmt="PNG")            # noise compresses badly: ~0.9 MB
    assert len(big) > 0.25 * 2**20
    cases = [(("big.png", big), 413, "the limit is 262,144 bytes"),
             (("bomb.png", _png_header_only(20_000, 20_000)), 413, "refused as a decompression bomb"),
             (("wide.png", _png_header_only(3_000, 3_000)), 413, "9,000,000 pixels; the limit is 4,000,000"),
             (("notes.jpg", b"these are my field notes, not a photo\n" * 20), 415, "not a JPEG, PNG or WebP"),
             (("../../../etc/passwd", b"root:x:0:0:root:/root:/bin/bash\n"), 415, "passwd is not a JPEG")]
    for (name, data), status, needle in cases:
        r = upload(c, (name, data))
        assert r.status_code == status, r.text
        assert needle in r.json()["results"][0]["error"]
    assert not list((server.data / "photos").rglob("*passwd*"))
    n_photos = c.get("/api/status").json()["counts"]["photos"]
    dup = jpg("nabi")
    r = upload(c, ("one.jpg", dup), ("two.jpg", dup))
    assert r.status_code == 200 and [x["ok"] for x in r.json()["results"]] == [True, False]
    assert "same photo as one.jpg" in r.json()["results"][1]["error"]
    r = upload(c, ("again.jpg", dup))
    assert r.status_code == 409 and "already uploaded" in r.json()["results"][0]["error"]
    assert c.get("/api/status").json()["counts"]["photos"] == n_photos + 1
    r = upload(c, *[(f"{i}.jpg", jpg()) for i in range(5)])
    assert r.status_code == 413 and "at most 4" in r.json()["detail"]
    body = b'{"photo_id": 1, "action": "confirm", "place": "' + b"x" * 200_000 + b'"}'
    r = c.post("/api/decisions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than 65,536 bytes" in r.json()["detail"]     # by Content-Length
    r = c.post("/api/decisions", content=iter([body[i:i + 8192] for i in range(0, len(body), 8192)]),
               headers={"content-type": "application/json"})                           # chunked: counted
    assert r.status_code == 413 and "larger than 65,536 bytes" in r.json()["detail"]


def test_writes_need_the_csrf_token_and_this_origin(server):
    with httpx.Client(base_url=server.url, timeout=30) as bare:
        r = bare.post("/api/identify", files=[("files", ("a.jpg", jpg(), "image/jpeg"))])
        assert r.status_code == 403 and "X-CSRF-Token" in r.json()["detail"]
        assert bare.post("/api/individuals/merge", json={"source_id": 1, "target_id": 2}).status_code == 403
    with client(server) as cl:
        r = cl.post("/api/individuals/1/rename", json={"name": "x"}, headers={"origin": "http://evil.example"})
        assert r.status_code == 403 and "cross-site" in r.json()["detail"]
        r = cl.get("/api/session", headers={"host": "rebound.example:8000"})
        assert r.status_code == 421                                        # DNS rebinding: unknown host


def test_bad_requests_are_clear(c):
    assert decide(c, 10**6, "confirm").status_code == 404
    r = decide(c, identify_one(c)["id"], "adopt")
    assert r.status_code == 422 and "action must be one of" in r.json()["detail"]
    assert c.get("/api/photos/999999/image").status_code == 404
    assert c.get("/api/gallery-photos/../../etc/passwd").status_code == 404


def _token_checks(cl, token):
    del cl.headers["Authorization"]
    p = upload(cl, ("t.jpg", jpg()))
    assert p.status_code == 401 and "token" in p.json()["detail"]
    cl.headers["Authorization"] = "Bearer wrong-token-123456"
    assert upload(cl, ("t.jpg", jpg())).status_code == 401
    cl.headers["Authorization"] = f"Bearer {token}"
    r = upload(cl, ("t.jpg", jpg()))
    assert r.status_code == 200
    pid = r.json()["results"][0]["photo"]["id"]
    assert cl.get(f"/api/photos/{pid}/image").status_code == 200
    del cl.headers["Authorization"]
    for call in (lambda: decide(cl, pid, "confirm"), lambda: cl.delete(f"/api/photos/{pid}"),
                 lambda: cl.post("/api/individuals/1/rename", json={"name": "z"}),
                 lambda: cl.post("/api/individuals/merge", json={"source_id": 1, "target_id": 2})):
        assert call().status_code == 401
    # reads too: photos, GPS positions, the CSV, the session — everything but the sign-in page
    for path in ("/api/individuals", f"/api/photos/{pid}/image", f"/api/photos/{pid}/thumb", "/api/sightings",
                 "/api/sightings.csv", "/api/session", "/api/audit", "/api/openapi.json"):
        r = cl.get(path)
        assert r.status_code == 401 and "token" in r.json()["detail"], path
    page = cl.get("/individuals", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/signin?next=/individuals"
    assert cl.get("/signin").status_code == 200 and cl.get("/static/nabi.css").status_code == 200
    # signing in gives a cookie the pages and photos carry
    assert cl.post("/api/signin", json={"token": "wrong-token-123456"}).status_code == 401
    signed = cl.post("/api/signin", json={"token": token})
    assert signed.status_code == 200 and "httponly" in signed.headers["set-cookie"].lower()
    assert "samesite=strict" in signed.headers["set-cookie"].lower()
    assert cl.get(f"/api/photos/{pid}/image").status_code == 200 and cl.get("/individuals").status_code == 200
    assert cl.delete(f"/api/photos/{pid}").status_code == 200
    cl.cookies.clear()
    assert cl.get("/api/individuals").status_code == 401


def test_token_required_when_forced_on_loopback(run, tmp_path):
    """The setting that forces "not loopback" mode (--require-token) on 127.0.0.1."""
    token = "forced-mode-token-0123"
    with Server(run, tmp_path / "data", extra=["--require-token", "--token", token]) as s, client(s, token) as cl:
        assert cl.get("/api/session").json()["token_required"] is True
        _token_checks(cl, token)


def test_token_required_when_listening_beyond_loopback(run, tmp_path):
    """The server bound to every address (0.0.0.0, so reachable from the network) requires the token;
    the test talks to it over loopback only."""
    token = "network-token-0123456"
    with Server(run, tmp_path / "data", host="0.0.0.0", env={"NABI_SERVE_TOKEN": token}) as s, client(s, token) as cl:
        assert cl.get("/api/session").json()["token_required"] is True
        _token_checks(cl, token)


def test_non_loopback_without_a_token_prints_one(run, tmp_path):
    s = Server(run, tmp_path / "data", host="0.0.0.0").start()
    try:
        printed = s.log.read_text()
        token = printed.split("printed here once): ", 1)[1].split()[0]
        with client(s, token=token) as cl:
            assert upload(cl, ("t.jpg", jpg())).status_code == 200
    finally:
        s.stop()


# -- a gallery: new individuals join at once -----------------------------------------------------------------
@pytest.fixture
def gallery_server(tmp_path):
    store = Store(tmp_path / "data")
    service = Service(store, colour_identifier(), max_bytes=2**20, max_pixels=10**6)
    try:
        with ThreadServer(create_app(service, Settings())) as s:
            yield s, service, store
    finally:
        store.close()


def test_gallery_new_individual_joins_at_once_rename_merge(gallery_server):
    s, service, store = gallery_server
    with client(s) as cl:
        first = identify_one(cl, "nabi")
        assert first["result"]["answer"] == "unknown" and first["result"]["candidates"] == []
        assert first["result"]["words"] == "an animal not seen before (nobody is enrolled yet)"
        bad = decide(cl, first["id"], "new", name="  ")
        assert bad.status_code == 422 and "is empty" in bad.json()["detail"]
        d = decide(cl, first["id"], "new", name="나비")
        assert d.status_code == 200 and d.json()["photo"]["decision"]["action"] == "new"
        nabi_id = d.json()["photo"]["decision"]["individual"]["id"]
        assert service.identifier.served._added.keys() == {first["id"]}      # enrolled: its kept embedding
        second = identify_one(cl, "nabi")
        assert second["result"]["answer"] == "known" and second["result"]["individual"]["name"] == "나비"
        assert second["result"]["words"] == "very likely 나비"
        assert second["result"]["candidates"][0]["photo_url"] == first["url"]   # its closest photo
        assert decide(cl, second["id"], "confirm").status_code == 200
        yellow = identify_one(cl, "yellow")                # an animal not seen before
        assert yellow["result"]["answer"] == "unknown"
        assert yellow["result"]["words"] == "probably an animal not seen before"
        dup = decide(cl, yellow["id"], "new", name="나비")
        assert dup.status_code == 409 and "already taken" in dup.json()["detail"]
        assert decide(cl, yellow["id"], "new", name="yellow").status_code == 200
        ids = {i["name"]: i["id"] for i in cl.get("/api/individuals").json()}
        assert cl.post(f"/api/individuals/{ids['yellow']}/rename", json={"name": "Yellow"}).status_code == 200
        again = identify_one(cl, "yellow")["result"]
        assert again["individual"] == {"id": ids["yellow"], "name": "Yellow"}      # renamed: the search is untouched
        m = cl.post("/api/individuals/merge", json={"source_id": ids["yellow"], "target_id": nabi_id})
        assert m.status_code == 200 and m.json()["count"] == 3
        assert identify_one(cl, "yellow")["result"]["closest"] == {"id": nabi_id, "name": "나비"}
        assert cl.get(f"/api/photos/{first['id']}/heatmap").status_code == 404     # no heat-map from mean colours
    db = sqlite3.connect(store.db_path)
    assert db.execute("SELECT COUNT(*) FROM sightings").fetchone()[0] == 3
    assert db.execute("SELECT COUNT(*) FROM enrolments WHERE individual_id = ?", (nabi_id,)).fetchone()[0] == 3
    db.close()


def test_serve_names_the_extra_when_fastapi_is_missing(run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastapi", None)
    assert main(["serve", str(run)]) == 1
    assert 'pip install "nabi[serve]"' in capsys.readouterr().err


def test_serve_argument_errors(run, tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["serve", str(run), "--port", "70000"]) == 1
    assert "--port must be" in capsys.readouterr().err
    assert main(["serve", str(run), "--threshold", "2"]) == 1
    assert "--threshold must be a finite number in [0, 1]" in capsys.readouterr().err


def test_serve_backup_from_the_command_line(tmp_path, capsys):
    store = Store(tmp_path / "data")
    try:
        service = Service(store, colour_identifier(), max_bytes=2**20, max_pixels=10**6)
        (res,) = service.identify([("a.jpg", jpg("nabi"))])
        service.decide(res.photo.id, "new", name="나비")
        assert main(["serve", "--data", str(tmp_path / "data"), "--backup", str(tmp_path / "b")]) == 0  # server open
    finally:
        store.close()
    assert "backed up" in capsys.readouterr().out
    assert (tmp_path / "b" / "backup.json").is_file() and len(list((tmp_path / "b" / "photos").rglob("*.jpg"))) == 1
    assert main(["serve", "--data", str(tmp_path / "data"), "--backup", str(tmp_path / "b")]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["serve", "--data", str(tmp_path / "data")]) == 1
    assert "give the gallery or run to serve" in capsys.readouterr().err


@pytest.mark.slow
def test_a_real_gallery_served_backed_up_and_restored(run, tmp_path):
    """`nabi serve GALLERY` over a gallery built with a real network: its start says it is not calibrated; the
    photos it enrols stay in the data folder (the gallery is never written); `nabi serve --backup` while it
    runs; the backup served from a fresh folder answers new photos exactly as the original did."""
    from nabi.reid.gallery import Gallery
    folder = tmp_path / "cats"
    for name in ("nabi", "momo"):
        (folder / name).mkdir(parents=True)
        for i in range(3):
            (folder / name / f"{i}.jpg").write_bytes(jpg(name))
    Gallery.build(run, folder, tmp_path / "gallery")
    index = (tmp_path / "gallery" / "index.json").read_bytes()
    queries = [("q1.jpg", jpg("nabi")), ("q2.jpg", jpg("momo")), ("q3.jpg", jpg("yellow"))]
    with Server(tmp_path / "gallery", tmp_path / "data") as s, client(s) as cl:
        assert "the gallery is not calibrated" in s.log.read_text()
        new = identify_one(cl, "yellow")
        assert decide(cl, new["id"], "new", name="Yellow").status_code == 200
        assert decide(cl, identify_one(cl, "nabi")["id"], "confirm").status_code == 200
        done = __import__("subprocess").run([sys.executable, "-m", "nabi", "serve", "--data", str(tmp_path / "data"),
                                             "--backup", str(tmp_path / "backup")], capture_output=True, text=True,
                                            env=s.env)
        assert done.returncode == 0, done.stderr
        before = [r["photo"]["result"] for r in upload(cl, *queries).json()["results"]]
    assert (tmp_path / "gallery" / "index.json").read_bytes() == index                 # read only
    __import__("shutil").copytree(tmp_path / "backup", tmp_path / "restored")
    with Server(tmp_path / "gallery", tmp_path / "restored") as s, client(s) as cl:
        after = [r["photo"]["result"] for r in upload(cl, *queries).json()["results"]]
    assert after == before and before[2]["individual"]["name"] == "Yellow"
