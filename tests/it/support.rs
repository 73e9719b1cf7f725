//! A real alohook server on an ephemeral port, and helpers to talk to it over HTTP.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use alohook::config::Settings;
use alohook::forward::destination::DestinationSpec;
use alohook::model::change::ChangeFilter;
use alohook::server::{self, ServerError};
use alohook::store::{
    CallCursor, CallFilter, CallPage, ChangeLog, ChangePage, Committed, Deliveries, DeliveryCounts,
    DeliveryFilter, DeliveryPage, DeliveryUpdate, Destinations, EventPage, Incoming, RejectedPage,
    Store, StoreError, StoredCall, StoredDelivery, StoredDestination,
};
use async_trait::async_trait;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const KEY: &str = "test-webhook-key";
pub const TOKEN: &str = "test-api-token";

pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ServerError>>>,
}

/// Where a test keeps its data: a temporary data dir, and with PostgreSQL a database of its own.
pub struct Db {
    dir: tempfile::TempDir,
    postgres: Option<(String, String)>,
}

impl Db {
    pub fn sqlite() -> Self {
        Db {
            dir: tempfile::tempdir().unwrap(),
            postgres: None,
        }
    }

    /// A fresh database on the server of ALOHOOK_TEST_POSTGRES_URL, so that runs and tests never
    /// see each other's data.
    pub async fn postgres() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let admin = std::env::var("ALOHOOK_TEST_POSTGRES_URL")
            .expect("ALOHOOK_TEST_POSTGRES_URL is set for the PostgreSQL tests");
        let name = format!(
            "alohook_test_{}_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        admin_execute(&admin, &format!("CREATE DATABASE {name}")).await;
        let mut url = url::Url::parse(&admin).expect("ALOHOOK_TEST_POSTGRES_URL is a URL");
        url.set_path(&format!("/{name}"));
        Db {
            dir: tempfile::tempdir().unwrap(),
            postgres: Some((admin, url.to_string())),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The database URL, for PostgreSQL.
    pub fn database(&self) -> Option<String> {
        self.postgres.as_ref().map(|(_, url)| url.clone())
    }

    /// Drops the test's PostgreSQL database.
    pub async fn cleanup(mut self) {
        if let Some((admin, url)) = self.postgres.take() {
            admin_execute(&admin, &drop_database(&url)).await;
        }
    }
}

fn drop_database(url: &str) -> String {
    let name = url.rsplit('/').next().unwrap_or_default();
    format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")
}

/// A test that panicked before its `cleanup` still leaves no database behind.
impl Drop for Db {
    fn drop(&mut self) {
        if let Some((admin, url)) = self.postgres.take() {
            // A runtime of its own on a thread of its own: this may run inside the test's
            // runtime, which cannot be blocked on.
            let _ = std::thread::spawn(move || {
                if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    runtime.block_on(admin_execute(&admin, &drop_database(&url)));
                }
            })
            .join();
        }
    }
}

async fn admin_execute(admin: &str, sql: &str) {
    let (client, connection) = tokio_postgres::connect(admin, tokio_postgres::NoTls)
        .await
        .expect("connect to ALOHOOK_TEST_POSTGRES_URL");
    let task = tokio::spawn(connection);
    client.batch_execute(sql).await.unwrap();
    drop(client);
    let _ = task.await;
}

/// Runs each test on SQLite, and on PostgreSQL when ALOHOOK_TEST_POSTGRES_URL is set (otherwise
/// the PostgreSQL run shows as ignored, with the reason).
#[macro_export]
macro_rules! on_every_backend {
    ($($(#[$meta:meta])* async fn $name:ident($db:ident) $body:block)*) => {
        $(
            $(#[$meta])*
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let $db = $crate::support::Db::sqlite();
                    $body
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(not(postgres_tests), ignore = "set ALOHOOK_TEST_POSTGRES_URL to run it")]
                async fn postgres() {
                    let $db = $crate::support::Db::postgres().await;
                    $body
                    $db.cleanup().await;
                }
            }
        )*
    };
}

/// Settings every test server shares.
pub fn settings(db: &Db) -> Settings {
    Settings {
        data_dir: Some(db.path().to_path_buf()),
        database: db.database(),
        webhook_keys: vec![KEY.to_string()],
        api_token: Some(TOKEN.to_string()),
        ..Settings::default()
    }
}

impl TestServer {
    pub async fn start(db: &Db) -> Self {
        Self::start_with(settings(db), None).await
    }

    /// Starts with `settings`, and with `store` instead of the configured database when given.
    /// A SQLite database that the server stopped just before still holds for a moment (its
    /// background tasks let go of the store after `stop` returns): that start is tried again.
    pub async fn start_with(settings: Settings, store: Option<Arc<dyn Store>>) -> Self {
        for _ in 0..100 {
            match Self::try_start(settings.clone(), store.clone()).await {
                Ok(server) => return server,
                Err(error) if error.contains("another alohook is already using") => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(error) => panic!("the test server stopped before it was ready: {error}"),
            }
        }
        panic!("the SQLite database stayed held by the server stopped before");
    }

    async fn try_start(settings: Settings, store: Option<Arc<dyn Store>>) -> Result<Self, String> {
        let config = settings.resolve().expect("test settings resolve");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = rx.await;
        };
        let handle = tokio::spawn(async move {
            match store {
                Some(store) => server::run_with_store(listener, config, store, shutdown).await,
                None => server::run(listener, config, shutdown).await,
            }
        });
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .unwrap();
        let server = TestServer {
            base,
            client,
            shutdown: Some(tx),
            handle: Some(handle),
        };
        // The listener is bound already; wait only for the store to be open (a start that
        // recomputes or builds something, on a machine busy with other tests, takes seconds).
        let mut server = server;
        for _ in 0..1000 {
            if let Ok(r) = server.client.get(server.url("/readyz")).send().await
                && r.status() == StatusCode::OK
            {
                return Ok(server);
            }
            if server.handle.as_ref().is_some_and(|h| h.is_finished()) {
                let ended = server.handle.take().unwrap().await;
                return Err(format!("{ended:?}"));
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("test server did not become ready");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Graceful stop: in-flight requests finish, queued commits land.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().unwrap();
        }
    }

    /// POSTs a body to the webhook with the test key.
    pub async fn post(&self, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
        self.post_with_auth(body, Some(KEY)).await
    }

    pub async fn post_with_auth(
        &self,
        body: impl Into<reqwest::Body>,
        auth: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .post(self.url("/webhooks/alohub"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// POSTs a valid event and returns its id; panics unless it is answered 200.
    pub async fn send(&self, body: &Value) -> i64 {
        let (status, answer) = self.post(body.to_string()).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer["event_id"].as_i64().unwrap()
    }

    /// GET with the API token.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.get_with_auth(path, Some(&format!("Bearer {TOKEN}")))
            .await
    }

    pub async fn get_with_auth(&self, path: &str, auth: Option<&str>) -> (StatusCode, Value) {
        let mut request = self.client.get(self.url(path));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.text().await.unwrap()
    }

    pub async fn call(&self, call_id: &str) -> Value {
        let (status, call) = self.get(&format!("/api/calls/{call_id}")).await;
        assert_eq!(status, StatusCode::OK, "{call}");
        call
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A store that fails every write while `failing` is set, as a full disk or a lost database
/// would, and whose commits take `delay` longer, as a disk or a database under load would.
pub struct FlakyStore {
    pub inner: Arc<dyn Store>,
    pub failing: AtomicBool,
    pub delay: std::time::Duration,
    /// Call listings that succeed before every next one fails (a database lost mid-export).
    pub listings_left: std::sync::atomic::AtomicI64,
}

impl FlakyStore {
    /// A store whose commits take `delay` longer and never fail.
    pub fn slow(inner: Arc<dyn Store>, delay: std::time::Duration) -> Self {
        FlakyStore {
            inner,
            failing: AtomicBool::new(false),
            delay,
            listings_left: i64::MAX.into(),
        }
    }
}

impl FlakyStore {
    fn check(&self) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            Err(StoreError::Database("injected failure: disk full".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl ChangeLog for FlakyStore {
    async fn changes(
        &self,
        after: i64,
        filter: &ChangeFilter,
        limit: usize,
        max_bytes: usize,
    ) -> Result<ChangePage, StoreError> {
        self.inner.changes(after, filter, limit, max_bytes).await
    }
    async fn last_seq(&self) -> Result<i64, StoreError> {
        self.inner.last_seq().await
    }
    async fn count_changes(
        &self,
        after: i64,
        filter: &ChangeFilter,
        undelivered_to: Option<&str>,
    ) -> Result<(i64, Option<i64>), StoreError> {
        self.inner
            .count_changes(after, filter, undelivered_to)
            .await
    }
    fn watch_other_writers(&self) -> Option<tokio::sync::mpsc::Receiver<()>> {
        self.inner.watch_other_writers()
    }
}

#[async_trait]
impl Destinations for FlakyStore {
    async fn create_destination(
        &self,
        id: &str,
        spec: &DestinationSpec,
        secret: &str,
        cursor: i64,
    ) -> Result<StoredDestination, StoreError> {
        self.inner
            .create_destination(id, spec, secret, cursor)
            .await
    }
    async fn destinations(&self) -> Result<Vec<StoredDestination>, StoreError> {
        self.inner.destinations().await
    }
    async fn destination(&self, id: &str) -> Result<Option<StoredDestination>, StoreError> {
        self.inner.destination(id).await
    }
    async fn update_destination(&self, d: &StoredDestination) -> Result<bool, StoreError> {
        self.inner.update_destination(d).await
    }
    async fn delete_destination(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.delete_destination(id).await
    }
    async fn delivery_counts(&self, id: &str) -> Result<DeliveryCounts, StoreError> {
        self.inner.delivery_counts(id).await
    }
}

#[async_trait]
impl Deliveries for FlakyStore {
    async fn save_deliveries(
        &self,
        destination_id: &str,
        updates: Vec<DeliveryUpdate>,
        cursor: i64,
    ) -> Result<(), StoreError> {
        self.inner
            .save_deliveries(destination_id, updates, cursor)
            .await
    }
    async fn due_deliveries(
        &self,
        destination_id: &str,
        now: i64,
        limit: usize,
    ) -> Result<Vec<StoredDelivery>, StoreError> {
        self.inner.due_deliveries(destination_id, now, limit).await
    }
    async fn release_call(
        &self,
        destination_id: &str,
        call_id: &str,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        self.inner.release_call(destination_id, call_id, now).await
    }
    async fn calls_pending(&self, destination_id: &str) -> Result<Vec<String>, StoreError> {
        self.inner.calls_pending(destination_id).await
    }
    async fn delivered_positions(
        &self,
        destination_id: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<i64>, StoreError> {
        self.inner
            .delivered_positions(destination_id, from, to)
            .await
    }
    async fn replay_matches(
        &self,
        destination_id: &str,
        scope: &alohook::store::deliveries::ReplayScope,
        upto: i64,
    ) -> Result<i64, StoreError> {
        self.inner.replay_matches(destination_id, scope, upto).await
    }
    async fn queue_replay(
        &self,
        destination_id: &str,
        scope: &alohook::store::deliveries::ReplayScope,
        after: i64,
        upto: i64,
        per_call: bool,
        touch: bool,
    ) -> Result<i64, StoreError> {
        self.inner
            .queue_replay(destination_id, scope, after, upto, per_call, touch)
            .await
    }
    async fn pending_deliveries(
        &self,
        destination_id: &str,
    ) -> Result<(i64, Option<i64>), StoreError> {
        self.inner.pending_deliveries(destination_id).await
    }
    async fn release_held(
        &self,
        destination_id: &str,
        per_call: bool,
        now: i64,
    ) -> Result<(), StoreError> {
        self.inner.release_held(destination_id, per_call, now).await
    }
    async fn disable_destination(
        &self,
        destination_id: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.inner.disable_destination(destination_id, reason).await
    }
    async fn release_lease(&self, destination_id: &str, owner: &str) -> Result<(), StoreError> {
        self.inner.release_lease(destination_id, owner).await
    }
    async fn save_job(&self, job: &alohook::store::deliveries::Job) -> Result<(), StoreError> {
        self.inner.save_job(job).await
    }
    async fn job(&self, id: &str) -> Result<Option<alohook::store::deliveries::Job>, StoreError> {
        self.inner.job(id).await
    }
    async fn lease_destination(
        &self,
        destination_id: &str,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError> {
        self.inner
            .lease_destination(destination_id, owner, now, until)
            .await
    }
    async fn deliveries(
        &self,
        filter: &DeliveryFilter,
        limit: usize,
        before: Option<i64>,
    ) -> Result<DeliveryPage, StoreError> {
        self.inner.deliveries(filter, limit, before).await
    }
}

#[async_trait]
impl alohook::store::reports::Reports for FlakyStore {
    async fn stats(
        &self,
        filter: &CallFilter,
        stats: alohook::report::stats::StatsBuilder,
    ) -> Result<alohook::report::stats::StatsBuilder, StoreError> {
        self.inner.stats(filter, stats).await
    }
    async fn callbacks(
        &self,
        filter: &alohook::store::callbacks::CallbackFilter,
        limit: usize,
        cursor: Option<alohook::store::callbacks::CallbackCursor>,
    ) -> Result<alohook::store::callbacks::CallbackPage, StoreError> {
        self.inner.callbacks(filter, limit, cursor).await
    }
    async fn close_callback(
        &self,
        id: &str,
        note: Option<String>,
        by: Option<String>,
        at: i64,
    ) -> Result<Option<alohook::report::callbacks::Item>, StoreError> {
        self.inner.close_callback(id, note, by, at).await
    }
}

#[async_trait]
impl alohook::store::Sessions for FlakyStore {
    async fn end_session(&self, id: &str, at: i64, forget_before: i64) -> Result<(), StoreError> {
        self.inner.end_session(id, at, forget_before).await
    }

    async fn session_ended(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.session_ended(id).await
    }
}

#[async_trait]
impl Store for FlakyStore {
    async fn commit(&self, batch: Vec<Incoming>) -> Result<Committed, StoreError> {
        tokio::time::sleep(self.delay).await;
        self.check()?;
        self.inner.commit(batch).await
    }
    fn concurrent_commits(&self) -> usize {
        self.inner.concurrent_commits()
    }
    async fn call(&self, call_id: &str) -> Result<Option<StoredCall>, StoreError> {
        self.inner.call(call_id).await
    }
    async fn calls_within(
        &self,
        filter: &CallFilter,
        limit: usize,
        cursor: Option<CallCursor>,
        budget: usize,
    ) -> Result<CallPage, StoreError> {
        if self.listings_left.fetch_sub(1, Ordering::SeqCst) <= 0 {
            return Err(StoreError::Database(
                "injected failure: connection lost".into(),
            ));
        }
        self.inner.calls_within(filter, limit, cursor, budget).await
    }
    async fn call_events(
        &self,
        call_id: &str,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Option<EventPage>, StoreError> {
        self.inner.call_events(call_id, after, limit).await
    }
    async fn rejected(
        &self,
        limit: usize,
        before: Option<i64>,
    ) -> Result<RejectedPage, StoreError> {
        self.inner.rejected(limit, before).await
    }
    async fn check_writable(&self) -> Result<(), StoreError> {
        self.check()?;
        self.inner.check_writable().await
    }
}

/// The store `settings` name, opened as `serve` would.
pub async fn open_store(settings: &Settings) -> Arc<dyn Store> {
    alohook::server::open_store(&settings.clone().resolve().unwrap())
        .await
        .unwrap()
}

/// One event of a call, as Alohub sends it (times local, empty when unknown).
#[allow(clippy::too_many_arguments)]
pub fn call_event(
    call_id: &str,
    status: &str,
    direction: &str,
    caller: &str,
    destination: &str,
    hotline: &str,
    user: &str,
    times: [&str; 3],
    hold: &str,
) -> Value {
    serde_json::json!({
        "call_id": call_id, "call_status": status, "direction": direction,
        "caller_number": caller, "destination_number": destination,
        "starttime": times[0], "answertime": times[1], "endtime": times[2],
        "hangup_by": "", "hotline": hotline, "total_duration": "", "holding_duration": hold,
        "recording_url": "", "objectId": 1, "transactionID": format!("T_{call_id}"),
        "userName": user, "eventType": "call"
    })
}

/// The in-progress event of the spec, for `call_id`.
pub fn in_progress(call_id: &str) -> Value {
    serde_json::json!({
        "call_id": call_id, "call_status": "answered", "direction": "outbound",
        "caller_number": "03899xxx", "destination_number": "888",
        "starttime": "2024-01-13 15:00:30", "answertime": "2024-01-13 15:00:35",
        "endtime": "", "hangup_by": "", "hotline": "", "total_duration": "",
        "holding_duration": "", "recording_url": "", "objectId": 1,
        "transactionID": "TRANSID_1111", "userName": "adminxxx", "eventType": "call"
    })
}

/// The final event of the spec, for `call_id`.
pub fn ended(call_id: &str) -> Value {
    serde_json::json!({
        "call_id": call_id, "call_status": "answered", "direction": "outbound",
        "caller_number": "03899xxx", "destination_number": "888",
        "starttime": "2024-01-13 15:00:30", "answertime": "2024-01-13 15:00:35",
        "endtime": "2024-01-13 15:05:30", "hangup_by": "customer", "hotline": "",
        "total_duration": "300", "holding_duration": "0",
        "recording_url": "https://media.example.invalid:8443/IPCCMedia/MP3Export.do?url=file.mp3&source=ipcc",
        "objectId": 1, "transactionID": "TRANSID_1111", "userName": "adminxxx", "eventType": "call"
    })
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `alohook serve` as a child process on a fixed port, waiting until it listens.
pub fn serve_process(data_dir: &Path, port: u16, extra: &[&str]) -> std::process::Child {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_alohook"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data_dir)
        .args(["--webhook-key", KEY, "--api-token", TOKEN])
        .args(extra)
        .env("ALOHOOK_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child
}

/// A TCP proxy to PostgreSQL that a test can cut (every connection closed, new ones refused) and
/// restore, as a network partition or a database restart would.
pub struct CutProxy {
    pub port: u16,
    open: Arc<AtomicBool>,
    frozen: tokio::sync::watch::Sender<bool>,
    /// Frozen connections the client has not closed, by number, with when they froze.
    stalled: Arc<std::sync::Mutex<std::collections::HashMap<u64, std::time::Instant>>>,
    connections: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl CutProxy {
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let (frozen, _) = tokio::sync::watch::channel(false);
        let stalled: Arc<std::sync::Mutex<std::collections::HashMap<u64, std::time::Instant>>> =
            Arc::default();
        let connections = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (accept_open, accept_connections) = (open.clone(), connections.clone());
        let (accept_frozen, accept_stalled) = (frozen.clone(), stalled.clone());
        tokio::spawn(async move {
            let mut number = 0u64;
            while let Ok((mut inbound, _)) = listener.accept().await {
                number += 1;
                let id = number;
                if !accept_open.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is closed at once
                }
                let upstream = upstream.clone();
                let mut frozen = accept_frozen.subscribe();
                let stalled = accept_stalled.clone();
                let task = tokio::spawn(async move {
                    let mut _upstream = None;
                    if !*frozen.borrow() {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await
                        else {
                            return;
                        };
                        // Without these, Nagle and delayed ACKs add ~40 ms to every round trip.
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
                            _ = frozen.wait_for(|f| *f) => {}
                        }
                        // Frozen: the upstream socket stays open and hears nothing more.
                        _upstream = Some(outbound);
                    }
                    // Whatever the client sends now goes nowhere; count it until it gives up.
                    stalled
                        .lock()
                        .unwrap()
                        .insert(id, std::time::Instant::now());
                    let mut sink = [0u8; 4096];
                    use tokio::io::AsyncReadExt;
                    while let Ok(n) = inbound.read(&mut sink).await {
                        if n == 0 {
                            break;
                        }
                    }
                    stalled.lock().unwrap().remove(&id);
                });
                accept_connections.lock().unwrap().push(task.abort_handle());
            }
        });
        CutProxy {
            port,
            open,
            frozen,
            stalled,
            connections,
        }
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// A network that drops everything and closes nothing: every connection, open or new, stays
    /// open and carries no more bytes, until the client closes it.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// New connections are carried again; those frozen stay dead.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }

    /// Frozen connections the client has not closed yet.
    pub fn stalled(&self) -> usize {
        self.stalled.lock().unwrap().len()
    }

    /// Of those, the ones that were frozen at `when` already.
    pub fn stalled_since(&self, when: std::time::Instant) -> usize {
        self.stalled
            .lock()
            .unwrap()
            .values()
            .filter(|&&at| at <= when)
            .count()
    }
}
