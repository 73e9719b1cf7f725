-- What the callback worklist costs ingest (bench/worklist-cost): every new item wrote an entry
-- in each of the items' indexes and two b-trees for each of its hotlines.
--
-- The listing of every state (`state=all`) reads the open and the closed items each in the
-- order of the index by state and merges them (src/store/callbacks.rs, list_query), so the
-- index by first miss alone goes.
DROP INDEX IF EXISTS callbacks_by_first_miss;

-- An item's hotline rows are only ever found by (hotline, item id): the table is that key, with
-- no rowid table beside it.
CREATE TABLE callback_hotlines_new (
    hotline         TEXT    NOT NULL,
    item_id         TEXT    NOT NULL,
    PRIMARY KEY (hotline, item_id)
) WITHOUT ROWID;
INSERT INTO callback_hotlines_new (hotline, item_id)
    SELECT hotline, item_id FROM callback_hotlines;
DROP TABLE callback_hotlines;
ALTER TABLE callback_hotlines_new RENAME TO callback_hotlines;
