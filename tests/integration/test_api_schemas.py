"""The API's OpenAPI document is complete and true: every operation documents a typed answer, every
answer matches what is documented, and no response model drops a field its producer returns."""

from __future__ import annotations

import dataclasses
import datetime
import typing
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from pydantic import BaseModel

from gateway.api import schemas
from gateway.api.dryrun import dry_run
from gateway.api.sandbox import Sandbox
from gateway.hazards import codes, lifecycle
from gateway.health import Stage
from gateway.profiles.models import Location
from gateway.sites import site_summaries
from gateway.store.sqlite import Store
from gateway.store.workflow import WorkflowStore, event_body, public_subject
from tests.integration.test_api import BUTTON, Client, World, auth, inventory_catalog


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    sandbox = Sandbox(timeout_s=30)
    try:
        yield World(tmp_path_factory.mktemp("world"), inventory_catalog(tmp_path_factory.mktemp("inv")), sandbox).seed()
    finally:
        sandbox.close()


@pytest.fixture(scope="module")
def client(world: World) -> Iterator[Client]:
    with world.client() as c:
        yield c


@pytest.fixture(scope="module")
def document(client: Client) -> dict[str, Any]:
    doc: dict[str, Any] = client.get("/openapi.json").json()
    return doc


# ---------------------------------------------------------------------------- the document


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = doc
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_every_operation_documents_a_typed_answer(document: dict[str, Any]) -> None:
    """A typed client can be generated: every 2xx answer has a schema with properties, never ``{}``."""
    seen = 0
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            seen += 1
            ok = {code: r for code, r in op["responses"].items() if code.startswith("2")}
            assert list(ok) == ["200"], (method, path, list(op["responses"]))
            for code, answer in op["responses"].items():  # the errors are documented too
                if code != "200":
                    assert _resolve(document, answer["content"]["application/json"]["schema"])["properties"], (
                        method,
                        path,
                        code,
                    )
            content = ok["200"]["content"]
            if path == "/metrics":
                assert content == {"text/plain": {"schema": {"type": "string"}}}
            elif path == "/api/v1/stream":
                events = content["text/event-stream"]["itemSchema"]
                assert events["properties"]["data"]["contentSchema"] == {"$ref": "#/components/schemas/Transition"}
            else:
                schema = _resolve(document, content["application/json"]["schema"])
                if schema.get("type") == "array":
                    schema = _resolve(document, schema["items"])
                assert schema.get("type") == "object" and schema.get("properties"), (method, path, schema)
                assert schema.get("additionalProperties") is not True, (method, path)
    assert seen >= 23


def test_every_reference_resolves_and_every_component_has_a_shape(document: dict[str, Any]) -> None:
    for ref in set(_refs(document)):
        assert _resolve(document, {"$ref": ref}) is not None, ref
    for name, schema in document["components"]["schemas"].items():
        if name == "JsonValue":  # any JSON: evidence and a site transition's subject
            continue
        assert schema.get("properties") or schema.get("enum") or schema.get("oneOf"), name


# ---------------------------------------------------------------------------- answers as documented


def test_answers_match_their_documented_schema(world: World, client: Client, document: dict[str, Any]) -> None:
    """Every operation, called in-process on a store with data, answers what its schema says (errors too)."""
    spec = schemathesis.openapi.from_dict(document)
    ev, hz = world.fire_event_id, world.hazard_id
    v, op, admin = auth("viewer"), auth("operator"), auth("admin")
    calls: list[tuple[str, str, str, dict[str, str], Any]] = [
        ("GET", "/healthz", "/healthz", v, None),
        ("GET", "/readyz", "/readyz", v, None),
        ("GET", "/metrics", "/metrics", v, None),
        ("GET", "/api/v1/stats", "/api/v1/stats", v, None),
        ("GET", "/api/v1/whoami", "/api/v1/whoami", op, None),
        ("GET", "/api/v1/sites", "/api/v1/sites", v, None),
        ("GET", "/api/v1/sites/{site_id}", "/api/v1/sites/site-a", v, None),
        ("GET", "/api/v1/sites/{site_id}", "/api/v1/sites/nope", v, None),
        ("GET", "/api/v1/devices", "/api/v1/devices", v, None),
        ("GET", "/api/v1/devices/{device_id}", "/api/v1/devices/level-1", v, None),
        ("GET", "/api/v1/readings", "/api/v1/readings?device=level-1", v, None),
        ("GET", "/api/v1/readings", "/api/v1/readings?device=button-1", v, None),
        ("GET", "/api/v1/readings", "/api/v1/readings", v, None),
        ("GET", "/api/v1/dead-letters", "/api/v1/dead-letters", v, None),
        ("GET", "/api/v1/events", "/api/v1/events", v, None),
        ("GET", "/api/v1/events/{event_id}", f"/api/v1/events/{ev}", v, None),
        ("GET", "/api/v1/hazards", "/api/v1/hazards", v, None),
        ("GET", "/api/v1/hazards/{hazard_id}", f"/api/v1/hazards/{hz}", v, None),
        ("GET", "/api/v1/profiles", "/api/v1/profiles", v, None),
        ("GET", "/api/v1/sites", "/api/v1/sites", {}, None),
        ("POST", "/api/v1/events/{event_id}/{action}", f"/api/v1/events/{ev}/acknowledge", v, {}),
        ("POST", "/api/v1/events/{event_id}/{action}", f"/api/v1/events/{ev}/resolve", op, {}),
        ("POST", "/api/v1/events/{event_id}/{action}", f"/api/v1/events/{ev}/acknowledge", op, {"note": "x"}),
        ("POST", "/api/v1/events/{event_id}/{action}", "/api/v1/events/nope/acknowledge", op, {}),
        (
            "POST",
            "/api/v1/hazards/{hazard_id}/{action}",
            f"/api/v1/hazards/{hz}/confirm",
            op,
            {"severity": "critical", "deadline": "2999-01-01T00:00:00Z"},
        ),
        ("POST", "/api/v1/hazards/{hazard_id}/{action}", f"/api/v1/hazards/{hz}/explode", op, {}),
        (
            "POST",
            "/api/v1/sites/{site_id}/override",
            "/api/v1/sites/site-a/override",
            admin,
            {"code": "yellow", "reason": "整改", "until": "2999-01-01T00:00:00Z"},
        ),
        (
            "POST",
            "/api/v1/sites/{site_id}/override",
            "/api/v1/sites/site-a/override",
            admin,
            {"code": None, "reason": "lifted"},
        ),
        ("POST", "/api/v1/sites/{site_id}/inspection", "/api/v1/sites/site-b/inspection", op, {"note": "ok"}),
        (
            "POST",
            "/api/v1/profiles/validate",
            "/api/v1/profiles/validate",
            v,
            {"profile_yaml": BUTTON, "sample": '{"event": "alarm", "ts": 1764400000}'},
        ),
        ("POST", "/api/v1/profiles/validate", "/api/v1/profiles/validate", v, {"profile_yaml": "a: [[[[[[" * 10}),
        ("POST", "/api/v1/profiles/activate", "/api/v1/profiles/activate", admin, {"profile_yaml": BUTTON}),
        ("POST", "/api/v1/profiles/activate", "/api/v1/profiles/activate", admin, {"profile_yaml": "x: 1"}),
        ("POST", "/api/v1/profiles/activate", "/api/v1/profiles/activate", admin, {"bogus": 1}),
    ]
    statuses: dict[str, set[int]] = {}
    for method, template, url, headers, body in calls:
        r = client.request(method, url, json=body, headers=headers)
        r.elapsed = datetime.timedelta(0)
        assert r.status_code < 500, (method, url, r.text)
        assert str(r.status_code) in document["paths"][template][method.lower()]["responses"], (method, url, r.text)
        spec[template][method].validate_response(r)
        statuses.setdefault(template, set()).add(r.status_code)
    assert {op_ for op_ in statuses} | {"/api/v1/stream"} == set(document["paths"])
    assert all(200 in codes_ for codes_ in statuses.values()), statuses


def test_readiness_failing_is_documented_too(world: World, document: dict[str, Any]) -> None:
    health = world.health
    health.stage("source:modbus").fail("port taken")
    try:
        with world.client() as client:
            r = client.get("/readyz", headers=auth("viewer"))
        r.elapsed = datetime.timedelta(0)
        assert r.status_code == 503
        schemathesis.openapi.from_dict(document)["/readyz"]["GET"].validate_response(r)
    finally:
        health.stage("source:modbus").ok()


# ---------------------------------------------------------------------------- nothing dropped


def _fields(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _dataclass_fields(cls: type[Any]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _fire_event() -> dict[str, Any]:
    return lifecycle.FireEvent("f", "s", "d", "fire_alarm", "fire_alarm", 1).to_dict()


def _hazard() -> dict[str, Any]:
    return lifecycle.Hazard("h", "s", "d", "fault", "fault", "minor", 1).to_dict()


def _record(kind: str, snapshot: dict[str, Any]) -> dict[str, Any]:
    return event_body(lifecycle.Transition("e", kind, "x", "opened", 1, "system", "", snapshot))  # type: ignore[arg-type]


def _store_rows(world: World) -> dict[str, Any]:
    with Store(world.db, readonly=True) as st:
        ws = WorkflowStore(st.conn)
        device = next(d for d in st.devices() if d["latest"])
        return {
            "stats": {**st.stats(), **st.workflow_stats()},
            "dead": st.dead_letters()[0],
            "trail": ws.trail("fire_event", world.fire_event_id)[0],
            "latest": next(iter(device["latest"].values())),
            "site": site_summaries(world.catalog, ws, world.now_ms)[0],
        }


def test_no_response_model_drops_a_field(world: World) -> None:
    """Each model lists exactly what its producer returns, in the same order (a new field in the store,
    the workflow or the health stages fails here, not silently in the API)."""
    rows = _store_rows(world)
    out = dry_run(BUTTON, '{"event": "alarm"}')
    table: list[tuple[type[BaseModel], list[str]]] = [
        (schemas.FireEvent, list(public_subject("fire_event", _fire_event()))),
        (schemas.Hazard, list(public_subject("hazard", _hazard()))),
        (schemas.FireEventDetail, [*public_subject("fire_event", _fire_event()), "trail"]),
        (schemas.HazardDetail, [*public_subject("hazard", _hazard()), "trail"]),
        (schemas.TrailEntry, list(rows["trail"])),
        (schemas.FireEventTransition, list(_record("fire_event", _fire_event()))),
        (schemas.HazardTransition, list(_record("hazard", _hazard()))),
        (schemas.SiteTransition, list(_record("site", {"site_id": "s", "inspected_at_ms": 1}))),
        (schemas.OverrideRecord, _dataclass_fields(lifecycle.Transition)),
        (schemas.OverrideSnapshot, _dataclass_fields(codes.CodeOverride)),
        (schemas.Site, list(rows["site"])),
        (schemas.SeverityCounts, list(rows["site"]["hazards_by_severity"])),
        (schemas.Stats, list(rows["stats"])),
        (schemas.DeadLetter, [*(k for k in rows["dead"] if k != "at_ms"), "at"]),
        (schemas.LatestValue, [*rows["latest"], "ts"]),
        (schemas.Location, list(Location.model_fields)),
        (schemas.StageState, list(Stage("x").snapshot())),
        (schemas.DryRun, [k for k in out if k not in ("version", "limit")]),
        (schemas.DryRunReading, list(out["readings"][0])),
    ]
    for model, produced in table:
        assert _fields(model) == produced, model.__name__


def _literal(tp: Any) -> set[str]:
    args: set[str] = set()
    for arg in typing.get_args(tp):
        args |= _literal(arg) if typing.get_args(arg) else {arg} if arg is not type(None) else set()
    return args


def test_the_vocabulary_is_the_workflows() -> None:
    hints = typing.get_type_hints(lifecycle.Hazard)
    table: list[tuple[Any, set[str]]] = [
        (schemas.FireState, _literal(lifecycle.FireState)),
        (schemas.FireResolution, _literal(lifecycle.Resolution)),
        (schemas.HazardState, _literal(lifecycle.HazardState)),
        (schemas.HazardResolution, _literal(hints["resolution"])),
        (schemas.Tier, set(lifecycle.TIERS)),
        (schemas.Severity, set(lifecycle.SEVERITY_TIER)),
        (schemas.TransitionType, _literal(lifecycle.EventType)),
        (schemas.Code, set(codes.CADENCE)),
        (schemas.Cadence, set(codes.CADENCE_S)),
    ]
    for ours, theirs in table:
        assert _literal(ours) == theirs, ours


def test_a_stored_row_from_an_older_gateway_still_reads() -> None:
    """Rows keep the subject as JSON: one written before a field existed reads with the field's default."""
    row = public_subject("hazard", {k: v for k, v in _hazard().items() if k not in ("tier", "overdue")})
    h = schemas.Hazard.model_validate(row)
    assert h.tier == "grid_member" and h.overdue is False
