"""FastAPI application and the uvicorn server that runs it inside the gateway's event loop.

Routes (OpenAPI at ``/openapi.json``, docs at ``/docs``):

- ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus text)
- ``/api/v1/sites``, ``/api/v1/sites/{id}``, ``POST /api/v1/sites/{id}/override|inspection``
- ``/api/v1/devices``, ``/api/v1/devices/{id}``, ``/api/v1/readings``
- ``/api/v1/events``, ``/api/v1/events/{id}``, ``POST /api/v1/events/{id}/acknowledge|arrive|resolve``
- ``/api/v1/hazards``, ``/api/v1/hazards/{id}``,
  ``POST /api/v1/hazards/{id}/confirm|dispatch|start|rectified|close|reject``
- ``/api/v1/dead-letters``, ``/api/v1/profiles``, ``POST /api/v1/profiles/validate|activate``
- ``/api/v1/stream``: server-sent events (every transition, and a stats beat)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.api.auth import Caller, Role, TokenBook
from gateway.api.guard import AcceptGate, AuthFailures, Guard, guarded_protocol
from gateway.api.sandbox import Sandbox, SandboxBusy, SandboxLimit
from gateway.errors import ConfigError, TransitionError
from gateway.health import Health
from gateway.profiles.loader import Catalog
from gateway.settings import GatewaySettings
from gateway.store.sqlite import Store
from gateway.store.workflow import WorkflowStore, iso, public_subject

__all__ = ["PAGE_BYTES", "ApiContext", "ApiServer", "create_app"]

logger = logging.getLogger(__name__)

#: A page of dead letters holds about this much at most, whatever ``limit`` says.
PAGE_BYTES = 1_048_576

ActFn = Callable[[str, str, str, str, str, dict[str, Any]], Awaitable[list[dict[str, Any]]]]


@dataclass
class ApiContext:
    """What the API needs from the running gateway (set by the pipeline)."""

    settings: GatewaySettings
    health: Health
    catalog: Callable[[], Catalog]
    act: ActFn | None = None  # (kind, id, action, actor, note, params) -> record bodies
    admin: Callable[[str, dict[str, Any]], Awaitable[Any]] | None = None  # site overrides, profile activation
    sources: Callable[[], dict[str, bool | None]] = field(default_factory=lambda: dict)
    static_dir: Path | None = None
    sandbox: Sandbox | None = None  # where profile dry runs run (a worker process); made on demand


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
        if isinstance(v, datetime) and not _EARLIEST <= (v if v.tzinfo else v.replace(tzinfo=UTC)) <= _LATEST:
            raise ValueError("time outside 1970..2999")
        return v


_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(2999, 12, 31, tzinfo=UTC)


class ActionIn(_Body):
    note: str = Field(default="", max_length=2000)
    resolution: Literal["real_fire", "false_alarm", "test"] | None = None
    severity: Literal["info", "minor", "major", "critical"] | None = None
    assignee: str | None = Field(default=None, max_length=200)
    deadline: datetime | None = None


class OverrideIn(_Body):
    code: Literal["red", "yellow", "green"] | None = Field(default=None, description="null clears the override")
    reason: str = Field(min_length=1, max_length=2000)
    until: datetime | None = None
    stop_business: bool = False


class InspectionIn(_Body):
    note: str = Field(default="", max_length=2000)


class ProfileIn(_Body):
    profile_yaml: str = Field(min_length=1, max_length=262_144)
    sample: str | None = Field(default=None, max_length=65_536, description="a payload (MQTT) or register dump")


def _caller(request: Request) -> Caller:
    tokens: TokenBook = request.app.state.tokens
    c = tokens.lookup(request.headers.get("authorization"))
    if c is None:
        client = request.client.host if request.client else "?"
        request.app.state.auth_failures.note(client, request.url.path)
        raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})
    return c


def _need(role: Role) -> Callable[[Caller], Caller]:
    def check(c: Annotated[Caller, Depends(_caller)]) -> Caller:
        if not c.may(role):
            if c.anonymous:
                raise HTTPException(401, "no API tokens are configured, so the API is read-only: configure "
                                         "api.tokens to act", headers={"WWW-Authenticate": "Bearer"})
            raise HTTPException(403, f"role {c.role} may not do this; it needs {role}")
        return c
    return check


Viewer = Annotated[Caller, Depends(_need("viewer"))]
Operator = Annotated[Caller, Depends(_need("operator"))]
Admin = Annotated[Caller, Depends(_need("admin"))]
FireAction = Literal["acknowledge", "arrive", "on_scene", "resolve"]
HazardAction = Literal["confirm", "dispatch", "start", "rectified", "close", "reject"]


def _ms(dt: datetime | None) -> int | None:
    """Epoch ms of a time from a request (naive means UTC), or 422 when it is outside 1970..2999."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    if not _EARLIEST <= dt <= _LATEST:
        raise HTTPException(422, f"time {dt.isoformat()} is outside 1970..2999")
    return int(dt.timestamp() * 1000)


# ---------------------------------------------------------------------------- the app


def create_app(ctx: ApiContext) -> FastAPI:
    s = ctx.settings
    tokens = TokenBook(s.api.tokens)
    db_path = s.store.path
    app = FastAPI(title="firegw ops API", version="1", description=__doc__,
                  docs_url="/docs" if s.api.docs else None, redoc_url=None,
                  swagger_ui_parameters={"syntaxHighlight": False},
                  openapi_tags=[{"name": "workflow", "description": "fire events (警情) and hazards (隐患)"}])
    app.state.tokens = tokens
    app.state.auth_failures = failures = AuthFailures()
    app.state.sandbox = sandbox = ctx.sandbox or Sandbox(timeout_s=s.api.dry_run_timeout_s)
    streams: dict[str, int] = {}
    if s.api.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=s.api.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    def admit(path: str, auth: str | None) -> str | None:
        if path in ("/api/v1/profiles/validate", "/api/v1/profiles/activate"):
            who = tokens.lookup(auth)
            return sandbox.refusal(who.name if who is not None else "")
        return None

    app.add_middleware(Guard, authenticated=lambda auth: tokens.lookup(auth) is not None,
                       max_body=s.api.max_body_bytes, failures=failures, admit=admit)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # the offending input is not echoed: it may be huge, or not even encodable (a lone surrogate)
        detail = [{"loc": [str(p)[:100] for p in err.get("loc", ())], "msg": str(err.get("msg", ""))[:300],
                   "type": str(err.get("type", ""))} for err in exc.errors()[:20]]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        logger.error("api: %s %s failed: %s", request.method, request.url.path[:200], exc, exc_info=exc)
        return JSONResponse({"detail": "internal error; it is logged"}, status_code=500)

    @contextlib.contextmanager
    def store() -> Iterator[Store]:
        try:
            st = Store(db_path, readonly=True).open()
        except ConfigError as exc:
            raise HTTPException(503, "the store is not ready") from exc
        try:
            yield st
        finally:
            st.close()

    # ------------------------------------------------------------------ health

    @app.get("/healthz", tags=["health"])
    def healthz(_: Viewer) -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/api/v1/whoami", tags=["health"])
    def whoami(who: Viewer) -> dict[str, Any]:
        """Who the token belongs to and its role, so a client can show only what the role may do."""
        return {"name": who.name, "role": who.role}

    @app.get("/readyz", tags=["health"])
    def readyz(_: Viewer) -> JSONResponse:
        stages = [stg.snapshot() for stg in ctx.health.stages()]
        problems = [f"{st['name']}: {st['failing']}" for st in stages if st["failing"]]
        problems += [f"{st['name']}: stalled" for st in stages if st["stalled"]]
        problems += [f"{st['name']}: disconnected ({st['last_error'] or ''})"
                     for st in stages if st["connected"] is False]
        try:
            with store() as st:
                st.conn.execute("BEGIN IMMEDIATE")
                st.conn.execute("ROLLBACK")
            writable = True
        except Exception as exc:  # the store is locked or read-only: not ready
            writable = False
            problems.append(f"store: not writable: {exc}")
        body = {"ready": not problems, "problems": problems, "store_writable": writable, "stages": stages}
        return JSONResponse(body, status_code=200 if not problems else 503)

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    def metrics(_: Viewer) -> str:
        lines = []
        with store() as st:
            stats = st.stats()
            stats.update(st.workflow_stats())
        for k, v in stats.items():
            lines += [f"# TYPE firegw_{k} gauge", f"firegw_{k} {v}"]
        lines.append("# TYPE firegw_stage_seconds_since_progress gauge")
        for stg in ctx.health.stages():
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

    # ------------------------------------------------------------------ sites, devices, readings

    def _sites(st: Store) -> list[dict[str, Any]]:
        from gateway.sites import site_summaries

        return site_summaries(ctx.catalog(), WorkflowStore(st.conn), int(time.time() * 1000))

    @app.get("/api/v1/sites", tags=["sites"])
    def sites(_: Viewer, town: str | None = None, grid_cell: str | None = None,
              domain: str | None = None) -> list[dict[str, Any]]:
        with store() as st:
            rows = _sites(st)
        return [r for r in rows if (town is None or r["town"] == town) and
                (grid_cell is None or r["grid_cell"] == grid_cell) and (domain is None or r["domain"] == domain)]

    @app.get("/api/v1/sites/{site_id}", tags=["sites"])
    def site(site_id: str, _: Viewer) -> dict[str, Any]:
        with store() as st:
            row = next((r for r in _sites(st) if r["site_id"] == site_id), None)
            if row is None:
                raise HTTPException(404, f"unknown site {site_id!r}")
            ws = WorkflowStore(st.conn)
            row["hazards"] = [public_subject("hazard", h) for h in ws.hazards(open_only=True, site_id=site_id)]
            row["fire_events"] = [public_subject("fire_event", e) for e in ws.fire_events(open_only=True,
                                                                                           site_id=site_id)]
            devs = {d["device_id"]: d for d in st.devices()}
        cat = ctx.catalog()
        row["devices"] = [_device_row(cat, d.device_id, devs.get(d.device_id))
                          for d in cat.inventory.devices if d.site_id == site_id]
        return row

    def _device_row(cat: Catalog, device_id: str, state: dict[str, Any] | None) -> dict[str, Any]:
        dev = cat.devices[device_id]
        prof = cat.profiles.get(dev.profile)
        state = state or {}
        latest = {m: {**v, "value": cat.typed(device_id, m, v["value"]), "ts": iso(v.pop("ts_ms"))}
                  for m, v in (state.get("latest") or {}).items()}
        return {
            "device_id": device_id, "site_id": dev.site_id, "profile": dev.profile,
            "kind": prof.kind if prof else None, "title_zh": prof.title.zh if prof else None,
            "title_en": prof.title.en if prof else None, "location": dev.location.model_dump(),
            "status": state.get("status", "never_seen") if state.get("last_seen_ms") or state.get("status")
            == "unreachable" else "never_seen",
            "status_reason": state.get("status_reason"), "link": state.get("link"),
            "last_seen": iso(state.get("last_seen_ms") or None), "latest": latest,
        }

    @app.get("/api/v1/devices", tags=["devices"])
    def devices(_: Viewer, site: str | None = None) -> list[dict[str, Any]]:
        with store() as st:
            states = {d["device_id"]: d for d in st.devices()}
        cat = ctx.catalog()
        return [_device_row(cat, d.device_id, states.get(d.device_id)) for d in cat.inventory.devices
                if site is None or d.site_id == site]

    @app.get("/api/v1/devices/{device_id}", tags=["devices"])
    def device(device_id: str, _: Viewer) -> dict[str, Any]:
        cat = ctx.catalog()
        if device_id not in cat.devices:
            raise HTTPException(404, f"unknown device {device_id!r}")
        with store() as st:
            state = next((d for d in st.devices() if d["device_id"] == device_id), None)
        return _device_row(cat, device_id, state)

    @app.get("/api/v1/readings", tags=["devices"])
    def readings(_: Viewer, device: str, metric: str | None = None, since: datetime | None = None,
                 until: datetime | None = None, limit: Annotated[int, Query(ge=1, le=10_000)] = 1000
                 ) -> list[dict[str, Any]]:
        with store() as st:
            rows = st.readings(device, metric=metric, since_ms=_ms(since), until_ms=_ms(until), limit=limit)
        cat = ctx.catalog()
        return [{"device_id": r.device_id, "site_id": r.site_id, "metric": r.metric,
                 "value": cat.typed(r.device_id, r.metric, r.value),
                 "unit": r.unit, "ts": iso(r.ts_ms), "received_at": iso(r.received_at_ms), "quality": r.quality}
                for r in rows]

    @app.get("/api/v1/dead-letters", tags=["devices"])
    def dead_letters(_: Viewer, limit: Annotated[int, Query(ge=1, le=1_000)] = 100,
                     before: Annotated[int | None, Query(ge=1, description="page on: ids below this")] = None
                     ) -> list[dict[str, Any]]:
        """Newest first. A page holds at most ``limit`` rows and about 1 MiB; each payload is at most its
        first 4 KiB (``size`` is the real size, ``truncated`` says so). Page on with ``before=<last id>``."""
        with store() as st:
            rows = st.dead_letters(limit=limit, max_bytes=PAGE_BYTES, before_id=before)
        for r in rows:
            r["at"] = iso(r.pop("at_ms"))
        return rows

    @app.get("/api/v1/stats", tags=["health"])
    def stats(_: Viewer) -> dict[str, Any]:
        with store() as st:
            out = st.stats()
            out.update(st.workflow_stats())
        return out

    # ------------------------------------------------------------------ fire events and hazards

    def _list(kind: str, open_only: bool, site: str | None, limit: int) -> list[dict[str, Any]]:
        with store() as st:
            ws = WorkflowStore(st.conn)
            rows = (ws.fire_events if kind == "fire_event" else ws.hazards)(open_only=open_only, site_id=site,
                                                                              limit=limit)
        return [public_subject(kind, r) for r in rows]

    def _detail(kind: str, subject_id: str) -> dict[str, Any]:
        with store() as st:
            ws = WorkflowStore(st.conn)
            row = ws.subject(kind, subject_id)
            if row is None:
                raise HTTPException(404, f"unknown {kind.replace('_', ' ')} {subject_id!r}")
            out = public_subject(kind, row)
            out["trail"] = ws.trail(kind, subject_id)
        return out

    @app.get("/api/v1/events", tags=["workflow"])
    def events(_: Viewer, open: bool = False, site: str | None = None,
               limit: Annotated[int, Query(ge=1, le=10_000)] = 500) -> list[dict[str, Any]]:
        return _list("fire_event", open, site, limit)

    @app.get("/api/v1/events/{event_id}", tags=["workflow"])
    def event(event_id: str, _: Viewer) -> dict[str, Any]:
        return _detail("fire_event", event_id)

    @app.get("/api/v1/hazards", tags=["workflow"])
    def hazards(_: Viewer, open: bool = False, site: str | None = None,
                severity: str | None = None, limit: Annotated[int, Query(ge=1, le=10_000)] = 500
                ) -> list[dict[str, Any]]:
        rows = _list("hazard", open, site, limit)
        return [r for r in rows if severity is None or r["severity"] == severity]

    @app.get("/api/v1/hazards/{hazard_id}", tags=["workflow"])
    def hazard(hazard_id: str, _: Viewer) -> dict[str, Any]:
        return _detail("hazard", hazard_id)

    async def _act(kind: str, subject_id: str, action: str, who: Caller, body: ActionIn) -> dict[str, Any]:
        await asyncio.to_thread(_detail, kind, subject_id)  # 404 for an unknown id
        if ctx.act is None:
            raise HTTPException(503, "the gateway is not running its workflow")
        params: dict[str, Any] = {}
        if body.resolution is not None:
            params["resolution"] = body.resolution
        if body.severity is not None:
            params["severity"] = body.severity
        if body.assignee is not None:
            params["assignee"] = body.assignee
        if body.deadline is not None:
            params["deadline_ms"] = _ms(body.deadline)
        try:
            records = await ctx.act(kind, subject_id, action, who.name, body.note, params)
        except TransitionError as exc:
            raise HTTPException(409, str(exc)) from exc
        subject = await asyncio.to_thread(_detail, kind, subject_id)
        return {"records": records, "subject": subject}

    @app.post("/api/v1/events/{event_id}/{action}", tags=["workflow"])
    async def event_action(event_id: str, action: FireAction, who: Operator,
                           body: ActionIn | None = None) -> dict[str, Any]:
        return await _act("fire_event", event_id, str(action), who, body or ActionIn())

    @app.post("/api/v1/hazards/{hazard_id}/{action}", tags=["workflow"])
    async def hazard_action(hazard_id: str, action: HazardAction, who: Operator,
                            body: ActionIn | None = None) -> dict[str, Any]:
        return await _act("hazard", hazard_id, str(action), who, body or ActionIn())

    @app.post("/api/v1/sites/{site_id}/override", tags=["sites"])
    async def override(site_id: str, body: OverrideIn, who: Admin) -> dict[str, Any]:
        if site_id not in ctx.catalog().sites:
            raise HTTPException(404, f"unknown site {site_id!r}")
        if ctx.admin is None:
            raise HTTPException(503, "the gateway is not running its workflow")
        try:
            rec = await ctx.admin("override", {"site_id": site_id, "code": body.code, "reason": body.reason,
                                              "actor": who.name, "until_ms": _ms(body.until),
                                              "stop_business": body.stop_business})
        except TransitionError as exc:
            raise HTTPException(409, str(exc)) from exc
        return {"record": rec, "site": await asyncio.to_thread(site, site_id, who)}

    @app.post("/api/v1/sites/{site_id}/inspection", tags=["sites"])
    async def inspection(site_id: str, who: Operator, body: InspectionIn | None = None) -> dict[str, Any]:
        if site_id not in ctx.catalog().sites:
            raise HTTPException(404, f"unknown site {site_id!r}")
        if ctx.admin is None:
            raise HTTPException(503, "the gateway is not running its workflow")
        await ctx.admin("inspection", {"site_id": site_id, "actor": who.name, "note": (body or InspectionIn()).note})
        return await asyncio.to_thread(site, site_id, who)

    # ------------------------------------------------------------------ profiles

    @app.get("/api/v1/profiles", tags=["profiles"])
    def profiles(_: Viewer) -> list[dict[str, Any]]:
        cat = ctx.catalog()
        used: dict[str, int] = {}
        for d in cat.inventory.devices:
            used[d.profile] = used.get(d.profile, 0) + 1
        return [{"profile": p.profile, "version": p.version, "kind": p.kind, "title_zh": p.title.zh,
                 "title_en": p.title.en, "transport": p.transport, "points": len(p.points),
                 "rules": len(p.rules), "devices": used.get(name, 0)} for name, p in sorted(cat.profiles.items())]

    async def _dry_run(body: ProfileIn, who: Caller) -> dict[str, Any]:
        try:
            out = await sandbox.dry_run(body.profile_yaml, body.sample, who=who.name)
        except SandboxBusy as exc:
            raise HTTPException(429, f"dry runs are busy: {exc}", headers={"Retry-After": "2"}) from exc
        except SandboxLimit as exc:
            raise HTTPException(422, {"valid": False, "problems": [f"profile: (file): {exc}"]}) from exc
        if out["limit"]:
            raise HTTPException(422, {"valid": False, "problems": out["problems"]})
        return out

    @app.post("/api/v1/profiles/validate", tags=["profiles"])
    async def validate(body: ProfileIn, who: Viewer) -> dict[str, Any]:
        """Dry run in a sandbox process (limits on size, nesting, time and memory)."""
        out = await _dry_run(body, who)
        return {"valid": out["valid"], "profile": out["profile"], "problems": out["problems"],
                "readings": out["readings"]}

    @app.post("/api/v1/profiles/activate", tags=["profiles"])
    async def activate(body: ProfileIn, who: Admin) -> dict[str, Any]:
        out = await _dry_run(body, who)
        if not out["valid"] or out["profile"] is None:
            raise HTTPException(422, {"valid": False, "problems": out["problems"]})
        if ctx.admin is None:
            raise HTTPException(503, "the gateway is not running")
        try:
            await ctx.admin("activate_profile", {"name": out["profile"], "yaml": body.profile_yaml,
                                                 "actor": who.name})
        except ConfigError as exc:
            raise HTTPException(409, {"valid": False, "problems": exc.problems}) from exc
        return {"activated": out["profile"], "version": out["version"], "readings": out["readings"]}

    # ------------------------------------------------------------------ live stream

    @app.get("/api/v1/stream", tags=["workflow"])
    async def stream(request: Request, caller_: Viewer) -> StreamingResponse:
        """Server-sent events; at most ``api.max_streams_per_token`` at once per token (429 beyond)."""
        key = caller_.name
        if streams.get(key, 0) >= s.api.max_streams_per_token:
            raise HTTPException(429, f"{key} already has {streams[key]} streams open", headers={"Retry-After": "5"})
        streams[key] = streams.get(key, 0) + 1

        async def gen() -> AsyncIterator[bytes]:
            try:
                async for chunk in _events():
                    yield chunk
            finally:
                streams[key] -= 1
                if streams[key] <= 0:
                    del streams[key]

        async def _events() -> AsyncIterator[bytes]:
            def last_seq() -> int:
                with store() as st:
                    row = st.conn.execute("SELECT coalesce(max(seq), 0) FROM workflow_events").fetchone()
                    return int(row[0])

            def since(seq: int) -> list[tuple[int, dict[str, Any]]]:
                with store() as st:
                    return WorkflowStore(st.conn).events_since(seq)

            seq = await asyncio.to_thread(last_seq)
            yield b"retry: 2000\n\n"
            beat = 0.0
            while not await request.is_disconnected():
                rows = await asyncio.to_thread(since, seq)
                for seq, body in rows:
                    yield f"event: transition\nid: {seq}\ndata: {json.dumps(body, ensure_ascii=False)}\n\n".encode()
                if time.monotonic() - beat > 5:
                    beat = time.monotonic()
                    yield b"event: beat\ndata: {}\n\n"
                await asyncio.sleep(0.25)

        return StreamingResponse(gen(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    if ctx.static_dir is not None and ctx.static_dir.is_dir():
        from fastapi.staticfiles import StaticFiles

        app.mount("/", StaticFiles(directory=ctx.static_dir, html=True), name="dashboard")
    return app


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the gateway owns SIGINT/SIGTERM
        yield


class ApiServer:
    """uvicorn on an event loop and thread of its own, on a socket the gateway binds itself.

    The API is a guest of the process. Its loop is not the gateway's: a flood of connections or
    requests costs the API's loop, never the loop that delivers webhooks and forwards readings.
    When it cannot bind (its port taken, say) it logs once, shows ``api`` failing in health, and
    retries with backoff (1 s doubling to 30 s) while ingestion goes on; when the port frees, it
    serves with no restart. uvicorn never binds (it would ``sys.exit``).
    """

    RETRY_MIN_S = 1.0
    RETRY_MAX_S = 30.0

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self.app = create_app(ctx)
        self._stage = ctx.health.stage("api")
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._gate = AcceptGate()

    def _new_server(self) -> _Server:
        s = self.ctx.settings.api
        self._gate = AcceptGate()
        protocol = guarded_protocol(max_connections=s.max_connections, header_timeout_s=s.header_timeout_s,
                                    gate=self._gate)
        return _Server(uvicorn.Config(self.app, log_level="critical", access_log=False, lifespan="off",
                                      http=protocol, timeout_keep_alive=max(1, int(s.keepalive_s)),
                                      h11_max_incomplete_event_size=16_384, server_header=False,
                                      timeout_graceful_shutdown=2))

    def _bind(self) -> socket.socket:
        s = self.ctx.settings.api
        host = s.host.strip("[]")
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, s.port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    async def run(self) -> None:
        """Serve (on the API's own thread) until :meth:`stop`; a service of the gateway's loop."""
        self._stopping.clear()  # a restart by the supervisor after a failure serves again
        done = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()

        def settle(exc: BaseException | None) -> None:
            if done.done():
                return
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)

        def main() -> None:
            failure: BaseException | None = None
            try:
                asyncio.run(self._serve())
            except BaseException as exc:  # reported to the service's task; the supervisor restarts it
                failure = exc if isinstance(exc, Exception) else RuntimeError(f"API thread ended: {exc!r}")
            loop.call_soon_threadsafe(settle, failure)

        thread = threading.Thread(target=main, name="firegw-api", daemon=True)
        thread.start()
        try:
            await done
        finally:
            self.stop()
            await asyncio.to_thread(thread.join, 10)

    async def _serve(self) -> None:
        listen = self.ctx.settings.api.listen
        delay = self.RETRY_MIN_S
        while not self._stopping.is_set():
            try:
                sock = self._bind()
            except OSError as exc:
                reason = f"cannot listen on {listen}: {exc.strerror or exc}; the API is not serving, ingestion goes on"
                if self._stage.fail(reason + f"; retrying (backoff up to {self.RETRY_MAX_S:.0f} s)"):
                    self._stage.connected = False
                await asyncio.to_thread(self._stopping.wait, delay)
                delay = min(delay * 2, self.RETRY_MAX_S)
                continue
            delay = self.RETRY_MIN_S
            server = self._server = self._new_server()
            if self._stopping.is_set():  # a stop that came while binding
                server.should_exit = True
            if self._stage.failing is not None:
                logger.info("api: %s is free again", listen)
            self._stage.ok()
            self._stage.set_connected(True)
            logger.info("api: serving on %s", listen)
            gate = self._gate
            watch = asyncio.create_task(self._hand_servers_to_the_gate(server, gate))
            try:
                await server.serve(sockets=[sock])
            except (Exception, SystemExit) as exc:  # never let uvicorn end the gateway
                self._stage.fail(f"the API server stopped: {exc!r}; restarting")
                self._stage.connected = False
            finally:
                watch.cancel()
                sock.close()
            if not self._stopping.is_set():
                await asyncio.to_thread(self._stopping.wait, delay)

    @staticmethod
    async def _hand_servers_to_the_gate(server: _Server, gate: AcceptGate) -> None:
        while not server.started:
            await asyncio.sleep(0.05)
        gate.servers = list(getattr(server, "servers", []))

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        sandbox = getattr(self.app.state, "sandbox", None)
        if sandbox is not None:
            sandbox.close()
