//! Errors of `eabs-models`: bad checkpoints, data that does not fit an architecture, invalid
//! configurations. Every variant names the file / tensor / argument and says expected vs found,
//! so that a researcher loading a checkpoint from another tool sees at once what is wrong.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a valid safetensors file (truncated, corrupt header, ...).
    #[error("{path}: not a valid safetensors checkpoint (truncated or corrupt?): {source}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: safetensors::SafeTensorError,
    },
    /// A metadata key is absent.
    #[error("{path}: checkpoint metadata has no key `{key}`")]
    MissingMetadata {
        /// The file.
        path: PathBuf,
        /// The missing key.
        key: String,
    },
    /// A metadata value does not parse.
    #[error("{path}: checkpoint metadata `{key}` is not valid: {message}")]
    BadMetadata {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The checkpoint was written for a different model configuration.
    #[error("{path}: checkpoint is for another model: expected config {expected}, found {found}")]
    ConfigMismatch {
        /// The file.
        path: PathBuf,
        /// Requested configuration (JSON).
        expected: String,
        /// Configuration in the file (JSON).
        found: String,
    },
    /// The checkpoint holds another kind of model, or one for another dataset, than asked for.
    #[error("{path}: holds a {found_kind} for {found_family}, but a {expected_kind} for {expected_family} was asked for")]
    WrongModel {
        /// The file.
        path: PathBuf,
        /// Requested model kind, e.g. `CNN`.
        expected_kind: String,
        /// Requested dataset family.
        expected_family: String,
        /// Model kind in the file.
        found_kind: String,
        /// Dataset family in the file.
        found_family: String,
    },
    /// The tensor data differ from the digest recorded when the checkpoint was written.
    #[error("{path}: tensor data are corrupt: sha256 {found}, the checkpoint's metadata records {expected}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Digest in the metadata.
        expected: String,
        /// Digest of the data read.
        found: String,
    },
    /// A tensor holds NaN or infinite values.
    #[error("{path}: tensor `{name}` holds {count} NaN or infinite values; refusing to load it")]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// How many values are not finite.
        count: usize,
    },
    /// A tensor the architecture needs is absent.
    #[error("{path}: tensor `{name}` is missing from the checkpoint")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// Tensor name.
        name: String,
    },
    /// The checkpoint holds a tensor the architecture does not have.
    #[error("{path}: unexpected tensor `{name}` (not part of the requested architecture)")]
    UnexpectedTensor {
        /// The file.
        path: PathBuf,
        /// Tensor name.
        name: String,
    },
    /// A tensor has the wrong shape.
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    TensorShape {
        /// The file.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// Shape the architecture needs.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// A tensor has the wrong dtype.
    #[error("{path}: tensor `{name}` has dtype {found}, expected {expected}")]
    TensorDtype {
        /// The file.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// Expected dtype.
        expected: String,
        /// Dtype in the file.
        found: String,
    },
    /// A dataset's images do not fit the architecture.
    #[error("{what}: images of shape (c, h, w) = {found:?} do not fit the architecture, which expects {expected:?}")]
    DataShape {
        /// Which dataset / argument.
        what: String,
        /// (channels, height, width) the architecture needs.
        expected: (usize, usize, usize),
        /// (channels, height, width) found.
        found: (usize, usize, usize),
    },
    /// A label is outside `0..n_classes`.
    #[error("{what}: label {label} at index {index} is outside 0..{n_classes}")]
    BadLabel {
        /// Which dataset / argument.
        what: String,
        /// Sample index.
        index: usize,
        /// The label.
        label: u32,
        /// Number of classes of the model.
        n_classes: usize,
    },
    /// Generating adversarial training examples failed.
    #[error("adversarial training: {0}")]
    Attack(String),
    /// The validator that selects checkpoints (the real classifier) failed.
    #[error("validation by {validator} failed: {message}")]
    Validation {
        /// The validator's description.
        validator: String,
        /// What went wrong.
        message: String,
    },
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
