-- The feed: one change per new event, committed with it (see store::ChangeLog). seq is the
-- change's position; AUTOINCREMENT so that a position is never handed out twice, even after the
-- newest rows are deleted. A call change keeps the call's columns as of the change, with the
-- normal forms the filters compare (all NULL for a non-call event, whose payload is kept); the
-- JSON is rendered from them when the change is read.
CREATE TABLE changes (
    seq                INTEGER PRIMARY KEY AUTOINCREMENT,
    type               TEXT    NOT NULL,
    event_id           INTEGER NOT NULL,
    received_at        INTEGER NOT NULL,
    payload            TEXT,
    call_id            TEXT,
    phase              TEXT,
    call_status        TEXT,
    status_norm        TEXT,
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
    event_count        INTEGER,
    first_received_at  INTEGER,
    last_received_at   INTEGER
);
