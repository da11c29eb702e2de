"""The ops API against a real gateway process: auth for every route, the workflow through the API,
bad requests, and the OpenAPI schema."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from simulators.broker import Mosquitto, free_port
from tests.support import PROFILES, GatewayProc, run_fleet, wait_for, write_inventory

TOKENS = {"viewer": "viewer-token-0123456789", "operator": "operator-token-0123456789",
          "admin": "admin-token-0123456789"}


@pytest.fixture
def api(tmp_path: Path, broker: Mosquitto) -> Iterator[tuple[GatewayProc, str]]:
    inv = tmp_path / "inventory.yaml"
    write_inventory(inv, 16)
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"api": {"tokens": [
        {"name": f"{role}-user", "role": role, "token": tok} for role, tok in TOKENS.items()]}}))
    port = free_port()
    profiles = tmp_path / "profiles"  # activation writes into the profiles folder: never the repository's
    shutil.copytree(PROFILES, profiles)
    gw = GatewayProc(tmp_path / "gw", env={"FIREGW_MQTT__URL": broker.url, "FIREGW_INVENTORY": str(inv),
                                           "FIREGW_CONFIG": str(config), "FIREGW_API__LISTEN": f"127.0.0.1:{port}",
                                           "FIREGW_MQTT__CLIENT_ID": f"api-{port}",
                                           "FIREGW_PROFILES_DIR": str(profiles)}).start()
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _up(base), 15, "API listening")
    try:
        yield gw, base
    finally:
        gw.stop()


def _up(base: str) -> bool:
    try:
        return httpx.get(base + "/healthz", timeout=1).status_code in (200, 401)
    except httpx.HTTPError:
        return False


def _h(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def _alarm(gw: GatewayProc, base: str, broker: Mosquitto) -> dict[str, Any]:
    run_fleet(broker.url, "--devices", "16", "--rate", "1", "--duration", "2", "--scenario", "button-alarm",
              "--alarm-at", "0.5")
    events: list[dict[str, Any]] = wait_for(
        lambda: httpx.get(base + "/api/v1/events?open=true", headers=_h("viewer")).json(), 10, "fire event")
    return events[0]


def test_every_route_needs_a_token_and_the_right_role(api: tuple[GatewayProc, str], broker: Mosquitto) -> None:
    gw, base = api
    ev = _alarm(gw, base, broker)
    schema = httpx.get(base + "/openapi.json").json()  # the schema itself documents the API; it holds no data
    gets = [p for p, ops in schema["paths"].items() if "get" in ops and "{" not in p]
    assert {"/healthz", "/readyz", "/metrics", "/api/v1/sites", "/api/v1/hazards", "/api/v1/events",
            "/api/v1/devices", "/api/v1/dead-letters", "/api/v1/profiles"} <= set(gets)
    for path in gets:
        if path == "/api/v1/stream":
            continue
        url = base + path + ("?device=x" if path == "/api/v1/readings" else "")
        assert httpx.get(url).status_code == 401, path
        assert httpx.get(url, headers={"Authorization": "Bearer wrong-token-000000"}).status_code == 401, path
        assert httpx.get(url, headers=_h("viewer")).status_code in (200, 503), path
    action = f"{base}/api/v1/events/{ev['fire_event_id']}/acknowledge"
    assert httpx.post(action).status_code == 401
    r = httpx.post(action, headers=_h("viewer"))
    assert r.status_code == 403 and "operator" in r.json()["detail"]
    r = httpx.post(action, headers=_h("operator"), json={"note": "on our way"})
    assert r.status_code == 200, r.text
    assert r.json()["subject"]["state"] == "acknowledged"
    assert r.json()["subject"]["acknowledged_by"] == "operator-user"
    # admin-only: site override
    site = ev["site_id"]
    body = {"code": "red", "reason": "停业整改 ordered by the town"}
    assert httpx.post(f"{base}/api/v1/sites/{site}/override", json=body, headers=_h("operator")).status_code == 403
    r = httpx.post(f"{base}/api/v1/sites/{site}/override", json=body, headers=_h("admin"))
    assert r.status_code == 200, r.text
    assert r.json()["site"]["code"] == "red" and r.json()["site"]["overridden"] is True


def test_fire_event_lifecycle_and_illegal_transitions(api: tuple[GatewayProc, str], broker: Mosquitto) -> None:
    gw, base = api
    ev = _alarm(gw, base, broker)
    url = f"{base}/api/v1/events/{ev['fire_event_id']}"
    assert ev["station"] and ev["building"]
    r = httpx.post(url + "/resolve", headers=_h("operator"), json={"note": "no resolution"})
    assert r.status_code == 409, r.text  # resolving needs a resolution
    assert httpx.post(url + "/acknowledge", headers=_h("operator")).status_code == 200
    assert httpx.post(url + "/arrive", headers=_h("operator")).status_code == 200
    r = httpx.post(url + "/resolve", headers=_h("operator"), json={"resolution": "false_alarm", "note": "误报"})
    assert r.status_code == 200 and r.json()["subject"]["state"] == "resolved"
    r = httpx.post(url + "/acknowledge", headers=_h("operator"))
    assert r.status_code == 409 and "resolved" in r.json()["detail"]
    detail = httpx.get(url, headers=_h("viewer")).json()
    assert [t["type"] for t in detail["trail"]] == ["opened", "acknowledged", "on_scene", "resolved"]
    assert detail["resolution"] == "false_alarm"
    assert httpx.get(f"{base}/api/v1/events?open=true", headers=_h("viewer")).json() == []


def test_bad_requests_get_4xx_and_change_nothing(api: tuple[GatewayProc, str], broker: Mosquitto) -> None:
    gw, base = api
    ev = _alarm(gw, base, broker)
    url = f"{base}/api/v1/events/{ev['fire_event_id']}/acknowledge"
    op = {**_h("operator"), "Content-Type": "application/json"}
    assert httpx.post(url, content=b"{not json", headers=op).status_code == 422
    assert httpx.post(url, json={"note": "x", "bogus": 1}, headers=op).status_code == 422
    assert httpx.post(url, content=b"x" * 2_000_000, headers=op).status_code == 413
    assert httpx.post(f"{base}/api/v1/events/nope/acknowledge", headers=op).status_code == 404
    assert httpx.post(f"{base}/api/v1/hazards/nope/confirm", headers=op).status_code == 404
    assert httpx.post(url.replace("acknowledge", "explode"), headers=op).status_code == 422
    detail = httpx.get(f"{base}/api/v1/events/{ev['fire_event_id']}", headers=_h("viewer")).json()
    assert detail["state"] == "open" and [t["type"] for t in detail["trail"]] == ["opened"]


def test_profiles_validate_and_activate_without_restart(api: tuple[GatewayProc, str], broker: Mosquitto) -> None:
    gw, base = api
    bad = {"profile_yaml": "profile: x\nkind: k\ntitle: {zh: a, en: b}\ntransport: mqtt\ncadence_s: 1\n"
                           "mqtt: {topic: 'a/{device_id}'}\npoints: [{name: p, class: analog, type: float, "
                           "path: v, unit: furlong}]\n"}
    r = httpx.post(f"{base}/api/v1/profiles/validate", json=bad, headers=_h("viewer"))
    assert r.status_code == 200 and not r.json()["valid"]
    assert any("points[0]" in p and "furlong" in p for p in r.json()["problems"])
    text = (PROFILES / "water-level-sensor.yaml").read_text()
    text = text.replace("version: 1", "version: 2")
    good = {"profile_yaml": text, "sample": '{"ts": 1764400000, "level": 3.5}'}
    r = httpx.post(f"{base}/api/v1/profiles/validate", json=good, headers=_h("viewer"))
    assert r.json()["valid"] and r.json()["readings"][0]["metric"] == "level"
    assert httpx.post(f"{base}/api/v1/profiles/activate", json=good, headers=_h("operator")).status_code == 403
    r = httpx.post(f"{base}/api/v1/profiles/activate", json=good, headers=_h("admin"))
    assert r.status_code == 200, r.text
    profs = {p["profile"]: p for p in httpx.get(f"{base}/api/v1/profiles", headers=_h("viewer")).json()}
    assert profs["water-level-sensor"]["version"] == 2
    assert gw.proc is not None and gw.proc.poll() is None  # no restart
    assert "version: 2" in Path(gw.env["FIREGW_PROFILES_DIR"], "water-level-sensor.yaml").read_text()


def test_readyz_and_metrics(api: tuple[GatewayProc, str]) -> None:
    _, base = api
    r = httpx.get(base + "/readyz", headers=_h("viewer"))
    assert r.status_code == 200, r.text
    assert r.json()["store_writable"] is True
    names = {s["name"] for s in r.json()["stages"]}
    assert {"committer", "source:mqtt"} <= names
    m = httpx.get(base + "/metrics", headers=_h("viewer")).text
    assert "firegw_messages " in m and 'firegw_stage_connected{stage="source:mqtt"} 1' in m
