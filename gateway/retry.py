"""Retrying, one way for every lane: backoff, ``Retry-After``, HTTP answers, and logging on the edge.

Every part of the gateway that waits and tries again uses these pieces, so a newcomer reads one
schedule and one log rule, and a fix lands everywhere:

- :class:`Backoff`: capped exponential backoff with jitter, reset on success (the forwarder's
  lanes and identity watch, the delivery worker, the committer's store retries, Modbus links and
  devices, paho's reconnect delay). ``delay(n)`` is the pure schedule for the n-th failure in a row
  (the delivery worker keeps n durably in the outbox); ``next()`` counts and draws; ``reset()``.
- :func:`retry_after`: a ``Retry-After`` header (delay seconds or an HTTP date) as seconds from
  now, bounded.
- :func:`classify_http`: what an HTTP status means for the request that got it (Telegraf's
  retryable / fatal / partial split): take it as done, send the same again later, an operator must
  fix something, or this content is refused. The webhook and the Influx sink map the classes to
  their own outcomes.
- :class:`EdgeLog`: a condition logged once when it goes bad, once when it recovers, and at DEBUG
  in between (HA ``ModbusHub._log_error``). :class:`gateway.health.Stage` uses it for
  ``fail``/``ok``.

Pure: no I/O, no clock unless asked (``retry_after`` reads ``time.time()`` when ``now`` is None),
randomness injectable (``rng``) so tests are deterministic.
"""

from __future__ import annotations

import enum
import logging
import random
import re
import time
from datetime import UTC
from email.utils import parsedate_to_datetime

__all__ = ["RETRY_AFTER_MAX_S", "Backoff", "EdgeLog", "HttpClass", "classify_http", "retry_after"]

#: A Retry-After beyond this (seconds) is capped: a server's typo must not park work for days.
RETRY_AFTER_MAX_S = 3600.0
_MAX_DOUBLINGS = 64  # 2**64 times any first delay is past every cap; keeps the float finite
_DELAY_SECONDS = re.compile(r"\d+(\.\d+)?")


class Backoff:
    """Capped exponential backoff with jitter.

    The n-th failure in a row waits ``first_s · 2^(n-1)``, at most ``max_s`` (which wins over a
    larger ``first_s``), drawn uniformly from
    ``[1 - jitter, 1]`` of that (``jitter=0``: exactly that, for schedules that must not wander), and
    never less than a ``retry_after`` the other side asked for (itself capped at
    ``retry_after_max_s``). ``rng``: a :class:`random.Random` for reproducible draws in tests.
    """

    __slots__ = ("_rng", "failures", "first_s", "jitter", "max_s", "retry_after_max_s")

    def __init__(
        self,
        first_s: float,
        max_s: float,
        *,
        jitter: float = 0.5,
        retry_after_max_s: float = RETRY_AFTER_MAX_S,
        rng: random.Random | None = None,
    ) -> None:
        if not (first_s > 0 and max_s > 0):
            raise ValueError(f"backoff: delays must be positive, got {first_s!r}, {max_s!r}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"backoff: jitter must be within [0, 1], got {jitter!r}")
        self.first_s = first_s
        self.max_s = max_s
        self.jitter = jitter
        self.retry_after_max_s = retry_after_max_s
        self.failures = 0  # in a row, since the last reset()
        self._rng = rng

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (1 for the first). Does not count it."""
        base = min(self.max_s, self.first_s * 2.0 ** min(max(failures - 1, 0), _MAX_DOUBLINGS))
        wait = base
        if self.jitter:
            wait = (self._rng or random).uniform(base * (1.0 - self.jitter), base)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.retry_after_max_s))
        return wait

    def longest(self) -> float:
        """A delay drawn at the cap (a receiver that refuses an event is asked again this rarely)."""
        return self.delay(_MAX_DOUBLINGS + 1)

    def next(self, retry_after: float | None = None) -> float:
        """Count one more failure and return how long to wait before the next attempt."""
        self.failures += 1
        return self.delay(self.failures, retry_after)

    def reset(self) -> None:
        """It worked: the next failure starts from ``first_s`` again."""
        self.failures = 0


def retry_after(header_value: str | None, now: float | None = None, *, cap: float = RETRY_AFTER_MAX_S) -> float | None:
    """Seconds to wait from a ``Retry-After`` header, within ``[0, cap]``; None when absent or unreadable.

    Takes delay seconds (``"120"``, also ``"1.5"``) or an HTTP date (``"Wed, 21 Oct 2026 07:28:00
    GMT"``, measured from ``now``, unix seconds, default the wall clock; a date in the past is 0).
    """
    if header_value is None:
        return None
    value = header_value.strip()
    if not value:
        return None
    if _DELAY_SECONDS.fullmatch(value):
        return min(float(value), cap)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less one is read as UTC
        when = when.replace(tzinfo=UTC)
    delta = when.timestamp() - (time.time() if now is None else now)
    return min(max(delta, 0.0), cap)


class HttpClass(enum.Enum):
    """What an HTTP answer means for the request that got it."""

    OK = "ok"
    """2xx: taken."""
    RETRY = "retry"
    """408, 425, 429, 5xx: the server cannot take it now; the same request may succeed later."""
    FIX = "fix"
    """1xx, 3xx, 401, 403, 404: it reached no one who would take it (wrong URL, credentials or
    database; redirects are not followed): nothing is wrong with the content, an operator must act."""
    REJECT = "reject"
    """Any other 4xx: the server refuses this content (bad line, type conflict, too large); sending
    it again as it is will not help."""


_RETRY = frozenset({408, 425, 429})
_FIX = frozenset({401, 403, 404})


def classify_http(status: int) -> HttpClass:
    """The :class:`HttpClass` of an HTTP status code."""
    if 200 <= status < 300:
        return HttpClass.OK
    if status in _RETRY or 500 <= status < 600:
        return HttpClass.RETRY
    if status in _FIX or status < 400:
        return HttpClass.FIX
    return HttpClass.REJECT


class EdgeLog:
    """A condition logged on its edges: once when it goes bad, once when it recovers, DEBUG in between.

    ``failed()`` counts a failure; the ``after``-th in a row logs at ``level`` (a flaky peer that
    fails one attempt in three does not flap the log), every other one at DEBUG. ``recovered()``
    logs at INFO only when the condition was bad. Both return True on the edge, so a caller can
    change health state exactly then.
    """

    __slots__ = ("_logger", "after", "failing", "level", "streak")

    def __init__(self, logger: logging.Logger, *, level: int = logging.WARNING, after: int = 1) -> None:
        if after < 1:
            raise ValueError(f"EdgeLog: after must be at least 1, got {after!r}")
        self._logger = logger
        self.level = level
        self.after = after
        self.failing = False
        self.streak = 0  # failures in a row

    def failed(self, msg: str, *args: object, exc_info: BaseException | bool | None = None) -> bool:
        """One more failure: ``msg % args`` at ``level`` on the edge (with ``exc_info``), else DEBUG."""
        self.streak += 1
        if self.failing or self.streak < self.after:
            self._logger.debug(msg, *args)
            return False
        self.failing = True
        self._logger.log(self.level, msg, *args, exc_info=exc_info)
        return True

    def recovered(self, msg: str | None = None, *args: object) -> bool:
        """It works again: ``msg % args`` at INFO if it was failing. True on that edge."""
        self.streak = 0
        if not self.failing:
            return False
        self.failing = False
        if msg is not None:
            self._logger.info(msg, *args)
        return True
