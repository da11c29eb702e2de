"""The grid-workflow receiver simulator answers whatever arrives, with a reason, and goes on serving.

Garbage headers and bodies go out with httpx where it can send them, and over a bare socket where it
will not (a malformed ``Content-Length``, two of them, a body that stops short). After each, a
correctly signed event is still accepted and the receiver counts no fault of its own.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from gateway.notify.webhook import sign
from simulators.workflow import MAX_BODY, MAX_DEPTH, Receiver

SECRET = "test-secret-0123456789"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(secret=SECRET, read_timeout_s=0.5).start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def _signed(body: bytes, now: int | None = None) -> dict[str, str]:
    now = int(time.time()) if now is None else now
    return {"X-Firegw-Timestamp": str(now), "X-Firegw-Signature": sign(SECRET, now, body)}


def _event(event_id: str) -> bytes:
    return json.dumps({"event_id": event_id, "kind": "fire_event", "subject_id": "f1", "type": "opened"}).encode()


def _still_serves(r: Receiver, http: httpx.Client) -> None:
    """A signed event is accepted after the garbage, and the receiver had no fault of its own."""
    event_id = f"after-{time.monotonic_ns()}"
    body = _event(event_id)
    resp = http.post(r.url + "/hook", content=body, headers={**_signed(body), "Content-Type": "application/json"})
    assert resp.status_code == 200, resp.text
    assert event_id in [e["event_id"] for e in http.get(r.url + "/received").json()]
    assert http.get(r.url + "/stats").json()["errors"] == 0


def _detail(resp: httpx.Response) -> str:
    detail = resp.json()["detail"]
    assert isinstance(detail, str) and detail
    return detail


# ----------------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    ("timestamp", "reason"),
    [
        (b"yesterday", "bad X-Firegw-Timestamp"),
        (b"-5", "bad X-Firegw-Timestamp"),
        (b"1700000000.5", "bad X-Firegw-Timestamp"),
        (b"1.7e9", "bad X-Firegw-Timestamp"),
        (b"0x6553f100", "bad X-Firegw-Timestamp"),
        ("¹²³".encode("latin-1"), "bad X-Firegw-Timestamp"),  # str.isdigit() says yes, int() says no
        ("١٧٠٠٠٠٠٠٠٠".encode(), "bad X-Firegw-Timestamp"),  # Arabic-Indic digits, as UTF-8 bytes
        (b"9" * 5000, "bad X-Firegw-Timestamp"),  # past int()'s digit limit, and past float's range
        (b"9" * 400, "bad X-Firegw-Timestamp"),
        (b"1 700 000 000", "bad X-Firegw-Timestamp"),
    ],
)
def test_an_odd_timestamp_gets_400_with_the_reason(
    receiver: Receiver, http: httpx.Client, timestamp: bytes, reason: str
) -> None:
    body = _event("e1")
    now = int(time.time())
    resp = http.post(
        receiver.url,
        content=body,
        headers={b"X-Firegw-Timestamp": timestamp, b"X-Firegw-Signature": sign(SECRET, now, body).encode()},
    )
    assert resp.status_code == 400 and reason in _detail(resp)
    assert http.get(receiver.url + "/stats").json()["bad_request"] == 1
    _still_serves(receiver, http)


def _old(body: bytes) -> dict[str, str]:
    return _signed(body, int(time.time()) - 3600)  # signed correctly, an hour ago


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (lambda body: {}, "missing"),
        (lambda body: {"X-Firegw-Timestamp": _signed(body)["X-Firegw-Timestamp"]}, "missing"),
        (lambda body: {"X-Firegw-Signature": _signed(body)["X-Firegw-Signature"]}, "missing"),
        (lambda body: {"X-Firegw-Timestamp": "", "X-Firegw-Signature": ""}, "missing"),
        (lambda body: {**_signed(body), "X-Firegw-Signature": "sha256=é".encode("latin-1")}, "bad signature"),
        (lambda body: {**_signed(body), "X-Firegw-Signature": "sha256=" + "0" * 64}, "bad signature"),
        (lambda body: {**_signed(body), "X-Firegw-Signature": "x" * 8000}, "bad signature"),
        (_old, "too far"),
    ],
    ids=["none", "no-signature", "no-timestamp", "empty", "not-ascii", "zeros", "long", "an-hour-old"],
)
def test_a_missing_or_wrong_signature_gets_401_with_the_reason(
    receiver: Receiver, http: httpx.Client, headers: Callable[[bytes], dict[str, Any]], reason: str
) -> None:
    body = _event("e1")
    resp = http.post(receiver.url, content=body, headers=headers(body))
    assert resp.status_code == 401 and reason in _detail(resp)
    assert http.get(receiver.url + "/received").json() == []
    _still_serves(receiver, http)


# ----------------------------------------------------------------------------- bodies


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "not JSON"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe\x00garbage", "not JSON"),
        (b"[1, 2]", "a JSON list, not an object"),
        (b'"a string"', "a JSON str, not an object"),
        (b"null", "a JSON NoneType, not an object"),
        (b"{}", "event_id"),
        (b'{"event_id": 5}', "event_id"),
        (b'{"event_id": ""}', "event_id"),
        (b'{"event_id": ["e1"]}', "event_id"),
        (b'{"event_id": "e1", "n": 1' + b"0" * 5000 + b"}", "not JSON"),  # past int()'s digit limit
        (b"[" * 200_000 + b"]" * 200_000, "not JSON"),  # deeper than the parser's recursion limit
        (
            b'{"event_id": "e1", "x": ' + b'{"a": ' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1) + b"}",
            f"deeper than {MAX_DEPTH}",
        ),
    ],
)
def test_a_body_that_is_not_an_event_gets_400_with_the_reason(
    receiver: Receiver, http: httpx.Client, body: bytes, reason: str
) -> None:
    assert len(body) <= MAX_BODY
    resp = http.post(receiver.url, content=body, headers=_signed(body))
    assert resp.status_code == 400 and reason in _detail(resp), resp.text
    assert http.get(receiver.url + "/received").json() == []
    _still_serves(receiver, http)


def test_odd_but_valid_json_is_taken_and_served_back(receiver: Receiver, http: httpx.Client) -> None:
    """A lone surrogate, NaN and a field that is not the object the ack-resolve scenario reads."""
    receiver.scenario = "ack-resolve"  # reads event[kind] as an object: here it is a string
    bodies = [
        b'{"event_id": "\\ud800", "kind": "fire_event", "type": "opened", "fire_event": "not an object"}',
        b'{"event_id": "e-nan", "kind": "x", "type": "opened", "x": [1, 2], "v": NaN}',
        b'{"event_id": "e-dup", "event_id": "e-dup2", "kind": 7, "type": null}',
    ]
    for body in bodies:
        resp = http.post(receiver.url, content=body, headers=_signed(body))
        assert resp.status_code == 200, resp.text
    received = http.get(receiver.url + "/received").json()  # written out, lone surrogate and all
    assert [e["event_id"] for e in received] == ["\ud800", "e-nan", "e-dup2"]
    assert http.get(receiver.url + "/stats").json()["errors"] == 0
    receiver.scenario = "record"
    _still_serves(receiver, http)


def test_an_oversized_body_gets_413_without_being_read(receiver: Receiver, http: httpx.Client) -> None:
    body = b"x" * (MAX_BODY + 1)
    resp = http.post(receiver.url, content=body, headers=_signed(body))
    assert resp.status_code == 413 and str(MAX_BODY) in _detail(resp)
    _still_serves(receiver, http)


def test_a_chunked_body_gets_411(receiver: Receiver, http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield _event("e1")

    resp = http.post(receiver.url, content=chunks(), headers=_signed(_event("e1")))
    assert resp.status_code == 411 and "Content-Length" in _detail(resp)
    _still_serves(receiver, http)


# ----------------------------------------------------------------------------- what httpx will not send


def _raw(r: Receiver, request: bytes, *, half_close: bool = True, timeout: float = 10.0) -> tuple[int, str]:
    """Send bytes as they are; the answer's status and detail (the receiver closes after a refusal)."""
    with socket.create_connection((r.host, r.port), timeout=timeout) as s:
        s.sendall(request)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), data[:200]
    return int(head.split()[1]), json.loads(body)["detail"]


def _request(headers: list[tuple[str, bytes]], body: bytes = b"") -> bytes:
    lines = [b"POST /hook HTTP/1.1", b"Host: 127.0.0.1"] + [k.encode() + b": " + v for k, v in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.mark.parametrize(
    ("length", "status", "reason"),
    [
        ([], 411, "Content-Length required"),
        ([b"abc"], 400, "bad Content-Length"),
        ([b"-1"], 400, "bad Content-Length"),
        ([b"1e3"], 400, "bad Content-Length"),
        (["²".encode("latin-1")], 400, "bad Content-Length"),  # str.isdigit() says yes
        ([b"9" * 5000], 400, "bad Content-Length"),
        ([b"10", b"12"], 400, "bad Content-Length"),  # two lengths: which body is it?
        ([b"99999999999"], 413, "body over"),
    ],
)
def test_a_bad_content_length_gets_an_answer(
    receiver: Receiver, http: httpx.Client, length: list[bytes], status: int, reason: str
) -> None:
    body = _event("e1")
    request = _request(
        [*(("Content-Length", v) for v in length), *((k, v.encode()) for k, v in _signed(body).items())], body
    )
    got, detail = _raw(receiver, request)
    assert got == status and reason in detail, detail
    _still_serves(receiver, http)


def test_a_body_shorter_than_announced_gets_400(receiver: Receiver, http: httpx.Client) -> None:
    body = _event("e1")
    request = _request(
        [("Content-Length", str(len(body) + 50).encode()), *((k, v.encode()) for k, v in _signed(body).items())], body
    )
    status, detail = _raw(receiver, request)  # the client stops writing: the body ends early
    assert status == 400 and "announced" in detail
    _still_serves(receiver, http)


def test_a_body_that_stops_arriving_gets_408_and_frees_the_connection(receiver: Receiver, http: httpx.Client) -> None:
    body = _event("e1")
    request = _request(
        [("Content-Length", str(len(body)).encode()), *((k, v.encode()) for k, v in _signed(body).items())], body[:10]
    )
    started = time.monotonic()
    status, detail = _raw(receiver, request, half_close=False)  # the client keeps the connection open
    assert status == 408 and "not received" in detail
    assert time.monotonic() - started < receiver.read_timeout_s + 5
    _still_serves(receiver, http)


def test_garbage_request_lines_get_an_answer(receiver: Receiver, http: httpx.Client) -> None:
    for request in (
        b"NOT HTTP AT ALL\r\n\r\n",
        b"POST /hook HTTP/9.9\r\n\r\n",
        b"\x00\xff\r\n\r\n",
        b"POST /hook HTTP/1.1\r\nBad Header Without Colon\r\n\r\n",
    ):
        with socket.create_connection((receiver.host, receiver.port), timeout=10) as s:
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 "), (request, data[:100])
        status = int(head.split()[1])
        assert 400 <= status < 500 or status == 505, (request, data[:100])  # the client's fault, never ours
        assert json.loads(body)["detail"], body
    _still_serves(receiver, http)


def _answer(s: socket.socket, buffered: bytearray) -> tuple[int, dict[str, Any]]:
    """Read one answer (status line, headers, Content-Length body) from a kept-alive connection."""
    while b"\r\n\r\n" not in buffered:
        chunk = s.recv(65536)
        assert chunk, "the receiver closed the connection"
        buffered += chunk
    head, _, rest = bytes(buffered).partition(b"\r\n\r\n")
    length = int(next(ln.split(b":", 1)[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")))
    while len(rest) < length:
        chunk = s.recv(65536)
        assert chunk, "the receiver closed the connection"
        rest += chunk
    buffered[:] = rest[length:]
    answer: dict[str, Any] = json.loads(rest[:length])
    return int(head.split()[1]), answer


def test_the_same_connection_serves_on_after_a_refusal(receiver: Receiver, http: httpx.Client) -> None:
    """A refusal after the whole body was read keeps the kept-alive connection: the next request on it is served."""
    good = _event("e-kept")
    refused = [
        (b"{not json", _signed(b"{not json")),
        (_event("e1"), {"X-Firegw-Timestamp": "soon", "X-Firegw-Signature": "sha256=0"}),
        (_event("e1"), {**_signed(_event("e1")), "X-Firegw-Signature": "sha256=00"}),
    ]
    with socket.create_connection((receiver.host, receiver.port), timeout=10) as s:
        buffered = bytearray()
        for body, headers in [*refused, (good, _signed(good))]:
            s.sendall(
                _request(
                    [("Content-Length", str(len(body)).encode()), *((k, v.encode()) for k, v in headers.items())], body
                )
            )
            status, answer = _answer(s, buffered)
            assert (status, bool(answer.get("detail"))) in ((400, True), (401, True)) or (body, status, answer) == (
                good,
                200,
                {"ok": True},
            ), (status, answer)
    stats = http.get(receiver.url + "/stats").json()
    assert (stats["bad_request"], stats["unauthorized"], stats["errors"], stats["accepted"]) == (2, 1, 0, 1)
