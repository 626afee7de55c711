//! RMU: steer the residual stream after layer ℓ on forget inputs toward a fixed random direction,
//! keep it on retain inputs.
//! - forget: mean over answer tokens of ‖h_ℓ(x) − c·u‖² / d (u a seeded random unit vector)
//! - retain: mean over tokens of ‖h_ℓ^θ(x_r) − h_ℓ^ref(x_r)‖² / d
use candle_core::{Device, Tensor, D};

use crate::error::Result;
use crate::util::rng::Rng;
use serde::{Deserialize, Serialize};

use super::{Ctx, Needs, Term};
use crate::config::{Check, Validate};

/// The control vector c·u: u uniform on [0,1)^d normalised to unit length (as the RMU reference
/// code does), seeded. [d]
pub fn control_vector(d: usize, coef: f64, seed: u64, dev: &Device) -> Result<Tensor> {
    let mut r = Rng::new(seed);
    let u: Vec<f64> = (0..d).map(|_| r.uniform()).collect();
    let norm = u.iter().map(|x| x * x).sum::<f64>().sqrt();
    let v: Vec<f32> = u.iter().map(|x| (coef * x / norm) as f32).collect();
    Ok(Tensor::from_vec(v, d, dev)?)
}

fn masked_mse(diff: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let d = diff.dim(D::Minus1)? as f64;
    let per = diff.sqr()?.sum(D::Minus1)?; // [b, t]
    let n = mask
        .sum_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?
        .max(1.0);
    Ok(((per * mask)?.sum_all()? / (n * d))?)
}

/// `h`: [b, t, d], `control`: [d], `mask`: [b, t]. Scalar.
pub fn rmu_forget(h: &Tensor, control: &Tensor, mask: &Tensor) -> Result<Tensor> {
    masked_mse(&h.broadcast_sub(control)?, mask)
}

/// `h`, `h_ref`: [b, t, d], `mask`: [b, t]. Scalar.
pub fn rmu_retain(h: &Tensor, h_ref: &Tensor, mask: &Tensor) -> Result<Tensor> {
    masked_mse(&(h - h_ref.detach())?, mask)
}

/// RMU's forget term: steer layer ℓ's residual toward c·u on the forget answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rmu {
    /// ℓ; unset: 7, or the model's last layer when it has fewer (METHODS.md); a layer given
    /// explicitly must exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    pub steering_coef: f64,
}

impl Default for Rmu {
    fn default() -> Self {
        Rmu {
            layer: None,
            steering_coef: 6.5,
        }
    }
}

impl Validate for Rmu {
    fn check(&self, c: &mut Check) {
        // the layer is checked against the model when the run starts
        c.positive("steering_coef", self.steering_coef);
    }
}

impl Term for Rmu {
    const FORMULA: &'static str = "mean_t ||h_l(x) - c u||^2 / d on forget answer tokens";
    fn needs(&self) -> Needs {
        Needs {
            rmu: true,
            ..Needs::default()
        }
    }
    fn loss(&self, c: &Ctx) -> Result<Tensor> {
        let b = c.forget()?;
        let (layer, control) = c.rmu()?;
        let h = c.model.hidden_at(&b.input, layer)?;
        rmu_forget(&h, control, &b.mask)
    }
}

/// RMU's retain term: keep layer ℓ's residual on the retain partners.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RmuRetain {}

impl Validate for RmuRetain {
    fn check(&self, _c: &mut Check) {}
}

impl Term for RmuRetain {
    const FORMULA: &'static str = "mean_t ||h_l^theta(x_r) - h_l^ref(x_r)||^2 / d on retain tokens";
    fn needs(&self) -> Needs {
        Needs {
            retain_set: true,
            reference_model: true,
            rmu: true,
            ..Needs::default()
        }
    }
    fn loss(&self, c: &Ctx) -> Result<Tensor> {
        let b = c.retain()?;
        let (l, _) = c.rmu()?;
        let h_ref = c.reference()?.hidden_at(&b.input, l)?.detach();
        rmu_retain(&c.model.hidden_at(&b.input, l)?, &h_ref, &b.valid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unlearn::objective::testutil::*;

    #[test]
    fn values_and_gradient() {
        let dev = Device::Cpu;
        let c = control_vector(4, 6.5, 1, &dev).unwrap();
        let n = c
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt();
        assert!((n - 6.5).abs() < 1e-5);
        // By hand: h rows [1,2] and [3,4] vs control [1,0]; only row 0 masked → (0 + 4)/2 = 2.
        let h = Tensor::new(&[[[1.0f64, 2.0], [3.0, 4.0]]], &dev).unwrap();
        let m = Tensor::new(&[[1.0f64, 0.0]], &dev).unwrap();
        let v = rmu_forget(&h, &t(&[1.0, 0.0]), &m)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert_eq!(v, 2.0);
        let r = rmu_retain(
            &h,
            &h.zeros_like().unwrap(),
            &Tensor::new(&[[1.0f64, 1.0]], &dev).unwrap(),
        )
        .unwrap();
        assert_eq!(
            r.to_scalar::<f64>().unwrap(),
            (1.0 + 4.0 + 9.0 + 16.0) / 4.0
        );
        check_grad(&[0.5, -1.0, 2.0, 0.1], |x| {
            rmu_forget(
                &x.reshape((1, 2, 2)).unwrap(),
                &t(&[0.3, -0.2]),
                &t(&[1.0, 1.0]).reshape((1, 2)).unwrap(),
            )
            .unwrap()
        });
    }
}
