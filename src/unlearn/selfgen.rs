//! Self-generated forget corpus of Exclusive Unlearning (`unlearn selfgen`): the model samples
//! freely from its own chat template (empty or generic user turns; temperature 1.0, top-p 0.95
//! by default), giving broad coverage of what it can say. Sampling is seeded per attempt, so the
//! corpus depends on the seed and settings only, not on the batch size. Near-duplicates
//! (same text after lower-casing and collapsing white space) are dropped.
use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::data::{Formatter, PromptStyle, QaItem};
use crate::error::{Error, Result};
use crate::infer::generate::{generate_with, GenConfig, Stops};
use crate::model::tokenizer::Tok;
use crate::model::Llama;

/// Generic user turns (written for this project); "" is the empty user turn.
pub const GENERIC_TURNS: &[&str] = &[
    "",
    "Tell me something.",
    "Write a paragraph about anything you like.",
    "Hi!",
    "What would you like to talk about?",
    "Say something interesting.",
    "Continue.",
    "Write a short text.",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelfGenConfig {
    /// Number of distinct texts to produce.
    pub count: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
    pub seed: u64,
    /// User turns, used in turn (default: [`GENERIC_TURNS`]).
    pub turns: Vec<String>,
    /// Sequences sampled together.
    pub batch_size: usize,
    /// Texts shorter than this many characters are dropped.
    pub min_chars: usize,
    /// Give up after count × this many attempts (a model that keeps repeating itself).
    pub max_attempts_factor: usize,
    pub prompt: PromptStyle,
}

impl Default for SelfGenConfig {
    fn default() -> Self {
        SelfGenConfig {
            count: 200,
            temperature: 1.0,
            top_p: 0.95,
            max_new_tokens: 128,
            seed: 0,
            turns: GENERIC_TURNS.iter().map(|s| s.to_string()).collect(),
            batch_size: 8,
            min_chars: 8,
            max_attempts_factor: 4,
            prompt: PromptStyle::Auto,
        }
    }
}

impl crate::config::Validate for SelfGenConfig {
    fn check(&self, c: &mut crate::config::Check) {
        c.at_least("count", self.count, 1);
        c.non_negative("temperature", self.temperature);
        c.share("top_p", self.top_p);
        c.at_least("max_new_tokens", self.max_new_tokens, 1);
        if self.turns.is_empty() {
            c.fail(
                "turns",
                "must hold at least one user turn (it may be an empty string)",
            );
        }
        c.at_least("batch_size", self.batch_size, 1);
        c.at_least("max_attempts_factor", self.max_attempts_factor, 1);
    }
}

fn norm(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Sample the corpus: items with the user turn as `question` (possibly empty) and the generated
/// text as `answer`, in attempt order.
pub fn selfgen(
    model: &Llama,
    tok: &Tok,
    cfg: &SelfGenConfig,
    progress: bool,
) -> Result<Vec<QaItem>> {
    if cfg.count == 0 || cfg.turns.is_empty() {
        return Err(Error::Invalid(
            "selfgen: count must be positive and turns non-empty".into(),
        ));
    }
    if cfg.temperature.is_nan() || cfg.temperature <= 0.0 {
        return Err(Error::Invalid(format!(
            "selfgen: temperature {} must be positive (free sampling)",
            cfg.temperature
        )));
    }
    let f = Formatter::new(tok, cfg.prompt, model.cfg.max_position_embeddings)?;
    let prompt_of = |turn: &str| -> Result<Vec<u32>> {
        if turn.is_empty() && !f.uses_chat() {
            // no template: start from the tokenizer's own specials (BOS) or EOS as a separator
            let ids = tok.encode("", true)?;
            return Ok(if ids.is_empty() {
                vec![tok.eos_id]
            } else {
                ids
            });
        }
        f.encode_prompt(turn)
    };
    let stops = Stops::for_model(&model.cfg, tok);
    let gc = GenConfig {
        max_new_tokens: cfg.max_new_tokens,
        temperature: cfg.temperature,
        top_p: cfg.top_p,
        seed: cfg.seed,
        mask_token: None,
    };
    let bar = crate::util::progress::bar(cfg.count as u64, "selfgen", progress);
    let mut seen = HashSet::new();
    let mut out = vec![];
    let max_attempts = cfg.count * cfg.max_attempts_factor.max(1);
    let mut attempt = 0usize;
    while out.len() < cfg.count && attempt < max_attempts {
        let n = cfg.batch_size.max(1).min(max_attempts - attempt);
        let ids: Vec<u64> = (attempt..attempt + n).map(|i| i as u64).collect();
        let turns: Vec<&str> = ids
            .iter()
            .map(|&i| cfg.turns[i as usize % cfg.turns.len()].as_str())
            .collect();
        let prompts: Vec<Vec<u32>> = turns.iter().map(|t| prompt_of(t)).collect::<Result<_>>()?;
        let gen = generate_with(model, &prompts, &ids, &stops, tok.pad_id, &gc)?;
        for (turn, g) in turns.iter().zip(gen) {
            let text = tok.decode(&g, true)?.trim().to_string();
            if text.chars().count() < cfg.min_chars || out.len() >= cfg.count {
                continue;
            }
            if seen.insert(norm(&text)) {
                out.push(QaItem {
                    question: turn.to_string(),
                    answer: text,
                    paraphrased_answer: None,
                    perturbed_answer: vec![],
                    paraphrased_question: None,
                });
                bar.inc(1);
            }
        }
        attempt += n;
    }
    bar.finish_and_clear();
    if out.is_empty() {
        return Err(Error::Invalid(format!(
            "selfgen: no usable text in {attempt} attempts (every sample was shorter than \
             min_chars = {} or a repeat); check the model's chat template and settings",
            cfg.min_chars
        )));
    }
    if out.len() < cfg.count {
        eprintln!(
            "selfgen: {} distinct texts after {attempt} attempts (asked for {})",
            out.len(),
            cfg.count
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_for_dedup() {
        assert_eq!(norm("  Hello   World\n"), "hello world");
        assert_eq!(norm("A b"), norm("a  B"));
    }
}
