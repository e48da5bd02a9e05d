//! Leases of a subject's shared budget: cells taken from the Redis bucket several at a time and
//! handed out in process, so that a busy subject's requests do not each wait on a Redis round
//! trip (quota leasing, as in Google's Doorman or the token caching of Envoy's global rate
//! limit proposals; here on top of the GCRA bucket).
//!
//! - A lease is cells of the subject's bucket taken in one call ([`super::gcra::SCRIPT`] with
//!   `wanted` cells): the bucket charges every cell at once, so instances sharing a budget never
//!   admit more than it allows together.
//! - The first request of a subject (and one that finds no cell while Redis is healthy) asks
//!   Redis and waits, as without leases. Once a lease is live it is topped up in the background
//!   when half of it is used or half its time has passed, so a busy subject's requests do not
//!   wait on Redis, nor on whatever Redis is doing (a flush's transaction held it for about a
//!   second under ingest).
//! - A top-up asks for what the subject's pace since the last one uses in one lease time, less
//!   the cells on hand, from 1 up to [`max_cells`] (`rate x rate_limit.lease_ms`, at most half
//!   the burst). Topping up at half use or half life leaves half a lease time of cells while the
//!   top-up runs: longer than `http.redis_timeout_ms` (50 ms) with the default 250 ms, so a
//!   top-up that fails (Redis frozen) is known before the lease runs dry. A subject sending a
//!   request now and then takes one cell at a time; one sending hundreds a second goes to Redis
//!   a few times a second.
//! - A lease lives `rate_limit.lease_ms` from its last top-up; the cells of an ended lease go
//!   back to the bucket with the next fetch (the script's `given_back`), so one instance admits
//!   exactly what the bucket allows. Cells of a subject that stops sending are given back only
//!   if it sends again; until then other instances cannot use them (a budget shared by several
//!   instances can refuse a little early, never admit more).
//! - A refusal from Redis is answered in process until its `Retry-After` has passed: a subject
//!   past its budget costs Redis nothing meanwhile.
//! - After a failed fetch (Redis down or frozen) the in-process limiter decides for the subject
//!   without waiting, except one request per lease time that asks Redis again (and is the
//!   probe that closes the `redis` breaker); the cells of a live lease stay valid (the bucket
//!   charged them).

use std::time::{Duration, Instant};

use super::config::ClassLimit;
use super::gcra::Outcome;

/// The largest lease for `limit` with leases of `lease`: `rate x lease`, at most half the
/// burst (a lease never holds most of what a subject may send at once). Below 2, no leasing.
pub fn max_cells(limit: &ClassLimit, lease: Duration) -> u32 {
    let by_rate = limit.rate_per_second * lease.as_secs_f64();
    let cells = by_rate.min(f64::from(limit.burst / 2)).floor();
    if cells.is_finite() && cells >= 2.0 {
        cells.min(f64::from(u32::MAX)) as u32
    } else {
        0
    }
}

/// A call of the bucket's script: cells wanted and cells given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch {
    /// Cells asked for.
    pub wanted: u32,
    /// Unused cells of an ended lease returned.
    pub given_back: u32,
}

/// What to do with one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Answer at once: a cell of the lease, or a refusal Redis gave and that still holds.
    Answer(Outcome),
    /// Ask Redis and wait: for a lease (`lease`: the answer settles it with
    /// [`Lease::settle`]) or for this request's cell alone, while a top-up is in flight.
    Ask { fetch: Fetch, lease: bool },
    /// Redis failed recently: the in-process limiter decides.
    Local,
}

/// One subject's lease on this instance.
#[derive(Debug, Default)]
pub struct Lease {
    /// Cells left to hand out, and the size of the lease when last topped up.
    cells: u32,
    size: u32,
    /// Cells handed out since the last top-up.
    used: u32,
    topped_up: Option<Instant>,
    /// When the lease ends (`lease_ms` after its last top-up).
    ends: Option<Instant>,
    /// What the bucket held beside the lease at the last top-up, and when it is full again.
    remaining_beside: u32,
    full_at: Option<Instant>,
    /// A fetch for the lease is in flight.
    fetching: bool,
    /// Set when the last fetch failed: when Redis is asked again. `None` while Redis answers.
    retry_at: Option<Instant>,
    /// A refusal of Redis, answered in process until it expires.
    refused: Option<(Instant, Outcome)>,
}

impl Lease {
    /// What to do with a request at `now`, and a top-up to start in the background (the
    /// caller runs it and hands its answer to [`Lease::settle`]).
    pub fn plan(&mut self, now: Instant, max: u32, lease: Duration) -> (Plan, Option<Fetch>) {
        if self.ends.is_some_and(|ends| now >= ends) {
            // Ended: its cells go back with the next fetch.
            self.ends = None;
        }
        if let Some(outcome) = self.take(now) {
            let half_used = self.cells.saturating_mul(2) <= self.size;
            let half_lived = self.topped_up.is_some_and(|at| now >= at + lease / 2);
            let top_up = (half_used || half_lived) && self.may_fetch(now);
            return (Plan::Answer(outcome), top_up.then(|| self.start(now, max, lease)));
        }
        if let Some((until, outcome)) = self.refused {
            if now < until {
                let retry_after = until - now;
                return (Plan::Answer(Outcome { retry_after, ..outcome }), None);
            }
            self.refused = None;
        }
        if self.retry_at.is_some() {
            // One request per lease time asks Redis again and waits (the probe that closes the
            // `redis` breaker, so that the next answers are no longer marked stale); the rest
            // are decided in process meanwhile.
            if self.may_fetch(now) {
                return (Plan::Ask { fetch: self.start(now, max, lease), lease: true }, None);
            }
            return (Plan::Local, None);
        }
        if self.fetching {
            let fetch = Fetch { wanted: 1, given_back: 0 };
            return (Plan::Ask { fetch, lease: false }, None);
        }
        (Plan::Ask { fetch: self.start(now, max, lease), lease: true }, None)
    }

    /// Settles a fetch for the lease started by [`Lease::plan`]: `answer` is the bucket's
    /// outcome and the cells granted, `None` when Redis did not answer. For a request that
    /// waited on it (`waiting`), the answer to give: a cell of the new lease, or the refusal.
    pub fn settle(
        &mut self,
        now: Instant,
        answer: Option<(Outcome, u32)>,
        lease: Duration,
        waiting: bool,
    ) -> Option<Outcome> {
        self.fetching = false;
        let Some((outcome, granted)) = answer else {
            self.fail(now, lease);
            return None;
        };
        self.retry_at = None;
        if granted == 0 {
            self.refused = Some((now + outcome.retry_after, outcome));
            return waiting.then_some(outcome);
        }
        self.cells = if self.ends.is_some() { self.cells.saturating_add(granted) } else { granted };
        self.size = self.cells;
        self.used = 0;
        self.topped_up = Some(now);
        self.ends = Some(now + lease);
        self.remaining_beside = outcome.remaining;
        self.full_at = Some(now + outcome.reset_after);
        if waiting {
            self.take(now)
        } else {
            None
        }
    }

    /// Notes what a one-cell call (made while a top-up was in flight) answered: a refusal is
    /// kept, a failure sends the subject to the in-process limiter.
    pub fn note(&mut self, now: Instant, answer: Option<&Outcome>, lease: Duration) {
        match answer {
            Some(outcome) if !outcome.allowed => {
                self.refused = Some((now + outcome.retry_after, *outcome));
            }
            Some(_) => {}
            None => self.fail(now, lease),
        }
    }

    fn fail(&mut self, now: Instant, lease: Duration) {
        self.retry_at = Some(now + lease);
    }

    fn may_fetch(&self, now: Instant) -> bool {
        !self.fetching && self.retry_at.is_none_or(|at| now >= at)
    }

    /// Starts a fetch for the lease, giving back the cells of an ended lease. Cells wanted:
    /// what the pace since the last top-up uses in one lease time, less the cells on hand (the
    /// time since counted as at least a tenth of a lease time, so a lease grows at most about
    /// tenfold a step); 1 to `max`.
    fn start(&mut self, now: Instant, max: u32, lease: Duration) -> Fetch {
        self.fetching = true;
        let given_back = if self.ends.is_none() { std::mem::take(&mut self.cells) } else { 0 };
        let since = self.topped_up.map_or(lease, |at| now.saturating_duration_since(at));
        let since = since.max(lease / 10).as_secs_f64().max(f64::MIN_POSITIVE);
        let need = (f64::from(self.used) * lease.as_secs_f64() / since).ceil();
        let wanted = (need - f64::from(self.cells)).clamp(1.0, f64::from(max.max(1)));
        Fetch { wanted: wanted as u32, given_back }
    }

    /// A cell of the live lease.
    fn take(&mut self, now: Instant) -> Option<Outcome> {
        if self.cells == 0 || self.ends.is_none() {
            return None;
        }
        self.cells -= 1;
        self.used += 1;
        Some(Outcome {
            allowed: true,
            remaining: self.cells.saturating_add(self.remaining_beside),
            retry_after: Duration::ZERO,
            reset_after: self
                .full_at
                .map_or(Duration::ZERO, |full| full.saturating_duration_since(now)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(100);

    fn allowed(remaining: u32) -> Outcome {
        Outcome {
            allowed: true,
            remaining,
            retry_after: Duration::ZERO,
            reset_after: Duration::from_millis(500),
        }
    }

    fn refused(retry_ms: u64) -> Outcome {
        Outcome {
            allowed: false,
            remaining: 0,
            retry_after: Duration::from_millis(retry_ms),
            reset_after: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_largest_lease_is_rate_times_lease_time_at_most_half_the_burst() {
        let limit = |rate_per_second, burst| ClassLimit { rate_per_second, burst };
        assert_eq!(max_cells(&limit(5000.0, 10_000), LEASE), 500);
        assert_eq!(max_cells(&limit(5000.0, 100), LEASE), 50);
        assert_eq!(max_cells(&limit(50.0, 100), LEASE), 5);
        // Below two cells a lease saves nothing: every request asks Redis, as without leases.
        assert_eq!(max_cells(&limit(10.0, 100), LEASE), 0);
        assert_eq!(max_cells(&limit(0.1, 4), LEASE), 0);
        assert_eq!(max_cells(&limit(5000.0, 10_000), Duration::ZERO), 0);
    }

    #[test]
    fn the_first_request_waits_then_busy_traffic_is_topped_up_in_the_background() {
        let now = Instant::now();
        let mut lease = Lease::default();
        let (plan, background) = lease.plan(now, 500, LEASE);
        let first = Fetch { wanted: 1, given_back: 0 };
        assert_eq!(plan, Plan::Ask { fetch: first, lease: true });
        assert!(background.is_none());
        // A second request while that fetch is in flight asks for its own cell.
        let (plan, _) = lease.plan(now, 500, LEASE);
        assert_eq!(plan, Plan::Ask { fetch: first, lease: false });
        let answer = lease.settle(now, Some((allowed(99), 1)), LEASE, true).unwrap();
        assert!(answer.allowed);
        // The lease is used up: the next request asks for a lease time at the pace of one cell
        // in (at least) a tenth of one: 10.
        let (plan, _) = lease.plan(now, 500, LEASE);
        assert_eq!(plan, Plan::Ask { fetch: Fetch { wanted: 10, given_back: 0 }, lease: true });
        lease.settle(now, Some((allowed(90), 8)), LEASE, true).unwrap();
        // 7 cells left: the next three are answered at once; the one that leaves half the lease
        // or less starts a top-up, and no second one starts while it is in flight.
        let mut top_ups = Vec::new();
        for _ in 0..5 {
            let (plan, background) = lease.plan(now, 500, LEASE);
            assert!(matches!(plan, Plan::Answer(Outcome { allowed: true, .. })), "{plan:?}");
            top_ups.extend(background);
        }
        // 4 cells in (at least) a tenth of a lease time: 40 a lease time, 4 on hand.
        assert_eq!(top_ups, [Fetch { wanted: 36, given_back: 0 }]);
        assert_eq!(lease.settle(now, Some((allowed(80), 8)), LEASE, false), None);
        // 2 left plus 8: answered from the lease, remaining = lease + the bucket's.
        let (plan, _) = lease.plan(now, 500, LEASE);
        let Plan::Answer(outcome) = plan else { panic!("{plan:?}") };
        assert_eq!(outcome.remaining, 9 + 80);
    }

    #[test]
    fn an_ended_lease_gives_its_cells_back_with_the_next_fetch() {
        let now = Instant::now();
        let mut lease = Lease::default();
        lease.plan(now, 500, LEASE);
        lease.settle(now, Some((allowed(0), 64)), LEASE, true).unwrap();
        let (plan, _) = lease.plan(now + LEASE, 500, LEASE);
        let fetch = Fetch { wanted: 1, given_back: 63 };
        assert_eq!(plan, Plan::Ask { fetch, lease: true }, "one cell used in a lease time");
    }

    #[test]
    fn a_refusal_is_answered_in_process_until_its_retry_time() {
        let now = Instant::now();
        let mut lease = Lease::default();
        lease.plan(now, 500, LEASE);
        let answer = lease.settle(now, Some((refused(300), 0)), LEASE, true).unwrap();
        assert!(!answer.allowed);
        let (plan, _) = lease.plan(now + Duration::from_millis(100), 500, LEASE);
        let Plan::Answer(outcome) = plan else { panic!("{plan:?}") };
        assert!(!outcome.allowed);
        assert_eq!(outcome.retry_after, Duration::from_millis(200));
        let (plan, _) = lease.plan(now + Duration::from_millis(300), 500, LEASE);
        assert!(matches!(plan, Plan::Ask { lease: true, .. }), "{plan:?}");
    }

    #[test]
    fn after_a_failure_the_local_limiter_decides_and_one_request_a_lease_time_asks_redis() {
        let now = Instant::now();
        let mut lease = Lease::default();
        lease.plan(now, 500, LEASE);
        assert_eq!(lease.settle(now, None, LEASE, true), None);
        let (plan, background) = lease.plan(now, 500, LEASE);
        assert_eq!((plan, background), (Plan::Local, None), "no retry within a lease time");
        let later = now + LEASE;
        let (plan, background) = lease.plan(later, 500, LEASE);
        assert!(matches!(plan, Plan::Ask { lease: true, .. }), "{plan:?}");
        assert!(background.is_none());
        let (plan, _) = lease.plan(later, 500, LEASE);
        assert_eq!(plan, Plan::Local, "one request asks; the others do not wait on it");
        assert!(lease.settle(later, Some((allowed(10), 4)), LEASE, true).is_some());
        let (plan, _) = lease.plan(later, 500, LEASE);
        assert!(matches!(plan, Plan::Answer(Outcome { allowed: true, .. })), "{plan:?}");
    }

    #[test]
    fn a_live_lease_outlasts_a_failed_top_up() {
        let now = Instant::now();
        let mut lease = Lease::default();
        lease.plan(now, 500, LEASE);
        lease.settle(now, Some((allowed(0), 10)), LEASE, true).unwrap();
        let mut started = None;
        while started.is_none() {
            started = lease.plan(now, 500, LEASE).1;
        }
        lease.settle(now, None, LEASE, false);
        let (plan, background) = lease.plan(now, 500, LEASE);
        assert!(
            matches!(plan, Plan::Answer(Outcome { allowed: true, .. })),
            "the bucket charged these cells"
        );
        assert!(background.is_none(), "no top-up before the retry time");
    }
}
