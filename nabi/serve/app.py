"""The ``nabi serve`` web application (FastAPI): the safety checks around the routes and the pages.

The routes live in ``routes/`` (one module per resource), their answers in ``schemas``, what they
do in ``service``. Safety:

- Every request that changes data (POST, DELETE) must carry the header ``X-CSRF-Token`` with this
  server's token (``GET /api/session`` gives it; a page of another site can neither read it nor send a
  custom header without a CORS pre-flight, which this server never grants), and its ``Origin``, when
  present, must be this server.
- ``require_token`` (on whenever the server listens on an address other than loopback, or forced by
  ``Settings.require_token``): *every* request but the sign-in page needs the token, reads included
  (photos, GPS positions, the CSV): ``Authorization: Bearer TOKEN``, or the HttpOnly, SameSite=Strict
  cookie that ``POST /api/signin`` sets for the pages. A page asked for without it is sent to
  ``/signin``; an API call is answered 401.
- Only the host names this server answers to are accepted (a defence against DNS rebinding).
- Request bodies are bounded (``max_files`` × ``max_upload_bytes`` for uploads, 64 KiB for the
  rest); photos are checked by ``uploads.check_photo``; no name or path from a client becomes
  a file path (photos are found by their hash in the database).

Everything the pages need is in ``static/``: no CDN. The OpenAPI schema is served at
``/api/openapi.json`` (the interactive documentation pages would need a CDN, so they are off).
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from .service import Refused, Service

STATIC = Path(__file__).with_name("static")
# Every page is the one shell (static/shell.html) with its name and title; nabi.js builds what it shows.
PAGES = {"/": ("identify", "Identify photos"), "/review": ("review", "Review queue"),
         "/individuals": ("individuals", "Individuals"), "/individuals/{individual_id}": ("individual", "Individual"),
         "/photos/{photo_id}": ("photo", "Photo"), "/sightings": ("sightings", "Sightings"),
         "/map": ("map", "Map of sightings"), "/population": ("population", "How many animals are there?"),
         "/changes": ("changes", "Changes")}
OPEN_PATHS = {"/signin", "/api/signin", "/static/nabi.css", "/static/signin.js", "/static/favicon.svg"}
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
    max_pixels: int = 120_000_000
    max_files: int = 20
    allowed_hosts: list = field(default_factory=list)
    csrf_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    COOKIE = "nabi_signin"

    def __post_init__(self):
        if self.require_token is None:
            self.require_token = not is_loopback(self.host)
        if self.require_token and not self.token:
            raise ValueError(f"listening on {self.host} (not loopback) needs a token: give --token or set "
                             f"NABI_SERVE_TOKEN")
        if self.token is not None and len(self.token) < 12:
            raise ValueError("the token must be at least 12 characters long")

    def cookie_value(self) -> str:
        """The sign-in cookie's value: an HMAC of the token (the same across restarts; a new token voids it)."""
        return hmac.new(self.token.encode(), b"nabi serve sign-in", hashlib.sha256).hexdigest()

    def signed_in(self, request) -> bool:
        """Whether ``request`` carries the token (bearer header) or the sign-in cookie."""
        if not self.require_token:
            return True
        auth = request.headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else ""
        if given and hmac.compare_digest(given.encode(), self.token.encode()):
            return True
        cookie = request.cookies.get(self.COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self.cookie_value().encode())

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


def create_app(service: Service, settings: Settings) -> FastAPI:
    """The FastAPI application over ``service``."""
    from .routes import api_router
    app = FastAPI(title="nabi serve", version=__import__("nabi").__version__, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json",
                  description="Identify individual animals in photos; keep their sightings. Every request that "
                              "changes data (POST, DELETE) needs the header X-CSRF-Token (from GET /api/session). "
                              "When the session says token_required, every request but POST /api/signin also "
                              "needs Authorization: Bearer TOKEN (or the cookie that sign-in sets).")
    app.state.service, app.state.settings = service, settings
    allowed = settings.hosts()

    def write_refusal(request: Request):
        """None when a request that changes data may go on, else the refusal: same origin and this server's
        CSRF token (sign-in needs only the origin). Checked before the body is read."""
        origin = request.headers.get("origin")
        if origin is not None and origin.split("://", 1)[-1].lower() != request.headers.get("host", "").lower():
            return 403, f"cross-site request refused (Origin {origin} is not this server)"
        if request.url.path == "/api/signin":
            return None
        if not hmac.compare_digest(request.headers.get("x-csrf-token", "").encode(), settings.csrf_token.encode()):
            return 403, "missing or wrong X-CSRF-Token header (GET /api/session gives it)"
        return None

    @app.middleware("http")
    async def guard(request: Request, call_next):
        host = (request.headers.get("host") or "").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if allowed is not None and name not in allowed:
            return JSONResponse({"detail": f"unknown host {host!r}"}, status_code=421)
        path = request.url.path
        if settings.require_token and path not in OPEN_PATHS and not settings.signed_in(request):
            if request.method == "GET" and not path.startswith(("/api/", "/static/")):
                return RedirectResponse("/signin?next=" + quote(path), status_code=303)
            return JSONResponse({"detail": "this server is reachable from other machines: every request needs its "
                                           "token (sign in at /signin, or send Authorization: Bearer TOKEN; the "
                                           "token was printed when the server started)"},
                                status_code=401, headers={"Connection": "close"} if request.method != "GET" else None)
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

    app.include_router(api_router)

    shell = (STATIC / "shell.html").read_text(encoding="utf-8")

    def page(name, title):
        html = shell.replace("{{page}}", name).replace("{{title}}", title).encode("utf-8")

        def serve_page():
            return Response(html, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})
        return serve_page

    for route, (name, title) in PAGES.items():
        app.add_api_route(route, page(name, title), methods=["GET"], include_in_schema=False)

    def sign_in_page():
        return FileResponse(STATIC / "signin.html", media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-cache"})
    app.add_api_route("/signin", sign_in_page, methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
