"""Start and stop a private Mosquitto for tests, the demo and benchmarks.

The broker is configured not to drop messages queued for a slow subscriber: Mosquitto's default
``max_queued_messages 1000`` silently discards QoS 1 messages beyond that for a persistent
session that is not reading fast enough (or is offline). Persistence is on, so a broker restart
keeps the gateway's session and its queued messages.

Payloads are bounded (``message_size_limit``, :data:`MESSAGE_SIZE_LIMIT`): without a bound one client
can make the broker hold messages of up to 256 MB (the MQTT maximum) in memory and in its persistence
file for every subscriber. The bound is far above what any profile accepts (``mqtt.max_payload_bytes``
is at most 1 MiB), so an oversized payload a test sends reaches the gateway and becomes a dead letter
there, which is what the tests check; only a payload past the bound is refused by the broker itself
(dropped; an MQTT 3.1.1 publisher gets an ordinary PUBACK, an MQTT 5 publisher a failure reason code).
docker/mosquitto/mosquitto.conf sets a tighter bound for deployments.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["MESSAGE_SIZE_LIMIT", "Mosquitto", "free_port", "mosquitto_binary"]

#: Per-client queue bound: large enough that the broker never drops a queued QoS 1 message in a
#: realistic outage (a district's 10 000 devices at one message a minute for ten hours).
MAX_QUEUED_MESSAGES = 10_000_000
#: Largest payload the broker accepts (bytes): 16x the largest ``mqtt.max_payload_bytes`` a profile
#: may set (1 MiB), so every oversize case the tests publish is the gateway's to dead-letter.
MESSAGE_SIZE_LIMIT = 16 * 1_048_576


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if found is None:
        raise RuntimeError("mosquitto is not installed (scripts/test and scripts/demo install it with apt-get)")
    return found


def _chown_for_mosquitto(path: Path) -> None:
    """Mosquitto started as root drops to the 'mosquitto' user: its folders must be theirs."""
    if os.geteuid() != 0:
        return
    try:
        pw = pwd.getpwnam("mosquitto")
    except KeyError:
        return
    for p in [path, *path.rglob("*")]:
        os.chown(p, pw.pw_uid, pw.pw_gid)
    # every folder above must be traversable
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, mode | 0o011)


@dataclass
class Mosquitto:
    """A broker on 127.0.0.1:port with its own persistence folder under ``workdir``."""

    workdir: Path
    port: int = field(default_factory=free_port)
    extra_config: str = ""
    tls_port: int | None = None
    message_size_limit: int = MESSAGE_SIZE_LIMIT
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        data = self.workdir / "data"
        return "\n".join(
            [
                f"listener {self.port} 127.0.0.1",
                "allow_anonymous true",
                "persistence true",
                f"persistence_location {data}/",
                "autosave_interval 30",
                f"max_queued_messages {MAX_QUEUED_MESSAGES}",
                "max_queued_bytes 0",
                "max_inflight_messages 0",
                "max_keepalive 3600",
                f"message_size_limit {self.message_size_limit}",
                f"log_dest file {self.workdir}/mosquitto.log",
                "log_type error",
                "log_type warning",
                "log_type notice",
                self.extra_config,
                "",
            ]
        )

    def start(self, timeout: float = 10.0) -> Mosquitto:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "data").mkdir(exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config_text())
        _chown_for_mosquitto(self.workdir)
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._wait_listening(self.port, timeout)
        return self

    def _wait_listening(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                log = self.workdir / "mosquitto.log"
                raise RuntimeError(f"mosquitto exited: {err} {log.read_text() if log.exists() else ''}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {port} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM): the broker writes its persistence file first."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        """Crash the broker (SIGKILL): it writes nothing on the way down, so a :meth:`start` afterwards
        (same port, same persistence folder) restores what its last save wrote: every
        ``autosave_interval`` seconds, at a clean stop, or on :meth:`save`. Messages it acknowledged
        after that save are lost by Mosquitto itself."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def save(self, timeout: float = 10.0) -> None:
        """Make the broker write its persistence file now (SIGUSR1) and return once it has: Mosquitto
        writes ``mosquitto.db.new`` and renames it over ``mosquitto.db``, so a new inode means done."""
        assert self.proc is not None and self.proc.poll() is None, "the broker is not running"
        # The broker runs as 'mosquitto' and must still reach its folder: a pytest session starting
        # meanwhile (another one on the same machine) takes the traverse bit off /tmp/pytest-of-<user>.
        _chown_for_mosquitto(self.workdir)
        db = self.workdir / "data" / "mosquitto.db"

        def inode() -> int | None:
            try:
                return db.stat().st_ino
            except FileNotFoundError:
                return None

        before = inode()
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while inode() in (before, None):
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not write {db} within {timeout}s of SIGUSR1")
            time.sleep(0.02)

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
