"""Expensive requests in a sandbox: the profile dry run runs in a worker process of its own.

Parsing and validating a pasted profile is the one API request whose cost a client controls (YAML
nested thousands deep, aliases that multiply, a huge sample). In the gateway's process it would
hold the GIL that the committer needs: six viewers pasting 200 KB of nested YAML once took
alarm-to-webhook latency from 0.06 s to 23 s. Here it runs in one lower-priority worker process
(scheduled ``SCHED_IDLE``: it runs only on a CPU that would otherwise idle) with limits on time,
memory and queue, so the committer's throughput and alarm latency do not move:

- one request at a time; at most ``max_waiting`` more wait, and one per caller; beyond that
  :class:`SandboxBusy` (429), which the API answers before it reads the request's body;
- ``timeout_s`` per request: past it the worker is killed and :class:`SandboxLimit` (422) names it;
- ``memory_mb`` of address space: a worker that runs out is restarted and the request is refused.

The worker starts on first use and is restarted whenever it dies.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["Sandbox", "SandboxBusy", "SandboxLimit"]

logger = logging.getLogger(__name__)

#: How long a new worker may take to import what it needs (not counted in a request's time).
STARTUP_TIMEOUT_S = 60.0


class SandboxBusy(Exception):
    """Too many dry runs are waiting."""


class SandboxLimit(Exception):
    """The request went past a limit (time, memory); the message says which."""


def _worker(conn: Connection, memory_mb: int) -> None:
    import resource

    try:
        limit = memory_mb * 1_048_576
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ValueError, OSError):  # not allowed here: the time limit still holds
        pass
    try:  # the gateway's own work goes first: run only when a CPU would otherwise idle
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        try:
            os.nice(19)
        except OSError:
            pass
    from gateway.api.dryrun import dry_run

    conn.send(("ready", None))  # imports done: request time limits start from here
    while True:
        try:
            profile_yaml, sample = conn.recv()
        except (EOFError, OSError):
            return
        try:
            result: tuple[str, Any] = ("ok", dry_run(profile_yaml, sample))
        except MemoryError:
            result = ("limit", "the profile needs more memory than a dry run may use")
        except RecursionError:
            result = ("limit", "the profile is nested too deeply")
        except Exception as exc:  # a bug: answered, never fatal to the worker
            result = ("error", f"{type(exc).__name__}: {exc}"[:300])
        try:
            conn.send(result)
        except (OSError, ValueError):
            return


class Sandbox:
    """See the module docstring. Use from one event loop; ``close()`` ends the worker."""

    def __init__(self, *, timeout_s: float = 5.0, max_waiting: int = 4, memory_mb: int = 1024) -> None:
        self.timeout_s = timeout_s
        self.max_waiting = max_waiting
        self.memory_mb = memory_mb
        self._waiting = 0
        self._callers: set[str] = set()
        self._lock: asyncio.Lock | None = None
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._plock = threading.Lock()
        self.counters = {"runs": 0, "timeouts": 0, "busy": 0, "restarts": 0}

    def refusal(self, who: str) -> str | None:
        """Why a new dry run from ``who`` would be refused right now (cheap: asked before the request
        body is even read), or None. One dry run in flight per caller, ``max_waiting`` in all."""
        if self._waiting >= self.max_waiting:
            self.counters["busy"] += 1
            return f"{self._waiting} dry runs are waiting; try again shortly"
        if who in self._callers:
            self.counters["busy"] += 1
            return "your previous dry run is still running"
        return None

    async def dry_run(self, profile_yaml: str, sample: str | None, *, who: str = "") -> dict[str, Any]:
        busy = self.refusal(who)
        if busy is not None:
            raise SandboxBusy(busy)
        if self._lock is None:
            self._lock = asyncio.Lock()
        self._waiting += 1
        if who:
            self._callers.add(who)
        try:
            async with self._lock:
                return await asyncio.to_thread(self._call, profile_yaml, sample)
        finally:
            self._waiting -= 1
            self._callers.discard(who)

    def _start(self) -> Connection:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, self.memory_mb), name="firegw-dry-run", daemon=True)
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        try:
            ready = parent.poll(STARTUP_TIMEOUT_S) and parent.recv()[0] == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            self._kill()
            raise SandboxLimit("the dry-run worker did not start")
        return parent

    def _kill(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()
        if proc is not None and proc.is_alive():
            proc.kill()
            proc.join(5)

    def _call(self, profile_yaml: str, sample: str | None) -> dict[str, Any]:
        with self._plock:
            conn = self._conn
            if conn is None or self._proc is None or not self._proc.is_alive():
                if self._proc is not None:
                    self.counters["restarts"] += 1
                    self._kill()
                conn = self._start()
            self.counters["runs"] += 1
            try:
                conn.send((profile_yaml, sample))
                ready = conn.poll(self.timeout_s)
            except (OSError, ValueError, EOFError):
                ready = False
            if not ready:
                alive = self._proc is not None and self._proc.is_alive()
                self._kill()
                if alive:
                    self.counters["timeouts"] += 1
                    raise SandboxLimit(f"the dry run took longer than {self.timeout_s:g} s")
                raise SandboxLimit("the dry run needed more memory than it may use")
            try:
                kind, value = conn.recv()
            except (EOFError, OSError):
                self._kill()
                raise SandboxLimit("the dry run needed more memory than it may use") from None
        if kind == "ok":
            result: dict[str, Any] = value
            return result
        if kind == "limit":
            raise SandboxLimit(str(value))
        raise RuntimeError(f"dry run failed: {value}")

    def close(self) -> None:
        with self._plock:
            self._kill()
