"""What stands between a request and the routes: security headers, the token before the body, body limits.

The API is a guest of the gateway's process: nothing a client does may cost the pipeline more than a
bounded share. Connections are bounded below this, in :mod:`gateway.api.server`; requests here:

- :class:`Guard` (ASGI middleware, outermost): security headers on every response; for a request
  with a body, the token is checked **before** the body is read (401, nothing read), an expensive
  route that is saturated answers 429 before the body is read too, and the body is read with a
  limit that holds for chunked bodies (413 as soon as it is passed).
- :class:`AuthFailures`: failed authentications are logged, at most one line a minute.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

__all__ = ["SECURITY_HEADERS", "AuthFailures", "Guard"]

logger = logging.getLogger("gateway.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Sent with every response. The dashboard loads everything from the gateway (no CDN, no inline code).
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
        b"form-action 'self'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class AuthFailures:
    """Counts failed authentications and logs them at most once per ``every_s`` (never per request)."""

    def __init__(self, every_s: float = 60.0) -> None:
        self.every_s = every_s
        self.total = 0
        self._pending = 0
        self._last_log = -1e9

    def note(self, client: str, path: str) -> None:
        self.total += 1
        self._pending += 1
        now = time.monotonic()
        if now - self._last_log >= self.every_s:
            logger.warning(
                "api: %d failed authentication(s) in the last %.0f s (latest from %s on %s)",
                self._pending,
                min(self.every_s, now - self._last_log),
                client,
                path[:200],
            )
            self._last_log = now
            self._pending = 0


async def _respond(send: Send, status: int, detail: str, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *extra,
                *SECURITY_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: see the module docstring.

    ``authenticated(headers)`` says whether a request's credentials are acceptable (always true when
    the API is open, with no tokens configured); ``max_body`` bounds every request body.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticated: Callable[[str | None], bool],
        max_body: int,
        failures: AuthFailures,
        admit: Callable[[str, str | None], str | None] | None = None,
    ) -> None:
        self.app = app
        self.authenticated = authenticated
        self.max_body = max_body
        self.failures = failures
        self.admit = admit  # (path, authorization) -> why to refuse now (429), before the body is read

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in SECURITY_HEADERS if h[0] not in names)]
            await send(message)

        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send_with_headers)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        auth = headers.get(b"authorization")
        if not self.authenticated(auth.decode("latin-1") if auth is not None else None):
            client = scope.get("client") or ("?", 0)
            self.failures.note(str(client[0]), str(scope.get("path", "")))
            await _respond(send, 401, "a valid bearer token is required", [(b"www-authenticate", b"Bearer")])
            return
        if self.admit is not None:
            busy = self.admit(str(scope.get("path", "")), auth.decode("latin-1") if auth is not None else None)
            if busy is not None:
                await _respond(send, 429, busy, [(b"retry-after", b"2")])
                return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _respond(send, 413, f"body over {self.max_body} bytes")
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = bool(message.get("more_body", False))
            if len(body) > self.max_body:
                await _respond(send, 413, f"body over {self.max_body} bytes")
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send_with_headers)
