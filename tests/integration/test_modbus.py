"""ModbusSource against the real pump-room simulator (a subprocess on a free loopback port).

Each test starts ``python -m simulators pumproom`` with ``--port 0``, reads the port from its ready
line, builds a catalog from the inventory it writes, and runs the source with a collecting ``commit``.
Every wait is a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pymodbus.framer.rtu import FramerRTU

from gateway.errors import ConfigError
from gateway.health import Health
from gateway.models import DeadLetter, Quality, Reading, Value
from gateway.profiles.loader import Catalog, load_catalog, load_inventory
from gateway.profiles.models import Device, Inventory, Point, Profile
from gateway.sources.base import DeviceStatusChange, PollBatch
from gateway.sources.modbus import ModbusSource
from simulators.launch import PumpRoomProcess

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "device_profiles"
TANK, PANEL = 240, 241


class Sim:
    """The pump-room simulator (its launcher, simulators/launch.py) for async tests."""

    def __init__(self, tmp: Path, *args: str, devices: int = 1, port: int = 0) -> None:
        self._room = PumpRoomProcess(tmp, devices=devices, port=port, args=args)
        self.inventory = self._room.inventory

    @property
    def port(self) -> int:
        return self._room.port

    @property
    def control_port(self) -> int:
        return self._room.control_port

    async def start(self) -> Sim:
        await asyncio.to_thread(self._room.start)
        return self

    async def command(self, *commands: str) -> list[str]:
        return await asyncio.to_thread(self._room.command, *commands)

    async def stop(self) -> None:
        await asyncio.to_thread(self._room.kill)


class Collector:
    """The ``commit`` of the tests: keeps every batch and wakes waiters."""

    def __init__(self) -> None:
        self.batches: list[PollBatch] = []
        self._changed = asyncio.Event()

    async def commit(self, batch: PollBatch) -> None:
        self.batches.append(batch)
        self._changed.set()

    @property
    def readings(self) -> list[Reading]:
        return [r for b in self.batches for r in b.readings]

    @property
    def dead(self) -> list[DeadLetter]:
        return [d for b in self.batches for d in b.dead]

    @property
    def status(self) -> list[DeviceStatusChange]:
        return [s for b in self.batches for s in b.status]

    def latest(self, device_id: str) -> dict[str, Reading]:
        out: dict[str, Reading] = {}
        for r in self.readings:
            if r.device_id == device_id:
                out[r.metric] = r
        return out

    async def polled_for(self, seconds: float, timeout: float) -> float:
        """Wait until readings stamped ``seconds`` after now arrive; return now (epoch seconds)."""
        start = time.time()
        await self.until(
            lambda: max((r.ts_ms for r in self.readings), default=0) / 1000 > start + seconds,
            timeout,
            f"{seconds} more seconds of polls",
        )
        return start

    async def until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass


def _catalog(
    inventory: Inventory,
    *,
    poll: float | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    keepalive: float | None = None,
    sequential: bool | None = None,
    late_answer: float | None = None,
    extra_profiles: dict[str, Profile] | None = None,
    only: set[str] | None = None,
) -> Catalog:
    base = load_catalog(PROFILES, None)
    profiles = dict(base.profiles)
    if keepalive is not None:
        for name, prof in profiles.items():
            if prof.modbus is not None:
                profiles[name] = prof.model_copy(
                    update={"modbus": prof.modbus.model_copy(update={"keepalive_s": keepalive})}
                )
    profiles.update(extra_profiles or {})
    devices: list[Device] = []
    for d in inventory.devices:
        if only is not None and d.device_id not in only:
            continue
        assert d.modbus is not None
        update: dict[str, Any] = {}
        if poll is not None:
            update["poll_interval_s"] = poll
        if timeout is not None:
            update["timeout_s"] = timeout
        if retries is not None:
            update["retries"] = retries
        if sequential is not None:
            update["sequential"] = sequential
        if late_answer is not None:
            update["late_answer_s"] = late_answer
        devices.append(d.model_copy(update={"modbus": d.modbus.model_copy(update=update)}))
    return Catalog(profiles=profiles, inventory=Inventory(sites=inventory.sites, devices=devices))


def _run(coro: Any) -> None:
    asyncio.run(coro)


async def _source_task(
    catalog: Catalog, collector: Collector, health: Health | None = None
) -> tuple[ModbusSource, asyncio.Task[None]]:
    source = ModbusSource(catalog=catalog, commit=collector.commit, health=health or Health())
    return source, asyncio.create_task(source.run())


# ---------------------------------------------------------------------------- round trip


def _known_value(p: Point, k: int) -> Value:
    """A distinctive value the point can hold exactly (float32 values are multiples of 1/4)."""
    spec = p.modbus_register
    assert spec is not None
    if p.type == "bool":
        return k % 2 == 0
    if p.enum:
        return sorted(p.enum)[-1 - (k % len(p.enum))] if len(p.enum) > 1 else next(iter(p.enum))
    lo, hi = p.range or (0.0, 1000.0)
    if p.type == "int":
        return int(min(hi, lo + 3 + k))
    if spec.type in ("float32", "float64"):
        return math.floor((lo + (hi - lo) * 0.37) * 4) / 4 + 0.25
    steps = round((lo + (hi - lo) * 0.37) / spec.scale)
    return round(steps * spec.scale, 6)


def test_every_point_of_every_shipped_profile_round_trips(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await Sim(tmp_path).start()
        try:
            inventory = load_inventory(sim.inventory)
            catalog = _catalog(inventory, poll=0.2)
            expected: dict[str, dict[str, Value]] = {}
            commands = []
            for dev in catalog.inventory.devices:
                assert dev.modbus is not None
                prof = catalog.profiles[dev.profile]
                expected[dev.device_id] = {}
                for k, p in enumerate(prof.points):
                    value = _known_value(p, k)
                    expected[dev.device_id][p.name] = value
                    commands.append(f"set {dev.modbus.unit} {p.name} {value}")
            await sim.command(*commands)
            collector = Collector()
            source, task = await _source_task(catalog, collector)

            def complete() -> bool:
                return all(len(collector.latest(d)) == len(v) for d, v in expected.items())

            await collector.until(complete, 10, "every point of every device")
            await source.stop()
            assert task.done()
            assert not collector.dead, collector.dead
            for device_id, values in expected.items():
                got = collector.latest(device_id)
                for name, want in values.items():
                    r = got[name]
                    assert r.quality in (Quality.GOOD, Quality.SUSPECT), (device_id, name, r)
                    assert type(r.value) is type(want), (device_id, name, r.value, want)
                    assert r.value == pytest.approx(want, rel=1e-9, abs=1e-9), (
                        device_id,
                        name,
                        r.value,
                        want,
                    )
            # the three profiles are all there, with the tank on a 1-based binding
            assert {d.profile for d in catalog.inventory.devices} == {
                "fire-pump-cabinet",
                "fire-water-tank-modbus",
                "fire-panel-summary",
            }
        finally:
            await sim.stop()

    _run(main())


# ---------------------------------------------------------------------------- dead and slow devices


def test_dead_and_slow_devices_do_not_delay_live_ones(tmp_path: Path) -> None:
    dead_units = {3, 13, 23}
    slow_units = {33, 43}
    interval = 1.0

    async def main() -> None:
        sim = await Sim(tmp_path, "--tick", "0.5", devices=50).start()
        try:
            await sim.command(*[f"dead {u}" for u in dead_units], *[f"slow {u} 1.5" for u in slow_units])
            inventory = load_inventory(sim.inventory)
            cabinets = {d.device_id for d in inventory.devices if d.profile == "fire-pump-cabinet"}
            # a server that answers concurrently (the simulator's default), declared so
            catalog = _catalog(
                inventory, poll=interval, timeout=0.25, retries=1, keepalive=0.01, only=cabinets, sequential=False
            )
            collector = Collector()
            health = Health()
            source, task = await _source_task(catalog, collector, health)
            t0 = time.time()
            bad = {f"cabinet-{u:03d}" for u in dead_units | slow_units}
            await collector.until(
                lambda: {s.device_id for s in collector.status if s.status == "unreachable"} >= bad,
                6,
                "the dead and slow devices reported unreachable",
            )
            await asyncio.sleep(0)  # the measurement window starts now; it is closed by the condition below
            window_start_ms = int(time.time() * 1000) + 1000
            await collector.until(
                lambda: max((r.ts_ms for r in collector.readings), default=0) > window_start_ms + 6000,
                12,
                "six seconds of polls",
            )
            await source.stop()
            assert task.done()
            polls: dict[str, set[int]] = {}
            for r in collector.readings:
                if r.ts_ms >= window_start_ms:
                    polls.setdefault(r.device_id, set()).add(r.ts_ms)
            live = cabinets - bad
            assert set(polls) == live, sorted(set(polls) ^ live)
            worst = 0.0
            for device_id in live:
                ts = sorted(polls[device_id])
                assert len(ts) >= 5, (device_id, ts)
                for a, b in itertools.pairwise(ts):
                    dt = (b - a) / 1000
                    worst = max(worst, abs(dt - interval))
                    assert abs(dt - interval) <= 0.2 * interval, (device_id, dt)
            unreachable = [s for s in collector.status if s.status == "unreachable"]
            assert {s.device_id for s in unreachable} == bad
            assert len(unreachable) == len(bad), "each device is reported unreachable once"
            assert all(s.link is None for s in unreachable)
            stage = health.stage(f"modbus:127.0.0.1:{sim.port}")
            assert stage.counters["polls"] > 200 and stage.connected
            print(
                f"worst interval deviation {worst * 1000:.1f} ms over {len(live)} live devices, "
                f"{time.time() - t0:.1f} s"
            )
        finally:
            await sim.stop()

    _run(main())


# ---------------------------------------------------------------------------- restart


def test_simulator_restart_is_recovered_without_restarting_the_poller(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await Sim(tmp_path, devices=3).start()
        try:
            inventory = load_inventory(sim.inventory)
            catalog = _catalog(inventory, poll=0.3, timeout=0.5)
            collector = Collector()
            health = Health()
            source, task = await _source_task(catalog, collector, health)
            ids = {d.device_id for d in catalog.inventory.devices}
            link = f"127.0.0.1:{sim.port}"

            def states(status: str, since: int = 0) -> set[str]:
                return {s.device_id for s in collector.status[since:] if s.status == status}

            await collector.until(lambda: states("online") == ids, 5, "all devices online")
            await sim.stop()
            mark = len(collector.status)
            await collector.until(lambda: states("unreachable", mark) == ids, 5, "all devices unreachable")
            down = [s for s in collector.status[mark:] if s.status == "unreachable"]
            assert {s.link for s in down} == {link}, down
            missing = [r for r in collector.readings if r.quality is Quality.MISSING]
            assert {r.device_id for r in missing} == ids, "last-known values are written as missing"
            assert health.stage(f"modbus:{link}").connected is False
            mark = len(collector.status)
            restarted = await Sim(tmp_path, devices=3, port=sim.port).start()
            sim = restarted
            await collector.until(lambda: states("online", mark) == ids, 10, "all devices online again")
            n = len(collector.readings)
            await collector.until(
                lambda: any(r.quality is Quality.GOOD for r in collector.readings[n:]) or len(collector.readings) > n,
                5,
                "readings after the restart",
            )
            assert not task.done(), "the poller kept running"
            assert health.stage(f"modbus:{link}").connected is True
            await source.stop()
        finally:
            await sim.stop()

    _run(main())


# ---------------------------------------------------------------------------- physics


def test_fire_demand_starts_the_duty_pump_within_the_delay(tmp_path: Path) -> None:
    """Cabinet 1 normal, cabinet 2 duty pump fails (standby starts), cabinet 3 in manual (nothing starts)."""
    delay = 1.5
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(
        "steps:\n  - {at: 0, do: fault 2 pump1-fails}\n  - {at: 0, do: fault 3 manual}\n"
        "  - {at: 1, do: demand 1 30}\n  - {at: 1, do: demand 2 30}\n"
        "  - {at: 1, do: demand 3 30}\n"
    )

    async def main() -> None:
        sim = await Sim(
            tmp_path,
            "--scenario-file",
            str(scenario),
            "--pump-start-delay",
            str(delay),
            "--tick",
            "0.05",
            devices=3,
        ).start()
        try:
            inventory = load_inventory(sim.inventory)
            catalog = _catalog(inventory, poll=0.1, only={"cabinet-001", "cabinet-002", "cabinet-003"})
            collector = Collector()
            source, task = await _source_task(catalog, collector)

            def first(device: str, metric: str, value: Value) -> Reading | None:
                return next(
                    (
                        r
                        for r in collector.readings
                        if r.device_id == device and r.metric == metric and r.value == value
                    ),
                    None,
                )

            await collector.until(
                lambda: (
                    first("cabinet-001", "pump1_run", True) is not None
                    and first("cabinet-002", "pump2_run", True) is not None
                ),
                15,
                "pumps running",
            )
            # cabinet 3 (manual) gets the same time again after its switch closed: nothing may start
            switch3 = first("cabinet-003", "pressure_switch", True)
            assert switch3 is not None
            await collector.until(
                lambda: max(r.ts_ms for r in collector.readings) > switch3.ts_ms + (2 * delay + 1) * 1000,
                10,
                "time after cabinet 3's switch closed",
            )
            await source.stop()
            assert task.done()

            # cabinet 1: pressure falls, the switch closes, pump 1 runs within the delay
            pressures = [
                r for r in collector.readings if r.device_id == "cabinet-001" and r.metric == "outlet_pressure"
            ]
            switch = first("cabinet-001", "pressure_switch", True)
            run1 = first("cabinet-001", "pump1_run", True)
            assert switch is not None and run1 is not None
            before = [float(r.value) for r in pressures if r.ts_ms <= switch.ts_ms]
            assert before[0] > 0.45 and before[-1] < 0.4, before  # the pressure fell below the setpoint
            assert switch.urgent and run1.urgent
            took = (run1.ts_ms - switch.ts_ms) / 1000
            assert delay - 0.3 <= took <= delay + 0.5, took
            after = [float(r.value) for r in pressures if r.ts_ms > run1.ts_ms + 1500]
            assert after and after[-1] > 0.6, "the main pump restores the pressure"

            # cabinet 2: duty pump fails to start, the standby pump runs after a second delay
            fail = first("cabinet-002", "pump1_start_failure", True)
            run2 = first("cabinet-002", "pump2_run", True)
            switch2 = first("cabinet-002", "pressure_switch", True)
            assert fail is not None and run2 is not None and switch2 is not None
            assert first("cabinet-002", "pump1_run", True) is None
            assert switch2.ts_ms < fail.ts_ms < run2.ts_ms
            assert (run2.ts_ms - switch2.ts_ms) / 1000 <= 2 * delay + 0.5

            # cabinet 3: in manual, the switch closes and no pump starts
            assert first("cabinet-003", "pump1_mode", 0) is not None
            assert first("cabinet-003", "pump1_run", True) is None
            assert first("cabinet-003", "pump2_run", True) is None
        finally:
            await sim.stop()

    _run(main())


# ---------------------------------------------------------------------------- bad input


def _with_extra_point(base: Profile) -> Profile:
    """The cabinet profile plus a point at an address the simulator does not have."""
    data = base.model_dump(by_alias=True, exclude_none=True)
    data["profile"] = "cabinet-with-bad-address"
    data["points"].append(
        {
            "name": "not_there",
            "class": "status",
            "type": "int",
            "register": {"table": "holding", "address": 500, "type": "uint16"},
        }
    )
    return Profile.model_validate(data)


def test_bad_input_becomes_dead_letters_and_flags_never_a_stopped_poller(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await Sim(tmp_path, devices=4).start()
        try:
            inventory = load_inventory(sim.inventory)
            base = load_catalog(PROFILES, None).profiles["fire-pump-cabinet"]
            extra = _with_extra_point(base)
            devices = []
            for d in inventory.devices:
                if d.device_id == "cabinet-001":
                    d = d.model_copy(update={"profile": extra.profile})
                devices.append(d)
            assert devices[0].modbus is not None
            ghost = devices[0].model_copy(
                update={"device_id": "ghost", "modbus": devices[0].modbus.model_copy(update={"unit": 99})}
            )  # no such unit behind the simulator: it never answers
            inventory = Inventory(sites=inventory.sites, devices=[*devices, ghost])
            catalog = _catalog(
                inventory,
                poll=0.2,
                timeout=0.3,
                retries=0,
                keepalive=1.0,  # unreadable points are re-checked every keepalive_s
                extra_profiles={extra.profile: extra},
                only={"cabinet-001", "cabinet-002", "cabinet-003", "cabinet-004", "ghost"},
            )
            await sim.command("set 3 outlet_pressure 3.5")  # beyond the physical range [-0.1, 2.5] MPa
            collector = Collector()
            health = Health()
            source, task = await _source_task(catalog, collector, health)
            # every point but last_start_time (its sentinel says "no automatic start yet")
            await collector.until(
                lambda: (
                    len(collector.latest("cabinet-001")) == len(base.points) - 1
                    and any(d.device_id == "cabinet-003" for d in collector.dead)
                ),
                5,
                "first polls",
            )
            # 1. illegal address: one dead letter naming the point, one status change for the device,
            # and the device's other points are read
            illegal = [d for d in collector.dead if d.device_id == "cabinet-001"]
            assert len(illegal) == 1, "one dead letter per address, not one per poll"
            assert "illegal data address" in illegal[0].reason and "not_there" in illegal[0].reason
            assert illegal[0].address == f"127.0.0.1:{sim.port}/unit1/holding:500"
            assert [s.status for s in collector.status if s.device_id == "cabinet-001"] == [
                "online",
                "points_unreadable",
            ]
            # 2. out of the physical range: a dead letter for that point only, with the raw words
            oor = [d for d in collector.dead if d.device_id == "cabinet-003"]
            assert "outside the physical range" in oor[0].reason and oor[0].payload == (3500).to_bytes(2, "big")
            assert "outlet_pressure" not in collector.latest("cabinet-003")
            assert "pump1_run" in collector.latest("cabinet-003")
            # 3. the unit that never answers is unreachable; the others are not
            await collector.until(
                lambda: any(s.device_id == "ghost" and s.status == "unreachable" for s in collector.status),
                5,
                "ghost unreachable",
            )
            # 4. a short response, a sentinel (no value: last value flagged missing), and Modbus exceptions
            await sim.command("short 2 1", "set 4 outlet_pressure none", "fault 3 illegal")
            mark = len(collector.dead)
            await collector.until(
                lambda: any(
                    "short response" in d.reason for d in collector.dead[mark:] if d.device_id == "cabinet-002"
                ),
                5,
                "short response",
            )
            await collector.until(
                lambda: collector.latest("cabinet-004")["outlet_pressure"].quality is Quality.MISSING,
                5,
                "sentinel flagged missing",
            )
            await collector.until(
                lambda: any("illegal" in d.reason for d in collector.dead[mark:] if d.device_id == "cabinet-003"),
                5,
                "exception responses",
            )
            await collector.until(
                lambda: any(s.device_id == "cabinet-003" and s.status == "points_unreadable" for s in collector.status),
                5,
                "cabinet 3's points unreadable",
            )
            # 5. the device recovers from each without anyone restarting anything
            await sim.command("short 2 0", "set 4 outlet_pressure 0.55", "clear 3")
            n = len(collector.readings)
            await collector.until(
                lambda: any(
                    r.device_id == "cabinet-004" and r.metric == "outlet_pressure" and r.quality is Quality.GOOD
                    for r in collector.readings[n:]
                ),
                5,
                "value back after the sentinel",
            )
            await collector.until(
                lambda: any(s.device_id == "cabinet-003" and s.status == "points_readable" for s in collector.status),
                5,
                "cabinet 3 readable again (re-checked)",
            )
            assert len(illegal) == len([d for d in collector.dead if d.device_id == "cabinet-001"])
            assert not task.done()
            assert {s.device_id for s in collector.status if s.status == "unreachable"} == {"ghost"}
            assert health.stage(f"modbus:127.0.0.1:{sim.port}").counters["dead_letters"] >= 3
            await source.stop()
        finally:
            await sim.stop()

    _run(main())


def test_rtu_over_tcp_and_rtu_serial(tmp_path: Path) -> None:
    """RTU frames over TCP (a converter), and the serial RTU client through pyserial's socket:// URL."""

    async def main() -> None:
        sim = await Sim(tmp_path, "--framer", "rtu", devices=2).start()
        try:
            inventory = load_inventory(sim.inventory)
            assert all(d.modbus is not None and d.modbus.framer == "rtu_over_tcp" for d in inventory.devices)
            serial = Device.model_validate(
                {
                    "device_id": "serial-2",
                    "site_id": "pumproom",
                    "profile": "fire-pump-cabinet",
                    "modbus": {
                        "framer": "rtu",
                        "serial_port": f"socket://127.0.0.1:{sim.port}",
                        "unit": 2,
                        "baudrate": 115200,
                    },
                }
            )
            inventory = Inventory(sites=inventory.sites, devices=[*inventory.devices, serial])
            catalog = _catalog(inventory, poll=0.2)
            collector = Collector()
            health = Health()
            source, task = await _source_task(catalog, collector, health)
            ids = {d.device_id for d in catalog.inventory.devices}
            await collector.until(lambda: all(len(collector.latest(i)) > 5 for i in ids), 8, "readings over RTU")
            assert not task.done()
            await source.stop()
            assert not collector.dead
            assert sorted(source.links) == sorted([f"127.0.0.1:{sim.port}", f"socket://127.0.0.1:{sim.port}"])
            assert (
                collector.latest("serial-2")["pump1_mode"].value == collector.latest("cabinet-002")["pump1_mode"].value
            )
        finally:
            await sim.stop()

    _run(main())


# ---------------------------------------------------------------------------- sequential links


def _statuses(collector: Collector, device_id: str) -> list[str]:
    return [s.status for s in collector.status if s.device_id == device_id]


@pytest.mark.parametrize("retries", [0, 1])
def test_slow_unit_on_a_sequential_link_never_makes_its_healthy_neighbour_unreachable(
    tmp_path: Path, retries: int
) -> None:
    """The field case: an RS-485 converter, one unit answering after 2 s, timeout_s 1, default link settings.

    (With ``sequential: false`` both variants fail: the healthy unit's request waits behind the slow
    unit's and times out.)
    """

    async def main() -> None:
        sim = await Sim(tmp_path, "--sequential", devices=2).start()
        try:
            await sim.command("slow 1 2")
            inventory = load_inventory(sim.inventory)
            catalog = _catalog(
                inventory, poll=1.0, keepalive=0.01, retries=retries, only={"cabinet-001", "cabinet-002"}
            )
            collector = Collector()
            health = Health()
            source, task = await _source_task(catalog, collector, health)
            await collector.until(
                lambda: "unreachable" in _statuses(collector, "cabinet-001"), 10, "the slow unit unreachable"
            )
            t_unreachable = await collector.polled_for(5, 10)
            await source.stop()
            assert task.done()
            assert _statuses(collector, "cabinet-002") == ["online"]
            healthy = [r for r in collector.readings if r.device_id == "cabinet-002"]
            assert healthy and all(r.quality is not Quality.MISSING for r in healthy)
            polls = sorted({r.ts_ms for r in healthy})
            assert len([t for t in polls if t / 1000 > t_unreachable]) >= 4, polls
            gaps = [(b - a) / 1000 for a, b in itertools.pairwise(polls)]
            assert max(gaps) <= 4.5, gaps  # delayed behind the slow unit at worst, never dropped
            assert _statuses(collector, "cabinet-001") == ["unreachable"]
            stage = health.stage(f"modbus:127.0.0.1:{sim.port}")
            print(f"gaps {[round(g, 2) for g in gaps]}, counters {stage.counters}")
        finally:
            await sim.stop()

    _run(main())


def test_dead_and_slow_units_on_a_sequential_link_with_healthy_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A converter that holds the line 1 s for a dead unit and 1.5 s for a slow one; our late-answer
    window (0.5 s) is shorter, so the link is often *possibly busy*: healthy units that miss a poll
    then are excused, never unreachable, and the dead and slow ones are isolated and probed."""
    interval = 2.0
    healthy_ids = {"cabinet-001", "cabinet-003", "cabinet-005"}

    async def main() -> None:
        sim = await Sim(tmp_path, "--sequential", "--busy-timeout", "1.0", devices=5).start()
        try:
            await sim.command("dead 2", "slow 4 1.5")
            inventory = load_inventory(sim.inventory)
            catalog = _catalog(
                inventory,
                poll=interval,
                timeout=0.3,
                retries=0,
                keepalive=0.01,
                late_answer=0.5,
                only={f"cabinet-{u:03d}" for u in range(1, 6)},
            )
            collector = Collector()
            health = Health()
            source, task = await _source_task(catalog, collector, health)
            bad = {"cabinet-002", "cabinet-004"}
            await collector.until(
                lambda: {s.device_id for s in collector.status if s.status == "unreachable"} >= bad,
                10,
                "the dead and the slow unit unreachable",
            )
            stage = health.stage(f"modbus:127.0.0.1:{sim.port}")
            t_bad = await collector.polled_for(7, 15)
            await source.stop()
            assert task.done()
            for device_id in healthy_ids:
                assert "unreachable" not in _statuses(collector, device_id), device_id
                readings = [r for r in collector.readings if r.device_id == device_id]
                assert all(r.quality is not Quality.MISSING for r in readings), device_id
                polls = sorted({r.ts_ms for r in readings if r.ts_ms / 1000 > t_bad})
                assert len(polls) >= 3, (device_id, polls)
                gaps = [(b - a) / 1000 for a, b in itertools.pairwise(polls)]
                assert max(gaps) <= 2 * interval + 1.5, (device_id, gaps)
            assert {s.device_id for s in collector.status if s.status == "unreachable"} == bad
            assert not [
                r
                for r in collector.readings
                if r.device_id in bad and r.quality is not Quality.MISSING and r.ts_ms / 1000 > t_bad
            ]
            assert stage.counters.get("late_windows_passed", 0) > 0, stage.counters
            # pymodbus' complaints about late answers are DEBUG at most; ours: one line per state change
            assert not [r for r in caplog.records if r.name.startswith("pymodbus") and r.levelno > logging.DEBUG]
            ours = [r for r in caplog.records if r.name == "gateway.sources.modbus" and r.levelno >= logging.WARNING]
            assert len(ours) == len([s for s in collector.status if s.status == "unreachable"]), ours
            print(f"counters {stage.counters}")
        finally:
            await sim.stop()

    _run(main())


def test_a_dead_sequential_link_is_still_reported(tmp_path: Path) -> None:
    """Excusing timeouts on a possibly busy link is bounded: when every unit stops answering (the
    converter is up, its RS-485 side is not), every unit is reported unreachable."""

    async def main() -> None:
        sim = await Sim(tmp_path, "--sequential", "--busy-timeout", "0.5", devices=3).start()
        try:
            inventory = load_inventory(sim.inventory)
            ids = {f"cabinet-{u:03d}" for u in (1, 2, 3)}
            catalog = _catalog(inventory, poll=0.5, timeout=0.2, retries=0, late_answer=0.2, only=ids)
            collector = Collector()
            source, task = await _source_task(catalog, collector)
            await collector.until(lambda: {s.device_id for s in collector.status} == ids, 5, "all online")
            await sim.command("dead 1", "dead 2", "dead 3")
            await collector.until(
                lambda: {s.device_id for s in collector.status if s.status == "unreachable"} == ids,
                10,
                "every unit unreachable",
            )
            await source.stop()
            assert task.done()
        finally:
            await sim.stop()

    _run(main())


# ---------------------------------------------------------------------------- the simulator on the wire


def _mbap(tid: int, unit: int, pdu: bytes) -> bytes:
    return tid.to_bytes(2, "big") + b"\x00\x00" + (len(pdu) + 1).to_bytes(2, "big") + bytes((unit,)) + pdu


def _read_pdu(fc: int, address: int, count: int) -> bytes:
    return bytes((fc,)) + address.to_bytes(2, "big") + count.to_bytes(2, "big")


async def _mbap_answers(reader: asyncio.StreamReader, n: int) -> list[tuple[int, int, bytes]]:
    """``n`` MBAP frames as (transaction id, unit, PDU), in arrival order."""
    out = []
    for _ in range(n):
        head = await asyncio.wait_for(reader.readexactly(7), 5)
        body = await asyncio.wait_for(reader.readexactly(int.from_bytes(head[4:6], "big") - 1), 5)
        out.append((int.from_bytes(head[0:2], "big"), head[6], body))
    return out


_BAD_REQUESTS = [  # (PDU, expected answer)
    (_read_pdu(3, 0, 126), b"\x83\x03"),  # more than 125 registers: illegal data value
    (_read_pdu(4, 0, 0), b"\x84\x03"),  # no register at all
    (_read_pdu(1, 0, 2001), b"\x81\x03"),  # more than 2000 bits
    (_read_pdu(2, 0, 0), b"\x82\x03"),
    (_read_pdu(3, 60000, 10), b"\x83\x02"),  # past the unit's memory: illegal data address
    (b"\x06\x00\x00\x00\x01", b"\x86\x01"),  # a write: illegal function
    (b"\x03\x00\x00", b"\x83\x03"),  # a read PDU of the wrong length
]


def test_simulator_answers_every_request_of_a_segment_with_the_right_exception(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await Sim(tmp_path, devices=1).start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
            requests = [_read_pdu(3, 0, 2), _read_pdu(2, 0, 3)] + [pdu for pdu, _ in _BAD_REQUESTS]
            writer.write(b"".join(_mbap(tid, 1, pdu) for tid, pdu in enumerate(requests, 1)))  # one segment
            await writer.drain()
            answers = {tid: (unit, pdu) for tid, unit, pdu in await _mbap_answers(reader, len(requests))}
            assert sorted(answers) == list(range(1, len(requests) + 1))
            assert all(unit == 1 for unit, _ in answers.values())
            assert answers[1][1][:2] == b"\x03\x04"  # two registers
            assert answers[2][1] == b"\x02\x01\x00"  # three bits, all clear
            for tid, (_, want) in enumerate(_BAD_REQUESTS, 3):
                assert answers[tid][1] == want, (tid, answers[tid], want)
            writer.close()
        finally:
            await sim.stop()

    _run(main())


def _crc(frame: bytes) -> bytes:
    """The RTU CRC as pymodbus computes it (an implementation independent of the simulator's)."""
    return FramerRTU.compute_CRC(frame).to_bytes(2, "big")


def test_simulator_rtu_framing_answers_every_request_of_a_segment(tmp_path: Path) -> None:
    async def main() -> None:
        sim = await Sim(tmp_path, "--framer", "rtu", devices=2).start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
            frames = [
                bytes((unit,)) + pdu
                for unit, pdu in (
                    (1, _read_pdu(3, 0, 1)),
                    (2, _read_pdu(3, 0, 126)),
                    (1, _read_pdu(4, 0, 0)),
                    (2, _read_pdu(2, 0, 3)),
                )
            ]
            writer.write(b"".join(f + _crc(f) for f in frames))
            await writer.drain()
            got = []
            for _ in frames:
                head = await asyncio.wait_for(reader.readexactly(3), 5)
                n = 2 if head[1] & 0x80 else head[2] + 2
                rest = await asyncio.wait_for(reader.readexactly(n), 5)
                frame = head + rest
                assert _crc(frame[:-2]) == frame[-2:]
                got.append(frame[:-2])
            registers = [f for f in got if f.startswith(b"\x01\x03\x02")]
            assert len(registers) == 1 and len(registers[0]) == 5
            assert sorted(got) == sorted([registers[0], b"\x02\x83\x03", b"\x01\x84\x03", b"\x02\x02\x01\x00"])
            writer.close()
        finally:
            await sim.stop()

    _run(main())


def test_simulator_sequential_mode_answers_in_arrival_order(tmp_path: Path) -> None:
    """A slow unit delays the request behind it in sequential mode, and not otherwise."""

    async def main() -> None:
        sim = await Sim(tmp_path, devices=2).start()
        try:
            await sim.command("slow 1 0.5")
            for sequential in (False, True):
                await sim.command(f"sequential {int(sequential)}")
                reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
                t0 = time.monotonic()
                writer.write(_mbap(1, 1, _read_pdu(3, 0, 1)) + _mbap(2, 2, _read_pdu(3, 0, 1)))
                await writer.drain()
                order = []
                for _ in range(2):
                    ((tid, _, _),) = await _mbap_answers(reader, 1)
                    order.append((tid, time.monotonic() - t0))
                writer.close()
                if sequential:
                    assert [t for t, _ in order] == [1, 2] and order[1][1] >= 0.5, order
                else:
                    assert [t for t, _ in order] == [2, 1] and order[0][1] < 0.4, order
        finally:
            await sim.stop()

    _run(main())


def test_unit_255_over_tcp_and_serial_line_settings(tmp_path: Path) -> None:
    """Unit 255 (a single-unit TCP device's usual id) is polled over TCP; the serial client takes
    parity, stop bits and data bits (pyserial's socket:// URL ignores them, as a real port would not)."""

    async def main() -> None:
        sim = await Sim(tmp_path, devices=1).start()
        try:
            await sim.command("alias 255 1")
            inventory = load_inventory(sim.inventory)
            cab = next(d for d in inventory.devices if d.device_id == "cabinet-001")
            assert cab.modbus is not None
            single = cab.model_copy(
                update={"device_id": "single", "modbus": cab.modbus.model_copy(update={"unit": 255})}
            )
            serial = Device.model_validate(
                {
                    "device_id": "serial-1",
                    "site_id": cab.site_id,
                    "profile": cab.profile,
                    "modbus": {
                        "framer": "rtu",
                        "serial_port": f"socket://127.0.0.1:{sim.port}",
                        "unit": 1,
                        "baudrate": 19200,
                        "parity": "E",
                        "stopbits": 1,
                        "bytesize": 8,
                    },
                }
            )
            catalog = _catalog(Inventory(sites=inventory.sites, devices=[single]), poll=0.2)
            collector = Collector()
            source, task = await _source_task(catalog, collector)
            await collector.until(lambda: len(collector.latest("single")) > 5, 5, "readings of unit 255")
            await source.stop()
            assert task.done() and not collector.dead
        finally:
            await sim.stop()
        # the serial line settings reach the link (and one link has one setting)
        assert serial.modbus is not None
        other = serial.model_copy(
            update={"device_id": "serial-2", "modbus": serial.modbus.model_copy(update={"unit": 2, "parity": "N"})}
        )
        with pytest.raises(ConfigError, match="parity"):
            ModbusSource(
                catalog=_catalog(Inventory(sites=inventory.sites, devices=[serial, other])),
                commit=Collector().commit,
                health=Health(),
            )

    _run(main())
