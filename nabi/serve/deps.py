"""What the routes of ``nabi serve`` get from the application: the service, the settings, who is asking.

``ServiceDep``, ``SettingsDep`` and ``ActorDep`` are FastAPI dependencies (``Annotated`` types): a route
names them as parameters and FastAPI fills them in per request.
"""
from __future__ import annotations

import unicodedata
from typing import Annotated, Optional

from fastapi import Depends, Request
from pydantic import BaseModel

from .service import Service


class Problem(BaseModel):
    """Every refusal: what was wrong and what to do instead."""
    detail: str


PROBLEMS = {code: {"model": Problem} for code in (400, 401, 403, 404, 409, 413, 415, 422)}


def get_service(request: Request) -> Service:
    return request.app.state.service


def get_settings(request: Request):
    return request.app.state.settings


def get_actor(request: Request) -> Optional[str]:
    """Who makes a change, for the change log: the name the page keeps (header ``X-Nabi-User``, at most 60
    characters, control characters dropped) and the client's address."""
    name = request.headers.get("x-nabi-user", "")
    try:
        name = bytes(name, "latin-1").decode("utf-8")          # headers travel as Latin-1: undo that
    except (UnicodeEncodeError, UnicodeDecodeError):
        pass
    name = "".join(c for c in unicodedata.normalize("NFC", name) if unicodedata.category(c)[0] != "C").strip()[:60]
    host = request.client.host if request.client else None
    if name and host:
        return f"{name} ({host})"
    return name or host


ServiceDep = Annotated[Service, Depends(get_service)]
SettingsDep = Annotated[object, Depends(get_settings)]
ActorDep = Annotated[Optional[str], Depends(get_actor)]
