"""The ops API on a real gateway process: what only the whole gateway can show. A fire alarm from the
MQTT fleet acted on through the API and the real committer, a profile activated and loaded without a
restart, readiness and metrics naming the real stages. Everything else about the API runs in-process
(``test_api.py``); the server itself is tested in ``test_api_hardening.py``."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from simulators.broker import Mosquitto, free_port
from tests.support import PROFILES, GatewayProc, run_fleet, wait_for, write_inventory

TOKENS = {
    "viewer": "viewer-token-0123456789",
    "operator": "operator-token-0123456789",
    "admin": "admin-token-0123456789",
}


@dataclass
class Live:
    gw: GatewayProc
    broker: Mosquitto
    base: str


@contextlib.contextmanager
def live_gateway(tmp: Path, tokens: dict[str, tuple[str, str]], *, devices: int = 16, **env: str) -> Iterator[Live]:
    """A private broker and ``firegw run`` with ``devices`` fleet devices, ``tokens`` (name -> (role,
    token)), a copy of the shipped profiles (activation writes into the folder) and ``env``; the API
    answering when it yields."""
    broker = Mosquitto(tmp / "broker").start()
    inv = tmp / "inventory.yaml"
    write_inventory(inv, devices)
    profiles = tmp / "profiles"
    shutil.copytree(PROFILES, profiles)
    port = free_port()
    api_tokens = [{"name": name, "role": role, "token": tok} for name, (role, tok) in tokens.items()]
    gw = GatewayProc(
        tmp / "gw",
        env={
            "FIREGW_MQTT__URL": broker.url,
            "FIREGW_INVENTORY": str(inv),
            "FIREGW_API__TOKENS": json.dumps(api_tokens),
            "FIREGW_API__LISTEN": f"127.0.0.1:{port}",
            "FIREGW_MQTT__CLIENT_ID": f"api-{port}",
            "FIREGW_PROFILES_DIR": str(profiles),
            **env,
        },
    )
    base = f"http://127.0.0.1:{port}"
    try:
        gw.start()
        wait_for(lambda: api_up(base), 15, "API listening")
        yield Live(gw, broker, base)
    finally:
        gw.stop()
        broker.stop()


def api_up(base: str) -> bool:
    try:
        return httpx.get(base + "/openapi.json", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with live_gateway(
        tmp_path_factory.mktemp("live"), {f"{role}-user": (role, tok) for role, tok in TOKENS.items()}
    ) as live:
        yield live


def _h(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def test_a_fire_alarm_acted_on_through_the_real_committer(live: Live) -> None:
    base = live.base
    run_fleet(
        live.broker.url,
        "--devices",
        "16",
        "--rate",
        "1",
        "--duration",
        "2",
        "--scenario",
        "button-alarm",
        "--alarm-at",
        "0.5",
    )
    events: list[dict[str, Any]] = wait_for(
        lambda: httpx.get(base + "/api/v1/events?open=true", headers=_h("viewer")).json(), 10, "fire event"
    )
    ev = events[0]
    assert ev["station"] and ev["building"]
    url = f"{base}/api/v1/events/{ev['fire_event_id']}"
    r = httpx.post(url + "/acknowledge", headers=_h("viewer"))
    assert r.status_code == 403 and "operator" in r.json()["detail"]
    r = httpx.post(url + "/resolve", headers=_h("operator"), json={"note": "no resolution"})
    assert r.status_code == 409, r.text  # resolving needs a resolution
    r = httpx.post(url + "/acknowledge", headers=_h("operator"), json={"note": "on our way"})
    assert r.status_code == 200, r.text
    assert r.json()["subject"]["state"] == "acknowledged" and r.json()["subject"]["acknowledged_by"] == "operator-user"
    assert [rec["type"] for rec in r.json()["records"]] == ["acknowledged"]
    assert httpx.post(url + "/arrive", headers=_h("operator")).status_code == 200
    r = httpx.post(url + "/resolve", headers=_h("operator"), json={"resolution": "false_alarm", "note": "误报"})
    assert r.status_code == 200 and r.json()["subject"]["state"] == "resolved"
    r = httpx.post(url + "/acknowledge", headers=_h("operator"))
    assert r.status_code == 409 and "resolved" in r.json()["detail"]
    detail = httpx.get(url, headers=_h("viewer")).json()
    assert [t["type"] for t in detail["trail"]] == ["opened", "acknowledged", "on_scene", "resolved"]
    assert httpx.get(f"{base}/api/v1/events?open=true", headers=_h("viewer")).json() == []
    body = {"code": "red", "reason": "停业整改 ordered by the town"}
    r = httpx.post(f"{base}/api/v1/sites/{ev['site_id']}/override", json=body, headers=_h("admin"))
    assert r.status_code == 200, r.text
    assert r.json()["site"]["code"] == "red" and r.json()["site"]["overridden"] is True


def test_profile_activated_without_a_restart(live: Live) -> None:
    base = live.base
    text = (PROFILES / "water-level-sensor.yaml").read_text().replace("version: 1", "version: 2")
    good = {"profile_yaml": text, "sample": '{"ts": 1764400000, "level": 3.5}'}
    r = httpx.post(f"{base}/api/v1/profiles/activate", json=good, headers=_h("admin"), timeout=30)
    assert r.status_code == 200, r.text
    profs = {p["profile"]: p for p in httpx.get(f"{base}/api/v1/profiles", headers=_h("viewer")).json()}
    assert profs["water-level-sensor"]["version"] == 2
    assert live.gw.proc is not None and live.gw.proc.poll() is None and live.gw.runs == 1  # no restart
    assert "version: 2" in Path(live.gw.env["FIREGW_PROFILES_DIR"], "water-level-sensor.yaml").read_text()


def test_readyz_and_metrics_name_the_real_stages(live: Live) -> None:
    r = httpx.get(live.base + "/readyz", headers=_h("viewer"))
    assert r.status_code == 200, r.text
    assert r.json()["store_writable"] is True
    assert {"committer", "source:mqtt"} <= {s["name"] for s in r.json()["stages"]}
    m = httpx.get(live.base + "/metrics", headers=_h("viewer")).text
    assert "firegw_messages " in m and 'firegw_stage_connected{stage="source:mqtt"} 1' in m
