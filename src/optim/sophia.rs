//! Sophia (second-order clipped stochastic optimisation), as METHODS.md specifies:
//!   m ← β1·m + (1−β1)·g
//!   every k steps: h ← β2·h + (1−β2)·ĥ
//!   θ ← θ·(1 − lr·wd);  θ ← θ − lr·clip(m / max(ρ·h, ε), −1, 1)
//! with ĥ = g⊙g (empirical Fisher, the default) or the Gauss–Newton–Bartlett estimate
//! ĥ = B·ĝ⊙ĝ, where ĝ is the gradient of the mean cross-entropy over B positions against labels
//! sampled from the model's own softmax (`curvature = "gnb"`: the trainer computes ĝ on the
//! step's inputs and passes it to [`Sophia::update_curvature`] before [`Sophia::step`]).
//! Per-element masks keep masked elements' value, momentum and curvature bit-identical.
use std::sync::Mutex;

use candle_core::{Tensor, Var};

use super::ElementwiseStep;

use crate::error::{Error, Result};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SophiaConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub rho: f64,
    /// Curvature refresh interval k (steps).
    pub k: usize,
    pub weight_decay: f64,
    pub eps: f64,
    /// Curvature estimate: `empirical_fisher` (g⊙g) or `gnb` (Gauss–Newton–Bartlett).
    pub curvature: Curvature,
}

/// The diagonal curvature estimate ĥ of Sophia.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Curvature {
    /// ĥ = g⊙g, the step's own gradient.
    #[default]
    EmpiricalFisher,
    /// ĥ = B·ĝ⊙ĝ, ĝ the gradient of the loss against labels sampled from the model.
    Gnb,
}

impl Default for SophiaConfig {
    fn default() -> Self {
        SophiaConfig {
            beta1: 0.9,
            beta2: 0.95,
            rho: 0.04,
            k: 1,
            weight_decay: 0.1,
            eps: 1e-15,
            curvature: Curvature::EmpiricalFisher,
        }
    }
}

impl crate::config::Validate for SophiaConfig {
    fn check(&self, c: &mut crate::config::Check) {
        c.decay("beta1", self.beta1);
        c.decay("beta2", self.beta2);
        c.positive("rho", self.rho);
        c.at_least("k", self.k, 1);
        c.non_negative("weight_decay", self.weight_decay);
        c.positive("eps", self.eps);
    }
}

pub struct Sophia {
    pub cfg: SophiaConfig,
    pub params: Vec<(String, Var)>,
    m: Vec<Vec<f32>>,
    h: Vec<Vec<f32>>,
    masks: Vec<Option<Vec<bool>>>,
    pub step: usize,
}

impl Sophia {
    pub fn new(params: Vec<(String, Var)>, cfg: SophiaConfig) -> Result<Self> {
        if params.iter().any(|(_, v)| !v.device().is_cpu()) {
            return Err(Error::Invalid(
                "sophia: only CPU parameters are supported so far".into(),
            ));
        }
        let m = params
            .iter()
            .map(|(_, v)| vec![0.0; v.elem_count()])
            .collect();
        let h = params
            .iter()
            .map(|(_, v)| vec![0.0; v.elem_count()])
            .collect();
        let masks = params.iter().map(|_| None).collect();
        Ok(Sophia {
            cfg,
            params,
            m,
            h,
            masks,
            step: 0,
        })
    }

    pub fn set_mask(&mut self, i: usize, mask: &Tensor) -> Result<()> {
        let (name, p) = &self.params[i];
        self.masks[i] = Some(super::mask_bits(name, p, mask)?);
        Ok(())
    }

    /// Whether the next [`step`](Self::step) refreshes the curvature (steps 1, 1 + k, 1 + 2k, …).
    pub fn refreshes(&self) -> bool {
        self.step.is_multiple_of(self.cfg.k.max(1))
    }

    /// With `curvature = "gnb"`, whether the trainer must call
    /// [`update_curvature`](Self::update_curvature) before the next step.
    pub fn needs_curvature(&self) -> bool {
        self.cfg.curvature == Curvature::Gnb && self.refreshes()
    }

    /// h ← β2·h + (1−β2)·scale·ĝ⊙ĝ (the GNB refresh, `scale` = B); masked elements keep h.
    pub fn update_curvature(&mut self, hat_grads: &[Option<Tensor>], scale: f64) -> Result<()> {
        if hat_grads.len() != self.params.len() {
            return Err(Error::Invalid(
                "sophia: curvature gradient list does not match parameters".into(),
            ));
        }
        let b2 = self.cfg.beta2 as f32;
        let scale = scale as f32;
        for (i, g) in hat_grads.iter().enumerate() {
            let Some(g) = g else { continue };
            let g = g
                .flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?;
            let h = &mut self.h[i];
            if g.len() != h.len() {
                return Err(Error::Invalid(format!(
                    "sophia: curvature gradient of `{}` has {} elements, the parameter {}",
                    self.params[i].0,
                    g.len(),
                    h.len()
                )));
            }
            let mask = self.masks[i].as_deref();
            for (j, (h, g)) in h.iter_mut().zip(g).enumerate() {
                if mask.is_none_or(|m| m[j]) {
                    *h = b2 * *h + (1.0 - b2) * scale * g * g;
                }
            }
        }
        Ok(())
    }

    /// One update; with the empirical-Fisher estimate the curvature is refreshed from `grads` on
    /// steps 1, 1 + k, 1 + 2k, … (with GNB, `update_curvature` did it).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64, grad_scale: f64) -> Result<()> {
        if grads.len() != self.params.len() {
            return Err(Error::Invalid(
                "sophia: gradient list does not match parameters".into(),
            ));
        }
        let refresh = self.refreshes() && self.cfg.curvature == Curvature::EmpiricalFisher;
        self.step += 1;
        let c = &self.cfg;
        for (i, ((_, p), g)) in self.params.iter().zip(grads).enumerate() {
            let Some(g) = g else { continue };
            let g = g.contiguous()?;
            let (lr, b1, b2) = (lr as f32, c.beta1 as f32, c.beta2 as f32);
            let (rho, eps, gscale) = (c.rho as f32, c.eps as f32, grad_scale as f32);
            let decay = (1.0 - lr as f64 * c.weight_decay) as f32;
            let op = ElementwiseStep {
                name: "sophia-step",
                s1: Mutex::new(self.m[i].as_mut_slice()),
                s2: Mutex::new(self.h[i].as_mut_slice()),
                mask: self.masks[i].as_deref(),
                f: |p: &mut f32, g: f32, m: &mut f32, h: &mut f32| {
                    let g = g * gscale;
                    *m = b1 * *m + (1.0 - b1) * g;
                    if refresh {
                        *h = b2 * *h + (1.0 - b2) * g * g;
                    }
                    let ratio = (*m / (rho * *h).max(eps)).clamp(-1.0, 1.0);
                    *p = *p * decay - lr * ratio;
                },
            };
            p.as_tensor().inplace_op2(&g, &op)?;
        }
        Ok(())
    }

    /// The state as tensors named `{param}.exp_avg` / `{param}.hessian`, for checkpoints.
    pub fn export(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![];
        for (i, (name, p)) in self.params.iter().enumerate() {
            out.push((
                format!("{name}.exp_avg"),
                Tensor::from_slice(&self.m[i], p.shape(), p.device())?,
            ));
            out.push((
                format!("{name}.hessian"),
                Tensor::from_slice(&self.h[i], p.shape(), p.device())?,
            ));
        }
        Ok(out)
    }

    /// Restore the state written by [`Sophia::export`] and the step count.
    pub fn import(
        &mut self,
        t: &std::collections::HashMap<String, Tensor>,
        step: usize,
    ) -> Result<()> {
        for (i, (name, p)) in self.params.iter().enumerate() {
            let get = |k: &str| super::state_tensor(t, &format!("{name}.{k}"), p);
            self.m[i] = get("exp_avg")?.flatten_all()?.to_vec1::<f32>()?;
            self.h[i] = get("hessian")?.flatten_all()?.to_vec1::<f32>()?;
        }
        self.step = step;
        Ok(())
    }

    /// (momentum, curvature) of parameter `i`, for inspection and tests.
    pub fn state(&self, i: usize) -> (&[f32], &[f32]) {
        (&self.m[i], &self.h[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Hand-computed: p = [1, −1, 0.5], g = [0.2, 0.01, −0.3], lr 0.1, wd 0.1, ρ 0.04,
    /// β1 0.9, β2 0.95:  m = 0.1g = [0.02, 0.001, −0.03]; h = 0.05g² = [0.002, 5e−6, 0.0045];
    /// ρh = [8e−5, 2e−7, 1.8e−4]; m/(ρh) = [250, 5000, −166.7] → clip → [1, 1, −1];
    /// p = p·0.99 − 0.1·clip = [0.89, −1.09, 0.595].
    #[test]
    fn one_step_by_hand_and_masks() {
        let dev = Device::Cpu;
        let p = Var::new(&[1.0f32, -1.0, 0.5], &dev).unwrap();
        let mut o = Sophia::new(vec![("p".into(), p.clone())], SophiaConfig::default()).unwrap();
        o.step(
            &[Some(Tensor::new(&[0.2f32, 0.01, -0.3], &dev).unwrap())],
            0.1,
            1.0,
        )
        .unwrap();
        let v = p.as_tensor().to_vec1::<f32>().unwrap();
        for (a, b) in v.iter().zip([0.89f32, -1.09, 0.595]) {
            assert!((a - b).abs() < 1e-6, "{v:?}");
        }
        let (m, h) = o.state(0);
        assert!((m[1] - 0.001).abs() < 1e-9 && (h[2] - 0.0045).abs() < 1e-8); // f32 rounding of 1 − β
                                                                              // Small ratio: not clipped. g = 1e-4 on a fresh optimiser: m = 1e-5, h = 5e-10,
                                                                              // m/(ρh) = 1e-5/2e-11 → clipped; with ρ = 1e6: 1e-5/5e-4 = 0.02 → step 0.1·0.02.
        let q = Var::new(&[0.0f32], &dev).unwrap();
        let cfg = SophiaConfig {
            rho: 1e6,
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut o2 = Sophia::new(vec![("q".into(), q.clone())], cfg).unwrap();
        o2.step(&[Some(Tensor::new(&[1e-4f32], &dev).unwrap())], 0.1, 1.0)
            .unwrap();
        assert!((q.as_tensor().to_vec1::<f32>().unwrap()[0] + 0.002).abs() < 1e-7);
        // Masked elements keep value, momentum and curvature bit-identical.
        let r = Var::new(&[0.3f32, 0.7], &dev).unwrap();
        let mut o3 = Sophia::new(vec![("r".into(), r.clone())], SophiaConfig::default()).unwrap();
        o3.set_mask(0, &Tensor::new(&[0f32, 1.0], &dev).unwrap())
            .unwrap();
        for _ in 0..3 {
            o3.step(
                &[Some(Tensor::new(&[0.5f32, 0.5], &dev).unwrap())],
                0.01,
                1.0,
            )
            .unwrap();
        }
        let v = r.as_tensor().to_vec1::<f32>().unwrap();
        assert_eq!(v[0].to_bits(), 0.3f32.to_bits());
        assert_ne!(v[1], 0.7);
        let (m, h) = o3.state(0);
        assert_eq!((m[0], h[0]), (0.0, 0.0));
    }

    #[test]
    fn curvature_refreshes_every_k_steps() {
        let dev = Device::Cpu;
        let p = Var::new(&[0.0f32], &dev).unwrap();
        let mut o = Sophia::new(
            vec![("p".into(), p)],
            SophiaConfig {
                k: 2,
                ..Default::default()
            },
        )
        .unwrap();
        let g = || vec![Some(Tensor::new(&[1.0f32], &Device::Cpu).unwrap())];
        o.step(&g(), 0.0, 1.0).unwrap();
        let h1 = o.state(0).1[0];
        o.step(&g(), 0.0, 1.0).unwrap();
        assert_eq!(o.state(0).1[0], h1, "no refresh on step 2");
        o.step(&g(), 0.0, 1.0).unwrap();
        assert!(o.state(0).1[0] > h1, "refresh on step 3");
    }

    /// GNB: ĥ = B·ĝ⊙ĝ enters h instead of g⊙g. p = 1, g = 0.2, ĝ = 0.1, B = 4, defaults:
    /// m = 0.02; h = 0.05·4·0.01 = 0.002; m/(ρh) = 0.02/8e−5 = 250 → 1; p = 0.99 − 0.1 = 0.89.
    /// A second step (k = 2, no refresh) leaves h, a masked element keeps h = 0.
    #[test]
    fn gnb_curvature_replaces_the_squared_gradient() {
        let dev = Device::Cpu;
        let p = Var::new(&[1.0f32, 2.0], &dev).unwrap();
        let cfg = SophiaConfig {
            curvature: Curvature::Gnb,
            k: 2,
            ..Default::default()
        };
        let mut o = Sophia::new(vec![("p".into(), p.clone())], cfg).unwrap();
        o.set_mask(0, &Tensor::new(&[1f32, 0.0], &dev).unwrap())
            .unwrap();
        assert!(o.needs_curvature());
        let t = |v: [f32; 2]| vec![Some(Tensor::new(&v, &dev).unwrap())];
        o.update_curvature(&t([0.1, 0.1]), 4.0).unwrap();
        o.step(&t([0.2, 0.2]), 0.1, 1.0).unwrap();
        let (m, h) = o.state(0);
        assert!(
            (m[0] - 0.02).abs() < 1e-7 && (h[0] - 0.002).abs() < 1e-8,
            "{m:?} {h:?}"
        ); // f32
        assert_eq!(h[1], 0.0, "masked element keeps its curvature");
        let v = p.as_tensor().to_vec1::<f32>().unwrap();
        assert!((v[0] - 0.89).abs() < 1e-6 && v[1] == 2.0, "{v:?}");
        assert!(!o.needs_curvature(), "k = 2: no refresh on step 2");
        let h0 = o.state(0).1[0];
        o.step(&t([0.2, 0.2]), 0.1, 1.0).unwrap();
        assert_eq!(
            o.state(0).1[0],
            h0,
            "the step's own gradient never enters h under GNB"
        );
        assert!(o.needs_curvature());
    }
}
