"""Profile and inventory schema (design.md §4).

A **profile** says what a kind of device sends and how to read it. The **inventory** says which
sites exist and which devices (with which profile and binding) belong to each. Both are validated
once, at load time, with errors that name the file and field; nothing here does I/O.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.models import PointClass, Value
from gateway.profiles.rule_spec import RuleSpec, SiteRules
from gateway.profiles.units import CANONICAL_UNITS, conversion, known_unit

__all__ = [
    "DOMAINS",
    "Device",
    "Inventory",
    "Labels",
    "Location",
    "ModbusDeviceBinding",
    "ModbusProfile",
    "MqttProfile",
    "Point",
    "Profile",
    "RegisterSpec",
    "Site",
    "Station",
    "TimeSpec",
]

_NAME = r"^[a-z][a-z0-9_]*$"
_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\[\d+\])*(\.[A-Za-z_][A-Za-z0-9_]*(\[\d+\])*)*$")

#: The five fire-safety domains of the district's special campaigns (消防五大领域).
DOMAINS = ("village_property", "street_shop", "industrial", "village_house", "rental_housing")
Domain = Literal["village_property", "street_shop", "industrial", "village_house", "rental_housing"]

ValueType = Literal["bool", "int", "float", "str"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Labels(_Model):
    """A label in both languages the people acting on it read."""

    zh: str = Field(min_length=1)
    en: str = Field(min_length=1)


class TimeSpec(_Model):
    """Where the device time is in a JSON payload."""

    path: str
    format: Literal["epoch_s", "epoch_ms", "iso8601"] = "epoch_s"

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not _PATH.match(v):
            raise ValueError(f"not a JSON field path: {v!r} (use a.b[0].c)")
        return v


class MqttProfile(_Model):
    """How a device of this profile talks MQTT."""

    topic: str = Field(description="topic pattern; {device_id} is required, e.g. fire/{site_id}/btn/{device_id}/up")
    payload: Literal["json"] = "json"
    time: TimeSpec | None = None
    max_payload_bytes: int = Field(default=16_384, gt=0, le=1_048_576)
    max_skew_s: float | None = Field(
        default=None,
        gt=0,
        description="device clock skew beyond this flags quality suspect "
        "(default: the gateway's pipeline.max_clock_skew_s, 300 s)",
    )

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if "{device_id}" not in v:
            raise ValueError("the topic pattern must contain {device_id}")
        for part in v.split("/"):
            if part in ("+", "#"):
                raise ValueError("use {name} variables, not MQTT wildcards, in a topic pattern")
            if "{" in part and not re.fullmatch(r"\{[a-z_]+\}", part):
                raise ValueError(f"a variable must fill a whole topic level: {part!r}")
        return v


RegisterTable = Literal["holding", "input", "coil", "discrete"]
RegisterType = Literal["bool", "int16", "uint16", "int32", "uint32", "float32", "int64", "uint64", "float64"]
_WIDTH: dict[str, int] = {
    "bool": 1,
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
}


class RegisterSpec(_Model):
    """Where a point lives in a Modbus device, and how to turn the words into a value.

    Order of operations (as Home Assistant's struct platform): read words, reorder words and bytes,
    unpack ``type``, take ``bit`` if set, compare with ``sentinels``/NaN, then ``value * scale + offset``.
    """

    table: RegisterTable = "holding"
    address: int = Field(ge=0, le=65535, description="address as the device documents it (see address_base)")
    type: RegisterType = "uint16"
    byte_order: Literal["big", "little"] = "big"
    word_order: Literal["big", "little"] = "big"
    bit: int | None = Field(default=None, ge=0, le=63, description="take one bit of the value (status words)")
    scale: float = 1.0
    offset: float = 0.0
    sentinels: list[int] = Field(default_factory=list, description="raw values meaning 'no value' (e.g. 0x8000)")

    @property
    def width(self) -> int:
        return _WIDTH[self.type]

    @model_validator(mode="after")
    def _check(self) -> RegisterSpec:
        if self.table in ("coil", "discrete") and self.type != "bool":
            raise ValueError(f"a {self.table} holds one bit: type must be bool, not {self.type}")
        if self.table in ("holding", "input") and self.type == "bool" and self.bit is None:
            raise ValueError("a bool point in a register needs bit: N")
        if self.bit is not None and self.bit >= self.width * 16:
            raise ValueError(f"bit {self.bit} is outside a {self.type} ({self.width * 16} bits)")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        return self


class ModbusProfile(_Model):
    """Defaults for polling a device of this profile (the inventory may override per device)."""

    max_registers_per_read: int = Field(default=125, ge=1, le=125)
    max_bits_per_read: int = Field(default=2000, ge=1, le=2000)
    max_gap: int = Field(default=8, ge=0, le=124, description="unused registers a read may span to join points")
    poll_interval_s: float = Field(default=1.0, gt=0)
    keepalive_s: float = Field(default=60.0, gt=0, description="write unchanged values at least this often")


class Point(_Model):
    """One value a device reports."""

    name: str = Field(pattern=_NAME)
    point_class: PointClass = Field(alias="class")
    type: ValueType = Field(description="the value type, fixed for the life of the point")
    unit: str = Field(default="", description="canonical unit of the stored value")
    labels: Labels | None = None
    # MQTT / JSON source
    path: str | None = Field(default=None, description="JSON field path in the payload, a.b[0].c")
    map: dict[str, Value | None] | None = Field(
        default=None,
        description="raw value -> point value (null: a known value that gives no reading). When "
        "no point reading the same field lists a value, the message is a dead letter",
    )
    map_match: Literal["exact", "ignore_case"] = Field(
        default="exact", description="ignore_case: map keys match whatever the case and surrounding blanks"
    )
    required: bool = Field(default=False, description="a payload without this field is a dead letter")
    source_unit: str | None = Field(default=None, description="unit the device sends; converted to unit")
    unit_path: str | None = Field(default=None, description="JSON path naming the unit the device sent")
    # Modbus source
    modbus_register: RegisterSpec | None = Field(default=None, alias="register")
    enum: dict[int, str] | None = Field(default=None, description="labels of integer codes (0 manual, 1 auto)")
    # Plausibility
    range: tuple[float, float] | None = Field(
        default=None, description="physical range in the canonical unit; outside it is a dead letter"
    )
    expected_range: tuple[float, float] | None = Field(
        default=None, description="normal range; outside it the reading is kept with quality suspect"
    )
    deadband: float | None = Field(default=None, ge=0, description="Modbus: write when it moves more than this")

    @field_validator("path", "unit_path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and not _PATH.match(v):
            raise ValueError(f"not a JSON field path: {v!r} (use a.b[0].c)")
        return v

    @model_validator(mode="after")
    def _check(self) -> Point:
        if self.unit not in CANONICAL_UNITS:
            raise ValueError(
                f"unit {self.unit!r} is not canonical; use one of {sorted(CANONICAL_UNITS)} "
                "and put the device's unit in source_unit"
            )
        if self.source_unit is not None:
            if not known_unit(self.source_unit):
                raise ValueError(f"source_unit {self.source_unit!r} is not a known unit")
            if conversion(self.source_unit, self.unit) is None:
                raise ValueError(f"cannot convert source_unit {self.source_unit!r} into {self.unit!r}")
        if (self.source_unit or self.unit_path) and self.type != "float":
            raise ValueError("unit conversion needs type float")
        if self.path is None and self.modbus_register is None:
            raise ValueError("a point needs a source: path (MQTT JSON) or register (Modbus)")
        if self.path is not None and self.modbus_register is not None:
            raise ValueError("a point has one source: path or register, not both")
        for name, rng in (("range", self.range), ("expected_range", self.expected_range)):
            if rng is not None and rng[0] > rng[1]:
                raise ValueError(f"{name} low {rng[0]} is above high {rng[1]}")
        if (
            self.type == "bool"
            and self.modbus_register is not None
            and self.modbus_register.type != "bool"
            and self.modbus_register.bit is None
        ):
            raise ValueError("a bool point from a register needs register.bit")
        return self


class Profile(_Model):
    """What a kind of device sends and how to read it."""

    profile: str = Field(
        pattern=r"^[a-z][a-z0-9-]*$",
        max_length=64,
        description="profile name, referenced by devices (and the file name)",
    )
    version: int = Field(default=1, ge=1)
    kind: str = Field(pattern=_NAME, description="device kind; the measurement name in a time-series store")
    title: Labels
    transport: Literal["mqtt", "modbus"]
    cadence_s: float = Field(gt=0, description="expected reporting interval of the device (heartbeat)")
    mqtt: MqttProfile | None = None
    modbus: ModbusProfile | None = None
    points: list[Point] = Field(min_length=1)
    rules: list[RuleSpec] = Field(default_factory=list, description="default rules for devices of this profile")

    @model_validator(mode="after")
    def _check(self) -> Profile:
        if self.transport == "mqtt":
            if self.mqtt is None:
                raise ValueError("transport mqtt needs an mqtt: section")
            bad = [p.name for p in self.points if p.path is None]
            if bad:
                raise ValueError(f"MQTT points need path: {', '.join(bad)}")
        if self.transport == "modbus":
            bad = [p.name for p in self.points if p.modbus_register is None]
            if bad:
                raise ValueError(f"Modbus points need register: {', '.join(bad)}")
        seen: set[str] = set()
        for p in self.points:
            if p.name in seen:
                raise ValueError(f"point name {p.name!r} is used twice")
            seen.add(p.name)
        return self

    def point(self, name: str) -> Point | None:
        for p in self.points:
            if p.name == name:
                return p
        return None


# ---------------------------------------------------------------------------- inventory


class Station(_Model):
    """The micro fire station (微型消防站) that serves a site."""

    station_id: str = Field(pattern=_ID)
    name: str
    phone: str | None = None
    response_time_s: float = Field(default=180.0, gt=0, description="acknowledge within this, or escalate")
    duty_officer: str | None = None


class Location(_Model):
    building: str | None = None
    floor: str | None = None
    room: str | None = None


class Site(_Model):
    """A place under fire-safety management (场所)."""

    site_id: str = Field(pattern=_ID)
    name: str
    enterprise: str | None = None  # 经营主体
    town: str  # 镇街
    grid_cell: str  # 网格
    domain: Domain
    address: str | None = None
    station: Station
    contacts: dict[Literal["grid_member", "supervisor", "enforcement"], str] = Field(default_factory=dict)
    rules: SiteRules = Field(default_factory=SiteRules, description="site-level correlation rules")


class ModbusDeviceBinding(_Model):
    """How to reach one Modbus device (device_profiles/README.md, "Modbus bindings", has an example
    of every field).

    A *link* is one connection: a TCP ``host:port`` or a serial port. Devices on one link share its
    settings (``framer``, the serial line, ``sequential``, ``late_answer_s``); a setting left out on one
    device takes the value another device of the link gives, and two different values are an error.
    """

    framer: Literal["tcp", "rtu_over_tcp", "rtu"] = Field(
        default="tcp",
        description="tcp: Modbus TCP (MBAP); rtu_over_tcp: RTU frames through a transparent "
        "serial-to-Ethernet converter; rtu: a local serial port",
    )
    host: str | None = Field(default=None, description="tcp, rtu_over_tcp: the device's or converter's address")
    port: int = Field(default=502, ge=1, le=65535, description="tcp, rtu_over_tcp: TCP port")
    serial_port: str | None = Field(default=None, description="rtu: /dev/ttyUSB0, COM3 or a pyserial URL")
    baudrate: int | None = Field(default=None, gt=0, le=4_000_000, description="rtu: bits per second (default 9600)")
    parity: Literal["N", "E", "O"] | None = Field(default=None, description="rtu: N none, E even, O odd (default N)")
    stopbits: Literal[1, 2] | None = Field(default=None, description="rtu: stop bits (default 1)")
    bytesize: Literal[7, 8] | None = Field(default=None, description="rtu: data bits (default 8; Modbus RTU uses 8)")
    unit: int = Field(
        default=1,
        ge=0,
        le=255,
        description="unit (slave) id: 1..247 on RTU; over tcp also 0 and 255, which single-unit TCP devices often use",
    )
    address_base: Literal[0, 1] = Field(default=0, description="1 when the device documents addresses from 1")
    poll_interval_s: float | None = Field(default=None, gt=0)
    timeout_s: float = Field(default=1.0, gt=0)
    retries: int = Field(default=1, ge=0, le=5)
    max_registers_per_read: int | None = Field(default=None, ge=1, le=125)
    max_gap: int | None = Field(default=None, ge=0, le=124)
    sequential: bool | None = Field(
        default=None,
        description="the link answers one request at a time, in order, as RS-485 converters do "
        "(default true; false only for framer tcp servers that answer concurrently)",
    )
    late_answer_s: float | None = Field(
        default=None,
        gt=0,
        le=60,
        description="sequential links: after a timeout the server may still be busy "
        "with that request this long; the next request waits for its late "
        "answer or this window (default 2 s)",
    )

    @model_validator(mode="after")
    def _check(self) -> ModbusDeviceBinding:
        serial = [f for f in ("baudrate", "parity", "stopbits", "bytesize") if getattr(self, f) is not None]
        if self.framer in ("tcp", "rtu_over_tcp"):
            if not self.host:
                raise ValueError(f"framer {self.framer} needs host")
            if serial:
                raise ValueError(
                    f"{', '.join(serial)}: serial line settings apply to framer rtu; behind a "
                    "serial-to-Ethernet converter they are set on the converter"
                )
        if self.framer == "rtu" and not self.serial_port:
            raise ValueError("framer rtu needs serial_port")
        if self.framer != "tcp":
            if not 1 <= self.unit <= 247:
                raise ValueError(
                    f"unit {self.unit}: an RTU unit id is 1..247 (0 is a broadcast nobody answers, "
                    "248..255 are reserved)"
                )
            if self.sequential is False:
                raise ValueError(
                    f"sequential: false needs framer tcp; {self.framer} carries no transaction id, "
                    "so a link answers one request at a time"
                )
        return self


class Device(_Model):
    device_id: str = Field(pattern=_ID)
    site_id: str = Field(pattern=_ID)
    profile: str
    location: Location = Field(default_factory=Location)
    modbus: ModbusDeviceBinding | None = None
    rules: list[RuleSpec] = Field(
        default_factory=list, description="overrides: a rule with the same id replaces the profile's"
    )


class Inventory(_Model):
    """Every site and device the gateway knows."""

    sites: list[Site] = Field(default_factory=list)
    devices: list[Device] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> Inventory:
        ids = [s.site_id for s in self.sites]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"site_id used twice: {', '.join(sorted(dup))}")
        seen: set[str] = set()
        for d in self.devices:
            if d.device_id in seen:
                raise ValueError(f"device_id used twice: {d.device_id}")
            seen.add(d.device_id)
        return self
