"""Health and accounting: ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus text), ``/api/v1/stats``,
and ``/api/v1/whoami``."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse

from gateway.api.deps import Api, Viewer
from gateway.api.schemas import Readiness, Stats, Status, WhoAmI, errors, json_errors

__all__ = ["router"]

router = APIRouter(tags=["health"], responses=errors(401))


@router.get("/healthz")
def healthz(_: Viewer) -> Status:
    return Status(status="ok")


@router.get("/api/v1/whoami")
def whoami(who: Viewer) -> WhoAmI:
    """Who the token belongs to and its role, so a client can show only what the role may do."""
    return WhoAmI(name=who.name, role=who.role)


@router.get("/readyz", responses={503: {"model": Readiness, "description": "not ready: `problems` says why"}})
def readyz(api: Api, _: Viewer, response: Response) -> Readiness:
    stages = [stg.snapshot() for stg in api.ctx.health.stages()]
    problems = [f"{st['name']}: {st['failing']}" for st in stages if st["failing"]]
    problems += [f"{st['name']}: stalled" for st in stages if st["stalled"]]
    problems += [f"{st['name']}: disconnected ({st['last_error'] or ''})" for st in stages if st["connected"] is False]
    try:
        with api.store() as st:
            st.conn.execute("BEGIN IMMEDIATE")
            st.conn.execute("ROLLBACK")
        writable = True
    except Exception as exc:  # the store is locked or read-only: not ready
        writable = False
        problems.append(f"store: not writable: {exc}")
    if problems:
        response.status_code = 503
    return Readiness.model_validate(
        {"ready": not problems, "problems": problems, "store_writable": writable, "stages": stages}
    )


@router.get("/metrics", response_class=PlainTextResponse, responses=json_errors(401, 503))
def metrics(api: Api, _: Viewer) -> str:
    lines = []
    with api.store() as st:
        stats = st.stats()
        stats.update(st.workflow_stats())
    for k, v in stats.items():
        lines += [f"# TYPE firegw_{k} gauge", f"firegw_{k} {v}"]
    lines.append("# TYPE firegw_stage_seconds_since_progress gauge")
    for stg in api.ctx.health.stages():
        snap = stg.snapshot()
        lines.append(f'firegw_stage_seconds_since_progress{{stage="{stg.name}"}} {snap["since_progress_s"]}')
        lines.append(f'firegw_stage_depth{{stage="{stg.name}"}} {stg.depth}')
        lines.append(f'firegw_stage_stalled{{stage="{stg.name}"}} {int(stg.stalled())}')
        lines.append(f'firegw_stage_failing{{stage="{stg.name}"}} {int(stg.failing is not None)}')
        if stg.connected is not None:
            lines.append(f'firegw_stage_connected{{stage="{stg.name}"}} {int(stg.connected)}')
        for ck, cv in stg.counters.items():
            lines.append(f'firegw_stage_events_total{{stage="{stg.name}",counter="{ck}"}} {cv}')
    return "\n".join(lines) + "\n"


@router.get("/api/v1/stats", responses=errors(503))
def stats(api: Api, _: Viewer) -> Stats:
    with api.store() as st:
        out = st.stats()
        out.update(st.workflow_stats())
    return Stats.model_validate(out)
