-- Settings the stored call records were merged under (see store::MergeSettings): when they
-- differ from the running alohook's, the records are recomputed from their events at start.
CREATE TABLE alohook_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- The status filter matches case-insensitively: it compares the lower-cased status, kept in a
-- column of its own (filled by the recomputation that follows this migration).
ALTER TABLE calls ADD COLUMN status_norm TEXT;
DROP INDEX calls_by_status;
CREATE INDEX calls_by_status ON calls (status_norm, sort_key, seq);

-- The from/to filters compare the call's start time as it is now (the listing order keeps the
-- first one, see sort_key).
CREATE INDEX calls_by_start_time ON calls (start_time);
