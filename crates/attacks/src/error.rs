//! Errors of the attacks crate: invalid arguments are reported with what was expected and what was
//! found, never as a panic; tensor failures are wrapped.

/// Everything that can go wrong when configuring or running an attack.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An epsilon is negative or NaN (or infinite where a fixed-epsilon attack needs a finite one).
    #[error("invalid epsilon {value} at position {index} of `epsilons`: expected a finite value >= 0{extra}")]
    InvalidEpsilon {
        /// Position in the epsilon list.
        index: usize,
        /// The offending value.
        value: f64,
        /// Extra explanation (may be empty).
        extra: &'static str,
    },
    /// No epsilon was given.
    #[error("`epsilons` is empty: expected at least one epsilon")]
    NoEpsilons,
    /// Inputs lie outside the model bounds.
    #[error("argument `{argument}` has values in [{found_min}, {found_max}], outside the model bounds [{min}, {max}]")]
    OutOfBounds {
        /// Which argument (`xs`, `starting_points`, ...).
        argument: &'static str,
        /// Smallest value found.
        found_min: f64,
        /// Largest value found.
        found_max: f64,
        /// Lower model bound.
        min: f64,
        /// Upper model bound.
        max: f64,
    },
    /// The criterion has a different number of labels than the batch has samples.
    #[error("criterion has {found} labels/targets but the batch `xs` has {expected} samples")]
    LabelCount {
        /// Batch size.
        expected: usize,
        /// Number of labels.
        found: usize,
    },
    /// A label or target is not a valid class index.
    #[error(
        "label/target {label} at index {index} is out of range: the model has {n_classes} classes"
    )]
    LabelOutOfRange {
        /// Sample index.
        index: usize,
        /// The label.
        label: u32,
        /// Number of classes of the model.
        n_classes: usize,
    },
    /// The model returned logits of the wrong shape.
    #[error(
        "model logits have shape {found:?}, expected ({batch}, {n_classes}) for a batch of {batch}"
    )]
    LogitsShape {
        /// Shape found.
        found: Vec<usize>,
        /// Batch size.
        batch: usize,
        /// `Classifier::n_classes`.
        n_classes: usize,
    },
    /// The model's gradient has a different shape than its input.
    #[error("model gradient has shape {found:?}, expected the input shape {expected:?}")]
    GradShape {
        /// Shape found.
        found: Vec<usize>,
        /// Input shape.
        expected: Vec<usize>,
    },
    /// A tensor argument has an unusable shape.
    #[error("argument `{argument}` has shape {found:?}, expected {expected}")]
    Shape {
        /// Argument name.
        argument: &'static str,
        /// Shape found.
        found: Vec<usize>,
        /// Description of the expected shape.
        expected: String,
    },
    /// An attack configuration is invalid.
    #[error("invalid {attack} configuration: {message}")]
    InvalidConfig {
        /// Attack name.
        attack: &'static str,
        /// What is wrong, with expected vs found.
        message: String,
    },
    /// The attack does not support this criterion (e.g. targeted DeepFool).
    #[error("{attack} does not support {criterion}")]
    UnsupportedCriterion {
        /// Attack name.
        attack: &'static str,
        /// Criterion name.
        criterion: &'static str,
    },
    /// No image in a pool can serve as a starting point for a sample.
    #[error(
        "no starting point for sample {index}: no image in the pool is classified as {wanted}"
    )]
    NoStartingPoint {
        /// Sample index.
        index: usize,
        /// What the pool image should be classified as.
        wanted: String,
    },
    /// A failure inside Candle (device, dtype, model code).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Builds an [`Error::InvalidConfig`].
pub(crate) fn config_err(attack: &'static str, message: impl Into<String>) -> Error {
    Error::InvalidConfig {
        attack,
        message: message.into(),
    }
}
