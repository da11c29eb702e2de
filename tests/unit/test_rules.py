"""Rule specs and the rule engine: table tests for every rule kind and its edges (pure, no I/O)."""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from gateway.models import PointClass, Quality, Reading, Value
from gateway.profiles.loader import Catalog, load_profile
from gateway.profiles.models import Device, Inventory, Profile, Site
from gateway.rules.context import (
    DeviceState,
    Evaluator,
    HazardMeta,
    PointState,
    RuleContext,
    Timed,
    hazard_meta,
)
from gateway.rules.correlations import PumpSite
from gateway.rules.effects import Condition, Effect, Evidence, FireSignal, ShieldLog, TestRecord
from gateway.rules.engine import CLOCK_RESET_MS, RuleEngine
from gateway.rules.evaluators import point_evaluator
from gateway.rules.reachability import TrackedDevice
from gateway.rules.spec import (
    AnyRule,
    EventRule,
    FalseAlarmsRule,
    MaintenanceRule,
    NoDataRule,
    PumpStartRule,
    RateOfChangeRule,
    RuleSpec,
    Shield,
    SiteRules,
    StateHeldRule,
    StuckRule,
    TestMode,
    ThresholdRule,
    Title,
    effective_rules,
    validate_rules,
)
from gateway.sources.base import DeviceStatusChange

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = {
    p.profile: p
    for p in (load_profile(f) for f in sorted((ROOT / "device_profiles").glob("*.yaml")) if not f.name.startswith("_"))
}
S = 1000  # ms per second
T0 = 1_700_000_000_000

SENSOR = Profile.model_validate(
    {
        "profile": "test-sensor",
        "kind": "test_sensor",
        "title": {"zh": "测试传感器", "en": "Test sensor"},
        "transport": "mqtt",
        "cadence_s": 60,
        "mqtt": {"topic": "t/{device_id}"},
        "points": [
            {"name": "pressure", "class": "analog", "type": "float", "unit": "MPa", "path": "p", "range": [0, 2.5]},
            {"name": "mode", "class": "status", "type": "int", "path": "m", "enum": {0: "manual", 1: "auto"}},
            {"name": "flag", "class": "status", "type": "bool", "path": "f"},
            {"name": "runs", "class": "status", "type": "int", "unit": "count", "path": "r"},
            {"name": "label", "class": "status", "type": "str", "path": "l"},
        ],
    }
)


def site(site_id: str = "S1", **extra: Any) -> Site:
    return Site.model_validate(
        {
            "site_id": site_id,
            "name": f"site {site_id}",
            "town": "T",
            "grid_cell": "G1",
            "domain": "industrial",
            "station": {"station_id": "MS1", "name": "Micro station 1", "duty_officer": "officer-1"},
            **extra,
        }
    )


def device(device_id: str, profile: str, site_id: str = "S1", host: str | None = None) -> Device:
    data: dict[str, Any] = {
        "device_id": device_id,
        "site_id": site_id,
        "profile": profile,
        "location": {"building": "B1", "floor": "2F", "room": "201"},
    }
    if host is not None:
        data["modbus"] = {"host": host, "port": 502, "unit": int(device_id[-1])}
    return Device.model_validate(data)


def catalog(devices: Sequence[Device], sites: Sequence[Site] = ()) -> Catalog:
    profiles = {**SHIPPED, SENSOR.profile: SENSOR}
    site_ids = sorted({d.site_id for d in devices} - {s.site_id for s in sites})
    return Catalog(
        profiles=profiles, inventory=Inventory(sites=[*sites, *(site(s) for s in site_ids)], devices=list(devices))
    )


def engine(
    rules: Sequence[AnyRule] | None = None, devices: Sequence[Device] | None = None, site_rules: SiteRules | None = None
) -> RuleEngine:
    """An engine over one test-sensor device D1 (or ``devices``) with exactly ``rules`` (if given)."""
    cat = catalog(devices or [device("D1", "test-sensor")])
    return RuleEngine(
        cat,
        rules_for=(lambda d, p: list(rules)) if rules is not None else None,
        site_rules_for=(lambda s: site_rules) if site_rules is not None else None,
    )


def rd(
    metric: str, value: Value, ts: int, rx: int | None = None, dev: str = "D1", quality: Quality = Quality.GOOD
) -> Reading:
    return Reading("S1", dev, metric, value, "", ts, ts if rx is None else rx, quality, PointClass.ANALOG)


def conds(effects: Sequence[Effect]) -> list[tuple[str, str, bool, int]]:
    return [(e.device_id, e.rule, e.active, e.at_ms) for e in effects if isinstance(e, Condition)]


def feed(eng: RuleEngine, metric: str, series: Sequence[tuple[int, Value]]) -> list[tuple[str, bool, int]]:
    out: list[tuple[str, bool, int]] = []
    for ts, v in series:
        out += [(r, a, t) for _, r, a, t in conds(eng.on_readings([rd(metric, v, T0 + ts)], T0 + ts))]
    return out


def secs(series: Sequence[tuple[int, Value]]) -> list[tuple[int, Value]]:
    """(seconds, value) → (ms from T0, value)."""
    return [(t * S, v) for t, v in series]


def at(expected: Sequence[tuple[str, bool, int]]) -> list[tuple[str, bool, int]]:
    """(rule, active, seconds) → (rule, active, epoch ms)."""
    return [(r, a, T0 + t * S) for r, a, t in expected]


# ----------------------------------------------------------------------------- package boundaries


def _imports(path: Path) -> set[str]:
    """Every module a file imports, including under ``if TYPE_CHECKING:``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_profiles_import_no_rules_and_rules_stay_pure() -> None:
    for path in sorted((ROOT / "gateway" / "profiles").glob("*.py")):
        assert not {m for m in _imports(path) if m.startswith("gateway.rules")}, path.name
    impure = (
        "asyncio",
        "socket",
        "sqlite3",
        "time",
        "datetime",
        "threading",
        "gateway.sources",
        "gateway.store",
        "gateway.runtime.pipeline",
    )
    for path in sorted((ROOT / "gateway" / "rules").glob("*.py")):
        assert not {m for m in _imports(path) if m.split(".")[0] in impure or m.startswith(impure)}, path.name
        assert ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))), f"{path.name} says what it owns"


# ----------------------------------------------------------------------------- specs and validation

RULES: TypeAdapter[list[RuleSpec]] = TypeAdapter(list[RuleSpec])


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"kind": "threshold", "point": "pressure", "below": 0.25, "clear_at": 0.2}, "impossible hysteresis"),
        ({"kind": "threshold", "point": "pressure", "above": 1.6, "clear_at": 1.7}, "impossible hysteresis"),
        ({"kind": "threshold", "point": "pressure", "below": 0.25, "above": 1.6}, "exactly one of below or above"),
        ({"kind": "threshold", "point": "pressure", "below": 0.25, "hold_s": -1}, "greater than or equal to 0"),
        ({"kind": "state_held", "point": "mode", "hold_s": 60}, "exactly one of value or not_value"),
        ({"kind": "event", "point": "flag", "colour": "red"}, "Extra inputs are not permitted"),
        ({"kind": "banana", "point": "flag"}, "does not match any of the expected tags"),
        ({"kind": "event", "point": "flag", "severity": "huge"}, "Input should be 'info', 'minor'"),
    ],
)
def test_spec_rejects(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RULES.validate_python([rule])


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        (
            {"kind": "threshold", "point": "presure", "below": 0.25},
            "rules[0].point: unknown point 'presure' (profile test-sensor has: pressure, mode, flag, runs, label)",
        ),
        (
            {"kind": "threshold", "point": "flag", "above": 0.5},
            "rules[0].point: a threshold rule needs a numeric point",
        ),
        ({"kind": "stuck", "point": "label", "for_s": 60}, "rules[0].point: a stuck rule needs a numeric point"),
        ({"kind": "event", "point": "flag", "equals": 1}, "rules[0].equals: 1 is not a bool"),
        ({"kind": "event", "point": "mode", "equals": True}, "rules[0].equals: True is not a int"),
        (
            {"kind": "state_held", "point": "mode", "not_value": 7},
            "rules[0].not_value: 7 is not one of the codes of 'mode': 0 manual, 1 auto",
        ),
        ({"kind": "state_held", "point": "mode", "value": "auto"}, "rules[0].value: 'auto' is not a int"),
        (
            {"kind": "threshold", "point": "pressure", "below": 9},
            "rules[0].below: 9.0 is outside the physical range [0.0, 2.5]",
        ),
        ({"kind": "event", "point": "flag", "test_point": "mode"}, "rules[0].test_point: 'mode' must be a bool"),
    ],
)
def test_validate_rules_problems(rule: dict[str, Any], problem: str) -> None:
    problems = validate_rules(RULES.validate_python([rule]), SENSOR)
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_validate_rules_ok_and_duplicate_ids() -> None:
    ok = RULES.validate_python(
        [
            {"kind": "threshold", "point": "pressure", "below": 0.25, "clear_at": 0.28, "hold_s": 30},
            {"kind": "threshold", "point": "pressure", "above": 1.6},
            {"kind": "state_held", "point": "mode", "not_value": 1, "hold_s": 600},
            {"kind": "event", "point": "flag", "equals": True},
            {"kind": "no_data"},
            {"kind": "maintenance", "point": "runs"},
        ]
    )
    assert validate_rules(ok, SENSOR) == []
    dup = RULES.validate_python([{"kind": "event", "point": "flag"}, {"kind": "event", "point": "flag"}])
    assert validate_rules(dup, SENSOR) == [
        "rules[1].name: rule id 'flag' is already used by rules[0]; give one of them a name"
    ]


def test_shipped_profile_defaults() -> None:
    rules = {r.id: r for r in effective_rules(SHIPPED["onekey-alarm-button"])}
    assert isinstance(rules["fire_alarm"], EventRule) and rules["fire_alarm"].opens == "fire_event"
    assert rules["fire_alarm"].trigger == "each"  # an MQTT button press is a new signal each time
    assert {"fault", "tamper", "low_battery", "offline"} <= set(rules)
    cab = {r.id: r for r in effective_rules(SHIPPED["fire-pump-cabinet"])}
    mode = cab["pump1_not_auto"]  # declared in the profile: 60 s, a hard rule (issue 4)
    assert isinstance(mode, StateHeldRule) and mode.not_value == 1 and mode.hold_s == 60 and mode.hard
    assert mode.title is not None
    assert mode.title.en == "Fire pump 1 cabinet not in automatic mode"
    assert mode.title.zh == "1号消防泵控制柜未处于自动状态"
    # true means healthy for power points: the declared rule replaces the fault-class default
    power = cab["main_power"]
    assert isinstance(power, EventRule) and power.equals is False
    for prof in SHIPPED.values():
        assert validate_rules(effective_rules(prof), prof) == [], prof.profile


# ----------------------------------------------------------------------------- threshold

LOW = ThresholdRule(point="pressure", below=0.25, clear_at=0.28)
LOW_HOLD = ThresholdRule(point="pressure", below=0.25, clear_at=0.28, hold_s=30)
HIGH = ThresholdRule(point="pressure", above=1.6, clear_at=1.5)


@pytest.mark.parametrize(
    ("rule", "series", "expected"),
    [
        pytest.param(LOW, [(0, 0.30), (1, 0.25)], [], id="exactly-at-threshold-is-fine"),
        pytest.param(LOW, [(0, 0.30), (1, 0.2499)], [("pressure_low", True, 1)], id="just-below"),
        pytest.param(
            LOW,
            [(0, 0.24), (1, 0.26), (2, 0.24), (3, 0.27), (4, 0.28)],
            [("pressure_low", True, 0), ("pressure_low", False, 4)],
            id="flapping-held-by-hysteresis",
        ),
        pytest.param(
            ThresholdRule(point="pressure", below=0.25),
            [(0, 0.24), (1, 0.25), (2, 0.24)],
            [("pressure_low", True, 0), ("pressure_low", False, 1), ("pressure_low", True, 2)],
            id="no-hysteresis-flaps",
        ),
        pytest.param(
            HIGH,
            [(0, 1.6), (1, 1.61), (2, 1.55), (3, 1.5)],
            [("pressure_high", True, 1), ("pressure_high", False, 3)],
            id="above-with-hysteresis",
        ),
        pytest.param(LOW_HOLD, [(0, 0.2), (10, 0.2), (29, 0.2)], [], id="hold-not-yet"),
        pytest.param(
            LOW_HOLD, [(0, 0.2), (10, 0.2), (30, 0.2)], [("pressure_low", True, 30)], id="hold-completed-by-reading"
        ),
        pytest.param(
            LOW_HOLD, [(0, 0.2), (20, 0.26), (40, 0.2), (60, 0.2)], [], id="hold-restarts-when-value-recovers"
        ),
        pytest.param(
            LOW_HOLD, [(0, 0.2), (20, 0.26), (40, 0.2), (70, 0.2)], [("pressure_low", True, 70)], id="hold-restarted"
        ),
    ],
)
def test_threshold(rule: ThresholdRule, series: list[tuple[int, float]], expected: list[tuple[str, bool, int]]) -> None:
    eng = engine([rule])
    assert feed(eng, "pressure", secs(series)) == at(expected)


def test_threshold_hold_fires_from_tick_without_new_readings() -> None:
    eng = engine([LOW_HOLD])
    assert eng.on_readings([rd("pressure", 0.2, T0)], T0) == []
    assert eng.tick(T0 + 29_999) == []
    assert conds(eng.tick(T0 + 30_000)) == [("D1", "pressure_low", True, T0 + 30_000)]
    assert eng.tick(T0 + 90_000) == []  # fired once


def test_threshold_hold_uses_gateway_clock_for_a_device_clock_behind() -> None:
    eng = engine([LOW_HOLD])
    eng.on_readings([rd("pressure", 0.2, T0 - 3600 * S, rx=T0)], T0)  # device clock an hour behind
    assert eng.tick(T0 + 29 * S) == []
    assert conds(eng.tick(T0 + 30 * S)) == [("D1", "pressure_low", True, T0 - 3600 * S + 30 * S)]


# ----------------------------------------------------------------------------- time edges


@pytest.mark.parametrize(
    ("series", "expected", "stale"),
    [
        pytest.param([(10, 0.2), (5, 0.3)], [("pressure_low", True, 10)], 1, id="late-reading-ignored"),
        pytest.param([(10, 0.2), (10, 0.3)], [("pressure_low", True, 10)], 1, id="duplicate-ignored"),
        pytest.param([(10, 0.3), (12, 0.3), (11, 0.2), (13, 0.3)], [], 1, id="out-of-order-dip-ignored"),
        pytest.param(
            [(10, 0.2), (9, 0.3), (20, 0.3)],
            [("pressure_low", True, 10), ("pressure_low", False, 20)],
            1,
            id="newer-after-late",
        ),
    ],
)
def test_stale_and_out_of_order(
    series: list[tuple[int, float]], expected: list[tuple[str, bool, int]], stale: int
) -> None:
    eng = engine([LOW])
    assert feed(eng, "pressure", secs(series)) == at(expected)
    assert eng.counters["stale"] == stale


def test_device_clock_reset_is_followed() -> None:
    eng = engine([LOW])
    eng.on_readings([rd("pressure", 0.3, T0, rx=T0)], T0)
    back = T0 - CLOCK_RESET_MS - 1
    # received later with a clock far behind: a reset, evaluated
    assert conds(eng.on_readings([rd("pressure", 0.2, back, rx=T0 + S)], T0 + S)) == [
        ("D1", "pressure_low", True, back)
    ]
    assert eng.counters["clock_reset"] == 1
    # a little behind (and received later) is just late
    assert eng.on_readings([rd("pressure", 0.3, back - 5 * S, rx=T0 + 2 * S)], T0 + 2 * S) == []
    assert eng.counters["stale"] == 1


def test_gateway_clock_going_backwards_fires_nothing_early() -> None:
    eng = engine([LOW_HOLD])
    eng.on_readings([rd("pressure", 0.2, T0)], T0)
    assert eng.tick(T0 - 3600 * S) == []
    assert eng.tick(T0 + 10 * S) == []
    assert conds(eng.tick(T0 + 30 * S))


def test_missing_quality_is_not_evaluated() -> None:
    eng = engine([EventRule(point="flag")])
    assert eng.on_readings([rd("flag", True, T0, quality=Quality.MISSING)], T0) == []
    assert eng.counters["missing"] == 1


# ----------------------------------------------------------------------------- event and state held


@pytest.mark.parametrize(
    ("rule", "series", "expected"),
    [
        pytest.param(
            EventRule(point="flag"),
            [(0, False), (1, True), (2, True), (3, False), (4, True)],
            [("flag", True, 1), ("flag", False, 3), ("flag", True, 4)],
            id="fault-edges-and-repeat",
        ),
        pytest.param(EventRule(point="flag"), [(0, True)], [("flag", True, 0)], id="first-reading-true"),
        pytest.param(
            EventRule(point="mode", equals=0, name="manual"),
            [(0, 1), (1, 0), (2, 2), (3, 0)],
            [("manual", True, 1), ("manual", False, 2), ("manual", True, 3)],
            id="equals-int",
        ),
        pytest.param(
            StateHeldRule(point="mode", not_value=1, hold_s=60),
            [(0, 1), (10, 0), (69, 2), (70, 0)],
            [("mode_held", True, 70)],
            id="not-auto-held",
        ),
        pytest.param(
            StateHeldRule(point="mode", not_value=1, hold_s=60),
            [(0, 0), (30, 1), (40, 0), (90, 0)],
            [],
            id="back-to-auto-restarts-hold",
        ),
        pytest.param(
            StateHeldRule(point="flag", value=False, hold_s=0),
            [(0, True), (1, False), (2, True)],
            [("flag_held", True, 1), ("flag_held", False, 2)],
            id="value-no-hold",
        ),
    ],
)
def test_event_and_state(rule: AnyRule, series: list[tuple[int, Value]], expected: list[tuple[str, bool, int]]) -> None:
    eng = engine([rule])
    metric = str(getattr(rule, "point"))  # noqa: B009
    assert feed(eng, metric, secs(series)) == at(expected)


@pytest.mark.parametrize(("trigger", "signals"), [("edge", 1), ("each", 3)])
def test_fire_signal_edge_or_each(trigger: str, signals: int) -> None:
    eng = engine([EventRule.model_validate({"point": "flag", "opens": "fire_event", "trigger": trigger})])
    out: list[Effect] = []
    for i in range(3):
        out += eng.on_readings([rd("flag", True, T0 + i * S)], T0 + i * S)
    fires = [e for e in out if isinstance(e, FireSignal)]
    assert len(fires) == signals and fires[0].rule == "flag" and fires[0].site_id == "S1"
    assert not [e for e in out if isinstance(e, Condition)]


def test_button_defaults_from_shipped_profile() -> None:
    eng = engine(devices=[device("B1", "onekey-alarm-button")])
    out = eng.on_readings(
        [rd("fire_alarm", True, T0, dev="B1"), rd("tamper", True, T0, dev="B1"), rd("battery", 80.0, T0, dev="B1")], T0
    )
    assert [type(e).__name__ for e in out] == ["FireSignal", "Condition"]
    tamper = out[1]
    assert isinstance(tamper, Condition) and tamper.hazard_class == "fault" and tamper.severity == "minor"
    assert tamper.title_zh == "一键式消防联动报警装置：防拆报警"
    assert tamper.title_en == "One-key linked fire alarm button: Tamper"


def test_fire_signal_test_point() -> None:
    eng = engine([EventRule(point="pressure", opens="fire_event", test_point="flag")])
    eng.on_readings([rd("flag", True, T0)], T0)
    sig = eng.on_readings([rd("pressure", 1.0, T0 + S)], T0 + S)
    assert isinstance(sig[0], FireSignal) and sig[0].test


# ----------------------------------------------------------------------------- rate of change and stuck


@pytest.mark.parametrize(
    ("series", "expected"),
    [
        pytest.param([(0, 0.50), (60, 0.45)], [], id="slow-drop"),
        pytest.param([(0, 0.50), (60, 0.30)], [("pressure_rate", True, 60)], id="fast-drop"),
        pytest.param([(0, 0.50), (6, 0.48)], [("pressure_rate", True, 6)], id="fast-over-a-short-gap"),
        pytest.param(
            [(0, 0.50), (60, 0.30), (120, 0.29)],
            [("pressure_rate", True, 60), ("pressure_rate", False, 120)],
            id="clears-when-steady",
        ),
    ],
)
def test_rate_of_change(series: list[tuple[int, float]], expected: list[tuple[str, bool, int]]) -> None:
    eng = engine([RateOfChangeRule(point="pressure", max_change=0.1, per_s=60)])
    assert feed(eng, "pressure", secs(series)) == at(expected)


@pytest.mark.parametrize(
    ("series", "expected"),
    [
        pytest.param([(0, 0.5), (300, 0.5), (600, 0.5)], [("pressure_stuck", True, 600)], id="frozen"),
        pytest.param([(0, 0.5), (600, 0.5)], [], id="too-few-samples"),
        pytest.param([(0, 0.5), (100, 0.5), (200, 0.5)], [], id="not-long-enough"),
        pytest.param(
            [(0, 0.5), (300, 0.5), (600, 0.5), (700, 0.51)],
            [("pressure_stuck", True, 600), ("pressure_stuck", False, 700)],
            id="moves-again",
        ),
        pytest.param([(0, 0.5), (300, 0.5001), (600, 0.4999)], [("pressure_stuck", True, 600)], id="within-tolerance"),
    ],
)
def test_stuck(series: list[tuple[int, float]], expected: list[tuple[str, bool, int]]) -> None:
    eng = engine([StuckRule(point="pressure", for_s=600, min_samples=3, tolerance=0.0005)])
    assert feed(eng, "pressure", secs(series)) == at(expected)


# ----------------------------------------------------------------------------- no data, links, sources


def test_no_data_fires_from_tick_and_clears_on_data() -> None:
    eng = engine([NoDataRule()])  # cadence 60 s x 3
    assert eng.tick(T0) == []
    eng.on_readings([rd("pressure", 0.3, T0 + 100 * S)], T0 + 100 * S)
    assert eng.tick(T0 + 180 * S) == []  # lazily re-armed to 100 + 180
    assert conds(eng.tick(T0 + 280 * S)) == [("D1", "offline", True, T0 + 280 * S)]
    assert eng.tick(T0 + 900 * S) == []  # once
    assert conds(eng.on_readings([rd("pressure", 0.3, T0 + 901 * S)], T0 + 901 * S)) == [
        ("D1", "offline", False, T0 + 901 * S)
    ]
    assert conds(eng.tick(T0 + 1081 * S)) == [("D1", "offline", True, T0 + 1081 * S)]


def test_point_no_data() -> None:
    eng = engine([NoDataRule(point="pressure", cadence_s=10, cadence_multiple=2)])
    eng.on_readings([rd("pressure", 0.3, T0)], T0)
    assert conds(eng.tick(T0 + 20 * S)) == [("D1", "pressure_no_data", True, T0 + 20 * S)]


def _cab(n: int) -> list[Device]:
    return [device(f"P{i}", "fire-pump-cabinet", host="10.0.0.9") for i in range(1, n + 1)]


def test_link_down_gives_one_condition() -> None:
    eng = engine(devices=_cab(3))
    down = [DeviceStatusChange(f"P{i}", "unreachable", T0, "timeout", "10.0.0.9:502") for i in (1, 2, 3)]
    assert conds(eng.on_status(down, T0)) == [("10.0.0.9:502", "link_down", True, T0)]
    # their no-data timers are quiet while the link is down
    assert conds(eng.tick(T0 + 3600 * S)) == []
    up = eng.on_status([DeviceStatusChange("P1", "online", T0 + 3601 * S)], T0 + 3601 * S)
    assert conds(up) == [("10.0.0.9:502", "link_down", False, T0 + 3601 * S)]


def test_single_device_unreachable_is_offline() -> None:
    eng = engine(devices=_cab(3))
    out = eng.on_status([DeviceStatusChange("P2", "unreachable", T0, "no answer")], T0)
    assert conds(out) == [("P2", "offline", True, T0)]
    assert conds(eng.on_status([DeviceStatusChange("P2", "online", T0 + S)], T0 + S)) == [
        ("P2", "offline", False, T0 + S)
    ]


def test_gateway_source_down_suppresses_per_device_offline() -> None:
    eng = engine(devices=[device(f"B{i}", "onekey-alarm-button") for i in range(5)])  # 900 s timeout
    eng.tick(T0)
    out = eng.on_source("mqtt", False, T0 + 10 * S)
    assert conds(out) == [("mqtt", "source_down", True, T0 + 10 * S)]
    assert conds(eng.tick(T0 + 5000 * S)) == []
    back = eng.on_source("mqtt", True, T0 + 5000 * S)
    assert conds(back) == [("mqtt", "source_down", False, T0 + 5000 * S)]
    # a fresh no-data period from the reconnect, then the silent devices go offline
    assert conds(eng.tick(T0 + 5000 * S + 899 * S)) == []
    assert len(conds(eng.tick(T0 + 5000 * S + 6000 * S))) == 5


# ----------------------------------------------------------------------------- site correlations


def _pump_engine() -> RuleEngine:
    return engine(
        devices=[device("P1", "fire-pump-cabinet", host="10.0.0.9")],
        site_rules=SiteRules(pump_start=PumpStartRule(limit_s=120)),
    )


@pytest.mark.parametrize(
    ("run_at", "tick_at", "expected"),
    [
        pytest.param(None, 119, [], id="within-limit"),
        pytest.param(None, 120, [("", "pump_start", True, T0 + 120 * S)], id="fails-to-start"),
        pytest.param(60, 200, [], id="started-in-time"),
    ],
)
def test_pump_start(run_at: int | None, tick_at: int, expected: list[tuple[str, str, bool, int]]) -> None:
    eng = _pump_engine()
    eng.on_readings([rd("pump1_run", False, T0 - S, dev="P1"), rd("pressure_switch", False, T0 - S, dev="P1")], T0 - S)
    eng.on_readings([rd("pressure_switch", True, T0, dev="P1")], T0)
    if run_at is not None:
        eng.on_readings([rd("pump1_run", True, T0 + run_at * S, dev="P1")], T0 + run_at * S)
    out = eng.tick(T0 + tick_at * S)
    got = conds(out)
    assert got == expected
    if got:
        c = next(e for e in out if isinstance(e, Condition))
        assert c.severity == "critical" and c.hazard_class == "pump_failure"
        assert c.title_en == "Fire pump did not start within 120 s of a start signal"
        late = eng.on_readings([rd("pump2_run", True, T0 + 300 * S, dev="P1")], T0 + 300 * S)
        assert conds(late) == [("", "pump_start", False, T0 + 300 * S)]


def test_dual_power_loss() -> None:
    eng = engine(devices=[device("P1", "fire-pump-cabinet", host="10.0.0.9")])
    r = eng.on_readings([rd("main_power", True, T0, dev="P1"), rd("backup_power", True, T0, dev="P1")], T0)
    assert not [c for c in conds(r) if c[1] == "dual_power_loss"]
    r = eng.on_readings([rd("main_power", False, T0 + S, dev="P1")], T0 + S)
    assert not [c for c in conds(r) if c[1] == "dual_power_loss"]
    r = eng.on_readings([rd("backup_power", False, T0 + 2 * S, dev="P1")], T0 + 2 * S)
    assert [c for c in conds(r) if c[1] == "dual_power_loss"] == [("P1", "dual_power_loss", True, T0 + 2 * S)]
    r = eng.on_readings([rd("main_power", True, T0 + 3 * S, dev="P1")], T0 + 3 * S)
    assert [c for c in conds(r) if c[1] == "dual_power_loss"] == [("P1", "dual_power_loss", False, T0 + 3 * S)]


def test_false_alarms_per_day() -> None:
    eng = engine([], site_rules=SiteRules(false_alarms=FalseAlarmsRule(max_per_day=5)))
    out: list[Effect] = []
    for i in range(5):
        out += eng.on_fire_resolved("S1", "D1", "false_alarm", T0 + i * 3600 * S)
    out += eng.on_fire_resolved("S1", "D1", "real_fire", T0 + 5 * 3600 * S)
    assert conds(out) == []
    sixth = eng.on_fire_resolved("S1", "D1", "false_alarm", T0 + 6 * 3600 * S)
    assert conds(sixth) == [("D1", "false_alarms", True, T0 + 6 * 3600 * S)]
    # the first one leaves the 24 h window: back to 5, the condition ends
    assert conds(eng.tick(T0 + 24 * 3600 * S)) == [("D1", "false_alarms", False, T0 + 24 * 3600 * S)]


def test_maintenance_overdue() -> None:
    week = 7 * 86400 * S
    eng = engine([MaintenanceRule(point="runs")])
    eng.on_readings([rd("runs", 10, T0)], T0)
    eng.on_readings([rd("runs", 10, T0 + 86400 * S)], T0 + 86400 * S)  # unchanged: not a record
    assert eng.tick(T0 + week - 1) == []
    assert conds(eng.tick(T0 + week)) == [("D1", "runs_overdue", True, T0 + week)]
    assert conds(eng.on_readings([rd("runs", 11, T0 + week + S)], T0 + week + S)) == [
        ("D1", "runs_overdue", False, T0 + week + S)
    ]
    assert conds(eng.tick(T0 + 2 * week + S)) == [("D1", "runs_overdue", True, T0 + 2 * week + S)]


# ----------------------------------------------------------------------------- test mode and shields


def test_test_mode_gives_test_records() -> None:
    eng = engine([EventRule(point="flag"), EventRule(point="mode", opens="fire_event")])
    mode = TestMode(device_id="D1", until_ms=T0 + 60 * S, reason="annual test", actor="tech")
    on = eng.set_test_mode(mode, T0)
    assert isinstance(on[0], ShieldLog) and on[0].action == "test_on"
    out = eng.on_readings([rd("flag", True, T0 + S), rd("mode", 1, T0 + S)], T0 + S)
    assert [(type(e).__name__, getattr(e, "opens", None)) for e in out] == [
        ("TestRecord", "hazard"),
        ("TestRecord", "fire_event"),
    ]
    rec = out[0]
    assert isinstance(rec, TestRecord) and rec.reason == "annual test" and rec.actor == "tech"
    # expiry: logged, and the condition still active is raised now
    exp = eng.tick(T0 + 60 * S)
    assert [type(e).__name__ for e in exp] == ["ShieldLog", "Condition"]
    assert isinstance(exp[0], ShieldLog) and exp[0].action == "test_expired"
    assert conds(exp) == [("D1", "flag", True, T0 + 60 * S)]


def test_shield_one_point_is_time_limited_and_logged() -> None:
    eng = engine([EventRule(point="flag"), EventRule(point="mode", equals=0)])
    eng.set_shield(Shield(device_id="D1", point="flag", until_ms=T0 + 60 * S, reason="wiring work", actor="ops"), T0)
    out = eng.on_readings([rd("flag", True, T0 + S), rd("mode", 0, T0 + S)], T0 + S)
    assert [(type(e).__name__, getattr(e, "action", None)) for e in out] == [
        ("ShieldLog", "suppressed"),
        ("Condition", None),
    ]
    # cleared under the shield: nothing to clear downstream
    assert eng.on_readings([rd("flag", False, T0 + 2 * S)], T0 + 2 * S) == []
    end = eng.end_mode("D1", "flag", "ops", T0 + 3 * S)
    assert [(type(e).__name__, getattr(e, "action", None)) for e in end] == [("ShieldLog", "shield_off")]
    assert eng.tick(T0 + 60 * S) == []  # the expiry timer was cancelled


# ----------------------------------------------------------------------------- persistence


def test_snapshot_restore_mid_hold() -> None:
    rules: list[AnyRule] = [
        LOW_HOLD,
        EventRule(point="flag"),
        NoDataRule(),
        StuckRule(point="pressure", for_s=600),
        MaintenanceRule(point="runs"),
    ]
    eng = engine(rules)
    eng.on_readings([rd("flag", True, T0), rd("runs", 3, T0), rd("pressure", 0.2, T0 + 10 * S)], T0 + 10 * S)
    eng.set_shield(Shield(device_id="D1", point="mode", until_ms=T0 + 3600 * S, reason="r", actor="a"), T0)
    snap = json.loads(json.dumps(eng.snapshot()))
    fresh = engine(rules)
    fresh.restore(snap)
    assert fresh.snapshot() == snap
    # the hold completes on time, the fault clears (it was active before the restart), no duplicates
    assert conds(fresh.tick(T0 + 40 * S)) == [("D1", "pressure_low", True, T0 + 40 * S)]
    assert conds(fresh.on_readings([rd("flag", True, T0 + 41 * S)], T0 + 41 * S)) == []
    assert conds(fresh.on_readings([rd("flag", False, T0 + 42 * S)], T0 + 42 * S)) == [
        ("D1", "flag", False, T0 + 42 * S)
    ]
    # a reading older than the last one seen before the restart is stale
    assert conds(fresh.on_readings([rd("pressure", 0.1, T0 + 5 * S)], T0 + 43 * S)) == []
    assert fresh.counters["stale"] == 1


#: Written by the engine before it was split into modules (commit 6386433): a pressure hold pending
#: under test mode, a pump start pending, a fault standing under a shield, a link down, two false
#: alarms over the limit and the MQTT source down.
SNAPSHOT_V1: dict[str, Any] = {
    "version": 1,
    "started": True,
    "points": {
        "D1|pressure": [1700000000000, 1700000000000, 0.1],
        "D1|runs": [1700000000000, 1700000000000, 4],
        "D1|mode": [1700000000000, 1700000000000, 0],
        "P1|pump1_fault": [1700000001000, 1700000001000, True],
        "P1|pressure_switch": [1700000001000, 1700000001000, True],
    },
    "evals": {"D1|pressure_low": [1, 1700000000000, 1700000030000], "D1|runs_stuck": [4.0, 1700000000000, 1, 0]},
    "devices": {
        "D1": [1700000000000, 0, 0, None, 0, 1700000180000],
        "P1": [1700000001000, 0, 0, None, 0, 1700000180000],
        "P2": [1700000000000, 0, 1, "10.0.0.9:502", 0, 1700000180000],
    },
    "pumps": {"S1": [1700000001000, 1700000061000, 0, []]},
    "links_down": ["10.0.0.9:502"],
    "sources_down": ["mqtt"],
    "source_up_at": {},
    "false_alarms": {"D1": ["S1", [1700000003000, 1700000004000], 1]},
    "modes": [
        {
            "type": "test",
            "device_id": "D1",
            "point": "pressure",
            "until_ms": 1700003600000,
            "reason": "drill",
            "actor": "tech",
        },
        {
            "type": "shield",
            "device_id": "P1",
            "point": None,
            "until_ms": 1700007200000,
            "reason": "repair",
            "actor": "tech",
        },
    ],
    "active": [
        ["S1", "P1", "pump1_fault", "pump1_fault", "shield"],
        ["S1", "10.0.0.9:502", "link_down", "", ""],
        ["S1", "D1", "false_alarms", "", ""],
    ],
    "counters": {"stale": 0, "unknown_device": 0, "clock_reset": 0, "missing": 0},
}


def test_snapshot_v1_written_before_the_split_restores() -> None:
    cat = catalog(
        [
            device("D1", "test-sensor"),
            device("P1", "fire-pump-cabinet", host="10.0.0.9"),
            device("P2", "fire-pump-cabinet", host="10.0.0.9"),
        ]
    )
    extra: list[AnyRule] = [LOW_HOLD, StuckRule(point="runs", for_s=60)]
    eng = RuleEngine(
        cat,
        rules_for=lambda d, p: [*effective_rules(p, d), *(extra if d.device_id == "D1" else [])],
        site_rules_for=lambda s: SiteRules(
            pump_start=PumpStartRule(limit_s=60), false_alarms=FalseAlarmsRule(max_per_day=1)
        ),
    )
    eng.restore(json.loads(json.dumps(SNAPSHOT_V1)))
    assert eng.snapshot() == SNAPSHOT_V1
    out = eng.tick(T0 + 61 * S)
    out += eng.on_source("mqtt", True, T0 + 62 * S)
    out += eng.on_readings(
        [rd("runs", 4, T0 + 63 * S), rd("runs", 4, T0 + 70 * S), rd("pump1_run", True, T0 + 70 * S, dev="P1")],
        T0 + 70 * S,
    )
    out += eng.on_status([DeviceStatusChange("P2", "online", T0 + 80 * S)], T0 + 80 * S)
    out += eng.end_mode("D1", "pressure", "tech", T0 + 90 * S)
    out += eng.end_mode("P1", None, "tech", T0 + 91 * S)
    out += eng.tick(T0 + 86_410 * S)
    seen = [
        (
            type(e).__name__,
            e.device_id,
            e.action if isinstance(e, ShieldLog) else e.rule,
            getattr(e, "active", None),
            e.at_ms - T0,
        )
        for e in out
    ]
    assert seen == [
        ("TestRecord", "D1", "pressure_low", True, 30 * S),  # the hold completes, under test
        ("Condition", "", "pump_start", True, 61 * S),
        ("Condition", "mqtt", "source_down", False, 62 * S),
        ("Condition", "D1", "runs_stuck", True, 70 * S),
        ("Condition", "", "pump_start", False, 70 * S),
        ("Condition", "10.0.0.9:502", "link_down", False, 80 * S),
        ("ShieldLog", "D1", "test_off", None, 90 * S),
        ("Condition", "D1", "pressure_low", True, 90 * S),  # still standing when the test ends
        ("ShieldLog", "P1", "shield_off", None, 91 * S),
        ("Condition", "P1", "pump1_fault", True, 91 * S),  # held back by the shield until now
        ("Condition", "D1", "offline", True, 86_410 * S),
        ("Condition", "P1", "offline", True, 86_410 * S),
        ("Condition", "P2", "offline", True, 86_410 * S),
        ("Condition", "D1", "false_alarms", False, 86_410 * S),
    ]


def test_snapshot_of_another_version_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown rule-state snapshot version 2"):
        engine([LOW]).restore({**SNAPSHOT_V1, "version": 2})


# ----------------------------------------------------------------------------- the narrow context


class Recorder:
    """A :class:`RuleContext` that records what a rule asks of it: rules need nothing else."""

    def __init__(self, sources_down: Sequence[str] = ()) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.sources_down = set(sources_down)
        self.ctx = RuleContext(
            arm=self.arm,
            condition=self.condition,
            site_condition=self.site_condition,
            fire_signal=self.fire_signal,
            sources_down=self.sources_down,
            source_up_at={},
        )

    def arm(self, timed: Timed, due_ms: int, /) -> None:
        timed.due = due_ms
        self.calls.append(("arm", due_ms - T0))

    def condition(
        self,
        dev: DeviceState,
        meta: HazardMeta,
        active: bool,
        at_ms: int,
        metric: str | None,
        evidence: list[Evidence],
        out: list[Effect],
        /,
    ) -> None:
        self.calls.append(("condition", dev.device_id, meta.rule, active, at_ms - T0))

    def site_condition(
        self,
        site_id: str,
        device_id: str,
        meta: HazardMeta,
        active: bool,
        at_ms: int,
        evidence: list[Evidence],
        out: list[Effect],
        /,
    ) -> None:
        self.calls.append(("site_condition", site_id, meta.rule, active, at_ms - T0))

    def fire_signal(self, p: PointState, rule: str, at_ms: int, test: bool, out: list[Effect], /) -> None:
        self.calls.append(("fire_signal", p.dev.device_id, rule, test, at_ms - T0))


META = hazard_meta("pressure_low", "supervisory", "major", Title(zh="低", en="low"), False, False)


def point_of(metric: str) -> PointState:
    dev = TrackedDevice("D1", "S1", SENSOR, "mqtt", None, 180 * S, META)
    p = PointState(dev, metric)
    dev.add_point(p)
    return p


def fed(ev: Evaluator, rec: Recorder, p: PointState, value: Value, ts: int, rx: int | None = None) -> None:
    prev, prev_ts = p.value, p.ts
    r = rd(p.metric, value, ts, rx)
    p.ts, p.rx, p.value = r.ts_ms, r.received_at_ms, r.value
    ev.feed(rec.ctx, p, r, prev, prev_ts, [])


def test_a_hold_arms_a_timer_and_raises_through_the_context() -> None:
    rec, p = Recorder(), point_of("pressure")
    ev = point_evaluator(LOW_HOLD, META, "D1|pressure_low", SENSOR)
    assert isinstance(ev, Timed)
    fed(ev, rec, p, 0.1, T0, rx=T0 + 2 * S)
    assert rec.calls == [("arm", 32 * S)]  # the hold runs on the gateway clock, from the receive time
    ev.fire(rec.ctx, T0 + 32 * S, [])
    fed(ev, rec, p, 0.3, T0 + 40 * S)
    assert rec.calls[1:] == [
        ("condition", "D1", "pressure_low", True, 30 * S),
        ("condition", "D1", "pressure_low", False, 40 * S),
    ]


def test_point_silence_waits_while_the_source_is_down() -> None:
    rec, p = Recorder(sources_down=["mqtt"]), point_of("pressure")
    ev = point_evaluator(NoDataRule(point="pressure", cadence_s=10), META, "D1|pressure_no_data", SENSOR)
    assert isinstance(ev, Timed)
    fed(ev, rec, p, 0.5, T0)
    ev.fire(rec.ctx, T0 + 30 * S, [])
    assert rec.calls == [("arm", 30 * S), ("arm", 30 * S + 1)]  # re-armed, nothing raised
    rec.sources_down.discard("mqtt")
    ev.fire(rec.ctx, T0 + 31 * S, [])
    assert rec.calls[2:] == [("condition", "D1", "pressure_low", True, 31 * S)]


def test_pump_start_correlation_through_the_context() -> None:
    rec = Recorder()
    pump = PumpSite("S1", PumpStartRule(limit_s=60), META)
    pump.trigger(rec.ctx, T0, T0 + S)
    pump.trigger(rec.ctx, T0 + 5 * S, T0 + 5 * S)  # already pending: no second timer
    pump.fire(rec.ctx, T0 + 61 * S, [])
    pump.run_changed(rec.ctx, "P1/pump1_run", True, T0 + 70 * S, [])
    assert rec.calls == [
        ("arm", 61 * S),
        ("site_condition", "S1", "pressure_low", True, 61 * S),
        ("site_condition", "S1", "pressure_low", False, 70 * S),
    ]


def test_unknown_device_is_counted() -> None:
    eng = engine([LOW])
    assert eng.on_readings([rd("pressure", 0.1, T0, dev="NOPE")], T0) == []
    assert eng.counters["unknown_device"] == 1
