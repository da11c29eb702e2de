"""Grid-workflow receiver: takes the gateway's signed webhooks, records them, and answers through the API.

Every POST must carry a valid ``X-Firegw-Signature`` (HMAC-SHA256 of ``<timestamp>.<body>`` with
``--secret``, see ``gateway/notify/webhook.py``) and a ``X-Firegw-Timestamp`` within 5 minutes;
a missing or wrong signature, or a timestamp too far from now, gets 401 and is not recorded.
Accepted events are recorded once per ``event_id`` (later copies are counted as duplicates).

Whatever arrives gets an answer with a reason (JSON ``{"detail": ...}``) and the receiver goes on:
400 for a malformed request (a timestamp that is not Unix seconds in ASCII digits, a bad
``Content-Length``, a body that is not a JSON object with a non-empty string ``event_id``, a body
shorter than announced), 411 without ``Content-Length`` (chunked bodies are not taken), 413 past
1 MiB, 408 when the body stops arriving for 60 s (``read_timeout_s``), and 500 (with the exception's
class, counted as ``errors``) should the receiver itself fail.

Scenarios:
  record        answer 200 (default)
  ack-resolve   answer 200; then, through the gateway API (--api, --token), acknowledge and resolve
                as false_alarm every fire event opened, and confirm (if proposed), dispatch, start,
                report rectified and close every hazard opened. The API calls run on a background
                thread, never inside the request.
  fail500       always 500
  flaky         500 on every 3rd request
  timeout       sleep --sleep seconds (past the client's timeout) before answering 200
  down          after --down-after events, stop listening for --down-for seconds, then come back
  retry-after   429 with Retry-After: 1 the first time each event arrives, 200 after
  reject        always 400 (a receiver that refuses the events)

``--down-after N --down-for S`` work with any scenario. While down, requests on connections that
were already open are dropped without an answer too.

Endpoints: ``GET /received`` (JSON array of the accepted event bodies, in arrival order, first
arrival of each event_id), ``GET /stats`` (counters, duplicates), ``GET /log`` (every signed
request: event_id, status, arrival time in ms, and whether the ``Idempotency-Key`` and
``X-Firegw-Event-Id`` headers matched the body's event_id), ``GET /actions`` (API calls made and their status).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import queue
import re
import signal
import socket
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["SCENARIOS", "Receiver", "add_arguments", "run", "signature"]

SCENARIOS = ("record", "ack-resolve", "fail500", "flaky", "timeout", "down", "retry-after", "reject")
TIMESTAMP_TOLERANCE_S = 300
MAX_BODY = 1_048_576
#: Seconds a connection may stay silent (a stalled body, an idle keep-alive) before it is closed.
READ_TIMEOUT_S = 60.0
_TIMESTAMP = re.compile(r"[0-9]{1,12}", re.ASCII)
_LENGTH = re.compile(r"[0-9]{1,12}", re.ASCII)
#: Deepest nesting taken in an event body (the gateway's are a few levels deep); deeper bodies could
#: not be written back out by ``GET /received`` within Python's recursion limit.
MAX_DEPTH = 64
ACTION_QUEUE = 10_000
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The expected ``X-Firegw-Signature`` (see gateway/notify/webhook.py)."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


class _Refused(Exception):
    """A request answered with ``status`` and ``detail``; ``close``: the rest of it was not read."""

    def __init__(self, status: int, detail: str, *, counter: str = "bad_request", close: bool = False) -> None:
        super().__init__(detail)
        self.status, self.detail, self.counter, self.close = status, detail, counter, close


def _shown(value: str, limit: int = 60) -> str:
    """A header value as it may appear in an answer: quoted, escaped, cut."""
    return ascii(value[:limit]) + ("..." if len(value) > limit else "")


def _depth(value: Any) -> int:
    """How deeply a parsed JSON value nests (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, level)
            stack.extend((item, level + 1) for item in node if isinstance(item, (dict, list)))
    return deepest


def _scalar(value: Any) -> str:
    """A field of an event for a log line: scalars as they are (escaped), anything else by its type."""
    text = str(value) if value is None or isinstance(value, (str, int, float, bool)) else f"<{type(value).__name__}>"
    return text[:200].encode("utf-8", "backslashreplace").decode("utf-8")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128  # the default listen backlog (5) drops SYNs: a 1 s retransmit per new connection
    receiver: Receiver


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # a request line that does not parse is answered with a status line too (HTTP/0.9 would have none)
    default_request_version = "HTTP/1.0"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # a stalled body or an idle connection holds no thread for long
        self.connection.settimeout(self.server.receiver.read_timeout_s)
        # headers and body go out in two writes: without this, Nagle and the client's delayed ACK
        # add ~40 ms to every answer on a kept-alive connection
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (a request line or headers it cannot parse, an unknown
        method), as JSON with the reason like every other answer."""
        if self.command == "HEAD" or code < 200 or code in (204, 304):
            super().send_error(code, message, explain)
            return
        self.close_connection = True
        self._send(code, {"detail": message or explain or self.responses.get(code, ("error",))[0]})

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        # backslashreplace: a lone surrogate from a JSON body (valid JSON, not valid UTF-8) goes out as \udXXX
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8", "backslashreplace")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (timeout scenario)
            self.close_connection = True

    def do_GET(self) -> None:
        try:
            self._get()
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        """A fault of the receiver's own: answer it (never drop the connection), say so, go on serving."""
        self.server.receiver.count("errors")
        print(
            f"workflow: error handling {self.command} {_shown(self.path)}:\n{traceback.format_exc()}",
            file=sys.stderr,
            flush=True,
        )
        self.close_connection = True
        self._send(500, {"detail": f"receiver error: {type(exc).__name__}"})

    def _get(self) -> None:
        r = self.server.receiver
        path = self.path.split("?", 1)[0]
        if path == "/received":
            self._send(200, r.received())
        elif path == "/stats":
            self._send(200, r.stats())
        elif path == "/log":
            self._send(200, r.log())
        elif path == "/actions":
            self._send(200, r.actions())
        else:
            self._send(404, {"detail": f"no such path {path}"})

    def do_POST(self) -> None:
        r = self.server.receiver
        if r.is_down():
            self.close_connection = True  # drop it: no answer, as if the host were gone
            return
        try:
            self._post(r)
        except _Refused as exc:
            r.count(exc.counter)
            if exc.close:
                self.close_connection = True
            self._send(exc.status, {"detail": exc.detail})
            if exc.close:
                self._drain()
        except Exception as exc:
            self._failed(exc)

    def _drain(self, limit: int = 2 * MAX_BODY, seconds: float = 2.0) -> None:
        """Read and drop what the client still sends after a refusal, within bounds: closing a socket
        with unread data resets the connection, and the client may lose the answer with it."""
        deadline = time.monotonic() + seconds
        taken = 0
        try:
            self.wfile.flush()
            self.connection.settimeout(0.5)
            while taken < limit and time.monotonic() < deadline:
                chunk = self.rfile.read1(65536)
                if not chunk:
                    return
                taken += len(chunk)
        except OSError:  # timed out or gone: nothing more to drop
            return

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding") is not None:
            raise _Refused(411, "Content-Length required (a chunked body is not taken)", close=True)
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            raise _Refused(411, "Content-Length required", close=True)
        if len(set(lengths)) != 1 or not _LENGTH.fullmatch(lengths[0].strip()):
            raise _Refused(400, f"bad Content-Length {_shown(', '.join(lengths))}", close=True)
        length = int(lengths[0])
        if length > MAX_BODY:
            raise _Refused(413, f"body over {MAX_BODY} bytes", close=True)
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            waited = self.server.receiver.read_timeout_s
            raise _Refused(408, f"body not received within {waited:g} s", close=True) from None
        except OSError as exc:  # the client went away: nobody to answer
            raise _Refused(400, f"connection lost while reading the body: {exc}", close=True) from None
        if len(body) != length:
            raise _Refused(400, f"body of {len(body)} bytes, {length} announced", close=True)
        return body

    def _post(self, r: Receiver) -> None:
        body = self._body()
        problem = r.verify(self.headers.get("X-Firegw-Timestamp"), self.headers.get("X-Firegw-Signature"), body)
        if problem is not None:
            raise _Refused(*problem, counter="unauthorized" if problem[0] == 401 else "bad_request")
        try:
            event = json.loads(body)
        except (ValueError, RecursionError) as exc:  # RecursionError: nesting too deep for the parser
            raise _Refused(400, f"not an event body: not JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
        if not isinstance(event, dict):
            raise _Refused(400, f"not an event body: a JSON {type(event).__name__}, not an object")
        if _depth(event) > MAX_DEPTH:
            raise _Refused(400, f"not an event body: nested deeper than {MAX_DEPTH} levels")
        event_id = event.get("event_id")
        if not isinstance(event_id, str) or not event_id:
            raise _Refused(400, "not an event body: event_id must be a non-empty string")
        keys_ok = self.headers.get("Idempotency-Key") == event_id == self.headers.get("X-Firegw-Event-Id")
        status, headers = r.decide(event_id)
        if status == 200:
            r.accept(event)
        r.logged(event_id, status, keys_ok)
        self._send(status, {"ok": status == 200} if status == 200 else {"detail": f"scenario {r.scenario}"}, headers)


class Receiver:
    """The receiver, usable in-process (tests, benchmarks) or from the command line (:func:`run`)."""

    def __init__(
        self,
        *,
        secret: str,
        host: str = "127.0.0.1",
        port: int = 0,
        scenario: str = "record",
        api: str = "http://127.0.0.1:8080",
        token: str | None = None,
        down_after: int | None = None,
        down_for: float = 5.0,
        sleep_s: float = 30.0,
        quiet: bool = True,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r} ({', '.join(SCENARIOS)})")
        if host not in LOOPBACK:
            raise ValueError(f"listen on loopback only (127.0.0.1), not {host!r}")
        if scenario == "down" and down_after is None:
            down_after = 5
        self.secret = secret
        self.host = host
        self.port = port
        self.scenario = scenario
        self.api = api.rstrip("/")
        self.token = token
        self.down_after = down_after
        self.down_for = down_for
        self.sleep_s = sleep_s
        self.quiet = quiet
        self.read_timeout_s = read_timeout_s
        self._lock = threading.Lock()
        self._received: list[dict[str, Any]] = []
        self._seen: set[str] = set()
        self._first_try: set[str] = set()
        self._log: list[dict[str, Any]] = []
        self._actions: list[dict[str, Any]] = []
        self._counters: dict[str, int] = {
            "requests": 0,
            "duplicates": 0,
            "unauthorized": 0,
            "bad_request": 0,
            "errors": 0,
            "api_calls": 0,
            "api_errors": 0,
            "actions_dropped": 0,
        }
        self._by_status: dict[str, int] = {}
        self._down_until = 0.0
        self._went_down = False
        self._server: _Server | None = None
        self._serve_thread: threading.Thread | None = None
        self._queue: queue.Queue[tuple[str, str, str] | None] = queue.Queue(maxsize=ACTION_QUEUE)
        self._worker: threading.Thread | None = None
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Receiver:
        self._listen()
        self._worker = threading.Thread(target=self._act_loop, name="workflow-actions", daemon=True)
        self._worker.start()
        return self

    def _listen(self) -> None:
        server = _Server((self.host, self.port), _Handler)
        server.receiver = self
        self.port = server.server_address[1]
        self._server = server
        self._serve_thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="workflow-http", daemon=True
        )
        self._serve_thread.start()

    def _close_listener(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def stop(self) -> None:
        self._stopping.set()
        self._close_listener()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        if self._worker is not None:
            self._worker.join(5)

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ state (handler threads)

    def is_down(self) -> bool:
        return time.monotonic() < self._down_until

    def count(self, key: str) -> None:
        with self._lock:
            self._counters["requests"] += 1
            self._counters[key] = self._counters.get(key, 0) + 1

    def check_signature(self, timestamp: str | None, sig: str | None, body: bytes) -> str | None:
        """Why the request is refused, or None."""
        problem = self.verify(timestamp, sig, body)
        return None if problem is None else problem[1]

    def verify(self, timestamp: str | None, sig: str | None, body: bytes) -> tuple[int, str] | None:
        """(status, reason) for a request that is not signed as it must be, or None: 400 when the
        timestamp is malformed, 401 when the signature is missing or wrong or the time too far off."""
        if not timestamp or not sig:
            return 401, "missing X-Firegw-Timestamp or X-Firegw-Signature"
        if not _TIMESTAMP.fullmatch(timestamp.strip()):
            return 400, f"bad X-Firegw-Timestamp {_shown(timestamp)}: expected Unix seconds in ASCII digits"
        timestamp = timestamp.strip()
        if abs(time.time() - int(timestamp)) > TIMESTAMP_TOLERANCE_S:
            return 401, "X-Firegw-Timestamp too far from now"
        expected = signature(self.secret, timestamp, body).encode("ascii")
        if not sig.isascii() or not hmac.compare_digest(expected, sig.strip().encode("ascii")):
            return 401, "bad signature"
        return None

    def decide(self, event_id: str) -> tuple[int, dict[str, str]]:
        with self._lock:
            self._counters["requests"] += 1
            n = self._counters["requests"]
            first = event_id not in self._first_try
            self._first_try.add(event_id)
        sc = self.scenario
        if sc == "fail500" or (sc == "flaky" and n % 3 == 0):
            return 500, {}
        if sc == "reject":
            return 400, {}
        if sc == "retry-after" and first:
            return 429, {"Retry-After": "1"}
        if sc == "timeout":
            time.sleep(self.sleep_s)
        return 200, {}

    def accept(self, event: dict[str, Any]) -> None:
        event_id = event["event_id"]
        go_down = False
        with self._lock:
            if event_id in self._seen:
                self._counters["duplicates"] += 1
                return
            self._seen.add(event_id)
            self._received.append(event)
            if self.down_after is not None and not self._went_down and len(self._received) >= self.down_after:
                self._went_down = go_down = True
                self._down_until = time.monotonic() + self.down_for
        if not self.quiet:
            print(f"workflow: {' '.join(_scalar(event.get(k)) for k in ('kind', 'subject_id', 'type'))}", flush=True)
        if go_down:
            threading.Thread(target=self._outage, name="workflow-outage", daemon=True).start()
        if self.scenario == "ack-resolve" and event.get("type") == "opened":
            subject = event.get(str(event.get("kind")))
            state = subject.get("state", "") if isinstance(subject, dict) else ""
            try:
                self._queue.put_nowait((str(event.get("kind")), str(event.get("subject_id")), str(state)))
            except queue.Full:
                with self._lock:
                    self._counters["actions_dropped"] += 1

    def logged(self, event_id: str, status: int, keys_ok: bool = True) -> None:
        with self._lock:
            self._by_status[str(status)] = self._by_status.get(str(status), 0) + 1
            self._log.append(
                {
                    "event_id": event_id,
                    "status": status,
                    "at_ms": round(time.time() * 1000, 3),
                    "idempotency_key_ok": keys_ok,
                }
            )

    def _outage(self) -> None:
        if not self.quiet:
            print(f"workflow: going down for {self.down_for:g} s", flush=True)
        self._close_listener()
        time.sleep(max(0.0, self._down_until - time.monotonic()))
        if not self._stopping.is_set():
            self._listen()
            if not self.quiet:
                print("workflow: back up", flush=True)

    # ------------------------------------------------------------------ views

    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._received)

    def log(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._log)

    def actions(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._actions)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                **self._counters,
                "accepted": len(self._received),
                "by_status": dict(self._by_status),
                "scenario": self.scenario,
                "down": self.is_down(),
            }

    # ------------------------------------------------------------------ the way back (API calls)

    def _act_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._stopping.is_set():
                return
            kind, subject_id, state = item
            steps: list[tuple[str, dict[str, Any]]]
            if kind == "fire_event":
                steps = [
                    (f"/api/v1/events/{subject_id}/acknowledge", {"note": "micro station on its way"}),
                    (
                        f"/api/v1/events/{subject_id}/resolve",
                        {"resolution": "false_alarm", "note": "checked on site: no fire"},
                    ),
                ]
            elif kind == "hazard":
                steps = (
                    [(f"/api/v1/hazards/{subject_id}/confirm", {"note": "confirmed by the grid"})]
                    if state == "proposed"
                    else []
                )
                steps += [
                    (f"/api/v1/hazards/{subject_id}/dispatch", {"assignee": "grid-member-1", "note": "dispatched"}),
                    (f"/api/v1/hazards/{subject_id}/start", {"note": "rectification started"}),
                    (f"/api/v1/hazards/{subject_id}/rectified", {"note": "rectified"}),
                    (f"/api/v1/hazards/{subject_id}/close", {"note": "re-checked on site: rectified"}),
                ]
            else:
                continue
            for path, payload in steps:
                status = self._call(path, payload)
                if status != 200:
                    break

    def _call(self, path: str, payload: dict[str, Any]) -> int:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(payload).encode("utf-8")
        status, detail = 0, ""
        for attempt in range(5):
            req = urllib.request.Request(self.api + path, data=data, method="POST", headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    status, detail = resp.status, ""
            except urllib.error.HTTPError as exc:
                status, detail = exc.code, exc.read().decode("utf-8", "replace")[:300]
            except (urllib.error.URLError, OSError) as exc:
                status, detail = 0, str(exc)
            if status != 0 and status < 500:
                break
            if self._stopping.wait(0.5 * (attempt + 1)):
                break
        with self._lock:
            self._counters["api_calls"] += 1
            if status != 200:
                self._counters["api_errors"] += 1
            self._actions.append({"path": path, "status": status, "detail": detail})
        if not self.quiet or status != 200:
            print(f"workflow: POST {path} -> {status or 'unreachable'} {detail}".rstrip(), flush=True)
        return status


# ---------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="127.0.0.1:8090", help="host:port on loopback (port 0: any free port)")
    parser.add_argument(
        "--secret",
        default=None,
        help="the webhook secret; prefer the environment (FIREGW_WEBHOOK__SECRET): a process's "
        "arguments are visible to every user of the machine",
    )
    parser.add_argument("--scenario", choices=SCENARIOS, default="record")
    parser.add_argument("--api", default="http://127.0.0.1:8080", help="the gateway API, for ack-resolve")
    parser.add_argument(
        "--token", default=None, help="operator bearer token for the gateway API; prefer FIREGW_WORKFLOW_TOKEN"
    )
    parser.add_argument("--down-after", type=int, help="go away after this many accepted events")
    parser.add_argument("--down-for", type=float, default=5.0, help="seconds to stay away")
    parser.add_argument("--sleep", type=float, default=30.0, help="timeout scenario: seconds before answering")
    parser.add_argument("--verbose", action="store_true", help="print every event accepted")


def run(args: argparse.Namespace) -> int:
    host, sep, port = str(args.listen).rpartition(":")
    if not sep or not port.isdigit():
        print(f"workflow: --listen expects host:port, got {args.listen!r}", file=sys.stderr)
        return 2
    try:
        secret = args.secret or os.environ.get("FIREGW_WEBHOOK__SECRET")
        if not secret:
            print("workflow: the webhook secret is required: FIREGW_WEBHOOK__SECRET or --secret", file=sys.stderr)
            return 2
        token = args.token or os.environ.get("FIREGW_WORKFLOW_TOKEN")
        receiver = Receiver(
            secret=secret,
            host=host.strip("[]"),
            port=int(port),
            scenario=args.scenario,
            api=args.api,
            token=token,
            down_after=args.down_after,
            down_for=args.down_for,
            sleep_s=args.sleep,
            quiet=not args.verbose,
        )
        receiver.start()
    except (ValueError, OSError) as exc:
        print(f"workflow: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"workflow: listening on {receiver.host}:{receiver.port}", flush=True)
    stop.wait()
    receiver.stop()
    return 0
