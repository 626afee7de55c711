//! The model's own answers as training targets (`unlearn answers`), as the closer-look paper's
//! real-world scenario trains: each question of a QA file is answered greedily by the model under
//! the prompt unlearning will use, the row's `answer` becomes that generation and the original
//! answer is kept as `golden_answer` (unless the row has one), which evaluation can read back
//! with `answer_field = "golden_answer"`. Every other field of the row is kept.
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::data::{Formatter, PromptStyle};
use crate::error::{Error, Result};
use crate::infer::generate::{generate_with, GenConfig, Stops};
use crate::model::tokenizer::Tok;
use crate::model::Llama;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnswersConfig {
    /// Most new tokens per answer.
    pub max_new_tokens: usize,
    pub gen_batch_size: usize,
    /// Prompt style: use the one the unlearning run will use (`train.prompt`).
    pub prompt: PromptStyle,
    pub max_len: usize,
}

impl Default for AnswersConfig {
    fn default() -> Self {
        AnswersConfig {
            max_new_tokens: 128,
            gen_batch_size: 8,
            prompt: PromptStyle::Auto,
            max_len: 512,
        }
    }
}

impl crate::config::Validate for AnswersConfig {
    fn check(&self, c: &mut crate::config::Check) {
        c.at_least("max_new_tokens", self.max_new_tokens, 1);
        c.at_least("gen_batch_size", self.gen_batch_size, 1);
        c.at_least("max_len", self.max_len, 2);
    }
}

/// What [`self_answers`] did.
pub struct Answered {
    /// The rows to write, in input order, without the dropped ones.
    pub rows: Vec<Value>,
    /// Indices of rows whose answer came out empty (dropped: there is nothing to train on).
    pub empty: Vec<usize>,
}

/// Answer every row's `question` greedily; see the module doc.
pub fn self_answers(
    model: &Llama,
    tok: &Tok,
    rows: Vec<Value>,
    cfg: &AnswersConfig,
    progress: bool,
) -> Result<Answered> {
    let f = Formatter::new(tok, cfg.prompt, cfg.max_len)?;
    let mut prompts = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let q = r
            .get("question")
            .and_then(|q| q.as_str())
            .filter(|q| !q.trim().is_empty())
            .ok_or_else(|| Error::Invalid(format!("row {i} has no non-empty `question`")))?;
        prompts.push(f.encode_prompt(q)?);
    }
    let stops = Stops::for_model(&model.cfg, tok);
    let gc = GenConfig {
        max_new_tokens: cfg.max_new_tokens,
        ..GenConfig::default()
    };
    let bar = crate::util::progress::bar(rows.len() as u64, "answers", progress);
    let mut gens = Vec::with_capacity(rows.len());
    let ids: Vec<u64> = (0..prompts.len() as u64).collect();
    for (p, id) in prompts
        .chunks(cfg.gen_batch_size)
        .zip(ids.chunks(cfg.gen_batch_size))
    {
        for g in generate_with(model, p, id, &stops, tok.pad_id, &gc)? {
            gens.push(tok.decode(&g, true)?.trim().to_string());
        }
        bar.inc(p.len() as u64);
    }
    bar.finish_and_clear();
    let mut out = Answered {
        rows: vec![],
        empty: vec![],
    };
    for (i, (mut r, g)) in rows.into_iter().zip(gens).enumerate() {
        if g.is_empty() {
            out.empty.push(i);
            continue;
        }
        let o = r.as_object_mut().expect("rows are objects");
        if !o.contains_key("golden_answer") {
            if let Some(a) = o.get("answer").cloned() {
                o.insert("golden_answer".into(), a);
            }
        }
        o.insert("answer".into(), Value::String(g));
        out.rows.push(r);
    }
    Ok(out)
}
