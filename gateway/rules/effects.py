"""What the rule engine hands to the hazard workflow and the store: frozen, slotted records.

``FireSignal`` opens (or updates) a fire event; ``Condition`` opens, repeats or clears a hazard keyed
by (site_id, device_id, rule); ``TestRecord`` replaces either while a point is under test;
``ShieldLog`` records shielding (屏蔽) and test-mode changes and suppressed activations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Condition", "Effect", "FireSignal", "ShieldLog", "TestRecord"]

Evidence = dict[str, Any]


@dataclass(frozen=True, slots=True)
class FireSignal:
    """A fire alarm was seen. ``test`` is true when the device marked it as a test (``test_point``)."""

    site_id: str
    device_id: str
    metric: str
    rule: str
    at_ms: int
    test: bool = False
    evidence: Evidence = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Condition:
    """A hazard condition became active (each activation counts as a repeat) or ended."""

    site_id: str
    device_id: str
    rule: str
    active: bool
    at_ms: int
    hazard_class: str
    severity: str
    title_zh: str
    title_en: str
    hard: bool = False
    auto_close: bool = False
    evidence: list[Evidence] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.site_id, self.device_id, self.rule)


@dataclass(frozen=True, slots=True)
class TestRecord:
    """What would have been a fire signal or a hazard condition, seen while the point was under test."""

    __test__ = False  # not a pytest class

    site_id: str
    device_id: str
    metric: str
    rule: str
    at_ms: int
    opens: Literal["fire_event", "hazard"]
    active: bool
    reason: str
    actor: str
    evidence: list[Evidence] = field(default_factory=list)


ShieldAction = Literal["test_on", "test_off", "test_expired", "shield_on", "shield_off", "shield_expired", "suppressed"]


@dataclass(frozen=True, slots=True)
class ShieldLog:
    """A shielding / test-mode change, or an activation that a shield suppressed."""

    site_id: str
    device_id: str
    point: str | None
    action: ShieldAction
    at_ms: int
    actor: str
    reason: str
    until_ms: int | None = None
    rule: str | None = None


Effect = FireSignal | Condition | TestRecord | ShieldLog
