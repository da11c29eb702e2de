"""Decode one JSON payload of an MQTT profile into readings. Pure; compiled once per profile."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import orjson

from gateway.errors import DecodeError
from gateway.models import URGENT_CLASSES, PointClass, Quality, Reading, Value
from gateway.normalize.jsonpath import MISSING, compile_path, get_path
from gateway.normalize.values import cast_value, check_range
from gateway.profiles.models import Point, Profile
from gateway.profiles.units import Conversion, conversion, source_units

__all__ = ["JsonDecoder"]


@dataclass(frozen=True, slots=True)
class _CompiledPoint:
    name: str
    path: tuple[str | int, ...]
    field: str
    vtype: str
    unit: str
    point_class: PointClass
    urgent: bool
    mapping: dict[str, Value] | None
    required: bool
    factor: float
    offset: float
    unit_path: tuple[str | int, ...] | None
    unit_table: dict[str, Conversion] | None
    range: tuple[float, float] | None
    expected: tuple[float, float] | None


def _map_key(raw: object) -> str | None:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, str | int):
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
    return _CompiledPoint(
        name=p.name, path=compile_path(p.path), field=p.path, vtype=p.type, unit=p.unit,
        point_class=p.point_class, urgent=p.point_class in URGENT_CLASSES, mapping=p.map,
        required=p.required, factor=factor, offset=offset,
        unit_path=compile_path(p.unit_path) if p.unit_path else None, unit_table=unit_table,
        range=p.range, expected=p.expected_range,
    )


class JsonDecoder:
    """Turns the payload of one device of ``profile`` into readings, or raises DecodeError."""

    def __init__(self, profile: Profile) -> None:
        assert profile.mqtt is not None
        self.profile = profile
        self._points = [_compile_point(p) for p in profile.points]
        self._max_bytes = profile.mqtt.max_payload_bytes
        tspec = profile.mqtt.time
        self._time_path = compile_path(tspec.path) if tspec else None
        self._time_field = tspec.path if tspec else ""
        self._time_format = tspec.format if tspec else "epoch_s"
        self._max_skew_ms = int(profile.mqtt.max_skew_s * 1000)

    def _device_time(self, doc: object, received_at_ms: int) -> tuple[int, bool, bool]:
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
            ts = int(dt.timestamp() * 1000)
        else:
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise DecodeError(f"{where}: expected epoch {self._time_format[6:]}, got {raw!r}"[:120])
            ts = int(raw * 1000) if self._time_format == "epoch_s" else int(raw)
            if ts < 0 or ts > 32503680000000:  # year 3000
                raise DecodeError(f"{where}: {raw!r} is not a plausible epoch time")
        return ts, abs(ts - received_at_ms) > self._max_skew_ms, True

    def decode(self, payload: bytes, site_id: str, device_id: str, received_at_ms: int) -> list[Reading]:
        return self.decode_timed(payload, site_id, device_id, received_at_ms)[0]

    def decode_timed(self, payload: bytes, site_id: str, device_id: str,
                     received_at_ms: int) -> tuple[list[Reading], bool]:
        """Readings, and whether the payload carried its own device time."""
        if len(payload) > self._max_bytes:
            raise DecodeError(f"payload is {len(payload)} bytes, over the profile's limit of {self._max_bytes}")
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"payload is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise DecodeError(f"payload must be a JSON object, got {type(doc).__name__}")
        ts, skewed, timed = self._device_time(doc, received_at_ms)
        out: list[Reading] = []
        for cp in self._points:
            raw = get_path(doc, cp.path)
            if raw is MISSING or raw is None:
                if cp.required:
                    raise DecodeError(f"payload field {cp.field!r} (point {cp.name}) is missing")
                continue
            where = f"payload field {cp.field!r} (point {cp.name})"
            if cp.mapping is not None:
                key = _map_key(raw)
                if key is None or key not in cp.mapping:
                    continue
                value: Value = cast_value(cp.mapping[key], cp.vtype, where)
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
            check_range(value, cp.range, where, cp.unit)
            quality = Quality.SUSPECT if skewed else Quality.GOOD
            exp = cp.expected
            if exp is not None and not isinstance(value, str | bool) and not exp[0] <= value <= exp[1]:
                quality = Quality.SUSPECT
            out.append(Reading(site_id, device_id, cp.name, value, cp.unit, ts, received_at_ms, quality,
                               cp.point_class, cp.urgent))
        return out, timed
