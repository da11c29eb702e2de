"""``docker/`` checked against the code: every command, config path, port and environment variable the
Dockerfile and the compose file name exists and matches the gateway (no Docker engine is needed);
no secret is written in them; and docker/mosquitto's configuration, ACL and entrypoint run in a real
Mosquitto, where each user can do what the ACL grants and nothing else."""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import random
import re
import shlex
import shutil
import socket
import stat
import struct
import subprocess
import threading
import tomllib
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from pydantic import BaseModel

from gateway.cli import build_parser
from gateway.errors import ConfigError
from gateway.profiles.loader import load_catalog
from gateway.profiles.models import MqttProfile
from gateway.settings import GatewaySettings, load_settings
from simulators.__main__ import SIMULATORS
from simulators.broker import MESSAGE_SIZE_LIMIT, Mosquitto, free_port
from simulators.fleet import _malformed, build_devices, inventory_for
from tests.support import PROFILES, PYTHON, ROOT, wait_for

DOCKER = ROOT / "docker"
MOSQ = DOCKER / "mosquitto"
RAW_COMPOSE: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------- compose variables


class MissingVariable(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


_VAR = re.compile(
    r"\$(?:(?P<dollar>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable substitution: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
    ``${VAR:?message}`` and ``${VAR?message}`` (the forms docker/compose.yaml may use)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m["dollar"]:
            return "$"
        name = m["name"] or m["bare"]
        op, arg = m["op"] or "", m["arg"] or ""
        got = env.get(name)
        missing = got is None or (op.startswith(":") and got == "")
        if op.endswith("?") and missing:
            raise MissingVariable(name, arg or "required")
        if op.endswith("-") and missing:
            return arg
        return got or ""

    return _VAR.sub(sub, value)


def _variables(value: Any) -> list[tuple[str, str]]:
    """Every (name, operator) a compose value refers to."""
    if isinstance(value, dict):
        return [v for item in value.values() for v in _variables(item)]
    if isinstance(value, list):
        return [v for item in value for v in _variables(item)]
    if not isinstance(value, str):
        return []
    return [(m["name"] or m["bare"], m["op"] or "") for m in _VAR.finditer(value) if not m["dollar"]]


def read_env_file(path: Path) -> dict[str, str]:
    """A compose ``.env`` file in the subset docker/init-secrets writes: ``KEY=value`` or ``KEY='literal'``."""
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"{path}:{n}: not KEY=value: {line!r}"
        if value.startswith("'"):
            assert value.endswith("'") and len(value) >= 2 and "'" not in value[1:-1], f"{path}:{n}: quoting"
            value = value[1:-1]
        else:
            assert not re.search(r"[\s'\"#$\\]", value), f"{path}:{n}: unquoted value needs quotes: {line!r}"
        out[key] = value
    return out


def _token_entry(name: str, role: str, token: str) -> str:
    return f"{{name: {name}, role: {role}, sha256: {hashlib.sha256(token.encode()).hexdigest()}}}"


#: What docker/.env holds, with test values (tests that need docker/init-secrets' own output run it).
TEST_TOKENS = {"duty": ("operator", "test-operator-token-0123456789")}
TEST_ENV = {
    "MQTT_FIREGW_PASSWORD": "test-mqtt-password",
    "INFLUX_ADMIN_PASSWORD": "test-influx-password",
    "INFLUX_TOKEN": "test-influx-token",
    "GRAFANA_ADMIN_PASSWORD": "test-grafana-password",
    "API_TOKENS": "[" + ", ".join(_token_entry(n, r, t) for n, (r, t) in TEST_TOKENS.items()) + "]",
}
COMPOSE: dict[str, Any] = interpolate(RAW_COMPOSE, TEST_ENV)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
GATEWAY_ENV: dict[str, str] = {k: str(v) for k, v in SERVICES["gateway"]["environment"].items()}
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|(^|_)KEY($|_)", re.I)


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
    return [
        (k, v.strip())
        for k, _, v in (ln.strip().partition(" ") for ln in lines if ln.strip() and not ln.strip().startswith("#"))
    ]


def _readme_config() -> dict[str, Any]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert m, "README has no ```yaml configuration block"
    data: dict[str, Any] = yaml.safe_load(m.group(1))
    return data


def _field_of(env_key: str) -> tuple[str, ...]:
    top = {
        "FIREGW_INVENTORY": ("inventory",),
        "FIREGW_PROFILES_DIR": ("profiles_dir",),
        "FIREGW_LOG_LEVEL": ("log_level",),
        "FIREGW_CONFIG": (),
    }
    if env_key in top:
        return top[env_key]
    section, sep, key = env_key.removeprefix("FIREGW_").lower().partition("__")
    assert sep, f"{env_key}: expected FIREGW_<SECTION>__<KEY>"
    return section, key


def _mounts(service: str) -> list[tuple[str, str]]:
    out = []
    for v in SERVICES[service].get("volumes", []):
        if isinstance(v, dict):
            out.append((str(v["source"]), str(v["target"])))
            continue
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
            if isinstance(node, list):  # given as YAML text (settings._env_value)
                given = yaml.safe_load(value)
                assert [{k: v for k, v in item.items() if v is not None} for item in node] == given, key
            else:
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
    # the gateway's MQTT user is the one the ACL privileges and the entrypoint gives a password
    assert GATEWAY_ENV["FIREGW_MQTT__USERNAME"] == "firegw"
    assert "user firegw" in _acl_lines(MOSQ / "acl")
    assert 'mosquitto_passwd "$new" firegw' in (MOSQ / "entrypoint.sh").read_text(encoding="utf-8")
    broker_env = SERVICES["mosquitto"]["environment"]
    assert broker_env["MQTT_FIREGW_PASSWORD"] == GATEWAY_ENV["FIREGW_MQTT__PASSWORD"]
    assert (
        RAW_COMPOSE["services"]["mosquitto"]["environment"]["MQTT_FIREGW_PASSWORD"]
        == RAW_COMPOSE["services"]["gateway"]["environment"]["FIREGW_MQTT__PASSWORD"]
    )  # one variable: no drift


def _listeners() -> dict[int, dict[str, str]]:
    """Per listener (port): its settings, from docker/mosquitto/mosquitto.conf."""
    out: dict[int, dict[str, str]] = {}
    current: int | None = None
    for k, v in _mosquitto_conf():
        if k == "listener":
            current = int(v.split()[0])
            out[current] = {}
        elif current is not None and k in ("allow_anonymous", "password_file", "acl_file"):
            out[current][k] = v
    return out


def _acl_lines(path: Path) -> list[str]:
    return [
        ln.strip()
        for ln in path.read_text(encoding="utf-8").splitlines()
        if ln.strip() and not ln.strip().startswith("#")
    ]


def _in_container(path: str) -> Path:
    """A path in the broker's container: the mounted configuration folder, or the entrypoint's auth folder."""
    for src, dst in _mounts("mosquitto"):
        if path.startswith(dst.rstrip("/") + "/") and src.startswith("."):
            return DOCKER / src / path[len(dst.rstrip("/")) + 1 :]
    raise AssertionError(f"{path}: not in a folder mounted from docker/")


def test_mosquitto_keeps_messages_and_requires_authentication() -> None:
    d = dict(_mosquitto_conf())
    assert SERVICES["mosquitto"]["image"].startswith("eclipse-mosquitto:2")
    assert d["persistence"] == "true" and d["max_queued_bytes"] == "0" and int(d["max_queued_messages"]) >= 1_000_000
    assert d["per_listener_settings"] == "true"
    assert any(dst.rstrip("/") == d["persistence_location"].rstrip("/") for _, dst in _mounts("mosquitto"))
    listeners = _listeners()
    published = {int(str(p).split(":")[-1]) for p in SERVICES["mosquitto"]["ports"]}
    assert published and published <= set(listeners)
    for port, conf in listeners.items():
        # every listener has an ACL, and the configuration files it names are in docker/mosquitto
        assert (_in_container(conf["acl_file"])).is_file(), (port, conf)
        if port in published:  # reachable from outside: a password each, nobody anonymous
            assert conf["allow_anonymous"] == "false" and conf["password_file"].startswith("/mosquitto/auth/"), conf
    # the password file is the one the entrypoint builds
    entry = SERVICES["mosquitto"]["entrypoint"]
    script = _in_container(entry[-1])
    assert entry[0] == "/bin/sh" and script == MOSQ / "entrypoint.sh"
    text = script.read_text(encoding="utf-8")
    auth_dir = re.search(r"auth_dir=\$\{MOSQUITTO_AUTH_DIR:-(\S+)\}", text)
    assert auth_dir and {c["password_file"] for c in listeners.values() if "password_file" in c} == {
        auth_dir[1] + "/passwd"
    }
    assert not (MOSQ / "passwd").exists(), "a password file in the repository: it is built at start now"
    for key in SERVICES["mosquitto"].get("environment", {}):  # every variable given is one the entrypoint reads
        assert "${" + key in text, f"mosquitto: {key} is not read by entrypoint.sh"


def test_mosquitto_bounds_message_size() -> None:
    limit = int(dict(_mosquitto_conf())["message_size_limit"])
    largest = max(p.mqtt.max_payload_bytes for p in load_catalog(PROFILES, None).profiles.values() if p.mqtt)
    oversized = len(_malformed(build_devices(1)[0], random.Random(1), "oversized")[1])
    # room for every shipped profile and for the fleet's own oversize case (which the gateway dead-letters),
    # and no band the broker drops unseen below the gateway's own bound (where it makes a dead letter)
    gateway_bound = GatewaySettings().pipeline.max_payload_bytes
    assert largest * 16 <= limit and oversized < limit <= 1_048_576, (largest, oversized, limit)
    assert gateway_bound <= limit, (gateway_bound, limit)


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


# ---------------------------------------------------------------------------- secrets come from the environment


def _example_vars() -> dict[str, str]:
    return read_env_file(DOCKER / ".env.example")


def test_every_compose_variable_is_required_and_documented() -> None:
    used = _variables(RAW_COMPOSE)
    assert used, "compose takes no secret from the environment"
    for name, op in used:
        assert op == ":?", f"${{{name}}}: a secret must be required (${{{name}:?...}}), not defaulted or optional"
    assert {n for n, _ in used} == set(_example_vars()), "docker/.env.example and docker/compose.yaml differ"
    assert all(v == "" for v in _example_vars().values()), "docker/.env.example must hold no value"


@pytest.mark.parametrize("service", list(RAW_COMPOSE["services"]))
def test_no_secret_is_written_in_compose(service: str) -> None:
    env = RAW_COMPOSE["services"][service].get("environment") or {}
    for key, value in env.items():
        if SECRET_NAME.search(key) or key == "FIREGW_API__TOKENS":
            assert re.fullmatch(r"\$\{[A-Z_][A-Z0-9_]*:\?[^}]*\}", str(value)), (
                f"{service}: {key} must be a required variable, not {value!r}"
            )
    # nor anywhere else: no token digests, no long random strings
    text = (DOCKER / "compose.yaml").read_text(encoding="utf-8")
    assert not re.search(r"[0-9a-f]{32,}|sha256:\s*\w", text, re.I)
    assert "demo-password" not in text and "demo-token" not in text


def test_compose_refuses_to_start_without_each_secret() -> None:
    for name in TEST_ENV:
        env = {k: v for k, v in TEST_ENV.items() if k != name}
        with pytest.raises(MissingVariable) as exc:
            interpolate(RAW_COMPOSE, env)
        assert exc.value.name == name and "docker/init-secrets" in str(exc.value)
        with pytest.raises(MissingVariable):  # empty counts as missing (:?)
            interpolate(RAW_COMPOSE, {**env, name: ""})


def test_secret_files_are_ignored_by_git() -> None:
    for path in ("docker/.env", "docker/api-tokens.txt", "docker/mosquitto/users.passwd"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0, path
    tracked = subprocess.run(
        ["git", "ls-files", "docker"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert not {
        "docker/.env",
        "docker/api-tokens.txt",
        "docker/mosquitto/users.passwd",
        "docker/mosquitto/passwd",
    } & set(tracked)


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def test_api_listens_beyond_loopback_only_with_tokens() -> None:
    s = load_settings(DOCKER / "gateway.example.yaml", env=GATEWAY_ENV)
    assert not _loopback(s.api.host)  # published from the container
    assert s.api.tokens and {t.name for t in s.api.tokens} == set(TEST_TOKENS)
    assert {t.digest for t in s.api.tokens} == {
        hashlib.sha256(tok.encode()).hexdigest() for _, tok in TEST_TOKENS.values()
    }
    # and the tokens are not optional: without them compose does not start at all
    assert _variables(RAW_COMPOSE["services"]["gateway"]["environment"]["FIREGW_API__TOKENS"]) == [("API_TOKENS", ":?")]
    # were they dropped from the file, the gateway would refuse to start (exit 2, naming the settings)
    without = {k: v for k, v in GATEWAY_ENV.items() if k != "FIREGW_API__TOKENS"}
    with pytest.raises(ConfigError, match=r"api\.tokens"):
        load_settings(DOCKER / "gateway.example.yaml", env=without)
    run = subprocess.run(
        [PYTHON, "-m", "gateway.cli", "run", "--config", str(DOCKER / "gateway.example.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **without},
    )
    assert run.returncode == 2 and "api.tokens" in run.stderr + run.stdout, (run.returncode, run.stderr[-2000:])
    # the example file (the image's own config) stays loopback-only when it has no tokens
    example = yaml.safe_load((DOCKER / "gateway.example.yaml").read_text(encoding="utf-8"))
    assert example["api"]["tokens"] or _loopback(example["api"]["listen"].rpartition(":")[0])


def _run_init_secrets(where: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(where / "init-secrets")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )


def test_init_secrets_writes_every_variable_privately_once(tmp_path: Path) -> None:
    shutil.copy2(DOCKER / "init-secrets", tmp_path / "init-secrets")
    _run_init_secrets(tmp_path)
    env_file, tokens_file = tmp_path / ".env", tmp_path / "api-tokens.txt"
    for f in (env_file, tokens_file):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    env = read_env_file(env_file)
    assert set(env) == set(_example_vars())
    secrets = [v for k, v in env.items() if k != "API_TOKENS"]
    assert all(len(v) >= 32 for v in secrets) and len(set(secrets)) == len(secrets)
    # the compose file resolves with it, and the gateway takes its tokens
    services = interpolate(RAW_COMPOSE, env)["services"]
    gw_env = {k: str(v) for k, v in services["gateway"]["environment"].items()}
    s = load_settings(DOCKER / "gateway.example.yaml", env=gw_env)
    rows = [
        ln.split()
        for ln in tokens_file.read_text(encoding="utf-8").splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert {(r[0], r[1], hashlib.sha256(r[2].encode()).hexdigest()) for r in rows} == {
        (t.name, t.role, t.digest) for t in s.api.tokens
    }
    assert {t.role for t in s.api.tokens} == {"viewer", "operator", "admin"}
    assert not any(r[2] in env_file.read_text(encoding="utf-8") for r in rows), "a plain token in .env"
    # idempotent: a second run keeps what is there
    before = env_file.read_bytes(), tokens_file.read_bytes()
    out = _run_init_secrets(tmp_path)
    assert "keeping it" in out.stdout and (env_file.read_bytes(), tokens_file.read_bytes()) == before


# ---------------------------------------------------------------------------- a real Mosquitto with docker's config


@dataclass
class DockerMosquitto(Mosquitto):
    """docker/mosquitto/mosquitto.conf as the container runs it, on loopback ports and in ``workdir``:
    the configuration folder is a copy of docker/mosquitto, the password file is built by its
    entrypoint.sh, exactly as in the container."""

    sim_port: int = field(default_factory=free_port)

    def folder(self, name: str) -> Path:
        return self.workdir / name

    def config_text(self) -> str:
        text = (MOSQ / "mosquitto.conf").read_text(encoding="utf-8")
        for name in ("config", "auth", "data"):
            text = text.replace(f"/mosquitto/{name}/", f"{self.folder(name)}/")
        ports = {p: self.port for p, c in _listeners().items() if c.get("allow_anonymous") == "false"}
        ports |= {p: self.sim_port for p in _listeners() if p not in ports}
        for container_port, port in ports.items():
            text = re.sub(rf"^listener {container_port}$", f"listener {port} 127.0.0.1", text, flags=re.M)
        text = text.replace("log_dest stdout", f"log_dest file {self.workdir}/mosquitto.log")
        assert "/mosquitto/" not in text and len(ports) == 2, text
        return text

    def start(self, timeout: float = 10.0) -> DockerMosquitto:
        super().start(timeout)
        self._wait_listening(self.sim_port, timeout)
        return self


class Client:
    """A paho 2.x MQTT 5 client that waits for what the broker answers (CONNACK, PUBACK, SUBACK)."""

    def __init__(self, port: int, username: str | None = None, password: str | None = None) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.connack: Any = None
        self._acks: dict[int, Any] = {}
        self._subacks: dict[int, list[Any]] = {}
        self._cond = threading.Condition()
        c = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            protocol=MQTTProtocolVersion.MQTTv5,
            client_id=f"t-{username or 'anon'}-{uuid.uuid4().hex[:6]}",
        )
        if username is not None:
            c.username_pw_set(username, password)
        c.on_connect = self._on_connect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.connect_async("127.0.0.1", port, keepalive=30)
        c.loop_start()
        self.client = c
        self._wait(lambda: self.connack is not None, "CONNACK")

    def _wait(self, cond: Callable[[], object], what: str, timeout: float = 10.0) -> None:
        with self._cond:
            assert self._cond.wait_for(cond, timeout), f"no {what} within {timeout}s"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self._cond:
            self.connack = reason_code
            self._cond.notify_all()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._cond:
            self._acks[mid] = reason_code
            self._cond.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        with self._cond:
            self._subacks[mid] = list(reason_codes)
            self._cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    @property
    def connected(self) -> bool:
        return not self.connack.is_failure

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        """Publish at QoS 1; the PUBACK's reason code (0 accepted, 0x87 not authorized ...)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        self._wait(lambda: info.mid in self._acks, f"PUBACK for {topic}")
        return int(self._acks[info.mid].value)

    def subscribe(self, topic: str) -> int:
        """The SUBACK's reason code: the granted QoS (0-2), or a failure (0x87 not authorized ...)."""
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        self._wait(lambda: mid in self._subacks, f"SUBACK for {topic}")
        return int(self._subacks[mid][0].value)

    def wait_message(self, topic: str, payload: bytes, timeout: float = 10.0) -> None:
        self._wait(lambda: any(m[:2] == (topic, payload) for m in self.messages), f"{topic} {payload!r}", timeout)

    def got(self, topic: str) -> list[bytes]:
        with self._cond:
            return [p for t, p, _ in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


NOT_AUTHORIZED = 0x87


def publish_raw(port: int, topic: str, payload: bytes, username: str | None = None, password: str | None = None) -> int:
    """One MQTT 5 QoS 1 publish over a bare socket; the PUBACK's reason code.

    For a payload over ``message_size_limit`` Mosquitto 2.0 answers a failure code that is not valid in a
    PUBACK (0x95, packet too large): paho takes it for a protocol error, drops the connection and
    sends the message again on reconnect, so the refusal is read here without paho."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            n, byte = divmod(n, 128)
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def lp(b: bytes) -> bytes:  # a length-prefixed string
        return struct.pack("!H", len(b)) + b

    def packet(first: int, body: bytes) -> bytes:
        return bytes([first]) + varint(len(body)) + body

    def read(sock: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "the broker closed the connection"
            data += chunk
        return data

    def read_packet(sock: socket.socket) -> tuple[int, bytes]:
        first = read(sock, 1)[0]
        length, shift = 0, 0
        while True:
            byte = read(sock, 1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return first, read(sock, length)

    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    client_id = f"raw-{uuid.uuid4().hex[:8]}".encode()
    connect = lp(b"MQTT") + bytes([5, flags]) + struct.pack("!H", 30) + b"\x00" + lp(client_id)
    connect += (lp(username.encode()) if username is not None else b"") + (
        lp(password.encode()) if password is not None else b""
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(packet(0x10, connect))
        kind, body = read_packet(sock)
        assert kind == 0x20 and body[1] == 0, f"CONNACK {body[:2].hex()}"
        sock.sendall(packet(0x32, lp(topic.encode()) + struct.pack("!H", 1) + b"\x00" + payload))
        kind, body = read_packet(sock)
        assert kind == 0x40 and body[:2] == b"\x00\x01", (kind, body[:4].hex())
        return body[2] if len(body) > 2 else 0


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        c.close()


def _passwd(path: Path, user: str, password: str) -> None:
    args = ["mosquitto_passwd", "-b", str(path), user, password]
    if not path.exists():
        args.insert(1, "-c")
    subprocess.run(args, check=True, capture_output=True, timeout=30)


def _device_topics() -> dict[str, tuple[str, str]]:
    """One inventory device per shipped MQTT profile: device_id -> (profile, its uplink topic)."""
    catalog = load_catalog(PROFILES, DOCKER / "inventory.yaml")
    out: dict[str, tuple[str, str]] = {}
    for d in catalog.devices.values():
        prof = catalog.profiles[d.profile]
        if prof.mqtt is not None and prof.profile not in {p for p, _ in out.values()}:
            out[d.device_id] = (prof.profile, prof.mqtt.topic.format_map(d.model_dump()))
    assert {p for p, _ in out.values()} == {p.profile for p in catalog.profiles.values() if p.mqtt}
    return out


def test_every_profile_topic_is_a_device_topic_in_the_acl() -> None:
    """The ACL's device pattern covers every shipped profile's mqtt.topic with %u as the device_id."""
    patterns = [ln.split(None, 2)[2] for ln in _acl_lines(MOSQ / "acl") if ln.startswith("pattern write ")]
    assert patterns == ["fire/+/+/%u/up"]
    levels = patterns[0].split("/")
    for prof in load_catalog(PROFILES, None).profiles.values():
        if prof.mqtt is None:
            continue
        topic = prof.mqtt.topic.split("/")
        assert len(topic) == len(levels), prof.profile
        for want, got in zip(levels, topic, strict=True):
            assert want == "+" or (want == "%u" and got == "{device_id}") or want == got, (prof.profile, got)
    assert MqttProfile.model_fields["topic"].description  # the rule the profiles follow is documented


def test_mosquitto_acl_lets_each_user_do_only_its_part(tmp_path: Path, clients: list[Client]) -> None:
    devices = _device_topics()
    broker = DockerMosquitto(tmp_path / "broker")
    conf = broker.folder("config")
    conf.mkdir(parents=True)
    for f in ("acl", "acl.simulators"):
        shutil.copy2(MOSQ / f, conf / f)
    # the operator's users: one device per profile and the grid platform, made with mosquitto_passwd
    passwords = {user: f"pw-{user}-{uuid.uuid4().hex[:8]}" for user in [*devices, "grid"]}
    for user, password in passwords.items():
        _passwd(conf / "users.passwd", user, password)
    _passwd(conf / "users.passwd", "firegw", "a-stale-firegw-password")  # ignored: firegw's comes from the env
    firegw_pw = "env-firegw-" + uuid.uuid4().hex
    out = subprocess.run(
        ["sh", str(MOSQ / "entrypoint.sh"), "true"],
        capture_output=True,
        text=True,
        timeout=30,
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "MQTT_FIREGW_PASSWORD": firegw_pw,
            "MOSQUITTO_CONF_DIR": str(conf),
            "MOSQUITTO_AUTH_DIR": str(broker.folder("auth")),
            "MOSQUITTO_DATA_DIR": str(broker.folder("data")),
        },
    )
    assert out.returncode == 0, out.stderr
    passwd = broker.folder("auth") / "passwd"
    assert stat.S_IMODE(passwd.stat().st_mode) == 0o600
    users = [ln.split(":")[0] for ln in passwd.read_text().splitlines() if ln]
    assert sorted(users) == sorted([*passwords, "firegw"])  # firegw once, from the environment
    assert firegw_pw not in passwd.read_text()
    broker.start()
    try:
        _check_acl(broker, devices, passwords, firegw_pw, clients)
    finally:
        for c in clients:
            c.close()
        clients.clear()
        broker.stop()


def _check_acl(
    broker: DockerMosquitto,
    devices: dict[str, tuple[str, str]],
    passwords: dict[str, str],
    firegw_pw: str,
    clients: list[Client],
) -> None:
    def client(port: int, user: str | None = None, password: str | None = None) -> Client:
        c = Client(port, user, password)
        clients.append(c)
        return c

    # nobody gets in without the right password
    assert client(broker.port).connack.is_failure  # anonymous
    assert client(broker.port, "firegw", "a-stale-firegw-password").connack.is_failure
    assert client(broker.port, "firegw", "wrong").connack.is_failure
    firegw = client(broker.port, "firegw", firegw_pw)
    grid = client(broker.port, "grid", passwords["grid"])
    assert firegw.connected and grid.connected
    # firegw reads every device topic; the grid platform reads the grid topics. Mosquitto's ACL file
    # grants a subscription and filters at delivery: a reader never gets what it may not read (the
    # broker queues a delivery before the PUBACK of the message it comes from, so a message is
    # checked as missing only after a later message on the same connection has arrived).
    assert firegw.subscribe("fire/#") == 1 and grid.subscribe("grid/#") == 1
    assert firegw.subscribe("grid/#") in (1, NOT_AUTHORIZED) and grid.subscribe("fire/#") in (1, NOT_AUTHORIZED)

    ids = list(devices)
    code_topic = "grid/安昌街道/site-001/code"
    for n, device_id in enumerate(ids):
        profile, own = devices[device_id]
        other = devices[ids[(n + 1) % len(ids)]][1]
        dev = client(broker.port, device_id, passwords[device_id])
        assert dev.connected, profile
        # a device writes only its own uplink: not another device's, not the grid topics, and it reads nothing
        spoof = json.dumps({"event": "alarm", "spoofed_by": device_id}).encode()
        assert dev.publish(other, spoof) == NOT_AUTHORIZED, profile
        assert dev.publish(code_topic, b"red", retain=True) == NOT_AUTHORIZED, profile
        assert dev.publish(own.replace(f"/{device_id}/", f"/{device_id}x/"), b"{}") == NOT_AUTHORIZED
        assert dev.subscribe("fire/#") in (1, NOT_AUTHORIZED)
        body = json.dumps({"device": device_id, "seq": n}).encode()
        assert dev.publish(own, body) == 0, profile
        firegw.wait_message(own, body)
        assert dev.messages == []  # it reads nothing, not even its own uplink (delivered before the PUBACK)
        # the refused ones never arrived, though the later allowed one did
        assert spoof not in firegw.got(other) and firegw.got(own) == [body]
        # over the size bound: refused by the broker, and the broker goes on
        limit = int(dict(_mosquitto_conf())["message_size_limit"])
        assert publish_raw(broker.port, own, b"x" * (limit + 1), device_id, passwords[device_id]) >= 0x80
        assert publish_raw(broker.port, own, b"x" * limit, device_id, passwords[device_id]) == 0
        assert dev.publish(own, body + b" ") == 0
        firegw.wait_message(own, body + b" ")
        assert firegw.got(own) == [body, b"x" * limit, body + b" "]
        dev.close()

    # only firegw writes the grid topics, retained site codes included
    assert firegw.publish(code_topic, b"green", retain=True) == 0
    grid.wait_message(code_topic, b"green")
    assert grid.got(code_topic) == [b"green"]  # no device's "red"
    assert not [m for m in grid.messages if m[0].startswith("fire/")]  # the grid reads no device topic
    assert not [m for m in firegw.messages if m[0].startswith("grid/")]  # nor firegw the grid topics
    late = client(broker.port, "grid", passwords["grid"])
    assert late.subscribe("grid/+/+/code") == 1
    late.wait_message(code_topic, b"green")  # retained: what a new reader gets
    assert [m for m in late.messages if m[0] == code_topic] == [(code_topic, b"green", True)]
    assert grid.publish(code_topic, b"red", retain=True) == NOT_AUTHORIZED  # a reader is not a writer

    # the simulator listener: anonymous, device uplinks only
    sim = client(broker.sim_port)
    assert sim.connected
    assert sim.publish("grid/t/s/events", b"{}") == NOT_AUTHORIZED
    assert sim.publish("fire/site-001/button", b"{}") == NOT_AUTHORIZED
    assert sim.subscribe("#") in (1, NOT_AUTHORIZED)
    any_device = devices[ids[0]][1]
    assert sim.publish(any_device, b'{"sim": 1}') == 0
    firegw.wait_message(any_device, b'{"sim": 1}')
    assert sim.messages == []
    assert firegw.publish(code_topic, b"yellow", retain=True) == 0
    grid.wait_message(code_topic, b"yellow")
    assert grid.got(code_topic) == [b"green", b"yellow"] and grid.got("grid/t/s/events") == []


# ---------------------------------------------------------------------------- brokers the project writes


def test_test_broker_bounds_payloads_far_above_what_profiles_accept() -> None:
    def upper(field: Any) -> int:
        return int(next(m.le for m in field.metadata if hasattr(m, "le")))

    cap = upper(MqttProfile.model_fields["max_payload_bytes"])
    assert cap * 16 <= MESSAGE_SIZE_LIMIT < 268_435_455  # an oversize payload is the gateway's to dead-letter
    # whatever bound the gateway is given (pipeline.max_payload_bytes), a test can send past it
    assert upper(type(GatewaySettings().pipeline).model_fields["max_payload_bytes"]) <= MESSAGE_SIZE_LIMIT
    assert f"message_size_limit {MESSAGE_SIZE_LIMIT}" in Mosquitto(Path("/nonexistent")).config_text()


def test_test_broker_refuses_a_message_over_its_bound_and_goes_on(tmp_path: Path, clients: list[Client]) -> None:
    with Mosquitto(tmp_path / "broker", message_size_limit=4096) as broker:
        sub = Client(broker.port)
        pub = Client(broker.port)
        clients += [sub, pub]
        assert sub.subscribe("t/#") == 1
        assert publish_raw(broker.port, "t/big", b"x" * 4097) >= 0x80  # MQTT 5: a failure reason code
        assert pub.publish("t/big", b"y" * 4096) == 0
        sub.wait_message("t/big", b"y" * 4096)
        assert sub.got("t/big") == [b"y" * 4096]
        # an MQTT 3.1.1 publisher is acknowledged and the message dropped: the broker stays up all the same
        old = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv311)
        old.connect("127.0.0.1", broker.port)
        old.loop_start()
        try:
            old.publish("t/old", b"z" * 10_000, qos=1).wait_for_publish(10)
            old.publish("t/old", b"ok", qos=1).wait_for_publish(10)
        finally:
            old.disconnect()
            old.loop_stop()
        sub.wait_message("t/old", b"ok")
        assert sub.got("t/old") == [b"ok"]
        assert broker.proc is not None and broker.proc.poll() is None
        wait_for(lambda: pub.publish("t/after", b"1") == 0, 5, "the broker still accepting")


def test_build_context_excludes_secrets_and_keeps_what_the_image_copies() -> None:
    ignored = [
        ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    for secret in ("docker/.env", "docker/api-tokens.txt", "docker/mosquitto/users.passwd", ".git", ".venv"):
        assert secret in ignored, secret
    copied = re.findall(r"^COPY (.+) \S+$", (ROOT / "docker" / "Dockerfile").read_text(), re.M)
    for src in " ".join(copied).split():
        assert not any(src == ig or src.startswith(ig.rstrip("/") + "/") for ig in ignored), src
        assert (ROOT / src).exists(), src
