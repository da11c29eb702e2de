"""Credentials never reach a log line, whoever logs them."""

from __future__ import annotations

import logging

import httpx
import pytest

from gateway.logs import RedactingFilter, redact


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("HTTP Request: POST https://grid:s3cret-pass@workflow.example/events", "s3cret-pass"),
        ("POST http://h/events?apikey=abcd1234efgh&x=1", "abcd1234efgh"),
        ("url=https://h/w?token=tok-98765&sig=zz9", "tok-98765"),
        ("Authorization: Bearer abcdefgh12345678", "abcdefgh12345678"),
        ("mqtt://firegw:pa55word@broker:1883", "pa55word"),
        ("https://h/?Password=hunter22", "hunter22"),
    ],
)
def test_redact(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out and "***" in out


def test_filter_redacts_arguments_and_url_objects(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.redact")
    caplog.handler.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO, logger="test.redact"):
        log.info("request %s %s", "POST", httpx.URL("https://u:topsecret@h/x?apikey=k3y-value"))
        log.info("plain https://a:b-secret@h/")
    text = caplog.text
    assert "topsecret" not in text and "k3y-value" not in text and "b-secret" not in text
    assert "https://***:***@h/x?apikey=***" in text


def test_nothing_but_credentials_changes() -> None:
    text = "pump1 pressure=0.42 MPa monkey=1 hazard_key=x at 2026-11-29T08:00:00Z on fire/site/btn/dev/up (a=b)"
    assert redact(text) == text


def test_edge_filter_lets_one_line_a_minute_through(caplog: pytest.LogCaptureFixture) -> None:
    from gateway.logs import EdgeFilter

    log = logging.getLogger("test.flood")
    flt = EdgeFilter(every_s=60)
    log.addFilter(flt)
    try:
        with caplog.at_level(logging.ERROR, logger="test.flood"):
            for _ in range(1000):
                log.error("socket.accept() out of system resource")
            log.error("something else")
        lines = [r.getMessage() for r in caplog.records if r.name == "test.flood"]
        assert lines == ["socket.accept() out of system resource", "something else"]
        flt._last["socket.accept() out of system resource"] = (-1e9, 999)
        with caplog.at_level(logging.ERROR, logger="test.flood"):
            log.error("socket.accept() out of system resource")
        assert "999 more like it" in caplog.records[-1].getMessage()
    finally:
        log.removeFilter(flt)
