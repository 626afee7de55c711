//! IDK forget term: fine-tune forget questions toward a refusal, L = mean_i nll_mean(y_idk | q_i).
use candle_core::Tensor;

use crate::error::Result;

/// `nll_mean_idk`: [b] per-item mean NLL of the paired refusal. Returns a scalar.
pub fn idk(nll_mean_idk: &Tensor) -> Result<Tensor> {
    Ok(nll_mean_idk.mean_all()?)
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
