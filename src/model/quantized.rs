//! An 8-bit copy of the item matrix with an error bound per row, kept in step with the float
//! rows as they change, so that the exact scan can read a quarter of the bytes and still return
//! the exact top k (`index::exact::bounded_top_k`).
//!
//! Row r is stored as codes c (int8, symmetric: c_j = round(x_j / s), s = max_j |x_j| / 127,
//! the per-row scalar quantisation Qdrant and FAISS's `SQ8` use) with two bounds: e = ||x - s c||
//! and n = ||x||, each rounded up. For a query quantised the same way (int16 codes d, scale t,
//! error e_q = ||q - t d||), Cauchy-Schwarz bounds the float score by the integer one:
//! |q.x - t s (d.c)| <= ||t d|| e + e_q n. A scan keeps the k best lower bounds and re-scores in
//! float only the rows whose upper bound reaches the k-th of them: no row left out can beat
//! the k rows kept, so the answer equals the float scan's.
//!
//! A row changed through [`super::table::Table::vector_mut`] (every write of an item vector)
//! is marked stale, and the next reader re-quantises the stale rows before it scans
//! ([`super::table::Table::quantized`]): the fold pays a flag per changed row, and a row changed
//! many times between two queries is re-quantised once. A stale row's bound is infinite, so
//! a scan that met one would re-score it in float rather than trust its old copy.

/// Relative slack added to every bound of a `dim`-dimensional score, covering the float
/// rounding of both the integer estimate and the served float score: a float32 dot product of
/// `dim` terms is within `dim` units of roundoff of its value relative to ||q|| ||x|| (Higham
/// 2002, section 3.1), plus the bias's addition and the estimate's few products; twice that.
pub(crate) fn rounding_slack(dim: usize) -> f32 {
    (2.0 * dim as f32 + 8.0) * f32::EPSILON
}

/// The 8-bit mirror of a row-major float matrix (see the module documentation).
#[derive(Debug, Clone, Default)]
pub(crate) struct Quantized {
    dim: usize,
    /// `rows x dim` codes.
    pub(crate) codes: Vec<i8>,
    /// Per row: the scale s.
    pub(crate) scales: Vec<f32>,
    /// Per row: ||x - s c||, rounded up; infinite while the row is stale or not finite.
    pub(crate) errors: Vec<f32>,
    /// Per row: ||x||, rounded up (infinite when not finite).
    pub(crate) norms: Vec<f32>,
    /// Rows to re-quantise, each once.
    stale: Vec<u32>,
    is_stale: Vec<bool>,
}

impl Quantized {
    pub(crate) fn new(dim: usize) -> Self {
        Self { dim, ..Self::default() }
    }

    /// Appends a row, stale until the next [`Quantized::refresh`].
    pub(crate) fn push(&mut self) {
        let row = self.scales.len() as u32;
        self.codes.resize(self.codes.len() + self.dim, 0);
        self.scales.push(0.0);
        self.errors.push(f32::INFINITY);
        self.norms.push(f32::INFINITY);
        self.is_stale.push(false);
        self.invalidate(row);
    }

    /// Marks `row` as changed: scans re-score it in float until it is re-quantised.
    #[inline]
    pub(crate) fn invalidate(&mut self, row: u32) {
        let index = row as usize;
        if !self.is_stale[index] {
            self.is_stale[index] = true;
            self.errors[index] = f32::INFINITY;
            self.stale.push(row);
        }
    }

    /// Follows `Table::swap_remove(row)`: the last row's copy moves into `row`.
    pub(crate) fn swap_remove(&mut self, row: u32) {
        let (index, dim) = (row as usize, self.dim);
        let last = self.scales.len() - 1;
        self.codes.copy_within(last * dim..(last + 1) * dim, index * dim);
        self.codes.truncate(last * dim);
        self.scales.swap_remove(index);
        self.errors.swap_remove(index);
        self.norms.swap_remove(index);
        self.is_stale.swap_remove(index);
        let last = last as u32;
        self.stale.retain(|stale| *stale != row);
        for stale in &mut self.stale {
            if *stale == last {
                *stale = row;
            }
        }
    }

    /// Rows changed since the last refresh.
    pub(crate) fn stale_rows(&self) -> usize {
        self.stale.len()
    }

    /// Re-quantises every stale row from `vectors` (the float matrix this mirrors).
    pub(crate) fn refresh(&mut self, vectors: &[f32]) {
        self.refresh_some(vectors, usize::MAX);
    }

    /// Re-quantises at most `max_rows` of the stale rows (the most recently marked ones) from
    /// `vectors`; returns how many stay stale. The rest keep their infinite bound, so a scan
    /// in between re-scores them in float, as before any refresh.
    pub(crate) fn refresh_some(&mut self, vectors: &[f32], max_rows: usize) -> usize {
        let dim = self.dim;
        let mut stale = if max_rows >= self.stale.len() {
            std::mem::take(&mut self.stale)
        } else {
            self.stale.split_off(self.stale.len() - max_rows)
        };
        // In row order: the float rows are read ascending, as the hardware prefetches best.
        stale.sort_unstable();
        for row in stale {
            let index = row as usize;
            self.is_stale[index] = false;
            let vector = &vectors[index * dim..(index + 1) * dim];
            let codes = &mut self.codes[index * dim..(index + 1) * dim];
            let (scale, error, norm) = quantize_row(vector, codes);
            self.scales[index] = scale;
            self.errors[index] = error;
            self.norms[index] = norm;
        }
        self.stale.len()
    }

    /// Whether every row's copy equals a fresh quantisation of `vectors` (tests).
    #[cfg(test)]
    pub(crate) fn matches(&self, vectors: &[f32]) -> bool {
        let mut fresh = Self::new(self.dim);
        for _ in 0..self.scales.len() {
            fresh.push();
        }
        fresh.refresh(vectors);
        self.stale.is_empty()
            && fresh.codes == self.codes
            && fresh.scales == self.scales
            && fresh.errors == self.errors
            && fresh.norms == self.norms
    }
}

/// Quantises `vector` into `codes` (int8, symmetric, one scale): returns (scale, error bound,
/// norm bound). A row with a value that is not finite gets an infinite error (always
/// re-scored in float).
pub(crate) fn quantize_row(vector: &[f32], codes: &mut [i8]) -> (f32, f32, f32) {
    super::vector::quantize_i8(vector, codes).unwrap_or_else(|| {
        codes.fill(0);
        (0.0, f32::INFINITY, f32::INFINITY)
    })
}

/// A query quantised to int16 codes for the integer scan.
#[derive(Debug, Clone, Default)]
pub(crate) struct QuantizedQuery {
    pub(crate) codes: Vec<i16>,
    /// The scale t.
    pub(crate) scale: f32,
    /// ||t d||, rounded up.
    pub(crate) norm_of_codes: f32,
    /// ||q - t d||, rounded up.
    pub(crate) error: f32,
    /// ||q||, rounded up.
    pub(crate) norm: f32,
}

/// Largest code magnitude of a query: 64 products of 32,767 x 127 stay far inside an i32.
const QUERY_LEVELS: f32 = 32_767.0;

impl QuantizedQuery {
    /// `None` when the query has a value that is not finite.
    pub(crate) fn new(query: &[f32]) -> Option<Self> {
        let max = query.iter().fold(0.0f32, |max, x| max.max(x.abs()));
        if !max.is_finite() || query.iter().any(|x| !x.is_finite()) {
            return None;
        }
        if max == 0.0 {
            return Some(Self { codes: vec![0; query.len()], ..Self::default() });
        }
        let scale = max / QUERY_LEVELS;
        let inverse = QUERY_LEVELS / max;
        let (mut error, mut norm, mut norm_of_codes) = (0.0f64, 0.0f64, 0.0f64);
        let codes = query
            .iter()
            .map(|x| {
                let quantised = (x * inverse).round().clamp(-QUERY_LEVELS, QUERY_LEVELS);
                let reconstructed = f64::from(scale) * f64::from(quantised);
                error += (f64::from(*x) - reconstructed).powi(2);
                norm += f64::from(*x) * f64::from(*x);
                norm_of_codes += reconstructed * reconstructed;
                quantised as i16
            })
            .collect();
        Some(Self {
            codes,
            scale,
            norm_of_codes: round_up(norm_of_codes.sqrt()),
            error: round_up(error.sqrt()),
            norm: round_up(norm.sqrt()),
        })
    }
}

/// `value` as an f32 no smaller than it.
fn round_up(value: f64) -> f32 {
    let rounded = value as f32;
    if f64::from(rounded) < value {
        super::vector::next_up(rounded)
    } else {
        rounded
    }
}

#[cfg(test)]
mod tests {
    use super::{quantize_row, Quantized, QuantizedQuery};

    fn float_dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum()
    }

    #[test]
    fn the_bound_holds_for_every_row_and_query() {
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        };
        for trial in 0..6_000 {
            let dim = [1, 7, 16, 64][trial % 4];
            let magnitude = [1e-6f32, 1.0, 1e3, 1e-20, 1e-33, 1e30][trial % 6];
            let row: Vec<f32> = (0..dim).map(|_| next() * magnitude).collect();
            let query: Vec<f32> = (0..dim).map(|_| next() * [0.3f32, 40.0][trial % 2]).collect();
            let mut codes = vec![0i8; dim];
            let (scale, error, norm) = quantize_row(&row, &mut codes);
            let q = QuantizedQuery::new(&query).unwrap();
            let integer: i64 =
                codes.iter().zip(&q.codes).map(|(c, d)| i64::from(*c) * i64::from(*d)).sum();
            let estimate = f64::from(q.scale) * f64::from(scale) * integer as f64;
            let bound = f64::from(q.norm_of_codes) * f64::from(error)
                + f64::from(q.error) * f64::from(norm);
            let exact = float_dot(&query, &row);
            // Up to the float64 rounding of this check itself.
            let rounding = 1e-12 * f64::from(q.norm) * f64::from(norm);
            assert!((exact - estimate).abs() <= bound + rounding, "trial {trial}");
            assert!(f64::from(norm) >= float_dot(&row, &row).sqrt());
            assert!(codes.iter().all(|c| *c != i8::MIN));
        }
    }

    #[test]
    fn rows_that_are_zero_or_not_finite() {
        let mut codes = [1i8; 3];
        assert_eq!(quantize_row(&[0.0; 3], &mut codes), (0.0, 0.0, 0.0));
        assert_eq!(codes, [0; 3]);
        let (_, error, _) = quantize_row(&[1.0, f32::NAN, 0.0], &mut codes);
        assert!(error.is_infinite());
        assert!(QuantizedQuery::new(&[f32::INFINITY]).is_none());
    }

    #[test]
    fn stale_rows_are_refreshed_once_and_follow_a_swap_remove() {
        let dim = 2;
        let mut vectors = vec![1.0, 0.5, -2.0, 0.25, 3.0, 3.0];
        let mut quantized = Quantized::new(dim);
        for _ in 0..3 {
            quantized.push();
        }
        assert!(quantized.errors.iter().all(|e| e.is_infinite()));
        quantized.refresh(&vectors);
        assert!(quantized.matches(&vectors));
        vectors[2] = 5.0;
        quantized.invalidate(1);
        quantized.invalidate(1);
        assert_eq!(quantized.stale_rows(), 1);
        assert!(quantized.errors[1].is_infinite());
        // Row 2 moves into row 0 while row 1 is still stale.
        quantized.invalidate(2);
        quantized.swap_remove(0);
        vectors.copy_within(4..6, 0);
        vectors.truncate(4);
        assert_eq!(quantized.stale_rows(), 2);
        quantized.refresh(&vectors);
        assert!(quantized.matches(&vectors));
    }

    #[test]
    fn a_partial_refresh_brings_up_to_date_only_the_rows_it_took() {
        let dim = 2;
        let vectors: Vec<f32> = (0..10).map(|n| n as f32 - 4.5).collect();
        let mut quantized = Quantized::new(dim);
        for _ in 0..5 {
            quantized.push();
        }
        assert_eq!(quantized.refresh_some(&vectors, 2), 3);
        let fresh = quantized.errors.iter().filter(|error| error.is_finite()).count();
        assert_eq!(fresh, 2, "{:?}", quantized.errors);
        // A row marked again while stale is still taken once.
        quantized.invalidate(0);
        assert_eq!(quantized.refresh_some(&vectors, 0), 3);
        assert_eq!(quantized.refresh_some(&vectors, 2), 1);
        assert_eq!(quantized.refresh_some(&vectors, 2), 0);
        assert!(quantized.matches(&vectors));
    }
}
