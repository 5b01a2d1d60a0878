"""``nabi serve``: a small web app to identify individual animals in photos and keep their sightings.

    nabi serve RUN_OR_GALLERY --data DIR          # http://127.0.0.1:8000

Modules, one idea each:

- ``storage``: the data folder (SQLite in WAL mode + photos stored by content hash),
  schema versions and forward migrations;
- ``uploads``: checking an uploaded photo (size, pixel count, type decided by content) and
  reading its EXIF time and place;
- ``identifiers``: the ``Identifier`` adapters over a classifier run or a re-identification gallery;
- ``service``: what the app does (identify, decide, rename, merge, sightings), independent of HTTP;
- ``app``: the FastAPI application (JSON API, pages, safety checks).

The ``nabi serve`` command that starts it is ``nabi.cli.serve``.

The HTTP parts need the ``serve`` extra: ``pip install "nabi[serve]"``.
"""
