"""Remote time-series sinks fed by the store-and-forward :class:`~gateway.sinks.forwarder.Forwarder`.

``influx`` encodes readings as InfluxDB line protocol and writes them through ``influxdb-client``
(``api: v2``: InfluxDB 2.x/3.x, VictoriaMetrics) or the InfluxDB 1.x ``/write`` endpoint
(``api: v1``). The forwarder reads committed readings from the embedded store in ``seq`` order and
advances a durable cursor per sink only after the sink confirms.
"""

from __future__ import annotations

from gateway.sinks.forwarder import Forwarder
from gateway.sinks.influx import QUALITY_CODES, InfluxSink, LineEncoder, RejectedLines

__all__ = ["QUALITY_CODES", "Forwarder", "InfluxSink", "LineEncoder", "RejectedLines"]
