//! The fused kernels against the composite ops (forward and gradient, f32 and f64, odd sizes,
//! masks, grouped heads, strided inputs), both against central finite differences in f64, the
//! composites against candle's own inference kernels, and the vectorised exp against libm.
use super::*;
use candle_core::{Device, Var, D};

type F = Box<dyn Fn(&Tensor) -> Tensor>;

fn close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let d = max_abs_diff(a, b).unwrap();
    assert!(d < tol, "{what}: max abs diff {d}");
}

fn randn(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    let mut r = crate::util::rng::Rng::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| r.normal() * 2.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

#[test]
fn composites_match_candle_inference_kernels() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (2, 3, 8), &dev).unwrap();
    let w = Tensor::randn(0f32, 1., 8, &dev).unwrap();
    close(
        &composite::rms_norm(&x, &w, 1e-5).unwrap(),
        &candle_nn::ops::rms_norm(&x, &w, 1e-5).unwrap(),
        1e-5,
        "rms_norm",
    );
    close(
        &composite::softmax_last_dim(&x).unwrap(),
        &candle_nn::ops::softmax_last_dim(&x).unwrap(),
        1e-6,
        "softmax",
    );
    close(
        &composite::log_softmax_last_dim(&x).unwrap(),
        &candle_nn::ops::log_softmax(&x, D::Minus1).unwrap(),
        1e-5,
        "log_softmax",
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
    close(&composite::rope(&xr, &c, &s).unwrap(), &fused, 1e-5, "rope");
}

/// Every op as (name, fused, composite, input shape), each a function of one input tensor
/// whose other operands are fixed random tensors of the input's dtype.
fn cases(dtype: DType) -> Vec<(&'static str, F, F, Vec<usize>)> {
    let w = randn(&[13], 1, dtype);
    let w2 = w.clone();
    // Attention: scores [b=2, kv=2, g=2, t=3, k=5]; a causal mask per batch row with padding.
    let mut m = vec![0f64; 2 * 3 * 5];
    for b in 0..2 {
        for i in 0..3 {
            for j in 0..5 {
                if j > i + 2 || (b == 1 && j == 0) {
                    m[(b * 3 + i) * 5 + j] = -1e9;
                }
            }
        }
    }
    let mask = Tensor::from_vec(m, (2, 1, 1, 3, 5), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let mask1 = mask.narrow(0, 1, 1).unwrap().contiguous().unwrap();
    let (ma, mb, mc, md) = (mask.clone(), mask.clone(), mask1.clone(), mask1);
    let cs = randn(&[2, 1, 3, 5], 2, dtype);
    let sn = randn(&[2, 1, 3, 5], 3, dtype);
    let (cs2, sn2) = (cs.clone(), sn.clone());
    let up = randn(&[3, 11], 4, dtype);
    let up2 = up.clone();
    let tg = Tensor::new(&[[3u32, 0, 10], [7, 2, 9]], &Device::Cpu).unwrap();
    let tg2 = tg.clone();
    let wl = randn(&[5, 7], 12, dtype);
    let (wl2, wl3, wl4) = (wl.clone(), wl.clone(), wl.clone());
    let wf = randn(&[5, 37], 15, dtype);
    let wf2 = wf.clone();
    // RoPE input as the model makes it: [b, t, heads, d] transposed to [b, heads, t, d].
    let tr = |x: &Tensor| x.transpose(1, 2).unwrap();
    // Attention: q, k, v as slices of one input [b=2, t=5, (4 + 2 + 2)·6]: 4 query heads over 2
    // kv heads of size 6; per-row RoPE tables and a causal mask with a padded key in row 1 (no
    // query row fully masked: there the f64 finite differences drown in the −1e9 offsets), and
    // the shared (one row) forms with a sliding window of 3.
    let (ac, asn) = (
        randn(&[2, 1, 5, 3], 13, dtype),
        randn(&[2, 1, 5, 3], 14, dtype),
    );
    let (ac1, as1) = (
        ac.narrow(0, 0, 1).unwrap().contiguous().unwrap(),
        asn.narrow(0, 0, 1).unwrap().contiguous().unwrap(),
    );
    let amask = |rows: usize, window: usize| {
        let mut m = vec![0f64; rows * 25];
        for b in 0..rows {
            for i in 0..5 {
                for j in 0..5 {
                    if j > i || i - j >= window || (b == 1 && j == 1) {
                        m[(b * 5 + i) * 5 + j] = -1e9;
                    }
                }
            }
        }
        Tensor::from_vec(m, (rows, 1, 1, 5, 5), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    };
    let (am, am1) = (amask(2, 5), amask(1, 3));
    let qkv = |x: &Tensor| {
        let n = |a, l| x.narrow(2, a, l).unwrap();
        (n(0, 24), n(24, 12), n(36, 12))
    };
    let attn = move |fused: bool, cos: Tensor, sin: Tensor, mask: Tensor| {
        Box::new(move |x: &Tensor| {
            let (q, k, v) = qkv(x);
            let f = if fused {
                attention
            } else {
                composite::attention
            };
            f(&q, &k, &v, (&cos, &sin), &mask, (4, 2), (0.3, None)).unwrap()
        }) as F
    };
    vec![
        (
            "attention",
            attn(true, ac.clone(), asn.clone(), am.clone()),
            attn(false, ac, asn, am),
            vec![2, 5, 48],
        ),
        (
            "attention_shared_tables_window",
            attn(true, ac1.clone(), as1.clone(), am1.clone()),
            attn(false, ac1, as1, am1),
            vec![2, 5, 48],
        ),
        (
            "linear_few_rows",
            Box::new(move |x: &Tensor| linear(x, &wl, None).unwrap()) as F,
            Box::new(move |x: &Tensor| composite::linear(x, &wl2).unwrap()) as F,
            vec![1, 3, 7],
        ),
        (
            // 16-lane FMA kernel: two full lanes blocks plus a masked tail, 4 + 2 rows
            "linear_few_rows_wide",
            Box::new(move |x: &Tensor| linear(x, &wf, None).unwrap()) as F,
            Box::new(move |x: &Tensor| composite::linear(x, &wf2).unwrap()) as F,
            vec![1, 6, 37],
        ),
        (
            "linear_many_rows",
            Box::new(move |x: &Tensor| linear(x, &wl3, None).unwrap()) as F,
            Box::new(move |x: &Tensor| composite::linear(x, &wl4).unwrap()) as F,
            vec![3, 9, 7],
        ),
        (
            "rms_norm",
            Box::new(move |x: &Tensor| rms_norm(x, &w, 1e-6).unwrap()) as F,
            Box::new(move |x: &Tensor| composite::rms_norm(x, &w2, 1e-6).unwrap()) as F,
            vec![2, 3, 13],
        ),
        (
            "softmax",
            Box::new(|x: &Tensor| softmax_last_dim(x).unwrap()),
            Box::new(|x: &Tensor| composite::softmax_last_dim(x).unwrap()),
            vec![4, 19],
        ),
        (
            "masked_softmax",
            Box::new(move |x: &Tensor| masked_softmax(x, &ma, 0.7).unwrap()),
            Box::new(move |x: &Tensor| composite::masked_softmax(x, &mb, 0.7).unwrap()),
            vec![2, 2, 2, 3, 5],
        ),
        (
            "masked_softmax_shared_mask",
            Box::new(move |x: &Tensor| masked_softmax(x, &mc, 0.3).unwrap()),
            Box::new(move |x: &Tensor| composite::masked_softmax(x, &md, 0.3).unwrap()),
            vec![2, 2, 2, 3, 5],
        ),
        (
            "log_softmax",
            Box::new(|x: &Tensor| log_softmax_last_dim(x).unwrap()),
            Box::new(|x: &Tensor| composite::log_softmax_last_dim(x).unwrap()),
            vec![3, 21],
        ),
        (
            "rope",
            Box::new(move |x: &Tensor| rope(&tr(x), &cs, &sn).unwrap()),
            Box::new(move |x: &Tensor| composite::rope(&tr(x), &cs2, &sn2).unwrap()),
            vec![2, 3, 4, 10],
        ),
        (
            "swiglu",
            Box::new(move |x: &Tensor| swiglu(x, &(&up * x).unwrap()).unwrap()),
            Box::new(move |x: &Tensor| composite::swiglu(x, &(&up2 * x).unwrap()).unwrap()),
            vec![3, 11],
        ),
        (
            "gather_logprobs",
            Box::new(move |x: &Tensor| gather_logprobs(x, &tg).unwrap()),
            Box::new(move |x: &Tensor| composite::gather_logprobs(x, &tg2).unwrap()),
            vec![2, 3, 11],
        ),
    ]
}

/// A scalar loss Σ y ⊙ c with fixed random weights c, so every output element matters.
fn weighted(y: &Tensor, seed: u64) -> Tensor {
    let c = randn(y.dims(), seed, y.dtype());
    (y * c).unwrap().sum_all().unwrap()
}

fn grad_of(f: &F, x0: &Tensor, seed: u64) -> (Tensor, Tensor) {
    let v = Var::from_tensor(x0).unwrap();
    let y = f(v.as_tensor());
    let g = weighted(&y, seed).backward().unwrap();
    (y, g.get(v.as_tensor()).unwrap().clone())
}

#[test]
fn fused_match_composite_values_and_gradients() {
    for (dtype, tol) in [(DType::F64, 1e-10), (DType::F32, 2e-5)] {
        for (i, (name, fused, comp, shape)) in cases(dtype).into_iter().enumerate() {
            let x = randn(&shape, 100 + i as u64, dtype);
            let (yf, gf) = grad_of(&fused, &x, 7);
            let (yc, gc) = grad_of(&comp, &x, 7);
            close(&yf, &yc, tol, &format!("{name} {dtype:?} forward"));
            close(&gf, &gc, tol * 10.0, &format!("{name} {dtype:?} gradient"));
        }
    }
}

/// Central finite differences in f64 against the fused kernels' backward.
#[test]
fn fused_gradients_match_finite_differences() {
    for (i, (name, fused, _, shape)) in cases(DType::F64).into_iter().enumerate() {
        let x = randn(&shape, 200 + i as u64, DType::F64);
        let (_, g) = grad_of(&fused, &x, 9);
        let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let x0 = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let loss = |v: &[f64]| {
            let t = Tensor::from_vec(v.to_vec(), shape.as_slice(), &Device::Cpu).unwrap();
            weighted(&fused(&t), 9).to_scalar::<f64>().unwrap()
        };
        for k in 0..x0.len() {
            let eps = 1e-6;
            let mut p = x0.clone();
            p[k] += eps;
            let mut m = x0.clone();
            m[k] -= eps;
            let fd = (loss(&p) - loss(&m)) / (2.0 * eps);
            assert!(
                (fd - g[k]).abs() < 1e-6 * (1.0 + fd.abs()),
                "{name}[{k}]: finite difference {fd}, backward {}",
                g[k]
            );
        }
    }
}

/// The RMSNorm weight's gradient (the only second differentiable operand among the cases).
#[test]
fn rms_norm_weight_gradient_matches_composite() {
    let x = randn(&[5, 3, 37], 5, DType::F32);
    let w = Var::from_tensor(&randn(&[37], 6, DType::F32)).unwrap();
    let gf = weighted(&rms_norm(&x, &w, 1e-5).unwrap(), 3)
        .backward()
        .unwrap();
    let gc = weighted(&composite::rms_norm(&x, &w, 1e-5).unwrap(), 3)
        .backward()
        .unwrap();
    close(
        gf.get(&w).unwrap(),
        gc.get(&w).unwrap(),
        1e-3,
        "rms_norm weight",
    );
}

/// Large rows and many rows: several parallel tasks, vocabulary-sized rows.
#[test]
fn fused_match_composite_at_model_sizes() {
    let x = randn(&[3, 70, 1003], 11, DType::F32);
    let t = Tensor::from_vec(
        (0..210u32).map(|i| (i * 37) % 1003).collect::<Vec<_>>(),
        (3, 70),
        &Device::Cpu,
    )
    .unwrap();
    let (yf, gf) = grad_of(
        &(Box::new(move |x: &Tensor| gather_logprobs(x, &t).unwrap()) as F),
        &x,
        4,
    );
    let t2 = Tensor::from_vec(
        (0..210u32).map(|i| (i * 37) % 1003).collect::<Vec<_>>(),
        (3, 70),
        &Device::Cpu,
    )
    .unwrap();
    let (yc, gc) = grad_of(
        &(Box::new(move |x: &Tensor| composite::gather_logprobs(x, &t2).unwrap()) as F),
        &x,
        4,
    );
    close(&yf, &yc, 1e-4, "gather forward");
    close(&gf, &gc, 1e-5, "gather gradient");
    let (yf, gf) = grad_of(&(Box::new(|x: &Tensor| swiglu(x, x).unwrap()) as F), &x, 5);
    let (yc, gc) = grad_of(
        &(Box::new(|x: &Tensor| composite::swiglu(x, x).unwrap()) as F),
        &x,
        5,
    );
    close(&yf, &yc, 1e-4, "swiglu forward");
    close(&gf, &gc, 1e-4, "swiglu gradient");
}

/// Attention at a SmolLM2-like shape (9 query heads over 3 kv heads of 64, 70 positions, causal):
/// values and the gradients of q, k and v.
#[test]
fn attention_matches_composite_at_model_sizes() {
    let (b, t, nh, nkv, d) = (2, 70, 9, 3, 64);
    let x = randn(&[b, t, (nh + 2 * nkv) * d], 21, DType::F32);
    let cos = randn(&[1, 1, t, d / 2], 22, DType::F32);
    let sin = randn(&[1, 1, t, d / 2], 23, DType::F32);
    let mut m = vec![0f32; t * t];
    for i in 0..t {
        for j in i + 1..t {
            m[i * t + j] = -1e9;
        }
    }
    let mask = Tensor::from_vec(m, (1, 1, 1, t, t), &Device::Cpu).unwrap();
    let f = |fused: bool| {
        let (cos, sin, mask) = (cos.clone(), sin.clone(), mask.clone());
        Box::new(move |x: &Tensor| {
            let n = |a, l| x.narrow(2, a, l).unwrap();
            let (q, k, v) = (n(0, nh * d), n(nh * d, nkv * d), n((nh + nkv) * d, nkv * d));
            let f = if fused {
                attention
            } else {
                composite::attention
            };
            f(&q, &k, &v, (&cos, &sin), &mask, (nh, nkv), (0.25, None)).unwrap()
        }) as F
    };
    let (yf, gf) = grad_of(&f(true), &x, 24);
    let (yc, gc) = grad_of(&f(false), &x, 24);
    close(&yf, &yc, 1e-4, "attention forward");
    close(&gf, &gc, 1e-3, "attention gradient");
}

#[test]
fn gather_logprobs_rejects_out_of_range_targets() {
    let x = randn(&[1, 2, 4], 1, DType::F32);
    let t = Tensor::new(&[[1u32, 4]], &Device::Cpu).unwrap();
    let e = gather_logprobs(&x, &t).unwrap_err().to_string();
    assert!(
        e.contains("target 4") && e.contains("vocabulary of 4"),
        "{e}"
    );
}

/// The vectorised exp within 2 ulp of libm's (f64) over the whole finite range, and its limits.
#[test]
fn exp_f32_is_accurate() {
    let mut xs: Vec<f32> = (0..200_001)
        .map(|i| -86.5 + (88.72 + 86.5) * i as f32 / 200_000.0)
        .collect();
    xs.extend([0.0, -0.0, 1e-30, -1e-30, 0.5, -0.5, 1.0, 88.72]);
    let mut ys = xs.clone();
    fused::exp_f32_inplace(&mut ys);
    for (&x, &y) in xs.iter().zip(&ys) {
        let e = (x as f64).exp();
        let rel = ((y as f64) - e).abs() / e;
        assert!(rel < 2.5e-7, "exp({x}) = {y}, exact {e}, rel err {rel}");
    }
    let mut edge = [
        f32::NEG_INFINITY,
        -1e9,
        -90.0,
        89.0,
        f32::INFINITY,
        f32::NAN,
    ];
    fused::exp_f32_inplace(&mut edge);
    assert_eq!(&edge[..5], &[0.0, 0.0, 0.0, f32::INFINITY, f32::INFINITY]);
    assert!(edge[5].is_nan());
}

/// NaN in a row propagates (the trainer's NaN guard relies on it).
#[test]
fn nan_propagates_through_fused_softmax_and_logprobs() {
    let x = Tensor::new(&[[0.5f32, f32::NAN, 1.0]], &Device::Cpu).unwrap();
    let y = softmax_last_dim(&x).unwrap().to_vec2::<f32>().unwrap();
    assert!(y[0].iter().all(|v| v.is_nan()));
    let lp = gather_logprobs(&x, &Tensor::new(&[0u32], &Device::Cpu).unwrap())
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(lp[0].is_nan());
}

/// Evaluation statistics: fused one-pass kernel against the composite, f32 and f64.
#[test]
fn token_stats_match_composite() {
    for dtype in [DType::F64, DType::F32] {
        let x = randn(&[2, 5, 37], 21, dtype);
        let t = Tensor::from_vec(
            (0..10u32).map(|i| (i * 11) % 37).collect::<Vec<_>>(),
            (2, 5),
            &Device::Cpu,
        )
        .unwrap();
        // one position where the target is the argmax, so the hit column is exercised
        let x = {
            let mut v = x
                .flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            v[0] = 50.0; // row 0, target 0
            Tensor::from_vec(v, (2, 5, 37), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
        };
        let f = token_stats(&x, &t).unwrap();
        let c = composite::token_stats(&x, &t).unwrap();
        close(&f, &c, 1e-4, &format!("token_stats {dtype:?}"));
        let hits = f
            .narrow(2, 1, 1)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        assert!(hits.to_scalar::<f64>().unwrap() >= 1.0);
    }
}

/// The weight gradient of the fused linear (dW = dyᵀ·x) against the composite's, large enough
/// for the threaded GEMM path, tied use (one weight in two products) included.
#[test]
fn linear_weight_gradient_matches_composite() {
    let x = randn(&[4, 70, 96], 31, DType::F32);
    let w = Var::from_tensor(&randn(&[130, 96], 32, DType::F32)).unwrap();
    let x2 = randn(&[2, 96], 33, DType::F32);
    let loss = |f: &dyn Fn(&Tensor, &Tensor) -> Tensor| {
        let y = weighted(&f(&x, &w), 5);
        let y2 = weighted(&f(&x2, &w), 6);
        (y + y2).unwrap().backward().unwrap()
    };
    let gf = loss(&|a, b| linear(a, b, None).unwrap());
    let gc = loss(&|a, b| composite::linear(a, b).unwrap());
    close(
        gf.get(&w).unwrap(),
        gc.get(&w).unwrap(),
        1e-3,
        "linear weight",
    );
}

/// A detached weight (a frozen view) gets no gradient and the input's gradient is unchanged; a
/// detached input gives the same weight gradient (the one-sided backward paths of the fused
/// linear against the two-sided one).
#[test]
fn linear_backward_computes_only_tracked_gradients() {
    let xv = Var::from_tensor(&randn(&[3, 40, 48], 41, DType::F32)).unwrap();
    let wv = Var::from_tensor(&randn(&[56, 48], 42, DType::F32)).unwrap();
    let run = |x: &Tensor, w: &Tensor| {
        weighted(&linear(x, w, None).unwrap(), 7)
            .backward()
            .unwrap()
    };
    let both = run(xv.as_tensor(), wv.as_tensor());
    let x_only = run(xv.as_tensor(), &wv.as_tensor().detach());
    let w_only = run(&xv.as_tensor().detach(), wv.as_tensor());
    assert!(x_only.get(wv.as_tensor()).is_none() && w_only.get(xv.as_tensor()).is_none());
    close(
        x_only.get(xv.as_tensor()).unwrap(),
        both.get(xv.as_tensor()).unwrap(),
        1e-6,
        "dx with a frozen weight",
    );
    close(
        w_only.get(wv.as_tensor()).unwrap(),
        both.get(wv.as_tensor()).unwrap(),
        1e-6,
        "dW with a frozen input",
    );
}

/// The vendored candle backward (vendor/README.md: the first gradient reaching a node is stored
/// instead of added into zeros) against hand-derived gradients, through fan-in (x used by four
/// nodes), a transpose (a strided gradient, which must be stored contiguous for the in-place
/// optimisers), a broadcast and a subtraction:
/// L = Σ (xᵀ⊙xᵀ) + Σ (x ⊙ w) + Σ x − Σ w, so dL/dx = 2x + w + 1, dL/dw = Σ_rows x − 1.
#[test]
fn vendored_candle_backward_gradients_by_hand() {
    let dev = Device::Cpu;
    let x = Var::new(&[[1f64, 2., 3.], [4., 5., 6.]], &dev).unwrap();
    let w = Var::new(&[10f64, 20., 30.], &dev).unwrap();
    let xt = x.t().unwrap();
    let a = (&xt * &xt).unwrap().sum_all().unwrap();
    let b = x.broadcast_mul(&w).unwrap().sum_all().unwrap();
    let c = x.sum_all().unwrap();
    let d = w.sum_all().unwrap();
    let loss = (((a + b).unwrap() + c).unwrap() - d).unwrap();
    let g = loss.backward().unwrap();
    let gx = g.get(&x).unwrap();
    let gw = g.get(&w).unwrap();
    assert!(gx.is_contiguous() && gw.is_contiguous());
    assert_eq!(
        gx.to_vec2::<f64>().unwrap(),
        vec![vec![13., 25., 37.], vec![19., 31., 43.]]
    );
    assert_eq!(gw.to_vec1::<f64>().unwrap(), vec![4., 6., 8.]);
}

/// The chunked LM-head log-probability (several chunks, a ragged last one) against
/// gather_logprobs(linear(h, W)): values and both gradients, f64 and f32; central finite
/// differences on h and W in f64; a frozen W gets no gradient.
#[test]
fn chunked_lm_head_matches_logits_then_gather() {
    let (rows, hid, vocab) = (19, 6, 23);
    for (dtype, tol) in [(DType::F64, 1e-10), (DType::F32, 2e-5)] {
        let h = Var::from_tensor(&randn(&[rows, hid], 1, dtype)).unwrap();
        let w = Var::from_tensor(&randn(&[vocab, hid], 2, dtype)).unwrap();
        let t: Vec<u32> = (0..rows as u32)
            .map(|i| (i * 7 + 3) % vocab as u32)
            .collect();
        let targets = Tensor::from_vec(t.clone(), rows, &Device::Cpu).unwrap();
        let op = lm_head::LmHeadLogprobs {
            targets: std::sync::Arc::new(t),
            chunk: 4,
            jacobian: false,
        };
        let yf = h.as_tensor().apply_op2(w.as_tensor(), op).unwrap();
        let yc = composite::gather_logprobs(
            &composite::linear(h.as_tensor(), w.as_tensor()).unwrap(),
            &targets,
        )
        .unwrap();
        close(&yf, &yc, tol, "lm_head forward");
        let gf = weighted(&yf, 3).backward().unwrap();
        let gc = weighted(&yc, 3).backward().unwrap();
        for (v, what) in [(&h, "dh"), (&w, "dW")] {
            close(gf.get(v).unwrap(), gc.get(v).unwrap(), tol * 10.0, what);
        }
        // the public entry point (one chunk at this vocabulary) and a frozen head
        let y1 = lm_head_logprobs(h.as_tensor(), &w.as_tensor().detach(), &targets).unwrap();
        close(&y1, &yc, tol, "lm_head_logprobs");
        let g1 = weighted(&y1, 3).backward().unwrap();
        assert!(g1.get(&w).is_none(), "a frozen head got a gradient");
        close(
            g1.get(&h).unwrap(),
            gc.get(&h).unwrap(),
            tol * 10.0,
            "dh, frozen W",
        );
    }
    // finite differences (f64) through the chunked op, on h and W
    let h0 = randn(&[5, 3], 4, DType::F64);
    let w0 = randn(&[7, 3], 5, DType::F64);
    let t = vec![0u32, 6, 3, 3, 1];
    let f = |h: &Tensor, w: &Tensor| {
        let op = lm_head::LmHeadLogprobs {
            targets: std::sync::Arc::new(t.clone()),
            chunk: 2,
            jacobian: false,
        };
        weighted(&h.apply_op2(w, op).unwrap(), 8)
    };
    let (hv, wv) = (
        Var::from_tensor(&h0).unwrap(),
        Var::from_tensor(&w0).unwrap(),
    );
    let g = f(hv.as_tensor(), wv.as_tensor()).backward().unwrap();
    for (which, x0) in [(0, &h0), (1, &w0)] {
        let gx = g
            .get(if which == 0 {
                hv.as_tensor()
            } else {
                wv.as_tensor()
            })
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let v0 = x0.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for k in 0..v0.len() {
            let at = |d: f64| {
                let mut p = v0.clone();
                p[k] += d;
                let x = Tensor::from_vec(p, x0.shape(), &Device::Cpu).unwrap();
                let l = if which == 0 { f(&x, &w0) } else { f(&h0, &x) };
                l.to_scalar::<f64>().unwrap()
            };
            let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
            assert!(
                (fd - gx[k]).abs() < 1e-6 * (1.0 + fd.abs()),
                "lm_head {which}[{k}]: fd {fd}, backward {}",
                gx[k]
            );
        }
    }
    // the Jacobian form (a frozen head: W a plain tensor, h tracked), in chunks of 2 with a
    // ragged last one: finite differences on h, and the packed output's first rows are the values
    let fj = |h: &Tensor| {
        let op = lm_head::LmHeadLogprobs {
            targets: std::sync::Arc::new(t.clone()),
            chunk: 2,
            jacobian: true,
        };
        let y = h.apply_op2(&w0, op).unwrap();
        assert_eq!(y.dims1().unwrap(), 5 + 5 * 3, "packed [out; J]");
        weighted(&y.narrow(0, 0, 5).unwrap(), 8)
    };
    assert!(
        (fj(&h0).to_scalar::<f64>().unwrap() - f(&h0, &w0).to_scalar::<f64>().unwrap()).abs()
            < 1e-12
    );
    let gx = fj(hv.as_tensor()).backward().unwrap();
    let gx = gx
        .get(hv.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let v0 = h0.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    for k in 0..v0.len() {
        let at = |d: f64| {
            let mut p = v0.clone();
            p[k] += d;
            let x = Tensor::from_vec(p, h0.shape(), &Device::Cpu).unwrap();
            fj(&x).to_scalar::<f64>().unwrap()
        };
        let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
        assert!(
            (fd - gx[k]).abs() < 1e-6 * (1.0 + fd.abs()),
            "lm_head jacobian h[{k}]: fd {fd}, backward {}",
            gx[k]
        );
    }
}
