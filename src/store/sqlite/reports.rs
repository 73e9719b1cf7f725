//! The figures' reads on SQLite.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params_from_iter};

use super::{SqliteStore, query_rows, sql_value};
use crate::report::callbacks::{Item, ManualClose, NumberCall, worklist};
use crate::report::stats::{StatsBuilder, Thresholds};
use crate::store::callbacks::{
    ALL_CLOSES, ALL_NUMBER_CALLS, CALLBACKS_BUILT_KEY, CallbackCursor, CallbackFilter,
    CallbackPage, DELETE_HOTLINE, DELETE_ITEM, HotlineRow, INSERT_CLOSE, INSERT_HOTLINE,
    ITEM_BY_ID, MARK_CALLBACKS_BUILT, NUMBER_CALLS, NUMBER_CLOSES, NUMBER_ITEMS, Refresh,
    UPDATE_ITEM_BODY, UPSERT_ITEM, list_query, page, parse_item, read_close, read_number_call,
    upsert_args,
};
use crate::store::reports::{
    FACTS_CHUNK, Reports, dated_facts_chunk, dated_facts_query, read_call_facts,
    undated_count_query,
};
use crate::store::rollup::{self, Deltas, NotSummarised, ROLLUP_KEY};
use crate::store::{CallFilter, RowColumns, StoreError};

#[async_trait]
impl Reports for SqliteStore {
    async fn stats(
        &self,
        filter: &CallFilter,
        stats: StatsBuilder,
    ) -> Result<StatsBuilder, StoreError> {
        let filter = filter.clone();
        // The summary answers when it holds the thresholds asked for.
        let summary = self.inner.rollup == Some(stats.thresholds());
        self.reading(move |inner| {
            if summary && let Ok(summed) = summarised(inner, &filter, stats.clone())? {
                return Ok(summed);
            }
            stats_in_chunks(inner, &filter, stats, FACTS_CHUNK, true)
        })
        .await
    }

    async fn callbacks(
        &self,
        filter: &CallbackFilter,
        limit: usize,
        cursor: Option<CallbackCursor>,
    ) -> Result<CallbackPage, StoreError> {
        let query = list_query(filter, cursor.as_ref(), limit);
        self.reading(move |inner| {
            inner.with_reader(|conn| {
                let items = query_rows(
                    conn,
                    &query.sql,
                    params_from_iter(query.args.into_iter().map(sql_value)),
                    |r| parse_item(&r.required_text(0)?),
                )?;
                Ok(page(items, limit))
            })
        })
        .await
    }

    async fn close_callback(
        &self,
        id: &str,
        note: Option<String>,
        by: Option<String>,
        at: i64,
    ) -> Result<Option<Item>, StoreError> {
        let id = id.to_string();
        self.blocking(move |inner| {
            inner.write(|tx| {
                let item_by_id = |tx: &Connection| -> Result<Option<Item>, StoreError> {
                    tx.prepare_cached(ITEM_BY_ID)?
                        .query_row([&id], |r| r.get::<_, String>(0))
                        .optional()?
                        .map(|body| parse_item(&body))
                        .transpose()
                };
                let Some(item) = item_by_id(tx)? else {
                    return Ok(None);
                };
                if !item.open {
                    return Ok(Some(item));
                }
                // Not before the item's last miss, whatever the clocks say (see close_at).
                let at = crate::store::callbacks::close_at(&item, at);
                tx.prepare_cached(INSERT_CLOSE)?
                    .execute(rusqlite::params![item.phone, id, at, note, by])?;
                refresh_callbacks(tx, &BTreeMap::from([(item.phone.clone(), true)]))?;
                Ok(item_by_id(tx)?.or(Some(item)))
            })
        })
        .await
    }
}

/// Recomputes the callback items of `phones` (normal forms, each with whether a miss is
/// involved) from their calls, in `conn`'s transaction, writing only what changed.
pub(super) fn refresh_callbacks(
    conn: &Connection,
    phones: &BTreeMap<String, bool>,
) -> Result<(), StoreError> {
    for (phone, miss) in phones {
        if phone.trim().is_empty() {
            continue;
        }
        let stored = query_rows(conn, NUMBER_ITEMS, [phone], |r| {
            Ok((r.required_text(0)?, r.required_text(1)?))
        })?;
        if stored.is_empty() && !miss {
            // Without a miss, a number with no items keeps none.
            continue;
        }
        let calls = query_rows(conn, NUMBER_CALLS, [phone], |r| {
            read_number_call(r).map(|(_, c)| c)
        })?;
        let closes = query_rows(conn, NUMBER_CLOSES, [phone], |r| {
            read_close(r).map(|(_, c)| c)
        })?;
        let mut refresh = Refresh::default();
        refresh.plan(phone, &calls, &closes, &stored);
        write_refresh(conn, &refresh)?;
    }
    Ok(())
}

fn write_refresh(conn: &Connection, refresh: &Refresh) -> Result<(), StoreError> {
    for id in &refresh.clear_hotlines {
        conn.prepare_cached(DELETE_ITEM[0])?.execute([id])?;
    }
    for id in &refresh.delete {
        conn.prepare_cached(DELETE_ITEM[1])?.execute([id])?;
    }
    for row in &refresh.remove_hotlines {
        conn.prepare_cached(DELETE_HOTLINE)?
            .execute(params_from_iter(row.args().into_iter().map(sql_value)))?;
    }
    for item in &refresh.upsert {
        conn.prepare_cached(UPSERT_ITEM)?.execute(params_from_iter(
            upsert_args(item).into_iter().map(sql_value),
        ))?;
    }
    for item in &refresh.rewrite_body {
        let body = serde_json::to_string(item).expect("an item serialises");
        conn.prepare_cached(UPDATE_ITEM_BODY)?
            .execute([&body, &item.id])?;
    }
    for row in &refresh.add_hotlines {
        conn.prepare_cached(INSERT_HOTLINE)?
            .execute(params_from_iter(row.args().into_iter().map(sql_value)))?;
    }
    Ok(())
}

/// Writes a new item and its hotlines (rebuilding: the tables were emptied first).
fn write_new_item(conn: &Connection, item: &Item) -> Result<(), StoreError> {
    conn.prepare_cached(UPSERT_ITEM)?.execute(params_from_iter(
        upsert_args(item).into_iter().map(sql_value),
    ))?;
    for row in HotlineRow::of(item) {
        conn.prepare_cached(INSERT_HOTLINE)?
            .execute(params_from_iter(row.args().into_iter().map(sql_value)))?;
    }
    Ok(())
}

/// Builds the worklist from the stored calls if it has never been (a store that had calls
/// before the worklist existed).
pub(super) fn build_callbacks_if_missing(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let built = tx
        .query_row(
            "SELECT 1 FROM alohook_meta WHERE key = ?1",
            [CALLBACKS_BUILT_KEY],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !built {
        let started = std::time::Instant::now();
        let items = rebuild_callbacks(&tx)?;
        tx.execute(MARK_CALLBACKS_BUILT, [])?;
        tracing::info!(
            items,
            seconds = started.elapsed().as_secs_f64(),
            "callback worklist built from the stored calls"
        );
    }
    tx.commit()?;
    Ok(())
}

/// Builds the whole worklist again from every call (after the call records were recomputed, or
/// the worklist was added to a store that had calls). Returns how many items it wrote.
pub(super) fn rebuild_callbacks(conn: &Connection) -> Result<usize, StoreError> {
    conn.execute_batch("DELETE FROM callback_hotlines; DELETE FROM callbacks;")?;
    let mut closes: HashMap<String, Vec<ManualClose>> = HashMap::new();
    for (phone, close) in query_rows(conn, ALL_CLOSES, [], |r| read_close(r))? {
        closes.entry(phone).or_default().push(close);
    }
    let mut written = 0;
    let mut flush = |phone: &str, calls: &mut Vec<NumberCall>| -> Result<(), StoreError> {
        let closes = closes.get(phone).map(Vec::as_slice).unwrap_or_default();
        for item in worklist(phone, calls, closes) {
            write_new_item(conn, &item)?;
            written += 1;
        }
        calls.clear();
        Ok(())
    };
    let mut stmt = conn.prepare(ALL_NUMBER_CALLS)?;
    let mut rows = stmt.query([])?;
    let mut current = String::new();
    let mut calls = Vec::new();
    while let Some(row) = rows.next()? {
        let (phone, call) = read_number_call(row)?;
        if phone != current {
            flush(&current, &mut calls)?;
            current = phone;
        }
        calls.push(call);
    }
    flush(&current, &mut calls)?;
    Ok(written)
}

/// The figures of `filter` counted into `stats`, the dated calls `chunk` rows per statement
/// (see [`dated_facts_chunk`]).
pub(super) fn stats_in_chunks(
    inner: &super::Inner,
    filter: &CallFilter,
    mut stats: StatsBuilder,
    chunk: usize,
    count_undated: bool,
) -> Result<StatsBuilder, StoreError> {
    let undated = undated_count_query(filter);
    let mut after = None;
    loop {
        let statement = dated_facts_chunk(filter, after, chunk);
        let (read, last) = inner.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&statement.sql)?;
            let mut rows =
                stmt.query(params_from_iter(statement.args.into_iter().map(sql_value)))?;
            let (mut read, mut last) = (0usize, None);
            while let Some(row) = rows.next()? {
                let facts = read_call_facts(row)?;
                if let Some(start) = facts.start_time {
                    last = Some((start, row.required_integer(10)?));
                }
                stats.add(&facts);
                read += 1;
            }
            Ok((read, last))
        })?;
        if read < chunk {
            break;
        }
        after = last;
    }
    if !count_undated {
        return Ok(stats);
    }
    let n: i64 = inner.with_reader(|conn| {
        Ok(conn.prepare_cached(&undated.sql)?.query_row(
            params_from_iter(undated.args.into_iter().map(sql_value)),
            |r| r.get(0),
        )?)
    })?;
    stats.add_undated(n as u64);
    Ok(stats)
}

/// The figures from the summary: its whole hours, the range's ends from the calls, a dirty
/// row's longest wait from its hour's calls; all in one read transaction, so that a call is
/// counted once even while it moves. `Ok(Err(NotSummarised))` when the summary cannot answer.
fn summarised(
    inner: &super::Inner,
    filter: &CallFilter,
    mut stats: StatsBuilder,
) -> Result<Result<StatsBuilder, NotSummarised>, StoreError> {
    inner.with_reader(|conn| {
        let tx = conn.unchecked_transaction()?;
        // The folded days in this read's snapshot, when they are days of the zone asked for.
        let folded = folded_until(&tx)?.filter(|_| inner.settings.timezone == *stats.time_zone());
        let Some(plan) = rollup::plan(filter, stats.group_by(), stats.time_zone(), folded) else {
            return Ok(Err(NotSummarised));
        };
        let plan = &plan;
        let facts = |f: &CallFilter| -> Result<Vec<_>, StoreError> {
            let q = dated_facts_query(f);
            query_rows(
                &tx,
                &q.sql,
                params_from_iter(q.args.into_iter().map(sql_value)),
                |r| read_call_facts(r),
            )
        };
        let group_by = stats.group_by();
        let query = rollup::groups_query(plan, group_by);
        let groups = query_rows(
            &tx,
            &query.sql,
            params_from_iter(query.args.into_iter().map(sql_value)),
            |r| rollup::read_group(r, group_by),
        )?;
        let dirty = rollup::dirty_query(plan);
        let dirty = query_rows(
            &tx,
            &dirty.sql,
            params_from_iter(dirty.args.into_iter().map(sql_value)),
            |r| rollup::read_key(r),
        )?;
        // (None after a write: it cleans the rows it leaves dirty.)
        let (coarse, dirty): (Vec<_>, Vec<_>) =
            dirty.into_iter().partition(|k| rollup::is_coarse(k.kind));
        let mut waits = Vec::new();
        for (bucket, keys) in rollup::by_bucket(dirty) {
            let calls = facts(&rollup::hour_filter(&CallFilter::default(), bucket))?;
            rollup::exact_waits(&keys, &calls, &stats.thresholds(), &mut waits);
        }
        for key in coarse {
            if let Some(q) = rollup::coarse_wait_query(&key, &inner.settings.timezone) {
                let wait: Option<i64> = tx
                    .prepare_cached(&q.sql)?
                    .query_row(params_from_iter(q.args.into_iter().map(sql_value)), |r| {
                        r.get(0)
                    })?;
                waits.push((key, wait));
            }
        }
        if (filter.from.is_none() || filter.to.is_none())
            && let Some((first_bucket, last_bucket)) = rollup::extreme_buckets(&groups)
        {
            let starts = |bucket| -> Result<Vec<i64>, StoreError> {
                Ok(facts(&rollup::hour_filter(filter, bucket))?
                    .iter()
                    .filter_map(|c| c.start_time)
                    .collect())
            };
            let (firsts, lasts) = (starts(first_bucket)?, starts(last_bucket)?);
            if let (Some(first), Some(last)) = (firsts.iter().min(), lasts.iter().max()) {
                stats.include_range(*first, *last);
            }
        }
        if let Err(e) = rollup::add_groups(&mut stats, groups, waits)? {
            return Ok(Err(e));
        }
        for edge in plan.edge_filters(filter) {
            for call in facts(&edge)? {
                stats.add(&call);
            }
        }
        let undated = rollup::undated_query(plan);
        let n: i64 = tx.prepare_cached(&undated.sql)?.query_row(
            params_from_iter(undated.args.into_iter().map(sql_value)),
            |r| r.get(0),
        )?;
        stats.add_undated(u64::try_from(n).unwrap_or(0));
        Ok(Ok(stats))
    })
}

/// Writes a batch's changes to the figures' summary, in its transaction.
/// A row the batch left dirty (a call that held its longest wait left it or changed) gets its
/// exact longest wait from its hour's calls at once, so that reads find every row clean.
pub(super) fn apply_rollup(
    conn: &Connection,
    deltas: Deltas,
    thresholds: &Thresholds,
) -> Result<(), StoreError> {
    let (rows, zone) = deltas.split();
    if rows.is_empty() {
        return Ok(());
    }
    let sql = format!("{} RETURNING dirty", upsert_sql());
    let mut dirty = Vec::new();
    {
        let mut stmt = conn.prepare_cached(&sql)?;
        for (key, delta) in rows {
            let now_dirty: i64 = stmt.query_row(
                params_from_iter(rollup::row_values(&key, &delta).into_iter().map(sql_value)),
                |r| r.get(0),
            )?;
            if now_dirty != 0 {
                dirty.push(key);
            }
        }
    }
    // The rows by hour first, from their calls; then the coarse ones, from those.
    let (coarse, dirty): (Vec<_>, Vec<_>) =
        dirty.into_iter().partition(|k| rollup::is_coarse(k.kind));
    let mut clean = conn.prepare_cached(rollup::CLEAN_ROW)?;
    for (bucket, keys) in rollup::by_bucket(dirty) {
        let hour = dated_facts_query(&rollup::hour_filter(&CallFilter::default(), bucket));
        let calls = query_rows(
            conn,
            &hour.sql,
            params_from_iter(hour.args.into_iter().map(sql_value)),
            |r| read_call_facts(r),
        )?;
        let mut waits = Vec::new();
        rollup::exact_waits(&keys, &calls, thresholds, &mut waits);
        for (key, wait) in waits {
            clean.execute(params_from_iter(
                rollup::clean_args(&key, wait).into_iter().map(sql_value),
            ))?;
        }
    }
    for key in coarse {
        if let Some(q) = rollup::coarse_wait_query(&key, &zone) {
            let wait: Option<i64> = conn
                .prepare_cached(&q.sql)?
                .query_row(params_from_iter(q.args.into_iter().map(sql_value)), |r| {
                    r.get(0)
                })?;
            clean.execute(params_from_iter(
                rollup::clean_args(&key, wait).into_iter().map(sql_value),
            ))?;
        }
    }
    Ok(())
}

fn upsert_sql() -> String {
    let n = rollup::all_columns().split(", ").count();
    format!(
        "INSERT INTO call_rollup ({}) VALUES ({}) {}",
        rollup::all_columns(),
        vec!["?"; n].join(", "),
        rollup::upsert_tail()
    )
}

/// The start of the first day the figures' summary has no rows by day for (see store::rollup).
pub(super) fn folded_until(conn: &Connection) -> Result<Option<i64>, StoreError> {
    let value: Option<String> = conn
        .query_row(
            "SELECT value FROM alohook_meta WHERE key = ?1",
            [rollup::DAYS_KEY],
            |r| r.get(0),
        )
        .optional()?;
    Ok(rollup::parse_days(value.as_deref()))
}

/// Folds the days from `folded` (`None`: the first with calls) to `until` into the summary's
/// rows by day, in one transaction.
pub(super) fn fold_days(
    conn: &mut Connection,
    zone: &jiff::tz::TimeZone,
    folded: Option<i64>,
    until: i64,
) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let from = match folded {
        Some(from) => from,
        None => tx
            .query_row(rollup::FIRST_HOUR, [rollup::UNDATED], |r| {
                r.get::<_, Option<i64>>(0)
            })?
            .unwrap_or(until)
            .min(until),
    };
    let started = std::time::Instant::now();
    for statement in rollup::fold_days(zone, from, until, rollup::UPSERT_META) {
        tx.prepare_cached(&statement.sql)?
            .execute(params_from_iter(statement.args.into_iter().map(sql_value)))?;
    }
    tx.commit()?;
    tracing::info!(
        from,
        until,
        seconds = started.elapsed().as_secs_f64(),
        "figures' summary: past days folded into rows by day"
    );
    Ok(())
}

/// The thresholds the figures' summary holds, if it was built.
pub(super) fn stored_rollup(conn: &Connection) -> Result<Option<Thresholds>, StoreError> {
    let stored: Option<String> = conn
        .query_row(
            "SELECT value FROM alohook_meta WHERE key = ?1",
            [ROLLUP_KEY],
            |r| r.get(0),
        )
        .optional()?;
    Ok(stored.as_deref().and_then(rollup::parse_settings))
}

/// Builds the figures' summary from the stored calls when it was never built, or built with
/// thresholds other than the command's (a command without them keeps the summary's). Answers
/// the thresholds the summary holds (`None`: a command that only reads found none).
pub(super) fn build_rollup_if_stale(
    conn: &mut Connection,
    settings: &crate::store::MergeSettings,
) -> Result<Option<Thresholds>, StoreError> {
    let stored = stored_rollup(conn)?;
    let thresholds = match (settings.thresholds, stored) {
        (Some(t), _) => t,
        (None, Some(held)) => return Ok(Some(held)),
        (None, None) => Thresholds::default(),
    };
    if stored == Some(thresholds) {
        return Ok(stored);
    }
    if settings.read_only {
        return Ok(stored);
    }
    let wanted = rollup::settings_value(&thresholds);
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let started = std::time::Instant::now();
    let rows = rebuild_rollup(&tx, &thresholds, &settings.timezone)?;
    tx.commit()?;
    tracing::info!(
        rows,
        seconds = started.elapsed().as_secs_f64(),
        thresholds = wanted,
        "figures' summary built from the stored calls"
    );
    Ok(Some(thresholds))
}

/// Builds the whole summary again from every call, with `thresholds`, in the caller's
/// transaction. Returns how many rows it wrote.
pub(super) fn rebuild_rollup(
    conn: &Connection,
    thresholds: &crate::report::stats::Thresholds,
    zone: &jiff::tz::TimeZone,
) -> Result<usize, StoreError> {
    conn.execute("DELETE FROM call_rollup", [])?;
    // The days before today get rows by day at once; today's are folded tomorrow.
    let today = rollup::fold_due(zone, crate::model::time::now_micros() / 1_000_000, None);
    let mut deltas = Deltas::new(zone, today);
    let mut stmt = conn.prepare(&crate::store::reports::all_facts_sql())?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        deltas.record(None, &read_call_facts(row)?, thresholds);
    }
    let written = deltas.rows.len();
    apply_rollup(conn, deltas, thresholds)?;
    conn.execute(
        rollup::UPSERT_META,
        [ROLLUP_KEY, &rollup::settings_value(thresholds)],
    )?;
    match today {
        Some(today) => conn.execute(rollup::UPSERT_META, [rollup::DAYS_KEY, &today.to_string()])?,
        None => conn.execute(
            "DELETE FROM alohook_meta WHERE key = ?1",
            [rollup::DAYS_KEY],
        )?,
    };
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_body;
    use crate::report::stats::{GroupBy, Thresholds};
    use crate::store::{Incoming, MergeSettings, Store};

    /// Counting the dated calls a few rows per statement gives what one statement gives, calls
    /// that share a start time included (the chunks continue after a (start time, seq)).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stats_in_small_chunks_equal_stats_in_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("a.db"), MergeSettings::default()).unwrap();
        let tz = jiff::tz::TimeZone::get("Asia/Ho_Chi_Minh").unwrap();
        let mut batch = Vec::new();
        for i in 0..40 {
            let status = ["answered", "missed", "busy"][i % 3];
            let direction = ["inbound", "outbound"][i % 2];
            let user = ["an", "binh", ""][i % 3];
            let body = serde_json::json!({
                "call_id": format!("C{i}"),
                "call_status": status,
                "direction": direction,
                "caller_number": "0901000001",
                "destination_number": "101",
                "userName": user,
                "hotline": "1900",
                // Seven calls share each start time.
                "starttime": format!("2025-11-2{} 09:00:00", i / 7),
                "answertime": if i % 3 == 0 { format!("2025-11-2{} 09:00:09", i / 7) } else { String::new() },
                "endtime": format!("2025-11-2{} 09:05:00", i / 7),
                "eventType": "call",
            });
            let event = parse_body(body.to_string().as_bytes(), &tz).unwrap();
            batch.push(Incoming::Event {
                event: Box::new(event),
                received_at: i as i64,
            });
        }
        store.commit(batch).await.unwrap();
        for group_by in [GroupBy::None, GroupBy::Agent, GroupBy::Day] {
            let filters = [
                CallFilter::default(),
                CallFilter {
                    direction: Some("inbound".into()),
                    ..Default::default()
                },
                CallFilter {
                    from: Some(1_764_000_000),
                    ..Default::default()
                },
            ];
            for filter in filters {
                let counted = |chunk: usize| {
                    let (inner, filter, tz) = (store.inner.clone(), filter.clone(), tz.clone());
                    let builder = StatsBuilder::new(group_by, Thresholds::default(), tz);
                    let stats = stats_in_chunks(&inner, &filter, builder, chunk, true).unwrap();
                    (stats.undated(), stats.finish(None, None).unwrap())
                };
                let whole = counted(1_000);
                assert!(whole.1.iter().any(|g| g.calls > 0), "{filter:?}");
                for chunk in [1, 2, 3, 7, 8] {
                    assert_eq!(
                        counted(chunk),
                        whole,
                        "{group_by:?} {filter:?} chunk {chunk}"
                    );
                }
            }
        }
    }
}
