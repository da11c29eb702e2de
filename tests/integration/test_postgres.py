"""The hazard store on a real PostgreSQL server the tests start (design.md §7).

A private server per module: Debian's binaries under /usr/lib/postgresql/<version>/bin, run as the
``postgres`` user when the tests run as root, in a temporary directory, on a free loopback port, with
trust authentication; every test gets a database of its own.
"""

from __future__ import annotations

import itertools
import json
import os
import pwd
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from gateway.errors import ConfigError, SinkUnavailable
from gateway.hazards.lifecycle import Transition, Workflow
from gateway.store.postgres import (
    PG_SCHEMA_VERSION,
    PgStoreError,
    PgWorkflowStore,
    StoreConflict,
    connect,
    migrate,
)
from gateway.store.schema import MIGRATIONS
from gateway.store.workflow import WorkflowStore, event_body
from tests.unit.test_hazards import T0, H, S, cond, fire
from tests.unit.test_rules import catalog, device

PG_ROOT = Path("/usr/lib/postgresql")
DEADLINE_S = 10.0


# ----------------------------------------------------------------------------- the server


def _pg_bin() -> Path:
    found = [p for p in PG_ROOT.glob("*/bin") if (p / "initdb").is_file() and (p / "pg_ctl").is_file()]
    if not found:
        pytest.fail(
            f"PostgreSQL server binaries (initdb, pg_ctl) not found under {PG_ROOT}/<version>/bin: "
            "install them with `scripts/setup postgresql` (the Debian package postgresql)",
            pytrace=False,
        )
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PgServer:
    bin: Path
    base: Path
    as_user: list[str]
    port: int = 0
    _dbs: Iterator[int] = field(default_factory=itertools.count)

    @property
    def data(self) -> Path:
        return self.base / "data"

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.as_user, *args],
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
        )

    def conninfo(self, dbname: str = "postgres", schema: str | None = None) -> str:
        options = f" options='-c search_path={schema}'" if schema else ""
        return f"host=127.0.0.1 port={self.port} user=firegw dbname={dbname} connect_timeout=10{options}"

    def start(self) -> None:
        init = self.run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "firegw",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        assert init.returncode == 0, f"initdb failed:\n{init.stdout}\n{init.stderr}"
        log = ""
        for _ in range(3):  # another process may take the free port before the server binds it
            self.port = _free_port()
            opts = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.base / 'sock'} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=60"
            )
            started = self.run(
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.base / "server.log"),
                "-w",
                "-t",
                str(int(DEADLINE_S * 3)),
                "-o",
                opts,
                "start",
            )
            if started.returncode == 0:
                return
            log = (self.base / "server.log").read_text(errors="replace")
        pytest.fail(f"PostgreSQL did not start:\n{log[-3000:]}", pytrace=False)

    def stop(self) -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        done = self.run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")
        if done.returncode != 0 and (self.data / "postmaster.pid").exists():
            pid = int((self.data / "postmaster.pid").read_text().split()[0])  # the server these tests started
            os.kill(pid, 9)

    def new_database(self) -> str:
        """A fresh, empty place for one test: a schema of its own in the test database (milliseconds,
        where CREATE DATABASE takes a good part of a second)."""
        name = f"t{next(self._dbs)}"
        with psycopg.connect(self.conninfo("firegw_test"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        return self.conninfo("firegw_test", name)


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PgServer]:
    pg_bin = _pg_bin()
    base = Path(tempfile.mkdtemp(prefix="firegw-pg-"))  # under /tmp: every parent is traversable
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail(
                "running as root needs the `postgres` user (the Debian package postgresql creates it)", pytrace=False
            )
        os.chown(base, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    base.chmod(0o700)
    (base / "sock").mkdir(mode=0o700)
    if as_user:
        os.chown(base / "sock", owner.pw_uid, owner.pw_gid)
    server = PgServer(pg_bin, base, as_user)
    try:
        server.start()
        with psycopg.connect(server.conninfo(), autocommit=True) as admin:
            admin.execute("CREATE DATABASE firegw_test")
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> str:
    """A fresh database, migrated."""
    dsn = pg_server.new_database()
    with connect(dsn) as conn:
        migrate(conn)
    return dsn


# ----------------------------------------------------------------------------- helpers


def gateway(name: str) -> Workflow:
    """A gateway's workflow book; ids are unique per gateway, as uuid4 ids are in production."""
    ids = (f"{name}-{i}" for i in itertools.count())
    cat = catalog([device("B1", "onekey-alarm-button"), device("P1", "fire-pump-cabinet", host="h")])
    return Workflow(cat, id_factory=lambda: next(ids))


def normalized(obj: Any) -> Any:
    return json.loads(json.dumps(obj, ensure_ascii=False, default=str))


def wait_until_blocked(dsn: str, pid: int) -> None:
    """Wait (with a deadline) until backend ``pid`` waits on a lock."""
    deadline = time.monotonic() + DEADLINE_S
    with connect(dsn) as watcher:
        while time.monotonic() < deadline:
            row = watcher.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
            if row is not None and row[0] == "Lock":
                return
            time.sleep(0.005)
    pytest.fail(f"backend {pid} never waited on a lock within {DEADLINE_S} s")


class Worker(threading.Thread):
    """Runs fn in a thread and keeps its result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:
            self.error = exc

    def outcome(self) -> Any:
        self.join(DEADLINE_S)
        assert not self.is_alive(), "worker did not finish within the deadline"
        return self.error if self.error is not None else self.result


def test_missing_server_binaries_fail_with_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(__import__(__name__, fromlist=["PG_ROOT"]), "PG_ROOT", tmp_path)
    with pytest.raises(pytest.fail.Exception, match=r"initdb, pg_ctl\) not found under .*`scripts/setup postgresql`"):
        _pg_bin()


# ----------------------------------------------------------------------------- schema


def test_schema_migrates_and_is_idempotent(pg_server: PgServer) -> None:
    dsn = pg_server.new_database()
    with connect(dsn) as conn:
        assert migrate(conn) == PG_SCHEMA_VERSION
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
        assert tables == {
            "meta",
            "fire_events",
            "hazards",
            "workflow_events",
            "outbox",
            "rule_state",
            "site_overrides",
            "site_inspections",
        }
        [(indexdef,)] = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'hazards_open_key' AND schemaname = current_schema()"
        )
        assert "UNIQUE" in indexdef and "(site_id, device_id, rule)" in indexdef and "WHERE" in indexdef
        types: dict[str, str] = dict(
            conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name IN ('hazards', 'workflow_events') AND column_name IN ('data', 'snapshot', 'opened_at', "
                "'seq')"
            ).fetchall()
        )
        assert types == {"data": "jsonb", "snapshot": "jsonb", "opened_at": "bigint", "seq": "bigint"}
        store = PgWorkflowStore(conn)
        with conn.transaction():
            store.write(gateway("a").apply([cond()], T0))
        assert migrate(conn) == PG_SCHEMA_VERSION  # again: nothing changes, nothing is lost
        assert store.counts() == {"hazards_open": 1, "events_open": 0}
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            str(PG_SCHEMA_VERSION),
        )
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
        with pytest.raises(ConfigError, match="schema version 99 is newer than this firegw"):
            migrate(conn)


def test_gateways_starting_together_migrate_once(pg_server: PgServer) -> None:
    dsn = pg_server.new_database()
    barrier = threading.Barrier(4)

    def start() -> int:
        with connect(dsn) as conn:
            barrier.wait(DEADLINE_S)
            return migrate(conn)

    workers = [Worker(start) for _ in range(4)]
    for w in workers:
        w.start()
    assert [w.outcome() for w in workers] == [PG_SCHEMA_VERSION] * 4


# ----------------------------------------------------------------------------- round trip


def test_records_round_trip(pg_dsn: str) -> None:
    w = gateway("a")
    batches = [w.apply([fire(), cond()], T0)]
    fid, hid = batches[0][0].subject_id, batches[0][1].subject_id
    batches.append(w.apply([cond(True, T0 + S)], T0 + S))
    batches.append(w.act("fire_event", fid, "acknowledge", "station-1", now_ms=T0 + 30 * S))
    batches.append(w.act("hazard", hid, "confirm", "grid-1", now_ms=T0 + 40 * S, severity="critical"))
    batches.append(w.apply([cond(False, T0 + 50 * S)], T0 + 50 * S))
    batches.append(w.apply([cond(True, T0 + 60 * S, rule="backup_power_lost", severity="minor")], T0 + 60 * S))
    records = [r for b in batches for r in b]
    with connect(pg_dsn) as conn:
        store = PgWorkflowStore(conn)
        for batch in batches:
            with conn.transaction():
                store.write(batch, ("grid", "sms"))
        last = {r.subject_id: r for r in records}
        for sid, rec in last.items():
            assert store.subject(rec.kind, sid) == normalized(rec.snapshot)
        assert store.subject("hazard", "nope") is None
        assert [t["type"] for t in store.trail("hazard", hid)] == ["opened", "updated", "confirmed", "cleared"]
        assert [t["type"] for t in store.trail("fire_event", fid)] == ["opened", "acknowledged"]
        assert store.trail("fire_event", fid)[1] == {
            "event_id": batches[2][0].event_id,
            "type": "acknowledged",
            "at": "2023-11-14T22:13:50.000Z",
            "actor": "station-1",
            "note": "",
        }
        outbox = conn.execute(
            "SELECT destination, event_id, subject, body, created_at, attempts, delivered_at FROM outbox ORDER BY seq"
        ).fetchall()
        assert outbox == [
            (d, r.event_id, f"{r.kind}:{r.subject_id}", normalized(event_body(r)), r.at_ms, 0, None)
            for r in records
            for d in ("grid", "sms")
        ]
        assert [body for _, body in store.events_since(0)] == [normalized(event_body(r)) for r in records]
        assert [seq for seq, _ in store.events_since(2, limit=3)] == [3, 4, 5] and store.last_seq() == len(records)
        assert store.counts() == {"hazards_open": 2, "events_open": 1}
        assert [h["rule"] for h in store.hazards(site_id="S1")] == ["backup_power_lost", "pump1_mode_held"]
        assert store.hazards(site_id="S2") == [] and len(store.hazards(limit=1)) == 1
        assert [e["fire_event_id"] for e in store.fire_events(open_only=True)] == [fid]
        # a restarted gateway reloads the open rows into a book equal to the old one
        again = gateway("b")
        again.load(*store.open_rows())
        assert again.hazards == w.hazards and again.fire_events == w.fire_events
        # rule state, per scope; overrides and inspections
        assert store.load_rule_state() is None
        store.save_rule_state({"rules": {"x": [1, 2.5, None]}, "名": "泵"}, T0)
        store.save_rule_state({"rules": {"x": [3]}}, T0 + S)
        other = PgWorkflowStore(conn, rule_state_scope="gw-2")
        other.save_rule_state({"rules": {}}, T0)
        assert store.load_rule_state() == {"rules": {"x": [3]}} and other.load_rule_state() == {"rules": {}}
        store.set_override("S1", {"code": "green", "reason": "复查"})
        store.set_override("S2", {"code": "red"})
        store.set_override("S2", None)
        store.record_inspection("S1", T0, "inspector-1")
        store.record_inspection("S1", T0 + H, "inspector-2")
        assert store.overrides() == {"S1": {"code": "green", "reason": "复查"}}
        assert store.inspections() == {"S1": T0 + H}


def test_psycopg_errors_do_not_leave_the_store(pg_dsn: str) -> None:
    w = gateway("a")
    [rec] = w.apply([cond()], T0)
    bad = Transition(
        rec.event_id,
        rec.kind,
        rec.subject_id,
        rec.type,
        rec.at_ms,
        rec.actor,
        rec.note,
        {**rec.snapshot, "title_en": "nul \x00 byte"},
    )  # JSONB refuses U+0000
    with connect(pg_dsn) as conn:
        store = PgWorkflowStore(conn)
        with pytest.raises(PgStoreError, match="write: "), conn.transaction():
            store.write([bad])
        assert store.counts()["hazards_open"] == 0
        conn.execute("DROP TABLE site_inspections")
        with pytest.raises(PgStoreError, match="UndefinedTable"):
            store.inspections()
    with pytest.raises(SinkUnavailable, match="postgres: connect"):
        connect(f"host=127.0.0.1 port={_free_port()} user=firegw dbname=x")


# ----------------------------------------------------------------------------- one open hazard per key


def test_second_open_hazard_for_a_key_is_impossible_until_closed(pg_dsn: str) -> None:
    a, b = gateway("a"), gateway("b")
    with connect(pg_dsn) as conn:
        store = PgWorkflowStore(conn)
        [opened] = a.apply([cond()], T0)
        with conn.transaction():
            store.write([opened], ("grid",))
        # the index itself, whoever writes
        with pytest.raises(psycopg.errors.UniqueViolation, match="hazards_open_key"):
            conn.execute(
                "INSERT INTO hazards VALUES ('raw', 'S1', 'P1', 'pump1_mode_held', 'confirmed', 'major', 0, 0, '{}')"
            )
        # a second gateway that saw the same condition: its batch is refused whole
        recs_b = [*b.apply([fire()], T0 + S), *b.apply([cond(True, T0 + S)], T0 + S)]
        with pytest.raises(StoreConflict, match=f"held open by hazard {opened.subject_id}") as info, conn.transaction():
            store.write(recs_b, ("grid",))
        assert info.value.key == ("S1", "P1", "pump1_mode_held") and info.value.subject_id == recs_b[1].subject_id
        assert info.value.existing == normalized(opened.snapshot)
        assert store.counts() == {"hazards_open": 1, "events_open": 0} and store.last_seq() == 1
        assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (1,)
        # retry by reloading: the repeat becomes an update of the existing hazard
        b = gateway("b2")
        b.load(*store.open_rows())
        recs_b = [*b.apply([fire()], T0 + S), *b.apply([cond(True, T0 + S)], T0 + S)]
        assert [(r.type, r.subject_id) for r in recs_b][1] == ("updated", opened.subject_id)
        with conn.transaction():
            store.write(recs_b, ("grid",))
        assert store.subject("hazard", opened.subject_id)["count"] == 2  # type: ignore[index]
        # closed (a person rejects it through gateway a); gateway b's stale copy cannot reopen it
        with conn.transaction():
            store.write(a.act("hazard", opened.subject_id, "reject", "grid-1", now_ms=T0 + 2 * S, note="exception"))
        stale = b.apply([cond(True, T0 + 3 * S)], T0 + 3 * S)
        with pytest.raises(StoreConflict, match="is already closed") as closed, conn.transaction():
            store.write(stale)
        assert closed.value.existing is not None and closed.value.existing["state"] == "closed"
        # after closing, a new hazard for the key opens
        [reopened] = a.apply([cond(True, T0 + 4 * S)], T0 + 4 * S)
        assert reopened.type == "opened" and reopened.subject_id != opened.subject_id
        with conn.transaction():
            store.write([reopened])
        rows = conn.execute(
            "SELECT hazard_id, state FROM hazards WHERE rule = 'pump1_mode_held' ORDER BY opened_at"
        ).fetchall()
        assert rows == [(opened.subject_id, "closed"), (reopened.subject_id, "proposed")]
        # a replayed batch (same event ids) changes nothing
        with conn.transaction():
            store.write(recs_b, ("grid", "sms"))
        assert store.subject("hazard", opened.subject_id)["state"] == "closed"  # type: ignore[index]


def test_index_alone_stops_two_concurrent_inserts(pg_dsn: str) -> None:
    insert = "INSERT INTO hazards VALUES (%s, 'S1', 'P1', 'r', 'proposed', 'major', 0, 0, '{}')"
    with connect(pg_dsn, autocommit=False) as first, connect(pg_dsn, autocommit=False) as second:
        first.execute(insert, ("h-first",))  # open, not committed

        def insert_second() -> None:
            with second.transaction():
                second.execute(insert, ("h-second",))

        racer = Worker(insert_second)
        racer.start()
        wait_until_blocked(pg_dsn, second.info.backend_pid)
        first.commit()
        assert isinstance(racer.outcome(), psycopg.errors.UniqueViolation)
    with connect(pg_dsn) as conn:
        assert conn.execute("SELECT hazard_id FROM hazards WHERE state <> 'closed'").fetchall() == [("h-first",)]


def test_two_gateways_opening_one_key_end_with_one_hazard(pg_dsn: str) -> None:
    """Gateway a has written but not committed; gateway b writes the same key and waits; a commits."""
    a, b = gateway("a"), gateway("b")
    recs_a, recs_b = a.apply([cond()], T0), b.apply([cond(True, T0 + 1)], T0 + 1)
    with connect(pg_dsn) as conn_a, connect(pg_dsn) as conn_b:
        store_a, store_b = PgWorkflowStore(conn_a), PgWorkflowStore(conn_b)

        def write_b() -> None:
            with conn_b.transaction():
                store_b.write(recs_b, ("grid",))

        with conn_a.transaction():
            store_a.write(recs_a, ("grid",))
            racer = Worker(write_b)
            racer.start()
            wait_until_blocked(pg_dsn, conn_b.info.backend_pid)
        lost = racer.outcome()
        assert isinstance(lost, StoreConflict) and lost.existing is not None
        assert lost.existing["hazard_id"] == recs_a[0].subject_id
        assert store_a.open_rows()[1] == [normalized(recs_a[0].snapshot)]


def test_trail_seq_order_is_commit_order(pg_dsn: str) -> None:
    """A writer waits for the one before it to commit, so a reader's seq cursor never skips a late commit."""
    a, b = gateway("a"), gateway("b")
    with connect(pg_dsn) as conn_a, connect(pg_dsn) as conn_b, connect(pg_dsn) as conn_r:
        store_a, store_b, reader = PgWorkflowStore(conn_a), PgWorkflowStore(conn_b), PgWorkflowStore(conn_r)

        def write_b() -> None:
            with conn_b.transaction():
                store_b.write(b.apply([cond(rule="rule-b")], T0 + S))

        with conn_a.transaction():
            store_a.write(a.apply([cond(rule="rule-a")], T0))
            racer = Worker(write_b)
            racer.start()
            wait_until_blocked(pg_dsn, conn_b.info.backend_pid)  # b waits for a's commit
            assert reader.events_since(0) == []
        assert racer.outcome() is None
        assert [(seq, body["hazard"]["rule"]) for seq, body in reader.events_since(0)] == [(1, "rule-a"), (2, "rule-b")]


@pytest.mark.parametrize("round_", range(8))
def test_racing_gateways_with_a_barrier(pg_dsn: str, round_: int) -> None:
    """Both gateways load, meet at a barrier, write; the loser reloads and retries. One hazard, count 2."""
    barrier = threading.Barrier(2)
    rule = f"rule-{round_}"

    def run_gateway(name: str) -> list[str]:
        outcomes: list[str] = []
        with connect(pg_dsn) as conn:
            store = PgWorkflowStore(conn)
            book = gateway(name)
            book.load(*store.open_rows())
            barrier.wait(DEADLINE_S)
            for attempt in range(3):
                recs = book.apply([cond(True, T0 + round_, rule=rule)], T0 + round_)
                try:
                    with conn.transaction():
                        store.write(recs, ("grid",))
                except StoreConflict:
                    outcomes.append("conflict")
                    book = gateway(f"{name}-retry{attempt}")
                    book.load(*store.open_rows())
                    continue
                outcomes.append(recs[0].type)
                return outcomes
        raise AssertionError(f"{name} never wrote: {outcomes}")

    workers = [Worker(lambda n=n: run_gateway(n)) for n in ("a", "b")]  # type: ignore[misc]
    for w in workers:
        w.start()
    results = sorted(w.outcome() for w in workers)
    assert results == [["conflict", "updated"], ["opened"]]
    with connect(pg_dsn) as conn:
        store = PgWorkflowStore(conn)
        [hazard] = [h for h in store.hazards(open_only=True) if h["rule"] == rule]
        assert hazard["count"] == 2
        assert [t["type"] for t in store.trail("hazard", hazard["hazard_id"])] == ["opened", "updated"]


# ----------------------------------------------------------------------------- parity with SQLite


class Backend:
    """One store behind the same calls: SQLite's WorkflowStore or PgWorkflowStore."""

    def __init__(self, kind: str, dsn: str) -> None:
        self.kind = kind
        self.pg: psycopg.Connection[Any] | None = None
        self.lite: sqlite3.Connection | None = None
        self.store: WorkflowStore | PgWorkflowStore
        if kind == "postgres":
            self.pg = connect(dsn)
            self.store = PgWorkflowStore(self.pg)
        else:
            self.lite = sqlite3.connect(":memory:")
            for script in MIGRATIONS:
                self.lite.executescript(script)
            self.store = WorkflowStore(self.lite)

    @contextmanager
    def tx(self) -> Iterator[None]:
        if self.pg is not None:
            with self.pg.transaction():
                yield
        else:
            assert self.lite is not None
            with self.lite:
                yield

    def write(self, records: list[Transition], destinations: tuple[str, ...] = ("grid",)) -> None:
        with self.tx():
            self.store.write(records, destinations)

    def outbox(self) -> list[Any]:
        q = "SELECT destination, event_id, subject, body, created_at, attempts, delivered_at FROM outbox ORDER BY seq"
        if self.pg is not None:
            return [list(r) for r in self.pg.execute(q)]
        assert self.lite is not None
        return [[*r[:3], json.loads(r[3]), *r[4:]] for r in self.lite.execute(q)]

    def dump(self) -> dict[str, Any]:
        st = self.store
        hazards = sorted(st.hazards(), key=lambda h: str(h["hazard_id"]))
        fires = sorted(st.fire_events(), key=lambda e: str(e["fire_event_id"]))
        open_f, open_h = st.open_rows()
        return {
            "hazards": hazards,
            "fire_events": fires,
            "open": (sorted(open_f, key=str), sorted(open_h, key=str)),
            "site_hazards": sorted(str(h["hazard_id"]) for h in st.hazards(open_only=True, site_id="S1")),
            "trails": {
                s: st.trail(k, s)
                for k, s in [
                    *(("hazard", h["hazard_id"]) for h in hazards),
                    *(("fire_event", e["fire_event_id"]) for e in fires),
                ]
            },
            "events": [body for _, body in st.events_since(0, limit=10_000)],
            "outbox": self.outbox(),
            "counts": st.counts(),
            "overrides": st.overrides(),
            "inspections": st.inspections(),
            "rule_state": st.load_rule_state(),
        }

    def close(self) -> None:
        if self.pg is not None:
            self.pg.close()
        if self.lite is not None:
            self.lite.close()


def hazard_lifecycle(w: Workflow, db: Backend) -> None:
    [opened] = w.apply([cond()], T0)
    hid = opened.subject_id
    db.write([opened])
    db.write(w.apply([cond(True, T0 + S)], T0 + S))
    db.write(w.apply([cond(False, T0 + 2 * S)], T0 + 2 * S))
    for i, (action, params) in enumerate(
        [
            ("confirm", {"severity": "critical"}),
            ("dispatch", {"assignee": "c"}),
            ("start", {}),
            ("rectified", {}),
            ("close", {}),
        ]
    ):
        db.write(w.act("hazard", hid, action, "grid-1", now_ms=T0 + (3 + i) * S, note="re-checked", **params))
    db.write(w.apply([cond(True, T0 + 10 * S)], T0 + 10 * S))


def fire_lifecycle(w: Workflow, db: Backend) -> None:
    [opened] = w.apply([fire()], T0)
    db.write([opened], ("grid", "sms"))
    db.write(w.apply([fire(T0 + S)], T0 + S), ("grid", "sms"))
    db.write(w.tick(T0 + 200 * S))
    for i, action in enumerate(["acknowledge", "arrive"]):
        db.write(w.act("fire_event", opened.subject_id, action, "station-1", now_ms=T0 + (210 + i) * S))
    db.write(
        w.act(
            "fire_event",
            opened.subject_id,
            "resolve",
            "chief",
            now_ms=T0 + 300 * S,
            resolution="false_alarm",
            note="burnt toast",
        )
    )
    db.write(w.apply([fire(T0 + 400 * S, dev="P1", test=True)], T0 + 400 * S))


def auto_close_escalation_replay(w: Workflow, db: Backend) -> None:
    db.write(w.apply([cond(auto_close=True, rule="auto")], T0))
    db.write(w.apply([cond(False, T0 + S, auto_close=True, rule="auto")], T0 + S))
    batch = w.apply([cond(True, T0 + 2 * S, rule="slow", severity="critical")], T0 + 2 * S)
    db.write(batch)
    db.write(batch, ("grid", "sms"))  # a retried batch
    db.write(w.tick(T0 + 2 * S + H))
    db.write(w.tick(T0 + 2 * S + 2 * H))


def site_state(w: Workflow, db: Backend) -> None:
    db.write(w.apply([cond(hard=True)], T0))
    db.store.set_override("S1", {"code": "yellow", "reason": "整改中", "until_ms": T0 + H})
    db.store.set_override("S2", {"code": "red"})
    db.store.set_override("S2", None)
    db.store.record_inspection("S1", T0, "i-1")
    db.store.record_inspection("S3", T0 + S, "i-2")
    db.store.record_inspection("S1", T0 + H, "i-3")
    db.store.save_rule_state({"engine": {"P1": {"held": [T0, 0]}}, "v": 1.5}, T0)
    db.store.save_rule_state({"engine": {}, "v": 2}, T0 + S)


@pytest.mark.parametrize(
    "scenario", [hazard_lifecycle, fire_lifecycle, auto_close_escalation_replay, site_state], ids=lambda f: f.__name__
)
def test_sqlite_and_postgres_keep_the_same_rows(pg_dsn: str, scenario: Callable[[Workflow, Backend], None]) -> None:
    dumps = {}
    for kind in ("sqlite", "postgres"):
        db = Backend(kind, pg_dsn)
        try:
            ids = (f"id{i}" for i in itertools.count())
            w = Workflow(
                catalog([device("B1", "onekey-alarm-button"), device("P1", "fire-pump-cabinet", host="h")]),
                id_factory=lambda ids=ids: next(ids),  # type: ignore[misc]
            )
            scenario(w, db)
            dumps[kind] = db.dump()
        finally:
            db.close()
    assert dumps["sqlite"]["counts"] == dumps["postgres"]["counts"]
    assert dumps["sqlite"] == dumps["postgres"]
    assert dumps["sqlite"]["events"], "the scenario wrote nothing"
