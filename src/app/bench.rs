//! Throughput measurements of the three workloads everything else is made of: a training step
//! (forward + backward + AdamW), teacher-forced scoring, and KV-cache generation.
//!
//! Each workload is repeated (training steps, scoring batches, generation runs) after one
//! untimed warm-up, and the figures are medians over the repetitions: on a shared 2-core virtual
//! machine single repetitions swing by up to ±40 % with no change in the work (docs/performance.md),
//! and a median ignores the slow outliers that a mean averages in. `scripts/bench_torch.py`
//! measures PyTorch the same way.
use std::time::Instant;

use serde::Serialize;

use crate::data::Encoded;
use crate::error::Result;
use crate::infer::generate::{generate, GenConfig};
use crate::infer::score::{score, Batch};
use crate::model::Llama;
use crate::optim::{AdamW, AdamWConfig, GradAccum};
use crate::util::rng::Rng;
use candle_core::Tensor;

#[derive(Debug, Clone, Serialize)]
pub struct BenchConfig {
    pub batch: usize,
    pub seq: usize,
    pub train_steps: usize,
    pub score_batches: usize,
    pub gen_batch: usize,
    pub gen_prompt: usize,
    pub gen_tokens: usize,
    /// Timed generation runs.
    pub gen_runs: usize,
    /// The training step's loss: `nll` (token-mean NLL of one batch) or `npo+gd` (NPO on a
    /// forget batch against reference scores computed once, plus NLL on a retain batch: two
    /// batches per step).
    pub objective: String,
    /// LoRA rank on every linear layer (alpha = 2r), 0: train every weight.
    pub lora_r: usize,
    /// The loss through the chunked LM-head op (`train.chunked_loss`).
    pub chunked_loss: bool,
    /// Activation checkpointing per layer (`train.checkpoint_activations`).
    pub checkpoint_activations: bool,
}

impl BenchConfig {
    /// Every count at least 1 and the sequences within the model's context.
    pub fn check(&self, model: &Llama) -> Result<()> {
        for (name, v) in [
            ("batch", self.batch),
            ("seq", self.seq),
            ("train_steps", self.train_steps),
            ("score_batches", self.score_batches),
            ("gen_batch", self.gen_batch),
            ("gen_prompt", self.gen_prompt),
            ("gen_tokens", self.gen_tokens),
            ("gen_runs", self.gen_runs),
        ] {
            if v == 0 {
                return Err(crate::error::Error::Invalid(format!(
                    "bench: --{} must be at least 1",
                    name.replace('_', "-")
                )));
            }
        }
        if !matches!(self.objective.as_str(), "nll" | "npo+gd") {
            return Err(crate::error::Error::Invalid(format!(
                "bench: --objective {:?}: nll or npo+gd",
                self.objective
            )));
        }
        let ctx = model.cfg.max_position_embeddings;
        if self.seq + 1 > ctx || self.gen_prompt + self.gen_tokens > ctx {
            return Err(crate::error::Error::Invalid(format!(
                "bench: --seq {} (+1) and --gen-prompt {} + --gen-tokens {} must fit the model's \
                 context of {ctx} tokens",
                self.seq, self.gen_prompt, self.gen_tokens
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub params: usize,
    /// Median seconds per training step.
    pub train_step_s: f64,
    /// Peak resident memory during the training steps (MiB; the peak is reset after the model is
    /// loaded, so loading does not count). None where the OS does not tell.
    pub train_peak_rss_mib: Option<f64>,
    pub train_tokens_per_s: f64,
    /// Batch tokens over the median seconds per scoring batch.
    pub score_tokens_per_s: f64,
    /// Generated tokens over the median seconds per generation run.
    pub gen_tokens_per_s: f64,
    /// Every repetition, in seconds.
    pub train_steps_s: Vec<f64>,
    pub score_batches_s: Vec<f64>,
    pub gen_runs_s: Vec<f64>,
    pub config: BenchConfig,
}

/// The median of a list (the mean of the middle two for an even length; NaN when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Seconds taken by `f`, until `dev` has finished the work it queued (CUDA runs asynchronously).
fn timed(dev: &candle_core::Device, f: impl FnOnce() -> Result<()>) -> Result<f64> {
    dev.synchronize()?;
    let t = Instant::now();
    f()?;
    dev.synchronize()?;
    Ok(t.elapsed().as_secs_f64())
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
    let dev = model.device().clone();
    let vocab = model.cfg.vocab_size.min(u32::MAX as usize);
    let items = random_items(c.batch, c.seq + 1, vocab, 1);
    let refs: Vec<&Encoded> = items.iter().collect();
    let batch = Batch::new(&refs, 0, model.device())?;
    let retain_items = random_items(c.batch, c.seq + 1, vocab, 4);
    let rrefs: Vec<&Encoded> = retain_items.iter().collect();
    let retain = Batch::new(&rrefs, 0, model.device())?;
    // what trains: the adapters when the model has them
    let params = match model.lora() {
        Some(_) => model.adapters(),
        None => model.params().to_vec(),
    };
    let npo = c.objective == "npo+gd";
    let ref_nll = if npo {
        let s: Vec<f32> = score(model, &items, c.batch)?
            .iter()
            .map(|v| -v.iter().sum::<f32>())
            .collect();
        Some(Tensor::from_vec(s, c.batch, model.device())?)
    } else {
        None
    };
    let label_lp = |b: &Batch| -> Result<Tensor> {
        let lp = if c.chunked_loss {
            model.label_logprobs_chunked(&b.input, &b.targets)?
        } else {
            crate::ops::gather_logprobs(&model.forward(&b.input)?, &b.targets)?
        };
        Ok((lp * &b.mask)?)
    };
    model.set_activation_checkpointing(c.checkpoint_activations);
    let reset = crate::util::mem::reset_peak_rss();
    let mut opt = AdamW::new(params.clone(), AdamWConfig::default())?;
    let mut acc = GradAccum::new(params.len());
    let mut train_step = |_: ()| -> Result<()> {
        acc.clear();
        let loss = match &ref_nll {
            None => (label_lp(&batch)?.sum_all()?.neg()? / batch.total_labels() as f64)?,
            Some(r) => {
                let nll = label_lp(&batch)?.sum(1)?.neg()?;
                let f = crate::unlearn::objective::npo::npo(&nll, r, 0.1)?;
                let rl = (label_lp(&retain)?.sum_all()?.neg()? / retain.total_labels() as f64)?;
                (f + rl)?
            }
        };
        acc.add(&params, &model.backward(&loss)?)?;
        opt.step(&acc.grads, 1e-5, 1.0)
    };
    train_step(())?;
    let mut train_steps_s = Vec::with_capacity(c.train_steps);
    for _ in 0..c.train_steps.max(1) {
        train_steps_s.push(timed(&dev, || train_step(()))?);
    }
    let train_step_s = median(&train_steps_s);
    let train_peak_rss_mib = reset.then(crate::util::mem::peak_rss_mib).flatten();
    drop(opt);
    model.set_activation_checkpointing(false);
    let tokens = (c.batch * c.seq) as f64;
    let train_tokens = tokens * if npo { 2.0 } else { 1.0 };

    let sitems = random_items(c.batch * c.score_batches.max(1), c.seq + 1, vocab, 2);
    score(model, &sitems[..c.batch], c.batch)?;
    let mut score_batches_s = Vec::with_capacity(c.score_batches);
    for chunk in sitems.chunks(c.batch) {
        score_batches_s.push(timed(&dev, || score(model, chunk, c.batch).map(drop))?);
    }
    let score_tps = tokens / median(&score_batches_s);

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
    let (mut gen_runs_s, mut n) = (Vec::new(), 0);
    for _ in 0..c.gen_runs.max(1) {
        gen_runs_s.push(timed(&dev, || {
            let out = generate(model, &prompts, &ids, &[], 0, &g)?;
            n = out.iter().map(|o| o.len()).sum();
            Ok(())
        })?);
    }
    let gen_tps = n as f64 / median(&gen_runs_s);
    Ok(BenchResult {
        params: model.num_params(),
        train_step_s,
        train_peak_rss_mib,
        train_tokens_per_s: train_tokens / train_step_s,
        score_tokens_per_s: score_tps,
        gen_tokens_per_s: gen_tps,
        train_steps_s,
        score_batches_s,
        gen_runs_s,
        config: c.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_even_and_empty_lists() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(
            median(&[0.2, 9.0, 0.1, 0.3, 0.25]),
            0.25,
            "an outlier does not move it"
        );
        assert!(median(&[]).is_nan());
    }
}
