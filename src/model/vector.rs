//! Small dense-vector kernels of the SGD step. Plain loops over `f32` slices: the compiler
//! vectorises them, and a fixed summation order keeps results bit-identical between runs.

/// Dot product of two equal-length slices.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Squared L2 norm.
pub fn norm_squared(a: &[f32]) -> f32 {
    dot(a, a)
}

/// Rescales `v` onto the L2 ball of radius `max_norm`; a non-finite vector is reset to zero.
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
}
