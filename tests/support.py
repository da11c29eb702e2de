"""Test support: wait on conditions with deadlines, run the gateway as a real process, read its store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from gateway.store.sqlite import Store
from simulators.launch import stop_process

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "device_profiles"
PYTHON = sys.executable
T = TypeVar("T")


def fuzz_examples(n: int) -> int:
    """Hypothesis example counts: ``n`` in ``./scripts/test``; ``scripts/fuzz`` scales them up
    (``FIREGW_FUZZ_SCALE``) for a longer run."""
    return max(1, int(n * float(os.environ.get("FIREGW_FUZZ_SCALE", "1"))))


def wait_for(cond: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``cond`` until it returns something truthy, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: T = cond()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)
        last = cond()
    return last


def store_stats(db: Path) -> dict[str, Any]:
    if not db.exists():
        return {}
    with Store(db, readonly=True) as s:
        return s.stats()


def run_fleet(broker_url: str, *args: str, timeout: float = 300) -> dict[str, Any]:
    out = subprocess.run(
        [PYTHON, "-m", "simulators", "fleet", "--broker", broker_url, "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=True,
    )
    summary: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return summary


def write_inventory(path: Path, devices: int, seed: int = 1) -> None:
    subprocess.run(
        [
            PYTHON,
            "-m",
            "simulators",
            "fleet",
            "--devices",
            str(devices),
            "--seed",
            str(seed),
            "--write-inventory",
            str(path),
            "--duration",
            "0",
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )


@dataclass
class GatewayProc:
    """``firegw run`` as a real process, configured by environment like an operator would."""

    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)
    runs: int = 0

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "gateway.log"

    @property
    def db(self) -> Path:
        return Path(self.env.get("FIREGW_STORE__PATH", str(self.workdir / "firegw.db")))

    def start(self, wait_ready: bool = True, timeout: float = 20.0) -> GatewayProc:
        if "FIREGW_API__LISTEN" not in self.env:  # never the default 8080: it may be taken
            from simulators.broker import free_port

            self.env["FIREGW_API__LISTEN"] = f"127.0.0.1:{free_port()}"
        env = {
            **os.environ,
            "FIREGW_STORE__PATH": str(self.workdir / "firegw.db"),
            "FIREGW_PROFILES_DIR": str(PROFILES),
            "FIREGW_PIPELINE__TICK_S": "0.2",
            **self.env,
        }
        self.runs += 1
        log = self.log_path.open("ab")
        log.write(f"---- run {self.runs}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "gateway.cli", "run"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        if wait_ready:
            marker = f"---- run {self.runs}"
            wait_for(lambda: self._ready(marker), timeout, "gateway ready")
        return self

    def _ready(self, marker: str) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        text = self.log()
        return "firegw: ready" in text[text.rfind(marker) :]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        running = self.proc.poll() is None
        rc = stop_process(self.proc, timeout)
        self.proc = None
        if running and rc == -signal.SIGKILL:
            raise AssertionError(f"gateway did not stop within {timeout}s:\n{self.log()[-2000:]}")
        return rc or 0

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def environ(self) -> dict[str, str]:
        return {
            **os.environ,
            "FIREGW_STORE__PATH": str(self.workdir / "firegw.db"),
            "FIREGW_PROFILES_DIR": str(PROFILES),
            **self.env,
        }

    def cli(self, *args: str) -> Any:
        """``firegw ARGS --json`` against this gateway's store and settings, as an operator runs it."""
        out = subprocess.run(
            [PYTHON, "-m", "gateway.cli", *args, "--json"],
            env=self.environ(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return json.loads(out.stdout)

    @property
    def api(self) -> str:
        return "http://" + self.env["FIREGW_API__LISTEN"]


class Publisher:
    """A device-side MQTT client (paho, QoS 1): ``publish`` returns once the broker acknowledged."""

    def __init__(self, broker_url: str, client_id: str = "test-publisher") -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        host, _, port = broker_url.removeprefix("mqtt://").partition(":")
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self._client.connect(host, int(port))
        self._client.loop_start()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1) -> None:
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published(), f"broker did not acknowledge a publish on {topic}"

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class _Runnable(Protocol):
    def run(self) -> Coroutine[Any, Any, None]: ...


class RunningInThread:
    """An async component's ``run()`` on its own event loop in a thread; ``stop()`` cancels it and
    re-raises whatever it failed with."""

    def __init__(self, component: _Runnable, *, name: str = "component", timeout: float = 10.0) -> None:
        self.component = component
        self.name = name
        self.timeout = timeout
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        assert self._started.wait(10), f"{name} did not start"

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self.component.run())
        self._started.set()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        if self._loop is not None and self._task is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed: the task ended by itself
                self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(self.timeout)
        assert not self._thread.is_alive(), f"{self.name} did not stop"
        if self.error is not None:
            raise self.error
