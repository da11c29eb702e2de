"""The rule declaration schema: what a profile, a device or a site says should be watched (design.md §4).

Profiles and the inventory embed these pydantic models (``Profile.rules``, ``Device.rules``,
``Site.rules``), so they live beside them and import nothing but :mod:`gateway.models`: the profile
schema does not depend on the rule engine, and :mod:`gateway.rules` depends on profiles one way only.
What a device then runs (class defaults, device overrides, titles) is :mod:`gateway.rules.spec`; the
cross-check of rules against a profile's points is :func:`gateway.profiles.loader.validate_rules`.

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

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.models import Value

__all__ = [
    "DAY_S",
    "DEFAULT_HAZARD_CLASS",
    "WEEK_S",
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
    "SiteRules",
    "StateHeldRule",
    "StuckRule",
    "ThresholdRule",
    "Title",
]

Severity = Literal["info", "minor", "major", "critical"]
HazardClass = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
_NAME = r"^[a-z][a-z0-9_]*$"

DAY_S = 86_400.0
WEEK_S = 7 * DAY_S

#: Hazard class a rule kind raises when it names none.
DEFAULT_HAZARD_CLASS: dict[str, str] = {
    "event": "fault",
    "threshold": "supervisory",
    "state_held": "supervisory",
    "no_data": "offline",
    "rate_of_change": "supervisory",
    "stuck": "fault",
    "maintenance": "maintenance",
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
        default="edge",
        description="edge: on the change into the value; each: on every matching reading "
        "(MQTT event points, where every press is a new signal)",
    )
    test_point: str | None = Field(
        default=None,
        description="a bool point of the same device that marks the signal as a test (detector test button)",
    )

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
                raise ValueError(
                    f"impossible hysteresis: clear_at {self.clear_at} is below the threshold "
                    f"below {self.below}; it must be >= {self.below}"
                )
            if self.above is not None and self.clear_at > self.above:
                raise ValueError(
                    f"impossible hysteresis: clear_at {self.clear_at} is above the threshold "
                    f"above {self.above}; it must be <= {self.above}"
                )
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


#: A declared rule of any kind (the union ``RuleSpec`` discriminates on ``kind``).
AnyRule = EventRule | ThresholdRule | StateHeldRule | NoDataRule | RateOfChangeRule | StuckRule | MaintenanceRule
