//! A real alohook server on an ephemeral port, and helpers to talk to it over HTTP.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use alohook::config::Settings;
use alohook::server::{self, ServerError};
use alohook::store::{
    CallCursor, CallFilter, CallPage, Incoming, Outcome, RejectedPage, Store, StoreError,
    StoredCall, StoredEvent,
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

/// Settings every test server shares; `tweak` changes them.
pub fn settings(data_dir: &Path) -> Settings {
    Settings {
        data_dir: Some(data_dir.to_path_buf()),
        webhook_keys: vec![KEY.to_string()],
        api_token: Some(TOKEN.to_string()),
        ..Settings::default()
    }
}

impl TestServer {
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_with(settings(data_dir), None).await
    }

    /// Starts with `settings`, and with `store` instead of the configured database when given.
    pub async fn start_with(settings: Settings, store: Option<Arc<dyn Store>>) -> Self {
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
        // The listener is bound already; wait only for the store to be open.
        for _ in 0..200 {
            if let Ok(r) = server.client.get(server.url("/readyz")).send().await
                && r.status() == StatusCode::OK
            {
                return server;
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

/// A store that fails every write while `failing` is set, as a full disk or a lost database would.
pub struct FlakyStore {
    pub inner: Arc<dyn Store>,
    pub failing: AtomicBool,
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
impl Store for FlakyStore {
    async fn commit(&self, batch: Vec<Incoming>) -> Result<Vec<Outcome>, StoreError> {
        self.check()?;
        self.inner.commit(batch).await
    }
    async fn call(&self, call_id: &str) -> Result<Option<StoredCall>, StoreError> {
        self.inner.call(call_id).await
    }
    async fn calls(
        &self,
        filter: &CallFilter,
        limit: usize,
        cursor: Option<CallCursor>,
    ) -> Result<CallPage, StoreError> {
        self.inner.calls(filter, limit, cursor).await
    }
    async fn call_events(&self, call_id: &str) -> Result<Option<Vec<StoredEvent>>, StoreError> {
        self.inner.call_events(call_id).await
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
