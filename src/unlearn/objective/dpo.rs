//! DPO forget term with the refusal as the preferred answer (summed log-probabilities, β = 0.1):
//! L = mean_i −(2/β)·log σ(β·[(logπθ(y_idk) − logπref(y_idk)) − (logπθ(a) − logπref(a))]).
use candle_core::Tensor;

use super::log_sigmoid;
use crate::error::Result;
use serde::{Deserialize, Serialize};

use super::{Ctx, Needs, Term};
use crate::config::{Check, Validate};

/// All inputs [b] summed log-probabilities: `lp_idk`/`ref_lp_idk` of the refusal, `lp_ans`/
/// `ref_lp_ans` of the forget answer, under θ and the reference. Scalar.
pub fn dpo(
    lp_idk: &Tensor,
    ref_lp_idk: &Tensor,
    lp_ans: &Tensor,
    ref_lp_ans: &Tensor,
    beta: f64,
) -> Result<Tensor> {
    let win = (lp_idk - ref_lp_idk)?;
    let lose = (lp_ans - ref_lp_ans)?;
    let x = ((win - lose)? * beta)?;
    Ok((log_sigmoid(&x)?.mean_all()? * (-2.0 / beta))?)
}

/// DPO with the refusal preferred over the forget answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dpo {
    pub beta: f64,
}

impl Default for Dpo {
    fn default() -> Self {
        Dpo { beta: 0.1 }
    }
}

impl Validate for Dpo {
    fn check(&self, c: &mut Check) {
        c.positive("beta", self.beta);
    }
}

impl Term for Dpo {
    const FORMULA: &'static str = "mean_i -(2/beta) log sigmoid(beta ((log p(y_idk) - log p_ref(y_idk)) - (log p(a) - log p_ref(a))))";
    fn needs(&self) -> Needs {
        Needs {
            forget_refusals: true,
            ref_answer_scores: true,
            ref_refusal_scores: true,
            ..Needs::default()
        }
    }
    fn loss(&self, c: &Ctx) -> Result<Tensor> {
        let bw = c.forget_refusals()?;
        let bl = c.forget()?;
        let lw = c.sum_logprobs(&bw)?;
        let ll = c.sum_logprobs(&bl)?;
        dpo(&lw, &c.ref_refusals()?, &ll, &c.ref_answers()?, self.beta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unlearn::objective::testutil::*;
    /// By hand: margins [(−3+5) − (−2+1), (−4+4) − (−6+6)] = [3, 0], β = 0.1:
    /// −20·(logsigmoid(0.3) + logsigmoid(0))/2 = 20·(0.5543552444685272 + std::f64::consts::LN_2)/2.
    #[test]
    fn values_and_gradient() {
        let v = dpo(
            &t(&[-3.0, -4.0]),
            &t(&[-5.0, -4.0]),
            &t(&[-2.0, -6.0]),
            &t(&[-1.0, -6.0]),
            0.1,
        )
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
        let want = 10.0 * (0.5543552444685272 + std::f64::consts::LN_2);
        assert!((v - want).abs() < 1e-9, "{v} vs {want}");
        check_grad(&[-1.0, -7.0], |x| {
            dpo(
                x,
                &t(&[-2.0, -3.0]),
                &t(&[-4.0, -1.0]),
                &t(&[-4.5, -2.0]),
                0.1,
            )
            .unwrap()
        });
    }
}
