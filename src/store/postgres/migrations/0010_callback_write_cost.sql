-- What the callback worklist costs ingest (bench/worklist-cost): every new item wrote an entry
-- in each of the items' indexes.
--
-- The listing of every state (`state=all`) reads the open and the closed items each in the
-- order of the index by state and merges them (src/store/callbacks.rs, list_query), so the
-- index by first miss alone goes.
DROP INDEX IF EXISTS callbacks_by_first_miss;
