//! Where a training step's time goes: forward, loss, backward and AdamW timed separately, the
//! medians over N steps (after one untimed step), on batch × 128 random tokens; with `--gen B`
//! instead, greedy generation of 32 tokens for B prompts of 32, five timed runs. The process is
//! set up as the binary's (recycling allocator, candle's pool parked, work on a rayon worker).
//!
//!   cargo run --release --example step_profile -- MODEL_DIR [STEPS] [--gen B]
use std::time::Instant;

use unlearn::data::Encoded;
use unlearn::infer::generate::{generate, GenConfig};
use unlearn::infer::score::{token_mean_nll, Batch};
use unlearn::model::hf::ModelDir;
use unlearn::optim::{AdamW, AdamWConfig, GradAccum};

#[global_allocator]
static ALLOC: unlearn::util::alloc::Recycling = unlearn::util::alloc::Recycling;

fn main() -> anyhow::Result<()> {
    unlearn::util::alloc::enable();
    unlearn::util::runtime::tune_threads();
    unlearn::util::runtime::tune_allocator();
    unlearn::util::runtime::run_in_pool(run)
}

fn ms(v: &[f64]) -> f64 {
    unlearn::app::bench::median(v) * 1e3
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first() else {
        anyhow::bail!("usage: step_profile MODEL_DIR [STEPS] [--gen B]");
    };
    let gen = args
        .iter()
        .position(|a| a == "--gen")
        .map(|i| args[i + 1].parse::<usize>());
    let steps: usize = match args.get(1) {
        Some(s) if !s.starts_with("--") => s.parse()?,
        _ => 10,
    };
    let md = ModelDir::load(std::path::Path::new(dir), &candle_core::Device::Cpu)?;
    let m = &md.model;
    let mut r = unlearn::util::rng::Rng::new(1);
    let mut tokens =
        |n: usize| -> Vec<u32> { (0..n).map(|_| r.below(m.cfg.vocab_size) as u32).collect() };
    if let Some(b) = gen {
        let b = b?;
        let prompts: Vec<Vec<u32>> = (0..b).map(|_| tokens(32)).collect();
        let ids: Vec<u64> = (0..b as u64).collect();
        let cfg = GenConfig {
            max_new_tokens: 32,
            ..Default::default()
        };
        generate(
            m,
            &prompts,
            &ids,
            &[],
            0,
            &GenConfig {
                max_new_tokens: 2,
                ..cfg.clone()
            },
        )?;
        let mut rates = vec![];
        for _ in 0..5 {
            let t = Instant::now();
            let out = generate(m, &prompts, &ids, &[], 0, &cfg)?;
            let n: usize = out.iter().map(|o| o.len()).sum();
            rates.push(n as f64 / t.elapsed().as_secs_f64());
        }
        println!(
            "generation, batch {b}: {:.1} tokens/s (median of {rates:.1?})",
            unlearn::app::bench::median(&rates)
        );
        return Ok(());
    }
    let items: Vec<Encoded> = (0..8)
        .map(|_| Encoded {
            ids: tokens(129),
            n_prompt: 1,
        })
        .collect();
    let refs: Vec<&Encoded> = items.iter().collect();
    let batch = Batch::new(&refs, 0, m.device())?;
    let params = m.params().to_vec();
    let mut opt = AdamW::new(params.clone(), AdamWConfig::default())?;
    let mut acc = GradAccum::new(params.len());
    let mut t = [vec![], vec![], vec![], vec![], vec![]];
    for step in 0..=steps {
        let t0 = Instant::now();
        acc.clear();
        let logits = m.forward(&batch.input)?;
        let t1 = Instant::now();
        let loss = token_mean_nll(&logits, &batch)?;
        let t2 = Instant::now();
        acc.add(&params, &loss.backward()?)?;
        drop((loss, logits));
        let t3 = Instant::now();
        opt.step(&acc.grads, 1e-5, 1.0)?;
        let t4 = Instant::now();
        if step > 0 {
            for (v, d) in t
                .iter_mut()
                .zip([t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0])
            {
                v.push(d.as_secs_f64());
            }
        }
    }
    println!(
        "median ms over {steps} steps: forward {:.1}, loss {:.1}, backward {:.1}, AdamW {:.1}, step {:.1} (steps: {:.0?})",
        ms(&t[0]), ms(&t[1]), ms(&t[2]), ms(&t[3]), ms(&t[4]),
        t[4].iter().map(|s| s * 1e3).collect::<Vec<_>>()
    );
    Ok(())
}
