"""The embedded store: SQLite in WAL mode (design.md §2, §4).

One :class:`Store` per connection. The committer thread owns the only writing connection; the CLI
and the API open their own connections for reading (WAL lets readers run beside the writer).
Everything a batch produced is written inside one transaction (:meth:`Store.transaction`), so a
message is acknowledged to its source only once all its effects are on disk.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.errors import ConfigError
from gateway.models import DeadLetter, Reading, Value
from gateway.sources.base import DeviceStatusChange
from gateway.store.schema import MIGRATIONS, SCHEMA_VERSION

__all__ = ["DEAD_LETTER_KEEP_BYTES", "Store", "StoredReading"]

#: A dead letter keeps at most this much of its payload (with the real size and a digest).
DEAD_LETTER_KEEP_BYTES = 4096
#: The WAL file is truncated to this when it is reset after a checkpoint.
WAL_KEEP_BYTES = 16 * 1_048_576

logger = logging.getLogger(__name__)

Synchronous = Literal["normal", "full"]


@dataclass(frozen=True, slots=True)
class StoredReading:
    seq: int
    site_id: str
    device_id: str
    metric: str
    value: Value
    unit: str
    ts_ms: int
    received_at_ms: int
    quality: str
    urgent: bool


def _private(path: Path) -> None:
    """The store holds who acted on what and the raw payloads: only its owner may read it. SQLite gives
    the WAL and shared-memory files the database file's mode."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if p.exists() and p.stat().st_mode & 0o077:
                os.chmod(p, 0o600)
    except OSError as exc:  # a read-only folder: opening the store says what is wrong
        logger.debug("store %s: cannot restrict permissions: %s", path, exc)


class Store:
    """A connection to the embedded store."""

    def __init__(self, path: Path | str, *, synchronous: Synchronous = "full", readonly: bool = False) -> None:
        self.path = Path(path)
        self._synchronous = synchronous
        self._readonly = readonly
        self._conn: sqlite3.Connection | None = None
        self._manual_checkpoints = False

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> Store:
        if self._readonly and not self.path.exists():
            raise ConfigError(f"{self.path}: store.path: no store here (has the gateway run?)")
        if not self._readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _private(self.path)
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA cache_size=-65536")  # 64 MiB: the hot b-trees stay in memory
            conn.execute("PRAGMA mmap_size=268435456")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA journal_size_limit={WAL_KEEP_BYTES}")  # a reset WAL shrinks to this
            if self._manual_checkpoints:
                conn.execute("PRAGMA wal_autocheckpoint=0")
        except sqlite3.Error as exc:
            raise ConfigError(f"{self.path}: store.path: cannot open the store: {exc}") from exc
        self._conn = conn
        if not self._readonly:
            try:
                self._migrate()
            except BaseException:
                self._conn = None
                conn.close()
                raise
        return self

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def reopen(self) -> None:
        """A fresh connection (after a write failed: SQLite opens a file it may not write read-only
        without a word and keeps it so, even once the file is writable again). The old connection
        stays in use when a new one cannot be opened."""
        old = self._conn
        self._conn = None
        try:
            self.open()
        except BaseException:
            if self._conn is not None:
                self._conn.close()
            self._conn = old
            raise
        if old is not None:
            old.close()

    def manual_checkpoints(self) -> None:
        """This connection never checkpoints the WAL itself (the committer's checkpointer does, apart);
        kept across :meth:`reopen`."""
        self._manual_checkpoints = True
        self.conn.execute("PRAGMA wal_autocheckpoint=0")

    def __enter__(self) -> Store:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("store is not open")
        return self._conn

    def _migrate(self) -> None:
        conn = self.conn
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone() is None:
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"{self.path}: store.path: schema version {version} is newer than this "
                f"firegw ({SCHEMA_VERSION}); upgrade firegw"
            )
        for v in range(version, SCHEMA_VERSION):
            script = MIGRATIONS[v]
            if v == 0:
                script = script.replace("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);", "")
            try:
                conn.executescript(
                    f"BEGIN IMMEDIATE;\n{script}\n"
                    f"INSERT OR REPLACE INTO meta VALUES ('schema_version', '{v + 1}');\nCOMMIT;"
                )
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            logger.info("store %s: schema migrated to version %d", self.path, v + 1)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # ------------------------------------------------------------------ writes (inside a transaction)

    def recent_message_ids(self, limit: int) -> list[bytes]:
        """The newest ``limit`` message ids, oldest first (the committer's redelivery window)."""
        rows = self.conn.execute(
            "SELECT hash FROM message_log WHERE rowid > "
            "coalesce((SELECT max(rowid) FROM message_log), 0) - ? ORDER BY rowid",
            (limit,),
        ).fetchall()
        return [bytes(r[0]) for r in rows]

    def record_messages(self, rows: Sequence[tuple[bytes, int, int]]) -> None:
        """Append message ids (hash, received_at_ms, dead)."""
        if rows:
            self.conn.executemany("INSERT INTO message_log VALUES (?, ?, ?)", rows)

    def insert_readings(self, readings: Sequence[Reading]) -> int:
        """Insert readings idempotently; returns how many were new."""
        if not readings:
            return 0
        cur = self.conn.executemany(
            "INSERT OR IGNORE INTO readings (device_id, metric, ts, value, unit, quality, received_at, site_id,"
            " urgent) VALUES (?,?,?,?,?,?,?,?,?)",
            [
                (
                    r.device_id,
                    r.metric,
                    r.ts_ms,
                    r.value,
                    r.unit,
                    r.quality.value,
                    r.received_at_ms,
                    r.site_id,
                    1 if r.urgent else 0,
                )
                for r in readings
            ],
        )
        return cur.rowcount

    def update_state(self, readings: Sequence[Reading], seen: dict[str, tuple[str, int]]) -> None:
        """Latest value per (device, metric) and last seen per device (``seen``: device → (site, ms))."""
        if readings:
            last: dict[tuple[str, str], Reading] = {}
            for r in readings:
                prev = last.get((r.device_id, r.metric))
                if prev is None or r.ts_ms >= prev.ts_ms:
                    last[(r.device_id, r.metric)] = r
            self.conn.executemany(
                "INSERT INTO latest VALUES (?,?,?,?,?,?) ON CONFLICT(device_id, metric) DO UPDATE SET "
                "value=excluded.value, unit=excluded.unit, ts=excluded.ts, quality=excluded.quality "
                "WHERE excluded.ts >= latest.ts",
                [(r.device_id, r.metric, r.value, r.unit, r.ts_ms, r.quality.value) for r in last.values()],
            )
        if seen:
            self.conn.executemany(
                "INSERT INTO devices (device_id, site_id, first_seen, last_seen) VALUES (?,?,?,?) "
                "ON CONFLICT(device_id) DO UPDATE SET last_seen=max(last_seen, excluded.last_seen), "
                "site_id=excluded.site_id",
                [(dev, site, ms, ms) for dev, (site, ms) in seen.items()],
            )

    def set_status(self, changes: Iterable[DeviceStatusChange], sites: dict[str, str]) -> None:
        """Reachability (online / unreachable); point readability goes to the rules only (a hazard)."""
        for ch in changes:
            if ch.status not in ("online", "unreachable"):
                continue
            self.conn.execute(
                "INSERT INTO devices (device_id, site_id, first_seen, last_seen, status, status_since, "
                "status_reason, link) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(device_id) DO UPDATE SET "
                "status=excluded.status, status_since=excluded.status_since, "
                "status_reason=excluded.status_reason, link=excluded.link",
                (
                    ch.device_id,
                    sites.get(ch.device_id, ""),
                    ch.at_ms,
                    ch.at_ms if ch.status == "online" else 0,
                    ch.status,
                    ch.at_ms,
                    ch.reason,
                    ch.link,
                ),
            )

    def insert_dead(self, dead: Sequence[DeadLetter]) -> None:
        """Dead letters keep the first :data:`DEAD_LETTER_KEEP_BYTES` of a payload, its real size and
        its SHA-256: enough to see what was wrong, never a disk filled by junk."""
        if dead:
            self.conn.executemany(
                "INSERT INTO dead_letters (at, source, address, device_id, reason, payload, size, digest) "
                "VALUES (?,?,?,?,?,?,?,?)",
                [
                    (
                        d.received_at_ms,
                        d.source[:100],
                        d.address[:DEAD_LETTER_KEEP_BYTES],
                        d.device_id,
                        d.reason[:1000],
                        d.payload[:DEAD_LETTER_KEEP_BYTES],
                        d.size if d.size is not None else len(d.payload),
                        hashlib.sha256(d.payload).hexdigest() if d.size is None else None,
                    )
                    for d in dead
                ],
            )

    def retained_taken(self, topics: Iterable[str]) -> dict[str, bytes]:
        """The id of the retained message last taken on each of ``topics``."""
        out: dict[str, bytes] = {}
        for topic in set(topics):
            row = self.conn.execute("SELECT hash FROM retained WHERE topic = ?", (topic,)).fetchone()
            if row is not None:
                out[topic] = bytes(row[0])
        return out

    def record_retained(self, rows: Sequence[tuple[str, bytes, int]]) -> None:
        """Remember (topic, message id, ms) of retained messages taken as state."""
        if rows:
            self.conn.executemany(
                "INSERT INTO retained VALUES (?,?,?) ON CONFLICT(topic) DO UPDATE SET "
                "hash=excluded.hash, at=excluded.at",
                rows,
            )

    def add_counters(self, deltas: dict[str, int]) -> None:
        items = [(k, v) for k, v in deltas.items() if v]
        if items:
            self.conn.executemany(
                "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                items,
            )

    def prune(
        self,
        *,
        readings_before_ms: int,
        messages_before_ms: int,
        dead_before_ms: int,
        limit: int = 50_000,
        dead_max_rows: int | None = None,
    ) -> int:
        """Delete old rows (retention), at most ``limit`` per table per call; returns rows deleted.

        ``dead_max_rows`` also bounds the dead letters by number (so by size: each keeps at most
        :data:`DEAD_LETTER_KEEP_BYTES` of payload): the oldest go first.
        """
        n = 0
        with self.transaction() as c:
            # never a reading a sink has not confirmed, and never the newest row (its seq must not be reused)
            n += c.execute(
                "DELETE FROM readings WHERE seq IN (SELECT seq FROM readings WHERE ts < ? AND "
                "seq < (SELECT max(seq) FROM readings) AND "
                "seq <= coalesce((SELECT min(seq) FROM sink_cursors), 9223372036854775807) LIMIT ?)",
                (readings_before_ms, limit),
            ).rowcount
            n += c.execute(
                "DELETE FROM message_log WHERE rowid IN (SELECT rowid FROM message_log WHERE "
                "received_at < ? ORDER BY rowid LIMIT ?)",
                (messages_before_ms, limit),
            ).rowcount
            n += c.execute(
                "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters WHERE at < ? LIMIT ?)",
                (dead_before_ms, limit),
            ).rowcount
            if dead_max_rows is not None:
                n += c.execute(
                    "DELETE FROM dead_letters WHERE id <= (SELECT id FROM dead_letters ORDER BY id DESC "
                    "LIMIT 1 OFFSET ?)",
                    (dead_max_rows,),
                ).rowcount
        return n

    # ------------------------------------------------------------------ reads

    def workflow_stats(self) -> dict[str, int]:
        from gateway.store.workflow import WorkflowStore

        return WorkflowStore(self.conn).counts()

    def counters(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.conn.execute("SELECT name, value FROM counters")}

    def stats(self) -> dict[str, Any]:
        c = self.counters()
        q = self.conn.execute
        return {
            "messages": c.get("messages", 0),
            "duplicates": c.get("duplicates", 0),
            "readings": c.get("readings", 0),
            "readings_stored": q("SELECT count(*) FROM readings").fetchone()[0],
            "dead_letters": c.get("dead_letters", 0),
            "devices_seen": q("SELECT count(*) FROM devices WHERE last_seen > 0").fetchone()[0],
            "devices_unreachable": q("SELECT count(*) FROM devices WHERE status='unreachable'").fetchone()[0],
            "forward_backlog": self.forward_backlog(),
        }

    def forward_backlog(self) -> int:
        """Readings not yet confirmed by the slowest configured sink (0 when no sink is configured)."""
        row = self.conn.execute("SELECT min(seq) FROM sink_cursors").fetchone()
        if row is None or row[0] is None:
            return 0
        return int(self.conn.execute("SELECT count(*) FROM readings WHERE seq > ?", (row[0],)).fetchone()[0])

    def readings(
        self,
        device_id: str,
        *,
        metric: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int = 1000,
    ) -> list[StoredReading]:
        sql = (
            "SELECT seq, site_id, device_id, metric, value, unit, ts, received_at, quality, urgent "
            "FROM readings WHERE device_id = ?"
        )
        args: list[Any] = [device_id]
        if metric is not None:
            sql += " AND metric = ?"
            args.append(metric)
        if since_ms is not None:
            sql += " AND ts >= ?"
            args.append(since_ms)
        if until_ms is not None:
            sql += " AND ts < ?"
            args.append(until_ms)
        sql += " ORDER BY ts DESC, metric LIMIT ?"
        args.append(limit)
        rows = self.conn.execute(sql, args).fetchall()
        return [StoredReading(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], bool(r[9])) for r in reversed(rows)]

    def dead_letters(
        self, limit: int = 100, *, max_bytes: int | None = None, before_id: int | None = None
    ) -> list[dict[str, Any]]:
        """The newest dead letters first; ``max_bytes`` bounds the page (at least one row is returned),
        ``before_id`` pages on. ``size`` is the payload's real size, ``payload`` at most its first
        :data:`DEAD_LETTER_KEEP_BYTES` (``truncated`` says so)."""
        sql = "SELECT id, at, source, address, device_id, reason, payload, size, digest FROM dead_letters"
        args: list[Any] = []
        if before_id is not None:
            sql += " WHERE id < ?"
            args.append(before_id)
        rows = self.conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        out: list[dict[str, Any]] = []
        used = 0
        for r in rows:
            payload = bytes(r[6])
            size = r[7] if r[7] is not None else len(payload)
            used += len(payload) + len(r[5]) + len(r[3]) + 200
            if max_bytes is not None and out and used > max_bytes:
                break
            out.append(
                {
                    "id": r[0],
                    "at_ms": r[1],
                    "source": r[2],
                    "address": r[3],
                    "device_id": r[4],
                    "reason": r[5],
                    "payload": payload.decode("utf-8", "replace"),
                    "size": size,
                    "truncated": size > len(payload),
                    "digest": r[8],
                }
            )
        return out

    def devices(self) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT device_id, site_id, first_seen, last_seen, status, status_since, "
            "status_reason, link FROM devices ORDER BY device_id"
        ).fetchall()
        latest: dict[str, dict[str, Any]] = {}
        for dev, metric, value, unit, ts, quality in self.conn.execute(
            "SELECT device_id, metric, value, unit, ts, quality FROM latest"
        ):
            latest.setdefault(dev, {})[metric] = {"value": value, "unit": unit, "ts_ms": ts, "quality": quality}
        return [
            {
                "device_id": r[0],
                "site_id": r[1],
                "first_seen_ms": r[2],
                "last_seen_ms": r[3],
                "status": r[4],
                "status_since_ms": r[5],
                "status_reason": r[6],
                "link": r[7],
                "latest": latest.get(r[0], {}),
            }
            for r in rows
        ]


# ---------------------------------------------------------------------------- sink cursor history
# Called by the forwarder on its own connections, inside its transactions (gateway/sinks/forwarder.py).


def record_cursor(conn: sqlite3.Connection, cursor: str, at_ms: int, seq: int) -> None:
    """Remember that ``cursor`` stood at ``seq`` at ``at_ms`` (wall clock)."""
    conn.execute("INSERT OR IGNORE INTO sink_history (sink, at, seq) VALUES (?, ?, ?)", (cursor, at_ms, seq))


def prune_cursor_history(conn: sqlite3.Connection, cursor: str, before_ms: int) -> int:
    """Forget rows older than ``before_ms``, except the newest of them (the anchor: where the
    cursor stood at ``before_ms``). Returns rows deleted."""
    return conn.execute(
        "DELETE FROM sink_history WHERE sink = ? AND at < "
        "(SELECT max(at) FROM sink_history WHERE sink = ? AND at <= ?)",
        (cursor, cursor, before_ms),
    ).rowcount


def cursor_history(conn: sqlite3.Connection, cursor: str, since_ms: int) -> list[tuple[int, int]]:
    """(at_ms, seq) of ``cursor`` from the newest row at or before ``since_ms`` on, oldest first
    (all rows when none is that old)."""
    rows = conn.execute(
        "SELECT at, seq FROM sink_history WHERE sink = ? AND at >= coalesce((SELECT max(at) FROM sink_history "
        "WHERE sink = ? AND at <= ?), -9223372036854775808) ORDER BY at, seq",
        (cursor, cursor, since_ms),
    ).fetchall()
    return [(int(at), int(seq)) for at, seq in rows]


def cursor_high(conn: sqlite3.Connection, cursor: str) -> int:
    """The furthest ``cursor`` has been, as far as its history and its row remember."""
    row = conn.execute(
        "SELECT max(m) FROM (SELECT max(seq) AS m FROM sink_history WHERE sink = ? "
        "UNION ALL SELECT seq FROM sink_cursors WHERE sink = ?)",
        (cursor, cursor),
    ).fetchone()
    return int(row[0]) if row is not None and row[0] is not None else 0


def rewind_cursor(conn: sqlite3.Connection, cursor: str, seq: int, at_ms: int) -> int:
    """Move ``cursor`` back to ``seq`` (never forward) and remember it; returns where it stands."""
    conn.execute(
        "UPDATE sink_cursors SET seq = ?, updated_at = ? WHERE sink = ? AND seq > ?", (seq, at_ms, cursor, seq)
    )
    row = conn.execute("SELECT seq FROM sink_cursors WHERE sink = ?", (cursor,)).fetchone()
    now = int(row[0]) if row is not None else seq
    record_cursor(conn, cursor, at_ms, now)
    return now


def sink_instance(conn: sqlite3.Connection, sink: str) -> tuple[str, int] | None:
    """(identity, seen_at_ms) of the database behind ``sink`` when it was last seen, if ever."""
    row = conn.execute("SELECT identity, seen_at FROM sink_instances WHERE sink = ?", (sink,)).fetchone()
    return (str(row[0]), int(row[1])) if row is not None else None


def set_sink_instance(conn: sqlite3.Connection, sink: str, identity: str, seen_at_ms: int) -> None:
    conn.execute(
        "INSERT INTO sink_instances (sink, identity, seen_at) VALUES (?, ?, ?) ON CONFLICT(sink) DO UPDATE "
        "SET identity = excluded.identity, seen_at = excluded.seen_at",
        (sink, identity, seen_at_ms),
    )


def touch_sink_instance(conn: sqlite3.Connection, sink: str, identity: str, seen_at_ms: int) -> None:
    """The same database was seen again at ``seen_at_ms`` (nothing changes if another one is recorded)."""
    conn.execute(
        "UPDATE sink_instances SET seen_at = max(seen_at, ?) WHERE sink = ? AND identity = ?",
        (seen_at_ms, sink, identity),
    )
