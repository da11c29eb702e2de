"""The pump room end to end: the Modbus simulator with its physics and faults, ``firegw run`` as a
process, rules and hazards read back through the CLI."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from gateway.store.sqlite import Store
from simulators.launch import PumpRoomProcess
from tests.support import GatewayProc, wait_for


@contextmanager
def pumproom(
    tmp: Path, scenario: str, tweak: Callable[[dict[str, Any]], None], *extra: str, steps: Sequence[str] = ()
) -> Iterator[tuple[PumpRoomProcess, Path]]:
    """The simulator with 2 cabinets (plus ``extra`` arguments, and ``steps`` run at once), its inventory
    written and passed through ``tweak``."""
    if steps:
        (tmp / "steps.yaml").write_text(yaml.safe_dump({"steps": [{"at": 0, "do": c} for c in steps]}))
        extra = (*extra, "--scenario-file", str(tmp / "steps.yaml"))
    with PumpRoomProcess(tmp / "pumproom", scenario=scenario, args=extra).start() as room:
        inv = room.inventory
        data = yaml.safe_load(inv.read_text(encoding="utf-8"))
        tweak(data)
        inv.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        yield room, inv


def _gateway(tmp: Path, inv: Path) -> GatewayProc:
    return GatewayProc(
        tmp / "gw", env={"FIREGW_INVENTORY": str(inv), "FIREGW_MQTT__ENABLED": "false", "FIREGW_API__ENABLED": "false"}
    ).start()


def _open(gw: GatewayProc, rule: str) -> list[dict[str, Any]]:
    return [h for h in gw.cli("hazards", "--open") if h["rule"] == rule]


def test_pump_that_fails_to_start_gives_a_critical_hazard_within_the_limit(tmp_path: Path) -> None:
    def short_limit(data: dict[str, Any]) -> None:
        for s in data["sites"]:
            s["rules"] = {"pump_start": {"limit_s": 4}}

    with pumproom(tmp_path, "pump-fails-to-start", short_limit) as (_, inv):
        gw = _gateway(tmp_path, inv)
        try:
            # the physics: pressure falls, the pressure switch closes, and no pump runs
            wait_for(
                lambda: any(
                    r["metric"] == "pressure_switch" and r["value"] is True
                    for r in gw.cli("readings", "cabinet-001", "--metric", "pressure_switch")
                ),
                20,
                "pressure switch closed",
            )
            readings = gw.cli("readings", "cabinet-001")
            assert {"metric", "value", "unit", "ts", "quality"} <= set(readings[0])
            hz = wait_for(lambda: _open(gw, "pump_start"), 20, "pump failed to start hazard")
            assert hz[0]["severity"] == "critical" and hz[0]["tier"] == "enforcement"
            assert hz[0]["class"] == "pump_failure"
            switch_at = min(
                r["ts"] for r in gw.cli("readings", "cabinet-001", "--metric", "pressure_switch") if r["value"] is True
            )
            assert not any(
                r["value"] is True
                for r in gw.cli("readings", "cabinet-001", "--metric", "pump1_run")
                if r["ts"] > switch_at
            )
        finally:
            gw.stop()


def test_standby_pump_takes_over_and_no_critical_hazard(tmp_path: Path) -> None:
    def short_limit(data: dict[str, Any]) -> None:
        for s in data["sites"]:
            s["rules"] = {"pump_start": {"limit_s": 20}}

    with pumproom(tmp_path, "standby-takes-over", short_limit) as (_, inv):
        gw = _gateway(tmp_path, inv)
        try:
            wait_for(
                lambda: any(r["value"] is True for r in gw.cli("readings", "cabinet-001", "--metric", "pump2_run")),
                20,
                "standby pump running",
            )
            wait_for(
                lambda: [
                    h for h in gw.cli("hazards", "--open") if h["device_id"] == "cabinet-001" and h["class"] == "fault"
                ],
                15,
                "the duty pump's start failure as a fault hazard",
            )
            assert _open(gw, "pump_start") == []
        finally:
            gw.stop()


def test_cabinet_left_in_manual_gives_a_supervisory_hazard_and_turns_the_site_yellow(tmp_path: Path) -> None:
    def short_hold(data: dict[str, Any]) -> None:
        for d in data["devices"]:
            if d["profile"] == "fire-pump-cabinet":
                d["rules"] = [
                    {
                        "kind": "state_held",
                        "name": "pump1_not_auto",
                        "point": "pump1_mode",
                        "not_value": 1,
                        "hold_s": 2,
                        "hazard_class": "supervisory",
                        "severity": "major",
                        "hard": True,
                    }
                ]

    with pumproom(tmp_path, "cabinet-manual", short_hold) as (_, inv):
        gw = _gateway(tmp_path, inv)
        try:
            hz = wait_for(lambda: _open(gw, "pump1_not_auto"), 20, "cabinet in manual hazard")
            assert hz[0]["class"] == "supervisory" and hz[0]["state"] == "confirmed"  # a hard rule
            assert hz[0]["device_id"] == "cabinet-001"
            sites = gw.cli("sites")
            assert sites[0]["code"] == "yellow" and sites[0]["next_inspection_due"]
        finally:
            gw.stop()


def test_dropped_link_gives_one_hazard_for_the_link_not_one_per_device(tmp_path: Path) -> None:
    with pumproom(tmp_path, "normal", lambda d: None) as (room, inv):
        gw = _gateway(tmp_path, inv)
        try:
            wait_for(lambda: len(gw.cli("readings", "cabinet-002")) > 0, 20, "cabinet 2 polled")
            room.stop()
            link = wait_for(lambda: _open(gw, "link_down"), 30, "link down hazard")
            assert len(link) == 1 and link[0]["device_id"].startswith("127.0.0.1:")
            assert _open(gw, "offline") == []
            st = gw.cli("stats")
            assert st["devices_unreachable"] >= 4  # two cabinets, the tank and the panel behind the link
        finally:
            gw.stop()


def _device_status(gw: GatewayProc) -> dict[str, str]:
    if not gw.db.exists():
        return {}
    with Store(gw.db, readonly=True) as st:
        return {d["device_id"]: d["status"] for d in st.devices()}


def test_slow_unit_behind_a_sequential_server_never_makes_its_neighbour_unreachable(tmp_path: Path) -> None:
    """The acceptance case: an RS-485 converter (one request at a time), cabinet 1 answering after 2 s,
    every binding left at its defaults (timeout_s 1, retries 1, sequential, late_answer_s 2)."""
    with pumproom(tmp_path, "normal", lambda d: None, "--sequential", steps=["slow 1 2"]) as (_, inv):
        gw = _gateway(tmp_path, inv)
        try:
            wait_for(lambda: _device_status(gw).get("cabinet-001") == "unreachable", 30, "the slow unit unreachable")
            healthy = ("cabinet-002", "tank-1", "panel-1")
            n = {d: len(gw.cli("readings", d)) for d in healthy}
            # polls go on: the healthy cabinet's keepalive is 60 s, so wait for a value that changes
            wait_for(
                lambda: (
                    len(gw.cli("readings", "cabinet-002", "--metric", "outlet_pressure")) > n["cabinet-002"] // 40 + 3
                ),
                20,
                "more pressure readings of the healthy cabinet",
            )
            status = _device_status(gw)
            assert status["cabinet-001"] == "unreachable"
            assert all(status[d] == "online" for d in healthy), status
            for d in healthy:
                readings = gw.cli("readings", d)
                assert readings and all(r["quality"] != "missing" for r in readings), d
            log = gw.log()
            unreachable = [line for line in log.splitlines() if "unreachable" in line]
            assert len(unreachable) == 1 and "cabinet-001" in unreachable[0], unreachable
            assert "pymodbus" not in log
            offline = [h["device_id"] for h in gw.cli("hazards") if h["rule"] == "offline"]
            assert set(offline) <= {"cabinet-001"}, offline
        finally:
            gw.stop()


def test_registers_a_device_lacks_split_the_read_and_give_one_hazard(tmp_path: Path) -> None:
    """Cabinet 1 lacks holding 7..9 (a gap inside the coalesced read 0..13): the read is split, every
    point keeps flowing, no hazard. Cabinet 2 lacks holding 2..4 (the three pump modes): the rest flows,
    one ``points_unreadable`` hazard for the device."""
    with pumproom(tmp_path, "normal", lambda d: None, steps=["lack 1 holding 7 9", "lack 2 holding 2 4"]) as (_, inv):
        gw = _gateway(tmp_path, inv)
        try:
            hz = wait_for(
                lambda: [h for h in gw.cli("hazards", "--open") if h["rule"] == "points_unreadable"],
                30,
                "the unreadable points hazard",
            )
            assert [h["device_id"] for h in hz] == ["cabinet-002"]
            assert hz[0]["title_zh"] and hz[0]["title_en"]
            modes = {"pump1_mode", "pump2_mode", "jockey_mode"}
            for device, lacking in (("cabinet-001", set()), ("cabinet-002", modes)):
                metrics = {r["metric"] for r in gw.cli("readings", device)}
                for m in ("pump1_run", "main_power", "duty_pump", "start_delay", "pressure_switch", "outlet_pressure"):
                    assert m in metrics, (device, m)
                assert not metrics & lacking, device
            assert "pump1_mode" in {r["metric"] for r in gw.cli("readings", "cabinet-001")}
            dead = [d for d in gw.cli("dead-letters") if d["device_id"] == "cabinet-002"]
            assert len(dead) == 3 and all("illegal data address" in d["reason"] for d in dead), dead
            assert not [d for d in gw.cli("dead-letters") if d["device_id"] == "cabinet-001"]
            st = gw.cli("stats")
            assert st["devices_unreachable"] == 0
            assert len([h for h in gw.cli("hazards", "--open") if h["rule"] == "points_unreadable"]) == 1
        finally:
            gw.stop()
