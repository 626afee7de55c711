//! Null-space projection and the AlphaEdit update, in f64 (METHODS.md, UniErase step 2).
//!
//! Keys are `down_proj` inputs (d = intermediate size); residuals live in the hidden space
//! (h = hidden size). With K₀ the keys of a general corpus (the knowledge to protect):
//! - second moment  C₀ = K₀K₀ᵀ                                  [d, d]
//! - projector      P = U Uᵀ, U = eigenvectors of C₀ with eigenvalue < threshold    [d, d]
//! - update         Δ = R Kᵀ P (K Kᵀ P + C_prev P + λ I)⁻¹         [h, d]
//!   for new keys K [d, n] and residuals R [h, n]; C_prev = Σ K Kᵀ of earlier edits.
//!
//! By the push-through identity (PM + λI)⁻¹P = P(MP + λI)⁻¹, Δ = R Kᵀ (P M + λI)⁻¹ P with
//! M = K Kᵀ + C_prev, so Δ k₀ = 0 whenever P k₀ = 0: outputs for keys in the protected subspace do
//! not change. The weight becomes W + Δ (`down_proj.weight` is [h, d]).
use faer::prelude::*;
use faer::{Mat, Side};

use crate::error::{Error, Result};

/// Running second moment Σ k kᵀ of keys (f64), with the number of keys seen.
#[derive(Debug, Clone)]
pub struct SecondMoment {
    pub d: usize,
    pub n: usize,
    /// Row-major [d, d].
    pub sum: Vec<f64>,
}

impl SecondMoment {
    pub fn new(d: usize) -> Self {
        SecondMoment {
            d,
            n: 0,
            sum: vec![0.0; d * d],
        }
    }

    /// Add keys given row-wise: `keys` is [n, d] row-major (one key per row).
    pub fn add_rows(&mut self, keys: &[f32]) -> Result<()> {
        let d = self.d;
        if !keys.len().is_multiple_of(d) {
            return Err(Error::Invalid(format!(
                "second moment: {} values are not rows of {d}",
                keys.len()
            )));
        }
        let k = Mat::<f64>::from_fn(keys.len() / d, d, |i, j| keys[i * d + j] as f64);
        let g = k.transpose() * &k;
        for i in 0..d {
            for j in 0..d {
                self.sum[i * d + j] += g[(i, j)];
            }
        }
        self.n += keys.len() / d;
        Ok(())
    }

    pub fn to_mat(&self) -> Mat<f64> {
        Mat::from_fn(self.d, self.d, |i, j| self.sum[i * self.d + j])
    }

    /// The mean second moment Σ k kᵀ / n: AlphaEdit thresholds the eigenvalues of this (its
    /// `mom2` statistic), so the threshold does not depend on the corpus size.
    pub fn mean(&self) -> Mat<f64> {
        let n = self.n.max(1) as f64;
        Mat::from_fn(self.d, self.d, |i, j| self.sum[i * self.d + j] / n)
    }
}

/// P = U Uᵀ over the eigenvectors of the symmetric `c` whose eigenvalue is below `threshold`
/// (AlphaEdit: 2e-2). Returns (P, dimension of the null space).
pub fn null_space_projector(c: &Mat<f64>, threshold: f64) -> Result<(Mat<f64>, usize)> {
    if c.nrows() != c.ncols() {
        return Err(Error::Invalid(format!(
            "projector: matrix is {}x{}, not square",
            c.nrows(),
            c.ncols()
        )));
    }
    let evd = c
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| Error::Invalid(format!("eigendecomposition failed: {e:?}")))?;
    let s = evd.S().column_vector();
    let u = evd.U();
    let keep: Vec<usize> = (0..s.nrows()).filter(|&i| s[i] < threshold).collect();
    let uk = Mat::<f64>::from_fn(u.nrows(), keep.len(), |i, j| u[(i, keep[j])]);
    Ok((&uk * uk.transpose(), keep.len()))
}

/// Δ = R Kᵀ P (K Kᵀ P + C_prev P + λ I)⁻¹ (shapes: R [h, n], K [d, n], P and C_prev [d, d];
/// result [h, d]). Solved with a partial-pivoting LU of the [d, d] system.
pub fn alphaedit_update(
    r: &Mat<f64>,
    k: &Mat<f64>,
    p: &Mat<f64>,
    c_prev: &Mat<f64>,
    lambda: f64,
) -> Result<Mat<f64>> {
    let d = k.nrows();
    if r.ncols() != k.ncols() || p.nrows() != d || p.ncols() != d || c_prev.nrows() != d {
        return Err(Error::Invalid(format!(
            "alphaedit: R {}x{}, K {}x{}, P {}x{}, C_prev {}x{} do not fit",
            r.nrows(),
            r.ncols(),
            k.nrows(),
            k.ncols(),
            p.nrows(),
            p.ncols(),
            c_prev.nrows(),
            c_prev.ncols()
        )));
    }
    let a = system(k, p, c_prev, lambda);
    let mut delta = r * k.transpose() * p; // [h, d]
    a.partial_piv_lu().rsolve_in_place(delta.as_mut());
    Ok(delta)
}

/// The [d, d] matrix A = K Kᵀ P + C_prev P + λ I of the update (Δ A = R Kᵀ P).
pub fn system(k: &Mat<f64>, p: &Mat<f64>, c_prev: &Mat<f64>, lambda: f64) -> Mat<f64> {
    let d = k.nrows();
    let m = k * k.transpose() + c_prev;
    let mut a = &m * p;
    for i in 0..d {
        a[(i, i)] += lambda;
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::rng::Rng;

    fn randn(r: usize, c: usize, rng: &mut Rng) -> Mat<f64> {
        Mat::from_fn(r, c, |_, _| rng.normal())
    }

    fn max_abs(m: &Mat<f64>) -> f64 {
        let mut x: f64 = 0.0;
        for i in 0..m.nrows() {
            for j in 0..m.ncols() {
                x = x.max(m[(i, j)].abs());
            }
        }
        x
    }

    /// d = 12 key dimensions; the protected keys K₀ span 7 of them (rank 7 from 40 samples), so
    /// the projector has rank 5. The update solves its normal equations Δ A = R Kᵀ P to 1e-8 and
    /// leaves outputs for protected keys unchanged (Δ k₀ ≈ 0), while new keys do move.
    #[test]
    fn update_solves_normal_equations_and_spares_protected_keys() {
        let mut rng = Rng::for_item(0, "alphaedit-test", 0);
        let (d, h, n) = (12, 6, 4);
        let basis = randn(d, 7, &mut rng);
        let k0 = &basis * randn(7, 40, &mut rng); // [d, 40], rank 7
        let mut sm = SecondMoment::new(d);
        let rows: Vec<f32> = (0..40)
            .flat_map(|j| (0..d).map(move |i| (i, j)))
            .map(|(i, j)| k0[(i, j)] as f32)
            .collect();
        sm.add_rows(&rows).unwrap();
        assert_eq!(sm.n, 40);
        // the accumulated moment equals K₀K₀ᵀ up to the f32 rounding of the keys
        let c0 = &k0 * k0.transpose();
        assert!(max_abs(&(sm.to_mat() - &c0)) < 1e-5 * max_abs(&c0));
        let (p, null_dim) = null_space_projector(&c0, 2e-2).unwrap();
        assert_eq!(null_dim, 5);
        // P is a projector: P² = P, and P k₀ ≈ 0
        assert!(max_abs(&(&p * &p - &p)) < 1e-10);
        assert!(max_abs(&(&p * &k0)) < 1e-10 * max_abs(&k0));

        let k = randn(d, n, &mut rng);
        let r = randn(h, n, &mut rng);
        let c_prev = {
            let kp = randn(d, 3, &mut rng);
            &kp * kp.transpose()
        };
        let delta = alphaedit_update(&r, &k, &p, &c_prev, 10.0).unwrap();
        assert_eq!((delta.nrows(), delta.ncols()), (h, d));
        let a = system(&k, &p, &c_prev, 10.0);
        let resid = &delta * &a - &r * k.transpose() * &p;
        assert!(
            max_abs(&resid) <= 1e-8,
            "normal-equation residual {}",
            max_abs(&resid)
        );
        // protected subspace untouched (exact keys of span(K0), built in f64)
        let k0_exact = &basis * randn(7, 5, &mut rng);
        let moved = &delta * &k0_exact;
        assert!(
            max_abs(&moved) < 1e-10 * max_abs(&delta) * max_abs(&k0_exact),
            "Δ k0 = {}",
            max_abs(&moved)
        );
        // the edited keys do move, towards R
        assert!(max_abs(&(&delta * &k)) > 1e-3);
    }

    /// Without protection (P = I, C_prev = 0) the update is ridge regression:
    /// Δ = R Kᵀ (K Kᵀ + λI)⁻¹; with λ → 0 and n ≤ d, Δ K → R.
    #[test]
    fn unconstrained_update_is_ridge_regression() {
        let mut rng = Rng::for_item(1, "alphaedit-test", 0);
        let (d, h, n) = (8, 3, 3);
        let k = randn(d, n, &mut rng);
        let r = randn(h, n, &mut rng);
        let eye = Mat::<f64>::from_fn(d, d, |i, j| if i == j { 1.0 } else { 0.0 });
        let zero = Mat::<f64>::zeros(d, d);
        let delta = alphaedit_update(&r, &k, &eye, &zero, 1e-9).unwrap();
        assert!(max_abs(&(&delta * &k - &r)) < 1e-6);
    }
}
