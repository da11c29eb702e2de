"""Logging setup for ``firegw run`` and the demo: credentials never reach a log line.

A URL's ``user:password@`` and secret query parameters (``apikey``, ``token``, ``password``, ``secret``,
``key``, ``auth``…) are replaced by ``***`` in every record, whoever logs it (httpx logs each request's
URL at INFO; an operator may put credentials into ``webhook.url``). Libraries that log every request
or frame (httpx, httpcore, pymodbus, uvicorn) are held at WARNING: firegw logs their state changes.
"""

from __future__ import annotations

import logging
import re
from typing import Any

__all__ = ["EdgeFilter", "RedactingFilter", "raise_file_limit", "redact", "setup_logging"]

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@\s:]*):(?P<pw>[^/@\s]*)@")
_QUERY = re.compile(
    r"(?<![A-Za-z0-9_.-])(?P<key>(?:api[_-]?key|access[_-]?token|token|password|passwd|pwd|"
    r"secret|key|auth|signature|sig)=)(?P<value>[^&\s#'\"]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<key>\b[Bb]earer\s+)(?P<value>[A-Za-z0-9._~+/=-]{8,})")

#: Libraries that log per request or per frame; their state changes are logged by firegw itself.
QUIET = ("httpx", "httpcore", "pymodbus", "uvicorn", "uvicorn.error", "uvicorn.access", "influxdb_client", "urllib3")


def redact(text: str) -> str:
    """``text`` with credentials in URLs, query strings and bearer headers replaced by ``***``."""
    if "@" in text:
        text = _USERINFO.sub(lambda m: f"{m['scheme']}***:***@", text)
    if "=" in text:
        text = _QUERY.sub(lambda m: f"{m['key']}***", text)
    if "earer" in text:
        text = _BEARER.sub(lambda m: f"{m['key']}***", text)
    return text


def _clean(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


class RedactingFilter(logging.Filter):
    """Redacts a record's message and arguments (and its exception text) before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(
                _clean(a) if isinstance(a, str) else (redact(str(a)) if _urlish(a) else a) for a in record.args
            )
        elif isinstance(record.args, dict):
            record.args = {k: _clean(v) for k, v in record.args.items()}
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def _urlish(value: object) -> bool:
    # httpx passes URL objects; their str() holds the credentials
    return type(value).__name__ in ("URL", "Request", "Response")


class EdgeFilter(logging.Filter):
    """Lets one record per message template through every ``every_s`` (the rest are counted and the
    count is added to the next line let through). For loggers that would repeat a line per event,
    such as asyncio's "socket.accept() out of system resource" under a connection flood."""

    def __init__(self, every_s: float = 60.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._last: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        import time

        key = str(record.msg)[:200]
        now = time.monotonic()
        last, held = self._last.get(key, (-1e18, 0))
        if now - last < self.every_s:
            self._last[key] = (last, held + 1)
            return False
        self._last[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} (and {held} more like it in the last {self.every_s:.0f} s)"
        return True


def raise_file_limit() -> None:
    """Open files: the soft limit up to the hard one (connections, the store, pipes need descriptors)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else max(soft, 65_536)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ImportError, ValueError, OSError):
        pass


def setup_logging(level: str | int, *, filename: str | None = None) -> None:
    """Configure the root logger once: format, level, redaction on every handler, libraries quieted."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", filename=filename)
    redactor = RedactingFilter()
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(redactor)
    for name in QUIET:
        lib = logging.getLogger(name)
        if lib.level == logging.NOTSET or lib.level < logging.WARNING:
            lib.setLevel(logging.WARNING)
    aio = logging.getLogger("asyncio")
    if not any(isinstance(f, EdgeFilter) for f in aio.filters):
        aio.addFilter(EdgeFilter())
