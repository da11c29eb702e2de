"""A broker with TLS and password authentication, and one with mutual TLS; certificates made by the
test with openssl. The first tests use the flat environment keys of earlier versions
(``FIREGW_MQTT__CA_FILE``), the mutual-TLS test the ``tls`` block's (``FIREGW_MQTT__TLS__CA_FILE``)."""

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
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.crt",
        cwd=d,
    )


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, Path]]:
    certs = tmp_path / "broker" / "certs"
    certs.mkdir(parents=True)
    _make_ca(certs, "ca")
    _make_ca(certs, "rogue-ca")
    (certs / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        cwd=certs,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
        "-out",
        "server.crt",
        cwd=certs,
    )
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(certs / "passwd"), "firegw", "s3cret-pass"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    m = Mosquitto(
        tmp_path / "broker",
        port=free_port(),
        extra_config="\n".join(
            [
                f"listener {port} 127.0.0.1",
                f"cafile {certs}/ca.crt",
                f"certfile {certs}/server.crt",
                f"keyfile {certs}/server.key",
                "allow_anonymous false",
                f"password_file {certs}/passwd",
                "per_listener_settings false",
            ]
        ),
    )
    m.tls_port = port
    m.start()
    m._wait_listening(port, 10)
    yield m, certs
    m.stop()


def _gw(tmp_path: Path, m: Mosquitto, ca: Path, password: str) -> GatewayProc:
    inv = tmp_path / "inv.yaml"
    write_inventory(inv, 8)
    return GatewayProc(
        tmp_path / f"gw-{ca.stem}-{password}",
        env={
            "FIREGW_MQTT__URL": f"mqtts://127.0.0.1:{m.tls_port}",
            "FIREGW_MQTT__CA_FILE": str(ca),
            "FIREGW_MQTT__USERNAME": "firegw",
            "FIREGW_MQTT__PASSWORD": password,
            "FIREGW_INVENTORY": str(inv),
        },
    )


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


def test_refuses_broker_whose_certificate_does_not_verify(tmp_path: Path, tls_broker: tuple[Mosquitto, Path]) -> None:
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


@pytest.fixture
def mtls_broker(tmp_path: Path, tls_broker: tuple[Mosquitto, Path]) -> Iterator[tuple[Mosquitto, Path]]:
    """A second listener that wants a client certificate signed by the CA and takes its CN as the user."""
    _, certs = tls_broker
    for name in ("firegw", "tester"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=certs,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            f"{name}.crt",
            cwd=certs,
        )
    port = free_port()
    m = Mosquitto(
        tmp_path / "mtls-broker",
        port=free_port(),
        extra_config="\n".join(
            [
                f"listener {port} 127.0.0.1",
                f"cafile {certs}/ca.crt",
                f"certfile {certs}/server.crt",
                f"keyfile {certs}/server.key",
                "require_certificate true",
                "use_identity_as_username true",
                "allow_anonymous false",
                "per_listener_settings false",
            ]
        ),
    )
    m.tls_port = port
    m.start()
    m._wait_listening(port, 10)
    yield m, certs
    m.stop()


def test_mutual_tls_with_the_tls_block_and_the_events_publisher_inherits_it(
    tmp_path: Path, mtls_broker: tuple[Mosquitto, Path]
) -> None:
    """The source and the events publisher (no events_mqtt.url: the source's broker) both present
    the client certificate of mqtt.tls; set with the nested variables of the one TLS shape."""
    m, certs = mtls_broker
    inv = tmp_path / "inv.yaml"
    write_inventory(inv, 8)
    gw = GatewayProc(
        tmp_path / "gw-mtls",
        env={
            "FIREGW_MQTT__URL": f"mqtts://127.0.0.1:{m.tls_port}",
            "FIREGW_MQTT__TLS__CA_FILE": str(certs / "ca.crt"),
            "FIREGW_MQTT__TLS__CERT_FILE": str(certs / "firegw.crt"),
            "FIREGW_MQTT__TLS__KEY_FILE": str(certs / "firegw.key"),
            "FIREGW_EVENTS_MQTT__ENABLED": "true",
            "FIREGW_INVENTORY": str(inv),
        },
    ).start()
    codes: list[str] = []
    sub = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="tls-sub")
    sub.tls_set(
        ca_certs=str(certs / "ca.crt"),
        certfile=str(certs / "tester.crt"),
        keyfile=str(certs / "tester.key"),
        cert_reqs=ssl.CERT_REQUIRED,
    )
    sub.on_message = lambda _c, _u, msg: codes.append(msg.topic)
    try:
        sub.connect("127.0.0.1", m.tls_port or 0)
        sub.subscribe("grid/+/+/code", qos=1)
        sub.loop_start()
        # the publisher sends every site's code (retained) once it is connected
        wait_for(lambda: len(codes) > 0, 20, "a site code published over mutual TLS")
        inv_text = inv.read_text()
        dev = next(line.split(":", 1)[1].strip() for line in inv_text.splitlines() if "device_id: button" in line)
        site = next(line.split(":", 1)[1].strip() for line in inv_text.splitlines() if "site_id:" in line)
        body = {"ts": time.time(), "event": "heartbeat", "battery": 90, "rssi": -70}
        sub.publish(f"fire/{site}/button/{dev}/up", json.dumps(body), qos=1).wait_for_publish(10)
        wait_for(lambda: store_stats(gw.db).get("messages") == 1, 20, "the message over mutual TLS stored")
    finally:
        sub.disconnect()
        sub.loop_stop()
        assert gw.stop() == 0
