//! Differentiable building blocks of the model and the losses.
//!
//! On CPU in f32/f64 each op runs a fused kernel with a hand-written backward pass
//! (`fused`): one pass over the data forward and one backward, in parallel, with nothing kept for
//! the backward beyond the op's inputs and output. Elsewhere (CUDA, half precision) and after
//! `set_fused(false)` the same ops are compositions of primitive candle ops (`composite`), which
//! define what the kernels compute; the tests hold the two to each other and to finite
//! differences.
pub mod attention;
pub mod composite;
pub mod fused;
pub mod lm_head;

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

static FUSED: AtomicBool = AtomicBool::new(true);

/// Use the fused CPU kernels where they apply (default: on). Off, every op runs its composite
/// form: `unlearn bench --composite` measures the difference.
pub fn set_fused(on: bool) {
    FUSED.store(on, Ordering::Relaxed);
}

pub fn fused_enabled() -> bool {
    FUSED.load(Ordering::Relaxed)
}

/// Whether the fused kernels apply to tensors of this device and dtype.
fn fused_for(x: &Tensor) -> bool {
    fused_enabled() && x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// RMSNorm: y = x / sqrt(mean(x², -1) + eps) · w. x: [.., h], w: [h].
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if fused_for(x) && w.dtype() == x.dtype() {
        return Ok(x
            .contiguous()?
            .apply_op2(&w.contiguous()?, fused::RmsNorm { eps })?);
    }
    composite::rms_norm(x, w, eps)
}

/// Softmax over the last dimension: exp(x − max) / Σ exp(x − max).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if fused_for(x) {
        return Ok(x.contiguous()?.apply_op1(fused::Softmax)?);
    }
    composite::softmax_last_dim(x)
}

/// Attention weights softmax(scale·x + mask) over the last dimension. x: [B, .., T, K] scores,
/// mask: [1 or B, 1.., T, K] additive (0 or a large negative number), no gradient.
pub fn masked_softmax(x: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    if fused_for(x) && mask.dtype() == x.dtype() && mask.rank() == x.rank() {
        return Ok(x
            .contiguous()?
            .apply_op2(&mask.contiguous()?, fused::MaskedSoftmax { scale })?);
    }
    composite::masked_softmax(x, mask, scale)
}

/// log-softmax over the last dimension: x − max − log Σ exp(x − max).
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if fused_for(x) {
        return Ok(x.contiguous()?.apply_op1(fused::LogSoftmax)?);
    }
    composite::log_softmax_last_dim(x)
}

/// HF-style rotary embedding (`rotate_half`, non-interleaved): with x = [x1, x2] halves,
/// y = [x1·cos − x2·sin, x2·cos + x1·sin]. x: [b, heads, t, hd]; cos, sin: [b or 1, 1, t, hd/2].
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if fused_for(x) && cos.dtype() == x.dtype() && x.rank() == 4 {
        let x = if x.stride()[3] == 1 {
            x.clone()
        } else {
            x.contiguous()?
        };
        return Ok(x.apply_op3(
            &cos.contiguous()?,
            &sin.contiguous()?,
            fused::Rope { inverse: false },
        )?);
    }
    composite::rope(x, cos, sin)
}

/// Causal self-attention with RoPE over whole sequences (no KV cache), from the projections'
/// outputs: q [b, t, heads·d], k, v [b, t, kv_heads·d] -> [b, t, heads·d] (the input of
/// `o_proj`); query head h uses kv head h / (heads / kv_heads). cos, sin: [1 or b, 1, t, d/2];
/// mask: additive [1 or b, 1, 1, t, t]. Per head: softmax(cap(scale·rope(Q)·rope(K)ᵀ) + mask)·V
/// (scale = 1/√d for most models; cap(x) = c·tanh(x/c) with a soft-cap c, else x). Fused: one graph node whose backward recomputes the attention weights
/// (`attention.rs`).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (cos, sin): (&Tensor, &Tensor),
    mask: &Tensor,
    (heads, kv_heads): (usize, usize),
    (scale, softcap): (f64, Option<f64>),
) -> Result<Tensor> {
    let (_, t, qw) = q.dims3()?;
    let d = qw / heads.max(1);
    let dt = q.dtype();
    // soft-capped scores (Gemma 2) take the composite path: candle's autograd differentiates
    // the tanh
    if softcap.is_none()
        && fused_for(q)
        && [k, v, cos, sin, mask].iter().all(|x| x.dtype() == dt)
        && cos.rank() == 4
        && mask.rank() == 5
    {
        let half = d / 2;
        let table =
            |x: &Tensor| -> Result<Tensor> { Ok(x.reshape((x.dim(0)?, t, half))?.contiguous()?) };
        let op = attention::Attention {
            heads,
            kv_heads,
            scale,
            cos: table(cos)?,
            sin: table(sin)?,
            mask: mask.reshape((mask.dim(0)?, t, t))?.contiguous()?,
        };
        return Ok(q
            .contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, op)?);
    }
    composite::attention(
        q,
        k,
        v,
        (cos, sin),
        mask,
        (heads, kv_heads),
        (scale, softcap),
    )
}

/// SwiGLU gate: silu(g)·u = g·σ(g)·u, g and u of one shape.
pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    if fused_for(g) && u.dtype() == g.dtype() {
        return Ok(g.contiguous()?.apply_op2(&u.contiguous()?, fused::SwiGlu)?);
    }
    composite::swiglu(g, u)
}

/// log p(target) at every position: logits [b, t, V], targets [b, t] (u32) -> [b, t]. The fused
/// form never materialises the [b, t, V] log-softmax.
pub fn gather_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if fused_for(logits) {
        let lead = &logits.dims()[..logits.rank().saturating_sub(1)];
        if targets.dims() != lead {
            return Err(Error::Invalid(format!(
                "gather_logprobs: targets {:?} for logits {:?}",
                targets.dims(),
                logits.dims()
            )));
        }
        let t = targets.to_dtype(DType::U32)?.contiguous()?;
        return Ok(logits
            .contiguous()?
            .apply_op2(&t, fused::GatherLogprobs::new())?);
    }
    composite::gather_logprobs(logits, targets)
}

/// log p(target) per position from the LM head's input: h [.., H], the head W [V, H], targets
/// [..] -> [..], i.e. `gather_logprobs(linear(h, W), targets)`. Fused (CPU, f32/f64): computed
/// in chunks of rows so the [.., V] logits and their gradient never exist in full
/// (`lm_head.rs`; with a frozen head and rows that need a gradient, the forward also takes
/// ∂out/∂h, so the backward needs no head product); elsewhere the composite form.
pub fn lm_head_logprobs(h: &Tensor, w: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let hid = *h.dims().last().unwrap_or(&0);
    let lead = h.dims()[..h.rank().saturating_sub(1)].to_vec();
    if targets.dims() != lead.as_slice() {
        return Err(Error::Invalid(format!(
            "lm_head_logprobs: targets {:?} for rows {:?}",
            targets.dims(),
            h.dims()
        )));
    }
    if fused_for(h) && w.dtype() == h.dtype() {
        let t = targets
            .flatten_all()?
            .to_dtype(DType::U32)?
            .to_vec1::<u32>()?;
        let n = t.len();
        // a frozen head and rows that need a gradient (LoRA): the Jacobian in the forward
        let jacobian = h.track_op() && !w.track_op();
        let op = lm_head::LmHeadLogprobs {
            targets: std::sync::Arc::new(t),
            chunk: lm_head::chunk_rows(w.dim(0)?),
            jacobian,
        };
        let rows = h.reshape(((), hid))?.contiguous()?;
        let y = rows.apply_op2(&w.contiguous()?, op)?;
        let y = if jacobian { y.narrow(0, 0, n)? } else { y };
        return Ok(y.reshape(lead)?);
    }
    gather_logprobs(&linear(h, w, None)?, targets)
}

/// Evaluation statistics per position (no gradient): logits [.., V], targets [..] -> [.., 4] with
/// log p(target), [argmax = target] (0/1), μ = Σ_v p log p, σ² = Σ_v p log² p − μ². The fused
/// form makes one pass over each row instead of five [.., V] tensors.
pub fn token_stats(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = logits.detach();
    let t = targets.to_dtype(DType::U32)?.contiguous()?;
    if fused_for(&logits) {
        return Ok(logits
            .contiguous()?
            .apply_op2_no_bwd(&t, &fused::TokenStats)?);
    }
    composite::token_stats(&logits, &t)
}

/// x · Wᵀ (+ b) for x: [.., in], w: [out, in] (HF `nn.Linear` layout) -> [.., out]. Fused: one
/// graph node whose backward gives dx = dy·W and dW = dyᵀ·x.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = if fused_for(x) && w.dtype() == x.dtype() {
        x.contiguous()?.apply_op2(&w.contiguous()?, fused::Linear)?
    } else {
        composite::linear(x, w)?
    };
    Ok(match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
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
mod tests;
