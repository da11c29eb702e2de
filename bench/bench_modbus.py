"""Modbus polling benchmark: devices polled per second by one process, poll-interval jitter, and the
raw pymodbus request rate measured in the same run.

It starts ``--sims`` pump-room simulators (``--per-sim`` cabinets each, profile ``fire-pump-cabinet``:
43 points coalesced into 3 reads per device), polls every cabinet with one ``ModbusSource`` at
``--interval`` for ``--duration`` seconds, then measures what bare pymodbus achieves on the same
sockets (one client per simulator, back-to-back reads of the same 3 blocks) for ``--raw-duration``.

Jitter is measured per device as |(completion of poll k+1) − (completion of poll k) − interval|, from
the readings' ``ts_ms``. To see every poll, the profile's keepalive is set below the interval, so
every poll emits all 43 points (the worst case for the gateway; report by exception emits far less).

    .venv/bin/python bench/bench_modbus.py --sims 5 --per-sim 200 --interval 1.0 --duration 20

With ``--sequential`` the simulators behave as RS-485 converters (one request at a time in arrival
order, each taking its time on a ``--baud`` serial line) and ``--slow K`` makes units 1..K of each
simulator answer after ``--slow-s`` seconds: the healthy units' jitter, how many of them were ever
reported unreachable (must be 0) and how many of their readings were written as missing (must be 0).

    .venv/bin/python bench/bench_modbus.py --sims 2 --per-sim 10 --sequential --baud 115200 --slow 1 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient

from gateway.health import Health
from gateway.models import Quality
from gateway.profiles.loader import Catalog, load_catalog, load_inventory
from gateway.profiles.models import Device, Inventory, Site
from gateway.sources.base import PollBatch
from gateway.sources.modbus import ModbusSource
from simulators.launch import PumpRoomProcess

ROOT = Path(__file__).resolve().parent.parent
PROFILE = "fire-pump-cabinet"


def _start_sim(n: int, workdir: Path, args: argparse.Namespace) -> PumpRoomProcess:
    extra = ["--sequential", "--baud", str(args.baud)] if args.sequential else []
    room = PumpRoomProcess(workdir, devices=n, args=["--tick", "1.0", *extra]).start()
    room.command(*(f"slow {unit} {args.slow_s}" for unit in range(1, args.slow + 1)))
    return room


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _gateway_phase(
    catalog: Catalog, interval: float, duration: float, warmup: float, slow_ids: set[str]
) -> dict[str, float]:
    polls: dict[str, list[int]] = {}
    batches = 0
    unreachable: set[str] = set()
    missing = 0

    async def commit(batch: PollBatch) -> None:
        nonlocal batches, missing
        batches += 1
        seen: set[str] = set()
        unreachable.update(s.device_id for s in batch.status if s.status == "unreachable")
        for r in batch.readings:
            if r.device_id in slow_ids:
                continue
            if r.quality is Quality.MISSING:
                missing += 1
            if r.device_id not in seen:
                seen.add(r.device_id)
                polls.setdefault(r.device_id, []).append(r.ts_ms)

    source = ModbusSource(catalog=catalog, commit=commit, health=Health())
    task = asyncio.create_task(source.run())
    start_ms = time.time() * 1000
    cpu0 = time.process_time()
    await asyncio.sleep(warmup + duration)
    cpu = time.process_time() - cpu0
    await source.stop()
    task.cancel()
    lo, hi = start_ms + warmup * 1000, start_ms + (warmup + duration) * 1000
    jitter: list[float] = []
    completed = 0
    for ts in polls.values():
        window = [t for t in ts if lo <= t < hi]
        completed += len(window)
        jitter += [abs((b - a) / 1000 - interval) for a, b in itertools.pairwise(window)]
    devices = len(catalog.inventory.devices) - len(slow_ids)
    return {
        "devices": devices,
        "healthy_unreachable": len(unreachable - slow_ids),
        "slow_unreachable": len(unreachable & slow_ids),
        "healthy_missing": missing,
        "polled_per_s": completed / duration,
        "expected_per_s": devices / interval,
        "jitter_p50_ms": _percentile(jitter, 0.50) * 1000,
        "jitter_p99_ms": _percentile(jitter, 0.99) * 1000,
        "jitter_max_ms": max(jitter, default=float("nan")) * 1000,
        "cpu_s_per_s": cpu / (warmup + duration),
        "requests_per_s": completed / duration * 3,
    }


async def _raw_phase(ports: list[int], units: int, duration: float) -> float:
    """Back-to-back reads of the cabinet's 3 blocks, one client per simulator, all clients at once."""
    count = 0
    stop_at = time.monotonic() + duration

    async def hammer(port: int) -> None:
        nonlocal count
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0)
        await client.connect()
        unit = 0
        try:
            while time.monotonic() < stop_at:
                unit = unit % units + 1
                await client.read_holding_registers(0, count=14, device_id=unit)
                await client.read_input_registers(0, count=32, device_id=unit)
                await client.read_discrete_inputs(0, count=3, device_id=unit)
                count += 3
        finally:
            client.close()

    async with asyncio.TaskGroup() as tg:
        for port in ports:
            tg.create_task(hammer(port))
    return count / duration


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-modbus-"))
    rooms: list[PumpRoomProcess] = []
    try:
        devices: list[Device] = []
        sites: list[Site] = []
        ports: list[int] = []
        for i in range(args.sims):
            room = await asyncio.to_thread(_start_sim, args.per_sim, tmp / f"sim{i}", args)
            rooms.append(room)
            ports.append(room.port)
            inv_path = room.inventory
            inv = load_inventory(inv_path)
            sites = list(inv.sites)
            for d in inv.devices:
                if d.profile == PROFILE and d.modbus is not None:
                    devices.append(
                        d.model_copy(
                            update={
                                "device_id": f"s{i}-{d.device_id}",
                                "modbus": d.modbus.model_copy(
                                    update={"poll_interval_s": args.interval, "timeout_s": args.timeout}
                                ),
                            }
                        )
                    )
        base = load_catalog(ROOT / "device_profiles", None)
        profiles = dict(base.profiles)
        prof = profiles[PROFILE]
        assert prof.modbus is not None
        profiles[PROFILE] = prof.model_copy(
            update={"modbus": prof.modbus.model_copy(update={"keepalive_s": args.interval / 2})}
        )
        catalog = Catalog(profiles=profiles, inventory=Inventory(sites=sites, devices=devices))
        slow_ids = {f"s{i}-cabinet-{u:03d}" for i in range(args.sims) for u in range(1, args.slow + 1)}
        gw = await _gateway_phase(catalog, args.interval, args.duration, args.warmup, slow_ids)
        print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
        print(f"command: {' '.join(sys.argv)}")
        print(
            f"devices {gw['devices']} ({args.sims} simulators × {args.per_sim}), "
            f"interval {args.interval:g} s, 43 points / 3 reads per device"
            + (f"; sequential links at {args.baud} baud" if args.sequential else "")
        )
        if slow_ids:
            print(
                f"slow units: {len(slow_ids)} answering after {args.slow_s:g} s (timeout_s {args.timeout:g}), "
                f"{gw['slow_unreachable']} reported unreachable; healthy units reported unreachable: "
                f"{gw['healthy_unreachable']}, healthy readings written as missing: {gw['healthy_missing']}"
            )
        print(f"polled per second: {gw['polled_per_s']:.1f} (schedule asks {gw['expected_per_s']:.1f})")
        print(
            f"poll-interval jitter: p50 {gw['jitter_p50_ms']:.1f} ms, p99 {gw['jitter_p99_ms']:.1f} ms, "
            f"max {gw['jitter_max_ms']:.1f} ms"
        )
        print(f"gateway Modbus requests/s: {gw['requests_per_s']:.0f}; gateway process CPU {gw['cpu_s_per_s']:.2f} s/s")
        if not slow_ids:  # a raw client would wait on the slow units
            raw = await _raw_phase(ports, args.per_sim, args.raw_duration)
            print(
                f"raw pymodbus requests/s (same sockets, same run): {raw:.0f}; "
                f"gateway/raw ratio {gw['requests_per_s'] / raw:.2f}"
            )
    finally:
        for room in rooms:
            room.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sims", type=int, default=2)
    parser.add_argument("--per-sim", type=int, default=100)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--raw-duration", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=2.0, help="timeout_s of every device")
    parser.add_argument("--sequential", action="store_true", help="simulators answer one request at a time")
    parser.add_argument("--baud", type=int, default=115200, help="with --sequential: the serial line's speed")
    parser.add_argument("--slow", type=int, default=0, help="units 1..K of each simulator answer late")
    parser.add_argument("--slow-s", type=float, default=2.0, help="how late the slow units answer")
    asyncio.run(main(parser.parse_args()))
