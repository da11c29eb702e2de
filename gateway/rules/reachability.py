"""Reachability: whether the gateway hears from a device, its link and its own sources.

A device is ``offline`` (rule ``offline``, one condition per device) while its no-data timer has
expired (:class:`TrackedDevice`: nothing received for ``timeout_ms``) or its source reported it unreachable.
When a Modbus link is down (status changes that carry ``link``) the devices behind it give one
``link_down`` condition with ``device_id`` = the link name instead. A device that answers but refuses
the registers of some points (status change ``points_unreadable`` from the Modbus source) gives one
``points_unreadable`` condition, whatever the number of points, until ``points_readable``. While the
gateway's own source (``on_source``) is down, one ``source_down`` condition stands for it and the
offline state of its devices is frozen; when it comes back their no-data timers restart from that
moment.

The no-data timer of a device is re-armed only when it falls due (a reading just stores its receive
time in ``last_rx``), so 100,000 devices cost one heap entry each and a tick O(due timers).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.profiles.models import Device as DeviceSpec
from gateway.rules.context import DeviceState, RuleContext, hazard_meta
from gateway.rules.effects import Condition, Effect, Evidence
from gateway.rules.spec import Title

__all__ = ["POINTS_UNREADABLE", "Reachability", "TrackedDevice", "heard_again", "link_of", "sync_offline"]

#: One condition per device whose points the source cannot read (the device refuses their registers).
POINTS_UNREADABLE = hazard_meta(
    "points_unreadable",
    "fault",
    "minor",
    Title(
        zh="设备部分测点无法读取（设备不提供其寄存器）",
        en="Some points of the device cannot be read (the device refuses their registers)",
    ),
    False,
    False,
)


def link_of(device: DeviceSpec) -> str | None:
    """The link name the Modbus source uses for a device: host:port, or the serial port for RTU."""
    b = device.modbus
    return None if b is None else (b.serial_port if b.framer == "rtu" else f"{b.host}:{b.port}")


class TrackedDevice(DeviceState):
    """A device with its no-data timer: silent once nothing was received for ``timeout_ms``."""

    __slots__ = ()

    def fire(self, ctx: RuleContext, now_ms: int, out: list[Effect]) -> None:
        if self.source in ctx.sources_down:
            ctx.arm(self, now_ms + self.timeout_ms)  # frozen while the gateway's own source is down
            return
        base = max(self.last_rx, ctx.source_up_at.get(self.source, 0))
        if base + self.timeout_ms > now_ms:
            ctx.arm(self, base + self.timeout_ms)  # heard from since it was armed: lazy re-arm
            return
        self.silent = True
        sync_offline(ctx, self, now_ms, out)


def sync_offline(ctx: RuleContext, dev: DeviceState, at_ms: int, out: list[Effect]) -> None:
    """Raise or end the device's ``offline`` condition to match its silent/unreachable state."""
    if dev.source in ctx.sources_down:
        return  # nothing is known about its devices while the gateway's own source is down
    want = (dev.silent or dev.unreachable) and dev.link_down is None
    if want != dev.offline_on:
        dev.offline_on = want
        ev: list[Evidence] = [{"silent": dev.silent, "unreachable": dev.unreachable, "last_received_ms": dev.last_rx}]
        ctx.condition(dev, dev.offline_meta, want, at_ms, None, ev, out)


def heard_again(ctx: RuleContext, dev: DeviceState, ts_ms: int, rx_ms: int, out: list[Effect]) -> None:
    """A silent device sent a reading (device time ``ts_ms``, received at ``rx_ms``)."""
    dev.silent = False
    sync_offline(ctx, dev, ts_ms, out)
    if not dev.due:
        ctx.arm(dev, rx_ms + dev.timeout_ms)


class Reachability:
    """Links and sources: which are down, which devices sit behind each link.

    Args:
        devices: every device by id (shared with the engine).
        counters: the engine's counters (``unknown_device`` counts status changes of unknown devices).
    """

    __slots__ = ("counters", "devices", "link_members", "links_down", "source_up_at", "sources_down")

    def __init__(self, devices: dict[str, TrackedDevice], counters: dict[str, int]) -> None:
        self.devices = devices
        self.counters = counters
        self.sources_down: set[str] = set()
        self.source_up_at: dict[str, int] = {}
        self.links_down: set[str] = set()
        self.link_members: dict[str, list[DeviceState]] = {}
        for dev in devices.values():
            if dev.link is not None:
                self.link_members.setdefault(dev.link, []).append(dev)

    def start(self, ctx: RuleContext, now_ms: int) -> None:
        """The engine's first call: every device's no-data period starts now."""
        for dev in self.devices.values():
            if dev.timeout_ms:
                dev.last_rx = max(dev.last_rx, now_ms)
                ctx.arm(dev, now_ms + dev.timeout_ms)

    def join_link(self, dev: DeviceState, link: str) -> None:
        members = self.link_members.setdefault(link, [])
        if dev not in members:
            members.append(dev)

    def on_status(self, ctx: RuleContext, changes: Iterable[Any], now_ms: int, out: list[Effect]) -> None:
        """See :meth:`gateway.rules.engine.RuleEngine.on_status`."""
        touched: set[str] = set()
        for ch in changes:
            dev = self.devices.get(ch.device_id)
            if dev is None:
                self.counters["unknown_device"] += 1
                continue
            if ch.status in ("points_unreadable", "points_readable"):
                ctx.condition(
                    dev,
                    POINTS_UNREADABLE,
                    ch.status == "points_unreadable",
                    ch.at_ms,
                    None,
                    [{"reason": ch.reason}],
                    out,
                )
                continue
            touched.add(dev.device_id)
            if ch.status == "unreachable":
                dev.unreachable = True
                if ch.link is not None:
                    dev.link_down = ch.link
                    self.join_link(dev, ch.link)
                    if ch.link not in self.links_down:
                        self.links_down.add(ch.link)
                        self._link_cond(ctx, ch.link, True, ch.at_ms, ch.reason, out)
                continue
            dev.unreachable = False
            link = dev.link_down
            if link is not None and link in self.links_down:
                # the link is back: its devices count as reachable and silent ones get a fresh no-data period
                self.links_down.discard(link)
                for other in self.link_members.get(link, []):
                    if other.link_down == link:
                        other.link_down, other.unreachable, other.silent = None, False, False
                        other.last_rx = max(other.last_rx, now_ms)
                        if other.timeout_ms and not other.due:
                            ctx.arm(other, now_ms + other.timeout_ms)
                        touched.add(other.device_id)
                self._link_cond(ctx, link, False, ch.at_ms, ch.reason, out)
            dev.link_down = None
        for device_id in sorted(touched):
            sync_offline(ctx, self.devices[device_id], now_ms, out)

    def _link_cond(self, ctx: RuleContext, link: str, active: bool, at_ms: int, reason: str, out: list[Effect]) -> None:
        members = self.link_members.get(link, [])
        sites = sorted({d.site_id for d in members})
        title = Title(zh=f"通信链路中断（{link}）", en=f"Communication link down ({link})")
        meta = hazard_meta("link_down", "offline", "major", title, False, False)
        ev: list[Evidence] = [{"link": link, "reason": reason, "devices": [d.device_id for d in members]}]
        for s in sites:
            ctx.site_condition(s, link, meta, active, at_ms, ev, out)

    def on_source(self, source_name: str, connected: bool, now_ms: int, out: list[Effect]) -> None:
        """See :meth:`gateway.rules.engine.RuleEngine.on_source`."""
        down = source_name in self.sources_down
        if connected and down:
            self.sources_down.discard(source_name)
            self.source_up_at[source_name] = now_ms
            out.append(self._source_cond(source_name, False, now_ms))
        elif not connected and not down:
            self.sources_down.add(source_name)
            out.append(self._source_cond(source_name, True, now_ms))

    @staticmethod
    def _source_cond(source: str, active: bool, at_ms: int) -> Condition:
        return Condition(
            "",
            source,
            "source_down",
            active,
            at_ms,
            "gateway",
            "major",
            f"网关数据源中断（{source}）",
            f"Gateway source down ({source})",
            False,
            False,
            [{"source": source}],
        )
