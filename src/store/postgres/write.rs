//! One batch, one transaction, a handful of statements whatever the batch's size.
//!
//! A statement costs PostgreSQL a round trip, an executor start and a reply on the socket, about
//! as much as the row work itself, so a batch is written in multi-row statements (`UNNEST` of
//! one array per column):
//!
//! 1. its distinct events, in one `INSERT … ON CONFLICT DO NOTHING` (the unique
//!    `(scope, dedupe_key)` decides which delivery is first, across instances too); the keys
//!    that were already stored count their resends in one `UPDATE`;
//! 2. its calls: those the writer does not hold in its [`CallCache`] in one
//!    `INSERT … ON CONFLICT DO NOTHING`, those it holds in one `UPDATE` that applies only where
//!    the row's `event_count` is still the cached one (no other writer merged an event since);
//! 3. the calls that step 2 could not write (they existed, or changed under the cache): locked
//!    with `SELECT … FOR UPDATE`, merged with what the row holds now, and updated.
//!
//! 4. the callback worklist of the calls' numbers (reports.rs, `refresh_callbacks`): their
//!    locks and reads in one round trip, then its writes, pipelined beside step 5;
//! 5. the figures' summary (its state, then its rows), then the changes, one per event stored
//!    now, in one `INSERT` that takes their positions from the `alohook_feed` counter: after
//!    everything else of the summary's chain, so that the counter's row lock, which orders
//!    positions across instances, is held as briefly as possible (see migration 0003). (The
//!    worklist's writes, one round trip in, usually go before it; if they went after, the
//!    counter would be held a little longer, never in a cycle: the worklist writes only rows
//!    of numbers whose locks it holds.)
//!
//! With one instance and a warm cache, step 3 is rare.
//!
//! The check in step 2 holds only while every write to a `calls` row merges an event (and so
//! raises `event_count`). Anything that comes to change a call row another way must raise a
//! version the update checks, or a stale cached record would be written over it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use futures_util::future::{try_join, try_join_all};
use sha2::{Digest, Sha256};
use tokio_postgres::types::ToSql;

use crate::model::change::{Change, NewChange};
use crate::model::{CallRecord, EventFields, FinalStatuses, ParsedEvent, SourceKey};
use crate::store::{
    CALL_COLUMNS, CallCache, Column, Incoming, MergeSettings, Outcome, RejectedBody, StoreError,
    call_change, call_columns, change_columns, read_call_row,
};

/// The writer's connection, inside the batch's transaction.
type Tx = deadpool_postgres::ClientWrapper;

/// The batch statements, built once from the call columns.
pub(super) struct BatchSql {
    insert_calls: String,
    update_calls: String,
    lock_calls: String,
    /// Appends a batch's changes to the feed at the next positions of the counter; `$1` is how
    /// many, then one array per change column. The counter moves only while the records follow
    /// this instance's merge settings (the fingerprint's hash, the next parameter; the function
    /// raises otherwise): checked here, after the batch's writes, it sees a recomputation by
    /// another instance that committed while this batch waited for it. COMMIT follows in the
    /// next round trip: the counter's lock is held no longer than that.
    insert_changes: String,
    /// The hash of this instance's merge settings (see `insert_changes`).
    settings_hash: String,
    /// A random name of this instance, in its notifications (see `insert_changes`).
    instance: String,
    /// The zone changes show call times in.
    timezone: jiff::tz::TimeZone,
}

const INSERT_EVENTS: &str = "INSERT INTO events (scope, dedupe_key, event_type, call_id, \
    received_at, last_delivery_at, deliveries, warnings, body) \
    SELECT scope, dedupe_key, event_type, call_id, received_at, last_delivery_at, deliveries, \
    warnings, body FROM UNNEST($1::text[], $2::bytea[], $3::text[], $4::text[], $5::int8[], \
    $6::int8[], $7::int8[], $8::text[], $9::text[]) WITH ORDINALITY AS u(scope, dedupe_key, \
    event_type, call_id, received_at, last_delivery_at, deliveries, warnings, body, n) \
    ORDER BY n ON CONFLICT (scope, dedupe_key) DO NOTHING RETURNING id, scope, dedupe_key";

const COUNT_RESENDS: &str = "UPDATE events AS e SET deliveries = e.deliveries + u.deliveries, \
    last_delivery_at = GREATEST(e.last_delivery_at, u.last_delivery_at) \
    FROM UNNEST($1::text[], $2::bytea[], $3::int8[], $4::int8[]) \
    AS u(scope, dedupe_key, deliveries, last_delivery_at) \
    WHERE e.scope = u.scope AND e.dedupe_key = u.dedupe_key RETURNING e.id, e.scope, e.dedupe_key";

const QUARANTINE: &str = "INSERT INTO rejected (body_hash, reason, detail, received_at, \
    last_delivery_at, body) VALUES ($1, $2, $3, $4, $4, $5) \
    ON CONFLICT (body_hash) DO UPDATE SET deliveries = rejected.deliveries + 1, \
    last_delivery_at = excluded.received_at RETURNING id";

/// A random number, for naming this instance.
fn rand_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // Without randomness, every instance names itself 0: each then ignores the others'
    // notifications and relies on the feed's check once a second.
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

impl BatchSql {
    /// This instance's name in its notifications.
    pub(super) fn instance(&self) -> &str {
        &self.instance
    }

    pub(super) fn new(settings: &MergeSettings) -> Self {
        let finals = &settings.finals;
        // Names and types of the call columns, read off any record.
        let key = SourceKey::new(&EventFields::default(), &[0; 32], finals);
        let sample = CallRecord::from_event("", &EventFields::default(), key, 0);
        let columns: Vec<(&str, &str)> = call_columns(&sample, finals)
            .iter()
            .map(|(name, value)| (*name, array_type(value)))
            .collect();
        let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
        let arrays = |first: usize, types: &mut dyn Iterator<Item = &str>| -> String {
            types
                .enumerate()
                .map(|(i, t)| format!("${}::{t}", first + i))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let insert_calls = format!(
            "INSERT INTO calls ({names}) SELECT {names} FROM UNNEST({arrays}) AS u({names}) \
             ON CONFLICT (call_id) DO NOTHING RETURNING call_id, seq",
            names = names.join(", "),
            arrays = arrays(1, &mut columns.iter().map(|(_, t)| *t)),
        );
        // call_id never changes; the update names the row by seq and the version it expects.
        let updated: Vec<(&str, &str)> = columns
            .iter()
            .copied()
            .filter(|(name, _)| *name != "call_id")
            .collect();
        let update_calls = format!(
            "UPDATE calls AS c SET {sets} FROM UNNEST($1::int8[], $2::int8[], {arrays}) \
             AS u(target_seq, expected_count, {names}) \
             WHERE c.seq = u.target_seq AND c.event_count = u.expected_count RETURNING c.seq",
            sets = updated
                .iter()
                .map(|(name, _)| format!("{name} = u.{name}"))
                .collect::<Vec<_>>()
                .join(", "),
            arrays = arrays(3, &mut updated.iter().map(|(_, t)| *t)),
            names = updated
                .iter()
                .map(|(name, _)| *name)
                .collect::<Vec<_>>()
                .join(", "),
        );
        let lock_calls = format!(
            "SELECT {CALL_COLUMNS} FROM calls WHERE call_id = ANY($1::text[]) \
             ORDER BY call_id FOR UPDATE"
        );
        let change_columns: Vec<(&str, &str)> = change_columns(&NewChange::event(0, 0, ""))
            .iter()
            .map(|(name, value)| (*name, array_type(value)))
            .collect();
        let names = change_columns
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ");
        let after = change_columns.len() + 2;
        let insert_changes = format!(
            "WITH c AS (UPDATE alohook_feed SET last_seq = last_seq + $1 \
             WHERE id AND alohook_merge_settings_are(${after}) RETURNING last_seq) \
             INSERT INTO changes (seq, {names}) \
             SELECT c.last_seq - $1 + u.n, {unnested} \
             FROM c, UNNEST({arrays}) WITH ORDINALITY AS u({names}, n) \
             RETURNING seq",
            unnested = change_columns
                .iter()
                .map(|(name, _)| format!("u.{name}"))
                .collect::<Vec<_>>()
                .join(", "),
            arrays = arrays(2, &mut change_columns.iter().map(|(_, t)| *t)),
        );
        BatchSql {
            insert_calls,
            update_calls,
            lock_calls,
            insert_changes,
            settings_hash: settings.fingerprint_hash(),
            instance: format!("{:016x}", rand_u64()),
            timezone: settings.timezone.clone(),
        }
    }
}

fn array_type(column: &Column) -> &'static str {
    match column {
        Column::Text(_) => "text[]",
        Column::Integer(_) => "int8[]",
    }
}

/// One array parameter: a column's values over the rows of a multi-row statement.
enum ColumnArray {
    Text(Vec<Option<String>>),
    Integer(Vec<Option<i64>>),
}

impl ColumnArray {
    fn push(&mut self, value: Column) {
        match (self, value) {
            (ColumnArray::Text(a), Column::Text(v)) => a.push(v),
            (ColumnArray::Integer(a), Column::Integer(v)) => a.push(v),
            _ => unreachable!("every row of a statement has the same column types"),
        }
    }

    fn sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            ColumnArray::Text(v) => v,
            ColumnArray::Integer(v) => v,
        }
    }
}

/// The call columns of `records`, one array per column, leaving out the column `skip`.
fn column_arrays<'r>(
    records: impl Iterator<Item = &'r CallRecord>,
    finals: &FinalStatuses,
    skip: Option<&str>,
) -> Vec<ColumnArray> {
    let mut arrays: Vec<ColumnArray> = Vec::new();
    for record in records {
        let row: Vec<Column> = call_columns(record, finals)
            .into_iter()
            .filter(|(name, _)| Some(*name) != skip)
            .map(|(_, value)| value)
            .collect();
        if arrays.is_empty() {
            arrays = row
                .iter()
                .map(|value| match value {
                    Column::Text(_) => ColumnArray::Text(Vec::new()),
                    Column::Integer(_) => ColumnArray::Integer(Vec::new()),
                })
                .collect();
        }
        for (array, value) in arrays.iter_mut().zip(row) {
            array.push(value);
        }
    }
    arrays
}

/// The distinct events of a batch: deliveries of one event within a batch are one row.
struct Distinct<'a> {
    event: &'a ParsedEvent,
    /// Batch positions of its deliveries; the first is the one that may be new.
    items: Vec<usize>,
    received_at: i64,
    last_delivery_at: i64,
}

/// A call written by this batch: for the cache once the batch has committed, and for the
/// changes its events make.
pub(super) struct WrittenCall {
    pub call_id: String,
    pub seq: i64,
    /// The record as written.
    pub record: CallRecord,
    /// The record the batch's events were merged into (`None`: the batch created the call).
    base: Option<CallRecord>,
}

/// What a batch wrote, once its transaction is done.
pub(super) struct BatchWritten {
    pub outcomes: Vec<Outcome>,
    pub calls: Vec<WrittenCall>,
    pub changes: Vec<Change>,
}

/// Writes `batch` in `tx`; returns the outcomes in batch order, the calls written and the
/// changes appended to the feed.
pub(super) async fn write_batch(
    tx: &Tx,
    sql: &BatchSql,
    cache: &Mutex<CallCache>,
    settings: &MergeSettings,
    batch: &[Incoming],
) -> Result<BatchWritten, StoreError> {
    let finals = &settings.finals;
    if batch.is_empty() {
        let now = crate::model::time::now_micros().to_string();
        tx.execute(&super::numbered(crate::store::HEARTBEAT), &[&now])
            .await?;
        return Ok(BatchWritten {
            outcomes: Vec::new(),
            calls: Vec::new(),
            changes: Vec::new(),
        });
    }
    let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];

    // Quarantined bodies are rare: a statement each, pipelined with the events.
    let quarantined = try_join_all(batch.iter().enumerate().filter_map(|(i, item)| match item {
        Incoming::Rejected(r) => {
            Some(async move { Ok::<_, StoreError>((i, quarantine(tx, r).await?)) })
        }
        Incoming::Event { .. } => None,
    }));
    let (quarantined, stored) =
        try_join(quarantined, write_events(tx, batch, &mut outcomes)).await?;
    for (i, outcome) in quarantined {
        outcomes[i] = Some(outcome);
    }

    // The new events of each call, oldest first. (The merge is a join, so the record does not
    // depend on their order; a new call's listing position is its first event's.)
    let mut calls: CallEvents = BTreeMap::new();
    let stored_count = stored.len();
    let mut new_changes: Vec<NewChange> = Vec::with_capacity(stored_count);
    for (i, event_id) in stored {
        let Incoming::Event { event, received_at } = &batch[i] else {
            continue;
        };
        match event.merged_call_id() {
            Some(call_id) => calls.entry(call_id).or_default().push(NewEvent {
                event_id,
                fields: &event.fields,
                key: event.source_key(finals),
                received_at: *received_at,
            }),
            None => new_changes.push(NewChange::event(event_id, *received_at, &event.raw)),
        }
    }
    // RETURNING gives no order.
    for events in calls.values_mut() {
        events.sort_unstable_by_key(|e| e.event_id);
    }
    let written = if calls.is_empty() {
        Vec::new()
    } else {
        write_calls(tx, sql, cache, finals, &mut calls).await?
    };
    for call in &written {
        new_changes.extend(call_changes(call, &calls, settings));
    }
    // The callback items of the numbers these calls have, or had.
    let mut phones = std::collections::BTreeMap::new();
    for call in &written {
        crate::store::callbacks::touched(call.base.as_ref(), &call.record, finals, &mut phones);
    }
    // The worklist goes out alongside the summary and the feed: they write different tables,
    // so its statements share their round trips instead of adding their own. Its locks are
    // the first statement sent, so a transaction waiting on one holds no row of the summary
    // or the feed.
    let worklist = super::reports::refresh_callbacks(tx, &phones);
    let summary_and_feed = async {
        // The figures' summary, with the thresholds it holds: read after the calls were
        // written, so that a rebuild (which locks `calls`) is either all before this batch or
        // all after it.
        if !written.is_empty() {
            let (thresholds, folded_until) = super::reports::rollup_state(&**tx).await?;
            let thresholds = thresholds.unwrap_or(settings.thresholds.unwrap_or_default());
            let mut rollup = crate::store::rollup::Deltas::new(&settings.timezone, folded_until);
            let facts = |r: &CallRecord| crate::store::rollup::facts(r, finals);
            for call in &written {
                rollup.record(
                    call.base.as_ref().map(facts).as_ref(),
                    &facts(&call.record),
                    &thresholds,
                );
            }
            super::reports::apply_rollup(tx, rollup, &thresholds).await?;
        }
        // In the order the events were stored, which is the order each call's events were
        // merged.
        new_changes.sort_unstable_by_key(|c| c.event_id);
        if new_changes.len() != stored_count {
            return Err(StoreError::Corrupt(format!(
                "{stored_count} events stored but {} changes made",
                new_changes.len()
            )));
        }
        insert_changes(tx, new_changes, sql).await
    };
    let ((), changes) = try_join(worklist, summary_and_feed).await?;
    let outcomes = outcomes
        .into_iter()
        .map(|o| o.ok_or_else(|| StoreError::Corrupt("a batch item got no outcome".into())))
        .collect::<Result<_, _>>()?;
    Ok(BatchWritten {
        outcomes,
        calls: written,
        changes,
    })
}

/// The change each of a written call's new events makes: the record right after that event,
/// merged into the record the batch started from.
fn call_changes(
    call: &WrittenCall,
    calls: &CallEvents<'_>,
    settings: &MergeSettings,
) -> Vec<NewChange> {
    let Some(events) = calls.get(call.call_id.as_str()) else {
        return Vec::new();
    };
    let mut record = call.base.clone();
    let mut changes = Vec::with_capacity(events.len());
    for e in events {
        let after = match &record {
            Some(r) => {
                let mut r = r.clone();
                r.merge(e.fields, e.key, e.received_at);
                r
            }
            None => CallRecord::from_event(&call.call_id, e.fields, e.key, e.received_at),
        };
        changes.push(call_change(
            e.event_id,
            e.received_at,
            record.as_ref(),
            &after,
            settings,
        ));
        record = Some(after);
    }
    changes
}

/// Appends `changes` to the feed, in their order, at the counter's next positions.
async fn insert_changes(
    tx: &Tx,
    changes: Vec<NewChange>,
    sql: &BatchSql,
) -> Result<Vec<Change>, StoreError> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let mut arrays: Vec<ColumnArray> = Vec::new();
    for change in &changes {
        let row: Vec<Column> = change_columns(change)
            .into_iter()
            .map(|(_, value)| value)
            .collect();
        if arrays.is_empty() {
            arrays = row
                .iter()
                .map(|value| match value {
                    Column::Text(_) => ColumnArray::Text(Vec::with_capacity(changes.len())),
                    Column::Integer(_) => ColumnArray::Integer(Vec::with_capacity(changes.len())),
                })
                .collect();
        }
        for (array, value) in arrays.iter_mut().zip(row) {
            array.push(value);
        }
    }
    let count = changes.len() as i64;
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&count];
    params.extend(arrays.iter().map(ColumnArray::sql));
    params.push(&sql.settings_hash);
    let rows = tx
        .query(&tx.prepare_cached(&sql.insert_changes).await?, &params)
        .await?;
    let first = rows
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .min()
        .filter(|_| rows.len() == changes.len())
        .ok_or_else(|| StoreError::Corrupt("the feed took fewer positions than changes".into()))?;
    Ok(changes
        .into_iter()
        .enumerate()
        .map(|(i, change)| Change::new(first + i as i64, change, &sql.timezone))
        .collect())
}

async fn quarantine(tx: &Tx, r: &RejectedBody) -> Result<Outcome, StoreError> {
    let hash: [u8; 32] = Sha256::digest(&r.body).into();
    let row = tx
        .query_one(
            &tx.prepare_cached(QUARANTINE).await?,
            &[&&hash[..], &r.reason, &r.detail, &r.received_at, &r.body],
        )
        .await?;
    Ok(Outcome::Quarantined { id: row.get(0) })
}

/// Stores the batch's new events and counts its resends; fills their outcomes and returns the
/// batch position and id of every event stored now (not a resend).
async fn write_events(
    tx: &Tx,
    batch: &[Incoming],
    outcomes: &mut [Option<Outcome>],
) -> Result<Vec<(usize, i64)>, StoreError> {
    let mut distinct: Vec<Distinct> = Vec::new();
    let mut position: HashMap<(&str, &[u8]), usize> = HashMap::new();
    for (i, item) in batch.iter().enumerate() {
        let Incoming::Event { event, received_at } = item else {
            continue;
        };
        let key = (event.scope(), &event.dedupe_key[..]);
        match position.get(&key) {
            Some(&d) => {
                let d = &mut distinct[d];
                d.items.push(i);
                d.last_delivery_at = d.last_delivery_at.max(*received_at);
            }
            None => {
                position.insert(key, distinct.len());
                distinct.push(Distinct {
                    event,
                    items: vec![i],
                    received_at: *received_at,
                    last_delivery_at: *received_at,
                });
            }
        }
    }
    if distinct.is_empty() {
        return Ok(Vec::new());
    }
    // By call, then in arrival order: two batches that share calls take their locks in the same
    // order, and the events of one call get ids in the order they came.
    distinct.sort_by(|a, b| (a.event.scope(), a.items[0]).cmp(&(b.event.scope(), b.items[0])));
    let position: HashMap<(&str, &[u8]), usize> = distinct
        .iter()
        .enumerate()
        .map(|(d, e)| ((e.event.scope(), &e.event.dedupe_key[..]), d))
        .collect();

    let scopes: Vec<&str> = distinct.iter().map(|d| d.event.scope()).collect();
    let keys: Vec<&[u8]> = distinct.iter().map(|d| &d.event.dedupe_key[..]).collect();
    let types: Vec<&str> = distinct
        .iter()
        .map(|d| d.event.event_type.as_str())
        .collect();
    let call_ids: Vec<Option<&str>> = distinct.iter().map(|d| d.event.merged_call_id()).collect();
    let received: Vec<i64> = distinct.iter().map(|d| d.received_at).collect();
    let last: Vec<i64> = distinct.iter().map(|d| d.last_delivery_at).collect();
    let deliveries: Vec<i64> = distinct.iter().map(|d| d.items.len() as i64).collect();
    let warnings: Vec<Option<String>> = distinct.iter().map(|d| d.event.warnings_json()).collect();
    let bodies: Vec<&str> = distinct.iter().map(|d| d.event.raw.as_str()).collect();
    let rows = tx
        .query(
            &tx.prepare_cached(INSERT_EVENTS).await?,
            &[
                &scopes,
                &keys,
                &types,
                &call_ids,
                &received,
                &last,
                &deliveries,
                &warnings,
                &bodies,
            ],
        )
        .await?;
    let mut ids: Vec<Option<i64>> = vec![None; distinct.len()];
    let mut stored = Vec::with_capacity(rows.len());
    for row in &rows {
        let d = position[&(row.get::<_, &str>(1), row.get::<_, &[u8]>(2))];
        let id: i64 = row.get(0);
        ids[d] = Some(id);
        let mut items = distinct[d].items.iter();
        if let Some(&first) = items.next() {
            outcomes[first] = Some(Outcome::Stored { event_id: id });
            stored.push((first, id));
        }
        for &i in items {
            outcomes[i] = Some(Outcome::Duplicate { event_id: id });
        }
    }

    // Events stored before this batch: every delivery here is a resend.
    let resent: Vec<usize> = (0..distinct.len()).filter(|&d| ids[d].is_none()).collect();
    if !resent.is_empty() {
        let scopes: Vec<&str> = resent.iter().map(|&d| scopes[d]).collect();
        let keys: Vec<&[u8]> = resent.iter().map(|&d| keys[d]).collect();
        let deliveries: Vec<i64> = resent.iter().map(|&d| deliveries[d]).collect();
        let last: Vec<i64> = resent.iter().map(|&d| last[d]).collect();
        let rows = tx
            .query(
                &tx.prepare_cached(COUNT_RESENDS).await?,
                &[&scopes, &keys, &deliveries, &last],
            )
            .await?;
        for row in &rows {
            let d = position[&(row.get::<_, &str>(1), row.get::<_, &[u8]>(2))];
            let id: i64 = row.get(0);
            for &i in &distinct[d].items {
                outcomes[i] = Some(Outcome::Duplicate { event_id: id });
            }
        }
        if rows.len() != resent.len() {
            // A conflicting row that is not there: another writer's insert was rolled back
            // between the two statements. Running the batch again inserts it.
            return Err(StoreError::Retry(
                "a resent event's row vanished during the batch".into(),
            ));
        }
    }
    Ok(stored)
}

/// A call this batch updates: its row, the `event_count` the row must still have, the record
/// before and after the batch's events.
struct Update<'a> {
    call_id: &'a str,
    seq: i64,
    expected_count: i64,
    base: CallRecord,
    record: CallRecord,
}

/// An event of this batch to merge into its call.
struct NewEvent<'a> {
    event_id: i64,
    fields: &'a EventFields,
    key: SourceKey,
    received_at: i64,
}

type CallEvents<'a> = BTreeMap<&'a str, Vec<NewEvent<'a>>>;

/// Merges a call's new events into `record`.
fn merge_new(record: &mut CallRecord, events: &[NewEvent<'_>]) {
    for e in events {
        record.merge(e.fields, e.key, e.received_at);
    }
}

async fn write_calls<'a>(
    tx: &Tx,
    sql: &BatchSql,
    cache: &Mutex<CallCache>,
    finals: &FinalStatuses,
    calls: &mut CallEvents<'a>,
) -> Result<Vec<WrittenCall>, StoreError> {
    let mut inserts: Vec<(&str, CallRecord)> = Vec::new();
    let mut updates: Vec<Update> = Vec::new();
    {
        let mut cache = cache.lock().map_err(|_| StoreError::Closed)?;
        for (&call_id, events) in calls.iter() {
            match cache.take(call_id) {
                Some((seq, base)) => {
                    let expected_count = base.event_count;
                    let mut record = base.clone();
                    merge_new(&mut record, events);
                    updates.push(Update {
                        call_id,
                        seq,
                        expected_count,
                        base,
                        record,
                    });
                }
                None => {
                    let (first, rest) = events.split_first().expect("a call has events");
                    let mut record =
                        CallRecord::from_event(call_id, first.fields, first.key, first.received_at);
                    merge_new(&mut record, rest);
                    inserts.push((call_id, record));
                }
            }
        }
    }

    let (inserted, updated) = try_join(
        insert_calls(tx, sql, finals, &inserts),
        update_calls(tx, sql, finals, &updates),
    )
    .await?;
    let mut written: Vec<WrittenCall> = Vec::with_capacity(calls.len());
    let mut missed: Vec<&str> = Vec::new();
    for (call_id, record) in inserts {
        match inserted.get(call_id) {
            Some(&seq) => written.push(WrittenCall {
                call_id: call_id.to_string(),
                seq,
                record,
                base: None,
            }),
            None => missed.push(call_id),
        }
    }
    for u in updates {
        if updated.contains(&u.seq) {
            written.push(u.written());
        } else {
            missed.push(u.call_id);
        }
    }
    if missed.is_empty() {
        return Ok(written);
    }

    // The calls that existed or changed since cached: lock them, merge into what they hold now.
    missed.sort_unstable();
    let rows = tx
        .query(&tx.prepare_cached(&sql.lock_calls).await?, &[&missed])
        .await?;
    let mut merged: Vec<Update> = Vec::with_capacity(rows.len());
    for row in &rows {
        let (seq, stored) = read_call_row(row)?;
        let base = stored.record;
        let call_id = base.fields.call_id.clone().unwrap_or_default();
        let Some((&call_id, events)) = calls.get_key_value(call_id.as_str()) else {
            return Err(StoreError::Corrupt(format!(
                "locked call {call_id:?} that the batch did not ask for"
            )));
        };
        let expected_count = base.event_count;
        let mut record = base.clone();
        merge_new(&mut record, events);
        merged.push(Update {
            call_id,
            seq,
            expected_count,
            base,
            record,
        });
    }
    let updated = update_calls(tx, sql, finals, &merged).await?;
    if rows.len() != missed.len() || updated.len() != merged.len() {
        // Locked rows cannot change; a call missing here was inserted by a transaction that
        // then rolled back. Running the batch again inserts it.
        return Err(StoreError::Retry(
            "a call changed while the batch held its lock".into(),
        ));
    }
    written.extend(merged.into_iter().map(Update::written));
    Ok(written)
}

impl Update<'_> {
    fn written(self) -> WrittenCall {
        WrittenCall {
            call_id: self.call_id.to_string(),
            seq: self.seq,
            record: self.record,
            base: Some(self.base),
        }
    }
}

/// Inserts new calls; returns the `seq` of each one inserted (not of those that existed).
async fn insert_calls(
    tx: &Tx,
    sql: &BatchSql,
    finals: &FinalStatuses,
    inserts: &[(&str, CallRecord)],
) -> Result<HashMap<String, i64>, StoreError> {
    if inserts.is_empty() {
        return Ok(HashMap::new());
    }
    let arrays = column_arrays(inserts.iter().map(|(_, r)| r), finals, None);
    let params: Vec<&(dyn ToSql + Sync)> = arrays.iter().map(ColumnArray::sql).collect();
    let rows = tx
        .query(&tx.prepare_cached(&sql.insert_calls).await?, &params)
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Updates calls whose `event_count` is still the expected one; returns the `seq`s updated.
async fn update_calls(
    tx: &Tx,
    sql: &BatchSql,
    finals: &FinalStatuses,
    updates: &[Update<'_>],
) -> Result<HashSet<i64>, StoreError> {
    if updates.is_empty() {
        return Ok(HashSet::new());
    }
    let seqs: Vec<i64> = updates.iter().map(|u| u.seq).collect();
    let expected: Vec<i64> = updates.iter().map(|u| u.expected_count).collect();
    let arrays = column_arrays(updates.iter().map(|u| &u.record), finals, Some("call_id"));
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&seqs, &expected];
    params.extend(arrays.iter().map(ColumnArray::sql));
    let rows = tx
        .query(&tx.prepare_cached(&sql.update_calls).await?, &params)
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
