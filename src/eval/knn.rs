//! The reference baseline: a streaming item co-occurrence kNN.
//!
//! Every event (u, i) counts one co-occurrence of i with each of the user's `recent_items`
//! most recent distinct items (both directions). A candidate c is scored for user u by
//!
//! ```text
//! score(u, c) = sum over l in recent(u) of  C(c, l) / (sqrt(n_c n_l) + shrinkage)
//!             + popularity_weight ln(1 + n_c) / ln(1 + n_max)
//! ```
//!
//! with C the co-occurrence counts, n the item event counts (cosine normalisation, as in
//! item-based collaborative filtering, Sarwar et al. 2001, "Item-based collaborative filtering
//! recommendation algorithms", over a sliding window of each user's history), a shrinkage term
//! in the denominator that damps similarities resting on very few events (Koren 2008,
//! "Factorization meets the neighborhood", section 2.2, where the shrinkage multiplies by
//! n / (n + lambda); here it is added to the cosine's denominator), and the blend with
//! log-scaled popularity breaking ties and covering users with no co-occurring history. Everything is
//! incremental: learning one event costs O(`recent_items`), scoring one request
//! O(sum of the recent items' neighbour counts).

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

/// Settings of the kNN baseline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KnnConfig {
    /// The user's most recent distinct items that co-occur with a new event and that score
    /// candidates (default 20).
    pub recent_items: usize,
    /// The user's most recent distinct items each new event co-occurs with (default 20).
    pub cooccurrence_items: usize,
    /// Weight of the log-scaled popularity ln(1 + n_c) / ln(1 + n_max), in [0, 1], added to
    /// the similarity sum (default 1, chosen on the validation split).
    pub popularity_weight: f32,
    /// Weight ratio between one recent item and the next more recent one when scoring: the
    /// k-th most recent (k = 0 newest) counts `recency_decay^k` (default 1: all equal).
    pub recency_decay: f32,
    /// Exponent alpha of the asymmetric cosine C(c, l) / (n_c^alpha n_l^(1 - alpha)) (Aiolli
    /// 2013, "Efficient top-n recommendation for very large scale binary rated datasets");
    /// 0.5 is the cosine (default 0.5).
    pub asymmetry: f32,
    /// Added to the similarity's denominator n_c^alpha n_l^(1 - alpha), so that a pair seen
    /// together once among items seen once does not outrank well-supported neighbours
    /// (default 1, chosen on the validation split; 0 is the plain cosine).
    pub shrinkage: f32,
}

impl Default for KnnConfig {
    fn default() -> Self {
        Self {
            recent_items: 20,
            cooccurrence_items: 20,
            popularity_weight: 1.0,
            recency_decay: 1.0,
            asymmetry: 0.5,
            shrinkage: 1.0,
        }
    }
}

/// The kNN state over dense item indices (order of first appearance in the stream).
#[derive(Debug, Default)]
pub struct ItemKnn {
    config: KnnConfig,
    neighbours: Vec<HashMap<u32, u32>>,
    counts: Vec<u32>,
    max_count: u32,
    recent: HashMap<String, VecDeque<u32>>,
    scratch: Vec<f32>,
}

impl ItemKnn {
    /// An empty model.
    pub fn new(config: KnnConfig) -> Self {
        Self { config, ..Self::default() }
    }

    /// Learns that `user` interacted with `item` (a dense index; new indices extend the state).
    pub fn learn(&mut self, user: &str, item: usize) {
        let item = item as u32;
        if self.neighbours.len() <= item as usize {
            self.neighbours.resize_with(item as usize + 1, HashMap::new);
            self.counts.resize(item as usize + 1, 0);
        }
        self.counts[item as usize] += 1;
        self.max_count = self.max_count.max(self.counts[item as usize]);
        let limit = self.config.recent_items.max(self.config.cooccurrence_items);
        let window = self.config.cooccurrence_items;
        let recent = self.recent.entry(user.to_owned()).or_default();
        for other in recent.iter().rev().take(window).copied().filter(|other| *other != item) {
            *self.neighbours[item as usize].entry(other).or_insert(0) += 1;
            *self.neighbours[other as usize].entry(item).or_insert(0) += 1;
        }
        if let Some(position) = recent.iter().position(|known| *known == item) {
            recent.remove(position);
        }
        recent.push_back(item);
        while recent.len() > limit {
            recent.pop_front();
        }
    }

    /// Scores `candidates` (dense indices) for `user` into `scores`, one per candidate.
    pub fn score(&mut self, user: &str, candidates: &[usize], scores: &mut Vec<f32>) {
        self.scratch.clear();
        self.scratch.resize(self.counts.len(), 0.0);
        if let Some(recent) = self.recent.get(user) {
            let mut weight = 1.0f32;
            let alpha = self.config.asymmetry;
            for other in recent.iter().rev().take(self.config.recent_items) {
                let other_norm = (self.counts[*other as usize] as f32).powf(1.0 - alpha);
                for (neighbour, together) in &self.neighbours[*other as usize] {
                    let norm = (self.counts[*neighbour as usize] as f32).powf(alpha) * other_norm
                        + self.config.shrinkage;
                    self.scratch[*neighbour as usize] += weight * *together as f32 / norm;
                }
                weight *= self.config.recency_decay;
            }
        }
        let log_max = (self.max_count.max(1) as f32).ln_1p();
        scores.clear();
        scores.extend(candidates.iter().map(|item| {
            let count = self.counts.get(*item).copied().unwrap_or(0) as f32;
            self.scratch.get(*item).copied().unwrap_or(0.0)
                + self.config.popularity_weight * count.ln_1p() / log_max
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn co_occurring_items_outrank_popular_ones() {
        let mut knn = ItemKnn::new(KnnConfig::default());
        // Item 2 is the most popular; items 0 and 1 always go together, never with 2.
        for user in 0..10 {
            let user = format!("u{user}");
            knn.learn(&user, 0);
            knn.learn(&user, 1);
        }
        for user in 0..20 {
            knn.learn(&format!("p{user}"), 2);
        }
        knn.learn("new", 0);
        let mut scores = Vec::new();
        knn.score("new", &[1, 2], &mut scores);
        assert!(scores[0] > scores[1], "co-occurrence must beat popularity: {scores:?}");
        knn.score("stranger", &[1, 2], &mut scores);
        assert!(scores[1] > scores[0], "no history: popularity decides: {scores:?}");
    }

    #[test]
    fn shrinkage_prefers_well_supported_neighbours() {
        // Item 0 is seen 6 times. Item 1 is seen once, with 0; item 2 co-occurs with 0 in 4 of
        // its 17 events. The plain cosine ranks the one-off pair first (1/sqrt(6) = 0.41 >
        // 4/sqrt(102) = 0.40), shrinkage 1 the supported one (1/3.45 = 0.29 < 4/11.1 = 0.36).
        let config = KnnConfig { popularity_weight: 0.0, ..KnnConfig::default() };
        let mut knn = ItemKnn::new(KnnConfig { shrinkage: 0.0, ..config.clone() });
        let mut shrunk = ItemKnn::new(config);
        for knn in [&mut knn, &mut shrunk] {
            knn.learn("once", 0);
            knn.learn("once", 1);
            for user in 0..4 {
                let user = format!("u{user}");
                knn.learn(&user, 0);
                knn.learn(&user, 2);
            }
            for user in 0..13 {
                knn.learn(&format!("p{user}"), 2);
            }
            knn.learn("new", 0);
        }
        let mut scores = Vec::new();
        knn.score("new", &[1, 2], &mut scores);
        assert!(scores[0] > scores[1], "plain cosine favours the one-off pair: {scores:?}");
        shrunk.score("new", &[1, 2], &mut scores);
        assert!(scores[1] > scores[0], "shrinkage favours the supported pair: {scores:?}");
    }

    #[test]
    fn the_window_forgets_old_items() {
        let mut knn = ItemKnn::new(KnnConfig {
            recent_items: 2,
            cooccurrence_items: 2,
            ..KnnConfig::default()
        });
        for item in [0, 1, 2, 3] {
            knn.learn("u", item);
        }
        assert!(!knn.neighbours[3].contains_key(&0), "item 0 left the window before item 3");
        assert_eq!(knn.neighbours[3].get(&2), Some(&1));
        assert_eq!(knn.neighbours[3].get(&1), Some(&1));
    }
}
