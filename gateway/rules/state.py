"""Snapshot and restore of all rule state, as JSON-able data (the gateway persists it across restarts).

The format is version :data:`SNAPSHOT_VERSION`; :func:`restore` refuses any other, and a snapshot
written by an engine of this version restores into one built from the same catalog. State of devices
or rules no longer in the catalog is dropped. Timers are re-armed from their saved due times. Version 1
is a dict of:

==================  ====================================================================================
``version``         1
``started``         whether the engine had started its clocks (its first call)
``points``          ``"device|metric"`` -> [device ts_ms, received_at_ms, value] of the last reading
``evals``           an evaluator's key (``device|rule id``) -> its own state (``Evaluator.dump``)
``devices``         device id -> [last_rx, silent, unreachable, link_down, offline_on, no-data due]
``pumps``           site id -> [trigger since, due, active, sorted running "device/point"]
``links_down``      sorted link names; ``sources_down``: sorted source names; ``source_up_at``: name -> ms
``false_alarms``    device id -> [site id, [false alarm times], active]
``modes``           [{"type": "test" | "shield", **TestMode/Shield fields}]
``active``          [[site, device, rule, metric, how]] standing conditions (how: "" | "test" | "shield")
``counters``        the engine's counters
==================  ====================================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.rules.context import PointState, RuleContext, Timed
from gateway.rules.correlations import SiteCorrelations
from gateway.rules.emit import Emitter
from gateway.rules.modes import Modes
from gateway.rules.reachability import Reachability, TrackedDevice
from gateway.rules.spec import Shield, TestMode

__all__ = ["SNAPSHOT_VERSION", "EngineParts", "restore", "snapshot"]

SNAPSHOT_VERSION = 1


@dataclass(frozen=True, slots=True)
class EngineParts:
    """The engine's state, as the engine hands it to :func:`snapshot` and :func:`restore`."""

    ctx: RuleContext
    points: dict[tuple[str, str], PointState]
    devices: dict[str, TrackedDevice]
    #: compile a point on first use (None: unknown device)
    point: Callable[[str, str], PointState | None]
    reach: Reachability
    sites: SiteCorrelations
    modes: Modes
    emitter: Emitter
    counters: dict[str, int]


def snapshot(parts: EngineParts, started: bool) -> dict[str, Any]:
    """All rule state as JSON-able data."""
    points: dict[str, list[Any]] = {}
    evals: dict[str, list[Any]] = {}
    for (device_id, metric), p in parts.points.items():
        points[f"{device_id}|{metric}"] = [p.ts, p.rx, p.value]
        for e in p.evals:
            state = e.dump()
            if state is not None and e.key:
                evals[e.key] = state
    devs = {
        d.device_id: [d.last_rx, int(d.silent), int(d.unreachable), d.link_down, int(d.offline_on), d.due]
        for d in parts.devices.values()
        if d.silent or d.unreachable or d.offline_on or d.last_rx
    }
    pumps = {
        s: [p.since, p.due, int(p.active), sorted(p.running)]
        for s, p in parts.sites.pumps.items()
        if p.since >= 0 or p.active or p.running
    }
    modes = [
        {"type": "test" if isinstance(m, TestMode) else "shield", **m.model_dump()}
        for ms in parts.modes.guards.values()
        for m in ms.values()
    ]
    reach = parts.reach
    return {
        "version": SNAPSHOT_VERSION,
        "started": started,
        "points": points,
        "evals": evals,
        "devices": devs,
        "pumps": pumps,
        "links_down": sorted(reach.links_down),
        "sources_down": sorted(reach.sources_down),
        "source_up_at": dict(reach.source_up_at),
        "false_alarms": {d: [fa.site_id, list(fa.times), int(fa.active)] for d, fa in parts.sites.false_alarms.items()},
        "modes": modes,
        "active": [[*k, *v] for k, v in parts.emitter.active.items()],
        "counters": dict(parts.counters),
    }


def restore(parts: EngineParts, snap: dict[str, Any]) -> bool:
    """Load a :func:`snapshot` into the parts of a fresh engine; returns ``started``."""
    if snap.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"unknown rule-state snapshot version {snap.get('version')!r}")
    arm = parts.ctx.arm
    started = bool(snap["started"])
    for key, (ts, rx, value) in snap["points"].items():
        device_id, metric = key.split("|", 1)
        p = parts.points.get((device_id, metric)) or parts.point(device_id, metric)
        if p is not None:
            p.ts, p.rx, p.value = int(ts), int(rx), value
    evals = snap["evals"]
    for p in parts.points.values():
        for e in p.evals:
            if e.key in evals:
                e.load(evals[e.key], p)
                if isinstance(e, Timed) and e.due:
                    arm(e, e.due)
    reach = parts.reach
    dues: dict[str, int] = {}
    for device_id, (last_rx, silent, unreach, link_down, on, due) in snap["devices"].items():
        dev = parts.devices.get(device_id)
        if dev is None:
            continue
        dev.last_rx, dev.silent, dev.unreachable = int(last_rx), bool(silent), bool(unreach)
        dev.link_down, dev.offline_on = link_down, bool(on)
        dues[device_id] = int(due)
        if link_down is not None:
            reach.join_link(dev, link_down)
    if started:
        for dev in parts.devices.values():
            if dev.timeout_ms and not dev.silent:
                arm(dev, dues.get(dev.device_id) or dev.last_rx + dev.timeout_ms)
    for site_id, (since, due, active, running) in snap["pumps"].items():
        pump = parts.sites.pumps.get(site_id)
        if pump is not None:
            pump.since, pump.active, pump.running = int(since), bool(active), set(running)
            if due:
                arm(pump, int(due))
    reach.links_down.clear()
    reach.links_down.update(snap["links_down"])
    reach.sources_down.clear()
    reach.sources_down.update(snap["sources_down"])
    reach.source_up_at.clear()
    reach.source_up_at.update({k: int(v) for k, v in snap["source_up_at"].items()})
    for device_id, (site_id, times, active) in snap["false_alarms"].items():
        fa = parts.sites.of_device(site_id, device_id)
        fa.times.extend(int(t) for t in times)
        fa.active = bool(active)
        if fa.times:
            arm(fa, fa.times[0] + fa.window_ms)
    for m in snap["modes"]:
        data = {k: v for k, v in m.items() if k != "type"}
        parts.modes.add(parts.ctx, TestMode(**data) if m["type"] == "test" else Shield(**data))
    active = parts.emitter.active
    active.clear()
    active.update({(a[0], a[1], a[2]): [a[3], a[4]] for a in snap["active"]})
    parts.counters.update(snap.get("counters", {}))
    return started
