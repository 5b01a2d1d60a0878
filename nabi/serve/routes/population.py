"""``/api/population`` and ``/api/capture-histories.csv``: how many animals there are, and the data to check it."""
from __future__ import annotations

from typing import Literal, Optional

from fastapi import APIRouter
from fastapi.responses import Response

from .. import schemas as S
from ..deps import PROBLEMS, ServiceDep

router = APIRouter(tags=["population"], responses=PROBLEMS)
Occasion = Literal["day", "week"]


@router.get("/population", response_model=S.PopulationOut)
def population(service: ServiceDep, occasion: Occasion = "day", date_from: Optional[str] = None,
               date_to: Optional[str] = None):
    """Capture histories summarised (occasions, catches, recaptures, capture frequencies) and the closed-population
    estimates they allow: Lincoln–Petersen and Chapman for two occasions, Schnabel and Chao's M_h for more."""
    return service.population(occasion, date_from, date_to)


@router.get("/capture-histories.csv", response_class=Response, responses={200: {"content": {"text/csv": {}}}})
def capture_histories_csv(service: ServiceDep, occasion: Occasion = "day",
                          layout: Literal["matrix", "rmark", "secr", "camtrapr", "detectors"] = "matrix",
                          date_from: Optional[str] = None, date_to: Optional[str] = None):
    """Capture histories as CSV in the layout R reads: ``matrix`` (one 0/1 column per occasion), ``rmark``
    (``ch`` and ``freq``: RMark's process.data), ``secr`` (Session, ID, Occasion, Detector: secr's
    make.capthist), ``camtrapr`` (camtrapR's record table), ``detectors`` (Detector, x, y in metres)."""
    name, text = service.capture_histories_csv(occasion, layout, date_from, date_to)
    return Response(text.encode("utf-8"), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
