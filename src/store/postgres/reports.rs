//! The figures' reads on PostgreSQL.

use async_trait::async_trait;
use futures_util::TryStreamExt;
use tokio_postgres::types::ToSql;

use super::{PgStore, numbered, sql_param};
use crate::report::stats::StatsBuilder;
use crate::store::reports::{Reports, dated_facts_query, read_call_facts, undated_count_query};
use crate::store::{CallFilter, StoreError};

#[async_trait]
impl Reports for PgStore {
    async fn stats(
        &self,
        filter: &CallFilter,
        mut stats: StatsBuilder,
    ) -> Result<StatsBuilder, StoreError> {
        let dated = dated_facts_query(filter);
        let undated = undated_count_query(filter);
        let (dated_sql, undated_sql) = (numbered(&dated.sql), numbered(&undated.sql));
        self.read(async |client| {
            let params: Vec<&(dyn ToSql + Sync)> = dated.args.iter().map(sql_param).collect();
            let mut rows = std::pin::pin!(client.query_raw(&dated_sql, params).await?);
            while let Some(row) = rows.try_next().await? {
                stats.add(&read_call_facts(&row)?);
            }
            let params: Vec<&(dyn ToSql + Sync)> = undated.args.iter().map(sql_param).collect();
            let n: i64 = client.query_one(&undated_sql, &params).await?.try_get(0)?;
            stats.add_undated(n as u64);
            Ok(stats)
        })
        .await
    }
}
