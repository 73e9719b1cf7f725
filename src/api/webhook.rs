//! `POST /webhooks/alohub`: key, size, then the body decides.

use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;

use super::AppState;
use super::auth::webhook_authorized;
use super::error::ApiError;
use crate::ingest::Receipt;
use crate::model::BodyError;

/// `{"ok":true,"event_id":…,"duplicate":…}`, in the order of the contract.
#[derive(Serialize)]
struct Ack {
    ok: bool,
    event_id: i64,
    duplicate: bool,
}

pub async fn receive(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    if !webhook_authorized(&state.webhook_keys, &headers) {
        state.metrics.unauthorized.inc();
        return ApiError::Unauthorized.into_response();
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > state.max_body as u64) {
        state.metrics.reject("payload_too_large");
        return ApiError::PayloadTooLarge.into_response();
    }
    let bytes = match Limited::new(body, state.max_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<LengthLimitError>() => {
            state.metrics.reject("payload_too_large");
            return ApiError::PayloadTooLarge.into_response();
        }
        Err(error) => {
            // The client went away or broke the framing: nothing was read, so nothing is kept.
            tracing::debug!(%error, "could not read a webhook body");
            return ApiError::InvalidJson(format!("could not read the body: {error}"))
                .into_response();
        }
    };
    match state.ingest.receive(&bytes).await {
        Ok(Receipt::Accepted {
            event_id,
            duplicate,
        }) => {
            state.metrics.observe_ack(started.elapsed());
            Json(Ack {
                ok: true,
                event_id,
                duplicate,
            })
            .into_response()
        }
        Ok(Receipt::Rejected(error @ (BodyError::NotUtf8 { .. } | BodyError::InvalidJson(_)))) => {
            ApiError::InvalidJson(error.to_string()).into_response()
        }
        Ok(Receipt::Rejected(error)) => ApiError::InvalidEvent(error.to_string()).into_response(),
        Err(_) => ApiError::Unavailable.into_response(),
    }
}

pub async fn method_not_allowed() -> Response {
    let mut response = ApiError::MethodNotAllowed.into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
    response
}
