//! Failure handling shared by every dependency call: circuit breakers and retries.

mod breaker;

pub use breaker::{
    BreakerConfig, BreakerMetrics, BreakerOpen, BreakerState, CircuitBreaker, Guarded, Permit,
};
