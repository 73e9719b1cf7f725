//! What the store keeps of deliveries: one row per change handed to a destination, with its
//! attempts. The SQL is written once, with `?` placeholders (PostgreSQL numbers them).

use async_trait::async_trait;

use super::{RowColumns, StoreError};

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    /// Waiting for its next attempt (or, without a time, for an earlier change of its call).
    Pending,
    Delivered,
    /// Every attempt failed: given up.
    Dead,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }

    pub fn parse(text: &str) -> Option<DeliveryState> {
        match text {
            "pending" => Some(DeliveryState::Pending),
            "delivered" => Some(DeliveryState::Delivered),
            "dead" => Some(DeliveryState::Dead),
            _ => None,
        }
    }
}

/// One attempt to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Unix microseconds.
    pub at: i64,
    /// The HTTP status answered, if one was.
    pub status: Option<i64>,
    /// What went wrong, when it did (a timeout, a refused connection, a status that is not 2xx).
    pub error: Option<String>,
    pub duration_ms: i64,
    /// The first KiB of the answer.
    pub response: Option<String>,
}

/// A delivery as it is to be saved: its state after what just happened to it, and the attempt
/// made, if one was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryUpdate {
    pub seq: i64,
    pub kind: String,
    pub call_id: Option<String>,
    pub state: DeliveryState,
    /// Attempts made so far, this one included.
    pub attempts: i64,
    /// Unix microseconds; `None` while held behind an earlier change of its call, or once done.
    pub next_attempt_at: Option<i64>,
    pub attempt: Option<Attempt>,
}

/// A delivery as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDelivery {
    pub id: i64,
    pub destination_id: String,
    pub seq: i64,
    pub kind: String,
    pub call_id: Option<String>,
    pub state: DeliveryState,
    pub attempts: i64,
    pub next_attempt_at: Option<i64>,
    /// Its attempts, oldest first (the listing fills them in).
    pub attempt_log: Vec<Attempt>,
}

/// Which deliveries a listing wants.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub destination_id: Option<String>,
    pub state: Option<DeliveryState>,
    pub call_id: Option<String>,
}

/// A page of deliveries, newest first, and the id to continue below.
#[derive(Debug, Clone, Default)]
pub struct DeliveryPage {
    pub items: Vec<StoredDelivery>,
    pub next: Option<i64>,
}

/// The deliveries of forwarding (see [`crate::forward`]).
#[async_trait]
pub trait Deliveries: Send + Sync + 'static {
    /// Saves what became of deliveries of one destination, in one transaction: each delivery's
    /// row (made or changed), the attempt it had, and the destination's cursor, raised to
    /// `cursor` (every matching change up to it now has its delivery).
    async fn save_deliveries(
        &self,
        destination_id: &str,
        updates: Vec<DeliveryUpdate>,
        cursor: i64,
    ) -> Result<(), StoreError>;

    /// Pending deliveries of a destination due at `now`, the earliest first.
    async fn due_deliveries(
        &self,
        destination_id: &str,
        now: i64,
        limit: usize,
    ) -> Result<Vec<StoredDelivery>, StoreError>;

    /// Makes the next change of a call that was held behind an earlier one due at `now`;
    /// answers its position, if there was one.
    async fn release_call(
        &self,
        destination_id: &str,
        call_id: &str,
        now: i64,
    ) -> Result<Option<i64>, StoreError>;

    /// The calls of a destination with pending deliveries (a later change of them waits).
    async fn calls_pending(&self, destination_id: &str) -> Result<Vec<String>, StoreError>;

    /// Of the positions from `from` to `to`, those that have a delivery to the destination.
    async fn delivered_positions(
        &self,
        destination_id: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<i64>, StoreError>;

    /// Takes (or keeps) the lease of a destination for `owner` until `until`, unless another
    /// owner holds one that has not run out at `now`. Only the holder delivers to it.
    async fn lease_destination(
        &self,
        destination_id: &str,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError>;

    /// How many changes up to `upto` a replay to the destination matches.
    async fn replay_matches(
        &self,
        destination_id: &str,
        scope: &ReplayScope,
        upto: i64,
    ) -> Result<i64, StoreError>;

    /// Queues again the changes a replay matches after `after` and up to `upto` (see
    /// [`replay_queue_query`]), in one transaction that also lets the calls' first held changes
    /// go and, with `touch` (the replay's last step), marks the destination changed so that
    /// its delivery starts over from what is stored; answers how many were queued.
    async fn queue_replay(
        &self,
        destination_id: &str,
        scope: &ReplayScope,
        after: i64,
        upto: i64,
        per_call: bool,
        touch: bool,
    ) -> Result<i64, StoreError>;

    async fn save_job(&self, job: &Job) -> Result<(), StoreError>;

    /// Lets held deliveries go (due at `now`): with `per_call`, each call's first held one
    /// that has no other pending ahead of it; without, every held one. Run when a
    /// destination's delivery starts, it heals what a crash between saving a delivery and
    /// releasing its call's next change left held.
    async fn release_held(
        &self,
        destination_id: &str,
        per_call: bool,
        now: i64,
    ) -> Result<(), StoreError>;

    /// Disables a destination with a reason (a receiver's 410), touching nothing else.
    async fn disable_destination(
        &self,
        destination_id: &str,
        reason: &str,
    ) -> Result<(), StoreError>;

    /// Gives up `owner`'s lease of a destination (it stopped delivering to it).
    async fn release_lease(&self, destination_id: &str, owner: &str) -> Result<(), StoreError>;

    /// How many deliveries of a destination are pending, and when the change of the oldest of
    /// them was received (Unix microseconds): cheap, for the gauges.
    async fn pending_deliveries(
        &self,
        destination_id: &str,
    ) -> Result<(i64, Option<i64>), StoreError>;

    async fn job(&self, id: &str) -> Result<Option<Job>, StoreError>;

    /// Deliveries matching `filter`, newest first, with ids below `before`, each with its
    /// attempts.
    async fn deliveries(
        &self,
        filter: &DeliveryFilter,
        limit: usize,
        before: Option<i64>,
    ) -> Result<DeliveryPage, StoreError>;
}

/// Columns of a delivery, in the order [`read_delivery_row`] reads them.
pub const DELIVERY_COLUMNS: &str =
    "id, destination_id, seq, type, call_id, state, attempts, next_attempt_at";

pub fn read_delivery_row(row: &impl RowColumns) -> Result<StoredDelivery, StoreError> {
    let state = row.required_text(5)?;
    Ok(StoredDelivery {
        id: row.required_integer(0)?,
        destination_id: row.required_text(1)?,
        seq: row.required_integer(2)?,
        kind: row.required_text(3)?,
        call_id: row.text(4)?,
        state: DeliveryState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown delivery state {state:?}")))?,
        attempts: row.required_integer(6)?,
        next_attempt_at: row.integer(7)?,
        attempt_log: Vec::new(),
    })
}

/// Columns of an attempt, in the order [`read_attempt_row`] reads them (after the delivery's id).
pub const ATTEMPT_COLUMNS: &str = "delivery_id, at, status, error, duration_ms, response";

pub fn read_attempt_row(row: &impl RowColumns) -> Result<(i64, Attempt), StoreError> {
    Ok((
        row.required_integer(0)?,
        Attempt {
            at: row.required_integer(1)?,
            status: row.integer(2)?,
            error: row.text(3)?,
            duration_ms: row.required_integer(4)?,
            response: row.text(5)?,
        },
    ))
}

/// Makes or changes a delivery (the destination, position, type, call, state, attempts, next
/// attempt, last status, last error, time); answers its id.
pub const UPSERT_DELIVERY: &str = "INSERT INTO deliveries (destination_id, seq, type, call_id, \
    state, attempts, next_attempt_at, last_status, last_error, created_at, updated_at) \
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
    ON CONFLICT (destination_id, seq) DO UPDATE SET state = excluded.state, \
    attempts = excluded.attempts, next_attempt_at = excluded.next_attempt_at, \
    last_status = excluded.last_status, last_error = excluded.last_error, \
    updated_at = excluded.updated_at RETURNING id";

pub const INSERT_ATTEMPT: &str = "INSERT INTO delivery_attempts (delivery_id, at, status, error, \
    duration_ms, response) VALUES (?, ?, ?, ?, ?, ?)";

/// Raises a destination's cursor (never lowers it): the cursor, the destination.
pub const RAISE_CURSOR: &str =
    "UPDATE destinations SET cursor = CASE WHEN cursor < ? THEN ? ELSE cursor END WHERE id = ?";

/// The destination, the time, the limit.
pub const DUE_DELIVERIES: &str = "SELECT id, destination_id, seq, type, call_id, state, attempts, \
    next_attempt_at FROM deliveries WHERE destination_id = ? AND state = 'pending' \
    AND next_attempt_at <= ? ORDER BY next_attempt_at, seq LIMIT ?";

/// The time, the destination, the call: the earliest held change of the call becomes due.
pub const RELEASE_CALL: &str = "UPDATE deliveries SET next_attempt_at = ? WHERE id = \
    (SELECT id FROM deliveries WHERE destination_id = ? AND call_id = ? AND state = 'pending' \
    AND next_attempt_at IS NULL ORDER BY seq LIMIT 1) RETURNING seq";

pub const CALLS_PENDING: &str = "SELECT DISTINCT call_id FROM deliveries \
    WHERE destination_id = ? AND state = 'pending' AND call_id IS NOT NULL";

pub const DELIVERED_POSITIONS: &str =
    "SELECT seq FROM deliveries WHERE destination_id = ? AND seq >= ? AND seq <= ? ORDER BY seq";

/// The owner, the time it runs out, the destination, the owner again, the time now.
pub const LEASE_DESTINATION: &str = "UPDATE destinations SET lease_owner = ?, lease_until = ? \
    WHERE id = ? AND (lease_owner IS NULL OR lease_owner = ? OR lease_until < ?)";

/// The query of a deliveries listing: its filters, ids below the cursor, newest first.
pub fn deliveries_query(
    filter: &DeliveryFilter,
    before: Option<i64>,
    limit: usize,
) -> super::Statement {
    use super::Column;
    let mut terms = vec!["id < ?".to_string()];
    let mut args = vec![Column::Integer(Some(before.unwrap_or(i64::MAX)))];
    if let Some(d) = &filter.destination_id {
        terms.push("destination_id = ?".into());
        args.push(Column::Text(Some(d.clone())));
    }
    if let Some(s) = filter.state {
        terms.push("state = ?".into());
        args.push(Column::Text(Some(s.as_str().into())));
    }
    if let Some(c) = &filter.call_id {
        terms.push("call_id = ?".into());
        args.push(Column::Text(Some(c.clone())));
    }
    args.push(Column::Integer(Some(limit as i64 + 1)));
    super::Statement {
        sql: format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE {} ORDER BY id DESC LIMIT ?",
            terms.join(" AND ")
        ),
        args,
    }
}

/// The attempts of the deliveries whose ids are listed (as `?`s, `count` of them).
pub fn attempts_query(count: usize) -> String {
    format!(
        "SELECT {ATTEMPT_COLUMNS} FROM delivery_attempts WHERE delivery_id IN ({}) \
         ORDER BY delivery_id, at",
        vec!["?"; count.max(1)].join(", ")
    )
}

/// Which changes a replay queues again for a destination (every term must hold).
#[derive(Debug, Clone, Default)]
pub struct ReplayScope {
    /// Filters on the change and the call it carries: the destination's own, and the replay's.
    pub filters: Vec<crate::model::change::ChangeFilter>,
    /// Bounds on the change's `received_at`, Unix microseconds, both included.
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// Only changes whose delivery to the destination is dead.
    pub dead_only: bool,
}

fn replay_terms(destination_id: &str, scope: &ReplayScope) -> (Vec<String>, Vec<super::Column>) {
    use super::Column;
    let mut terms = Vec::new();
    let mut args = Vec::new();
    for filter in &scope.filters {
        let (t, a) = super::change_filter_terms(filter);
        terms.extend(t);
        args.extend(a);
    }
    if let Some(from) = scope.from {
        terms.push("received_at >= ?".into());
        args.push(Column::Integer(Some(from)));
    }
    if let Some(to) = scope.to {
        terms.push("received_at <= ?".into());
        args.push(Column::Integer(Some(to)));
    }
    if scope.dead_only {
        terms.push(
            "seq IN (SELECT seq FROM deliveries WHERE destination_id = ? AND state = 'dead')"
                .into(),
        );
        args.push(Column::Text(Some(destination_id.to_string())));
    }
    (terms, args)
}

/// How many changes up to `upto` a replay matches.
pub fn replay_count_query(
    destination_id: &str,
    scope: &ReplayScope,
    upto: i64,
) -> super::Statement {
    let (mut terms, mut args) = replay_terms(destination_id, scope);
    terms.insert(0, "seq <= ?".into());
    args.insert(0, super::Column::Integer(Some(upto)));
    super::Statement {
        sql: format!("SELECT count(*) FROM changes WHERE {}", terms.join(" AND ")),
        args,
    }
}

/// Queues the matching changes after `after` and up to `upto` again: each delivery pending
/// with no attempt counted against its schedule (its past attempts stay listed), due at `now`,
/// or, with `per_call` ordering, held behind its call's earlier changes until
/// [`RELEASE_HEADS`] lets the first one go.
pub fn replay_queue_query(
    destination_id: &str,
    scope: &ReplayScope,
    after: i64,
    upto: i64,
    per_call: bool,
    now: i64,
) -> super::Statement {
    use super::Column;
    let (terms, filter_args) = replay_terms(destination_id, scope);
    let due = if per_call {
        "CASE WHEN call_id IS NULL THEN CAST(? AS BIGINT) ELSE NULL END"
    } else {
        "?"
    };
    let mut args = vec![
        Column::Text(Some(destination_id.to_string())),
        Column::Integer(Some(now)),
        Column::Integer(Some(now)),
        Column::Integer(Some(now)),
        Column::Integer(Some(after)),
        Column::Integer(Some(upto)),
    ];
    args.extend(filter_args);
    let mut sql = format!(
        "INSERT INTO deliveries (destination_id, seq, type, call_id, state, attempts, \
         next_attempt_at, created_at, updated_at) \
         SELECT ?, seq, type, call_id, 'pending', 0, {due}, ?, ? FROM changes \
         WHERE seq > ? AND seq <= ?"
    );
    for term in terms {
        sql.push_str(" AND ");
        sql.push_str(&term);
    }
    sql.push_str(
        " ON CONFLICT (destination_id, seq) DO UPDATE SET state = 'pending', attempts = 0, \
         next_attempt_at = excluded.next_attempt_at, updated_at = excluded.updated_at",
    );
    super::Statement { sql, args }
}

/// Lets the first held change of each call go (due at the time given), where no other change
/// of the call is pending ahead of it: the time, the destination.
pub const RELEASE_HEADS: &str = "UPDATE deliveries SET next_attempt_at = ? \
    WHERE destination_id = ? AND state = 'pending' AND next_attempt_at IS NULL \
    AND call_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM deliveries e \
    WHERE e.destination_id = deliveries.destination_id AND e.call_id = deliveries.call_id \
    AND e.state = 'pending' AND (e.next_attempt_at IS NOT NULL OR e.seq < deliveries.seq))";

/// Marks a destination changed (its delivery task starts over from what is stored): the time,
/// the destination.
pub const TOUCH_DESTINATION: &str = "UPDATE destinations SET updated_at = ? WHERE id = ?";

/// A background job (a replay), as stored so that any instance can answer for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: String,
    pub kind: String,
    pub destination_id: Option<String>,
    /// running, done or failed.
    pub state: String,
    pub matched: i64,
    pub queued: i64,
    pub error: Option<String>,
    /// Unix microseconds.
    pub created_at: i64,
    /// Unix microseconds: a running job writes at least this often (see [`JOB_HEARTBEAT`]).
    pub updated_at: i64,
}

/// How often a running job writes its progress, at least: one not written for three times
/// that has stopped with the instance that ran it.
pub const JOB_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(10);

pub const JOB_COLUMNS: &str =
    "id, kind, destination_id, state, matched, queued, error, created_at, updated_at";

pub const SAVE_JOB: &str = "INSERT INTO jobs (id, kind, destination_id, state, matched, queued, \
    error, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
    ON CONFLICT (id) DO UPDATE SET state = excluded.state, matched = excluded.matched, \
    queued = excluded.queued, error = excluded.error, updated_at = excluded.updated_at";

pub fn read_job_row(row: &impl RowColumns) -> Result<Job, StoreError> {
    Ok(Job {
        id: row.required_text(0)?,
        kind: row.required_text(1)?,
        destination_id: row.text(2)?,
        state: row.required_text(3)?,
        matched: row.required_integer(4)?,
        queued: row.required_integer(5)?,
        error: row.text(6)?,
        created_at: row.required_integer(7)?,
        updated_at: row.required_integer(8)?,
    })
}

/// The pending deliveries of a destination: their count, and the oldest one's receipt time.
pub const PENDING_DELIVERIES: &str = "SELECT count(*), min(c.received_at) FROM deliveries d \
    LEFT JOIN changes c ON c.seq = d.seq WHERE d.destination_id = ? AND d.state = 'pending'";

/// Every held delivery of a destination due: the time, the destination.
pub const RELEASE_ALL_HELD: &str = "UPDATE deliveries SET next_attempt_at = ? \
    WHERE destination_id = ? AND state = 'pending' AND next_attempt_at IS NULL";

/// The reason, the time, the destination.
pub const DISABLE_DESTINATION: &str =
    "UPDATE destinations SET enabled = 0, disabled_reason = ?, updated_at = ? WHERE id = ?";

/// The destination, the owner.
pub const RELEASE_LEASE: &str = "UPDATE destinations SET lease_owner = NULL, lease_until = NULL \
    WHERE id = ? AND lease_owner = ?";
