//! Closed-form weight edits (UniErase's unlearning edit): the null-space-constrained MEMIT update
//! of AlphaEdit in f64 with faer. `nullspace.rs` holds the linear algebra (second moments,
//! projector, update); the model-facing parts (key collection, target vectors, the edit loop)
//! build on it.
pub mod keys;
pub mod nullspace;
pub mod tokens;
pub mod unierase;
