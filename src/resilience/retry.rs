//! Retries of idempotent operations: capped exponential backoff with full jitter, bounded in
//! attempts and in total elapsed time.
//!
//! The delay before retry `n` (0-based) is drawn uniformly from
//! `[0, min(cap_ms, base_ms * 2^n)]`: "Full Jitter" of Marc Brooker, "Exponential Backoff and
//! Jitter", AWS Architecture Blog, 2015
//! (<https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/>). It spreads
//! retrying clients over the whole window, so they do not come back in synchronised waves.
//!
//! [backon](https://docs.rs/backon) drives the loop (sleeping, the retryable predicate, the
//! notification). Its own `with_jitter` adds a random `[0, delay)` on top of the exponential
//! delay ("equal jitter"-like, never below the base curve), which is not full jitter, so the
//! delays come from [`FullJitter`], a custom [`backon::Backoff`] iterator.
//!
//! Only idempotent operations may be retried: the README's "Retries" table lists which do
//! and which never do (no retried increments).
//!
//! Time comes from [`tokio::time::Instant`]: a paused test clock moves it; outside a runtime
//! it is the system's monotonic clock.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, BlockingRetryable, Retryable};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Bounds of one retried operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Ceiling of the first retry's delay, ms; doubles with every retry (default 50, >= 1).
    pub base_ms: u64,
    /// Largest ceiling of any delay, ms (default 2000, >= base_ms).
    pub cap_ms: u64,
    /// Attempts in all, the first included (default 5, >= 1; 1 = never retry).
    pub max_attempts: u32,
    /// No retry starts later than this after the first attempt began, ms (default 10000).
    /// The whole call takes at most this plus the duration of its last attempt.
    pub max_elapsed_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self { base_ms: 50, cap_ms: 2000, max_attempts: 5, max_elapsed_ms: 10_000 }
    }
}

impl RetryConfig {
    /// Checks the constraints documented on each field.
    ///
    /// # Errors
    /// The name of the first field out of range and the rule it breaks.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if self.base_ms == 0 {
            return Err(("base_ms", "must be >= 1"));
        }
        if self.cap_ms < self.base_ms {
            return Err(("cap_ms", "must be >= base_ms"));
        }
        if self.max_attempts == 0 {
            return Err(("max_attempts", "must be >= 1"));
        }
        Ok(())
    }

    /// The ceiling of the delay before retry `retry` (0-based): `min(cap, base * 2^retry)`, ms.
    pub fn ceiling_ms(&self, retry: u32) -> u64 {
        let factor = 1u64.checked_shl(retry.min(63)).unwrap_or(u64::MAX);
        self.base_ms.saturating_mul(factor).min(self.cap_ms)
    }
}

/// Builds a [`FullJitter`]; the clock for `max_elapsed_ms` starts at [`BackoffBuilder::build`],
/// which backon calls when the retried call is created, just before the first attempt.
#[derive(Debug, Clone)]
pub struct FullJitterBuilder {
    config: RetryConfig,
    seed: Option<u64>,
}

impl FullJitterBuilder {
    /// Delays from a randomly seeded generator.
    pub fn new(config: &RetryConfig) -> Self {
        Self { config: config.clone(), seed: None }
    }

    /// Delays from a generator seeded with `seed` (reproducible, for tests).
    pub fn seeded(config: &RetryConfig, seed: u64) -> Self {
        Self { config: config.clone(), seed: Some(seed) }
    }
}

impl BackoffBuilder for FullJitterBuilder {
    type Backoff = FullJitter;

    fn build(self) -> FullJitter {
        let seed = self.seed.unwrap_or_else(rand::random);
        FullJitter {
            config: self.config,
            retries: 0,
            started: Instant::now(),
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
        }
    }
}

/// The delays of one retried call: `Some(delay)` before each retry, `None` once the attempts
/// or the time are used up.
#[derive(Debug)]
pub struct FullJitter {
    config: RetryConfig,
    retries: u32,
    started: Instant,
    rng: Xoshiro256PlusPlus,
}

impl Iterator for FullJitter {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.retries.saturating_add(1) >= self.config.max_attempts {
            return None;
        }
        let ceiling_ms = self.config.ceiling_ms(self.retries);
        let delay = Duration::from_millis(self.rng.gen_range(0..=ceiling_ms));
        let deadline = Duration::from_millis(self.config.max_elapsed_ms);
        // A retry that would start after the deadline is not made at all.
        if self.started.elapsed() + delay > deadline {
            return None;
        }
        self.retries += 1;
        Some(delay)
    }
}

/// Runs `operation` until it succeeds, fails with an error `is_retryable` refuses, or the
/// bounds of `config` are used up; sleeps (blocking the thread) between attempts and logs each
/// retry with `op`.
///
/// # Errors
/// The last error of `operation`.
pub fn retry_blocking<T, E: Display>(
    config: &RetryConfig,
    op: &'static str,
    is_retryable: impl FnMut(&E) -> bool,
    operation: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let mut retry = 0u32;
    operation
        .retry(FullJitterBuilder::new(config))
        .when(is_retryable)
        .notify(|error: &E, delay: Duration| {
            retry += 1;
            log_retry(op, retry, delay, error);
        })
        .call()
}

/// The async twin of [`retry_blocking`]: sleeps with `tokio::time::sleep`.
///
/// # Errors
/// The last error of `operation`.
pub async fn retry_async<T, E, Fut, F>(
    config: &RetryConfig,
    op: &'static str,
    is_retryable: impl FnMut(&E) -> bool,
    operation: F,
) -> Result<T, E>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut retry = 0u32;
    operation
        .retry(FullJitterBuilder::new(config))
        .when(is_retryable)
        .notify(|error: &E, delay: Duration| {
            retry += 1;
            log_retry(op, retry, delay, error);
        })
        .await
}

fn log_retry(op: &'static str, retry: u32, delay: Duration, error: &dyn Display) {
    tracing::warn!(
        op,
        retry,
        delay_ms = delay.as_millis() as u64,
        error = %error,
        "retrying after a retryable failure"
    );
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn config(max_attempts: u32, max_elapsed_ms: u64) -> RetryConfig {
        RetryConfig { base_ms: 100, cap_ms: 1000, max_attempts, max_elapsed_ms }
    }

    #[test]
    fn ceiling_doubles_up_to_the_cap_without_overflow() {
        let config = config(5, 10_000);
        let ceilings: Vec<u64> = (0..6).map(|retry| config.ceiling_ms(retry)).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(config.ceiling_ms(200), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn delays_lie_within_zero_and_the_capped_ceiling() {
        let config = config(40, u64::MAX);
        for seed in 0..50 {
            let delays: Vec<Duration> = FullJitterBuilder::seeded(&config, seed).build().collect();
            assert_eq!(delays.len(), 39, "max_attempts 40 = 39 retries");
            for (retry, delay) in delays.iter().enumerate() {
                let ceiling = config.ceiling_ms(retry as u32);
                assert!(delay.as_millis() as u64 <= ceiling, "retry {retry}: {delay:?}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn full_jitter_is_uniform_over_the_whole_window() {
        // At the cap, full jitter is uniform on [0, cap]: mean cap / 2, and both the low and
        // the high tenth are reached (equal jitter would never go below cap / 2).
        let config =
            RetryConfig { base_ms: 1000, cap_ms: 1000, max_attempts: 2, max_elapsed_ms: u64::MAX };
        let samples: Vec<u64> = (0..20_000)
            .filter_map(|seed| FullJitterBuilder::seeded(&config, seed).build().next())
            .map(|delay| delay.as_millis() as u64)
            .collect();
        assert_eq!(samples.len(), 20_000);
        let mean = samples.iter().sum::<u64>() as f64 / samples.len() as f64;
        assert!((475.0..525.0).contains(&mean), "mean {mean}");
        assert!(samples.iter().any(|&ms| ms < 100));
        assert!(samples.iter().any(|&ms| ms > 900));
    }

    #[tokio::test(start_paused = true)]
    async fn same_seed_same_delays() {
        let config = config(10, u64::MAX);
        let first: Vec<Duration> = FullJitterBuilder::seeded(&config, 7).build().collect();
        let second: Vec<Duration> = FullJitterBuilder::seeded(&config, 7).build().collect();
        assert_eq!(first, second);
    }

    #[tokio::test(start_paused = true)]
    async fn async_retry_stops_after_max_attempts() {
        let attempts = Cell::new(0u32);
        let result: Result<(), String> = retry_async(
            &config(4, u64::MAX),
            "test",
            |_| true,
            || {
                attempts.set(attempts.get() + 1);
                async { Err("down".to_owned()) }
            },
        )
        .await;
        assert_eq!(result, Err("down".to_owned()));
        assert_eq!(attempts.get(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn async_retry_stops_at_the_elapsed_bound() {
        // 100 attempts allowed, but no retry may start later than 2 s after the first.
        let started = Instant::now();
        let attempts = Cell::new(0u32);
        let result: Result<(), String> = retry_async(
            &config(100, 2000),
            "test",
            |_| true,
            || {
                attempts.set(attempts.get() + 1);
                async {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Err("down".to_owned())
                }
            },
        )
        .await;
        assert!(result.is_err());
        let elapsed = started.elapsed();
        assert!(elapsed <= Duration::from_millis(2000 + 10), "{elapsed:?}");
        assert!(attempts.get() < 100, "{} attempts", attempts.get());
        assert!(attempts.get() >= 2, "cap 1 s leaves room for at least one retry");
    }

    #[tokio::test(start_paused = true)]
    async fn async_retry_never_retries_a_non_retryable_error() {
        let attempts = Cell::new(0u32);
        let result: Result<(), String> = retry_async(
            &config(5, u64::MAX),
            "test",
            |error: &String| error != "bad input",
            || {
                attempts.set(attempts.get() + 1);
                async { Err("bad input".to_owned()) }
            },
        )
        .await;
        assert!(result.is_err());
        assert_eq!(attempts.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn async_retry_returns_the_first_success() {
        let attempts = Cell::new(0u32);
        let result: Result<u32, String> = retry_async(
            &config(5, u64::MAX),
            "test",
            |_| true,
            || {
                attempts.set(attempts.get() + 1);
                let attempt = attempts.get();
                async move {
                    if attempt < 3 {
                        Err("down".to_owned())
                    } else {
                        Ok(attempt)
                    }
                }
            },
        )
        .await;
        assert_eq!(result, Ok(3));
    }

    #[test]
    fn blocking_retry_is_bounded_in_attempts_and_time() {
        let small = RetryConfig { base_ms: 1, cap_ms: 4, max_attempts: 5, max_elapsed_ms: 1000 };
        let started = std::time::Instant::now();
        let mut attempts = 0;
        let result: Result<(), String> = retry_blocking(
            &small,
            "test",
            |_| true,
            || {
                attempts += 1;
                Err("down".to_owned())
            },
        );
        assert!(result.is_err());
        assert_eq!(attempts, 5);
        // Four delays of at most 1, 2, 4 and 4 ms.
        assert!(started.elapsed() < Duration::from_millis(1000));
    }

    #[test]
    fn validate_names_the_field() {
        let zero_base = RetryConfig { base_ms: 0, ..RetryConfig::default() };
        assert_eq!(zero_base.validate(), Err(("base_ms", "must be >= 1")));
        let low_cap = RetryConfig { base_ms: 10, cap_ms: 5, ..RetryConfig::default() };
        assert_eq!(low_cap.validate().map_err(|(field, _)| field), Err("cap_ms"));
        let never = RetryConfig { max_attempts: 0, ..RetryConfig::default() };
        assert_eq!(never.validate().map_err(|(field, _)| field), Err("max_attempts"));
        assert_eq!(RetryConfig::default().validate(), Ok(()));
    }
}
