//! The matrix products of a training step, f32 on all threads: the `gemm` crate (what the fused
//! linear and candle's matmul call) against faer 0.24 (its private-gemm-x86 kernels), for issue
//! #9's "measure both on our shapes". faer runs sequentially on one block of rows per thread (its
//! own `rayon` feature pulls in spindle, loom and tracing); measured with both, see
//! docs/performance.md.
//!
//!   cargo run --release --example gemm_shapes
//!
//! Prints the best of 3 rounds per shape, in GFLOP/s (2·m·n·k per product).
use std::time::Instant;

use rayon::prelude::*;

/// (what, m, n, k, lhs stored transposed (k×m), rhs stored transposed (n×k)).
const SHAPES: &[(&str, usize, usize, usize, bool, bool)] = &[
    ("ref fwd x·Wᵀ (gate/up)", 1024, 688, 256, false, true),
    ("ref fwd x·Wᵀ (down)", 1024, 256, 688, false, true),
    ("ref fwd x·Wᵀ (k, v)", 1024, 128, 256, false, true),
    ("ref fwd LM head", 1024, 8000, 256, false, true),
    ("ref bwd dx = dy·W (LM head)", 1024, 256, 8000, false, false),
    ("ref bwd dx = dy·W (k, v)", 1024, 256, 128, false, false),
    ("ref bwd dW = dyᵀ·x (LM head)", 8000, 256, 1024, true, false),
    ("ref bwd dW = dyᵀ·x (gate/up)", 688, 256, 1024, true, false),
    ("ref bwd dW = dyᵀ·x (k, v)", 128, 256, 1024, true, false),
    ("smol fwd x·Wᵀ (q)", 1024, 576, 576, false, true),
    ("smol fwd x·Wᵀ (k, v)", 1024, 192, 576, false, true),
    ("smol fwd x·Wᵀ (gate/up)", 1024, 1536, 576, false, true),
    ("smol fwd LM head", 1024, 49152, 576, false, true),
    ("smol bwd dx = dy·W (down)", 1024, 576, 1536, false, false),
    (
        "smol bwd dx = dy·W (LM head)",
        1024,
        576,
        49152,
        false,
        false,
    ),
    (
        "smol bwd dW = dyᵀ·x (gate/up)",
        1536,
        576,
        1024,
        true,
        false,
    ),
    ("smol bwd dW = dyᵀ·x (down)", 576, 1536, 1024, true, false),
    (
        "smol bwd dW = dyᵀ·x (LM head)",
        49152,
        576,
        1024,
        true,
        false,
    ),
];

fn main() {
    unlearn::util::runtime::run_in_pool(run);
}

fn run() {
    let threads = rayon::current_num_threads();
    println!("{threads} threads; GFLOP/s, best of 3 rounds");
    println!("{:<48} {:>8} {:>8}", "product m×n×k", "gemm", "faer");
    for &(name, m, n, k, lt, rt) in SHAPES {
        let lhs: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3)
            .collect();
        let rhs: Vec<f32> = (0..k * n)
            .map(|i| ((i * 104729) % 1000) as f32 * 1e-3)
            .collect();
        // (row stride, column stride) of lhs [m×k] and rhs [k×n]
        let (lrs, lcs) = if lt { (1, m) } else { (k, 1) };
        let (rrs, rcs) = if rt { (1, k) } else { (n, 1) };
        let mut dst = vec![0f32; m * n];
        let reps = (2e9 / (2.0 * (m * n * k) as f64)).clamp(2.0, 50.0) as usize;
        let with_gemm = |dst: &mut [f32]| {
            // SAFETY: the strides describe lhs, rhs and dst inside their vectors.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    dst.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    lhs.as_ptr(),
                    lcs as isize,
                    lrs as isize,
                    rhs.as_ptr(),
                    rcs as isize,
                    rrs as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(threads),
                )
            }
        };
        let with_faer = |dst: &mut [f32]| {
            let per = m.div_ceil(threads).div_ceil(48) * 48;
            let (dp, lp) = (dst.as_mut_ptr() as usize, lhs.as_ptr() as usize);
            (0..m.div_ceil(per)).into_par_iter().for_each(|blk| {
                let (r0, rows) = (blk * per, per.min(m - blk * per));
                // SAFETY: block `blk` covers rows r0..r0+rows of lhs and dst, disjoint per block.
                unsafe {
                    let a = faer::MatRef::from_raw_parts(
                        (lp as *const f32).add(r0 * lrs),
                        rows,
                        k,
                        lrs as isize,
                        lcs as isize,
                    );
                    let b = faer::MatRef::from_raw_parts(
                        rhs.as_ptr(),
                        k,
                        n,
                        rrs as isize,
                        rcs as isize,
                    );
                    let c = faer::MatMut::from_raw_parts_mut(
                        (dp as *mut f32).add(r0 * n),
                        rows,
                        n,
                        n as isize,
                        1,
                    );
                    faer::linalg::matmul::matmul(
                        c,
                        faer::Accum::Replace,
                        a,
                        b,
                        1.0,
                        faer::Par::Seq,
                    );
                }
            });
        };
        let mut best = [f64::INFINITY; 2];
        for _ in 0..3 {
            for (i, f) in [&with_gemm as &(dyn Fn(&mut [f32]) + Sync), &with_faer]
                .iter()
                .enumerate()
            {
                f(&mut dst);
                let t = Instant::now();
                for _ in 0..reps {
                    f(&mut dst);
                }
                best[i] = best[i].min(t.elapsed().as_secs_f64() / reps as f64);
            }
        }
        let gflops = |s: f64| 2.0 * (m * n * k) as f64 / s / 1e9;
        let shape = format!("{name} {m}×{n}×{k}");
        println!(
            "{shape:<48} {:>8.1} {:>8.1}",
            gflops(best[0]),
            gflops(best[1])
        );
    }
}
