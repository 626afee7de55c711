//! GPT-NeoX / Pythia checkpoints: their tensor names and the per-head fused `query_key_value`,
//! mapped to and from the names the rest of the crate computes with (`model.layers.N.self_attn.
//! q_proj`, ...). The computation itself is the shared decoder in `llama.rs` with GPT-NeoX's
//! flags (LayerNorm with bias, partial RoPE, ungated GELU MLP, parallel residual).
//!
//! `query_key_value` holds, for each head h in turn, the rows of q_h, k_h and v_h (transformers
//! views its output as [b, t, heads, 3·head_dim] and chunks the last dim), so
//!   W_qkv.reshape(heads, 3, head_dim, hidden)[:, j]  is q (j = 0), k (1), v (2).
use std::collections::HashMap;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::model::LlamaConfig;

/// (GPT-NeoX name suffix, our name suffix) inside a layer.
const LAYER_NAMES: [(&str, &str); 6] = [
    ("input_layernorm", "input_layernorm"),
    ("post_attention_layernorm", "post_attention_layernorm"),
    ("attention.dense", "self_attn.o_proj"),
    ("mlp.dense_h_to_4h", "mlp.up_proj"),
    ("mlp.dense_4h_to_h", "mlp.down_proj"),
    ("attention.query_key_value", ""),
];

const TOP_NAMES: [(&str, &str); 4] = [
    ("gpt_neox.embed_in.weight", "model.embed_tokens.weight"),
    ("gpt_neox.final_layer_norm.weight", "model.norm.weight"),
    ("gpt_neox.final_layer_norm.bias", "model.norm.bias"),
    ("embed_out.weight", "lm_head.weight"),
];

/// GPT-NeoX's checkpoint name of one of our tensors; q, k and v all map to their layer's
/// `query_key_value`.
pub fn checkpoint_name(n: &str) -> Option<String> {
    if let Some(&(theirs, _)) = TOP_NAMES.iter().find(|(_, ours)| *ours == n) {
        return Some(theirs.to_string());
    }
    let rest = n.strip_prefix("model.layers.")?;
    let (l, name) = rest.split_once('.')?;
    let (module, kind) = name.rsplit_once('.')?;
    let p = format!("gpt_neox.layers.{l}");
    if matches!(
        module,
        "self_attn.q_proj" | "self_attn.k_proj" | "self_attn.v_proj"
    ) {
        return Some(format!("{p}.attention.query_key_value.{kind}"));
    }
    let (theirs, _) = LAYER_NAMES
        .iter()
        .find(|(_, o)| *o == module && !o.is_empty())?;
    Some(format!("{p}.{theirs}.{kind}"))
}

/// The element count of every checkpoint tensor the configuration implies.
pub fn checkpoint_sizes(cfg: &LlamaConfig) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for (n, shape) in cfg.param_shapes() {
        if let Some(c) = checkpoint_name(&n) {
            *m.entry(c).or_default() += shape.iter().product::<usize>();
        }
    }
    m
}

/// Rename a GPT-NeoX checkpoint's tensors to ours and split `query_key_value` into q, k, v.
/// Buffers older checkpoints carry (the causal mask `attention.bias`, `attention.masked_bias`,
/// `rotary_emb.inv_freq`) are dropped. A checkpoint already in our names is left as it is.
pub fn split(
    cfg: &LlamaConfig,
    tensors: &mut HashMap<String, Tensor>,
    source: &std::path::Path,
) -> Result<()> {
    if !tensors.keys().any(|k| k.starts_with("gpt_neox.")) {
        return Ok(());
    }
    let (heads, hd, h) = (cfg.num_attention_heads, cfg.head_dim, cfg.hidden_size);
    for (theirs, ours) in TOP_NAMES {
        if let Some(t) = tensors.remove(theirs) {
            tensors.insert(ours.to_string(), t);
        }
    }
    for l in 0..cfg.num_hidden_layers {
        let p = format!("gpt_neox.layers.{l}");
        let q = format!("model.layers.{l}");
        for extra in [
            "attention.bias",
            "attention.masked_bias",
            "attention.rotary_emb.inv_freq",
        ] {
            tensors.remove(&format!("{p}.{extra}"));
        }
        for (theirs, ours) in LAYER_NAMES {
            for kind in ["weight", "bias"] {
                let Some(t) = tensors.remove(&format!("{p}.{theirs}.{kind}")) else {
                    continue;
                };
                if !ours.is_empty() {
                    tensors.insert(format!("{q}.{ours}.{kind}"), t);
                    continue;
                }
                let (shape, rows): (Vec<usize>, usize) = if kind == "weight" {
                    (vec![heads, 3, hd, h], 3 * heads * hd)
                } else {
                    (vec![heads, 3, hd], 3 * heads * hd)
                };
                if t.dim(0)? != rows || t.elem_count() != shape.iter().product::<usize>() {
                    return Err(Error::ShapeMismatch {
                        path: source.to_path_buf(),
                        name: format!("{p}.{theirs}.{kind}"),
                        expected: if kind == "weight" {
                            vec![rows, h]
                        } else {
                            vec![rows]
                        },
                        actual: t.dims().to_vec(),
                    });
                }
                let t = t.reshape(shape)?;
                for (j, name) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                    let part = t.narrow(1, j, 1)?.squeeze(1)?; // [heads, hd(, h)]
                    let part = if kind == "weight" {
                        part.reshape((heads * hd, h))?
                    } else {
                        part.reshape(heads * hd)?
                    };
                    tensors.insert(format!("{q}.self_attn.{name}.{kind}"), part.contiguous()?);
                }
            }
        }
    }
    Ok(())
}

/// Our tensors under GPT-NeoX's names, q, k, v fused per head into `query_key_value`.
pub fn fuse(cfg: &LlamaConfig, all: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
    let (heads, hd, h) = (cfg.num_attention_heads, cfg.head_dim, cfg.hidden_size);
    let mut map: HashMap<String, Tensor> = all.iter().cloned().collect();
    let mut out = vec![];
    for (n, _) in &all {
        let Some(t) = map.remove(n) else {
            continue; // k or v, fused with q already
        };
        let theirs = checkpoint_name(n)
            .ok_or_else(|| Error::Invalid(format!("GPT-NeoX: no checkpoint name for `{n}`")))?;
        let Some(prefix) = n
            .strip_suffix(".weight")
            .or_else(|| n.strip_suffix(".bias"))
            .and_then(|m| m.strip_suffix("self_attn.q_proj"))
        else {
            out.push((theirs, t));
            continue;
        };
        // q with its layer's k and v, per head [q_h; k_h; v_h]
        let kind = &n[n.rfind('.').unwrap() + 1..];
        let mut take = |m: &str| {
            let name = format!("{prefix}self_attn.{m}.{kind}");
            map.remove(&name)
                .ok_or_else(|| Error::Invalid(format!("GPT-NeoX: no `{name}` to fuse with `{n}`")))
        };
        let (k, v) = (take("k_proj")?, take("v_proj")?);
        let per_head = |x: &Tensor| -> Result<Tensor> {
            Ok(if kind == "weight" {
                x.reshape((heads, 1, hd, h))?
            } else {
                x.reshape((heads, 1, hd))?
            })
        };
        let fused = Tensor::cat(&[per_head(&t)?, per_head(&k)?, per_head(&v)?], 1)?;
        let fused = if kind == "weight" {
            fused.reshape((3 * heads * hd, h))?
        } else {
            fused.reshape(3 * heads * hd)?
        };
        out.push((theirs, fused));
    }
    Ok(out)
}
