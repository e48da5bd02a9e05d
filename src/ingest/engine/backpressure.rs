//! Backpressure: when the consumer must pause its partitions, and why.

use std::sync::atomic::Ordering;

use super::Engine;
use crate::ingest::PauseReason;
use crate::resilience::BreakerState;

impl Engine {
    /// Backpressure decision after a tick: `Some(reason)` while the consumer must keep its
    /// partitions paused, `None` when it may consume. Hysteresis: a full buffer pauses until
    /// it is below half; the unflushed bound pauses until a flush succeeds.
    pub fn backpressure(&mut self) -> Option<PauseReason> {
        let buffered = self.fold.buffered();
        let unflushed = self.unflushed_events();
        let breaker_open = self.redis_breaker.state() != BreakerState::Closed;
        let limit = self.config.max_buffered_events;
        let next = if buffered >= limit
            || (self.paused == Some(PauseReason::BufferFull) && buffered >= limit / 2)
        {
            Some(PauseReason::BufferFull)
        } else if unflushed >= self.config.max_unflushed_events {
            Some(PauseReason::UnflushedLimit)
        } else if breaker_open && self.config.pause_on_redis_outage {
            Some(PauseReason::RedisOutage)
        } else {
            None
        };
        if next != self.paused {
            match next {
                Some(reason) => {
                    tracing::warn!(
                        reason = reason.as_str(),
                        buffered,
                        unflushed,
                        "pausing consumption"
                    );
                    self.metrics.pauses.with_label_values(&[reason.as_str()]).inc();
                }
                None => tracing::info!(buffered, unflushed, "resuming consumption"),
            }
            self.paused = next;
            self.metrics.paused.set(i64::from(next.is_some()));
            if let Ok(mut paused) = self.status.paused.lock() {
                *paused = next;
            }
        }
        next
    }

    /// The partitions to keep fetching while paused: under a full buffer, the slower half by
    /// watermark, which always includes those holding the watermark back (otherwise no window
    /// closes and the buffer never drains: a deadlock seen when the slowest partition in event
    /// time was paused with records unread; see [`crate::window::Windows::slower_half`]); none
    /// for an outage pause.
    pub fn keep_fetching(&self, now_ms: i64) -> Vec<i32> {
        if self.paused != Some(PauseReason::BufferFull) {
            return Vec::new();
        }
        self.fold.windows().slower_half(now_ms)
    }

    /// Redis is down (breaker not closed, last flush failed, or windows wait for user state):
    /// a pause is then an outage pause, during which partitions must not count as idle.
    pub(super) fn dependency_down(&self) -> bool {
        self.redis_breaker.state() != BreakerState::Closed
            || self.status.flush_failing.load(Ordering::Relaxed)
            || self.fold.blocked_windows() > 0
    }

    pub(super) fn unflushed_events(&self) -> u64 {
        self.fold.model().events_applied().saturating_sub(self.flushed_applied)
    }
}
