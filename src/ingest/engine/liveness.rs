//! Liveness: stall detection and the ages behind `/readyz` and the dashboards.

use std::sync::atomic::Ordering;

use super::Engine;

impl Engine {
    /// Stall detection and the ages behind `/readyz` and the dashboards, at processing time
    /// `now_ms` (the monotonic clock of [`Engine::tick`]).
    ///
    /// Ingest is stalled when records wait and nothing was applied for `stall_timeout_ms`, or
    /// when the oldest buffered event has waited that long: windows that do not close while
    /// late events are still applied (a partition holding the watermark back) are a stall too.
    pub(super) fn report_liveness(&mut self, now_ms: i64) {
        let stall_after = std::time::Duration::from_millis(self.config.stall_timeout_ms);
        let oldest_since = self.fold.windows().oldest_open_since();
        let oldest_age_ms = oldest_since.map_or(0, |since| now_ms.saturating_sub(since).max(0));
        let nothing_applied =
            self.waiting_since.is_some_and(|since| since.elapsed() >= stall_after);
        let not_closing = oldest_age_ms as u64 >= self.config.stall_timeout_ms;
        let stalled = nothing_applied || not_closing;
        if stalled != self.status.stalled.swap(stalled, Ordering::Relaxed) {
            if stalled {
                tracing::warn!(
                    buffered = self.fold.buffered(),
                    oldest_waiting_ms = oldest_age_ms,
                    holding_back = ?self.fold.windows().holding_back(now_ms),
                    "ingest stalled: records wait and windows do not close"
                );
            } else {
                tracing::info!("ingest applies events again");
            }
        }
        self.metrics.stalled.set(i64::from(stalled));
        self.metrics.window_oldest_open_age.set(oldest_age_ms as f64 / 1000.0);
        if let Some(newest) = self.fold.newest_applied_ts() {
            let wall_s = crate::ingest::wall_ms() as f64 / 1000.0;
            self.metrics.newest_applied_event_age.set(wall_s - newest as f64 / 1000.0);
        }
    }
}
