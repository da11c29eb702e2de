"""Decode one JSON payload of an MQTT profile into readings. Pure; compiled once per profile.

Nothing a payload holds can make this raise anything but :class:`DecodeError` (the router turns
any other exception into a dead letter too, naming its class): numbers too large for a float or a
64-bit integer, times past the year 3000, duplicate keys, values a mapped point does not know, deep
nesting and malformed UTF-8 are each a dead letter with the field named.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime

import orjson

from gateway.errors import DecodeError
from gateway.models import URGENT_CLASSES, PointClass, Quality, Reading, Value
from gateway.normalize.jsonpath import MISSING, compile_path, get_path
from gateway.normalize.values import cast_value, check_range
from gateway.profiles.models import Point, Profile
from gateway.profiles.units import Conversion, conversion, source_units

__all__ = ["DEFAULT_MAX_SKEW_S", "JsonDecoder", "has_duplicate_keys"]

#: A device clock further off than this marks its readings ``suspect`` (profile ``mqtt.max_skew_s``
#: or the gateway's ``pipeline.max_clock_skew_s`` override it).
DEFAULT_MAX_SKEW_S = 300.0
_YEAR_3000_MS = 32503680000000


@dataclass(frozen=True, slots=True)
class _CompiledPoint:
    name: str
    path: tuple[str | int, ...]
    field: str
    vtype: str
    unit: str
    point_class: PointClass
    urgent: bool
    mapping: dict[str, Value | None] | None
    fold: bool  # map keys compared case-insensitively, surrounding blanks ignored
    required: bool
    factor: float
    offset: float
    unit_path: tuple[str | int, ...] | None
    unit_table: dict[str, Conversion] | None
    range: tuple[float, float] | None
    expected: tuple[float, float] | None


def _map_key(raw: object, fold: bool) -> str | None:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, str):
        return raw.strip().casefold() if fold else raw
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    return None


def _compile_point(p: Point) -> _CompiledPoint:
    assert p.path is not None
    factor, offset = 1.0, 0.0
    if p.source_unit is not None:
        conv = conversion(p.source_unit, p.unit)
        assert conv is not None  # checked by the model
        factor, offset = conv.factor, conv.offset
    unit_table = None
    if p.unit_path is not None:
        unit_table = {p.unit: Conversion(p.unit, 1.0)}
        for name in source_units():
            conv = conversion(name, p.unit)
            if conv is not None:
                unit_table[name] = conv
        unit_table.update({k.lower(): v for k, v in list(unit_table.items())})
    fold = p.map_match == "ignore_case"
    mapping = None
    if p.map is not None:
        mapping = {(k.strip().casefold() if fold else k): v for k, v in p.map.items()}
    return _CompiledPoint(
        name=p.name,
        path=compile_path(p.path),
        field=p.path,
        vtype=p.type,
        unit=p.unit,
        point_class=p.point_class,
        urgent=p.point_class in URGENT_CLASSES,
        mapping=mapping,
        fold=fold,
        required=p.required,
        factor=factor,
        offset=offset,
        unit_path=compile_path(p.unit_path) if p.unit_path else None,
        unit_table=unit_table,
        range=p.range,
        expected=p.expected_range,
    )


def _count_keys(doc: object) -> int:
    """How many object keys ``doc`` holds, nested ones included."""
    total = 0
    stack = [doc]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            total += len(o)
            stack.extend(v for v in o.values() if isinstance(v, dict | list))
        elif isinstance(o, list):
            stack.extend(v for v in o if isinstance(v, dict | list))
    return total


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_dup_pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _Duplicate(k)
            seen.add(k)
    return out


def has_duplicate_keys(payload: bytes, doc: object) -> str | None:
    """The first key that occurs twice in one object of ``payload`` (already parsed into ``doc``).

    Exact and cheap in the usual case: every key is followed by a colon, so when the payload holds
    no more colons than ``doc`` has keys, no key can have been repeated (a parser keeps the last
    one). Only a payload with colons inside strings (ISO times, say) is parsed again to find out.
    """
    if payload.count(b":") <= _count_keys(doc):
        return None
    try:
        json.loads(payload, object_pairs_hook=_no_dup_pairs)
    except _Duplicate as dup:
        return dup.key
    except (ValueError, RecursionError):  # orjson took it; nothing more to learn here
        return None
    return None


class JsonDecoder:
    """Turns the payload of one device of ``profile`` into readings, or raises DecodeError."""

    def __init__(self, profile: Profile, *, default_max_skew_s: float = DEFAULT_MAX_SKEW_S) -> None:
        assert profile.mqtt is not None
        self.profile = profile
        self._points = [_compile_point(p) for p in profile.points]
        # fields that mapped points read: a value that none of them maps is a dead letter
        groups: dict[str, list[str]] = {}
        for cp in self._points:
            if cp.mapping is not None:
                groups.setdefault(cp.field, []).append(cp.name)
        self._mapped_fields = groups
        self._max_bytes = profile.mqtt.max_payload_bytes
        tspec = profile.mqtt.time
        self._time_path = compile_path(tspec.path) if tspec else None
        self._time_field = tspec.path if tspec else ""
        self._time_format = tspec.format if tspec else "epoch_s"
        skew = profile.mqtt.max_skew_s if profile.mqtt.max_skew_s is not None else default_max_skew_s
        self._max_skew_ms = int(skew * 1000)

    def _device_time(self, doc: dict[str, object], received_at_ms: int) -> tuple[int, bool, bool]:
        """(ts_ms, skewed, from the device)."""
        if self._time_path is None:
            return received_at_ms, False, False
        raw = get_path(doc, self._time_path)
        if raw is MISSING or raw is None:
            return received_at_ms, False, False
        where = f"payload field {self._time_field!r}"
        if self._time_format == "iso8601":
            if not isinstance(raw, str):
                raise DecodeError(f"{where}: expected an ISO 8601 time, got {raw!r}"[:120])
            try:
                dt = datetime.fromisoformat(raw)
            except ValueError as exc:
                raise DecodeError(f"{where}: not an ISO 8601 time: {raw[:40]!r}") from exc
            if dt.tzinfo is None:
                raise DecodeError(f"{where}: time {raw[:40]!r} has no UTC offset")
            try:
                ts = int(dt.timestamp() * 1000)
            except (OverflowError, ValueError, OSError) as exc:
                raise DecodeError(f"{where}: {raw[:40]!r} is not a plausible time") from exc
        else:
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise DecodeError(f"{where}: expected epoch {self._time_format[6:]}, got {raw!r}"[:120])
            scale = 1000 if self._time_format == "epoch_s" else 1
            if not math.isfinite(raw) or not 0 <= raw * scale <= _YEAR_3000_MS:
                raise DecodeError(
                    f"{where}: {str(raw)[:40]} is not a plausible epoch time "
                    f"(expected epoch {self._time_format[6:]} before the year 3000)"
                )
            ts = int(raw * scale)
        if not 0 <= ts <= _YEAR_3000_MS:
            raise DecodeError(f"{where}: {str(raw)[:40]} is not a plausible time")
        return ts, abs(ts - received_at_ms) > self._max_skew_ms, True

    def decode(self, payload: bytes, site_id: str, device_id: str, received_at_ms: int) -> list[Reading]:
        return self.decode_timed(payload, site_id, device_id, received_at_ms)[0]

    def decode_timed(
        self, payload: bytes, site_id: str, device_id: str, received_at_ms: int
    ) -> tuple[list[Reading], bool]:
        """Readings, and whether the payload carried its own device time."""
        if len(payload) > self._max_bytes:
            raise DecodeError(f"payload is {len(payload)} bytes, over the profile's limit of {self._max_bytes}")
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"payload is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise DecodeError(f"payload must be a JSON object, got {type(doc).__name__}")
        dup = has_duplicate_keys(payload, doc)
        if dup is not None:
            raise DecodeError(f"payload repeats the key {dup[:40]!r}: which one the device meant is unknown")
        ts, skewed, timed = self._device_time(doc, received_at_ms)
        out: list[Reading] = []
        unmapped: dict[str, object] = {}
        for cp in self._points:
            raw = get_path(doc, cp.path)
            if raw is MISSING or raw is None:
                if cp.required:
                    raise DecodeError(f"payload field {cp.field!r} (point {cp.name}) is missing")
                continue
            where = f"payload field {cp.field!r} (point {cp.name})"
            try:
                if cp.mapping is not None:
                    key = _map_key(raw, cp.fold)
                    if key is None or key not in cp.mapping:
                        unmapped.setdefault(cp.field, raw)
                        continue
                    unmapped[cp.field] = None  # another point of this field maps it
                    mapped = cp.mapping[key]
                    if mapped is None:  # a value the profile knows and reads no point from
                        continue
                    value: Value = cast_value(mapped, cp.vtype, where)
                else:
                    value = cast_value(raw, cp.vtype, where)
                if cp.unit_table is not None and cp.unit_path is not None:
                    u = get_path(doc, cp.unit_path)
                    conv = cp.unit_table.get(u) if isinstance(u, str) else None
                    if conv is None and isinstance(u, str):
                        conv = cp.unit_table.get(u.lower())
                    if conv is None:
                        raise DecodeError(f"{where}: unit {u!r} cannot be converted into {cp.unit}"[:160])
                    value = conv.apply(float(value))
                elif cp.factor != 1.0 or cp.offset != 0.0:
                    value = float(value) * cp.factor + cp.offset
                if isinstance(value, float) and not math.isfinite(value):
                    raise DecodeError(f"{where}: the converted value is not a finite number")
                check_range(value, cp.range, where, cp.unit)
            except DecodeError:
                raise
            except Exception as exc:  # nothing in a payload may escape as anything but a dead letter
                raise DecodeError(f"{where}: {type(exc).__name__}: {exc}"[:300]) from exc
            quality = Quality.SUSPECT if skewed else Quality.GOOD
            exp = cp.expected
            if exp is not None and not isinstance(value, str | bool) and not exp[0] <= value <= exp[1]:
                quality = Quality.SUSPECT
            out.append(
                Reading(
                    site_id, device_id, cp.name, value, cp.unit, ts, received_at_ms, quality, cp.point_class, cp.urgent
                )
            )
        for fld, raw in unmapped.items():
            if raw is not None:
                names = ", ".join(self._mapped_fields[fld])
                shown = repr(raw)[:60] if not isinstance(raw, dict | list) else type(raw).__name__
                raise DecodeError(f"payload field {fld!r}: value {shown} is not one the profile maps (points {names})")
        return out, timed
