"""MQTT device fleet: one-key alarm buttons, NB-IoT smoke detectors, pipe pressure and tank level
sensors and micro fire station duty terminals, publishing the shipped profiles' payloads at QoS 1.

Scenarios:
  normal               telemetry and heartbeats only
  button-alarm         a button raises a fire alarm at --alarm-at seconds (default: half-way)
  device-silent        --silent devices stop publishing at --silent-at seconds (default: a third in)
  pressure-drift       pressure sensors drift down by --drift MPa a minute
  malformed            --malformed-rate of messages are bad on purpose (also in any scenario)

``--rate`` is messages per second per device. The last line printed is a JSON object with
``sent`` (published and acknowledged by the broker), ``malformed`` (how many of those were bad on
purpose), ``expected_readings`` (readings the good ones should give) and ``by_kind``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

__all__ = ["Fleet", "SimDevice", "add_arguments", "build_devices", "inventory_for", "run"]

TOWNS = [("安昌街道", "AC"), ("柯桥街道", "KQ"), ("华舍街道", "HS"), ("齐贤街道", "QX"), ("钱清街道", "QQ")]
DOMAINS = ["industrial", "village_property", "street_shop", "village_house", "rental_housing"]
DOMAIN_NAMES = {
    "industrial": "工业企业",
    "village_property": "村级物业",
    "street_shop": "沿街店铺",
    "village_house": "村居民房",
    "rental_housing": "居住出租房",
}
# profile, topic kind, share of the fleet
MIX = [
    ("onekey-alarm-button", "button", 0.3),
    ("nbiot-smoke-detector", "smoke", 0.3),
    ("pipe-pressure-sensor", "pressure", 0.15),
    ("pipe-pressure-sensor-unit", "pressure-u", 0.05),
    ("water-level-sensor", "level", 0.1),
    ("micro-station-terminal", "duty", 0.1),
]
MAX_OUTSTANDING = 20_000
MALFORMED_KINDS = ["bad_json", "wrong_type", "missing_field", "out_of_range", "unknown_device", "oversized"]


@dataclass
class SimDevice:
    device_id: str
    site_id: str
    profile: str
    kind: str
    building: str
    floor: str
    last_ts_ms: int = 0
    pressure: float = 0.45
    level: float = 3.2
    battery: float = 95.0
    silent: bool = False

    @property
    def topic(self) -> str:
        return f"fire/{self.site_id}/{self.kind}/{self.device_id}/up"

    def ts_ms(self) -> int:
        now = int(time.time() * 1000)
        self.last_ts_ms = max(now, self.last_ts_ms + 1)  # strictly increasing device time
        return self.last_ts_ms


def build_devices(n: int, seed: int = 1, per_site: int = 8) -> list[SimDevice]:
    rnd = random.Random(seed)
    devices: list[SimDevice] = []
    counts = [max(1, round(n * share)) for _, _, share in MIX]
    while sum(counts) > n:
        counts[counts.index(max(counts))] -= 1
    while sum(counts) < n:
        counts[0] += 1
    kinds = [(prof, kind) for (prof, kind, _), c in zip(MIX, counts, strict=True) for _ in range(c)]
    rnd.shuffle(kinds)
    for i, (prof, kind) in enumerate(kinds):
        site = f"site-{i // per_site + 1:03d}"
        dev = SimDevice(
            device_id=f"{kind.replace('-', '')}-{i + 1:05d}",
            site_id=site,
            profile=prof,
            kind=kind,
            building=f"{rnd.randint(1, 6)}号楼",
            floor=str(rnd.randint(1, 5)),
            pressure=round(rnd.uniform(0.35, 0.6), 3),
            level=round(rnd.uniform(2.5, 4.0), 2),
            battery=float(rnd.randint(60, 100)),
        )
        devices.append(dev)
    return devices


def inventory_for(devices: list[SimDevice]) -> dict[str, Any]:
    sites: dict[str, dict[str, Any]] = {}
    for d in devices:
        if d.site_id in sites:
            continue
        idx = int(d.site_id.split("-")[1]) - 1
        town, code = TOWNS[idx % len(TOWNS)]
        domain = DOMAINS[idx % len(DOMAINS)]
        sites[d.site_id] = {
            "site_id": d.site_id,
            "name": f"{town}{DOMAIN_NAMES[domain]}示范点{idx + 1}",
            "enterprise": f"绍兴柯桥示范单位{idx + 1}",
            "town": town,
            "grid_cell": f"{code}-{idx % 7 + 1:02d}",
            "domain": domain,
            "address": f"绍兴市柯桥区{town}{idx + 1}号",
            "station": {
                "station_id": f"mfs-{code.lower()}",
                "name": f"{town}微型消防站",
                "phone": "0575-8000119",
                "response_time_s": 180,
            },
            "contacts": {
                "grid_member": f"网格员{idx + 1}",
                "supervisor": f"{town}督查员",
                "enforcement": "柯桥区消防救援大队",
            },
        }
    return {
        "sites": list(sites.values()),
        "devices": [
            {
                "device_id": d.device_id,
                "site_id": d.site_id,
                "profile": d.profile,
                "location": {"building": d.building, "floor": d.floor},
            }
            for d in devices
        ],
    }


def _payload(d: SimDevice, rnd: random.Random, event: str | None = None) -> tuple[dict[str, Any], int]:
    """A good payload for the device and how many readings it gives."""
    ts = d.ts_ms() / 1000.0
    if d.kind == "button":
        ev = event or "heartbeat"
        return {"ts": ts, "event": ev, "battery": d.battery, "rssi": rnd.randint(-105, -60)}, 3
    if d.kind == "smoke":
        ev = event or "heartbeat"
        return {
            "ts": ts,
            "event": ev,
            "battery": d.battery,
            "smoke": round(rnd.uniform(0, 2), 2),
            "temp": round(rnd.uniform(15, 30), 1),
            "rsrp": rnd.randint(-110, -70),
        }, 5
    if d.kind == "pressure":
        d.pressure = max(0.0, d.pressure + rnd.uniform(-0.002, 0.002))
        return {"ts": ts, "pressure": round(d.pressure, 4), "battery": d.battery, "rssi": rnd.randint(-105, -60)}, 3
    if d.kind == "pressure-u":
        unit = rnd.choice(["kPa", "bar", "MPa"])
        val = {"kPa": d.pressure * 1000, "bar": d.pressure * 10, "MPa": d.pressure}[unit]
        return {"ts": int(ts * 1000), "data": {"value": round(val, 4), "unit": unit}, "battery": d.battery}, 2
    if d.kind == "level":
        d.level = max(0.0, d.level + rnd.uniform(-0.005, 0.005))
        return {"ts": ts, "level": round(d.level, 3), "battery": d.battery, "rssi": rnd.randint(-100, -60)}, 3
    ev = event or rnd.choice(["check_in", "equipment_check"])
    if ev == "equipment_check":
        return {"ts": ts, "event": ev, "staff_on_duty": rnd.randint(3, 6), "equipment": {"ok": True, "missing": 0}}, 3
    return {"ts": ts, "event": ev, "staff_on_duty": rnd.randint(3, 6)}, 2


def _malformed(d: SimDevice, rnd: random.Random, kind: str) -> tuple[str, bytes]:
    """A bad message of the given kind. Each carries a sequence number, as real devices' messages do,
    so two bad messages are never byte-identical (identical bytes redelivered count once)."""
    seq = d.ts_ms()
    if kind == "bad_json":
        return d.topic, b'{"seq": %d, "event": "heartbeat", ' % seq
    if kind == "wrong_type":
        body: dict[str, Any] = {"ts": seq / 1000, "event": "heartbeat"}
        body["staff_on_duty" if d.kind == "duty" else "battery"] = "full"
        return d.topic, json.dumps(body).encode()
    if kind == "missing_field":
        # pressure and level require their value; others fail on a bad time instead
        if d.kind in ("pressure", "level"):
            return d.topic, json.dumps({"ts": seq / 1000, "battery": 50}).encode()
        return d.topic, json.dumps({"ts": "yesterday", "seq": seq, "event": "heartbeat"}).encode()
    if kind == "out_of_range":
        return d.topic, json.dumps(
            {
                "ts": seq / 1000,
                "battery": 250,
                "event": "heartbeat",
                "staff_on_duty": 500,
                "pressure": 0.5,
                "level": 1.0,
                "data": {"value": 1, "unit": "MPa"},
            }
        ).encode()
    if kind == "unknown_device":
        return f"fire/{d.site_id}/{d.kind}/ghost-{rnd.randint(1, 10**9)}/up", b'{"seq": %d}' % seq
    return d.topic, b'{"seq": %d, "pad": "' % seq + b"x" * 20_000 + b'"}'


@dataclass
class Fleet:
    """Publishes for a list of devices through one MQTT connection and counts broker acknowledgements."""

    url: str
    devices: list[SimDevice]
    seed: int = 1
    client_id: str = field(default_factory=lambda: f"fleet-{random.randrange(1 << 30)}")
    sent: int = 0
    published: int = 0
    malformed_acked: int = 0
    expected_readings: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rnd = random.Random(self.seed)
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[bool, int, str]] = {}
        self._early: set[int] = set()
        self._connected = threading.Event()
        parts = urlsplit(self.url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 1883
        c = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv311,
            clean_session=False,
        )
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(1, 2)
        c.on_publish = self._on_publish
        c.on_connect = lambda *a: self._connected.set()
        c.on_disconnect = lambda *a: self._connected.clear()
        self._client = c

    def connect(self, timeout: float = 10.0) -> None:
        self._client.connect_async(self._host, self._port, keepalive=30)
        self._client.loop_start()
        if not self._connected.wait(timeout):
            raise RuntimeError(f"fleet: cannot connect to {self.url}")

    def _count(self, info: tuple[bool, int, str]) -> None:
        bad, readings, kind = info
        self.sent += 1
        if bad:
            self.malformed_acked += 1
        self.expected_readings += readings
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        # paho calls this holding its own message lock: never call into paho from here.
        with self._lock:
            info = self._pending.pop(mid, None)
            if info is None:
                self._early.add(mid)  # acknowledged before publish() registered it
            else:
                self._count(info)

    def publish(self, topic: str, payload: bytes, *, bad: bool, readings: int, kind: str) -> None:
        # Bound what is outstanding: paho's message ids wrap at 65535, and a publisher that runs
        # ahead of its acknowledgements would reuse an id still waiting for its PUBACK.
        while len(self._pending) >= MAX_OUTSTANDING:
            time.sleep(0.001)
        msg = self._client.publish(topic, payload, qos=1)  # not under self._lock: paho locks too
        with self._lock:
            self.published += 1
            if msg.mid in self._early:
                self._early.discard(msg.mid)
                self._count((bad, readings, kind))
            else:
                self._pending[msg.mid] = (bad, readings, kind)

    def publish_event(self, d: SimDevice, event: str | None = None) -> None:
        body, n = _payload(d, self._rnd, event)
        self.publish(
            d.topic, json.dumps(body, ensure_ascii=False).encode(), bad=False, readings=n, kind=event or d.kind
        )

    def publish_malformed(self, d: SimDevice) -> None:
        kind = self._rnd.choice(MALFORMED_KINDS)
        topic, payload = _malformed(d, self._rnd, kind)
        self.publish(topic, payload, bad=True, readings=0, kind=f"malformed:{kind}")

    def drain(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {
                "sent": self.sent,
                "malformed": self.malformed_acked,
                "published": self.published,
                "unacknowledged": len(self._pending),
                "expected_readings": self.expected_readings,
                "devices": len(self.devices),
                "by_kind": dict(sorted(self.by_kind.items())),
            }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="broker URL, mqtt://host:port")
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--rate", type=float, default=1.0, help="messages per second per device")
    p.add_argument("--duration", type=float, default=10.0, help="seconds to publish")
    p.add_argument(
        "--scenario",
        default="normal",
        choices=["normal", "button-alarm", "device-silent", "pressure-drift", "malformed"],
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--malformed-rate",
        type=float,
        default=None,
        help="fraction of messages malformed on purpose (default 0, or 0.1 for scenario malformed)",
    )
    p.add_argument("--alarm-at", type=float, default=None, help="button-alarm: seconds after start")
    p.add_argument("--alarm-device", default=None, help="button-alarm: which button (default: the first)")
    p.add_argument("--silent", type=int, default=1, help="device-silent: how many devices go silent")
    p.add_argument("--silent-at", type=float, default=None)
    p.add_argument("--drift", type=float, default=0.05, help="pressure-drift: MPa per minute")
    p.add_argument("--per-site", type=int, default=8, help="devices per site")
    p.add_argument("--write-inventory", type=Path, default=None, help="write the fleet's inventory and exit")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    devices = build_devices(args.devices, args.seed, args.per_site)
    if args.write_inventory is not None:
        args.write_inventory.parent.mkdir(parents=True, exist_ok=True)
        args.write_inventory.write_text(
            yaml.safe_dump(inventory_for(devices), allow_unicode=True, sort_keys=False), encoding="utf-8"
        )
        if args.duration <= 0:
            print(json.dumps({"sent": 0, "malformed": 0, "inventory": str(args.write_inventory)}))
            return 0
    malformed_rate = (
        args.malformed_rate if args.malformed_rate is not None else (0.1 if args.scenario == "malformed" else 0.0)
    )
    rnd = random.Random(args.seed + 1)
    fleet = Fleet(args.broker, devices, seed=args.seed)
    fleet.connect()
    buttons = [d for d in devices if d.kind == "button"]
    alarm_at = args.alarm_at if args.alarm_at is not None else args.duration / 2
    alarm_dev = next((d for d in buttons if d.device_id == args.alarm_device), buttons[0] if buttons else None)
    alarm_done = args.scenario != "button-alarm" or alarm_dev is None
    silent_at = args.silent_at if args.silent_at is not None else args.duration / 3
    pressure_devs = [d for d in devices if d.kind in ("pressure", "pressure-u")]
    total_rate = args.rate * len(devices)
    start = time.monotonic()
    due = 0.0
    idx = 0
    last_report = start
    try:
        while True:
            now = time.monotonic()
            elapsed = now - start
            if elapsed >= args.duration:
                break
            if not alarm_done and elapsed >= alarm_at and alarm_dev is not None:
                fleet.publish_event(alarm_dev, "alarm")
                alarm_done = True
                print(
                    json.dumps(
                        {"event": "alarm", "device": alarm_dev.device_id, "site": alarm_dev.site_id, "at": time.time()}
                    ),
                    flush=True,
                )
            if args.scenario == "device-silent" and elapsed >= silent_at:
                for d in devices[: args.silent]:
                    if not d.silent:
                        d.silent = True
                        print(json.dumps({"event": "silent", "device": d.device_id}), flush=True)
            if args.scenario == "pressure-drift":
                for d in pressure_devs:
                    d.pressure = max(0.0, d.pressure - args.drift / 60.0 * 0.01)
            target = int(elapsed * total_rate)
            while due < target:
                d = devices[idx % len(devices)]
                idx += 1
                due += 1
                if d.silent:
                    continue
                if malformed_rate and rnd.random() < malformed_rate:
                    fleet.publish_malformed(d)
                else:
                    fleet.publish_event(d)
            if not args.quiet and now - last_report > 5:
                last_report = now
                print(
                    json.dumps({"progress": fleet.summary()["sent"], "elapsed": round(elapsed, 1)}),
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(0.005)
        fleet.drain(timeout=max(30.0, args.duration))
    finally:
        fleet.close()
    print(json.dumps(fleet.summary(), ensure_ascii=False), flush=True)
    return 0
