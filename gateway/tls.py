"""One TLS client context from a section's ``tls`` block, for every client the gateway opens.

:func:`client_context` turns :class:`~gateway.settings.TlsSettings` into an :class:`ssl.SSLContext`
that paho (``tls_set_context``), httpx (``verify=``) and influxdb-client (``ssl_context=``) all
take, so the MQTT source, the events publisher, the webhook and the Influx sink check servers the
same way and all accept a client certificate:

- ``ca_file`` unset: the system's CAs and certifi's bundle (what urllib3 and paho, and what httpx,
  trusted before each on its own);
- ``verify: false``: no certificate check at all; ``check_hostname: false``: the chain is checked,
  the name is not;
- ``cert_file`` / ``key_file``: the client certificate for mutual TLS.

Reads files: call it off the event loop. A file that cannot be loaded is a
:class:`~gateway.errors.ConfigError` naming the setting (``settings: webhook.tls.ca_file: ...``).
"""

from __future__ import annotations

import ssl

from gateway.errors import ConfigError
from gateway.settings import TlsSettings

__all__ = ["client_context"]


def client_context(tls: TlsSettings, section: str) -> ssl.SSLContext:
    """An SSL context for a client of ``section`` (its name in error messages)."""
    key = "ca_file"
    try:
        if not tls.verify:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif tls.ca_file is not None:  # this CA only
            ctx = ssl.create_default_context(cafile=str(tls.ca_file))
        else:
            import certifi

            ctx = ssl.create_default_context()
            ctx.load_verify_locations(cafile=certifi.where())
        if tls.verify:
            ctx.check_hostname = tls.check_hostname
        if tls.cert_file is not None:
            key = "cert_file"
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file is not None else None)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"settings: {section}.tls.{key}: cannot load TLS files: {exc}") from exc
    return ctx
