"""Liveness of every pipeline stage: last progress time, queue depth, last error, connection state.

Each stage (source, committer, poller, forwarder, notifier) holds a :class:`Stage` and calls
``beat()`` whenever it makes progress. A stage that has work but no progress for longer than its
``stall_after_s`` is reported as stalled by ``/readyz`` and by the health snapshot, instead of
stalling silently (peers.md §6). Thread-safe enough for counters: writes are single attribute
stores, read by snapshot.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from gateway.retry import EdgeLog

__all__ = ["Health", "Stage"]

logger = logging.getLogger(__name__)


@dataclass
class Stage:
    name: str
    stall_after_s: float = 30.0
    last_progress: float = field(default_factory=time.monotonic)
    depth: int = 0
    connected: bool | None = None  # None: not a connection
    last_error: str | None = None
    failing: str | None = None  # the stage cannot go on (the store refuses writes, a port is taken)
    counters: dict[str, int] = field(default_factory=dict)
    _edge: EdgeLog = field(
        default_factory=lambda: EdgeLog(logger, level=logging.ERROR), init=False, repr=False, compare=False
    )

    def fail(self, reason: str) -> bool:
        """Mark the stage failing; logs on the edge only (DEBUG while it stays failing). True when it
        was not failing before."""
        first = self._edge.failed("%s: %s", self.name, reason)
        self.failing = reason
        self.last_error = reason
        return first

    def ok(self) -> None:
        """The stage goes on again; logs on the edge only."""
        if self._edge.recovered("%s: recovered (was: %s)", self.name, self.failing):
            self.failing = None

    def beat(self, depth: int | None = None) -> None:
        self.last_progress = time.monotonic()
        if depth is not None:
            self.depth = depth

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def set_connected(self, up: bool, error: str | None = None) -> None:
        if self.connected != up:
            if up:
                logger.info("%s: connected", self.name)
            else:
                logger.warning("%s: disconnected: %s", self.name, error or "")
        self.connected = up
        if error is not None:
            self.last_error = error
        self.beat()

    def stalled(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return self.depth > 0 and now - self.last_progress > self.stall_after_s

    def snapshot(self) -> dict[str, object]:
        now = time.monotonic()
        return {
            "name": self.name,
            "since_progress_s": round(now - self.last_progress, 3),
            "depth": self.depth,
            "connected": self.connected,
            "stalled": self.stalled(now),
            "failing": self.failing,
            "last_error": self.last_error,
            "counters": dict(self.counters),
        }


class Health:
    """The registry of stages of one gateway."""

    def __init__(self) -> None:
        self._stages: dict[str, Stage] = {}
        self._lock = threading.Lock()

    def stage(self, name: str, *, stall_after_s: float = 30.0) -> Stage:
        with self._lock:
            st = self._stages.get(name)
            if st is None:
                st = self._stages[name] = Stage(name, stall_after_s)
            return st

    def stages(self) -> list[Stage]:
        with self._lock:
            return list(self._stages.values())

    def snapshot(self) -> dict[str, object]:
        stages = [s.snapshot() for s in self.stages()]
        ok = all(not s["stalled"] and s["connected"] is not False and not s["failing"] for s in stages)
        return {"ok": ok, "stages": stages}
