//! `GET /api/deliveries`: what became of each change handed to a destination.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::Serialize;

use super::AppState;
use super::calls::Params;
use super::error::ApiError;
use super::openapi::{DeliveryFilters, ErrorBody, Paging};
use crate::forward::sign::webhook_id;
use crate::model::time::format_utc_micros;
use crate::store::{DeliveryFilter, DeliveryState, StoredDelivery};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    pub id: i64,
    pub destination_id: String,
    pub webhook_id: String,
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub call_id: Option<String>,
    pub state: &'static str,
    pub next_attempt_at: Option<String>,
    pub attempts: Vec<AttemptView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    pub at: String,
    pub status: Option<i64>,
    pub error: Option<String>,
    pub duration_ms: i64,
    pub response: Option<String>,
}

impl From<StoredDelivery> for DeliveryView {
    fn from(d: StoredDelivery) -> Self {
        DeliveryView {
            id: d.id,
            webhook_id: webhook_id(&d.destination_id, d.seq),
            destination_id: d.destination_id,
            seq: d.seq,
            kind: d.kind,
            call_id: d.call_id,
            state: d.state.as_str(),
            next_attempt_at: match d.state {
                DeliveryState::Pending => d.next_attempt_at.map(format_utc_micros),
                _ => None,
            },
            attempts: d
                .attempt_log
                .into_iter()
                .map(|a| AttemptView {
                    at: format_utc_micros(a.at),
                    status: a.status,
                    error: a.error,
                    duration_ms: a.duration_ms,
                    response: a.response,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryPageView {
    pub items: Vec<DeliveryView>,
    pub next_cursor: Option<String>,
}

/// The parameters of `GET /api/deliveries`.
pub(crate) const PARAMS: &[&str] = &["destination", "state", "call_id", "limit", "cursor"];

/// `GET /api/deliveries?destination=…&state=pending|delivered|dead&call_id=…&limit&cursor`,
/// newest first.
#[utoipa::path(get, path = "/deliveries", tag = "forwarding",
    params(DeliveryFilters, Paging),
    responses((status = 200, body = DeliveryPageView), (status = 400, description = "A parameter is wrong", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<DeliveryPageView>, ApiError> {
    let params = Params::new(query, PARAMS)?;
    let limit = params.limit()?;
    let before = params.id_cursor()?;
    let delivery_state = params
        .get("state")
        .map(|s| {
            DeliveryState::parse(s).ok_or_else(|| {
                ApiError::parameter("state", "must be one of pending, delivered, dead")
            })
        })
        .transpose()?;
    let filter = DeliveryFilter {
        destination_id: params.text("destination"),
        state: delivery_state,
        call_id: params.text("call_id"),
    };
    let page = state.store.deliveries(&filter, limit, before).await?;
    Ok(Json(DeliveryPageView {
        items: page.items.into_iter().map(DeliveryView::from).collect(),
        next_cursor: page.next.map(|id| id.to_string()),
    }))
}
