//! ME (maximise entropy) forget term: mean over selected positions t of a divergence from the
//! uniform distribution U over the K-token vocabulary:
//! - `uniform_ce` (default): KL(U ‖ p) = −log K − (1/K)·Σ_v log p(v | x_<t)
//! - `entropy`: KL(p ‖ U) = log K − H(p) = log K + Σ_v p(v) log p(v)
//!
//! Positions: `prompt_and_answer` (default, every real token of the forget item, padding
//! excluded) or `answer` (label positions only); the caller passes the matching mask.
use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::ops::log_softmax_last_dim;

use super::{Ctx, Needs, Term};
use crate::config::{Check, Validate};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Divergence {
    #[default]
    UniformCe,
    Entropy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Positions {
    Answer,
    #[default]
    PromptAndAnswer,
}

/// Per-position divergence from uniform: logits [b, t, V] -> [b, t].
pub fn divergence_from_uniform(logits: &Tensor, div: Divergence) -> Result<Tensor> {
    let k = logits.dim(D::Minus1)? as f64;
    let lp = log_softmax_last_dim(logits)?;
    Ok(match div {
        Divergence::UniformCe => (lp.mean(D::Minus1)?.neg()? - k.ln())?,
        Divergence::Entropy => ((lp.exp()? * &lp)?.sum(D::Minus1)? + k.ln())?,
    })
}

/// logits [b, t, V], mask [b, t] (1 on the positions to include). Scalar.
pub fn me(logits: &Tensor, mask: &Tensor, div: Divergence) -> Result<Tensor> {
    let d = divergence_from_uniform(logits, div)?;
    let n = mask
        .sum_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?
        .max(1.0);
    Ok(((d * mask)?.sum_all()? / n)?)
}

/// Maximise entropy on the forget items (ME+GD: γ = 0.1).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Me {
    pub divergence: Divergence,
    pub positions: Positions,
}

impl Validate for Me {
    fn check(&self, _c: &mut Check) {}
}

impl Term for Me {
    const FORMULA: &'static str =
        "mean_t KL(U || p) (uniform_ce) or KL(p || U) (entropy) over forget positions";
    const WEIGHT: f64 = 0.1;
    fn needs(&self) -> Needs {
        Needs::default()
    }
    fn loss(&self, c: &Ctx) -> Result<Tensor> {
        let b = c.forget()?;
        let mask = match self.positions {
            Positions::Answer => &b.mask,
            Positions::PromptAndAnswer => &b.valid,
        };
        me(&c.model.forward(&b.input)?, mask, self.divergence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unlearn::objective::testutil::*;
    use candle_core::Device;

    /// Reference by hand for logits [0, ln 2, ln 3, ln 4] over K = 4: p = [1, 2, 3, 4]/10.
    /// uniform_ce = −ln 4 − mean(ln p) = −ln 4 − (ln 24 − 4 ln 10)/4 = 0.2253728...;
    /// entropy form = ln 4 + Σ p ln p = 0.1064659...; a uniform row gives 0 for both.
    #[test]
    fn values_masking_and_gradients() {
        let row = [0.0, 2f64.ln(), 3f64.ln(), 4f64.ln()];
        let logits = Tensor::new(&[[row, [0.0; 4]]], &Device::Cpu).unwrap(); // [1, 2, 4]
        let mask = Tensor::new(&[[1.0f64, 0.0]], &Device::Cpu).unwrap();
        let ce = me(&logits, &mask, Divergence::UniformCe)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let want_ce = -(4f64.ln()) - (24f64.ln() - 4.0 * 10f64.ln()) / 4.0;
        assert!((ce - want_ce).abs() < 1e-12, "{ce} vs {want_ce}");
        let en = me(&logits, &mask, Divergence::Entropy)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let p = [0.1f64, 0.2, 0.3, 0.4];
        let want_en = 4f64.ln() + p.iter().map(|x| x * x.ln()).sum::<f64>();
        assert!((en - want_en).abs() < 1e-12);
        let both = Tensor::new(&[[1.0f64, 1.0]], &Device::Cpu).unwrap();
        let half = me(&logits, &both, Divergence::UniformCe)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(
            (half - want_ce / 2.0).abs() < 1e-12,
            "uniform row contributes 0"
        );
        for div in [Divergence::UniformCe, Divergence::Entropy] {
            check_grad(&[0.3, -1.0, 2.0, 0.5, 0.0, 1.5], |x| {
                me(
                    &x.reshape((1, 2, 3)).unwrap(),
                    &t(&[1.0, 1.0]).reshape((1, 2)).unwrap(),
                    div,
                )
                .unwrap()
            });
        }
    }
}
