//! Small dense-vector kernels of the SGD step. Plain loops over `f32` slices: the compiler
//! vectorises them, and a fixed summation order keeps results bit-identical between runs.
//!
//! The kernels of the training step and of the exact scan ([`dot`], [`dot_rows`],
//! [`negative_step`], [`axpy`], [`regularized_step`]) are compiled twice, for baseline x86-64
//! (SSE2) and for x86-64-v3 (AVX2), and run as the widest the CPU offers, chosen once at start
//! by `pulp`'s runtime detection (a safe wrapper over `is_x86_feature_detected!`). Both
//! versions give bit-identical results: every lane does the same IEEE operations in the same
//! order (8 partial sums, added in lane order), and Rust never contracts a multiply and an add
//! into an FMA on its own.

use std::sync::LazyLock;

/// The instruction set the kernels run with, detected once.
static ARCH: LazyLock<pulp::Arch> = LazyLock::new(pulp::Arch::new);

/// Lanes of the dot-product accumulator: eight independent partial sums let the compiler use
/// SIMD while keeping one fixed summation order (so results stay bit-identical across runs).
const LANES: usize = 8;

/// Dot product of two equal-length slices.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    ARCH.dispatch(Dot(a, b))
}

/// `out[r] = dot(query, row r of matrix)` for the rows of the row-major `matrix` (row length
/// `query.len()`, as many rows as `out` holds), bit-identical to [`dot`] row by row, with one
/// dispatch for all of them (the exact scan of a catalogue).
pub fn dot_rows(query: &[f32], matrix: &[f32], out: &mut [f32]) {
    ARCH.dispatch(DotRows { query, matrix, out });
}

struct DotRows<'a> {
    query: &'a [f32],
    matrix: &'a [f32],
    out: &'a mut [f32],
}

impl pulp::WithSimd for DotRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let Self { query, matrix, out } = self;
        if query.is_empty() {
            out.fill(0.0);
            return;
        }
        let len = query.len();
        // Four rows at a time: four independent chains of lane sums instead of one, each row
        // summed exactly as `dot_lanes` sums it.
        let rows = out.len().min(matrix.len() / len);
        let blocks = rows / ROWS_AT_ONCE;
        for (scores, block) in out[..blocks * ROWS_AT_ONCE]
            .chunks_exact_mut(ROWS_AT_ONCE)
            .zip(matrix.chunks_exact(len * ROWS_AT_ONCE))
        {
            scores.copy_from_slice(&dot_lanes_rows(query, block));
        }
        let rest = blocks * ROWS_AT_ONCE..rows;
        for (score, row) in
            out[rest.clone()].iter_mut().zip(matrix[rest.start * len..].chunks_exact(len))
        {
            *score = dot_lanes(query, row);
        }
    }
}

/// `out[r] = sum_j query[j] * codes[r * query.len() + j]`, exactly (integer arithmetic: any
/// summation order gives the same result), for as many rows as `out` holds: the integer
/// estimate of the bounded scan (`quantized.rs`), with one dispatch for all of them.
pub(crate) fn dot_i8_rows(query: &[i16], codes: &[i8], out: &mut [i32]) {
    ARCH.dispatch(DotI8Rows { query, codes, out });
}

struct DotI8Rows<'a> {
    query: &'a [i16],
    codes: &'a [i8],
    out: &'a mut [i32],
}

impl pulp::WithSimd for DotI8Rows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let Self { query, codes, out } = self;
        if query.is_empty() {
            out.fill(0);
            return;
        }
        for (score, row) in out.iter_mut().zip(codes.chunks_exact(query.len())) {
            *score = row.iter().zip(query).map(|(c, d)| i32::from(*c) * i32::from(*d)).sum();
        }
    }
}

/// Symmetric int8 quantisation of `vector` into `codes` (c_j = round(x_j / s), s = max |x_j| /
/// 127): returns (s, e, n) with e >= ||x - s c|| and n >= ||x|| (exact values), or `None` when a
/// value is not finite.
///
/// Both norms are taken of scaled values (x / max and x / s, within [-128, 128]), so that no
/// square underflows or overflows. A float32 sum of d squares is within (d + 2) epsilon of its
/// value (Higham, "Accuracy and Stability of Numerical Algorithms", 2002, section 3.1); each
/// scaled value x_j * (1 / s) is within 2^-15 of x_j / s, so the residual in code units is
/// within sqrt(d) 2^-15 of the computed one; a few more epsilons cover the final products.
/// Rows whose largest value is below 1e-30 are stored as zero codes with e = n.
pub(crate) fn quantize_i8(vector: &[f32], codes: &mut [i8]) -> Option<(f32, f32, f32)> {
    ARCH.dispatch(QuantizeI8 { vector, codes })
}

struct QuantizeI8<'a> {
    vector: &'a [f32],
    codes: &'a mut [i8],
}

/// Sum over fixed lanes (so that it vectorises) of `square(x_j, c_j)` for the pairs of
/// `vector` and `codes`.
#[inline(always)]
fn lane_sum(vector: &[f32], codes: &[i8], term: impl Fn(f32, i8) -> f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let (xs, cs) = (vector.chunks_exact(LANES), codes.chunks_exact(LANES));
    let tail: f32 = xs.remainder().iter().zip(cs.remainder()).map(|(x, c)| term(*x, *c)).sum();
    for (x, c) in xs.zip(cs) {
        for lane in 0..LANES {
            lanes[lane] += term(x[lane], c[lane]);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

impl pulp::WithSimd for QuantizeI8<'_> {
    type Output = Option<(f32, f32, f32)>;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> Self::Output {
        let Self { vector, codes } = self;
        // The largest magnitude, and whether every value is finite (a NaN or infinity makes the
        // lane sum of x * 0 a NaN).
        let (mut max, mut poison) = ([0.0f32; LANES], [0.0f32; LANES]);
        let chunks = vector.chunks_exact(LANES);
        let mut finite = chunks.remainder().iter().all(|x| x.is_finite());
        let tail_max = chunks.remainder().iter().fold(0.0f32, |max, x| max.max(x.abs()));
        for x in chunks {
            for lane in 0..LANES {
                max[lane] = max[lane].max(x[lane].abs());
                poison[lane] += x[lane] * 0.0;
            }
        }
        finite &= poison.iter().all(|lane| *lane == 0.0);
        let max = max.iter().fold(tail_max, |max, lane| max.max(*lane));
        if !finite {
            return None;
        }
        codes.fill(0);
        if max == 0.0 {
            return Some((0.0, 0.0, 0.0));
        }
        let dim = vector.len() as f32;
        let inflate = 1.0 + (dim + 8.0) * f32::EPSILON;
        let to_unit = 1.0 / max;
        let norm = (lane_sum(vector, codes, |x, _| (x * to_unit) * (x * to_unit)).sqrt() * inflate
            + dim.sqrt() * f32::EPSILON)
            * max
            * inflate;
        if max < 1e-30 {
            return Some((0.0, next_up(norm), next_up(norm)));
        }
        let scale = max / 127.0;
        let to_codes = 1.0 / scale;
        // |x / s| <= 127 up to rounding, so the saturating cast never reaches -128.
        for (code, x) in codes.iter_mut().zip(vector) {
            *code = (x * to_codes).round() as i8;
        }
        let residual = lane_sum(vector, codes, |x, c| {
            let residual = x * to_codes - f32::from(c);
            residual * residual
        });
        let error = (residual.sqrt() * inflate + dim.sqrt() * (1.0 / 32_768.0)) * scale * inflate;
        Some((scale, next_up(error), next_up(norm)))
    }
}

/// The next float32 above a non-negative `value` (infinity and NaN unchanged): `f32::next_up`
/// for the minimum supported Rust version.
pub(crate) fn next_up(value: f32) -> f32 {
    if value == 0.0 {
        f32::from_bits(1)
    } else if value.is_finite() && value > 0.0 {
        f32::from_bits(value.to_bits() + 1)
    } else {
        value
    }
}

/// Rows [`dot_rows`] scores together.
const ROWS_AT_ONCE: usize = 4;

/// [`dot_lanes`] of `a` with each of the [`ROWS_AT_ONCE`] rows of `rows` (row-major, each of
/// `a.len()`): the same operations in the same order for each row, interleaved.
#[inline(always)]
fn dot_lanes_rows(a: &[f32], rows: &[f32]) -> [f32; ROWS_AT_ONCE] {
    let len = a.len();
    let mut partial = [[0.0f32; LANES]; ROWS_AT_ONCE];
    let whole = len / LANES * LANES;
    for start in (0..whole).step_by(LANES) {
        let x = &a[start..start + LANES];
        for (row, partial) in partial.iter_mut().enumerate() {
            let y = &rows[row * len + start..row * len + start + LANES];
            for lane in 0..LANES {
                partial[lane] += x[lane] * y[lane];
            }
        }
    }
    let mut out = [0.0f32; ROWS_AT_ONCE];
    for (row, score) in out.iter_mut().enumerate() {
        let tail: f32 = a[whole..]
            .iter()
            .zip(&rows[row * len + whole..(row + 1) * len])
            .map(|(x, y)| x * y)
            .sum();
        *score = partial[row].iter().sum::<f32>() + tail;
    }
    out
}

struct Dot<'a>(&'a [f32], &'a [f32]);

impl pulp::WithSimd for Dot<'_> {
    type Output = f32;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> f32 {
        dot_lanes(self.0, self.1)
    }
}

#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut partial = [0.0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..LANES {
            partial[lane] += x[lane] * y[lane];
        }
    }
    partial.iter().sum::<f32>() + tail
}

/// The fused negative-item step of BPR: `acc -= g q` (with the old q), then
/// `q += lr (-g p - reg q)`; returns the squared norm of the new q. Written over fixed lanes so
/// that it compiles to SIMD with one fixed summation order.
#[inline]
pub fn negative_step(q: &mut [f32], p: &[f32], acc: &mut [f32], g: f32, lr: f32, reg: f32) -> f32 {
    ARCH.dispatch(NegativeStep { q, p, acc, g, lr, reg })
}

struct NegativeStep<'a> {
    q: &'a mut [f32],
    p: &'a [f32],
    acc: &'a mut [f32],
    g: f32,
    lr: f32,
    reg: f32,
}

impl pulp::WithSimd for NegativeStep<'_> {
    type Output = f32;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) -> f32 {
        let Self { q, p, acc, g, lr, reg } = self;
        if S::F32_LANES != LANES {
            return negative_step_lanes(q, p, acc, g, lr, reg);
        }
        // One register holds the LANES partial sums: the same operations, lane by lane, as
        // `negative_step_lanes`, written with explicit vectors (the auto-vectoriser splits
        // this loop badly for AVX2).
        let len = q.len().min(p.len()).min(acc.len());
        let (q, p, acc) = (&mut q[..len], &p[..len], &mut acc[..len]);
        let (q_head, q_tail) = S::as_mut_simd_f32s(q);
        let (p_head, p_tail) = S::as_simd_f32s(p);
        let (acc_head, acc_tail) = S::as_mut_simd_f32s(acc);
        let (g_v, minus_g_v) = (simd.splat_f32s(g), simd.splat_f32s(-g));
        let (lr_v, reg_v) = (simd.splat_f32s(lr), simd.splat_f32s(reg));
        let mut partial = simd.splat_f32s(0.0);
        for ((q, p), acc) in q_head.iter_mut().zip(p_head).zip(acc_head.iter_mut()) {
            let old = *q;
            *acc = simd.sub_f32s(*acc, simd.mul_f32s(g_v, old));
            let step = simd.sub_f32s(simd.mul_f32s(minus_g_v, *p), simd.mul_f32s(reg_v, old));
            let new = simd.add_f32s(old, simd.mul_f32s(lr_v, step));
            *q = new;
            partial = simd.add_f32s(partial, simd.mul_f32s(new, new));
        }
        // Same size: S::f32s holds LANES lanes (checked above).
        let partial: [f32; LANES] = pulp::bytemuck::cast(partial);
        partial.iter().sum::<f32>() + negative_step_tail(q_tail, p_tail, acc_tail, g, lr, reg)
    }
}

#[inline(always)]
fn negative_step_lanes(
    q: &mut [f32],
    p: &[f32],
    acc: &mut [f32],
    g: f32,
    lr: f32,
    reg: f32,
) -> f32 {
    let len = q.len().min(p.len()).min(acc.len());
    let (q, p, acc) = (&mut q[..len], &p[..len], &mut acc[..len]);
    let mut partial = [0.0f32; LANES];
    let mut q_chunks = q.chunks_exact_mut(LANES);
    let mut p_chunks = p.chunks_exact(LANES);
    let mut acc_chunks = acc.chunks_exact_mut(LANES);
    for ((q, p), acc) in (&mut q_chunks).zip(&mut p_chunks).zip(&mut acc_chunks) {
        for lane in 0..LANES {
            let old = q[lane];
            acc[lane] -= g * old;
            let new = old + lr * (-g * p[lane] - reg * old);
            q[lane] = new;
            partial[lane] += new * new;
        }
    }
    let (q, p, acc) =
        (q_chunks.into_remainder(), p_chunks.remainder(), acc_chunks.into_remainder());
    partial.iter().sum::<f32>() + negative_step_tail(q, p, acc, g, lr, reg)
}

/// The elements after the last whole group of LANES, one at a time; returns their share of
/// the squared norm.
#[inline(always)]
fn negative_step_tail(q: &mut [f32], p: &[f32], acc: &mut [f32], g: f32, lr: f32, reg: f32) -> f32 {
    let mut tail = 0.0f32;
    for ((q, p), acc) in q.iter_mut().zip(p).zip(acc.iter_mut()) {
        let old = *q;
        *acc -= g * old;
        *q = old + lr * (-g * p - reg * old);
        tail += *q * *q;
    }
    tail
}

/// `y += a x`, element by element (over the shorter length).
#[inline]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    ARCH.dispatch(RegularizedStep { y, lr: 1.0, w: a, x, reg: 0.0, plain: true });
}

/// `y += lr (w x - reg y)`, element by element (over the shorter length): the regularised SGD
/// step of one row.
#[inline]
pub fn regularized_step(y: &mut [f32], lr: f32, w: f32, x: &[f32], reg: f32) {
    ARCH.dispatch(RegularizedStep { y, lr, w, x, reg, plain: false });
}

/// Element-wise, so any vector width gives the same bits.
struct RegularizedStep<'a> {
    y: &'a mut [f32],
    lr: f32,
    w: f32,
    x: &'a [f32],
    reg: f32,
    /// `y += w x` instead.
    plain: bool,
}

impl pulp::WithSimd for RegularizedStep<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let Self { y, lr, w, x, reg, plain } = self;
        let len = y.len().min(x.len());
        let (y_head, y_tail) = S::as_mut_simd_f32s(&mut y[..len]);
        let (x_head, x_tail) = S::as_simd_f32s(&x[..len]);
        let (lr_v, w_v, reg_v) = (simd.splat_f32s(lr), simd.splat_f32s(w), simd.splat_f32s(reg));
        if plain {
            for (y, x) in y_head.iter_mut().zip(x_head) {
                *y = simd.add_f32s(*y, simd.mul_f32s(w_v, *x));
            }
            for (y, x) in y_tail.iter_mut().zip(x_tail) {
                *y += w * x;
            }
        } else {
            for (y, x) in y_head.iter_mut().zip(x_head) {
                let step = simd.sub_f32s(simd.mul_f32s(w_v, *x), simd.mul_f32s(reg_v, *y));
                *y = simd.add_f32s(*y, simd.mul_f32s(lr_v, step));
            }
            for (y, x) in y_tail.iter_mut().zip(x_tail) {
                *y += lr * (w * x - reg * *y);
            }
        }
    }
}

/// Squared L2 norm.
#[inline]
pub fn norm_squared(a: &[f32]) -> f32 {
    dot(a, a)
}

/// Rescales `v` onto the L2 ball of radius `max_norm`; a non-finite vector is reset to zero.
#[inline]
pub fn clip_norm(v: &mut [f32], max_norm: f32) {
    let squared = norm_squared(v);
    if !squared.is_finite() {
        v.fill(0.0);
        return;
    }
    if squared > max_norm * max_norm {
        let scale = max_norm / squared.sqrt();
        v.iter_mut().for_each(|x| *x *= scale);
    }
}

/// The logistic function, clamped so that its input can never overflow `exp`.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    let bounded = if x.is_nan() { 0.0 } else { x.clamp(-30.0, 30.0) };
    1.0 / (1.0 + (-bounded).exp())
}

/// Natural log of `exp(a) + exp(b)`, stable for large arguments.
pub fn log_add_exp(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY {
        return b;
    }
    let high = a.max(b);
    high + ((a - high).exp() + (b - high).exp()).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_sum_for_any_length() {
        for len in [0, 1, 7, 8, 9, 64, 100] {
            let a: Vec<f32> = (0..len).map(|i| i as f32 * 0.5 - 3.0).collect();
            let b: Vec<f32> = (0..len).map(|i| 1.0 - i as f32 * 0.25).collect();
            let naive: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
            assert!(
                (f64::from(dot(&a, &b)) - naive).abs() < 1e-3 * (1.0 + naive.abs()),
                "len {len}"
            );
        }
    }

    #[test]
    fn negative_step_matches_the_scalar_formula() {
        for len in [3, 8, 64, 67] {
            let p: Vec<f32> = (0..len).map(|i| (i as f32).sin()).collect();
            let mut q: Vec<f32> = (0..len).map(|i| (i as f32).cos()).collect();
            let mut acc = vec![0.5f32; len];
            let (old_q, old_acc) = (q.clone(), acc.clone());
            let norm = negative_step(&mut q, &p, &mut acc, 0.3, 0.01, 0.1);
            for i in 0..len {
                assert!((acc[i] - (old_acc[i] - 0.3 * old_q[i])).abs() < 1e-6);
                assert!((q[i] - (old_q[i] + 0.01 * (-0.3 * p[i] - 0.1 * old_q[i]))).abs() < 1e-6);
            }
            assert!((norm - norm_squared(&q)).abs() < 1e-4);
        }
    }

    #[test]
    fn clip_keeps_direction_and_bounds_norm() {
        let mut v = [3.0, 4.0];
        clip_norm(&mut v, 1.0);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        let mut small = [0.3, 0.4];
        clip_norm(&mut small, 1.0);
        assert_eq!(small, [0.3, 0.4]);
    }

    #[test]
    fn clip_resets_non_finite() {
        let mut v = [f32::NAN, 1.0];
        clip_norm(&mut v, 1.0);
        assert_eq!(v, [0.0, 0.0]);
        let mut huge = [f32::MAX, f32::MAX];
        clip_norm(&mut huge, 1.0);
        assert_eq!(huge, [0.0, 0.0]);
    }

    #[test]
    fn sigmoid_is_bounded_for_extremes() {
        assert!(sigmoid(f32::INFINITY) <= 1.0 && sigmoid(f32::NEG_INFINITY) >= 0.0);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
    }

    #[test]
    fn log_add_exp_matches_direct_sum() {
        let direct = (1.0f64.exp() + 2.0f64.exp()).ln();
        assert!((log_add_exp(1.0, 2.0) - direct).abs() < 1e-12);
        assert_eq!(log_add_exp(f64::NEG_INFINITY, 5.0), 5.0);
        assert!(log_add_exp(1000.0, 1000.0).is_finite());
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn dispatched_kernels_give_the_bits_of_the_baseline_loops() {
        // Whatever instruction set ARCH picked on this machine (AVX2 on the development one),
        // the results must be those of the plain loops compiled for baseline x86-64.
        for len in [0, 3, 8, 13, 64, 67] {
            let p: Vec<f32> = (0..len).map(|i| (i as f32 * 0.7).sin() * 1.3).collect();
            let q0: Vec<f32> = (0..len).map(|i| (i as f32 * 0.3).cos() * 0.9).collect();
            let acc0: Vec<f32> = (0..len).map(|i| 0.1 - i as f32 * 0.01).collect();
            assert_eq!(dot(&p, &q0).to_bits(), dot_lanes(&p, &q0).to_bits(), "dot, len {len}");
            let (mut q, mut acc) = (q0.clone(), acc0.clone());
            let (mut q_plain, mut acc_plain) = (q0.clone(), acc0.clone());
            let norm = negative_step(&mut q, &p, &mut acc, 0.37, 0.013, 0.03);
            let plain = negative_step_lanes(&mut q_plain, &p, &mut acc_plain, 0.37, 0.013, 0.03);
            assert_eq!(norm.to_bits(), plain.to_bits(), "negative_step norm, len {len}");
            assert_eq!(bits(&q), bits(&q_plain), "negative_step q, len {len}");
            assert_eq!(bits(&acc), bits(&acc_plain), "negative_step acc, len {len}");

            let mut y = q0.clone();
            regularized_step(&mut y, 0.05, -0.8, &p, 0.03);
            let expected: Vec<f32> =
                q0.iter().zip(&p).map(|(y, x)| y + 0.05 * (-0.8 * x - 0.03 * y)).collect();
            assert_eq!(bits(&y), bits(&expected), "regularized_step, len {len}");
            let matrix: Vec<f32> = (0..len * 11).map(|i| (i as f32 * 0.11).sin()).collect();
            let mut scores = [f32::NAN; 11];
            dot_rows(&p, &matrix, &mut scores);
            for (row, score) in scores.iter().enumerate() {
                let expected = if len == 0 { 0.0 } else { dot(&p, &matrix[row * len..][..len]) };
                assert_eq!(score.to_bits(), expected.to_bits(), "dot_rows row {row}, len {len}");
            }
            let mut y = q0.clone();
            axpy(&mut y, 0.6, &p);
            let expected: Vec<f32> = q0.iter().zip(&p).map(|(y, x)| y + 0.6 * x).collect();
            assert_eq!(bits(&y), bits(&expected), "axpy, len {len}");
        }
    }
}
