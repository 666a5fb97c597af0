//! Errors of `eabs-stats`.
//!
//! Every variant names the argument (or file) at fault and says what was expected and what was
//! found, so that a reproduction script that feeds us the wrong vector fails with a message a
//! researcher can act on, instead of a panic or a silently wrong p-value.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatsError {
    /// Two per-sample vectors that must be paired (same samples, same order) differ in length.
    #[error("{what}: expected {expected} samples, found {found}")]
    LengthMismatch {
        /// Which argument is wrong, e.g. "outcomes of model `E-ABS`".
        what: String,
        /// The length of the first vector, which the others must match.
        expected: usize,
        /// The length actually found.
        found: usize,
    },

    /// An input that must hold at least one element is empty.
    #[error("{what} is empty: expected at least one {unit}")]
    Empty {
        /// Which argument is empty.
        what: String,
        /// What it should contain ("sample", "model", "attack").
        unit: &'static str,
    },

    /// A significance level outside the open interval (0, 1), or not finite.
    #[error("alpha must lie in the open interval (0, 1), found {0}")]
    InvalidAlpha(f64),

    /// A confidence level outside the open interval (0, 1), or not finite.
    #[error("confidence must lie in the open interval (0, 1), found {0}")]
    InvalidConfidence(f64),

    /// Two models share a name, so rows and columns of a comparison would be ambiguous.
    #[error(
        "duplicated model name `{name}` (at positions {first} and {second}): names must be unique"
    )]
    DuplicateName {
        /// The repeated name.
        name: String,
        /// Index of its first occurrence.
        first: usize,
        /// Index of its second occurrence.
        second: usize,
    },

    /// The number of model names differs from the number of outcome vectors.
    #[error("expected one outcome vector per model name: {names} names, found {outcomes} outcome vectors")]
    NameCountMismatch {
        /// Number of names given.
        names: usize,
        /// Number of outcome vectors given.
        outcomes: usize,
    },

    /// A count of correct samples larger than the number of samples.
    #[error("{correct} correct out of {total} samples: correct cannot exceed total")]
    CountsOutOfRange {
        /// Number of correct samples claimed.
        correct: u64,
        /// Number of samples.
        total: u64,
    },

    /// A deserialised result whose parts contradict each other (hand-edited or truncated JSON).
    #[error("inconsistent {what}: {reason}")]
    Inconsistent {
        /// What was being checked.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },

    /// Reading or writing a file failed.
    #[error("i/o error on `{path}`: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A JSON file could not be parsed or written.
    #[error("json error in `{path}`: {source}")]
    Json {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, StatsError>;

/// Checks that `alpha` lies in the open interval (0, 1).
pub(crate) fn check_alpha(alpha: f64) -> Result<()> {
    if alpha.is_finite() && alpha > 0.0 && alpha < 1.0 {
        Ok(())
    } else {
        Err(StatsError::InvalidAlpha(alpha))
    }
}

/// Checks that `confidence` lies in the open interval (0, 1).
pub(crate) fn check_confidence(confidence: f64) -> Result<()> {
    if confidence.is_finite() && confidence > 0.0 && confidence < 1.0 {
        Ok(())
    } else {
        Err(StatsError::InvalidConfidence(confidence))
    }
}
