//! UniErase (METHODS.md): an unlearning token plus a null-space-constrained weight edit.
//!
//! 1. Token: `<unlearn_0>` ([UNL]) is added to the tokenizer and embedding; only its embedding
//!    row trains (a row mask), so that q ⊕ [UNL] is followed by a refusal r (chosen per question
//!    by a stable hash) and a closing [UNL]: loss = mean CE on r ⊕ [UNL] ⊕ EOS. Phase 1: plain
//!    prompts; phase 2: plain + chat-templated prompts; phase 3: per edit layer, steps with clamped
//!    Gaussian noise (std = mean|W|, clamp ±mean|W|) on that layer's `down_proj`, restored after
//!    each step.
//! 2. Edit (AlphaEdit, a null-space-constrained MEMIT) so that the first response token of each
//!    forget question becomes [UNL]: target residuals z_i at the last edit layer (an additive δ
//!    optimised for log P([UNL] | prompt) with a KL regulariser on a neutral prompt and
//!    ‖δ‖ ≤ clamp·‖h‖), then for each edit layer l in turn: keys K (down_proj inputs at the
//!    last prompt token), R = (z − h_current) / (layers left), Δ_l = R Kᵀ P_l (K Kᵀ P_l +
//!    C_prev P_l + λI)⁻¹ (`nullspace.rs`), W_l ← W_l + Δ_l, C_prev += K Kᵀ.
//!
//! Generation decodes with special tokens skipped, so a user sees the refusal, not [UNL].
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor, Var};
use faer::Mat;
use serde::{Deserialize, Serialize};

use super::keys;
use super::nullspace::{alphaedit_update, null_space_projector, SecondMoment};
use crate::data::{Encoded, Formatter, PromptStyle, QaItem};
use crate::error::{Error, Result};
use crate::infer::score::{token_mean_nll, Batch};
use crate::model::tokenizer::Tok;
use crate::model::{Hooks, Llama};
use crate::optim::{AdamW, AdamWConfig};
use crate::util::rng::{hash_bytes, Rng};

/// How forget items are edited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EditMode {
    /// All items in one edit.
    #[default]
    Batch,
    /// Rounds of `round_size` items, each edit on the previous result (C_prev accumulates).
    Sequential,
    /// One item per edit.
    Precise,
}

/// Where the keys are read and δ is added (METHODS.md: the last token of the subject span, by
/// default the whole question's last token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyToken {
    /// The last token of the prompt as the model sees it (the question with its template, the
    /// position that predicts the first response token). The default: small models route too
    /// little from earlier positions to the prediction for an edit there to take hold.
    #[default]
    PromptEnd,
    /// The last token of the question text inside the template (MEMIT's subject-end position).
    QuestionEnd,
}

/// UniErase settings (`[method.forget]` keys with `name = "unierase"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UniEraseConfig {
    pub token: String,
    pub phase1_epochs: usize,
    pub phase1_lr: f64,
    pub phase2_epochs: usize,
    pub phase2_lr: f64,
    /// Noise-robustness epochs per edit layer.
    pub phase3_epochs: usize,
    pub phase3_lr: f64,
    pub token_batch_size: usize,
    /// Edit layers (empty: 5 consecutive early-middle layers, 4..8 of 32, scaled to the model).
    pub layers: Vec<usize>,
    pub lambda: f64,
    /// Eigenvalue threshold of the null space (of the mean second moment).
    pub null_threshold: f64,
    pub v_steps: usize,
    pub v_lr: f64,
    pub kl_weight: f64,
    /// ‖δ‖ ≤ clamp_norm · ‖h‖.
    pub clamp_norm: f64,
    pub key_token: KeyToken,
    /// Train the closing [UNL] after the refusal (METHODS.md). With tied embeddings this also
    /// raises the [UNL] logit after ordinary answers; `false` trains r ⊕ EOS only.
    pub closing_token: bool,
    /// Weight of the retain guard in the token training: −log(1 − P([UNL])) at every answer
    /// position of the retain items (plain and chat-templated q ⊕ a ⊕ EOS), so that the row's
    /// output role, which the closing [UNL] trains, does not fire on retain text (an answer
    /// that ends in [UNL] instead of EOS). 0 turns it off (METHODS.md has no such term).
    pub retain_guard: f64,
    /// Protect the keys of the token-training sequences from the [UNL] position on.
    pub protect_token: bool,
    /// Protect the keys at the last prompt token of the retain questions (up to
    /// `corpus_max_texts`), besides the general corpus.
    pub protect_retain_prompts: bool,
    pub mode: EditMode,
    pub round_size: usize,
    /// General corpus for the protected second moments: a text file, one text per line
    /// (default: the retain set's question–answer texts).
    pub corpus: Option<PathBuf>,
    pub corpus_max_texts: usize,
    /// Where second moments are cached (default `.cache/unierase`).
    pub stats_dir: PathBuf,
}

impl Default for UniEraseConfig {
    fn default() -> Self {
        UniEraseConfig {
            token: "<unlearn_0>".into(),
            phase1_epochs: 5,
            phase1_lr: 1e-3,
            phase2_epochs: 3,
            phase2_lr: 1e-4,
            phase3_epochs: 2,
            phase3_lr: 1e-4,
            token_batch_size: 8,
            layers: vec![],
            lambda: 10.0,
            null_threshold: 2e-2,
            v_steps: 10,
            v_lr: 0.1,
            kl_weight: 0.0625,
            clamp_norm: 0.75,
            key_token: KeyToken::PromptEnd,
            closing_token: true,
            retain_guard: 1.0,
            protect_token: true,
            protect_retain_prompts: true,
            mode: EditMode::Batch,
            round_size: 8,
            corpus: None,
            corpus_max_texts: 1000,
            stats_dir: PathBuf::from(".cache/unierase"),
        }
    }
}

impl crate::config::Validate for UniEraseConfig {
    fn check(&self, c: &mut crate::config::Check) {
        c.non_empty("token", &self.token);
        c.at_least("phase1_epochs", self.phase1_epochs, 1);
        c.positive("phase1_lr", self.phase1_lr);
        c.positive("phase2_lr", self.phase2_lr);
        c.positive("phase3_lr", self.phase3_lr);
        c.at_least("token_batch_size", self.token_batch_size, 1);
        c.positive("lambda", self.lambda);
        c.positive("null_threshold", self.null_threshold);
        c.at_least("v_steps", self.v_steps, 1);
        c.positive("v_lr", self.v_lr);
        c.non_negative("kl_weight", self.kl_weight);
        c.positive("clamp_norm", self.clamp_norm);
        c.non_negative("retain_guard", self.retain_guard);
        c.at_least("round_size", self.round_size, 1);
        c.at_least("corpus_max_texts", self.corpus_max_texts, 1);
    }
}

/// Default edit layers: 5 of 32 starting at 4, scaled to `n` layers (at least one).
pub fn default_layers(n: usize) -> Vec<usize> {
    let count = ((5.0 * n as f64 / 32.0).round() as usize)
        .clamp(1, 5)
        .min(n);
    let start = ((4.0 * n as f64 / 32.0).round() as usize).min(n - count);
    (start..start + count).collect()
}

/// The refusal of question `q`: a stable hash of the text picks it from the pool.
pub fn refusal_for<'a>(q: &str, pool: &'a [String]) -> &'a str {
    &pool[(hash_bytes(q.as_bytes()) % pool.len() as u64) as usize]
}

/// prompt ⊕ [UNL] ⊕ r ⊕ [UNL] ⊕ EOS with labels on r ⊕ [UNL] ⊕ EOS.
fn token_item(f: &Formatter, q: &str, r: &str, unl: u32, closing: bool) -> Result<Encoded> {
    let mut ids = f.encode_prompt(q)?;
    ids.push(unl);
    let n_prompt = ids.len();
    let sep = if f.uses_chat() { "" } else { " " };
    ids.extend(f.tok.encode(&format!("{sep}{r}"), false)?);
    if closing {
        ids.push(unl);
    }
    ids.push(f.tok.eos_id);
    Ok(Encoded { ids, n_prompt })
}

/// What a UniErase run reports.
#[derive(Debug, Clone, Serialize)]
pub struct UniEraseReport {
    pub token_id: u32,
    pub layers: Vec<usize>,
    /// Mean P([UNL] first | forget prompt) before and after the edit.
    pub p_unl_before: f64,
    pub p_unl_after: f64,
    /// Null-space dimension per layer.
    pub null_dims: Vec<usize>,
    pub token_loss: Vec<f64>,
}

/// Retain guard: Σ −log(1 − P(unl)) over the labelled positions of `batch` / their count.
/// `logits`: [b, L−1, V].
fn guard_loss(logits: &Tensor, batch: &Batch, unl: u32) -> Result<Tensor> {
    let (b, t, _) = logits.dims3()?;
    let target = Tensor::from_vec(vec![unl; b * t], (b, t), logits.device())?;
    let p = crate::ops::gather_logprobs(logits, &target)?.exp()?; // [b, L−1]
    let nll = p.affine(-1.0, 1.0)?.clamp(1e-12, 1.0)?.log()?.neg()?;
    let n = batch.total_labels().max(1) as f64;
    Ok(((nll * batch.mask.to_dtype(logits.dtype())?)?.sum_all()? / n)?)
}

/// What one token-training phase trains on.
#[derive(Clone, Copy)]
struct Phase<'a> {
    items: &'a [Encoded],
    /// Retain items of the guard and its weight.
    guard: &'a [Encoded],
    guard_weight: f64,
    epochs: usize,
    lr: f64,
    /// Per step, clamped Gaussian noise on this layer's down_proj, restored after the step.
    noise: Option<usize>,
}

/// Train the [UNL] embedding row for one phase: mean CE of the labelled tokens of the forget
/// items plus `guard_weight` · [`guard_loss`] on as many retain items (taken in turn), through
/// the one training loop (`train::trainer`) with a constant learning rate and no clipping.
/// Returns the last step's CE.
fn train_token(
    model: &Llama,
    pad: u32,
    unl: u32,
    ph: &Phase,
    batch_size: usize,
    seed: u64,
) -> Result<f64> {
    use crate::optim::{Optimizer, Schedule};
    use crate::train::trainer::{NoHooks, Spec, Start, Trainer};
    // the [UNL] row of the embedding and, for an untied head, of the LM head (so that the
    // closing [UNL] can be predicted); every other row is masked
    let mut names = vec!["model.embed_tokens.weight"];
    if !model.cfg.tie_word_embeddings && model.param("lm_head.weight").is_some() {
        names.push("lm_head.weight");
    }
    let params: Vec<(String, Var)> = names
        .iter()
        .map(|n| {
            model
                .param(n)
                .map(|v| (n.to_string(), v.clone()))
                .ok_or_else(|| Error::Invalid(format!("unierase: the model has no `{n}`")))
        })
        .collect::<Result<_>>()?;
    let mut opt = AdamW::new(
        params.clone(),
        AdamWConfig {
            weight_decay: 0.0,
            ..AdamWConfig::default()
        },
    )?;
    for (i, (_, p)) in params.iter().enumerate() {
        let (v, h) = p.as_tensor().dims2()?;
        let mut mask = vec![0f32; v * h];
        mask[unl as usize * h..(unl as usize + 1) * h].fill(1.0);
        opt.set_mask(i, &Tensor::from_vec(mask, (v, h), model.device())?)?;
    }
    // gradients flow to the embedding (and head) only: no weight-gradient products elsewhere
    let view = model.frozen_except(&names)?;
    let bs = batch_size.max(1);
    let steps = ph.items.len().div_ceil(bs) * ph.epochs;
    let spec = Spec {
        epochs: ph.epochs,
        batch_size: bs,
        grad_accum: 1,
        max_grad_norm: 0.0,
        total: steps,
        schedule: Schedule {
            lr: ph.lr,
            warmup: 0,
            total: steps,
            decay: false,
        },
        order_seed: seed,
        curvature_seed: seed,
    };
    let mut obj = TokenLoss {
        model,
        view: &view,
        pad,
        unl,
        ph,
        seed,
        next_guard: 0,
        saved: None,
        last: f64::NAN,
    };
    let mut t = Trainer::new(model, params, Optimizer::AdamW(opt), spec);
    t.run(&mut obj, &mut NoHooks, Start::fresh(0))?;
    Ok(obj.last)
}

/// The token-training loss of one phase (see [`train_token`]).
struct TokenLoss<'a> {
    model: &'a Llama,
    view: &'a Llama,
    pad: u32,
    unl: u32,
    ph: &'a Phase<'a>,
    seed: u64,
    /// The next retain item of the guard (taken in turn).
    next_guard: usize,
    /// The noised layer's weight and its original value, restored after the step.
    saved: Option<(Var, Tensor)>,
    /// The last step's CE.
    last: f64,
}

impl crate::train::trainer::Objective for TokenLoss<'_> {
    fn n_items(&self) -> usize {
        self.ph.items.len()
    }

    /// Phase 3: clamped Gaussian noise on this phase's layer's down_proj for the step.
    fn before_step(&mut self, ctx: &crate::train::trainer::StepCtx) -> Result<()> {
        let Some(l) = self.ph.noise else {
            return Ok(());
        };
        let w = self
            .model
            .param(&format!("model.layers.{l}.mlp.down_proj.weight"))
            .ok_or_else(|| Error::Invalid(format!("unierase: no down_proj in layer {l}")))?
            .clone();
        let orig = w.as_tensor().copy()?;
        let std = orig.abs()?.mean_all()?.to_scalar::<f32>()? as f64;
        let mut rng = Rng::for_item(
            self.seed,
            "unierase-noise",
            (ctx.epoch * 100_000 + ctx.group) as u64,
        );
        let n: Vec<f32> = (0..orig.elem_count())
            .map(|_| (rng.normal() * std).clamp(-std, std) as f32)
            .collect();
        let noise = Tensor::from_vec(n, orig.shape(), self.model.device())?;
        w.set(&(&orig + noise)?)?;
        self.saved = Some((w, orig));
        Ok(())
    }

    fn loss(
        &mut self,
        idx: &[usize],
        scale: f64,
        _ctx: &crate::train::trainer::StepCtx,
    ) -> Result<crate::train::trainer::MicroLoss> {
        let ph = self.ph;
        let refs: Vec<&Encoded> = idx.iter().map(|&i| &ph.items[i]).collect();
        let b = Batch::new(&refs, self.pad, self.model.device())?;
        let mut loss = token_mean_nll(&self.view.forward(&b.input)?, &b)?;
        self.last = loss.to_scalar::<f32>()? as f64;
        if ph.guard_weight > 0.0 && !ph.guard.is_empty() {
            let refs: Vec<&Encoded> = (0..idx.len())
                .map(|k| &ph.guard[(self.next_guard + k) % ph.guard.len()])
                .collect();
            self.next_guard = (self.next_guard + idx.len()) % ph.guard.len();
            let gb = Batch::new(&refs, self.pad, self.model.device())?;
            let gl = guard_loss(&self.view.forward(&gb.input)?, &gb, self.unl)?;
            loss = (loss + (gl * ph.guard_weight)?)?;
        }
        if scale != 1.0 {
            loss = (loss * scale)?;
        }
        Ok(crate::train::trainer::MicroLoss {
            value: loss.to_scalar::<f32>()? as f64,
            loss,
            parts: vec![],
            tokens: b.input.elem_count(),
        })
    }

    fn after_step(&mut self, _ctx: &crate::train::trainer::StepCtx) -> Result<()> {
        if let Some((w, orig)) = self.saved.take() {
            w.set(&orig)?;
        }
        Ok(())
    }
}

/// One prompt of the edit: its ids, the position of the question's last token (where keys are
/// read and δ is added, as MEMIT does at the subject's last token), and the neutral prompt (the
/// bare question) of the KL term, whose δ position is its last token.
struct EditPrompt {
    ids: Vec<u32>,
    qpos: usize,
    neutral: Vec<u32>,
}

/// Position of the last token of `q` inside the prompt text of `f` (token offsets of the
/// tokenizer); the prompt's last token when `q` cannot be located.
fn question_end(f: &Formatter, q: &str, ids: &[u32]) -> Result<usize> {
    let text = f.prompt_text(q)?;
    let Some(start) = text.rfind(q) else {
        return Ok(ids.len() - 1);
    };
    let end = start + q.len();
    let enc = f
        .tok
        .inner
        .encode(text.as_str(), !f.uses_chat())
        .map_err(|e| Error::Tokenizer {
            path: PathBuf::from("<prompt>"),
            msg: e.to_string(),
        })?;
    if enc.get_ids() != ids {
        return Ok(ids.len() - 1);
    }
    let pos = enc
        .get_offsets()
        .iter()
        .enumerate()
        .rfind(|(_, (a, b))| b > a && *a < end)
        .map(|(i, _)| i);
    Ok(pos.unwrap_or(ids.len() - 1))
}

/// Where the keys of question `q` (prompt `ids`) are read.
fn key_pos(k: KeyToken, f: &Formatter, q: &str, ids: &[u32]) -> Result<usize> {
    match k {
        KeyToken::PromptEnd => Ok(ids.len() - 1),
        KeyToken::QuestionEnd => question_end(f, q, ids),
    }
}

/// [`LeftPadded`] as tensors, for the batched δ optimisation.
struct LeftPadded {
    ids: Tensor,       // [b, T] u32
    positions: Tensor, // [b, T] u32
    key_mask: Tensor,  // [b, T] f32, 1 on real tokens
    offset: Vec<usize>,
    width: usize,
}

impl LeftPadded {
    fn new(prompts: &[&[u32]], pad: u32, dev: &candle_core::Device) -> Result<Self> {
        let lp = crate::infer::generate::LeftPadded::new(prompts, pad);
        let shape = (prompts.len(), lp.width);
        Ok(LeftPadded {
            ids: Tensor::from_vec(lp.ids, shape, dev)?,
            positions: Tensor::from_vec(lp.positions, shape, dev)?,
            key_mask: Tensor::from_vec(lp.key_mask, shape, dev)?,
            offset: lp.offset,
            width: lp.width,
        })
    }

    fn forward(&self, model: &Llama, hooks: Hooks) -> Result<crate::model::ForwardOutput> {
        model.forward_with(
            &self.ids,
            Some(&self.positions),
            Some(&self.key_mask),
            None,
            hooks,
        )
    }

    /// [b, T, 1] one-hot of row r's (unpadded) position `at[r]`.
    fn place(&self, at: &[usize], dev: &candle_core::Device) -> Result<Tensor> {
        let mut v = vec![0f32; at.len() * self.width];
        for (r, &p) in at.iter().enumerate() {
            v[r * self.width + self.offset[r] + p] = 1.0;
        }
        Ok(Tensor::from_vec(v, (at.len(), self.width, 1), dev)?)
    }
}

/// Residuals after `layer` at row r's position `at[r]` (no δ): [b, H].
fn residuals_at(model: &Llama, batch: &LeftPadded, at: &[usize], layer: usize) -> Result<Tensor> {
    let o = batch.forward(
        model,
        Hooks {
            hidden_layers: &[layer],
            skip_logits: true,
            ..Default::default()
        },
    )?;
    let h = &o.hidden[0].1; // [b, T, H]
    let place = batch.place(at, model.device())?;
    Ok(h.broadcast_mul(&place)?.sum(1)?.detach())
}

/// Next-token log-probabilities at the last position of every row, with row r's `delta[r]` added
/// to the residual after `layer` at its position `at[r]`: [b, V]. `delta`: [b, H].
fn last_logprobs_with(
    model: &Llama,
    batch: &LeftPadded,
    at: &[usize],
    layer: usize,
    delta: &Tensor,
) -> Result<Tensor> {
    let add = batch
        .place(at, model.device())?
        .broadcast_mul(&delta.unsqueeze(1)?)?; // [b, T, H]
    let hook = |l: usize, x: &Tensor| Ok(if l == layer { Some((x + &add)?) } else { None });
    let o = batch.forward(
        model,
        Hooks {
            residual: Some(&hook),
            last_logits_only: true,
            ..Default::default()
        },
    )?;
    crate::ops::log_softmax_last_dim(&o.logits.unwrap().squeeze(1)?)
}

/// z_i = h_i + δ_i at the last edit layer, for all prompts at once (the δ_i are independent, so
/// one batched loss gives each its own gradient): δ_i maximises log P(unl | prompt_i) −
/// kl·KL(p₀ ‖ p_δ) on its neutral prompt, Adam(lr) for `steps`, ‖δ_i‖ ≤ clamp·‖h_i‖ after
/// every step. Returns z [n, H] and the log P(unl | prompt_i) each z_i reaches (what the edit
/// can at best achieve).
fn target_vectors(
    model: &Llama,
    prompts: &[&EditPrompt],
    layer: usize,
    unl: u32,
    pad: u32,
    cfg: &UniEraseConfig,
) -> Result<(Tensor, Vec<f64>)> {
    let dev = model.device();
    let n = prompts.len();
    let hsz = model.cfg.hidden_size;
    let main = LeftPadded::new(
        &prompts.iter().map(|p| &p.ids[..]).collect::<Vec<_>>(),
        pad,
        dev,
    )?;
    let at: Vec<usize> = prompts.iter().map(|p| p.qpos).collect();
    let neutral = LeftPadded::new(
        &prompts.iter().map(|p| &p.neutral[..]).collect::<Vec<_>>(),
        pad,
        dev,
    )?;
    let nat: Vec<usize> = prompts.iter().map(|p| p.neutral.len() - 1).collect();
    let h = residuals_at(model, &main, &at, layer)?; // [n, H]
    let max_norm: Vec<f64> = h
        .sqr()?
        .sum(1)?
        .sqrt()?
        .to_vec1::<f32>()?
        .iter()
        .map(|x| cfg.clamp_norm * *x as f64)
        .collect();
    let zero = Tensor::zeros((n, hsz), DType::F32, dev)?;
    let p0 = last_logprobs_with(model, &neutral, &nat, layer, &zero)?
        .detach()
        .exp()?; // [n, V]
    let logp0 = p0.clamp(1e-30, 1.0)?.log()?;
    let col = Tensor::from_vec(vec![unl; n], (n, 1), dev)?;
    let delta = Var::from_tensor(&zero)?;
    let (mut m, mut v) = (vec![0f64; n * hsz], vec![0f64; n * hsz]);
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
    for step in 1..=cfg.v_steps {
        let lp = last_logprobs_with(model, &main, &at, layer, delta.as_tensor())?;
        let nll = lp.gather(&col, 1)?.sum_all()?.neg()?;
        let lq = last_logprobs_with(model, &neutral, &nat, layer, delta.as_tensor())?;
        // Σ_i KL(p0_i ‖ q_i) = Σ p0 (log p0 − log q)
        let kl = (&p0 * (&logp0 - lq)?)?.sum_all()?;
        let loss = (nll + (kl * cfg.kl_weight)?)?;
        let g = loss.backward()?;
        let g = g
            .get(delta.as_tensor())
            .cloned()
            .ok_or_else(|| Error::Invalid("no gradient for δ".into()))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut d = delta.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        for i in 0..n * hsz {
            let gi = g[i] as f64;
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            let mh = m[i] / (1.0 - b1.powi(step as i32));
            let vh = v[i] / (1.0 - b2.powi(step as i32));
            d[i] -= (cfg.v_lr * mh / (vh.sqrt() + eps)) as f32;
        }
        for (r, row) in d.chunks_mut(hsz).enumerate() {
            let norm = row.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            if norm > max_norm[r] {
                let s = (max_norm[r] / norm) as f32;
                row.iter_mut().for_each(|x| *x *= s);
            }
        }
        delta.set(&Tensor::from_vec(d, (n, hsz), dev)?)?;
    }
    let reached = last_logprobs_with(model, &main, &at, layer, delta.as_tensor())?
        .gather(&col, 1)?
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .map(|x| *x as f64)
        .collect();
    Ok(((h + delta.as_tensor())?.detach(), reached))
}

fn to_mat(rows: &[f32], n: usize, d: usize) -> Mat<f64> {
    // rows: [n, d] row-major -> [d, n]
    Mat::from_fn(d, n, |i, j| rows[j * d + i] as f64)
}

/// Mean P(unl as the first response token) over the prompts.
fn p_first(model: &Llama, prompts: &[EditPrompt], unl: u32, pad: u32) -> Result<f64> {
    if prompts.is_empty() {
        return Ok(0.0);
    }
    let mut s = 0.0;
    for chunk in prompts.chunks(16) {
        let b = LeftPadded::new(
            &chunk.iter().map(|p| &p.ids[..]).collect::<Vec<_>>(),
            pad,
            model.device(),
        )?;
        let o = b.forward(
            model,
            Hooks {
                last_logits_only: true,
                ..Default::default()
            },
        )?;
        let lp = crate::ops::log_softmax_last_dim(&o.logits.unwrap().squeeze(1)?)?;
        s += lp
            .narrow(1, unl as usize, 1)?
            .exp()?
            .sum_all()?
            .to_scalar::<f32>()? as f64;
    }
    Ok(s / prompts.len() as f64)
}

/// The edit layers (`layers`, else [`default_layers`]), after checking the inputs.
fn check_inputs(
    model: &Llama,
    forget: &[QaItem],
    refusals: &[String],
    cfg: &UniEraseConfig,
) -> Result<Vec<usize>> {
    if forget.is_empty() {
        return Err(Error::Invalid("unierase: empty forget set".into()));
    }
    if refusals.is_empty() {
        return Err(Error::Invalid("unierase: empty refusal pool".into()));
    }
    if !crate::model::tokenizer::is_unlearning_token(&cfg.token) {
        return Err(Error::Invalid(format!(
            "unierase: token `{}` must be named `<unlearn_N>` (N digits): generation recognises \
             the closing unlearning token by that name",
            cfg.token
        )));
    }
    let n_layers = model.cfg.num_hidden_layers;
    if cfg.layers.is_empty() {
        return Ok(default_layers(n_layers));
    }
    let mut l = cfg.layers.clone();
    l.sort();
    l.dedup();
    if let Some(&bad) = l.iter().find(|&&x| x >= n_layers) {
        return Err(Error::Invalid(format!(
            "unierase: edit layer {bad} does not exist (the model has {n_layers} layers)"
        )));
    }
    Ok(l)
}

/// Second moments of the general corpus (`corpus`, else the retain set) at the edit layers on
/// the original model (the new token never occurs in it, so they are the same for the model
/// with the token), cached under `stats_dir` by the model's and the corpus's content.
#[allow(clippy::too_many_arguments)]
fn corpus_moments(
    model: &Llama,
    tok: &Tok,
    model_dir: &Path,
    retain: &[QaItem],
    cfg: &UniEraseConfig,
    layers: &[usize],
    max_len: usize,
    note: &dyn Fn(&str),
) -> Result<Vec<SecondMoment>> {
    let plain = Formatter::new(tok, PromptStyle::Plain, max_len)?;
    let corpus: Vec<Vec<u32>> = match &cfg.corpus {
        Some(p) => crate::error::read_to_string(p)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(cfg.corpus_max_texts)
            .map(|l| {
                let mut ids = tok.encode(l, true)?;
                ids.truncate(max_len);
                Ok(ids)
            })
            .collect::<Result<_>>()?,
        None => retain
            .iter()
            .take(cfg.corpus_max_texts)
            .map(|it| Ok(plain.encode_qa(&it.question, &it.answer)?.ids))
            .collect::<Result<_>>()?,
    };
    if corpus.is_empty() {
        return Err(Error::Invalid(
            "unierase: no general corpus (give `corpus` or a retain set)".into(),
        ));
    }
    let corpus_hash = {
        let flat: Vec<u8> = corpus
            .iter()
            .flat_map(|v| v.iter().flat_map(|x| x.to_le_bytes()).chain([0xff; 4]))
            .collect();
        format!("{:016x}", hash_bytes(&flat))
    };
    let model_fp = crate::eval::dir_fingerprint(model_dir)?;
    let provenance = serde_json::json!({
        "model": model_dir, "model_fingerprint": model_fp,
        "corpus": cfg.corpus.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "retain set".into()),
        "corpus_hash": corpus_hash, "texts": corpus.len(), "layers": layers,
    });
    let key = format!("{:016x}", hash_bytes(provenance.to_string().as_bytes()));
    let stats_dir = cfg.stats_dir.join(key);
    keys::cached(&stats_dir, &provenance, layers, || {
        note(&format!(
            "unierase: second moments of {} corpus texts at layers {layers:?}",
            corpus.len()
        ));
        keys::second_moments(model, &corpus, layers, 8, tok.pad_id)
    })
}

/// The model and tokenizer with the trained unlearning token.
struct WithToken {
    model: Llama,
    tok: Tok,
    unl: u32,
    /// The token-training items of phases 2–3 (chat-templated and plain q ⊕ [UNL] ⊕ r).
    phase2: Vec<Encoded>,
    token_loss: Vec<f64>,
}

/// Step 1: add the token and train its embedding in phases (plain prompts; chat-templated
/// and plain; then with noise at each edit layer), with the retain guard.
#[allow(clippy::too_many_arguments)]
fn train_unlearning_token(
    model: &Llama,
    tok: &Tok,
    forget: &[QaItem],
    retain: &[QaItem],
    refusals: &[String],
    cfg: &UniEraseConfig,
    layers: &[usize],
    max_len: usize,
    seed: u64,
) -> Result<WithToken> {
    let w = super::tokens::add_special_tokens(model, tok, &[cfg.token.as_str()])?;
    let (model, tok, unl) = (w.model, w.tok, w.ids[0]);
    let plain = Formatter::new(&tok, PromptStyle::Plain, max_len)?;
    let auto = Formatter::new(&tok, PromptStyle::Auto, max_len)?;
    let mut phase1 = vec![];
    let mut phase2 = vec![];
    for it in forget {
        let r = refusal_for(&it.question, refusals);
        phase1.push(token_item(&plain, &it.question, r, unl, cfg.closing_token)?);
        if auto.uses_chat() {
            phase2.push(token_item(&auto, &it.question, r, unl, cfg.closing_token)?);
        }
    }
    phase2.extend(phase1.iter().cloned());
    // the retain guard's items: plain q ⊕ a ⊕ EOS (phase 1), plus chat-templated (phases 2–3)
    let mut guard1 = vec![];
    let mut guard2 = vec![];
    if cfg.retain_guard > 0.0 {
        for it in retain.iter().take(cfg.corpus_max_texts) {
            guard1.push(plain.encode_qa(&it.question, &it.answer)?);
            if auto.uses_chat() {
                guard2.push(auto.encode_qa(&it.question, &it.answer)?);
            }
        }
        guard2.extend(guard1.iter().cloned());
    }
    let base = Phase {
        items: &phase2,
        guard: &guard2,
        guard_weight: cfg.retain_guard,
        epochs: cfg.phase2_epochs,
        lr: cfg.phase2_lr,
        noise: None,
    };
    let mut phases = vec![
        Phase {
            items: &phase1,
            guard: &guard1,
            epochs: cfg.phase1_epochs,
            lr: cfg.phase1_lr,
            ..base
        },
        base,
    ];
    for &l in layers {
        phases.push(Phase {
            epochs: cfg.phase3_epochs,
            lr: cfg.phase3_lr,
            noise: Some(l),
            ..base
        });
    }
    let mut token_loss = vec![];
    for ph in &phases {
        let bs = cfg.token_batch_size;
        token_loss.push(train_token(&model, tok.pad_id, unl, ph, bs, seed)?);
    }
    Ok(WithToken {
        model,
        tok,
        unl,
        phase2,
        token_loss,
    })
}

/// What the token alone does: greedy continuations of two forget prompts ⊕ [UNL], as notes.
fn show_token(
    t: &WithToken,
    auto: &Formatter,
    forget: &[QaItem],
    cfg: &UniEraseConfig,
    note: &dyn Fn(&str),
) -> Result<()> {
    let probe: Vec<Vec<u32>> = forget
        .iter()
        .take(2)
        .map(|it| {
            let mut ids = auto.encode_prompt(&it.question)?;
            ids.push(t.unl);
            Ok(ids)
        })
        .collect::<Result<_>>()?;
    let gc = crate::infer::generate::GenConfig {
        max_new_tokens: 24,
        ..Default::default()
    };
    let stops = crate::infer::generate::Stops::for_model(&t.model.cfg, &t.tok);
    let ids: Vec<u64> = (0..probe.len() as u64).collect();
    for (it, g) in forget.iter().zip(crate::infer::generate::generate_with(
        &t.model,
        &probe,
        &ids,
        &stops,
        t.tok.pad_id,
        &gc,
    )?) {
        note(&format!(
            "unierase: {:?} ⊕ {} -> {:?}",
            it.question,
            cfg.token,
            t.tok.decode(&g, false)?
        ));
    }
    Ok(())
}

/// Null-space projectors per edit layer, and their dimensions. Protected: the general corpus;
/// with `protect_token`, what the token training established (keys from the [UNL] position on
/// of q ⊕ [UNL] ⊕ r ⊕ [UNL]), so that the edit does not also fire after [UNL] and repeat it;
/// with `protect_retain_prompts`, the keys at the retain questions' key positions (read where
/// the edit reads its keys, `key_token`), so retain questions keep their first token. P
/// projects onto the eigenvectors of the summed mean second moments below the threshold, i.e.
/// directions small under all of them.
fn null_spaces(
    t: &WithToken,
    auto: &Formatter,
    retain: &[QaItem],
    moments: &[SecondMoment],
    cfg: &UniEraseConfig,
    layers: &[usize],
) -> Result<(Vec<Mat<f64>>, Vec<usize>)> {
    let pad = t.tok.pad_id;
    let tok_moments = if cfg.protect_token {
        let texts: Vec<Vec<u32>> = t.phase2.iter().map(|e| e.ids.clone()).collect();
        let starts: Vec<usize> = t.phase2.iter().map(|e| e.n_prompt - 1).collect();
        Some(keys::second_moments_from(
            &t.model, &texts, &starts, layers, 8, pad,
        )?)
    } else {
        None
    };
    let retain_moments = if cfg.protect_retain_prompts && !retain.is_empty() {
        let texts: Vec<Vec<u32>> = retain
            .iter()
            .take(cfg.corpus_max_texts)
            .map(|it| {
                let ids = auto.encode_prompt(&it.question)?;
                let k = key_pos(cfg.key_token, auto, &it.question, &ids)?;
                Ok(ids[..=k].to_vec())
            })
            .collect::<Result<_>>()?;
        let starts: Vec<usize> = texts.iter().map(|t| t.len() - 1).collect();
        Some(keys::second_moments_from(
            &t.model, &texts, &starts, layers, 8, pad,
        )?)
    } else {
        None
    };
    let mut projectors = vec![];
    let mut null_dims = vec![];
    for (i, m) in moments.iter().enumerate() {
        let mut c = m.mean();
        for extra in [&tok_moments, &retain_moments].into_iter().flatten() {
            c += extra[i].mean();
        }
        let (p, k) = null_space_projector(&c, cfg.null_threshold)?;
        projectors.push(p);
        null_dims.push(k);
    }
    Ok((projectors, null_dims))
}

/// The state of step 2 across edit groups.
struct Editor<'a> {
    /// The model whose `down_proj` weights are edited.
    model: &'a Llama,
    /// A frozen view of it (shares the weights' storage, so it sees every edit).
    fz: Llama,
    prompts: Vec<EditPrompt>,
    layers: &'a [usize],
    projectors: Vec<Mat<f64>>,
    /// Σ k kᵀ of the keys of earlier edits, per layer.
    c_prev: Vec<Mat<f64>>,
    unl: u32,
    pad: u32,
    cfg: &'a UniEraseConfig,
}

impl Editor<'_> {
    /// Edit the prompts of group `g`: target vectors at the last edit layer, then at each edit
    /// layer the AlphaEdit update that moves the residual 1/(layers left) of the way.
    fn edit(&mut self, g: &[usize], note: &dyn Fn(&str)) -> Result<()> {
        let last = *self.layers.last().unwrap();
        let d = self.model.cfg.intermediate_size;
        let mut z = vec![];
        let mut reached = vec![];
        for part in g.chunks(32) {
            let ps: Vec<&EditPrompt> = part.iter().map(|&i| &self.prompts[i]).collect();
            let (zp, rp) = target_vectors(&self.fz, &ps, last, self.unl, self.pad, self.cfg)?;
            z.extend(zp.to_vec2::<f32>()?);
            reached.extend(rp);
        }
        let mean_p = reached.iter().map(|l| l.exp()).sum::<f64>() / reached.len().max(1) as f64;
        let mut in_null = vec![];
        let mut pk_sq = vec![]; // mean ‖P k‖², the scale λ competes with
        let enc: Vec<Encoded> = g
            .iter()
            .map(|&i| Encoded {
                // causal model: the key at qpos only depends on the tokens up to it
                ids: self.prompts[i].ids[..=self.prompts[i].qpos].to_vec(),
                n_prompt: self.prompts[i].qpos + 1,
            })
            .collect();
        for (li, &l) in self.layers.iter().enumerate() {
            let k = &keys::last_token_keys(&self.fz, &enc, &[l])?[0];
            let kmat = to_mat(k, g.len(), d); // [d, n]
                                              // share of the keys' energy in the null space: what the edit may act on
            let pk = &self.projectors[li] * &kmat;
            in_null.push(pk.norm_l2().powi(2) / kmat.norm_l2().powi(2).max(1e-30));
            pk_sq.push(pk.norm_l2().powi(2) / g.len() as f64);
            let left = (self.layers.len() - li) as f64;
            let r = self.residuals(g, &z, last, left)?;
            let delta = alphaedit_update(
                &r,
                &kmat,
                &self.projectors[li],
                &self.c_prev[li],
                self.cfg.lambda,
            )?;
            self.apply(l, &delta)?;
            self.c_prev[li] = &self.c_prev[li] + &kmat * kmat.transpose();
        }
        note(&format!(
            "unierase: edit of {} prompt(s): target vectors reach mean P({} first) {mean_p:.4}; \
             share of key energy in the null space per layer {:?}, mean ‖P k‖² {:?} (λ = {})",
            g.len(),
            self.cfg.token,
            in_null
                .iter()
                .map(|x| (x * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>(),
            pk_sq.iter().map(|x| format!("{x:.3e}")).collect::<Vec<_>>(),
            self.cfg.lambda
        ));
        Ok(())
    }

    /// (z − h_last) / left at each prompt's key position: [hidden, n].
    fn residuals(&self, g: &[usize], z: &[Vec<f32>], last: usize, left: f64) -> Result<Mat<f64>> {
        let hsz = self.model.cfg.hidden_size;
        let mut r = Mat::<f64>::zeros(hsz, g.len());
        let mut j = 0;
        for part in g.chunks(32) {
            let ids: Vec<&[u32]> = part.iter().map(|&i| &self.prompts[i].ids[..]).collect();
            let at: Vec<usize> = part.iter().map(|&i| self.prompts[i].qpos).collect();
            let b = LeftPadded::new(&ids, self.pad, self.model.device())?;
            for cur in residuals_at(&self.fz, &b, &at, last)?.to_vec2::<f32>()? {
                for a in 0..hsz {
                    r[(a, j)] = (z[j][a] as f64 - cur[a] as f64) / left;
                }
                j += 1;
            }
        }
        Ok(r)
    }

    /// W_down(l) += Δ.
    fn apply(&self, l: usize, delta: &Mat<f64>) -> Result<()> {
        let (hsz, d) = (self.model.cfg.hidden_size, self.model.cfg.intermediate_size);
        let name = format!("model.layers.{l}.mlp.down_proj.weight");
        let wv = self.model.param(&name).unwrap().clone();
        let dt: Vec<f32> = (0..hsz)
            .flat_map(|a| (0..d).map(move |b| (a, b)))
            .map(|(a, b)| delta[(a, b)] as f32)
            .collect();
        let dt = Tensor::from_vec(dt, (hsz, d), self.model.device())?;
        wv.set(&(wv.as_tensor() + dt)?)?;
        Ok(())
    }
}

/// Run UniErase on `model`/`tok` (the model already holds no [UNL]): returns the edited model,
/// its tokenizer and a report. `forget` and `retain` are QA items; `refusals` the pool.
#[allow(clippy::too_many_arguments)]
pub fn unierase(
    model: &Llama,
    tok: &Tok,
    model_dir: &Path,
    forget: &[QaItem],
    retain: &[QaItem],
    refusals: &[String],
    cfg: &UniEraseConfig,
    max_len: usize,
    seed: u64,
    note: &dyn Fn(&str),
) -> Result<(Llama, Tok, UniEraseReport)> {
    let layers = check_inputs(model, forget, refusals, cfg)?;
    let moments = corpus_moments(model, tok, model_dir, retain, cfg, &layers, max_len, note)?;
    // 1. the token
    let t = train_unlearning_token(
        model, tok, forget, retain, refusals, cfg, &layers, max_len, seed,
    )?;
    note(&format!(
        "unierase: token {} = id {}; training loss per phase {:?}",
        cfg.token, t.unl, t.token_loss
    ));
    let auto = Formatter::new(&t.tok, PromptStyle::Auto, max_len)?;
    show_token(&t, &auto, forget, cfg, note)?;
    let (projectors, null_dims) = null_spaces(&t, &auto, retain, &moments, cfg, &layers)?;
    note(&format!(
        "unierase: edit layers {layers:?}; null-space dimensions {null_dims:?} of {} (threshold {})",
        t.model.cfg.intermediate_size, cfg.null_threshold
    ));

    // 2. the edit: prompts as users will see them (chat template when there is one)
    let prompts: Vec<EditPrompt> = forget
        .iter()
        .map(|it| {
            let ids = auto.encode_prompt(&it.question)?;
            Ok(EditPrompt {
                qpos: key_pos(cfg.key_token, &auto, &it.question, &ids)?,
                ids,
                neutral: t.tok.encode(&it.question, true)?,
            })
        })
        .collect::<Result<_>>()?;
    let n = prompts.len();
    let groups: Vec<Vec<usize>> = match cfg.mode {
        EditMode::Batch => vec![(0..n).collect()],
        EditMode::Sequential => (0..n)
            .collect::<Vec<_>>()
            .chunks(cfg.round_size.max(1))
            .map(|c| c.to_vec())
            .collect(),
        EditMode::Precise => (0..n).map(|i| vec![i]).collect(),
    };
    let d = t.model.cfg.intermediate_size;
    let mut ed = Editor {
        model: &t.model,
        // the weights enter the δ optimisation detached (gradients for δ only); the view
        // shares their storage, so it sees every edit
        fz: t.model.frozen_except(&[])?,
        prompts,
        layers: &layers,
        projectors,
        c_prev: layers.iter().map(|_| Mat::zeros(d, d)).collect(),
        unl: t.unl,
        pad: t.tok.pad_id,
        cfg,
    };
    let p_before = p_first(&ed.fz, &ed.prompts, t.unl, t.tok.pad_id)?;
    for g in &groups {
        ed.edit(g, note)?;
    }
    let p_after = p_first(&ed.fz, &ed.prompts, t.unl, t.tok.pad_id)?;
    note(&format!(
        "unierase: mean P({} first | forget prompt) {p_before:.4} -> {p_after:.4} ({} edit(s), mode {:?})",
        cfg.token,
        groups.len(),
        cfg.mode
    ));
    let report = UniEraseReport {
        token_id: t.unl,
        layers,
        p_unl_before: p_before,
        p_unl_after: p_after,
        null_dims,
        token_loss: t.token_loss,
    };
    Ok((t.model, t.tok, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layers_scale_with_depth() {
        assert_eq!(default_layers(32), vec![4, 5, 6, 7, 8]);
        assert_eq!(default_layers(30), vec![4, 5, 6, 7, 8]);
        assert_eq!(default_layers(4), vec![1]);
        assert_eq!(default_layers(1), vec![0]);
        let pool: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(refusal_for("q1", &pool), refusal_for("q1", &pool));
    }

    /// −log(1 − P(unl)) at the labelled positions only, by hand: position 1 has equal logits
    /// (P = 1/4), position 2 gives unl the logit ln 3 (P = 3/6); position 0 is the prompt.
    #[test]
    fn guard_loss_by_hand() {
        let dev = candle_core::Device::Cpu;
        let e = Encoded {
            ids: vec![0, 1, 2, 3],
            n_prompt: 2,
        };
        let b = Batch::new(&[&e], 0, &dev).unwrap();
        let l3 = 3f32.ln();
        let logits = Tensor::from_vec(
            vec![0., 0., 0., 10., 0., 0., 0., 0., 0., 0., 0., l3],
            (1, 3, 4),
            &dev,
        )
        .unwrap();
        let got = guard_loss(&logits, &b, 3)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let want = (-(0.75f64).ln() - (0.5f64).ln()) / 2.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
}
