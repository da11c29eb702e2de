"""Decode one sample with a profile, whatever its transport: a JSON payload for an MQTT profile, a
register dump for a Modbus one. What ``firegw profiles try`` and the API's dry run show. Pure."""

from __future__ import annotations

from gateway.models import Reading
from gateway.normalize.json_decoder import JsonDecoder
from gateway.normalize.registers import decode_dump
from gateway.profiles.models import Profile

__all__ = ["decode_sample"]


def decode_sample(profile: Profile, sample: bytes | str, now_ms: int) -> list[Reading]:
    """The readings ``sample`` gives with ``profile`` (site and device are placeholders), or DecodeError."""
    if profile.transport == "mqtt":
        payload = sample.encode("utf-8", "replace") if isinstance(sample, str) else sample
        return JsonDecoder(profile).decode(payload.strip(), "(site)", "(device)", now_ms)
    text = sample.decode("utf-8", "replace") if isinstance(sample, bytes) else sample
    return decode_dump(profile, text, now_ms)
