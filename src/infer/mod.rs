//! Inference without gradients: teacher-forced per-token statistics ([`score`]) and KV-cache
//! generation ([`generate`]).
pub mod generate;
pub mod score;
