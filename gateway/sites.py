"""Site summaries: the red / yellow / green code of every site in the inventory, with its open
hazards by severity and the next inspection due. Read-only: used by the CLI and the API."""

from __future__ import annotations

from typing import Any

from gateway.hazards.codes import CodeOverride, site_code
from gateway.hazards.lifecycle import Hazard
from gateway.profiles.loader import Catalog
from gateway.store.workflow import WorkflowStore, iso

__all__ = ["site_summaries"]


def site_summaries(catalog: Catalog, ws: WorkflowStore, now_ms: int) -> list[dict[str, Any]]:
    by_site: dict[str, list[Hazard]] = {}
    for row in ws.hazards(open_only=True, limit=1_000_000):
        by_site.setdefault(row["site_id"], []).append(Hazard.from_dict(row))
    fires: dict[str, int] = {}
    for row in ws.fire_events(open_only=True, limit=1_000_000):
        fires[row["site_id"]] = fires.get(row["site_id"], 0) + 1
    overrides = {k: CodeOverride(**v) for k, v in ws.overrides().items()}
    inspections = ws.inspections()
    out = []
    for site in catalog.inventory.sites:
        hazards = by_site.get(site.site_id, [])
        sc = site_code(hazards, overrides.get(site.site_id), now_ms, inspections.get(site.site_id))
        counts = {sev: sum(1 for h in hazards if h.severity == sev) for sev in ("critical", "major", "minor", "info")}
        out.append(
            {
                "site_id": site.site_id,
                "name": site.name,
                "enterprise": site.enterprise,
                "town": site.town,
                "grid_cell": site.grid_cell,
                "domain": site.domain,
                "address": site.address,
                "station": site.station.name,
                "station_id": site.station.station_id,
                "code": sc.code,
                "reason_zh": sc.reason_zh,
                "reason_en": sc.reason_en,
                "overridden": sc.overridden,
                "inspection_cadence": sc.cadence,
                "next_inspection_due": iso(sc.next_inspection_due_ms),
                "last_inspection": iso(inspections.get(site.site_id)),
                "hazards_open": len(hazards),
                "hazards_by_severity": counts,
                "hazards_proposed": sum(1 for h in hazards if h.state == "proposed"),
                "fire_events_open": fires.get(site.site_id, 0),
            }
        )
    return out
