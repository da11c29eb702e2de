"""Fault containment in the committer, with the real store and the real rule engine: a message whose
processing fails in any way is isolated and dead-lettered (with the exception named), everything else in its
batch is committed, the engine and workflow reload from the store, and the store's own failures are retried
without losing or acknowledging anything."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.health import Health
from gateway.models import RawMessage, Reading
from gateway.profiles.loader import Catalog, load_catalog
from gateway.runtime.committer import Committer
from gateway.runtime.hooks import WorkflowHooks
from gateway.store.sqlite import Store
from tests.support import PROFILES, ROOT, wait_for

BUTTON = "fire/kq-ac-baolong-wh3/button/btn-ac-0001/up"
SMOKE = "fire/kq-ac-baolong-wh3/smoke/smk-ac-0101/up"


class Poisoned(WorkflowHooks):
    """The real hooks, with a 'bug' that fires on one battery value and an optional store failure."""

    def __init__(self, catalog: Catalog, health: Health) -> None:
        super().__init__(catalog, health)
        self.store_failures = 0
        self.recovered = 0

    def on_readings(self, store: Store, readings: list[Reading], now_ms: int) -> None:
        if any(r.metric == "battery" and r.value == 13.0 for r in readings):
            raise ZeroDivisionError("a rule bug triggered by battery 13")
        if self.store_failures:
            self.store_failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        super().on_readings(store, readings, now_ms)

    def recover(self, store: Store) -> None:
        self.recovered += 1
        super().recover(store)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Committer, Poisoned, Store, list[list[object]]]]:
    catalog = load_catalog(PROFILES, ROOT / "examples" / "inventory.yaml")
    health = Health()
    store = Store(tmp_path / "s.db").open()
    hooks = Poisoned(catalog, health)
    c = Committer(store=store, catalog=catalog, health=health, hooks=hooks, tick_s=0.2)
    acked: list[list[object]] = []
    c.register_source("mqtt", acked.append)
    c.start()
    try:
        yield c, hooks, store, acked
    finally:
        c.stop()
        store.close()


def _msg(topic: str, body: dict[str, object], mid: int) -> RawMessage:
    return RawMessage("mqtt", topic, json.dumps(body).encode(), int(time.time() * 1000), (mid, 1))


def _stats(store: Store) -> dict[str, int]:
    with Store(store.path, readonly=True) as ro:
        out: dict[str, int] = ro.stats()
        out.update(ro.workflow_stats())
        return out


def test_a_message_that_breaks_a_rule_is_dead_lettered_alone(
    rig: tuple[Committer, Poisoned, Store, list[list[object]]],
) -> None:
    c, hooks, store, acked = rig
    t = time.time()
    batch = [_msg(SMOKE, {"event": "heartbeat", "ts": t + i, "battery": 80}, i) for i in range(40)]
    batch.insert(17, _msg(SMOKE, {"event": "heartbeat", "ts": t + 100, "battery": 13}, 1000))
    batch.append(_msg(BUTTON, {"event": "alarm", "ts": t}, 2000))
    for m in batch:
        assert c.put(m)
    st = wait_for(
        lambda: (lambda s: s if s["messages"] + s["dead_letters"] >= 42 else None)(_stats(store)),
        10,
        "every message accounted for",
    )
    assert st is not None and (st["messages"], st["dead_letters"]) == (41, 1)
    assert st["events_open"] == 1  # the alarm in the same batch opened its fire event
    with Store(store.path, readonly=True) as ro:
        dead = ro.dead_letters()
    assert "ZeroDivisionError" in dead[0]["reason"] and "battery" in dead[0]["reason"]
    assert sorted(tok for toks in acked for tok in toks) == sorted(m.token for m in batch)  # type: ignore[type-var]
    assert hooks.recovered >= 1
    assert c._stage.counters.get("poison_messages") == 1


def test_store_failure_is_retried_and_nothing_is_acknowledged_meanwhile(
    rig: tuple[Committer, Poisoned, Store, list[list[object]]],
) -> None:
    c, hooks, store, acked = rig
    hooks.store_failures = 2  # the next two attempts fail as a full disk would
    t = time.time()
    msgs = [_msg(BUTTON, {"event": "alarm", "ts": t}, 1), _msg(SMOKE, {"event": "heartbeat", "ts": t}, 2)]
    for m in msgs:
        c.put(m)
    wait_for(lambda: c._stage.failing is not None or _stats(store)["messages"] == 2, 5, "a failing store seen")
    st = wait_for(lambda: (lambda s: s if s["messages"] == 2 else None)(_stats(store)), 15, "committed after retries")
    assert st is not None and st["dead_letters"] == 0 and st["events_open"] == 1
    assert c._stage.failing is None and c._stage.counters.get("store_errors") == 2
    assert sorted(tok for toks in acked for tok in toks) == [(1, 1), (2, 1)]  # type: ignore[type-var]
