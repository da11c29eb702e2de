"""Site correlations: rules across the devices of a site or over time (``Site.rules``, design.md §4).

=================  ================================================================================
pump start         a start trigger (pressure / flow switch, or a fire alarm when ``alarm_triggers``)
                   must see some pump run point true within ``limit_s`` (GB 50974 11.0.3), else one
                   critical ``pump_start`` condition for the site (:class:`PumpSite`)
dual power loss    main and backup power of one device both lost (:class:`DualPowerEval`, shared by
                   the two points)
false alarms       more than ``max_per_day`` fire events of one device resolved as false alarm in the
                   rolling window (C8) (:class:`FalseAlarms`)
=================  ================================================================================

:class:`SiteCorrelations` holds them for every site; it gives the engine the extra evaluators a point
takes part in (:meth:`SiteCorrelations.evaluators`), hears of fire signals that went out
(:meth:`SiteCorrelations.alarm_seen`) and of fire events resolved as false alarms. Like point rules, it
sees the engine only through the :class:`~gateway.rules.context.RuleContext`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from gateway.models import Reading, Value
from gateway.rules.context import (
    DeviceState,
    Evaluator,
    HazardMeta,
    PointState,
    RuleContext,
    Timed,
    hazard_meta,
    truthy,
)
from gateway.rules.effects import Effect, Evidence
from gateway.rules.evaluators import HeldEval
from gateway.rules.spec import DualPowerLossRule, FalseAlarmsRule, PumpStartRule, SiteRules, Title

__all__ = ["DualPowerEval", "FalseAlarms", "PumpSite", "SiteCorrelations"]


class PumpSite(Timed):
    """Pump start correlation for one site: a trigger must see a run point true within the limit."""

    __slots__ = ("active", "meta", "rule", "running", "since", "site_id")

    def __init__(self, site_id: str, rule: PumpStartRule, meta: HazardMeta) -> None:
        super().__init__()
        self.site_id, self.rule, self.meta = site_id, rule, meta
        self.running: set[str] = set()  # "device/point" currently true
        self.since = -1  # trigger time (device clock) while pending
        self.active = False

    def trigger(self, ctx: RuleContext, ts_ms: int, rx_ms: int) -> None:
        if self.running or self.since >= 0 or self.active:
            return
        self.since = ts_ms
        ctx.arm(self, rx_ms + int(self.rule.limit_s * 1000))

    def run_changed(self, ctx: RuleContext, who: str, running: bool, ts_ms: int, out: list[Effect]) -> None:
        if running:
            self.running.add(who)
            self.since, self.due = -1, 0
            if self.active:
                self.active = False
                ev: list[Evidence] = [{"running": who, "ts_ms": ts_ms}]
                ctx.site_condition(self.site_id, "", self.meta, False, ts_ms, ev, out)
        else:
            self.running.discard(who)

    def fire(self, ctx: RuleContext, now_ms: int, out: list[Effect]) -> None:
        if self.since < 0 or self.running:
            return
        ev = [{"trigger_ts_ms": self.since, "limit_s": self.rule.limit_s, "run_points": self.rule.run_points}]
        self.since, self.active = -1, True
        ctx.site_condition(self.site_id, "", self.meta, True, now_ms, ev, out)


class _PumpTriggerEval(Evaluator):
    __slots__ = ("site",)

    def __init__(self, site: PumpSite) -> None:
        self.site = site

    def feed(
        self, ctx: RuleContext, p: PointState, r: Reading, prev: Value | None, prev_ts: int, out: list[Effect]
    ) -> None:
        if truthy(r.value) and not truthy(prev):
            self.site.trigger(ctx, r.ts_ms, r.received_at_ms)


class _PumpRunEval(Evaluator):
    __slots__ = ("site",)

    def __init__(self, site: PumpSite) -> None:
        self.site = site

    def feed(
        self, ctx: RuleContext, p: PointState, r: Reading, prev: Value | None, prev_ts: int, out: list[Effect]
    ) -> None:
        self.site.run_changed(ctx, f"{p.dev.device_id}/{p.metric}", truthy(r.value), r.ts_ms, out)


class DualPowerEval(HeldEval):
    """Attached to both power points of one device; violated while both read ``lost_value``."""

    __slots__ = ("backup", "lost", "main")

    def __init__(self, rule: DualPowerLossRule, meta: HazardMeta, key: str) -> None:
        super().__init__(meta, rule.hold_s, key)
        self.main, self.backup, self.lost = rule.main_point, rule.backup_point, rule.lost_value

    def judge(self, p: PointState) -> tuple[bool, bool]:
        m, b = p.dev.points.get(self.main), p.dev.points.get(self.backup)
        both = m is not None and b is not None and m.value == self.lost and b.value == self.lost
        return both, not both


class FalseAlarms(Timed):
    """Rolling count of the false alarms of one device; forgets itself when the window is empty."""

    __slots__ = ("active", "device_id", "rule", "site_id", "table", "times")

    def __init__(self, site_id: str, device_id: str, rule: FalseAlarmsRule, table: dict[str, FalseAlarms]) -> None:
        super().__init__()
        self.site_id, self.device_id, self.rule, self.table = site_id, device_id, rule, table
        self.times: deque[int] = deque()
        self.active = False

    @property
    def window_ms(self) -> int:
        return int(self.rule.window_s * 1000)

    def count(self, ctx: RuleContext, now_ms: int, out: list[Effect]) -> None:
        rule, window = self.rule, self.window_ms
        while self.times and self.times[0] <= now_ms - window:
            self.times.popleft()
        too_many = rule.enabled and len(self.times) > rule.max_per_day
        if too_many != self.active:
            self.active = too_many
            title = rule.title or Title(
                zh=f"误报过多（24 小时内超过 {rule.max_per_day} 次）",
                en=f"Too many false alarms (more than {rule.max_per_day} in 24 h)",
            )
            meta = hazard_meta("false_alarms", rule.hazard_class, rule.severity, title, rule.hard, rule.auto_close)
            ctx.site_condition(
                self.site_id,
                self.device_id,
                meta,
                too_many,
                now_ms,
                [{"false_alarms": len(self.times), "window_s": rule.window_s}],
                out,
            )
        if self.times:
            ctx.arm(self, self.times[0] + window)
        else:
            self.table.pop(self.device_id, None)

    def fire(self, ctx: RuleContext, now_ms: int, out: list[Effect]) -> None:
        self.count(ctx, now_ms, out)


class SiteCorrelations:
    """Every site's correlation rules and their state.

    Args:
        rules: the correlation settings of each site (sites not listed get :class:`SiteRules` defaults).
        devices: every device; the pump start rule runs only at sites where one has a run point.
        ctx: the context timers and conditions go through (also for :meth:`alarm_seen`).
    """

    __slots__ = ("ctx", "false_alarms", "pumps", "rules")

    def __init__(self, rules: dict[str, SiteRules], devices: Iterable[DeviceState], ctx: RuleContext) -> None:
        self.rules = rules
        self.ctx = ctx
        self.pumps: dict[str, PumpSite] = {}
        self.false_alarms: dict[str, FalseAlarms] = {}
        devs = list(devices)
        for site_id, sr in rules.items():
            ps = sr.pump_start
            if not ps.enabled:
                continue
            has_run = any(d.site_id == site_id and any(d.profile.point(n) for n in ps.run_points) for d in devs)
            if has_run:
                title = ps.title or Title(
                    zh=f"消防泵启泵信号后 {ps.limit_s:g} 秒内未运行",
                    en=f"Fire pump did not start within {ps.limit_s:g} s of a start signal",
                )
                meta = hazard_meta("pump_start", ps.hazard_class, ps.severity, title, ps.hard, ps.auto_close)
                self.pumps[site_id] = PumpSite(site_id, ps, meta)

    def evaluators(self, dev: DeviceState, metric: str) -> list[Evaluator]:
        """The correlation evaluators a point of a device takes part in (the point is being compiled)."""
        evals: list[Evaluator] = []
        pump = self.pumps.get(dev.site_id)
        if pump is not None:
            if metric in pump.rule.trigger_points:
                evals.append(_PumpTriggerEval(pump))
            if metric in pump.rule.run_points:
                evals.append(_PumpRunEval(pump))
        sr = self.rules.get(dev.site_id)
        if (
            sr is not None
            and sr.dual_power_loss.enabled
            and metric in (sr.dual_power_loss.main_point, sr.dual_power_loss.backup_point)
        ):
            dp = sr.dual_power_loss
            if dev.profile.point(dp.main_point) and dev.profile.point(dp.backup_point):
                other = dp.backup_point if metric == dp.main_point else dp.main_point
                op = dev.points.get(other)
                shared = next((e for e in op.evals if isinstance(e, DualPowerEval)), None) if op else None
                if shared is None:
                    title = dp.title or Title(zh="消防主电源与备用电源均失电", en="Main and backup power both lost")
                    meta = hazard_meta("dual_power_loss", dp.hazard_class, dp.severity, title, dp.hard, dp.auto_close)
                    shared = DualPowerEval(dp, meta, f"{dev.device_id}|dual_power_loss")
                evals.append(shared)
        return evals

    def alarm_seen(self, p: PointState, at_ms: int) -> None:
        """A fire signal went out (not a test, not under test mode or shield): a pump start trigger at
        sites whose rule says ``alarm_triggers``."""
        pump = self.pumps.get(p.dev.site_id)
        if pump is not None and pump.rule.alarm_triggers:
            pump.trigger(self.ctx, at_ms, p.rx)

    def of_device(self, site_id: str, device_id: str) -> FalseAlarms:
        """The false-alarm count of a device, created empty if it has none."""
        fa = self.false_alarms.get(device_id)
        if fa is None:
            rule = self.rules.get(site_id, SiteRules()).false_alarms
            fa = self.false_alarms[device_id] = FalseAlarms(site_id, device_id, rule, self.false_alarms)
        return fa

    def false_alarm(self, site_id: str, device_id: str, now_ms: int, out: list[Effect]) -> None:
        """A fire event of the device was resolved as a false alarm."""
        fa = self.of_device(site_id, device_id)
        fa.times.append(now_ms)
        fa.count(self.ctx, now_ms, out)
