"""Read planning for one device: coalesce its points into the fewest reads, and learn from its answers
which registers it lacks (a refused coalesced read is split until the parts it serves are found). Pure."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gateway.errors import ConfigError
from gateway.normalize.registers.points import BIT_TABLES, RegisterPoint, Table, compile_points
from gateway.profiles.models import ModbusDeviceBinding, ModbusProfile, Profile

__all__ = [
    "SPLIT_CODES",
    "DevicePlan",
    "DeviceReads",
    "ReadBlock",
    "ReadPass",
    "Unreadable",
    "compile_device",
    "join_blocks",
    "plan_reads",
    "response_problem",
    "split_block",
]


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


def compile_device(device_id: str, profile: Profile, binding: ModbusDeviceBinding, *, link: str = "") -> DevicePlan:
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


def join_blocks(
    blocks: Iterable[ReadBlock], *, max_registers: int = 125, max_bits: int = 2000
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
            recheck = plan_reads(
                [u.point for u in self.unreadable.values()],
                max_registers=self.plan.max_registers,
                max_bits=self.plan.max_bits,
                max_gap=0,
            )
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
