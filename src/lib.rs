//! `unlearn`: machine unlearning for Llama-family causal language models.
pub mod error;
pub mod hf;
pub mod model;
pub mod ops;
pub mod rng;
pub mod tokenizer;

pub use error::{Error, Result};
