"""Point rules: one evaluator per (device, rule) that watches a single point (design.md §4).

Each class here turns one rule kind of :mod:`gateway.rules.spec` into state that a reading of its point
moves (``feed``) and, for rules that wait, a timer (``fire``). Evaluators see the engine only through
the :class:`~gateway.rules.context.RuleContext` they are handed: they arm timers and emit conditions or
fire signals, and keep their own state in slots (``dump``/``load`` for snapshots).

=====================  =============================================================================
:class:`EventEval`     ``event``: a point takes a value → a fire signal or a condition (stateless:
                       one instance serves every device of a profile; the previous value is the point's)
:class:`HeldEval`      beyond a limit, or in a state, continuously for ``hold_s``; clears when ``ok``
                       (``threshold`` :class:`ThresholdEval`, ``state_held`` :class:`StateEval`)
:class:`RateEval`      ``rate_of_change`` between consecutive readings
:class:`StuckEval`     ``stuck``: one value (within a tolerance) for a time and a number of readings
:class:`SilenceEval`   ``no_data`` of one point (a whole device's is its reachability)
:class:`MaintenanceEval` ``maintenance``: a record at least every ``max_interval_s``
=====================  =============================================================================
"""

from __future__ import annotations

from typing import Any

from gateway.models import Reading, Value
from gateway.profiles.models import Profile
from gateway.rules.context import Evaluator, HazardMeta, PointState, RuleContext, Timed, point_evidence, truthy
from gateway.rules.effects import Effect
from gateway.rules.spec import (
    AnyRule,
    EventRule,
    MaintenanceRule,
    NoDataRule,
    RateOfChangeRule,
    StateHeldRule,
    StuckRule,
    ThresholdRule,
    expected_interval_s,
)

__all__ = [
    "EventEval",
    "HeldEval",
    "MaintenanceEval",
    "RateEval",
    "SilenceEval",
    "StateEval",
    "StuckEval",
    "ThresholdEval",
    "point_evaluator",
]


class EventEval(Evaluator):
    """Stateless (the previous value lives in the point): shared by every device of a profile."""

    __slots__ = ("each", "equals", "fire_event", "meta", "test_point")

    def __init__(self, rule: EventRule, meta: HazardMeta) -> None:
        self.meta = meta
        self.equals = rule.equals
        self.fire_event = rule.opens == "fire_event"
        self.each = rule.trigger == "each"
        self.test_point = rule.test_point

    def _match(self, v: Value | None) -> bool:
        if v is None:
            return False
        return bool(v) if self.equals is None else v == self.equals

    def feed(
        self, ctx: RuleContext, p: PointState, r: Reading, prev: Value | None, prev_ts: int, out: list[Effect]
    ) -> None:
        if self._match(r.value):
            if self.each or not self._match(prev):
                if self.fire_event:
                    test = False
                    if self.test_point is not None:
                        tp = p.dev.points.get(self.test_point)
                        test = tp is not None and tp.value is True
                    ctx.fire_signal(p, self.meta.rule, r.ts_ms, test, out)
                else:
                    ctx.condition(p.dev, self.meta, True, r.ts_ms, p.metric, [point_evidence(p)], out)
        elif not self.fire_event and self._match(prev):
            ctx.condition(p.dev, self.meta, False, r.ts_ms, p.metric, [point_evidence(p)], out)


_NORMAL, _PENDING, _ACTIVE = 0, 1, 2


class HeldEval(Timed, Evaluator):
    """Beyond a limit (or in a state) continuously for ``hold_ms``; clears when ``ok`` (hysteresis).

    A hold that completes fires from the timer (gateway clock, armed from the receive time) or is
    recognised from a later reading's ``ts_ms`` (so a replayed backlog trips it).
    """

    __slots__ = ("hold_ms", "key", "meta", "point", "since", "state")

    def __init__(self, meta: HazardMeta, hold_s: float, key: str) -> None:
        super().__init__()
        self.meta = meta
        self.hold_ms = int(hold_s * 1000)
        self.key = key
        self.state = _NORMAL
        self.since = 0
        self.point: PointState | None = None

    def judge(self, p: PointState) -> tuple[bool, bool]:
        """(violated, ok) for the point's current value."""
        raise NotImplementedError

    def feed(
        self, ctx: RuleContext, p: PointState, r: Reading, prev: Value | None, prev_ts: int, out: list[Effect]
    ) -> None:
        self.point = p
        viol, ok = self.judge(p)
        ts = r.ts_ms
        if self.state == _ACTIVE:
            if ok:
                self.state = _NORMAL
                ctx.condition(p.dev, self.meta, False, ts, p.metric, [point_evidence(p)], out)
        elif self.state == _PENDING:
            if not viol:
                self.state, self.due = _NORMAL, 0
            else:
                self.since = min(self.since, ts)  # device clock reset
                if ts - self.since >= self.hold_ms:
                    self._activate(ctx, self.since + self.hold_ms, out)
        elif viol:
            if self.hold_ms == 0:
                self._activate(ctx, ts, out)
            else:
                self.state, self.since = _PENDING, ts
                ctx.arm(self, r.received_at_ms + self.hold_ms)

    def _activate(self, ctx: RuleContext, at_ms: int, out: list[Effect]) -> None:
        assert self.point is not None
        self.state, self.due = _ACTIVE, 0
        ctx.condition(self.point.dev, self.meta, True, at_ms, self.point.metric, [point_evidence(self.point)], out)

    def fire(self, ctx: RuleContext, now_ms: int, out: list[Effect]) -> None:
        if self.state == _PENDING:
            self._activate(ctx, self.since + self.hold_ms, out)

    def dump(self) -> list[Any] | None:
        return [self.state, self.since, self.due] if self.state != _NORMAL else None

    def load(self, state: list[Any], p: PointState) -> None:
        self.state, self.since, self.due = int(state[0]), int(state[1]), int(state[2])
        self.point = p


class ThresholdEval(HeldEval):
    __slots__ = ("below", "clear", "limit")

    def __init__(self, rule: ThresholdRule, meta: HazardMeta, key: str) -> None:
        super().__init__(meta, rule.hold_s, key)
        self.below = rule.below is not None
        self.limit = rule.limit
        self.clear = rule.clear

    def judge(self, p: PointState) -> tuple[bool, bool]:
        v = p.value
        if not isinstance(v, int | float) or isinstance(v, bool):
            return False, False
        if self.below:
            return v < self.limit, v >= self.clear
        return v > self.limit, v <= self.clear


class StateEval(HeldEval):
    __slots__ = ("negate", "value")

    def __init__(self, rule: StateHeldRule, meta: HazardMeta, key: str) -> None:
        super().__init__(meta, rule.hold_s, key)
        self.negate = rule.value is None
        self.value = rule.not_value if self.negate else rule.value

    def judge(self, p: PointState) -> tuple[bool, bool]:
        match = (p.value != self.value) if self.negate else (p.value == self.value)
        return match, not match


class RateEval(Evaluator):
    __slots__ = ("active", "key", "max_change", "meta", "per_ms")

    def __init__(self, rule: RateOfChangeRule, meta: HazardMeta, key: str) -> None:
        self.meta, self.max_change, self.per_ms, self.key = meta, rule.max_change, rule.per_s * 1000, key
        self.active = False

    def feed(
        self, ctx: RuleContext, p: PointState, r: Reading, prev: Value | None, prev_ts: int, out: list[Effect]
    ) -> None:
        v = r.value
        if not isinstance(prev, int | float) or not isinstance(v, int | float) or r.ts_ms <= prev_ts:
            return
        change = abs(v - prev) * self.per_ms / (r.ts_ms - prev_ts)
        too_fast = change > self.max_change
        if too_fast != self.active:
            self.active = too_fast
            ev = [point_evidence(p), {"previous": prev, "previous_ts_ms": prev_ts, "change_per_period": change}]
            ctx.condition(p.dev, self.meta, too_fast, r.ts_ms, p.metric, ev, out)

    def dump(self) -> list[Any] | None:
        return [1] if self.active else None

    def load(self, state: list[Any], p: PointState) -> None:
        self.active = bool(state[0])


class StuckEval(Evaluator):
    __slots__ = ("active", "for_ms", "key", "meta", "min_samples", "ref", "samples", "since", "tol")

    def __init__(self, rule: StuckRule, meta: HazardMeta, key: str) -> None:
        self.meta, self.for_ms, self.min_samples, self.tol = (
            meta,
            int(rule.for_s * 1000),
            rule.min_samples,
            rule.tolerance,
        )
        self.key = key
        self.ref: float | None = None
        self.since = 0
        self.samples = 0
        self.active = False

    def feed(
        self, ctx: RuleContext, p: PointState, r: Reading, prev: Value | None, prev_ts: int, out: list[Effect]
    ) -> None:
        v = r.value
        if not isinstance(v, int | float):
            return
        if self.ref is not None and abs(v - self.ref) <= self.tol:
            self.samples += 1
            self.since = min(self.since, r.ts_ms)
            if not self.active and self.samples >= self.min_samples and r.ts_ms - self.since >= self.for_ms:
                self.active = True
                ev = [point_evidence(p), {"since_ts_ms": self.since, "samples": self.samples}]
                ctx.condition(p.dev, self.meta, True, r.ts_ms, p.metric, ev, out)
            return
        if self.active:
            self.active = False
            ctx.condition(p.dev, self.meta, False, r.ts_ms, p.metric, [point_evidence(p)], out)
        self.ref, self.since, self.samples = float(v), r.ts_ms, 1

    def dump(self) -> list[Any] | None:
        return None if self.ref is None else [self.ref, self.since, self.samples, int(self.active)]

    def load(self, state: list[Any], p: PointState) -> None:
        self.ref, self.since, self.samples, self.active = float(state[0]), int(state[1]), int(state[2]), bool(state[3])


class SilenceEval(Timed, Evaluator):
    """``no_data`` for one point (the device-level one is :class:`gateway.rules.reachability.TrackedDevice`).

    Silence is not counted while the gateway's own source is down or the device's link is down, and a
    source that came back restarts the period from that moment.
    """

    __slots__ = ("active", "key", "last_rx", "meta", "point", "timeout_ms")

    def __init__(self, meta: HazardMeta, timeout_ms: int, key: str) -> None:
        super().__init__()
        self.meta, self.timeout_ms, self.key = meta, timeout_ms, key
        self.last_rx = 0
        self.active = False
        self.point: PointState | None = None

    def feed(
        self, ctx: RuleContext, p: PointState, r: Reading, prev: Value | None, prev_ts: int, out: list[Effect]
    ) -> None:
        self.point = p
        self.last_rx = max(self.last_rx, r.received_at_ms)
        if self.active:
            self.active = False
            ctx.condition(p.dev, self.meta, False, r.ts_ms, p.metric, [point_evidence(p)], out)
        if not self.due:
            ctx.arm(self, self.last_rx + self.timeout_ms)

    def fire(self, ctx: RuleContext, now_ms: int, out: list[Effect]) -> None:
        assert self.point is not None
        dev = self.point.dev
        base = max(self.last_rx, ctx.source_up_at.get(dev.source, 0))
        if dev.source in ctx.sources_down or dev.link_down is not None or base + self.timeout_ms > now_ms:
            ctx.arm(self, max(base + self.timeout_ms, now_ms + 1))
            return
        self.active = True
        ctx.condition(
            dev,
            self.meta,
            True,
            now_ms,
            self.point.metric,
            [{"last_received_ms": self.last_rx, "timeout_ms": self.timeout_ms}],
            out,
        )

    def dump(self) -> list[Any] | None:
        return [self.last_rx, int(self.active), self.due]

    def load(self, state: list[Any], p: PointState) -> None:
        self.last_rx, self.active, self.due = int(state[0]), bool(state[1]), int(state[2])
        self.point = p


class MaintenanceEval(Timed, Evaluator):
    """A record (truthy value that changed) at least every ``max_ms``; the first reading starts the clock."""

    __slots__ = ("active", "key", "last_record", "max_ms", "meta", "point")

    def __init__(self, rule: MaintenanceRule, meta: HazardMeta, key: str) -> None:
        super().__init__()
        self.meta, self.max_ms, self.key = meta, int(rule.max_interval_s * 1000), key
        self.last_record = -1
        self.active = False
        self.point: PointState | None = None

    def feed(
        self, ctx: RuleContext, p: PointState, r: Reading, prev: Value | None, prev_ts: int, out: list[Effect]
    ) -> None:
        self.point = p
        record = truthy(r.value) and prev is not None and r.value != prev
        if record or self.last_record < 0:
            self.last_record = r.ts_ms
            if self.active:
                self.active = False
                ctx.condition(p.dev, self.meta, False, r.ts_ms, p.metric, [point_evidence(p)], out)
            ctx.arm(self, r.received_at_ms + self.max_ms)

    def fire(self, ctx: RuleContext, now_ms: int, out: list[Effect]) -> None:
        assert self.point is not None
        self.active = True
        ctx.condition(
            self.point.dev,
            self.meta,
            True,
            now_ms,
            self.point.metric,
            [{"last_record_ts_ms": self.last_record, "max_interval_ms": self.max_ms}],
            out,
        )

    def dump(self) -> list[Any] | None:
        return [self.last_record, int(self.active), self.due]

    def load(self, state: list[Any], p: PointState) -> None:
        self.last_record, self.active, self.due = int(state[0]), bool(state[1]), int(state[2])
        self.point = p


def point_evaluator(rule: AnyRule, meta: HazardMeta, key: str, profile: Profile) -> Evaluator:
    """A fresh evaluator of one device's rule (``key``: ``device_id|rule id``, its snapshot name).
    ``event`` rules give an :class:`EventEval`, which the engine shares across a profile's devices."""
    if isinstance(rule, ThresholdRule):
        return ThresholdEval(rule, meta, key)
    if isinstance(rule, StateHeldRule):
        return StateEval(rule, meta, key)
    if isinstance(rule, RateOfChangeRule):
        return RateEval(rule, meta, key)
    if isinstance(rule, StuckRule):
        return StuckEval(rule, meta, key)
    if isinstance(rule, MaintenanceRule):
        return MaintenanceEval(rule, meta, key)
    if isinstance(rule, NoDataRule):
        interval = rule.cadence_s or expected_interval_s(profile)
        return SilenceEval(meta, int(interval * rule.cadence_multiple * 1000), key)
    return EventEval(rule, meta)
