//! Supervised fine-tuning: AdamW, linear warm-up/decay, gradient accumulation, global-norm
//! clipping, seeded shuffling, JSONL loss log, checkpoints, stop on NaN/inf.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::data::{Encoded, PromptStyle};
use crate::error::{Error, Result};
use crate::hf::ModelDir;
use crate::optim::{
    clip_scale, AdamWConfig, GradAccum, Optimizer, OptimizerKind, Schedule, SophiaConfig,
};
use crate::rng::Rng;
use crate::score::{token_mean_nll, Batch};

/// Fine-tuning hyper-parameters. Defaults suit memorising a small QA set with a small model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub lr: f64,
    pub epochs: usize,
    /// Micro-batch size (sequences per forward/backward).
    pub batch_size: usize,
    /// Micro-batches per optimiser step (effective batch = batch_size × grad_accum).
    pub grad_accum: usize,
    /// Warm-up as a fraction of all optimiser steps.
    pub warmup_ratio: f64,
    /// Linear decay to 0 after warm-up (else constant).
    pub decay: bool,
    pub max_grad_norm: f64,
    /// Stop after this many optimiser steps (0 = no limit).
    pub max_steps: usize,
    /// Write a checkpoint every N optimiser steps (0 = only at the end).
    pub save_every: usize,
    pub seed: u64,
    /// Prompt template: auto (chat template when the tokenizer has one), chat or plain.
    pub prompt: PromptStyle,
    /// Longest sequence (prompt + answer + EOS) in tokens; longer ones are truncated.
    pub max_len: usize,
    /// `adamw` (default) or `sophia`.
    pub optimizer: OptimizerKind,
    pub adamw: AdamWConfig,
    pub sophia: SophiaConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            lr: 1e-4,
            epochs: 5,
            batch_size: 4,
            grad_accum: 1,
            warmup_ratio: 0.1,
            decay: true,
            max_grad_norm: 1.0,
            max_steps: 0,
            save_every: 0,
            seed: 0,
            prompt: PromptStyle::Auto,
            max_len: 512,
            optimizer: OptimizerKind::Adamw,
            adamw: AdamWConfig::default(),
            sophia: SophiaConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepLog {
    pub step: usize,
    pub epoch: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
}

pub struct TrainReport {
    pub steps: usize,
    pub final_loss: f64,
    pub tokens_per_s: f64,
    pub log: Vec<StepLog>,
}

impl TrainConfig {
    /// Items per optimiser step (micro-batch × accumulation).
    pub fn items_per_step(&self) -> usize {
        self.batch_size.max(1) * self.grad_accum.max(1)
    }

    /// Optimiser steps for `n_items` items: epochs × ⌈n / items_per_step⌉, capped by `max_steps`.
    pub fn total_steps(&self, n_items: usize) -> usize {
        let total = n_items.div_ceil(self.items_per_step()) * self.epochs.max(1);
        if self.max_steps > 0 {
            total.min(self.max_steps)
        } else {
            total
        }
    }

    /// The learning-rate schedule over `total` steps.
    pub fn schedule(&self, total: usize) -> Schedule {
        Schedule {
            lr: self.lr,
            warmup: (self.warmup_ratio * total as f64).round() as usize,
            total,
            decay: self.decay,
        }
    }
}

/// Stop with [`Error::NonFinite`] when a loss or gradient norm is NaN/inf.
pub fn check_finite(value: f64, step: usize, checkpoint: &Option<PathBuf>) -> Result<()> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(Error::NonFinite {
            step,
            loss: value,
            checkpoint: checkpoint.clone(),
        })
    }
}

/// Clip by global norm and take one optimiser step; returns the (pre-clip) norm. A non-finite
/// norm stops the run before any parameter changes.
pub fn clipped_step(
    opt: &mut Optimizer,
    acc: &GradAccum,
    lr: f64,
    max_grad_norm: f64,
    step: usize,
    checkpoint: &Option<PathBuf>,
) -> Result<f64> {
    let norm = acc.global_norm()?;
    check_finite(norm, step, checkpoint)?;
    opt.step(&acc.grads, lr, clip_scale(norm, max_grad_norm))?;
    Ok(norm)
}

/// Sophia's Gauss–Newton–Bartlett refresh, when the optimiser asks for one: labels sampled from
/// the model on `batches` (seeded by `seed` and `step`), ĝ = ∇ mean sampled-label NLL over all
/// B labelled positions, h ← β2·h + (1−β2)·B·ĝ⊙ĝ.
pub fn gnb_refresh(
    opt: &mut Optimizer,
    model: &crate::model::Llama,
    params: &[(String, candle_core::Var)],
    batches: &[Batch],
    seed: u64,
    step: usize,
) -> Result<()> {
    if !opt.needs_curvature() {
        return Ok(());
    }
    let mut rng = Rng::for_item(seed, "sophia-gnb", step as u64);
    let mut acc = GradAccum::new(params.len());
    let mut b_total = 0;
    for b in batches {
        let (loss, n) = crate::score::sampled_label_nll(&model.forward(&b.input)?, b, &mut rng)?;
        b_total += n;
        acc.add(params, &loss.backward()?)?;
    }
    // Σ-gradient G = B·ĝ, so B·ĝ⊙ĝ = G⊙G / B
    opt.update_curvature(&acc.grads, 1.0 / b_total.max(1) as f64)
}

/// Order of items for an epoch: a seeded permutation.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    Rng::for_item(seed, "shuffle", epoch as u64).shuffle(&mut v);
    v
}

/// Fine-tune `md.model` on `data` (token-mean NLL over answer tokens). Writes `train_log.jsonl`
/// and checkpoints into `run_dir`. On a non-finite loss or gradient stops with
/// [`Error::NonFinite`] naming the last good checkpoint.
pub fn finetune(
    md: &ModelDir,
    data: &[Encoded],
    cfg: &TrainConfig,
    run_dir: &Path,
    progress: bool,
) -> Result<TrainReport> {
    if data.is_empty() {
        return Err(Error::Invalid("no training items".into()));
    }
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
    let model = &md.model;
    let params = model.params().to_vec();
    let mut opt = Optimizer::new(cfg.optimizer, params.clone(), &cfg.adamw, &cfg.sophia)?;
    let per_step = cfg.items_per_step();
    let total = cfg.total_steps(data.len());
    let sched = cfg.schedule(total);
    let log_path = run_dir.join("train_log.jsonl");
    let mut logf = std::fs::File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;
    let bar = crate::progress::bar(total as u64, "fine-tuning", progress);
    let start = Instant::now();
    let mut tokens = 0usize;
    let mut last_ckpt: Option<PathBuf> = None;
    let mut acc = GradAccum::new(params.len());
    let mut log = Vec::new();
    let mut step = 0;
    'outer: for epoch in 0..cfg.epochs.max(1) {
        let order = epoch_order(data.len(), cfg.seed, epoch);
        for group in order.chunks(per_step) {
            let lr = sched.at(step);
            acc.clear();
            let mut loss_sum = 0.0;
            let micro: Vec<&[usize]> = group.chunks(cfg.batch_size.max(1)).collect();
            let n_micro = micro.len() as f64;
            for mb in micro {
                let items: Vec<&Encoded> = mb.iter().map(|&i| &data[i]).collect();
                let batch = Batch::new(&items, md.tok.pad_id, model.device())?;
                let logits = model.forward(&batch.input)?;
                let loss = (token_mean_nll(&logits, &batch)? / n_micro)?;
                let lv = loss.to_scalar::<f32>()? as f64;
                check_finite(lv, step, &last_ckpt)?;
                loss_sum += lv;
                tokens += batch.input.elem_count();
                acc.add(&params, &loss.backward()?)?;
            }
            if opt.needs_curvature() {
                let batches = group
                    .chunks(cfg.batch_size.max(1))
                    .map(|mb| {
                        let items: Vec<&Encoded> = mb.iter().map(|&i| &data[i]).collect();
                        Batch::new(&items, md.tok.pad_id, model.device())
                    })
                    .collect::<Result<Vec<_>>>()?;
                gnb_refresh(&mut opt, model, &params, &batches, cfg.seed, step)?;
            }
            let norm = clipped_step(&mut opt, &acc, lr, cfg.max_grad_norm, step, &last_ckpt)?;
            step += 1;
            let el = start.elapsed().as_secs_f64();
            let entry = StepLog {
                step,
                epoch,
                loss: loss_sum,
                lr,
                grad_norm: norm,
                tokens,
                tokens_per_s: tokens as f64 / el.max(1e-9),
                elapsed_s: el,
            };
            writeln!(logf, "{}", serde_json::to_string(&entry).unwrap())
                .map_err(|e| Error::io(&log_path, e))?;
            bar.set_message(format!(
                "loss {:.4} | {:.0} tok/s",
                loss_sum, entry.tokens_per_s
            ));
            bar.inc(1);
            log.push(entry);
            if cfg.save_every > 0 && step % cfg.save_every == 0 {
                let p = run_dir.join(format!("checkpoint-{step}"));
                md.save(&p)?;
                last_ckpt = Some(p);
            }
            if step >= total {
                break 'outer;
            }
        }
    }
    bar.finish_and_clear();
    let el = start.elapsed().as_secs_f64();
    Ok(TrainReport {
        steps: step,
        final_loss: log.last().map(|l| l.loss).unwrap_or(f64::NAN),
        tokens_per_s: tokens as f64 / el.max(1e-9),
        log,
    })
}
