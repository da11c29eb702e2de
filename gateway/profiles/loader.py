"""Load profiles and the inventory from YAML, with errors that name the file and the field.

``load_catalog`` returns a :class:`Catalog` (profiles by name, the inventory, lookup tables) or
raises :class:`ConfigError` whose ``problems`` are lines ``file: field.path: what is wrong``.
:func:`validate_rules` is the cross-check of declared rules against a profile's points that those
lines include (the rule schema itself is :mod:`gateway.profiles.rule_spec`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from gateway.errors import ConfigError
from gateway.models import Value
from gateway.profiles.models import Device, Inventory, Profile, Site
from gateway.profiles.rule_spec import (
    AnyRule,
    EventRule,
    RateOfChangeRule,
    StateHeldRule,
    StuckRule,
    ThresholdRule,
)

_M = TypeVar("_M", bound=BaseModel)

__all__ = [
    "Catalog",
    "check_paths",
    "format_validation_error",
    "load_catalog",
    "load_inventory",
    "load_profile",
    "load_profiles",
    "parse_yaml",
    "profile_json_schema",
    "validate_rules",
]


def _loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier():
            out += ("." if out else "") + part
        else:  # a key a person could not read in a dotted path (empty, spaces, colons): quote it
            out += f"[{json.dumps(str(part), ensure_ascii=False)[:60]}]"
    return out or "(top)"


def format_validation_error(path: str, exc: ValidationError, prefix: Sequence[int | str] = ()) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = [p for p in (*prefix, *err["loc"]) if not (isinstance(p, str) and p.startswith("function-"))]
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        lines.append(f"{path}: {_loc(loc)}: {msg}")
    return lines


class _LimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a document deeper than ``max_depth`` or with more than
    ``max_nodes`` values while it is composed, before anything is built (each alias use counts)."""

    def __init__(self, stream: str, where: str, max_depth: int, max_nodes: int) -> None:
        super().__init__(stream)
        self._where, self._max_depth, self._max_nodes = where, max_depth, max_nodes
        self._depth = self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        self._nodes += 1
        if self._depth > self._max_depth:
            raise ConfigError(f"{self._where}: (file): nested deeper than {self._max_depth} levels")
        if self._nodes > self._max_nodes:
            raise ConfigError(f"{self._where}: (file): more than {self._max_nodes} values")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


#: Files (profiles, inventories of a whole district) may be big but never deep.
FILE_MAX_DEPTH = 64
FILE_MAX_NODES = 10_000_000


def parse_yaml(text: str, where: str, *, max_depth: int = FILE_MAX_DEPTH, max_nodes: int = FILE_MAX_NODES) -> Any:
    """Parse YAML text safely; any problem (syntax, nesting, size) is a ConfigError naming ``where``."""
    loader: _LimitedLoader | None = None
    try:
        loader = _LimitedLoader(text, where, max_depth, max_nodes)  # its reader checks the characters
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}" if mark is not None else "(file)"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: {line}: not valid YAML: {problem}") from exc
    except RecursionError:
        raise ConfigError(f"{where}: (file): nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: (file): cannot read: {getattr(exc, 'strerror', None) or exc}") from exc
    return parse_yaml(text, str(path))


def _validate(model: type[_M], data: Any, path: Path) -> _M:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: (top): expected a mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(path), exc)) from exc


def load_profile(path: Path) -> Profile:
    return _validate(Profile, _read_yaml(path), path)


def load_inventory(path: Path) -> Inventory:
    return _validate(Inventory, _read_yaml(path), path)


def _profile_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith(("_", ".")))


def load_profiles(paths: Iterable[Path]) -> tuple[dict[str, Profile], dict[str, Path], list[str]]:
    """Load every profile; return (profiles by name, file by name, problems)."""
    profiles: dict[str, Profile] = {}
    files: dict[str, Path] = {}
    problems: list[str] = []
    for path in paths:
        try:
            prof = load_profile(path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if prof.profile in profiles:
            problems.append(f"{path}: profile: name {prof.profile!r} is already used by {files[prof.profile]}")
            continue
        problems.extend(f"{path}: {p}" for p in _check_registers(prof))
        problems.extend(f"{path}: {p}" for p in validate_rules(prof.rules, prof))
        profiles[prof.profile] = prof
        files[prof.profile] = path
    return profiles, files, problems


def _check_registers(prof: Profile) -> list[str]:
    """A register map that overlaps itself is rejected (bits of one status word may share it)."""
    problems = []
    taken: dict[tuple[str, int], tuple[int, str, str]] = {}
    for i, p in enumerate(prof.points):
        reg = p.modbus_register
        if reg is None:
            continue
        for addr in range(reg.address, reg.address + reg.width):
            key = (reg.table, addr)
            prev = taken.get(key)
            if prev is None:
                taken[key] = (i, p.name, reg.type)
                continue
            _, prev_name, prev_type = prev
            prev_reg = prof.points[prev[0]].modbus_register
            same_word = (
                reg.bit is not None
                and prev_reg is not None
                and prev_reg.bit is not None
                and prev_reg.address == reg.address
                and prev_type == reg.type
            )
            if not same_word:
                problems.append(
                    f"points[{i}].register.address: {reg.table} register {addr} of {p.name!r} overlaps {prev_name!r}"
                )
                break
    if prof.modbus is not None:
        limit = prof.modbus.max_registers_per_read
        for i, p in enumerate(prof.points):
            if p.modbus_register is not None and p.modbus_register.width > limit:
                problems.append(
                    f"points[{i}].register.type: {p.modbus_register.type} needs {p.modbus_register.width} "
                    f"registers, more than max_registers_per_read {limit}"
                )
    return problems


@dataclass(frozen=True)
class Catalog:
    """Profiles and inventory, cross-checked, with lookup tables for the hot path."""

    profiles: dict[str, Profile]
    inventory: Inventory
    sites: dict[str, Site] = field(init=False)
    devices: dict[str, Device] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", {s.site_id: s for s in self.inventory.sites})
        object.__setattr__(self, "devices", {d.device_id: d for d in self.inventory.devices})

    def typed(self, device_id: str, metric: str, value: object) -> object:
        """A stored value in its point's type: SQLite keeps booleans as 0/1."""
        prof = self.profile_of(device_id)
        point = prof.point(metric) if prof is not None else None
        if point is not None and point.type == "bool" and isinstance(value, int):
            return bool(value)
        return value

    def profile_of(self, device_id: str) -> Profile | None:
        dev = self.devices.get(device_id)
        return None if dev is None else self.profiles.get(dev.profile)


def _check_inventory(inv: Inventory, profiles: dict[str, Profile], path: str) -> list[str]:
    problems = []
    sites = {s.site_id for s in inv.sites}
    for i, d in enumerate(inv.devices):
        if d.site_id not in sites:
            problems.append(f"{path}: devices[{i}].site_id: unknown site {d.site_id!r}")
        prof = profiles.get(d.profile)
        if prof is None:
            problems.append(f"{path}: devices[{i}].profile: unknown profile {d.profile!r}")
            continue
        problems.extend(f"{path}: {p}" for p in validate_rules(d.rules, prof, where=f"devices[{i}].rules"))
        if prof.transport == "modbus" and d.modbus is None:
            problems.append(
                f"{path}: devices[{i}].modbus: profile {d.profile!r} is polled over Modbus; "
                "the device needs a modbus: binding (host, port, unit)"
            )
        if prof.transport == "mqtt" and d.modbus is not None:
            problems.append(f"{path}: devices[{i}].modbus: profile {d.profile!r} talks MQTT; remove modbus:")
    return problems


def _check_topics(profiles: dict[str, Profile], files: dict[str, Path]) -> list[str]:
    shapes: dict[tuple[str, ...], str] = {}
    problems = []
    for name, prof in profiles.items():
        if prof.mqtt is None:
            continue
        shape = tuple("+" if lvl.startswith("{") else lvl for lvl in prof.mqtt.topic.split("/"))
        other = shapes.get(shape)
        if other is not None:
            problems.append(
                f"{files[name]}: mqtt.topic: pattern {prof.mqtt.topic!r} matches the same topics as profile {other!r}"
            )
        shapes[shape] = name
    return problems


def load_catalog(profiles_dir: Path, inventory_path: Path | None) -> Catalog:
    """Load and cross-check everything, or raise ConfigError with every problem found."""
    if not profiles_dir.is_dir():
        raise ConfigError(f"{profiles_dir}: (dir): profiles directory does not exist")
    profiles, files, problems = load_profiles(_profile_files(profiles_dir))
    problems += _check_topics(profiles, files)
    inventory = Inventory()
    if inventory_path is not None:
        try:
            inventory = load_inventory(inventory_path)
        except ConfigError as exc:
            problems.extend(exc.problems)
        else:
            problems += _check_inventory(inventory, profiles, str(inventory_path))
    if problems:
        raise ConfigError(problems)
    return Catalog(profiles=profiles, inventory=inventory)


def check_paths(paths: Sequence[Path]) -> list[str]:
    """What ``firegw profiles check`` reports: problems in profile and inventory files or directories."""
    profile_paths: list[Path] = []
    inventory_paths: list[Path] = []
    problems: list[str] = []
    for p in paths:
        if p.is_dir():
            profile_paths += _profile_files(p)
        elif not p.exists():
            problems.append(f"{p}: (file): does not exist")
        else:
            data = None
            try:
                data = _read_yaml(p)
            except ConfigError as exc:
                problems += exc.problems
                continue
            if isinstance(data, dict) and ("sites" in data or "devices" in data):
                inventory_paths.append(p)
            else:
                profile_paths.append(p)
    profiles, files, found = load_profiles(profile_paths)
    problems += found + _check_topics(profiles, files)
    for inv_path in inventory_paths:
        try:
            inv = load_inventory(inv_path)
        except ConfigError as exc:
            problems += exc.problems
            continue
        problems += _check_inventory(inv, profiles, str(inv_path))
    return problems


def profile_json_schema() -> str:
    return json.dumps(Profile.model_json_schema(by_alias=True), indent=2, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------- rules against points


def _type_ok(value: Value, vtype: str) -> bool:
    if vtype == "bool":
        return isinstance(value, bool)
    if vtype == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if vtype == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, str)


def validate_rules(rules: Sequence[AnyRule], profile: Profile, where: str = "rules") -> list[str]:
    """Problems of rules against a profile's points, one line each: ``rules[2].point: what is wrong``."""
    problems: list[str] = []
    names = ", ".join(p.name for p in profile.points)
    seen: dict[str, int] = {}
    for i, r in enumerate(rules):
        at = f"{where}[{i}]"
        if r.id in seen:
            problems.append(
                f"{at}.name: rule id {r.id!r} is already used by {where}[{seen[r.id]}]; give one of them a name"
            )
        seen[r.id] = i
        pname = getattr(r, "point", None)
        if pname is None:
            continue
        point = profile.point(pname)
        if point is None:
            problems.append(f"{at}.point: unknown point {pname!r} (profile {profile.profile} has: {names})")
            continue
        numeric = point.type in ("int", "float")
        if isinstance(r, ThresholdRule | RateOfChangeRule | StuckRule) and not numeric:
            problems.append(f"{at}.point: a {r.kind} rule needs a numeric point; {pname!r} is {point.type}")
        if isinstance(r, EventRule):
            if r.equals is not None and not _type_ok(r.equals, point.type):
                problems.append(f"{at}.equals: {r.equals!r} is not a {point.type} (point {pname!r} is {point.type})")
            if r.test_point is not None:
                tp = profile.point(r.test_point)
                if tp is None:
                    problems.append(
                        f"{at}.test_point: unknown point {r.test_point!r} (profile {profile.profile} has: {names})"
                    )
                elif tp.type != "bool":
                    problems.append(f"{at}.test_point: {r.test_point!r} must be a bool point, not {tp.type}")
        if isinstance(r, StateHeldRule):
            field, value = ("value", r.value) if r.value is not None else ("not_value", r.not_value)
            assert value is not None
            if not _type_ok(value, point.type):
                problems.append(f"{at}.{field}: {value!r} is not a {point.type} (point {pname!r} is {point.type})")
            elif point.enum and isinstance(value, int) and value not in point.enum:
                problems.append(
                    f"{at}.{field}: {value!r} is not one of the codes of {pname!r}: "
                    + ", ".join(f"{k} {v}" for k, v in point.enum.items())
                )
        if isinstance(r, ThresholdRule) and numeric and point.range is not None:
            lo, hi = point.range
            if not lo <= r.limit <= hi:
                side = "below" if r.below is not None else "above"
                problems.append(
                    f"{at}.{side}: {r.limit} is outside the "
                    f"physical range [{lo}, {hi}] of {pname!r}; it would trip always or never"
                )
    return problems
