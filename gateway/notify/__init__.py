"""Delivery of outbox rows (fire-event and hazard transitions) to the grid workflow.

:class:`Notifier` (``worker.py``) runs one lane per destination: ``webhook.py`` (signed HTTPS POST,
httpx) and ``mqtt_out.py`` (MQTT QoS 1 and retained site codes, paho). At least once, in order per
fire event and per hazard, retried with backoff; see ``worker.py`` for the guarantees and
``webhook.py`` for the signature scheme.
"""

from gateway.notify.base import Delivered, OutboxRow, Outcome, Rejected, Retry
from gateway.notify.worker import Notifier, backoff_delay

__all__ = ["Delivered", "Notifier", "OutboxRow", "Outcome", "Rejected", "Retry", "backoff_delay"]
