//! Benchmarks by name or Hub id; question/answer datasets and their encoding into model inputs; the refusal pool; the
//! synthetic fictitious-people benchmark.
pub mod benchmark;
pub mod prompt;
pub mod qa;
pub mod refusals;
pub mod synthetic;

pub use prompt::{Encoded, Formatter, PromptStyle};
pub use qa::{read_items, read_qa, write_qa, QaItem};
