//! SatImp forget term (open-unlearning's SatImp): token-weighted gradient ascent whose weights
//! favour tokens the model is sure of ("saturation", p_t^β1) and still gets wrong somewhat
//! ("importance", (1 − p_t)^β2):
//!   L = −mean_t ( p_t^β1 · (1 − p_t)^β2 · CE_t ),  CE_t = −log p_t,
//! over the answer tokens of the batch, with the weights detached; β1 = 5, β2 = 1. The `satimp`
//! method adds GD with γ = 0.1, α = 1.
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{Ctx, Needs, Term};
use crate::config::{Check, Validate};
use crate::error::Result;

/// `token_lp`: [b, t] log p of each target (any value off-mask), `mask`: [b, t]. Scalar.
pub fn satimp(token_lp: &Tensor, mask: &Tensor, beta1: f64, beta2: f64) -> Result<Tensor> {
    let p = token_lp.exp()?.detach();
    let w_sat = p.powf(beta1)?;
    let w_imp = p.affine(-1.0, 1.0)?.clamp(0.0, 1.0)?.powf(beta2)?;
    let w = (w_sat * w_imp)?.detach();
    let ce = token_lp.neg()?;
    let n = mask
        .sum_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?
        .max(1.0);
    Ok(((w * ce)?.mul(mask)?.sum_all()? / -n)?)
}

/// SatImp's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Satimp {
    pub beta1: f64,
    pub beta2: f64,
}

impl Default for Satimp {
    fn default() -> Self {
        Satimp {
            beta1: 5.0,
            beta2: 1.0,
        }
    }
}

impl Validate for Satimp {
    fn check(&self, c: &mut Check) {
        c.non_negative("beta1", self.beta1);
        c.non_negative("beta2", self.beta2);
    }
}

impl Term for Satimp {
    const FORMULA: &'static str = "-mean_t (p_t^beta1 (1 - p_t)^beta2 CE_t), weights detached";
    const WEIGHT: f64 = 0.1;
    fn needs(&self) -> Needs {
        Needs::default()
    }
    fn loss(&self, c: &Ctx) -> Result<Tensor> {
        let b = c.forget()?;
        let lp = c.logprobs(&b)?;
        satimp(&lp, &b.mask, self.beta1, self.beta2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unlearn::objective::testutil::*;
    use candle_core::Var;

    /// By hand: p = [.5, .25, .9] with the third unlabelled, β1 = 5, β2 = 1:
    /// w = [.5^5·.5, .25^5·.75] = [1/64, 0.000732421875]; L = −(w0·ln 2 + w1·ln 4)/2.
    /// The gradient wrt log p_t is +w_t/n (weights detached).
    #[test]
    fn values_and_detached_weights() {
        let lp = [0.5f64.ln(), 0.25f64.ln(), 0.9f64.ln()];
        let m = t(&[1.0, 1.0, 0.0]);
        let (w0, w1) = (0.5f64.powi(6), 0.25f64.powi(5) * 0.75);
        let v = satimp(&t(&lp), &m, 5.0, 1.0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let want = -(w0 * 2f64.ln() + w1 * 4f64.ln()) / 2.0;
        assert!((v - want).abs() < 1e-15, "{v} vs {want}");
        let x = Var::new(&lp, &candle_core::Device::Cpu).unwrap();
        let g = satimp(x.as_tensor(), &m, 5.0, 1.0)
            .unwrap()
            .backward()
            .unwrap();
        let g = g.get(x.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
        let want = [w0 / 2.0, w1 / 2.0, 0.0];
        for (a, b) in g.iter().zip(want) {
            assert!((a - b).abs() < 1e-15, "{g:?}");
        }
        // β1 = β2 = 0: plain token-mean gradient ascent
        let v = satimp(&t(&lp), &m, 0.0, 0.0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((v - (lp[0] + lp[1]) / 2.0).abs() < 1e-15);
    }
}
