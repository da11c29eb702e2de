"""Store-and-forward: committed readings from the embedded store to one remote sink, nothing lost.

The embedded store is the forward buffer (design.md §2). The forwarder opens its own SQLite
connections (the committer stays the main writer), reads committed readings in ``seq`` order and
writes only its cursor rows, dead letters and evictions, in short transactions.

**Two lanes, two durable cursors** (rows of ``sink_cursors``):

- ``<name>``: the bulk lane. Every bulk reading (``urgent = 0``) with ``seq`` at or below it has
  been confirmed by the sink (or dead-lettered, or evicted). It ships batches of ``batch_size``,
  or what is there once the oldest waiting reading is ``flush_interval_s`` old; while one batch is
  in flight the next is read and encoded, so a backlog drains at full speed.
- ``<name>:urgent``: the urgent lane, the same for ``urgent = 1`` readings (alarms, faults,
  supervisory, feedback). It sends as soon as the committer wakes it, never waits for a batch to
  fill, and never queues behind the bulk backlog: after an outage the live urgent points go first.

The lanes partition the readings by the ``urgent`` flag, so each reading is sent by exactly one
lane, once; a cursor advances only after the sink confirms. A cursor may advance past the last
row it read up to the largest ``seq`` visible in the same read snapshot: the committer is the only
writer of readings and commits in ``seq`` order, so nothing can appear below it later.

**Delivery.** A crash between the sink's confirmation and the cursor's commit re-sends that one
batch after restart (at-least-once on the wire). A reading is one point (measurement, tags,
device time), so a re-send overwrites it with identical values: exactly once in the database
(VictoriaMetrics: run it with ``-dedup.minScrapeInterval=1ms``).

**Start.** A sink seen for the first time starts at ``start="earliest"`` (the default: every
reading still in the store is forwarded, which is what store-and-forward promises when the
database is added after the gateway) or ``"latest"`` (only readings committed from now on).

**Outages.** Retryable failures back off (capped, jittered, ``Retry-After`` honoured) and the
backlog grows on disk. ``max_backlog_mb`` bounds it: the estimated size of the unforwarded
readings (row and index bytes, sampled from the store) is checked every few seconds while the sink
is down; above the bound the **oldest bulk readings not yet forwarded** are deleted down to 90 %
of the bound. Urgent readings are never evicted. Evictions are counted (``evicted`` in the
``counters`` table and in the stage's health counters) and logged when eviction starts and ends.

**Rejected points** (the database refuses a line: field type conflict, bad line) become dead
letters (source ``influx``, address the sink name, payload the line, the server's reason), are
counted as ``forward_rejected``, and the rest of the batch goes on.

**The database's own crash.** A database may acknowledge a write and lose it when it is killed
(VictoriaMetrics keeps its newest points in memory for seconds: SIGKILLed, it came back without
what it had acknowledged in its last 9 to 11 s; InfluxDB 1.x writes its WAL before answering but
may sync it late, so a power cut can cost it the same). The forwarder notices that the database
restarted by its identity, the start time its own endpoint reports (:meth:`InfluxSink.instance`),
read right after any reconnect, at most every ``RESTART_CHECK_S`` while writing and every
``IDLE_CHECK_S`` while idle, by a task of its own so the lanes never wait for it. When the
identity changed, both lanes go back to where they stood ``resend_window_s`` before the database
was last seen alive and send everything from there again (the urgent lane apart, as always); a
re-sent point overwrites itself, so nothing doubles. Where each cursor stood when is kept in
``sink_history`` (at most one row a second per cursor, and one per rewind; rows older than the
window and a minute are pruned, keeping the one before them) and the identity last seen in
``sink_instances``, both in the store: a gateway that restarts together with the database (one
machine losing power) still notices and re-sends. The new identity is recorded only after both
cursors went back (durably), so a crash in between repeats the rewind. A rewind never goes below
what retention pruned, and eviction only deletes readings above the furthest a cursor has ever
been, so re-sending never evicts or loses anything. A database whose endpoints report no start
time (or refuse the forwarder) is logged once; its crash is not covered.

``forward_backlog`` in ``firegw stats`` counts readings above the lower cursor: while the bulk
lane drains, it includes the urgent readings above it that were already sent.

Run it inside ``firegw run`` (the pipeline creates it when ``influx.url`` is set), or standalone
over a store another process fills: ``python -m gateway.sinks.forwarder [--config FILE]``. Never
both with the same sink name.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import logging
import math
import signal
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from gateway.errors import ConfigError, SinkUnavailable
from gateway.health import Health, Stage
from gateway.profiles.loader import Catalog
from gateway.retry import Backoff, EdgeLog
from gateway.settings import InfluxSettings
from gateway.sinks.influx import InfluxSink, LineEncoder, RejectedLines, Row, sql_line
from gateway.store.sqlite import (
    cursor_high,
    cursor_history,
    prune_cursor_history,
    record_cursor,
    rewind_cursor,
    set_sink_instance,
    sink_instance,
    touch_sink_instance,
)

__all__ = ["Forwarder", "main", "rewind_point"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 10.0
RETRY_AFTER_MAX_S = 300.0
URGENT_POLL_S = 0.25  # the urgent lane looks for work this often even without a wake()
IDLE_CURSOR_EVERY_S = 1.0  # while idle, a cursor follows the head of the store at most this often
EVICT_CHECK_DOWN_S = 2.0  # how often the backlog size is checked while the sink is failing
EVICT_CHECK_UP_S = 30.0  # ... and while it is confirming
EVICT_LOW_WATER = 0.9  # evict down to this share of max_backlog_mb
ROW_OVERHEAD_BYTES = 64  # b-tree cells, record headers and the two index entries' fixed parts
SHUTDOWN_WAIT_S = 15.0  # wait this long for a write in flight when cancelled
RESTART_CHECK_S = 1.0  # while writing, the database's identity is read at most this often (and after a reconnect)
IDLE_CHECK_S = 10.0  # ... and this often while nothing is written
UNKNOWN_RETRY_S = 60.0  # when no endpoint reports an identity, look again this often
HISTORY_EVERY_S = 1.0  # where a cursor stands is remembered at most this often (and at every rewind)
HISTORY_SLACK_S = 60.0  # history kept beyond resend_window_s
HISTORY_PRUNE_EVERY_S = 30.0

_COLUMNS = ", ".join(
    f"r.{c}" for c in ("seq", "device_id", "metric", "ts", "value", "quality", "received_at", "site_id", "urgent")
)
#: One lane's next readings as (seq, device_id, line) with the line built by SQLite (NULL: Python
#: encodes that row from its columns). Three columns, not ten: per-row Python objects are the cost.
_READ_SQL = (
    f"SELECT r.seq, r.device_id, {sql_line('r', 't')} FROM readings r LEFT JOIN temp.fw_tags t "
    "ON t.device_id = r.device_id AND t.metric = r.metric AND t.site_id = r.site_id "
    "WHERE r.urgent = ? AND r.seq > ? ORDER BY r.seq LIMIT ?"
)
_SCHEMA_NEEDED = 6  # v6: sink_history, sink_instances


@dataclass
class _Batch:
    rows: list[tuple[int, str, str | None]] = field(default_factory=list)  # (seq, device_id, line)
    lines: list[str] = field(default_factory=list)
    bad: list[RejectedLines] = field(default_factory=list)  # could not be encoded: dead letters, not sent
    bad_rows: list[tuple[int, str, str | None]] = field(default_factory=list)
    scanned_to: int = 0  # every reading of this lane up to here is in the batch
    head: int = 0  # largest seq in the store at the last read
    born: float = field(default_factory=time.monotonic)

    def __len__(self) -> int:
        return len(self.rows) + len(self.bad_rows)


@dataclass(frozen=True, slots=True)
class _Note:
    """What a confirm also remembers: the cursor's position, and that the database was seen."""

    prune_before_ms: int | None
    identity: str | None
    seen_at_ms: int


@dataclass(frozen=True, slots=True)
class _Plan:
    """One lane's rewind after a restart of the database."""

    target: int
    readings: int  # of this lane, to send again
    complete: bool  # the history reaches back to the cutoff
    since_ms: int | None  # its oldest row


def rewind_point(history: Sequence[tuple[int, int]], cutoff_ms: int, cursor: int, floor: int = 0) -> tuple[int, bool]:
    """Where a cursor goes back to so that everything it confirmed from ``cutoff_ms`` on is sent again.

    ``history``: (at_ms, seq) positions of the cursor, oldest first. Only the newest position at
    or before ``cutoff_ms`` (the anchor) and those after it count. Between two recorded positions
    a cursor only moves forward (every rewind is recorded), so the lowest of them is at or below
    where the cursor stood at ``cutoff_ms``: every reading confirmed since lies above it.

    Returns (seq, complete). ``complete`` is False when the history starts after ``cutoff_ms``
    (its oldest position is used: what was confirmed before it cannot be told). The seq is never
    above ``cursor`` (the furthest the cursor has been) and never below ``floor`` (readings at or
    below it are gone from the store: retention pruned them).
    """
    if not history:
        return cursor, False
    anchor = 0
    for i, (at, _seq) in enumerate(history):
        if at > cutoff_ms:
            break
        anchor = i
    target = min(seq for _at, seq in history[anchor:])
    return min(cursor, max(floor, target)), history[0][0] <= cutoff_ms


@contextlib.contextmanager
def _tx(db: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
    db.execute(f"BEGIN {mode}")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class Forwarder:
    """Forwards committed readings to one InfluxDB sink; see the module docstring.

    ``wake()`` is thread-safe and cheap (the committer calls it after each commit); before
    ``run()`` it does nothing. ``run()`` works until cancelled.
    """

    def __init__(
        self,
        *,
        settings: InfluxSettings,
        catalog: Catalog,
        store_path: Path,
        health: Health,
        name: str = "influx",
        start: Literal["earliest", "latest"] = "earliest",
        sink: InfluxSink | None = None,
        backoff_min_s: float = BACKOFF_MIN_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        if not name or ":" in name:
            raise ConfigError(f"forwarder name {name!r}: must be non-empty, without ':'")
        self.settings = settings
        self.name = name
        self.store_path = Path(store_path)
        self._sink = sink if sink is not None else InfluxSink(settings, name=name)
        self._encoder = LineEncoder(catalog)
        self._tags_version = 0  # bumped by update_catalog; each connection reloads temp.fw_tags when behind
        self._conn_tags: dict[int, int] = {}
        self._start = start
        self._backoff = (backoff_min_s, backoff_max_s)
        self._stage: Stage = health.stage(f"forwarder:{name}", stall_after_s=max(30.0, 3 * settings.timeout_s))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_bulk = asyncio.Event()
        self._wake_urgent = asyncio.Event()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._inflight: set[concurrent.futures.Future[Any]] = set()
        self._up: bool | None = None
        self._down_since = 0.0
        self._evicting = EdgeLog(logger)
        self._evicted_total = 0
        self._cursor = 0  # bulk lane, as committed
        self._urgent_cursor = 0
        self._head = 0
        # surviving the database's own crash (see the module docstring); keys: urgent lane or not
        self._high = {False: 0, True: 0}  # the furthest each cursor has been: eviction stays above it
        self._identity: str | None = None  # the database's identity as recorded in the store
        self._seen_at_ms = 0  # when it was last seen (wall clock, before the probe that saw it)
        self._probe_wake = asyncio.Event()
        self._probe_due = False  # something was written since the last probe
        self._probe_now = True  # probe at once (start, reconnect)
        self._rewinds: dict[bool, int] = {}  # per lane: go back to this seq before anything else
        self._rewound = asyncio.Event()
        self._history_at = {False: -math.inf, True: -math.inf}
        self._pruned_at = {False: -math.inf, True: -math.inf}

    # ------------------------------------------------------------------ public

    def wake(self) -> None:
        """New readings were committed (thread-safe; a no-op before ``run()``)."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed under us: nothing to wake
            loop.call_soon_threadsafe(self._set_wake)

    def update_catalog(self, catalog: Catalog) -> None:
        """Use a reloaded catalog for readings encoded from now on (SIGHUP)."""
        self._encoder = LineEncoder(catalog)
        self._tags_version += 1

    async def run(self) -> None:
        self._wake_bulk = asyncio.Event()
        self._wake_urgent = asyncio.Event()
        self._probe_wake = asyncio.Event()
        self._rewound = asyncio.Event()
        # its own small pool: blocking SQLite and HTTP work stays off the loop, and at shutdown
        # the forwarder waits for exactly its own threads before closing what they use; two
        # threads a lane (a write and the next read), one for the restart watch
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=5, thread_name_prefix=f"firegw-{self.name}")
        dbs: list[sqlite3.Connection] = []
        try:
            for _ in range(3):
                dbs.append(await self._thread(self._connect))
            await self._thread(self._init_cursors, dbs[0])
            self._sink.open()
            self._loop = asyncio.get_running_loop()
            logger.info(
                "%s: forwarding from seq %d (urgent %d) to %s (api %s)",
                self.name,
                self._cursor,
                self._urgent_cursor,
                self.settings.url,
                self.settings.api,
            )
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._lane(self._bulk_lane, dbs[0]), name=f"{self.name}-bulk")
                tg.create_task(self._lane(self._urgent_lane, dbs[1]), name=f"{self.name}-urgent")
                if self.settings.resend_window_s > 0:
                    tg.create_task(self._lane(self._watch, dbs[2]), name=f"{self.name}-restarts")
        finally:
            self._loop = None
            pool, self._pool = self._pool, None
            if self._inflight:  # a thread still writes or reads: let it finish before closing under it
                await asyncio.to_thread(concurrent.futures.wait, list(self._inflight), SHUTDOWN_WAIT_S)
            pool.shutdown(wait=False, cancel_futures=True)
            self._sink.close()
            for db in dbs:
                db.close()
            logger.info("%s: forwarder stopped at seq %d (urgent %d)", self.name, self._cursor, self._urgent_cursor)

    async def _lane(self, body: Callable[[sqlite3.Connection], Awaitable[None]], db: sqlite3.Connection) -> None:
        """Run a lane; a store error (locked past busy_timeout, disk full) is logged and retried, never fatal."""
        backoff = Backoff(BACKOFF_MIN_S, BACKOFF_MAX_S, jitter=0.0)
        while True:
            try:
                await body(db)
            except sqlite3.Error as exc:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                logger.error("%s: store error, retrying from the durable cursor: %s", self.name, exc)
                self._stage.last_error = f"store error: {exc}"
                await asyncio.sleep(backoff.next())

    # ------------------------------------------------------------------ plumbing

    def _set_wake(self) -> None:
        self._wake_bulk.set()
        self._wake_urgent.set()

    async def _thread(self, fn: Callable[..., T], *args: object) -> T:
        """Run blocking work on the forwarder's pool; the thread is tracked until it really ends."""
        if self._pool is None:
            raise RuntimeError("forwarder is not running")
        cf = self._pool.submit(fn, *args)
        self._inflight.add(cf)
        cf.add_done_callback(self._inflight.discard)
        return await asyncio.wrap_future(cf)

    def _connect(self) -> sqlite3.Connection:
        if not self.store_path.exists():
            raise ConfigError(f"{self.store_path}: store.path: no store here (the gateway creates it)")
        try:
            conn = sqlite3.connect(self.store_path, isolation_level=None, check_same_thread=False, timeout=30.0)
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA synchronous=NORMAL")  # a lost cursor update only re-sends (idempotent)
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.Error as exc:
            raise ConfigError(f"{self.store_path}: store.path: cannot open the store: {exc}") from exc
        if row is None or int(row[0]) < _SCHEMA_NEEDED:
            conn.close()
            raise ConfigError(
                f"{self.store_path}: store.path: schema older than v{_SCHEMA_NEEDED}; run firegw once to migrate it"
            )
        return conn

    def _cursor_name(self, urgent: bool) -> str:
        return f"{self.name}:urgent" if urgent else self.name

    def _init_cursors(self, db: sqlite3.Connection) -> None:
        now = int(time.time() * 1000)
        with _tx(db):
            head = db.execute("SELECT coalesce(max(seq), 0) FROM readings").fetchone()[0]
            first = head if self._start == "latest" else 0
            for urgent in (False, True):
                sink = self._cursor_name(urgent)
                if db.execute(
                    "INSERT OR IGNORE INTO sink_cursors (sink, seq, updated_at) VALUES (?, ?, ?)", (sink, first, now)
                ).rowcount:
                    record_cursor(db, sink, 0, first)  # a new cursor: nothing was confirmed before, ever
                seq = int(db.execute("SELECT seq FROM sink_cursors WHERE sink = ?", (sink,)).fetchone()[0])
                record_cursor(db, sink, now, seq)  # where this run starts: an anchor for the next rewind
                self._high[urgent] = cursor_high(db, sink)
                if urgent:
                    self._urgent_cursor = seq
                else:
                    self._cursor = seq
            seen = sink_instance(db, self.name)
        if seen is not None:
            self._identity, self._seen_at_ms = seen
        self._head = int(head)

    # ------------------------------------------------------------------ reading and confirming (threads)

    def _load_tags(self, db: sqlite3.Connection) -> None:
        """(Re)fill this connection's temp table of tag prefixes from the catalog."""
        version = self._tags_version
        encoder = self._encoder
        db.execute(
            "CREATE TEMP TABLE IF NOT EXISTS fw_tags (device_id TEXT NOT NULL, metric TEXT NOT NULL, "
            "site_id TEXT NOT NULL, prefix TEXT NOT NULL, kind INTEGER NOT NULL, "
            "PRIMARY KEY (device_id, metric, site_id)) WITHOUT ROWID"
        )
        with _tx(db, "DEFERRED"):
            db.execute("DELETE FROM temp.fw_tags")
            db.executemany("INSERT OR REPLACE INTO temp.fw_tags VALUES (?,?,?,?,?)", encoder.prefixes())
        self._conn_tags[id(db)] = version

    def _read(self, db: sqlite3.Connection, urgent: int, after: int, limit: int, into: _Batch | None) -> _Batch:
        """Read up to ``limit`` readings of one lane after ``after``, encoded; one snapshot."""
        if self._conn_tags.get(id(db)) != self._tags_version:
            self._load_tags(db)
        batch = into if into is not None else _Batch(scanned_to=after)
        encode = self._encoder.encode
        lines, kept = batch.lines, batch.rows
        db.execute("BEGIN")
        try:
            head = db.execute("SELECT coalesce(max(seq), 0) FROM readings").fetchone()[0]
            rows = db.execute(_READ_SQL, (urgent, after, limit)).fetchall()
            for row in rows:
                line = row[2]
                if line is None:  # not in the catalog, a string, or not a finite number: Python decides
                    full: Row = db.execute(f"SELECT {_COLUMNS} FROM readings r WHERE r.seq = ?", (row[0],)).fetchone()
                    try:
                        line = encode(full)
                    except (ValueError, TypeError) as exc:
                        batch.bad_rows.append(row)
                        batch.bad.append(RejectedLines(-1, repr(full), f"not encodable: {exc}"))
                        continue
                lines.append(line)
                kept.append(row)
        finally:
            db.execute("COMMIT")
        batch.head = max(batch.head, int(head))
        batch.scanned_to = int(rows[-1][0]) if len(rows) == limit else max(after, int(head))
        return batch

    def _confirm(
        self,
        db: sqlite3.Connection,
        cursor_name: str,
        seq: int,
        batch: _Batch,
        rejected: list[RejectedLines],
        note: _Note | None = None,
    ) -> None:
        """Advance a cursor after the sink confirmed; dead-letter what it refused; remember where the
        cursor stands when ``note`` says so. One transaction."""
        now = int(time.time() * 1000)
        dead = [(now, "influx", self.name, batch.rows[r.index][1], r.reason, r.line.encode()) for r in rejected]
        dead += [
            (now, "influx", self.name, row[1], r.reason, r.line.encode())
            for row, r in zip(batch.bad_rows, batch.bad, strict=True)
        ]
        with _tx(db):
            if dead:
                db.executemany(
                    "INSERT INTO dead_letters (at, source, address, device_id, reason, payload) VALUES (?,?,?,?,?,?)",
                    dead,
                )
                db.execute(
                    "INSERT INTO counters VALUES ('forward_rejected', ?) ON CONFLICT(name) DO UPDATE "
                    "SET value = value + excluded.value",
                    (len(dead),),
                )
            db.execute(
                "UPDATE sink_cursors SET seq = ?, updated_at = ? WHERE sink = ? AND seq < ?",
                (seq, now, cursor_name, seq),
            )
            if note is not None:
                record_cursor(db, cursor_name, now, seq)
                if note.prune_before_ms is not None:
                    prune_cursor_history(db, cursor_name, note.prune_before_ms)
                if note.identity is not None:
                    touch_sink_instance(db, self.name, note.identity, note.seen_at_ms)

    def _note(self, urgent: bool) -> _Note | None:
        """Whether this confirm also records the cursor's position (at most every HISTORY_EVERY_S)."""
        now = time.monotonic()
        if now - self._history_at[urgent] < HISTORY_EVERY_S:
            return None
        self._history_at[urgent] = now
        prune = None
        if now - self._pruned_at[urgent] >= HISTORY_PRUNE_EVERY_S:
            self._pruned_at[urgent] = now
            # any later rewind starts from at least resend_window_s before the database was last seen
            base = self._seen_at_ms if self._identity is not None else int(time.time() * 1000)
            prune = base - int((self.settings.resend_window_s + HISTORY_SLACK_S) * 1000)
        return _Note(prune, self._identity, self._seen_at_ms)

    def _rewind(self, db: sqlite3.Connection, cursor_name: str, seq: int) -> int:
        with _tx(db):
            return rewind_cursor(db, cursor_name, seq, int(time.time() * 1000))

    def _plan_rewind(self, db: sqlite3.Connection, cutoff_ms: int) -> dict[bool, _Plan]:
        """Each lane's rewind so that what it confirmed from ``cutoff_ms`` on is sent again."""
        plans: dict[bool, _Plan] = {}
        with _tx(db, "DEFERRED"):
            low = db.execute("SELECT min(seq) FROM readings").fetchone()[0]
            for urgent in (False, True):
                name = self._cursor_name(urgent)
                high = max(self._high[urgent], cursor_high(db, name))
                history = cursor_history(db, name, cutoff_ms)
                target, complete = rewind_point(history, cutoff_ms, high, high if low is None else int(low) - 1)
                n = db.execute(
                    "SELECT count(*) FROM readings WHERE urgent = ? AND seq > ? AND seq <= ?",
                    (int(urgent), target, high),
                ).fetchone()[0]
                plans[urgent] = _Plan(target, int(n), complete, history[0][0] if history else None)
        return plans

    def _save_instance(self, db: sqlite3.Connection, identity: str, seen_at_ms: int) -> None:
        with _tx(db):
            set_sink_instance(db, self.name, identity, seen_at_ms)

    def _evict(self, db: sqlite3.Connection, protect_upto: int) -> tuple[int, float]:
        """Evict the oldest unforwarded bulk readings above ``protect_upto`` while over the bound.

        Returns (evicted, backlog MB estimated before evicting).
        """
        limit = self.settings.max_backlog_mb * 1024 * 1024
        # never below the furthest a cursor has been: readings being re-sent after the database's
        # own crash are not a backlog to evict
        bulk_high = max(self._cursor, self._high[False])
        lower = min(bulk_high, max(self._urgent_cursor, self._high[True]))
        count = db.execute("SELECT count(*) FROM readings WHERE seq > ?", (lower,)).fetchone()[0]
        if not count:
            return 0, 0.0
        avg = db.execute(
            "SELECT avg(2 * length(device_id) + 2 * length(metric) + length(unit) + length(quality) "
            "+ length(site_id) + CASE typeof(value) WHEN 'text' THEN length(value) WHEN 'blob' THEN length(value) "
            "ELSE 8 END) FROM (SELECT * FROM readings ORDER BY seq DESC LIMIT 1000)"
        ).fetchone()[0]
        row_bytes = float(avg or 0.0) + ROW_OVERHEAD_BYTES
        size = count * row_bytes
        if size <= limit:
            return 0, size / 1_048_576
        excess = count - int(limit * EVICT_LOW_WATER / row_bytes)
        with _tx(db):
            # never the newest row of the table: seq is a rowid, and deleting the largest would let
            # the committer reuse its number below a cursor
            n = db.execute(
                "DELETE FROM readings WHERE seq IN (SELECT seq FROM readings WHERE urgent = 0 AND seq > ? "
                "AND seq < (SELECT max(seq) FROM readings) ORDER BY seq LIMIT ?)",
                (max(protect_upto, bulk_high), excess),
            ).rowcount
            if n:
                db.execute(
                    "INSERT INTO counters VALUES ('evicted', ?) ON CONFLICT(name) DO UPDATE "
                    "SET value = value + excluded.value",
                    (n,),
                )
        return n, size / 1_048_576

    # ------------------------------------------------------------------ health

    def _new_backoff(self) -> Backoff:
        """A write's or a probe's backoff: capped, jittered, ``Retry-After`` honoured up to RETRY_AFTER_MAX_S."""
        return Backoff(*self._backoff, retry_after_max_s=RETRY_AFTER_MAX_S)

    def _failed(self, exc: SinkUnavailable) -> None:
        if self._up is not False:
            self._down_since = time.monotonic()
            self._stage.set_connected(False, str(exc))  # logs the transition
            self._stage.count("outages")
        self._up = False
        self._stage.last_error = str(exc)
        logger.debug("%s: write failed: %s", self.name, exc)

    def _confirmed(self) -> None:
        if self._up is not True:
            if self._up is False:
                logger.info(
                    "%s: sink back after %.1f s; backlog %d readings",
                    self.name,
                    time.monotonic() - self._down_since,
                    max(0, self._head - self._cursor),
                )
            self._stage.set_connected(True)
        self._up = True

    async def _maybe_evict(self, db: sqlite3.Connection, protect_upto: int) -> None:
        n, mb = await self._thread(self._evict, db, protect_upto)
        if n:
            self._evicted_total += n
            self._stage.count("evicted", n)
            self._evicting.failed(
                "%s: backlog %.1f MB is over influx.max_backlog_mb %.1f: evicting the oldest bulk "
                "readings (urgent ones are kept)",
                self.name,
                mb,
                self.settings.max_backlog_mb,
            )
            logger.debug("%s: evicted %d bulk readings", self.name, n)
        else:
            self._evicting.recovered(
                "%s: backlog %.1f MB is under the bound again; %d bulk readings evicted so far",
                self.name,
                mb,
                self._evicted_total,
            )

    # ------------------------------------------------------------------ the database's own restarts

    def _wrote(self, reconnected: bool) -> None:
        """A write was confirmed: the watch reads the database's identity soon (at once after a reconnect)."""
        if reconnected:
            self._probe_now = True
            self._probe_wake.set()
        elif not self._probe_due:
            self._probe_due = True
            self._probe_wake.set()

    async def _watch(self, db: sqlite3.Connection) -> None:
        """Read the database's identity when there is a reason to; a new one means it restarted."""
        last = -math.inf
        pause = 0.0  # with no write to look after, the next probe comes this long after the last
        failing = self._new_backoff()
        known: bool | None = None  # does an endpoint report an identity?
        blind = EdgeLog(logger)  # ... logged when none does, and when one does again
        while True:
            while not self._probe_now:
                due = last + pause
                if self._probe_due and known is not False:
                    due = min(due, last + RESTART_CHECK_S)
                wait = due - time.monotonic()
                if wait <= 0:
                    break
                self._probe_wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._probe_wake.wait(), wait)
            self._probe_now = self._probe_due = False
            last = time.monotonic()
            asked_at = int(time.time() * 1000)  # it was alive no earlier than this
            try:
                inst = await self._thread(self._sink.instance)
            except SinkUnavailable as exc:  # the lanes see the outage too; a reconnect probes at once
                logger.debug("%s: identity probe failed: %s", self.name, exc)
                pause = failing.next(exc.retry_after)
                continue
            failing.reset()
            if inst.identity is None:
                if blind.failed(
                    "%s: cannot tell when the database restarts (%s): readings it acknowledged shortly "
                    "before a crash of its own would not be re-sent",
                    self.name,
                    inst.detail,
                ):
                    self._stage.last_error = f"database restarts not detectable: {inst.detail}"
                known, pause = False, UNKNOWN_RETRY_S
                continue
            blind.recovered("%s: database restarts detectable again (%s)", self.name, inst.identity)
            known, pause = True, IDLE_CHECK_S
            if self._identity is None:
                await self._thread(self._save_instance, db, inst.identity, asked_at)
                logger.info("%s: database identity %s (a new one means it restarted)", self.name, inst.identity)
            elif inst.identity != self._identity:
                await self._restarted(db, inst.identity, asked_at)
            self._identity, self._seen_at_ms = inst.identity, asked_at

    async def _restarted(self, db: sqlite3.Connection, identity: str, seen_at_ms: int) -> None:
        """The database restarted: both lanes go back ``resend_window_s`` before it was last seen
        alive; the new identity is recorded once both cursors went back."""
        window = self.settings.resend_window_s
        plans = await self._thread(self._plan_rewind, db, self._seen_at_ms - int(window * 1000))
        n = sum(p.readings for p in plans.values())
        short = ""
        oldest = [p.since_ms for p in plans.values() if not p.complete and p.since_ms is not None]
        if oldest:
            short = (
                f" (its history reaches back only {max(0.0, (self._seen_at_ms - min(oldest)) / 1000):.0f} s "
                "before it was last seen)"
            )
        logger.warning(
            "%s: database restarted (%s, was %s), re-sending %d readings from the last %g s%s",
            self.name,
            identity,
            self._identity,
            n,
            window,
            short,
        )
        self._stage.count("database_restarts")
        self._stage.count("resent", n)
        self._rewinds = {urgent: p.target for urgent, p in plans.items()}
        self._rewound.clear()
        self._set_wake()
        await self._rewound.wait()
        await self._thread(self._save_instance, db, identity, seen_at_ms)

    # ------------------------------------------------------------------ lanes

    async def _send(
        self, batch: _Batch, backoff: Backoff, on_wait: Callable[[], Awaitable[None]] | None
    ) -> list[RejectedLines]:
        """Write one batch until the sink confirms; returns what it rejected."""
        while True:
            try:
                rejected = await self._thread(self._sink.write, batch.lines)
            except SinkUnavailable as exc:
                self._failed(exc)
                delay = backoff.next(exc.retry_after)
                deadline = time.monotonic() + delay
                while (left := deadline - time.monotonic()) > 0:
                    await asyncio.sleep(min(left, EVICT_CHECK_DOWN_S))
                    if on_wait is not None:
                        await on_wait()
                continue
            backoff.reset()
            reconnected = self._up is False
            self._confirmed()
            self._wrote(reconnected)
            return rejected

    async def _bulk_lane(self, db: sqlite3.Connection) -> None:
        await self._run_lane(db, urgent=False)

    async def _urgent_lane(self, db: sqlite3.Connection) -> None:
        await self._run_lane(db, urgent=True)

    async def _run_lane(self, db: sqlite3.Connection, *, urgent: bool) -> None:
        """One lane: read after its cursor, ship, confirm, advance. The bulk lane lets a partial batch
        wait up to ``flush_interval_s`` and polices the disk bound; the urgent lane never waits."""
        s = self.settings
        flag = 1 if urgent else 0
        cursor_name = self._cursor_name(urgent)
        wake = self._wake_urgent if urgent else self._wake_bulk
        idle_wait = URGENT_POLL_S if urgent else s.flush_interval_s
        flush_wait = 0.0 if urgent else s.flush_interval_s
        backoff = self._new_backoff()
        next_evict = time.monotonic() + EVICT_CHECK_UP_S
        next_down_evict = 0.0
        last_idle_commit = 0.0
        batch: _Batch | None = None

        def cursor() -> int:
            return self._urgent_cursor if urgent else self._cursor

        def advance(seq: int) -> None:
            if urgent:
                self._urgent_cursor = seq
            else:
                self._cursor = seq
            self._high[urgent] = max(self._high[urgent], seq)

        while True:
            if urgent in self._rewinds:  # the database restarted: back to where it may have lost readings
                batch = None  # read again from there (a prefetched batch lies above)
                advance(await self._thread(self._rewind, db, cursor_name, self._rewinds.pop(urgent)))
                self._history_at[urgent] = time.monotonic()
                if not self._rewinds:
                    self._rewound.set()
            if not urgent and time.monotonic() >= next_evict:
                await self._maybe_evict(db, batch.scanned_to if batch is not None else self._cursor)
                next_evict = time.monotonic() + EVICT_CHECK_UP_S
            wake.clear()
            if batch is None:
                batch = await self._thread(self._read, db, flag, cursor(), s.batch_size, None)
            elif len(batch) < s.batch_size:
                batch = await self._thread(self._read, db, flag, batch.scanned_to, s.batch_size - len(batch), batch)
            self._head = max(self._head, batch.head)
            if not len(batch):
                if batch.scanned_to > cursor() and time.monotonic() - last_idle_commit >= IDLE_CURSOR_EVERY_S:
                    await self._thread(self._confirm, db, cursor_name, batch.scanned_to, batch, [], self._note(urgent))
                    advance(batch.scanned_to)
                    last_idle_commit = time.monotonic()
                    if not urgent:
                        self._stage.beat(0)
                batch = None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), idle_wait)
                continue
            full = len(batch) >= s.batch_size
            age = time.monotonic() - batch.born
            if not full and age < flush_wait:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), flush_wait - age)
                continue
            # ship it; while it is in flight, read and encode the next one (a backlog is likely)
            prefetch: asyncio.Future[_Batch] | None = None
            if full:
                prefetch = asyncio.ensure_future(
                    self._thread(self._read, db, flag, batch.scanned_to, s.batch_size, None)
                )
            protect = batch.scanned_to  # the batch in flight is never evicted

            async def while_down(protect: int = protect) -> None:
                nonlocal next_down_evict, prefetch
                if prefetch is not None:  # its rows may be evicted meanwhile, and it holds the connection
                    with contextlib.suppress(Exception):
                        await prefetch
                    prefetch = None
                if not urgent and time.monotonic() >= next_down_evict:
                    next_down_evict = time.monotonic() + EVICT_CHECK_DOWN_S
                    await self._maybe_evict(db, protect)

            try:
                rejected = await self._send(batch, backoff, while_down) if batch.lines else []
                nxt = await prefetch if prefetch is not None else None
            except BaseException:
                if prefetch is not None:
                    prefetch.cancel()
                raise
            await self._thread(self._confirm, db, cursor_name, batch.scanned_to, batch, rejected, self._note(urgent))
            advance(batch.scanned_to)
            if rejected or batch.bad:
                self._stage.count("rejected", len(rejected) + len(batch.bad))
                logger.warning(
                    "%s: %d %sreadings rejected by the database, dead-lettered (first: %s)",
                    self.name,
                    len(rejected) + len(batch.bad),
                    "urgent " if urgent else "",
                    (rejected or batch.bad)[0].reason,
                )
            self._stage.count("urgent_forwarded" if urgent else "forwarded", len(batch.lines) - len(rejected))
            self._head = max(self._head, batch.head)
            if not urgent:
                self._stage.beat(max(0, self._head - self._cursor))
            batch = nxt


# ---------------------------------------------------------------------------- standalone


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.sinks.forwarder [--config FILE]``: forward a store another process fills."""
    from gateway.logs import setup_logging
    from gateway.profiles.loader import load_catalog
    from gateway.settings import load_settings

    ap = argparse.ArgumentParser(prog="python -m gateway.sinks.forwarder", description=main.__doc__)
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument(
        "--start",
        choices=["earliest", "latest"],
        default="earliest",
        help="where a sink seen for the first time starts",
    )
    args = ap.parse_args(argv)
    try:
        settings = load_settings(args.config)
        setup_logging(settings.log_level)  # credentials redacted; httpx's line per request held back
        catalog = load_catalog(settings.profiles_dir, settings.inventory)
        fwd = Forwarder(
            settings=settings.influx, catalog=catalog, store_path=settings.store.path, health=Health(), start=args.start
        )
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)  # noqa: T201
        return 2

    async def run() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            if task is not None:
                loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await fwd.run()

    try:
        asyncio.run(run())
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)  # noqa: T201
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
