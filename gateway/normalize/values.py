"""Casting a raw value to a point's fixed type, and the checks every source shares. Pure."""

from __future__ import annotations

import math

from gateway.errors import DecodeError
from gateway.models import Value

__all__ = ["INT_MAX", "INT_MIN", "cast_value", "check_range"]

#: Integers are stored as SQLite INTEGER (64-bit): anything outside is not a value a device means.
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1


def _describe(raw: object) -> str:
    if isinstance(raw, str):
        return f"string {raw[:40]!r}"
    if raw is None:
        return "null"
    return f"{type(raw).__name__} {raw!r}"[:60]


def cast_value(raw: object, vtype: str, where: str) -> Value:
    """Cast ``raw`` (a JSON value or a decoded register) to ``vtype`` or raise DecodeError.

    Strict on purpose: a point keeps one type for life, so a string where a number belongs is an
    error, not a silent coercion (a time-series store would reject the type change later).
    """
    if vtype == "float":
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise DecodeError(f"{where}: expected a number, got {_describe(raw)}")
        try:
            value = float(raw)
        except OverflowError:
            raise DecodeError(f"{where}: number too large: {str(raw)[:40]}") from None
        if not math.isfinite(value):
            raise DecodeError(f"{where}: expected a finite number, got {value}")
        return value
    if vtype == "int":
        if isinstance(raw, bool):
            raise DecodeError(f"{where}: expected an integer, got {_describe(raw)}")
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        if isinstance(raw, int):
            if not INT_MIN <= raw <= INT_MAX:
                raise DecodeError(f"{where}: integer outside 64 bits: {str(raw)[:40]}")
            return raw
        raise DecodeError(f"{where}: expected an integer, got {_describe(raw)}")
    if vtype == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int) and raw in (0, 1):
            return bool(raw)
        raise DecodeError(f"{where}: expected true/false or 0/1, got {_describe(raw)}")
    if isinstance(raw, str):
        return raw
    raise DecodeError(f"{where}: expected a string, got {_describe(raw)}")


def check_range(value: Value, rng: tuple[float, float] | None, where: str, unit: str) -> None:
    if rng is None or isinstance(value, str | bool):
        return
    lo, hi = rng
    if value < lo or value > hi:
        raise DecodeError(f"{where}: {value:g} {unit} is outside the physical range [{lo:g}, {hi:g}] {unit}".rstrip())
