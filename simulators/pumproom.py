"""Fire pump room simulator: a Modbus TCP server playing N fire pump control cabinets, with physics.

Unit ids: cabinets are units 1..N (profile ``fire-pump-cabinet``); the shared fire water tank is unit
240 (profile ``fire-water-tank-modbus``, documented 1-based: bind it with ``address_base: 1``) and the
fire control room panel summary is unit 241 (profile ``fire-panel-summary``). N is at most 239.

Physics (one task, tick 0.1 s by default): each cabinet's pipe network leaks slowly; the jockey pump
(稳压泵) starts below the jockey start setpoint and stops at the stop setpoint. A fire demand (L/s)
drops the pressure below the pressure-switch setpoint; the switch closes and the duty pump starts
automatically after the start delay, or the standby pump (after another delay) when the duty pump
fails to start. Nothing stops a main pump automatically (GB 50974 11.0.2): ``stop U`` or ``clear U``
does. The tank level falls with the total demand and refills through a valve. The panel counts fire
alarms (cabinets with a demand), faults and supervisory signals. Values are written with the
profiles' own register maps (``gateway.normalize.registers``), so the simulator cannot drift from them.

Control (``--control PORT``, one command per line on 127.0.0.1; each answer ends with a line
``ok ...`` or ``error: ...``)::

    fault U NAME        pump1-fails | pump2-fails | jockey-fault | manual | stop | main-power-lost |
                        backup-power-lost | phase-loss | phase-reversal | sensor-stuck |
                        tank-draining | dead | short | illegal
    clear U [NAME]      clear one fault, or all faults, demand and overrides of unit U (pumps stop)
    demand U LPS        fire demand on cabinet U in L/s (0 ends it; pumps keep running)
    stop U              an authorised person stops the main pumps of cabinet U
    inspect U           run the automatic inspection (巡检) of cabinet U now
    dead U | alive U    unit U stops answering (requests time out) | answers again
    slow U SECONDS      unit U answers after SECONDS (0: normal)
    short U 0|1         unit U answers reads with one register too few
    lack U TABLE A [B]  unit U lacks registers A..B of TABLE: a read touching them answers exception 02
    alias FROM TO       unit id FROM answers as unit TO (e.g. alias 255 1); alias FROM drops it
    sequential 0|1      answer strictly one request at a time, in arrival order (RS-485 converter)
    set U POINT VALUE   hold POINT at VALUE (true/false/number/none); unset U [POINT] releases it
    get U POINT         the value the simulator holds for POINT
    status [U]          one line per unit
    help

The server (``--framer socket``: Modbus TCP with MBAP headers; ``--framer rtu``: RTU frames with CRC
over TCP, as a transparent serial-to-Ethernet converter) answers every request of a TCP segment. Reads
(FC 1-4) with a quantity outside 1..125 registers or 1..2000 bits answer exception 03 (illegal data
value), past the unit's memory or into registers it lacks 02 (illegal data address), any other function
01. By default requests are answered concurrently, each after its unit's ``slow`` delay, like a native
Modbus TCP device. With ``--sequential`` (or ``sequential 1``) the server behaves like an RS-485
converter: one request at a time in arrival order, across all connections; each request and answer
takes its time on the serial line (10 bits per byte at ``--baud``), a slow unit delays every request
behind it, and a unit that does not answer holds the line for ``--busy-timeout`` seconds (the
converter's own response timeout).

Scenarios (``--scenario NAME``, or ``--scenario-file FILE`` with ``steps: [{at: SECONDS, do: COMMAND}]``):
normal, fire-demand, pump-fails-to-start, cabinet-manual, main-power-lost, phase-loss, tank-draining,
sensor-stuck, device-unreachable, slow-responses, weekly-inspection (each acts on cabinet 1 unless
said otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import signal
import struct
import sys
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.errors import ConfigError
from gateway.models import Value
from gateway.normalize.registers import RegisterPoint, compile_points, write_point
from gateway.profiles.loader import load_profile

CABINET_PROFILE = "fire-pump-cabinet"
TANK_PROFILE = "fire-water-tank-modbus"
PANEL_PROFILE = "fire-panel-summary"
TANK_UNIT = 240
PANEL_UNIT = 241
TANK_ADDRESS_BASE = 1
MAX_CABINETS = 239

MANUAL, AUTO, STOP = 0, 1, 2

# Pipe network and pumps (site values would come from commissioning records; these are plausible).
JOCKEY_START_MPA = 0.50
JOCKEY_STOP_MPA = 0.60
PUMP_START_MPA = 0.40
LEAK_MPA_S = 0.004  # slow leak of the pipe network
DEMAND_MPA_S_PER_LPS = 0.003  # pressure loss per L/s of fire demand when no main pump runs
JOCKEY_GAIN_MPA_S = 0.03
PUMP_HEAD_MPA = 0.85
PUMP_RATE_PER_S = 0.8
TANK_AREA_M2 = 50.0
TANK_REFILL_LPS = 15.0
TANK_DRAIN_LPS = 40.0
INSPECTION_S = 3.0

_CABINET_FAULTS = frozenset(
    {
        "pump1-fails",
        "pump2-fails",
        "jockey-fault",
        "manual",
        "stop",
        "main-power-lost",
        "backup-power-lost",
        "phase-loss",
        "phase-reversal",
        "sensor-stuck",
    }
)
_COMM_FAULTS = frozenset({"dead", "short", "illegal"})
_TANK_FAULTS = frozenset({"tank-draining", "sensor-stuck"})
_PANEL_FAULTS = frozenset({"main-power-lost", "backup-power-lost"})

SCENARIOS: dict[str, list[tuple[float, str]]] = {
    "normal": [],
    "fire-demand": [(1.0, "demand 1 30")],
    # both main pumps fail: the demand closes the pressure switch and no pump runs (GB 50974 11.0.3)
    "pump-fails-to-start": [(0.0, "fault 1 pump1-fails"), (0.0, "fault 1 pump2-fails"), (1.0, "demand 1 30")],
    "standby-takes-over": [(0.0, "fault 1 pump1-fails"), (1.0, "demand 1 30")],
    "cabinet-manual": [(0.0, "fault 1 manual"), (1.0, "demand 1 30")],
    "main-power-lost": [(1.0, "fault 1 main-power-lost")],
    "phase-loss": [(1.0, "fault 1 phase-loss"), (2.0, "demand 1 30")],
    "tank-draining": [(1.0, f"fault {TANK_UNIT} tank-draining")],
    "sensor-stuck": [(1.0, "fault 1 sensor-stuck"), (2.0, "demand 1 30")],
    "device-unreachable": [(1.0, "dead 2")],
    "slow-responses": [(1.0, "slow 3 1.5")],
    "weekly-inspection": [(1.0, "inspect 1")],
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=5020, help="Modbus TCP port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--devices", type=int, default=1, help=f"number of cabinets, units 1..N (max {MAX_CABINETS})")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="normal")
    parser.add_argument("--scenario-file", type=Path, help="YAML file: steps: [{at: SECONDS, do: COMMAND}]")
    parser.add_argument("--control", type=int, help="line-based control socket port on 127.0.0.1 (0: any)")
    parser.add_argument("--tick", type=float, default=0.1, help="physics tick in seconds")
    parser.add_argument("--seed", type=int, default=1, help="random seed for measurement noise")
    parser.add_argument(
        "--pump-start-delay", type=float, default=2.0, help="seconds from start signal to a main pump running"
    )
    parser.add_argument(
        "--framer",
        choices=["socket", "rtu"],
        default="socket",
        help="socket: Modbus TCP; rtu: RTU frames over TCP (a serial-to-Ethernet converter)",
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="answer one request at a time in arrival order, like an RS-485-to-Ethernet converter",
    )
    parser.add_argument(
        "--busy-timeout",
        type=float,
        default=1.0,
        help="sequential: seconds a unit that does not answer holds the line (the converter's timeout)",
    )
    parser.add_argument(
        "--baud", type=int, default=9600, help="sequential: speed of the simulated serial line (bits/s)"
    )
    parser.add_argument(
        "--write-inventory",
        type=Path,
        help="write an inventory YAML for these devices (sequential: false on tcp unless --sequential)",
    )
    parser.add_argument("--profiles-dir", type=Path, default=Path("device_profiles"))


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.devices <= MAX_CABINETS:
        print(f"pumproom: --devices must be 1..{MAX_CABINETS}", file=sys.stderr)
        return 2
    if args.tick <= 0:
        print("pumproom: --tick must be positive", file=sys.stderr)
        return 2
    if not 0 <= args.busy_timeout <= 60:
        print("pumproom: --busy-timeout must be 0..60 seconds", file=sys.stderr)
        return 2
    if not 300 <= args.baud <= 4_000_000:
        print("pumproom: --baud must be 300..4000000", file=sys.stderr)
        return 2
    try:
        sim = PumpRoom(
            profiles_dir=args.profiles_dir,
            cabinets=args.devices,
            seed=args.seed,
            tick=args.tick,
            start_delay=args.pump_start_delay,
        )
        sim.sequential = bool(args.sequential)
        steps = list(SCENARIOS[args.scenario])
        if args.scenario_file is not None:
            steps += _load_scenario_file(args.scenario_file)
    except (ConfigError, OSError, ValueError) as exc:
        print(f"pumproom: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(sim, args, steps))
    except KeyboardInterrupt:
        pass
    return 0


def _load_scenario_file(path: Path) -> list[tuple[float, str]]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    steps = data.get("steps") if isinstance(data, dict) else data
    if not isinstance(steps, list):
        raise ValueError(f"{path}: expected steps: [{{at: SECONDS, do: COMMAND}}]")
    out = []
    for i, step in enumerate(steps):
        if not isinstance(step, dict) or "do" not in step:
            raise ValueError(f"{path}: steps[{i}]: expected {{at: SECONDS, do: COMMAND}}")
        out.append((float(step.get("at", 0.0)), str(step["do"])))
    return out


# ---------------------------------------------------------------------------- units


@dataclass(eq=False)
class _Unit:
    """One Modbus unit id: its register memory and how it answers."""

    unit: int
    kind: str
    points: dict[str, RegisterPoint]
    memory: dict[str, list[int]]
    overrides: dict[str, Value | None] = field(default_factory=dict)
    written: dict[str, Value | None] = field(default_factory=dict)
    held: dict[str, Value | None] = field(default_factory=dict)  # the last value physics asked for
    faults: set[str] = field(default_factory=set)
    slow: float = 0.0
    lacks: dict[str, set[int]] = field(default_factory=dict)  # table -> protocol addresses it lacks

    def put(self, name: str, value: Value | None) -> None:
        self.held[name] = value
        rp = self.points.get(name)
        if rp is None:
            return
        if name in self.overrides:
            value = self.overrides[name]
        if name in self.written and self.written[name] == value:
            return
        write_point(rp, value, self.memory[rp.table])
        self.written[name] = value

    def value_of(self, name: str) -> Value | None:
        return self.overrides[name] if name in self.overrides else self.held.get(name)


def _make_unit(unit: int, kind: str, points: tuple[RegisterPoint, ...]) -> _Unit:
    sizes = {t: 0 for t in ("holding", "input", "coil", "discrete")}
    for rp in points:
        sizes[rp.table] = max(sizes[rp.table], rp.end)
    return _Unit(unit, kind, {rp.name: rp for rp in points}, {t: [0] * n for t, n in sizes.items()})


@dataclass(eq=False)
class _Cabinet:
    unit: _Unit
    pressure: float = 0.58
    demand: float = 0.0
    modes: list[int] = field(default_factory=lambda: [AUTO, AUTO, AUTO])
    run: list[bool] = field(default_factory=lambda: [False, False, False])
    start_failure: list[bool] = field(default_factory=lambda: [False, False])
    duty: int = 0
    signal_at: float | None = None  # when the current start signal came
    attempt: int | None = None  # which main pump the cabinet is trying to start
    attempt_at: float = 0.0
    tried: set[int] = field(default_factory=set)
    start_source: int = 0
    last_start_time: float | None = None
    jockey_starts: int = 0
    inspection_runs: int = 0
    inspection_until: float | None = None
    run_time: list[float] = field(default_factory=lambda: [0.0, 0.0])
    stuck_pressure: float | None = None
    currents: list[float] = field(default_factory=lambda: [0.0] * 7)
    voltages: list[float] = field(default_factory=lambda: [380.0, 380.0, 380.0])


class PumpRoom:
    """The simulated pump room: units, physics and the control commands (no sockets here)."""

    def __init__(
        self, *, profiles_dir: Path, cabinets: int, seed: int = 1, tick: float = 0.1, start_delay: float = 2.0
    ) -> None:
        self.tick = tick
        self.start_delay = start_delay
        self.time = 0.0
        self._rng = random.Random(seed)
        self.units: dict[int, _Unit] = {}
        cab = compile_points(load_profile(profiles_dir / f"{CABINET_PROFILE}.yaml"))
        tank = compile_points(load_profile(profiles_dir / f"{TANK_PROFILE}.yaml"), address_base=TANK_ADDRESS_BASE)
        panel = compile_points(load_profile(profiles_dir / f"{PANEL_PROFILE}.yaml"))
        self.cabinets: list[_Cabinet] = []
        for i in range(1, cabinets + 1):
            self.units[i] = _make_unit(i, "cabinet", cab)
            self.cabinets.append(_Cabinet(self.units[i]))
        self.tank = self.units[TANK_UNIT] = _make_unit(TANK_UNIT, "tank", tank)
        self.panel = self.units[PANEL_UNIT] = _make_unit(PANEL_UNIT, "panel", panel)
        self.aliases: dict[int, int] = {}
        self.sequential = False
        self.level = 4.0
        self.refilling = False
        self.events_total = 0
        self._panel_counts: tuple[int, int, int, int] = (0, 0, 0, 0)
        self._ticks_per_noise = max(1, round(1.0 / tick))
        self._n = 0
        self.step(0.0)

    # ------------------------------------------------------------------ physics

    def step(self, dt: float) -> None:
        """Advance the physics by ``dt`` seconds and write every unit's registers."""
        self.time += dt
        self._n += 1
        total_demand = 0.0
        for cab in self.cabinets:
            self._step_cabinet(cab, dt, noise=(self._n + cab.unit.unit) % self._ticks_per_noise == 0)
            total_demand += cab.demand
        self._step_tank(dt, total_demand)
        self._step_panel()

    def _step_cabinet(self, c: _Cabinet, dt: float, *, noise: bool) -> None:
        u, f, t = c.unit, c.unit.faults, self.time
        main_power = "main-power-lost" not in f and "power-lost" not in f
        backup_power = "backup-power-lost" not in f and "power-lost" not in f
        phase_loss = "phase-loss" in f
        supply_ok = (main_power or backup_power) and not phase_loss and "phase-reversal" not in f
        mains_running = c.run[0] or c.run[1]
        # pressure
        change = -LEAK_MPA_S - DEMAND_MPA_S_PER_LPS * c.demand
        if c.run[2]:
            change += JOCKEY_GAIN_MPA_S
        if mains_running:
            change += PUMP_RATE_PER_S * (PUMP_HEAD_MPA - c.pressure) + DEMAND_MPA_S_PER_LPS * c.demand
        c.pressure = min(1.2, max(0.0, c.pressure + change * dt))
        # jockey pump: holds pressure between its start and stop setpoints
        jockey_ok = supply_ok and "jockey-fault" not in f
        if c.modes[2] == AUTO and jockey_ok:
            if not c.run[2] and c.pressure < JOCKEY_START_MPA:
                c.run[2] = True
                c.jockey_starts += 1
            elif c.run[2] and c.pressure >= JOCKEY_STOP_MPA:
                c.run[2] = False
        elif not jockey_ok or c.modes[2] == STOP or c.modes[2] == MANUAL:
            c.run[2] = False
        # start signal and automatic start of a main pump (duty, then standby)
        switch = c.pressure < PUMP_START_MPA
        if switch and not mains_running and c.signal_at is None:
            c.signal_at, c.start_source = t, 1
            c.attempt, c.attempt_at, c.tried = c.duty, t, {c.duty}
            c.inspection_until = None  # a real start signal aborts the inspection at once (T9)
        if c.signal_at is not None and not mains_running and c.attempt is not None:
            p = c.attempt
            if c.modes[p] == AUTO and t - c.attempt_at >= self.start_delay:
                fails = f"pump{p + 1}-fails" in f
                if supply_ok and not fails:
                    c.run[p] = True
                    c.last_start_time = t - c.signal_at
                else:
                    c.start_failure[p] = True
                    other = 1 - p
                    if other not in c.tried:
                        c.tried.add(other)
                        c.attempt, c.attempt_at = other, t
                    else:
                        c.attempt = None
            elif c.modes[p] != AUTO:
                other = 1 - p
                if other not in c.tried and c.modes[other] == AUTO:
                    c.tried.add(other)
                    c.attempt, c.attempt_at = other, t
        for p in (0, 1):
            if c.run[p]:
                c.run_time[p] += dt
        # inspection
        inspecting = c.inspection_until is not None
        if c.inspection_until is not None and t >= c.inspection_until:
            c.inspection_until = None
            c.inspection_runs += 1
            inspecting = False
        # electrical measurements
        if noise:
            r = self._rng
            for p in (0, 1):
                base = 62.0 if c.run[p] else (18.0 if inspecting and p == 0 else 0.0)
                for k in range(3):
                    c.currents[p * 3 + k] = 0.0 if base == 0 or (phase_loss and k == 2) else base + r.uniform(-1, 1)
            c.currents[6] = 7.5 + r.uniform(-0.3, 0.3) if c.run[2] else 0.0
            volts = 0.0 if not (main_power or backup_power) else 380.0
            c.voltages = [volts + r.uniform(-2, 2) if volts else 0.0 for _ in range(3)]
            if phase_loss:
                c.voltages[1] = c.voltages[2] = 0.0
        # registers
        put = u.put
        put("pump1_run", c.run[0])
        put("pump1_fault", "pump1-fails" in f)
        put("pump1_start_failure", c.start_failure[0])
        put("pump2_run", c.run[1])
        put("pump2_fault", "pump2-fails" in f)
        put("pump2_start_failure", c.start_failure[1])
        put("jockey_run", c.run[2])
        put("jockey_fault", "jockey-fault" in f)
        put("main_power", main_power)
        put("backup_power", backup_power)
        put("phase_loss", phase_loss)
        put("phase_reversal", "phase-reversal" in f)
        put("inspection_running", inspecting)
        put("inspection_fault", False)
        put("pump1_mode", c.modes[0])
        put("pump2_mode", c.modes[1])
        put("jockey_mode", c.modes[2])
        put("duty_pump", c.duty + 1)
        put("start_source", c.start_source)
        put("jockey_start_setpoint", JOCKEY_START_MPA)
        put("jockey_stop_setpoint", JOCKEY_STOP_MPA)
        put("pump_start_setpoint", PUMP_START_MPA)
        put("start_delay", self.start_delay)
        put("pressure_switch", switch)
        put("flow_switch", c.demand > 0)
        put("emergency_start", False)
        if "sensor-stuck" in f:
            if c.stuck_pressure is None:
                c.stuck_pressure = c.pressure
        else:
            c.stuck_pressure = None
        shown = c.stuck_pressure if c.stuck_pressure is not None else c.pressure
        put("outlet_pressure", round(shown, 3))
        put("suction_pressure", round(0.05 + self.level * 0.0098, 3))
        for k, name in enumerate(
            (
                "pump1_current_l1",
                "pump1_current_l2",
                "pump1_current_l3",
                "pump2_current_l1",
                "pump2_current_l2",
                "pump2_current_l3",
                "jockey_current",
            )
        ):
            put(name, round(c.currents[k], 1))
        put("voltage_l1_l2", c.voltages[0])
        put("voltage_l2_l3", c.voltages[1])
        put("voltage_l3_l1", c.voltages[2])
        put("inspection_runs", c.inspection_runs)
        put("jockey_starts", c.jockey_starts)
        put("last_start_time", None if c.last_start_time is None else round(c.last_start_time, 3))
        put("pump1_run_time", int(c.run_time[0]))
        put("pump2_run_time", int(c.run_time[1]))

    def _step_tank(self, dt: float, demand_lps: float) -> None:
        f = self.tank.faults
        draining = "tank-draining" in f
        if self.level < 3.6 and not draining:
            self.refilling = True
        if self.level >= 4.0 or draining:
            self.refilling = False
        flow = -demand_lps - (TANK_DRAIN_LPS if draining else 0.0) + (TANK_REFILL_LPS if self.refilling else 0.0)
        self.level = min(5.0, max(0.0, self.level + flow / 1000.0 * dt / TANK_AREA_M2))
        put = self.tank.put
        if "sensor-stuck" not in f:
            put("level", round(self.level, 3))
        put("water_temperature", 12.0)
        put("low_level_setpoint", 2.0)
        put("high_level_setpoint", 4.8)
        put("refill_valve_open", self.refilling)
        put("low_level_alarm", self.level < 2.0)
        put("high_level_alarm", self.level > 4.8)
        put("sensor_fault", False)

    def _step_panel(self) -> None:
        cabs = self.cabinets
        fire = sum(1 for c in cabs if c.demand > 0)
        faults = sum(1 for c in cabs if c.unit.faults & (_CABINET_FAULTS - {"manual", "stop"}) or any(c.start_failure))
        superv = sum(1 for c in cabs if any(m != AUTO for m in c.modes)) + (1 if self.level < 2.0 else 0)
        feedback = sum(1 for c in cabs if c.run[0] or c.run[1])
        counts = (fire, faults, superv, feedback)
        if counts != self._panel_counts:
            self.events_total += 1
            self._panel_counts = counts
        f = self.panel.faults
        put = self.panel.put
        put("fire_alarm_count", fire)
        put("fault_count", faults)
        put("supervisory_count", superv)
        put("feedback_count", feedback)
        put("linkage_mode", AUTO)
        put("events_total", self.events_total)
        put("battery_voltage", 26.8 if "backup-power-lost" not in f else 0.0)
        put("main_power", "main-power-lost" not in f)
        put("backup_power", "backup-power-lost" not in f)
        put("fire_alarm_active", fire > 0)
        put("silenced", False)

    # ------------------------------------------------------------------ control

    def command(self, line: str) -> list[str]:
        """Run one control command; return the answer lines (the last is ``ok ...`` or ``error: ...``)."""
        words = line.split()
        if not words:
            return ["error: empty command"]
        try:
            return self._command(words[0].lower(), words[1:])
        except (ValueError, KeyError, IndexError) as exc:
            return [f"error: {exc}"]

    def _unit(self, word: str) -> _Unit:
        unit = self.units.get(int(word))
        if unit is None:
            raise ValueError(f"no unit {word} (cabinets 1..{len(self.cabinets)}, tank {TANK_UNIT}, panel {PANEL_UNIT})")
        return unit

    def _cabinet(self, word: str) -> _Cabinet:
        unit = self._unit(word)
        if unit.kind != "cabinet":
            raise ValueError(f"unit {word} is the {unit.kind}, not a cabinet")
        return self.cabinets[unit.unit - 1]

    def _command(self, cmd: str, a: list[str]) -> list[str]:
        if cmd == "help":
            return [line for line in (__doc__ or "").splitlines() if line.startswith("    ")] + ["ok"]
        if cmd == "status":
            units = [self._unit(a[0])] if a else list(self.units.values())
            return [self._status(u) for u in units] + ["ok"]
        if cmd == "fault":
            self._fault(self._unit(a[0]), a[1].lower())
        elif cmd == "clear":
            self._clear(self._unit(a[0]), a[1].lower() if len(a) > 1 else None)
        elif cmd == "demand":
            lps = float(a[1])
            if lps < 0 or not math.isfinite(lps):
                raise ValueError("demand must be ≥ 0 L/s")
            self._cabinet(a[0]).demand = lps
        elif cmd == "stop":
            c = self._cabinet(a[0])
            c.run[0] = c.run[1] = False
            c.signal_at = c.attempt = None
        elif cmd == "inspect":
            c = self._cabinet(a[0])
            if c.signal_at is None:
                c.inspection_until = self.time + INSPECTION_S
        elif cmd == "dead":
            self._unit(a[0]).faults.add("dead")
        elif cmd == "alive":
            self._unit(a[0]).faults.discard("dead")
        elif cmd == "slow":
            seconds = float(a[1])
            if seconds < 0 or seconds > 60:
                raise ValueError("slow takes 0..60 seconds")
            self._unit(a[0]).slow = seconds
        elif cmd == "short":
            unit = self._unit(a[0])
            if a[1] not in ("0", "1"):
                raise ValueError("short takes 0 or 1")
            (unit.faults.add if a[1] == "1" else unit.faults.discard)("short")
        elif cmd == "lack":
            unit = self._unit(a[0])
            table = a[1].lower()
            if table not in unit.memory:
                raise ValueError("lack takes a table: holding, input, coil or discrete")
            first = int(a[2])
            last = int(a[3]) if len(a) > 3 else first
            if not 0 <= first <= last <= 65535:
                raise ValueError("lack takes addresses 0 <= A <= B <= 65535")
            unit.lacks.setdefault(table, set()).update(range(first, last + 1))
        elif cmd == "alias":
            source = int(a[0])
            if not 0 <= source <= 255:
                raise ValueError("a unit id is 0..255")
            if len(a) > 1:
                self.aliases[source] = self._unit(a[1]).unit
            else:
                self.aliases.pop(source, None)
        elif cmd == "sequential":
            if a[0] not in ("0", "1"):
                raise ValueError("sequential takes 0 or 1")
            self.sequential = a[0] == "1"
        elif cmd == "set":
            unit = self._unit(a[0])
            if a[1] not in unit.points:
                raise ValueError(f"unit {unit.unit} has no point {a[1]!r}")
            unit.overrides[a[1]] = _parse_value(a[2])
            unit.put(a[1], unit.held.get(a[1]))
        elif cmd == "unset":
            unit = self._unit(a[0])
            names = [a[1]] if len(a) > 1 else list(unit.overrides)
            for name in names:
                unit.overrides.pop(name, None)
                unit.written.pop(name, None)
                unit.put(name, unit.held.get(name))
        elif cmd == "get":
            unit = self._unit(a[0])
            if a[1] not in unit.points:
                raise ValueError(f"unit {unit.unit} has no point {a[1]!r}")
            return [f"ok {unit.value_of(a[1])}"]
        else:
            raise ValueError(f"unknown command {cmd!r} (try help)")
        return ["ok"]

    def _fault(self, unit: _Unit, name: str) -> None:
        allowed = _COMM_FAULTS | {"cabinet": _CABINET_FAULTS, "tank": _TANK_FAULTS, "panel": _PANEL_FAULTS}[unit.kind]
        if name not in allowed:
            raise ValueError(f"unknown fault {name!r} for the {unit.kind}; one of {', '.join(sorted(allowed))}")
        unit.faults.add(name)
        if unit.kind == "cabinet":
            c = self.cabinets[unit.unit - 1]
            if name == "manual":
                c.modes = [MANUAL, MANUAL, c.modes[2]]
            elif name == "stop":
                c.modes = [STOP, STOP, c.modes[2]]
                c.run[0] = c.run[1] = False

    def _clear(self, unit: _Unit, name: str | None) -> None:
        if name is not None:
            unit.faults.discard(name)
            if unit.kind == "cabinet" and name in ("manual", "stop"):
                self.cabinets[unit.unit - 1].modes = [AUTO, AUTO, AUTO]
            return
        unit.faults.clear()
        unit.slow = 0.0
        unit.lacks.clear()
        unit.overrides.clear()
        unit.written.clear()
        for name_, value in list(unit.held.items()):
            unit.put(name_, value)
        if unit.kind == "cabinet":
            c = self.cabinets[unit.unit - 1]
            c.modes = [AUTO, AUTO, AUTO]
            c.demand = 0.0
            c.run[0] = c.run[1] = False
            c.start_failure = [False, False]
            c.signal_at = c.attempt = None
            c.start_source = 0

    def _status(self, u: _Unit) -> str:
        faults = ",".join(sorted(u.faults)) or "-"
        comm = f" slow={u.slow:g}s" if u.slow else ""
        if u.lacks:
            comm += " lacks=" + ",".join(f"{t}:{len(a)}" for t, a in sorted(u.lacks.items()) if a)
        if u.kind == "cabinet":
            c = self.cabinets[u.unit - 1]
            modes = ",".join(("manual", "auto", "stop")[m] for m in c.modes)
            pumps = ",".join(f"{n}:{'on' if r else 'off'}" for n, r in zip(("1", "2", "j"), c.run, strict=True))
            return (
                f"unit {u.unit} cabinet pressure={c.pressure:.3f}MPa demand={c.demand:g}L/s pumps={pumps} "
                f"modes={modes} faults={faults}{comm}"
            )
        if u.kind == "tank":
            return f"unit {u.unit} tank level={self.level:.3f}m refilling={self.refilling} faults={faults}{comm}"
        return f"unit {u.unit} panel fire={self._panel_counts[0]} faults={faults}{comm}"

    # ------------------------------------------------------------------ requests

    def unit_for(self, unit_id: int) -> _Unit | None:
        """The unit that answers requests to ``unit_id`` (aliases applied), or None."""
        return self.units.get(self.aliases.get(unit_id, unit_id))

    def answer(self, unit_id: int, pdu: bytes) -> bytes | None:
        """The response PDU (function code first) to one request PDU, or None when nobody answers.

        Checks in the order of the Modbus application protocol: function (01), quantity (03), address
        (02). Only the reads FC 1-4 are served.
        """
        unit = self.unit_for(unit_id)
        if unit is None or "dead" in unit.faults or not pdu:
            return None
        fc = pdu[0]
        table = _READ_TABLES.get(fc)
        if table is None or ("illegal" in unit.faults and fc != 3):
            return _exception(fc, ILLEGAL_FUNCTION)
        if len(pdu) != 5:
            return _exception(fc, ILLEGAL_DATA_VALUE)
        address, count = struct.unpack(">HH", pdu[1:5])
        bits = table in ("coil", "discrete")
        if not 1 <= count <= (MAX_READ_BITS if bits else MAX_READ_REGISTERS):
            return _exception(fc, ILLEGAL_DATA_VALUE)
        mem = unit.memory[table]
        lacks = unit.lacks.get(table)
        if (
            address + count > len(mem)
            or "illegal" in unit.faults
            or (lacks and not lacks.isdisjoint(range(address, address + count)))
        ):
            return _exception(fc, ILLEGAL_DATA_ADDRESS)
        values = mem[address : address + count]
        if "short" in unit.faults:
            values = values[:-8] if bits else values[:-1]
        data = _pack_bits(values) if bits else b"".join((v & 0xFFFF).to_bytes(2, "big") for v in values)
        return bytes((fc, len(data))) + data


_READ_TABLES = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}
ILLEGAL_FUNCTION, ILLEGAL_DATA_ADDRESS, ILLEGAL_DATA_VALUE = 1, 2, 3
MAX_READ_REGISTERS, MAX_READ_BITS = 125, 2000


def _exception(fc: int, code: int) -> bytes:
    return bytes(((fc | 0x80) & 0xFF, code))


def _pack_bits(values: list[int]) -> bytes:
    out = bytearray((len(values) + 7) // 8)
    for i, v in enumerate(values):
        if v:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def _parse_value(text: str) -> Value | None:
    low = text.lower()
    if low in ("true", "on"):
        return True
    if low in ("false", "off"):
        return False
    if low in ("none", "null", "nan"):
        return None
    try:
        return int(text)
    except ValueError:
        return float(text)


# ---------------------------------------------------------------------------- server

_MBAP = struct.Struct(">HHHB")
#: Requests waiting for the line in sequential mode (a full line holds the readers: back-pressure).
_LINE_QUEUE_MAX = 256
#: Requests of one connection being answered at once in concurrent mode.
_IN_FLIGHT_MAX = 64
#: Unframed bytes kept per connection before it is dropped as garbage.
_BUFFER_MAX = 4096


def crc16(data: bytes) -> bytes:
    """The Modbus RTU CRC of ``data``, as it goes on the wire (low byte first)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


@dataclass(frozen=True, slots=True)
class _Request:
    tid: int  # MBAP transaction id (0 for RTU)
    unit: int
    pdu: bytes


def split_frames(buf: bytes, *, rtu: bool) -> tuple[list[_Request], bytes, bool]:
    """Cut every complete request out of ``buf``: (requests, the rest, whether the stream is garbage)."""
    out: list[_Request] = []
    pos = 0
    while True:
        rest = len(buf) - pos
        if rtu:
            if rest < 4:
                break
            fc = buf[pos + 1]
            if fc in (1, 2, 3, 4, 5, 6):
                n = 8
            elif fc in (15, 16):
                if rest < 7:
                    break
                n = 9 + buf[pos + 6]
            else:
                n = rest  # unknown function: what arrived together is the frame (a gap ends RTU frames)
            if rest < n:
                break
            frame = buf[pos : pos + n]
            pos += n
            if crc16(frame[:-2]) != frame[-2:]:
                return out, b"", False  # line noise: a device stays silent and resynchronises
            out.append(_Request(0, frame[0], frame[1:-2]))
        else:
            if rest < 7:
                break
            tid, pid, length, unit = _MBAP.unpack_from(buf, pos)
            if not 2 <= length <= 254:
                return out, b"", True
            if rest < 6 + length:
                break
            pdu = buf[pos + 7 : pos + 6 + length]
            pos += 6 + length
            if pid == 0:  # another protocol id is not Modbus: ignored
                out.append(_Request(tid, unit, pdu))
    return out, buf[pos:], False


class ModbusServer:
    """The Modbus side of the simulator on asyncio streams: MBAP (tcp) or RTU+CRC framing."""

    def __init__(self, sim: PumpRoom, *, rtu: bool, busy_timeout: float = 1.0, baud: int = 9600) -> None:
        self.sim = sim
        self.rtu = rtu
        self.busy_timeout = busy_timeout
        self.byte_s = 10 / baud  # start, 8 data and stop bit
        self._line: asyncio.Queue[tuple[asyncio.StreamWriter, _Request]] = asyncio.Queue(_LINE_QUEUE_MAX)
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self, port: int) -> int:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", port)
        self._spawn(self._line_worker())
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)  # so close() ends the connection
        in_flight = asyncio.Semaphore(_IN_FLIGHT_MAX)
        buf = b""
        try:
            while data := await reader.read(4096):
                requests, buf, garbage = split_frames(buf + data, rtu=self.rtu)
                for req in requests:
                    if self.sim.sequential:
                        await self._line.put((writer, req))
                    else:
                        await in_flight.acquire()
                        self._spawn(self._concurrent(writer, req, in_flight))
                if garbage or len(buf) > _BUFFER_MAX:
                    break
        except ConnectionError:
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    async def _concurrent(self, writer: asyncio.StreamWriter, req: _Request, done: asyncio.Semaphore) -> None:
        try:
            await self._respond(writer, req, sequential=False)
        finally:
            done.release()

    async def _line_worker(self) -> None:
        while True:
            writer, req = await self._line.get()
            await self._respond(writer, req, sequential=True)

    async def _respond(self, writer: asyncio.StreamWriter, req: _Request, *, sequential: bool) -> None:
        sim = self.sim
        unit = sim.unit_for(req.unit)
        if sequential:  # the request goes down the serial line (unit, PDU, CRC)
            await asyncio.sleep((len(req.pdu) + 3) * self.byte_s)
        if unit is not None and unit.slow and "dead" not in unit.faults:
            await asyncio.sleep(unit.slow)
        if self.rtu and req.unit == 0:
            return  # an RTU broadcast is never answered
        answer = sim.answer(req.unit, req.pdu)
        if answer is None:
            if sequential:
                await asyncio.sleep(self.busy_timeout)  # the converter waits for the unit, then gives up
            return
        if sequential:  # and the answer comes back up
            await asyncio.sleep((len(answer) + 3) * self.byte_s)
        if writer.is_closing():
            return
        if self.rtu:
            frame = bytes((req.unit,)) + answer
            writer.write(frame + crc16(frame))
        else:
            writer.write(_MBAP.pack(req.tid, 0, len(answer) + 1, req.unit) + answer)


async def _physics(sim: PumpRoom) -> None:
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while True:
        next_at += sim.tick
        delay = next_at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -10 * sim.tick:  # far behind (CPU starved): drop the backlog, keep real time
            next_at = loop.time()
        sim.step(sim.tick)


async def _scenario(sim: PumpRoom, steps: list[tuple[float, str]]) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for at, cmd in sorted(steps, key=lambda s: s[0]):
        delay = t0 + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        answer = sim.command(cmd)
        print(f"pumproom: scenario t={at:g}s {cmd}: {answer[-1]}", file=sys.stderr, flush=True)


async def _control_client(sim: PumpRoom, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            text = line.decode("utf-8", "replace").strip()
            if not text:
                continue
            writer.write(("\n".join(sim.command(text)) + "\n").encode())
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def _inventory(sim: PumpRoom, port: int, framer: str) -> dict[str, Any]:
    binding_framer = "tcp" if framer == "socket" else "rtu_over_tcp"
    # the server answers concurrently unless --sequential: say so, as an operator would for such a device
    link = {"sequential": False} if framer == "socket" and not sim.sequential else {}

    def bind(unit: int, **extra: Any) -> dict[str, Any]:
        return {"framer": binding_framer, "host": "127.0.0.1", "port": port, "unit": unit, **link, **extra}

    devices: list[dict[str, Any]] = [
        {
            "device_id": f"cabinet-{c.unit.unit:03d}",
            "site_id": "pumproom",
            "profile": CABINET_PROFILE,
            "location": {"building": "pump room", "room": f"cabinet {c.unit.unit}"},
            "modbus": bind(c.unit.unit),
        }
        for c in sim.cabinets
    ]
    devices.append(
        {
            "device_id": "tank-1",
            "site_id": "pumproom",
            "profile": TANK_PROFILE,
            "modbus": bind(TANK_UNIT, address_base=TANK_ADDRESS_BASE),
        }
    )
    devices.append(
        {"device_id": "panel-1", "site_id": "pumproom", "profile": PANEL_PROFILE, "modbus": bind(PANEL_UNIT)}
    )
    return {
        "sites": [
            {
                "site_id": "pumproom",
                "name": "模拟消防水泵房 Simulated fire pump room",
                "town": "sim-town",
                "grid_cell": "sim-grid-1",
                "domain": "industrial",
                "station": {"station_id": "mfs-sim", "name": "模拟微型消防站 Simulated micro fire station"},
            }
        ],
        "devices": devices,
    }


async def _serve(sim: PumpRoom, args: argparse.Namespace, steps: list[tuple[float, str]]) -> None:
    server = ModbusServer(sim, rtu=args.framer == "rtu", busy_timeout=args.busy_timeout, baud=args.baud)
    port = await server.start(args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    control: asyncio.Server | None = None
    ready = (
        f"pumproom: listening on 127.0.0.1:{port} with {len(sim.cabinets)} cabinets "
        f"(units 1..{len(sim.cabinets)}, tank {TANK_UNIT}, panel {PANEL_UNIT}, framer {args.framer}"
        f"{', sequential' if sim.sequential else ''})"
    )
    if args.control is not None:
        control = await asyncio.start_server(lambda r, w: _control_client(sim, r, w), "127.0.0.1", args.control)
        ready += f"; control on 127.0.0.1:{control.sockets[0].getsockname()[1]}"
    if args.write_inventory is not None:
        text = yaml.safe_dump(_inventory(sim, port, args.framer), allow_unicode=True, sort_keys=False)
        args.write_inventory.write_text(text, encoding="utf-8")
    print(ready, flush=True)
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(_physics(sim)), tg.create_task(_scenario(sim, steps))]
            await stop.wait()
            for task in tasks:
                task.cancel()
    finally:
        if control is not None:
            control.close()
        await server.close()
