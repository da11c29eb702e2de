"""Launchers: each simulator started as its own process one way, waited for until it serves, talked to,
and stopped. The tests, the demo and the benchmarks all use these (one launcher per simulator), and
:func:`stop_process` is the one "SIGTERM, wait, kill" there is.

    with PumpRoomProcess(workdir, devices=2).start() as room:
        room.command("fault 1 manual")       # the control port (see simulators/pumproom.py)
        ...                                  # room.inventory, room.port

    with WorkflowReceiverProcess(secret="s", scenario="record").start() as rx:
        rx.url                               # http://127.0.0.1:PORT (POST /events)
        rx.received()                        # what it accepted

Secrets go to a simulator in its environment, never in its arguments.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

__all__ = ["PumpRoomProcess", "SimulatorProcess", "WorkflowReceiverProcess", "stop_process"]

ROOT = Path(__file__).resolve().parent.parent


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 10.0) -> int | None:
    """Stop a child process: SIGTERM, wait up to ``timeout``, then SIGKILL. Returns its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return proc.returncode


class SimulatorProcess:
    """``python -m simulators NAME ARGS`` in its own process. Its first line on stdout says it serves
    (``... listening on HOST:PORT ...``); the rest of its output goes to ``log`` (or nowhere)."""

    name = ""
    ready = re.compile(r"listening on")

    def __init__(self, args: Sequence[str], *, env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.args = list(args)
        self.env = env or {}
        self.log = log
        self.proc: subprocess.Popen[str] | None = None
        self.ready_line = ""
        self._drain: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> Self:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "simulators", self.name, *self.args],
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"simulator {self.name} exited before serving:\n{''.join(seen)[-2000:]}")
            seen.append(line)
            if self.ready.search(line):
                self.ready_line = line
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"simulator {self.name} did not serve within {timeout:.0f} s")
        self._drain = threading.Thread(target=self._pump, args=(self.proc.stdout, seen), daemon=True)
        self._drain.start()
        self.started()
        return self

    def _pump(self, stream: IO[str], head: list[str]) -> None:
        sink = self.log.open("a", encoding="utf-8") if self.log is not None else None
        try:
            if sink is not None:
                sink.writelines(head)
                sink.flush()
            for line in stream:
                if sink is not None:
                    sink.write(line)
                    sink.flush()
        except (OSError, ValueError):
            pass
        finally:
            if sink is not None:
                sink.close()

    def started(self) -> None:
        """Parse what the ready line says (ports)."""

    def stop(self, timeout: float = 10.0) -> int | None:
        rc = stop_process(self.proc, timeout)
        self.proc = None
        return rc

    def kill(self) -> None:
        """Crash it (SIGKILL): no clean close of its sockets, as a device losing power."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class PumpRoomProcess(SimulatorProcess):
    """The pump-room Modbus simulator (``simulators/pumproom.py``) with its control port, writing the
    inventory that binds its units to ``inventory``."""

    name = "pumproom"

    def __init__(
        self,
        workdir: Path,
        *,
        devices: int = 2,
        port: int = 0,
        scenario: str | None = None,
        args: Sequence[str] = (),
        log: Path | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.inventory = workdir / "pumproom-inventory.yaml"
        extra = ["--scenario", scenario] if scenario else []
        super().__init__(
            [
                "--port",
                str(port),
                "--devices",
                str(devices),
                "--control",
                "0",
                "--write-inventory",
                str(self.inventory),
                *extra,
                *args,
            ],
            log=log or workdir / "pumproom.log",
        )
        self.port = port
        self.control_port = 0

    def started(self) -> None:
        m = re.search(r"listening on [\d.]+:(\d+).*control on [\d.]+:(\d+)", self.ready_line)
        if not m:
            raise RuntimeError(f"pump-room simulator: unexpected ready line {self.ready_line!r}")
        self.port, self.control_port = int(m[1]), int(m[2])

    def command(self, *commands: str, timeout: float = 5.0) -> list[str]:
        """Send control commands; returns each one's ``ok ...`` line, raises on ``error: ...``."""
        answers = []
        with socket.create_connection(("127.0.0.1", self.control_port), timeout=timeout) as sock:
            fh = sock.makefile("rw", encoding="utf-8", newline="\n")
            for cmd in commands:
                fh.write(cmd + "\n")
                fh.flush()
                while True:
                    line = fh.readline()
                    if not line:
                        raise RuntimeError(f"control socket closed before answering {cmd!r}")
                    line = line.strip()
                    if line.startswith("error"):
                        raise RuntimeError(f"{cmd}: {line}")
                    if line.startswith("ok"):
                        answers.append(line)
                        break
        return answers


class WorkflowReceiverProcess(SimulatorProcess):
    """The grid-workflow receiver (``simulators/workflow.py``): signed webhooks in, ``GET /received``."""

    name = "workflow"

    def __init__(
        self,
        *,
        secret: str,
        scenario: str = "record",
        api: str | None = None,
        token: str | None = None,
        listen: str = "127.0.0.1:0",
        args: Sequence[str] = (),
        log: Path | None = None,
    ) -> None:
        env = {"FIREGW_WEBHOOK__SECRET": secret}
        if token is not None:
            env["FIREGW_WORKFLOW_TOKEN"] = token
        extra = ["--api", api] if api else []
        super().__init__(["--listen", listen, "--scenario", scenario, *extra, *args], env=env, log=log)
        self.url = ""

    def started(self) -> None:
        m = re.search(r"listening on ([\w.:\[\]-]+):(\d+)", self.ready_line)
        if not m:
            raise RuntimeError(f"workflow receiver: unexpected ready line {self.ready_line!r}")
        self.url = f"http://{m[1]}:{m[2]}"

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def received(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self._get("/received")
        return out

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = self._get("/stats")
        return out

    def log_entries(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self._get("/log")
        return out
