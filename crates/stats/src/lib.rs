//! `eabs-stats`: McNemar's test, exact accuracy intervals and pairwise comparison tables for
//! robust classifiers evaluated on the same test samples.
//!
//! The E-ABS paper (Ju & Wagner, AISec 2020, Section 4.5) reports accuracies on 1000 random test
//! samples under each attack, the per-sample worst case over all attacks of a type ("ALL L_inf",
//! "ALL L_2"), and McNemar's test (Dietterich 1998, its reference \[12\]) on every pair of models,
//! per attack type, at alpha = 0.01. This crate does exactly that, for any project:
//!
//! * [`Contingency`]: the 2x2 table of paired outcomes (`n00, n01, n10, n11`) of two models.
//! * [`mcnemar`]: the continuity-corrected chi-squared test (Dietterich's form,
//!   `(|n01 - n10| - 1)^2 / (n01 + n10)`, one degree of freedom), the exact two-sided binomial
//!   test, or the mid-p test; [`Method::Auto`] picks exact below [`EXACT_BELOW`] = 25 discordant
//!   pairs. The [`McNemar`] result says which [`Test`] ran. Every table, including one with no
//!   discordant pairs (p = 1), has a defined result: never NaN.
//! * [`PairwiseComparison`]: all pairs among N models, p-value and significance matrices,
//!   Markdown tables like the paper's ("<0.001", "0.023", "1.000", "-" on the diagonal), the
//!   captions' "all differences are significant except for ..." sentence, validated JSON.
//! * [`accuracy`] / [`Accuracy`]: accuracy with an exact Clopper-Pearson interval (95% by
//!   default, [`DEFAULT_CONFIDENCE`]), via the Beta quantiles of `statrs`.
//! * [`robust_to_all`]: the per-sample worst case over attacks (robust only if every attack
//!   fails), the paper's "ALL" rows.
//! * [`AttackTypeReport`]: one attack type of the paper's Tables 1-4 in one call: accuracy of
//!   every model under every attack, the "ALL" row, and McNemar's test on the "ALL" outcomes,
//!   rendered as Markdown and serialisable.
//!
//! All failures are [`StatsError`]s naming the argument at fault: unpaired vectors of different
//! lengths, empty input, alpha or confidence outside (0, 1), duplicated model names.
//!
//! # Example: one attack type of the paper's Table 1
//!
//! ```
//! use eabs_stats::{accuracy, robust_to_all, ComparisonConfig, PairwiseComparison};
//!
//! // Per-sample outcomes (true = still correctly classified) of two models under two L_inf
//! // attacks, on the same 8 samples. Real runs use 1000 samples.
//! let cnn_pgd      = [false, false, true, false, false, true, false, false];
//! let cnn_deepfool = [false, true, true, false, false, false, false, false];
//! let abs_pgd      = [true, true, true, true, false, true, true, true];
//! let abs_deepfool = [true, true, true, true, true, true, false, true];
//!
//! // "ALL L_inf": robust only where both attacks fail.
//! let cnn_all = robust_to_all(&[&cnn_pgd, &cnn_deepfool])?;
//! let abs_all = robust_to_all(&[&abs_pgd, &abs_deepfool])?;
//! assert_eq!(cnn_all, [false, false, true, false, false, false, false, false]);
//! let acc = accuracy(&abs_all, 0.95)?;
//! assert_eq!((acc.correct, acc.total), (6, 8));
//!
//! // McNemar's test between the models on the combined outcomes, alpha = 0.01.
//! let cmp = PairwiseComparison::with_config(
//!     &["CNN", "ABS"],
//!     &[cnn_all, abs_all],
//!     ComparisonConfig::paper(),
//! )?;
//! // 5 discordant samples, all won by ABS: exact test, p = 2 / 2^5 = 0.0625.
//! assert_eq!(cmp.p_value(0, 1), 0.0625);
//! assert_eq!(
//!     cmp.to_markdown(),
//!     "|  | CNN | ABS |\n|---|---|---|\n| **CNN** | - | 0.062 |\n| **ABS** | 0.062 | - |\n"
//! );
//! assert_eq!(
//!     cmp.summary(),
//!     "McNemar's test shows that no difference is significant (p < 0.01)."
//! );
//! # Ok::<(), eabs_stats::StatsError>(())
//! ```
//!
//! # Conventions
//! * Outcome vectors are `&[bool]`, one entry per sample, `true` meaning "classified correctly"
//!   (under attack, for robust accuracy); all vectors compared must cover the same samples in
//!   the same order.
//! * In a [`Contingency`] of models A and B, index 0 means wrong and 1 correct, A first:
//!   `n01` = A wrong and B correct (Dietterich's "misclassified by A but not by B").
//! * A difference is significant when `p < alpha`, the paper's "(p < 0.01)".
//! * No multiple-comparison correction, as in the paper (with 5 models each table holds 10
//!   tests; pass a smaller alpha for a Bonferroni bound); see [`PairwiseComparison`].

#![warn(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]

mod accuracy;
mod contingency;
mod error;
mod io;
mod mcnemar;
mod pairwise;
mod report;

pub use accuracy::{accuracy, robust_to_all, Accuracy, DEFAULT_CONFIDENCE};
pub use contingency::Contingency;
pub use error::{Result, StatsError};
pub use mcnemar::{mcnemar, McNemar, Method, Test, EXACT_BELOW};
pub use pairwise::{format_p_value, ComparisonConfig, PairTest, PairwiseComparison, PAPER_ALPHA};
pub use report::AttackTypeReport;
