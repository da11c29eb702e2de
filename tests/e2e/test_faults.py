"""Fault injection (``-m fault``): real processes (``firegw run``, Mosquitto, the fleet simulator) and
real faults (SIGKILL, a full disk, a store the kernel refuses to write, a taken port, poison messages).

Every scenario ends with the README's accounting, exactly: what the broker acknowledged to the
publishers (the fleet's ``sent`` plus what the test published itself) equals ``messages +
dead_letters``; the dead letters are exactly the malformed ones; ``readings`` and the rows stored are
exactly the readings the good messages give (so none is lost and none doubled); every button alarm the
test published opened exactly one fire event, with one signal (each alarm goes to its own button); the
gateway is still up (its process alive, or a last run that stops with exit 0); and while the fault
lasts, ``/readyz`` answers 503 naming the faulty stage and no other.

The mount-based scenarios need root (``mount``), as ``./scripts/test`` runs here and in CI.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from simulators.broker import Mosquitto, free_port
from simulators.fleet import SimDevice, build_devices
from tests.support import GatewayProc, Publisher, run_fleet, store_stats, wait_for, write_inventory

pytestmark = pytest.mark.fault


# ---------------------------------------------------------------------------- the ledger


@dataclass
class Ledger:
    """What the broker acknowledged to publishers, and what it must become in the store."""

    sent: int = 0
    malformed: int = 0
    readings: int = 0
    unacknowledged: int = 0
    alarms: Counter[str] = field(default_factory=Counter)  # button → alarms published on it

    def add_fleet(self, summary: dict[str, Any]) -> None:
        self.sent += summary["sent"]
        self.malformed += summary["malformed"]
        self.readings += summary["expected_readings"]
        self.unacknowledged += summary["unacknowledged"]


class FleetRun:
    """The fleet simulator (its own process) publishing in the background; ``result()`` is its summary."""

    def __init__(self, broker_url: str, *args: str) -> None:
        self._summary: dict[str, Any] = {}
        self._error: BaseException | None = None

        def main() -> None:
            try:
                self._summary.update(run_fleet(broker_url, *args))
            except BaseException as exc:  # re-raised in result()
                self._error = exc

        self._thread = threading.Thread(target=main, name="fleet", daemon=True)
        self._thread.start()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout: float = 120.0) -> None:
        self._thread.join(timeout)

    def result(self, timeout: float = 120.0) -> dict[str, Any]:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the fleet did not finish within {timeout}s"
        if self._error is not None:
            raise self._error
        return dict(self._summary)


class Rig:
    """One gateway on a fleet's inventory, a device-side publisher for the test's own messages, and
    the ledger of everything published."""

    def __init__(
        self, tmp_path: Path, broker: Mosquitto, devices: int, *, name: str, store: Path | None = None, **env: str
    ) -> None:
        inventory = tmp_path / "inventory.yaml"
        write_inventory(inventory, devices)
        self.devices: list[SimDevice] = build_devices(devices)  # the same seed as the inventory
        self.buttons = [d for d in self.devices if d.kind == "button"]
        self.broker = broker
        env = {
            "FIREGW_MQTT__URL": broker.url,
            "FIREGW_INVENTORY": str(inventory),
            "FIREGW_MQTT__CLIENT_ID": f"firegw-{name}-{broker.port}",
            **env,
        }
        if store is not None:
            env["FIREGW_STORE__PATH"] = str(store)
        self.gw = GatewayProc(tmp_path / "gw", env=env)
        self.ledger = Ledger()
        self._publisher: Publisher | None = None
        self._next_button = 0
        self._ts_ms = int(time.time() * 1000)

    def fleet_args(self, rate: float, duration: float, malformed: float = 0.02) -> list[str]:
        """The fleet simulator playing this rig's inventory (same devices, same seed)."""
        return [
            "--devices",
            str(len(self.devices)),
            "--seed",
            "1",
            "--rate",
            str(rate),
            "--duration",
            str(duration),
            "--malformed-rate",
            str(malformed),
        ]

    def fleet(self, rate: float, duration: float, malformed: float = 0.02) -> FleetRun:
        """The fleet publishing in the background."""
        return FleetRun(self.broker.url, *self.fleet_args(rate, duration, malformed))

    def run_fleet(self, rate: float, duration: float, malformed: float = 0.02) -> dict[str, Any]:
        """The fleet publishing until done; its summary goes into the ledger."""
        summary = run_fleet(self.broker.url, *self.fleet_args(rate, duration, malformed))
        self.ledger.add_fleet(summary)
        return summary

    def ts(self) -> float:
        """A device time (epoch s) later than any given before, 10 ms apart: no two of the test's
        timed messages share their bytes or a reading's key."""
        self._ts_ms = max(int(time.time() * 1000), self._ts_ms + 10)
        return self._ts_ms / 1000

    def publisher(self) -> Publisher:
        if self._publisher is None:
            self._publisher = Publisher(self.broker.url, client_id=f"faults-{random.randrange(1 << 30)}")
        return self._publisher

    def drop_publisher(self) -> None:
        """Forget the device connection (the broker went away): the next publish makes a new one."""
        if self._publisher is not None:
            with contextlib.suppress(Exception):
                self._publisher.close()
            self._publisher = None

    def publish(
        self, topic: str, payload: bytes, *, readings: int = 0, bad: bool = False, retain: bool = False
    ) -> None:
        self.publisher().publish(topic, payload, retain=retain)  # returns once the broker acknowledged
        self.ledger.sent += 1
        self.ledger.malformed += int(bad)
        self.ledger.readings += readings

    def next_button(self) -> SimDevice:
        assert self._next_button < len(self.buttons), "more alarms than buttons: use a larger fleet"
        dev = self.buttons[self._next_button]
        self._next_button += 1
        return dev

    def alarm(self, spelling: str = "alarm") -> str:
        """A fire alarm on a button of its own (one reading, ``fire_alarm``); returns the device."""
        dev = self.next_button()
        self.publish(dev.topic, json.dumps({"ts": self.ts(), "event": spelling}).encode(), readings=1)
        self.ledger.alarms[dev.device_id] += 1
        return dev.device_id

    def kill_gateway(self) -> None:
        """SIGKILL the gateway and wait until the broker has seen its session go offline: from then on
        the broker queues the session's messages (rather than sending them to a connection about to
        close, which would make them in-flight messages re-sent with DUP later)."""
        client = self.gw.env["FIREGW_MQTT__CLIENT_ID"]
        log = self.broker.workdir / "mosquitto.log"

        def gone() -> int:
            text = log.read_text(errors="replace") if log.exists() else ""
            return text.count(f"Client {client} closed its connection") + text.count(f"Client {client} disconnected")

        before = gone()
        self.gw.kill()
        wait_for(lambda: gone() > before, 10, f"the broker seeing {client} go offline")

    def close(self) -> None:
        self.drop_publisher()


def accounted(gw: GatewayProc) -> int:
    st = store_stats(gw.db)
    return int(st.get("messages", 0)) + int(st.get("dead_letters", 0)) if st else 0


def assert_exact(rig: Rig, timeout: float = 90.0) -> dict[str, Any]:
    """The README's accounting, exactly, once everything sent has arrived."""
    led, gw = rig.ledger, rig.gw
    wait_for(lambda: accounted(gw) >= led.sent, timeout, f"{led.sent} messages accounted for in {gw.db}")
    time.sleep(0.5)  # on purpose: a redelivery counted twice would show in the counters by now
    st = store_stats(gw.db)
    assert led.unacknowledged == 0, led
    assert st["messages"] + st["dead_letters"] == led.sent, (st, led)
    assert st["dead_letters"] == led.malformed, (st, led)
    assert st["readings"] == led.readings, (st, led)
    assert st["readings_stored"] == led.readings, (st, led)
    return st


def assert_alarms(rig: Rig) -> list[dict[str, Any]]:
    """Every alarm published opened one fire event with one signal; nothing else opened one."""
    events: list[dict[str, Any]] = rig.gw.cli("events", "--limit", "100000")
    per_device = Counter(e["device_id"] for e in events)
    assert per_device == Counter(dict.fromkeys(rig.ledger.alarms, 1)), (per_device, rig.ledger.alarms)
    signals = {e["device_id"]: e["count"] for e in events}
    assert signals == dict(rig.ledger.alarms), signals
    return events


def kill_if_running(gw: GatewayProc) -> None:
    """After a failure: SIGKILL (a clean stop is asserted on the way that passes, and a stop could
    wait on the very fault the test made)."""
    if gw.proc is not None and gw.proc.poll() is None:
        gw.kill()


def assert_stops_cleanly(gw: GatewayProc) -> None:
    assert gw.proc is not None and gw.proc.poll() is None, f"the gateway is not running:\n{gw.log()[-3000:]}"
    assert gw.stop() == 0, gw.log()[-3000:]
    assert "stopped with everything taken committed" in gw.log().rsplit("---- run", 1)[-1]


# ---------------------------------------------------------------------------- /readyz


def readyz(gw: GatewayProc) -> tuple[int, list[str]]:
    r = httpx.get(gw.api + "/readyz", timeout=10)
    problems: list[str] = r.json()["problems"]
    return r.status_code, problems


def stage_of(problem: str) -> str:
    """``source:mqtt: disconnected (...)`` → ``source:mqtt`` (stage names hold ':' but never ': ')."""
    return problem.split(": ", 1)[0]


def wait_failing(
    gw: GatewayProc, required: set[str], allowed: set[str] | None = None, timeout: float = 30.0
) -> list[str]:
    """Wait until /readyz answers 503 naming every stage in ``required``; then it may name nothing
    outside ``allowed`` (default: ``required``)."""
    allowed = required if allowed is None else allowed

    def failing() -> list[str] | None:
        try:
            code, problems = readyz(gw)
        except httpx.TransportError:  # a gateway just started may not serve yet
            return None
        return problems if code == 503 and required <= {stage_of(p) for p in problems} else None

    problems = wait_for(failing, timeout, f"/readyz naming {sorted(required)}", interval=0.1)
    assert problems is not None
    assert {stage_of(p) for p in problems} <= allowed, problems
    return problems


def wait_ready(gw: GatewayProc, timeout: float = 30.0) -> None:
    """Wait until /readyz answers 200 with no problem."""
    last: list[Any] = []

    def ready() -> bool:
        try:
            code, problems = readyz(gw)
        except httpx.HTTPError as exc:
            last[:] = [repr(exc)]
            return False
        last[:] = [code, problems]
        return code == 200 and not problems

    try:
        wait_for(ready, timeout, "/readyz ready with no problem", interval=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; /readyz last said {last}") from None


def metric(gw: GatewayProc, name: str) -> float:
    for line in httpx.get(gw.api + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


# ---------------------------------------------------------------------------- file systems


def _run(*cmd: str) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, f"{' '.join(cmd)}: exit {out.returncode}: {out.stderr.strip()}"


@contextlib.contextmanager
def mounted(path: Path, *args: str) -> Iterator[Path]:
    """``mount ARGS path`` (root only), unmounted on the way out (lazily if something still holds it)."""
    path.mkdir(parents=True, exist_ok=True)
    _run("mount", *args, str(path))
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(disk: Path) -> Path:
    """Take every free byte of the file system with a filler file; return it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            block = b"\0" * size
            try:
                while True:
                    os.write(fd, block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return filler


def immutable(paths: list[Path], on: bool) -> None:
    _run("chattr", "+i" if on else "-i", *map(str, paths))


# ---------------------------------------------------------------------------- 1. SIGKILL loop


def test_gateway_sigkilled_20_times_under_load(tmp_path: Path, broker: Mosquitto) -> None:
    """A fleet publishes continuously (about 1,000 messages/s, 2% malformed) while the gateway is
    killed with SIGKILL and started again 20 times: every other kill lands at a random moment after
    that run has committed something (mid-stream), the others at a random moment of start-up or
    catch-up. After each kill an alarm is published (the broker holds it for the gateway's session)."""
    rig = Rig(tmp_path, broker, 100, name="killloop")
    gw = rig.gw.start()
    rnd = random.Random(20)
    fleet = rig.fleet(rate=10, duration=45)
    kills_after_progress = 0
    try:
        for i in range(20):
            if i % 2 == 0:
                before = accounted(gw)
                wait_for(lambda: accounted(gw) > before, 30, f"run {gw.runs} committing")  # noqa: B023
                time.sleep(rnd.uniform(0, 0.3))  # on purpose: a random moment while it commits
                kills_after_progress += 1
            else:
                time.sleep(rnd.uniform(0.1, 2.5))  # on purpose: a random moment of start-up or catch-up
            gw.kill()
            rig.alarm()
            gw.start(wait_ready=i == 19)
        assert not fleet.done(), "the fleet stopped before the last kill: the kills were not under load"
        wait_ready(gw)  # nothing is faulty now: /readyz names no stage
        rig.ledger.add_fleet(fleet.result())
        st = assert_exact(rig)
        assert st["duplicates"] > 0, st  # redeliveries after the kills happened, and were recognised
        assert_alarms(rig)
        assert gw.runs == 21 and kills_after_progress == 10
        assert_stops_cleanly(gw)
    finally:
        fleet.join()
        rig.close()
        kill_if_running(gw)


# ---------------------------------------------------------------------------- 2. broker SIGKILL


def test_broker_sigkilled_mid_stream_restarts_from_its_persistence(tmp_path: Path, broker: Mosquitto) -> None:
    """Mosquitto killed with SIGKILL while the gateway drains a backlog, and started again on the same
    port and persistence folder.

    What Mosquitto itself keeps across its own SIGKILL is what it last wrote to its persistence file:
    the test broker saves every 30 s (``autosave_interval``), at a clean stop, and on SIGUSR1; it
    acknowledges a QoS 1 PUBLISH before any save, so a message acknowledged after the last save and
    not yet handed to the gateway is lost by the broker, whatever the gateway does (the README's
    guarantee starts where the broker holds a message durably). So the backlog is published while
    the gateway is down and saved (SIGUSR1) before the kill; every message is accounted for exactly:
    the broker comes back with the saved backlog, re-sends what the gateway had already committed
    from it (recognised, not counted again), and the rest arrives."""
    rig = Rig(tmp_path, broker, 100, name="brokerkill")
    gw = rig.gw.start()
    try:
        # 1. everything up
        rig.run_fleet(rate=10, duration=2)
        rig.alarm()
        assert_exact(rig)
        # 2. the gateway down: the broker queues its persistent session's messages, then saves them
        # (malformed ones among them: a dead letter the restored broker re-sends is recognised too)
        rig.kill_gateway()
        rig.run_fleet(rate=40, duration=4)
        rig.alarm()
        rig.alarm()
        broker.save()
        backlog_from = accounted(gw)
        # 3. the gateway drains the backlog; the broker is killed part-way through
        gw.start(wait_ready=False)
        wait_for(lambda: accounted(gw) > backlog_from + 300, 30, "the gateway draining the backlog")
        broker.kill()
        rig.drop_publisher()
        killed_at = accounted(gw)
        problems = wait_failing(gw, {"source:mqtt"})
        assert "disconnected" in problems[0], problems
        # 4. the broker back from its file, same port: the gateway reconnects by itself
        broker.start()
        wait_ready(gw)
        st = assert_exact(rig)
        assert killed_at < rig.ledger.sent, "the broker was not killed mid-stream (the backlog was drained)"
        assert st["duplicates"] > 0, st  # the broker re-sent from its saved state what was committed
        # 5. and afterwards
        rig.run_fleet(rate=10, duration=2)
        rig.alarm()
        assert_exact(rig)
        assert_alarms(rig)
        assert gw.runs == 2
        assert_stops_cleanly(gw)
    finally:
        rig.close()
        kill_if_running(gw)


def test_dead_letter_resent_by_a_restored_broker_counts_once(tmp_path: Path, broker: Mosquitto) -> None:
    """Mosquitto restores from its file the messages it had queued for the gateway's session and sends
    them as new (no DUP: as far as it knows they were never sent). A dead letter carries no device
    time, so only its id tells it is the same bad message again: it must count once (it once counted
    twice, and ``messages + dead_letters`` exceeded what was sent)."""
    rig = Rig(tmp_path, broker, 10, name="resent")
    gw = rig.gw.start()
    try:
        dev = rig.buttons[0]
        rig.kill_gateway()  # the broker queues for the session from now on
        rig.publish(dev.topic, b'{"event": "heartbeat", "ts": "yesterday"}', bad=True)
        rig.publish(dev.topic, json.dumps({"event": "heartbeat", "ts": rig.ts()}).encode(), readings=1)
        broker.save()
        gw.start()
        assert_exact(rig)  # both committed and acknowledged; the broker's file still holds them
        broker.kill()
        rig.drop_publisher()
        broker.start()  # restores both from its file and sends them again, without DUP
        wait_for(
            lambda: store_stats(gw.db)["duplicates"] + accounted(gw) >= rig.ledger.sent + 2,
            30,
            "the restored broker re-sending its saved messages",
        )
        assert_exact(rig)
    finally:
        rig.close()
        kill_if_running(gw)


# ---------------------------------------------------------------------------- 3 and 4. the store refuses writes


def store_outages(rig: Rig, fleet: FleetRun, fault: Callable[[bool], None], *, start_while_faulty: bool) -> None:
    """The store refuses writes twice while the fleet publishes (``fault(True)``, then ``fault(False)``).

    The first time the same process goes on once the store takes writes again (no restart). The
    second time the gateway is killed (SIGKILL) while it cannot commit, and started again (on the
    faulty store when ``start_while_faulty``): the exact accounting afterwards proves it had
    acknowledged nothing it had not committed, since the broker still had all of it. An alarm is
    published during each outage; each arrives once the store takes writes."""
    gw = rig.gw
    wait_for(lambda: accounted(gw) > 1000, 30, "traffic committed")
    rig.alarm()
    # 1. the fault comes and goes: the same process goes on
    fault(True)
    problems = wait_failing(gw, {"committer"}, allowed={"committer", "store"})
    assert any("committer: store write failed, retrying: " in p for p in problems), problems
    assert metric(gw, 'firegw_stage_failing{stage="committer"}') == 1
    rig.alarm()
    time.sleep(1.5)  # on purpose: the fleet goes on publishing into the outage
    fault(False)
    wait_ready(gw)
    assert gw.runs == 1 and gw.proc is not None and gw.proc.poll() is None
    assert metric(gw, 'firegw_stage_failing{stage="committer"}') == 0
    # 2. the fault again, and the gateway killed while it cannot commit
    fault(True)
    wait_failing(gw, {"committer"}, allowed={"committer", "store"})
    rig.alarm()
    gw.kill()
    if start_while_faulty:
        gw.start()
        wait_failing(gw, {"committer"}, allowed={"committer", "store", "source:mqtt"})
        rig.alarm()
        fault(False)
    else:
        fault(False)
        gw.start()
    wait_ready(gw)
    rig.ledger.add_fleet(fleet.result())
    assert_exact(rig)
    assert_alarms(rig)
    assert_stops_cleanly(gw)


def test_disk_full_holds_everything_until_space_returns(tmp_path: Path, broker: Mosquitto) -> None:
    """The store on a tmpfs of its own, filled up with a filler file while the fleet publishes; the
    space comes back when the filler is deleted. The second outage starts the gateway on the full
    disk. (The tmpfs is far larger than the store needs, 1 GiB: the WAL grows to many times the
    database under this load; see the README's design notes.)"""
    with mounted(tmp_path / "disk", "-t", "tmpfs", "-o", "size=1g,mode=0700", "tmpfs") as disk:
        rig = Rig(tmp_path, broker, 60, name="diskfull", store=disk / "firegw.db")
        filler = disk / "filler"

        def full(on: bool) -> None:
            if on:
                fill(disk)
            else:
                filler.unlink()

        rig.gw.start()
        fleet = rig.fleet(rate=15, duration=20)
        try:
            store_outages(rig, fleet, full, start_while_faulty=True)
        finally:
            fleet.join()
            rig.close()
            kill_if_running(rig.gw)


@contextlib.contextmanager
def ext4(path: Path, size_mb: int = 1024) -> Iterator[Path]:
    """An ext4 file system of the test's own (a sparse image on a loop device)."""
    image = path.with_name(path.name + ".img")
    with image.open("wb") as fh:
        fh.truncate(size_mb << 20)
    _run("mkfs.ext4", "-q", "-F", str(image))
    try:
        with mounted(path, "-o", "loop", str(image)) as mnt:
            yield mnt
    finally:
        image.unlink()


@contextlib.contextmanager
def read_only_store(tmp_path: Path) -> Iterator[tuple[Path, Callable[[bool], None]]]:
    """A store path, and a switch that makes the store read-only under the running gateway.

    ``mount -o remount,ro`` cannot do it: Linux refuses to remount a file system read-only while a
    file on it is open for writing (EBUSY), and SQLite holds the store open read-write for the life
    of the process. So the store's file, its WAL and its folder are made immutable (``chattr +i``),
    which the kernel enforces for root too and on descriptors already open: every write fails
    (EPERM, which SQLite reports as a disk I/O error) and a new open for writing is refused. tmpfs
    does not enforce it on open descriptors, hence an ext4 of the test's own. The -shm file is left
    alone: it is SQLite's shared-memory index, written through a memory mapping, not the store."""
    with ext4(tmp_path / "fs") as fs:
        folder = fs / "store"
        folder.mkdir()
        db = folder / "firegw.db"
        files = [folder, db, db.with_name(db.name + "-wal")]
        try:
            yield db, lambda on: immutable(files, on)
        finally:
            with contextlib.suppress(AssertionError):
                immutable(files, False)


def test_read_only_store_holds_everything_until_writable(tmp_path: Path, broker: Mosquitto) -> None:
    """The store made read-only under the running gateway, then writable again: the same
    assertions as a full disk (the start on a read-only store is the next test)."""
    with read_only_store(tmp_path) as (db, read_only):
        rig = Rig(tmp_path, broker, 60, name="readonly", store=db)
        rig.gw.start()
        fleet = rig.fleet(rate=15, duration=16)
        try:
            store_outages(rig, fleet, read_only, start_while_faulty=False)
        finally:
            fleet.join()
            rig.close()
            kill_if_running(rig.gw)


def test_started_on_a_read_only_store_recovers_once_writable(tmp_path: Path, broker: Mosquitto) -> None:
    """Started while its store is read-only, the gateway runs and says so in /readyz (committer:
    attempt to write a readonly database); once the store is writable it goes on. SQLite, refused the
    file for writing, opens it read-only without a word and keeps it so: the committer reopens its
    connection after a failed write (it once retried on the read-only one for ever)."""
    with read_only_store(tmp_path) as (db, read_only):
        rig = Rig(tmp_path, broker, 10, name="startro", store=db)
        gw = rig.gw.start()
        try:
            rig.alarm()
            assert_exact(rig)
            gw.kill()
            read_only(True)
            gw.start()
            rig.alarm()
            wait_failing(gw, {"committer"}, allowed={"committer", "store"})
            read_only(False)
            wait_ready(gw, timeout=20)  # the committer's retry backoff is at most 10 s
            assert_exact(rig)
            assert_alarms(rig)
        finally:
            rig.close()
            kill_if_running(gw)


# ---------------------------------------------------------------------------- 5. API port taken


def test_api_port_taken_at_start_ingestion_goes_on(tmp_path: Path, broker: Mosquitto) -> None:
    """Another process listens on ``api.listen`` when the gateway starts: ingestion goes on (the store
    grows, alarms open fire events), the log says the API is not serving and retries; once the port
    is free the API comes up in the same process and /readyz lists no problem. (While the port is
    taken /readyz and /metrics cannot answer at all: the log is where ``api`` shows failing.)"""
    port = free_port()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", port))
    squatter.listen(1)
    rig = Rig(tmp_path, broker, 40, name="porttaken", FIREGW_API__LISTEN=f"127.0.0.1:{port}")
    gw = rig.gw
    fleet: FleetRun | None = None
    try:
        gw.start()
        fleet = rig.fleet(rate=10, duration=6)
        first = wait_for(lambda: gw.cli("stats")["messages"], 20, "messages ingested with the API port taken")
        rig.alarm()
        wait_for(lambda: gw.cli("stats")["messages"] > first, 20, "messages still growing")
        assert gw.cli("events"), "the alarm opened no fire event while the API port was taken"
        log = gw.log()
        assert f"api: cannot listen on 127.0.0.1:{port}" in log and "ingestion goes on" in log, log[-2000:]
        squatter.close()
        wait_ready(gw, timeout=40)  # the retry backoff doubles up to 30 s: it comes up within one
        assert "is free again" in gw.log() and gw.runs == 1
        rig.alarm()
        rig.ledger.add_fleet(fleet.result())
        assert_exact(rig)
        assert_alarms(rig)
        assert_stops_cleanly(gw)
    finally:
        squatter.close()
        if fleet is not None:
            fleet.join()
        rig.close()
        kill_if_running(gw)


# ---------------------------------------------------------------------------- 6. poison messages


@dataclass(frozen=True)
class Poison:
    kind: str
    topic: str
    payload: bytes
    reason: str  # what the dead letter's reason must say: the field, or the problem


def poisons(rig: Rig, target: SimDevice) -> list[Poison]:
    """One message of every kind that must become a dead letter, on ``target`` (a button that raises
    no alarm) unless the kind is about the topic. Each holds a device time of its own where it has
    one, so no two share their bytes."""
    other_site = next(d.site_id for d in rig.devices if d.site_id != target.site_id)
    pressure = next(d for d in rig.devices if d.kind == "pressure")

    def ts() -> bytes:
        return b"%.3f" % rig.ts()

    def hb(extra: bytes = b"") -> bytes:
        return b'{"event":"heartbeat","ts":' + ts() + extra + b"}"

    def alarm() -> bytes:
        return b'{"event":"alarm","ts":' + ts() + b"}"

    t = target.topic
    site = target.site_id
    return [
        Poison("time that overflows a datetime", t, b'{"event":"heartbeat","ts":1e306}', "field 'ts'"),
        Poison("time far in the past", t, b'{"event":"heartbeat","ts":-1e308}', "field 'ts'"),
        Poison("time past a double", t, b'{"event":"heartbeat","ts":1e999}', "infinity"),
        Poison("time a word", t, b'{"event":"heartbeat","ts":"yesterday"}', "field 'ts'"),
        Poison("time a boolean", t, b'{"event":"heartbeat","ts":true}', "field 'ts'"),
        Poison("NaN", t, hb(b',"battery":NaN'), "not valid JSON"),
        Poison("Infinity", t, hb(b',"battery":Infinity'), "not valid JSON"),
        Poison("number past a double", t, hb(b',"battery":1e400'), "infinity"),
        Poison("nesting 1,900 deep", t, hb(b',"x":' + b"[" * 1900 + b"]" * 1900), "depth limit"),
        Poison("nesting 100,000 deep", t, hb(b',"x":' + b"[" * 100_000 + b"]" * 100_000), "over the profile's limit"),
        Poison(
            "duplicate keys", t, b'{"event":"alarm","event":"heartbeat","ts":' + ts() + b"}", "repeats the key 'event'"
        ),
        Poison("unmapped value 1", t, b'{"event":1,"ts":' + ts() + b"}", "field 'event': value 1 "),
        Poison("unmapped value true", t, b'{"event":true,"ts":' + ts() + b"}", "field 'event': value True "),
        Poison("misspelt value", t, b'{"event":"alrm","ts":' + ts() + b"}", "field 'event': value 'alrm' "),
        Poison("value an object", t, b'{"event":{"v":"alarm"},"ts":' + ts() + b"}", "field 'event': value dict "),
        Poison("NUL in a value", t, b'{"event":"heartbeat\\u0000","ts":' + ts() + b"}", "field 'event'"),
        Poison("wrong type", t, hb(b',"battery":"full"'), "field 'battery' (point battery): expected a number"),
        Poison("out of the physical range", t, hb(b',"battery":250'), "field 'battery' (point battery): 250 %"),
        Poison(
            "required field missing",
            pressure.topic,
            b'{"ts":' + ts() + b',"battery":50}',
            "field 'pressure' (point pressure) is missing",
        ),
        Poison("invalid UTF-8", t, b'{"event":"heart\xff\xfebeat","ts":' + ts() + b"}", "not valid UTF-8"),
        Poison("lone surrogate", t, b'{"event":"\\ud800","ts":' + ts() + b"}", "surrogate"),
        Poison("UTF-8 byte order mark", t, b"\xef\xbb\xbf" + hb(), "(BOM)"),
        Poison("UTF-16", t, hb().decode().encode("utf-16"), "not valid UTF-8"),
        Poison("truncated JSON", t, hb()[:-1], "not valid JSON"),
        Poison("two documents", t, hb() + b' {"event":"alarm"}', "unexpected content after document"),
        Poison("an array", t, b"[1,2,3]", "must be a JSON object, got list"),
        Poison("null", t, b"null", "must be a JSON object, got NoneType"),
        Poison("a string", t, b'"alarm"', "must be a JSON object, got str"),
        Poison("empty payload", t, b"", "empty"),
        Poison("over the profile's size", t, hb(b',"pad":"' + b"x" * 5000 + b'"'), "over the profile's limit of 4096"),
        Poison("3 MB", t, hb(b',"pad":"' + b"x" * 3_000_000 + b'"'), "(pipeline.max_payload_bytes)"),
        Poison(
            "unknown device",
            f"fire/{site}/button/ghost-{random.randrange(10**9)}/up",
            alarm(),
            "unknown device 'ghost-",
        ),
        Poison("empty topic levels", "fire//button//up", alarm(), "unknown device ''"),
        Poison(
            "device id of 10,000 characters", f"fire/{site}/button/{'g' * 10_000}/up", alarm(), "unknown device 'ggg"
        ),
        Poison(
            "another site's topic",
            f"fire/{other_site}/button/{target.device_id}/up",
            alarm(),
            f"topic names site '{other_site}'",
        ),
        Poison(
            "another profile's topic",
            f"fire/{site}/smoke/{target.device_id}/up",
            alarm(),
            "but the topic matches profile 'nbiot-smoke-detector'",
        ),
    ]


def assert_dead_letters(gw: GatewayProc, sent: list[Poison]) -> None:
    """Each poison is one dead letter (found by its digest, or by its size where only its first
    bytes were kept) with a reason that names the field or the problem."""
    rows: list[dict[str, Any]] = gw.cli("dead-letters", "--limit", "1000000")
    for p in sent:
        digest = hashlib.sha256(p.payload).hexdigest()
        found = [r for r in rows if r["digest"] == digest or (r["digest"] is None and r["size"] == len(p.payload))]
        found = [r for r in found if p.topic.startswith(r["address"])]
        assert len(found) == 1, (p.kind, found)
        assert p.reason in found[0]["reason"], (p.kind, found[0]["reason"])


def test_poison_messages_of_every_kind(tmp_path: Path, broker: Mosquitto) -> None:
    """Poison of every kind among a fleet's traffic (about 2,000 messages/s, its own 2% malformed),
    each followed by an alarm on another button (in the vendor spellings the profile accepts): every
    poison is one dead letter with a reason naming the field or the problem, every good message a
    message, every alarm a fire event, and the gateway never restarts nor reports a stage failing.
    Then a retained alarm with no device time, delivered again on two reconnects (MQTT 3.1.1 sends
    retained messages on every subscribe; a new MQTT 5 session gets them too): taken once, no second
    fire event, ``messages`` does not grow."""
    rig = Rig(tmp_path, broker, 200, name="poison")
    target = rig.buttons.pop()  # poison only: it must open no fire event
    gw = rig.gw.start()
    fleet = rig.fleet(rate=10, duration=8)
    try:
        sent = poisons(rig, target)
        spellings = ["alarm", "ALARM", "Alarm", "alarm "]
        for i, p in enumerate(sent):
            rig.publish(p.topic, p.payload, bad=True)
            rig.alarm(spellings[i % len(spellings)])
            if i == len(sent) // 2:
                assert readyz(gw) == (200, []), "poison made a stage look failing"
        rig.ledger.add_fleet(fleet.result())
        assert_exact(rig)
        assert_alarms(rig)
        assert_dead_letters(gw, sent)
        assert readyz(gw) == (200, [])
        assert gw.runs == 1 and gw.proc is not None and gw.proc.poll() is None
        assert "unexpected failure" not in gw.log()
        # a retained alarm with no time, delivered again on reconnects
        button = rig.next_button()
        rig.publish(button.topic, b'{"event": "alarm"}', readings=1, retain=True)
        rig.ledger.alarms[button.device_id] += 1
        assert_exact(rig)
        for env in ({"FIREGW_MQTT__PROTOCOL": "3.1.1"}, {"FIREGW_MQTT__CLIENT_ID": f"firegw-poison-{broker.port}-new"}):
            assert gw.stop() == 0
            gw.env.pop("FIREGW_MQTT__PROTOCOL", None)
            gw.env.update(env)
            before = store_stats(gw.db)["duplicates"]
            gw.start()
            wait_for(
                lambda: store_stats(gw.db)["duplicates"] > before,  # noqa: B023 (called before the next loop)
                20,
                "the retained alarm delivered again",
            )
            assert_exact(rig)
            assert_alarms(rig)
        assert_stops_cleanly(gw)
    finally:
        fleet.join()
        rig.close()
        kill_if_running(gw)


def test_wal_stays_bounded_and_sigterm_during_an_outage_stops_promptly(tmp_path: Path, broker: Mosquitto) -> None:
    """Under steady load the WAL stays bounded (it once reached 184 MB for a 6.6 MB store in 15 s and
    filled a small disk by itself); and a SIGTERM while the store refuses writes stops the gateway
    within seconds, acknowledging nothing it did not commit (it once waited out its 30 s join)."""
    with mounted(tmp_path / "disk", "-t", "tmpfs", "-o", "size=160m,mode=0700", "tmpfs") as disk:
        rig = Rig(tmp_path, broker, 60, name="walterm", store=disk / "firegw.db")
        wal = disk / "firegw.db-wal"
        rig.gw.start()
        fleet = rig.fleet(rate=15, duration=20)
        try:
            biggest = 0
            while not fleet.done():
                biggest = max(biggest, wal.stat().st_size if wal.exists() else 0)
                time.sleep(0.2)  # on purpose: sampling the WAL's size while the fleet publishes
            rig.ledger.add_fleet(fleet.result())
            assert_exact(rig)
            assert biggest < 100 * 1_048_576, f"the WAL grew to {biggest / 1_048_576:.0f} MB"
            assert readyz(rig.gw)[0] == 200
            # the store refuses writes (once the WAL's reused space is taken too), traffic arrives,
            # and the gateway is asked to stop
            filler = fill(disk)
            fleet = rig.fleet(rate=15, duration=8)
            rig.alarm()
            wait_failing(rig.gw, {"committer"}, allowed={"committer", "store"})
            gw = rig.gw
            assert gw.proc is not None
            t0 = time.monotonic()
            gw.proc.terminate()
            rc = gw.proc.wait(25)
            assert time.monotonic() - t0 < 20, "the stop waited out the store"
            assert rc == 0 and "stopped while the store refuses writes" in gw.log(), gw.log()[-2000:]
            gw.proc = None
            filler.unlink()
            gw.start()
            rig.ledger.add_fleet(fleet.result())
            assert_exact(rig)  # nothing was acknowledged at the stop that was not committed
            assert_alarms(rig)
            assert_stops_cleanly(gw)
        finally:
            fleet.join()
            rig.close()
            kill_if_running(rig.gw)
