//! Fused CPU kernels (f32, f64) with hand-written backward passes, as candle custom ops.
//!
//! Each forward reads its input once or twice and writes its output once, in parallel over rows
//! (rayon); each backward is one more such pass. The composite versions in `super::composite`
//! define what every kernel must compute; `super::tests` checks forward values and gradients
//! against them and against finite differences.
//!
//! Row-wise ops see a tensor as rows of its last dimension. Inputs must be contiguous (the
//! wrappers in `super` call `.contiguous()`), except RoPE, which reads any layout whose last
//! dimension is dense, so the query/key transposes of attention need no copy.
use std::sync::Mutex;

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor, WithDType,
};
use rayon::prelude::*;

type CResult<T> = candle_core::Result<T>;

/// Float element types the kernels run on.
pub trait Real: WithDType + std::ops::Neg<Output = Self> {
    /// x ← exp(x) element-wise.
    fn exp_inplace(x: &mut [Self]);
    fn sqrt(self) -> Self;
    fn ln(self) -> Self;
}

impl Real for f32 {
    fn exp_inplace(x: &mut [f32]) {
        exp_f32_inplace(x)
    }
    fn sqrt(self) -> f32 {
        f32::sqrt(self)
    }
    fn ln(self) -> f32 {
        f32::ln(self)
    }
}

impl Real for f64 {
    fn exp_inplace(x: &mut [f64]) {
        x.iter_mut().for_each(|v| *v = v.exp());
    }
    fn sqrt(self) -> f64 {
        f64::sqrt(self)
    }
    fn ln(self) -> f64 {
        f64::ln(self)
    }
}

#[inline(always)]
fn zero<T: WithDType>() -> T {
    T::from_f64(0.0)
}

/// Σ x over 8 independent lanes (so the compiler can vectorise the reduction).
#[inline(always)]
fn sum<T: WithDType>(x: &[T]) -> T {
    let mut acc = [zero::<T>(); 8];
    let chunks = x.chunks_exact(8);
    let mut s = zero::<T>();
    for v in chunks.remainder() {
        s += *v;
    }
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    for a in acc {
        s += a;
    }
    s
}

/// Σ a·b over 8 lanes.
#[inline(always)]
fn dot<T: WithDType>(a: &[T], b: &[T]) -> T {
    let mut acc = [zero::<T>(); 8];
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut s = zero::<T>();
    let full = n / 8 * 8;
    for i in full..n {
        s += a[i] * b[i];
    }
    for (ca, cb) in a[..full].chunks_exact(8).zip(b[..full].chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    for v in acc {
        s += v;
    }
    s
}

/// max over 8 lanes; NaN entries are skipped here and surface in the exp-sum that follows.
#[inline(always)]
fn max<T: WithDType>(x: &[T]) -> T {
    let mut acc = [T::from_f64(f64::NEG_INFINITY); 8];
    let chunks = x.chunks_exact(8);
    let mut m = T::from_f64(f64::NEG_INFINITY);
    for &v in chunks.remainder() {
        if v > m {
            m = v;
        }
    }
    for c in chunks {
        for i in 0..8 {
            if c[i] > acc[i] {
                acc[i] = c[i];
            }
        }
    }
    for a in acc {
        if a > m {
            m = a;
        }
    }
    m
}

/// exp for f32 without a libm call, so loops over it vectorise: Cephes `expf` (range reduction
/// x = n·ln2 + r with |r| ≤ ln2/2, degree-6 polynomial in r, 2ⁿ built from its exponent bits),
/// within 2 ulp of the exact value on [−86.5, 88.72]. Below −86.5 (results under 3e−38) it
/// returns 0, above 88.72 +∞; NaN stays NaN.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LO: f32 = -86.5;
    const HI: f32 = 88.722_83;
    const MAGIC: f32 = 12_582_912.0; // 1.5·2²³: x + MAGIC rounds x to an integer in the low bits
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = if x < LO {
        LO
    } else if x > HI {
        HI
    } else {
        x
    };
    let t = xc * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC; // round(x·log2 e)
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 5.000_000_1e-1)
        * (r * r)
        + r
        + 1.0;
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32); // n ∈ [−125, 128]
    let y = p * f32::from_bits(((ni + 126) as u32) << 23) * 2.0;
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        y
    }
}

#[inline(always)]
fn exp_f32_loop(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = exp_f32(*v);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_f32_avx512(x: &mut [f32]) {
    exp_f32_loop(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_f32_avx2(x: &mut [f32]) {
    exp_f32_loop(x)
}

/// x ← exp(x), using the widest vector unit the CPU has.
pub fn exp_f32_inplace(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features the function was compiled for.
            return unsafe { exp_f32_avx512(x) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { exp_f32_avx2(x) };
        }
    }
    exp_f32_loop(x)
}

/// The contiguous slice of a storage.
fn cont<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, op: &str) -> CResult<&'a [T]> {
    let data = T::cpu_storage_as_slice(s)?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{op}: contiguous input expected"),
    }
}

/// Rows per parallel task: about four tasks per thread, and at least 16k elements each.
fn rows_per_task(rows: usize, n: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let by_threads = rows.div_ceil(4 * threads);
    let min_rows = 16384 / n.max(1);
    by_threads.max(min_rows).clamp(1, rows.max(1))
}

/// Run `f(first_row, chunk)` over `out` split into whole rows of `n`, in parallel.
fn par_rows<T: Send>(out: &mut [T], n: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    if out.is_empty() || n == 0 {
        return;
    }
    if out.len() <= 2 * 16384 {
        // too little work to be worth waking the thread pool (generation's single rows)
        return f(0, out);
    }
    let per = rows_per_task(out.len() / n, n);
    out.par_chunks_mut(per * n)
        .enumerate()
        .for_each(|(c, chunk)| f(c * per, chunk));
}

/// Dispatch on the float type of a storage: `float!(storage, name, T => expr)`.
macro_rules! float {
    ($s:expr, $name:expr, $T:ident => $body:expr) => {
        match $s {
            CpuStorage::F32(_) => {
                type $T = f32;
                $body
            }
            CpuStorage::F64(_) => {
                type $T = f64;
                $body
            }
            _ => bail!("{}: f32 or f64 input expected", $name),
        }
    };
}

fn last_dim(l: &Layout, op: &str) -> CResult<usize> {
    match l.dims().last() {
        Some(&n) if n > 0 => Ok(n),
        _ => bail!("{op}: a non-empty last dimension expected, got {:?}", l.dims()),
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm: y = x·r·w, r = (mean(x²) + eps)^(−1/2) per row. x: [.., h], w: [h].
// Backward: x̂ = x·r, dw = Σ_rows dy ⊙ x̂, dx = r·(dy⊙w − x̂·mean(dy⊙w⊙x̂)).

fn rms_inv<T: Real>(x: &[T], eps: f64) -> T {
    let ms = dot(x, x).to_f64() / x.len() as f64;
    T::from_f64(1.0 / (ms + eps).sqrt())
}

pub struct RmsNorm {
    pub eps: f64,
}

impl RmsNorm {
    fn fwd<T: Real>(&self, x: &[T], w: &[T]) -> Vec<T> {
        let h = w.len();
        let mut y = vec![zero::<T>(); x.len()];
        par_rows(&mut y, h, |r0, out| {
            for (i, yr) in out.chunks_mut(h).enumerate() {
                let xr = &x[(r0 + i) * h..][..h];
                let inv = rms_inv(xr, self.eps);
                for j in 0..h {
                    yr[j] = xr[j] * inv * w[j];
                }
            }
        });
        y
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "unlearn-rms-norm"
    }
    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let h = last_dim(lx, self.name())?;
        if lw.dims() != [h] {
            bail!("rms_norm: weight {:?} for input {:?}", lw.dims(), lx.dims());
        }
        float!(sx, self.name(), T => {
            let y = self.fwd::<T>(cont(sx, lx, self.name())?, cont(sw, lw, self.name())?);
            Ok((T::to_cpu_storage_owned(y), lx.shape().clone()))
        })
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let n = x.elem_count();
        let h = w.elem_count();
        let out = x.contiguous()?.apply_op3_no_bwd(
            &w.contiguous()?,
            &dy.contiguous()?,
            &RmsNormBwd { eps: self.eps },
        )?;
        let dx = out.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = out.narrow(0, n, h)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// (x, w, dy) -> [dx (flattened) ; dw].
struct RmsNormBwd {
    eps: f64,
}

impl RmsNormBwd {
    fn run<T: Real>(&self, x: &[T], w: &[T], dy: &[T]) -> Vec<T> {
        let (n, h) = (x.len(), w.len());
        let mut out = vec![zero::<T>(); n + h];
        let (dx, dw) = out.split_at_mut(n);
        let rows = n / h;
        if rows > 0 {
            let per = rows_per_task(rows, h);
            let hf = T::from_f64(h as f64);
            let partials: Vec<Vec<T>> = dx
                .par_chunks_mut(per * h)
                .enumerate()
                .map(|(c, chunk)| {
                    let mut dwp = vec![zero::<T>(); h];
                    for (i, dxr) in chunk.chunks_mut(h).enumerate() {
                        let r = c * per + i;
                        let xr = &x[r * h..][..h];
                        let gr = &dy[r * h..][..h];
                        let inv = rms_inv(xr, self.eps);
                        let mut acc = zero::<T>();
                        for j in 0..h {
                            let xh = xr[j] * inv;
                            acc += gr[j] * w[j] * xh;
                            dwp[j] += gr[j] * xh;
                        }
                        let m = acc / hf;
                        for j in 0..h {
                            dxr[j] = inv * (gr[j] * w[j] - xr[j] * inv * m);
                        }
                    }
                    dwp
                })
                .collect();
            for p in partials {
                for (a, b) in dw.iter_mut().zip(p) {
                    *a += b;
                }
            }
        }
        out
    }
}

impl CustomOp3 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "unlearn-rms-norm-bwd"
    }
    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let name = self.name();
        float!(sx, name, T => {
            let out = self.run::<T>(cont(sx, lx, name)?, cont(sw, lw, name)?, cont(sg, lg, name)?);
            let len = out.len();
            Ok((T::to_cpu_storage_owned(out), Shape::from(len)))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Softmax over the last dimension, optionally of scale·x + mask (attention):
//   y = exp(z − max z) / Σ exp(z − max z),  z = scale·x (+ mask row).
// Backward: dx = scale · y ⊙ (dy − Σ y⊙dy).

#[inline(always)]
fn softmax_row<T: Real>(out: &mut [T]) {
    let m = max(out);
    for v in out.iter_mut() {
        *v -= m;
    }
    T::exp_inplace(out);
    let s = sum(out);
    let inv = T::from_f64(1.0) / s;
    for v in out.iter_mut() {
        *v *= inv;
    }
}

/// Softmax over the last dimension.
pub struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "unlearn-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let n = last_dim(l, self.name())?;
        float!(s, self.name(), T => {
            let x: &[T] = cont(s, l, self.name())?;
            let mut y = x.to_vec();
            par_rows(&mut y, n, |_, out| out.chunks_mut(n).for_each(softmax_row));
            Ok((T::to_cpu_storage_owned(y), l.shape().clone()))
        })
    }
    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(
            y.apply_op2_no_bwd(&dy.contiguous()?, &SoftmaxBwd { scale: 1.0 })?,
        ))
    }
}

/// softmax(scale·x + mask) over the last dimension. x: [B, .., T, K]; mask: [1 or B, 1.., T, K]
/// (row `(b, .., t)` of x uses mask row `(b or 0, t)`); no gradient flows to the mask.
pub struct MaskedSoftmax {
    pub scale: f64,
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "unlearn-masked-softmax"
    }
    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sm: &CpuStorage,
        lm: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let name = self.name();
        let (xd, md) = (lx.dims(), lm.dims());
        let r = xd.len();
        let ok = r >= 3
            && md.len() == r
            && md[r - 1] == xd[r - 1]
            && md[r - 2] == xd[r - 2]
            && (md[0] == 1 || md[0] == xd[0])
            && md[1..r - 2].iter().all(|&d| d == 1);
        if !ok {
            bail!("{name}: mask {md:?} does not fit scores {xd:?}");
        }
        let (k, t, b, mb) = (xd[r - 1], xd[r - 2], xd[0], md[0]);
        let rows_per_b = lx.shape().elem_count() / b.max(1) / k;
        float!(sx, name, T => {
            let x: &[T] = cont(sx, lx, name)?;
            let m: &[T] = cont(sm, lm, name)?;
            let scale = T::from_f64(self.scale);
            let mut y = vec![zero::<T>(); x.len()];
            par_rows(&mut y, k, |r0, out| {
                for (i, yr) in out.chunks_mut(k).enumerate() {
                    let row = r0 + i;
                    let bi = if mb == 1 { 0 } else { row / rows_per_b };
                    let mr = &m[(bi * t + row % t) * k..][..k];
                    let xr = &x[row * k..][..k];
                    for j in 0..k {
                        yr[j] = xr[j] * scale + mr[j];
                    }
                    softmax_row(yr);
                }
            });
            Ok((T::to_cpu_storage_owned(y), lx.shape().clone()))
        })
    }
    fn bwd(
        &self,
        _x: &Tensor,
        _mask: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let dx = y.apply_op2_no_bwd(&dy.contiguous()?, &SoftmaxBwd { scale: self.scale })?;
        Ok((Some(dx), None))
    }
}

/// (y, dy) -> scale · y ⊙ (dy − Σ y⊙dy).
struct SoftmaxBwd {
    scale: f64,
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "unlearn-softmax-bwd"
    }
    fn cpu_fwd(
        &self,
        sy: &CpuStorage,
        ly: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let name = self.name();
        let n = last_dim(ly, name)?;
        float!(sy, name, T => {
            let y: &[T] = cont(sy, ly, name)?;
            let g: &[T] = cont(sg, lg, name)?;
            let scale = T::from_f64(self.scale);
            let mut dx = vec![zero::<T>(); y.len()];
            par_rows(&mut dx, n, |r0, out| {
                for (i, dr) in out.chunks_mut(n).enumerate() {
                    let yr = &y[(r0 + i) * n..][..n];
                    let gr = &g[(r0 + i) * n..][..n];
                    let s = dot(yr, gr);
                    for j in 0..n {
                        dr[j] = scale * yr[j] * (gr[j] - s);
                    }
                }
            });
            Ok((T::to_cpu_storage_owned(dx), ly.shape().clone()))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// log-softmax over the last dimension: y = x − max − ln Σ exp(x − max).
// Backward: dx = dy − exp(y)·Σdy.

/// ln Σ exp(x) of one row, using `scratch` (same length) as work space.
#[inline(always)]
fn logsumexp<T: Real>(x: &[T], scratch: &mut [T]) -> T {
    let m = max(x);
    if m.to_f64() == f64::NEG_INFINITY {
        return m;
    }
    for (s, &v) in scratch.iter_mut().zip(x) {
        *s = v - m;
    }
    T::exp_inplace(scratch);
    m + sum(scratch).ln()
}

pub struct LogSoftmax;

impl CustomOp1 for LogSoftmax {
    fn name(&self) -> &'static str {
        "unlearn-log-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let n = last_dim(l, self.name())?;
        float!(s, self.name(), T => {
            let x: &[T] = cont(s, l, self.name())?;
            let mut y = vec![zero::<T>(); x.len()];
            par_rows(&mut y, n, |r0, out| {
                for (i, yr) in out.chunks_mut(n).enumerate() {
                    let xr = &x[(r0 + i) * n..][..n];
                    let lse = logsumexp(xr, yr);
                    for j in 0..n {
                        yr[j] = xr[j] - lse;
                    }
                }
            });
            Ok((T::to_cpu_storage_owned(y), l.shape().clone()))
        })
    }
    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&dy.contiguous()?, &LogSoftmaxBwd)?))
    }
}

/// (y, dy) -> dy − exp(y)·Σdy.
struct LogSoftmaxBwd;

impl CustomOp2 for LogSoftmaxBwd {
    fn name(&self) -> &'static str {
        "unlearn-log-softmax-bwd"
    }
    fn cpu_fwd(
        &self,
        sy: &CpuStorage,
        ly: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let name = self.name();
        let n = last_dim(ly, name)?;
        float!(sy, name, T => {
            let y: &[T] = cont(sy, ly, name)?;
            let g: &[T] = cont(sg, lg, name)?;
            let mut dx = y.to_vec();
            par_rows(&mut dx, n, |r0, out| {
                for (i, dr) in out.chunks_mut(n).enumerate() {
                    let gr = &g[(r0 + i) * n..][..n];
                    let s = sum(gr);
                    T::exp_inplace(dr);
                    for j in 0..n {
                        dr[j] = gr[j] - dr[j] * s;
                    }
                }
            });
            Ok((T::to_cpu_storage_owned(dx), ly.shape().clone()))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// log p(target) per row without materialising the log-softmax: logits [.., V], targets [..]
// (u32) -> [..], out = x[target] − logsumexp(x).
// Backward: dx = g · (onehot(target) − softmax(x)), from the row's logsumexp kept by the forward.

pub struct GatherLogprobs {
    /// logsumexp of every row, stored by the forward for the backward.
    lse: Mutex<Vec<f64>>,
}

impl GatherLogprobs {
    pub fn new() -> Self {
        GatherLogprobs {
            lse: Mutex::new(Vec::new()),
        }
    }
}

fn targets_of<'a>(s: &'a CpuStorage, l: &Layout, rows: usize, v: usize, op: &str) -> CResult<&'a [u32]> {
    let t: &[u32] = cont(s, l, op)?;
    if t.len() != rows {
        bail!("{op}: {} targets for {rows} rows", t.len());
    }
    if let Some((i, &bad)) = t.iter().enumerate().find(|(_, x)| **x as usize >= v) {
        bail!("{op}: target {bad} at position {i} is outside the vocabulary of {v}");
    }
    Ok(t)
}

impl CustomOp2 for GatherLogprobs {
    fn name(&self) -> &'static str {
        "unlearn-gather-logprobs"
    }
    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        st: &CpuStorage,
        lt: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let name = self.name();
        let v = last_dim(lx, name)?;
        let rows = lx.shape().elem_count() / v;
        let lead = lx.dims()[..lx.dims().len() - 1].to_vec();
        let tg = targets_of(st, lt, rows, v, name)?;
        float!(sx, name, T => {
            let x: &[T] = cont(sx, lx, name)?;
            let mut lse = vec![0f64; rows];
            let per = rows_per_task(rows, v);
            if rows > 0 {
                lse.par_chunks_mut(per).enumerate().for_each(|(c, ls)| {
                    let mut scratch = vec![zero::<T>(); v];
                    for (i, l) in ls.iter_mut().enumerate() {
                        let r = c * per + i;
                        *l = logsumexp(&x[r * v..][..v], &mut scratch).to_f64();
                    }
                });
            }
            let out: Vec<T> = (0..rows)
                .map(|r| T::from_f64(x[r * v + tg[r] as usize].to_f64() - lse[r]))
                .collect();
            *self.lse.lock().unwrap() = lse;
            Ok((T::to_cpu_storage_owned(out), Shape::from(lead)))
        })
    }
    fn bwd(
        &self,
        x: &Tensor,
        targets: &Tensor,
        _out: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let lse = self.lse.lock().unwrap().clone();
        let dx = x.contiguous()?.apply_op3_no_bwd(
            &targets.contiguous()?,
            &g.contiguous()?,
            &GatherLogprobsBwd { lse },
        )?;
        Ok((Some(dx), None))
    }
}

/// (x, targets, g) -> g · (onehot(target) − exp(x − lse)).
struct GatherLogprobsBwd {
    lse: Vec<f64>,
}

impl CustomOp3 for GatherLogprobsBwd {
    fn name(&self) -> &'static str {
        "unlearn-gather-logprobs-bwd"
    }
    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        st: &CpuStorage,
        lt: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let name = self.name();
        let v = last_dim(lx, name)?;
        let rows = lx.shape().elem_count() / v;
        let tg = targets_of(st, lt, rows, v, name)?;
        if self.lse.len() != rows {
            bail!("{name}: forward saw {} rows, backward {rows}", self.lse.len());
        }
        float!(sx, name, T => {
            let x: &[T] = cont(sx, lx, name)?;
            let g: &[T] = cont(sg, lg, name)?;
            let mut dx = vec![zero::<T>(); x.len()];
            par_rows(&mut dx, v, |r0, out| {
                for (i, dr) in out.chunks_mut(v).enumerate() {
                    let r = r0 + i;
                    let (gr, lse) = (g[r], T::from_f64(self.lse[r]));
                    let xr = &x[r * v..][..v];
                    for j in 0..v {
                        dr[j] = xr[j] - lse;
                    }
                    T::exp_inplace(dr);
                    for d in dr.iter_mut() {
                        *d = -gr * *d;
                    }
                    dr[tg[r] as usize] += gr;
                }
            });
            Ok((T::to_cpu_storage_owned(dx), lx.shape().clone()))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// RoPE (HF `rotate_half`): with x = [x1, x2] halves of the head dimension,
//   y = [x1·cos − x2·sin, x2·cos + x1·sin].   x: [b, H, t, d] (any layout with a dense last
// dimension), cos, sin: [1 or b, 1, t, d/2]; y is contiguous.
// Backward: the rotation by −angle, dx = [dy1·cos + dy2·sin, dy2·cos − dy1·sin].

pub struct Rope {
    /// Rotate by −angle (the backward pass).
    pub inverse: bool,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "unlearn-rope"
    }
    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sc: &CpuStorage,
        lc: &Layout,
        ss: &CpuStorage,
        ls: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let name = self.name();
        let xd = lx.dims();
        if xd.len() != 4 || xd[3] % 2 != 0 || lx.stride()[3] != 1 {
            bail!("{name}: x must be [b, heads, t, even head_dim] with a dense last dimension, got {xd:?} strides {:?}", lx.stride());
        }
        let (b, heads, t, d) = (xd[0], xd[1], xd[2], xd[3]);
        let half = d / 2;
        let cd = lc.dims();
        let cb = cd[0];
        if cd.len() != 4 || (cb != 1 && cb != b) || cd[1] != 1 || cd[2] != t || cd[3] != half || ls.dims() != cd {
            bail!("{name}: cos/sin {cd:?} / {:?} do not fit x {xd:?}", ls.dims());
        }
        let st = lx.stride().to_vec();
        let off = lx.start_offset();
        let inverse = self.inverse;
        float!(sx, name, T => {
            let x: &[T] = T::cpu_storage_as_slice(sx)?;
            let cos: &[T] = cont(sc, lc, name)?;
            let sin: &[T] = cont(ss, ls, name)?;
            let mut y = vec![zero::<T>(); b * heads * t * d];
            par_rows(&mut y, t * d, |p0, out| {
                for (i, plane) in out.chunks_mut(t * d).enumerate() {
                    let p = p0 + i;
                    let (bi, hi) = (p / heads, p % heads);
                    let cbi = if cb == 1 { 0 } else { bi };
                    for ti in 0..t {
                        let src = &x[off + bi * st[0] + hi * st[1] + ti * st[2]..][..d];
                        let c = &cos[(cbi * t + ti) * half..][..half];
                        let s = &sin[(cbi * t + ti) * half..][..half];
                        let (y1, y2) = plane[ti * d..(ti + 1) * d].split_at_mut(half);
                        let (x1, x2) = src.split_at(half);
                        for j in 0..half {
                            let sj = if inverse { -s[j] } else { s[j] };
                            y1[j] = x1[j] * c[j] - x2[j] * sj;
                            y2[j] = x2[j] * c[j] + x1[j] * sj;
                        }
                    }
                }
            });
            Ok((T::to_cpu_storage_owned(y), Shape::from(xd.to_vec())))
        })
    }
    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = if dy.stride().last() == Some(&1) {
            dy.clone()
        } else {
            dy.contiguous()?
        };
        let dx = dy.apply_op3_no_bwd(cos, sin, &Rope {
            inverse: !self.inverse,
        })?;
        Ok((Some(dx), None, None))
    }
}

// ---------------------------------------------------------------------------------------------
// SwiGLU: y = silu(g)·u = g·σ(g)·u (same shapes).
// Backward: dg = dy·u·σ(g)·(1 + g·(1 − σ(g))), du = dy·silu(g).

pub struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "unlearn-swiglu"
    }
    fn cpu_fwd(
        &self,
        sg: &CpuStorage,
        lg: &Layout,
        su: &CpuStorage,
        lu: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let name = self.name();
        if lg.dims() != lu.dims() {
            bail!("{name}: gate {:?} and up {:?} differ", lg.dims(), lu.dims());
        }
        float!(sg, name, T => {
            let g: &[T] = cont(sg, lg, name)?;
            let u: &[T] = cont(su, lu, name)?;
            let mut y: Vec<T> = g.iter().map(|&v| -v).collect();
            const CH: usize = 4096;
            y.par_chunks_mut(CH).enumerate().for_each(|(c, out)| {
                T::exp_inplace(out); // e^(−g)
                let (gc, uc) = (&g[c * CH..], &u[c * CH..]);
                for j in 0..out.len() {
                    out[j] = gc[j] / (T::from_f64(1.0) + out[j]) * uc[j];
                }
            });
            Ok((T::to_cpu_storage_owned(y), lg.shape().clone()))
        })
    }
    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let n = g.elem_count();
        let out = g
            .contiguous()?
            .apply_op3_no_bwd(&u.contiguous()?, &dy.contiguous()?, &SwiGluBwd)?;
        let dg = out.narrow(0, 0, n)?.reshape(g.shape())?;
        let du = out.narrow(0, n, n)?.reshape(g.shape())?;
        Ok((Some(dg), Some(du)))
    }
}

/// (g, u, dy) -> [dg (flattened) ; du (flattened)].
struct SwiGluBwd;

impl CustomOp3 for SwiGluBwd {
    fn name(&self) -> &'static str {
        "unlearn-swiglu-bwd"
    }
    fn cpu_fwd(
        &self,
        sg: &CpuStorage,
        lg: &Layout,
        su: &CpuStorage,
        lu: &Layout,
        sd: &CpuStorage,
        ld: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let name = self.name();
        float!(sg, name, T => {
            let g: &[T] = cont(sg, lg, name)?;
            let u: &[T] = cont(su, lu, name)?;
            let dy: &[T] = cont(sd, ld, name)?;
            let n = g.len();
            let mut out = vec![zero::<T>(); 2 * n];
            let (dg, du) = out.split_at_mut(n);
            for (o, &v) in dg.iter_mut().zip(g) {
                *o = -v;
            }
            const CH: usize = 4096;
            let one = T::from_f64(1.0);
            dg.par_chunks_mut(CH)
                .zip(du.par_chunks_mut(CH))
                .enumerate()
                .for_each(|(c, (dgc, duc))| {
                    T::exp_inplace(dgc); // e^(−g)
                    let (gc, uc, yc) = (&g[c * CH..], &u[c * CH..], &dy[c * CH..]);
                    for j in 0..dgc.len() {
                        let sig = one / (one + dgc[j]);
                        let silu = gc[j] * sig;
                        duc[j] = yc[j] * silu;
                        dgc[j] = yc[j] * uc[j] * sig * (one + gc[j] * (one - sig));
                    }
                });
            let len = out.len();
            Ok((T::to_cpu_storage_owned(out), Shape::from(len)))
        })
    }
}
