//! Unlearning objectives: forget terms and retain terms, one file each, as functions of model
//! outputs. Formulas follow `METHODS.md`; every function documents its shapes. Batch means are
//! taken over items (rows), token means over labelled positions.
pub mod ap;
pub mod dpo;
pub mod ga;
pub mod gd;
pub mod idk;
pub mod kl;
pub mod me;
pub mod method;
pub mod npo;
pub mod rmu;
pub mod simnpo;
pub mod wga;

use candle_core::Tensor;

use crate::error::Result;

/// Numerically stable log σ(x) = (x − |x|)/2 − log(1 + exp(−|x|)), element-wise. Written with
/// (x − |x|)/2 rather than min(x, 0) so the gradient is exact (σ(−x) = 1/2) at x = 0, where NPO
/// and DPO start (θ = ref): the kinks of the two parts cancel whichever one-sided derivative of
/// |x| autograd takes at 0.
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let a = x.abs()?;
    let soft = (a.neg()?.exp()? + 1.0)?.log()?;
    Ok((((x - &a)? * 0.5)? - soft)?)
}

#[cfg(test)]
pub(crate) mod testutil {
    use candle_core::{Device, Tensor, Var};

    pub fn t(v: &[f64]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    /// Central finite differences of a scalar function of one f64 vector against autograd.
    pub fn check_grad(x0: &[f64], f: impl Fn(&Tensor) -> Tensor) {
        let x = Var::new(x0, &Device::Cpu).unwrap();
        let g = f(x.as_tensor()).backward().unwrap();
        let ga = g.get(x.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
        for i in 0..x0.len() {
            let eps = 1e-6;
            let mut p = x0.to_vec();
            p[i] += eps;
            let mut m = x0.to_vec();
            m[i] -= eps;
            let fd = (f(&t(&p)).to_scalar::<f64>().unwrap()
                - f(&t(&m)).to_scalar::<f64>().unwrap())
                / (2.0 * eps);
            assert!(
                (fd - ga[i]).abs() < 1e-6 * (1.0 + fd.abs()),
                "d/dx[{i}]: fd {fd} autograd {}",
                ga[i]
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn log_sigmoid_values_and_gradient() {
        // Reference: torch.nn.functional.logsigmoid([-50, -1, 0, 2, 40]).
        let v = log_sigmoid(&t(&[-50.0, -1.0, 0.0, 2.0, 40.0]))
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let want = [
            -50.0,
            -1.3132616875182228,
            -std::f64::consts::LN_2,
            -0.12692801104297263,
            -4.248354255291589e-18,
        ];
        for (a, b) in v.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        check_grad(&[-3.0, -0.2, 0.0, 0.7, 5.0], |x| {
            log_sigmoid(x).unwrap().sum_all().unwrap()
        });
    }
}
