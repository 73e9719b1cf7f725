-- The feed (see the SQLite schema's 0003 and store::ChangeLog). Positions are not taken from a
-- sequence: sequence values are handed out in one order and committed in another, and a reader
-- of `seq > N` would skip a change that commits late. A batch instead takes its positions from
-- this one-row counter as its last statement before COMMIT: the row lock serialises that step
-- across instances until the commit is visible, so positions are committed in order, with no
-- gaps (a rolled-back batch rolls its positions back), and never reused.
CREATE TABLE alohook_feed (
    id       BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    last_seq BIGINT  NOT NULL
);
INSERT INTO alohook_feed (id, last_seq) VALUES (TRUE, 0);

CREATE TABLE changes (
    seq                BIGINT  PRIMARY KEY,
    type               TEXT    NOT NULL,
    event_id           BIGINT NOT NULL,
    received_at        BIGINT NOT NULL,
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
    object_id          BIGINT,
    start_time         BIGINT,
    answer_time        BIGINT,
    end_time           BIGINT,
    hangup_by          TEXT,
    total_duration     BIGINT,
    holding_duration   BIGINT,
    recording_url      TEXT,
    event_count        BIGINT,
    first_received_at  BIGINT,
    last_received_at   BIGINT
);

-- The check of store::postgres::begin_batch (migration 0002) as a condition: batches make it
-- in their last statement, the one that takes their positions in the feed (see write.rs).
CREATE FUNCTION alohook_merge_settings_are(expected TEXT) RETURNS BOOLEAN
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM alohook_check_merge_settings(expected);
    RETURN TRUE;
END
$$;
