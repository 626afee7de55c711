//! BERT / RoBERTa encoders (inference only) for the evaluation metrics: sentence embeddings with
//! all-MiniLM-L6-v2 (mean pooling over non-pad tokens) and NLI sequence classifiers
//! (`BertForSequenceClassification`, `RobertaForSequenceClassification`). HF tensor names are
//! kept; a `bert.` / `roberta.` prefix (classifier checkpoints) is accepted.
//!
//! Layer l (post-LayerNorm, as in the original BERT):
//!   a = LN(x + W_o · MHA(W_q x, W_k x, W_v x))
//!   y = LN(a + W_2 · gelu(W_1 a))
//! Embeddings: LN(word[id] + position[pos] + token_type[0]). RoBERTa positions start at
//! pad_token_id + 1 and skip padding.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use serde::Deserialize;

use crate::error::{read_json, read_to_string, Error, Result};
use crate::ops::linear;

#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: u32,
    /// Classifier label names by index (`{"0": "entailment", …}`).
    #[serde(default)]
    pub id2label: HashMap<String, String>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

struct LayerNorm {
    w: Tensor,
    b: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// (x − mean) / sqrt(var + eps) · w + b over the last dimension.
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
    b: Tensor,
}

impl Dense {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        linear(x, &self.w, Some(&self.b))
    }
}

struct Layer {
    q: Dense,
    k: Dense,
    v: Dense,
    o: Dense,
    ln1: LayerNorm,
    up: Dense,
    down: Dense,
    ln2: LayerNorm,
}

/// Classification head: BERT = pooler (dense + tanh on [CLS]) then `classifier`;
/// RoBERTa = `classifier.dense` + tanh then `classifier.out_proj` on <s>.
enum Head {
    Bert { pooler: Dense, classifier: Dense },
    Roberta { dense: Dense, out_proj: Dense },
}

pub struct Bert {
    pub cfg: BertConfig,
    word: Tensor,
    pos: Tensor,
    token_type: Tensor,
    ln_emb: LayerNorm,
    layers: Vec<Layer>,
    head: Option<Head>,
    pub tokenizer: tokenizers::Tokenizer,
    /// Longest input in tokens (sentence-transformers' `max_seq_length` when given).
    pub max_len: usize,
    device: Device,
}

impl Bert {
    /// Load an encoder (and its classification head when present) from a HF directory.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let cfg: BertConfig = read_json(&dir.join("config.json"))?;
        if cfg.model_type != "bert" && cfg.model_type != "roberta" {
            return Err(Error::Invalid(format!(
                "{}: model_type {:?} is not supported (bert and roberta encoders are; \
                 deberta-v2 classifiers load as NLI models)",
                dir.display(),
                cfg.model_type
            )));
        }
        if !cfg.hidden_act.starts_with("gelu") {
            return Err(Error::Invalid(format!(
                "{}: hidden_act {:?} is not supported (gelu only)",
                dir.display(),
                cfg.hidden_act
            )));
        }
        let (tensors, path) = crate::model::hf::read_safetensors(dir, device)?;
        let tok_path = dir.join("tokenizer.json");
        let tok_err = |e: tokenizers::Error| Error::Tokenizer {
            path: tok_path.clone(),
            msg: e.to_string(),
        };
        let mut tokenizer: tokenizers::Tokenizer =
            read_to_string(&tok_path)?.parse().map_err(tok_err)?;
        tokenizer.with_padding(None);
        let st: Option<serde_json::Value> = read_json(&dir.join("sentence_bert_config.json")).ok();
        let pos_offset = if cfg.model_type == "roberta" {
            cfg.pad_token_id as usize + 1
        } else {
            0
        };
        let max_len = st
            .and_then(|v| v.get("max_seq_length").and_then(|x| x.as_u64()))
            .map(|x| x as usize)
            .unwrap_or(cfg.max_position_embeddings - pos_offset)
            .min(cfg.max_position_embeddings - pos_offset);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(tok_err)?;
        let l = crate::model::hf::Loader::new(
            &tensors,
            path,
            &["bert.", "roberta.", ""],
            "embeddings.word_embeddings.weight",
        );
        let h = cfg.hidden_size;
        let ln = |name: &str| -> Result<LayerNorm> {
            Ok(LayerNorm {
                w: l.get(&format!("{name}.weight"), &[h])?,
                b: l.get(&format!("{name}.bias"), &[h])?,
                eps: cfg.layer_norm_eps,
            })
        };
        let dense = |name: &str, out: usize, inp: usize, top: bool| -> Result<Dense> {
            let g = |n: String, s: &[usize]| if top { l.top(&n, s) } else { l.get(&n, s) };
            Ok(Dense {
                w: g(format!("{name}.weight"), &[out, inp])?,
                b: g(format!("{name}.bias"), &[out])?,
            })
        };
        let mut layers = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let m = cfg.intermediate_size;
            layers.push(Layer {
                q: dense(&format!("{p}.attention.self.query"), h, h, false)?,
                k: dense(&format!("{p}.attention.self.key"), h, h, false)?,
                v: dense(&format!("{p}.attention.self.value"), h, h, false)?,
                o: dense(&format!("{p}.attention.output.dense"), h, h, false)?,
                ln1: ln(&format!("{p}.attention.output.LayerNorm"))?,
                up: dense(&format!("{p}.intermediate.dense"), m, h, false)?,
                down: dense(&format!("{p}.output.dense"), h, m, false)?,
                ln2: ln(&format!("{p}.output.LayerNorm"))?,
            });
        }
        let n_labels = cfg.id2label.len().max(1);
        let head = if tensors.contains_key("classifier.out_proj.weight") {
            Some(Head::Roberta {
                dense: dense("classifier.dense", h, h, true)?,
                out_proj: dense("classifier.out_proj", n_labels, h, true)?,
            })
        } else if tensors.contains_key("classifier.weight") {
            Some(Head::Bert {
                pooler: dense("pooler.dense", h, h, false)?,
                classifier: dense("classifier", n_labels, h, true)?,
            })
        } else {
            None
        };
        Ok(Bert {
            word: l.get("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?,
            pos: l.get(
                "embeddings.position_embeddings.weight",
                &[cfg.max_position_embeddings, h],
            )?,
            token_type: l.get(
                "embeddings.token_type_embeddings.weight",
                &[cfg.type_vocab_size, h],
            )?,
            ln_emb: ln("embeddings.LayerNorm")?,
            layers,
            head,
            tokenizer,
            max_len,
            device: device.clone(),
            cfg,
        })
    }

    /// Tokenise texts (or text pairs) into right-padded ids [b, t], token types [b, t] and a
    /// key mask [b, t] (1 on real tokens).
    fn encode(&self, texts: &[(&str, Option<&str>)]) -> Result<(Tensor, Tensor, Tensor)> {
        let mut encs = Vec::with_capacity(texts.len());
        for &(a, b) in texts {
            let e = match b {
                None => self.tokenizer.encode(a, true),
                Some(b) => self.tokenizer.encode((a, b), true),
            }
            .map_err(|e| Error::Tokenizer {
                path: PathBuf::from("tokenizer.json"),
                msg: e.to_string(),
            })?;
            encs.push(e);
        }
        let t = encs
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .unwrap_or(1)
            .max(1);
        let n = texts.len();
        let pad = self.cfg.pad_token_id;
        let (mut ids, mut types, mut mask) =
            (vec![pad; n * t], vec![0u32; n * t], vec![0f32; n * t]);
        for (r, e) in encs.iter().enumerate() {
            for (i, (&id, &ty)) in e.get_ids().iter().zip(e.get_type_ids()).enumerate() {
                ids[r * t + i] = id;
                types[r * t + i] = ty.min(self.cfg.type_vocab_size as u32 - 1);
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

    /// Last hidden states [b, t, h] for ids/types/mask [b, t].
    fn hidden(&self, ids: &Tensor, types: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let h = self.cfg.hidden_size;
        let positions: Vec<u32> = if self.cfg.model_type == "roberta" {
            // create_position_ids_from_input_ids: cumsum(mask) · mask + pad_id
            let m = mask.to_vec2::<f32>()?;
            m.iter()
                .flat_map(|row| {
                    let mut c = 0u32;
                    row.iter()
                        .map(|&v| {
                            if v > 0.0 {
                                c += 1;
                                c + self.cfg.pad_token_id
                            } else {
                                self.cfg.pad_token_id
                            }
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        } else {
            (0..b).flat_map(|_| 0..t as u32).collect()
        };
        let pos = Tensor::from_vec(positions, (b * t,), &self.device)?;
        let x = (self.word.index_select(&ids.flatten_all()?, 0)?
            + self.pos.index_select(&pos, 0)?)?
        .add(&self.token_type.index_select(&types.flatten_all()?, 0)?)?
        .reshape((b, t, h))?;
        let mut x = self.ln_emb.forward(&x)?;
        let nh = self.cfg.num_attention_heads;
        let hd = h / nh;
        // additive key mask [b, 1, 1, t]: 0 on real tokens, −1e9 on padding
        let bias = ((mask - 1.0)? * 1e9)?.reshape((b, 1, 1, t))?;
        for ly in &self.layers {
            let heads = |d: &Dense| -> Result<Tensor> {
                Ok(d.forward(&x)?
                    .reshape((b, t, nh, hd))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let (q, k, v) = (heads(&ly.q)?, heads(&ly.k)?, heads(&ly.v)?);
            let att = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?.broadcast_add(&bias)?;
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let ctx = att
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b, t, h))?;
            let a = ly.ln1.forward(&(ly.o.forward(&ctx)? + &x)?)?;
            let f = ly.down.forward(&ly.up.forward(&a)?.gelu_erf()?)?;
            x = ly.ln2.forward(&(f + a)?)?;
        }
        Ok(x)
    }

    /// Sentence embeddings [n, h]: mean of the last hidden states over non-pad tokens.
    pub fn embed(&self, texts: &[&str], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(batch_size.max(1)) {
            let pairs: Vec<_> = chunk.iter().map(|&s| (s, None)).collect();
            let (ids, types, mask) = self.encode(&pairs)?;
            let hs = self.hidden(&ids, &types, &mask)?; // [b, t, h]
            let m = mask.unsqueeze(2)?; // [b, t, 1]
            let sum = hs.broadcast_mul(&m)?.sum(1)?; // [b, h]
            let n = m.sum(1)?.clamp(1e-9, f64::INFINITY)?; // [b, 1]
            let e = sum.broadcast_div(&n)?.to_dtype(DType::F32)?;
            out.extend(e.to_vec2::<f32>()?);
        }
        Ok(out)
    }

    /// Classifier logits [n, labels] for (premise, hypothesis) pairs.
    pub fn classify(&self, pairs: &[(&str, &str)], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        let head = self.head.as_ref().ok_or_else(|| {
            Error::Invalid("this encoder has no sequence-classification head".into())
        })?;
        let mut out = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunks(batch_size.max(1)) {
            let p: Vec<_> = chunk.iter().map(|&(a, b)| (a, Some(b))).collect();
            let (ids, types, mask) = self.encode(&p)?;
            let hs = self.hidden(&ids, &types, &mask)?;
            let cls = hs.narrow(1, 0, 1)?.squeeze(1)?; // [b, h]
            let logits = match head {
                Head::Bert { pooler, classifier } => {
                    classifier.forward(&pooler.forward(&cls)?.tanh()?)?
                }
                Head::Roberta { dense, out_proj } => {
                    out_proj.forward(&dense.forward(&cls)?.tanh()?)?
                }
            };
            out.extend(logits.to_dtype(DType::F32)?.to_vec2::<f32>()?);
        }
        Ok(out)
    }

    /// Index of the label whose name contains "entail" (case-insensitive).
    pub fn entailment_label(&self) -> Option<usize> {
        self.cfg
            .id2label
            .iter()
            .find(|(_, v)| v.to_lowercase().contains("entail") && !v.to_lowercase().contains("not"))
            .and_then(|(k, _)| k.parse().ok())
    }
}

/// Cosine similarity of two vectors (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += x as f64 * y as f64;
        aa += x as f64 * x as f64;
        bb += y as f64 * y as f64;
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        ab / (aa.sqrt() * bb.sqrt())
    }
}
