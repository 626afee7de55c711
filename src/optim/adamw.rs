//! AdamW with decoupled weight decay, as `torch.optim.AdamW`:
//!   m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
//!   θ ← θ·(1 − lr·wd);  θ ← θ − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + ε)
//! On CPU the update runs in place in one pass per tensor (rayon), with the gradient's clipping
//! scale folded in, so a step allocates nothing.
use std::sync::Mutex;

use candle_core::{Tensor, Var};

use super::ElementwiseStep;

use crate::error::{Error, Result};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl crate::config::Validate for AdamWConfig {
    fn check(&self, c: &mut crate::config::Check) {
        c.decay("beta1", self.beta1);
        c.decay("beta2", self.beta2);
        c.positive("eps", self.eps);
        c.non_negative("weight_decay", self.weight_decay);
    }
}

enum State {
    Cpu { m: Vec<f32>, v: Vec<f32> },
    Dev { m: Tensor, v: Tensor },
}

pub struct AdamW {
    pub cfg: AdamWConfig,
    pub params: Vec<(String, Var)>,
    state: Vec<State>,
    /// Optional per-element 0/1 masks: masked-out elements keep their value and moments
    /// bit-identical.
    masks: Vec<Option<Mask>>,
    pub step: usize,
}

enum Mask {
    Cpu(Vec<bool>),
    Dev(Tensor),
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let state = params
            .iter()
            .map(|(_, v)| {
                Ok(if v.device().is_cpu() {
                    State::Cpu {
                        m: vec![0.0; v.elem_count()],
                        v: vec![0.0; v.elem_count()],
                    }
                } else {
                    State::Dev {
                        m: v.zeros_like()?,
                        v: v.zeros_like()?,
                    }
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let masks = params.iter().map(|_| None).collect();
        Ok(AdamW {
            cfg,
            params,
            state,
            masks,
            step: 0,
        })
    }

    /// The moments as tensors named `{param}.exp_avg` / `{param}.exp_avg_sq` (PyTorch's names),
    /// for checkpoints.
    pub fn export(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![];
        for ((name, p), st) in self.params.iter().zip(&self.state) {
            let (m, v) = match st {
                State::Cpu { m, v } => (
                    Tensor::from_slice(m, p.shape(), p.device())?,
                    Tensor::from_slice(v, p.shape(), p.device())?,
                ),
                State::Dev { m, v } => (m.clone(), v.clone()),
            };
            out.push((format!("{name}.exp_avg"), m));
            out.push((format!("{name}.exp_avg_sq"), v));
        }
        Ok(out)
    }

    /// Restore the moments written by [`AdamW::export`] and the step count.
    pub fn import(
        &mut self,
        t: &std::collections::HashMap<String, Tensor>,
        step: usize,
    ) -> Result<()> {
        for ((name, p), st) in self.params.iter().zip(self.state.iter_mut()) {
            let get = |k: &str| super::state_tensor(t, &format!("{name}.{k}"), p);
            match st {
                State::Cpu { m, v } => {
                    *m = get("exp_avg")?.flatten_all()?.to_vec1::<f32>()?;
                    *v = get("exp_avg_sq")?.flatten_all()?.to_vec1::<f32>()?;
                }
                State::Dev { m, v } => {
                    *m = get("exp_avg")?.to_device(p.device())?;
                    *v = get("exp_avg_sq")?.to_device(p.device())?;
                }
            }
        }
        self.step = step;
        Ok(())
    }

    /// Restrict updates of parameter `i` to the elements where `mask` (same shape, 0/1) is 1.
    pub fn set_mask(&mut self, i: usize, mask: &Tensor) -> Result<()> {
        let (name, p) = &self.params[i];
        let bits = super::mask_bits(name, p, mask)?;
        self.masks[i] = Some(if p.device().is_cpu() {
            Mask::Cpu(bits)
        } else {
            let m = mask
                .to_dtype(candle_core::DType::F32)?
                .ne(0f32)?
                .to_dtype(p.dtype())?;
            Mask::Dev(m)
        });
        Ok(())
    }

    /// One update with learning rate `lr`; each gradient is multiplied by `grad_scale` first
    /// (clipping). Parameters without a gradient are left untouched.
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64, grad_scale: f64) -> Result<()> {
        if grads.len() != self.params.len() {
            return Err(Error::Invalid(
                "adamw: gradient list does not match parameters".into(),
            ));
        }
        self.step += 1;
        let t = self.step as i32;
        let c = &self.cfg;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        for ((((_, p), st), g), mask) in self
            .params
            .iter()
            .zip(self.state.iter_mut())
            .zip(grads)
            .zip(&self.masks)
        {
            let Some(g) = g else { continue };
            let g = g.contiguous()?;
            match st {
                State::Cpu { m, v } => {
                    let (b1, b2, eps) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32);
                    let decay = (1.0 - lr * c.weight_decay) as f32;
                    let (step_size, bc2_sqrt) = ((lr / bc1) as f32, bc2.sqrt() as f32);
                    let gscale = grad_scale as f32;
                    let op = ElementwiseStep {
                        name: "adamw-step",
                        s1: Mutex::new(m.as_mut_slice()),
                        s2: Mutex::new(v.as_mut_slice()),
                        mask: match mask {
                            Some(Mask::Cpu(b)) => Some(b.as_slice()),
                            _ => None,
                        },
                        f: |p: &mut f32, g: f32, m: &mut f32, v: &mut f32| {
                            let g = g * gscale;
                            *m = b1 * *m + (1.0 - b1) * g;
                            *v = b2 * *v + (1.0 - b2) * g * g;
                            *p = *p * decay - step_size * *m / (v.sqrt() / bc2_sqrt + eps);
                        },
                    };
                    p.as_tensor().inplace_op2(&g, &op)?;
                }
                State::Dev { m, v } => {
                    let g = (g * grad_scale)?;
                    let m2 = ((&*m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
                    let v2 = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                    let denom = ((v2.sqrt()? / bc2.sqrt())? + c.eps)?;
                    let upd = (m2.div(&denom)? * (lr / bc1))?;
                    let new = ((p.as_tensor() * (1.0 - lr * c.weight_decay))? - upd)?;
                    match mask {
                        Some(Mask::Dev(k)) => {
                            let keep = k.ne(0f32)?;
                            *m = keep.where_cond(&m2, m)?;
                            *v = keep.where_cond(&v2, v)?;
                            p.set(&keep.where_cond(&new, p.as_tensor())?)?;
                        }
                        _ => {
                            *m = m2;
                            *v = v2;
                            p.set(&new)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A masked element keeps its value bit-identical over several steps (moments too: when the
    /// mask is lifted its first update equals a fresh step-1 style update of zero moments).
    #[test]
    fn masked_elements_are_untouched() {
        let dev = Device::Cpu;
        let init = [0.123_456_79_f32, -2.5, 3.75, 1e-7];
        let p = Var::new(&init, &dev).unwrap();
        let mut opt = AdamW::new(vec![("p".into(), p.clone())], AdamWConfig::default()).unwrap();
        opt.set_mask(0, &Tensor::new(&[1f32, 0., 1., 0.], &dev).unwrap())
            .unwrap();
        for k in 0..3 {
            let g = Tensor::new(&[0.3f32 + k as f32, -1.0, 0.5, 2.0], &dev).unwrap();
            opt.step(&[Some(g)], 0.01, 1.0).unwrap();
        }
        let v = p.as_tensor().to_vec1::<f32>().unwrap();
        assert_eq!(v[1].to_bits(), init[1].to_bits());
        assert_eq!(v[3].to_bits(), init[3].to_bits());
        assert!(v[0] != init[0] && v[2] != init[2]);
        let State::Cpu { m, v: vv } = &opt.state[0] else {
            panic!()
        };
        assert_eq!((m[1], vv[1], m[3], vv[3]), (0.0, 0.0, 0.0, 0.0));
        assert!(opt
            .set_mask(0, &Tensor::new(&[1f32, 0.], &dev).unwrap())
            .is_err());
    }

    /// Reference values from torch.optim.AdamW(lr=0.1, betas=(0.9, 0.999), eps=1e-8,
    /// weight_decay=0.01) on p = [1.0, -2.0, 0.5] with gradients g1 = [0.1, -0.2, 0.3] then
    /// g2 = [-0.5, 0.4, 0.0] (two steps); computed by hand from the formula above:
    /// step 1: m̂/√v̂ = sign(g) → p = p·0.999 − 0.1·sign(g)
    #[test]
    fn two_steps_match_torch_formula() {
        let dev = Device::Cpu;
        let p = Var::new(&[1.0f32, -2.0, 0.5], &dev).unwrap();
        let mut opt = AdamW::new(vec![("p".into(), p.clone())], AdamWConfig::default()).unwrap();
        let g1 = Tensor::new(&[0.1f32, -0.2, 0.3], &dev).unwrap();
        opt.step(&[Some(g1)], 0.1, 1.0).unwrap();
        let v1 = p.as_tensor().to_vec1::<f32>().unwrap();
        let want1 = [1.0 * 0.999 - 0.1, -2.0 * 0.999 + 0.1, 0.5 * 0.999 - 0.1];
        for (a, b) in v1.iter().zip(want1) {
            assert!((a - b).abs() < 1e-6, "{v1:?}");
        }
        let g2 = Tensor::new(&[-0.5f32, 0.4, 0.0], &dev).unwrap();
        opt.step(&[Some(g2.clone())], 0.1, 1.0).unwrap();
        // Element-wise reference of step 2 in f64.
        let g1 = [0.1f64, -0.2, 0.3];
        let g2 = [-0.5f64, 0.4, 0.0];
        let v2 = p.as_tensor().to_vec1::<f32>().unwrap();
        for i in 0..3 {
            let m = 0.9 * (0.1 * g1[i]) + 0.1 * g2[i];
            let v = 0.999 * (0.001 * g1[i] * g1[i]) + 0.001 * g2[i] * g2[i];
            let (bc1, bc2) = (1.0 - 0.9f64.powi(2), 1.0 - 0.999f64.powi(2));
            let want = want1[i] as f64 * 0.999 - 0.1 / bc1 * m / (v.sqrt() / bc2.sqrt() + 1e-8);
            assert!(
                (v2[i] as f64 - want).abs() < 1e-5,
                "{i}: {} vs {want}",
                v2[i]
            );
        }
    }
}
