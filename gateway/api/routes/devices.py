"""Devices and what they sent: ``/api/v1/devices``, ``/api/v1/devices/{id}``, ``/api/v1/readings``,
``/api/v1/dead-letters``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from gateway.api.deps import Api, Viewer, epoch_ms
from gateway.api.schemas import REJECTED, DeadLetter, Device, Reading, errors
from gateway.profiles.loader import Catalog
from gateway.store.workflow import iso

__all__ = ["PAGE_BYTES", "device_row", "router"]

#: A page of dead letters holds about this much at most, whatever ``limit`` says.
PAGE_BYTES = 1_048_576
#: The largest id SQLite can hold (a larger ``before`` once made the store raise: a 500).
_ID_MAX = 2**63 - 1

router = APIRouter(tags=["devices"], responses=errors(401, 503))


def device_row(cat: Catalog, device_id: str, state: dict[str, Any] | None) -> Device:
    """A device of the inventory with its state in the store (``Store.devices``), if it was ever seen."""
    dev = cat.devices[device_id]
    prof = cat.profiles.get(dev.profile)
    state = state or {}
    latest = {
        m: {**v, "value": cat.typed(device_id, m, v["value"]), "ts": iso(v.pop("ts_ms"))}
        for m, v in (state.get("latest") or {}).items()
    }
    return Device.model_validate(
        {
            "device_id": device_id,
            "site_id": dev.site_id,
            "profile": dev.profile,
            "kind": prof.kind if prof else None,
            "title_zh": prof.title.zh if prof else None,
            "title_en": prof.title.en if prof else None,
            "location": dev.location.model_dump(),
            "status": state.get("status", "never_seen")
            if state.get("last_seen_ms") or state.get("status") == "unreachable"
            else "never_seen",
            "status_reason": state.get("status_reason"),
            "link": state.get("link"),
            "last_seen": iso(state.get("last_seen_ms") or None),
            "latest": latest,
        }
    )


@router.get("/api/v1/devices")
def devices(api: Api, _: Viewer, site: str | None = None) -> list[Device]:
    with api.store() as st:
        states = {d["device_id"]: d for d in st.devices()}
    cat = api.catalog()
    return [
        device_row(cat, d.device_id, states.get(d.device_id))
        for d in cat.inventory.devices
        if site is None or d.site_id == site
    ]


@router.get("/api/v1/devices/{device_id}", responses=errors(404))
def device(api: Api, device_id: str, _: Viewer) -> Device:
    cat = api.catalog()
    if device_id not in cat.devices:
        raise HTTPException(404, f"unknown device {device_id!r}")
    with api.store() as st:
        state = next((d for d in st.devices() if d["device_id"] == device_id), None)
    return device_row(cat, device_id, state)


@router.get("/api/v1/readings", responses=REJECTED)
def readings(
    api: Api,
    _: Viewer,
    device: str,
    metric: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[Reading]:
    with api.store() as st:
        rows = st.readings(device, metric=metric, since_ms=epoch_ms(since), until_ms=epoch_ms(until), limit=limit)
    cat = api.catalog()
    return [
        Reading.model_validate(
            {
                "device_id": r.device_id,
                "site_id": r.site_id,
                "metric": r.metric,
                "value": cat.typed(r.device_id, r.metric, r.value),
                "unit": r.unit,
                "ts": iso(r.ts_ms),
                "received_at": iso(r.received_at_ms),
                "quality": r.quality,
            }
        )
        for r in rows
    ]


@router.get("/api/v1/dead-letters")
def dead_letters(
    api: Api,
    _: Viewer,
    limit: Annotated[int, Query(ge=1, le=1_000)] = 100,
    before: Annotated[int | None, Query(ge=1, le=_ID_MAX, description="page on: ids below this")] = None,
) -> list[DeadLetter]:
    """Newest first. A page holds at most ``limit`` rows and about 1 MiB; each payload is at most its
    first 4 KiB (``size`` is the real size, ``truncated`` says so). Page on with ``before=<last id>``."""
    with api.store() as st:
        rows = st.dead_letters(limit=limit, max_bytes=PAGE_BYTES, before_id=before)
    for r in rows:
        r["at"] = iso(r.pop("at_ms"))
    return [DeadLetter.model_validate(r) for r in rows]
