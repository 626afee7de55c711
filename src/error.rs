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
    /// A problem in a data file; `line` 0 = no line (the file as a whole, a parquet row).
    #[error("{}{}: {msg}", path.display(), if *line > 0 { format!(":{line}") } else { String::new() })]
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
    #[error("{path}: safetensors: {msg}")]
    Safetensors { path: PathBuf, msg: String },
    /// A weight tensor holds NaN or infinite values: refused at load, after import and before
    /// any save, so such a model never reaches a file.
    #[error("{what}: tensor `{tensor}` has {count} non-finite value(s) (NaN or inf)")]
    NonFiniteWeights {
        what: String,
        tensor: String,
        count: usize,
    },
    /// A chat template that fails or runs out of bounds (the message names the template).
    #[error("{0}")]
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
    /// An output that exists and is not replaced without `--overwrite` (or `--resume`): the
    /// caller may pass it, or choose another output.
    #[error("{what} {} {detail}", path.display())]
    OutputExists {
        what: String,
        path: PathBuf,
        detail: String,
    },
    /// Another process holds the output's lock: the caller may wait and retry.
    #[error(
        "{} is being written by {holder} (lock {}); wait for it to finish or choose another output",
        target.display(),
        lock.display()
    )]
    Busy {
        target: PathBuf,
        lock: PathBuf,
        holder: String,
    },
    /// The work needs more memory than the machine has: the caller may shrink it (batch size,
    /// sequence length, model).
    #[error("{what} needs about {:.1} GiB of memory; {}", *need as f64 / GIB, match available {
        Some(a) => format!("{:.1} GiB are available", *a as f64 / GIB),
        None => "more than can be addressed".into(),
    })]
    OutOfMemory {
        what: String,
        need: u128,
        /// None: beyond what any allocation can ask for.
        available: Option<u128>,
    },
    /// A Hub request that failed; `kind` says what the caller may do about it.
    #[error("{repo}: {msg}")]
    Hub {
        repo: String,
        kind: HubKind,
        msg: String,
    },
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("tensor op: {0}")]
    Candle(candle_core::Error),
}

/// What went wrong with a Hub request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubKind {
    /// 401/403: a token is missing or lacks access (set HF_TOKEN).
    Auth,
    /// The repository, revision or file does not exist.
    NotFound,
    /// HF_HUB_OFFLINE is set and the cache lacks what is needed.
    Offline,
    /// The endpoint cannot be reached or answered with an error; retrying may help.
    Network,
    /// A download did not match its hash and was removed; retrying may help.
    Corrupt,
    Other,
}

const GIB: f64 = (1u64 << 30) as f64;

/// candle attaches a multi-line backtrace to its errors when RUST_BACKTRACE is set; an error
/// message of ours is one line, so the backtrace is dropped.
impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Candle(strip_backtrace(e))
    }
}

/// `e` without candle's attached backtraces.
pub fn strip_backtrace(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => strip_backtrace(*inner),
        candle_core::Error::Context { inner, context } => candle_core::Error::Context {
            inner: Box::new(strip_backtrace(*inner)),
            context,
        },
        candle_core::Error::WithPath { inner, path } => candle_core::Error::WithPath {
            inner: Box::new(strip_backtrace(*inner)),
            path,
        },
        other => other,
    }
}

/// The first line of an error's text (the message without an attached backtrace).
pub fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or("").to_string()
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

/// Read a whole text file, mapping the error to one that names the path. A leading UTF-8 byte
/// order mark is dropped (editors on Windows write one); text that is not UTF-8 is an error
/// saying so.
pub fn read_to_string(path: &std::path::Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.to_string()),
        Err(e) => Err(Error::Data {
            path: path.to_path_buf(),
            line: bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1,
            msg: format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.valid_up_to()
            ),
        }),
    }
}

/// `s` shortened to at most `max` characters for an error message (a data file's 10 KB question
/// is not repeated in full).
pub fn excerpt(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(max).collect();
        format!("{head:?}… ({} characters)", s.chars().count())
    }
}

/// Read and parse a JSON file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let s = read_to_string(path)?;
    serde_json::from_str(&s).map_err(|cause| Error::Json {
        path: path.to_path_buf(),
        cause,
    })
}
