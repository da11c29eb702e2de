"""The rule engine: readings, reachability and timers in, fire signals and hazard conditions out.

Pure and synchronous: no I/O, no asyncio, no wall clock. Every method takes ``now_ms`` (the gateway's
clock, UTC epoch ms) and returns the :mod:`effects <gateway.rules.effects>` it caused; the caller
commits them and feeds them to :class:`gateway.hazards.lifecycle.Workflow`.

Time. Rules compare each reading's own ``ts_ms`` (device time) with the previous one of the same
point: a reading not newer than the last one seen is a duplicate or late and is ignored (counted in
``counters['stale']``), unless the device clock jumped back by more than ``CLOCK_RESET_MS`` in a
message received later (a device reset): then the point takes the new time as its baseline
(``counters['clock_reset']``). Readings with quality ``missing`` (the Modbus source's last-known values
of an unreachable device) are not evaluated. Timers (hold times, no data, the pump start limit,
maintenance, shield expiry) run on the gateway clock and fire from :meth:`RuleEngine.tick`; a hold that
completes is also recognised from a later reading's ``ts_ms`` (so a replayed backlog trips it).

Cost. Dispatch lists are compiled per (device, metric) on the first reading of that point; a reading
costs one dict lookup, a time comparison and its rules. Timers live in one heap with lazy deletion;
the no-data timer of a device is re-armed only when it falls due (a reading just stores its receive
time), so a tick costs O(due timers) and 100,000 devices cost one heap entry each.

Reachability. A device is ``offline`` (rule ``offline``, one condition per device) while its no-data
timer has expired or its source reported it unreachable. When a Modbus link is down (status changes
that carry ``link``) the devices behind it give one ``link_down`` condition with ``device_id`` = the
link name instead. A device that answers but refuses the registers of some points (status change
``points_unreadable`` from the Modbus source) gives one ``points_unreadable`` condition, whatever the
number of points, until ``points_readable``. While the gateway's own source (``on_source``) is down,
one ``source_down`` condition stands for it and the offline state of its devices is frozen; when it
comes back their no-data timers restart from that moment.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.models import Quality, Reading, Value
from gateway.profiles.loader import Catalog
from gateway.profiles.models import Device, Profile, Site
from gateway.rules.effects import Condition, Effect, Evidence, FireSignal, ShieldAction, ShieldLog, TestRecord
from gateway.rules.spec import (
    AnyRule,
    DualPowerLossRule,
    EventRule,
    FalseAlarmsRule,
    MaintenanceRule,
    NoDataRule,
    PumpStartRule,
    RateOfChangeRule,
    Shield,
    SiteRules,
    StateHeldRule,
    StuckRule,
    TestMode,
    ThresholdRule,
    Title,
    effective_rules,
    expected_interval_s,
    title_for,
)

__all__ = ["CLOCK_RESET_MS", "RuleEngine", "RulesFor", "SiteRulesFor", "SourceOf"]

#: A reading this much older than the last one, received later, means the device clock was reset.
CLOCK_RESET_MS = 600_000
SNAPSHOT_VERSION = 1

RulesFor = Callable[[Device, Profile], Sequence[AnyRule]]
SiteRulesFor = Callable[[Site], SiteRules]
SourceOf = Callable[[Device, Profile], str]


@dataclass(frozen=True, slots=True)
class _Meta:
    """What a hazard raised by one rule looks like (shared by every device of a profile)."""

    rule: str
    hazard_class: str
    severity: str
    title_zh: str
    title_en: str
    hard: bool
    auto_close: bool


def _meta(rule_id: str, klass: str, severity: str, title: Title, hard: bool, auto_close: bool) -> _Meta:
    return _Meta(rule_id, klass, severity, title.zh, title.en, hard, auto_close)


#: One condition per device whose points the source cannot read (the device refuses their registers).
_POINTS_UNREADABLE = _meta("points_unreadable", "fault", "minor",
                           Title(zh="设备部分测点无法读取（设备不提供其寄存器）",
                                 en="Some points of the device cannot be read (the device refuses their registers)"),
                           False, False)


def _truthy(v: Value | None) -> bool:
    return bool(v) if v is not None else False


def _evidence(p: _Point) -> Evidence:
    return {"device_id": p.dev.device_id, "metric": p.metric, "value": p.value, "ts_ms": p.ts}


class _Timed:
    """Something with a timer in the engine's heap. ``due`` 0 means not armed."""

    __slots__ = ("due",)

    def __init__(self) -> None:
        self.due = 0

    def fire(self, eng: RuleEngine, now_ms: int, out: list[Effect]) -> None:
        raise NotImplementedError


class _Eval:
    """A rule attached to one point. ``feed`` runs after the point took the new value."""

    __slots__ = ()
    key = ""

    def feed(self, eng: RuleEngine, p: _Point, r: Reading, prev: Value | None, prev_ts: int,
             out: list[Effect]) -> None:
        raise NotImplementedError

    def dump(self) -> list[Any] | None:
        return None

    def load(self, state: list[Any]) -> None:
        pass


_NO_POINTS: dict[str, _Point] = {}


class _Dev(_Timed):
    """One device: its plan, reachability and no-data timer."""

    __slots__ = (
        "device_id",
        "last_rx",
        "link",
        "link_down",
        "offline_meta",
        "offline_on",
        "plan",
        "points",
        "profile",
        "silent",
        "site_id",
        "source",
        "timeout_ms",
        "unreachable",
    )

    def __init__(self, device: Device, profile: Profile, source: str, timeout_ms: int, meta: _Meta) -> None:
        super().__init__()
        self.device_id = device.device_id
        self.site_id = device.site_id
        self.profile = profile
        b = device.modbus
        # the link name the Modbus source uses: host:port, or the serial port for RTU
        self.link = None if b is None else (b.serial_port if b.framer == "rtu" else f"{b.host}:{b.port}")
        self.source = source
        self.timeout_ms = timeout_ms
        self.last_rx = 0
        self.silent = False
        self.unreachable = False
        self.link_down: str | None = None  # the link it is unreachable behind (whole link down)
        self.offline_on = False
        self.points: dict[str, _Point] = _NO_POINTS  # replaced by its own dict on the first point
        self.plan: dict[str, list[AnyRule]] | None = None
        self.offline_meta = meta

    def fire(self, eng: RuleEngine, now_ms: int, out: list[Effect]) -> None:
        if self.source in eng._sources_down:
            eng._arm(self, now_ms + self.timeout_ms)  # frozen while the gateway's own source is down
            return
        base = max(self.last_rx, eng._source_up_at.get(self.source, 0))
        if base + self.timeout_ms > now_ms:
            eng._arm(self, base + self.timeout_ms)  # heard from since it was armed: lazy re-arm
            return
        self.silent = True
        eng._sync_offline(self, now_ms, out)


class _Point:
    """The last reading of one point of one device and the rules that watch it."""

    __slots__ = ("dev", "evals", "metric", "rx", "ts", "value")

    def __init__(self, dev: _Dev, metric: str) -> None:
        self.dev = dev
        self.metric = metric
        self.ts = -1
        self.rx = -1
        self.value: Value | None = None
        self.evals: tuple[_Eval, ...] = ()


# ----------------------------------------------------------------------------- point rules


class _EventEval(_Eval):
    """Stateless (the previous value lives in the point): shared by every device of a profile."""

    __slots__ = ("each", "equals", "fire_event", "meta", "test_point")

    def __init__(self, rule: EventRule, meta: _Meta) -> None:
        self.meta = meta
        self.equals = rule.equals
        self.fire_event = rule.opens == "fire_event"
        self.each = rule.trigger == "each"
        self.test_point = rule.test_point

    def _match(self, v: Value | None) -> bool:
        if v is None:
            return False
        return bool(v) if self.equals is None else v == self.equals

    def feed(self, eng: RuleEngine, p: _Point, r: Reading, prev: Value | None, prev_ts: int,
             out: list[Effect]) -> None:
        if self._match(r.value):
            if self.each or not self._match(prev):
                if self.fire_event:
                    test = False
                    if self.test_point is not None:
                        tp = p.dev.points.get(self.test_point)
                        test = tp is not None and tp.value is True
                    eng._fire(p, self.meta.rule, r.ts_ms, test, out)
                else:
                    eng._cond(p.dev, self.meta, True, r.ts_ms, p.metric, [_evidence(p)], out)
        elif not self.fire_event and self._match(prev):
            eng._cond(p.dev, self.meta, False, r.ts_ms, p.metric, [_evidence(p)], out)


_NORMAL, _PENDING, _ACTIVE = 0, 1, 2


class _HeldEval(_Timed, _Eval):
    """Beyond a limit (or in a state) continuously for ``hold_ms``; clears when ``ok`` (hysteresis)."""

    __slots__ = ("hold_ms", "key", "meta", "point", "since", "state")

    def __init__(self, meta: _Meta, hold_s: float, key: str) -> None:
        super().__init__()
        self.meta = meta
        self.hold_ms = int(hold_s * 1000)
        self.key = key
        self.state = _NORMAL
        self.since = 0
        self.point: _Point | None = None

    def judge(self, p: _Point) -> tuple[bool, bool]:
        """(violated, ok) for the point's current value."""
        raise NotImplementedError

    def feed(self, eng: RuleEngine, p: _Point, r: Reading, prev: Value | None, prev_ts: int,
             out: list[Effect]) -> None:
        self.point = p
        viol, ok = self.judge(p)
        ts = r.ts_ms
        if self.state == _ACTIVE:
            if ok:
                self.state = _NORMAL
                eng._cond(p.dev, self.meta, False, ts, p.metric, [_evidence(p)], out)
        elif self.state == _PENDING:
            if not viol:
                self.state, self.due = _NORMAL, 0
            else:
                self.since = min(self.since, ts)  # device clock reset
                if ts - self.since >= self.hold_ms:
                    self._activate(eng, self.since + self.hold_ms, out)
        elif viol:
            if self.hold_ms == 0:
                self._activate(eng, ts, out)
            else:
                self.state, self.since = _PENDING, ts
                eng._arm(self, r.received_at_ms + self.hold_ms)

    def _activate(self, eng: RuleEngine, at_ms: int, out: list[Effect]) -> None:
        assert self.point is not None
        self.state, self.due = _ACTIVE, 0
        eng._cond(self.point.dev, self.meta, True, at_ms, self.point.metric, [_evidence(self.point)], out)

    def fire(self, eng: RuleEngine, now_ms: int, out: list[Effect]) -> None:
        if self.state == _PENDING:
            self._activate(eng, self.since + self.hold_ms, out)

    def dump(self) -> list[Any] | None:
        return [self.state, self.since, self.due] if self.state != _NORMAL else None

    def load(self, state: list[Any]) -> None:
        self.state, self.since, self.due = int(state[0]), int(state[1]), int(state[2])


class _ThresholdEval(_HeldEval):
    __slots__ = ("below", "clear", "limit")

    def __init__(self, rule: ThresholdRule, meta: _Meta, key: str) -> None:
        super().__init__(meta, rule.hold_s, key)
        self.below = rule.below is not None
        self.limit = rule.limit
        self.clear = rule.clear

    def judge(self, p: _Point) -> tuple[bool, bool]:
        v = p.value
        if not isinstance(v, int | float) or isinstance(v, bool):
            return False, False
        if self.below:
            return v < self.limit, v >= self.clear
        return v > self.limit, v <= self.clear


class _StateEval(_HeldEval):
    __slots__ = ("negate", "value")

    def __init__(self, rule: StateHeldRule, meta: _Meta, key: str) -> None:
        super().__init__(meta, rule.hold_s, key)
        self.negate = rule.value is None
        self.value = rule.not_value if self.negate else rule.value

    def judge(self, p: _Point) -> tuple[bool, bool]:
        match = (p.value != self.value) if self.negate else (p.value == self.value)
        return match, not match


class _DualPowerEval(_HeldEval):
    """Attached to both power points of one device; violated while both read ``lost_value``."""

    __slots__ = ("backup", "lost", "main")

    def __init__(self, rule: DualPowerLossRule, meta: _Meta, key: str) -> None:
        super().__init__(meta, rule.hold_s, key)
        self.main, self.backup, self.lost = rule.main_point, rule.backup_point, rule.lost_value

    def judge(self, p: _Point) -> tuple[bool, bool]:
        m, b = p.dev.points.get(self.main), p.dev.points.get(self.backup)
        both = m is not None and b is not None and m.value == self.lost and b.value == self.lost
        return both, not both


class _RateEval(_Eval):
    __slots__ = ("active", "key", "max_change", "meta", "per_ms")

    def __init__(self, rule: RateOfChangeRule, meta: _Meta, key: str) -> None:
        self.meta, self.max_change, self.per_ms, self.key = meta, rule.max_change, rule.per_s * 1000, key
        self.active = False

    def feed(self, eng: RuleEngine, p: _Point, r: Reading, prev: Value | None, prev_ts: int,
             out: list[Effect]) -> None:
        v = r.value
        if not isinstance(prev, int | float) or not isinstance(v, int | float) or r.ts_ms <= prev_ts:
            return
        change = abs(v - prev) * self.per_ms / (r.ts_ms - prev_ts)
        too_fast = change > self.max_change
        if too_fast != self.active:
            self.active = too_fast
            ev = [_evidence(p), {"previous": prev, "previous_ts_ms": prev_ts, "change_per_period": change}]
            eng._cond(p.dev, self.meta, too_fast, r.ts_ms, p.metric, ev, out)

    def dump(self) -> list[Any] | None:
        return [1] if self.active else None

    def load(self, state: list[Any]) -> None:
        self.active = bool(state[0])


class _StuckEval(_Eval):
    __slots__ = ("active", "for_ms", "key", "meta", "min_samples", "ref", "samples", "since", "tol")

    def __init__(self, rule: StuckRule, meta: _Meta, key: str) -> None:
        self.meta, self.for_ms, self.min_samples, self.tol = meta, int(rule.for_s * 1000), rule.min_samples, \
            rule.tolerance
        self.key = key
        self.ref: float | None = None
        self.since = 0
        self.samples = 0
        self.active = False

    def feed(self, eng: RuleEngine, p: _Point, r: Reading, prev: Value | None, prev_ts: int,
             out: list[Effect]) -> None:
        v = r.value
        if not isinstance(v, int | float):
            return
        if self.ref is not None and abs(v - self.ref) <= self.tol:
            self.samples += 1
            self.since = min(self.since, r.ts_ms)
            if not self.active and self.samples >= self.min_samples and r.ts_ms - self.since >= self.for_ms:
                self.active = True
                ev = [_evidence(p), {"since_ts_ms": self.since, "samples": self.samples}]
                eng._cond(p.dev, self.meta, True, r.ts_ms, p.metric, ev, out)
            return
        if self.active:
            self.active = False
            eng._cond(p.dev, self.meta, False, r.ts_ms, p.metric, [_evidence(p)], out)
        self.ref, self.since, self.samples = float(v), r.ts_ms, 1

    def dump(self) -> list[Any] | None:
        return None if self.ref is None else [self.ref, self.since, self.samples, int(self.active)]

    def load(self, state: list[Any]) -> None:
        self.ref, self.since, self.samples, self.active = float(state[0]), int(state[1]), int(state[2]), \
            bool(state[3])


class _SilenceEval(_Timed, _Eval):
    """``no_data`` for one point (the device-level one lives in :class:`_Dev`)."""

    __slots__ = ("active", "key", "last_rx", "meta", "point", "timeout_ms")

    def __init__(self, meta: _Meta, timeout_ms: int, key: str) -> None:
        super().__init__()
        self.meta, self.timeout_ms, self.key = meta, timeout_ms, key
        self.last_rx = 0
        self.active = False
        self.point: _Point | None = None

    def feed(self, eng: RuleEngine, p: _Point, r: Reading, prev: Value | None, prev_ts: int,
             out: list[Effect]) -> None:
        self.point = p
        self.last_rx = max(self.last_rx, r.received_at_ms)
        if self.active:
            self.active = False
            eng._cond(p.dev, self.meta, False, r.ts_ms, p.metric, [_evidence(p)], out)
        if not self.due:
            eng._arm(self, self.last_rx + self.timeout_ms)

    def fire(self, eng: RuleEngine, now_ms: int, out: list[Effect]) -> None:
        assert self.point is not None
        dev = self.point.dev
        base = max(self.last_rx, eng._source_up_at.get(dev.source, 0))
        if dev.source in eng._sources_down or dev.link_down is not None or base + self.timeout_ms > now_ms:
            eng._arm(self, max(base + self.timeout_ms, now_ms + 1))
            return
        self.active = True
        eng._cond(dev, self.meta, True, now_ms, self.point.metric,
                  [{"last_received_ms": self.last_rx, "timeout_ms": self.timeout_ms}], out)

    def dump(self) -> list[Any] | None:
        return [self.last_rx, int(self.active), self.due]

    def load(self, state: list[Any]) -> None:
        self.last_rx, self.active, self.due = int(state[0]), bool(state[1]), int(state[2])


class _MaintenanceEval(_Timed, _Eval):
    """A record (truthy value that changed) at least every ``max_ms``; the first reading starts the clock."""

    __slots__ = ("active", "key", "last_record", "max_ms", "meta", "point")

    def __init__(self, rule: MaintenanceRule, meta: _Meta, key: str) -> None:
        super().__init__()
        self.meta, self.max_ms, self.key = meta, int(rule.max_interval_s * 1000), key
        self.last_record = -1
        self.active = False
        self.point: _Point | None = None

    def feed(self, eng: RuleEngine, p: _Point, r: Reading, prev: Value | None, prev_ts: int,
             out: list[Effect]) -> None:
        self.point = p
        record = _truthy(r.value) and prev is not None and r.value != prev
        if record or self.last_record < 0:
            self.last_record = r.ts_ms
            if self.active:
                self.active = False
                eng._cond(p.dev, self.meta, False, r.ts_ms, p.metric, [_evidence(p)], out)
            eng._arm(self, r.received_at_ms + self.max_ms)

    def fire(self, eng: RuleEngine, now_ms: int, out: list[Effect]) -> None:
        assert self.point is not None
        self.active = True
        eng._cond(self.point.dev, self.meta, True, now_ms, self.point.metric,
                  [{"last_record_ts_ms": self.last_record, "max_interval_ms": self.max_ms}], out)

    def dump(self) -> list[Any] | None:
        return [self.last_record, int(self.active), self.due]

    def load(self, state: list[Any]) -> None:
        self.last_record, self.active, self.due = int(state[0]), bool(state[1]), int(state[2])


# ----------------------------------------------------------------------------- site rules


class _PumpSite(_Timed):
    """Pump start correlation for one site: a trigger must see a run point true within the limit."""

    __slots__ = ("active", "meta", "rule", "running", "since", "site_id")

    def __init__(self, site_id: str, rule: PumpStartRule, meta: _Meta) -> None:
        super().__init__()
        self.site_id, self.rule, self.meta = site_id, rule, meta
        self.running: set[str] = set()  # "device/point" currently true
        self.since = -1  # trigger time (device clock) while pending
        self.active = False

    def trigger(self, eng: RuleEngine, ts_ms: int, rx_ms: int, source: str) -> None:
        if self.running or self.since >= 0 or self.active:
            return
        self.since = ts_ms
        eng._arm(self, rx_ms + int(self.rule.limit_s * 1000))

    def run_changed(self, eng: RuleEngine, who: str, running: bool, ts_ms: int, out: list[Effect]) -> None:
        if running:
            self.running.add(who)
            self.since, self.due = -1, 0
            if self.active:
                self.active = False
                ev: list[Evidence] = [{"running": who, "ts_ms": ts_ms}]
                eng._site_cond(self.site_id, "", self.meta, False, ts_ms, ev, out)
        else:
            self.running.discard(who)

    def fire(self, eng: RuleEngine, now_ms: int, out: list[Effect]) -> None:
        if self.since < 0 or self.running:
            return
        ev = [{"trigger_ts_ms": self.since, "limit_s": self.rule.limit_s, "run_points": self.rule.run_points}]
        self.since, self.active = -1, True
        eng._site_cond(self.site_id, "", self.meta, True, now_ms, ev, out)


class _PumpTriggerEval(_Eval):
    __slots__ = ("site",)

    def __init__(self, site: _PumpSite) -> None:
        self.site = site

    def feed(self, eng: RuleEngine, p: _Point, r: Reading, prev: Value | None, prev_ts: int,
             out: list[Effect]) -> None:
        if _truthy(r.value) and not _truthy(prev):
            self.site.trigger(eng, r.ts_ms, r.received_at_ms, f"{p.dev.device_id}/{p.metric}")


class _PumpRunEval(_Eval):
    __slots__ = ("site",)

    def __init__(self, site: _PumpSite) -> None:
        self.site = site

    def feed(self, eng: RuleEngine, p: _Point, r: Reading, prev: Value | None, prev_ts: int,
             out: list[Effect]) -> None:
        self.site.run_changed(eng, f"{p.dev.device_id}/{p.metric}", _truthy(r.value), r.ts_ms, out)


class _FalseAlarms(_Timed):
    """Rolling count of false alarms of one device."""

    __slots__ = ("active", "device_id", "site_id", "times")

    def __init__(self, site_id: str, device_id: str) -> None:
        super().__init__()
        self.site_id, self.device_id = site_id, device_id
        self.times: deque[int] = deque()
        self.active = False

    def fire(self, eng: RuleEngine, now_ms: int, out: list[Effect]) -> None:
        eng._count_false(self, now_ms, out)


class _Expiry(_Timed):
    __slots__ = ("mode",)

    def __init__(self, mode: TestMode | Shield) -> None:
        super().__init__()
        self.mode = mode

    def fire(self, eng: RuleEngine, now_ms: int, out: list[Effect]) -> None:
        eng._end_mode(self.mode, "system", now_ms, out, expired=True)


# ----------------------------------------------------------------------------- the engine


class RuleEngine:
    """Evaluate rules for every device of a catalog. Not thread-safe: one caller at a time.

    Args:
        catalog: profiles and inventory.
        rules_for: the rules of one device; default :func:`~gateway.rules.spec.effective_rules`
            (profile rules, device overrides, class defaults and the device ``offline`` rule).
        site_rules_for: correlation settings of one site; default ``site.rules`` when the inventory
            has them, else :class:`SiteRules` defaults.
        source_of: the source instance a device arrives through; default its profile's transport
            (``mqtt`` or ``modbus``), matching the names given to :meth:`on_source`.
    """

    def __init__(self, catalog: Catalog, *, rules_for: RulesFor | None = None,
                 site_rules_for: SiteRulesFor | None = None, source_of: SourceOf | None = None) -> None:
        self._catalog = catalog
        self._rules_for = rules_for
        self._heap: list[tuple[int, int, _Timed]] = []
        self._seq = itertools.count()
        self._started = False
        self._points: dict[tuple[str, str], _Point] = {}
        self._devs: dict[str, _Dev] = {}
        self._plans: dict[str, dict[str, list[AnyRule]]] = {}
        self._profile_rules: dict[str, list[AnyRule]] = {}
        self._nodata: dict[int, tuple[int, _Meta]] = {}
        self._metas: dict[tuple[str, str], _Meta] = {}
        self._shared: dict[int, _EventEval] = {}
        self._sources_down: set[str] = set()
        self._source_up_at: dict[str, int] = {}
        self._links_down: set[str] = set()
        self._link_members: dict[str, list[_Dev]] = {}
        self._site_rules: dict[str, SiteRules] = {}
        self._pumps: dict[str, _PumpSite] = {}
        self._false: dict[str, _FalseAlarms] = {}
        self._modes: dict[str, dict[str, TestMode | Shield]] = {}
        self._expiries: dict[tuple[str, str], _Expiry] = {}
        # (site, device, rule) -> [metric, how it was emitted: "" | "test" | "shield"]
        self._active: dict[tuple[str, str, str], list[str]] = {}
        self.counters: dict[str, int] = {"stale": 0, "unknown_device": 0, "clock_reset": 0, "missing": 0}

        offline_meta = _meta("offline", "offline", "minor", title_for(NoDataRule(), None), False, False)
        for site in catalog.inventory.sites:
            sr = site_rules_for(site) if site_rules_for else getattr(site, "rules", None)
            self._site_rules[site.site_id] = sr if isinstance(sr, SiteRules) else SiteRules()
        for device in catalog.inventory.devices:
            profile = catalog.profiles.get(device.profile)
            if profile is None:
                continue
            source = source_of(device, profile) if source_of else profile.transport
            rules = self._rules_of(device, profile)
            nodata = self._nodata.get(id(rules))
            if nodata is None:
                nd = next((r for r in rules if isinstance(r, NoDataRule) and r.point is None), None)
                meta, timeout = offline_meta, 0
                if nd is not None:
                    timeout = int((nd.cadence_s or expected_interval_s(profile)) * nd.cadence_multiple * 1000)
                    if nd.name or nd.title or nd.severity != "minor" or nd.hazard_class or nd.hard \
                            or nd.auto_close:
                        meta = self._meta_of(profile, nd)
                nodata = (timeout, meta)
                if rules is self._profile_rules.get(profile.profile):
                    self._nodata[id(rules)] = nodata
            dev = _Dev(device, profile, source, nodata[0], nodata[1])
            self._devs[device.device_id] = dev
            if dev.link is not None:
                self._link_members.setdefault(dev.link, []).append(dev)
        self._build_sites()

    # ------------------------------------------------------------------ construction helpers

    def _rules_of(self, device: Device, profile: Profile) -> list[AnyRule]:
        """The device's rules; shared by every device of a profile unless it has its own."""
        if self._rules_for is not None:
            return list(self._rules_for(device, profile))
        if getattr(device, "rules", None):
            return effective_rules(profile, device)
        cached = self._profile_rules.get(profile.profile)
        if cached is None:
            cached = self._profile_rules[profile.profile] = effective_rules(profile, device)
        return cached

    def _meta_of(self, profile: Profile, rule: AnyRule) -> _Meta:
        key = (profile.profile, f"{rule.id}:{id(rule)}")
        m = self._metas.get(key)
        if m is None:
            point = profile.point(getattr(rule, "point", None) or "")
            title = title_for(rule, point, profile)
            m = _meta(rule.id, rule.klass, rule.severity, title, rule.hard, rule.auto_close)
            self._metas[key] = m
        return m

    def _build_sites(self) -> None:
        for site_id, sr in self._site_rules.items():
            ps = sr.pump_start
            if not ps.enabled:
                continue
            has_run = any(d.site_id == site_id and any(d.profile.point(n) for n in ps.run_points)
                          for d in self._devs.values())
            if has_run:
                title = ps.title or Title(
                    zh=f"消防泵启泵信号后 {ps.limit_s:g} 秒内未运行",
                    en=f"Fire pump did not start within {ps.limit_s:g} s of a start signal")
                meta = _meta("pump_start", ps.hazard_class, ps.severity, title, ps.hard, ps.auto_close)
                self._pumps[site_id] = _PumpSite(site_id, ps, meta)

    def _plan(self, dev: _Dev) -> dict[str, list[AnyRule]]:
        if dev.plan is None:
            device = self._catalog.devices[dev.device_id]
            cacheable = self._rules_for is None and not getattr(device, "rules", None)
            plan = self._plans.get(dev.profile.profile) if cacheable else None
            if plan is None:
                plan = {}
                for r in self._rules_of(device, dev.profile):
                    point = getattr(r, "point", None)
                    if point is not None:
                        plan.setdefault(point, []).append(r)
                if cacheable:
                    self._plans[dev.profile.profile] = plan
            dev.plan = plan
        return dev.plan

    def _point(self, device_id: str, metric: str) -> _Point | None:
        dev = self._devs.get(device_id)
        if dev is None:
            return None
        p = _Point(dev, metric)
        evals: list[_Eval] = []
        for rule in self._plan(dev).get(metric, ()):
            meta = self._meta_of(dev.profile, rule)
            key = f"{device_id}|{rule.id}"
            if isinstance(rule, EventRule):
                shared = self._shared.get(id(rule))
                if shared is None:
                    shared = self._shared[id(rule)] = _EventEval(rule, meta)
                evals.append(shared)
            elif isinstance(rule, ThresholdRule):
                evals.append(_ThresholdEval(rule, meta, key))
            elif isinstance(rule, StateHeldRule):
                evals.append(_StateEval(rule, meta, key))
            elif isinstance(rule, RateOfChangeRule):
                evals.append(_RateEval(rule, meta, key))
            elif isinstance(rule, StuckRule):
                evals.append(_StuckEval(rule, meta, key))
            elif isinstance(rule, MaintenanceRule):
                evals.append(_MaintenanceEval(rule, meta, key))
            elif isinstance(rule, NoDataRule):
                interval = rule.cadence_s or expected_interval_s(dev.profile)
                evals.append(_SilenceEval(meta, int(interval * rule.cadence_multiple * 1000), key))
        sr = self._site_rules.get(dev.site_id)
        pump = self._pumps.get(dev.site_id)
        if pump is not None:
            if metric in pump.rule.trigger_points:
                evals.append(_PumpTriggerEval(pump))
            if metric in pump.rule.run_points:
                evals.append(_PumpRunEval(pump))
        if sr is not None and sr.dual_power_loss.enabled and metric in (sr.dual_power_loss.main_point,
                                                                         sr.dual_power_loss.backup_point):
            dp = sr.dual_power_loss
            if dev.profile.point(dp.main_point) and dev.profile.point(dp.backup_point):
                other = dp.backup_point if metric == dp.main_point else dp.main_point
                op = dev.points.get(other)
                shared_dp = next((e for e in op.evals if isinstance(e, _DualPowerEval)), None) if op else None
                if shared_dp is None:
                    title = dp.title or Title(zh="消防主电源与备用电源均失电",
                                              en="Main and backup power both lost")
                    meta = _meta("dual_power_loss", dp.hazard_class, dp.severity, title, dp.hard,
                                 dp.auto_close)
                    shared_dp = _DualPowerEval(dp, meta, f"{device_id}|dual_power_loss")
                evals.append(shared_dp)
        p.evals = tuple(evals)
        if dev.points is _NO_POINTS:
            dev.points = {}
        dev.points[metric] = p
        self._points[(device_id, metric)] = p
        return p

    # ------------------------------------------------------------------ timers

    def _arm(self, obj: _Timed, due: int) -> None:
        obj.due = due
        heapq.heappush(self._heap, (due, next(self._seq), obj))

    def _start(self, now_ms: int) -> None:
        if self._started:
            return
        self._started = True
        for dev in self._devs.values():
            if dev.timeout_ms:
                dev.last_rx = max(dev.last_rx, now_ms)
                self._arm(dev, now_ms + dev.timeout_ms)

    def tick(self, now_ms: int) -> list[Effect]:
        """Fire every timer due at ``now_ms``. Costs O(due timers); a clock that went back fires nothing."""
        self._start(now_ms)
        out: list[Effect] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ms:
            due, _, obj = heapq.heappop(heap)
            if obj.due != due:
                continue  # cancelled or re-armed
            obj.due = 0
            obj.fire(self, now_ms, out)
        return out

    def next_due_ms(self) -> int | None:
        """When the next timer falls due (for the caller's sleep), or None."""
        while self._heap and self._heap[0][2].due != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    # ------------------------------------------------------------------ inputs

    def on_readings(self, readings: Iterable[Reading], now_ms: int) -> list[Effect]:
        """Evaluate readings (any order, any devices). Returns the effects they caused."""
        if not self._started:
            self._start(now_ms)
        out: list[Effect] = []
        points = self._points
        for r in readings:
            p = points.get((r.device_id, r.metric))
            if p is None:
                p = self._point(r.device_id, r.metric)
                if p is None:
                    self.counters["unknown_device"] += 1
                    continue
            if r.quality is Quality.MISSING:
                self.counters["missing"] += 1
                continue
            dev = p.dev
            if r.received_at_ms > dev.last_rx:
                dev.last_rx = r.received_at_ms
                if dev.silent:
                    dev.silent = False
                    self._sync_offline(dev, r.ts_ms, out)
                    if not dev.due:
                        self._arm(dev, r.received_at_ms + dev.timeout_ms)
            prev_ts = p.ts
            if r.ts_ms <= prev_ts:
                if r.ts_ms < prev_ts - CLOCK_RESET_MS and r.received_at_ms > p.rx:
                    self.counters["clock_reset"] += 1
                else:
                    self.counters["stale"] += 1
                    continue
            prev = p.value
            p.ts, p.rx, p.value = r.ts_ms, r.received_at_ms, r.value
            for e in p.evals:
                e.feed(self, p, r, prev, prev_ts, out)
        return out

    def on_status(self, changes: Iterable[Any], now_ms: int) -> list[Effect]:
        """Reachability from a polled source (:class:`~gateway.sources.base.DeviceStatusChange`).

        A change that names its ``link`` means the whole link is down: one ``link_down`` condition
        (device_id = the link) replaces the per-device ``offline`` ones; one device coming back online
        ends it. A change without ``link`` is about that device alone. ``points_unreadable`` and
        ``points_readable`` raise and end the device's ``points_unreadable`` condition (reachability
        is untouched: the device answered).
        """
        self._start(now_ms)
        out: list[Effect] = []
        touched: set[str] = set()
        for ch in changes:
            dev = self._devs.get(ch.device_id)
            if dev is None:
                self.counters["unknown_device"] += 1
                continue
            if ch.status in ("points_unreadable", "points_readable"):
                self._cond(dev, _POINTS_UNREADABLE, ch.status == "points_unreadable", ch.at_ms, None,
                           [{"reason": ch.reason}], out)
                continue
            touched.add(dev.device_id)
            if ch.status == "unreachable":
                dev.unreachable = True
                if ch.link is not None:
                    dev.link_down = ch.link
                    members = self._link_members.setdefault(ch.link, [])
                    if dev not in members:
                        members.append(dev)
                    if ch.link not in self._links_down:
                        self._links_down.add(ch.link)
                        self._link_cond(ch.link, True, ch.at_ms, ch.reason, out)
                continue
            dev.unreachable = False
            link = dev.link_down
            if link is not None and link in self._links_down:
                # the link is back: its devices count as reachable and silent ones get a fresh no-data period
                self._links_down.discard(link)
                for other in self._link_members.get(link, []):
                    if other.link_down == link:
                        other.link_down, other.unreachable, other.silent = None, False, False
                        other.last_rx = max(other.last_rx, now_ms)
                        if other.timeout_ms and not other.due:
                            self._arm(other, now_ms + other.timeout_ms)
                        touched.add(other.device_id)
                self._link_cond(link, False, ch.at_ms, ch.reason, out)
            dev.link_down = None
        for device_id in sorted(touched):
            self._sync_offline(self._devs[device_id], now_ms, out)
        return out

    def on_source(self, source_name: str, connected: bool, now_ms: int) -> list[Effect]:
        """The gateway's own connection to a source (the MQTT broker) went down or came back."""
        self._start(now_ms)
        out: list[Effect] = []
        down = source_name in self._sources_down
        if connected and down:
            self._sources_down.discard(source_name)
            self._source_up_at[source_name] = now_ms
            out.append(self._gateway_cond(source_name, False, now_ms))
        elif not connected and not down:
            self._sources_down.add(source_name)
            out.append(self._gateway_cond(source_name, True, now_ms))
        return out

    def on_fire_resolved(self, site_id: str, device_id: str, resolution: str, now_ms: int) -> list[Effect]:
        """A fire event was resolved; false alarms are counted per device in a rolling window (C8)."""
        self._start(now_ms)
        out: list[Effect] = []
        if resolution != "false_alarm":
            return out
        fa = self._false.get(device_id)
        if fa is None:
            fa = self._false[device_id] = _FalseAlarms(site_id, device_id)
        fa.times.append(now_ms)
        self._count_false(fa, now_ms, out)
        return out

    # ------------------------------------------------------------------ test mode and shields

    def set_test_mode(self, mode: TestMode, now_ms: int) -> list[Effect]:
        """Put a device (or one point) under test until ``mode.until_ms``."""
        return self._set_mode(mode, "test_on", now_ms)

    def set_shield(self, shield: Shield, now_ms: int) -> list[Effect]:
        """Shield (屏蔽) a device (or one point) until ``shield.until_ms``."""
        return self._set_mode(shield, "shield_on", now_ms)

    def end_mode(self, device_id: str, point: str | None, actor: str, now_ms: int) -> list[Effect]:
        """End the test mode or shield of a device/point early; conditions still active are raised now."""
        out: list[Effect] = []
        mode = self._modes.get(device_id, {}).get(point or "")
        if mode is not None:
            self._end_mode(mode, actor, now_ms, out, expired=False)
        return out

    def _set_mode(self, mode: TestMode | Shield, action: ShieldAction, now_ms: int) -> list[Effect]:
        out: list[Effect] = []
        self._start(now_ms)
        dev = self._devs.get(mode.device_id)
        site = dev.site_id if dev else ""
        self._modes.setdefault(mode.device_id, {})[mode.point or ""] = mode
        exp = _Expiry(mode)
        self._expiries[(mode.device_id, mode.point or "")] = exp
        self._arm(exp, mode.until_ms)
        out.append(ShieldLog(site, mode.device_id, mode.point, action, now_ms, mode.actor, mode.reason,
                             mode.until_ms))
        return out

    def _end_mode(self, mode: TestMode | Shield, actor: str, now_ms: int, out: list[Effect],
                  *, expired: bool) -> None:
        slot = mode.point or ""
        modes = self._modes.get(mode.device_id, {})
        if modes.get(slot) is not mode:
            return
        del modes[slot]
        if not modes:
            self._modes.pop(mode.device_id, None)
        exp = self._expiries.pop((mode.device_id, slot), None)
        if exp is not None:
            exp.due = 0
        dev = self._devs.get(mode.device_id)
        site = dev.site_id if dev else ""
        is_test = isinstance(mode, TestMode)
        action: ShieldAction = (("test_expired" if expired else "test_off") if is_test
                                else ("shield_expired" if expired else "shield_off"))
        out.append(ShieldLog(site, mode.device_id, mode.point, action, now_ms, actor, mode.reason,
                             mode.until_ms))
        # conditions that are still active under the ended mode are raised now
        if dev is None:
            return
        for key, (metric, how) in list(self._active.items()):
            if key[1] == mode.device_id and how and (mode.point is None or metric == mode.point) \
                    and self._guard(mode.device_id, metric) is None:
                p = dev.points.get(metric)
                meta = self._meta_for_key(dev, key[2])
                if meta is not None:
                    self._active[key][1] = ""
                    out.append(Condition(key[0], key[1], key[2], True, now_ms, meta.hazard_class,
                                         meta.severity, meta.title_zh, meta.title_en, meta.hard,
                                         meta.auto_close, [_evidence(p)] if p else []))

    def _meta_for_key(self, dev: _Dev, rule_id: str) -> _Meta | None:
        if rule_id == dev.offline_meta.rule:
            return dev.offline_meta
        if rule_id == _POINTS_UNREADABLE.rule:
            return _POINTS_UNREADABLE
        for p in dev.points.values():
            for e in p.evals:
                meta = getattr(e, "meta", None)
                if isinstance(meta, _Meta) and meta.rule == rule_id:
                    return meta
        return None

    def _guard(self, device_id: str, metric: str | None) -> TestMode | Shield | None:
        modes = self._modes.get(device_id)
        if not modes:
            return None
        return (modes.get(metric) if metric else None) or modes.get("")

    # ------------------------------------------------------------------ emitting

    def _fire(self, p: _Point, rule: str, at_ms: int, test: bool, out: list[Effect]) -> None:
        dev = p.dev
        ev = _evidence(p)
        guard = self._guard(dev.device_id, p.metric) if self._modes else None
        if guard is None:
            out.append(FireSignal(dev.site_id, dev.device_id, p.metric, rule, at_ms, test, ev))
        elif isinstance(guard, TestMode):
            out.append(TestRecord(dev.site_id, dev.device_id, p.metric, rule, at_ms, "fire_event", True,
                                  guard.reason, guard.actor, [ev]))
        else:
            out.append(ShieldLog(dev.site_id, dev.device_id, p.metric, "suppressed", at_ms, guard.actor,
                                 guard.reason, guard.until_ms, rule))
        pump = self._pumps.get(dev.site_id)
        if pump is not None and pump.rule.alarm_triggers and not test and guard is None:
            pump.trigger(self, at_ms, p.rx, f"{dev.device_id}/{p.metric}")

    def _cond(self, dev: _Dev, meta: _Meta, active: bool, at_ms: int, metric: str | None,
              evidence: list[Evidence], out: list[Effect]) -> None:
        key = (dev.site_id, dev.device_id, meta.rule)
        if active:
            guard = self._guard(dev.device_id, metric) if self._modes else None
            how = "" if guard is None else ("test" if isinstance(guard, TestMode) else "shield")
            self._active[key] = [metric or "", how]
            if guard is not None:
                self._guarded(dev, meta, True, at_ms, metric, evidence, guard, out)
                return
        else:
            entry = self._active.pop(key, None)
            if entry is None:
                return
            if entry[1]:
                guard = self._guard(dev.device_id, metric)
                if guard is not None:
                    self._guarded(dev, meta, False, at_ms, metric, evidence, guard, out)
                return
        out.append(Condition(dev.site_id, dev.device_id, meta.rule, active, at_ms, meta.hazard_class,
                             meta.severity, meta.title_zh, meta.title_en, meta.hard, meta.auto_close,
                             evidence))

    def _guarded(self, dev: _Dev, meta: _Meta, active: bool, at_ms: int, metric: str | None,
                 evidence: list[Evidence], guard: TestMode | Shield, out: list[Effect]) -> None:
        if isinstance(guard, TestMode):
            out.append(TestRecord(dev.site_id, dev.device_id, metric or "", meta.rule, at_ms, "hazard",
                                  active, guard.reason, guard.actor, evidence))
        elif active:
            out.append(ShieldLog(dev.site_id, dev.device_id, metric, "suppressed", at_ms, guard.actor,
                                 guard.reason, guard.until_ms, meta.rule))

    def _site_cond(self, site_id: str, device_id: str, meta: _Meta, active: bool, at_ms: int,
                   evidence: list[Evidence], out: list[Effect]) -> None:
        key = (site_id, device_id, meta.rule)
        if active:
            self._active[key] = ["", ""]
        elif self._active.pop(key, None) is None:
            return
        out.append(Condition(site_id, device_id, meta.rule, active, at_ms, meta.hazard_class, meta.severity,
                             meta.title_zh, meta.title_en, meta.hard, meta.auto_close, evidence))

    def _sync_offline(self, dev: _Dev, at_ms: int, out: list[Effect]) -> None:
        if dev.source in self._sources_down:
            return  # nothing is known about its devices while the gateway's own source is down
        want = (dev.silent or dev.unreachable) and dev.link_down is None
        if want != dev.offline_on:
            dev.offline_on = want
            ev: list[Evidence] = [{"silent": dev.silent, "unreachable": dev.unreachable,
                                   "last_received_ms": dev.last_rx}]
            self._cond(dev, dev.offline_meta, want, at_ms, None, ev, out)

    def _link_cond(self, link: str, active: bool, at_ms: int, reason: str, out: list[Effect]) -> None:
        members = self._link_members.get(link, [])
        sites = sorted({d.site_id for d in members})
        title = Title(zh=f"通信链路中断（{link}）", en=f"Communication link down ({link})")
        meta = _meta("link_down", "offline", "major", title, False, False)
        ev: list[Evidence] = [{"link": link, "reason": reason, "devices": [d.device_id for d in members]}]
        for s in sites:
            self._site_cond(s, link, meta, active, at_ms, ev, out)

    def _gateway_cond(self, source: str, active: bool, at_ms: int) -> Condition:
        return Condition("", source, "source_down", active, at_ms, "gateway", "major",
                         f"网关数据源中断（{source}）", f"Gateway source down ({source})", False, False,
                         [{"source": source}])

    def _count_false(self, fa: _FalseAlarms, now_ms: int, out: list[Effect]) -> None:
        rule: FalseAlarmsRule = self._site_rules.get(fa.site_id, SiteRules()).false_alarms
        window = int(rule.window_s * 1000)
        while fa.times and fa.times[0] <= now_ms - window:
            fa.times.popleft()
        too_many = rule.enabled and len(fa.times) > rule.max_per_day
        if too_many != fa.active:
            fa.active = too_many
            title = rule.title or Title(zh=f"误报过多（24 小时内超过 {rule.max_per_day} 次）",
                                        en=f"Too many false alarms (more than {rule.max_per_day} in 24 h)")
            meta = _meta("false_alarms", rule.hazard_class, rule.severity, title, rule.hard, rule.auto_close)
            self._site_cond(fa.site_id, fa.device_id, meta, too_many, now_ms,
                            [{"false_alarms": len(fa.times), "window_s": rule.window_s}], out)
        if fa.times:
            self._arm(fa, fa.times[0] + window)
        else:
            self._false.pop(fa.device_id, None)

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, Any]:
        """All rule state as JSON-able data, for :meth:`restore` into an engine of the same catalog."""
        points: dict[str, list[Any]] = {}
        evals: dict[str, list[Any]] = {}
        for (device_id, metric), p in self._points.items():
            points[f"{device_id}|{metric}"] = [p.ts, p.rx, p.value]
            for e in p.evals:
                state = e.dump()
                if state is not None and e.key:
                    evals[e.key] = state
        devs = {d.device_id: [d.last_rx, int(d.silent), int(d.unreachable), d.link_down, int(d.offline_on),
                              d.due] for d in self._devs.values()
                if d.silent or d.unreachable or d.offline_on or d.last_rx}
        pumps = {s: [p.since, p.due, int(p.active), sorted(p.running)] for s, p in self._pumps.items()
                 if p.since >= 0 or p.active or p.running}
        modes = [{"type": "test" if isinstance(m, TestMode) else "shield", **m.model_dump()}
                 for ms in self._modes.values() for m in ms.values()]
        return {
            "version": SNAPSHOT_VERSION, "started": self._started, "points": points, "evals": evals,
            "devices": devs, "pumps": pumps, "links_down": sorted(self._links_down),
            "sources_down": sorted(self._sources_down), "source_up_at": dict(self._source_up_at),
            "false_alarms": {d: [fa.site_id, list(fa.times), int(fa.active)]
                             for d, fa in self._false.items()},
            "modes": modes, "active": [[*k, *v] for k, v in self._active.items()],
            "counters": dict(self.counters),
        }

    def restore(self, snap: dict[str, Any]) -> None:
        """Load a :meth:`snapshot` into a fresh engine; timers are re-armed from the saved due times.
        State of devices or rules no longer in the catalog is dropped."""
        if snap.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown rule-state snapshot version {snap.get('version')!r}")
        self._started = bool(snap["started"])
        for key, (ts, rx, value) in snap["points"].items():
            device_id, metric = key.split("|", 1)
            p = self._points.get((device_id, metric)) or self._point(device_id, metric)
            if p is not None:
                p.ts, p.rx, p.value = int(ts), int(rx), value
        evals = snap["evals"]
        for p in self._points.values():
            for e in p.evals:
                if e.key in evals:
                    e.load(evals[e.key])
                    if isinstance(e, _HeldEval | _SilenceEval | _MaintenanceEval):
                        e.point = p
                    if isinstance(e, _Timed) and e.due:
                        self._arm(e, e.due)
        dues: dict[str, int] = {}
        for device_id, (last_rx, silent, unreach, link_down, on, due) in snap["devices"].items():
            dev = self._devs.get(device_id)
            if dev is None:
                continue
            dev.last_rx, dev.silent, dev.unreachable = int(last_rx), bool(silent), bool(unreach)
            dev.link_down, dev.offline_on = link_down, bool(on)
            dues[device_id] = int(due)
            if link_down is not None:
                self._link_members.setdefault(link_down, [])
                if dev not in self._link_members[link_down]:
                    self._link_members[link_down].append(dev)
        if self._started:
            for dev in self._devs.values():
                if dev.timeout_ms and not dev.silent:
                    self._arm(dev, dues.get(dev.device_id) or dev.last_rx + dev.timeout_ms)
        for site_id, (since, due, active, running) in snap["pumps"].items():
            pump = self._pumps.get(site_id)
            if pump is not None:
                pump.since, pump.active, pump.running = int(since), bool(active), set(running)
                if due:
                    self._arm(pump, int(due))
        self._links_down = set(snap["links_down"])
        self._sources_down = set(snap["sources_down"])
        self._source_up_at = {k: int(v) for k, v in snap["source_up_at"].items()}
        for device_id, (site_id, times, active) in snap["false_alarms"].items():
            fa = self._false[device_id] = _FalseAlarms(site_id, device_id)
            fa.times.extend(int(t) for t in times)
            fa.active = bool(active)
            if fa.times:
                rule = self._site_rules.get(site_id, SiteRules()).false_alarms
                self._arm(fa, fa.times[0] + int(rule.window_s * 1000))
        for m in snap["modes"]:
            data = {k: v for k, v in m.items() if k != "type"}
            mode: TestMode | Shield = TestMode(**data) if m["type"] == "test" else Shield(**data)
            self._modes.setdefault(mode.device_id, {})[mode.point or ""] = mode
            exp = self._expiries[(mode.device_id, mode.point or "")] = _Expiry(mode)
            self._arm(exp, mode.until_ms)
        self._active = {(a[0], a[1], a[2]): [a[3], a[4]] for a in snap["active"]}
        self.counters.update(snap.get("counters", {}))
