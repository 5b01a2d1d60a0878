"""The shapes of ``nabi serve``'s JSON: what each request takes and each answer holds (pydantic models).

The service builds these once from the database rows (``service.Views``) and the routes declare them as
their response models, so the OpenAPI schema at ``/api/openapi.json`` documents every answer. Times are
UTC written ``YYYY-MM-DDTHH:MM:SSZ``, except a photo's EXIF time, which is the camera's clock
(``taken_offset`` gives its offset from UTC when the camera wrote one).
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, Field

Action = Literal["confirm", "other", "new", "not_identifiable", "background"]


# -- requests ------------------------------------------------------------------------------------------
class DecisionIn(BaseModel):
    photo_id: int
    action: str = Field(description="confirm | other | new | not_identifiable | background")
    individual_id: Optional[int] = Field(None, description="for 'other': the individual picked from the list")
    name: Optional[str] = Field(None, description="for 'new': the new individual's name")
    place: Optional[str] = Field(None, description="where the photo was taken, when its EXIF has no GPS")
    request_id: Optional[str] = Field(None, description="any unique text; a retry with the same id is done once")


class MoveIn(BaseModel):
    individual_id: int = Field(description="the individual the photo shows after all")
    request_id: Optional[str] = Field(None, description="any unique text; a retry with the same id is done once")


class RenameIn(BaseModel):
    name: str


class MergeIn(BaseModel):
    source_id: int = Field(description="the individual that goes away")
    target_id: int = Field(description="the individual that stays")


class DetailsIn(BaseModel):
    notes: Optional[str] = Field(None, description="free notes (replaces the old ones; at most 10,000 characters)")
    fields: dict[str, Optional[str]] = Field(default_factory=dict,
                                             description="the club's fields to set (null or '' clears one)")


class SignInIn(BaseModel):
    token: str


# -- answers -----------------------------------------------------------------------------------------
class IndividualRef(BaseModel):
    id: int
    name: str


class Candidate(BaseModel):
    individual: Optional[IndividualRef]
    similarity: float = Field(description="cosine similarity of the closest photo (gallery) or probability "
                                          "(classifier)")
    probability: Optional[float] = Field(None, description="calibrated P(same individual), when the gallery "
                                                           "gives one")
    photo_url: Optional[str] = Field(None, description="the candidate's closest photo")
    thumb_url: Optional[str] = None


class Answer(BaseModel):
    answer: Literal["background", "known", "unknown"]
    individual: Optional[IndividualRef] = Field(description="the proposed individual (known) — by id: names "
                                                            "are today's")
    closest: Optional[IndividualRef] = Field(None, description="the closest individual, also when unknown")
    similarity: float
    margin: Optional[float]
    probability: Optional[float] = None
    threshold: Optional[float] = None
    calibrated: bool
    words: str = Field(description="the answer in words: 'very likely 11', '11 or 32 — please check', "
                                   "'probably an animal not seen before'")
    level: Literal["sure", "check", "new", "background", "uncalibrated"]
    confidence: float = Field(description="0 (a coin toss) … 1 (certain); the review queue sorts by it")
    candidates: list[Candidate]
    sighting_photos: Optional[int] = Field(None, description="answered together with the other photos of one "
                                                             "sighting: how many photos the answer comes from")


class DecisionOut(BaseModel):
    id: int
    action: Action
    individual: Optional[IndividualRef]
    at: str
    actor: Optional[str] = None


class Photo(BaseModel):
    id: int
    sha256: str
    width: int
    height: int
    bytes: int
    original_name: Optional[str]
    uploaded_at: str
    taken_at: Optional[str] = Field(description="EXIF time, the camera's clock")
    taken_offset: Optional[str] = Field(None, description="the camera's offset from UTC, when its EXIF says")
    latitude: Optional[float]
    longitude: Optional[float]
    place: Optional[str]
    status: Literal["pending", "decided"]
    url: str = Field(description="the original photo")
    thumb_url: str
    heatmap_url: Optional[str]
    working_copy: bool = Field(False, description="identified through a downscaled copy (a very large photo)")
    result: Optional[Answer]
    decision: Optional[DecisionOut]
    sighting_id: Optional[int] = None


class UploadResult(BaseModel):
    ok: bool
    photo: Optional[Photo] = None
    file: Optional[str] = None
    error: Optional[str] = None
    status: Optional[int] = None
    photo_id: Optional[int] = Field(None, description="for a photo uploaded before: its id")


class IdentifyOut(BaseModel):
    results: list[UploadResult]


class DecisionResult(BaseModel):
    photo: Photo
    repeated: bool = Field(description="true when this request_id was already done")
    sighting_id: Optional[int]


class Deleted(BaseModel):
    deleted: int


class Sighting(BaseModel):
    id: int
    photo_id: int
    individual_id: int
    name: str
    time: str = Field(description="EXIF time (camera clock) or the upload time (UTC, ends in Z)")
    time_source: Literal["exif", "upload"]
    taken_offset: Optional[str] = None
    latitude: Optional[float]
    longitude: Optional[float]
    place: Optional[str]
    created_at: str
    sha256: str
    original_name: Optional[str]
    photo_url: str
    thumb_url: str


class IndividualSummary(BaseModel):
    id: int
    name: str
    created_at: str
    sightings: int
    first_seen: Optional[str]
    last_seen: Optional[str]
    labels: list[str] = Field(description="the identifier's own names for this individual")
    photo_url: Optional[str]
    thumb_url: Optional[str] = None


class FieldSpec(BaseModel):
    key: str
    label: str
    type: Literal["text", "longtext", "date", "choice", "number"]
    choices: list[str] = Field(default_factory=list)
    help: str = ""


class Individual(IndividualSummary):
    merged_into: Optional[IndividualRef]
    merged_from: list[IndividualRef]
    notes: str
    fields: dict[str, str]
    count: int
    timeline: list[Sighting]


class AuditEntry(BaseModel):
    id: int
    at: str
    action: str
    actor: Optional[str]
    text: str = Field(description="what happened, in words, with today's names")
    detail: dict
    photo_id: Optional[int] = None
    undo: Optional[str] = Field(None, description="the API path that undoes this decision, while it is in force")


class SessionOut(BaseModel):
    csrf_token: str
    token_required: bool
    identifier: dict
    can_enrol_new: bool
    calibrated: bool
    calibrate_hint: Optional[str] = Field(None, description="the command that calibrates the gallery")
    max_upload_bytes: int
    max_files: int
    max_pixels: int
    fields: list[FieldSpec]


class StatusOut(BaseModel):
    counts: dict[str, int]
    schema_version: int


class SignedIn(BaseModel):
    signed_in: bool


class EstimateOut(BaseModel):
    method: str
    n: Optional[float] = Field(description="the estimated number of animals (null: not estimable from these data)")
    se: Optional[float] = None
    low: Optional[float] = Field(None, description="95 % interval")
    high: Optional[float] = None
    note: str = ""


class PopulationOut(BaseModel):
    occasion: Literal["day", "week"]
    occasions: list[str] = Field(description="the days (or Mondays of the weeks) with at least one sighting")
    individuals: int = Field(description="individuals seen at least once")
    caught: list[int] = Field(description="individuals seen on each occasion")
    recaptured: list[int] = Field(description="of them, seen on an earlier occasion")
    frequencies: list[int] = Field(description="f_k: individuals seen on exactly k occasions")
    estimates: list[EstimateOut]
