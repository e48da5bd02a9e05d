use serde::Serialize;

/// Ranking quality over the tested events.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    /// Hits / tested events: the share of events whose target ranked in the top k.
    pub recall_at_10: f64,
    /// Mean percentile rank of the target, in [0, 1]: 0 is the top of the list, 1 the bottom
    /// (lower is better; a random ranking gives 0.5).
    pub mpr: f64,
    /// Mean NDCG@k with one relevant item: 1 / log2(rank + 2) when rank < k, else 0.
    pub ndcg_at_10: f64,
    /// Events whose target ranked in the top k.
    pub hits: u64,
    /// Events tested.
    pub tested: u64,
    /// Moving average of the hit indicator over the last `curve_window` events, one point
    /// per tested event.
    #[serde(skip)]
    pub curve: Vec<f64>,
}

/// Accumulates ranks into [`Metrics`].
#[derive(Debug, Clone)]
pub struct RankAccumulator {
    top_k: usize,
    window: usize,
    hits: u64,
    tested: u64,
    percentile_sum: f64,
    ndcg_sum: f64,
    recent: std::collections::VecDeque<bool>,
    recent_hits: usize,
    curve: Vec<f64>,
}

impl RankAccumulator {
    /// An empty accumulator for cut-off `top_k` and a moving-average window of `window` events.
    pub fn new(top_k: usize, window: usize) -> Self {
        Self {
            top_k,
            window: window.max(1),
            hits: 0,
            tested: 0,
            percentile_sum: 0.0,
            ndcg_sum: 0.0,
            recent: std::collections::VecDeque::new(),
            recent_hits: 0,
            curve: Vec::new(),
        }
    }

    /// Records the 0-based `rank` of a target among `candidates` items.
    pub fn record_rank(&mut self, rank: usize, candidates: usize) {
        let hit = rank < self.top_k;
        self.percentile_sum +=
            if candidates > 1 { rank as f64 / (candidates - 1) as f64 } else { 0.0 };
        if hit {
            self.ndcg_sum += 1.0 / (rank as f64 + 2.0).log2();
        }
        self.push(hit);
    }

    /// Records a target that could not be ranked (at the bottom of `candidates`).
    pub fn record_miss(&mut self, candidates: usize) {
        self.record_rank(
            candidates.saturating_sub(1).max(self.top_k),
            candidates.max(self.top_k + 1),
        );
    }

    fn push(&mut self, hit: bool) {
        self.tested += 1;
        self.hits += u64::from(hit);
        self.recent.push_back(hit);
        self.recent_hits += usize::from(hit);
        if self.recent.len() > self.window && self.recent.pop_front() == Some(true) {
            self.recent_hits -= 1;
        }
        self.curve.push(self.recent_hits as f64 / self.recent.len() as f64);
    }

    /// The final metrics.
    pub fn finish(self) -> Metrics {
        let tested = self.tested.max(1) as f64;
        Metrics {
            recall_at_10: self.hits as f64 / tested,
            mpr: self.percentile_sum / tested,
            ndcg_at_10: self.ndcg_sum / tested,
            hits: self.hits,
            tested: self.tested,
            curve: self.curve,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_from_known_ranks() {
        let mut accumulator = RankAccumulator::new(10, 2);
        accumulator.record_rank(0, 11);
        accumulator.record_rank(10, 11);
        let metrics = accumulator.finish();
        assert_eq!(metrics.hits, 1);
        assert!((metrics.recall_at_10 - 0.5).abs() < 1e-12);
        assert!((metrics.mpr - 0.5).abs() < 1e-12);
        assert!((metrics.ndcg_at_10 - 0.5).abs() < 1e-12);
        assert_eq!(metrics.curve, [1.0, 0.5]);
    }
}
