//! The unlearning run (`unlearn run`): a model, a forget set (or a sequence of forget tasks), a
//! retain set and a refusal pool; one method = gamma · forget term + alpha · retain term;
//! AdamW on the selected parameters; per-step losses as JSONL; the model saved after each task.
pub mod answers;
pub mod attribution;
pub mod edit;
pub mod objective;
pub mod runner;
pub mod selfgen;

pub use runner::{rmu_layer, Runner};

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::{read_qa, Encoded, Formatter, QaItem};
use crate::error::{Error, Result};
use crate::infer::score::score;
use crate::model::hf::ModelDir;
use crate::model::Llama;
use crate::train::TrainConfig;
use crate::unlearn::objective::method::{deserialize_method, MethodConfig};
use crate::unlearn::objective::ForgetTerm;
use crate::util::guard::{Input, TrainOutputs};

/// One path or a list of paths (one forget task each).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Paths {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

impl Paths {
    /// The paths, one or many.
    pub fn list(&self) -> &[PathBuf] {
        match self {
            Paths::One(p) => std::slice::from_ref(p),
            Paths::Many(ps) => ps,
        }
    }

    pub fn list_mut(&mut self) -> &mut [PathBuf] {
        match self {
            Paths::One(p) => std::slice::from_mut(p),
            Paths::Many(ps) => ps,
        }
    }
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
    /// Split a single forget file into tasks by this field of its rows (`task_id` in the
    /// continual splits of "A Closer Look at Machine Unlearning for LLMs"); tasks run in the
    /// field's order (numeric when every value is a number, else first appearance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forget_task_key: Option<String>,
    /// Continual unlearning as the closer-look paper runs it: the retain set of task k is the
    /// `retain` set plus the forget items of the tasks after k (not yet forgotten), so retain
    /// partners are drawn from both.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retain_future_tasks: bool,
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
    /// Train LoRA adapters instead of the weights (a `[lora]` table: r, alpha, dropout, targets,
    /// rslora, merge). The output is the adapter in PEFT's layout, or the merged model with
    /// `merge = true`. An input model that is already an adapter directory trains that adapter
    /// without this table.
    #[serde(default)]
    pub lora: Option<crate::model::LoraConfig>,
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
    /// Compute dtype: `f32` (default) or `bf16` (bf16 activations and matmuls with f32
    /// accumulation, norms, softmaxes and losses in f32; the trained weights or adapters and
    /// their AdamW state stay f32; a LoRA base and a resident reference copy are held in bf16).
    #[serde(default, skip_serializing_if = "crate::model::Precision::is_default")]
    pub dtype: crate::model::Precision,
}

impl RunConfig {
    /// Turn names into local paths: `model` as a directory or Hub id, the data files as paths
    /// or `hf://` files, and the `[eval]` names ([`crate::eval::EvalConfig::resolve_names`]).
    pub fn resolve_names(&mut self) -> Result<()> {
        self.model = crate::util::hub::model(&self.model)?;
        for f in self
            .forget
            .list_mut()
            .iter_mut()
            .chain(self.retain.as_mut())
            .chain(self.refusals.as_mut())
        {
            *f = crate::util::hub::file(f)?;
        }
        if let Some(e) = &mut self.eval {
            e.resolve_names()?;
        }
        Ok(())
    }
}

impl crate::config::Validate for RunConfig {
    fn check(&self, c: &mut crate::config::Check) {
        c.sub("method", &self.method);
        c.sub("train", &self.train);
        if let Some(l) = &self.lora {
            c.sub("lora", l);
            if l.dropout > 0.0 && self.train.checkpoint_activations {
                c.fail(
                    "lora.dropout",
                    "must be 0 with train.checkpoint_activations (the recomputed layers would draw other dropout masks than the forward did)",
                );
            }
        }
        if let Some(e) = &self.eval {
            c.sub("eval", e);
            if !e.dtype.is_default() {
                c.fail(
                    "eval.dtype",
                    "the run's evaluations use the model being trained: set the run's `dtype`",
                );
            }
        }
        if let Some(p) = self.stop_forget_prob {
            c.share("stop_forget_prob", p);
        }
        if let Paths::Many(v) = &self.forget {
            if v.is_empty() {
                c.fail("forget", "must name at least one file");
            }
        }
        if let Some(k) = &self.forget_task_key {
            c.non_empty("forget_task_key", k);
            if self.forget_tasks > 1 {
                c.fail(
                    "forget_task_key",
                    "and forget_tasks both split the forget file; give one of them",
                );
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
        .map_err(|e: toml::de::Error| D::Error::custom(crate::config::keyed(&e)))
}

fn default_device() -> String {
    "cpu".into()
}

impl RunConfig {
    /// Unlearn `forget` (with `retain`) from `model` by `method` into `out`, every other key at
    /// its default.
    pub fn new(
        model: PathBuf,
        forget: PathBuf,
        retain: Option<PathBuf>,
        out: PathBuf,
        method: MethodConfig,
    ) -> Self {
        RunConfig {
            model,
            forget: Paths::One(forget),
            forget_tasks: 0,
            forget_task_key: None,
            retain_future_tasks: false,
            retain,
            refusals: None,
            out,
            run_dir: None,
            method,
            train: default_train(),
            trainable: vec![],
            reference: RefMode::default(),
            lora: None,
            masks: None,
            eval_every: 0,
            stop_forget_prob: None,
            eval: None,
            device: default_device(),
            dtype: Default::default(),
        }
    }
}

pub use crate::util::pattern::{expand_braces, select_params};

pub struct RunReport {
    pub tasks: usize,
    pub steps: usize,
    pub trainable_params: usize,
    /// Elements that differ from the input model after the run.
    pub changed_params: usize,
    pub final_eval: serde_json::Value,
}

/// Number of elements that differ between two models of the same configuration. With adapters
/// on `b`: the base elements that differ (none, when only adapters trained) plus the adapter
/// elements that differ from `a`'s adapters, or, when `a` has none, `b`'s non-zero B elements
/// (a fresh adapter's B is zero, so those are the elements through which the model changed).
pub fn count_changed(a: &Llama, b: &Llama) -> Result<usize> {
    let mut n = count_changed_base(a, b)?;
    let (pa, pb) = (a.adapters(), b.adapters());
    if pa.len() == pb.len() {
        for ((_, x), (_, y)) in pa.iter().zip(&pb) {
            n += ne_count(x.as_tensor(), y.as_tensor())?;
        }
    } else {
        for (_, y) in pb.iter().filter(|(n, _)| n.ends_with("lora_B.weight")) {
            n += ne_count(y.as_tensor(), &y.as_tensor().zeros_like()?)?;
        }
    }
    Ok(n)
}

fn ne_count(x: &candle_core::Tensor, y: &candle_core::Tensor) -> Result<usize> {
    Ok(x.ne(y)?
        .to_dtype(candle_core::DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()? as usize)
}

/// Elements of the base weights that differ. A weight `b` holds in another dtype than `a` is a
/// frozen copy (`dtype = "bf16"` holds a LoRA base in bf16): not trained, not saved, not counted.
fn count_changed_base(a: &Llama, b: &Llama) -> Result<usize> {
    let mut n = 0;
    for ((_, x), (_, y)) in a.params().iter().zip(b.params()) {
        if x.dtype() != y.dtype() {
            continue;
        }
        let ne = x
            .as_tensor()
            .ne(y.as_tensor())?
            .to_dtype(candle_core::DType::F32)?
            .sum_all()?;
        n += ne.to_scalar::<f32>()? as usize;
    }
    Ok(n)
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
    let forget: Vec<QaItem> = cfg
        .forget
        .list()
        .iter()
        .map(|p| read_qa(p))
        .collect::<Result<Vec<_>>>()?
        .concat();
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
    let enc = |items: &[QaItem]| -> Result<Vec<Encoded>> { f.encode_items(items) };
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
    v.extend(
        cfg.forget
            .list()
            .iter()
            .map(|p| Input::new("forget set", p)),
    );
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
    let mut md = ModelDir::load(&cfg.model, &dev)?;
    attach_lora(cfg, &mut md)?;
    if cfg.dtype != crate::model::Precision::F32 {
        check_precision(cfg)?;
        // the base of an adapter is frozen and only read: held in bf16; without adapters the
        // frozen parameters keep their storage, so the saved model has them unchanged
        let frozen_storage = md.model.lora().is_some();
        md.model = md.model.for_precision(cfg.dtype, frozen_storage)?;
    }
    if let ForgetTerm::Unierase(uc) = &cfg.method.forget {
        if md.model.cfg.mlp_output_normed() {
            return Err(Error::Invalid(format!(
                "method `unierase` cannot edit a {} model: its closed-form edit treats down_proj's \
                 output as what is added to the residual stream, and {} normalises that output first",
                md.model.cfg.arch.model_type(),
                md.model.cfg.arch.architectures()
            )));
        }
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
    if cfg.dtype != crate::model::Precision::F32 && dev.is_cpu() {
        runner.note(&format!(
            "dtype = \"{}\" on the CPU runs the composite ops and widens every product to f32: \
             slower and larger than f32 here; it pays on a GPU (docs/gpu.md)",
            cfg.dtype.name()
        ));
    }
    let mut rep = runner.run(resume_from.as_deref())?;
    // Compare with the input model as it is on disk (loaded only now, so it is not resident
    // during training).
    let original = ModelDir::load(&cfg.model, &dev)?;
    rep.changed_params = count_changed(&original.model, &md.model)?;
    // a merged adapter over a base held in bf16: merged onto the base as it is on disk
    let merge_base = (cfg.dtype != crate::model::Precision::F32
        && cfg.lora.as_ref().is_some_and(|l| l.merge))
    .then_some(original);
    let what = if md.model.lora().is_some() {
        "adapter"
    } else {
        "model"
    };
    runner.note(&format!(
        "{} of {} {what} parameters changed ({:.4}%); {} were trainable",
        rep.changed_params,
        n_params(&md.model),
        100.0 * rep.changed_params as f64 / n_params(&md.model).max(1) as f64,
        rep.trainable_params
    ));
    save_output(
        cfg,
        &md,
        merge_base.as_ref().map(|o| &o.model),
        outs.model.tmp(),
    )?;
    outs.model.commit()?;
    Ok(rep)
}

/// What `dtype = "bf16"` cannot do, refused before any work.
fn check_precision(cfg: &RunConfig) -> Result<()> {
    let refuse = |what: &str| {
        Err(Error::Invalid(format!(
            "dtype = \"{}\" cannot be used with {what}; use dtype = \"f32\"",
            cfg.dtype.name()
        )))
    };
    if let ForgetTerm::Unierase(_) = cfg.method.forget {
        return refuse("method `unierase` (its closed-form edit solves in f32 on the weights)");
    }
    if cfg.method.optimizer.unwrap_or(cfg.train.optimizer) == crate::optim::OptimizerKind::Sophia {
        return refuse("optimizer `sophia` (its Hessian estimate runs on the f32 CPU kernels)");
    }
    Ok(())
}

/// Parameters of what a run trains: the adapter's with LoRA, else the model's.
fn n_params(m: &Llama) -> usize {
    match m.lora() {
        Some(_) => m.adapters().iter().map(|(_, v)| v.elem_count()).sum(),
        None => m.num_params(),
    }
}

/// `[lora]`: fresh adapters on the input model (refused where they make no sense).
fn attach_lora(cfg: &RunConfig, md: &mut ModelDir) -> Result<()> {
    let Some(lc) = &cfg.lora else {
        return Ok(());
    };
    if md.model.lora().is_some() {
        return Err(Error::Invalid(format!(
            "{} is already a LoRA adapter: drop [lora] to train it further, or merge it first",
            cfg.model.display()
        )));
    }
    let refuse = |what: &str| Err(Error::Invalid(format!("[lora] cannot be used with {what}")));
    if let ForgetTerm::Unierase(_) = cfg.method.forget {
        return refuse("method `unierase`: its edit is a closed-form change of the full down_proj weights and a new token row");
    }
    if cfg.method.simu.is_some() {
        return refuse("method `simu`: its masks select neurons (columns of the full down_proj weights), which an adapter does not have");
    }
    if cfg.masks.is_some() {
        return refuse("`masks`: masks are per element of the full weights");
    }
    let base = std::fs::canonicalize(&cfg.model).unwrap_or_else(|_| cfg.model.clone());
    let lora = crate::model::Lora::new(
        lc,
        &md.model.cfg,
        &base.to_string_lossy(),
        cfg.train.seed,
        md.model.device(),
    )?;
    md.model = md.model.with_lora(lora)?;
    Ok(())
}

/// Write a run's output model into `dir`: the adapter, or with `[lora] merge = true` the
/// merged model (merged onto `base` when given: the input model as it is on disk, where the
/// run held its base in another dtype).
pub fn save_output(cfg: &RunConfig, md: &ModelDir, base: Option<&Llama>, dir: &Path) -> Result<()> {
    let merged;
    let model = match (&cfg.lora, md.model.lora(), base) {
        (Some(l), Some(lo), Some(base)) if l.merge => {
            merged = base.with_lora(lo.converted(lo.dtype())?)?.merged()?;
            &merged
        }
        (Some(l), _, _) if l.merge => {
            merged = md.model.merged()?;
            &merged
        }
        _ => &md.model,
    };
    crate::model::hf::write_model_files(model, &md.tok, Some(&md.config_json), &md.side_files, dir)
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
