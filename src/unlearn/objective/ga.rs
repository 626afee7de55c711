//! GA (gradient ascent) forget term: L = −mean_i nll_mean(a_i | q_i).
use candle_core::Tensor;

use crate::error::Result;

/// `nll_mean`: [b] per-item mean answer NLL under θ. Returns a scalar.
pub fn ga(nll_mean: &Tensor) -> Result<Tensor> {
    Ok(nll_mean.mean_all()?.neg()?)
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
