"""``/api/individuals``: the list (with "new this month" and "not seen for N days"), pages, rename, merge, notes."""
from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Query

from .. import schemas as S
from ..deps import PROBLEMS, ActorDep, ServiceDep

router = APIRouter(prefix="/individuals", tags=["individuals"], responses=PROBLEMS)


@router.get("", response_model=list[S.IndividualSummary])
def individuals(service: ServiceDep,
                new_since: Optional[str] = Query(None, description="only those first seen on or after YYYY-MM-DD"),
                not_seen_days: Optional[int] = Query(None, description="only those not seen for this many days")):
    """Individuals (merged ones left out), by name."""
    return service.views.individuals(new_since=new_since, not_seen_days=not_seen_days)


@router.get("/{individual_id}", response_model=S.Individual)
def individual(individual_id: int, service: ServiceDep):
    """An individual's page: photo timeline, first and last seen, notes, the club's fields, merges."""
    return service.views.individual(individual_id)


@router.post("/{individual_id}/rename", response_model=S.Individual)
def rename(individual_id: int, body: S.RenameIn, service: ServiceDep, actor: ActorDep):
    """A new name (a label only: answers, sightings and the search keep the individual's id)."""
    return service.rename(individual_id, body.name, actor=actor)


@router.post("/{individual_id}/details", response_model=S.Individual)
def details(individual_id: int, body: S.DetailsIn, service: ServiceDep, actor: ActorDep):
    """Change the notes and the club's fields (``GET /api/session`` lists the fields)."""
    return service.set_details(individual_id, notes=body.notes, fields=body.fields, actor=actor)


@router.post("/merge", response_model=S.Individual)
def merge(body: S.MergeIn, service: ServiceDep, actor: ActorDep):
    """Merge two individuals that turn out to be one animal; the source's sightings move to the target."""
    return service.merge(body.source_id, body.target_id, actor=actor)
