"""Benchmark: the committer alone (decode, SQLite, rules), without MQTT.

Feeds ``--messages`` realistic fleet messages of ``--devices`` devices straight into
``Committer._process`` in batches of ``--batch`` and reports messages per second; the rule engine and
workflow hooks run as in the gateway.

    .venv/bin/python bench/bench_committer.py --messages 100000 --batch 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.health import Health
from gateway.models import RawMessage
from gateway.profiles.loader import Catalog, load_catalog
from gateway.profiles.models import Inventory
from gateway.runtime.committer import Committer
from gateway.runtime.hooks import WorkflowHooks
from gateway.store.sqlite import Store
from simulators.fleet import _payload, build_devices, inventory_for

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()
    devices = build_devices(args.devices, seed=7)
    base = load_catalog(ROOT / "device_profiles", None)
    catalog = Catalog(profiles=base.profiles, inventory=Inventory.model_validate(inventory_for(devices)))
    rnd = random.Random(1)
    now = int(time.time() * 1000)
    msgs = []
    for i in range(args.messages):
        d = devices[i % len(devices)]
        body, _ = _payload(d, rnd)
        msgs.append(RawMessage("mqtt", d.topic, json.dumps(body).encode(), now, (i, 1)))
    store = Store(Path(tempfile.mkdtemp()) / "bench.db").open()
    health = Health()
    committer = Committer(store=store, catalog=catalog, health=health, hooks=WorkflowHooks(catalog, health))
    t0 = time.perf_counter()
    for i in range(0, len(msgs), args.batch):
        committer._process(list(msgs[i : i + args.batch]), False)
    elapsed = time.perf_counter() - t0
    stats = store.stats()
    print(
        json.dumps(
            {
                "messages": args.messages,
                "devices": args.devices,
                "batch": args.batch,
                "msg_s": round(args.messages / elapsed),
                "readings": stats["readings"],
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
