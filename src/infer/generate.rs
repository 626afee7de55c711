//! Generation with a KV cache: greedy or temperature/top-p sampling, batched with left padding.
use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::model::{Hooks, KvCache, Llama};
use crate::util::rng::Rng;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenConfig {
    /// Maximum number of new tokens.
    pub max_new_tokens: usize,
    /// 0 = greedy (argmax); otherwise softmax temperature.
    pub temperature: f64,
    /// Nucleus sampling threshold (1.0 = off).
    pub top_p: f64,
    pub seed: u64,
    /// Mask every prompt position holding this token out of attention and number positions
    /// by the unmasked tokens, as `transformers`' `generate` does with open-unlearning's
    /// attention mask (`input_ids != pad_token_id`; `eval.compat = "open_unlearning"`).
    #[serde(skip)]
    pub mask_token: Option<u32>,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            max_new_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            mask_token: None,
        }
    }
}

/// Pick the next token from one row of logits.
fn pick(logits: &[f32], cfg: &GenConfig, rng: &mut Rng) -> u32 {
    if cfg.temperature <= 0.0 {
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i, (((x - m) as f64) / cfg.temperature).exp()))
        .collect();
    let z: f64 = p.iter().map(|x| x.1).sum();
    p.iter_mut().for_each(|x| x.1 /= z);
    if cfg.top_p < 1.0 {
        p.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut acc = 0.0;
        let mut keep = 0;
        for (k, x) in p.iter().enumerate() {
            acc += x.1;
            keep = k + 1;
            if acc >= cfg.top_p {
                break;
            }
        }
        p.truncate(keep);
        let z: f64 = p.iter().map(|x| x.1).sum();
        p.iter_mut().for_each(|x| x.1 /= z);
    }
    let u = rng.uniform();
    let mut acc = 0.0;
    for &(i, q) in &p {
        acc += q;
        if u < acc {
            return i as u32;
        }
    }
    p.last().map(|x| x.0 as u32).unwrap_or(0)
}

/// Where generation stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stops {
    /// Ids that end a row wherever they come (end of sequence); not emitted.
    pub end: Vec<u32>,
    /// Ids that end a row once it has produced a token outside `closing`; leading ones are
    /// emitted. UniErase's unlearning token opens a refusal as the first response token and
    /// closes it after (`[UNL] r [UNL]`), so a later one marks the end of the answer.
    pub closing: Vec<u32>,
}

impl Stops {
    /// The model's and tokenizer's end-of-sequence ids, and the tokenizer's unlearning tokens
    /// as closing ids.
    pub fn for_model(cfg: &crate::model::LlamaConfig, tok: &crate::model::tokenizer::Tok) -> Stops {
        let mut end = cfg.eos_token_ids.clone();
        end.push(tok.eos_id);
        end.sort_unstable();
        end.dedup();
        Stops {
            end,
            closing: tok.unlearning_token_ids(),
        }
    }

    /// Whether `t` ends a row that has produced `so_far`.
    pub fn ends(&self, so_far: &[u32], t: u32) -> bool {
        self.end.contains(&t)
            || (self.closing.contains(&t) && so_far.iter().any(|x| !self.closing.contains(x)))
    }
}

/// A left-padded batch of prompts: every row ends at the last column, so the last position's
/// logits are every row's next-token prediction. Row-major [b, width] buffers.
pub struct LeftPadded {
    pub ids: Vec<u32>,
    /// Absolute position of each token (0 on padding).
    pub positions: Vec<u32>,
    /// 1 on real tokens, 0 on padding.
    pub key_mask: Vec<f32>,
    /// Column of each row's first real token.
    pub offset: Vec<usize>,
    pub width: usize,
}

impl LeftPadded {
    pub fn new<P: AsRef<[u32]>>(prompts: &[P], pad: u32) -> Self {
        let b = prompts.len();
        let width = prompts.iter().map(|p| p.as_ref().len()).max().unwrap_or(1);
        let mut lp = LeftPadded {
            ids: vec![pad; b * width],
            positions: vec![0; b * width],
            key_mask: vec![0.0; b * width],
            offset: Vec::with_capacity(b),
            width,
        };
        for (r, p) in prompts.iter().enumerate() {
            let p = p.as_ref();
            let off = width - p.len();
            for (i, &t) in p.iter().enumerate() {
                lp.ids[r * width + off + i] = t;
                lp.positions[r * width + off + i] = i as u32;
                lp.key_mask[r * width + off + i] = 1.0;
            }
            lp.offset.push(off);
        }
        lp
    }
}

/// Generate continuations of `prompts` (token ids). `item_ids` seed each row's sampler so a row's
/// output does not depend on the batch it is in. Stops a row at any id in `stop`.
/// Returns the new tokens of each row (stop token excluded).
pub fn generate(
    model: &Llama,
    prompts: &[Vec<u32>],
    item_ids: &[u64],
    stop: &[u32],
    pad_id: u32,
    cfg: &GenConfig,
) -> Result<Vec<Vec<u32>>> {
    let stops = Stops {
        end: stop.to_vec(),
        closing: vec![],
    };
    generate_with(model, prompts, item_ids, &stops, pad_id, cfg)
}

/// [`generate`] with end and closing ids ([`Stops`]).
pub fn generate_with(
    model: &Llama,
    prompts: &[Vec<u32>],
    item_ids: &[u64],
    stops: &Stops,
    pad_id: u32,
    cfg: &GenConfig,
) -> Result<Vec<Vec<u32>>> {
    generate_until(model, prompts, item_ids, stops, pad_id, cfg, &|_| false)
}

/// [`generate_with`] that also ends a row once `until(tokens so far)` holds (a stop string in
/// the decoded text, say); the token that made it hold is kept.
pub fn generate_until(
    model: &Llama,
    prompts: &[Vec<u32>],
    item_ids: &[u64],
    stops: &Stops,
    pad_id: u32,
    cfg: &GenConfig,
    until: &dyn Fn(&[u32]) -> bool,
) -> Result<Vec<Vec<u32>>> {
    let b = prompts.len();
    if b == 0 {
        return Ok(vec![]);
    }
    let ctx = model.cfg.max_position_embeddings;
    for p in prompts {
        if p.is_empty() {
            return Err(crate::error::Error::Invalid(
                "generation: an empty prompt (no tokens) has nothing to continue".into(),
            ));
        }
        if p.len() >= ctx {
            return Err(crate::error::Error::Invalid(format!(
                "generation: a prompt of {} tokens leaves no room in the model's context of \
                 {ctx} tokens",
                p.len()
            )));
        }
    }
    let dev = model.device();
    let mut lp = LeftPadded::new(prompts, pad_id);
    let maxp = lp.width;
    let mut unmasked: Vec<u32> = prompts.iter().map(|p| p.len() as u32).collect();
    if let Some(m) = cfg.mask_token {
        // positions = cumsum(mask) − 1 over the row, masked ones 1 (HF's generate)
        for (r, n) in unmasked.iter_mut().enumerate() {
            let mut c = 0u32;
            for j in r * maxp..(r + 1) * maxp {
                if lp.key_mask[j] == 1.0 && lp.ids[j] == m {
                    lp.key_mask[j] = 0.0;
                }
                if lp.key_mask[j] == 1.0 {
                    lp.positions[j] = c;
                    c += 1;
                } else {
                    lp.positions[j] = 1;
                }
            }
            *n = c;
        }
    }
    let max_total = model.cfg.max_position_embeddings;
    let budget = cfg.max_new_tokens.min(max_total.saturating_sub(maxp));
    let mut next_pos: Vec<u32> = unmasked;
    let mut key_mask = lp.key_mask;
    // no autograd graph: activations are freed as they are consumed, and the cache holds
    // plain tensors
    let model = &model.frozen_except(&[])?;
    let mut cache = KvCache::new(model.cfg.num_hidden_layers);
    let mut rngs: Vec<Rng> = item_ids
        .iter()
        .map(|&i| Rng::for_item(cfg.seed, "generate", i))
        .collect();
    let mut out: Vec<Vec<u32>> = vec![vec![]; b];
    let mut done = vec![false; b];
    let mut input = Tensor::from_vec(lp.ids, (b, maxp), dev)?;
    let mut positions = Tensor::from_vec(lp.positions, (b, maxp), dev)?;
    for _ in 0..budget {
        let total = key_mask.len() / b;
        let km_t = Tensor::from_vec(key_mask.clone(), (b, total), dev)?;
        let o = model.forward_with(
            &input,
            Some(&positions),
            Some(&km_t),
            Some(&mut cache),
            Hooks {
                last_logits_only: true,
                ..Default::default()
            },
        )?;
        let logits = Llama::last_logits(&o.logits.unwrap())?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        let mut next = vec![pad_id; b];
        for r in 0..b {
            if done[r] {
                continue;
            }
            let t = pick(&logits[r], cfg, &mut rngs[r]);
            if stops.ends(&out[r], t) {
                done[r] = true;
            } else {
                out[r].push(t);
                next[r] = t;
                done[r] = until(&out[r]);
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
        // Extend the key mask by one column (finished rows attend as padding: harmless).
        let mut nk = Vec::with_capacity(b * (total + 1));
        for r in 0..b {
            nk.extend_from_slice(&key_mask[r * total..(r + 1) * total]);
            nk.push(1.0);
        }
        key_mask = nk;
        input = Tensor::from_vec(next, (b, 1), dev)?;
        positions = Tensor::from_vec(next_pos.clone(), (b, 1), dev)?;
        for p in next_pos.iter_mut() {
            *p += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closing_token_ends_only_after_text() {
        let s = Stops {
            end: vec![2],
            closing: vec![9],
        };
        assert!(s.ends(&[], 2) && s.ends(&[5, 6], 2));
        // a leading [UNL] (or several) opens the refusal and is emitted
        assert!(!s.ends(&[], 9) && !s.ends(&[9], 9));
        // after any other token it closes the answer
        assert!(s.ends(&[9, 5], 9) && s.ends(&[5], 9));
        assert!(!s.ends(&[5], 7));
        let plain = Stops {
            end: vec![2],
            closing: vec![],
        };
        assert!(!plain.ends(&[5], 9));
    }
}
