//! Llama-family configuration: parsed from a Hugging Face `config.json` into a raw struct, then
//! validated into [`LlamaConfig`]. The original JSON is kept so that a saved model keeps every
//! field `transformers` wrote (we only update what we change).
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Llama 3 style RoPE frequency scaling (`rope_scaling.rope_type == "llama3"`), or linear scaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    Linear {
        factor: f64,
    },
    /// Phi-3's LongRoPE (`rope_type` "longrope", older "su"): inv_freq_i = 1 / (f_i ·
    /// θ^(2i/d)) with f = `short_factor` while the sequence fits `original_max_position_embeddings`
    /// and `long_factor` beyond; cos and sin scaled by `attention_factor` (default
    /// √(1 + ln s / ln original) with s = max_position_embeddings / original, 1 when s ≤ 1).
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_position_embeddings: usize,
        attention_factor: Option<f64>,
    },
}

/// Which member of the family the checkpoint is; decides default biases and `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    /// Qwen3: Qwen2's layout without the fixed q/k/v biases, plus an RMSNorm over each head of
    /// q and k (`q_norm`, `k_norm`, weights [head_dim]) before RoPE.
    Qwen3,
    /// OLMo-2: no pre-norms; RMSNorm on the attention and MLP outputs before each residual add
    /// (`post_attention_layernorm`, `post_feedforward_layernorm`), and RMSNorm over the whole
    /// q and k projections (`q_norm` [heads·head_dim], `k_norm` [kv_heads·head_dim]).
    Olmo2,
    /// OLMo (1): LayerNorm without parameters in place of RMSNorm (no norm weights at all), and
    /// optionally q, k, v clamped to [−clip_qkv, clip_qkv] after their projections.
    Olmo,
    /// Phi-3 / Phi-3.5: Llama's computation with q, k, v fused into `qkv_proj` and gate, up into
    /// `gate_up_proj` in the checkpoint (split on load, fused again on save), LongRoPE scaling
    /// and Mistral-style sliding-window attention.
    Phi3,
    /// Gemma 2: embeddings scaled by √hidden, RMSNorm as x̂·(1 + w) (weights stored around 0),
    /// four norms per layer (`input_layernorm`, `post_attention_layernorm` on the attention
    /// output, `pre_feedforward_layernorm`, `post_feedforward_layernorm` on the MLP output),
    /// GeGLU (gelu_tanh(gate)·up), attention scaled by `query_pre_attn_scalar`^(-1/2), attention
    /// and final logits soft-capped (c·tanh(x/c)), sliding-window and global layers alternating
    /// (`layer_types`; layer 0 sliding).
    Gemma2,
    /// Gemma 3 text (`gemma3_text`): Gemma 2 without soft-capping of the attention scores, plus
    /// Qwen3-style per-head q/k RMSNorm (Gemma's (1 + w) form), five sliding layers to one global
    /// one, and two RoPE bases: `rope_local_base_freq` on sliding layers, `rope_theta` (with its
    /// scaling) on global ones.
    Gemma3,
    /// GPT-NeoX / Pythia: LayerNorm with weight and bias, biases on every linear layer, q/k/v
    /// fused per head in `query_key_value` (rows [q_h; k_h; v_h] for each head h; split on
    /// load), RoPE over the first `partial_rotary_factor`·head_dim dims of each head, an
    /// ungated GELU MLP (`dense_h_to_4h`, `dense_4h_to_h`), and by default the parallel residual
    /// x + attn(ln1(x)) + mlp(ln2(x)).
    GptNeox,
}

/// The MLP's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// silu (SwiGLU with the gate).
    Silu,
    /// GELU's tanh approximation (`gelu_pytorch_tanh`, `gelu_new`, `gelu_fast`).
    GeluTanh,
    /// Exact GELU x·Φ(x) (`gelu`).
    GeluErf,
}

impl Arch {
    pub fn model_type(&self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Olmo2 => "olmo2",
            Arch::Olmo => "olmo",
            Arch::Phi3 => "phi3",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3_text",
            Arch::GptNeox => "gpt_neox",
        }
    }
    /// Gemma's default spacing of global layers (see [`sliding_pattern`]); 0 for the others.
    pub fn gemma_global_every(&self) -> usize {
        match self {
            Arch::Gemma2 => 2,
            Arch::Gemma3 => 6,
            _ => 0,
        }
    }
    pub fn architectures(&self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
            Arch::Olmo2 => "Olmo2ForCausalLM",
            Arch::Olmo => "OlmoForCausalLM",
            Arch::Phi3 => "Phi3ForCausalLM",
            Arch::Gemma2 => "Gemma2ForCausalLM",
            Arch::Gemma3 => "Gemma3ForCausalLM",
            Arch::GptNeox => "GPTNeoXForCausalLM",
        }
    }
}

/// Gemma's layer pattern as transformers and llama.cpp build it by default: every `every`-th
/// layer global, the others sliding (layer 0 slides). `every` is 2 for Gemma 2 and
/// `sliding_window_pattern` (6) for Gemma 3: [`Arch::gemma_global_every`].
pub fn sliding_pattern(layers: usize, every: usize) -> Vec<bool> {
    (0..layers).map(|i| (i + 1) % every.max(1) != 0).collect()
}

/// The shortest context a model may declare (`max_position_embeddings`).
pub const MIN_CONTEXT: usize = 16;

/// Validated configuration. Shapes: head_dim * num_attention_heads need not equal hidden_size
/// (some checkpoints set `head_dim` explicitly).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (always for Qwen2, `attention_bias` for Llama).
    pub qkv_bias: bool,
    /// OLMo: q, k and v clamped to [−c, c] after their projections.
    pub clip_qkv: Option<f64>,
    /// o_proj carries a bias (Llama `attention_bias = true`).
    pub o_bias: bool,
    /// Mistral-style sliding window attention (None: full causal attention).
    pub sliding_window: Option<usize>,
    /// Which layers use `sliding_window` (Gemma's `layer_types`); None: every layer does.
    pub sliding_layers: Option<Vec<bool>>,
    /// Attention scores scaled by 1/√s (Gemma's `query_pre_attn_scalar`); None: s = head_dim.
    pub query_pre_attn_scalar: Option<f64>,
    /// Attention scores soft-capped to c·tanh(x/c) before the mask (Gemma 2).
    pub attn_logit_softcapping: Option<f64>,
    /// Logits soft-capped to c·tanh(x/c) (Gemma 2).
    pub final_logit_softcapping: Option<f64>,
    /// The RoPE base of sliding-window layers, without scaling (Gemma 3's
    /// `rope_local_base_freq`); None: every layer uses `rope_theta` and `rope_scaling`.
    pub rope_local_theta: Option<f64>,
    /// RoPE rotates the first ⌊head_dim·f⌋ dims of each head (GPT-NeoX's `rotary_pct`); 1: all.
    pub partial_rotary_factor: f64,
    /// GPT-NeoX's parallel residual: x + attn(ln1(x)) + mlp(ln2(x)).
    pub parallel_residual: bool,
    /// The MLP activation (GELU for Gemma and GPT-NeoX).
    pub act: Act,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

#[derive(Debug, Deserialize)]
struct RawRopeScaling {
    #[serde(alias = "type")]
    rope_type: Option<String>,
    /// transformers >= 5 writes `rope_parameters` with the base inside.
    rope_theta: Option<f64>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
    short_factor: Option<Vec<f64>>,
    long_factor: Option<Vec<f64>>,
    attention_factor: Option<f64>,
    partial_rotary_factor: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<RawRopeScaling>,
    /// Flat (one RoPE for every layer), or per layer type (Gemma 3 in transformers >= 5:
    /// `{"full_attention": {..}, "sliding_attention": {..}}`).
    rope_parameters: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    hidden_activation: Option<String>,
    query_pre_attn_scalar: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    final_logit_softcapping: Option<f64>,
    layer_types: Option<Vec<String>>,
    sliding_window_pattern: Option<usize>,
    rope_local_base_freq: Option<f64>,
    layer_norm_eps: Option<f64>,
    use_parallel_residual: Option<bool>,
    rotary_pct: Option<f64>,
    rotary_emb_base: Option<f64>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    original_max_position_embeddings: Option<usize>,
    partial_rotary_factor: Option<f64>,
    clip_qkv: Option<f64>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
}

impl LlamaConfig {
    /// Parse and validate a `config.json` value. `path` is used in error messages only.
    pub fn from_json(v: &serde_json::Value, path: &Path) -> Result<Self> {
        let err = |msg: String| Error::Config {
            path: path.to_path_buf(),
            msg,
        };
        let raw: RawConfig = serde_json::from_value(v.clone()).map_err(|e| err(format!("{e}")))?;
        let arch = match raw.model_type.as_deref() {
            Some("llama") | None => Arch::Llama,
            Some("mistral") => Arch::Mistral,
            Some("qwen2") => Arch::Qwen2,
            Some("qwen3") => Arch::Qwen3,
            Some("olmo2") => Arch::Olmo2,
            Some("olmo") => Arch::Olmo,
            Some("phi3") => Arch::Phi3,
            Some("gemma2") => Arch::Gemma2,
            Some("gemma3_text") => Arch::Gemma3,
            Some("gpt_neox") => Arch::GptNeox,
            Some("gemma3") => {
                return Err(err(
                    "model_type `gemma3` is the multimodal Gemma 3 (text_config inside); the text \
                     model (`gemma3_text`, e.g. gemma-3-1b) is supported"
                        .into(),
                ))
            }
            Some(other) => {
                return Err(err(format!(
                "model_type `{other}` is not supported (llama, mistral, qwen2, qwen3, olmo, olmo2, phi3, gemma2, gemma3_text, gpt_neox)"
            )))
            }
        };
        let req = |name: &str, x: Option<usize>| {
            x.filter(|&n| n > 0)
                .ok_or_else(|| err(format!("`{name}` is missing or zero")))
        };
        let hidden_size = req("hidden_size", raw.hidden_size)?;
        let num_attention_heads = req("num_attention_heads", raw.num_attention_heads)?;
        let num_key_value_heads = raw.num_key_value_heads.unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(err(format!(
                "num_attention_heads {num_attention_heads} is not a multiple of num_key_value_heads {num_key_value_heads}"
            )));
        }
        if arch == Arch::GptNeox && num_key_value_heads != num_attention_heads {
            return Err(err(format!(
                "GPT-NeoX has one key/value head per query head; num_key_value_heads \
                 {num_key_value_heads} ≠ num_attention_heads {num_attention_heads}"
            )));
        }
        let head_dim = match raw.head_dim {
            Some(h) => h,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(err(format!(
                        "hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}"
                    )));
                }
                hidden_size / num_attention_heads
            }
        };
        if head_dim % 2 != 0 {
            return Err(err(format!("head_dim {head_dim} must be even for RoPE")));
        }
        let gemma = matches!(arch, Arch::Gemma2 | Arch::Gemma3);
        let neox = arch == Arch::GptNeox;
        let act = if gemma {
            Act::GeluTanh
        } else if neox {
            match raw.hidden_act.as_deref().unwrap_or("gelu") {
                "gelu" => Act::GeluErf,
                "gelu_new" | "gelu_fast" | "gelu_pytorch_tanh" => Act::GeluTanh,
                other => {
                    return Err(err(format!(
                        "hidden_act `{other}` is not supported for GPT-NeoX (gelu, gelu_new, gelu_fast)"
                    )))
                }
            }
        } else {
            Act::Silu
        };
        if gemma {
            // Gemma reads `hidden_activation` (older configs: `hidden_act`)
            let act = raw
                .hidden_activation
                .as_deref()
                .or(raw.hidden_act.as_deref());
            if let Some(act) = act.filter(|a| *a != "gelu_pytorch_tanh") {
                return Err(err(format!(
                    "hidden_activation `{act}` is not supported for Gemma (gelu_pytorch_tanh)"
                )));
            }
        } else if let Some(act) = raw.hidden_act.as_deref().filter(|_| !neox) {
            if act != "silu" && act != "swish" {
                return Err(err(format!("hidden_act `{act}` is not supported (silu)")));
            }
        }
        if raw.mlp_bias == Some(true) {
            return Err(err("mlp_bias = true is not supported".into()));
        }
        // transformers >= 5 writes Gemma 3's RoPE per layer type; the global layers' entry is
        // the model's RoPE, the sliding layers' gives the local base.
        let (rope_parameters, local_rope) = match raw.rope_parameters {
            None => (None, None),
            Some(v) => {
                let parse = |v: &serde_json::Value| -> Result<RawRopeScaling> {
                    serde_json::from_value(v.clone())
                        .map_err(|e| err(format!("rope_parameters: {e}")))
                };
                match (v.get("full_attention"), v.get("sliding_attention")) {
                    (None, None) => (Some(parse(&v)?), None),
                    (full, sliding) => (
                        full.map(parse).transpose()?,
                        sliding.map(parse).transpose()?,
                    ),
                }
            }
        };
        let rope_theta = raw
            .rope_theta
            .or(rope_parameters.as_ref().and_then(|r| r.rope_theta))
            .or(raw.rotary_emb_base.filter(|_| neox))
            .unwrap_or(if arch == Arch::Gemma3 {
                1_000_000.0
            } else {
                10000.0
            });
        let rope_local_theta = match arch {
            Arch::Gemma3 => Some(
                raw.rope_local_base_freq
                    .or(local_rope.as_ref().and_then(|r| r.rope_theta))
                    .unwrap_or(10000.0),
            ),
            _ => None,
        };
        if let Some(t) = local_rope.as_ref().and_then(|r| r.rope_type.as_deref()) {
            if t != "default" {
                return Err(err(format!(
                    "rope_parameters.sliding_attention.rope_type `{t}` is not supported (default)"
                )));
            }
        }
        // Gemma 3's rope_parameters may name only the local layers' RoPE: then the global
        // layers' is the default
        let rs = raw
            .rope_scaling
            .or(rope_parameters)
            .filter(|r| !(gemma && r.rope_type.is_none() && r.factor.is_none()));
        let partial = raw
            .partial_rotary_factor
            .or(rs.as_ref().and_then(|r| r.partial_rotary_factor))
            .or(raw.rotary_pct.filter(|_| neox))
            .unwrap_or(if neox { 0.25 } else { 1.0 });
        if partial != 1.0 && !neox {
            return Err(err(format!(
                "partial_rotary_factor {partial} is not supported for {} (1.0: rotary over the whole head)",
                arch.model_type()
            )));
        }
        // transformers 5 writes GPT-NeoX's RoPE as rope_parameters {rope_theta,
        // partial_rotary_factor} without a type: the default RoPE
        let rs = rs.filter(|r| !(neox && r.rope_type.is_none() && r.factor.is_none()));
        let rope_scaling = match rs {
            None => None,
            Some(rs) => match rs.rope_type.as_deref() {
                Some("longrope") | Some("su") => {
                    let original = rs
                        .original_max_position_embeddings
                        .or(raw.original_max_position_embeddings)
                        .ok_or_else(|| {
                            err("longrope needs original_max_position_embeddings".into())
                        })?;
                    let short_factor = rs
                        .short_factor
                        .ok_or_else(|| err("rope_scaling.short_factor missing".into()))?;
                    let long_factor = rs
                        .long_factor
                        .ok_or_else(|| err("rope_scaling.long_factor missing".into()))?;
                    Some(RopeScaling::LongRope {
                        short_factor,
                        long_factor,
                        original_max_position_embeddings: original,
                        attention_factor: rs.attention_factor,
                    })
                }
                Some("llama3") => Some(RopeScaling::Llama3 {
                    factor: rs
                        .factor
                        .ok_or_else(|| err("rope_scaling.factor missing".into()))?,
                    low_freq_factor: rs.low_freq_factor.unwrap_or(1.0),
                    high_freq_factor: rs.high_freq_factor.unwrap_or(4.0),
                    original_max_position_embeddings: rs
                        .original_max_position_embeddings
                        .unwrap_or(8192),
                }),
                Some("linear") => Some(RopeScaling::Linear {
                    factor: rs
                        .factor
                        .ok_or_else(|| err("rope_scaling.factor missing".into()))?,
                }),
                Some("default") => None,
                other => {
                    return Err(err(format!(
                        "rope_scaling type {other:?} is not supported (llama3, linear, longrope)"
                    )))
                }
            },
        };
        let attention_bias = raw.attention_bias.unwrap_or(neox);
        let sliding_window = match arch {
            Arch::Mistral | Arch::Phi3 | Arch::Gemma2 | Arch::Gemma3 => raw.sliding_window,
            Arch::Qwen2 | Arch::Qwen3 if raw.use_sliding_window == Some(true) => raw.sliding_window,
            _ => None,
        };
        let n_layers = req("num_hidden_layers", raw.num_hidden_layers)?;
        let sliding_layers = if !gemma {
            None
        } else if let Some(types) = raw.layer_types {
            if types.len() != n_layers {
                return Err(err(format!(
                    "layer_types has {} entries for {n_layers} layers",
                    types.len()
                )));
            }
            let flags = types
                .iter()
                .map(|t| match t.as_str() {
                    "sliding_attention" => Ok(true),
                    "full_attention" => Ok(false),
                    other => Err(err(format!(
                        "layer_types: `{other}` is not supported (sliding_attention, full_attention)"
                    ))),
                })
                .collect::<Result<Vec<bool>>>()?;
            Some(flags)
        } else {
            // transformers' defaults: Gemma 2 alternates from a sliding layer 0; Gemma 3 makes
            // every `sliding_window_pattern`-th layer (6th by default) global
            let every = match arch {
                Arch::Gemma2 => 2,
                _ => raw.sliding_window_pattern.unwrap_or(6),
            };
            Some(sliding_pattern(n_layers, every))
        };
        let cfg = LlamaConfig {
            arch,
            vocab_size: req("vocab_size", raw.vocab_size)?,
            hidden_size,
            intermediate_size: req("intermediate_size", raw.intermediate_size)?,
            num_hidden_layers: n_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: if neox {
                raw.layer_norm_eps.unwrap_or(1e-5)
            } else {
                raw.rms_norm_eps.unwrap_or(1e-6)
            },
            rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(gemma),
            qkv_bias: arch == Arch::Qwen2 || attention_bias,
            o_bias: arch != Arch::Qwen2 && attention_bias,
            partial_rotary_factor: partial,
            parallel_residual: neox && raw.use_parallel_residual.unwrap_or(true),
            act,
            sliding_window,
            sliding_layers,
            query_pre_attn_scalar: if gemma {
                raw.query_pre_attn_scalar.or(Some(256.0))
            } else {
                None
            },
            // transformers' Gemma 3 does not pass the score cap to its attention
            attn_logit_softcapping: if arch == Arch::Gemma2 {
                raw.attn_logit_softcapping
            } else {
                None
            },
            final_logit_softcapping: if gemma {
                raw.final_logit_softcapping
            } else {
                None
            },
            rope_local_theta,
            clip_qkv: if arch == Arch::Olmo {
                raw.clip_qkv
            } else {
                None
            },
            bos_token_id: raw.bos_token_id,
            eos_token_ids: match raw.eos_token_id {
                None => vec![],
                Some(OneOrMany::One(x)) => vec![x],
                Some(OneOrMany::Many(v)) => v,
            },
        };
        cfg.check().map_err(err)?;
        Ok(cfg)
    }

    /// Values no model can work with: zero sizes, a head layout that does not divide, a RoPE
    /// base or norm epsilon that is not a positive finite number, a context too short for a
    /// prompt and an answer, special token ids outside the vocabulary. Every loader runs it
    /// (config.json, GGUF metadata, `unlearn init`), so a model we write is one we can load.
    pub fn check(&self) -> std::result::Result<(), String> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 {
                return Err(format!("`{name}` is zero"));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        if !(self.partial_rotary_factor > 0.0 && self.partial_rotary_factor <= 1.0)
            || self.rope_dims() < 2
            || !self.rope_dims().is_multiple_of(2)
        {
            return Err(format!(
                "partial_rotary_factor {} must be in (0, 1] and rotate an even number (≥ 2) of \
                 the head's {} dims",
                self.partial_rotary_factor, self.head_dim
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(format!(
                "rope_theta {} must be a finite number > 1 (the RoPE base; 10000 is usual)",
                self.rope_theta
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            return Err(format!(
                "rms_norm_eps {} must be a finite number in (0, 1) (1e-5 or 1e-6 are usual)",
                self.rms_norm_eps
            ));
        }
        if self.max_position_embeddings < MIN_CONTEXT {
            return Err(format!(
                "max_position_embeddings {} is too short for a prompt and an answer (at least \
                 {MIN_CONTEXT})",
                self.max_position_embeddings
            ));
        }
        match &self.rope_scaling {
            Some(RopeScaling::Linear { factor }) | Some(RopeScaling::Llama3 { factor, .. })
                if !(factor.is_finite() && *factor > 0.0) =>
            {
                return Err(format!(
                    "rope_scaling.factor {factor} must be a finite number > 0"
                ))
            }
            Some(RopeScaling::Llama3 {
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
                ..
            }) if !(low_freq_factor.is_finite()
                && high_freq_factor.is_finite()
                && *low_freq_factor > 0.0
                && high_freq_factor > low_freq_factor
                && *original_max_position_embeddings > 0) =>
            {
                return Err(
                    "rope_scaling: need 0 < low_freq_factor < high_freq_factor and \
                     original_max_position_embeddings > 0"
                        .into(),
                )
            }
            Some(RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings,
                attention_factor,
            }) => {
                let half = self.rope_dims() / 2;
                for (k, f) in [("short_factor", short_factor), ("long_factor", long_factor)] {
                    if f.len() != half || !f.iter().all(|x| x.is_finite() && *x > 0.0) {
                        return Err(format!(
                            "rope_scaling.{k} must hold head_dim / 2 = {half} finite numbers > 0 \
                             (it has {})",
                            f.len()
                        ));
                    }
                }
                if *original_max_position_embeddings == 0 {
                    return Err("original_max_position_embeddings is 0".into());
                }
                if attention_factor.is_some_and(|a| !(a.is_finite() && a > 0.0)) {
                    return Err("rope_scaling.attention_factor must be a finite number > 0".into());
                }
            }
            _ => {}
        }
        if self.sliding_window == Some(0) {
            return Err("sliding_window is 0".into());
        }
        if let Some(f) = &self.sliding_layers {
            if f.len() != self.num_hidden_layers {
                return Err(format!(
                    "{} layer types for {} layers",
                    f.len(),
                    self.num_hidden_layers
                ));
            }
        }
        for (name, v) in [
            ("query_pre_attn_scalar", self.query_pre_attn_scalar),
            ("attn_logit_softcapping", self.attn_logit_softcapping),
            ("final_logit_softcapping", self.final_logit_softcapping),
        ] {
            if v.is_some_and(|x| !(x.is_finite() && x > 0.0)) {
                return Err(format!("{name} {} must be a finite number > 0", v.unwrap()));
            }
        }
        if self
            .rope_local_theta
            .is_some_and(|t| !(t.is_finite() && t > 1.0))
        {
            return Err(format!(
                "rope_local_base_freq {} must be a finite number > 1",
                self.rope_local_theta.unwrap()
            ));
        }
        for id in self.bos_token_id.iter().chain(&self.eos_token_ids) {
            if *id as usize >= self.vocab_size {
                return Err(format!(
                    "special token id {id} is outside the vocabulary (vocab_size {}): a \
                     vocabulary/config mismatch",
                    self.vocab_size
                ));
            }
        }
        Ok(())
    }

    /// A config.json value `transformers` accepts for this configuration.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "architectures": [self.arch.architectures()],
            "model_type": self.arch.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": match self.act {
                Act::Silu => "silu",
                Act::GeluTanh if self.arch == Arch::GptNeox => "gelu_new",
                Act::GeluTanh => "gelu_pytorch_tanh",
                Act::GeluErf => "gelu",
            },
            "torch_dtype": "float32",
            "use_cache": true,
            "initializer_range": 0.02,
        });
        let o = v.as_object_mut().unwrap();
        if self.arch == Arch::Olmo {
            o.insert("clip_qkv".into(), self.clip_qkv.into());
        }
        if self.arch == Arch::GptNeox {
            o.insert("layer_norm_eps".into(), self.rms_norm_eps.into());
            o.remove("rms_norm_eps");
            o.insert("attention_bias".into(), self.qkv_bias.into());
            o.insert(
                "use_parallel_residual".into(),
                self.parallel_residual.into(),
            );
            o.insert("rotary_pct".into(), self.partial_rotary_factor.into());
            o.insert("rotary_emb_base".into(), self.rope_theta.into());
        }
        if self.gemma() {
            o.insert("hidden_activation".into(), "gelu_pytorch_tanh".into());
            o.insert("attention_bias".into(), self.qkv_bias.into());
            // an integer in transformers' (strictly typed) Gemma configs
            let qs = self.query_pre_attn_scalar.map(|x| {
                if x.fract() == 0.0 && x < 1e15 {
                    serde_json::json!(x as u64)
                } else {
                    serde_json::json!(x)
                }
            });
            o.insert("query_pre_attn_scalar".into(), qs.into());
            o.insert(
                "final_logit_softcapping".into(),
                self.final_logit_softcapping.into(),
            );
            if self.arch == Arch::Gemma2 {
                o.insert(
                    "attn_logit_softcapping".into(),
                    self.attn_logit_softcapping.into(),
                );
            }
            if let Some(f) = &self.sliding_layers {
                let types: Vec<&str> = f
                    .iter()
                    .map(|&s| {
                        if s {
                            "sliding_attention"
                        } else {
                            "full_attention"
                        }
                    })
                    .collect();
                o.insert("layer_types".into(), types.into());
            }
            o.insert("sliding_window".into(), self.sliding_window.into());
            if let Some(t) = self.rope_local_theta {
                o.insert("rope_local_base_freq".into(), t.into());
            }
        }
        if matches!(
            self.arch,
            Arch::Llama | Arch::Qwen3 | Arch::Olmo2 | Arch::Olmo
        ) {
            o.insert("attention_bias".into(), self.qkv_bias.into());
            o.insert("mlp_bias".into(), false.into());
        }
        if let Some(b) = self.bos_token_id {
            o.insert("bos_token_id".into(), b.into());
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [x] => {
                o.insert("eos_token_id".into(), (*x).into());
            }
            xs => {
                o.insert("eos_token_id".into(), xs.to_vec().into());
            }
        }
        if let Some(w) = self.sliding_window.filter(|_| !self.gemma()) {
            o.insert("sliding_window".into(), w.into());
            if self.arch == Arch::Qwen2 {
                o.insert("use_sliding_window".into(), true.into());
            }
        }
        match &self.rope_scaling {
            None => {}
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                o.insert(
                    "rope_scaling".into(),
                    serde_json::json!({"rope_type": "llama3", "factor": factor,
                        "low_freq_factor": low_freq_factor, "high_freq_factor": high_freq_factor,
                        "original_max_position_embeddings": original_max_position_embeddings}),
                );
            }
            Some(RopeScaling::Linear { factor }) => {
                o.insert(
                    "rope_scaling".into(),
                    serde_json::json!({"rope_type": "linear", "factor": factor}),
                );
            }
            Some(RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings,
                attention_factor,
            }) => {
                let mut r = serde_json::json!({"rope_type": "longrope",
                    "short_factor": short_factor, "long_factor": long_factor,
                    "original_max_position_embeddings": original_max_position_embeddings});
                if let Some(a) = attention_factor {
                    r["attention_factor"] = (*a).into();
                }
                o.insert("rope_scaling".into(), r);
                o.insert(
                    "original_max_position_embeddings".into(),
                    (*original_max_position_embeddings).into(),
                );
            }
        }
        v
    }

    /// A tiny configuration for tests and the embedded demo.
    pub fn tiny(
        vocab_size: usize,
        hidden: usize,
        layers: usize,
        heads: usize,
        kv_heads: usize,
    ) -> Self {
        LlamaConfig {
            arch: Arch::Llama,
            vocab_size,
            hidden_size: hidden,
            intermediate_size: hidden * 8 / 3 / 8 * 8 + 8,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim: hidden / heads,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: None,
            max_position_embeddings: 512,
            tie_word_embeddings: true,
            qkv_bias: false,
            o_bias: false,
            sliding_window: None,
            sliding_layers: None,
            query_pre_attn_scalar: None,
            attn_logit_softcapping: None,
            final_logit_softcapping: None,
            rope_local_theta: None,
            partial_rotary_factor: 1.0,
            parallel_residual: false,
            act: Act::Silu,
            clip_qkv: None,
            bos_token_id: None,
            eos_token_ids: vec![],
        }
    }

    /// Check the head layout of a hand-made configuration.
    pub fn validate_heads(&self) -> Result<()> {
        if self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
            || !self.head_dim.is_multiple_of(2)
            || self.head_dim * self.num_attention_heads != self.hidden_size
        {
            return Err(Error::Invalid(format!(
                "bad head layout: hidden {} heads {} kv heads {} head_dim {}",
                self.hidden_size, self.num_attention_heads, self.num_key_value_heads, self.head_dim
            )));
        }
        Ok(())
    }

    /// Expected (HF name, shape) of every parameter tensor, in a stable order.
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let (q, kv) = (self.num_attention_heads * hd, self.num_key_value_heads * hd);
        let mut v = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![self.vocab_size, h],
        )];
        let neox = self.arch == Arch::GptNeox;
        for l in 0..self.num_hidden_layers {
            let p = format!("model.layers.{l}");
            if !self.post_norms() && !self.nonparam_norms() {
                v.push((format!("{p}.input_layernorm.weight"), vec![h]));
            }
            if neox {
                v.push((format!("{p}.input_layernorm.bias"), vec![h]));
            }
            if self.gemma() {
                v.push((format!("{p}.pre_feedforward_layernorm.weight"), vec![h]));
            }
            v.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
            v.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
            v.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
            if self.qkv_bias {
                v.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
                v.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
                v.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
            }
            v.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
            if self.qk_norm() {
                // per head (Qwen3) or over the whole projection (OLMo-2)
                let (qn, kn) = if self.post_norms() { (q, kv) } else { (hd, hd) };
                v.push((format!("{p}.self_attn.q_norm.weight"), vec![qn]));
                v.push((format!("{p}.self_attn.k_norm.weight"), vec![kn]));
            }
            if self.o_bias {
                v.push((format!("{p}.self_attn.o_proj.bias"), vec![h]));
            }
            if !self.nonparam_norms() {
                v.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            }
            if neox {
                v.push((format!("{p}.post_attention_layernorm.bias"), vec![h]));
            }
            if self.gated_mlp() {
                v.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
            }
            v.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
            if neox {
                v.push((format!("{p}.mlp.up_proj.bias"), vec![i]));
            }
            v.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
            if neox {
                v.push((format!("{p}.mlp.down_proj.bias"), vec![h]));
            }
            if self.mlp_output_normed() {
                v.push((format!("{p}.post_feedforward_layernorm.weight"), vec![h]));
            }
        }
        if !self.nonparam_norms() {
            v.push(("model.norm.weight".to_string(), vec![h]));
        }
        if neox {
            v.push(("model.norm.bias".to_string(), vec![h]));
        }
        if !self.tie_word_embeddings {
            v.push(("lm_head.weight".to_string(), vec![self.vocab_size, h]));
        }
        v
    }

    /// RMSNorm of q and k before RoPE: per head (Qwen3, Gemma 3) or over the projection
    /// (OLMo-2).
    pub fn qk_norm(&self) -> bool {
        matches!(self.arch, Arch::Qwen3 | Arch::Olmo2 | Arch::Gemma3)
    }

    /// The dims of each head RoPE rotates: ⌊head_dim · partial_rotary_factor⌋ (transformers'
    /// `int(head_size * partial_rotary_factor)`).
    pub fn rope_dims(&self) -> usize {
        (self.head_dim as f64 * self.partial_rotary_factor) as usize
    }

    /// silu(gate)·up or gelu(gate)·up; GPT-NeoX's MLP has no gate.
    pub fn gated_mlp(&self) -> bool {
        self.arch != Arch::GptNeox
    }

    /// LayerNorm with weight and bias in place of RMSNorm (GPT-NeoX).
    pub fn layer_norm(&self) -> bool {
        self.arch == Arch::GptNeox
    }

    /// Gemma 2 / 3: √hidden-scaled embeddings, (1 + w) RMSNorms, four norms a layer, GeGLU.
    pub fn gemma(&self) -> bool {
        matches!(self.arch, Arch::Gemma2 | Arch::Gemma3)
    }

    /// The MLP's output is normalised before the residual add (OLMo-2, Gemma): an edit of
    /// down_proj's output (UniErase) does not add to the residual stream as it stands.
    pub fn mlp_output_normed(&self) -> bool {
        self.post_norms() || self.gemma()
    }

    /// Whether layer `l` attends within `sliding_window` only.
    pub fn layer_slides(&self, l: usize) -> bool {
        self.sliding_window.is_some()
            && self
                .sliding_layers
                .as_ref()
                .is_none_or(|f| f.get(l).copied().unwrap_or(false))
    }

    /// The `query_pre_attn_scalar` llama.cpp assumes for Gemma (it does not read one):
    /// hidden/heads for the 27B models (46 layers for Gemma 2, 62 for Gemma 3), head_dim
    /// otherwise, which is what those checkpoints' configs say.
    pub fn llama_cpp_query_pre_attn_scalar(&self) -> f64 {
        let big = (self.arch == Arch::Gemma2 && self.num_hidden_layers == 46)
            || (self.arch == Arch::Gemma3 && self.num_hidden_layers == 62);
        if big {
            (self.hidden_size / self.num_attention_heads) as f64
        } else {
            self.head_dim as f64
        }
    }

    /// The attention scale: 1/√query_pre_attn_scalar (Gemma), else 1/√head_dim.
    pub fn attn_scale(&self) -> f64 {
        1.0 / self
            .query_pre_attn_scalar
            .unwrap_or(self.head_dim as f64)
            .sqrt()
    }

    /// LayerNorm without parameters in place of every RMSNorm (OLMo).
    pub fn nonparam_norms(&self) -> bool {
        self.arch == Arch::Olmo
    }

    /// Norms after the attention and MLP outputs instead of before their inputs (OLMo-2).
    pub fn post_norms(&self) -> bool {
        self.arch == Arch::Olmo2
    }

    pub fn num_params(&self) -> usize {
        self.num_params_wide().min(usize::MAX as u128) as usize
    }

    /// [`Self::num_params`] in wide arithmetic, without listing the tensors: safe for
    /// configurations far too large to build (a size check before allocating).
    pub fn num_params_wide(&self) -> u128 {
        let w = |x: usize| x as u128;
        let (h, i, hd, v) = (
            w(self.hidden_size),
            w(self.intermediate_size),
            w(self.head_dim),
            w(self.vocab_size),
        );
        let (q, kv) = (
            w(self.num_attention_heads) * hd,
            w(self.num_key_value_heads) * hd,
        );
        if self.arch == Arch::GptNeox {
            // two LayerNorms with biases, q/k/v/o and both MLP matrices with biases, final
            // LayerNorm with bias
            let qkv_b = if self.qkv_bias { q + 2 * kv } else { 0 };
            let o_b = if self.o_bias { h } else { 0 };
            let layer = 4 * h + q * h + 2 * kv * h + h * q + qkv_b + o_b + 2 * i * h + i + h;
            let head = if self.tie_word_embeddings { 0 } else { v * h };
            return v * h + w(self.num_hidden_layers) * layer + 2 * h + head;
        }
        let mut layer = 2 * h + q * h + 2 * kv * h + h * q + 3 * i * h;
        if self.qkv_bias {
            layer += q + 2 * kv;
        }
        if self.o_bias {
            layer += h;
        }
        if self.gemma() {
            layer += 2 * h; // pre- and post-feed-forward norms
        }
        if self.post_norms() {
            layer += q + kv; // q/k norms over the projections; the post-FFN norm replaces the pre-norm
        } else if self.qk_norm() {
            layer += 2 * hd;
        }
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        if self.nonparam_norms() {
            layer -= 2 * h;
            return v * h + w(self.num_hidden_layers) * layer + head;
        }
        v * h + w(self.num_hidden_layers) * layer + h + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qwen2_and_llama3_and_roundtrips() {
        let v = serde_json::json!({"model_type":"qwen2","vocab_size":10,"hidden_size":8,
            "intermediate_size":16,"num_hidden_layers":2,"num_attention_heads":2,
            "num_key_value_heads":1,"tie_word_embeddings":true,"eos_token_id":[3,4],
            "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
            "high_freq_factor":4.0,"original_max_position_embeddings":8192}});
        let c = LlamaConfig::from_json(&v, Path::new("c.json")).unwrap();
        assert!(c.qkv_bias && !c.o_bias && c.tie_word_embeddings);
        assert_eq!(c.head_dim, 4);
        assert_eq!(c.eos_token_ids, vec![3, 4]);
        let back = LlamaConfig::from_json(&c.to_json(), Path::new("x")).unwrap();
        assert_eq!(back, c);
    }

    /// The closed-form parameter count (used as a size check before anything is allocated)
    /// equals the sum over the listed tensors, for every architecture's layout.
    #[test]
    fn closed_form_parameter_count_matches_the_tensors() {
        for arch in [
            Arch::Llama,
            Arch::Qwen2,
            Arch::Qwen3,
            Arch::Olmo,
            Arch::Olmo2,
            Arch::Phi3,
            Arch::Gemma2,
            Arch::Gemma3,
            Arch::GptNeox,
        ] {
            for tied in [true, false] {
                let mut c = LlamaConfig::tiny(50, 16, 3, 4, 2);
                c.arch = arch;
                c.tie_word_embeddings = tied;
                c.head_dim = 6;
                if arch == Arch::Qwen2 || arch == Arch::GptNeox {
                    c.qkv_bias = true;
                }
                if arch == Arch::GptNeox {
                    c.num_key_value_heads = 4;
                    c.o_bias = true;
                }
                let listed: usize = c
                    .param_shapes()
                    .iter()
                    .map(|(_, s)| s.iter().product::<usize>())
                    .sum();
                assert_eq!(c.num_params(), listed, "{arch:?}, tied {tied}");
            }
        }
    }

    #[test]
    fn rejects_bad_heads_with_path() {
        let v = serde_json::json!({"vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":2,"num_attention_heads":3});
        let e = LlamaConfig::from_json(&v, Path::new("dir/config.json")).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("dir/config.json") && s.contains("hidden_size 8"),
            "{s}"
        );
    }
}
