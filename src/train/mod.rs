//! Training: the settings ([`TrainConfig`]), the one step loop every trainer runs through
//! ([`trainer`]), its checkpoints ([`checkpoint`]), and supervised fine-tuning ([`finetune`]):
//! AdamW or Sophia, linear warm-up/decay, gradient accumulation, global-norm clipping, seeded
//! shuffling, a JSONL loss log, checkpoints with resume, stop on NaN/inf.
pub mod checkpoint;
pub mod trainer;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::{Encoded, PromptStyle};
use crate::error::{Error, Result};
use crate::infer::score::{token_mean_nll, Batch};
use crate::model::hf::ModelDir;
use crate::optim::{
    clip_scale, AdamWConfig, GradAccum, Optimizer, OptimizerKind, Schedule, SophiaConfig,
};
use crate::util::rng::Rng;

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
    /// Write a checkpoint (model, optimiser state, position) every N optimiser steps into the
    /// run directory (0 = none); `--resume` continues from the newest.
    pub save_every: usize,
    /// Keep only the newest N checkpoints (0 = all).
    pub keep_checkpoints: usize,
    pub seed: u64,
    /// Prompt template: auto (chat template when the tokenizer has one), chat or plain.
    pub prompt: PromptStyle,
    /// Longest sequence (prompt + answer + EOS) in tokens; longer ones are truncated.
    pub max_len: usize,
    /// `adamw` (default) or `sophia`.
    pub optimizer: OptimizerKind,
    pub adamw: AdamWConfig,
    pub sophia: SophiaConfig,
    /// Compute the label log-probabilities through the LM head in chunks of rows, so the
    /// [batch, seq, vocab] logits and their gradient are never held in full (`ops::lm_head`).
    /// Same values up to summation order; terms that need whole distributions (KL, ME, UNDIAL,
    /// CE-U) compute logits as before. Off by default.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub chunked_loss: bool,
    /// Keep only each decoder layer's input during a training forward and recompute the layer
    /// in the backward pass (`Llama::backward_checkpointed`): one layer's activations in memory
    /// instead of all, for one more forward per step. Off by default.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub checkpoint_activations: bool,
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
            keep_checkpoints: 0,
            seed: 0,
            prompt: PromptStyle::Auto,
            max_len: 512,
            optimizer: OptimizerKind::Adamw,
            adamw: AdamWConfig::default(),
            sophia: SophiaConfig::default(),
            chunked_loss: false,
            checkpoint_activations: false,
        }
    }
}

/// What a fine-tuning run did.
pub struct TrainReport {
    pub steps: usize,
    pub final_loss: f64,
    pub tokens_per_s: f64,
    /// The log lines of the steps run (those of `train_log.jsonl`).
    pub log: Vec<serde_json::Map<String, serde_json::Value>>,
}

impl crate::config::Validate for TrainConfig {
    fn check(&self, c: &mut crate::config::Check) {
        c.positive("lr", self.lr);
        c.at_least("epochs", self.epochs, 1);
        c.at_least("batch_size", self.batch_size, 1);
        c.at_least("grad_accum", self.grad_accum, 1);
        c.fraction("warmup_ratio", self.warmup_ratio);
        c.non_negative("max_grad_norm", self.max_grad_norm);
        c.at_least("max_len", self.max_len, 2);
        c.sub("adamw", &self.adamw);
        c.sub("sophia", &self.sophia);
    }
}

impl TrainConfig {
    /// Items per optimiser step (micro-batch × accumulation).
    pub fn items_per_step(&self) -> usize {
        self.batch_size * self.grad_accum
    }

    /// Optimiser steps for `n_items` items: epochs × ⌈n / items_per_step⌉, capped by `max_steps`.
    pub fn total_steps(&self, n_items: usize) -> usize {
        let total = n_items.div_ceil(self.items_per_step()) * self.epochs;
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
        let (loss, n) =
            crate::infer::score::sampled_label_nll(&model.forward(&b.input)?, b, &mut rng)?;
        b_total += n;
        acc.add(params, &model.backward(&loss)?)?;
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

/// Supervised fine-tuning's objective: the token-mean NLL of the answer tokens (the Hugging
/// Face causal-LM loss) of each micro-batch.
pub struct Nll<'a> {
    pub model: &'a crate::model::Llama,
    pub data: &'a [Encoded],
    pub pad_id: u32,
    /// Micro-batch size (Sophia's curvature batches are cut the same way).
    pub batch_size: usize,
    /// `chunked_loss`: the loss through the chunked LM-head op.
    pub chunked: bool,
}

impl Nll<'_> {
    fn batch(&self, idx: &[usize]) -> Result<Batch> {
        let items: Vec<&Encoded> = idx.iter().map(|&i| &self.data[i]).collect();
        Batch::new(&items, self.pad_id, self.model.device())
    }
}

impl trainer::Objective for Nll<'_> {
    fn n_items(&self) -> usize {
        self.data.len()
    }
    fn loss(
        &mut self,
        idx: &[usize],
        scale: f64,
        _ctx: &trainer::StepCtx,
    ) -> Result<trainer::MicroLoss> {
        let batch = self.batch(idx)?;
        let loss = if self.chunked {
            let lp = (self
                .model
                .label_logprobs_chunked(&batch.input, &batch.targets)?
                * &batch.mask)?;
            (lp.sum_all()?.neg()? / batch.total_labels().max(1) as f64)?
        } else {
            token_mean_nll(&self.model.forward(&batch.input)?, &batch)?
        };
        let loss = (loss * scale)?;
        Ok(trainer::MicroLoss {
            value: loss.to_scalar::<f32>()? as f64,
            loss,
            parts: vec![],
            tokens: batch.input.elem_count(),
        })
    }
    fn curvature_batches(&self, group: &[usize]) -> Result<Vec<Batch>> {
        group
            .chunks(self.batch_size)
            .map(|mb| self.batch(mb))
            .collect()
    }
}

/// Fine-tune `md.model` on `data` (token-mean NLL over answer tokens) from the start. Writes
/// `train_log.jsonl` and checkpoints into `run_dir`. On a non-finite loss or gradient stops with
/// [`Error::NonFinite`] naming the last good checkpoint.
pub fn finetune(
    md: &ModelDir,
    data: &[Encoded],
    cfg: &TrainConfig,
    run_dir: &Path,
    progress: bool,
) -> Result<TrainReport> {
    finetune_from(md, data, cfg, run_dir, progress, None)
}

/// [`finetune`], continuing from the checkpoint `resume` (a `checkpoint-N` directory of an
/// earlier run of the same config and data) when given: parameters, optimiser state, position
/// in the epoch, and the log are restored, so the result is bit-identical to an uninterrupted
/// run.
pub fn finetune_from(
    md: &ModelDir,
    data: &[Encoded],
    cfg: &TrainConfig,
    run_dir: &Path,
    progress: bool,
    resume: Option<&Path>,
) -> Result<TrainReport> {
    if data.is_empty() {
        return Err(Error::Invalid("no training items".into()));
    }
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
    let model = &md.model;
    model.set_activation_checkpointing(cfg.checkpoint_activations);
    let params = model.params().to_vec();
    let opt = Optimizer::new(cfg.optimizer, params.clone(), &cfg.adamw, &cfg.sophia)?;
    let log_path = run_dir.join("train_log.jsonl");
    let write_model = |dir: &Path| {
        crate::model::hf::write_model_files(
            model,
            &md.tok,
            Some(&md.config_json),
            &md.side_files,
            dir,
        )
    };
    let mut t = trainer::Trainer::new(
        model,
        params.clone(),
        opt,
        trainer::Spec::new(cfg, data.len(), cfg.seed),
    );
    let mut obj = Nll {
        model,
        data,
        pad_id: md.tok.pad_id,
        batch_size: cfg.batch_size,
        chunked: cfg.chunked_loss,
    };
    let start = match resume {
        Some(ckpt) => {
            let state = checkpoint::read_state(ckpt)?;
            checkpoint::load_params(ckpt, &params)?;
            checkpoint::load_optimizer(ckpt, &mut t.opt, &state)?;
            checkpoint::truncate_logs(run_dir, &state)?;
            trainer::Objective::restore(&mut obj, &state.objective)?;
            t.last_checkpoint = Some(ckpt.to_path_buf());
            trainer::Start::from_state(&state)
        }
        None => {
            crate::util::fs::write_synced(&log_path, b"")?;
            trainer::Start::fresh(0)
        }
    };
    t.log_path = Some(log_path.clone());
    t.progress = progress.then(|| "fine-tuning".to_string());
    t.checkpoints = Some(trainer::Checkpoints {
        dir: run_dir.to_path_buf(),
        every: cfg.save_every,
        keep: cfg.keep_checkpoints,
        write_model: &write_model,
        logs: vec![log_path],
    });
    let rep = t.run(&mut obj, &mut trainer::NoHooks, start)?;
    Ok(TrainReport {
        steps: rep.steps,
        final_loss: rep.final_loss,
        tokens_per_s: rep.tokens_per_s,
        log: rep.log,
    })
}
