//! Differentiable building blocks. Candle's fused `softmax_last_dim`, `rms_norm` and `rope*`
//! record no gradient, so the training path uses these compositions of primitive ops, every
//! one of which has a backward pass in candle.
use candle_core::{DType, Tensor, D};

use crate::error::Result;

/// RMSNorm: y = x / sqrt(mean(x², -1) + eps) · w. x: [.., h], w: [h].
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?; // [.., 1]
    let inv = (ms + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(w)?)
}

/// Softmax over the last dimension: exp(x − max) / Σ exp(x − max). The max is detached (the
/// result does not depend on it mathematically).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&s)?)
}

/// log-softmax over the last dimension: x − max − log Σ exp(x − max).
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let z = x.broadcast_sub(&m)?;
    let lse = z.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(z.broadcast_sub(&lse)?)
}

/// HF-style rotary embedding (`rotate_half`, non-interleaved): with x = [x1, x2] halves,
/// y = [x1·cos − x2·sin, x2·cos + x1·sin]. x: [b, heads, t, hd]; cos, sin: [b or 1, 1, t, hd/2].
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
    let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
    let y1 = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
    let y2 = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
    Ok(Tensor::cat(&[y1, y2], D::Minus1)?)
}

/// x · Wᵀ (+ b) for x: [.., in], w: [out, in] (HF `nn.Linear` layout), computed as one 2-D GEMM.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let inp = *dims.last().unwrap();
    let n: usize = dims[..dims.len() - 1].iter().product();
    let y = x.reshape((n, inp))?.matmul(&w.t()?)?;
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out = dims;
    *out.last_mut().unwrap() = w.dim(0)?;
    Ok(y.reshape(out)?)
}

/// log p(target) at every position: logits [b, t, V], targets [b, t] (u32) -> [b, t].
pub fn gather_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let lp = log_softmax_last_dim(logits)?;
    let idx = targets.contiguous()?.unsqueeze(D::Minus1)?;
    Ok(lp
        .contiguous()?
        .gather(&idx, D::Minus1)?
        .squeeze(D::Minus1)?)
}

/// max |a − b| over all elements, as f64 (any float dtype).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok((a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f64>()?)
}

/// Sum of all elements as an f64 scalar (for logs and tests).
pub fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn close(a: &Tensor, b: &Tensor, tol: f64) {
        let d = max_abs_diff(&a, &b).unwrap();
        assert!(d < tol, "max abs diff {d}");
    }

    #[test]
    fn composites_match_candle_fused_forward() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 3, 8), &dev).unwrap();
        let w = Tensor::randn(0f32, 1., 8, &dev).unwrap();
        close(
            &rms_norm(&x, &w, 1e-5).unwrap(),
            &candle_nn::ops::rms_norm(&x, &w, 1e-5).unwrap(),
            1e-5,
        );
        close(
            &softmax_last_dim(&x).unwrap(),
            &candle_nn::ops::softmax_last_dim(&x).unwrap(),
            1e-6,
        );
        close(
            &log_softmax_last_dim(&x).unwrap(),
            &candle_nn::ops::log_softmax(&x, D::Minus1).unwrap(),
            1e-5,
        );
        let xr = Tensor::randn(0f32, 1., (1, 2, 3, 8), &dev).unwrap();
        let c = Tensor::randn(0f32, 1., (1, 1, 3, 4), &dev).unwrap();
        let s = Tensor::randn(0f32, 1., (1, 1, 3, 4), &dev).unwrap();
        let fused = candle_nn::rotary_emb::rope(
            &xr,
            &c.squeeze(0).unwrap().squeeze(0).unwrap(),
            &s.squeeze(0).unwrap().squeeze(0).unwrap(),
        )
        .unwrap();
        close(&rope(&xr, &c, &s).unwrap(), &fused, 1e-5);
    }

    /// Central finite differences in f64 against autograd for each composite.
    #[test]
    fn gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let x0: Vec<f64> = (0..12)
            .map(|i| ((i * 7 % 5) as f64 - 2.0) * 0.3 + 0.1)
            .collect();
        let w = Tensor::new(&[0.5f64, -1.0, 2.0, 0.7], &dev).unwrap();
        let coef = Tensor::new(
            &[
                [0.3f64, -0.2, 1.1, 0.4],
                [0.9, 0.1, -0.5, 0.2],
                [0.05, 0.6, -0.7, 0.3],
            ],
            &dev,
        )
        .unwrap();
        let cs = Tensor::new(&[[[[0.8f64, 0.6], [0.3, -0.2], [0.1, 0.9]]]], &dev).unwrap();
        let sn = Tensor::new(&[[[[0.6f64, -0.8], [0.95, 0.4], [-0.99, 0.2]]]], &dev).unwrap();
        type F = Box<dyn Fn(&Tensor) -> Tensor>;
        let fns: Vec<(&str, F)> = vec![
            (
                "rms_norm",
                Box::new(move |x: &Tensor| rms_norm(x, &w, 1e-6).unwrap()),
            ),
            (
                "softmax",
                Box::new(|x: &Tensor| softmax_last_dim(x).unwrap()),
            ),
            (
                "log_softmax",
                Box::new(|x: &Tensor| log_softmax_last_dim(x).unwrap()),
            ),
            (
                "rope",
                Box::new(move |x: &Tensor| {
                    rope(&x.reshape((1, 1, 3, 4)).unwrap(), &cs, &sn)
                        .unwrap()
                        .reshape((3, 4))
                        .unwrap()
                }),
            ),
        ];
        for (name, f) in fns {
            let loss = |x: &Tensor| (f(x) * &coef).unwrap().sum_all().unwrap();
            let xv = Var::new(
                Tensor::new(x0.as_slice(), &dev)
                    .unwrap()
                    .reshape((3, 4))
                    .unwrap()
                    .to_vec2::<f64>()
                    .unwrap(),
                &dev,
            )
            .unwrap();
            let g = loss(xv.as_tensor()).backward().unwrap();
            let ga = g
                .get(xv.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            for i in 0..12 {
                let eps = 1e-6;
                let mut p = x0.clone();
                p[i] += eps;
                let mut m = x0.clone();
                m[i] -= eps;
                let lp = loss(
                    &Tensor::new(p.as_slice(), &dev)
                        .unwrap()
                        .reshape((3, 4))
                        .unwrap(),
                )
                .to_scalar::<f64>()
                .unwrap();
                let lm = loss(
                    &Tensor::new(m.as_slice(), &dev)
                        .unwrap()
                        .reshape((3, 4))
                        .unwrap(),
                )
                .to_scalar::<f64>()
                .unwrap();
                let fd = (lp - lm) / (2.0 * eps);
                assert!(
                    (fd - ga[i]).abs() < 1e-6,
                    "{name}[{i}]: fd {fd} autograd {}",
                    ga[i]
                );
            }
        }
    }
}
