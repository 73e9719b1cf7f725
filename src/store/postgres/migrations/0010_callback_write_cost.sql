-- What the callback worklist costs ingest (bench/worklist-cost) and what its listing by hotline
-- reads.
--
-- The listing of every state (`state=all`) reads the open and the closed items each in the
-- order of the index by state and merges them (src/store/callbacks.rs, list_query), so the
-- index by first miss alone goes: one index entry fewer for every new item.
DROP INDEX IF EXISTS callbacks_by_first_miss;

-- An item's hotline rows carry its state and first miss, in the key: the listing by hotline
-- reads that hotline's rows of the state asked for in the listing's order (before, it walked
-- every item of the state and asked each whether it had a miss on the hotline: all of them for
-- a hotline with few items), and a new item's rows go at the end of its hotline's open rows.
-- Rows of items that are gone go too.
CREATE TABLE callback_hotlines_new (
    hotline         TEXT   NOT NULL,
    open            BIGINT NOT NULL,   -- the item's
    first_missed_at BIGINT NOT NULL,   -- the item's
    item_id         TEXT   NOT NULL,
    CONSTRAINT callback_hotlines_key PRIMARY KEY (hotline, open, first_missed_at, item_id)
);
INSERT INTO callback_hotlines_new (hotline, open, first_missed_at, item_id)
    SELECT h.hotline, c.open, c.first_missed_at, h.item_id
    FROM callback_hotlines h JOIN callbacks c ON c.id = h.item_id;
DROP TABLE callback_hotlines;
ALTER TABLE callback_hotlines_new RENAME TO callback_hotlines;
