"""The API's server as a hostile client and a careless installation meet it, against real gateway processes:
what needs a real socket, a real server or the whole gateway. A public address with no tokens refuses to
start; the token is checked before a body is read off the socket; idle and slow connections are capped
and timed out (the accept gate holds a flood in the kernel); heavy dry runs never stall the API; a taken
port never stops ingestion; junk payloads are bounded in the store and in a page.

What the app does with a request (auth for every route, 4xx for bad input, headers, body limits, the
stream cap, failed logins logged once) is tested in-process in ``test_api.py``."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from simulators.broker import Mosquitto, free_port
from tests.e2e.test_api_live import api_up, live_gateway
from tests.support import PROFILES, PYTHON, ROOT, GatewayProc, run_fleet, wait_for, write_inventory

ADMIN = "hardening-admin-token-0123456789"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    """One gateway for the server's tests: a token, bodies up to 64 KiB, at most 32 connections, 1 s for
    a request head."""
    with live_gateway(
        tmp_path_factory.mktemp("server"),
        {"admin": ("admin", ADMIN)},
        devices=8,
        FIREGW_API__MAX_BODY_BYTES="65536",
        FIREGW_API__MAX_CONNECTIONS="32",
        FIREGW_API__HEADER_TIMEOUT_S="1",
    ) as live:
        yield live.gw


def _auth(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


# ---------------------------------------------------------------------------- a careless installation


def test_no_tokens_on_a_public_address_refuses_to_start(tmp_path: Path) -> None:
    env = {**GatewayProc(tmp_path).environ(), "FIREGW_API__LISTEN": f"0.0.0.0:{free_port()}"}
    env.pop("FIREGW_API__TOKENS", None)
    out = subprocess.run(
        [PYTHON, "-m", "gateway.cli", "run"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert "api" in out.stderr and "listen" in out.stderr and "api.tokens" in out.stderr, out.stderr


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


def test_token_is_checked_before_the_body_is_read_off_the_socket(gw: GatewayProc) -> None:
    head = (
        b"POST /api/v1/profiles/validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 300000000\r\n"
    )
    t0 = time.monotonic()
    answer = _raw(gw.api, head + b"\r\n{")  # 300 MB announced, 1 byte sent: the answer cannot wait for the body
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    answer = _raw(gw.api, head + f"Authorization: Bearer {ADMIN}\r\n\r\n{{".encode())
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert time.monotonic() - t0 < 3


def test_idle_connections_are_bounded_and_timed_out(gw: GatewayProc) -> None:
    host, _, port = gw.api.removeprefix("http://").partition(":")
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
    assert httpx.get(gw.api + "/healthz", headers=_auth(ADMIN), timeout=5).status_code == 200
    # at the cap the accept gate stopped taking connections (the kernel held the rest), and said so once
    assert gw.log().count("the cap: not accepting more until some close") == 1


# ---------------------------------------------------------------------------- the API as a guest


def _big_profile(points: int) -> str:
    """A legal but heavy profile: thousands of points (the biggest shipped one has 40)."""
    head = (PROFILES / "pipe-pressure-sensor.yaml").read_text().split("points:")[0]
    body = "".join(
        f"  - {{name: p{i}, class: analog, type: float, unit: MPa, path: v{i}, range: [0, 2], "
        f"labels: {{zh: 压力{i}, en: Pressure {i}}}}}\n"
        for i in range(points)
    )
    return head + "points:\n" + body


def test_heavy_dry_runs_never_stall_the_api(gw: GatewayProc) -> None:
    heavy = _big_profile(450)  # about 60 KB: under this gateway's 64 KiB body limit
    results: list[int] = []

    def post() -> None:
        r = httpx.post(
            gw.api + "/api/v1/profiles/validate", json={"profile_yaml": heavy}, headers=_auth(ADMIN), timeout=60
        )
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


def test_taken_api_port_never_stops_ingestion(tmp_path: Path, broker: Mosquitto) -> None:
    port = free_port()
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", port))
    squatter.listen(1)
    inv = tmp_path / "inventory.yaml"
    write_inventory(inv, 8)
    gw = GatewayProc(
        tmp_path / "gw",
        env={
            "FIREGW_MQTT__URL": broker.url,
            "FIREGW_INVENTORY": str(inv),
            "FIREGW_MQTT__CLIENT_ID": "taken",
            "FIREGW_API__LISTEN": f"127.0.0.1:{port}",
        },
    )
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
        wait_for(lambda: api_up(f"http://127.0.0.1:{port}"), 40, "the API up once the port is free, with no restart")
        assert gw.runs == 1
    finally:
        squatter.close()
        gw.stop()


def test_dead_letters_are_bounded_in_the_store_and_in_a_page(tmp_path: Path, broker: Mosquitto) -> None:
    from tests.support import Publisher

    inv = tmp_path / "inventory.yaml"
    write_inventory(inv, 8)
    gw = GatewayProc(
        tmp_path / "gw",
        env={"FIREGW_MQTT__URL": broker.url, "FIREGW_INVENTORY": str(inv), "FIREGW_MQTT__CLIENT_ID": "junk"},
    ).start()
    topic = yaml.safe_load(inv.read_text())["devices"][0]
    cat_topic = _topic_of(topic)
    pub = Publisher(broker.url)
    try:
        for _ in range(12):
            pub.publish(cat_topic, b'{"event": "heartbeat", "pad": "' + b"x" * 3_000_000 + b'"}')
        rows = wait_for(
            lambda: [r for r in gw.cli("dead-letters") if r["size"] > 3_000_000], 30, "oversized payloads dead-lettered"
        )
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
