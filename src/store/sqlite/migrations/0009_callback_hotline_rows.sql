-- An item's hotline rows are removed by (hotline, item id), the hotlines read from the item's
-- stored JSON (src/store/callbacks.rs, Refresh::plan); only an item whose JSON does not parse
-- has its rows found by item id alone, which reads the table. The index by item id cost every
-- new item one more random page to write.
DROP INDEX IF EXISTS callback_hotlines_by_item;
