//! Forwarding: every destination with its health (pending, oldest pending, dead, last error),
//! creating, editing, enabling and disabling one, the dead letters with a replay, and the
//! quarantine of rejected bodies. Changes go through the API's own handlers; only the admin may
//! make them.

use axum::Extension;
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use bytes::Bytes;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Ctx, layout, urlencode};
use crate::api::AppState;
use crate::api::error::ApiError;

#[utoipa::path(get, path = "/forwarding", tag = "dashboard",
    responses((status = 200, description = "Destinations and their health, dead letters, quarantine", content_type = "text/html", body = String),
        (status = 303, description = "No session: to the sign-in page")))]
pub async fn forwarding(State(state): State<AppState>, Extension(ctx): Extension<Ctx>) -> Response {
    page(&state, &ctx, None, None, None).await
}

/// The page, with a notice or a problem to show, and the new-destination form filled with
/// `draft` (what was sent, when it was refused).
async fn page(
    state: &AppState,
    ctx: &Ctx,
    notice: Option<Markup>,
    problem: Option<String>,
    draft: Option<&NewDestination>,
) -> Response {
    match content(state, ctx, notice, problem, draft).await {
        Ok(content) => {
            layout(ctx, ctx.t("nav.forwarding"), "nav.forwarding", content).into_response()
        }
        Err(e) => super::pages::error_page(ctx, e),
    }
}

async fn content(
    state: &AppState,
    ctx: &Ctx,
    notice: Option<Markup>,
    problem: Option<String>,
    draft: Option<&NewDestination>,
) -> Result<Markup, ApiError> {
    let empty = NewDestination::default();
    let draft = draft.unwrap_or(&empty);
    let destinations = crate::api::destinations::list(
        State(state.clone()),
        Some(axum::Extension(ctx.session.role)),
    )
    .await?
    .0;
    let destinations = destinations["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let dead = crate::api::deliveries::list(
        State(state.clone()),
        Ok(Query(vec![
            ("state".to_string(), "dead".to_string()),
            ("limit".to_string(), "50".to_string()),
        ])),
    )
    .await?
    .0;
    let rejected = crate::api::calls::list_rejected(
        State(state.clone()),
        Ok(Query(vec![("limit".to_string(), "20".to_string())])),
    )
    .await?
    .0;
    let l = ctx.lang;
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    let count = |v: &Value| l.int(v.as_i64().unwrap_or(0));
    let admin = ctx.admin();
    Ok(html! {
        h1 { (ctx.t("nav.forwarding")) }
        @if let Some(notice) = notice { div.notice role="status" { (notice) } }
        @if let Some(problem) = problem { p.error role="alert" { (problem) } }
        @if destinations.is_empty() {
            p.empty { (ctx.t("fw.none")) }
        } @else {
            table.figures #destinations {
                thead { tr {
                    th { (ctx.t("fw.destination")) } th { (ctx.t("fw.state")) } th { (ctx.t("state.pending")) }
                    th { (ctx.t("fw.oldest")) } th { (ctx.t("state.delivered")) } th { (ctx.t("state.dead")) }
                    th { (ctx.t("fw.last_error")) }
                    @if admin { th { } }
                } }
                tbody {
                    @for d in &destinations {
                        @let id = text(&d["id"]);
                        @let stats = &d["stats"];
                        @let enabled = d["enabled"].as_bool().unwrap_or(false);
                        tr data-destination=(id) {
                            td {
                                strong { (text(&d["description"])) } br;
                                code { (text(&d["url"])) } br;
                                small { (id) }
                            }
                            td {
                                @if enabled { span.ok { (ctx.t("fw.enabled")) } }
                                @else { span.bad { (ctx.t("fw.disabled")) } " " (text(&d["disabled_reason"])) }
                            }
                            td { (count(&stats["pending"])) }
                            td { (stats["oldest_pending_seconds"].as_i64().map(|s| l.duration(s)).unwrap_or_default()) }
                            td { (count(&stats["delivered"])) }
                            td { (count(&stats["dead"])) }
                            td { (text(&stats["last_error"])) }
                            @if admin {
                                td.actions {
                                    (action(ctx, &id, if enabled { "disable" } else { "enable" },
                                        ctx.t(if enabled { "fw.disable" } else { "fw.enable" })))
                                    @if stats["dead"].as_i64().unwrap_or(0) > 0 {
                                        (action(ctx, &id, "replay", ctx.t("fw.replay")))
                                    }
                                    details {
                                        summary { (ctx.t("fw.edit")) }
                                        form.edit method="post" action={"/forwarding/" (urlencode(&id)) "/edit"} {
                                            input type="hidden" name="_csrf" value=(ctx.csrf());
                                            label { "URL" input name="url" value=(text(&d["url"])) required; }
                                            label { (ctx.t("fw.description")) input name="description" value=(text(&d["description"])); }
                                            button type="submit" { (ctx.t("fw.save")) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if admin {
            h2 { (ctx.t("fw.new")) }
            form.search #new-destination method="post" action="/forwarding" {
                input type="hidden" name="_csrf" value=(ctx.csrf());
                label { "URL" input #new-url name="url" type="url" placeholder="https://crm.example.com/hooks/alohub" value=(draft.url) required; }
                label { (ctx.t("fw.description")) input name="description" value=(draft.description); }
                label { (ctx.t("calls.status")) input name="status" placeholder="missed" value=(draft.status); }
                label { (ctx.t("calls.hotline")) input name="hotline" value=(draft.hotline); }
                label { (ctx.t("calls.direction"))
                    select name="direction" {
                        option value="" { (ctx.t("calls.any")) }
                        option value="inbound" selected[draft.direction == "inbound"] { (ctx.t("dir.inbound")) }
                        option value="outbound" selected[draft.direction == "outbound"] { (ctx.t("dir.outbound")) }
                    }
                }
                button type="submit" #create { (ctx.t("fw.create")) }
            }
        }
        h2 { (ctx.t("fw.dead")) }
        @if dead.items.is_empty() {
            p.empty { (ctx.t("fw.no_dead")) }
        } @else {
            table.calls #dead {
                thead { tr { th { (ctx.t("fw.destination")) } th { (ctx.t("col.type")) } th { (ctx.t("call.title")) } th { (ctx.t("col.attempts")) } th { (ctx.t("fw.last_error")) } } }
                tbody {
                    @for item in &dead.items {
                        tr {
                            td { (item.destination_id) }
                            td { (item.kind) }
                            td {
                                @if let Some(call) = &item.call_id {
                                    a href={"/calls/" (urlencode(call))} { (call) }
                                }
                            }
                            td { (item.attempts.len()) }
                            td { (item.attempts.last().and_then(|a| a.error.clone()).unwrap_or_default()) }
                        }
                    }
                }
            }
        }
        h2 { (ctx.t("fw.quarantine")) }
        @if rejected.items.is_empty() {
            p.empty { (ctx.t("fw.no_quarantine")) }
        } @else {
            ol.timeline #quarantine {
                @for r in &rejected.items {
                    li.event {
                        p { strong { (r.reason) } " · " (l.time(&super::pages::local(state, &r.received_at))) " · " (r.detail) }
                        details { summary { (ctx.t("call.payload")) } pre.payload { (r.body) } }
                    }
                }
            }
        }
    })
}

fn action(ctx: &Ctx, id: &str, what: &str, label: &str) -> Markup {
    html! {
        form.inline method="post" action={"/forwarding/" (urlencode(id)) "/" (what)} {
            input type="hidden" name="_csrf" value=(ctx.csrf());
            button type="submit" data-action=(what) { (label) }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct NewDestination {
    #[serde(default)]
    url: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    hotline: String,
    #[serde(default)]
    direction: String,
    #[serde(default)]
    _csrf: String,
}

/// The answer to a form that may change something: the CSRF token and the admin role first.
fn refused(ctx: &Ctx, csrf: &str) -> Option<Response> {
    if !ctx.session.csrf_matches(csrf) {
        return Some(super::csrf_refused());
    }
    if !ctx.admin() {
        return Some((StatusCode::FORBIDDEN, ctx.t("error.viewer")).into_response());
    }
    None
}

/// Creates a destination; the page shows its signing secret once.
#[utoipa::path(post, path = "/forwarding", tag = "dashboard",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "`url`, `description`, `status`, `hotline`, `direction` and `_csrf`"),
    responses((status = 200, description = "Created (the secret shown once), or what was wrong", content_type = "text/html", body = String),
        (status = 403, description = "The viewer role, or the form's CSRF token is missing or wrong", body = String)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(ctx): Extension<Ctx>,
    Form(form): Form<NewDestination>,
) -> Response {
    if let Some(refused) = refused(&ctx, &form._csrf) {
        return refused;
    }
    let mut filter = serde_json::Map::new();
    for (key, value) in [
        ("status", &form.status),
        ("hotline", &form.hotline),
        ("direction", &form.direction),
    ] {
        if !value.trim().is_empty() {
            filter.insert(key.to_string(), json!(value.trim()));
        }
    }
    let mut body = json!({ "url": form.url.trim(), "filter": filter });
    if !form.description.trim().is_empty() {
        body["description"] = json!(form.description.trim());
    }
    let created =
        crate::api::destinations::post(State(state.clone()), Bytes::from(body.to_string())).await;
    match created {
        Ok(response) => {
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap_or_default();
            let created: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let notice = html! {
                p { (ctx.t("fw.created")) " " code { (created["id"].as_str().unwrap_or("")) } }
                p { (ctx.t("fw.secret")) " " code #secret { (created["secret"].as_str().unwrap_or("")) } }
            };
            page(&state, &ctx, Some(notice), None, None).await
        }
        Err(e @ ApiError::InvalidParameter { .. }) => {
            page(&state, &ctx, None, Some(e.to_string()), Some(&form)).await
        }
        Err(e) => super::pages::error_page(&ctx, e),
    }
}

#[derive(Debug, Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    _csrf: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

/// `enable`, `disable`, `replay` (its dead deliveries) or `edit` (url, description) a
/// destination.
#[utoipa::path(post, path = "/forwarding/{id}/{action}", tag = "dashboard",
    params(("id" = String, Path, description = "The destination's id"),
        ("action" = String, Path, description = "`enable`, `disable`, `replay` (its dead deliveries) or `edit`")),
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "`_csrf`; for `edit`, `url` and `description`"),
    responses((status = 303, description = "Done: back to the page"),
        (status = 200, description = "What was wrong, on the page", content_type = "text/html", body = String),
        (status = 403, description = "The viewer role, or the form's CSRF token is missing or wrong", body = String),
        (status = 404, description = "No such destination or action", content_type = "text/html", body = String)))]
pub async fn act(
    State(state): State<AppState>,
    Extension(ctx): Extension<Ctx>,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Some(refused) = refused(&ctx, &form._csrf) {
        return refused;
    }
    let path = Ok(Path(id));
    let result = match action.as_str() {
        "enable" | "disable" => crate::api::destinations::patch(
            State(state.clone()),
            path,
            Bytes::from(json!({ "enabled": action == "enable" }).to_string()),
        )
        .await
        .map(|_| ()),
        "edit" => {
            let mut patch = serde_json::Map::new();
            if let Some(url) = form.url.filter(|u| !u.trim().is_empty()) {
                patch.insert("url".to_string(), json!(url.trim()));
            }
            if let Some(description) = form.description {
                patch.insert("description".to_string(), json!(description.trim()));
            }
            crate::api::destinations::patch(
                State(state.clone()),
                path,
                Bytes::from(Value::Object(patch).to_string()),
            )
            .await
            .map(|_| ())
        }
        "replay" => crate::api::destinations::replay(
            State(state.clone()),
            path,
            Bytes::from(json!({ "state": "dead" }).to_string()),
        )
        .await
        .map(|_| ()),
        _ => Err(ApiError::NotFound),
    };
    match result {
        Ok(()) => Redirect::to("/forwarding").into_response(),
        Err(e @ ApiError::InvalidParameter { .. }) => {
            page(&state, &ctx, None, Some(e.to_string()), None).await
        }
        Err(e) => super::pages::error_page(&ctx, e),
    }
}
