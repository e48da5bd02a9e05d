//! When Redis last answered and last failed a call, on one monotonic clock for the whole
//! process, so that what the HTTP side saw and what the ingest side saw can be ordered: the
//! newest observation says whether Redis is reachable now.
//!
//! The HTTP side used to judge by its own last call alone. A request decided in process while
//! a background call (a rate-limit lease's probe) was still on its way was then marked stale
//! long after Redis came back and the ingest side had flushed to it again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

static ANCHOR: OnceLock<Instant> = OnceLock::new();

/// Now, in nanoseconds since the first call in this process, plus one (0 is "never").
fn tick() -> u64 {
    let anchor = ANCHOR.get_or_init(Instant::now);
    u64::try_from(anchor.elapsed().as_nanos()).unwrap_or(u64::MAX - 1).saturating_add(1)
}

/// When calls of one side last succeeded and last failed.
#[derive(Debug, Default)]
pub struct Evidence {
    ok_at: AtomicU64,
    failed_at: AtomicU64,
}

impl Evidence {
    /// Records the outcome of a call that ended now.
    pub fn record(&self, ok: bool) {
        let slot = if ok { &self.ok_at } else { &self.failed_at };
        slot.fetch_max(tick(), Ordering::Relaxed);
    }

    /// Whether this side's newest failure is newer than every success seen by this side and
    /// by `others` (the other sides' calls to the same Redis): Redis is unreachable as far as
    /// the process knows now.
    pub fn failed_since_any_success<'a>(&self, others: impl IntoIterator<Item = &'a Self>) -> bool {
        let failed_at = self.failed_at.load(Ordering::Relaxed);
        let ok_at = others
            .into_iter()
            .map(|other| other.ok_at.load(Ordering::Relaxed))
            .fold(self.ok_at.load(Ordering::Relaxed), u64::max);
        failed_at > ok_at
    }
}

#[cfg(test)]
mod tests {
    use super::Evidence;

    #[test]
    fn the_newest_outcome_decides() {
        let http = Evidence::default();
        assert!(!http.failed_since_any_success([]), "nothing seen yet");
        http.record(true);
        http.record(false);
        assert!(http.failed_since_any_success([]));
        http.record(true);
        assert!(!http.failed_since_any_success([]));
    }

    #[test]
    fn a_success_of_another_side_after_a_failure_means_redis_answers_again() {
        let (http, ingest) = (Evidence::default(), Evidence::default());
        ingest.record(true);
        http.record(false);
        assert!(http.failed_since_any_success([&ingest]), "the failure is the newest");
        // Redis came back: the ingest side flushed to it. The HTTP side has made no call since
        // its failure (its requests are decided in process while a probe is on its way).
        ingest.record(true);
        assert!(http.failed_since_any_success([]));
        assert!(!http.failed_since_any_success([&ingest]));
        // A failure of the other side does not make this side's view worse.
        ingest.record(false);
        assert!(!http.failed_since_any_success([&ingest]));
    }
}
