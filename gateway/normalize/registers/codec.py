"""The register codec: the words (or bits) a read returned → point values, and back (for the simulator and
tests), in Home Assistant's order of operations: reorder words and bytes, unpack the type, take
``bit``, compare with ``sentinels`` and NaN (no value: quality missing), apply ``scale``/``offset``
(and ``source_unit``), cast to the point type, then the physical ``range`` (outside: DecodeError, a
dead letter) and the ``expected_range`` (outside: suspect). Pure."""

from __future__ import annotations

import math
import struct
from collections.abc import MutableSequence, Sequence
from dataclasses import dataclass

from gateway.errors import DecodeError
from gateway.models import Quality, Value
from gateway.normalize.registers.plan import ReadBlock
from gateway.normalize.registers.points import BIT_TABLES, FLOAT_TYPES, INTEGER_TYPES, RegisterPoint
from gateway.normalize.values import cast_value, check_range

__all__ = ["PointValue", "decode_block", "decode_point", "encode_point", "words_to_bytes", "write_point"]


@dataclass(frozen=True, slots=True)
class PointValue:
    """One decoded point value. ``value is None`` means the device said "no value" (sentinel, NaN)."""

    value: Value | None
    quality: Quality = Quality.GOOD
    note: str = ""  # why the quality is not good, for logs


_MISSING_SENTINEL = PointValue(None, Quality.MISSING, "sentinel value")
_MISSING_NAN = PointValue(None, Quality.MISSING, "NaN")


def words_to_bytes(words: Sequence[int]) -> bytes:
    """The registers as they travelled (big-endian per register); the payload of a dead letter."""
    return b"".join((w & 0xFFFF).to_bytes(2, "big") for w in words)


def _swap16(w: int) -> int:
    return ((w & 0xFF) << 8) | ((w >> 8) & 0xFF)


def _raw_bytes(rp: RegisterPoint, words: Sequence[int]) -> bytes:
    ws = list(words)
    if rp._swap_words:
        ws.reverse()
    if rp._swap_bytes:
        ws = [_swap16(w) for w in ws]
    return struct.pack(f">{len(ws)}H", *ws)


def _scaled(rp: RegisterPoint, raw: int | float) -> int | float:
    if rp._identity:
        return raw
    value: float = raw / rp._divisor if rp._divisor is not None else raw * rp._scale
    if rp._offset:
        value += rp._offset
    if rp._conv is not None:
        value = value * rp._conv[0] + rp._conv[1]
    return value


def _finish(rp: RegisterPoint, value: Value) -> PointValue:
    if rp._range is not None or rp._expected is not None:
        check_range(value, rp._range, rp.where, rp.point.unit)
        exp = rp._expected
        if exp is not None and not isinstance(value, str | bool) and (value < exp[0] or value > exp[1]):
            return PointValue(value, Quality.SUSPECT, f"outside the expected range [{exp[0]:g}, {exp[1]:g}]")
    return PointValue(value)


def decode_point(rp: RegisterPoint, data: Sequence[int] | Sequence[bool]) -> PointValue:
    """Decode one point from exactly its own ``width`` words (or its one bit).

    Raises DecodeError (the text of the dead letter) for a value the point cannot hold or a value
    outside the physical range.
    """
    if rp.table in BIT_TABLES:
        flag = bool(data[0])
        return _finish(rp, cast_value(flag if rp._vtype == "bool" else int(flag), rp._vtype, rp.where))
    if len(data) != rp.width:
        raise DecodeError(f"{rp.where}: expected {rp.width} registers, got {len(data)}")
    st = rp._struct
    if rp.width == 1 and not rp._swap_bytes:
        unsigned = int(data[0]) & 0xFFFF
        raw: int | float = unsigned - 0x10000 if rp.rtype == "int16" and unsigned & 0x8000 else unsigned
    else:
        buf = _raw_bytes(rp, [int(w) for w in data])
        unsigned = int.from_bytes(buf, "big")
        assert st is not None
        raw = st.unpack(buf)[0]
    if rp._sentinels and (unsigned in rp._sentinels or (isinstance(raw, int) and raw in rp._sentinels)):
        return _MISSING_SENTINEL
    if rp._bit is not None:
        bit = (unsigned >> rp._bit) & 1
        return _finish(rp, bool(bit) if rp._vtype == "bool" else bit)
    if isinstance(raw, float) and math.isnan(raw):
        return _MISSING_NAN
    if rp._enum is not None and rp._vtype == "str":
        label = rp._enum.get(int(raw))
        if label is None:
            raise DecodeError(f"{rp.where}: code {raw} is not one of the documented codes {sorted(rp._enum)}")
        return PointValue(label)
    value = cast_value(_scaled(rp, raw), rp._vtype, rp.where)
    decoded = _finish(rp, value)
    if rp._enum is not None and isinstance(value, int) and value not in rp._enum:
        return PointValue(value, Quality.SUSPECT, f"code {value} is not one of {sorted(rp._enum)}")
    return decoded


def decode_block(
    block: ReadBlock, data: Sequence[int] | Sequence[bool]
) -> list[tuple[RegisterPoint, PointValue | DecodeError]]:
    """Decode every point of ``block`` from the data its read returned (one result per point).

    A point that does not decode gives its DecodeError in place of a value; the others go on.
    """
    if len(data) < block.count:
        raise DecodeError(
            f"{block.table}:{block.address}+{block.count}: short response, "
            f"{len(data)} of {block.count} {'bits' if block.is_bits else 'registers'}"
        )
    out: list[tuple[RegisterPoint, PointValue | DecodeError]] = []
    base = block.address
    for rp in block.points:
        off = rp.address - base
        try:
            out.append((rp, decode_point(rp, data[off : off + rp.width])))
        except DecodeError as exc:
            out.append((rp, exc))
    return out


# encode (the simulator and the tests)


def _unscale(rp: RegisterPoint, value: float) -> float:
    if rp._conv is not None:
        value = (value - rp._conv[1]) / rp._conv[0]
    value -= rp._offset
    return value * rp._divisor if rp._divisor is not None else value / rp._scale


def _to_words(rp: RegisterPoint, buf: bytes) -> list[int]:
    ws = list(struct.unpack(f">{rp.width}H", buf))
    if rp._swap_bytes:
        ws = [_swap16(w) for w in ws]
    if rp._swap_words:
        ws.reverse()
    return ws


def encode_point(rp: RegisterPoint, value: Value | None) -> list[int]:
    """The ``width`` words a device holds for ``value`` (for a bit point: the word with only that bit).

    ``None`` encodes "no value": the point's first sentinel, or NaN for a float. Raises ValueError
    for a value the register type cannot hold.
    """
    if rp.table in BIT_TABLES:
        return [1 if value else 0]
    st = rp._struct
    assert st is not None
    if value is None:
        if rp._sentinels:
            raw_int = min(rp._sentinels)
            if raw_int < 0:
                return _to_words(rp, st.pack(raw_int))
            return _to_words(rp, raw_int.to_bytes(rp.width * 2, "big"))
        if rp.rtype in FLOAT_TYPES:
            return _to_words(rp, st.pack(math.nan))
        raise ValueError(f"{rp.where}: no sentinel to encode 'no value'")
    if rp._bit is not None:
        return _to_words(rp, (int(bool(value)) << rp._bit).to_bytes(rp.width * 2, "big"))
    if isinstance(value, str):
        if not rp._enum:
            raise ValueError(f"{rp.where}: cannot encode string {value!r}")
        codes = [k for k, v in rp._enum.items() if v == value]
        if not codes:
            raise ValueError(f"{rp.where}: {value!r} is not one of {sorted(rp._enum.values())}")
        raw: int | float = codes[0]
    else:
        raw = _unscale(rp, float(value)) if not rp._identity else value
    raw = round(raw) if rp.rtype in INTEGER_TYPES else float(raw)
    try:
        return _to_words(rp, st.pack(raw))
    except struct.error as exc:
        raise ValueError(f"{rp.where}: {value!r} does not fit a {rp.rtype}: {exc}") from exc


def write_point(rp: RegisterPoint, value: Value | None, memory: MutableSequence[int], base: int = 0) -> None:
    """Write ``value`` into ``memory`` (registers or 0/1 bits from protocol address ``base``).

    Bits of a status word are merged: the other bits of the word keep their values.
    """
    off = rp.address - base
    words = encode_point(rp, value)
    if rp._bit is None or value is None:
        memory[off : off + len(words)] = words
        return
    mask_words = encode_point(rp, True)
    for i, (w, m) in enumerate(zip(words, mask_words, strict=True)):
        memory[off + i] = (memory[off + i] & ~m & 0xFFFF) | w
