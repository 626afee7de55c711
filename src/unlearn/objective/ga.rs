//! GA (gradient ascent) forget term: L = −mean_i nll_mean(a_i | q_i).
use candle_core::Tensor;

use crate::error::Result;
use serde::{Deserialize, Serialize};

use super::{Ctx, Needs, Term};
use crate::config::{Check, Validate};

/// `nll_mean`: [b] per-item mean answer NLL under θ. Returns a scalar.
pub fn ga(nll_mean: &Tensor) -> Result<Tensor> {
    Ok(nll_mean.mean_all()?.neg()?)
}

/// Gradient ascent on the forget answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ga {}

impl Validate for Ga {
    fn check(&self, _c: &mut Check) {}
}

impl Term for Ga {
    const FORMULA: &'static str = "-mean_i nll_mean(a_i | q_i)";
    fn needs(&self) -> Needs {
        Needs::default()
    }
    fn loss(&self, c: &Ctx) -> Result<Tensor> {
        ga(&c.nll_mean(&c.forget()?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unlearn::objective::testutil::t;
    #[test]
    fn negated_mean() {
        assert_eq!(
            ga(&t(&[1.0, 3.0])).unwrap().to_scalar::<f64>().unwrap(),
            -2.0
        );
    }
}
