-- The same change as the SQLite schema's 0002: settings the stored call records were merged
-- under (see store::MergeSettings), recomputed from their events when they differ at start.
CREATE TABLE alohook_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- The status filter matches case-insensitively, on the lower-cased status.
ALTER TABLE calls ADD COLUMN status_norm TEXT;
DROP INDEX calls_by_status;
CREATE INDEX calls_by_status ON calls (status_norm, sort_key, seq);

-- The from/to filters compare the call's start time as it is now (the listing order keeps the
-- first one, see sort_key).
CREATE INDEX calls_by_start_time ON calls (start_time);

-- Every batch checks that the records follow its instance's merge settings (see
-- store::postgres::begin_batch): the SHA-256 of the fingerprint, kept beside it by the
-- recomputation, must be the instance's.
CREATE FUNCTION alohook_check_merge_settings(expected TEXT) RETURNS VOID
LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT value FROM alohook_meta WHERE key = 'merge_settings_sha256')
        IS DISTINCT FROM expected THEN
        RAISE EXCEPTION 'the call records in this database follow other merge settings than this instance''s (--final-statuses, --timezone): another alohook with other settings started on this database; give every instance the same settings (each logs its settings at start)';
    END IF;
END
$$;
