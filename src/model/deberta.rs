//! DeBERTa-v2 / DeBERTa-v3 sequence classifiers (inference only), for NLI metrics: the
//! closer-look paper's entailment score uses `sileod/deberta-v3-base-tasksource-nli`. HF tensor
//! names are kept (`deberta.embeddings…`, `deberta.encoder.layer.{i}…`, `pooler.dense`,
//! `classifier`); the tokenizer is the repository's `tokenizer.json`. Checked against
//! transformers' `DebertaV2ForSequenceClassification` on tiny random configurations
//! (tests/bert.rs, fixtures from scripts/make_deberta_ref.py).
//!
//! Embeddings: LN(E·W_proj) with E = word[id] (+ position[pos] when `position_biased_input`)
//! (+ token_type[type]), W_proj only when `embedding_size` ≠ hidden; padding rows zeroed.
//!
//! Disentangled attention, per head with d = head size and s = 1 + [c2p] + [p2c]:
//!   A_ij = q_i·k_j / √(d·s)  +  q_i·K^r_{δ(i,j)} / √(d·s)  (c2p)  +  k_j·Q^r_{δ(j,i)} / √(d·s)  (p2c)
//! where K^r = key projection of the relative embeddings R (the position-key projection unless
//! `share_att_key`), Q^r likewise with the query projection, and δ(i,j) = clamp(b(i − j) + S,
//! 0, 2S − 1) with S the span (`position_buckets`, else `max_relative_positions`, else
//! `max_position_embeddings`) and b the log-bucketing of relative distances beyond S/2:
//!   b(r) = r if |r| ≤ S/2, else sign(r)·(⌈ln(|r|/(S/2)) / ln((P − 1)/(S/2)) · (S/2 − 1)⌉ + S/2),
//! P = `max_relative_positions` (computed in f32, as torch does). R is LayerNorm-ed when
//! `norm_rel_ebd` contains `layer_norm`. Keys and queries outside the attention mask are masked.
//! Layer: a = LN(x + W_o·attn); y = LN(a + W_2·act(W_1·a)), post-LayerNorm as BERT. With
//! `conv_kernel_size` > 0 (DeBERTa-v2 xlarge), the first layer's output becomes
//! LN(y + act(conv1d(embeddings)) masked) · mask.
//! Head: ContextPooler (dense + `pooler_hidden_act` on the first token), then `classifier`.
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use serde::Deserialize;

use crate::error::{read_json, read_to_string, Error, Result};
use crate::ops::linear;

fn d_true() -> bool {
    true
}
fn d_neg1() -> i64 {
    -1
}
fn d_gelu() -> String {
    "gelu".into()
}
fn d_eps() -> f64 {
    1e-7
}
fn d_none() -> String {
    "none".into()
}
fn d_tanh() -> String {
    "tanh".into()
}

/// `pos_att_type`: "p2c|c2p" (older configs) or ["p2c", "c2p"] (transformers ≥ 4.4x writes).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(untagged)]
pub enum PosAttType {
    Joined(String),
    List(Vec<String>),
    #[default]
    Missing,
}

impl PosAttType {
    fn has(&self, k: &str) -> bool {
        match self {
            PosAttType::Joined(s) => s.to_lowercase().split('|').any(|x| x.trim() == k),
            PosAttType::List(v) => v.iter().any(|x| x.trim().eq_ignore_ascii_case(k)),
            PosAttType::Missing => false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct DebertaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "d_gelu")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub type_vocab_size: usize,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub relative_attention: bool,
    #[serde(default = "d_neg1")]
    pub max_relative_positions: i64,
    #[serde(default = "d_neg1")]
    pub position_buckets: i64,
    #[serde(default = "d_true")]
    pub position_biased_input: bool,
    #[serde(default)]
    pub pos_att_type: PosAttType,
    #[serde(default)]
    pub share_att_key: bool,
    #[serde(default = "d_none")]
    pub norm_rel_ebd: String,
    #[serde(default)]
    pub embedding_size: Option<usize>,
    #[serde(default)]
    pub conv_kernel_size: usize,
    #[serde(default)]
    pub conv_groups: Option<usize>,
    #[serde(default = "d_tanh")]
    pub conv_act: String,
    #[serde(default)]
    pub pooler_hidden_size: Option<usize>,
    #[serde(default = "d_gelu")]
    pub pooler_hidden_act: String,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub attention_head_size: Option<usize>,
    #[serde(default)]
    pub id2label: std::collections::HashMap<String, String>,
}

struct Ln {
    w: Tensor,
    b: Tensor,
    eps: f64,
}

impl Ln {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mu = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mu)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let y = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(y.broadcast_mul(&self.w)?.broadcast_add(&self.b)?)
    }
}

struct Dense {
    w: Tensor,
    b: Option<Tensor>,
}

impl Dense {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        linear(x, &self.w, self.b.as_ref())
    }
}

struct Layer {
    q: Dense,
    k: Dense,
    v: Dense,
    /// Separate position projections (DeBERTa-v2 without `share_att_key`).
    pos_k: Option<Dense>,
    pos_q: Option<Dense>,
    o: Dense,
    ln1: Ln,
    up: Dense,
    down: Dense,
    ln2: Ln,
}

struct Conv {
    w: Tensor,
    b: Tensor,
    ln: Ln,
    groups: usize,
}

pub struct Deberta {
    pub cfg: DebertaConfig,
    word: Tensor,
    pos: Option<Tensor>,
    token_type: Option<Tensor>,
    embed_proj: Option<Tensor>,
    ln_emb: Ln,
    rel: Option<Tensor>,
    rel_ln: Option<Ln>,
    conv: Option<Conv>,
    layers: Vec<Layer>,
    pooler: Dense,
    classifier: Dense,
    pub tokenizer: tokenizers::Tokenizer,
    pub max_len: usize,
    device: Device,
    c2p: bool,
    p2c: bool,
    span: usize,
    max_rel: usize,
    head_size: usize,
}

fn act(name: &str, x: &Tensor) -> Result<Tensor> {
    Ok(match name {
        "gelu" => x.gelu_erf()?,
        "gelu_new" | "gelu_pytorch_tanh" => x.gelu()?,
        "tanh" => x.tanh()?,
        "relu" => x.relu()?,
        other => {
            return Err(Error::Invalid(format!(
                "DeBERTa: activation {other:?} is not supported (gelu, gelu_new, tanh, relu)"
            )))
        }
    })
}

/// DeBERTa's log-bucketed relative position of `r` (see the module doc), in f32 like torch.
pub fn bucket(r: i64, buckets: i64, max_position: i64) -> i64 {
    let mid = buckets / 2;
    let abs = if r < mid && r > -mid {
        mid - 1
    } else {
        r.abs()
    };
    if abs <= mid {
        return r;
    }
    let log_pos = ((abs as f32 / mid as f32).ln() / ((max_position - 1) as f32 / mid as f32).ln()
        * (mid - 1) as f32)
        .ceil()
        + mid as f32;
    (log_pos as i64) * r.signum()
}

/// Shape-checked weights of a checkpoint, read by the names of `DebertaV2Model`.
struct Weights<'a> {
    l: &'a crate::model::hf::Loader<'a>,
    cfg: &'a DebertaConfig,
}

impl Weights<'_> {
    fn ln(&self, name: &str) -> Result<Ln> {
        let h = self.cfg.hidden_size;
        Ok(Ln {
            w: self.l.get(&format!("{name}.weight"), &[h])?,
            b: self.l.get(&format!("{name}.bias"), &[h])?,
            eps: self.cfg.layer_norm_eps,
        })
    }

    /// A linear layer; `top`: a head tensor, outside the base model's prefix.
    fn dense(&self, name: &str, out: usize, inp: usize, top: bool) -> Result<Dense> {
        let g = |n: String, s: &[usize]| {
            if top {
                self.l.top(&n, s)
            } else {
                self.l.get(&n, s)
            }
        };
        Ok(Dense {
            w: g(format!("{name}.weight"), &[out, inp])?,
            b: Some(g(format!("{name}.bias"), &[out])?),
        })
    }

    /// Encoder layer `i`; `all` = heads × head size.
    fn layer(&self, i: usize, all: usize, c2p: bool, p2c: bool) -> Result<Layer> {
        let cfg = self.cfg;
        let h = cfg.hidden_size;
        let ln = |name: &str| self.ln(name);
        let dense = |name: &str, out: usize, inp: usize, top: bool| self.dense(name, out, inp, top);
        let p = format!("encoder.layer.{i}");
        let sep = cfg.relative_attention && !cfg.share_att_key;
        Ok(Layer {
            q: dense(&format!("{p}.attention.self.query_proj"), all, h, false)?,
            k: dense(&format!("{p}.attention.self.key_proj"), all, h, false)?,
            v: dense(&format!("{p}.attention.self.value_proj"), all, h, false)?,
            pos_k: (sep && c2p)
                .then(|| dense(&format!("{p}.attention.self.pos_key_proj"), all, h, false))
                .transpose()?,
            pos_q: (sep && p2c)
                .then(|| dense(&format!("{p}.attention.self.pos_query_proj"), all, h, false))
                .transpose()?,
            o: dense(&format!("{p}.attention.output.dense"), h, all, false)?,
            ln1: ln(&format!("{p}.attention.output.LayerNorm"))?,
            up: dense(
                &format!("{p}.intermediate.dense"),
                cfg.intermediate_size,
                h,
                false,
            )?,
            down: dense(
                &format!("{p}.output.dense"),
                h,
                cfg.intermediate_size,
                false,
            )?,
            ln2: ln(&format!("{p}.output.LayerNorm"))?,
        })
    }
}

/// `tokenizer.json`, unpadded, truncated at `max_len`.
fn load_tokenizer(dir: &Path, max_len: usize) -> Result<tokenizers::Tokenizer> {
    let tok_path = dir.join("tokenizer.json");
    let tok_err = |e: tokenizers::Error| Error::Tokenizer {
        path: tok_path.clone(),
        msg: e.to_string(),
    };
    let mut tokenizer: tokenizers::Tokenizer =
        read_to_string(&tok_path)?.parse().map_err(tok_err)?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(tokenizers::TruncationParams {
            max_length: max_len,
            ..Default::default()
        }))
        .map_err(tok_err)?;
    Ok(tokenizer)
}

impl Deberta {
    /// Load a `DebertaV2ForSequenceClassification` directory.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let cpath = dir.join("config.json");
        let cfg: DebertaConfig = read_json(&cpath)?;
        let bad = |msg: String| Error::Config {
            path: cpath.clone(),
            msg,
        };
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                cfg.hidden_size, cfg.num_attention_heads
            )));
        }
        for a in [&cfg.hidden_act, &cfg.pooler_hidden_act] {
            act(a, &Tensor::zeros(1, DType::F32, device)?).map_err(|e| bad(e.to_string()))?;
        }
        let (tensors, path) = crate::model::hf::read_safetensors(dir, device)?;
        let l = crate::model::hf::Loader::new(
            &tensors,
            path,
            &["deberta.", ""],
            "embeddings.word_embeddings.weight",
        );
        let h = cfg.hidden_size;
        let e = cfg.embedding_size.unwrap_or(h);
        let nh = cfg.num_attention_heads;
        let hs = cfg.attention_head_size.unwrap_or(h / nh);
        let all = nh * hs;
        let w = Weights { l: &l, cfg: &cfg };
        let ln = |name: &str| w.ln(name);
        let dense = |name: &str, out: usize, inp: usize, top: bool| w.dense(name, out, inp, top);
        let c2p = cfg.pos_att_type.has("c2p");
        let p2c = cfg.pos_att_type.has("p2c");
        let max_rel = if cfg.max_relative_positions < 1 {
            cfg.max_position_embeddings
        } else {
            cfg.max_relative_positions as usize
        };
        let span = if cfg.position_buckets > 0 {
            cfg.position_buckets as usize
        } else {
            max_rel
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| w.layer(i, all, c2p, p2c))
            .collect::<Result<Vec<_>>>()?;
        let conv = if cfg.conv_kernel_size > 0 {
            let groups = cfg.conv_groups.unwrap_or(1).max(1);
            Some(Conv {
                w: l.get(
                    "encoder.conv.conv.weight",
                    &[h, h / groups, cfg.conv_kernel_size],
                )?,
                b: l.get("encoder.conv.conv.bias", &[h])?,
                ln: ln("encoder.conv.LayerNorm")?,
                groups,
            })
        } else {
            None
        };
        let ph = cfg.pooler_hidden_size.unwrap_or(h);
        let n_labels = cfg.id2label.len().max(1);
        let max_len = cfg.max_position_embeddings;
        let tokenizer = load_tokenizer(dir, max_len)?;
        Ok(Deberta {
            word: l.get("embeddings.word_embeddings.weight", &[cfg.vocab_size, e])?,
            pos: cfg
                .position_biased_input
                .then(|| {
                    l.get(
                        "embeddings.position_embeddings.weight",
                        &[cfg.max_position_embeddings, e],
                    )
                })
                .transpose()?,
            token_type: (cfg.type_vocab_size > 0)
                .then(|| {
                    l.get(
                        "embeddings.token_type_embeddings.weight",
                        &[cfg.type_vocab_size, e],
                    )
                })
                .transpose()?,
            embed_proj: (e != h)
                .then(|| l.get("embeddings.embed_proj.weight", &[h, e]))
                .transpose()?,
            ln_emb: ln("embeddings.LayerNorm")?,
            rel: cfg
                .relative_attention
                .then(|| l.get("encoder.rel_embeddings.weight", &[2 * span, h]))
                .transpose()?,
            rel_ln: (cfg.relative_attention && cfg.norm_rel_ebd.contains("layer_norm"))
                .then(|| ln("encoder.LayerNorm"))
                .transpose()?,
            conv,
            layers,
            pooler: dense("pooler.dense", ph, h, true)?,
            classifier: dense("classifier", n_labels, ph, true)?,
            tokenizer,
            max_len,
            device: device.clone(),
            c2p,
            p2c,
            span,
            max_rel,
            head_size: hs,
            cfg,
        })
    }

    /// Relative position index δ(i, j) = clamp(b(i − j) + S, 0, 2S − 1) for t × t, as u32.
    fn rel_index(&self, t: usize, negate: bool) -> Vec<u32> {
        let s = self.span as i64;
        let mut v = Vec::with_capacity(t * t);
        for i in 0..t as i64 {
            for j in 0..t as i64 {
                let mut r = i - j;
                if self.cfg.position_buckets > 0 {
                    r = bucket(r, self.cfg.position_buckets, self.max_rel as i64);
                }
                if negate {
                    r = -r;
                }
                v.push((r + s).clamp(0, 2 * s - 1) as u32);
            }
        }
        v
    }

    /// Last hidden states [b, t, h].
    fn hidden(&self, ids: &Tensor, types: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let h = self.cfg.hidden_size;
        let e = self.word.dim(1)?;
        let mut x = self
            .word
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, e))?;
        if let Some(p) = &self.pos {
            let pos = Tensor::arange(0u32, t as u32, &self.device)?;
            x = x.broadcast_add(&p.index_select(&pos, 0)?.unsqueeze(0)?)?;
        }
        if let Some(tt) = &self.token_type {
            let ty = types.clamp(0u32, tt.dim(0)? as u32 - 1)?;
            x = (x + tt.index_select(&ty.flatten_all()?, 0)?.reshape((b, t, e))?)?;
        }
        if let Some(w) = &self.embed_proj {
            x = linear(&x, w, None)?;
        }
        let m3 = mask.unsqueeze(2)?; // [b, t, 1]
        let emb = self.ln_emb.forward(&x)?.broadcast_mul(&m3)?;
        // keys and queries outside the mask: [b, 1, t, t] additive
        let pair = mask.unsqueeze(2)?.broadcast_mul(&mask.unsqueeze(1)?)?;
        let bias = ((pair - 1.0)? * 3.4e38)?.unsqueeze(1)?;
        let rel = match (&self.rel, &self.rel_ln) {
            (Some(r), Some(n)) => Some(n.forward(r)?),
            (Some(r), None) => Some(r.clone()),
            _ => None,
        };
        let nh = self.cfg.num_attention_heads;
        let hs = self.head_size;
        let scale_factor = 1 + usize::from(self.c2p) + usize::from(self.p2c);
        let scale = ((hs * scale_factor) as f64).sqrt();
        let idx = |negate: bool| -> Result<Tensor> {
            Tensor::from_vec(self.rel_index(t, negate), (1, 1, t, t), &self.device)?
                .broadcast_as((b, nh, t, t))?
                .contiguous()
                .map_err(Error::from)
        };
        let c2p_idx = if self.c2p { Some(idx(false)?) } else { None };
        let p2c_idx = if self.p2c { Some(idx(true)?) } else { None };
        let mut x = emb.clone();
        for (li, ly) in self.layers.iter().enumerate() {
            let heads = |y: Tensor, n: usize| -> Result<Tensor> {
                Ok(y.reshape((y.dim(0)?, n, nh, hs))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let (q, k, v) = (
                heads(ly.q.forward(&x)?, t)?,
                heads(ly.k.forward(&x)?, t)?,
                heads(ly.v.forward(&x)?, t)?,
            );
            let mut att = (q.matmul(&k.t()?)? / scale)?;
            if let Some(r) = &rel {
                let r = r.unsqueeze(0)?; // [1, 2S, h]
                let n2 = r.dim(1)?;
                if let Some(ci) = &c2p_idx {
                    let pk = ly.pos_k.as_ref().unwrap_or(&ly.k);
                    let pk = heads(pk.forward(&r)?, n2)?; // [1, nh, 2S, hs]
                    let c = q.broadcast_matmul(&pk.t()?)?; // [b, nh, t, 2S]
                    att = (att + (c.contiguous()?.gather(ci, 3)? / scale)?)?;
                }
                if let Some(pi) = &p2c_idx {
                    let pq = ly.pos_q.as_ref().unwrap_or(&ly.q);
                    let pq = heads(pq.forward(&r)?, n2)?;
                    let p = k.broadcast_matmul(&pq.t()?)?; // [b, nh, t(key), 2S]
                    let p = p.contiguous()?.gather(pi, 3)?.transpose(2, 3)?;
                    att = (att + (p / scale)?)?;
                }
            }
            let att = candle_nn::ops::softmax_last_dim(&att.broadcast_add(&bias)?)?;
            let ctx = att
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b, t, nh * hs))?;
            let a = ly.ln1.forward(&(ly.o.forward(&ctx)? + &x)?)?;
            let f = ly
                .down
                .forward(&act(&self.cfg.hidden_act, &ly.up.forward(&a)?)?)?;
            let mut y = ly.ln2.forward(&(f + a)?)?;
            if li == 0 {
                if let Some(c) = &self.conv {
                    let k = c.w.dim(2)?;
                    let out = emb
                        .transpose(1, 2)?
                        .contiguous()?
                        .conv1d(&c.w, (k - 1) / 2, 1, 1, c.groups)?
                        .broadcast_add(&c.b.reshape((1, h, 1))?)?
                        .transpose(1, 2)?
                        .broadcast_mul(&m3)?;
                    let out = act(&self.cfg.conv_act, &out)?;
                    y = c.ln.forward(&(y + out)?)?.broadcast_mul(&m3)?;
                }
            }
            x = y;
        }
        Ok(x)
    }

    /// Tokenise (premise, hypothesis) pairs: right-padded ids, token types and mask [b, t].
    fn encode(&self, pairs: &[(&str, &str)]) -> Result<(Tensor, Tensor, Tensor)> {
        let mut encs = Vec::with_capacity(pairs.len());
        for &(a, b) in pairs {
            encs.push(
                self.tokenizer
                    .encode((a, b), true)
                    .map_err(|e| Error::Tokenizer {
                        path: "tokenizer.json".into(),
                        msg: e.to_string(),
                    })?,
            );
        }
        let t = encs
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .unwrap_or(1)
            .max(1);
        let n = pairs.len();
        let pad = self.cfg.pad_token_id.unwrap_or(0);
        let (mut ids, mut types, mut mask) =
            (vec![pad; n * t], vec![0u32; n * t], vec![0f32; n * t]);
        for (r, e) in encs.iter().enumerate() {
            for (i, (&id, &ty)) in e.get_ids().iter().zip(e.get_type_ids()).enumerate() {
                ids[r * t + i] = id;
                types[r * t + i] = ty;
                mask[r * t + i] = 1.0;
            }
        }
        let d = &self.device;
        Ok((
            Tensor::from_vec(ids, (n, t), d)?,
            Tensor::from_vec(types, (n, t), d)?,
            Tensor::from_vec(mask, (n, t), d)?,
        ))
    }

    /// Classifier logits [n, labels] for (premise, hypothesis) pairs.
    pub fn classify(&self, pairs: &[(&str, &str)], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunks(batch_size.max(1)) {
            let (ids, types, mask) = self.encode(chunk)?;
            let hs = self.hidden(&ids, &types, &mask)?;
            let first = hs.narrow(1, 0, 1)?.squeeze(1)?;
            let pooled = act(&self.cfg.pooler_hidden_act, &self.pooler.forward(&first)?)?;
            let logits = self.classifier.forward(&pooled)?;
            out.extend(logits.to_dtype(DType::F32)?.to_vec2::<f32>()?);
        }
        Ok(out)
    }

    /// Index of the label whose name contains "entail" (and not "not").
    pub fn entailment_label(&self) -> Option<usize> {
        self.cfg
            .id2label
            .iter()
            .find(|(_, v)| v.to_lowercase().contains("entail") && !v.to_lowercase().contains("not"))
            .and_then(|(k, _)| k.parse().ok())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_buckets_by_hand() {
        // buckets 8 (mid 4), max position 64: |r| ≤ 4 unchanged; beyond it
        // ⌈ln(|r|/4)/ln(63/4)·3⌉ + 4, with the sign of r
        let b = |r| super::bucket(r, 8, 64);
        assert_eq!((b(0), b(3), b(-4), b(4)), (0, 3, -4, 4));
        // ln(5/4)/ln(15.75)·3 = 0.2438… → 1 → 5
        assert_eq!(b(5), 5);
        assert_eq!(b(-5), -5);
        // ln(63/4)/ln(15.75)·3 = 3 → 7
        assert_eq!(b(63), 7);
        // ln(16/4)/ln(15.75)·3 = 1.5088… → 2 → 6
        assert_eq!(b(-16), -6);
    }
}
