//! Tiny random models written as Hugging Face directories, for tests and the embedded demo.
use std::path::Path;

use candle_core::Device;

use crate::error::Result;
use crate::model::hf::save_model;
use crate::model::tokenizer::{byte_level_tokenizer_json, Tok};
use crate::model::{Llama, LlamaConfig};

/// Configuration of the test fixture: byte-level vocabulary (259 tokens, padded to 264),
/// `layers` layers of width `hidden`, 4 heads with 2 kv heads (GQA), tied embeddings.
pub fn tiny_config(hidden: usize, layers: usize) -> LlamaConfig {
    let mut c = LlamaConfig::tiny(264, hidden, layers, 4, 2);
    c.eos_token_ids = vec![258];
    c
}

/// The byte-level tokenizer with the ChatML template.
pub fn tiny_tokenizer() -> Tok {
    let (j, c) = byte_level_tokenizer_json(true);
    let tpl = c["chat_template"].as_str().map(String::from);
    Tok::from_parts(j, c, tpl, &[], Path::new("<built-in byte-level tokenizer>"))
        .expect("built-in tokenizer is valid")
}

/// Write a random tiny Llama (seeded) with the byte-level tokenizer to `dir` (atomically).
pub fn write_tiny_llama(dir: &Path, cfg: LlamaConfig, seed: u64) -> Result<()> {
    let model = Llama::random(cfg, seed, &Device::Cpu)?;
    save_model(&model, &tiny_tokenizer(), None, &[], dir)
}

/// Write the files of a random tiny Llama into the existing directory `dir`.
pub fn write_tiny_llama_files(dir: &Path, cfg: LlamaConfig, seed: u64) -> Result<()> {
    let model = Llama::random(cfg, seed, &Device::Cpu)?;
    // no pad token (transformers' Phi3Config would otherwise default to id 32000, outside a
    // small vocabulary)
    let base = serde_json::json!({"pad_token_id": null});
    crate::model::hf::write_model_files(&model, &tiny_tokenizer(), Some(&base), &[], dir)
}

/// One tensor of [`write_random_bf16_files`], generated when the writer asks for its bytes.
struct LazyRandom {
    name: String,
    shape: Vec<usize>,
    seed: u64,
    /// Norm weights' value: 1, or 0 where the norm scales by (1 + w) (Gemma).
    norm: half::bf16,
}

impl LazyRandom {
    fn values(&self) -> Vec<half::bf16> {
        let n: usize = self.shape.iter().product();
        if self.name.ends_with("norm.weight") {
            return vec![self.norm; n];
        }
        if self.name.ends_with(".bias") {
            return vec![half::bf16::ZERO; n];
        }
        let h = crate::util::rng::hash_bytes(self.name.as_bytes());
        let mut rng = crate::util::rng::Rng::for_item(self.seed, "init", h);
        (0..n)
            .map(|_| half::bf16::from_f64(rng.normal() * 0.02))
            .collect()
    }
}

impl safetensors::View for LazyRandom {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::BF16
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        let v = self.values();
        std::borrow::Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * 2
    }
}

/// Write a random Llama of configuration `cfg` in bf16 (as real checkpoints of 1B+ models come)
/// into the existing directory `dir`, one tensor at a time: memory holds the largest tensor, not
/// the model. Each tensor is drawn from its own seeded stream (normal(0, 0.02), norms at 1).
pub fn write_random_bf16_files(dir: &Path, cfg: &LlamaConfig, seed: u64) -> Result<()> {
    let mut json = cfg.to_json();
    if let Some(o) = json.as_object_mut() {
        o.insert("torch_dtype".into(), "bfloat16".into());
        if cfg.rope_scaling.is_none() {
            o.remove("rope_scaling");
        }
    }
    let p = dir.join("config.json");
    std::fs::write(&p, serde_json::to_string_pretty(&json).unwrap())
        .map_err(|e| crate::error::Error::io(&p, e))?;
    let views: Vec<(String, LazyRandom)> = cfg
        .param_shapes()
        .into_iter()
        .map(|(name, shape)| {
            let norm = if cfg.gemma() {
                half::bf16::ZERO
            } else {
                half::bf16::ONE
            };
            (
                name.clone(),
                LazyRandom {
                    name,
                    shape,
                    seed,
                    norm,
                },
            )
        })
        .collect();
    let p = dir.join("model.safetensors");
    let meta: std::collections::HashMap<String, String> =
        [("format".to_string(), "pt".to_string())].into();
    safetensors::serialize_to_file(views, Some(meta), &p).map_err(|e| {
        crate::error::Error::Safetensors {
            path: p.clone(),
            msg: format!("cannot write: {e}"),
        }
    })?;
    crate::util::fs::sync_file(&p)?;
    tiny_tokenizer().save(dir)
}
