"""The source interface every adapter sits behind (design.md §7).

A *pushed* source (MQTT, later NATS JetStream) hands raw messages to the core with an
acknowledgement token and acknowledges only when the core says they are committed. A *polled*
source (Modbus) hands decoded batches to an awaitable ``commit`` and counts a poll as done only
when that returns.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from gateway.models import DeadLetter, RawMessage, Reading

__all__ = ["CommitFn", "DeviceStatusChange", "PollBatch", "PushSource", "RawSink"]

DeviceStatus = Literal["online", "unreachable", "points_unreadable", "points_readable"]


@dataclass(frozen=True, slots=True)
class DeviceStatusChange:
    """A device (or a whole link) changed reachability. ``link`` names the connection (host:port).

    ``points_unreadable`` / ``points_readable``: the device answers but refuses the registers of some
    points (``reason`` names them) / serves them all again; reachability is not changed by these.
    """

    device_id: str
    status: DeviceStatus
    at_ms: int
    reason: str = ""
    link: str | None = None


@dataclass(frozen=True, slots=True)
class PollBatch:
    """What one poll cycle of a polled source produced."""

    readings: list[Reading] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    status: list[DeviceStatusChange] = field(default_factory=list)


CommitFn = Callable[[PollBatch], Awaitable[None]]


class RawSink(Protocol):
    """Where a pushed source puts what it received (the core's bounded inbox).

    ``put`` blocks the caller while the inbox is full: that is the back-pressure that makes the
    broker hold messages instead of the gateway dropping them. It returns False when the gateway
    is stopping and the message was not taken (the source must then not acknowledge it).
    """

    def put(self, raw: RawMessage) -> bool: ...


class PushSource(Protocol):
    """A source that delivers messages and acknowledges them after commit."""

    name: str

    def ack(self, tokens: list[object]) -> None:
        """Acknowledge committed messages (called from the committer thread)."""
