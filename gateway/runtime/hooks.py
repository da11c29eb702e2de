"""Runs the rule engine and the fire-event / hazard workflow inside the committer's transaction.

Readings, device status changes and timer ticks go through :class:`RuleEngine`; its effects go
through :class:`Workflow`; every resulting record (one transition) is written with its subject row,
its trail row and its outbox rows in the same transaction as the readings that caused it, so a
crash can lose neither a transition nor its delivery. Rule state is saved every few seconds and at
shutdown; open fire events and hazards are reloaded from their rows at start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from gateway.hazards.lifecycle import Transition, Workflow
from gateway.health import Health
from gateway.models import Reading
from gateway.profiles.loader import Catalog
from gateway.rules.effects import Effect, ShieldLog, TestRecord
from gateway.rules.engine import RuleEngine
from gateway.runtime.committer import Hooks
from gateway.sources.base import PollBatch
from gateway.store.sqlite import Store
from gateway.store.workflow import WorkflowStore

__all__ = ["WorkflowHooks"]

logger = logging.getLogger(__name__)


class WorkflowHooks(Hooks):
    def __init__(
        self,
        catalog: Catalog,
        health: Health,
        *,
        destinations: Sequence[str] = (),
        snapshot_every_s: float = 5.0,
        on_records: Callable[[list[Transition]], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.health = health
        self.engine = RuleEngine(catalog)
        self.workflow = Workflow(catalog)
        self.destinations = list(destinations)
        self._snapshot_every_ms = int(snapshot_every_s * 1000)
        self._last_snapshot_ms = 0
        self._loaded = False
        self._sources: dict[str, bool] = {}
        self._on_records = on_records
        self.counts: dict[str, int] = {"records": 0, "test_records": 0, "shield_logs": 0}
        self._pending_logs: list[tuple[str, str, str, str]] = []

    # ------------------------------------------------------------------ state

    def _load(self, store: Store) -> None:
        if self._loaded:
            return
        ws = WorkflowStore(store.conn)
        snap = ws.load_rule_state()
        if snap:
            try:
                self.engine.restore(snap)
            except Exception:  # a snapshot from an older profile set: start the timers afresh
                logger.warning("rules: saved state could not be restored; timers start afresh", exc_info=True)
                self.engine = RuleEngine(self.catalog)
        fires, hazards = ws.open_rows()
        self.workflow.load(fires, hazards)
        self._loaded = True
        if fires or hazards:
            logger.info("workflow: %d open fire events and %d open hazards reloaded", len(fires), len(hazards))

    def _emit(
        self, store: Store, effects: list[Effect], now_ms: int, extra: list[Transition] | None = None
    ) -> list[Transition]:
        for e in effects:
            if isinstance(e, TestRecord):
                self.counts["test_records"] += 1
                logger.info("test record: %s/%s %s %s (%s)", e.site_id, e.device_id, e.metric, e.rule, e.reason)
            elif isinstance(e, ShieldLog):
                self.counts["shield_logs"] += 1
                logger.info(
                    "shield: %s %s/%s %s by %s: %s", e.action, e.site_id, e.device_id, e.point or "*", e.actor, e.reason
                )
        records = self.workflow.apply(effects, now_ms) if effects else []
        if extra:
            records += extra
        if records:
            self._write(store, records, now_ms)
        return records

    def _write(self, store: Store, records: list[Transition], now_ms: int) -> None:
        WorkflowStore(store.conn).write(records, self.destinations)
        self.counts["records"] += len(records)
        for rec in records:
            if rec.kind == "fire_event" and rec.type == "resolved":
                snap = rec.snapshot
                more = self.engine.on_fire_resolved(
                    snap["site_id"], snap["device_id"], str(snap.get("resolution")), now_ms
                )
                if more:
                    self._write(store, self.workflow.apply(more, now_ms), now_ms)
            if rec.type in ("opened", "escalated"):  # logged once committed (a rolled-back one never was)
                self._pending_logs.append(
                    (
                        rec.kind,
                        rec.type,
                        rec.subject_id,
                        str(rec.snapshot.get("title_en") or rec.snapshot.get("device_id")),
                    )
                )
        if self._on_records is not None:
            self._on_records(records)

    # ------------------------------------------------------------------ committer hooks

    def on_readings(self, store: Store, readings: list[Reading], now_ms: int) -> None:
        self._load(store)
        if readings:
            self._emit(store, self.engine.on_readings(readings, now_ms), now_ms)

    def on_status(self, store: Store, batch: PollBatch, now_ms: int) -> None:
        self._load(store)
        self._emit(store, self.engine.on_status(batch.status, now_ms), now_ms)

    def on_tick(self, store: Store, now_ms: int) -> None:
        self._load(store)
        effects: list[Effect] = []
        for st in self.health.stages():
            if st.name.startswith("source:") and st.connected is not None:
                prev = self._sources.get(st.name)
                if prev is None or prev != st.connected:
                    self._sources[st.name] = st.connected
                    if prev is not None or not st.connected:
                        effects += self.engine.on_source(st.name.split(":", 1)[1], st.connected, now_ms)
        effects += self.engine.tick(now_ms)
        self._emit(store, effects, now_ms, self.workflow.tick(now_ms))
        if now_ms - self._last_snapshot_ms >= self._snapshot_every_ms:
            self.save(store, now_ms)

    def on_stop(self, store: Store, now_ms: int) -> None:
        self._load(store)
        self.save(store, now_ms)

    def after_commit(self) -> None:
        for kind, type_, subject, what in self._pending_logs:
            logger.warning("%s %s %s: %s", kind, type_, subject, what)
        self._pending_logs.clear()

    def recover(self, store: Store) -> None:
        """A transaction was rolled back after the engine and workflow had applied part of it: reload
        both from what the store holds (the last saved rule state, the open fire events and hazards),
        exactly as at a restart, so memory never claims what the store does not."""
        self.engine = RuleEngine(self.catalog)
        self.workflow = Workflow(self.catalog)
        self._loaded = False
        self._last_snapshot_ms = 0
        self._pending_logs.clear()

    def save(self, store: Store, now_ms: int) -> None:
        WorkflowStore(store.conn).save_rule_state(self.engine.snapshot(), now_ms)
        self._last_snapshot_ms = now_ms

    def reload(self, catalog: Catalog) -> None:
        """New profiles: rebuild the engine and carry its state over."""
        snap = self.engine.snapshot()
        self.catalog = catalog
        self.engine = RuleEngine(catalog)
        try:
            self.engine.restore(snap)
        except Exception:
            logger.warning("rules: state could not be carried over to the new profiles", exc_info=True)
            self.engine = RuleEngine(catalog)
        self.workflow._catalog = catalog

    def set_override(
        self,
        store: Store,
        site_id: str,
        code: str | None,
        reason: str,
        actor: str,
        until_ms: int | None,
        stop_business: bool,
        now_ms: int,
    ) -> dict[str, Any]:
        from dataclasses import asdict

        from gateway.hazards.codes import CodeOverride, clear_override, set_override

        ws = WorkflowStore(store.conn)
        if code is None:
            current = ws.overrides().get(site_id)
            if current is None:
                from gateway.errors import TransitionError

                raise TransitionError(f"site {site_id} has no override to clear")
            rec = clear_override(CodeOverride(**current), actor, reason, now_ms)
            ws.set_override(site_id, None)
        else:
            ov, rec = set_override(
                site_id,
                code,  # type: ignore[arg-type]
                reason,
                actor,
                now_ms,
                until_ms=until_ms,
                stop_business=stop_business,
            )
            ws.set_override(site_id, asdict(ov))
        self._write(store, [rec], now_ms)
        return rec.to_dict()

    def record_inspection(self, store: Store, site_id: str, actor: str, note: str, now_ms: int) -> None:
        from gateway.hazards.lifecycle import Transition, new_id

        ws = WorkflowStore(store.conn)
        ws.record_inspection(site_id, now_ms, actor)
        self._write(
            store,
            [
                Transition(
                    new_id(),
                    "site",
                    site_id,
                    "inspected",
                    now_ms,
                    actor,
                    note,
                    {"site_id": site_id, "inspected_at_ms": now_ms},
                )
            ],
            now_ms,
        )

    # ------------------------------------------------------------------ people's actions

    def act(
        self,
        store: Store,
        kind: str,
        subject_id: str,
        action: str,
        actor: str,
        note: str,
        params: dict[str, Any],
        now_ms: int,
    ) -> list[Transition]:
        """A person's action; raises TransitionError (nothing written) when not allowed."""
        self._load(store)
        if kind not in ("fire_event", "hazard"):
            from gateway.errors import TransitionError

            raise TransitionError(f"unknown kind {kind!r}")
        records = self.workflow.act(
            kind,  # type: ignore[arg-type]
            subject_id,
            action,
            actor,
            now_ms=now_ms,
            note=note,
            **params,
        )
        self._write(store, records, now_ms)
        return records
