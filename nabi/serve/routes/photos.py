"""``/api/identify`` and ``/api/photos``: upload and identify photos, read them, their thumbnails and heat-maps."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from .. import schemas as S
from ..deps import PROBLEMS, ActorDep, ServiceDep, SettingsDep
from ..service import Refused

router = APIRouter(tags=["photos"], responses=PROBLEMS)
IMAGE = {"content": {"image/jpeg": {}, "image/png": {}, "image/webp": {}}, "description": "the picture"}


@router.post("/identify", response_model=S.IdentifyOut,
             responses={409: {"model": S.IdentifyOut, "description": "every photo was refused (the same status)"}})
async def identify(service: ServiceDep, settings: SettingsDep,
                   files: list[UploadFile] = File(..., description="one or more photos (JPEG, PNG, WebP)"),
                   place: Optional[str] = Form(None, description="where the photos were taken, if not in EXIF"),
                   together: bool = Form(False, description="the photos show one animal at one sighting: answer "
                                                            "them together, from all of their evidence")):
    """Store the photos (by content hash) and identify them: background, a known individual or a new one.

    One result per file, in order; with ``together``, every photo carries the sighting's one answer. When
    every file is refused, the HTTP status is the refusal's."""
    if len(files) > settings.max_files:
        raise Refused(f"{len(files)} files in one request; at most {settings.max_files}", 413)
    uploads = []
    for f in files:
        uploads.append((f.filename, await f.read(settings.max_upload_bytes + 1)))
        await f.close()
    results = await run_in_threadpool(service.identify, uploads, place, together)
    body = S.IdentifyOut(results=results)
    if results and not any(r.ok for r in results):
        codes = {r.status for r in results}
        return JSONResponse(body.model_dump(mode="json"), status_code=codes.pop() if len(codes) == 1 else 400)
    return body


@router.get("/review", response_model=list[S.Photo])
def review(service: ServiceDep, limit: int = 200):
    """Photos waiting for a decision, the least sure answer first."""
    return service.views.review_queue(limit)


@router.get("/photos/{photo_id}", response_model=S.Photo)
def photo(photo_id: int, service: ServiceDep):
    """A photo with its answer (in words, today's names) and its decision."""
    return service.views.photo(photo_id)


@router.delete("/photos/{photo_id}", response_model=S.Deleted)
def delete_photo(photo_id: int, service: ServiceDep, actor: ActorDep):
    """Remove a photo that is not a sighting (waiting, undone, not identifiable or background)."""
    return service.delete_photo(photo_id, actor=actor)


@router.get("/photos/{photo_id}/image", response_class=FileResponse, responses={200: IMAGE})
def photo_image(photo_id: int, service: ServiceDep):
    """The original photo, as uploaded."""
    path, media = service.photo_file(photo_id)
    return FileResponse(path, media_type=media, headers={"Cache-Control": "private, max-age=86400"})


@router.get("/photos/{photo_id}/thumb", response_class=Response, responses={200: IMAGE})
def photo_thumb(photo_id: int, service: ServiceDep, size: int = 384):
    """A JPEG thumbnail made on the server (96, 192, 384 or 768 pixels on the longer side), upright."""
    data = service.thumbnail(photo_id=photo_id, size=size)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})


@router.get("/photos/{photo_id}/heatmap", response_class=Response, responses={200: IMAGE})
def photo_heatmap(photo_id: int, service: ServiceDep):
    """The photo as the model saw it with Grad-CAM over it."""
    return Response(service.heatmap(photo_id), media_type="image/png",
                    headers={"Cache-Control": "private, max-age=86400"})


@router.get("/gallery-photos/{key}", response_class=Response, responses={200: IMAGE})
def gallery_photo(key: str, service: ServiceDep, size: Optional[int] = None):
    """A built gallery's photo an answer pointed to (only those); ``size``: a thumbnail of it."""
    if size is not None:
        return Response(service.thumbnail(key=key, size=size), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=86400"})
    path = service.external_photo(key)
    if path is None or not Path(path).is_file():
        raise Refused("no such gallery photo", 404)
    from ..uploads import MEDIA_TYPES
    ext = Path(path).suffix.lower().lstrip(".").replace("jpeg", "jpg")
    return FileResponse(path, media_type=MEDIA_TYPES.get(ext, "application/octet-stream"))
