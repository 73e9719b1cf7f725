//! `/api/destinations`: where forwarded changes go (see [`crate::forward`]).

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::openapi::{
    DestinationInput, DestinationList, ErrorBody, JobView, PingView, ReplayRequest, ReplayStarted,
    SecretView,
};
use crate::forward::destination::{DestinationSpec, FieldError, Start, new_id};
use crate::forward::sign::new_secret;
use crate::model::time::{format_utc_micros, now_micros};
use crate::store::{Store, StoreError, StoredDestination};
use crate::web::session::Role;

/// How long the secret before a rotation keeps signing beside the new one.
pub const ROTATION_OVERLAP_MICROS: i64 = 24 * 60 * 60 * 1_000_000;

/// A destination as the API shows it: as created, its state, and live figures.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DestinationView {
    pub id: String,
    #[serde(flatten)]
    pub spec: DestinationSpec,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub created_at: String,
    pub stats: Stats,
    /// Only in the answer that creates it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = DestinationStats)]
pub struct Stats {
    /// Deliveries waiting, and matching changes not handed to the destination yet.
    pub pending: i64,
    pub delivered: i64,
    pub failed_attempts: i64,
    pub dead: i64,
    /// How long the oldest pending change has waited since alohook received it.
    pub oldest_pending_seconds: Option<i64>,
    pub last_success_at: Option<String>,
    pub last_error: Option<String>,
}

/// The view of `destination`, with its figures as they are now.
pub async fn view(
    store: &dyn Store,
    destination: StoredDestination,
) -> Result<DestinationView, StoreError> {
    let counts = store.delivery_counts(&destination.id).await?;
    let (waiting, first_waiting) = store
        .count_changes(
            destination.cursor,
            &destination.spec.change_filter(),
            Some(&destination.id),
        )
        .await?;
    let oldest = [counts.oldest_pending_received_at, first_waiting]
        .into_iter()
        .flatten()
        .min();
    let now = now_micros();
    Ok(DestinationView {
        id: destination.id,
        spec: destination.spec,
        enabled: destination.enabled,
        disabled_reason: destination.disabled_reason,
        created_at: format_utc_micros(destination.created_at),
        stats: Stats {
            pending: counts.pending + waiting,
            delivered: counts.delivered,
            failed_attempts: counts.failed_attempts,
            dead: counts.dead,
            oldest_pending_seconds: oldest.map(|at| ((now - at) / 1_000_000).max(0)),
            last_success_at: counts.last_success_at.map(format_utc_micros),
            last_error: counts.last_error,
        },
        secret: None,
    })
}

fn field(error: FieldError) -> ApiError {
    ApiError::parameter(&error.field, error.detail)
}

fn json_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::parameter("body", format!("not a JSON object: {e}")))
}

fn destination_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|e| ApiError::parameter("id", e.body_text()))
}

async fn find(state: &AppState, id: &str) -> Result<StoredDestination, ApiError> {
    state.store.destination(id).await?.ok_or(ApiError::NotFound)
}

/// Applies `change` to the destination `id` as it is stored, and saves it; when it changed
/// meanwhile (another request, or a receiver's 410 disabling it), reads it again and applies
/// `change` to that, so that two changes at once never undo each other.
async fn modify<T>(
    state: &AppState,
    id: &str,
    change: impl Fn(&mut StoredDestination) -> Result<T, ApiError>,
) -> Result<(StoredDestination, T), ApiError> {
    for _ in 0..10 {
        let mut destination = find(state, id).await?;
        let out = change(&mut destination)?;
        if state.store.update_destination(&destination).await? {
            return Ok((destination, out));
        }
    }
    tracing::warn!(destination = %id, "a destination kept changing under an update; refused");
    Err(ApiError::Unavailable)
}

/// Creates a destination from `spec`: a new id and secret, and its place in the feed.
pub async fn create(
    store: &dyn Store,
    spec: DestinationSpec,
) -> Result<StoredDestination, ApiError> {
    let last = store.last_seq().await?;
    let cursor = match spec.start {
        Start::Now => last,
        Start::Beginning => 0,
        Start::After(seq) if seq <= last => seq,
        Start::After(seq) => {
            return Err(ApiError::parameter(
                "start",
                format!("{seq} is beyond the newest change ({last})"),
            ));
        }
    };
    let unavailable = |e: getrandom::Error| {
        tracing::error!(error = %e, "no randomness for a destination's id or secret");
        ApiError::Unavailable
    };
    let id = new_id().map_err(unavailable)?;
    let secret = new_secret().map_err(unavailable)?;
    let created = store
        .create_destination(&id, &spec, &secret, cursor)
        .await?;
    tracing::info!(destination = %created.id, url = %crate::forward::destination::shown_url(&created.spec.url), cursor, "destination created");
    Ok(created)
}

/// `POST /api/destinations`: 201 with the destination and its secret.
#[utoipa::path(post, path = "/destinations", tag = "forwarding",
    request_body = DestinationInput,
    responses((status = 201, description = "Created; `secret` is shown only here", body = DestinationView), (status = 400, description = "A field is wrong (`parameter` names it)", body = ErrorBody)))]
pub async fn post(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let spec = DestinationSpec::from_json(&json_body(&body)?).map_err(field)?;
    let created = create(state.store.as_ref(), spec).await?;
    let secret = created.secret.clone();
    let mut shown = view(state.store.as_ref(), created).await?;
    shown.secret = Some(secret);
    Ok((StatusCode::CREATED, Json(shown)).into_response())
}

/// `GET /api/destinations`.
#[utoipa::path(get, path = "/destinations", tag = "forwarding",
    responses((status = 200, body = DestinationList)))]
pub async fn list(
    State(state): State<AppState>,
    role: Option<axum::Extension<Role>>,
) -> Result<Json<Value>, ApiError> {
    let mut items = Vec::new();
    for destination in state.store.destinations().await? {
        let mut shown = view(state.store.as_ref(), destination).await?;
        shown.redact_for(role.as_deref().copied());
        items.push(shown);
    }
    Ok(Json(json!({ "items": items })))
}

/// What a viewer is not shown of a destination: the values of its headers (an `X-Api-Key`),
/// and the password and query of its URL.
pub const REDACTED: &str = "[redacted]";

impl DestinationView {
    /// The view as `role` may see it: the viewer gets no credentials.
    pub fn redact_for(&mut self, role: Option<Role>) {
        if role != Some(Role::Viewer) {
            return;
        }
        for value in self.spec.headers.values_mut() {
            *value = REDACTED.to_string();
        }
        if let Ok(mut url) = reqwest::Url::parse(&self.spec.url) {
            if url.password().is_some() {
                let _ = url.set_password(Some(REDACTED));
            }
            if url.query().is_some() {
                url.set_query(Some(REDACTED));
            }
            self.spec.url = url.to_string();
        }
    }
}

/// `GET /api/destinations/{id}`.
#[utoipa::path(get, path = "/destinations/{id}", tag = "forwarding", params(("id" = String, Path, description = "The destination's id")),
    responses((status = 200, body = DestinationView), (status = 404, description = "No such destination", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    role: Option<axum::Extension<Role>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<DestinationView>, ApiError> {
    let destination = find(&state, &destination_id(path)?).await?;
    let mut shown = view(state.store.as_ref(), destination).await?;
    shown.redact_for(role.as_deref().copied());
    Ok(Json(shown))
}

/// `GET /api/destinations/{id}/secret`.
#[utoipa::path(get, path = "/destinations/{id}/secret", tag = "forwarding", params(("id" = String, Path, description = "The destination's id")),
    responses((status = 200, body = SecretView), (status = 404, description = "No such destination", body = ErrorBody)))]
pub async fn secret(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let destination = find(&state, &destination_id(path)?).await?;
    Ok(Json(json!({ "secret": destination.secret })))
}

/// `PATCH /api/destinations/{id}`: the fields given change; `enabled: true` clears the reason
/// it was disabled for.
#[utoipa::path(patch, path = "/destinations/{id}", tag = "forwarding", params(("id" = String, Path, description = "The destination's id")),
    request_body(content = DestinationInput, description = "Only the fields to change"),
    responses((status = 200, body = DestinationView), (status = 400, description = "A field is wrong (`parameter` names it)", body = ErrorBody), (status = 404, description = "No such destination", body = ErrorBody)))]
pub async fn patch(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Json<DestinationView>, ApiError> {
    let id = destination_id(path)?;
    let patch = json_body(&body)?;
    let (destination, ()) = modify(&state, &id, |destination| {
        let enabled = destination.spec.patch(&patch).map_err(field)?;
        match enabled {
            Some(true) => {
                destination.enabled = true;
                destination.disabled_reason = None;
            }
            Some(false) if destination.enabled => {
                destination.enabled = false;
                destination.disabled_reason = Some("disabled through the API".to_string());
            }
            _ => {}
        }
        Ok(())
    })
    .await?;
    tracing::info!(destination = %destination.id, enabled = destination.enabled, "destination changed");
    Ok(Json(view(state.store.as_ref(), destination).await?))
}

/// `DELETE /api/destinations/{id}`: 204; its pending deliveries are dropped.
#[utoipa::path(delete, path = "/destinations/{id}", tag = "forwarding", params(("id" = String, Path, description = "The destination's id")),
    responses((status = 204, description = "Removed"), (status = 404, description = "No such destination", body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = destination_id(path)?;
    if !state.store.delete_destination(&id).await? {
        return Err(ApiError::NotFound);
    }
    tracing::info!(destination = %id, "destination removed");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/destinations/{id}/rotate-secret`: a new secret; the old one signs beside it for
/// 24 h, so that receivers can switch without missing a delivery.
#[utoipa::path(post, path = "/destinations/{id}/rotate-secret", tag = "forwarding", params(("id" = String, Path, description = "The destination's id")),
    responses((status = 200, description = "The new secret; the previous one signs beside it for 24 h", body = SecretView), (status = 404, description = "No such destination", body = ErrorBody)))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let secret = new_secret().map_err(|e| {
        tracing::error!(error = %e, "no randomness for a secret");
        ApiError::Unavailable
    })?;
    let (destination, ()) = modify(&state, &destination_id(path)?, |destination| {
        destination.previous_secret =
            Some(std::mem::replace(&mut destination.secret, secret.clone()));
        destination.previous_secret_until = Some(now_micros() + ROTATION_OVERLAP_MICROS);
        Ok(())
    })
    .await?;
    tracing::info!(destination = %destination.id, "secret rotated; the previous one signs for 24 h more");
    Ok(Json(json!({ "secret": destination.secret })))
}

/// `POST /api/destinations/{id}/ping`: a `test.ping` through the real signing and sending path,
/// whatever the destination's filter; answers what came of it.
#[utoipa::path(post, path = "/destinations/{id}/ping", tag = "forwarding", params(("id" = String, Path, description = "The destination's id")),
    responses((status = 200, body = PingView), (status = 404, description = "No such destination", body = ErrorBody)))]
pub async fn ping(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let destination = find(&state, &destination_id(path)?).await?;
    let sender = crate::forward::send::Sender::new().map_err(|e| {
        tracing::error!(error = %e, "cannot make an HTTP client");
        ApiError::Unavailable
    })?;
    let (id, body) = crate::forward::send::Sender::ping(&destination);
    let sent = sender.send(&destination, "test.ping", &id, body).await;
    Ok(Json(json!({
        "delivered": sent.verdict() == crate::forward::retry::Verdict::Delivered,
        "webhook_id": id,
        "status": sent.status,
        "error": sent.error,
        "duration_ms": sent.duration_ms,
        "response": sent.response,
    })))
}

/// `POST /api/destinations/{id}/replay`: queues again every change a flat filter matches (of
/// those the destination receives), as a background job: 202 with the job's id and the count.
#[utoipa::path(post, path = "/destinations/{id}/replay", tag = "forwarding", params(("id" = String, Path, description = "The destination's id")),
    request_body(content = Option<ReplayRequest>, description = "Optional filter; empty for everything"),
    responses((status = 202, description = "The job started", body = ReplayStarted), (status = 400, description = "A field is wrong (`parameter` names it)", body = ErrorBody), (status = 404, description = "No such destination", body = ErrorBody)))]
pub async fn replay(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let destination = find(&state, &destination_id(path)?).await?;
    let filter = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        json_body(&body)?
    };
    let scope = crate::forward::replay::scope(&destination, &filter, &state.tz).map_err(field)?;
    let job = crate::forward::replay::start(state.store.clone(), &destination, scope).await?;
    tracing::info!(destination = %destination.id, job = %job.id, matched = job.matched, "replay started");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "job_id": job.id, "matched": job.matched })),
    )
        .into_response())
}

/// `GET /api/jobs/{id}`: how a background job (a replay) is going.
#[utoipa::path(get, path = "/jobs/{id}", tag = "forwarding",
    params(("id" = String, Path, description = "The job's id")),
    responses((status = 200, body = JobView), (status = 404, description = "No such job", body = ErrorBody)))]
pub async fn job(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = destination_id(path)?;
    let job = state.store.job(&id).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(crate::forward::replay::view(&job, now_micros())))
}
