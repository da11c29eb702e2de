"""The MQTT source (paho-mqtt 2.x): QoS 1, persistent session, acknowledgement after commit.

This module holds the source's paho code (the client itself is built by ``gateway/mqtt_client.py``,
shared with the events publisher). Messages go to the committer's bounded inbox from
paho's network thread; the committer calls :meth:`MqttSource.ack` once what they produced is
committed (paho ``manual_ack``). While the inbox is full the network thread waits, so the broker
holds the rest of the session's messages rather than anyone dropping them.

Reconnects use a capped, jittered exponential backoff (``mqtt.reconnect_min_s`` to
``reconnect_max_s``, a new jittered first delay after every disconnect) and resubscribe on every
connect. A broker whose certificate does not verify, or that refuses the credentials, on the
*first* connection (or a TLS file that cannot be loaded) is a configuration error
(:class:`AuthenticationFailed`): the gateway stops with that message rather than retrying forever
in silence.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import ssl
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.errors import AuthenticationFailed, ConfigError
from gateway.health import Health
from gateway.models import RawMessage
from gateway.mqtt_client import build_client, jitter_reconnect
from gateway.retry import Backoff
from gateway.settings import MqttSettings
from gateway.sources.base import RawSink

__all__ = ["MqttSource"]

#: Messages the receiver process holds while the gateway is not taking them; past this, paho stops
#: reading the socket and the broker holds the rest (back-pressure, never a drop).
_CHILD_PENDING_MAX = 20_000
_FLUSH_EVERY_S = 0.002
_FLUSH_AT = 500
#: An oversized payload travels on as its first bytes only (it becomes a dead letter with its real size).
_KEEP_OVERSIZE = 4096

logger = logging.getLogger(__name__)

_AUTH_CODES = {
    "Bad user name or password",
    "Not authorized",
    "Bad username or password",
    "Client identifier not valid",
    "Banned",
}


class _PahoReceiver:
    """paho in this process: subscribes to the profiles' topic patterns and feeds a sink."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        subscriptions: list[str],
        sink: RawSink,
        health: Health,
        name: str = "mqtt",
        max_payload_bytes: int = 262_144,
    ) -> None:
        if not subscriptions:
            raise ValueError("no topic to subscribe to: no MQTT profile is loaded")
        self.name = name
        self._settings = settings
        self._subscriptions = subscriptions
        self._sink = sink
        self._max_payload = max_payload_bytes
        self._stage = health.stage(f"source:{name}", stall_after_s=60.0)
        self._stage.connected = False
        self._client: Any = None
        self._reconnect = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
        self._stopping = False
        self._ever_connected = False
        self._first_result = threading.Event()
        self.fatal: AuthenticationFailed | None = None
        self.received = 0

    # ------------------------------------------------------------------ lifecycle

    def _build(self) -> Any:
        s = self._settings
        try:
            client = build_client(
                section="mqtt",
                client_id=s.client_id,
                protocol=s.protocol,
                username=s.username,
                password=s.password,
                secure=s.secure,
                tls=s.tls,
                reconnect=self._reconnect,
                manual_ack=True,
            )
        except ConfigError as exc:
            raise AuthenticationFailed(str(exc), source=self.name) from exc
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _connect_properties(self) -> Properties | None:
        if self._settings.protocol != "5":
            return None
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._settings.session_expiry_s
        props.ReceiveMaximum = self._settings.receive_maximum
        return props

    def start(self, first_connect_timeout_s: float = 10.0) -> None:
        """Connect (in the background if the broker is not up yet) and start receiving.

        Raises AuthenticationFailed when the broker's certificate does not verify or the broker
        refuses the credentials.
        """
        s = self._settings
        self._client = client = self._build()
        kwargs: dict[str, Any] = {"keepalive": s.keepalive_s}
        if s.protocol == "5":
            kwargs["clean_start"] = False
            kwargs["properties"] = self._connect_properties()
        try:
            client.connect(s.host, s.port, **kwargs)
        except ssl.SSLCertVerificationError as exc:
            raise AuthenticationFailed(
                f"broker {s.host}:{s.port}: certificate does not verify: {exc.verify_message or exc}", source=self.name
            ) from exc
        except ssl.SSLError as exc:
            raise AuthenticationFailed(
                f"broker {s.host}:{s.port}: TLS handshake failed: {exc}", source=self.name
            ) from exc
        except OSError as exc:
            logger.warning("mqtt: broker %s:%s not reachable yet (%s); retrying in the background", s.host, s.port, exc)
            self._stage.set_connected(False, f"connect failed: {exc}")
            client.connect_async(s.host, s.port, **kwargs)
        client.loop_start()
        if self._first_result.wait(first_connect_timeout_s) and self.fatal is not None:
            self.stop()
            raise self.fatal

    def stop(self) -> None:
        """Disconnect after the acknowledgements already queued have been sent."""
        self._stopping = True
        client = self._client
        if client is None:
            return
        try:
            client.disconnect()
        except Exception:  # paho may raise on a socket already gone; nothing is left to flush then
            logger.debug("mqtt: disconnect failed", exc_info=True)
        client.loop_stop()
        self._client = None

    def resubscribe(self, subscriptions: list[str]) -> None:
        """Subscribe to new topic patterns (profiles activated without a restart)."""
        new = [t for t in subscriptions if t not in self._subscriptions]
        self._subscriptions = list(subscriptions)
        if new and self._client is not None:
            self._client.subscribe(self._topics(new))
            logger.info("mqtt: subscribed to %s", ", ".join(new))

    def _topics(self, topics: list[str]) -> list[tuple[str, Any]]:
        """QoS 1; under MQTT 5 retained messages are sent only for a new subscription, so resubscribing
        on a reconnect with the session present does not replay them (retained messages that do
        arrive are taken as state once: see the committer)."""
        if self._settings.protocol == "5":
            return [
                (t, SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)) for t in topics
            ]
        return [(t, 1) for t in topics]

    # ------------------------------------------------------------------ acknowledgements

    def ack(self, tokens: list[object]) -> None:
        client = self._client
        if client is None:
            return
        for tok in tokens:
            assert isinstance(tok, tuple)
            mid: int = tok[0]
            qos: int = tok[1]
            if qos:
                client.ack(mid, qos)

    # ------------------------------------------------------------------ paho callbacks (network thread)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            text = str(reason_code)
            msg = f"broker {self._settings.host}:{self._settings.port} refused the connection: {text}"
            self._stage.set_connected(False, msg)
            if text in _AUTH_CODES and not self._ever_connected:
                self.fatal = AuthenticationFailed(msg, source=self.name)
                logger.error("mqtt: %s", msg)
                self._first_result.set()
                client.disconnect()
            return
        self._ever_connected = True
        session = bool(getattr(flags, "session_present", False))
        logger.info("mqtt: connected to %s:%s (session present: %s)", self._settings.host, self._settings.port, session)
        client.subscribe(self._topics(self._subscriptions))
        self._stage.set_connected(True)
        self._first_result.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        bad = [str(rc) for rc in reason_codes if rc.is_failure]
        if bad:
            self._stage.last_error = f"subscription refused: {', '.join(bad)}"
            logger.error("mqtt: subscription refused by the broker: %s", ", ".join(bad))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if self._stopping:
            self._stage.connected = False
            return
        jitter_reconnect(client, self._reconnect)  # a fleet of gateways must not reconnect in lock-step
        self._stage.set_connected(False, f"disconnected: {reason_code}")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            self._take(msg)
        except Exception:  # an exception here would end paho's network thread: never let one through
            self._stage.count("receive_errors")
            logger.exception("mqtt: a message could not be taken; the broker redelivers it")

    def _take(self, msg: Any) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # paho decodes the topic lazily; a broker should never pass such a one
            topic = msg._topic.decode("utf-8", "replace")
        payload: bytes = msg.payload
        size = len(payload)
        truncated = 0
        if size > self._max_payload:  # keep the first bytes only: it is a dead letter, never data
            payload, truncated = payload[:_KEEP_OVERSIZE], size
        raw = RawMessage(
            self.name, topic, payload, int(time.time() * 1000), (msg.mid, msg.qos), msg.dup, bool(msg.retain), truncated
        )
        if self._sink.put(raw):
            self.received += 1
            self._stage.beat()


# ---------------------------------------------------------------------------- receiver process


class _BatchSink:
    """In the receiver process: collects messages for the flusher; blocks paho when too many wait."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, bytes, int, int, bool, int, bool, int]] = []
        self.lock = threading.Lock()
        self.stopping = False

    def put(self, raw: RawMessage) -> bool:
        while len(self.pending) >= _CHILD_PENDING_MAX and not self.stopping:
            time.sleep(0.001)
        if self.stopping:
            return False
        token = raw.token
        assert isinstance(token, tuple)
        with self.lock:
            self.pending.append(
                (
                    raw.address,
                    raw.payload,
                    int(token[0]),
                    int(token[1]),
                    raw.redelivered,
                    raw.received_at_ms,
                    raw.retained,
                    raw.truncated_from,
                )
            )
        return True

    def take(self) -> list[tuple[str, bytes, int, int, bool, int, bool, int]]:
        with self.lock:
            out, self.pending = self.pending, []
        return out


def _child_main(
    settings_json: str, subscriptions: list[str], name: str, data: Connection, ctl: Connection, max_payload_bytes: int
) -> None:
    """The receiver process: paho, a flusher sending batches to the gateway, and its commands."""
    import pickle

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s mqtt-receiver: %(message)s")
    settings = MqttSettings.model_validate_json(settings_json)
    health = Health()
    sink = _BatchSink()
    receiver = _PahoReceiver(
        settings, subscriptions=subscriptions, sink=sink, health=health, name=name, max_payload_bytes=max_payload_bytes
    )
    send_lock = threading.Lock()

    def send(obj: object) -> None:
        try:
            with send_lock:
                data.send_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
        except (OSError, ValueError):  # the gateway is gone (killed): leave at once, acknowledging nothing
            os._exit(0)

    try:
        receiver.start()
    except AuthenticationFailed as exc:
        send(("fatal", str(exc)))
        return
    stage = health.stage(f"source:{name}")
    send(("status", stage.connected, stage.last_error))  # before "started": the gateway's first look is right
    send(("started",))
    done = threading.Event()

    def flusher() -> None:
        last: tuple[bool | None, str | None] = (None, None)
        while not done.is_set():
            batch = sink.take()
            if batch:
                send(("batch", batch))
            state = (stage.connected, stage.last_error)
            if state != last:
                last = state
                send(("status", stage.connected, stage.last_error))
            if len(sink.pending) < _FLUSH_AT:
                time.sleep(_FLUSH_EVERY_S)

    t = threading.Thread(target=flusher, name="mqtt-flusher", daemon=True)
    t.start()
    try:
        while True:
            cmd = ctl.recv()
            if cmd[0] == "ack":
                receiver.ack(cmd[1])
            elif cmd[0] == "subscribe":
                receiver.resubscribe(cmd[1])
            elif cmd[0] == "stop":
                break
    except (EOFError, OSError):  # the gateway is gone (killed): leave at once, acknowledging nothing more
        os._exit(0)
    sink.stopping = True
    receiver.stop()  # sends the acknowledgements queued before "stop", then DISCONNECT
    done.set()


class MqttSource:
    """The MQTT source: paho runs in a receiver process of its own, so receiving (paho's Python
    packet handling) and committing (decoding and SQLite) use both cores; see the README's design
    notes for the measurement. Acknowledgements still go only after commit: the committer calls
    :meth:`ack`, which tells the receiver process to send the PUBACKs.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        subscriptions: list[str],
        sink: RawSink,
        health: Health,
        name: str = "mqtt",
        max_payload_bytes: int = 262_144,
    ) -> None:
        if not subscriptions:
            raise ValueError("no topic to subscribe to: no MQTT profile is loaded")
        self.name = name
        self._settings = settings
        self._max_payload = max_payload_bytes
        self._subscriptions = list(subscriptions)
        self._sink = sink
        self._stage = health.stage(f"source:{name}", stall_after_s=60.0)  # connected: unknown until it reports
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._data: Connection | None = None
        self._ctl: Connection | None = None
        self._ctl_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._first = threading.Event()
        self.fatal: AuthenticationFailed | None = None
        self.received = 0

    def start(self, first_connect_timeout_s: float = 15.0) -> None:
        ctx = multiprocessing.get_context("spawn")
        data_parent, data_child = ctx.Pipe(duplex=False)
        ctl_child, ctl_parent = ctx.Pipe(duplex=False)
        self._data, self._ctl = data_parent, ctl_parent
        self._proc = ctx.Process(
            target=_child_main,
            name=f"firegw-{self.name}-receiver",
            daemon=True,
            args=(
                self._settings.model_dump_json(),
                self._subscriptions,
                self.name,
                data_child,
                ctl_child,
                self._max_payload,
            ),
        )
        self._proc.start()
        data_child.close()
        ctl_child.close()
        self._reader = threading.Thread(target=self._read, name=f"firegw-{self.name}-reader", daemon=True)
        self._reader.start()
        if not self._first.wait(first_connect_timeout_s):
            logger.warning("mqtt: the receiver process has not reported within %.0f s", first_connect_timeout_s)
        if self.fatal is not None:
            self.stop()
            raise self.fatal

    def _read(self) -> None:
        import pickle

        assert self._data is not None
        sink, name, stage = self._sink, self.name, self._stage
        while True:
            try:
                msg = pickle.loads(self._data.recv_bytes())
            except (EOFError, OSError):
                if self._proc is not None and self._proc.exitcode not in (None, 0):
                    stage.set_connected(False, f"receiver process exited with {self._proc.exitcode}")
                self._first.set()
                return
            kind = msg[0]
            if kind == "batch":
                taking = True
                for topic, payload, mid, qos, dup, ms, retained, truncated in msg[1]:
                    if taking and sink.put(RawMessage(name, topic, payload, ms, (mid, qos), dup, retained, truncated)):
                        self.received += 1
                    else:
                        taking = False  # stopping: left unacknowledged, so the broker keeps them
                stage.beat()
            elif kind == "status":
                stage.set_connected(bool(msg[1]), msg[2])
            elif kind == "started":
                self._first.set()
            elif kind == "fatal":
                self.fatal = AuthenticationFailed(msg[1].split(": ", 1)[-1], source=name)
                logger.error("mqtt: %s", msg[1])
                self._first.set()

    def _send(self, obj: object) -> None:
        if self._ctl is None:
            return
        with self._ctl_lock:
            try:
                self._ctl.send(obj)
            except (OSError, ValueError):  # the receiver is gone; the broker redelivers what was not acked
                pass

    def ack(self, tokens: list[object]) -> None:
        self._send(("ack", tokens))

    def resubscribe(self, subscriptions: list[str]) -> None:
        self._subscriptions = list(subscriptions)
        self._send(("subscribe", self._subscriptions))

    def stop(self) -> None:
        """Acknowledgements already sent go first; then the receiver disconnects and exits."""
        self._send(("stop",))
        if self._proc is not None:
            self._proc.join(15)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5)
        if self._reader is not None:
            self._reader.join(5)
        self._stage.connected = False
