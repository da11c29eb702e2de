"""Modbus register maps: compile a profile for one device, plan the reads, decode and encode. Pure.

This module owns everything between "a profile's ``register:`` specs" and "a point value":

* :func:`compile_points` turns a profile's register points into :class:`RegisterPoint` objects for
  one device binding, with ``address_base`` applied (documented address N of a 1-based device is
  protocol address N-1) and every struct format, scale and check precomputed;
* :func:`plan_reads` coalesces points into the fewest :class:`ReadBlock` reads per table, honouring
  the register (≤125) or bit (≤2000) limit per read and the largest gap of unused registers a read
  may span;
* :class:`DeviceReads` keeps what a device taught the poller: a coalesced read it refused with
  exception 02 or 03 is split (bisected between its points) until the parts it serves are found; a
  single address it refuses makes its points *unreadable* (left out of the polls, re-checked every
  ``recheck_s``), exception 01 does so for the whole read (the device lacks the function);
* :func:`decode_block` / :func:`decode_point` turn the words (or bits) a read returned into
  :class:`Decoded` values, in Home Assistant's order of operations: reorder words and bytes, unpack
  the type, take ``bit``, compare with ``sentinels`` and NaN (no value, quality missing), apply
  ``scale``/``offset`` (and ``source_unit``), cast to the point type, then the physical ``range``
  (outside: :class:`DecodeError`, a dead letter) and the ``expected_range`` (outside: suspect);
* :func:`encode_point` / :func:`write_point` are the inverse, used by the pump-room simulator and
  the tests so that a value round-trips exactly through the profile's own map.

Byte order is the order of the two bytes inside each 16-bit register; word order is the order of
the registers of a 32- or 64-bit value (``big``: most significant register first). So ``ABCD`` is
big/big, ``CDAB`` word little, ``BADC`` byte little and ``DCBA`` both little.

No I/O and no asyncio here: the poller (``gateway.sources.modbus``) calls these functions.
"""

from __future__ import annotations

import math
import struct
from collections import deque
from collections.abc import Iterable, MutableSequence, Sequence
from dataclasses import dataclass, field
from typing import Literal

from gateway.errors import ConfigError, DecodeError
from gateway.models import URGENT_CLASSES, PointClass, Quality, Reading, Value
from gateway.normalize.values import cast_value, check_range
from gateway.profiles.models import ModbusDeviceBinding, ModbusProfile, Point, Profile, RegisterSpec
from gateway.profiles.units import conversion

__all__ = [
    "BIT_TABLES",
    "SPLIT_CODES",
    "Decoded",
    "DevicePlan",
    "DeviceReads",
    "ReadBlock",
    "ReadPass",
    "RegisterPoint",
    "Unreadable",
    "compile_device",
    "compile_points",
    "decode_block",
    "decode_point",
    "encode_point",
    "join_blocks",
    "plan_reads",
    "response_problem",
    "split_block",
    "words_to_bytes",
    "write_point",
]

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
_INTEGER_TYPES = frozenset({"int16", "uint16", "int32", "uint32", "int64", "uint64"})
_FLOAT_TYPES = frozenset({"float32", "float64"})


@dataclass(frozen=True, slots=True)
class Decoded:
    """One decoded point value. ``value is None`` means the device said "no value" (sentinel, NaN)."""

    value: Value | None
    quality: Quality = Quality.GOOD
    note: str = ""  # why the quality is not good, for logs


_MISSING_SENTINEL = Decoded(None, Quality.MISSING, "sentinel value")
_MISSING_NAN = Decoded(None, Quality.MISSING, "NaN")


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


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: ``count`` registers (or bits) of ``table`` from protocol ``address``."""

    table: Table
    address: int
    count: int
    points: tuple[RegisterPoint, ...]

    @property
    def is_bits(self) -> bool:
        return self.table in BIT_TABLES


@dataclass(frozen=True, slots=True)
class DevicePlan:
    """Everything the poller needs for one device, computed once when the source starts."""

    device_id: str
    points: tuple[RegisterPoint, ...]
    blocks: tuple[ReadBlock, ...]
    poll_interval_s: float
    keepalive_s: float
    timeout_s: float
    retries: int
    max_registers: int = 125
    max_bits: int = 2000


# ---------------------------------------------------------------------------- compile


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
            f"{where}: address {spec.address} does not exist on a device that numbers "
            f"addresses from {address_base}"
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
    if spec.type in _FLOAT_TYPES and spec.bit is not None:
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


def compile_points(
    profile: Profile, *, address_base: int = 0, where_prefix: str = ""
) -> tuple[RegisterPoint, ...]:
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


def plan_reads(
    points: Sequence[RegisterPoint], *, max_registers: int = 125, max_bits: int = 2000, max_gap: int = 8
) -> tuple[ReadBlock, ...]:
    """Coalesce points into the fewest reads per table (holding, input, coil, discrete).

    Greedy over points sorted by address, which is optimal for this interval problem: a point joins
    the current read when the unused registers between them are at most ``max_gap`` and the read
    stays within ``max_registers`` (``max_bits`` for coils and discrete inputs).
    """
    if max_registers < 1 or max_registers > 125:
        raise ConfigError(f"max_registers_per_read {max_registers} is outside 1..125")
    if max_bits < 1 or max_bits > 2000:
        raise ConfigError(f"max_bits_per_read {max_bits} is outside 1..2000")
    blocks: list[ReadBlock] = []
    for table in ("holding", "input", "coil", "discrete"):
        pts = sorted((p for p in points if p.table == table), key=lambda p: (p.address, p.width))
        if not pts:
            continue
        limit = max_bits if table in BIT_TABLES else max_registers
        start, end = pts[0].address, pts[0].end
        members = [pts[0]]
        for p in pts[1:]:
            new_end = max(end, p.end)
            if p.address - end <= max_gap and new_end - start <= limit:
                end = new_end
                members.append(p)
                continue
            blocks.append(ReadBlock(table, start, end - start, tuple(members)))
            start, end, members = p.address, p.end, [p]
        blocks.append(ReadBlock(table, start, end - start, tuple(members)))
    return tuple(blocks)


def compile_device(
    device_id: str, profile: Profile, binding: ModbusDeviceBinding, *, link: str = ""
) -> DevicePlan:
    """Compile and plan one device: the profile's map with the binding's base, limits and timing."""
    defaults = profile.modbus or ModbusProfile()
    prefix = f"{link}/unit{binding.unit}/" if link else f"{device_id}/"
    points = compile_points(profile, address_base=binding.address_base, where_prefix=prefix)
    if not points:
        raise ConfigError(f"{device_id}: profile {profile.profile!r} has no register points")
    max_registers = binding.max_registers_per_read or defaults.max_registers_per_read
    blocks = plan_reads(
        points,
        max_registers=max_registers,
        max_bits=defaults.max_bits_per_read,
        max_gap=binding.max_gap if binding.max_gap is not None else defaults.max_gap,
    )
    return DevicePlan(
        device_id=device_id,
        points=points,
        blocks=blocks,
        poll_interval_s=binding.poll_interval_s or defaults.poll_interval_s,
        keepalive_s=defaults.keepalive_s,
        timeout_s=binding.timeout_s,
        retries=binding.retries,
        max_registers=max_registers,
        max_bits=defaults.max_bits_per_read,
    )


# ---------------------------------------------------------------------------- split and learn

#: Exception codes after which a coalesced read is split to find the registers the device lacks
#: (02 illegal data address; 03 illegal data value, which some devices answer instead).
SPLIT_CODES: frozenset[int] = frozenset({2, 3})
#: Exception 01 (illegal function): the device does not serve this table at all; splitting cannot help.
_NO_FUNCTION = 1


def _block_of(table: Table, points: Iterable[RegisterPoint]) -> ReadBlock:
    pts = tuple(sorted(points, key=lambda p: (p.address, p.width)))
    start = pts[0].address
    return ReadBlock(table, start, max(p.end for p in pts) - start, pts)


def split_block(block: ReadBlock) -> tuple[ReadBlock, ReadBlock] | None:
    """Halve a read between its points; points that start at one address stay together (the bits of
    one status word). None when every point starts at the same address: it cannot be split."""
    starts = sorted({p.address for p in block.points})
    if len(starts) < 2:
        return None
    mid = starts[len(starts) // 2]
    left = [p for p in block.points if p.address < mid]
    right = [p for p in block.points if p.address >= mid]
    return _block_of(block.table, left), _block_of(block.table, right)


def join_blocks(blocks: Iterable[ReadBlock], *, max_registers: int = 125, max_bits: int = 2000
                ) -> tuple[ReadBlock, ...]:
    """Merge reads of one table that touch or overlap, within the read limits.

    Only touching reads are merged: every register of the union was read successfully, so the
    device serves it; a gap between two reads may be registers the device lacks.
    """
    order = {"holding": 0, "input": 1, "coil": 2, "discrete": 3}
    out: list[ReadBlock] = []
    for b in sorted(blocks, key=lambda b: (order[b.table], b.address, b.count)):
        prev = out[-1] if out else None
        limit = max_bits if b.is_bits else max_registers
        if prev is not None and prev.table == b.table and b.address <= prev.address + prev.count:
            end = max(prev.address + prev.count, b.address + b.count)
            if end - prev.address <= limit:
                out[-1] = ReadBlock(b.table, prev.address, end - prev.address, prev.points + b.points)
                continue
        out.append(b)
    return tuple(out)


def response_problem(block: ReadBlock, data: Sequence[int] | Sequence[bool]) -> str | None:
    """Why the data a read returned does not fit the read (a short or long response), or None."""
    n = len(data)
    if n < block.count or (not block.is_bits and n != block.count):
        what = "bits" if block.is_bits else "registers"
        return f"{'short' if n < block.count else 'long'} response: {n} of {block.count} {what}"
    return None


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A point the device refuses to serve, and the answer that showed it."""

    point: RegisterPoint
    reason: str


class DeviceReads:
    """The reads one device needs, as its answers taught them. Pure: the poller drives it.

    It starts with the plan's coalesced blocks. Each poll is a :class:`ReadPass`. A read the device
    refuses with exception 02 or 03 is split in halves (:func:`split_block`) until the parts it
    serves are found: they replace the read (touching parts joined again), so the next polls send
    no request the device refuses. A single address it refuses makes its points *unreadable*, as
    does exception 01 for every point of a read. Unreadable points are left out of the polls and
    re-checked, with the same splitting, every ``recheck_s``. What the device taught is kept only
    when a pass completes (a pass cut short by a timeout teaches nothing).
    """

    def __init__(self, plan: DevicePlan, *, recheck_s: float) -> None:
        self.plan = plan
        self.recheck_s = recheck_s
        self.blocks: tuple[ReadBlock, ...] = plan.blocks
        self.unreadable: dict[str, Unreadable] = {}
        self.recheck_at = 0.0

    def start(self, now: float) -> ReadPass:
        recheck: tuple[ReadBlock, ...] = ()
        # a device none of whose points can be read is re-checked every poll: that is its only read
        if self.unreadable and (now >= self.recheck_at or not self.blocks):
            recheck = plan_reads([u.point for u in self.unreadable.values()], max_registers=self.plan.max_registers,
                                 max_bits=self.plan.max_bits, max_gap=0)
        return ReadPass(self, now, recheck)


@dataclass(slots=True)
class ReadPass:
    """One poll of one device: :meth:`next` gives the read to send, the answer goes to :meth:`ok`,
    :meth:`refused` (a Modbus exception) or :meth:`failed` (a response that does not fit), and
    :meth:`finish` keeps what was learned."""

    reads: DeviceReads
    now: float
    recheck: tuple[ReadBlock, ...]
    answered: list[tuple[ReadBlock, Sequence[int] | Sequence[bool]]] = field(default_factory=list)
    #: reads refused for another reason (busy, failure...): (block, reason), a dead letter each
    refused_reads: list[tuple[ReadBlock, str]] = field(default_factory=list)
    #: points found unreadable in this pass that were not before
    found: list[Unreadable] = field(default_factory=list)
    #: unreadable points the device served again in this pass
    recovered: list[RegisterPoint] = field(default_factory=list)
    sent: int = 0
    _todo: deque[ReadBlock] = field(default_factory=deque)
    _keep: list[ReadBlock] = field(default_factory=list)
    _still: dict[str, Unreadable] = field(default_factory=dict)
    _rechecking: set[int] = field(default_factory=set)  # ids of points under re-check

    def __post_init__(self) -> None:
        self._todo.extend(self.reads.blocks)
        self._todo.extend(self.recheck)
        self._rechecking = {id(p) for b in self.recheck for p in b.points}
        self._still = {} if self.recheck else dict(self.reads.unreadable)

    def next(self) -> ReadBlock | None:
        if not self._todo:
            return None
        self.sent += 1
        return self._todo.popleft()

    def _rechecked(self, block: ReadBlock) -> bool:
        return id(block.points[0]) in self._rechecking

    def ok(self, block: ReadBlock, data: Sequence[int] | Sequence[bool]) -> None:
        self.answered.append((block, data))
        self._keep.append(block)
        if self._rechecked(block):
            self.recovered.extend(block.points)

    def failed(self, block: ReadBlock) -> None:
        """A response that does not fit the read: the read stays as it is (the device may be flaky)."""
        if not self._rechecked(block):
            self._keep.append(block)
        else:
            self._mark(block, "", keep_reason=True)

    def refused(self, block: ReadBlock, code: int, reason: str) -> None:
        if code in SPLIT_CODES:
            halves = split_block(block)
            if halves is not None:
                self._todo.extendleft(reversed(halves))
                return
        if code in SPLIT_CODES or code == _NO_FUNCTION:
            self._mark(block, reason)
            return
        if self._rechecked(block):
            self._mark(block, reason, keep_reason=True)
        else:
            self._keep.append(block)
            self.refused_reads.append((block, reason))

    def _mark(self, block: ReadBlock, reason: str, *, keep_reason: bool = False) -> None:
        known = self.reads.unreadable
        for p in block.points:
            old = known.get(p.name)
            if old is not None and (keep_reason or old.reason == reason):
                self._still[p.name] = old
                continue
            u = Unreadable(p, reason)
            self._still[p.name] = u
            if old is None:
                self.found.append(u)

    def finish(self) -> bool:
        """Keep what this pass learned; True when the set of unreadable points changed."""
        r = self.reads
        plan = r.plan
        r.blocks = join_blocks(self._keep, max_registers=plan.max_registers, max_bits=plan.max_bits)
        if self.recheck or (self.found and not r.unreadable):
            r.recheck_at = self.now + r.recheck_s
        changed = set(self._still) != set(r.unreadable)
        r.unreadable = self._still
        return changed


# ---------------------------------------------------------------------------- decode


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


def _finish(rp: RegisterPoint, value: Value) -> Decoded:
    if rp._range is not None or rp._expected is not None:
        check_range(value, rp._range, rp.where, rp.point.unit)
        exp = rp._expected
        if exp is not None and not isinstance(value, str | bool) and (value < exp[0] or value > exp[1]):
            return Decoded(value, Quality.SUSPECT, f"outside the expected range [{exp[0]:g}, {exp[1]:g}]")
    return Decoded(value)


def decode_point(rp: RegisterPoint, data: Sequence[int] | Sequence[bool]) -> Decoded:
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
        return Decoded(label)
    value = cast_value(_scaled(rp, raw), rp._vtype, rp.where)
    decoded = _finish(rp, value)
    if rp._enum is not None and isinstance(value, int) and value not in rp._enum:
        return Decoded(value, Quality.SUSPECT, f"code {value} is not one of {sorted(rp._enum)}")
    return decoded


def decode_block(
    block: ReadBlock, data: Sequence[int] | Sequence[bool]
) -> list[tuple[RegisterPoint, Decoded | DecodeError]]:
    """Decode every point of ``block`` from the data its read returned (one result per point).

    A point that does not decode gives its DecodeError in place of a value; the others go on.
    """
    if len(data) < block.count:
        raise DecodeError(
            f"{block.table}:{block.address}+{block.count}: short response, "
            f"{len(data)} of {block.count} {'bits' if block.is_bits else 'registers'}"
        )
    out: list[tuple[RegisterPoint, Decoded | DecodeError]] = []
    base = block.address
    for rp in block.points:
        off = rp.address - base
        try:
            out.append((rp, decode_point(rp, data[off : off + rp.width])))
        except DecodeError as exc:
            out.append((rp, exc))
    return out


# ---------------------------------------------------------------------------- encode


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
        if rp.rtype in _FLOAT_TYPES:
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
    raw = round(raw) if rp.rtype in _INTEGER_TYPES else float(raw)
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


def parse_dump(text: str) -> dict[str, dict[int, int]]:
    """Parse a register dump as the profile README shows it::

        holding 0..13   0041 0003 0001 ...      (hex words; a line starting with blanks continues)
        discrete 0..2   0 0 0                    (bits)

    Returns table → {documented address: word or bit}.
    """
    memory: dict[str, dict[int, int]] = {}
    table: str | None = None
    addr = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        tokens = line.split()
        if not line[0].isspace():
            name = tokens[0]
            if name not in ("holding", "input", "coil", "discrete"):
                raise DecodeError(f"dump line {lineno}: unknown table {name!r} (holding, input, coil, discrete)")
            table = name
            try:
                addr = int(tokens[1].split("..")[0])
            except (IndexError, ValueError) as exc:
                raise DecodeError(f"dump line {lineno}: expected 'TABLE START..END words'") from exc
            tokens = tokens[2:]
        if table is None:
            raise DecodeError(f"dump line {lineno}: a continuation line before any table line")
        for tok in tokens:
            try:
                word = int(tok, 2 if table in BIT_TABLES else 16)
            except ValueError as exc:
                raise DecodeError(f"dump line {lineno}: {tok!r} is not a {'bit' if table in BIT_TABLES else 'hex word'}"
                                  ) from exc
            memory.setdefault(table, {})[addr] = word
            addr += 1
    return memory


def decode_dump(profile: Profile, text: str, now_ms: int) -> list[Reading]:
    """Decode a register dump (see :func:`parse_dump`) with a Modbus profile: ``firegw profiles try``.

    Points whose registers are not in the dump are skipped; a value that does not decode raises
    DecodeError naming the point.
    """
    memory = parse_dump(text)
    out: list[Reading] = []
    for rp in compile_points(profile, address_base=0):
        table = memory.get(rp.table, {})
        words = [table.get(a) for a in range(rp.doc_address, rp.doc_address + rp.width)]
        if any(w is None for w in words):
            continue
        dec = decode_point(rp, [int(w) for w in words if w is not None])
        if dec.value is None:
            continue
        out.append(Reading("", "", rp.name, dec.value, rp.point.unit, now_ms, now_ms, dec.quality, rp.point_class,
                           rp.point_class in URGENT_CLASSES))
    return out
