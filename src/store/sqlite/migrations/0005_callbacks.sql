-- The missed-call callback worklist (see src/report/callbacks.rs): every item, open and closed,
-- of every customer number. A number's items are recomputed from all its calls whenever one of
-- them changes, in the transaction that changes it, so the list is exact whatever the order
-- the events arrived in.
CREATE TABLE callbacks (
    id              TEXT    PRIMARY KEY,
    phone           TEXT    NOT NULL,   -- the calls' caller_norm
    open            INTEGER NOT NULL,   -- 1 open, 0 closed
    first_missed_at INTEGER NOT NULL,   -- Unix seconds
    body            TEXT    NOT NULL    -- the item, JSON
);
CREATE INDEX callbacks_by_phone      ON callbacks (phone);
CREATE INDEX callbacks_by_state      ON callbacks (open, first_missed_at, id);
CREATE INDEX callbacks_by_first_miss ON callbacks (first_missed_at, id);

-- The hotlines each item's misses came in on (the hotline filter).
CREATE TABLE callback_hotlines (
    hotline         TEXT    NOT NULL,
    item_id         TEXT    NOT NULL,
    PRIMARY KEY (hotline, item_id)
);
CREATE INDEX callback_hotlines_by_item ON callback_hotlines (item_id);

-- Closes by hand (POST /api/callbacks/{id}/close): they stay, and every recomputation of the
-- number applies them at their time.
CREATE TABLE callback_closes (
    id      INTEGER PRIMARY KEY,
    phone   TEXT    NOT NULL,
    item_id TEXT    NOT NULL,
    at      INTEGER NOT NULL,   -- Unix seconds
    note    TEXT
);
CREATE INDEX callback_closes_by_phone ON callback_closes (phone);

-- The worklist of the calls stored before this migration is built at the next start, once (see
-- CALLBACKS_BUILT_KEY in src/store/callbacks.rs).
