"""Profiles (what a kind of device sends) and the site inventory: schema, units and loader. Pure."""

from gateway.profiles.loader import Catalog, check_paths, load_catalog, profile_json_schema
from gateway.profiles.models import Device, Inventory, Point, Profile, RegisterSpec, Site, Station

__all__ = [
    "Catalog",
    "Device",
    "Inventory",
    "Point",
    "Profile",
    "RegisterSpec",
    "Site",
    "Station",
    "check_paths",
    "load_catalog",
    "profile_json_schema",
]
