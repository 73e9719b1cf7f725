//! The missed-call callback worklist: `GET /api/callbacks`, `POST /api/callbacks/{id}/close`.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use jiff::tz::TimeZone;

use super::AppState;
use super::calls::{Page, Params};
use super::error::ApiError;
use super::openapi::{CallbackFilters, CloseRequest, ErrorBody, Paging};
use crate::report::callbacks::ItemView;
use crate::store::callbacks::{CallbackCursor, CallbackFilter};

/// The longest note a close by hand keeps.
const MAX_NOTE_CHARS: usize = 2000;

fn now_seconds() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// The listing's filters from the query (`state`, `hotline`, `from`, `to`, `sort`).
pub(crate) fn callback_filter(params: &Params, tz: &TimeZone) -> Result<CallbackFilter, ApiError> {
    let open = match params.get("state").unwrap_or("open") {
        "open" => Some(true),
        "closed" => Some(false),
        "all" => None,
        _ => {
            return Err(ApiError::parameter(
                "state",
                "must be one of open, closed, all",
            ));
        }
    };
    let newest_first = match params.get("sort").unwrap_or("oldest") {
        "oldest" => false,
        "newest" => true,
        _ => return Err(ApiError::parameter("sort", "must be one of oldest, newest")),
    };
    Ok(CallbackFilter {
        open,
        hotline: params.text("hotline"),
        phone: params
            .get("phone")
            .map(crate::model::phone::normalize_phone),
        from: params.range_bound("from", tz, false)?,
        to: params.range_bound("to", tz, true)?,
        newest_first,
    })
}

/// The parameters of `GET /api/callbacks`.
pub(crate) const LIST_PARAMS: &[&str] = &[
    "state", "hotline", "phone", "from", "to", "sort", "limit", "cursor",
];

/// `GET /api/callbacks?state=open|closed|all&hotline&from&to&sort=oldest|newest&limit&cursor`.
#[utoipa::path(get, path = "/callbacks", tag = "figures",
    description = "The missed-call callback worklist: one open item per customer number with an unanswered inbound call not yet followed by an answered call with that number.",
    params(CallbackFilters, Paging),
    responses((status = 200, body = Page<ItemView>), (status = 400, description = "A parameter is wrong", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Page<ItemView>>, ApiError> {
    let params = Params::new(query, LIST_PARAMS)?;
    let limit = params.limit()?;
    let filter = callback_filter(&params, &state.tz)?;
    let cursor = params
        .get("cursor")
        .map(|c| decode_cursor(c, filter.newest_first))
        .transpose()?;
    let page = state.store.callbacks(&filter, limit, cursor).await?;
    let now = now_seconds();
    Ok(Json(Page {
        items: page
            .items
            .into_iter()
            .map(|i| ItemView::of(i, &state.tz, now))
            .collect(),
        next_cursor: page.next.map(|c| encode_cursor(&c, filter.newest_first)),
    }))
}

/// `POST /api/callbacks/{id}/close` with an optional `{"note":"…"}`.
#[utoipa::path(post, path = "/callbacks/{id}/close", tag = "figures",
    description = "Closes an item by hand (`closed_reason` `manual`); an item closed already is answered as it is.",
    params(("id" = String, Path, description = "The item's id (`cb_…`)")),
    request_body(content = Option<CloseRequest>, description = "Optional; an empty body closes without a note"),
    responses((status = 200, description = "The item, closed", body = ItemView),
        (status = 400, description = "The body or note is wrong", body = ErrorBody),
        (status = 404, description = "No such item", body = ErrorBody)))]
pub async fn close(
    State(state): State<AppState>,
    role: Option<axum::Extension<crate::web::session::Role>>,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Json<ItemView>, ApiError> {
    let id = path
        .map(|Path(id)| id)
        .map_err(|e| ApiError::parameter("id", e.body_text()))?;
    let note = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let value: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::parameter("body", format!("not a JSON object: {e}")))?;
        let object = value
            .as_object()
            .ok_or_else(|| ApiError::parameter("body", "not a JSON object"))?;
        if let Some(unknown) = object.keys().find(|k| k.as_str() != "note") {
            return Err(ApiError::parameter(unknown, "unknown field; known: note"));
        }
        match object.get("note") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(note)) if note.chars().count() <= MAX_NOTE_CHARS => {
                Some(note.clone()).filter(|n| !n.trim().is_empty())
            }
            Some(_) => {
                return Err(ApiError::parameter(
                    "note",
                    format!("must be a string of at most {MAX_NOTE_CHARS} characters"),
                ));
            }
        }
    };
    let now = now_seconds();
    let item = state
        .store
        .close_callback(&id, note, role.map(|r| r.0.as_str().to_string()), now)
        .await?
        .ok_or(ApiError::NotFound)?;
    // A close of an item that was closed already (by hand or by a call) changes nothing.
    if item.closed_reason.as_deref() == Some("manual") && item.closed_at.is_some_and(|at| at >= now)
    {
        tracing::info!(callback = %item.id, "callback item closed by hand");
    } else {
        tracing::info!(callback = %item.id, "callback item was closed already: nothing changed");
    }
    Ok(Json(ItemView::of(item, &state.tz, now)))
}

/// A cursor says which way it goes (`o` oldest first, `n` newest first): one of the other
/// order is refused rather than answered with the wrong page.
fn encode_cursor(c: &CallbackCursor, newest_first: bool) -> String {
    let way = if newest_first { "n" } else { "o" };
    URL_SAFE_NO_PAD.encode(format!("k1{way}:{}:{}", c.first_missed_at, c.id))
}

fn decode_cursor(text: &str, newest_first: bool) -> Result<CallbackCursor, ApiError> {
    let invalid = || ApiError::parameter("cursor", "not a cursor this API returned");
    let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let mut parts = text.splitn(3, ':');
    match (parts.next(), newest_first) {
        (Some("k1o"), false) | (Some("k1n"), true) => {}
        (Some("k1o" | "k1n"), _) => {
            return Err(ApiError::parameter(
                "cursor",
                "a cursor of the other sort order; give the same sort as for the page before",
            ));
        }
        _ => return Err(invalid()),
    }
    let first_missed_at = parts
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(invalid)?;
    let id = parts.next().ok_or_else(invalid)?.to_string();
    Ok(CallbackCursor {
        first_missed_at,
        id,
    })
}
