"""Register codecs and read planning (gateway.normalize.registers): tables of spec, words, expected."""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.errors import ConfigError, DecodeError
from gateway.health import Health
from gateway.models import Quality, Value
from gateway.normalize.registers import (
    DeviceReads,
    PointValue,
    ReadPass,
    RegisterPoint,
    compile_device,
    compile_points,
    decode_block,
    decode_point,
    encode_point,
    join_blocks,
    plan_reads,
    split_block,
    words_to_bytes,
    write_point,
)
from gateway.profiles.loader import Catalog, load_catalog, load_profile
from gateway.profiles.models import Device, Inventory, ModbusDeviceBinding, Point, Profile, Site
from gateway.sources.base import PollBatch
from gateway.sources.modbus import ModbusSource

PROFILES = Path(__file__).resolve().parents[2] / "device_profiles"
MODBUS_PROFILES = ["fire-pump-cabinet", "fire-water-tank-modbus", "fire-panel-summary"]


def _point(register: dict[str, Any], *, vtype: str = "float", name: str = "p", **extra: Any) -> Point:
    data: dict[str, Any] = {"name": name, "class": "analog", "type": vtype, "register": register}
    data.update(extra)
    return Point.model_validate(data)


def _profile(*points: Point) -> Profile:
    return Profile.model_validate(
        {
            "profile": "t",
            "kind": "t",
            "title": {"zh": "测", "en": "t"},
            "transport": "modbus",
            "cadence_s": 1,
            "points": [p.model_dump(by_alias=True, exclude_none=True) for p in points],
        }
    )


def _rp(register: dict[str, Any], *, vtype: str = "float", base: int = 0, **extra: Any) -> RegisterPoint:
    return compile_points(_profile(_point(register, vtype=vtype, **extra)), address_base=base)[0]


def _words(fmt: str, value: float | int, byte_order: str, word_order: str) -> list[int]:
    """Reference encoding with struct, independent of the code under test."""
    buf = struct.pack(">" + fmt, value)
    ws = [int.from_bytes(buf[i : i + 2], "big") for i in range(0, len(buf), 2)]
    if byte_order == "little":
        ws = [((w & 0xFF) << 8) | (w >> 8) for w in ws]
    if word_order == "little":
        ws.reverse()
    return ws


# Every type × byte order × word order, with a value that uses every byte.
_TYPES: list[tuple[str, str, float | int, str]] = [
    ("int16", "h", -12345, "int"),
    ("uint16", "H", 54321, "int"),
    ("int32", "i", -123456789, "int"),
    ("uint32", "I", 3_123_456_789, "int"),
    ("float32", "f", 12.5, "float"),
    ("int64", "q", -1_234_567_890_123_456, "int"),
    ("uint64", "Q", 9_000_000_000_000_000_000, "int"),
    ("float64", "d", -1234.5678125, "float"),
]
_ORDERS = [("big", "big"), ("big", "little"), ("little", "big"), ("little", "little")]


@pytest.mark.parametrize(("rtype", "fmt", "value", "vtype"), _TYPES)
@pytest.mark.parametrize(("byte_order", "word_order"), _ORDERS)
def test_every_type_and_order_decodes_and_round_trips(
    rtype: str, fmt: str, value: float | int, vtype: str, byte_order: str, word_order: str
) -> None:
    rp = _rp({"address": 10, "type": rtype, "byte_order": byte_order, "word_order": word_order}, vtype=vtype)
    words = _words(fmt, value, byte_order, word_order)
    assert decode_point(rp, words) == PointValue(value)
    assert encode_point(rp, value) == words


@pytest.mark.parametrize(
    ("spec", "words", "expected"),
    [
        ({"type": "float32"}, [0x4148, 0x0000], 12.5),  # ABCD
        ({"type": "float32", "word_order": "little"}, [0x0000, 0x4148], 12.5),  # CDAB
        ({"type": "float32", "byte_order": "little"}, [0x4841, 0x0000], 12.5),  # BADC
        ({"type": "float32", "byte_order": "little", "word_order": "little"}, [0x0000, 0x4841], 12.5),  # DCBA
        ({"type": "int16", "scale": 0.001}, [0x021A], 0.538),  # domain.md §4.4: 02 1A -> 0.538 MPa
        ({"type": "int16", "scale": 0.001}, [0xFF38], -0.2),
        ({"type": "uint16", "scale": 0.1}, [1234], 123.4),
        ({"type": "uint16", "scale": 0.5, "offset": -40}, [100], 10.0),
        ({"type": "int32", "scale": 0.01}, [0xFFFF, 0xFFFF], -0.01),
        ({"type": "uint32"}, [0x0001, 0x0000], 65536.0),
        ({"type": "uint32", "word_order": "little"}, [0x0000, 0x0001], 65536.0),
    ],
)
def test_documented_decodings(spec: dict[str, Any], words: list[int], expected: float) -> None:
    rp = _rp({"address": 0, **spec})
    got = decode_point(rp, words)
    assert got.value == expected and got.quality is Quality.GOOD
    assert encode_point(rp, expected) == words


@pytest.mark.parametrize(
    ("bit", "word", "expected"),
    [
        (0, 0b0000_0001, True),
        (0, 0b1111_1110, False),
        (7, 0x0080, True),
        (15, 0x8000, True),
        (15, 0x7FFF, False),
    ],
)
def test_bits_of_a_status_word(bit: int, word: int, expected: bool) -> None:
    rp = _rp({"address": 3, "type": "uint16", "bit": bit}, vtype="bool")
    assert decode_point(rp, [word]).value is expected


def test_bit_of_a_32_bit_word_honours_word_order() -> None:
    rp = _rp({"address": 0, "type": "uint32", "bit": 17, "word_order": "little"}, vtype="bool")
    assert decode_point(rp, [0x0000, 0x0002]).value is True
    assert decode_point(rp, [0x0002, 0x0000]).value is False


def test_bit_as_int_point() -> None:
    rp = _rp({"address": 0, "type": "uint16", "bit": 2}, vtype="int")
    assert decode_point(rp, [4]) == PointValue(1)


def test_write_point_merges_bits_of_one_word() -> None:
    prof = _profile(
        _point({"address": 0, "type": "uint16", "bit": 0}, vtype="bool", name="a"),
        _point({"address": 0, "type": "uint16", "bit": 3}, vtype="bool", name="b"),
        _point({"address": 1, "type": "int16", "scale": 0.01}, name="c"),
    )
    a, b, c = compile_points(prof)
    mem = [0, 0]
    write_point(a, True, mem)
    write_point(b, True, mem)
    write_point(c, -1.5, mem)
    assert mem == [0b1001, 0xFF6A]
    write_point(a, False, mem)
    assert mem[0] == 0b1000
    block = plan_reads([a, b, c])[0]
    assert [(r.name, d) for r, d in decode_block(block, mem)] == [
        ("a", PointValue(False)),
        ("b", PointValue(True)),
        ("c", PointValue(-1.5)),
    ]


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"type": "int16", "sentinels": [0x8000]}, [0x8000]),  # unsigned spelling
        ({"type": "int16", "sentinels": [-32768]}, [0x8000]),  # signed spelling
        ({"type": "uint16", "sentinels": [0xFFFF], "scale": 0.1}, [0xFFFF]),
        ({"type": "int32", "sentinels": [0x7FFFFFFF]}, [0x7FFF, 0xFFFF]),
        ({"type": "float32"}, [0x7FC0, 0x0000]),  # NaN
        ({"type": "float32", "word_order": "little"}, [0x0000, 0x7FC0]),
        ({"type": "float64"}, [0x7FF8, 0, 0, 0]),
    ],
)
def test_sentinels_and_nan_mean_no_value(spec: dict[str, Any], words: list[int]) -> None:
    rp = _rp({"address": 0, **spec})
    got = decode_point(rp, words)
    assert got.value is None and got.quality is Quality.MISSING
    assert decode_point(rp, encode_point(rp, None)).quality is Quality.MISSING


def test_infinity_is_a_decode_error() -> None:
    rp = _rp({"address": 0, "type": "float32"})
    with pytest.raises(DecodeError, match="finite"):
        decode_point(rp, [0x7F80, 0x0000])


@pytest.mark.parametrize(
    ("words", "outcome"),
    [
        ([500], PointValue(0.5)),
        ([1700], PointValue(1.7, Quality.SUSPECT, "outside the expected range [0.05, 1.6]")),
        ([3000], DecodeError),
        ([0xFFFF], DecodeError),  # -0.001 MPa is below 0
    ],
)
def test_physical_and_expected_range(words: list[int], outcome: PointValue | type[DecodeError]) -> None:
    rp = _rp(
        {"address": 0, "type": "int16", "scale": 0.001},
        unit="MPa",
        range=[0, 2.5],
        expected_range=[0.05, 1.6],
    )
    if isinstance(outcome, PointValue):
        assert decode_point(rp, words) == outcome
    else:
        with pytest.raises(DecodeError, match=r"outside the physical range \[0, 2.5\] MPa"):
            decode_point(rp, words)


def test_enumerations() -> None:
    enum = {0: "manual", 1: "auto", 2: "stop"}
    as_int = _rp({"address": 0, "type": "uint16"}, vtype="int", enum=enum)
    assert decode_point(as_int, [1]) == PointValue(1)
    assert decode_point(as_int, [7]).quality is Quality.SUSPECT
    as_str = _rp({"address": 0, "type": "uint16"}, vtype="str", enum=enum)
    assert decode_point(as_str, [2]) == PointValue("stop")
    assert encode_point(as_str, "manual") == [0]
    with pytest.raises(DecodeError, match="not one of the documented codes"):
        decode_point(as_str, [9])


def test_integer_point_rejects_fraction() -> None:
    rp = _rp({"address": 0, "type": "uint16", "scale": 0.1}, vtype="int")
    with pytest.raises(DecodeError, match="expected an integer"):
        decode_point(rp, [5])


def test_source_unit_conversion() -> None:
    rp = _rp({"address": 0, "type": "uint16", "scale": 0.1}, unit="MPa", source_unit="kPa")
    assert decode_point(rp, [5380]).value == pytest.approx(0.538)
    assert encode_point(rp, 0.538) == [5380]


def test_coils_and_discrete_inputs() -> None:
    rp = _rp({"table": "coil", "address": 5, "type": "bool"}, vtype="bool")
    assert decode_point(rp, [True]) == PointValue(True)
    assert encode_point(rp, False) == [0]
    as_int = _rp({"table": "discrete", "address": 5, "type": "bool"}, vtype="int")
    assert decode_point(as_int, [True]) == PointValue(1)


@pytest.mark.parametrize(("base", "doc", "protocol"), [(0, 0, 0), (0, 100, 100), (1, 1, 0), (1, 40, 39)])
def test_address_base(base: int, doc: int, protocol: int) -> None:
    rp = _rp({"address": doc, "type": "uint16"}, base=base)
    assert (rp.address, rp.doc_address) == (protocol, doc)


def test_address_zero_on_a_one_based_device_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="numbers addresses from 1"):
        _rp({"address": 0, "type": "uint16"}, base=1)


def _regs(*specs: tuple[str, int, str]) -> list[RegisterPoint]:
    pts = [
        _point({"table": t, "address": a, "type": ty}, vtype="bool" if ty == "bool" else "float", name=f"p{i}")
        for i, (t, a, ty) in enumerate(specs)
    ]
    return list(compile_points(_profile(*pts)))


@pytest.mark.parametrize(
    ("specs", "kw", "expected"),
    [
        # contiguous -> one read
        (
            [("holding", 0, "uint16"), ("holding", 1, "float32"), ("holding", 3, "uint16")],
            {},
            [("holding", 0, 4)],
        ),
        # a gap within max_gap is spanned
        ([("holding", 0, "uint16"), ("holding", 9, "uint16")], {"max_gap": 8}, [("holding", 0, 10)]),
        # a gap wider than max_gap splits
        (
            [("holding", 0, "uint16"), ("holding", 10, "uint16")],
            {"max_gap": 8},
            [("holding", 0, 1), ("holding", 10, 1)],
        ),
        (
            [("holding", 0, "uint16"), ("holding", 2, "uint16")],
            {"max_gap": 0},
            [("holding", 0, 1), ("holding", 2, 1)],
        ),
        # max registers per read splits, and a multi-register value is never cut
        (
            [("input", 0, "uint16"), ("input", 1, "uint16"), ("input", 2, "float64")],
            {"max_registers": 4},
            [("input", 0, 2), ("input", 2, 4)],
        ),
        ([("input", i, "uint16") for i in range(130)], {}, [("input", 0, 125), ("input", 125, 5)]),
        # tables are never mixed; bits use the bit limit
        (
            [("coil", 0, "bool"), ("discrete", 0, "bool"), ("coil", 3, "bool"), ("holding", 0, "uint16")],
            {},
            [("holding", 0, 1), ("coil", 0, 4), ("discrete", 0, 1)],
        ),
        (
            [("discrete", i, "bool") for i in range(0, 30)],
            {"max_bits": 16},
            [("discrete", 0, 16), ("discrete", 16, 14)],
        ),
    ],
)
def test_read_planning(
    specs: list[tuple[str, int, str]], kw: dict[str, int], expected: list[tuple[str, int, int]]
) -> None:
    blocks = plan_reads(_regs(*specs), **kw)
    assert [(b.table, b.address, b.count) for b in blocks] == expected
    assert sum(len(b.points) for b in blocks) == len(specs)


@pytest.mark.parametrize(
    ("binding", "problem"),
    [
        ({"host": "h", "unit": 255}, None),  # a single-unit Modbus TCP device
        ({"host": "h", "unit": 0}, None),
        ({"host": "h", "sequential": False, "late_answer_s": 0.5}, None),
        (
            {
                "framer": "rtu",
                "serial_port": "/dev/ttyUSB0",
                "unit": 247,
                "baudrate": 19200,
                "parity": "E",
                "stopbits": 2,
                "bytesize": 7,
            },
            None,
        ),
        ({"framer": "rtu_over_tcp", "host": "h", "unit": 255}, "an RTU unit id is 1..247"),
        ({"framer": "rtu", "serial_port": "/dev/ttyUSB0", "unit": 0}, "broadcast"),
        ({"framer": "rtu_over_tcp", "host": "h", "sequential": False}, "sequential: false needs framer tcp"),
        ({"host": "h", "parity": "E"}, "serial line settings apply to framer rtu"),
        ({"framer": "rtu_over_tcp", "host": "h", "baudrate": 9600}, "set on the converter"),
        ({"framer": "rtu", "serial_port": "/dev/ttyUSB0", "parity": "X"}, "parity"),
        ({"framer": "rtu", "serial_port": "/dev/ttyUSB0", "stopbits": 3}, "stopbits"),
        ({"host": "h", "unit": 256}, "unit"),
        ({"host": "h", "late_answer_s": 0}, "late_answer_s"),
    ],
)
def test_binding_fields(binding: dict[str, Any], problem: str | None) -> None:
    if problem is None:
        ModbusDeviceBinding.model_validate(binding)
    else:
        with pytest.raises(ValueError, match=problem):
            ModbusDeviceBinding.model_validate(binding)


def test_plan_honours_binding_overrides() -> None:
    prof = _profile(*[_point({"address": a, "type": "uint16"}, name=f"p{a}") for a in (1, 5, 20)])
    wide = compile_device("d", prof, ModbusDeviceBinding(host="127.0.0.1", max_gap=20))
    assert [(b.address, b.count) for b in wide.blocks] == [(1, 20)]
    narrow = compile_device(
        "d", prof, ModbusDeviceBinding(host="127.0.0.1", max_gap=0, address_base=1, poll_interval_s=0.5)
    )
    assert [(b.address, b.count) for b in narrow.blocks] == [(0, 1), (4, 1), (19, 1)]
    assert narrow.poll_interval_s == 0.5


def test_short_response_is_a_decode_error() -> None:
    block = plan_reads(_regs(("holding", 0, "uint16"), ("holding", 1, "uint32")))[0]
    with pytest.raises(DecodeError, match="short response, 2 of 3 registers"):
        decode_block(block, [1, 2])


def test_one_bad_point_does_not_spoil_the_block() -> None:
    prof = _profile(
        _point({"address": 0, "type": "uint16"}, name="ok"),
        _point({"address": 1, "type": "uint16"}, name="bad", range=[0, 10]),
    )
    block = plan_reads(compile_points(prof))[0]
    (_, r1), (_, r2) = decode_block(block, [3, 99])
    assert r1 == PointValue(3.0)
    assert isinstance(r2, DecodeError) and "bad" in str(r2)


def test_uint64_beyond_64_bit_signed_is_a_decode_error() -> None:
    rp = _rp({"address": 0, "type": "uint64"}, vtype="int")
    with pytest.raises(DecodeError, match="outside 64 bits"):
        decode_point(rp, [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF])


def test_words_to_bytes() -> None:
    assert words_to_bytes([0x021A, 0xFFFF]) == b"\x02\x1a\xff\xff"


def _sample(p: Point) -> Value:
    """A value inside the point's range that survives the register type (for the shipped profiles)."""
    spec = p.modbus_register
    assert spec is not None
    if p.type == "bool":
        return True
    if p.enum:
        return max(p.enum)
    lo, hi = p.expected_range or p.range or (0.0, 100.0)
    mid = (lo + hi) / 2
    if p.type == "int":
        return int(mid) if spec.scale == 1 else round(mid / spec.scale) * spec.scale
    if spec.type in ("float32",):
        return struct.unpack(">f", struct.pack(">f", mid))[0]  # type: ignore[no-any-return]
    return round(mid / spec.scale) * spec.scale + spec.offset if spec.type not in ("float64",) else mid


@pytest.mark.parametrize("name", MODBUS_PROFILES)
def test_shipped_profiles_round_trip_through_their_own_map(name: str) -> None:
    prof = load_profile(PROFILES / f"{name}.yaml")
    points = compile_points(prof)
    assert len(points) == len(prof.points)
    memory: dict[str, list[int]] = {t: [0] * 200 for t in ("holding", "input", "coil", "discrete")}
    expected = {}
    for rp in points:
        value = _sample(rp.point)
        write_point(rp, value, memory[rp.table])
        expected[rp.name] = value
    for block in plan_reads(points, max_gap=8):
        data = memory[block.table][block.address : block.address + block.count]
        for rp, got in decode_block(block, data):
            assert isinstance(got, PointValue), got
            want = expected[rp.name]
            if isinstance(want, float):
                assert got.value == pytest.approx(want, rel=1e-9, abs=1e-9), rp.name
                assert math.isfinite(want)
            else:
                assert got.value == want, rp.name


# ---------------------------------------------------------------------------- registers a device lacks


def _cabinet_reads(recheck_s: float = 60.0) -> DeviceReads:
    prof = load_profile(PROFILES / "fire-pump-cabinet.yaml")
    return DeviceReads(compile_device("c", prof, ModbusDeviceBinding(host="127.0.0.1")), recheck_s=recheck_s)


def _drive(
    reads: DeviceReads, now: float, *, lacks: dict[str, set[int]] | None = None, codes: dict[str, int] | None = None
) -> tuple[ReadPass, bool]:
    """One pass against a device that lacks ``lacks`` (exception 02) and answers ``codes`` per table."""
    rp = reads.start(now)
    while (b := rp.next()) is not None:
        code = (codes or {}).get(b.table)
        if code is None and (lacks or {}).get(b.table, set()) & set(range(b.address, b.address + b.count)):
            code = 2
        if code is None:
            rp.ok(b, [0] * b.count)
        else:
            rp.refused(b, code, f"exception {code}")
    return rp, rp.finish()


def _spans(reads: DeviceReads, table: str) -> list[tuple[int, int]]:
    return [(b.address, b.count) for b in reads.blocks if b.table == table]


def test_a_gap_the_device_lacks_splits_the_read_and_loses_no_point() -> None:
    reads = _cabinet_reads()
    assert _spans(reads, "holding") == [(0, 14)]
    rp, changed = _drive(reads, 0.0, lacks={"holding": {7, 8, 9}})
    assert not changed and not reads.unreadable and not rp.found
    assert _spans(reads, "holding") == [(0, 7), (10, 4)]  # touching parts joined again
    assert sum(len(b.points) for b, _ in rp.answered) == len(reads.plan.points)
    rp, changed = _drive(reads, 1.0, lacks={"holding": {7, 8, 9}})
    assert rp.sent == len(reads.blocks) == 4 and not changed  # no request the device refuses


def test_points_the_device_lacks_become_unreadable_and_the_rest_is_read() -> None:
    reads = _cabinet_reads(recheck_s=10.0)
    lacks = {"holding": {2, 3, 4}}
    rp, changed = _drive(reads, 0.0, lacks=lacks)
    assert changed and sorted(reads.unreadable) == ["jockey_mode", "pump1_mode", "pump2_mode"]
    assert sorted(u.point.name for u in rp.found) == sorted(reads.unreadable)
    assert all(u.reason == "exception 2" for u in reads.unreadable.values())
    assert _spans(reads, "holding") == [(0, 2), (5, 9)]
    answered = {p.name for b, _ in rp.answered for p in b.points}
    assert answered == {p.name for p in reads.plan.points} - set(reads.unreadable)
    # the next passes read the rest only, until the re-check is due
    rp, changed = _drive(reads, 5.0, lacks=lacks)
    assert rp.sent == len(reads.blocks) and not changed and not rp.found
    rp, changed = _drive(reads, 10.0, lacks=lacks)
    assert rp.sent > len(reads.blocks) and not changed and not rp.found and not rp.recovered
    # the device serves them again: found at the next re-check, reads joined back into one
    rp, changed = _drive(reads, 20.0)
    assert changed and not reads.unreadable and len(rp.recovered) == 3
    assert _spans(reads, "holding") == [(0, 14)]


def test_illegal_function_makes_the_read_unreadable_without_splitting() -> None:
    reads = _cabinet_reads()
    rp, changed = _drive(reads, 0.0, codes={"input": 1})
    assert changed and rp.sent == 3
    assert {u.point.table for u in reads.unreadable.values()} == {"input"}
    assert len(reads.unreadable) == len([p for p in reads.plan.points if p.table == "input"])


def test_a_busy_device_keeps_its_reads_and_gives_a_dead_letter() -> None:
    reads = _cabinet_reads()
    before = reads.blocks
    rp, changed = _drive(reads, 0.0, codes={"holding": 6})
    assert not changed and not reads.unreadable and reads.blocks == before
    assert [(b.table, r) for b, r in rp.refused_reads] == [("holding", "exception 6")]


def test_splitting_keeps_the_bits_of_one_word_together_and_is_bounded() -> None:
    reads = _cabinet_reads()
    holding = reads.blocks[0]
    word0 = [p for p in holding.points if p.address == 0]
    assert len(word0) == 8
    assert split_block(plan_reads(word0)[0]) is None
    halves = split_block(holding)
    assert halves is not None
    assert {p.name for p in halves[0].points} | {p.name for p in halves[1].points} == {p.name for p in holding.points}
    assert all(p.address < halves[1].address for p in halves[0].points)
    every = {"holding": set(range(14))}
    rp, _ = _drive(reads, 0.0, lacks=every)
    starts = len({p.address for p in holding.points})
    assert rp.sent <= 2 * starts - 1 + 2  # a full bisection, plus the input and discrete reads
    assert len(reads.unreadable) == len(holding.points)


def test_join_blocks_merges_touching_reads_within_the_limit() -> None:
    pts = _regs(*[("holding", a, "uint16") for a in range(6)])
    parts = [plan_reads(pts[0:2])[0], plan_reads(pts[2:4])[0], plan_reads(pts[5:6])[0]]
    assert [(b.address, b.count) for b in join_blocks(parts)] == [(0, 4), (5, 1)]
    assert [(b.address, b.count) for b in join_blocks(parts, max_registers=3)] == [(0, 2), (2, 2), (5, 1)]


def test_readme_binding_example_is_valid_and_shows_every_field() -> None:
    """device_profiles/README.md documents every binding field with an example that loads."""
    text = (PROFILES / "README.md").read_text(encoding="utf-8")
    part = text.split("### Modbus bindings", 1)[1]
    block = re.search(r"```yaml\n(.*?)\n```", part, re.S)
    assert block is not None
    raw = yaml.safe_load(block.group(1))["devices"]
    shown = {k for d in raw for k in d["modbus"]}
    assert shown == set(ModbusDeviceBinding.model_fields), set(ModbusDeviceBinding.model_fields) - shown
    site = Site.model_validate(
        {
            "site_id": "pumproom",
            "name": "p",
            "town": "t",
            "grid_cell": "g",
            "domain": "industrial",
            "station": {"station_id": "m", "name": "m"},
        }
    )
    devices = [Device.model_validate(d) for d in raw]
    catalog = Catalog(
        profiles=load_catalog(PROFILES, None).profiles, inventory=Inventory(sites=[site], devices=devices)
    )

    async def commit(batch: PollBatch) -> None:
        pass

    source = ModbusSource(catalog=catalog, commit=commit, health=Health())
    assert sorted(source.links) == ["/dev/ttyUSB0", "192.168.10.20:502", "192.168.10.30:502"]
