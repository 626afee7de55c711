//! KL retain term: mean over answer positions of KL(p_ref ‖ p_θ) = Σ_v p_ref(v)·(log p_ref(v) −
//! log p_θ(v)) on retain inputs (masked to label positions). Needs a resident frozen reference.
use candle_core::{Tensor, D};

use crate::error::Result;
use crate::ops::log_softmax_last_dim;
use serde::{Deserialize, Serialize};

use super::{Ctx, Needs, Term};
use crate::config::{Check, Validate};

/// `logits`, `ref_logits`: [b, t, V]; `mask`: [b, t]. Scalar.
pub fn kl(logits: &Tensor, ref_logits: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let lp = log_softmax_last_dim(logits)?;
    let lq = log_softmax_last_dim(&ref_logits.detach())?;
    let per = (lq.exp()? * (lq - lp)?)?.sum(D::Minus1)?; // [b, t]
    let n = mask
        .sum_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?
        .max(1.0);
    Ok(((per * mask)?.sum_all()? / n)?)
}

/// KL to the frozen reference on the retain partners' answer positions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kl {}

impl Validate for Kl {
    fn check(&self, _c: &mut Check) {}
}

impl Term for Kl {
    const FORMULA: &'static str = "mean_t KL(p_ref || p_theta) on retain answer positions";
    fn needs(&self) -> Needs {
        Needs {
            retain_set: true,
            reference_model: true,
            ..Needs::default()
        }
    }
    fn loss(&self, c: &Ctx) -> Result<Tensor> {
        let b = c.retain()?;
        let r = c.reference()?.forward(&b.input)?.detach();
        kl(&c.model.forward(&b.input)?, &r, &b.mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unlearn::objective::testutil::*;
    use candle_core::Device;

    /// By hand: p_ref = softmax([0, ln 3]) = [.25, .75], p_θ = uniform → KL = .25 ln .5 + .75 ln 1.5.
    #[test]
    fn values_and_gradient() {
        let r = Tensor::new(&[[[0.0f64, 3f64.ln()], [5.0, 5.0]]], &Device::Cpu).unwrap();
        let th = Tensor::new(&[[[1.0f64, 1.0], [0.0, 9.0]]], &Device::Cpu).unwrap();
        let m = Tensor::new(&[[1.0f64, 0.0]], &Device::Cpu).unwrap();
        let v = kl(&th, &r, &m).unwrap().to_scalar::<f64>().unwrap();
        assert!(
            (v - (0.25 * 0.5f64.ln() + 0.75 * 1.5f64.ln())).abs() < 1e-12,
            "{v}"
        );
        assert_eq!(kl(&r, &r, &m).unwrap().to_scalar::<f64>().unwrap(), 0.0);
        check_grad(&[0.2, -0.4, 1.0, 0.3], |x| {
            kl(
                &x.reshape((1, 2, 2)).unwrap(),
                &r,
                &t(&[1.0, 1.0]).reshape((1, 2)).unwrap(),
            )
            .unwrap()
        });
    }
}
