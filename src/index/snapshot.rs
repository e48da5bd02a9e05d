use super::exact::{Excluded, TopK};
use super::IndexConfig;
use crate::model::{dot_rows, ItemRow, Model};

/// Item vectors and biases copied out of the model.
pub(super) struct ItemsCopy {
    dim: usize,
    vectors: Vec<f32>,
    biases: Vec<f32>,
}

impl ItemsCopy {
    pub(super) fn of(model: &Model) -> Self {
        let count = model.item_count();
        Self {
            dim: model.dim(),
            vectors: model.item_matrix().to_vec(),
            biases: (0..count as u32).map(|row| model.item_bias(ItemRow(row))).collect(),
        }
    }
}

/// Search contexts the graph holds (USearch's thread slots), at least: each concurrent search
/// takes one, and a search that finds none fails ([`Snapshot::search`] returns `None`, and the
/// query falls back to the exact scan). Rankings run on the HTTP runtime's worker threads (one
/// per core), so the graph holds the larger of this and twice the cores. A context is a
/// visited-set of one bit an item plus two candidate queues, about 13 KB at 100,000 items.
const SEARCH_CONTEXTS: usize = 64;

/// The search contexts a graph holds beside its build threads: [`SEARCH_CONTEXTS`] or twice
/// the cores, whichever is larger.
fn search_contexts() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
    SEARCH_CONTEXTS.max(2 * cores)
}

/// An immutable HNSW graph (Unum's USearch) over augmented item vectors, and the head of
/// largest-norm items every query scores exactly instead.
pub(super) struct Snapshot {
    /// `None` when every indexable item is in the head.
    graph: Option<usearch::Index>,
    dim: usize,
    len: usize,
    /// Radius M of the sphere every augmented item of the graph lies on.
    radius: f32,
    /// The `index.exact_head` indexable rows of largest |[q, b]|, ascending: left out of the
    /// graph (see [`Snapshot::build`]).
    head: Vec<u32>,
    /// The head's vectors as copied, row-major in `head`'s order, and its biases: scored by one
    /// blocked kernel instead of row by row across the whole item matrix (scattered rows cost
    /// a cache miss each: 512 of them took about 30 µs a query, BENCHMARKS.md "Ranking").
    head_vectors: Vec<f32>,
    head_biases: Vec<f32>,
    /// The largest ||q|| and the largest b of the graph's items (as copied): no graph item
    /// scores above ||p|| x `rest_norm` + `rest_bias` for a user vector p
    /// ([`Snapshot::graph_below`]). Negative infinity without a graph.
    rest_norm: f32,
    rest_bias: f32,
    unindexed: Vec<u32>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("len", &self.len)
            .field("radius", &self.radius)
            .field("head", &self.head.len())
            .field("unindexed", &self.unindexed.len())
            .finish()
    }
}

impl Snapshot {
    /// Builds the graph on the calling rayon pool's threads; `None` when no item can be
    /// indexed or USearch refuses (it then logs why, and queries scan exactly).
    ///
    /// The `index.exact_head` items of largest |[q, b]| stay out of the graph, and M is the
    /// largest norm of the rest. The augmentation [q, b, sqrt(M^2 - |q|^2 - b^2)] gives every
    /// item whose norm is far below M a last coordinate close to M: when a few items' norms
    /// dwarf the rest (a popular head, as learned embeddings of real streams have), nearly
    /// every item sits near the same pole and greedy search misses the large-norm items that
    /// hold most top-10 lists (an attack run: 68 of 5,055 users with none of their exact top
    /// 10; zipf-like norms, 0.40 mean recall@10). Those are few, so scoring them exactly costs
    /// 10 to 40 µs a query at 512. Norm ranges as in norm-ranging LSH (Yan et al. 2018) were
    /// measured too: slower and less accurate than the head.
    pub(super) fn build(copy: ItemsCopy, config: &IndexConfig) -> Option<Self> {
        let dim = copy.dim;
        let len = copy.biases.len();
        let mut indexable = Vec::with_capacity(len);
        let mut unindexed = Vec::new();
        for row in 0..len {
            let vector = &copy.vectors[row * dim..(row + 1) * dim];
            let bias = copy.biases[row];
            let norm_squared: f32 = vector.iter().map(|x| x * x).sum::<f32>() + bias * bias;
            let finite = vector.iter().all(|x| x.is_finite()) && bias.is_finite();
            let non_zero = vector.iter().any(|x| *x != 0.0);
            if finite && non_zero && norm_squared.is_finite() {
                indexable.push((row, norm_squared));
            } else {
                unindexed.push(row as u32);
            }
        }
        if indexable.is_empty() {
            return None;
        }
        let head_len = config.exact_head.min(indexable.len());
        if head_len > 0 && head_len < indexable.len() {
            indexable.select_nth_unstable_by(head_len - 1, |a, b| b.1.total_cmp(&a.1));
        }
        let mut head: Vec<u32> = indexable[..head_len].iter().map(|(row, _)| *row as u32).collect();
        head.sort_unstable();
        let mut head_vectors = Vec::with_capacity(head.len() * dim);
        for row in &head {
            let row = *row as usize;
            head_vectors.extend_from_slice(&copy.vectors[row * dim..(row + 1) * dim]);
        }
        let head_biases = head.iter().map(|row| copy.biases[*row as usize]).collect();
        let rest = &indexable[head_len..];
        let (mut rest_norm, mut rest_bias) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
        for (row, _) in rest {
            let vector = &copy.vectors[row * dim..(row + 1) * dim];
            rest_norm = rest_norm.max(vector.iter().map(|x| x * x).sum::<f32>().sqrt());
            rest_bias = rest_bias.max(copy.biases[*row]);
        }
        let snapshot = |graph, radius| Self {
            graph,
            dim,
            len,
            radius,
            head,
            head_vectors,
            head_biases,
            rest_norm,
            rest_bias,
            unindexed,
        };
        if rest.is_empty() {
            return Some(snapshot(None, 0.0));
        }
        let max_norm_squared =
            rest.iter().map(|(_, norm_squared)| *norm_squared).fold(0.0, f32::max);
        match Self::graph(&copy, rest, max_norm_squared, config) {
            Ok(graph) => Some(snapshot(Some(graph), max_norm_squared.sqrt())),
            Err(error) => {
                tracing::error!(%error, items = rest.len(), "index build failed");
                None
            }
        }
    }

    /// The graph of the indexable rows, each as [q, b, sqrt(M^2 - |q|^2 - b^2)], keyed by row.
    fn graph(
        copy: &ItemsCopy,
        indexable: &[(usize, f32)],
        max_norm_squared: f32,
        config: &IndexConfig,
    ) -> Result<usearch::Index, String> {
        use rayon::prelude::*;
        let dim = copy.dim;
        let graph = usearch::Index::new(&usearch::IndexOptions {
            dimensions: dim + 2,
            metric: usearch::MetricKind::L2sq,
            quantization: usearch::ScalarKind::F32,
            connectivity: config.max_connections.clamp(2, 255),
            expansion_add: config.ef_construction.max(config.max_connections),
            expansion_search: config.ef_search.max(1),
            multi: false,
        })
        .map_err(|error| error.to_string())?;
        let threads = rayon::current_num_threads().max(search_contexts());
        graph
            .reserve_capacity_and_threads(indexable.len(), threads)
            .map_err(|error| error.to_string())?;
        indexable.par_iter().try_for_each_init(
            || Vec::with_capacity(dim + 2),
            |point, (row, norm_squared)| {
                point.clear();
                point.extend_from_slice(&copy.vectors[row * dim..(row + 1) * dim]);
                point.push(copy.biases[*row]);
                point.push((max_norm_squared - norm_squared).max(0.0).sqrt());
                graph.add(*row as u64, point.as_slice()).map_err(|error| error.to_string())
            },
        )?;
        Ok(graph)
    }

    /// Items covered (indexed or listed as unindexed).
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Rows every query scores exactly instead of searching for them (ascending).
    #[cfg(test)]
    pub(super) fn head(&self) -> &[u32] {
        &self.head
    }

    /// Offers `top` every head row for which `keep` holds, scored against `query` from the
    /// snapshot's copy of its vector; returns how many were offered. The copy is current for
    /// rows not changed since it was taken (the caller leaves the fresh tier out); the caller
    /// re-scores what it keeps against the model ([`TopK::into_current_items`]), for changes
    /// not yet noted.
    pub(super) fn score_head(
        &self,
        query: &[f32],
        keep: impl Fn(u32) -> bool,
        excluded: &Excluded,
        top: &mut TopK,
    ) -> usize {
        if query.len() != self.dim || self.dim == 0 {
            return 0;
        }
        const BLOCK: usize = 256;
        let mut scores = [0.0f32; BLOCK];
        let mut offered = 0;
        for (block, rows) in self.head.chunks(BLOCK).enumerate() {
            let start = block * BLOCK;
            let scores = &mut scores[..rows.len()];
            let vectors = &self.head_vectors[start * self.dim..(start + rows.len()) * self.dim];
            dot_rows(query, vectors, scores);
            let biases = &self.head_biases[start..start + rows.len()];
            for ((row, score), bias) in rows.iter().zip(scores.iter()).zip(biases) {
                if keep(*row) {
                    top.offer(score + bias, *row, excluded);
                    offered += 1;
                }
            }
        }
        offered
    }

    /// Whether no graph item (as copied) can score `floor` or more for user vector `user`:
    /// by Cauchy-Schwarz p.q + b <= ||p|| ||q|| + b, bounded by the graph's largest norm and
    /// largest bias (the test of LEMP's length-based pruning, Teflioudi et al. 2015, on the
    /// whole graph at once), with a relative slack for rounding. When it holds, the graph
    /// search cannot change a top k whose k-th best is `floor`.
    pub(super) fn graph_below(&self, user: &[f32], floor: f32) -> bool {
        if self.graph.is_none() {
            return true;
        }
        let user_norm = user.iter().map(|x| x * x).sum::<f32>().sqrt();
        let length = user_norm * self.rest_norm;
        let bound = length + self.rest_bias;
        let slack =
            crate::model::quantized::rounding_slack(self.dim) * (length + self.rest_bias.abs());
        (bound + slack).is_finite() && floor.is_finite() && bound + slack < floor
    }

    /// Rows that could not be indexed.
    pub(super) fn unindexed(&self) -> &[u32] {
        &self.unindexed
    }

    /// Bytes the graph holds (vectors and links, as USearch counts them) and the head's rows,
    /// vectors and biases.
    pub(super) fn memory_bytes(&self) -> usize {
        self.graph.as_ref().map_or(0, usearch::Index::memory_usage)
            + std::mem::size_of_val(self.head.as_slice())
            + std::mem::size_of_val(self.head_vectors.as_slice())
            + std::mem::size_of_val(self.head_biases.as_slice())
    }

    /// Rows of the `wanted` nearest augmented points to user vector `user` for which `keep`
    /// holds, the filter applied inside the graph search (candidates it rejects are walked
    /// through, never returned). `None` when the search failed (every search context busy):
    /// the caller scans exactly.
    pub(super) fn search(
        &self,
        user: &[f32],
        wanted: usize,
        keep: impl Fn(u32) -> bool,
    ) -> Option<Vec<u32>> {
        let Some(graph) = &self.graph else { return Some(Vec::new()) };
        if user.iter().any(|x| !x.is_finite()) || wanted == 0 {
            return Some(Vec::new());
        }
        let mut query = user.to_vec();
        query.push(1.0);
        query.push(0.0);
        if query.len() != self.dim + 2 {
            return Some(Vec::new());
        }
        // Scaling the query onto the items' sphere keeps the distance order (|y' - x|^2 =
        // 2 M^2 - 2 (M / |y|) y.x) and puts it where the graph was built, which greedy search
        // needs: a far-away query sees nearly equal distances everywhere.
        let norm = query.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 && self.radius > 0.0 {
            let scale = self.radius / norm;
            query.iter_mut().for_each(|x| *x *= scale);
        }
        match graph.filtered_search(&query, wanted, |key| keep(key as u32)) {
            Ok(matches) => Some(matches.keys.into_iter().map(|key| key as u32).collect()),
            Err(error) => {
                tracing::warn!(%error, "graph search failed, scanning exactly");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::{ItemsCopy, Snapshot};
    use crate::index::IndexConfig;

    fn snapshot(items: usize, dim: usize) -> Snapshot {
        with_head(items, dim, IndexConfig::default().exact_head)
    }

    fn with_head(items: usize, dim: usize, exact_head: usize) -> Snapshot {
        let value = |n: usize| ((n * 7919 % 1000) as f32 / 500.0) - 1.0;
        let mut vectors: Vec<f32> = (0..items * dim).map(|n| value(n + 1)).collect();
        // Row 3 is zero and row 5 not finite: neither may enter the graph.
        vectors[3 * dim..4 * dim].fill(0.0);
        vectors[5 * dim] = f32::NAN;
        let copy =
            ItemsCopy { dim, vectors, biases: (0..items).map(|n| value(n) / 10.0).collect() };
        Snapshot::build(copy, &IndexConfig { exact_head, ..IndexConfig::default() })
            .expect("a snapshot")
    }

    /// The head holds the rows of largest |[q, b]| and the graph only the rest: a search never
    /// returns a head row, and the graph's sphere is the rest's largest norm.
    #[test]
    fn the_largest_norm_rows_are_the_head_and_stay_out_of_the_graph() {
        let dim = 8;
        let value = |n: usize| ((n * 7919 % 1000) as f32 / 500.0) - 1.0;
        let mut vectors: Vec<f32> = (0..1_000 * dim).map(|n| value(n + 1) / 10.0).collect();
        // Rows 10, 20, ..., 100 are ten times longer than the rest.
        for row in (10..=100).step_by(10) {
            vectors[row * dim..(row + 1) * dim].iter_mut().for_each(|x| *x *= 10.0);
        }
        let biases = vec![0.0; 1_000];
        let norm =
            |row: usize| vectors[row * dim..(row + 1) * dim].iter().map(|x| x * x).sum::<f32>();
        let largest_rest = (0..1_000).filter(|row| row % 10 != 0 || *row > 100 || *row == 0);
        let radius = largest_rest.map(norm).fold(0.0, f32::max).sqrt();
        let copy = ItemsCopy { dim, vectors: vectors.clone(), biases };
        let snapshot =
            Snapshot::build(copy, &IndexConfig { exact_head: 10, ..IndexConfig::default() })
                .expect("a snapshot");
        assert_eq!(snapshot.head(), &[10, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
        assert!((snapshot.radius - radius).abs() < 1e-6, "{} against {radius}", snapshot.radius);
        let query = &vectors[10 * dim..11 * dim];
        let hits = snapshot.search(query, 200, |_| true).expect("a search");
        assert_eq!(hits.len(), 200);
        assert!(hits.iter().all(|row| !snapshot.head().contains(row)), "{hits:?}");
    }

    /// The graph's bound is |p| max|q| + max b over the graph's rows alone (biases of either
    /// sign), with a slack for rounding: a floor just above it rules the graph out, the bound
    /// itself does not.
    #[test]
    fn the_graph_bound_is_the_largest_norm_and_bias_of_the_graph_rows() {
        let dim = 4;
        let value = |n: usize| ((n * 7919 % 1000) as f32 / 500.0) - 1.0;
        let vectors: Vec<f32> = (0..300 * dim).map(|n| value(n + 3)).collect();
        let spread: Vec<f32> = (0..300).map(|n| value(n) / 2.0).collect();
        for biases in [spread, vec![-0.75; 300]] {
            let copy = ItemsCopy { dim, vectors: vectors.clone(), biases: biases.clone() };
            let config = IndexConfig { exact_head: 20, ..IndexConfig::default() };
            let snapshot = Snapshot::build(copy, &config).expect("a snapshot");
            let (mut norm, mut bias) = (0f32, f32::NEG_INFINITY);
            for row in (0..300).filter(|row| !snapshot.head().contains(&(*row as u32))) {
                let squares = vectors[row * dim..(row + 1) * dim].iter().map(|x| x * x);
                norm = norm.max(squares.sum::<f32>().sqrt());
                bias = bias.max(biases[row]);
            }
            // |user| = 2.5
            let user = [1.5, 0.0, -2.0, 0.0];
            let bound = 2.5 * norm + bias;
            assert!(!snapshot.graph_below(&user, bound), "bias {bias}");
            assert!(snapshot.graph_below(&user, bound + 1e-3), "bias {bias}");
            assert!(!snapshot.graph_below(&user, f32::NAN));
        }
    }

    /// A catalogue no larger than the head needs no graph: every indexable row is scored
    /// exactly, and a search answers with no candidates.
    #[test]
    fn a_catalogue_within_the_head_has_no_graph() {
        let snapshot = with_head(300, 8, 512);
        assert_eq!(snapshot.len(), 300);
        assert_eq!(snapshot.unindexed(), &[3, 5]);
        assert_eq!(snapshot.head().len(), 298);
        assert!(!snapshot.head().contains(&3) && !snapshot.head().contains(&5));
        assert_eq!(snapshot.search(&[0.1; 8], 10, |_| true), Some(Vec::new()));
    }

    #[test]
    fn the_filter_applies_inside_the_search_and_bad_vectors_stay_out() {
        let snapshot = snapshot(2_000, 8);
        assert_eq!(snapshot.len(), 2_000);
        assert_eq!(snapshot.unindexed(), &[3, 5]);
        let query = [0.3, -0.2, 0.5, 0.1, 0.0, -0.4, 0.2, 0.6];
        let all = snapshot.search(&query, 40, |_| true).expect("a search");
        assert_eq!(all.len(), 40);
        assert!(!all.contains(&3) && !all.contains(&5));
        let excluded: Vec<u32> = all[..20].to_vec();
        let kept = snapshot.search(&query, 40, |row| !excluded.contains(&row)).expect("a search");
        assert_eq!(kept.len(), 40, "the filter must not shrink the answer");
        assert!(kept.iter().all(|row| !excluded.contains(row)));
        assert_eq!(snapshot.search(&[f32::INFINITY; 8], 10, |_| true), Some(Vec::new()));
        assert_eq!(snapshot.search(&query[..4], 10, |_| true), Some(Vec::new()));
        assert!(snapshot.memory_bytes() > 0);
    }

    /// More concurrent searches than the graph has contexts (each held open by a slow filter):
    /// each answers, or fails cleanly (`None`, the caller scans exactly); none returns a wrong
    /// row.
    #[test]
    fn more_concurrent_searches_than_contexts_answer_or_fail_cleanly() {
        let snapshot = snapshot(2_000, 8);
        let query = [0.3, -0.2, 0.5, 0.1, 0.0, -0.4, 0.2, 0.6];
        let expected = snapshot.search(&query, 10, |_| true).expect("a search");
        let slow = |_| {
            std::thread::sleep(std::time::Duration::from_micros(100));
            true
        };
        let (answered, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
        std::thread::scope(|scope| {
            for _ in 0..super::search_contexts() + 136 {
                scope.spawn(|| {
                    for _ in 0..3 {
                        match snapshot.search(&query, 10, slow) {
                            Some(hits) => {
                                assert_eq!(hits, expected);
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            None => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        });
        let (answered, failed) = (answered.into_inner(), failed.into_inner());
        assert_eq!(answered + failed, 3 * (super::search_contexts() + 136));
        assert!(answered > 0 && failed > 0, "{answered} answered, {failed} failed");
    }
}
