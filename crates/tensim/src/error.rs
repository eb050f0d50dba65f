//! One error type for the crate. Every variant carries what a user needs to find the culprit:
//! the file, the tensor, the expected and the actual shape.

use std::path::PathBuf;

/// Errors raised by tensim.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- files ----------------------------------------------------------------------------
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: not a valid safetensors file (truncated or corrupt?): {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: no architecture description: pass --arch FILE or embed one with `tensim pack` (safetensors metadata key \"tensim\")")]
    NoArch { path: PathBuf },

    // ---- architecture description ----------------------------------------------------------
    #[error("{origin}: invalid architecture description: {reason}")]
    Arch { origin: String, reason: String },
    #[error(
        "{origin}: layer {layer}: kind \"{kind}\" is not a tensor network (not polynomial){hint}"
    )]
    NotPolynomial {
        origin: String,
        layer: usize,
        kind: String,
        hint: String,
    },

    // ---- tensors ---------------------------------------------------------------------------
    #[error("{place} is missing from the file{hint}")]
    MissingTensor {
        place: Box<TensorPlace>,
        hint: String,
    },
    #[error("{place} has shape {actual:?}, expected {expected}")]
    Shape {
        place: Box<TensorPlace>,
        expected: String,
        actual: Vec<usize>,
    },
    #[error("{path}: tensor \"{name}\" has dtype {dtype}; supported: F16, BF16, F32, F64")]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error(
        "{path}: tensor \"{name}\" contains a non-finite value ({value}) at flat index {index}"
    )]
    NonFinite {
        path: PathBuf,
        name: String,
        index: usize,
        value: f64,
    },

    // ---- models and metrics ----------------------------------------------------------------
    #[error("{0}")]
    Model(String),
    #[error("models are not comparable: {0}")]
    Incompatible(String),
    /// A size both models must share differs (`what`: input sizes, output sizes, positions).
    #[error("models are not comparable: {what} differ: A has {a}, B has {b}")]
    Mismatch {
        what: &'static str,
        a: usize,
        b: usize,
    },
    #[error("metric {metric} needs inputs (--data or --samples)")]
    NeedsInputs { metric: crate::metrics::Kind },
    #[error("unknown metric \"{name}\" (expected tensor, matrix, behavioral, cka or gaussian)")]
    UnknownMetric { name: String },
    #[error("--exact would enumerate {} Wick configurations (more than {max}); the models' total degree is too large: use --closure", configs.map_or("astronomically many".to_string(), |c| c.to_string()))]
    ExactTooLarge { configs: Option<u128>, max: u128 },
    #[error("model {which} has zero norm under the {metric} metric (its output is identically zero), so the similarity is undefined")]
    ZeroNorm { which: String, metric: String },
    /// A value overflowed or is not a number: no similarity is printed instead of a wrong one.
    #[error("the {metric} metric is out of floating-point range here ({what}): the weights or inputs are too large or too small in magnitude for f64; rescale them")]
    OutOfRange { metric: String, what: String },
    #[error("{what} would need about {need_gib:.2} GiB of memory, more than the {limit_gib:.2} GiB allowed (set TENSIM_MAX_MEMORY_GIB to raise the limit)")]
    TooLarge {
        what: String,
        need_gib: f64,
        limit_gib: f64,
    },
    #[error("{path}: {reason}")]
    Data { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),

    /// `inner` with what it happened to (a file, a checkpoint, a pair).
    #[error("{context}: {inner}")]
    Context { context: String, inner: Box<Error> },
}

/// Where a tensor was looked for: file, name, layer and role.
#[derive(Debug, Clone)]
pub struct TensorPlace {
    pub path: PathBuf,
    pub name: String,
    pub layer: usize,
    pub role: String,
}

impl std::fmt::Display for TensorPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: tensor \"{}\" (layer {}, {})",
            self.path.display(),
            self.name,
            self.layer,
            self.role
        )
    }
}

/// `Result` with tensim's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// This error with what it happened to in front.
    pub fn context(self, context: impl Into<String>) -> Error {
        Error::Context {
            context: context.into(),
            inner: Box::new(self),
        }
    }

    /// The error under any context.
    pub fn root(&self) -> &Error {
        match self {
            Error::Context { inner, .. } => inner.root(),
            e => e,
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            err: source,
        }
    }
}
