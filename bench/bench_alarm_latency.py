"""Benchmark: alarm latency from MQTT publish to committed fire event, under bulk telemetry.

A fleet publishes bulk telemetry at ``--bulk-rate`` msg/s (default 5,000) while this script presses
a different one-key alarm button every ``--every`` seconds. Latency = the fire event's ``opened``
transition time (set in the committer's batch, just before its commit) minus the publish time.

    .venv/bin/python bench/bench_alarm_latency.py --duration 30
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulators.broker import Mosquitto, free_port
from simulators.fleet import build_devices, inventory_for

ROOT = Path(__file__).resolve().parent.parent


def _wait_ready(listen: str, gw: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Until the gateway's API answers (it starts after the store, the rules and the MQTT source)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gw.poll() is not None:
            raise SystemExit(f"the gateway exited with {gw.returncode}")
        try:
            with urllib.request.urlopen(f"http://{listen}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise SystemExit(f"the gateway was not ready within {timeout:.0f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--bulk-rate", type=float, default=5000.0, help="bulk messages per second")
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--every", type=float, default=0.25, help="seconds between alarms")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="firegw-alarm-"))
    broker = Mosquitto(work / "broker").start()
    presses = int(args.duration / args.every)
    inv = inventory_for(build_devices(args.devices, seed=3))
    site = inv["sites"][0]["site_id"]
    buttons = [f"alarm-btn-{i:05d}" for i in range(presses)]
    inv["devices"] += [{"device_id": b, "site_id": site, "profile": "onekey-alarm-button"} for b in buttons]
    inv_path = work / "inventory.yaml"
    inv_path.write_text(yaml.safe_dump(inv, allow_unicode=True), encoding="utf-8")
    db = work / "firegw.db"
    env = {
        **os.environ,
        "FIREGW_MQTT__URL": broker.url,
        "FIREGW_STORE__PATH": str(db),
        "FIREGW_INVENTORY": str(inv_path),
        "FIREGW_PROFILES_DIR": str(ROOT / "device_profiles"),
        "FIREGW_LOG_LEVEL": "ERROR",
        "FIREGW_API__LISTEN": f"127.0.0.1:{free_port()}",
    }
    gw = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run"], env=env, cwd=ROOT)
    fleet = None
    try:
        _wait_ready(env["FIREGW_API__LISTEN"], gw)
        fleet = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "simulators",
                "fleet",
                "--broker",
                broker.url,
                "--devices",
                str(args.devices),
                "--rate",
                str(args.bulk_rate / args.devices),
                "--duration",
                str(args.duration + 4),
                "--seed",
                "3",
                "--quiet",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        time.sleep(2)  # bulk traffic at full rate before the first press
        pub = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="alarm-presser")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        sent: dict[str, float] = {}
        for b in buttons:
            t = time.time()
            body = {"ts": t, "event": "alarm", "battery": 90, "rssi": -70}
            pub.publish(f"fire/{site}/button/{b}/up", json.dumps(body), qos=1)
            sent[b] = t
            time.sleep(args.every)
        deadline = time.time() + 30
        rows: list[tuple[str, int]] = []
        while time.time() < deadline:
            conn = sqlite3.connect(db)
            rows = [
                (json.loads(s)["device_id"], at)
                for s, at in conn.execute(
                    "SELECT snapshot, at FROM workflow_events WHERE kind='fire_event' AND type='opened'"
                )
            ]
            conn.close()
            if len(rows) >= len(buttons):
                break
            time.sleep(0.2)
        pub.disconnect()
        pub.loop_stop()
        fleet_out = fleet.communicate(timeout=120)[0].decode().strip().splitlines()
        bulk = json.loads(fleet_out[-1]) if fleet_out else {}
        lat = sorted(at - sent[d] * 1000 for d, at in rows if d in sent)
        q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [0.0] * 99
        result = {
            "alarms": len(buttons),
            "fire_events_opened": len(lat),
            "bulk_msg_s_offered": args.bulk_rate,
            "bulk_msg_s_sent": round(bulk.get("sent", 0) / (args.duration + 4)),
            "latency_ms_p50": round(statistics.median(lat), 1) if lat else None,
            "latency_ms_p99": round(q[98], 1),
            "latency_ms_max": round(max(lat), 1) if lat else None,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        }
        print(json.dumps(result, indent=2))
        return 0
    finally:
        if fleet is not None and fleet.poll() is None:
            fleet.kill()
        gw.terminate()
        gw.wait(30)
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
