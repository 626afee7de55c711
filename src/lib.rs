//! `unlearn`: machine unlearning for causal language models.
//!
//! Layers, each using only those before it (docs/architecture.md):
//! [`util`] → [`ops`] / [`optim`] → [`model`] (architectures, tokenizer, Hugging Face and GGUF
//! files) → [`data`] (QA sets, prompts, the synthetic benchmark) → [`infer`] (scoring,
//! generation) → [`train`] (the one training loop) → [`eval`] (metrics) → [`unlearn`] (methods,
//! edits, the run) → [`app`] (demo, report, bench) → the `unlearn` binary.
pub mod app;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod infer;
pub mod model;
pub mod ops;
pub mod optim;
pub mod train;
pub mod unlearn;
pub mod util;

pub use error::{Error, Result};
pub use model::hf::ModelDir;
pub use model::tokenizer::Tok;
pub use model::{Llama, LlamaConfig};
pub use util::rundir::VERSION;
pub use util::runtime::device;
