//! Errors of the dataset loaders.
//!
//! Every variant that comes from a file carries the file's path and says what was expected and what
//! was found, so that a user with a corrupt download knows which file to replace and why. Tensor
//! failures pass through as [`Error::Candle`].

use std::path::{Path, PathBuf};

/// A failure while finding, reading, validating or building a dataset.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused to read or write a file.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file does not start with the magic number of its format.
    #[error("{}: bad magic number: expected {expected}, found {found}", .path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// What the format requires.
        expected: String,
        /// What the file holds.
        found: String,
    },
    /// A file is shorter (or longer) than its header says.
    #[error("{}: {what}: expected {expected} bytes, found {found}", .path.display())]
    Length {
        /// The file.
        path: PathBuf,
        /// Which part of the file.
        what: String,
        /// The length the header implies.
        expected: u64,
        /// The length present.
        found: u64,
    },
    /// Two parts of a dataset disagree (image vs label counts, dimensions, ...).
    #[error("{}: {what}: expected {expected}, found {found}", .path.display())]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// What disagrees.
        what: String,
        /// The expected value.
        expected: String,
        /// The value found.
        found: String,
    },
    /// A label lies outside the dataset's classes.
    #[error("{}: label {label} at index {index} is out of range: expected {expected}", .path.display())]
    LabelOutOfRange {
        /// The file.
        path: PathBuf,
        /// Position of the sample.
        index: usize,
        /// The offending label, as stored.
        label: String,
        /// The accepted range.
        expected: String,
    },
    /// Decompressed file content does not match its published checksum.
    #[error("{}: {algorithm} checksum mismatch: expected {expected}, found {found} (corrupt or different file; delete it and fetch again)", .path.display())]
    Checksum {
        /// The file.
        path: PathBuf,
        /// `sha256` or `md5`.
        algorithm: &'static str,
        /// The published digest (hex).
        expected: String,
        /// The digest of the file (hex).
        found: String,
    },
    /// A valid file uses a feature this reader does not implement.
    #[error("{}: unsupported {what}: found {found}, supported: {supported}", .path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// Which feature.
        what: String,
        /// What the file uses.
        found: String,
        /// What is supported.
        supported: String,
    },
    /// A file violates its format in a way not covered above.
    #[error("{}: malformed: {detail}", .path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// An image in a traffic-sign source cannot be decoded.
    #[error("{}: cannot decode image: {detail}", .path.display())]
    Image {
        /// The image file.
        path: PathBuf,
        /// The decoder's message.
        detail: String,
    },
    /// No directory holds the dataset's files.
    #[error("{dataset}: files not found (looked in: {searched}); {hint}")]
    NotFound {
        /// The dataset name.
        dataset: String,
        /// Directories searched, in order.
        searched: String,
        /// What to do about it.
        hint: String,
    },
    /// A caller passed an unusable argument.
    #[error("invalid argument `{name}`: {detail}")]
    InvalidArgument {
        /// The argument.
        name: String,
        /// Expected vs found.
        detail: String,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// An [`Error::Malformed`] for `path`.
    pub fn malformed(path: impl AsRef<Path>, detail: impl Into<String>) -> Self {
        Error::Malformed {
            path: path.as_ref().to_path_buf(),
            detail: detail.into(),
        }
    }

    /// An [`Error::Mismatch`] for `path`.
    pub fn mismatch(
        path: impl AsRef<Path>,
        what: impl Into<String>,
        expected: impl ToString,
        found: impl ToString,
    ) -> Self {
        Error::Mismatch {
            path: path.as_ref().to_path_buf(),
            what: what.into(),
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }

    /// An [`Error::Length`] for `path`.
    pub fn length(
        path: impl AsRef<Path>,
        what: impl Into<String>,
        expected: u64,
        found: u64,
    ) -> Self {
        Error::Length {
            path: path.as_ref().to_path_buf(),
            what: what.into(),
            expected,
            found,
        }
    }
}
