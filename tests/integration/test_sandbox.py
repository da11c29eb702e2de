"""The dry-run sandbox on its own: a real worker process, its time limit, its queue bound, its restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.api.sandbox import Sandbox, SandboxBusy, SandboxLimit
from tests.support import PROFILES

BUTTON = (PROFILES / "onekey-alarm-button.yaml").read_text()


def _heavy(points: int) -> str:
    head = (PROFILES / "pipe-pressure-sensor.yaml").read_text().split("points:")[0]
    return (
        head
        + "points:\n"
        + "".join(
            f"  - {{name: p{i}, class: analog, type: float, unit: MPa, path: v{i}, range: [0, 2]}}\n"
            for i in range(points)
        )
    )


def test_time_limit_kills_the_worker_and_the_next_request_is_served() -> None:
    async def main() -> None:
        sb = Sandbox(timeout_s=0.3)
        try:
            ok = await sb.dry_run(BUTTON, '{"event": "alarm", "ts": 1764400000}')
            assert ok["valid"] and ok["readings"][0]["value"] is True
            with pytest.raises(SandboxLimit, match=r"longer than 0\.3 s"):
                await sb.dry_run(_heavy(20_000), None)
            again = await sb.dry_run(BUTTON, None)
            assert again["valid"] and sb.counters["timeouts"] == 1
        finally:
            sb.close()

    asyncio.run(main())


def test_limits_on_nesting_and_size_answer_without_building_anything() -> None:
    async def main() -> None:
        sb = Sandbox(timeout_s=10)
        try:
            deep = await sb.dry_run("a: " + "[" * 100_000, None)
            assert deep["limit"] and "nested deeper" in deep["problems"][0]
            laughs = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
                f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)
            )
            out = await sb.dry_run(laughs, None)
            assert not out["valid"]
        finally:
            sb.close()

    asyncio.run(main())


def test_queue_is_bounded() -> None:
    async def main() -> None:
        sb = Sandbox(timeout_s=10, max_waiting=2)
        try:
            jobs = [asyncio.create_task(sb.dry_run(_heavy(2000), None)) for _ in range(5)]
            done = await asyncio.gather(*jobs, return_exceptions=True)
            busy = [d for d in done if isinstance(d, SandboxBusy)]
            assert len(busy) == 3 and all(isinstance(d, dict) for d in done if d not in busy)
        finally:
            sb.close()

    asyncio.run(main())


def test_worker_death_is_survived(tmp_path: Path) -> None:
    async def main() -> None:
        sb = Sandbox(timeout_s=10)
        try:
            await sb.dry_run(BUTTON, None)
            assert sb._proc is not None
            sb._proc.kill()
            sb._proc.join(5)
            assert (await sb.dry_run(BUTTON, None))["valid"]
        finally:
            sb.close()

    asyncio.run(main())
