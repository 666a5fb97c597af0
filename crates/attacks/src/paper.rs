//! The dataset-free attack settings of Ju & Wagner 2020, Section 4.2. The per-dataset ones
//! (epsilons of Tables 1-4, PGD random starts) live on `eabs_datasets::DatasetKind`, the one dataset enum
//! of the workspace; this crate knows no datasets.

/// Samples per expectation-over-transformation average (Section 4.2; Appendix B, Table 6).
pub const EOT_SAMPLES: usize = 5;
/// Iterations of the Boundary attack (Section 4.2).
pub const BOUNDARY_STEPS: usize = 100_000;
