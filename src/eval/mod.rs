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
pub mod exclusive;
pub mod formula;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::data::{read_qa, Formatter, PromptStyle, QaItem};
use crate::error::{Error, Result};
use crate::eval::formula::{entropy, ks, memorization, mia, rouge, similarity, tofu};
use crate::infer::generate::{generate_with, GenConfig, Stops};
use crate::infer::score::{score_stats_masked, TokenStats};
use crate::model::bert::{Bert, Classifier};
use crate::model::hf::atomic_write;
use crate::model::tokenizer::Tok;
use crate::model::Llama;
use crate::util::guard::Input;

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
    fn options(self) -> bool {
        matches!(self, Self::Ra | Self::Wf)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Benchmark directory in the TOFU layout: `{split}_perturbed.jsonl` (or `{split}.jsonl`),
    /// `retain_perturbed.jsonl`, `real_authors_perturbed.jsonl`, `world_facts_perturbed.jsonl`,
    /// `holdoutNN.jsonl`. Sets whose file is absent are reported as skipped.
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
            data: PathBuf::from("../shared/data/tofu"),
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
    }
}

impl EvalConfig {
    fn holdout(&self) -> String {
        self.holdout_split.clone().unwrap_or_else(|| {
            self.forget_split
                .strip_prefix("forget")
                .map(|n| format!("holdout{n}"))
                .unwrap_or_else(|| "holdout".into())
        })
    }

    /// The file of a set, or why there is none.
    fn file(&self, set: SetName) -> std::result::Result<PathBuf, String> {
        let candidates: Vec<String> = match set {
            SetName::Forget => vec![
                format!("{}_perturbed.jsonl", self.forget_split),
                format!("{}.jsonl", self.forget_split),
            ],
            SetName::Retain => vec!["retain_perturbed.jsonl".into()],
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

    fn embedder_dir(&self) -> Option<PathBuf> {
        embedder_dir(self.embedder.as_ref())
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
    fn check_inputs(&self) -> Result<Option<Map<String, Value>>> {
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
        if logs.get("forget_truth_ratio").and_then(scores).is_none() {
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
/// `.cache/models/all-MiniLM-L6-v2` when present.
pub fn embedder_dir(explicit: Option<&PathBuf>) -> Option<PathBuf> {
    explicit
        .cloned()
        .or_else(|| std::env::var_os("UNLEARN_MINILM_DIR").map(PathBuf::from))
        .or_else(|| {
            let p = PathBuf::from(".cache/models/all-MiniLM-L6-v2");
            p.exists().then_some(p)
        })
}

/// A benchmark name or directory: `tofu` = $UNLEARN_TOFU_DIR, else `../shared/data/tofu`, else
/// `data/tofu`; anything else is taken as a directory.
pub fn resolve_benchmark(name: &str) -> Result<PathBuf> {
    if name != "tofu" {
        let p = PathBuf::from(name);
        return if p.is_dir() {
            Ok(p)
        } else {
            Err(Error::Invalid(format!(
                "benchmark {name:?}: not `tofu` and not a directory"
            )))
        };
    }
    let mut tried = vec![];
    for p in std::env::var_os("UNLEARN_TOFU_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            PathBuf::from("../shared/data/tofu"),
            PathBuf::from("data/tofu"),
        ])
    {
        if p.is_dir() {
            return Ok(p);
        }
        tried.push(p.display().to_string());
    }
    Err(Error::Invalid(format!(
        "TOFU data not found (tried {}); set UNLEARN_TOFU_DIR or pass --benchmark DIR",
        tried.join(", ")
    )))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Generation {
    text: String,
    tokens: Vec<u32>,
}

/// Per-item results of the expensive passes over one set.
#[derive(Default, Serialize, Deserialize)]
struct SetCache {
    answer: Option<Vec<TokenStats>>,
    para: Option<Vec<TokenStats>>,
    /// [item][option]
    pert: Option<Vec<Vec<TokenStats>>>,
    generation: Option<Vec<Generation>>,
    /// Answer stats under the reference model.
    reference: Option<Vec<TokenStats>>,
    #[serde(skip)]
    gen_emb: Option<Vec<Vec<f32>>>,
    #[serde(skip)]
    ans_emb: Option<Vec<Vec<f32>>>,
}

#[derive(Default, Serialize, Deserialize)]
struct Cache {
    /// [`EvalKeys::passes`] of the per-item results below.
    fingerprint: String,
    /// [`EvalKeys::metrics`] of the metrics in TOFU_EVAL.json beside it.
    #[serde(default)]
    metrics_key: String,
    sets: BTreeMap<SetName, SetCache>,
}

/// One metric of the suite.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Metric {
    Prob(SetName),
    ParaProb(SetName),
    PertProb(SetName),
    NormProb(SetName),
    TruthRatio(SetName),
    Rouge(SetName),
    Entropy(SetName),
    Cosine(SetName),
    Entailment(SetName),
    Refusal(SetName),
    ExactMem(SetName),
    Extraction(SetName),
    Mia(Attack),
    PrivLeak,
    ForgetQuality,
    ForgetEfficacy,
    ModelUtility,
    CloserLookUtility,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Attack {
    Loss,
    Zlib,
    MinK,
    MinKpp,
    Reference,
}

impl Metric {
    fn name(self) -> String {
        use Metric::*;
        match self {
            Prob(s) => format!("{}_Q_A_Prob", s.prefix()),
            ParaProb(s) => format!("{}_Q_A_PARA_Prob", s.prefix()),
            PertProb(s) => format!("{}_Q_A_PERT_Prob", s.prefix()),
            NormProb(s) => format!("{}_Q_A_Prob_normalised", s.prefix()),
            TruthRatio(SetName::Forget) => "forget_truth_ratio".into(),
            TruthRatio(s) => format!("{}_Truth_Ratio", s.prefix()),
            Rouge(s) => format!("{}_Q_A_ROUGE", s.prefix()),
            Entropy(s) => format!("{}_token_entropy", s.prefix()),
            Cosine(s) => format!("{}_cosine_similarity", s.prefix()),
            Entailment(s) => format!("{}_entailment_score", s.prefix()),
            Refusal(s) => format!("{}_refusal_rate", s.prefix()),
            ExactMem(SetName::Forget) => "exact_memorization".into(),
            ExactMem(s) => format!("{}_exact_memorization", s.prefix()),
            Extraction(SetName::Forget) => "extraction_strength".into(),
            Extraction(s) => format!("{}_extraction_strength", s.prefix()),
            Mia(a) => match a {
                Attack::Loss => "mia_loss",
                Attack::Zlib => "mia_zlib",
                Attack::MinK => "mia_min_k",
                Attack::MinKpp => "mia_min_k_plus_plus",
                Attack::Reference => "mia_reference",
            }
            .into(),
            PrivLeak => "privleak".into(),
            ForgetQuality => "forget_quality".into(),
            ForgetEfficacy => "forget_efficacy".into(),
            ModelUtility => "model_utility".into(),
            CloserLookUtility => "closer_look_model_utility".into(),
        }
    }

    /// Every metric, dependencies before the metrics derived from them.
    fn all() -> Vec<Metric> {
        use Metric::*;
        let mut v = vec![];
        for s in [SetName::Forget, SetName::Retain, SetName::Ra, SetName::Wf] {
            v.push(Prob(s));
            if s.options() {
                v.extend([PertProb(s), NormProb(s)]);
            } else {
                v.extend([ParaProb(s), PertProb(s)]);
            }
            v.extend([
                TruthRatio(s),
                Rouge(s),
                Entropy(s),
                Cosine(s),
                Entailment(s),
                Refusal(s),
            ]);
            if !s.options() {
                v.extend([ExactMem(s), Extraction(s)]);
            }
        }
        for a in [
            Attack::Loss,
            Attack::Zlib,
            Attack::MinK,
            Attack::MinKpp,
            Attack::Reference,
        ] {
            v.push(Mia(a));
        }
        v.extend([
            PrivLeak,
            ForgetQuality,
            ForgetEfficacy,
            ModelUtility,
            CloserLookUtility,
        ]);
        v
    }
}

/// A metric that could not be computed, and why.
fn skipped(reason: impl Into<String>) -> Value {
    json!({"agg_value": Value::Null, "skipped": reason.into()})
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// `{"agg_value": mean, "value_by_index": {"i": {"score": v_i}}}`.
fn per_item_scores(v: &[f64]) -> Value {
    let by: Map<String, Value> = v
        .iter()
        .enumerate()
        .map(|(i, &x)| (i.to_string(), json!({"score": x})))
        .collect();
    json!({"agg_value": mean(v), "value_by_index": by})
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

/// A sentence encoder or NLI model, loaded on first use; the error is kept as the skip reason.
type Lazy<T> = Option<std::result::Result<T, String>>;

pub struct Evaluator<'a> {
    model: &'a Llama,
    fmt: Formatter<'a>,
    cfg: &'a EvalConfig,
    sets: BTreeMap<SetName, std::result::Result<Vec<QaItem>, String>>,
    cache: Cache,
    embedder: Lazy<Bert>,
    nli: Lazy<Classifier>,
    refusal_emb: Option<Vec<Vec<f32>>>,
    /// The retain model's evaluation, read and checked when the evaluator is made.
    retain_logs: Option<Map<String, Value>>,
    progress: bool,
    passes: Vec<String>,
}

impl<'a> Evaluator<'a> {
    pub fn new(
        model: &'a Llama,
        tok: &'a Tok,
        cfg: &'a EvalConfig,
        progress: bool,
    ) -> Result<Self> {
        let fmt = Formatter::new(tok, cfg.prompt, cfg.max_len)?;
        let retain_logs = cfg.check_inputs()?;
        let mut sets = BTreeMap::new();
        for s in SetName::ALL {
            let v = if !cfg.sets.contains(&s) {
                Err("set not selected (`sets`)".to_string())
            } else {
                match cfg.file(s) {
                    Ok(p) => {
                        let mut items = read_qa(&p)?;
                        if cfg.max_items > 0 {
                            items.truncate(cfg.max_items);
                        }
                        Ok(items)
                    }
                    Err(why) => Err(why),
                }
            };
            sets.insert(s, v);
        }
        Ok(Evaluator {
            model,
            fmt,
            cfg,
            sets,
            cache: Cache::default(),
            // a model given explicitly must load: an error now, not a skipped metric later
            embedder: match &cfg.embedder {
                Some(d) => Some(Ok(Bert::load(d, model.device()).map_err(|e| {
                    Error::Invalid(format!("sentence encoder {}: {e}", d.display()))
                })?)),
                None => None,
            },
            nli: match &cfg.nli {
                Some(d) => Some(Ok(Classifier::load(d, model.device()).map_err(|e| {
                    Error::Invalid(format!("NLI model {}: {e}", d.display()))
                })?)),
                None => None,
            },
            refusal_emb: None,
            retain_logs,
            progress,
            passes: vec![],
        })
    }

    fn items(&self, s: SetName) -> std::result::Result<&[QaItem], String> {
        match &self.sets[&s] {
            Ok(v) => Ok(v),
            Err(e) => Err(format!("{} set unavailable: {e}", s.prefix())),
        }
    }

    fn slot(&mut self, s: SetName) -> &mut SetCache {
        self.cache.sets.entry(s).or_default()
    }

    fn bar(&mut self, n: usize, what: String) -> indicatif::ProgressBar {
        let b = crate::util::progress::bar(n as u64, &what, self.progress);
        self.passes.push(what);
        b
    }

    /// Teacher-forced stats of (question, text) pairs.
    fn stats_of(&mut self, pairs: &[(&str, &str)], what: String) -> Result<Vec<TokenStats>> {
        let enc = encode_pairs(&self.fmt, self.cfg.compat, pairs)?;
        let bar = self.bar(enc.len(), what);
        let mask = self.mask_token(self.fmt.tok);
        let out = score_stats_masked(self.model, &enc, self.cfg.batch_size, mask, |n| {
            bar.inc(n as u64)
        })?;
        bar.finish_and_clear();
        Ok(out)
    }

    /// The token masked out of attention in compat mode (the pad token).
    fn mask_token(&self, tok: &Tok) -> Option<u32> {
        (self.cfg.compat == Compat::OpenUnlearning).then_some(tok.pad_id)
    }

    /// Token stats as a metric sees them: in compat mode without the last labelled token.
    fn metric_stats(&self, st: &[TokenStats]) -> Vec<TokenStats> {
        match self.cfg.compat {
            Compat::None => st.to_vec(),
            Compat::OpenUnlearning => st.iter().map(drop_last).collect(),
        }
    }

    fn answer(&mut self, s: SetName) -> Result<std::result::Result<&[TokenStats], String>> {
        if self.slot(s).answer.is_none() {
            let items = match self.items(s) {
                Ok(v) => v.to_vec(),
                Err(e) => return Ok(Err(e)),
            };
            let pairs: Vec<_> = items.iter().map(|i| (&*i.question, &*i.answer)).collect();
            let v = self.stats_of(&pairs, format!("{} answers", s.prefix()))?;
            self.slot(s).answer = Some(v);
        }
        Ok(Ok(self.cache.sets[&s].answer.as_deref().unwrap()))
    }

    fn para(&mut self, s: SetName) -> Result<std::result::Result<&[TokenStats], String>> {
        if self.slot(s).para.is_none() {
            let items = match self.items(s) {
                Ok(v) => v.to_vec(),
                Err(e) => return Ok(Err(e)),
            };
            if let Some(i) = items.iter().position(|i| i.paraphrased_answer.is_none()) {
                return Ok(Err(format!(
                    "{} item {i} has no paraphrased_answer",
                    s.prefix()
                )));
            }
            let pairs: Vec<_> = items
                .iter()
                .map(|i| (&*i.question, i.paraphrased_answer.as_deref().unwrap()))
                .collect();
            let v = self.stats_of(&pairs, format!("{} paraphrases", s.prefix()))?;
            self.slot(s).para = Some(v);
        }
        Ok(Ok(self.cache.sets[&s].para.as_deref().unwrap()))
    }

    fn pert(&mut self, s: SetName) -> Result<std::result::Result<&[Vec<TokenStats>], String>> {
        if self.slot(s).pert.is_none() {
            let items = match self.items(s) {
                Ok(v) => v.to_vec(),
                Err(e) => return Ok(Err(e)),
            };
            if let Some(i) = items.iter().position(|i| i.perturbed_answer.is_empty()) {
                return Ok(Err(format!(
                    "{} item {i} has no perturbed_answer",
                    s.prefix()
                )));
            }
            let pairs: Vec<_> = items
                .iter()
                .flat_map(|i| i.perturbed_answer.iter().map(|p| (&*i.question, &**p)))
                .collect();
            let flat = self.stats_of(&pairs, format!("{} perturbed", s.prefix()))?;
            let mut it = flat.into_iter();
            let v = items
                .iter()
                .map(|i| it.by_ref().take(i.perturbed_answer.len()).collect())
                .collect();
            self.slot(s).pert = Some(v);
        }
        Ok(Ok(self.cache.sets[&s].pert.as_deref().unwrap()))
    }

    fn generation(&mut self, s: SetName) -> Result<std::result::Result<&[Generation], String>> {
        if self.slot(s).generation.is_none() {
            let items = match self.items(s) {
                Ok(v) => v.to_vec(),
                Err(e) => return Ok(Err(e)),
            };
            let prompts = items
                .iter()
                .map(|i| self.fmt.encode_prompt(&i.question))
                .collect::<Result<Vec<_>>>()?;
            let mut order: Vec<usize> = (0..prompts.len()).collect();
            order.sort_by_key(|&i| prompts[i].len());
            let stops = Stops::for_model(&self.model.cfg, self.fmt.tok);
            let gcfg = GenConfig {
                max_new_tokens: self.cfg.max_new_tokens,
                mask_token: self.mask_token(self.fmt.tok),
                ..GenConfig::default()
            };
            let bar = self.bar(items.len(), format!("{} generation", s.prefix()));
            let mut out = vec![None; items.len()];
            for chunk in order.chunks(self.cfg.gen_batch_size.max(1)) {
                let p: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
                let ids: Vec<u64> = chunk.iter().map(|&i| i as u64).collect();
                let g = generate_with(self.model, &p, &ids, &stops, self.fmt.tok.pad_id, &gcfg)?;
                for (&i, tokens) in chunk.iter().zip(g) {
                    let text = self.fmt.tok.decode(&tokens, true)?.trim().to_string();
                    out[i] = Some(Generation { text, tokens });
                }
                bar.inc(chunk.len() as u64);
            }
            bar.finish_and_clear();
            self.slot(s).generation = Some(out.into_iter().map(Option::unwrap).collect());
        }
        Ok(Ok(self.cache.sets[&s].generation.as_deref().unwrap()))
    }

    fn embedder(&mut self) -> std::result::Result<&Bert, String> {
        if self.embedder.is_none() {
            self.embedder = Some(match self.cfg.embedder_dir() {
                None => Err(
                    "no sentence encoder: pass --embedder DIR or set UNLEARN_MINILM_DIR \
                             (scripts/fetch_assets.sh downloads all-MiniLM-L6-v2)"
                        .into(),
                ),
                Some(d) => Bert::load(&d, self.model.device())
                    .map_err(|e| format!("sentence encoder {}: {e}", d.display())),
            });
        }
        self.embedder
            .as_ref()
            .unwrap()
            .as_ref()
            .map_err(|e| e.clone())
    }

    /// (generation embeddings, answer embeddings) of a set.
    fn embeddings(&mut self, s: SetName) -> Result<std::result::Result<(), String>> {
        if self.slot(s).gen_emb.is_some() {
            return Ok(Ok(()));
        }
        let gens: Vec<String> = match self.generation(s)? {
            Ok(g) => g.iter().map(|g| g.text.clone()).collect(),
            Err(e) => return Ok(Err(e)),
        };
        let answers: Vec<String> = self
            .items(s)
            .unwrap()
            .iter()
            .map(|i| i.answer.clone())
            .collect();
        let bs = self.cfg.batch_size.max(8);
        let emb = match self.embedder() {
            Ok(e) => e,
            Err(e) => return Ok(Err(e)),
        };
        let g = emb.embed(&gens.iter().map(|s| s.as_str()).collect::<Vec<_>>(), bs)?;
        let a = emb.embed(&answers.iter().map(|s| s.as_str()).collect::<Vec<_>>(), bs)?;
        let slot = self.slot(s);
        slot.gen_emb = Some(g);
        slot.ans_emb = Some(a);
        Ok(Ok(()))
    }

    fn retain_logs(&self) -> std::result::Result<&Map<String, Value>, String> {
        self.retain_logs.as_ref().ok_or_else(|| {
            "no retain log (--retain-logs: TOFU_EVAL.json of the retain model)".into()
        })
    }

    /// Compute one metric; `done` holds the metrics computed (or loaded) so far.
    fn compute(&mut self, m: Metric, done: &Map<String, Value>) -> Result<Value> {
        use Metric::*;
        macro_rules! get {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(why) => return Ok(skipped(why)),
                }
            };
        }
        let agg = |name: &str| done.get(name).and_then(|v| v["agg_value"].as_f64());
        Ok(match m {
            Prob(s) => {
                let st = get!(self.answer(s)?);
                let by: Map<String, Value> = st
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        (
                            i.to_string(),
                            json!({"prob": t.prob(), "avg_loss": t.avg_loss()}),
                        )
                    })
                    .collect();
                json!({"agg_value": mean(&st.iter().map(|t| t.prob()).collect::<Vec<_>>()), "value_by_index": by})
            }
            ParaProb(s) => {
                let st = get!(self.para(s)?);
                let by: Map<String, Value> = st
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        (
                            i.to_string(),
                            json!({"prob": t.prob(), "avg_loss": t.avg_loss()}),
                        )
                    })
                    .collect();
                json!({"agg_value": mean(&st.iter().map(|t| t.prob()).collect::<Vec<_>>()), "value_by_index": by})
            }
            PertProb(s) => {
                let st = get!(self.pert(s)?);
                let all: Vec<f64> = st.iter().flatten().map(|t| t.prob()).collect();
                let by: Map<String, Value> = st
                    .iter()
                    .enumerate()
                    .map(|(i, opts)| {
                        let p: Vec<f64> = opts.iter().map(|t| t.prob()).collect();
                        let l: Vec<f64> = opts.iter().map(|t| t.avg_loss()).collect();
                        (i.to_string(), json!({"prob": p, "avg_loss": l}))
                    })
                    .collect();
                json!({"agg_value": mean(&all), "value_by_index": by})
            }
            NormProb(s) => {
                let a: Vec<f64> = get!(self.answer(s)?).iter().map(|t| t.prob()).collect();
                let w: Vec<Vec<f64>> = get!(self.pert(s)?)
                    .iter()
                    .map(|o| o.iter().map(|t| t.prob()).collect())
                    .collect();
                let v: Vec<f64> = a
                    .iter()
                    .zip(&w)
                    .map(|(&p, w)| tofu::normalised_prob(p, w))
                    .collect();
                let by: Map<String, Value> = v
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| (i.to_string(), json!({"prob": x})))
                    .collect();
                json!({"agg_value": mean(&v), "value_by_index": by})
            }
            TruthRatio(s) => {
                let reference: Vec<f64> = if s.options() {
                    get!(self.answer(s)?).iter().map(|t| t.prob()).collect()
                } else {
                    get!(self.para(s)?).iter().map(|t| t.prob()).collect()
                };
                let pert = get!(self.pert(s)?);
                let r: Vec<f64> = pert
                    .iter()
                    .zip(&reference)
                    .map(|(o, &p)| {
                        tofu::truth_ratio(&o.iter().map(|t| t.prob()).collect::<Vec<_>>(), p)
                    })
                    .collect();
                let a = if s == SetName::Forget {
                    tofu::truth_ratio_forget(&r)
                } else {
                    tofu::truth_ratio_other(&r)
                };
                let mut v = per_item_scores(&r);
                v["agg_value"] = json!(a);
                v
            }
            Rouge(s) => {
                let items = get!(self.items(s)).to_vec();
                let gens = get!(self.generation(s)?);
                let mut rl = vec![];
                let mut by = Map::new();
                for (i, (it, g)) in items.iter().zip(gens).enumerate() {
                    let r = rouge::rouge_l(&it.answer, &g.text);
                    rl.push(r.recall);
                    by.insert(
                        i.to_string(),
                        json!({"rouge1_recall": rouge::rouge1_recall(&it.answer, &g.text),
                               "rougeL_f1": r.fmeasure, "rougeL_recall": r.recall,
                               "input": it.question, "ground_truth": it.answer,
                               "generation": g.text}),
                    );
                }
                json!({"agg_value": mean(&rl), "value_by_index": by})
            }
            Entropy(s) => {
                let gens = get!(self.generation(s)?);
                per_item_scores(
                    &gens
                        .iter()
                        .map(|g| entropy::token_entropy(&g.tokens))
                        .collect::<Vec<_>>(),
                )
            }
            Cosine(s) => {
                get!(self.embeddings(s)?);
                let c = &self.cache.sets[&s];
                let v: Vec<f64> = c
                    .gen_emb
                    .as_ref()
                    .unwrap()
                    .iter()
                    .zip(c.ans_emb.as_ref().unwrap())
                    .map(|(g, a)| similarity::cosine_similarity(g, a))
                    .collect();
                per_item_scores(&v)
            }
            Refusal(s) => {
                get!(self.embeddings(s)?);
                if self.refusal_emb.is_none() {
                    let pool = crate::data::refusals::load(self.cfg.refusals.as_deref())?;
                    let e = get!(self.embedder())
                        .embed(&pool.iter().map(|s| s.as_str()).collect::<Vec<_>>(), 16)?;
                    self.refusal_emb = Some(e);
                }
                let pool = self.refusal_emb.as_ref().unwrap();
                let v: Vec<f64> = self.cache.sets[&s]
                    .gen_emb
                    .as_ref()
                    .unwrap()
                    .iter()
                    .map(|g| similarity::refusal_score(g, pool))
                    .collect();
                per_item_scores(&v)
            }
            Entailment(s) => {
                let items = get!(self.items(s)).to_vec();
                let gens: Vec<String> = get!(self.generation(s)?)
                    .iter()
                    .map(|g| g.text.clone())
                    .collect();
                if self.nli.is_none() {
                    self.nli = Some(match &self.cfg.nli {
                        None => Err("no NLI model (--nli DIR: a BERT, RoBERTa or DeBERTa-v2/v3 \
                             sequence classifier with an entailment label, e.g. \
                             sileod/deberta-v3-base-tasksource-nli)"
                            .into()),
                        Some(d) => Classifier::load(d, self.model.device())
                            .map_err(|e| format!("NLI model: {e}")),
                    });
                }
                let nli = get!(self.nli.as_ref().unwrap().as_ref().map_err(|e| e.clone()));
                let label = get!(nli
                    .entailment_label()
                    .ok_or("the NLI model's id2label has no entailment label"));
                // as the closer-look code pairs them: on the forget set premise = the generation,
                // hypothesis = the answer (does what the model said still imply the fact?); on
                // the other sets premise = the answer, hypothesis = the generation (is what the
                // model said supported by the fact?)
                let pairs: Vec<(&str, &str)> = gens
                    .iter()
                    .zip(&items)
                    .map(|(g, i)| {
                        if s == SetName::Forget {
                            (g.as_str(), i.answer.as_str())
                        } else {
                            (i.answer.as_str(), g.as_str())
                        }
                    })
                    .collect();
                let logits = nli.classify(&pairs, self.cfg.batch_size.max(8))?;
                let v: Vec<f64> = logits
                    .iter()
                    .zip(gens.iter().zip(&items))
                    .map(|(l, (g, i))| {
                        similarity::entailment(l, label, rouge::rouge_l(&i.answer, g).recall)
                    })
                    .collect();
                per_item_scores(&v)
            }
            ExactMem(s) => {
                let st = get!(self.answer(s)?).to_vec();
                per_item_scores(
                    &self
                        .metric_stats(&st)
                        .iter()
                        .map(|t| memorization::exact_memorization(&t.hit))
                        .collect::<Vec<_>>(),
                )
            }
            Extraction(s) => {
                let st = get!(self.answer(s)?).to_vec();
                let es = match self.cfg.compat {
                    Compat::None => memorization::extraction_strength,
                    Compat::OpenUnlearning => memorization::extraction_strength_open_unlearning,
                };
                per_item_scores(
                    &self
                        .metric_stats(&st)
                        .iter()
                        .map(|t| es(&t.hit))
                        .collect::<Vec<_>>(),
                )
            }
            Mia(a) => {
                let k = self.cfg.min_k;
                let f_all = get!(self.answer(SetName::Forget)?).to_vec();
                let h_all = get!(self.answer(SetName::Holdout)?).to_vec();
                // Min-K% and Min-K%++ leave out the last label in compat mode; LOSS, zlib and
                // the reference attack use every label (avg_loss) in both
                let (f, h) = match a {
                    Attack::MinK | Attack::MinKpp => {
                        (self.metric_stats(&f_all), self.metric_stats(&h_all))
                    }
                    _ => (f_all.clone(), h_all.clone()),
                };
                let (fs, hs): (Vec<f64>, Vec<f64>) = match a {
                    Attack::Loss => (
                        f.iter().map(mia::loss_score).collect(),
                        h.iter().map(mia::loss_score).collect(),
                    ),
                    Attack::MinK => (
                        f.iter().map(|t| mia::min_k_score(t, k)).collect(),
                        h.iter().map(|t| mia::min_k_score(t, k)).collect(),
                    ),
                    Attack::MinKpp => (
                        f.iter().map(|t| mia::min_k_pp_score(t, k)).collect(),
                        h.iter().map(|t| mia::min_k_pp_score(t, k)).collect(),
                    ),
                    Attack::Zlib => {
                        let ft = get!(self.zlib_texts(SetName::Forget)?);
                        let ht = get!(self.zlib_texts(SetName::Holdout)?);
                        (
                            f.iter()
                                .zip(&ft)
                                .map(|(t, x)| mia::zlib_score(t, x))
                                .collect(),
                            h.iter()
                                .zip(&ht)
                                .map(|(t, x)| mia::zlib_score(t, x))
                                .collect(),
                        )
                    }
                    Attack::Reference => {
                        let (fr, hr) = get!(self.reference()?);
                        (
                            f.iter()
                                .zip(&fr)
                                .map(|(t, r)| mia::reference_score(t, r))
                                .collect(),
                            h.iter()
                                .zip(&hr)
                                .map(|(t, r)| mia::reference_score(t, r))
                                .collect(),
                        )
                    }
                };
                let auc = mia::auc(&fs, &hs);
                json!({"agg_value": auc, "auc": auc,
                       "forget": per_item_scores(&fs), "holdout": per_item_scores(&hs)})
            }
            PrivLeak => {
                let model_auc = get!(agg("mia_min_k").ok_or("mia_min_k unavailable"));
                let logs = get!(self.retain_logs());
                let ret = get!(logs
                    .get("mia_min_k")
                    .and_then(|v| v["agg_value"].as_f64())
                    .ok_or("the retain log has no mia_min_k agg_value"));
                json!({"agg_value": mia::privleak(model_auc, ret), "auc": model_auc, "retain_auc": ret,
                       "sign": "MUSE / open-unlearning: ((1-auc) - (1-retain_auc)) / (1-retain_auc) * 100; negative: the forget set is more recognisable than under the retain model (under-unlearning); positive: less (over-unlearning); 0: like retraining"})
            }
            ForgetQuality => {
                let ours: Vec<f64> = get!(done
                    .get("forget_truth_ratio")
                    .and_then(scores)
                    .ok_or("forget_truth_ratio unavailable"));
                let logs = get!(self.retain_logs());
                let theirs = get!(logs
                    .get("forget_truth_ratio")
                    .and_then(scores)
                    .ok_or("the retain log has no forget_truth_ratio value_by_index"));
                let r = ks::ks_2samp(&ours, &theirs);
                json!({"agg_value": r.pvalue, "ks_statistic": r.statistic})
            }
            ForgetEfficacy => {
                // 1 − mean(ROUGE, Prob, 1 − TR_forget, CS, ES) over the forget set
                let mut parts = Map::new();
                let mut missing = vec![];
                for (label, name, flip) in [
                    ("rouge", "forget_Q_A_ROUGE", false),
                    ("prob", "forget_Q_A_Prob", false),
                    ("truth_ratio", "forget_truth_ratio", true),
                    ("cosine_similarity", "forget_cosine_similarity", false),
                    ("entailment_score", "forget_entailment_score", false),
                ] {
                    match agg(name) {
                        Some(x) => {
                            parts.insert(label.into(), json!(if flip { 1.0 - x } else { x }));
                        }
                        None => missing.push(name),
                    }
                }
                if parts.is_empty() {
                    return Ok(skipped("no forget-set metrics"));
                }
                let vals: Vec<f64> = parts.values().map(|v| v.as_f64().unwrap()).collect();
                let mut v = json!({"agg_value": 1.0 - mean(&vals), "components": parts});
                if !missing.is_empty() {
                    v["without"] = json!(missing);
                }
                v
            }
            ModelUtility => {
                let names = [
                    "retain_Q_A_Prob",
                    "retain_Q_A_ROUGE",
                    "retain_Truth_Ratio",
                    "ra_Q_A_Prob_normalised",
                    "ra_Q_A_ROUGE",
                    "ra_Truth_Ratio",
                    "wf_Q_A_Prob_normalised",
                    "wf_Q_A_ROUGE",
                    "wf_Truth_Ratio",
                ];
                let mut vals = vec![];
                for n in names {
                    vals.push(get!(agg(n).ok_or(format!("{n} unavailable"))));
                }
                json!({"agg_value": tofu::harmonic_mean(&vals)})
            }
            CloserLookUtility => {
                // harmonic mean of {Prob, ROUGE, TR, TE, CS, ES} on retain, ra, wf
                let mut vals = vec![];
                let mut missing = vec![];
                for p in ["retain", "ra", "wf"] {
                    let prob = if p == "retain" {
                        "retain_Q_A_Prob".to_string()
                    } else {
                        format!("{p}_Q_A_Prob_normalised")
                    };
                    let tr = if p == "retain" {
                        "retain_Truth_Ratio".to_string()
                    } else {
                        format!("{p}_Truth_Ratio")
                    };
                    for n in [
                        prob,
                        format!("{p}_Q_A_ROUGE"),
                        tr,
                        format!("{p}_token_entropy"),
                        format!("{p}_cosine_similarity"),
                        format!("{p}_entailment_score"),
                    ] {
                        match agg(&n) {
                            Some(x) => vals.push(x),
                            None => missing.push(n),
                        }
                    }
                }
                if vals.is_empty() {
                    return Ok(skipped("no non-forget metrics"));
                }
                let mut v =
                    json!({"agg_value": tofu::harmonic_mean(&vals), "n_values": vals.len()});
                if !missing.is_empty() {
                    v["without"] = json!(missing);
                }
                v
            }
        })
    }

    /// The texts zlib compresses: the answers, or in compat mode the labelled tokens decoded
    /// without special tokens (open-unlearning's `extract_target_texts_from_processed_data`).
    fn zlib_texts(&mut self, s: SetName) -> Result<std::result::Result<Vec<String>, String>> {
        let items = match self.items(s) {
            Ok(v) => v.to_vec(),
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok(match self.cfg.compat {
            Compat::None => items.into_iter().map(|i| i.answer).collect(),
            Compat::OpenUnlearning => items
                .iter()
                .map(|i| {
                    let e = self.fmt.encode_qa_compat(&i.question, &i.answer)?;
                    self.fmt.tok.decode(&e.ids[e.n_prompt..], true)
                })
                .collect::<Result<_>>()?,
        }))
    }

    /// Answer stats of the forget and holdout sets under the reference model.
    fn reference(
        &mut self,
    ) -> Result<std::result::Result<(Vec<TokenStats>, Vec<TokenStats>), String>> {
        let Some(dir) = self.cfg.reference_model.clone() else {
            return Ok(Err(
                "no reference model (--reference-model DIR, e.g. the retain model)".into(),
            ));
        };
        if self.slot(SetName::Forget).reference.is_none()
            || self.slot(SetName::Holdout).reference.is_none()
        {
            let md = crate::model::hf::ModelDir::load(&dir, self.model.device())?;
            let f = Formatter::new(&md.tok, self.cfg.prompt, self.cfg.max_len)?;
            for s in [SetName::Forget, SetName::Holdout] {
                let items = match self.items(s) {
                    Ok(v) => v.to_vec(),
                    Err(e) => return Ok(Err(e)),
                };
                let pairs: Vec<(&str, &str)> = items
                    .iter()
                    .map(|i| (i.question.as_str(), i.answer.as_str()))
                    .collect();
                let enc = encode_pairs(&f, self.cfg.compat, &pairs)?;
                let bar = self.bar(enc.len(), format!("{} reference", s.prefix()));
                let mask = self.mask_token(&md.tok);
                let st = score_stats_masked(&md.model, &enc, self.cfg.batch_size, mask, |n| {
                    bar.inc(n as u64)
                })?;
                bar.finish_and_clear();
                self.slot(s).reference = Some(st);
            }
        }
        let c = &self.cache.sets;
        Ok(Ok((
            c[&SetName::Forget].reference.clone().unwrap(),
            c[&SetName::Holdout].reference.clone().unwrap(),
        )))
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
        let mut done: Map<String, Value> = Map::new();
        if let (Some(cp), Some(k), Some(ep)) = (&cache_path, &keys, &eval_path) {
            let old: Option<Cache> = if cp.exists() {
                Some(crate::error::read_json(cp)?)
            } else {
                None
            };
            let metrics_valid = old
                .as_ref()
                .is_some_and(|c| c.fingerprint == k.passes && c.metrics_key == k.metrics);
            if metrics_valid && !overwrite && ep.exists() {
                done = crate::error::read_json(ep)?;
            } else {
                // results of other inputs or settings go before the new keys are written, so
                // a kill in between never pairs old metrics with new keys
                for f in [EVAL_FILE, SUMMARY_FILE] {
                    let p = out.unwrap().join(f);
                    if p.exists() {
                        std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
                    }
                }
            }
            if let Some(c) = old.filter(|c| c.fingerprint == k.passes && !overwrite) {
                self.cache = c;
            }
            self.cache.fingerprint = k.passes.clone();
            self.cache.metrics_key = k.metrics.clone();
            atomic_write(cp, serde_json::to_string(&self.cache).unwrap().as_bytes())?;
        }
        let mut computed = vec![];
        for m in Metric::all() {
            let name = m.name();
            if done.get(&name).is_some_and(|v| v.get("skipped").is_none()) {
                continue;
            }
            computed.push(name.clone());
            let v = self.compute(m, &done)?;
            done.insert(name, v);
            if let Some(p) = &eval_path {
                atomic_write(p, serde_json::to_string_pretty(&done).unwrap().as_bytes())?;
            }
            if let Some(p) = &cache_path {
                atomic_write(p, serde_json::to_string(&self.cache).unwrap().as_bytes())?;
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
            passes: std::mem::take(&mut self.passes),
        })
    }
}

/// Encode (question, answer) pairs for scoring, by the conventions of `compat`.
fn encode_pairs(
    f: &Formatter,
    compat: Compat,
    pairs: &[(&str, &str)],
) -> Result<Vec<crate::data::Encoded>> {
    pairs
        .iter()
        .map(|(q, a)| match compat {
            Compat::None => f.encode_qa(q, a),
            Compat::OpenUnlearning => f.encode_qa_compat(q, a),
        })
        .collect()
}

/// `t` without its last labelled token (open-unlearning's `tokenwise_logprobs`: "-1 to ignore
/// eos prediction").
fn drop_last(t: &TokenStats) -> TokenStats {
    let n = t.logp.len().saturating_sub(1);
    TokenStats {
        logp: t.logp[..n].to_vec(),
        hit: t.hit[..n].to_vec(),
        mu: t.mu[..n].to_vec(),
        var: t.var[..n].to_vec(),
    }
}

/// Per-item `score` values of a metric entry.
fn scores(v: &Value) -> Option<Vec<f64>> {
    let by = v.get("value_by_index")?.as_object()?;
    let mut items: Vec<(usize, f64)> = by
        .iter()
        .filter_map(|(k, x)| Some((k.parse().ok()?, x.get("score")?.as_f64()?)))
        .collect();
    items.sort_by_key(|x| x.0);
    Some(items.into_iter().map(|x| x.1).collect())
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
    let passes = crate::util::hash::sha256(passes.to_string().as_bytes());
    let metrics = json!({
        "passes": passes,
        "retain_logs": hash(&cfg.retain_logs)?,
        "embedder": hash(&cfg.embedder_dir())?,
        "nli": hash(&cfg.nli)?,
        "refusals": hash(&cfg.refusals)?,
        "settings": [cfg.min_k, cfg.sets],
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
