"""The rule engine: readings, reachability and timers in, fire signals and hazard conditions out.

Pure and synchronous: no I/O, no asyncio, no wall clock. Every method takes ``now_ms`` (the gateway's
clock, UTC epoch ms) and returns the :mod:`effects <gateway.rules.effects>` it caused; the caller
commits them and feeds them to :class:`gateway.hazards.lifecycle.Workflow`.

This module owns dispatch and the timer heap, and wires the rest of the package together:

=======================  ==================================================================================
:mod:`.context`          what a rule sees of the engine (:class:`~gateway.rules.context.RuleContext`)
:mod:`.evaluators`       point rules (event, threshold, state held, rate, stuck, no data, maintenance)
:mod:`.correlations`     site rules (pump start, dual power loss, false alarms)
:mod:`.reachability`     offline devices, links and sources down, unreadable points
:mod:`.emit`             the way out: standing conditions, and the test-mode/shield guard on each effect
:mod:`.modes`            test mode and shields: in force, logged, expiring, releasing what they held
:mod:`.state`            snapshot and restore
=======================  ==================================================================================

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
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from gateway.models import Quality, Reading
from gateway.profiles.loader import Catalog
from gateway.profiles.models import Device, Profile, Site
from gateway.rules import state
from gateway.rules.context import Evaluator, HazardMeta, PointState, RuleContext, Timed, hazard_meta
from gateway.rules.correlations import SiteCorrelations
from gateway.rules.effects import Effect
from gateway.rules.emit import Emitter
from gateway.rules.evaluators import EventEval, point_evaluator
from gateway.rules.modes import Mode, Modes
from gateway.rules.reachability import Reachability, TrackedDevice, heard_again, link_of
from gateway.rules.spec import (
    AnyRule,
    EventRule,
    NoDataRule,
    Shield,
    SiteRules,
    TestMode,
    effective_rules,
    expected_interval_s,
    title_for,
)
from gateway.rules.state import SNAPSHOT_VERSION

__all__ = ["CLOCK_RESET_MS", "SNAPSHOT_VERSION", "RuleEngine", "RulesFor", "SiteRulesFor", "SourceOf"]

#: A reading this much older than the last one, received later, means the device clock was reset.
CLOCK_RESET_MS = 600_000

RulesFor = Callable[[Device, Profile], Sequence[AnyRule]]
SiteRulesFor = Callable[[Site], SiteRules]
SourceOf = Callable[[Device, Profile], str]


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

    def __init__(
        self,
        catalog: Catalog,
        *,
        rules_for: RulesFor | None = None,
        site_rules_for: SiteRulesFor | None = None,
        source_of: SourceOf | None = None,
    ) -> None:
        self._catalog = catalog
        self._rules_for = rules_for
        self._heap: list[tuple[int, int, Timed]] = []
        self._seq = itertools.count()
        self._started = False
        self._points: dict[tuple[str, str], PointState] = {}
        self._devs: dict[str, TrackedDevice] = {}
        self._plans: dict[str, dict[str, list[AnyRule]]] = {}
        self._profile_rules: dict[str, list[AnyRule]] = {}
        self._nodata: dict[int, tuple[int, HazardMeta]] = {}
        self._metas: dict[tuple[str, str], HazardMeta] = {}
        self._shared: dict[int, EventEval] = {}
        self.counters: dict[str, int] = {"stale": 0, "unknown_device": 0, "clock_reset": 0, "missing": 0}

        site_rules: dict[str, SiteRules] = {}
        for site in catalog.inventory.sites:
            sr = site_rules_for(site) if site_rules_for else getattr(site, "rules", None)
            site_rules[site.site_id] = sr if isinstance(sr, SiteRules) else SiteRules()
        offline_meta = hazard_meta("offline", "offline", "minor", title_for(NoDataRule(), None), False, False)
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
                    if nd.name or nd.title or nd.severity != "minor" or nd.hazard_class or nd.hard or nd.auto_close:
                        meta = self._meta_of(profile, nd)
                nodata = (timeout, meta)
                if rules is self._profile_rules.get(profile.profile):
                    self._nodata[id(rules)] = nodata
            self._devs[device.device_id] = TrackedDevice(
                device.device_id, device.site_id, profile, source, link_of(device), nodata[0], nodata[1]
            )

        self._reach = Reachability(self._devs, self.counters)
        guards: dict[str, dict[str, Mode]] = {}
        self._emit = Emitter(guards)
        self._ctx = RuleContext(
            arm=self._arm,
            condition=self._emit.condition,
            site_condition=self._emit.site_condition,
            fire_signal=self._emit.fire_signal,
            sources_down=self._reach.sources_down,
            source_up_at=self._reach.source_up_at,
        )
        self._sites = SiteCorrelations(site_rules, self._devs.values(), self._ctx)
        self._emit.on_alarm = self._sites.alarm_seen
        self._modes = Modes(self._devs, self._emit, guards)

    # ------------------------------------------------------------------ compiling a point

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

    def _meta_of(self, profile: Profile, rule: AnyRule) -> HazardMeta:
        key = (profile.profile, f"{rule.id}:{id(rule)}")
        m = self._metas.get(key)
        if m is None:
            point = profile.point(getattr(rule, "point", None) or "")
            title = title_for(rule, point, profile)
            m = hazard_meta(rule.id, rule.klass, rule.severity, title, rule.hard, rule.auto_close)
            self._metas[key] = m
        return m

    def _plan(self, dev: TrackedDevice) -> dict[str, list[AnyRule]]:
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

    def _point(self, device_id: str, metric: str) -> PointState | None:
        """Compile the dispatch list of a point on its first reading (None: unknown device)."""
        dev = self._devs.get(device_id)
        if dev is None:
            return None
        p = PointState(dev, metric)
        evals: list[Evaluator] = []
        for rule in self._plan(dev).get(metric, ()):
            meta = self._meta_of(dev.profile, rule)
            if isinstance(rule, EventRule):
                shared = self._shared.get(id(rule))
                if shared is None:
                    shared = self._shared[id(rule)] = EventEval(rule, meta)
                evals.append(shared)
            else:
                evals.append(point_evaluator(rule, meta, f"{device_id}|{rule.id}", dev.profile))
        evals.extend(self._sites.evaluators(dev, metric))
        p.evals = tuple(evals)
        dev.add_point(p)
        self._points[(device_id, metric)] = p
        return p

    # ------------------------------------------------------------------ timers

    def _arm(self, obj: Timed, due: int) -> None:
        obj.due = due
        heapq.heappush(self._heap, (due, next(self._seq), obj))

    def _start(self, now_ms: int) -> None:
        if self._started:
            return
        self._started = True
        self._reach.start(self._ctx, now_ms)

    def tick(self, now_ms: int) -> list[Effect]:
        """Fire every timer due at ``now_ms``. Costs O(due timers); a clock that went back fires nothing."""
        self._start(now_ms)
        out: list[Effect] = []
        heap = self._heap
        ctx = self._ctx
        while heap and heap[0][0] <= now_ms:
            due, _, obj = heapq.heappop(heap)
            if obj.due != due:
                continue  # cancelled or re-armed
            obj.due = 0
            obj.fire(ctx, now_ms, out)
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
        ctx = self._ctx
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
                    heard_again(ctx, dev, r.ts_ms, r.received_at_ms, out)
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
                e.feed(ctx, p, r, prev, prev_ts, out)
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
        self._reach.on_status(self._ctx, changes, now_ms, out)
        return out

    def on_source(self, source_name: str, connected: bool, now_ms: int) -> list[Effect]:
        """The gateway's own connection to a source (the MQTT broker) went down or came back."""
        self._start(now_ms)
        out: list[Effect] = []
        self._reach.on_source(source_name, connected, now_ms, out)
        return out

    def on_fire_resolved(self, site_id: str, device_id: str, resolution: str, now_ms: int) -> list[Effect]:
        """A fire event was resolved; false alarms are counted per device in a rolling window (C8)."""
        self._start(now_ms)
        out: list[Effect] = []
        if resolution == "false_alarm":
            self._sites.false_alarm(site_id, device_id, now_ms, out)
        return out

    # ------------------------------------------------------------------ test mode and shields

    def set_test_mode(self, mode: TestMode, now_ms: int) -> list[Effect]:
        """Put a device (or one point) under test until ``mode.until_ms``."""
        self._start(now_ms)
        out: list[Effect] = []
        self._modes.set(self._ctx, mode, "test_on", now_ms, out)
        return out

    def set_shield(self, shield: Shield, now_ms: int) -> list[Effect]:
        """Shield (屏蔽) a device (or one point) until ``shield.until_ms``."""
        self._start(now_ms)
        out: list[Effect] = []
        self._modes.set(self._ctx, shield, "shield_on", now_ms, out)
        return out

    def end_mode(self, device_id: str, point: str | None, actor: str, now_ms: int) -> list[Effect]:
        """End the test mode or shield of a device/point early; conditions still active are raised now."""
        out: list[Effect] = []
        mode = self._modes.get(device_id, point)
        if mode is not None:
            self._modes.end(mode, actor, now_ms, out, expired=False)
        return out

    # ------------------------------------------------------------------ persistence

    def _parts(self) -> state.EngineParts:
        return state.EngineParts(
            self._ctx,
            self._points,
            self._devs,
            self._point,
            self._reach,
            self._sites,
            self._modes,
            self._emit,
            self.counters,
        )

    def snapshot(self) -> dict[str, Any]:
        """All rule state as JSON-able data, for :meth:`restore` into an engine of the same catalog
        (the format: :mod:`gateway.rules.state`)."""
        return state.snapshot(self._parts(), self._started)

    def restore(self, snap: dict[str, Any]) -> None:
        """Load a :meth:`snapshot` into a fresh engine; timers are re-armed from the saved due times.
        State of devices or rules no longer in the catalog is dropped."""
        self._started = state.restore(self._parts(), snap)
