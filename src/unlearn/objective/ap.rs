//! AP (answer preservation) retain term, no reference model, β = 0.1:
//! L = mean_i −(1/β)·log σ(−β·(logπθ(y_idk | q_r) − logπθ(a_r | q_r))), summed log-probs.
use candle_core::Tensor;

use super::log_sigmoid;
use crate::error::Result;
use serde::{Deserialize, Serialize};

use super::{Ctx, Needs, Term};
use crate::config::{Check, Validate};

/// `lp_idk`, `lp_ans`: [b] summed log-probabilities on retain questions. Scalar.
pub fn ap(lp_idk: &Tensor, lp_ans: &Tensor, beta: f64) -> Result<Tensor> {
    let x = ((lp_idk - lp_ans)? * -beta)?;
    Ok((log_sigmoid(&x)?.mean_all()? * (-1.0 / beta))?)
}

/// Answer preservation on the retain partners.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ap {
    pub beta: f64,
}

impl Default for Ap {
    fn default() -> Self {
        Ap { beta: 0.1 }
    }
}

impl Validate for Ap {
    fn check(&self, c: &mut Check) {
        c.positive("beta", self.beta);
    }
}

impl Term for Ap {
    const FORMULA: &'static str =
        "mean_i -(1/beta) log sigmoid(-beta (log p(y_idk | q_r) - log p(a_r | q_r)))";
    fn needs(&self) -> Needs {
        Needs {
            retain_set: true,
            retain_refusals: true,
            ..Needs::default()
        }
    }
    fn loss(&self, c: &Ctx) -> Result<Tensor> {
        let bi = c.retain_refusals()?;
        let ba = c.retain()?;
        let li = c.sum_logprobs(&bi)?;
        let la = c.sum_logprobs(&ba)?;
        ap(&li, &la, self.beta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unlearn::objective::testutil::*;
    /// By hand: lp_idk − lp_ans = [−10, 10], β = 0.1 → −10·(logsigmoid(1) + logsigmoid(−1))/2
    /// = 10·(0.31326168751822286 + 1.3132616875182228)/2.
    #[test]
    fn values_and_gradient() {
        let v = ap(&t(&[-12.0, -5.0]), &t(&[-2.0, -15.0]), 0.1)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(
            (v - 5.0 * (0.31326168751822286 + 1.3132616875182228)).abs() < 1e-9,
            "{v}"
        );
        check_grad(&[-3.0, -8.0, -1.0], |x| {
            ap(x, &t(&[-4.0, -2.0, -9.0]), 0.1).unwrap()
        });
    }
}
