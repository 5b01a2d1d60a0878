"""nabi serve under load and under a kill: concurrent clients never lose a decision or a sighting.

- Load: 8 concurrent clients send 200 identify requests and 50 decisions to a server on loopback, within a
  time bound; afterwards every photo, decision and sighting is in the database. The latencies (p50, p95)
  are written to ``tmp/artifacts/serve_load.json``; they are reported, not asserted.
- Kill: the server is killed with SIGKILL in the middle of a burst of decisions and started again; the
  database opens clean, and every decision the server acknowledged is there with its sighting.
"""
import json
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from serve_support import ARTIFACTS, COLOURS, Server, client, photo_bytes, shared_run, upload

CLIENTS, IDENTIFIES, DECISIONS = 8, 200, 50


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return shared_run(tmp_path_factory)


def _db_counts(db_path):
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("photos", "decisions", "sightings")}
    finally:
        db.close()


def test_eight_clients_identify_and_decide_at_once(run, tmp_path):
    names = list(COLOURS)
    photos = [photo_bytes(COLOURS[names[i % 3]], seed=20_000 + i) for i in range(IDENTIFIES)]
    work = list(range(IDENTIFIES))
    lock = threading.Lock()
    latencies = {"identify": [], "decision": []}
    decided, errors = [], []

    with Server(run, tmp_path / "data") as server:
        individuals = {i["name"]: i["id"] for i in httpx.get(server.url + "/api/individuals").json()}

        def worker(k):
            with client(server) as c:
                while True:
                    with lock:
                        if not work:
                            return
                        i = work.pop()
                    t = time.perf_counter()
                    r = upload(c, (f"{i}.jpg", photos[i]))
                    with lock:
                        latencies["identify"].append(time.perf_counter() - t)
                    if r.status_code != 200 or not r.json()["results"][0]["ok"]:
                        errors.append(("identify", i, r.status_code, r.text[:200]))
                        continue
                    photo = r.json()["results"][0]["photo"]
                    with lock:
                        mine = len(decided) + sum(1 for e in errors if e[0] == "decision") < DECISIONS and i % 4 == 0
                        if mine:
                            decided.append(None)
                    if not mine:
                        continue
                    if photo["result"]["answer"] == "known":
                        body = {"action": "confirm"}
                    else:
                        body = {"action": "other", "individual_id": individuals["momo"]}
                    t = time.perf_counter()
                    d = c.post("/api/decisions", json={"photo_id": photo["id"], "request_id": f"load-{i}", **body})
                    with lock:
                        latencies["decision"].append(time.perf_counter() - t)
                        if d.status_code == 200 and d.json()["sighting_id"] is not None:
                            decided[decided.index(None)] = photo["id"]
                        else:
                            decided.remove(None)
                            errors.append(("decision", i, d.status_code, d.text[:200]))

        start = time.perf_counter()
        with ThreadPoolExecutor(CLIENTS) as pool:
            for f in [pool.submit(worker, k) for k in range(CLIENTS)]:
                f.result(timeout=300)
        wall = time.perf_counter() - start
        assert errors == []
        assert wall < 240, f"the load took {wall:.0f} s"
        with client(server) as c:
            status = c.get("/api/status").json()["counts"]
    assert len(decided) == DECISIONS and None not in decided
    assert status["photos"] == IDENTIFIES and status["decisions"] == DECISIONS and status["sightings"] == DECISIONS
    assert _db_counts(server.data / "nabi.sqlite3") == {"photos": IDENTIFIES, "decisions": DECISIONS,
                                                        "sightings": DECISIONS}
    db = sqlite3.connect(server.data / "nabi.sqlite3")
    assert sorted(r[0] for r in db.execute("SELECT photo_id FROM sightings")) == sorted(decided)
    db.close()
    report = {"clients": CLIENTS, "wall_s": round(wall, 2)}
    for kind, xs in latencies.items():
        xs = np.asarray(xs) * 1000
        report[kind] = {"n": int(xs.size), "p50_ms": round(float(np.percentile(xs, 50)), 1),
                        "p95_ms": round(float(np.percentile(xs, 95)), 1), "max_ms": round(float(xs.max()), 1)}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "serve_load.json").write_text(json.dumps(report, indent=2) + "\n")
    print("load:", json.dumps(report))


def test_sigkill_during_a_burst_of_decisions_loses_nothing_acknowledged(run, tmp_path):
    data = tmp_path / "data"
    n = 60
    server = Server(run, data).start()
    try:
        with client(server) as c:
            ids = []
            for start in range(0, n, 10):
                r = upload(c, *[(f"{i}.jpg", photo_bytes(COLOURS["nabi"], seed=30_000 + i))
                                for i in range(start, start + 10)])
                ids += [x["photo"]["id"] for x in r.json()["results"]]
        assert len(ids) == n
        acked, lock = [], threading.Lock()
        todo = list(ids)

        def burst():
            with client(server) as c:
                while True:
                    with lock:
                        if not todo:
                            return
                        pid = todo.pop(0)
                    try:
                        r = c.post("/api/decisions", json={"photo_id": pid, "action": "confirm",
                                                           "request_id": f"kill-{pid}"}, timeout=20)
                    except httpx.HTTPError:
                        return                          # the server is gone
                    if r.status_code == 200:
                        with lock:
                            acked.append(pid)

        threads = [threading.Thread(target=burst) for _ in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(acked) < 15 and time.monotonic() < deadline:
            time.sleep(0.005)
        server.kill()                                   # SIGKILL, mid-burst
        for t in threads:
            t.join(30)
        assert 15 <= len(acked) < n, f"{len(acked)} acknowledged: the kill was not mid-burst"
    finally:
        server.kill()

    with Server(run, data) as again:                   # the folder lock died with the process; WAL recovers
        counts = _db_counts(data / "nabi.sqlite3")
        db = sqlite3.connect(data / "nabi.sqlite3")
        kept = {r[0] for r in db.execute("SELECT d.photo_id FROM decisions d JOIN sightings s "
                                         "ON s.photo_id = d.photo_id WHERE d.request_id LIKE 'kill-%'")}
        db.close()
        assert set(acked) <= kept                      # nothing acknowledged is lost
        assert counts["photos"] == n and counts["decisions"] == counts["sightings"] == len(kept)
        with client(again) as c:                        # retrying every decision lands each exactly once
            for pid in ids:
                r = c.post("/api/decisions", json={"photo_id": pid, "action": "confirm", "request_id": f"kill-{pid}"})
                assert r.status_code == 200
                assert r.json()["repeated"] == (pid in kept)
    assert _db_counts(data / "nabi.sqlite3") == {"photos": n, "decisions": n, "sightings": n}
    (ARTIFACTS / "serve_kill.json").write_text(json.dumps(
        {"photos": n, "acknowledged_before_kill": len(acked), "committed_before_kill": len(kept)}) + "\n")


class _Watched:
    """Wraps the served gallery: counts callers inside it at once (each call lingers a little to let overlaps
    happen)."""

    def __init__(self, gallery):
        self.gallery, self.inside, self.most = gallery, 0, 0
        self.guard = threading.Lock()

    def __getattr__(self, name):
        method = getattr(self.gallery, name)
        if not callable(method):
            return method

        def watched(*args, **kwargs):
            with self.guard:
                self.inside += 1
                self.most = max(self.most, self.inside)
            try:
                time.sleep(0.002)
                return method(*args, **kwargs)
            finally:
                with self.guard:
                    self.inside -= 1
        return watched


def test_one_caller_at_a_time_in_the_gallery_while_clients_enrol(tmp_path):
    """8 clients identify and enrol new individuals in a gallery at once: the gallery is never entered by two
    requests together, and every enrolment, decision and sighting is there afterwards."""
    from nabi.serve.app import Settings, create_app
    from nabi.serve.service import Service
    from nabi.serve.storage import Store
    from serve_support import ThreadServer, colour_identifier

    ident = colour_identifier(threshold=0.9999)
    gallery = ident.served = _Watched(ident.served)
    store = Store(tmp_path / "data")
    service = Service(store, ident, max_bytes=2**20, max_pixels=10**6)
    per_client = 5
    failures = []
    try:
        with ThreadServer(create_app(service, Settings())) as server:
            def worker(k):
                with client(server) as c:
                    for j in range(per_client):
                        r = upload(c, (f"{k}-{j}.jpg", photo_bytes(COLOURS["nabi"], seed=40_000 + 100 * k + j)))
                        photo = r.json()["results"][0]["photo"]
                        d = c.post("/api/decisions", json={"photo_id": photo["id"], "action": "new",
                                                           "name": f"cat {k}-{j}"})
                        if d.status_code != 200:
                            failures.append(d.text)

            with ThreadPoolExecutor(CLIENTS) as pool:
                for f in [pool.submit(worker, k) for k in range(CLIENTS)]:
                    f.result(timeout=120)
        assert failures == []
        assert gallery.most == 1                                  # never two requests inside the gallery at once
        n = CLIENTS * per_client
        assert len(gallery.gallery._added) == n and len({k for k, _, _ in gallery.gallery._added.values()}) == n
        assert service.counts()["sightings"] == n and service.counts()["decisions"] == n
    finally:
        store.close()
