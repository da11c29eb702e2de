"""Outbox delivery: the Notifier against the real workflow receiver (HTTP, signed) and a real Mosquitto.

Records come from the pure :class:`Workflow` and are written with the real store and schema, the
way the committer writes them (one outbox row per destination in the transition's transaction).
The Notifier runs on its own event loop in a thread, as in the gateway; the test thread plays the
committer (writes, then ``wake()``).
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import json
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.errors import ConfigError
from gateway.hazards.lifecycle import Transition, Workflow
from gateway.health import Health, Stage
from gateway.notify import Delivered, Notifier, Rejected, Retry, backoff_delay
from gateway.notify.webhook import classify, parse_retry_after, sign
from gateway.profiles.loader import Catalog
from gateway.rules.effects import Condition, FireSignal
from gateway.settings import GatewaySettings
from gateway.sites import site_summaries
from gateway.store.sqlite import Store
from gateway.store.workflow import WorkflowStore
from simulators.broker import Mosquitto
from simulators.workflow import Receiver
from tests.support import PYTHON, ROOT, RunningInThread, wait_for
from tests.unit.test_rules import catalog, device, site

SECRET = "test-secret-0123456789"
T0 = 1_700_000_000_000


# ----------------------------------------------------------------------------- helpers


def _catalog(n_buttons: int = 6) -> Catalog:
    devices = [device(f"B{i}", "onekey-alarm-button") for i in range(n_buttons)]
    devices += [device("P1", "fire-pump-cabinet", host="h"), device("X2", "onekey-alarm-button", site_id="S2")]
    return catalog(devices, [site("S1"), site("S2", town="镇B")])


def _settings(url: str | None = None, mqtt_url: str | None = None, **webhook: Any) -> GatewaySettings:
    data: dict[str, Any] = {}
    if url is not None:
        data["webhook"] = {
            "url": url,
            "secret": SECRET,
            "timeout_s": 2.0,
            "backoff_min_s": 0.05,
            "backoff_max_s": 0.4,
            "concurrency": 4,
            **webhook,
        }
    if mqtt_url is not None:
        data["events_mqtt"] = {"enabled": True, "url": mqtt_url, "client_id": f"firegw-test-{uuid.uuid4().hex[:8]}"}
    return GatewaySettings.model_validate(data)


class Book:
    """Records from the pure workflow, in steps: each step is one transaction of the committer."""

    def __init__(self, cat: Catalog) -> None:
        ids = (f"ev{i:04d}" for i in itertools.count())
        self.w = Workflow(cat, id_factory=lambda: next(ids))
        self.now = int(time.time() * 1000)

    def tick(self) -> int:
        self.now += 1
        return self.now

    def fires(self, n: int) -> list[list[Transition]]:
        """n fire events, each opened → acknowledged → on_scene → resolved, steps interleaved."""
        opened = self.w.apply(
            [FireSignal("S1", f"B{i}", "fire_alarm", "fire_alarm", self.now) for i in range(n)], self.tick()
        )
        steps = [opened]
        for action, params in (("acknowledge", {}), ("arrive", {}), ("resolve", {"resolution": "false_alarm"})):
            steps.append(
                [
                    r
                    for rec in opened
                    for r in self.w.act("fire_event", rec.subject_id, action, "station-1", now_ms=self.tick(), **params)
                ]
            )
        return steps

    def hazards(self, rules: list[str], severity: str = "major") -> list[list[Transition]]:
        """Hazards on P1 opened (proposed) and confirmed."""
        opened = self.w.apply(
            [
                Condition(
                    "S1",
                    "P1",
                    r,
                    True,
                    self.now,
                    "supervisory",
                    severity,
                    "水泵手动",
                    "Pump cabinet in manual",
                    False,
                    False,
                    [{"value": 0}],
                )
                for r in rules
            ],
            self.tick(),
        )
        confirmed = [
            r for rec in opened for r in self.w.act("hazard", rec.subject_id, "confirm", "grid-1", now_ms=self.tick())
        ]
        return [opened, confirmed]

    def close_hazards(self, subject_ids: list[str]) -> list[list[Transition]]:
        steps = []
        for action in ("dispatch", "start", "rectified", "close"):
            steps.append(
                [
                    r
                    for sid in subject_ids
                    for r in self.w.act("hazard", sid, action, "grid-1", now_ms=self.tick(), note="re-checked")
                ]
            )
        return steps


def _write(
    store: Store, steps: list[list[Transition]], dests: list[str], notifier: Notifier | None = None
) -> list[Transition]:
    out = []
    for step in steps:
        with store.transaction() as c:
            WorkflowStore(c).write(step, dests)
        out += step
        if notifier is not None:
            notifier.wake()
    return out


def _all_delivered(db: Path, destination: str = "webhook") -> bool:
    return all(d is not None for _, d, _, _ in _outbox(db, destination))


def _by_subject(bodies: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for b in bodies:
        out.setdefault(f"{b['kind']}:{b['subject_id']}", []).append(b["event_id"])
    return out


def _expected(records: list[Transition]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in records:
        out.setdefault(f"{r.kind}:{r.subject_id}", []).append(r.event_id)
    return out


def _outbox(db: Path, destination: str = "webhook") -> list[tuple[str, int | None, int, str | None]]:
    with sqlite3.connect(db) as c:
        rows = c.execute(
            "SELECT event_id, delivered_at, attempts, last_error FROM outbox WHERE destination = ? ORDER BY seq",
            (destination,),
        ).fetchall()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "firegw.db").open()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(secret=SECRET).start()
    try:
        yield r
    finally:
        r.stop()


def _notifier(settings: GatewaySettings, cat: Catalog, store: Store, health: Health | None = None) -> Notifier:
    return Notifier(settings=settings, catalog=cat, store_path=store.path, health=health or Health())


# ----------------------------------------------------------------------------- pure pieces


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [
        (200, None, Delivered()),
        (204, None, Delivered()),
        (500, None, Retry("HTTP 500")),
        (503, "7", Retry("HTTP 503", retry_after=7.0)),
        (429, "2", Retry("HTTP 429", retry_after=2.0)),
        (502, "9", Retry("HTTP 502")),  # Retry-After honoured on 429 and 503 only
        (408, None, Retry("HTTP 408")),
        (425, None, Retry("HTTP 425")),
        (400, None, Rejected("HTTP 400")),
        (401, None, Rejected("HTTP 401")),
        (404, None, Rejected("HTTP 404")),
        (302, None, Rejected("HTTP 302")),
    ],
)
def test_classify(status: int, retry_after: str | None, expected: object) -> None:
    assert classify(status, retry_after) == expected


def test_retry_after_forms() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("3", now) == 3.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0
    assert parse_retry_after("999999", now) == 3600.0
    assert parse_retry_after("soon", now) is None and parse_retry_after(None) is None


def test_backoff_is_capped_jittered_and_honours_retry_after() -> None:
    for attempts in range(1, 30):
        d = backoff_delay(attempts, 0.5, 60.0)
        base = min(60.0, 0.5 * 2 ** (attempts - 1))
        assert base / 2 <= d <= base
    assert backoff_delay(1, 0.5, 60.0, retry_after=5.0) == 5.0


def test_signature_scheme() -> None:
    # the documented scheme: HMAC-SHA256 of "<timestamp>.<body>", hex, prefixed "sha256="
    import hashlib
    import hmac

    body = b'{"event_id":"e1"}'
    expected = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("k", 1_700_000_000, body) == f"sha256={expected}"


def test_destinations_and_wake_before_run(tmp_path: Path) -> None:
    cat = _catalog()
    n = Notifier(
        settings=_settings("http://127.0.0.1:9/hook", "mqtt://127.0.0.1:9"),
        catalog=cat,
        store_path=tmp_path / "x.db",
        health=Health(),
    )
    assert n.destinations() == ["webhook", "mqtt"]
    n.wake()  # before run(): a no-op
    assert not (tmp_path / "x.db").exists()  # no I/O in the constructor
    assert (
        Notifier(settings=_settings(), catalog=cat, store_path=tmp_path / "x.db", health=Health()).destinations() == []
    )


def test_bad_settings_fail_with_the_field_named(tmp_path: Path) -> None:
    cat = _catalog()
    with pytest.raises(ConfigError, match=r"webhook\.url"):
        Notifier(settings=_settings("ftp://x/hook"), catalog=cat, store_path=tmp_path / "x.db", health=Health())
    with pytest.raises(ConfigError, match=r"events_mqtt\.topic_code"):
        Notifier(
            settings=GatewaySettings.model_validate(
                {"events_mqtt": {"enabled": True, "topic_code": "grid/{zone}/code"}}
            ),
            catalog=cat,
            store_path=tmp_path / "x.db",
            health=Health(),
        )
    Store(tmp_path / "x.db").open().close()
    n = Notifier(
        settings=_settings("https://127.0.0.1:9/hook", ca_file=str(tmp_path / "missing.pem")),
        catalog=cat,
        store_path=tmp_path / "x.db",
        health=Health(),
    )
    with pytest.raises(ConfigError, match=r"webhook\.tls\.ca_file"):
        asyncio.run(n.run())


# ----------------------------------------------------------------------------- webhook


def test_every_event_delivered_once_in_order_and_signed(store: Store, receiver: Receiver) -> None:
    cat = _catalog()
    health = Health()
    notifier = _notifier(_settings(receiver.url + "/hook"), cat, store, health)
    book = Book(cat)
    run = RunningInThread(notifier, name="notifier")
    try:
        records = _write(store, book.fires(6) + book.hazards(["r1", "r2", "r3"]), ["webhook"], notifier)
        wait_for(lambda: len(receiver.received()) == len(records), 15, "every event received")
        wait_for(lambda: _all_delivered(store.path), 5, "every row marked delivered")
    finally:
        run.stop()
    got = receiver.received()
    assert _by_subject(got) == _expected(records)  # same events, in order per subject
    assert receiver.stats()["duplicates"] == 0 and receiver.stats()["unauthorized"] == 0
    assert all(e["idempotency_key_ok"] for e in receiver.log())  # Idempotency-Key = X-Firegw-Event-Id = event_id
    assert {b["event_id"] for b in got} == {r.event_id for r in records}
    body = next(b for b in got if b["kind"] == "hazard")
    assert body["version"] == 1 and body["hazard"]["site_id"] == "S1" and body["at"].endswith("Z")
    rows = _outbox(store.path)
    assert all(delivered is not None and attempts == 1 and err is None for _, delivered, attempts, err in rows)
    stage = health.stage("notify:webhook")
    assert stage.counters["delivered"] == len(records) and stage.depth == 0 and stage.connected is True


def test_receiver_down_then_back_delivers_everything_once_in_order(store: Store) -> None:
    cat = _catalog()
    health = Health()
    book = Book(cat)
    with Receiver(secret=SECRET, scenario="down", down_after=5, down_for=2.0) as receiver:
        notifier = _notifier(_settings(receiver.url, timeout_s=0.5), cat, store, health)
        run = RunningInThread(notifier, name="notifier")
        try:
            records = _write(store, book.fires(6), ["webhook"], notifier)
            wait_for(lambda: receiver.stats()["down"], 10, "the receiver to go down")
            stage = health.stage("notify:webhook")
            wait_for(lambda: stage.connected is False and stage.last_error, 5, "health to show the failure")
            assert stage.depth > 0
            records += _write(store, book.hazards(["r1", "r2"]), ["webhook"], notifier)  # written while down
            wait_for(lambda: len(receiver.received()) == len(records), 20, "every event after the outage")
            wait_for(lambda: stage.connected is True and stage.depth == 0, 5, "health to recover")
        finally:
            run.stop()
        assert _by_subject(receiver.received()) == _expected(records)
        assert stage.counters["retried"] > 0
    assert all(delivered is not None for _, delivered, _, _ in _outbox(store.path))


@pytest.mark.parametrize("scenario", ["fail500", "timeout"])
def test_failing_receiver_keeps_events_waiting_then_delivers(store: Store, scenario: str) -> None:
    cat = _catalog()
    health = Health()
    book = Book(cat)
    with Receiver(secret=SECRET, scenario=scenario, sleep_s=1.0) as receiver:
        notifier = _notifier(_settings(receiver.url, timeout_s=0.3), cat, store, health)
        run = RunningInThread(notifier, name="notifier")
        try:
            records = _write(store, book.fires(3), ["webhook"], notifier)
            stage = health.stage("notify:webhook")
            wait_for(
                lambda: sum(1 for e in receiver.log() if e["event_id"] == records[0].event_id) >= 3,
                15,
                "retries of the first event",
            )
            assert stage.connected is False and stage.depth == len(records)
            assert stage.last_error is not None
            assert ("HTTP 500" if scenario == "fail500" else "timed out") in stage.last_error
            rows = _outbox(store.path)
            assert all(d is None for _, d, _, _ in rows) and rows[0][2] >= 2 and rows[0][3]
            # later events of a subject are never tried before its first one is delivered
            later = {r.event_id for r in records[3:]}
            assert not any(e["event_id"] in later for e in receiver.log())
            receiver.scenario = "record"
            wait_for(lambda: stage.depth == 0 and stage.connected is True, 15, "delivery after recovery")
        finally:
            run.stop()
        assert _by_subject(receiver.received()) == _expected(records)


def test_retry_after_and_flaky_are_honoured(store: Store) -> None:
    cat = _catalog()
    book = Book(cat)
    with Receiver(secret=SECRET, scenario="retry-after") as receiver:
        run = RunningInThread(notifier := _notifier(_settings(receiver.url), cat, store), name="notifier")
        try:
            records = _write(store, book.fires(2)[:2], ["webhook"], notifier)
            wait_for(lambda: _all_delivered(store.path), 15, "every event delivered")
        finally:
            run.stop()
        log = receiver.log()
        for rec in records:
            tries = [e for e in log if e["event_id"] == rec.event_id]
            assert [e["status"] for e in tries] == [429, 200]
            assert tries[1]["at_ms"] - tries[0]["at_ms"] >= 1000, "retried before Retry-After: 1"
        assert _by_subject(receiver.received()) == _expected(records)
        receiver.scenario = "flaky"
        run = RunningInThread(notifier, name="notifier")
        try:
            records += _write(store, book.hazards(["r1", "r2", "r3"]), ["webhook"], notifier)
            wait_for(lambda: len(receiver.received()) == len(records), 15, "every event received (flaky)")
        finally:
            run.stop()
        assert receiver.stats()["by_status"]["500"] > 0
        assert _by_subject(receiver.received()) == _expected(records)
        assert receiver.stats()["duplicates"] == 0


def test_rejected_event_is_kept_counted_and_holds_its_subject(store: Store) -> None:
    cat = _catalog()
    health = Health()
    book = Book(cat)
    with Receiver(secret=SECRET, scenario="reject") as receiver:
        run = RunningInThread(notifier := _notifier(_settings(receiver.url), cat, store, health), name="notifier")
        try:
            records = _write(store, book.fires(1)[:3], ["webhook"], notifier)
            stage = health.stage("notify:webhook")
            wait_for(lambda: stage.counters.get("rejected", 0) >= 2, 10, "the rejection counted (twice)")
            rows = _outbox(store.path)
            assert rows[0][1] is None and (rows[0][3] or "").startswith("rejected: HTTP 400")
            assert {e["event_id"] for e in receiver.log()} == {records[0].event_id}  # the rest waits
            assert stage.depth == 3
            receiver.scenario = "record"
            wait_for(lambda: len(receiver.received()) == 3, 10, "delivery once accepted")
        finally:
            run.stop()
    assert _by_subject(receiver.received()) == _expected(records)


def test_cancelled_mid_delivery_and_restarted_loses_nothing(store: Store) -> None:
    cat = _catalog(10)
    book = Book(cat)
    with Receiver(secret=SECRET, scenario="timeout", sleep_s=0.3) as receiver:
        settings = _settings(receiver.url, timeout_s=5.0)
        notifier = _notifier(settings, cat, store)
        run = RunningInThread(notifier, name="notifier")
        records = _write(store, book.fires(10), ["webhook"], notifier)
        try:
            wait_for(lambda: len(receiver.received()) >= 8, 15, "some deliveries")
        finally:
            run.stop()  # cancels the requests in flight
        delivered_before = {e for e, d, _, _ in _outbox(store.path) if d is not None}
        assert 0 < len(delivered_before) < len(records)
        receiver.scenario = "record"
        # a new process would do the same: read the outbox
        run = RunningInThread(_notifier(settings, cat, store), name="notifier")
        try:
            wait_for(lambda: _all_delivered(store.path), 15, "everything delivered")
        finally:
            run.stop()
        got = receiver.received()
        assert {b["event_id"] for b in got} == {r.event_id for r in records}  # nothing lost
        assert _by_subject(got) == _expected(records)
        accepted = [e["event_id"] for e in receiver.log() if e["status"] == 200]
        assert all(accepted.count(e) == 1 for e in delivered_before)  # delivered before: not sent again
        assert receiver.stats()["duplicates"] <= settings.webhook.concurrency  # only what was in flight


# ----------------------------------------------------------------------------- the receiver itself


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    return httpx.post(url, content=body, headers={"Content-Type": "application/json", **headers}).status_code


def test_receiver_cli_rejects_unsigned_and_badly_signed() -> None:
    proc = subprocess.Popen(
        [PYTHON, "-m", "simulators", "workflow", "--listen", "127.0.0.1:0", "--secret", SECRET],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("workflow: listening on 127.0.0.1:"), line
        url = "http://" + line.rsplit(" ", 1)[1]
        body = json.dumps({"event_id": "e1", "kind": "fire_event", "subject_id": "f1", "type": "opened"}).encode()
        now = int(time.time())
        good = {"X-Firegw-Timestamp": str(now), "X-Firegw-Signature": sign(SECRET, now, body)}
        assert _post(url, body, {}) == 401
        assert _post(url, body, {"X-Firegw-Timestamp": str(now), "X-Firegw-Signature": sign("wrong", now, body)}) == 401
        assert _post(url, body + b" ", good) == 401  # body changed after signing
        old = now - 3600
        assert _post(url, body, {"X-Firegw-Timestamp": str(old), "X-Firegw-Signature": sign(SECRET, old, body)}) == 401
        assert (
            _post(
                url,
                b"{not json",
                {"X-Firegw-Timestamp": str(now), "X-Firegw-Signature": sign(SECRET, now, b"{not json")},
            )
            == 400
        )
        assert httpx.get(url + "/received").json() == []
        assert _post(url, body, good) == 200
        assert _post(url, body, good) == 200  # a redelivery: accepted, recorded once
        assert [b["event_id"] for b in httpx.get(url + "/received").json()] == ["e1"]
        stats = httpx.get(url + "/stats").json()
        assert (stats["unauthorized"], stats["duplicates"], stats["accepted"]) == (4, 1, 1)
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        if proc.stdout is not None:
            proc.stdout.close()


class _FakeApi(BaseHTTPRequestHandler):
    calls: ClassVar[list[tuple[str, dict[str, Any], str | None]]] = []

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.calls.append((self.path, body, self.headers.get("Authorization")))
        data = b'{"records": [], "subject": {}}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_ack_resolve_answers_through_the_api(store: Store) -> None:
    api = ThreadingHTTPServer(("127.0.0.1", 0), _FakeApi)
    _FakeApi.calls = []
    threading.Thread(target=api.serve_forever, daemon=True).start()
    cat = _catalog()
    book = Book(cat)
    try:
        with Receiver(
            secret=SECRET,
            scenario="ack-resolve",
            api=f"http://127.0.0.1:{api.server_address[1]}",
            token="operator-token-123",
        ) as receiver:
            run = RunningInThread(notifier := _notifier(_settings(receiver.url), cat, store), name="notifier")
            try:
                fire = book.fires(1)[:1]
                hazard = book.hazards(["r1"])[:1]
                _write(store, fire + hazard, ["webhook"], notifier)
                wait_for(lambda: len(_FakeApi.calls) == 7, 10, "the workflow's answers")
            finally:
                run.stop()
    finally:
        api.shutdown()
        api.server_close()
    fid, hid = fire[0][0].subject_id, hazard[0][0].subject_id
    paths = [c[0] for c in _FakeApi.calls]
    assert [p for p in paths if fid in p] == [f"/api/v1/events/{fid}/acknowledge", f"/api/v1/events/{fid}/resolve"]
    assert [p for p in paths if hid in p] == [
        f"/api/v1/hazards/{hid}/{a}" for a in ("confirm", "dispatch", "start", "rectified", "close")
    ]
    assert all(c[2] == "Bearer operator-token-123" for c in _FakeApi.calls)
    bodies = {c[0].rsplit("/", 1)[1]: c[1] for c in _FakeApi.calls}
    assert bodies["resolve"]["resolution"] == "false_alarm" and bodies["close"]["note"]


# ----------------------------------------------------------------------------- MQTT


class _Sub:
    """A paho subscriber collecting (topic, payload, retain)."""

    def __init__(self, broker: Mosquitto, topic: str) -> None:
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:8]}"
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(5)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.topic, json.loads(msg.payload), bool(msg.retain)))

    def got(self) -> list[tuple[str, dict[str, Any], bool]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _retained_code(broker: Mosquitto, topic: str) -> dict[str, Any]:
    sub = _Sub(broker, topic)
    try:
        got = wait_for(lambda: [m for m in sub.got() if m[2]], 5, f"a retained message on {topic}")
        return got[-1][1]
    finally:
        sub.close()


def test_mqtt_events_hazards_and_retained_site_code(store: Store, broker: Mosquitto) -> None:
    cat = _catalog()
    health = Health()
    book = Book(cat)
    events = _Sub(broker, "grid/#")
    notifier = _notifier(_settings(mqtt_url=broker.url), cat, store, health)
    assert notifier.destinations() == ["mqtt"]
    run = RunningInThread(notifier, name="notifier")
    try:
        stage: Stage = health.stage("notify:mqtt")
        wait_for(lambda: stage.connected, 10, "the notifier connected")
        fire_steps = book.fires(1)
        hazard_steps = book.hazards(["r1"])
        records = _write(store, fire_steps + hazard_steps, ["mqtt"], notifier)
        wait_for(lambda: stage.counters.get("delivered", 0) == len(records), 10, "every row published")
        msgs = [m for m in events.got() if not m[0].endswith("/code")]
        assert {m[0] for m in msgs if m[1]["kind"] == "fire_event"} == {"grid/T/S1/events"}
        assert {m[0] for m in msgs if m[1]["kind"] == "hazard"} == {"grid/T/S1/hazards"}
        assert _by_subject([m[1] for m in msgs]) == _expected(records)
        # a fresh subscriber gets each site's current code, retained
        now = int(time.time() * 1000)
        want = {s["site_id"]: s["code"] for s in site_summaries(cat, WorkflowStore(store.conn), now)}
        assert want["S1"] == "yellow"
        wait_for(lambda: _retained_code(broker, "grid/T/S1/code")["code"] == "yellow", 10, "S1 code yellow")
        code = _retained_code(broker, "grid/T/S1/code")
        assert set(code) == {"site_id", "code", "reason_zh", "reason_en", "next_inspection_due", "at"}
        assert code["site_id"] == "S1" and "Pump cabinet in manual" in code["reason_en"]
        assert _retained_code(broker, "grid/镇B/S2/code")["code"] == "green"  # published once on connect
        # closing the hazard (销号) brings the site back to green
        hid = hazard_steps[0][0].subject_id
        records += _write(store, book.close_hazards([hid]), ["mqtt"], notifier)
        wait_for(lambda: stage.counters.get("delivered", 0) == len(records), 10, "the closing rows published")
        wait_for(lambda: _retained_code(broker, "grid/T/S1/code")["code"] == "green", 10, "S1 code green")
    finally:
        run.stop()
        events.close()
    assert all(d is not None for _, d, _, _ in _outbox(store.path, "mqtt"))
