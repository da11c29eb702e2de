"""The embedded store (SQLite, WAL): readings, device state, dead letters, and later hazards and outbox."""

from gateway.store.sqlite import Store, StoredReading

__all__ = ["Store", "StoredReading"]
