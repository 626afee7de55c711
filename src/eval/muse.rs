//! MUSE (Shi et al., 2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language Models"):
//! `unlearn eval --benchmark muse --data DIR`, DIR in the layout of the Hub datasets
//! muse-bench/MUSE-News and MUSE-Books (a folder per config, split files inside, parquet or
//! JSON): `verbmem/forget` (prompt, gt), `knowmem/{forget,retain}_qa` and `_qa_icl` (question,
//! answer), `privleak/{forget,holdout}` (text).
//!
//! - VerbMem (`forget_verbmem_ROUGE`): greedy continuation (`verbmem_max_new_tokens`, 128) of each
//!   forget prompt; ROUGE-L F1 against the true continuation `gt`, mean over items.
//! - KnowMem (`{forget,retain}_knowmem_ROUGE`): each question after the in-context examples of
//!   the `_qa_icl` split as `Question: q\nAnswer: a\n\n`, then `Question: q\nAnswer:`; greedy
//!   answer (`knowmem_max_new_tokens`, 32) cut at "\n\n", "\nQuestion" or "Question:"; ROUGE-L
//!   recall against the answer (MUSE's measure), F1 kept per item (open-unlearning's).
//! - `mia_min_k`: ROC-AUC of the Min-K% score (k = `min_k`, 0.4) with the privleak forget texts
//!   as members and the holdout texts as non-members (as the TOFU metric of that name).
//! - PrivLeak (`privleak`): ((1 − auc) − (1 − auc_retain)) / (1 − auc_retain) · 100 against the
//!   retain model's MUSE_EVAL.json (`retain_logs`); 0 = like retraining, negative = the forget
//!   texts are still recognised.
//!
//! Prompts and texts are encoded with the tokenizer's default special tokens (no chat template),
//! as MUSE's base-model evaluation does.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::data::benchmark::{local_splits, read_rows};
use crate::data::Encoded;
use crate::error::{Error, Result};
use crate::eval::formula::{mia, rouge::rouge_l};
use crate::eval::harness::{encode_prompts, generate_cut};
use crate::eval::value::mean;
use crate::infer::score::score_stats;
use crate::model::tokenizer::Tok;
use crate::model::Llama;

/// The metrics this evaluation writes, for `unlearn metrics`.
pub const METRICS: &[(&str, &str)] = &[
    ("forget_verbmem_ROUGE", "ROUGE-L F1 of the greedy continuation of verbmem/forget prompts against `gt`"),
    ("forget_knowmem_ROUGE", "ROUGE-L recall of in-context answers to knowmem/forget_qa"),
    ("retain_knowmem_ROUGE", "ROUGE-L recall of in-context answers to knowmem/retain_qa"),
    ("mia_min_k", "Min-K% ROC-AUC, privleak forget (members) vs holdout"),
    ("privleak", "((1 − auc) − (1 − auc_retain)) / (1 − auc_retain) · 100 against the retain model's MUSE_EVAL.json"),
];

pub const EVAL_FILE: &str = "MUSE_EVAL.json";
pub const SUMMARY_FILE: &str = "MUSE_SUMMARY.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MuseConfig {
    /// The MUSE dataset (see the module doc): a directory or a Hub dataset id
    /// (muse-bench/MUSE-News).
    pub data: Option<PathBuf>,
    /// MUSE_EVAL.json of the retain model (PrivLeak).
    pub retain_logs: Option<PathBuf>,
    /// Use only the first N items of each set (0 = all).
    pub max_items: usize,
    pub verbmem_max_new_tokens: usize,
    pub knowmem_max_new_tokens: usize,
    /// In-context examples for KnowMem (default: every row of the `_qa_icl` split).
    pub knowmem_shots: Option<usize>,
    /// Fraction k of Min-K%.
    pub min_k: f64,
    /// Texts are cut to this many tokens for Min-K% (MUSE: 2048).
    pub max_len: usize,
    pub batch_size: usize,
    pub gen_batch_size: usize,
}

impl Default for MuseConfig {
    fn default() -> Self {
        MuseConfig {
            data: None,
            retain_logs: None,
            max_items: 0,
            verbmem_max_new_tokens: 128,
            knowmem_max_new_tokens: 32,
            knowmem_shots: None,
            min_k: 0.4,
            max_len: 2048,
            batch_size: 4,
            gen_batch_size: 8,
        }
    }
}

impl crate::config::Validate for MuseConfig {
    fn check(&self, c: &mut crate::config::Check) {
        c.at_least("verbmem_max_new_tokens", self.verbmem_max_new_tokens, 1);
        c.at_least("knowmem_max_new_tokens", self.knowmem_max_new_tokens, 1);
        c.at_least("max_len", self.max_len, 2);
        c.at_least("batch_size", self.batch_size, 1);
        c.at_least("gen_batch_size", self.gen_batch_size, 1);
        if !(self.min_k > 0.0 && self.min_k <= 1.0) {
            c.fail("min_k", format!("{} must be in (0, 1]", self.min_k));
        }
    }
}

/// A split's first file (named in errors) and its rows.
type Rows = (PathBuf, Vec<Value>);

/// The rows of split `split` of config folder `config` (None when the split is absent).
fn split_rows(dir: &Path, config: &str, split: &str) -> Result<Option<Rows>> {
    let folder = dir.join(config);
    if !folder.is_dir() {
        return Ok(None);
    }
    let splits = local_splits(&folder)?;
    let Some(files) = splits.get(split) else {
        return Ok(None);
    };
    let mut rows = vec![];
    for f in files {
        rows.extend(read_rows(f)?);
    }
    if rows.is_empty() {
        return Err(Error::Data {
            path: files[0].clone(),
            line: 0,
            msg: format!("the {config}/{split} split has no rows"),
        });
    }
    Ok(Some((files[0].clone(), rows)))
}

fn field(rows: &[Value], path: &Path, k: &str) -> Result<Vec<String>> {
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            r.get(k)
                .and_then(|v| v.as_str())
                .map(String::from)
                .ok_or_else(|| Error::Data {
                    path: path.to_path_buf(),
                    line: 0,
                    msg: format!("row {i} has no string `{k}` (MUSE layout)"),
                })
        })
        .collect()
}

fn take<T>(mut v: Vec<T>, n: usize) -> Vec<T> {
    if n > 0 {
        v.truncate(n);
    }
    v
}

fn encode(tok: &Tok, text: &str, max: usize) -> Result<Vec<u32>> {
    let mut ids = tok.encode(text, true)?;
    ids.truncate(max);
    Ok(ids)
}

/// MUSE's data, read and checked (every field every metric reads) before any model work.
pub struct MuseData {
    verb: Option<Rows>,
    know: Vec<(&'static str, Option<Rows>, Option<Rows>)>,
    priv_f: Option<Rows>,
    priv_h: Option<Rows>,
    retain_logs: Option<Map<String, Value>>,
}

/// Read `cfg.data` (and the retain log): a missing folder or split skips its metrics, a split
/// without rows or a row without its fields is an error naming the file.
pub fn load(cfg: &MuseConfig) -> Result<MuseData> {
    let dir = cfg.data.as_ref().ok_or_else(|| {
        Error::Invalid(
            "--benchmark muse needs --data DIR: a local copy of muse-bench/MUSE-News or \
             MUSE-Books (folders verbmem/, knowmem/, privleak/)"
                .into(),
        )
    })?;
    let dir = &crate::data::benchmark::dataset_dir(dir)?;
    let verb = split_rows(dir, "verbmem", "forget")?;
    let know: Vec<(&'static str, Option<Rows>, Option<Rows>)> = ["forget", "retain"]
        .into_iter()
        .map(|s| {
            Ok((
                s,
                split_rows(dir, "knowmem", &format!("{s}_qa"))?,
                split_rows(dir, "knowmem", &format!("{s}_qa_icl"))?,
            ))
        })
        .collect::<Result<_>>()?;
    let priv_f = split_rows(dir, "privleak", "forget")?;
    let priv_h = split_rows(dir, "privleak", "holdout")?;
    if verb.is_none() && know.iter().all(|k| k.1.is_none()) && priv_f.is_none() {
        return Err(Error::Invalid(format!(
            "{}: no MUSE data (expected verbmem/forget, knowmem/forget_qa, privleak/forget split \
             files, parquet or JSON)",
            dir.display()
        )));
    }
    if let Some((p, rows)) = &verb {
        field(rows, p, "prompt")?;
        field(rows, p, "gt")?;
    }
    for (_, qa, icl) in &know {
        for (p, rows) in qa.iter().chain(icl.iter()) {
            field(rows, p, "question")?;
            field(rows, p, "answer")?;
        }
    }
    for (p, rows) in priv_f.iter().chain(priv_h.iter()) {
        field(rows, p, "text")?;
    }
    let retain_logs: Option<Map<String, Value>> = cfg
        .retain_logs
        .as_ref()
        .map(|p| crate::error::read_json(p))
        .transpose()?;
    Ok(MuseData {
        verb,
        know,
        priv_f,
        priv_h,
        retain_logs,
    })
}

/// Evaluate; writes MUSE_EVAL.json and MUSE_SUMMARY.json into `out`.
pub fn evaluate(
    model: &Llama,
    tok: &Tok,
    cfg: &MuseConfig,
    data: &MuseData,
    out: &Path,
    progress: bool,
) -> Result<Map<String, Value>> {
    let MuseData {
        verb,
        know,
        priv_f,
        priv_h,
        retain_logs,
    } = data;
    let (verb, know, priv_f, priv_h) = (verb.clone(), know.clone(), priv_f.clone(), priv_h.clone());
    let max_ctx = model.cfg.max_position_embeddings;
    let mut res = Map::new();
    let skipped = |why: String| json!({"agg_value": Value::Null, "skipped": why});

    // VerbMem
    match verb {
        None => {
            res.insert(
                "forget_verbmem_ROUGE".into(),
                skipped("no verbmem/forget split".into()),
            );
        }
        Some((p, rows)) => {
            let rows = take(rows, cfg.max_items);
            let prompts = field(&rows, &p, "prompt")?;
            let gts = field(&rows, &p, "gt")?;
            let budget = max_ctx.saturating_sub(cfg.verbmem_max_new_tokens).max(1);
            let ids = encode_prompts(tok, &prompts, budget)?;
            let gens = generate_cut(
                model,
                tok,
                &ids,
                cfg.verbmem_max_new_tokens,
                &[],
                cfg.gen_batch_size,
                "verbmem",
                progress,
            )?;
            let mut f1 = vec![];
            let mut by = Map::new();
            for (i, (g, gt)) in gens.iter().zip(&gts).enumerate() {
                let r = rouge_l(gt, g);
                f1.push(r.fmeasure);
                by.insert(
                    i.to_string(),
                    json!({"input": prompts[i], "ground_truth": gt, "generation": g,
                           "rougeL_f1": r.fmeasure, "rougeL_recall": r.recall}),
                );
            }
            res.insert(
                "forget_verbmem_ROUGE".into(),
                json!({"agg_value": mean(&f1), "value_by_index": by}),
            );
        }
    }

    // KnowMem
    let until: Vec<String> = ["\n\n", "\nQuestion", "Question:"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for (set, qa, icl) in know {
        let key = format!("{set}_knowmem_ROUGE");
        let Some((p, rows)) = qa else {
            res.insert(key, skipped(format!("no knowmem/{set}_qa split")));
            continue;
        };
        let rows = take(rows, cfg.max_items);
        let qs = field(&rows, &p, "question")?;
        let ans = field(&rows, &p, "answer")?;
        let mut prefix = String::new();
        if let Some((ip, irows)) = icl {
            let irows = match cfg.knowmem_shots {
                Some(n) => {
                    if n > irows.len() {
                        return Err(Error::Invalid(format!(
                            "knowmem_shots = {n}, but {} has {} rows",
                            ip.display(),
                            irows.len()
                        )));
                    }
                    irows[..n].to_vec()
                }
                None => irows,
            };
            let iq = field(&irows, &ip, "question")?;
            let ia = field(&irows, &ip, "answer")?;
            for (q, a) in iq.iter().zip(&ia) {
                prefix.push_str(&format!("Question: {q}\nAnswer: {a}\n\n"));
            }
        }
        let prompts: Vec<String> = qs
            .iter()
            .map(|q| format!("{prefix}Question: {q}\nAnswer:"))
            .collect();
        let budget = max_ctx.saturating_sub(cfg.knowmem_max_new_tokens).max(1);
        let ids = encode_prompts(tok, &prompts, budget)?;
        let gens = generate_cut(
            model,
            tok,
            &ids,
            cfg.knowmem_max_new_tokens,
            &until,
            cfg.gen_batch_size,
            &format!("knowmem {set}"),
            progress,
        )?;
        let mut rec = vec![];
        let mut by = Map::new();
        for (i, (g, a)) in gens.iter().zip(&ans).enumerate() {
            let g = g.trim();
            let r = rouge_l(a, g);
            rec.push(r.recall);
            by.insert(
                i.to_string(),
                json!({"input": qs[i], "ground_truth": a, "generation": g,
                       "rougeL_recall": r.recall, "rougeL_f1": r.fmeasure}),
            );
        }
        res.insert(key, json!({"agg_value": mean(&rec), "value_by_index": by}));
    }

    // Min-K% AUC and PrivLeak
    match (priv_f, priv_h) {
        (Some((pf, fr)), Some((ph, hr))) => {
            let score = |rows: Vec<Value>, p: &Path, what: &str| -> Result<Vec<f64>> {
                let texts = field(&take(rows, cfg.max_items), p, "text")?;
                let items = texts
                    .iter()
                    .map(|t| {
                        let ids = encode(tok, t, cfg.max_len.min(max_ctx))?;
                        if ids.len() < 2 {
                            return Err(Error::Data {
                                path: p.to_path_buf(),
                                line: 0,
                                msg: format!("a {what} text has fewer than 2 tokens"),
                            });
                        }
                        Ok(Encoded { ids, n_prompt: 1 })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let bar = crate::util::progress::bar(items.len() as u64, what, progress);
                let st = score_stats(model, &items, cfg.batch_size, |n| bar.inc(n as u64))?;
                bar.finish_and_clear();
                Ok(st.iter().map(|s| mia::min_k_score(s, cfg.min_k)).collect())
            };
            let f = score(fr, &pf, "privleak forget")?;
            let h = score(hr, &ph, "privleak holdout")?;
            if f.iter().chain(&h).any(|x| !x.is_finite()) {
                return Err(Error::Invalid(
                    "a Min-K% score is not finite (the model's weights?)".into(),
                ));
            }
            let auc = mia::auc(&f, &h);
            res.insert(
                "mia_min_k".into(),
                json!({"agg_value": auc, "forget": f, "holdout": h, "k": cfg.min_k}),
            );
            let pl = match retain_logs
                .as_ref()
                .and_then(|r| r.get("mia_min_k"))
                .and_then(|v| v.get("agg_value"))
                .and_then(|v| v.as_f64())
            {
                Some(ret) => {
                    json!({"agg_value": mia::privleak(auc, ret), "auc": auc, "retain_auc": ret})
                }
                None => skipped(match &cfg.retain_logs {
                    None => "no retain_logs (the retain model's MUSE_EVAL.json)".into(),
                    Some(p) => format!("{}: no mia_min_k agg_value", p.display()),
                }),
            };
            res.insert("privleak".into(), pl);
        }
        _ => {
            let why = skipped("no privleak/forget and privleak/holdout splits".into());
            res.insert("mia_min_k".into(), why.clone());
            res.insert("privleak".into(), why);
        }
    }

    let summary: Map<String, Value> = res
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.get("agg_value").cloned().unwrap_or(Value::Null),
            )
        })
        .collect();
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    crate::util::fs::atomic_write(
        &out.join(EVAL_FILE),
        serde_json::to_string_pretty(&res).unwrap().as_bytes(),
    )?;
    crate::util::fs::atomic_write(
        &out.join(SUMMARY_FILE),
        serde_json::to_string_pretty(&summary).unwrap().as_bytes(),
    )?;
    Ok(summary)
}
