//! The figures' reads on SQLite.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params_from_iter};

use super::{SqliteStore, query_rows, sql_value};
use crate::report::callbacks::{Item, ManualClose, NumberCall, worklist};
use crate::report::stats::StatsBuilder;
use crate::store::callbacks::{
    ALL_CLOSES, ALL_NUMBER_CALLS, CALLBACKS_BUILT_KEY, CallbackCursor, CallbackFilter,
    CallbackPage, DELETE_ITEM, INSERT_CLOSE, INSERT_HOTLINE, ITEM_BY_ID, MARK_CALLBACKS_BUILT,
    NUMBER_CALLS, NUMBER_CLOSES, NUMBER_ITEMS, Refresh, UPSERT_ITEM, list_query, page, parse_item,
    read_close, read_number_call, upsert_args,
};
use crate::store::reports::{Reports, dated_facts_query, read_call_facts, undated_count_query};
use crate::store::{CallFilter, RowColumns, StoreError};

#[async_trait]
impl Reports for SqliteStore {
    async fn stats(
        &self,
        filter: &CallFilter,
        mut stats: StatsBuilder,
    ) -> Result<StatsBuilder, StoreError> {
        let dated = dated_facts_query(filter);
        let undated = undated_count_query(filter);
        self.blocking(move |inner| {
            inner.with_reader(|conn| {
                // One snapshot for both counts.
                let tx = conn.unchecked_transaction()?;
                let mut stmt = tx.prepare_cached(&dated.sql)?;
                let mut rows =
                    stmt.query(params_from_iter(dated.args.into_iter().map(sql_value)))?;
                while let Some(row) = rows.next()? {
                    stats.add(&read_call_facts(row)?);
                }
                let n: i64 = tx.prepare_cached(&undated.sql)?.query_row(
                    params_from_iter(undated.args.into_iter().map(sql_value)),
                    |r| r.get(0),
                )?;
                stats.add_undated(n as u64);
                Ok(stats)
            })
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
        self.blocking(move |inner| {
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
                    .execute(rusqlite::params![item.phone, id, at, note])?;
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
    for id in &refresh.delete {
        for sql in DELETE_ITEM {
            conn.prepare_cached(sql)?.execute([id])?;
        }
    }
    for item in &refresh.upsert {
        write_item(conn, item)?;
    }
    Ok(())
}

fn write_item(conn: &Connection, item: &Item) -> Result<(), StoreError> {
    conn.prepare_cached(UPSERT_ITEM)?.execute(params_from_iter(
        upsert_args(item).into_iter().map(sql_value),
    ))?;
    conn.prepare_cached(DELETE_ITEM[0])?.execute([&item.id])?;
    for hotline in &item.hotlines {
        conn.prepare_cached(INSERT_HOTLINE)?
            .execute([hotline, &item.id])?;
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
            write_item(conn, &item)?;
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
