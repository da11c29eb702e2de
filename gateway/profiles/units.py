"""The unit table: canonical units (design.md §4) and the conversions into them.

Conversion factors are looked up once, when a profile loads; the hot path multiplies and adds.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["CANONICAL_UNITS", "Conversion", "conversion", "known_unit", "source_units"]

#: Canonical units and what they measure. ``""`` is for unitless points (states, flags, codes).
CANONICAL_UNITS: dict[str, str] = {
    "MPa": "pressure",
    "m": "level / length",
    "°C": "temperature",
    "A": "current",
    "V": "voltage",
    "%": "battery or ratio",
    "dBm": "signal strength",
    "s": "time",
    "L/s": "flow",
    "Hz": "frequency",
    "count": "count of items or people",
    "": "unitless",
}


class Conversion(NamedTuple):
    """``canonical = raw * factor + offset``."""

    canonical: str
    factor: float
    offset: float = 0.0

    def apply(self, value: float) -> float:
        return value * self.factor + self.offset


_TO_CANONICAL: dict[str, Conversion] = {
    "kPa": Conversion("MPa", 0.001),
    "Pa": Conversion("MPa", 0.000001),
    "bar": Conversion("MPa", 0.1),
    "psi": Conversion("MPa", 0.006894757293168361),
    "mH2O": Conversion("MPa", 0.00980665),
    "cm": Conversion("m", 0.01),
    "mm": Conversion("m", 0.001),
    "°F": Conversion("°C", 5.0 / 9.0, -32.0 * 5.0 / 9.0),
    "K": Conversion("°C", 1.0, -273.15),
    "mA": Conversion("A", 0.001),
    "mV": Conversion("V", 0.001),
    "kV": Conversion("V", 1000.0),
    "ms": Conversion("s", 0.001),
    "min": Conversion("s", 60.0),
    "m3/h": Conversion("L/s", 1000.0 / 3600.0),
    "L/min": Conversion("L/s", 1.0 / 60.0),
}
# Aliases people type.
_ALIASES: dict[str, str] = {
    "C": "°C",
    "degC": "°C",
    "F": "°F",
    "degF": "°F",
    "percent": "%",
    "kpa": "kPa",
    "mpa": "MPa",
    "Bar": "bar",
}


def _canon(unit: str) -> str:
    return _ALIASES.get(unit, unit)


def known_unit(unit: str) -> bool:
    u = _canon(unit)
    return u in CANONICAL_UNITS or u in _TO_CANONICAL


def conversion(source_unit: str, canonical: str) -> Conversion | None:
    """The conversion from ``source_unit`` into ``canonical``, or None when there is none."""
    src = _canon(source_unit)
    if src == canonical:
        return Conversion(canonical, 1.0)
    conv = _TO_CANONICAL.get(src)
    if conv is None or conv.canonical != canonical:
        return None
    return conv


def source_units() -> tuple[str, ...]:
    """Every non-canonical unit the table converts from."""
    return tuple(_TO_CANONICAL)
