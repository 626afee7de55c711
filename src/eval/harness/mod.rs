//! General-ability evaluation in lm-evaluation-harness's conventions (`unlearn eval --benchmark
//! mmlu|arc_challenge|arc_easy|truthfulqa_mc1|wmdp_bio|wmdp_chem|wmdp_cyber|gsm8k|triviaqa
//! --data DIR`), so numbers compare with theirs:
//!
//! - Prompt: description + few-shot examples + the document, as lm-eval's `fewshot_context`
//!   renders it without a chat template: each example is `text + " " + answer + "\n\n"`. Few-shot
//!   examples are the first n documents of the few-shot split (of the same MMLU subject),
//!   lm-eval's `first_n` sampler, which MMLU uses; for tasks whose lm-eval default samples them at
//!   random (seed 1234) our prompts differ unless num_fewshot = 0 (docs/evaluation.md).
//! - Multiple choice: for each choice, context and continuation `" " + choice` (trailing spaces of
//!   the context moved into the continuation) are encoded whole and split where the context's
//!   own encoding ends; the log-likelihood is Σ log p(continuation tokens), the sequence
//!   left-truncated to the model's context. `acc` = [argmax_i ll_i = gold], `acc_norm` =
//!   [argmax_i ll_i / len(choice_i) = gold] with the length in characters (as lm-eval computes
//!   it); stderr = sample standard deviation / √n.
//! - Generation: greedy, at most `max_gen_toks` new tokens (context left-truncated to leave room),
//!   cut at the first occurrence of each stop string (the task's and the tokenizer's EOS), then
//!   the task's filters and exact match ([`extract`]). Also `refusal_rate` (mean refusal score of
//!   the responses against the refusal pool, by the sentence encoder, as the TOFU metric) and
//!   `answer_words` (mean whitespace-separated words per response).
//!
//! Output: `{task}_EVAL.json` (lm-eval's metric keys, `acc,none`, `exact_match,strict-match`, …,
//! with stderr, the settings, and per-item `samples` holding each choice's log-likelihood or the
//! response and its filtered forms) and `{task}_SUMMARY.json` (metric → value).
pub mod extract;
pub mod tasks;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::data::benchmark::{local_splits, read_rows};
use crate::data::Encoded;
use crate::error::{Error, Result};
use crate::infer::generate::{generate_until, GenConfig, Stops};
use crate::infer::score::score;
use crate::model::tokenizer::Tok;
use crate::model::Llama;
use tasks::{Doc, Gold, Kind, Task, FEWSHOT_DELIMITER, TARGET_DELIMITER};

/// How `limit` picks documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Sample {
    /// A seeded random subset (kept in document order).
    #[default]
    Seeded,
    /// The first `limit` documents (lm-eval's `--limit`).
    First,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HarnessConfig {
    /// Task name (see [`tasks::TASKS`]).
    pub task: String,
    /// The task's dataset in its Hub layout (`{split}.jsonl`, `{split}.json`, `{split}.parquet`,
    /// `{split}/*.parquet`, `data/{split}-*.parquet`): a directory or a Hub dataset id.
    pub data: Option<PathBuf>,
    /// A folder inside `data` holding the splits: a dataset config stored as a folder (`all` or
    /// a subject of cais/mmlu).
    pub subset: Option<String>,
    /// Split to evaluate (default: the task's test split).
    pub split: Option<String>,
    /// Few-shot examples (default: the task's).
    pub num_fewshot: Option<usize>,
    /// Evaluate at most this many documents (0 = all).
    pub limit: usize,
    pub sample: Sample,
    pub seed: u64,
    /// Most new tokens per generation (lm-eval's `max_gen_toks`).
    pub max_gen_toks: usize,
    pub batch_size: usize,
    pub gen_batch_size: usize,
    /// Sentence encoder for the refusal rate of generation tasks (default: as the TOFU
    /// evaluation finds it; skipped when none).
    pub embedder: Option<PathBuf>,
    /// Refusal pool, one per line (default: the built-in pool).
    pub refusals: Option<PathBuf>,
}

impl Default for HarnessConfig {
    fn default() -> Self {
        HarnessConfig {
            task: String::new(),
            data: None,
            subset: None,
            split: None,
            num_fewshot: None,
            limit: 0,
            sample: Sample::Seeded,
            seed: 0,
            max_gen_toks: 256,
            batch_size: 8,
            gen_batch_size: 8,
            embedder: None,
            refusals: None,
        }
    }
}

impl crate::config::Validate for HarnessConfig {
    fn check(&self, c: &mut crate::config::Check) {
        if tasks::find(&self.task).is_none() {
            c.fail(
                "task",
                format!(
                    "`{}` is not a task (known: {})",
                    self.task,
                    tasks::names().join(", ")
                ),
            );
        }
        c.at_least("max_gen_toks", self.max_gen_toks, 1);
        c.at_least("batch_size", self.batch_size, 1);
        c.at_least("gen_batch_size", self.gen_batch_size, 1);
    }
}

/// Read and render every document of `split` (files of the split in name order).
fn read_split(task: &Task, dir: &Path, split: &str) -> Result<Vec<Doc>> {
    let splits = local_splits(dir)?;
    let files = splits.get(split).ok_or_else(|| {
        Error::Invalid(format!(
            "{}: no `{split}` split for {} (found: {}; layout of {})",
            dir.display(),
            task.name,
            if splits.is_empty() {
                "no .json/.jsonl/.parquet files".to_string()
            } else {
                splits.keys().cloned().collect::<Vec<_>>().join(", ")
            },
            task.dataset
        ))
    })?;
    let mut docs = vec![];
    for f in files {
        for (i, row) in read_rows(f)?.iter().enumerate() {
            docs.push((task.doc)(row).map_err(|m| Error::Data {
                path: f.clone(),
                line: 0,
                msg: format!("row {i}: {m} (a {} row)", task.dataset),
            })?);
        }
    }
    if docs.is_empty() {
        return Err(Error::Data {
            path: files[0].clone(),
            line: 0,
            msg: format!("the `{split}` split has no rows"),
        });
    }
    Ok(docs)
}

/// The prompt of `doc` with `shots` few-shot examples from `pool` (same group only).
pub fn context(doc: &Doc, pool: &[Doc], shots: usize) -> Result<String> {
    let mut s = doc.description.clone();
    if shots > 0 {
        let same: Vec<&Doc> = pool
            .iter()
            .filter(|d| d.group == doc.group && *d != doc)
            .take(shots)
            .collect();
        if same.len() < shots {
            return Err(Error::Invalid(format!(
                "{shots} few-shot examples asked for, the few-shot split has {}{}",
                same.len(),
                doc.group
                    .as_ref()
                    .map(|g| format!(" for `{g}`"))
                    .unwrap_or_default()
            )));
        }
        for d in same {
            s.push_str(&d.text);
            s.push_str(TARGET_DELIMITER);
            s.push_str(&d.shot_answer());
            s.push_str(FEWSHOT_DELIMITER);
        }
    }
    s.push_str(&doc.text);
    Ok(s)
}

/// lm-eval's `_encode_pair`: trailing spaces of the context go to the continuation; the whole is
/// encoded and split where the context's own encoding ends.
pub fn encode_pair(tok: &Tok, ctx: &str, cont: &str) -> Result<(Vec<u32>, Vec<u32>)> {
    let trimmed = ctx.trim_end_matches(|c: char| c.is_whitespace());
    let (ctx, cont) = (trimmed, format!("{}{cont}", &ctx[trimmed.len()..]));
    let whole = tok.encode(&format!("{ctx}{cont}"), true)?;
    let c = tok.encode(ctx, true)?;
    let n = c.len().min(whole.len());
    Ok((whole[..n].to_vec(), whole[n..].to_vec()))
}

fn stderr(v: &[f64]) -> f64 {
    let n = v.len() as f64;
    if v.len() < 2 {
        return f64::NAN;
    }
    let m = v.iter().sum::<f64>() / n;
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0) / n).sqrt()
}

fn mean(v: &[f64]) -> f64 {
    crate::eval::value::mean(v)
}

fn argmax(v: &[f64]) -> usize {
    let mut b = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[b] {
            b = i;
        }
    }
    b
}

/// The documents `limit` and `sample` keep (indices into the split).
fn pick(n: usize, cfg: &HarnessConfig) -> Vec<usize> {
    if cfg.limit == 0 || cfg.limit >= n {
        return (0..n).collect();
    }
    match cfg.sample {
        Sample::First => (0..cfg.limit).collect(),
        Sample::Seeded => {
            let mut idx: Vec<usize> = (0..n).collect();
            crate::util::rng::Rng::new(cfg.seed).shuffle(&mut idx);
            let mut keep = idx[..cfg.limit].to_vec();
            keep.sort_unstable();
            keep
        }
    }
}

/// Results of one task: the EVAL object and the summary.
pub struct HarnessOutput {
    pub eval: Map<String, Value>,
    pub summary: Map<String, Value>,
}

pub fn eval_file(task: &str) -> String {
    format!("{task}_EVAL.json")
}
pub fn summary_file(task: &str) -> String {
    format!("{task}_SUMMARY.json")
}

/// A task's documents and prompts, read and checked before any model work.
pub struct Loaded {
    task: &'static Task,
    split: String,
    shots: usize,
    docs: Vec<Doc>,
    keep: Vec<usize>,
    contexts: Vec<String>,
}

/// Read the task's split (and few-shot split), pick the documents `limit` keeps and build their
/// prompts: every data error surfaces here, before the model loads or anything is written.
pub fn load(cfg: &HarnessConfig) -> Result<Loaded> {
    let task = tasks::find(&cfg.task)
        .ok_or_else(|| Error::Invalid(format!("unknown task `{}`", cfg.task)))?;
    let dir = cfg.data.as_ref().ok_or_else(|| {
        Error::Invalid(format!(
            "--benchmark {} needs --data DIR: a local copy of {} (parquet or JSON in its Hub \
             layout)",
            task.name, task.dataset
        ))
    })?;
    let mut dir = crate::data::benchmark::dataset_dir(dir)?;
    if let Some(sub) = &cfg.subset {
        dir = dir.join(sub);
    }
    let dir = &dir;
    let split = cfg.split.as_deref().unwrap_or(task.test_split).to_string();
    let shots = cfg.num_fewshot.unwrap_or(task.num_fewshot);
    let docs = read_split(task, dir, &split)?;
    let pool = match (shots, task.fewshot_split) {
        (0, _) => vec![],
        (_, None) => {
            return Err(Error::Invalid(format!(
                "{} takes no few-shot examples (num_fewshot = {shots})",
                task.name
            )))
        }
        (_, Some(fs)) => read_split(task, dir, fs)?,
    };
    let keep = pick(docs.len(), cfg);
    let contexts = keep
        .iter()
        .map(|&i| context(&docs[i], &pool, shots))
        .collect::<Result<Vec<_>>>()?;
    Ok(Loaded {
        task,
        split,
        shots,
        docs,
        keep,
        contexts,
    })
}

/// Evaluate the loaded task and write its files into `out`.
pub fn evaluate(
    model: &Llama,
    tok: &Tok,
    cfg: &HarnessConfig,
    loaded: &Loaded,
    out: &Path,
    progress: bool,
) -> Result<HarnessOutput> {
    let Loaded {
        task,
        split,
        shots,
        docs,
        keep,
        contexts,
    } = loaded;
    let (task, shots) = (*task, *shots);
    let (docs, keep, contexts) = (&docs[..], &keep[..], &contexts[..]);
    let (metrics, samples) = match task.kind {
        Kind::MultipleChoice => {
            multiple_choice(model, tok, cfg, task, docs, keep, contexts, progress)?
        }
        Kind::Generate => generation(model, tok, cfg, task, docs, keep, contexts, progress)?,
    };
    for (k, v) in &metrics {
        if !k.contains("_stderr,") && v.as_f64().is_some_and(|x| !x.is_finite()) {
            return Err(Error::Invalid(format!("{}: {k} is not finite", task.name)));
        }
    }
    let mut eval = Map::new();
    eval.insert("task".into(), json!(task.name));
    eval.insert("dataset_layout".into(), json!(task.dataset));
    eval.insert("split".into(), json!(split));
    eval.insert("num_fewshot".into(), json!(shots));
    eval.insert(
        "fewshot_sampler".into(),
        json!(if shots > 0 { "first_n" } else { "none" }),
    );
    eval.insert("n_docs".into(), json!(docs.len()));
    eval.insert(
        "limit".into(),
        json!({"limit": cfg.limit, "sample": cfg.sample, "seed": cfg.seed, "n_evaluated": keep.len()}),
    );
    if task.kind == Kind::Generate {
        eval.insert("max_gen_toks".into(), json!(cfg.max_gen_toks));
    }
    eval.insert("results".into(), Value::Object(metrics.clone()));
    eval.insert("samples".into(), Value::Array(samples));
    let summary: Map<String, Value> = metrics
        .iter()
        .filter(|(k, _)| !k.contains("_stderr"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    crate::util::fs::atomic_write(
        &out.join(eval_file(task.name)),
        serde_json::to_string_pretty(&eval).unwrap().as_bytes(),
    )?;
    crate::util::fs::atomic_write(
        &out.join(summary_file(task.name)),
        serde_json::to_string_pretty(&summary).unwrap().as_bytes(),
    )?;
    Ok(HarnessOutput { eval, summary })
}

fn put(m: &mut Map<String, Value>, name: &str, v: &[f64]) {
    m.insert(name.to_string(), json!(mean(v)));
    let (metric, filter) = name.split_once(',').unwrap_or((name, "none"));
    let se = stderr(v);
    m.insert(
        format!("{metric}_stderr,{filter}"),
        if se.is_finite() {
            json!(se)
        } else {
            Value::Null
        },
    );
}

#[allow(clippy::too_many_arguments)]
fn multiple_choice(
    model: &Llama,
    tok: &Tok,
    cfg: &HarnessConfig,
    task: &Task,
    docs: &[Doc],
    keep: &[usize],
    contexts: &[String],
    progress: bool,
) -> Result<(Map<String, Value>, Vec<Value>)> {
    let max_len = model.cfg.max_position_embeddings;
    let mut requests: Vec<Encoded> = vec![];
    for (&i, ctx) in keep.iter().zip(contexts) {
        for c in &docs[i].choices {
            let (mut ce, ke) = encode_pair(tok, ctx, &format!("{TARGET_DELIMITER}{c}"))?;
            if ke.is_empty() {
                return Err(Error::Invalid(format!(
                    "document {i}: the choice {c:?} encodes to no tokens"
                )));
            }
            if ce.is_empty() {
                // lm-eval scores an empty context after the end-of-text token
                ce.push(tok.eos_id);
            }
            let mut ids = ce;
            ids.extend_from_slice(&ke);
            // left-truncate to the model's context (+1: the last token is only a target)
            if ids.len() > max_len + 1 {
                ids.drain(..ids.len() - (max_len + 1));
            }
            let n_prompt = ids.len() - ke.len().min(ids.len() - 1);
            requests.push(Encoded { ids, n_prompt });
        }
    }
    let bar = crate::util::progress::bar(requests.len() as u64, "choices", progress);
    let mut lls = Vec::with_capacity(requests.len());
    for chunk in requests.chunks(cfg.batch_size * 4) {
        for lp in score(model, chunk, cfg.batch_size)? {
            lls.push(lp.iter().map(|&x| x as f64).sum::<f64>());
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let (mut acc, mut acc_norm, mut samples) = (vec![], vec![], vec![]);
    let mut at = 0;
    for (&i, ctx) in keep.iter().zip(contexts) {
        let d = &docs[i];
        let l = &lls[at..at + d.choices.len()];
        at += d.choices.len();
        let Gold::Choice(g) = d.gold else {
            unreachable!("multiple-choice documents have a choice index")
        };
        let norm: Vec<f64> = l
            .iter()
            .zip(&d.choices)
            .map(|(x, c)| x / c.chars().count().max(1) as f64)
            .collect();
        let a = f64::from(u8::from(argmax(l) == g));
        let an = f64::from(u8::from(argmax(&norm) == g));
        if l.iter().any(|x| !x.is_finite()) {
            return Err(Error::Invalid(format!(
                "document {i}: a choice's log-likelihood is not finite (the model's weights?)"
            )));
        }
        acc.push(a);
        acc_norm.push(an);
        samples.push(
            json!({"doc_id": i, "target": g, "context": ctx, "choices": d.choices,
            "loglikelihoods": l, "acc": a}),
        );
        if task.acc_norm {
            samples.last_mut().unwrap()["acc_norm"] = json!(an);
        }
    }
    let mut m = Map::new();
    put(&mut m, "acc,none", &acc);
    if task.acc_norm {
        put(&mut m, "acc_norm,none", &acc_norm);
    }
    Ok((m, samples))
}

/// Token ids of each prompt with the tokenizer's default special tokens, left-truncated to
/// `budget` tokens (room left for the generation, as lm-eval truncates).
pub fn encode_prompts<S: AsRef<str>>(
    tok: &Tok,
    texts: &[S],
    budget: usize,
) -> Result<Vec<Vec<u32>>> {
    texts
        .iter()
        .map(|t| {
            let mut ids = tok.encode(t.as_ref(), true)?;
            if ids.len() > budget {
                ids.drain(..ids.len() - budget);
            }
            Ok(ids)
        })
        .collect()
}

/// Greedy continuations of `prompts` (at most `max_new` tokens; the model's end-of-sequence
/// ids end a row), each cut at the first occurrence of every stop string in turn; a row stops
/// early once its decoded text holds a stop string.
#[allow(clippy::too_many_arguments)]
pub fn generate_cut(
    model: &Llama,
    tok: &Tok,
    prompts: &[Vec<u32>],
    max_new: usize,
    until: &[String],
    batch: usize,
    what: &str,
    progress: bool,
) -> Result<Vec<String>> {
    let gcfg = GenConfig {
        max_new_tokens: max_new,
        ..Default::default()
    };
    let stops = Stops::for_model(&model.cfg, tok);
    let hit = |ids: &[u32]| -> bool {
        tok.decode(ids, true)
            .map(|s| {
                until
                    .iter()
                    .any(|u| !u.is_empty() && s.contains(u.as_str()))
            })
            .unwrap_or(false)
    };
    let bar = crate::util::progress::bar(prompts.len() as u64, what, progress);
    let mut responses = Vec::with_capacity(prompts.len());
    for (ci, chunk) in prompts.chunks(batch.max(1)).enumerate() {
        let ids: Vec<u64> = (0..chunk.len()).map(|j| (ci * batch + j) as u64).collect();
        let outs = generate_until(model, chunk, &ids, &stops, tok.pad_id, &gcfg, &hit)?;
        for o in outs {
            responses.push(extract::cut_at_stops(&tok.decode(&o, true)?, until));
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(responses)
}

#[allow(clippy::too_many_arguments)]
fn generation(
    model: &Llama,
    tok: &Tok,
    cfg: &HarnessConfig,
    task: &Task,
    docs: &[Doc],
    keep: &[usize],
    contexts: &[String],
    progress: bool,
) -> Result<(Map<String, Value>, Vec<Value>)> {
    let max_ctx = model
        .cfg
        .max_position_embeddings
        .checked_sub(cfg.max_gen_toks)
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "max_gen_toks = {} leaves no room for a prompt in the model's context of {}",
                cfg.max_gen_toks, model.cfg.max_position_embeddings
            ))
        })?;
    let mut until: Vec<String> = task.until.iter().map(|s| s.to_string()).collect();
    let eos = tok.decode(&[tok.eos_id], false)?;
    if !eos.is_empty() && !until.contains(&eos) {
        until.push(eos);
    }
    let prompts = encode_prompts(tok, contexts, max_ctx)?;
    let responses = generate_cut(
        model,
        tok,
        &prompts,
        cfg.max_gen_toks,
        &until,
        cfg.gen_batch_size,
        task.name,
        progress,
    )?;
    // refusal scores (sentence encoder), skipped without one
    let refusal: std::result::Result<Vec<f64>, String> =
        match crate::eval::embedder_dir(cfg.embedder.as_ref()) {
            None => Err("no sentence encoder: pass `embedder` or set UNLEARN_MINILM_DIR".into()),
            Some(d) => {
                let b = crate::model::bert::Bert::load(&d, model.device())?;
                let pool = crate::data::refusals::load(cfg.refusals.as_deref())?;
                let pe = b.embed(&pool.iter().map(|s| s.as_str()).collect::<Vec<_>>(), 16)?;
                let ge = b.embed(
                    &responses.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                    16,
                )?;
                Ok(ge
                    .iter()
                    .map(|g| crate::eval::formula::similarity::refusal_score(g, &pe))
                    .collect())
            }
        };
    let mut cols: Vec<(&str, Vec<f64>)> = vec![];
    let mut samples = vec![];
    for (n, (&i, r)) in keep.iter().zip(&responses).enumerate() {
        let Gold::Texts(refs) = &docs[i].gold else {
            unreachable!("generation documents have reference texts")
        };
        let mut s = json!({"doc_id": i, "target": refs, "context": contexts[n], "response": r});
        let scored: Vec<(&str, String, f64)> = if task.name == "gsm8k" {
            let st = extract::gsm8k_strict(r);
            let fl = extract::gsm8k_flexible(r);
            let (a, b) = (
                extract::GSM8K_MATCH.score(&st, refs),
                extract::GSM8K_MATCH.score(&fl, refs),
            );
            vec![
                ("exact_match,strict-match", st, a),
                ("exact_match,flexible-extract", fl, b),
            ]
        } else {
            let f = extract::strip(r);
            let a = extract::TRIVIAQA_MATCH.score(&f, refs);
            vec![("exact_match,remove_whitespace", f, a)]
        };
        let mut filtered = Map::new();
        for (k, f, v) in scored {
            filtered.insert(k.to_string(), json!({"filtered": f, "score": v}));
            match cols.iter_mut().find(|c| c.0 == k) {
                Some(c) => c.1.push(v),
                None => cols.push((k, vec![v])),
            }
        }
        s["filtered"] = Value::Object(filtered);
        let words = r.split_whitespace().count() as f64;
        s["answer_words"] = json!(words);
        if let Ok(rs) = &refusal {
            s["refusal_score"] = json!(rs[n]);
        }
        samples.push(s);
    }
    let mut m = Map::new();
    for (k, v) in &cols {
        put(&mut m, k, v);
    }
    let words: Vec<f64> = responses
        .iter()
        .map(|r| r.split_whitespace().count() as f64)
        .collect();
    put(&mut m, "answer_words,none", &words);
    match &refusal {
        Ok(v) => put(&mut m, "refusal_rate,none", v),
        Err(e) => {
            m.insert("refusal_rate,none".into(), Value::Null);
            m.insert("refusal_rate_skipped".into(), json!(e));
        }
    }
    Ok((m, samples))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str, ans: usize, group: Option<&str>) -> Doc {
        Doc {
            description: "D.\n\n".into(),
            text: text.into(),
            choices: vec!["x".into(), "y".into()],
            gold: Gold::Choice(ans),
            group: group.map(String::from),
        }
    }

    #[test]
    fn fewshot_context_takes_the_first_of_the_same_group() {
        let pool = vec![
            doc("Q1", 0, Some("a")),
            doc("Q2", 1, Some("b")),
            doc("Q3", 1, Some("a")),
        ];
        let d = doc("Q", 0, Some("a"));
        assert_eq!(context(&d, &pool, 2).unwrap(), "D.\n\nQ1 x\n\nQ3 y\n\nQ");
        assert_eq!(context(&d, &pool, 0).unwrap(), "D.\n\nQ");
        assert!(context(&d, &pool, 3).is_err());
    }

    #[test]
    fn stderr_is_the_standard_error_of_the_mean() {
        // values 1, 0, 1, 0: sample variance 1/3, n = 4 → sqrt(1/12)
        assert!((stderr(&[1.0, 0.0, 1.0, 0.0]) - (1.0f64 / 12.0).sqrt()).abs() < 1e-15);
    }

    #[test]
    fn limit_picks_a_seeded_subset_in_order() {
        let cfg = HarnessConfig {
            limit: 3,
            ..Default::default()
        };
        let a = pick(10, &cfg);
        assert_eq!(a.len(), 3);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(a, pick(10, &cfg));
        let first = HarnessConfig {
            limit: 3,
            sample: Sample::First,
            ..Default::default()
        };
        assert_eq!(pick(10, &first), vec![0, 1, 2]);
        assert_eq!(pick(2, &cfg), vec![0, 1]);
    }
}
