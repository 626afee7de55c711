//! Question/answer datasets and their encoding into model inputs.
pub mod prompt;
pub mod qa;

pub use prompt::{Encoded, Formatter, PromptStyle};
pub use qa::{read_items, read_qa, write_qa, QaItem};
