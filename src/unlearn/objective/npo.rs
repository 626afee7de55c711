//! NPO forget term: L = mean_i −(2/β)·log σ(β·(nll_sum(a_i; θ) − nll_sum(a_i; ref))), β = 0.1.
//! The reference NLLs are computed once before training.
use candle_core::Tensor;

use super::log_sigmoid;
use crate::error::Result;
use serde::{Deserialize, Serialize};

use super::{Ctx, Needs, Term};
use crate::config::{Check, Validate};

/// `nll_sum`, `ref_nll_sum`: [b] summed answer NLL under θ and under the reference. Scalar.
pub fn npo(nll_sum: &Tensor, ref_nll_sum: &Tensor, beta: f64) -> Result<Tensor> {
    let x = ((nll_sum - ref_nll_sum)? * beta)?;
    Ok((log_sigmoid(&x)?.mean_all()? * (-2.0 / beta))?)
}

/// Negative preference optimisation against the input model's answer scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Npo {
    pub beta: f64,
}

impl Default for Npo {
    fn default() -> Self {
        Npo { beta: 0.1 }
    }
}

impl Validate for Npo {
    fn check(&self, c: &mut Check) {
        c.positive("beta", self.beta);
    }
}

impl Term for Npo {
    const FORMULA: &'static str =
        "mean_i -(2/beta) log sigmoid(beta (nll_sum(a_i; theta) - nll_sum(a_i; ref)))";
    fn needs(&self) -> Needs {
        Needs {
            ref_answer_scores: true,
            ..Needs::default()
        }
    }
    fn loss(&self, c: &Ctx) -> Result<Tensor> {
        let b = c.forget()?;
        let nll = c.sum_logprobs(&b)?.neg()?;
        npo(&nll, &c.ref_answers()?.neg()?, self.beta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unlearn::objective::testutil::*;
    /// Reference: −(2/0.1)·logsigmoid(0.1·[2−1, 5−7]) averaged, by hand:
    /// logsigmoid(0.1) = −0.6443966600735709, logsigmoid(−0.2) = −0.7981388693815918.
    #[test]
    fn values_and_gradient() {
        let v = npo(&t(&[2.0, 5.0]), &t(&[1.0, 7.0]), 0.1)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let want = 20.0 * (0.6443966600735709 + 0.7981388693815918) / 2.0;
        assert!((v - want).abs() < 1e-9, "{v} vs {want}");
        // At θ = ref the loss is (2/β)·log 2 and its gradient wrt nll_sum is 1/b (ascent halved).
        check_grad(&[3.0, 4.0, -1.0], |x| {
            npo(x, &t(&[2.0, 6.0, 0.0]), 0.1).unwrap()
        });
    }
}
