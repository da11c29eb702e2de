"""InfluxDB sink: readings as line protocol, written over the v2 API or the v1 ``/write`` endpoint.

This module is the only one that touches ``influxdb-client`` (``api: v2``: InfluxDB 2.x/3.x and
servers that speak its write API, such as VictoriaMetrics) and the HTTP client used for InfluxDB
1.x (``api: v1``, ``POST /write?db=<bucket>&precision=ms``). Their exceptions never leave it.

The schema (one line per reading; it never changes type, so the database never rejects a write
for a type change)::

    <kind>,device=<id>,domain=<d>,grid_cell=<g>,metric=<point>,profile=<p>,site=<s>,town=<t> \\
        <value field>=<v>,quality=<code>i,received_at=<ms>i <device time ms>

- measurement: the profile's device ``kind`` (``alarm_button``, ``fire_pump_cabinet``, ...);
  ``unknown_device`` for a device no longer in the inventory;
- tags (sorted keys, escaped; empty values left out): ``device``, ``domain``, ``grid_cell``,
  ``metric``, ``profile``, ``site``, ``town``;
- the value field is chosen by the point's declared ``type``, never by the value: InfluxDB fixes
  a field's type per *measurement* (not per series), and one measurement holds float points
  (pressure) next to integer ones (pump mode codes), so each type has its own field name:

  ========  ==============  =====================================================================
  type      field           encoding
  ========  ==============  =====================================================================
  float     ``value``       float (``0.45``)
  int       ``value_int``   integer (``2i``); enumerations are their integer codes
  bool      ``value_int``   integer ``1i``/``0i`` (VictoriaMetrics stores every value as a number,
                            so bools are 1/0 there anyway; one encoding for every server)
  str       ``value_str``   string (``"text"``); VictoriaMetrics stores strings as 0
  ========  ==============  =====================================================================

- ``quality``: an integer code (VictoriaMetrics stores strings as 0), see :data:`QUALITY_CODES`:
  0 good, 1 suspect, 2 replayed, 3 substituted, 4 missing, 9 anything else;
- ``received_at``: the gateway's receive time, epoch milliseconds (integer);
- the point time is the device time in milliseconds.

A point is identified by measurement, tag set and time, and a reading is unique in the store on
(device, metric, device time): writing a reading twice overwrites it with the same values. That
is what makes the forwarder's at-least-once delivery exactly-once in the database (InfluxDB
overwrites; VictoriaMetrics needs ``-dedup.minScrapeInterval=1ms``, without it it keeps both
copies of a re-sent sample).

Errors (Telegraf's retryable / partial classification, :func:`gateway.retry.classify_http`):

- retryable: connection errors, timeouts, 5xx, 408, 425, 429 (``Retry-After`` honoured), and
  1xx/3xx/401/403/404 (URL, credentials or database wrong: an operator must act, and nothing is
  thrown away meanwhile) → :class:`~gateway.errors.SinkUnavailable`;
- rejected: other 4xx (400 bad line, field type conflict, 413, 422): the batch is bisected until
  the offending lines are found; they are returned as :class:`RejectedLines` (the forwarder
  dead-letters them) and every other line is written. InfluxDB 1.x writes the good points of a
  400 "partial write" already; re-sending them while bisecting is harmless (idempotent).

**Who answered** (:meth:`InfluxSink.instance`): the database's identity, its start time as it
reports it, so the forwarder can tell that it restarted (and may have lost what it acknowledged
last: VictoriaMetrics keeps its newest points in memory for a second or so, InfluxDB's WAL may
be synced late). Tried in this order, the first that answers is remembered:

- ``GET /debug/vars``, ``"system": {"started": ...}`` (InfluxDB 1.x; first for ``api: v1``);
- ``GET /ready``, ``{"started": ...}`` (InfluxDB 2.x; first for ``api: v2``);
- ``GET /metrics``, ``process_start_time_seconds`` or ``vm_app_start_timestamp`` (VictoriaMetrics,
  and InfluxDB 2.x again).

An endpoint that is missing, refuses the credentials or reports no start time gives an
:class:`Instance` without identity (the reason in ``detail``); an unreachable server raises
:class:`~gateway.errors.SinkUnavailable`.

VictoriaMetrics answers 204 even for lines it cannot parse or points outside its retention or more
than about two days in the future: such points are dropped by the server without a word.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import math
import ssl
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.errors import ConfigError, SinkUnavailable
from gateway.profiles.loader import Catalog
from gateway.retry import HttpClass, classify_http, retry_after
from gateway.settings import InfluxSettings
from gateway.tls import client_context

__all__ = ["QUALITY_CODES", "InfluxSink", "Instance", "LineEncoder", "RejectedLines", "Row", "sql_line"]

logger = logging.getLogger(__name__)

#: Quality as an integer field (VictoriaMetrics cannot store strings).
QUALITY_CODES: dict[str, int] = {"good": 0, "suspect": 1, "replayed": 2, "substituted": 3, "missing": 4}
QUALITY_OTHER = 9
UNKNOWN_MEASUREMENT = "unknown_device"
GZIP_LEVEL = 1  # level 1 is ~3x faster than the library's level 9 for ~25% more bytes on loopback/LAN
MAX_ENCODER_CACHE = 200_000  # (device, metric, site) tag prefixes kept; cleared when exceeded
PROBE_TIMEOUT_S = 5.0  # an identity probe waits at most this long (or influx.timeout_s when shorter)
PROBE_MAX_BYTES = 4 * 1024 * 1024  # an identity endpoint's answer is read at most this far
#: Prometheus metrics that carry the process start time (the first one present is the identity).
START_METRICS = ("process_start_time_seconds", "vm_app_start_timestamp")

#: A reading row as the forwarder reads it:
#: (seq, device_id, metric, ts_ms, value, quality, received_at_ms, site_id, urgent).
Row = tuple[int, str, str, int, Any, str, int, str, int]

_FLOAT, _INT, _STR = 0, 1, 2
_FIELD = {_FLOAT: "value", _INT: "value_int", _STR: "value_str"}
_TYPE_KIND = {"float": _FLOAT, "int": _INT, "bool": _INT, "str": _STR}

_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\\": "\\\\", "\n": " ", "\r": " ", "\t": " "})
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\\": "\\\\", "\n": " ", "\r": " ", "\t": " "})
_STRING_ESCAPES = str.maketrans({'"': r"\"", "\\": "\\\\", "\n": r"\n", "\r": r"\r"})


def escape_tag(text: str) -> str:
    """Escape a tag key or value (commas, equals signs, spaces, backslashes; newlines become spaces)."""
    return text.translate(_TAG_ESCAPES)


def escape_measurement(text: str) -> str:
    return text.translate(_MEASUREMENT_ESCAPES)


def escape_string_field(text: str) -> str:
    return '"' + text.translate(_STRING_ESCAPES) + '"'


class LineEncoder:
    """Turns reading rows into line protocol; tag prefixes are built once per (device, metric, site)."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._cache: dict[tuple[str, str, str], tuple[str, int]] = {}

    def _prefix(self, device_id: str, metric: str, site_id: str, value: Any) -> tuple[str, int]:
        cat = self._catalog
        dev = cat.devices.get(device_id)
        profile = cat.profiles.get(dev.profile) if dev is not None else None
        point = profile.point(metric) if profile is not None else None
        site = cat.sites.get(site_id or (dev.site_id if dev is not None else ""))
        if point is not None:
            kind = _TYPE_KIND[point.type]
        else:  # not (or no longer) in the catalog: go by the stored value's type
            kind = _STR if isinstance(value, str) else _FLOAT if isinstance(value, float) else _INT
        tags = {
            "device": device_id,
            "metric": metric,
            "site": site_id,
            "profile": dev.profile if dev is not None else "",
            "town": site.town if site is not None else "",
            "grid_cell": site.grid_cell if site is not None else "",
            "domain": site.domain if site is not None else "",
        }
        measurement = escape_measurement(profile.kind if profile is not None else UNKNOWN_MEASUREMENT)
        tagset = ",".join(f"{k}={escape_tag(v)}" for k, v in sorted(tags.items()) if v)
        return f"{measurement},{tagset} {_FIELD[kind]}=", kind

    def prefixes(self) -> Iterator[tuple[str, str, str, str, int]]:
        """(device_id, metric, site_id, prefix, field kind) of every point in the catalog, for :func:`sql_line`."""
        for dev in self._catalog.inventory.devices:
            profile = self._catalog.profiles.get(dev.profile)
            if profile is None:
                continue
            for point in profile.points:
                prefix, kind = self._prefix(dev.device_id, point.name, dev.site_id, None)
                yield dev.device_id, point.name, dev.site_id, prefix, kind

    def encode(self, row: Row) -> str:
        """One line; raises ValueError for a value the schema cannot carry (NaN, infinity)."""
        _seq, device_id, metric, ts, value, quality, received_at, site_id, _urgent = row
        key = (device_id, metric, site_id)
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) >= MAX_ENCODER_CACHE:
                self._cache.clear()
            hit = self._cache[key] = self._prefix(device_id, metric, site_id, value)
        prefix, kind = hit
        if kind == _FLOAT:
            f = float(value)
            if not math.isfinite(f):
                raise ValueError(f"value {f!r} cannot be written to a time-series database")
            v = repr(f)
        elif kind == _INT:
            v = f"{int(value)}i"
        else:
            v = escape_string_field(str(value))
        return f"{prefix}{v},quality={QUALITY_CODES.get(quality, QUALITY_OTHER)}i,received_at={received_at}i {ts}"


def sql_line(reading: str, tags: str) -> str:
    """A SQL expression building the same line as :meth:`LineEncoder.encode`, inside SQLite.

    ``reading`` is the alias of the ``readings`` table, ``tags`` of a table filled from
    :meth:`LineEncoder.prefixes` (``device_id, metric, site_id, prefix, kind``) joined on
    (device, metric, site). The expression is NULL whenever Python must encode the row itself (no
    prefix, a string point, a value that is not a finite number): the forwarder then falls back to
    :meth:`LineEncoder.encode`. Building lines in SQLite keeps the hot loop in C and off the GIL;
    ``printf('%!.17g')`` prints 17 significant digits, which give back the same 64-bit float.
    """
    r, t = reading, tags
    quality = " ".join(f"WHEN '{k}' THEN {v}" for k, v in QUALITY_CODES.items())
    number = f"typeof({r}.value) IN ('integer', 'real')"
    return (
        f"CASE WHEN {t}.kind = {_FLOAT} AND {number} AND abs({r}.value) <= 1.7976931348623157e308 "
        f"THEN {t}.prefix || printf('%!.17g', {r}.value) "
        f"WHEN {t}.kind = {_INT} AND {number} THEN {t}.prefix || CAST({r}.value AS INTEGER) || 'i' END "
        f"|| ',quality=' || CASE {r}.quality {quality} ELSE {QUALITY_OTHER} END "
        f"|| 'i,received_at=' || {r}.received_at || 'i ' || {r}.ts"
    )


@dataclass(frozen=True, slots=True)
class RejectedLines:
    """A line the database refused (a 4xx for that line alone), with the server's reason."""

    index: int
    line: str
    reason: str


@dataclass(frozen=True, slots=True)
class Instance:
    """The running database as its own endpoint describes it.

    ``identity`` changes when the database restarts (its start time, e.g.
    ``GET /metrics process_start_time_seconds=1764400000``); None when no endpoint reports one,
    with the reason in ``detail``.
    """

    identity: str | None
    detail: str


class _NotHere(Exception):
    """This endpoint does not tell the start time (missing, refused, or no such field)."""


class _Prober:
    """Reads the database's start time over plain HTTP (``httpx``), whatever API the writes use."""

    def __init__(self, s: InfluxSettings, name: str) -> None:
        import httpx

        self._name = name
        headers = {"Authorization": f"Token {s.token}"} if s.token else {}
        auth = (s.username, s.password or "") if s.username else None
        self._client = httpx.Client(
            base_url=(s.url or "").rstrip("/"),
            headers=headers,
            auth=auth,
            timeout=min(s.timeout_s, PROBE_TIMEOUT_S),
            verify=_verify(s),
        )
        methods = [self._debug_vars, self._ready, self._metrics]
        if s.api == "v2":
            methods = [self._ready, self._metrics, self._debug_vars]
        self._methods = methods
        self._known: int | None = None  # index of the method that answered last

    def instance(self) -> Instance:
        import httpx

        order = list(range(len(self._methods)))
        if self._known is not None:
            order.remove(self._known)
            order.insert(0, self._known)
        tried: list[str] = []
        for i in order:
            try:
                identity = self._methods[i]()
            except _NotHere as exc:
                tried.append(str(exc))
                continue
            except httpx.HTTPError as exc:
                raise SinkUnavailable(
                    f"identity probe: cannot reach the database: {type(exc).__name__}: {exc}", sink=self._name
                ) from exc
            except OSError as exc:
                raise SinkUnavailable(f"identity probe: cannot reach the database: {exc}", sink=self._name) from exc
            except SinkUnavailable:
                raise
            except Exception as exc:  # an answer it cannot read: this endpoint does not tell, try the next
                tried.append(f"{type(exc).__name__}: {exc}")
                continue
            self._known = i
            return Instance(identity, "")
        self._known = None
        return Instance(None, "; ".join(tried))

    def _lines(self, path: str) -> Generator[str, None, None]:
        """The answer's lines, read as they come (stop early by leaving the loop); _NotHere unless 200."""
        with self._client.stream("GET", path) as resp:
            if classify_http(resp.status_code) is HttpClass.RETRY:
                raise SinkUnavailable(f"identity probe: GET {path}: HTTP {resp.status_code}", sink=self._name)
            if resp.status_code != 200:
                raise _NotHere(f"GET {path}: HTTP {resp.status_code}")
            seen = 0
            for line in resp.iter_lines():
                seen += len(line) + 1
                if seen > PROBE_MAX_BYTES:
                    raise _NotHere(f"GET {path}: no start time in its first {PROBE_MAX_BYTES} bytes")
                yield line

    def _debug_vars(self) -> str:
        """InfluxDB 1.x: expvar JSON whose first member is ``"system": {"started": ...}`` on a line of its own."""
        with contextlib.closing(self._lines("/debug/vars")) as lines:
            for n, line in enumerate(lines):
                text = line.strip().rstrip(",")
                if text.startswith('"system":'):
                    started = _json_field(text[len('"system":') :], "started")
                    if started:
                        return f"GET /debug/vars system.started={started}"
                    break
                if n > 3:  # expvar puts "system" first: this is not InfluxDB 1.x
                    break
        raise _NotHere("GET /debug/vars: no system.started")

    def _ready(self) -> str:
        """InfluxDB 2.x: ``{"status": "ready", "started": "...", "up": "..."}``."""
        text = "".join(self._lines("/ready"))
        started = _json_field(text, "started")
        if not started:
            raise _NotHere("GET /ready: no started")
        return f"GET /ready started={started}"

    def _metrics(self) -> str:
        """Prometheus text: the process start time (VictoriaMetrics, InfluxDB 2.x)."""
        found: dict[str, str] = {}
        with contextlib.closing(self._lines("/metrics")) as lines:
            for line in lines:
                name, _, value = line.partition(" ")
                if name in START_METRICS:
                    found[name] = value.strip()
                    if name == START_METRICS[0]:
                        break
        for name in START_METRICS:
            if name in found:
                return f"GET /metrics {name}={found[name]}"
        raise _NotHere(f"GET /metrics: none of {', '.join(START_METRICS)}")

    def close(self) -> None:
        self._client.close()


def _json_field(text: str, key: str) -> str | None:
    """``key`` of a JSON object as text, or None (not JSON, not an object, no such key)."""
    import json

    try:
        obj = json.loads(text)
    except ValueError:
        return None
    value = obj.get(key) if isinstance(obj, dict) else None
    return str(value) if value not in (None, "") else None


class _Transport(Protocol):
    def post(self, body: bytes, gzipped: bool) -> tuple[int, str, str | None]:
        """Send one body; returns (status, response text, Retry-After header). Raises SinkUnavailable."""
        ...

    def close(self) -> None: ...


class _V2Transport:
    """``influxdb-client``'s write service (``POST /api/v2/write``), compression done by us."""

    def __init__(self, s: InfluxSettings, name: str) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.service.write_service import WriteService

        token = s.token or (f"{s.username}:{s.password or ''}" if s.username else "")
        self._name = name
        self._org = s.org or ""
        self._bucket = s.bucket
        ctx = _verify(s)
        self._client = InfluxDBClient(
            url=s.url or "",
            token=token,
            org=self._org,
            timeout=int(s.timeout_s * 1000),
            enable_gzip=False,
            verify_ssl=s.tls.verify,
            ssl_context=ctx if isinstance(ctx, ssl.SSLContext) else None,
        )
        if not (s.tls.verify and s.tls.check_hostname):  # urllib3 checks the name itself unless told not to
            self._client.api_client.rest_client.pool_manager.connection_pool_kw["assert_hostname"] = False
        self._service = WriteService(self._client.api_client)  # type: ignore[no-untyped-call]

    def post(self, body: bytes, gzipped: bool) -> tuple[int, str, str | None]:
        import urllib3
        from influxdb_client.rest import ApiException

        kwargs: dict[str, Any] = {"content_encoding": "gzip"} if gzipped else {}
        try:
            self._service.post_write(
                org=self._org,
                bucket=self._bucket,
                body=body,
                precision="ms",
                content_type="text/plain; charset=utf-8",
                **kwargs,
            )  # type: ignore[no-untyped-call]
        except ApiException as exc:
            headers: Any = exc.headers or {}
            raw = exc.body
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw or exc.reason or "")
            return int(exc.status or 0), text, headers.get("Retry-After")
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise SinkUnavailable(f"cannot reach the database: {type(exc).__name__}: {exc}", sink=self._name) from exc
        except Exception as exc:  # the library's own errors never leave this module
            raise SinkUnavailable(f"write failed: {type(exc).__name__}: {exc}", sink=self._name) from exc
        return 204, "", None

    def close(self) -> None:
        try:
            self._client.close()  # type: ignore[no-untyped-call]
        except Exception:  # closing must not fail a shutdown
            logger.debug("%s: closing the influxdb client failed", self._name, exc_info=True)


class _V1Transport:
    """InfluxDB 1.x: ``POST /write?db=<bucket>&precision=ms`` over httpx."""

    def __init__(self, s: InfluxSettings, name: str) -> None:
        import httpx

        self._name = name
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if s.token:
            headers["Authorization"] = f"Token {s.token}"
        auth = (s.username, s.password or "") if s.username else None
        self._client = httpx.Client(
            base_url=(s.url or "").rstrip("/"), headers=headers, auth=auth, timeout=s.timeout_s, verify=_verify(s)
        )
        self._params = {"db": s.bucket, "precision": "ms"}

    def post(self, body: bytes, gzipped: bool) -> tuple[int, str, str | None]:
        import httpx

        headers = {"Content-Encoding": "gzip"} if gzipped else None
        try:
            resp = self._client.post("/write", params=self._params, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise SinkUnavailable(f"cannot reach the database: {type(exc).__name__}: {exc}", sink=self._name) from exc
        except OSError as exc:
            raise SinkUnavailable(f"cannot reach the database: {exc}", sink=self._name) from exc
        return resp.status_code, resp.text, resp.headers.get("Retry-After")

    def close(self) -> None:
        self._client.close()


def _verify(s: InfluxSettings) -> ssl.SSLContext | bool:
    """How the clients check the database: ``influx.tls`` for an https URL (reads its files)."""
    return client_context(s.tls, "influx") if (s.url or "").startswith("https://") else True


class InfluxSink:
    """One InfluxDB destination. ``write`` is blocking: call it from a worker thread.

    Construct (validates), ``open()`` (creates the HTTP client; no I/O yet), ``write(lines)`` any
    number of times, ``close()``.
    """

    def __init__(self, settings: InfluxSettings, *, name: str = "influx") -> None:
        if not settings.url:
            raise ConfigError("settings: influx.url: not set (no time-series sink configured)")
        if not settings.url.startswith(("http://", "https://")):
            raise ConfigError(f"settings: influx.url: expected http:// or https://, got {settings.url!r}")
        self.settings = settings
        self.name = name
        self._transport: _Transport | None = None
        self._prober: _Prober | None = None

    def open(self) -> InfluxSink:
        if self._transport is None:
            cls = _V2Transport if self.settings.api == "v2" else _V1Transport
            self._transport = cls(self.settings, self.name)
        return self

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._prober is not None:
            self._prober.close()
            self._prober = None

    def instance(self) -> Instance:
        """Who answers now (blocking); see the module docstring. Raises :class:`SinkUnavailable`
        when the database cannot be reached."""
        if self._prober is None:
            self._prober = _Prober(self.settings, self.name)
        return self._prober.instance()

    def __enter__(self) -> InfluxSink:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, lines: Sequence[str]) -> list[RejectedLines]:
        """Write ``lines``; returns the lines the database rejected (everything else is written).

        Raises :class:`SinkUnavailable` when the database cannot take data now; nothing of the
        batch should then be considered written.
        """
        rejected: list[RejectedLines] = []
        if lines:
            self._write_range(lines, 0, len(lines), rejected)
        return rejected

    def _write_range(self, lines: Sequence[str], lo: int, hi: int, out: list[RejectedLines]) -> None:
        reason = self._post(lines[lo:hi])
        if reason is None:
            return
        if hi - lo == 1:
            out.append(RejectedLines(lo, lines[lo], reason))
            return
        mid = (lo + hi) // 2
        self._write_range(lines, lo, mid, out)
        self._write_range(lines, mid, hi, out)

    def _post(self, lines: Sequence[str]) -> str | None:
        """None when written; the rejection reason for a 4xx about the data; raises when retryable."""
        transport = self.open()._transport
        assert transport is not None
        body = "\n".join(lines).encode("utf-8")
        gz = self.settings.gzip
        if gz:
            body = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
        status, text, wait = transport.post(body, gz)
        kind = classify_http(status)
        if kind is HttpClass.OK:
            return None
        text = text.strip()[:500]
        if kind is HttpClass.RETRY:
            raise SinkUnavailable(f"HTTP {status}: {text}", sink=self.name, retry_after=retry_after(wait))
        if kind is HttpClass.REJECT:
            return f"HTTP {status}: {text}"
        if status in (401, 403):  # HttpClass.FIX from here: an operator must act, nothing is thrown away
            raise SinkUnavailable(
                f"HTTP {status}: credentials refused (check influx.token/username): {text}",
                sink=self.name,
                retry_after=retry_after(wait),
            )
        if status == 404:
            raise SinkUnavailable(
                f"HTTP 404: no such database/bucket {self.settings.bucket!r} or endpoint: {text}", sink=self.name
            )
        raise SinkUnavailable(f"unexpected answer HTTP {status}: {text}", sink=self.name)
