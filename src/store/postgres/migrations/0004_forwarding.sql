-- The same as the SQLite schema's 0004 (see src/forward): destinations and deliveries.
CREATE TABLE destinations (
    id                    TEXT    PRIMARY KEY,
    spec                  TEXT    NOT NULL,  -- JSON: url, types, filter, headers, ordering, … as created
    enabled               BIGINT  NOT NULL DEFAULT 1,
    disabled_reason       TEXT,
    secret                TEXT    NOT NULL,
    previous_secret       TEXT,              -- still signs until previous_secret_until
    previous_secret_until BIGINT,           -- Unix microseconds
    cursor                BIGINT  NOT NULL,  -- every matching change up to here has its delivery
    created_at            BIGINT  NOT NULL,  -- Unix microseconds
    updated_at            BIGINT  NOT NULL,
    lease_owner           TEXT,              -- the instance delivering to it now
    lease_until           BIGINT                -- Unix microseconds
);

-- One row per change handed to a destination. webhook-id is derived from (destination_id, seq).
CREATE TABLE deliveries (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    destination_id  TEXT    NOT NULL,
    seq             BIGINT  NOT NULL,
    type            TEXT    NOT NULL,
    call_id         TEXT,
    state           TEXT    NOT NULL,   -- pending, delivered, dead
    attempts        BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,            -- Unix microseconds; NULL while held behind its call
    last_status     BIGINT,
    last_error      TEXT,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    UNIQUE (destination_id, seq)
);
-- Only pending deliveries are looked for by time or by call: a delivered one (most of them)
-- costs its row and the unique index, nothing more.
CREATE INDEX deliveries_due ON deliveries (destination_id, next_attempt_at, seq)
    WHERE state = 'pending';
CREATE INDEX deliveries_pending_by_call ON deliveries (destination_id, call_id, seq)
    WHERE state = 'pending';

CREATE TABLE delivery_attempts (
    delivery_id BIGINT  NOT NULL,
    at          BIGINT  NOT NULL,   -- Unix microseconds
    status      BIGINT,
    error       TEXT,
    duration_ms BIGINT  NOT NULL,
    response    TEXT                -- the first KiB of the answer
);
CREATE INDEX delivery_attempts_by_delivery ON delivery_attempts (delivery_id, at);

-- Background jobs (replays), so that any instance can say how one is going.
CREATE TABLE jobs (
    id             TEXT    PRIMARY KEY,
    kind           TEXT    NOT NULL,   -- replay
    destination_id TEXT,
    state          TEXT    NOT NULL,   -- running, done, failed
    matched        BIGINT  NOT NULL,
    queued         BIGINT  NOT NULL,
    error          TEXT,
    created_at     BIGINT  NOT NULL,   -- Unix microseconds
    updated_at     BIGINT  NOT NULL    -- a running job writes at least every 10 s
);
