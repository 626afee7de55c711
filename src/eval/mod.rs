//! The evaluation suite (`unlearn eval`, and inside `unlearn run`): every metric of METHODS.md
//! "Metrics" on a benchmark directory in the TOFU layout, written as open-unlearning writes it:
//! `TOFU_EVAL.json` maps each metric name to `{"agg_value": …, "value_by_index": {"0": {…}, …}}`
//! (generations included in the ROUGE entries) and `TOFU_SUMMARY.json` maps names to `agg_value`.
//! A metric that cannot be computed is written as `{"agg_value": null, "skipped": REASON}`.
//!
//! Work is shared: one teacher-forced pass per (model, set, answer variant) gives every likelihood
//! metric ([`TokenStats`]: log-prob, argmax hit, μ and σ² of the predicted distribution), one
//! batched greedy generation per set gives every generation metric. These per-item results are
//! kept in `EVAL_CACHE.json` (keyed by a fingerprint of the model files and the settings), so a
//! metric added later, or a resumed run, does not recompute them. Metrics already present in
//! `TOFU_EVAL.json` are kept unless `overwrite` (skipped ones are always retried).
pub mod attack;
pub mod audit;
pub mod exclusive;
pub mod formula;
pub mod harness;
pub mod metrics;
pub mod muse;
pub mod names;
pub mod passes;
pub mod value;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::data::PromptStyle;
use crate::error::{Error, Result};
use crate::model::hf::atomic_write;
use crate::model::tokenizer::Tok;
use crate::model::Llama;
use crate::util::guard::Input;
use passes::{Cache, Passes};
use value::{scores, skipped, Fail};

pub const EVAL_FILE: &str = "TOFU_EVAL.json";
pub const SUMMARY_FILE: &str = "TOFU_SUMMARY.json";
pub const CACHE_FILE: &str = "EVAL_CACHE.json";

/// The evaluation sets of a TOFU-layout benchmark directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetName {
    Forget,
    Retain,
    /// Real authors.
    Ra,
    /// World facts.
    Wf,
    Holdout,
}

impl SetName {
    pub const ALL: [SetName; 5] = [
        Self::Forget,
        Self::Retain,
        Self::Ra,
        Self::Wf,
        Self::Holdout,
    ];
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Forget => "forget",
            Self::Retain => "retain",
            Self::Ra => "ra",
            Self::Wf => "wf",
            Self::Holdout => "holdout",
        }
    }
    /// Real authors / world facts: multiple-choice style sets.
    pub fn options(self) -> bool {
        matches!(self, Self::Ra | Self::Wf)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Benchmark directory in the TOFU layout: `{split}_perturbed.jsonl` (or `{split}.jsonl`),
    /// `retain_perturbed.jsonl`, `real_authors_perturbed.jsonl`, `world_facts_perturbed.jsonl`,
    /// `holdoutNN.jsonl`. Sets whose file is absent are reported as skipped. Also a name that
    /// [`EvalConfig::resolve_names`] turns into such a directory: `tofu` (the default;
    /// `$UNLEARN_TOFU_DIR`, else the Hub dataset locuslab/TOFU) or a Hub dataset id.
    pub data: PathBuf,
    /// Forget split, e.g. "forget10".
    pub forget_split: String,
    /// Holdout split (MIA non-members); default: forgetNN → holdoutNN.
    pub holdout_split: Option<String>,
    /// Sets to evaluate (default: all five).
    pub sets: Vec<SetName>,
    /// Use only the first N items of each set (0 = all): quick evaluations during training.
    pub max_items: usize,
    /// Teacher-forced batch size.
    pub batch_size: usize,
    /// Generation batch size.
    pub gen_batch_size: usize,
    /// Greedy generation length (open-unlearning's TOFU default: 200).
    pub max_new_tokens: usize,
    pub max_len: usize,
    pub prompt: PromptStyle,
    /// Sentence encoder (all-MiniLM-L6-v2 directory). Default: $UNLEARN_MINILM_DIR, then
    /// `.cache/models/all-MiniLM-L6-v2` (scripts/fetch_assets.sh downloads it).
    pub embedder: Option<PathBuf>,
    /// NLI classifier directory (BERT, RoBERTa or DeBERTa-v2/v3 sequence classifier with an
    /// "entailment" label).
    pub nli: Option<PathBuf>,
    /// Reference model for the Reference MIA (for TOFU: the retain model).
    pub reference_model: Option<PathBuf>,
    /// `TOFU_EVAL.json` of the retain-only model: forget quality and PrivLeak compare with it.
    pub retain_logs: Option<PathBuf>,
    /// Refusal pool, one per line (default: the built-in pool).
    pub refusals: Option<PathBuf>,
    /// Fraction k of Min-K% and Min-K%++.
    pub min_k: f64,
    /// Label spans, attention masking and metric definitions: `none` (ours: labels = answer ⊕
    /// EOS, only padding masked) or `open_unlearning` (theirs, to compare with numbers they
    /// publish: see [`Compat`] and docs/evaluation.md).
    pub compat: Compat,
    /// Opt-in metrics to compute besides the default suite (`unlearn metrics` marks them):
    /// `mia_gradnorm` (one backward pass per forget and holdout item). Off by default, as in
    /// open-unlearning.
    pub extra_metrics: Vec<String>,
    /// The retain set's split (default `retain_perturbed`; `{split}_perturbed.jsonl` or
    /// `{split}.jsonl`): the neighbour set of the closer-look real-world scenario, say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retain_split: Option<String>,
    /// Read every set's reference answer from this row field where a row has it (the
    /// real-world scenario's `golden_answer`: training targets are the model's own answers,
    /// evaluation uses the golden ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer_field: Option<String>,
    /// The evaluated model's compute dtype (`unlearn eval --dtype`): f32 (default) or bf16
    /// (the model held and run in bf16, log-probabilities in f32). Part of the cache key. In a
    /// run's `[eval]` table the run's own `dtype` applies instead.
    #[serde(skip_serializing_if = "crate::model::Precision::is_default")]
    pub dtype: crate::model::Precision,
}

/// Which conventions the evaluation follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compat {
    /// Ours: labels are the answer and EOS; only padding is masked; every metric uses every
    /// labelled token; zlib compresses the answer.
    #[default]
    None,
    /// open-unlearning's evaluator: labels are everything after the prompt of the exchange
    /// rendered with the assistant's turn closed, plus EOS when it does not end in EOS (a
    /// second end-of-turn on ChatML models); every token equal to the pad token (= EOS when
    /// the tokenizer has none) is masked out of attention, in scoring and in generation;
    /// exact memorisation, extraction strength, Min-K% and Min-K%++ leave out the last
    /// labelled token ("ignore EOS prediction"), extraction strength is 1/n rather than 0 when
    /// no suffix is predicted (their loop's index), and zlib compresses the decoded labels
    /// (answer ⊕ "\n" on ChatML).
    OpenUnlearning,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            data: PathBuf::from("tofu"),
            forget_split: "forget10".into(),
            holdout_split: None,
            sets: SetName::ALL.to_vec(),
            max_items: 0,
            batch_size: 8,
            gen_batch_size: 16,
            max_new_tokens: 200,
            max_len: 512,
            prompt: PromptStyle::Auto,
            embedder: None,
            nli: None,
            reference_model: None,
            retain_logs: None,
            refusals: None,
            min_k: 0.4,
            compat: Compat::None,
            extra_metrics: vec![],
            retain_split: None,
            answer_field: None,
            dtype: Default::default(),
        }
    }
}

impl crate::config::Validate for EvalConfig {
    fn check(&self, c: &mut crate::config::Check) {
        c.non_empty("forget_split", &self.forget_split);
        if self.sets.is_empty() {
            c.fail("sets", "must name at least one set");
        }
        c.at_least("batch_size", self.batch_size, 1);
        c.at_least("gen_batch_size", self.gen_batch_size, 1);
        c.at_least("max_new_tokens", self.max_new_tokens, 1);
        c.at_least("max_len", self.max_len, 2);
        c.share("min_k", self.min_k);
        let opt_in: Vec<String> = metrics::all()
            .iter()
            .filter(|m| m.opt_in())
            .map(|m| m.name())
            .collect();
        for n in &self.extra_metrics {
            if !opt_in.contains(n) {
                c.fail(
                    "extra_metrics",
                    format!(
                        "{n:?} is not an opt-in metric (they are: {})",
                        opt_in.join(", ")
                    ),
                );
            }
        }
    }
}

impl EvalConfig {
    pub(crate) fn holdout(&self) -> String {
        self.holdout_split.clone().unwrap_or_else(|| {
            self.forget_split
                .strip_prefix("forget")
                .map(|n| format!("holdout{n}"))
                .unwrap_or_else(|| "holdout".into())
        })
    }

    /// The file of a set, or why there is none.
    pub fn file(&self, set: SetName) -> std::result::Result<PathBuf, String> {
        let candidates: Vec<String> = match set {
            SetName::Forget => vec![
                format!("{}_perturbed.jsonl", self.forget_split),
                format!("{}.jsonl", self.forget_split),
            ],
            SetName::Retain => match &self.retain_split {
                None => vec!["retain_perturbed.jsonl".into()],
                Some(r) => vec![format!("{r}_perturbed.jsonl"), format!("{r}.jsonl")],
            },
            SetName::Ra => vec!["real_authors_perturbed.jsonl".into()],
            SetName::Wf => vec!["world_facts_perturbed.jsonl".into()],
            SetName::Holdout => vec![format!("{}.jsonl", self.holdout())],
        };
        candidates
            .iter()
            .map(|c| self.data.join(c))
            .find(|p| p.exists())
            .ok_or_else(|| format!("no {} in {}", candidates.join(" or "), self.data.display()))
    }

    pub(crate) fn embedder_dir(&self) -> Option<PathBuf> {
        embedder_dir(self.embedder.as_ref())
    }

    /// Turn names into local paths: `data` as a benchmark name, directory or Hub dataset
    /// ([`crate::data::benchmark::resolve`]); the reference, embedder and NLI models as
    /// directories or Hub ids; the retain log and refusal pool as paths or `hf://` files. Hub
    /// names are downloaded into (or read from) the Hugging Face cache.
    pub fn resolve_names(&mut self) -> Result<()> {
        if !self.data.is_dir() {
            self.data = crate::data::benchmark::resolve(&self.data.to_string_lossy())?;
        }
        for m in [&mut self.reference_model, &mut self.embedder, &mut self.nli]
            .into_iter()
            .flatten()
        {
            *m = crate::util::hub::model(m)?;
        }
        for f in [&mut self.retain_logs, &mut self.refusals]
            .into_iter()
            .flatten()
        {
            *f = crate::util::hub::file(f)?;
        }
        Ok(())
    }

    /// The files and directories this evaluation reads: the selected sets' files, the retain
    /// log, the reference, embedder and NLI models, the refusal pool.
    pub fn inputs(&self) -> Vec<Input> {
        let mut v = vec![];
        for s in SetName::ALL {
            if self.sets.contains(&s) {
                if let Ok(p) = self.file(s) {
                    v.push(Input::new(&format!("{} set", s.prefix()), p));
                }
            }
        }
        let opt = [
            ("retain log", self.retain_logs.clone()),
            ("reference model", self.reference_model.clone()),
            ("sentence encoder", self.embedder_dir()),
            ("NLI model", self.nli.clone()),
            ("refusal pool", self.refusals.clone()),
        ];
        for (role, p) in opt {
            if let Some(p) = p {
                v.push(Input::new(role, p));
            }
        }
        v
    }

    /// Checks that need no model: the benchmark directory exists and has the forget split, the
    /// retain log (when given) is an evaluation with forget truth ratios, and the models given
    /// explicitly exist. Returns the retain log.
    pub(crate) fn check_inputs(&self) -> Result<Option<Map<String, Value>>> {
        if !self.data.is_dir() {
            return Err(Error::Invalid(format!(
                "benchmark {}: not a directory",
                self.data.display()
            )));
        }
        if self.sets.contains(&SetName::Forget) {
            if let Err(why) = self.file(SetName::Forget) {
                let mut found: Vec<String> = std::fs::read_dir(&self.data)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter_map(|n| {
                        n.strip_suffix(".jsonl")
                            .filter(|s| s.starts_with("forget") && !s.ends_with("_perturbed"))
                            .map(String::from)
                    })
                    .collect();
                found.sort();
                return Err(Error::Invalid(format!(
                    "forget split `{}`: {why}{}",
                    self.forget_split,
                    if found.is_empty() {
                        " (the directory has no forget split: is it a TOFU-layout benchmark?)"
                            .to_string()
                    } else {
                        format!(" (it has: {})", found.join(", "))
                    }
                )));
            }
        }
        for (what, p) in [
            ("reference model", &self.reference_model),
            ("NLI model", &self.nli),
            ("sentence encoder", &self.embedder),
        ] {
            if let Some(p) = p {
                if !p.join("config.json").exists() {
                    return Err(Error::Invalid(format!(
                        "{what} {}: no config.json (not a model directory)",
                        p.display()
                    )));
                }
            }
        }
        let Some(p) = &self.retain_logs else {
            return Ok(None);
        };
        let logs: Map<String, Value> = crate::error::read_json(p)?;
        if logs
            .get(names::FORGET_TRUTH_RATIO)
            .and_then(scores)
            .is_none()
        {
            return Err(Error::Invalid(format!(
                "{}: not a retain model's evaluation (no forget_truth_ratio with per-item \
                 values); give the TOFU_EVAL.json that `unlearn eval` wrote for the retain model",
                p.display()
            )));
        }
        Ok(Some(logs))
    }
}

/// The sentence encoder's directory: `explicit`, else $UNLEARN_MINILM_DIR, else
/// `.cache/models/all-MiniLM-L6-v2` when present, else sentence-transformers/all-MiniLM-L6-v2
/// when the Hugging Face cache holds it (no request is made).
pub fn embedder_dir(explicit: Option<&PathBuf>) -> Option<PathBuf> {
    explicit
        .cloned()
        .or_else(|| std::env::var_os("UNLEARN_MINILM_DIR").map(PathBuf::from))
        .or_else(|| {
            let p = PathBuf::from(".cache/models/all-MiniLM-L6-v2");
            p.exists().then_some(p)
        })
        .or_else(|| crate::util::hub::cached_model("sentence-transformers/all-MiniLM-L6-v2"))
}

/// Outcome of an evaluation.
pub struct EvalOutput {
    /// Every metric (TOFU_EVAL.json).
    pub eval: Map<String, Value>,
    /// Name → agg_value (TOFU_SUMMARY.json).
    pub summary: Map<String, Value>,
    /// Metrics computed by this call (the others were kept from TOFU_EVAL.json).
    pub computed: Vec<String>,
    /// Model passes this call ran ("forget answers", "retain generation", …); cached ones are
    /// not repeated.
    pub passes: Vec<String>,
}

/// Runs the metrics of [`metrics::all`] over shared [`Passes`].
pub struct Evaluator<'a> {
    passes: Passes<'a>,
}

impl<'a> Evaluator<'a> {
    /// Reads the sets and checks every input (see [`Passes::new`]).
    pub fn new(
        model: &'a Llama,
        tok: &'a Tok,
        cfg: &'a EvalConfig,
        progress: bool,
    ) -> Result<Self> {
        Ok(Evaluator {
            passes: Passes::new(model, tok, cfg, progress)?,
        })
    }

    /// Run every metric. With `out` and `keys`, metrics already in `out/TOFU_EVAL.json` are
    /// kept (unless `overwrite`) when they were computed under the same [`EvalKeys::metrics`],
    /// per-item pass results in `out/EVAL_CACHE.json` are reused when they were computed under
    /// the same [`EvalKeys::passes`], and both files are rewritten (atomically) after each
    /// metric. Whatever the keys no longer match is recomputed.
    pub fn run(
        &mut self,
        out: Option<&Path>,
        keys: Option<EvalKeys>,
        overwrite: bool,
    ) -> Result<EvalOutput> {
        let eval_path = out.map(|d| d.join(EVAL_FILE));
        let cache_path = match (out, &keys) {
            (Some(d), Some(_)) => Some(d.join(CACHE_FILE)),
            _ => None,
        };
        if let Some(d) = out {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        let mut done = match (out, &keys) {
            (Some(d), Some(k)) => self.resume(d, k, overwrite)?,
            _ => Map::new(),
        };
        let mut computed = vec![];
        let extra = self.passes.cfg().extra_metrics.clone();
        for m in metrics::all() {
            let name = m.name();
            if done.get(&name).is_some_and(|v| v.get("skipped").is_none()) {
                continue;
            }
            computed.push(name.clone());
            let v = if m.opt_in() && !extra.contains(&name) {
                skipped(&format!(
                    "opt-in (costly): name it in extra_metrics, e.g. --set 'extra_metrics=[\"{name}\"]'"
                ))
            } else {
                match m.compute(&mut self.passes, &done) {
                    Ok(v) => v,
                    Err(Fail::Skip(why)) => skipped(&why),
                    Err(Fail::Error(e)) => return Err(e),
                }
            };
            done.insert(name, v);
            if let Some(p) = &eval_path {
                atomic_write(p, serde_json::to_string_pretty(&done).unwrap().as_bytes())?;
            }
            if let Some(p) = &cache_path {
                let c = serde_json::to_string(&self.passes.cache).unwrap();
                atomic_write(p, c.as_bytes())?;
            }
        }
        let summary: Map<String, Value> = done
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.get("agg_value").cloned().unwrap_or(Value::Null),
                )
            })
            .collect();
        if let Some(d) = out {
            atomic_write(
                &d.join(SUMMARY_FILE),
                serde_json::to_string_pretty(&summary).unwrap().as_bytes(),
            )?;
        }
        Ok(EvalOutput {
            eval: done,
            summary,
            computed,
            passes: std::mem::take(&mut self.passes.ran),
        })
    }

    /// The metrics of `out/TOFU_EVAL.json` that stay valid under `keys` (none when
    /// `overwrite`), with the pass results of `out/EVAL_CACHE.json` loaded when they do; the
    /// cache file is rewritten with the new keys.
    fn resume(&mut self, out: &Path, k: &EvalKeys, overwrite: bool) -> Result<Map<String, Value>> {
        let (cp, ep) = (out.join(CACHE_FILE), out.join(EVAL_FILE));
        let old: Option<Cache> = if cp.exists() {
            Some(crate::error::read_json(&cp)?)
        } else {
            None
        };
        let metrics_valid = old
            .as_ref()
            .is_some_and(|c| c.fingerprint == k.passes && c.metrics_key == k.metrics);
        let mut done = Map::new();
        if metrics_valid && !overwrite && ep.exists() {
            done = crate::error::read_json(&ep)?;
        } else {
            // results of other inputs or settings go before the new keys are written, so a
            // kill in between never pairs old metrics with new keys
            for f in [EVAL_FILE, SUMMARY_FILE] {
                let p = out.join(f);
                if p.exists() {
                    std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
                }
            }
        }
        let cache = &mut self.passes.cache;
        if let Some(c) = old.filter(|c| c.fingerprint == k.passes && !overwrite) {
            *cache = c;
        }
        cache.fingerprint = k.passes.clone();
        cache.metrics_key = k.metrics.clone();
        atomic_write(&cp, serde_json::to_string(&*cache).unwrap().as_bytes())?;
        Ok(done)
    }
}

/// Keys under which evaluation results are cached: SHA-256 over the contents of everything a
/// value depends on, so an edited file at the same path, another retain log or another setting
/// is never mistaken for the old one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalKeys {
    /// Per-item pass results (EVAL_CACHE.json): the model's files, the sets' files, the
    /// reference model and every setting that changes a likelihood or a generation.
    pub passes: String,
    /// The metrics (TOFU_EVAL.json): `passes` plus the retain log, sentence encoder, NLI model,
    /// refusal pool and the metric settings.
    pub metrics: String,
}

/// The [`EvalKeys`] of evaluating the model in `model_dir` with `cfg`.
pub fn fingerprint(model_dir: &Path, cfg: &EvalConfig) -> Result<EvalKeys> {
    use crate::util::hash::path_sha256;
    let hash = |p: &Option<PathBuf>| -> Result<Value> {
        Ok(match p {
            Some(p) if p.exists() => path_sha256(p)?.into(),
            Some(p) => format!("missing: {}", p.display()).into(),
            None => Value::Null,
        })
    };
    let mut sets = Map::new();
    for s in SetName::ALL {
        if let Ok(p) = cfg.file(s) {
            sets.insert(s.prefix().into(), path_sha256(&p)?.into());
        }
    }
    let passes = json!({
        "model": path_sha256(model_dir)?,
        "sets": sets,
        "reference_model": hash(&cfg.reference_model)?,
        "settings": [cfg.forget_split, cfg.holdout(), cfg.max_items, cfg.max_new_tokens,
                     cfg.max_len, cfg.prompt, cfg.batch_size, cfg.gen_batch_size, cfg.compat],
        "version": crate::VERSION,
    });
    let mut passes = passes;
    if let Some(f) = &cfg.answer_field {
        // only when set, so the keys of every earlier evaluation stay as they were
        passes["answer_field"] = f.as_str().into();
    }
    if !cfg.dtype.is_default() {
        passes["dtype"] = cfg.dtype.name().into();
    }
    let passes = crate::util::hash::sha256(passes.to_string().as_bytes());
    let metrics = json!({
        "passes": passes,
        "retain_logs": hash(&cfg.retain_logs)?,
        "embedder": hash(&cfg.embedder_dir())?,
        "nli": hash(&cfg.nli)?,
        "refusals": hash(&cfg.refusals)?,
        "settings": [cfg.min_k, cfg.sets],
        "extra_metrics": cfg.extra_metrics,
    });
    Ok(EvalKeys {
        passes,
        metrics: crate::util::hash::sha256(metrics.to_string().as_bytes()),
    })
}

/// A fingerprint of a model directory's content (SHA-256 over its files' names and bytes).
pub fn dir_fingerprint(model_dir: &Path) -> Result<String> {
    crate::util::hash::path_sha256(model_dir)
}
