"""The retry toolkit (gateway/retry.py), the TLS settings shape and its old flat keys: pure tables."""

from __future__ import annotations

import email.utils
import logging
import random
import ssl
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError
from gateway.retry import RETRY_AFTER_MAX_S, Backoff, EdgeLog, HttpClass, classify_http, retry_after
from gateway.settings import GatewaySettings, TlsSettings, load_settings
from gateway.tls import client_context

NOW = 1_700_000_000.0

# ----------------------------------------------------------------------------- Backoff


@pytest.mark.parametrize(
    ("first", "cap", "failures", "expected"),
    [
        (0.5, 10.0, 1, 0.5),
        (0.5, 10.0, 2, 1.0),
        (0.5, 10.0, 5, 8.0),
        (0.5, 10.0, 6, 10.0),  # capped
        (0.5, 10.0, 10_000, 10.0),  # no overflow however long it fails
        (0.5, 10.0, 0, 0.5),  # "no failure yet" reads as the first
        (1.0, 30.0, 5, 16.0),  # Modbus devices: 1, 2, 4, 8, 16, 30
        (1.0, 30.0, 6, 30.0),
        (60.0, 30.0, 1, 30.0),  # a first delay above the cap: the cap wins
    ],
)
def test_backoff_schedule_without_jitter(first: float, cap: float, failures: int, expected: float) -> None:
    assert Backoff(first, cap, jitter=0.0).delay(failures) == expected


def test_backoff_next_counts_and_reset_starts_over() -> None:
    b = Backoff(0.5, 10.0, jitter=0.0)
    assert [b.next() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert b.failures == 7
    b.reset()
    assert (b.failures, b.next()) == (0, 0.5)


@pytest.mark.parametrize("failures", [1, 2, 3, 7, 8, 30])
def test_backoff_jitter_draws_within_half_to_full(failures: int) -> None:
    b = Backoff(0.5, 60.0, rng=random.Random(failures))
    base = min(60.0, 0.5 * 2 ** (failures - 1))
    draws = [b.delay(failures) for _ in range(200)]
    assert all(base / 2 <= d <= base for d in draws)
    assert max(draws) - min(draws) > base / 4  # it does spread


def test_backoff_is_deterministic_with_an_injected_random() -> None:
    a, b = Backoff(0.5, 60.0, rng=random.Random(7)), Backoff(0.5, 60.0, rng=random.Random(7))
    assert [a.next() for _ in range(10)] == [b.next() for _ in range(10)]


@pytest.mark.parametrize(
    ("retry_after_s", "cap", "expected"),
    [
        (5.0, RETRY_AFTER_MAX_S, 5.0),  # longer than the backoff: honoured
        (0.1, RETRY_AFTER_MAX_S, 0.5),  # shorter: the backoff stands
        (900.0, 300.0, 300.0),  # the forwarder's own cap on a server's wish
        (None, RETRY_AFTER_MAX_S, 0.5),
    ],
)
def test_backoff_honours_retry_after_up_to_its_cap(retry_after_s: float | None, cap: float, expected: float) -> None:
    assert Backoff(0.5, 60.0, jitter=0.0, retry_after_max_s=cap).delay(1, retry_after_s) == expected


def test_backoff_longest_is_drawn_at_the_cap() -> None:
    b = Backoff(0.5, 60.0, rng=random.Random(1))
    assert all(30.0 <= b.longest() <= 60.0 for _ in range(100))
    assert b.failures == 0  # asking does not count a failure


@pytest.mark.parametrize(
    ("first", "cap", "jitter"), [(0.0, 1.0, 0.5), (1.0, 0.0, 0.5), (1.0, 2.0, 1.5), (1.0, 2.0, -0.1)]
)
def test_backoff_refuses_nonsense(first: float, cap: float, jitter: float) -> None:
    with pytest.raises(ValueError):
        Backoff(first, cap, jitter=jitter)


def test_notify_backoff_delay_is_the_toolkit() -> None:
    from gateway.notify import backoff_delay

    assert backoff_delay(3, 0.5, 60.0, rng=random.Random(3)) == Backoff(0.5, 60.0, rng=random.Random(3)).delay(3)


# ----------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("3", 3.0),
        (" 3 ", 3.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("999999", RETRY_AFTER_MAX_S),  # bounded
        (email.utils.formatdate(NOW + 30, usegmt=True), 30.0),
        (email.utils.formatdate(NOW - 30, usegmt=True), 0.0),  # in the past: no wait
        (email.utils.formatdate(NOW + 86_400 * 9, usegmt=True), RETRY_AFTER_MAX_S),
        ("Tue, 14 Nov 2023 22:13:50", 30.0),  # no zone: read as GMT
        ("-5", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after(header: str | None, expected: float | None) -> None:
    assert retry_after(header, NOW) == expected


def test_retry_after_cap_and_clock() -> None:
    assert retry_after("600", NOW, cap=300.0) == 300.0
    assert 0 <= (retry_after(email.utils.formatdate(None, usegmt=True)) or 0.0) <= 1.0  # wall clock by default


def test_webhook_parse_retry_after_is_the_toolkit() -> None:
    from gateway.notify.webhook import parse_retry_after

    assert parse_retry_after is retry_after


# ----------------------------------------------------------------------------- HTTP classes


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, HttpClass.OK),
        (204, HttpClass.OK),
        (299, HttpClass.OK),
        (408, HttpClass.RETRY),
        (425, HttpClass.RETRY),
        (429, HttpClass.RETRY),
        (500, HttpClass.RETRY),
        (502, HttpClass.RETRY),
        (503, HttpClass.RETRY),
        (599, HttpClass.RETRY),
        (100, HttpClass.FIX),
        (301, HttpClass.FIX),
        (302, HttpClass.FIX),
        (401, HttpClass.FIX),
        (403, HttpClass.FIX),
        (404, HttpClass.FIX),
        (400, HttpClass.REJECT),
        (405, HttpClass.REJECT),
        (413, HttpClass.REJECT),
        (422, HttpClass.REJECT),
    ],
)
def test_classify_http(status: int, expected: HttpClass) -> None:
    assert classify_http(status) is expected


# ----------------------------------------------------------------------------- EdgeLog


def _lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "test.edge"]


def test_edge_log_logs_the_edges_and_debug_between(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="test.edge")
    edge = EdgeLog(logging.getLogger("test.edge"))
    got = [edge.failed("down: %s", n) for n in range(3)]
    assert got == [True, False, False] and edge.failing
    assert edge.recovered("up again") and not edge.recovered("up again")
    assert _lines(caplog) == [
        (logging.WARNING, "down: 0"),
        (logging.DEBUG, "down: 1"),
        (logging.DEBUG, "down: 2"),
        (logging.INFO, "up again"),
    ]


def test_edge_log_after_n_failures_in_a_row(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="test.edge")
    edge = EdgeLog(logging.getLogger("test.edge"), level=logging.ERROR, after=3)
    assert [edge.failed("x"), edge.failed("x")] == [False, False]
    assert not edge.recovered("never logged")  # a success before the third resets the streak
    assert [edge.failed("x"), edge.failed("x"), edge.failed("x"), edge.failed("x")] == [False, False, True, False]
    assert [lv for lv, _ in _lines(caplog)] == [logging.DEBUG] * 4 + [logging.ERROR, logging.DEBUG]


def test_stage_fail_and_ok_are_built_on_the_edge_log(caplog: pytest.LogCaptureFixture) -> None:
    from gateway.health import Stage

    caplog.set_level(logging.INFO, logger="gateway.health")
    st = Stage("committer")
    assert st.fail("disk full") and not st.fail("disk full")
    assert st.failing == "disk full"
    st.ok()
    st.ok()
    assert st.failing is None
    assert [r.getMessage() for r in caplog.records if r.name == "gateway.health"] == [
        "committer: disk full",
        "committer: recovered (was: disk full)",
    ]


# ----------------------------------------------------------------------------- one TLS shape


@pytest.mark.parametrize(
    ("section", "given", "expected"),
    [
        (
            "mqtt",
            {"ca_file": "ca.pem", "cert_file": "c.pem", "key_file": "k.pem"},
            {"ca_file": Path("ca.pem"), "cert_file": Path("c.pem"), "key_file": Path("k.pem")},
        ),
        ("mqtt", {"tls_insecure": True}, {"check_hostname": False}),
        ("mqtt", {"tls_insecure": "false"}, {"check_hostname": True}),
        ("webhook", {"verify_tls": False, "ca_file": "ca.pem"}, {"verify": False, "ca_file": Path("ca.pem")}),
        ("influx", {"verify_tls": "false"}, {"verify": False}),
        ("influx", {"ca_file": "ca.pem"}, {"ca_file": Path("ca.pem")}),  # new: influx takes a CA file
        (
            "events_mqtt",
            {"ca_file": "ca.pem", "cert_file": "c.pem"},
            {"ca_file": Path("ca.pem"), "cert_file": Path("c.pem")},
        ),  # new: a client cert
        ("webhook", {"tls": {"verify": False}}, {"verify": False}),
        ("mqtt", {"ca_file": "ca.pem", "tls": {"ca_file": "ca.pem"}}, {"ca_file": Path("ca.pem")}),  # both, agreeing
    ],
)
def test_flat_tls_keys_map_into_the_tls_block(section: str, given: dict[str, Any], expected: dict[str, Any]) -> None:
    data: dict[str, Any] = {section: given}
    if section == "webhook":
        data[section] |= {"url": "https://example.org/hook", "secret": "s"}
    tls = getattr(GatewaySettings.model_validate(data), section).tls
    assert tls == TlsSettings(**expected)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"mqtt": {"ca_file": "a.pem", "tls": {"ca_file": "b.pem"}}}, "mqtt.ca_file and mqtt.tls.ca_file"),
        ({"mqtt": {"tls_insecure": "maybe"}}, "mqtt.tls_insecure: expected true or false"),
        ({"influx": {"tls": {"key_file": "k.pem"}}}, "key_file is set but cert_file is not"),
        ({"influx": {"tls": {"verfy": False}}}, "verfy"),
    ],
)
def test_tls_settings_errors_name_the_key(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    import yaml

    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message):
        load_settings(path, env={})


def test_old_environment_names_still_work_and_a_later_layer_wins(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("mqtt:\n  ca_file: file.pem\nwebhook:\n  tls:\n    verify: true\n")
    s = load_settings(
        path,
        env={
            "FIREGW_MQTT__TLS__CA_FILE": "env.pem",
            "FIREGW_WEBHOOK__VERIFY_TLS": "false",
            "FIREGW_INFLUX__TLS__CHECK_HOSTNAME": "false",
            "FIREGW_EVENTS_MQTT__CERT_FILE": "c.pem",
        },
    )
    assert s.mqtt.tls.ca_file == Path("env.pem") and s.mqtt.secure  # a CA file means TLS, as before
    assert s.webhook.tls.verify is False and s.influx.tls.check_hostname is False
    assert s.events_mqtt.tls.cert_file == Path("c.pem")
    s = load_settings(path, env={}, overrides={"mqtt": {"ca_file": "flag.pem"}})
    assert s.mqtt.tls.ca_file == Path("flag.pem")


def test_every_connecting_section_has_the_same_tls_shape() -> None:
    s = GatewaySettings()
    assert {s.mqtt.tls, s.events_mqtt.tls, s.webhook.tls, s.influx.tls} == {TlsSettings()}


def test_events_publisher_uses_the_source_tls_on_the_source_broker() -> None:
    from gateway.health import Stage
    from gateway.notify.mqtt_out import MqttPublisher
    from tests.unit.test_rules import catalog

    async def no_summaries() -> list[dict[str, Any]]:
        return []

    def publisher(events: dict[str, Any]) -> MqttPublisher:
        data = {
            "mqtt": {"url": "mqtts://broker:8883", "tls": {"ca_file": "ca.pem", "cert_file": "c.pem"}},
            "events_mqtt": {"enabled": True, **events},
        }
        return MqttPublisher(
            GatewaySettings.model_validate(data), catalog([], []), stage=Stage("x"), summaries=no_summaries
        )

    same = publisher({})  # no url, no tls of its own: the source's broker, the source's TLS
    assert same._tls.cert_file == Path("c.pem") and same._secure and same._port == 8883
    # the defaults written out (docker/gateway.example.yaml does) still inherit
    assert publisher({"tls": TlsSettings().model_dump(mode="json")})._tls == same._tls
    assert publisher({"tls": {"verify": False}})._tls == TlsSettings(verify=False)
    assert publisher({"ca_file": "own.pem"})._tls == TlsSettings(ca_file=Path("own.pem"))  # the old key
    other = publisher({"url": "mqtt://elsewhere"})
    assert other._tls == TlsSettings() and not other._secure and other._port == 1883


# ----------------------------------------------------------------------------- the SSL context


def test_client_context_follows_the_settings() -> None:
    full = client_context(TlsSettings(), "webhook")
    assert full.verify_mode == ssl.CERT_REQUIRED and full.check_hostname and full.get_ca_certs()
    name_only = client_context(TlsSettings(check_hostname=False), "mqtt")
    assert name_only.verify_mode == ssl.CERT_REQUIRED and not name_only.check_hostname
    off = client_context(TlsSettings(verify=False), "influx")
    assert off.verify_mode == ssl.CERT_NONE and not off.check_hostname


@pytest.mark.parametrize(
    ("tls", "key"),
    [
        (TlsSettings(ca_file=Path("/nonexistent/ca.pem")), "ca_file"),
        (TlsSettings(cert_file=Path("/nonexistent/c.pem")), "cert_file"),
    ],
)
def test_client_context_names_the_file_it_cannot_load(tls: TlsSettings, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"settings: influx\.tls\.{key}: cannot load TLS files"):
        client_context(tls, "influx")
