"""Times as firegw writes them: UTC epoch milliseconds inside, ISO 8601 with ``Z`` outside."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["iso"]


def iso(ms: int | None) -> str | None:
    """``2026-11-29T08:00:00.000Z`` for epoch milliseconds; None stays None."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
