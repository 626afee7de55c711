//! The LM head and the label log-probability in one op, computed in chunks of rows so the
//! [rows, vocab] logits never exist in full (`train.chunked_loss`).
//!
//! For rows h_i (the final norm's output, [N, H]), the head W ([V, H]) and targets t_i:
//!
//!   z_i = W·h_i,   out_i = z_i[t_i] − logsumexp(z_i)
//!
//! Backward, with upstream g_i and p_i = softmax(z_i): ∂out_i/∂z_i = onehot(t_i) − p_i, so with
//! G_i = g_i·(onehot(t_i) − p_i): dh_i = Gᵢ·W and dW = Σ_i G_iᵀ h_i. Both passes take `chunk`
//! rows at a time: forward keeps only [chunk, V] logits, backward recomputes them (one extra
//! [chunk, H]·[H, V] product per chunk) and accumulates dW in place. Peak extra memory is
//! chunk·V instead of N·V for the logits plus N·V for their gradient. dW is computed only when W
//! is tracked (a frozen head under LoRA costs no dW product).
//!
//! With a frozen head (LoRA) and rows that need a gradient, the forward computes the Jacobian
//! instead (`jacobian`): ∂out_i/∂h_i = J_i = (onehot(t_i) − p_i)·W does not depend on the
//! upstream gradient, so the forward takes it while it has the chunk's logits (one [chunk, V]·[V,
//! H] product) and keeps it ([N, H], the size of h); the backward is dh_i = g_i·J_i, with no
//! product and no recomputed logits. Two head products a step instead of three, as many as an
//! unchunked forward and backward take.
use std::sync::Arc;

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::fused::{cont, float, gemm_parallelism, gemm_strided, zero, Real};

type CResult<T> = candle_core::Result<T>;

/// Rows per chunk: about 16 M logits (64 MiB in f32) at a time, at least 8 rows.
pub fn chunk_rows(vocab: usize) -> usize {
    ((16usize << 20) / vocab.max(1)).max(8)
}

pub struct LmHeadLogprobs {
    pub targets: Arc<Vec<u32>>,
    pub chunk: usize,
    /// Also compute J = ∂out/∂h in the forward (a frozen head); the output is then [out (N);
    /// J (N·H)], of which the caller uses the first N.
    pub jacobian: bool,
}

fn dims(lh: &Layout, lw: &Layout, n_targets: usize, op: &str) -> CResult<(usize, usize, usize)> {
    let (hd, wd) = (lh.dims(), lw.dims());
    if hd.len() != 2 || wd.len() != 2 || hd[1] != wd[1] {
        bail!("{op}: rows {hd:?} and head {wd:?} do not fit");
    }
    if n_targets != hd[0] {
        bail!("{op}: {n_targets} targets for {} rows", hd[0]);
    }
    Ok((hd[0], hd[1], wd[0]))
}

/// dst[m×n] (+)= lhs[m×k]·rhs[k×n], operands by (row stride, column stride): the slices'
/// checked form of [`gemm_strided`].
fn gemm<T: WithDType>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    dst_strides: (usize, usize),
    (lhs, lrs, lcs): (&[T], usize, usize),
    (rhs, rrs, rcs): (&[T], usize, usize),
    accumulate: bool,
) {
    if m * n * k == 0 {
        return;
    }
    // SAFETY: the slices hold the matrices the strides describe (checked by `dims` and the
    // callers' chunk arithmetic); dst is exclusively borrowed.
    unsafe {
        gemm_strided(
            (m, n, k),
            dst.as_mut_ptr(),
            dst_strides,
            lhs.as_ptr(),
            (lrs, lcs),
            rhs.as_ptr(),
            (rrs, rcs),
            T::from_f64(1.0),
            accumulate,
            gemm_parallelism(m, n, k),
        );
    }
}

/// Logits of rows r0..r0+c: [c, V] = h[r0..]·Wᵀ.
fn chunk_logits<T: WithDType>(
    h: &[T],
    w: &[T],
    r0: usize,
    c: usize,
    hid: usize,
    v: usize,
) -> Vec<T> {
    let mut z = vec![zero::<T>(); c * v];
    gemm(
        (c, v, hid),
        &mut z,
        (v, 1),
        (&h[r0 * hid..(r0 + c) * hid], hid, 1),
        (w, 1, hid),
        false,
    );
    z
}

/// A row of logits z in place to g·(onehot(t) − softmax(z)) = g·∂(z[t] − logsumexp z)/∂z;
/// returns z[t] − logsumexp(z).
fn row_grad_in_place<T: Real>(zr: &mut [T], t: usize, g: T) -> T {
    let (m, l) = lse(zr);
    let out = zr[t] - m - l;
    for x in zr.iter_mut() {
        let p = T::from_f64((*x - m - l).to_f64().exp());
        *x = -(g * p);
    }
    zr[t] += g;
    out
}

/// (max, log Σ exp(z − max)) of a row.
fn lse<T: Real>(z: &[T]) -> (T, T) {
    let m = z.iter().fold(
        T::from_f64(f64::NEG_INFINITY),
        |a, &b| if b > a { b } else { a },
    );
    let s: f64 = z.iter().map(|&x| (x - m).to_f64().exp()).sum();
    (m, T::from_f64(s.ln()))
}

impl LmHeadLogprobs {
    fn fwd<T: Real>(&self, h: &[T], w: &[T], n: usize, hid: usize, v: usize) -> Vec<T> {
        if self.jacobian {
            return self.fwd_jacobian(h, w, n, hid, v);
        }
        let mut out = vec![zero::<T>(); n];
        for r0 in (0..n).step_by(self.chunk) {
            let c = self.chunk.min(n - r0);
            let z = chunk_logits(h, w, r0, c, hid, v);
            out[r0..r0 + c]
                .par_iter_mut()
                .zip(z.par_chunks(v))
                .enumerate()
                .for_each(|(i, (o, zr))| {
                    let (m, l) = lse(zr);
                    *o = zr[self.targets[r0 + i] as usize] - m - l;
                });
        }
        out
    }

    /// [out (N); J (N·H)] with J_i = (onehot(t_i) − softmax(z_i))·W.
    fn fwd_jacobian<T: Real>(&self, h: &[T], w: &[T], n: usize, hid: usize, v: usize) -> Vec<T> {
        let mut packed = vec![zero::<T>(); n + n * hid];
        let (out, jac) = packed.split_at_mut(n);
        for r0 in (0..n).step_by(self.chunk) {
            let c = self.chunk.min(n - r0);
            let mut z = chunk_logits(h, w, r0, c, hid, v);
            out[r0..r0 + c]
                .par_iter_mut()
                .zip(z.par_chunks_mut(v))
                .enumerate()
                .for_each(|(i, (o, zr))| {
                    *o = row_grad_in_place(zr, self.targets[r0 + i] as usize, T::from_f64(1.0));
                });
            // J[c×H] = E[c×V]·W[V×H]
            gemm(
                (c, hid, v),
                &mut jac[r0 * hid..(r0 + c) * hid],
                (hid, 1),
                (&z, v, 1),
                (w, hid, 1),
                false,
            );
        }
        packed
    }
}

impl CustomOp2 for LmHeadLogprobs {
    fn name(&self) -> &'static str {
        "unlearn-lm-head-logprobs"
    }
    fn cpu_fwd(
        &self,
        sh: &CpuStorage,
        lh: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let name = self.name();
        let (n, hid, v) = dims(lh, lw, self.targets.len(), name)?;
        if let Some(&t) = self.targets.iter().find(|&&t| t as usize >= v) {
            bail!("{name}: target {t} outside the vocabulary of {v}");
        }
        float!(sh, name, T => {
            let h: &[T] = cont(sh, lh, name)?;
            let w: &[T] = cont(sw, lw, name)?;
            let y = self.fwd(h, w, n, hid, v);
            let len = y.len();
            Ok((T::to_cpu_storage_owned(y), Shape::from(len)))
        })
    }
    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        out: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        if self.jacobian {
            if w.track_op() {
                bail!("{}: the Jacobian form is for a frozen head", self.name());
            }
            if !h.track_op() {
                return Ok((None, None));
            }
            // dh_i = g_i·J_i (the gradient of J's part of the output is not used: nothing
            // downstream reads it)
            let n = self.targets.len();
            let hid = h.dim(1)?;
            let j = out.narrow(0, n, n * hid)?.reshape((n, hid))?;
            let gi = g.narrow(0, 0, n)?.reshape((n, 1))?;
            return Ok((Some(j.broadcast_mul(&gi)?), None));
        }
        let op = LmHeadBwd {
            targets: self.targets.clone(),
            chunk: self.chunk,
            dh: h.track_op(),
            dw: w.track_op(),
        };
        if !op.dh && !op.dw {
            return Ok((None, None));
        }
        let packed = h
            .contiguous()?
            .apply_op3_no_bwd(&w.contiguous()?, &g.contiguous()?, &op)?;
        let nh = if op.dh { h.elem_count() } else { 0 };
        let dh = op
            .dh
            .then(|| packed.narrow(0, 0, nh)?.reshape(h.shape()))
            .transpose()?;
        let dw = op
            .dw
            .then(|| packed.narrow(0, nh, w.elem_count())?.reshape(w.shape()))
            .transpose()?;
        Ok((dh, dw))
    }
}

/// (h, W, g) -> [dh (when `dh`), dW (when `dw`)], flattened one after the other.
struct LmHeadBwd {
    targets: Arc<Vec<u32>>,
    chunk: usize,
    dh: bool,
    dw: bool,
}

impl LmHeadBwd {
    fn run<T: Real>(&self, h: &[T], w: &[T], g: &[T], n: usize, hid: usize, v: usize) -> Vec<T> {
        let nh = if self.dh { n * hid } else { 0 };
        let mut out = vec![zero::<T>(); nh + if self.dw { v * hid } else { 0 }];
        let (dh, dw) = out.split_at_mut(nh);
        for r0 in (0..n).step_by(self.chunk) {
            let c = self.chunk.min(n - r0);
            // z becomes G = g·(onehot − softmax(z)) in place
            let mut z = chunk_logits(h, w, r0, c, hid, v);
            z.par_chunks_mut(v).enumerate().for_each(|(i, zr)| {
                row_grad_in_place(zr, self.targets[r0 + i] as usize, g[r0 + i]);
            });
            if self.dh {
                // dh[c×H] = G[c×V]·W[V×H]
                gemm(
                    (c, hid, v),
                    &mut dh[r0 * hid..(r0 + c) * hid],
                    (hid, 1),
                    (&z, v, 1),
                    (w, hid, 1),
                    false,
                );
            }
            if self.dw {
                // dW[V×H] += Gᵀ[V×c]·h[c×H]
                gemm(
                    (v, hid, c),
                    dw,
                    (hid, 1),
                    (&z, 1, v),
                    (&h[r0 * hid..(r0 + c) * hid], hid, 1),
                    r0 > 0,
                );
            }
        }
        out
    }
}

impl CustomOp3 for LmHeadBwd {
    fn name(&self) -> &'static str {
        "unlearn-lm-head-logprobs-bwd"
    }
    fn cpu_fwd(
        &self,
        sh: &CpuStorage,
        lh: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let name = self.name();
        let (n, hid, v) = dims(lh, lw, self.targets.len(), name)?;
        float!(sh, name, T => {
            let h: &[T] = cont(sh, lh, name)?;
            let w: &[T] = cont(sw, lw, name)?;
            let g: &[T] = cont(sg, lg, name)?;
            let y = self.run(h, w, g, n, hid, v);
            let len = y.len();
            Ok((T::to_cpu_storage_owned(y), Shape::from(len)))
        })
    }
}
