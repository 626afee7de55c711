//! Generation with a KV cache: greedy or temperature/top-p sampling, batched with left padding.
use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::model::{Hooks, KvCache, Llama};
use crate::rng::Rng;

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
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            max_new_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
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
        p.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
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
    let b = prompts.len();
    if b == 0 {
        return Ok(vec![]);
    }
    let dev = model.device();
    let maxp = prompts.iter().map(|p| p.len()).max().unwrap();
    let max_total = model.cfg.max_position_embeddings;
    let budget = cfg.max_new_tokens.min(max_total.saturating_sub(maxp));
    let mut ids = vec![pad_id; b * maxp];
    let mut km = vec![0f32; b * maxp];
    let mut pos = vec![0u32; b * maxp];
    let mut next_pos = vec![0u32; b];
    for (r, p) in prompts.iter().enumerate() {
        let off = maxp - p.len();
        for (i, &t) in p.iter().enumerate() {
            ids[r * maxp + off + i] = t;
            km[r * maxp + off + i] = 1.0;
            pos[r * maxp + off + i] = i as u32;
        }
        next_pos[r] = p.len() as u32;
    }
    let mut key_mask = km;
    let mut cache = KvCache::new(model.cfg.num_hidden_layers);
    let mut rngs: Vec<Rng> = item_ids
        .iter()
        .map(|&i| Rng::for_item(cfg.seed, "generate", i))
        .collect();
    let mut out: Vec<Vec<u32>> = vec![vec![]; b];
    let mut done = vec![false; b];
    let mut input = Tensor::from_vec(ids, (b, maxp), dev)?;
    let mut positions = Tensor::from_vec(pos, (b, maxp), dev)?;
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
            if stop.contains(&t) {
                done[r] = true;
            } else {
                out[r].push(t);
                next[r] = t;
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
