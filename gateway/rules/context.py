"""The contract between the engine and the rules it runs: what an evaluator sees and what it may do.

An evaluator (a point rule, or a part of a site correlation) never touches the engine. Each call hands
it a :class:`RuleContext` with exactly what rules need, and nothing else:

- ``arm(timed, due_ms)``: put a :class:`Timed` on the timer heap, or move it there (the heap deletes
  lazily, so ``timed.due = 0`` disarms it); it fires from :meth:`RuleEngine.tick
  <gateway.rules.engine.RuleEngine.tick>` as ``timed.fire(ctx, now_ms, out)``;
- ``condition(dev, meta, active, at_ms, metric, evidence, out)``: raise or end a hazard condition of
  one device (it passes the test-mode/shield guard on its way out);
- ``site_condition(site_id, device_id, meta, active, at_ms, evidence, out)``: the same for a correlation
  across a site's devices (not guarded: no one device is under test);
- ``fire_signal(point, rule, at_ms, test, out)``: a fire alarm was seen at a point;
- ``sources_down`` and ``source_up_at``: read-only views of the gateway's own sources (the MQTT broker
  connection), so timers do not count silence the gateway itself caused.

Time always comes in as an argument (``now_ms``, a reading's ``ts_ms`` and ``received_at_ms``), never
from a clock. The effects a call causes are appended to its ``out`` list, in order.

This module also holds the records the contract speaks of: :class:`HazardMeta` (what a hazard raised
by one rule looks like), :class:`DeviceState` and :class:`PointState` (one device and one point as the
engine keeps them) and the two base classes rules build on, :class:`Timed` and :class:`Evaluator`.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.models import Reading, Value
from gateway.profiles.models import Profile
from gateway.rules.effects import Condition, Effect, Evidence
from gateway.rules.spec import AnyRule, Title

__all__ = [
    "Arm",
    "DeviceState",
    "EmitCondition",
    "EmitFireSignal",
    "EmitSiteCondition",
    "Evaluator",
    "HazardMeta",
    "PointState",
    "RuleContext",
    "Timed",
    "hazard_meta",
    "point_evidence",
    "truthy",
]


@dataclass(frozen=True, slots=True)
class HazardMeta:
    """What a hazard raised by one rule looks like (shared by every device of a profile)."""

    rule: str
    hazard_class: str
    severity: str
    title_zh: str
    title_en: str
    hard: bool
    auto_close: bool

    def condition(self, site_id: str, device_id: str, active: bool, at_ms: int, evidence: list[Evidence]) -> Condition:
        """The :class:`~gateway.rules.effects.Condition` this rule raises (or ends) for one device."""
        return Condition(
            site_id,
            device_id,
            self.rule,
            active,
            at_ms,
            self.hazard_class,
            self.severity,
            self.title_zh,
            self.title_en,
            self.hard,
            self.auto_close,
            evidence,
        )


def hazard_meta(rule_id: str, klass: str, severity: str, title: Title, hard: bool, auto_close: bool) -> HazardMeta:
    return HazardMeta(rule_id, klass, severity, title.zh, title.en, hard, auto_close)


def truthy(v: Value | None) -> bool:
    return bool(v) if v is not None else False


def point_evidence(p: PointState) -> Evidence:
    """The evidence a point's current reading gives."""
    return {"device_id": p.dev.device_id, "metric": p.metric, "value": p.value, "ts_ms": p.ts}


class Timed:
    """Something with a timer on the engine's heap. ``due`` 0 means not armed."""

    __slots__ = ("due",)

    def __init__(self) -> None:
        self.due = 0

    def fire(self, ctx: RuleContext, now_ms: int, out: list[Effect]) -> None:
        """The timer fell due (it is disarmed already; re-arm through ``ctx.arm``)."""
        raise NotImplementedError


class Evaluator:
    """A rule attached to one point. ``feed`` runs after the point took the new value.

    ``key`` names the evaluator's state in a snapshot (empty: it keeps none); ``dump`` gives that state
    as JSON-able data (None: nothing worth saving) and ``load`` takes it back for point ``p``.
    """

    __slots__ = ()
    key = ""

    def feed(
        self, ctx: RuleContext, p: PointState, r: Reading, prev: Value | None, prev_ts: int, out: list[Effect]
    ) -> None:
        raise NotImplementedError

    def dump(self) -> list[Any] | None:
        return None

    def load(self, state: list[Any], p: PointState) -> None:
        pass


_NO_POINTS: dict[str, PointState] = {}


class DeviceState(Timed):
    """One device: its dispatch plan and points, and its reachability (the no-data timer is the
    device's own: :class:`gateway.rules.reachability.TrackedDevice` gives it its ``fire``)."""

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

    def __init__(
        self,
        device_id: str,
        site_id: str,
        profile: Profile,
        source: str,
        link: str | None,
        timeout_ms: int,
        offline_meta: HazardMeta,
    ) -> None:
        super().__init__()
        self.device_id = device_id
        self.site_id = site_id
        self.profile = profile
        self.link = link  # the link name its source uses (Modbus host:port or serial port), or None
        self.source = source
        self.timeout_ms = timeout_ms
        self.last_rx = 0
        self.silent = False
        self.unreachable = False
        self.link_down: str | None = None  # the link it is unreachable behind (whole link down)
        self.offline_on = False
        self.points: dict[str, PointState] = _NO_POINTS  # replaced by its own dict on the first point
        self.plan: dict[str, list[AnyRule]] | None = None
        self.offline_meta = offline_meta

    def add_point(self, p: PointState) -> None:
        if self.points is _NO_POINTS:
            self.points = {}
        self.points[p.metric] = p


class PointState:
    """The last reading of one point of one device and the rules that watch it."""

    __slots__ = ("dev", "evals", "metric", "rx", "ts", "value")

    def __init__(self, dev: DeviceState, metric: str) -> None:
        self.dev = dev
        self.metric = metric
        self.ts = -1
        self.rx = -1
        self.value: Value | None = None
        self.evals: tuple[Evaluator, ...] = ()


class EmitCondition(Protocol):
    def __call__(
        self,
        dev: DeviceState,
        meta: HazardMeta,
        active: bool,
        at_ms: int,
        metric: str | None,
        evidence: list[Evidence],
        out: list[Effect],
        /,
    ) -> None: ...


class EmitSiteCondition(Protocol):
    def __call__(
        self,
        site_id: str,
        device_id: str,
        meta: HazardMeta,
        active: bool,
        at_ms: int,
        evidence: list[Evidence],
        out: list[Effect],
        /,
    ) -> None: ...


class EmitFireSignal(Protocol):
    def __call__(self, p: PointState, rule: str, at_ms: int, test: bool, out: list[Effect], /) -> None: ...


class Arm(Protocol):
    def __call__(self, timed: Timed, due_ms: int, /) -> None: ...


@dataclass(frozen=True, slots=True)
class RuleContext:
    """What a rule may do and see (the module docstring says what each field is for)."""

    arm: Arm
    condition: EmitCondition
    site_condition: EmitSiteCondition
    fire_signal: EmitFireSignal
    sources_down: Set[str]
    source_up_at: Mapping[str, int]
