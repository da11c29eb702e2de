"""The pump room end to end: the Modbus simulator with its physics and faults, ``firegw run`` as a
process, rules and hazards read back through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from simulators.broker import free_port
from tests.support import ROOT, GatewayProc, wait_for


def _cli(gw: GatewayProc, *args: str) -> Any:
    env = {**os.environ, "FIREGW_STORE__PATH": str(gw.db), **gw.env}
    out = subprocess.run([sys.executable, "-m", "gateway.cli", *args, "--json"], capture_output=True, text=True,
                         env=env, cwd=ROOT, check=True)
    return json.loads(out.stdout)


@contextmanager
def pumproom(tmp: Path, scenario: str, tweak: Callable[[dict[str, Any]], None]) -> Iterator[tuple[Any, Path]]:
    port = free_port()
    inv = tmp / "inventory.yaml"
    log = (tmp / "pumproom.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "simulators", "pumproom", "--port", str(port), "--devices", "2",
                             "--scenario", scenario, "--write-inventory", str(inv)], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "listening" in (tmp / "pumproom.log").read_text(), 20, "pump room simulator")
        data = yaml.safe_load(inv.read_text(encoding="utf-8"))
        tweak(data)
        inv.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        yield proc, inv
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
        log.close()


def _gateway(tmp: Path, inv: Path) -> GatewayProc:
    return GatewayProc(tmp / "gw", env={"FIREGW_INVENTORY": str(inv), "FIREGW_MQTT__ENABLED": "false",
                                        "FIREGW_API__ENABLED": "false"}).start()


def _open(gw: GatewayProc, rule: str) -> list[dict[str, Any]]:
    return [h for h in _cli(gw, "hazards", "--open") if h["rule"] == rule]


def test_pump_that_fails_to_start_gives_a_critical_hazard_within_the_limit(tmp_path: Path) -> None:
    def short_limit(data: dict[str, Any]) -> None:
        for s in data["sites"]:
            s["rules"] = {"pump_start": {"limit_s": 4}}
    with pumproom(tmp_path, "pump-fails-to-start", short_limit) as (_, inv):
        gw = _gateway(tmp_path, inv)
        try:
            # the physics: pressure falls, the pressure switch closes, and no pump runs
            wait_for(lambda: any(r["metric"] == "pressure_switch" and r["value"] is True
                                 for r in _cli(gw, "readings", "cabinet-001", "--metric", "pressure_switch")),
                     20, "pressure switch closed")
            readings = _cli(gw, "readings", "cabinet-001")
            assert {"metric", "value", "unit", "ts", "quality"} <= set(readings[0])
            hz = wait_for(lambda: _open(gw, "pump_start"), 20, "pump failed to start hazard")
            assert hz[0]["severity"] == "critical" and hz[0]["tier"] == "enforcement"
            assert hz[0]["class"] == "pump_failure"
            switch_at = min(r["ts"] for r in _cli(gw, "readings", "cabinet-001", "--metric", "pressure_switch")
                            if r["value"] is True)
            assert not any(r["value"] is True for r in _cli(gw, "readings", "cabinet-001", "--metric", "pump1_run")
                           if r["ts"] > switch_at)
        finally:
            gw.stop()


def test_standby_pump_takes_over_and_no_critical_hazard(tmp_path: Path) -> None:
    def short_limit(data: dict[str, Any]) -> None:
        for s in data["sites"]:
            s["rules"] = {"pump_start": {"limit_s": 20}}
    with pumproom(tmp_path, "standby-takes-over", short_limit) as (_, inv):
        gw = _gateway(tmp_path, inv)
        try:
            wait_for(lambda: any(r["value"] is True for r in _cli(gw, "readings", "cabinet-001", "--metric",
                                                                  "pump2_run")), 20, "standby pump running")
            wait_for(lambda: [h for h in _cli(gw, "hazards", "--open") if h["device_id"] == "cabinet-001"
                              and h["class"] == "fault"], 15, "the duty pump's start failure as a fault hazard")
            assert _open(gw, "pump_start") == []
        finally:
            gw.stop()


def test_cabinet_left_in_manual_gives_a_supervisory_hazard_and_turns_the_site_yellow(tmp_path: Path) -> None:
    def short_hold(data: dict[str, Any]) -> None:
        for d in data["devices"]:
            if d["profile"] == "fire-pump-cabinet":
                d["rules"] = [{"kind": "state_held", "name": "pump1_not_auto", "point": "pump1_mode", "not_value": 1,
                               "hold_s": 2, "hazard_class": "supervisory", "severity": "major", "hard": True}]
    with pumproom(tmp_path, "cabinet-manual", short_hold) as (_, inv):
        gw = _gateway(tmp_path, inv)
        try:
            hz = wait_for(lambda: _open(gw, "pump1_not_auto"), 20, "cabinet in manual hazard")
            assert hz[0]["class"] == "supervisory" and hz[0]["state"] == "confirmed"  # a hard rule
            assert hz[0]["device_id"] == "cabinet-001"
            sites = _cli(gw, "sites")
            assert sites[0]["code"] == "yellow" and sites[0]["next_inspection_due"]
        finally:
            gw.stop()


def test_dropped_link_gives_one_hazard_for_the_link_not_one_per_device(tmp_path: Path) -> None:
    with pumproom(tmp_path, "normal", lambda d: None) as (proc, inv):
        gw = _gateway(tmp_path, inv)
        try:
            wait_for(lambda: len(_cli(gw, "readings", "cabinet-002")) > 0, 20, "cabinet 2 polled")
            proc.terminate()
            proc.wait(10)
            link = wait_for(lambda: _open(gw, "link_down"), 30, "link down hazard")
            assert len(link) == 1 and link[0]["device_id"].startswith("127.0.0.1:")
            assert _open(gw, "offline") == []
            st = _cli(gw, "stats")
            assert st["devices_unreachable"] >= 4  # two cabinets, the tank and the panel behind the link
        finally:
            gw.stop()
