//! CE-U forget term (cross-entropy unlearning, arXiv:2503.01224): cross-entropy of the model
//! against its own detached distribution with the true token removed,
//!   q_t = softmax(z̄_t with z̄_t(y_t) = −∞),   L = mean_t CE(q_t, p_θ) = −mean_t Σ_{v≠y} q_t(v) log p_t(v),
//! z̄ the detached logits, over the answer positions except the first `ignore_first` answer
//! tokens of each item (the paper's footnote; open-unlearning's default 1). No retain term.
use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use super::{Ctx, Needs, Term};
use crate::config::{Check, Validate};
use crate::error::Result;
use crate::ops::log_softmax_last_dim;

/// `logits`: [b, t, V]; `targets`: [b, t] u32; `mask`: [b, t] (1 on the positions to include).
/// Scalar.
pub fn ceu(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (b, t, v) = logits.dims3()?;
    let lp = log_softmax_last_dim(logits)?;
    let vocab = Tensor::arange(0u32, v as u32, logits.device())?.reshape((1, 1, v))?;
    let is_y = targets
        .unsqueeze(D::Minus1)?
        .broadcast_as((b, t, v))?
        .eq(&vocab.broadcast_as((b, t, v))?)?;
    let neg_inf =
        Tensor::full(f64::NEG_INFINITY, (b, t, v), logits.device())?.to_dtype(logits.dtype())?;
    let z_bar = is_y.where_cond(&neg_inf, &logits.detach())?;
    let q = candle_nn::ops::softmax_last_dim(&z_bar)?.detach();
    // q(y) = 0: leave log p(y) out of the sum (0 · log p(y) is fine, but keep −∞ logits away)
    let ce = (q * lp)?.sum(D::Minus1)?.neg()?;
    let n = mask
        .sum_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?
        .max(1.0);
    Ok(((ce * mask)?.sum_all()? / n)?)
}

/// `mask` [b, t] without the first `n` ones of each row.
pub fn drop_first(mask: &Tensor, n: usize) -> Result<Tensor> {
    if n == 0 {
        return Ok(mask.clone());
    }
    let rows = mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let (b, t) = mask.dims2()?;
    let mut out = vec![0f32; b * t];
    for (r, row) in rows.iter().enumerate() {
        let mut seen = 0;
        for (j, &x) in row.iter().enumerate() {
            if x != 0.0 {
                seen += 1;
                if seen > n {
                    out[r * t + j] = x;
                }
            }
        }
    }
    Ok(Tensor::from_vec(out, (b, t), mask.device())?.to_dtype(mask.dtype())?)
}

/// CE-U's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ceu {
    /// Leave out the first this many answer tokens of each item.
    pub ignore_first: usize,
}

impl Default for Ceu {
    fn default() -> Self {
        Ceu { ignore_first: 1 }
    }
}

impl Validate for Ceu {
    fn check(&self, _c: &mut Check) {}
}

impl Term for Ceu {
    const FORMULA: &'static str =
        "mean_t CE(softmax(detached z with z_y = -inf), p_theta), answer positions after the first";
    fn needs(&self) -> Needs {
        Needs::default()
    }
    fn loss(&self, c: &Ctx) -> Result<Tensor> {
        let b = c.forget()?;
        let mask = drop_first(&b.mask, self.ignore_first)?;
        ceu(&c.model.forward(&b.input)?, &b.targets, &mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// By hand on one position, V = 3: z = [0, ln 2, ln 3], y = 1: q = [1, 0, 3]/4,
    /// p = [1, 2, 3]/6, CE = −(¼ ln(1/6) + ¾ ln(½)). Its gradient wrt z with q fixed is p − q.
    #[test]
    fn values_first_token_dropped_and_gradient() {
        let dev = Device::Cpu;
        let z = Tensor::new(&[[[0.0f64, 2f64.ln(), 3f64.ln()]]], &dev).unwrap();
        let y = Tensor::new(&[[1u32]], &dev).unwrap();
        let m = Tensor::new(&[[1.0f64]], &dev).unwrap();
        let v = ceu(&z, &y, &m).unwrap().to_scalar::<f64>().unwrap();
        let want = -(0.25 * (1.0f64 / 6.0).ln() + 0.75 * 0.5f64.ln());
        assert!((v - want).abs() < 1e-12, "{v} vs {want}");
        let x = candle_core::Var::from_tensor(&z).unwrap();
        let g = ceu(x.as_tensor(), &y, &m).unwrap().backward().unwrap();
        let g = g.get(x.as_tensor()).unwrap().flatten_all().unwrap();
        let g = g.to_vec1::<f64>().unwrap();
        let want = [1.0 / 6.0 - 0.25, 2.0 / 6.0, 3.0 / 6.0 - 0.75];
        for (a, b) in g.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{g:?}");
        }
        // the first labelled position of each row is left out
        let mk = Tensor::new(&[[0.0f64, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]], &dev).unwrap();
        assert_eq!(
            drop_first(&mk, 1).unwrap().to_vec2::<f64>().unwrap(),
            vec![vec![0.0, 0.0, 1.0, 0.0], vec![0.0, 1.0, 0.0, 0.0]]
        );
    }
}
