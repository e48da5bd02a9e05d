//! Failure handling shared by every dependency call: circuit breakers and retries.

mod breaker;
mod retry;

pub use breaker::{
    BreakerConfig, BreakerMetrics, BreakerOpen, BreakerState, CircuitBreaker, Guarded, Permit,
};
pub use retry::{retry_async, retry_blocking, FullJitter, FullJitterBuilder, RetryConfig};

/// One delay of capped exponential backoff with full jitter (Marc Brooker, "Exponential
/// Backoff and Jitter", AWS Architecture Blog, 2015): uniform in
/// `[0, min(cap_ms, base_ms * 2^(attempt - 1))]`.
pub fn full_jitter(base_ms: u64, cap_ms: u64, attempt: u32) -> std::time::Duration {
    use rand::Rng;
    let config = RetryConfig { base_ms, cap_ms, ..RetryConfig::default() };
    let ceiling = config.ceiling_ms(attempt.saturating_sub(1));
    std::time::Duration::from_millis(rand::thread_rng().gen_range(0..=ceiling))
}
