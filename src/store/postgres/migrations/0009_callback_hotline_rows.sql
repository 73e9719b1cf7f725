-- An item's hotline rows are removed by (hotline, item id), the hotlines read from the item's
-- stored JSON (src/store/callbacks.rs, Refresh::plan); only an item whose JSON does not parse
-- has its rows found by item id alone, which reads the table. The index by item id cost every
-- new item one more random page to write.
DROP INDEX IF EXISTS callback_hotlines_by_item;

-- Most changes of an item change its JSON only (a repeat miss, an attempt): with room left on
-- its page, PostgreSQL writes the new version there without touching the table's four indexes
-- (a heap-only tuple). Applies to the pages written from now on.
ALTER TABLE callbacks SET (fillfactor = 70);
