//! Liveness: stall detection and the event-time ages behind `/readyz` and the dashboards.

use std::sync::atomic::Ordering;

use super::Engine;

impl Engine {
    /// Stall detection and the event-time ages behind `/readyz` and the dashboards.
    pub(super) fn report_liveness(&mut self) {
        let stall_after = std::time::Duration::from_millis(self.config.stall_timeout_ms);
        let stalled = self.waiting_since.is_some_and(|since| since.elapsed() >= stall_after);
        if stalled != self.status.stalled.swap(stalled, Ordering::Relaxed) {
            if stalled {
                tracing::warn!(
                    buffered = self.fold.buffered(),
                    "ingest stalled: records wait, nothing applied"
                );
            } else {
                tracing::info!("ingest applies events again");
            }
        }
        self.metrics.stalled.set(i64::from(stalled));
        let wall_s = crate::ingest::wall_ms() as f64 / 1000.0;
        let oldest = self.fold.windows().oldest_open_start();
        let oldest_age = oldest.map_or(0.0, |start| (wall_s - start as f64 / 1000.0).max(0.0));
        self.metrics.window_oldest_open_age.set(oldest_age);
        if let Some(newest) = self.fold.newest_applied_ts() {
            self.metrics.newest_applied_event_age.set(wall_s - newest as f64 / 1000.0);
        }
    }
}
