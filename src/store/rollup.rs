//! The figures' summary: the counts and sums of `/api/stats` per hour of start time, kept by
//! every write in the same transaction as the calls, so that a day or a quarter is a few
//! thousand summary rows rather than every call of it.
//!
//! Two summaries, each narrow enough to stay small at millions of calls:
//! - **by agent** (`KIND_AGENT`): hour × agent. It serves `group_by=agent` with no filter.
//! - **by line** (`KIND_LINE`): hour × hotline × direction × status. It serves every other
//!   grouping, with any of the `hotline`, `direction` and `status` filters. Its rows at
//!   [`UNDATED`] count the calls with no start time.
//!
//! And three coarser ones that add the finer up, so that a quarter is tens of thousands of rows
//! at most rather than every hour's:
//! - **by day** (`KIND_AGENT_DAY`, `KIND_LINE_DAY`): the same keys per local day of the zone
//!   the records are merged in, for the days that are whole UTC hours (every day of a zone
//!   whose offsets are whole hours), and only for the days before [`DAYS_KEY`]: a day is
//!   folded from its hour rows once it is over ([`fold_days`], by the first batch of the next
//!   day), and writes keep only the folded days' rows, so a day's own calls (nearly all the
//!   writes) cost no day row. A range's folded days are read from them, the rest from the hour
//!   rows.
//! - **in all** (`KIND_TOTAL`): hour alone, for the groupings by time (and none) with no
//!   filter: the chart and heat map of a quarter.
//!
//! A write removes the call's old contribution and adds its new one, so the summary is exact
//! whatever order the events arrive in, and a resend (which changes no record) changes nothing.
//! The counts and sums are additive; a maximum is not, so the longest wait and the first and
//! last start of a row are kept as upper and lower bounds, exact until a call that held one
//! leaves the row or changes: then the row is marked `dirty`, and a read computes those three
//! from the row's calls (one hour's worth) instead; a coarse row's from the finer rows it adds
//! up, once they are exact. Any other query (a `phone`, `agent`,
//! `user_name` filter, a zone whose hours are not whole UTC hours...) is computed from the
//! calls, as it was before the summary.
//!
//! The abandon and service-level counts depend on `--short-abandon-seconds` and
//! `--service-level-seconds`: the summary records the thresholds it was built with
//! ([`ROLLUP_KEY`]), and is rebuilt at start when they differ from the running ones.

use std::collections::HashMap;

use super::{CallFilter, StoreError};
use crate::model::{CallRecord, FinalStatuses, Phase};
use crate::report::stats::{CallFacts, GroupBy, StatsBuilder, Tally, Thresholds};

pub const KIND_AGENT: i64 = 1;
pub const KIND_LINE: i64 = 2;
/// Local day × agent: the hours of `KIND_AGENT` added up.
pub const KIND_AGENT_DAY: i64 = 3;
/// Local day × hotline × direction × status: the hours of `KIND_LINE` added up.
pub const KIND_LINE_DAY: i64 = 4;
/// Hour alone: the rows of `KIND_LINE` of an hour added up.
pub const KIND_TOTAL: i64 = 5;
/// A summary row's span: an hour, from a whole UTC hour.
pub const BUCKET_SECONDS: i64 = 3_600;
/// The bucket of the calls with no start time.
pub const UNDATED: i64 = i64::MIN;
/// The key in `alohook_meta` holding the settings the summary was built with.
pub const ROLLUP_KEY: &str = "rollup";
/// The key in `alohook_meta` holding the start of the first day not folded into rows by day
/// (seconds): the days before it have them.
pub const DAYS_KEY: &str = "rollup_days";

/// The settings value of [`ROLLUP_KEY`] for `thresholds`.
/// (`v2`: the rows by day and in all; a `v1` summary, without them, is rebuilt.)
pub fn settings_value(thresholds: &Thresholds) -> String {
    format!(
        "v2 short_abandon_seconds={} service_level_seconds={}",
        thresholds.short_abandon_seconds, thresholds.service_level_seconds
    )
}

/// The thresholds of a [`settings_value`].
pub fn parse_settings(value: &str) -> Option<Thresholds> {
    let mut parts = value.split(' ');
    if parts.next()? != "v2" {
        return None;
    }
    let mut number = |name: &str| {
        parts
            .next()?
            .strip_prefix(name)?
            .strip_prefix('=')?
            .parse()
            .ok()
    };
    Some(Thresholds {
        short_abandon_seconds: number("short_abandon_seconds")?,
        service_level_seconds: number("service_level_seconds")?,
    })
}

/// The columns of a summary row after its key, in order: the counts, the bounds, whether they
/// are dirty, and the bounds the last write removed (how an upsert passes them to its update).
pub fn value_columns() -> String {
    let mut names: Vec<&str> = Tally::COUNT_NAMES.to_vec();
    names.extend(["longest_wait", "dirty", "rm_wait"]);
    names.join(", ")
}

/// A summary row's key. Absent values are `''` (a key column cannot be null).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub kind: i64,
    pub bucket: i64,
    pub k1: String,
    pub k2: String,
    pub k3: String,
}

/// The figures' view of a call record: what `read_call_facts` reads from its row.
pub fn facts(record: &CallRecord, finals: &FinalStatuses) -> CallFacts {
    let f = &record.fields;
    CallFacts {
        ended: record.phase(finals) == Phase::Ended,
        call_status: f.call_status.clone(),
        direction: f.direction.clone(),
        destination_number: f.destination_number.clone(),
        hotline: f.hotline.clone(),
        user_name: f.user_name.clone(),
        start_time: f.start_time,
        answer_time: f.answer_time,
        end_time: f.end_time,
        holding_duration: f.holding_duration,
    }
}

fn text(value: &Option<String>) -> String {
    value.clone().unwrap_or_default()
}

/// The bucket of a start time.
pub fn bucket_of(start: i64) -> i64 {
    start - start.rem_euclid(BUCKET_SECONDS)
}

/// The summary rows a call counts in, one per kind (an undated call counts only by line);
/// `day`: the local day its hour is in, when the summary has rows for that day.
fn keys(call: &CallFacts, day: impl FnOnce(i64) -> Option<i64>) -> Vec<Key> {
    let line = |kind, bucket| Key {
        kind,
        bucket,
        k1: text(&call.hotline),
        k2: text(&call.direction),
        k3: text(&call.call_status.as_deref().map(str::to_lowercase)),
    };
    let agent = |kind, bucket| Key {
        kind,
        bucket,
        k1: call.agent().unwrap_or_default().to_string(),
        k2: String::new(),
        k3: String::new(),
    };
    match call.start_time {
        None => vec![line(KIND_LINE, UNDATED)],
        Some(start) => {
            let hour = bucket_of(start);
            let mut keys = vec![
                agent(KIND_AGENT, hour),
                line(KIND_LINE, hour),
                Key {
                    kind: KIND_TOTAL,
                    bucket: hour,
                    k1: String::new(),
                    k2: String::new(),
                    k3: String::new(),
                },
            ];
            if let Some(day) = day(hour) {
                keys.extend([agent(KIND_AGENT_DAY, day), line(KIND_LINE_DAY, day)]);
            }
            keys
        }
    }
}

/// Whether a kind's rows add up finer rows (their longest wait comes from those).
pub fn is_coarse(kind: i64) -> bool {
    matches!(kind, KIND_AGENT_DAY | KIND_LINE_DAY | KIND_TOTAL)
}

/// The start of the local day after the one that `at` is in.
fn next_day(tz: &jiff::tz::TimeZone, day: i64) -> Option<i64> {
    let zoned = jiff::Timestamp::from_second(day).ok()?.to_zoned(tz.clone());
    Some(
        zoned
            .tomorrow()
            .ok()?
            .start_of_day()
            .ok()?
            .timestamp()
            .as_second(),
    )
}

/// The start of the local day that `at` is in.
fn start_of_day(tz: &jiff::tz::TimeZone, at: i64) -> Option<i64> {
    let zoned = jiff::Timestamp::from_second(at).ok()?.to_zoned(tz.clone());
    Some(zoned.start_of_day().ok()?.timestamp().as_second())
}

/// The local day of `tz` holding the UTC hour from `hour`, when that day starts and ends on
/// whole UTC hours (so it is whole hours, and the hour lies in it): the day rows' bucket.
pub fn day_of_hour(tz: &jiff::tz::TimeZone, hour: i64) -> Option<i64> {
    let start = start_of_day(tz, hour)?;
    let end = next_day(tz, start)?;
    (start % BUCKET_SECONDS == 0 && end % BUCKET_SECONDS == 0).then_some(start)
}

/// The longest range whose days [`whole_days`] checks one by one (about 30 years).
const MAX_DAYS_WALKED: i64 = 11_000;

/// The whole local days of `tz` within the hours `[lo, hi)`, all made of whole UTC hours:
/// `(first day's start, last day's end)`, or `None` when there is none (or a day in between
/// is not whole hours).
fn whole_days(tz: &jiff::tz::TimeZone, lo: i64, hi: i64) -> Option<(i64, i64)> {
    let mut first = start_of_day(tz, lo)?;
    if first < lo {
        first = next_day(tz, first)?;
    }
    // A range of centuries (`from=0001-01-01`) is not walked day by day: read by hour.
    if hi.saturating_sub(first) > MAX_DAYS_WALKED * 86_400 {
        return None;
    }
    let mut end = first;
    loop {
        let next = next_day(tz, end)?;
        if next > hi {
            break;
        }
        if end % BUCKET_SECONDS != 0 || next % BUCKET_SECONDS != 0 {
            return None;
        }
        end = next;
    }
    (end > first).then_some((first, end))
}

/// What a call adds to its row: its tally (an undated call's is its count alone).
fn contribution(call: &CallFacts, thresholds: &Thresholds) -> Tally {
    if call.start_time.is_some() {
        Tally::of(call, thresholds)
    } else {
        let mut counts = [0; 17];
        counts[0] = 1;
        Tally::from_counts(counts, None).unwrap_or_default()
    }
}

/// What a batch does to one summary row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    pub counts: [i64; 17],
    /// The largest longest-wait added.
    pub added_wait: Option<i64>,
    /// The largest wait that left the row: a maximum it held is no longer known to be exact.
    pub removed_wait: Option<i64>,
}

fn max(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

impl Delta {
    /// Whether a row made only by this delta may hold a bound that left it.
    pub fn dirty_when_new(&self) -> bool {
        let at_or_above = |removed: Option<i64>, bound: Option<i64>| matches!((removed, bound), (Some(r), Some(b)) if r >= b);
        at_or_above(self.removed_wait, self.added_wait)
    }

    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.counts == [0; 17] && self.added_wait.is_none() && self.removed_wait.is_none()
    }
}

/// The changes a batch makes to the summary, row by row.
#[derive(Debug)]
pub struct Deltas {
    pub rows: HashMap<Key, Delta>,
    /// The zone of the day rows: the one the records are merged in.
    pub zone: jiff::tz::TimeZone,
    /// The days before it have rows by day ([`DAYS_KEY`]).
    folded_until: Option<i64>,
    /// The day row of each hour met so far (see [`day_of_hour`]).
    days: HashMap<i64, Option<i64>>,
}

impl Deltas {
    /// No change yet; day rows in `zone` for the days before `folded_until`.
    pub fn new(zone: &jiff::tz::TimeZone, folded_until: Option<i64>) -> Self {
        Deltas {
            rows: HashMap::new(),
            zone: zone.clone(),
            folded_until,
            days: HashMap::new(),
        }
    }

    /// The rows of `rows`, to apply with their zone.
    pub fn of_rows(
        rows: impl IntoIterator<Item = (Key, Delta)>,
        zone: &jiff::tz::TimeZone,
    ) -> Self {
        Deltas {
            rows: rows.into_iter().collect(),
            ..Deltas::new(zone, None)
        }
    }

    fn keys(&mut self, call: &CallFacts) -> Vec<Key> {
        let (days, zone, until) = (&mut self.days, &self.zone, self.folded_until);
        keys(call, |hour| {
            if until.is_none_or(|until| hour >= until) {
                return None;
            }
            *days.entry(hour).or_insert_with(|| day_of_hour(zone, hour))
        })
    }

    /// A call's record went from `before` (`None`: a new call) to `after`.
    pub fn record(&mut self, before: Option<&CallFacts>, after: &CallFacts, th: &Thresholds) {
        if before == Some(after) {
            return;
        }
        let old = before.map(|b| (self.keys(b), contribution(b, th)));
        let new = (self.keys(after), contribution(after, th));
        if let Some((old_keys, tally)) = &old {
            let counts = tally.counts();
            for key in old_keys {
                let delta = self.rows.entry(key.clone()).or_default();
                for (d, c) in delta.counts.iter_mut().zip(counts) {
                    *d -= c;
                }
                // The maximum stays where it was when the call stays in the row with its wait.
                let stays = new.0.contains(key);
                let wait = tally.longest_wait();
                if wait.is_some() && !(stays && wait == new.1.longest_wait()) {
                    delta.removed_wait = max(delta.removed_wait, wait);
                }
            }
        }
        let counts = new.1.counts();
        for key in &new.0 {
            let delta = self.rows.entry(key.clone()).or_default();
            for (d, c) in delta.counts.iter_mut().zip(counts) {
                *d += c;
            }
            if key.bucket != UNDATED {
                delta.added_wait = max(delta.added_wait, new.1.longest_wait());
            }
        }
    }

    /// The rows to write, in key order (two writers lock rows in the same order).
    pub fn into_sorted(self) -> Vec<(Key, Delta)> {
        Self::sorted(self.rows)
    }

    /// [`Deltas::into_sorted`], keeping the zone.
    pub fn split(self) -> (Vec<(Key, Delta)>, jiff::tz::TimeZone) {
        (Self::sorted(self.rows), self.zone)
    }

    fn sorted(rows: HashMap<Key, Delta>) -> Vec<(Key, Delta)> {
        let mut rows: Vec<(Key, Delta)> = rows.into_iter().filter(|(_, d)| !d.is_empty()).collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        rows
    }
}

/// How a `/api/stats` query reads the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The rows read, by kind and span of buckets.
    pub segments: Vec<Segment>,
    /// `(column, value)` conditions on the key.
    pub keys: Vec<(&'static str, String)>,
    /// The parts of the range at its ends that do not fill an hour, counted from the calls.
    pub edges: Vec<(i64, i64)>,
}

/// The rows of one kind with `lo <= bucket < hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub kind: i64,
    pub lo: i64,
    pub hi: i64,
}

/// The plan for `filter` grouped by `group_by`, or `None` when the summary cannot answer it (a
/// filter it does not hold, a zone whose hours are not the summary's), and the calls are
/// counted one by one. `folded_until`: the summary's days before it have rows by day, and they
/// are days of `tz` (the records are merged in it), so a range's whole days among them are
/// read from those.
pub fn plan(
    filter: &CallFilter,
    group_by: GroupBy,
    tz: &jiff::tz::TimeZone,
    folded_until: Option<i64>,
) -> Option<Plan> {
    let CallFilter {
        status,
        phase,
        direction,
        hotline,
        user_name,
        destination_number,
        transaction_id,
        phone,
        agent,
        from,
        to,
    } = filter;
    if phase.is_some()
        || user_name.is_some()
        || destination_number.is_some()
        || transaction_id.is_some()
        || phone.is_some()
        || agent.is_some()
    {
        return None;
    }
    let mut keys = Vec::new();
    if let Some(h) = hotline {
        keys.push(("k1", h.clone()));
    }
    if let Some(d) = direction {
        keys.push(("k2", d.to_lowercase()));
    }
    if let Some(s) = status {
        keys.push(("k3", s.to_lowercase()));
    }
    if group_by == GroupBy::Agent && !keys.is_empty() {
        return None;
    }
    let time = matches!(
        group_by,
        GroupBy::Day | GroupBy::Hour | GroupBy::HourOfDay | GroupBy::Weekday
    );
    // The narrowest rows that hold the grouping and the filters.
    let (hour_kind, day_kind) = if group_by == GroupBy::Agent {
        (KIND_AGENT, KIND_AGENT_DAY)
    } else if keys.is_empty() && (time || group_by == GroupBy::None) {
        (KIND_TOTAL, KIND_LINE_DAY)
    } else {
        (KIND_LINE, KIND_LINE_DAY)
    };
    // The buckets wholly inside [from, to]; what is left at either end is counted from calls.
    let lo = from.map_or(UNDATED + 1, |f| {
        let b = bucket_of(f);
        if b == f { b } else { b + BUCKET_SECONDS }
    });
    let hi = to.map_or(i64::MAX, |t| bucket_of(t.saturating_add(1)));
    if lo >= hi {
        return None;
    }
    let mut edges = Vec::new();
    if let Some(f) = from
        && *f < lo
    {
        edges.push((*f, lo - 1));
    }
    if let Some(t) = to
        && *t >= hi
    {
        edges.push((hi, *t));
    }
    // A summary row must fall in one local hour of the zone: whole-hour offsets only (checked
    // on the range's ends here, and on every row read, see `hour_aligned`).
    if time
        && ((from.is_some() && !hour_aligned(tz, lo))
            || (to.is_some() && !hour_aligned(tz, hi - BUCKET_SECONDS)))
    {
        return None;
    }
    // The whole days from the day rows (a grouping by hour needs the hours), the hours around
    // them from the hour rows.
    let by_day = folded_until.filter(|_| {
        from.is_some() && to.is_some() && !matches!(group_by, GroupBy::Hour | GroupBy::HourOfDay)
    });
    let segment = |kind, lo, hi| Segment { kind, lo, hi };
    let segments = match by_day.and_then(|until| whole_days(tz, lo, hi.min(until))) {
        Some((first, end)) => [
            segment(hour_kind, lo, first),
            segment(day_kind, first, end),
            segment(hour_kind, end, hi),
        ]
        .into_iter()
        .filter(|s| s.lo < s.hi)
        .collect(),
        None => vec![segment(hour_kind, lo, hi)],
    };
    Some(Plan {
        segments,
        keys,
        edges,
    })
}

/// Whether the hour from `bucket` lies in one local hour of `tz`.
pub fn hour_aligned(tz: &jiff::tz::TimeZone, bucket: i64) -> bool {
    let offset = |s: i64| {
        jiff::Timestamp::from_second(s)
            .map(|t| tz.to_offset(t).seconds())
            .ok()
    };
    match (offset(bucket), offset(bucket + BUCKET_SECONDS - 1)) {
        (Some(a), Some(b)) => a == b && a % 3_600 == 0,
        _ => false,
    }
}

/// The group dimensions of a row, as a call's facts.
fn dims(key: &Key) -> CallFacts {
    let some = |v: &str| (!v.is_empty()).then(|| v.to_string());
    if key.kind == KIND_TOTAL {
        CallFacts::default()
    } else if matches!(key.kind, KIND_AGENT | KIND_AGENT_DAY) {
        CallFacts {
            user_name: some(&key.k1),
            ..CallFacts::default()
        }
    } else {
        CallFacts {
            hotline: some(&key.k1),
            direction: some(&key.k2),
            call_status: some(&key.k3),
            ..CallFacts::default()
        }
    }
}

/// Whether a call counts in the row of `key` (a row by hour: agent or line).
pub fn call_in_row(call: &CallFacts, key: &Key) -> bool {
    keys(call, |_| None).contains(key)
}

/// The summary's rows of a plan, added up per group in the database: one row per group
/// ([`read_group`]), so that a quarter by agent is a few hundred rows to read, not one per hour
/// and agent. The longest wait is the maximum over clean rows; the dirty rows' own come from
/// their calls ([`dirty_query`]).
pub fn groups_query(plan: &Plan, group_by: GroupBy) -> super::Statement {
    let group = group_columns(group_by);
    let sums: Vec<String> = Tally::COUNT_NAMES
        .iter()
        .map(|c| format!("CAST(SUM({c}) AS BIGINT)"))
        .collect();
    let mut select: Vec<String> = group.iter().map(|c| c.to_string()).collect();
    select.extend(sums);
    select.extend([
        "MAX(CASE WHEN dirty = 0 AND calls <> 0 THEN longest_wait END)".to_string(),
        "MIN(CASE WHEN calls <> 0 THEN bucket END)".to_string(),
        "MAX(CASE WHEN calls <> 0 THEN bucket END)".to_string(),
    ]);
    let mut args = Vec::new();
    let rows = plan_rows(plan, &mut args);
    let mut sql = format!("SELECT {} FROM {rows}", select.join(", "));
    if !group.is_empty() {
        sql.push_str(&format!(" GROUP BY {}", group.join(", ")));
    }
    sql.push_str(" HAVING SUM(calls) <> 0");
    super::Statement { sql, args }
}

impl Plan {
    /// The filters that count the range's ragged ends from the calls: `filter` over each edge.
    pub fn edge_filters<'a>(
        &'a self,
        filter: &'a CallFilter,
    ) -> impl Iterator<Item = CallFilter> + 'a {
        self.edges.iter().map(move |&(from, to)| CallFilter {
            from: Some(from),
            to: Some(to),
            ..filter.clone()
        })
    }
}

/// The table of `plan`'s summary rows (each segment's kind and buckets, and the keys), for a
/// FROM clause, their arguments added to `args`: one index range per segment.
fn plan_rows(plan: &Plan, args: &mut Vec<super::Column>) -> String {
    use super::Column::{Integer, Text};
    let selects: Vec<String> = plan
        .segments
        .iter()
        .map(|segment| {
            let mut sql = "SELECT * FROM call_rollup WHERE kind = ? AND bucket >= ? AND bucket < ?"
                .to_string();
            args.extend([
                Integer(Some(segment.kind)),
                Integer(Some(segment.lo)),
                Integer(Some(segment.hi)),
            ]);
            for (column, value) in &plan.keys {
                sql.push_str(&format!(" AND {column} = ?"));
                args.push(Text(Some(value.clone())));
            }
            sql
        })
        .collect();
    format!("({}) AS plan_rows", selects.join(" UNION ALL "))
}

/// The summary's columns a grouping adds up by.
fn group_columns(group_by: GroupBy) -> Vec<&'static str> {
    match group_by {
        GroupBy::None => vec![],
        GroupBy::Agent | GroupBy::Hotline => vec!["k1"],
        GroupBy::Direction => vec!["k2"],
        GroupBy::Status => vec!["k3"],
        GroupBy::Day | GroupBy::Hour | GroupBy::HourOfDay | GroupBy::Weekday => vec!["bucket"],
    }
}

/// One group of [`groups_query`].
#[derive(Debug, Clone)]
pub struct Group {
    /// The group's dimensions, as a call's facts.
    pub dims: CallFacts,
    /// Its bucket, for a time grouping.
    pub bucket: Option<i64>,
    pub counts: [i64; 17],
    /// The longest wait of its clean rows.
    pub wait: Option<i64>,
    /// The first and last bucket with calls.
    pub first_bucket: Option<i64>,
    pub last_bucket: Option<i64>,
}

/// A row of [`groups_query`] for `group_by`.
pub fn read_group(row: &impl super::RowColumns, group_by: GroupBy) -> Result<Group, StoreError> {
    let width = group_columns(group_by).len();
    let text = |i: usize| -> Result<Option<String>, StoreError> {
        Ok(row.text(i)?.filter(|v| !v.is_empty()))
    };
    let mut dims = CallFacts::default();
    let mut bucket = None;
    match group_by {
        GroupBy::None => {}
        GroupBy::Agent => dims.user_name = text(0)?,
        GroupBy::Hotline => dims.hotline = text(0)?,
        GroupBy::Direction => dims.direction = text(0)?,
        GroupBy::Status => dims.call_status = text(0)?,
        _ => bucket = Some(row.required_integer(0)?),
    }
    let mut counts = [0i64; 17];
    for (i, c) in counts.iter_mut().enumerate() {
        *c = row.required_integer(width + i)?;
    }
    Ok(Group {
        dims,
        bucket,
        counts,
        wait: row.integer(width + 17)?,
        first_bucket: row.integer(width + 18)?,
        last_bucket: row.integer(width + 19)?,
    })
}

/// The keys of a plan's dirty rows with calls (few: a call whose ring or hour changed after it
/// ended); [`read_key`] reads them.
pub fn dirty_query(plan: &Plan) -> super::Statement {
    let mut args = Vec::new();
    let rows = plan_rows(plan, &mut args);
    super::Statement {
        sql: format!("SELECT kind, bucket, k1, k2, k3 FROM {rows} WHERE dirty <> 0 AND calls <> 0"),
        args,
    }
}

/// A row of [`dirty_query`].
pub fn read_key(row: &impl super::RowColumns) -> Result<Key, StoreError> {
    Ok(Key {
        kind: row.required_integer(0)?,
        bucket: row.required_integer(1)?,
        k1: row.required_text(2)?,
        k2: row.required_text(3)?,
        k3: row.required_text(4)?,
    })
}

/// What a write does to a row that became dirty: its longest wait, computed from its hour's
/// calls in the same transaction, and clean again (longest wait, then the key).
pub const CLEAN_ROW: &str = "UPDATE call_rollup SET longest_wait = ?, dirty = 0 \
    WHERE kind = ? AND bucket = ? AND k1 = ? AND k2 = ? AND k3 = ?";

/// The arguments of [`CLEAN_ROW`].
pub fn clean_args(key: &Key, wait: Option<i64>) -> Vec<super::Column> {
    use super::Column::{Integer, Text};
    vec![
        Integer(wait),
        Integer(Some(key.kind)),
        Integer(Some(key.bucket)),
        Text(Some(key.k1.clone())),
        Text(Some(key.k2.clone())),
        Text(Some(key.k3.clone())),
    ]
}

/// The longest wait of a coarse row, from the finer rows it adds up (exact by then: a write
/// cleans its rows by hour first); `None` for a row by hour, whose wait comes from its calls.
pub fn coarse_wait_query(key: &Key, tz: &jiff::tz::TimeZone) -> Option<super::Statement> {
    use super::Column::{Integer, Text};
    let (kind, hi, keys) = match key.kind {
        KIND_TOTAL => (KIND_LINE, key.bucket + BUCKET_SECONDS, vec![]),
        KIND_AGENT_DAY => (KIND_AGENT, next_day(tz, key.bucket)?, vec![("k1", &key.k1)]),
        KIND_LINE_DAY => (
            KIND_LINE,
            next_day(tz, key.bucket)?,
            vec![("k1", &key.k1), ("k2", &key.k2), ("k3", &key.k3)],
        ),
        _ => return None,
    };
    let mut sql = "SELECT MAX(longest_wait) FROM call_rollup WHERE kind = ? AND bucket >= ? \
        AND bucket < ? AND calls <> 0"
        .to_string();
    let mut args = vec![
        Integer(Some(kind)),
        Integer(Some(key.bucket)),
        Integer(Some(hi)),
    ];
    for (column, value) in keys {
        sql.push_str(&format!(" AND {column} = ?"));
        args.push(Text(Some(value.clone())));
    }
    Some(super::Statement { sql, args })
}

/// The start of the local day of `now` when the days before it are not all folded yet.
pub fn fold_due(tz: &jiff::tz::TimeZone, now: i64, folded_until: Option<i64>) -> Option<i64> {
    let today = start_of_day(tz, now)?;
    folded_until
        .is_none_or(|until| until < today)
        .then_some(today)
}

/// The statements that fold the days from `from` (`None`: the first with calls, see
/// [`FIRST_HOUR`]) to `until` into rows by day, from their rows by hour, and record `until` as
/// [`DAYS_KEY`]; run in one transaction that keeps batches out. The days that are not whole
/// UTC hours get none. `upsert_meta`: the dialect's statement setting a key of `alohook_meta`.
pub fn fold_days(
    tz: &jiff::tz::TimeZone,
    from: i64,
    until: i64,
    upsert_meta: &str,
) -> Vec<super::Statement> {
    use super::Column::{Integer, Text};
    let first = start_of_day(tz, from).unwrap_or(from);
    let mut statements = vec![super::Statement {
        sql: format!(
            "DELETE FROM call_rollup WHERE kind IN ({KIND_AGENT_DAY}, {KIND_LINE_DAY}) \
             AND bucket >= ? AND bucket < ?"
        ),
        args: vec![Integer(Some(first)), Integer(Some(until))],
    }];
    let sums: Vec<String> = Tally::COUNT_NAMES
        .iter()
        .map(|c| format!("CAST(SUM({c}) AS BIGINT)"))
        .collect();
    let mut day = Some(first);
    while let Some(start) = day.filter(|d| *d < until) {
        let next = next_day(tz, start);
        if day_of_hour(tz, start) == Some(start)
            && let Some(next) = next
        {
            for (hour_kind, day_kind) in [(KIND_AGENT, KIND_AGENT_DAY), (KIND_LINE, KIND_LINE_DAY)]
            {
                statements.push(super::Statement {
                    sql: format!(
                        "INSERT INTO call_rollup ({}) SELECT ?, ?, k1, k2, k3, {}, \
                         MAX(CASE WHEN calls <> 0 THEN longest_wait END), 0, NULL \
                         FROM call_rollup WHERE kind = ? AND bucket >= ? AND bucket < ? \
                         GROUP BY k1, k2, k3 HAVING SUM(calls) <> 0",
                        all_columns(),
                        sums.join(", ")
                    ),
                    args: vec![
                        Integer(Some(day_kind)),
                        Integer(Some(start)),
                        Integer(Some(hour_kind)),
                        Integer(Some(start)),
                        Integer(Some(next)),
                    ],
                });
            }
        }
        day = next;
    }
    statements.push(super::Statement {
        sql: upsert_meta.to_string(),
        args: vec![
            Text(Some(DAYS_KEY.to_string())),
            Text(Some(until.to_string())),
        ],
    });
    statements
}

/// The first hour with calls, where folding starts when no day was ever folded.
pub const FIRST_HOUR: &str = "SELECT MIN(bucket) FROM call_rollup WHERE kind = 2 AND bucket > ?";

/// Sets a key of `alohook_meta` (both dialects).
pub const UPSERT_META: &str = "INSERT INTO alohook_meta (key, value) VALUES (?, ?) \
    ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/// How long a fold that failed waits before the next try (the batches go on meanwhile).
pub const FOLD_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// A [`DAYS_KEY`] value.
pub fn parse_days(value: Option<&str>) -> Option<i64> {
    value?.parse().ok()
}

/// The dirty rows' keys, bucket by bucket.
pub fn by_bucket(keys: Vec<Key>) -> std::collections::BTreeMap<i64, Vec<Key>> {
    let mut buckets = std::collections::BTreeMap::<i64, Vec<Key>>::new();
    for key in keys {
        buckets.entry(key.bucket).or_default().push(key);
    }
    buckets
}

/// The first and last bucket with calls: the first and last start of the range are in them
/// (computed from their calls when the answer needs them).
pub fn extreme_buckets(groups: &[Group]) -> Option<(i64, i64)> {
    let first = groups.iter().filter_map(|g| g.first_bucket).min()?;
    let last = groups.iter().filter_map(|g| g.last_bucket).max()?;
    Some((first, last))
}

/// For the dirty rows of one bucket: their exact longest wait, from the bucket's calls.
pub fn exact_waits(
    keys: &[Key],
    calls: &[CallFacts],
    thresholds: &Thresholds,
    out: &mut Vec<(Key, Option<i64>)>,
) {
    for key in keys {
        let wait = calls
            .iter()
            .filter(|c| call_in_row(c, key))
            .filter_map(|c| Tally::of(c, thresholds).longest_wait())
            .max();
        out.push((key.clone(), wait));
    }
}

/// Counts the summary's groups into `stats`, with the dirty rows' longest waits (from their
/// calls). `Ok(Err(NotSummarised))` when a time grouping meets a bucket outside one local hour
/// (the caller counts from the calls); an error when a group is not what a summary can hold.
pub fn add_groups(
    stats: &mut StatsBuilder,
    groups: Vec<Group>,
    waits: Vec<(Key, Option<i64>)>,
) -> Result<Result<(), NotSummarised>, StoreError> {
    for group in groups {
        if let Some(bucket) = group.bucket
            && !hour_aligned(stats.time_zone(), bucket)
        {
            return Ok(Err(NotSummarised));
        }
        let tally = Tally::from_counts(group.counts, group.wait).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "the figures' summary holds a count below zero ({:?}); removing the 'rollup' \
                 entry of alohook_meta makes the next start rebuild it",
                group.counts
            ))
        })?;
        // A grouping that is not by time reads no time from the bucket.
        stats.add_summary(&group.dims, group.bucket.unwrap_or(0), &tally);
    }
    for (key, wait) in waits {
        let tally = Tally::from_counts([0; 17], wait).unwrap_or_default();
        stats.add_summary(&dims(&key), key.bucket, &tally);
    }
    Ok(Ok(()))
}

/// The summary cannot answer: count from the calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotSummarised;

/// A filter for the calls of one bucket.
pub fn hour_filter(filter: &CallFilter, bucket: i64) -> CallFilter {
    CallFilter {
        from: Some(bucket),
        to: Some(bucket + BUCKET_SECONDS - 1),
        ..filter.clone()
    }
}

/// The key's columns, then [`value_columns`].
pub fn all_columns() -> String {
    format!("kind, bucket, k1, k2, k3, {}", value_columns())
}

/// What follows the inserted rows of an upsert into `call_rollup`: add the counts, widen the
/// bounds, and mark the row dirty when a bound may have left it.
pub fn upsert_tail() -> String {
    let mut sets: Vec<String> = Tally::COUNT_NAMES
        .iter()
        .map(|c| format!("{c} = call_rollup.{c} + excluded.{c}"))
        .collect();
    sets.push(
        "longest_wait = CASE WHEN excluded.longest_wait IS NULL THEN call_rollup.longest_wait \
         WHEN call_rollup.longest_wait IS NULL OR excluded.longest_wait > call_rollup.longest_wait \
         THEN excluded.longest_wait ELSE call_rollup.longest_wait END"
            .into(),
    );
    sets.push(
        "dirty = CASE WHEN call_rollup.dirty <> 0 OR excluded.dirty <> 0 \
         OR excluded.rm_wait >= COALESCE(call_rollup.longest_wait, excluded.rm_wait) \
         THEN 1 ELSE 0 END"
            .into(),
    );
    sets.push("rm_wait = excluded.rm_wait".into());
    format!(
        "ON CONFLICT (kind, bucket, k1, k2, k3) DO UPDATE SET {}",
        sets.join(", ")
    )
}

/// A delta's values in [`all_columns`]' order.
pub fn row_values(key: &Key, delta: &Delta) -> Vec<super::Column> {
    use super::Column::{Integer, Text};
    let mut values = vec![
        Integer(Some(key.kind)),
        Integer(Some(key.bucket)),
        Text(Some(key.k1.clone())),
        Text(Some(key.k2.clone())),
        Text(Some(key.k3.clone())),
    ];
    values.extend(delta.counts.iter().map(|c| Integer(Some(*c))));
    values.extend([
        Integer(delta.added_wait),
        Integer(Some(i64::from(delta.dirty_when_new()))),
        Integer(delta.removed_wait),
    ]);
    values
}

/// The calls of a plan's filters with no start time: one count.
pub fn undated_query(plan: &Plan) -> super::Statement {
    let undated = Plan {
        segments: vec![Segment {
            kind: KIND_LINE,
            lo: UNDATED,
            hi: UNDATED + 1,
        }],
        ..plan.clone()
    };
    let mut args = Vec::new();
    let rows = plan_rows(&undated, &mut args);
    super::Statement {
        sql: format!("SELECT CAST(COALESCE(SUM(calls), 0) AS BIGINT) FROM {rows}"),
        args,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hcm() -> jiff::tz::TimeZone {
        jiff::tz::TimeZone::get("Asia/Ho_Chi_Minh").unwrap()
    }

    #[test]
    fn settings_round_trip() {
        let th = Thresholds {
            short_abandon_seconds: 7,
            service_level_seconds: 30,
        };
        assert_eq!(parse_settings(&settings_value(&th)), Some(th));
        assert_eq!(parse_settings("v2 whatever"), None);
    }

    #[test]
    fn a_plan_reads_the_whole_hours_and_counts_the_ends_from_calls() {
        let filter = CallFilter {
            from: Some(7_200 + 60),
            to: Some(5 * 3_600 + 10),
            ..CallFilter::default()
        };
        let plan = plan(&filter, GroupBy::Day, &hcm(), Some(i64::MAX)).unwrap();
        assert_eq!(
            plan.segments,
            vec![Segment {
                kind: KIND_TOTAL,
                lo: 3 * 3_600,
                hi: 5 * 3_600
            }]
        );
        assert_eq!(
            plan.edges,
            vec![(7_260, 3 * 3_600 - 1), (5 * 3_600, 5 * 3_600 + 10)]
        );
        // A range within an hour is all calls.
        let within = CallFilter {
            from: Some(60),
            to: Some(120),
            ..CallFilter::default()
        };
        assert_eq!(
            super::plan(&within, GroupBy::None, &hcm(), Some(i64::MAX)),
            None
        );
        // Aligned ends need no calls.
        let aligned = CallFilter {
            from: Some(0),
            to: Some(3_600 * 24 - 1),
            ..CallFilter::default()
        };
        assert_eq!(
            super::plan(&aligned, GroupBy::None, &hcm(), Some(i64::MAX))
                .unwrap()
                .edges,
            vec![]
        );
    }

    #[test]
    fn filters_the_summary_does_not_hold_count_from_calls() {
        let tz = hcm();
        let with = |f: CallFilter, g| {
            plan(&f, g, &tz, Some(i64::MAX)).map(|p| (p.segments[0].kind, p.keys))
        };
        assert_eq!(
            with(
                CallFilter {
                    phone: Some("+84901".into()),
                    ..CallFilter::default()
                },
                GroupBy::None
            ),
            None
        );
        assert_eq!(
            with(
                CallFilter {
                    hotline: Some("1900".into()),
                    ..CallFilter::default()
                },
                GroupBy::Agent
            ),
            None
        );
        assert_eq!(
            with(
                CallFilter {
                    hotline: Some("1900".into()),
                    status: Some("Missed".into()),
                    ..CallFilter::default()
                },
                GroupBy::Hotline
            ),
            Some((
                KIND_LINE,
                vec![("k1", "1900".into()), ("k3", "missed".into())]
            ))
        );
        assert_eq!(
            with(CallFilter::default(), GroupBy::Agent),
            Some((KIND_AGENT, vec![]))
        );
        // Nepal's hours start at a quarter past a UTC hour.
        let kathmandu = jiff::tz::TimeZone::get("Asia/Kathmandu").unwrap();
        let range = CallFilter {
            from: Some(1_790_000_000),
            to: Some(1_790_100_000),
            ..CallFilter::default()
        };
        assert!(plan(&range, GroupBy::Day, &kathmandu, Some(i64::MAX)).is_none());
        assert!(plan(&range, GroupBy::Agent, &kathmandu, Some(i64::MAX)).is_some());
    }

    fn call(start: Option<i64>, answer: Option<i64>, end: Option<i64>) -> CallFacts {
        CallFacts {
            ended: end.is_some(),
            direction: Some("inbound".into()),
            hotline: Some("1900".into()),
            user_name: Some("an".into()),
            start_time: start,
            answer_time: answer,
            end_time: end,
            ..CallFacts::default()
        }
    }

    #[test]
    fn a_change_that_keeps_the_bounds_leaves_the_row_clean() {
        let th = Thresholds::default();
        let mut deltas = Deltas::new(&hcm(), Some(i64::MAX));
        let ringing = call(Some(100), None, None);
        let ended = call(Some(100), Some(110), Some(200));
        deltas.record(Some(&ringing), &ended, &th);
        for (_, d) in deltas.into_sorted() {
            assert_eq!(d.removed_wait, None);
            assert_eq!(d.counts[0], 0, "the call was already counted");
        }
        // A late answer time shortens the ring of an ended call: the longest wait it held may
        // no longer be one.
        let mut deltas = Deltas::new(&hcm(), Some(i64::MAX));
        let unanswered = call(Some(100), None, Some(200));
        deltas.record(Some(&unanswered), &ended, &th);
        let line = deltas
            .into_sorted()
            .into_iter()
            .find(|(k, _)| k.kind == KIND_LINE && k.k3.is_empty())
            .unwrap();
        assert_eq!(line.1.removed_wait, Some(100));
        assert_eq!(line.1.added_wait, Some(10));
        assert!(line.1.dirty_when_new());
    }

    #[test]
    fn an_undated_call_counts_once_by_line_and_moves_when_dated() {
        let th = Thresholds::default();
        let mut deltas = Deltas::new(&hcm(), Some(i64::MAX));
        let undated = call(None, None, None);
        deltas.record(None, &undated, &th);
        let rows = deltas.into_sorted();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].0.kind, rows[0].0.bucket), (KIND_LINE, UNDATED));
        let mut deltas = Deltas::new(&hcm(), Some(i64::MAX));
        deltas.record(Some(&undated), &call(Some(7_300), None, None), &th);
        let rows = deltas.into_sorted();
        let undated_row = rows.iter().find(|(k, _)| k.bucket == UNDATED).unwrap();
        assert_eq!(undated_row.1.counts[0], -1);
        let dated: Vec<_> = rows.iter().filter(|(k, _)| k.bucket == 7_200).collect();
        assert_eq!(dated.len(), 3, "by agent, by line and in all");
        // And by day (Saigon was UTC+8 in 1970: the day from 1970-01-01T00:00+08:00).
        let days: Vec<_> = rows.iter().filter(|(k, _)| k.bucket == -28_800).collect();
        assert_eq!(days.len(), 2, "by agent and by line, per day");
        assert!(dated.iter().all(|(_, d)| d.counts[0] == 1));
    }

    fn local(tz: &jiff::tz::TimeZone, d: i8, h: i8, m: i8) -> i64 {
        jiff::civil::date(2025, 11, d)
            .at(h, m, 0, 0)
            .to_zoned(tz.clone())
            .unwrap()
            .timestamp()
            .as_second()
    }

    /// A range's whole local days are read from the rows by day, the hours around them from
    /// the rows by hour, and the minutes around those from the calls.
    #[test]
    fn a_plan_reads_whole_days_from_the_rows_by_day() {
        let tz = hcm();
        let at = |d, h, m| local(&tz, d, h, m);
        let ragged = CallFilter {
            from: Some(at(10, 9, 17)),
            to: Some(at(13, 15, 42)),
            ..CallFilter::default()
        };
        let p = plan(&ragged, GroupBy::Agent, &tz, Some(i64::MAX)).unwrap();
        let segment = |kind, lo, hi| Segment { kind, lo, hi };
        assert_eq!(
            p.segments,
            vec![
                segment(KIND_AGENT, at(10, 10, 0), at(11, 0, 0)),
                segment(KIND_AGENT_DAY, at(11, 0, 0), at(13, 0, 0)),
                segment(KIND_AGENT, at(13, 0, 0), at(13, 15, 0)),
            ]
        );
        assert_eq!(
            p.edges,
            vec![
                (at(10, 9, 17), at(10, 10, 0) - 1),
                (at(13, 15, 0), at(13, 15, 42))
            ]
        );
        // Days alone, with a filter: by line.
        let days = CallFilter {
            from: Some(at(10, 0, 0)),
            to: Some(at(17, 0, 0) - 1),
            hotline: Some("1900".into()),
            ..CallFilter::default()
        };
        let p = plan(&days, GroupBy::Hotline, &tz, Some(i64::MAX)).unwrap();
        assert_eq!(
            p.segments,
            vec![segment(KIND_LINE_DAY, at(10, 0, 0), at(17, 0, 0))]
        );
        // No filter by time: the hours in all; by weekday: the days.
        let all = CallFilter {
            hotline: None,
            ..days.clone()
        };
        for (group_by, kind) in [
            (GroupBy::Hour, KIND_TOTAL),
            (GroupBy::HourOfDay, KIND_TOTAL),
            (GroupBy::Weekday, KIND_LINE_DAY),
            (GroupBy::Day, KIND_LINE_DAY),
            (GroupBy::None, KIND_LINE_DAY),
        ] {
            let p = plan(&all, group_by, &tz, Some(i64::MAX)).unwrap();
            assert_eq!(p.segments.len(), 1, "{group_by:?}");
            assert_eq!(p.segments[0].kind, kind, "{group_by:?}");
        }
        // Day rows of another zone are not this zone's days; an open range has no whole days.
        let p = plan(&all, GroupBy::None, &tz, None).unwrap();
        assert_eq!(
            p.segments,
            vec![segment(KIND_TOTAL, at(10, 0, 0), at(17, 0, 0))]
        );
        // The days not folded yet are read by hour.
        let p = plan(&all, GroupBy::None, &tz, Some(at(15, 0, 0))).unwrap();
        assert_eq!(
            p.segments,
            vec![
                segment(KIND_LINE_DAY, at(10, 0, 0), at(15, 0, 0)),
                segment(KIND_TOTAL, at(15, 0, 0), at(17, 0, 0)),
            ]
        );
        let open = CallFilter {
            to: None,
            ..all.clone()
        };
        assert_eq!(
            plan(&open, GroupBy::None, &tz, Some(i64::MAX))
                .unwrap()
                .segments
                .len(),
            1
        );
        // Less than a day: hours.
        let short = CallFilter {
            from: Some(at(10, 6, 0)),
            to: Some(at(11, 5, 0) - 1),
            ..CallFilter::default()
        };
        assert_eq!(
            plan(&short, GroupBy::None, &tz, Some(i64::MAX))
                .unwrap()
                .segments,
            vec![segment(KIND_TOTAL, at(10, 6, 0), at(11, 5, 0))]
        );
    }

    /// Days in a zone with daylight saving (23 and 25 hours) are whole hours; days in a zone a
    /// quarter past the hour are not, and have no rows by day.
    #[test]
    fn days_are_rows_only_when_they_are_whole_hours() {
        let berlin = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
        // 2025-10-26 is 25 hours long in Berlin.
        let day = jiff::civil::date(2025, 10, 26)
            .to_zoned(berlin.clone())
            .unwrap()
            .timestamp()
            .as_second();
        assert_eq!(next_day(&berlin, day), Some(day + 25 * 3_600));
        assert_eq!(day_of_hour(&berlin, day + 24 * 3_600), Some(day));
        assert_eq!(
            day_of_hour(&berlin, day + 25 * 3_600),
            Some(day + 25 * 3_600)
        );
        let kathmandu = jiff::tz::TimeZone::get("Asia/Kathmandu").unwrap();
        assert_eq!(day_of_hour(&kathmandu, 1_790_002_800), None);
        assert_eq!(
            whole_days(&kathmandu, 1_790_002_800, 1_790_002_800 + 9 * 86_400),
            None
        );
        let mut deltas = Deltas::new(&kathmandu, Some(i64::MAX));
        deltas.record(
            None,
            &call(Some(1_790_002_900), None, None),
            &Thresholds::default(),
        );
        assert!(
            deltas
                .rows
                .keys()
                .all(|k| !matches!(k.kind, KIND_AGENT_DAY | KIND_LINE_DAY))
        );
    }

    /// A day not folded yet gets no row by day: its hours count it until it is folded.
    #[test]
    fn only_folded_days_get_rows_by_day() {
        let tz = hcm();
        let day = local(&tz, 10, 0, 0);
        let th = Thresholds::default();
        let by_day = |until| {
            let mut deltas = Deltas::new(&tz, until);
            deltas.record(None, &call(Some(day + 9 * 3_600), None, None), &th);
            let mut kinds: Vec<i64> = deltas.rows.keys().map(|k| k.kind).collect();
            kinds.sort();
            kinds
        };
        assert_eq!(by_day(Some(day + 86_400)), vec![1, 2, 3, 4, 5]);
        assert_eq!(by_day(Some(day)), vec![1, 2, 5]);
        assert_eq!(by_day(None), vec![1, 2, 5]);
        // Folding: the days from the first to `until`, two statements a day, then the mark.
        let folds = fold_days(&tz, day + 5_000, day + 3 * 86_400, UPSERT_META);
        assert_eq!(folds.len(), 1 + 3 * 2 + 1);
        assert_eq!(
            fold_due(&tz, day + 3 * 86_400 + 60, Some(day + 3 * 86_400)),
            None
        );
        assert_eq!(
            fold_due(&tz, day + 4 * 86_400 + 60, Some(day + 3 * 86_400)),
            Some(day + 4 * 86_400)
        );
    }
}
