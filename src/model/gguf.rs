//! GGUF import (`unlearn import`): dequantize every tensor (F32, F16, BF16, Q4_0, Q4_1, Q5_*,
//! Q8_0, Q2_K..Q8_K through candle's kernels) into f32, map llama.cpp names back to Hugging Face
//! names, undo llama.cpp's Q/K row permutation, and rebuild `tokenizer.json` and the chat template
//! from the GGUF metadata (byte-level BPE "gpt2" and SentencePiece-style "llama" vocabularies).
use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::model::tokenizer::Tok;
use crate::model::{Arch, Llama, LlamaConfig, RopeScaling};

pub struct Imported {
    pub model: Llama,
    pub tok: Tok,
    /// Human-readable notes on what was derived (printed by the CLI).
    pub notes: Vec<String>,
}

struct Meta<'a> {
    md: &'a HashMap<String, Value>,
    path: &'a Path,
}

impl<'a> Meta<'a> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::Gguf {
            path: self.path.to_path_buf(),
            msg: msg.into(),
        }
    }
    fn get(&self, k: &str) -> Option<&'a Value> {
        self.md.get(k)
    }
    fn usize(&self, k: &str) -> Result<Option<usize>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => Ok(Some(
                v.to_u64()
                    .or_else(|_| v.to_u32().map(|x| x as u64))
                    .or_else(|_| v.to_i32().map(|x| x as u64))
                    .map_err(|e| self.err(format!("{k}: {}", crate::error::one_line(e))))?
                    as usize,
            )),
        }
    }
    fn req(&self, k: &str) -> Result<usize> {
        self.usize(k)?
            .ok_or_else(|| self.err(format!("metadata key `{k}` is missing")))
    }
    fn f64(&self, k: &str) -> Result<Option<f64>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => Ok(Some(
                v.to_f32()
                    .map(|x| x as f64)
                    .or_else(|_| v.to_f64())
                    .map_err(|e| self.err(format!("{k}: {}", crate::error::one_line(e))))?,
            )),
        }
    }
    fn str(&self, k: &str) -> Option<&'a str> {
        self.get(k)
            .and_then(|v| v.to_string().ok())
            .map(|s| s.as_str())
    }
    fn strings(&self, k: &str) -> Result<Vec<String>> {
        let v = self
            .get(k)
            .ok_or_else(|| self.err(format!("metadata key `{k}` is missing")))?;
        v.to_vec()
            .map_err(|e| self.err(format!("{k}: {}", crate::error::one_line(e))))?
            .iter()
            .map(|x| {
                x.to_string()
                    .cloned()
                    .map_err(|e| self.err(format!("{k}: {}", crate::error::one_line(e))))
            })
            .collect()
    }
    fn numbers(&self, k: &str) -> Result<Vec<f64>> {
        let Some(v) = self.get(k) else {
            return Ok(vec![]);
        };
        v.to_vec()
            .map_err(|e| self.err(format!("{k}: {}", crate::error::one_line(e))))?
            .iter()
            .map(|x| match x {
                Value::I32(i) => Ok(*i as f64),
                Value::U32(i) => Ok(*i as f64),
                Value::F32(f) => Ok(*f as f64),
                Value::I64(i) => Ok(*i as f64),
                Value::U8(i) => Ok(*i as f64),
                Value::I8(i) => Ok(*i as f64),
                other => Err(self.err(format!("{k}: unexpected element {other:?}"))),
            })
            .collect()
    }
}

/// Whether llama.cpp's converter permutes this architecture's q/k rows (its `LlamaModel.permute`,
/// which OLMo's converter copies): Llama, Mistral and OLMo (1).
pub(crate) fn permutes_qk(arch: Arch) -> bool {
    matches!(arch, Arch::Llama | Arch::Mistral | Arch::Olmo)
}

/// Undo llama.cpp's `permute(w, n_head)` of q/k rows: GGUF rows are ordered
/// (head, pair, half) where HF orders them (head, half, pair). w: [rows, ..].
pub fn unpermute_qk(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    let half = rows / n_head / 2;
    Ok(w.reshape((n_head, half, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

/// The inverse (HF -> GGUF), used by tests.
pub fn permute_qk(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    let half = rows / n_head / 2;
    Ok(w.reshape((n_head, 2, half, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

pub(crate) fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, name) = rest.split_once('.')?;
    let mapped = match name {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "attn_output.bias" => "self_attn.o_proj.bias",
        "attn_q_norm.weight" => "self_attn.q_norm.weight",
        "attn_k_norm.weight" => "self_attn.k_norm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{mapped}"))
}

/// In-layer tensors an architecture names differently from llama.cpp's Llama layout, as (our
/// name, llama.cpp's): Gemma's four norms (its `ffn_norm` is the pre-feed-forward norm), OLMo-2's
/// output norms, GPT-NeoX's LayerNorm and MLP biases. Import reads it one way, export the other.
pub(crate) fn arch_layer_names(arch: Arch) -> &'static [(&'static str, &'static str)] {
    match arch {
        Arch::Gemma2 | Arch::Gemma3 => &[
            (
                "post_attention_layernorm.weight",
                "post_attention_norm.weight",
            ),
            ("pre_feedforward_layernorm.weight", "ffn_norm.weight"),
            ("post_feedforward_layernorm.weight", "post_ffw_norm.weight"),
        ],
        Arch::Olmo2 => &[
            (
                "post_attention_layernorm.weight",
                "post_attention_norm.weight",
            ),
            ("post_feedforward_layernorm.weight", "post_ffw_norm.weight"),
        ],
        Arch::GptNeox => &[
            ("input_layernorm.bias", "attn_norm.bias"),
            ("post_attention_layernorm.bias", "ffn_norm.bias"),
            ("mlp.up_proj.bias", "ffn_up.bias"),
            ("mlp.down_proj.bias", "ffn_down.bias"),
        ],
        _ => &[],
    }
}

/// [`hf_name`] for a model of `arch`: Phi-3's `attn_qkv` and `ffn_up` are its fused
/// `qkv_proj` and `gate_up_proj` (split when the model is built).
fn hf_name_for(arch: Arch, gguf: &str) -> Option<String> {
    if arch == Arch::GptNeox {
        // GPT-NeoX's own checkpoint names (`neox::split` turns them into ours)
        let top = match gguf {
            "token_embd.weight" => Some("gpt_neox.embed_in.weight"),
            "output_norm.weight" => Some("gpt_neox.final_layer_norm.weight"),
            "output_norm.bias" => Some("gpt_neox.final_layer_norm.bias"),
            "output.weight" => Some("embed_out.weight"),
            _ => None,
        };
        if let Some(t) = top {
            return Some(t.to_string());
        }
        let rest = gguf.strip_prefix("blk.")?;
        let (layer, name) = rest.split_once('.')?;
        let (module, kind) = name.rsplit_once('.')?;
        let m = match module {
            "attn_norm" => "input_layernorm",
            "attn_qkv" => "attention.query_key_value",
            "attn_output" => "attention.dense",
            "ffn_norm" => "post_attention_layernorm",
            "ffn_up" => "mlp.dense_h_to_4h",
            "ffn_down" => "mlp.dense_4h_to_h",
            _ => return None,
        };
        return Some(format!("gpt_neox.layers.{layer}.{m}.{kind}"));
    }
    // the architecture's own in-layer names (Gemma's and OLMo-2's norms), read backwards
    if let Some((layer, name)) = gguf.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
        if let Some((ours, _)) = arch_layer_names(arch).iter().find(|(_, g)| *g == name) {
            return Some(format!("model.layers.{layer}.{ours}"));
        }
    }
    if arch == Arch::Phi3 {
        if let Some(rest) = gguf.strip_prefix("blk.") {
            let (layer, name) = rest.split_once('.')?;
            let fused = match name {
                "attn_qkv.weight" => Some("self_attn.qkv_proj.weight"),
                "ffn_up.weight" => Some("mlp.gate_up_proj.weight"),
                "ffn_gate.weight" => return None,
                _ => None,
            };
            if let Some(f) = fused {
                return Some(format!("model.layers.{layer}.{f}"));
            }
        }
    }
    hf_name(gguf)
}

/// Tensors that carry RoPE parameters, not weights.
const ROPE_TENSORS: [&str; 3] = [
    "rope_freqs.weight",
    "rope_factors_long.weight",
    "rope_factors_short.weight",
];

/// The model configuration the metadata describes (architecture, sizes, RoPE, special ids).
fn read_config(meta: &Meta, content: &Content, n_tokens: usize) -> Result<LlamaConfig> {
    let arch_s = meta
        .str("general.architecture")
        .unwrap_or("llama")
        .to_string();
    let arch = match arch_s.as_str() {
        "llama" => Arch::Llama,
        "mistral" => Arch::Mistral,
        "qwen2" => Arch::Qwen2,
        "qwen3" => Arch::Qwen3,
        "phi3" => Arch::Phi3,
        "gemma2" => Arch::Gemma2,
        "gemma3" => Arch::Gemma3,
        "gptneox" => Arch::GptNeox,
        "olmo2" => Arch::Olmo2,
        "olmo" => Arch::Olmo,
        other => {
            return Err(meta.err(format!(
                "architecture `{other}` is not supported (llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3, gptneox, olmo, olmo2)"
            )))
        }
    };
    let gemma = matches!(arch, Arch::Gemma2 | Arch::Gemma3);
    let a = |k: &str| format!("{arch_s}.{k}");
    let hidden = meta.req(&a("embedding_length"))?;
    let heads = meta.req(&a("attention.head_count"))?;
    if heads == 0 || hidden == 0 {
        return Err(meta.err("embedding_length and attention.head_count must be positive"));
    }
    let kv_heads = meta.usize(&a("attention.head_count_kv"))?.unwrap_or(heads);
    let layers = meta.req(&a("block_count"))?;
    let vocab = meta.usize(&a("vocab_size"))?.unwrap_or(n_tokens);
    let has_output = content.tensor_infos.contains_key("output.weight");
    let has_qkv_bias = content.tensor_infos.contains_key("blk.0.attn_q.bias");
    let rope_scaling = match meta.str(&a("rope.scaling.type")) {
        Some("linear") => Some(RopeScaling::Linear {
            factor: meta.f64(&a("rope.scaling.factor"))?.unwrap_or(1.0),
        }),
        _ => None,
    };
    let bos = meta.usize("tokenizer.ggml.bos_token_id")?.map(|x| x as u32);
    let eos = meta.usize("tokenizer.ggml.eos_token_id")?.map(|x| x as u32);
    let mut cfg = LlamaConfig {
        arch,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: meta.req(&a("feed_forward_length"))?,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim: meta
            .usize(&a("attention.key_length"))?
            .unwrap_or(hidden / heads),
        rms_norm_eps: meta
            .f64(&a("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(if gemma { 1e-6 } else { 1e-5 }),
        rope_theta: meta
            .f64(&a("rope.freq_base"))?
            .unwrap_or(if arch == Arch::Gemma3 {
                1_000_000.0
            } else {
                10000.0
            }),
        rope_scaling,
        max_position_embeddings: meta.usize(&a("context_length"))?.unwrap_or(2048),
        tie_word_embeddings: !has_output,
        qkv_bias: has_qkv_bias,
        o_bias: content.tensor_infos.contains_key("blk.0.attn_output.bias"),
        sliding_window: if arch == Arch::Phi3 || gemma {
            meta.usize(&a("attention.sliding_window"))?
                .filter(|&w| w > 0)
        } else {
            None
        },
        sliding_layers: None,
        query_pre_attn_scalar: None,
        attn_logit_softcapping: if arch == Arch::Gemma2 {
            meta.f64(&a("attn_logit_softcapping"))?
        } else {
            None
        },
        final_logit_softcapping: if gemma {
            meta.f64(&a("final_logit_softcapping"))?
        } else {
            None
        },
        // llama.cpp's sliding layers of Gemma 3 use a fixed base of 10000
        rope_local_theta: (arch == Arch::Gemma3).then_some(10000.0),
        partial_rotary_factor: 1.0,
        parallel_residual: false,
        act: if gemma {
            crate::model::config::Act::GeluTanh
        } else {
            crate::model::config::Act::Silu
        },
        clip_qkv: None,
        bos_token_id: bos,
        eos_token_ids: eos.into_iter().collect(),
    };
    if arch == Arch::GptNeox {
        // llama.cpp's converter writes the rotary dims, the residual form and the LayerNorm
        // epsilon; the activation is the exact GELU of the Pythia checkpoints it converts
        cfg.num_key_value_heads = heads;
        cfg.rms_norm_eps = meta
            .f64(&a("attention.layer_norm_epsilon"))?
            .unwrap_or(1e-5);
        let rd = meta
            .usize(&a("rope.dimension_count"))?
            .unwrap_or(cfg.head_dim);
        cfg.partial_rotary_factor = rd as f64 / cfg.head_dim as f64;
        cfg.parallel_residual = match meta.get(&a("use_parallel_residual")) {
            None => true,
            Some(v) => v
                .to_bool()
                .map_err(|e| meta.err(format!("use_parallel_residual: {e}")))?,
        };
        cfg.qkv_bias = content.tensor_infos.contains_key("blk.0.attn_qkv.bias");
        cfg.act = crate::model::config::Act::GeluErf;
    }
    if arch == Arch::Olmo {
        // parameter-free LayerNorm (epsilon under the LayerNorm key) and the q/k/v clamp
        cfg.rms_norm_eps = meta
            .f64(&a("attention.layer_norm_epsilon"))?
            .unwrap_or(1e-5);
        cfg.clip_qkv = meta
            .f64(&a("attention.clamp_kqv"))?
            .filter(|&c| c > 0.0)
            .map(f32_decimal);
    }
    if gemma {
        // As llama.cpp runs Gemma: every 2nd (Gemma 2) or 6th (Gemma 3) layer global, the first
        // sliding; scores scaled by 1/√head_dim, by 1/√(hidden/heads) for the 27B models (46
        // and 62 layers), which is what their query_pre_attn_scalar says.
        let every = match meta.usize(&a("attention.sliding_window_pattern")) {
            Ok(Some(p)) if p > 0 => p,
            _ => arch.gemma_global_every(),
        };
        cfg.sliding_layers = Some(crate::model::config::sliding_pattern(layers, every));
        cfg.query_pre_attn_scalar = Some(cfg.llama_cpp_query_pre_attn_scalar());
    }
    cfg.rms_norm_eps = f32_decimal(cfg.rms_norm_eps);
    if arch == Arch::Llama && has_qkv_bias {
        cfg.o_bias = content.tensor_infos.contains_key("blk.0.attn_output.bias");
    }
    Ok(cfg)
}

/// GGUF stores f32 metadata: the decimal an f32 value was written from (1e-5 rather than
/// 9.99999974e-6), as the model's config.json had it.
fn f32_decimal(x: f64) -> f64 {
    format!("{:.6e}", x as f32).parse().unwrap_or(x)
}

/// Llama 3.1 stores its RoPE scaling as per-frequency factors (`rope_freqs.weight`); recover the
/// standard parameters and check they reproduce the stored factors.
fn recover_llama3_rope(
    meta: &Meta,
    content: &Content,
    f: &mut std::fs::File,
    device: &Device,
    cfg: &mut LlamaConfig,
    notes: &mut Vec<String>,
) -> Result<()> {
    if !content.tensor_infos.contains_key("rope_freqs.weight") {
        return Ok(());
    }
    let arch_s = meta.str("general.architecture").unwrap_or("llama");
    let a = |k: &str| format!("{arch_s}.{k}");
    let rf = content
        .tensor(f, "rope_freqs.weight", device)?
        .dequantize(device)?
        .to_vec1::<f32>()?;
    let orig = meta
        .usize(&a("rope.scaling.original_context_length"))?
        .unwrap_or(8192);
    let factor = meta.f64(&a("rope.scaling.factor"))?.unwrap_or(8.0);
    let cand = RopeScaling::Llama3 {
        factor,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: orig,
    };
    let mut plain = cfg.clone();
    plain.rope_scaling = None;
    let base = crate::model::llama::rope_inv_freq(&plain);
    let mut scaled_cfg = cfg.clone();
    scaled_cfg.rope_scaling = Some(cand.clone());
    let scaled = crate::model::llama::rope_inv_freq(&scaled_cfg);
    let ok = rf.len() == base.len()
        && rf
            .iter()
            .zip(base.iter().zip(&scaled))
            .all(|(r, (b, s))| ((b / s) - r).abs() <= 1e-3 * r.abs().max(1.0));
    if !ok {
        return Err(meta.err("rope_freqs.weight does not match Llama-3 scaling (factor 8, low 1, high 4); unsupported RoPE scaling"));
    }
    cfg.rope_scaling = Some(cand);
    notes.push(format!("RoPE: Llama-3 scaling recovered from rope_freqs (factor {factor}, original context {orig})"));
    Ok(())
}

/// Phi-3's LongRoPE as llama.cpp stores it: the factors as tensors `rope_factors_short` and
/// `rope_factors_long`, the original context and attention factor as metadata.
fn read_longrope(
    meta: &Meta,
    content: &Content,
    f: &mut std::fs::File,
    device: &Device,
    cfg: &mut LlamaConfig,
    notes: &mut Vec<String>,
) -> Result<()> {
    let (has_l, has_s) = (
        content
            .tensor_infos
            .contains_key("rope_factors_long.weight"),
        content
            .tensor_infos
            .contains_key("rope_factors_short.weight"),
    );
    if !has_l && !has_s {
        return Ok(());
    }
    if cfg.arch != Arch::Phi3 || !(has_l && has_s) {
        return Err(
            meta.err("rope_factors_long/short: LongRoPE is read for phi3 with both factor tensors")
        );
    }
    let arch_s = meta.str("general.architecture").unwrap_or("phi3");
    let a = |k: &str| format!("{arch_s}.{k}");
    let read = |f: &mut std::fs::File, n: &str| -> Result<Vec<f64>> {
        Ok(content
            .tensor(f, n, device)
            .and_then(|q| q.dequantize(device))
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
            .map_err(|e| meta.err(format!("tensor `{n}`: {}", crate::error::one_line(e))))?
            .into_iter()
            .map(|x| x as f64)
            .collect())
    };
    let long_factor = read(f, "rope_factors_long.weight")?;
    let short_factor = read(f, "rope_factors_short.weight")?;
    let original = meta
        .usize(&a("rope.scaling.original_context_length"))?
        .ok_or_else(|| meta.err("LongRoPE needs rope.scaling.original_context_length"))?;
    let attention_factor = meta.f64(&a("rope.scaling.attn_factor"))?;
    notes.push(format!(
        "RoPE: LongRoPE from rope_factors_short/long (original context {original})"
    ));
    cfg.rope_scaling = Some(RopeScaling::LongRope {
        short_factor,
        long_factor,
        original_max_position_embeddings: original,
        attention_factor,
    });
    Ok(())
}

/// Every tensor has a Hugging Face counterpart of the size the configuration implies: checked
/// before any tensor data is read.
fn check_shapes(meta: &Meta, content: &Content, cfg: &LlamaConfig) -> Result<()> {
    let mut expected: HashMap<String, usize> = if cfg.arch == Arch::GptNeox {
        crate::model::neox::checkpoint_sizes(cfg)
    } else {
        cfg.param_shapes()
            .into_iter()
            .map(|(n, s)| (n, s.iter().product()))
            .collect()
    };
    if cfg.arch == Arch::Phi3 {
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let sum = |names: &[&str], e: &HashMap<String, usize>| -> usize {
                names.iter().map(|n| e[&format!("{p}.{n}.weight")]).sum()
            };
            let qkv = sum(
                &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                &expected,
            );
            let gu = sum(&["mlp.gate_proj", "mlp.up_proj"], &expected);
            expected.insert(format!("{p}.self_attn.qkv_proj.weight"), qkv);
            expected.insert(format!("{p}.mlp.gate_up_proj.weight"), gu);
        }
    }
    for (name, info) in &content.tensor_infos {
        if ROPE_TENSORS.contains(&name.as_str()) {
            continue;
        }
        let n = info
            .shape
            .dims()
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d));
        let hf = hf_name_for(cfg.arch, name)
            .ok_or_else(|| meta.err(format!("tensor `{name}` has no Hugging Face counterpart")))?;
        let Some(&want) = expected.get(&hf) else {
            return Err(meta.err(format!(
                "tensor `{name}` ({hf}) is not part of the model the metadata describes"
            )));
        };
        if n != Some(want) {
            return Err(meta.err(format!(
                "tensor `{name}` has shape {:?}; the metadata implies {want} elements",
                info.shape.dims()
            )));
        }
    }
    Ok(())
}

/// Every tensor, dequantised to f32 under its Hugging Face name (Q and K un-permuted for
/// llama.cpp's Llama/Mistral/OLMo rotary layout).
fn read_tensors(
    meta: &Meta,
    content: &Content,
    f: &mut std::fs::File,
    device: &Device,
    cfg: &LlamaConfig,
) -> Result<HashMap<String, Tensor>> {
    let (heads, kv_heads) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let mut tensors = HashMap::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let permute = permutes_qk(cfg.arch);
    for name in names {
        if ROPE_TENSORS.contains(&name.as_str()) {
            continue;
        }
        let hf = hf_name_for(cfg.arch, name)
            .ok_or_else(|| meta.err(format!("tensor `{name}` has no Hugging Face counterpart")))?;
        let q = content
            .tensor(f, name, device)
            .map_err(|e| meta.err(format!("tensor `{name}`: {}", crate::error::one_line(e))))?;
        let mut t = q
            .dequantize(device)
            .map_err(|e| meta.err(format!("tensor `{name}`: {}", crate::error::one_line(e))))?;
        if matches!(cfg.arch, Arch::Gemma2 | Arch::Gemma3) && name.ends_with("norm.weight") {
            // llama.cpp's converter stores Gemma's (1 + w) norm weights as 1 + w
            t = (t - 1.0)?;
        }
        if cfg.arch == Arch::GptNeox && name.contains(".attn_qkv.") {
            // llama.cpp stores [q; k; v]; the checkpoint interleaves them per head
            let (hd, h) = (cfg.head_dim, cfg.hidden_size);
            t = if t.rank() == 2 {
                t.reshape((3, heads, hd, h))?
                    .transpose(0, 1)?
                    .contiguous()?
                    .reshape((3 * heads * hd, h))?
            } else {
                t.reshape((3, heads, hd))?
                    .transpose(0, 1)?
                    .contiguous()?
                    .reshape(3 * heads * hd)?
            };
        }
        if permute && (name.ends_with("attn_q.weight") || name.ends_with("attn_q.bias")) {
            t = unpermute_qk(&t, heads)?;
        } else if permute && (name.ends_with("attn_k.weight") || name.ends_with("attn_k.bias")) {
            t = unpermute_qk(&t, kv_heads)?;
        }
        tensors.insert(hf, t);
    }
    Ok(tensors)
}

/// Read a GGUF file into a trainable f32 model and its tokenizer.
pub fn import(path: &Path, device: &Device) -> Result<Imported> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let content = Content::read(&mut f).map_err(|e| Error::Gguf {
        path: path.to_path_buf(),
        msg: format!("not a readable GGUF file: {}", crate::error::one_line(e)),
    })?;
    let meta = Meta {
        md: &content.metadata,
        path,
    };
    let mut notes = Vec::new();
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let mut cfg = read_config(&meta, &content, tokens.len())?;
    recover_llama3_rope(&meta, &content, &mut f, device, &mut cfg, &mut notes)?;
    read_longrope(&meta, &content, &mut f, device, &mut cfg, &mut notes)?;
    cfg.check()
        .map_err(|m| meta.err(format!("invalid model metadata: {m}")))?;
    crate::util::mem::check_fits(
        &format!(
            "importing {} ({} parameters)",
            path.display(),
            cfg.num_params_wide()
        ),
        cfg.num_params_wide() * 4 * 2,
    )?;
    check_shapes(&meta, &content, &cfg)?;
    let mut tensors = read_tensors(&meta, &content, &mut f, device, &cfg)?;
    // a head stored as an exact copy of the embeddings (our export does that for architectures
    // whose llama.cpp loader requires one) is a tied head
    if !cfg.tie_word_embeddings && crate::model::gguf_write::needs_output_tensor(cfg.arch) {
        if let (Some(h), Some(e)) = (
            tensors.get("lm_head.weight"),
            tensors.get("model.embed_tokens.weight"),
        ) {
            if h.dims() == e.dims() && crate::ops::max_abs_diff(h, e)? == 0.0 {
                tensors.remove("lm_head.weight");
                cfg.tie_word_embeddings = true;
                notes.push("output.weight equals token_embd.weight: tied head".into());
            }
        }
    }
    let model = Llama::from_tensors(cfg.clone(), tensors, path, device)?;
    crate::model::hf::check_finite(&model, &format!("{} (dequantised)", path.display()))?;
    let tok = build_tokenizer(&meta, &tokens, &mut notes)?;
    Ok(Imported { model, tok, notes })
}

fn token_type_special(t: f64) -> Option<bool> {
    // 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
    match t as i64 {
        2 | 3 => Some(true),
        4 => Some(false),
        _ => None,
    }
}

/// The pre-tokenizer of a byte-level BPE tokenizer, by llama.cpp's `tokenizer.ggml.pre` name.
pub(crate) fn gpt2_pre_tokenizer(pre: &str, notes: &mut Vec<String>) -> serde_json::Value {
    use serde_json::json;
    let bytelevel = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |re: &str| {
        json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
        bytelevel(false)]})
    };
    match pre {
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, bytelevel(true)]}),
        "llama-bpe" | "llama3" => split(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
        "qwen2" => split(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
        "gpt-2" | "default" => bytelevel(true),
        other => {
            notes.push(format!(
                "tokenizer: pre-tokenizer `{other}` unknown, using GPT-2's; check token ids"
            ));
            bytelevel(true)
        }
    }
}

fn build_tokenizer(meta: &Meta, tokens: &[String], notes: &mut Vec<String>) -> Result<Tok> {
    use serde_json::json;
    let model = meta.str("tokenizer.ggml.model").unwrap_or("gpt2");
    let types = meta.numbers("tokenizer.ggml.token_type")?;
    let id = |k: &str| -> Result<Option<u32>> { Ok(meta.usize(k)?.map(|x| x as u32)) };
    let bos = id("tokenizer.ggml.bos_token_id")?;
    let eos = id("tokenizer.ggml.eos_token_id")?;
    let unk = id("tokenizer.ggml.unknown_token_id")?;
    let pad = id("tokenizer.ggml.padding_token_id")?;
    let tokname = |i: Option<u32>| i.and_then(|i| tokens.get(i as usize)).cloned();
    let mut added = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if let Some(special) = types.get(i).and_then(|&x| token_type_special(x)) {
            added.push(
                json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": !special, "special": special}),
            );
        }
    }
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let add_bos = meta
        .get("tokenizer.ggml.add_bos_token")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(model == "llama");
    let bos_post = |inner: Option<serde_json::Value>| -> serde_json::Value {
        let mut procs = vec![];
        if let Some(p) = inner {
            procs.push(p);
        }
        if let (true, Some(b), Some(bn)) = (add_bos, bos, tokname(bos)) {
            procs.push(json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bn, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bn, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bn, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bn.clone(): {"id": bn, "ids": [b], "tokens": [bn]}}}));
        }
        match procs.len() {
            0 => serde_json::Value::Null,
            1 => procs.pop().unwrap(),
            _ => json!({"type": "Sequence", "processors": procs}),
        }
    };
    let tj = match model {
        "gpt2" => {
            let merges = meta.strings("tokenizer.ggml.merges")?;
            let pre = meta.str("tokenizer.ggml.pre").unwrap_or("default");
            let pre_tok = gpt2_pre_tokenizer(pre, notes);
            notes.push(format!(
                "tokenizer: byte-level BPE, {} tokens, {} merges, pre-tokenizer `{pre}`",
                tokens.len(),
                merges.len()
            ));
            json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
                "normalizer": null, "pre_tokenizer": pre_tok,
                "post_processor": bos_post(Some(json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true}))),
                "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                "model": {"type": "BPE", "dropout": null, "unk_token": tokname(unk), "continuing_subword_prefix": null,
                    "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": pre == "llama-bpe",
                    "vocab": vocab, "merges": merges}})
        }
        "llama" => {
            let scores = meta.numbers("tokenizer.ggml.scores")?;
            let merges = sentencepiece_merges(tokens, &scores, &types);
            let prepend = match meta.get("tokenizer.ggml.add_space_prefix") {
                Some(v) if !v.to_bool().unwrap_or(true) => "never",
                _ => "first",
            };
            notes.push(format!("tokenizer: SentencePiece-style BPE with byte fallback, {} tokens, {} merges derived from scores", tokens.len(), merges.len()));
            json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
                "normalizer": null,
                "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": prepend, "split": false},
                "post_processor": bos_post(None),
                "decoder": {"type": "Sequence", "decoders": [
                    {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                    {"type": "ByteFallback"}, {"type": "Fuse"},
                    {"type": "Strip", "content": " ", "start": usize::from(prepend == "first"), "stop": 0}]},
                "model": {"type": "BPE", "dropout": null, "unk_token": tokname(unk), "continuing_subword_prefix": null,
                    "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                    "vocab": vocab, "merges": merges}})
        }
        other => {
            return Err(meta.err(format!(
                "tokenizer model `{other}` is not supported (gpt2, llama)"
            )))
        }
    };
    let chat_template = meta.str("tokenizer.chat_template").map(String::from);
    let mut cfg = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": false,
        "add_bos_token": add_bos,
    });
    for (k, v) in [
        ("bos_token", bos),
        ("eos_token", eos),
        ("unk_token", unk),
        ("pad_token", pad),
    ] {
        if let Some(n) = tokname(v) {
            cfg[k] = n.into();
        }
    }
    if let Some(t) = &chat_template {
        cfg["chat_template"] = t.clone().into();
    }
    Tok::from_parts(
        serde_json::to_string(&tj).unwrap(),
        cfg,
        chat_template,
        &eos.into_iter().collect::<Vec<_>>(),
        meta.path,
    )
}

/// Merges of a SentencePiece BPE vocabulary, as `transformers`' SentencePieceExtractor derives
/// them: every split of a piece into two pieces of the vocabulary is a merge, ranked by the
/// merged piece's score (higher first), ties by the ids of the parts.
fn sentencepiece_merges(tokens: &[String], scores: &[f64], types: &[f64]) -> Vec<String> {
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(f64, usize, usize, String)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate() {
        if types.get(i).map(|&t| t as i64 != 1).unwrap_or(false) {
            continue;
        }
        let score = scores.get(i).copied().unwrap_or(0.0);
        let idx: Vec<usize> = piece.char_indices().map(|(k, _)| k).skip(1).collect();
        for k in idx {
            let (l, r) = piece.split_at(k);
            if let (Some(&li), Some(&ri)) = (ids.get(l), ids.get(r)) {
                merges.push((score, li, ri, format!("{l} {r}")));
            }
        }
    }
    merges.sort_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap()
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
    });
    merges.into_iter().map(|m| m.3).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn permute_roundtrip_and_known_order() {
        let dev = Device::Cpu;
        // 2 heads, head_dim 4 (rows 8), 1 column: HF rows [h0: a0 a1 b0 b1 | h1: ...] where a
        // is the first half and b the second; llama.cpp interleaves to [a0 b0 a1 b1].
        let w = Tensor::arange(0f32, 8., &dev)
            .unwrap()
            .reshape((8, 1))
            .unwrap();
        let p = permute_qk(&w, 2).unwrap();
        assert_eq!(
            p.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![0., 2., 1., 3., 4., 6., 5., 7.]
        );
        let back = unpermute_qk(&p, 2).unwrap();
        assert_eq!(
            back.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            (0..8).map(|x| x as f32).collect::<Vec<_>>()
        );
    }
    #[test]
    fn names_map() {
        assert_eq!(
            hf_name("blk.12.ffn_down.weight").unwrap(),
            "model.layers.12.mlp.down_proj.weight"
        );
        assert_eq!(hf_name("output.weight").unwrap(), "lm_head.weight");
        assert!(hf_name("blk.1.weird").is_none());
    }
    #[test]
    fn sentencepiece_merges_rank_by_score() {
        let toks: Vec<String> = ["a", "b", "c", "ab", "abc", "bc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, 0.0, 0.0, -1.0, -3.0, -2.0];
        let m = sentencepiece_merges(&toks, &scores, &[1.0; 6]);
        assert_eq!(m, vec!["a b", "b c", "a bc", "ab c"]);
    }
}
