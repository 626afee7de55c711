//! Evaluation metrics, one file each.
pub mod entropy;
pub mod ks;
pub mod memorization;
pub mod mia;
pub mod porter;
pub mod rouge;
pub mod similarity;
pub mod tofu;
