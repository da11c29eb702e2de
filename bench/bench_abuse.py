"""Benchmark: alarm-to-webhook latency and ingest rate, quiet and under API abuse, in the same run.

One gateway (``firegw run``, real Mosquitto, the signed webhook to ``python -m simulators workflow``)
takes bulk telemetry at ``--bulk-rate`` msg/s from the fleet simulator while this script presses a
different one-key alarm button every ``--every`` seconds. Two phases of ``--duration`` seconds each:

1. **quiet**: only that traffic;
2. **abuse**: the same traffic, plus six viewers posting ~200 KB of nested YAML to the profile dry run
   in a loop (``--abusers``), and ``--idle`` idle TCP connections held open against the API (reopened
   whenever the gateway closes one), from a process of their own (so the presser's clock is clean).

Latency = the receiver's arrival time of the fire event's ``opened`` webhook minus the publish time
(same host clock). Ingest = messages committed per second during the phase (``firegw stats``).

    .venv/bin/python bench/bench_abuse.py --duration 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulators.broker import Mosquitto, free_port  # noqa: E402
from simulators.fleet import build_devices, inventory_for  # noqa: E402
from simulators.launch import WorkflowReceiverProcess, stop_process  # noqa: E402

SECRET = "bench-abuse-secret-0123456789"
VIEWER = "bench-abuse-viewer-0123456789"


def _nested_yaml(size: int) -> str:
    """About ``size`` bytes of YAML nested 30 deep (under the dry run's nesting limit, so it is parsed)."""
    leaf = "[" + ", ".join(f"v{i}" for i in range(40)) + "]"
    one = "{a: " * 29 + leaf + "}" * 29
    lines = [f"k{i}: {one}" for i in range(max(1, size // len(one)))]
    return "\n".join(lines) + "\n"


def _stats(env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "stats", "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


class Abuse:
    """Six viewers hammering the dry run and a crowd of idle connections, until stopped."""

    def __init__(self, api: str, abusers: int, idle: int) -> None:
        self.api, self.abusers, self.idle = api, abusers, idle
        self.stop = threading.Event()
        self.codes: dict[int, int] = {}
        self.held_max = 0
        self.threads: list[threading.Thread] = []

    def _viewer(self) -> None:
        body = {"profile_yaml": _nested_yaml(200_000)}
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                try:
                    code = client.post(
                        self.api + "/api/v1/profiles/validate", json=body, headers={"Authorization": f"Bearer {VIEWER}"}
                    ).status_code
                except httpx.HTTPError:
                    code = -1
                self.codes[code] = self.codes.get(code, 0) + 1

    def _crowd(self) -> None:
        host, _, port = self.api.removeprefix("http://").partition(":")
        socks: list[socket.socket] = []
        while not self.stop.is_set():
            alive = []
            for s in socks:  # drop the ones the gateway closed
                try:
                    s.setblocking(False)
                    if s.recv(1) == b"":
                        s.close()
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    s.close()
                    continue
                alive.append(s)
            socks = alive
            while len(socks) < self.idle and not self.stop.is_set():
                try:
                    socks.append(socket.create_connection((host, int(port)), timeout=2))
                except OSError:
                    break
            self.held_max = max(self.held_max, len(socks))
            self.stop.wait(0.2)
        for s in socks:
            s.close()

    def run_until(self, stop: Any, out: Any) -> None:
        """In the abuse process: hammer until ``stop`` (a multiprocessing event) is set."""
        self.threads = [threading.Thread(target=self._viewer, daemon=True) for _ in range(self.abusers)]
        self.threads.append(threading.Thread(target=self._crowd, daemon=True))
        for t in self.threads:
            t.start()
        stop.wait()
        self.stop.set()
        for t in self.threads:
            t.join(30)
        out.put({"codes": self.codes, "held": self.held_max})


def _abuse_main(api: str, abusers: int, idle: int, stop: Any, out: Any) -> None:
    Abuse(api, abusers, idle).run_until(stop, out)


class AbuseProcess:
    """The abuse in a process of its own, so its threads never hold up the alarm presser's clock."""

    def __init__(self, api: str, abusers: int, idle: int) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._out: Any = ctx.Queue()
        self._proc = ctx.Process(target=_abuse_main, args=(api, abusers, idle, self._stop, self._out), daemon=True)
        self.codes: dict[int, int] = {}
        self.held_max = 0

    def start(self) -> None:
        self._proc.start()

    def end(self) -> None:
        self._stop.set()
        result = self._out.get(timeout=60)
        self._proc.join(30)
        self.codes, self.held_max = result["codes"], result["held"]


def _phase(
    name: str,
    args: argparse.Namespace,
    env: dict[str, str],
    broker: Mosquitto,
    site: str,
    buttons: list[str],
    abuse: AbuseProcess | None,
) -> dict[str, Any]:
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
            str(args.duration + 2),
            "--seed",
            "3",
            "--quiet",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    time.sleep(1.0)  # bulk traffic at full rate before the first press
    if abuse is not None:
        abuse.start()
        time.sleep(1.0)  # the abuse in full swing before measuring
    pub = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"presser-{name}")
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    before = _stats(env)
    t0 = time.time()
    sent: dict[str, float] = {}
    for b in buttons:
        t = time.time()
        pub.publish(f"fire/{site}/button/{b}/up", json.dumps({"ts": t, "event": "alarm"}), qos=1)
        sent[b] = t
        time.sleep(args.every)
    after = _stats(env)
    window = time.time() - t0
    if abuse is not None:
        abuse.end()
    pub.disconnect()
    pub.loop_stop()
    fleet.communicate(timeout=120)
    return {
        "sent": sent,
        "ingest_msg_s": (after["messages"] - before["messages"]) / window,
        "codes": dict(abuse.codes) if abuse else {},
        "held": abuse.held_max if abuse else 0,
    }


def _latencies(receiver: str, sent: dict[str, float], timeout: float = 60.0) -> list[float]:
    deadline = time.monotonic() + timeout
    arrivals: dict[str, float] = {}
    while time.monotonic() < deadline:
        received = httpx.get(receiver + "/received", timeout=10).json()
        log = {e["event_id"]: e["at_ms"] for e in httpx.get(receiver + "/log", timeout=10).json() if e["status"] == 200}
        for body in received:
            fe = body.get("fire_event") or {}
            if body.get("type") == "opened" and fe.get("device_id") in sent and body["event_id"] in log:
                arrivals[fe["device_id"]] = log[body["event_id"]]
        if len(arrivals) >= len(sent):
            break
        time.sleep(0.5)
    return sorted(arrivals[d] - sent[d] * 1000 for d in arrivals)


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    ap.add_argument("--bulk-rate", type=float, default=2000.0, help="bulk messages per second")
    ap.add_argument("--devices", type=int, default=500)
    ap.add_argument("--every", type=float, default=0.2, help="seconds between alarms")
    ap.add_argument("--abusers", type=int, default=6)
    ap.add_argument("--idle", type=int, default=1000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="firegw-abuse-"))
    broker = Mosquitto(work / "broker").start()
    presses = int(args.duration / args.every)
    inv = inventory_for(build_devices(args.devices, seed=3))
    site = inv["sites"][0]["site_id"]
    buttons = {ph: [f"{ph}-btn-{i:05d}" for i in range(presses)] for ph in ("quiet", "abuse")}
    inv["devices"] += [
        {"device_id": b, "site_id": site, "profile": "onekey-alarm-button"} for bs in buttons.values() for b in bs
    ]
    inv_path = work / "inventory.yaml"
    inv_path.write_text(yaml.safe_dump(inv, allow_unicode=True), encoding="utf-8")
    receiver = WorkflowReceiverProcess(secret=SECRET).start()
    receiver_url = receiver.url
    api = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "FIREGW_MQTT__URL": broker.url,
        "FIREGW_STORE__PATH": str(work / "firegw.db"),
        "FIREGW_INVENTORY": str(inv_path),
        "FIREGW_PROFILES_DIR": str(ROOT / "device_profiles"),
        "FIREGW_LOG_LEVEL": "ERROR",
        "FIREGW_API__LISTEN": api,
        "FIREGW_API__TOKENS": json.dumps(
            [{"name": f"viewer-{i}", "role": "viewer", "token": f"{VIEWER}"} for i in range(1)]
        ),
        "FIREGW_WEBHOOK__URL": receiver_url + "/events",
        "FIREGW_WEBHOOK__SECRET": SECRET,
    }
    load = os.getloadavg()[0]
    gw = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run"], env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://{api}/openapi.json", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or gw.poll() is not None:
                raise SystemExit("the gateway did not start")
            time.sleep(0.1)
        quiet = _phase("quiet", args, env, broker, site, buttons["quiet"], None)
        abuse = _phase(
            "abuse", args, env, broker, site, buttons["abuse"], AbuseProcess(f"http://{api}", args.abusers, args.idle)
        )
        lat_q = _latencies(receiver_url, quiet["sent"])
        lat_a = _latencies(receiver_url, abuse["sent"])
    finally:
        stop_process(gw, 30)
        receiver.stop()
        broker.stop()
    rows = {
        "alarm→webhook p50 ms": (statistics.median(lat_q), statistics.median(lat_a)),
        "alarm→webhook p99 ms": (_pct(lat_q, 0.99), _pct(lat_a, 0.99)),
        "alarm→webhook max ms": (max(lat_q), max(lat_a)),
        "ingest msg/s": (quiet["ingest_msg_s"], abuse["ingest_msg_s"]),
    }
    result = {
        "command": "python bench/bench_abuse.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}, "
        f"load average at start {load:.1f}",
        "alarms per phase": presses,
        "webhooks quiet": len(lat_q),
        "webhooks abuse": len(lat_a),
        "bulk offered msg/s": args.bulk_rate,
        "dry-run answers during abuse": abuse["codes"],
        "idle connections held at most": abuse["held"],
        "rows": {
            k: {"quiet": round(q, 1), "abuse": round(a, 1), "ratio": round(a / q, 2) if q else None}
            for k, (q, a) in rows.items()
        },
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
