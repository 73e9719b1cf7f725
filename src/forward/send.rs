//! One delivery attempt over HTTP: a POST of the change, signed, within the destination's time
//! limit, redirects not followed.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::nats::NatsPublisher;
use super::retry::{Verdict, parse_retry_after};
use super::sign::{signature, webhook_id};
use crate::model::time::now_micros;
use crate::store::StoredDestination;

/// At most this much of an answer is kept with its attempt.
const RESPONSE_KEPT: usize = 1024;

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// Unix microseconds.
    pub at: i64,
    pub status: Option<u16>,
    /// What went wrong, when nothing was answered (or the answer was not 2xx).
    pub error: Option<String>,
    pub duration_ms: i64,
    /// The first KiB of the answer.
    pub response: Option<String>,
    /// The answer's `Retry-After`, when it had one.
    pub retry_after: Option<Duration>,
    /// NATS: JetStream acknowledged the message (there is no HTTP status).
    pub acked: bool,
}

impl Sent {
    /// What the attempt means for the delivery.
    pub fn verdict(&self) -> Verdict {
        if self.acked {
            return Verdict::Delivered;
        }
        self.status.map_or(Verdict::Failed, Verdict::of_status)
    }
}

/// Sends deliveries: one HTTP client for every destination (each request has its own time
/// limit), and the connections to NATS servers.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    nats: NatsPublisher,
}

impl Sender {
    pub fn new() -> Result<Sender, reqwest::Error> {
        Ok(Sender {
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("alohook/", env!("CARGO_PKG_VERSION")))
                .build()?,
            nats: NatsPublisher::default(),
        })
    }

    /// Sends `body` (the change JSON, of type `kind`) to `destination` as `id` (see
    /// [`webhook_id`]): a POST, or a JetStream publish for a `nats://` destination.
    pub async fn send(
        &self,
        destination: &StoredDestination,
        kind: &str,
        id: &str,
        body: Bytes,
    ) -> Sent {
        if destination.spec.is_nats() {
            self.publish(destination, kind, id, body).await
        } else {
            self.post(destination, id, body).await
        }
    }

    /// The secrets that sign at `at`: the current one, and the previous one during a rotation.
    fn secrets(destination: &StoredDestination, at: i64) -> Vec<&str> {
        let mut secrets = vec![destination.secret.as_str()];
        if let (Some(previous), Some(until)) = (
            &destination.previous_secret,
            destination.previous_secret_until,
        ) && until > at
        {
            secrets.push(previous);
        }
        secrets
    }

    /// Publishes to JetStream with the same headers a POST has (`Nats-Msg-Id` = `id`) and waits
    /// for the stream's ack.
    async fn publish(
        &self,
        destination: &StoredDestination,
        kind: &str,
        id: &str,
        body: Bytes,
    ) -> Sent {
        let at = now_micros();
        let timestamp = at / 1_000_000;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        headers.insert("content-type", "application/json");
        headers.insert("user-agent", concat!("alohook/", env!("CARGO_PKG_VERSION")));
        for (name, value) in &destination.spec.headers {
            headers.insert(name.as_str(), value.as_str());
        }
        headers.insert("webhook-id", id);
        headers.insert("webhook-timestamp", timestamp.to_string().as_str());
        headers.insert(
            "webhook-signature",
            signature(&Self::secrets(destination, at), id, timestamp, &body).as_str(),
        );
        let template = destination
            .spec
            .subject
            .as_deref()
            .unwrap_or(super::destination::DEFAULT_SUBJECT);
        let started = Instant::now();
        let published = self
            .nats
            .publish(
                &destination.spec.url,
                super::nats::subject(template, kind),
                headers,
                body,
                Duration::from_secs(destination.spec.timeout_seconds),
            )
            .await;
        let (acked, response, error) = match published {
            Ok(ack) => (true, Some(ack), None),
            Err(error) => (false, None, Some(error)),
        };
        Sent {
            at,
            status: None,
            error,
            duration_ms: started.elapsed().as_millis() as i64,
            response,
            retry_after: None,
            acked,
        }
    }

    /// POSTs `body` (the change JSON) to `destination` as `id`.
    async fn post(&self, destination: &StoredDestination, id: &str, body: Bytes) -> Sent {
        let at = now_micros();
        let timestamp = at / 1_000_000;
        let secrets = Self::secrets(destination, at);
        let mut request = self
            .client
            .post(&destination.spec.url)
            .timeout(Duration::from_secs(destination.spec.timeout_seconds))
            .header("content-type", "application/json");
        for (name, value) in &destination.spec.headers {
            request = request.header(name, value);
        }
        let request = request
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                signature(&secrets, id, timestamp, &body),
            )
            .body(body);
        let started = Instant::now();
        let answered = request.send().await;
        let mut sent = Sent {
            at,
            status: None,
            error: None,
            duration_ms: 0,
            response: None,
            retry_after: None,
            acked: false,
        };
        match answered {
            Ok(mut response) => {
                let status = response.status();
                sent.status = Some(status.as_u16());
                sent.retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, timestamp));
                let mut kept = Vec::new();
                while kept.len() < RESPONSE_KEPT {
                    match response.chunk().await {
                        Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
                        _ => break,
                    }
                }
                kept.truncate(RESPONSE_KEPT);
                sent.response = Some(String::from_utf8_lossy(&kept).into_owned());
                if !status.is_success() {
                    sent.error = Some(format!("answered {status}"));
                }
            }
            Err(error) => {
                let error = error.without_url();
                sent.error = Some(if error.is_timeout() {
                    format!("no answer within {} s", destination.spec.timeout_seconds)
                } else {
                    let mut text = error.to_string();
                    let mut cause = std::error::Error::source(&error);
                    while let Some(inner) = cause {
                        text = format!("{text}: {inner}");
                        cause = inner.source();
                    }
                    text
                });
            }
        }
        sent.duration_ms = started.elapsed().as_millis() as i64;
        sent
    }

    /// The body and id of a ping to `destination`: a change-shaped message no change is behind.
    pub fn ping(destination: &StoredDestination) -> (String, Bytes) {
        let at = now_micros();
        let body = serde_json::json!({
            "type": "test.ping",
            "seq": null,
            "destination_id": destination.id,
            "sent_at": crate::model::time::format_utc_micros(at),
        });
        (
            format!("ping_{}_{at}", destination.id),
            Bytes::from(body.to_string()),
        )
    }
}

/// How much lower than the rest of alohook the threads that send deliveries run (a `nice`
/// value): when the machine's CPUs are busy, taking in Alohub's webhooks goes first and
/// forwarding takes what is left; when they are not, forwarding runs at full speed.
pub const SENDING_NICE: i32 = 10;

/// The runtime deliveries are sent on (HTTP requests and their connections, NATS publishes and
/// their connection): two threads at [`SENDING_NICE`], made when first needed and kept for the
/// life of the process.
pub fn sending_runtime() -> tokio::runtime::Handle {
    static RUNTIME: std::sync::OnceLock<Option<tokio::runtime::Runtime>> =
        std::sync::OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(4)
            .thread_name("alohook-send")
            .on_thread_start(|| {
                // Raising one's own nice value needs no privilege; should it fail, the thread
                // runs at the usual priority.
                let _ = rustix::process::setpriority_process(None, SENDING_NICE);
            })
            .enable_all()
            .build()
            .inspect_err(|error| {
                tracing::warn!(%error, "cannot start the sending threads; deliveries are sent at the usual priority");
            })
            .ok()
    });
    match runtime {
        Some(runtime) => runtime.handle().clone(),
        None => tokio::runtime::Handle::current(),
    }
}

/// The `webhook-id` of a change sent to a destination.
pub fn change_id(destination: &StoredDestination, seq: i64) -> String {
    webhook_id(&destination.id, seq)
}
