"""The hazard store on PostgreSQL, so several gateways can share one (design.md §7).

The same tables as the embedded store's v2 schema (fire events, hazards, their immutable trail, the
outbox, rule state, site overrides and inspections), in PostgreSQL types: JSONB for ``data``,
``snapshot`` and ``body``, BIGINT millisecond times, BIGSERIAL ``seq``. :class:`PgWorkflowStore` has
the public methods and semantics of :class:`gateway.store.workflow.WorkflowStore` (psycopg 3, sync).

What holds across a group of gateways sharing one database:

- **One open hazard per (site, device, rule).** The partial unique index ``hazards_open_key``
  (``WHERE state <> 'closed'``) makes a second open hazard for a key impossible, whoever writes it.
  When a gateway writes a hazard that another gateway already holds open under a different id (two
  gateways saw the same condition before either committed), :meth:`PgWorkflowStore.write` raises
  :class:`StoreConflict` carrying the committed open hazard (``existing``). The caller rolls its
  transaction back, reloads the open rows into its :class:`~gateway.hazards.lifecycle.Workflow`
  (``Workflow.load(*store.open_rows())``) and applies the effects again: the repeat then becomes an
  ``updated`` record of the existing hazard. Nothing is merged silently, so the trail never names a
  hazard that does not exist.
- **Closed is final.** A new record for a hazard already closed (or a fire event already resolved),
  written by a gateway whose memory is stale, raises :class:`StoreConflict` instead of reopening it.
- **Updates of one open hazard are last-writer-wins** for its row (both records stay in the trail).
  Partitioning by site (design.md §7) gives each hazard one writing gateway; two only overlap while a
  partition changes owner, and the new owner reloads the open rows before it applies anything.
- **Replays change nothing.** A record whose ``event_id`` is already in the trail is a replay (a
  retried batch): its subject row is left alone; outbox rows stay one per (destination, event).
- **The trail's seq order is commit order.** ``write`` takes one transaction-scoped advisory lock, so
  writers serialize from their first record to their commit and :meth:`PgWorkflowStore.events_since`
  with a seq cursor never skips a row that commits late. Keep those transactions short (the records
  of one batch), and use READ COMMITTED (the default), so ``StoreConflict.existing`` sees the winner.

psycopg exceptions do not leave this module: a database that cannot be reached or that aborted the
transaction to break a deadlock or a serialization failure raises
:class:`~gateway.errors.SinkUnavailable` (``sink="postgres"``; retry the transaction); any other
database error raises :class:`PgStoreError`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, LiteralString

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import TupleRow, tuple_row
from psycopg.types.json import Jsonb

from gateway.errors import ConfigError, FiregwError, SinkUnavailable
from gateway.hazards.lifecycle import Transition
from gateway.store.workflow import event_body, iso

__all__ = [
    "PG_MIGRATIONS",
    "PG_SCHEMA",
    "PG_SCHEMA_VERSION",
    "PgStoreError",
    "PgWorkflowStore",
    "StoreConflict",
    "connect",
    "migrate",
]

SINK = "postgres"

PG_MIGRATIONS: list[LiteralString] = [
    # v1: the embedded store's v2 workflow tables. rule_state is keyed by a scope (one row per
    # gateway or per partition) instead of the embedded store's single row, since a group shares it.
    """
    CREATE TABLE fire_events (
        fire_event_id TEXT PRIMARY KEY,
        site_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        state TEXT NOT NULL,
        opened_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        data JSONB NOT NULL
    );
    CREATE INDEX fire_events_site ON fire_events(site_id, state);
    CREATE TABLE hazards (
        hazard_id TEXT PRIMARY KEY,
        site_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        rule TEXT NOT NULL,
        state TEXT NOT NULL,
        severity TEXT NOT NULL,
        opened_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        data JSONB NOT NULL
    );
    -- one open hazard per (site, device, rule) across every gateway writing here
    CREATE UNIQUE INDEX hazards_open_key ON hazards(site_id, device_id, rule) WHERE state <> 'closed';
    CREATE INDEX hazards_site ON hazards(site_id, state);
    CREATE TABLE workflow_events (
        seq BIGSERIAL PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        subject_id TEXT NOT NULL,
        type TEXT NOT NULL,
        at BIGINT NOT NULL,
        actor TEXT NOT NULL,
        note TEXT NOT NULL,
        snapshot JSONB NOT NULL
    );
    CREATE INDEX workflow_events_subject ON workflow_events(kind, subject_id, seq);
    CREATE TABLE outbox (
        seq BIGSERIAL PRIMARY KEY,
        destination TEXT NOT NULL,
        event_id TEXT NOT NULL,
        subject TEXT NOT NULL,
        body JSONB NOT NULL,
        created_at BIGINT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at BIGINT NOT NULL DEFAULT 0,
        delivered_at BIGINT,
        last_error TEXT,
        UNIQUE (destination, event_id)
    );
    CREATE INDEX outbox_pending ON outbox(destination, delivered_at, seq);
    CREATE TABLE rule_state (scope TEXT PRIMARY KEY, at BIGINT NOT NULL, snapshot JSONB NOT NULL);
    CREATE TABLE site_overrides (site_id TEXT PRIMARY KEY, data JSONB NOT NULL);
    CREATE TABLE site_inspections (site_id TEXT PRIMARY KEY, at BIGINT NOT NULL, actor TEXT NOT NULL);
    """,
]

PG_SCHEMA_VERSION = len(PG_MIGRATIONS)

#: The whole current schema (what :func:`migrate` builds on an empty database, ``meta`` included).
PG_SCHEMA: str = "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);\n" + "\n".join(PG_MIGRATIONS)

# Transaction-scoped advisory lock keys (bigint): schema migration, and the trail's commit order.
_MIGRATE_LOCK = 0x6669_7265_6777_0001
_WRITE_LOCK = 0x6669_7265_6777_0002


class PgStoreError(FiregwError):
    """A database error that retrying will not fix (a broken schema, a value PostgreSQL refuses)."""


class StoreConflict(FiregwError):
    """A write lost to what another gateway committed. Roll back, reload the open rows, apply again.

    ``existing`` is the committed open hazard holding ``key`` when the conflict is a second open
    hazard for a key (``None`` if it could not be read), or the terminal row of ``subject_id`` when
    the write would have changed a closed hazard or a resolved fire event.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        subject_id: str,
        key: tuple[str, ...] | None = None,
        existing: dict[str, Any] | None = None,
    ) -> None:
        self.kind = kind
        self.subject_id = subject_id
        self.key = key
        self.existing = existing
        super().__init__(message)


def _error(exc: psycopg.Error, what: str) -> FiregwError:
    """The firegw error for a psycopg error."""
    detail = f"{what}: {type(exc).__name__}: {str(exc).strip()}"
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        # lost connection, server shutting down, deadlock or serialization failure: retry the transaction
        return SinkUnavailable(detail, sink=SINK)
    return PgStoreError(detail)


@contextmanager
def _wrapped(what: str) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        raise _error(exc, what) from exc


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str)


def _json(obj: Any) -> Jsonb:
    return Jsonb(obj, dumps=_dumps)


def connect(
    conninfo: str, *, autocommit: bool = True, connect_timeout: float = 10.0, **kwargs: Any
) -> psycopg.Connection[TupleRow]:
    """Open a connection; raises :class:`~gateway.errors.SinkUnavailable` when the server cannot be reached.

    Autocommit by default: reads see what the group has committed and hold nothing open; wrap each
    batch of writes in ``with conn.transaction():``.
    """
    with _wrapped("connect"):
        conn: psycopg.Connection[TupleRow] = psycopg.connect(
            conninfo,
            autocommit=autocommit,
            connect_timeout=max(1, int(connect_timeout)),
            row_factory=tuple_row,
            **kwargs,
        )
        return conn


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Bring the schema to :data:`PG_SCHEMA_VERSION` in one transaction; return the version.

    Idempotent, and safe when several gateways start at once (an advisory lock serializes them).
    A database newer than this firegw raises :class:`~gateway.errors.ConfigError`.
    """
    with _wrapped("migrate"), conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
        cur.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = cur.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > PG_SCHEMA_VERSION:
            raise ConfigError(
                f"hazard store: schema version {version} is newer than this firegw "
                f"({PG_SCHEMA_VERSION}); upgrade firegw"
            )
        for v in range(version, PG_SCHEMA_VERSION):
            cur.execute(PG_MIGRATIONS[v])
        cur.execute(
            "INSERT INTO meta VALUES ('schema_version', %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(PG_SCHEMA_VERSION),),
        )
        return PG_SCHEMA_VERSION


class PgWorkflowStore:
    """Workflow tables on an open psycopg connection. The caller owns the transaction.

    ``rule_state_scope`` names this gateway's row of rule-engine state (the embedded store has one).
    """

    def __init__(self, conn: psycopg.Connection[Any], *, rule_state_scope: str = "default") -> None:
        self.conn = conn
        self.rule_state_scope = rule_state_scope

    def _rows(self, sql: LiteralString, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with _wrapped("read"), self.conn.cursor(row_factory=tuple_row) as cur:
            return cur.execute(sql, args).fetchall()

    def _exec(self, sql: LiteralString, args: Sequence[Any] = ()) -> None:
        with _wrapped("write"), self.conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(sql, args)

    # ------------------------------------------------------------------ writes

    def write(self, records: Sequence[Transition], destinations: Sequence[str] = ()) -> None:
        """Write records (subject row, trail row, one outbox row per destination) atomically.

        Runs in a savepoint of the caller's transaction (or a transaction of its own when there is
        none). Raises :class:`StoreConflict` when another gateway holds the hazard key open or the
        subject is already closed/resolved; nothing of the batch is then written.
        """
        if not records:
            return
        current: Transition | None = None
        try:
            with self.conn.transaction(), self.conn.cursor(row_factory=tuple_row) as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
                for rec in records:
                    current = rec
                    self._write_one(cur, rec, destinations)
        except pg_errors.UniqueViolation as exc:
            if current is None or exc.diag.constraint_name != "hazards_open_key":
                raise _error(exc, "write") from exc
            raise self._open_key_conflict(current) from exc
        except psycopg.Error as exc:
            raise _error(exc, "write") from exc

    def _write_one(self, cur: psycopg.Cursor[TupleRow], rec: Transition, destinations: Sequence[str]) -> None:
        snap = rec.snapshot
        data = _json(snap)
        new = cur.execute(
            "INSERT INTO workflow_events (event_id, kind, subject_id, type, at, actor, note, snapshot) "
            "VALUES (%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (event_id) DO NOTHING RETURNING seq",
            (rec.event_id, rec.kind, rec.subject_id, rec.type, rec.at_ms, rec.actor, rec.note, data),
        ).fetchone()
        if new is not None:  # not a replay: move the subject row
            if rec.kind == "fire_event":
                moved = cur.execute(
                    "INSERT INTO fire_events VALUES (%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (fire_event_id) DO UPDATE "
                    "SET state = excluded.state, updated_at = excluded.updated_at, data = excluded.data "
                    "WHERE fire_events.state <> 'resolved' RETURNING 1",
                    (
                        rec.subject_id,
                        snap["site_id"],
                        snap["device_id"],
                        snap["state"],
                        snap["opened_at_ms"],
                        rec.at_ms,
                        data,
                    ),
                ).fetchone()
                if moved is None:
                    raise self._terminal_conflict(rec, "resolved")
            elif rec.kind == "hazard":
                moved = cur.execute(
                    "INSERT INTO hazards VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (hazard_id) DO UPDATE "
                    "SET state = excluded.state, severity = excluded.severity, updated_at = excluded.updated_at, "
                    "data = excluded.data WHERE hazards.state <> 'closed' RETURNING 1",
                    (
                        rec.subject_id,
                        snap["site_id"],
                        snap["device_id"],
                        snap["rule"],
                        snap["state"],
                        snap["severity"],
                        snap["opened_at_ms"],
                        rec.at_ms,
                        data,
                    ),
                ).fetchone()
                if moved is None:
                    raise self._terminal_conflict(rec, "closed")
        if destinations:
            body = _json(event_body(rec))
            cur.executemany(
                "INSERT INTO outbox (destination, event_id, subject, body, created_at) "
                "VALUES (%s,%s,%s,%s,%s) ON CONFLICT (destination, event_id) DO NOTHING",
                [(d, rec.event_id, f"{rec.kind}:{rec.subject_id}", body, rec.at_ms) for d in destinations],
            )

    def _terminal_conflict(self, rec: Transition, state: str) -> StoreConflict:
        # still inside the write's savepoint: reading is fine, raising rolls the batch back
        return StoreConflict(
            f"{rec.kind} {rec.subject_id} is already {state}: {rec.type} record {rec.event_id} "
            "comes from a stale copy; reload the open rows and apply again",
            kind=rec.kind,
            subject_id=rec.subject_id,
            existing=self.subject(rec.kind, rec.subject_id),
        )

    def _open_key_conflict(self, rec: Transition) -> StoreConflict:
        snap = rec.snapshot
        key = (str(snap["site_id"]), str(snap["device_id"]), str(snap["rule"]))
        existing: dict[str, Any] | None = None
        try:  # the savepoint is rolled back; under READ COMMITTED this sees the winner's row
            rows = self._rows(
                "SELECT data FROM hazards WHERE site_id = %s AND device_id = %s AND rule = %s AND state <> 'closed'",
                key,
            )
            existing = dict(rows[0][0]) if rows else None
        except FiregwError:
            existing = None
        held = f" by hazard {existing['hazard_id']}" if existing else ""
        return StoreConflict(
            f"hazard key {'/'.join(key)} is already held open{held}: hazard {rec.subject_id} "
            "not written; reload the open rows and apply again",
            kind="hazard",
            subject_id=rec.subject_id,
            key=key,
            existing=existing,
        )

    def save_rule_state(self, snapshot: dict[str, Any], at_ms: int) -> None:
        self._exec(
            "INSERT INTO rule_state VALUES (%s, %s, %s) ON CONFLICT (scope) DO UPDATE SET at = excluded.at, "
            "snapshot = excluded.snapshot",
            (self.rule_state_scope, at_ms, _json(snapshot)),
        )

    def set_override(self, site_id: str, data: dict[str, Any] | None) -> None:
        if data is None:
            self._exec("DELETE FROM site_overrides WHERE site_id = %s", (site_id,))
        else:
            self._exec(
                "INSERT INTO site_overrides VALUES (%s, %s) ON CONFLICT (site_id) DO UPDATE SET data = excluded.data",
                (site_id, _json(data)),
            )

    def record_inspection(self, site_id: str, at_ms: int, actor: str) -> None:
        self._exec(
            "INSERT INTO site_inspections VALUES (%s, %s, %s) ON CONFLICT (site_id) DO UPDATE SET "
            "at = excluded.at, actor = excluded.actor",
            (site_id, at_ms, actor),
        )

    # ------------------------------------------------------------------ reads

    def load_rule_state(self) -> dict[str, Any] | None:
        rows = self._rows("SELECT snapshot FROM rule_state WHERE scope = %s", (self.rule_state_scope,))
        return dict(rows[0][0]) if rows else None

    def open_rows(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        fires = [dict(r[0]) for r in self._rows("SELECT data FROM fire_events WHERE state <> 'resolved'")]
        hazards = [dict(r[0]) for r in self._rows("SELECT data FROM hazards WHERE state <> 'closed'")]
        return fires, hazards

    def fire_events(
        self, *, open_only: bool = False, site_id: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        sql: LiteralString = "SELECT data FROM fire_events WHERE true"
        args: list[Any] = []
        if open_only:
            sql += " AND state <> 'resolved'"
        if site_id:
            sql += " AND site_id = %s"
            args.append(site_id)
        sql += " ORDER BY opened_at DESC, fire_event_id LIMIT %s"
        return [dict(r[0]) for r in self._rows(sql, [*args, limit])]

    def hazards(
        self, *, open_only: bool = False, site_id: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        sql: LiteralString = "SELECT data FROM hazards WHERE true"
        args: list[Any] = []
        if open_only:
            sql += " AND state <> 'closed'"
        if site_id:
            sql += " AND site_id = %s"
            args.append(site_id)
        sql += " ORDER BY opened_at DESC, hazard_id LIMIT %s"
        return [dict(r[0]) for r in self._rows(sql, [*args, limit])]

    def subject(self, kind: str, subject_id: str) -> dict[str, Any] | None:
        if kind == "fire_event":
            rows = self._rows("SELECT data FROM fire_events WHERE fire_event_id = %s", (subject_id,))
        else:
            rows = self._rows("SELECT data FROM hazards WHERE hazard_id = %s", (subject_id,))
        return dict(rows[0][0]) if rows else None

    def trail(self, kind: str, subject_id: str) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT event_id, type, at, actor, note FROM workflow_events WHERE kind = %s AND "
            "subject_id = %s ORDER BY seq",
            (kind, subject_id),
        )
        return [{"event_id": r[0], "type": r[1], "at": iso(int(r[2])), "actor": r[3], "note": r[4]} for r in rows]

    def overrides(self) -> dict[str, dict[str, Any]]:
        return {r[0]: dict(r[1]) for r in self._rows("SELECT site_id, data FROM site_overrides")}

    def inspections(self) -> dict[str, int]:
        return {r[0]: int(r[1]) for r in self._rows("SELECT site_id, at FROM site_inspections")}

    def counts(self) -> dict[str, int]:
        [(hazards_open, events_open)] = self._rows(
            "SELECT (SELECT count(*) FROM hazards WHERE state <> 'closed'), "
            "(SELECT count(*) FROM fire_events WHERE state <> 'resolved')"
        )
        return {"hazards_open": int(hazards_open), "events_open": int(events_open)}

    def last_seq(self) -> int:
        """The trail's highest seq (where a live stream starts)."""
        [(seq,)] = self._rows("SELECT coalesce(max(seq), 0) FROM workflow_events")
        return int(seq)

    def events_since(self, seq: int, limit: int = 500) -> list[tuple[int, dict[str, Any]]]:
        rows = self._rows(
            "SELECT seq, event_id, kind, subject_id, type, at, actor, note, snapshot "
            "FROM workflow_events WHERE seq > %s ORDER BY seq LIMIT %s",
            (seq, limit),
        )
        return [
            (int(r[0]), event_body(Transition(r[1], r[2], r[3], r[4], int(r[5]), r[6], r[7], dict(r[8])))) for r in rows
        ]
