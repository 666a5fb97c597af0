//! Accuracy with an exact Clopper-Pearson interval, and the per-sample worst case over attacks.
//!
//! E-ABS reports accuracies on 1000 samples (Section 4.5); with that many samples a difference of
//! a few points can be noise, so every accuracy here carries an exact binomial confidence
//! interval (Clopper & Pearson 1934, "The use of confidence or fiducial limits illustrated in the
//! case of the binomial", Biometrika 26(4)). For `k` correct out of `n` and level `1 - a`:
//!
//! * lower = `Beta(a/2; k, n - k + 1)` quantile, and 0 when `k = 0`;
//! * upper = `Beta(1 - a/2; k + 1, n - k)` quantile, and 1 when `k = n`;
//!
//! the same bounds as R's `binom.test` and `statsmodels`' `proportion_confint(method="beta")`.
//!
//! The paper's "ALL L_inf" / "ALL L_2" rows (Tables 1-4, and "we report the model's accuracy
//! under the combination of all attacks of the same type", Section 4.5) count a sample as robust
//! only if the model survives *every* attack of that type on it: the per-sample worst case,
//! [`robust_to_all`]. It is not the minimum of the per-attack accuracies: different attacks
//! succeed on different samples, so the combined accuracy can be below every single one.

use serde::{Deserialize, Serialize};
use statrs::distribution::{Beta, ContinuousCDF};

use crate::error::{check_confidence, Result, StatsError};

/// The default confidence level of [`accuracy`] intervals, 95%.
pub const DEFAULT_CONFIDENCE: f64 = 0.95;

/// An accuracy and its exact Clopper-Pearson confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    /// Samples classified correctly (under attack, for robust accuracy).
    pub correct: u64,
    /// Samples evaluated.
    pub total: u64,
    /// `correct / total`, in [0, 1].
    pub rate: f64,
    /// Lower end of the Clopper-Pearson interval, in [0, `rate`].
    pub lower: f64,
    /// Upper end of the Clopper-Pearson interval, in [`rate`, 1].
    pub upper: f64,
    /// Confidence level of the interval, e.g. 0.95.
    pub confidence: f64,
}

impl Accuracy {
    /// Accuracy from counts: `correct` of `total` samples, with a Clopper-Pearson interval at
    /// level `confidence`.
    ///
    /// # Errors
    /// [`StatsError::Empty`] when `total = 0`, [`StatsError::CountsOutOfRange`] when
    /// `correct > total`, [`StatsError::InvalidConfidence`] unless `0 < confidence < 1`.
    ///
    /// ```
    /// use eabs_stats::Accuracy;
    /// // 0 of 10: the upper bound has the closed form 1 - 0.025^(1/10).
    /// let acc = Accuracy::from_counts(0, 10, 0.95)?;
    /// assert_eq!((acc.rate, acc.lower), (0.0, 0.0));
    /// assert!((acc.upper - (1.0 - 0.025f64.powf(0.1))).abs() < 1e-9);
    /// # Ok::<(), eabs_stats::StatsError>(())
    /// ```
    pub fn from_counts(correct: u64, total: u64, confidence: f64) -> Result<Self> {
        check_confidence(confidence)?;
        if total == 0 {
            return Err(StatsError::Empty {
                what: "accuracy counts (total = 0)".into(),
                unit: "sample",
            });
        }
        if correct > total {
            return Err(StatsError::CountsOutOfRange { correct, total });
        }
        let (lower, upper) = clopper_pearson(correct, total, confidence);
        Ok(Self {
            correct,
            total,
            rate: correct as f64 / total as f64,
            lower,
            upper,
            confidence,
        })
    }

    /// The accuracy in percent, as the paper's tables print it ("90.4%").
    pub fn percent(&self) -> f64 {
        100.0 * self.rate
    }
}

impl std::fmt::Display for Accuracy {
    /// `90.4% [88.4%, 92.2%]`: one decimal, like the paper's tables.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1}% [{:.1}%, {:.1}%]",
            self.percent(),
            100.0 * self.lower,
            100.0 * self.upper
        )
    }
}

/// Accuracy of one model from per-sample outcomes (`true` = classified correctly), with a
/// Clopper-Pearson interval at level `confidence` (use [`DEFAULT_CONFIDENCE`] for 95%).
///
/// # Shapes
/// `outcomes: (n_samples,)`.
///
/// # Errors
/// [`StatsError::Empty`] for no samples, [`StatsError::InvalidConfidence`] unless
/// `0 < confidence < 1`.
///
/// ```
/// use eabs_stats::{accuracy, DEFAULT_CONFIDENCE};
/// let outcomes: Vec<bool> = (0..20).map(|i| i < 7).collect();
/// let acc = accuracy(&outcomes, DEFAULT_CONFIDENCE)?;
/// assert_eq!((acc.correct, acc.total), (7, 20));
/// // R: binom.test(7, 20)$conf.int = 0.1539092 0.5921885
/// assert!((acc.lower - 0.1539092).abs() < 1e-7 && (acc.upper - 0.5921885).abs() < 1e-7);
/// # Ok::<(), eabs_stats::StatsError>(())
/// ```
pub fn accuracy(outcomes: &[bool], confidence: f64) -> Result<Accuracy> {
    check_confidence(confidence)?;
    if outcomes.is_empty() {
        return Err(StatsError::Empty {
            what: "outcomes".into(),
            unit: "sample",
        });
    }
    let correct = outcomes.iter().filter(|&&ok| ok).count() as u64;
    Accuracy::from_counts(correct, outcomes.len() as u64, confidence)
}

/// Clopper-Pearson bounds for `k` of `n` (`0 <= k <= n`, `n > 0`, valid `confidence`, all
/// checked by the callers).
fn clopper_pearson(k: u64, n: u64, confidence: f64) -> (f64, f64) {
    let tail = (1.0 - confidence) / 2.0;
    let (kf, nf) = (k as f64, n as f64);
    let lower = if k == 0 {
        0.0
    } else {
        beta_quantile(kf, nf - kf + 1.0, tail, 0.0)
    };
    let upper = if k == n {
        1.0
    } else {
        beta_quantile(kf + 1.0, nf - kf, 1.0 - tail, 1.0)
    };
    // Guard the interval's defining property against rounding in the quantile.
    let rate = kf / nf;
    (lower.clamp(0.0, rate), upper.clamp(rate, 1.0))
}

/// The `q` quantile of Beta(a, b) (a, b >= 1 here, so the constructor cannot fail; `fallback`, the
/// trivial bound, is returned all the same instead of panicking).
fn beta_quantile(a: f64, b: f64, q: f64, fallback: f64) -> f64 {
    match Beta::new(a, b) {
        Ok(beta) => {
            let x = beta.inverse_cdf(q);
            if x.is_finite() {
                x
            } else {
                fallback
            }
        }
        Err(_) => fallback,
    }
}

/// The per-sample worst case over several attacks of one type: sample `i` is robust only if it
/// is classified correctly under every attack, `out[i] = per_attack[0][i] && per_attack[1][i] &&
/// ...`. This gives the paper's "ALL L_inf" / "ALL L_2" rows (Tables 1-4) when fed the outcomes
/// of PGD, DeepFool, noise, etc. on the same samples.
///
/// # Shapes
/// `per_attack: (n_attacks, n_samples)`, every attack on the same samples in the same order;
/// returns `(n_samples,)`.
///
/// # Errors
/// [`StatsError::Empty`] for no attacks or no samples, [`StatsError::LengthMismatch`] when the
/// attacks cover different numbers of samples.
///
/// ```
/// use eabs_stats::robust_to_all;
/// let pgd = [true, true, false, true];
/// let deepfool = [true, false, true, true];
/// assert_eq!(robust_to_all(&[&pgd, &deepfool])?, vec![true, false, false, true]);
/// # Ok::<(), eabs_stats::StatsError>(())
/// ```
pub fn robust_to_all(per_attack: &[&[bool]]) -> Result<Vec<bool>> {
    let Some((first, rest)) = per_attack.split_first() else {
        return Err(StatsError::Empty {
            what: "per-attack outcomes".into(),
            unit: "attack",
        });
    };
    if first.is_empty() {
        return Err(StatsError::Empty {
            what: "outcomes of attack 0".into(),
            unit: "sample",
        });
    }
    let mut all = first.to_vec();
    for (idx, outcomes) in rest.iter().enumerate() {
        if outcomes.len() != all.len() {
            return Err(StatsError::LengthMismatch {
                what: format!("outcomes of attack {} (paired with attack 0)", idx + 1),
                expected: all.len(),
                found: outcomes.len(),
            });
        }
        for (robust, &ok) in all.iter_mut().zip(outcomes.iter()) {
            *robust &= ok;
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference intervals computed with python3 (scipy is not installed) by bisecting exact
    /// rational binomial tails, which equal the Beta cdf for integer shapes
    /// (`I_p(k, n-k+1) = P(Bin(n, p) >= k)`); the script is `/tmp/cp.py` in the report:
    /// ```python
    /// tail_ge = lambda n, x, p: sum(comb(n, i) * p**i * (1-p)**(n-i) for i in range(x, n+1))
    /// lower: bisect p in [0, 1] (70 halvings, p as Fraction) for tail_ge(n, k, p) = a/2
    /// upper: bisect p for 1 - tail_ge(n, k+1, p) = a/2
    /// ```
    /// Columns: k, n, confidence, lower, upper.
    const CASES: &[(u64, u64, f64, f64, f64)] = &[
        // Also R: binom.test(7, 20)$conf.int.
        (
            7,
            20,
            0.95,
            0.153_909_204_784_541_18,
            0.592_188_534_532_828_2,
        ),
        // The paper's Table 1: ADV-L_inf under PGD, 90.4% of 1000.
        (
            904,
            1000,
            0.95,
            0.884_033_356_637_123_2,
            0.921_547_963_752_577_6,
        ),
        (
            3,
            50,
            0.99,
            0.006_872_485_332_951_645,
            0.202_706_269_468_643_23,
        ),
        (
            500,
            1000,
            0.9,
            0.473_517_731_235_691_2,
            0.526_482_268_764_308_7,
        ),
    ];

    #[test]
    fn clopper_pearson_matches_bisection_reference() {
        for &(k, n, confidence, lower, upper) in CASES {
            let acc = Accuracy::from_counts(k, n, confidence).unwrap();
            assert!((acc.lower - lower).abs() < 1e-9, "{k}/{n}: {acc:?}");
            assert!((acc.upper - upper).abs() < 1e-9, "{k}/{n}: {acc:?}");
            assert_eq!(acc.rate, k as f64 / n as f64);
        }
    }

    #[test]
    fn clopper_pearson_closed_forms_at_the_ends() {
        // 0 of n: [0, 1 - (a/2)^(1/n)]; n of n: [(a/2)^(1/n), 1].
        for n in [1u64, 10, 1000] {
            for confidence in [0.9, 0.95, 0.99] {
                let t: f64 = (1.0 - confidence) / 2.0;
                let bound = t.powf(1.0 / n as f64);
                let none = Accuracy::from_counts(0, n, confidence).unwrap();
                assert_eq!(none.lower, 0.0);
                assert!((none.upper - (1.0 - bound)).abs() < 1e-9, "{none:?}");
                let all = Accuracy::from_counts(n, n, confidence).unwrap();
                assert_eq!(all.upper, 1.0);
                assert!((all.lower - bound).abs() < 1e-9, "{all:?}");
            }
        }
        // 0 of 10 at 95%, python: 1 - 0.025**0.1 = 0.3084971078187607.
        let acc = Accuracy::from_counts(0, 10, 0.95).unwrap();
        assert!((acc.upper - 0.308_497_107_818_760_7).abs() < 1e-12);
    }

    #[test]
    fn large_counts_stay_finite_and_ordered() {
        for (k, n) in [
            (1u64, 1_000_000u64),
            (999_999, 1_000_000),
            (500_000, 1_000_000),
        ] {
            let acc = Accuracy::from_counts(k, n, 0.999).unwrap();
            assert!(acc.lower.is_finite() && acc.upper.is_finite(), "{acc:?}");
            assert!(acc.lower < acc.rate && acc.rate < acc.upper, "{acc:?}");
            // The normal approximation's half-width is a lower bound for the exact one.
            let p = acc.rate;
            let half = 3.29 * (p * (1.0 - p) / n as f64).sqrt();
            assert!(acc.upper - acc.lower >= 1.9 * half * 0.9, "{acc:?}");
        }
    }

    #[test]
    fn interval_widens_with_confidence_and_contains_rate() {
        let mut previous = (0.5, 0.5);
        for confidence in [0.5, 0.8, 0.9, 0.95, 0.99, 0.999] {
            let acc = Accuracy::from_counts(171, 1000, confidence).unwrap();
            assert!(acc.lower <= acc.rate && acc.rate <= acc.upper);
            assert!(acc.lower < previous.0 || previous.0 == 0.5);
            assert!(acc.upper > previous.1 || previous.1 == 0.5);
            previous = (acc.lower, acc.upper);
        }
    }

    #[test]
    fn accuracy_counts_outcomes() {
        let outcomes = [true, false, true, true];
        let acc = accuracy(&outcomes, DEFAULT_CONFIDENCE).unwrap();
        assert_eq!((acc.correct, acc.total, acc.rate), (3, 4, 0.75));
        assert_eq!(acc.confidence, 0.95);
        assert_eq!(acc.percent(), 75.0);
        let shown = Accuracy::from_counts(904, 1000, 0.95).unwrap().to_string();
        assert_eq!(shown, "90.4% [88.4%, 92.2%]");
    }

    #[test]
    fn accuracy_rejects_bad_input() {
        assert!(matches!(accuracy(&[], 0.95), Err(StatsError::Empty { .. })));
        for confidence in [0.0, 1.0, 1.5, -0.1, f64::NAN] {
            let err = accuracy(&[true], confidence).unwrap_err();
            assert!(matches!(err, StatsError::InvalidConfidence(_)), "{err}");
        }
        let err = Accuracy::from_counts(11, 10, 0.95).unwrap_err();
        assert!(matches!(
            err,
            StatsError::CountsOutOfRange {
                correct: 11,
                total: 10
            }
        ));
        assert!(matches!(
            Accuracy::from_counts(0, 0, 0.95),
            Err(StatsError::Empty { .. })
        ));
    }

    #[test]
    fn robust_to_all_is_the_per_sample_worst_case() {
        // Each attack alone leaves 3 of 4 samples robust (75%), together only 1 of 4 survives
        // (25%): the combined accuracy is below the minimum of the per-attack accuracies.
        let pgd = [true, true, true, false];
        let deepfool = [true, false, true, true];
        let noise = [true, true, false, true];
        let all = robust_to_all(&[&pgd, &deepfool, &noise]).unwrap();
        assert_eq!(all, vec![true, false, false, false]);
        assert_eq!(robust_to_all(&[&pgd]).unwrap(), pgd.to_vec());
    }

    #[test]
    fn robust_to_all_rejects_bad_input() {
        assert!(matches!(robust_to_all(&[]), Err(StatsError::Empty { .. })));
        let empty: &[bool] = &[];
        assert!(matches!(
            robust_to_all(&[empty]),
            Err(StatsError::Empty { .. })
        ));
        let err = robust_to_all(&[&[true, false], &[true, true], &[true]]).unwrap_err();
        assert!(matches!(
            err,
            StatsError::LengthMismatch {
                expected: 2,
                found: 1,
                ..
            }
        ));
        assert!(err.to_string().contains("attack 2"), "{err}");
    }
}
