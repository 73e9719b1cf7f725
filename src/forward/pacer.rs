//! Forwarding's share of the machine while ingest saturates it.
//!
//! Alohub's events come first: an event that is not stored is an event Alohub has to send
//! again, while a change that waits to be forwarded is only late. When the webhook's writer
//! has to wait for a commit slot (every one busy) and then finds a full queue (a batch of
//! [`PRESSURE_BATCH`] events or more: requests arrive faster than commits end), ingest is the
//! bottleneck, and forwarding runs in short windows only: [`ACTIVE`] of every [`CYCLE`], the same windows for every destination. The
//! rest of the time no destination starts a send or looks for due retries (what is already
//! under way finishes, and its outcomes are saved). A second without such a batch and forwarding runs freely again,
//! and catches up. A duty cycle, not a rate: forwarding keeps a fixed share of the time however
//! long the load lasts, so its backlog drains whenever the machine has room, and shrinks even
//! under the load when a share is enough for it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

// Tokio's clock: the tests pause it.
use tokio::time::Instant;

/// A commit of this many events or more means the requests are queueing behind the writer.
pub const PRESSURE_BATCH: usize = 8;
/// How long after such a commit forwarding stays paced.
pub const HOLD: Duration = Duration::from_secs(1);
/// The pacing cycle, and the part of it forwarding may work in.
/// (A fifth of the time cost ingest 17–19 % on this project's bench machine; a tenth, 13 %.)
pub const CYCLE: Duration = Duration::from_millis(500);
pub const ACTIVE: Duration = Duration::from_millis(50);

/// Shared by the webhook's writer (which reports its batches) and the forwarding tasks (which
/// wait for their windows).
#[derive(Debug)]
pub struct Pacer {
    start: Instant,
    /// Until when forwarding is paced (microseconds after `start`).
    paced_until: AtomicI64,
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer {
            start: Instant::now(),
            paced_until: AtomicI64::new(i64::MIN),
        }
    }
}

impl Pacer {
    fn now(&self) -> i64 {
        self.start.elapsed().as_micros() as i64
    }

    /// The writer starts committing a batch of `events`; `waited`: it had to wait for a commit
    /// slot first (with free slots, a large batch only means slow commits, not a busy writer).
    pub fn committed(&self, events: usize, waited: bool) {
        if waited && events >= PRESSURE_BATCH {
            self.paced_until
                .fetch_max(self.now() + HOLD.as_micros() as i64, Ordering::Relaxed);
        }
    }

    /// Whether ingest is saturating the machine now.
    pub fn paced(&self) -> bool {
        self.now() < self.paced_until.load(Ordering::Relaxed)
    }

    /// Whether forwarding may work now: not paced, or inside a window.
    pub fn open(&self) -> bool {
        self.until_window().is_none()
    }

    /// How long until the next window, when forwarding is paced and outside one.
    fn until_window(&self) -> Option<Duration> {
        if !self.paced() {
            return None;
        }
        let cycle = CYCLE.as_micros() as i64;
        let into = self.now().rem_euclid(cycle);
        (into >= ACTIVE.as_micros() as i64).then(|| Duration::from_micros((cycle - into) as u64))
    }

    /// Waits until forwarding may work (at once when it may).
    pub async fn until_open(&self) {
        while let Some(wait) = self.until_window() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_batches_leave_forwarding_free() {
        let pacer = Pacer::default();
        for _ in 0..1000 {
            pacer.committed(PRESSURE_BATCH - 1, true);
            pacer.committed(PRESSURE_BATCH * 4, false);
        }
        assert!(!pacer.paced());
        assert!(pacer.open());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_paces_forwarding_for_a_while() {
        let pacer = Pacer::default();
        pacer.committed(PRESSURE_BATCH, true);
        assert!(pacer.paced());
        // Over a paced second, forwarding may work in its windows only: ACTIVE of every CYCLE.
        let mut open: u128 = 0;
        for _ in 0..100 {
            if pacer.open() {
                open += 1;
            }
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        let share = 100 * ACTIVE.as_millis() / CYCLE.as_millis();
        assert!(open.abs_diff(share) <= 3, "{open} of 100, {share} expected");
        // A second after the last full batch, free again.
        tokio::time::advance(HOLD).await;
        assert!(!pacer.paced() && pacer.open());
    }

    #[tokio::test(start_paused = true)]
    async fn until_open_waits_for_the_next_window() {
        let pacer = Pacer::default();
        tokio::time::advance(ACTIVE + Duration::from_millis(1)).await;
        pacer.committed(100, true);
        assert!(!pacer.open());
        let before = tokio::time::Instant::now();
        pacer.until_open().await;
        assert!(pacer.open());
        let waited = before.elapsed();
        assert!(waited <= CYCLE - ACTIVE, "{waited:?}");
    }
}
