//! `unlearn audit`: is the forgetting deep or shallow? The forget set is attacked in the ways the
//! literature found to bring knowledge back, and each attack is measured with the same forget
//! metrics (ROUGE-L recall of greedy answers, P(answer | question), refusal rate):
//!
//! - `plain`: the forget questions as they are (the baseline);
//! - `paraphrase`: each question as its `paraphrased_question` (items without one are skipped);
//! - `role_play`, `prefix_injection`, `ignore_previous`: the question inside the jailbreak-style
//!   wrappers of the Exclusive Unlearning evaluation ([`super::exclusive::WRAPPERS`]);
//! - `few_shot`: the question after `few_shot` retain-set QA pairs ("Question: …\nAnswer: …");
//! - `quantize_{type}`: the weights after a quantize → dequantize round trip (llama.cpp's
//!   formats, [`crate::model::gguf_write::roundtrip`]);
//! - `relearn_half`: fine-tune on the first half of the forget set (a few steps, `relearn`),
//!   measure the second half; with the original model, the share of its forget probability that
//!   came back: (P_after − P_before) / (P_original − P_before).
//!
//! Each probe is an evaluation of a derived forget file (`OUT/probes/NAME/`), so its numbers are
//! exactly `unlearn eval`'s for that file. AUDIT.json holds every attack's numbers.
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::data::{read_qa, write_qa, Formatter, QaItem};
use crate::error::{Error, Result};
use crate::eval::{names, EvalConfig, Evaluator, SetName};
use crate::model::hf::ModelDir;
use crate::train::TrainConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The evaluation (benchmark `data`, `forget_split`, generation settings).
    pub eval: EvalConfig,
    /// Quantization types to attack with (llama.cpp's names).
    pub quantize: Vec<String>,
    /// Retain QA pairs put before each question in the few-shot probe.
    pub few_shot: usize,
    /// The relearning fine-tune (default: 10 steps at lr 1e-5, as `attack relearn`).
    pub relearn: TrainConfig,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            eval: EvalConfig::default(),
            quantize: vec!["q4_0".into()],
            few_shot: 3,
            relearn: TrainConfig {
                lr: 1e-5,
                max_steps: 10,
                epochs: 100,
                warmup_ratio: 0.0,
                decay: false,
                ..TrainConfig::default()
            },
        }
    }
}

impl crate::config::Validate for AuditConfig {
    fn check(&self, c: &mut crate::config::Check) {
        c.sub("eval", &self.eval);
        c.sub("relearn", &self.relearn);
        for (i, q) in self.quantize.iter().enumerate() {
            if let Err(e) = crate::model::gguf_write::parse_type(q) {
                c.fail(&format!("quantize[{i}]"), e);
            }
        }
    }
}

/// The three numbers of every attack.
const REPORTED: [(&str, &str); 3] = [
    (names::FORGET_ROUGE, "forget_rouge"),
    (names::FORGET_PROB, "forget_prob"),
    (names::FORGET_REFUSAL_RATE, "forget_refusal_rate"),
];

/// The derived forget sets: (probe name, items).
fn probes(forget: &[QaItem], retain: &[QaItem], few_shot: usize) -> Vec<(String, Vec<QaItem>)> {
    let with_q = |q: &dyn Fn(&QaItem) -> Option<String>| -> Vec<QaItem> {
        forget
            .iter()
            .filter_map(|it| {
                q(it).map(|question| QaItem {
                    question,
                    ..it.clone()
                })
            })
            .collect()
    };
    let mut out = vec![];
    for (name, tpl) in super::exclusive::WRAPPERS {
        out.push((
            name.to_string(),
            with_q(&|it| Some(tpl.replace("{q}", &it.question))),
        ));
    }
    out[0].0 = "plain".into();
    out.insert(
        1,
        (
            "paraphrase".into(),
            with_q(&|it| it.paraphrased_question.clone()),
        ),
    );
    if few_shot > 0 && !retain.is_empty() {
        let prefix: String = retain
            .iter()
            .take(few_shot)
            .map(|r| format!("Question: {}\nAnswer: {}\n\n", r.question, r.answer))
            .collect();
        out.push((
            "few_shot".into(),
            with_q(&|it| Some(format!("{prefix}Question: {}\nAnswer:", it.question))),
        ));
    }
    out.retain(|(_, items)| !items.is_empty());
    out
}

/// Evaluate `model` on `items` as the forget set (ROUGE, probability, refusal rate).
fn forget_metrics(
    model: &crate::model::Llama,
    md: &ModelDir,
    cfg: &EvalConfig,
    items: &[QaItem],
    dir: &Path,
) -> Result<Map<String, Value>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write_qa(items, &dir.join(format!("{}.jsonl", cfg.forget_split)))?;
    let mut c = cfg.clone();
    c.data = dir.to_path_buf();
    c.sets = vec![SetName::Forget];
    c.retain_logs = None;
    c.reference_model = None;
    let out =
        Evaluator::new(model, &md.tok, &c, false)?.run(Some(&dir.join("eval")), None, true)?;
    let mut m = Map::new();
    for (k, short) in REPORTED {
        m.insert(
            short.into(),
            json!(out.summary.get(k).and_then(|v| v.as_f64())),
        );
    }
    m.insert("items".into(), json!(items.len()));
    Ok(m)
}

/// Run every attack on `md` (optionally against the model before unlearning) into `out`;
/// returns AUDIT.json's content (also written there).
pub fn audit(
    md: &ModelDir,
    original: Option<&Path>,
    cfg: &AuditConfig,
    out: &Path,
) -> Result<Value> {
    let forget_file = cfg.eval.file(SetName::Forget).map_err(|e| {
        Error::Invalid(format!(
            "audit: forget split `{}`: {e}",
            cfg.eval.forget_split
        ))
    })?;
    let forget = read_qa(&forget_file)?;
    let retain = cfg
        .eval
        .file(SetName::Retain)
        .ok()
        .map(|p| read_qa(&p))
        .transpose()?
        .unwrap_or_default();
    let mut attacks = Map::new();
    for (name, items) in probes(&forget, &retain, cfg.few_shot) {
        eprintln!("audit: {name} ({} questions)", items.len());
        let m = forget_metrics(
            &md.model,
            md,
            &cfg.eval,
            &items,
            &out.join("probes").join(&name),
        )?;
        attacks.insert(name, Value::Object(m));
    }
    for ty in &cfg.quantize {
        eprintln!("audit: quantize {ty}");
        let t = crate::model::gguf_write::parse_type(ty)?;
        let (q, _) = crate::model::gguf_write::roundtrip(&md.model, t)?;
        let name = format!("quantize_{}", ty.to_ascii_lowercase());
        let m = forget_metrics(&q, md, &cfg.eval, &forget, &out.join("probes").join(&name))?;
        attacks.insert(name, Value::Object(m));
    }
    attacks.insert(
        "relearn_half".into(),
        relearn_half(md, original, cfg, &forget, out)?,
    );
    let doc = json!({ "forget_split": cfg.eval.forget_split, "attacks": attacks });
    crate::util::fs::atomic_write(
        &out.join("AUDIT.json"),
        serde_json::to_string_pretty(&doc).unwrap().as_bytes(),
    )?;
    Ok(doc)
}

/// Fine-tune a fresh copy of the model on the first half of the forget set, measure the second.
fn relearn_half(
    md: &ModelDir,
    original: Option<&Path>,
    cfg: &AuditConfig,
    forget: &[QaItem],
    out: &Path,
) -> Result<Value> {
    if forget.len() < 2 {
        return Ok(json!({ "skipped": "the forget set has fewer than 2 items" }));
    }
    eprintln!("audit: relearning on half of the forget set");
    let (first, second) = forget.split_at(forget.len() / 2);
    let mut copy = ModelDir::load(&md.path, md.model.device())?;
    copy.merge_adapter()?; // relearning fine-tunes every weight
    let orig = original
        .map(|p| ModelDir::load(p, md.model.device()))
        .transpose()?;
    let f = Formatter::new(&copy.tok, cfg.relearn.prompt, cfg.relearn.max_len)?;
    let (data, eval) = (f.encode_items(first)?, f.encode_items(second)?);
    let run_dir = out.join("relearn_half");
    std::fs::create_dir_all(&run_dir).map_err(|e| Error::io(&run_dir, e))?;
    let r = super::attack::relearn(
        &copy,
        &data,
        &eval,
        orig.as_ref().map(|m| &m.model),
        &cfg.relearn,
        &run_dir,
        false,
    )?;
    Ok(json!({
        "relearn_items": r.relearn_items,
        "eval_items": r.eval_items,
        "steps": r.steps,
        "forget_prob_before": r.before.prob,
        "forget_prob_after": r.after.prob,
        "forget_prob_original": r.original.map(|o| o.prob),
        "recovered": r.recovered,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_rewrite_the_question_only() {
        let mut a = QaItem::text("x");
        a.question = "Who is Ilse?".into();
        a.answer = "A glassblower.".into();
        a.paraphrased_question = Some("Ilse is who?".into());
        let mut b = a.clone();
        b.paraphrased_question = None;
        let r = vec![QaItem {
            question: "Q1?".into(),
            answer: "A1.".into(),
            ..a.clone()
        }];
        let p = probes(&[a.clone(), b], &r, 1);
        let names: Vec<&str> = p.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "plain",
                "paraphrase",
                "role_play",
                "prefix_injection",
                "ignore_previous",
                "few_shot"
            ]
        );
        assert_eq!(p[1].1.len(), 1, "only items with a paraphrase");
        assert_eq!(p[1].1[0].question, "Ilse is who?");
        assert!(p[2].1[0].question.ends_with("Max, Who is Ilse?"));
        assert_eq!(
            p[5].1[0].question,
            "Question: Q1?\nAnswer: A1.\n\nQuestion: Who is Ilse?\nAnswer:"
        );
        assert!(p
            .iter()
            .all(|(_, items)| items.iter().all(|i| i.answer == "A glassblower.")));
    }
}
