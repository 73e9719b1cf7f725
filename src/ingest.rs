//! From an authenticated request body to a durable event: validate, queue, commit in batches.
//!
//! One writer task owns commits. Requests queue their item and wait; the writer takes everything
//! that queued while the previous commit ran and commits it in one transaction, so concurrent
//! requests share one fsync. A request is answered only after its batch has committed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};

use jiff::tz::TimeZone;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::feed::Feed;
use crate::metrics::Metrics;
use crate::model::{BodyError, parse_body, time::now_micros};
use crate::store::{Incoming, Outcome, RejectedBody, Store};

/// Largest number of requests committed in one transaction.
const MAX_BATCH: usize = 1024;
/// Requests that may wait for the writer. The byte budget (see [`Ingest::reserve`]) is what
/// normally bounds them; this only caps the count of tiny ones.
const QUEUE_DEPTH: usize = 16 * 1024;
/// What a request with a body of `body_bytes` costs the in-flight budget: the body is held about
/// three times over while it waits for its commit (as read, as the stored text, and parsed), plus
/// the request's own state (its connection's buffers, its task, its job and reply). Measured with
/// `bench/memory`.
pub fn request_cost(body_bytes: usize) -> usize {
    body_bytes.saturating_mul(3).saturating_add(16 * 1024)
}
/// How long a request waits for its commit before it is answered 503 (the sender resends; if
/// the commit did land, the resend is recognised as a duplicate).
const COMMIT_WAIT: Duration = Duration::from_secs(10);

/// What alohook answers for one body with a valid key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    /// Stored (or recognised as a resend of `event_id`).
    Accepted { event_id: i64, duplicate: bool },
    /// Not a valid event; kept in the quarantine.
    Rejected(BodyError),
}

/// The store could not commit; the request must be answered with a retryable status.
#[derive(Debug, thiserror::Error)]
#[error("the store could not commit")]
pub struct Unavailable;

struct Job {
    item: Incoming,
    reply: oneshot::Sender<Result<Outcome, Unavailable>>,
    /// The body's share of the in-flight budget, held until the job is committed (or dropped),
    /// even when the request has stopped waiting for it.
    _reservation: Reservation,
}

/// Completes when the writer has committed everything queued and stopped.
pub struct Writer {
    finished: oneshot::Receiver<()>,
}

impl Writer {
    pub async fn finished(self) {
        let _ = self.finished.await;
    }
}

/// The handle requests use to hand bodies to the writer.
#[derive(Clone)]
pub struct Ingest {
    queue: mpsc::Sender<Job>,
    tz: TimeZone,
    metrics: Arc<Metrics>,
    /// Bytes of request bodies in flight (read, queued or being committed), at most `--max-inflight`.
    budget: Arc<Semaphore>,
    /// Whether the last commit failed (and none has succeeded since).
    failing: Arc<AtomicBool>,
    /// When the last probe of a failing store ran: one at a time, at most once a second.
    last_probe: Arc<tokio::sync::Mutex<Option<Instant>>>,
    store: Arc<dyn Store>,
}

/// A share of the in-flight budget, held while a request's body is in memory.
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
}

impl Ingest {
    /// Starts the writer. It stops once every `Ingest` clone is dropped and the queue is drained.
    /// At most `max_inflight` bytes of request bodies are held at once.
    pub fn start(
        store: Arc<dyn Store>,
        tz: TimeZone,
        metrics: Arc<Metrics>,
        max_inflight: usize,
        feed: Feed,
        pacer: Arc<crate::forward::pacer::Pacer>,
    ) -> (Ingest, Writer) {
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        let (done, finished) = oneshot::channel();
        let writer_metrics = metrics.clone();
        let failing = Arc::new(AtomicBool::new(false));
        let writer_store = store.clone();
        let writer_failing = failing.clone();
        // The writer gets a thread of its own, with a runtime of its own: a commit blocks it
        // (that is SQLite's nature) without holding up a request handler, and no thread hop
        // separates two batches.
        let spawned = std::thread::Builder::new()
            .name("alohook-writer".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(run_writer(
                        writer_store,
                        rx,
                        writer_metrics,
                        writer_failing,
                        (feed, pacer),
                    )),
                    Err(error) => tracing::error!(%error, "cannot start the writer's runtime"),
                }
                let _ = done.send(());
            });
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the writer thread; every event will get 503");
        }
        let writer = Writer { finished };
        let budget = Arc::new(Semaphore::new(max_inflight.min(Semaphore::MAX_PERMITS)));
        let ingest = Ingest {
            queue,
            tz,
            metrics,
            budget,
            failing,
            last_probe: Arc::default(),
            store,
        };
        (ingest, writer)
    }

    /// Reserves room for a body of up to `body_bytes`, or `None` when the in-flight budget is
    /// used up: the request is then answered 503 with `Retry-After` at once, rather than
    /// queueing without bound.
    pub fn reserve(&self, body_bytes: usize) -> Option<Reservation> {
        let cost = request_cost(body_bytes);
        let permits = u32::try_from(cost).ok()?;
        match self.budget.clone().try_acquire_many_owned(permits) {
            Ok(permit) => Some(Reservation { _permit: permit }),
            Err(_) => {
                self.metrics.overloaded.inc();
                None
            }
        }
    }

    /// Whether commits succeed: `false` after a failed commit, until one succeeds. While it is
    /// `false`, an empty commit (which writes a heartbeat row: a real write) is tried, one at a
    /// time and at most once a second, so that an instance taken out of rotation, and sent no
    /// events, still finds out that the store is back.
    pub async fn commits_succeed(&self) -> bool {
        if !self.failing.load(Ordering::Acquire) {
            return true;
        }
        let mut last = self.last_probe.lock().await;
        if !self.failing.load(Ordering::Acquire) {
            return true;
        }
        if last.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
            return false;
        }
        *last = Some(Instant::now());
        let store = self.store.clone();
        let handle = tokio::runtime::Handle::current();
        // A store may block the thread it commits on (SQLite does).
        let probe = tokio::task::spawn_blocking(move || handle.block_on(store.commit(Vec::new())));
        match tokio::time::timeout(Duration::from_secs(2), probe).await {
            Ok(Ok(Ok(_))) => {
                self.failing.store(false, Ordering::Release);
                true
            }
            _ => false,
        }
    }

    /// Validates `body`, stores it durably (as an event or in the quarantine) and says what to
    /// answer.
    pub async fn receive(
        &self,
        body: &[u8],
        reservation: Reservation,
    ) -> Result<Receipt, Unavailable> {
        let received_at = now_micros();
        match parse_body(body, &self.tz) {
            Ok(event) => {
                // Only what the debug line needs, and only when it is wanted.
                let described = tracing::enabled!(tracing::Level::DEBUG).then(|| {
                    (
                        event.fields.call_id.clone(),
                        event.fields.call_status.clone(),
                        event.event_type.clone(),
                    )
                });
                let outcome = self
                    .submit(
                        Incoming::Event {
                            event: Box::new(event),
                            received_at,
                        },
                        reservation,
                    )
                    .await?;
                let (event_id, duplicate) = match outcome {
                    Outcome::Stored { event_id } => {
                        self.metrics.events_accepted.inc();
                        (event_id, false)
                    }
                    Outcome::Duplicate { event_id } => {
                        self.metrics.duplicates.inc();
                        (event_id, true)
                    }
                    Outcome::Quarantined { .. } => return Err(Unavailable),
                };
                if let Some((call_id, call_status, event_type)) = described {
                    tracing::debug!(
                        call_id = call_id.as_deref().unwrap_or(""),
                        call_status = call_status.as_deref().unwrap_or(""),
                        event_type,
                        event_id,
                        duplicate,
                        "event accepted"
                    );
                }
                Ok(Receipt::Accepted {
                    event_id,
                    duplicate,
                })
            }
            Err(error) => {
                let rejected = RejectedBody {
                    reason: error.reason(),
                    detail: error.to_string(),
                    body: body.to_vec(),
                    received_at,
                };
                self.submit(Incoming::Rejected(rejected), reservation)
                    .await?;
                self.metrics.reject(error.reason());
                Ok(Receipt::Rejected(error))
            }
        }
    }

    async fn submit(
        &self,
        item: Incoming,
        reservation: Reservation,
    ) -> Result<Outcome, Unavailable> {
        let (reply, answer) = oneshot::channel();
        let wait = async {
            self.queue
                .send(Job {
                    item,
                    reply,
                    _reservation: reservation,
                })
                .await
                .map_err(|_| Unavailable)?;
            answer.await.map_err(|_| Unavailable)?
        };
        tokio::time::timeout(COMMIT_WAIT, wait)
            .await
            .map_err(|_| Unavailable)?
    }
}

async fn run_writer(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Job>,
    metrics: Arc<Metrics>,
    failing: Arc<AtomicBool>,
    (feed, pacer): (Feed, Arc<crate::forward::pacer::Pacer>),
) {
    // A batch starts as soon as a commit slot is free, with whatever queued meanwhile: with one
    // slot (SQLite) batches follow each other; PostgreSQL commits several side by side.
    let slots = store.concurrent_commits().max(1);
    let free = Arc::new(tokio::sync::Semaphore::new(slots));
    loop {
        // Every slot busy: the writer is what the requests wait for (see forward::pacer).
        let (slot, waited) = match free.clone().try_acquire_owned() {
            Ok(slot) => (slot, false),
            Err(_) => match free.clone().acquire_owned().await {
                Ok(slot) => (slot, true),
                Err(_) => return,
            },
        };
        let mut jobs = Vec::with_capacity(MAX_BATCH);
        if rx.recv_many(&mut jobs, MAX_BATCH).await == 0 {
            break;
        }
        pacer.committed(jobs.len(), waited);
        let (store, metrics, failing) = (store.clone(), metrics.clone(), failing.clone());
        let feed = feed.clone();
        tokio::spawn(async move {
            let committed = commit_batch(store.as_ref(), jobs, &metrics, &feed).await;
            failing.store(!committed, Ordering::Release);
            // Only now may the next batch commit: with one slot, batches report their changes to
            // the feed in the order they committed.
            drop(slot);
        });
    }
    // The queue is closed and drained: wait for the commits still running.
    let _ = free.acquire_many(slots as u32).await;
}

/// Commits one batch, answers its requests and reports its changes to the feed; `false` when the
/// commit failed.
async fn commit_batch(store: &dyn Store, jobs: Vec<Job>, metrics: &Metrics, feed: &Feed) -> bool {
    let mut items = Vec::with_capacity(jobs.len());
    let mut replies = Vec::with_capacity(jobs.len());
    // Held until the batch is answered: its bodies are in memory until then.
    let mut _reservations = Vec::with_capacity(jobs.len());
    for job in jobs {
        items.push(job.item);
        replies.push(job.reply);
        _reservations.push(job._reservation);
    }
    metrics.commit_batch_size.observe(items.len() as f64);
    let started = Instant::now();
    match store.commit(items).await {
        Ok(committed) => {
            metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            // The feed first: a stream opened by a client that got its 200 then starts after it.
            feed.committed(committed.changes);
            for (reply, outcome) in replies.into_iter().zip(committed.outcomes) {
                let _ = reply.send(Ok(outcome));
            }
            true
        }
        Err(error) => {
            metrics.commit_failures.inc();
            tracing::error!(%error, requests = replies.len(), "commit failed; answering 503");
            for reply in replies {
                let _ = reply.send(Err(Unavailable));
            }
            false
        }
    }
}
