//! The dashboard's pages. Each reads through the JSON API's own handlers (the same filters, the
//! same figures) and renders HTML; every value from Alohub goes through maud, which escapes it.

use axum::Extension;
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::{Ctx, layout, urlencode};
use crate::api::AppState;
use crate::api::error::ApiError;
use crate::model::view::CallView;

type Params = Vec<(String, String)>;

/// A page for an API error: a 4xx says what was wrong, the rest "try again".
pub(super) fn error_page(ctx: &Ctx, error: ApiError) -> Response {
    let text = match &error {
        ApiError::NotFound => ctx.t("call.not_found").to_string(),
        ApiError::InvalidParameter { .. } => error.to_string(),
        _ => ctx.t("error.title").to_string(),
    };
    let status = error.into_response().status();
    let body = layout(
        ctx,
        ctx.t("error.title"),
        "",
        html! { h1 { (ctx.t("error.title")) } p.error role="alert" { (text) } },
    );
    (status, body).into_response()
}

/// Today's date in the configured zone, and the day before.
fn today(state: &AppState) -> (String, String) {
    let now = jiff::Timestamp::now().to_zoned(state.tz.clone()).date();
    let yesterday = now.yesterday().unwrap_or(now);
    (now.to_string(), yesterday.to_string())
}

/// The next midnight in the configured zone (Unix milliseconds): the Live page's "today"
/// starts again then.
fn next_midnight(state: &AppState) -> i64 {
    let now = jiff::Timestamp::now();
    now.to_zoned(state.tz.clone())
        .date()
        .tomorrow()
        .ok()
        .and_then(|d| d.to_zoned(state.tz.clone()).ok())
        .map_or(now.as_millisecond() + 86_400_000, |z| {
            z.timestamp().as_millisecond()
        })
}

fn dir_label(ctx: &Ctx, direction: Option<&str>) -> String {
    match direction {
        Some("inbound") => ctx.t("dir.inbound").to_string(),
        Some("outbound") => ctx.t("dir.outbound").to_string(),
        other => other.unwrap_or("").to_string(),
    }
}

/// A `call_status` in the page's language when it is one Alohub sends, else as sent.
fn status_label(ctx: &Ctx, status: Option<&str>) -> String {
    let Some(status) = status else {
        return String::new();
    };
    match status.to_ascii_lowercase().as_str() {
        "answered" => ctx.t("status.answered").to_string(),
        "missed" => ctx.t("status.missed").to_string(),
        "busy" => ctx.t("status.busy").to_string(),
        "failed" => ctx.t("status.failed").to_string(),
        "ringing" => ctx.t("phase.ringing").to_string(),
        _ => status.to_string(),
    }
}

fn phase_label(ctx: &Ctx, phase: &str) -> &'static str {
    match phase {
        "ringing" => ctx.t("phase.ringing"),
        "in_progress" => ctx.t("phase.in_progress"),
        _ => ctx.t("phase.ended"),
    }
}

/// The agent as the figures see one.
fn agent(call: &CallView) -> &str {
    call.user_name
        .as_deref()
        .filter(|u| !u.trim().is_empty())
        .or(call.destination_number.as_deref())
        .unwrap_or("")
}

fn kpi(id: &str, label: &str, value: String) -> Markup {
    html! {
        div.kpi id=(id) {
            span.label { (label) }
            span.value { (value) }
        }
    }
}

/// Live: calls ringing and in progress, the last ended, today's counters; `app.js` keeps them
/// up to date from the live stream.
#[utoipa::path(get, path = "/", tag = "dashboard",
    responses((status = 200, description = "Live: calls now, the last ended, today's counters", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the sign-in page")))]
pub async fn live(State(state): State<AppState>, Extension(ctx): Extension<Ctx>) -> Response {
    match live_content(&state, &ctx).await {
        Ok(content) => layout(&ctx, ctx.t("nav.live"), "nav.live", content).into_response(),
        Err(e) => error_page(&ctx, e),
    }
}

async fn calls_of(state: &AppState, params: &[(&str, &str)]) -> Result<Vec<CallView>, ApiError> {
    let params: Params = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let page = crate::api::calls::list_calls(State(state.clone()), Ok(Query(params))).await?;
    Ok(page.0.items)
}

async fn live_content(state: &AppState, ctx: &Ctx) -> Result<Markup, ApiError> {
    let (today, yesterday) = today(state);
    // Since yesterday: a call that rang days ago and never ended is not "now". All at once.
    let since = [("from", yesterday.as_str()), ("limit", "200")];
    let in_progress = [&[("phase", "in_progress")][..], &since[..]].concat();
    let ringing = [&[("phase", "ringing")][..], &since[..]].concat();
    let day = vec![
        ("from".to_string(), today.clone()),
        ("to".to_string(), today.clone()),
    ];
    let open_items = vec![
        ("state".to_string(), "open".to_string()),
        ("limit".to_string(), "1000".to_string()),
    ];
    // The stream starts after the last change before anything is read: a change that lands
    // meanwhile may be shown twice (the script updates a row in place), never missed.
    let seq = state.store.last_seq().await?;
    let (mut active, ringing, ended, stats, open) = tokio::try_join!(
        calls_of(state, &in_progress),
        calls_of(state, &ringing),
        calls_of(state, &[("phase", "ended"), ("limit", "20")]),
        async {
            Ok(
                crate::api::stats::stats(State(state.clone()), Ok(Query(day)))
                    .await?
                    .0,
            )
        },
        async {
            Ok(
                crate::api::callbacks::list(State(state.clone()), Ok(Query(open_items)))
                    .await?
                    .0,
            )
        },
    )?;
    active.extend(ringing);
    active.sort_by(|a, b| b.start_time.cmp(&a.start_time));
    let group = stats.groups.first();
    let count = |f: fn(&crate::report::stats::Group) -> u64| group.map_or(0, f) as i64;
    let open_count = format!(
        "{}{}",
        ctx.lang.int(open.items.len() as i64),
        if open.next_cursor.is_some() { "+" } else { "" }
    );
    Ok(html! {
        div #live data-since=(seq) data-today=(today) data-midnight=(next_midnight(state)) data-lang=(ctx.lang.code()) {
            section.kpis aria-label=(ctx.t("live.today")) {
                h2 { (ctx.t("live.today")) " " span.status #live-status { (ctx.t("live.connected")) } }
                (kpi("kpi-calls", ctx.t("kpi.calls"), ctx.lang.int(count(|g| g.calls))))
                (kpi("kpi-answered", ctx.t("kpi.answered"), ctx.lang.int(count(|g| g.answered))))
                (kpi("kpi-missed", ctx.t("kpi.missed"), ctx.lang.int(count(|g| g.unanswered))))
                (kpi("kpi-answer-rate", ctx.t("kpi.answer_rate"), ctx.lang.rate(group.and_then(|g| g.answer_rate))))
                (kpi("kpi-open-callbacks", ctx.t("kpi.open_callbacks"), open_count))
            }
            section {
                h2 { (ctx.t("live.now")) }
                table.calls #active {
                    thead { tr {
                        th { (ctx.t("col.caller")) } th { (ctx.t("col.hotline")) } th { (ctx.t("col.agent")) }
                        th { (ctx.t("col.state")) } th { (ctx.t("col.for")) }
                    } }
                    tbody {
                        @for call in &active {
                            tr data-call=(call.call_id) data-phase=(call.phase) data-start=[call.start_time.as_deref()] {
                                td { a href={"/calls/" (urlencode(&call.call_id))} { (call.caller_number.as_deref().unwrap_or("")) } }
                                td { (call.hotline.as_deref().unwrap_or("")) }
                                td { (agent(call)) }
                                td.phase { (phase_label(ctx, call.phase)) }
                                td.for { }
                            }
                        }
                    }
                }
                p.empty #active-empty hidden[!active.is_empty()] { (ctx.t("live.none")) }
            }
            section {
                h2 { (ctx.t("live.recent")) }
                (calls_table(ctx, &ended, "recent"))
            }
        }
    })
}

/// A table of calls, newest first.
fn calls_table(ctx: &Ctx, calls: &[CallView], id: &str) -> Markup {
    html! {
        table.calls id=(id) {
            thead { tr {
                th { (ctx.t("col.start")) } th { (ctx.t("col.caller")) } th { (ctx.t("col.hotline")) }
                th { (ctx.t("col.agent")) } th { (ctx.t("col.direction")) } th { (ctx.t("col.status")) }
                th { (ctx.t("col.talk")) }
            } }
            tbody {
                @for call in calls {
                    tr data-call=(call.call_id) data-phase=(call.phase) {
                        td { a href={"/calls/" (urlencode(&call.call_id))} { (call.start_time.as_deref().map(|t| ctx.lang.time(t)).unwrap_or_default()) } }
                        td { (call.caller_number.as_deref().unwrap_or("")) }
                        td { (call.hotline.as_deref().unwrap_or("")) }
                        td { (agent(call)) }
                        td { (dir_label(ctx, call.direction.as_deref())) }
                        td { (status_label(ctx, call.call_status.as_deref())) }
                        td { (call.talk_seconds.map(|s| ctx.lang.duration(s)).unwrap_or_default()) }
                    }
                }
            }
        }
    }
}

/// The Calls page's search form: what `/api/calls` filters by. It is sent by POST, so that no
/// phone number ends up in a URL (and the logs that keep URLs).
#[derive(Debug, Default, Deserialize)]
pub struct Search {
    #[serde(default)]
    phone: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    hotline: String,
    #[serde(default)]
    agent: String,
    #[serde(default)]
    direction: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    cursor: String,
    #[serde(default)]
    _csrf: String,
}

impl Search {
    fn params(&self) -> Params {
        let mut out = Vec::new();
        for (name, value) in [
            ("phone", &self.phone),
            ("status", &self.status),
            ("hotline", &self.hotline),
            ("agent", &self.agent),
            ("direction", &self.direction),
            ("from", &self.from),
            ("to", &self.to),
            ("cursor", &self.cursor),
        ] {
            let value = value.trim();
            if !value.is_empty() {
                out.push((name.to_string(), value.to_string()));
            }
        }
        out.push(("limit".to_string(), "50".to_string()));
        out
    }
}

/// Calls: the newest calls; the form searches.
#[utoipa::path(get, path = "/calls", tag = "dashboard",
    responses((status = 200, description = "Calls: the newest, and the search form", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the sign-in page")))]
pub async fn calls(State(state): State<AppState>, Extension(ctx): Extension<Ctx>) -> Response {
    calls_page(&state, &ctx, Search::default()).await
}

/// Calls, searched (the form's POST).
#[utoipa::path(post, path = "/calls", tag = "dashboard",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "The `/api/calls` filters (`phone`, `status`, `hotline`, `agent`, `direction`, `from`, `to`), `cursor` and `_csrf`: by POST, so that no phone number is in a URL"),
    responses((status = 200, description = "The calls found", content_type = "text/html", body = String),
        (status = 403, description = "The form's CSRF token is missing or wrong", body = String)))]
pub async fn calls_search(
    State(state): State<AppState>,
    Extension(ctx): Extension<Ctx>,
    Form(search): Form<Search>,
) -> Response {
    if !ctx.session.csrf_matches(&search._csrf) {
        return super::csrf_refused();
    }
    calls_page(&state, &ctx, search).await
}

async fn calls_page(state: &AppState, ctx: &Ctx, search: Search) -> Response {
    let result =
        crate::api::calls::list_calls(State(state.clone()), Ok(Query(search.params()))).await;
    let (page, problem) = match result {
        Ok(page) => (Some(page.0), None),
        Err(e @ ApiError::InvalidParameter { .. }) => (None, Some(e.to_string())),
        Err(e) => return error_page(ctx, e),
    };
    let select = |name: &str, value: &str, options: &[(&str, &str)]| {
        html! {
            select id=(name) name=(name) {
                option value="" { (ctx.t("calls.any")) }
                @for (v, label) in options {
                    option value=(v) selected[*v == value] { (label) }
                }
            }
        }
    };
    let content = html! {
        h1 { (ctx.t("nav.calls")) }
        form.search #search method="post" action="/calls" {
            input type="hidden" name="_csrf" value=(ctx.csrf());
            label { (ctx.t("calls.phone")) input #phone name="phone" type="search" value=(search.phone) inputmode="tel"; }
            label { (ctx.t("calls.status"))
                (select("status", &search.status, &[("answered", ctx.t("status.answered")), ("missed", ctx.t("status.missed")), ("busy", ctx.t("status.busy")), ("failed", ctx.t("status.failed"))])) }
            label { (ctx.t("calls.direction"))
                (select("direction", &search.direction, &[("inbound", ctx.t("dir.inbound")), ("outbound", ctx.t("dir.outbound"))])) }
            label { (ctx.t("calls.hotline")) input #hotline name="hotline" value=(search.hotline); }
            label { (ctx.t("calls.agent")) input #agent name="agent" value=(search.agent); }
            label { (ctx.t("calls.from")) input #from name="from" type="date" value=(search.from); }
            label { (ctx.t("calls.to")) input #to name="to" type="date" value=(search.to); }
            button type="submit" #search-button { (ctx.t("calls.search")) }
        }
        @if let Some(problem) = problem {
            p.error role="alert" { (problem) }
        }
        @if let Some(page) = page {
            @if page.items.is_empty() {
                p.empty { (ctx.t("calls.none")) }
            } @else {
                (calls_table(ctx, &page.items, "results"))
            }
            @if let Some(next) = page.next_cursor {
                form method="post" action="/calls" {
                    input type="hidden" name="_csrf" value=(ctx.csrf());
                    @for (name, value) in search.params().iter().filter(|(n, _)| n != "cursor" && n != "limit") {
                        input type="hidden" name=(name) value=(value);
                    }
                    input type="hidden" name="cursor" value=(next);
                    button type="submit" #next-page { (ctx.t("calls.next")) }
                }
            }
        }
    };
    layout(ctx, ctx.t("nav.calls"), "nav.calls", content).into_response()
}

/// A call: its record, its events (received at, resends, warnings, payload), its recording and
/// where it was forwarded.
#[utoipa::path(get, path = "/calls/{id}", tag = "dashboard",
    params(("id" = String, Path, description = "The call's `call_id`")),
    responses((status = 200, description = "A call: its record, events, recording and deliveries", content_type = "text/html", body = String),
        (status = 404, description = "No such call", content_type = "text/html", body = String)))]
pub async fn call(
    State(state): State<AppState>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    match call_content(&state, &ctx, id).await {
        Ok(content) => layout(&ctx, ctx.t("call.title"), "nav.calls", content).into_response(),
        Err(e) => error_page(&ctx, e),
    }
}

async fn call_content(state: &AppState, ctx: &Ctx, id: String) -> Result<Markup, ApiError> {
    let call = crate::api::calls::get_call(State(state.clone()), Ok(Path(id.clone())))
        .await?
        .0;
    let events = crate::api::calls::call_events(
        State(state.clone()),
        Ok(Path(id.clone())),
        Ok(Query(vec![("limit".to_string(), "200".to_string())])),
    )
    .await?
    .0;
    let deliveries = crate::api::deliveries::list(
        State(state.clone()),
        Ok(Query(vec![
            ("call_id".to_string(), id.clone()),
            ("limit".to_string(), "200".to_string()),
        ])),
    )
    .await?
    .0;
    let time = |t: &Option<String>| t.as_deref().map(|t| ctx.lang.time(t)).unwrap_or_default();
    let recording = call
        .recording_url
        .as_deref()
        .filter(|u| u.starts_with("https://") || u.starts_with("http://"));
    Ok(html! {
        h1 { (ctx.t("call.title")) " " (call.caller_number.as_deref().unwrap_or("")) }
        section {
            h2 { (ctx.t("call.record")) }
            dl.record #record {
                dt { (ctx.t("field.call_id")) } dd { (call.call_id) }
                dt { (ctx.t("col.state")) } dd { (phase_label(ctx, call.phase)) }
                dt { (ctx.t("col.status")) } dd { (status_label(ctx, call.call_status.as_deref())) }
                dt { (ctx.t("col.direction")) } dd { (dir_label(ctx, call.direction.as_deref())) }
                dt { (ctx.t("field.caller_number")) } dd { (call.caller_number.as_deref().unwrap_or("")) }
                dt { (ctx.t("field.destination_number")) } dd { (call.destination_number.as_deref().unwrap_or("")) }
                dt { (ctx.t("col.hotline")) } dd { (call.hotline.as_deref().unwrap_or("")) }
                dt { (ctx.t("col.agent")) } dd #agent-name { (agent(&call)) }
                dt { (ctx.t("col.start")) } dd { (time(&call.start_time)) }
                dt { (ctx.t("field.answer_time")) } dd { (time(&call.answer_time)) }
                dt { (ctx.t("field.end_time")) } dd { (time(&call.end_time)) }
                dt { (ctx.t("col.ring")) } dd { (call.ring_seconds.map(|s| ctx.lang.duration(s)).unwrap_or_default()) }
                dt { (ctx.t("col.talk")) } dd { (call.talk_seconds.map(|s| ctx.lang.duration(s)).unwrap_or_default()) }
                dt { (ctx.t("field.holding")) } dd { (call.holding_duration.map(|s| ctx.lang.duration(s)).unwrap_or_default()) }
                dt { (ctx.t("field.hangup_by")) } dd { (call.hangup_by.as_deref().unwrap_or("")) }
                dt { (ctx.t("field.transaction_id")) } dd { (call.transaction_id.as_deref().unwrap_or("")) }
            }
        }
        @if let Some(url) = recording {
            section {
                h2 { (ctx.t("call.recording")) }
                audio controls preload="none" src=(url) {}
            }
        }
        section {
            h2 { (ctx.t("call.events")) }
            ol.timeline #events {
                @for event in &events.items {
                    li.event {
                        p {
                            strong { (ctx.t("col.received")) " " (ctx.lang.time(&local(state, &event.received_at))) }
                            @if event.deliveries > 1 {
                                " · " (event.deliveries) " " (ctx.t("call.resent"))
                            }
                        }
                        @if !event.warnings.is_empty() {
                            ul.warnings aria-label=(ctx.t("call.warnings")) {
                                @for w in &event.warnings { li { (w) } }
                            }
                        }
                        details {
                            summary { (ctx.t("call.payload")) }
                            pre.payload { (pretty(event.payload.get())) }
                        }
                    }
                }
            }
        }
        section {
            h2 { (ctx.t("call.forwarded")) }
            @if deliveries.items.is_empty() {
                p.empty { (ctx.t("call.not_forwarded")) }
            } @else {
                table #deliveries {
                    thead { tr { th { (ctx.t("col.destination")) } th { (ctx.t("col.type")) } th { (ctx.t("col.state")) } th { (ctx.t("col.attempts")) } } }
                    tbody {
                        @for d in &deliveries.items {
                            tr {
                                td { (d.destination_id) } td { (d.kind) }
                                td { (ctx.t(match d.state { "delivered" => "state.delivered", "dead" => "state.dead", _ => "state.pending" })) }
                                td { (d.attempts.len()) }
                            }
                        }
                    }
                }
            }
        }
    })
}

/// A UTC time as the API writes it, in the configured zone.
pub(super) fn local(state: &AppState, utc: &str) -> String {
    utc.parse::<jiff::Timestamp>().map_or_else(
        |_| utc.to_string(),
        |t| crate::model::time::format_local(t.as_second(), &state.tz),
    )
}

/// A payload, indented for reading (as it came when it is not JSON).
fn pretty(raw: &str) -> String {
    serde_json::from_str::<serde_json::Value>(raw)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| raw.to_string())
}

/// Callbacks: the open worklist, oldest first, each item's age coloured against the targets
/// (`--callback-amber-minutes`, `--callback-red-minutes`), with `tel:` links and a close form;
/// then the items closed last, with who or what closed them.
#[utoipa::path(get, path = "/callbacks", tag = "dashboard",
    responses((status = 200, description = "Callbacks: the open worklist and the items closed last", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the sign-in page")))]
pub async fn callbacks(State(state): State<AppState>, Extension(ctx): Extension<Ctx>) -> Response {
    match callbacks_content(&state, &ctx).await {
        Ok(content) => {
            layout(&ctx, ctx.t("nav.callbacks"), "nav.callbacks", content).into_response()
        }
        Err(e) => error_page(&ctx, e),
    }
}

fn may_close(state: &AppState, ctx: &Ctx) -> bool {
    ctx.admin() || state.dashboard.viewer_can_close
}

async fn callbacks_content(state: &AppState, ctx: &Ctx) -> Result<Markup, ApiError> {
    let list = |params: &[(&str, &str)]| {
        let params: Params = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        crate::api::callbacks::list(State(state.clone()), Ok(Query(params)))
    };
    let open = list(&[("state", "open"), ("sort", "oldest"), ("limit", "200")])
        .await?
        .0;
    let mut closed = list(&[("state", "closed"), ("sort", "newest"), ("limit", "50")])
        .await?
        .0;
    // The last closed first (times in one zone and format: they sort as text).
    closed.items.sort_by(|a, b| b.closed_at.cmp(&a.closed_at));
    let amber = state.dashboard.callback_amber.as_secs() as i64;
    let red = state.dashboard.callback_red.as_secs() as i64;
    let closing = may_close(state, ctx);
    Ok(html! {
        h1 { (ctx.t("nav.callbacks")) }
        p.legend {
            (ctx.t("cb.targets")) " "
            span.age.amber { (ctx.t("cb.amber")) " ≥ " (ctx.lang.minutes(amber)) }
            " · "
            span.age.red { (ctx.t("cb.red")) " ≥ " (ctx.lang.minutes(red)) }
        }
        @if open.items.is_empty() {
            p.empty #open-empty { (ctx.t("cb.none")) }
        } @else {
            table.calls #open-items {
                thead { tr {
                    th { (ctx.t("col.caller")) } th { (ctx.t("cb.missed")) } th { (ctx.t("cb.first")) }
                    th { (ctx.t("col.hotline")) } th { (ctx.t("cb.attempts")) } th { (ctx.t("cb.age")) }
                    @if closing { th { (ctx.t("cb.close")) } }
                } }
                tbody {
                    @for item in &open.items {
                        @let age = item.age_seconds.unwrap_or(0);
                        @let class = if age >= red { "age red" } else if age >= amber { "age amber" } else { "age" };
                        tr data-item=(item.id) {
                            td {
                                @if item.reachable {
                                    a href={"tel:" (item.phone)} { (item.phone_as_sent) }
                                } @else {
                                    (item.phone_as_sent)
                                }
                            }
                            td { (item.missed_count) }
                            td { (ctx.lang.time(&item.first_missed_at)) }
                            td { (item.hotlines.join(", ")) }
                            td { (item.attempts) }
                            td { span class=(class) { (ctx.lang.duration(age)) } }
                            @if closing {
                                td {
                                    form.close method="post" action={"/callbacks/" (urlencode(&item.id)) "/close"} {
                                        input type="hidden" name="_csrf" value=(ctx.csrf());
                                        input name="note" maxlength="1000" placeholder=(ctx.t("cb.note")) aria-label=(ctx.t("cb.note"));
                                        button type="submit" { (ctx.t("cb.close")) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if open.next_cursor.is_some() { p.empty { (ctx.t("cb.more")) } }
        }
        h2 { (ctx.t("cb.closed")) }
        table.calls #closed-items {
            thead { tr {
                th { (ctx.t("col.caller")) } th { (ctx.t("cb.closed_at")) } th { (ctx.t("cb.closed_by")) } th { (ctx.t("cb.note")) }
            } }
            tbody {
                @for item in &closed.items {
                    tr data-item=(item.id) {
                        td { (item.phone_as_sent) }
                        td { (item.closed_at.as_deref().map(|t| ctx.lang.time(t)).unwrap_or_default()) }
                        td {
                            @match (item.closed_reason.as_deref(), &item.closed_by_call_id) {
                                (Some("manual"), _) => {
                                    (ctx.t("cb.by_hand"))
                                    @if let Some(by) = &item.closed_by { " (" (ctx.t(if by == "admin" { "role.admin" } else { "role.viewer" })) ")" }
                                }
                                (reason, Some(call)) => {
                                    (reason.map(|r| ctx.lang.t(reason_key(r))).unwrap_or("")) " "
                                    a href={"/calls/" (urlencode(call))} { (call) }
                                }
                                (reason, None) => { (reason.map(|r| ctx.lang.t(reason_key(r))).unwrap_or("")) }
                            }
                        }
                        td { (item.note.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    })
}

/// The label of a `closed_reason`.
fn reason_key(reason: &str) -> &'static str {
    match reason {
        "answered_inbound" => "cb.reason.inbound",
        "answered_outbound" => "cb.reason.outbound",
        "manual" => "cb.by_hand",
        _ => "cb.reason.call",
    }
}

#[derive(Debug, Deserialize)]
pub struct CloseForm {
    #[serde(default)]
    note: String,
    #[serde(default)]
    _csrf: String,
}

/// Closes a callback item by hand, with a note (the admin; the viewer with `--viewer-can-close`).
#[utoipa::path(post, path = "/callbacks/{id}/close", tag = "dashboard",
    params(("id" = String, Path, description = "The item's id (`cb_…`)")),
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "`note` and `_csrf`"),
    responses((status = 303, description = "Closed: back to the list"),
        (status = 403, description = "The viewer role, or the form's CSRF token is missing or wrong", body = String),
        (status = 404, description = "No such item", content_type = "text/html", body = String)))]
pub async fn close_callback(
    State(state): State<AppState>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    Form(form): Form<CloseForm>,
) -> Response {
    if !ctx.session.csrf_matches(&form._csrf) {
        return super::csrf_refused();
    }
    if !may_close(&state, &ctx) {
        return (StatusCode::FORBIDDEN, ctx.t("error.viewer")).into_response();
    }
    let note = form.note.trim();
    let body = if note.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::json!({ "note": note })
    };
    let closed = crate::api::callbacks::close(
        State(state.clone()),
        Some(Extension(ctx.session.role)),
        Ok(Path(id)),
        bytes::Bytes::from(body.to_string()),
    )
    .await;
    match closed {
        Ok(_) => axum::response::Redirect::to("/callbacks").into_response(),
        Err(e) => error_page(&ctx, e),
    }
}
