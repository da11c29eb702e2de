"""``firegw demo``: the whole system on one machine.

A private Mosquitto (configured not to drop queued messages), the MQTT device fleet, the Modbus
pump-room simulator, and the gateway on the embedded store, with a live summary. Stops cleanly
after ``--duration`` seconds or on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from simulators.broker import Mosquitto, free_port
from simulators.launch import PumpRoomProcess, SimulatorProcess, WorkflowReceiverProcess, stop_process

__all__ = ["run_demo"]

ROOT = Path(__file__).resolve().parent.parent


def _merge_inventories(*paths: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"sites": [], "devices": []}
    for p in paths:
        if not p.exists():
            continue
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        known = {s["site_id"] for s in out["sites"]}
        out["sites"] += [s for s in data.get("sites", []) if s["site_id"] not in known]
        out["devices"] += data.get("devices", [])
    return out


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A simulator process; secrets go in ``env``, never in its arguments (visible to every user)."""
    with log.open("ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "simulators", *args],
            cwd=ROOT,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def run_demo(
    *, duration: float | None, workdir: Path, devices: int = 40, rate: float = 1.0, workflow: str = "record"
) -> int:
    from gateway.runtime.pipeline import Gateway
    from gateway.settings import load_settings
    from gateway.store.sqlite import Store

    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    os.chmod(workdir, 0o755)  # traversable: the private broker runs as the mosquitto user below it
    from gateway.logs import setup_logging

    setup_logging(logging.WARNING, filename=str(workdir / "gateway.log"))
    broker = Mosquitto(workdir / "broker").start()
    procs: list[subprocess.Popen[bytes]] = []
    sims: list[SimulatorProcess] = []
    fleet_inv = workdir / "fleet-inventory.yaml"
    pumps = PumpRoomProcess(workdir, devices=2)
    pump_inv = pumps.inventory
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "simulators",
                "fleet",
                "--devices",
                str(devices),
                "--write-inventory",
                str(fleet_inv),
                "--duration",
                "0",
            ],
            check=True,
            cwd=ROOT,
            capture_output=True,
        )
        try:
            sims.append(pumps.start())
        except RuntimeError as exc:
            print(f"demo: the pump-room simulator did not start ({exc}); see", workdir / "pumproom.log")
        inv = workdir / "inventory.yaml"
        inv.write_text(
            yaml.safe_dump(_merge_inventories(fleet_inv, pump_inv), allow_unicode=True, sort_keys=False),
            encoding="utf-8",
        )
        db = workdir / "firegw.db"
        tokens = {role: secrets.token_urlsafe(18) for role in ("viewer", "operator", "admin")}
        config = workdir / "gateway.yaml"  # holds the demo's tokens: its owner only
        _write_private(
            config,
            yaml.safe_dump(
                {
                    "api": {
                        "tokens": [{"name": f"demo-{role}", "role": role, "token": tok} for role, tok in tokens.items()]
                    }
                }
            ),
        )
        _write_private(workdir / "tokens.txt", "".join(f"{role} {tok}\n" for role, tok in tokens.items()))
        api_port = 8080 if _port_free(8080) else free_port()
        hook_secret = secrets.token_urlsafe(18)
        receiver = WorkflowReceiverProcess(
            secret=hook_secret,
            scenario=workflow,
            api=f"http://127.0.0.1:{api_port}",
            token=tokens["operator"],
            log=workdir / "workflow.log",
        )
        sims.append(receiver.start())
        hook = receiver.url
        settings = load_settings(
            config,
            env={
                **os.environ,
                "FIREGW_MQTT__URL": broker.url,
                "FIREGW_API__LISTEN": f"127.0.0.1:{api_port}",
                "FIREGW_WEBHOOK__URL": f"{hook}/events",
                "FIREGW_WEBHOOK__SECRET": hook_secret,
                "FIREGW_STORE__PATH": str(db),
                "FIREGW_INVENTORY": str(inv),
                "FIREGW_PROFILES_DIR": str(ROOT / "device_profiles"),
                "FIREGW_MQTT__CLIENT_ID": "firegw-demo",
            },
        )
        gw = Gateway(settings)
        print(f"firegw demo: broker {broker.url}, store {db}")
        print(
            f"  {len(gw.catalog.sites)} sites, {len(gw.catalog.devices)} devices; "
            f"logs in {workdir}/ (gateway.log, fleet.log, pumproom.log, workflow.log)"
        )
        print(f"  dashboard: http://127.0.0.1:{api_port}/")
        print(f"  viewer link: http://127.0.0.1:{api_port}/#token={tokens['viewer']}")
        print(f"  viewer token:   {tokens['viewer']}")
        print(f"  operator token: {tokens['operator']}")
        print(f"  admin token:    {tokens['admin']}")
        print(f"  grid workflow receiver (scenario {workflow}): {hook}/received", flush=True)
        fleet_seconds = duration if duration is not None else 24 * 3600
        procs.append(
            _spawn(
                [
                    "fleet",
                    "--broker",
                    broker.url,
                    "--devices",
                    str(devices),
                    "--rate",
                    str(rate),
                    "--duration",
                    str(fleet_seconds),
                    "--scenario",
                    "button-alarm",
                    "--malformed-rate",
                    "0.02",
                    "--alarm-at",
                    str(min(10.0, fleet_seconds / 2)),
                ],
                workdir / "fleet.log",
            )
        )

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            if duration is not None:
                loop.call_later(duration, stop.set)
            task = asyncio.create_task(gw.run(stop))
            await gw.ready.wait()
            start = time.monotonic()
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 5.0)
                with Store(db, readonly=True) as s:
                    st = s.stats()
                    wf = s.workflow_stats()
                print(
                    f"  t={time.monotonic() - start:4.0f}s  messages in {st['messages']}  readings "
                    f"{st['readings']}  dead letters {st['dead_letters']}  devices seen {st['devices_seen']}"
                    f"  unreachable {st['devices_unreachable']}  fire events open {wf['events_open']}"
                    f"  hazards open {wf['hazards_open']}",
                    flush=True,
                )
            await task

        asyncio.run(main())
        with Store(db, readonly=True) as s:
            st = s.stats()
        print(
            f"firegw demo: stopped cleanly. {st['messages']} messages, {st['readings']} readings, "
            f"{st['dead_letters']} dead letters, {st['devices_seen']} devices seen. Store: {db}"
        )
        return 0
    finally:
        for p in procs:
            stop_process(p)
        for sim in sims:
            sim.stop()
        broker.stop()
