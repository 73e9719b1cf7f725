//! The PostgreSQL store: several alohook instances may share one database. Identity and merging
//! hold across instances through the database itself: a unique (scope, dedupe_key) decides which
//! delivery is first, and a call's row changes only where its `event_count` is the one the merge
//! started from (or under `FOR UPDATE`). How a batch is written: see [`write`].

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::TryFutureExt;
use futures_util::future::try_join;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::deliveries;
use super::listing;
use super::{
    CALL_COLUMNS, CALL_EVENTS_QUERY, CallCache, CallCursor, CallFilter, CallPage, ChangeLog,
    ChangePage, Column, Committed, DELETE_DESTINATION, DELIVERY_ATTEMPT_COUNTS, DELIVERY_COUNTS,
    DESTINATION_COLUMNS, DeliveryCounts, Destinations, EventPage, INSERT_DESTINATION, Incoming,
    LAST_DELIVERY_ERROR, MERGE_SETTINGS_KEY, MergeSettings, OLDEST_PENDING, Pager, REJECTED_QUERY,
    RejectedPage, RowColumns, Store, StoreError, StoredCall, StoredDestination, UPDATE_DESTINATION,
    call_size, change_size, changes_query, count_changes_query, describe_failure, read_call_row,
    read_change_row, read_destination_row, read_event_row, read_rejected_row, rewrite_call,
    spec_json,
};
use super::{Deliveries, DeliveryFilter, DeliveryPage, DeliveryUpdate, StoredDelivery};
use crate::forward::destination::DestinationSpec;
use crate::model::change::ChangeFilter;
use tokio_postgres_rustls::MakeRustlsConnect;

mod reports;
mod tls;
mod write;

/// Starts a batch's transaction.
///
/// - Every batch statement finds its rows through a unique index (events by (scope, dedupe_key),
///   calls by seq or call_id); planned once for arrays of unknown length, or while a table is
///   still empty, PostgreSQL may instead hash-join a whole table, which made batches 5× slower.
///   Ruling out scans and hash or merge joins leaves the index probes; with that, one generic plan
///   per statement serves every batch without re-planning.
/// - `synchronous_commit` never `off`, whatever the server, role or database says: a 200
///   promises the event is on disk, and with `off` COMMIT returns before it is there. Any other
///   setting flushes locally and is kept (`remote_write`, `remote_apply` also wait for standbys).
/// - A batch's transaction never sits idle for more than 20 s: an instance cut off half-way
///   (say between its last statement and COMMIT) would otherwise hold its row locks, the feed
///   counter's among them, until the server notices the dead client, and every instance's
///   batches would wait for it. Its own requests have given up at 10 s.
/// - No JIT: a statement that would have to scan (the feed counter's one row) costs more than
///   `jit_above_cost` once scans are ruled out, and compiling it took 80-120 ms per batch.
///
/// `SET LOCAL` lasts for the transaction, so it holds through a pooler too.
const BEGIN_BATCH: &str = "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; \
    SET LOCAL enable_seqscan = off; SET LOCAL enable_hashjoin = off; \
    SET LOCAL enable_mergejoin = off; SET LOCAL jit = off; \
    SET LOCAL idle_in_transaction_session_timeout = '20s'; \
    SELECT set_config('synchronous_commit', CASE WHEN current_setting('synchronous_commit') \
    = 'off' THEN 'on' ELSE current_setting('synchronous_commit') END, true)";

/// [`BEGIN_BATCH`], and a check that the records follow this instance's merge settings (a
/// function of migration 0002 comparing the fingerprint's hash): it refuses the batch when
/// another instance with other `--final-statuses` or `--timezone` recomputed them. Checked with
/// the first batch and then at most every [`SETTINGS_CHECK_EVERY`]: on every batch it cost a
/// measurable share of PostgreSQL's CPU per event, for a mistake that is made rarely.
fn begin_checked_batch(settings: &MergeSettings) -> String {
    format!(
        "{BEGIN_BATCH}; SELECT alohook_check_merge_settings('{}')",
        // Hex digits only: safe to write into SQL.
        settings.fingerprint_hash()
    )
}

/// How often batches check the merge settings (see [`begin_checked_batch`]).
const SETTINGS_CHECK_EVERY: Duration = Duration::from_secs(1);

const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_merge_lattice.sql"),
    include_str!("migrations/0003_changes.sql"),
    include_str!("migrations/0004_forwarding.sql"),
    include_str!("migrations/0005_callbacks.sql"),
    include_str!("migrations/0006_listing_indexes.sql"),
    include_str!("migrations/0007_rollup.sql"),
    include_str!("migrations/0008_dashboard.sql"),
    include_str!("migrations/0009_callback_hotline_rows.sql"),
    include_str!("migrations/0010_callback_write_cost.sql"),
];
/// The channel of LISTEN/NOTIFY on which a batch that appended changes tells every instance (the
/// notification goes out at commit, and only if the transaction commits; see write.rs).
const CHANGES_CHANNEL: &str = "alohook_changes";
/// Key of the advisory lock that serialises migrations between instances starting together.
const MIGRATION_LOCK: i64 = 0x616c_6f68_6f6f_6b01;
/// Batches committed side by side, each on a connection of its own. Two keep one batch filling
/// while the other commits; more split the same events into more, smaller batches, and a batch's
/// fixed cost (its statements, its commit) dominates: with 1/2/3/4 connections PostgreSQL spent
/// 52/58–66/76/76–83 µs of CPU per event (bench notes in bench/RESULTS.md), and one connection
/// left the machine idle between batches.
const WRITE_CONNECTIONS: usize = 2;
/// Longest wait for a batch's transaction. Requests give up at 10 s (and are answered 503);
/// past this the connection is closed, which frees the writer's slot.
const BATCH_TIMEOUT: Duration = Duration::from_secs(15);
/// How long folding the summary's past days may take (see store::rollup): a day is a few
/// thousand rows; a store that never folded folds every day once.
const FOLD_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait for a read (the HTTP request's own limit is 30 s).
const READ_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a batch is retried when PostgreSQL aborts it to break a deadlock or conflict.
const RETRIES: usize = 3;

/// The PostgreSQL implementation of [`Store`].
pub struct PgStore {
    /// Connections for the writer (its own runtime drives them).
    writes: Pool,
    /// The batch statements.
    sql: write::BatchSql,
    /// What starts a batch that checks the merge settings (see [`begin_checked_batch`]).
    begin_checked: String,
    /// When a batch last checked them.
    checked_at: Mutex<Option<std::time::Instant>>,
    /// The start of the figures' summary's first day not folded, as this instance last knew
    /// it, and when folding last failed (see store::rollup).
    folded: Mutex<(Option<i64>, Option<std::time::Instant>)>,
    /// The calls this instance wrote last (see [`CallCache`]).
    cache: Mutex<CallCache>,
    /// Connections for reads, on the request handlers' runtime.
    reads: Pool,
    settings: MergeSettings,
    /// The database URL, for the connection that listens for other instances' changes. It may
    /// hold a password: never logged.
    url: String,
    /// How cancel requests reach the server (see [`Checkout`]).
    tls: MakeRustlsConnect,
    /// Set when a batch appended changes: the listening connection then tells the other
    /// instances (see [`listen_for_changes`]).
    appended: std::sync::Arc<tokio::sync::Notify>,
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The Display of a server error is only "db error": say what PostgreSQL said.
        let text = match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => with_causes(&e),
        };
        if retryable(&e) {
            StoreError::Retry(text)
        } else {
            StoreError::Database(text)
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Database(format!("no database connection: {}", with_causes(&e)))
    }
}

/// An error and its causes, "outer: inner: …": tokio-postgres says "error performing TLS
/// handshake" and leaves which certificate check failed to the cause.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        if !text.ends_with(&inner_text) {
            text = format!("{text}: {inner_text}");
        }
        cause = inner.source();
    }
    text
}

impl RowColumns for Row {
    fn text(&self, index: usize) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(index)?)
    }

    fn integer(&self, index: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get(index)?)
    }

    fn bytes(&self, index: usize) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.try_get(index)?)
    }
}

/// A connection taken from a pool for one piece of work. Unless the work finished, the
/// connection is closed rather than returned to the pool: after an error, a time limit, or a
/// future dropped half-way, it may sit in a transaction or wait on a peer that will never answer,
/// and closing it is what rolls back and frees it.
///
/// Closing does not stop a statement the server is running (it notices the closed socket only
/// when it answers): a statement that outlived its time limit, or whose request went away,
/// would go on using the database for nothing. So an unfinished checkout also sends the
/// server a cancel request for whatever the connection is running.
struct Checkout {
    client: Option<deadpool_postgres::Client>,
    finished: bool,
    cancel: Option<(tokio_postgres::CancelToken, MakeRustlsConnect)>,
}

impl Checkout {
    fn new(client: deadpool_postgres::Client, tls: &MakeRustlsConnect) -> Self {
        Checkout {
            cancel: Some((client.cancel_token(), tls.clone())),
            client: Some(client),
            finished: false,
        }
    }

    fn client(&self) -> &deadpool_postgres::Client {
        self.client.as_ref().expect("held until dropped")
    }

    /// The work ended cleanly: the connection may serve the next one.
    fn finished(&mut self) {
        self.finished = true;
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let (false, Some(client)) = (self.finished, self.client.take()) {
            drop(deadpool_postgres::Client::take(client));
            if let (Some((token, tls)), Ok(runtime)) =
                (self.cancel.take(), tokio::runtime::Handle::try_current())
            {
                runtime.spawn(async move {
                    let cancelled =
                        tokio::time::timeout(Duration::from_secs(5), token.cancel_query(tls)).await;
                    if let Ok(Err(error)) = cancelled {
                        tracing::debug!(%error, "could not cancel an abandoned statement");
                    }
                });
            }
        }
    }
}

/// Waits for `work` at most `limit`: PostgreSQL behind a network that drops packets silently
/// would otherwise hold a connection (and a writer's batch) until TCP gives up, many minutes on.
async fn within<T>(
    limit: Duration,
    work: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, work).await.map_err(|_| {
        StoreError::Database(format!(
            "PostgreSQL did not answer within {} s",
            limit.as_secs()
        ))
    })?
}

/// A pool of at most `size` connections to `url`.
fn pool(url: &str, size: usize) -> Result<Pool, StoreError> {
    let (config, tls) = client_config(url)?;
    let manager = Manager::from_config(
        config,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| StoreError::Database(format!("cannot build the connection pool: {e}")))
}

/// The connection settings of `url`, with alohook's time limits where the URL sets none.
fn client_config(url: &str) -> Result<(tokio_postgres::Config, MakeRustlsConnect), StoreError> {
    let (mut config, tls) = tls::connect_config(url)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    // A peer that vanished without closing (a partition, a host gone) is noticed by the kernel
    // within about a minute, not TCP's default of hours; the time limits on each batch and read
    // are what answers the clients sooner.
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(Duration::from_secs(30));
    }
    if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        config.keepalives_idle(Duration::from_secs(30));
    }
    if config.get_application_name().is_none() {
        config.application_name("alohook");
    }
    // No JIT compilation: alohook's queries are short, and a query the planner overestimates
    // (a bad guess from its statistics) spent 220 ms compiling to run in 13 ms. The URL's own
    // `options` may turn it on again.
    let options = config.get_options().unwrap_or("").to_string();
    if !options.contains("jit") {
        config.options(format!("{options} -c jit=off").trim());
    }
    Ok((config, tls))
}

impl PgStore {
    /// Connects, applies pending migrations and recomputes the call records if they were
    /// merged under other settings.
    pub async fn open(url: &str, settings: MergeSettings) -> Result<Self, StoreError> {
        let store = PgStore {
            writes: pool(url, WRITE_CONNECTIONS)?,
            sql: write::BatchSql::new(&settings),
            begin_checked: begin_checked_batch(&settings),
            checked_at: Mutex::new(None),
            folded: Mutex::new((None, None)),
            cache: Mutex::new(CallCache::default()),
            reads: pool(url, 8)?,
            tls: client_config(url)?.1,
            settings,
            url: url.to_string(),
            appended: Default::default(),
        };
        migrate(&store.reads, &store.settings).await?;
        Ok(store)
    }

    /// The value a batch transaction sees for `setting` (a `SHOW` inside [`BEGIN_BATCH`]'s
    /// transaction, rolled back): how tests check what a batch pins, whatever the server says.
    pub async fn batch_setting(&self, setting: &str) -> Result<String, StoreError> {
        let mut connection = Checkout::new(self.writes.get().await?, &self.tls);
        let client = connection.client();
        let value = within(BATCH_TIMEOUT, async {
            client.batch_execute(BEGIN_BATCH).await?;
            let row = client
                .query_one("SELECT current_setting($1)", &[&setting])
                .await?;
            client.batch_execute("ROLLBACK").await?;
            Ok(row.get::<_, String>(0))
        })
        .await?;
        connection.finished();
        Ok(value)
    }

    /// Runs `work` on a reading connection, within [`READ_TIMEOUT`].
    async fn read<T>(
        &self,
        work: impl AsyncFnOnce(&deadpool_postgres::Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut connection = Checkout::new(self.reads.get().await?, &self.tls);
        let result = within(READ_TIMEOUT, work(connection.client())).await?;
        connection.finished();
        Ok(result)
    }

    /// Folds the figures' summary's past days into rows by day when a day has ended since
    /// (the first batch of a day, on one instance; the others find it done). A failure leaves
    /// the figures right (counted by hour) and is tried again a minute later.
    async fn fold_if_due(&self) -> Result<(), StoreError> {
        let zone = &self.settings.timezone;
        let now = crate::model::time::now_micros() / 1_000_000;
        let due = {
            let folded = self.folded.lock().map_err(|_| StoreError::Closed)?;
            crate::store::rollup::fold_due(zone, now, folded.0).filter(|_| {
                folded
                    .1
                    .is_none_or(|at| at.elapsed() >= crate::store::rollup::FOLD_RETRY)
            })
        };
        let Some(until) = due else {
            return Ok(());
        };
        let result = async {
            let mut connection = Checkout::new(self.writes.get().await?, &self.tls);
            let folded = within(
                FOLD_TIMEOUT,
                reports::fold_days(connection.client(), zone, until),
            )
            .await?;
            connection.finished();
            Ok::<_, StoreError>(folded)
        }
        .await;
        let mut folded = self.folded.lock().map_err(|_| StoreError::Closed)?;
        match result {
            Ok(until) => *folded = (Some(until), None),
            Err(e) => {
                tracing::warn!(error = %e, "could not fold the past days of the figures' summary (the figures stay right, counted by hour); trying again in a minute");
                folded.1 = Some(std::time::Instant::now());
            }
        }
        Ok(())
    }

    async fn try_commit(&self, batch: &[Incoming]) -> Result<Committed, StoreError> {
        self.fold_if_due().await?;
        let check = self
            .checked_at
            .lock()
            .map_err(|_| StoreError::Closed)?
            .is_none_or(|at| at.elapsed() >= SETTINGS_CHECK_EVERY);
        let begin = if check {
            self.begin_checked.as_str()
        } else {
            BEGIN_BATCH
        };
        let mut connection = Checkout::new(self.writes.get().await?, &self.tls);
        let client = connection.client();
        let written = within(BATCH_TIMEOUT, async {
            // BEGIN goes out with the batch's first statement, not a round trip ahead of it.
            let (_, done) = try_join(
                client.batch_execute(begin).map_err(StoreError::from),
                write::write_batch(client, &self.sql, &self.cache, &self.settings, batch),
            )
            .await?;
            client.batch_execute("COMMIT").await?;
            Ok(done)
        })
        .await?;
        connection.finished();
        if check {
            *self.checked_at.lock().map_err(|_| StoreError::Closed)? =
                Some(std::time::Instant::now());
        }
        if !written.changes.is_empty() {
            self.appended.notify_one();
        }
        // Only now are the written records what the rows hold.
        let mut cache = self.cache.lock().map_err(|_| StoreError::Closed)?;
        for call in written.calls {
            cache.put(&call.call_id, call.seq, call.record);
        }
        Ok(Committed {
            outcomes: written.outcomes,
            changes: written.changes,
        })
    }
}

async fn migrate(pool: &Pool, settings: &MergeSettings) -> Result<(), StoreError> {
    let mut client = pool.get().await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let applied = match apply_migrations(&mut client).await {
        Ok(()) => match recompute_if_stale(&mut client, settings).await {
            Ok(()) => match reports::build_callbacks_if_missing(&mut client).await {
                Ok(()) => reports::build_rollup_if_stale(&mut client, settings).await,
                failed => failed,
            },
            failed => failed,
        },
        failed => failed,
    };
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    applied?;
    unlocked?;
    Ok(())
}

async fn apply_migrations(client: &mut deadpool_postgres::Client) -> Result<(), StoreError> {
    client
        .batch_execute(
            // Without the notice that it exists already, which every start but the first
            // logged.
            "SET client_min_messages = warning; \
             CREATE TABLE IF NOT EXISTS alohook_schema (version INTEGER PRIMARY KEY, \
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()); \
             RESET client_min_messages",
        )
        .await?;
    let version: i32 = client
        .query_one("SELECT COALESCE(MAX(version), 0) FROM alohook_schema", &[])
        .await?
        .get(0);
    let version = version as usize;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Database(format!(
            "the database is at schema version {version}, newer than this alohook knows ({}); \
             run a newer alohook",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO alohook_schema (version) VALUES ($1)",
            &[&(i as i32 + 1)],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version = i + 1, "applied PostgreSQL migration");
    }
    if version < MIGRATIONS.len() {
        // New tables and indexes have no statistics until autovacuum gets to them: until then
        // the planner guesses, and a lookup by phone walked the whole start-time index.
        client.batch_execute("ANALYZE").await?;
        tracing::info!("analysed the database after its migrations");
    }
    Ok(())
}

/// Recomputes every call record from its events when the stored fingerprint of the merge
/// settings is not this instance's (see the SQLite store's twin). The exclusive lock on
/// `alohook_meta` keeps two recomputations apart; the locks on `events` and `calls` keep every
/// batch out until the records and the fingerprint are both rewritten. Instances with other
/// settings are refused from their next batch that appends changes on (see write.rs), and from
/// every batch within a second (see [`begin_checked_batch`]).
async fn recompute_if_stale(
    client: &mut deadpool_postgres::Client,
    settings: &MergeSettings,
) -> Result<(), StoreError> {
    let wanted = settings.fingerprint();
    let tx = client.transaction().await?;
    tx.batch_execute("LOCK TABLE alohook_meta IN EXCLUSIVE MODE")
        .await?;
    let stored: Option<String> = tx
        .query_opt(
            "SELECT value FROM alohook_meta WHERE key = $1",
            &[&MERGE_SETTINGS_KEY],
        )
        .await?
        .map(|row| row.get(0));
    if stored.as_deref() == Some(wanted.as_str()) {
        tx.commit().await?;
        return Ok(());
    }
    if let Some(error) = settings.refuse_recompute(stored.as_deref()) {
        return Err(error);
    }
    // No instance writes events or calls until the records and the fingerprint are rewritten:
    // a batch that began before waits here first (and is recomputed with the rest), and one that
    // begins after waits for this commit, then finds the new fingerprint in its last statement
    // and is refused (see write.rs), rather than writing a record merged under the old settings
    // over a recomputed one.
    tx.batch_execute("LOCK TABLE events, calls IN EXCLUSIVE MODE")
        .await?;
    let started = std::time::Instant::now();
    let mut recomputed = 0usize;
    let mut after = i64::MIN;
    loop {
        let calls: Vec<(i64, String)> = tx
            .query(
                "SELECT seq, call_id FROM calls WHERE seq > $1 ORDER BY seq LIMIT 1000",
                &[&after],
            )
            .await?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let Some(&(last, _)) = calls.last() else {
            break;
        };
        after = last;
        let ids: Vec<&str> = calls.iter().map(|(_, id)| id.as_str()).collect();
        let mut events: std::collections::HashMap<String, Vec<(String, i64)>> = Default::default();
        for row in tx
            .query(
                "SELECT call_id, body, received_at FROM events \
                 WHERE scope = ANY($1) AND call_id = scope ORDER BY scope, id",
                &[&ids],
            )
            .await?
        {
            events
                .entry(row.get(0))
                .or_default()
                .push((row.get(1), row.get(2)));
        }
        for (seq, call_id) in &calls {
            let Some(record) = events
                .get(call_id)
                .and_then(|e| settings.remerge(call_id, e))
            else {
                continue;
            };
            let update = rewrite_call(*seq, &record, &settings.finals);
            let params: Vec<&(dyn ToSql + Sync)> = update.args.iter().map(sql_param).collect();
            tx.execute(&numbered(&update.sql), &params).await?;
            recomputed += 1;
        }
    }
    // The worklist follows the records.
    reports::rebuild_callbacks(&tx).await?;
    tx.batch_execute(crate::store::callbacks::MARK_CALLBACKS_BUILT)
        .await?;
    // And so does the figures' summary.
    let thresholds = match settings.thresholds {
        Some(t) => t,
        None => reports::rollup_thresholds(tx.client())
            .await?
            .unwrap_or_default(),
    };
    reports::rebuild_rollup(&tx, &thresholds, &settings.timezone).await?;
    let hash = settings.fingerprint_hash();
    tx.execute(
        "INSERT INTO alohook_meta (key, value) VALUES ($1, $2), ('merge_settings_sha256', $3) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[&MERGE_SETTINGS_KEY, &wanted, &hash],
    )
    .await?;
    tx.commit().await?;
    // Every row was rewritten: the planner's statistics start again from what is there now.
    client
        .batch_execute("ANALYZE calls, callbacks, callback_hotlines")
        .await?;
    super::log_recomputed(stored.as_deref(), &wanted, recomputed, started);
    Ok(())
}

fn sql_param(column: &Column) -> &(dyn ToSql + Sync) {
    match column {
        Column::Text(v) => v,
        Column::Integer(v) => v,
    }
}

/// `?` placeholders as PostgreSQL's `$1, $2, …`.
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// Reads rows as they arrive into `pager`, and no further than it holds: the rest of the result
/// is dropped as it comes, never gathered.
async fn fill<T>(
    rows: tokio_postgres::RowStream,
    pager: &mut Pager<T>,
    read: impl Fn(&Row) -> Result<T, StoreError>,
    size: impl Fn(&T) -> usize,
) -> Result<(), StoreError> {
    use futures_util::TryStreamExt;
    let mut rows = std::pin::pin!(rows);
    while let Some(row) = rows.try_next().await? {
        let item = read(&row)?;
        let bytes = size(&item);
        if !pager.push(item, bytes) {
            break;
        }
    }
    Ok(())
}

fn retryable(error: &tokio_postgres::Error) -> bool {
    error.code().is_some_and(|code| {
        *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

#[async_trait]
impl ChangeLog for PgStore {
    /// Positions are committed in order (see migration 0003), so `seq > after` skips nothing.
    async fn changes(
        &self,
        after: i64,
        filter: &ChangeFilter,
        limit: usize,
        max_bytes: usize,
    ) -> Result<ChangePage, StoreError> {
        let query = changes_query(after, filter, limit);
        let sql = numbered(&query.sql);
        self.read(async |client| {
            let params: Vec<&(dyn ToSql + Sync)> = query.args.iter().map(sql_param).collect();
            let rows = client.query_raw(&sql, params).await?;
            let mut pager = Pager::with_bytes(limit, max_bytes);
            let tz = &self.settings.timezone;
            fill(
                rows,
                &mut pager,
                |row| read_change_row(row, tz),
                change_size,
            )
            .await?;
            let (items, next) = pager.finish(|c| c.seq);
            Ok(ChangePage {
                items,
                more: next.is_some(),
            })
        })
        .await
    }

    async fn count_changes(
        &self,
        after: i64,
        filter: &ChangeFilter,
        undelivered_to: Option<&str>,
    ) -> Result<(i64, Option<i64>), StoreError> {
        let query = count_changes_query(after, filter, undelivered_to);
        let sql = numbered(&query.sql);
        self.read(async |client| {
            let params: Vec<&(dyn ToSql + Sync)> = query.args.iter().map(sql_param).collect();
            let row = client.query_one(&sql, &params).await?;
            Ok((row.get(0), row.get(1)))
        })
        .await
    }

    async fn last_seq(&self) -> Result<i64, StoreError> {
        self.read(async |client| {
            Ok(client
                .query_one("SELECT last_seq FROM alohook_feed", &[])
                .await?
                .get(0))
        })
        .await
    }

    fn watch_other_writers(&self) -> Option<tokio::sync::mpsc::Receiver<()>> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(listen_for_changes(
            self.url.clone(),
            self.sql.instance().to_string(),
            self.appended.clone(),
            tx,
        ));
        Some(rx)
    }
}

/// Listens on [`CHANGES_CHANNEL`] for as long as `wake` has a receiver, and sends on it for every
/// notification of another instance's commit (at most one message waits: a reader reads
/// everything new anyway; this instance's own commits reach its feed from the writer). A lost
/// connection is made again, with a message, since notifications may have been missed meanwhile.
///
/// The same connection tells the other instances when this one appended changes: a NOTIFY of
/// its own, out of the batches' transactions, at most one at a time (commits meanwhile share the
/// next one). Sent from inside each batch, NOTIFY cost PostgreSQL a fifth more CPU per event
/// (it serialises committing transactions on the notification queue's lock).
async fn listen_for_changes(
    url: String,
    instance: String,
    appended: std::sync::Arc<tokio::sync::Notify>,
    wake: tokio::sync::mpsc::Sender<()>,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let connected = std::time::Instant::now();
        let listened = listen_once(&url, &instance, &appended, &wake).await;
        if wake.is_closed() {
            return;
        }
        if let Err(error) = listened {
            tracing::warn!(%error, "lost the PostgreSQL connection that listens for changes; reconnecting");
        }
        if connected.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_millis(250);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
        let _ = wake.try_send(());
    }
}

/// How often the listening connection proves it is alive, and how long it may take: a LISTEN
/// connection only receives, and one whose peer vanished would otherwise wait forever.
const LISTEN_HEARTBEAT: Duration = Duration::from_secs(15);
const LISTEN_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

async fn listen_once(
    url: &str,
    instance: &str,
    appended: &tokio::sync::Notify,
    wake: &tokio::sync::mpsc::Sender<()>,
) -> Result<(), StoreError> {
    use futures_util::StreamExt;
    let (config, tls) = client_config(url)?;
    let (client, mut connection) =
        within(READ_TIMEOUT, async { Ok(config.connect(tls).await?) }).await?;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    // The connection is driven (its messages read) while a statement waits for its answer.
    let drive = async |statement: &str,
                       limit: Duration,
                       messages: &mut (
                                dyn futures_util::Stream<
        Item = Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>,
    > + Unpin
                                    + Send
                            )|
           -> Result<(), StoreError> {
        let done = client.batch_execute(statement);
        let mut done = std::pin::pin!(done);
        let deadline = tokio::time::sleep(limit);
        let mut deadline = std::pin::pin!(deadline);
        loop {
            tokio::select! {
                result = &mut done => return Ok(result?),
                message = messages.next() => heard(message, instance, wake)?,
                _ = &mut deadline => {
                    return Err(StoreError::Database(format!(
                        "PostgreSQL did not answer within {} s",
                        limit.as_secs()
                    )))
                }
            }
        }
    };
    drive(
        &format!("LISTEN {CHANGES_CHANNEL}"),
        READ_TIMEOUT,
        &mut messages,
    )
    .await?;
    // Anything committed before LISTEN took effect is read by the feed's own catch-up.
    let _ = wake.try_send(());
    loop {
        tokio::select! {
            message = messages.next() => heard(message, instance, wake)?,
            _ = tokio::time::sleep(LISTEN_HEARTBEAT) => {
                drive("SELECT 1", LISTEN_HEARTBEAT_TIMEOUT, &mut messages).await?;
            }
            _ = appended.notified() => {
                // The instance name is hex: safe to write into SQL.
                let notify = format!("NOTIFY {CHANGES_CHANNEL}, '{instance}'");
                drive(&notify, LISTEN_HEARTBEAT_TIMEOUT, &mut messages).await?;
            }
            _ = wake.closed() => return Ok(()),
        }
    }
}

/// What the listening connection heard: another instance's notification wakes the feed; the
/// connection's end or failure is an error.
fn heard(
    message: Option<Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>>,
    instance: &str,
    wake: &tokio::sync::mpsc::Sender<()>,
) -> Result<(), StoreError> {
    match message {
        Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
            if n.payload() != instance {
                let _ = wake.try_send(());
            }
            Ok(())
        }
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(e.into()),
        None => Err(StoreError::Database("the connection closed".into())),
    }
}

#[async_trait]
impl super::Sessions for PgStore {
    async fn end_session(&self, id: &str, at: i64, forget_before: i64) -> Result<(), StoreError> {
        let mut connection = Checkout::new(self.reads.get().await?, &self.tls);
        within(READ_TIMEOUT, async {
            let client = connection.client();
            client
                .execute(&numbered(super::END_SESSION), &[&id, &at])
                .await?;
            client
                .execute(&numbered(super::FORGET_SESSIONS), &[&forget_before])
                .await?;
            Ok(())
        })
        .await?;
        connection.finished();
        Ok(())
    }

    async fn session_ended(&self, id: &str) -> Result<bool, StoreError> {
        let sql = numbered(super::SESSION_ENDED);
        self.read(async |client| Ok(client.query_opt(&sql, &[&id]).await?.is_some()))
            .await
    }
}

#[async_trait]
impl Destinations for PgStore {
    async fn create_destination(
        &self,
        id: &str,
        spec: &DestinationSpec,
        secret: &str,
        cursor: i64,
    ) -> Result<StoredDestination, StoreError> {
        let now = crate::model::time::now_micros();
        let spec_text = spec_json(spec);
        self.read(async |client| {
            client
                .execute(
                    &numbered(INSERT_DESTINATION),
                    &[&id, &spec_text, &secret, &cursor, &now, &now],
                )
                .await?;
            Ok(())
        })
        .await?;
        self.destination(id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("a destination vanished as it was made".into()))
    }

    async fn destinations(&self) -> Result<Vec<StoredDestination>, StoreError> {
        let sql = format!("SELECT {DESTINATION_COLUMNS} FROM destinations ORDER BY created_at, id");
        self.read(async |client| {
            client
                .query(&sql, &[])
                .await?
                .iter()
                .map(read_destination_row)
                .collect()
        })
        .await
    }

    async fn destination(&self, id: &str) -> Result<Option<StoredDestination>, StoreError> {
        let sql = format!("SELECT {DESTINATION_COLUMNS} FROM destinations WHERE id = $1");
        self.read(async |client| {
            client
                .query_opt(&sql, &[&id])
                .await?
                .map(|row| read_destination_row(&row))
                .transpose()
        })
        .await
    }

    async fn update_destination(
        &self,
        destination: &StoredDestination,
    ) -> Result<bool, StoreError> {
        let d = destination;
        let now = crate::model::time::now_micros();
        let (spec, enabled) = (spec_json(&d.spec), d.enabled as i64);
        // Later than the version read, even on a clock that stepped back.
        let now = now.max(d.updated_at + 1);
        self.read(async |client| {
            let updated = client
                .execute(
                    &numbered(UPDATE_DESTINATION),
                    &[
                        &spec,
                        &enabled,
                        &d.disabled_reason,
                        &d.secret,
                        &d.previous_secret,
                        &d.previous_secret_until,
                        &now,
                        &d.id,
                        &d.updated_at,
                    ],
                )
                .await?;
            Ok(updated == 1)
        })
        .await
    }

    async fn delete_destination(&self, id: &str) -> Result<bool, StoreError> {
        let mut connection = Checkout::new(self.reads.get().await?, &self.tls);
        let deleted = within(READ_TIMEOUT, async {
            let client = connection.client();
            client.batch_execute("BEGIN").await?;
            let mut deleted = 0;
            for sql in DELETE_DESTINATION {
                deleted = client.execute(&numbered(sql), &[&id]).await?;
            }
            client.batch_execute("COMMIT").await?;
            Ok(deleted == 1)
        })
        .await?;
        connection.finished();
        Ok(deleted)
    }

    async fn delivery_counts(&self, id: &str) -> Result<DeliveryCounts, StoreError> {
        self.read(async |client| {
            let counts = client.query_one(&numbered(DELIVERY_COUNTS), &[&id]).await?;
            let attempts = client
                .query_one(&numbered(DELIVERY_ATTEMPT_COUNTS), &[&id])
                .await?;
            let last_error = client
                .query_opt(&numbered(LAST_DELIVERY_ERROR), &[&id])
                .await?
                .map(|row| describe_failure(row.get(0), row.get(1)));
            let oldest = client.query_one(&numbered(OLDEST_PENDING), &[&id]).await?;
            Ok(DeliveryCounts {
                pending: counts.get(0),
                delivered: counts.get(1),
                dead: counts.get(2),
                failed_attempts: attempts.get(0),
                oldest_pending_received_at: oldest.get(0),
                last_success_at: attempts.get(1),
                last_error,
            })
        })
        .await
    }
}

impl PgStore {
    /// Runs `work` in a transaction on a reading connection, within [`READ_TIMEOUT`].
    async fn transaction<T>(
        &self,
        work: impl AsyncFnOnce(&deadpool_postgres::Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut connection = Checkout::new(self.reads.get().await?, &self.tls);
        let client = connection.client();
        let result = within(READ_TIMEOUT, async {
            client.batch_execute("BEGIN").await?;
            let result = work(client).await?;
            client.batch_execute("COMMIT").await?;
            Ok(result)
        })
        .await?;
        connection.finished();
        Ok(result)
    }
}

/// A batch of delivery outcomes in one statement (see `save_deliveries`): the deliveries from
/// arrays ($3–$10: seq, type, call, state, attempts, next attempt, last status, last error),
/// then the attempts of those that were tried ($11–$16: seq, at, status, error, duration,
/// response), joined to their delivery's id; $1 the destination, $2 the time.
const SAVE_DELIVERIES: &str = "WITH saved AS (INSERT INTO deliveries (destination_id, seq, type, \
    call_id, state, attempts, next_attempt_at, last_status, last_error, created_at, updated_at) \
    SELECT $1, u.* , $2, $2 FROM UNNEST($3::int8[], $4::text[], $5::text[], $6::text[], \
    $7::int8[], $8::int8[], $9::int8[], $10::text[]) AS u \
    ON CONFLICT (destination_id, seq) DO UPDATE SET state = excluded.state, \
    attempts = excluded.attempts, next_attempt_at = excluded.next_attempt_at, \
    last_status = excluded.last_status, last_error = excluded.last_error, \
    updated_at = excluded.updated_at RETURNING id, seq) \
    INSERT INTO delivery_attempts (delivery_id, at, status, error, duration_ms, response) \
    SELECT saved.id, a.at, a.status, a.error, a.duration_ms, a.response FROM saved \
    JOIN UNNEST($11::int8[], $12::int8[], $13::int8[], $14::text[], $15::int8[], $16::text[]) \
    AS a(seq, at, status, error, duration_ms, response) ON a.seq = saved.seq";

#[async_trait]
impl Deliveries for PgStore {
    async fn save_deliveries(
        &self,
        destination_id: &str,
        updates: Vec<DeliveryUpdate>,
        cursor: i64,
    ) -> Result<(), StoreError> {
        let now = crate::model::time::now_micros();
        // One statement for the whole batch (two round trips per delivery made delivery
        // throughput a matter of latency); the rare batch with a change twice goes row by row.
        let distinct = updates
            .iter()
            .map(|u| u.seq)
            .collect::<std::collections::HashSet<_>>()
            .len()
            == updates.len();
        self.transaction(async |client| {
            if distinct {
                let seqs: Vec<i64> = updates.iter().map(|u| u.seq).collect();
                let kinds: Vec<&str> = updates.iter().map(|u| u.kind.as_str()).collect();
                let calls: Vec<Option<&str>> =
                    updates.iter().map(|u| u.call_id.as_deref()).collect();
                let states: Vec<&str> = updates.iter().map(|u| u.state.as_str()).collect();
                let attempts: Vec<i64> = updates.iter().map(|u| u.attempts).collect();
                let next: Vec<Option<i64>> = updates.iter().map(|u| u.next_attempt_at).collect();
                let statuses: Vec<Option<i64>> = updates
                    .iter()
                    .map(|u| u.attempt.as_ref().and_then(|a| a.status))
                    .collect();
                let errors: Vec<Option<&str>> = updates
                    .iter()
                    .map(|u| u.attempt.as_ref().and_then(|a| a.error.as_deref()))
                    .collect();
                let tried: Vec<&DeliveryUpdate> =
                    updates.iter().filter(|u| u.attempt.is_some()).collect();
                let a = |f: &dyn Fn(&crate::store::Attempt) -> Option<i64>| -> Vec<Option<i64>> {
                    tried
                        .iter()
                        .map(|u| u.attempt.as_ref().and_then(f))
                        .collect()
                };
                let (a_seq, a_at, a_status, a_ms) = (
                    tried.iter().map(|u| u.seq).collect::<Vec<i64>>(),
                    a(&|x| Some(x.at)),
                    a(&|x| x.status),
                    a(&|x| Some(x.duration_ms)),
                );
                let text =
                    |f: &dyn Fn(&crate::store::Attempt) -> Option<String>| -> Vec<Option<String>> {
                        tried
                            .iter()
                            .map(|u| u.attempt.as_ref().and_then(f))
                            .collect()
                    };
                let (a_error, a_response) =
                    (text(&|x| x.error.clone()), text(&|x| x.response.clone()));
                let statement = client.prepare_cached(SAVE_DELIVERIES).await?;
                client
                    .execute(
                        &statement,
                        &[
                            &destination_id,
                            &now,
                            &seqs,
                            &kinds,
                            &calls,
                            &states,
                            &attempts,
                            &next,
                            &statuses,
                            &errors,
                            &a_seq,
                            &a_at,
                            &a_status,
                            &a_error,
                            &a_ms,
                            &a_response,
                        ],
                    )
                    .await?;
            } else {
                let upsert = client
                    .prepare_cached(&numbered(deliveries::UPSERT_DELIVERY))
                    .await?;
                let insert = client
                    .prepare_cached(&numbered(deliveries::INSERT_ATTEMPT))
                    .await?;
                for u in &updates {
                    let (last_status, last_error) = match &u.attempt {
                        Some(a) => (a.status, a.error.clone()),
                        None => (None, None),
                    };
                    let row = client
                        .query_one(
                            &upsert,
                            &[
                                &destination_id,
                                &u.seq,
                                &u.kind,
                                &u.call_id,
                                &u.state.as_str(),
                                &u.attempts,
                                &u.next_attempt_at,
                                &last_status,
                                &last_error,
                                &now,
                                &now,
                            ],
                        )
                        .await?;
                    let id: i64 = row.get(0);
                    if let Some(a) = &u.attempt {
                        client
                            .execute(
                                &insert,
                                &[&id, &a.at, &a.status, &a.error, &a.duration_ms, &a.response],
                            )
                            .await?;
                    }
                }
            }
            client
                .execute(
                    &numbered(deliveries::RAISE_CURSOR),
                    &[&cursor, &cursor, &destination_id],
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn due_deliveries(
        &self,
        destination_id: &str,
        now: i64,
        limit: usize,
    ) -> Result<Vec<StoredDelivery>, StoreError> {
        let limit = limit as i64;
        self.read(async |client| {
            client
                .query(
                    &numbered(deliveries::DUE_DELIVERIES),
                    &[&destination_id, &now, &limit],
                )
                .await?
                .iter()
                .map(deliveries::read_delivery_row)
                .collect()
        })
        .await
    }

    async fn release_call(
        &self,
        destination_id: &str,
        call_id: &str,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        self.read(async |client| {
            Ok(client
                .query_opt(
                    &numbered(deliveries::RELEASE_CALL),
                    &[&now, &destination_id, &call_id],
                )
                .await?
                .map(|row| row.get(0)))
        })
        .await
    }

    async fn calls_pending(&self, destination_id: &str) -> Result<Vec<String>, StoreError> {
        self.read(async |client| {
            Ok(client
                .query(&numbered(deliveries::CALLS_PENDING), &[&destination_id])
                .await?
                .iter()
                .map(|row| row.get(0))
                .collect())
        })
        .await
    }

    async fn delivered_positions(
        &self,
        destination_id: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<i64>, StoreError> {
        self.read(async |client| {
            Ok(client
                .query(
                    &numbered(deliveries::DELIVERED_POSITIONS),
                    &[&destination_id, &from, &to],
                )
                .await?
                .iter()
                .map(|row| row.get(0))
                .collect())
        })
        .await
    }

    async fn replay_matches(
        &self,
        destination_id: &str,
        scope: &deliveries::ReplayScope,
        upto: i64,
    ) -> Result<i64, StoreError> {
        let query = deliveries::replay_count_query(destination_id, scope, upto);
        let sql = numbered(&query.sql);
        self.read(async |client| {
            let params: Vec<&(dyn ToSql + Sync)> = query.args.iter().map(sql_param).collect();
            Ok(client.query_one(&sql, &params).await?.get(0))
        })
        .await
    }

    async fn queue_replay(
        &self,
        destination_id: &str,
        scope: &deliveries::ReplayScope,
        after: i64,
        upto: i64,
        per_call: bool,
        touch: bool,
    ) -> Result<i64, StoreError> {
        let now = crate::model::time::now_micros();
        let query =
            deliveries::replay_queue_query(destination_id, scope, after, upto, per_call, now);
        let sql = numbered(&query.sql);
        self.transaction(async |client| {
            let params: Vec<&(dyn ToSql + Sync)> = query.args.iter().map(sql_param).collect();
            let queued = client.execute(&sql, &params).await?;
            if per_call {
                client
                    .execute(
                        &numbered(deliveries::RELEASE_HEADS),
                        &[&now, &destination_id],
                    )
                    .await?;
            }
            if touch {
                client
                    .execute(
                        &numbered(deliveries::TOUCH_DESTINATION),
                        &[&now, &destination_id],
                    )
                    .await?;
            }
            Ok(queued as i64)
        })
        .await
    }

    async fn pending_deliveries(
        &self,
        destination_id: &str,
    ) -> Result<(i64, Option<i64>), StoreError> {
        self.read(async |client| {
            let row = client
                .query_one(
                    &numbered(deliveries::PENDING_DELIVERIES),
                    &[&destination_id],
                )
                .await?;
            Ok((row.get(0), row.get(1)))
        })
        .await
    }

    async fn release_held(
        &self,
        destination_id: &str,
        per_call: bool,
        now: i64,
    ) -> Result<(), StoreError> {
        let sql = numbered(if per_call {
            deliveries::RELEASE_HEADS
        } else {
            deliveries::RELEASE_ALL_HELD
        });
        self.read(async |client| {
            client.execute(&sql, &[&now, &destination_id]).await?;
            Ok(())
        })
        .await
    }

    async fn disable_destination(
        &self,
        destination_id: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let now = crate::model::time::now_micros();
        self.read(async |client| {
            client
                .execute(
                    &numbered(deliveries::DISABLE_DESTINATION),
                    &[&reason, &now, &destination_id],
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn release_lease(&self, destination_id: &str, owner: &str) -> Result<(), StoreError> {
        self.read(async |client| {
            client
                .execute(
                    &numbered(deliveries::RELEASE_LEASE),
                    &[&destination_id, &owner],
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn save_job(&self, job: &deliveries::Job) -> Result<(), StoreError> {
        self.read(async |client| {
            client
                .execute(
                    &numbered(deliveries::SAVE_JOB),
                    &[
                        &job.id,
                        &job.kind,
                        &job.destination_id,
                        &job.state,
                        &job.matched,
                        &job.queued,
                        &job.error,
                        &job.created_at,
                        &job.updated_at,
                    ],
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn job(&self, id: &str) -> Result<Option<deliveries::Job>, StoreError> {
        let sql = numbered(&format!(
            "SELECT {} FROM jobs WHERE id = ?",
            deliveries::JOB_COLUMNS
        ));
        self.read(async |client| {
            client
                .query_opt(&sql, &[&id])
                .await?
                .map(|row| deliveries::read_job_row(&row))
                .transpose()
        })
        .await
    }

    async fn lease_destination(
        &self,
        destination_id: &str,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError> {
        self.read(async |client| {
            let taken = client
                .execute(
                    &numbered(deliveries::LEASE_DESTINATION),
                    &[&owner, &until, &destination_id, &owner, &now],
                )
                .await?;
            Ok(taken == 1)
        })
        .await
    }

    async fn deliveries(
        &self,
        filter: &DeliveryFilter,
        limit: usize,
        before: Option<i64>,
    ) -> Result<DeliveryPage, StoreError> {
        let query = deliveries::deliveries_query(filter, before, limit);
        let sql = numbered(&query.sql);
        self.read(async |client| {
            let params: Vec<&(dyn ToSql + Sync)> = query.args.iter().map(sql_param).collect();
            let rows = client.query(&sql, &params).await?;
            let mut pager = Pager::new(limit);
            for row in &rows {
                if !pager.push(deliveries::read_delivery_row(row)?, 300) {
                    break;
                }
            }
            let (mut items, next) = pager.finish(|d| d.id);
            let ids: Vec<i64> = items.iter().map(|d| d.id).collect();
            if !ids.is_empty() {
                let params: Vec<&(dyn ToSql + Sync)> =
                    ids.iter().map(|id| id as &(dyn ToSql + Sync)).collect();
                for row in client
                    .query(&numbered(&deliveries::attempts_query(ids.len())), &params)
                    .await?
                {
                    let (id, attempt) = deliveries::read_attempt_row(&row)?;
                    if let Some(d) = items.iter_mut().find(|d| d.id == id) {
                        d.attempt_log.push(attempt);
                    }
                }
            }
            Ok(DeliveryPage { items, next })
        })
        .await
    }
}

#[async_trait]
impl Store for PgStore {
    fn concurrent_commits(&self) -> usize {
        WRITE_CONNECTIONS
    }

    async fn commit(&self, batch: Vec<Incoming>) -> Result<Committed, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_commit(&batch).await {
                Err(StoreError::Retry(reason)) if attempt < RETRIES => {
                    // Worth seeing: a deadlock costs the batch PostgreSQL's deadlock_timeout (1 s
                    // by default), and frequent ones mean instances contend for the same calls.
                    tracing::warn!(%reason, attempt, "batch aborted by PostgreSQL; retrying");
                }
                Err(StoreError::Retry(reason)) => return Err(StoreError::Database(reason)),
                result => return result,
            }
        }
    }

    async fn call(&self, call_id: &str) -> Result<Option<StoredCall>, StoreError> {
        let sql = format!("SELECT {CALL_COLUMNS} FROM calls WHERE call_id = $1");
        self.read(async |client| {
            let row = client.query_opt(&sql, &[&call_id]).await?;
            row.map(|r| read_call_row(&r).map(|(_, call)| call))
                .transpose()
        })
        .await
    }

    async fn calls_within(
        &self,
        filter: &CallFilter,
        limit: usize,
        cursor: Option<CallCursor>,
        budget: usize,
    ) -> Result<CallPage, StoreError> {
        let plan = listing::plan(filter, cursor, limit, budget);
        self.read(async |client| {
            // The window ends and the rows are read apart: a call committed in between is
            // either above the cutoff (listed now or on a later page) or below it (listed on a
            // later page), never skipped.
            let mut ends = Vec::new();
            for end in plan.window_ends() {
                let params: Vec<&(dyn ToSql + Sync)> = end.args.iter().map(sql_param).collect();
                let row = client.query_opt(&numbered(&end.sql), &params).await?;
                ends.push(row.map(|r| CallCursor {
                    sort_key: r.get(0),
                    seq: r.get(1),
                }));
            }
            let cutoff = listing::ListPlan::cutoff(&ends);
            let query = plan.rows(cutoff);
            let params: Vec<&(dyn ToSql + Sync)> = query.args.iter().map(sql_param).collect();
            let rows = client.query(&numbered(&query.sql), &params).await?;
            let rows = rows
                .iter()
                .map(read_call_row)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(plan.page(rows, cutoff, call_size))
        })
        .await
    }

    async fn call_events(
        &self,
        call_id: &str,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Option<EventPage>, StoreError> {
        let sql = numbered(CALL_EVENTS_QUERY);
        let (after, rows_wanted) = (after.unwrap_or(i64::MIN), limit as i64 + 1);
        self.read(async |client| {
            let known = client
                .query_opt("SELECT 1 FROM calls WHERE call_id = $1", &[&call_id])
                .await?
                .is_some();
            if !known {
                return Ok(None);
            }
            let params: [&(dyn ToSql + Sync); 4] = [&call_id, &call_id, &after, &rows_wanted];
            let rows = client.query_raw(&sql, params).await?;
            let mut pager = Pager::new(limit);
            fill(rows, &mut pager, read_event_row, |e| e.payload.len()).await?;
            let (items, next) = pager.finish(|e| e.event_id);
            Ok(Some(EventPage { items, next }))
        })
        .await
    }

    async fn rejected(
        &self,
        limit: usize,
        before: Option<i64>,
    ) -> Result<RejectedPage, StoreError> {
        let sql = numbered(REJECTED_QUERY);
        let (before, rows_wanted) = (before.unwrap_or(i64::MAX), limit as i64 + 1);
        self.read(async |client| {
            let params: [&(dyn ToSql + Sync); 2] = [&before, &rows_wanted];
            let rows = client.query_raw(&sql, params).await?;
            let mut pager = Pager::new(limit);
            fill(rows, &mut pager, read_rejected_row, |r| r.body.len()).await?;
            let (items, next) = pager.finish(|r| r.id);
            Ok(RejectedPage { items, next })
        })
        .await
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        let primary: bool = self
            .read(async |client| {
                Ok(client
                    .query_one("SELECT NOT pg_is_in_recovery()", &[])
                    .await?
                    .get(0))
            })
            .await?;
        if primary {
            Ok(())
        } else {
            Err(StoreError::Database(
                "the database is a read-only replica".into(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A statement whose work was abandoned (its request timed out, its client went away) is
    /// cancelled on the server, not left running there.
    #[tokio::test]
    #[cfg_attr(
        not(postgres_tests),
        ignore = "set ALOHOOK_TEST_POSTGRES_URL to run it"
    )]
    async fn an_abandoned_statement_is_cancelled_on_the_server() {
        let url = std::env::var("ALOHOOK_TEST_POSTGRES_URL").unwrap();
        let (_, tls) = client_config(&url).unwrap();
        let pool = pool(&url, 2).unwrap();
        let marker = format!("cancel-test-{}", std::process::id());
        let sql = format!("SELECT pg_sleep(60) /* {marker} */");
        let running = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
                       AND query LIKE '%' || $1 || '%' AND query NOT LIKE '%pg_stat_activity%'";
        let abandoned = tokio::time::timeout(Duration::from_millis(500), async {
            let connection = Checkout::new(pool.get().await.unwrap(), &tls);
            connection.client().batch_execute(&sql).await
        })
        .await;
        assert!(abandoned.is_err(), "the sleep ended by itself");
        let watcher = pool.get().await.unwrap();
        let mut left = i64::MAX;
        for _ in 0..50 {
            left = watcher.query_one(running, &[&marker]).await.unwrap().get(0);
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(left, 0, "the abandoned statement still runs on the server");
    }

    #[test]
    fn placeholders_are_numbered() {
        assert_eq!(
            numbered("a = ? AND (b, c) < (?, ?) LIMIT ?"),
            "a = $1 AND (b, c) < ($2, $3) LIMIT $4"
        );
    }
}
