"""schemathesis against the OpenAPI schema of a real running gateway: no request makes it answer 5xx, every
status it answers is documented, and every answer matches the schema documented for its status."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from tests.e2e.test_api_live import live_gateway
from tests.support import run_fleet

TOKEN = "fuzz-admin-token-0123456789"
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with live_gateway(tmp_path_factory.mktemp("fuzz"), {"fuzzer": ("admin", TOKEN)}) as gw:
        run_fleet(
            gw.broker.url,
            "--devices",
            "16",
            "--rate",
            "1",
            "--duration",
            "2",
            "--scenario",
            "button-alarm",
            "--alarm-at",
            "0.5",
            "--malformed-rate",
            "0.2",
        )
        yield gw.base


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
            try:
                case.validate_response(response, checks=CHECKS)
            except FailureGroup as exc:  # one per failed check
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: "
                    f"{response.text[:300]}\n{str(exc)[:600]}"
                )

        check()
    assert operations >= 20 and len(calls) >= 10 * operations
    assert any(c == 200 for c in calls) and any(400 <= c < 500 for c in calls)
    assert failures == []
