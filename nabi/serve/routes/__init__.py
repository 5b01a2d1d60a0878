"""The routes of ``nabi serve``, one module per resource; ``api_router`` holds them all under ``/api``."""
from fastapi import APIRouter

from . import audit, decisions, individuals, photos, population, session, sightings

api_router = APIRouter(prefix="/api")
for module in (session, photos, decisions, individuals, sightings, population, audit):
    api_router.include_router(module.router)
