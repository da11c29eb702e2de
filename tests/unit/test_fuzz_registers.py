"""Property-based fuzzing of the Modbus side: for every shipped Modbus profile, whatever a device answers
(register blocks and bit blocks of any length and content, any exception code, a response to another
function) becomes readings or dead letters, never an exception, and a poll sends a bounded number of
requests however the device refuses them.

The answers are real pymodbus response PDUs, taken the way the poller takes them (``_classify``,
``_take``, ``_conclude`` of a link of a real :class:`ModbusSource`); only the socket is left out.
``scripts/fuzz`` runs this file with more examples (``FIREGW_FUZZ_SCALE``).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import ReadCoilsResponse, ReadDiscreteInputsResponse
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, ReadInputRegistersResponse

from gateway.errors import DecodeError
from gateway.health import Health
from gateway.models import DeadLetter
from gateway.normalize.registers import DeviceReads, ReadBlock, decode_block
from gateway.profiles.loader import Catalog, load_catalog
from gateway.profiles.models import Device, Inventory, Site
from gateway.sources.base import PollBatch
from gateway.sources.modbus import ModbusSource
from tests.support import fuzz_examples

PROFILES = Path(__file__).resolve().parents[2] / "device_profiles"
_BASE = load_catalog(PROFILES, None)
MODBUS_PROFILES = sorted(name for name, p in _BASE.profiles.items() if p.transport == "modbus")
_SITE = Site.model_validate(
    {
        "site_id": "s",
        "name": "s",
        "town": "t",
        "grid_cell": "g",
        "domain": "industrial",
        "station": {"station_id": "m", "name": "m"},
    }
)
_REGISTER_RESPONSES: dict[str, type[ReadHoldingRegistersResponse | ReadInputRegistersResponse]] = {
    "holding": ReadHoldingRegistersResponse,
    "input": ReadInputRegistersResponse,
}
_BIT_RESPONSES: dict[str, type[ReadCoilsResponse | ReadDiscreteInputsResponse]] = {
    "coil": ReadCoilsResponse,
    "discrete": ReadDiscreteInputsResponse,
}
_FUNCTION = {"holding": 3, "input": 4, "coil": 1, "discrete": 2}


def _source(profile: str) -> ModbusSource:
    """A source for one device of ``profile`` (never started: no socket is opened)."""
    base = (
        1
        if min(
            p.modbus_register.address  # type: ignore[union-attr]
            for p in _BASE.profiles[profile].points
        )
        >= 1
        else 0
    )
    device = Device.model_validate(
        {
            "device_id": "d",
            "site_id": "s",
            "profile": profile,
            "modbus": {"host": "127.0.0.1", "port": 1, "address_base": base},
        }
    )
    catalog = Catalog(profiles=_BASE.profiles, inventory=Inventory(sites=[_SITE], devices=[device]))

    async def commit(batch: PollBatch) -> None:
        raise AssertionError("not used")

    return ModbusSource(catalog=catalog, commit=commit, health=Health())


_SOURCES = {name: _source(name) for name in MODBUS_PROFILES}


def _bit_answer(cls: type[ReadCoilsResponse | ReadDiscreteInputsResponse], bits: list[bool]) -> ModbusPDU:
    return cls(bits=bits)


def _register_answer(
    cls: type[ReadHoldingRegistersResponse | ReadInputRegistersResponse], words: list[int]
) -> ModbusPDU:
    return cls(registers=words)


_WORD = st.one_of(st.integers(0, 0xFFFF), st.sampled_from([0, 0xFFFF, 0x8000, 0x7FFF, 0x7F80, 0xFF80, 0x7FC0, 0x7FF0]))
_CODE = st.one_of(st.sampled_from([2, 3]), st.sampled_from([1, 2, 3, 4, 6, 10, 11]), st.integers(0, 255))


def _answer(block: ReadBlock) -> st.SearchStrategy[ModbusPDU]:
    """What a device may answer to ``block``: its data (mostly the right length, any content), a
    Modbus exception with any code, or the data of another read function."""
    n = block.count
    answers: list[st.SearchStrategy[ModbusPDU]] = []
    if block.is_bits:
        bits = st.one_of(st.lists(st.booleans(), min_size=n, max_size=n), st.lists(st.booleans(), max_size=n + 16))
        mine = _BIT_RESPONSES[block.table]
        for bcls in (mine, mine, *_BIT_RESPONSES.values()):
            answers.append(st.builds(_bit_answer, st.just(bcls), bits))
    else:
        words = st.one_of(st.lists(_WORD, min_size=n, max_size=n), st.lists(_WORD, max_size=n + 3))
        rmine = _REGISTER_RESPONSES[block.table]
        for rcls in (rmine, rmine, *_REGISTER_RESPONSES.values()):
            answers.append(st.builds(_register_answer, st.just(rcls), words))
    fc = _FUNCTION[block.table]
    exception = st.builds(lambda code: ExceptionResponse(fc, code), _CODE)
    answers += [exception, exception]
    return st.one_of(*answers)


@pytest.mark.parametrize("profile", MODBUS_PROFILES)
@settings(max_examples=fuzz_examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(data=st.data())
def test_any_answer_gives_readings_or_dead_letters(profile: str, data: st.DataObject) -> None:
    source = _SOURCES[profile]
    link = source._links[0]
    state = link._devices[0]
    # a fresh device each example: nothing learned, nothing emitted yet
    state.reads = DeviceReads(state.plan, recheck_s=state.plan.keepalive_s)
    state.last.clear()
    state.dead_at.clear()
    state.online, state.excused = None, 0
    points = {p.name: p for p in state.plan.points}
    types = {p.name: p.point.type for p in state.plan.points}
    bound = 4 * len(points) + 2 * len(state.plan.blocks)
    now = 0.0
    for _ in range(3):  # three polls, a re-check due at each: what a poll learned is used by the next
        rp = state.reads.start(now)
        dead: list[DeadLetter] = []
        failure = None
        while (block := rp.next()) is not None:
            assert rp.sent <= bound, "a poll's requests are bounded"
            ans = link._classify(state, block, data.draw(_answer(block), label=f"{block.table}:{block.address}"))
            if ans.outcome == "timeout":  # gateway exceptions 10 and 11: the target did not answer
                failure = ans
                break
            link._take(state, rp, block, ans, dead, now)
        batch = PollBatch(dead=dead)
        link._conclude(state, rp, failure, batch, 1_000 + int(now * 1000), now)
        for r in batch.readings:
            assert r.metric in points
            assert r.device_id == "d" and r.site_id == "s" and r.ts_ms == r.received_at_ms
            want = {"float": float, "int": int, "bool": bool, "str": str}[types[r.metric]]
            assert type(r.value) is want, (r.metric, r.value)
            if isinstance(r.value, float):
                assert math.isfinite(r.value)
        for d in batch.dead:
            assert d.reason and d.device_id == "d" and d.address.startswith("127.0.0.1:1/unit1/")
        if failure is None:
            # every point of an answered read is accounted for: a value, "no value", or a dead letter
            emitted = {r.metric for r in batch.readings}
            for block, words in rp.answered:
                for p, res in decode_block(block, words):
                    if isinstance(res, DecodeError):
                        assert any(d.address.endswith(f"/{p.table}:{p.doc_address}") for d in batch.dead), p.name
                    elif res.value is not None:
                        assert p.name in emitted, p.name
            for u in state.reads.unreadable.values():
                assert u.point.name in points and u.reason
            assert not {u.point.name for u in state.reads.unreadable.values()} & {
                p.name for b, _ in rp.answered for p in b.points
            }
        event(
            "poll failed (gateway exception)"
            if failure
            else f"poll answered, {len(state.reads.unreadable)} unreadable, {len(state.reads.blocks)} reads"
        )
        assert {s.status for s in batch.status} <= {"online", "unreachable", "points_unreadable", "points_readable"}
        now += state.plan.keepalive_s
