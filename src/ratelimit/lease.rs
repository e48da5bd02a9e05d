//! Leases of a subject's shared budget: cells taken from the Redis bucket several at a time and
//! handed out in process, so that a busy subject's requests do not each wait on a Redis round
//! trip (quota leasing, as in Google's Doorman or the token caching of Envoy's global rate
//! limit proposals; here on top of the GCRA bucket).
//!
//! - A lease is cells of the subject's bucket taken in one call ([`super::gcra::SCRIPT`] with
//!   `wanted` cells): the bucket charges every cell at once, so instances sharing a budget never
//!   admit more than it allows together, give or take one lease: a cell is spent at most
//!   `rate_limit.lease_ms` after the bucket charged it, so over any period the subject's
//!   requests admitted are at most what the bucket allows over that period and one lease time
//!   more (`burst + rate x (period + lease_ms)`).
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
//! - The cells of one grant (a fetch's answer) are usable for `rate_limit.lease_ms` from the
//!   start of that fetch; a top-up's cells do not lengthen the life of cells still on hand.
//!   The unused cells of an ended grant go back to the bucket with the next fetch (the
//!   script's `given_back`), so one instance admits what the bucket allows, but only what is
//!   left of their charge: once it has decayed (the bucket refilled meanwhile) giving them back
//!   frees nothing (it would free other cells' charges). Cells of a subject that stops sending
//!   are given back only if it sends again; until then other instances cannot use them (a
//!   budget shared by several instances can refuse a little early).
//! - A refusal from Redis is answered in process until its `Retry-After` has passed: a subject
//!   past its budget costs Redis nothing meanwhile.
//! - After a failed fetch (Redis down, frozen, or busy past `http.redis_timeout_ms`) the
//!   in-process limiter decides for the subject without waiting, and once per lease time a
//!   fetch in the background asks Redis again (the probe that closes the `redis` breaker); the
//!   cells of a live lease stay valid (the bucket charged them). (The probe used to be a
//!   request that waited on it: behind a flush's transaction, which held Redis for seconds
//!   under the ranking benchmark's ingest point, one request per lease time waited out the
//!   deadline.)

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::config::ClassLimit;
use super::gcra::{GiveBack, Grant, Outcome};

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

/// Grants a lease keeps apart at most: a top-up starts only when the last one is half used or
/// half lived, so more than two live at once only under bursts; the oldest's cells are given
/// back when a fifth arrives.
const MAX_GRANTS: usize = 4;

/// A call of the bucket's script: cells wanted and cells given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch {
    /// Cells asked for.
    pub wanted: u32,
    /// Unused cells of ended grants returned.
    pub given_back: GiveBack,
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

/// The cells of one grant not handed out yet, usable until `ends`.
#[derive(Debug, Clone, Copy)]
struct Cells {
    left: u32,
    /// `lease_ms` after the fetch that took them started: a cell is never spent later than
    /// one lease time after the bucket charged it.
    ends: Instant,
    /// Where their charge ends on Redis's clock, for giving them back.
    charge_end_us: i64,
}

/// One subject's lease on this instance: the cells of its live grants, oldest first. Each
/// grant keeps its own end (a top-up never lends an older grant's cells a new life).
#[derive(Debug, Default)]
pub struct Lease {
    grants: VecDeque<Cells>,
    /// Cells on hand right after the last top-up.
    size: u32,
    /// Cells handed out since the last top-up.
    used: u32,
    /// When the last top-up's fetch started.
    topped_up: Option<Instant>,
    /// Unused cells of ended grants, returned with the next fetch.
    give_back: GiveBack,
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
        self.end_grants(now);
        if let Some(outcome) = self.take(now) {
            let half_used = self.on_hand().saturating_mul(2) <= self.size;
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
            // Once per lease time a fetch asks Redis again, in the background (the probe that
            // closes the `redis` breaker, so that the next answers are no longer marked
            // stale). Every request meanwhile is decided in process without waiting, the one
            // that started the probe included: while Redis is busy, a request that waited on it
            // would only wait out `http.redis_timeout_ms`.
            let probe = self.may_fetch(now).then(|| self.start(now, max, lease));
            return (Plan::Local, probe);
        }
        if self.fetching {
            let fetch = Fetch { wanted: 1, given_back: GiveBack::NONE };
            return (Plan::Ask { fetch, lease: false }, None);
        }
        (Plan::Ask { fetch: self.start(now, max, lease), lease: true }, None)
    }

    /// Settles a fetch for the lease started by [`Lease::plan`]: `started` is when the fetch
    /// started (the grant's cells are usable until a lease time after it), `answer` the
    /// bucket's grant, `None` when Redis did not answer. For a request that waited on it
    /// (`waiting`), the answer to give: a cell of the new grant, or the refusal.
    pub fn settle(
        &mut self,
        started: Instant,
        answer: Option<Grant>,
        lease: Duration,
        waiting: bool,
    ) -> Option<Outcome> {
        self.fetching = false;
        let Some(grant) = answer else {
            self.fail(started, lease);
            return None;
        };
        self.retry_at = None;
        let outcome = grant.outcome;
        if grant.granted == 0 {
            self.refused = Some((started + outcome.retry_after, outcome));
            return waiting.then_some(outcome);
        }
        self.grants.push_back(Cells {
            left: grant.granted,
            ends: started + lease,
            charge_end_us: grant.charge_end_us,
        });
        while self.grants.len() > MAX_GRANTS {
            if let Some(oldest) = self.grants.pop_front() {
                self.give_back.add(oldest.left, oldest.charge_end_us);
            }
        }
        self.size = self.on_hand();
        self.used = 0;
        self.topped_up = Some(started);
        self.remaining_beside = outcome.remaining;
        self.full_at = Some(started + outcome.reset_after);
        if waiting {
            self.take(started)
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

    /// Moves the unused cells of grants that have ended to the next give-back.
    fn end_grants(&mut self, now: Instant) {
        while let Some(oldest) = self.grants.front().copied() {
            if now < oldest.ends {
                break;
            }
            self.grants.pop_front();
            self.give_back.add(oldest.left, oldest.charge_end_us);
        }
    }

    fn on_hand(&self) -> u32 {
        self.grants.iter().fold(0, |sum, grant| sum.saturating_add(grant.left))
    }

    /// Starts a fetch for the lease, giving back the cells of ended grants. Cells wanted:
    /// what the pace since the last top-up uses in one lease time, less the cells on hand that
    /// outlive half a lease time (the time since counted as at least a tenth of a lease time,
    /// so a lease grows at most about tenfold a step); 1 to `max`.
    fn start(&mut self, now: Instant, max: u32, lease: Duration) -> Fetch {
        self.fetching = true;
        let given_back = std::mem::take(&mut self.give_back);
        let since = self.topped_up.map_or(lease, |at| now.saturating_duration_since(at));
        let since = since.max(lease / 10).as_secs_f64().max(f64::MIN_POSITIVE);
        let need = (f64::from(self.used) * lease.as_secs_f64() / since).ceil();
        let lasting: u32 = self
            .grants
            .iter()
            .filter(|grant| grant.ends >= now + lease / 2)
            .fold(0, |sum, grant| sum.saturating_add(grant.left));
        let wanted = (need - f64::from(lasting)).clamp(1.0, f64::from(max.max(1)));
        Fetch { wanted: wanted as u32, given_back }
    }

    /// A cell of the oldest live grant.
    fn take(&mut self, now: Instant) -> Option<Outcome> {
        let oldest = self.grants.front_mut()?;
        oldest.left -= 1;
        if oldest.left == 0 {
            self.grants.pop_front();
        }
        self.used += 1;
        Some(Outcome {
            allowed: true,
            remaining: self.on_hand().saturating_add(self.remaining_beside),
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

    /// Where the test grants' charge ends on Redis's clock.
    const CHARGE_END: i64 = 7_000_000;

    fn grant(outcome: Outcome, granted: u32) -> Grant {
        Grant { outcome, granted, charge_end_us: CHARGE_END }
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
        let first = Fetch { wanted: 1, given_back: GiveBack::NONE };
        assert_eq!(plan, Plan::Ask { fetch: first, lease: true });
        assert!(background.is_none());
        // A second request while that fetch is in flight asks for its own cell.
        let (plan, _) = lease.plan(now, 500, LEASE);
        assert_eq!(plan, Plan::Ask { fetch: first, lease: false });
        let answer = lease.settle(now, Some(grant(allowed(99), 1)), LEASE, true).unwrap();
        assert!(answer.allowed);
        // The lease is used up: the next request asks for a lease time at the pace of one cell
        // in (at least) a tenth of one: 10.
        let (plan, _) = lease.plan(now, 500, LEASE);
        assert_eq!(
            plan,
            Plan::Ask { fetch: Fetch { wanted: 10, given_back: GiveBack::NONE }, lease: true }
        );
        lease.settle(now, Some(grant(allowed(90), 8)), LEASE, true).unwrap();
        // 7 cells left: the next three are answered at once; the one that leaves half the lease
        // or less starts a top-up, and no second one starts while it is in flight.
        let mut top_ups = Vec::new();
        for _ in 0..5 {
            let (plan, background) = lease.plan(now, 500, LEASE);
            assert!(matches!(plan, Plan::Answer(Outcome { allowed: true, .. })), "{plan:?}");
            top_ups.extend(background);
        }
        // 4 cells in (at least) a tenth of a lease time: 40 a lease time, 4 on hand.
        assert_eq!(top_ups, [Fetch { wanted: 36, given_back: GiveBack::NONE }]);
        assert_eq!(lease.settle(now, Some(grant(allowed(80), 8)), LEASE, false), None);
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
        lease.settle(now, Some(grant(allowed(0), 64)), LEASE, true).unwrap();
        let (plan, _) = lease.plan(now + LEASE, 500, LEASE);
        let fetch =
            Fetch { wanted: 1, given_back: GiveBack { cells: 63, charge_end_us: CHARGE_END } };
        assert_eq!(plan, Plan::Ask { fetch, lease: true }, "one cell used in a lease time");
    }

    /// A top-up at half life used to add its cells to the ones on hand and give them all a
    /// new lease time: a subject trickling requests kept its leftover cells alive for good,
    /// and spent them long after the bucket had refilled (more than the budget). Each grant now
    /// ends on its own, and its leftover goes back.
    #[test]
    fn a_top_up_does_not_lengthen_the_life_of_cells_on_hand() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut lease = Lease::default();
        lease.plan(t0, 500, LEASE);
        lease.settle(t0, Some(grant(allowed(0), 16)), LEASE, true).unwrap();
        let (plan, top_up) = lease.plan(t0 + ms(60), 500, LEASE);
        assert!(matches!(plan, Plan::Answer(Outcome { allowed: true, .. })), "{plan:?}");
        assert!(top_up.is_some(), "half the lease time has passed");
        lease.settle(t0 + ms(60), Some(grant(allowed(0), 1)), LEASE, false);
        // The first grant has ended (14 cells left); the top-up's cell is still live.
        let (plan, top_up) = lease.plan(t0 + LEASE, 500, LEASE);
        let Plan::Answer(outcome) = plan else { panic!("{plan:?}") };
        assert_eq!(outcome.remaining, 0, "the 14 cells of the ended grant are not on hand");
        let top_up = top_up.expect("the lease is used up");
        assert_eq!(top_up.given_back, GiveBack { cells: 14, charge_end_us: CHARGE_END });
    }

    /// A grant that ended while a top-up was in flight used to lose its unused cells (the
    /// top-up's answer replaced them): the bucket had charged them, so one instance admitted
    /// less than the budget. They go back with the next fetch.
    #[test]
    fn cells_of_a_grant_that_ends_during_a_top_up_go_back_with_the_next_fetch() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut lease = Lease::default();
        lease.plan(t0, 500, LEASE);
        lease.settle(t0, Some(grant(allowed(0), 12)), LEASE, true).unwrap();
        let (_, top_up) = lease.plan(t0 + ms(60), 500, LEASE);
        assert!(top_up.is_some());
        // The grant ends with 10 cells left while the top-up is in flight: the request asks
        // for its own cell.
        let (plan, _) = lease.plan(t0 + LEASE, 500, LEASE);
        let own = Fetch { wanted: 1, given_back: GiveBack::NONE };
        assert_eq!(plan, Plan::Ask { fetch: own, lease: false });
        lease.settle(t0 + ms(60), Some(grant(allowed(0), 5)), LEASE, false);
        let mut next = None;
        for _ in 0..5 {
            let (plan, top_up) = lease.plan(t0 + LEASE, 500, LEASE);
            assert!(matches!(plan, Plan::Answer(Outcome { allowed: true, .. })), "{plan:?}");
            next = next.or(top_up);
        }
        let next = next.expect("a top-up once the new grant is half used");
        assert_eq!(next.given_back, GiveBack { cells: 10, charge_end_us: CHARGE_END });
    }

    #[test]
    fn a_refusal_is_answered_in_process_until_its_retry_time() {
        let now = Instant::now();
        let mut lease = Lease::default();
        lease.plan(now, 500, LEASE);
        let answer = lease.settle(now, Some(grant(refused(300), 0)), LEASE, true).unwrap();
        assert!(!answer.allowed);
        let (plan, _) = lease.plan(now + Duration::from_millis(100), 500, LEASE);
        let Plan::Answer(outcome) = plan else { panic!("{plan:?}") };
        assert!(!outcome.allowed);
        assert_eq!(outcome.retry_after, Duration::from_millis(200));
        let (plan, _) = lease.plan(now + Duration::from_millis(300), 500, LEASE);
        assert!(matches!(plan, Plan::Ask { lease: true, .. }), "{plan:?}");
    }

    #[test]
    fn after_a_failure_the_local_limiter_decides_and_a_background_fetch_asks_redis_each_lease_time()
    {
        let now = Instant::now();
        let mut lease = Lease::default();
        lease.plan(now, 500, LEASE);
        assert_eq!(lease.settle(now, None, LEASE, true), None);
        let (plan, background) = lease.plan(now, 500, LEASE);
        assert_eq!((plan, background), (Plan::Local, None), "no retry within a lease time");
        let later = now + LEASE;
        let (plan, background) = lease.plan(later, 500, LEASE);
        assert_eq!(plan, Plan::Local, "the request that starts the probe does not wait on it");
        assert!(background.is_some(), "a lease time later, Redis is asked again");
        let (plan, background) = lease.plan(later, 500, LEASE);
        assert_eq!((plan, background), (Plan::Local, None), "one probe at a time");
        assert_eq!(lease.settle(later, Some(grant(allowed(10), 4)), LEASE, false), None);
        let (plan, _) = lease.plan(later, 500, LEASE);
        assert!(matches!(plan, Plan::Answer(Outcome { allowed: true, .. })), "{plan:?}");
    }

    #[test]
    fn a_live_lease_outlasts_a_failed_top_up() {
        let now = Instant::now();
        let mut lease = Lease::default();
        lease.plan(now, 500, LEASE);
        lease.settle(now, Some(grant(allowed(0), 10)), LEASE, true).unwrap();
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
