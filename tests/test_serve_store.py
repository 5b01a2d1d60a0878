"""nabi serve without HTTP: the data folder (schema versions, migration, folder lock), upload checks, names."""
import io
import sqlite3
import struct
import unicodedata
import zlib

import pytest
from PIL import Image

from nabi.serve import storage
from nabi.serve.storage import Store, StoreError
from nabi.serve.uploads import UploadRefused, check_photo, clean_name, display_name, name_key

from serve_support import COLOURS, exif_with, photo_bytes

MB = 2**20


def test_new_folder_is_wal_at_the_current_schema(tmp_path):
    store = Store(tmp_path / "d")
    try:
        assert store.schema_version == storage.SCHEMA_VERSION == 3
        assert store.read().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.migrated_from == 0
        tables = {r[0] for r in store.read().execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"individuals", "labels", "photos", "sightings", "decisions", "audit", "enrolments", "sources",
                "individual_fields", "retired_ids"} <= tables
    finally:
        store.close()


def test_a_version_1_database_migrates_forward_keeping_its_rows(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    conn = sqlite3.connect(root / storage.DB_NAME, isolation_level=None)
    storage.migrate(conn, target=1)
    conn.execute("INSERT INTO individuals (name, name_key, created_at) "
                 "VALUES ('뾰또', '뾰또', '2019-05-01T00:00:00Z')")
    conn.execute("INSERT INTO photos (sha256, format, width, height, bytes, uploaded_at) "
                 "VALUES (?, 'jpg', 4, 4, 10, '2019-05-01T00:00:00Z')", ("a" * 64,))
    conn.execute("INSERT INTO decisions (photo_id, action, individual_id, created_at) VALUES (1, 'confirm', 1, 'x')")
    conn.execute("INSERT INTO labels (label, individual_id) VALUES ('뾰또', 1)")
    conn.execute("UPDATE photos SET proposed_label = '뾰또', margin = 0.25 WHERE id = 1")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.close()
    store = Store(root)
    try:
        assert store.migrated_from == 1 and store.schema_version == 3
        db = store.read()
        assert db.execute("SELECT name FROM individuals").fetchone()[0] == "뾰또"
        assert db.execute("SELECT request_id FROM decisions").fetchone()[0] is None      # the column v2 added
        # v3: the proposed name became the proposed individual's id; the margin orders the queue until then
        assert tuple(db.execute("SELECT proposed_individual_id, confidence FROM photos").fetchone()) == (1, 0.25)
        assert db.execute("SELECT notes FROM individuals").fetchone()[0] == ""
        indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"decisions_request_id", "photos_queue", "sightings_individual_time", "photos_review"} <= indexes
    finally:
        store.close()


def test_a_newer_database_is_refused(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    conn = sqlite3.connect(root / storage.DB_NAME)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="schema version 99, newer than this nabi"):
        Store(root)


def test_one_server_per_data_folder(tmp_path):
    first = Store(tmp_path / "d")
    try:
        with pytest.raises(StoreError, match="in use by another nabi serve"):
            Store(tmp_path / "d")
    finally:
        first.close()
    Store(tmp_path / "d").close()          # released on close


def test_photos_are_stored_once_by_content_hash(tmp_path):
    store = Store(tmp_path / "d")
    try:
        data = photo_bytes(COLOURS["nabi"])
        sha, path = store.put_photo(data, "jpg")
        assert path == tmp_path / "d" / "photos" / sha[:2] / f"{sha}.jpg" and path.read_bytes() == data
        assert store.put_photo(data, "jpg") == (sha, path)
        for bad_sha, ext in (("../../etc/passwd", "jpg"), ("a" * 64, "sh"), ("A" * 64, "jpg")):
            with pytest.raises(ValueError):
                store.photo_path(bad_sha, ext)
    finally:
        store.close()


def _png_header_only(width, height):
    """A PNG whose header claims width × height 8-bit gray pixels, with one tiny zlib stream of zero rows."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    rows = zlib.compress(b"\x00" * (width + 1) * 64, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def test_check_photo_accepts_jpeg_png_webp_and_reads_exif():
    for fmt, ext in (("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")):
        p = check_photo(photo_bytes(COLOURS["momo"], fmt=fmt), 5 * MB, 10**6)
        assert (p.ext, p.width, p.height, p.taken_at, p.latitude) == (ext, 48, 40, None, None)
    p = check_photo(photo_bytes(COLOURS["momo"], exif=exif_with("2024:05:01 10:20:30", (37.5894, -127.0325))),
                    5 * MB, 10**6)
    assert p.taken_at == "2024-05-01T10:20:30"
    assert p.latitude == pytest.approx(37.5894, abs=1e-4) and p.longitude == pytest.approx(-127.0325, abs=1e-4)


@pytest.mark.parametrize("make,status,needle", [
    (lambda: b"", 400, "is empty"),
    (lambda: b"just some text, named cat.jpg", 415, "not a JPEG, PNG or WebP"),
    (lambda: b"\xff\xd8\xff\xe0 a JPEG start and then nothing", 415, "JPEG"),
    (lambda: photo_bytes(COLOURS["nabi"], fmt="GIF"), 415, "not a JPEG, PNG or WebP"),
    (lambda: photo_bytes(COLOURS["nabi"], size=(800, 600), fmt="PNG"), 413, "the limit is 100,000 bytes"),
    (lambda: _png_header_only(5_000, 5_000), 413, "5000×5000 = 25,000,000 pixels; the limit is 4,000,000"),
    (lambda: _png_header_only(50_000, 50_000), 413, "decompression bomb"),
])
def test_check_photo_refusals(make, status, needle):
    with pytest.raises(UploadRefused, match=needle) as info:
        check_photo(make(), max_bytes=100_000, max_pixels=4_000_000, label="cat.jpg")
    assert info.value.status == status


def test_a_bomb_is_refused_before_its_pixels_are_decoded():
    bomb = _png_header_only(30_000, 30_000)          # 900 million pixels in a few kilobytes
    assert len(bomb) < 20_000
    with pytest.raises(UploadRefused, match="decompression bomb"):
        check_photo(bomb, max_bytes=MB, max_pixels=40_000_000)


@pytest.mark.parametrize("name,needle", [
    ("", "is empty"), ("   ", "is empty"), ("x" * 81, "at most 80"),
    ("nabi\x00", "control characters"), ("Background", "reserved"), ("na\nbi", "control characters"),
])
def test_names_that_are_refused(name, needle):
    with pytest.raises(ValueError, match=needle):
        clean_name(name)


def test_names_kept_and_compared():
    assert clean_name("  뾰또 ") == "뾰또"
    for label in ("Mama/Kitty", "C:\\cats\\nabi", "../etc/passwd", ".."):     # labels only: never a path
        assert clean_name(label) == label
    nfd = unicodedata.normalize("NFD", "뾰또")      # as macOS writes it: decomposed jamo
    assert nfd != "뾰또"
    assert clean_name(nfd) == "뾰또" and name_key(nfd) == name_key("뾰또")
    assert name_key("Nabi  Cat") == name_key("nabi cat")
    assert display_name("C:\\Users\\me\\../../photo 1.jpg") == "photo 1.jpg"
    assert display_name("/etc/passwd") == "passwd" and display_name(None) is None


def test_exif_time_without_gps_and_garbage_exif():
    p = check_photo(photo_bytes(COLOURS["nabi"], exif=exif_with("2023:12:24 18:00:00")), MB, 10**6)
    assert p.taken_at == "2023-12-24T18:00:00" and p.latitude is None
    ex = Image.Exif()
    ex[0x8769] = {36867: "not a date"}
    ex[0x8825] = {1: "N", 2: (1.0, 2.0), 3: "E", 4: (1.0, 2.0, 3.0)}     # latitude lacks its seconds
    p = check_photo(photo_bytes(COLOURS["nabi"], exif=ex), MB, 10**6)
    assert p.taken_at is None and p.latitude is None and p.longitude is None
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    assert check_photo(buf.getvalue(), MB, 10**6).taken_at is None


def test_a_failing_identifier_leaves_the_database_untouched(tmp_path):
    from nabi.serve.service import Service
    from serve_support import colour_identifier

    ident = colour_identifier()

    def broken(paths, topk=5, groups=None):
        raise RuntimeError("the embedding network is not loaded")
    ident.served.identify = broken
    store = Store(tmp_path / "d")
    try:
        service = Service(store, ident, max_bytes=MB, max_pixels=10**6)
        (res,) = service.identify([("cat.jpg", photo_bytes(COLOURS["nabi"]))])
        assert res.ok is False and res.status == 500 and "network is not loaded" in res.error
        assert service.counts()["photos"] == 0
    finally:
        store.close()
