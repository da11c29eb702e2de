"""The webhook destination (httpx): POST each outbox row's body, signed, to the grid workflow.

This is the only module that imports httpx; httpx exceptions never leave it. :meth:`WebhookSender.send`
turns every answer and every failure into an :class:`~gateway.notify.base.Outcome`.

Request
-------

``POST <webhook.url>`` with the row's body exactly as stored in the outbox (UTF-8 JSON, see README
"Delivered events"), and these headers::

    Content-Type:        application/json
    Idempotency-Key:     <event_id>        (also in the body as "event_id")
    X-Firegw-Event-Id:   <event_id>
    X-Firegw-Timestamp:  <unix time of this attempt, integer seconds>
    X-Firegw-Signature:  sha256=<hex HMAC-SHA256>

Signature scheme
----------------

``X-Firegw-Signature`` is ``sha256=`` followed by the lowercase hex HMAC-SHA256, keyed with the
destination's secret (``webhook.secret``, UTF-8), of the bytes::

    <X-Firegw-Timestamp> "." <raw request body>

that is, the decimal timestamp exactly as sent in the header, one ASCII full stop, then the body
bytes as received (do not re-serialize the JSON before checking). A receiver should: recompute the
HMAC and compare it in constant time (``hmac.compare_digest``); reject a timestamp more than 5
minutes from its own clock (replay protection); then use ``event_id`` to drop duplicates. Each
retry is signed afresh with a new timestamp; the body and ``event_id`` stay the same. In Python::

    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    ok = hmac.compare_digest(f"sha256={mac}", request.headers["X-Firegw-Signature"])

Answers
-------

Classified by :func:`gateway.retry.classify_http`:

* 2xx: delivered.
* 408, 425, 429, 5xx, connection errors, timeouts: retried with backoff; on 429 and 503 a
  ``Retry-After`` header (seconds or an HTTP date, at most an hour) sets the earliest retry.
* Any other status (other 4xx, 3xx: the receiver refuses this event, or the URL or the
  credentials are wrong and an operator must act): the event is *rejected*. It is not dropped: it
  stays in the outbox with the reason, is retried at the maximum backoff, is counted in health
  (``rejected``) and, to keep order, holds back the later events of the same fire event or hazard
  until the receiver accepts it or an operator intervenes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import socket
import ssl
import time

import httpx

from gateway.errors import ConfigError
from gateway.notify.base import Delivered, OutboxRow, Outcome, Rejected, Retry
from gateway.retry import RETRY_AFTER_MAX_S, HttpClass, classify_http, retry_after
from gateway.settings import WebhookSettings
from gateway.tls import client_context

__all__ = ["RETRY_AFTER_MAX_S", "WebhookSender", "classify", "parse_retry_after", "sign"]

logger = logging.getLogger(__name__)

#: The answers whose ``Retry-After`` is honoured (RFC 9110 §10.2.3, RFC 6585 §4).
_RETRY_AFTER_STATUS = frozenset({429, 503})
#: Kept for callers of earlier versions: :func:`gateway.retry.retry_after`.
parse_retry_after = retry_after
_ERROR_TEXT_MAX = 200
USER_AGENT = "firegw-webhook/1"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Firegw-Signature`` value for ``body`` sent at ``timestamp`` (unix seconds)."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode("ascii") + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _ERROR_TEXT_MAX else text[:_ERROR_TEXT_MAX] + "…"


class WebhookSender:
    """Signs and POSTs outbox rows. Validate in the constructor; :meth:`open` builds the client."""

    name = "webhook"
    tracks_connection = False

    def __init__(self, settings: WebhookSettings) -> None:
        if not settings.url or not settings.secret:
            raise ConfigError("settings: webhook.url: the webhook destination needs url and secret")
        try:
            url = httpx.URL(settings.url)
        except httpx.InvalidURL as exc:
            raise ConfigError(f"settings: webhook.url: not a URL: {exc}") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(f"settings: webhook.url: expected http(s)://host/..., got {settings.url!r}")
        self._settings = settings
        self._url = settings.url
        self._secret = settings.secret
        self._client: httpx.AsyncClient | None = None

    @property
    def concurrency(self) -> int:
        return self._settings.concurrency

    @property
    def backoff_min_s(self) -> float:
        return self._settings.backoff_min_s

    @property
    def backoff_max_s(self) -> float:
        return self._settings.backoff_max_s

    async def open(self) -> None:
        s = self._settings
        verify = await asyncio.to_thread(client_context, s.tls, "webhook")  # reads the TLS files
        limits = httpx.Limits(max_connections=s.concurrency, max_keepalive_connections=s.concurrency)
        # TCP_NODELAY: a request is headers then body; without it Nagle can hold the body back
        # until the receiver's delayed ACK (~40 ms)
        transport = httpx.AsyncHTTPTransport(
            verify=verify, limits=limits, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        )
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(s.timeout_s),
            transport=transport,
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
        )

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.aclose()
            except (httpx.HTTPError, OSError):  # closing sockets already gone
                logger.debug("webhook: close failed", exc_info=True)

    def delivered(self, row: OutboxRow) -> None:
        return None

    async def background(self) -> None:
        return None

    async def send(self, row: OutboxRow) -> Outcome:
        """POST one row; never raises httpx errors."""
        client = self._client
        if client is None:
            raise RuntimeError("WebhookSender.send before open()")
        body = row.body.encode("utf-8")
        ts = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": row.event_id,
            "X-Firegw-Event-Id": row.event_id,
            "X-Firegw-Timestamp": str(ts),
            "X-Firegw-Signature": sign(self._secret, ts, body),
        }
        try:
            resp = await client.post(self._url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            return Retry(f"timed out after {self._settings.timeout_s:g} s ({type(exc).__name__})")
        except httpx.HTTPError as exc:
            return Retry(f"{type(exc).__name__}: {exc or 'connection failed'}")
        except (OSError, ssl.SSLError) as exc:
            return Retry(f"{type(exc).__name__}: {exc}")
        return classify(resp.status_code, resp.headers.get("Retry-After"), resp.text)


def classify(status: int, retry_after_header: str | None, text: str = "") -> Outcome:
    """The outcome of one HTTP answer (see the module docstring)."""
    kind = classify_http(status)
    if kind is HttpClass.OK:
        return Delivered()
    detail = f"HTTP {status}" + (f": {_excerpt(text)}" if text.strip() else "")
    if kind is HttpClass.RETRY:
        wait = retry_after(retry_after_header) if status in _RETRY_AFTER_STATUS else None
        return Retry(detail, retry_after=wait)
    return Rejected(detail)  # FIX and REJECT alike: kept, retried at the longest backoff, counted
