//! Errors of `eabs-inference`: invalid configurations are told apart from bad inputs and from
//! failures inside Candle, so that a caller can see which argument to fix.

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// A field of [`crate::InferenceConfig`] has a value that inference cannot run with.
    #[error("invalid inference config: `{field}` {reason}")]
    InvalidConfig {
        /// Name of the offending field.
        field: &'static str,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// An argument has the wrong shape, length or value.
    #[error("invalid argument `{argument}`: expected {expected}, found {found}")]
    InvalidArgument {
        /// Name of the offending argument.
        argument: &'static str,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// A model broke the [`crate::LatentClassModel`] contract (e.g. a decoder returned the wrong
    /// shape).
    #[error("model contract violated by `{method}`: expected {expected}, found {found}")]
    Model {
        /// The trait method that returned the bad value.
        method: &'static str,
        /// What the contract requires.
        expected: String,
        /// What the model returned.
        found: String,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, InferenceError>;

impl From<InferenceError> for candle_core::Error {
    /// Lets the [`eabs_core::Classifier`] impls (which return `candle_core::Result`) forward our
    /// errors with their message intact.
    fn from(e: InferenceError) -> Self {
        match e {
            InferenceError::Candle(e) => e,
            other => candle_core::Error::Msg(other.to_string()),
        }
    }
}
