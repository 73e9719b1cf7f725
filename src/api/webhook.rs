//! `POST /webhooks/alohub`: key, size, room, then the body decides.

use std::time::Instant;

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;

use super::AppState;
use super::auth::{KeyForm, webhook_key_form};
use super::conn::Peer;
use super::error::ApiError;
use super::openapi::ErrorBody;
use crate::ingest::Receipt;
use crate::model::BodyError;

/// `{"ok":true,"event_id":…,"duplicate":…}`, in the order of the contract.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Ack {
    ok: bool,
    event_id: i64,
    duplicate: bool,
}

/// The client's address for the logs, with what a proxy in front says it forwarded for.
pub(crate) fn source(peer: Option<&ConnectInfo<Peer>>, headers: &HeaderMap) -> String {
    let addr = peer.map_or_else(|| "unknown".to_string(), |p| p.0.addr.to_string());
    match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(forwarded) => format!("{addr} (forwarded for {})", forwarded.trim()),
        None => addr,
    }
}

/// Where Alohub posts call events.
#[utoipa::path(post, path = "/webhooks/alohub", tag = "webhook",
    description = "One call event as Alohub sends it (see the spec). 200 only once it is stored durably; a resend answers 200 with `duplicate: true`.",
    request_body(content = Object, description = "An Alohub call event", content_type = "application/json"),
    responses((status = 200, description = "Stored", body = Ack),
        (status = 400, description = "Not JSON (kept in the quarantine)", body = ErrorBody),
        (status = 413, description = "Larger than --max-body", body = ErrorBody),
        (status = 422, description = "JSON but not an event (kept in the quarantine)", body = ErrorBody),
        (status = 503, description = "Not stored (the store is failing or too much is in flight): resend", body = ErrorBody)))]
pub async fn receive(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<Peer>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let peer = peer.map(|Extension(p)| p);
    let form = webhook_key_form(&state.webhook_keys, &headers);
    if let KeyForm::Missing | KeyForm::Wrong { .. } = form {
        state.metrics.unauthorized.inc();
        tracing::warn!(
            source = %source(peer.as_ref(), &headers),
            authorization = form.describe(),
            "webhook request refused (401): the Authorization header holds no configured key"
        );
        return ApiError::Unauthorized.into_response();
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|len| *len > state.max_body as u64) {
        state.metrics.reject("payload_too_large");
        tracing::warn!(
            source = %source(peer.as_ref(), &headers),
            size = len,
            max_body = state.max_body,
            "webhook body refused (413): larger than --max-body"
        );
        return ApiError::PayloadTooLarge.into_response();
    }
    // Room for the body before reading it: past the in-flight budget, 503 at once.
    let room = declared.map_or(state.max_body, |len| len as usize);
    let Some(reservation) = state.ingest.reserve(room) else {
        tracing::warn!(
            source = %source(peer.as_ref(), &headers),
            "webhook request refused (503): --max-inflight bytes are already held; the sender will resend"
        );
        // Read the body and drop it as it comes (nothing is held): a client still sending when
        // the answer goes out would meet a reset connection instead of the 503.
        let mut body = Limited::new(body, state.max_body);
        while let Some(Ok(_)) = body.frame().await {}
        return ApiError::Unavailable.into_response();
    };
    let bytes = match Limited::new(body, state.max_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<LengthLimitError>() => {
            state.metrics.reject("payload_too_large");
            tracing::warn!(
                source = %source(peer.as_ref(), &headers),
                max_body = state.max_body,
                "webhook body refused (413): larger than --max-body"
            );
            return ApiError::PayloadTooLarge.into_response();
        }
        Err(error) => {
            // The client went away or broke the framing: nothing was read, so nothing is kept.
            tracing::debug!(%error, "could not read a webhook body");
            return ApiError::InvalidJson(format!("could not read the body: {error}"))
                .into_response();
        }
    };
    match state.ingest.receive(&bytes, reservation).await {
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
        Ok(Receipt::Rejected(error)) => {
            tracing::warn!(
                source = %source(peer.as_ref(), &headers),
                reason = error.reason(),
                size = bytes.len(),
                detail = %error,
                "webhook body rejected and kept in the quarantine (GET /api/rejected)"
            );
            match error {
                BodyError::NotUtf8 { .. } | BodyError::InvalidJson(_) => {
                    ApiError::InvalidJson(error.to_string()).into_response()
                }
                other => ApiError::InvalidEvent(other.to_string()).into_response(),
            }
        }
        Err(_) => ApiError::Unavailable.into_response(),
    }
}
