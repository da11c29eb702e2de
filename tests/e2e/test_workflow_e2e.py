"""Fire events and hazards end to end: the fleet over a real Mosquitto, ``firegw run`` as a process,
the CLI reading the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from simulators.broker import Mosquitto
from tests.support import ROOT, GatewayProc, run_fleet, wait_for, write_inventory


def _cli(gw: GatewayProc, *args: str) -> Any:
    env = {**os.environ, "FIREGW_STORE__PATH": str(gw.db), **gw.env}
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args, "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=True,
    )
    return json.loads(out.stdout)


def _inventory(tmp_path: Path, devices: int, tweak: Any) -> Path:
    inv = tmp_path / "inventory.yaml"
    write_inventory(inv, devices)
    data = yaml.safe_load(inv.read_text(encoding="utf-8"))
    tweak(data)
    inv.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return inv


def test_button_alarm_opens_one_fire_event_escalates_and_survives_restart(tmp_path: Path, broker: Mosquitto) -> None:
    def fast_station(data: dict[str, Any]) -> None:
        for s in data["sites"]:
            s["station"]["response_time_s"] = 2

    inv = _inventory(tmp_path, 16, fast_station)
    gw = GatewayProc(
        tmp_path / "gw",
        env={"FIREGW_MQTT__URL": broker.url, "FIREGW_INVENTORY": str(inv), "FIREGW_MQTT__CLIENT_ID": "wf-alarm"},
    ).start()
    try:
        summary = run_fleet(
            broker.url,
            "--devices",
            "16",
            "--rate",
            "2",
            "--duration",
            "3",
            "--scenario",
            "button-alarm",
            "--alarm-at",
            "1",
        )
        assert summary["by_kind"].get("alarm") == 1
        events = wait_for(lambda: _cli(gw, "events", "--open"), 10, "a fire event")
        assert len(events) == 1
        ev = events[0]
        data = yaml.safe_load(inv.read_text())
        device = next(d for d in data["devices"] if d["device_id"] == ev["device_id"])
        site = next(s for s in data["sites"] if s["site_id"] == ev["site_id"])
        assert device["profile"] == "onekey-alarm-button"
        assert ev["state"] == "open" and ev["building"] == device["location"]["building"]
        assert ev["floor"] == device["location"]["floor"]
        assert ev["station"] == site["station"]["name"] and ev["opened_at"]
        # nobody acknowledges within the station's response time (2 s here): escalated to the duty officer
        wait_for(lambda: _cli(gw, "events", "--open")[0]["escalation_level"] >= 1, 15, "escalation")
        gw.stop()
        gw.start()
        after = _cli(gw, "events", "--trail")
        assert len(after) == 1 and after[0]["state"] == "open"
        assert [t["type"] for t in after[0]["trail"]][:2] == ["opened", "escalated"]
        assert _cli(gw, "stats")["events_open"] == 1
    finally:
        gw.stop()


def test_silent_device_gives_offline_hazard_without_new_messages(tmp_path: Path, broker: Mosquitto) -> None:
    def fast_no_data(data: dict[str, Any]) -> None:
        for d in data["devices"]:
            d["rules"] = [{"kind": "no_data", "cadence_s": 1.0}]

    inv = _inventory(tmp_path, 8, fast_no_data)
    gw = GatewayProc(
        tmp_path / "gw",
        env={"FIREGW_MQTT__URL": broker.url, "FIREGW_INVENTORY": str(inv), "FIREGW_MQTT__CLIENT_ID": "wf-silent"},
    ).start()
    try:
        run_fleet(broker.url, "--devices", "8", "--rate", "2", "--duration", "1.5")

        # every device is silent now: each gets one offline hazard from the timer, no message needed
        def offline() -> list[dict[str, Any]]:
            found = [h for h in _cli(gw, "hazards", "--open") if h["rule"] == "offline"]
            return found if len(found) >= 8 else []

        hazards = wait_for(offline, 20, "offline hazards")
        assert sorted(h["device_id"] for h in hazards) == sorted(
            d["device_id"] for d in yaml.safe_load(inv.read_text())["devices"]
        )
        h = hazards[0]
        assert h["class"] == "offline" and h["state"] == "proposed" and h["tier"] == "grid_member"
        assert h["title_zh"] and h["title_en"] and h["count"] == 1
        # restart: the same open hazards, none duplicated
        gw.stop()
        gw.start()
        again = _cli(gw, "hazards", "--open")
        assert sorted(x["hazard_id"] for x in again) == sorted(x["hazard_id"] for x in hazards)
    finally:
        gw.stop()
