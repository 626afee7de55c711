//! Evaluation metrics, one file each.
pub mod porter;
pub mod rouge;
