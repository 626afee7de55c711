//! The unlearning run (`unlearn run`): a model, a forget set (or a sequence of forget tasks), a
//! retain set and a refusal pool; one method = gamma · forget term + alpha · retain term;
//! AdamW on the selected parameters; per-step losses as JSONL; the model saved after each task.
pub mod attribution;
pub mod edit;
pub mod objective;
pub mod selfgen;

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use candle_core::Var;

use crate::data::{read_items, read_qa, Encoded, Formatter, QaItem};
use crate::error::{Error, Result};
use crate::infer::score::{nll_mean, score, sum_logprobs, Batch};
use crate::model::hf::ModelDir;
use crate::model::Llama;
use crate::ops::gather_logprobs;
use crate::optim::Optimizer;
use crate::train::checkpoint;
use crate::train::trainer::{
    Checkpoints, Flow, Hooks, MicroLoss, Objective, Spec, Start, StepCtx, Trainer,
};
use crate::train::TrainConfig;
use crate::unlearn::objective::method::{deserialize_method, ForgetTerm, MethodConfig, RetainTerm};
use crate::unlearn::objective::{ap, dpo, ga, gd, idk, kl, me, npo, rmu, simnpo, wga};
use crate::util::guard::{Input, TrainOutputs};
use crate::util::rng::Rng;

/// One path or a list of paths (one forget task each).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Paths {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RefMode {
    /// The reference is the model before any unlearning.
    #[default]
    Initial,
    /// In continual unlearning the reference is the model before the current task.
    PreviousTask,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// HF model directory to unlearn from.
    pub model: PathBuf,
    /// Forget set(s): one file, or a list of files unlearned one after another.
    pub forget: Paths,
    /// Split a single forget file into this many consecutive tasks (continual unlearning).
    #[serde(default)]
    pub forget_tasks: usize,
    /// Retain set (needed by every retain term except `none`).
    #[serde(default)]
    pub retain: Option<PathBuf>,
    /// Refusal pool, one per line (default: the built-in pool).
    #[serde(default)]
    pub refusals: Option<PathBuf>,
    /// Output model directory (written atomically at the end).
    pub out: PathBuf,
    /// Run directory (default: OUT.run).
    #[serde(default)]
    pub run_dir: Option<PathBuf>,
    /// A named method ("npo+gd") or a [method] table.
    #[serde(deserialize_with = "deserialize_method")]
    pub method: MethodConfig,
    /// Optimisation settings (lr, epochs, batch_size, max_steps, seed, prompt, max_len, …).
    #[serde(default = "default_train", deserialize_with = "deserialize_train")]
    pub train: TrainConfig,
    /// Name patterns of trainable parameters (brace sets and `*` allowed, matched as substrings),
    /// e.g. "layers.{5,6,7}.mlp.down_proj". Empty: all (RMU: down_proj of layers ℓ−2..ℓ).
    #[serde(default)]
    pub trainable: Vec<String>,
    #[serde(default, rename = "ref")]
    pub reference: RefMode,
    /// Per-element 0/1 masks (safetensors, tensors named like the parameters): masked-out
    /// elements keep value and optimiser state bit-identical.
    #[serde(default)]
    pub masks: Option<PathBuf>,
    /// Evaluate (forget/retain probability) every N steps (0 = only at the end of each task).
    #[serde(default)]
    pub eval_every: usize,
    /// Early stopping: end a task at an evaluation where the mean forget-set probability is below
    /// this value.
    #[serde(default)]
    pub stop_forget_prob: Option<f64>,
    /// The evaluation suite (an `[eval]` table, keys of `eval::EvalConfig`): run at every
    /// evaluation, its aggregates join the eval log line; the final evaluation of each task also
    /// writes TOFU_EVAL.json / TOFU_SUMMARY.json into RUN_DIR/eval (RUN_DIR/eval/task-K when
    /// there are several tasks).
    #[serde(default)]
    pub eval: Option<crate::eval::EvalConfig>,
    #[serde(default = "default_device")]
    pub device: String,
}

impl crate::config::Validate for RunConfig {
    fn check(&self, c: &mut crate::config::Check) {
        c.sub("method", &self.method);
        c.sub("train", &self.train);
        if let Some(e) = &self.eval {
            c.sub("eval", e);
        }
        if let Some(p) = self.stop_forget_prob {
            c.share("stop_forget_prob", p);
        }
        if let Paths::Many(v) = &self.forget {
            if v.is_empty() {
                c.fail("forget", "must name at least one file");
            }
        }
        for t in &self.trainable {
            c.non_empty("trainable", t);
        }
    }
}

fn default_train() -> TrainConfig {
    TrainConfig {
        lr: 1e-5,
        warmup_ratio: 0.2,
        ..TrainConfig::default()
    }
}

/// `[train]` keys given by the user, over the unlearning defaults (not the fine-tuning ones).
fn deserialize_train<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<TrainConfig, D::Error> {
    use crate::config::merge;
    use serde::de::Error as _;
    let over = toml::Value::deserialize(d)?;
    let mut base = toml::Value::try_from(default_train()).map_err(D::Error::custom)?;
    merge(&mut base, over);
    base.try_into()
        .map_err(|e: toml::de::Error| D::Error::custom(e.message().to_string()))
}

fn default_device() -> String {
    "cpu".into()
}

/// Expand `{a,b}` sets: "l.{1,2}.x" -> ["l.1.x", "l.2.x"].
pub fn expand_braces(p: &str) -> Vec<String> {
    if let (Some(a), Some(b)) = (p.find('{'), p.find('}')) {
        if a < b {
            let (pre, rest) = (&p[..a], &p[b + 1..]);
            return p[a + 1..b]
                .split(',')
                .flat_map(|alt| expand_braces(&format!("{pre}{}{rest}", alt.trim())))
                .collect();
        }
    }
    vec![p.to_string()]
}

fn glob_contains(pattern: &str, name: &str) -> bool {
    // '*' matches any run of characters; the pattern may match anywhere in the name.
    fn rec(p: &[u8], s: &[u8]) -> bool {
        match p.first() {
            None => true,
            Some(b'*') => (0..=s.len()).any(|k| rec(&p[1..], &s[k..])),
            Some(&c) => s.first() == Some(&c) && rec(&p[1..], &s[1..]),
        }
    }
    (0..=name.len()).any(|k| rec(pattern.as_bytes(), &name.as_bytes()[k..]))
}

/// Names of the parameters selected by `patterns` (all when empty). Errors when a pattern
/// selects nothing.
pub fn select_params(names: &[String], patterns: &[String]) -> Result<Vec<bool>> {
    if patterns.is_empty() {
        return Ok(vec![true; names.len()]);
    }
    let mut sel = vec![false; names.len()];
    for p in patterns {
        let mut hit = false;
        for e in expand_braces(p) {
            for (i, n) in names.iter().enumerate() {
                if glob_contains(&e, n) {
                    sel[i] = true;
                    hit = true;
                }
            }
        }
        if !hit {
            return Err(Error::Invalid(format!(
                "trainable pattern `{p}` matches no parameter"
            )));
        }
    }
    Ok(sel)
}

/// Everything the loss needs for one task, encoded once.
struct TaskData {
    forget_qa: Vec<Encoded>,
    forget_idk: Vec<Encoded>,
    /// Retain partner (index into retain_qa) and refusal-on-retain of each forget item.
    retain_partner: Vec<usize>,
    retain_idk: Vec<Encoded>,
    /// Reference summed log-probs of each forget answer / refusal (NPO, DPO); filled when the
    /// task's reference is known ([`Runner::score_refs`]).
    ref_ans: Vec<f32>,
    ref_idk: Vec<f32>,
}

pub struct RunReport {
    pub tasks: usize,
    pub steps: usize,
    pub trainable_params: usize,
    /// Elements that differ from the input model after the run.
    pub changed_params: usize,
    pub final_eval: serde_json::Value,
}

/// Number of elements that differ between two models of the same configuration.
pub fn count_changed(a: &Llama, b: &Llama) -> Result<usize> {
    let mut n = 0;
    for ((_, x), (_, y)) in a.params().iter().zip(b.params()) {
        let ne = x
            .as_tensor()
            .ne(y.as_tensor())?
            .to_dtype(candle_core::DType::F32)?
            .sum_all()?;
        n += ne.to_scalar::<f32>()? as usize;
    }
    Ok(n)
}

fn batch_of(items: &[Encoded], idx: &[usize], pad: u32, model: &Llama) -> Result<Batch> {
    let refs: Vec<&Encoded> = idx.iter().map(|&i| &items[i]).collect();
    Batch::new(&refs, pad, model.device())
}

fn sums(model: &Llama, items: &[Encoded], bs: usize) -> Result<Vec<f32>> {
    Ok(score(model, items, bs)?
        .into_iter()
        .map(|v| v.iter().sum())
        .collect())
}

/// Mean P(a|q) = mean exp(−nll_mean) over items.
pub fn mean_prob(model: &Llama, items: &[Encoded], bs: usize) -> Result<f64> {
    let s = score(model, items, bs)?;
    Ok(s.iter()
        .map(|v| (v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64).exp())
        .sum::<f64>()
        / s.len().max(1) as f64)
}

/// Options of a run that are not part of the experiment.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Progress bars and notes on stderr.
    pub progress: bool,
    /// Replace an existing output model and start the run directory afresh.
    pub overwrite: bool,
    /// Continue the run in the run directory from its newest checkpoint.
    pub resume: bool,
}

/// The RMU layer ℓ: the one given, which must exist, or 7 clamped to the last layer.
pub fn rmu_layer(forget: &ForgetTerm, n_layers: usize) -> Result<usize> {
    match forget {
        ForgetTerm::Rmu { layer: Some(l), .. } if *l >= n_layers => Err(Error::Invalid(format!(
            "method.forget.layer = {l}: the model has {n_layers} layers (0..{})",
            n_layers - 1
        ))),
        ForgetTerm::Rmu { layer: Some(l), .. } => Ok(*l),
        _ => Ok(7.min(n_layers - 1)),
    }
}

/// An unlearning run whose inputs are read and checked ([`Runner::new`], which writes nothing),
/// ready to run ([`Runner::run`]).
pub struct Runner<'a> {
    pub cfg: &'a RunConfig,
    pub md: &'a ModelDir,
    pub run_dir: PathBuf,
    pub progress: bool,
    tasks: Vec<Vec<QaItem>>,
    retain_qa: Vec<Encoded>,
    data: Vec<TaskData>,
    trainable: Vec<(String, Var)>,
    /// User-given masks (`masks`), by index into `trainable`.
    masks: Vec<(usize, Tensor)>,
    rmu_layer: usize,
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
        let t = &cfg.train;
        let rmu_layer = rmu_layer(&m.forget, model.cfg.num_hidden_layers)?;
        let f = Formatter::new(&md.tok, t.prompt, t.max_len)?;
        let refusals = crate::data::refusals::load(cfg.refusals.as_deref())?;
        let tasks = read_tasks(cfg)?;
        let retain_items = match (&cfg.retain, m.needs_retain()) {
            (Some(p), _) => read_items(p)?,
            (None, true) => {
                return Err(Error::Invalid(format!(
                    "the method's retain term ({}) needs a `retain` set",
                    format!("{:?}", m.retain).to_lowercase()
                )))
            }
            (None, false) => vec![],
        };
        let retain_qa = retain_items
            .iter()
            .map(|it| f.encode_qa(&it.question, &it.answer))
            .collect::<Result<Vec<_>>>()?;
        let mut base = 0u64; // item numbering runs across tasks so per-item seeds do not repeat
        let mut data = vec![];
        for task in &tasks {
            data.push(encode_task(
                cfg,
                task,
                base,
                &f,
                &refusals,
                &retain_qa,
                &retain_items,
            )?);
            base += task.len() as u64;
        }
        // Trainable parameters.
        let names: Vec<String> = model.params().iter().map(|(n, _)| n.clone()).collect();
        let mut patterns = cfg.trainable.clone();
        if patterns.is_empty() && m.simu.is_some() {
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
            if let ForgetTerm::Rmu { .. } = m.forget {
                patterns = (rmu_layer.saturating_sub(2)..=rmu_layer)
                    .map(|k| format!("layers.{k}.mlp.down_proj"))
                    .collect();
            }
        }
        let sel = select_params(&names, &patterns)?;
        let trainable: Vec<(String, Var)> = model
            .params()
            .iter()
            .zip(&sel)
            .filter(|(_, &s)| s)
            .map(|(p, _)| p.clone())
            .collect();
        if m.simu.is_some() && cfg.masks.is_some() {
            return Err(Error::Invalid(
                "method `simu` computes its own masks; drop `masks`".into(),
            ));
        }
        if let Some(sel) = &m.simu {
            if sel.dual && retain_qa.is_empty() {
                return Err(Error::Invalid("simu dual mode needs a `retain` set".into()));
            }
        }
        let masks = match &cfg.masks {
            None => vec![],
            Some(p) => {
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
                v
            }
        };
        Ok(Runner {
            cfg,
            md,
            run_dir,
            progress,
            tasks,
            retain_qa,
            data,
            trainable,
            masks,
            rmu_layer,
        })
    }

    /// Trainable elements.
    pub fn n_trainable(&self) -> usize {
        self.trainable.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Unlearn every task in turn (from the checkpoint `resume` when given), evaluating at the
    /// end of each; the caller saves the model.
    pub fn run(&mut self, resume: Option<&Path>) -> Result<RunReport> {
        let cfg: &'a RunConfig = self.cfg;
        let m = &cfg.method;
        let md: &'a ModelDir = self.md;
        let model = &md.model;
        let t = &cfg.train;
        let n_trainable = self.n_trainable();
        let n_tasks = self.tasks.len();
        let log_path = self.run_dir.join("train_log.jsonl");
        let eval_path = self.run_dir.join("eval_log.jsonl");
        let state = resume.map(checkpoint::read_state).transpose()?;
        let resume_task = state
            .as_ref()
            .map(|s| s.hooks["task"].as_u64().unwrap_or(0) as usize)
            .unwrap_or(0);
        match &state {
            None => {
                crate::util::fs::write_synced(&log_path, b"")?;
                crate::util::fs::write_synced(&eval_path, b"")?;
            }
            Some(s) => {
                checkpoint::truncate_logs(&self.run_dir, s)?;
                self.note(&format!(
                    "resuming task {} at step {} from {}",
                    resume_task + 1,
                    s.step,
                    resume.unwrap().display()
                ));
            }
        }
        self.note(&format!(
            "{} trainable parameters of {} ({} tensors); reference: {}",
            n_trainable,
            model.num_params(),
            self.trainable.len(),
            if m.needs_resident_ref() {
                "resident frozen copy (full distributions / hidden states needed)"
            } else if m.needs_ref_scores() {
                "summed log-probs precomputed once per task (no second model in memory)"
            } else {
                "not needed"
            }
        ));
        if let ForgetTerm::Rmu { layer: None, .. } = m.forget {
            self.note(&format!(
                "rmu: layer {} (default 7, clamped to the model)",
                self.rmu_layer
            ));
        }
        let masks = match &m.simu {
            None => self.masks.clone(),
            // SIMU attributes on the input model (before any resumed weights are loaded)
            Some(sel) => self.simu_masks(sel)?,
        };
        let mut resident: Option<Llama> = None;
        if cfg.reference == RefMode::Initial {
            // every task's reference is the untouched model: keep a copy only where full
            // distributions or hidden states are needed, and score all tasks now
            if m.needs_resident_ref() {
                resident = Some(model.deep_clone()?);
            }
            for ti in resume_task..n_tasks {
                self.score_refs(ti)?;
            }
        }
        // A resumed later task starts from the saved model of the task before it.
        if resume_task > 0 {
            let prev = self.run_dir.join(format!("task-{resume_task}"));
            checkpoint::load_params(&prev, model.params())?;
        }
        if cfg.reference == RefMode::PreviousTask {
            if m.needs_resident_ref() {
                resident = Some(model.deep_clone()?);
            }
            self.score_refs(resume_task)?;
        }
        let control = match m.forget {
            ForgetTerm::Rmu { steering_coef, .. } => Some(rmu::control_vector(
                model.cfg.hidden_size,
                steering_coef,
                t.seed,
                model.device(),
            )?),
            _ => None,
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
        let mut global = 0;
        let mut final_eval = serde_json::Value::Null;
        for ti in resume_task..n_tasks {
            let resuming = ti == resume_task && state.is_some();
            if ti > resume_task && cfg.reference == RefMode::PreviousTask {
                if resident.is_some() {
                    resident = Some(model.deep_clone()?);
                }
                self.score_refs(ti)?;
            }
            let mut opt = Optimizer::new(
                m.optimizer.unwrap_or(t.optimizer),
                self.trainable.clone(),
                &t.adamw,
                &t.sophia,
            )?;
            for (i, mk) in &masks {
                opt.set_mask(*i, mk)?;
            }
            let n_items = self.data[ti].forget_qa.len();
            let spec = Spec::new(t, n_items, t.seed ^ (ti as u64) << 32);
            let mut tr = Trainer::new(model, self.trainable.clone(), opt, spec);
            let start = match (&state, resuming) {
                (Some(s), true) => {
                    checkpoint::load_params(resume.unwrap(), model.params())?;
                    checkpoint::load_optimizer(resume.unwrap(), &mut tr.opt, s)?;
                    tr.last_checkpoint = resume.map(Path::to_path_buf);
                    Start::from_state(s)
                }
                _ => Start::fresh(global),
            };
            tr.log_path = Some(log_path.clone());
            tr.context.insert("task".into(), ti.into());
            tr.progress = self
                .progress
                .then(|| format!("unlearning task {}/{n_tasks}", ti + 1));
            tr.checkpoints = Some(Checkpoints {
                dir: self.run_dir.clone(),
                every: t.save_every,
                keep: t.keep_checkpoints,
                write_model: &write_model,
                logs: vec![log_path.clone(), eval_path.clone()],
            });
            let mut obj = Loss {
                runner: self,
                task: ti,
                resident: resident.as_ref(),
                control: control.as_ref(),
            };
            let mut hooks = EvalHooks {
                runner: self,
                task: ti,
                eval_path: &eval_path,
            };
            let rep = tr.run(&mut obj, &mut hooks, start)?;
            if rep.stopped {
                let step = rep.steps;
                self.note(&format!(
                    "task {}: early stop at step {step} (forget_prob below {})",
                    ti + 1,
                    cfg.stop_forget_prob.unwrap_or(0.0)
                ));
            }
            global = rep.global_steps;
            let eval_dir = if n_tasks > 1 {
                self.run_dir.join("eval").join(format!("task-{}", ti + 1))
            } else {
                self.run_dir.join("eval")
            };
            final_eval = self.evaluate(ti, rep.steps, Some(&eval_dir))?;
            append_line(&eval_path, &final_eval.to_string())?;
            if n_tasks > 1 {
                md.save(&self.run_dir.join(format!("task-{}", ti + 1)))?;
            }
        }
        Ok(RunReport {
            tasks: n_tasks,
            steps: global,
            trainable_params: n_trainable,
            changed_params: 0,
            final_eval,
        })
    }

    /// Reference summed log-probs of task `ti` from the model as it is now (NPO, DPO).
    fn score_refs(&mut self, ti: usize) -> Result<()> {
        let m = &self.cfg.method;
        if !m.needs_ref_scores() {
            return Ok(());
        }
        let model = &self.md.model;
        let bs = self.cfg.train.batch_size;
        let d = &mut self.data[ti];
        d.ref_ans = sums(model, &d.forget_qa, bs)?;
        if matches!(m.forget, ForgetTerm::Dpo { .. }) {
            d.ref_idk = sums(model, &d.forget_idk, bs)?;
        }
        Ok(())
    }

    /// SIMU: attribute MLP neurons on every forget item (and, in dual mode, the retain set), write
    /// `attribution.json` into the run directory, and return the down_proj column masks by index
    /// into the trainable parameters.
    fn simu_masks(
        &self,
        sel: &crate::unlearn::objective::method::SimuSelect,
    ) -> Result<Vec<(usize, Tensor)>> {
        use crate::unlearn::attribution::{down_proj_masks, select, AttributionConfig};
        let model = &self.md.model;
        let items: Vec<Encoded> = self
            .data
            .iter()
            .flat_map(|d| d.forget_qa.iter().cloned())
            .collect();
        let acfg = AttributionConfig {
            steps: sel.steps,
            threshold: sel.threshold,
            absolute: sel.absolute,
            batch_size: self.cfg.train.batch_size,
        };
        let retain = if sel.dual {
            Some(&self.retain_qa[..])
        } else {
            None
        };
        let chosen = select(
            model,
            &items,
            retain,
            self.md.tok.pad_id,
            &acfg,
            self.progress,
        )?;
        self.note(&format!(
            "simu: {} critical neurons of {} (threshold {}, m = {})",
            chosen.n_critical(),
            chosen.scores.len() * model.cfg.intermediate_size,
            sel.threshold,
            sel.steps
        ));
        let layers = chosen.layers_json();
        let p = self.run_dir.join("attribution.json");
        crate::model::hf::atomic_write(
            &p,
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

    fn evaluate(
        &self,
        task: usize,
        step: usize,
        eval_out: Option<&Path>,
    ) -> Result<serde_json::Value> {
        let model = &self.md.model;
        let data = &self.data[task];
        let bs = self.cfg.train.batch_size;
        let forget_prob = mean_prob(model, &data.forget_qa, bs)?;
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
        if let Some(ec) = &self.cfg.eval {
            let out = crate::eval::Evaluator::new(model, &self.md.tok, ec, false)?
                .run(eval_out, None, true)?;
            line["eval"] = serde_json::Value::Object(out.summary);
        }
        Ok(line)
    }

    /// (forget term, retain term) of task `ti` for the forget items `idx` (scalars).
    fn loss(
        &self,
        ti: usize,
        idx: &[usize],
        resident: Option<&Llama>,
        control: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let d = &self.data[ti];
        let retain_qa = &self.retain_qa;
        let model = &self.md.model;
        let pad = self.md.tok.pad_id;
        let dev = model.device();
        let pick = |v: &[f32]| {
            Tensor::from_vec(
                idx.iter().map(|&i| v[i]).collect::<Vec<f32>>(),
                idx.len(),
                dev,
            )
        };
        let m = &self.cfg.method;
        let forget = match &m.forget {
            ForgetTerm::Ga => {
                let b = batch_of(&d.forget_qa, idx, pad, model)?;
                ga::ga(&nll_mean(&model.forward(&b.input)?, &b)?)?
            }
            ForgetTerm::Npo { beta } => {
                let b = batch_of(&d.forget_qa, idx, pad, model)?;
                let nll = sum_logprobs(&model.forward(&b.input)?, &b)?.neg()?;
                npo::npo(&nll, &pick(&d.ref_ans)?.neg()?, *beta)?
            }
            ForgetTerm::Simnpo { beta, delta } => {
                let b = batch_of(&d.forget_qa, idx, pad, model)?;
                simnpo::simnpo(&nll_mean(&model.forward(&b.input)?, &b)?, *beta, *delta)?
            }
            ForgetTerm::Idk => {
                let b = batch_of(&d.forget_idk, idx, pad, model)?;
                idk::idk(&nll_mean(&model.forward(&b.input)?, &b)?)?
            }
            ForgetTerm::Dpo { beta } => {
                let bw = batch_of(&d.forget_idk, idx, pad, model)?;
                let bl = batch_of(&d.forget_qa, idx, pad, model)?;
                let lw = sum_logprobs(&model.forward(&bw.input)?, &bw)?;
                let ll = sum_logprobs(&model.forward(&bl.input)?, &bl)?;
                dpo::dpo(&lw, &pick(&d.ref_idk)?, &ll, &pick(&d.ref_ans)?, *beta)?
            }
            ForgetTerm::Me {
                divergence,
                positions,
            } => {
                let b = batch_of(&d.forget_qa, idx, pad, model)?;
                let mask = match positions {
                    me::Positions::Answer => &b.mask,
                    me::Positions::PromptAndAnswer => &b.valid,
                };
                me::me(&model.forward(&b.input)?, mask, *divergence)?
            }
            ForgetTerm::Wga { beta } => {
                let b = batch_of(&d.forget_qa, idx, pad, model)?;
                let lp = gather_logprobs(&model.forward(&b.input)?, &b.targets)?;
                wga::wga(&lp, &b.mask, *beta)?
            }
            ForgetTerm::Rmu { .. } => {
                let b = batch_of(&d.forget_qa, idx, pad, model)?;
                let h = model.hidden_at(&b.input, self.rmu_layer)?;
                let c = control.ok_or_else(|| Error::Invalid("rmu: no control vector".into()))?;
                rmu::rmu_forget(&h, c, &b.mask)?
            }
            ForgetTerm::Unierase(_) => {
                return Err(Error::Invalid(
                    "unierase is an edit, not a loss: run it with `unlearn run` alone".into(),
                ))
            }
        };
        let partners: Vec<usize> = idx
            .iter()
            .map(|&i| d.retain_partner.get(i).copied().unwrap_or(0))
            .collect();
        let zero = || Tensor::new(0f32, dev);
        let need_ref =
            || resident.ok_or_else(|| Error::Invalid("the retain term needs a reference".into()));
        let retain = match &m.retain {
            RetainTerm::None => zero()?,
            RetainTerm::Gd => {
                let b = batch_of(retain_qa, &partners, pad, model)?;
                gd::gd(&nll_mean(&model.forward(&b.input)?, &b)?)?
            }
            RetainTerm::Kl => {
                let b = batch_of(retain_qa, &partners, pad, model)?;
                let r = need_ref()?.forward(&b.input)?.detach();
                kl::kl(&model.forward(&b.input)?, &r, &b.mask)?
            }
            RetainTerm::Ap { beta } => {
                let bi = batch_of(&d.retain_idk, idx, pad, model)?;
                let ba = batch_of(retain_qa, &partners, pad, model)?;
                let li = sum_logprobs(&model.forward(&bi.input)?, &bi)?;
                let la = sum_logprobs(&model.forward(&ba.input)?, &ba)?;
                ap::ap(&li, &la, *beta)?
            }
            RetainTerm::RmuRetain => {
                let b = batch_of(retain_qa, &partners, pad, model)?;
                let l = self.rmu_layer;
                let h_ref = need_ref()?.hidden_at(&b.input, l)?.detach();
                rmu::rmu_retain(&model.hidden_at(&b.input, l)?, &h_ref, &b.valid)?
            }
        };
        Ok((forget, retain))
    }
}

/// The forget task(s) as lists of items.
fn read_tasks(cfg: &RunConfig) -> Result<Vec<Vec<QaItem>>> {
    let mut tasks = match &cfg.forget {
        Paths::One(p) => vec![read_items(p)?],
        Paths::Many(ps) => ps
            .iter()
            .map(|p| read_items(p))
            .collect::<Result<Vec<_>>>()?,
    };
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

/// Encode one task's items (forget answers, refusals, retain partners); reference scores are
/// filled later.
fn encode_task(
    cfg: &RunConfig,
    task: &[QaItem],
    item_base: u64,
    f: &Formatter,
    refusals: &[String],
    retain_qa: &[Encoded],
    retain_items: &[QaItem],
) -> Result<TaskData> {
    let m = &cfg.method;
    let seed = cfg.train.seed;
    let forget_qa = task
        .iter()
        .map(|it| f.encode_qa(&it.question, &it.answer))
        .collect::<Result<Vec<_>>>()?;
    let refusal =
        |stream: &str, i: u64| &refusals[Rng::for_item(seed, stream, i).below(refusals.len())];
    let forget_idk = if m.needs_refusals() {
        task.iter()
            .enumerate()
            .map(|(i, it)| f.encode_qa(&it.question, refusal("refusal", item_base + i as u64)))
            .collect::<Result<Vec<_>>>()?
    } else {
        vec![]
    };
    let retain_partner: Vec<usize> = if retain_qa.is_empty() {
        vec![]
    } else {
        (0..task.len())
            .map(|i| Rng::for_item(seed, "retain", item_base + i as u64).below(retain_qa.len()))
            .collect()
    };
    let retain_idk = if matches!(m.retain, RetainTerm::Ap { .. }) {
        retain_partner
            .iter()
            .enumerate()
            .map(|(i, &r)| {
                f.encode_qa(
                    &retain_items[r].question,
                    refusal("retain_refusal", item_base + i as u64),
                )
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        vec![]
    };
    Ok(TaskData {
        forget_qa,
        forget_idk,
        retain_partner,
        retain_idk,
        ref_ans: vec![],
        ref_idk: vec![],
    })
}

/// gamma · forget term + alpha · retain term of one task.
struct Loss<'r, 'a> {
    runner: &'r Runner<'a>,
    task: usize,
    resident: Option<&'r Llama>,
    control: Option<&'r Tensor>,
}

impl Objective for Loss<'_, '_> {
    fn n_items(&self) -> usize {
        self.runner.data[self.task].forget_qa.len()
    }

    fn loss(&mut self, idx: &[usize], scale: f64, _ctx: &StepCtx) -> Result<MicroLoss> {
        let m = &self.runner.cfg.method;
        let (fl, rl) = self
            .runner
            .loss(self.task, idx, self.resident, self.control)?;
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
        let d = &r.data[self.task];
        let model = &r.md.model;
        let pad = r.md.tok.pad_id;
        let mut batches = vec![];
        for mb in group.chunks(r.cfg.train.batch_size) {
            batches.push(batch_of(&d.forget_qa, mb, pad, model)?);
            if !r.retain_qa.is_empty() {
                let partners: Vec<usize> = mb.iter().map(|&i| d.retain_partner[i]).collect();
                batches.push(batch_of(&r.retain_qa, &partners, pad, model)?);
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
        serde_json::json!({ "task": self.task })
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

/// Elements that differ between `orig` and `new` (same names; a grown embedding or head counts
/// its new rows as changed).
pub fn count_changed_grown(orig: &Llama, new: &Llama) -> Result<usize> {
    let mut n = 0;
    for (name, v) in new.params() {
        let b = v.as_tensor();
        let Some(a) = orig.param(name) else {
            n += b.elem_count();
            continue;
        };
        let a = a.as_tensor();
        let (a, b) = if a.dims() != b.dims() {
            let rows = a.dim(0)?;
            n += b.elem_count() - a.elem_count();
            (a.clone(), b.narrow(0, 0, rows)?)
        } else {
            (a.clone(), b.clone())
        };
        n += a
            .ne(&b)?
            .to_dtype(candle_core::DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()? as usize;
    }
    Ok(n)
}

/// UniErase's inputs, read and checked (the forget and retain items must encode).
struct UniEraseInputs {
    forget: Vec<QaItem>,
    retain: Vec<QaItem>,
    refusals: Vec<String>,
}

fn unierase_inputs(cfg: &RunConfig, md: &ModelDir) -> Result<UniEraseInputs> {
    let forget: Vec<QaItem> = match &cfg.forget {
        Paths::One(p) => read_qa(p)?,
        Paths::Many(ps) => ps
            .iter()
            .map(|p| read_qa(p))
            .collect::<Result<Vec<_>>>()?
            .concat(),
    };
    let retain = match &cfg.retain {
        Some(p) => read_qa(p)?,
        None => vec![],
    };
    let f = Formatter::new(&md.tok, cfg.train.prompt, cfg.train.max_len)?;
    for it in forget.iter().chain(&retain) {
        f.encode_qa(&it.question, &it.answer)?;
    }
    Ok(UniEraseInputs {
        forget,
        retain,
        refusals: crate::data::refusals::load(cfg.refusals.as_deref())?,
    })
}

/// `method = "unierase"`: the unlearning token and the closed-form edit (`edit::unierase`),
/// all forget tasks' items in one forget list. The edited model's files go into `out_dir`.
fn run_unierase(
    cfg: &RunConfig,
    uc: &crate::unlearn::edit::unierase::UniEraseConfig,
    md: &ModelDir,
    inputs: UniEraseInputs,
    run_dir: &Path,
    out_dir: &Path,
    progress: bool,
) -> Result<RunReport> {
    let note = |s: &str| crate::util::rundir::note(run_dir, progress, s);
    let UniEraseInputs {
        forget,
        retain,
        refusals,
    } = inputs;
    let (model, tok, rep) = crate::unlearn::edit::unierase::unierase(
        &md.model,
        &md.tok,
        &cfg.model,
        &forget,
        &retain,
        &refusals,
        uc,
        cfg.train.max_len,
        cfg.train.seed,
        &note,
    )?;
    let changed = count_changed_grown(&md.model, &model)?;
    note(&format!(
        "{changed} of {} parameters changed ({:.4}%): the [UNL] embedding row(s) and the edited down_proj weights",
        model.num_params(),
        100.0 * changed as f64 / model.num_params().max(1) as f64
    ));
    // the same line as other methods' evaluations, plus the token probabilities
    let f = Formatter::new(&tok, cfg.train.prompt, cfg.train.max_len)?;
    let enc = |items: &[QaItem]| -> Result<Vec<Encoded>> {
        items
            .iter()
            .map(|it| f.encode_qa(&it.question, &it.answer))
            .collect()
    };
    let bs = cfg.train.batch_size;
    let mut line = serde_json::json!({
        "task": 0, "step": 0,
        "forget_prob": mean_prob(&model, &enc(&forget)?, bs)?,
        "retain_prob": if retain.is_empty() { serde_json::Value::Null } else { mean_prob(&model, &enc(&retain)?, bs)?.into() },
        "unl_first_prob_before": rep.p_unl_before,
        "unl_first_prob_after": rep.p_unl_after,
    });
    if let Some(ec) = &cfg.eval {
        let out = run_dir.join("eval");
        let o =
            crate::eval::Evaluator::new(&model, &tok, ec, progress)?.run(Some(&out), None, true)?;
        line["eval"] = serde_json::Value::Object(o.summary);
    }
    crate::util::fs::atomic_write(
        &run_dir.join("eval_log.jsonl"),
        format!("{line}\n").as_bytes(),
    )?;
    crate::model::hf::write_model_files(
        &model,
        &tok,
        Some(&md.config_json),
        &md.side_files,
        out_dir,
    )?;
    Ok(RunReport {
        tasks: 1,
        steps: 0,
        // the [UNL] row(s) (embedding, and an untied head) and the edited down_proj weights
        trainable_params: model.cfg.hidden_size
            * (1 + usize::from(!model.cfg.tie_word_embeddings)
                + rep.layers.len() * model.cfg.intermediate_size),
        changed_params: changed,
        final_eval: line,
    })
}

/// The files and directories a run reads, named for messages and hashed into run.json.
pub fn inputs(cfg: &RunConfig) -> Vec<Input> {
    let mut v = vec![Input::new("input model", &cfg.model)];
    match &cfg.forget {
        Paths::One(p) => v.push(Input::new("forget set", p)),
        Paths::Many(ps) => v.extend(ps.iter().map(|p| Input::new("forget set", p))),
    }
    let opt = [
        ("retain set", &cfg.retain),
        ("refusal pool", &cfg.refusals),
        ("masks", &cfg.masks),
    ];
    for (role, p) in opt {
        if let Some(p) = p {
            v.push(Input::new(role, p));
        }
    }
    if let ForgetTerm::Unierase(u) = &cfg.method.forget {
        if let Some(c) = &u.corpus {
            v.push(Input::new("unierase corpus", c));
        }
    }
    if let Some(e) = &cfg.eval {
        v.extend(e.inputs());
    }
    v
}

/// Validate and run: every input is read and checked and both outputs are claimed (locked,
/// apart from the inputs, the model's temporary directory created) before run.json is written
/// and the first step taken; the model is published at the end (atomically).
pub fn run(cfg: &RunConfig, opts: &RunOptions) -> Result<RunReport> {
    let progress = opts.progress;
    let run_dir = cfg
        .run_dir
        .clone()
        .unwrap_or_else(|| crate::util::rundir::default_for(&cfg.out));
    let ins = inputs(cfg);
    let outs = TrainOutputs::claim(&cfg.out, &run_dir, &ins, opts.overwrite, opts.resume)?;
    let dev = crate::util::runtime::device(&cfg.device)?;
    let md = ModelDir::load(&cfg.model, &dev)?;
    if let ForgetTerm::Unierase(uc) = &cfg.method.forget {
        if opts.resume {
            return Err(Error::Invalid(
                "--resume: a unierase run has no checkpoints (its token training takes seconds \
                 to minutes); start it afresh with --overwrite"
                    .into(),
            ));
        }
        let inputs = unierase_inputs(cfg, &md)?;
        outs.run.prepare(outs.mode)?;
        crate::util::rundir::write_run_info(&run_dir, "run", cfg.train.seed, cfg, &ins)?;
        let rep = run_unierase(cfg, uc, &md, inputs, &run_dir, outs.model.tmp(), progress)?;
        outs.model.commit()?;
        return Ok(rep);
    }
    let mut runner = Runner::new(cfg, &md, run_dir.clone(), progress)?;
    let resume_from = if opts.resume {
        Some(crate::util::rundir::resume_checkpoint(
            &run_dir, "run", cfg, &ins,
        )?)
    } else {
        None
    };
    outs.run.prepare(outs.mode)?;
    if resume_from.is_none() {
        crate::util::rundir::write_run_info(&run_dir, "run", cfg.train.seed, cfg, &ins)?;
    }
    let mut rep = runner.run(resume_from.as_deref())?;
    // Compare with the input model as it is on disk (loaded only now, so it is not resident
    // during training).
    let original = ModelDir::load(&cfg.model, &dev)?;
    rep.changed_params = count_changed(&original.model, &md.model)?;
    drop(original);
    runner.note(&format!(
        "{} of {} parameters changed ({:.4}%); {} were trainable",
        rep.changed_params,
        md.model.num_params(),
        100.0 * rep.changed_params as f64 / md.model.num_params().max(1) as f64,
        rep.trainable_params
    ));
    crate::model::hf::write_model_files(
        &md.model,
        &md.tok,
        Some(&md.config_json),
        &md.side_files,
        outs.model.tmp(),
    )?;
    outs.model.commit()?;
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn braces_and_globs_select_parameters() {
        assert_eq!(
            expand_braces("layers.{5,6}.mlp.{up,down}_proj"),
            vec![
                "layers.5.mlp.up_proj",
                "layers.5.mlp.down_proj",
                "layers.6.mlp.up_proj",
                "layers.6.mlp.down_proj"
            ]
        );
        let names: Vec<String> = [
            "model.layers.5.mlp.down_proj.weight",
            "model.layers.15.mlp.down_proj.weight",
            "model.layers.5.self_attn.q_proj.weight",
            "lm_head.weight",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            select_params(&names, &["layers.5.mlp.down_proj".into()]).unwrap(),
            vec![true, false, false, false]
        );
        assert_eq!(
            select_params(&names, &["layers.*.mlp".into()]).unwrap(),
            vec![true, true, false, false]
        );
        assert_eq!(select_params(&names, &[]).unwrap(), vec![true; 4]);
        assert!(select_params(&names, &["layers.9.".into()]).is_err());
    }

    #[test]
    fn train_table_overrides_unlearning_defaults_only_where_given() {
        let c: RunConfig = crate::config::load(
            None,
            &[
                "model=m".into(),
                "forget=f".into(),
                "out=o".into(),
                "method=ga".into(),
                "train.lr=0.5".into(),
                "train.adamw.eps=1e-6".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            (
                c.train.lr,
                c.train.warmup_ratio,
                c.train.adamw.eps,
                c.train.adamw.beta1
            ),
            (0.5, 0.2, 1e-6, 0.9)
        );
        let e = crate::config::load::<RunConfig>(
            None,
            &[
                "model=m".into(),
                "forget=f".into(),
                "out=o".into(),
                "method=ga".into(),
                "train.lrr=1".into(),
            ],
        )
        .unwrap_err();
        assert!(e.to_string().contains("lrr"), "{e}");
    }
}
