//! Failure handling shared by every dependency call: circuit breakers and retries.

mod breaker;
mod retry;

pub use breaker::{
    BreakerConfig, BreakerMetrics, BreakerOpen, BreakerState, CircuitBreaker, Guarded, Permit,
};
pub use retry::{retry_async, retry_blocking, FullJitter, FullJitterBuilder, RetryConfig};
