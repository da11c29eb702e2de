"""Rule declarations: what a profile, a device or a site says should be watched (design.md §4).

This module owns the *schema* of rules (pydantic, validated once at load time), the defaults a point
gets from its class when no declared rule names it, and :func:`validate_rules`, the cross-check of
rules against a profile's points that ``firegw profiles check`` prints as ``file: field.path: problem``.
The engine (:mod:`gateway.rules.engine`) compiles these into per-(device, metric) dispatch lists.

Rule kinds (discriminated on ``kind``):

=================  ===========================================================================
``event``          a point takes a value (``equals``; omitted = truthy) → fire event or hazard
``threshold``      ``below`` / ``above`` for ``hold_s``; clears at ``clear_at`` (hysteresis)
``state_held``     a point is (``value``) or is not (``not_value``) a value for ``hold_s``
``no_data``        nothing from a device (``point`` unset) or a point for N × its cadence
``rate_of_change`` a point moves more than ``max_change`` per ``per_s``
``stuck``          a point keeps one value for ``for_s`` and at least ``min_samples`` readings
``maintenance``    a point that records an automatic test run/inspection did not change for
                   ``max_interval_s`` (GB 50974 14.0.4(2): weekly)
=================  ===========================================================================

Every rule has an ``id`` (the ``rule`` of the hazard dedup key (site, device, rule)); when ``name`` is
not given it is derived: ``event`` → the point name, ``threshold`` → ``<point>_low|_high``,
``state_held`` → ``<point>_held``, ``no_data`` → ``offline`` (device) or ``<point>_no_data``,
``rate_of_change`` → ``<point>_rate``, ``stuck`` → ``<point>_stuck``, ``maintenance`` →
``<point>_overdue``. A device's rule with the same id replaces the profile's; ``enabled: false``
switches a rule (or the class default of its point) off.

Threshold semantics: ``below: 0.25`` trips when value < 0.25 (exactly 0.25 is fine) and clears when
value >= ``clear_at``; ``above`` mirrors it (trips when > above, clears when <= clear_at). Between
the threshold and ``clear_at`` nothing changes (hysteresis band).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.models import PointClass, Value

if TYPE_CHECKING:  # profiles.models imports this module for its ``rules`` fields
    from gateway.profiles.models import Device, Point, Profile

__all__ = [
    "DEFAULT_HAZARD_CLASS",
    "DualPowerLossRule",
    "EventRule",
    "FalseAlarmsRule",
    "HazardClass",
    "MaintenanceRule",
    "NoDataRule",
    "PumpStartRule",
    "RateOfChangeRule",
    "RuleSpec",
    "Severity",
    "Shield",
    "SiteRules",
    "StateHeldRule",
    "StuckRule",
    "TestMode",
    "ThresholdRule",
    "Title",
    "default_rules",
    "effective_rules",
    "expected_interval_s",
    "title_for",
    "validate_rules",
]

Severity = Literal["info", "minor", "major", "critical"]
HazardClass = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
_NAME = r"^[a-z][a-z0-9_]*$"

DAY_S = 86_400.0
WEEK_S = 7 * DAY_S

#: Hazard class a rule kind raises when it names none.
DEFAULT_HAZARD_CLASS: dict[str, str] = {
    "event": "fault", "threshold": "supervisory", "state_held": "supervisory", "no_data": "offline",
    "rate_of_change": "supervisory", "stuck": "fault", "maintenance": "maintenance",
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Title(_Model):
    """A hazard title in both languages (zh-CN first)."""

    zh: str = Field(min_length=1)
    en: str = Field(min_length=1)


class _Rule(_Model):
    """Fields every rule has: identity and what the hazard it raises looks like."""

    name: str | None = Field(default=None, pattern=_NAME, description="rule id; derived when omitted")
    enabled: bool = True
    hazard_class: HazardClass | None = Field(default=None, description="default depends on the kind")
    severity: Severity = "minor"
    title: Title | None = Field(default=None, description="generated in both languages when omitted")
    hard: bool = Field(default=False, description="site-configured hard rule: starts confirmed")
    auto_close: bool = Field(default=False, description="a cleared hazard closes itself (actor system)")

    @property
    def id(self) -> str:  # overridden by each kind
        raise NotImplementedError

    @property
    def klass(self) -> str:
        kind: str = getattr(self, "kind")  # noqa: B009 - every concrete rule has a Literal kind
        return self.hazard_class or DEFAULT_HAZARD_CLASS[kind]


class EventRule(_Rule):
    """A point takes a value: open a fire event (``opens: fire_event``) or a hazard."""

    kind: Literal["event"] = "event"
    point: str
    equals: Value | None = Field(default=None, description="omitted: any truthy value (true, non-zero)")
    opens: Literal["fire_event", "hazard"] = "hazard"
    trigger: Literal["edge", "each"] = Field(
        default="edge", description="edge: on the change into the value; each: on every matching reading "
        "(MQTT event points, where every press is a new signal)")
    test_point: str | None = Field(default=None, description="a bool point of the same device that marks "
                                   "the signal as a test (detector test button)")

    @property
    def id(self) -> str:
        return self.name or self.point


class ThresholdRule(_Rule):
    """A value beyond a limit for ``hold_s``, cleared at ``clear_at`` (hysteresis)."""

    kind: Literal["threshold"] = "threshold"
    point: str
    below: float | None = None
    above: float | None = None
    clear_at: float | None = Field(default=None, description="defaults to the threshold (no hysteresis)")
    hold_s: float = Field(default=0.0, ge=0)
    severity: Severity = "major"

    @model_validator(mode="after")
    def _check(self) -> ThresholdRule:
        if (self.below is None) == (self.above is None):
            raise ValueError("a threshold needs exactly one of below or above")
        if self.clear_at is not None:
            if self.below is not None and self.clear_at < self.below:
                raise ValueError(f"impossible hysteresis: clear_at {self.clear_at} is below the threshold "
                                 f"below {self.below}; it must be >= {self.below}")
            if self.above is not None and self.clear_at > self.above:
                raise ValueError(f"impossible hysteresis: clear_at {self.clear_at} is above the threshold "
                                 f"above {self.above}; it must be <= {self.above}")
        return self

    @property
    def limit(self) -> float:
        return self.below if self.below is not None else self.above  # type: ignore[return-value]

    @property
    def clear(self) -> float:
        return self.limit if self.clear_at is None else self.clear_at

    @property
    def id(self) -> str:
        return self.name or f"{self.point}_{'low' if self.below is not None else 'high'}"


class StateHeldRule(_Rule):
    """A point is (``value``) or is not (``not_value``) a value for longer than ``hold_s``."""

    kind: Literal["state_held"] = "state_held"
    point: str
    value: Value | None = None
    not_value: Value | None = None
    hold_s: float = Field(default=60.0, ge=0)
    severity: Severity = "major"

    @model_validator(mode="after")
    def _check(self) -> StateHeldRule:
        if (self.value is None) == (self.not_value is None):
            raise ValueError("state_held needs exactly one of value or not_value")
        return self

    @property
    def id(self) -> str:
        return self.name or f"{self.point}_held"


class NoDataRule(_Rule):
    """Nothing heard from the device (or one point) for ``cadence_multiple`` × the expected interval."""

    kind: Literal["no_data"] = "no_data"
    point: str | None = Field(default=None, description="unset: the whole device (rule id 'offline')")
    cadence_multiple: float = Field(default=3.0, gt=0)
    cadence_s: float | None = Field(default=None, gt=0, description="overrides the profile's cadence")

    @property
    def id(self) -> str:
        return self.name or ("offline" if self.point is None else f"{self.point}_no_data")


class RateOfChangeRule(_Rule):
    """Between consecutive readings the value moved more than ``max_change`` per ``per_s`` seconds."""

    kind: Literal["rate_of_change"] = "rate_of_change"
    point: str
    max_change: float = Field(gt=0)
    per_s: float = Field(default=60.0, gt=0)

    @property
    def id(self) -> str:
        return self.name or f"{self.point}_rate"


class StuckRule(_Rule):
    """A sensor frozen at one value (within ``tolerance``) for ``for_s`` and ``min_samples`` readings."""

    kind: Literal["stuck"] = "stuck"
    point: str
    for_s: float = Field(gt=0)
    min_samples: int = Field(default=3, ge=2)
    tolerance: float = Field(default=0.0, ge=0)

    @property
    def id(self) -> str:
        return self.name or f"{self.point}_stuck"


class MaintenanceRule(_Rule):
    """A point that records an automatic pump test run / inspection (巡检) did not record one in time.

    A record is a reading whose value is truthy and differs from the previous one (a rising edge of a
    bool, a counter that moved). The first reading seen starts the clock.
    """

    kind: Literal["maintenance"] = "maintenance"
    point: str
    max_interval_s: float = Field(default=WEEK_S, gt=0)

    @property
    def id(self) -> str:
        return self.name or f"{self.point}_overdue"


#: The type of ``rules:`` lists in profiles and devices:
#: ``rules: list[RuleSpec] = Field(default_factory=list)``.
RuleSpec = Annotated[
    EventRule | ThresholdRule | StateHeldRule | NoDataRule | RateOfChangeRule | StuckRule | MaintenanceRule,
    Field(discriminator="kind"),
]

# ----------------------------------------------------------------------------- site-level rules


class _SiteRule(_Model):
    enabled: bool = True
    hard: bool = False
    auto_close: bool = False
    title: Title | None = None


class PumpStartRule(_SiteRule):
    """A start trigger with no pump running within ``limit_s`` (GB 50974 11.0.3: 2 min) → critical.

    Triggers are points of any device of the site (pressure / flow switches, P4). A fire alarm is a
    trigger only with ``alarm_triggers: true``: detector and button alarms do not start hydrant pumps by
    themselves, and every false alarm would otherwise raise a critical hazard. The rule is evaluated only
    at sites where some device has one of the ``run_points``.
    """

    trigger_points: list[str] = Field(default_factory=lambda: ["pressure_switch", "flow_switch"])
    run_points: list[str] = Field(default_factory=lambda: ["pump1_run", "pump2_run"])
    alarm_triggers: bool = False
    limit_s: float = Field(default=120.0, gt=0)
    hazard_class: HazardClass = "pump_failure"
    severity: Severity = "critical"


class DualPowerLossRule(_SiteRule):
    """Main and backup power of one device both lost (E2/E3). ``lost_value`` is the value meaning lost."""

    main_point: str = "main_power"
    backup_point: str = "backup_power"
    lost_value: Value = False
    hold_s: float = Field(default=0.0, ge=0)
    hazard_class: HazardClass = "power"
    severity: Severity = "critical"


class FalseAlarmsRule(_SiteRule):
    """More than ``max_per_day`` fire events of one device resolved as false alarm in 24 h (C8)."""

    max_per_day: int = Field(default=5, ge=1)
    window_s: float = Field(default=DAY_S, gt=0, description="rolling window")
    hazard_class: HazardClass = "false_alarm"
    severity: Severity = "minor"


class SiteRules(_Model):
    """Correlation rules across the devices of a site. Use as ``Site.rules: SiteRules = SiteRules()``."""

    pump_start: PumpStartRule = Field(default_factory=PumpStartRule)
    dual_power_loss: DualPowerLossRule = Field(default_factory=DualPowerLossRule)
    false_alarms: FalseAlarmsRule = Field(default_factory=FalseAlarmsRule)


# ----------------------------------------------------------------------------- test mode and shields


class TestMode(_Model):
    """A device (or one point) under test: what would raise a fire event or hazard gives a test record."""

    __test__ = False  # not a pytest class

    device_id: str
    point: str | None = None
    until_ms: int
    reason: str = Field(min_length=1)
    actor: str = Field(min_length=1)


class Shield(_Model):
    """Shielding (屏蔽) a device or point until ``until_ms``: its activations are suppressed and logged."""

    device_id: str
    point: str | None = None
    until_ms: int
    reason: str = Field(min_length=1)
    actor: str = Field(min_length=1)


# ----------------------------------------------------------------------------- defaults and checks

AnyRule = (EventRule | ThresholdRule | StateHeldRule | NoDataRule | RateOfChangeRule | StuckRule
           | MaintenanceRule)


def _label(point: Point) -> tuple[str, str]:
    if point.labels is not None:
        return point.labels.zh, point.labels.en
    return point.name, point.name.replace("_", " ")


def _auto_code(point: Point) -> int | None:
    if point.enum:
        for code, label in point.enum.items():
            if label == "auto":
                return code
    return None


def default_rules(point: Point, profile: Profile | None = None) -> list[AnyRule]:
    """The rules a point gets from its class when no declared rule names it.

    alarm → fire event on a truthy value; fault → minor ``fault`` hazard while truthy; supervisory:
    an enum with an ``auto`` code → major hazard when not auto for 10 min (domain.md §7.4, P1),
    otherwise a major ``supervisory`` hazard while truthy. Other classes get none. (A bool whose *true*
    means healthy, like ``main_power``, needs a declared rule: ``{kind: event, point: main_power,
    equals: false}``, or ``enabled: false`` to switch the default off.)
    """
    if point.point_class is PointClass.ALARM:
        mqtt = profile is not None and profile.transport == "mqtt"
        trigger: Literal["edge", "each"] = "each" if mqtt else "edge"
        return [EventRule(point=point.name, opens="fire_event", trigger=trigger)]
    if point.point_class is PointClass.FAULT:
        return [EventRule(point=point.name, severity="minor")]
    if point.point_class is PointClass.SUPERVISORY:
        auto = _auto_code(point)
        if auto is not None:
            zh, en = (re.split(r"[(（]", x, maxsplit=1)[0].strip() for x in _label(point))
            who_zh, who_en = ("设备", "Device") if profile is None else (profile.title.zh, profile.title.en)
            title = Title(zh=f"{who_zh}未处于自动状态（{zh}）", en=f"{who_en} not in automatic mode ({en})")
            return [StateHeldRule(point=point.name, not_value=auto, hold_s=600.0, severity="major",
                                  title=title)]
        return [EventRule(point=point.name, hazard_class="supervisory", severity="major")]
    return []


def _fmt(v: float | Value) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def title_for(rule: AnyRule, point: Point | None, profile: Profile | None = None) -> Title:
    """The rule's title, or one generated in both languages from the point's labels and the kind."""
    if rule.title is not None:
        return rule.title
    zh, en = _label(point) if point is not None else ("", "")
    unit = f" {point.unit}" if point is not None and point.unit else ""
    if isinstance(rule, EventRule):
        t = (zh, en) if point is not None else (rule.id, rule.id)
    elif isinstance(rule, ThresholdRule):
        if rule.below is not None:
            t = (f"{zh}过低（低于 {_fmt(rule.below)}{unit}）", f"{en} low (below {_fmt(rule.below)}{unit})")
        else:
            t = (f"{zh}过高（高于 {_fmt(rule.limit)}{unit}）", f"{en} high (above {_fmt(rule.limit)}{unit})")
    elif isinstance(rule, StateHeldRule):
        if rule.value is not None:
            v = _fmt(rule.value)
            t = (f"{zh}持续为 {v} 超过 {rule.hold_s:g} 秒",
                 f"{en} has been {v} for more than {rule.hold_s:g} s")
        else:
            v = _fmt(rule.not_value if rule.not_value is not None else "")
            if point is not None and point.enum and isinstance(rule.not_value, int):
                v = point.enum.get(rule.not_value, v)
            t = (f"{zh}非 {v} 状态超过 {rule.hold_s:g} 秒", f"{en} not {v} for more than {rule.hold_s:g} s")
    elif isinstance(rule, NoDataRule):
        if rule.point is None:
            t = ("设备离线（长时间无数据）", "Device offline (no data)")
        else:
            t = (f"{zh}长时间无数据", f"No data from {en}")
    elif isinstance(rule, RateOfChangeRule):
        t = (f"{zh}变化过快（每 {rule.per_s:g} 秒超过 {_fmt(rule.max_change)}{unit}）",
             f"{en} changing too fast (more than {_fmt(rule.max_change)}{unit} per {rule.per_s:g} s)")
    elif isinstance(rule, StuckRule):
        t = (f"{zh}读数冻结（{rule.for_s:g} 秒未变化）",
             f"{en} reading frozen (unchanged for {rule.for_s:g} s)")
    else:
        days = rule.max_interval_s / DAY_S
        t = (f"{zh}：超过 {days:g} 天无自动巡检记录",
             f"{en}: no automatic test run / inspection recorded for {days:g} days")
    if profile is not None and not isinstance(rule, NoDataRule | MaintenanceRule):
        t = (f"{profile.title.zh}：{t[0]}", f"{profile.title.en}: {t[1]}")
    return Title(zh=t[0], en=t[1])


def expected_interval_s(profile: Profile) -> float:
    """How often a device of this profile is heard from: its cadence, or the Modbus keepalive when longer
    (a polled device only reports unchanged values every ``keepalive_s``)."""
    if profile.modbus is not None:
        return max(profile.cadence_s, profile.modbus.keepalive_s)
    return profile.cadence_s


def _declared(obj: object) -> list[AnyRule]:
    rules = getattr(obj, "rules", None)
    return list(rules) if isinstance(rules, list) else []


def effective_rules(profile: Profile, device: Device | None = None,
                    declared: Sequence[AnyRule] | None = None) -> list[AnyRule]:
    """The rules that run for one device: profile rules, replaced or extended by the device's by id,
    class defaults for every point no declared rule names, and a device ``no_data`` (offline) rule.
    Disabled rules are dropped last (so ``enabled: false`` also switches a default off)."""
    rules: dict[str, AnyRule] = {}
    for r in declared if declared is not None else _declared(profile):
        rules[r.id] = r
    if declared is None and device is not None:
        for r in _declared(device):
            rules[r.id] = r
    named = {getattr(r, "point", None) for r in rules.values()}
    for p in profile.points:
        if p.name not in named:
            for r in default_rules(p, profile):
                rules.setdefault(r.id, r)
    rules.setdefault("offline", NoDataRule())
    return [r for r in rules.values() if r.enabled]


def _type_ok(value: Value, vtype: str) -> bool:
    if vtype == "bool":
        return isinstance(value, bool)
    if vtype == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if vtype == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, str)


def validate_rules(rules: Sequence[AnyRule], profile: Profile, where: str = "rules") -> list[str]:
    """Problems of rules against a profile's points, one line each: ``rules[2].point: what is wrong``."""
    problems: list[str] = []
    names = ", ".join(p.name for p in profile.points)
    seen: dict[str, int] = {}
    for i, r in enumerate(rules):
        at = f"{where}[{i}]"
        if r.id in seen:
            problems.append(f"{at}.name: rule id {r.id!r} is already used by {where}[{seen[r.id]}]; "
                            "give one of them a name")
        seen[r.id] = i
        pname = getattr(r, "point", None)
        if pname is None:
            continue
        point = profile.point(pname)
        if point is None:
            problems.append(f"{at}.point: unknown point {pname!r} (profile {profile.profile} has: {names})")
            continue
        numeric = point.type in ("int", "float")
        if isinstance(r, ThresholdRule | RateOfChangeRule | StuckRule) and not numeric:
            problems.append(f"{at}.point: a {r.kind} rule needs a numeric point; {pname!r} is {point.type}")
        if isinstance(r, EventRule):
            if r.equals is not None and not _type_ok(r.equals, point.type):
                problems.append(f"{at}.equals: {r.equals!r} is not a {point.type} (point {pname!r} is "
                                f"{point.type})")
            if r.test_point is not None:
                tp = profile.point(r.test_point)
                if tp is None:
                    problems.append(f"{at}.test_point: unknown point {r.test_point!r} (profile "
                                    f"{profile.profile} has: {names})")
                elif tp.type != "bool":
                    problems.append(f"{at}.test_point: {r.test_point!r} must be a bool point, not {tp.type}")
        if isinstance(r, StateHeldRule):
            field, value = ("value", r.value) if r.value is not None else ("not_value", r.not_value)
            assert value is not None
            if not _type_ok(value, point.type):
                problems.append(f"{at}.{field}: {value!r} is not a {point.type} (point {pname!r} is "
                                f"{point.type})")
            elif point.enum and isinstance(value, int) and value not in point.enum:
                problems.append(f"{at}.{field}: {value!r} is not one of the codes of {pname!r}: "
                                + ", ".join(f"{k} {v}" for k, v in point.enum.items()))
        if isinstance(r, ThresholdRule) and numeric and point.range is not None:
            lo, hi = point.range
            if not lo <= r.limit <= hi:
                side = "below" if r.below is not None else "above"
                problems.append(f"{at}.{side}: {r.limit} is outside the "
                                f"physical range [{lo}, {hi}] of {pname!r}; it would trip always or never")
    return problems
