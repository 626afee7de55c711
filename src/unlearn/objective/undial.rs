//! UNDIAL forget term (self-distillation with adjusted logits): the model is trained toward the
//! reference's own distribution with the true token's logit lowered by β,
//!   q_t = softmax(z_t^ref − β·onehot(y_t)),   L = mean_t CE(q_t, p_θ(· | x_<t)) = −mean_t Σ_v q_t(v) log p_t(v),
//! over the answer positions, with the reference frozen (the resident copy of the input
//! model); β = 10. Computed without materialising q: with r = softmax(z^ref) and e = exp(−β),
//! q(v) = r(v)·(1 − [v = y](1 − e)) / (1 − r(y)(1 − e)), so
//!   CE = −( Σ_v r(v) log p(v) − r(y)(1 − e) log p(y) ) / (1 − r(y)(1 − e)).
//! The `undial` method has no retain term (open-unlearning's α = 0).
use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};

use super::{Ctx, Needs, Term};
use crate::config::{Check, Validate};
use crate::error::Result;
use crate::ops::log_softmax_last_dim;

/// `logits`, `ref_logits`: [b, t, V]; `targets`: [b, t] u32; `mask`: [b, t]. Scalar.
pub fn undial(
    logits: &Tensor,
    ref_logits: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
    beta: f64,
) -> Result<Tensor> {
    let lp = log_softmax_last_dim(logits)?;
    let lr = log_softmax_last_dim(&ref_logits.detach())?;
    let r = lr.exp()?;
    let cross = (r * &lp)?.sum(D::Minus1)?; // Σ_v r(v) log p(v): [b, t]
    let idx = targets.unsqueeze(D::Minus1)?;
    let lp_y = lp.gather(&idx, D::Minus1)?.squeeze(D::Minus1)?;
    let r_y = lr.gather(&idx, D::Minus1)?.squeeze(D::Minus1)?.exp()?;
    let k = 1.0 - (-beta).exp();
    let shifted = (r_y * k)?; // r(y)(1 − e)
    let num = (cross - (&shifted * lp_y)?)?;
    let den = shifted.affine(-1.0, 1.0)?;
    let ce = (num / den)?.neg()?;
    let n = mask
        .sum_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?
        .max(1.0);
    Ok(((ce * mask)?.sum_all()? / n)?)
}

/// UNDIAL's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Undial {
    pub beta: f64,
}

impl Default for Undial {
    fn default() -> Self {
        Undial { beta: 10.0 }
    }
}

impl Validate for Undial {
    fn check(&self, c: &mut Check) {
        c.non_negative("beta", self.beta);
    }
}

impl Term for Undial {
    const FORMULA: &'static str =
        "mean_t CE(softmax(z_ref - beta onehot(y)), p_theta) over answer positions";
    fn needs(&self) -> Needs {
        Needs {
            reference_model: true,
            ..Needs::default()
        }
    }
    fn loss(&self, c: &Ctx) -> Result<Tensor> {
        let b = c.forget()?;
        let r = c.reference()?.forward(&b.input)?.detach();
        undial(
            &c.model.forward(&b.input)?,
            &r,
            &b.targets,
            &b.mask,
            self.beta,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unlearn::objective::testutil::*;
    use candle_core::Device;

    /// By hand on one position, V = 3: z_ref = [0, ln 2, ln 3] (r = [1, 2, 3]/6), y = 2, β = ln 3
    /// (e = 1/3): q ∝ [1, 2, 1] → [.25, .5, .25]; z = [0, 0, ln 2] (p = [.25, .25, .5]):
    /// CE = −(.25 ln .25 + .5 ln .25 + .25 ln .5). β = 0 gives the plain distillation CE(r, p).
    #[test]
    fn values_against_the_explicit_target_and_gradient() {
        let dev = Device::Cpu;
        let z = Tensor::new(&[[[0.0f64, 0.0, 2f64.ln()]]], &dev).unwrap();
        let zr = Tensor::new(&[[[0.0f64, 2f64.ln(), 3f64.ln()]]], &dev).unwrap();
        let y = Tensor::new(&[[2u32]], &dev).unwrap();
        let m = Tensor::new(&[[1.0f64]], &dev).unwrap();
        let v = undial(&z, &zr, &y, &m, 3f64.ln())
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let want = -(0.25 * 0.25f64.ln() + 0.5 * 0.25f64.ln() + 0.25 * 0.5f64.ln());
        assert!((v - want).abs() < 1e-12, "{v} vs {want}");
        let v0 = undial(&z, &zr, &y, &m, 0.0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let want0 = -(1.0 / 6.0 * 0.25f64.ln() + 2.0 / 6.0 * 0.25f64.ln() + 0.5 * 0.5f64.ln());
        assert!((v0 - want0).abs() < 1e-12, "{v0} vs {want0}");
        // a masked position contributes nothing
        let z2 = Tensor::new(&[[[0.0f64, 0.0, 2f64.ln()], [5.0, -1.0, 0.0]]], &dev).unwrap();
        let zr2 = Tensor::new(&[[[0.0f64, 2f64.ln(), 3f64.ln()], [0.0, 0.0, 0.0]]], &dev).unwrap();
        let y2 = Tensor::new(&[[2u32, 0]], &dev).unwrap();
        let m2 = Tensor::new(&[[1.0f64, 0.0]], &dev).unwrap();
        let v2 = undial(&z2, &zr2, &y2, &m2, 3f64.ln())
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((v2 - want).abs() < 1e-12);
        // gradient wrt the model's logits
        check_grad(&[0.3, -1.0, 2.0, 0.5, 0.0, 1.5], |x| {
            let x = x.reshape((1, 2, 3)).unwrap();
            let zr = Tensor::new(&[[[1.0f64, 0.0, -1.0], [0.2, 0.4, 0.1]]], &Device::Cpu).unwrap();
            let y = Tensor::new(&[[1u32, 2]], &Device::Cpu).unwrap();
            let m = Tensor::new(&[[1.0f64, 1.0]], &Device::Cpu).unwrap();
            undial(&x, &zr, &y, &m, 2.0).unwrap()
        });
    }
}
