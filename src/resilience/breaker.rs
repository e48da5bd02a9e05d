//! A circuit breaker (Nygard, *Release It!*, ch. 5; the state machine of resilience4j): closed,
//! open, half-open.
//!
//! - **Closed**: calls pass. `failure_threshold` consecutive failures open the circuit.
//! - **Open**: calls are refused at once (no I/O) for `open_ms`.
//! - **Half-open**: after the cool-down, up to `half_open_max_calls` trial calls pass;
//!   `success_threshold` successes close the circuit, one failure opens it again.
//!
//! A timeout is a failure, except while a long call of this process is known to occupy the
//! dependency ([`CircuitBreaker::occupy`]: the ingest side's flush transaction, which Redis
//! executes alone, for seconds when it rewrites a large catalogue): other calls time out
//! behind it then, which says nothing about the dependency's health
//! ([`CircuitBreaker::record_timeout`]). The long call's own outcome still counts.
//!
//! Time comes from [`tokio::time::Instant`], so tests drive the state machine with a paused
//! clock (`tokio::time::pause` / `advance`); outside a runtime it is the system's monotonic
//! clock. Written here rather than taken from a crate because the crates we looked at
//! (failsafe, recloser) read `std::time::Instant`, which a paused test clock cannot move.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounterVec, IntGaugeVec};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Thresholds and cool-down of one breaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failures that open a closed circuit (default 5, >= 1).
    pub failure_threshold: u32,
    /// How long an open circuit refuses calls before trying again, ms (default 5000).
    pub open_ms: u64,
    /// Trial calls let through at once while half-open (default 1, >= 1).
    pub half_open_max_calls: u32,
    /// Successful trial calls that close a half-open circuit (default 1, >= 1).
    pub success_threshold: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self { failure_threshold: 5, open_ms: 5000, half_open_max_calls: 1, success_threshold: 1 }
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls pass.
    Closed,
    /// Calls are refused until the cool-down ends.
    Open,
    /// A bounded number of trial calls pass.
    HalfOpen,
}

impl BreakerState {
    /// The value of the `embedstream_circuit_breaker_state` gauge: 0 closed, 1 open,
    /// 2 half-open.
    pub fn gauge_value(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// A call refused because the circuit is open (or half-open with its trial calls taken).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker {name} is {state}; retry in {retry_after_ms} ms", state = state.as_str())]
pub struct BreakerOpen {
    /// Which breaker.
    pub name: &'static str,
    /// Its state.
    pub state: BreakerState,
    /// Time left of the cool-down, ms (0 while half-open).
    pub retry_after_ms: u64,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    trials_in_flight: u32,
    trial_successes: u32,
}

/// Metric handles a breaker reports to.
#[derive(Debug, Clone)]
pub struct BreakerMetrics {
    /// `embedstream_circuit_breaker_state{breaker}`.
    pub state: IntGaugeVec,
    /// `embedstream_circuit_breaker_transitions_total{breaker,to}`.
    pub transitions: IntCounterVec,
}

/// One circuit breaker. Share it behind an `Arc`.
#[derive(Debug)]
pub struct CircuitBreaker {
    name: &'static str,
    config: BreakerConfig,
    inner: Mutex<Inner>,
    metrics: Option<BreakerMetrics>,
    /// Long calls of this process in flight ([`CircuitBreaker::occupy`]).
    occupied: AtomicUsize,
}

/// A long call of this process occupies the dependency while this lives
/// ([`CircuitBreaker::occupy`]).
#[derive(Debug)]
#[must_use = "the dependency counts as occupied only while this lives"]
pub struct Occupied(Arc<CircuitBreaker>);

impl Drop for Occupied {
    fn drop(&mut self) {
        self.0.occupied.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Permission for one call; report its outcome with [`CircuitBreaker::record`], or give it back
/// with [`CircuitBreaker::release`] when the call says nothing about the dependency.
#[derive(Debug)]
#[must_use = "report the outcome with CircuitBreaker::record"]
pub struct Permit {
    trial: bool,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(name: &'static str, config: BreakerConfig, metrics: Option<BreakerMetrics>) -> Self {
        let breaker = Self {
            name,
            config,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                opened_at: None,
                trials_in_flight: 0,
                trial_successes: 0,
            }),
            metrics,
            occupied: AtomicUsize::new(0),
        };
        breaker.report(BreakerState::Closed, false);
        breaker
    }

    /// The breaker's name (the metric label).
    pub fn name(&self) -> &'static str {
        self.name
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn report(&self, state: BreakerState, transition: bool) {
        if let Some(metrics) = &self.metrics {
            metrics.state.with_label_values(&[self.name]).set(state.gauge_value());
            if transition {
                metrics.transitions.with_label_values(&[self.name, state.as_str()]).inc();
            }
        }
        if transition {
            tracing::warn!(
                breaker = self.name,
                state = state.as_str(),
                "circuit breaker transition"
            );
        }
    }

    fn cool_down(&self) -> Duration {
        Duration::from_millis(self.config.open_ms)
    }

    /// The current state (an open circuit past its cool-down reads as half-open).
    pub fn state(&self) -> BreakerState {
        let inner = self.lock();
        match (inner.state, inner.opened_at) {
            (BreakerState::Open, Some(at)) if at.elapsed() >= self.cool_down() => {
                BreakerState::HalfOpen
            }
            (state, _) => state,
        }
    }

    /// Asks to make one call.
    ///
    /// # Errors
    /// [`BreakerOpen`] when the circuit is open, or half-open with every trial slot taken.
    pub fn acquire(&self) -> Result<Permit, BreakerOpen> {
        let mut inner = self.lock();
        if inner.state == BreakerState::Open {
            let opened_at = inner.opened_at.unwrap_or_else(Instant::now);
            let elapsed = opened_at.elapsed();
            if elapsed < self.cool_down() {
                return Err(BreakerOpen {
                    name: self.name,
                    state: BreakerState::Open,
                    retry_after_ms: (self.cool_down() - elapsed).as_millis() as u64,
                });
            }
            inner.state = BreakerState::HalfOpen;
            inner.trials_in_flight = 0;
            inner.trial_successes = 0;
            drop(inner);
            self.report(BreakerState::HalfOpen, true);
            inner = self.lock();
        }
        match inner.state {
            BreakerState::Closed => Ok(Permit { trial: false }),
            BreakerState::HalfOpen if inner.trials_in_flight < self.config.half_open_max_calls => {
                inner.trials_in_flight += 1;
                Ok(Permit { trial: true })
            }
            state => Err(BreakerOpen { name: self.name, state, retry_after_ms: 0 }),
        }
    }

    /// Gives a permit back without an outcome (the call was not made, or says nothing about
    /// the dependency): frees its trial slot, changes nothing else.
    pub fn release(&self, permit: Permit) {
        if permit.trial {
            let mut inner = self.lock();
            inner.trials_in_flight = inner.trials_in_flight.saturating_sub(1);
        }
    }

    /// Marks the dependency as occupied by a long call of this process until the guard drops:
    /// meanwhile other calls' timeouts are not failures ([`CircuitBreaker::record_timeout`]).
    pub fn occupy(self: &Arc<Self>) -> Occupied {
        self.occupied.fetch_add(1, Ordering::SeqCst);
        Occupied(Arc::clone(self))
    }

    /// Reports a permitted call that ran out of time: a failure, unless a long call of this
    /// process occupies the dependency ([`CircuitBreaker::occupy`]), behind which any call
    /// waits; then the permit is given back without an outcome.
    pub fn record_timeout(&self, permit: Permit) {
        if self.occupied.load(Ordering::SeqCst) > 0 {
            self.release(permit);
        } else {
            self.record(permit, false);
        }
    }

    /// Reports the outcome of a permitted call.
    pub fn record(&self, permit: Permit, success: bool) {
        let mut inner = self.lock();
        if permit.trial {
            inner.trials_in_flight = inner.trials_in_flight.saturating_sub(1);
        }
        let transition = match (inner.state, success) {
            (BreakerState::Closed, true) => {
                inner.consecutive_failures = 0;
                None
            }
            (BreakerState::Closed, false) => {
                inner.consecutive_failures += 1;
                (inner.consecutive_failures >= self.config.failure_threshold)
                    .then_some(BreakerState::Open)
            }
            (BreakerState::HalfOpen, true) if permit.trial => {
                inner.trial_successes += 1;
                (inner.trial_successes >= self.config.success_threshold)
                    .then_some(BreakerState::Closed)
            }
            (BreakerState::HalfOpen, false) => Some(BreakerState::Open),
            // Outcomes of calls let through before the circuit opened change nothing.
            _ => None,
        };
        if let Some(next) = transition {
            inner.state = next;
            inner.consecutive_failures = 0;
            inner.trial_successes = 0;
            inner.trials_in_flight = 0;
            inner.opened_at = (next == BreakerState::Open).then(Instant::now);
            drop(inner);
            self.report(next, true);
        }
    }

    /// Runs `call` under the breaker: refused at once when open, outcome recorded otherwise.
    /// `is_failure` decides which errors count against the dependency (a "not found" does not).
    ///
    /// # Errors
    /// [`Guarded::Open`] when refused, [`Guarded::Inner`] with the call's own error.
    pub fn call_blocking<T, E>(
        &self,
        is_failure: impl Fn(&E) -> bool,
        call: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, Guarded<E>> {
        let permit = self.acquire().map_err(Guarded::Open)?;
        let result = call();
        let failed = result.as_ref().err().is_some_and(&is_failure);
        self.record(permit, !failed);
        result.map_err(Guarded::Inner)
    }
}

/// The error of a call made through a breaker.
#[derive(Debug, thiserror::Error)]
pub enum Guarded<E> {
    /// Refused without trying.
    #[error(transparent)]
    Open(BreakerOpen),
    /// Tried and failed.
    #[error(transparent)]
    Inner(E),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(failures: u32, open_ms: u64) -> CircuitBreaker {
        CircuitBreaker::new(
            "test",
            BreakerConfig {
                failure_threshold: failures,
                open_ms,
                half_open_max_calls: 1,
                success_threshold: 1,
            },
            None,
        )
    }

    fn fail(breaker: &CircuitBreaker) {
        let permit = breaker.acquire().expect("permitted");
        breaker.record(permit, false);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_consecutive_failures_only() {
        let b = breaker(3, 1000);
        fail(&b);
        fail(&b);
        let permit = b.acquire().expect("closed");
        b.record(permit, true); // a success resets the count
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
        let refused = b.acquire().expect_err("open refuses");
        assert_eq!(refused.state, BreakerState::Open);
        assert_eq!(refused.retry_after_ms, 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_after_cool_down_lets_one_trial_through() {
        let b = breaker(1, 1000);
        fail(&b);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(b.acquire().expect_err("still open").retry_after_ms, 1);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let trial = b.acquire().expect("trial");
        let second = b.acquire().expect_err("only one trial at a time");
        assert_eq!(second.state, BreakerState::HalfOpen);
        b.record(trial, true);
        assert_eq!(b.state(), BreakerState::Closed);
        let permit = b.acquire().expect("closed again");
        b.record(permit, true);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_trial_reopens_for_a_full_cool_down() {
        let b = breaker(1, 500);
        fail(&b);
        tokio::time::advance(Duration::from_millis(500)).await;
        let trial = b.acquire().expect("trial");
        b.record(trial, false);
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(b.acquire().is_err());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(b.acquire().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn success_threshold_needs_that_many_trials() {
        let b = CircuitBreaker::new(
            "test",
            BreakerConfig {
                failure_threshold: 1,
                open_ms: 100,
                half_open_max_calls: 2,
                success_threshold: 2,
            },
            None,
        );
        fail(&b);
        tokio::time::advance(Duration::from_millis(100)).await;
        let first = b.acquire().expect("trial 1");
        let second = b.acquire().expect("trial 2");
        assert!(b.acquire().is_err(), "third trial refused");
        b.record(first, true);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.record(second, true);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn call_counts_only_classified_failures() {
        let b = breaker(1, 100);
        let not_found: Result<(), Guarded<&str>> =
            b.call_blocking(|e: &&str| *e != "not found", || Err("not found"));
        assert!(matches!(not_found, Err(Guarded::Inner("not found"))));
        assert_eq!(b.state(), BreakerState::Closed);
        let down: Result<(), Guarded<&str>> =
            b.call_blocking(|e: &&str| *e != "not found", || Err("timeout"));
        assert!(matches!(down, Err(Guarded::Inner("timeout"))));
        let refused: Result<(), Guarded<&str>> = b.call_blocking(|_: &&str| true, || Ok(()));
        assert!(matches!(refused, Err(Guarded::Open(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_trial_frees_its_slot_without_an_outcome() {
        let b = breaker(1, 100);
        fail(&b);
        tokio::time::advance(Duration::from_millis(100)).await;
        let trial = b.acquire().expect("trial");
        b.release(trial);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let again = b.acquire().expect("the slot is free again");
        b.record(again, true);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_behind_a_long_call_of_this_process_do_not_open_the_circuit() {
        let breaker = Arc::new(breaker(3, 1000));
        let occupied = breaker.occupy();
        for _ in 0..10 {
            breaker.record_timeout(breaker.acquire().expect("closed"));
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        // The long call's own failure counts, occupied or not.
        breaker.record(breaker.acquire().expect("closed"), false);
        drop(occupied);
        breaker.record_timeout(breaker.acquire().expect("closed"));
        assert_eq!(breaker.state(), BreakerState::Closed, "two failures of three");
        breaker.record_timeout(breaker.acquire().expect("closed"));
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_half_open_trial_that_times_out_behind_a_long_call_frees_its_slot() {
        let breaker = Arc::new(breaker(1, 1000));
        breaker.record(breaker.acquire().expect("closed"), false);
        tokio::time::advance(Duration::from_millis(1000)).await;
        let occupied = breaker.occupy();
        breaker.record_timeout(breaker.acquire().expect("a trial"));
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(breaker.acquire().is_ok(), "the slot is free again");
        drop(occupied);
    }
}
