-- Dashboard sessions signed out before they expired. A session is a cookie the server signs
-- (src/web/session.rs), valid until it has been idle too long; signing out is remembered here,
-- where every instance sees it, until the cookie would have expired anyway.
CREATE TABLE ended_sessions (
    id       TEXT   PRIMARY KEY,   -- SHA-256 of the session's nonce, hex
    ended_at BIGINT NOT NULL       -- Unix seconds
);

-- Who closed a callback item by hand: the role signed in (admin, viewer).
ALTER TABLE callback_closes ADD COLUMN closed_by TEXT;
