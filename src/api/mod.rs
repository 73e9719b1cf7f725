//! HTTP: the webhook, the read API, health and metrics. Handlers are thin shells over `ingest`
//! and `store`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jiff::tz::TimeZone;
use serde_json::json;
use tower_http::timeout::TimeoutLayer;

use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::store::Store;

pub mod auth;
pub mod calls;
pub mod conn;
pub mod error;
pub mod webhook;

pub use auth::KeySet;
use error::ApiError;

/// Requests that take longer are answered 408.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub ingest: Ingest,
    pub store: Arc<dyn Store>,
    pub webhook_keys: Arc<KeySet>,
    pub api_tokens: Arc<KeySet>,
    pub tz: TimeZone,
    pub max_body: usize,
    pub metrics: Arc<Metrics>,
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .route("/calls", get(calls::list_calls))
        .route("/calls/{call_id}", get(calls::get_call))
        .route("/calls/{call_id}/events", get(calls::call_events))
        .route("/rejected", get(calls::list_rejected))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_token,
        ));
    Router::new()
        .route(
            "/webhooks/alohub",
            post(webhook::receive).fallback(webhook::method_not_allowed),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/api", api)
        .fallback(not_found)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), state.store.check_writable()).await {
        Ok(Ok(())) => axum::Json(json!({"status": "ready"})).into_response(),
        Ok(Err(error)) => {
            tracing::warn!(%error, "not ready: the store does not accept writes");
            ApiError::Unavailable.into_response()
        }
        Err(_) => {
            tracing::warn!("not ready: the store did not answer within 2 s");
            ApiError::Unavailable.into_response()
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
