"""firegw: a fire-safety IoT telemetry gateway. The public names are re-exported here.

``import gateway`` is cheap: each name is imported from its module on first use, so importing the
package (or ``gateway.rules.engine``, say) does not load paho, pymodbus, FastAPI or the runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and editors; at run time names load on first use
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
    from gateway.hazards.lifecycle import FireEvent, Hazard, HazardEvent, Transition, Workflow
    from gateway.models import DeadLetter, PointClass, Quality, RawMessage, Reading
    from gateway.profiles.loader import Catalog, load_catalog
    from gateway.profiles.models import Device, Inventory, Profile, Site
    from gateway.rules.engine import RuleEngine
    from gateway.runtime.pipeline import Gateway
    from gateway.settings import GatewaySettings, load_settings

_WHERE: dict[str, str] = {
    "AuthenticationFailed": "gateway.errors",
    "Catalog": "gateway.profiles.loader",
    "ConfigError": "gateway.errors",
    "DeadLetter": "gateway.models",
    "DecodeError": "gateway.errors",
    "Device": "gateway.profiles.models",
    "FireEvent": "gateway.hazards.lifecycle",
    "FiregwError": "gateway.errors",
    "Gateway": "gateway.runtime.pipeline",
    "GatewaySettings": "gateway.settings",
    "Hazard": "gateway.hazards.lifecycle",
    "HazardEvent": "gateway.hazards.lifecycle",
    "Inventory": "gateway.profiles.models",
    "PointClass": "gateway.models",
    "Profile": "gateway.profiles.models",
    "Quality": "gateway.models",
    "RawMessage": "gateway.models",
    "Reading": "gateway.models",
    "RuleEngine": "gateway.rules.engine",
    "SinkUnavailable": "gateway.errors",
    "Site": "gateway.profiles.models",
    "SiteCode": "gateway.hazards.codes",
    "SourceUnavailable": "gateway.errors",
    "Transition": "gateway.hazards.lifecycle",
    "TransitionError": "gateway.errors",
    "Workflow": "gateway.hazards.lifecycle",
    "load_catalog": "gateway.profiles.loader",
    "load_settings": "gateway.settings",
    "site_code": "gateway.hazards.codes",
}

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
    "Transition",
    "TransitionError",
    "Workflow",
    "load_catalog",
    "load_settings",
    "site_code",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
