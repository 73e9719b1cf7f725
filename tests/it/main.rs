//! alohook's integration tests: a real server on an ephemeral port, real HTTP, a real database.

mod support;

/// The dashboard in a real headless Chromium: sign-in, Live updates, search, escaping, language.
mod browser;
/// The missed-call callback worklist: by hand, in any arrival order, rebuilt with the records.
mod callbacks;
/// The real binary: first-run credentials, the listening line, SIGTERM.
mod cli;
/// The dashboard over HTTP: sessions, roles, CSRF, security headers, escaping, languages.
mod dashboard;
/// Identity of events: key order, whitespace, number vs string, restarts, concurrent resends.
mod dedupe;
/// Exports: CSV and JSON Lines over HTTP and from the command line.
mod export;
/// The change feed: one change per new event, `/api/changes`, the SSE stream, resume, limits.
mod feed;
/// Forwarding: destinations through the API and the command line.
mod forward;
/// One record per call whatever the arrival order; typing of loose fields.
mod merge;
/// `GET /api/openapi.json`: described and served agree.
mod openapi;
/// PostgreSQL only: two instances on one database, and a database outage mid-load.
mod postgres;
/// The read API: call object, events, filters, cursor paging, quarantine listing, auth.
mod read_api;
/// `/readyz`: a full disk (a real tmpfs), a write lock held by someone else.
mod readiness;
/// The simulator end to end: verify, its failure modes, and the SIGKILL crash test.
mod sim;
/// `GET /api/stats`: every figure by hand, in any arrival order.
mod stats;
/// The Store contract straight, below HTTP: batches of every shape, and two PostgreSQL writers
/// taking turns with one call.
mod store;
/// Every row of the webhook's answer table, 405, body limits, quarantine.
mod webhook;
