//! GD retain term (gradient descent on the retain set): L = mean_i nll_mean(a_r | q_r).
use candle_core::Tensor;

use crate::error::Result;
use serde::{Deserialize, Serialize};

use super::{Ctx, Needs, Term};
use crate::config::{Check, Validate};

/// `nll_mean`: [b] per-item mean answer NLL on retain items. Returns a scalar.
pub fn gd(nll_mean: &Tensor) -> Result<Tensor> {
    Ok(nll_mean.mean_all()?)
}

/// Gradient descent on the retain partners.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gd {}

impl Validate for Gd {
    fn check(&self, _c: &mut Check) {}
}

impl Term for Gd {
    const FORMULA: &'static str = "mean_i nll_mean(a_r | q_r) on retain partners";
    fn needs(&self) -> Needs {
        Needs {
            retain_set: true,
            ..Needs::default()
        }
    }
    fn loss(&self, c: &Ctx) -> Result<Tensor> {
        gd(&c.nll_mean(&c.retain()?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unlearn::objective::testutil::t;
    #[test]
    fn mean() {
        assert_eq!(
            gd(&t(&[1.0, 3.0, 5.0]))
                .unwrap()
                .to_scalar::<f64>()
                .unwrap(),
            3.0
        );
    }
}
