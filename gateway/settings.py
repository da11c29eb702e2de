"""GatewaySettings: one YAML file < environment ``FIREGW_<SECTION>__<KEY>`` < CLI flags.

The defaults run on one machine with no remote services (design.md §5). Two top-level keys
have short environment names the operators use: ``FIREGW_INVENTORY`` and ``FIREGW_PROFILES_DIR``.
A nested key takes one ``__`` per level: ``FIREGW_MQTT__TLS__CA_FILE``.

Every section that connects somewhere (``mqtt``, ``events_mqtt``, ``webhook``, ``influx``) has the
same ``tls`` block (:class:`TlsSettings`). The flat keys of earlier versions are still read and
mapped into it, in the file and in the environment alike: ``ca_file``, ``cert_file`` and
``key_file`` as they are, ``verify_tls`` as ``tls.verify``, ``tls_insecure`` as the opposite of
``tls.check_hostname``. Each layer (file, environment, flags) is mapped on its own before the
layers are merged, so a later layer wins whichever spelling either uses; within one layer the two
spellings of one key must agree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from gateway.errors import ConfigError

__all__ = [
    "ApiSettings",
    "ApiToken",
    "EventsMqttSettings",
    "GatewaySettings",
    "InfluxSettings",
    "MqttSettings",
    "PipelineSettings",
    "StoreSettings",
    "TlsSettings",
    "WebhookSettings",
    "load_settings",
]

ENV_PREFIX = "FIREGW_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsSettings(_Section):
    """How a client checks the server it connects to, and how it proves who it is: one shape for
    every section that connects somewhere. TLS itself is chosen by the URL (``mqtts://``,
    ``https://``; for MQTT also by a ``ca_file``)."""

    ca_file: Path | None = Field(
        default=None,
        description="CA certificates (PEM) that sign the server's "
        "certificate; unset: the system's CAs and certifi's bundle",
    )
    cert_file: Path | None = Field(default=None, description="client certificate (PEM), for mutual TLS")
    key_file: Path | None = Field(default=None, description="its private key (PEM); unset: in cert_file")
    verify: bool = Field(default=True, description="check the server's certificate at all (never false in production)")
    check_hostname: bool = Field(
        default=True,
        description="check that the certificate names the host; false: "
        "any certificate the CA signed (never in production)",
    )

    @model_validator(mode="after")
    def _key_needs_cert(self) -> TlsSettings:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file is set but cert_file is not: give the client certificate too")
        return self


_BOOL = TypeAdapter(bool)
_PATH = TypeAdapter(Path | None)
#: The flat TLS keys of earlier versions: old key -> (key in ``tls``, whether the value is negated).
_FLAT_TLS: dict[str, tuple[str, bool]] = {
    "ca_file": ("ca_file", False),
    "cert_file": ("cert_file", False),
    "key_file": ("key_file", False),
    "verify_tls": ("verify", False),
    "tls_insecure": ("check_hostname", True),
}
#: The sections that connect somewhere (each has a ``tls`` block).
_CONNECTING = ("mqtt", "events_mqtt", "webhook", "influx")


def _nest_tls(section: str, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (one section, as given) with its flat TLS keys moved into ``tls``; ValueError when
    one key is given both ways with different values in the same place."""
    flat = [k for k in _FLAT_TLS if k in data]
    if not flat:
        return data
    out = {k: v for k, v in data.items() if k not in _FLAT_TLS}
    given = out.get("tls")
    if isinstance(given, TlsSettings):
        given = given.model_dump(exclude_unset=True)
    if given is not None and not isinstance(given, dict):
        return data  # the model reports the bad tls value itself
    tls = dict(given or {})
    for old in flat:
        new, negated = _FLAT_TLS[old]
        value = data[old]
        if negated:
            try:
                value = not _BOOL.validate_python(value)
            except ValidationError:
                raise ValueError(f"{section}.{old}: expected true or false, got {value!r}") from None
        if new in tls and not _same(new, tls[new], value):
            raise ValueError(
                f"{section}.{old} and {section}.tls.{new} are both given and differ: keep {section}.tls.{new}"
            )
        tls[new] = value
    out["tls"] = tls
    return out


def _same(key: str, a: Any, b: Any) -> bool:
    """Whether two spellings of one TLS value agree (``"true"`` and ``True``, a str and a Path)."""
    adapter = _BOOL if key in ("verify", "check_hostname") else _PATH
    try:
        return bool(adapter.validate_python(a) == adapter.validate_python(b))
    except ValidationError:
        return False


class _Connecting(_Section):
    """A section that connects somewhere: a ``tls`` block, and the old flat keys mapped into it."""

    section: ClassVar[str]
    tls: TlsSettings = TlsSettings()

    @model_validator(mode="before")
    @classmethod
    def _flat_tls_keys(cls, data: Any) -> Any:
        return _nest_tls(cls.section, data) if isinstance(data, dict) else data


class MqttSettings(_Connecting):
    """The MQTT source. QoS 1 with a persistent session: the broker keeps what the gateway has not
    acknowledged, and the gateway acknowledges only what it has committed."""

    section = "mqtt"
    enabled: bool = True
    url: str = "mqtt://127.0.0.1:1883"
    client_id: str = "firegw"
    protocol: Literal["5", "3.1.1"] = "5"
    username: str | None = None
    password: str | None = None
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
    def secure(self) -> bool:
        """TLS: an ``mqtts://`` URL, or a CA file given."""
        return urlsplit(self.url).scheme in ("mqtts", "ssl") or self.tls.ca_file is not None

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (8883 if self.secure else 1883)


class ApiToken(_Section):
    """One bearer token: give ``sha256`` (hex of the token's SHA-256) or, for tests and demos, ``token``."""

    name: str = Field(min_length=1, description="who uses it; recorded as the actor of their actions")
    role: Literal["viewer", "operator", "admin"]
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    token: str | None = Field(default=None, min_length=16, description="plain token; hashed at load, never kept")

    @model_validator(mode="after")
    def _one(self) -> ApiToken:
        if (self.sha256 is None) == (self.token is None):
            raise ValueError("give exactly one of sha256 or token")
        return self

    @property
    def digest(self) -> str:
        import hashlib

        return self.sha256 or hashlib.sha256((self.token or "").encode()).hexdigest()


class StoreSettings(_Section):
    path: Path = Path("./var/firegw.db")
    synchronous: Literal["normal", "full"] = Field(
        default="full", description="full: a commit survives power loss; normal: survives a process crash"
    )
    retention_days: float = Field(default=30.0, gt=0, description="keep readings this long")
    dedup_days: float = Field(default=7.0, gt=0, description="remember message ids this long")
    dead_letter_days: float = Field(default=30.0, gt=0)
    dead_letter_max_mb: float = Field(default=64.0, gt=0, description="bound on dead letters: the oldest go first")


class PipelineSettings(_Section):
    inbox_size: int = Field(default=20_000, ge=1, le=1_000_000, description="bounded inbox of the committer")
    max_batch: int = Field(
        default=5_000,
        ge=1,
        le=100_000,
        description="most messages in one bulk transaction (urgent ones go first, apart)",
    )
    tick_s: float = Field(default=1.0, gt=0, le=60)
    max_payload_bytes: int = Field(
        default=262_144,
        ge=1_024,
        le=16_777_216,
        description="a larger message is a dead letter (first 4 KiB kept), before decoding",
    )
    max_clock_skew_s: float = Field(
        default=300.0,
        gt=0,
        description="a device time further off is suspect; one further ahead never becomes the latest value",
    )


class ApiSettings(_Section):
    """The HTTP API and dashboard. With no tokens configured the API is open on loopback only."""

    enabled: bool = True
    listen: str = Field(default="127.0.0.1:8080", description="host:port")
    tokens: list[ApiToken] = Field(default_factory=list, description="bearer tokens, stored as SHA-256 hashes")
    cors_origins: list[str] = Field(default_factory=list, description="closed by default")
    max_body_bytes: int = Field(
        default=1_048_576, gt=0, description="checked after the token, before the body is read, chunked bodies included"
    )
    max_connections: int = Field(default=256, ge=8, le=65_536, description="more are closed at once")
    header_timeout_s: float = Field(default=10.0, gt=0, description="a request head must arrive within this")
    keepalive_s: float = Field(default=5.0, gt=0, description="idle keep-alive connections are closed after this")
    max_streams_per_token: int = Field(default=4, ge=1, description="live streams (/api/v1/stream) per token")
    docs: bool = Field(default=False, description="serve /docs (Swagger UI loads its assets from a CDN)")
    dry_run_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="a profile dry run taking longer is stopped (it runs in a worker process) and answered 422",
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, got {v!r}")
        return v

    @model_validator(mode="after")
    def _secure_by_default(self) -> ApiSettings:
        if self.enabled and not self.tokens and not _loopback(self.host):
            raise ValueError(
                f"listen: {self.listen} is not a loopback address and api.tokens is empty: with no "
                "tokens the API serves anyone who can reach it. Configure api.tokens "
                "(FIREGW_API__TOKENS) or listen on 127.0.0.1"
            )
        return self

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


def _loopback(host: str) -> bool:
    import ipaddress

    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebhookSettings(_Connecting):
    """Delivery of fire-event and hazard transitions to the grid workflow over HTTPS."""

    section = "webhook"
    url: str | None = Field(default=None, description="unset: no webhook destination")
    secret: str | None = Field(default=None, description="HMAC-SHA256 key; required with url")
    timeout_s: float = Field(default=5.0, gt=0)
    backoff_min_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)
    concurrency: int = Field(default=8, ge=1, le=256, description="subjects delivered in parallel")

    @model_validator(mode="after")
    def _secret(self) -> WebhookSettings:
        if self.url and not self.secret:
            raise ValueError("webhook.secret is required when webhook.url is set")
        return self


class EventsMqttSettings(_Connecting):
    """Fire events, hazards and site codes published over MQTT (QoS 1; the code topic retained).

    With no ``url`` it publishes to ``mqtt.url``, and then, while its ``tls`` is left at the
    defaults, with ``mqtt.tls``."""

    section = "events_mqtt"
    enabled: bool = False
    url: str | None = Field(default=None, description="defaults to mqtt.url")
    client_id: str = "firegw-events"
    username: str | None = None
    password: str | None = None
    topic_events: str = "grid/{town}/{site}/events"
    topic_hazards: str = "grid/{town}/{site}/hazards"
    topic_code: str = "grid/{town}/{site}/code"


class InfluxSettings(_Connecting):
    """Forwarding of readings to InfluxDB (2.x/3.x API, or 1.x /write) with store-and-forward."""

    section = "influx"
    url: str | None = Field(default=None, description="unset: no time-series sink")
    api: Literal["v2", "v1"] = "v2"
    token: str | None = None
    org: str | None = None
    bucket: str = Field(default="firegw", description="for api v1: the database name")
    username: str | None = None
    password: str | None = None
    batch_size: int = Field(default=5_000, ge=1, le=100_000)
    flush_interval_s: float = Field(default=1.0, gt=0)
    gzip: bool = True
    timeout_s: float = Field(default=10.0, gt=0)
    max_backlog_mb: float = Field(
        default=2_048.0, gt=0, description="disk bound: beyond it the oldest bulk readings are evicted"
    )
    resend_window_s: float = Field(
        default=60.0,
        ge=0,
        le=86_400,
        description="when the database restarted, re-send what it had confirmed this "
        "long before (it may have lost it); 0: off",
    )


class GatewaySettings(_Section):
    profiles_dir: Path = Path("device_profiles")
    inventory: Path | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    mqtt: MqttSettings = MqttSettings()
    store: StoreSettings = StoreSettings()
    pipeline: PipelineSettings = PipelineSettings()
    api: ApiSettings = ApiSettings()
    webhook: WebhookSettings = WebhookSettings()
    events_mqtt: EventsMqttSettings = EventsMqttSettings()
    influx: InfluxSettings = InfluxSettings()


_TOP_LEVEL_ENV = {
    "FIREGW_INVENTORY": "inventory",
    "FIREGW_PROFILES_DIR": "profiles_dir",
    "FIREGW_LOG_LEVEL": "log_level",
}


def _env_value(key: str, value: str) -> Any:
    """A list or mapping setting (``api.tokens``, ``api.cors_origins``) is given as YAML/JSON text:
    ``FIREGW_API__TOKENS='[{name: duty, role: operator, sha256: ...}]'``. Scalars stay strings and are
    validated by their field."""
    text = value.strip()
    if not text.startswith(("[", "{")) or not _structured(key):
        return value
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"environment {key}: not valid YAML/JSON: {str(exc).splitlines()[0]}") from exc


def _structured(key: str) -> bool:
    """Whether ``FIREGW_<SECTION>__<KEY>`` names a list or mapping field (a password starting with
    ``[`` stays a string)."""
    import typing

    model: Any = GatewaySettings
    info = None
    for part in key[len(ENV_PREFIX) :].lower().split("__"):
        if not isinstance(model, type) or not issubclass(model, BaseModel):
            return False
        info = model.model_fields.get(part)
        if info is None:
            return False
        model = info.annotation
    return info is not None and typing.get_origin(info.annotation) in (list, dict)


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """The ``FIREGW_*`` variables as a nested mapping: one ``__`` per level."""
    out: dict[str, Any] = {}
    for key, value in env.items():
        if key in _TOP_LEVEL_ENV:
            out[_TOP_LEVEL_ENV[key]] = value
        elif key.startswith(ENV_PREFIX) and "__" in key:
            *parents, field = key[len(ENV_PREFIX) :].lower().split("__")
            node = out
            for part in parents:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):  # FIREGW_A__B=x beside FIREGW_A__B__C=y: the model says why
                    break
                node = child
            else:
                node[field] = _env_value(key, value)
    return out


def _nest_tls_keys(layer: dict[str, Any]) -> dict[str, Any]:
    """One layer (file, environment, flags) with the flat TLS keys of its sections mapped into ``tls``."""
    out = dict(layer)
    for section in _CONNECTING:
        if isinstance(out.get(section), dict):
            out[section] = _nest_tls(section, out[section])
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_settings(
    config: Path | None = None, env: Mapping[str, str] | None = None, overrides: dict[str, Any] | None = None
) -> GatewaySettings:
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
        except RecursionError:
            raise ConfigError(f"{config}: (file): nested too deeply") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{config}: (top): expected a mapping")
        data = loaded or {}
    try:  # each layer mapped on its own, so a later layer wins whichever spelling either uses
        data = _merge(_nest_tls_keys(data), _nest_tls_keys(_env_overrides(env)))
        if overrides:
            data = _merge(data, _nest_tls_keys(overrides))
    except ValueError as exc:
        raise ConfigError(f"{where} (or FIREGW_* environment): {exc}") from exc
    try:
        return GatewaySettings.model_validate(data)
    except ValidationError as exc:
        from gateway.profiles.loader import format_validation_error

        raise ConfigError(format_validation_error(where + " (or FIREGW_* environment)", exc)) from exc
