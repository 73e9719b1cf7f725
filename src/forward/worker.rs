//! Delivery: one task per destination, on the instance that holds its lease.
//!
//! A destination's task follows the feed from the destination's cursor with its filter, and
//! sends each matching change (at most `max_in_flight` at once). What became of each attempt is
//! saved in batches, with the cursor: the cursor only passes changes whose delivery is saved, so
//! a crash resends (with the same `webhook-id`) what was in flight, and nothing else. A failed
//! delivery waits on disk for its next attempt (see [`super::retry`]); with `per_call` ordering,
//! a later change of its call waits on disk behind it. Every change has its attempts on the
//! schedule, down destination or not, and then is dead; a 410 disables the destination. The
//! requests go from lower-priority threads ([`super::send::sending_runtime`]).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::destination::Ordering;
use super::retry::{Schedule, Verdict};
use super::send::{Sender, Sent, change_id};
use crate::feed::{Feed, SharedChange};
use crate::metrics::Metrics;
use crate::model::change::ChangeFilter;
use crate::model::time::now_micros;
use crate::store::{Attempt, DeliveryState, DeliveryUpdate, Store, StoreError, StoredDestination};

/// How long a lease lasts, and how often it is renewed: a dead instance's destinations are taken
/// over within a lease.
const LEASE: Duration = Duration::from_secs(30);
const LOOK_EVERY: Duration = Duration::from_secs(2);
/// How often a destination's due retries are looked for.
const RETRIES_EVERY: Duration = Duration::from_millis(500);
/// Outcomes are saved at least this often, or once this many have gathered. A save runs
/// beside the sending (one at a time); past `SAVE_BACKLOG` outcomes waiting for it, sending
/// waits for the store.
const SAVE_EVERY: Duration = Duration::from_millis(100);
const SAVE_BATCH: usize = 256;
const SAVE_BACKLOG: usize = 4 * SAVE_BATCH;
/// How long a destination's task stopped by an error waits for its save under way.
const SAVE_WAIT: Duration = Duration::from_secs(60);

/// Starts delivering for the destinations whose lease this instance takes; stops when
/// `stopping` turns true (in-flight attempts are abandoned: their changes go again later, with
/// the same `webhook-id`).
pub fn start(
    store: Arc<dyn Store>,
    feed: Feed,
    metrics: Arc<Metrics>,
    schedule: Schedule,
    pacer: Arc<super::pacer::Pacer>,
    stopping: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(backlog_gauges(
        store.clone(),
        (metrics.clone(), pacer.clone()),
        stopping.clone(),
    ));
    tokio::spawn(manage(store, feed, metrics, (schedule, pacer), stopping))
}

/// How often the backlog gauges are refreshed.
const GAUGES_EVERY: Duration = Duration::from_secs(10);

/// Keeps `alohook_delivery_pending` and `alohook_delivery_oldest_pending_seconds` up to date for
/// every destination (every instance reports the same figures, read from the shared store), and
/// `alohook_forwarding_paced` for this instance.
async fn backlog_gauges(
    store: Arc<dyn Store>,
    (metrics, pacer): (Arc<Metrics>, Arc<super::pacer::Pacer>),
    mut stopping: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(GAUGES_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shown: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        metrics.forwarding_paced.set(i64::from(pacer.paced()));
        let Ok(destinations) = store.destinations().await else {
            continue;
        };
        let mut now_shown = HashSet::new();
        for destination in destinations {
            match backlog(store.as_ref(), &destination).await {
                Ok((pending, oldest)) => {
                    let age = oldest.map_or(0, |at| ((now_micros() - at) / 1_000_000).max(0));
                    metrics.delivery_backlog(&destination.id, Some((pending, age)));
                    now_shown.insert(destination.id);
                }
                Err(error) => {
                    // Its figures stay as they were; only a destination that is gone loses them.
                    tracing::debug!(destination = %destination.id, %error, "cannot read a destination's backlog");
                    now_shown.insert(destination.id);
                }
            }
        }
        for gone in shown.difference(&now_shown) {
            metrics.delivery_backlog(gone, None);
        }
        shown = now_shown;
    }
}

/// What waits for a destination: its pending deliveries and the matching changes after its
/// cursor; and when the oldest of them was received (Unix microseconds).
pub async fn backlog(
    store: &dyn Store,
    destination: &StoredDestination,
) -> Result<(i64, Option<i64>), StoreError> {
    let (pending, oldest_pending) = store.pending_deliveries(&destination.id).await?;
    let (waiting, oldest_waiting) = store
        .count_changes(
            destination.cursor,
            &destination.spec.change_filter(),
            Some(&destination.id),
        )
        .await?;
    let oldest = [oldest_pending, oldest_waiting].into_iter().flatten().min();
    Ok((pending + waiting, oldest))
}

/// What a running destination task is told: stop, or here is the destination as it is now.
type Control = watch::Sender<Option<StoredDestination>>;

async fn manage(
    store: Arc<dyn Store>,
    feed: Feed,
    metrics: Arc<Metrics>,
    (schedule, pacer): (Schedule, Arc<super::pacer::Pacer>),
    mut stopping: watch::Receiver<bool>,
) {
    let owner = instance_name();
    let sender = match Sender::new() {
        Ok(sender) => sender,
        Err(error) => {
            tracing::error!(%error, "cannot make the HTTP client of forwarding; nothing is forwarded");
            return;
        }
    };
    let mut running: HashMap<String, (Control, tokio::task::JoinHandle<()>)> = HashMap::new();
    let mut look = tokio::time::interval(LOOK_EVERY);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = look.tick() => {}
            _ = stopping.wait_for(|s| *s) => break,
        }
        running.retain(|_, (_, task)| !task.is_finished());
        let destinations = match store.destinations().await {
            Ok(d) => d,
            Err(error) => {
                tracing::warn!(%error, "forwarding cannot read its destinations; trying again");
                continue;
            }
        };
        let now = now_micros();
        let mut wanted = HashSet::new();
        for destination in destinations {
            if !destination.enabled {
                continue;
            }
            let leased = store
                .lease_destination(&destination.id, &owner, now, now + LEASE.as_micros() as i64)
                .await
                .unwrap_or(false);
            if !leased {
                continue;
            }
            wanted.insert(destination.id.clone());
            match running.get(&destination.id) {
                Some((control, _)) => {
                    control.send_if_modified(|held| {
                        let changed = held.as_ref() != Some(&destination);
                        if changed {
                            *held = Some(destination.clone());
                        }
                        changed
                    });
                }
                None => {
                    let (control, watched) = watch::channel(Some(destination.clone()));
                    let worker = DestinationWorker {
                        store: store.clone(),
                        sending: super::send::sending_runtime(),
                        feed: feed.clone(),
                        sender: sender.clone(),
                        metrics: metrics.clone(),
                        schedule: schedule.clone(),
                        pacer: pacer.clone(),
                        control: watched,
                    };
                    let task = tokio::spawn(worker.run());
                    running.insert(destination.id.clone(), (control, task));
                }
            }
        }
        // Removed, disabled, or leased by another instance: stop.
        for (id, (control, _)) in &running {
            if !wanted.contains(id) {
                control.send_replace(None);
            }
        }
    }
    for (id, (control, task)) in running {
        control.send_replace(None);
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        // Another instance (or this one, restarted) takes it over at once.
        if let Err(error) = store.release_lease(&id, &owner).await {
            tracing::debug!(destination = %id, %error, "cannot give up a lease; it runs out by itself");
        }
    }
}

/// A random name of this instance, for leases.
fn instance_name() -> String {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    format!("{:016x}", u64::from_le_bytes(bytes))
}

struct DestinationWorker {
    store: Arc<dyn Store>,
    sending: tokio::runtime::Handle,
    feed: Feed,
    sender: Sender,
    metrics: Arc<Metrics>,
    schedule: Schedule,
    pacer: Arc<super::pacer::Pacer>,
    control: watch::Receiver<Option<StoredDestination>>,
}

/// What a destination's task has to save.
struct Progress {
    id: String,
    outcomes: Vec<DeliveryUpdate>,
    /// The cursor as saved.
    cursor: i64,
    /// The save under way beside the sending, if any.
    saving: Option<Saving>,
}

/// A save running in a task of its own: the changes whose outcomes it holds (their rows are out
/// of date until it is done), and the cursor it saves.
struct Saving {
    task: tokio::task::JoinHandle<Result<(), StoreError>>,
    seqs: HashSet<i64>,
    cursor: i64,
}

/// Until the save under way is done (never, when there is none).
async fn save_done(saving: &mut Option<Saving>) -> Result<(), StoreError> {
    match saving {
        Some(saving) => (&mut saving.task)
            .await
            .unwrap_or_else(|e| Err(StoreError::Database(format!("a save failed: {e}")))),
        None => std::future::pending().await,
    }
}

/// An attempt under way.
struct Job {
    seq: i64,
    kind: String,
    call_id: Option<String>,
    /// Attempts before this one.
    attempts: i64,
}

impl DestinationWorker {
    async fn run(mut self) {
        let Some(destination) = self.control.borrow().clone() else {
            return;
        };
        let id = destination.id.clone();
        if let Err(error) = self.deliver(destination).await {
            tracing::warn!(destination = %id, %error, "forwarding stopped; it starts again within seconds");
        }
    }

    async fn deliver(&mut self, destination: StoredDestination) -> Result<(), StoreError> {
        let mut progress = Progress {
            id: destination.id.clone(),
            outcomes: Vec::new(),
            cursor: destination.cursor,
            saving: None,
        };
        let result = self.deliver_from(destination, &mut progress).await;
        if let Some(saving) = progress.saving.take() {
            // Stopped by an error with a save under way: it ends before this task does, so the
            // task started next reads the store as this one left it.
            let _ = tokio::time::timeout(SAVE_WAIT, saving.task).await;
        }
        result
    }

    async fn deliver_from(
        &mut self,
        mut destination: StoredDestination,
        progress: &mut Progress,
    ) -> Result<(), StoreError> {
        let id = destination.id.clone();
        let filter: ChangeFilter = destination.spec.change_filter();
        let per_call = destination.spec.ordering == Ordering::PerCall;
        // Saved beyond the cursor before a restart: not to be sent again.
        let mut saved: HashSet<i64> = self
            .store
            .delivered_positions(&id, destination.cursor + 1, i64::MAX)
            .await?
            .into_iter()
            .collect();
        // What a crash between saving a delivery and letting its call's next change go left
        // held (or what a per-call destination held before it became unordered) goes now.
        self.store.release_held(&id, per_call, now_micros()).await?;
        let mut held_calls: HashSet<String> = if per_call {
            self.store.calls_pending(&id).await?.into_iter().collect()
        } else {
            HashSet::new()
        };
        // Calls that may have a change waiting on disk behind the one under way: those pending
        // at the start, and those this run held a change of. Only when one of them is done is
        // the store asked for the call's next change (a round trip per delivery otherwise).
        let mut maybe_held: HashSet<String> = held_calls.clone();
        // The feed is read by a task of its own, a batch ahead: a read is never abandoned
        // half-way (an abandoned store read still runs to its end on a thread of its own, and
        // a busy destination would start hundreds of them).
        let mut reader = Reading::start(self.feed.reader(destination.cursor, filter));
        let mut waiting: VecDeque<SharedChange> = VecDeque::new();
        let mut in_flight: JoinSet<(Job, Sent)> = JoinSet::new();
        let mut in_flight_seqs: HashSet<i64> = HashSet::new();
        // First attempts under way (their deliveries are not saved yet).
        let mut unsaved: BTreeSet<i64> = BTreeSet::new();
        let mut retries = tokio::time::interval(RETRIES_EVERY);
        let mut save = tokio::time::interval(SAVE_EVERY);
        let mut disabled = false;
        let mut failures = FailureLog::default();
        // Told to start over: nothing new goes out, and the sends under way finish and have
        // their outcomes saved first (abandoned, one that reached the receiver would go again).
        let mut restarting = false;

        loop {
            if restarting && in_flight.is_empty() {
                self.save(progress, &unsaved, &waiting, reader.position)
                    .await?;
                return Ok(());
            }
            let slots = (destination.spec.max_in_flight as usize).saturating_sub(in_flight.len());
            // Outside its windows while ingest saturates the machine, nothing new starts.
            let open = self.pacer.open();
            // New changes go out while there is room.
            let may_take = slots > 0 && !restarting && open;
            while may_take
                && !waiting.is_empty()
                && in_flight.len() < destination.spec.max_in_flight as usize
            {
                let Some(change) = waiting.pop_front() else {
                    break;
                };
                if saved.remove(&change.seq) {
                    continue;
                }
                let call = change.subject.call_id.clone();
                if per_call
                    && let Some(call) = &call
                    && held_calls.contains(call)
                {
                    // Behind an earlier change of its call: waits on disk until that one is done.
                    maybe_held.insert(call.clone());
                    progress.outcomes.push(DeliveryUpdate {
                        seq: change.seq,
                        kind: change.kind.as_str().to_string(),
                        call_id: Some(call.clone()),
                        state: DeliveryState::Pending,
                        attempts: 0,
                        next_attempt_at: None,
                        attempt: None,
                    });
                    continue;
                }
                if let Some(call) = &call
                    && per_call
                {
                    held_calls.insert(call.clone());
                }
                unsaved.insert(change.seq);
                in_flight_seqs.insert(change.seq);
                let job = Job {
                    seq: change.seq,
                    kind: change.kind.as_str().to_string(),
                    call_id: call,
                    attempts: 0,
                };
                self.spawn(
                    &mut in_flight,
                    &destination,
                    job,
                    Bytes::copy_from_slice(change.json().as_bytes()),
                );
            }
            let read_more = may_take && waiting.is_empty() && !disabled;
            tokio::select! {
                changed = self.control.changed() => {
                    let held = self.control.borrow().clone();
                    match (changed, held) {
                        (Ok(()), Some(now)) => {
                            if now.spec != destination.spec
                                || now.cursor < destination.cursor
                                || now.updated_at != destination.updated_at
                            {
                                // Another filter or ordering, or deliveries queued again (a
                                // replay): start over from what is saved, once the sends under
                                // way are done.
                                restarting = true;
                                continue;
                            }
                            destination = now;
                        }
                        _ => break,
                    }
                }
                next = reader.batches.recv(), if read_more => {
                    let Some(next) = next else { return Err(StoreError::Closed) };
                    let (changes, position) = next?;
                    reader.position = position;
                    waiting.extend(changes);
                }
                Some(done) = in_flight.join_next() => {
                    let Ok((job, sent)) = done else { continue };
                    in_flight_seqs.remove(&job.seq);
                    unsaved.remove(&job.seq);
                    let verdict = sent.verdict();
                    self.metrics.delivery(&id, verdict_name(&verdict), sent.duration_ms);
                    let attempts = job.attempts + 1;
                    let attempt = Attempt {
                        at: sent.at,
                        status: sent.status.map(i64::from),
                        error: sent.error.clone(),
                        duration_ms: sent.duration_ms,
                        response: sent.response.clone(),
                    };
                    let mut update = DeliveryUpdate {
                        seq: job.seq,
                        kind: job.kind.clone(),
                        call_id: job.call_id.clone(),
                        state: DeliveryState::Pending,
                        attempts,
                        next_attempt_at: None,
                        attempt: Some(attempt),
                    };
                    let done_with_call = match verdict {
                        Verdict::Delivered => {
                            update.state = DeliveryState::Delivered;
                            true
                        }
                        Verdict::Gone => {
                            // Kept pending, due at once: it goes first when re-enabled.
                            update.next_attempt_at = Some(now_micros());
                            disabled = true;
                            false
                        }
                        Verdict::Failed => {
                            let wait = self.schedule.next_wait(attempts as usize, jitter(), sent.retry_after);
                            failures.failed(&id, job.seq, attempts, sent.error.as_deref(), wait.is_none());
                            match wait {
                                Some(wait) => {
                                    update.next_attempt_at = Some(now_micros() + wait.as_micros() as i64);
                                    false
                                }
                                None => {
                                    update.state = DeliveryState::Dead;
                                    self.metrics.delivery_dead(&id);
                                    true
                                }
                            }
                        }
                    };
                    progress.outcomes.push(update);
                    if done_with_call && let Some(call) = &job.call_id && per_call {
                        let open = (&unsaved, &waiting, reader.position);
                        if self.call_done(call, progress, open, &mut held_calls, &mut maybe_held).await? {
                            // The call's next change is due now: look for it at once.
                            retries.reset_immediately();
                        }
                    }
                    if disabled {
                        self.save(progress, &unsaved, &waiting, reader.position).await?;
                        let reason = format!(
                            "the receiver answered 410 Gone at {}",
                            crate::model::time::format_utc_micros(sent.at)
                        );
                        // Only these fields: what an operator changed meanwhile stays.
                        self.store.disable_destination(&id, &reason).await?;
                        tracing::warn!(destination = %id, "the receiver answered 410 Gone: destination disabled");
                        return Ok(());
                    }
                }
                _ = self.pacer.until_open(), if !open => {}
                _ = retries.tick(), if slots > 0 && !disabled && !restarting && open => {
                    // Enough rows for the slots, whatever is skipped.
                    let skipped = in_flight_seqs.len()
                        + progress.outcomes.len()
                        + progress.saving.as_ref().map_or(0, |s| s.seqs.len());
                    let due = self.store.due_deliveries(&id, now_micros(), slots + skipped).await?;
                    for delivery in due {
                        // An outcome not saved yet leaves its row out of date: not due.
                        if in_flight_seqs.contains(&delivery.seq)
                            || progress.outcomes.iter().any(|o| o.seq == delivery.seq)
                            || progress.saving.as_ref().is_some_and(|s| s.seqs.contains(&delivery.seq))
                            || in_flight.len() >= destination.spec.max_in_flight as usize {
                            continue;
                        }
                        let Some(body) = self.change_json(delivery.seq).await? else {
                            // The change was removed (retention): nothing to send.
                            progress.outcomes.push(DeliveryUpdate {
                                seq: delivery.seq,
                                kind: delivery.kind.clone(),
                                call_id: delivery.call_id.clone(),
                                state: DeliveryState::Dead,
                                attempts: delivery.attempts,
                                next_attempt_at: None,
                                attempt: None,
                            });
                            if per_call && let Some(call) = &delivery.call_id {
                                // Dead releases the call's next change, as after an attempt.
                                maybe_held.insert(call.clone());
                                let open = (&unsaved, &waiting, reader.position);
                                if self.call_done(call, progress, open, &mut held_calls, &mut maybe_held).await? {
                                    retries.reset_immediately();
                                }
                            }
                            continue;
                        };
                        if per_call && let Some(call) = &delivery.call_id {
                            // Under way: the call's later changes wait behind it, and one may
                            // have been held on disk by another hand (a replay).
                            held_calls.insert(call.clone());
                            maybe_held.insert(call.clone());
                        }
                        in_flight_seqs.insert(delivery.seq);
                        let job = Job {
                            seq: delivery.seq,
                            kind: delivery.kind,
                            call_id: delivery.call_id,
                            attempts: delivery.attempts,
                        };
                        self.spawn(&mut in_flight, &destination, job, body);
                    }
                }
                _ = save.tick(), if open => {
                    self.save_beside(progress, &unsaved, &waiting, reader.position);
                }
                done = save_done(&mut progress.saving), if progress.saving.is_some() => {
                    let saving = progress.saving.take().expect("a save was under way");
                    done?;
                    progress.cursor = progress.cursor.max(saving.cursor);
                }
            }
            if progress.outcomes.len() >= SAVE_BACKLOG {
                // The store is slower than the receiver: sending waits for it.
                self.save(progress, &unsaved, &waiting, reader.position)
                    .await?;
            } else if progress.outcomes.len() >= SAVE_BATCH {
                self.save_beside(progress, &unsaved, &waiting, reader.position);
            }
        }
        // Stopped: what finished is saved; what is in flight goes again later.
        in_flight.abort_all();
        self.save(progress, &unsaved, &waiting, reader.position)
            .await
    }

    fn spawn(
        &self,
        in_flight: &mut JoinSet<(Job, Sent)>,
        destination: &StoredDestination,
        job: Job,
        body: Bytes,
    ) {
        let sender = self.sender.clone();
        let destination = destination.clone();
        // Sent from the lower-priority sending threads; the outcome comes back here.
        in_flight.spawn_on(
            async move {
                let id = change_id(&destination, job.seq);
                let sent = guarded(sender.send(&destination, &job.kind, &id, body)).await;
                (job, sent)
            },
            &self.sending,
        );
    }

    /// Saves the outcomes gathered, and the cursor (see [`save_cursor`]), after the save under
    /// way if any: when this returns, everything decided so far is in the store.
    async fn save(
        &self,
        progress: &mut Progress,
        unsaved: &BTreeSet<i64>,
        waiting: &VecDeque<SharedChange>,
        read_to: i64,
    ) -> Result<(), StoreError> {
        if progress.saving.is_some() {
            let done = save_done(&mut progress.saving).await;
            let saving = progress.saving.take().expect("a save was under way");
            done?;
            progress.cursor = progress.cursor.max(saving.cursor);
        }
        let cursor = save_cursor(unsaved, waiting, read_to);
        if progress.outcomes.is_empty() && cursor <= progress.cursor {
            return Ok(());
        }
        self.store
            .save_deliveries(&progress.id, std::mem::take(&mut progress.outcomes), cursor)
            .await?;
        progress.cursor = progress.cursor.max(cursor);
        Ok(())
    }

    /// A change of `call` is done (delivered or dead), with `per_call` ordering: the call's next
    /// change waiting on disk, if it may have one, is due now (`true`); with none, the call
    /// holds nothing back any more.
    async fn call_done(
        &self,
        call: &String,
        progress: &mut Progress,
        (unsaved, waiting, read_to): (&BTreeSet<i64>, &VecDeque<SharedChange>, i64),
        held_calls: &mut HashSet<String>,
        maybe_held: &mut HashSet<String>,
    ) -> Result<bool, StoreError> {
        if maybe_held.contains(call) {
            // Saved first: the next change of the call is released from what is stored.
            self.save(progress, unsaved, waiting, read_to).await?;
            let released = self
                .store
                .release_call(&progress.id, call, now_micros())
                .await?;
            if released.is_some() {
                return Ok(true);
            }
            maybe_held.remove(call);
        }
        held_calls.remove(call);
        Ok(false)
    }

    /// Starts saving the outcomes gathered, and the cursor, in a task of its own while sending
    /// goes on; unless a save is under way already (the next one takes what gathered meanwhile).
    fn save_beside(
        &self,
        progress: &mut Progress,
        unsaved: &BTreeSet<i64>,
        waiting: &VecDeque<SharedChange>,
        read_to: i64,
    ) {
        if progress.saving.is_some() {
            return;
        }
        let cursor = save_cursor(unsaved, waiting, read_to);
        if progress.outcomes.is_empty() && cursor <= progress.cursor {
            return;
        }
        let outcomes = std::mem::take(&mut progress.outcomes);
        let seqs = outcomes.iter().map(|o| o.seq).collect();
        let (store, id) = (self.store.clone(), progress.id.clone());
        // Should the destination's task fail meanwhile, the save still ends on its own, long
        // before the task is started again.
        let task = tokio::spawn(async move { store.save_deliveries(&id, outcomes, cursor).await });
        progress.saving = Some(Saving { task, seqs, cursor });
    }

    /// The JSON of the change at `seq`, as the stream shows it.
    async fn change_json(&self, seq: i64) -> Result<Option<Bytes>, StoreError> {
        let page = self
            .feed
            .log()
            .changes(
                seq - 1,
                &ChangeFilter::default(),
                1,
                crate::store::PAGE_BYTES,
            )
            .await?;
        Ok(page
            .items
            .into_iter()
            .find(|c| c.seq == seq)
            .map(|c| Bytes::copy_from_slice(c.json().as_bytes())))
    }
}

/// How far a destination's cursor may go: up to the first change whose outcome is not decided
/// yet (under way, or read from the feed and not sent yet), or else as far as the feed was read.
fn save_cursor(unsaved: &BTreeSet<i64>, waiting: &VecDeque<SharedChange>, read_to: i64) -> i64 {
    let first_open = [unsaved.first().copied(), waiting.front().map(|c| c.seq)]
        .into_iter()
        .flatten()
        .min();
    first_open.map_or(read_to, |seq| seq - 1)
}

/// A destination's feed reader, running in a task of its own, one batch ahead of its sending.
struct Reading {
    batches: tokio::sync::mpsc::Receiver<Result<(Vec<SharedChange>, i64), StoreError>>,
    /// How far the batches received so far reach.
    position: i64,
    task: tokio::task::JoinHandle<()>,
}

impl Reading {
    fn start(mut reader: crate::feed::FeedReader) -> Reading {
        let position = reader.position();
        let (sender, batches) = tokio::sync::mpsc::channel(1);
        let task = tokio::spawn(async move {
            loop {
                let next = reader.next().await.map(|c| (c, reader.position()));
                let failed = next.is_err();
                if sender.send(next).await.is_err() || failed {
                    return;
                }
            }
        });
        Reading {
            batches,
            position,
            task,
        }
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn verdict_name(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Delivered => "delivered",
        Verdict::Gone => "gone",
        Verdict::Failed => "failed",
    }
}

/// A number in [-1, 1] for the retry schedule's jitter.
fn jitter() -> f64 {
    let mut bytes = [0u8; 4];
    let _ = getrandom::fill(&mut bytes);
    f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX) * 2.0 - 1.0
}

/// How often a destination's failed attempts are logged at most: a destination that is down
/// fails thousands of attempts a minute, and one line per attempt would drown the log.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(30);

/// A destination's failed attempts and dead deliveries, logged as a warning at most once per
/// [`FAILURE_LOG_EVERY`] with how many more there were since the last line.
#[derive(Default)]
struct FailureLog {
    last: Option<std::time::Instant>,
    failed_since: u64,
    dead_since: u64,
}

impl FailureLog {
    fn failed(
        &mut self,
        destination: &str,
        seq: i64,
        attempt: i64,
        error: Option<&str>,
        dead: bool,
    ) {
        self.failed_since += 1;
        self.dead_since += u64::from(dead);
        if self.last.is_some_and(|at| at.elapsed() < FAILURE_LOG_EVERY) {
            return;
        }
        self.last = Some(std::time::Instant::now());
        tracing::warn!(
            destination,
            seq,
            attempt,
            error = error.unwrap_or("failed"),
            given_up = dead,
            failed_attempts = self.failed_since,
            dead = self.dead_since,
            "a delivery attempt failed; failed_attempts and dead count those since the last such line"
        );
        self.failed_since = 0;
        self.dead_since = 0;
    }
}

/// The outcome of a send, or, if the send panicked (a bug), a failed attempt saying so: the job
/// always comes back to the worker, which retries it on the schedule, rather than its change
/// staying "under way" for ever and holding the destination's cursor (and, with per-call
/// ordering, the call) back.
async fn guarded(send: impl std::future::Future<Output = Sent>) -> Sent {
    use futures_util::FutureExt;
    let started = std::time::Instant::now();
    match std::panic::AssertUnwindSafe(send).catch_unwind().await {
        Ok(sent) => sent,
        Err(_) => {
            tracing::error!("a delivery attempt panicked; it is retried as a failed attempt");
            Sent {
                at: now_micros(),
                status: None,
                error: Some("internal error: the delivery attempt panicked".into()),
                duration_ms: started.elapsed().as_millis() as i64,
                response: None,
                retry_after: None,
                acked: false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A send that panics comes back as a failed attempt, so its job is retried rather than
    /// lost under way.
    #[tokio::test]
    async fn a_panicking_send_is_a_failed_attempt() {
        let sent = guarded(async { panic!("a bug in a send") }).await;
        assert!(matches!(sent.verdict(), Verdict::Failed));
        assert!(sent.error.unwrap().contains("panicked"));
    }
}
