//! SimNPO forget term (reference-free): L = mean_i −(2/β)·log σ(β·nll_sum(a_i; θ)/|a_i| − δ),
//! β = 2.5 by default (2.5..4.5), δ = 0.
use candle_core::Tensor;

use super::log_sigmoid;
use crate::error::Result;
use serde::{Deserialize, Serialize};

use super::{Ctx, Needs, Term};
use crate::config::{Check, Validate};

/// `nll_mean`: [b] per-item length-normalised NLL under θ. Scalar.
pub fn simnpo(nll_mean: &Tensor, beta: f64, delta: f64) -> Result<Tensor> {
    let x = ((nll_mean * beta)? - delta)?;
    Ok((log_sigmoid(&x)?.mean_all()? * (-2.0 / beta))?)
}

/// Reference-free, length-normalised NPO.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Simnpo {
    pub beta: f64,
    pub delta: f64,
}

impl Default for Simnpo {
    fn default() -> Self {
        Simnpo {
            beta: 2.5,
            delta: 0.0,
        }
    }
}

impl Validate for Simnpo {
    fn check(&self, c: &mut Check) {
        c.positive("beta", self.beta);
        c.finite("delta", self.delta);
    }
}

impl Term for Simnpo {
    const FORMULA: &'static str = "mean_i -(2/beta) log sigmoid(beta nll_mean(a_i; theta) - delta)";
    fn needs(&self) -> Needs {
        Needs::default()
    }
    fn loss(&self, c: &Ctx) -> Result<Tensor> {
        let b = c.forget()?;
        let nll = c.nll_mean(&b)?;
        simnpo(&nll, self.beta, self.delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unlearn::objective::testutil::*;
    /// Reference by hand: β = 2.5, δ = 0.5, nll_mean = [0.2, 1.0] → x = [0, 2]:
    /// −(2/2.5)·(logsigmoid(0) + logsigmoid(2))/2 = 0.8·(std::f64::consts::LN_2 + 0.12692801104297263)/2.
    #[test]
    fn values_and_gradient() {
        let v = simnpo(&t(&[0.2, 1.0]), 2.5, 0.5)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let want = 0.8 * (std::f64::consts::LN_2 + 0.12692801104297263) / 2.0;
        assert!((v - want).abs() < 1e-12, "{v} vs {want}");
        check_grad(&[0.3, 2.0, 0.01], |x| simnpo(x, 3.0, 0.1).unwrap());
    }
}
