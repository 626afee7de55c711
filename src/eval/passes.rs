//! The model passes metrics read from, run once and shared: one teacher-forced pass per (set,
//! answer variant) gives every likelihood metric ([`TokenStats`]), one batched greedy
//! generation per set gives every generation metric, and the sentence encoder, the NLI model,
//! the reference model and the retain log are loaded on first use. Per-item results are kept in
//! a [`Cache`] (EVAL_CACHE.json), so a metric added later, or a resumed run, does not recompute
//! them.
//!
//! Every accessor returns `Err(Fail::Skip(why))` when what it needs is absent (a set without
//! its file, no sentence encoder, no retain log, …) and `Err(Fail::Error(e))` when something
//! fails; a metric passes both on with `?`.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::value::Fail;
use super::{Compat, EvalConfig, SetName};
use crate::data::{read_qa, Encoded, Formatter, QaItem};
use crate::error::{Error, Result};
use crate::infer::generate::{generate_with, GenConfig, Stops};
use crate::infer::score::{score_stats_masked, TokenStats};
use crate::model::bert::Bert;
use crate::model::nli::Classifier;
use crate::model::tokenizer::Tok;
use crate::model::Llama;

/// What a pass returns: the value, or why there is none.
pub type Got<T> = std::result::Result<T, Fail>;

/// Embeddings of a set's generations and of its answers.
pub type Embeddings<'x> = (&'x [Vec<f32>], &'x [Vec<f32>]);

/// One greedy generation: the decoded, trimmed text and the generated token ids.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
}

/// Per-item results of the expensive passes over one set.
#[derive(Default, Serialize, Deserialize)]
pub struct SetCache {
    answer: Option<Vec<TokenStats>>,
    para: Option<Vec<TokenStats>>,
    /// [item][option]
    pert: Option<Vec<Vec<TokenStats>>>,
    generation: Option<Vec<Generation>>,
    /// Answer stats under the reference model.
    reference: Option<Vec<TokenStats>>,
    /// Per-item values a metric computes with its own pass (see [`Passes::per_item`]), by a
    /// key the metric chooses (it names every setting the values depend on).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    extra: BTreeMap<String, Vec<f64>>,
    #[serde(skip)]
    gen_emb: Option<Vec<Vec<f32>>>,
    #[serde(skip)]
    ans_emb: Option<Vec<Vec<f32>>>,
}

/// EVAL_CACHE.json: the per-item pass results of every set, with the keys they were computed
/// under.
#[derive(Default, Serialize, Deserialize)]
pub struct Cache {
    /// [`super::EvalKeys::passes`] of the per-item results below.
    pub fingerprint: String,
    /// [`super::EvalKeys::metrics`] of the metrics in TOFU_EVAL.json beside it.
    #[serde(default)]
    pub metrics_key: String,
    sets: BTreeMap<SetName, SetCache>,
}

/// A sentence encoder or NLI model, loaded on first use; the error is kept as the skip reason.
type Lazy<T> = Option<std::result::Result<T, String>>;

/// The model under evaluation, its sets and the passes over them.
pub struct Passes<'a> {
    model: &'a Llama,
    fmt: Formatter<'a>,
    cfg: &'a EvalConfig,
    sets: BTreeMap<SetName, std::result::Result<Vec<QaItem>, String>>,
    pub(super) cache: Cache,
    embedder: Lazy<Bert>,
    nli: Lazy<Classifier>,
    refusal_emb: Option<Vec<Vec<f32>>>,
    /// The retain model's evaluation, read and checked when the passes are made.
    retain_logs: Option<Map<String, Value>>,
    progress: bool,
    /// Model passes run so far ("forget answers", "retain generation", …).
    pub(super) ran: Vec<String>,
}

impl<'a> Passes<'a> {
    /// Reads the selected sets and checks every input; a sentence encoder or NLI model given
    /// explicitly must load (an error now, not a skipped metric later).
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
                        if let Some(f) = &cfg.answer_field {
                            answers_from_field(&p, f, &mut items)?;
                        }
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
        let load = |what: &str, d: &std::path::Path, e: Error| {
            Error::Invalid(format!("{what} {}: {e}", d.display()))
        };
        Ok(Passes {
            model,
            fmt,
            cfg,
            sets,
            cache: Cache::default(),
            embedder: match &cfg.embedder {
                Some(d) => {
                    Some(Ok(Bert::load(d, model.device())
                        .map_err(|e| load("sentence encoder", d, e))?))
                }
                None => None,
            },
            nli: match &cfg.nli {
                Some(d) => Some(Ok(
                    Classifier::load(d, model.device()).map_err(|e| load("NLI model", d, e))?
                )),
                None => None,
            },
            refusal_emb: None,
            retain_logs,
            progress,
            ran: vec![],
        })
    }

    pub fn cfg(&self) -> &EvalConfig {
        self.cfg
    }

    pub fn model(&self) -> &'a Llama {
        self.model
    }

    /// The items of set `s`.
    pub fn items(&self, s: SetName) -> Got<&[QaItem]> {
        match &self.sets[&s] {
            Ok(v) => Ok(v),
            Err(e) => Err(Fail::skip(format!("{} set unavailable: {e}", s.prefix()))),
        }
    }

    fn slot(&mut self, s: SetName) -> &mut SetCache {
        self.cache.sets.entry(s).or_default()
    }

    fn got(&self, s: SetName) -> &SetCache {
        &self.cache.sets[&s]
    }

    /// A progress bar for a pass of `n` items, recorded in [`Passes::ran`].
    pub fn bar(&mut self, n: usize, what: String) -> indicatif::ProgressBar {
        let b = crate::util::progress::bar(n as u64, &what, self.progress);
        self.ran.push(what);
        b
    }

    /// The token masked out of attention in compat mode (the pad token).
    pub fn mask_token(&self, tok: &Tok) -> Option<u32> {
        (self.cfg.compat == Compat::OpenUnlearning).then_some(tok.pad_id)
    }

    /// [`Passes::mask_token`] of the evaluated model's tokenizer.
    pub fn own_mask_token(&self) -> Option<u32> {
        self.mask_token(self.fmt.tok)
    }

    /// (question, answer) of every item of `s`, encoded by the conventions of `compat`.
    pub fn encoded_answers(&self, s: SetName) -> Got<Vec<Encoded>> {
        let pairs: Vec<_> = self
            .items(s)?
            .iter()
            .map(|i| (&*i.question, &*i.answer))
            .collect();
        Ok(encode_pairs(&self.fmt, self.cfg.compat, &pairs)?)
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

    /// Token stats as a metric sees them: in compat mode without the last labelled token.
    pub fn metric_stats(&self, st: &[TokenStats]) -> Vec<TokenStats> {
        match self.cfg.compat {
            Compat::None => st.to_vec(),
            Compat::OpenUnlearning => st.iter().map(drop_last).collect(),
        }
    }

    /// Stats of the answers of `s`.
    pub fn answer(&mut self, s: SetName) -> Got<&[TokenStats]> {
        if self.slot(s).answer.is_none() {
            let items = self.items(s)?.to_vec();
            let pairs: Vec<_> = items.iter().map(|i| (&*i.question, &*i.answer)).collect();
            let v = self.stats_of(&pairs, format!("{} answers", s.prefix()))?;
            self.slot(s).answer = Some(v);
        }
        Ok(self.got(s).answer.as_deref().unwrap())
    }

    /// Stats of the paraphrased answers of `s`.
    pub fn para(&mut self, s: SetName) -> Got<&[TokenStats]> {
        if self.slot(s).para.is_none() {
            let items = self.items(s)?.to_vec();
            if let Some(i) = items.iter().position(|i| i.paraphrased_answer.is_none()) {
                return Err(Fail::skip(format!(
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
        Ok(self.got(s).para.as_deref().unwrap())
    }

    /// Stats of the perturbed answers of `s`, [item][option].
    pub fn pert(&mut self, s: SetName) -> Got<&[Vec<TokenStats>]> {
        if self.slot(s).pert.is_none() {
            let items = self.items(s)?.to_vec();
            if let Some(i) = items.iter().position(|i| i.perturbed_answer.is_empty()) {
                return Err(Fail::skip(format!(
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
        Ok(self.got(s).pert.as_deref().unwrap())
    }

    /// Greedy generations for the questions of `s`, batched by prompt length.
    pub fn generation(&mut self, s: SetName) -> Got<&[Generation]> {
        if self.slot(s).generation.is_none() {
            let items = self.items(s)?.to_vec();
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
        Ok(self.got(s).generation.as_deref().unwrap())
    }

    /// The generated texts of `s`.
    pub fn generated_texts(&mut self, s: SetName) -> Got<Vec<String>> {
        Ok(self.generation(s)?.iter().map(|g| g.text.clone()).collect())
    }

    /// The sentence encoder: `embedder`, else $UNLEARN_MINILM_DIR, else the fetched one.
    pub fn embedder(&mut self) -> Got<&Bert> {
        if self.embedder.is_none() {
            self.embedder = Some(match self.cfg.embedder_dir() {
                None => Err("no sentence encoder: pass --embedder DIR or set \
                             UNLEARN_MINILM_DIR (scripts/fetch_assets.sh downloads \
                             all-MiniLM-L6-v2)"
                    .into()),
                Some(d) => Bert::load(&d, self.model.device())
                    .map_err(|e| format!("sentence encoder {}: {e}", d.display())),
            });
        }
        match self.embedder.as_ref().unwrap() {
            Ok(b) => Ok(b),
            Err(e) => Err(Fail::skip(e.clone())),
        }
    }

    /// (generation embeddings, answer embeddings) of `s`.
    pub fn embeddings(&mut self, s: SetName) -> Got<Embeddings<'_>> {
        if self.slot(s).gen_emb.is_none() {
            let gens = self.generated_texts(s)?;
            let answers: Vec<String> = self.items(s)?.iter().map(|i| i.answer.clone()).collect();
            let bs = self.cfg.batch_size.max(8);
            let emb = self.embedder()?;
            let g = emb.embed(&gens.iter().map(|s| s.as_str()).collect::<Vec<_>>(), bs)?;
            let a = emb.embed(&answers.iter().map(|s| s.as_str()).collect::<Vec<_>>(), bs)?;
            let slot = self.slot(s);
            slot.gen_emb = Some(g);
            slot.ans_emb = Some(a);
        }
        let c = self.got(s);
        Ok((c.gen_emb.as_deref().unwrap(), c.ans_emb.as_deref().unwrap()))
    }

    /// Embeddings of the refusal pool (`refusals`, else the built-in pool).
    pub fn refusal_pool(&mut self) -> Got<&[Vec<f32>]> {
        if self.refusal_emb.is_none() {
            let pool = crate::data::refusals::load(self.cfg.refusals.as_deref())?;
            let e = self
                .embedder()?
                .embed(&pool.iter().map(|s| s.as_str()).collect::<Vec<_>>(), 16)?;
            self.refusal_emb = Some(e);
        }
        Ok(self.refusal_emb.as_deref().unwrap())
    }

    /// The NLI classifier (`nli`).
    pub fn nli(&mut self) -> Got<&Classifier> {
        if self.nli.is_none() {
            self.nli = Some(match &self.cfg.nli {
                None => Err("no NLI model (--nli DIR: a BERT, RoBERTa or DeBERTa-v2/v3 \
                             sequence classifier with an entailment label, e.g. \
                             sileod/deberta-v3-base-tasksource-nli)"
                    .into()),
                Some(d) => {
                    Classifier::load(d, self.model.device()).map_err(|e| format!("NLI model: {e}"))
                }
            });
        }
        match self.nli.as_ref().unwrap() {
            Ok(c) => Ok(c),
            Err(e) => Err(Fail::skip(e.clone())),
        }
    }

    /// The retain model's evaluation (`retain_logs`).
    pub fn retain_logs(&self) -> Got<&Map<String, Value>> {
        self.retain_logs.as_ref().ok_or_else(|| {
            Fail::skip("no retain log (--retain-logs: TOFU_EVAL.json of the retain model)")
        })
    }

    /// The texts zlib compresses: the answers, or in compat mode the labelled tokens decoded
    /// without special tokens (open-unlearning's `extract_target_texts_from_processed_data`).
    pub fn zlib_texts(&mut self, s: SetName) -> Got<Vec<String>> {
        let items = self.items(s)?.to_vec();
        Ok(match self.cfg.compat {
            Compat::None => items.into_iter().map(|i| i.answer).collect(),
            Compat::OpenUnlearning => items
                .iter()
                .map(|i| {
                    let e = self.fmt.encode_qa_compat(&i.question, &i.answer)?;
                    self.fmt.tok.decode(&e.ids[e.n_prompt..], true)
                })
                .collect::<Result<_>>()?,
        })
    }

    /// Answer stats of the forget and holdout sets under the reference model.
    pub fn reference(&mut self) -> Got<(Vec<TokenStats>, Vec<TokenStats>)> {
        let Some(dir) = self.cfg.reference_model.clone() else {
            return Err(Fail::skip(
                "no reference model (--reference-model DIR, e.g. the retain model)",
            ));
        };
        if self.slot(SetName::Forget).reference.is_none()
            || self.slot(SetName::Holdout).reference.is_none()
        {
            let md = crate::model::hf::ModelDir::load(&dir, self.model.device())?;
            let f = Formatter::new(&md.tok, self.cfg.prompt, self.cfg.max_len)?;
            for s in [SetName::Forget, SetName::Holdout] {
                let items = self.items(s)?.to_vec();
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
        Ok((
            self.got(SetName::Forget).reference.clone().unwrap(),
            self.got(SetName::Holdout).reference.clone().unwrap(),
        ))
    }

    /// Per-item values of set `s` that a metric computes with a pass of its own, cached under
    /// `key` (which must name every setting the values depend on beyond the model, the sets and
    /// the pass settings of [`super::EvalKeys::passes`]).
    pub fn per_item(
        &mut self,
        s: SetName,
        key: &str,
        compute: impl FnOnce(&mut Self) -> Got<Vec<f64>>,
    ) -> Got<Vec<f64>> {
        if let Some(v) = self.slot(s).extra.get(key) {
            return Ok(v.clone());
        }
        let v = compute(self)?;
        self.slot(s).extra.insert(key.into(), v.clone());
        Ok(v)
    }
}

/// Encode (question, answer) pairs for scoring, by the conventions of `compat`.
pub fn encode_pairs(f: &Formatter, compat: Compat, pairs: &[(&str, &str)]) -> Result<Vec<Encoded>> {
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

/// Replace each item's answer by the row's `field` where the row has a non-empty one
/// (`answer_field`); rows without it keep `answer`.
fn answers_from_field(path: &std::path::Path, field: &str, items: &mut [QaItem]) -> Result<()> {
    let rows = crate::data::benchmark::rows_beside_items(path, items.len(), "answer_field")?;
    let mut found = 0;
    for (it, r) in items.iter_mut().zip(&rows) {
        if let Some(a) = r
            .get(field)
            .and_then(|v| v.as_str())
            .filter(|a| !a.trim().is_empty())
        {
            it.answer = a.to_string();
            found += 1;
        }
    }
    if found == 0 {
        return Err(Error::Data {
            path: path.to_path_buf(),
            line: 0,
            msg: format!("no row has a non-empty `{field}` (answer_field)"),
        });
    }
    Ok(())
}
