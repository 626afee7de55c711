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
    crate::model::hf::write_model_files(&model, &tiny_tokenizer(), None, &[], dir)
}
