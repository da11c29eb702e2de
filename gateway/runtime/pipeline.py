"""Wires the gateway: catalog → store → committer → sources, supervised, with a clean shutdown.

``Gateway.run`` returns when asked to stop (SIGINT/SIGTERM in ``firegw run``) after everything
received has been committed and acknowledged, or early with an error a person can act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.health import Health
from gateway.profiles.loader import Catalog, load_catalog
from gateway.retry import Backoff
from gateway.runtime.committer import Committer, Hooks, RetentionPolicy
from gateway.settings import GatewaySettings
from gateway.sources.base import PollBatch
from gateway.sources.mqtt import MqttSource
from gateway.store.sqlite import DEAD_LETTER_KEEP_BYTES, Store

__all__ = ["Gateway"]

logger = logging.getLogger(__name__)

HookFactory = Callable[[Catalog, GatewaySettings], Hooks]
#: What one dead letter costs at most on disk (payload prefix, reason, address, row): sizes the bound.
DEAD_LETTER_ROW_BYTES = 2 * DEAD_LETTER_KEEP_BYTES + 1_200


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (0600), atomically (a reader never sees half of it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


class Gateway:
    """One gateway process."""

    def __init__(self, settings: GatewaySettings, *, hooks_factory: HookFactory | None = None) -> None:
        self.settings = settings
        self.health = Health()
        self.catalog = load_catalog(settings.profiles_dir, settings.inventory)  # fails fast on bad files
        gc.freeze()  # the catalog and its compiled tables live for the process: keep them out of GC passes
        self._hooks_factory = hooks_factory
        self.store: Store | None = None
        self.committer: Committer | None = None
        self.mqtt: MqttSource | None = None
        self.workflow: Any = None
        self.api: Any = None
        self.forwarder: Any = None
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        store = self.store = Store(s.store.path, synchronous=s.store.synchronous).open()
        notifier = self._notifier()
        forwarder = self.forwarder = self._forwarder()
        if self._hooks_factory is not None:
            hooks: Hooks = self._hooks_factory(self.catalog, s)
        else:
            from gateway.runtime.hooks import WorkflowHooks

            hooks = self.workflow = WorkflowHooks(
                self.catalog, self.health, destinations=notifier.destinations() if notifier else ()
            )
        committer = self.committer = Committer(
            store=store,
            catalog=self.catalog,
            health=self.health,
            inbox_size=s.pipeline.inbox_size,
            max_batch=s.pipeline.max_batch,
            tick_s=s.pipeline.tick_s,
            hooks=hooks,
            max_payload_bytes=s.pipeline.max_payload_bytes,
            max_clock_skew_s=s.pipeline.max_clock_skew_s,
            retention=RetentionPolicy(
                readings_days=s.store.retention_days,
                messages_days=s.store.dedup_days,
                dead_letters_days=s.store.dead_letter_days,
                dead_letters_max_rows=int(s.store.dead_letter_max_mb * 1_048_576 // DEAD_LETTER_ROW_BYTES),
            ),
        )
        for wakeable in (notifier, forwarder):
            if wakeable is not None:
                committer.on_commit.append(wakeable.wake)
        committer.start()
        services: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {}
        if notifier is not None:
            services["notify"] = notifier.run
        if forwarder is not None:
            services["forward"] = forwarder.run
        tasks: dict[str, asyncio.Task[None]] = {}
        try:
            subs = committer.normalizer.subscriptions
            if s.mqtt.enabled and subs:
                self.mqtt = MqttSource(
                    s.mqtt,
                    subscriptions=subs,
                    sink=committer,
                    health=self.health,
                    max_payload_bytes=s.pipeline.max_payload_bytes,
                )
                committer.register_source(self.mqtt.name, self.mqtt.ack)
                await asyncio.to_thread(self.mqtt.start)
                logger.info("mqtt: subscribed to %s", ", ".join(subs))
            modbus = self._modbus_source(committer)
            if modbus is not None:
                services["modbus"] = modbus
            if s.api.enabled:
                self.api = self._api_server(committer)
                services["api"] = self.api.run
            for name, factory in services.items():
                tasks[name] = asyncio.create_task(factory(), name=name)
            self.ready.set()
            logger.info(
                "firegw: ready (%d sites, %d devices, %d profiles)",
                len(self.catalog.sites),
                len(self.catalog.devices),
                len(self.catalog.profiles),
            )
            await self._supervise(stop, services, tasks)
        finally:
            if self.api is not None:
                self.api.stop()
            for t in tasks.values():
                t.cancel()
            for t in tasks.values():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            # Stop taking messages, commit and acknowledge what was taken, then disconnect.
            await asyncio.to_thread(committer.stop)
            if self.mqtt is not None:
                await asyncio.to_thread(self.mqtt.stop)
            store.close()
            logger.info("gateway stopped")

    def _modbus_source(self, committer: Committer) -> Callable[[], Coroutine[Any, Any, None]] | None:
        has_modbus = any(p.transport == "modbus" for p in self.catalog.profiles.values()) and any(
            d.modbus is not None for d in self.catalog.inventory.devices
        )
        if not has_modbus:
            return None
        from gateway.sources.modbus import ModbusSource

        async def commit(batch: PollBatch) -> None:
            await asyncio.wrap_future(committer.submit(batch))

        source = ModbusSource(catalog=self.catalog, commit=commit, health=self.health)
        return source.run

    def _notifier(self) -> Any:
        s = self.settings
        if not s.webhook.url and not s.events_mqtt.enabled:
            return None
        from gateway.notify.worker import Notifier

        return Notifier(settings=s, catalog=self.catalog, store_path=s.store.path, health=self.health)

    def _forwarder(self) -> Any:
        s = self.settings
        if not s.influx.url:
            return None
        from gateway.sinks.forwarder import Forwarder

        return Forwarder(settings=s.influx, catalog=self.catalog, store_path=s.store.path, health=self.health)

    def _api_server(self, committer: Committer) -> Any:
        from gateway.api import ApiContext, ApiServer

        hooks = self.workflow

        async def act(
            kind: str, subject_id: str, action: str, actor: str, note: str, params: dict[str, Any]
        ) -> list[dict[str, Any]]:
            from gateway.store.workflow import event_body

            def fn(store: Store) -> list[dict[str, Any]]:
                now = int(time.time() * 1000)
                return [event_body(r) for r in hooks.act(store, kind, subject_id, action, actor, note, params, now)]

            result: list[dict[str, Any]] = await asyncio.wrap_future(committer.call(fn))
            return result

        main_loop = asyncio.get_running_loop()

        async def admin(op: str, args: dict[str, Any]) -> Any:
            now = int(time.time() * 1000)
            if op == "override":
                return await asyncio.wrap_future(
                    committer.call(
                        lambda store: hooks.set_override(
                            store,
                            args["site_id"],
                            args["code"],
                            args["reason"],
                            args["actor"],
                            args["until_ms"],
                            args["stop_business"],
                            now,
                        )
                    )
                )
            if op == "inspection":
                return await asyncio.wrap_future(
                    committer.call(
                        lambda store: hooks.record_inspection(store, args["site_id"], args["actor"], args["note"], now)
                    )
                )
            if op == "activate_profile":  # on the gateway's own loop (the API runs on a loop of its own)
                fut = asyncio.run_coroutine_threadsafe(
                    self.activate_profile(args["name"], args["yaml"], args["actor"]), main_loop
                )
                return await asyncio.wrap_future(fut)
            raise ValueError(op)

        ctx = ApiContext(
            settings=self.settings,
            health=self.health,
            catalog=lambda: self.catalog,
            act=act if hooks is not None else None,
            admin=admin if hooks is not None else None,
            static_dir=Path(__file__).resolve().parent.parent / "dashboard",
        )
        return ApiServer(ctx)

    async def activate_profile(self, name: str, text: str, actor: str) -> None:
        """Write a validated profile into the profiles folder and switch to it without a restart."""
        path = self.settings.profiles_dir / f"{name}.yaml"
        try:
            old = path.read_text(encoding="utf-8") if path.exists() else None
            _write_private(path, text)
        except OSError as exc:
            raise ConfigError(f"{path}: (file): cannot write: {exc.strerror or exc}") from exc
        try:
            catalog = await asyncio.to_thread(load_catalog, self.settings.profiles_dir, self.settings.inventory)
        except Exception:
            if old is None:
                path.unlink(missing_ok=True)
            else:
                _write_private(path, old)
            raise
        await self.reload(catalog)
        logger.info("profile %s activated by %s", name, actor)

    async def reload(self, catalog: Catalog) -> None:
        committer = self.committer
        assert committer is not None
        await asyncio.wrap_future(committer.call(lambda store: committer.reload(catalog)))
        self.catalog = catalog
        if self.forwarder is not None:
            self.forwarder.update_catalog(catalog)
        if self.mqtt is not None:
            await asyncio.to_thread(self.mqtt.resubscribe, committer.normalizer.subscriptions)

    async def _supervise(
        self,
        stop: asyncio.Event,
        services: dict[str, Callable[[], Coroutine[Any, Any, None]]],
        tasks: dict[str, asyncio.Task[None]],
    ) -> None:
        """Wait for ``stop``. A service task that ends with an error is restarted with backoff (and
        shown failing in health meanwhile); one stage failing never stops the others."""
        restart_at: dict[str, float] = {}
        backoffs = {name: Backoff(1.0, 30.0) for name in services}
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            now = time.monotonic()
            for name, task in list(tasks.items()):
                if not task.done() or name in restart_at:
                    continue
                exc = None if task.cancelled() else task.exception()
                delay = backoffs[name].next()
                self.health.stage(f"service:{name}").fail(
                    f"{name} ended ({exc!r}); restarting in {delay:.0f} s" if exc else f"{name} ended; restarting"
                )
                if exc is not None:
                    logger.error("%s failed; restarting in %.1f s", name, delay, exc_info=exc)
                restart_at[name] = now + delay
            for name, at in list(restart_at.items()):
                if now >= at and not stop.is_set():
                    del restart_at[name]
                    tasks[name] = asyncio.create_task(services[name](), name=name)
                    self.health.stage(f"service:{name}").ok()
