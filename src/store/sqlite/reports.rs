//! The figures' reads on SQLite.

use async_trait::async_trait;
use rusqlite::params_from_iter;

use super::{SqliteStore, sql_value};
use crate::report::stats::StatsBuilder;
use crate::store::reports::{Reports, dated_facts_query, read_call_facts, undated_count_query};
use crate::store::{CallFilter, StoreError};

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
}
