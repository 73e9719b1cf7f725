//! Putting it together: open the store, start the writer, serve HTTP until told to stop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::api::{self, AppState, KeySet};
use crate::config::{Config, redact_url};
use crate::feed::Feed;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("no webhook key is configured")]
    NoWebhookKey,
    #[error("no API token is configured")]
    NoApiToken,
    #[error("the viewer token is the API token: give the read-only role a token of its own")]
    ViewerTokenIsApiToken,
    #[error(
        "the viewer token is too short: give at least {MIN_VIEWER_TOKEN} characters (it signs in to the dashboard)"
    )]
    ViewerTokenTooShort,
    #[error("unsupported database URL {0:?}: use sqlite://<path> or postgres://…")]
    UnsupportedDatabase(String),
    /// The store's error is part of the message (the field is not a `source`, or a report of
    /// the whole chain would say it twice).
    #[error("cannot open the database {url}: {error}")]
    Store { url: String, error: StoreError },
    #[error("the HTTP server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// The shortest viewer token taken: a person types it to sign in, and it must not be guessed.
pub const MIN_VIEWER_TOKEN: usize = 16;

/// Opens the store named by `config.database` (the backend is chosen by the URL scheme).
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, ServerError> {
    let url = config.database.clone();
    let settings = config.merge_settings();
    if url.starts_with("sqlite:") {
        let opened = tokio::task::spawn_blocking({
            let url = url.clone();
            move || SqliteStore::open_url(&url, settings)
        })
        .await
        .map_err(|_| ServerError::Store {
            url: redact_url(&url),
            error: StoreError::Closed,
        })?;
        let store = opened.map_err(|error| ServerError::Store {
            url: redact_url(&url),
            error,
        })?;
        Ok(Arc::new(store))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = PgStore::open(&url, settings)
            .await
            .map_err(|error| ServerError::Store {
                url: redact_url(&url),
                error,
            })?;
        Ok(Arc::new(store))
    } else {
        Err(ServerError::UnsupportedDatabase(redact_url(&url)))
    }
}

/// Serves alohook on `listener` until `shutdown` completes, then stops accepting, finishes the
/// requests in flight and their commits, and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let store = open_store(&config).await?;
    run_with_store(listener, config, store, shutdown).await
}

/// [`run`] with a store opened by the caller (tests use it to inject failures).
pub async fn run_with_store(
    listener: TcpListener,
    config: Config,
    store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    if config.webhook_keys.is_empty() {
        return Err(ServerError::NoWebhookKey);
    }
    let api_token = config.api_token.clone().ok_or(ServerError::NoApiToken)?;
    if config.dashboard.viewer_token.as_deref() == Some(api_token.as_str()) {
        return Err(ServerError::ViewerTokenIsApiToken);
    }
    if config
        .dashboard
        .viewer_token
        .as_ref()
        .is_some_and(|t| t.chars().count() < MIN_VIEWER_TOKEN)
    {
        return Err(ServerError::ViewerTokenTooShort);
    }
    let metrics = Arc::new(Metrics::new());
    let feed = Feed::start(store.clone())
        .await
        .map_err(|error| ServerError::Store {
            url: redact_url(&config.database),
            error,
        })?;
    // Ingest's writer tells forwarding when the webhook is saturating the machine.
    let pacer = Arc::new(crate::forward::pacer::Pacer::default());
    let (ingest, writer) = Ingest::start(
        store.clone(),
        config.timezone.clone(),
        metrics.clone(),
        config.max_inflight,
        feed.clone(),
        pacer.clone(),
    );
    let (stop_streams, stopping) = tokio::sync::watch::channel(false);
    let (store_for_forwarding, feed_for_forwarding, metrics_for_forwarding) =
        (store.clone(), feed.clone(), metrics.clone());
    let stopping_for_forwarding = stopping.clone();
    let state = AppState {
        ingest,
        store,
        webhook_keys: Arc::new(KeySet::new(&config.webhook_keys)),
        access: Arc::new(crate::web::session::Access::new(
            &[api_token.to_string()],
            config.dashboard.viewer_token.as_slice(),
            config.dashboard.viewer_can_close,
            config.dashboard.session_idle,
        )),
        dashboard: Arc::new(config.dashboard.clone()),
        tz: config.timezone.clone(),
        tz_name: config.timezone_name.as_str().into(),
        thresholds: config.thresholds,
        exports: Arc::new(tokio::sync::Semaphore::new(api::export::EXPORTS_AT_ONCE)),
        max_body: config.max_body,
        metrics,
        api_reads: Arc::new(tokio::sync::Semaphore::new(api::API_READS_AT_ONCE)),
        reads_computing: Arc::new(tokio::sync::Semaphore::new(api::reads_computing_at_once())),
        feed,
        streams: Arc::new(tokio::sync::Semaphore::new(config.max_streams)),
        max_streams: config.max_streams,
        stopping,
    };
    // Field by field, so that a log shipper reading --log-format json gets each one.
    tracing::info!(
        listen = %config.listen,
        data_dir = %config.data_dir.display(),
        database = %redact_url(&config.database),
        webhook_keys = config.webhook_keys.len(),
        timezone = %config.timezone_name,
        final_statuses = %config.final_statuses.as_slice().join(","),
        max_body = config.max_body,
        max_inflight = config.max_inflight,
        client_timeout_seconds = config.client_timeout.as_secs(),
        max_streams = config.max_streams,
        max_connections = config.max_connections,
        retry_schedule = %config.retry_schedule,
        short_abandon_seconds = config.thresholds.short_abandon_seconds,
        service_level_seconds = config.thresholds.service_level_seconds,
        "alohook started"
    );
    let listener =
        api::conn::GuardedListener::new(listener, config.client_timeout, config.max_connections);
    let app = api::app(state).into_make_service_with_connect_info::<api::conn::Peer>();
    // Live streams never end by themselves: told to stop, they end, and the graceful shutdown
    // that waits for every connection can finish.
    let shutdown = async move {
        shutdown.await;
        let _ = stop_streams.send(true);
    };
    let forwarder = crate::forward::worker::start(
        store_for_forwarding,
        feed_for_forwarding,
        metrics_for_forwarding,
        config.retry_schedule.clone(),
        pacer,
        stopping_for_forwarding,
    );
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(10), forwarder).await;
    // Every request (and with it every handle on the writer) is gone: the writer drains what is
    // queued, commits it and stops.
    if tokio::time::timeout(Duration::from_secs(30), writer.finished())
        .await
        .is_err()
    {
        tracing::error!("the writer did not finish within 30 s of shutdown");
    }
    tracing::info!("alohook stopped");
    served.map_err(ServerError::Serve)
}
