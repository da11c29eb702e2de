"""MQTT decoding against what careless devices and hostile clients send: every payload gives readings or a
dead letter naming the place and the problem, never an exception (table cases, then property-based fuzzing
of every shipped MQTT profile)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.models import Quality, RawMessage
from gateway.normalize.json_decoder import JsonDecoder, has_duplicate_keys
from gateway.normalize.router import MqttNormalizer, Normalized
from gateway.profiles.loader import Catalog, load_catalog, load_profile
from tests.support import PROFILES, ROOT, fuzz_examples

NOW = 1_764_400_000_000
BUTTON_TOPIC = "fire/site-a/button/btn-1/up"


@cache
def _catalog() -> Catalog:
    return load_catalog(PROFILES, ROOT / "examples" / "inventory.yaml")


def _device_topics() -> list[tuple[str, str]]:
    """(profile, a topic of one inventory device of it) for every MQTT profile in use."""
    cat = _catalog()
    out: dict[str, str] = {}
    for dev in cat.inventory.devices:
        prof = cat.profiles[dev.profile]
        if prof.mqtt is None or dev.profile in out:
            continue
        out[dev.profile] = prof.mqtt.topic.replace("{site_id}", dev.site_id).replace("{device_id}", dev.device_id)
    return sorted(out.items())


def _button_topic() -> str:
    return dict(_device_topics())["onekey-alarm-button"]


def _norm(payload: bytes, topic: str | None = None, **kw: int | float) -> Normalized:
    n = MqttNormalizer(_catalog(), **kw)  # type: ignore[arg-type]
    return n.normalize(RawMessage("mqtt", topic or _button_topic(), payload, NOW))


def _values(d: Normalized) -> dict[str, object]:
    return {r.metric: r.value for r in d.readings}


# ---------------------------------------------------------------------------- poison in, dead letter out


@pytest.mark.parametrize(
    ("payload", "names"),
    [
        (b'{"event":"heartbeat","ts":1e306}', "'ts'"),
        (b'{"event":"heartbeat","ts":-1}', "'ts'"),
        (b'{"event":"heartbeat","ts":32503680001}', "'ts'"),
        (b'{"event":"heartbeat","ts":"2026"}', "'ts'"),
        (b'{"event":"heartbeat","ts":true}', "'ts'"),
        (b'{"event":"heartbeat","battery":1e308}', "'battery'"),
        (b'{"event":"heartbeat","battery":-0.5}', "'battery'"),
        (b'{"event":"heartbeat","battery":123456789012345678901234567890}', "'battery'"),
        (b'{"event":"heartbeat","rssi":"strong"}', "'rssi'"),
        (b'{"event":"heartbeat","battery":[1,2]}', "'battery'"),
        (b'{"event":"heartbeat","battery":{"a":1}}', "'battery'"),
        (b'{"event":"alarm","event":"heartbeat"}', "'event'"),
        (b'{"event":"ALRM"}', "'event'"),
        (b'{"event":1}', "'event'"),
        (b'{"event":true}', "'event'"),
        (b'{"event":null,"battery":50,"battery":51}', "'battery'"),
        (b'{"event":{"nested":"alarm"}}', "'event'"),
        (b'{"event":"alarm","ts":NaN}', "JSON"),
        (b'{"event":"alarm","battery":Infinity}', "JSON"),
        (b'{"event":"\\ud800"}', "JSON"),
        (b"\xff\xfe{}", "JSON"),
        (b"[" * 1500 + b"]" * 1500, "JSON"),
        (b"[" * 5000 + b"]" * 5000, "limit"),
        (b'"alarm"', "JSON object"),
        (b"", "JSON"),
    ],
)
def test_poison_payload_is_a_dead_letter_naming_the_field(payload: bytes, names: str) -> None:
    d = _norm(payload)
    assert d.dead is not None, f"accepted: {payload[:60]!r} -> {_values(d)}"
    assert d.readings == []
    assert names in d.dead.reason, d.dead.reason


@pytest.mark.parametrize("spelling", ["alarm", "ALARM", "Alarm", "alarm ", " AlArM\t"])
def test_button_accepts_the_vendor_spellings_it_documents(spelling: str) -> None:
    d = _norm(json.dumps({"event": spelling, "ts": NOW / 1000}).encode())
    assert d.dead is None
    assert _values(d) == {"fire_alarm": True}


def test_a_known_value_that_gives_no_reading_is_not_a_dead_letter() -> None:
    topic = dict(_device_topics())["micro-station-terminal"]
    d = _norm(b'{"ts": 1764400000, "event": "equipment_check", "equipment": {"ok": true, "missing": 0}}', topic)
    assert d.dead is None
    assert _values(d) == {"equipment_check_ok": True, "equipment_missing": 0}


def test_duplicate_keys_found_with_and_without_colons_in_strings() -> None:
    assert has_duplicate_keys(b'{"a":1,"a":2}', {"a": 2}) == "a"
    assert has_duplicate_keys(b'{"t":"12:00:00","b":{"c":1,"c":1}}', {"t": "12:00:00", "b": {"c": 1}}) == "c"
    assert has_duplicate_keys(b'{"t":"12:00:00","b":{"c":1}}', {"t": "12:00:00", "b": {"c": 1}}) is None
    assert has_duplicate_keys(b'{"a":[{"x":1},{"x":2}]}', {"a": [{"x": 1}, {"x": 2}]}) is None


def test_oversized_payload_is_refused_before_it_is_parsed() -> None:
    big = b'{"event":"heartbeat","pad":"' + b"x" * 300_000 + b'"}'
    d = _norm(big, max_payload_bytes=262_144)
    assert d.dead is not None and "pipeline.max_payload_bytes" in d.dead.reason
    cut = MqttNormalizer(_catalog()).normalize(
        RawMessage("mqtt", _button_topic(), big[:4096], NOW, truncated_from=len(big))
    )
    assert cut.dead is not None and str(len(big)) in cut.dead.reason
    assert cut.dead.size == len(big)


def test_device_clock_ahead_is_suspect() -> None:
    ahead = (NOW + 3_600_000) / 1000
    d = _norm(json.dumps({"event": "heartbeat", "ts": ahead, "battery": 80}).encode())
    assert d.dead is None and {r.quality for r in d.readings} == {Quality.SUSPECT}
    ok = _norm(json.dumps({"event": "heartbeat", "ts": NOW / 1000 + 10, "battery": 80}).encode())
    assert {r.quality for r in ok.readings} == {Quality.GOOD}
    tight = _norm(
        json.dumps({"event": "heartbeat", "ts": NOW / 1000 + 10, "battery": 80}).encode(), max_clock_skew_s=5.0
    )
    assert {r.quality for r in tight.readings} == {Quality.SUSPECT}


def test_decoder_bug_becomes_a_dead_letter_naming_the_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.normalize.json_decoder as jd

    def boom(*a: object, **k: object) -> object:
        raise ZeroDivisionError("injected")

    monkeypatch.setattr(jd, "cast_value", boom)
    d = _norm(b'{"event":"heartbeat","ts":1764400000,"battery":50}')
    assert d.dead is not None and "ZeroDivisionError" in d.dead.reason and "point heartbeat" in d.dead.reason


# ---------------------------------------------------------------------------- property-based fuzzing

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 1e306, -0.0, 5e-324]),
    st.text(max_size=30),
    st.sampled_from(["alarm", "ALARM", "heartbeat", "fault", "", "\u0000", "火警"]),
)
_json = st.recursive(
    _scalars,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=5)),
    max_leaves=20,
)
_fields = st.sampled_from(
    [
        "event",
        "ts",
        "battery",
        "rssi",
        "smoke",
        "temp",
        "pressure",
        "level",
        "unit",
        "staff_on_duty",
        "equipment",
        "seq",
        "value",
        "rsrp",
    ]
)


def _encode(doc: object) -> bytes:
    # json.dumps writes NaN/Infinity as bare words, which is exactly the kind of thing devices send
    return json.dumps(doc, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _check(profile: str, topic: str, payload: bytes) -> None:
    d = MqttNormalizer(_catalog()).normalize(RawMessage("mqtt", topic, payload, NOW))
    assert (d.dead is None) or d.readings == []
    if d.dead is not None:
        assert d.dead.reason and len(d.dead.reason) <= 1000
    for r in d.readings:
        assert r.metric and r.device_id
        if isinstance(r.value, float):
            assert r.value == r.value and abs(r.value) != float("inf")
        if isinstance(r.value, int) and not isinstance(r.value, bool):
            assert -(2**63) <= r.value < 2**63


def _profiles() -> Iterator[tuple[str, str]]:
    yield from _device_topics()


@pytest.mark.parametrize(("profile", "topic"), list(_profiles()))
@settings(max_examples=fuzz_examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.dictionaries(_fields, _json, max_size=6))
def test_fuzz_json_objects(profile: str, topic: str, doc: dict[str, object]) -> None:
    _check(profile, topic, _encode(doc))


@pytest.mark.parametrize(("profile", "topic"), list(_profiles()))
@settings(max_examples=fuzz_examples(100), deadline=None)
@given(payload=st.binary(max_size=300))
def test_fuzz_bytes(profile: str, topic: str, payload: bytes) -> None:
    _check(profile, topic, payload)


@pytest.mark.parametrize(("profile", "topic"), list(_profiles()))
@settings(max_examples=fuzz_examples(60), deadline=None)
@given(doc=_json, depth=st.integers(min_value=0, max_value=3000), dup=st.booleans())
def test_fuzz_nesting_and_duplicates(profile: str, topic: str, doc: object, depth: int, dup: bool) -> None:
    body = _encode(doc)
    payload = b'{"event":' + b"[" * depth + body + b"]" * depth + b"}"
    if dup:
        payload = b'{"event":"alarm",' + payload[1:]
    _check(profile, topic, payload)


def test_every_shipped_mqtt_profile_is_fuzzed() -> None:
    shipped = {p.stem for p in PROFILES.glob("*.yaml") if not p.stem.startswith("_")}
    mqtt = {name for name in shipped if load_profile(PROFILES / f"{name}.yaml").transport == "mqtt"}
    assert mqtt <= {name for name, _ in _device_topics()}, "add a device of each MQTT profile to the inventory"


def test_json_decoder_alone_never_raises_anything_but_decode_error() -> None:
    from gateway.errors import DecodeError

    dec = JsonDecoder(load_profile(PROFILES / "onekey-alarm-button.yaml"))
    for payload in (b'{"ts":1e306}', b'{"ts":-1e306}', b'{"battery":1e400}', b"{" * 3000):
        with pytest.raises(DecodeError):
            dec.decode(payload, "s", "d", NOW)
