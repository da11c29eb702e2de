"""Benchmark: sustained MQTT QoS 1 ingest into the embedded store, against raw paho in the same run.

Method: a private Mosquitto holds a backlog of N realistic fleet messages for two persistent
sessions: a bare paho QoS 1 subscriber (the reference: receive and acknowledge, nothing else)
and ``firegw run``. Each drains the same backlog; the rate is N divided by the time from connect
to the last message received (paho) or committed (firegw, read from its store). Zero loss is
checked: the store holds exactly N messages and the expected number of readings.

    .venv/bin/python bench/bench_mqtt_ingest.py --messages 100000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.store.sqlite import Store
from simulators.broker import Mosquitto
from simulators.fleet import Fleet, build_devices, inventory_for

ROOT = Path(__file__).resolve().parent.parent
SUBSCRIPTIONS = [
    "fire/+/button/+/up",
    "fire/+/smoke/+/up",
    "fire/+/pressure/+/up",
    "fire/+/pressure-u/+/up",
    "fire/+/level/+/up",
    "fire/+/duty/+/up",
]


def _session(url_port: int, client_id: str, on_message: Any = None, manual: bool = False) -> Any:
    c = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
        manual_ack=manual,
    )
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = 2000
    subscribed = threading.Event()
    c.on_connect = lambda cl, *a: cl.subscribe([(t, 1) for t in SUBSCRIPTIONS])
    c.on_subscribe = lambda *a: subscribed.set()
    if on_message is not None:
        c.on_message = on_message
    c.connect("127.0.0.1", url_port, clean_start=False, properties=props)
    c.loop_start()
    subscribed.wait(10)
    return c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--devices", type=int, default=1000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="firegw-bench-"))
    broker = Mosquitto(work / "broker").start()
    try:
        # sessions exist before the backlog is published, so the broker queues it for both
        for cid in ("raw-paho", "firegw-bench"):
            c = _session(broker.port, cid)
            c.disconnect()
            c.loop_stop()
        devices = build_devices(args.devices, seed=7)
        inv = work / "inventory.yaml"
        import yaml

        inv.write_text(yaml.safe_dump(inventory_for(devices), allow_unicode=True), encoding="utf-8")
        fleet = Fleet(broker.url, devices, seed=7)
        fleet.connect()
        t0 = time.monotonic()
        for i in range(args.messages):
            fleet.publish_event(devices[i % len(devices)])
        fleet.drain(300)
        fleet.close()
        summary = fleet.summary()
        assert summary["sent"] == args.messages, summary
        publish_s = time.monotonic() - t0

        # reference: bare paho QoS 1 subscriber (auto-acknowledge), same backlog
        got = 0
        done = threading.Event()

        def on_message(*a: Any) -> None:
            nonlocal got
            got += 1
            if got >= args.messages:
                done.set()

        t0 = time.monotonic()
        ref = _session(broker.port, "raw-paho", on_message)
        done.wait(600)
        paho_s = time.monotonic() - t0
        ref.disconnect()
        ref.loop_stop()
        assert got >= args.messages, got

        # firegw: same backlog, into the embedded store
        db = work / "firegw.db"
        env = {
            **os.environ,
            "FIREGW_MQTT__URL": broker.url,
            "FIREGW_STORE__PATH": str(db),
            "FIREGW_INVENTORY": str(inv),
            "FIREGW_PROFILES_DIR": str(ROOT / "device_profiles"),
            "FIREGW_MQTT__CLIENT_ID": "firegw-bench",
            "FIREGW_LOG_LEVEL": "WARNING",
        }
        t0 = time.monotonic()
        cmd = [sys.executable, "-m", "gateway.cli", "run"]
        if os.environ.get("BENCH_PYSPY"):  # profile the gateway: py-spy record -o BENCH_PYSPY
            cmd = [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "-r",
                "200",
                "--threads",
                "-f",
                "raw",
                "-o",
                os.environ["BENCH_PYSPY"],
                "--",
                *cmd,
            ]
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
        stats: dict[str, Any] = {}
        conn = None
        while time.monotonic() - t0 < 600:
            # poll the counters row only: a count(*) over readings would steal the CPU being measured
            if conn is None and db.exists():
                conn = sqlite3.connect(db, timeout=30)
            if conn is not None:
                try:
                    row = conn.execute("SELECT value FROM counters WHERE name='messages'").fetchone()
                except sqlite3.Error:  # the schema is being created
                    row = None
                if row is not None and row[0] >= args.messages:
                    break
            time.sleep(0.05)
        gw_s = time.monotonic() - t0
        if conn is not None:
            conn.close()
        with Store(db, readonly=True) as st:
            stats = st.stats()
        proc.terminate()
        proc.wait(60)
        result = {
            "messages": args.messages,
            "devices": args.devices,
            "publish_rate_msg_s": round(args.messages / publish_s),
            "paho_raw_msg_s": round(args.messages / paho_s),
            "firegw_msg_s": round(args.messages / gw_s),
            "ratio_to_paho": round(paho_s / gw_s, 2),
            "zero_loss": stats.get("messages") == args.messages
            and stats.get("readings") == summary["expected_readings"],
            "readings": stats.get("readings"),
            "expected_readings": summary["expected_readings"],
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        }
        print(json.dumps(result, indent=2))
        return 0
    finally:
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
