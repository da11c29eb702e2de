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
import random
import signal
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from gateway.errors import ConfigError, SinkUnavailable
from gateway.health import Health, Stage
from gateway.profiles.loader import Catalog
from gateway.settings import InfluxSettings
from gateway.sinks.influx import InfluxSink, LineEncoder, Rejected, Row, sql_line

__all__ = ["Forwarder", "main"]

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

_COLUMNS = ", ".join(f"r.{c}" for c in ("seq", "device_id", "metric", "ts", "value", "quality", "received_at",
                                          "site_id", "urgent"))
#: One lane's next readings as (seq, device_id, line) with the line built by SQLite (NULL: Python
#: encodes that row from its columns). Three columns, not ten: per-row Python objects are the cost.
_READ_SQL = (f"SELECT r.seq, r.device_id, {sql_line('r', 't')} FROM readings r LEFT JOIN temp.fw_tags t "
             "ON t.device_id = r.device_id AND t.metric = r.metric AND t.site_id = r.site_id "
             "WHERE r.urgent = ? AND r.seq > ? ORDER BY r.seq LIMIT ?")
_SCHEMA_NEEDED = 3


@dataclass
class _Batch:
    rows: list[tuple[int, str, str | None]] = field(default_factory=list)  # (seq, device_id, line)
    lines: list[str] = field(default_factory=list)
    bad: list[Rejected] = field(default_factory=list)  # could not be encoded: dead letters, not sent
    bad_rows: list[tuple[int, str, str | None]] = field(default_factory=list)
    scanned_to: int = 0  # every reading of this lane up to here is in the batch
    head: int = 0  # largest seq in the store at the last read
    born: float = field(default_factory=time.monotonic)

    def __len__(self) -> int:
        return len(self.rows) + len(self.bad_rows)


class _Backoff:
    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi, self.n = lo, hi, 0

    def next(self, retry_after: float | None) -> float:
        base = min(self.hi, self.lo * (2 ** min(self.n, 30)))
        self.n += 1
        delay = random.uniform(base / 2, base)
        if retry_after is not None:
            delay = max(delay, min(retry_after, RETRY_AFTER_MAX_S))
        return delay

    def reset(self) -> None:
        self.n = 0


class Forwarder:
    """Forwards committed readings to one InfluxDB sink; see the module docstring.

    ``wake()`` is thread-safe and cheap (the committer calls it after each commit); before
    ``run()`` it does nothing. ``run()`` works until cancelled.
    """

    def __init__(self, *, settings: InfluxSettings, catalog: Catalog, store_path: Path, health: Health,
                 name: str = "influx", start: Literal["earliest", "latest"] = "earliest",
                 sink: InfluxSink | None = None, backoff_min_s: float = BACKOFF_MIN_S,
                 backoff_max_s: float = BACKOFF_MAX_S) -> None:
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
        self._evicting = False
        self._evicted_total = 0
        self._cursor = 0  # bulk lane, as committed
        self._urgent_cursor = 0
        self._head = 0

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
        # its own small pool: blocking SQLite and HTTP work stays off the loop, and at shutdown
        # the forwarder waits for exactly its own threads before closing what they use
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"firegw-{self.name}")
        dbs: list[sqlite3.Connection] = []
        try:
            dbs.append(await self._thread(self._connect))
            dbs.append(await self._thread(self._connect))
            await self._thread(self._init_cursors, dbs[0])
            self._sink.open()
            self._loop = asyncio.get_running_loop()
            logger.info("%s: forwarding from seq %d (urgent %d) to %s (api %s)", self.name, self._cursor,
                        self._urgent_cursor, self.settings.url, self.settings.api)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._lane(self._bulk_lane, dbs[0]), name=f"{self.name}-bulk")
                tg.create_task(self._lane(self._urgent_lane, dbs[1]), name=f"{self.name}-urgent")
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
        delay = BACKOFF_MIN_S
        while True:
            try:
                await body(db)
            except sqlite3.Error as exc:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                logger.error("%s: store error, retrying from the durable cursor: %s", self.name, exc)
                self._stage.last_error = f"store error: {exc}"
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)

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
            raise ConfigError(f"{self.store_path}: store.path: schema older than v{_SCHEMA_NEEDED}; "
                              "run firegw once to migrate it")
        return conn

    def _init_cursors(self, db: sqlite3.Connection) -> None:
        now = int(time.time() * 1000)
        db.execute("BEGIN IMMEDIATE")
        try:
            head = db.execute("SELECT coalesce(max(seq), 0) FROM readings").fetchone()[0]
            first = head if self._start == "latest" else 0
            for sink in (self.name, f"{self.name}:urgent"):
                db.execute("INSERT OR IGNORE INTO sink_cursors (sink, seq, updated_at) VALUES (?, ?, ?)",
                           (sink, first, now))
            cur = dict(db.execute("SELECT sink, seq FROM sink_cursors WHERE sink IN (?, ?)",
                                  (self.name, f"{self.name}:urgent")).fetchall())
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._cursor = int(cur[self.name])
        self._urgent_cursor = int(cur[f"{self.name}:urgent"])
        self._head = int(head)

    # ------------------------------------------------------------------ reading and confirming (threads)

    def _load_tags(self, db: sqlite3.Connection) -> None:
        """(Re)fill this connection's temp table of tag prefixes from the catalog."""
        version = self._tags_version
        encoder = self._encoder
        db.execute("CREATE TEMP TABLE IF NOT EXISTS fw_tags (device_id TEXT NOT NULL, metric TEXT NOT NULL, "
                   "site_id TEXT NOT NULL, prefix TEXT NOT NULL, kind INTEGER NOT NULL, "
                   "PRIMARY KEY (device_id, metric, site_id)) WITHOUT ROWID")
        db.execute("BEGIN")
        try:
            db.execute("DELETE FROM temp.fw_tags")
            db.executemany("INSERT OR REPLACE INTO temp.fw_tags VALUES (?,?,?,?,?)", encoder.prefixes())
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
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
                    full: Row = db.execute(f"SELECT {_COLUMNS} FROM readings r WHERE r.seq = ?",
                                           (row[0],)).fetchone()
                    try:
                        line = encode(full)
                    except (ValueError, TypeError) as exc:
                        batch.bad_rows.append(row)
                        batch.bad.append(Rejected(-1, repr(full), f"not encodable: {exc}"))
                        continue
                lines.append(line)
                kept.append(row)
        finally:
            db.execute("COMMIT")
        batch.head = max(batch.head, int(head))
        batch.scanned_to = int(rows[-1][0]) if len(rows) == limit else max(after, int(head))
        return batch

    def _confirm(self, db: sqlite3.Connection, cursor_name: str, seq: int, batch: _Batch,
                 rejected: list[Rejected]) -> None:
        """Advance a cursor after the sink confirmed; dead-letter what it refused. One transaction."""
        now = int(time.time() * 1000)
        dead = [(now, "influx", self.name, batch.rows[r.index][1], r.reason, r.line.encode()) for r in rejected]
        dead += [(now, "influx", self.name, row[1], r.reason, r.line.encode())
                 for row, r in zip(batch.bad_rows, batch.bad, strict=True)]
        db.execute("BEGIN IMMEDIATE")
        try:
            if dead:
                db.executemany("INSERT INTO dead_letters (at, source, address, device_id, reason, payload) "
                               "VALUES (?,?,?,?,?,?)", dead)
                db.execute("INSERT INTO counters VALUES ('forward_rejected', ?) ON CONFLICT(name) DO UPDATE "
                           "SET value = value + excluded.value", (len(dead),))
            db.execute("UPDATE sink_cursors SET seq = ?, updated_at = ? WHERE sink = ? AND seq < ?",
                       (seq, now, cursor_name, seq))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _evict(self, db: sqlite3.Connection, protect_upto: int) -> tuple[int, float]:
        """Evict the oldest unforwarded bulk readings above ``protect_upto`` while over the bound.

        Returns (evicted, backlog MB estimated before evicting).
        """
        limit = self.settings.max_backlog_mb * 1024 * 1024
        lower = min(self._cursor, self._urgent_cursor)
        count = db.execute("SELECT count(*) FROM readings WHERE seq > ?", (lower,)).fetchone()[0]
        if not count:
            return 0, 0.0
        avg = db.execute(
            "SELECT avg(2 * length(device_id) + 2 * length(metric) + length(unit) + length(quality) "
            "+ length(site_id) + CASE typeof(value) WHEN 'text' THEN length(value) WHEN 'blob' THEN length(value) "
            "ELSE 8 END) FROM (SELECT * FROM readings ORDER BY seq DESC LIMIT 1000)").fetchone()[0]
        row_bytes = float(avg or 0.0) + ROW_OVERHEAD_BYTES
        size = count * row_bytes
        if size <= limit:
            return 0, size / 1_048_576
        excess = count - int(limit * EVICT_LOW_WATER / row_bytes)
        db.execute("BEGIN IMMEDIATE")
        try:
            # never the newest row of the table: seq is a rowid, and deleting the largest would let
            # the committer reuse its number below a cursor
            n = db.execute(
                "DELETE FROM readings WHERE seq IN (SELECT seq FROM readings WHERE urgent = 0 AND seq > ? "
                "AND seq < (SELECT max(seq) FROM readings) ORDER BY seq LIMIT ?)",
                (max(protect_upto, self._cursor), excess)).rowcount
            if n:
                db.execute("INSERT INTO counters VALUES ('evicted', ?) ON CONFLICT(name) DO UPDATE "
                           "SET value = value + excluded.value", (n,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return n, size / 1_048_576

    # ------------------------------------------------------------------ health

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
                logger.info("%s: sink back after %.1f s; backlog %d readings", self.name,
                            time.monotonic() - self._down_since, max(0, self._head - self._cursor))
            self._stage.set_connected(True)
        self._up = True

    async def _maybe_evict(self, db: sqlite3.Connection, protect_upto: int) -> None:
        n, mb = await self._thread(self._evict, db, protect_upto)
        if n:
            self._evicted_total += n
            self._stage.count("evicted", n)
            if not self._evicting:
                logger.warning("%s: backlog %.1f MB is over influx.max_backlog_mb %.1f: evicting the oldest bulk "
                               "readings (urgent ones are kept)", self.name, mb, self.settings.max_backlog_mb)
            logger.debug("%s: evicted %d bulk readings", self.name, n)
            self._evicting = True
        elif self._evicting:
            logger.info("%s: backlog %.1f MB is under the bound again; %d bulk readings evicted so far",
                        self.name, mb, self._evicted_total)
            self._evicting = False

    # ------------------------------------------------------------------ lanes

    async def _send(self, batch: _Batch, backoff: _Backoff,
                    on_wait: Callable[[], Awaitable[None]] | None) -> list[Rejected]:
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
            self._confirmed()
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
        cursor_name = f"{self.name}:urgent" if urgent else self.name
        wake = self._wake_urgent if urgent else self._wake_bulk
        idle_wait = URGENT_POLL_S if urgent else s.flush_interval_s
        flush_wait = 0.0 if urgent else s.flush_interval_s
        backoff = _Backoff(*self._backoff)
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

        while True:
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
                    await self._thread(self._confirm, db, cursor_name, batch.scanned_to, batch, [])
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
                prefetch = asyncio.ensure_future(self._thread(self._read, db, flag, batch.scanned_to, s.batch_size,
                                                              None))
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
            await self._thread(self._confirm, db, cursor_name, batch.scanned_to, batch, rejected)
            advance(batch.scanned_to)
            if rejected or batch.bad:
                self._stage.count("rejected", len(rejected) + len(batch.bad))
                logger.warning("%s: %d %sreadings rejected by the database, dead-lettered (first: %s)", self.name,
                               len(rejected) + len(batch.bad), "urgent " if urgent else "",
                               (rejected or batch.bad)[0].reason)
            self._stage.count("urgent_forwarded" if urgent else "forwarded", len(batch.lines) - len(rejected))
            self._head = max(self._head, batch.head)
            if not urgent:
                self._stage.beat(max(0, self._head - self._cursor))
            batch = nxt


# ---------------------------------------------------------------------------- standalone


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.sinks.forwarder [--config FILE]``: forward a store another process fills."""
    from gateway.profiles.loader import load_catalog
    from gateway.settings import load_settings

    ap = argparse.ArgumentParser(prog="python -m gateway.sinks.forwarder", description=main.__doc__)
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--start", choices=["earliest", "latest"], default="earliest",
                    help="where a sink seen for the first time starts")
    args = ap.parse_args(argv)
    try:
        settings = load_settings(args.config)
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        catalog = load_catalog(settings.profiles_dir, settings.inventory)
        fwd = Forwarder(settings=settings.influx, catalog=catalog, store_path=settings.store.path, health=Health(),
                        start=args.start)
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

