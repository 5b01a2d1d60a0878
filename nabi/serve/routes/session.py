"""``/api/session``, ``/api/status``, ``/api/signin``: what the pages need to start, and signing in."""
from __future__ import annotations

import hmac

from fastapi import APIRouter, Response

from .. import schemas as S
from ..deps import PROBLEMS, ServiceDep, SettingsDep
from ..service import Refused

router = APIRouter(tags=["session"], responses=PROBLEMS)


@router.get("/session", response_model=S.SessionOut)
def session(service: ServiceDep, settings: SettingsDep):
    """The CSRF token for changes, whether the token is needed, what identifies the photos, the club's fields."""
    ident = service.identifier
    hint = None
    if not ident.calibrated:
        hint = f"nabi gallery calibrate {ident.source}"
    return S.SessionOut(csrf_token=settings.csrf_token, token_required=bool(settings.require_token),
                        identifier=ident.describe(), can_enrol_new=ident.can_enrol_new(),
                        calibrated=ident.calibrated, calibrate_hint=hint, max_upload_bytes=settings.max_upload_bytes,
                        max_files=settings.max_files, max_pixels=settings.max_pixels,
                        fields=[S.FieldSpec(**f) for f in service.fields])


@router.get("/status", response_model=S.StatusOut)
def status(service: ServiceDep):
    """Row counts and the schema version of the database."""
    return S.StatusOut(counts=service.counts(), schema_version=service.store.schema_version)


@router.post("/signin", response_model=S.SignedIn)
def sign_in(body: S.SignInIn, response: Response, settings: SettingsDep):
    """Exchange the server's token for a sign-in cookie (HttpOnly, SameSite=Strict) that pages and photos carry."""
    if not settings.require_token:
        return S.SignedIn(signed_in=True)
    if not hmac.compare_digest(body.token.encode(), settings.token.encode()):
        raise Refused("wrong token (it was printed when the server started, or given with --token)", 401)
    response.set_cookie(settings.COOKIE, settings.cookie_value(), max_age=30 * 86400, httponly=True,
                        samesite="strict", path="/")
    return S.SignedIn(signed_in=True)


@router.post("/signout", response_model=S.SignedIn)
def sign_out(response: Response, settings: SettingsDep):
    """Forget the sign-in cookie of this browser."""
    response.delete_cookie(settings.COOKIE, path="/")
    return S.SignedIn(signed_in=False)
