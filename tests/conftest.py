"""Fixtures: a private Mosquitto per test that needs one (real broker, free port)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.broker import Mosquitto


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    m = Mosquitto(tmp_path / "broker").start()
    try:
        yield m
    finally:
        m.stop()
