//! Typed errors of the library. Every variant carries the values a user needs to fix the
//! problem: the path, the tensor name, the shapes, the line number.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The message already carries the source's text, so it is not chained again as `source`.
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: invalid JSON: {cause}")]
    Json {
        path: PathBuf,
        cause: serde_json::Error,
    },
    #[error("{path}:{line}: {msg}")]
    Data {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{path}: bad model config: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("{path}: tensor `{name}` is missing (expected shape {expected:?})")]
    MissingTensor {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error(
        "{path}: unexpected tensor `{name}` with shape {shape:?} (not part of this architecture)"
    )]
    UnexpectedTensor {
        path: PathBuf,
        name: String,
        shape: Vec<usize>,
    },
    #[error("{path}: tokenizer: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    #[error("{path}: GGUF: {msg}")]
    Gguf { path: PathBuf, msg: String },
    #[error("chat template: {0}")]
    Template(String),
    #[error(
        "training produced a non-finite loss ({loss}) at step {step}; last good checkpoint: {}",
        checkpoint.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "none written yet".into())
    )]
    NonFinite {
        step: usize,
        loss: f64,
        checkpoint: Option<PathBuf>,
    },
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("tensor op: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause: source,
        }
    }
}

/// Read a whole file, mapping the error to one that names the path.
pub fn read_to_string(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Read and parse a JSON file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let s = read_to_string(path)?;
    serde_json::from_str(&s).map_err(|cause| Error::Json {
        path: path.to_path_buf(),
        cause,
    })
}
