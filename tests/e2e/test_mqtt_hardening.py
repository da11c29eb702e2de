"""What arrives over MQTT never stops or fools the gateway: the acceptance of issue 10, as a user runs it
(``firegw run`` with ``examples/inventory.yaml``, a real Mosquitto, ``firegw dead-letters|events|stats --json``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from simulators.broker import Mosquitto, free_port
from tests.support import ROOT, GatewayProc, Publisher, wait_for

BUTTON = "fire/kq-ac-baolong-wh3/button/btn-ac-0001/up"
BUTTON2 = "fire/kq-hs-xiaxie-cun/button/btn-hs-0001/up"
PRESSURE = "fire/kq-ac-baolong-wh3/pressure/prs-ac-0201/up"
TOKEN = "hardening-operator-0123456789"


@pytest.fixture
def gw(tmp_path: Path, broker: Mosquitto) -> Iterator[GatewayProc]:
    g = GatewayProc(
        tmp_path / "gw",
        env={
            "FIREGW_MQTT__URL": broker.url,
            "FIREGW_INVENTORY": str(ROOT / "examples" / "inventory.yaml"),
            "FIREGW_MQTT__CLIENT_ID": f"hardening-{broker.port}",
            "FIREGW_API__LISTEN": f"127.0.0.1:{free_port()}",
            "FIREGW_API__TOKENS": json.dumps([{"name": "duty", "role": "operator", "token": TOKEN}]),
        },
    )
    g.start()
    try:
        yield g
    finally:
        g.stop()


@pytest.fixture
def pub(broker: Mosquitto) -> Iterator[Publisher]:
    p = Publisher(broker.url)
    try:
        yield p
    finally:
        p.close()


def _events(gw: GatewayProc, device: str) -> list[dict[str, Any]]:
    return [e for e in gw.cli("events") if e["device_id"] == device]


def test_overflowing_time_is_a_dead_letter_and_the_next_alarm_goes_through(gw: GatewayProc, pub: Publisher) -> None:
    pub.publish(BUTTON, b'{"event":"heartbeat","ts":1e306}')
    dead = wait_for(lambda: [d for d in gw.cli("dead-letters") if d["address"] == BUTTON], 10, "the dead letter")
    assert "'ts'" in dead[0]["reason"], dead[0]
    t0 = time.monotonic()
    pub.publish(BUTTON, json.dumps({"event": "alarm", "ts": time.time()}).encode())
    wait_for(lambda: _events(gw, "btn-ac-0001"), 5, "the fire event")
    assert time.monotonic() - t0 < 2.0  # within a second of the publish, plus a CLI start-up
    assert gw.proc is not None and gw.proc.poll() is None and gw.runs == 1


@pytest.mark.parametrize(
    ("payload", "fire"),
    [
        ({"event": "ALARM"}, True),
        ({"event": "Alarm"}, True),
        ({"event": "alarm "}, True),
        ({"event": 1}, False),
        ({"event": True}, False),
        ({"event": "alrm"}, False),
    ],
)
def test_no_alarm_spelling_is_silently_accepted(
    gw: GatewayProc, pub: Publisher, payload: dict[str, Any], fire: bool
) -> None:
    before = gw.cli("stats")
    pub.publish(BUTTON, json.dumps({**payload, "ts": time.time()}).encode())

    def accounted() -> dict[str, Any] | None:
        s: dict[str, Any] = gw.cli("stats")
        return s if s["messages"] + s["dead_letters"] > before["messages"] + before["dead_letters"] else None

    after = wait_for(accounted, 10, "the message accounted for")
    assert after is not None
    if fire:
        assert after["messages"] == before["messages"] + 1
        wait_for(lambda: _events(gw, "btn-ac-0001"), 5, "a fire event")
    else:
        assert after["dead_letters"] == before["dead_letters"] + 1
        reason = gw.cli("dead-letters")[0]["reason"]
        assert "'event'" in reason and "not one the profile maps" in reason, reason
        assert _events(gw, "btn-ac-0001") == []


def test_duplicate_keys_are_a_dead_letter(gw: GatewayProc, pub: Publisher) -> None:
    pub.publish(BUTTON, b'{"event":"alarm","event":"heartbeat","ts":1764400000}')
    dead = wait_for(lambda: gw.cli("dead-letters"), 10, "the dead letter")
    assert "repeats the key 'event'" in dead[0]["reason"]
    assert _events(gw, "btn-ac-0001") == []


def _resolve_all(gw: GatewayProc) -> None:
    for ev in gw.cli("events"):
        if ev["state"] != "resolved":
            r = httpx.post(
                f"{gw.api}/api/v1/events/{ev['fire_event_id']}/resolve",
                json={"resolution": "test"},
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=10,
            )
            assert r.status_code == 200, r.text


def _marker(gw: GatewayProc, pub: Publisher, n: int) -> None:
    """Publish a heartbeat on another device and wait until it is committed: by then the broker has
    delivered whatever it replays on subscribe (retained messages come before anything new)."""
    before = gw.cli("stats")["messages"]
    pub.publish(BUTTON2, json.dumps({"event": "heartbeat", "ts": time.time() + n}).encode())
    wait_for(lambda: gw.cli("stats")["messages"] > before, 10, "the marker message")


def test_retained_alarm_is_taken_as_state_once(gw: GatewayProc, pub: Publisher) -> None:
    pub.publish(BUTTON, b'{"event":"alarm"}', retain=True)  # no device time: only the bytes identify it
    wait_for(lambda: _events(gw, "btn-ac-0001"), 10, "the fire event")
    _resolve_all(gw)
    messages = gw.cli("stats")["messages"]
    for n in range(2):  # reconnects: a restart resubscribes with the session present
        gw.stop()
        gw.start()
        _marker(gw, pub, n)
    assert len(_events(gw, "btn-ac-0001")) == 1
    assert gw.cli("stats")["messages"] == messages + 2  # the two markers; the retained alarm never again


def test_a_reading_dated_2999_never_becomes_the_latest(gw: GatewayProc, pub: Publisher) -> None:
    now = time.time()
    pub.publish(PRESSURE, json.dumps({"pressure": 0.9, "ts": 32503000000}).encode())  # year 2999
    pub.publish(PRESSURE, json.dumps({"pressure": 0.42, "ts": now}).encode())

    def latest() -> dict[str, Any] | None:
        r = httpx.get(
            f"{gw.api}/api/v1/devices/prs-ac-0201", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
        ).json()
        value: dict[str, Any] | None = r["latest"].get("pressure")
        return value

    got = wait_for(latest, 10, "a latest pressure")
    assert got is not None
    assert got["value"] == 0.42 and got["quality"] == "good"
    readings = gw.cli("readings", "prs-ac-0201", "--metric", "pressure")
    assert {(r["value"], r["quality"]) for r in readings} == {(0.9, "suspect"), (0.42, "good")}
