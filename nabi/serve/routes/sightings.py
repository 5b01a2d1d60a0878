"""``/api/sightings``: every identified photo, filtered, as JSON or CSV."""
from __future__ import annotations

from typing import Optional

from fastapi import APIRouter
from fastapi.responses import Response

from .. import schemas as S
from ..deps import PROBLEMS, ServiceDep

router = APIRouter(prefix="/sightings", tags=["sightings"], responses=PROBLEMS)


@router.get("", response_model=list[S.Sighting])
def sightings(service: ServiceDep, individual: Optional[int] = None, date_from: Optional[str] = None,
              date_to: Optional[str] = None, with_gps: bool = False):
    """Sightings, newest first; filter by individual id, by date (YYYY-MM-DD, inclusive), with GPS only."""
    return service.views.sightings(individual_id=individual, date_from=date_from, date_to=date_to,
                                   with_gps=with_gps)


@router.get(".csv", response_class=Response, responses={200: {"content": {"text/csv": {}}}})
def sightings_csv(service: ServiceDep, individual: Optional[int] = None, date_from: Optional[str] = None,
                  date_to: Optional[str] = None):
    """The same as CSV (UTF-8 with a byte-order mark, for spreadsheets)."""
    text = service.sightings_csv(individual_id=individual, date_from=date_from, date_to=date_to)
    return Response(text.encode("utf-8-sig"), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="sightings.csv"'})
