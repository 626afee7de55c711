//! The unlearning run (`unlearn run`): a model, a forget set (or a sequence of forget tasks), a
//! retain set and a refusal pool; one method = gamma · forget term + alpha · retain term;
//! AdamW on the selected parameters; per-step losses as JSONL; the model saved after each task.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::data::{read_items, read_qa, Encoded, Formatter, QaItem};
use crate::error::{Error, Result};
use crate::hf::ModelDir;
use crate::model::Llama;
use crate::objective::method::{deserialize_method, ForgetTerm, MethodConfig, RetainTerm};
use crate::objective::{ap, dpo, ga, gd, idk, kl, me, npo, rmu, simnpo, wga};
use crate::ops::gather_logprobs;
use crate::optim::{GradAccum, Optimizer};
use crate::rng::Rng;
use crate::score::{nll_mean, score, sum_logprobs, Batch};
use crate::train::{check_finite, clipped_step, epoch_order, TrainConfig};

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
    /// Reference summed log-probs of each forget answer / refusal (NPO, DPO).
    ref_ans: Vec<f32>,
    ref_idk: Vec<f32>,
}

#[derive(Debug, Serialize)]
struct StepEntry {
    task: usize,
    step: usize,
    loss: f64,
    forget_loss: f64,
    retain_loss: f64,
    lr: f64,
    grad_norm: f64,
    elapsed_s: f64,
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

pub struct Runner<'a> {
    pub cfg: &'a RunConfig,
    pub md: &'a ModelDir,
    pub run_dir: PathBuf,
    pub progress: bool,
}

impl<'a> Runner<'a> {
    fn rmu_layer(&self) -> usize {
        match self.cfg.method.forget {
            ForgetTerm::Rmu { layer, .. } => layer.min(self.md.model.cfg.num_hidden_layers - 1),
            _ => self.md.model.cfg.num_hidden_layers - 1,
        }
    }

    /// Forget tasks as lists of items.
    fn tasks(&self) -> Result<Vec<Vec<QaItem>>> {
        let mut tasks = match &self.cfg.forget {
            Paths::One(p) => vec![read_items(p)?],
            Paths::Many(ps) => ps
                .iter()
                .map(|p| read_items(p))
                .collect::<Result<Vec<_>>>()?,
        };
        if self.cfg.forget_tasks > 1 {
            if tasks.len() != 1 {
                return Err(Error::Invalid(
                    "forget_tasks splits a single forget file; give one file".into(),
                ));
            }
            let all = tasks.pop().unwrap();
            let n = self.cfg.forget_tasks.min(all.len());
            let per = all.len().div_ceil(n);
            tasks = all.chunks(per).map(|c| c.to_vec()).collect();
        }
        Ok(tasks)
    }

    pub fn run(&self) -> Result<RunReport> {
        let cfg = self.cfg;
        let m = &cfg.method;
        let model = &self.md.model;
        let tok = &self.md.tok;
        let t = &cfg.train;
        let f = Formatter::new(tok, t.prompt, t.max_len)?;
        let refusals = crate::refusals::load(cfg.refusals.as_deref())?;
        let tasks = self.tasks()?;
        let retain_items = match (&cfg.retain, m.needs_retain()) {
            (Some(p), _) => read_items(p)?,
            (None, true) => {
                return Err(Error::Invalid(format!(
                    "method retain term {:?} needs a `retain` set",
                    m.retain
                )))
            }
            (None, false) => vec![],
        };
        let retain_qa = retain_items
            .iter()
            .map(|it| f.encode_qa(&it.question, &it.answer))
            .collect::<Result<Vec<_>>>()?;
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
                let l = self.rmu_layer();
                patterns = (l.saturating_sub(2)..=l)
                    .map(|k| format!("layers.{k}.mlp.down_proj"))
                    .collect();
            }
        }
        let sel = select_params(&names, &patterns)?;
        let trainable: Vec<_> = model
            .params()
            .iter()
            .zip(&sel)
            .filter(|(_, &s)| s)
            .map(|(p, _)| p.clone())
            .collect();
        let n_trainable: usize = trainable.iter().map(|(_, v)| v.elem_count()).sum();
        std::fs::create_dir_all(&self.run_dir).map_err(|e| Error::io(&self.run_dir, e))?;
        let log_path = self.run_dir.join("train_log.jsonl");
        let mut logf = std::fs::File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;
        let eval_path = self.run_dir.join("eval_log.jsonl");
        let mut evalf = std::fs::File::create(&eval_path).map_err(|e| Error::io(&eval_path, e))?;
        self.note(&format!(
            "{} trainable parameters of {} ({} tensors); reference: {}",
            n_trainable,
            model.num_params(),
            trainable.len(),
            if m.needs_resident_ref() {
                "resident frozen copy (full distributions / hidden states needed)"
            } else if m.needs_ref_scores() {
                "summed log-probs precomputed once per task (no second model in memory)"
            } else {
                "not needed"
            }
        ));
        let simu_masks = match &m.simu {
            None => None,
            Some(sel) => {
                if cfg.masks.is_some() {
                    return Err(Error::Invalid(
                        "method `simu` computes its own masks; drop `masks`".into(),
                    ));
                }
                Some(self.simu_masks(sel, &tasks, &f, &retain_qa)?)
            }
        };
        let masks: Vec<(usize, Tensor)> = match &cfg.masks {
            None => match simu_masks {
                None => vec![],
                Some(list) => list
                    .into_iter()
                    .filter_map(|(n, t)| {
                        trainable
                            .iter()
                            .position(|(tn, _)| *tn == n)
                            .map(|i| (i, t))
                    })
                    .collect(),
            },
            Some(p) => {
                let mut t = candle_core::safetensors::load(p, model.device())
                    .map_err(|e| Error::Invalid(format!("masks {}: {e}", p.display())))?;
                let mut v = Vec::new();
                for (i, (n, _)) in trainable.iter().enumerate() {
                    if let Some(m) = t.remove(n) {
                        v.push((i, m));
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
        let mut resident: Option<Llama> = if m.needs_resident_ref() {
            Some(model.deep_clone()?)
        } else {
            None
        };
        // Item numbering runs across tasks so per-item seeds do not repeat.
        let bases: Vec<u64> = tasks
            .iter()
            .scan(0u64, |acc, t| {
                let b = *acc;
                *acc += t.len() as u64;
                Some(b)
            })
            .collect();
        // ref = initial: every task's reference scores come from the untouched model, so prepare
        // all tasks now (no copy of the model is kept for that).
        let mut prepared: Vec<Option<TaskData>> = Vec::new();
        for (ti, task) in tasks.iter().enumerate() {
            prepared.push(if cfg.reference == RefMode::Initial {
                Some(self.prepare(task, bases[ti], &f, &refusals, &retain_qa, &retain_items)?)
            } else {
                None
            });
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
        let start = Instant::now();
        let mut total_steps = 0;
        let mut final_eval = serde_json::Value::Null;
        for (ti, task) in tasks.iter().enumerate() {
            if ti > 0 && cfg.reference == RefMode::PreviousTask && resident.is_some() {
                resident = Some(model.deep_clone()?);
            }
            let data = match prepared[ti].take() {
                Some(d) => d,
                None => self.prepare(task, bases[ti], &f, &refusals, &retain_qa, &retain_items)?,
            };
            let mut opt = Optimizer::new(
                m.optimizer.unwrap_or(t.optimizer),
                trainable.clone(),
                &t.adamw,
                &t.sophia,
            )?;
            for (i, mk) in &masks {
                opt.set_mask(*i, mk)?;
            }
            let per_step = t.items_per_step();
            let total = t.total_steps(data.forget_qa.len());
            let sched = t.schedule(total);
            let bar = crate::progress::bar(
                total as u64,
                &format!("unlearning task {}/{}", ti + 1, tasks.len()),
                self.progress,
            );
            let mut acc = GradAccum::new(trainable.len());
            let mut step = 0;
            'outer: for epoch in 0..t.epochs.max(1) {
                let order = epoch_order(data.forget_qa.len(), t.seed ^ (ti as u64) << 32, epoch);
                for group in order.chunks(per_step) {
                    let lr = sched.at(step);
                    acc.clear();
                    let micro: Vec<&[usize]> = group.chunks(t.batch_size.max(1)).collect();
                    let nm = micro.len() as f64;
                    let (mut lf, mut lr_, mut lt) = (0.0, 0.0, 0.0);
                    for mb in micro {
                        let (fl, rl) =
                            self.loss(&data, &retain_qa, mb, resident.as_ref(), control.as_ref())?;
                        let total_loss = ((fl.clone() * m.gamma)? + (rl.clone() * m.alpha)?)?;
                        let total_loss = (total_loss / nm)?;
                        let v = total_loss.to_scalar::<f32>()? as f64;
                        check_finite(v, step, &None)?;
                        lt += v;
                        lf += fl.to_scalar::<f32>()? as f64 / nm;
                        lr_ += rl.to_scalar::<f32>()? as f64 / nm;
                        acc.add(&trainable, &total_loss.backward()?)?;
                    }
                    if opt.needs_curvature() {
                        // GNB curvature on the step's forget inputs and their retain partners
                        let model = &self.md.model;
                        let pad = self.md.tok.pad_id;
                        let mut batches = vec![];
                        for mb in group.chunks(t.batch_size.max(1)) {
                            batches.push(batch_of(&data.forget_qa, mb, pad, model)?);
                            if !retain_qa.is_empty() {
                                let partners: Vec<usize> =
                                    mb.iter().map(|&i| data.retain_partner[i]).collect();
                                batches.push(batch_of(&retain_qa, &partners, pad, model)?);
                            }
                        }
                        crate::train::gnb_refresh(
                            &mut opt,
                            model,
                            &trainable,
                            &batches,
                            t.seed,
                            total_steps,
                        )?;
                    }
                    let norm = clipped_step(&mut opt, &acc, lr, t.max_grad_norm, step, &None)?;
                    step += 1;
                    total_steps += 1;
                    let e = StepEntry {
                        task: ti,
                        step,
                        loss: lt,
                        forget_loss: lf,
                        retain_loss: lr_,
                        lr,
                        grad_norm: norm,
                        elapsed_s: start.elapsed().as_secs_f64(),
                    };
                    writeln!(logf, "{}", serde_json::to_string(&e).unwrap())
                        .map_err(|e| Error::io(&log_path, e))?;
                    bar.set_message(format!("loss {lt:.4} (forget {lf:.4}, retain {lr_:.4})"));
                    bar.inc(1);
                    if cfg.eval_every > 0 && step % cfg.eval_every == 0 {
                        let ev = self.evaluate(ti, step, &data, &retain_qa, None)?;
                        writeln!(evalf, "{}", ev).map_err(|e| Error::io(&eval_path, e))?;
                        if let (Some(th), Some(fp)) =
                            (cfg.stop_forget_prob, ev["forget_prob"].as_f64())
                        {
                            if fp < th {
                                self.note(&format!("task {}: early stop at step {step} (forget_prob {fp:.4} < {th})", ti + 1));
                                break 'outer;
                            }
                        }
                    }
                    if step >= total {
                        break 'outer;
                    }
                }
            }
            bar.finish_and_clear();
            let eval_dir = if tasks.len() > 1 {
                self.run_dir.join("eval").join(format!("task-{}", ti + 1))
            } else {
                self.run_dir.join("eval")
            };
            final_eval = self.evaluate(ti, step, &data, &retain_qa, Some(&eval_dir))?;
            writeln!(evalf, "{}", final_eval).map_err(|e| Error::io(&eval_path, e))?;
            if tasks.len() > 1 {
                self.md
                    .save(&self.run_dir.join(format!("task-{}", ti + 1)))?;
            }
        }
        Ok(RunReport {
            tasks: tasks.len(),
            steps: total_steps,
            trainable_params: n_trainable,
            changed_params: 0,
            final_eval,
        })
    }

    /// SIMU: attribute MLP neurons on every forget item (and, in dual mode, the retain set), write
    /// `attribution.json` into the run directory, and return the down_proj column masks.
    fn simu_masks(
        &self,
        sel: &crate::objective::method::SimuSelect,
        tasks: &[Vec<QaItem>],
        f: &Formatter,
        retain_qa: &[Encoded],
    ) -> Result<Vec<(String, Tensor)>> {
        use crate::attribution::{down_proj_masks, select, AttributionConfig};
        let model = &self.md.model;
        let items = tasks
            .iter()
            .flatten()
            .map(|it| f.encode_qa(&it.question, &it.answer))
            .collect::<Result<Vec<_>>>()?;
        let acfg = AttributionConfig {
            steps: sel.steps,
            threshold: sel.threshold,
            absolute: sel.absolute,
            batch_size: self.cfg.train.batch_size.max(1),
        };
        if sel.dual && retain_qa.is_empty() {
            return Err(Error::Invalid("simu dual mode needs a `retain` set".into()));
        }
        let retain = if sel.dual { Some(retain_qa) } else { None };
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
        crate::hf::atomic_write(
            &p,
            serde_json::to_string(&serde_json::json!({"select": sel, "layers": layers}))
                .unwrap()
                .as_bytes(),
        )?;
        down_proj_masks(model, &chosen.critical)
    }

    pub fn note(&self, s: &str) {
        if self.progress {
            eprintln!("{s}");
        }
        let p = self.run_dir.join("notes.txt");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            let _ = writeln!(f, "{s}");
        }
    }

    fn evaluate(
        &self,
        task: usize,
        step: usize,
        data: &TaskData,
        retain_qa: &[Encoded],
        eval_out: Option<&Path>,
    ) -> Result<serde_json::Value> {
        let model = &self.md.model;
        let bs = self.cfg.train.batch_size.max(1);
        let forget_prob = mean_prob(model, &data.forget_qa, bs)?;
        let mut partners: Vec<usize> = data.retain_partner.clone();
        partners.sort();
        partners.dedup();
        let rq: Vec<Encoded> = partners.iter().map(|&i| retain_qa[i].clone()).collect();
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

    fn prepare(
        &self,
        task: &[QaItem],
        item_base: u64,
        f: &Formatter,
        refusals: &[String],
        retain_qa: &[Encoded],
        retain_items: &[QaItem],
    ) -> Result<TaskData> {
        let m = &self.cfg.method;
        let seed = self.cfg.train.seed;
        let model = &self.md.model;
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
        let ref_model = model;
        let bs = self.cfg.train.batch_size.max(1);
        let (ref_ans, ref_idk) = if m.needs_ref_scores() {
            let a = sums(ref_model, &forget_qa, bs)?;
            let b = if matches!(m.forget, ForgetTerm::Dpo { .. }) {
                sums(ref_model, &forget_idk, bs)?
            } else {
                vec![]
            };
            (a, b)
        } else {
            (vec![], vec![])
        };
        Ok(TaskData {
            forget_qa,
            forget_idk,
            retain_partner,
            retain_idk,
            ref_ans,
            ref_idk,
        })
    }

    /// (forget term, retain term) for the forget items `idx` (scalars).
    fn loss(
        &self,
        d: &TaskData,
        retain_qa: &[Encoded],
        idx: &[usize],
        resident: Option<&Llama>,
        control: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
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
                let h = model.hidden_at(&b.input, self.rmu_layer())?;
                rmu::rmu_forget(&h, control.unwrap(), &b.mask)?
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
        let retain = match &m.retain {
            RetainTerm::None => zero()?,
            RetainTerm::Gd => {
                let b = batch_of(retain_qa, &partners, pad, model)?;
                gd::gd(&nll_mean(&model.forward(&b.input)?, &b)?)?
            }
            RetainTerm::Kl => {
                let b = batch_of(retain_qa, &partners, pad, model)?;
                let r = resident.unwrap().forward(&b.input)?.detach();
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
                let l = self.rmu_layer();
                let h_ref = resident.unwrap().hidden_at(&b.input, l)?.detach();
                rmu::rmu_retain(&model.hidden_at(&b.input, l)?, &h_ref, &b.valid)?
            }
        };
        Ok((forget, retain))
    }
}

/// Fail before any work when the output's directory cannot be written.
pub fn check_writable(out: &std::path::Path) -> Result<()> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let probe = parent.join(format!(".unlearn-write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| Error::io(&parent, e))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
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

/// `method = "unierase"`: the unlearning token and the closed-form edit (`edit::unierase`),
/// all forget tasks' items in one forget list.
fn run_unierase(
    cfg: &RunConfig,
    uc: &crate::edit::unierase::UniEraseConfig,
    md: &ModelDir,
    run_dir: &Path,
    progress: bool,
) -> Result<RunReport> {
    let note = |s: &str| {
        if progress {
            eprintln!("{s}");
        }
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(run_dir.join("notes.txt"))
        {
            let _ = writeln!(f, "{s}");
        }
    };
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
    let refusals = crate::refusals::load(cfg.refusals.as_deref())?;
    let (model, tok, rep) = crate::edit::unierase::unierase(
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
    let bs = cfg.train.batch_size.max(1);
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
    let p = run_dir.join("eval_log.jsonl");
    std::fs::write(&p, format!("{line}\n")).map_err(|e| Error::io(&p, e))?;
    crate::hf::save_model(
        &model,
        &tok,
        Some(&md.config_json),
        &md.side_files,
        &cfg.out,
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

/// Validate and run: writes run.json before starting, the model at the end (atomically).
pub fn run(cfg: &RunConfig, progress: bool) -> Result<RunReport> {
    let run_dir = cfg
        .run_dir
        .clone()
        .unwrap_or_else(|| crate::rundir::default_for(&cfg.out));
    check_writable(&cfg.out)?;
    let dev = crate::device(&cfg.device)?;
    let md = ModelDir::load(&cfg.model, &dev)?;
    crate::rundir::write_run_info(&run_dir, "run", cfg.train.seed, cfg)?;
    // notes.txt is appended to during the run: start it afresh when the run dir is reused
    let notes = run_dir.join("notes.txt");
    if notes.exists() {
        std::fs::remove_file(&notes).map_err(|e| Error::io(&notes, e))?;
    }
    if let ForgetTerm::Unierase(uc) = &cfg.method.forget {
        return run_unierase(cfg, uc, &md, &run_dir, progress);
    }
    let runner = Runner {
        cfg,
        md: &md,
        run_dir: run_dir.clone(),
        progress,
    };
    let mut rep = runner.run()?;
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
    md.save(&cfg.out)?;
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
