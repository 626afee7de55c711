//! IDK forget term: fine-tune forget questions toward a refusal, L = mean_i nll_mean(y_idk | q_i).
use candle_core::Tensor;

use crate::error::Result;
use serde::{Deserialize, Serialize};

use super::{Ctx, Needs, Term};
use crate::config::{Check, Validate};

/// `nll_mean_idk`: [b] per-item mean NLL of the paired refusal. Returns a scalar.
pub fn idk(nll_mean_idk: &Tensor) -> Result<Tensor> {
    Ok(nll_mean_idk.mean_all()?)
}

/// Fine-tuning the forget questions toward refusals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Idk {}

impl Validate for Idk {
    fn check(&self, _c: &mut Check) {}
}

impl Term for Idk {
    const FORMULA: &'static str = "mean_i nll_mean(y_idk | q_i)";
    fn needs(&self) -> Needs {
        Needs {
            forget_refusals: true,
            ..Needs::default()
        }
    }
    fn loss(&self, c: &Ctx) -> Result<Tensor> {
        idk(&c.nll_mean(&c.forget_refusals()?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unlearn::objective::testutil::t;
    #[test]
    fn mean() {
        assert_eq!(
            idk(&t(&[0.5, 1.5])).unwrap().to_scalar::<f64>().unwrap(),
            1.0
        );
    }
}
