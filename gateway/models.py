"""Hot-path records shared by every stage: raw messages in, readings out.

These are slotted, frozen dataclasses (not pydantic models) because millions of them pass
through the pipeline; validation happens once, where a profile is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "URGENT_CLASSES",
    "DeadLetter",
    "PointClass",
    "Quality",
    "RawMessage",
    "Reading",
    "Value",
]

Value = bool | int | float | str


class PointClass(StrEnum):
    """What a point means to fire safety (design.md §4, domain.md §1.2)."""

    ALARM = "alarm"  # 火警
    FAULT = "fault"  # 故障
    SUPERVISORY = "supervisory"  # 监管
    FEEDBACK = "feedback"  # 反馈 / 启动
    ANALOG = "analog"
    STATUS = "status"
    HEARTBEAT = "heartbeat"


#: Classes that travel on the urgent lane: committed at once, never evicted.
URGENT_CLASSES: frozenset[PointClass] = frozenset(
    {PointClass.ALARM, PointClass.FAULT, PointClass.SUPERVISORY, PointClass.FEEDBACK}
)


class Quality(StrEnum):
    GOOD = "good"
    SUSPECT = "suspect"  # clock skew, or outside the expected (not the physical) range
    REPLAYED = "replayed"
    SUBSTITUTED = "substituted"
    MISSING = "missing"  # the device was unreachable; the value is the last one known


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One message as a source received it, before any decoding.

    ``source`` names the adapter instance (``mqtt``, ``modbus``), ``address`` the topic or the
    register address, ``received_at_ms`` the gateway's clock (UTC epoch milliseconds).
    """

    source: str
    address: str
    payload: bytes
    received_at_ms: int
    token: object = None  # the source's acknowledgement handle (MQTT mid/qos); opaque to the core
    redelivered: bool = False  # the source says it may have delivered this before (MQTT DUP)
    retained: bool = False  # a retained message the broker replayed on subscribe (MQTT retain flag)
    truncated_from: int = 0  # the source cut an oversized payload to its first bytes: its real size


@dataclass(frozen=True, slots=True)
class Reading:
    """One normalized value of one point of one device at one time."""

    site_id: str
    device_id: str
    metric: str
    value: Value
    unit: str
    ts_ms: int  # device time (or receive time when the device sends none)
    received_at_ms: int
    quality: Quality = Quality.GOOD
    point_class: PointClass = PointClass.ANALOG
    urgent: bool = False


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Input that could not be used, kept with the reason a person can read."""

    source: str
    address: str
    payload: bytes
    reason: str
    received_at_ms: int
    device_id: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    size: int | None = None  # the payload's real size when ``payload`` holds only its first bytes
