"""The embedded store's schema, versioned. Each entry of MIGRATIONS moves the schema up one version."""

from __future__ import annotations

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

MIGRATIONS: list[str] = [
    # v1: readings, device state, dead letters, message ids for idempotent redelivery, counters
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    -- One row per message accepted or dead-lettered, keyed by a hash of topic and payload, so a
    -- redelivered message (MQTT DUP, or a publisher retry after a broker restart) adds nothing.
    CREATE TABLE messages (
        hash BLOB PRIMARY KEY,
        received_at INTEGER NOT NULL,
        dead INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX messages_received ON messages(received_at);
    -- seq orders readings for the forwarder's cursor; (device_id, metric, ts) makes them idempotent.
    CREATE TABLE readings (
        seq INTEGER PRIMARY KEY,
        device_id TEXT NOT NULL,
        metric TEXT NOT NULL,
        ts INTEGER NOT NULL,
        value,
        unit TEXT NOT NULL,
        quality TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        site_id TEXT NOT NULL,
        urgent INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX readings_key ON readings(device_id, metric, ts);
    CREATE TABLE devices (
        device_id TEXT PRIMARY KEY,
        site_id TEXT NOT NULL,
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        status TEXT NOT NULL DEFAULT 'online',
        status_since INTEGER,
        status_reason TEXT,
        link TEXT
    );
    CREATE TABLE latest (
        device_id TEXT NOT NULL,
        metric TEXT NOT NULL,
        value,
        unit TEXT NOT NULL,
        ts INTEGER NOT NULL,
        quality TEXT NOT NULL,
        PRIMARY KEY (device_id, metric)
    ) WITHOUT ROWID;
    CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        source TEXT NOT NULL,
        address TEXT NOT NULL,
        device_id TEXT,
        reason TEXT NOT NULL,
        payload BLOB NOT NULL
    );
    CREATE INDEX dead_letters_at ON dead_letters(at);
    """,
    # v2: fire events, hazards, their immutable trail, the outbox, rule-engine state, site overrides
    """
    CREATE TABLE fire_events (
        fire_event_id TEXT PRIMARY KEY,
        site_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        state TEXT NOT NULL,
        opened_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX fire_events_site ON fire_events(site_id, state);
    CREATE TABLE hazards (
        hazard_id TEXT PRIMARY KEY,
        site_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        rule TEXT NOT NULL,
        state TEXT NOT NULL,
        severity TEXT NOT NULL,
        opened_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        data TEXT NOT NULL
    );
    -- one open hazard per (site, device, rule), enforced by the database as well as the code
    CREATE UNIQUE INDEX hazards_open_key ON hazards(site_id, device_id, rule) WHERE state <> 'closed';
    CREATE INDEX hazards_site ON hazards(site_id, state);
    CREATE TABLE workflow_events (
        seq INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        subject_id TEXT NOT NULL,
        type TEXT NOT NULL,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        note TEXT NOT NULL,
        snapshot TEXT NOT NULL
    );
    CREATE INDEX workflow_events_subject ON workflow_events(kind, subject_id, seq);
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY,
        destination TEXT NOT NULL,
        event_id TEXT NOT NULL,
        subject TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL DEFAULT 0,
        delivered_at INTEGER,
        last_error TEXT,
        UNIQUE (destination, event_id)
    );
    CREATE INDEX outbox_pending ON outbox(destination, delivered_at, seq);
    CREATE TABLE rule_state (id INTEGER PRIMARY KEY CHECK (id = 1), at INTEGER NOT NULL, snapshot TEXT NOT NULL);
    CREATE TABLE site_overrides (site_id TEXT PRIMARY KEY, data TEXT NOT NULL);
    CREATE TABLE site_inspections (site_id TEXT PRIMARY KEY, at INTEGER NOT NULL, actor TEXT NOT NULL);
    """,
    # v3: the forwarder's durable cursor per sink
    """
    CREATE TABLE sink_cursors (sink TEXT PRIMARY KEY, seq INTEGER NOT NULL, updated_at INTEGER NOT NULL);
    CREATE INDEX readings_bulk ON readings(urgent, seq);
    """,
    # v4: message ids in an append-only log. A primary key of random hashes made every message write
    # a random page (about a third of a bulk commit's cost, measured); the committer keeps the recent
    # ids in memory and reloads the newest ones from this log at start.
    """
    CREATE TABLE message_log (hash BLOB NOT NULL, received_at INTEGER NOT NULL, dead INTEGER NOT NULL);
    INSERT INTO message_log (hash, received_at, dead) SELECT hash, received_at, dead FROM messages
        ORDER BY received_at;
    DROP TABLE messages;
    """,
    # v5: dead letters keep the first bytes of a payload with its full size and digest (bounded junk);
    # the last retained message taken per topic (a retained message is taken as state once).
    """
    ALTER TABLE dead_letters ADD COLUMN size INTEGER;
    ALTER TABLE dead_letters ADD COLUMN digest TEXT;
    CREATE TABLE retained (topic TEXT PRIMARY KEY, hash BLOB NOT NULL, at INTEGER NOT NULL) WITHOUT ROWID;
    """,
    # v6: surviving the time-series database's own crash. sink_history: where each forwarder cursor
    # stood when (at most one row a second per cursor, and one per rewind), to map "confirmed within
    # the last N seconds" to a seq; sink_instances: the identity (start time) the database reported
    # when last seen, to notice a restart also across a restart of the gateway.
    """
    CREATE TABLE sink_history (sink TEXT NOT NULL, at INTEGER NOT NULL, seq INTEGER NOT NULL,
                               PRIMARY KEY (sink, at, seq)) WITHOUT ROWID;
    CREATE TABLE sink_instances (sink TEXT PRIMARY KEY, identity TEXT NOT NULL, seen_at INTEGER NOT NULL);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)
