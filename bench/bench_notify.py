"""Webhook delivery benchmark: events per second to a local receiver, and outbox-to-receiver latency.

Run: ``.venv/bin/python bench/bench_notify.py [--backlog 5000] [--rate 50] [--seconds 20]
     [--out bench/RESULTS-notify.md]``

The receiver is ``python -m simulators workflow`` (scenario ``record``, signatures checked) in its
own process on 127.0.0.1; the Notifier runs in this process on the real store and schema, exactly
as in the gateway (its own SQLite connection and DB thread, httpx, one lane).

1. **Throughput**: ``--backlog`` transitions of ``--subjects`` fire events (opened, then updates) are
   written first (transactions of 100 records, like a committer batch), then the Notifier starts;
   events per second until every row is marked delivered. Order per subject holds, so the
   parallelism is ``webhook.concurrency`` subjects at a time.
2. **Latency**: a writer thread plays the committer: one fire event opened per transaction at
   ``--rate`` per second for ``--seconds``, calling ``Notifier.wake()`` after each commit. Latency is
   from the commit of the outbox row (its ``created_at``, taken here with µs precision right after
   the commit) to the receiver's arrival time of the request (same host clock).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.hazards.lifecycle import Workflow  # noqa: E402
from gateway.health import Health  # noqa: E402
from gateway.notify import Notifier  # noqa: E402
from gateway.profiles.loader import Catalog  # noqa: E402
from gateway.profiles.models import Inventory  # noqa: E402
from gateway.rules.effects import FireSignal  # noqa: E402
from gateway.settings import GatewaySettings  # noqa: E402
from gateway.store.sqlite import Store  # noqa: E402
from gateway.store.workflow import WorkflowStore  # noqa: E402
from simulators.launch import WorkflowReceiverProcess  # noqa: E402

SECRET = "bench-secret-0123456789"


def _pending(db: Path) -> int:
    with sqlite3.connect(db) as c:
        return int(c.execute("SELECT count(*) FROM outbox WHERE delivered_at IS NULL").fetchone()[0])


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def _wait_delivered(db: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while await asyncio.to_thread(_pending, db):
        if time.monotonic() > deadline:
            raise RuntimeError("not every row was delivered in time")
        await asyncio.sleep(0.02)


async def bench(args: argparse.Namespace, url: str, workdir: Path) -> dict[str, float]:
    store = Store(workdir / "firegw.db").open()
    wf = Workflow(None)
    now = int(time.time() * 1000)
    # 1. throughput on a backlog
    records = []
    for i in range(args.backlog):
        records += wf.apply([FireSignal("S1", f"D{i % args.subjects}", "fire_alarm", "fire_alarm", now)], now)
    for i in range(0, len(records), 100):
        with store.transaction() as c:
            WorkflowStore(c).write(records[i : i + 100], ["webhook"])
    settings = GatewaySettings.model_validate(
        {"webhook": {"url": url, "secret": SECRET, "concurrency": args.concurrency}}
    )
    catalog = Catalog(profiles={}, inventory=Inventory(sites=[], devices=[]))
    notifier = Notifier(settings=settings, catalog=catalog, store_path=store.path, health=Health())
    t0 = time.perf_counter()
    task = asyncio.create_task(notifier.run())
    await _wait_delivered(store.path, 300)
    backlog_s = time.perf_counter() - t0
    # 2. latency at a steady rate, woken by the writer after each commit
    committed: dict[str, float] = {}
    n = int(args.rate * args.seconds)

    def writer() -> None:
        start = time.perf_counter()
        for i in range(n):
            at = int(time.time() * 1000)
            recs = wf.apply([FireSignal("S2", f"L{i}", "fire_alarm", "fire_alarm", at)], at)
            with store.transaction() as c:
                WorkflowStore(c).write(recs, ["webhook"])
            t = time.time()
            for r in recs:
                committed[r.event_id] = t * 1000
            notifier.wake()
            delay = start + (i + 1) / args.rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

    thread = threading.Thread(target=writer)
    thread.start()
    await asyncio.to_thread(thread.join)
    await _wait_delivered(store.path, 60)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    store.close()
    async with httpx.AsyncClient() as client:
        log = (await client.get(url + "/log")).json()
    arrival: dict[str, float] = {}
    for e in log:
        if e["status"] == 200:
            arrival.setdefault(e["event_id"], e["at_ms"])
    lat = [arrival[eid] - t for eid, t in committed.items()]
    return {
        "backlog": len(records),
        "backlog_s": backlog_s,
        "rate": args.rate,
        "n": len(lat),
        "p50": statistics.median(lat),
        "p99": _pct(lat, 0.99),
        "max": max(lat),
        "mean": statistics.fmean(lat),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backlog", type=int, default=5000)
    p.add_argument("--subjects", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--out", type=Path)
    p.add_argument("--append", action="store_true", help="add to --out instead of replacing it")
    args = p.parse_args(argv)
    load = os.getloadavg()[0]
    with WorkflowReceiverProcess(secret=SECRET).start() as receiver, tempfile.TemporaryDirectory() as tmp:
        r = asyncio.run(bench(args, receiver.url, Path(tmp)))
    cmd = "python bench/bench_notify.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = f"""# Webhook delivery benchmark

- Command: `{cmd.strip()}`
- Machine: {platform.machine()}, CPython {platform.python_version()}, {_cores()} cores ({platform.system()}), \
load average at start {load:.1f}
- Receiver: `python -m simulators workflow` (scenario record, HMAC checked) in its own process on 127.0.0.1

| measure | value | target |
| --- | ---: | ---: |
| backlog delivered ({r["backlog"]:.0f} events, {args.subjects} subjects, concurrency {args.concurrency}) \
| {r["backlog"] / r["backlog_s"]:.0f} events/s ({r["backlog_s"]:.2f} s) | |
| latency, outbox commit → receiver, at {r["rate"]:g} events/s ({r["n"]:.0f} events), p50 \
| {r["p50"]:.2f} ms | |
| same, p99 | {r["p99"]:.2f} ms | < 100 ms |
| same, max | {r["max"]:.2f} ms | |
"""
    print(text)
    if args.out is not None:
        if args.append and args.out.exists():
            text = args.out.read_text(encoding="utf-8") + "\n" + text.split("\n", 2)[2]
        args.out.write_text(text, encoding="utf-8")
    return 0


def _cores() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
