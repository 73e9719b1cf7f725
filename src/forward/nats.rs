//! One delivery attempt to NATS JetStream: the change published to the destination's subject,
//! waiting for the stream's ack. `Nats-Msg-Id` is the `webhook-id`, so JetStream drops a
//! republish (a retry, a replay, a resend after a crash) as a duplicate within the stream's
//! duplicate window.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;

/// Connections to NATS servers, one per destination URL, made when first needed. The client
/// reconnects by itself when a server goes away.
#[derive(Clone, Default)]
pub struct NatsPublisher {
    contexts: std::sync::Arc<tokio::sync::Mutex<HashMap<String, jetstream::Context>>>,
}

/// What a publish came to: the stream's ack (as JSON), or what went wrong.
pub type Published = Result<String, String>;

impl NatsPublisher {
    /// Publishes `body` to `subject` on the server at `url` with `headers`, and waits for the
    /// ack, all within `timeout`.
    pub async fn publish(
        &self,
        url: &str,
        subject: String,
        headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Published {
        let attempt = async {
            let context = self.context(url, timeout).await?;
            let ack = context
                .publish_with_headers(subject, headers, body)
                .await
                .map_err(|e| format!("publishing: {e}"))?
                .await
                .map_err(|e| format!("no ack from JetStream: {e}"))?;
            Ok(serde_json::json!({
                "stream": ack.stream,
                "seq": ack.sequence,
                "duplicate": ack.duplicate,
            })
            .to_string())
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(published) => published,
            Err(_) => Err(format!("no ack within {} s", timeout.as_secs())),
        }
    }

    async fn context(&self, url: &str, timeout: Duration) -> Result<jetstream::Context, String> {
        let mut contexts = self.contexts.lock().await;
        if let Some(context) = contexts.get(url) {
            return Ok(context.clone());
        }
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(timeout)
            .name(concat!("alohook/", env!("CARGO_PKG_VERSION")))
            .connect(url)
            .await
            .map_err(|e| format!("connecting to {}: {e}", super::destination::shown_url(url)))?;
        let mut context = jetstream::new(client);
        context.set_timeout(timeout);
        contexts.insert(url.to_string(), context.clone());
        Ok(context)
    }
}

/// The subject of a change: the template with `{type}` replaced by the change's type.
pub fn subject(template: &str, kind: &str) -> String {
    template.replace("{type}", kind)
}

/// Whether a subject template makes valid subjects: dot-separated tokens, none empty, no
/// whitespace, no wildcards.
pub fn valid_subject(template: &str) -> bool {
    let subject = subject(template, "call.ended");
    !subject.is_empty()
        && subject.split('.').all(|token| {
            !token.is_empty()
                && token != "*"
                && token != ">"
                && !token.chars().any(char::is_whitespace)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_from_the_template() {
        assert_eq!(
            subject("alohook.{type}", "call.ended"),
            "alohook.call.ended"
        );
        assert_eq!(subject("crm.calls", "call.created"), "crm.calls");
        assert!(valid_subject("alohook.{type}"));
        assert!(valid_subject("crm.calls"));
        for bad in ["", "a..b", "a.*", "a.>", "a b", ".a", "a."] {
            assert!(!valid_subject(bad), "{bad:?}");
        }
    }
}
