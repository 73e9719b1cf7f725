//! The read API: calls, their events, and the quarantine.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Serialize;
use serde_json::value::RawValue;

use super::AppState;
use super::error::ApiError;
use super::openapi::{CallFilters, ErrorBody, Paging};
use crate::model::Phase;
use crate::model::phone::normalize_phone;
use crate::model::time::{format_utc_micros, parse_range_bound};
pub use crate::model::view::CallView;
use crate::store::{CallCursor, CallFilter, StoredEvent};

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;

/// An event as received.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventView {
    pub event_id: i64,
    /// When alohook received it (UTC, RFC 3339).
    pub received_at: String,
    /// How many times it was received (resends included).
    pub deliveries: i64,
    /// What was odd about it (an unknown status, a time that cannot be read…).
    pub warnings: Vec<String>,
    /// The body exactly as Alohub sent it.
    #[schema(value_type = Object)]
    pub payload: Box<RawValue>,
}

impl EventView {
    fn new(event: StoredEvent) -> Result<Self, ApiError> {
        let payload = RawValue::from_string(event.payload).map_err(|e| {
            tracing::error!(event_id = event.event_id, error = %e, "stored payload is not JSON");
            ApiError::Unavailable
        })?;
        Ok(EventView {
            event_id: event.event_id,
            received_at: format_utc_micros(event.received_at),
            deliveries: event.deliveries,
            warnings: event.warnings,
            payload,
        })
    }
}

/// A page of items. Follow `next_cursor` until it is null: a page may hold fewer items than
/// `limit`, even none, and still have one (each page does bounded work).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// The call id of the path; a path that is not UTF-8 once decoded (`%FF`) is a JSON 400 too.
fn call_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|e| ApiError::parameter("call_id", e.body_text()))
}

/// One call's record.
#[utoipa::path(get, path = "/calls/{call_id}", tag = "calls",
    params(("call_id" = String, Path, description = "The call's `call_id`")),
    responses((status = 200, body = CallView), (status = 404, description = "No such call", body = ErrorBody)))]
pub async fn get_call(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<CallView>, ApiError> {
    let call_id = call_id(path)?;
    let call = state
        .store
        .call(&call_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(CallView::of(call.record, call.phase, &state.tz)))
}

/// Events per page when `limit` is not given.
const DEFAULT_EVENTS_LIMIT: usize = 100;

/// The events received for one call, oldest first.
#[utoipa::path(get, path = "/calls/{call_id}/events", tag = "calls",
    params(("call_id" = String, Path, description = "The call's `call_id`"), Paging),
    responses((status = 200, body = Page<EventView>),
        (status = 400, description = "A parameter is wrong", body = ErrorBody),
        (status = 404, description = "No such call", body = ErrorBody)))]
pub async fn call_events(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Page<EventView>>, ApiError> {
    let call_id = call_id(path)?;
    let params = Params::new(query, &["limit", "cursor"])?;
    let limit = params.limit_or(DEFAULT_EVENTS_LIMIT)?;
    let after = params.id_cursor()?;
    let page = state
        .store
        .call_events(&call_id, after, limit)
        .await?
        .ok_or(ApiError::NotFound)?;
    let items = page
        .items
        .into_iter()
        .map(EventView::new)
        .collect::<Result<_, _>>()?;
    Ok(Json(Page {
        items,
        next_cursor: page.next.map(|id| id.to_string()),
    }))
}

/// Query parameters as given, with checks for unknown and repeated names.
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub(crate) fn new(
        query: Result<Query<Vec<(String, String)>>, QueryRejection>,
        known: &[&str],
    ) -> Result<Self, ApiError> {
        let Query(pairs) = query.map_err(|e| ApiError::parameter("query", e.body_text()))?;
        for (i, (name, _)) in pairs.iter().enumerate() {
            if !known.contains(&name.as_str()) {
                return Err(ApiError::parameter(
                    name,
                    format!("unknown parameter; known: {}", known.join(", ")),
                ));
            }
            if pairs[..i].iter().any(|(n, _)| n == name) {
                return Err(ApiError::parameter(name, "given more than once"));
            }
        }
        Ok(Params(pairs))
    }

    /// The value of `name`, with empty treated as absent.
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    pub(super) fn text(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_string)
    }

    pub(super) fn limit(&self) -> Result<usize, ApiError> {
        self.limit_or(DEFAULT_LIMIT)
    }

    pub(super) fn limit_or(&self, default: usize) -> Result<usize, ApiError> {
        match self.get("limit") {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::parameter(
                        "limit",
                        format!("must be an integer from 1 to {MAX_LIMIT}"),
                    )
                }),
        }
    }
}

impl Params {
    /// `phase`: one of the three phases.
    pub(super) fn phase(&self) -> Result<Option<Phase>, ApiError> {
        self.get("phase")
            .map(|p| {
                Phase::parse(p).ok_or_else(|| {
                    ApiError::parameter("phase", "must be one of ringing, in_progress, ended")
                })
            })
            .transpose()
    }

    /// `direction`, lower-cased: `inbound` or `outbound`, in any case.
    pub(super) fn direction(&self) -> Result<Option<String>, ApiError> {
        self.get("direction")
            .map(|d| {
                let d = d.to_lowercase();
                match d.as_str() {
                    "inbound" | "outbound" => Ok(d),
                    _ => Err(ApiError::parameter(
                        "direction",
                        "must be one of inbound, outbound",
                    )),
                }
            })
            .transpose()
    }

    /// A `from` (`end_of_day` false) or inclusive `to` bound: RFC 3339, or a day in `tz`.
    pub(crate) fn range_bound(
        &self,
        name: &str,
        tz: &jiff::tz::TimeZone,
        end_of_day: bool,
    ) -> Result<Option<i64>, ApiError> {
        self.get(name)
            .map(|v| {
                // An unencoded `+` in an offset (…T08:55:00+07:00) arrives as a space.
                parse_range_bound(v, tz, end_of_day)
                    .or_else(|| parse_range_bound(&v.replace(' ', "+"), tz, end_of_day))
                    .ok_or_else(|| {
                        ApiError::parameter(name, "must be an RFC 3339 time or a date YYYY-MM-DD")
                    })
            })
            .transpose()
    }

    /// A `cursor` that is an id this API returned.
    pub(super) fn id_cursor(&self) -> Result<Option<i64>, ApiError> {
        self.get("cursor")
            .map(|c| {
                c.parse::<i64>()
                    .map_err(|_| ApiError::parameter("cursor", "not a cursor this API returned"))
            })
            .transpose()
    }
}

/// The call filters of `/api/calls` (every parameter but `limit` and `cursor`), which the
/// figures and exports take too.
pub(crate) const CALL_FILTERS: &[&str] = &[
    "status",
    "phase",
    "direction",
    "hotline",
    "user_name",
    "destination_number",
    "transaction_id",
    "phone",
    "agent",
    "from",
    "to",
];

/// The call filter the parameters give; `from`/`to` are days or instants in `tz`.
pub(crate) fn call_filter(
    params: &Params,
    tz: &jiff::tz::TimeZone,
) -> Result<CallFilter, ApiError> {
    Ok(CallFilter {
        status: params.text("status"),
        phase: params.phase()?,
        direction: params.direction()?,
        hotline: params.text("hotline"),
        user_name: params.text("user_name"),
        destination_number: params.text("destination_number"),
        transaction_id: params.text("transaction_id"),
        phone: params.get("phone").map(normalize_phone),
        agent: params.text("agent"),
        from: params.range_bound("from", tz, false)?,
        to: params.range_bound("to", tz, true)?,
    })
}

/// Call records, newest start first; every filter is optional and they combine.
#[utoipa::path(get, path = "/calls", tag = "calls",
    params(CallFilters, Paging),
    responses((status = 200, body = Page<CallView>),
        (status = 400, description = "A parameter is wrong", body = ErrorBody)))]
pub async fn list_calls(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Page<CallView>>, ApiError> {
    let known: Vec<&str> = CALL_FILTERS
        .iter()
        .chain(&["limit", "cursor"])
        .copied()
        .collect();
    let params = Params::new(query, &known)?;
    let limit = params.limit()?;
    let filter = call_filter(&params, &state.tz)?;
    let cursor = params.get("cursor").map(decode_call_cursor).transpose()?;
    let page = state.store.calls(&filter, limit, cursor).await?;
    Ok(Json(Page {
        items: page
            .items
            .into_iter()
            .map(|c| CallView::of(c.record, c.phase, &state.tz))
            .collect(),
        next_cursor: page.next.map(encode_call_cursor),
    }))
}

fn encode_call_cursor(c: CallCursor) -> String {
    URL_SAFE_NO_PAD.encode(format!("c1:{}:{}", c.sort_key, c.seq))
}

fn decode_call_cursor(text: &str) -> Result<CallCursor, ApiError> {
    let invalid = || ApiError::parameter("cursor", "not a cursor this API returned");
    let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let mut parts = text.split(':');
    if parts.next() != Some("c1") {
        return Err(invalid());
    }
    let sort_key = parts
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(invalid)?;
    let seq = parts
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(invalid)?;
    if parts.next().is_some() {
        return Err(invalid());
    }
    Ok(CallCursor { sort_key, seq })
}

/// A body refused by the webhook, kept in the quarantine.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RejectionView {
    pub id: i64,
    /// `invalid_json`, `not_utf8`, `invalid_event`…
    pub reason: String,
    pub detail: String,
    pub received_at: String,
    pub deliveries: i64,
    /// The body (lossy where it is not UTF-8).
    pub body: String,
    /// The exact bytes, when the body is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

/// The quarantine: bodies refused by the webhook, newest first.
#[utoipa::path(get, path = "/rejected", tag = "calls",
    params(Paging),
    responses((status = 200, body = Page<RejectionView>),
        (status = 400, description = "A parameter is wrong", body = ErrorBody)))]
pub async fn list_rejected(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Page<RejectionView>>, ApiError> {
    let params = Params::new(query, &["limit", "cursor"])?;
    let limit = params.limit()?;
    let before = params.id_cursor()?;
    let page = state.store.rejected(limit, before).await?;
    let items = page
        .items
        .into_iter()
        .map(|r| {
            let (body, body_base64) = match String::from_utf8(r.body) {
                Ok(text) => (text, None),
                Err(e) => {
                    let bytes = e.into_bytes();
                    (
                        String::from_utf8_lossy(&bytes).into_owned(),
                        Some(STANDARD.encode(&bytes)),
                    )
                }
            };
            RejectionView {
                id: r.id,
                reason: r.reason,
                detail: r.detail,
                received_at: format_utc_micros(r.received_at),
                deliveries: r.deliveries,
                body,
                body_base64,
            }
        })
        .collect();
    Ok(Json(Page {
        items,
        next_cursor: page.next.map(|id| id.to_string()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = CallCursor {
            sort_key: i64::MIN,
            seq: 42,
        };
        assert_eq!(decode_call_cursor(&encode_call_cursor(c)).unwrap(), c);
        for bad in ["", "abc", "YzE6MQ", "eDoxOjI"] {
            assert!(decode_call_cursor(bad).is_err(), "{bad}");
        }
    }
}
