"""``nabi serve``: a small web app to identify individual animals in photos and keep their sightings.

    nabi serve RUN_OR_GALLERY --data DIR          # http://127.0.0.1:8000

Modules, one idea each (the layout of FastAPI's full-stack template: routes per resource, their
dependencies, the models of the answers, the SQL in one place):

- ``storage``: the data folder (SQLite in WAL mode + photos stored by content hash), schema versions
  and forward migrations, the folder's one-server lock;
- ``repository``: every SQL statement, as small functions over a connection;
- ``uploads``: checking an uploaded photo (size, pixel count, type decided by content) and reading its
  EXIF time, offset and place;
- ``images``: thumbnails, working copies of very large photos, heat-map overlays;
- ``identifiers``: the ``Identifier`` adapters over a classifier run or a re-identification gallery;
- ``served_gallery``: the built gallery (read-only) and the server's enrolments searched as one — the
  only module that uses ``nabi.reid.gallery``'s API;
- ``confidence``: an answer in words ("very likely 11") and the number the review queue sorts by;
- ``fields``: the club's configurable fields for individuals;
- ``service``: what the app does (identify, decide, undo, move, rename, merge, details), independent of
  HTTP, and ``Views``, which shape its answers once;
- ``schemas``: the pydantic models of requests and answers (the OpenAPI schema documents them);
- ``deps``, ``routes/``: the FastAPI dependencies and the routes, one module per resource;
- ``app``: the FastAPI application (safety checks, sign-in, pages).

The ``nabi serve`` command that starts it is ``nabi.cli.serve``.

The HTTP parts need the ``serve`` extra: ``pip install "nabi[serve]"``.
"""
