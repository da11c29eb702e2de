"""Benchmark: readings forwarded from the embedded store to VictoriaMetrics, against influxdb-client.

Method: a fresh private VictoriaMetrics (``-dedup.minScrapeInterval=1ms``) on loopback for each of
the three measurements below, with every series registered beforehand (one old sample each:
registering a new series is slow the first time) and its background merges done (its CPU time
stops growing): it shares the two cores with the benchmark. The library and the forwarder send
the same readings.

1. Reference: ``influxdb-client``'s synchronous write API sending pre-built lines (the lines the
   sink produces, for the same N readings) in batches of 5,000, gzip on (the library's own
   level 9) and off. Lines are
   built before the clock starts, so this is the best a client of the library can do.
2. Sustained forwarding: the store holds N readings of the fleet's device mix (written straight
   into the ``readings`` table, as the committer would, not over MQTT); a :class:`Forwarder` with
   the default settings (batch 5,000, gzip) drains them. Rate = N / time from start to the cursor
   reaching the last reading. Includes reading SQLite, building line protocol, compressing,
   the HTTP round trips and VictoriaMetrics' ingestion on the same two cores.
3. Backlog drain: a 10-minute outage at ``--rate`` messages/s, ``--readings-per-message`` readings
   each (3.5 for the shipped fleet mix, measured in tests/integration/test_influx.py), built directly in the
   readings table with device times spread over the 10 minutes; time to drain it.

Every run checks VictoriaMetrics received exactly 3 samples per reading (value, quality, received_at).

    .venv/bin/python bench/bench_influx.py --points 1000000 --out bench/RESULTS-influx.md

``--kill-after S`` measures the database's own crash instead: readings stream into the store (about
2,500 a second, as tests/integration/test_influx.py's kill tests do) and a forwarder ships them; after S seconds
VictoriaMetrics is killed with SIGKILL together with the forwarder, restarted on its data folder
(what it lost of what it had confirmed is counted), and a new forwarder runs until caught up. Once
with ``influx.resend_window_s`` 0 (no re-send: what firegw did before) and once with 60 s.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.health import Health
from gateway.models import Quality, Reading
from gateway.profiles.loader import Catalog, load_catalog
from gateway.settings import InfluxSettings
from gateway.sinks.forwarder import Forwarder
from gateway.sinks.influx import LineEncoder
from gateway.store.sqlite import Store
from tests.integration.test_influx import VictoriaMetrics, _catalog, _Stream, caught_up, cursors, expected_points
from tests.support import PROFILES, RunningInThread, wait_for, write_inventory

BATCH = 5_000


def fill(db: Path, catalog: Catalog, n: int, span_ms: int) -> None:
    """``n`` readings over the last ``span_ms``, round-robin over every point of every device."""
    pts = [(d, p) for d in catalog.inventory.devices for p in catalog.profiles[d.profile].points]
    end = int(time.time() * 1000)
    chunk = 200_000
    with Store(db, synchronous="normal") as store:
        for start in range(0, n, chunk):
            rows = []
            for i in range(start, min(n, start + chunk)):
                dev, p = pts[i % len(pts)]
                ts = end - span_ms + (i * span_ms) // n
                v: bool | int | float = (
                    i % 2 == 0 if p.type == "bool" else i % 3 if p.type == "int" else 0.3 + (i % 1000) / 997
                )
                rows.append(
                    Reading(
                        dev.site_id,
                        dev.device_id,
                        p.name,
                        v,
                        p.unit,
                        ts,
                        ts + 3,
                        Quality.GOOD,
                        urgent=p.point_class.value == "alarm",
                    )
                )
            with store.transaction():
                store.insert_readings(rows)


def vm_cpu(vm: VictoriaMetrics) -> float:
    from tests.integration.test_influx import _http

    for line in _http("GET", vm.url + "/metrics")[1].decode().splitlines():
        if line.startswith("process_cpu_seconds_total"):
            return float(line.split()[-1])
    return 0.0


def settle(vm: VictoriaMetrics, timeout: float = 120.0) -> None:
    """Wait until VictoriaMetrics' background merges are done (it shares the two cores with us)."""
    deadline = time.monotonic() + timeout
    last = vm_cpu(vm)
    while time.monotonic() < deadline:
        time.sleep(2.0)
        now = vm_cpu(vm)
        if now - last < 0.1:
            return
        last = now


def warm_lines(enc: LineEncoder) -> int:
    return sum(1 for _ in enc.prefixes())


def fresh_vm(workdir: Path, enc: LineEncoder) -> VictoriaMetrics:
    """A new VictoriaMetrics with every series registered (one old sample each) and its merges done."""
    vm = VictoriaMetrics(workdir).start()
    old = int(time.time() * 1000) - 86_400_000
    body = "\n".join(
        f"{prefix}{'0.0' if kind == 0 else '0i'},quality=0i,received_at=0i {old}"
        for _d, _m, _s, prefix, kind in enc.prefixes()
    )
    from tests.integration.test_influx import _http

    status, _ = _http("POST", f"{vm.url}/write?precision=ms", body.encode())
    assert status == 204
    _http("GET", vm.url + "/internal/force_flush")
    settle(vm)
    return vm


def reference(vm: VictoriaMetrics, lines: list[str], gzip: bool) -> float:
    from influxdb_client.client.influxdb_client import InfluxDBClient
    from influxdb_client.client.write_api import SYNCHRONOUS
    from influxdb_client.domain.write_precision import WritePrecision

    client = InfluxDBClient(url=vm.url, token="t", org="o", enable_gzip=gzip)
    write = client.write_api(write_options=SYNCHRONOUS)
    t0 = time.perf_counter()
    for i in range(0, len(lines), BATCH):
        write.write("b", "o", lines[i : i + BATCH], write_precision=WritePrecision.MS)  # type: ignore[arg-type]
    dt = time.perf_counter() - t0
    write.close()  # type: ignore[no-untyped-call]
    client.close()  # type: ignore[no-untyped-call]
    return len(lines) / dt


def forward(vm: VictoriaMetrics, db: Path, catalog: Catalog) -> float:
    fwd = Forwarder(
        settings=InfluxSettings(url=vm.url, token="t", org="o", bucket="b"),
        catalog=catalog,
        store_path=db,
        health=Health(),
    )
    t0 = time.perf_counter()
    run = RunningInThread(fwd, name="forwarder", timeout=30)
    try:
        while not caught_up(db):
            time.sleep(0.01)
        dt = time.perf_counter() - t0
    finally:
        run.stop()
    assert cursors(db)["influx"] > 0
    return dt


def tsdb_kill(work: Path, window_s: float, kill_after_s: float) -> str:
    """VictoriaMetrics and the forwarder SIGKILLed mid-stream; what the database lost and what is left."""
    catalog, _ = _catalog(work, 40)
    db = work / "firegw.db"
    Store(db).open().close()
    vm = VictoriaMetrics(work / "vm").start()
    health = Health()
    stage = health.stage("forwarder:influx")

    def forwarder() -> Forwarder:
        return Forwarder(
            settings=vm.settings(batch_size=1000, flush_interval_s=0.2, resend_window_s=window_s),
            catalog=catalog,
            store_path=db,
            health=health,
            backoff_min_s=0.1,
            backoff_max_s=1.0,
        )

    try:
        fwd = forwarder()
        run = RunningInThread(fwd, name="forwarder", timeout=30)
        stream = _Stream(db, catalog, fwd.wake)
        t0 = time.monotonic()
        wait_for(lambda: time.monotonic() - t0 >= kill_after_s, kill_after_s + 5, "the stream", interval=0.2)
        vm.kill()
        stream.stop()
        run.stop()
        at = cursors(db)
        confirmed = expected_points(db, catalog, (at["influx"], at["influx:urgent"]))
        vm.start()
        lost = len(confirmed.keys() - vm.points()[0].keys())
        run = RunningInThread(forwarder(), name="forwarder", timeout=30)
        try:
            if window_s:
                wait_for(lambda: stage.counters.get("database_restarts") == 1, 30, "the restart noticed")
            wait_for(lambda: caught_up(db), 60, "everything forwarded")
        finally:
            run.stop()
        expected = expected_points(db, catalog)
        actual, dups = vm.points_of(expected, timeout=5)
        missing = len(expected.keys() - actual.keys())
    finally:
        vm.stop()
    return (
        f"| {window_s:g} s | {len(expected):,} | {len(confirmed):,} | {lost:,} | "
        f"{stage.counters.get('resent', 0):,} | {missing:,} | {dups:,} |"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=1_000_000, help="readings for the sustained rate")
    ap.add_argument("--reference-points", type=int, default=500_000)
    ap.add_argument("--rate", type=int, default=5_000, help="messages per second during the outage")
    ap.add_argument("--minutes", type=float, default=10.0, help="outage length")
    ap.add_argument("--readings-per-message", type=float, default=3.5)
    ap.add_argument("--devices", type=int, default=2_000)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--kill-after",
        type=float,
        default=None,
        metavar="S",
        help="measure a SIGKILL of the database after S seconds of streaming instead",
    )
    args = ap.parse_args()
    if args.kill_after is not None:
        print(
            "| resend_window_s | readings | confirmed at the kill | of them lost by the database | re-sent | "
            "missing afterwards | doubled |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
        )
        for window in (0.0, 60.0):
            with tempfile.TemporaryDirectory(prefix="firegw-bench-kill-") as tmp:
                print(tsdb_kill(Path(tmp), window, args.kill_after), flush=True)
        return 0
    with tempfile.TemporaryDirectory(prefix="firegw-bench-influx-") as tmp:
        work = Path(tmp)
        inv = work / "inventory.yaml"
        write_inventory(inv, args.devices)
        catalog = load_catalog(PROFILES, inv)
        enc = LineEncoder(catalog)
        # the same readings for the library and for the forwarder
        db = work / "sustained.db"
        Store(db).open().close()
        fill(db, catalog, args.points, 3_600_000)
        with Store(db) as st:
            rows = st.conn.execute(
                "SELECT seq, device_id, metric, ts, value, quality, received_at, site_id, urgent FROM readings"
            ).fetchall()
        lines = [enc.encode(r) for r in rows]
        del rows
        rates: dict[str, float] = {}
        for label, gz in (("gzip", True), ("plain", False)):
            vm = fresh_vm(work / f"vm-{label}", enc)
            try:
                rates[label] = reference(vm, lines, gz)
                assert vm.rows_inserted() == 3 * (len(lines) + warm_lines(enc))
            finally:
                vm.stop()
        ref_gzip, ref_plain = rates["gzip"], rates["plain"]
        del lines
        print(f"reference influxdb-client, pre-built lines: gzip {ref_gzip:,.0f}/s, plain {ref_plain:,.0f}/s")
        vm = fresh_vm(work / "vm", enc)
        try:
            # 2. sustained forwarding from the store
            before = vm.rows_inserted()
            dt = forward(vm, db, catalog)
            assert vm.rows_inserted() - before == 3 * args.points, "every reading sent exactly once"
            rate = args.points / dt
            print(
                f"forwarder: {args.points:,} readings in {dt:.2f} s = {rate:,.0f}/s "
                f"({rate / ref_gzip:.2f}x the gzip reference, {rate / ref_plain:.2f}x plain)"
            )
            # 3. a 10-minute backlog
            n = int(args.rate * args.minutes * 60 * args.readings_per_message)
            bdb = work / "backlog.db"
            Store(bdb).open().close()
            t0 = time.perf_counter()
            fill(bdb, catalog, n, int(args.minutes * 60_000))
            built = time.perf_counter() - t0
            size_mb = bdb.stat().st_size / 1_048_576
            settle(vm)
            before = vm.rows_inserted()
            drain = forward(vm, bdb, catalog)
            assert vm.rows_inserted() - before == 3 * n
            print(
                f"backlog: {n:,} readings ({size_mb:,.0f} MB store, built in {built:.0f} s) drained in "
                f"{drain:.1f} s = {n / drain:,.0f}/s"
            )
        finally:
            vm.stop()
    if args.out is not None:
        cmd = "python bench/bench_influx.py " + " ".join(sys.argv[1:])
        args.out.write_text(
            f"""# InfluxDB forwarding benchmark (VictoriaMetrics 1.79 on loopback)

Command: `{cmd}`
Machine: {platform.machine()}, CPython {platform.python_version()}, 2 cores ({platform.system()}); the
database runs on the same two cores.

| measure | value |
| --- | ---: |
| influxdb-client, pre-built lines, gzip (library level 9), batches of 5,000 | {ref_gzip:,.0f} points/s |
| influxdb-client, pre-built lines, no gzip | {ref_plain:,.0f} points/s |
| **forwarder, store → VictoriaMetrics, defaults (gzip, batch 5,000), {args.points:,} readings** \
| **{rate:,.0f} points/s** |
| forwarder / reference with gzip | {rate / ref_gzip:.2f} |
| forwarder / reference without gzip | {rate / ref_plain:.2f} |
| 10-minute backlog at {args.rate:,} msg/s × {args.readings_per_message} readings/msg \
| {n:,} readings, {size_mb:,.0f} MB store |
| time to drain it | {drain:.1f} s ({n / drain:,.0f} points/s) |

Target: ≥ 100,000 points/s sustained.

Method: see the docstring of `bench/bench_influx.py`. The backlogs are written directly into the
store's `readings` table (as the committer writes them), not over MQTT. The forwarder's rate covers
reading SQLite, building line protocol, gzip (level 1) and the HTTP round trips: it reads and
encodes the next batch while the previous one is in flight, and sends the compressed body through
`influxdb-client`'s write service. Each run checks that VictoriaMetrics received exactly three samples
(value, quality, received_at) per reading: nothing lost, nothing sent twice.
""",
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
