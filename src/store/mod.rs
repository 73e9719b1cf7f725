//! Where events and call records are kept. [`Store`] speaks in domain operations; backends
//! (SQLite now, PostgreSQL later) implement it and nothing above this module sees SQL.

use async_trait::async_trait;
use jiff::tz::TimeZone;
use sha2::{Digest, Sha256};

use crate::forward::destination::DestinationSpec;
use crate::model::change::{
    Change, ChangeBody, ChangeFilter, ChangeSubject, ChangeType, NewChange,
};
use crate::model::merge::MERGED_FIELDS;
use crate::model::phone::normalize_phone;
use crate::model::{
    CallRecord, EventFields, FinalStatuses, ParsedEvent, Phase, SourceKey, parse_body,
};

pub mod callbacks;
pub mod deliveries;
pub mod listing;
pub mod postgres;
pub mod reports;
pub mod rollup;
pub mod sqlite;

pub use deliveries::{
    Attempt, Deliveries, DeliveryFilter, DeliveryPage, DeliveryState, DeliveryUpdate,
    StoredDelivery,
};

/// The settings a stored call record depends on: which statuses end a call (they rank an event
/// and set the phase) and the zone Alohub's local times are read in. Records merged under other
/// settings are recomputed from their events when a store opens (see [`MergeSettings::fingerprint`]).
#[derive(Debug, Clone)]
pub struct MergeSettings {
    pub finals: FinalStatuses,
    pub timezone: TimeZone,
    pub timezone_name: String,
    /// A command that only reads (`alohook export`): stored records merged under other
    /// settings are an error, not something to recompute.
    pub read_only: bool,
    /// The figures' thresholds, from a command that takes them (`serve`): the summary of
    /// `/api/stats` counts abandons and the service level with them, and is rebuilt when they
    /// change (see [`rollup`]). `None`: keep the summary's own (built with the defaults when
    /// there is none).
    pub thresholds: Option<crate::report::stats::Thresholds>,
}

impl MergeSettings {
    /// The error of a read-only command whose settings are not the stored records'.
    pub fn refuse_recompute(&self, stored: Option<&str>) -> Option<StoreError> {
        (self.read_only).then(|| {
            StoreError::Database(match stored {
                Some(stored) => format!(
                    "the stored calls were merged under \"{stored}\", and this command's settings \
                     are \"{}\": give it the --timezone and --final-statuses alohook serve runs \
                     with (a command that only reads never recomputes the calls)",
                    self.fingerprint()
                ),
                None => "this database holds no alohook calls yet (check --data-dir or \
                         --database)"
                    .to_string(),
            })
        })
    }
}

impl Default for MergeSettings {
    fn default() -> Self {
        MergeSettings {
            finals: FinalStatuses::default(),
            timezone: TimeZone::get(crate::config::DEFAULT_TIMEZONE)
                .expect("the bundled time zone database has the default zone"),
            timezone_name: crate::config::DEFAULT_TIMEZONE.to_string(),
            read_only: false,
            thresholds: None,
        }
    }
}

/// Which version of the merge rule the stored records follow. Raised when the rule changes, so
/// that every store recomputes its records once.
const MERGE_RULE: u32 = 2;

impl MergeSettings {
    /// Everything a stored record depends on, as text: stores keep it beside the records and
    /// recompute them when it changes.
    pub fn fingerprint(&self) -> String {
        let mut finals: Vec<&str> = self.finals.as_slice().iter().map(String::as_str).collect();
        finals.sort_unstable();
        finals.dedup();
        format!(
            "merge rule {MERGE_RULE}; final statuses {}; time zone {}",
            finals.join(","),
            self.timezone_name
        )
    }

    /// The fingerprint's SHA-256 in hex, safe to write into SQL.
    pub fn fingerprint_hash(&self) -> String {
        Sha256::digest(self.fingerprint().as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A call's record rebuilt from its stored events (body, receipt time), oldest first, under
    /// these settings. Events that no longer parse are left out (with a warning); `None` when
    /// none parses.
    pub fn remerge(&self, call_id: &str, events: &[(String, i64)]) -> Option<CallRecord> {
        let mut record: Option<CallRecord> = None;
        for (body, received_at) in events {
            let event = match parse_body(body.as_bytes(), &self.timezone) {
                Ok(event) => event,
                Err(error) => {
                    tracing::warn!(call_id, %error, "a stored event no longer parses; left out of its call");
                    continue;
                }
            };
            let key = event.source_key(&self.finals);
            match &mut record {
                None => {
                    record = Some(CallRecord::from_event(
                        call_id,
                        &event.fields,
                        key,
                        *received_at,
                    ))
                }
                Some(r) => r.merge(&event.fields, key, *received_at),
            }
        }
        record
    }
}

/// Logs a recomputation of the call records (see the stores' `recompute_if_stale`); nothing for
/// a new, empty database.
pub fn log_recomputed(stored: Option<&str>, now: &str, calls: usize, started: std::time::Instant) {
    if stored.is_some() || calls > 0 {
        tracing::info!(
            calls,
            seconds = started.elapsed().as_secs_f64(),
            was = stored.unwrap_or("(before merge settings were recorded)"),
            now,
            "recomputed the call records: the merge settings changed"
        );
    }
}

/// Key of the row in `alohook_meta` that holds the [`MergeSettings::fingerprint`] of the records.
pub const MERGE_SETTINGS_KEY: &str = "merge_settings";

/// What an empty batch writes (`?`: the time, Unix microseconds).
pub const HEARTBEAT: &str = "INSERT INTO alohook_meta (key, value) VALUES ('heartbeat', ?) \
    ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/// One accepted request, waiting to be committed.
#[derive(Debug, Clone)]
pub enum Incoming {
    /// A valid event, to be stored (or counted as a resend) and merged into its call.
    Event {
        event: Box<ParsedEvent>,
        received_at: i64,
    },
    /// A body that is not a valid event, kept in the quarantine.
    Rejected(RejectedBody),
}

/// A body kept in the quarantine.
#[derive(Debug, Clone)]
pub struct RejectedBody {
    /// `invalid_json` or `invalid_event`.
    pub reason: &'static str,
    pub detail: String,
    pub body: Vec<u8>,
    /// Unix microseconds.
    pub received_at: i64,
}

/// What became of one [`Incoming`], in the order given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// First delivery of an event: stored under this id.
    Stored { event_id: i64 },
    /// A resend: the event was stored before under this id; its delivery count went up.
    Duplicate { event_id: i64 },
    /// Kept in the quarantine under this id (a repeat of a known bad body counts a delivery).
    Quarantined { id: i64 },
}

/// What a commit did: an outcome for each item, in the order given, and the changes it
/// committed, in `seq` order (one for each event stored now; none for resends).
#[derive(Debug, Clone, Default)]
pub struct Committed {
    pub outcomes: Vec<Outcome>,
    pub changes: Vec<Change>,
}

/// A page of the feed.
#[derive(Debug, Clone, Default)]
pub struct ChangePage {
    pub items: Vec<Change>,
    /// Whether more matching changes were committed after the page's last item (when the page
    /// was read).
    pub more: bool,
}

/// A call record with its derived phase, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCall {
    pub record: CallRecord,
    pub phase: Phase,
}

/// One event as stored.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub event_id: i64,
    pub received_at: i64,
    pub deliveries: i64,
    pub warnings: Vec<String>,
    /// The body exactly as received (a JSON object).
    pub payload: String,
}

/// One quarantined body.
#[derive(Debug, Clone)]
pub struct StoredRejection {
    pub id: i64,
    pub reason: String,
    pub detail: String,
    pub received_at: i64,
    pub deliveries: i64,
    pub body: Vec<u8>,
}

/// Filters of the call listing. Every filter is an exact match except `phone` (caller or
/// destination, compared in normalised form) and the start-time range.
#[derive(Debug, Clone, Default)]
pub struct CallFilter {
    pub status: Option<String>,
    pub phase: Option<Phase>,
    pub direction: Option<String>,
    pub hotline: Option<String>,
    pub user_name: Option<String>,
    pub destination_number: Option<String>,
    pub transaction_id: Option<String>,
    /// Normalised with [`crate::model::phone::normalize_phone`].
    pub phone: Option<String>,
    /// The agent as the figures see one: `user_name`, or `destination_number` for a call with
    /// no user name.
    pub agent: Option<String>,
    /// Unix seconds, inclusive.
    pub from: Option<i64>,
    pub to: Option<i64>,
}

/// A position in the call listing: the listing is ordered by (sort key, seq) descending, and both
/// are fixed once a call exists, so a cursor stays valid while events keep arriving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallCursor {
    pub sort_key: i64,
    pub seq: i64,
}

#[derive(Debug, Clone)]
pub struct CallPage {
    pub items: Vec<StoredCall>,
    pub next: Option<CallCursor>,
}

#[derive(Debug, Clone)]
pub struct RejectedPage {
    pub items: Vec<StoredRejection>,
    /// The id to continue below.
    pub next: Option<i64>,
}

/// A page of a call's events, oldest first.
#[derive(Debug, Clone)]
pub struct EventPage {
    pub items: Vec<StoredEvent>,
    /// The id to continue after.
    pub next: Option<i64>,
}

/// Most bytes one page of calls, events or quarantined bodies holds (a single larger item still
/// makes a page of one). With a few pages built at once, this is what bounds the memory a read
/// can take, whatever its `limit`.
pub const PAGE_BYTES: usize = 2 * 1024 * 1024;

/// Fills a page from rows read in order: up to `limit` items and [`PAGE_BYTES`] of bodies.
pub struct Pager<T> {
    items: Vec<T>,
    bytes: usize,
    limit: usize,
    max_bytes: usize,
    more: bool,
}

impl<T> Pager<T> {
    pub fn new(limit: usize) -> Self {
        Self::with_bytes(limit, PAGE_BYTES)
    }

    /// A pager that stops at `max_bytes` instead of [`PAGE_BYTES`].
    pub fn with_bytes(limit: usize, max_bytes: usize) -> Self {
        Pager {
            items: Vec::new(),
            bytes: 0,
            limit,
            max_bytes,
            more: false,
        }
    }

    /// Takes the next row, of `size` bytes; `false` (and the row is left for the next page)
    /// once the page is full.
    pub fn push(&mut self, item: T, size: usize) -> bool {
        let full = self.items.len() >= self.limit
            || (!self.items.is_empty() && self.bytes + size > self.max_bytes);
        if full {
            self.more = true;
            return false;
        }
        self.bytes += size;
        self.items.push(item);
        true
    }

    /// The page, and the position to continue from (that of its last item) when rows were left.
    pub fn finish<P>(self, position: impl Fn(&T) -> P) -> (Vec<T>, Option<P>) {
        let next = if self.more {
            self.items.last().map(position)
        } else {
            None
        };
        (self.items, next)
    }
}

/// A store failure. The details go to the log; clients only learn the store is unavailable.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    #[error("the store is shutting down")]
    Closed,
    #[error("corrupt data in the store: {0}")]
    Corrupt(String),
    /// The database aborted the transaction to break a deadlock or a conflict; running it again
    /// is safe.
    #[error("transaction aborted, to be retried: {0}")]
    Retry(String),
}

/// The feed of changes, an ordered log: what the live stream, `/api/changes` (and later
/// forwarding and the dashboard) read.
///
/// The promise every backend keeps: positions are handed out in commit order, with no gaps, and
/// never reused. So a reader that has seen `seq` N never afterwards finds a newly committed
/// change at or below N, and reading `seq > N` skips nothing.
#[async_trait]
pub trait ChangeLog: Send + Sync + 'static {
    /// Changes after `after` that match `filter`, in `seq` order: at most `limit`, and at most
    /// `max_bytes` of them (see [`change_size`]; a single larger one still makes a page of one).
    async fn changes(
        &self,
        after: i64,
        filter: &ChangeFilter,
        limit: usize,
        max_bytes: usize,
    ) -> Result<ChangePage, StoreError>;

    /// The position of the last committed change; 0 before the first.
    async fn last_seq(&self) -> Result<i64, StoreError>;

    /// How many changes after `after` match `filter` (and, with `undelivered_to`, have no
    /// delivery to that destination yet), and when the first of them was received (Unix
    /// microseconds).
    async fn count_changes(
        &self,
        after: i64,
        filter: &ChangeFilter,
        undelivered_to: Option<&str>,
    ) -> Result<(i64, Option<i64>), StoreError>;

    /// A channel that gets a message whenever another process may have committed changes
    /// (PostgreSQL: its LISTEN/NOTIFY), so that this process's live readers see them too. `None`
    /// when no other process writes (SQLite). Called once, by the feed.
    fn watch_other_writers(&self) -> Option<tokio::sync::mpsc::Receiver<()>> {
        None
    }
}

/// A forwarding destination as stored (see [`crate::forward`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDestination {
    pub id: String,
    pub spec: DestinationSpec,
    pub enabled: bool,
    /// Why it was disabled (a receiver's 410, or an operator), while it is.
    pub disabled_reason: Option<String>,
    /// `whsec_…`: what signs its deliveries.
    pub secret: String,
    /// The secret before the last rotation, which signs alongside until `previous_secret_until`.
    pub previous_secret: Option<String>,
    pub previous_secret_until: Option<i64>,
    /// Every matching change up to this position has its delivery.
    pub cursor: i64,
    /// Unix microseconds.
    pub created_at: i64,
    pub updated_at: i64,
}

/// What a destination's deliveries come to so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryCounts {
    /// Deliveries waiting for an attempt (not counting the matching changes not handed to the
    /// destination yet).
    pub pending: i64,
    pub delivered: i64,
    pub dead: i64,
    /// Attempts that did not deliver.
    pub failed_attempts: i64,
    /// When the change of the oldest pending delivery was received, Unix microseconds.
    pub oldest_pending_received_at: Option<i64>,
    /// When the last attempt that delivered was made, Unix microseconds.
    pub last_success_at: Option<i64>,
    /// What the last attempt that did not deliver came to.
    pub last_error: Option<String>,
}

/// Dashboard sessions signed out before they expired (see [`crate::web::session`]): a session
/// is a signed cookie, so signing out is remembered here, where every instance sees it.
#[async_trait]
pub trait Sessions: Send + Sync + 'static {
    /// Remembers that session `id` was signed out at `at` (Unix seconds), and forgets those
    /// signed out before `forget_before` (their cookies have expired by then anyway).
    async fn end_session(&self, id: &str, at: i64, forget_before: i64) -> Result<(), StoreError>;

    /// Whether session `id` was signed out.
    async fn session_ended(&self, id: &str) -> Result<bool, StoreError>;
}

/// Remembers a signed-out session (any order of sign-outs: the first one counts).
pub const END_SESSION: &str =
    "INSERT INTO ended_sessions (id, ended_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING";
/// Forgets the sessions signed out before a time.
pub const FORGET_SESSIONS: &str = "DELETE FROM ended_sessions WHERE ended_at < ?";
/// Whether a session was signed out.
pub const SESSION_ENDED: &str = "SELECT 1 FROM ended_sessions WHERE id = ?";

/// Forwarding destinations, kept in the store so that every instance shares them.
#[async_trait]
pub trait Destinations: Send + Sync + 'static {
    /// Stores a new destination, which starts after `cursor`.
    async fn create_destination(
        &self,
        id: &str,
        spec: &DestinationSpec,
        secret: &str,
        cursor: i64,
    ) -> Result<StoredDestination, StoreError>;

    /// Every destination, oldest first.
    async fn destinations(&self) -> Result<Vec<StoredDestination>, StoreError>;

    async fn destination(&self, id: &str) -> Result<Option<StoredDestination>, StoreError>;

    /// Saves what an operator or a receiver changes: the spec, whether it is enabled and why
    /// not, the secrets; only if the stored destination is still the one read
    /// (`destination.updated_at` unchanged). `false` when there is no such destination, or it
    /// changed since it was read (read it again and redo the change: two changes at once, a
    /// PATCH and a secret rotation say, must not undo each other).
    async fn update_destination(&self, destination: &StoredDestination)
    -> Result<bool, StoreError>;

    /// Removes a destination and its deliveries. `false` when there is no such destination.
    async fn delete_destination(&self, id: &str) -> Result<bool, StoreError>;

    async fn delivery_counts(&self, id: &str) -> Result<DeliveryCounts, StoreError>;
}

/// The columns of a destination, in the order [`read_destination_row`] reads them.
pub const DESTINATION_COLUMNS: &str = "id, spec, enabled, disabled_reason, secret, \
    previous_secret, previous_secret_until, cursor, created_at, updated_at";

pub const INSERT_DESTINATION: &str = "INSERT INTO destinations (id, spec, enabled, secret, \
    cursor, created_at, updated_at) VALUES (?, ?, 1, ?, ?, ?, ?)";

pub const UPDATE_DESTINATION: &str = "UPDATE destinations SET spec = ?, enabled = ?, \
    disabled_reason = ?, secret = ?, previous_secret = ?, previous_secret_until = ?, \
    updated_at = ? WHERE id = ? AND updated_at = ?";

/// Removing a destination: its attempts, its deliveries, itself (each takes its id).
pub const DELETE_DESTINATION: [&str; 3] = [
    "DELETE FROM delivery_attempts WHERE delivery_id IN \
     (SELECT id FROM deliveries WHERE destination_id = ?)",
    "DELETE FROM deliveries WHERE destination_id = ?",
    "DELETE FROM destinations WHERE id = ?",
];

/// A destination's delivery counts: each query takes its id. An attempt failed when it has an
/// error (every failure has one: a status that is not 2xx, a timeout, a refused publish); a
/// successful NATS publish has neither status nor error.
pub const DELIVERY_COUNTS: &str = "SELECT \
    count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'delivered'), \
    count(*) FILTER (WHERE state = 'dead') FROM deliveries WHERE destination_id = ?";
pub const DELIVERY_ATTEMPT_COUNTS: &str = "SELECT \
    count(*) FILTER (WHERE a.error IS NOT NULL), max(a.at) FILTER (WHERE a.error IS NULL) \
    FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id \
    WHERE d.destination_id = ?";
pub const LAST_DELIVERY_ERROR: &str = "SELECT a.status, a.error FROM delivery_attempts a \
    JOIN deliveries d ON d.id = a.delivery_id WHERE d.destination_id = ? \
    AND a.error IS NOT NULL ORDER BY a.at DESC LIMIT 1";
pub const OLDEST_PENDING: &str = "SELECT min(c.received_at) FROM deliveries d \
    JOIN changes c ON c.seq = d.seq WHERE d.destination_id = ? AND d.state = 'pending'";

/// A destination selected with [`DESTINATION_COLUMNS`].
pub fn read_destination_row(row: &impl RowColumns) -> Result<StoredDestination, StoreError> {
    let spec = row.required_text(1)?;
    Ok(StoredDestination {
        id: row.required_text(0)?,
        spec: serde_json::from_str(&spec)
            .map_err(|e| StoreError::Corrupt(format!("a destination's spec: {e}")))?,
        enabled: row.required_integer(2)? != 0,
        disabled_reason: row.text(3)?,
        secret: row.required_text(4)?,
        previous_secret: row.text(5)?,
        previous_secret_until: row.integer(6)?,
        cursor: row.required_integer(7)?,
        created_at: row.required_integer(8)?,
        updated_at: row.required_integer(9)?,
    })
}

/// The spec as it is stored.
pub fn spec_json(spec: &DestinationSpec) -> String {
    // Strings, numbers and maps of strings: serialising cannot fail.
    serde_json::to_string(spec).unwrap_or_default()
}

/// The last error of a failed attempt, as `DeliveryCounts::last_error` says it.
pub fn describe_failure(status: Option<i64>, error: Option<String>) -> String {
    match (status, error) {
        (_, Some(error)) => error,
        (Some(status), None) => format!("answered {status}"),
        (None, None) => "failed".to_string(),
    }
}

/// The terms of a change filter against the `changes` table: SQL with `?` and the arguments.
pub(crate) fn change_filter_terms(filter: &ChangeFilter) -> (Vec<String>, Vec<Column>) {
    let mut terms = Vec::new();
    let mut args = Vec::new();
    if let Some(types) = &filter.types {
        if types.is_empty() {
            terms.push("1 = 0".into());
        } else {
            terms.push(format!("type IN ({})", vec!["?"; types.len()].join(", ")));
            args.extend(types.iter().map(|t| Column::Text(Some(t.as_str().into()))));
        }
    }
    let mut text = |column: &str, value: &Option<String>| {
        if let Some(v) = value {
            terms.push(format!("{column} = ?"));
            args.push(Column::Text(Some(v.clone())));
        }
    };
    text("call_id", &filter.call_id);
    text("status_norm", &filter.status);
    text("phase", &filter.phase.map(|p| p.as_str().to_string()));
    text("direction", &filter.direction);
    text("hotline", &filter.hotline);
    text("user_name", &filter.user_name);
    text("transaction_id", &filter.transaction_id);
    text("destination_norm", &filter.destination_number);
    if let Some(phone) = &filter.phone {
        terms.push("(caller_norm = ? OR destination_norm = ?)".into());
        args.push(Column::Text(Some(phone.clone())));
        args.push(Column::Text(Some(phone.clone())));
    }
    (terms, args)
}

/// How many changes after `after` match `filter`, and the first one's receipt time.
pub fn count_changes_query(
    after: i64,
    filter: &ChangeFilter,
    undelivered_to: Option<&str>,
) -> Statement {
    let (mut terms, mut args) = change_filter_terms(filter);
    terms.insert(0, "seq > ?".into());
    args.insert(0, Column::Integer(Some(after)));
    if let Some(destination) = undelivered_to {
        // Changes past a destination's saved cursor may have their deliveries already.
        terms.push(
            "NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.destination_id = ? \
             AND d.seq = changes.seq)"
                .into(),
        );
        args.push(Column::Text(Some(destination.to_string())));
    }
    Statement {
        sql: format!(
            "SELECT count(*), min(received_at) FROM changes WHERE {}",
            terms.join(" AND ")
        ),
        args,
    }
}

/// The domain operations alohook needs from a database.
#[async_trait]
pub trait Store: ChangeLog + Destinations + Deliveries + reports::Reports + Sessions {
    /// Commits a batch in one durable transaction: stores new events, counts resends, merges
    /// call events into their calls, quarantines bad bodies, and writes one change for every
    /// event stored now. Either all of it commits or none. An empty batch writes a heartbeat row
    /// instead: a real write, proof that the store takes writes now.
    /// It may block the calling thread (SQLite does): call it from a thread that may block, as
    /// alohook's writer thread is.
    async fn commit(&self, batch: Vec<Incoming>) -> Result<Committed, StoreError>;

    /// How many [`Store::commit`] calls may run at once. SQLite has one writer; a database
    /// server serialises conflicting batches itself (and retries what it aborts).
    fn concurrent_commits(&self) -> usize {
        1
    }

    /// One call by id.
    async fn call(&self, call_id: &str) -> Result<Option<StoredCall>, StoreError>;

    /// Calls matching `filter`, newest start first, `limit` at most, after `cursor`, with the
    /// work of [`listing::SCAN_BUDGET`] (see [`Store::calls_within`]).
    async fn calls(
        &self,
        filter: &CallFilter,
        limit: usize,
        cursor: Option<CallCursor>,
    ) -> Result<CallPage, StoreError> {
        self.calls_within(filter, limit, cursor, listing::SCAN_BUDGET)
            .await
    }

    /// Calls matching `filter`, newest start first, `limit` at most, after `cursor`, each walk
    /// of an index examining at most `budget` entries (see [`listing`]): a page may then hold
    /// fewer than `limit` calls, or none, and still have a `next` to go on from.
    async fn calls_within(
        &self,
        filter: &CallFilter,
        limit: usize,
        cursor: Option<CallCursor>,
        budget: usize,
    ) -> Result<CallPage, StoreError>;

    /// The events of one call in the order received, with ids above `after`: at most `limit`
    /// and [`PAGE_BYTES`] of bodies. `None` when the call is unknown.
    async fn call_events(
        &self,
        call_id: &str,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Option<EventPage>, StoreError>;

    /// Quarantined bodies, newest first, with ids below `before`: at most `limit` and
    /// [`PAGE_BYTES`] of bodies.
    async fn rejected(&self, limit: usize, before: Option<i64>)
    -> Result<RejectedPage, StoreError>;

    /// Ok when the store can take writes now.
    async fn check_writable(&self) -> Result<(), StoreError>;
}

/// The call records a writer wrote last, so that the next event of a call (usually close behind)
/// is merged without reading the row back. SQLite trusts it because one process owns the file;
/// PostgreSQL checks each entry against the row's `event_count` when it writes (another instance
/// may have merged an event since). Emptied whenever a transaction fails.
#[derive(Default)]
pub(crate) struct CallCache {
    entries: std::collections::HashMap<String, (i64, CallRecord)>,
}

impl CallCache {
    /// Enough for every call of the last minutes of a busy contact centre; a few MiB.
    const CAPACITY: usize = 4096;

    /// Removes and returns a call's record and `seq`: whoever takes it writes the call next.
    pub(crate) fn take(&mut self, call_id: &str) -> Option<(i64, CallRecord)> {
        self.entries.remove(call_id)
    }

    /// Keeps a record that was just committed, unless a newer one (more events merged) is held.
    pub(crate) fn put(&mut self, call_id: &str, seq: i64, record: CallRecord) {
        if let Some((_, held)) = self.entries.get(call_id) {
            if held.event_count > record.event_count {
                return;
            }
        } else if self.entries.len() >= Self::CAPACITY {
            self.entries.clear();
        }
        self.entries.insert(call_id.to_string(), (seq, record));
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }
}

/// The sort key of a call: the start time of its first event, or the lowest value when it had
/// none, so that such calls list last.
pub fn sort_key(sort_time: Option<i64>) -> i64 {
    sort_time.unwrap_or(i64::MIN)
}

/// One column value of a call row, whatever the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Column {
    Text(Option<String>),
    Integer(Option<i64>),
}

/// The stored columns of a call record (all but its `seq`), by column name. Backends write them
/// as they are; an update writes only those that differ from the row's previous columns.
pub fn call_columns(record: &CallRecord, finals: &FinalStatuses) -> Vec<(&'static str, Column)> {
    use Column::{Integer, Text};
    let f = &record.fields;
    vec![
        ("call_id", Text(f.call_id.clone())),
        ("sort_key", Integer(Some(sort_key(record.sort_time)))),
        (
            "phase",
            Text(Some(record.phase(finals).as_str().to_string())),
        ),
        ("call_status", Text(f.call_status.clone())),
        (
            "status_norm",
            Text(f.call_status.as_deref().map(str::to_lowercase)),
        ),
        ("direction", Text(f.direction.clone())),
        ("caller_number", Text(f.caller_number.clone())),
        (
            "caller_norm",
            Text(f.caller_number.as_deref().map(normalize_phone)),
        ),
        ("destination_number", Text(f.destination_number.clone())),
        (
            "destination_norm",
            Text(f.destination_number.as_deref().map(normalize_phone)),
        ),
        ("hotline", Text(f.hotline.clone())),
        ("user_name", Text(f.user_name.clone())),
        ("transaction_id", Text(f.transaction_id.clone())),
        ("object_id", Integer(f.object_id)),
        ("start_time", Integer(f.start_time)),
        ("answer_time", Integer(f.answer_time)),
        ("end_time", Integer(f.end_time)),
        ("hangup_by", Text(f.hangup_by.clone())),
        ("total_duration", Integer(f.total_duration)),
        ("holding_duration", Integer(f.holding_duration)),
        ("recording_url", Text(f.recording_url.clone())),
        ("event_count", Integer(Some(record.event_count))),
        ("first_received_at", Integer(Some(record.first_received_at))),
        ("last_received_at", Integer(Some(record.last_received_at))),
        ("sources", Text(Some(encode_sources(&record.sources)))),
    ]
}

/// `UPDATE calls SET <every column but call_id> = ? … WHERE seq = ?`, for rewriting a whole row.
pub fn rewrite_call(seq: i64, record: &CallRecord, finals: &FinalStatuses) -> Statement {
    let columns: Vec<(&str, Column)> = call_columns(record, finals)
        .into_iter()
        .filter(|(name, _)| *name != "call_id")
        .collect();
    let sets: Vec<String> = columns
        .iter()
        .map(|(name, _)| format!("{name} = ?"))
        .collect();
    let mut args: Vec<Column> = columns.into_iter().map(|(_, v)| v).collect();
    args.push(Column::Integer(Some(seq)));
    Statement {
        sql: format!("UPDATE calls SET {} WHERE seq = ?", sets.join(", ")),
        args,
    }
}

/// A statement with `?` placeholders and its arguments in order.
pub struct Statement {
    pub sql: String,
    pub args: Vec<Column>,
}

/// Which event filled each merged field, compactly: the distinct source keys once each
/// (`rank.known.tiebreak`, the last in hex, `;`-separated), then `|`, then per field the index of
/// its key (empty for a field never filled), comma-separated. A call's fields mostly come from
/// one to three events, so this is a third of the size of one key per field, and every byte of
/// it is written with every merge.
pub fn encode_sources(sources: &[Option<SourceKey>; MERGED_FIELDS]) -> String {
    use std::fmt::Write;
    let mut keys: Vec<SourceKey> = Vec::with_capacity(4);
    let mut indexes = [None; MERGED_FIELDS];
    for (slot, source) in indexes.iter_mut().zip(sources) {
        if let Some(key) = source {
            let at = match keys.iter().position(|k| k == key) {
                Some(at) => at,
                None => {
                    keys.push(*key);
                    keys.len() - 1
                }
            };
            *slot = Some(at);
        }
    }
    let mut out = String::with_capacity(keys.len() * 20 + MERGED_FIELDS * 2 + 1);
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        let _ = write!(out, "{}.{}.{:x}", k.rank, k.known, k.tiebreak);
    }
    out.push('|');
    for (i, at) in indexes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if let Some(at) = at {
            let _ = write!(out, "{at}");
        }
    }
    out
}

/// The inverse of [`encode_sources`]; also reads the one-key-per-field forms written before it.
pub fn decode_sources(text: &str) -> Result<[Option<SourceKey>; MERGED_FIELDS], StoreError> {
    let corrupt = || StoreError::Corrupt(format!("bad merge sources {text:?}"));
    let key = |part: &str| -> Result<SourceKey, StoreError> {
        // `rank:event_id` is how records were written before merge rule 2. Such a row is
        // recomputed when its store opens; until then (an older instance still writing during an
        // upgrade) it reads as the weakest key of its rank.
        if let Some((rank, id)) = part.split_once(':') {
            id.parse::<i64>().map_err(|_| corrupt())?;
            return Ok(SourceKey {
                rank: rank.parse().map_err(|_| corrupt())?,
                known: 0,
                tiebreak: 0,
            });
        }
        let mut pieces = part.split('.');
        let (Some(rank), Some(known), Some(tiebreak), None) =
            (pieces.next(), pieces.next(), pieces.next(), pieces.next())
        else {
            return Err(corrupt());
        };
        Ok(SourceKey {
            rank: rank.parse().map_err(|_| corrupt())?,
            known: known.parse().map_err(|_| corrupt())?,
            tiebreak: u64::from_str_radix(tiebreak, 16).map_err(|_| corrupt())?,
        })
    };
    let mut sources = [None; MERGED_FIELDS];
    match text.split_once('|') {
        Some((keys, fields)) => {
            let keys: Vec<SourceKey> = if keys.is_empty() {
                Vec::new()
            } else {
                keys.split(';').map(key).collect::<Result<_, _>>()?
            };
            let parts: Vec<&str> = fields.split(',').collect();
            if parts.len() != MERGED_FIELDS {
                return Err(corrupt());
            }
            for (slot, part) in sources.iter_mut().zip(parts) {
                if !part.is_empty() {
                    let at: usize = part.parse().map_err(|_| corrupt())?;
                    *slot = Some(*keys.get(at).ok_or_else(corrupt)?);
                }
            }
        }
        None => {
            let parts: Vec<&str> = text.split(',').collect();
            if parts.len() != MERGED_FIELDS {
                return Err(corrupt());
            }
            for (slot, part) in sources.iter_mut().zip(parts) {
                if !part.is_empty() {
                    *slot = Some(key(part)?);
                }
            }
        }
    }
    Ok(sources)
}

/// The columns every backend selects for a call, in the order [`read_call_row`] reads them.
pub const CALL_COLUMNS: &str = "seq, call_id, sort_key, phase, call_status, direction, \
    caller_number, destination_number, hotline, user_name, transaction_id, object_id, start_time, \
    answer_time, end_time, hangup_by, total_duration, holding_duration, recording_url, \
    event_count, first_received_at, last_received_at, sources";

/// A database row, read by column index, whatever the backend.
pub trait RowColumns {
    fn text(&self, index: usize) -> Result<Option<String>, StoreError>;
    fn integer(&self, index: usize) -> Result<Option<i64>, StoreError>;
    fn bytes(&self, index: usize) -> Result<Option<Vec<u8>>, StoreError>;

    fn required_text(&self, index: usize) -> Result<String, StoreError> {
        self.text(index)?
            .ok_or_else(|| StoreError::Corrupt(format!("column {index} is NULL")))
    }

    fn required_integer(&self, index: usize) -> Result<i64, StoreError> {
        self.integer(index)?
            .ok_or_else(|| StoreError::Corrupt(format!("column {index} is NULL")))
    }
}

/// The columns every backend selects for a call's events, in the order [`read_event_row`]
/// reads them.
pub const EVENT_COLUMNS: &str = "id, received_at, deliveries, warnings, body";

/// The query of a call's events: the call id (twice), ids above the third argument, as many
/// rows as the fourth.
pub const CALL_EVENTS_QUERY: &str = "SELECT id, received_at, deliveries, warnings, body \
    FROM events WHERE scope = ? AND call_id = ? AND id > ? ORDER BY id LIMIT ?";

pub fn read_event_row(row: &impl RowColumns) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        event_id: row.required_integer(0)?,
        received_at: row.required_integer(1)?,
        deliveries: row.required_integer(2)?,
        warnings: row
            .text(3)?
            .and_then(|w| serde_json::from_str(&w).ok())
            .unwrap_or_default(),
        payload: row.required_text(4)?,
    })
}

/// The query of the quarantine listing: ids below `?`, newest first, `?` rows.
pub const REJECTED_QUERY: &str = "SELECT id, reason, detail, received_at, deliveries, body \
    FROM rejected WHERE id < ? ORDER BY id DESC LIMIT ?";

pub fn read_rejected_row(row: &impl RowColumns) -> Result<StoredRejection, StoreError> {
    Ok(StoredRejection {
        id: row.required_integer(0)?,
        reason: row.required_text(1)?,
        detail: row.required_text(2)?,
        received_at: row.required_integer(3)?,
        deliveries: row.required_integer(4)?,
        body: row.bytes(5)?.unwrap_or_default(),
    })
}

/// A call selected with [`CALL_COLUMNS`]: its `seq` and the call.
pub fn read_call_row(row: &impl RowColumns) -> Result<(i64, StoredCall), StoreError> {
    let sort_key = row.required_integer(2)?;
    let phase = row.required_text(3)?;
    let fields = EventFields {
        call_id: row.text(1)?,
        call_status: row.text(4)?,
        direction: row.text(5)?,
        caller_number: row.text(6)?,
        destination_number: row.text(7)?,
        hotline: row.text(8)?,
        user_name: row.text(9)?,
        transaction_id: row.text(10)?,
        object_id: row.integer(11)?,
        start_time: row.integer(12)?,
        answer_time: row.integer(13)?,
        end_time: row.integer(14)?,
        hangup_by: row.text(15)?,
        total_duration: row.integer(16)?,
        holding_duration: row.integer(17)?,
        recording_url: row.text(18)?,
    };
    let call = StoredCall {
        phase: Phase::parse(&phase)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown phase {phase:?}")))?,
        record: CallRecord {
            fields,
            sources: decode_sources(&row.required_text(22)?)?,
            event_count: row.required_integer(19)?,
            first_received_at: row.required_integer(20)?,
            last_received_at: row.required_integer(21)?,
            sort_time: (sort_key != i64::MIN).then_some(sort_key),
        },
    };
    Ok((row.required_integer(0)?, call))
}

/// The WHERE terms of a call listing, each with one `?` per argument, and the arguments in order.
pub(crate) fn call_filter_terms(
    filter: &CallFilter,
    cursor: Option<CallCursor>,
) -> (Vec<&'static str>, Vec<Column>) {
    let mut terms = Vec::new();
    let mut args = Vec::new();
    let mut text = |term: &'static str, value: Option<String>| {
        if let Some(v) = value {
            terms.push(term);
            args.push(Column::Text(Some(v)));
        }
    };
    text(
        "status_norm = ?",
        filter.status.as_deref().map(str::to_lowercase),
    );
    text(
        "direction = ?",
        filter.direction.as_ref().map(|d| d.to_lowercase()),
    );
    text("hotline = ?", filter.hotline.clone());
    text("user_name = ?", filter.user_name.clone());
    text(
        "destination_norm = ?",
        filter.destination_number.as_deref().map(normalize_phone),
    );
    text("transaction_id = ?", filter.transaction_id.clone());
    text("phase = ?", filter.phase.map(|p| p.as_str().to_string()));
    if let Some(phone) = &filter.phone {
        terms.push("(caller_norm = ? OR destination_norm = ?)");
        args.push(Column::Text(Some(phone.clone())));
        args.push(Column::Text(Some(phone.clone())));
    }
    if let Some(agent) = &filter.agent {
        terms.push(
            "(user_name = ? OR ((user_name IS NULL OR TRIM(user_name) = '') \
             AND destination_number = ?))",
        );
        args.push(Column::Text(Some(agent.clone())));
        args.push(Column::Text(Some(agent.clone())));
    }
    let mut integer = |term: &'static str, value: Option<i64>| {
        if let Some(v) = value {
            terms.push(term);
            args.push(Column::Integer(Some(v)));
        }
    };
    // The start time as it is now: a call first seen without one lists last, but is found by a
    // time range once an event brings its start time.
    integer("start_time >= ?", filter.from);
    integer("start_time <= ?", filter.to);
    if let Some(c) = cursor {
        terms.push("(sort_key, seq) < (?, ?)");
        args.push(Column::Integer(Some(c.sort_key)));
        args.push(Column::Integer(Some(c.seq)));
    }
    (terms, args)
}

/// The columns of a change row, in the order [`read_change_row`] reads them and
/// [`change_columns`] gives them (`seq` first, which the store gives). A call change keeps the
/// call's columns as of the change (and their normal forms, for the filters); a non-call event's
/// change keeps its payload.
pub const CHANGE_COLUMNS: &str = "seq, type, event_id, received_at, payload, call_id, phase, \
    call_status, status_norm, direction, caller_number, caller_norm, destination_number, \
    destination_norm, hotline, user_name, transaction_id, object_id, start_time, answer_time, \
    end_time, hangup_by, total_duration, holding_duration, recording_url, event_count, \
    first_received_at, last_received_at";

/// The columns of a new change, all but `seq`, by name, in [`CHANGE_COLUMNS`]'s order.
pub fn change_columns(change: &NewChange) -> Vec<(&'static str, Column)> {
    use Column::{Integer, Text};
    let s = &change.subject;
    let (payload, record, phase) = match &change.body {
        ChangeBody::Call { record, phase } => (None, Some(record.as_ref()), Some(*phase)),
        ChangeBody::Event { payload } => (Some(payload.clone()), None, None),
    };
    let f = record.map(|r| &r.fields);
    let text = |get: fn(&EventFields) -> &Option<String>| Text(f.and_then(|f| get(f).clone()));
    let integer = |get: fn(&EventFields) -> Option<i64>| Integer(f.and_then(get));
    vec![
        ("type", Text(Some(change.kind.as_str().to_string()))),
        ("event_id", Integer(Some(change.event_id))),
        ("received_at", Integer(Some(change.received_at))),
        ("payload", Text(payload)),
        ("call_id", Text(s.call_id.clone())),
        ("phase", Text(phase.map(|p| p.as_str().to_string()))),
        ("call_status", text(|f| &f.call_status)),
        ("status_norm", Text(s.status_norm.clone())),
        ("direction", Text(s.direction.clone())),
        ("caller_number", text(|f| &f.caller_number)),
        ("caller_norm", Text(s.caller_norm.clone())),
        ("destination_number", text(|f| &f.destination_number)),
        ("destination_norm", Text(s.destination_norm.clone())),
        ("hotline", Text(s.hotline.clone())),
        ("user_name", Text(s.user_name.clone())),
        ("transaction_id", Text(s.transaction_id.clone())),
        ("object_id", integer(|f| f.object_id)),
        ("start_time", integer(|f| f.start_time)),
        ("answer_time", integer(|f| f.answer_time)),
        ("end_time", integer(|f| f.end_time)),
        ("hangup_by", text(|f| &f.hangup_by)),
        ("total_duration", integer(|f| f.total_duration)),
        ("holding_duration", integer(|f| f.holding_duration)),
        ("recording_url", text(|f| &f.recording_url)),
        ("event_count", Integer(record.map(|r| r.event_count))),
        (
            "first_received_at",
            Integer(record.map(|r| r.first_received_at)),
        ),
        (
            "last_received_at",
            Integer(record.map(|r| r.last_received_at)),
        ),
    ]
}

/// A change selected with [`CHANGE_COLUMNS`], its call times to be shown in `tz`.
pub fn read_change_row(row: &impl RowColumns, tz: &TimeZone) -> Result<Change, StoreError> {
    let kind = row.required_text(1)?;
    let kind = ChangeType::parse(&kind)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown change type {kind:?}")))?;
    let subject = ChangeSubject {
        call_id: row.text(5)?,
        status_norm: row.text(8)?,
        phase: row.text(6)?,
        direction: row.text(9)?,
        hotline: row.text(14)?,
        user_name: row.text(15)?,
        transaction_id: row.text(16)?,
        caller_norm: row.text(11)?,
        destination_norm: row.text(13)?,
    };
    let body = match kind {
        ChangeType::EventReceived => ChangeBody::Event {
            payload: row.required_text(4)?,
        },
        _ => {
            let phase = row.required_text(6)?;
            let fields = EventFields {
                call_id: row.text(5)?,
                call_status: row.text(7)?,
                direction: row.text(9)?,
                caller_number: row.text(10)?,
                destination_number: row.text(12)?,
                hotline: row.text(14)?,
                user_name: row.text(15)?,
                transaction_id: row.text(16)?,
                object_id: row.integer(17)?,
                start_time: row.integer(18)?,
                answer_time: row.integer(19)?,
                end_time: row.integer(20)?,
                hangup_by: row.text(21)?,
                total_duration: row.integer(22)?,
                holding_duration: row.integer(23)?,
                recording_url: row.text(24)?,
            };
            ChangeBody::Call {
                record: Box::new(CallRecord {
                    fields,
                    sources: [None; MERGED_FIELDS],
                    event_count: row.required_integer(25)?,
                    first_received_at: row.required_integer(26)?,
                    last_received_at: row.required_integer(27)?,
                    sort_time: None,
                }),
                phase: Phase::parse(&phase)
                    .ok_or_else(|| StoreError::Corrupt(format!("unknown phase {phase:?}")))?,
            }
        }
    };
    let new = NewChange {
        kind,
        event_id: row.required_integer(2)?,
        received_at: row.required_integer(3)?,
        subject,
        body,
    };
    Ok(Change::new(row.required_integer(0)?, new, tz))
}

/// The query of the feed: changes after `after` matching `filter`, in `seq` order, `limit + 1`
/// rows (so that the reader knows whether there are more). The terms compare the same normal forms as [`ChangeFilter::matches`].
pub fn changes_query(after: i64, filter: &ChangeFilter, limit: usize) -> Statement {
    let (mut terms, mut args) = change_filter_terms(filter);
    terms.insert(0, "seq > ?".into());
    args.insert(0, Column::Integer(Some(after)));
    args.push(Column::Integer(Some(limit as i64 + 1)));
    Statement {
        sql: format!(
            "SELECT {CHANGE_COLUMNS} FROM changes WHERE {} ORDER BY seq LIMIT ?",
            terms.join(" AND ")
        ),
        args,
    }
}

/// The change an event makes to its call: `before` is the record before the event (`None`:
/// the event created it), `after` the record once it is merged.
pub fn call_change(
    event_id: i64,
    received_at: i64,
    before: Option<&CallRecord>,
    after: &CallRecord,
    settings: &MergeSettings,
) -> NewChange {
    NewChange::call(
        event_id,
        received_at,
        before.map(|r| r.phase(&settings.finals)),
        after,
        after.phase(&settings.finals),
    )
}

/// How many bytes a change counts for in a page.
pub fn change_size(change: &Change) -> usize {
    change.size()
}

/// About how many bytes a call takes in memory and in its JSON: what a listing page counts.
pub fn call_size(call: &StoredCall) -> usize {
    let f = &call.record.fields;
    [
        &f.call_id,
        &f.call_status,
        &f.direction,
        &f.caller_number,
        &f.destination_number,
        &f.hotline,
        &f.user_name,
        &f.transaction_id,
        &f.hangup_by,
        &f.recording_url,
    ]
    .iter()
    .map(|v| v.as_ref().map_or(0, String::len))
    .sum::<usize>()
        + 400
}

/// A listing page from a filled pager of `(seq, call)` rows, newest first.
pub fn call_page(pager: Pager<(i64, StoredCall)>) -> CallPage {
    let (rows, next) = pager.finish(|(seq, call)| CallCursor {
        sort_key: sort_key(call.record.sort_time),
        seq: *seq,
    });
    CallPage {
        items: rows.into_iter().map(|(_, call)| call).collect(),
        next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_sources_round_trip_and_reject_garbage() {
        let mut sources = [None; MERGED_FIELDS];
        sources[0] = Some(SourceKey {
            rank: 3,
            known: 12,
            tiebreak: 0xabcdef012345,
        });
        sources[14] = Some(SourceKey {
            rank: 0,
            known: 1,
            tiebreak: 0,
        });
        let text = encode_sources(&sources);
        assert_eq!(decode_sources(&text).unwrap(), sources);
        assert_eq!(text, "3.12.abcdef012345;0.1.0|0,,,,,,,,,,,,,,1");
        // The forms written before: one key per field.
        let mut legacy = vec![String::new(); MERGED_FIELDS];
        legacy[0] = "3.12.abcdef012345".into();
        legacy[14] = "0:7".into();
        let old = decode_sources(&legacy.join(",")).unwrap();
        assert_eq!(old[0], sources[0]);
        assert_eq!(old[14].map(|k| k.rank), Some(0));
        assert_eq!(
            decode_sources(&encode_sources(&[None; MERGED_FIELDS])).unwrap(),
            [None; MERGED_FIELDS]
        );
        for bad in [
            "",
            "3:1",
            &",".repeat(MERGED_FIELDS),
            &text.replace("3.12.", "x.12."),
            &text.replace("|0,", "|2,"),
            &text.replace(",1", ",1,"),
        ] {
            assert!(
                matches!(decode_sources(bad), Err(StoreError::Corrupt(_))),
                "{bad:?}"
            );
        }
    }
}
