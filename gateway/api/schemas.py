"""The API's contract: request bodies (``*In``) and the response models of every route.

Response models describe what the routes return, field for field and in the same order, so
``/openapi.json`` documents every shape and typed clients can be generated from it. They come in
three families:

- rows read from the store (:class:`Site`, :class:`Device`, :class:`Reading`, :class:`DeadLetter`,
  :class:`Stats`) and the gateway's health (:class:`Readiness`, :class:`StageState`);
- the workflow's subjects as the outside world sees them (``gateway.store.workflow.public_subject``:
  times in ISO 8601, ``class`` and ``station`` beside ``hazard_class`` and ``station_name``), their
  trail, and the transitions an action produced (the body the grid workflow receives);
- profile dry runs and activations.

A field is never dropped silently: ``tests/integration/test_api_schemas.py`` checks every model against what its
producer returns. Only a snapshot's evidence (whatever the rule that tripped recorded) and a site
transition's subject are open objects.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, RootModel, WithJsonSchema, field_validator

from gateway.api.auth import Role
from gateway.models import PointClass, Quality
from gateway.profiles.models import Domain

__all__ = [
    "REJECTED",
    "TIME_MAX",
    "TIME_MIN",
    "ActionIn",
    "Activation",
    "DeadLetter",
    "Device",
    "DryRun",
    "DryRunReading",
    "Error",
    "FireEvent",
    "FireEventActionResult",
    "FireEventDetail",
    "FireEventTransition",
    "Hazard",
    "HazardActionResult",
    "HazardDetail",
    "HazardTransition",
    "InspectionIn",
    "LatestValue",
    "Location",
    "OverrideIn",
    "OverrideRecord",
    "OverrideResult",
    "OverrideSnapshot",
    "Problems",
    "ProblemsError",
    "ProfileIn",
    "ProfileSummary",
    "Readiness",
    "Reading",
    "Rejected",
    "SeverityCounts",
    "Site",
    "SiteDetail",
    "SiteTransition",
    "StageState",
    "Stats",
    "Status",
    "TrailEntry",
    "Transition",
    "ValidationIssue",
    "WhoAmI",
    "errors",
    "json_errors",
]

# ---------------------------------------------------------------------------- the vocabulary

Severity = Literal["info", "minor", "major", "critical"]
Tier = Literal["grid_member", "supervisor", "enforcement"]
Code = Literal["red", "yellow", "green"]
Cadence = Literal["daily", "weekly", "monthly"]
FireState = Literal["open", "acknowledged", "on_scene", "resolved"]
FireResolution = Literal["real_fire", "false_alarm", "test"]
HazardState = Literal["proposed", "confirmed", "dispatched", "rectifying", "rectified", "closed"]
HazardResolution = Literal["closed", "rejected", "auto_closed"]
TransitionType = Literal[
    "opened",
    "updated",
    "escalated",
    "cleared",
    "confirmed",
    "dispatched",
    "rectifying",
    "rectified",
    "closed",
    "rejected",
    "acknowledged",
    "on_scene",
    "resolved",
    "override_set",
    "override_cleared",
    "inspected",
]
DeviceStatus = Literal["online", "unreachable", "never_seen"]
#: A stored value: a point's type (SQLite keeps a value the way it was written; NULL only if damaged).
Value = bool | int | float | str | None
#: A time as the API writes it: ISO 8601 in UTC with milliseconds (``2025-11-29T06:40:00.000Z``).
IsoTime = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
#: Whatever the rule that tripped recorded (the reading, the previous value, the samples ...).
Evidence = dict[str, JsonValue]

#: The times a request may name (naive means UTC): outside them a time is a mistake, not a query.
TIME_MIN = datetime(1970, 1, 1, tzinfo=UTC)
TIME_MAX = datetime(2999, 12, 31, tzinfo=UTC)


# ---------------------------------------------------------------------------- request bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _text(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("text holds a lone surrogate (not valid Unicode)") from None
        if isinstance(v, datetime) and not TIME_MIN <= (v if v.tzinfo else v.replace(tzinfo=UTC)) <= TIME_MAX:
            raise ValueError("time outside 1970..2999")
        return v


class ActionIn(_Body):
    note: str = Field(default="", max_length=2000)
    resolution: FireResolution | None = None
    severity: Severity | None = None
    assignee: str | None = Field(default=None, max_length=200)
    deadline: datetime | None = None


class OverrideIn(_Body):
    code: Code | None = Field(default=None, description="null clears the override")
    reason: str = Field(min_length=1, max_length=2000)
    until: datetime | None = None
    stop_business: bool = False


class InspectionIn(_Body):
    note: str = Field(default="", max_length=2000)


class ProfileIn(_Body):
    profile_yaml: str = Field(min_length=1, max_length=262_144)
    sample: str | None = Field(default=None, max_length=65_536, description="a payload (MQTT) or register dump")


# ---------------------------------------------------------------------------- responses


class _Out(BaseModel):
    """A response: every field is always present (required in the schema, even with a default)."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class Error(_Out):
    detail: str


class Problems(_Out):
    valid: Literal[False]
    problems: list[str] = Field(description="one line a problem: `file: field.path: what is wrong`")


class ProblemsError(_Out):
    """A profile that cannot be used (422 from a dry run, 409 when the gateway refused to load it)."""

    detail: Problems


class ValidationIssue(_Out):
    loc: list[str]
    msg: str
    type: str


class Rejected(_Out):
    """422: the request does not fit its schema (a list of issues), a value is outside what the route
    takes (a sentence: a time outside 1970..2999), or a profile went past a limit (its problems)."""

    detail: list[ValidationIssue] | Problems | str


#: ``responses=`` for a route whose 422 is not only FastAPI's list of issues.
REJECTED: dict[int | str, dict[str, Any]] = {422: {"model": Rejected, "description": "not a request this route takes"}}


_ERRORS: dict[int, str] = {
    401: "no valid bearer token (or, with no tokens configured, an attempt to write)",
    403: "the token's role may not do this",
    404: "no such subject",
    409: "the action is not allowed in the subject's state",
    413: "the request body is over api.max_body_bytes",
    429: "too many at once; see Retry-After",
    503: "the store or the workflow is not ready",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` documentation of these error statuses (each answers ``{"detail": "..."}``)."""
    return {code: {"model": Error, "description": _ERRORS[code]} for code in codes}


def json_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """:func:`errors` for a route whose success is not JSON (FastAPI would file the error model under
    the route's own media type); the reference resolves because other routes document :class:`Error`."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {code: {"description": _ERRORS[code], "content": error} for code in codes}


# ------------------------------------------------------------------ health


class Status(_Out):
    status: Literal["ok"]


class WhoAmI(_Out):
    name: str
    role: Role


class StageState(_Out):
    """One pipeline stage (``gateway.health.Stage.snapshot``)."""

    name: str
    since_progress_s: float
    depth: int
    connected: bool | None
    stalled: bool
    failing: str | None
    last_error: str | None
    counters: dict[str, int]


class Readiness(_Out):
    ready: bool
    problems: list[str]
    store_writable: bool
    stages: list[StageState]


class Stats(_Out):
    messages: int
    duplicates: int
    readings: int
    readings_stored: int
    dead_letters: int
    devices_seen: int
    devices_unreachable: int
    forward_backlog: int
    hazards_open: int
    events_open: int


# ------------------------------------------------------------------ devices


class Location(_Out):
    building: str | None
    floor: str | None
    room: str | None


class LatestValue(_Out):
    value: Value
    unit: str
    ts_ms: int
    quality: Quality
    ts: IsoTime


class Device(_Out):
    device_id: str
    site_id: str
    profile: str
    kind: str | None
    title_zh: str | None
    title_en: str | None
    location: Location
    status: DeviceStatus
    status_reason: str | None
    link: str | None
    last_seen: IsoTime | None
    latest: dict[str, LatestValue] = Field(description="the latest value of each metric")


class Reading(_Out):
    device_id: str
    site_id: str
    metric: str
    value: Value
    unit: str
    ts: IsoTime
    received_at: IsoTime
    quality: Quality


class DeadLetter(_Out):
    id: int
    source: str
    address: str
    device_id: str | None
    reason: str
    payload: str = Field(description="at most the first 4 KiB, decoded as UTF-8 (invalid bytes replaced)")
    size: int = Field(description="the payload's real size in bytes")
    truncated: bool = Field(description="true when `payload` holds only the first bytes")
    digest: str | None = Field(description="SHA-256 of the whole payload (hex), when it was kept")
    at: IsoTime


# ------------------------------------------------------------------ fire events and hazards


class TrailEntry(_Out):
    event_id: str
    type: TransitionType
    at: IsoTime
    actor: str
    note: str


class FireEvent(_Out):
    """A fire event (警情)."""

    fire_event_id: str
    site_id: str
    device_id: str
    metric: str
    rule: str
    opened_at: IsoTime
    state: FireState
    resolution: FireResolution | None = None
    count: int = 1
    last_signal_at: IsoTime | None = None
    station_id: str = ""
    station_name: str = ""
    response_time_s: float = 180.0
    duty_officer: str | None = None
    building: str | None = None
    floor: str | None = None
    room: str | None = None
    town: str = ""
    grid_cell: str = ""
    acknowledged_at: IsoTime | None = None
    acknowledged_by: str | None = None
    on_scene_at: IsoTime | None = None
    on_scene_by: str | None = None
    resolved_at: IsoTime | None = None
    resolved_by: str | None = None
    escalation_level: int = 0
    escalated_at: IsoTime | None = None
    test: bool = False
    evidence: list[Evidence] = Field(default_factory=list)
    station: str | None = Field(default=None, description="the micro fire station's name")


class Hazard(_Out):
    """A hazard (隐患)."""

    model_config = ConfigDict(populate_by_name=True)

    hazard_id: str
    site_id: str
    device_id: str
    rule: str
    hazard_class: str
    severity: Severity
    opened_at: IsoTime
    state: HazardState
    active: bool = True
    first_seen: IsoTime | None = None
    last_seen: IsoTime | None = None
    cleared_at: IsoTime | None = None
    count: int = 1
    title_zh: str = ""
    title_en: str = ""
    hard: bool = False
    auto_close: bool = False
    escalation_level: int = 0
    escalated_at: IsoTime | None = None
    overdue: bool = False
    deadline: IsoTime | None = None
    confirmed_at: IsoTime | None = None
    confirmed_by: str | None = None
    dispatched_at: IsoTime | None = None
    dispatched_by: str | None = None
    assignee: str | None = None
    rectifying_at: IsoTime | None = None
    rectifying_by: str | None = None
    rectified_at: IsoTime | None = None
    rectified_by: str | None = None
    closed_at: IsoTime | None = None
    closed_by: str | None = None
    resolution: HazardResolution | None = None
    evidence: list[Evidence] = Field(default_factory=list)
    tier: Tier = Field(default="grid_member", description="the handling tier: from the severity, raised by escalation")
    class_: str = Field(alias="class", description="the same as hazard_class")


class FireEventDetail(FireEvent):
    trail: list[TrailEntry]


class HazardDetail(Hazard):
    trail: list[TrailEntry]


class _TransitionBase(_Out):
    version: int = Field(description="of this body (the grid workflow receives the same)")
    event_id: str
    kind: str
    subject_id: str
    type: TransitionType
    at: IsoTime
    actor: str
    note: str


class FireEventTransition(_TransitionBase):
    kind: Literal["fire_event"]
    fire_event: FireEvent


class HazardTransition(_TransitionBase):
    kind: Literal["hazard"]
    hazard: Hazard


class SiteTransition(_TransitionBase):
    kind: Literal["site"]
    site: dict[str, JsonValue] = Field(
        description="the override (override_set, override_cleared) or the inspection (inspected)"
    )


class Transition(
    RootModel[Annotated[FireEventTransition | HazardTransition | SiteTransition, Field(discriminator="kind")]]
):
    """One transition of a fire event, hazard or site: what an action returns, what the stream sends
    and what the grid workflow receives."""


class FireEventActionResult(_Out):
    records: list[Transition]
    subject: FireEventDetail


class HazardActionResult(_Out):
    records: list[Transition]
    subject: HazardDetail


# ------------------------------------------------------------------ sites


class SeverityCounts(_Out):
    critical: int
    major: int
    minor: int
    info: int


class Site(_Out):
    """A site (场所) and its risk code."""

    site_id: str
    name: str
    enterprise: str | None
    town: str
    grid_cell: str
    domain: Domain
    address: str | None
    station: str
    station_id: str
    code: Code
    reason_zh: str
    reason_en: str
    overridden: bool
    inspection_cadence: Cadence
    next_inspection_due: IsoTime
    last_inspection: IsoTime | None
    hazards_open: int
    hazards_by_severity: SeverityCounts
    hazards_proposed: int
    fire_events_open: int


class SiteDetail(Site):
    hazards: list[Hazard] = Field(description="open hazards")
    fire_events: list[FireEvent] = Field(description="open fire events")
    devices: list[Device]


class OverrideSnapshot(_Out):
    site_id: str
    code: Code
    reason: str
    actor: str
    at_ms: int
    until_ms: int | None
    stop_business: bool


class OverrideRecord(_Out):
    """The audit record of an override set or cleared (times in epoch milliseconds)."""

    event_id: str
    kind: Literal["site"]
    subject_id: str
    type: Literal["override_set", "override_cleared"]
    at_ms: int
    actor: str
    note: str
    snapshot: OverrideSnapshot


class OverrideResult(_Out):
    record: OverrideRecord
    site: SiteDetail


# ------------------------------------------------------------------ profiles


class ProfileSummary(_Out):
    profile: str
    version: int
    kind: str
    title_zh: str
    title_en: str
    transport: Literal["mqtt", "modbus"]
    points: int
    rules: int
    devices: int = Field(description="devices in the inventory that use it")


class DryRunReading(_Out):
    model_config = ConfigDict(populate_by_name=True)

    metric: str
    value: Value
    unit: str
    quality: Quality
    class_: PointClass = Field(alias="class")


class DryRun(_Out):
    valid: bool
    profile: str | None
    problems: list[str]
    readings: list[DryRunReading] = Field(description="the sample decoded (empty without a sample)")


class Activation(_Out):
    activated: str
    version: int
    readings: list[DryRunReading]
