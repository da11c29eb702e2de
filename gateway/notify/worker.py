"""The delivery worker: moves outbox rows to their destinations, at least once, in order per subject.

The committer writes each transition of a fire event or hazard together with one ``outbox`` row per
destination (transactional outbox, design.md §2). :class:`Notifier` runs one delivery lane per
destination (``webhook``, ``mqtt``) on its **own** SQLite connections (one for reads, one for
writes, each used from one dedicated thread; ``PRAGMA busy_timeout=30000``). Writes are short
transactions; no transaction is ever held across network I/O, and the notifier never runs a WAL
checkpoint (the committer does).

Per lane:

* **Order per subject.** Only the *head* of a subject (its lowest pending ``seq``) is ever sent, and
  at most one row per subject is in flight, so a hazard's ``closed`` never overtakes its
  ``confirmed``. Different subjects go in parallel, up to the destination's concurrency.
* **Scheduling.** The lane keeps a bounded window of the lowest-seq pending rows in memory
  (``WINDOW`` rows), read incrementally through the ``outbox_pending`` index, and a heap of subject
  heads by due time. The window is rebuilt from the outbox every ``RESYNC_S``. Rows beyond the
  window wait until it drains (only a backlog of more than ``WINDOW`` rows behind failing heads
  could hold them back).
* **At least once.** A row is marked delivered (``delivered_at``) only after the destination
  confirmed it (HTTP 2xx, MQTT PUBACK). Marks are written by one writer task in the order the
  deliveries completed, batched into one transaction when several are waiting; the subject's next
  row may go out before its predecessor's mark is on disk. A crash before the mark, or while a row
  is in flight, re-sends it (a duplicate the receiver drops by ``event_id``, the idempotency key);
  first arrivals stay in order per subject. Rows marked delivered are never sent again.
* **Retries.** A failed attempt sets ``attempts``, ``last_error`` and ``next_attempt_at`` (durable,
  so the schedule survives restarts): capped exponential backoff with jitter
  (:class:`gateway.retry.Backoff`: ``backoff_min_s`` · 2^(attempts-1), at most ``backoff_max_s``,
  drawn from [½, 1] of that), and never sooner than a ``Retry-After`` the receiver sent. A
  rejected row (the receiver refuses it) is retried at the maximum backoff and counted as
  ``rejected``: never dropped.
* **Wake-ups.** :meth:`Notifier.wake` (from the committer thread after a commit) or a poll every
  ``poll_s`` (1 s), so rows written before a restart, or without a wake-up, are not missed.
* **Health.** Stage ``notify:<destination>``: depth = pending rows, a beat per delivered row,
  counters ``delivered``, ``retried``, ``rejected``; ``last_error`` set by every failure, and
  ``connected`` False from ``FAILING_AFTER`` (3) consecutive failures until the next success. A
  failing destination logs once when it starts failing and once when it recovers (DEBUG between,
  :class:`gateway.retry.EdgeLog`); so does a lane that cannot use the outbox.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import logging
import math
import random
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from gateway.health import Health, Stage
from gateway.notify.base import Delivered, Destination, OutboxRow, Rejected, Retry
from gateway.profiles.loader import Catalog
from gateway.retry import Backoff, EdgeLog
from gateway.settings import GatewaySettings

__all__ = ["BUSY_TIMEOUT_MS", "POLL_S", "RESYNC_S", "WINDOW", "Notifier", "backoff_delay"]

logger = logging.getLogger(__name__)

#: Poll interval (seconds) when nothing wakes the worker.
POLL_S = 1.0
#: How long a write to the outbox waits for the committer's transaction (ms).
BUSY_TIMEOUT_MS = 30_000
#: Consecutive failed attempts before a destination counts as failing (logged, ``connected`` False):
#: a flaky receiver that fails one attempt in three does not flap the health state.
FAILING_AFTER = 3
#: A lane whose database access fails waits this long before trying again (seconds).
DB_RETRY_S = 1.0
#: Pending rows (with their bodies) a lane keeps in memory: the lowest-seq ones.
WINDOW = 5_000
#: Every this many seconds the window is rebuilt from the outbox (bounded by WINDOW).
RESYNC_S = 10.0
#: Delivery marks waiting to be written (bounded: deliveries wait when it is full).
MARK_QUEUE = 10_000
#: Marks written in one transaction at most.
MARK_BATCH = 500

T = TypeVar("T")

_ROW_COLUMNS = "seq, destination, event_id, subject, body, created_at, attempts, next_attempt_at"


def backoff_delay(
    attempts: int, min_s: float, max_s: float, retry_after: float | None = None, rng: random.Random | None = None
) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones. Kept for callers of earlier
    versions: ``Backoff(min_s, max_s, rng=rng).delay(attempts, retry_after)``."""
    return Backoff(min_s, max_s, rng=rng).delay(attempts, retry_after)


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class _Mark:
    """The outcome of one attempt, to be written: delivered (``error`` None) or rescheduled."""

    seq: int
    at_ms: int
    error: str | None = None
    next_attempt_at_ms: int = 0


class _OutboxDb:
    """One connection of the notifier to the store. Every method runs on that connection's thread."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("outbox connection is not open")
        return self._conn

    def open(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        # A delivered mark lost to a power cut only means one more (idempotent) delivery.
        conn.execute("PRAGMA synchronous=NORMAL")
        # Checkpoints are the committer's job: a delivery must never wait for one.
        conn.execute("PRAGMA wal_autocheckpoint=0")
        self._conn = conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def load(self, destination: str, after_seq: int, limit: int) -> tuple[list[OutboxRow], int]:
        """Pending rows with seq > ``after_seq`` in seq order (at most ``limit``), and the number of
        pending rows. Both use the index ``outbox_pending``."""
        rows = self.conn.execute(
            f"SELECT {_ROW_COLUMNS} FROM outbox WHERE destination = ? AND delivered_at IS NULL "
            "AND seq > ? ORDER BY seq LIMIT ?",
            (destination, after_seq, limit),
        ).fetchall()
        pending = self.conn.execute(
            "SELECT count(*) FROM outbox WHERE destination = ? AND delivered_at IS NULL", (destination,)
        ).fetchone()[0]
        return ([OutboxRow(r[0], r[1], r[2], r[3], r[4], int(r[5]), int(r[6]), int(r[7])) for r in rows], int(pending))

    def write_marks(self, marks: Sequence[_Mark]) -> None:
        """Write delivery outcomes in one short transaction."""
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            for m in marks:
                if m.error is None:
                    c.execute(
                        "UPDATE outbox SET delivered_at = ?, attempts = attempts + 1, last_error = NULL "
                        "WHERE seq = ? AND delivered_at IS NULL",
                        (m.at_ms, m.seq),
                    )
                else:
                    c.execute(
                        "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? "
                        "WHERE seq = ? AND delivered_at IS NULL",
                        (m.next_attempt_at_ms, m.error, m.seq),
                    )
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")


class _DbThread:
    """One :class:`_OutboxDb` connection and the one thread that uses it."""

    def __init__(self, path: Path, name: str) -> None:
        self.db = _OutboxDb(path)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.shield(self.call(self.db.close))
        self._executor.shutdown(wait=False)


@dataclass(eq=False)
class _Lane:
    """One destination's scheduler state. ``rows``: the loaded pending rows per subject in seq order
    (the window); ``ready``: a heap of (due ms, seq, subject) of subject heads, validated lazily when
    popped; ``inflight``: subjects with an attempt under way; ``unmarked``: rows delivered whose mark
    is not on disk yet (a resync must not load them again)."""

    dest: Destination
    stage: Stage
    backoff: Backoff
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    rows: dict[str, deque[OutboxRow]] = field(default_factory=dict)
    ready: list[tuple[int, int, str]] = field(default_factory=list)
    inflight: set[str] = field(default_factory=set)
    unmarked: set[int] = field(default_factory=set)
    loaded: int = 0
    loaded_upto: int = 0
    need_load: bool = True
    more_in_db: bool = False
    last_sync: float = -math.inf
    delivery: EdgeLog = field(default_factory=lambda: EdgeLog(logger, after=FAILING_AFTER))
    outbox: EdgeLog = field(default_factory=lambda: EdgeLog(logger, level=logging.ERROR))
    rejected: set[int] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.dest.name

    def push_head(self, subject: str) -> None:
        dq = self.rows.get(subject)
        if dq and subject not in self.inflight:
            head = dq[0]
            heapq.heappush(self.ready, (head.next_attempt_at_ms, head.seq, subject))

    def add(self, rows: list[OutboxRow]) -> None:
        for r in rows:
            self.loaded_upto = max(self.loaded_upto, r.seq)
            if r.seq in self.unmarked:
                continue
            dq = self.rows.get(r.subject)
            if dq is None:
                dq = self.rows[r.subject] = deque()
            dq.append(r)
            self.loaded += 1
            if len(dq) == 1:
                self.push_head(r.subject)

    def reset(self, rows: list[OutboxRow]) -> None:
        self.rows.clear()
        self.ready.clear()
        self.loaded = 0
        self.loaded_upto = 0
        self.add(rows)

    def done(self, row: OutboxRow, replacement: OutboxRow | None) -> None:
        """The head ``row`` was delivered (``replacement`` None) or rescheduled."""
        dq = self.rows.get(row.subject)
        if dq and dq[0].seq == row.seq:
            if replacement is None:
                dq.popleft()
                self.loaded -= 1
                if not dq:
                    del self.rows[row.subject]
            else:
                dq[0] = replacement
        self.inflight.discard(row.subject)
        self.push_head(row.subject)


class Notifier:
    """Delivers outbox rows to the configured destinations; see the module docstring.

    Wiring: construct with the settings, catalog, store path and health; pass :meth:`destinations`
    to the committer's workflow hooks (they write one outbox row per name); call :meth:`wake` from
    the committer thread after a commit that wrote outbox rows; run :meth:`run` as a task and cancel
    it to stop (rows in flight stay pending and are sent again on the next start).
    """

    def __init__(
        self, *, settings: GatewaySettings, catalog: Catalog, store_path: Path, health: Health, poll_s: float = POLL_S
    ) -> None:
        if poll_s <= 0:
            raise ValueError("poll_s must be positive")
        self._settings = settings
        self._catalog = catalog
        self._store_path = Path(store_path)
        self._health = health
        self._poll_s = poll_s
        self._dests: list[Destination] = []
        if settings.webhook.url:
            from gateway.notify.webhook import WebhookSender

            self._dests.append(WebhookSender(settings.webhook))
        if settings.events_mqtt.enabled:
            from gateway.notify.mqtt_out import MqttPublisher

            self._dests.append(
                MqttPublisher(settings, catalog, stage=health.stage("notify:mqtt"), summaries=self._site_summaries)
            )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lanes: list[_Lane] = []
        self._wake_pending = False
        # Reads (window, site codes) and writes (delivery marks) on separate connections and threads:
        # a mark waiting for the committer's transaction never holds up loading the next rows.
        self._reader: _DbThread | None = None
        self._writer: _DbThread | None = None
        self._marks: asyncio.Queue[tuple[_Lane, _Mark]] | None = None

    # ------------------------------------------------------------------ public

    def destinations(self) -> list[str]:
        """The destination names the committer writes outbox rows for."""
        return [d.name for d in self._dests]

    def wake(self) -> None:
        """New outbox rows are committed: look now. Thread-safe; a no-op before :meth:`run`."""
        loop = self._loop
        if loop is None or self._wake_pending:
            return
        self._wake_pending = True
        try:
            loop.call_soon_threadsafe(self._wake_lanes)
        except RuntimeError:  # the loop is closing: the next start reads the outbox anyway
            self._wake_pending = False

    async def run(self) -> None:
        """Deliver until cancelled."""
        if not self._dests:
            await asyncio.Event().wait()
            return
        loop = asyncio.get_running_loop()
        reader = self._reader = _DbThread(self._store_path, "notify-db-read")
        writer = self._writer = _DbThread(self._store_path, "notify-db-write")
        marks = self._marks = asyncio.Queue(maxsize=MARK_QUEUE)
        try:
            await reader.call(reader.db.open)
            await writer.call(writer.db.open)
            self._lanes = [
                _Lane(d, self._health.stage(f"notify:{d.name}"), Backoff(d.backoff_min_s, d.backoff_max_s))
                for d in self._dests
            ]
            opened: list[Destination] = []
            try:
                for d in self._dests:  # a ConfigError (TLS files) surfaces as itself, before any task runs
                    await d.open()
                    opened.append(d)
                self._loop = loop
                logger.info("notify: delivering to %s", ", ".join(self.destinations()))
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._write_marks(), name="notify:marks")
                    for lane in self._lanes:
                        tg.create_task(self._run_lane(lane), name=f"notify:{lane.name}")
            finally:
                self._loop = None
                for d in opened:
                    await asyncio.shield(d.aclose())
        finally:
            self._wake_pending = False
            await self._flush_marks(marks)
            await reader.close()
            await writer.close()
            self._reader = self._writer = None
            self._marks = None

    # ------------------------------------------------------------------ internals

    def _wake_lanes(self) -> None:
        self._wake_pending = False
        for lane in self._lanes:
            lane.need_load = True
            lane.wake.set()

    def _dbs(self) -> tuple[_DbThread, _DbThread]:
        if self._reader is None or self._writer is None:
            raise RuntimeError("notifier is not running")
        return self._reader, self._writer

    async def _site_summaries(self) -> list[dict[str, Any]]:
        """Every site's summary (code), read on the notifier's reading connection."""
        from gateway.sites import site_summaries
        from gateway.store.workflow import WorkflowStore

        reader, _ = self._dbs()
        return await reader.call(lambda: site_summaries(self._catalog, WorkflowStore(reader.db.conn), _now_ms()))

    # ------------------------------------------------------------------ marks

    async def _write_marks(self) -> None:
        """The one writer of delivery outcomes, in completion order, batched."""
        marks = self._marks
        assert marks is not None
        while True:
            batch = [await marks.get()]
            while len(batch) < MARK_BATCH and not marks.empty():
                batch.append(marks.get_nowait())
            try:
                await self._commit_marks(batch)
            finally:
                for _ in batch:
                    marks.task_done()

    async def _commit_marks(self, batch: list[tuple[_Lane, _Mark]]) -> None:
        _, writer = self._dbs()
        try:
            await writer.call(writer.db.write_marks, [m for _, m in batch])
        except sqlite3.Error as exc:  # not marked: the rows are sent again after the next resync
            for lane in {lane for lane, _ in batch}:
                self._db_failed(lane, exc)
        else:
            for lane in {lane for lane, _ in batch}:
                lane.outbox.recovered("notify:%s: outbox writable again", lane.name)
        finally:
            for lane, m in batch:
                lane.unmarked.discard(m.seq)

    async def _flush_marks(self, marks: asyncio.Queue[tuple[_Lane, _Mark]]) -> None:
        """At shutdown: write what is queued, so delivered rows are not sent again."""
        batch = []
        while not marks.empty():
            batch.append(marks.get_nowait())
        if batch:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._commit_marks(batch))

    # ------------------------------------------------------------------ lanes

    async def _run_lane(self, lane: _Lane) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(lane.dest.background(), name=f"notify:{lane.name}:background")
            await self._dispatch(lane, tg)

    async def _load(self, lane: _Lane) -> None:
        """Fill the window: new rows after the last one loaded, or, every ``RESYNC_S``, everything
        from the start (rows changed behind the worker's back, a reused seq, a lost mark)."""
        reader, _ = self._dbs()
        full = time.monotonic() - lane.last_sync >= RESYNC_S
        room = WINDOW if full else WINDOW - lane.loaded
        lane.need_load = False
        if room <= 0:
            lane.more_in_db = True
            return
        rows, pending = await reader.call(reader.db.load, lane.name, 0 if full else lane.loaded_upto, room)
        if full:
            lane.last_sync = time.monotonic()
            lane.reset(rows)
        else:
            lane.add(rows)
        lane.more_in_db = len(rows) == room
        pending = max(0, pending - len(lane.unmarked))
        if pending and not lane.stage.depth:
            lane.stage.beat()  # work arrived after a quiet spell: not a stall
        lane.stage.depth = pending

    async def _dispatch(self, lane: _Lane, tg: asyncio.TaskGroup) -> None:
        concurrency = lane.dest.concurrency
        while True:
            lane.wake.clear()
            if lane.need_load or time.monotonic() - lane.last_sync >= RESYNC_S:
                try:
                    await self._load(lane)
                except sqlite3.Error as exc:
                    self._db_failed(lane, exc)
                    lane.need_load = True
                    await asyncio.sleep(DB_RETRY_S)
                    continue
                lane.outbox.recovered("notify:%s: outbox readable again", lane.name)
            now = _now_ms()
            while lane.ready and len(lane.inflight) < concurrency and lane.ready[0][0] <= now:
                _, seq, subject = heapq.heappop(lane.ready)
                dq = lane.rows.get(subject)
                if not dq or dq[0].seq != seq or subject in lane.inflight:
                    continue  # stale heap entry
                lane.inflight.add(subject)
                tg.create_task(self._deliver(lane, dq[0]), name=f"notify:{lane.name}:{seq}")
            timeout = self._poll_s
            if lane.ready and len(lane.inflight) < concurrency:
                timeout = min(timeout, max(0.0, (lane.ready[0][0] - _now_ms()) / 1000))
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that arrives
            # as the event is set, and the notifier would not stop
            try:
                async with asyncio.timeout(timeout):
                    await lane.wake.wait()
            except TimeoutError:
                lane.need_load = True  # poll: rows written without a wake-up

    def _db_failed(self, lane: _Lane, exc: sqlite3.Error) -> None:
        lane.stage.last_error = f"outbox: {exc}"
        lane.outbox.failed("notify:%s: cannot use the outbox: %s (retrying)", lane.name, exc)

    async def _deliver(self, lane: _Lane, row: OutboxRow) -> None:
        marks = self._marks
        assert marks is not None
        replacement: OutboxRow | None = replace(row, next_attempt_at_ms=_now_ms() + int(DB_RETRY_S * 1000))
        try:
            outcome = await lane.dest.send(row)
            if isinstance(outcome, Delivered):
                lane.unmarked.add(row.seq)
                replacement = None
                await marks.put((lane, _Mark(row.seq, _now_ms())))
                lane.stage.count("delivered")
                lane.stage.depth = max(0, lane.stage.depth - 1)
                lane.stage.beat()
                lane.rejected.discard(row.seq)
                if lane.more_in_db:
                    lane.need_load = True
                self._recovered(lane)
                lane.dest.delivered(row)
                return
            attempts = row.attempts + 1
            if isinstance(outcome, Rejected):
                delay = lane.backoff.longest()
                error = f"rejected: {outcome.error}"
                lane.stage.count("rejected")
                lane.stage.last_error = f"{row.event_id}: {error}"
                if row.seq not in lane.rejected:
                    lane.rejected.add(row.seq)
                    logger.error(
                        "notify:%s: %s %s (%s) %s; kept and retried every ~%g s; later events of the subject wait",
                        lane.name,
                        row.subject,
                        row.event_id,
                        _body_type(row),
                        error,
                        lane.backoff.max_s,
                    )
                else:
                    logger.debug("notify:%s: %s still rejected: %s", lane.name, row.event_id, error)
            else:
                assert isinstance(outcome, Retry)
                delay = lane.backoff.delay(attempts, outcome.retry_after)
                error = outcome.error
                lane.stage.count("retried")
                self._failed(lane, error, attempts, delay)
            next_at = math.ceil(time.time() * 1000 + delay * 1000)
            replacement = replace(row, attempts=attempts, next_attempt_at_ms=next_at)
            await marks.put((lane, _Mark(row.seq, _now_ms(), error, next_at)))
        except Exception:  # a bug must not stop the other deliveries; the row stays pending
            logger.exception("notify:%s: delivering %s failed unexpectedly", lane.name, row.event_id)
        finally:
            lane.done(row, replacement)
            lane.wake.set()

    def _failed(self, lane: _Lane, error: str, attempts: int, delay: float) -> None:
        lane.stage.last_error = error
        if (
            lane.delivery.failed(
                "notify:%s: delivery failing (attempt %d, next in %.2f s): %s; events wait in the "
                "outbox and are retried",
                lane.name,
                attempts,
                delay,
                error,
            )
            and not lane.dest.tracks_connection
        ):
            lane.stage.connected = False

    def _recovered(self, lane: _Lane) -> None:
        if not lane.dest.tracks_connection:
            lane.stage.connected = True
        lane.delivery.recovered("notify:%s: delivering again (%d pending)", lane.name, lane.stage.depth)


def _body_type(row: OutboxRow) -> str:
    """The transition type from the body, for log lines (cheap string search, no JSON parse)."""
    key = '"type": "'
    i = row.body.find(key)
    if i < 0:
        return "?"
    j = row.body.find('"', i + len(key))
    return row.body[i + len(key) : j]
