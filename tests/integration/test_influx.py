"""Store-and-forward to real time-series databases the tests start: VictoriaMetrics (through
``influxdb-client``'s ``/api/v2/write``) and InfluxDB 1.6 (``/write``).

Every scenario compares the database with the embedded store, point by point: the same readings,
once each, with the same value, quality, receive time and device time.

The outage scenarios run ``firegw run`` as a process fed by the MQTT fleet over a real Mosquitto.
The gateway forwards (``influx.url`` set) and is the process killed. The other scenarios run a
:class:`Forwarder` in-process over a store filled directly.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import math
import os
import shutil
import signal
import sqlite3
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.errors import SinkUnavailable
from gateway.health import Health
from gateway.models import Quality, Reading
from gateway.profiles.loader import Catalog, load_catalog
from gateway.settings import InfluxSettings
from gateway.sinks import forwarder as forwarder_module
from gateway.sinks.forwarder import Forwarder, rewind_point
from gateway.sinks.influx import QUALITY_CODES, InfluxSink, LineEncoder, escape_tag
from gateway.store.sqlite import (
    Store,
    cursor_high,
    cursor_history,
    prune_cursor_history,
    record_cursor,
    rewind_cursor,
    sink_instance,
)
from simulators.broker import Mosquitto, free_port
from simulators.launch import stop_process
from tests.support import (
    PROFILES,
    GatewayProc,
    RunningInThread,
    run_fleet,
    store_stats,
    wait_for,
    write_inventory,
)

#: The outage of the database in the VictoriaMetrics scenario (the issue's 30 s) and the InfluxDB one.
OUTAGE_VM_S = 30.0
OUTAGE_V1_S = 10.0
DEVICES = 50
RATE = 10  # messages per second per device
#: Does ``firegw run`` forward by itself (pipeline wiring done)? Otherwise a forwarder process runs beside it.

VM_REL = 1e-12  # VictoriaMetrics' float precision
Key = tuple[str, str, str, int]  # measurement, device, metric, device time


# ---------------------------------------------------------------------------- servers


def _binary(name: str, package: str) -> str:
    """The server's binary; installs the Debian package when missing. A missing server fails the test."""

    def find() -> str | None:
        return shutil.which(name) or next(
            (p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if Path(p).exists()), None
        )

    found = find()
    if found is None:
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (
            ["apt-get", "install", "-y", "-qq", package],
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", package],
        ):
            subprocess.run([*sudo, *cmd], env=env, capture_output=True, timeout=600, check=False)
            found = find()
            if found is not None:
                break
    if found is None:
        pytest.fail(f"{name} is not installed and `apt-get install {package}` failed (scripts/setup {package})")
    return found


def _http(method: str, url: str, data: bytes | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())
    except (urllib.error.URLError, OSError):
        return 0, b""


@dataclass
class _Server:
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, args: list[str], ready: str, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with (self.workdir / "server.log").open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{args[0]} exited: {(self.workdir / 'server.log').read_text()[-2000:]}")
            return _http("GET", self.url + ready, timeout=2)[0] in (200, 204)

        wait_for(up, timeout, f"{args[0]} on {self.url}", interval=0.1)

    def kill(self) -> None:
        """SIGKILL: no flush, no clean shutdown (what a crash, an OOM kill or a power cut does to the process)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        stop_process(self.proc, 30)
        self.proc = None


@dataclass
class VictoriaMetrics(_Server):
    """VictoriaMetrics on loopback; ``dedup`` makes a re-sent sample overwrite (one per millisecond)."""

    dedup: bool = True

    def start(self) -> VictoriaMetrics:
        args = [
            _binary("victoria-metrics", "victoria-metrics"),
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={self.workdir / 'data'}",
            "-retentionPeriod=100y",
            "-loggerLevel=ERROR",
        ]
        if self.dedup:
            args.append("-dedup.minScrapeInterval=1ms")
        self._spawn(args, "/health")
        return self

    def env(self) -> dict[str, str]:
        return {
            "FIREGW_INFLUX__URL": self.url,
            "FIREGW_INFLUX__API": "v2",
            "FIREGW_INFLUX__TOKEN": "unused",
            "FIREGW_INFLUX__ORG": "firegw",
            "FIREGW_INFLUX__BUCKET": "firegw",
        }

    def settings(self, **kw: Any) -> InfluxSettings:
        return InfluxSettings(url=self.url, api="v2", token="unused", org="firegw", bucket="firegw", **kw)

    def rows_inserted(self, timeout: float = 10.0) -> int:
        """Samples received over the influx protocol (three per line: value, quality, received_at), once
        nothing more arrives. VictoriaMetrics serves ``/metrics`` from a cache for about a second after
        a scrape (the forwarder's identity probe is one), so a value counts once it held for longer."""
        deadline = time.monotonic() + timeout
        since, value = time.monotonic(), self._rows_inserted()
        while time.monotonic() - since < 1.5:
            assert time.monotonic() < deadline, "vm_rows_inserted_total kept changing"
            time.sleep(0.1)
            now = self._rows_inserted()
            if now != value:
                since, value = time.monotonic(), now
        return value

    def _rows_inserted(self) -> int:
        _, body = _http("GET", self.url + "/metrics")
        for line in body.decode().splitlines():
            if line.startswith('vm_rows_inserted_total{type="influx"}'):
                return int(float(line.split()[-1]))
        raise AssertionError('vm_rows_inserted_total{type="influx"} not in /metrics')

    def points_of(
        self, expected: dict[Key, dict[str, Any]], timeout: float = 15.0
    ) -> tuple[dict[Key, dict[str, Any]], int]:
        """:meth:`points`, once every expected key is searchable (VictoriaMetrics acknowledges a write
        before its in-memory parts are flushed, about once a second), or at the deadline."""
        deadline = time.monotonic() + timeout
        actual, dups = self.points()
        while expected.keys() - actual.keys() and time.monotonic() < deadline:
            time.sleep(0.25)
            actual, dups = self.points()
        return actual, dups

    def points(self) -> tuple[dict[Key, dict[str, Any]], int]:
        """Every sample, by point key, and how many samples had a duplicate timestamp."""
        _http("GET", self.url + "/internal/force_flush")
        status, body = _http(
            "POST",
            self.url + "/api/v1/export",
            urllib.parse.urlencode({"match[]": '{__name__=~".+"}'}).encode(),
            timeout=120,
        )
        assert status == 200, body[:500]
        out: dict[Key, dict[str, Any]] = {}
        dups = 0
        for line in body.decode().splitlines():
            series = json.loads(line)
            labels = series["metric"]
            name: str = labels["__name__"]
            for fld in ("value_int", "value_str", "received_at", "quality", "value"):
                if name.endswith("_" + fld):
                    measurement = name[: -len(fld) - 1]
                    break
            else:
                continue
            dups += len(series["timestamps"]) - len(set(series["timestamps"]))
            for ts, v in zip(series["timestamps"], series["values"], strict=True):
                out.setdefault((measurement, labels["device"], labels["metric"], int(ts)), {})[fld] = v
        return out, dups


@dataclass
class InfluxDB1(_Server):
    """InfluxDB 1.x on loopback with its own meta/data/wal folders."""

    rpc_port: int = field(default_factory=free_port)

    def start(self) -> InfluxDB1:
        d = self.workdir
        d.mkdir(parents=True, exist_ok=True)
        conf = d / "influxdb.conf"
        conf.write_text(
            f"""reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{d / "meta"}"
[data]
  dir = "{d / "data"}"
  wal-dir = "{d / "wal"}"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
  max-row-limit = 0
[ifql]
  enabled = false
""",
            encoding="utf-8",
        )
        self._spawn([_binary("influxd", "influxdb"), "-config", str(conf)], "/ping")
        return self

    def env(self, db: str = "firegw") -> dict[str, str]:
        return {"FIREGW_INFLUX__URL": self.url, "FIREGW_INFLUX__API": "v1", "FIREGW_INFLUX__BUCKET": db}

    def settings(self, **kw: Any) -> InfluxSettings:
        return InfluxSettings(url=self.url, api="v1", bucket="firegw", **kw)

    def query(self, q: str, db: str = "firegw") -> dict[str, Any]:
        qs = urllib.parse.urlencode({"db": db, "q": q, "epoch": "ms"})
        status, body = _http("POST", f"{self.url}/query?{qs}", b"", timeout=120)
        assert status == 200, body[:500]
        result: dict[str, Any] = json.loads(body)
        return result

    def write(self, lines: str, db: str = "firegw") -> int:
        return _http("POST", f"{self.url}/write?db={db}&precision=ms", lines.encode())[0]

    def points(self, db: str = "firegw") -> dict[Key, dict[str, Any]]:
        out: dict[Key, dict[str, Any]] = {}
        shown = self.query("SHOW MEASUREMENTS", db)["results"][0].get("series", [])
        names = [row[0] for s in shown for row in s["values"]]
        for name in names:
            res = self.query(f'SELECT * FROM "{name}"', db)["results"][0]
            for series in res.get("series", []):
                cols = series["columns"]
                for row in series["values"]:
                    rec = dict(zip(cols, row, strict=True))
                    fields = {
                        k: rec[k]
                        for k in ("value", "value_int", "value_str", "quality", "received_at")
                        if rec.get(k) is not None
                    }
                    out[(series["name"], rec["device"], rec["metric"], int(rec["time"]))] = fields
        return out


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    server = VictoriaMetrics(tmp_path / "vm").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def influx1(tmp_path: Path) -> Iterator[InfluxDB1]:
    server = InfluxDB1(tmp_path / "influxdb").start()
    try:
        server.query("CREATE DATABASE firegw")
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------- expectations


def expected_points(db: Path, catalog: Catalog, upto: tuple[int, int] | None = None) -> dict[Key, dict[str, Any]]:
    """What the database must hold: one point per reading in the embedded store (schema: gateway/sinks/influx.py).
    ``upto``: only the readings confirmed by the (bulk, urgent) cursors at these seqs."""
    field_of = {"float": "value", "int": "value_int", "bool": "value_int", "str": "value_str"}
    out: dict[Key, dict[str, Any]] = {}
    where = "" if upto is None else f" WHERE seq <= CASE urgent WHEN 0 THEN {int(upto[0])} ELSE {int(upto[1])} END"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        for dev, metric, ts, value, quality, received_at in conn.execute(
            "SELECT device_id, metric, ts, value, quality, received_at FROM readings" + where
        ):
            prof = catalog.profiles[catalog.devices[dev].profile]
            point = prof.point(metric)
            assert point is not None
            fld = field_of[point.type]
            v: Any = float(value) if fld == "value" else str(value) if fld == "value_str" else int(value)
            out[(prof.kind, dev, metric, ts)] = {fld: v, "quality": QUALITY_CODES[quality], "received_at": received_at}
    return out


def _equal(a: dict[str, Any], b: dict[str, Any], rel: float) -> bool:
    if a.keys() != b.keys():
        return False
    return all(
        a[k] == b[k] or (isinstance(a[k], float) and math.isclose(a[k], b[k], rel_tol=rel, abs_tol=0.0)) for k in a
    )


def assert_same(expected: dict[Key, dict[str, Any]], actual: dict[Key, dict[str, Any]], rel: float = 0.0) -> None:
    """Same points, same fields. ``rel``: VictoriaMetrics keeps floats to ~15 significant digits
    (0.4650000000000001 comes back as 0.465); InfluxDB keeps them exactly."""
    missing = expected.keys() - actual.keys()
    extra = actual.keys() - expected.keys()
    assert not missing and not extra, (
        f"{len(missing)} missing (e.g. {sorted(missing)[:3]}), {len(extra)} unexpected (e.g. {sorted(extra)[:3]})"
    )
    wrong = [(k, expected[k], actual[k]) for k in expected if not _equal(expected[k], actual[k], rel)]
    assert not wrong, f"{len(wrong)} points differ, e.g. {wrong[:3]}"


def assert_database_equals_store(
    server: VictoriaMetrics | InfluxDB1, db: Path, catalog: Catalog
) -> dict[Key, dict[str, Any]]:
    """Every reading of the store is in the database, once, with the same fields, and nothing else is."""
    expected = expected_points(db, catalog)
    if isinstance(server, VictoriaMetrics):
        actual, dups = server.points_of(expected)
        assert dups == 0
        assert_same(expected, actual, VM_REL)
    else:
        assert_same(expected, server.points())
    return expected


def cursors(db: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        return {k: int(v) for k, v in conn.execute("SELECT sink, seq FROM sink_cursors")}


def head(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        return int(conn.execute("SELECT coalesce(max(seq), 0) FROM readings").fetchone()[0])


def counter(db: Path, name: str) -> int:
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        row = conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0


def caught_up(db: Path) -> bool:
    cur = cursors(db)
    return bool(cur) and min(cur.values()) >= head(db)


# ---------------------------------------------------------------------------- forwarder runners


def _catalog(tmp_path: Path, devices: int, town: str | None = None) -> tuple[Catalog, Path]:
    inv = tmp_path / "inventory.yaml"
    write_inventory(inv, devices)
    if town is not None:  # a town name that needs escaping in line protocol
        data = yaml.safe_load(inv.read_text(encoding="utf-8"))
        data["sites"][0]["town"] = town
        data["sites"][0]["grid_cell"] = "AC 07,=x"
        inv.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return load_catalog(PROFILES, inv), inv


def _fill(
    db: Path, catalog: Catalog, n: int, *, urgent_every: int = 0, only: set[str] | None = None, t0: int | None = None
) -> None:
    """Write ``n`` readings straight into the store (as the committer would), round-robin over devices."""
    t0 = t0 if t0 is not None else int(time.time() * 1000) - 3_600_000
    with Store(db, synchronous="normal") as store, store.transaction():
        store.insert_readings(_readings(catalog, 0, n, t0, urgent_every=urgent_every, only=only))


def _readings(
    catalog: Catalog, first: int, n: int, t0: int, *, urgent_every: int = 0, only: set[str] | None = None
) -> list[Reading]:
    """Readings ``first`` .. ``first + n - 1`` of a round-robin over every point of every device,
    reading ``i`` at device time ``t0 + i``: each is its own point in the database."""
    pts = []
    for dev in catalog.inventory.devices:
        prof = catalog.profiles[dev.profile]
        if only is not None and prof.kind not in only:
            continue
        for p in prof.points:
            pts.append((dev, p))
    readings = []
    for i in range(first, first + n):
        dev, p = pts[i % len(pts)]
        value: bool | int | float | str
        if p.type == "bool":
            value = i % 2 == 0
        elif p.type == "int":
            value = i % 7
        elif p.type == "str":
            value = f"s {i}"
        else:
            value = round(0.3 + (i % 1000) / 997, 6)
        urgent = bool(urgent_every) and i % urgent_every == urgent_every - 1
        readings.append(
            Reading(
                dev.site_id,
                dev.device_id,
                p.name,
                value,
                p.unit,
                t0 + i,
                t0 + i + 5,
                Quality.SUSPECT if i % 11 == 0 else Quality.GOOD,
                urgent=urgent,
            )
        )
    return readings


def _settings(url: str, **kw: Any) -> InfluxSettings:
    return InfluxSettings(url=url, **kw)


# ---------------------------------------------------------------------------- unit tables


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("安昌街道", "安昌街道"),
        ("a b", r"a\ b"),
        ("a,b", r"a\,b"),
        ("a=b", r"a\=b"),
        ("a\\b", "a\\\\b"),
        ("line\nbreak", "line break"),
    ],
)
def test_tag_escaping(raw: str, escaped: str) -> None:
    assert escape_tag(raw) == escaped


def test_one_field_type_per_point_type(tmp_path: Path) -> None:
    catalog, _ = _catalog(tmp_path, 40)
    enc = LineEncoder(catalog)
    by_type: dict[str, set[str]] = {}
    for dev in catalog.inventory.devices:
        for p in catalog.profiles[dev.profile].points:
            raw: Any = {"bool": 1, "int": 3, "float": 2, "str": "x"}[p.type]  # as SQLite hands them back
            line = enc.encode((1, dev.device_id, p.name, 1000, raw, "replayed", 1005, dev.site_id, 0))
            fields = line.rsplit(" ", 2)[1]
            by_type.setdefault(p.type, set()).add(fields.split(",")[0].split("=")[0])
            assert fields.endswith(",quality=2i,received_at=1005i")
            if p.type == "float":
                assert "value=2.0," in fields
            elif p.type in ("int", "bool"):
                assert f"value_int={raw}i," in fields
    assert by_type["float"] == {"value"} and by_type["bool"] == {"value_int"} and by_type["int"] == {"value_int"}


# ---------------------------------------------------------------------------- outage + kill, end to end


def _outage_and_kill(
    tmp_path: Path, broker: Mosquitto, server: VictoriaMetrics | InfluxDB1, outage_s: float, influx_env: dict[str, str]
) -> None:
    catalog, inv = _catalog(tmp_path, DEVICES)
    base = {
        "FIREGW_MQTT__URL": broker.url,
        "FIREGW_INVENTORY": str(inv),
        "FIREGW_MQTT__CLIENT_ID": f"firegw-influx-{broker.port}",
        "FIREGW_PROFILES_DIR": str(PROFILES),
    }
    fwd_env = {**influx_env, "FIREGW_INFLUX__BATCH_SIZE": "500", "FIREGW_INFLUX__FLUSH_INTERVAL_S": "0.2"}
    gw = GatewayProc(tmp_path / "gw", env={**base, **fwd_env}).start()
    db = gw.db
    result: dict[str, Any] = {}

    def fleet() -> None:
        result.update(
            run_fleet(broker.url, "--devices", str(DEVICES), "--rate", str(RATE), "--duration", str(outage_s + 12))
        )

    t = threading.Thread(target=fleet)
    try:
        t.start()
        wait_for(lambda: cursors(db).get("influx", 0) > 0, 30, "readings forwarded while the database is up")
        time.sleep(1.0)
        server.stop()  # the outage
        down_at = time.monotonic()
        stuck = cursors(db)["influx"]
        wait_for(lambda: head(db) > stuck + 1000, 30, "a backlog building during the outage")
        time.sleep(max(0.0, outage_s - (time.monotonic() - down_at)))
        assert cursors(db)["influx"] == stuck, "the cursor moved while the database was down"
        backlog = head(db) - stuck
        server.start()  # same data folder: what was written before is still there
        wait_for(lambda: cursors(db)["influx"] > stuck, 30, "forwarding resumed after the outage")
        # killed once, mid-drain: a batch may be confirmed by the database and not yet by the cursor
        gw.kill()
        killed_at = cursors(db)["influx"]
        gw.start()
        t.join(120)
        assert result and result["unacknowledged"] == 0, result
        wait_for(
            lambda: store_stats(db).get("messages", 0) + store_stats(db).get("dead_letters", 0) >= result["sent"],
            60,
            "every message committed",
        )
        wait_for(lambda: caught_up(db), 60, "the forwarder caught up")
        assert store_stats(db)["forward_backlog"] == 0
        assert store_stats(db)["readings_stored"] == result["expected_readings"]
        print(
            f"outage {outage_s:.0f}s: backlog {backlog} readings; killed at cursor {killed_at}; "
            f"{result['expected_readings']} readings"
        )
        assert_database_equals_store(server, db, catalog)
    finally:
        t.join(120)
        gw.stop()


def test_victoriametrics_outage_and_kill_every_point_exactly_once(
    tmp_path: Path, broker: Mosquitto, vm: VictoriaMetrics
) -> None:
    _outage_and_kill(tmp_path, broker, vm, OUTAGE_VM_S, vm.env())


def test_influxdb1_outage_and_kill_every_point_exactly_once(
    tmp_path: Path, broker: Mosquitto, influx1: InfluxDB1
) -> None:
    _outage_and_kill(tmp_path, broker, influx1, OUTAGE_V1_S, influx1.env())


# ---------------------------------------------------------------------------- rejected points


def test_rejected_point_is_dead_lettered_and_the_rest_goes_on(tmp_path: Path, influx1: InfluxDB1) -> None:
    catalog, _ = _catalog(tmp_path, 40, town="East Town, A=1 东")
    db = tmp_path / "firegw.db"
    Store(db).open().close()
    t0 = int(time.time() * 1000) - 600_000
    _fill(db, catalog, 3000, urgent_every=10, only={"alarm_button", "smoke_detector", "pressure_sensor"}, t0=t0)
    _fill(db, catalog, 1, only={"level_sensor"}, t0=t0 + 5000)  # the one that will conflict
    # provoke a field type conflict: the same measurement and field, written first as a string
    assert influx1.write(f'level_sensor,device=other,metric=level value="not a number" {t0}') == 204
    fwd = Forwarder(
        settings=_settings(influx1.url, api="v1", bucket="firegw", batch_size=1000, flush_interval_s=0.1),
        catalog=catalog,
        store_path=db,
        health=Health(),
    )
    run = RunningInThread(fwd, name="forwarder", timeout=30)
    try:
        wait_for(lambda: caught_up(db), 30, "every reading confirmed or dead-lettered")
    finally:
        run.stop()
    with Store(db) as store:
        dead = [d for d in store.dead_letters() if d["source"] == "influx"]
    assert len(dead) == 1, dead
    assert dead[0]["address"] == "influx" and "field type conflict" in dead[0]["reason"]
    assert dead[0]["payload"].startswith("level_sensor,") and dead[0]["device_id"]
    assert counter(db, "forward_rejected") == 1
    expected = expected_points(db, catalog)
    rejected = {k for k in expected if k[0] == "level_sensor"}
    assert len(rejected) == 1
    actual = influx1.points()
    actual.pop(("level_sensor", "other", "level", t0))
    assert_same({k: v for k, v in expected.items() if k not in rejected}, actual)
    # tags that need escaping (spaces, commas, equals signs, Chinese) arrive intact
    towns = influx1.query('SHOW TAG VALUES WITH KEY IN ("town", "grid_cell")')["results"][0]["series"]
    values = {v for s in towns for _, v in s["values"]}
    assert {"East Town, A=1 东", "AC 07,=x"} <= values


# ---------------------------------------------------------------------------- eviction bound


def test_eviction_bound_evicts_oldest_bulk_and_keeps_every_urgent(tmp_path: Path) -> None:
    catalog, _ = _catalog(tmp_path, 40)
    db = tmp_path / "firegw.db"
    Store(db).open().close()
    _fill(db, catalog, 6000, urgent_every=40)
    with contextlib.closing(sqlite3.connect(db)) as c:
        bulk_before = [s for (s,) in c.execute("SELECT seq FROM readings WHERE urgent = 0 ORDER BY seq")]
        urgent_before = [s for (s,) in c.execute("SELECT seq FROM readings WHERE urgent = 1 ORDER BY seq")]
    port = free_port()  # nothing listens here yet: the database is down
    health = Health()
    batch = 200
    fwd = Forwarder(
        settings=_settings(f"http://127.0.0.1:{port}", batch_size=batch, max_backlog_mb=0.1, flush_interval_s=0.1),
        catalog=catalog,
        store_path=db,
        health=health,
        backoff_min_s=0.05,
        backoff_max_s=0.3,
    )
    run = RunningInThread(fwd, name="forwarder", timeout=30)
    server: VictoriaMetrics | None = None
    try:
        wait_for(lambda: counter(db, "evicted") > 0, 20, "eviction while the database is down")
        time.sleep(2.5)  # one more check: now under the bound, nothing more goes
        evicted = counter(db, "evicted")
        with contextlib.closing(sqlite3.connect(db)) as c:
            bulk_after = [s for (s,) in c.execute("SELECT seq FROM readings WHERE urgent = 0 ORDER BY seq")]
            urgent_after = [s for (s,) in c.execute("SELECT seq FROM readings WHERE urgent = 1 ORDER BY seq")]
        assert urgent_after == urgent_before, "an urgent reading was evicted"
        assert evicted == len(bulk_before) - len(bulk_after) > 0
        # the batch in flight is kept; after it, the oldest went first: what is left is the newest
        in_flight = bulk_before[:batch]
        assert bulk_after == in_flight + bulk_before[len(bulk_before) - (len(bulk_after) - batch) :]
        stage = health.stage("forwarder:influx")
        assert stage.counters.get("evicted") == evicted and stage.connected is False
        assert 400 < len(bulk_after) + len(urgent_after) < 900  # ~0.1 MB of rows of ~130 bytes
        # the database comes back: what is left is forwarded, once
        server = VictoriaMetrics(tmp_path / "vm", port=port, dedup=False).start()
        wait_for(lambda: caught_up(db), 30, "the rest forwarded after the outage")
        assert stage.connected is True
        expected = expected_points(db, catalog)
        actual, dups = server.points_of(expected)
        assert dups == 0
        assert_same(expected, actual, VM_REL)
    finally:
        run.stop()
        if server is not None:
            server.stop()


# ---------------------------------------------------------------------------- urgent ahead of a backlog


def test_urgent_readings_overtake_a_draining_backlog(tmp_path: Path) -> None:
    catalog, _ = _catalog(tmp_path, 200)
    db = tmp_path / "firegw.db"
    Store(db).open().close()
    backlog = 300_000
    _fill(db, catalog, backlog, only={"pressure_sensor", "level_sensor", "smoke_detector"})
    server = VictoriaMetrics(tmp_path / "vm", dedup=False).start()  # no dedup: a re-sent sample would show
    fwd = Forwarder(
        settings=_settings(server.url, token="t", org="o", bucket="b"), catalog=catalog, store_path=db, health=Health()
    )
    button = next(d for d in catalog.inventory.devices if d.profile == "onekey-alarm-button")
    latencies: list[tuple[float, int]] = []
    run = RunningInThread(fwd, name="forwarder", timeout=30)
    try:
        wait_for(lambda: cursors(db).get("influx", 0) > 0, 30, "the backlog draining")
        with Store(db, synchronous="normal") as store:
            for i in range(8):
                ts = int(time.time() * 1000)
                with store.transaction():  # as the committer does: commit, then wake the forwarder
                    store.insert_readings(
                        [Reading(button.site_id, button.device_id, "fire_alarm", i % 2 == 0, "", ts, ts, urgent=True)]
                    )
                seq = head(db)
                committed = time.monotonic()
                fwd.wake()
                while cursors(db)["influx:urgent"] < seq:
                    assert time.monotonic() - committed < 10, "the alarm was not forwarded within 10 s"
                    time.sleep(0.002)
                latencies.append((time.monotonic() - committed, seq - cursors(db)["influx"]))
                time.sleep(0.05)
        wait_for(lambda: caught_up(db), 60, "the backlog drained")
    finally:
        run.stop()
    try:
        print("urgent forward latency (s, bulk readings still ahead):", [(round(t, 3), n) for t, n in latencies])
        overtaken = [t for t, ahead in latencies if ahead > 20_000]
        assert len(overtaken) >= 3, latencies  # sent while a large backlog was still queued before them
        assert max(overtaken) < 1.0, latencies
        expected = expected_points(db, catalog)
        actual, dups = server.points_of(expected)
        assert dups == 0
        assert_same(expected, actual, VM_REL)
        assert server.rows_inserted() == 3 * len(expected)  # each reading crossed the wire exactly once
    finally:
        server.stop()


# ---------------------------------------------------------------------------- the database's own crash


@pytest.mark.parametrize(
    ("history", "cutoff", "cursor", "floor", "expected"),
    [
        # the anchor (newest position at or before the cutoff) and everything after it count
        ([(1000, 10), (2000, 20), (3000, 30)], 2500, 40, 0, (20, True)),
        ([(1000, 10), (2000, 20), (3000, 30)], 2000, 40, 0, (20, True)),  # a position at the cutoff is its anchor
        ([(1000, 10), (2000, 20), (3000, 30)], 9000, 40, 0, (30, True)),  # nothing confirmed since the last one
        # the history starts after the cutoff: its oldest position, and say so
        ([(1000, 10), (2000, 20)], 500, 40, 0, (10, False)),
        ([], 500, 40, 0, (40, False)),  # nothing known: nothing to go back to
        # an earlier rewind (recorded) lies below the anchor's position: the lowest since the anchor counts
        ([(1000, 10), (2000, 50), (2500, 20), (3000, 60)], 2200, 70, 0, (20, True)),
        ([(1000, 10), (2000, 50), (2500, 20), (3000, 60)], 2600, 70, 0, (20, True)),
        ([(1000, 10), (2000, 50), (2500, 20), (3000, 60)], 3000, 70, 0, (60, True)),
        # never below what retention pruned, never above the furthest the cursor has been
        ([(1000, 10), (2000, 20)], 1500, 40, 15, (15, True)),
        ([(1000, 10), (2000, 20)], 1500, 40, 45, (40, True)),
        ([(1000, 30)], 1500, 25, 0, (25, True)),
    ],
)
def test_rewind_point(
    history: list[tuple[int, int]], cutoff: int, cursor: int, floor: int, expected: tuple[int, bool]
) -> None:
    assert rewind_point(history, cutoff, cursor, floor) == expected


def test_cursor_history_in_the_store_keeps_its_anchor(tmp_path: Path) -> None:
    with Store(tmp_path / "firegw.db") as store:
        conn = store.conn
        conn.execute("INSERT INTO sink_cursors VALUES ('x', 60, 0)")
        for at, seq in [(1000, 10), (2000, 20), (3000, 30), (4000, 5), (5000, 40)]:
            record_cursor(conn, "x", at, seq)
        record_cursor(conn, "y", 2500, 99)  # another cursor's history is its own
        assert cursor_history(conn, "x", 2500) == [(2000, 20), (3000, 30), (4000, 5), (5000, 40)]
        assert rewind_point(cursor_history(conn, "x", 2500), 2500, 60) == (5, True)
        assert rewind_point(cursor_history(conn, "x", 4500), 4500, 60) == (5, True)
        assert rewind_point(cursor_history(conn, "x", 5000), 5000, 60) == (40, True)
        assert prune_cursor_history(conn, "x", 2500) == 1  # (1000, 10) goes; (2000, 20) is the anchor for 2500
        assert cursor_history(conn, "x", 0) == [(2000, 20), (3000, 30), (4000, 5), (5000, 40)]
        assert prune_cursor_history(conn, "x", 1500) == 0
        assert cursor_history(conn, "y", 0) == [(2500, 99)]
        assert cursor_high(conn, "x") == 60  # its row is further than its history
        # a rewind never moves a cursor forward, and is remembered
        assert rewind_cursor(conn, "x", 70, 6000) == 60
        assert rewind_cursor(conn, "x", 25, 6001) == 25
        assert cursor_history(conn, "x", 5500)[-2:] == [(6000, 60), (6001, 25)]
        assert cursor_high(conn, "x") == 60


class _FakeInfluxDB2(ThreadingHTTPServer):
    """Speaks as much of InfluxDB 2.x as the forwarder uses: ``POST /api/v2/write`` (every line kept,
    with how often it came) and ``GET /ready`` with its ``started`` (None: 404, as a server without it)."""

    def __init__(self) -> None:
        self.started: str | None = "2026-11-29T08:00:00.000000001Z"
        self.received: dict[str, int] = {}
        self.gets = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _FakeHandler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _FakeHandler(BaseHTTPRequestHandler):
    server: _FakeInfluxDB2

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        with self.server.lock:
            for line in body.decode().splitlines():
                self.server.received[line] = self.server.received.get(line, 0) + 1
        self.send_response(204)
        self.end_headers()

    def do_GET(self) -> None:
        self.server.gets += 1
        started = self.server.started
        if self.path != "/ready" or started is None:
            self.send_response(404)
            self.end_headers()
            return
        body = json.dumps({"status": "ready", "started": started, "up": "1m0s"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _restart_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "database restarted" in r.getMessage()]


def test_influxdb2_started_changes_so_everything_confirmed_in_the_window_is_sent_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """InfluxDB 2.x (not installed here): its ``/ready`` ``started`` as the identity; a new one
    re-sends what was confirmed in the window (here: everything, all of it just confirmed)."""
    monkeypatch.setattr(forwarder_module, "IDLE_CHECK_S", 0.2)  # no new readings: the idle probe notices
    caplog.set_level(logging.INFO, logger="gateway.sinks.forwarder")
    catalog, _ = _catalog(tmp_path, 40)
    db = tmp_path / "firegw.db"
    Store(db).open().close()
    _fill(db, catalog, 3000, urgent_every=10)
    server = _FakeInfluxDB2()
    health = Health()
    fwd = Forwarder(
        settings=_settings(server.url, token="t", org="o", bucket="b", flush_interval_s=0.1),
        catalog=catalog,
        store_path=db,
        health=health,
    )
    run = RunningInThread(fwd, name="forwarder", timeout=30)
    try:
        wait_for(lambda: caught_up(db) and _instance(db) is not None, 30, "everything forwarded, identity recorded")
        assert len(server.received) == 3000 and set(server.received.values()) == {1}
        assert (_instance(db) or ("",))[0] == "GET /ready started=2026-11-29T08:00:00.000000001Z"
        server.started = "2026-11-29T08:05:00.000000001Z"  # it restarted
        stage = health.stage("forwarder:influx")
        wait_for(lambda: stage.counters.get("database_restarts") == 1, 30, "the restart noticed")
        wait_for(lambda: caught_up(db) and set(server.received.values()) == {2}, 30, "everything sent again")
        wait_for(lambda: (_instance(db) or ("",))[0].endswith("08:05:00.000000001Z"), 10, "the new identity recorded")
    finally:
        run.stop()
        server.stop()
    assert stage.counters["resent"] == 3000
    assert _restart_records(caplog) == [
        "influx: database restarted (GET /ready started=2026-11-29T08:05:00.000000001Z, was GET /ready "
        "started=2026-11-29T08:00:00.000000001Z), re-sending 3000 readings from the last 60 s"
    ]


def test_no_identity_is_said_once_and_forwarding_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(forwarder_module, "UNKNOWN_RETRY_S", 0.1)
    caplog.set_level(logging.INFO, logger="gateway.sinks.forwarder")
    catalog, _ = _catalog(tmp_path, 40)
    db = tmp_path / "firegw.db"
    Store(db).open().close()
    _fill(db, catalog, 500)
    server = _FakeInfluxDB2()
    server.started = None
    health = Health()
    fwd = Forwarder(
        settings=_settings(server.url, token="t", org="o", bucket="b", flush_interval_s=0.1),
        catalog=catalog,
        store_path=db,
        health=health,
    )
    run = RunningInThread(fwd, name="forwarder", timeout=30)
    probes_before = server.gets
    try:
        wait_for(lambda: caught_up(db), 30, "everything forwarded")
        wait_for(lambda: server.gets >= probes_before + 5, 10, "the identity looked for again, and again")
        server.started = "2026-11-29T08:00:00Z"
        wait_for(lambda: _instance(db) is not None, 10, "an identity once the database tells it")
    finally:
        run.stop()
        server.stop()
    assert len(server.received) == 500
    said = [r for r in caplog.records if "cannot tell when the database restarts" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING, said
    assert "GET /ready: HTTP 404" in said[0].getMessage() and "GET /metrics: HTTP 404" in said[0].getMessage()
    assert any("detectable again" in r.getMessage() for r in caplog.records)
    assert not _restart_records(caplog)  # a first identity is no restart


def _instance(db: Path) -> tuple[str, int] | None:
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        return sink_instance(conn, "influx")


class _Stream:
    """Readings committed to the store as a committer would, ``per_tick`` every ``tick_s``, each commit
    followed by a wake of the forwarder; every 10th reading urgent."""

    def __init__(
        self, db: Path, catalog: Catalog, wake: Callable[[], None], *, per_tick: int = 50, tick_s: float = 0.02
    ) -> None:
        self.db, self.catalog, self.wake = db, catalog, wake
        self.per_tick, self.tick_s = per_tick, tick_s
        self.t0 = int(time.time() * 1000) - 3_600_000  # device times in the past: every one can be exported
        self.sent = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with Store(self.db, synchronous="normal") as store:
                while not self._stop.wait(self.tick_s):
                    with store.transaction():
                        store.insert_readings(
                            _readings(self.catalog, self.sent, self.per_tick, self.t0, urgent_every=10)
                        )
                    self.sent += self.per_tick
                    self.wake()
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive()
        if self.error is not None:
            raise self.error


def _kill_mid_stream(
    tmp_path: Path, server: VictoriaMetrics | InfluxDB1, caplog: pytest.LogCaptureFixture, *, gateway_too: bool
) -> None:
    """Stream readings through a forwarder; SIGKILL the database mid-stream; restart it on the same
    data folder (with ``gateway_too``, the forwarder and the stream stop with the database and come
    back after it, as on one machine losing power). Afterwards the database holds exactly the store's
    readings: each once, none missing."""
    caplog.set_level(logging.INFO, logger="gateway.sinks.forwarder")
    catalog, _ = _catalog(tmp_path, 40)
    db = tmp_path / "firegw.db"
    Store(db).open().close()
    health = Health()
    stage = health.stage("forwarder:influx")

    def forwarder() -> Forwarder:
        return Forwarder(
            settings=server.settings(batch_size=1000, flush_interval_s=0.2),
            catalog=catalog,
            store_path=db,
            health=health,
            backoff_min_s=0.1,
            backoff_max_s=1.0,
        )

    fwd = forwarder()
    run = RunningInThread(fwd, name="forwarder", timeout=30)
    stream = _Stream(db, catalog, fwd.wake)
    lost = -1
    try:
        wait_for(lambda: _instance(db) is not None, 30, "the database's identity recorded")
        wait_for(lambda: cursors(db)["influx"] > 5000, 30, "a stream forwarded")
        server.kill()
        if gateway_too:
            stream.stop()
            run.stop()
        at_kill = cursors(db)
        confirmed = expected_points(db, catalog, (at_kill["influx"], at_kill["influx:urgent"]))
        if not gateway_too:
            wait_for(lambda: head(db) > at_kill["influx"] + 2000, 30, "a backlog while the database is down")
        server.start()  # the same data folder
        if gateway_too:  # what the database lost of what it had confirmed, before anything is re-sent
            lost = len(
                confirmed.keys()
                - (server.points()[0] if isinstance(server, VictoriaMetrics) else server.points()).keys()
            )
            fwd = forwarder()
            run = RunningInThread(fwd, name="forwarder", timeout=30)
            stream = _Stream(db, catalog, fwd.wake)
            stream.t0 -= 3_600_000  # device times of its own
        wait_for(lambda: stage.counters.get("database_restarts") == 1, 30, "the restart noticed")
        at_restart = head(db)
        wait_for(lambda: cursors(db)["influx"] > at_restart + 2000, 30, "the stream forwarded after the restart")
    finally:
        stream.stop()
    try:
        wait_for(lambda: caught_up(db), 60, "everything forwarded")
    finally:
        run.stop()
    expected = assert_database_equals_store(server, db, catalog)
    assert stage.counters["database_restarts"] == 1
    assert stage.counters["resent"] > 0
    said = _restart_records(caplog)
    assert len(said) == 1 and "re-sending" in said[0] and "from the last 60 s" in said[0], said
    print(
        f"{type(server).__name__}{' and forwarder' if gateway_too else ''} killed mid-stream: "
        f"{len(expected)} readings; {len(confirmed)} confirmed at the kill"
        f"{f', {lost} of them missing after the restart' if lost >= 0 else ''}; "
        f"{stage.counters['resent']} re-sent; {said[0]}"
    )


@pytest.mark.fault
@pytest.mark.parametrize("gateway_too", [False, True], ids=["database", "database-and-forwarder"])
def test_victoriametrics_killed_mid_stream_loses_nothing_it_confirmed(
    tmp_path: Path, vm: VictoriaMetrics, caplog: pytest.LogCaptureFixture, gateway_too: bool
) -> None:
    _kill_mid_stream(tmp_path, vm, caplog, gateway_too=gateway_too)


@pytest.mark.fault
@pytest.mark.parametrize("gateway_too", [False, True], ids=["database", "database-and-forwarder"])
def test_influxdb1_killed_mid_stream_loses_nothing_it_confirmed(
    tmp_path: Path, influx1: InfluxDB1, caplog: pytest.LogCaptureFixture, gateway_too: bool
) -> None:
    _kill_mid_stream(tmp_path, influx1, caplog, gateway_too=gateway_too)


@pytest.mark.parametrize("api", ["v2", "v1"])
def test_victoriametrics_identity_is_its_start_time(vm: VictoriaMetrics, api: str) -> None:
    s = vm.settings() if api == "v2" else InfluxSettings(url=vm.url, api="v1", bucket="firegw")
    with InfluxSink(s) as sink:
        first = sink.instance()
        assert first.identity is not None and first.identity.startswith("GET /metrics process_start_time_seconds=")
        assert sink.instance() == first  # asked again: the same
        # its start time is in whole seconds: one that lived under a second is not told from the next
        started = int(first.identity.rpartition("=")[2])
        wait_for(lambda: time.time() >= started + 1.0, 5, "VictoriaMetrics up for a second")
        vm.kill()
        with pytest.raises(SinkUnavailable):
            sink.instance()
        vm.start()
        again = sink.instance()
        assert again.identity is not None and again.identity != first.identity


def test_influxdb1_identity_is_its_start_time(influx1: InfluxDB1) -> None:
    with InfluxSink(influx1.settings()) as sink:
        first = sink.instance()
        assert first.identity is not None and first.identity.startswith("GET /debug/vars system.started=")
        assert sink.instance() == first
        influx1.kill()
        influx1.start()
        again = sink.instance()
        assert again.identity is not None and again.identity != first.identity


# ---------------------------------------------------------------------------- TLS (influx.tls)


class _TlsFakeInfluxDB2(_FakeInfluxDB2):
    """The fake over HTTPS, wanting a client certificate signed by ``ca``."""

    def __init__(self, cert: Path, key: Path, ca: Path) -> None:
        super().__init__()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        ctx.load_verify_locations(cafile=str(ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
        self.socket = ctx.wrap_socket(self.socket, server_side=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server_address[1]}"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.integration.test_mqtt_tls import _make_ca, _openssl

    d = tmp_path_factory.mktemp("influx-certs")
    _make_ca(d, "ca")
    _make_ca(d, "rogue-ca")
    for name, san in (("server", "IP:127.0.0.1"), ("misnamed", "DNS:elsewhere.example"), ("client", None)):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=d,
        )
        ext = ["-extfile", f"{name}.cnf"] if san else []
        if san:
            (d / f"{name}.cnf").write_text(f"subjectAltName={san}\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            *ext,
            "-out",
            f"{name}.crt",
            cwd=d,
        )
    return d


@pytest.mark.parametrize("api", ["v2", "v1"])
@pytest.mark.parametrize(
    ("server", "tls", "works"),
    [
        ("server", {"ca_file": "ca.crt", "cert_file": "client.crt", "key_file": "client.key"}, True),
        ("server", {"ca_file": "ca.crt"}, False),  # no client certificate
        ("server", {"ca_file": "rogue-ca.crt", "cert_file": "client.crt", "key_file": "client.key"}, False),
        ("misnamed", {"ca_file": "ca.crt", "cert_file": "client.crt", "key_file": "client.key"}, False),
        (
            "misnamed",
            {"ca_file": "ca.crt", "cert_file": "client.crt", "key_file": "client.key", "check_hostname": False},
            True,
        ),
        pytest.param(
            "misnamed",
            {"verify": False, "cert_file": "client.crt", "key_file": "client.key"},
            True,
            marks=pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning"),
        ),
    ],
)
def test_influx_tls_block_checks_the_database_and_presents_a_client_certificate(
    certs: Path, api: str, server: str, tls: dict[str, Any], works: bool
) -> None:
    db = _TlsFakeInfluxDB2(certs / f"{server}.crt", certs / f"{server}.key", certs / "ca.crt")
    given = {k: str(certs / v) if isinstance(v, str) else v for k, v in tls.items()}
    sink = InfluxSink(InfluxSettings.model_validate({"url": db.url, "api": api, "tls": given, "timeout_s": 5}))
    try:
        if works:
            assert sink.write(["m,device=d value=1.0 1764400000000"]) == []
            assert db.received == {"m,device=d value=1.0 1764400000000": 1}
            assert sink.instance().identity == f"GET /ready started={db.started}"  # the probe uses it too
        else:
            with pytest.raises(SinkUnavailable):
                sink.write(["m,device=d value=1.0 1764400000000"])
            assert db.received == {}
    finally:
        sink.close()
        db.stop()


def test_influx_flat_verify_tls_key_still_switches_verification_off(certs: Path) -> None:
    settings = InfluxSettings.model_validate(
        {"url": "https://127.0.0.1:1", "verify_tls": False, "ca_file": str(certs / "ca.crt")}
    )
    assert (settings.tls.verify, settings.tls.ca_file) == (False, certs / "ca.crt")
