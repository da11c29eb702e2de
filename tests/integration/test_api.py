"""The ops API in-process, through its ASGI app: auth for every route, the workflow's actions and their
409s, bad requests, security headers, body limits, the stream cap, dry runs.

Each test gets a real store in a temporary folder, the shipped profiles and a small inventory; the
committer's part in an action is played by the real workflow hooks on that store, one call at a
time (the committer's thread adds nothing to what the API does). What needs a real server or a
real gateway is in ``test_api_live.py`` and ``test_api_hardening.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from fastapi import FastAPI

from gateway.api import ApiContext, create_app
from gateway.api.sandbox import Sandbox
from gateway.errors import ConfigError
from gateway.health import Health
from gateway.models import DeadLetter, PointClass, Quality, Reading
from gateway.profiles.loader import Catalog, load_catalog
from gateway.runtime.hooks import WorkflowHooks
from gateway.settings import GatewaySettings
from gateway.store.sqlite import Store
from gateway.store.workflow import WorkflowStore, event_body
from tests.support import PROFILES

TOKENS = {
    "viewer": "viewer-token-0123456789",
    "operator": "operator-token-0123456789",
    "admin": "admin-token-0123456789",
}
BUTTON = (PROFILES / "onekey-alarm-button.yaml").read_text()
DASHBOARD = Path(__file__).resolve().parents[2] / "gateway" / "dashboard"
MAX_BODY = 65_536
T = TypeVar("T")


def _site(site_id: str, town: str, grid_cell: str, domain: str) -> dict[str, Any]:
    return {
        "site_id": site_id,
        "name": f"{town}{site_id}",
        "enterprise": "示范单位",
        "town": town,
        "grid_cell": grid_cell,
        "domain": domain,
        "address": f"{town}1号",
        "station": {"station_id": f"mfs-{site_id}", "name": f"{town}微型消防站", "response_time_s": 180},
    }


def _device(device_id: str, site_id: str, profile: str) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "site_id": site_id,
        "profile": profile,
        "location": {"building": "1号楼", "floor": "2", "room": "201"},
    }


INVENTORY = {
    "sites": [_site("site-a", "安昌街道", "AC-01", "industrial"), _site("site-b", "柯桥街道", "KQ-02", "street_shop")],
    "devices": [
        _device("button-1", "site-a", "onekey-alarm-button"),
        _device("level-1", "site-a", "water-level-sensor"),
        _device("smoke-1", "site-b", "nbiot-smoke-detector"),
    ],
}


# ---------------------------------------------------------------------------- the world


class Committer:
    """The committer's part in the API's actions, without its thread: the real workflow hooks on the
    store, one call at a time, each in a transaction (``gateway.runtime.pipeline`` does the same through the
    committer)."""

    def __init__(self, path: Path, catalog: Catalog) -> None:
        self.path = path
        self.hooks = WorkflowHooks(catalog, Health())
        self.admin_calls: list[tuple[str, dict[str, Any]]] = []
        self.activation_error: ConfigError | None = None
        self._lock = threading.Lock()

    def call(self, fn: Callable[[Store], T]) -> T:
        with self._lock, Store(self.path) as st, st.transaction():
            return fn(st)

    async def act(
        self, kind: str, subject_id: str, action: str, actor: str, note: str, params: dict[str, Any]
    ) -> list[dict[str, Any]]:
        now = int(time.time() * 1000)
        return await asyncio.to_thread(
            self.call,
            lambda st: [event_body(r) for r in self.hooks.act(st, kind, subject_id, action, actor, note, params, now)],
        )

    async def admin(self, op: str, args: dict[str, Any]) -> Any:
        self.admin_calls.append((op, args))
        now = int(time.time() * 1000)
        if op == "override":
            return await asyncio.to_thread(
                self.call,
                lambda st: self.hooks.set_override(
                    st,
                    args["site_id"],
                    args["code"],
                    args["reason"],
                    args["actor"],
                    args["until_ms"],
                    args["stop_business"],
                    now,
                ),
            )
        if op == "inspection":
            return await asyncio.to_thread(
                self.call,
                lambda st: self.hooks.record_inspection(st, args["site_id"], args["actor"], args["note"], now),
            )
        if op == "activate_profile" and self.activation_error is not None:
            raise self.activation_error
        return None


@dataclass
class World:
    """A store with one open fire event and one proposed hazard (from a real alarm and fault of
    ``button-1``), readings of ``level-1``, dead letters; ``smoke-1`` was never seen."""

    root: Path
    catalog: Catalog
    sandbox: Sandbox
    committer: Committer = field(init=False)
    health: Health = field(default_factory=Health)
    fire_event_id: str = ""
    hazard_id: str = ""
    now_ms: int = 0

    def __post_init__(self) -> None:
        self.committer = Committer(self.db, self.catalog)
        self.health.stage("committer").beat()
        self.health.stage("source:mqtt").set_connected(True)

    @property
    def db(self) -> Path:
        return self.root / "firegw.db"

    def seed(self) -> World:
        now = self.now_ms = int(time.time() * 1000)
        button = [
            Reading("site-a", "button-1", "fire_alarm", True, "", now, now, point_class=PointClass.ALARM, urgent=True),
            Reading("site-a", "button-1", "fault", True, "", now, now, point_class=PointClass.FAULT, urgent=True),
        ]
        level = [
            Reading(
                "site-a",
                "level-1",
                "level",
                3.0 + i / 10,
                "m",
                now - (5 - i) * 1000,
                now,
                quality=Quality.SUSPECT if i == 4 else Quality.GOOD,
            )
            for i in range(5)
        ]

        def write(st: Store) -> None:
            st.insert_readings(button + level)
            st.update_state(button + level, {"button-1": ("site-a", now), "level-1": ("site-a", now)})
            self.committer.hooks.on_readings(st, button, now)
            st.insert_dead(
                [
                    DeadLetter(
                        "mqtt",
                        "fire/site-a/button/button-1/up",
                        b"\xff{not json" * 1000,
                        "payload is not JSON",
                        now,
                        "button-1",
                    ),
                    DeadLetter("mqtt", "fire/x/y/z/up", b"{}", "unknown device", now),
                ]
            )

        self.committer.call(write)
        with Store(self.db, readonly=True) as st:
            ws = WorkflowStore(st.conn)
            self.fire_event_id = ws.fire_events()[0]["fire_event_id"]
            self.hazard_id = ws.hazards()[0]["hazard_id"]
        return self

    def settings(self, *, tokens: bool = True, **api: Any) -> GatewaySettings:
        toks = [{"name": f"{role}-user", "role": role, "token": tok} for role, tok in TOKENS.items()] if tokens else []
        return GatewaySettings.model_validate(
            {"store": {"path": str(self.db)}, "api": {"tokens": toks, "max_body_bytes": MAX_BODY, **api}}
        )

    def context(self, *, tokens: bool = True, workflow: bool = True, **api: Any) -> ApiContext:
        return ApiContext(
            settings=self.settings(tokens=tokens, **api),
            health=self.health,
            catalog=lambda: self.catalog,
            act=self.committer.act if workflow else None,
            admin=self.committer.admin if workflow else None,
            static_dir=DASHBOARD,
            sandbox=self.sandbox,
        )

    def client(self, ctx: ApiContext | None = None) -> Client:
        return Client(create_app(ctx or self.context()))


class Client:
    """httpx on the app's ASGI interface (``httpx.ASGITransport``), for plain (not async) tests: one
    event loop per client, run for each request."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._loop = asyncio.new_event_loop()
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=("192.0.2.7", 50000))
        self._http = httpx.AsyncClient(transport=transport, base_url="http://gw")

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self._loop.run_until_complete(self._http.request(method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.run_until_complete(self._http.aclose())
        self._loop.run_until_complete(self._loop.shutdown_default_executor())
        self._loop.close()


def inventory_catalog(folder: Path) -> Catalog:
    """The shipped profiles and :data:`INVENTORY` (written to ``folder``)."""
    inv = folder / "inventory.yaml"
    inv.write_text(yaml.safe_dump(INVENTORY, allow_unicode=True))
    return load_catalog(PROFILES, inv)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    return inventory_catalog(tmp_path_factory.mktemp("inventory"))


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    """One dry-run worker for the module (it takes a second to start)."""
    sb = Sandbox(timeout_s=30)
    try:
        yield sb
    finally:
        sb.close()


@pytest.fixture
def world(tmp_path: Path, catalog: Catalog, sandbox: Sandbox) -> World:
    return World(tmp_path, catalog, sandbox).seed()


@pytest.fixture
def client(world: World) -> Iterator[Client]:
    with world.client() as c:
        yield c


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


# ---------------------------------------------------------------------------- auth for every route

#: The least role each operation needs; every operation of the schema is here (the test checks).
NEEDS: dict[tuple[str, str], str] = {
    ("POST", "/api/v1/events/{event_id}/{action}"): "operator",
    ("POST", "/api/v1/hazards/{hazard_id}/{action}"): "operator",
    ("POST", "/api/v1/sites/{site_id}/inspection"): "operator",
    ("POST", "/api/v1/sites/{site_id}/override"): "admin",
    ("POST", "/api/v1/profiles/activate"): "admin",
    ("POST", "/api/v1/profiles/validate"): "viewer",
}
ROLES = ("viewer", "operator", "admin")


def _operations(app: FastAPI) -> list[tuple[str, str]]:
    return [(method.upper(), path) for path, ops in app.openapi()["paths"].items() for method in ops]


def _request(world: World, method: str, path: str) -> tuple[str, dict[str, Any] | None]:
    """A concrete, valid request for an operation of the schema."""
    url = (
        path.replace("{site_id}", "site-a")
        .replace("{device_id}", "button-1")
        .replace("{event_id}", world.fire_event_id)
        .replace("{hazard_id}", world.hazard_id)
    )
    if path == "/api/v1/events/{event_id}/{action}":
        return url.replace("{action}", "acknowledge"), {"note": "on our way"}
    if path == "/api/v1/hazards/{hazard_id}/{action}":
        return url.replace("{action}", "confirm"), {"note": "seen"}
    if path.endswith("/override"):
        return url, {"code": "red", "reason": "停业整改 ordered by the town"}
    if path.startswith("/api/v1/profiles/"):
        return url, {"profile_yaml": BUTTON}
    if path == "/api/v1/readings":
        return url + "?device=button-1", None
    return url, {} if method == "POST" else None


def test_every_route_needs_a_token_and_the_right_role(world: World, client: Client) -> None:
    ops = _operations(client.app)
    assert len(ops) >= 23 and {op for op in NEEDS} <= set(ops)
    for method, path in ops:
        url, body = _request(world, method, path)
        assert client.request(method, url, json=body).status_code == 401, (method, path)
        bad = {"Authorization": "Bearer wrong-token-000000"}
        assert client.request(method, url, json=body, headers=bad).status_code == 401, (method, path)
        if path == "/api/v1/stream":
            continue  # an endless answer: test_streams_are_capped_per_token opens it with a token
        needs = NEEDS.get((method, path), "viewer")
        for role in ROLES:
            r = client.request(method, url, json=body, headers=auth(role))
            if ROLES.index(role) < ROLES.index(needs):
                assert r.status_code == 403 and needs in r.json()["detail"], (method, path, role, r.text)
            else:
                assert r.status_code not in (401, 403), (method, path, role, r.text)
                assert r.status_code < 500, (method, path, role, r.text)


def test_no_tokens_serves_viewers_and_refuses_every_write(world: World) -> None:
    with world.client(world.context(tokens=False)) as client:
        assert client.get("/api/v1/whoami").json() == {"name": "anonymous", "role": "viewer"}
        for method, path in _operations(client.app):
            url, body = _request(world, method, path)
            if path == "/api/v1/stream":
                continue
            r = client.request(method, url, json=body)
            if method == "GET" or path == "/api/v1/profiles/validate":  # a dry run reads and writes nothing
                assert r.status_code == 200, (method, path, r.text)
            else:
                assert r.status_code == 401 and "api.tokens" in r.json()["detail"], (method, path, r.text)
                assert r.headers["www-authenticate"] == "Bearer"
    assert world.committer.admin_calls == []


def test_whoami_names_the_token_and_its_role(client: Client) -> None:
    for role in ROLES:
        assert client.get("/api/v1/whoami", headers=auth(role)).json() == {"name": f"{role}-user", "role": role}


def test_the_dashboards_role_probe(client: Client) -> None:
    """gateway/dashboard/api.js probes an unknown event: 403 means a viewer, 404 an operator or admin."""
    probe = "/api/v1/events/__probe__/acknowledge"
    assert client.post(probe, headers=auth("viewer")).status_code == 403
    assert client.post(probe, headers=auth("operator")).status_code == 404


def test_failed_authentications_are_logged_but_not_per_request(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.api"):
        for _ in range(30):
            assert client.get("/api/v1/sites", headers={"Authorization": "Bearer not-a-token"}).status_code == 401
            assert client.post("/api/v1/profiles/validate", json={}).status_code == 401
    lines = [r.getMessage() for r in caplog.records if "failed authentication" in r.getMessage()]
    assert len(lines) == 1 and "192.0.2.7" in lines[0], lines


# ---------------------------------------------------------------------------- reads


def test_sites_with_their_code_and_filters(world: World, client: Client) -> None:
    v = auth("viewer")
    sites = client.get("/api/v1/sites", headers=v).json()
    assert [s["site_id"] for s in sites] == ["site-a", "site-b"]
    a = sites[0]
    assert a["code"] == "green" and a["hazards_open"] == 1 and a["hazards_proposed"] == 1
    assert a["hazards_by_severity"] == {"critical": 0, "major": 0, "minor": 1, "info": 0}
    assert a["fire_events_open"] == 1 and a["station"] == "安昌街道微型消防站"
    assert [s["site_id"] for s in client.get("/api/v1/sites?town=柯桥街道", headers=v).json()] == ["site-b"]
    assert [s["site_id"] for s in client.get("/api/v1/sites?grid_cell=AC-01", headers=v).json()] == ["site-a"]
    assert client.get("/api/v1/sites?domain=village_house", headers=v).json() == []
    detail = client.get("/api/v1/sites/site-a", headers=v).json()
    summary = {k: v for k, v in detail.items() if k not in ("hazards", "fire_events", "devices")}
    assert summary.keys() == a.keys() and summary["code"] == a["code"]
    assert [h["hazard_id"] for h in detail["hazards"]] == [world.hazard_id]
    assert [e["fire_event_id"] for e in detail["fire_events"]] == [world.fire_event_id]
    assert [d["device_id"] for d in detail["devices"]] == ["button-1", "level-1"]
    r = client.get("/api/v1/sites/nope", headers=v)
    assert r.status_code == 404 and r.json() == {"detail": "unknown site 'nope'"}


def test_devices_with_their_state(world: World, client: Client) -> None:
    v = auth("viewer")
    devices = {d["device_id"]: d for d in client.get("/api/v1/devices", headers=v).json()}
    assert set(devices) == {"button-1", "level-1", "smoke-1"}
    assert devices["smoke-1"]["status"] == "never_seen" and devices["smoke-1"]["latest"] == {}
    level = devices["level-1"]
    assert level["status"] == "online" and level["kind"] == "level_sensor"
    assert level["location"] == {"building": "1号楼", "floor": "2", "room": "201"}
    assert level["latest"]["level"]["value"] == 3.4 and level["latest"]["level"]["quality"] == "suspect"
    assert devices["button-1"]["latest"]["fire_alarm"]["value"] is True  # SQLite's 1, typed by the profile
    assert [d["device_id"] for d in client.get("/api/v1/devices?site=site-b", headers=v).json()] == ["smoke-1"]
    assert client.get("/api/v1/devices/level-1", headers=v).json() == level
    assert client.get("/api/v1/devices/nope", headers=v).status_code == 404


def test_readings_typed_and_filtered(world: World, client: Client) -> None:
    v = auth("viewer")
    rows = client.get("/api/v1/readings?device=level-1", headers=v).json()
    assert [r["value"] for r in rows] == [3.0, 3.1, 3.2, 3.3, 3.4]
    assert rows[0]["unit"] == "m" and rows[0]["ts"].endswith("Z") and rows[-1]["quality"] == "suspect"
    since = rows[2]["ts"]
    assert [r["value"] for r in client.get(f"/api/v1/readings?device=level-1&since={since}", headers=v).json()] == [
        3.2,
        3.3,
        3.4,
    ]
    assert len(client.get("/api/v1/readings?device=level-1&limit=2", headers=v).json()) == 2
    button = client.get("/api/v1/readings?device=button-1&metric=fire_alarm", headers=v).json()
    assert [r["value"] for r in button] == [True]
    assert client.get("/api/v1/readings?device=level-1&limit=0", headers=v).status_code == 422
    assert client.get("/api/v1/readings", headers=v).status_code == 422  # device is required


def test_dead_letters_newest_first_truncated_and_paged(world: World, client: Client) -> None:
    v = auth("viewer")
    rows = client.get("/api/v1/dead-letters", headers=v).json()
    assert [r["reason"] for r in rows] == ["unknown device", "payload is not JSON"]
    junk = rows[1]
    assert junk["size"] == 10_000 and junk["truncated"] is True and len(junk["payload"]) <= 4096
    assert len(junk["digest"]) == 64 and junk["at"].endswith("Z")
    assert client.get(f"/api/v1/dead-letters?before={rows[0]['id']}", headers=v).json() == [junk]
    world.committer.call(
        lambda st: st.insert_dead([DeadLetter("mqtt", "t", b"x" * 5000, "junk", world.now_ms) for _ in range(400)])
    )
    page = client.get("/api/v1/dead-letters?limit=1000", headers=v)
    assert page.status_code == 200 and len(page.content) < 1_100_000 and 200 < len(page.json()) < 400


def test_stats_metrics_and_readiness(world: World, client: Client) -> None:
    v = auth("viewer")
    stats = client.get("/api/v1/stats", headers=v).json()
    assert stats["readings_stored"] == 7 and stats["hazards_open"] == 1 and stats["events_open"] == 1
    metrics = client.get("/metrics", headers=v)
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "firegw_readings_stored 7\n" in metrics.text
    assert 'firegw_stage_connected{stage="source:mqtt"} 1' in metrics.text
    ready = client.get("/readyz", headers=v)
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["store_writable"] is True
    assert {s["name"] for s in ready.json()["stages"]} == {"committer", "source:mqtt"}
    world.health.stage("source:mqtt").set_connected(False, "broker gone")
    world.health.stage("committer").fail("the store refuses writes")
    r = client.get("/readyz", headers=v)
    assert r.status_code == 503 and r.json()["ready"] is False
    assert r.json()["problems"] == ["committer: the store refuses writes", "source:mqtt: disconnected (broker gone)"]


def test_no_store_yet_is_a_503(world: World, tmp_path: Path) -> None:
    ctx = world.context()
    ctx = replace(
        ctx,
        settings=ctx.settings.model_copy(
            update={"store": ctx.settings.store.model_copy(update={"path": tmp_path / "none" / "firegw.db"})}
        ),
    )
    with world.client(ctx) as client:
        for path in (
            "/api/v1/sites",
            "/api/v1/devices",
            "/api/v1/events",
            "/api/v1/stats",
            f"/api/v1/hazards/{world.hazard_id}",
            "/api/v1/dead-letters",
        ):
            r = client.get(path, headers=auth("viewer"))
            assert r.status_code == 503 and r.json() == {"detail": "the store is not ready"}, path
        r = client.get("/readyz", headers=auth("viewer"))
        assert r.status_code == 503 and r.json()["store_writable"] is False


# ---------------------------------------------------------------------------- the workflow's actions


def test_fire_event_lifecycle_and_illegal_transitions(world: World, client: Client) -> None:
    op = auth("operator")
    url = f"/api/v1/events/{world.fire_event_id}"
    ev = client.get(url, headers=auth("viewer")).json()
    assert ev["state"] == "open" and ev["station"] and ev["building"] == "1号楼"
    r = client.post(url + "/resolve", headers=op, json={"note": "no resolution"})
    assert r.status_code == 409 and "resolution" in r.json()["detail"]  # resolving needs a resolution
    r = client.post(url + "/acknowledge", headers=op, json={"note": "on our way"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["subject"]["state"] == "acknowledged" and body["subject"]["acknowledged_by"] == "operator-user"
    [record] = body["records"]
    assert record["kind"] == "fire_event" and record["type"] == "acknowledged" and record["note"] == "on our way"
    assert record["fire_event"]["state"] == "acknowledged" and record["version"] == 1
    assert client.post(url + "/arrive", headers=op).status_code == 200
    r = client.post(url + "/resolve", headers=op, json={"resolution": "false_alarm", "note": "误报"})
    assert r.status_code == 200 and r.json()["subject"]["state"] == "resolved"
    r = client.post(url + "/acknowledge", headers=op)
    assert r.status_code == 409 and "resolved" in r.json()["detail"]
    detail = client.get(url, headers=auth("viewer")).json()
    assert [t["type"] for t in detail["trail"]] == ["opened", "acknowledged", "on_scene", "resolved"]
    assert detail["resolution"] == "false_alarm" and detail["trail"][1]["actor"] == "operator-user"
    assert client.get("/api/v1/events?open=true", headers=auth("viewer")).json() == []
    assert len(client.get("/api/v1/events", headers=auth("viewer")).json()) == 1


def test_hazard_confirmed_dispatched_and_closed(world: World, client: Client) -> None:
    op = auth("operator")
    url = f"/api/v1/hazards/{world.hazard_id}"
    r = client.post(url + "/confirm", headers=op, json={"severity": "major", "deadline": "2999-01-01T00:00:00"})
    assert r.status_code == 200, r.text
    h = r.json()["subject"]
    assert (h["state"], h["severity"], h["tier"], h["deadline"]) == (
        "confirmed",
        "major",
        "supervisor",
        "2999-01-01T00:00:00.000Z",
    )
    assert client.get("/api/v1/sites/site-a", headers=op).json()["code"] == "yellow"
    assert client.get("/api/v1/hazards?severity=minor", headers=op).json() == []
    assert (
        client.post(url + "/dispatch", headers=op, json={"assignee": "网格员1"}).json()["subject"]["assignee"]
        == "网格员1"
    )
    assert client.post(url + "/start", headers=op).status_code == 200
    assert client.post(url + "/rectified", headers=op).status_code == 200
    r = client.post(url + "/close", headers=op)
    assert r.status_code == 409 and "note" in r.json()["detail"]
    r = client.post(url + "/close", headers=op, json={"note": "复查合格，销号"})
    assert r.status_code == 200 and r.json()["subject"]["state"] == "closed"
    assert [t["type"] for t in r.json()["subject"]["trail"]] == [
        "opened",
        "confirmed",
        "dispatched",
        "rectifying",
        "rectified",
        "closed",
    ]
    assert client.get("/api/v1/sites/site-a", headers=op).json()["code"] == "green"


def test_override_and_inspection(world: World, client: Client) -> None:
    admin, op = auth("admin"), auth("operator")
    r = client.post(
        "/api/v1/sites/site-a/override", headers=admin, json={"code": "red", "reason": "停业整改 ordered by the town"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["record"]["type"] == "override_set" and r.json()["record"]["snapshot"]["code"] == "red"
    assert r.json()["site"]["code"] == "red" and r.json()["site"]["overridden"] is True
    r = client.post("/api/v1/sites/site-a/override", headers=admin, json={"code": None, "reason": "lifted"})
    assert r.status_code == 200 and r.json()["record"]["type"] == "override_cleared"
    r = client.post("/api/v1/sites/site-a/override", headers=admin, json={"code": None, "reason": "again"})
    assert r.status_code == 409 and "no override" in r.json()["detail"]
    assert client.post("/api/v1/sites/nope/override", headers=admin, json={"reason": "x"}).status_code == 404
    r = client.post("/api/v1/sites/site-b/inspection", headers=op, json={"note": "查看了"})
    assert r.status_code == 200 and r.json()["site_id"] == "site-b" and r.json()["last_inspection"]
    assert client.post("/api/v1/sites/site-b/inspection", headers=op).status_code == 200  # the body is optional
    assert client.post("/api/v1/sites/nope/inspection", headers=op).status_code == 404
    assert [op_ for op_, _ in world.committer.admin_calls] == [
        "override",
        "override",
        "override",
        "inspection",
        "inspection",
    ]


def test_without_the_workflow_actions_are_a_503(world: World) -> None:
    with world.client(world.context(workflow=False)) as client:
        for url, body, role in [
            (f"/api/v1/events/{world.fire_event_id}/acknowledge", {}, "operator"),
            (f"/api/v1/hazards/{world.hazard_id}/confirm", {}, "operator"),
            ("/api/v1/sites/site-a/inspection", {}, "operator"),
            ("/api/v1/sites/site-a/override", {"code": "red", "reason": "x"}, "admin"),
        ]:
            r = client.post(url, json=body, headers=auth(role))
            assert r.status_code == 503 and "not running its workflow" in r.json()["detail"], url
        # unknown ids are still a 404 first
        assert client.post("/api/v1/events/nope/acknowledge", headers=auth("operator")).status_code == 404
        r = client.post("/api/v1/profiles/activate", json={"profile_yaml": BUTTON}, headers=auth("admin"))
        assert r.status_code == 503 and r.json() == {"detail": "the gateway is not running"}


# ---------------------------------------------------------------------------- bad requests


def test_bad_requests_get_4xx_and_change_nothing(world: World, client: Client) -> None:
    url = f"/api/v1/events/{world.fire_event_id}/acknowledge"
    op = {**auth("operator"), "Content-Type": "application/json"}
    assert client.post(url, content=b"{not json", headers=op).status_code == 422
    assert client.post(url, json={"note": "x", "bogus": 1}, headers=op).status_code == 422
    r = client.post(url, content=b"x" * (MAX_BODY + 1), headers=op)
    assert r.status_code == 413 and r.json() == {"detail": f"body over {MAX_BODY} bytes"}
    assert client.post("/api/v1/events/nope/acknowledge", headers=op).status_code == 404
    assert client.post("/api/v1/hazards/nope/confirm", headers=op).status_code == 404
    assert client.post(url.replace("acknowledge", "explode"), headers=op).status_code == 422
    assert client.get("/api/v1/events/nope", headers=op).json() == {"detail": "unknown fire event 'nope'"}
    assert client.get("/api/v1/hazards/nope", headers=op).json() == {"detail": "unknown hazard 'nope'"}
    detail = client.get(f"/api/v1/events/{world.fire_event_id}", headers=op).json()
    assert detail["state"] == "open" and [t["type"] for t in detail["trail"]] == ["opened"]


def test_validation_errors_do_not_echo_the_input(client: Client) -> None:
    r = client.post(
        "/api/v1/sites/site-a/override",
        headers=auth("admin"),
        json={"code": "purple", "reason": "x" * 3000, "extra": "y" * 10_000},
    )
    assert r.status_code == 422 and len(r.content) < 2000
    assert {tuple(d) for d in r.json()["detail"]} == {("loc", "msg", "type")}


BAD_INPUT: list[tuple[str, str, bytes]] = [
    ("POST", "/api/v1/events/{ev}/acknowledge", b'{"note": "\\ud800"}'),
    ("POST", "/api/v1/events/{ev}/acknowledge", b'{"note": "ok", "deadline": 1e400}'),
    ("POST", "/api/v1/events/{ev}/acknowledge", b'{"note": "ok", "deadline": "0001-01-01T00:00:00"}'),
    ("POST", "/api/v1/hazards/{hz}/confirm", b'{"deadline": "9999-12-31T23:59:59"}'),
    ("GET", "/api/v1/readings?device=x&since=0001-01-01T00:00:00", b""),
    ("GET", "/api/v1/readings?device=x&since=9999-12-31T23:59:59", b""),
    ("GET", "/api/v1/dead-letters?before=0", b""),
    ("GET", "/api/v1/dead-letters?before=79296652714312381623173120", b""),  # past SQLite's integers: was a 500
    ("GET", "/api/v1/events?limit=100000", b""),
    ("POST", "/api/v1/profiles/validate", json.dumps({"profile_yaml": "a: " + "[" * 20_000}).encode()),
    ("POST", "/api/v1/profiles/validate", json.dumps({"profile_yaml": "- " * 20_000 + "x"}).encode()),
    ("POST", "/api/v1/profiles/validate", json.dumps({"profile_yaml": ""}).encode()),
    (
        "POST",
        "/api/v1/profiles/activate",
        json.dumps({"profile_yaml": BUTTON.replace("profile: onekey-alarm-button", "profile: a" + "b" * 300)}).encode(),
    ),
    ("POST", "/api/v1/sites/nope/override", b'{"code": "red", "reason": "\\udfff"}'),
    ("POST", "/api/v1/sites/site-a/override", b'{"code": "red", "reason": ""}'),
    ("POST", "/api/v1/sites/site-a/override", b'{"code": "red", "reason": "x", "until": "1999-01-01T00:00:00Z"}'),
]


@pytest.mark.parametrize(("method", "path", "body"), BAD_INPUT)
def test_bad_input_is_a_4xx_never_a_500(world: World, client: Client, method: str, path: str, body: bytes) -> None:
    url = path.format(ev=world.fire_event_id, hz=world.hazard_id)
    r = client.request(method, url, content=body or None, headers={**auth("admin"), "Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, f"{method} {path} {body[:60]!r} -> {r.status_code} {r.text[:200]}"


# ---------------------------------------------------------------------------- headers and bodies


def test_security_headers_everywhere_and_no_cdn_docs(client: Client) -> None:
    for path in ("/", "/app.js", "/api/v1/sites", "/api/v1/nothing-here"):
        r = client.get(path, headers=auth("viewer"))
        assert "default-src 'self'" in r.headers["content-security-policy"], path
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["referrer-policy"] == "no-referrer", path
    r = client.post("/api/v1/profiles/validate", json={})  # answered by the guard itself
    assert r.status_code == 401 and r.headers["x-frame-options"] == "DENY"
    assert client.get("/docs").status_code == 404
    assert "cdn" not in client.get("/").text.lower()


class _Asgi:
    """Drives the app with hand-made ASGI messages: what a client sends and when, what it was told."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def post(self, path: str, headers: Sequence[tuple[bytes, bytes]], chunks: Sequence[bytes]) -> tuple[int, int]:
        """(status, how many body chunks the app asked for)."""
        asked = 0
        status = 0

        async def receive() -> dict[str, Any]:
            nonlocal asked
            if asked >= len(chunks):
                raise AssertionError("the app read past the body")
            asked += 1
            return {"type": "http.request", "body": chunks[asked - 1], "more_body": asked < len(chunks)}

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await self.app(_scope("POST", path, headers), receive, send)
        return status, asked

    async def open_stream(self, headers: Sequence[tuple[bytes, bytes]]) -> Stream:
        """GET /api/v1/stream and keep it open: its status, what it sent, and a way to hang up."""
        stream = Stream()

        async def receive() -> dict[str, Any]:
            await stream.gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start" and not stream.started.done():
                stream.started.set_result(message["status"])
            stream.body += message.get("body", b"")

        stream.task = asyncio.create_task(self.app(_scope("GET", "/api/v1/stream", headers), receive, send))
        stream.status = await asyncio.wait_for(stream.started, 10)
        return stream


@dataclass
class Stream:
    started: asyncio.Future[int] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    body: bytes = b""
    status: int = 0
    task: asyncio.Task[None] | None = None

    async def close(self) -> None:
        self.gone.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 10)


def _scope(method: str, path: str, headers: Sequence[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"gw"), *headers],
        "client": ("192.0.2.7", 50000),
        "server": ("gw", 80),
    }


def _bearer(role: str) -> tuple[bytes, bytes]:
    return (b"authorization", f"Bearer {TOKENS[role]}".encode())


def test_token_and_size_are_checked_before_the_body_is_read(world: World) -> None:
    asgi = _Asgi(create_app(world.context()))
    huge = [(b"content-type", b"application/json"), (b"content-length", b"300000000")]

    async def main() -> None:
        assert await asgi.post("/api/v1/profiles/validate", huge, [b"{"]) == (401, 0)
        assert await asgi.post("/api/v1/profiles/validate", [*huge, _bearer("admin")], [b"{"]) == (413, 0)
        chunked = [b'{"profile_yaml": "', *[b"x" * 4096] * 100, b'"}']  # no content-length: read until past
        status, asked = await asgi.post("/api/v1/profiles/validate", [_bearer("admin")], chunked)
        assert status == 413 and asked == MAX_BODY // 4096 + 1, asked  # 413 at the chunk that passed
        assert await asgi.post("/api/v1/profiles/validate", [], chunked) == (401, 0)

    asyncio.run(main())


def test_busy_dry_runs_are_refused_before_the_body_is_read(world: World) -> None:
    class Busy(Sandbox):
        def refusal(self, who: str) -> str | None:
            return f"{who} must wait"

    ctx = replace(world.context(), sandbox=Busy())
    asgi = _Asgi(create_app(ctx))
    headers = [_bearer("viewer"), (b"content-length", b"300000")]
    assert asyncio.run(asgi.post("/api/v1/profiles/validate", headers, [b"{"])) == (429, 0)
    with world.client(ctx) as client:
        r = client.post("/api/v1/profiles/activate", json={"profile_yaml": BUTTON}, headers=auth("admin"))
        assert r.status_code == 429 and r.headers["retry-after"] == "2"
        assert r.json() == {"detail": "admin-user must wait"}
        # only the dry runs are guarded so
        assert client.post("/api/v1/sites/site-a/inspection", headers=auth("operator")).status_code == 200


def test_streams_are_capped_per_token(world: World) -> None:
    app = create_app(world.context())
    asgi = _Asgi(app)

    async def main() -> None:
        streams = [await asgi.open_stream([_bearer("viewer")]) for _ in range(4)]
        assert [s.status for s in streams] == [200] * 4
        extra = await asgi.open_stream([_bearer("viewer")])
        assert extra.status == 429 and b"already has 4 streams open" in extra.body
        await extra.close()
        other = await asgi.open_stream([_bearer("operator")])  # per token, not per API
        assert other.status == 200
        await world.committer.act("fire_event", world.fire_event_id, "acknowledge", "duty", "coming", {})
        wait = time.monotonic() + 10
        while b"event: transition" not in other.body and time.monotonic() < wait:
            await asyncio.sleep(0.05)
        assert other.body.startswith(b"retry: 2000\n\n") and b"event: beat\n" in other.body
        event = next(part for part in other.body.split(b"\n\n") if part.startswith(b"event: transition"))
        data = json.loads(event.split(b"data: ", 1)[1])
        assert data["kind"] == "fire_event" and data["type"] == "acknowledged" and data["actor"] == "duty"
        for s in (*streams, other):
            await s.close()
        again = await asgi.open_stream([_bearer("viewer")])
        assert again.status == 200
        await again.close()
        assert app.state.api.streams == {}

    asyncio.run(main())


# ---------------------------------------------------------------------------- profile dry runs


def test_profiles_listed_with_their_devices(client: Client) -> None:
    profiles = {p["profile"]: p for p in client.get("/api/v1/profiles", headers=auth("viewer")).json()}
    assert profiles["onekey-alarm-button"]["devices"] == 1 and profiles["fire-pump-cabinet"]["devices"] == 0
    assert profiles["onekey-alarm-button"]["transport"] == "mqtt" and profiles["onekey-alarm-button"]["points"] > 3


def test_dry_run_validates_and_decodes_a_sample(client: Client) -> None:
    bad = {
        "profile_yaml": "profile: x\nkind: k\ntitle: {zh: a, en: b}\ntransport: mqtt\ncadence_s: 1\n"
        "mqtt: {topic: 'a/{device_id}'}\npoints: [{name: p, class: analog, type: float, "
        "path: v, unit: furlong}]\n"
    }
    r = client.post("/api/v1/profiles/validate", json=bad, headers=auth("viewer"))
    assert r.status_code == 200 and r.json()["valid"] is False and r.json()["profile"] is None
    assert any("points[0]" in p and "furlong" in p for p in r.json()["problems"])
    good = {"profile_yaml": BUTTON, "sample": '{"event": "ALARM", "ts": 1764400000}'}
    r = client.post("/api/v1/profiles/validate", json=good, headers=auth("viewer"))
    assert r.json()["valid"] and r.json()["profile"] == "onekey-alarm-button" and r.json()["problems"] == []
    assert [(x["metric"], x["value"], x["class"]) for x in r.json()["readings"]] == [("fire_alarm", True, "alarm")]
    r = client.post("/api/v1/profiles/validate", json={"profile_yaml": "a: " + "[" * 100}, headers=auth("viewer"))
    assert r.status_code == 422 and r.json()["detail"]["valid"] is False
    assert "nested" in r.json()["detail"]["problems"][0]


def test_activation_goes_to_the_gateway(world: World, client: Client) -> None:
    body = {"profile_yaml": BUTTON.replace("version: 1", "version: 3"), "sample": '{"event": "fault"}'}
    r = client.post("/api/v1/profiles/activate", json=body, headers=auth("admin"))
    assert r.status_code == 200, r.text
    assert r.json()["activated"] == "onekey-alarm-button" and r.json()["version"] == 3
    assert world.committer.admin_calls == [
        ("activate_profile", {"name": "onekey-alarm-button", "yaml": body["profile_yaml"], "actor": "admin-user"})
    ]
    r = client.post("/api/v1/profiles/activate", json={"profile_yaml": "profile: x\n"}, headers=auth("admin"))
    assert r.status_code == 422 and r.json()["detail"]["valid"] is False and len(world.committer.admin_calls) == 1
    world.committer.activation_error = ConfigError(["onekey-alarm-button.yaml: points: clashes with the inventory"])
    r = client.post("/api/v1/profiles/activate", json=body, headers=auth("admin"))
    assert r.status_code == 409
    assert r.json() == {
        "detail": {"valid": False, "problems": ["onekey-alarm-button.yaml: points: clashes with the inventory"]}
    }


def test_a_failing_route_answers_500_without_its_details(world: World, caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> Catalog:
        raise RuntimeError("secret internals")

    with world.client(replace(world.context(), catalog=broken)) as client:
        r = client.get("/api/v1/profiles", headers=auth("viewer"))
    assert r.status_code == 500 and r.json() == {"detail": "internal error; it is logged"}
    assert "secret internals" in caplog.text and "secret" not in r.text
