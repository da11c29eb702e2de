"""Fire-event (警情) and hazard (隐患) lifecycles: pure state machines and the in-memory workflow book.

This module owns the states, the legal transitions, escalation timing and the immutable
:class:`Transition` records that every change produces (the store writes them to its outbox; the
grid workflow receives them). No I/O and no clock: every method takes ``now_ms``.

Fire event::

    open ──acknowledge──▶ acknowledged ──arrive──▶ on_scene ──resolve──▶ resolved
      └───────────arrive──────────────────────────▲  (resolve from any non-resolved state;
                                                      resolution real_fire | false_alarm | test)

Latching: a fire event stays open until a person resolves it, whatever the signal does; another
signal for the same (site, device) while one is open updates it (``count``, ``last_signal_at_ms``).
Escalation: not acknowledged within the station's ``response_time_s`` → level 1 (duty officer);
after another response time → level 2 (the next tier: district command).

Hazard::

    proposed ──confirm──▶ confirmed ──dispatch──▶ dispatched ──start──▶ rectifying ──rectified──▶ rectified
        │                     │                       └──────────rectified─────────────▲             │
        └──reject──▶ closed   └──start──▶ rectifying                                     close (note)┘
                                                                                              ▼
                                                                                            closed

``proposed`` comes from telemetry; a person confirms it (and may set the severity, which sets the
tier: info/minor → grid_member, major → supervisor, critical → enforcement). Hard rules open
``confirmed``. ``reject`` closes a proposed hazard as not a hazard (resolution ``rejected``).
``close`` (销号) needs a note (the re-check) and is allowed from ``rectified``, or from any open state
once the condition is no longer active (telemetry back to normal and a person re-checked it).
Non-latching: a hazard's ``active`` follows the condition (``cleared`` record), but closing is a
person's act unless the rule is ``auto_close`` (then it closes itself, actor ``system``, resolution
``auto_closed``). One open hazard per key (site, device, rule): each re-activation while open counts
as a repeat (``count`` + 1); after it is closed a new condition opens a new hazard.
Escalation: a proposed hazard nobody confirms within ``ack_s[severity]`` goes one tier up (and again
after another period, at most to enforcement); a confirmed hazard not rectified by its deadline is
escalated to enforcement once (``overdue``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from gateway.errors import TransitionError
from gateway.profiles.loader import Catalog
from gateway.rules.effects import Condition, Effect, FireSignal

__all__ = [
    "EVIDENCE_KEEP",
    "SEVERITY_TIER",
    "TIERS",
    "EscalationPolicy",
    "FireEvent",
    "FireEventEvent",
    "Hazard",
    "HazardEvent",
    "Transition",
    "Workflow",
    "WorkflowEvent",
    "new_id",
]

FireState = Literal["open", "acknowledged", "on_scene", "resolved"]
Resolution = Literal["real_fire", "false_alarm", "test"]
HazardState = Literal["proposed", "confirmed", "dispatched", "rectifying", "rectified", "closed"]
Tier = Literal["grid_member", "supervisor", "enforcement"]
TIERS: tuple[Tier, ...] = ("grid_member", "supervisor", "enforcement")
SEVERITY_TIER: dict[str, Tier] = {
    "info": "grid_member",
    "minor": "grid_member",
    "major": "supervisor",
    "critical": "enforcement",
}
FIRE_TIERS = ("station", "duty_officer", "district_command")
EVIDENCE_KEEP = 20
SYSTEM = "system"

EventType = Literal[
    "opened",
    "updated",
    "escalated",
    "cleared",
    "confirmed",
    "dispatched",
    "rectifying",
    "rectified",
    "closed",
    "rejected",
    "acknowledged",
    "on_scene",
    "resolved",
    "override_set",
    "override_cleared",
    "inspected",
]


def new_id() -> str:
    """A fresh id (uuid4 hex)."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Transition:
    """One transition of a fire event, a hazard or a site: immutable, with who, when and why, and the
    subject after it. It is what the trail keeps, what the outbox delivers (its ``event_id`` is the
    idempotency key) and what the live stream shows."""

    event_id: str
    kind: Literal["fire_event", "hazard", "site"]
    subject_id: str
    type: EventType
    at_ms: int
    actor: str
    note: str
    snapshot: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Earlier names of :class:`Transition`, kept for code that imports them (``gateway.HazardEvent``).
WorkflowEvent = Transition
HazardEvent = Transition
FireEventEvent = Transition


@dataclass(frozen=True)
class EscalationPolicy:
    """Escalation and deadline defaults [D], per severity, in seconds. ``None``: never."""

    ack_s: Mapping[str, float | None] = field(
        default_factory=lambda: {"info": None, "minor": 24 * 3600.0, "major": 4 * 3600.0, "critical": 15 * 60.0}
    )
    deadline_s: Mapping[str, float | None] = field(
        default_factory=lambda: {"info": None, "minor": 7 * 86400.0, "major": 30 * 86400.0, "critical": 86400.0}
    )


def _from_dict(cls: type[Any], data: Mapping[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def _illegal(what: str, subject_id: str, state: str, action: str, allowed: Iterable[str]) -> TransitionError:
    return TransitionError(
        f"{what} {subject_id} is {state}: cannot {action} (allowed from: {', '.join(allowed) or 'nowhere'})"
    )


# ----------------------------------------------------------------------------- fire events


@dataclass(slots=True)
class FireEvent:
    """A fire alarm (警情) and who handled it. Times are UTC epoch ms."""

    fire_event_id: str
    site_id: str
    device_id: str
    metric: str
    rule: str
    opened_at_ms: int
    state: FireState = "open"
    resolution: Resolution | None = None
    count: int = 1
    last_signal_at_ms: int = 0
    station_id: str = ""
    station_name: str = ""
    response_time_s: float = 180.0
    duty_officer: str | None = None
    building: str | None = None
    floor: str | None = None
    room: str | None = None
    town: str = ""
    grid_cell: str = ""
    acknowledged_at_ms: int | None = None
    acknowledged_by: str | None = None
    on_scene_at_ms: int | None = None
    on_scene_by: str | None = None
    resolved_at_ms: int | None = None
    resolved_by: str | None = None
    escalation_level: int = 0
    escalated_at_ms: int | None = None
    test: bool = False
    evidence: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FireEvent:
        ev: FireEvent = _from_dict(cls, data)
        return ev

    def _check(self, action: str, allowed: tuple[FireState, ...]) -> None:
        if self.state not in allowed:
            raise _illegal("fire event", self.fire_event_id, self.state, action, allowed)

    def acknowledge(self, actor: str, now_ms: int) -> None:
        self._check("acknowledge", ("open",))
        self.state, self.acknowledged_at_ms, self.acknowledged_by = "acknowledged", now_ms, actor

    def arrive(self, actor: str, now_ms: int) -> None:
        self._check("arrive on scene", ("open", "acknowledged"))
        if self.acknowledged_at_ms is None:
            self.acknowledged_at_ms, self.acknowledged_by = now_ms, actor
        self.state, self.on_scene_at_ms, self.on_scene_by = "on_scene", now_ms, actor

    def resolve(self, resolution: str | None, actor: str, now_ms: int) -> None:
        self._check("resolve", ("open", "acknowledged", "on_scene"))
        if resolution not in ("real_fire", "false_alarm", "test"):
            raise TransitionError(
                f"fire event {self.fire_event_id}: resolve needs resolution real_fire, "
                f"false_alarm or test, not {resolution!r}"
            )
        self.state, self.resolution = "resolved", resolution  # type: ignore[assignment]
        self.resolved_at_ms, self.resolved_by = now_ms, actor

    def escalation_due_ms(self) -> int | None:
        """When the next escalation falls due, or None (acknowledged, resolved, or at the top)."""
        if self.state != "open" or self.escalation_level >= len(FIRE_TIERS) - 1:
            return None
        return self.opened_at_ms + int(self.response_time_s * 1000) * (self.escalation_level + 1)


# ----------------------------------------------------------------------------- hazards


@dataclass(slots=True)
class Hazard:
    """A hazard (隐患) for the grid workflow. One open hazard per (site_id, device_id, rule)."""

    hazard_id: str
    site_id: str
    device_id: str
    rule: str
    hazard_class: str
    severity: str
    opened_at_ms: int
    state: HazardState = "proposed"
    active: bool = True
    first_seen_ms: int = 0
    last_seen_ms: int = 0
    cleared_at_ms: int | None = None
    count: int = 1
    title_zh: str = ""
    title_en: str = ""
    hard: bool = False
    auto_close: bool = False
    escalation_level: int = 0
    escalated_at_ms: int | None = None
    overdue: bool = False
    deadline_ms: int | None = None
    confirmed_at_ms: int | None = None
    confirmed_by: str | None = None
    dispatched_at_ms: int | None = None
    dispatched_by: str | None = None
    assignee: str | None = None
    rectifying_at_ms: int | None = None
    rectifying_by: str | None = None
    rectified_at_ms: int | None = None
    rectified_by: str | None = None
    closed_at_ms: int | None = None
    closed_by: str | None = None
    resolution: Literal["closed", "rejected", "auto_closed"] | None = None
    evidence: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.site_id, self.device_id, self.rule)

    @property
    def tier(self) -> Tier:
        """The handling tier: from the severity, raised by escalation."""
        base = TIERS.index(SEVERITY_TIER.get(self.severity, "grid_member"))
        return TIERS[min(len(TIERS) - 1, base + self.escalation_level)]

    @property
    def confirmed(self) -> bool:
        return self.state not in ("proposed", "closed")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tier"] = self.tier
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Hazard:
        hz: Hazard = _from_dict(cls, data)
        return hz

    def _check(self, action: str, allowed: tuple[HazardState, ...]) -> None:
        if self.state not in allowed:
            raise _illegal("hazard", self.hazard_id, self.state, action, allowed)

    def add_evidence(self, evidence: Iterable[dict[str, Any]]) -> None:
        self.evidence.extend(evidence)
        del self.evidence[:-EVIDENCE_KEEP]


_HAZARD_ACTIONS: dict[str, tuple[HazardState, ...]] = {
    "confirm": ("proposed",),
    "dispatch": ("confirmed",),
    "start": ("confirmed", "dispatched"),
    "rectified": ("dispatched", "rectifying"),
    "close": ("rectified",),
    "reject": ("proposed",),
}


# ----------------------------------------------------------------------------- the book


class Workflow:
    """Open fire events and hazards in memory: engine effects and person actions in, records out.

    Resolved fire events and closed hazards leave the book after their last record (the store keeps
    them). Load what the store holds as open with :meth:`load` after a restart.
    """

    def __init__(
        self,
        catalog: Catalog | None = None,
        *,
        policy: EscalationPolicy | None = None,
        id_factory: Callable[[], str] = new_id,
    ) -> None:
        self._catalog = catalog
        self.policy = policy or EscalationPolicy()
        self._new_id = id_factory
        self.fire_events: dict[str, FireEvent] = {}
        self.hazards: dict[str, Hazard] = {}
        self._fire_by_key: dict[tuple[str, str], str] = {}
        self._hazard_by_key: dict[tuple[str, str, str], str] = {}

    # ------------------------------------------------------------------ loading and queries

    def load(self, fire_events: Iterable[Mapping[str, Any]] = (), hazards: Iterable[Mapping[str, Any]] = ()) -> None:
        """Add open subjects from their ``to_dict`` rows (resolved/closed rows are ignored)."""
        for row in fire_events:
            ev = FireEvent.from_dict(row)
            if ev.state != "resolved":
                self.fire_events[ev.fire_event_id] = ev
                self._fire_by_key[(ev.site_id, ev.device_id)] = ev.fire_event_id
        for row in hazards:
            hz = Hazard.from_dict(row)
            if hz.state != "closed":
                self.hazards[hz.hazard_id] = hz
                self._hazard_by_key[hz.key] = hz.hazard_id

    def open_hazards(self, site_id: str | None = None) -> list[Hazard]:
        return [h for h in self.hazards.values() if site_id is None or h.site_id == site_id]

    def open_fire_events(self, site_id: str | None = None) -> list[FireEvent]:
        return [e for e in self.fire_events.values() if site_id is None or e.site_id == site_id]

    def hazard_for(self, site_id: str, device_id: str, rule: str) -> Hazard | None:
        hid = self._hazard_by_key.get((site_id, device_id, rule))
        return None if hid is None else self.hazards[hid]

    # ------------------------------------------------------------------ records

    def _record(
        self,
        kind: Literal["fire_event", "hazard"],
        subject: FireEvent | Hazard,
        type_: EventType,
        at_ms: int,
        actor: str,
        note: str = "",
    ) -> Transition:
        sid = subject.fire_event_id if isinstance(subject, FireEvent) else subject.hazard_id
        return Transition(self._new_id(), kind, sid, type_, at_ms, actor, note, subject.to_dict())

    def _drop_fire(self, ev: FireEvent) -> None:
        self.fire_events.pop(ev.fire_event_id, None)
        if self._fire_by_key.get((ev.site_id, ev.device_id)) == ev.fire_event_id:
            del self._fire_by_key[(ev.site_id, ev.device_id)]

    def _drop_hazard(self, hz: Hazard) -> None:
        self.hazards.pop(hz.hazard_id, None)
        if self._hazard_by_key.get(hz.key) == hz.hazard_id:
            del self._hazard_by_key[hz.key]

    # ------------------------------------------------------------------ effects from the engine

    def apply(self, effects: Iterable[Effect], now_ms: int) -> list[Transition]:
        """Apply engine effects. Test records and shield logs produce no lifecycle records."""
        out: list[Transition] = []
        for eff in effects:
            if isinstance(eff, FireSignal):
                self._on_fire(eff, now_ms, out)
            elif isinstance(eff, Condition):
                self._on_condition(eff, now_ms, out)
        return out

    def _on_fire(self, sig: FireSignal, now_ms: int, out: list[Transition]) -> None:
        fid = self._fire_by_key.get((sig.site_id, sig.device_id))
        if fid is not None:
            ev = self.fire_events[fid]
            ev.count += 1
            ev.last_signal_at_ms = max(ev.last_signal_at_ms, sig.at_ms)
            ev.evidence = [*ev.evidence, sig.evidence][-EVIDENCE_KEEP:]
            note = f"signal {ev.count} from {sig.metric}"
            out.append(self._record("fire_event", ev, "updated", now_ms, SYSTEM, note))
            return
        ev = FireEvent(
            self._new_id(),
            sig.site_id,
            sig.device_id,
            sig.metric,
            sig.rule,
            sig.at_ms,
            last_signal_at_ms=sig.at_ms,
            test=sig.test,
            evidence=[sig.evidence],
        )
        site = self._catalog.sites.get(sig.site_id) if self._catalog else None
        if site is not None:
            ev.station_id, ev.station_name = site.station.station_id, site.station.name
            ev.response_time_s, ev.duty_officer = site.station.response_time_s, site.station.duty_officer
            ev.town, ev.grid_cell = site.town, site.grid_cell
        device = self._catalog.devices.get(sig.device_id) if self._catalog else None
        if device is not None:
            loc = device.location
            ev.building, ev.floor, ev.room = loc.building, loc.floor, loc.room
        self.fire_events[ev.fire_event_id] = ev
        self._fire_by_key[(ev.site_id, ev.device_id)] = ev.fire_event_id
        out.append(self._record("fire_event", ev, "opened", now_ms, SYSTEM))
        if sig.test:  # the device marked it a test: keep the record, no dispatch
            ev.resolve("test", SYSTEM, now_ms)
            self._drop_fire(ev)
            out.append(self._record("fire_event", ev, "resolved", now_ms, SYSTEM, "device reported a test"))

    def _deadline(self, severity: str, now_ms: int) -> int | None:
        s = self.policy.deadline_s.get(severity)
        return None if s is None else now_ms + int(s * 1000)

    def _on_condition(self, c: Condition, now_ms: int, out: list[Transition]) -> None:
        hz = self.hazard_for(c.site_id, c.device_id, c.rule)
        if c.active:
            if hz is not None:
                hz.count += 1
                hz.active, hz.cleared_at_ms = True, None
                hz.last_seen_ms = max(hz.last_seen_ms, c.at_ms)
                hz.add_evidence(c.evidence)
                out.append(self._record("hazard", hz, "updated", now_ms, SYSTEM, f"repeat {hz.count}"))
                return
            hz = Hazard(
                self._new_id(),
                c.site_id,
                c.device_id,
                c.rule,
                c.hazard_class,
                c.severity,
                c.at_ms,
                first_seen_ms=c.at_ms,
                last_seen_ms=c.at_ms,
                title_zh=c.title_zh,
                title_en=c.title_en,
                hard=c.hard,
                auto_close=c.auto_close,
            )
            hz.add_evidence(c.evidence)
            note = ""
            if c.hard:
                hz.state, hz.confirmed_at_ms, hz.confirmed_by = "confirmed", now_ms, SYSTEM
                hz.deadline_ms = self._deadline(hz.severity, now_ms)
                note = "hard rule: confirmed without review"
            self.hazards[hz.hazard_id] = hz
            self._hazard_by_key[hz.key] = hz.hazard_id
            out.append(self._record("hazard", hz, "opened", now_ms, SYSTEM, note))
            return
        if hz is None or not hz.active:
            return
        hz.active, hz.cleared_at_ms = False, c.at_ms
        hz.last_seen_ms = max(hz.last_seen_ms, c.at_ms)
        out.append(self._record("hazard", hz, "cleared", now_ms, SYSTEM))
        if hz.auto_close:
            hz.state, hz.resolution, hz.closed_at_ms, hz.closed_by = "closed", "auto_closed", now_ms, SYSTEM
            self._drop_hazard(hz)
            out.append(self._record("hazard", hz, "closed", now_ms, SYSTEM, "auto-close: condition ended"))

    # ------------------------------------------------------------------ person actions

    def act(
        self,
        kind: Literal["fire_event", "hazard"],
        subject_id: str,
        action: str,
        actor: str,
        *,
        now_ms: int,
        note: str = "",
        **params: Any,
    ) -> list[Transition]:
        """Apply a person's action; raises :class:`TransitionError` when it is not allowed.

        fire_event: ``acknowledge``, ``arrive`` (alias ``on_scene``), ``resolve`` (``resolution=``).
        hazard: ``confirm`` (optional ``severity=``, ``deadline_ms=``), ``dispatch`` (optional
        ``assignee=``), ``start`` (→ rectifying), ``rectified``, ``close`` (needs ``note``),
        ``reject`` (needs ``note``).
        """
        if not actor:
            raise TransitionError(f"{kind} {subject_id}: {action} needs an actor")
        if kind == "fire_event":
            return self._act_fire(subject_id, action, actor, now_ms, note, params)
        if kind == "hazard":
            return self._act_hazard(subject_id, action, actor, now_ms, note, params)
        raise TransitionError(f"unknown subject kind {kind!r} (fire_event or hazard)")

    def _act_fire(
        self, fid: str, action: str, actor: str, now_ms: int, note: str, params: dict[str, Any]
    ) -> list[Transition]:
        ev = self.fire_events.get(fid)
        if ev is None:
            raise TransitionError(f"fire event {fid} is not open (unknown or already resolved)")
        if action == "acknowledge":
            ev.acknowledge(actor, now_ms)
            return [self._record("fire_event", ev, "acknowledged", now_ms, actor, note)]
        if action in ("arrive", "on_scene"):
            ev.arrive(actor, now_ms)
            return [self._record("fire_event", ev, "on_scene", now_ms, actor, note)]
        if action == "resolve":
            ev.resolve(params.get("resolution"), actor, now_ms)
            self._drop_fire(ev)
            return [self._record("fire_event", ev, "resolved", now_ms, actor, note)]
        raise TransitionError(f"fire event {fid}: unknown action {action!r} (acknowledge, arrive, resolve)")

    def _act_hazard(
        self, hid: str, action: str, actor: str, now_ms: int, note: str, params: dict[str, Any]
    ) -> list[Transition]:
        hz = self.hazards.get(hid)
        if hz is None:
            raise TransitionError(f"hazard {hid} is not open (unknown or already closed)")
        allowed = _HAZARD_ACTIONS.get(action)
        if allowed is None:
            raise TransitionError(f"hazard {hid}: unknown action {action!r} ({', '.join(_HAZARD_ACTIONS)})")
        if action == "close" and not hz.active and hz.state != "closed":
            allowed = ("proposed", "confirmed", "dispatched", "rectifying", "rectified")
        hz._check(action, allowed)
        if action in ("close", "reject") and not note.strip():
            raise TransitionError(f"hazard {hid}: {action} needs a note (the re-check / the reason)")
        type_: EventType
        if action == "confirm":
            severity = params.get("severity") or hz.severity
            if severity not in SEVERITY_TIER:
                raise TransitionError(f"hazard {hid}: unknown severity {severity!r} (info, minor, major, critical)")
            hz.severity, hz.state, hz.confirmed_at_ms, hz.confirmed_by = severity, "confirmed", now_ms, actor
            hz.deadline_ms = params.get("deadline_ms") or self._deadline(severity, now_ms)
            type_ = "confirmed"
        elif action == "dispatch":
            hz.state, hz.dispatched_at_ms, hz.dispatched_by = "dispatched", now_ms, actor
            hz.assignee = params.get("assignee") or hz.assignee
            type_ = "dispatched"
        elif action == "start":
            hz.state, hz.rectifying_at_ms, hz.rectifying_by = "rectifying", now_ms, actor
            type_ = "rectifying"
        elif action == "rectified":
            hz.state, hz.rectified_at_ms, hz.rectified_by = "rectified", now_ms, actor
            type_ = "rectified"
        else:
            hz.state, hz.closed_at_ms, hz.closed_by = "closed", now_ms, actor
            hz.resolution = "rejected" if action == "reject" else "closed"
            type_ = "rejected" if action == "reject" else "closed"
            self._drop_hazard(hz)
        return [self._record("hazard", hz, type_, now_ms, actor, note)]

    # ------------------------------------------------------------------ escalation

    def tick(self, now_ms: int) -> list[Transition]:
        """Escalate what nobody acknowledged in time. O(open subjects)."""
        out: list[Transition] = []
        for ev in list(self.fire_events.values()):
            due = ev.escalation_due_ms()
            while due is not None and due <= now_ms:
                ev.escalation_level += 1
                ev.escalated_at_ms = now_ms
                who = FIRE_TIERS[ev.escalation_level]
                name = f" {ev.duty_officer}" if who == "duty_officer" and ev.duty_officer else ""
                out.append(
                    self._record(
                        "fire_event",
                        ev,
                        "escalated",
                        now_ms,
                        SYSTEM,
                        f"not acknowledged within {ev.response_time_s:g} s: escalated to {who}{name}",
                    )
                )
                due = ev.escalation_due_ms()
        for hz in list(self.hazards.values()):
            if hz.state == "proposed":
                ack = self.policy.ack_s.get(hz.severity)
                while (
                    ack is not None
                    and hz.tier != TIERS[-1]
                    and now_ms >= hz.opened_at_ms + int(ack * 1000) * (hz.escalation_level + 1)
                ):
                    hz.escalation_level += 1
                    hz.escalated_at_ms = now_ms
                    out.append(
                        self._record(
                            "hazard",
                            hz,
                            "escalated",
                            now_ms,
                            SYSTEM,
                            f"not confirmed within {ack:g} s: escalated to {hz.tier}",
                        )
                    )
            elif (
                hz.state in ("confirmed", "dispatched", "rectifying")
                and not hz.overdue
                and hz.deadline_ms is not None
                and now_ms > hz.deadline_ms
            ):
                hz.overdue = True
                base = TIERS.index(SEVERITY_TIER.get(hz.severity, "grid_member"))
                hz.escalation_level = len(TIERS) - 1 - base
                hz.escalated_at_ms = now_ms
                out.append(
                    self._record(
                        "hazard",
                        hz,
                        "escalated",
                        now_ms,
                        SYSTEM,
                        "rectification deadline passed: escalated to enforcement",
                    )
                )
        return out
