"""schemathesis against the OpenAPI schema of a real running gateway: no request makes it answer 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings

from simulators.broker import Mosquitto, free_port
from tests.support import GatewayProc, run_fleet, wait_for, write_inventory

TOKEN = "fuzz-admin-token-0123456789"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("fuzz")
    broker = Mosquitto(tmp / "broker").start()
    inv = tmp / "inventory.yaml"
    write_inventory(inv, 16)
    config = tmp / "gateway.yaml"
    config.write_text(yaml.safe_dump({"api": {"tokens": [{"name": "fuzzer", "role": "admin", "token": TOKEN}]}}))
    port = free_port()
    gw = GatewayProc(tmp / "gw", env={"FIREGW_MQTT__URL": broker.url, "FIREGW_INVENTORY": str(inv),
                                      "FIREGW_CONFIG": str(config), "FIREGW_API__LISTEN": f"127.0.0.1:{port}",
                                      "FIREGW_MQTT__CLIENT_ID": "fuzz",
                                      "FIREGW_PROFILES_DIR": str(_profiles_copy(tmp))}).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(base), 15, "API listening")
        run_fleet(broker.url, "--devices", "16", "--rate", "1", "--duration", "2", "--scenario", "button-alarm",
                  "--alarm-at", "0.5", "--malformed-rate", "0.2")
        yield base
    finally:
        gw.stop()
        broker.stop()


def _profiles_copy(tmp: Path) -> Path:
    """Profile activation writes into the profiles folder: give the fuzzed gateway its own copy."""
    import shutil

    dst = tmp / "profiles"
    shutil.copytree(Path(__file__).parent.parent / "device_profiles", dst)
    return dst


def _up(base: str) -> bool:
    try:
        return httpx.get(base + "/openapi.json", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_no_request_gets_a_5xx(live: str) -> None:
    schema = schemathesis.openapi.from_url(live + "/openapi.json")
    failures: list[str] = []
    operations = 0
    calls: list[int] = []
    for result in schema.get_all_operations():
        op = result.ok()  # type: ignore[union-attr]
        if op.path == "/api/v1/stream":  # an endless response by design
            continue
        operations += 1

        @given(case=op.as_strategy())
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {TOKEN}"}
            response = case.call(base_url=live, timeout=10)
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: "
                                f"{response.text[:300]}")

        check()
    assert operations >= 20 and len(calls) >= 10 * operations
    assert any(c == 200 for c in calls) and any(400 <= c < 500 for c in calls)
    assert failures == []
