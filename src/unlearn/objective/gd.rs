//! GD retain term (gradient descent on the retain set): L = mean_i nll_mean(a_r | q_r).
use candle_core::Tensor;

use crate::error::Result;

/// `nll_mean`: [b] per-item mean answer NLL on retain items. Returns a scalar.
pub fn gd(nll_mean: &Tensor) -> Result<Tensor> {
    Ok(nll_mean.mean_all()?)
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
