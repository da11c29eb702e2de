"""Modbus polling source: the only module that talks to pymodbus on the gateway side.

It owns the links (one pymodbus client per TCP ``host:port`` or serial port), the per-device poll
schedules, reachability, backoff and report by exception. Decoding is ``gateway.normalize.registers``.

How it behaves:

* **One connection per link, requests serialized.** A link worker task owns the client and sends one
  request at a time. Links are fully independent tasks (a dead host never delays another host).
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
  within the probe's timeout (or when it has waited 30 s). Live devices due at the same time always
  go first. Recovery is automatic (INFO once, status ``online``, every value re-emitted).
* **Whole-link outages.** When the connection itself is down (refused, reset, closed), every device on
  the link is reported unreachable with ``link`` set to the link name (host:port or serial port), so
  the rule engine can raise one hazard for the link; the link reconnects with backoff (0.5 s → 30 s)
  on a fresh pymodbus client (pymodbus' own reconnect is switched off: it is hard to observe).
  A device that times out on a live connection is reported with ``link=None``.
* **Report by exception.** A point is emitted on the first poll, when its value changes (bool, int,
  str) or moves more than its ``deadband`` (float), when its quality changes, or when ``keepalive_s``
  has passed since it was last emitted. Changed points of the urgent classes carry ``urgent=True``.
  ``ts_ms`` and ``received_at_ms`` are the poll completion time (UTC epoch ms).
* **Bad input is data, not a crash.** A point out of its physical range becomes a dead letter and the
  other points go on. A Modbus exception response (illegal function or address...) becomes a dead
  letter for that read block and the device stays online (it answered); a short response likewise.
  Gateway exceptions 0x0A/0x0B ("target did not respond") count as the device not answering.
  pymodbus exceptions never leave this module. The same address gives one dead letter per
  ``keepalive_s`` while it stays bad (the health counter ``bad_reads`` counts every one).
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
from typing import Literal

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from gateway.errors import ConfigError, DecodeError
from gateway.health import Health, Stage
from gateway.models import URGENT_CLASSES, DeadLetter, PointClass, Quality, Reading, Value
from gateway.normalize.registers import DevicePlan, ReadBlock, compile_device, decode_block, words_to_bytes
from gateway.profiles.loader import Catalog
from gateway.profiles.models import Device, ModbusDeviceBinding
from gateway.sources.base import CommitFn, DeviceStatusChange, PollBatch

__all__ = ["BACKOFF_MAX_S", "BACKOFF_START_S", "COMMIT_QUEUE_MAX", "ModbusSource"]

logger = logging.getLogger(__name__)

#: First backoff of a device that stopped answering, doubled per failed probe up to BACKOFF_MAX_S.
BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
#: Reconnect backoff of a link whose connection is down.
_LINK_BACKOFF_START_S = 0.5
#: A probe of a backed-off device waits for an idle window at most this long.
_PROBE_MAX_DEFER_S = 30.0
#: A link's devices are spread over this fraction of their interval; the rest is left idle for probes.
_SPREAD = 0.5
#: Per-link bound of polled batches waiting for commit.
COMMIT_QUEUE_MAX = 64
#: pymodbus' own response timeout, a backstop only: every request is bounded by the device's timeout_s.
_CLIENT_BACKSTOP_TIMEOUT_S = 60.0

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

_Outcome = Literal["ok", "timeout", "link", "exception", "error"]


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
    due: float = 0.0
    online: bool | None = None  # None until the first poll
    backoff_s: float = 0.0
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


class ModbusSource:
    """Polls every Modbus device of the catalog and hands each poll's batch to ``commit``.

    Construct (validates, no I/O), then ``await run()`` until cancelled or ``await stop()``.
    ``clock`` returns UTC epoch milliseconds (tests may inject one); schedules use the loop's clock.
    """

    name = _SOURCE

    def __init__(
        self, *, catalog: Catalog, commit: CommitFn, health: Health, clock: Callable[[], int] | None = None
    ) -> None:
        self._commit = commit
        self._health = health
        self._clock = clock or _epoch_ms
        self._task: asyncio.Task[None] | None = None
        groups: dict[str, tuple[_LinkSpec, list[_DeviceState]]] = {}
        problems: list[str] = []
        for device in catalog.devices.values():
            profile = catalog.profiles.get(device.profile)
            if profile is None or profile.transport != "modbus":
                continue
            binding = device.modbus
            if binding is None:
                problems.append(f"{device.device_id}: modbus: the device has no modbus binding")
                continue
            spec = _link_spec(binding)
            try:
                plan = compile_device(device.device_id, profile, binding, link=spec.name)
            except ConfigError as exc:
                problems.extend(exc.problems)
                continue
            entry = groups.get(spec.name)
            if entry is None:
                entry = groups[spec.name] = (spec, [])
            elif entry[0] != spec:
                problems.append(
                    f"{device.device_id}: modbus: link {spec.name} is already used with "
                    f"framer {entry[0].framer}, baudrate {entry[0].baudrate}; one link has one setting"
                )
                continue
            for other in entry[1]:
                if other.binding.unit == binding.unit:
                    problems.append(
                        f"{device.device_id}: modbus.unit: unit {binding.unit} on {spec.name} is "
                        f"already device {other.device_id}"
                    )
                    break
            else:
                entry[1].append(_DeviceState(device=device, binding=binding, plan=plan))
        if problems:
            raise ConfigError(problems)
        self._links = [
            _Link(
                spec,
                states,
                commit=self._commit,
                stage=health.stage(f"modbus:{spec.name}"),
                clock=self._clock,
                phase=i / len(groups),
            )
            for i, (spec, states) in enumerate(groups.values())
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


def _link_spec(b: ModbusDeviceBinding) -> _LinkSpec:
    if b.framer == "rtu":
        assert b.serial_port is not None  # the binding model requires it
        return _LinkSpec(b.serial_port, "rtu", None, 0, b.serial_port, b.baudrate)
    assert b.host is not None
    return _LinkSpec(f"{b.host}:{b.port}", b.framer, b.host, b.port, None, 0)


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
                timeout=_CLIENT_BACKSTOP_TIMEOUT_S,
                retries=0,
                reconnect_delay=0,
                name=s.name,
            )
        assert s.host is not None
        framer = FramerType.SOCKET if s.framer == "tcp" else FramerType.RTU
        return AsyncModbusTcpClient(
            s.host,
            port=s.port,
            framer=framer,
            timeout=_CLIENT_BACKSTOP_TIMEOUT_S,
            retries=0,
            reconnect_delay=0,
            name=s.name,
        )

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
        delay = _LINK_BACKOFF_START_S
        while True:
            reason = await self._connect_once()
            if reason is None:
                self._stage.set_connected(True)
                self._down = False
                return
            if not self._down:
                self._down = True
                self._stage.set_connected(False, reason)
                await self._report_link_down(reason)
            else:
                logger.debug("%s: still down: %s", self.spec.name, reason)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _report_link_down(self, reason: str) -> None:
        now_ms = self._clock()
        t = asyncio.get_running_loop().time()
        batch = PollBatch()
        for st in self._devices:
            if st.online is False:
                continue
            st.online = False
            batch.status.append(
                DeviceStatusChange(st.device_id, "unreachable", now_ms, reason, self.spec.name)
            )
            batch.readings.extend(self._missing(st, now_ms, t))
        await self._queue.put((batch, []))

    # -------------------------------------------------------------- scheduling

    def _push(self, heap: list[tuple[float, int, _DeviceState]], st: _DeviceState) -> None:
        self._seq += 1
        heapq.heappush(heap, (st.due, self._seq, st))

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
                if now + st.plan.timeout_s <= h_due or now - p_due >= _PROBE_MAX_DEFER_S:
                    heapq.heappop(probing)
                    await self._poll(st)
                else:
                    await asyncio.sleep(h_due - now)
            else:
                await asyncio.sleep(min(h_due, p_due) - now)

    # -------------------------------------------------------------- one poll

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

    async def _read_block(
        self, st: _DeviceState, block: ReadBlock, attempts: int
    ) -> tuple[_Outcome, Sequence[int] | Sequence[bool], str]:
        """Read one block with retries; classify what happened."""
        reason = ""
        for _ in range(attempts):
            try:
                rsp = await self._read(block, st.binding.unit, st.plan.timeout_s)
            except TimeoutError:
                if not self._connected():
                    return "link", (), f"connection to {self.spec.name} lost"
                reason = f"no response within {st.plan.timeout_s:g} s"
                self._stage.count("timeouts")
                continue
            except ConnectionException as exc:
                return "link", (), f"connection to {self.spec.name} lost: {exc}"
            except ModbusException as exc:
                if not self._connected():
                    return "link", (), f"connection to {self.spec.name} lost: {exc}"
                return "error", (), f"bad response: {exc}"
            except OSError as exc:
                return "link", (), f"connection to {self.spec.name} failed: {exc}"
            if rsp.isError():
                code = getattr(rsp, "exception_code", 0)
                text = f"exception {code} ({_EXCEPTION_NAMES.get(code, 'unknown')})"
                if code in _GATEWAY_NO_TARGET:
                    return "timeout", (), f"gateway reports {text}"
                return (
                    "exception",
                    (),
                    f"device answered {text} to a read of {block.count} at {block.table} "
                    f"{block.address + st.binding.address_base}",
                )
            data: Sequence[int] | Sequence[bool] = rsp.bits[: block.count] if block.is_bits else rsp.registers
            if len(data) < block.count or (not block.is_bits and len(data) != block.count):
                return (
                    "error",
                    data,
                    (
                        f"{'short' if len(data) < block.count else 'long'} response: "
                        f"{len(data)} of {block.count} {'bits' if block.is_bits else 'registers'}"
                    ),
                )
            return "ok", data, ""
        return "timeout", (), reason

    async def _poll(self, st: _DeviceState) -> None:
        loop = asyncio.get_running_loop()
        plan = st.plan
        attempts = 1 if st.online is False else plan.retries + 1
        results: list[tuple[ReadBlock, Sequence[int] | Sequence[bool]]] = []
        dead: list[DeadLetter] = []
        failure: str | None = None
        for block in plan.blocks:
            outcome, data, reason = await self._read_block(st, block, attempts)
            if outcome == "ok":
                results.append((block, data))
                if st.dead_at:
                    st.dead_at.pop((block.table, block.address, block.count), None)
            elif outcome == "link":
                # the connection went away mid-poll: retry this slot's device after reconnecting
                logger.debug("%s: %s while polling %s", self.spec.name, reason, st.device_id)
                self.close()
                self._push(self._healthy if st.online is not False else self._probing, st)
                return
            elif outcome == "timeout":
                failure = reason
                break
            else:
                self._dead_letter(dead, st, block, block.address, data, reason, loop.time(), whole=True)
        now = loop.time()
        now_ms = self._clock()
        batch = PollBatch(dead=dead)
        if failure is not None:
            self._device_failed(st, failure, batch, now_ms, now)
        else:
            self._device_answered(st, results, batch, now_ms, now)
        _check_cancelled()
        await self._queue.put((batch, [st]))

    def _device_failed(
        self, st: _DeviceState, reason: str, batch: PollBatch, now_ms: int, now: float
    ) -> None:
        if st.online is not False:
            logger.warning(
                "%s: unit %s (%s) unreachable: %s", self.spec.name, st.binding.unit, st.device_id, reason
            )
            batch.status.append(DeviceStatusChange(st.device_id, "unreachable", now_ms, reason, None))
            batch.readings.extend(self._missing(st, now_ms, now))
            st.online = False
            st.backoff_s = BACKOFF_START_S
        else:
            logger.debug("%s: %s still unreachable: %s", self.spec.name, st.device_id, reason)
            st.backoff_s = min(max(st.backoff_s * 2, BACKOFF_START_S), BACKOFF_MAX_S)
        st.due = _next_slot(st.due, st.plan.poll_interval_s, now + st.backoff_s - st.plan.poll_interval_s)
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
            st.backoff_s = 0.0
        keepalive = st.plan.keepalive_s
        site = st.device.site_id
        for block, data in results:
            for rp, res in decode_block(block, data):
                if isinstance(res, DecodeError):
                    off = rp.address - block.address
                    self._dead_letter(
                        batch.dead, st, block, rp.address, data[off : off + rp.width], str(res), now
                    )
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
                    last is None
                    or last.quality is not res.quality
                    or _moved(value, last.value, rp.point.deadband)
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
        return Reading(
            st.device.site_id, st.device_id, name, value, unit, now_ms, now_ms, quality, pclass, urgent
        )

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
                        logger.error(
                            "%s: commit failed, values will be re-sent: %s", self.spec.name, exc, exc_info=exc
                        )
                        self._commit_failing = True
                    for st in states:
                        st.last.clear()
                    continue
                if self._commit_failing:
                    logger.info("%s: commit works again", self.spec.name)
                    self._commit_failing = False
            self._stage.count("polls")
            self._stage.beat(self._queue.qsize())
