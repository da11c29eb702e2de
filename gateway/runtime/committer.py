"""The committer: the one thread that writes the embedded store.

Pushed sources put raw messages into its bounded inbox (``put`` blocks while it is full: that is
the back-pressure that leaves messages with the broker instead of dropping them). Polled sources
and the API submit work and wait on a future. Each loop takes what is waiting (up to
``max_batch``), decodes it, writes everything it produced in one transaction, commits, and only
then acknowledges the messages to their sources. Urgent readings (alarms, faults, supervisory,
feedback) are never held back for batching: a batch is whatever arrived while the previous one
was being committed.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import itertools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.health import Health
from gateway.models import DeadLetter, RawMessage, Reading
from gateway.normalize.json_decoder import DEFAULT_MAX_SKEW_S
from gateway.normalize.router import DEFAULT_MAX_PAYLOAD_BYTES, MqttNormalizer, Normalized
from gateway.profiles.loader import Catalog
from gateway.retry import Backoff
from gateway.sources.base import PollBatch
from gateway.store.sqlite import Store

__all__ = ["RECENT_IDS", "Committer", "Hooks", "RetentionPolicy"]

#: Message ids remembered for redelivery checks: more than can be unacknowledged at a crash
#: (the broker's in-flight window, the receiver's pending list and the inbox), so every redelivery
#: of a committed message is recognised.
RECENT_IDS = 200_000
CHECKPOINT_EVERY_S = 1.0
#: Past this the WAL is checkpointed with RESTART (holding the writer briefly) so it cannot grow without end.
WAL_LIMIT_BYTES = 64 * 1_048_576

logger = logging.getLogger(__name__)

AckFn = Callable[[list[object]], None]


@dataclass(frozen=True)
class RetentionPolicy:
    readings_days: float = 30.0
    messages_days: float = 7.0
    dead_letters_days: float = 30.0
    dead_letters_max_rows: int | None = None
    every_s: float = 600.0


class _Stop:
    pass


@dataclass
class _Job:
    batch: PollBatch | None
    fn: Callable[[Store], Any] | None
    future: concurrent.futures.Future[Any]


class Hooks:
    """What runs inside the committer's transaction after readings are written (rules, hazards).

    The base class does nothing; the rule engine subclasses it. ``on_readings`` sees every new
    reading of a batch, urgent ones first; ``on_tick`` runs about once a ``tick_s`` for timers.
    """

    def on_readings(self, store: Store, readings: list[Reading], now_ms: int) -> None:
        return None

    def on_status(self, store: Store, batch: PollBatch, now_ms: int) -> None:
        return None

    def on_tick(self, store: Store, now_ms: int) -> None:
        return None

    def on_stop(self, store: Store, now_ms: int) -> None:
        return None

    def recover(self, store: Store) -> None:
        """A transaction these hooks took part in was rolled back: drop in-memory state that may now
        disagree with the store and reload it from the store (as at a restart)."""
        return None

    def after_commit(self) -> None:
        """The transaction committed: what may only be said once it is on disk (log lines)."""
        return None


class Committer:
    """Owns the writing store connection; see the module docstring."""

    def __init__(
        self,
        *,
        store: Store,
        catalog: Catalog,
        health: Health,
        inbox_size: int = 20_000,
        max_batch: int = 1_000,
        tick_s: float = 1.0,
        retention: RetentionPolicy | None = None,
        hooks: Hooks | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        max_clock_skew_s: float = DEFAULT_MAX_SKEW_S,
    ) -> None:
        if inbox_size < 1 or max_batch < 1:
            raise ValueError("inbox_size and max_batch must be positive")
        self.store = store
        self.catalog = catalog
        self._max_payload_bytes = max_payload_bytes
        self._max_skew_s = max_clock_skew_s
        self._future_ms = int(max_clock_skew_s * 1000)
        self.normalizer = self._normalizer(catalog)
        self.hooks = hooks or Hooks()
        # A deque with a size check is the bounded inbox: append/popleft are atomic and several times
        # cheaper per message than queue.Queue's lock and condition (measured: bench/RESULTS.md).
        self._inbox: collections.deque[RawMessage | _Job | _Stop] = collections.deque()
        self._inbox_size = inbox_size
        self._wake = threading.Event()
        self._recent: dict[bytes, None] | None = None
        self._sleeping = False
        self._max_batch = max_batch
        self._tick_s = tick_s
        self._retention = retention or RetentionPolicy()
        self._acks: dict[str, AckFn] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="firegw-committer", daemon=True)
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="firegw-checkpoint", daemon=True)
        self._stage = health.stage("committer", stall_after_s=30.0)
        self._last_prune = 0.0
        self._device_sites = {d.device_id: d.site_id for d in catalog.inventory.devices}
        self._contained_kinds: set[str] = set()
        self._gave_up = False  # stopping while the store refused writes: leave the rest unacknowledged
        self.on_commit: list[Callable[[], None]] = []  # called (in this thread) after each commit

    def reload(self, catalog: Catalog) -> None:
        """Swap in a new catalog (profiles activated without a restart). Runs in this thread."""
        self.catalog = catalog
        self.normalizer = self._normalizer(catalog)
        self._device_sites = {d.device_id: d.site_id for d in catalog.inventory.devices}
        reload = getattr(self.hooks, "reload", None)
        if reload is not None:
            reload(catalog)

    def _normalizer(self, catalog: Catalog) -> MqttNormalizer:
        return MqttNormalizer(catalog, max_payload_bytes=self._max_payload_bytes, max_clock_skew_s=self._max_skew_s)

    # ------------------------------------------------------------------ API for sources

    def register_source(self, name: str, ack: AckFn) -> None:
        self._acks[name] = ack

    def put(self, raw: RawMessage) -> bool:
        """Hand over one message; blocks while the inbox is full; False once stopping."""
        if len(self._inbox) >= self._inbox_size:
            self._stage.count("inbox_full_waits")
            while len(self._inbox) >= self._inbox_size:
                if self._stopping.is_set():
                    return False
                time.sleep(0.001)
        if self._stopping.is_set():
            return False
        self._inbox.append(raw)
        if self._sleeping:  # wake the committer only when it waits: Event.set costs a lock round trip
            self._wake.set()
        return True

    def submit(self, batch: PollBatch) -> concurrent.futures.Future[None]:
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._put_job(_Job(batch, None, fut))
        return fut

    def call(self, fn: Callable[[Store], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn(store)`` inside the committer's next transaction (API actions use this)."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._put_job(_Job(None, fn, fut))
        return fut

    def _put_job(self, job: _Job) -> None:
        if self._stopping.is_set():
            job.future.set_exception(RuntimeError("the gateway is stopping"))
            return
        self._inbox.append(job)  # jobs come from few producers that wait on them: bounded by those
        self._wake.set()

    @property
    def depth(self) -> int:
        return len(self._inbox)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        # WAL checkpoints run in a thread of their own, on their own connection: copying the WAL into
        # the database file must not happen inside a commit that an alarm is waiting for.
        self.store.manual_checkpoints()
        self._checkpointer.start()
        self._thread.start()

    def _checkpoint_loop(self) -> None:
        """Copy the WAL into the database every second, off the committer's thread (PASSIVE: it never
        waits for the writer). A committer that commits without pause leaves no moment at which the
        WAL can start over, so past :data:`WAL_LIMIT_BYTES` one RESTART checkpoint holds the writer
        back until the WAL is copied and may be reused (and ``journal_size_limit`` trims the file):
        the WAL stays bounded (it once reached 184 MB for a 6.6 MB store in 15 s)."""
        wal = self.store.path.with_name(self.store.path.name + "-wal")
        conn: sqlite3.Connection | None = None
        while True:
            stopping = self._stopping.wait(CHECKPOINT_EVERY_S)
            try:
                if conn is None:
                    conn = sqlite3.connect(self.store.path, timeout=30.0, isolation_level=None)
                big = wal.exists() and wal.stat().st_size > WAL_LIMIT_BYTES
                conn.execute("PRAGMA wal_checkpoint(RESTART)" if big else "PRAGMA wal_checkpoint(PASSIVE)")
            except (sqlite3.Error, OSError) as exc:  # the store is failing: the committer says so
                logger.debug("checkpoint: %s", exc)
                if conn is not None:
                    conn.close()
                    conn = None
            if stopping:
                break
        if conn is not None:
            conn.close()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking messages, commit and acknowledge everything already taken, then return."""
        self._stopping.set()
        self._inbox.append(_Stop())
        self._wake.set()
        self._thread.join(timeout)
        self._checkpointer.join(timeout)

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        next_tick = time.monotonic() + self._tick_s
        stop = False
        inbox = self._inbox
        while not stop:
            items: list[RawMessage | _Job] = []
            if not inbox:
                self._sleeping = True
                if not inbox:  # re-check after raising the flag: a put in between is not missed
                    self._wake.wait(max(0.0, next_tick - time.monotonic()))
                self._sleeping = False
                self._wake.clear()
            while inbox and len(items) < self._max_batch:
                nxt = inbox.popleft()
                if isinstance(nxt, _Stop):
                    stop = True
                    continue
                items.append(nxt)
            tick = time.monotonic() >= next_tick
            if tick:
                next_tick = time.monotonic() + self._tick_s
            if items or tick:
                try:
                    self._process_with_retry(items, tick, stop)
                except Exception:  # last resort: the committer itself must never die
                    logger.exception("committer: unexpected failure; going on")
                    self._stage.count("unexpected_errors")
                    time.sleep(0.1)
            if self._gave_up:
                # stopping while the store refuses writes: what is still waiting stays unacknowledged,
                # and the broker (or the next poll) delivers it again to the next run
                left = sum(1 for it in inbox if isinstance(it, RawMessage))
                for it in [*items, *inbox]:
                    if isinstance(it, _Job) and not it.future.done():
                        it.future.set_exception(RuntimeError("the gateway stopped while its store refused writes"))
                inbox.clear()
                logger.error(
                    "committer: stopped while the store refuses writes; %d waiting messages stay "
                    "unacknowledged (redelivered to the next run)",
                    left,
                )
                return
        try:
            with self.store.transaction():
                self.hooks.on_stop(self.store, int(time.time() * 1000))
        except Exception:
            logger.exception("committer: saving state at shutdown failed")
        logger.info("committer: stopped with everything taken committed")

    def _process_with_retry(self, items: list[RawMessage | _Job], tick: bool, stopping: bool) -> None:
        """Commit what was taken. The store's own failures are retried (nothing is acknowledged until
        it takes the batch); any other failure is contained: the batch is split until the one message
        or action that fails alone is found, which becomes a dead letter (or an error for the caller),
        and everything else is committed. Nothing one message does can stop the committer."""
        try:
            self._attempt(items, tick, stopping)
            return
        except Exception as exc:
            self._contained(exc, "batch")
        if items:
            try:
                self._attempt(items, False, stopping)
            except Exception as exc:
                self._contained(exc, "batch")
                self._bisect(items, stopping, exc)
        if tick:
            try:
                self._attempt([], True, stopping)
            except Exception as exc:
                self._contained(exc, "timers")

    def _attempt(self, items: list[RawMessage | _Job], tick: bool, stopping: bool) -> None:
        """``_process`` with the store's failures retried (backoff, shown in health); raises anything else."""
        backoff = Backoff(0.5, 10.0, jitter=0.0)
        while True:
            try:
                self._process(items, tick)
            except sqlite3.Error as exc:
                # The store cannot take the batch (disk full, read-only, locked, I/O error). Nothing was
                # acknowledged; keep the batch and try again rather than lose it.
                self._stage.depth = len(items) + len(self._inbox)
                if not self._store_failed(exc, backoff.next(), stopping):
                    logger.error(
                        "committer: giving up at shutdown; %d items stay unacknowledged (the source redelivers them)",
                        len(items),
                    )
                    return
                continue
            self._stage.ok()
            return

    def _store_failed(self, exc: sqlite3.Error, delay: float, stopping: bool) -> bool:
        """After a failed write: reload the hooks' state, show the stage failing, reopen the store
        connection (SQLite opens a file it may not write read-only, silently, and keeps it so), and wait
        ``delay``. False when the gateway is stopping and has waited long enough: give up."""
        self._recover_hooks()
        self._stage.fail(f"store write failed, retrying: {exc}")
        self._stage.count("store_errors")
        if (stopping or self._stopping.is_set()) and delay > 4:
            self._gave_up = True
            return False
        time.sleep(delay)
        try:
            self.store.reopen()
        except Exception as again:  # still unusable: the next attempt says why
            logger.debug("committer: reopening the store failed: %s", again)
        return True

    def _contained(self, exc: BaseException, what: str) -> None:
        self._recover_hooks()
        self._stage.count("contained_errors")
        frame = exc.__traceback__
        while frame is not None and frame.tb_next is not None:
            frame = frame.tb_next
        kind = f"{what}:{type(exc).__name__}@{frame.tb_frame.f_code.co_name if frame else ''}"
        self._stage.last_error = f"{what} failed: {type(exc).__name__}: {exc}"[:300]
        if kind not in self._contained_kinds:  # once per kind, with the traceback to fix it
            self._contained_kinds.add(kind)
            logger.error(
                "committer: %s failed (%s); contained, the rest goes on (logged once per kind)",
                what,
                type(exc).__name__,
                exc_info=exc,
            )

    def _bisect(self, items: list[RawMessage | _Job], stopping: bool, exc: BaseException) -> None:
        """Find the items that fail on their own, in O(log n) transactions per bad item."""
        if len(items) == 1:
            self._poison(items[0], exc)
            return
        mid = len(items) // 2
        for half in (items[:mid], items[mid:]):
            try:
                self._attempt(half, False, stopping)
            except Exception as sub:
                self._contained(sub, "batch")
                self._bisect(half, stopping, sub)

    def _poison(self, item: RawMessage | _Job, exc: BaseException) -> None:
        """An item that fails on its own: a message becomes a dead letter (acknowledged), an action an error."""
        if isinstance(item, _Job):
            if not item.future.done():
                item.future.set_exception(exc)
            return
        self._stage.count("poison_messages")
        try:  # name what the message carried: the field a person looks at first
            metrics = sorted({r.metric for r in self.normalizer.normalize(item).readings})
        except Exception:
            metrics = []
        where = f" (points {', '.join(metrics)})" if metrics else ""
        reason = f"could not be processed{where}: {type(exc).__name__}: {exc}"[:500]
        dead = DeadLetter(
            item.source, item.address, item.payload, reason, item.received_at_ms, size=item.truncated_from or None
        )
        digest = hashlib.blake2b(item.address.encode() + b"\0" + item.payload, digest_size=16).digest()
        try:
            self._attempt_decoded([(item, digest, Normalized([], dead, None))])
        except Exception:
            logger.exception(
                "committer: cannot even dead-letter a message on %s; it stays unacknowledged", item.address[:200]
            )

    def _attempt_decoded(self, decoded: list[tuple[RawMessage, bytes, Normalized]]) -> None:
        backoff = Backoff(0.5, 10.0, jitter=0.0)
        while True:
            try:
                self._commit(decoded, [], False)
                return
            except sqlite3.Error as exc:
                if not self._store_failed(exc, backoff.next(), False):
                    return

    def _recover_hooks(self) -> None:
        try:
            self.hooks.recover(self.store)
        except Exception:
            logger.exception("committer: hooks could not recover their state")

    def _process(self, items: list[RawMessage | _Job], tick: bool) -> None:
        """Decode what was taken, then commit: the urgent lane first, in a small transaction of its own.

        A bulk transaction's cost grows with the number of series it touches (each one's index tail is
        a page to write), so an alarm that shared it would wait for all of that. Messages that produced
        an urgent reading, polls with one, and people's actions are committed and acknowledged first;
        then the rest. On a retry (the store failed) only what is left in ``items`` is done again.
        """
        raws = [it for it in items if isinstance(it, RawMessage)]
        jobs = [it for it in items if isinstance(it, _Job)]
        blake = hashlib.blake2b
        decoded = [
            (
                raw,
                blake(raw.address.encode() + b"\0" + raw.payload, digest_size=16).digest(),
                self.normalizer.normalize(raw),
            )
            for raw in raws
        ]
        urgent = [d for d in decoded if any(r.urgent for r in d[2].readings)]
        urgent_jobs = [
            j for j in jobs if j.fn is not None or (j.batch is not None and any(r.urgent for r in j.batch.readings))
        ]
        if (urgent or urgent_jobs) and (len(urgent) < len(decoded) or len(urgent_jobs) < len(jobs)):
            self._commit(urgent, urgent_jobs, False)
            done = {id(d[0]) for d in urgent} | {id(j) for j in urgent_jobs}
            items[:] = [it for it in items if id(it) not in done]
            decoded = [d for d in decoded if id(d[0]) not in done]
            jobs = [j for j in jobs if id(j) not in done]
            self._stage.count("urgent_commits")
        self._commit(decoded, jobs, tick)

    def _commit(self, decoded: list[tuple[RawMessage, bytes, Normalized]], jobs: list[_Job], tick: bool) -> None:
        store = self.store
        now_ms = int(time.time() * 1000)
        readings: list[Reading] = []
        dead: list[DeadLetter] = []
        seen: dict[str, tuple[str, int]] = {}
        acks: dict[str, list[object]] = {}
        accepted = duplicates = 0
        polls = [j.batch for j in jobs if j.batch is not None]
        with store.transaction():
            known = self._recent_ids()
            batch_seen: set[bytes] = set()
            records: list[tuple[bytes, int, int]] = []
            retained_rows: list[tuple[str, bytes, int]] = []
            taken = store.retained_taken(raw.address for raw, _, _ in decoded if raw.retained)
            for raw, digest, dec in decoded:
                if raw.token is not None:
                    acks.setdefault(raw.source, []).append(raw.token)
                # A message seen before is a redelivery when the source says so (MQTT DUP), when it
                # carries its own time (same bytes, same reading) or when the broker replays it as
                # retained (taken as state once). Identical untimed payloads that are none of these
                # (a bare heartbeat) are new messages: their readings take receive time.
                seen_before = digest in known or digest in batch_seen
                if raw.retained:
                    if seen_before or taken.get(raw.address) == digest:
                        duplicates += 1
                        continue
                    taken[raw.address] = digest
                    retained_rows.append((raw.address, digest, raw.received_at_ms))
                elif seen_before and (raw.redelivered or dec.device_time or dec.dead is not None):
                    # a dead letter carries no device time, and a broker restored from its file
                    # re-sends without DUP: the same bad bytes again are the same bad message
                    duplicates += 1
                    continue
                if not seen_before:
                    batch_seen.add(digest)
                    records.append((digest, raw.received_at_ms, 1 if dec.dead is not None else 0))
                if dec.dead is not None:
                    dead.append(dec.dead)
                    continue
                accepted += 1
                readings.extend(dec.readings)
                if dec.device_id is not None:
                    seen[dec.device_id] = (self._device_sites.get(dec.device_id, ""), raw.received_at_ms)
            store.record_messages(records)
            store.record_retained(retained_rows)
            for batch in polls:
                readings.extend(batch.readings)
                dead.extend(batch.dead)
                for r in batch.readings:
                    if r.quality.value != "missing":
                        seen[r.device_id] = (r.site_id, r.received_at_ms)
                store.set_status(batch.status, self._device_sites)
            if len(readings) > 1:
                readings.sort(key=lambda r: not r.urgent)  # urgent first, order otherwise kept
            new = store.insert_readings(readings)
            # a device clock far ahead must not freeze the latest value shown (the reading is kept, suspect)
            future = self._future_ms
            store.update_state([r for r in readings if r.ts_ms - r.received_at_ms <= future], seen)
            store.insert_dead(dead)
            store.add_counters(
                {"messages": accepted, "duplicates": duplicates, "dead_letters": len(dead), "readings": new}
            )
            self.hooks.on_readings(store, readings, now_ms)
            for batch in polls:
                if batch.status:
                    self.hooks.on_status(store, batch, now_ms)
            results: list[tuple[_Job, Any, BaseException | None]] = []
            for job in jobs:
                if job.fn is None:
                    results.append((job, None, None))
                    continue
                store.conn.execute("SAVEPOINT job")
                try:
                    results.append((job, job.fn(store), None))
                except Exception as exc:  # an API action that fails changes nothing and keeps the batch
                    store.conn.execute("ROLLBACK TO job")
                    results.append((job, None, exc))
                store.conn.execute("RELEASE job")
            if tick:
                self.hooks.on_tick(store, now_ms)
        self._remember(batch_seen)
        # Committed: nothing below may fail the batch (it would be processed again).
        try:
            self.hooks.after_commit()
        except Exception:
            logger.exception("committer: after-commit hook failed")
        for fn in self.on_commit:
            try:
                fn()
            except Exception:
                logger.exception("committer: an after-commit callback failed")
        for source, tokens in acks.items():
            ack = self._acks.get(source)
            if ack is not None:
                try:
                    ack(tokens)
                except Exception:
                    logger.exception("committer: acknowledging to %s failed; the source redelivers", source)
        for job, value, err in results:
            if err is not None:
                job.future.set_exception(err)
            else:
                job.future.set_result(value)
        st = self._stage
        st.beat(len(self._inbox))
        st.count("batches")
        st.count("messages", accepted)
        if tick and time.monotonic() - self._last_prune > self._retention.every_s:
            self._last_prune = time.monotonic()
            try:
                self._prune(now_ms)
            except sqlite3.Error as exc:  # retention waits for the next round; the batch is committed
                logger.warning("retention: pruning failed: %s", exc)

    def _recent_ids(self) -> dict[bytes, None]:
        """Ids of the newest messages (insertion-ordered), loaded from the log the first time."""
        if self._recent is None:
            self._recent = dict.fromkeys(self.store.recent_message_ids(RECENT_IDS))
        return self._recent

    def _remember(self, ids: set[bytes]) -> None:
        recent = self._recent_ids()
        for digest in ids:
            recent[digest] = None
        excess = len(recent) - RECENT_IDS
        if excess > 0:
            for digest in list(itertools.islice(recent, excess)):
                del recent[digest]

    def _prune(self, now_ms: int) -> None:
        day = 86_400_000
        r = self._retention
        n = self.store.prune(
            readings_before_ms=now_ms - int(r.readings_days * day),
            messages_before_ms=now_ms - int(r.messages_days * day),
            dead_before_ms=now_ms - int(r.dead_letters_days * day),
            dead_max_rows=r.dead_letters_max_rows,
        )
        if n:
            logger.info("retention: pruned %d old rows", n)
