"""``docker/`` checked against the code, without a Docker engine: every command, config path, port
and environment variable the Dockerfile and the compose file name exists and matches the gateway."""

from __future__ import annotations

import argparse
import importlib
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel

from gateway.cli import build_parser
from gateway.profiles.loader import load_catalog
from gateway.settings import GatewaySettings, load_settings
from simulators.__main__ import SIMULATORS
from simulators.fleet import build_devices, inventory_for
from tests.support import PROFILES, ROOT

DOCKER = ROOT / "docker"
COMPOSE: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text(encoding="utf-8"))
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
GATEWAY_ENV: dict[str, str] = {k: str(v) for k, v in SERVICES["gateway"]["environment"].items()}


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined."""
    text = (DOCKER / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instr, _, rest = line.partition(" ")
            out.append((instr.upper(), rest.strip()))
    return out


DOCKERFILE = _dockerfile()


def _instr(name: str) -> list[str]:
    return [rest for instr, rest in DOCKERFILE if instr == name]


def _mosquitto_conf() -> list[tuple[str, str]]:
    lines = (DOCKER / "mosquitto" / "mosquitto.conf").read_text(encoding="utf-8").splitlines()
    return [(k, v.strip()) for k, _, v in (ln.strip().partition(" ") for ln in lines if ln.strip()
                                           and not ln.strip().startswith("#"))]


def _readme_config() -> dict[str, Any]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert m, "README has no ```yaml configuration block"
    data: dict[str, Any] = yaml.safe_load(m.group(1))
    return data


def _field_of(env_key: str) -> tuple[str, ...]:
    top = {"FIREGW_INVENTORY": ("inventory",), "FIREGW_PROFILES_DIR": ("profiles_dir",),
           "FIREGW_LOG_LEVEL": ("log_level",), "FIREGW_CONFIG": ()}
    if env_key in top:
        return top[env_key]
    section, sep, key = env_key.removeprefix("FIREGW_").lower().partition("__")
    assert sep, f"{env_key}: expected FIREGW_<SECTION>__<KEY>"
    return section, key


def _mounts(service: str) -> list[tuple[str, str]]:
    out = []
    for v in SERVICES[service].get("volumes", []):
        src, _, rest = str(v).partition(":")
        out.append((src, rest.split(":")[0]))
    return out


# ---------------------------------------------------------------------------- environment


@pytest.mark.parametrize("service", [s for s, d in SERVICES.items() if d.get("environment")])
def test_every_firegw_variable_is_a_setting(service: str) -> None:
    env = SERVICES[service]["environment"]
    keys = [k for k in env if k.startswith("FIREGW_")]
    for key in keys:
        path = _field_of(key)
        model: type[BaseModel] = GatewaySettings
        for part in path:
            assert part in model.model_fields, f"{service}: {key}: no setting {'.'.join(path)}"
            ann = model.model_fields[part].annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                model = ann


def test_gateway_settings_validate_with_the_compose_environment() -> None:
    s = load_settings(DOCKER / "gateway.example.yaml", env=GATEWAY_ENV)
    assert s.influx.url == GATEWAY_ENV["FIREGW_INFLUX__URL"] and s.influx.api == "v2"
    assert s.store.path == Path(GATEWAY_ENV["FIREGW_STORE__PATH"])
    # every FIREGW_ variable took effect (none silently ignored)
    dumped = s.model_dump(mode="json")
    for key, value in GATEWAY_ENV.items():
        if key.startswith("FIREGW_"):
            node: Any = dumped
            for part in _field_of(key):
                node = node[part]
            assert str(node) == value, key


def test_broker_and_database_addresses_are_services_with_those_ports() -> None:
    mqtt = urlsplit(GATEWAY_ENV["FIREGW_MQTT__URL"])
    listeners = {int(v.split()[0]) for k, v in _mosquitto_conf() if k == "listener"}
    assert mqtt.hostname in SERVICES and mqtt.port in listeners
    influx = urlsplit(GATEWAY_ENV["FIREGW_INFLUX__URL"])
    assert influx.hostname == "influxdb" and influx.port == 8086
    init = SERVICES["influxdb"]["environment"]
    assert SERVICES["influxdb"]["image"].startswith("influxdb:2")
    assert init["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    assert GATEWAY_ENV["FIREGW_INFLUX__TOKEN"] == init["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
    assert GATEWAY_ENV["FIREGW_INFLUX__ORG"] == init["DOCKER_INFLUXDB_INIT_ORG"]
    assert GATEWAY_ENV["FIREGW_INFLUX__BUCKET"] == init["DOCKER_INFLUXDB_INIT_BUCKET"]
    users = [ln.split(":")[0] for ln in (DOCKER / "mosquitto" / "passwd").read_text().splitlines() if ln]
    assert GATEWAY_ENV["FIREGW_MQTT__USERNAME"] in users


def test_mosquitto_keeps_messages_and_requires_authentication() -> None:
    conf = _mosquitto_conf()
    d = dict(conf)
    assert SERVICES["mosquitto"]["image"].startswith("eclipse-mosquitto:2")
    assert d["persistence"] == "true" and d["max_queued_bytes"] == "0" and int(d["max_queued_messages"]) >= 1_000_000
    # the published listener needs a password; the password file is mounted where the config says
    published = {int(str(p).split(":")[-1]) for p in SERVICES["mosquitto"]["ports"]}
    current, auth = None, {}
    for k, v in conf:
        if k == "listener":
            current = int(v.split()[0])
        elif k == "allow_anonymous" and current is not None:
            auth[current] = v
    assert d["per_listener_settings"] == "true"
    assert all(auth[p] == "false" for p in published), auth
    assert ("./mosquitto/passwd", d["password_file"]) in _mounts("mosquitto")
    assert any(dst.rstrip("/") == d["persistence_location"].rstrip("/") for _, dst in _mounts("mosquitto"))


# ---------------------------------------------------------------------------- commands


@pytest.mark.parametrize("service", [s for s, d in SERVICES.items() if d.get("command")])
def test_simulator_commands_exist_and_their_flags_parse(service: str) -> None:
    cmd = SERVICES[service]["command"]
    cmd = shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]
    assert cmd[:3] == ["python", "-m", "simulators"], cmd
    name, args = cmd[3], cmd[4:]
    assert name in SIMULATORS, f"{service}: no simulator {name!r}"
    mod = importlib.import_module(SIMULATORS[name][0])
    parser = argparse.ArgumentParser(prog=f"python -m simulators {name}", exit_on_error=False)
    mod.add_arguments(parser)
    try:
        ns = parser.parse_args(args)
    except (argparse.ArgumentError, SystemExit) as exc:
        pytest.fail(f"{service}: {' '.join(cmd)}: {exc}")
    if hasattr(ns, "broker"):
        url = urlsplit(ns.broker)
        listeners = {int(v.split()[0]) for k, v in _mosquitto_conf() if k == "listener"}
        assert url.hostname in SERVICES and url.port in listeners


def test_fleet_and_pumproom_devices_are_in_the_inventory() -> None:
    inv = yaml.safe_load((DOCKER / "inventory.yaml").read_text(encoding="utf-8"))
    fleet_cmd = [str(c) for c in SERVICES["fleet"]["command"]]
    fleet = argparse.ArgumentParser(exit_on_error=False)
    importlib.import_module("simulators.fleet").add_arguments(fleet)
    ns = fleet.parse_args(fleet_cmd[4:])
    generated = inventory_for(build_devices(ns.devices, ns.seed, ns.per_site))
    assert all(d in inv["devices"] for d in generated["devices"]), "docker/inventory.yaml is not the fleet's"
    pump_cmd = [str(c) for c in SERVICES["pumproom"]["command"]]
    pump = argparse.ArgumentParser(exit_on_error=False)
    importlib.import_module("simulators.pumproom").add_arguments(pump)
    pns = pump.parse_args(pump_cmd[4:])
    polled = [d for d in inv["devices"] if d.get("modbus")]
    assert polled and all(d["modbus"]["host"] == "127.0.0.1" and d["modbus"]["port"] == pns.port for d in polled)
    assert SERVICES["pumproom"]["network_mode"] == "service:gateway"  # so 127.0.0.1 is the gateway's
    catalog = load_catalog(PROFILES, DOCKER / "inventory.yaml")
    assert len(catalog.devices) == len(inv["devices"])


def test_dockerfile_runs_firegw_as_non_root_with_its_config() -> None:
    cmd = json.loads(_instr("CMD")[-1])
    assert cmd[:2] == ["firegw", "run"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert "firegw" in scripts
    config = cmd[cmd.index("--config") + 1]
    copies = {dst: src for src, dst in (c.split()[-2:] for c in _instr("COPY"))}
    assert copies.get(config) == "docker/gateway.example.yaml"
    for src in copies.values():
        assert (ROOT / src).exists(), src
    for c in _instr("COPY"):
        for src in c.split()[:-1]:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
    user = _instr("USER")[-1]
    assert user not in ("root", "0")
    inventory = GATEWAY_ENV["FIREGW_INVENTORY"]
    assert copies.get(inventory) == "docker/inventory.yaml"
    store_dir = str(Path(GATEWAY_ENV["FIREGW_STORE__PATH"]).parent)
    assert any(dst == store_dir for _, dst in _mounts("gateway")), "the store is not on a volume"
    assert store_dir in " ".join(_instr("VOLUME") + _instr("RUN"))


def test_the_cli_accepts_the_dockerfile_command() -> None:
    cmd = json.loads(_instr("CMD")[-1])
    _parse_cli(cmd[1:])


def _parse_cli(args: list[str]) -> None:
    try:
        ns = build_parser().parse_args(args)
    except SystemExit as exc:
        raise AssertionError(f"firegw {' '.join(args)}: rejected by the CLI") from exc
    assert getattr(ns, "config", None) == Path(args[args.index("--config") + 1])


def test_api_port_is_exposed_and_published() -> None:
    listen = GATEWAY_ENV["FIREGW_API__LISTEN"]
    host, _, port = listen.rpartition(":")
    assert host == "0.0.0.0"
    assert port in " ".join(_instr("EXPOSE")).split()
    assert any(str(p).split(":")[-1] == port for p in SERVICES["gateway"]["ports"])


def test_mounted_files_exist() -> None:
    for name, svc in SERVICES.items():
        for src, _dst in _mounts(name):
            if src.startswith("."):
                assert (DOCKER / src).exists(), f"{name}: {src} does not exist"
        build = svc.get("build")
        if build:
            assert (DOCKER / build["context"] / build["dockerfile"]).is_file()


def test_grafana_is_provisioned_with_the_dashboard() -> None:
    ds = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/influxdb.yaml").read_text(encoding="utf-8"))
    source = ds["datasources"][0]
    assert urlsplit(source["url"]).hostname == "influxdb"
    assert source["jsonData"]["organization"] == GATEWAY_ENV["FIREGW_INFLUX__ORG"]
    assert source["jsonData"]["defaultBucket"] == GATEWAY_ENV["FIREGW_INFLUX__BUCKET"]
    token_var = source["secureJsonData"]["token"].lstrip("$").strip("{}")
    assert SERVICES["grafana"]["environment"][token_var] == GATEWAY_ENV["FIREGW_INFLUX__TOKEN"]
    prov = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/firegw.yaml").read_text(encoding="utf-8"))
    path = prov["providers"][0]["options"]["path"]
    assert ("./grafana/dashboards", path) in _mounts("grafana")
    dash = json.loads((DOCKER / "grafana/dashboards/firegw.json").read_text(encoding="utf-8"))
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for want in ("site status", "pressure", "pump states", "hazards"):
        assert want in titles
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == source["uid"]
        assert 'bucket: "' + GATEWAY_ENV["FIREGW_INFLUX__BUCKET"] + '"' in p["targets"][0]["query"]
    # the measurements and fields the panels read are the ones the sink writes
    queries = " ".join(p["targets"][0]["query"] for p in dash["panels"])
    assert '"fire_pump_cabinet"' in queries and "value_int" in queries
    kinds = {prof.kind for prof in load_catalog(PROFILES, None).profiles.values()}
    assert "fire_pump_cabinet" in kinds


# ---------------------------------------------------------------------------- the example config


def test_example_config_validates_and_matches_the_readme() -> None:
    example = yaml.safe_load((DOCKER / "gateway.example.yaml").read_text(encoding="utf-8"))
    GatewaySettings.model_validate(example)
    assert set(example) == set(GatewaySettings.model_fields), "every section, with its defaults"
    readme = _readme_config()
    shared = set(example) & set(readme)
    assert {"mqtt", "store", "pipeline"} <= shared
    for key in sorted(shared):
        assert example[key] == readme[key], f"{key}: docker/gateway.example.yaml differs from the README"
    # the sections the README leaves out show every field with its default, except where compose needs a value
    defaults = GatewaySettings().model_dump(mode="json")
    for section in set(example) - shared:
        if isinstance(defaults[section], dict):
            assert set(example[section]) == set(defaults[section]), section
