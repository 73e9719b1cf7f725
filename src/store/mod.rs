//! Where events and call records are kept. [`Store`] speaks in domain operations; backends
//! (SQLite now, PostgreSQL later) implement it and nothing above this module sees SQL.

use async_trait::async_trait;

use crate::model::{CallRecord, ParsedEvent, Phase};

pub mod sqlite;

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

/// A store failure. The details go to the log; clients only learn the store is unavailable.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    #[error("the store is shutting down")]
    Closed,
    #[error("corrupt data in the store: {0}")]
    Corrupt(String),
}

/// The domain operations alohook needs from a database.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Commits a batch in one durable transaction: stores new events, counts resends, merges
    /// call events into their calls, quarantines bad bodies. Either all of it commits or none.
    async fn commit(&self, batch: Vec<Incoming>) -> Result<Vec<Outcome>, StoreError>;

    /// One call by id.
    async fn call(&self, call_id: &str) -> Result<Option<StoredCall>, StoreError>;

    /// Calls matching `filter`, newest start first, `limit` at most, after `cursor`.
    async fn calls(
        &self,
        filter: &CallFilter,
        limit: usize,
        cursor: Option<CallCursor>,
    ) -> Result<CallPage, StoreError>;

    /// The events of one call in the order received; `None` when the call is unknown.
    async fn call_events(&self, call_id: &str) -> Result<Option<Vec<StoredEvent>>, StoreError>;

    /// Quarantined bodies, newest first, with ids below `before`.
    async fn rejected(&self, limit: usize, before: Option<i64>)
    -> Result<RejectedPage, StoreError>;

    /// Ok when the store can take writes now.
    async fn check_writable(&self) -> Result<(), StoreError>;
}

/// The sort key of a call: its first known start time, or the lowest value when it has none so
/// that such calls list last.
pub fn sort_key(sort_time: Option<i64>) -> i64 {
    sort_time.unwrap_or(i64::MIN)
}
