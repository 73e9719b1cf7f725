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
//! - A reader ([`FeedReader`]) reads from the store at its own pace until it is close to the end,
//!   then subscribes to the live batches and reads the store once more, so that nothing
//!   committed in between is missed; it skips what it has already delivered. A reader that falls
//!   too far behind the live batches (a slow client) goes back to the store. Memory is bounded:
//!   the live batches are one shared ring, and a reader holds one page at most.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};

use crate::model::change::{Change, ChangeFilter};
use crate::store::{ChangeLog, StoreError};

pub mod client;
pub mod sse;

/// Batches of live changes kept for readers that are a little behind; past that a reader reads
/// from the store.
const LIVE_BATCHES: usize = 1024;
/// Commits reported but not yet published; past that a report is dropped, and the publisher
/// reads those changes from the store.
const COMMITS_QUEUED: usize = 1024;
/// Changes a reader reads from the store at once.
pub const READ_PAGE: usize = 500;
/// How often the publisher checks the store for changes it was not told of.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A committed change, shared by every reader.
pub type SharedChange = Arc<Change>;

/// The feed: where readers subscribe, and where the writer reports commits.
#[derive(Clone)]
pub struct Feed {
    log: Arc<dyn ChangeLog>,
    live: broadcast::Sender<Arc<[SharedChange]>>,
    /// The position of the last change published.
    head: Arc<AtomicI64>,
    commits: mpsc::Sender<Vec<Change>>,
}

impl Feed {
    /// Starts the publisher, from the last change the store holds. It stops when every `Feed`
    /// clone is dropped.
    pub async fn start(log: Arc<dyn ChangeLog>) -> Result<Feed, StoreError> {
        let head = Arc::new(AtomicI64::new(log.last_seq().await?));
        let (live, _) = broadcast::channel(LIVE_BATCHES);
        let (commits, reports) = mpsc::channel(COMMITS_QUEUED);
        let others = log.watch_other_writers();
        let publisher = Publisher {
            log: log.clone(),
            live: live.clone(),
            head: head.clone(),
        };
        tokio::spawn(publisher.run(reports, others));
        Ok(Feed {
            log,
            live,
            head,
            commits,
        })
    }

    /// Reports the changes a commit appended, in `seq` order. Never waits.
    pub fn committed(&self, changes: Vec<Change>) {
        if !changes.is_empty() {
            // When full, the publisher is busy reading the store, and will read these too.
            let _ = self.commits.try_send(changes);
        }
    }

    /// The position of the last change published: a reader that starts here sees only new
    /// changes.
    pub fn head(&self) -> i64 {
        self.head.load(Ordering::Acquire)
    }

    /// A reader of the changes after `after` that match `filter`.
    pub fn reader(&self, after: i64, filter: ChangeFilter) -> FeedReader {
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
    live: broadcast::Sender<Arc<[SharedChange]>>,
    head: Arc<AtomicI64>,
}

impl Publisher {
    async fn run(
        self,
        mut reports: mpsc::Receiver<Vec<Change>>,
        mut others: Option<mpsc::Receiver<()>>,
    ) {
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let outcome = tokio::select! {
                report = reports.recv() => match report {
                    Some(changes) => self.on_commit(changes).await,
                    None => return,
                },
                Some(()) = next_wake(&mut others) => self.catch_up().await,
                _ = check.tick() => self.check().await,
            };
            if let Err(error) = outcome {
                tracing::warn!(%error, "the feed could not read new changes from the store; retrying within a second");
            }
        }
    }

    fn head(&self) -> i64 {
        self.head.load(Ordering::Acquire)
    }

    fn publish(&self, changes: Vec<SharedChange>) {
        if let Some(last) = changes.last() {
            self.head.store(last.seq, Ordering::Release);
            // No reader subscribed is not an error: they read the store when they come.
            let _ = self.live.send(changes.into());
        }
    }

    async fn on_commit(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        let (Some(first), Some(last)) = (changes.first(), changes.last()) else {
            return Ok(());
        };
        let head = self.head();
        if last.seq <= head {
            // Published already, from the store.
            return Ok(());
        }
        if first.seq == head + 1 {
            self.publish(changes.into_iter().map(Arc::new).collect());
            return Ok(());
        }
        // Something committed before these is not published yet: the store has it.
        self.catch_up().await
    }

    /// Publishes everything the store holds after the head.
    async fn catch_up(&self) -> Result<(), StoreError> {
        let everything = ChangeFilter::default();
        loop {
            let page = self
                .log
                .changes(self.head(), &everything, READ_PAGE)
                .await?;
            self.publish(page.items.into_iter().map(Arc::new).collect());
            if !page.more {
                return Ok(());
            }
        }
    }

    async fn check(&self) -> Result<(), StoreError> {
        if self.log.last_seq().await? > self.head() {
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
    /// Every change at or below it has been delivered, or does not match.
    last: i64,
    live: Option<broadcast::Receiver<Arc<[SharedChange]>>>,
}

impl FeedReader {
    /// The position of the last change delivered (or the starting position).
    pub fn position(&self) -> i64 {
        self.last
    }

    /// The next matching changes (at least one), waiting for them. Cancel-safe: dropped before
    /// it returns, it delivered nothing and the next call goes on from the same position.
    pub async fn next(&mut self) -> Result<Vec<SharedChange>, StoreError> {
        loop {
            let delivered = match &mut self.live {
                None => self.read_store().await?,
                Some(live) => match live.recv().await {
                    Ok(batch) => batch
                        .iter()
                        .filter(|c| c.seq > self.last && self.filter.matches(c))
                        .cloned()
                        .collect(),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Too slow for the live batches: the store has everything.
                        self.live = None;
                        Vec::new()
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err(StoreError::Closed),
                },
            };
            if let Some(last) = delivered.last() {
                self.last = last.seq;
                return Ok(delivered);
            }
        }
    }

    /// Reads the next page from the store; once close to the end, subscribes to the live batches
    /// and reads once more, so that nothing committed meanwhile falls between the two.
    async fn read_store(&mut self) -> Result<Vec<SharedChange>, StoreError> {
        let log = self.feed.log.clone();
        let mut page = log.changes(self.last, &self.filter, READ_PAGE).await?;
        if !page.more {
            let live = self.feed.live.subscribe();
            let after = page.items.last().map_or(self.last, |c| c.seq);
            let rest = log.changes(after, &self.filter, READ_PAGE).await?;
            if !rest.more {
                self.live = Some(live);
            }
            page.items.extend(rest.items);
        }
        Ok(page.items.into_iter().map(Arc::new).collect())
    }
}
