"""The MQTT destination (paho-mqtt 2.x, MQTT 5, QoS 1): fire events, hazards and site codes.

This is the only module of ``notify/`` that uses paho; paho's exceptions never leave it.

* A fire-event row's body is published on ``events_mqtt.topic_events``, a hazard row's on
  ``topic_hazards``, a site row's (code override set or cleared) on ``topic_hazards`` too, since
  both change the site's code. Topics are formatted with ``{town}`` (the site's town in the
  inventory) and ``{site}`` (its site id). The row is delivered when the broker's PUBACK arrives
  (a PUBACK with a failure reason code, e.g. not authorized, makes it *rejected*).
* After hazard or site rows for a site are delivered, the site's code is recomputed
  (``gateway.sites.site_summaries``) and, when it changed, published **retained** at QoS 1 on
  ``topic_code`` as ``{"site_id", "code", "reason_zh", "reason_en", "next_inspection_due", "at"}``.
  Every site's code is published once on each (re)connect, and codes are re-checked every
  ``CODE_REFRESH_S`` (a deadline passing can turn a site red with no new event).
* paho reconnects by itself (a jittered 0.5 s … 1 s doubling to 30 s, drawn again after every
  disconnect); while the broker is away nothing is handed to paho (its queue stays bounded by the
  in-flight rows) and rows wait in the outbox.
* TLS: ``events_mqtt.tls``; with no ``events_mqtt.url`` (the source's broker) and that block left
  at its defaults, ``mqtt.tls``. The client is built by ``gateway/mqtt_client.py``, as the source's is.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho

from gateway.errors import ConfigError
from gateway.health import Stage
from gateway.mqtt_client import build_client, jitter_reconnect
from gateway.notify.base import Delivered, OutboxRow, Outcome, Rejected, Retry
from gateway.profiles.loader import Catalog
from gateway.retry import Backoff, EdgeLog
from gateway.settings import GatewaySettings, TlsSettings

__all__ = ["CODE_REFRESH_S", "MQTT_CONCURRENCY", "PUBACK_TIMEOUT_S", "MqttPublisher"]

logger = logging.getLogger(__name__)

#: Rows (subjects) in flight at once.
MQTT_CONCURRENCY = 64
#: A publish with no PUBACK within this many seconds is retried.
PUBACK_TIMEOUT_S = 10.0
#: Backoff of failed publishes (seconds); paho's reconnect delay has the same cap.
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
#: paho's first reconnect delay (jittered, then doubled up to BACKOFF_MAX_S).
RECONNECT_MIN_S = 1.0
#: Site codes are recomputed at least this often (seconds).
CODE_REFRESH_S = 60.0
KEEPALIVE_S = 30
_EARLY_MAX = 1024

Summaries = Callable[[], Awaitable[list[dict[str, Any]]]]


def _level(value: str) -> str:
    """One topic level: no separators or wildcards."""
    return "".join("_" if ch in "/+#\x00" else ch for ch in value) or "_"


def _check_template(field: str, template: str) -> None:
    try:
        topic = template.format(town="t", site="s")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"settings: events_mqtt.{field}: only {{town}} and {{site}} may appear: {exc}") from exc
    if not topic or "+" in topic or "#" in topic:
        raise ConfigError(f"settings: events_mqtt.{field}: not a topic to publish on: {template!r}")


class MqttPublisher:
    """Publishes outbox rows and site codes; see the module docstring."""

    name = "mqtt"
    tracks_connection = True

    def __init__(self, settings: GatewaySettings, catalog: Catalog, *, stage: Stage, summaries: Summaries) -> None:
        em = settings.events_mqtt
        url = em.url or settings.mqtt.url
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
            raise ConfigError(f"settings: events_mqtt.url: expected mqtt://host:port or mqtts://..., got {url!r}")
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"settings: events_mqtt.url: bad port in {url!r}") from exc
        for f in ("topic_events", "topic_hazards", "topic_code"):
            _check_template(f, getattr(em, f))
        self._em = em
        # the source's broker (no url of its own): its TLS too, unless this section's tls says otherwise
        inherit = em.url is None and em.tls == TlsSettings()
        self._tls, self._tls_section = (settings.mqtt.tls, "mqtt") if inherit else (em.tls, "events_mqtt")
        self._secure = parts.scheme in ("mqtts", "ssl") or self._tls.ca_file is not None
        self._host = parts.hostname
        self._port = port or (8883 if self._secure else 1883)
        self._catalog = catalog
        self._stage = stage
        self._summaries = summaries
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._early: dict[int, tuple[Any, float]] = {}
        self._abandoned: set[int] = set()
        self._connected = False
        self._dirty: set[str] = set()
        self._force_all = False
        self._code_wake: asyncio.Event | None = None
        self._published: dict[str, tuple[Any, ...]] = {}
        self._codes = EdgeLog(logger)
        self._reconnect = Backoff(RECONNECT_MIN_S, BACKOFF_MAX_S)

    # ------------------------------------------------------------------ Destination

    @property
    def concurrency(self) -> int:
        return MQTT_CONCURRENCY

    @property
    def backoff_min_s(self) -> float:
        return BACKOFF_MIN_S

    @property
    def backoff_max_s(self) -> float:
        return BACKOFF_MAX_S

    def _build(self) -> Any:
        em = self._em
        client = build_client(
            section=self._tls_section,
            client_id=em.client_id,
            protocol="5",
            username=em.username,
            password=em.password,
            secure=self._secure,
            tls=self._tls,
            reconnect=self._reconnect,
        )
        client.max_inflight_messages_set(MQTT_CONCURRENCY * 2)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.connect_async(self._host, self._port, keepalive=KEEPALIVE_S, clean_start=True)
        client.loop_start()
        return client

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._code_wake = asyncio.Event()
        self._stage.connected = False
        try:
            self._client = await asyncio.to_thread(self._build)
        except ConfigError:
            raise
        except Exception as exc:  # paho: bad arguments, socket setup
            raise ConfigError(f"settings: events_mqtt: cannot start the MQTT client: {exc}") from exc

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return

        def stop() -> None:
            try:
                client.disconnect()
            except Exception:  # the socket is already gone: nothing to flush
                logger.debug("notify:mqtt: disconnect failed", exc_info=True)
            client.loop_stop()

        await asyncio.to_thread(stop)
        self._connected = False
        self._stage.connected = False
        self._fail_pending()

    async def send(self, row: OutboxRow) -> Outcome:
        try:
            body = json.loads(row.body)
            kind = body.get("kind")
            site_id = _site_of(body)
        except (ValueError, AttributeError) as exc:
            return Rejected(f"body is not a JSON object: {exc}")
        if site_id is None:
            return Rejected(f"no site_id in the {kind} body")
        template = self._em.topic_events if kind == "fire_event" else self._em.topic_hazards
        topic = self._topic(template, site_id, body)
        return await self._publish(topic, row.body.encode("utf-8"), retain=False)

    def delivered(self, row: OutboxRow) -> None:
        if row.subject.startswith("fire_event:"):
            return
        try:
            site_id = _site_of(json.loads(row.body))
        except (ValueError, AttributeError):
            return
        if site_id is not None and self._code_wake is not None:
            self._dirty.add(site_id)
            self._code_wake.set()

    async def background(self) -> None:
        """Publish site codes that changed (and all of them after each connect)."""
        wake = self._code_wake
        assert wake is not None
        while True:
            try:
                async with asyncio.timeout(CODE_REFRESH_S):  # not wait_for: it can swallow a cancel in 3.11
                    await wake.wait()
            except TimeoutError:
                self._dirty.update(self._catalog.sites)
            wake.clear()
            if not self._connected or not (self._dirty or self._force_all):
                continue
            force, self._force_all = self._force_all, False
            dirty, self._dirty = self._dirty, set()
            try:
                summaries = await self._summaries()
            except Exception as exc:  # the store busy or a bad row: codes wait, deliveries go on
                self._codes.failed(
                    "notify:mqtt: cannot compute site codes: %s", exc, exc_info=not isinstance(exc, sqlite3.Error)
                )
                self._dirty |= dirty
                self._force_all |= force
                await asyncio.sleep(1.0)
                wake.set()
                continue
            self._codes.recovered("notify:mqtt: site codes computed again")
            for i, s in enumerate(summaries):
                site_id = s["site_id"]
                key = (s["code"], s["reason_zh"], s["reason_en"], s.get("last_inspection"))
                if not force and (site_id not in dirty or self._published.get(site_id) == key):
                    continue
                outcome = await self._publish_code(s)
                if isinstance(outcome, Delivered):
                    self._published[site_id] = key
                    continue
                logger.debug("notify:mqtt: site code for %s not published: %s", site_id, outcome)
                # not connected (any more): the next connect republishes everything
                self._dirty |= dirty | {x["site_id"] for x in summaries[i:]}
                break

    # ------------------------------------------------------------------ helpers

    def _topic(self, template: str, site_id: str, body: dict[str, Any] | None = None) -> str:
        site = self._catalog.sites.get(site_id)
        town = site.town if site is not None else ""
        if not town and body is not None:
            subject = body.get(str(body.get("kind")))
            if isinstance(subject, dict):
                town = str(subject.get("town") or "")
        return template.format(town=_level(town or "unknown"), site=_level(site_id))

    async def _publish_code(self, summary: dict[str, Any]) -> Outcome:
        payload = {
            "site_id": summary["site_id"],
            "code": summary["code"],
            "reason_zh": summary["reason_zh"],
            "reason_en": summary["reason_en"],
            "next_inspection_due": summary["next_inspection_due"],
            "at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        topic = self._topic(self._em.topic_code, summary["site_id"])
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        outcome = await self._publish(topic, data, retain=True)
        if isinstance(outcome, Delivered):
            logger.debug("notify:mqtt: %s code %s", summary["site_id"], summary["code"])
        return outcome

    async def _publish(self, topic: str, payload: bytes, *, retain: bool) -> Outcome:
        client, loop = self._client, self._loop
        if client is None or loop is None or not self._connected:
            return Retry(f"broker {self._host}:{self._port} not connected")
        fut: asyncio.Future[Any] = loop.create_future()
        try:
            info = client.publish(topic, payload, qos=1, retain=retain)
        except (ValueError, TypeError) as exc:
            return Rejected(f"publish to {topic!r} refused: {exc}")
        except Exception as exc:  # paho internals (socket errors surface here too)
            return Retry(f"publish failed: {exc}")
        mid: int = info.mid
        if info.rc != paho.MQTT_ERR_SUCCESS:
            self._abandon(mid)
            return Retry(f"publish failed: {paho.error_string(info.rc)}")
        with self._lock:
            early = self._early.pop(mid, None)
            if early is None:
                self._pending[mid] = fut
        if early is not None:
            return _result(early[0])
        try:
            async with asyncio.timeout(PUBACK_TIMEOUT_S):
                rc = await fut
        except TimeoutError:
            self._abandon(mid)
            return Retry(f"no PUBACK within {PUBACK_TIMEOUT_S:g} s")
        except asyncio.CancelledError:
            self._abandon(mid)
            raise
        return _result(rc)

    def _abandon(self, mid: int) -> None:
        with self._lock:
            if self._pending.pop(mid, None) is not None or mid not in self._early:
                if len(self._abandoned) > _EARLY_MAX:
                    self._abandoned.clear()
                self._abandoned.add(mid)
            self._early.pop(mid, None)

    def _fail_pending(self) -> None:
        """Connection lost: every publish waiting for its PUBACK is retried later."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._early.clear()
            self._abandoned.clear()
        for fut in pending.values():
            if not fut.done():
                fut.set_result(None)

    # ------------------------------------------------------------------ paho callbacks (network thread)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._stage.set_connected(False, f"broker {self._host}:{self._port} refused: {reason_code}")
            return
        self._connected = True
        self._stage.set_connected(True)
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._connected_in_loop)
            except RuntimeError:  # loop closed: shutting down
                pass

    def _connected_in_loop(self) -> None:
        self._force_all = True
        if self._code_wake is not None:
            self._code_wake.set()

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self._stage.set_connected(False, f"broker {self._host}:{self._port} not reachable")

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        was = self._connected
        self._connected = False
        if self._client is None:  # stopping
            return
        jitter_reconnect(client, self._reconnect)
        if was:
            self._stage.set_connected(False, f"disconnected: {reason_code}")
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._fail_pending)
            except RuntimeError:
                pass

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._lock:
            if mid in self._abandoned:
                self._abandoned.discard(mid)
                return
            fut = self._pending.pop(mid, None)
            if fut is None:
                if len(self._early) >= _EARLY_MAX:
                    self._early.clear()
                self._early[mid] = (reason_code, time.monotonic())
                return
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(_resolve, fut, reason_code)
            except RuntimeError:
                pass


def _resolve(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _result(reason_code: Any) -> Outcome:
    if reason_code is None:
        return Retry("connection lost before the PUBACK")
    if getattr(reason_code, "is_failure", False):
        return Rejected(f"broker refused the publish: {reason_code}")
    return Delivered()


def _site_of(body: dict[str, Any]) -> str | None:
    kind = body.get("kind")
    subject = body.get(str(kind))
    if isinstance(subject, dict) and subject.get("site_id"):
        return str(subject["site_id"])
    if kind == "site" and body.get("subject_id"):
        return str(body["subject_id"])
    return None
