"""``/api/decisions`` and the corrections of a decision: undo, move to another individual."""
from __future__ import annotations

from fastapi import APIRouter

from .. import schemas as S
from ..deps import PROBLEMS, ActorDep, ServiceDep

router = APIRouter(tags=["decisions"], responses=PROBLEMS)


@router.post("/decisions", response_model=S.DecisionResult)
def decide(body: S.DecisionIn, service: ServiceDep, actor: ActorDep):
    """Decide a photo: confirm the answer, pick another individual, name a new one, not identifiable, background.
    A retry with the same ``request_id`` is done once (``repeated`` says so)."""
    return service.decide(body.photo_id, body.action, individual_id=body.individual_id, name=body.name,
                          place=body.place, request_id=body.request_id, actor=actor)


@router.post("/photos/{photo_id}/undo", response_model=S.DecisionResult)
def undo(photo_id: int, service: ServiceDep, actor: ActorDep):
    """Undo the photo's decision: its sighting and its place in the search go; the photo waits again."""
    return service.undo(photo_id, actor=actor)


@router.post("/photos/{photo_id}/move", response_model=S.DecisionResult)
def move(photo_id: int, body: S.MoveIn, service: ServiceDep, actor: ActorDep):
    """File a decided photo under another individual: its sighting and its place in the search move with it."""
    return service.move(photo_id, body.individual_id, actor=actor, request_id=body.request_id)
