"""``/api/audit``: the change log, in words, with an undo link on each decision still in force."""
from __future__ import annotations

from fastapi import APIRouter

from .. import schemas as S
from ..deps import PROBLEMS, ServiceDep

router = APIRouter(tags=["changes"], responses=PROBLEMS)


@router.get("/audit", response_model=list[S.AuditEntry])
def audit(service: ServiceDep, limit: int = 200):
    """Every change (individuals created, renamed, merged; decisions made, undone, moved; deletions), newest
    first: who, when, what."""
    return service.views.audit(limit)
