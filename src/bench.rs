//! Throughput measurements of the three workloads everything else is made of: a training step
//! (forward + backward + AdamW), teacher-forced scoring, and KV-cache generation.
use std::time::Instant;

use serde::Serialize;

use crate::data::Encoded;
use crate::error::Result;
use crate::generate::{generate, GenConfig};
use crate::model::Llama;
use crate::optim::{AdamW, AdamWConfig, GradAccum};
use crate::rng::Rng;
use crate::score::{score, token_mean_nll, Batch};

#[derive(Debug, Clone, Serialize)]
pub struct BenchConfig {
    pub batch: usize,
    pub seq: usize,
    pub train_steps: usize,
    pub score_batches: usize,
    pub gen_batch: usize,
    pub gen_prompt: usize,
    pub gen_tokens: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub params: usize,
    pub train_step_s: f64,
    pub train_tokens_per_s: f64,
    pub score_tokens_per_s: f64,
    pub gen_tokens_per_s: f64,
    pub config: BenchConfig,
}

fn random_items(n: usize, len: usize, vocab: usize, seed: u64) -> Vec<Encoded> {
    let mut r = Rng::new(seed);
    (0..n)
        .map(|_| Encoded {
            ids: (0..len).map(|_| r.below(vocab) as u32).collect(),
            n_prompt: 1,
        })
        .collect()
}

/// Run the three workloads on random token ids (one warm-up step each is not timed).
pub fn run(model: &Llama, c: &BenchConfig) -> Result<BenchResult> {
    let vocab = model.cfg.vocab_size.min(u32::MAX as usize);
    let items = random_items(c.batch, c.seq + 1, vocab, 1);
    let refs: Vec<&Encoded> = items.iter().collect();
    let batch = Batch::new(&refs, 0, model.device())?;
    let params = model.params().to_vec();
    let mut opt = AdamW::new(params.clone(), AdamWConfig::default())?;
    let mut acc = GradAccum::new(params.len());
    let mut train_step = |_: ()| -> Result<()> {
        acc.clear();
        let logits = model.forward(&batch.input)?;
        let loss = token_mean_nll(&logits, &batch)?;
        acc.add(&params, &loss.backward()?)?;
        opt.step(&acc.grads, 1e-5, 1.0)
    };
    train_step(())?;
    let t = Instant::now();
    for _ in 0..c.train_steps {
        train_step(())?;
    }
    let train_step_s = t.elapsed().as_secs_f64() / c.train_steps.max(1) as f64;
    let tokens = (c.batch * c.seq) as f64;

    let sitems = random_items(c.batch * c.score_batches, c.seq + 1, vocab, 2);
    score(model, &sitems[..c.batch], c.batch)?;
    let t = Instant::now();
    score(model, &sitems, c.batch)?;
    let score_tps = (sitems.len() * c.seq) as f64 / t.elapsed().as_secs_f64();

    let prompts: Vec<Vec<u32>> = random_items(c.gen_batch, c.gen_prompt, vocab, 3)
        .into_iter()
        .map(|e| e.ids)
        .collect();
    let ids: Vec<u64> = (0..c.gen_batch as u64).collect();
    let g = GenConfig {
        max_new_tokens: c.gen_tokens,
        ..Default::default()
    };
    generate(
        model,
        &prompts,
        &ids,
        &[],
        0,
        &GenConfig {
            max_new_tokens: 2,
            ..g.clone()
        },
    )?;
    let t = Instant::now();
    let out = generate(model, &prompts, &ids, &[], 0, &g)?;
    let n: usize = out.iter().map(|o| o.len()).sum();
    let gen_tps = n as f64 / t.elapsed().as_secs_f64();
    Ok(BenchResult {
        params: model.num_params(),
        train_step_s,
        train_tokens_per_s: tokens / train_step_s,
        score_tokens_per_s: score_tps,
        gen_tokens_per_s: gen_tps,
        config: c.clone(),
    })
}
