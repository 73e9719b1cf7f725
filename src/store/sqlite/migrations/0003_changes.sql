-- The feed: one change per new event, committed with it (see store::ChangeLog). seq is the
-- change's position; AUTOINCREMENT so that a position is never handed out twice, even after the
-- newest rows are deleted. The filter columns hold the call as of the change, in normal form
-- (NULL for changes that are not about a call); data is the call record as the API shows it, or
-- the payload of a non-call event.
CREATE TABLE changes (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    type             TEXT    NOT NULL,
    event_id         INTEGER NOT NULL,
    received_at      INTEGER NOT NULL,
    call_id          TEXT,
    status_norm      TEXT,
    phase            TEXT,
    direction        TEXT,
    hotline          TEXT,
    user_name        TEXT,
    transaction_id   TEXT,
    caller_norm      TEXT,
    destination_norm TEXT,
    data             TEXT    NOT NULL
);
