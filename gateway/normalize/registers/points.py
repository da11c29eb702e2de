"""A profile's register points compiled for one device binding: where each one is on the wire and the
precomputed codec of its value (struct format, byte and word order, bit, scale, sentinels). Pure."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

from gateway.errors import ConfigError
from gateway.models import PointClass
from gateway.profiles.models import Point, Profile, RegisterSpec
from gateway.profiles.units import conversion

__all__ = ["BIT_TABLES", "FLOAT_TYPES", "INTEGER_TYPES", "RegisterPoint", "Table", "compile_points"]

Table = Literal["holding", "input", "coil", "discrete"]

#: Tables that hold single bits (read with FC 1 / FC 2) rather than 16-bit registers.
BIT_TABLES: frozenset[str] = frozenset({"coil", "discrete"})

_FORMAT: dict[str, str] = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "float32": "f",
    "int64": "q",
    "uint64": "Q",
    "float64": "d",
}
INTEGER_TYPES = frozenset({"int16", "uint16", "int32", "uint32", "int64", "uint64"})
FLOAT_TYPES = frozenset({"float32", "float64"})


@dataclass(frozen=True, slots=True, eq=False)
class RegisterPoint:
    """A point compiled for one device: where it is on the wire and how to decode it.

    ``address`` is the protocol address (what goes into the request); ``doc_address`` is the address
    as the profile documents it (what a person looks up). ``width`` is in registers (1 for bits).
    """

    point: Point
    name: str
    table: Table
    address: int
    doc_address: int
    width: int
    rtype: str
    where: str
    # precomputed codec
    _struct: struct.Struct | None
    _swap_bytes: bool
    _swap_words: bool
    _bit: int | None
    _scale: float
    _divisor: int | None  # scale == 1/divisor exactly: divide for exact decimals (538 / 1000 = 0.538)
    _offset: float
    _identity: bool  # scale 1, offset 0, no unit conversion
    _conv: tuple[float, float] | None  # source_unit -> unit (factor, offset)
    _sentinels: frozenset[int]
    _vtype: str
    _range: tuple[float, float] | None
    _expected: tuple[float, float] | None
    _enum: dict[int, str] | None

    @property
    def point_class(self) -> PointClass:
        return self.point.point_class

    @property
    def end(self) -> int:
        """Protocol address one past the last register (or bit) of this point."""
        return self.address + self.width


def _divisor_of(scale: float) -> int | None:
    if scale >= 1.0 or scale <= 0.0:
        return None
    inv = 1.0 / scale
    rounded = round(inv)
    if rounded > 1 and abs(inv - rounded) < 1e-9 * rounded:
        return int(rounded)
    return None


def _compile_point(point: Point, spec: RegisterSpec, address_base: int, where_prefix: str) -> RegisterPoint:
    address = spec.address - address_base
    where = f"{where_prefix}{spec.table}:{spec.address} {point.name}"
    if address < 0:
        raise ConfigError(
            f"{where}: address {spec.address} does not exist on a device that numbers addresses from {address_base}"
        )
    width = spec.width
    if address + width > 65536:
        raise ConfigError(f"{where}: a {spec.type} at address {spec.address} runs past register 65535")
    fmt = _FORMAT.get(spec.type)
    conv = None
    if point.source_unit is not None:
        c = conversion(point.source_unit, point.unit)
        if c is None:  # the profile model already rejects this; keep the check local too
            raise ConfigError(f"{where}: cannot convert {point.source_unit!r} into {point.unit!r}")
        conv = (c.factor, c.offset)
    if point.type == "str" and not point.enum:
        raise ConfigError(f"{where}: a string point from registers needs enum: labels of the codes")
    if spec.bit is not None and point.type not in ("bool", "int"):
        raise ConfigError(f"{where}: a bit of a status word is a bool (or 0/1 int), not {point.type}")
    if spec.type in FLOAT_TYPES and spec.bit is not None:
        raise ConfigError(f"{where}: bit: cannot take a bit of a {spec.type}")
    return RegisterPoint(
        point=point,
        name=point.name,
        table=spec.table,
        address=address,
        doc_address=spec.address,
        width=width,
        rtype=spec.type,
        where=where,
        _struct=None if fmt is None else struct.Struct(">" + fmt),
        _swap_bytes=spec.byte_order == "little",
        _swap_words=spec.word_order == "little" and width > 1,
        _bit=spec.bit,
        _scale=spec.scale,
        _divisor=_divisor_of(spec.scale),
        _offset=spec.offset,
        _identity=spec.scale == 1.0 and spec.offset == 0.0 and conv is None,
        _conv=conv,
        _sentinels=frozenset(spec.sentinels),
        _vtype=point.type,
        _range=point.range,
        _expected=point.expected_range,
        _enum=dict(point.enum) if point.enum else None,
    )


def compile_points(profile: Profile, *, address_base: int = 0, where_prefix: str = "") -> tuple[RegisterPoint, ...]:
    """Compile every register point of ``profile`` (in profile order), or raise ConfigError."""
    out: list[RegisterPoint] = []
    problems: list[str] = []
    for point in profile.points:
        spec = point.modbus_register
        if spec is None:
            continue
        try:
            out.append(_compile_point(point, spec, address_base, where_prefix))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return tuple(out)
