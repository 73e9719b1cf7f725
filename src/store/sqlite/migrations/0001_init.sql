-- Every distinct event, once. dedupe_key is the SHA-256 of the event's canonical form; it is
-- unique within its scope (the body's call_id, '' when it has none). The hash alone would be
-- unique too, but hashes are random: indexed behind the call id, which Alohub starts with the
-- call's start time, new keys land on a few hot pages instead of one random page each.
CREATE TABLE events (
    id               INTEGER PRIMARY KEY,
    scope            TEXT    NOT NULL,
    dedupe_key       BLOB    NOT NULL,
    event_type       TEXT    NOT NULL,
    call_id          TEXT,              -- set for call events only (merged into a call)
    received_at      INTEGER NOT NULL,  -- first delivery, Unix microseconds
    last_delivery_at INTEGER NOT NULL,
    deliveries       INTEGER NOT NULL DEFAULT 1,
    warnings         TEXT,              -- JSON array, NULL when none
    body             TEXT    NOT NULL   -- exactly as received
);
CREATE UNIQUE INDEX events_by_scope ON events (scope, dedupe_key);

-- One record per call, merged from its events. seq and sort_key never change once the call
-- exists: the listing is ordered by them so that a cursor stays valid.
CREATE TABLE calls (
    seq                INTEGER PRIMARY KEY,
    call_id            TEXT    NOT NULL UNIQUE,
    sort_key           INTEGER NOT NULL,  -- first known start time, or the lowest integer
    phase              TEXT    NOT NULL,
    call_status        TEXT,
    direction          TEXT,
    caller_number      TEXT,
    caller_norm        TEXT,
    destination_number TEXT,
    destination_norm   TEXT,
    hotline            TEXT,
    user_name          TEXT,
    transaction_id     TEXT,
    object_id          INTEGER,
    start_time         INTEGER,
    answer_time        INTEGER,
    end_time           INTEGER,
    hangup_by          TEXT,
    total_duration     INTEGER,
    holding_duration   INTEGER,
    recording_url      TEXT,
    event_count        INTEGER NOT NULL,
    first_received_at  INTEGER NOT NULL,
    last_received_at   INTEGER NOT NULL,
    sources            TEXT    NOT NULL   -- which event filled each field (see model::merge)
);
-- No index on user_name: agents map to extensions, and filtering by destination_number uses
-- calls_by_destination. Every index on a many-valued column costs about one page write per new
-- call (measured: 10 % of ingest throughput for user_name); a user_name filter scans in
-- start-time order instead.
CREATE INDEX calls_by_start       ON calls (sort_key, seq);
CREATE INDEX calls_by_status      ON calls (call_status, sort_key, seq);
CREATE INDEX calls_by_phase       ON calls (phase, sort_key, seq);
CREATE INDEX calls_by_caller      ON calls (caller_norm, sort_key, seq);
CREATE INDEX calls_by_destination ON calls (destination_norm, sort_key, seq);
CREATE INDEX calls_by_hotline     ON calls (hotline, sort_key, seq);
CREATE INDEX calls_by_transaction ON calls (transaction_id);

-- Bodies that are not valid events, once each, with a delivery count.
CREATE TABLE rejected (
    id               INTEGER PRIMARY KEY,
    body_hash        BLOB    NOT NULL UNIQUE,
    reason           TEXT    NOT NULL,
    detail           TEXT    NOT NULL,
    received_at      INTEGER NOT NULL,
    last_delivery_at INTEGER NOT NULL,
    deliveries       INTEGER NOT NULL DEFAULT 1,
    body             BLOB    NOT NULL
);
