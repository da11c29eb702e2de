"""Fire events (警情) and hazards (隐患): lists, details with their trail, and people's actions.

An action goes to the committer (``ApiContext.act``), the one writer; it answers with the transitions
it wrote and the subject as it now stands. An action the subject's state does not allow is a 409
and changes nothing.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query

from gateway.api.auth import Caller
from gateway.api.deps import Api, ApiState, Operator, Viewer, epoch_ms
from gateway.api.schemas import (
    ActionIn,
    FireEvent,
    FireEventActionResult,
    FireEventDetail,
    Hazard,
    HazardActionResult,
    HazardDetail,
    errors,
)
from gateway.errors import TransitionError
from gateway.store.workflow import WorkflowStore, public_subject

__all__ = ["router", "subject_detail"]

Kind = Literal["fire_event", "hazard"]
FireAction = Literal["acknowledge", "arrive", "on_scene", "resolve"]
HazardAction = Literal["confirm", "dispatch", "start", "rectified", "close", "reject"]
_ACTION_ERRORS = errors(403, 404, 409, 413)

router = APIRouter(tags=["workflow"], responses=errors(401, 503))


def _list(api: ApiState, kind: Kind, open_only: bool, site: str | None, limit: int) -> list[dict[str, Any]]:
    with api.store() as st:
        ws = WorkflowStore(st.conn)
        rows = (ws.fire_events if kind == "fire_event" else ws.hazards)(open_only=open_only, site_id=site, limit=limit)
    return [public_subject(kind, r) for r in rows]


def subject_detail(api: ApiState, kind: Kind, subject_id: str) -> dict[str, Any]:
    """A fire event or hazard with its trail, as the outside world sees it; 404 when there is none."""
    with api.store() as st:
        ws = WorkflowStore(st.conn)
        row = ws.subject(kind, subject_id)
        if row is None:
            raise HTTPException(404, f"unknown {kind.replace('_', ' ')} {subject_id!r}")
        out = public_subject(kind, row)
        out["trail"] = ws.trail(kind, subject_id)
    return out


@router.get("/api/v1/events")
def events(
    api: Api,
    _: Viewer,
    open: bool = False,
    site: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
) -> list[FireEvent]:
    return [FireEvent.model_validate(r) for r in _list(api, "fire_event", open, site, limit)]


@router.get("/api/v1/events/{event_id}", responses=errors(404))
def event(api: Api, event_id: str, _: Viewer) -> FireEventDetail:
    return FireEventDetail.model_validate(subject_detail(api, "fire_event", event_id))


@router.get("/api/v1/hazards")
def hazards(
    api: Api,
    _: Viewer,
    open: bool = False,
    site: str | None = None,
    severity: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
) -> list[Hazard]:
    rows = _list(api, "hazard", open, site, limit)
    return [Hazard.model_validate(r) for r in rows if severity is None or r["severity"] == severity]


@router.get("/api/v1/hazards/{hazard_id}", responses=errors(404))
def hazard(api: Api, hazard_id: str, _: Viewer) -> HazardDetail:
    return HazardDetail.model_validate(subject_detail(api, "hazard", hazard_id))


async def _act(api: ApiState, kind: Kind, subject_id: str, action: str, who: Caller, body: ActionIn) -> dict[str, Any]:
    await asyncio.to_thread(subject_detail, api, kind, subject_id)  # 404 for an unknown id
    act = api.ctx.act
    if act is None:
        raise HTTPException(503, "the gateway is not running its workflow")
    params: dict[str, Any] = {}
    if body.resolution is not None:
        params["resolution"] = body.resolution
    if body.severity is not None:
        params["severity"] = body.severity
    if body.assignee is not None:
        params["assignee"] = body.assignee
    if body.deadline is not None:
        params["deadline_ms"] = epoch_ms(body.deadline)
    try:
        records = await act(kind, subject_id, action, who.name, body.note, params)
    except TransitionError as exc:
        raise HTTPException(409, str(exc)) from exc
    subject = await asyncio.to_thread(subject_detail, api, kind, subject_id)
    return {"records": records, "subject": subject}


@router.post("/api/v1/events/{event_id}/{action}", responses=_ACTION_ERRORS)
async def event_action(
    api: Api, event_id: str, action: FireAction, who: Operator, body: ActionIn | None = None
) -> FireEventActionResult:
    return FireEventActionResult.model_validate(
        await _act(api, "fire_event", event_id, str(action), who, body or ActionIn())
    )


@router.post("/api/v1/hazards/{hazard_id}/{action}", responses=_ACTION_ERRORS)
async def hazard_action(
    api: Api, hazard_id: str, action: HazardAction, who: Operator, body: ActionIn | None = None
) -> HazardActionResult:
    return HazardActionResult.model_validate(await _act(api, "hazard", hazard_id, str(action), who, body or ActionIn()))
