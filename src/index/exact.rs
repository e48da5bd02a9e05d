//! Exact scoring: a streaming top k over the row-major item matrix, with no allocation per
//! item and no hashing. Candidates enter a bounded heap only when they beat its worst entry,
//! so the exclusion list is looked at for a handful of rows, not for every item.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::ops::ControlFlow;

use serde::Serialize;

use crate::model::quantized::{rounding_slack, QuantizedQuery};
use crate::model::vector::dot_i8_rows;
use crate::model::{dot, dot_rows, ItemRow, Model};

/// One ranked item.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoredItem {
    /// Item id.
    pub item_id: String,
    /// The score (model: p.q + b; popularity: ln of the decayed count plus a constant; similar
    /// items: cosine similarity).
    pub score: f32,
    #[serde(skip)]
    pub(crate) row: u32,
}

/// Item rows a ranking must not return (a user's seen items): sorted and deduplicated, looked
/// up by bisection. A user's list is bounded (`model.seen_items_per_user`, 500 by default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Excluded {
    rows: Vec<u32>,
}

impl Excluded {
    /// Nothing excluded.
    pub fn none() -> Self {
        Self::default()
    }

    /// Excludes `rows` (any order, repeats allowed).
    pub fn from_rows(rows: impl IntoIterator<Item = u32>) -> Self {
        let mut rows: Vec<u32> = rows.into_iter().collect();
        rows.sort_unstable();
        rows.dedup();
        Self { rows }
    }

    /// Whether `row` is excluded.
    #[inline]
    pub fn contains(&self, row: u32) -> bool {
        !self.rows.is_empty() && self.rows.binary_search(&row).is_ok()
    }

    /// Rows excluded.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether nothing is excluded.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// A heap entry ordered so that the heap's top is the worst kept candidate: the lowest
/// score, and among equal scores the higher row (ties go to the lower row, as before).
#[derive(Debug, Clone, Copy)]
struct Entry {
    score: f32,
    row: u32,
}

impl Entry {
    fn beats(&self, other: &Entry) -> bool {
        self.score > other.score || (self.score == other.score && self.row < other.row)
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        // Greater = worse: lower score, then higher row. Scores are finite here.
        other.score.total_cmp(&self.score).then(self.row.cmp(&other.row))
    }
}

/// The best `k` (score, row) pairs offered so far; non-finite scores are dropped.
#[derive(Debug)]
pub(crate) struct TopK {
    k: usize,
    heap: BinaryHeap<Entry>,
}

impl TopK {
    pub(crate) fn new(k: usize) -> Self {
        Self { k, heap: BinaryHeap::with_capacity(k + 1) }
    }

    /// Whether a candidate would be kept now (checked before the costlier exclusion test).
    #[inline]
    fn admits(&self, score: f32, row: u32) -> bool {
        if self.k == 0 || !score.is_finite() {
            return false;
        }
        self.heap.len() < self.k
            || self.heap.peek().is_some_and(|worst| Entry { score, row }.beats(worst))
    }

    /// The score a candidate must reach to be kept once `k` are held (the worst kept);
    /// negative infinity before.
    #[inline]
    pub(crate) fn floor(&self) -> f32 {
        match self.heap.peek() {
            Some(worst) if self.heap.len() == self.k => worst.score,
            _ => f32::NEG_INFINITY,
        }
    }

    /// Offers a candidate not in `excluded`.
    #[inline]
    pub(crate) fn offer(&mut self, score: f32, row: u32, excluded: &Excluded) {
        if !self.admits(score, row) || excluded.contains(row) {
            return;
        }
        if self.heap.len() == self.k {
            self.heap.pop();
        }
        self.heap.push(Entry { score, row });
    }

    /// Rows, best first, ties by lower row.
    pub(crate) fn into_rows(self) -> Vec<u32> {
        self.heap.into_sorted_vec().into_iter().map(|entry| entry.row).collect()
    }

    /// The k-th best of the held rows' current scores (recomputed from the model, as
    /// [`TopK::into_current_items`] will): a floor the true top k reaches, since these k rows
    /// are candidates. Negative infinity while fewer than k are held or a score is not finite.
    pub(crate) fn current_floor(&self, model: &Model, query: &[f32]) -> f32 {
        if self.k == 0 || self.heap.len() < self.k {
            return f32::NEG_INFINITY;
        }
        self.heap.iter().fold(f32::INFINITY, |lowest, entry| {
            let item = ItemRow(entry.row);
            let score = if (entry.row as usize) < model.item_count() {
                dot(query, model.item_vector(item)) + model.item_bias(item)
            } else {
                f32::NAN
            };
            if score.is_finite() {
                lowest.min(score)
            } else {
                f32::NEG_INFINITY
            }
        })
    }

    /// Best first (ties by lower row), each score recomputed from the model's current
    /// vectors and the list re-sorted: for candidates scored from a copy that may have moved
    /// since it was taken ([`super::snapshot::Snapshot::score_head`]), so a stale copy costs
    /// recall, never a wrong score. Rows whose current score is not finite are dropped.
    pub(crate) fn into_current_items(self, model: &Model, query: &[f32]) -> Vec<ScoredItem> {
        let mut entries: Vec<Entry> = self
            .heap
            .into_vec()
            .into_iter()
            .filter(|entry| (entry.row as usize) < model.item_count())
            .map(|entry| {
                let item = ItemRow(entry.row);
                let score = dot(query, model.item_vector(item)) + model.item_bias(item);
                Entry { score, row: entry.row }
            })
            .filter(|entry| entry.score.is_finite())
            .collect();
        entries.sort_unstable();
        entries
            .into_iter()
            .map(|entry| ScoredItem {
                item_id: model.item_id(ItemRow(entry.row)).to_owned(),
                score: entry.score,
                row: entry.row,
            })
            .collect()
    }

    /// Best first, ties by lower row.
    pub(crate) fn into_items(self, model: &Model) -> Vec<ScoredItem> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|entry| ScoredItem {
                item_id: model.item_id(ItemRow(entry.row)).to_owned(),
                score: entry.score,
                row: entry.row,
            })
            .collect()
    }
}

/// Scores the item rows in `rows` (a range of the matrix) against `query` into `top`.
pub(crate) fn scan_rows(
    model: &Model,
    query: &[f32],
    rows: std::ops::Range<usize>,
    excluded: &Excluded,
    top: &mut TopK,
) {
    let dim = model.dim();
    let end = rows.end.min(model.item_count());
    let start = rows.start.min(end);
    if query.len() != dim || dim == 0 {
        return;
    }
    // Blocks of rows scored in one kernel call (a few KiB of scores on the stack), then offered.
    const BLOCK: usize = 256;
    let mut scores = [0.0f32; BLOCK];
    let mut block_start = start;
    while block_start < end {
        let block_end = (block_start + BLOCK).min(end);
        let scores = &mut scores[..block_end - block_start];
        dot_rows(query, &model.item_matrix()[block_start * dim..block_end * dim], scores);
        let biases = &model.item_biases()[block_start..block_end];
        for (offset, (score, bias)) in scores.iter().zip(biases).enumerate() {
            top.offer(score + bias, (block_start + offset) as u32, excluded);
        }
        block_start = block_end;
    }
}

/// Scores one row against `query` into `top` (rows out of range are skipped).
#[inline]
pub(crate) fn score_row(
    model: &Model,
    query: &[f32],
    row: u32,
    excluded: &Excluded,
    top: &mut TopK,
) {
    if (row as usize) < model.item_count() {
        let item = ItemRow(row);
        top.offer(dot(query, model.item_vector(item)) + model.item_bias(item), row, excluded);
    }
}

/// Exact top k over every item: the ground truth of recall tests, the ranking below
/// `index.full_scan_threshold` items, and the fallback when no snapshot exists.
pub fn exact_top_k(model: &Model, user: &[f32], k: usize, excluded: &Excluded) -> Vec<ScoredItem> {
    let mut top = TopK::new(k);
    scan_rows(model, user, 0..model.item_count(), excluded, &mut top);
    top.into_items(model)
}

/// The same answer as [`exact_top_k`] from a scan of the item matrix's 8-bit copy (a quarter
/// of the bytes: the float scan of a large catalogue waits on memory) with exact float
/// re-scoring of the rows that may belong in the top k. Each row's integer estimate comes with
/// a bound on its distance from the float score (`model/quantized.rs`); the scan keeps the k
/// best lower bounds and re-scores the rows whose upper bound reaches the k-th of them (rows
/// with a value that is not finite have an infinite bound and are always re-scored). The rows
/// changed since the last query are re-quantised first. Returns the items and the number of
/// rows re-scored in float. With more than a 64th of the rows changed since the copy was
/// brought up to date (bulk ingest between two index ticks), it scans the floats instead.
/// Before the codes, a pass over the rows' norms and biases alone ([`norm_pruned`]) answers
/// when a Cauchy-Schwarz bound rules out all but a few rows.
pub fn bounded_top_k(
    model: &Model,
    query: &[f32],
    k: usize,
    excluded: &Excluded,
) -> (Vec<ScoredItem>, usize) {
    let dim = model.dim();
    let float_scan = || (exact_top_k(model, query, k, excluded), model.item_count());
    if query.len() != dim || dim == 0 || k == 0 {
        return float_scan();
    }
    let Some(quantized_query) = QuantizedQuery::new(query) else { return float_scan() };
    // Re-quantising a changed row costs about 50 times scanning one (it is read from memory
    // at random): past a 64th of the catalogue, the float scan is cheaper.
    let Some(quantized) = model.quantized_items(model.item_count() / 64) else {
        return float_scan();
    };
    let rows = model.item_count().min(quantized.scales.len());
    let biases = model.item_biases();
    let (t, td, eq, qn) = (
        quantized_query.scale,
        quantized_query.norm_of_codes,
        quantized_query.error,
        quantized_query.norm,
    );
    let slack = rounding_slack(dim);
    if let Some((mut top, rescored)) =
        norm_pruned(model, query, k, excluded, qn, &quantized.norms[..rows])
    {
        scan_rows(model, query, rows..model.item_count(), excluded, &mut top);
        return (top.into_items(model), rescored + (model.item_count() - rows));
    }
    let mut lower = TopK::new(k);
    let mut floor = f32::NEG_INFINITY;
    let mut candidates: Vec<(f32, u32)> = Vec::new();
    const BLOCK: usize = 256;
    let (mut integers, mut estimates, mut widths) = ([0i32; BLOCK], [0f32; BLOCK], [0f32; BLOCK]);
    let mut block_start = 0;
    while block_start < rows {
        let block_end = (block_start + BLOCK).min(rows);
        let block = block_start..block_end;
        let integers = &mut integers[..block.len()];
        dot_i8_rows(
            &quantized_query.codes,
            &quantized.codes[block.start * dim..block.end * dim],
            integers,
        );
        // Bounds for the whole block first (a loop the compiler vectorises), then the rare
        // row that may reach the top k.
        for ((((estimate, width), integer), (scale, error)), (norm, bias)) in estimates
            .iter_mut()
            .zip(widths.iter_mut())
            .zip(integers.iter())
            .zip(quantized.scales[block.clone()].iter().zip(&quantized.errors[block.clone()]))
            .zip(quantized.norms[block.clone()].iter().zip(&biases[block.clone()]))
        {
            *estimate = t * scale * *integer as f32 + bias;
            *width = td * error + eq * norm + slack * (qn * norm + bias.abs());
        }
        for (offset, (estimate, width)) in
            estimates.iter().zip(&widths).take(block.len()).enumerate()
        {
            // A NaN upper bound (an infinite width times a zero) is kept.
            let upper = estimate + width;
            if upper >= floor || upper.is_nan() {
                let row = (block.start + offset) as u32;
                lower.offer(estimate - width, row, excluded);
                floor = lower.floor();
                candidates.push((upper, row));
            }
        }
        block_start = block_end;
    }
    let mut top = TopK::new(k);
    let mut rescored = 0;
    for (upper, row) in candidates {
        if upper >= floor || upper.is_nan() {
            rescored += 1;
            score_row(model, query, row, excluded, &mut top);
        }
    }
    // Rows added to the model but not yet to its copy (none while the copy is kept in step).
    scan_rows(model, query, rows..model.item_count(), excluded, &mut top);
    (top.into_items(model), rescored + (model.item_count() - rows))
}

/// Rows reaching the floor, as a share of the catalogue (one in `NORM_PRUNED_SHARE`), past
/// which [`norm_pruned`] gives way to the 8-bit scan: a row scored in float is read from memory
/// at random, several times the cost of scanning its codes.
const NORM_PRUNED_SHARE: usize = 64;

/// Rows below which [`norm_pruned`] is not tried: the 8-bit scan of a small catalogue takes
/// tens of microseconds, and the norm pass saves nothing measurable there
/// (BENCHMARKS.md, "Norm-bounded pruning").
const NORM_PRUNED_MIN_ROWS: usize = 8192;

/// The top k of the rows `0..norms.len()` by the length-based pruning of LEMP (Teflioudi,
/// Gemulla and Mykytiuk, "LEMP: Fast Retrieval of Large Entries in a Matrix Product", SIGMOD
/// 2015): by Cauchy-Schwarz, q.x + b <= ||q|| ||x|| + b, so a row whose bound is below the
/// k-th best score cannot be in the top k. It reads only each row's norm bound (kept with the
/// 8-bit copy, `norms`) and bias: the rows with the `4 k` (at least 32) largest bounds are
/// scored in float first, which gives a floor, then every other row whose bound reaches the
/// floor. Catalogues where popularity shows in the norms and biases (a few items far above
/// the rest) leave a handful of rows to score. The bound carries the same rounding slack as
/// the 8-bit scan's, and a row whose bound is not a number is scored. Returns the top k and
/// the rows scored, or `None` (nothing kept) when more than one row in
/// [`NORM_PRUNED_SHARE`] would need scoring or fewer than k rows could be ranked.
fn norm_pruned(
    model: &Model,
    query: &[f32],
    k: usize,
    excluded: &Excluded,
    query_norm: f32,
    norms: &[f32],
) -> Option<(TopK, usize)> {
    if norms.len() < NORM_PRUNED_MIN_ROWS {
        return None;
    }
    let biases = model.item_biases().get(..norms.len())?;
    let bounds = NormBounds { norms, biases, query_norm, slack: rounding_slack(model.dim()) };
    // The seeds: the rows with the largest bounds, the floor rising as they come in.
    let mut seeds = TopK::new(k.saturating_mul(2).max(16));
    bounds.rows_reaching(f32::NEG_INFINITY, |row, upper| {
        seeds.offer(upper, row, excluded);
        ControlFlow::Continue(seeds.floor())
    });
    let mut seeds = seeds.into_rows();
    let mut top = TopK::new(k);
    for row in &seeds {
        score_row(model, query, *row, excluded, &mut top);
    }
    let floor = top.floor();
    if floor == f32::NEG_INFINITY {
        return None;
    }
    seeds.sort_unstable();
    let limit = norms.len() / NORM_PRUNED_SHARE;
    let mut reaching = Vec::new();
    let complete = bounds.rows_reaching(floor, |row, _| {
        if !excluded.contains(row) && seeds.binary_search(&row).is_err() {
            reaching.push(row);
            if reaching.len() > limit {
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(floor)
    });
    if !complete {
        return None;
    }
    for row in &reaching {
        score_row(model, query, *row, excluded, &mut top);
    }
    Some((top, seeds.len() + reaching.len()))
}

/// The Cauchy-Schwarz bounds ||q|| n_r + b_r (plus the rounding slack) of a catalogue's rows.
struct NormBounds<'a> {
    norms: &'a [f32],
    biases: &'a [f32],
    query_norm: f32,
    slack: f32,
}

impl NormBounds<'_> {
    /// Calls `visit(row, bound)`, in row order, for every row whose bound reaches the floor:
    /// `floor` at first, then what `visit` last returned. Bounds are computed a block at a
    /// time, and whole blocks and runs of eight below the floor are skipped without looking
    /// at their rows alone. Returns false when `visit` stopped the pass.
    fn rows_reaching(
        &self,
        mut floor: f32,
        mut visit: impl FnMut(u32, f32) -> ControlFlow<(), f32>,
    ) -> bool {
        const BLOCK: usize = 256;
        let mut bounds = [0f32; BLOCK];
        for start in (0..self.norms.len()).step_by(BLOCK) {
            let end = (start + BLOCK).min(self.norms.len());
            let bounds = &mut bounds[..end - start];
            let highest = block_bounds(
                &self.norms[start..end],
                &self.biases[start..end],
                self.query_norm,
                self.slack,
                bounds,
            );
            if highest < floor {
                continue;
            }
            for (chunk, uppers) in bounds.chunks(8).enumerate() {
                if !reaches(uppers, floor) {
                    continue;
                }
                for (offset, upper) in uppers.iter().enumerate() {
                    if *upper >= floor {
                        match visit((start + chunk * 8 + offset) as u32, *upper) {
                            ControlFlow::Continue(next) => floor = next,
                            ControlFlow::Break(()) => return false,
                        }
                    }
                }
            }
        }
        true
    }
}

/// Whether any of `uppers` reaches `floor`: eight comparisons at once (no early exit, so it
/// vectorises), before the rare row that does is looked at alone.
#[inline]
fn reaches(uppers: &[f32], floor: f32) -> bool {
    uppers.iter().fold(false, |any, upper| any | (*upper >= floor))
}

/// Fills `bounds` with ||q|| ||x|| + b plus the rounding slack for rows of norm bound `norms`
/// and bias `biases` (a loop the compiler vectorises) and returns the largest. A bound that is
/// not a number (an infinite norm times a zero query) counts as infinite.
fn block_bounds(
    norms: &[f32],
    biases: &[f32],
    query_norm: f32,
    slack: f32,
    bounds: &mut [f32],
) -> f32 {
    for ((upper, norm), bias) in bounds.iter_mut().zip(norms).zip(biases) {
        let length = query_norm * norm;
        let value = length + bias + slack * (length + bias.abs());
        *upper = if value.is_nan() { f32::INFINITY } else { value };
    }
    // Eight running maxima (a float reduction in one chain does not vectorise), by `if`
    // rather than `f32::max`: no NaN is left.
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = bounds.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, upper) in lanes.iter_mut().zip(chunk) {
            *lane = if *upper > *lane { *upper } else { *lane };
        }
    }
    lanes.iter().chain(chunks.remainder()).fold(f32::NEG_INFINITY, |highest, upper| {
        if *upper > highest {
            *upper
        } else {
            highest
        }
    })
}

/// Top k by decayed popularity (the cold-start fallback).
pub fn popular_top_k(model: &Model, k: usize, excluded: &Excluded) -> Vec<ScoredItem> {
    let mut top = TopK::new(k);
    for row in 0..model.item_count() as u32 {
        top.offer(model.popularity_log(ItemRow(row)) as f32, row, excluded);
    }
    top.into_items(model)
}

/// Cosine similarity of `target` (whose norm is `target_norm`) and `vector`; NaN when either
/// is zero (a [`TopK`] drops it).
#[inline]
pub(crate) fn cosine(target: &[f32], target_norm: f32, vector: &[f32]) -> f32 {
    let norm = dot(vector, vector).sqrt() * target_norm;
    if norm > 0.0 {
        dot(target, vector) / norm
    } else {
        f32::NAN
    }
}

/// Top k items by cosine similarity of item vectors to `item` (itself excluded), by a scan of
/// every item: the ground truth of the ready lists ([`super::Index::similar_items`]).
pub fn similar_items(model: &Model, item: ItemRow, k: usize) -> Vec<ScoredItem> {
    let mut top = TopK::new(k);
    scan_similar(model, item, &mut top);
    top.into_items(model)
}

/// Offers every item but `item` to `top`, scored by cosine similarity to `item`.
pub(crate) fn scan_similar(model: &Model, item: ItemRow, top: &mut TopK) {
    let target = model.item_vector(item);
    let target_norm = dot(target, target).sqrt();
    let itself = Excluded::from_rows([item.0]);
    for (row, vector) in model.item_matrix().chunks_exact(model.dim().max(1)).enumerate() {
        top.offer(cosine(target, target_norm, vector), row as u32, &itself);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: sort everything, ties by lower row.
    fn sorted_top(scores: &[f32], k: usize, excluded: &Excluded) -> Vec<(f32, u32)> {
        let mut all: Vec<(f32, u32)> = scores
            .iter()
            .enumerate()
            .map(|(row, score)| (*score, row as u32))
            .filter(|(score, row)| score.is_finite() && !excluded.contains(*row))
            .collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        all.truncate(k);
        all
    }

    #[test]
    fn streaming_top_k_equals_a_full_sort_with_ties_and_exclusions() {
        let scores: Vec<f32> = (0..500u32)
            .map(|n| match n % 37 {
                0 => f32::NAN,
                1 => f32::INFINITY,
                _ => ((n * 7919) % 53) as f32 / 4.0,
            })
            .collect();
        let excluded = Excluded::from_rows([3, 3, 498, 17, 250, 100]);
        for k in [0, 1, 5, 10, 52, 499, 1000] {
            let mut top = TopK::new(k);
            for (row, score) in scores.iter().enumerate() {
                top.offer(*score, row as u32, &excluded);
            }
            let kept: Vec<(f32, u32)> =
                top.heap.into_sorted_vec().into_iter().map(|e| (e.score, e.row)).collect();
            assert_eq!(kept, sorted_top(&scores, k, &excluded), "k = {k}");
        }
    }

    /// A model of `items` restored items: vectors from `vector(row)`, biases from `bias(row)`.
    fn restored(items: u32, vector: impl Fn(u32) -> Vec<f32>, bias: impl Fn(u32) -> f32) -> Model {
        let config = crate::model::ModelConfig { dim: 16, ..crate::model::ModelConfig::default() };
        let mut model = Model::new(config).unwrap();
        for row in 0..items {
            model
                .restore_item(crate::model::ItemState {
                    id: format!("i{row}"),
                    row,
                    vector: vector(row),
                    context: vec![0.0; 16],
                    adagrad: 0.0,
                    context_adagrad: 0.0,
                    bias: bias(row),
                    events: 1,
                    last_ts: 0,
                    popularity_log: 0.0,
                    version: 1,
                })
                .unwrap();
        }
        model.requantize();
        model
    }

    fn noise(seed: u64) -> f32 {
        let mixed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29) ^ 0xA5A5_5A5A;
        let mixed = mixed.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        ((mixed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn assert_bounded_equals_exact(model: &Model, query: &[f32], what: &str) {
        for k in [1, 10, 100, 10_000] {
            for excluded in
                [Excluded::none(), Excluded::from_rows((0..model.item_count() as u32).step_by(7))]
            {
                let (items, rescored) = bounded_top_k(model, query, k, &excluded);
                assert_eq!(items, exact_top_k(model, query, k, &excluded), "{what}, k = {k}");
                assert!(rescored <= model.item_count());
            }
        }
    }

    #[test]
    fn the_bounded_scan_returns_the_float_scans_answer() {
        let dim = 16;
        // Spread vectors, a few norms that dwarf the rest, and biases that decide.
        let model = restored(
            3_000,
            |row| {
                let scale = if row % 97 == 0 { 50.0 } else { 1.0 };
                (0..dim).map(|d| scale * noise(u64::from(row) * 31 + d as u64)).collect()
            },
            |row| noise(u64::from(row) + 7) * 0.1,
        );
        for seed in 0..20u64 {
            let query: Vec<f32> = (0..dim).map(|d| noise(seed * 1_000 + d as u64)).collect();
            assert_bounded_equals_exact(&model, &query, &format!("query {seed}"));
        }
        assert_bounded_equals_exact(&model, &vec![0.0; dim], "zero query");
        let (_, rescored) = bounded_top_k(&model, &[0.5; 16], 10, &Excluded::none());
        assert!(rescored < 300, "the bound should prune most rows, re-scored {rescored}");
    }

    #[test]
    fn the_bounded_scan_breaks_ties_like_the_float_scan() {
        // Groups of identical items (equal scores: ties go to the lower row), zero vectors,
        // values near the bottom of the float range.
        let model = restored(
            600,
            |row| match row % 5 {
                0 => vec![0.0; 16],
                1 => vec![1e-30; 16],
                _ => (0..16).map(|d| noise(u64::from(row % 13) * 16 + d)).collect(),
            },
            |row| if row % 3 == 0 { 0.0 } else { 0.25 },
        );
        for seed in 0..10u64 {
            let query: Vec<f32> = (0..16).map(|d| noise(seed * 977 + d as u64)).collect();
            assert_bounded_equals_exact(&model, &query, &format!("query {seed}"));
        }
    }

    #[test]
    fn rows_changed_between_queries_are_requantised_by_the_next_query() {
        let dim = 16;
        let mut model = restored(
            4_000,
            |row| (0..dim).map(|d| noise(u64::from(row) * 17 + d as u64)).collect(),
            |_| 0.0,
        );
        assert_eq!(model.unquantized_items(), 0);
        for round in 0..5u32 {
            model.apply(
                &format!("e{round}"),
                &format!("u{}", round % 3),
                &format!("i{round}"),
                1,
                1.0,
            );
            let stale = model.unquantized_items();
            assert!(stale > 0 && stale <= 4_000 / 64, "one event moved {stale} rows");
            for user in 0..=(round as usize).min(2) {
                let row = model.user_row(&format!("u{user}")).unwrap();
                let query = model.query_vector(row);
                assert_bounded_equals_exact(&model, &query, &format!("round {round}, user {user}"));
                let (_, rescored) = bounded_top_k(&model, &query, 10, &Excluded::none());
                assert!(rescored < 4_000, "the copy answered, re-scored {rescored}");
            }
            assert_eq!(model.unquantized_items(), 0);
            assert!(model.quantized_items(0).unwrap().matches(model.item_matrix()));
        }
        // More changed rows than a query re-quantises (a 64th of the catalogue): the floats are
        // scanned, the same answer, and the rows wait for the catch-up.
        for n in 0..20u32 {
            model.apply(&format!("bulk{n}"), "u0", &format!("i{}", n * 7), 2, 1.0);
        }
        let stale = model.unquantized_items();
        assert!(stale > 4_000 / 64);
        let query = model.query_vector(model.user_row("u0").unwrap());
        assert_bounded_equals_exact(&model, &query, "bulk");
        let (_, rescored) = bounded_top_k(&model, &query, 10, &Excluded::none());
        assert_eq!((rescored, model.unquantized_items()), (4_000, stale));
        model.requantize();
        assert!(model.quantized_items(0).unwrap().matches(model.item_matrix()));
    }

    #[test]
    fn the_norm_bound_answers_alone_where_a_few_items_stand_out() {
        let dim = 16;
        // 20,000 items: one in 50 with a large norm or bias (popular items), the rest small.
        let model = restored(
            20_000,
            |row| {
                let scale = if row % 50 == 0 { 2.0 } else { 0.2 };
                (0..dim).map(|d| scale * noise(u64::from(row) * 29 + d as u64)).collect()
            },
            |row| if row % 50 == 25 { 1.5 } else { 0.05 * noise(u64::from(row) + 3) },
        );
        for seed in 0..10u64 {
            let query: Vec<f32> = (0..dim).map(|d| noise(seed * 7_001 + d as u64)).collect();
            assert_bounded_equals_exact(&model, &query, &format!("query {seed}"));
            // The top 10 and the popular rows around it excluded: the floor comes from further
            // down, and the answer is still the float scan's.
            let top: Vec<u32> = exact_top_k(&model, &query, 30, &Excluded::none())
                .iter()
                .map(|item| item.row)
                .collect();
            let excluded = Excluded::from_rows(top.iter().copied().take(10));
            let (items, rescored) = bounded_top_k(&model, &query, 10, &excluded);
            assert_eq!(items, exact_top_k(&model, &query, 10, &excluded), "query {seed}");
            let (_, rescored_alone) = bounded_top_k(&model, &query, 10, &Excluded::none());
            assert!(
                rescored_alone <= 20_000 / NORM_PRUNED_SHARE
                    && rescored <= 20_000 / NORM_PRUNED_SHARE,
                "the norm pass should answer alone, re-scored {rescored_alone} and {rescored}"
            );
        }
        assert_bounded_equals_exact(&model, &vec![0.0; dim], "zero query");
    }

    #[test]
    fn rows_outside_the_seeds_that_reach_the_floor_are_scored() {
        let dim = 16;
        let axis = |d: usize, length: f32| {
            let mut vector = vec![0.0; dim];
            vector[d] = length;
            vector
        };
        // For the query e0: 30 decoys (long, orthogonal: the largest bounds, score 0.2) fill
        // the seeds and set the floor at 0.2; the answer lies outside them, in rows whose
        // bound is their score (aligned with the query) or is mostly their bias; 9,000 more
        // rows are ruled out by their bound.
        let model = restored(
            9_100,
            |row| match row {
                0..30 => axis(1, 10.0),
                30..80 => axis(0, 0.25 + 0.007 * (row - 30) as f32),
                80..130 => axis(2, 0.01),
                _ => axis(3, 0.001),
            },
            |row| match row {
                0..30 => 0.2,
                30..80 => 0.0,
                80..130 => 0.25 + 0.007 * (row - 80) as f32 + 0.003,
                _ => -1.0,
            },
        );
        let query = axis(0, 1.0);
        for k in [1, 10, 40, 100] {
            let (items, rescored) = bounded_top_k(&model, &query, k, &Excluded::none());
            assert_eq!(items, exact_top_k(&model, &query, k, &Excluded::none()), "k = {k}");
            if k <= 40 {
                assert!(
                    rescored <= 9_100 / NORM_PRUNED_SHARE,
                    "the norm pass answered, {rescored}"
                );
            }
        }
        let top = exact_top_k(&model, &query, 10, &Excluded::none());
        assert!(top.iter().all(|item| (30..130).contains(&item.row)), "{top:?}");
        assert!(top.iter().any(|item| item.row >= 80) && top.iter().any(|item| item.row < 80));
    }

    #[test]
    fn the_norm_bound_gives_way_where_every_item_looks_alike() {
        let dim = 16;
        // Equal norms and no biases: the bound rules nothing out, the 8-bit scan answers.
        let model = restored(
            10_000,
            |row| {
                let raw: Vec<f32> =
                    (0..dim).map(|d| noise(u64::from(row) * 37 + d as u64)).collect();
                let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
                raw.iter().map(|x| x / norm).collect()
            },
            |_| 0.0,
        );
        for seed in 0..5u64 {
            let query: Vec<f32> = (0..dim).map(|d| noise(seed * 313 + d as u64)).collect();
            assert_bounded_equals_exact(&model, &query, &format!("query {seed}"));
        }
    }

    #[test]
    fn rows_that_are_not_finite_never_enter_the_norm_bounded_answer() {
        let dim = 16;
        let model = restored(
            9_000,
            |row| match row % 1_000 {
                0 => vec![f32::NAN; dim],
                1 => vec![f32::INFINITY; dim],
                2 => vec![0.0; dim],
                _ => {
                    let scale = if row % 40 == 0 { 3.0 } else { 0.1 };
                    (0..dim).map(|d| scale * noise(u64::from(row) * 11 + d as u64)).collect()
                }
            },
            |row| if row % 1_000 == 3 { f32::NAN } else { 0.01 },
        );
        for seed in 0..5u64 {
            let query: Vec<f32> = (0..dim).map(|d| noise(seed * 131 + d as u64)).collect();
            assert_bounded_equals_exact(&model, &query, &format!("query {seed}"));
        }
        assert_bounded_equals_exact(&model, &vec![0.0; dim], "zero query");
    }

    #[test]
    fn excluded_rows_are_sorted_and_deduplicated() {
        let excluded = Excluded::from_rows([9, 1, 9, 4]);
        assert_eq!(excluded.len(), 3);
        assert!(excluded.contains(9) && excluded.contains(1) && excluded.contains(4));
        assert!(!excluded.contains(2) && !Excluded::none().contains(0));
    }
}
