//! The figures' reads on PostgreSQL.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use futures_util::TryStreamExt;
use tokio_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use super::{PgStore, numbered, sql_param};
use crate::report::callbacks::{Item, ManualClose, NumberCall, worklist};
use crate::report::stats::StatsBuilder;
use crate::store::callbacks::{
    ALL_CLOSES, ALL_NUMBER_CALLS, CALLBACKS_BUILT_KEY, CallbackCursor, CallbackFilter,
    CallbackPage, HotlineRow, INSERT_CLOSE, ITEM_BY_ID, MARK_CALLBACKS_BUILT, Refresh, list_query,
    page, parse_item, read_close, read_number_call,
};
use crate::store::reports::{
    Reports, all_facts_sql, dated_facts_query, read_call_facts, undated_count_query,
};
use crate::store::rollup::{self, Deltas, NotSummarised, Plan, ROLLUP_KEY};
use crate::store::{CallFilter, StoreError};

#[async_trait]
impl Reports for PgStore {
    async fn stats(
        &self,
        filter: &CallFilter,
        mut stats: StatsBuilder,
    ) -> Result<StatsBuilder, StoreError> {
        let days = self.settings.timezone == *stats.time_zone();
        let (group_by, tz) = (stats.group_by(), stats.time_zone().clone());
        let summary = rollup::plan(filter, group_by, &tz, None).is_some();
        let zone = &self.settings.timezone;
        let wanted = rollup::settings_value(&stats.thresholds());
        self.read(async |client| {
            // The summary answers when it can, and holds this instance's thresholds.
            if summary {
                // One snapshot for the summary, the calls read beside it, and its settings: a
                // call moving meanwhile is counted once. (A read abandoned inside it loses its
                // connection, see Checkout.)
                client
                    .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?;
                let (settings, folded) = rollup_meta(&***client).await?;
                // With the days folded in this snapshot, when they are days of the zone asked for.
                let plan = rollup::plan(filter, group_by, &tz, folded.filter(|_| days));
                let summed = match plan {
                    Some(plan) if settings.as_deref() == Some(wanted.as_str()) => {
                        summarised(&***client, filter, &plan, zone, stats.clone()).await?
                    }
                    _ => Err(NotSummarised),
                };
                client.batch_execute("COMMIT").await?;
                if let Ok(summed) = summed {
                    return Ok(summed);
                }
            }
            scan_dated(&***client, filter, &mut stats).await?;
            let undated = undated_count_query(filter);
            let params: Vec<&(dyn ToSql + Sync)> = undated.args.iter().map(sql_param).collect();
            let n: i64 = client
                .query_one(&numbered(&undated.sql), &params)
                .await?
                .try_get(0)?;
            stats.add_undated(n as u64);
            Ok(stats)
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
        let sql = numbered(&query.sql);
        self.read(async |client| {
            let params: Vec<&(dyn ToSql + Sync)> = query.args.iter().map(sql_param).collect();
            let items = client
                .query(&sql, &params)
                .await?
                .iter()
                .map(|row| parse_item(&row.try_get::<_, String>(0)?))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(page(items, limit))
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
        let (by_id, insert) = (numbered(ITEM_BY_ID), numbered(INSERT_CLOSE));
        self.transaction(async |client| {
            let item_by_id = async || -> Result<Option<Item>, StoreError> {
                client
                    .query_opt(&by_id, &[&id])
                    .await?
                    .map(|row| parse_item(&row.try_get::<_, String>(0)?))
                    .transpose()
            };
            let Some(item) = item_by_id().await? else {
                return Ok(None);
            };
            // The number's lock first, then the item again: it may have changed meanwhile.
            client
                .query(LOCK_NUMBERS, &[&vec![item.phone.as_str()]])
                .await?;
            let Some(item) = item_by_id().await? else {
                return Ok(None);
            };
            if !item.open {
                return Ok(Some(item));
            }
            // Not before the item's last miss, whatever the clocks say (see close_at).
            let at = crate::store::callbacks::close_at(&item, at);
            client
                .execute(&insert, &[&item.phone, &id, &at, &note, &by])
                .await?;
            refresh_callbacks(&**client, &BTreeMap::from([(item.phone.clone(), true)])).await?;
            Ok(item_by_id().await?.or(Some(item)))
        })
        .await
    }
}

/// Takes the locks of `phones` (sorted, so that two transactions never wait on each other):
/// one number's items are recomputed by one transaction at a time, and each sees the calls the
/// one before committed.
const LOCK_NUMBERS: &str = "SELECT pg_advisory_xact_lock(k) FROM \
    (SELECT DISTINCT hashtextextended(p, 8011) AS k FROM unnest($1::text[]) AS p ORDER BY 1) s";
/// The calls of the numbers `$1` that either have a miss involved (`$2`) or have items: without
/// a miss, a number with no items keeps none, and its calls need not be read. (The items are
/// read in the same round trip, so this cannot wait for them to say which numbers have some.)
const NUMBERS_CALLS: &str = concat!(
    "SELECT call_id, caller_number, direction, phase, call_status, hotline, start_time, \
     answer_time, caller_norm FROM calls",
    // The numbers with items, as an array computed once from the index by phone: an EXISTS
    // under the OR is planned as a hashed subplan reading the whole worklist.
    " WHERE caller_norm = ANY($2::text[] || \
     ARRAY(SELECT b.phone FROM callbacks b WHERE b.phone = ANY($1)))"
);
const NUMBERS_CLOSES: &str = "SELECT item_id, at, note, phone, closed_by FROM callback_closes \
    WHERE phone = ANY($1) ORDER BY at, id";
const NUMBERS_ITEMS: &str = "SELECT id, body, phone FROM callbacks WHERE phone = ANY($1)";
const DELETE_HOTLINES: &str = "DELETE FROM callback_hotlines WHERE item_id = ANY($1)";
const DELETE_ITEMS: &str = "DELETE FROM callbacks WHERE id = ANY($1)";
const DELETE_HOTLINE_ROWS: &str = "DELETE FROM callback_hotlines h \
    USING UNNEST($1::text[], $2::int8[], $3::int8[], $4::text[]) \
    AS r (hotline, open, first_missed_at, item_id) \
    WHERE h.hotline = r.hotline AND h.open = r.open AND h.first_missed_at = r.first_missed_at \
    AND h.item_id = r.item_id";
const UPSERT_ITEMS: &str = "INSERT INTO callbacks (id, phone, open, first_missed_at, body) \
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[]) \
    ON CONFLICT (id) DO UPDATE SET open = excluded.open, \
    first_missed_at = excluded.first_missed_at, body = excluded.body";
const INSERT_HOTLINES: &str = "INSERT INTO callback_hotlines \
    (hotline, open, first_missed_at, item_id) \
    SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::text[]) \
    ON CONFLICT (hotline, open, first_missed_at, item_id) DO NOTHING";

/// What one number's items are recomputed from.
#[derive(Default)]
struct Number {
    calls: Vec<NumberCall>,
    closes: Vec<ManualClose>,
    /// The stored items: id, JSON.
    stored: Vec<(String, String)>,
}

/// A connection inside a transaction, with its cache of prepared statements: the worklist's
/// statements run on every batch, and parsing and planning them each time would cost
/// PostgreSQL more than running them.
pub(super) trait Prepared: Sync {
    type Client: GenericClient + Sync;
    fn client(&self) -> &Self::Client;
    fn statement<'s>(
        &'s self,
        sql: &'s str,
    ) -> impl Future<Output = Result<tokio_postgres::Statement, tokio_postgres::Error>> + Send + 's;
}

impl Prepared for deadpool_postgres::ClientWrapper {
    type Client = tokio_postgres::Client;
    fn client(&self) -> &tokio_postgres::Client {
        self
    }
    fn statement<'s>(
        &'s self,
        sql: &'s str,
    ) -> impl Future<Output = Result<tokio_postgres::Statement, tokio_postgres::Error>> + Send + 's
    {
        self.prepare_cached(sql)
    }
}

impl<'a> Prepared for deadpool_postgres::Transaction<'a> {
    type Client = tokio_postgres::Transaction<'a>;
    fn client(&self) -> &tokio_postgres::Transaction<'a> {
        self
    }
    fn statement<'s>(
        &'s self,
        sql: &'s str,
    ) -> impl Future<Output = Result<tokio_postgres::Statement, tokio_postgres::Error>> + Send + 's
    {
        self.prepare_cached(sql)
    }
}

/// Recomputes the callback items of `phones` (normal forms, each with whether a miss is
/// involved) from their calls, inside the caller's transaction, writing only what changed.
/// Statements that do not depend on each other's answers go out together (one round trip).
pub(super) async fn refresh_callbacks<P: Prepared>(
    db: &P,
    phones: &BTreeMap<String, bool>,
) -> Result<(), StoreError> {
    let all: Vec<&str> = phones
        .keys()
        .map(String::as_str)
        .filter(|p| !p.trim().is_empty())
        .collect();
    if all.is_empty() {
        return Ok(());
    }
    let missed: Vec<&str> = all
        .iter()
        .copied()
        .filter(|p| phones.get(*p) == Some(&true))
        .collect();
    let c = db.client();
    let (lock, items, calls, closes) = futures_util::future::try_join4(
        db.statement(LOCK_NUMBERS),
        db.statement(NUMBERS_ITEMS),
        db.statement(NUMBERS_CALLS),
        db.statement(NUMBERS_CLOSES),
    )
    .await?;
    // One round trip: the statements run in the order they are sent, the locks first, and each
    // read is a statement of its own, so that it sees what the holder of a lock committed
    // before letting it go.
    let (_, stored, calls, closes) = futures_util::future::try_join4(
        c.query(&lock, &[&all]),
        c.query(&items, &[&all]),
        c.query(&calls, &[&all, &missed]),
        c.query(&closes, &[&all]),
    )
    .await?;
    // Without a miss, a number with no items keeps none.
    let with_items: std::collections::HashSet<String> =
        stored.iter().map(|r| r.get::<_, String>(2)).collect();
    let phones: Vec<&str> = all
        .into_iter()
        .filter(|p| phones.get(*p) == Some(&true) || with_items.contains(*p))
        .collect();
    if phones.is_empty() {
        return Ok(());
    }
    let mut by_phone: HashMap<&str, Number> =
        phones.iter().map(|p| (*p, Number::default())).collect();
    for row in &calls {
        let (phone, call) = read_number_call(row)?;
        if let Some(number) = by_phone.get_mut(phone.as_str()) {
            number.calls.push(call);
        }
    }
    for row in &closes {
        let (phone, close) = read_close(row)?;
        if let Some(number) = by_phone.get_mut(phone.as_str()) {
            number.closes.push(close);
        }
    }
    for row in &stored {
        let phone: String = row.try_get(2)?;
        if let Some(number) = by_phone.get_mut(phone.as_str()) {
            number.stored.push((row.try_get(0)?, row.try_get(1)?));
        }
    }
    let mut refresh = Refresh::default();
    for (phone, number) in &by_phone {
        refresh.plan(phone, &number.calls, &number.closes, &number.stored);
    }
    if refresh.is_empty() {
        return Ok(());
    }
    write_refresh(db, &refresh).await
}

/// Writes what `refresh` changes, every statement in one round trip: they run in the order
/// they are sent, so the rows of removed hotlines are gone before the new ones go in.
async fn write_refresh<P: Prepared>(db: &P, refresh: &Refresh) -> Result<(), StoreError> {
    let items: Vec<&Item> = refresh.upsert.iter().chain(&refresh.rewrite_body).collect();
    let columns = ItemColumns::of(&items);
    let remove = HotlineColumns::of(&refresh.remove_hotlines);
    let add = HotlineColumns::of(&refresh.add_hotlines);
    let (clear, delete, remove_sql, upsert, add_sql) = futures_util::future::try_join5(
        db.statement(DELETE_HOTLINES),
        db.statement(DELETE_ITEMS),
        db.statement(DELETE_HOTLINE_ROWS),
        db.statement(UPSERT_ITEMS),
        db.statement(INSERT_HOTLINES),
    )
    .await?;
    let params: [&[&(dyn ToSql + Sync)]; 5] = [
        &[&refresh.clear_hotlines],
        &[&refresh.delete],
        &remove.params(),
        &columns.params(),
        &add.params(),
    ];
    let c = db.client();
    let rows = [
        refresh.clear_hotlines.len(),
        refresh.delete.len(),
        refresh.remove_hotlines.len(),
        items.len(),
        refresh.add_hotlines.len(),
    ];
    let statements = [clear, delete, remove_sql, upsert, add_sql];
    let writes: Vec<Write<'_>> = statements
        .iter()
        .zip(params)
        .zip(rows)
        .filter(|(_, rows)| *rows > 0)
        .map(|((sql, p), _)| Box::pin(c.execute(sql, p)) as Write<'_>)
        .collect();
    futures_util::future::try_join_all(writes).await?;
    Ok(())
}

/// A statement under way in a pipeline.
type Write<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a>>;

/// The columns of [`UPSERT_ITEMS`] for some items.
struct ItemColumns<'a> {
    ids: Vec<&'a str>,
    phones: Vec<&'a str>,
    open: Vec<i64>,
    first_missed: Vec<i64>,
    bodies: Vec<String>,
}

impl<'a> ItemColumns<'a> {
    fn of(items: &[&'a Item]) -> Self {
        ItemColumns {
            ids: items.iter().map(|i| i.id.as_str()).collect(),
            phones: items.iter().map(|i| i.phone.as_str()).collect(),
            open: items.iter().map(|i| i64::from(i.open)).collect(),
            first_missed: items.iter().map(|i| i.first_missed_at).collect(),
            bodies: items
                .iter()
                .map(|i| serde_json::to_string(i).expect("an item serialises"))
                .collect(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 5] {
        [
            &self.ids,
            &self.phones,
            &self.open,
            &self.first_missed,
            &self.bodies,
        ]
    }
}

/// The columns of [`INSERT_HOTLINES`] and [`DELETE_HOTLINE_ROWS`] for some rows.
struct HotlineColumns<'a> {
    hotlines: Vec<&'a str>,
    open: Vec<i64>,
    first_missed: Vec<i64>,
    items: Vec<&'a str>,
}

impl<'a> HotlineColumns<'a> {
    fn of(rows: &'a [HotlineRow]) -> Self {
        HotlineColumns {
            hotlines: rows.iter().map(|r| r.hotline.as_str()).collect(),
            open: rows.iter().map(|r| i64::from(r.open)).collect(),
            first_missed: rows.iter().map(|r| r.first_missed_at).collect(),
            items: rows.iter().map(|r| r.item_id.as_str()).collect(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 4] {
        [&self.hotlines, &self.open, &self.first_missed, &self.items]
    }
}

/// Writes `items` (new or changed) with their hotlines, whose old rows are gone already.
async fn insert_items<P: Prepared>(db: &P, items: &[Item]) -> Result<(), StoreError> {
    if items.is_empty() {
        return Ok(());
    }
    let columns = ItemColumns::of(&items.iter().collect::<Vec<_>>());
    let rows: Vec<HotlineRow> = items.iter().flat_map(HotlineRow::of).collect();
    let hotlines = HotlineColumns::of(&rows);
    let (upsert, insert_hotlines) =
        futures_util::future::try_join(db.statement(UPSERT_ITEMS), db.statement(INSERT_HOTLINES))
            .await?;
    let c = db.client();
    let params = columns.params();
    let upserted = c.execute(&upsert, &params);
    if rows.is_empty() {
        upserted.await?;
    } else {
        futures_util::future::try_join(upserted, c.execute(&insert_hotlines, &hotlines.params()))
            .await?;
    }
    Ok(())
}

/// Builds the worklist from the stored calls if it has never been (a database that had calls
/// before the worklist existed). Called under the migration lock: one instance builds it.
pub(super) async fn build_callbacks_if_missing(
    client: &mut deadpool_postgres::Client,
) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    let built = tx
        .query_opt(
            "SELECT 1 FROM alohook_meta WHERE key = $1",
            &[&CALLBACKS_BUILT_KEY],
        )
        .await?
        .is_some();
    if !built {
        // No batch writes calls (nor refreshes their numbers) while the list is built.
        tx.batch_execute("LOCK TABLE calls IN EXCLUSIVE MODE")
            .await?;
        let started = std::time::Instant::now();
        let items = rebuild_callbacks(&tx).await?;
        tx.batch_execute(MARK_CALLBACKS_BUILT).await?;
        tracing::info!(
            items,
            seconds = started.elapsed().as_secs_f64(),
            "callback worklist built from the stored calls"
        );
    }
    tx.commit().await?;
    if !built {
        client
            .batch_execute("ANALYZE callbacks, callback_hotlines")
            .await?;
    }
    Ok(())
}

/// Builds the whole worklist again from every call, inside the caller's transaction (see the
/// SQLite store's twin). Returns how many items it wrote.
pub(super) async fn rebuild_callbacks<P: Prepared>(db: &P) -> Result<usize, StoreError> {
    let client = db.client();
    client
        .batch_execute(
            "LOCK TABLE callback_closes, callbacks, callback_hotlines IN EXCLUSIVE MODE; \
             DELETE FROM callback_hotlines; DELETE FROM callbacks;",
        )
        .await?;
    let mut closes: HashMap<String, Vec<ManualClose>> = HashMap::new();
    for row in client.query(ALL_CLOSES, &[]).await? {
        let (phone, close) = read_close(&row)?;
        closes.entry(phone).or_default().push(close);
    }
    // Fetched a slice at a time through a cursor, so that items are written in between.
    client
        .batch_execute(&format!(
            "DECLARE callbacks_rebuild NO SCROLL CURSOR FOR {ALL_NUMBER_CALLS}"
        ))
        .await?;
    let (mut current, mut calls) = (String::new(), Vec::new());
    let mut written = 0;
    loop {
        let rows = client
            .query("FETCH 5000 FROM callbacks_rebuild", &[])
            .await?;
        let mut pending = Vec::new();
        for row in &rows {
            let (phone, call) = read_number_call(row)?;
            if phone != current {
                let phone_closes = closes.get(&current).map(Vec::as_slice).unwrap_or_default();
                pending.extend(worklist(&current, &calls, phone_closes));
                calls.clear();
                current = phone;
            }
            calls.push(call);
        }
        if rows.is_empty() {
            let phone_closes = closes.get(&current).map(Vec::as_slice).unwrap_or_default();
            pending.extend(worklist(&current, &calls, phone_closes));
        }
        written += pending.len();
        insert_items(db, &pending).await?;
        if rows.is_empty() {
            break;
        }
    }
    client.batch_execute("CLOSE callbacks_rebuild").await?;
    Ok(written)
}

/// Counts the dated calls matching `filter` into `stats`, one by one.
async fn scan_dated<C: GenericClient + Sync>(
    client: &C,
    filter: &CallFilter,
    stats: &mut StatsBuilder,
) -> Result<(), StoreError> {
    let dated = dated_facts_query(filter);
    let sql = numbered(&dated.sql);
    let params: Vec<&(dyn ToSql + Sync)> = dated.args.iter().map(sql_param).collect();
    let mut rows = std::pin::pin!(client.query_raw(&sql, params).await?);
    while let Some(row) = rows.try_next().await? {
        stats.add(&read_call_facts(&row)?);
    }
    Ok(())
}

/// The settings the figures' summary holds (see store::rollup).
async fn rollup_settings<C: GenericClient + Sync>(
    client: &C,
) -> Result<Option<String>, StoreError> {
    Ok(client
        .query_opt(
            "SELECT value FROM alohook_meta WHERE key = $1",
            &[&ROLLUP_KEY],
        )
        .await?
        .map(|row| row.get(0)))
}

/// The settings the figures' summary holds and the start of its first day not folded.
async fn rollup_meta<C: GenericClient + Sync>(
    client: &C,
) -> Result<(Option<String>, Option<i64>), StoreError> {
    let (mut settings, mut folded) = (None, None);
    for row in client
        .query(
            "SELECT key, value FROM alohook_meta WHERE key = $1 OR key = $2",
            &[&ROLLUP_KEY, &rollup::DAYS_KEY],
        )
        .await?
    {
        let (key, value): (String, String) = (row.try_get(0)?, row.try_get(1)?);
        if key == ROLLUP_KEY {
            settings = Some(value);
        } else {
            folded = rollup::parse_days(Some(&value));
        }
    }
    Ok((settings, folded))
}

/// The thresholds the figures' summary holds and the start of its first day not folded, read
/// in a batch's transaction.
pub(super) async fn rollup_state<C: GenericClient + Sync>(
    client: &C,
) -> Result<(Option<crate::report::stats::Thresholds>, Option<i64>), StoreError> {
    let (settings, folded) = rollup_meta(client).await?;
    Ok((settings.as_deref().and_then(rollup::parse_settings), folded))
}

/// The thresholds the figures' summary holds.
pub(super) async fn rollup_thresholds<C: GenericClient + Sync>(
    client: &C,
) -> Result<Option<crate::report::stats::Thresholds>, StoreError> {
    Ok(rollup_state(client).await?.0)
}

/// Folds the summary's days before `until` into rows by day when they are not yet (see
/// store::rollup), in one transaction that keeps batches out while it reads the hours.
pub(super) async fn fold_days(
    client: &deadpool_postgres::Client,
    zone: &jiff::tz::TimeZone,
    until: i64,
) -> Result<i64, StoreError> {
    // Folded already (by another instance): nothing to lock.
    if let (_, Some(folded)) = rollup_state(&***client).await?
        && folded >= until
    {
        return Ok(folded);
    }
    // As a rebuild does: a batch that wrote calls commits first, and the next waits for this.
    // Not for long: while this waits, every later batch queues behind it, so a lock held
    // elsewhere (a long transaction, a maintenance job) makes it give up, to try again later.
    client
        .batch_execute("BEGIN; SET LOCAL lock_timeout = '1s'; LOCK TABLE calls IN EXCLUSIVE MODE")
        .await?;
    let (_, folded) = rollup_state(&***client).await?;
    if let Some(folded) = folded.filter(|f| *f >= until) {
        client.batch_execute("COMMIT").await?;
        return Ok(folded);
    }
    let from = match folded {
        Some(from) => from,
        None => client
            .query_one(&numbered(rollup::FIRST_HOUR), &[&rollup::UNDATED])
            .await?
            .try_get::<_, Option<i64>>(0)?
            .unwrap_or(until)
            .min(until),
    };
    let started = std::time::Instant::now();
    for statement in rollup::fold_days(zone, from, until, rollup::UPSERT_META) {
        let params: Vec<&(dyn ToSql + Sync)> = statement.args.iter().map(sql_param).collect();
        client.execute(&numbered(&statement.sql), &params).await?;
    }
    client.batch_execute("COMMIT").await?;
    tracing::info!(
        from,
        until,
        seconds = started.elapsed().as_secs_f64(),
        "figures' summary: past days folded into rows by day"
    );
    Ok(until)
}

/// The figures from the summary (see the SQLite store's twin), inside the caller's
/// transaction. `Ok(Err(NotSummarised))` when the summary cannot answer.
async fn summarised<C: GenericClient + Sync>(
    client: &C,
    filter: &CallFilter,
    plan: &Plan,
    zone: &jiff::tz::TimeZone,
    mut stats: StatsBuilder,
) -> Result<Result<StatsBuilder, NotSummarised>, StoreError> {
    let facts = async |f: &CallFilter| -> Result<Vec<_>, StoreError> {
        let q = dated_facts_query(f);
        let params: Vec<&(dyn ToSql + Sync)> = q.args.iter().map(sql_param).collect();
        client
            .query(&numbered(&q.sql), &params)
            .await?
            .iter()
            .map(read_call_facts)
            .collect()
    };
    let group_by = stats.group_by();
    let query = rollup::groups_query(plan, group_by);
    let params: Vec<&(dyn ToSql + Sync)> = query.args.iter().map(sql_param).collect();
    let groups = client
        .query(&numbered(&query.sql), &params)
        .await?
        .iter()
        .map(|r| rollup::read_group(r, group_by))
        .collect::<Result<Vec<_>, _>>()?;
    let dirty = rollup::dirty_query(plan);
    let params: Vec<&(dyn ToSql + Sync)> = dirty.args.iter().map(sql_param).collect();
    let dirty = client
        .query(&numbered(&dirty.sql), &params)
        .await?
        .iter()
        .map(rollup::read_key)
        .collect::<Result<Vec<_>, _>>()?;
    // (None after a write: it cleans the rows it leaves dirty.)
    let (coarse, dirty): (Vec<_>, Vec<_>) =
        dirty.into_iter().partition(|k| rollup::is_coarse(k.kind));
    let mut waits = Vec::new();
    for (bucket, keys) in rollup::by_bucket(dirty) {
        let calls = facts(&rollup::hour_filter(&CallFilter::default(), bucket)).await?;
        rollup::exact_waits(&keys, &calls, &stats.thresholds(), &mut waits);
    }
    for key in coarse {
        if let Some(q) = rollup::coarse_wait_query(&key, zone) {
            let params: Vec<&(dyn ToSql + Sync)> = q.args.iter().map(sql_param).collect();
            let wait: Option<i64> = client
                .query_one(&numbered(&q.sql), &params)
                .await?
                .try_get(0)?;
            waits.push((key, wait));
        }
    }
    if (filter.from.is_none() || filter.to.is_none())
        && let Some((first_bucket, last_bucket)) = rollup::extreme_buckets(&groups)
    {
        let firsts = facts(&rollup::hour_filter(filter, first_bucket)).await?;
        let lasts = facts(&rollup::hour_filter(filter, last_bucket)).await?;
        if let (Some(first), Some(last)) = (
            firsts.iter().filter_map(|c| c.start_time).min(),
            lasts.iter().filter_map(|c| c.start_time).max(),
        ) {
            stats.include_range(first, last);
        }
    }
    if let Err(e) = rollup::add_groups(&mut stats, groups, waits)? {
        return Ok(Err(e));
    }
    for edge in plan.edge_filters(filter) {
        scan_dated(client, &edge, &mut stats).await?;
    }
    let undated = rollup::undated_query(plan);
    let params: Vec<&(dyn ToSql + Sync)> = undated.args.iter().map(sql_param).collect();
    let n: i64 = client
        .query_one(&numbered(&undated.sql), &params)
        .await?
        .try_get(0)?;
    stats.add_undated(u64::try_from(n).unwrap_or(0));
    Ok(Ok(stats))
}

/// Writes a batch's changes to the figures' summary, in its transaction: one statement, the
/// rows in key order (two batches lock shared rows in the same order).
/// A row the batch left dirty gets its exact longest wait from its hour's calls at once (see
/// the SQLite store's twin): read after the row was locked by the upsert, so a batch that
/// changes the same row later applies its change on top.
pub(super) async fn apply_rollup<P: Prepared>(
    db: &P,
    deltas: Deltas,
    thresholds: &crate::report::stats::Thresholds,
) -> Result<(), StoreError> {
    let (rows, zone) = deltas.split();
    if rows.is_empty() {
        return Ok(());
    }
    let columns = rollup::all_columns();
    let n = columns.split(", ").count();
    let mut integers: Vec<Vec<Option<i64>>> = vec![Vec::with_capacity(rows.len()); n];
    let mut texts: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(rows.len()); n];
    for (key, delta) in &rows {
        for (i, value) in rollup::row_values(key, delta).into_iter().enumerate() {
            match value {
                crate::store::Column::Integer(v) => integers[i].push(v),
                crate::store::Column::Text(v) => texts[i].push(v),
            }
        }
    }
    // Key columns 3 to 5 are text, the rest integers.
    let text_column = |i: usize| (2..5).contains(&i);
    let arrays: Vec<String> = (0..n)
        .map(|i| {
            let t = if text_column(i) { "text[]" } else { "int8[]" };
            format!("${}::{t}", i + 1)
        })
        .collect();
    let sql = format!(
        "INSERT INTO call_rollup ({columns}) SELECT * FROM UNNEST({}) {} \
         RETURNING kind, bucket, k1, k2, k3, dirty",
        arrays.join(", "),
        rollup::upsert_tail()
    );
    let params: Vec<&(dyn ToSql + Sync)> = (0..n)
        .map(|i| -> &(dyn ToSql + Sync) {
            if text_column(i) {
                &texts[i]
            } else {
                &integers[i]
            }
        })
        .collect();
    let statement = db.statement(&sql).await?;
    let mut dirty = Vec::new();
    for row in db.client().query(&statement, &params).await? {
        if row.try_get::<_, i64>(5)? != 0 {
            dirty.push(rollup::read_key(&row)?);
        }
    }
    // The rows by hour first, from their calls; then the coarse ones, from those.
    let (coarse, dirty): (Vec<_>, Vec<_>) =
        dirty.into_iter().partition(|k| rollup::is_coarse(k.kind));
    let clean = numbered(rollup::CLEAN_ROW);
    for (bucket, keys) in rollup::by_bucket(dirty) {
        let hour = dated_facts_query(&rollup::hour_filter(&CallFilter::default(), bucket));
        let params: Vec<&(dyn ToSql + Sync)> = hour.args.iter().map(sql_param).collect();
        let calls = db
            .client()
            .query(&numbered(&hour.sql), &params)
            .await?
            .iter()
            .map(read_call_facts)
            .collect::<Result<Vec<_>, _>>()?;
        let mut waits = Vec::new();
        rollup::exact_waits(&keys, &calls, thresholds, &mut waits);
        for (key, wait) in waits {
            let args = rollup::clean_args(&key, wait);
            let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(sql_param).collect();
            db.client().execute(&clean, &params).await?;
        }
    }
    for key in coarse {
        if let Some(q) = rollup::coarse_wait_query(&key, &zone) {
            let params: Vec<&(dyn ToSql + Sync)> = q.args.iter().map(sql_param).collect();
            let wait: Option<i64> = db
                .client()
                .query_one(&numbered(&q.sql), &params)
                .await?
                .try_get(0)?;
            let args = rollup::clean_args(&key, wait);
            let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(sql_param).collect();
            db.client().execute(&clean, &params).await?;
        }
    }
    Ok(())
}

/// Builds the figures' summary from the stored calls when it was never built, or built with
/// other thresholds. Called under the migration lock; the lock on `calls` keeps every batch
/// out until the summary and its settings are rewritten (a batch reads the settings after
/// writing its calls).
pub(super) async fn build_rollup_if_stale(
    client: &mut deadpool_postgres::Client,
    settings: &crate::store::MergeSettings,
) -> Result<(), StoreError> {
    let stored = rollup_settings(&***client).await?;
    let thresholds = match (settings.thresholds, &stored) {
        (Some(t), _) => t,
        // A command without the figures' settings keeps the summary as it is, and builds a
        // missing one with the defaults.
        (None, Some(_)) => return Ok(()),
        (None, None) => crate::report::stats::Thresholds::default(),
    };
    let wanted = rollup::settings_value(&thresholds);
    if stored.as_deref() == Some(wanted.as_str()) || settings.read_only {
        return Ok(());
    }
    let tx = client.transaction().await?;
    tx.batch_execute("LOCK TABLE calls IN EXCLUSIVE MODE")
        .await?;
    let started = std::time::Instant::now();
    let rows = rebuild_rollup(&tx, &thresholds, &settings.timezone).await?;
    tx.commit().await?;
    client.batch_execute("ANALYZE call_rollup").await?;
    tracing::info!(
        rows,
        seconds = started.elapsed().as_secs_f64(),
        thresholds = wanted,
        "figures' summary built from the stored calls"
    );
    Ok(())
}

/// Builds the whole summary again from every call, with `thresholds`, inside the caller's
/// transaction (which keeps batches out). Returns how many rows it wrote.
pub(super) async fn rebuild_rollup<P: Prepared>(
    db: &P,
    thresholds: &crate::report::stats::Thresholds,
    zone: &jiff::tz::TimeZone,
) -> Result<usize, StoreError> {
    let c = db.client();
    c.execute("DELETE FROM call_rollup", &[]).await?;
    // The days before today get rows by day at once; today's are folded tomorrow.
    let today = rollup::fold_due(zone, crate::model::time::now_micros() / 1_000_000, None);
    let mut deltas = Deltas::new(zone, today);
    let params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    let mut rows = std::pin::pin!(c.query_raw(&all_facts_sql(), params).await?);
    while let Some(row) = rows.try_next().await? {
        deltas.record(None, &read_call_facts(&row)?, thresholds);
    }
    let written = deltas.rows.len();
    // In slices: one statement's arrays stay a few megabytes.
    let mut all = deltas.into_sorted();
    while !all.is_empty() {
        let rest = all.split_off(all.len().min(20_000));
        let slice = Deltas::of_rows(all, zone);
        apply_rollup(db, slice, thresholds).await?;
        all = rest;
    }
    c.execute(
        "INSERT INTO alohook_meta (key, value) VALUES ($1, $2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[&ROLLUP_KEY, &rollup::settings_value(thresholds)],
    )
    .await?;
    match today {
        Some(today) => {
            c.execute(
                &numbered(rollup::UPSERT_META),
                &[&rollup::DAYS_KEY, &today.to_string()],
            )
            .await?
        }
        None => {
            c.execute(
                "DELETE FROM alohook_meta WHERE key = $1",
                &[&rollup::DAYS_KEY],
            )
            .await?
        }
    };
    Ok(written)
}
