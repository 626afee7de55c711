//! Evaluation metrics, one file each.
pub mod ks;
pub mod porter;
pub mod rouge;
pub mod tofu;
