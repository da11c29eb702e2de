"""One paho client builder for every MQTT connection: the MQTT source and the events publisher.

:func:`build_client` sets what both need the same way: MQTT version, client id, credentials, TLS
(the section's ``tls`` block through :func:`gateway.tls.client_context`) and paho's reconnect delay
(a :class:`~gateway.retry.Backoff`: paho doubles from a jittered first delay up to the cap).
:func:`jitter_reconnect` draws a new first delay; call it on every disconnect, so a fleet of
gateways does not reconnect in lock-step after a broker restart. Callbacks, connecting and the
network loop stay with the caller (``sources/mqtt.py``, ``notify/mqtt_out.py``), as do paho's
exceptions: a TLS file that cannot be loaded is a :class:`~gateway.errors.ConfigError`.
"""

from __future__ import annotations

from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.retry import Backoff
from gateway.settings import TlsSettings
from gateway.tls import client_context

__all__ = ["build_client", "jitter_reconnect"]


def build_client(
    *,
    section: str,
    client_id: str,
    protocol: Literal["5", "3.1.1"],
    username: str | None,
    password: str | None,
    secure: bool,
    tls: TlsSettings,
    reconnect: Backoff,
    manual_ack: bool = False,
) -> paho.Client:
    """A paho client, not connected yet. ``section``: the settings section, named in errors.

    Under MQTT 3.1.1 the session is persistent (``clean_session=False``); under MQTT 5 the caller
    chooses with ``clean_start`` when it connects. ``secure``: TLS with ``tls`` (reads its files:
    call this off the event loop).
    """
    version = MQTTProtocolVersion.MQTTv5 if protocol == "5" else MQTTProtocolVersion.MQTTv311
    kwargs: dict[str, Any] = {
        "callback_api_version": CallbackAPIVersion.VERSION2,
        "client_id": client_id,
        "protocol": version,
        "manual_ack": manual_ack,
    }
    if version == MQTTProtocolVersion.MQTTv311:
        kwargs["clean_session"] = False
    client = paho.Client(**kwargs)
    if username is not None:
        client.username_pw_set(username, password)
    if secure:
        client.tls_set_context(client_context(tls, section))  # the context's check_hostname rules paho's too
    jitter_reconnect(client, reconnect)
    return client


def jitter_reconnect(client: paho.Client, reconnect: Backoff) -> None:
    """A new jittered first reconnect delay for ``client`` (paho doubles it up to ``reconnect.max_s``)."""
    # paho annotates the delays as int; it only compares and doubles them, fractions are fine
    client.reconnect_delay_set(min_delay=reconnect.delay(1), max_delay=reconnect.max_s)  # type: ignore[arg-type]
