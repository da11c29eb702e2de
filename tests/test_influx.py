"""Store-and-forward to real time-series databases the tests start: VictoriaMetrics (through
``influxdb-client``'s ``/api/v2/write``) and InfluxDB 1.6 (``/write``).

Every scenario compares the database with the embedded store, point by point: the same readings,
once each, with the same value, quality, receive time and device time.

The outage scenarios run ``firegw run`` as a process fed by the MQTT fleet over a real Mosquitto.
When ``gateway/pipeline.py`` wires the forwarder (``influx.url`` set), the gateway forwards and is
the process killed; until then the forwarder runs as its own process over the gateway's store
(``python -m gateway.sinks.forwarder``) and both are killed together. The other scenarios run a
:class:`Forwarder` in-process over a store filled directly.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.health import Health
from gateway.models import Quality, Reading
from gateway.profiles.loader import Catalog, load_catalog
from gateway.settings import InfluxSettings
from gateway.sinks.forwarder import Forwarder
from gateway.sinks.influx import QUALITY_CODES, LineEncoder, escape_tag
from gateway.store.sqlite import Store
from simulators.broker import Mosquitto, free_port
from tests.support import (
    PROFILES,
    PYTHON,
    ROOT,
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
WIRED = "Forwarder(" in (ROOT / "gateway" / "pipeline.py").read_text(encoding="utf-8")

VM_REL = 1e-12  # VictoriaMetrics' float precision
Key = tuple[str, str, str, int]  # measurement, device, metric, device time


# ---------------------------------------------------------------------------- servers


def _binary(name: str, package: str) -> str:
    """The server's binary; installs the Debian package when missing. A missing server fails the test."""
    def find() -> str | None:
        return shutil.which(name) or next((p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if Path(p).exists()),
                                          None)
    found = find()
    if found is None:
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "install", "-y", "-qq", package], ["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", package]):
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

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


@dataclass
class VictoriaMetrics(_Server):
    """VictoriaMetrics on loopback; ``dedup`` makes a re-sent sample overwrite (one per millisecond)."""

    dedup: bool = True

    def start(self) -> VictoriaMetrics:
        args = [_binary("victoria-metrics", "victoria-metrics"), f"-httpListenAddr=127.0.0.1:{self.port}",
                f"-storageDataPath={self.workdir / 'data'}", "-retentionPeriod=100y", "-loggerLevel=ERROR"]
        if self.dedup:
            args.append("-dedup.minScrapeInterval=1ms")
        self._spawn(args, "/health")
        return self

    def env(self) -> dict[str, str]:
        return {"FIREGW_INFLUX__URL": self.url, "FIREGW_INFLUX__API": "v2", "FIREGW_INFLUX__TOKEN": "unused",
                "FIREGW_INFLUX__ORG": "firegw", "FIREGW_INFLUX__BUCKET": "firegw"}

    def rows_inserted(self) -> int:
        """Samples received over the influx protocol (three per line: value, quality, received_at)."""
        _, body = _http("GET", self.url + "/metrics")
        for line in body.decode().splitlines():
            if line.startswith('vm_rows_inserted_total{type="influx"}'):
                return int(float(line.split()[-1]))
        raise AssertionError("vm_rows_inserted_total{type=\"influx\"} not in /metrics")

    def points_of(self, expected: dict[Key, dict[str, Any]], timeout: float = 15.0
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
        status, body = _http("POST", self.url + "/api/v1/export",
                             urllib.parse.urlencode({"match[]": '{__name__=~".+"}'}).encode(), timeout=120)
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
        conf.write_text(f"""reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{d / 'meta'}"
[data]
  dir = "{d / 'data'}"
  wal-dir = "{d / 'wal'}"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
  max-row-limit = 0
[ifql]
  enabled = false
""", encoding="utf-8")
        self._spawn([_binary("influxd", "influxdb"), "-config", str(conf)], "/ping")
        return self

    def env(self, db: str = "firegw") -> dict[str, str]:
        return {"FIREGW_INFLUX__URL": self.url, "FIREGW_INFLUX__API": "v1", "FIREGW_INFLUX__BUCKET": db}

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
                    fields = {k: rec[k] for k in ("value", "value_int", "value_str", "quality", "received_at")
                              if rec.get(k) is not None}
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


def expected_points(db: Path, catalog: Catalog) -> dict[Key, dict[str, Any]]:
    """What the database must hold: one point per reading in the embedded store (schema: gateway/sinks/influx.py)."""
    field_of = {"float": "value", "int": "value_int", "bool": "value_int", "str": "value_str"}
    out: dict[Key, dict[str, Any]] = {}
    with contextlib.closing(sqlite3.connect(db)) as conn:
        for dev, metric, ts, value, quality, received_at in conn.execute(
                "SELECT device_id, metric, ts, value, quality, received_at FROM readings"):
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
    return all(a[k] == b[k] or (isinstance(a[k], float) and math.isclose(a[k], b[k], rel_tol=rel, abs_tol=0.0))
               for k in a)


def assert_same(expected: dict[Key, dict[str, Any]], actual: dict[Key, dict[str, Any]], rel: float = 0.0) -> None:
    """Same points, same fields. ``rel``: VictoriaMetrics keeps floats to ~15 significant digits
    (0.4650000000000001 comes back as 0.465); InfluxDB keeps them exactly."""
    missing = expected.keys() - actual.keys()
    extra = actual.keys() - expected.keys()
    assert not missing and not extra, (f"{len(missing)} missing (e.g. {sorted(missing)[:3]}), "
                                       f"{len(extra)} unexpected (e.g. {sorted(extra)[:3]})")
    wrong = [(k, expected[k], actual[k]) for k in expected if not _equal(expected[k], actual[k], rel)]
    assert not wrong, f"{len(wrong)} points differ, e.g. {wrong[:3]}"


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


@dataclass
class ForwarderProc:
    """``python -m gateway.sinks.forwarder`` as a real process (until the pipeline wires it in)."""

    workdir: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ForwarderProc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with (self.workdir / "forwarder.log").open("ab") as log:
            self.proc = subprocess.Popen([PYTHON, "-m", "gateway.sinks.forwarder"], env={**os.environ, **self.env},
                                         cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        return self

    def log(self) -> str:
        return (self.workdir / "forwarder.log").read_text(errors="replace")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"forwarder did not stop:\n{self.log()[-2000:]}") from None
        rc = self.proc.returncode
        self.proc = None
        return int(rc)


def _catalog(tmp_path: Path, devices: int, town: str | None = None) -> tuple[Catalog, Path]:
    inv = tmp_path / "inventory.yaml"
    write_inventory(inv, devices)
    if town is not None:  # a town name that needs escaping in line protocol
        data = yaml.safe_load(inv.read_text(encoding="utf-8"))
        data["sites"][0]["town"] = town
        data["sites"][0]["grid_cell"] = "AC 07,=x"
        inv.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return load_catalog(PROFILES, inv), inv


def _fill(db: Path, catalog: Catalog, n: int, *, urgent_every: int = 0, only: set[str] | None = None,
          t0: int | None = None) -> None:
    """Write ``n`` readings straight into the store (as the committer would), round-robin over devices."""
    t0 = t0 if t0 is not None else int(time.time() * 1000) - 3_600_000
    pts = []
    for dev in catalog.inventory.devices:
        prof = catalog.profiles[dev.profile]
        if only is not None and prof.kind not in only:
            continue
        for p in prof.points:
            pts.append((dev, p))
    readings = []
    for i in range(n):
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
        readings.append(Reading(dev.site_id, dev.device_id, p.name, value, p.unit, t0 + i, t0 + i + 5,
                                Quality.SUSPECT if i % 11 == 0 else Quality.GOOD, urgent=urgent))
    with Store(db, synchronous="normal") as store, store.transaction():
        store.insert_readings(readings)


def _settings(url: str, **kw: Any) -> InfluxSettings:
    return InfluxSettings(url=url, **kw)


# ---------------------------------------------------------------------------- unit tables


@pytest.mark.parametrize(("raw", "escaped"), [
    ("安昌街道", "安昌街道"), ("a b", r"a\ b"), ("a,b", r"a\,b"), ("a=b", r"a\=b"), ("a\\b", "a\\\\b"),
    ("line\nbreak", "line break"),
])
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


def _outage_and_kill(tmp_path: Path, broker: Mosquitto, server: VictoriaMetrics | InfluxDB1, outage_s: float,
                     influx_env: dict[str, str]) -> None:
    catalog, inv = _catalog(tmp_path, DEVICES)
    base = {"FIREGW_MQTT__URL": broker.url, "FIREGW_INVENTORY": str(inv),
            "FIREGW_MQTT__CLIENT_ID": f"firegw-influx-{broker.port}", "FIREGW_PROFILES_DIR": str(PROFILES)}
    fwd_env = {**influx_env, "FIREGW_INFLUX__BATCH_SIZE": "500", "FIREGW_INFLUX__FLUSH_INTERVAL_S": "0.2"}
    gw = GatewayProc(tmp_path / "gw", env={**base, **(fwd_env if WIRED else {})}).start()
    db = gw.db
    fwd = None if WIRED else ForwarderProc(tmp_path / "fwd", {**base, **fwd_env, "FIREGW_STORE__PATH": str(db)})
    result: dict[str, Any] = {}

    def fleet() -> None:
        result.update(run_fleet(broker.url, "--devices", str(DEVICES), "--rate", str(RATE),
                                "--duration", str(outage_s + 12)))

    t = threading.Thread(target=fleet)
    try:
        if fwd is not None:
            fwd.start()
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
        if fwd is not None:
            fwd.kill()
        killed_at = cursors(db)["influx"]
        gw.start()
        if fwd is not None:
            fwd.start()
        t.join(120)
        assert result and result["unacknowledged"] == 0, result
        wait_for(lambda: (store_stats(db).get("messages", 0) + store_stats(db).get("dead_letters", 0)
                          >= result["sent"]), 60, "every message committed")
        wait_for(lambda: caught_up(db), 60, "the forwarder caught up")
        assert store_stats(db)["forward_backlog"] == 0
        assert store_stats(db)["readings_stored"] == result["expected_readings"]
        print(f"outage {outage_s:.0f}s: backlog {backlog} readings; killed at cursor {killed_at}; "
              f"{result['expected_readings']} readings")
        expected = expected_points(db, catalog)
        if isinstance(server, VictoriaMetrics):
            actual, dups = server.points_of(expected)
            assert dups == 0
            assert_same(expected, actual, VM_REL)
        else:
            assert_same(expected, server.points())
    finally:
        t.join(120)
        gw.stop()
        if fwd is not None:
            fwd.stop()


def test_victoriametrics_outage_and_kill_every_point_exactly_once(tmp_path: Path, broker: Mosquitto,
                                                                  vm: VictoriaMetrics) -> None:
    _outage_and_kill(tmp_path, broker, vm, OUTAGE_VM_S, vm.env())


def test_influxdb1_outage_and_kill_every_point_exactly_once(tmp_path: Path, broker: Mosquitto,
                                                            influx1: InfluxDB1) -> None:
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
    fwd = Forwarder(settings=_settings(influx1.url, api="v1", bucket="firegw", batch_size=1000,
                                       flush_interval_s=0.1), catalog=catalog, store_path=db, health=Health())
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
    fwd = Forwarder(settings=_settings(f"http://127.0.0.1:{port}", batch_size=batch, max_backlog_mb=0.1,
                                       flush_interval_s=0.1), catalog=catalog, store_path=db, health=health,
                    backoff_min_s=0.05, backoff_max_s=0.3)
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
        assert bulk_after == in_flight + bulk_before[len(bulk_before) - (len(bulk_after) - batch):]
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
    fwd = Forwarder(settings=_settings(server.url, token="t", org="o", bucket="b"), catalog=catalog,
                    store_path=db, health=Health())
    button = next(d for d in catalog.inventory.devices if d.profile == "onekey-alarm-button")
    latencies: list[tuple[float, int]] = []
    run = RunningInThread(fwd, name="forwarder", timeout=30)
    try:
        wait_for(lambda: cursors(db).get("influx", 0) > 0, 30, "the backlog draining")
        with Store(db, synchronous="normal") as store:
            for i in range(8):
                ts = int(time.time() * 1000)
                with store.transaction():  # as the committer does: commit, then wake the forwarder
                    store.insert_readings([Reading(button.site_id, button.device_id, "fire_alarm", i % 2 == 0, "",
                                                   ts, ts, urgent=True)])
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
