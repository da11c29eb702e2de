"""Sites (场所) and their risk codes: ``/api/v1/sites``, ``/api/v1/sites/{id}`` (with its open hazards,
fire events and devices), an inspection recorded, a code overridden by hand."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, HTTPException

from gateway.api.deps import Admin, Api, ApiState, Operator, Viewer, epoch_ms
from gateway.api.routes.devices import device_row
from gateway.api.schemas import InspectionIn, OverrideIn, OverrideResult, Site, SiteDetail, errors
from gateway.errors import TransitionError
from gateway.store.sqlite import Store
from gateway.store.workflow import WorkflowStore, public_subject

__all__ = ["router", "site_detail"]

router = APIRouter(tags=["sites"], responses=errors(401, 503))


def _sites(api: ApiState, st: Store) -> list[Site]:
    from gateway.sites import site_summaries

    return [
        Site.model_validate(row)
        for row in site_summaries(api.catalog(), WorkflowStore(st.conn), int(time.time() * 1000))
    ]


def site_detail(api: ApiState, site_id: str) -> SiteDetail:
    """A site with its open hazards and fire events and its devices; 404 when there is none."""
    with api.store() as st:
        row = next((r for r in _sites(api, st) if r.site_id == site_id), None)
        if row is None:
            raise HTTPException(404, f"unknown site {site_id!r}")
        ws = WorkflowStore(st.conn)
        hazards = [public_subject("hazard", h) for h in ws.hazards(open_only=True, site_id=site_id)]
        fire_events = [public_subject("fire_event", e) for e in ws.fire_events(open_only=True, site_id=site_id)]
        devs = {d["device_id"]: d for d in st.devices()}
    cat = api.catalog()
    devices = [
        device_row(cat, d.device_id, devs.get(d.device_id)) for d in cat.inventory.devices if d.site_id == site_id
    ]
    return SiteDetail.model_validate(
        {**row.model_dump(by_alias=True), "hazards": hazards, "fire_events": fire_events, "devices": devices}
    )


@router.get("/api/v1/sites")
def sites(
    api: Api, _: Viewer, town: str | None = None, grid_cell: str | None = None, domain: str | None = None
) -> list[Site]:
    with api.store() as st:
        rows = _sites(api, st)
    return [
        r
        for r in rows
        if (town is None or r.town == town)
        and (grid_cell is None or r.grid_cell == grid_cell)
        and (domain is None or r.domain == domain)
    ]


@router.get("/api/v1/sites/{site_id}", responses=errors(404))
def site(api: Api, site_id: str, _: Viewer) -> SiteDetail:
    return site_detail(api, site_id)


@router.post("/api/v1/sites/{site_id}/override", responses=errors(403, 404, 409, 413))
async def override(api: Api, site_id: str, body: OverrideIn, who: Admin) -> OverrideResult:
    if site_id not in api.catalog().sites:
        raise HTTPException(404, f"unknown site {site_id!r}")
    if api.ctx.admin is None:
        raise HTTPException(503, "the gateway is not running its workflow")
    try:
        rec = await api.ctx.admin(
            "override",
            {
                "site_id": site_id,
                "code": body.code,
                "reason": body.reason,
                "actor": who.name,
                "until_ms": epoch_ms(body.until),
                "stop_business": body.stop_business,
            },
        )
    except TransitionError as exc:
        raise HTTPException(409, str(exc)) from exc
    return OverrideResult.model_validate({"record": rec, "site": await asyncio.to_thread(site_detail, api, site_id)})


@router.post("/api/v1/sites/{site_id}/inspection", responses=errors(403, 404, 413))
async def inspection(api: Api, site_id: str, who: Operator, body: InspectionIn | None = None) -> SiteDetail:
    if site_id not in api.catalog().sites:
        raise HTTPException(404, f"unknown site {site_id!r}")
    if api.ctx.admin is None:
        raise HTTPException(503, "the gateway is not running its workflow")
    await api.ctx.admin("inspection", {"site_id": site_id, "actor": who.name, "note": (body or InspectionIn()).note})
    return await asyncio.to_thread(site_detail, api, site_id)
