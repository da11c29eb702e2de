"""From a raw MQTT message to readings or a dead letter: topic → profile → device → decoder. Pure."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway.errors import DecodeError
from gateway.models import DeadLetter, RawMessage, Reading
from gateway.normalize.json_decoder import DEFAULT_MAX_SKEW_S, JsonDecoder
from gateway.profiles.loader import Catalog

__all__ = ["DEFAULT_MAX_PAYLOAD_BYTES", "MqttNormalizer", "Normalized", "TopicPattern"]

logger = logging.getLogger(__name__)

#: The gateway's bound on one payload, before any profile's own (``pipeline.max_payload_bytes``).
DEFAULT_MAX_PAYLOAD_BYTES = 262_144


class TopicPattern:
    """A profile's topic pattern, ``fire/{site_id}/btn/{device_id}/up``, compiled."""

    def __init__(self, pattern: str, profile: str) -> None:
        self.pattern = pattern
        self.profile = profile
        levels = pattern.split("/")
        self.levels = len(levels)
        self.literals = tuple((i, lvl) for i, lvl in enumerate(levels) if not lvl.startswith("{"))
        self.variables = tuple((i, lvl[1:-1]) for i, lvl in enumerate(levels) if lvl.startswith("{"))
        self.device_index = next(i for i, name in self.variables if name == "device_id")
        self.subscription = "/".join("+" if lvl.startswith("{") else lvl for lvl in levels)

    def match(self, levels: list[str]) -> dict[str, str] | None:
        if len(levels) != self.levels:
            return None
        for i, lit in self.literals:
            if levels[i] != lit:
                return None
        return {name: levels[i] for i, name in self.variables}


@dataclass(frozen=True, slots=True)
class Normalized:
    """What one raw message became: readings, or a dead letter."""

    readings: list[Reading]
    dead: DeadLetter | None
    device_id: str | None
    device_time: bool = False  # the payload carried its own time: identical bytes mean the same reading


class MqttNormalizer:
    """Routes MQTT messages to their device's decoder.

    Never raises: whatever a message holds, it becomes readings or a dead letter. A payload over
    ``max_payload_bytes`` (the gateway's bound, checked before anything is parsed) is a dead letter,
    and so is a payload that makes a decoder fail in any way, with the exception's class named.
    """

    def __init__(
        self,
        catalog: Catalog,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        max_clock_skew_s: float = DEFAULT_MAX_SKEW_S,
    ) -> None:
        self.catalog = catalog
        self.max_payload_bytes = max_payload_bytes
        self.patterns = [TopicPattern(p.mqtt.topic, name) for name, p in catalog.profiles.items() if p.mqtt is not None]
        self._decoders = {
            name: JsonDecoder(p, default_max_skew_s=max_clock_skew_s)
            for name, p in catalog.profiles.items()
            if p.mqtt is not None
        }
        self._logged: set[str] = set()

    @property
    def subscriptions(self) -> list[str]:
        return sorted({p.subscription for p in self.patterns})

    def _dead(self, raw: RawMessage, reason: str, device_id: str | None = None) -> Normalized:
        return Normalized(
            [],
            DeadLetter(
                raw.source,
                raw.address,
                raw.payload,
                reason,
                raw.received_at_ms,
                device_id,
                size=raw.truncated_from or None,
            ),
            device_id,
        )

    def normalize(self, raw: RawMessage) -> Normalized:
        size = raw.truncated_from or len(raw.payload)
        if size > self.max_payload_bytes:
            return self._dead(
                raw,
                f"payload is {size} bytes, over the gateway's limit of "
                f"{self.max_payload_bytes} (pipeline.max_payload_bytes)",
            )
        try:
            return self._normalize(raw)
        except Exception as exc:  # a decoder bug must cost one message, never the pipeline
            kind = f"{type(exc).__name__}@{exc.__traceback__.tb_frame.f_code.co_name if exc.__traceback__ else ''}"
            if kind not in self._logged:  # once per kind of failure, with the traceback to fix it
                self._logged.add(kind)
                logger.error(
                    "normalize: %s on %s (logged once): %s", type(exc).__name__, raw.address[:200], exc, exc_info=True
                )
            return self._dead(raw, f"could not be decoded: {type(exc).__name__}: {exc}"[:300])

    def _normalize(self, raw: RawMessage) -> Normalized:
        levels = raw.address.split("/")
        for pat in self.patterns:
            found = pat.match(levels)
            if found is None:
                continue
            device_id = found["device_id"]
            device = self.catalog.devices.get(device_id)
            if device is None:
                return self._dead(raw, f"unknown device {device_id!r}: not in the inventory", device_id)
            if device.profile != pat.profile:
                return self._dead(
                    raw,
                    f"device {device_id!r} has profile {device.profile!r}, but the topic "
                    f"matches profile {pat.profile!r}",
                    device_id,
                )
            site = found.get("site_id")
            if site is not None and site != device.site_id:
                return self._dead(
                    raw,
                    f"topic names site {site!r}, but device {device_id!r} belongs to site {device.site_id!r}",
                    device_id,
                )
            try:
                readings, timed = self._decoders[pat.profile].decode_timed(
                    raw.payload, device.site_id, device_id, raw.received_at_ms
                )
            except DecodeError as exc:
                return self._dead(raw, str(exc), device_id)
            return Normalized(readings, None, device_id, timed)
        return self._dead(raw, "topic matches no profile's topic pattern")
