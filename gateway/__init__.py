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
from gateway.hazards.codes import SiteCode, site_code
from gateway.hazards.lifecycle import FireEvent, Hazard, HazardEvent, Workflow
from gateway.models import DeadLetter, PointClass, Quality, RawMessage, Reading
from gateway.pipeline import Gateway
from gateway.profiles.loader import Catalog, load_catalog
from gateway.profiles.models import Device, Inventory, Profile, Site
from gateway.rules.engine import RuleEngine
from gateway.settings import GatewaySettings, load_settings

__all__ = [
    "AuthenticationFailed",
    "Catalog",
    "ConfigError",
    "DeadLetter",
    "DecodeError",
    "Device",
    "FireEvent",
    "FiregwError",
    "Gateway",
    "GatewaySettings",
    "Hazard",
    "HazardEvent",
    "Inventory",
    "PointClass",
    "Profile",
    "Quality",
    "RawMessage",
    "Reading",
    "RuleEngine",
    "SinkUnavailable",
    "Site",
    "SiteCode",
    "SourceUnavailable",
    "TransitionError",
    "Workflow",
    "load_catalog",
    "load_settings",
    "site_code",
]
