"""The way out of the engine: conditions and fire signals become effects here, past the mode guard.

:class:`Emitter` keeps the table of standing conditions, keyed like hazards (site, device, rule), with
the metric that raised each and how it went out (plainly, as a test record, or suppressed by a shield),
so that a condition ends the way it was raised and an end with nothing standing emits nothing. Every
device condition and fire signal passes the guard of its device or point (:mod:`gateway.rules.modes`
keeps the test modes and shields themselves): under test mode it becomes a
:class:`~gateway.rules.effects.TestRecord`, under a shield a ``suppressed``
:class:`~gateway.rules.effects.ShieldLog`. A fire signal that goes out plainly is also told to the site
correlations (``on_alarm``: a fire alarm may be a pump start trigger).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gateway.rules.context import DeviceState, HazardMeta, PointState, point_evidence
from gateway.rules.effects import Effect, Evidence, FireSignal, ShieldLog, TestRecord
from gateway.rules.spec import Shield, TestMode

__all__ = ["ActiveKey", "Emitter", "Guards", "guard_of"]

#: Test modes and shields in force: device id -> point ("" for the whole device) -> the mode.
Guards = Mapping[str, Mapping[str, TestMode | Shield]]
#: A standing condition: (site_id, device_id, rule).
ActiveKey = tuple[str, str, str]


def guard_of(guards: Guards, device_id: str, metric: str | None) -> TestMode | Shield | None:
    """The test mode or shield over a device's point (a point's own before the whole device's)."""
    modes = guards.get(device_id)
    if not modes:
        return None
    return (modes.get(metric) if metric else None) or modes.get("")


class Emitter:
    """Emits conditions and fire signals (the ``condition``, ``site_condition`` and ``fire_signal`` of
    :class:`~gateway.rules.context.RuleContext`).

    Args:
        guards: the test modes and shields in force (owned and changed by :class:`~gateway.rules.modes.Modes`).
    """

    __slots__ = ("active", "guards", "on_alarm")

    def __init__(self, guards: Guards) -> None:
        self.guards = guards
        # (site, device, rule) -> [metric, how it was emitted: "" | "test" | "shield"]
        self.active: dict[ActiveKey, list[str]] = {}
        self.on_alarm: Callable[[PointState, int], None] | None = None

    def fire_signal(self, p: PointState, rule: str, at_ms: int, test: bool, out: list[Effect]) -> None:
        dev = p.dev
        ev = point_evidence(p)
        guard = guard_of(self.guards, dev.device_id, p.metric) if self.guards else None
        if guard is None:
            out.append(FireSignal(dev.site_id, dev.device_id, p.metric, rule, at_ms, test, ev))
        elif isinstance(guard, TestMode):
            out.append(
                TestRecord(
                    dev.site_id,
                    dev.device_id,
                    p.metric,
                    rule,
                    at_ms,
                    "fire_event",
                    True,
                    guard.reason,
                    guard.actor,
                    [ev],
                )
            )
        else:
            out.append(
                ShieldLog(
                    dev.site_id,
                    dev.device_id,
                    p.metric,
                    "suppressed",
                    at_ms,
                    guard.actor,
                    guard.reason,
                    guard.until_ms,
                    rule,
                )
            )
        if self.on_alarm is not None and not test and guard is None:
            self.on_alarm(p, at_ms)

    def condition(
        self,
        dev: DeviceState,
        meta: HazardMeta,
        active: bool,
        at_ms: int,
        metric: str | None,
        evidence: list[Evidence],
        out: list[Effect],
    ) -> None:
        key = (dev.site_id, dev.device_id, meta.rule)
        if active:
            guard = guard_of(self.guards, dev.device_id, metric) if self.guards else None
            how = "" if guard is None else ("test" if isinstance(guard, TestMode) else "shield")
            self.active[key] = [metric or "", how]
            if guard is not None:
                self._guarded(dev, meta, True, at_ms, metric, evidence, guard, out)
                return
        else:
            entry = self.active.pop(key, None)
            if entry is None:
                return
            if entry[1]:
                guard = guard_of(self.guards, dev.device_id, metric)
                if guard is not None:
                    self._guarded(dev, meta, False, at_ms, metric, evidence, guard, out)
                return
        out.append(meta.condition(dev.site_id, dev.device_id, active, at_ms, evidence))

    @staticmethod
    def _guarded(
        dev: DeviceState,
        meta: HazardMeta,
        active: bool,
        at_ms: int,
        metric: str | None,
        evidence: list[Evidence],
        guard: TestMode | Shield,
        out: list[Effect],
    ) -> None:
        if isinstance(guard, TestMode):
            out.append(
                TestRecord(
                    dev.site_id,
                    dev.device_id,
                    metric or "",
                    meta.rule,
                    at_ms,
                    "hazard",
                    active,
                    guard.reason,
                    guard.actor,
                    evidence,
                )
            )
        elif active:
            out.append(
                ShieldLog(
                    dev.site_id,
                    dev.device_id,
                    metric,
                    "suppressed",
                    at_ms,
                    guard.actor,
                    guard.reason,
                    guard.until_ms,
                    meta.rule,
                )
            )

    def site_condition(
        self,
        site_id: str,
        device_id: str,
        meta: HazardMeta,
        active: bool,
        at_ms: int,
        evidence: list[Evidence],
        out: list[Effect],
    ) -> None:
        key = (site_id, device_id, meta.rule)
        if active:
            self.active[key] = ["", ""]
        elif self.active.pop(key, None) is None:
            return
        out.append(meta.condition(site_id, device_id, active, at_ms, evidence))

    def release(
        self, key: ActiveKey, meta: HazardMeta, at_ms: int, evidence: list[Evidence], out: list[Effect]
    ) -> None:
        """A standing condition that a mode held back goes out now, as raised plainly."""
        self.active[key][1] = ""
        out.append(meta.condition(key[0], key[1], True, at_ms, evidence))
