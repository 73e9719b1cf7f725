-- The call listing walks one index per alternative of a filter (see store::listing): the user
-- name gets the index the other filtered columns have, and the calls whose start time moved
-- after they were first seen (their sort key is the first one) get a small index of their own,
-- so that a time range is a range of sort keys plus these few.
CREATE INDEX calls_by_user ON calls (user_name, sort_key, seq);
CREATE INDEX calls_moved ON calls (sort_key, seq)
    WHERE start_time IS NOT NULL AND sort_key <> start_time;
