//! The one training loop. Fine-tuning, every loss-based unlearning method and UniErase's token
//! training run through [`Trainer::run`]; what differs between them is the [`Objective`] (the
//! loss of a micro-batch) and the [`Hooks`] (evaluation, early stopping).
//!
//! One optimiser step:
//! 1. the step's items: the next `batch_size × grad_accum` indices of the epoch's seeded
//!    permutation (`epoch_order(n, order_seed, epoch)`);
//! 2. for each micro-batch of `batch_size` of them, loss / (number of micro-batches), stop on
//!    a non-finite value, backward, gradients summed;
//! 3. Sophia with GNB curvature: a sampled-label gradient on the same inputs;
//! 4. clip by global norm (stop on a non-finite norm), optimiser step at the schedule's lr;
//! 5. a JSON line in `train_log.jsonl`, the hooks (evaluation, early stop), and every
//!    `save_every` steps a checkpoint (model, optimiser state, position, log lengths) from
//!    which [`Trainer::run`] continues bit-identically.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Tensor, Var};
use serde_json::{Map, Value};

use super::checkpoint::{self, TrainerState};
use super::{check_finite, clipped_step, epoch_order, gnb_refresh, TrainConfig};
use crate::error::{Error, Result};
use crate::infer::score::Batch;
use crate::model::Llama;
use crate::optim::{GradAccum, Optimizer, Schedule};

/// The loss of one micro-batch, already divided by the number of micro-batches of the step.
pub struct MicroLoss {
    /// Scalar to differentiate.
    pub loss: Tensor,
    /// Its value (checked for NaN/inf and summed into the step's `loss`).
    pub value: f64,
    /// Further values summed over the step's micro-batches and logged (`forget_loss`, …).
    pub parts: Vec<(&'static str, f64)>,
    /// Tokens of the micro-batch's inputs (throughput).
    pub tokens: usize,
}

/// Where in the loop a step is.
#[derive(Debug, Clone, Copy)]
pub struct StepCtx {
    pub epoch: usize,
    /// Index of the step's group of items within the epoch.
    pub group: usize,
    /// Steps of this loop before this one.
    pub step: usize,
    /// Steps of the whole run before this one (across unlearning tasks).
    pub global_step: usize,
}

/// What a training loop minimises.
pub trait Objective {
    /// Items the epochs iterate over.
    fn n_items(&self) -> usize;
    /// The loss of the micro-batch `idx`, multiplied by `scale` (1 / micro-batches per step).
    fn loss(&mut self, idx: &[usize], scale: f64, ctx: &StepCtx) -> Result<MicroLoss>;
    /// Batches for Sophia's Gauss–Newton–Bartlett curvature of the step's items.
    fn curvature_batches(&self, _group: &[usize]) -> Result<Vec<Batch>> {
        Ok(vec![])
    }
    /// Before the step's first micro-batch.
    fn before_step(&mut self, _ctx: &StepCtx) -> Result<()> {
        Ok(())
    }
    /// After the optimiser step.
    fn after_step(&mut self, _ctx: &StepCtx) -> Result<()> {
        Ok(())
    }
    /// State a resumed loop needs (JSON), beyond parameters and optimiser.
    fn state(&self) -> Value {
        Value::Null
    }
    fn restore(&mut self, _state: &Value) -> Result<()> {
        Ok(())
    }
}

/// Whether the loop goes on after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Called after every step (evaluation every N steps, early stopping).
pub trait Hooks {
    fn after_step(&mut self, _ctx: &StepCtx, _log: &Map<String, Value>) -> Result<Flow> {
        Ok(Flow::Continue)
    }
    /// State a resumed run needs (the task index of a continual run, …).
    fn state(&self) -> Value {
        Value::Null
    }
}

/// No hooks.
pub struct NoHooks;
impl Hooks for NoHooks {}

/// The loop's settings, from a [`TrainConfig`].
#[derive(Debug, Clone)]
pub struct Spec {
    pub epochs: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub max_grad_norm: f64,
    /// Optimiser steps of this loop (epochs × ⌈n / items per step⌉, capped by `max_steps`).
    pub total: usize,
    pub schedule: Schedule,
    /// Seed of the epochs' item permutations.
    pub order_seed: u64,
    /// Seed of Sophia's sampled labels.
    pub curvature_seed: u64,
}

impl Spec {
    pub fn new(cfg: &TrainConfig, n_items: usize, order_seed: u64) -> Spec {
        let total = cfg.total_steps(n_items);
        Spec {
            epochs: cfg.epochs,
            batch_size: cfg.batch_size,
            grad_accum: cfg.grad_accum,
            max_grad_norm: cfg.max_grad_norm,
            total,
            schedule: cfg.schedule(total),
            order_seed,
            curvature_seed: cfg.seed,
        }
    }
}

/// Checkpoints of a loop: every `every` steps into `dir/checkpoint-{global step}/`.
pub struct Checkpoints<'a> {
    pub dir: PathBuf,
    pub every: usize,
    /// Keep only the newest this many (0: all).
    pub keep: usize,
    /// Writes the model's files into the directory given (a Hugging Face directory).
    pub write_model: &'a dyn Fn(&Path) -> Result<()>,
    /// Files whose lengths a checkpoint records, so a resumed run cuts them back to the
    /// checkpoint's step (`train_log.jsonl`, `eval_log.jsonl`).
    pub logs: Vec<PathBuf>,
}

/// Where a loop starts: at the beginning, or where a checkpoint left it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Start {
    pub epoch: usize,
    pub group: usize,
    pub step: usize,
    pub global_step: usize,
    pub tokens: usize,
    pub elapsed_s: f64,
}

impl Start {
    /// The beginning of a loop that follows `global_step` earlier steps of the run.
    pub fn fresh(global_step: usize) -> Start {
        Start {
            global_step,
            ..Start::default()
        }
    }

    pub fn from_state(s: &TrainerState) -> Start {
        Start {
            epoch: s.epoch,
            group: s.next_group,
            step: s.step,
            global_step: s.global_step,
            tokens: s.tokens,
            elapsed_s: s.elapsed_s,
        }
    }
}

/// What a loop did.
#[derive(Debug, Clone)]
pub struct LoopReport {
    /// Steps of this loop (including those before a resume).
    pub steps: usize,
    pub global_steps: usize,
    /// The last step's loss (NaN when no step ran).
    pub final_loss: f64,
    pub tokens_per_s: f64,
    /// The log lines of the steps run in this call.
    pub log: Vec<Map<String, Value>>,
    /// Whether a hook stopped the loop early.
    pub stopped: bool,
}

/// The training loop over one parameter list and optimiser.
pub struct Trainer<'a> {
    pub model: &'a Llama,
    pub params: Vec<(String, Var)>,
    pub opt: Optimizer,
    pub spec: Spec,
    /// `train_log.jsonl`, appended to.
    pub log_path: Option<PathBuf>,
    /// Fields put in front of every log line (`task`).
    pub context: Map<String, Value>,
    pub checkpoints: Option<Checkpoints<'a>>,
    /// Progress bar label (None: no bar).
    pub progress: Option<String>,
    /// The last checkpoint written (named in a NaN stop's error).
    pub last_checkpoint: Option<PathBuf>,
}

impl<'a> Trainer<'a> {
    pub fn new(model: &'a Llama, params: Vec<(String, Var)>, opt: Optimizer, spec: Spec) -> Self {
        Trainer {
            model,
            params,
            opt,
            spec,
            log_path: None,
            context: Map::new(),
            checkpoints: None,
            progress: None,
            last_checkpoint: None,
        }
    }

    /// Run from `start` until the step budget, the last epoch or a hook's stop.
    pub fn run(
        &mut self,
        obj: &mut dyn Objective,
        hooks: &mut dyn Hooks,
        start: Start,
    ) -> Result<LoopReport> {
        let n = obj.n_items();
        if n == 0 {
            return Err(Error::Invalid("no training items".into()));
        }
        let spec = self.spec.clone();
        let per_step = spec.batch_size * spec.grad_accum;
        let mut logf = match &self.log_path {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| Error::io(p, e))?,
            ),
            None => None,
        };
        let bar = crate::util::progress::bar(
            spec.total as u64,
            self.progress.as_deref().unwrap_or(""),
            self.progress.is_some(),
        );
        bar.set_position(start.step as u64);
        let t0 = Instant::now();
        let mut tokens = start.tokens;
        let mut step = start.step;
        let mut global = start.global_step;
        let mut acc = GradAccum::new(self.params.len());
        let mut log = vec![];
        let mut stopped = false;
        let mut final_loss = f64::NAN;
        let mut epoch = start.epoch;
        let mut first_group = start.group;
        'outer: while step < spec.total && epoch < spec.epochs {
            let order = epoch_order(n, spec.order_seed, epoch);
            let groups: Vec<&[usize]> = order.chunks(per_step).collect();
            for (gi, group) in groups.iter().enumerate().skip(first_group) {
                let ctx = StepCtx {
                    epoch,
                    group: gi,
                    step,
                    global_step: global,
                };
                let lr = spec.schedule.at(step);
                obj.before_step(&ctx)?;
                let done = self.step(obj, group, &ctx, lr, &mut acc)?;
                tokens += done.tokens;
                let (loss_sum, parts, norm) = (done.loss, done.parts, done.grad_norm);
                obj.after_step(&ctx)?;
                step += 1;
                global += 1;
                final_loss = loss_sum;
                let elapsed = start.elapsed_s + t0.elapsed().as_secs_f64();
                let line = self.log_line(step, epoch, loss_sum, &parts, lr, norm, tokens, elapsed);
                if let (Some(f), Some(p)) = (logf.as_mut(), &self.log_path) {
                    writeln!(f, "{}", Value::Object(line.clone()))
                        .and_then(|_| f.flush())
                        .map_err(|e| Error::io(p, e))?;
                }
                bar.set_message(format!("loss {loss_sum:.4}"));
                bar.inc(1);
                let flow = hooks.after_step(&ctx, &line)?;
                log.push(line);
                // the position the next step starts from
                let (next_epoch, next_group) = if gi + 1 == groups.len() {
                    (epoch + 1, 0)
                } else {
                    (epoch, gi + 1)
                };
                if self
                    .checkpoints
                    .as_ref()
                    .is_some_and(|c| c.every > 0 && step.is_multiple_of(c.every))
                {
                    let state = TrainerState {
                        global_step: global,
                        step,
                        epoch: next_epoch,
                        next_group,
                        optimizer_steps: self.opt.steps_taken(),
                        tokens,
                        elapsed_s: elapsed,
                        log_bytes: Default::default(),
                        objective: obj.state(),
                        hooks: hooks.state(),
                        version: crate::VERSION.into(),
                    };
                    self.checkpoint(state)?;
                }
                if flow == Flow::Stop {
                    stopped = true;
                    break 'outer;
                }
                if step >= spec.total {
                    break 'outer;
                }
            }
            epoch += 1;
            first_group = 0;
        }
        bar.finish_and_clear();
        let el = t0.elapsed().as_secs_f64();
        Ok(LoopReport {
            steps: step,
            global_steps: global,
            final_loss,
            tokens_per_s: (tokens - start.tokens) as f64 / el.max(1e-9),
            log,
            stopped,
        })
    }

    /// One optimiser step over `group`: the micro-batches' losses and gradients (accumulated,
    /// each scaled by 1/micro-batches), the NaN stop, Sophia's curvature refresh, clipping.
    fn step(
        &mut self,
        obj: &mut dyn Objective,
        group: &[usize],
        ctx: &StepCtx,
        lr: f64,
        acc: &mut GradAccum,
    ) -> Result<StepDone> {
        acc.clear();
        let micro: Vec<&[usize]> = group.chunks(self.spec.batch_size).collect();
        let scale = 1.0 / micro.len() as f64;
        let mut done = StepDone {
            loss: 0.0,
            parts: vec![],
            tokens: 0,
            grad_norm: 0.0,
        };
        for mb in micro {
            let ml = obj.loss(mb, scale, ctx)?;
            check_finite(ml.value, ctx.step, &self.last_checkpoint)?;
            done.loss += ml.value;
            done.tokens += ml.tokens;
            for (k, v) in ml.parts {
                match done.parts.iter_mut().find(|(pk, _)| *pk == k) {
                    Some(slot) => slot.1 += v,
                    None => done.parts.push((k, v)),
                }
            }
            acc.add(&self.params, &self.model.backward(&ml.loss)?)?;
        }
        if self.opt.needs_curvature() {
            let batches = obj.curvature_batches(group)?;
            gnb_refresh(
                &mut self.opt,
                self.model,
                &self.params,
                &batches,
                self.spec.curvature_seed,
                ctx.global_step,
            )?;
        }
        done.grad_norm = clipped_step(
            &mut self.opt,
            acc,
            lr,
            self.spec.max_grad_norm,
            ctx.step,
            &self.last_checkpoint,
        )?;
        Ok(done)
    }

    /// The train_log.jsonl line of a step: the context fields, then the step's numbers.
    #[allow(clippy::too_many_arguments)]
    fn log_line(
        &self,
        step: usize,
        epoch: usize,
        loss: f64,
        parts: &[(&'static str, f64)],
        lr: f64,
        norm: f64,
        tokens: usize,
        elapsed: f64,
    ) -> Map<String, Value> {
        let mut line = self.context.clone();
        line.insert("step".into(), step.into());
        line.insert("epoch".into(), epoch.into());
        line.insert("loss".into(), loss.into());
        for (k, v) in parts {
            line.insert((*k).into(), (*v).into());
        }
        line.insert("lr".into(), lr.into());
        line.insert("grad_norm".into(), norm.into());
        line.insert("tokens".into(), tokens.into());
        line.insert(
            "tokens_per_s".into(),
            (tokens as f64 / elapsed.max(1e-9)).into(),
        );
        line.insert("elapsed_s".into(), elapsed.into());
        line
    }

    /// Write a checkpoint of `state` (its log lengths filled in here) and prune old ones.
    fn checkpoint(&mut self, mut state: TrainerState) -> Result<()> {
        let c = self.checkpoints.as_ref().expect("checkpoints configured");
        state.log_bytes = checkpoint::log_lengths(&c.logs);
        let p = checkpoint::write(&c.dir, &state, &self.opt, c.write_model)?;
        checkpoint::prune(&c.dir, c.keep)?;
        self.last_checkpoint = Some(p);
        Ok(())
    }
}

/// What one optimiser step did.
struct StepDone {
    /// Σ of the micro-batches' losses.
    loss: f64,
    /// Σ of each named loss part.
    parts: Vec<(&'static str, f64)>,
    tokens: usize,
    grad_norm: f64,
}
