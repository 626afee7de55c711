//! Teacher-forced per-token log-probabilities of answers: the primitive every loss and metric
//! uses. Sequences are right-padded; with a causal mask no real token sees padding, so the
//! values do not depend on the batch a sequence is scored in.
use candle_core::{DType, Device, Tensor};

use crate::data::Encoded;
use crate::error::Result;
use crate::model::Llama;
use crate::ops;

/// A right-padded batch of L tokens per row, shifted for next-token prediction:
/// `input` [b, L−1] (u32), `targets` [b, L−1] (u32), `mask` [b, L−1] (f32, 1 on label positions).
pub struct Batch {
    pub input: Tensor,
    pub targets: Tensor,
    pub mask: Tensor,
    /// [b, L−1] f32, 1 on every real (non-padding) input position.
    pub valid: Tensor,
    /// Number of labelled tokens per row.
    pub n_labels: Vec<usize>,
}

impl Batch {
    pub fn new(items: &[&Encoded], pad_id: u32, device: &Device) -> Result<Self> {
        let l = items.iter().map(|e| e.ids.len()).max().unwrap_or(1).max(2);
        let b = items.len();
        let mut input = vec![pad_id; b * (l - 1)];
        let mut targets = vec![pad_id; b * (l - 1)];
        let mut mask = vec![0f32; b * (l - 1)];
        let mut valid = vec![0f32; b * (l - 1)];
        let mut n_labels = Vec::with_capacity(b);
        for (r, e) in items.iter().enumerate() {
            let row = r * (l - 1);
            for i in 0..e.ids.len() - 1 {
                input[row + i] = e.ids[i];
                targets[row + i] = e.ids[i + 1];
                valid[row + i] = 1.0;
                // position i predicts token i+1, a label iff i+1 >= n_prompt
                if i + 1 >= e.n_prompt {
                    mask[row + i] = 1.0;
                }
            }
            n_labels.push(e.n_labels());
        }
        Ok(Batch {
            input: Tensor::from_vec(input, (b, l - 1), device)?,
            targets: Tensor::from_vec(targets, (b, l - 1), device)?,
            mask: Tensor::from_vec(mask, (b, l - 1), device)?,
            valid: Tensor::from_vec(valid, (b, l - 1), device)?,
            n_labels,
        })
    }

    /// Total labelled tokens.
    pub fn total_labels(&self) -> usize {
        self.n_labels.iter().sum()
    }
}

/// Per-position log p(target) with non-label positions zeroed: [b, L−1].
pub fn label_logprobs(logits: &Tensor, batch: &Batch) -> Result<Tensor> {
    Ok((ops::gather_logprobs(logits, &batch.targets)? * &batch.mask)?)
}

/// Σ_t log p(a_t) per row: [b] (the summed log-probability of each answer, EOS included).
pub fn sum_logprobs(logits: &Tensor, batch: &Batch) -> Result<Tensor> {
    Ok(label_logprobs(logits, batch)?.sum(1)?)
}

/// nll_mean per row: −Σ_t log p(a_t) / |a|, [b].
pub fn nll_mean(logits: &Tensor, batch: &Batch) -> Result<Tensor> {
    let n: Vec<f32> = batch.n_labels.iter().map(|&n| n.max(1) as f32).collect();
    let n = Tensor::from_vec(n, batch.n_labels.len(), logits.device())?;
    Ok(sum_logprobs(logits, batch)?.neg()?.div(&n)?)
}

/// Token-mean NLL over every labelled token of the batch (the Hugging Face causal-LM loss).
pub fn token_mean_nll(logits: &Tensor, batch: &Batch) -> Result<Tensor> {
    let n = batch.total_labels().max(1) as f64;
    Ok((label_logprobs(logits, batch)?.sum_all()?.neg()? / n)?)
}

/// Σ −log p(ŷ_t) over the labelled positions of `batch`, with ŷ_t sampled from the model's own
/// (detached) softmax at each position: the loss whose gradient ĝ gives Sophia's
/// Gauss–Newton–Bartlett curvature ĥ = B·(ĝ/B)⊙(ĝ/B). Returns (sum, B = labelled positions).
/// `logits`: [b, L−1, V].
pub fn sampled_label_nll(
    logits: &Tensor,
    batch: &Batch,
    rng: &mut crate::util::rng::Rng,
) -> Result<(Tensor, usize)> {
    let probs = candle_nn::ops::softmax_last_dim(&logits.detach().to_dtype(DType::F32)?)?
        .to_vec3::<f32>()?;
    let mask = batch.mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let mut targets = batch.targets.to_dtype(DType::U32)?.to_vec2::<u32>()?;
    let mut n = 0;
    for ((row, m), t) in probs.iter().zip(&mask).zip(targets.iter_mut()) {
        for (j, p) in row.iter().enumerate() {
            if m[j] == 0.0 {
                continue;
            }
            n += 1;
            t[j] = sample_index(p, rng) as u32;
        }
    }
    let sampled = Tensor::new(targets, logits.device())?;
    let lp = ops::gather_logprobs(logits, &sampled)?;
    let loss = (lp * batch.mask.to_dtype(logits.dtype())?)?
        .sum_all()?
        .neg()?;
    Ok((loss, n))
}

/// Index k drawn with probability p[k] / Σp (inverse CDF).
pub fn sample_index(p: &[f32], rng: &mut crate::util::rng::Rng) -> usize {
    let u = rng.uniform() as f32 * p.iter().sum::<f32>();
    let mut c = 0.0;
    for (k, &pk) in p.iter().enumerate() {
        c += pk;
        if u < c {
            return k;
        }
    }
    p.len() - 1
}

/// Per-item per-token log-probabilities of the labelled tokens (no gradient), scored in batches
/// of `batch_size`. Item i gets a vector of length `items[i].n_labels()`.
pub fn score(model: &Llama, items: &[Encoded], batch_size: usize) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(items.len());
    // no autograd graph: each activation is freed as soon as the next op has read it
    let model = &model.frozen_except(&[])?;
    for chunk in items.chunks(batch_size.max(1)) {
        let refs: Vec<&Encoded> = chunk.iter().collect();
        let batch = Batch::new(&refs, 0, model.device())?;
        let logits = model.forward(&batch.input)?;
        let lp = ops::gather_logprobs(&logits, &batch.targets)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        for (e, row) in chunk.iter().zip(lp) {
            out.push(row[e.n_prompt - 1..e.ids.len() - 1].to_vec());
        }
    }
    Ok(out)
}

/// Per-token statistics of one answer from a teacher-forced pass.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenStats {
    /// log p(a_t) per answer token.
    pub logp: Vec<f32>,
    /// argmax of the predicted distribution == a_t.
    pub hit: Vec<bool>,
    /// μ_t = Σ_v p(v) log p(v) (minus the entropy).
    pub mu: Vec<f32>,
    /// σ_t² = Σ_v p(v) log² p(v) − μ_t².
    pub var: Vec<f32>,
}

impl TokenStats {
    /// Mean NLL (the "avg_loss" of open-unlearning); 0 for an empty answer.
    pub fn avg_loss(&self) -> f64 {
        if self.logp.is_empty() {
            return 0.0;
        }
        -self.logp.iter().map(|&x| x as f64).sum::<f64>() / self.logp.len() as f64
    }
    /// P(a|q) = exp(−avg_loss).
    pub fn prob(&self) -> f64 {
        (-self.avg_loss()).exp()
    }
}

/// Teacher-forced [`TokenStats`] of every item's labelled tokens (no gradient), in batches of
/// `batch_size` sorted by length (scoring is batch-invariant, so the order only saves padding).
/// `on_batch(n)` is called after each batch with its number of items (progress bars).
pub fn score_stats(
    model: &Llama,
    items: &[Encoded],
    batch_size: usize,
    on_batch: impl FnMut(usize),
) -> Result<Vec<TokenStats>> {
    score_stats_masked(model, items, batch_size, None, on_batch)
}

/// Logits of `input` [b, t]; with `mask_token`, every position holding that token is masked
/// out of attention as a key (positions stay 0..t).
pub fn logits_masked(model: &Llama, input: &Tensor, mask_token: Option<u32>) -> Result<Tensor> {
    Ok(match mask_token {
        None => model.forward(input)?,
        Some(m) => {
            let km = input.ne(m)?.to_dtype(DType::F32)?;
            model
                .forward_with(input, None, Some(&km), None, Default::default())?
                .logits
                .expect("logits are computed")
        }
    })
}

/// [`score_stats`]; with `mask_token`, every position holding that token is masked out of
/// attention as a key (open-unlearning's collator masks every token equal to the pad token,
/// which on SmolLM2/Qwen chat models is the end-of-turn token; positions stay 0..t).
pub fn score_stats_masked(
    model: &Llama,
    items: &[Encoded],
    batch_size: usize,
    mask_token: Option<u32>,
    mut on_batch: impl FnMut(usize),
) -> Result<Vec<TokenStats>> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| items[i].ids.len());
    let mut out = vec![TokenStats::default(); items.len()];
    let model = &model.frozen_except(&[])?; // no autograd graph (as in `score`)
    for chunk in order.chunks(batch_size.max(1)) {
        let refs: Vec<&Encoded> = chunk.iter().map(|&i| &items[i]).collect();
        let batch = Batch::new(&refs, 0, model.device())?;
        let logits = logits_masked(model, &batch.input, mask_token)?.to_dtype(DType::F32)?;
        // [b, t, 4]: log p(target), hit, μ, σ²
        let st = ops::token_stats(&logits, &batch.targets)?.to_vec3::<f32>()?;
        drop(logits);
        let col = |k: usize| -> Vec<Vec<f32>> {
            st.iter()
                .map(|row| row.iter().map(|v| v[k]).collect())
                .collect()
        };
        let (tgt, hits, mu, var) = (col(0), col(1), col(2), col(3));
        for (r, &i) in chunk.iter().enumerate() {
            let e = &items[i];
            let span = e.n_prompt - 1..e.ids.len() - 1;
            out[i] = TokenStats {
                logp: tgt[r][span.clone()].to_vec(),
                hit: span.clone().map(|j| hits[r][j] == 1.0).collect(),
                mu: mu[r][span.clone()].to_vec(),
                var: var[r][span].to_vec(),
            };
        }
        on_batch(chunk.len());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sampled labels follow the model's softmax: a near one-hot row always gives its argmax (loss
    /// ≈ 0); a uniform row over 4 classes gives each class about a quarter of the time. B counts
    /// labelled positions only.
    #[test]
    fn sampled_labels_follow_the_softmax() {
        let dev = Device::Cpu;
        // 2 items, answers of 3 and 2 labelled tokens
        let items = [
            Encoded {
                ids: vec![1, 2, 3, 0, 1],
                n_prompt: 2,
            },
            Encoded {
                ids: vec![1, 2, 3, 0],
                n_prompt: 2,
            },
        ];
        let refs: Vec<&Encoded> = items.iter().collect();
        let b = Batch::new(&refs, 0, &dev).unwrap();
        let mut peaked = vec![0f32; 2 * 4 * 4];
        for pos in 0..8 {
            peaked[pos * 4 + 2] = 60.0;
        }
        let logits = Tensor::from_vec(peaked, (2, 4, 4), &dev).unwrap();
        let mut rng = crate::util::rng::Rng::for_item(0, "t", 0);
        let (loss, n) = sampled_label_nll(&logits, &b, &mut rng).unwrap();
        assert_eq!(n, 5);
        assert!(loss.to_scalar::<f32>().unwrap().abs() < 1e-6);
        // uniform: loss = B·ln 4 whatever is drawn; frequencies over many draws ≈ 1/4
        let logits = Tensor::zeros((2, 4, 4), DType::F32, &dev).unwrap();
        let (loss, _) = sampled_label_nll(&logits, &b, &mut rng).unwrap();
        assert!((loss.to_scalar::<f32>().unwrap() - 5.0 * 4f32.ln()).abs() < 1e-4);
        let mut counts = [0usize; 4];
        let p = [0.1f32, 0.2, 0.3, 0.4];
        for _ in 0..20000 {
            counts[sample_index(&p, &mut rng)] += 1;
        }
        for (c, &pc) in counts.iter().zip(&p) {
            // binomial sd at n = 20000 is below 0.0035
            assert!((*c as f32 / 20000.0 - pc).abs() < 0.015, "{counts:?}");
        }
    }
}
