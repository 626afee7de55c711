//! Model architectures (one file each) and their configuration.
pub mod bert;
pub mod config;
pub mod deberta;
pub mod llama;

pub use config::{Arch, LlamaConfig, RopeScaling};
pub use llama::{ForwardOutput, Hooks, KvCache, Llama};
