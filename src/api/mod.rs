//! HTTP: the webhook, the read API, health and metrics. Handlers are thin shells over `ingest`
//! and `store`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use jiff::tz::TimeZone;
use serde_json::json;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::feed::Feed;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::store::Store;

pub mod auth;
pub mod callbacks;
pub mod calls;
pub mod conn;
pub mod deliveries;
pub mod destinations;
pub mod error;
pub mod export;
pub mod feed;
pub mod openapi;
pub mod stats;
pub mod webhook;

pub use auth::KeySet;
use error::ApiError;

/// Requests that take longer are answered 408.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `/api` requests answered at once; more wait their turn (see `auth::require_api_token`).
/// With each answer capped at a few MiB, this is what bounds the memory reads can hold.
pub const API_READS_AT_ONCE: usize = 8;

/// `/api` reads computing at once: half the cores, at least one. A read computing holds a core
/// (its rendering here, its query in the database); more wait their turn, so that a handful of
/// readers in a loop (a dashboard, scripts) leave the other cores to Alohub's events, whose
/// acknowledgement is the one latency that must not suffer. A place is held while the answer is
/// computed, not while it is sent.
pub fn reads_computing_at_once() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    (cores / 2).max(1)
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub ingest: Ingest,
    pub store: Arc<dyn Store>,
    pub webhook_keys: Arc<KeySet>,
    /// Who may use the API and the dashboard.
    pub access: Arc<crate::web::session::Access>,
    /// The dashboard's settings.
    pub dashboard: Arc<crate::config::DashboardConfig>,
    pub tz: TimeZone,
    pub max_body: usize,
    pub metrics: Arc<Metrics>,
    /// Places for `/api` requests being answered (see [`API_READS_AT_ONCE`]).
    pub api_reads: Arc<tokio::sync::Semaphore>,
    /// Places for `/api` reads being computed (see [`reads_computing_at_once`]).
    pub reads_computing: Arc<tokio::sync::Semaphore>,
    /// The change feed.
    pub feed: Feed,
    /// Places for live streams (`--max-streams`).
    pub streams: Arc<tokio::sync::Semaphore>,
    /// `--max-streams`.
    pub max_streams: usize,
    /// The configured time zone's name (`Asia/Ho_Chi_Minh`).
    pub tz_name: Arc<str>,
    /// The figures' thresholds.
    pub thresholds: crate::report::stats::Thresholds,
    /// Places for exports being streamed (see [`export::EXPORTS_AT_ONCE`]).
    pub exports: Arc<tokio::sync::Semaphore>,
    /// Becomes `true` when the server starts shutting down: live streams end then.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// The `/api` routes that hold one of the reads' places while they answer.
fn api_reads() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(calls::list_calls))
        .routes(routes!(calls::get_call))
        .routes(routes!(calls::call_events))
        .routes(routes!(calls::list_rejected))
        .routes(routes!(stats::stats))
        .routes(routes!(callbacks::list))
        .routes(routes!(callbacks::close))
        .routes(routes!(feed::list_changes))
        .routes(routes!(destinations::list, destinations::post))
        .routes(routes!(
            destinations::get,
            destinations::patch,
            destinations::delete
        ))
        .routes(routes!(destinations::secret))
        .routes(routes!(destinations::rotate_secret))
        .routes(routes!(destinations::ping))
        .routes(routes!(destinations::replay))
        .routes(routes!(destinations::job))
        .routes(routes!(deliveries::list))
}

/// The `/api` routes with places of their own: the live stream, and exports (a long download
/// must not hold one of the reads').
fn api_long() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(feed::stream))
        .routes(routes!(export::calls))
        .routes(routes!(export::callbacks))
}

/// The routes outside `/api` (and the OpenAPI document, which needs no token).
fn outside() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(webhook::receive))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi::document))
}

/// The OpenAPI document of every route [`app`] serves: the routers are built by `routes!`,
/// which adds a handler and its `#[utoipa::path]` description together.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut api = api_reads().into_openapi();
    api.merge(api_long().into_openapi());
    let mut document = openapi::ApiDoc::openapi();
    document.merge(outside().into_openapi());
    document.merge(crate::web::routes(None).into_openapi());
    openapi::finish(document.nest("/api", api))
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let (reads, _) = api_reads().split_for_parts();
    let (long, _) = api_long().split_for_parts();
    let api = reads
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::limit_reads,
        ))
        .merge(long)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_token,
        ));
    let (outside, _) = outside().split_for_parts();
    let (dashboard, _) = crate::web::routes(Some(state.clone())).split_for_parts();
    outside
        .nest("/api", api)
        .merge(dashboard)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(time_limit))
        .layer(axum::middleware::from_fn(crate::web::security_headers))
        .layer(axum::middleware::from_fn(conn::mark_request_read))
        .with_state(state)
}

/// Middleware: a request not answered within [`REQUEST_TIMEOUT`] is answered 408, in the JSON of
/// every other error. (Only the handler is timed: a live stream's body goes on after it.)
async fn time_limit(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    within(REQUEST_TIMEOUT, next.run(request)).await
}

/// `answer`, or 408 `{"error":"request_timeout"}` once `limit` has passed.
async fn within(limit: Duration, answer: impl Future<Output = Response>) -> Response {
    tokio::time::timeout(limit, answer)
        .await
        .unwrap_or_else(|_| ApiError::RequestTimeout.into_response())
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// 405 in the JSON of every other error (axum adds the `Allow` header).
async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Alive: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = openapi::Health)))]
async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

/// Ready when the store has room and answers (checked without waiting on the writer, so that
/// readiness does not flap with lock contention) and commits succeed (after a failed commit, an
/// empty one is tried until one succeeds).
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready to take events", body = openapi::Health),
    (status = 503, description = "Not ready: the log says why", body = openapi::ErrorBody)))]
async fn readyz(State(state): State<AppState>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), state.store.check_writable()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "not ready: the store cannot take writes");
            return ApiError::Unavailable.into_response();
        }
        Err(_) => {
            tracing::warn!("not ready: the store did not answer within 2 s");
            return ApiError::Unavailable.into_response();
        }
    }
    if !state.ingest.commits_succeed().await {
        tracing::warn!("not ready: commits are failing");
        return ApiError::Unavailable.into_response();
    }
    axum::Json(json!({"status": "ready"})).into_response()
}

/// Prometheus metrics, in the OpenMetrics text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "The metrics", content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String)))]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_request_past_the_time_limit_is_a_json_408() {
        let slow = async {
            tokio::time::sleep(REQUEST_TIMEOUT * 2).await;
            healthz().await
        };
        let response = within(REQUEST_TIMEOUT, slow).await;
        assert_eq!(response.status(), axum::http::StatusCode::REQUEST_TIMEOUT);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(&body[..], br#"{"error":"request_timeout"}"#);
        let quick = within(REQUEST_TIMEOUT, healthz()).await;
        assert_eq!(quick.status(), axum::http::StatusCode::OK);
    }
}

/// A route added any other way than through `routes!` would be served without being described
/// in the OpenAPI document: no source file may add one (no `route`, `route_service`,
/// `nest_service`, plain axum routers, or axum method routers), so every
/// route comes from `routes!` and its handler's `#[utoipa::path]`.
#[cfg(test)]
#[test]
fn every_route_is_added_with_its_description() {
    fn sources(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path, text));
            }
        }
    }
    let mut files = Vec::new();
    sources(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    assert!(files.len() > 10);
    // Built at run time, so that this test's own text does not match.
    let forbidden: Vec<String> = ["route", "route_service", "nest_service"]
        .iter()
        .map(|m| format!(".{m}("))
        .chain([format!("{}::routing", "axum")])
        .collect();
    let plain_router = format!("{}::new(", "Router");
    for (path, text) in &files {
        for pattern in &forbidden {
            assert!(
                !text.contains(pattern.as_str()),
                "{} uses `{pattern}`: add routes with `.routes(routes!(handler))` and a \
                 `#[utoipa::path]` on the handler, so that /api/openapi.json describes them",
                path.display()
            );
        }
        for (at, _) in text.match_indices(&plain_router) {
            assert!(
                text[..at].ends_with("OpenApi"),
                "{} builds a plain axum router: build it with OpenApiRouter",
                path.display()
            );
        }
    }
}
