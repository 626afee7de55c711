//! Optimisers that update parameters in place, learning-rate schedules and gradient utilities.
pub mod adamw;
pub mod schedule;
pub mod sophia;

pub use adamw::{AdamW, AdamWConfig};
pub use schedule::Schedule;
pub use sophia::{Curvature, Sophia, SophiaConfig};

use std::sync::Mutex;

use candle_core::{backprop::GradStore, CpuStorage, Layout, Tensor, Var};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// An element-wise in-place update of a CPU f32 parameter from its gradient and two per-element
/// state vectors, in parallel chunks, skipping masked-out elements (which keep value and state
/// bit-identical). `f(θ_i, g_i, s1_i, s2_i)`.
pub(crate) struct ElementwiseStep<'a, F> {
    pub name: &'static str,
    pub s1: Mutex<&'a mut [f32]>,
    pub s2: Mutex<&'a mut [f32]>,
    pub mask: Option<&'a [bool]>,
    pub f: F,
}

impl<F: Fn(&mut f32, f32, &mut f32, &mut f32) + Sync> candle_core::InplaceOp2
    for ElementwiseStep<'_, F>
{
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (s1, s2) else {
            candle_core::bail!("{}: f32 parameters and gradients expected", self.name);
        };
        let (Some((p0, p1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("{}: contiguous tensors expected", self.name);
        };
        let (p, g) = (&mut p[p0..p1], &g[g0..g1]);
        let mut a = self.s1.lock().unwrap();
        let mut b = self.s2.lock().unwrap();
        const CHUNK: usize = 1 << 14;
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(a.par_chunks_mut(CHUNK))
            .zip(b.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(c, (((p, g), a), b))| match self.mask {
                Some(m) => {
                    let m = &m[c * CHUNK..][..p.len()];
                    for i in 0..p.len() {
                        if m[i] {
                            (self.f)(&mut p[i], g[i], &mut a[i], &mut b[i]);
                        }
                    }
                }
                // the common case: one branch-free loop the compiler vectorises
                None => run_step(&self.f, p, g, a, b),
            });
        Ok(())
    }
}

/// `f` over four equal-length slices, compiled for AVX-512 / AVX2 where the CPU has them.
fn run_step<F: Fn(&mut f32, f32, &mut f32, &mut f32)>(
    f: &F,
    p: &mut [f32],
    g: &[f32],
    a: &mut [f32],
    b: &mut [f32],
) {
    #[inline(always)]
    fn body<F: Fn(&mut f32, f32, &mut f32, &mut f32)>(
        f: &F,
        p: &mut [f32],
        g: &[f32],
        a: &mut [f32],
        b: &mut [f32],
    ) {
        let n = p.len().min(g.len()).min(a.len()).min(b.len());
        let (p, g, a, b) = (&mut p[..n], &g[..n], &mut a[..n], &mut b[..n]);
        for i in 0..n {
            f(&mut p[i], g[i], &mut a[i], &mut b[i]);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512<F: Fn(&mut f32, f32, &mut f32, &mut f32)>(
            f: &F,
            p: &mut [f32],
            g: &[f32],
            a: &mut [f32],
            b: &mut [f32],
        ) {
            body(f, p, g, a, b)
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature the function is compiled for.
            return unsafe { avx512(f, p, g, a, b) };
        }
    }
    body(f, p, g, a, b)
}

/// A 0/1 mask tensor for parameter `name` as booleans, after checking its shape.
pub(crate) fn mask_bits(name: &str, param: &Var, mask: &Tensor) -> Result<Vec<bool>> {
    if mask.dims() != param.dims() {
        return Err(Error::ShapeMismatch {
            path: "mask".into(),
            name: name.to_string(),
            expected: param.dims().to_vec(),
            actual: mask.dims().to_vec(),
        });
    }
    let v = mask
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(v.into_iter().map(|x| x != 0.0).collect())
}

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
    /// Whether the trainer must compute a sampled-label (GNB) gradient before the next step.
    pub fn needs_curvature(&self) -> bool {
        match self {
            Optimizer::AdamW(_) => false,
            Optimizer::Sophia(o) => o.needs_curvature(),
        }
    }
    pub fn update_curvature(&mut self, hat_grads: &[Option<Tensor>], scale: f64) -> Result<()> {
        match self {
            Optimizer::AdamW(_) => Ok(()),
            Optimizer::Sophia(o) => o.update_curvature(hat_grads, scale),
        }
    }
    pub fn set_mask(&mut self, i: usize, mask: &Tensor) -> Result<()> {
        match self {
            Optimizer::AdamW(o) => o.set_mask(i, mask),
            Optimizer::Sophia(o) => o.set_mask(i, mask),
        }
    }
    /// Optimiser steps taken (the bias-correction / refresh counter).
    pub fn steps_taken(&self) -> usize {
        match self {
            Optimizer::AdamW(o) => o.step,
            Optimizer::Sophia(o) => o.step,
        }
    }
    /// The optimiser's state as named tensors (checkpoints).
    pub fn export(&self) -> Result<Vec<(String, Tensor)>> {
        match self {
            Optimizer::AdamW(o) => o.export(),
            Optimizer::Sophia(o) => o.export(),
        }
    }
    /// Restore a state written by [`Optimizer::export`] after `steps` steps.
    pub fn import(
        &mut self,
        t: &std::collections::HashMap<String, Tensor>,
        steps: usize,
    ) -> Result<()> {
        match self {
            Optimizer::AdamW(o) => o.import(t, steps),
            Optimizer::Sophia(o) => o.import(t, steps),
        }
    }
    /// The parameters it updates.
    pub fn params(&self) -> &[(String, Var)] {
        match self {
            Optimizer::AdamW(o) => &o.params,
            Optimizer::Sophia(o) => &o.params,
        }
    }
}

/// State tensor `key` of a checkpoint, checked against the parameter's shape.
pub(crate) fn state_tensor(
    t: &std::collections::HashMap<String, Tensor>,
    key: &str,
    p: &Var,
) -> Result<Tensor> {
    let x = t
        .get(key)
        .ok_or_else(|| Error::Invalid(format!("optimizer state: tensor `{key}` is missing")))?;
    if x.dims() != p.dims() {
        return Err(Error::Invalid(format!(
            "optimizer state: `{key}` has shape {:?}, the parameter {:?}",
            x.dims(),
            p.dims()
        )));
    }
    Ok(x.to_dtype(candle_core::DType::F32)?)
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
