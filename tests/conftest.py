"""Fixtures: a private Mosquitto per test that needs one (real broker, free port); the layers.

Tests live in three layers, one folder each, and carry the folder's marker:

- ``tests/unit``: the pure core and what needs no process or server (seconds: ``./scripts/test --fast``);
- ``tests/integration``: one component against the real thing it talks to (Mosquitto, a Modbus socket,
  VictoriaMetrics, InfluxDB, PostgreSQL, an HTTP receiver, the API in-process on a real store);
- ``tests/e2e``: ``firegw run`` (or the demo) as a process, as an operator runs it, with the
  fault-injection suite (marker ``fault``) and the dashboard in Chromium.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.broker import Mosquitto

LAYERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        layer = Path(str(item.fspath)).parent.name
        if layer not in LAYERS:
            raise pytest.UsageError(f"{item.fspath}: a test belongs in tests/unit, tests/integration or tests/e2e")
        item.add_marker(getattr(pytest.mark, layer))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    m = Mosquitto(tmp_path / "broker").start()
    try:
        yield m
    finally:
        m.stop()
