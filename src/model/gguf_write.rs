//! Writing GGUF files for llama.cpp (`unlearn export`), the reverse of [`super::gguf::import`]:
//! llama.cpp's tensor names, Q/K rows permuted back to its (head, pair, half) order, the
//! architecture and tokenizer metadata it reads (`tokenizer.ggml.*`, the chat template), and
//! weights quantized with candle's ggml-compatible quantizers.
//!
//! Which tensors are quantized: every 2-D weight (embeddings, projections, LM head) gets the
//! requested type; norms, biases and `rope_freqs` stay F32, as llama.cpp's `llama-quantize`
//! leaves them. A weight whose rows are not a multiple of the type's block (32 for q4_0/q8_0, 256
//! for the k-quants) falls back to q8_0, else f16 (llama.cpp also falls back there); the
//! fallbacks are listed in the notes. The tokenizer must be byte-level BPE (`gpt2` in llama.cpp's
//! terms: SmolLM, Llama 3, Qwen2 and our own) or SentencePiece-style BPE with byte fallback
//! (Llama 2, TinyLlama, Mistral; written as llama.cpp's `llama` vocabulary with scores).
use std::path::Path;

use candle_core::quantized::{gguf_file::Value, GgmlDType, QTensor};
use candle_core::Tensor;
use serde_json::Value as J;

use crate::error::{Error, Result};
use crate::model::config::{Arch, RopeScaling};
use crate::model::hf::ModelDir;
use crate::model::tokenizer::Tok;
use crate::model::Llama;

/// The types `--type` takes, with llama.cpp's names.
pub const TYPES: &[(&str, GgmlDType)] = &[
    ("f32", GgmlDType::F32),
    ("f16", GgmlDType::F16),
    ("q8_0", GgmlDType::Q8_0),
    ("q5_0", GgmlDType::Q5_0),
    ("q5_1", GgmlDType::Q5_1),
    ("q4_0", GgmlDType::Q4_0),
    ("q4_1", GgmlDType::Q4_1),
    ("q6_k", GgmlDType::Q6K),
    ("q5_k", GgmlDType::Q5K),
    ("q4_k", GgmlDType::Q4K),
    ("q3_k", GgmlDType::Q3K),
    ("q2_k", GgmlDType::Q2K),
];

pub fn parse_type(s: &str) -> Result<GgmlDType> {
    TYPES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(s))
        .map(|t| t.1)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "--type {s}: one of {}",
                TYPES.iter().map(|t| t.0).collect::<Vec<_>>().join(", ")
            ))
        })
}

/// llama.cpp's `general.file_type` (LLAMA_FTYPE_*) for a file whose weights are all `t`.
fn file_type(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q8_0 => 7,
        GgmlDType::Q5_0 => 8,
        GgmlDType::Q5_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11, // Q3_K_S
        GgmlDType::Q4K => 14, // Q4_K_S
        GgmlDType::Q5K => 16, // Q5_K_S
        GgmlDType::Q6K => 18,
        _ => 0,
    }
}

/// The GGUF name of a Hugging Face tensor name.
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.into());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, name) = rest.split_once('.')?;
    let mapped = match name {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.o_proj.bias" => "attn_output.bias",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{mapped}"))
}

/// The GGUF name of one of our tensors in a model of `arch`, as llama.cpp's converter names it
/// (the architecture's own names from [`super::gguf::arch_layer_names`]; q/k/v of the fused
/// architectures are handled by [`gguf_tensors`]).
fn gguf_name_for(arch: Arch, hf: &str) -> Option<String> {
    let own = super::gguf::arch_layer_names(arch);
    if hf == "model.norm.bias" {
        return Some("output_norm.bias".into());
    }
    if let Some((layer, name)) = hf
        .strip_prefix("model.layers.")
        .and_then(|r| r.split_once('.'))
    {
        if let Some((_, g)) = own.iter().find(|(h, _)| *h == name) {
            return Some(format!("blk.{layer}.{g}"));
        }
    }
    gguf_name(hf)
}

/// Every tensor of `model` under its GGUF name, as llama.cpp's converter lays it out: Phi-3's
/// and GPT-NeoX's q, k, v fused by rows into `attn_qkv` ([q; k; v]), Phi-3's gate and up into
/// `ffn_up` ([gate; up]), Gemma's norm weights stored as 1 + w, Llama/Mistral's q and k rows
/// permuted for llama.cpp's rotary layout.
fn gguf_tensors(model: &Llama) -> Result<Vec<(String, Tensor)>> {
    let c = &model.cfg;
    let all = model.named_tensors();
    let map: std::collections::HashMap<&str, &Tensor> =
        all.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let fused_qkv = matches!(c.arch, Arch::Phi3 | Arch::GptNeox);
    let fused_gate_up = c.arch == Arch::Phi3;
    let permute = super::gguf::permutes_qk(c.arch);
    let mut out = vec![];
    for (hf, t) in &all {
        let in_layer = hf
            .strip_prefix("model.layers.")
            .and_then(|r| r.split_once('.'));
        let cat = |names: &[String]| -> Result<Tensor> {
            let ts: Vec<&Tensor> = names.iter().map(|n| map[n.as_str()]).collect();
            Ok(Tensor::cat(&ts, 0)?)
        };
        let (g, mut t) = match in_layer {
            Some((_, name))
                if (fused_qkv
                    && (name.starts_with("self_attn.k_proj.")
                        || name.starts_with("self_attn.v_proj.")))
                    || (fused_gate_up && name == "mlp.up_proj.weight") =>
            {
                continue; // fused with q / gate below
            }
            Some((layer, name)) if fused_qkv && name.starts_with("self_attn.q_proj.") => {
                let kind = &name["self_attn.q_proj.".len()..];
                let parts: Vec<String> = ["q_proj", "k_proj", "v_proj"]
                    .iter()
                    .map(|m| format!("model.layers.{layer}.self_attn.{m}.{kind}"))
                    .collect();
                (format!("blk.{layer}.attn_qkv.{kind}"), cat(&parts)?)
            }
            Some((layer, "mlp.gate_proj.weight")) if fused_gate_up => {
                let parts: Vec<String> = ["gate_proj", "up_proj"]
                    .iter()
                    .map(|m| format!("model.layers.{layer}.mlp.{m}.weight"))
                    .collect();
                (format!("blk.{layer}.ffn_up.weight"), cat(&parts)?)
            }
            _ => (
                gguf_name_for(c.arch, hf).ok_or_else(|| {
                    Error::Invalid(format!("export: tensor `{hf}` has no GGUF name"))
                })?,
                t.clone(),
            ),
        };
        t = t.to_device(&candle_core::Device::Cpu)?;
        if c.gemma() && g.ends_with("norm.weight") {
            t = (t + 1.0)?;
        }
        if permute && (g.ends_with("attn_q.weight") || g.ends_with("attn_q.bias")) {
            t = super::gguf::permute_qk(&t, c.num_attention_heads)?;
        } else if permute && (g.ends_with("attn_k.weight") || g.ends_with("attn_k.bias")) {
            t = super::gguf::permute_qk(&t, c.num_key_value_heads)?;
        }
        out.push((g, t));
    }
    // llama.cpp's loader has no tied-head fallback for these: the head goes in as a copy of the
    // embeddings (import ties them back when the two are equal)
    if c.tie_word_embeddings && needs_output_tensor(c.arch) {
        if let Some((_, e)) = out.iter().find(|(g, _)| g == "token_embd.weight") {
            let e = e.clone();
            out.push(("output.weight".into(), e));
        }
    }
    Ok(out)
}

/// Architectures whose llama.cpp loader requires `output.weight` (found by loading exports in
/// llama.cpp: scripts/llama_cpp_logits_check.py).
pub(crate) fn needs_output_tensor(arch: Arch) -> bool {
    matches!(arch, Arch::Olmo2)
}

/// Why llama.cpp would run this model differently from us, if it would: the settings its
/// loader fixes rather than reads (Gemma's layer pattern, local RoPE base and attention scale;
/// the rest it reads: OLMo's parameter-free norms and clip_qkv are `olmo`'s own).
fn llama_cpp_mismatch(c: &crate::model::LlamaConfig) -> Option<String> {
    match c.arch {
        Arch::Gemma2 | Arch::Gemma3 => {
            let pattern = c.arch.gemma_global_every();
            let standard = crate::model::config::sliding_pattern(c.num_hidden_layers, pattern);
            if c.sliding_window.is_none()
                || c.sliding_layers.as_deref() != Some(standard.as_slice())
            {
                return Some(format!(
                    "llama.cpp runs {} with a window on all but every {pattern}th layer; this \
                     model's layer_types differ",
                    c.arch.model_type()
                ));
            }
            if c.rope_local_theta.is_some_and(|t| t != 10000.0) {
                return Some(
                    "llama.cpp runs Gemma 3's sliding layers with RoPE base 10000; this model's \
                     rope_local_base_freq differs"
                        .into(),
                );
            }
            let s = c.llama_cpp_query_pre_attn_scalar();
            if c.query_pre_attn_scalar != Some(s) {
                return Some(format!(
                    "llama.cpp scales Gemma's attention by 1/√{s}; this model's \
                     query_pre_attn_scalar is {:?}",
                    c.query_pre_attn_scalar
                ));
            }
            None
        }
        _ => None,
    }
}

/// candle's GGUF writer gives an empty array the element type u32 (it cannot know better);
/// llama.cpp refuses a `tokenizer.ggml.merges` that is not an array of strings, even an empty one
/// (the byte-level tokenizer of `unlearn init` has no merges). Retype the empty array stored under
/// `key` in the written header: key (u64 length + bytes), value type 9 (array), element type,
/// count 0.
fn type_empty_string_array(buf: &mut [u8], key: &str) {
    let mut pat = (key.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(key.as_bytes());
    pat.extend_from_slice(&9u32.to_le_bytes());
    let Some(at) = buf.windows(pat.len()).position(|w| w == pat.as_slice()) else {
        return;
    };
    let ty = at + pat.len();
    if buf.len() >= ty + 12 && buf[ty + 4..ty + 12] == 0u64.to_le_bytes() {
        buf[ty..ty + 4].copy_from_slice(&8u32.to_le_bytes()); // string
    }
}

/// The type a 2-D weight with rows of `cols` elements gets when `want` is asked for.
fn type_for(want: GgmlDType, cols: usize) -> GgmlDType {
    if cols.is_multiple_of(want.block_size()) {
        want
    } else if cols.is_multiple_of(GgmlDType::Q8_0.block_size()) && want != GgmlDType::F32 {
        GgmlDType::Q8_0
    } else {
        GgmlDType::F16
    }
}

/// Quantize one weight as llama.cpp would store it (1-D tensors stay F32). Returns the tensor
/// and the type it got.
pub fn quantize(t: &Tensor, want: GgmlDType) -> Result<(QTensor, GgmlDType)> {
    let t = t.to_dtype(candle_core::DType::F32)?.contiguous()?;
    let ty = if t.rank() >= 2 {
        type_for(want, *t.dims().last().unwrap())
    } else {
        GgmlDType::F32
    };
    Ok((QTensor::quantize(&t, ty)?, ty))
}

/// The model's weights after a round trip through `want` (quantize, dequantize), as llama.cpp
/// would compute with them; for `unlearn attack quantize`. Returns the notes on fallbacks.
pub fn roundtrip(model: &Llama, want: GgmlDType) -> Result<(Llama, Vec<String>)> {
    let out = model.merged()?; // a copy; adapters folded in
    let mut notes = vec![];
    for (name, var) in out.params() {
        let (q, ty) = quantize(var.as_tensor(), want)?;
        if var.rank() >= 2 && ty != want {
            notes.push(format!(
                "{name}: {ty:?} (rows of {} are not a multiple of {want:?}'s block)",
                var.dims()[1]
            ));
        }
        var.set(&q.dequantize(var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok((out, notes))
}

/// The `tokenizer.ggml.*` metadata of `tok`, as llama.cpp's converters write it: a byte-level BPE
/// vocabulary as `gpt2` (tokens, merges, pre-tokenizer name), a SentencePiece-style one (BPE with
/// byte fallback: Llama 2, TinyLlama, Mistral) as `llama` (tokens, scores, types).
/// The token list has `vocab_size` entries (the embedding's rows) even where the tokenizer has
/// fewer (Qwen2's 151,936 rows for 151,665 tokens): llama.cpp takes the vocabulary size from it
/// and checks the embedding against it, so the missing ids are `[PAD{id}]`, type unused, as its
/// converters write them.
fn tokenizer_metadata(
    tok: &Tok,
    vocab_size: usize,
    notes: &mut Vec<String>,
) -> Result<Vec<(String, Value)>> {
    let tj: J = serde_json::from_str(&tok.tokenizer_json)
        .map_err(|e| Error::Invalid(format!("tokenizer.json: {e}")))?;
    let model = &tj["model"];
    if model["type"] != "BPE" {
        return Err(Error::Invalid(format!(
            "export: tokenizer model {} cannot be written; only BPE vocabularies (byte-level, or \
             SentencePiece-style with byte fallback) can",
            model["type"]
        )));
    }
    let sentencepiece = model["byte_fallback"] == true;
    let vocab = model["vocab"].as_object().cloned().unwrap_or_default();
    let mut n = vocab
        .values()
        .filter_map(|v| v.as_u64())
        .max()
        .map_or(0, |m| m + 1) as usize;
    let added = tj["added_tokens"].as_array().cloned().unwrap_or_default();
    for a in &added {
        n = n.max(a["id"].as_u64().unwrap_or(0) as usize + 1);
    }
    if n > vocab_size {
        return Err(Error::Invalid(format!(
            "export: the tokenizer has {n} tokens, the model's vocabulary {vocab_size}"
        )));
    }
    let n = vocab_size;
    let mut tokens = vec![String::new(); n];
    let mut types = vec![1i32; n];
    for (t, id) in &vocab {
        tokens[id.as_u64().unwrap() as usize] = t.clone();
    }
    for a in &added {
        let i = a["id"].as_u64().unwrap_or(0) as usize;
        tokens[i] = a["content"].as_str().unwrap_or("").to_string();
        types[i] = if a["special"] == true { 3 } else { 4 };
    }
    for (i, t) in tokens.iter_mut().enumerate() {
        if t.is_empty() {
            *t = format!("[PAD{i}]");
            types[i] = 5; // unused
        }
    }
    let merges: Vec<String> = model["merges"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|m| match m {
            J::String(s) => s.clone(),
            J::Array(p) => format!(
                "{} {}",
                p[0].as_str().unwrap_or(""),
                p[1].as_str().unwrap_or("")
            ),
            _ => String::new(),
        })
        .collect();
    let id_of = |name: &Option<String>| name.as_ref().and_then(|n| tok.inner.token_to_id(n));
    // the unknown token: the model's, else tokenizer_config.json's (transformers 5 converts
    // SentencePiece models with the BPE model's unk_token unset)
    let unk = model["unk_token"].as_str().map(String::from).or_else(|| {
        match &tok.tokenizer_config["unk_token"] {
            J::String(s) => Some(s.clone()),
            J::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
            _ => None,
        }
    });
    let mut m = if sentencepiece {
        spm_vocab(&tj, tokens, types, &merges, unk.as_deref(), notes)?
    } else {
        let pre = pre_name(&tj["pre_tokenizer"], notes);
        vec![
            (
                "tokenizer.ggml.model".to_string(),
                Value::String("gpt2".into()),
            ),
            ("tokenizer.ggml.pre".into(), Value::String(pre)),
            (
                "tokenizer.ggml.tokens".into(),
                Value::Array(tokens.into_iter().map(Value::String).collect()),
            ),
            (
                "tokenizer.ggml.token_type".into(),
                Value::Array(types.into_iter().map(Value::I32).collect()),
            ),
            (
                "tokenizer.ggml.merges".into(),
                Value::Array(merges.into_iter().map(Value::String).collect()),
            ),
        ]
    };
    m.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(tok.eos_id)));
    m.push((
        "tokenizer.ggml.padding_token_id".into(),
        Value::U32(tok.pad_id),
    ));
    let bos = id_of(&tok.bos_token);
    if let Some(b) = bos {
        m.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(b)));
    }
    // what the tokenizer does, not only what its config says: Llama 2's template processor adds
    // <s> whether or not tokenizer_config.json has add_bos_token
    let adds_bos = bos.is_some_and(|b| {
        tok.inner
            .encode("a", true)
            .is_ok_and(|e| e.get_ids().first() == Some(&b))
    });
    let add_bos = tok.tokenizer_config["add_bos_token"]
        .as_bool()
        .unwrap_or(false)
        || adds_bos;
    m.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(add_bos)));
    if let Some(t) = &tok.chat_template {
        m.push(("tokenizer.chat_template".into(), Value::String(t.clone())));
    }
    Ok(m)
}

/// A SentencePiece-style BPE vocabulary as llama.cpp's `llama` tokenizer reads it. llama.cpp
/// merges the adjacent pair whose joined piece has the highest score; transformers' BPE merges
/// the pair of lowest rank, its merges being every split of a piece ranked by the piece's
/// SentencePiece score. So a piece's score is minus the rank of the first merge that makes it
/// (the order the original scores gave), which both tokenizers follow alike; byte tokens
/// (`<0xNN>`, type 6), single characters and control tokens score 0, and a multi-character piece
/// that no merge makes scores below every merge (llama.cpp could otherwise prefer it).
fn spm_vocab(
    tj: &J,
    tokens: Vec<String>,
    mut types: Vec<i32>,
    merges: &[String],
    unk: Option<&str>,
    notes: &mut Vec<String>,
) -> Result<Vec<(String, Value)>> {
    let mut rank = std::collections::HashMap::<String, usize>::new();
    for (r, mg) in merges.iter().enumerate() {
        rank.entry(mg.replacen(' ', "", 1)).or_insert(r);
    }
    let is_byte = |t: &str| {
        t.len() == 6
            && t.starts_with("<0x")
            && t.ends_with('>')
            && t[3..5].chars().all(|c| c.is_ascii_hexdigit())
    };
    let unk_id = unk.and_then(|u| tokens.iter().position(|t| t == u));
    let mut unreachable = 0;
    let scores: Vec<Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if types[i] == 1 && is_byte(t) {
                types[i] = 6;
            }
            if Some(i) == unk_id {
                types[i] = 2;
            }
            let s = match (types[i], rank.get(t)) {
                (1, Some(&r)) => -(r as f64),
                (1, None) if t.chars().count() > 1 => {
                    unreachable += 1;
                    -((merges.len() + i) as f64)
                }
                _ => 0.0,
            };
            Value::F32(s as f32)
        })
        .collect();
    if unreachable > 0 {
        notes.push(format!(
            "tokenizer: {unreachable} multi-character piece(s) that no merge makes were scored \
             below every merge; llama.cpp may still produce them where transformers would not"
        ));
    }
    // the ▁ prefix: Metaspace with prepend_scheme first/always (transformers' conversion), or
    // a Prepend normalizer (Llama 2's original tokenizer.json)
    let pre = &tj["pre_tokenizer"];
    let norm = tj["normalizer"].to_string();
    let prefix = (pre["type"] == "Metaspace" && pre["prepend_scheme"] != "never")
        || norm.contains("\"Prepend\"");
    if !(pre.is_null() || pre["type"] == "Metaspace") {
        notes.push(format!(
            "tokenizer: pre-tokenizer {} is not SentencePiece's; llama.cpp will not apply it",
            pre["type"]
        ));
    }
    Ok(vec![
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("llama".into()),
        ),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        ("tokenizer.ggml.scores".into(), Value::Array(scores)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        (
            "tokenizer.ggml.add_space_prefix".into(),
            Value::Bool(prefix),
        ),
    ]
    .into_iter()
    .chain(unk_id.map(|u| {
        (
            "tokenizer.ggml.unknown_token_id".to_string(),
            Value::U32(u as u32),
        )
    }))
    .collect())
}

/// llama.cpp's name for a byte-level pre-tokenizer (the one [`super::gguf`] rebuilds from it).
fn pre_name(pre: &J, notes: &mut Vec<String>) -> String {
    for name in ["smollm", "llama-bpe", "qwen2", "default"] {
        let mut n = vec![];
        if super::gguf::gpt2_pre_tokenizer(name, &mut n) == *pre {
            return name.into();
        }
    }
    notes.push(
        "tokenizer: the pre-tokenizer is not one llama.cpp names; written as `default` (GPT-2's), \
         check token ids in llama.cpp"
            .into(),
    );
    "default".into()
}

fn arch_metadata(model: &Llama, name: &str, want: GgmlDType) -> Vec<(String, Value)> {
    let c = &model.cfg;
    let arch = match c.arch {
        Arch::Qwen2 => "qwen2",
        Arch::Qwen3 => "qwen3",
        Arch::Olmo2 => "olmo2",
        Arch::Olmo => "olmo",
        Arch::Phi3 => "phi3",
        Arch::Gemma2 => "gemma2",
        Arch::Gemma3 => "gemma3",
        Arch::GptNeox => "gptneox",
        Arch::Llama | Arch::Mistral => "llama",
    };
    let a = |k: &str| format!("{arch}.{k}");
    let u = |x: usize| Value::U32(x as u32);
    let mut m = vec![
        (
            "general.architecture".to_string(),
            Value::String(arch.into()),
        ),
        ("general.name".into(), Value::String(name.into())),
        ("general.file_type".into(), Value::U32(file_type(want))),
        ("general.quantization_version".into(), Value::U32(2)),
        (a("vocab_size"), u(c.vocab_size)),
        (a("context_length"), u(c.max_position_embeddings)),
        (a("embedding_length"), u(c.hidden_size)),
        (a("block_count"), u(c.num_hidden_layers)),
        (a("feed_forward_length"), u(c.intermediate_size)),
        (a("attention.head_count"), u(c.num_attention_heads)),
        (a("attention.head_count_kv"), u(c.num_key_value_heads)),
        (
            a("attention.layer_norm_rms_epsilon"),
            Value::F32(c.rms_norm_eps as f32),
        ),
        (a("rope.freq_base"), Value::F32(c.rope_theta as f32)),
        (a("rope.dimension_count"), u(c.head_dim)),
    ];
    if c.head_dim * c.num_attention_heads != c.hidden_size || c.gemma() {
        m.push((a("attention.key_length"), u(c.head_dim)));
        m.push((a("attention.value_length"), u(c.head_dim)));
    }
    if let Some(w) = c
        .sliding_window
        .filter(|_| c.gemma() || c.arch == Arch::Phi3)
    {
        m.push((a("attention.sliding_window"), u(w)));
    }
    for (k, v) in [
        ("attn_logit_softcapping", c.attn_logit_softcapping),
        ("final_logit_softcapping", c.final_logit_softcapping),
    ] {
        if let Some(x) = v {
            m.push((a(k), Value::F32(x as f32)));
        }
    }
    if c.arch == Arch::GptNeox {
        m.retain(|(k, _)| {
            !k.ends_with("layer_norm_rms_epsilon") && !k.ends_with("rope.dimension_count")
        });
        m.push((a("rope.dimension_count"), u(c.rope_dims())));
        m.push((a("use_parallel_residual"), Value::Bool(c.parallel_residual)));
        m.push((
            a("attention.layer_norm_epsilon"),
            Value::F32(c.rms_norm_eps as f32),
        ));
    }
    if c.arch == Arch::Olmo {
        // llama.cpp's `olmo`: LayerNorm without weights (epsilon under its LayerNorm key) and
        // q, k, v clamped to ±clamp_kqv, as its converter writes them from clip_qkv
        m.retain(|(k, _)| !k.ends_with("layer_norm_rms_epsilon"));
        m.push((
            a("attention.layer_norm_epsilon"),
            Value::F32(c.rms_norm_eps as f32),
        ));
        if let Some(clip) = c.clip_qkv {
            m.push((a("attention.clamp_kqv"), Value::F32(clip as f32)));
        }
    }
    match &c.rope_scaling {
        Some(RopeScaling::Linear { factor }) => {
            m.push((a("rope.scaling.type"), Value::String("linear".into())));
            m.push((a("rope.scaling.factor"), Value::F32(*factor as f32)));
        }
        Some(RopeScaling::Llama3 {
            factor,
            original_max_position_embeddings,
            ..
        }) => {
            m.push((a("rope.scaling.factor"), Value::F32(*factor as f32)));
            m.push((
                a("rope.scaling.original_context_length"),
                u(*original_max_position_embeddings),
            ));
        }
        Some(RopeScaling::LongRope {
            original_max_position_embeddings,
            attention_factor,
            ..
        }) => {
            // the factors themselves go in as the tensors rope_factors_short / _long
            m.push((
                a("rope.scaling.original_context_length"),
                u(*original_max_position_embeddings),
            ));
            if let Some(f) = attention_factor {
                m.push((a("rope.scaling.attn_factor"), Value::F32(*f as f32)));
            }
        }
        None => {}
    }
    m
}

/// What an export wrote.
pub struct Exported {
    pub tensors: usize,
    pub bytes: u64,
    pub notes: Vec<String>,
}

/// Write `md` as a GGUF file of type `want` to `out` (atomically: temporary name, fsync, rename).
pub fn export(md: &ModelDir, out: &Path, want: GgmlDType) -> Result<Exported> {
    crate::model::hf::check_finite(&md.model, &md.path.display().to_string())?;
    let merged;
    let model = match md.model.lora() {
        // llama.cpp runs the merged weights (W + s·B·A)
        Some(_) => {
            merged = md.model.merged()?;
            &merged
        }
        None => &md.model,
    };
    let c = &model.cfg;
    if let Some(why) = llama_cpp_mismatch(c) {
        return Err(Error::Invalid(why));
    }
    let mut notes = vec![];
    let name = md
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let mut meta = arch_metadata(model, &name, want);
    meta.extend(tokenizer_metadata(&md.tok, c.vocab_size, &mut notes)?);
    let mut tensors: Vec<(String, QTensor)> = vec![];
    let mut fallback = std::collections::BTreeMap::<String, usize>::new();
    if let Some(RopeScaling::Llama3 { .. }) = &c.rope_scaling {
        let mut plain = c.clone();
        plain.rope_scaling = None;
        let base = crate::model::llama::rope_inv_freq(&plain);
        let scaled = crate::model::llama::rope_inv_freq(c);
        let rf: Vec<f32> = base.iter().zip(&scaled).map(|(b, s)| b / s).collect();
        let t = Tensor::from_vec(rf, base.len(), &candle_core::Device::Cpu)?;
        tensors.push((
            "rope_freqs.weight".into(),
            QTensor::quantize(&t, GgmlDType::F32)?,
        ));
    }
    if let Some(RopeScaling::LongRope {
        short_factor,
        long_factor,
        ..
    }) = &c.rope_scaling
    {
        for (n, f) in [
            ("rope_factors_short.weight", short_factor),
            ("rope_factors_long.weight", long_factor),
        ] {
            let v: Vec<f32> = f.iter().map(|x| *x as f32).collect();
            let t = Tensor::from_vec(v, f.len(), &candle_core::Device::Cpu)?;
            tensors.push((n.into(), QTensor::quantize(&t, GgmlDType::F32)?));
        }
    }
    for (g, t) in gguf_tensors(model)? {
        let (q, ty) = quantize(&t, want)?;
        if t.rank() >= 2 && ty != want {
            *fallback.entry(format!("{ty:?}")).or_default() += 1;
        }
        tensors.push((g, q));
    }
    for (ty, n) in fallback {
        notes.push(format!(
            "{n} weight(s) written as {ty}: their rows are not a multiple of {want:?}'s block"
        ));
    }
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut buf = std::io::Cursor::new(Vec::new());
    candle_core::quantized::gguf_file::write(&mut buf, &meta_refs, &t_refs)?;
    let mut buf = buf.into_inner();
    type_empty_string_array(&mut buf, "tokenizer.ggml.merges");
    let bytes = buf.len() as u64;
    crate::util::fs::atomic_write(out, &buf)?;
    Ok(Exported {
        tensors: tensors.len(),
        bytes,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_inverse_of_import() {
        for hf in [
            "model.embed_tokens.weight",
            "model.norm.weight",
            "lm_head.weight",
            "model.layers.3.self_attn.q_proj.weight",
            "model.layers.3.self_attn.k_proj.bias",
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.11.post_attention_layernorm.weight",
            "model.layers.2.self_attn.q_norm.weight",
            "model.layers.2.self_attn.k_norm.weight",
        ] {
            let g = gguf_name(hf).unwrap();
            assert_eq!(super::super::gguf::hf_name(&g).as_deref(), Some(hf), "{g}");
        }
        assert!(parse_type("Q4_K").is_ok() && parse_type("q9").is_err());
    }

    /// The quantize attack's weights lie on the format's grid: in every block of 32, q8_0 values
    /// are d·k with integer |k| <= 127, q4_0 values d·k with integer k in [-8, 7].
    #[test]
    fn roundtrip_puts_weights_on_the_grid() {
        let mut cfg = crate::model::LlamaConfig::tiny(300, 64, 1, 4, 2);
        cfg.eos_token_ids = vec![0];
        let m = Llama::random(cfg, 3, &candle_core::Device::Cpu).unwrap();
        for (ty, lo, hi) in [
            (GgmlDType::Q8_0, -127.0, 127.0),
            (GgmlDType::Q4_0, -8.0, 7.0),
        ] {
            let (q, _) = roundtrip(&m, ty).unwrap();
            let mut changed = false;
            for ((n, a), (_, b)) in m.named_tensors().iter().zip(q.named_tensors().iter()) {
                let (a, b): (Vec<f32>, Vec<f32>) = (
                    a.flatten_all().unwrap().to_vec1().unwrap(),
                    b.flatten_all().unwrap().to_vec1().unwrap(),
                );
                if m.param(n).unwrap().rank() < 2 {
                    assert_eq!(a, b, "{n}: 1-D tensors stay f32");
                    continue;
                }
                changed |= a != b;
                let cols = *m.param(n).unwrap().dims().last().unwrap();
                if type_for(ty, cols) != ty {
                    // a fallback type (rows off the block): f16 or q8_0, checked elsewhere
                    continue;
                }
                for blk in b.chunks(32) {
                    let amax = blk.iter().fold(0f32, |x, v| x.max(v.abs()));
                    if amax == 0.0 {
                        continue;
                    }
                    // ggml's scale: the largest |value| is 127·d (q8_0) or -8·d (q4_0)
                    let big = *blk
                        .iter()
                        .max_by(|x, y| x.abs().total_cmp(&y.abs()))
                        .unwrap();
                    let d = if ty == GgmlDType::Q8_0 {
                        amax / 127.0
                    } else {
                        big / -8.0
                    };
                    for v in blk {
                        let k = v / d;
                        assert!(
                            (k - k.round()).abs() < 1e-2,
                            "{ty:?} {n}: {v} is not on the grid of step {d}"
                        );
                        assert!(k.round() >= lo && k.round() <= hi, "{ty:?} {n}: {k}");
                    }
                }
            }
            assert!(changed, "{ty:?} changed nothing");
        }
    }

    #[test]
    fn fallback_for_rows_off_the_block() {
        assert_eq!(type_for(GgmlDType::Q4K, 512), GgmlDType::Q4K);
        assert_eq!(type_for(GgmlDType::Q4K, 64), GgmlDType::Q8_0);
        assert_eq!(type_for(GgmlDType::Q4_0, 48), GgmlDType::F16);
    }
}
