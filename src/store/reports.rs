//! What the figures read from the store: the columns of the call records they are computed
//! from, selected with the call listing's filters.

use async_trait::async_trait;

use super::callbacks::{CallbackCursor, CallbackFilter, CallbackPage};
use super::{CallFilter, RowColumns, Statement, StoreError, call_filter_terms};
use crate::report::callbacks::Item;
use crate::report::stats::{CallFacts, StatsBuilder};

/// The columns [`read_call_facts`] reads, in its order.
const FACT_COLUMNS: &str = "phase, call_status, direction, destination_number, hotline, \
    user_name, start_time, answer_time, end_time, holding_duration";

/// Reads for the call-centre figures.
#[async_trait]
pub trait Reports: Send + Sync {
    /// Counts every call matching `filter` into `stats`: the calls whose start time is in the
    /// filter's range one by one, and those with no start time (matching the other filters,
    /// whatever the range) as undated.
    async fn stats(
        &self,
        filter: &CallFilter,
        stats: StatsBuilder,
    ) -> Result<StatsBuilder, StoreError>;

    /// The callback worklist's items matching `filter`, ordered by first miss, `limit` at most,
    /// after `cursor`.
    async fn callbacks(
        &self,
        filter: &CallbackFilter,
        limit: usize,
        cursor: Option<CallbackCursor>,
    ) -> Result<CallbackPage, StoreError>;

    /// Closes an open item by hand at `at` (Unix seconds), `by` a role, and answers it as it is now; a
    /// closed item is answered as it is. `None` when no item has that id.
    async fn close_callback(
        &self,
        id: &str,
        note: Option<String>,
        by: Option<String>,
        at: i64,
    ) -> Result<Option<Item>, StoreError>;
}

/// The dated calls matching `filter`, with [`FACT_COLUMNS`].
pub fn dated_facts_query(filter: &CallFilter) -> Statement {
    let (mut terms, args) = call_filter_terms(filter, None);
    terms.push("start_time IS NOT NULL");
    Statement {
        sql: format!(
            "SELECT {FACT_COLUMNS} FROM calls WHERE {}",
            terms.join(" AND ")
        ),
        args,
    }
}

/// Every call, dated or not, with [`FACT_COLUMNS`] (building the figures' summary).
pub fn all_facts_sql() -> String {
    format!("SELECT {FACT_COLUMNS} FROM calls")
}

/// Rows of [`dated_facts_chunk`] per statement.
pub const FACTS_CHUNK: usize = 20_000;

/// A chunk of [`dated_facts_query`]'s rows, in (start time, seq) order after `after`: the scan
/// as a series of short statements (each its own snapshot), so that a long scan neither holds one
/// snapshot for seconds (SQLite's WAL cannot restart under it) nor outlives its request by more
/// than a chunk. The start time's index leads the scan (the other conditions are checked on the
/// rows), so that each chunk continues the same walk rather than sorting the matches again.
/// Its rows are [`FACT_COLUMNS`] then `seq`.
pub fn dated_facts_chunk(filter: &CallFilter, after: Option<(i64, i64)>, rows: usize) -> Statement {
    // After a chunk, `from` is implied by where it ended; given too, it would be the bound the
    // database walks from, and every chunk would walk again from `from`.
    let filter = CallFilter {
        from: if after.is_some() { None } else { filter.from },
        ..filter.clone()
    };
    let (terms, mut args) = call_filter_terms(&filter, None);
    let mut sql_terms: Vec<String> = terms
        .iter()
        .map(|t| {
            if t.starts_with("start_time") {
                t.to_string()
            } else {
                super::listing::unindexed_sql(t)
            }
        })
        .collect();
    sql_terms.push("start_time IS NOT NULL".into());
    if let Some((start, seq)) = after {
        sql_terms.push("(start_time, seq) > (?, ?)".into());
        args.push(super::Column::Integer(Some(start)));
        args.push(super::Column::Integer(Some(seq)));
    }
    args.push(super::Column::Integer(Some(rows as i64)));
    Statement {
        sql: format!(
            "SELECT {FACT_COLUMNS}, seq FROM calls WHERE {} ORDER BY start_time, seq LIMIT ?",
            sql_terms.join(" AND ")
        ),
        args,
    }
}

/// How many calls match `filter` but for its range, and have no start time.
pub fn undated_count_query(filter: &CallFilter) -> Statement {
    let undated = CallFilter {
        from: None,
        to: None,
        ..filter.clone()
    };
    let (mut terms, args) = call_filter_terms(&undated, None);
    terms.push("start_time IS NULL");
    Statement {
        sql: format!("SELECT count(*) FROM calls WHERE {}", terms.join(" AND ")),
        args,
    }
}

/// A row of [`dated_facts_query`].
pub fn read_call_facts(row: &impl RowColumns) -> Result<CallFacts, StoreError> {
    Ok(CallFacts {
        ended: row.required_text(0)? == crate::model::Phase::Ended.as_str(),
        call_status: row.text(1)?,
        direction: row.text(2)?,
        destination_number: row.text(3)?,
        hotline: row.text(4)?,
        user_name: row.text(5)?,
        start_time: row.integer(6)?,
        answer_time: row.integer(7)?,
        end_time: row.integer(8)?,
        holding_duration: row.integer(9)?,
    })
}
