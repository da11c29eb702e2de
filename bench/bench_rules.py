"""Rule-engine benchmark: cost per reading with the shipped profiles, and no-data timers at scale.

Run: ``.venv/bin/python bench/bench_rules.py [--devices 100000] [--out bench/RESULTS-rules.md]``

1. Evaluation cost per reading: a fleet of every shipped profile (default rules, plus a 30 s
   low-pressure threshold on pressure sensors), a realistic mix of readings, timed in batches of 1,000
   (and one reading per call); the median over batches, divided per reading.
2. No-data timers for N devices (one-key buttons, 900 s timeout): memory of the engine (tracemalloc),
   the cost of an idle tick, of a tick where heard-from devices are re-armed lazily, and of the tick
   where every device falls silent (N offline conditions).
"""

from __future__ import annotations

import argparse
import gc
import platform
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.models import PointClass, Reading, Value  # noqa: E402
from gateway.profiles.loader import Catalog, load_profile  # noqa: E402
from gateway.profiles.models import Device, Inventory, Profile, Site  # noqa: E402
from gateway.rules.engine import RuleEngine  # noqa: E402
from gateway.rules.spec import AnyRule, ThresholdRule, effective_rules  # noqa: E402

T0 = 1_700_000_000_000


def profiles() -> dict[str, Profile]:
    return {
        p.profile: p
        for p in (
            load_profile(f) for f in sorted((ROOT / "device_profiles").glob("*.yaml")) if not f.name.startswith("_")
        )
    }


def site(i: int) -> Site:
    return Site.model_validate(
        {
            "site_id": f"S{i}",
            "name": f"site {i}",
            "town": "T",
            "grid_cell": "G",
            "domain": "industrial",
            "station": {"station_id": "MS", "name": "MS"},
        }
    )


def fleet(profs: dict[str, Profile], per_profile: int) -> Catalog:
    devices = []
    for name, prof in profs.items():
        for i in range(per_profile):
            data: dict[str, object] = {"device_id": f"{name}-{i}", "site_id": f"S{i % 50}", "profile": name}
            if prof.transport == "modbus":
                data["modbus"] = {"host": f"10.0.{i // 200}.{i % 200}", "port": 502, "unit": 1}
            devices.append(Device.model_validate(data))
    return Catalog(profiles=profs, inventory=Inventory(sites=[site(i) for i in range(50)], devices=devices))


def _value(prof: Profile, metric: str, rnd: random.Random) -> Value:
    p = prof.point(metric)
    assert p is not None
    if p.type == "bool":
        return rnd.random() < 0.02
    if p.enum:
        keys = list(p.enum)
        return keys[1] if len(keys) > 1 and rnd.random() < 0.98 else keys[0]
    if p.type == "int":
        return rnd.randint(0, 3)
    lo, hi = p.range or (0.0, 1.0)
    return round(rnd.uniform(lo, hi), 3)


def readings(cat: Catalog, n: int, rnd: random.Random) -> list[Reading]:
    devs = list(cat.devices.values())
    out = []
    for k in range(n):
        d = devs[k % len(devs)]
        prof = cat.profiles[d.profile]
        pt = rnd.choice(prof.points)
        ts = T0 + k
        out.append(
            Reading(
                d.site_id,
                d.device_id,
                pt.name,
                _value(prof, pt.name, rnd),
                pt.unit,
                ts,
                ts,
                point_class=PointClass(pt.point_class),
            )
        )
    return out


def shifted(rs: list[Reading], ms: int) -> list[Reading]:
    return [
        Reading(
            r.site_id,
            r.device_id,
            r.metric,
            r.value,
            r.unit,
            r.ts_ms + ms,
            r.received_at_ms + ms,
            point_class=r.point_class,
        )
        for r in rs
    ]


def with_threshold(device: Device, profile: Profile) -> Sequence[AnyRule]:
    rules = effective_rules(profile, device)
    if profile.point("pressure") is not None:
        rules.append(ThresholdRule(point="pressure", below=0.25, clear_at=0.28, hold_s=30))
    return rules


def bench_eval(per_profile: int) -> dict[str, float]:
    profs = profiles()
    cat = fleet(profs, per_profile)
    eng = RuleEngine(cat, rules_for=with_threshold)
    rnd = random.Random(1)
    warm = readings(cat, 50_000, rnd)
    eng.on_readings(warm, T0)
    data = readings(cat, 200_000, rnd)
    data = shifted(data, 100_000)
    batch = 1000
    per_batch = []
    gc.disable()
    for i in range(0, len(data) - batch, batch):
        chunk = data[i : i + batch]
        t = time.perf_counter_ns()
        eng.on_readings(chunk, T0)
        per_batch.append((time.perf_counter_ns() - t) / batch / 1000)
    singles = []
    tail = readings(cat, 20_000, rnd)
    tail = shifted(tail, 400_000)
    for i in range(0, len(tail), 100):
        t = time.perf_counter_ns()
        for r in tail[i : i + 100]:
            eng.on_readings((r,), T0)
        singles.append((time.perf_counter_ns() - t) / 100 / 1000)
    gc.enable()
    assert eng.counters["stale"] == 0, eng.counters
    return {
        "devices": float(len(cat.devices)),
        "batched_median_us": statistics.median(per_batch),
        "batched_p99_us": sorted(per_batch)[int(len(per_batch) * 0.99)],
        "single_median_us": statistics.median(singles),
    }


def bench_nodata(n: int) -> dict[str, float]:
    button = profiles()["onekey-alarm-button"]
    devices = [
        Device.model_construct(
            device_id=f"B{i}",
            site_id="S0",
            profile=button.profile,
            location=Device.model_fields["location"].get_default(call_default_factory=True),
            modbus=None,
        )
        for i in range(n)
    ]
    cat = Catalog(
        profiles={button.profile: button}, inventory=Inventory.model_construct(sites=[site(0)], devices=devices)
    )
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    eng = RuleEngine(cat)
    eng.tick(T0)  # arms every device's no-data timer
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    del eng
    gc.collect()
    t = time.perf_counter_ns()
    eng = RuleEngine(cat)
    build_ms = (time.perf_counter_ns() - t) / 1e6
    t = time.perf_counter_ns()
    eng.tick(T0)
    arm_ms = (time.perf_counter_ns() - t) / 1e6
    mem = sum(s.size_diff for s in after.compare_to(before, "filename"))
    timeout = 3 * 300 * 1000
    # every device sends a heartbeat, spread over the first half of the timeout (first contact builds
    # the point's dispatch list; the second round is the steady state: store the receive time)
    spread = timeout // 2
    for rnd in (0, 1):
        hb = [
            Reading("S0", f"B{i}", "heartbeat", 1, "", ts, ts) for i in range(n) for ts in (T0 + rnd + i * spread // n,)
        ]
        t = time.perf_counter_ns()
        eng.on_readings(hb, T0 + spread)
        hb_us = (time.perf_counter_ns() - t) / n / 1000
    gc.collect()
    gc.freeze()  # what a long-running gateway does after loading: long-lived objects leave the young GC
    idle = []
    for k in range(1000):
        t = time.perf_counter_ns()
        eng.tick(T0 + 1000 + k)
        idle.append((time.perf_counter_ns() - t) / 1000)
    # at T0 + timeout every timer falls due; each device was heard from since: lazy re-arm
    t = time.perf_counter_ns()
    eng.tick(T0 + timeout)
    rearm_us = (time.perf_counter_ns() - t) / n / 1000
    # nothing more is heard: 1 s ticks over the next half timeout, ~n / 450 devices go offline per tick
    per_tick = []
    offline = 0
    for sec in range(1, spread // 1000 + 1):
        t = time.perf_counter_ns()
        offline += len(eng.tick(T0 + timeout + sec * 1000))
        per_tick.append((time.perf_counter_ns() - t) / 1000)
    quiet = []
    for sec in range(1, 1001):
        t = time.perf_counter_ns()
        eng.tick(T0 + 2 * timeout + sec * 1000)
        quiet.append((time.perf_counter_ns() - t) / 1000)
    gc.unfreeze()
    return {
        "build_ms": build_ms,
        "arm_ms": arm_ms,
        "devices": float(n),
        "memory_mb": mem / 1e6,
        "bytes_per_device": mem / n,
        "heartbeat_us": hb_us,
        "idle_tick_us": statistics.median(idle),
        "rearm_us_per_timer": rearm_us,
        "tick_median_us": statistics.median(per_tick),
        "tick_max_us": max(per_tick),
        "quiet_tick_us": statistics.median(quiet),
        "offline_conditions": float(offline),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--per-profile", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    ev = bench_eval(args.per_profile)
    nd = bench_nodata(args.devices)
    cmd = "python bench/bench_rules.py " + " ".join(sys.argv[1:])
    lines = [
        "# Rule engine benchmark",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
        f"2 cores ({platform.system()})",
        "",
        "## Evaluation cost per reading (shipped profiles, default rules + a 30 s pressure threshold)",
        "",
        "| fleet devices | batched median | batched p99 | one reading per call, median | target |",
        "| ---: | ---: | ---: | ---: | ---: |",
        f"| {ev['devices']:.0f} | {ev['batched_median_us']:.2f} µs | {ev['batched_p99_us']:.2f} µs "
        f"| {ev['single_median_us']:.2f} µs | < 5 µs |",
        "",
        f"## No-data timers, {nd['devices']:.0f} devices (900 s timeout)",
        "",
        "| measure | value |",
        "| --- | ---: |",
        f"| engine memory after arming every timer (tracemalloc) | {nd['memory_mb']:.1f} MB "
        f"({nd['bytes_per_device']:.0f} B/device) |",
        f"| engine construction / first tick arming every timer | {nd['build_ms']:.0f} ms / {nd['arm_ms']:.0f} ms |",
        f"| a heartbeat reading, steady state (stores the receive time, no heap work) | {nd['heartbeat_us']:.2f} µs |",
        f"| idle tick (nothing due), median | {nd['idle_tick_us']:.2f} µs |",
        f"| lazy re-arm of a timer that fell due for a device heard from | {nd['rearm_us_per_timer']:.2f} µs |",
        f"| 1 s ticks while devices fall silent (~{nd['devices'] / 450:.0f} due/tick), median | "
        f"{nd['tick_median_us']:.0f} µs |",
        f"| same, worst tick (after `gc.freeze()` at start-up) | {nd['tick_max_us']:.0f} µs |",
        f"| 1 s ticks once every device is offline (nothing armed), median | {nd['quiet_tick_us']:.2f} µs |",
        f"| offline conditions raised | {nd['offline_conditions']:.0f} |",
        "",
        "Notes: a reading costs one dict lookup, a time comparison and its rules; analog points with no rule",
        "cost the least. The no-data timer of a device is one heap entry, re-armed only when it falls due",
        "(a reading just stores its receive time), so a tick costs O(due timers). The cost of a due timer",
        "that raises a condition includes building the Condition record. Without `gc.freeze()` the worst",
        "tick is a full (generation 2) garbage collection over the ~100k long-lived engine objects",
        "(~0.3 s here); the gateway should call `gc.freeze()` once after loading the catalog.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
