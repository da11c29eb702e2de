"""Modbus polling source: the only module that talks to pymodbus on the gateway side.

It owns the links (one pymodbus client per TCP ``host:port`` or serial port), the per-device poll
schedules, reachability, backoff and report by exception. Decoding and what a device taught about its
register map are ``gateway.normalize.registers``.

How it behaves:

* **One connection per link, requests serialized.** A link worker task owns the client and sends one
  request at a time. Links are fully independent tasks (a dead host never delays another host).
  Devices on one link share its settings (framer, serial line, ``sequential``, ``late_answer_s``).
* **Aligned schedules.** Each device is polled at ``t0 + phase + k × interval``: the next slot is the
  previous *scheduled* time plus the interval, so jitter does not accumulate; missed slots are skipped.
  A link's devices get phases spread over the first half of the interval (so a busy link does not
  poll in one burst whose tail waits for its head) and links are offset from each other; the second
  half of each interval is left idle for probes of backed-off devices.
* **A dead or slow device never delays the live ones on its link.** When a device stops answering
  (``timeout_s`` × (1 + ``retries``)), it is reported ``unreachable`` once (a
  :class:`DeviceStatusChange`, one WARNING), its last-known values are written once with quality
  ``missing``, and it is backed off (1 s doubling to 30 s). A backed-off device is probed with a
  single attempt, and only in an idle window of its link: a probe starts when no live device is due
  within what the probe may cost (its timeout, plus ``late_answer_s`` on a sequential link), or when
  it has waited 30 s. Live devices due at the same time always go first. Recovery is automatic (INFO
  once, status ``online``, every value re-emitted).
* **Sequential links** (``sequential: true``, the default). An RS-485-to-Ethernet converter, or any
  server that answers one request at a time in arrival order, is still busy with a request we gave up
  on: a request sent then waits behind it and times out although its unit is healthy. So after a
  timeout on a sequential link the next request waits until the late answer arrives (every received
  chunk is observed through pymodbus' ``trace_packet`` hook) or until ``late_answer_s`` (2 s by
  default) has passed. If that window passes without the answer, the link is *possibly busy*: a unit
  that then times out, and that answered its last poll (or was not polled yet), is not declared
  unreachable for it; the poll
  is skipped (health counter ``excused_timeouts``), at most :data:`MAX_EXCUSED` times in a row, so a
  really dead link or unit is still reported. ``sequential: false`` (framer ``tcp`` only) is for
  servers that answer concurrently, matched by transaction id: no waiting at all.
* **Whole-link outages.** When the connection itself is down (refused, reset, closed), every device on
  the link is reported unreachable with ``link`` set to the link name (host:port or serial port), so
  the rule engine can raise one hazard for the link; the link reconnects with backoff (0.5 s → 30 s)
  on a fresh pymodbus client (pymodbus' own reconnect is switched off: it is hard to observe).
  A device that times out on a live connection is reported with ``link=None``.
* **Report by exception.** A point is emitted on the first poll, when its value changes (bool, int,
  str) or moves more than its ``deadband`` (float), when its quality changes, or when ``keepalive_s``
  has passed since it was last emitted. Changed points of the urgent classes carry ``urgent=True``.
  ``ts_ms`` and ``received_at_ms`` are the poll completion time (UTC epoch ms).
* **Registers a device lacks.** A coalesced read the device refuses with exception 02 (illegal data
  address) or 03 (illegal data value) is split until the parts it serves are found
  (:class:`~gateway.normalize.registers.DeviceReads`); those parts are read from then on (logged once
  per change). A point the device refuses on its own is *unreadable*: one dead letter per address, its
  last value written once as ``missing``, and one status change ``points_unreadable`` for the device
  (the rule engine raises one hazard for it); it is re-checked every ``keepalive_s`` and a
  ``points_readable`` change ends it. Exception 01 (illegal function) makes every point of the read
  unreadable without splitting.
* **Bad input is data, not a crash.** A point out of its physical range becomes a dead letter and the
  other points go on. Another Modbus exception (server failure, busy...) or a short response becomes a
  dead letter for that read and the device stays online (it answered). Gateway exceptions 0x0A/0x0B
  ("target did not respond") count as the device not answering. pymodbus exceptions never leave this
  module. The same address gives one dead letter per ``keepalive_s`` while it stays bad (the health
  counter ``bad_reads`` counts every one).
* **Quiet logs.** pymodbus logs late or unexpected answers at ERROR with dumps of recent frames of
  every link; the source demotes everything pymodbus logs to DEBUG (a filter on its logger) and logs
  one line per state change itself.
* **Durability.** Each poll's :class:`PollBatch` goes through a bounded per-link queue (maxsize
  :data:`COMMIT_QUEUE_MAX`; when full, the link stops polling until the store catches up) to ``commit``,
  and counts as done (health beat) only after ``commit`` returns. Empty polls (nothing changed) are
  not handed to ``commit``, but still beat. If ``commit`` raises, the error is logged once and the
  devices of that batch re-emit every value on their next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from gateway.errors import ConfigError, DecodeError
from gateway.health import Health, Stage
from gateway.models import URGENT_CLASSES, DeadLetter, PointClass, Quality, Reading, Value
from gateway.normalize.registers import (
    DevicePlan,
    DeviceReads,
    ReadBlock,
    ReadPass,
    compile_device,
    decode_block,
    response_problem,
    words_to_bytes,
)
from gateway.profiles.loader import Catalog
from gateway.profiles.models import Device, ModbusDeviceBinding
from gateway.retry import Backoff
from gateway.sources.base import CommitFn, DeviceStatusChange, PollBatch

__all__ = [
    "BACKOFF_MAX_S",
    "BACKOFF_START_S",
    "COMMIT_QUEUE_MAX",
    "LATE_ANSWER_S",
    "MAX_EXCUSED",
    "ModbusSource",
    "quiet_pymodbus",
]

logger = logging.getLogger(__name__)

#: First backoff of a device that stopped answering, doubled per failed probe up to BACKOFF_MAX_S.
BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
#: Reconnect backoff of a link whose connection is down.
_LINK_BACKOFF_START_S = 0.5
#: Both without jitter: a device's probes stay on its poll schedule's slots.
_DEVICE_BACKOFF = Backoff(BACKOFF_START_S, BACKOFF_MAX_S, jitter=0.0)
#: A probe of a backed-off device waits for an idle window at most this long.
_PROBE_MAX_DEFER_S = 30.0
#: A link's devices are spread over this fraction of their interval; the rest is left idle for probes.
_SPREAD = 0.5
#: Per-link bound of polled batches waiting for commit.
COMMIT_QUEUE_MAX = 64
#: pymodbus' own response timeout, a backstop only: every request is bounded by the device's timeout_s.
_CLIENT_BACKSTOP_TIMEOUT_S = 60.0
#: Default of ``late_answer_s``: how long a sequential server may still be busy after we gave up.
LATE_ANSWER_S = 2.0
#: Polls in a row a unit that answered before may miss on a possibly busy link without being unreachable.
MAX_EXCUSED = 2

_SOURCE = "modbus"

#: Exception codes (Modbus spec) and what a person should read.
_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
_GATEWAY_NO_TARGET = frozenset({10, 11})
_FUNCTION = {"holding": 3, "input": 4, "coil": 1, "discrete": 2}

_Outcome = Literal["ok", "timeout", "link", "exception", "error"]


# ---------------------------------------------------------------------------- pymodbus' logger


class _DemoteToDebug(logging.Filter):
    """Everything pymodbus logs becomes DEBUG: its ERROR lines about late answers carry frame dumps
    of every link, repeated on each one; the source logs the state changes that matter itself. A
    demoted record goes on only where pymodbus' logger is enabled for DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_DEMOTE = _DemoteToDebug()


def quiet_pymodbus() -> None:
    """Put the filter on pymodbus' logger (idempotent; called by every :class:`ModbusSource`)."""
    log = logging.getLogger("pymodbus.logging")
    if _DEMOTE not in log.filters:
        log.addFilter(_DEMOTE)


# ---------------------------------------------------------------------------- state


@dataclass(slots=True)
class _Last:
    value: Value
    quality: Quality
    at: float  # loop time it was emitted


@dataclass(slots=True, eq=False)
class _DeviceState:
    device: Device
    binding: ModbusDeviceBinding
    plan: DevicePlan
    reads: DeviceReads
    due: float = 0.0
    online: bool | None = None  # None until the first poll
    failed_probes: int = 0  # in a row while unreachable: _DEVICE_BACKOFF's schedule
    excused: int = 0  # polls in a row skipped because the link was possibly busy
    last: dict[str, _Last] = field(default_factory=dict)
    # when a dead letter was last sent, by (table, address, block count or 0 for a point)
    dead_at: dict[tuple[str, int, int], float] = field(default_factory=dict)

    @property
    def device_id(self) -> str:
        return self.device.device_id


@dataclass(frozen=True, slots=True)
class _LinkSpec:
    name: str
    framer: Literal["tcp", "rtu_over_tcp", "rtu"]
    host: str | None
    port: int
    serial_port: str | None
    baudrate: int
    parity: str
    stopbits: int
    bytesize: int
    sequential: bool
    late_answer_s: float


@dataclass(slots=True, eq=False)
class _Late:
    """A request we gave up on, on a sequential link: the server may still answer it."""

    st: _DeviceState
    key: tuple[int, int] | None  # what identifies its answer (see _frame_key)
    until: float  # loop time the late-answer window ends
    answered: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True, slots=True)
class _Answer:
    outcome: _Outcome
    data: Sequence[int] | Sequence[bool] = ()
    reason: str = ""
    code: int = 0  # the Modbus exception code of an "exception"
    excused: bool = False  # a "timeout" whose last attempt went out while the link was possibly busy


#: Binding fields that devices of one link share (None in a binding: not given there).
_LINK_SETTINGS = ("framer", "baudrate", "parity", "stopbits", "bytesize", "sequential", "late_answer_s")


def _link_name(b: ModbusDeviceBinding) -> str:
    return str(b.serial_port) if b.framer == "rtu" else f"{b.host}:{b.port}"


def _link_spec(name: str, bindings: Sequence[tuple[str, ModbusDeviceBinding]]) -> tuple[_LinkSpec, list[str]]:
    """The settings of one link from the bindings of its devices: the values given must agree."""
    problems: list[str] = []
    chosen: dict[str, tuple[Any, str]] = {}
    for device_id, b in bindings:
        for key in _LINK_SETTINGS:
            value = getattr(b, key)
            if value is None:
                continue
            have = chosen.setdefault(key, (value, device_id))
            if have[0] != value:
                problems.append(
                    f"{device_id}: modbus.{key}: link {name} has {key} {have[0]} (device {have[1]}), not "
                    f"{value}; one link has one setting"
                )

    def given(key: str, default: Any) -> Any:
        return chosen[key][0] if key in chosen else default

    first = bindings[0][1]
    serial = first.framer == "rtu"
    spec = _LinkSpec(
        name=name,
        framer=first.framer,
        host=None if serial else first.host,
        port=0 if serial else first.port,
        serial_port=first.serial_port if serial else None,
        baudrate=given("baudrate", 9600),
        parity=given("parity", "N"),
        stopbits=given("stopbits", 1),
        bytesize=given("bytesize", 8),
        sequential=given("sequential", True),
        late_answer_s=given("late_answer_s", LATE_ANSWER_S),
    )
    return spec, problems


class ModbusSource:
    """Polls every Modbus device of the catalog and hands each poll's batch to ``commit``.

    Construct (validates, no I/O), then ``await run()`` until cancelled or ``await stop()``.
    ``clock`` returns UTC epoch milliseconds (tests may inject one); schedules use the loop's clock.
    """

    name = _SOURCE

    def __init__(
        self, *, catalog: Catalog, commit: CommitFn, health: Health, clock: Callable[[], int] | None = None
    ) -> None:
        quiet_pymodbus()
        self._commit = commit
        self._health = health
        self._clock = clock or _epoch_ms
        self._task: asyncio.Task[None] | None = None
        groups: dict[str, list[tuple[Device, ModbusDeviceBinding]]] = {}
        problems: list[str] = []
        for device in catalog.devices.values():
            profile = catalog.profiles.get(device.profile)
            if profile is None or profile.transport != "modbus":
                continue
            binding = device.modbus
            if binding is None:
                problems.append(f"{device.device_id}: modbus: the device has no modbus binding")
                continue
            groups.setdefault(_link_name(binding), []).append((device, binding))
        links: list[tuple[_LinkSpec, list[_DeviceState]]] = []
        for name, members in groups.items():
            spec, bad = _link_spec(name, [(d.device_id, b) for d, b in members])
            problems.extend(bad)
            states: list[_DeviceState] = []
            for device, binding in members:
                try:
                    plan = compile_device(device.device_id, catalog.profiles[device.profile], binding, link=name)
                except ConfigError as exc:
                    problems.extend(exc.problems)
                    continue
                other = next((o for o in states if o.binding.unit == binding.unit), None)
                if other is not None:
                    problems.append(
                        f"{device.device_id}: modbus.unit: unit {binding.unit} on {name} is "
                        f"already device {other.device_id}"
                    )
                    continue
                reads = DeviceReads(plan, recheck_s=plan.keepalive_s)
                states.append(_DeviceState(device=device, binding=binding, plan=plan, reads=reads))
            if states:
                links.append((spec, states))
        if problems:
            raise ConfigError(problems)
        self._links = [
            _Link(
                spec,
                states,
                commit=self._commit,
                stage=health.stage(f"modbus:{spec.name}"),
                clock=self._clock,
                phase=i / len(links),
            )
            for i, (spec, states) in enumerate(links)
        ]

    @property
    def links(self) -> list[str]:
        """The link names (``host:port`` or serial port), one connection each."""
        return [link.spec.name for link in self._links]

    async def run(self) -> None:
        """Poll until cancelled (or until :meth:`stop`). Never returns on its own while links exist."""
        self._task = asyncio.current_task()
        try:
            async with asyncio.TaskGroup() as tg:
                for link in self._links:
                    tg.create_task(link.run(), name=f"modbus:{link.spec.name}")
        finally:
            for link in self._links:
                link.close()

    async def stop(self) -> None:
        """Cancel :meth:`run` and wait for it to finish (closes every connection)."""
        task = self._task
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=1.0)


def _check_cancelled() -> None:
    """Raise CancelledError if this task was asked to stop but the request got swallowed.

    In Python 3.11 ``asyncio.wait_for`` (used inside pymodbus) can swallow a cancellation that
    arrives just as its future completes; the request stays counted in ``Task.cancelling()``.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _epoch_ms() -> int:
    return time.time_ns() // 1_000_000


def _next_slot(scheduled: float, step: float, now: float) -> float:
    """The first slot ``scheduled + k × step`` (k ≥ 1) after ``now``: missed slots are skipped."""
    nxt = scheduled + step
    if nxt <= now:
        nxt += math.ceil((now - nxt) / step + 1e-9) * step
    return nxt


def _moved(value: Value, last: Value, deadband: float | None) -> bool:
    if deadband is not None and isinstance(value, float) and isinstance(last, float):
        return abs(value - last) > deadband
    return value != last


def _frame_len(mbap: bool, data: bytes, pos: int) -> int:
    """Length of the response frame at ``pos`` once enough of it is there to tell, else 0."""
    rest = len(data) - pos
    if mbap:
        return 6 + int.from_bytes(data[pos + 4 : pos + 6], "big") if rest >= 6 else 0
    if rest < 3:
        return 0
    fc = data[pos + 1]
    if fc & 0x80:
        return 5
    if fc in (1, 2, 3, 4):
        return 5 + data[pos + 2]
    return 8 if fc in (5, 6, 15, 16) else 0


def _frame_key(mbap: bool, data: bytes, pos: int = 0) -> tuple[int, int] | None:
    """What pairs a request with its answer: MBAP (transaction id, unit); RTU (unit, function)."""
    if mbap:
        return (int.from_bytes(data[pos : pos + 2], "big"), data[pos + 6]) if len(data) - pos >= 7 else None
    return (data[pos], data[pos + 1] & 0x7F) if len(data) - pos >= 2 else None


class _Link:
    """One connection and the devices behind it: a poll worker and a committer."""

    def __init__(
        self,
        spec: _LinkSpec,
        devices: list[_DeviceState],
        *,
        commit: CommitFn,
        stage: Stage,
        clock: Callable[[], int],
        phase: float = 0.0,
    ) -> None:
        self.spec = spec
        self._devices = devices
        self._phase = phase  # fraction of an interval this link's schedule is shifted by
        self._commit = commit
        self._stage = stage
        self._clock = clock
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._down = False  # the link is known to be down (devices already reported)
        self._commit_failing = False
        self._healthy: list[tuple[float, int, _DeviceState]] = []
        self._probing: list[tuple[float, int, _DeviceState]] = []
        self._seq = 0
        self._queue: asyncio.Queue[tuple[PollBatch, list[_DeviceState]]] = asyncio.Queue(COMMIT_QUEUE_MAX)
        self._connect_timeout = max(d.plan.timeout_s for d in devices)
        self._mbap = spec.framer == "tcp"
        # sequential links: the request we gave up on, and who left the link possibly busy
        self._late: _Late | None = None
        self._busy_by: _DeviceState | None = None
        self._sent_key: tuple[int, int] | None = None

    # -------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time() + self._phase * min(d.plan.poll_interval_s for d in self._devices)
        n = len(self._devices)
        for k, st in enumerate(self._devices):
            st.due = t0 + k / n * _SPREAD * st.plan.poll_interval_s
            self._push(self._healthy, st)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._commit_loop())
            tg.create_task(self._poll_loop())

    def close(self) -> None:
        client, self._client = self._client, None
        self._late = self._busy_by = None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _make_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        s = self.spec
        if s.framer == "rtu":
            assert s.serial_port is not None
            return AsyncModbusSerialClient(
                s.serial_port,
                framer=FramerType.RTU,
                baudrate=s.baudrate,
                bytesize=s.bytesize,
                parity=s.parity,
                stopbits=s.stopbits,
                timeout=_CLIENT_BACKSTOP_TIMEOUT_S,
                retries=0,
                reconnect_delay=0,
                name=s.name,
                trace_packet=self._trace,
            )
        assert s.host is not None
        return AsyncModbusTcpClient(
            s.host,
            port=s.port,
            framer=FramerType.SOCKET if s.framer == "tcp" else FramerType.RTU,
            timeout=_CLIENT_BACKSTOP_TIMEOUT_S,
            retries=0,
            reconnect_delay=0,
            name=s.name,
            trace_packet=self._trace,
        )

    def _trace(self, sending: bool, data: bytes) -> bytes:
        """pymodbus' packet hook: every frame sent, and the receive buffer on every chunk received."""
        if sending:
            self._sent_key = _frame_key(self._mbap, data)
            return data
        late = self._late
        if late is not None and not late.answered.is_set():
            pos = 0
            while (n := _frame_len(self._mbap, data, pos)) and pos + n <= len(data):
                if _frame_key(self._mbap, data, pos) == late.key:
                    late.answered.set()
                    break
                pos += n
        return data

    def _connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def _connect_once(self) -> str | None:
        """Open a fresh client; return None when connected, else the reason."""
        self.close()
        try:
            client = self._make_client()
            client.set_max_no_responses(1_000_000)  # our timeouts decide, not pymodbus' disconnect counter
            async with asyncio.timeout(self._connect_timeout + 1.0):
                ok = await client.connect()
        except (TimeoutError, OSError, ModbusException) as exc:
            return f"cannot connect to {self.spec.name}: {exc or type(exc).__name__}"
        if not ok:
            client.close()
            return f"cannot connect to {self.spec.name}"
        self._client = client
        return None

    async def _reconnect(self) -> None:
        backoff = Backoff(_LINK_BACKOFF_START_S, BACKOFF_MAX_S, jitter=0.0)
        while True:
            reason = await self._connect_once()
            if reason is None:
                self._stage.set_connected(True)  # logs the change
                self._down = False
                return
            if not self._down:
                self._down = True
                self._stage.set_connected(False, reason)
                await self._report_link_down(reason)
            else:
                logger.debug("%s: still down: %s", self.spec.name, reason)
            await asyncio.sleep(backoff.next())

    async def _report_link_down(self, reason: str) -> None:
        now_ms = self._clock()
        t = asyncio.get_running_loop().time()
        batch = PollBatch()
        for st in self._devices:
            if st.online is False:
                continue
            st.online = False
            batch.status.append(DeviceStatusChange(st.device_id, "unreachable", now_ms, reason, self.spec.name))
            batch.readings.extend(self._missing(st, now_ms, t))
        await self._queue.put((batch, []))

    # -------------------------------------------------------------- scheduling

    def _push(self, heap: list[tuple[float, int, _DeviceState]], st: _DeviceState) -> None:
        self._seq += 1
        heapq.heappush(heap, (st.due, self._seq, st))

    def _probe_cost(self, st: _DeviceState) -> float:
        """How long a probe that is not answered may hold the link."""
        return st.plan.timeout_s + (self.spec.late_answer_s if self.spec.sequential else 0.0)

    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        healthy, probing = self._healthy, self._probing
        while True:
            _check_cancelled()
            if not self._connected():
                await self._reconnect()
                continue
            now = loop.time()
            h_due = healthy[0][0] if healthy else math.inf
            p_due = probing[0][0] if probing else math.inf
            if h_due <= now:
                await self._poll(heapq.heappop(healthy)[2])
            elif p_due <= now:
                st = probing[0][2]
                if now + self._probe_cost(st) <= h_due or now - p_due >= _PROBE_MAX_DEFER_S:
                    heapq.heappop(probing)
                    await self._poll(st)
                else:
                    await asyncio.sleep(h_due - now)
            else:
                await asyncio.sleep(min(h_due, p_due) - now)

    # -------------------------------------------------------------- one request

    async def _settle(self) -> None:
        """Sequential links: wait for the late answer to the request we gave up on, or its window."""
        late = self._late
        if late is None:
            return
        remaining = late.until - asyncio.get_running_loop().time()
        if remaining > 0 and not late.answered.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await late.answered.wait()
        self._late = None
        if late.answered.is_set():
            self._busy_by = None  # the server is done with everything we sent
        else:
            self._busy_by = late.st
            self._stage.count("late_windows_passed")
            logger.debug(
                "%s: no late answer from %s within %g s", self.spec.name, late.st.device_id, self.spec.late_answer_s
            )

    async def _read(self, block: ReadBlock, unit: int, timeout: float) -> ModbusPDU:
        client = self._client
        if client is None:
            raise ConnectionException(f"{self.spec.name}: not connected")
        if block.table == "holding":
            request = client.read_holding_registers(block.address, count=block.count, device_id=unit)
        elif block.table == "input":
            request = client.read_input_registers(block.address, count=block.count, device_id=unit)
        elif block.table == "coil":
            request = client.read_coils(block.address, count=block.count, device_id=unit)
        else:
            request = client.read_discrete_inputs(block.address, count=block.count, device_id=unit)
        async with asyncio.timeout(timeout):
            return await request

    async def _read_block(self, st: _DeviceState, block: ReadBlock, attempts: int) -> _Answer:
        """Read one block with retries; classify what happened."""
        reason = ""
        excused = False
        sequential = self.spec.sequential
        for _ in range(attempts):
            if sequential:
                await self._settle()
                excused = self._busy_by is not None and self._busy_by is not st
            self._sent_key = None
            try:
                rsp = await self._read(block, st.binding.unit, st.plan.timeout_s)
            except TimeoutError:
                if not self._connected():
                    return _Answer("link", reason=f"connection to {self.spec.name} lost")
                reason = f"no response within {st.plan.timeout_s:g} s"
                self._stage.count("timeouts")
                if sequential:
                    loop = asyncio.get_running_loop()
                    self._late = _Late(st, self._sent_key, loop.time() + self.spec.late_answer_s)
                continue
            except ConnectionException as exc:
                return _Answer("link", reason=f"connection to {self.spec.name} lost: {exc}")
            except ModbusException as exc:
                if not self._connected():
                    return _Answer("link", reason=f"connection to {self.spec.name} lost: {exc}")
                return _Answer("error", reason=f"bad response: {exc}")
            except OSError as exc:
                return _Answer("link", reason=f"connection to {self.spec.name} failed: {exc}")
            self._busy_by = None  # an answer in time: the server is in step with us
            return self._classify(st, block, rsp)
        return _Answer("timeout", reason=reason, excused=excused)

    def _classify(self, st: _DeviceState, block: ReadBlock, rsp: ModbusPDU) -> _Answer:
        fc = _FUNCTION[block.table]
        if rsp.isError():
            code = int(getattr(rsp, "exception_code", 0) or 0)
            text = f"exception {code} ({_EXCEPTION_NAMES.get(code, 'unknown')})"
            if code in _GATEWAY_NO_TARGET:
                return _Answer("timeout", reason=f"gateway reports {text}")
            where = f"{block.table} {block.address + st.binding.address_base}"
            return _Answer(
                "exception", reason=f"device answered {text} to a read of {block.count} at {where}", code=code
            )
        if rsp.function_code != fc:
            return _Answer("error", reason=f"answer with function {rsp.function_code} to a read with function {fc}")
        data: Sequence[int] | Sequence[bool] = rsp.bits[: block.count] if block.is_bits else rsp.registers
        problem = response_problem(block, data)
        if problem is not None:
            return _Answer("error", data, problem)
        return _Answer("ok", data)

    # -------------------------------------------------------------- one poll

    async def _poll(self, st: _DeviceState) -> None:
        loop = asyncio.get_running_loop()
        attempts = 1 if st.online is False else st.plan.retries + 1
        rp = st.reads.start(loop.time())
        dead: list[DeadLetter] = []
        failure: _Answer | None = None
        while (block := rp.next()) is not None:
            ans = await self._read_block(st, block, attempts)
            if ans.outcome == "link":
                # the connection went away mid-poll: retry this slot's device after reconnecting
                logger.debug("%s: %s while polling %s", self.spec.name, ans.reason, st.device_id)
                self.close()
                self._push(self._healthy if st.online is not False else self._probing, st)
                return
            if ans.outcome == "timeout":
                failure = ans
                break
            self._take(st, rp, block, ans, dead, loop.time())
        now = loop.time()
        batch = PollBatch(dead=dead)
        self._conclude(st, rp, failure, batch, self._clock(), now)
        _check_cancelled()
        await self._queue.put((batch, [st]))

    def _take(
        self, st: _DeviceState, rp: ReadPass, block: ReadBlock, ans: _Answer, dead: list[DeadLetter], now: float
    ) -> None:
        """One answer of a poll: data, a Modbus exception or a response that does not fit the read."""
        if ans.outcome == "ok":
            rp.ok(block, ans.data)
            if st.dead_at:
                st.dead_at.pop((block.table, block.address, block.count), None)
        elif ans.outcome == "exception":
            rp.refused(block, ans.code, ans.reason)
        else:
            rp.failed(block)
            self._dead_letter(dead, st, block, block.address, ans.data, ans.reason, now, whole=True)

    def _conclude(
        self, st: _DeviceState, rp: ReadPass, failure: _Answer | None, batch: PollBatch, now_ms: int, now: float
    ) -> None:
        """A poll is over: the device answered (readings), missed it on a busy link, or failed."""
        if failure is None:
            st.excused = 0
            self._device_answered(st, rp.answered, batch, now_ms, now)
            self._learned(st, rp, batch, now_ms, now)
        elif failure.excused and st.online is not False and st.excused < MAX_EXCUSED:
            # the link was possibly still busy with another unit's late answer: not this unit's fault
            # (a unit not polled yet gets the same benefit: nothing says it is dead)
            st.excused += 1
            self._stage.count("excused_timeouts")
            logger.debug("%s: %s missed a poll on a possibly busy link", self.spec.name, st.device_id)
            st.due = _next_slot(st.due, st.plan.poll_interval_s, now)
            self._push(self._healthy, st)
        else:
            self._device_failed(st, failure.reason, batch, now_ms, now)

    def _learned(self, st: _DeviceState, rp: ReadPass, batch: PollBatch, now_ms: int, now: float) -> None:
        """Keep what a completed poll taught about the device's map: dead letters, logs, status."""
        for block, reason in rp.refused_reads:
            self._dead_letter(batch.dead, st, block, block.address, (), reason, now, whole=True)
        before = st.reads.blocks
        changed = rp.finish()
        reads = st.reads
        if reads.blocks != before:
            logger.info(
                "%s: unit %s (%s) is now read with %d requests: %s",
                self.spec.name,
                st.binding.unit,
                st.device_id,
                len(reads.blocks),
                ", ".join(f"{b.table} {b.address + st.binding.address_base}+{b.count}" for b in reads.blocks),
            )
        by_address: dict[tuple[str, int], list[str]] = {}
        for u in rp.found:
            by_address.setdefault((u.point.table, u.point.address), []).append(u.point.name)
        for (table, address), names in by_address.items():
            reason = reads.unreadable[names[0]].reason
            self._stage.count("dead_letters")
            batch.dead.append(
                DeadLetter(
                    source=_SOURCE,
                    address=f"{self.spec.name}/unit{st.binding.unit}/{table}:{address + st.binding.address_base}",
                    payload=b"",
                    reason=f"{reason}; not read any more (re-checked every {st.plan.keepalive_s:g} s): "
                    f"{', '.join(names)}",
                    received_at_ms=now_ms,
                    device_id=st.device_id,
                )
            )
        for u in rp.found:  # their last values are no longer current
            last = st.last.get(u.point.name)
            if last is not None and last.quality is not Quality.MISSING:
                batch.readings.append(
                    self._reading(
                        st,
                        u.point.point.unit,
                        u.point.name,
                        u.point.point_class,
                        last.value,
                        Quality.MISSING,
                        now_ms,
                        urgent=False,
                    )
                )
                last.quality, last.at = Quality.MISSING, now
        if not changed:
            return
        if reads.unreadable:
            names = sorted(reads.unreadable)
            text = f"{len(names)} point(s) cannot be read: {', '.join(names)} ({reads.unreadable[names[0]].reason})"
            logger.warning("%s: unit %s (%s): %s", self.spec.name, st.binding.unit, st.device_id, text)
            batch.status.append(DeviceStatusChange(st.device_id, "points_unreadable", now_ms, text, None))
        else:
            logger.info(
                "%s: unit %s (%s): every point can be read again", self.spec.name, st.binding.unit, st.device_id
            )
            batch.status.append(DeviceStatusChange(st.device_id, "points_readable", now_ms, "", None))

    def _device_failed(self, st: _DeviceState, reason: str, batch: PollBatch, now_ms: int, now: float) -> None:
        if st.online is not False:
            logger.warning("%s: unit %s (%s) unreachable: %s", self.spec.name, st.binding.unit, st.device_id, reason)
            batch.status.append(DeviceStatusChange(st.device_id, "unreachable", now_ms, reason, None))
            batch.readings.extend(self._missing(st, now_ms, now))
            st.online = False
            st.failed_probes = 1
        else:
            logger.debug("%s: %s still unreachable: %s", self.spec.name, st.device_id, reason)
            st.failed_probes += 1
        backoff_s = _DEVICE_BACKOFF.delay(st.failed_probes)
        st.due = _next_slot(st.due, st.plan.poll_interval_s, now + backoff_s - st.plan.poll_interval_s)
        self._push(self._probing, st)

    def _device_answered(
        self,
        st: _DeviceState,
        results: list[tuple[ReadBlock, Sequence[int] | Sequence[bool]]],
        batch: PollBatch,
        now_ms: int,
        now: float,
    ) -> None:
        if st.online is not True:
            if st.online is False:
                logger.info("%s: unit %s (%s) answers again", self.spec.name, st.binding.unit, st.device_id)
            batch.status.append(DeviceStatusChange(st.device_id, "online", now_ms, "", None))
            st.online = True
            st.failed_probes = 0
        keepalive = st.plan.keepalive_s
        site = st.device.site_id
        for block, data in results:
            for rp, res in decode_block(block, data):
                if isinstance(res, DecodeError):
                    off = rp.address - block.address
                    self._dead_letter(batch.dead, st, block, rp.address, data[off : off + rp.width], str(res), now)
                    continue
                if st.dead_at:
                    st.dead_at.pop((rp.table, rp.address, 0), None)
                name = rp.name
                last = st.last.get(name)
                value = res.value
                if value is None:  # the device says "no value": keep the last one, flagged missing, once
                    if last is not None and last.quality is not Quality.MISSING:
                        batch.readings.append(
                            self._reading(
                                st,
                                rp.point.unit,
                                name,
                                rp.point_class,
                                last.value,
                                Quality.MISSING,
                                now_ms,
                                urgent=False,
                            )
                        )
                        last.quality, last.at = Quality.MISSING, now
                    continue
                changed = (
                    last is None or last.quality is not res.quality or _moved(value, last.value, rp.point.deadband)
                )
                if changed or (last is not None and now - last.at >= keepalive):
                    batch.readings.append(
                        Reading(
                            site,
                            st.device_id,
                            name,
                            value,
                            rp.point.unit,
                            now_ms,
                            now_ms,
                            res.quality,
                            rp.point_class,
                            changed and rp.point_class in URGENT_CLASSES,
                        )
                    )
                    st.last[name] = _Last(value, res.quality, now)
        st.due = _next_slot(st.due, st.plan.poll_interval_s, now)
        self._push(self._healthy, st)

    def _reading(
        self,
        st: _DeviceState,
        unit: str,
        name: str,
        pclass: PointClass,
        value: Value,
        quality: Quality,
        now_ms: int,
        *,
        urgent: bool,
    ) -> Reading:
        return Reading(st.device.site_id, st.device_id, name, value, unit, now_ms, now_ms, quality, pclass, urgent)

    def _missing(self, st: _DeviceState, now_ms: int, now: float) -> list[Reading]:
        """The last-known values of a device that stopped answering, flagged missing (once)."""
        out = []
        by_name = {rp.name: rp for rp in st.plan.points}
        for name, last in st.last.items():
            if last.quality is Quality.MISSING:
                continue
            rp = by_name[name]
            out.append(
                self._reading(
                    st, rp.point.unit, name, rp.point_class, last.value, Quality.MISSING, now_ms, urgent=False
                )
            )
            last.quality, last.at = Quality.MISSING, now
        return out

    def _dead_letter(
        self,
        out: list[DeadLetter],
        st: _DeviceState,
        block: ReadBlock,
        address: int,
        data: Sequence[int] | Sequence[bool],
        reason: str,
        now: float,
        *,
        whole: bool = False,
    ) -> None:
        """Add a dead letter, unless this address sent one within keepalive_s (repeats are counted)."""
        self._stage.count("bad_reads")
        key = (block.table, address, block.count if whole else 0)
        sent = st.dead_at.get(key)
        if sent is not None and now - sent < st.plan.keepalive_s:
            return
        st.dead_at[key] = now
        self._stage.count("dead_letters")
        payload = bytes(int(b) for b in data) if block.is_bits else words_to_bytes([int(w) for w in data])
        documented = address + st.binding.address_base
        out.append(
            DeadLetter(
                source=_SOURCE,
                address=f"{self.spec.name}/unit{st.binding.unit}/{block.table}:{documented}",
                payload=payload,
                reason=reason,
                received_at_ms=self._clock(),
                device_id=st.device_id,
            )
        )

    # -------------------------------------------------------------- commit

    async def _commit_loop(self) -> None:
        while True:
            _check_cancelled()
            batch, states = await self._queue.get()
            if batch.readings or batch.dead or batch.status:
                try:
                    await self._commit(batch)
                except Exception as exc:  # the store's failure must not stop polling
                    self._stage.count("commit_errors")
                    if not self._commit_failing:
                        logger.error("%s: commit failed, values will be re-sent: %s", self.spec.name, exc, exc_info=exc)
                        self._commit_failing = True
                    for st in states:
                        st.last.clear()
                    continue
                if self._commit_failing:
                    logger.info("%s: commit works again", self.spec.name)
                    self._commit_failing = False
            self._stage.count("polls")
            self._stage.beat(self._queue.qsize())
