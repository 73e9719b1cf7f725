//! The PostgreSQL store: several alohook instances may share one database. Identity and merging
//! hold across instances through the database itself: a unique (scope, dedupe_key) decides which
//! delivery is first, and a call's row is locked (`FOR UPDATE`) while an event is merged into it.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::future::try_join_all;
use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use super::{
    CALL_COLUMNS, CallCursor, CallFilter, CallPage, Column, EVENT_COLUMNS, Incoming, Outcome,
    REJECTED_QUERY, RejectedBody, RejectedPage, RowColumns, Store, StoreError, StoredCall,
    StoredEvent, call_page, insert_call, list_calls_query, merge_into_call, read_call_row,
    read_event_row, read_rejected_row, rejected_page,
};
use crate::model::{CallRecord, FinalStatuses, ParsedEvent};

const MIGRATIONS: &[&str] = &[include_str!("migrations/0001_init.sql")];
/// Key of the advisory lock that serialises migrations between instances starting together.
const MIGRATION_LOCK: i64 = 0x616c_6f68_6f6f_6b01;
/// Batches committed side by side, each on a connection of its own.
const WRITE_CONNECTIONS: usize = 4;
/// How often a batch is retried when PostgreSQL aborts it to break a deadlock or conflict.
const RETRIES: usize = 3;

/// The PostgreSQL implementation of [`Store`].
pub struct PgStore {
    /// Connections for the writer (its own runtime drives them).
    writes: Pool,
    /// Connections for reads, on the request handlers' runtime.
    reads: Pool,
    finals: FinalStatuses,
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The Display of a server error is only "db error": say what PostgreSQL said.
        let text = match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => e.to_string(),
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
        StoreError::Database(format!("no database connection: {e}"))
    }
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

fn pool(url: &str, size: usize) -> Result<Pool, StoreError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Database(format!("invalid PostgreSQL URL: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    config.application_name("alohook");
    let manager = Manager::from_config(
        config,
        NoTls,
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

impl PgStore {
    /// Connects and applies pending migrations.
    pub async fn open(url: &str, finals: FinalStatuses) -> Result<Self, StoreError> {
        let store = PgStore {
            writes: pool(url, WRITE_CONNECTIONS)?,
            reads: pool(url, 8)?,
            finals,
        };
        migrate(&store.reads).await?;
        Ok(store)
    }

    async fn try_commit(&self, batch: &[Incoming]) -> Result<Vec<Outcome>, StoreError> {
        let mut client = self.writes.get().await?;
        let tx = client.transaction().await?;
        // Items are grouped by scope (the call id): one group's items run in order, and the
        // groups run side by side, their statements pipelined on the one connection, so a batch
        // costs a few round trips rather than a few per event. Groups start in call-id order, so
        // two instances committing the same calls tend to wait for each other rather than
        // deadlock; when PostgreSQL does abort one, the batch is retried.
        let mut groups: BTreeMap<(u8, &str), Vec<usize>> = BTreeMap::new();
        for (i, item) in batch.iter().enumerate() {
            let key = match item {
                Incoming::Event { event, .. } => (0, event.scope()),
                Incoming::Rejected(_) => (1, ""),
            };
            groups.entry(key).or_default().push(i);
        }
        let finals = &self.finals;
        let tx_ref = &tx;
        let done = try_join_all(groups.into_values().map(|items| async move {
            let mut locked: HashMap<String, (i64, CallRecord)> = HashMap::new();
            let mut outcomes = Vec::with_capacity(items.len());
            for i in items {
                let outcome = match &batch[i] {
                    Incoming::Event { event, received_at } => {
                        store_event(tx_ref, &mut locked, event, *received_at, finals).await?
                    }
                    Incoming::Rejected(r) => quarantine(tx_ref, r).await?,
                };
                outcomes.push((i, outcome));
            }
            Ok::<_, StoreError>(outcomes)
        }))
        .await?;
        let mut outcomes = vec![Outcome::Quarantined { id: 0 }; batch.len()];
        for (i, outcome) in done.into_iter().flatten() {
            outcomes[i] = outcome;
        }
        tx.commit().await?;
        Ok(outcomes)
    }
}

/// A prepared statement, from the connection's cache: parsed and planned once, not per event.
async fn cached(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
) -> Result<tokio_postgres::Statement, StoreError> {
    Ok(tx.prepare_cached(sql).await?)
}

async fn quarantine(
    tx: &deadpool_postgres::Transaction<'_>,
    r: &RejectedBody,
) -> Result<Outcome, StoreError> {
    let hash: [u8; 32] = Sha256::digest(&r.body).into();
    let row = tx
        .query_one(
            &cached(
                tx,
                "INSERT INTO rejected (body_hash, reason, detail, received_at, \
             last_delivery_at, body) VALUES ($1, $2, $3, $4, $4, $5) \
             ON CONFLICT (body_hash) DO UPDATE SET \
             deliveries = rejected.deliveries + 1, \
             last_delivery_at = excluded.received_at RETURNING id",
            )
            .await?,
            &[&&hash[..], &r.reason, &r.detail, &r.received_at, &r.body],
        )
        .await?;
    Ok(Outcome::Quarantined { id: row.get(0) })
}

async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool.get().await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let applied = apply_migrations(&mut client).await;
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
            "CREATE TABLE IF NOT EXISTS alohook_schema (version INTEGER PRIMARY KEY, \
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
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
    Ok(())
}

async fn store_event(
    tx: &deadpool_postgres::Transaction<'_>,
    locked: &mut HashMap<String, (i64, CallRecord)>,
    event: &ParsedEvent,
    received_at: i64,
    finals: &FinalStatuses,
) -> Result<Outcome, StoreError> {
    let call_id = event.merged_call_id();
    let warnings = event.warnings_json();
    let inserted = tx
        .query_opt(
            &cached(
                tx,
                "INSERT INTO events (scope, dedupe_key, event_type, call_id, received_at, \
             last_delivery_at, warnings, body) VALUES ($1, $2, $3, $4, $5, $5, $6, $7) \
             ON CONFLICT (scope, dedupe_key) DO NOTHING RETURNING id",
            )
            .await?,
            &[
                &event.scope(),
                &&event.dedupe_key[..],
                &event.event_type,
                &call_id,
                &received_at,
                &warnings,
                &event.raw,
            ],
        )
        .await?;
    let Some(row) = inserted else {
        let row = tx
            .query_one(
                &cached(
                    tx,
                    "UPDATE events SET deliveries = deliveries + 1, \
                 last_delivery_at = GREATEST(last_delivery_at, $3) \
                 WHERE scope = $1 AND dedupe_key = $2 RETURNING id",
                )
                .await?,
                &[&event.scope(), &&event.dedupe_key[..], &received_at],
            )
            .await?;
        return Ok(Outcome::Duplicate {
            event_id: row.get(0),
        });
    };
    let event_id: i64 = row.get(0);
    if let Some(call_id) = call_id {
        merge_call(tx, locked, call_id, event, event_id, received_at, finals).await?;
    }
    Ok(Outcome::Stored { event_id })
}

fn sql_param(column: &Column) -> &(dyn ToSql + Sync) {
    match column {
        Column::Text(v) => v,
        Column::Integer(v) => v,
    }
}

async fn merge_call(
    tx: &deadpool_postgres::Transaction<'_>,
    locked: &mut HashMap<String, (i64, CallRecord)>,
    call_id: &str,
    event: &ParsedEvent,
    event_id: i64,
    received_at: i64,
    finals: &FinalStatuses,
) -> Result<(), StoreError> {
    let fields = &event.fields;
    let (seq, mut record) = match locked.remove(call_id) {
        Some(held) => held,
        None => {
            let record = CallRecord::from_event(call_id, fields, event_id, received_at);
            let insert = insert_call(&record, finals);
            let sql = numbered(&format!("{} RETURNING seq", insert.sql));
            let params: Vec<&(dyn ToSql + Sync)> = insert.args.iter().map(sql_param).collect();
            // The insert takes the row lock of a new call; an existing one is locked explicitly.
            if let Some(row) = tx.query_opt(&cached(tx, &sql).await?, &params).await? {
                locked.insert(call_id.to_string(), (row.get(0), record));
                return Ok(());
            }
            let row = tx
                .query_one(
                    &cached(
                        tx,
                        &format!("SELECT {CALL_COLUMNS} FROM calls WHERE call_id = $1 FOR UPDATE"),
                    )
                    .await?,
                    &[&call_id],
                )
                .await?;
            let (seq, stored) = read_call_row(&row)?;
            (seq, stored.record)
        }
    };
    let update = merge_into_call(seq, &mut record, fields, event_id, received_at, finals);
    let params: Vec<&(dyn ToSql + Sync)> = update.args.iter().map(sql_param).collect();
    tx.execute(&cached(tx, &numbered(&update.sql)).await?, &params)
        .await?;
    locked.insert(call_id.to_string(), (seq, record));
    Ok(())
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

fn retryable(error: &tokio_postgres::Error) -> bool {
    error.code().is_some_and(|code| {
        *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

#[async_trait]
impl Store for PgStore {
    fn concurrent_commits(&self) -> usize {
        WRITE_CONNECTIONS
    }

    async fn commit(&self, batch: Vec<Incoming>) -> Result<Vec<Outcome>, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_commit(&batch).await {
                Err(StoreError::Retry(reason)) if attempt < RETRIES => {
                    tracing::debug!(%reason, attempt, "batch aborted by PostgreSQL; retrying");
                }
                Err(StoreError::Retry(reason)) => return Err(StoreError::Database(reason)),
                result => return result,
            }
        }
    }

    async fn call(&self, call_id: &str) -> Result<Option<StoredCall>, StoreError> {
        let client = self.reads.get().await?;
        let row = client
            .query_opt(
                &format!("SELECT {CALL_COLUMNS} FROM calls WHERE call_id = $1"),
                &[&call_id],
            )
            .await?;
        row.map(|r| read_call_row(&r).map(|(_, call)| call))
            .transpose()
    }

    async fn calls(
        &self,
        filter: &CallFilter,
        limit: usize,
        cursor: Option<CallCursor>,
    ) -> Result<CallPage, StoreError> {
        let query = list_calls_query(filter, cursor, limit);
        let sql = numbered(&query.sql);
        let params: Vec<&(dyn ToSql + Sync)> = query.args.iter().map(sql_param).collect();
        let client = self.reads.get().await?;
        let rows = client.query(&sql, &params).await?;
        let rows = rows
            .iter()
            .map(read_call_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(call_page(rows, limit))
    }

    async fn call_events(&self, call_id: &str) -> Result<Option<Vec<StoredEvent>>, StoreError> {
        let client = self.reads.get().await?;
        let known = client
            .query_opt("SELECT 1 FROM calls WHERE call_id = $1", &[&call_id])
            .await?
            .is_some();
        if !known {
            return Ok(None);
        }
        let rows = client
            .query(
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE scope = $1 AND call_id = $1 ORDER BY id"
                ),
                &[&call_id],
            )
            .await?;
        let events = rows
            .iter()
            .map(read_event_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(events))
    }

    async fn rejected(
        &self,
        limit: usize,
        before: Option<i64>,
    ) -> Result<RejectedPage, StoreError> {
        let client = self.reads.get().await?;
        let rows = client
            .query(
                &numbered(REJECTED_QUERY),
                &[&before.unwrap_or(i64::MAX), &(limit as i64 + 1)],
            )
            .await?;
        let items = rows
            .iter()
            .map(read_rejected_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rejected_page(items, limit))
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        let client = self.reads.get().await?;
        let primary: bool = client
            .query_one("SELECT NOT pg_is_in_recovery()", &[])
            .await?
            .get(0);
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
    use super::numbered;

    #[test]
    fn placeholders_are_numbered() {
        assert_eq!(
            numbered("a = ? AND (b, c) < (?, ?) LIMIT ?"),
            "a = $1 AND (b, c) < ($2, $3) LIMIT $4"
        );
    }
}
