"""What rules a device runs: class defaults, device overrides and generated titles (design.md §4).

The rule *schema* (the pydantic models profiles, devices and sites embed) is
:mod:`gateway.profiles.rule_spec`, and the cross-check of rules against a profile's points is
:func:`gateway.profiles.loader.validate_rules`; both are re-exported here under their old names, so
``gateway.rules`` depends on ``gateway.profiles`` and never the other way. This module owns what turns
those declarations into the rules one device runs (:func:`effective_rules`: the profile's rules, the
device's by id, the defaults a point gets from its class, the device ``no_data`` rule), the titles a
hazard gets when a rule names none, the cadence a device is expected to report at, and the test mode and
shield (屏蔽) declarations handed to the engine. The engine (:mod:`gateway.rules.engine`) compiles the
rules into per-(device, metric) dispatch lists.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.models import PointClass, Value
from gateway.profiles.loader import validate_rules
from gateway.profiles.models import Device, Point, Profile
from gateway.profiles.rule_spec import (
    DAY_S,
    DEFAULT_HAZARD_CLASS,
    AnyRule,
    DualPowerLossRule,
    EventRule,
    FalseAlarmsRule,
    HazardClass,
    MaintenanceRule,
    NoDataRule,
    PumpStartRule,
    RateOfChangeRule,
    RuleSpec,
    Severity,
    SiteRules,
    StateHeldRule,
    StuckRule,
    ThresholdRule,
    Title,
)

__all__ = [
    "DEFAULT_HAZARD_CLASS",
    "AnyRule",
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


# ----------------------------------------------------------------------------- test mode and shields


class _Mode(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: str
    point: str | None = None
    until_ms: int
    reason: str = Field(min_length=1)
    actor: str = Field(min_length=1)


class TestMode(_Mode):
    """A device (or one point) under test: what would raise a fire event or hazard gives a test record."""

    __test__ = False  # not a pytest class


class Shield(_Mode):
    """Shielding (屏蔽) a device or point until ``until_ms``: its activations are suppressed and logged."""


# ----------------------------------------------------------------------------- defaults and titles


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
            return [StateHeldRule(point=point.name, not_value=auto, hold_s=600.0, severity="major", title=title)]
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
            t = (f"{zh}持续为 {v} 超过 {rule.hold_s:g} 秒", f"{en} has been {v} for more than {rule.hold_s:g} s")
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
        t = (
            f"{zh}变化过快（每 {rule.per_s:g} 秒超过 {_fmt(rule.max_change)}{unit}）",
            f"{en} changing too fast (more than {_fmt(rule.max_change)}{unit} per {rule.per_s:g} s)",
        )
    elif isinstance(rule, StuckRule):
        t = (f"{zh}读数冻结（{rule.for_s:g} 秒未变化）", f"{en} reading frozen (unchanged for {rule.for_s:g} s)")
    else:
        days = rule.max_interval_s / DAY_S
        t = (
            f"{zh}：超过 {days:g} 天无自动巡检记录",
            f"{en}: no automatic test run / inspection recorded for {days:g} days",
        )
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


def effective_rules(
    profile: Profile, device: Device | None = None, declared: Sequence[AnyRule] | None = None
) -> list[AnyRule]:
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
