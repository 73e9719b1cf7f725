//! Reports: a date range, the KPI tiles of `/api/stats`, calls and answer rate per day or hour
//! (an SVG drawn by the server), an hour-of-day × weekday heat map, tables per agent and per
//! hotline, and the range's calls as CSV. Every number is `/api/stats`'s own, read through its
//! handler.

use axum::Extension;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::{Ctx, layout, urlencode};
use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::stats::StatsView;
use crate::report::stats::{Group, GroupBy};

/// The query parameters of the page (dates, not call data: they may be in the URL).
pub const PARAMS: &[&str] = &["from", "to", "by"];

async fn stats(
    state: &AppState,
    from: &str,
    to: &str,
    group_by: &str,
) -> Result<StatsView, ApiError> {
    let params = vec![
        ("from".to_string(), from.to_string()),
        ("to".to_string(), to.to_string()),
        ("group_by".to_string(), group_by.to_string()),
    ];
    Ok(
        crate::api::stats::stats(State(state.clone()), Ok(Query(params)))
            .await?
            .0,
    )
}

#[utoipa::path(get, path = "/reports", tag = "dashboard",
    params(("from" = Option<String>, Query, description = "First day, YYYY-MM-DD (default: 6 days before `to`)"),
        ("to" = Option<String>, Query, description = "Last day, YYYY-MM-DD (default: today)"),
        ("by" = Option<String>, Query, description = "`day` (default) or `hour`: the chart's step")),
    responses((status = 200, description = "Reports for the range", content_type = "text/html", body = String),
        (status = 400, description = "A date is wrong", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the sign-in page")))]
pub async fn reports(
    State(state): State<AppState>,
    Extension(ctx): Extension<Ctx>,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return super::pages::error_page(&ctx, ApiError::parameter("query", "not a query string"));
    };
    let mut range: std::collections::HashMap<&str, String> = Default::default();
    for (name, value) in &query {
        let Some(known) = PARAMS.iter().find(|p| **p == name) else {
            return super::pages::error_page(
                &ctx,
                ApiError::parameter(
                    name,
                    format!("unknown parameter; known: {}", PARAMS.join(", ")),
                ),
            );
        };
        if !value.is_empty() {
            range.insert(known, value.clone());
        }
    }
    let today = jiff::Timestamp::now().to_zoned(state.tz.clone()).date();
    let to = range.remove("to").unwrap_or_else(|| today.to_string());
    let from = range.remove("from").unwrap_or_else(|| {
        to.parse::<jiff::civil::Date>()
            .ok()
            .and_then(|d| d.checked_sub(jiff::Span::new().days(6)).ok())
            .unwrap_or(today)
            .to_string()
    });
    let by = match range.remove("by").as_deref() {
        None | Some("day") => "day",
        Some("hour") => "hour",
        Some(_) => {
            return super::pages::error_page(&ctx, ApiError::parameter("by", "day or hour"));
        }
    };
    match content(&state, &ctx, &from, &to, by).await {
        Ok(content) => layout(&ctx, ctx.t("nav.reports"), "nav.reports", content).into_response(),
        Err(e) => super::pages::error_page(&ctx, e),
    }
}

async fn content(
    state: &AppState,
    ctx: &Ctx,
    from: &str,
    to: &str,
    by: &str,
) -> Result<Markup, ApiError> {
    // Three reads at once: by hour (the whole range, the chart by day and the heat map are
    // folded from it), by agent and by hotline.
    let hourly = async {
        let params = vec![
            ("from".to_string(), from.to_string()),
            ("to".to_string(), to.to_string()),
            ("group_by".to_string(), "hour".to_string()),
        ];
        let mut views = crate::api::stats::stats_and_folds(
            state,
            Ok(Query(params)),
            &[GroupBy::None, GroupBy::Day],
        )
        .await?;
        let day = views.pop().expect("three views");
        let total = views.pop().expect("three views");
        let hour = views.pop().expect("three views");
        Ok::<_, ApiError>((hour, total, day))
    };
    let ((hours, total, days), agents, hotlines) = tokio::try_join!(
        hourly,
        stats(state, from, to, "agent"),
        stats(state, from, to, "hotline"),
    )?;
    let series = if by == "hour" { &hours } else { &days };
    let g = total.groups.first();
    let l = ctx.lang;
    let int = |f: fn(&Group) -> u64| l.int(g.map_or(0, f) as i64);
    let secs = |v: Option<f64>| v.map_or_else(|| "–".to_string(), |s| l.duration(s.round() as i64));
    let csv = format!(
        "/api/export/calls?format=csv&bom=true&from={}&to={}",
        urlencode(from),
        urlencode(to)
    );
    Ok(html! {
        h1 { (ctx.t("nav.reports")) }
        form.search #range method="get" action="/reports" {
            label { (ctx.t("calls.from")) input #from name="from" type="date" value=(from); }
            label { (ctx.t("calls.to")) input #to name="to" type="date" value=(to); }
            label { (ctx.t("rp.by"))
                select #by name="by" {
                    option value="day" selected[by == "day"] { (ctx.t("rp.day")) }
                    option value="hour" selected[by == "hour"] { (ctx.t("rp.hour")) }
                }
            }
            button type="submit" #show { (ctx.t("rp.show")) }
            a.button #csv href=(csv) download { (ctx.t("rp.csv")) }
        }
        section.kpis #tiles aria-label=(ctx.t("rp.tiles")) {
            (tile("calls", ctx.t("kpi.calls"), int(|g| g.calls)))
            (tile("answered", ctx.t("kpi.answered"), int(|g| g.answered)))
            (tile("unanswered", ctx.t("kpi.missed"), int(|g| g.unanswered)))
            (tile("answer_rate", ctx.t("kpi.answer_rate"), l.rate(g.and_then(|g| g.answer_rate))))
            (tile("abandon_rate", ctx.t("rp.abandon_rate"), l.rate(g.and_then(|g| g.abandon_rate))))
            (tile("service_level", ctx.t("rp.service_level"), l.rate(g.and_then(|g| g.service_level))))
            (tile("asa_seconds", ctx.t("rp.asa"), secs(g.and_then(|g| g.asa_seconds))))
            (tile("aht_seconds", ctx.t("rp.aht"), secs(g.and_then(|g| g.aht_seconds))))
            (tile("undated", ctx.t("rp.undated"), l.int(total.undated as i64)))
        }
        section {
            h2 { (ctx.t("rp.chart")) }
            (chart(ctx, &series.groups))
        }
        section {
            h2 { (ctx.t("rp.heatmap")) }
            (heat_map(ctx, &hours.groups))
        }
        section {
            h2 { (ctx.t("rp.by_agent")) }
            (table(ctx, "agents", ctx.t("col.agent"), &agents.groups))
        }
        section {
            h2 { (ctx.t("rp.by_hotline")) }
            (table(ctx, "hotlines", ctx.t("col.hotline"), &hotlines.groups))
        }
    })
}

fn tile(name: &str, label: &str, value: String) -> Markup {
    html! {
        div.kpi data-figure=(name) {
            span.label { (label) }
            span.value { (value) }
        }
    }
}

/// Calls per bucket as bars, the answer rate as a line (its own scale, 0–100 %).
fn chart(ctx: &Ctx, groups: &[Group]) -> Markup {
    let (w, h, pad) = (900.0_f64, 220.0_f64, 28.0_f64);
    let n = groups.len().max(1) as f64;
    let max = groups.iter().map(|g| g.calls).max().unwrap_or(0).max(1) as f64;
    let step = (w - 2.0 * pad) / n;
    let y = |v: f64| h - pad - v * (h - 2.0 * pad);
    let points: Vec<String> = groups
        .iter()
        .enumerate()
        .filter_map(|(i, g)| {
            g.answer_rate
                .map(|r| format!("{:.1},{:.1}", pad + step * (i as f64 + 0.5), y(r)))
        })
        .collect();
    let label_every = (groups.len() / 8).max(1);
    html! {
        svg.chart #chart viewBox={"0 0 " (w) " " (h)} role="img" aria-label=(ctx.t("rp.chart")) {
            line x1=(pad) y1=(y(0.0)) x2=(w - pad) y2=(y(0.0)) stroke="#888" {}
            @for (i, g) in groups.iter().enumerate() {
                @let bh = g.calls as f64 / max * (h - 2.0 * pad);
                rect x=(format!("{:.1}", pad + step * i as f64 + step * 0.1)) y=(format!("{:.1}", y(0.0) - bh))
                    width=(format!("{:.1}", step * 0.8)) height=(format!("{:.1}", bh)) fill="#0b57a4" {
                    title { (g.key.as_deref().unwrap_or("")) ": " (ctx.lang.int(g.calls as i64)) " · " (ctx.lang.rate(g.answer_rate)) }
                }
                @if i % label_every == 0 {
                    text x=(format!("{:.1}", pad + step * (i as f64 + 0.5))) y=(h - 8.0) font-size="11" text-anchor="middle" fill="#333" {
                        (short_key(g.key.as_deref().unwrap_or("")))
                    }
                }
            }
            @if !points.is_empty() {
                polyline points=(points.join(" ")) fill="none" stroke="#d97706" stroke-width="2.5" {}
            }
            text x=(pad) y="14" font-size="12" fill="#0b57a4" { (ctx.t("kpi.calls")) " (" (ctx.t("rp.max")) " " (ctx.lang.int(max as i64)) ")" }
            text x=(w - pad) y="14" font-size="12" fill="#a35200" text-anchor="end" { (ctx.t("kpi.answer_rate")) " (0–100%)" }
        }
    }
}

/// `2024-01-13` → `13/01`, `2024-01-13T09:00` → `13/01 09h`.
fn short_key(key: &str) -> String {
    let (date, hour) = key.split_once('T').unwrap_or((key, ""));
    let parts: Vec<&str> = date.split('-').collect();
    let day = match parts.as_slice() {
        [_, m, d] => format!("{d}/{m}"),
        _ => date.to_string(),
    };
    if hour.is_empty() {
        day
    } else {
        format!("{day} {}h", &hour[..2.min(hour.len())])
    }
}

/// Calls by weekday (rows) and hour of day (columns), from the hourly series: a cell's shade is
/// its share of the busiest cell.
fn heat_map(ctx: &Ctx, hours: &[Group]) -> Markup {
    let mut cells = [[0u64; 24]; 7];
    for g in hours {
        let Some(key) = g.key.as_deref() else {
            continue;
        };
        let Some((date, hour)) = key.split_once('T') else {
            continue;
        };
        let (Ok(date), Ok(hour)) = (
            date.parse::<jiff::civil::Date>(),
            hour.get(..2).unwrap_or("").parse::<usize>(),
        ) else {
            continue;
        };
        let weekday = date.weekday().to_monday_zero_offset() as usize;
        if hour < 24 {
            cells[weekday][hour] += g.calls;
        }
    }
    let max = cells.iter().flatten().copied().max().unwrap_or(0).max(1) as f64;
    let days = [
        "rp.mon", "rp.tue", "rp.wed", "rp.thu", "rp.fri", "rp.sat", "rp.sun",
    ];
    let (cw, ch, left, top) = (34.0_f64, 24.0_f64, 44.0_f64, 18.0_f64);
    html! {
        svg.heatmap #heatmap viewBox={"0 0 " (left + cw * 24.0) " " (top + ch * 7.0)} role="img" aria-label=(ctx.t("rp.heatmap")) {
            @for hour in (0..24).step_by(3) {
                text x=(left + cw * hour as f64 + cw / 2.0) y="12" font-size="11" text-anchor="middle" fill="#333" { (hour) "h" }
            }
            @for (d, key) in days.iter().enumerate() {
                text x="0" y=(top + ch * d as f64 + 16.0) font-size="11" fill="#333" { (ctx.lang.t(key)) }
                @for hour in 0..24 {
                    @let v = cells[d][hour];
                    @let shade = v as f64 / max;
                    rect x=(left + cw * hour as f64) y=(top + ch * d as f64) width=(cw - 2.0) height=(ch - 2.0)
                        fill=(format!("rgb({},{},{})", (240.0 - 229.0 * shade) as u8, (244.0 - 157.0 * shade) as u8, (250.0 - 86.0 * shade) as u8)) {
                        title { (ctx.lang.t(key)) " " (hour) "h: " (ctx.lang.int(v as i64)) }
                    }
                }
            }
        }
    }
}

/// A table of groups (per agent, per hotline).
fn table(ctx: &Ctx, id: &str, key_label: &str, groups: &[Group]) -> Markup {
    let l = ctx.lang;
    html! {
        table.figures id=(id) {
            thead { tr {
                th { (key_label) } th { (ctx.t("kpi.calls")) } th { (ctx.t("kpi.answered")) }
                th { (ctx.t("kpi.missed")) } th { (ctx.t("kpi.answer_rate")) } th { (ctx.t("rp.aht")) }
                th { (ctx.t("rp.talk_total")) }
            } }
            tbody {
                @for g in groups {
                    tr {
                        td { (g.key.as_deref().unwrap_or("–")) }
                        td { (l.int(g.calls as i64)) }
                        td { (l.int(g.answered as i64)) }
                        td { (l.int(g.unanswered as i64)) }
                        td { (l.rate(g.answer_rate)) }
                        td { (g.aht_seconds.map_or_else(|| "–".to_string(), |s| l.duration(s.round() as i64))) }
                        td { (l.duration(g.talk_seconds_total)) }
                    }
                }
            }
        }
    }
}
