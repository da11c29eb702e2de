"""The API as a hostile client and a careless installation meet it: secure by default, bounded bodies and
connections, expensive requests in a sandbox, and never a 500 for bad input. Against real gateway processes."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from simulators.broker import Mosquitto, free_port
from tests.support import PROFILES, PYTHON, ROOT, GatewayProc, run_fleet, wait_for, write_inventory

ADMIN = "hardening-admin-token-0123456789"
OPERATOR = "hardening-operator-token-0123456789"


def _up(base: str) -> bool:
    try:
        return httpx.get(base + "/openapi.json", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _gateway(tmp: Path, broker: Mosquitto, *, tokens: bool, **env: str) -> GatewayProc:
    inv = tmp / "inventory.yaml"
    write_inventory(inv, 8)
    profiles = tmp / "profiles"
    shutil.copytree(PROFILES, profiles)
    e = {"FIREGW_MQTT__URL": broker.url, "FIREGW_INVENTORY": str(inv), "FIREGW_PROFILES_DIR": str(profiles),
         "FIREGW_MQTT__CLIENT_ID": f"hard-{free_port()}", "FIREGW_API__LISTEN": f"127.0.0.1:{free_port()}",
         "FIREGW_API__MAX_BODY_BYTES": "65536", **env}
    if tokens:
        e["FIREGW_API__TOKENS"] = json.dumps([{"name": "admin", "role": "admin", "token": ADMIN},
                                              {"name": "duty", "role": "operator", "token": OPERATOR}])
    gw = GatewayProc(tmp / "gw", env=e).start()
    wait_for(lambda: _up(gw.api), 15, "API listening")
    return gw


@pytest.fixture(scope="module")
def open_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    tmp = tmp_path_factory.mktemp("open")
    broker = Mosquitto(tmp / "broker").start()
    gw = _gateway(tmp, broker, tokens=False, FIREGW_API__MAX_CONNECTIONS="32", FIREGW_API__HEADER_TIMEOUT_S="1")
    try:
        yield gw
    finally:
        gw.stop()
        broker.stop()


@pytest.fixture(scope="module")
def tok_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProc, Mosquitto]]:
    tmp = tmp_path_factory.mktemp("tokens")
    broker = Mosquitto(tmp / "broker").start()
    gw = _gateway(tmp, broker, tokens=True)
    try:
        yield gw, broker
    finally:
        gw.stop()
        broker.stop()


def _auth(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


# ---------------------------------------------------------------------------- secure by default


def test_no_tokens_serves_viewers_and_refuses_every_write(open_gw: GatewayProc) -> None:
    base = open_gw.api
    sites = httpx.get(base + "/api/v1/sites")
    assert sites.status_code == 200 and sites.json()
    assert httpx.get(base + "/api/v1/whoami").json() == {"name": "anonymous", "role": "viewer"}
    site = sites.json()[0]["site_id"]
    r = httpx.post(f"{base}/api/v1/sites/{site}/override", json={"code": "red", "reason": "test"})
    assert r.status_code == 401 and "api.tokens" in r.json()["detail"]
    r = httpx.post(f"{base}/api/v1/sites/{site}/inspection", json={})
    assert r.status_code == 401
    r = httpx.post(base + "/api/v1/profiles/activate",
                   json={"profile_yaml": (PROFILES / "onekey-alarm-button.yaml").read_text()})
    assert r.status_code == 401
    # a dry run reads nothing and writes nothing: a viewer may
    r = httpx.post(base + "/api/v1/profiles/validate",
                   json={"profile_yaml": (PROFILES / "onekey-alarm-button.yaml").read_text(),
                         "sample": '{"event": "ALARM", "ts": 1764400000}'}, timeout=30)
    assert r.status_code == 200 and r.json()["valid"] and r.json()["readings"][0]["metric"] == "fire_alarm"


def test_no_tokens_on_a_public_address_refuses_to_start(tmp_path: Path) -> None:
    env = {**GatewayProc(tmp_path).environ(), "FIREGW_API__LISTEN": f"0.0.0.0:{free_port()}"}
    env.pop("FIREGW_API__TOKENS", None)
    out = subprocess.run([PYTHON, "-m", "gateway.cli", "run"], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert "api" in out.stderr and "listen" in out.stderr and "api.tokens" in out.stderr, out.stderr


def test_security_headers_everywhere_and_no_cdn_docs(open_gw: GatewayProc) -> None:
    for path in ("/", "/app.js", "/api/v1/sites", "/api/v1/nothing-here"):
        r = httpx.get(open_gw.api + path)
        assert "default-src 'self'" in r.headers["content-security-policy"], path
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff", path
    assert httpx.get(open_gw.api + "/docs").status_code == 404
    assert "cdn" not in httpx.get(open_gw.api + "/").text.lower()


def test_streams_are_capped_per_token(open_gw: GatewayProc) -> None:
    with httpx.Client(base_url=open_gw.api, timeout=10) as client:
        opened = []
        try:
            for _ in range(4):
                cm = client.stream("GET", "/api/v1/stream")
                resp = cm.__enter__()
                assert resp.status_code == 200
                opened.append(cm)
            assert client.get("/api/v1/stream").status_code == 429
        finally:
            for cm in opened:
                cm.__exit__(None, None, None)
        wait_for(lambda: _stream_opens(client), 10, "a stream slot free again after closing")


def _stream_opens(client: httpx.Client) -> bool:
    with client.stream("GET", "/api/v1/stream") as resp:
        return resp.status_code == 200


# ---------------------------------------------------------------------------- bodies and connections


def _raw(base: str, request: bytes, read_timeout: float = 5.0) -> bytes:
    host, _, port = base.removeprefix("http://").partition(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout) as sock:
        sock.sendall(request)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            pass
        return data


def test_token_is_checked_before_the_body_is_read(tok_gw: tuple[GatewayProc, Mosquitto]) -> None:
    gw, _ = tok_gw
    head = (b"POST /api/v1/profiles/validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 300000000\r\n")
    t0 = time.monotonic()
    answer = _raw(gw.api, head + b"\r\n{")  # 300 MB announced, 1 byte sent: the answer cannot wait for the body
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    answer = _raw(gw.api, head + f"Authorization: Bearer {ADMIN}\r\n\r\n{{".encode())
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert time.monotonic() - t0 < 3


def test_body_limit_holds_for_chunked_bodies(tok_gw: tuple[GatewayProc, Mosquitto]) -> None:
    gw, _ = tok_gw

    def chunks() -> Iterator[bytes]:
        yield b'{"profile_yaml": "'
        for _ in range(100):
            yield b"x" * 4096
        yield b'"}'
    r = httpx.post(gw.api + "/api/v1/profiles/validate", content=chunks(), headers=_auth(ADMIN), timeout=10)
    assert r.status_code == 413
    r = httpx.post(gw.api + "/api/v1/profiles/validate", content=chunks(), timeout=10)
    assert r.status_code == 401


def test_idle_connections_are_bounded_and_timed_out(open_gw: GatewayProc) -> None:
    host, _, port = open_gw.api.removeprefix("http://").partition(":")
    socks = [socket.create_connection((host, int(port)), timeout=10) for _ in range(100)]
    try:
        def all_closed() -> bool:
            for s in socks:
                s.setblocking(False)
                try:
                    if s.recv(1) != b"":
                        return False
                except BlockingIOError:
                    return False
                except ConnectionResetError:
                    pass
            return True
        wait_for(all_closed, 10, "idle connections closed by the gateway (cap 32, head timeout 1 s)")
    finally:
        for s in socks:
            s.close()
    assert httpx.get(open_gw.api + "/healthz", timeout=5).status_code == 200


# ---------------------------------------------------------------------------- bad input: 4xx, never 500


def test_bad_input_is_a_4xx_never_a_500(tok_gw: tuple[GatewayProc, Mosquitto]) -> None:
    gw, broker = tok_gw
    base = gw.api
    run_fleet(broker.url, "--devices", "8", "--rate", "1", "--duration", "1", "--scenario", "button-alarm",
              "--alarm-at", "0.3")
    events = wait_for(lambda: httpx.get(base + "/api/v1/events?open=true", headers=_auth(ADMIN)).json(), 15,
                      "a fire event")
    ev = events[0]["fire_event_id"]
    cases: list[tuple[str, str, bytes]] = [
        ("POST", f"/api/v1/events/{ev}/acknowledge", b'{"note": "\\ud800"}'),
        ("POST", f"/api/v1/events/{ev}/acknowledge", b'{"note": "ok", "deadline": 1e400}'),
        ("POST", f"/api/v1/events/{ev}/acknowledge", b'{"note": "ok", "deadline": "0001-01-01T00:00:00"}'),
        ("GET", "/api/v1/readings?device=x&since=0001-01-01T00:00:00", b""),
        ("GET", "/api/v1/readings?device=x&since=9999-12-31T23:59:59", b""),
        ("POST", "/api/v1/profiles/validate", json.dumps({"profile_yaml": "a: " + "[" * 100_000}).encode()),
        ("POST", "/api/v1/profiles/validate", json.dumps({"profile_yaml": "- " * 20_000 + "x"}).encode()),
        ("POST", "/api/v1/profiles/activate", json.dumps({"profile_yaml": (PROFILES / "onekey-alarm-button.yaml")
                                                          .read_text().replace("profile: onekey-alarm-button",
                                                                               "profile: a" + "b" * 300)}).encode()),
        ("POST", "/api/v1/sites/nope/override", b'{"code": "red", "reason": "\\udfff"}'),
    ]
    for method, path, body in cases:
        r = httpx.request(method, base + path, content=body or None, timeout=30,
                          headers={**_auth(ADMIN), "Content-Type": "application/json"})
        assert 400 <= r.status_code < 500, f"{method} {path} {body[:60]!r} -> {r.status_code} {r.text[:200]}"
    assert "Traceback" not in gw.log()


def _big_profile(points: int) -> str:
    """A legal but heavy profile: thousands of points (the biggest shipped one has 40)."""
    head = (PROFILES / "pipe-pressure-sensor.yaml").read_text().split("points:")[0]
    body = "".join(f"  - {{name: p{i}, class: analog, type: float, unit: MPa, path: v{i}, range: [0, 2], "
                   f"labels: {{zh: 压力{i}, en: Pressure {i}}}}}\n" for i in range(points))
    return head + "points:\n" + body


def test_heavy_dry_runs_never_stall_the_api(tok_gw: tuple[GatewayProc, Mosquitto]) -> None:
    gw, _ = tok_gw
    import threading

    heavy = _big_profile(450)  # about 60 KB: under this gateway's 64 KiB body limit
    results: list[int] = []

    def post() -> None:
        r = httpx.post(gw.api + "/api/v1/profiles/validate", json={"profile_yaml": heavy}, headers=_auth(ADMIN),
                       timeout=60)
        results.append(r.status_code)
    threads = [threading.Thread(target=post) for _ in range(6)]
    for t in threads:
        t.start()
    worst = 0.0
    while any(t.is_alive() for t in threads):
        s = time.monotonic()
        assert httpx.get(gw.api + "/healthz", headers=_auth(ADMIN), timeout=5).status_code == 200
        worst = max(worst, time.monotonic() - s)
        time.sleep(0.05)
    for t in threads:
        t.join()
    # six at once: one runs, four wait, the rest are told to come back (429); none is a 500
    assert set(results) <= {200, 422, 429} and 200 in results, results
    assert worst < 1.0, f"the API stalled {worst:.2f} s during heavy dry runs"


def test_failed_authentications_are_logged_but_not_per_request(tok_gw: tuple[GatewayProc, Mosquitto]) -> None:
    gw, _ = tok_gw
    for _ in range(30):
        assert httpx.get(gw.api + "/api/v1/sites", headers=_auth("not-a-token-at-all")).status_code == 401
    lines = wait_for(lambda: [ln for ln in gw.log().splitlines() if "failed authentication" in ln], 5,
                     "a log line about failed authentications")
    assert 1 <= len(lines) <= 2, lines


# ---------------------------------------------------------------------------- the API as a guest


def test_taken_api_port_never_stops_ingestion(tmp_path: Path, broker: Mosquitto) -> None:
    port = free_port()
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", port))
    squatter.listen(1)
    inv = tmp_path / "inventory.yaml"
    write_inventory(inv, 8)
    gw = GatewayProc(tmp_path / "gw", env={"FIREGW_MQTT__URL": broker.url, "FIREGW_INVENTORY": str(inv),
                                           "FIREGW_MQTT__CLIENT_ID": "taken",
                                           "FIREGW_API__LISTEN": f"127.0.0.1:{port}"})
    gw.start()
    try:
        run_fleet(broker.url, "--devices", "8", "--rate", "2", "--duration", "1")
        wait_for(lambda: gw.cli("stats")["messages"] > 0, 15, "messages ingested with the API port taken")
        first = gw.cli("stats")["messages"]
        run_fleet(broker.url, "--devices", "8", "--rate", "2", "--duration", "1")
        wait_for(lambda: gw.cli("stats")["messages"] > first, 15, "messages still growing")
        assert "cannot listen on" in gw.log() and "ingestion goes on" in gw.log()
        assert gw.proc is not None and gw.proc.poll() is None
        squatter.close()
        wait_for(lambda: _up(f"http://127.0.0.1:{port}"), 40, "the API up once the port is free, with no restart")
        assert gw.runs == 1
    finally:
        squatter.close()
        gw.stop()


def test_dead_letters_are_bounded_in_the_store_and_in_a_page(tmp_path: Path, broker: Mosquitto) -> None:
    from tests.support import Publisher

    inv = tmp_path / "inventory.yaml"
    write_inventory(inv, 8)
    gw = GatewayProc(tmp_path / "gw", env={"FIREGW_MQTT__URL": broker.url, "FIREGW_INVENTORY": str(inv),
                                           "FIREGW_MQTT__CLIENT_ID": "junk"}).start()
    topic = yaml.safe_load(inv.read_text())["devices"][0]
    cat_topic = _topic_of(topic)
    pub = Publisher(broker.url)
    try:
        for _ in range(12):
            pub.publish(cat_topic, b'{"event": "heartbeat", "pad": "' + b"x" * 3_000_000 + b'"}')
        rows = wait_for(lambda: [r for r in gw.cli("dead-letters") if r["size"] > 3_000_000], 30,
                        "oversized payloads dead-lettered")
        assert all(len(r["payload"]) <= 4096 and r["truncated"] for r in rows)
        assert gw.db.stat().st_size < 20_000_000, "the store grew by the junk it was sent"
        page = httpx.get(gw.api + "/api/v1/dead-letters?limit=1000", timeout=10)
        assert page.status_code == 200 and len(page.content) < 1_100_000
    finally:
        pub.close()
        gw.stop()


def _topic_of(device: dict[str, str]) -> str:
    prof = yaml.safe_load((PROFILES / f"{device['profile']}.yaml").read_text())
    topic: str = prof["mqtt"]["topic"]
    return topic.replace("{site_id}", device["site_id"]).replace("{device_id}", device["device_id"])
