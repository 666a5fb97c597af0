//! The 2x2 contingency table of two classifiers evaluated on the same samples.
//!
//! McNemar's test (Dietterich 1998, Section 3.1; E-ABS Section 4.5) needs paired outcomes: model
//! A and model B judged on the *same* test samples, in the same order. We count, with index 0 for
//! "wrong" and 1 for "correct" (first index model A, second index model B):
//!
//! | | B wrong | B correct |
//! |---|---|---|
//! | **A wrong** | `n00` | `n01` |
//! | **A correct** | `n10` | `n11` |
//!
//! so `n01` counts samples that A gets wrong and B gets right, and `n10` the reverse. These are
//! Dietterich's `n01` ("misclassified by A but not by B") and `n10` ("misclassified by B but not
//! by A"). Only the discordant cells `n01` and `n10` enter the test.

use serde::{Deserialize, Serialize};

use crate::error::{Result, StatsError};

/// Counts of paired outcomes of two models on the same samples (see the module docs for the
/// cell layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Contingency {
    /// Both models wrong.
    pub n00: u64,
    /// Model A wrong, model B correct.
    pub n01: u64,
    /// Model A correct, model B wrong.
    pub n10: u64,
    /// Both models correct.
    pub n11: u64,
}

impl Contingency {
    /// A table from its four cells (see the module docs for their meaning).
    pub fn new(n00: u64, n01: u64, n10: u64, n11: u64) -> Self {
        Self { n00, n01, n10, n11 }
    }

    /// Counts the paired outcomes of model A (`a`) and model B (`b`); `a[i]` and `b[i]` say
    /// whether each model classified sample `i` correctly (under attack, for robust accuracy).
    ///
    /// # Shapes
    /// `a: (n_samples,)`, `b: (n_samples,)`, the same samples in the same order.
    ///
    /// # Errors
    /// [`StatsError::Empty`] when `a` is empty, [`StatsError::LengthMismatch`] when the lengths
    /// differ: a McNemar test on unpaired samples would be meaningless.
    ///
    /// ```
    /// use eabs_stats::Contingency;
    /// let a = [true, true, false, false, true];
    /// let b = [true, false, true, false, false];
    /// let t = Contingency::from_outcomes(&a, &b)?;
    /// assert_eq!(t, Contingency::new(1, 1, 2, 1));
    /// # Ok::<(), eabs_stats::StatsError>(())
    /// ```
    pub fn from_outcomes(a: &[bool], b: &[bool]) -> Result<Self> {
        if a.is_empty() {
            return Err(StatsError::Empty {
                what: "outcomes of model A".into(),
                unit: "sample",
            });
        }
        if a.len() != b.len() {
            return Err(StatsError::LengthMismatch {
                what: "outcomes of model B (paired with model A)".into(),
                expected: a.len(),
                found: b.len(),
            });
        }
        Ok(Self::count(a, b))
    }

    /// Counts without checks; callers guarantee equal lengths.
    pub(crate) fn count(a: &[bool], b: &[bool]) -> Self {
        let mut cells = [0u64; 4];
        for (&x, &y) in a.iter().zip(b) {
            cells[usize::from(x) * 2 + usize::from(y)] += 1;
        }
        Self::new(cells[0], cells[1], cells[2], cells[3])
    }

    /// The table with models A and B swapped (`n01` and `n10` exchange places).
    pub fn transpose(&self) -> Self {
        Self::new(self.n00, self.n10, self.n01, self.n11)
    }

    /// Number of samples, `n00 + n01 + n10 + n11` (saturating at `u64::MAX` for absurd
    /// hand-made tables instead of overflowing).
    pub fn total(&self) -> u64 {
        self.n00
            .saturating_add(self.n01)
            .saturating_add(self.n10)
            .saturating_add(self.n11)
    }

    /// Number of discordant pairs, `n01 + n10`: the only samples McNemar's test looks at.
    pub fn discordant(&self) -> u64 {
        self.n01.saturating_add(self.n10)
    }

    /// Samples model A classifies correctly, `n10 + n11`.
    pub fn correct_a(&self) -> u64 {
        self.n10.saturating_add(self.n11)
    }

    /// Samples model B classifies correctly, `n01 + n11`.
    pub fn correct_b(&self) -> u64 {
        self.n01.saturating_add(self.n11)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_cell() {
        // Sample by sample: (A, B) = (1,1) (1,0) (1,0) (0,1) (0,0) (0,0) (0,0) (1,1) (1,1).
        let a = [true, true, true, false, false, false, false, true, true];
        let b = [true, false, false, true, false, false, false, true, true];
        let t = Contingency::from_outcomes(&a, &b).unwrap();
        assert_eq!(t, Contingency::new(3, 1, 2, 3));
        assert_eq!(t.total(), 9);
        assert_eq!(t.discordant(), 3);
        assert_eq!(t.correct_a(), 5);
        assert_eq!(t.correct_b(), 4);
        assert_eq!(Contingency::from_outcomes(&b, &a).unwrap(), t.transpose());
    }

    #[test]
    fn rejects_unpaired_and_empty_input() {
        let err = Contingency::from_outcomes(&[true, false], &[true]).unwrap_err();
        assert!(matches!(
            err,
            StatsError::LengthMismatch {
                expected: 2,
                found: 1,
                ..
            }
        ));
        assert!(err.to_string().contains("expected 2 samples, found 1"));
        let err = Contingency::from_outcomes(&[], &[]).unwrap_err();
        assert!(matches!(err, StatsError::Empty { .. }));
    }
}
