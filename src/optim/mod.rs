//! Optimisers that update parameters in place, learning-rate schedules and gradient utilities.
pub mod adamw;
pub mod schedule;
pub mod sophia;

pub use adamw::{AdamW, AdamWConfig};
pub use schedule::Schedule;
pub use sophia::{Sophia, SophiaConfig};

use candle_core::{backprop::GradStore, Tensor, Var};

use crate::error::Result;

/// Which optimiser a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    #[default]
    Adamw,
    /// Second-order clipped (the "SO-" variants).
    Sophia,
}

/// An optimiser over a fixed list of parameters, with optional per-element masks.
pub enum Optimizer {
    AdamW(AdamW),
    Sophia(Sophia),
}

impl Optimizer {
    pub fn new(
        kind: OptimizerKind,
        params: Vec<(String, Var)>,
        adamw: &AdamWConfig,
        sophia: &SophiaConfig,
    ) -> Result<Self> {
        Ok(match kind {
            OptimizerKind::Adamw => Optimizer::AdamW(AdamW::new(params, adamw.clone())?),
            OptimizerKind::Sophia => Optimizer::Sophia(Sophia::new(params, sophia.clone())?),
        })
    }
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64, grad_scale: f64) -> Result<()> {
        match self {
            Optimizer::AdamW(o) => o.step(grads, lr, grad_scale),
            Optimizer::Sophia(o) => o.step(grads, lr, grad_scale),
        }
    }
    pub fn set_mask(&mut self, i: usize, mask: &Tensor) -> Result<()> {
        match self {
            Optimizer::AdamW(o) => o.set_mask(i, mask),
            Optimizer::Sophia(o) => o.set_mask(i, mask),
        }
    }
}

/// Gradients of a list of parameters, accumulated over micro-batches.
pub struct GradAccum {
    pub grads: Vec<Option<Tensor>>,
}

impl GradAccum {
    pub fn new(n: usize) -> Self {
        GradAccum {
            grads: vec![None; n],
        }
    }

    /// Add the gradients of `params` found in `store`.
    pub fn add(&mut self, params: &[(String, Var)], store: &GradStore) -> Result<()> {
        for (slot, (_, v)) in self.grads.iter_mut().zip(params) {
            if let Some(g) = store.get(v.as_tensor()) {
                *slot = Some(match slot.take() {
                    None => g.detach(),
                    Some(acc) => (acc + g)?.detach(),
                });
            }
        }
        Ok(())
    }

    /// Global L2 norm of all gradients.
    pub fn global_norm(&self) -> Result<f64> {
        let mut s = 0f64;
        for g in self.grads.iter().flatten() {
            s += g
                .sqr()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
        }
        Ok(s.sqrt())
    }

    pub fn clear(&mut self) {
        self.grads.iter_mut().for_each(|g| *g = None);
    }
}

/// Scale factor for clipping by global norm: min(1, max_norm / (norm + 1e-6)) as in PyTorch's
/// `clip_grad_norm_`; 1 when `max_norm` <= 0 (clipping off).
pub fn clip_scale(norm: f64, max_norm: f64) -> f64 {
    if max_norm <= 0.0 {
        1.0
    } else {
        (max_norm / (norm + 1e-6)).min(1.0)
    }
}
