"""What the delivery worker and its destinations share: an outbox row and the outcome of one attempt.

A destination (``webhook.WebhookSender``, ``mqtt_out.MqttPublisher``) implements :class:`Destination`:
``open()`` / ``aclose()`` for its connection, and ``send(row)`` which never raises its library's
errors: every answer becomes :class:`Delivered`, :class:`Retry` (try again after a backoff, or after
``retry_after`` seconds when the receiver said so) or :class:`Rejected` (the receiver refuses this
event: kept, retried at the maximum backoff, counted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["Delivered", "Destination", "OutboxRow", "Outcome", "Rejected", "Retry"]


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One pending outbox row (see ``gateway/store/schema.py``, table ``outbox``)."""

    seq: int
    destination: str
    event_id: str
    subject: str
    body: str
    created_at_ms: int
    attempts: int
    next_attempt_at_ms: int


@dataclass(frozen=True, slots=True)
class Delivered:
    """The destination has the event (HTTP 2xx, MQTT PUBACK)."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Not delivered this time; try again later."""

    error: str
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """The destination refused this event (for example HTTP 400): kept, retried slowly, counted."""

    error: str


Outcome = Delivered | Retry | Rejected


class Destination(Protocol):
    """A delivery destination. ``tracks_connection``: it keeps its health stage's ``connected`` itself
    (a broker connection); otherwise the worker sets it from the outcomes of deliveries."""

    name: str
    tracks_connection: bool

    @property
    def concurrency(self) -> int: ...

    @property
    def backoff_min_s(self) -> float: ...

    @property
    def backoff_max_s(self) -> float: ...

    async def open(self) -> None: ...

    async def aclose(self) -> None: ...

    async def send(self, row: OutboxRow) -> Outcome: ...

    def delivered(self, row: OutboxRow) -> None:
        """Called after the row is marked delivered (the MQTT destination recomputes site codes)."""

    async def background(self) -> None:
        """Side work that runs while the destination is open (returns at once when there is none)."""
