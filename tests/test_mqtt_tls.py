"""A broker with TLS and password authentication, certificates made by the test with openssl."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from simulators.broker import Mosquitto, free_port
from tests.support import GatewayProc, store_stats, wait_for, write_inventory


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=d)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, Path]]:
    certs = tmp_path / "broker" / "certs"
    certs.mkdir(parents=True)
    _make_ca(certs, "ca")
    _make_ca(certs, "rogue-ca")
    (certs / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
             "-out", "server.csr", cwd=certs)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.cnf", "-out", "server.crt", cwd=certs)
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(certs / "passwd"), "firegw", "s3cret-pass"], check=True,
                   capture_output=True)
    port = free_port()
    m = Mosquitto(tmp_path / "broker", port=free_port(), extra_config="\n".join([
        f"listener {port} 127.0.0.1",
        f"cafile {certs}/ca.crt", f"certfile {certs}/server.crt", f"keyfile {certs}/server.key",
        "allow_anonymous false", f"password_file {certs}/passwd", "per_listener_settings false",
    ]))
    m.tls_port = port
    m.start()
    m._wait_listening(port, 10)
    yield m, certs
    m.stop()


def _gw(tmp_path: Path, m: Mosquitto, ca: Path, password: str) -> GatewayProc:
    inv = tmp_path / "inv.yaml"
    write_inventory(inv, 8)
    return GatewayProc(tmp_path / f"gw-{ca.stem}-{password}", env={
        "FIREGW_MQTT__URL": f"mqtts://127.0.0.1:{m.tls_port}", "FIREGW_MQTT__CA_FILE": str(ca),
        "FIREGW_MQTT__USERNAME": "firegw", "FIREGW_MQTT__PASSWORD": password, "FIREGW_INVENTORY": str(inv)})


def test_connects_with_ca_and_credentials(tmp_path: Path, tls_broker: tuple[Mosquitto, Path]) -> None:
    m, certs = tls_broker
    gw = _gw(tmp_path, m, certs / "ca.crt", "s3cret-pass").start()
    try:
        inv = (tmp_path / "inv.yaml").read_text()
        dev = next(line.split(":", 1)[1].strip() for line in inv.splitlines() if "device_id: button" in line)
        site = next(line.split(":", 1)[1].strip() for line in inv.splitlines() if "site_id:" in line)
        pub = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="tls-pub")
        pub.tls_set(ca_certs=str(certs / "ca.crt"), cert_reqs=ssl.CERT_REQUIRED)
        pub.username_pw_set("firegw", "s3cret-pass")
        pub.connect("127.0.0.1", m.tls_port or 0)
        pub.loop_start()
        body = {"ts": time.time(), "event": "heartbeat", "battery": 90, "rssi": -70}
        pub.publish(f"fire/{site}/button/{dev}/up", json.dumps(body), qos=1).wait_for_publish(10)
        wait_for(lambda: store_stats(gw.db).get("messages") == 1, 20, "the message over TLS stored")
        pub.disconnect()
        pub.loop_stop()
    finally:
        assert gw.stop() == 0


def test_refuses_broker_whose_certificate_does_not_verify(tmp_path: Path,
                                                          tls_broker: tuple[Mosquitto, Path]) -> None:
    m, certs = tls_broker
    gw = _gw(tmp_path, m, certs / "rogue-ca.crt", "s3cret-pass").start(wait_ready=False)
    assert gw.wait_exit(30) == 2
    assert "certificate does not verify" in gw.log()


def test_refuses_wrong_credentials(tmp_path: Path, tls_broker: tuple[Mosquitto, Path]) -> None:
    m, certs = tls_broker
    gw = _gw(tmp_path, m, certs / "ca.crt", "wrong-pass").start(wait_ready=False)
    assert gw.wait_exit(30) == 2
    log = gw.log()
    assert "refused the connection" in log and ("Bad user name or password" in log or "Not authorized" in log), log
