//! Fused causal self-attention with RoPE over whole sequences (training, scoring, UniErase's
//! left-padded prompts; generation with a KV cache keeps the composite path), as one candle graph
//! node with a hand-written backward that recomputes the attention weights, so nothing of size
//! [t, t] is kept between forward and backward (the memory behaviour of FlashAttention).
//!
//! Inputs are the projections' outputs, q: [b, t, nh·d], k, v: [b, t, nkv·d]; query head h uses
//! kv head h / g with g = nh / nkv (HF `repeat_kv`). The work is split into b·nkv independent
//! units, one per (batch row, kv head), run in parallel; within a unit (rows of the query
//! matrices ordered (head in group, position i)):
//!   Q̃ = rope(Q) [g·t, d],  K̃ = rope(K) [t, d],
//!   P = softmax(scale·Q̃K̃ᵀ + M) [g·t, t]   (M: the additive mask row of position i),
//!   Y = P·V [g·t, d]   → y [b, t, nh·d].
//! Backward, with dY gathered from dy the same way:
//!   dV = Pᵀ·dY,  dP = dY·Vᵀ,  dS = P ⊙ (dP − rowsum(P ⊙ dP)),
//!   dQ̃ = scale·dS·K̃,  dK̃ = scale·dSᵀ·Q̃,  dq = rope⁻¹(dQ̃),  dk = rope⁻¹(dK̃).
//! The products are the `gemm` crate's, single-threaded inside a unit. `super::composite::attention`
//! computes the same thing from primitive ops; `super::tests` holds the two to each other and to
//! finite differences.
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;

use super::fused::{cont, dot, float, gemm_strided, rotate, softmax_row, zero, Real};

type CResult<T> = candle_core::Result<T>;

/// The attention op. `cos`, `sin`: RoPE tables [cb, t, d/2] with cb = 1 (positions 0..t for
/// every row) or b (per-row positions); `mask`: additive [mb, t, t] with mb = 1 or b (0 where
/// query i may see key j, a large negative number elsewhere). All three contiguous, in q's dtype
/// (the wrapper `super::attention` prepares them).
pub struct Attention {
    pub heads: usize,
    pub kv_heads: usize,
    pub scale: f64,
    pub cos: Tensor,
    pub sin: Tensor,
    pub mask: Tensor,
}

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    nh: usize,
    nkv: usize,
    g: usize,
    d: usize,
    cb: usize,
    mb: usize,
}

/// A pointer for writes from parallel units into disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct Out<T>(*mut T);
// SAFETY: every unit writes a disjoint set of elements (its batch row and heads).
unsafe impl<T> Send for Out<T> {}
unsafe impl<T> Sync for Out<T> {}

impl<T> Out<T> {
    /// The element at `off` (a method, so closures capture the whole `Out`, which is Sync).
    ///
    /// # Safety
    /// `off` must lie inside the buffer.
    unsafe fn at(&self, off: usize) -> *mut T {
        self.0.add(off)
    }
}

fn storage_slice<'a, T: WithDType>(s: &'a Storage, l: &Layout, op: &str) -> CResult<&'a [T]> {
    match s {
        Storage::Cpu(c) => cont(c, l, op),
        _ => bail!("{op}: CPU tensors expected"),
    }
}

/// dst[m×n] = beta · lhs[m×k]·rhs[k×n] on the calling thread (`fused::gemm_strided`; a unit is
/// already one task of the parallel loop).
///
/// # Safety
/// As `gemm_strided`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm1<T: WithDType>(
    mnk: (usize, usize, usize),
    dst: *mut T,
    dst_strides: (usize, usize),
    lhs: *const T,
    lhs_strides: (usize, usize),
    rhs: *const T,
    rhs_strides: (usize, usize),
    beta: T,
) {
    gemm_strided(
        mnk,
        dst,
        dst_strides,
        lhs,
        lhs_strides,
        rhs,
        rhs_strides,
        beta,
        false,
        gemm::Parallelism::None,
    );
}

/// Per-thread work space of one unit.
struct Scratch<T> {
    qr: Vec<T>, // Q̃ [g·t, d]
    kr: Vec<T>, // K̃ [t, d]
    p: Vec<T>,  // P [g·t, t]
    yu: Vec<T>, // Y or dY [g·t, d]
    dp: Vec<T>, // dP, then dS [g·t, t]
    dq: Vec<T>, // dQ̃ [g·t, d]
    dk: Vec<T>, // dK̃ [t, d]
}

impl<T: WithDType> Scratch<T> {
    fn new(dm: &Dims, backward: bool) -> Self {
        let (gt, t, d) = (dm.g * dm.t, dm.t, dm.d);
        let bw = |n: usize| {
            if backward {
                vec![zero::<T>(); n]
            } else {
                vec![]
            }
        };
        Scratch {
            qr: vec![zero::<T>(); gt * d],
            kr: vec![zero::<T>(); t * d],
            p: vec![zero::<T>(); gt * t],
            yu: vec![zero::<T>(); gt * d],
            dp: bw(gt * t),
            dq: bw(gt * d),
            dk: bw(t * d),
        }
    }
}

/// The unit's inputs: q, k, v and the tables, as slices.
struct Inputs<'a, T> {
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    cos: &'a [T],
    sin: &'a [T],
    mask: &'a [T],
}

impl<T: Real> Inputs<'_, T> {
    /// RoPE table rows of position i in batch row bi.
    fn cs(&self, dm: &Dims, bi: usize, i: usize) -> (&[T], &[T]) {
        let half = dm.d / 2;
        let r = (if dm.cb == 1 { 0 } else { bi }) * dm.t + i;
        (&self.cos[r * half..][..half], &self.sin[r * half..][..half])
    }

    /// Fill Q̃, K̃ and P of unit (bi, kh).
    fn weights(&self, dm: &Dims, bi: usize, kh: usize, scale: T, s: &mut Scratch<T>) {
        let Dims {
            t, nh, nkv, g, d, ..
        } = *dm;
        for hi in 0..g {
            for i in 0..t {
                let src = &self.q[(bi * t + i) * nh * d + (kh * g + hi) * d..][..d];
                let (c, sn) = self.cs(dm, bi, i);
                rotate(src, c, sn, &mut s.qr[(hi * t + i) * d..][..d], false);
            }
        }
        for j in 0..t {
            let src = &self.k[(bi * t + j) * nkv * d + kh * d..][..d];
            let (c, sn) = self.cs(dm, bi, j);
            rotate(src, c, sn, &mut s.kr[j * d..][..d], false);
        }
        // S = Q̃·K̃ᵀ; K̃ᵀ[kk, j] = kr[j·d + kk]
        // SAFETY: all three matrices lie inside the scratch vectors sized by Scratch::new.
        unsafe {
            gemm1(
                (g * t, t, d),
                s.p.as_mut_ptr(),
                (t, 1),
                s.qr.as_ptr(),
                (d, 1),
                s.kr.as_ptr(),
                (1, d),
                T::from_f64(1.0),
            );
        }
        let mbi = if dm.mb == 1 { 0 } else { bi };
        for (r, row) in s.p.chunks_mut(t).enumerate() {
            let mrow = &self.mask[(mbi * t + r % t) * t..][..t];
            for j in 0..t {
                row[j] = row[j] * scale + mrow[j];
            }
            softmax_row(row);
        }
    }

    /// Offset of V (and dv) for unit (bi, kh); rows have stride nkv·d.
    fn v_off(dm: &Dims, bi: usize, kh: usize) -> usize {
        bi * dm.t * dm.nkv * dm.d + kh * dm.d
    }
}

impl Attention {
    fn dims(&self, lq: &Layout, lk: &Layout, lv: &Layout) -> CResult<Dims> {
        let name = "unlearn-attention";
        let (b, t, qw) = lq.shape().dims3()?;
        let (nh, nkv) = (self.heads, self.kv_heads);
        if nh == 0 || nkv == 0 || nh % nkv != 0 || qw % nh != 0 || (qw / nh) % 2 != 0 {
            bail!(
                "{name}: q {:?} does not split into {nh} heads over {nkv} kv heads of even size",
                lq.dims()
            );
        }
        let d = qw / nh;
        if lk.dims() != [b, t, nkv * d] || lv.dims() != [b, t, nkv * d] {
            bail!(
                "{name}: k {:?} / v {:?} for q {:?} with {nkv} kv heads",
                lk.dims(),
                lv.dims(),
                lq.dims()
            );
        }
        let cd = self.cos.dims();
        let cb = cd.first().copied().unwrap_or(0);
        if cd.len() != 3
            || (cb != 1 && cb != b)
            || cd[1] != t
            || cd[2] != d / 2
            || self.sin.dims() != cd
        {
            bail!(
                "{name}: cos/sin {cd:?} / {:?} for q {:?}",
                self.sin.dims(),
                lq.dims()
            );
        }
        let md = self.mask.dims();
        let mb = md.first().copied().unwrap_or(0);
        if md.len() != 3 || (mb != 1 && mb != b) || md[1] != t || md[2] != t {
            bail!("{name}: mask {md:?} for q {:?}", lq.dims());
        }
        Ok(Dims {
            b,
            t,
            nh,
            nkv,
            g: nh / nkv,
            d,
            cb,
            mb,
        })
    }

    /// Run `f(inputs)` with the op's inputs and tables as slices of element type T.
    fn with_inputs<T: Real, R>(
        &self,
        (sq, lq): (&CpuStorage, &Layout),
        (sk, lk): (&CpuStorage, &Layout),
        (sv, lv): (&CpuStorage, &Layout),
        f: impl FnOnce(Inputs<T>) -> CResult<R>,
    ) -> CResult<R> {
        let name = "unlearn-attention";
        let (cs, cl) = self.cos.storage_and_layout();
        let (ss, sl) = self.sin.storage_and_layout();
        let (ms, ml) = self.mask.storage_and_layout();
        f(Inputs {
            q: cont(sq, lq, name)?,
            k: cont(sk, lk, name)?,
            v: cont(sv, lv, name)?,
            cos: storage_slice(&cs, cl, name)?,
            sin: storage_slice(&ss, sl, name)?,
            mask: storage_slice(&ms, ml, name)?,
        })
    }

    fn fwd<T: Real>(&self, dm: &Dims, x: &Inputs<T>) -> Vec<T> {
        let Dims {
            b,
            t,
            nh,
            nkv,
            g,
            d,
            ..
        } = *dm;
        let mut y = vec![zero::<T>(); b * t * nh * d];
        let yp = Out(y.as_mut_ptr());
        let scale = T::from_f64(self.scale);
        (0..b * nkv).into_par_iter().for_each_init(
            || Scratch::<T>::new(dm, false),
            |s, u| {
                let (bi, kh) = (u / nkv, u % nkv);
                x.weights(dm, bi, kh, scale, s);
                let vo = Inputs::<T>::v_off(dm, bi, kh);
                for hi in 0..g {
                    // y[bi, i, h·d..] = P_hi·V, written in place (rows of stride nh·d)
                    // SAFETY: P_hi and V lie inside their buffers; the destination rows are
                    // this unit's head h = kh·g + hi of batch row bi, written by no other unit.
                    unsafe {
                        gemm1(
                            (t, d, t),
                            yp.at(bi * t * nh * d + (kh * g + hi) * d),
                            (nh * d, 1),
                            s.p.as_ptr().add(hi * t * t),
                            (t, 1),
                            x.v.as_ptr().add(vo),
                            (nkv * d, 1),
                            T::from_f64(1.0),
                        );
                    }
                }
            },
        );
        y
    }

    /// (dq, dk, dv) for the output gradient dy [b, t, nh·d].
    fn bwd_run<T: Real>(&self, dm: &Dims, x: &Inputs<T>, dy: &[T]) -> [Vec<T>; 3] {
        let Dims {
            b,
            t,
            nh,
            nkv,
            g,
            d,
            ..
        } = *dm;
        let mut dq = vec![zero::<T>(); b * t * nh * d];
        let mut dk = vec![zero::<T>(); b * t * nkv * d];
        let mut dv = vec![zero::<T>(); b * t * nkv * d];
        let (dqp, dkp, dvp) = (
            Out(dq.as_mut_ptr()),
            Out(dk.as_mut_ptr()),
            Out(dv.as_mut_ptr()),
        );
        let scale = T::from_f64(self.scale);
        let one = T::from_f64(1.0);
        (0..b * nkv).into_par_iter().for_each_init(
            || Scratch::<T>::new(dm, true),
            |s, u| {
                let (bi, kh) = (u / nkv, u % nkv);
                x.weights(dm, bi, kh, scale, s);
                // dY of the unit, rows (hi, i)
                for hi in 0..g {
                    for i in 0..t {
                        let src = &dy[(bi * t + i) * nh * d + (kh * g + hi) * d..][..d];
                        s.yu[(hi * t + i) * d..][..d].copy_from_slice(src);
                    }
                }
                let vo = Inputs::<T>::v_off(dm, bi, kh);
                // SAFETY (all products below): operands lie inside the scratch vectors and the
                // inputs; the dv/dk/dq destinations are this unit's rows and heads only.
                unsafe {
                    // dV[t×d] = Pᵀ·dY; Pᵀ[j, r] = p[r·t + j]
                    gemm1(
                        (t, d, g * t),
                        dvp.at(vo),
                        (nkv * d, 1),
                        s.p.as_ptr(),
                        (1, t),
                        s.yu.as_ptr(),
                        (d, 1),
                        one,
                    );
                    // dP[g·t×t] = dY·Vᵀ; Vᵀ[kk, j] = v[vo + j·nkv·d + kk]
                    gemm1(
                        (g * t, t, d),
                        s.dp.as_mut_ptr(),
                        (t, 1),
                        s.yu.as_ptr(),
                        (d, 1),
                        x.v.as_ptr().add(vo),
                        (1, nkv * d),
                        one,
                    );
                }
                // dS = P ⊙ (dP − Σ_j P⊙dP), in place in dp
                for (pr, dr) in s.p.chunks(t).zip(s.dp.chunks_mut(t)) {
                    let c = dot(pr, dr);
                    for j in 0..t {
                        dr[j] = pr[j] * (dr[j] - c);
                    }
                }
                unsafe {
                    // dQ̃[g·t×d] = scale·dS·K̃
                    gemm1(
                        (g * t, d, t),
                        s.dq.as_mut_ptr(),
                        (d, 1),
                        s.dp.as_ptr(),
                        (t, 1),
                        s.kr.as_ptr(),
                        (d, 1),
                        scale,
                    );
                    // dK̃[t×d] = scale·dSᵀ·Q̃; dSᵀ[j, r] = dp[r·t + j]
                    gemm1(
                        (t, d, g * t),
                        s.dk.as_mut_ptr(),
                        (d, 1),
                        s.dp.as_ptr(),
                        (1, t),
                        s.qr.as_ptr(),
                        (d, 1),
                        scale,
                    );
                }
                // back through RoPE (rotation by minus the angle) into dq, dk
                for hi in 0..g {
                    for i in 0..t {
                        let (c, sn) = x.cs(dm, bi, i);
                        let off = (bi * t + i) * nh * d + (kh * g + hi) * d;
                        // SAFETY: head kh·g + hi of row (bi, i) belongs to this unit only.
                        let dst = unsafe { std::slice::from_raw_parts_mut(dqp.at(off), d) };
                        rotate(&s.dq[(hi * t + i) * d..][..d], c, sn, dst, true);
                    }
                }
                for j in 0..t {
                    let (c, sn) = x.cs(dm, bi, j);
                    let off = (bi * t + j) * nkv * d + kh * d;
                    // SAFETY: kv head kh of row (bi, j) belongs to this unit only.
                    let dst = unsafe { std::slice::from_raw_parts_mut(dkp.at(off), d) };
                    rotate(&s.dk[j * d..][..d], c, sn, dst, true);
                }
            },
        );
        [dq, dk, dv]
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "unlearn-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let dm = self.dims(lq, lk, lv)?;
        float!(sq, self.name(), T => {
            let y = self.with_inputs::<T, _>((sq, lq), (sk, lk), (sv, lv), |x| Ok(self.fwd(&dm, &x)))?;
            Ok((T::to_cpu_storage_owned(y), lq.shape().clone()))
        })
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let dy = dy.contiguous()?;
        let (sq, lq) = q.storage_and_layout();
        let (sk, lk) = k.storage_and_layout();
        let (sv, lv) = v.storage_and_layout();
        let (sd, ld) = dy.storage_and_layout();
        let (Storage::Cpu(sq), Storage::Cpu(sk), Storage::Cpu(sv), Storage::Cpu(sd)) =
            (&*sq, &*sk, &*sv, &*sd)
        else {
            bail!("{name}: CPU tensors expected");
        };
        if ld.dims() != lq.dims() {
            bail!(
                "{name}: gradient {:?} for output {:?}",
                ld.dims(),
                lq.dims()
            );
        }
        let dm = self.dims(lq, lk, lv)?;
        let dev = q.device();
        let [dq, dk, dv] = float!(sq, name, T => {
            let g: &[T] = cont(sd, ld, name)?;
            let [dq, dk, dv] = self.with_inputs::<T, _>((sq, lq), (sk, lk), (sv, lv), |x| Ok(self.bwd_run(&dm, &x, g)))?;
            [
                Tensor::from_vec(dq, lq.shape(), dev)?,
                Tensor::from_vec(dk, lk.shape(), dev)?,
                Tensor::from_vec(dv, lv.shape(), dev)?,
            ]
        });
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}
