"""Fire-event and hazard lifecycles, escalation, and site risk codes (pure, no I/O)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from gateway.errors import TransitionError
from gateway.hazards.codes import CodeOverride, clear_override, set_override, site_code
from gateway.hazards.lifecycle import EscalationPolicy, FireEvent, Hazard, Transition, Workflow
from gateway.models import Reading
from gateway.rules.effects import Condition, FireSignal, ShieldLog
from gateway.rules.engine import RuleEngine
from tests.unit.test_rules import catalog, device

S = 1000
H = 3600 * S
T0 = 1_700_000_000_000


def wf(policy: EscalationPolicy | None = None) -> Workflow:
    ids = (f"id{i}" for i in itertools.count())
    cat = catalog([device("B1", "onekey-alarm-button"), device("P1", "fire-pump-cabinet", host="h")])
    return Workflow(cat, policy=policy, id_factory=lambda: next(ids))


def fire(at: int = T0, dev: str = "B1", test: bool = False) -> FireSignal:
    return FireSignal("S1", dev, "fire_alarm", "fire_alarm", at, test, {"value": True})


def cond(
    active: bool = True,
    at: int = T0,
    rule: str = "pump1_mode_held",
    severity: str = "major",
    hard: bool = False,
    auto_close: bool = False,
) -> Condition:
    return Condition(
        "S1",
        "P1",
        rule,
        active,
        at,
        "supervisory",
        severity,
        "消防水泵控制柜未处于自动状态",
        "Pump cabinet not in automatic mode",
        hard,
        auto_close,
        [{"value": 0}],
    )


def types(records: list[Transition]) -> list[str]:
    return [r.type for r in records]


# ----------------------------------------------------------------------------- fire events


def test_fire_event_opens_with_site_location_and_station() -> None:
    w = wf()
    [rec] = w.apply([fire()], T0)
    assert rec.kind == "fire_event" and rec.type == "opened" and rec.actor == "system"
    ev = w.fire_events[rec.subject_id]
    assert (ev.site_id, ev.device_id, ev.state, ev.opened_at_ms) == ("S1", "B1", "open", T0)
    assert (ev.station_id, ev.station_name, ev.duty_officer) == ("MS1", "Micro station 1", "officer-1")
    assert (ev.building, ev.floor, ev.room, ev.town, ev.grid_cell) == ("B1", "2F", "201", "T", "G1")
    assert rec.snapshot["fire_event_id"] == ev.fire_event_id
    json.dumps(rec.to_dict())


def test_fire_event_latches_and_counts_repeats() -> None:
    w = wf()
    w.apply([fire()], T0)
    recs = w.apply([fire(T0 + 5 * S), fire(T0 + 9 * S)], T0 + 9 * S)
    assert types(recs) == ["updated", "updated"]
    [ev] = w.open_fire_events()
    assert ev.count == 3 and ev.last_signal_at_ms == T0 + 9 * S
    # a person resolves it; the next signal opens a new one
    w.act("fire_event", ev.fire_event_id, "resolve", "chief", now_ms=T0 + 60 * S, resolution="false_alarm")
    [rec] = w.apply([fire(T0 + 61 * S)], T0 + 61 * S)
    assert rec.type == "opened" and rec.subject_id != ev.fire_event_id


def test_fire_event_lifecycle() -> None:
    w = wf()
    fid = w.apply([fire()], T0)[0].subject_id
    assert types(w.act("fire_event", fid, "acknowledge", "station-1", now_ms=T0 + 30 * S)) == ["acknowledged"]
    assert types(w.act("fire_event", fid, "arrive", "station-1", now_ms=T0 + 150 * S)) == ["on_scene"]
    [rec] = w.act(
        "fire_event", fid, "resolve", "chief", now_ms=T0 + 600 * S, note="burnt toast", resolution="false_alarm"
    )
    snap = rec.snapshot
    assert (snap["state"], snap["resolution"], snap["resolved_by"]) == ("resolved", "false_alarm", "chief")
    assert (snap["acknowledged_at_ms"], snap["on_scene_at_ms"]) == (T0 + 30 * S, T0 + 150 * S)
    assert rec.note == "burnt toast" and w.open_fire_events() == []


@pytest.mark.parametrize(
    ("steps", "action", "params", "message"),
    [
        ([], "resolve", {}, "resolve needs resolution real_fire, false_alarm or test"),
        ([], "resolve", {"resolution": "bored"}, "not 'bored'"),
        (["acknowledge"], "acknowledge", {}, "is acknowledged: cannot acknowledge (allowed from: open)"),
        (["arrive"], "acknowledge", {}, "is on_scene: cannot acknowledge"),
        (["arrive"], "arrive", {}, "cannot arrive on scene (allowed from: open, acknowledged)"),
        ([], "dance", {}, "unknown action 'dance'"),
    ],
)
def test_fire_event_illegal_transitions(steps: list[str], action: str, params: dict[str, Any], message: str) -> None:
    w = wf()
    fid = w.apply([fire()], T0)[0].subject_id
    for step in steps:
        w.act("fire_event", fid, step, "x", now_ms=T0 + S)
    with pytest.raises(TransitionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        w.act("fire_event", fid, action, "x", now_ms=T0 + 2 * S, **params)


def test_fire_event_resolved_is_gone() -> None:
    w = wf()
    fid = w.apply([fire()], T0)[0].subject_id
    w.act("fire_event", fid, "resolve", "x", now_ms=T0 + S, resolution="real_fire")
    with pytest.raises(TransitionError, match="is not open"):
        w.act("fire_event", fid, "acknowledge", "x", now_ms=T0 + 2 * S)


def test_test_signal_is_recorded_and_resolved() -> None:
    w = wf()
    recs = w.apply([fire(test=True)], T0)
    assert types(recs) == ["opened", "resolved"] and recs[1].snapshot["resolution"] == "test"
    assert w.open_fire_events() == []


@pytest.mark.parametrize(
    ("ack_at", "ticks", "levels"),
    [
        pytest.param(None, [179, 180, 359, 360, 10_000], [0, 1, 1, 2, 2], id="unacknowledged"),
        pytest.param(100, [180, 360], [0, 0], id="acknowledged-in-time"),
        pytest.param(200, [180, 360, 720], [1, 1, 1], id="acknowledged-late"),
    ],
)
def test_fire_event_escalation(ack_at: int | None, ticks: list[int], levels: list[int]) -> None:
    w = wf()
    fid = w.apply([fire()], T0)[0].subject_id
    ev = w.fire_events[fid]
    got = []
    for t in ticks:
        if ack_at is not None and ack_at <= t and ev.state == "open":
            w.act("fire_event", fid, "acknowledge", "station", now_ms=T0 + ack_at * S)
        recs = w.tick(T0 + t * S)
        assert all(r.type == "escalated" for r in recs)
        got.append(ev.escalation_level)
    assert got == levels


def test_fire_escalation_note_names_duty_officer() -> None:
    w = wf()
    w.apply([fire()], T0)
    [rec] = w.tick(T0 + 180 * S)
    assert rec.note == "not acknowledged within 180 s: escalated to duty_officer officer-1"


# ----------------------------------------------------------------------------- hazards


def test_hazard_dedup_repeat_clear_close() -> None:
    w = wf()
    [opened] = w.apply([cond()], T0)
    hz = w.hazards[opened.subject_id]
    assert (hz.state, hz.tier, hz.count, hz.active) == ("proposed", "supervisor", 1, True)
    assert types(w.apply([cond(False, T0 + S)], T0 + S)) == ["cleared"]
    assert (hz.active, hz.state) == (False, "proposed")  # cleared, not closed
    assert types(w.apply([cond(True, T0 + 2 * S)], T0 + 2 * S)) == ["updated"]
    assert (hz.count, hz.active, hz.last_seen_ms, len(w.hazards)) == (2, True, T0 + 2 * S, 1)
    w.act("hazard", hz.hazard_id, "confirm", "grid-1", now_ms=T0 + 3 * S)
    w.act("hazard", hz.hazard_id, "dispatch", "supervisor-1", now_ms=T0 + 4 * S, assignee="contractor")
    w.act("hazard", hz.hazard_id, "start", "contractor", now_ms=T0 + 5 * S)
    w.act("hazard", hz.hazard_id, "rectified", "contractor", now_ms=T0 + 6 * S)
    with pytest.raises(TransitionError, match="close needs a note"):
        w.act("hazard", hz.hazard_id, "close", "grid-1", now_ms=T0 + 7 * S)
    [closed] = w.act("hazard", hz.hazard_id, "close", "grid-1", now_ms=T0 + 7 * S, note="re-checked: auto")
    assert closed.snapshot["state"] == "closed" and closed.snapshot["resolution"] == "closed"
    assert closed.snapshot["assignee"] == "contractor"
    # closed: the next condition opens a new hazard
    [again] = w.apply([cond(True, T0 + 8 * S)], T0 + 8 * S)
    assert again.type == "opened" and again.subject_id != hz.hazard_id


@pytest.mark.parametrize(
    ("state_steps", "action", "message"),
    [
        ([], "dispatch", "is proposed: cannot dispatch (allowed from: confirmed)"),
        ([], "rectified", "is proposed: cannot rectified"),
        (["confirm"], "confirm", "is confirmed: cannot confirm"),
        (["confirm"], "reject", "is confirmed: cannot reject (allowed from: proposed)"),
        (["confirm"], "close", "is confirmed: cannot close (allowed from: rectified)"),
        ([], "fly", "unknown action 'fly'"),
    ],
)
def test_hazard_illegal_transitions(state_steps: list[str], action: str, message: str) -> None:
    w = wf()
    hid = w.apply([cond()], T0)[0].subject_id
    for step in state_steps:
        w.act("hazard", hid, step, "p", now_ms=T0 + S)
    with pytest.raises(TransitionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        w.act("hazard", hid, action, "p", now_ms=T0 + 2 * S, note="n")


def test_close_allowed_when_condition_ended() -> None:
    w = wf()
    hid = w.apply([cond()], T0)[0].subject_id
    w.act("hazard", hid, "confirm", "p", now_ms=T0 + S)
    w.apply([cond(False, T0 + 2 * S)], T0 + 2 * S)
    [rec] = w.act("hazard", hid, "close", "p", now_ms=T0 + 3 * S, note="on site: back in auto")
    assert rec.type == "closed"


def test_reject_proposed() -> None:
    w = wf()
    hid = w.apply([cond()], T0)[0].subject_id
    [rec] = w.act("hazard", hid, "reject", "grid-1", now_ms=T0 + S, note="approved P1 exception, 24 h duty")
    assert (rec.type, rec.snapshot["state"], rec.snapshot["resolution"]) == ("rejected", "closed", "rejected")


def test_confirm_sets_severity_tier_and_deadline() -> None:
    w = wf()
    hid = w.apply([cond(severity="minor")], T0)[0].subject_id
    [rec] = w.act("hazard", hid, "confirm", "grid-1", now_ms=T0 + S, severity="critical")
    assert (rec.snapshot["severity"], rec.snapshot["tier"]) == ("critical", "enforcement")
    assert rec.snapshot["deadline_ms"] == T0 + S + 24 * H
    with pytest.raises(TransitionError, match="unknown severity"):
        w2 = wf()
        h2 = w2.apply([cond()], T0)[0].subject_id
        w2.act("hazard", h2, "confirm", "p", now_ms=T0, severity="bad")


def test_auto_close() -> None:
    w = wf()
    w.apply([cond(auto_close=True)], T0)
    recs = w.apply([cond(False, T0 + S, auto_close=True)], T0 + S)
    assert types(recs) == ["cleared", "closed"]
    assert (recs[1].actor, recs[1].snapshot["resolution"]) == ("system", "auto_closed")
    assert w.open_hazards() == []


def test_hard_rule_starts_confirmed() -> None:
    w = wf()
    [rec] = w.apply([cond(hard=True)], T0)
    assert rec.snapshot["state"] == "confirmed" and rec.snapshot["confirmed_by"] == "system"
    assert rec.note == "hard rule: confirmed without review"
    assert w.tick(T0 + 100 * H) == []  # confirmed: no ack escalation (deadline 30 days)


def test_other_effects_make_no_records() -> None:
    w = wf()
    assert w.apply([ShieldLog("S1", "P1", None, "shield_on", T0, "a", "r")], T0) == []
    assert w.apply([cond(False)], T0) == []  # a clear with no open hazard


@pytest.mark.parametrize(
    ("severity", "ticks_h", "tiers"),
    [
        pytest.param(
            "minor", [23.9, 24, 48, 100], ["grid_member", "supervisor", "enforcement", "enforcement"], id="minor-24h"
        ),
        pytest.param("major", [3.9, 4, 8], ["supervisor", "enforcement", "enforcement"], id="major-4h"),
        pytest.param("critical", [0.25, 10], ["enforcement", "enforcement"], id="critical-at-top"),
        pytest.param("info", [1000], ["grid_member"], id="info-never"),
    ],
)
def test_hazard_escalation_per_severity(severity: str, ticks_h: list[float], tiers: list[str]) -> None:
    w = wf()
    hz = w.hazards[w.apply([cond(severity=severity)], T0)[0].subject_id]
    got = []
    for t in ticks_h:
        w.tick(T0 + int(t * H))
        got.append(hz.tier)
    assert got == tiers


def test_hazard_escalation_is_configurable_and_stops_on_confirm() -> None:
    w = wf(EscalationPolicy(ack_s={"major": 60.0}, deadline_s={"major": 3600.0}))
    hz = w.hazards[w.apply([cond()], T0)[0].subject_id]
    assert types(w.tick(T0 + 60 * S)) == ["escalated"]
    w.act("hazard", hz.hazard_id, "confirm", "p", now_ms=T0 + 61 * S)
    assert w.tick(T0 + 3000 * S) == []
    [late] = w.tick(T0 + 61 * S + H + 1)
    assert late.note == "rectification deadline passed: escalated to enforcement" and hz.overdue
    assert hz.tier == "enforcement" and w.tick(T0 + 100 * H) == []


def test_serialization_round_trip_and_load() -> None:
    w = wf()
    hid = w.apply([cond()], T0)[0].subject_id
    fid = w.apply([fire()], T0)[0].subject_id
    rows_h = [json.loads(json.dumps(h.to_dict())) for h in w.hazards.values()]
    rows_f = [json.loads(json.dumps(e.to_dict())) for e in w.fire_events.values()]
    assert Hazard.from_dict(rows_h[0]) == w.hazards[hid]
    assert FireEvent.from_dict(rows_f[0]) == w.fire_events[fid]
    w2 = wf()
    w2.load(rows_f, rows_h)
    # one open hazard per key after a restart
    assert types(w2.apply([cond(True, T0 + S)], T0 + S)) == ["updated"]
    assert types(w2.apply([fire(T0 + S)], T0 + S)) == ["updated"]


# ----------------------------------------------------------------------------- site codes


def hz(severity: str, state: str = "confirmed", deadline: int | None = None, title: str = "h") -> Hazard:
    return Hazard(
        f"h-{severity}-{state}",
        "S1",
        "D",
        "r",
        "c",
        severity,
        T0,
        state=state,  # type: ignore[arg-type]
        deadline_ms=deadline,
        title_zh=title,
        title_en=title,
    )


NOW = T0 + 10 * H


@pytest.mark.parametrize(
    ("hazards", "code", "reason_en"),
    [
        pytest.param([], "green", "no confirmed hazard open", id="none"),
        pytest.param(
            [hz("critical", "proposed"), hz("major", "proposed")],
            "green",
            "no confirmed hazard open",
            id="proposed-do-not-count",
        ),
        pytest.param([hz("info")], "green", "no confirmed hazard open", id="info-does-not-count"),
        pytest.param(
            [hz("minor", deadline=NOW + H)], "yellow", "hazard under deadline rectification: h", id="minor-in-time"
        ),
        pytest.param(
            [hz("minor", deadline=NOW - H)], "yellow", "hazard under deadline rectification: h", id="minor-late"
        ),
        pytest.param(
            [hz("major", "rectified", deadline=NOW + H)],
            "yellow",
            "hazard under deadline rectification: h",
            id="major-rectified-not-closed",
        ),
        pytest.param([hz("major", deadline=NOW - 1)], "red", "major hazard past its deadline: h", id="major-late"),
        pytest.param(
            [hz("minor"), hz("critical", "dispatched", title="pump")],
            "red",
            "confirmed critical hazard open: pump",
            id="critical",
        ),
    ],
)
def test_site_codes(hazards: list[Hazard], code: str, reason_en: str) -> None:
    sc = site_code(hazards, None, NOW, last_inspection_ms=T0)
    assert (sc.code, sc.reason_en) == (code, reason_en)
    cadences = {"red": ("daily", 86400), "yellow": ("weekly", 7 * 86400), "green": ("monthly", 30 * 86400)}
    cadence = cadences[code]
    assert (sc.cadence, sc.cadence_s) == cadence
    assert sc.next_inspection_due_ms == T0 + cadence[1] * S


def test_site_code_never_inspected_is_due_now_plus_cadence() -> None:
    assert site_code([], None, NOW).next_inspection_due_ms == NOW + 30 * 86400 * S


def test_override_is_audited_and_expires() -> None:
    ov, rec = set_override(
        "S1",
        "yellow",
        "stop-business order pending",
        "chief-inspector",
        NOW,
        until_ms=NOW + H,
        stop_business=True,
        id_factory=lambda: "ev1",
    )
    assert (ov.code, rec.kind, rec.type, rec.actor, rec.note) == (
        "red",
        "site",
        "override_set",
        "chief-inspector",
        "stop-business order pending",
    )
    sc = site_code([], ov, NOW + S)
    assert (sc.code, sc.overridden, sc.cadence) == ("red", True, "daily")
    assert site_code([], ov, NOW + H).code == "green"  # expired
    cleared = clear_override(ov, "chief-inspector", "order lifted", NOW + 2 * S)
    assert cleared.type == "override_cleared" and cleared.snapshot["site_id"] == "S1"


@pytest.mark.parametrize(("reason", "actor", "until"), [("", "a", None), ("r", " ", None), ("r", "a", NOW)])
def test_override_needs_reason_actor_future_expiry(reason: str, actor: str, until: int | None) -> None:
    with pytest.raises(TransitionError):
        set_override("S1", "green", reason, actor, NOW, until_ms=until)


def test_green_override_over_open_hazard() -> None:
    ov = CodeOverride("S1", "green", "accepted on site", "inspector", NOW)
    assert site_code([hz("critical")], ov, NOW).code == "green"


# ----------------------------------------------------------------------------- engine → workflow


def test_engine_effects_through_the_workflow() -> None:
    cat = catalog([device("B1", "onekey-alarm-button"), device("P1", "fire-pump-cabinet", host="h")])
    eng, w = RuleEngine(cat), Workflow(cat)
    press = Reading("S1", "B1", "fire_alarm", True, "", T0, T0)
    [opened] = w.apply(eng.on_readings([press], T0), T0)
    snap = opened.snapshot
    assert (opened.type, snap["station_id"], snap["building"]) == ("opened", "MS1", "B1")
    manual = Reading("S1", "P1", "pump1_mode", 0, "", T0, T0)
    assert w.apply(eng.on_readings([manual], T0), T0) == []
    recs = w.apply(eng.tick(T0 + 600 * S), T0 + 600 * S)
    by_rule = {r.snapshot["rule"]: r.snapshot for r in recs if r.type == "opened"}
    mode = by_rule["pump1_not_auto"]  # the shipped profile makes it a hard rule: it starts confirmed
    assert (mode["hazard_class"], mode["severity"], mode["tier"], mode["state"]) == (
        "supervisory",
        "major",
        "supervisor",
        "confirmed",
    )
    assert by_rule["offline"]["hazard_class"] == "offline"  # the cabinet went quiet after T0
    [fid] = list(w.fire_events)
    [resolved] = w.act("fire_event", fid, "resolve", "chief", now_ms=T0 + 700 * S, resolution="false_alarm")
    assert eng.on_fire_resolved("S1", "B1", resolved.snapshot["resolution"], T0 + 700 * S) == []
