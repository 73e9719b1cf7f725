//! `GET /api/stats`: the call-centre figures (see [`crate::report::stats`]).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::Serialize;

use super::AppState;
use super::calls::{CALL_FILTERS, Params, call_filter};
use super::error::ApiError;
use super::openapi::{CallFilters, ErrorBody, StatsQuery};
use crate::model::time::format_local;
use crate::report::stats::{Group, GroupBy, StatsBuilder};

/// The figures, one group per key (see the README's "Definitions").
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StatsView {
    /// The range counted: `from`/`to` as given, else the first and last call's start.
    pub from: Option<String>,
    pub to: Option<String>,
    pub time_zone: String,
    pub short_abandon_seconds: u64,
    pub service_level_seconds: u64,
    pub groups: Vec<Group>,
    /// Calls matching the other filters with no start time, whatever the range.
    pub undated: u64,
}

/// `GET /api/stats?from&to&group_by&<any /api/calls filter>`.
#[utoipa::path(get, path = "/stats", tag = "figures",
    description = "Call-centre figures from the call records, in the configured zone. `calls` and `in_progress` count every call of the period; every other figure counts ended calls only.",
    params(CallFilters, StatsQuery),
    responses((status = 200, body = StatsView), (status = 400, description = "A parameter is wrong", body = ErrorBody)))]
pub async fn stats(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<StatsView>, ApiError> {
    let mut views = stats_and_folds(&state, query, &[]).await?;
    Ok(Json(views.remove(0)))
}

/// What `GET /api/stats` answers for `query`, followed by the same figures grouped by each of
/// `folds`, folded from its groups rather than read again (see [`StatsBuilder::regrouped`]):
/// `folds` needs `group_by=hour`, and may hold `none`, `day`, `hour_of_day` and `weekday`.
pub async fn stats_and_folds(
    state: &AppState,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    folds: &[GroupBy],
) -> Result<Vec<StatsView>, ApiError> {
    let known: Vec<&str> = CALL_FILTERS.iter().chain(&["group_by"]).copied().collect();
    let params = Params::new(query, &known)?;
    let group_by = match params.get("group_by") {
        None => GroupBy::None,
        Some(g) => GroupBy::parse(g).ok_or_else(|| {
            ApiError::parameter("group_by", format!("must be one of {}", GroupBy::NAMES))
        })?,
    };
    let filter = call_filter(&params, &state.tz)?;
    if let (Some(from), Some(to)) = (filter.from, filter.to)
        && from > to
    {
        return Err(ApiError::parameter("to", "must not be before from"));
    }
    if let (Some(from), Some(to)) = (filter.from, filter.to) {
        group_by
            .check_range(from, to)
            .map_err(|e| ApiError::parameter("group_by", e.to_string()))?;
    }
    let builder = StatsBuilder::new(group_by, state.thresholds, state.tz.clone());
    let builder = state.store.stats(&filter, builder).await?;
    let mut builders = Vec::with_capacity(1 + folds.len());
    for fold in folds {
        builders.push(builder.regrouped(*fold).ok_or_else(|| {
            ApiError::parameter("group_by", "cannot be folded into the groupings asked for")
        })?);
    }
    builders.insert(0, builder);
    builders
        .into_iter()
        .map(|builder| view(state, &filter, builder))
        .collect()
}

/// The answer of `builder`, counted for `filter`.
fn view(
    state: &AppState,
    filter: &crate::store::CallFilter,
    builder: StatsBuilder,
) -> Result<StatsView, ApiError> {
    let (first, last) = builder.range();
    let (from, to) = (filter.from.or(first), filter.to.or(last));
    let undated = builder.undated();
    let groups = builder.finish(filter.from, filter.to).map_err(|e| {
        let range = match (&from, &to) {
            (Some(f), Some(t)) => format!(
                " (the calls run from {} to {})",
                format_local(*f, &state.tz),
                format_local(*t, &state.tz)
            ),
            _ => String::new(),
        };
        ApiError::parameter("group_by", format!("{e}{range}"))
    })?;
    Ok(StatsView {
        from: from.map(|s| format_local(s, &state.tz)),
        to: to.map(|s| format_local(s, &state.tz)),
        time_zone: state.tz_name.to_string(),
        short_abandon_seconds: state.thresholds.short_abandon_seconds,
        service_level_seconds: state.thresholds.service_level_seconds,
        groups,
        undated,
    })
}
