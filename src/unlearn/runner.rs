//! The loss-based unlearning run: tasks read and encoded once, then each task trained through the
//! one training loop ([`crate::train::trainer`]) with γ·forget term + α·retain term as the
//! objective, evaluated at its end (and every `eval_every` steps), the model saved after each
//! task of a continual run.
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Tensor, Var};

use super::objective::method::SimuSelect;
use super::objective::{Ctx, ForgetTerm, Needs, Task};
use super::{mean_prob, select_params, Paths, RefMode, RunConfig, RunReport};
use crate::data::{read_items, Encoded, Formatter, QaItem};
use crate::error::{Error, Result};
use crate::infer::score::{score, Batch};
use crate::model::hf::ModelDir;
use crate::model::Llama;
use crate::optim::Optimizer;
use crate::train::checkpoint::{self, TrainerState};
use crate::train::trainer::{
    Checkpoints, Flow, Hooks, MicroLoss, Objective, Spec, Start, StepCtx, Trainer,
};
use crate::util::rng::Rng;

/// The RMU layer ℓ: the one given, which must exist, or 7 clamped to the last layer.
pub fn rmu_layer(forget: &ForgetTerm, n_layers: usize) -> Result<usize> {
    match forget {
        ForgetTerm::Rmu(r) => match r.layer {
            Some(l) if l >= n_layers => Err(Error::Invalid(format!(
                "method.forget.layer = {l}: the model has {n_layers} layers (0..{})",
                n_layers - 1
            ))),
            Some(l) => Ok(l),
            None => Ok(7.min(n_layers - 1)),
        },
        _ => Ok(7.min(n_layers - 1)),
    }
}

/// Summed log-probabilities of every item's labels.
fn sums(model: &Llama, items: &[Encoded], bs: usize) -> Result<Vec<f32>> {
    Ok(score(model, items, bs)?
        .into_iter()
        .map(|v| v.iter().sum())
        .collect())
}

/// An unlearning run whose inputs are read and checked ([`Runner::new`], which writes nothing),
/// ready to run ([`Runner::run`]).
pub struct Runner<'a> {
    pub cfg: &'a RunConfig,
    pub md: &'a ModelDir,
    pub run_dir: PathBuf,
    pub progress: bool,
    needs: Needs,
    tasks: Vec<Task>,
    /// The retain set, then (with `retain_future_tasks`) every task's forget items.
    retain_qa: Vec<Encoded>,
    /// How many of `retain_qa` are the `retain` set's.
    n_retain: usize,
    trainable: Vec<(String, Var)>,
    /// User-given masks (`masks`), by index into `trainable`.
    masks: Vec<(usize, Tensor)>,
    rmu_layer: usize,
    /// The resident frozen reference, when a term needs one.
    reference: Option<Llama>,
    /// RMU's control vector c·u.
    control: Option<Tensor>,
    /// Per task: how many of its forget items the retain set also holds (said in the notes).
    shared: Vec<usize>,
}

impl<'a> Runner<'a> {
    /// Read and encode the forget task(s), the retain set and the refusals, select the trainable
    /// parameters and read the masks: every check that needs no training, and no writes.
    pub fn new(
        cfg: &'a RunConfig,
        md: &'a ModelDir,
        run_dir: PathBuf,
        progress: bool,
    ) -> Result<Self> {
        let m = &cfg.method;
        let model = &md.model;
        let needs = m.needs();
        let rmu_layer = rmu_layer(&m.forget, model.cfg.num_hidden_layers)?;
        let f = Formatter::new(&md.tok, cfg.train.prompt, cfg.train.max_len)?;
        let refusals = crate::data::refusals::load(cfg.refusals.as_deref())?;
        let retain_items = match (&cfg.retain, needs.retain_set) {
            (Some(p), _) => read_items(p)?,
            (None, true) => {
                return Err(Error::Invalid(format!(
                    "the method's retain term ({}) needs a `retain` set",
                    m.retain.name()
                )))
            }
            (None, false) => vec![],
        };
        let task_items = read_tasks(cfg)?;
        let shared = shared_with_retain(cfg, &task_items, &retain_items, needs.retain_set)?;
        let n_retain = retain_items.len();
        // with retain_future_tasks the retain pool also holds every task's forget items; task
        // k draws its partners from the retain set and the tasks after k
        let mut retain_items = retain_items;
        let mut task_start = vec![];
        if cfg.retain_future_tasks {
            if task_items.len() < 2 {
                return Err(Error::Invalid(
                    "retain_future_tasks needs a continual run (several forget files, \
                     forget_tasks or forget_task_key)"
                        .into(),
                ));
            }
            for items in &task_items {
                task_start.push(retain_items.len());
                retain_items.extend(items.iter().cloned());
            }
        }
        let retain_qa = f.encode_items(&retain_items)?;
        let mut base = 0u64; // item numbering runs across tasks so per-item seeds do not repeat
        let mut tasks = vec![];
        for (k, items) in task_items.iter().enumerate() {
            let pool: Vec<usize> = match task_start.get(k + 1) {
                Some(&next) => (0..n_retain).chain(next..retain_items.len()).collect(),
                None => (0..n_retain).collect(),
            };
            if pool.is_empty() && needs.retain_set {
                return Err(Error::Invalid(format!(
                    "task {}: the retain term needs retain items, and neither `retain` nor a \
                     later task gives any",
                    k + 1
                )));
            }
            let enc = Encoder {
                f: &f,
                seed: cfg.train.seed,
                needs,
                refusals: &refusals,
                retain_items: &retain_items,
                pool: &pool,
            };
            tasks.push(enc.task(items, base)?);
            base += items.len() as u64;
        }
        let trainable = trainable_params(cfg, model, rmu_layer)?;
        if let Some(sel) = &m.simu {
            if cfg.masks.is_some() {
                return Err(Error::Invalid(
                    "method `simu` computes its own masks; drop `masks`".into(),
                ));
            }
            if sel.dual && n_retain == 0 {
                return Err(Error::Invalid("simu dual mode needs a `retain` set".into()));
            }
        }
        let masks = match &cfg.masks {
            None => vec![],
            Some(p) => read_masks(p, &trainable, model)?,
        };
        let control = if needs.rmu {
            let coef = match &m.forget {
                ForgetTerm::Rmu(r) => r.steering_coef,
                _ => super::objective::rmu::Rmu::default().steering_coef,
            };
            Some(super::objective::rmu::control_vector(
                model.cfg.hidden_size,
                coef,
                cfg.train.seed,
                model.device(),
            )?)
        } else {
            None
        };
        Ok(Runner {
            cfg,
            md,
            run_dir,
            progress,
            needs,
            tasks,
            retain_qa,
            n_retain,
            trainable,
            masks,
            rmu_layer,
            reference: None,
            control,
            shared,
        })
    }

    /// Trainable elements.
    pub fn n_trainable(&self) -> usize {
        self.trainable.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Unlearn every task in turn (from the checkpoint `resume` when given), evaluating at the
    /// end of each; the caller saves the model.
    pub fn run(&mut self, resume: Option<&Path>) -> Result<RunReport> {
        let state = resume.map(checkpoint::read_state).transpose()?;
        let first = state
            .as_ref()
            .map(|s| s.hooks["task"].as_u64().unwrap_or(0) as usize)
            .unwrap_or(0);
        self.start_logs(state.as_ref().zip(resume), first)?;
        let masks = match &self.cfg.method.simu {
            None => self.masks.clone(),
            // SIMU attributes on the input model (before any resumed weights are loaded)
            Some(sel) => self.simu_masks(sel)?,
        };
        self.prepare_references(first)?;
        let mut global = 0;
        let mut final_eval = serde_json::Value::Null;
        for ti in first..self.tasks.len() {
            if ti > first && self.cfg.reference == RefMode::PreviousTask {
                if self.reference.is_some() {
                    self.reference = Some(self.md.model.merged()?);
                }
                self.score_refs(ti)?;
            }
            let resumed = if ti == first {
                state.as_ref().zip(resume)
            } else {
                None
            };
            let (steps, g) = self.run_task(ti, &masks, global, resumed)?;
            global = g;
            final_eval = self.finish_task(ti, steps)?;
        }
        Ok(RunReport {
            tasks: self.tasks.len(),
            steps: global,
            trainable_params: self.n_trainable(),
            changed_params: 0,
            final_eval,
        })
    }

    fn log_path(&self) -> PathBuf {
        self.run_dir.join("train_log.jsonl")
    }

    fn eval_path(&self) -> PathBuf {
        self.run_dir.join("eval_log.jsonl")
    }

    /// Empty logs for a fresh run, logs cut back to the checkpoint for a resumed one; notes.
    fn start_logs(&self, resumed: Option<(&TrainerState, &Path)>, first: usize) -> Result<()> {
        match resumed {
            None => {
                crate::util::fs::write_synced(&self.log_path(), b"")?;
                crate::util::fs::write_synced(&self.eval_path(), b"")?;
            }
            Some((s, ckpt)) => {
                checkpoint::truncate_logs(&self.run_dir, s)?;
                self.note(&format!(
                    "resuming task {} at step {} from {}",
                    first + 1,
                    s.step,
                    ckpt.display()
                ));
            }
        }
        for (k, &n) in self.shared.iter().enumerate().filter(|(_, &n)| n > 0) {
            self.note(&format!(
                "{n} of the {} forget items of task {} are also retain items (same question \
                 and answer): the forget and retain terms on them pull against each other",
                self.tasks[k].forget.len(),
                k + 1
            ));
        }
        let n = &self.needs;
        self.note(&format!(
            "{} trainable parameters of {} ({} tensors); reference: {}",
            self.n_trainable(),
            self.md.model.num_params(),
            self.trainable.len(),
            if n.reference_model
                && self.cfg.lora.is_some()
                && self.cfg.reference == RefMode::Initial
            {
                "the base model with the adapters switched off (full distributions / hidden \
                 states needed; it shares the base's weights, no second copy)"
            } else if n.reference_model {
                "resident frozen copy (full distributions / hidden states needed)"
            } else if n.ref_answer_scores {
                "summed log-probs precomputed once per task (no second model in memory)"
            } else {
                "not needed"
            }
        ));
        if let ForgetTerm::Rmu(r) = &self.cfg.method.forget {
            if r.layer.is_none() {
                self.note(&format!(
                    "rmu: layer {} (default 7, clamped to the model)",
                    self.rmu_layer
                ));
            }
        }
        Ok(())
    }

    /// The references of the first task to run: with `ref = initial` the untouched model (a
    /// resident copy where a term needs one, every task's reference scores now); a resumed later
    /// task starts from the saved model of the task before it; with `ref = previous_task` that
    /// model is the first task's reference.
    fn prepare_references(&mut self, first: usize) -> Result<()> {
        let model = &self.md.model;
        if self.cfg.reference == RefMode::Initial {
            if self.needs.reference_model {
                // fresh adapters leave the model equal to its base: the base with the adapters
                // switched off is the reference, and shares its storage
                self.reference = Some(if self.cfg.lora.is_some() {
                    model.base_view()?
                } else {
                    model.merged()?
                });
            }
            for ti in first..self.tasks.len() {
                self.score_refs(ti)?;
            }
        }
        if first > 0 {
            let prev = self.run_dir.join(format!("task-{first}"));
            checkpoint::load_model_state(&prev, model)?;
        }
        if self.cfg.reference == RefMode::PreviousTask {
            if self.needs.reference_model {
                self.reference = Some(model.merged()?);
            }
            self.score_refs(first)?;
        }
        Ok(())
    }

    /// Train task `ti` (from a checkpoint when resumed); returns (steps of the task, steps of
    /// the run so far).
    fn run_task(
        &self,
        ti: usize,
        masks: &[(usize, Tensor)],
        global: usize,
        resumed: Option<(&TrainerState, &Path)>,
    ) -> Result<(usize, usize)> {
        let (cfg, t, md) = (self.cfg, &self.cfg.train, self.md);
        let model = &md.model;
        let mut opt = Optimizer::new(
            cfg.method.optimizer.unwrap_or(t.optimizer),
            self.trainable.clone(),
            &t.adamw,
            &t.sophia,
        )?;
        for (i, mk) in masks {
            opt.set_mask(*i, mk)?;
        }
        let n_items = self.tasks[ti].forget.len();
        let spec = Spec::new(t, n_items, t.seed ^ (ti as u64) << 32);
        model.set_activation_checkpointing(t.checkpoint_activations);
        let mut tr = Trainer::new(model, self.trainable.clone(), opt, spec);
        let start = match resumed {
            Some((s, ckpt)) => {
                checkpoint::load_model_state(ckpt, model)?;
                if let (Some(l), Some(n)) = (model.lora(), s.hooks["lora_dropout_draws"].as_u64()) {
                    l.set_draws(n);
                }
                checkpoint::load_optimizer(ckpt, &mut tr.opt, s)?;
                tr.last_checkpoint = Some(ckpt.to_path_buf());
                Start::from_state(s)
            }
            None => Start::fresh(global),
        };
        let write_model = |dir: &Path| {
            crate::model::hf::write_model_files(
                model,
                &md.tok,
                Some(&md.config_json),
                &md.side_files,
                dir,
            )
        };
        let n_tasks = self.tasks.len();
        tr.log_path = Some(self.log_path());
        tr.context.insert("task".into(), ti.into());
        tr.progress = self
            .progress
            .then(|| format!("unlearning task {}/{n_tasks}", ti + 1));
        tr.checkpoints = Some(Checkpoints {
            dir: self.run_dir.clone(),
            every: t.save_every,
            keep: t.keep_checkpoints,
            write_model: &write_model,
            logs: vec![self.log_path(), self.eval_path()],
        });
        let eval_path = self.eval_path();
        let mut obj = Loss {
            runner: self,
            task: ti,
        };
        let mut hooks = EvalHooks {
            runner: self,
            task: ti,
            eval_path: &eval_path,
        };
        let rep = tr.run(&mut obj, &mut hooks, start)?;
        if rep.stopped {
            self.note(&format!(
                "task {}: early stop at step {} (forget_prob below {})",
                ti + 1,
                rep.steps,
                cfg.stop_forget_prob.unwrap_or(0.0)
            ));
        }
        Ok((rep.steps, rep.global_steps))
    }

    /// The evaluation at the end of task `ti` (into RUN_DIR/eval, or RUN_DIR/eval/task-K of a
    /// continual run, whose task models are saved as RUN_DIR/task-K).
    fn finish_task(&self, ti: usize, steps: usize) -> Result<serde_json::Value> {
        let n_tasks = self.tasks.len();
        let eval_dir = if n_tasks > 1 {
            self.run_dir.join("eval").join(format!("task-{}", ti + 1))
        } else {
            self.run_dir.join("eval")
        };
        let line = self.evaluate(ti, steps, Some(&eval_dir))?;
        append_line(&self.eval_path(), &line.to_string())?;
        if n_tasks > 1 {
            self.md
                .save(&self.run_dir.join(format!("task-{}", ti + 1)))?;
        }
        Ok(line)
    }

    /// Reference summed log-probs of task `ti` from the model as it is now (NPO, DPO).
    fn score_refs(&mut self, ti: usize) -> Result<()> {
        let model = &self.md.model;
        let bs = self.cfg.train.batch_size;
        let task = &mut self.tasks[ti];
        if self.needs.ref_answer_scores {
            task.ref_answers = sums(model, &task.forget, bs)?;
        }
        if self.needs.ref_refusal_scores {
            task.ref_refusals = sums(model, &task.forget_refusals, bs)?;
        }
        Ok(())
    }

    /// SIMU: attribute MLP neurons on every forget item (and, in dual mode, the retain set), write
    /// `attribution.json` into the run directory, and return the down_proj column masks by index
    /// into the trainable parameters.
    fn simu_masks(&self, sel: &SimuSelect) -> Result<Vec<(usize, Tensor)>> {
        use crate::unlearn::attribution::{down_proj_masks, select, AttributionConfig};
        let model = &self.md.model;
        let items: Vec<Encoded> = self
            .tasks
            .iter()
            .flat_map(|d| d.forget.iter().cloned())
            .collect();
        let acfg = AttributionConfig {
            steps: sel.steps,
            threshold: sel.threshold,
            absolute: sel.absolute,
            batch_size: self.cfg.train.batch_size,
        };
        let retain = sel.dual.then_some(&self.retain_qa[..self.n_retain]);
        // The scores depend on the model, the encoded items, m and the batch size only: cached
        // under a hash of those, so the points of a sweep that differ in other settings (the
        // learning rate, the threshold) attribute once.
        let ids = |v: &[Encoded]| -> Vec<(usize, Vec<u32>)> {
            v.iter().map(|e| (e.n_prompt, e.ids.clone())).collect()
        };
        let key = crate::util::hash::sha256(
            serde_json::json!({
                "version": crate::VERSION,
                "model": crate::util::hash::path_sha256(&self.md.path)?,
                "forget": ids(&items),
                "retain": retain.map(ids),
                "steps": sel.steps,
                "batch_size": acfg.batch_size,
            })
            .to_string()
            .as_bytes(),
        );
        let cache = crate::util::hub::own_cache_dir()
            .join("attribution")
            .join(format!("{key}.json"));
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Cached {
            scores: Vec<Vec<f64>>,
            retain_scores: Option<Vec<Vec<f64>>>,
        }
        let layers = model.cfg.num_hidden_layers;
        let cached: Option<Cached> = std::fs::read_to_string(&cache)
            .ok()
            .and_then(|t| serde_json::from_str::<Cached>(&t).ok())
            .filter(|c| {
                c.scores.len() == layers
                    && c.retain_scores.is_some() == retain.is_some()
                    && c.scores
                        .iter()
                        .all(|r| r.len() == model.cfg.intermediate_size)
            });
        let chosen = match cached {
            Some(c) => {
                self.note(&format!(
                    "simu: attribution scores reused from {} (same model, items, m and batch size)",
                    cache.display()
                ));
                crate::unlearn::attribution::select_from_scores(c.scores, c.retain_scores, &acfg)
            }
            None => {
                let chosen = select(
                    model,
                    &items,
                    retain,
                    self.md.tok.pad_id,
                    &acfg,
                    self.progress,
                )?;
                let c = Cached {
                    scores: chosen.scores.clone(),
                    retain_scores: chosen.retain_scores.clone(),
                };
                let written = cache
                    .parent()
                    .map(|d| std::fs::create_dir_all(d).is_ok())
                    .unwrap_or(false)
                    && crate::util::fs::atomic_write(
                        &cache,
                        serde_json::to_string(&c).unwrap().as_bytes(),
                    )
                    .is_ok();
                if !written {
                    self.note(&format!(
                        "simu: could not cache the attribution scores at {}",
                        cache.display()
                    ));
                }
                chosen
            }
        };
        self.note(&format!(
            "simu: {} critical neurons of {} (threshold {}, m = {})",
            chosen.n_critical(),
            chosen.scores.len() * model.cfg.intermediate_size,
            sel.threshold,
            sel.steps
        ));
        let layers = chosen.layers_json();
        crate::util::fs::atomic_write(
            &self.run_dir.join("attribution.json"),
            serde_json::to_string(&serde_json::json!({"select": sel, "layers": layers}))
                .unwrap()
                .as_bytes(),
        )?;
        Ok(down_proj_masks(model, &chosen.critical)?
            .into_iter()
            .filter_map(|(n, t)| {
                self.trainable
                    .iter()
                    .position(|(tn, _)| *tn == n)
                    .map(|i| (i, t))
            })
            .collect())
    }

    pub fn note(&self, s: &str) {
        crate::util::rundir::note(&self.run_dir, self.progress, s);
    }

    /// Mean forget and retain-partner probability, and the `[eval]` suite when configured.
    fn evaluate(
        &self,
        task: usize,
        step: usize,
        eval_out: Option<&Path>,
    ) -> Result<serde_json::Value> {
        let model = &self.md.model;
        let data = &self.tasks[task];
        let bs = self.cfg.train.batch_size;
        let forget_prob = mean_prob(model, &data.forget, bs)?;
        let mut partners: Vec<usize> = data.retain_partner.clone();
        partners.sort();
        partners.dedup();
        let rq: Vec<Encoded> = partners
            .iter()
            .map(|&i| self.retain_qa[i].clone())
            .collect();
        let retain_prob = if rq.is_empty() {
            serde_json::Value::Null
        } else {
            mean_prob(model, &rq, bs)?.into()
        };
        let mut line = serde_json::json!({"task": task, "step": step, "forget_prob": forget_prob, "retain_prob": retain_prob});
        if self.tasks.len() > 1 {
            let later = data
                .retain_partner
                .iter()
                .filter(|&&i| i >= self.n_retain)
                .count();
            line["n_forget"] = data.forget.len().into();
            line["retain_pool"] = data.retain_pool.into();
            line["partners_from_later_tasks"] = later.into();
        }
        if let Some(ec) = &self.cfg.eval {
            let out = crate::eval::Evaluator::new(model, &self.md.tok, ec, false)?
                .run(eval_out, None, true)?;
            line["eval"] = serde_json::Value::Object(out.summary);
        }
        Ok(line)
    }

    /// The terms' view of task `ti`'s forget items `idx`.
    fn ctx<'c>(&'c self, ti: usize, idx: &'c [usize]) -> Ctx<'c> {
        Ctx {
            model: &self.md.model,
            reference: self.reference.as_ref(),
            pad: self.md.tok.pad_id,
            task: &self.tasks[ti],
            retain: &self.retain_qa,
            idx,
            rmu: self.control.as_ref().map(|c| (self.rmu_layer, c)),
            chunked: self.cfg.train.chunked_loss,
        }
    }
}

/// The trainable parameters: the `trainable` patterns, else SIMU's (attention projections and
/// down_proj), else RMU's (down_proj of layers ℓ−2..ℓ), else all; among the adapter tensors
/// when the model has adapters.
fn trainable_params(
    cfg: &RunConfig,
    model: &Llama,
    rmu_layer: usize,
) -> Result<Vec<(String, Var)>> {
    // with adapters only they train (patterns then select among them)
    let params: Vec<(String, Var)> = match model.lora() {
        Some(_) => model.adapters(),
        None => model.params().to_vec(),
    };
    let names: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
    let mut patterns = cfg.trainable.clone();
    if patterns.is_empty() && cfg.method.simu.is_some() {
        patterns = [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.down_proj",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
    }
    if patterns.is_empty() {
        if let ForgetTerm::Rmu(_) = cfg.method.forget {
            patterns = (rmu_layer.saturating_sub(2)..=rmu_layer)
                .map(|k| format!("layers.{k}.mlp.down_proj"))
                .collect();
        }
    }
    let sel = select_params(&names, &patterns)?;
    Ok(params
        .into_iter()
        .zip(&sel)
        .filter(|(_, &s)| s)
        .map(|(p, _)| p)
        .collect())
}

/// Per-element masks of a safetensors file, by index into `trainable`; every tensor must name
/// a trainable parameter and have its shape.
fn read_masks(
    p: &Path,
    trainable: &[(String, Var)],
    model: &Llama,
) -> Result<Vec<(usize, Tensor)>> {
    let mut t = crate::model::hf::load_safetensors(p, model.device())?;
    let mut v = Vec::new();
    for (i, (n, param)) in trainable.iter().enumerate() {
        if let Some(mk) = t.remove(n) {
            crate::optim::mask_bits(n, param, &mk)
                .map_err(|e| Error::Invalid(format!("masks {}: {e}", p.display())))?;
            v.push((i, mk));
        }
    }
    if let Some(n) = t.keys().min() {
        return Err(Error::Invalid(format!(
            "masks {}: `{n}` is not a trainable parameter",
            p.display()
        )));
    }
    Ok(v)
}

/// Per task, how many forget items (question and answer) the retain set also holds, when the
/// method trains on the retain set (else none are counted). A forget set wholly inside the
/// retain set (`retain` given the forget file, say) is refused: the forget and retain terms on
/// the same items pull against each other, so the run trains for nothing. A partial overlap
/// (a whole task of a continual run included) is said in the notes.
fn shared_with_retain(
    cfg: &RunConfig,
    tasks: &[Vec<QaItem>],
    retain: &[QaItem],
    trains_on_retain: bool,
) -> Result<Vec<usize>> {
    if !trains_on_retain {
        return Ok(vec![0; tasks.len()]);
    }
    let keys: std::collections::HashSet<(&str, &str)> = retain
        .iter()
        .map(|i| (i.question.as_str(), i.answer.as_str()))
        .collect();
    let shared: Vec<usize> = tasks
        .iter()
        .map(|items| {
            items
                .iter()
                .filter(|i| keys.contains(&(i.question.as_str(), i.answer.as_str())))
                .count()
        })
        .collect();
    let total: usize = tasks.iter().map(Vec::len).sum();
    if total > 0 && shared.iter().sum::<usize>() == total {
        return Err(Error::Invalid(format!(
            "every item of the forget set {} is also in the retain set {}: the forget and \
             retain terms on the same items pull against each other; give a retain set \
             without them",
            cfg.forget
                .list()
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            cfg.retain
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        )));
    }
    Ok(shared)
}

/// The forget task(s) as lists of items.
fn read_tasks(cfg: &RunConfig) -> Result<Vec<Vec<QaItem>>> {
    let mut tasks = cfg
        .forget
        .list()
        .iter()
        .map(|p| read_items(p))
        .collect::<Result<Vec<_>>>()?;
    if let Some(key) = &cfg.forget_task_key {
        let Paths::One(p) = &cfg.forget else {
            return Err(Error::Invalid(
                "forget_task_key splits a single forget file; give one file".into(),
            ));
        };
        let all = tasks.pop().unwrap();
        tasks = split_by_key(p, key, all)?;
    }
    if cfg.forget_tasks > 1 {
        if tasks.len() != 1 {
            return Err(Error::Invalid(
                "forget_tasks splits a single forget file; give one file".into(),
            ));
        }
        let all = tasks.pop().unwrap();
        let n = cfg.forget_tasks.min(all.len());
        let per = all.len().div_ceil(n);
        tasks = all.chunks(per).map(|c| c.to_vec()).collect();
    }
    Ok(tasks)
}

/// The items of `path` grouped into tasks by the row field `key` (numbers or strings): in
/// numeric order when every value is a number, else in order of first appearance.
fn split_by_key(path: &Path, key: &str, items: Vec<QaItem>) -> Result<Vec<Vec<QaItem>>> {
    let rows = crate::data::benchmark::rows_beside_items(path, items.len(), "forget_task_key")?;
    let mut ids = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let id = match r.get(key) {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => {
                return Err(Error::Data {
                    path: path.to_path_buf(),
                    line: 0,
                    msg: format!("row {i} has no `{key}` (a number or a non-empty string)"),
                })
            }
        };
        ids.push(id);
    }
    let mut order: Vec<String> = vec![];
    for id in &ids {
        if !order.contains(id) {
            order.push(id.clone());
        }
    }
    let nums: Option<Vec<f64>> = order.iter().map(|s| s.parse::<f64>().ok()).collect();
    if let Some(n) = nums {
        let mut pairs: Vec<(f64, String)> = n.into_iter().zip(order).collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        order = pairs.into_iter().map(|p| p.1).collect();
    }
    let mut tasks: Vec<Vec<QaItem>> = vec![vec![]; order.len()];
    for (it, id) in items.into_iter().zip(&ids) {
        tasks[order.iter().position(|o| o == id).unwrap()].push(it);
    }
    Ok(tasks)
}

/// Encodes a task's items and what its terms need: refusals chosen per item by a seeded draw,
/// retain partners likewise; reference scores are filled later.
struct Encoder<'e> {
    f: &'e Formatter<'e>,
    seed: u64,
    needs: Needs,
    refusals: &'e [String],
    retain_items: &'e [QaItem],
    /// The retain items this task's partners are drawn from (indices into `retain_items`).
    pool: &'e [usize],
}

impl Encoder<'_> {
    fn refusal(&self, stream: &str, i: u64) -> &str {
        &self.refusals[Rng::for_item(self.seed, stream, i).below(self.refusals.len())]
    }

    fn task(&self, items: &[QaItem], base: u64) -> Result<Task> {
        let f = self.f;
        let forget = f.encode_items(items)?;
        let forget_refusals = if self.needs.forget_refusals {
            items
                .iter()
                .enumerate()
                .map(|(i, it)| f.encode_qa(&it.question, self.refusal("refusal", base + i as u64)))
                .collect::<Result<Vec<_>>>()?
        } else {
            vec![]
        };
        let retain_partner: Vec<usize> = if self.pool.is_empty() {
            vec![]
        } else {
            (0..items.len())
                .map(|i| {
                    self.pool
                        [Rng::for_item(self.seed, "retain", base + i as u64).below(self.pool.len())]
                })
                .collect()
        };
        let retain_refusals = if self.needs.retain_refusals {
            retain_partner
                .iter()
                .enumerate()
                .map(|(i, &r)| {
                    f.encode_qa(
                        &self.retain_items[r].question,
                        self.refusal("retain_refusal", base + i as u64),
                    )
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            vec![]
        };
        Ok(Task {
            forget,
            forget_refusals,
            retain_partner,
            retain_pool: self.pool.len(),
            retain_refusals,
            ref_answers: vec![],
            ref_refusals: vec![],
        })
    }
}

/// γ · forget term + α · retain term of one task.
struct Loss<'r, 'a> {
    runner: &'r Runner<'a>,
    task: usize,
}

impl Objective for Loss<'_, '_> {
    fn n_items(&self) -> usize {
        self.runner.tasks[self.task].forget.len()
    }

    fn loss(&mut self, idx: &[usize], scale: f64, _ctx: &StepCtx) -> Result<MicroLoss> {
        let m = &self.runner.cfg.method;
        let c = self.runner.ctx(self.task, idx);
        let fl = m.forget.loss(&c)?;
        let rl = m.retain.loss(&c)?;
        let total = (((fl.clone() * m.gamma)? + (rl.clone() * m.alpha)?)? * scale)?;
        Ok(MicroLoss {
            value: total.to_scalar::<f32>()? as f64,
            loss: total,
            parts: vec![
                ("forget_loss", fl.to_scalar::<f32>()? as f64 * scale),
                ("retain_loss", rl.to_scalar::<f32>()? as f64 * scale),
            ],
            tokens: 0,
        })
    }

    /// GNB curvature on the step's forget inputs and their retain partners.
    fn curvature_batches(&self, group: &[usize]) -> Result<Vec<Batch>> {
        let r = self.runner;
        let mut batches = vec![];
        for mb in group.chunks(r.cfg.train.batch_size) {
            let c = r.ctx(self.task, mb);
            batches.push(c.forget()?);
            if !r.retain_qa.is_empty() {
                batches.push(c.retain()?);
            }
        }
        Ok(batches)
    }
}

/// `eval_every` evaluations and early stopping; the task index for checkpoints.
struct EvalHooks<'r, 'a> {
    runner: &'r Runner<'a>,
    task: usize,
    eval_path: &'r Path,
}

impl Hooks for EvalHooks<'_, '_> {
    fn after_step(
        &mut self,
        ctx: &StepCtx,
        _log: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Flow> {
        let cfg = self.runner.cfg;
        let step = ctx.step + 1;
        if cfg.eval_every == 0 || !step.is_multiple_of(cfg.eval_every) {
            return Ok(Flow::Continue);
        }
        let ev = self.runner.evaluate(self.task, step, None)?;
        append_line(self.eval_path, &ev.to_string())?;
        match (cfg.stop_forget_prob, ev["forget_prob"].as_f64()) {
            (Some(th), Some(fp)) if fp < th => Ok(Flow::Stop),
            _ => Ok(Flow::Continue),
        }
    }

    fn state(&self) -> serde_json::Value {
        let draws = self.runner.md.model.lora().map(|l| l.draws());
        serde_json::json!({ "task": self.task, "lora_dropout_draws": draws })
    }
}

/// Append one line to a log file (flushed).
fn append_line(path: &Path, line: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    writeln!(f, "{line}")
        .and_then(|_| f.flush())
        .map_err(|e| Error::io(path, e))
}
