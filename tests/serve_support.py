"""Shared by the ``nabi serve`` tests: synthetic photos, a tiny classifier run, and a server in a subprocess."""
from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
COLOURS = {"nabi": (220, 40, 40), "momo": (40, 200, 60), "background": (50, 60, 210)}
OTHER_COLOURS = {"yellow": (220, 200, 40), "purple": (150, 40, 200)}     # animals the tiny run never saw
_RUNS = {}


def photo_bytes(colour, seed=0, size=(48, 40), fmt="JPEG", exif=None) -> bytes:
    """A photo of one dominant colour plus noise (different bytes for every seed)."""
    rng = np.random.default_rng(seed)
    img = np.clip(np.array(colour) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    kwargs = {"exif": exif} if exif is not None else {}
    Image.fromarray(img).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def exif_with(time=None, gps=None):
    """A Pillow ``Exif`` with DateTimeOriginal ``time`` ('YYYY:MM:DD HH:MM:SS') and GPS ``(lat, lon)``."""
    ex = Image.Exif()
    if time:
        ex[0x8769] = {36867: time}
    if gps:
        lat, lon = gps

        def dms(v):
            v = abs(v)
            d = int(v)
            m = int((v - d) * 60)
            return (float(d), float(m), round((v - d - m / 60) * 3600, 4))
        ex[0x8825] = {1: "N" if lat >= 0 else "S", 2: dms(lat), 3: "E" if lon >= 0 else "W", 4: dms(lon)}
    return ex


def tiny_run(root) -> Path:
    """A classifier run (cifar_cnn, 3 epochs) over nabi / momo / background photos; trained once per root."""
    root = Path(root)
    if root in _RUNS:
        return _RUNS[root]
    from nabi.cli import main
    data = root / "photos"
    for ci, name in enumerate(COLOURS):
        d = data / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(10):
            (d / f"{i}.png").write_bytes(photo_bytes(COLOURS[name], seed=1000 * ci + i, fmt="PNG"))
    out = root / "run"
    code = main(["train", str(data), "--model", "cifar_cnn", "--epochs", "4", "--batch-size", "6", "--lr", "3e-3",
                 "--val-ratio", "0.2", "--test-ratio", "0", "--out", str(out), "--no-progress"])
    assert code == 0
    _RUNS[root] = out
    return out


def shared_run(tmp_path_factory) -> Path:
    """The tiny run, trained once per test session (in the session's temporary folder)."""
    return tiny_run(tmp_path_factory.getbasetemp() / "serve_tiny_run")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``nabi serve`` in a subprocess on ``host:port``; ``start()`` waits until it answers."""

    def __init__(self, run, data, host="127.0.0.1", port=None, extra=(), env=None, log=None):
        self.run, self.data, self.host = Path(run), Path(data), host
        self.port = port or free_port()
        self.extra = [str(a) for a in extra]
        self.env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.log = Path(log) if log else Path(data).with_name(Path(data).name + ".log")
        self.proc = None

    @property
    def url(self):
        # A server listening on every address (0.0.0.0) is reached over loopback: tests send no traffic
        # to any other address.
        host = "127.0.0.1" if self.host == "0.0.0.0" else (f"[{self.host}]" if ":" in self.host else self.host)
        return f"http://{host}:{self.port}"

    def start(self, timeout=60):
        import httpx
        self._log = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "nabi", "--threads", "1", "serve", str(self.run),
                                      "--data", str(self.data), "--host", self.host, "--port", str(self.port),
                                      *self.extra], env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=str(self.data.parent))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nabi serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/api/session", timeout=2).status_code in (200, 401):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"nabi serve did not answer within {timeout} s:\n{self.log.read_text()}")

    def kill(self):
        """SIGKILL: no clean shutdown at all."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def client(server, token=None):
    """An httpx client with the server's CSRF token (and the bearer token when given)."""
    import httpx
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    session = httpx.get(server.url + "/api/session", timeout=60, headers=auth).json()
    c = httpx.Client(base_url=server.url, timeout=60)
    c.headers["X-CSRF-Token"] = session["csrf_token"]
    c.headers.update(auth)
    return c


def upload(c, *files, place=None):
    """POST /api/identify with ``files`` = (name, bytes) pairs."""
    parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
    return c.post("/api/identify", files=parts, data={"place": place} if place else None)


ARTIFACTS = Path(os.environ.get("NABI_TEST_ARTIFACTS", REPO / "tmp" / "artifacts"))


def mean_colour(path):
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(axis=0) / 255.0


class ColourEmbedder:
    """A stand-in for the embedding network only, for the fast tests: a photo's embedding is its mean colour
    (unit length). Everything around it is real: the re-identification ``Gallery`` searching it, the server's
    enrolments, the database. (The subprocess and browser tests use a real network's embedder.)"""

    kind = "colour"
    sha256 = "c0" * 32
    input_size = (3, 8, 8)

    def embed(self, items, with_probs=False):
        E = np.stack([mean_colour(p) for p in items]).astype(np.float32) if len(items) else np.zeros((0, 3), np.float32)
        E /= np.linalg.norm(E, axis=1, keepdims=True)
        return (E, None) if with_probs else E

    def background_wins(self, probs):
        return None

    def identity(self):
        return {"weights": "mean colour", "sha256": self.sha256, "kind": self.kind}


def colour_identifier(threshold=0.92, calibrated=True):
    """A ``GalleryIdentifier`` over an empty in-memory ``nabi.reid.gallery.Gallery`` of mean colours."""
    from nabi.reid.gallery import Gallery
    from nabi.serve.identifiers import GalleryIdentifier
    from nabi.serve.served_gallery import ServedGallery
    gallery = Gallery(ColourEmbedder(), path=None, entries=[], embeddings=np.zeros((0, 3), np.float32),
                      threshold=threshold if calibrated else None)
    return GalleryIdentifier(ServedGallery(gallery, checksum="colour"), source="colour gallery")


class ThreadServer:
    """uvicorn serving an app object in a thread (a real HTTP server, in this process)."""

    def __init__(self, app, host="127.0.0.1", port=None):
        import uvicorn
        self.host, self.port = host, port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level="warning"))
        self.thread = None

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    def __enter__(self):
        import threading
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(15)
