-- The figures' summary (see store::rollup): the counts and sums of /api/stats per hour of start
-- time, by agent (kind 1) and by hotline × direction × status (kind 2; its rows at the smallest
-- bucket count the calls with no start time). Every write keeps it in the same transaction as
-- the calls; it is built from the stored calls at the first start after this migration, and
-- rebuilt when the records are recomputed or the thresholds change (alohook_meta 'rollup').
-- Absent key values are ''. The longest wait is a bound that a read recomputes from the row's
-- hour of calls while `dirty` is set; rm_wait passes the wait a write removed to the upsert's
-- update and means nothing after it.
CREATE TABLE call_rollup (
    kind               BIGINT NOT NULL,
    bucket             BIGINT NOT NULL,
    k1                 TEXT NOT NULL,
    k2                 TEXT NOT NULL,
    k3                 TEXT NOT NULL,
    calls              BIGINT NOT NULL DEFAULT 0,
    ended              BIGINT NOT NULL DEFAULT 0,
    answered           BIGINT NOT NULL DEFAULT 0,
    inbound            BIGINT NOT NULL DEFAULT 0,
    inbound_answered   BIGINT NOT NULL DEFAULT 0,
    abandoned          BIGINT NOT NULL DEFAULT 0,
    short_abandoned    BIGINT NOT NULL DEFAULT 0,
    service_level_met  BIGINT NOT NULL DEFAULT 0,
    asa_sum            BIGINT NOT NULL DEFAULT 0,
    asa_count          BIGINT NOT NULL DEFAULT 0,
    talk_sum           BIGINT NOT NULL DEFAULT 0,
    talk_count         BIGINT NOT NULL DEFAULT 0,
    hold_sum           BIGINT NOT NULL DEFAULT 0,
    hold_count         BIGINT NOT NULL DEFAULT 0,
    talk_total         BIGINT NOT NULL DEFAULT 0,
    outbound           BIGINT NOT NULL DEFAULT 0,
    outbound_answered  BIGINT NOT NULL DEFAULT 0,
    longest_wait       BIGINT,
    dirty              BIGINT NOT NULL DEFAULT 0,
    rm_wait            BIGINT,
    PRIMARY KEY (kind, bucket, k1, k2, k3)
);
-- The few dirty rows, found without reading the others.
CREATE INDEX call_rollup_dirty ON call_rollup (kind, bucket) WHERE dirty <> 0;
