"""``nabi serve GALLERY_OR_RUN``: the web app (``nabi.serve``) on this machine; nothing web-related is imported
until it runs."""
from __future__ import annotations

import os
import secrets

from .command import Command

INSTALL_HINT = ('nabi serve needs the web server packages: pip install "nabi[serve]" '
                '(FastAPI, uvicorn, python-multipart)')


def add_arguments(p):
    p.add_argument("source", metavar="GALLERY_OR_RUN", nargs="?",
                   help="a nabi run folder (classifier) or a gallery (read only: what the server adds is kept in "
                        "DATA); not needed with --backup")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--data", default="nabi-data",
                   help="the data folder: everything the server changes (database, photos, the photos it enrolled); "
                        "one server at a time (default ./nabi-data)")
    p.add_argument("--backup", metavar="DEST",
                   help="copy the data folder to the new folder DEST (SQLite's online backup, the photos, checked "
                        "by SHA-256), then stop; restore by serving DEST as --data (default: serve, no backup)")
    p.add_argument("--kind", default="auto", choices=["auto", "classifier", "gallery"],
                   help="what SOURCE is; auto tells a run folder from a gallery")
    p.add_argument("--token", help="the token changes need when not on loopback (default: $NABI_SERVE_TOKEN, "
                                   "else a random one, printed at start)")
    p.add_argument("--require-token", action="store_true",
                   help="require the token even on loopback (as if the server were reachable from other machines) "
                        "(default: off)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="classifier: below this top probability the answer is 'unknown' (default 0.5)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest photo accepted, in MiB (default 20)")
    p.add_argument("--max-pixels", type=int, default=120_000_000,
                   help="most pixels (width × height) a photo may have; above 40,000,000 a photo is identified "
                        "through a downscaled working copy, the original kept (default 120,000,000)")
    p.add_argument("--max-files", type=int, default=20, help="most photos in one upload (default 20)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="another host name the server answers to (repeatable; default: none)")
    p.add_argument("--fields", metavar="FILE.toml",
                   help="the fields the club keeps for each individual, one [[field]] table each (key, label, "
                        "type = text | longtext | date | choice | number, choices); default: sex, age class, "
                        "status, status date, health notes")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="where the network runs; gpu needs "
                                                                          "the gpu extra")


def _need_web_packages():
    import importlib
    import importlib.util
    missing = []
    for module in ("fastapi", "uvicorn"):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if not (importlib.util.find_spec("python_multipart") or importlib.util.find_spec("multipart")):
        missing.append("python-multipart")
    if missing:
        raise ImportError(f"{INSTALL_HINT}; missing: {', '.join(missing)}")


def run(args):
    """Open the data folder and the identifier, then serve until interrupted (or, with --backup, back up; the
    flags' ranges are checked before, by ``nabi.cli.checks``)."""
    if args.backup:
        from ..serve.backup import backup
        backup(args.data, args.backup)
        return 0
    if not args.source:
        raise ValueError("give the gallery or run to serve (GALLERY_OR_RUN), or --backup DEST")
    _need_web_packages()
    import uvicorn

    from ..serve.app import Settings, create_app, is_loopback
    from ..serve.fields import load_fields
    from ..serve.identifiers import open_identifier
    from ..serve.service import Service
    from ..serve.storage import Store

    token = args.token or os.environ.get("NABI_SERVE_TOKEN")
    require = args.require_token or not is_loopback(args.host)
    generated = False
    if require and not token:
        token, generated = secrets.token_urlsafe(24), True
    settings = Settings(host=args.host, port=args.port, token=token, require_token=require,
                        max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
                        max_files=args.max_files, allowed_hosts=args.allowed_host)
    fields = load_fields(args.fields) if args.fields else None
    identifier = open_identifier(args.source, kind=args.kind, threshold=args.threshold, device=args.device)
    store = Store(args.data)
    try:
        service = Service(store, identifier, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels,
                          fields=fields)
        app = create_app(service, settings)
        shown = f"[{args.host}]" if ":" in args.host else args.host
        print(f"nabi serve: {identifier.kind} {args.source}; data in {store.root} (schema version "
              f"{store.schema_version}); http://{shown}:{args.port}/", flush=True)
        for note in service.notes:
            print(f"nabi serve: {note}", flush=True)
        if not identifier.calibrated:
            print(f"nabi serve: the gallery is not calibrated: answers never say 'not seen before' and their "
                  f"similarity is not a probability; calibrate it with: nabi gallery calibrate {args.source}",
                  flush=True)
        if require:
            where = "printed here once" if generated else "the one you gave"
            print(f"nabi serve: changes need the token ({where}): {token if generated else '…'}", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", workers=1)
    finally:
        store.close()
    return 0


COMMAND = Command(
    "serve", "a web app to identify individuals in photos and keep their sightings", add_arguments, run,
    description="Serve a web app on this machine: identify photos with a classifier run or a "
                "re-identification gallery, decide, and keep individuals and sightings in DATA. "
                "Loopback by default; on another address every page and request needs a token. "
                "With --backup, copy DATA to a new folder instead (while a server may run) and stop.",
    examples=("nabi serve runs/cats                                # http://127.0.0.1:8000 on this machine",
              "nabi serve runs/cats --host 0.0.0.0 --token SECRET  # reachable from the network",
              "nabi serve --data club-data/ --backup backups/may   # a backup folder (restore: --data backups/may)"))
