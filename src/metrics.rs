//! Prometheus metrics, served at `GET /metrics` in the OpenMetrics text format.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub destination: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabels {
    pub destination: String,
}

/// Every figure alohook reports.
pub struct Metrics {
    registry: Registry,
    /// Events stored for the first time.
    pub events_accepted: Counter,
    /// Deliveries of events already stored (resends).
    pub duplicates: Counter,
    /// Requests with a valid key that were refused, by reason.
    pub rejected: Family<ReasonLabels, Counter>,
    /// Webhook requests without a valid key.
    pub unauthorized: Counter,
    /// Batches that could not be committed (each request in one was answered 503).
    pub commit_failures: Counter,
    /// Webhook requests answered 503 because the in-flight byte budget was used up.
    pub overloaded: Counter,
    /// Requests per committed batch.
    pub commit_batch_size: Histogram,
    /// Time of one batch commit.
    pub commit_seconds: Histogram,
    /// From the request reaching the handler to its answer, for events answered 200.
    pub ack_latency: Histogram,
    /// Live streams open now.
    pub streams: Gauge,
    /// Streams refused because `--max-streams` were open.
    pub streams_refused: Counter,
    /// Delivery attempts, by destination and outcome (delivered, failed, gone).
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// Time of one delivery attempt.
    pub delivery_attempt_seconds: Histogram,
    /// Deliveries given up after their last attempt, by destination.
    pub delivery_dead: Family<DestinationLabels, Counter>,
    /// Changes waiting for delivery, by destination (refreshed every few seconds).
    pub delivery_pending: Family<DestinationLabels, Gauge>,
    /// How long the oldest change waiting for delivery has waited, by destination: what to
    /// alert on.
    pub delivery_oldest_pending_seconds: Family<DestinationLabels, Gauge>,
    /// 1 while forwarding is paced because ingest saturates the machine (see forward::pacer).
    pub forwarding_paced: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("alohook");
        let events_accepted = Counter::default();
        let duplicates = Counter::default();
        let rejected = Family::<ReasonLabels, Counter>::default();
        // Every reason from the start, at 0: a rate alert needs the series before the first.
        for reason in ["invalid_json", "invalid_event", "payload_too_large"] {
            let _ = rejected.get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            });
        }
        let unauthorized = Counter::default();
        let commit_failures = Counter::default();
        let overloaded = Counter::default();
        let commit_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        let commit_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let ack_latency = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let streams = Gauge::default();
        let streams_refused = Counter::default();
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        let delivery_attempt_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let delivery_dead = Family::<DestinationLabels, Counter>::default();
        let delivery_pending = Family::<DestinationLabels, Gauge>::default();
        let delivery_oldest_pending_seconds = Family::<DestinationLabels, Gauge>::default();
        let forwarding_paced = Gauge::default();
        registry.register(
            "forwarding_paced",
            "1 while forwarding works in short windows only, because the webhook's writer waits \
             for a free commit slot and finds 8 requests or more queued (sampled every 10 s)",
            forwarding_paced.clone(),
        );
        registry.register(
            "delivery_pending",
            "Changes waiting for delivery (attempts due, or not handed to the destination yet)",
            delivery_pending.clone(),
        );
        registry.register(
            "delivery_oldest_pending_seconds",
            "How long the oldest change waiting for delivery has waited since it was received",
            delivery_oldest_pending_seconds.clone(),
        );
        registry.register(
            "deliveries",
            "Delivery attempts, by destination and outcome",
            deliveries.clone(),
        );
        registry.register(
            "delivery_attempt_seconds",
            "Duration of one delivery attempt",
            delivery_attempt_seconds.clone(),
        );
        registry.register(
            "delivery_dead",
            "Deliveries given up after their last attempt, by destination",
            delivery_dead.clone(),
        );
        registry.register("streams", "Live streams open now", streams.clone());
        registry.register(
            "streams_refused",
            "Streams answered 503 because --max-streams were open",
            streams_refused.clone(),
        );
        registry.register(
            "events_accepted",
            "Events stored for the first time",
            events_accepted.clone(),
        );
        registry.register(
            "duplicates",
            "Deliveries of an event already stored (resends)",
            duplicates.clone(),
        );
        registry.register(
            "rejected",
            "Requests with a valid key refused, by reason",
            rejected.clone(),
        );
        registry.register(
            "unauthorized",
            "Webhook requests without a valid key",
            unauthorized.clone(),
        );
        registry.register(
            "commit_failures",
            "Batches that could not be committed (answered 503)",
            commit_failures.clone(),
        );
        registry.register(
            "overloaded",
            "Webhook requests answered 503 because --max-inflight bytes were already held",
            overloaded.clone(),
        );
        registry.register(
            "commit_batch_size",
            "Requests per committed batch",
            commit_batch_size.clone(),
        );
        registry.register(
            "commit_seconds",
            "Duration of one batch commit",
            commit_seconds.clone(),
        );
        registry.register(
            "ack_latency_seconds",
            "Time to acknowledge a webhook event with 200",
            ack_latency.clone(),
        );
        Metrics {
            registry,
            events_accepted,
            duplicates,
            rejected,
            unauthorized,
            commit_failures,
            overloaded,
            commit_batch_size,
            commit_seconds,
            ack_latency,
            streams,
            streams_refused,
            deliveries,
            delivery_attempt_seconds,
            delivery_dead,
            delivery_pending,
            delivery_oldest_pending_seconds,
            forwarding_paced,
        }
    }

    pub fn reject(&self, reason: &str) {
        self.rejected
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// One delivery attempt to `destination` came to `outcome` in `duration_ms`.
    pub fn delivery(&self, destination: &str, outcome: &str, duration_ms: i64) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                destination: destination.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        self.delivery_attempt_seconds
            .observe(duration_ms.max(0) as f64 / 1000.0);
    }

    pub fn delivery_dead(&self, destination: &str) {
        self.delivery_dead
            .get_or_create(&DestinationLabels {
                destination: destination.to_string(),
            })
            .inc();
    }

    /// Sets the backlog gauges of a destination; `None` removes them (it is gone).
    pub fn delivery_backlog(&self, destination: &str, backlog: Option<(i64, i64)>) {
        let labels = DestinationLabels {
            destination: destination.to_string(),
        };
        match backlog {
            Some((pending, oldest_seconds)) => {
                self.delivery_pending.get_or_create(&labels).set(pending);
                self.delivery_oldest_pending_seconds
                    .get_or_create(&labels)
                    .set(oldest_seconds);
                // At 0 until the first delivery is given up: there to alert on from the start.
                let _ = self.delivery_dead.get_or_create(&labels);
            }
            None => {
                self.delivery_pending.remove(&labels);
                self.delivery_oldest_pending_seconds.remove(&labels);
                self.delivery_dead.remove(&labels);
            }
        }
    }

    pub fn observe_ack(&self, elapsed: Duration) {
        self.ack_latency.observe(elapsed.as_secs_f64());
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
