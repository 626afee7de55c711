//! The reference compositions of primitive candle ops, every one of which has a backward pass
//! in candle. They run where no fused kernel does (CUDA, other dtypes, `ops::set_fused(false)`),
//! and they define what the fused kernels in `super::fused` must compute.
//!
//! Half precision (bf16/f16, `--dtype bf16`): the reductions (RMSNorm, LayerNorm, softmax,
//! log-softmax) upcast their input to f32, compute there and round the result back to the
//! input's dtype, as transformers' eager modules do (`hidden_states.to(torch.float32)` in the
//! norms, `softmax(…, dtype=torch.float32)` in attention); matmuls take the half inputs and
//! accumulate in f32 inside the GEMM (candle's CPU gemm and cuBLAS both do).
use candle_core::{DType, Tensor, D};

use crate::error::Result;

/// `f` computed in f32 when `x` is half precision, its result rounded back to `x`'s dtype; as
/// is otherwise. The casts are differentiable (the gradient is cast back the same way).
fn in_f32(x: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    match x.dtype() {
        DType::BF16 | DType::F16 => Ok(f(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?),
        _ => f(x),
    }
}

/// RMSNorm: y = x / sqrt(mean(x², -1) + eps) · w. x: [.., h], w: [h]. Half precision: x̂ in
/// f32, rounded to x's dtype, then · w in that dtype (transformers' `LlamaRMSNorm`).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let xn = in_f32(x, |x| {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?; // [.., 1]
        let inv = (ms + eps)?.sqrt()?.recip()?;
        Ok(x.broadcast_mul(&inv)?)
    })?;
    Ok(xn.broadcast_mul(&w.to_dtype(xn.dtype())?)?)
}

/// LayerNorm without parameters (OLMo): (x − mean(x)) / √(mean((x − mean)²) + eps) over the last
/// dimension (biased variance, as torch.nn.functional.layer_norm).
pub fn layer_norm_nonparam(x: &Tensor, eps: f64) -> Result<Tensor> {
    in_f32(x, |x| {
        let xc = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        Ok(xc.broadcast_mul(&(var + eps)?.sqrt()?.recip()?)?)
    })
}

/// Softmax over the last dimension: exp(x − max) / Σ exp(x − max). The max is detached (the
/// result does not depend on it mathematically).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    in_f32(x, |x| {
        let m = x.max_keepdim(D::Minus1)?.detach();
        let e = x.broadcast_sub(&m)?.exp()?;
        let s = e.sum_keepdim(D::Minus1)?;
        Ok(e.broadcast_div(&s)?)
    })
}

/// log-softmax over the last dimension: x − max − log Σ exp(x − max).
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    in_f32(x, |x| {
        let m = x.max_keepdim(D::Minus1)?.detach();
        let z = x.broadcast_sub(&m)?;
        let lse = z.exp()?.sum_keepdim(D::Minus1)?.log()?;
        Ok(z.broadcast_sub(&lse)?)
    })
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

/// softmax(scale·x + mask) over the last dimension (attention scores; mask broadcast to x).
/// Half precision: scaled and masked in it, the softmax in f32 (transformers' eager attention).
pub fn masked_softmax(x: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    softmax_last_dim(&(x * scale)?.broadcast_add(mask)?)
}

/// silu(g)·u.
pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    Ok((g.silu()? * u)?)
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

/// [.., 4]: log p(target), [argmax = target], μ = Σ p log p, σ² = Σ p log² p − μ².
pub fn token_stats(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let lp = log_softmax_last_dim(logits)?;
    let p = lp.exp()?;
    let plp = (&p * &lp)?;
    let mu = plp.sum_keepdim(D::Minus1)?;
    let var = ((plp * &lp)?.sum_keepdim(D::Minus1)? - mu.sqr()?)?;
    let idx = targets.contiguous()?.unsqueeze(D::Minus1)?;
    let tgt = lp.contiguous()?.gather(&idx, D::Minus1)?;
    let hit = lp
        .argmax_keepdim(D::Minus1)?
        .eq(&idx)?
        .to_dtype(logits.dtype())?;
    Ok(Tensor::cat(&[tgt, hit, mu, var], D::Minus1)?)
}

/// x · Wᵀ for x: [.., in], w: [out, in], computed as one 2-D matmul.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let inp = *dims.last().unwrap();
    let n: usize = dims[..dims.len() - 1].iter().product();
    let y = x.reshape((n, inp))?.matmul(&w.t()?)?;
    let mut out = dims;
    *out.last_mut().unwrap() = w.dim(0)?;
    Ok(y.reshape(out)?)
}

/// Causal self-attention with RoPE (what `super::attention` computes): q [b, t, heads·d],
/// k, v [b, t, kv_heads·d] -> [b, t, heads·d].
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (cos, sin): (&Tensor, &Tensor),
    mask: &Tensor,
    (heads, kv_heads): (usize, usize),
    (scale, softcap): (f64, Option<f64>),
) -> Result<Tensor> {
    let (b, t, qw) = q.dims3()?;
    let d = qw / heads;
    let q = rope(&q.reshape((b, t, heads, d))?.transpose(1, 2)?, cos, sin)?;
    let k = rope(&k.reshape((b, t, kv_heads, d))?.transpose(1, 2)?, cos, sin)?;
    let v = v.reshape((b, t, kv_heads, d))?.transpose(1, 2)?;
    attend(
        &q,
        &k.contiguous()?,
        &v.contiguous()?,
        mask,
        masked_softmax,
        scale,
        softcap,
    )
}

/// The attention product after RoPE: q [b, heads, t, d], k, v [b, kv_heads, T, d] (T ≥ t with a
/// KV cache), mask [1 or b, 1, 1, t, T] -> [b, t, heads·d]. Grouped-query attention without
/// copying k/v: the g = heads / kv_heads query heads of a group share one kv head (HF
/// `repeat_kv`: head h uses kv head h / g). `softmax` is the masked softmax to use (the fused
/// kernel on the model's KV-cache path, the composite one in the reference above). Scores are
/// scale·q·kᵀ, soft-capped to c·tanh(x/c) before the mask when `softcap` is c (Gemma 2).
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    softmax: fn(&Tensor, &Tensor, f64) -> Result<Tensor>,
    scale: f64,
    softcap: Option<f64>,
) -> Result<Tensor> {
    let (b, nh, t, d) = q.dims4()?;
    let (nkv, total) = (k.dim(1)?, k.dim(2)?);
    let g = nh / nkv;
    let qg = q.contiguous()?.reshape((b, nkv, g * t, d))?;
    let att = qg.matmul(&k.t()?)?.reshape((b, nkv, g, t, total))?; // q·kᵀ
    let att = match softcap {
        Some(c) if matches!(att.dtype(), DType::BF16 | DType::F16) => {
            // half precision: transformers' order of roundings (scale, divide, tanh, multiply)
            let capped = ((((att * scale)? / c)?.tanh()?) * c)?;
            softmax(&capped, mask, 1.0)?
        }
        Some(c) => {
            let capped = (((att * (scale / c))?.tanh()?) * c)?;
            softmax(&capped, mask, 1.0)?
        }
        None => softmax(&att, mask, scale)?,
    }
    .reshape((b, nkv, g * t, total))?;
    let y = att.matmul(v)?; // [b, nkv, g·t, d]
    Ok(y.reshape((b, nh, t, d))?
        .transpose(1, 2)?
        .reshape((b, t, nh * d))?)
}
