"""Fire events, hazards and their trail in the embedded store (design.md §4, §2 outbox).

Each workflow record (one transition of a fire event or hazard) is written in the caller's
transaction together with: the subject's new row, the immutable trail row, and one outbox row per
delivery destination. Rows keep the subject as JSON (``data``) beside the columns queries filter on.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from gateway.hazards.lifecycle import Transition
from gateway.times import iso

__all__ = ["BODY_VERSION", "WorkflowStore", "event_body", "iso"]

#: Version of the JSON body delivered to the grid workflow (see README, "Delivered events").
BODY_VERSION = 1


def public_subject(kind: str, snap: dict[str, Any]) -> dict[str, Any]:
    """The subject as the outside world sees it: ISO times, the names of the public interface."""
    out: dict[str, Any] = {}
    for k, v in snap.items():
        if k.endswith("_at_ms") or k.endswith("_seen_ms") or k in ("opened_at_ms", "deadline_ms"):
            out[k[:-3]] = iso(v) if isinstance(v, int) else v
        elif k.endswith("_ms") and isinstance(v, int):
            out[k[:-3]] = iso(v)
        else:
            out[k] = v
    if kind == "hazard":
        out["class"] = snap.get("hazard_class")
    if kind == "fire_event":
        out["station"] = snap.get("station_name")
    return out


def event_body(rec: Transition) -> dict[str, Any]:
    """The versioned JSON body of one transition, as delivered to the workflow."""
    body: dict[str, Any] = {
        "version": BODY_VERSION,
        "event_id": rec.event_id,
        "kind": rec.kind,
        "subject_id": rec.subject_id,
        "type": rec.type,
        "at": iso(rec.at_ms),
        "actor": rec.actor,
        "note": rec.note,
    }
    body[rec.kind] = public_subject(rec.kind, rec.snapshot)
    return body


class WorkflowStore:
    """Workflow tables on an open SQLite connection (the committer's, or a reader's)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    # ------------------------------------------------------------------ writes

    def write(self, records: Sequence[Transition], destinations: Sequence[str] = ()) -> None:
        c = self.conn
        for rec in records:
            snap = rec.snapshot
            data = json.dumps(snap, ensure_ascii=False, default=str)
            if rec.kind == "fire_event":
                c.execute(
                    "INSERT INTO fire_events VALUES (?,?,?,?,?,?,?) ON CONFLICT(fire_event_id) DO UPDATE SET "
                    "state=excluded.state, updated_at=excluded.updated_at, data=excluded.data",
                    (
                        rec.subject_id,
                        snap["site_id"],
                        snap["device_id"],
                        snap["state"],
                        snap["opened_at_ms"],
                        rec.at_ms,
                        data,
                    ),
                )
            elif rec.kind == "hazard":
                c.execute(
                    "INSERT INTO hazards VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(hazard_id) DO UPDATE SET "
                    "state=excluded.state, severity=excluded.severity, updated_at=excluded.updated_at, "
                    "data=excluded.data",
                    (
                        rec.subject_id,
                        snap["site_id"],
                        snap["device_id"],
                        snap["rule"],
                        snap["state"],
                        snap["severity"],
                        snap["opened_at_ms"],
                        rec.at_ms,
                        data,
                    ),
                )
            c.execute(
                "INSERT OR IGNORE INTO workflow_events (event_id, kind, subject_id, type, at, actor, note, "
                "snapshot) VALUES (?,?,?,?,?,?,?,?)",
                (rec.event_id, rec.kind, rec.subject_id, rec.type, rec.at_ms, rec.actor, rec.note, data),
            )
            if destinations:
                body = json.dumps(event_body(rec), ensure_ascii=False, default=str)
                c.executemany(
                    "INSERT OR IGNORE INTO outbox (destination, event_id, subject, body, created_at) "
                    "VALUES (?,?,?,?,?)",
                    [(d, rec.event_id, f"{rec.kind}:{rec.subject_id}", body, rec.at_ms) for d in destinations],
                )

    def save_rule_state(self, snapshot: dict[str, Any], at_ms: int) -> None:
        self.conn.execute(
            "INSERT INTO rule_state VALUES (1, ?, ?) ON CONFLICT(id) DO UPDATE SET at=excluded.at, "
            "snapshot=excluded.snapshot",
            (at_ms, json.dumps(snapshot, separators=(",", ":"))),
        )

    def set_override(self, site_id: str, data: dict[str, Any] | None) -> None:
        if data is None:
            self.conn.execute("DELETE FROM site_overrides WHERE site_id = ?", (site_id,))
        else:
            self.conn.execute(
                "INSERT OR REPLACE INTO site_overrides VALUES (?, ?)", (site_id, json.dumps(data, ensure_ascii=False))
            )

    def record_inspection(self, site_id: str, at_ms: int, actor: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO site_inspections VALUES (?, ?, ?)", (site_id, at_ms, actor))

    # ------------------------------------------------------------------ reads

    def load_rule_state(self) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT snapshot FROM rule_state WHERE id = 1").fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def open_rows(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        fires = [json.loads(r[0]) for r in self.conn.execute("SELECT data FROM fire_events WHERE state <> 'resolved'")]
        hazards = [json.loads(r[0]) for r in self.conn.execute("SELECT data FROM hazards WHERE state <> 'closed'")]
        return fires, hazards

    def fire_events(
        self, *, open_only: bool = False, site_id: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        sql, args = "SELECT data FROM fire_events WHERE 1=1", []
        if open_only:
            sql += " AND state <> 'resolved'"
        if site_id:
            sql += " AND site_id = ?"
            args.append(site_id)
        sql += " ORDER BY opened_at DESC LIMIT ?"
        return [json.loads(r[0]) for r in self.conn.execute(sql, [*args, limit])]

    def hazards(
        self, *, open_only: bool = False, site_id: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        sql, args = "SELECT data FROM hazards WHERE 1=1", []
        if open_only:
            sql += " AND state <> 'closed'"
        if site_id:
            sql += " AND site_id = ?"
            args.append(site_id)
        sql += " ORDER BY opened_at DESC LIMIT ?"
        return [json.loads(r[0]) for r in self.conn.execute(sql, [*args, limit])]

    def subject(self, kind: str, subject_id: str) -> dict[str, Any] | None:
        table, key = ("fire_events", "fire_event_id") if kind == "fire_event" else ("hazards", "hazard_id")
        row = self.conn.execute(f"SELECT data FROM {table} WHERE {key} = ?", (subject_id,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def trail(self, kind: str, subject_id: str) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT event_id, type, at, actor, note FROM workflow_events WHERE kind = ? AND "
            "subject_id = ? ORDER BY seq",
            (kind, subject_id),
        ).fetchall()
        return [{"event_id": r[0], "type": r[1], "at": iso(r[2]), "actor": r[3], "note": r[4]} for r in rows]

    def overrides(self) -> dict[str, dict[str, Any]]:
        return {r[0]: json.loads(r[1]) for r in self.conn.execute("SELECT site_id, data FROM site_overrides")}

    def inspections(self) -> dict[str, int]:
        return {r[0]: int(r[1]) for r in self.conn.execute("SELECT site_id, at FROM site_inspections")}

    def counts(self) -> dict[str, int]:
        q = self.conn.execute
        return {
            "hazards_open": q("SELECT count(*) FROM hazards WHERE state <> 'closed'").fetchone()[0],
            "events_open": q("SELECT count(*) FROM fire_events WHERE state <> 'resolved'").fetchone()[0],
        }

    def events_since(self, seq: int, limit: int = 500) -> list[tuple[int, dict[str, Any]]]:
        rows = self.conn.execute(
            "SELECT seq, event_id, kind, subject_id, type, at, actor, note, snapshot "
            "FROM workflow_events WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        ).fetchall()
        return [
            (r[0], event_body(Transition(r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8])))) for r in rows
        ]
