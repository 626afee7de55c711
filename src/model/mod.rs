//! Model architectures (one file each), their configuration, the tokenizer with its chat
//! template, and the files models come in: Hugging Face directories and GGUF.
pub mod bert;
pub mod config;
pub mod deberta;
pub mod fixture;
pub mod gguf;
pub mod gguf_write;
pub mod hf;
pub mod llama;
pub mod lora;
pub mod neox;
pub mod nli;
pub mod tokenizer;

pub use config::{Arch, LlamaConfig, RopeScaling};
pub use llama::{ForwardOutput, Hooks, KvCache, Llama};
pub use lora::{Lora, LoraConfig};
