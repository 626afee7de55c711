//! WGA (token-weighted gradient ascent) forget term: L = −mean_t(p_t^β · CE_t) over the answer
//! tokens of the batch, with the weights p_t^β = exp(β·log p_t) detached; β = 1.
use candle_core::Tensor;

use crate::error::Result;
use serde::{Deserialize, Serialize};

use super::{Ctx, Needs, Term};
use crate::config::{Check, Validate};

/// `token_lp`: [b, t] log p of each target (any value off-mask), `mask`: [b, t]. Scalar.
pub fn wga(token_lp: &Tensor, mask: &Tensor, beta: f64) -> Result<Tensor> {
    let w = (token_lp * beta)?.exp()?.detach();
    let ce = token_lp.neg()?;
    let n = mask
        .sum_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?
        .max(1.0);
    Ok(((w * ce)?.mul(mask)?.sum_all()? / -n)?)
}

/// Token-weighted gradient ascent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Wga {
    pub beta: f64,
}

impl Default for Wga {
    fn default() -> Self {
        Wga { beta: 1.0 }
    }
}

impl Validate for Wga {
    fn check(&self, c: &mut Check) {
        c.non_negative("beta", self.beta);
    }
}

impl Term for Wga {
    const FORMULA: &'static str = "-mean_t (p_t^beta CE_t), weights detached";
    fn needs(&self) -> Needs {
        Needs::default()
    }
    fn loss(&self, c: &Ctx) -> Result<Tensor> {
        let b = c.forget()?;
        let lp = c.logprobs(&b)?;
        wga(&lp, &b.mask, self.beta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unlearn::objective::testutil::*;
    use candle_core::Var;

    /// By hand: log p = [ln .5, ln .25] (both labelled), β = 1 → −(0.5·ln 2 + 0.25·ln 4)/2.
    /// The gradient wrt log p_t is +w_t/n (weights detached), not the full product rule.
    #[test]
    fn values_and_detached_weights() {
        let lp = [0.5f64.ln(), 0.25f64.ln()];
        let m = t(&[1.0, 1.0]);
        let v = wga(&t(&lp), &m, 1.0).unwrap().to_scalar::<f64>().unwrap();
        assert!((v + (0.5 * 2f64.ln() + 0.25 * 4f64.ln()) / 2.0).abs() < 1e-12);
        let x = Var::new(&lp, &candle_core::Device::Cpu).unwrap();
        let g = wga(x.as_tensor(), &m, 1.0).unwrap().backward().unwrap();
        let g = g.get(x.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
        assert!(
            (g[0] - 0.25).abs() < 1e-12 && (g[1] - 0.125).abs() < 1e-12,
            "{g:?}"
        );
    }
}
