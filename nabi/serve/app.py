"""The ``nabi serve`` web application (FastAPI): the JSON API, the pages, and the safety checks.

Safety:

- Every request that changes data (identify, decisions, rename, merge, delete) must carry the
  header ``X-CSRF-Token`` with this server's token (``GET /api/session`` gives it; a page of
  another site can neither read it nor send a custom header without a CORS pre-flight, which
  this server never grants), and its ``Origin``, when present, must be this server.
- ``token_required`` (on whenever the server listens on an address other than loopback, or
  forced by ``Settings.require_token``): those requests also need ``Authorization: Bearer TOKEN``.
- Only the host names this server answers to are accepted (a defence against DNS rebinding).
- Request bodies are bounded (``max_files`` × ``max_upload_bytes`` for uploads, 64 KiB for the
  rest); photos are checked by ``uploads.check_photo``; no name or path from a client becomes
  a file path (photos are found by their hash in the database).

Everything the pages need is in ``static/``: no CDN. The OpenAPI schema is served at
``/api/openapi.json`` (the interactive documentation pages would need a CDN, so they are off).
"""
from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from .service import Refused, Service

STATIC = Path(__file__).with_name("static")
PAGES = {"/": "identify.html", "/review": "review.html", "/individuals": "individuals.html",
         "/sightings": "sightings.html"}
SMALL_BODY = 64 * 1024


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class Settings:
    """How the server runs. ``require_token`` None: required exactly when ``host`` is not loopback."""
    host: str = "127.0.0.1"
    port: int = 8000
    token: Optional[str] = None
    require_token: Optional[bool] = None
    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000
    max_files: int = 20
    allowed_hosts: list = field(default_factory=list)
    csrf_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def __post_init__(self):
        if self.require_token is None:
            self.require_token = not is_loopback(self.host)
        if self.require_token and not self.token:
            raise ValueError(f"listening on {self.host} (not loopback) needs a token: give --token or set "
                             f"NABI_SERVE_TOKEN")
        if self.token is not None and len(self.token) < 12:
            raise ValueError("the token must be at least 12 characters long")

    def hosts(self):
        """Host names (without port) the server answers to; None: any (it listens on every address)."""
        if self.host in ("0.0.0.0", "::", ""):
            return None
        names = {"localhost", "127.0.0.1", "::1", "[::1]", self.host.lower(), f"[{self.host.lower()}]"}
        return names | {h.lower() for h in self.allowed_hosts}


class BodyLimit:
    """ASGI middleware: refuse (413) a request body above its limit, by Content-Length or while it streams."""

    def __init__(self, app, settings: Settings):
        self.app, self.settings = app, settings

    def limit(self, path):
        if path == "/api/identify":
            return self.settings.max_files * (self.settings.max_upload_bytes + 64 * 1024) + SMALL_BODY
        return SMALL_BODY

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit(scope["path"])
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            return await self._refuse(send, limit)
        seen = 0
        started = refused = False

        async def limited_receive():
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:              # answer 413 now; the app sees a client that went away
                    refused = True
                    if not started:
                        await self._refuse(send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message):
            nonlocal started
            if refused:
                return                        # the 413 is already sent
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception:
            if not refused:
                raise

    @staticmethod
    async def _refuse(send, limit):
        body = (f'{{"detail": "the request body is larger than {limit:,} bytes"}}').encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class Decision(BaseModel):
    photo_id: int
    action: str = Field(description="confirm | other | new | not_identifiable | background")
    individual_id: Optional[int] = Field(None, description="for 'other': the individual picked from the list")
    name: Optional[str] = Field(None, description="for 'new': the new individual's name")
    place: Optional[str] = Field(None, description="where the photo was taken, when its EXIF has no GPS")
    request_id: Optional[str] = Field(None, description="any unique text; a retry with the same id is done once")


class Rename(BaseModel):
    name: str


class Merge(BaseModel):
    source_id: int = Field(description="the individual that goes away")
    target_id: int = Field(description="the individual that stays")


def create_app(service: Service, settings: Settings) -> FastAPI:
    """The FastAPI application over ``service``."""
    app = FastAPI(title="nabi serve", version=__import__("nabi").__version__, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json",
                  description="Identify individual animals in photos; keep their sightings. Every request that "
                              "changes data (POST, DELETE) needs the header X-CSRF-Token (from GET /api/session) "
                              "and, when the session says token_required, Authorization: Bearer TOKEN.")
    app.state.service, app.state.settings = service, settings
    allowed = settings.hosts()

    def write_refusal(request: Request):
        """None when a request that changes data may go on, else the refusal: same origin, this server's CSRF
        token, and the token when required. Checked before the body is read."""
        origin = request.headers.get("origin")
        if origin is not None and origin.split("://", 1)[-1].lower() != request.headers.get("host", "").lower():
            return 403, f"cross-site request refused (Origin {origin} is not this server)"
        if not hmac.compare_digest(request.headers.get("x-csrf-token", "").encode(), settings.csrf_token.encode()):
            return 403, "missing or wrong X-CSRF-Token header (GET /api/session gives it)"
        if settings.require_token:
            auth = request.headers.get("authorization", "")
            given = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not given or not hmac.compare_digest(given.encode(), settings.token.encode()):
                return 401, ("this server is reachable from other machines: changes need its token "
                             "(Authorization: Bearer TOKEN; the token was printed when the server started)")
        return None

    @app.middleware("http")
    async def guard(request: Request, call_next):
        host = (request.headers.get("host") or "").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if allowed is not None and name not in allowed:
            return JSONResponse({"detail": f"unknown host {host!r}"}, status_code=421)
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            refusal = write_refusal(request)
            if refusal is not None:
                return JSONResponse({"detail": refusal[1]}, status_code=refusal[0], headers={"Connection": "close"})
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' blob: data:; "
                                                       "script-src 'self'; style-src 'self'; object-src 'none'; "
                                                       "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        return response

    app.add_middleware(BodyLimit, settings=settings)

    @app.exception_handler(Refused)
    async def refused(request, exc: Refused):
        return JSONResponse({"detail": str(exc), **exc.extra}, status_code=exc.status)

    # -- API ----------------------------------------------------------------------------------
    @app.get("/api/session", tags=["session"])
    def session():
        """The CSRF token for writes, whether a token is also needed, and what identifies the photos."""
        return {"csrf_token": settings.csrf_token, "token_required": bool(settings.require_token),
                "identifier": service.identifier.describe(), "can_enrol_new": service.identifier.can_enrol_new(),
                "max_upload_bytes": settings.max_upload_bytes, "max_files": settings.max_files,
                "max_pixels": settings.max_pixels}

    @app.get("/api/status", tags=["session"])
    def status():
        """Row counts and the schema version of the database."""
        return {"counts": service.counts(), "schema_version": service.store.schema_version}

    @app.post("/api/identify", tags=["photos"])
    async def identify(files: list[UploadFile] = File(..., description="one or more photos (JPEG, PNG, WebP)"),
                       place: Optional[str] = Form(None, description="where the photos were taken, if not in EXIF")):
        """Store the photos (by content hash) and identify them: background, a known individual or a new one.

        Answers ``{"results": [...]}``, one per file: ``{"ok": true, "photo": {..., "result": {"answer", "name",
        "similarity", "margin", "candidates": [{"name", "similarity", "photo_url"}]}}}`` or ``{"ok": false,
        "error", "status"}``. When every file is refused, the HTTP status is the refusal's."""
        if len(files) > settings.max_files:
            raise Refused(f"{len(files)} files in one request; at most {settings.max_files}", 413)
        uploads = []
        for f in files:
            data = await f.read(settings.max_upload_bytes + 1)
            uploads.append((f.filename, data))
            await f.close()
        results = await run_in_threadpool(service.identify, uploads, place)
        body = {"results": results}
        if results and not any(r["ok"] for r in results):
            codes = {r["status"] for r in results}
            return JSONResponse(body, status_code=codes.pop() if len(codes) == 1 else 400)
        return body

    @app.post("/api/decisions", tags=["photos"])
    def decide(decision: Decision):
        """Decide a photo: confirm the answer, pick another individual, name a new one, or not identifiable."""
        return service.decide(decision.photo_id, decision.action, individual_id=decision.individual_id,
                              name=decision.name, place=decision.place, request_id=decision.request_id)

    @app.get("/api/photos/{photo_id}", tags=["photos"])
    def photo(photo_id: int):
        return service.photo(photo_id)

    @app.delete("/api/photos/{photo_id}", tags=["photos"])
    def delete_photo(photo_id: int):
        """Remove a photo that is not a sighting (still waiting, not identifiable or background)."""
        return service.delete_photo(photo_id)

    @app.get("/api/photos/{photo_id}/image", tags=["photos"])
    def photo_image(photo_id: int):
        path, media = service.photo_file(photo_id)
        return FileResponse(path, media_type=media, headers={"Cache-Control": "private, max-age=86400"})

    @app.get("/api/photos/{photo_id}/heatmap", tags=["photos"])
    def photo_heatmap(photo_id: int):
        """The photo as the model saw it with Grad-CAM over it (classifier runs)."""
        return Response(service.heatmap(photo_id), media_type="image/png",
                        headers={"Cache-Control": "private, max-age=86400"})

    @app.get("/api/gallery-photos/{key}", tags=["photos"])
    def gallery_photo(key: str):
        """A gallery photo an answer pointed to (only those)."""
        path = service.external_photo(key)
        if path is None or not Path(path).is_file():
            raise Refused("no such gallery photo", 404)
        from .uploads import MEDIA_TYPES
        ext = Path(path).suffix.lower().lstrip(".").replace("jpeg", "jpg")
        return FileResponse(path, media_type=MEDIA_TYPES.get(ext, "application/octet-stream"))

    @app.get("/api/review", tags=["photos"])
    def review(limit: int = 200):
        """Photos waiting for a decision, least confident first."""
        return service.review_queue(limit)

    @app.get("/api/individuals", tags=["individuals"])
    def individuals():
        return service.individuals()

    @app.get("/api/individuals/{individual_id}", tags=["individuals"])
    def individual(individual_id: int):
        return service.individual(individual_id)

    @app.post("/api/individuals/{individual_id}/rename", tags=["individuals"])
    def rename(individual_id: int, body: Rename):
        return service.rename(individual_id, body.name)

    @app.post("/api/individuals/merge", tags=["individuals"])
    def merge(body: Merge):
        """Merge two individuals that turn out to be one animal; the source's sightings move to the target."""
        return service.merge(body.source_id, body.target_id)

    @app.get("/api/sightings", tags=["sightings"])
    def sightings(individual: Optional[int] = None, date_from: Optional[str] = None, date_to: Optional[str] = None):
        """Sightings, newest first; filter by individual id and by date (YYYY-MM-DD, inclusive)."""
        return service.sightings(individual_id=individual, date_from=date_from, date_to=date_to)

    @app.get("/api/sightings.csv", tags=["sightings"], response_class=PlainTextResponse)
    def sightings_csv(individual: Optional[int] = None, date_from: Optional[str] = None,
                      date_to: Optional[str] = None):
        text = service.sightings_csv(individual_id=individual, date_from=date_from, date_to=date_to)
        return Response(text.encode("utf-8-sig"), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="sightings.csv"'})

    @app.get("/api/audit", tags=["individuals"])
    def audit(limit: int = 200):
        """Every change (individuals created, renamed, merged; decisions; deletions), newest first."""
        return service.audit(limit)

    # -- pages --------------------------------------------------------------------------------
    def page(name):
        def serve_page():
            return FileResponse(STATIC / name, media_type="text/html; charset=utf-8",
                                headers={"Cache-Control": "no-cache"})
        return serve_page

    for route, name in PAGES.items():
        app.add_api_route(route, page(name), methods=["GET"], include_in_schema=False)
    app.add_api_route("/individuals/{individual_id}", page("individual.html"), methods=["GET"],
                      include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
