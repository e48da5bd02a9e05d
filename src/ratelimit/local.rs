//! The in-process fallback limiter (governor, also GCRA) used while Redis is unreachable: one
//! keyed limiter per route class with the stricter budget `limit * fallback_factor`. Each
//! instance limits on its own here, which is why the budget is smaller.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

use super::config::ClassLimit;
use super::gcra::Outcome;

type Keyed =
    RateLimiter<String, HashMapStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// One class's fallback limiter.
pub struct LocalLimiter {
    limit: ClassLimit,
    limiter: Keyed,
    max_subjects: usize,
}

impl std::fmt::Debug for LocalLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLimiter").field("limit", &self.limit).finish_non_exhaustive()
    }
}

impl LocalLimiter {
    /// A limiter enforcing `limit` (already scaled), keeping at most about `max_subjects`
    /// subjects.
    pub fn new(limit: ClassLimit, max_subjects: usize) -> Self {
        let period =
            Duration::from_secs_f64(1.0 / limit.rate_per_second).max(Duration::from_nanos(1));
        let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
        let quota =
            Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN));
        let limiter = RateLimiter::hashmap(quota.allow_burst(burst))
            .with_middleware::<StateInformationMiddleware>();
        Self { limit, limiter, max_subjects }
    }

    /// The budget this limiter enforces.
    pub fn limit(&self) -> &ClassLimit {
        &self.limit
    }

    /// Counts one request of `subject`.
    pub fn check(&self, subject: &str) -> Outcome {
        if self.limiter.len() >= self.max_subjects {
            // Subjects whose bucket is full again are indistinguishable from new ones.
            self.limiter.retain_recent();
        }
        let key = subject.to_owned();
        let interval = Duration::from_secs_f64(1.0 / self.limit.rate_per_second);
        match self.limiter.check_key(&key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let used = self.limit.burst.saturating_sub(remaining);
                Outcome {
                    allowed: true,
                    remaining,
                    retry_after: Duration::ZERO,
                    reset_after: interval.saturating_mul(used),
                }
            }
            Err(not_until) => Outcome {
                allowed: false,
                remaining: 0,
                retry_after: not_until.wait_time_from(self.limiter.clock().now()),
                reset_after: interval.saturating_mul(self.limit.burst),
            },
        }
    }

    /// Subjects currently held.
    pub fn subjects(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_burst_then_refuses_per_subject() {
        let local = LocalLimiter::new(ClassLimit { rate_per_second: 1.0, burst: 3 }, 100);
        let remaining: Vec<(bool, u32)> =
            (0..4).map(|_| local.check("a")).map(|o| (o.allowed, o.remaining)).collect();
        assert_eq!(remaining, [(true, 2), (true, 1), (true, 0), (false, 0)]);
        let refused = local.check("a");
        assert!(refused.retry_after > Duration::from_millis(900), "{refused:?}");
        assert!(refused.retry_after <= Duration::from_secs(1));
        assert!(local.check("b").allowed, "another subject has its own bucket");
    }

    #[test]
    fn subjects_are_bounded_by_dropping_full_buckets() {
        let local = LocalLimiter::new(ClassLimit { rate_per_second: 1e9, burst: 1 }, 10);
        for subject in 0..1000 {
            local.check(&subject.to_string());
        }
        assert!(local.subjects() <= 11, "{}", local.subjects());
    }
}
