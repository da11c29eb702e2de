"""GatewaySettings: one YAML file < environment ``FIREGW_<SECTION>__<KEY>`` < CLI flags.

The defaults run on one machine with no remote services (design.md §5). Two top-level keys
have short environment names the operators use: ``FIREGW_INVENTORY`` and ``FIREGW_PROFILES_DIR``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.errors import ConfigError

__all__ = ["GatewaySettings", "MqttSettings", "PipelineSettings", "StoreSettings", "load_settings"]

ENV_PREFIX = "FIREGW_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttSettings(_Section):
    """The MQTT source. QoS 1 with a persistent session: the broker keeps what the gateway has not
    acknowledged, and the gateway acknowledges only what it has committed."""

    enabled: bool = True
    url: str = "mqtt://127.0.0.1:1883"
    client_id: str = "firegw"
    protocol: Literal["5", "3.1.1"] = "5"
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = Field(default=False, description="skip hostname verification (never in production)")
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    session_expiry_s: int = Field(default=7 * 86_400, ge=0)
    receive_maximum: int = Field(default=2_000, ge=1, le=65_535)
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"scheme must be mqtt:// or mqtts://, got {v!r}")
        if not parts.hostname:
            raise ValueError(f"no host in {v!r}")
        try:
            parts.port  # noqa: B018  (validates the port)
        except ValueError as exc:
            raise ValueError(f"bad port in {v!r}") from exc
        return v

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme in ("mqtts", "ssl") or self.ca_file is not None

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (8883 if self.tls else 1883)


class StoreSettings(_Section):
    path: Path = Path("./var/firegw.db")
    synchronous: Literal["normal", "full"] = Field(
        default="full", description="full: a commit survives power loss; normal: survives a process crash")
    retention_days: float = Field(default=30.0, gt=0, description="keep readings this long")
    dedup_days: float = Field(default=7.0, gt=0, description="remember message ids this long")
    dead_letter_days: float = Field(default=30.0, gt=0)


class PipelineSettings(_Section):
    inbox_size: int = Field(default=20_000, ge=1, le=1_000_000, description="bounded inbox of the committer")
    max_batch: int = Field(default=1_000, ge=1, le=100_000)
    tick_s: float = Field(default=1.0, gt=0, le=60)


class GatewaySettings(_Section):
    profiles_dir: Path = Path("device_profiles")
    inventory: Path | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    mqtt: MqttSettings = MqttSettings()
    store: StoreSettings = StoreSettings()
    pipeline: PipelineSettings = PipelineSettings()


_TOP_LEVEL_ENV = {"FIREGW_INVENTORY": "inventory", "FIREGW_PROFILES_DIR": "profiles_dir",
                  "FIREGW_LOG_LEVEL": "log_level"}


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in env.items():
        if key in _TOP_LEVEL_ENV:
            out[_TOP_LEVEL_ENV[key]] = value
        elif key.startswith(ENV_PREFIX) and "__" in key:
            section, _, field = key[len(ENV_PREFIX):].lower().partition("__")
            out.setdefault(section, {})[field] = value
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_settings(config: Path | None = None, env: Mapping[str, str] | None = None,
                  overrides: dict[str, Any] | None = None) -> GatewaySettings:
    """Read the config file (if any), then the environment, then ``overrides``; validate all."""
    env = os.environ if env is None else env
    if config is None and env.get("FIREGW_CONFIG"):
        config = Path(env["FIREGW_CONFIG"])
    data: dict[str, Any] = {}
    where = "settings"
    if config is not None:
        where = str(config)
        try:
            loaded = yaml.safe_load(config.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{config}: (file): cannot read: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{config}: (file): not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{config}: (top): expected a mapping")
        data = loaded or {}
    data = _merge(data, _env_overrides(env))
    if overrides:
        data = _merge(data, overrides)
    try:
        return GatewaySettings.model_validate(data)
    except ValidationError as exc:
        from gateway.profiles.loader import format_validation_error

        raise ConfigError(format_validation_error(where + " (or FIREGW_* environment)", exc)) from exc
