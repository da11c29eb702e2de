"""The foundation end to end: a real Mosquitto, the fleet simulator, ``firegw run`` as a process."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from simulators.broker import Mosquitto
from tests.support import GatewayProc, run_fleet, store_stats, wait_for, write_inventory


def _gateway(tmp_path: Path, broker: Mosquitto, devices: int, **env: str) -> GatewayProc:
    inv = tmp_path / "inventory.yaml"
    write_inventory(inv, devices)
    return GatewayProc(
        tmp_path / "gw",
        env={
            "FIREGW_MQTT__URL": broker.url,
            "FIREGW_INVENTORY": str(inv),
            "FIREGW_MQTT__CLIENT_ID": f"firegw-test-{broker.port}",
            **env,
        },
    )


def _settled(gw: GatewayProc, sent: int) -> dict[str, Any]:
    def done() -> dict[str, Any]:
        st = store_stats(gw.db)
        return st if st and st["messages"] + st["dead_letters"] >= sent else {}

    return wait_for(done, 60, f"{sent} messages accounted for in {gw.db}")


def _assert_exact(gw: GatewayProc, summary: dict[str, Any]) -> None:
    st = _settled(gw, summary["sent"])
    time.sleep(0.5)  # a late duplicate would show up in the counters now; none may
    st = store_stats(gw.db)
    assert summary["unacknowledged"] == 0
    assert st["messages"] + st["dead_letters"] == summary["sent"], (st, summary)
    assert st["dead_letters"] == summary["malformed"], (st, summary)
    assert st["readings"] == summary["expected_readings"], (st, summary)
    assert st["readings_stored"] == summary["expected_readings"], (st, summary)


def test_fleet_of_200_every_message_accounted_for(tmp_path: Path, broker: Mosquitto) -> None:
    gw = _gateway(tmp_path, broker, 200).start()
    try:
        summary = run_fleet(
            broker.url, "--devices", "200", "--rate", "5", "--duration", "6", "--malformed-rate", "0.05"
        )
        assert summary["sent"] >= 5000 and summary["malformed"] > 0
        _assert_exact(gw, summary)
        assert store_stats(gw.db)["devices_seen"] == 200
    finally:
        assert gw.stop() == 0
    assert "stopped with everything taken committed" in gw.log()


def test_sigkill_mid_stream_loses_and_duplicates_nothing(tmp_path: Path, broker: Mosquitto) -> None:
    gw = _gateway(tmp_path, broker, 100).start()
    result: dict[str, Any] = {}

    def fleet() -> None:
        result.update(
            run_fleet(broker.url, "--devices", "100", "--rate", "20", "--duration", "8", "--malformed-rate", "0.02")
        )

    t = threading.Thread(target=fleet)
    t.start()
    try:
        wait_for(lambda: store_stats(gw.db).get("messages", 0) > 2000, 30, "some messages committed")
        gw.kill()  # SIGKILL: no chance to flush anything
        killed_at = store_stats(gw.db)["messages"]
        time.sleep(1.0)  # the fleet keeps publishing into the broker meanwhile
        gw.start()
        t.join(120)
        assert killed_at < result["sent"]
        _assert_exact(gw, result)
    finally:
        t.join(120)
        gw.stop()


def test_broker_restart_mid_stream_loses_and_duplicates_nothing(tmp_path: Path, broker: Mosquitto) -> None:
    gw = _gateway(tmp_path, broker, 100).start()
    result: dict[str, Any] = {}

    def fleet() -> None:
        result.update(run_fleet(broker.url, "--devices", "100", "--rate", "20", "--duration", "8"))

    t = threading.Thread(target=fleet)
    t.start()
    try:
        wait_for(lambda: store_stats(gw.db).get("messages", 0) > 2000, 30, "some messages committed")
        broker.restart()
        t.join(120)
        _assert_exact(gw, result)
        assert "mqtt: connected" in gw.log().split("firegw: ready", 1)[1]  # reconnected by itself
    finally:
        t.join(120)
        gw.stop()


def _drain_time(gw: GatewayProc, broker: Mosquitto, *fleet_args: str) -> tuple[float, dict[str, Any]]:
    """Queue messages in the broker for the gateway's persistent session, then time the drain."""
    gw.start()
    gw.stop()  # the session now exists; the broker queues for it while the gateway is down
    summary = run_fleet(broker.url, *fleet_args)
    before = store_stats(gw.db)
    good_target = before["messages"] + summary["sent"] - summary["malformed"]
    t0 = time.monotonic()
    gw.start(wait_ready=False)
    wait_for(lambda: store_stats(gw.db).get("messages", 0) >= good_target, 120, "good messages drained")
    elapsed = time.monotonic() - t0
    gw.stop()
    return elapsed, summary


def test_malformed_storm_keeps_good_traffic_above_half_rate(tmp_path: Path, broker: Mosquitto) -> None:
    clean = _gateway(tmp_path / "clean", broker, 100, FIREGW_MQTT__CLIENT_ID="clean")
    t_clean, s_clean = _drain_time(clean, broker, "--devices", "100", "--rate", "50", "--duration", "3", "--seed", "1")
    storm = _gateway(tmp_path / "storm", broker, 100, FIREGW_MQTT__CLIENT_ID="storm")
    # the same good traffic with as many malformed messages again mixed in
    t_storm, s_storm = _drain_time(
        storm, broker, "--devices", "100", "--rate", "100", "--duration", "3", "--seed", "1", "--malformed-rate", "0.5"
    )
    good_clean = s_clean["sent"] / t_clean
    good_storm = (s_storm["sent"] - s_storm["malformed"]) / t_storm
    assert s_storm["malformed"] > 0.4 * s_storm["sent"]
    assert good_storm >= 0.5 * good_clean, (good_storm, good_clean)
    st = store_stats(storm.db)
    assert st["dead_letters"] == s_storm["malformed"]


def test_bad_messages_become_readable_dead_letters(tmp_path: Path, broker: Mosquitto) -> None:
    gw = _gateway(tmp_path, broker, 20).start()
    try:
        summary = run_fleet(broker.url, "--devices", "20", "--rate", "20", "--duration", "3", "--malformed-rate", "0.5")
        _assert_exact(gw, summary)
        out = subprocess.run(
            ["firegw", "dead-letters", "--json", "--limit", "10000"],
            capture_output=True,
            text=True,
            check=True,
            env={"FIREGW_STORE__PATH": str(gw.db), "PATH": _path()},
        )
        import json

        rows = json.loads(out.stdout)
        reasons = " | ".join(r["reason"] for r in rows)
        for expected in (
            "not valid JSON",
            "expected a number",
            "outside the physical range",
            "unknown device",
            "over the profile's limit",
        ):
            assert expected in reasons, expected
        assert all(r["source"] == "mqtt" and r["address"].startswith("fire/") for r in rows)
    finally:
        gw.stop()


def _path() -> str:
    import os
    import sys

    return os.path.dirname(sys.executable) + ":" + os.environ.get("PATH", "")
