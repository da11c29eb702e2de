"""firegw: a fire-safety IoT telemetry gateway. The public names are re-exported here."""

from gateway.errors import (
    AuthenticationFailed,
    ConfigError,
    DecodeError,
    FiregwError,
    SinkUnavailable,
    SourceUnavailable,
    TransitionError,
)
from gateway.models import DeadLetter, PointClass, Quality, RawMessage, Reading
from gateway.pipeline import Gateway
from gateway.settings import GatewaySettings, load_settings

__all__ = [
    "AuthenticationFailed",
    "ConfigError",
    "DeadLetter",
    "DecodeError",
    "FiregwError",
    "Gateway",
    "GatewaySettings",
    "PointClass",
    "Quality",
    "RawMessage",
    "Reading",
    "SinkUnavailable",
    "SourceUnavailable",
    "TransitionError",
    "load_settings",
]
