//! The live side of the change feed: every change the store commits is published here, in
//! `seq` order, to the readers that follow it (the SSE stream, and later forwarding and the
//! dashboard), which fall back on the store whenever they are behind.
//!
//! - The writer reports what each commit appended ([`Feed::committed`]); the publisher passes
//!   it on as it is when it follows on from what was published last, and otherwise (another
//!   instance's commit came in between, or two of this instance's batches finished out of order)
//!   reads what is missing from the store first. Positions are committed in order with no gaps
//!   (see [`crate::store::ChangeLog`]), so "follows on" is `first seq == head + 1`.
//! - Other instances' commits (PostgreSQL) wake the publisher through the store's
//!   [`ChangeLog::watch_other_writers`]; a check once a second catches anything a lost
//!   notification left behind.
//! - Published changes are kept in one shared ring of the newest changes, bounded in bytes, and
//!   every reader is woken when the head moves. A reader ([`FeedReader`]) reads from the store
//!   at its own pace until it reaches the end, then takes what follows from the ring; a reader
//!   that falls behind what the ring still holds (a slow client) goes back to the store. So the
//!   feed's memory is the ring's bound whatever the readers do, and a reader holds one page.
//! - The switch from the store to the ring has no gap and no duplicate: the reader notes the head
//!   before its last store read, so everything up to it was committed before that read (and was
//!   in it); it takes from the ring only what lies after the head, and delivers nothing at or
//!   below the last change it delivered.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::model::change::{Change, ChangeFilter};
use crate::store::{ChangeLog, StoreError};

pub mod client;
pub mod sse;

/// Bytes of the newest changes kept for readers that are a little behind (a second or more of
/// full-speed ingest); past that a reader reads from the store.
const LIVE_BYTES: usize = 16 * 1024 * 1024;
/// Commits reported but not yet published; past that a report is dropped, and the publisher
/// reads those changes from the store.
const COMMITS_QUEUED: usize = 64;
/// Changes a reader reads from the store at once, or takes from the ring...
pub const READ_PAGE: usize = 500;
/// ...and at most this many bytes of them: what one open stream holds while it waits for its
/// client to take them, so 256 streams stalled on slow clients hold a bounded amount.
pub const READ_BYTES: usize = 256 * 1024;
/// How often the publisher checks the store for changes it was not told of.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A committed change, shared by every reader.
pub type SharedChange = Arc<Change>;

/// The feed: where readers follow the changes, and where the writer reports commits.
#[derive(Clone)]
pub struct Feed {
    log: Arc<dyn ChangeLog>,
    live: Arc<Live>,
    commits: mpsc::Sender<Vec<Change>>,
}

/// What is published: the ring, and the head (the position of the last change in it), changed
/// together under the ring's lock.
struct Live {
    ring: Mutex<Ring>,
    head: watch::Sender<i64>,
}

impl Live {
    /// Publishes `changes` (in `seq` order) if they follow on from the head, skipping any
    /// published already; gives them back when one is missing before them.
    fn publish(&self, changes: Vec<Change>) -> Result<(), Vec<Change>> {
        // Followed: render each change's message now, once, on the publishing thread. Left to
        // the readers, every stream woke on the same new change at once and all but one of them
        // waited for its rendering, parking their threads (four streams cost ingest nearly half
        // its rate). Nobody following: nothing is rendered.
        let followers = self
            .ring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .followers;
        if followers > 0 {
            for change in &changes {
                change.message();
            }
        }
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let head = *self.head.borrow();
        let fresh: Vec<Change> = changes.into_iter().filter(|c| c.seq > head).collect();
        let (Some(first), Some(last)) = (fresh.first(), fresh.last().map(|c| c.seq)) else {
            return Ok(());
        };
        if first.seq != head + 1 {
            return Err(fresh);
        }
        for change in fresh {
            ring.push(Arc::new(change));
        }
        self.head.send_replace(last);
        Ok(())
    }

    fn head(&self) -> i64 {
        *self.head.borrow()
    }
}

/// The newest published changes, consecutive, oldest first, at most [`LIVE_BYTES`] of them.
struct Ring {
    changes: VecDeque<SharedChange>,
    bytes: usize,
    /// At most this many bytes are kept.
    limit: usize,
    /// Readers following the feed: while there are none, the ring stays empty (a reader reads
    /// the store up to the head first anyway), so an instance nobody follows keeps no changes.
    followers: usize,
}

impl Ring {
    fn push(&mut self, change: SharedChange) {
        if self.followers == 0 {
            self.clear();
            return;
        }
        // Consecutive or nothing: a reader asks for the change after a position.
        if self
            .changes
            .back()
            .is_some_and(|last| last.seq + 1 != change.seq)
        {
            self.clear();
        }
        self.bytes += crate::store::change_size(&change);
        self.changes.push_back(change);
        while self.bytes > self.limit && self.changes.len() > 1 {
            if let Some(old) = self.changes.pop_front() {
                self.bytes -= crate::store::change_size(&old);
            }
        }
    }

    fn clear(&mut self) {
        self.changes.clear();
        self.bytes = 0;
    }

    /// Up to `limit` changes (and [`READ_BYTES`] of them, one at least) after `after`, or
    /// `None` when the ring no longer holds the one right after it.
    fn after(&self, after: i64, limit: usize) -> Option<Vec<SharedChange>> {
        let first = self.changes.front().map_or(after + 1, |c| c.seq);
        if first > after + 1 {
            return None;
        }
        let skip = usize::try_from(after + 1 - first).unwrap_or(0);
        let mut bytes = 0;
        let mut page = Vec::new();
        // `range` starts at `skip` at once (an iterator skipped there walks the ring).
        for change in self
            .changes
            .range(skip.min(self.changes.len())..)
            .take(limit)
        {
            bytes += crate::store::change_size(change);
            if !page.is_empty() && bytes > READ_BYTES {
                break;
            }
            page.push(change.clone());
        }
        Some(page)
    }
}

impl Feed {
    /// Starts the publisher, from the last change the store holds. It stops when every `Feed`
    /// clone is dropped.
    pub async fn start(log: Arc<dyn ChangeLog>) -> Result<Feed, StoreError> {
        Self::start_with_ring(log, LIVE_BYTES).await
    }

    /// [`Feed::start`] with a ring of `ring_bytes`.
    async fn start_with_ring(
        log: Arc<dyn ChangeLog>,
        ring_bytes: usize,
    ) -> Result<Feed, StoreError> {
        let (head, _) = watch::channel(log.last_seq().await?);
        let live = Arc::new(Live {
            ring: Mutex::new(Ring {
                changes: VecDeque::new(),
                bytes: 0,
                limit: ring_bytes,
                followers: 0,
            }),
            head,
        });
        let (commits, reports) = mpsc::channel(COMMITS_QUEUED);
        let others = log.watch_other_writers();
        let publisher = Publisher {
            log: log.clone(),
            live: live.clone(),
        };
        tokio::spawn(publisher.run(reports, others));
        Ok(Feed { log, live, commits })
    }

    /// Reports the changes a commit appended, in `seq` order. Never waits: when they follow on
    /// from the head (one writer, or an instance nobody else writes beside), they are published
    /// at once, before the commit's requests are answered; otherwise the publisher reads what is
    /// missing from the store first.
    pub fn committed(&self, changes: Vec<Change>) {
        if let Err(changes) = self.live.publish(changes) {
            // When full, the publisher is busy reading the store, and will read these too.
            let _ = self.commits.try_send(changes);
        }
    }

    /// The position of the last change published: a reader that starts here sees only new
    /// changes.
    pub fn head(&self) -> i64 {
        self.live.head()
    }

    /// A reader of the changes after `after` that match `filter`.
    pub fn reader(&self, after: i64, filter: ChangeFilter) -> FeedReader {
        // Under the ring's lock: a publish either comes before (and the reader finds it in the
        // store) or sees the follower and keeps its changes.
        self.live
            .ring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .followers += 1;
        FeedReader {
            feed: self.clone(),
            filter,
            last: after,
            live: None,
        }
    }

    /// The store behind the feed.
    pub fn log(&self) -> &Arc<dyn ChangeLog> {
        &self.log
    }
}

struct Publisher {
    log: Arc<dyn ChangeLog>,
    live: Arc<Live>,
}

impl Publisher {
    async fn run(
        self,
        mut reports: mpsc::Receiver<Vec<Change>>,
        mut others: Option<mpsc::Receiver<()>>,
    ) {
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // While the store fails, the checks space out (up to 30 s) rather than keep a
        // connection to an unresponsive database busy at all times.
        let mut failures = 0u32;
        let mut next_check = tokio::time::Instant::now();
        loop {
            let outcome = tokio::select! {
                report = reports.recv() => match report {
                    Some(changes) => self.on_commit(changes).await,
                    None => return,
                },
                Some(()) = next_wake(&mut others) => self.catch_up().await,
                _ = check.tick() => {
                    if tokio::time::Instant::now() < next_check {
                        continue;
                    }
                    self.check().await
                }
            };
            match outcome {
                Ok(()) => failures = 0,
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let pause =
                        Duration::from_secs(1 << failures.min(5)).min(Duration::from_secs(30));
                    next_check = tokio::time::Instant::now() + pause;
                    tracing::warn!(%error, retry_seconds = pause.as_secs(), "the feed could not read new changes from the store");
                }
            }
        }
    }

    async fn on_commit(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        match self.live.publish(changes) {
            Ok(()) => Ok(()),
            // Something committed before these is not published yet: the store has it.
            Err(_) => self.catch_up().await,
        }
    }

    /// Publishes everything the store holds after the head.
    async fn catch_up(&self) -> Result<(), StoreError> {
        let everything = ChangeFilter::default();
        loop {
            let page = self
                .log
                .changes(
                    self.live.head(),
                    &everything,
                    READ_PAGE,
                    crate::store::PAGE_BYTES,
                )
                .await?;
            let more = page.more;
            // Read after the head: it follows on, less what the writer published meanwhile.
            if self.live.publish(page.items).is_err() {
                return Err(StoreError::Corrupt(
                    "the feed's positions have a gap".into(),
                ));
            }
            if !more {
                return Ok(());
            }
        }
    }

    async fn check(&self) -> Result<(), StoreError> {
        if self.log.last_seq().await? > self.live.head() {
            self.catch_up().await?;
        }
        Ok(())
    }
}

async fn next_wake(others: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    match others {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Follows the feed from a position: every matching change after it, once each, in `seq` order.
pub struct FeedReader {
    feed: Feed,
    filter: ChangeFilter,
    /// The last change delivered (or the starting position).
    last: i64,
    /// Following the ring: every change at or below this position has been looked at.
    live: Option<i64>,
}

impl Drop for FeedReader {
    fn drop(&mut self) {
        let mut ring = self
            .feed
            .live
            .ring
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        ring.followers = ring.followers.saturating_sub(1);
    }
}

impl FeedReader {
    /// The position of the last change delivered (or the starting position).
    pub fn position(&self) -> i64 {
        self.last
    }

    /// The next matching changes (at least one), waiting for them. Cancel-safe: dropped before
    /// it returns, it delivered nothing and the next call goes on from the same position.
    pub async fn next(&mut self) -> Result<Vec<SharedChange>, StoreError> {
        let mut head = self.feed.live.head.subscribe();
        loop {
            let delivered = match self.live {
                None => self.read_store().await?,
                Some(scanned) => {
                    if *head.borrow_and_update() <= scanned {
                        if head.changed().await.is_err() {
                            return Err(StoreError::Closed);
                        }
                        continue;
                    }
                    let ring = self
                        .feed
                        .live
                        .ring
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    match ring.after(scanned, READ_PAGE) {
                        Some(changes) => {
                            drop(ring);
                            if let Some(newest) = changes.last() {
                                self.live = Some(newest.seq);
                            }
                            changes
                                .into_iter()
                                .filter(|c| c.seq > self.last && self.filter.matches(c))
                                .collect()
                        }
                        None => {
                            // Too slow for the ring: the store has everything.
                            self.live = None;
                            Vec::new()
                        }
                    }
                }
            };
            if let Some(last) = delivered.last() {
                self.last = last.seq;
                return Ok(delivered);
            }
        }
    }

    /// Reads the next page from the store; once at the end, follows the ring from the head as it
    /// was before that read (everything up to it was committed before the read, and is in it).
    async fn read_store(&mut self) -> Result<Vec<SharedChange>, StoreError> {
        let head = self.feed.head();
        let page = self
            .feed
            .log
            .changes(self.last, &self.filter, READ_PAGE, READ_BYTES)
            .await?;
        if !page.more {
            self.live = Some(head.max(self.last));
        }
        Ok(page.items.into_iter().map(Arc::new).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::change::{ChangeBody, ChangeSubject, ChangeType, NewChange};
    use crate::store::ChangePage;
    use async_trait::async_trait;

    /// The feed's store, in memory.
    #[derive(Default)]
    struct MemoryLog {
        changes: Mutex<Vec<Change>>,
    }

    impl MemoryLog {
        /// Appends `count` changes of random types and statuses; returns them.
        fn append(&self, rng: &mut fastrand::Rng, count: usize) -> Vec<Change> {
            let mut all = self.changes.lock().unwrap();
            let mut added = Vec::new();
            for _ in 0..count {
                let seq = all.len() as i64 + 1;
                let kind = ChangeType::ALL[rng.usize(..3)];
                let status = ["ringing", "answered", "missed"][rng.usize(..3)];
                let change = Change::new(
                    seq,
                    NewChange {
                        kind,
                        event_id: seq,
                        received_at: 0,
                        subject: ChangeSubject {
                            call_id: Some(format!("c{}", rng.usize(..5))),
                            status_norm: Some(status.into()),
                            ..ChangeSubject::default()
                        },
                        // Sizes vary, so the ring holds a varying number of changes.
                        body: ChangeBody::Event {
                            payload: format!("{{\"pad\":\"{}\"}}", "x".repeat(rng.usize(..400))),
                        },
                    },
                    &jiff::tz::TimeZone::UTC,
                );
                all.push(change.clone());
                added.push(change);
            }
            added
        }
    }

    #[async_trait]
    impl ChangeLog for MemoryLog {
        async fn changes(
            &self,
            after: i64,
            filter: &ChangeFilter,
            limit: usize,
            _max_bytes: usize,
        ) -> Result<ChangePage, StoreError> {
            let all = self.changes.lock().unwrap();
            let mut matching = all.iter().filter(|c| c.seq > after && filter.matches(c));
            let items: Vec<Change> = matching.by_ref().take(limit).cloned().collect();
            Ok(ChangePage {
                items,
                more: matching.next().is_some(),
            })
        }

        async fn last_seq(&self) -> Result<i64, StoreError> {
            Ok(self.changes.lock().unwrap().len() as i64)
        }

        async fn count_changes(
            &self,
            after: i64,
            filter: &ChangeFilter,
            _undelivered_to: Option<&str>,
        ) -> Result<(i64, Option<i64>), StoreError> {
            let all = self.changes.lock().unwrap();
            let matching: Vec<&Change> = all
                .iter()
                .filter(|c| c.seq > after && filter.matches(c))
                .collect();
            Ok((
                matching.len() as i64,
                matching.first().map(|c| c.received_at),
            ))
        }
    }

    #[test]
    fn a_page_from_the_ring_is_bounded_in_bytes_and_holds_one_change_at_least() {
        let mut ring = Ring {
            changes: VecDeque::new(),
            bytes: 0,
            limit: usize::MAX,
            followers: 1,
        };
        let change = |seq: i64, size: usize| {
            Arc::new(Change::new(
                seq,
                NewChange {
                    kind: ChangeType::EventReceived,
                    event_id: seq,
                    received_at: 0,
                    subject: ChangeSubject::default(),
                    body: ChangeBody::Event {
                        payload: format!("\"{}\"", "x".repeat(size)),
                    },
                },
                &jiff::tz::TimeZone::UTC,
            ))
        };
        for seq in 1..=5 {
            ring.push(change(seq, 200 * 1024));
        }
        for seq in 6..=200 {
            ring.push(change(seq, 100));
        }
        let page = |after| ring.after(after, READ_PAGE).unwrap();
        assert_eq!(page(0).len(), 1, "a large change makes a page of one");
        let small = page(5);
        assert_eq!(small.len(), 195);
        assert!(small.iter().map(|c| c.json().len()).sum::<usize>() < READ_BYTES);
        assert!(ring.after(-5, READ_PAGE).is_none() || ring.changes[0].seq == 1);
    }

    fn random_filter(rng: &mut fastrand::Rng) -> ChangeFilter {
        match rng.usize(..4) {
            0 => ChangeFilter::default(),
            1 => ChangeFilter {
                types: Some(vec![ChangeType::CallEnded, ChangeType::CallCreated]),
                ..ChangeFilter::default()
            },
            2 => ChangeFilter {
                status: Some("missed".into()),
                ..ChangeFilter::default()
            },
            _ => ChangeFilter {
                call_id: Some("c1".into()),
                ..ChangeFilter::default()
            },
        }
    }

    /// Commits of any size, readers with any filter starting anywhere and reading at any pace
    /// (some so slowly that the ring forgets what they need): every reader gets exactly the
    /// matching changes after its start, once each, in order.
    #[tokio::test(start_paused = true)]
    async fn readers_at_any_pace_get_every_matching_change_once() {
        for seed in 0..40u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let log = Arc::new(MemoryLog::default());
            let count = rng.usize(..30);
            log.append(&mut rng, count);
            // A ring of about ten changes: slow readers fall off it often.
            let feed = Feed::start_with_ring(log.clone(), 4000).await.unwrap();
            let mut readers: Vec<(i64, ChangeFilter, FeedReader, Vec<i64>)> = Vec::new();
            // Half the readers come later, some to a feed nobody followed until then.
            let early = rng.usize(0..=2);
            for step in 0..60 {
                if step == 0 || step == 30 {
                    let count = if step == 0 { early } else { 4 - early };
                    for _ in 0..count {
                        let filter = random_filter(&mut rng);
                        let start = if rng.bool() { 0 } else { feed.head() };
                        let reader = feed.reader(start, filter.clone());
                        readers.push((start, filter, reader, Vec::new()));
                    }
                }
                if rng.u8(..3) == 0 {
                    let count = rng.usize(1..25);
                    let batch = log.append(&mut rng, count);
                    // Now and then a report is lost (a full queue): the check finds it.
                    if rng.u8(..8) != 0 {
                        feed.committed(batch);
                    }
                }
                tokio::task::yield_now().await;
                if readers.is_empty() {
                    continue;
                }
                let pick = rng.usize(..readers.len());
                let (_, _, reader, seen) = &mut readers[pick];
                if let Ok(Ok(changes)) =
                    tokio::time::timeout(Duration::from_millis(1), reader.next()).await
                {
                    seen.extend(changes.iter().map(|c| c.seq));
                }
            }
            let all: Vec<Change> = log.changes.lock().unwrap().clone();
            for (start, filter, mut reader, mut seen) in readers {
                let expected: Vec<i64> = all
                    .iter()
                    .filter(|c| c.seq > start && filter.matches(c))
                    .map(|c| c.seq)
                    .collect();
                while seen.len() < expected.len() {
                    let changes = tokio::time::timeout(Duration::from_secs(5), reader.next())
                        .await
                        .unwrap_or_else(|_| {
                            panic!("seed {seed}: stuck after {seen:?}, want {expected:?}")
                        })
                        .unwrap();
                    seen.extend(changes.iter().map(|c| c.seq));
                }
                assert_eq!(
                    seen, expected,
                    "seed {seed}, filter {filter:?}, start {start}"
                );
            }
        }
    }
}
