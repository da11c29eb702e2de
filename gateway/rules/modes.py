"""Test mode and shielding (屏蔽) of a device or one point, for a limited time.

:class:`Modes` keeps the modes in force (the ``guards`` that :class:`~gateway.rules.emit.Emitter`
applies to everything that goes out), logs each change as a :class:`~gateway.rules.effects.ShieldLog`
(``test_on``/``test_off``/``test_expired``, ``shield_on``/``shield_off``/``shield_expired``), ends a
mode when its ``until_ms`` falls due (:class:`Expiry`, a timer), and when a mode ends raises at once the
conditions that are still standing under it: a shielded fault that is still there is a hazard now.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.rules.context import DeviceState, HazardMeta, RuleContext, Timed, point_evidence
from gateway.rules.effects import Effect, ShieldAction, ShieldLog
from gateway.rules.emit import Emitter, guard_of
from gateway.rules.reachability import POINTS_UNREADABLE
from gateway.rules.spec import Shield, TestMode

__all__ = ["Expiry", "Mode", "Modes", "meta_for_rule"]

#: A test mode or a shield.
Mode = TestMode | Shield


class Expiry(Timed):
    """The end of one mode at its ``until_ms``."""

    __slots__ = ("mode", "modes")

    def __init__(self, mode: Mode, modes: Modes) -> None:
        super().__init__()
        self.mode, self.modes = mode, modes

    def fire(self, ctx: RuleContext, now_ms: int, out: list[Effect]) -> None:
        self.modes.end(self.mode, "system", now_ms, out, expired=True)


def meta_for_rule(dev: DeviceState, rule_id: str) -> HazardMeta | None:
    """What a condition of one of the device's rules looks like (None: no such rule any more)."""
    if rule_id == dev.offline_meta.rule:
        return dev.offline_meta
    if rule_id == POINTS_UNREADABLE.rule:
        return POINTS_UNREADABLE
    for p in dev.points.values():
        for e in p.evals:
            meta = getattr(e, "meta", None)
            if isinstance(meta, HazardMeta) and meta.rule == rule_id:
                return meta
    return None


class Modes:
    """The test modes and shields in force, and their expiry timers.

    Args:
        devices: every device by id (shared with the engine).
        emitter: where standing conditions are kept and released when a mode ends.
    """

    __slots__ = ("devices", "emitter", "expiries", "guards")

    def __init__(
        self, devices: Mapping[str, DeviceState], emitter: Emitter, guards: dict[str, dict[str, Mode]]
    ) -> None:
        self.devices = devices
        self.emitter = emitter
        self.guards = guards  # device id -> point ("" = whole device) -> mode; the emitter reads it
        self.expiries: dict[tuple[str, str], Expiry] = {}

    def add(self, ctx: RuleContext, mode: Mode) -> None:
        """Put a mode in force (replacing one on the same device/point) and arm its expiry."""
        self.guards.setdefault(mode.device_id, {})[mode.point or ""] = mode
        exp = self.expiries[(mode.device_id, mode.point or "")] = Expiry(mode, self)
        ctx.arm(exp, mode.until_ms)

    def set(self, ctx: RuleContext, mode: Mode, action: ShieldAction, now_ms: int, out: list[Effect]) -> None:
        dev = self.devices.get(mode.device_id)
        site = dev.site_id if dev else ""
        self.add(ctx, mode)
        out.append(ShieldLog(site, mode.device_id, mode.point, action, now_ms, mode.actor, mode.reason, mode.until_ms))

    def get(self, device_id: str, point: str | None) -> Mode | None:
        return self.guards.get(device_id, {}).get(point or "")

    def end(self, mode: Mode, actor: str, now_ms: int, out: list[Effect], *, expired: bool) -> None:
        slot = mode.point or ""
        modes = self.guards.get(mode.device_id, {})
        if modes.get(slot) is not mode:
            return
        del modes[slot]
        if not modes:
            self.guards.pop(mode.device_id, None)
        exp = self.expiries.pop((mode.device_id, slot), None)
        if exp is not None:
            exp.due = 0
        dev = self.devices.get(mode.device_id)
        site = dev.site_id if dev else ""
        is_test = isinstance(mode, TestMode)
        action: ShieldAction = (
            ("test_expired" if expired else "test_off") if is_test else ("shield_expired" if expired else "shield_off")
        )
        out.append(ShieldLog(site, mode.device_id, mode.point, action, now_ms, actor, mode.reason, mode.until_ms))
        # conditions that are still active under the ended mode are raised now
        if dev is None:
            return
        for key, (metric, how) in list(self.emitter.active.items()):
            if (
                key[1] == mode.device_id
                and how
                and (mode.point is None or metric == mode.point)
                and guard_of(self.guards, mode.device_id, metric) is None
            ):
                p = dev.points.get(metric)
                meta = meta_for_rule(dev, key[2])
                if meta is not None:
                    self.emitter.release(key, meta, now_ms, [point_evidence(p)] if p else [], out)
