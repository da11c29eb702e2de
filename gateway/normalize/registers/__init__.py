"""Modbus register maps: compile a profile for one device, plan the reads, decode and encode. Pure.

Modules: ``points`` (compile a profile's register points for a binding), ``plan`` (coalesced reads and
what a device taught about the registers it lacks), ``codec`` (words ↔ values), ``dump`` (register
dumps for ``firegw profiles try``).

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
  :class:`PointValue` values, in Home Assistant's order of operations: reorder words and bytes, unpack
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

from gateway.normalize.registers.codec import (
    PointValue,
    decode_block,
    decode_point,
    encode_point,
    words_to_bytes,
    write_point,
)
from gateway.normalize.registers.dump import decode_dump, parse_dump
from gateway.normalize.registers.plan import (
    SPLIT_CODES,
    DevicePlan,
    DeviceReads,
    ReadBlock,
    ReadPass,
    Unreadable,
    compile_device,
    join_blocks,
    plan_reads,
    response_problem,
    split_block,
)
from gateway.normalize.registers.points import BIT_TABLES, RegisterPoint, compile_points

__all__ = [
    "BIT_TABLES",
    "SPLIT_CODES",
    "DevicePlan",
    "DeviceReads",
    "PointValue",
    "ReadBlock",
    "ReadPass",
    "RegisterPoint",
    "Unreadable",
    "compile_device",
    "compile_points",
    "decode_block",
    "decode_dump",
    "decode_point",
    "encode_point",
    "join_blocks",
    "parse_dump",
    "plan_reads",
    "response_problem",
    "split_block",
    "words_to_bytes",
    "write_point",
]
