"""Issue 5's whole loop with the real grid-workflow receiver: gateway → signed webhook → the
workflow answers through the API → the transitions go out again; and nothing is lost when the
gateway is killed mid-delivery."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from simulators.broker import Mosquitto, free_port
from simulators.launch import PumpRoomProcess, WorkflowReceiverProcess
from tests.support import GatewayProc, run_fleet, wait_for, write_inventory

SECRET = "loop-secret-0123456789"
OPERATOR = "loop-operator-token-0123456789"


@contextmanager
def receiver(tmp: Path, scenario: str, api: str, *extra: str) -> Iterator[str]:
    with WorkflowReceiverProcess(
        secret=SECRET, scenario=scenario, api=api, token=OPERATOR, args=extra, log=tmp / f"workflow-{scenario}.log"
    ).start() as rx:
        yield rx.url


def _gateway(tmp: Path, inv: Path, broker: Mosquitto | None, hook: str, api_port: int) -> GatewayProc:
    config = tmp / "gateway.yaml"
    config.write_text(
        yaml.safe_dump({"api": {"tokens": [{"name": "station-duty", "role": "operator", "token": OPERATOR}]}})
    )
    env = {
        "FIREGW_INVENTORY": str(inv),
        "FIREGW_CONFIG": str(config),
        "FIREGW_API__LISTEN": f"127.0.0.1:{api_port}",
        "FIREGW_WEBHOOK__URL": hook + "/events",
        "FIREGW_WEBHOOK__SECRET": SECRET,
    }
    if broker is not None:
        env.update({"FIREGW_MQTT__URL": broker.url, "FIREGW_MQTT__CLIENT_ID": f"loop-{api_port}"})
    else:
        env["FIREGW_MQTT__ENABLED"] = "false"
    return GatewayProc(tmp / "gw", env=env)


def _received(hook: str) -> list[dict[str, Any]]:
    try:
        out: list[dict[str, Any]] = httpx.get(hook + "/received", timeout=5).json()
    except httpx.HTTPError:  # the receiver is away on purpose
        return []
    return out


def _types(hook: str, kind: str, pred: Callable[[dict[str, Any]], bool] = lambda b: True) -> list[str]:
    return [b["type"] for b in _received(hook) if b["kind"] == kind and pred(b)]


def test_button_alarm_is_acknowledged_and_resolved_by_the_station(tmp_path: Path, broker: Mosquitto) -> None:
    inv = tmp_path / "inventory.yaml"
    write_inventory(inv, 8)
    api_port = free_port()
    with receiver(tmp_path, "ack-resolve", f"http://127.0.0.1:{api_port}") as hook:
        gw = _gateway(tmp_path, inv, broker, hook, api_port).start()
        try:
            run_fleet(
                broker.url,
                "--devices",
                "8",
                "--rate",
                "1",
                "--duration",
                "2",
                "--scenario",
                "button-alarm",
                "--alarm-at",
                "0.5",
            )
            wait_for(
                lambda: _types(hook, "fire_event") == ["opened", "acknowledged", "resolved"],
                20,
                "opened → acknowledged → resolved delivered, in order",
            )
            bodies = [b for b in _received(hook) if b["kind"] == "fire_event"]
            assert {b["event_id"] for b in bodies} == {b["event_id"] for b in bodies}  # unique per transition
            assert len({b["event_id"] for b in bodies}) == 3 and len({b["subject_id"] for b in bodies}) == 1
            last = bodies[-1]
            assert last["fire_event"]["resolution"] == "false_alarm"
            assert last["actor"] == "station-duty" and last["at"]
            assert {"event_id", "kind", "subject_id", "type", "at", "fire_event", "version"} <= set(last)
        finally:
            gw.stop()


def test_cabinet_in_manual_goes_through_the_whole_hazard_loop_back_to_green(tmp_path: Path) -> None:
    with PumpRoomProcess(tmp_path / "pumproom", devices=1).start() as room:
        inv = room.inventory
        data = yaml.safe_load(inv.read_text())
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
        inv.write_text(yaml.safe_dump(data, allow_unicode=True))
        api_port = free_port()
        with receiver(tmp_path, "ack-resolve", f"http://127.0.0.1:{api_port}") as hook:
            gw = _gateway(tmp_path, inv, None, hook, api_port).start()
            try:
                room.command("fault 1 manual")
                wait_for(
                    lambda: "opened" in _types(hook, "hazard", lambda b: b["hazard"]["rule"] == "pump1_not_auto"),
                    20,
                    "the manual-mode hazard delivered",
                )
                room.command("clear 1")  # the cabinet is put back in automatic: the condition ends

                def loop_done() -> list[str]:
                    types = _types(hook, "hazard", lambda b: b["hazard"]["rule"] == "pump1_not_auto")
                    return types if "closed" in types else []

                types = wait_for(loop_done, 30, "the hazard closed by the workflow")
                want = ["opened", "dispatched", "rectifying", "rectified", "closed"]
                assert [t for t in types if t in want] == want  # delivered in order
                site = data["sites"][0]["site_id"]
                sites = httpx.get(
                    f"http://127.0.0.1:{api_port}/api/v1/sites", headers={"Authorization": f"Bearer {OPERATOR}"}
                ).json()
                assert next(s for s in sites if s["site_id"] == site)["code"] == "green"
            finally:
                gw.stop()


def test_receiver_down_then_back_and_gateway_killed_mid_delivery_lose_nothing(
    tmp_path: Path, broker: Mosquitto
) -> None:
    inv = tmp_path / "inventory.yaml"
    write_inventory(inv, 24)
    data = yaml.safe_load(inv.read_text())
    for d in data["devices"]:
        d["rules"] = [{"kind": "no_data", "cadence_s": 1.0}]  # every device silent after the fleet: a hazard each
    inv.write_text(yaml.safe_dump(data, allow_unicode=True))
    api_port = free_port()
    with receiver(tmp_path, "record", f"http://127.0.0.1:{api_port}", "--down-after", "3", "--down-for", "6") as hook:
        gw = _gateway(tmp_path, inv, broker, hook, api_port).start()
        try:
            run_fleet(
                broker.url,
                "--devices",
                "24",
                "--rate",
                "1",
                "--duration",
                "1.5",
                "--scenario",
                "button-alarm",
                "--alarm-at",
                "0.2",
            )
            wait_for(lambda: len(_received(hook)) >= 3, 20, "first deliveries")
            gw.kill()  # mid-delivery, with the receiver away
            gw.start()
            expected = wait_for(lambda: _outbox(gw.db), 20, "outbox rows")
            wait_for(
                lambda: len(_received(hook)) >= len(_outbox(gw.db)) and _all_delivered(gw.db),
                60,
                "every outbox row delivered",
            )
            got = _received(hook)
            ids = [b["event_id"] for b in got]
            assert len(ids) == len(set(ids))  # /received holds first arrivals: exactly once after dedup
            assert set(ids) == {e for e, _ in _outbox(gw.db)} and len(expected) >= 3
            # order per subject: the receiver's arrival order matches the gateway's trail order
            trail = _trail(gw.db)
            for subject in {b["subject_id"] for b in got}:
                arrived = [b["event_id"] for b in got if b["subject_id"] == subject]
                assert arrived == [e for e, s in trail if s == subject]
        finally:
            gw.stop()


def _query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    import sqlite3

    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _outbox(db: Path) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in _query(db, "SELECT event_id, subject FROM outbox ORDER BY seq")]


def _all_delivered(db: Path) -> bool:
    return bool(_query(db, "SELECT count(*) FROM outbox WHERE delivered_at IS NULL")[0][0] == 0)


def _trail(db: Path) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in _query(db, "SELECT event_id, subject_id FROM workflow_events ORDER BY seq")]
