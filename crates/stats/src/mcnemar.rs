//! McNemar's test for two classifiers evaluated on the same samples.
//!
//! E-ABS (Section 4.5, captions of Tables 1-4) compares every pair of models on the same 1000
//! test samples with McNemar's test as recommended by Dietterich (1998, "Approximate Statistical
//! Tests for Comparing Supervised Classification Learning Algorithms", Section 3.1, the paper's
//! reference \[12\]), at alpha = 0.01. Under the null hypothesis the two models have the same error
//! rate, so each of the `n = n01 + n10` discordant samples is equally likely to fall on either
//! side: `n01 ~ Binomial(n, 1/2)`. Three ways to turn that into a p-value are offered:
//!
//! * [`Test::ChiSquared`]: Dietterich's statistic with Edwards' continuity correction,
//!   `(|n01 - n10| - 1)^2 / (n01 + n10)`, referred to the chi-squared distribution with one
//!   degree of freedom. This is the test Dietterich (1998) describes and the E-ABS paper cites.
//! * [`Test::Exact`]: the exact two-sided binomial (sign) test on the discordant pairs,
//!   `p = min(1, 2 P(X <= min(n01, n10)))` with `X ~ Binomial(n01 + n10, 1/2)` (as R's
//!   `binom.test`, `statsmodels.stats.contingency_tables.mcnemar(exact=True)` and the R package
//!   `contingencytables` compute it; the distribution is symmetric, so doubling the smaller tail
//!   equals summing all outcomes at most as likely as the observed one).
//! * [`Test::MidP`]: the mid-p variant of the exact test, `2 P(X <= k) - P(X = k)`, which
//!   Fagerland, Lydersen & Laake (2013, "The McNemar test for binary matched-pairs data: mid-p
//!   and asymptotic are better than exact conditional", BMC Med. Res. Methodol. 13:91) recommend
//!   because the exact test is conservative. Only used when asked for.
//!
//! [`Method::Auto`] (the default) picks the exact test when `n01 + n10 < 25` and the
//! chi-squared test otherwise: the chi-squared approximation is poor for few discordant pairs.
//! The threshold 25 is the commonly quoted rule of thumb (e.g. the Wikipedia article "McNemar's
//! test" and the mlxtend `mcnemar` user guide by S. Raschka); see [`EXACT_BELOW`].
//!
//! # Edge cases (all defined, never NaN)
//! * No discordant pairs (`n01 + n10 = 0`): statistic 0, p-value 1 for every method; the models
//!   agree on every sample, so there is no evidence of a difference.
//! * `|n01 - n10| < 1` (that is, `n01 = n10`): the corrected statistic would be
//!   `(0 - 1)^2 / n > 0`, an artefact of the correction pushing past zero; we clamp
//!   `|n01 - n10| - 1` at zero, so the statistic is 0 and its p-value 1.
//! * Very lopsided tables (e.g. `n01 = 0`, `n10 = 2000`) may give p-values that underflow to
//!   exactly 0.0; they are still in [0, 1] and render as "<0.001".

use serde::{Deserialize, Serialize};
use statrs::distribution::{ChiSquared, ContinuousCDF};
use statrs::function::factorial::ln_binomial;

use crate::contingency::Contingency;
use crate::error::{check_alpha, Result};

/// [`Method::Auto`] uses the exact test when there are fewer discordant pairs than this, and the
/// chi-squared test otherwise (the rule of thumb "exact when `n01 + n10 < 25`", quoted e.g. by
/// the Wikipedia article "McNemar's test" and the mlxtend `mcnemar` user guide).
pub const EXACT_BELOW: u64 = 25;

/// Which McNemar test to run (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Exact test when `n01 + n10 <` [`EXACT_BELOW`], chi-squared test otherwise.
    #[default]
    Auto,
    /// Always the continuity-corrected chi-squared test (Dietterich 1998).
    ChiSquared,
    /// Always the exact two-sided binomial test on the discordant pairs.
    Exact,
    /// Always the mid-p exact test (Fagerland et al. 2013).
    MidP,
}

impl Method {
    /// The test this method runs on `table`: resolves [`Method::Auto`].
    pub fn resolve(self, table: &Contingency) -> Test {
        match self {
            Method::Auto if table.discordant() < EXACT_BELOW => Test::Exact,
            Method::Auto | Method::ChiSquared => Test::ChiSquared,
            Method::Exact => Test::Exact,
            Method::MidP => Test::MidP,
        }
    }
}

/// The test that produced a p-value (what [`Method::Auto`] resolved to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Test {
    /// Continuity-corrected chi-squared test with one degree of freedom.
    ChiSquared,
    /// Exact two-sided binomial test on the discordant pairs.
    Exact,
    /// Mid-p exact test.
    MidP,
}

impl std::fmt::Display for Test {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Test::ChiSquared => "chi-squared (continuity-corrected)",
            Test::Exact => "exact binomial",
            Test::MidP => "mid-p binomial",
        })
    }
}

/// The outcome of McNemar's test on one pair of models.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct McNemar {
    /// Dietterich's continuity-corrected statistic `max(|n01 - n10| - 1, 0)^2 / (n01 + n10)`
    /// (0 when there are no discordant pairs). Reported for every method so tables stay
    /// comparable; the p-value of the exact and mid-p tests does not depend on it
    /// (`statsmodels` reports `min(n01, n10)` there instead; it is available from the counts).
    pub statistic: f64,
    /// Two-sided p-value, in [0, 1].
    pub p_value: f64,
    /// The test that produced `p_value`.
    pub method: Test,
    /// Samples model A gets wrong and model B gets right.
    pub n01: u64,
    /// Samples model A gets right and model B gets wrong.
    pub n10: u64,
}

impl McNemar {
    /// Whether the difference is significant at level `alpha`, that is `p_value < alpha` (the
    /// paper's "significant (p < 0.01)").
    ///
    /// # Errors
    /// [`crate::StatsError::InvalidAlpha`] unless `0 < alpha < 1`.
    pub fn is_significant(&self, alpha: f64) -> Result<bool> {
        check_alpha(alpha)?;
        Ok(self.p_value < alpha)
    }

    /// Which model did better on the discordant samples: [`std::cmp::Ordering::Greater`] when
    /// model A is right more often where the two disagree (`n10 > n01`), `Less` when model B is,
    /// `Equal` on a tie. Significance is a separate question: see [`McNemar::is_significant`].
    pub fn direction(&self) -> std::cmp::Ordering {
        self.n10.cmp(&self.n01)
    }
}

/// Runs McNemar's test on `table` with `method` (see the module docs for the formulas and edge
/// cases). Never fails: every table has a defined statistic and p-value.
///
/// ```
/// use eabs_stats::{mcnemar, Contingency, Method, Test};
/// // 11 samples only model B gets right, 1 only model A gets right: 12 discordant < 25,
/// // so Auto runs the exact test: p = 2 * (1 + 12) / 2^12 = 0.00634765625.
/// let table = Contingency::new(80, 11, 1, 908);
/// let r = mcnemar(&table, Method::Auto);
/// assert_eq!(r.method, Test::Exact);
/// assert!((r.p_value - 0.00634765625).abs() < 1e-12);
/// assert!(r.is_significant(0.01)?);
/// // Dietterich's statistic: (|11 - 1| - 1)^2 / 12 = 6.75.
/// assert!((r.statistic - 6.75).abs() < 1e-12);
/// # Ok::<(), eabs_stats::StatsError>(())
/// ```
pub fn mcnemar(table: &Contingency, method: Method) -> McNemar {
    let (n01, n10) = (table.n01, table.n10);
    let test = method.resolve(table);
    let statistic = chi_squared_statistic(n01, n10);
    let p_value = match test {
        Test::ChiSquared => chi_squared_p_value(statistic),
        Test::Exact => exact_p_value(n01, n10, false),
        Test::MidP => exact_p_value(n01, n10, true),
    };
    McNemar {
        statistic,
        p_value: p_value.clamp(0.0, 1.0),
        method: test,
        n01,
        n10,
    }
}

/// `max(|n01 - n10| - 1, 0)^2 / (n01 + n10)`, and 0 without discordant pairs.
fn chi_squared_statistic(n01: u64, n10: u64) -> f64 {
    if n01 == 0 && n10 == 0 {
        return 0.0;
    }
    let corrected = n01.abs_diff(n10).saturating_sub(1) as f64;
    corrected * corrected / (n01 as f64 + n10 as f64)
}

/// Upper tail of the chi-squared distribution with one degree of freedom, `P(chi2_1 > s)`, via
/// `statrs`' regularised upper incomplete gamma function (`Q(1/2, s/2)`), which keeps full
/// relative precision far into the tail (unlike `1 - cdf`). It agrees with python's
/// `math.erfc(sqrt(s / 2))` to ~1e-14 relative; `statrs::function::erf::erfc` itself is only
/// good to ~1e-10 relative, so it is not used.
fn chi_squared_p_value(statistic: f64) -> f64 {
    if statistic <= 0.0 {
        return 1.0;
    }
    match ChiSquared::new(1.0) {
        Ok(chi2) => chi2.sf(statistic),
        // One degree of freedom is always valid; never panic all the same.
        Err(_) => 1.0,
    }
}

/// Exact two-sided binomial p-value on the discordant pairs, or its mid-p variant.
fn exact_p_value(n01: u64, n10: u64, mid_p: bool) -> f64 {
    // Beyond u64::MAX discordant pairs (only reachable with hand-made tables) the sum saturates;
    // the p-value of such a table is 0 or 1 to every digit anyway.
    let n = n01.saturating_add(n10);
    if n == 0 {
        return 1.0;
    }
    let (tail, at_k) = binomial_half_lower_tail(n, n01.min(n10));
    let p = if mid_p { 2.0 * tail - at_k } else { 2.0 * tail };
    p.min(1.0)
}

/// Largest `n` for which `sum_i C(n, i) <= 2^n` and `2^-n` are normal `f64`s (`2^-1022` is the
/// smallest normal number), so the direct sum below neither overflows nor loses precision.
const DIRECT_SUM_MAX_N: u64 = 1020;

/// `(P(X <= k), P(X = k))` for `X ~ Binomial(n, 1/2)` and `k <= n / 2`.
///
/// We do not use `statrs`' `Binomial::cdf` (a regularised incomplete Beta function): it is
/// off by up to ~1e-13 relative, so `2 / 2^5` would not come out as `0.0625`. Instead:
/// * `n <= 1020`: sum the binomial coefficients `C(n, i)`, `i = 0..=k`, in `f64` (exact while
///   below 2^53, i.e. for every `n <= 56`, and within a few ulps beyond) and scale by the power of
///   two `2^-n`, which is exact;
/// * larger `n`: `P(X = k)` from `ln C(n, k) - n ln 2` (`statrs`' log-factorials), times the sum
///   of the ratios `P(X = i) / P(X = k)` accumulated downwards from `i = k` until they no longer
///   change the sum (about `6 sqrt(n)` terms when `k` is near `n / 2`, so a million discordant
///   pairs take microseconds). Tails below ~1e-308 underflow to 0.
fn binomial_half_lower_tail(n: u64, k: u64) -> (f64, f64) {
    // k = min(n01, n10) <= n / 2 unless the sum saturated (hand-made tables near u64::MAX).
    let k = k.min(n / 2);
    if n <= DIRECT_SUM_MAX_N {
        let scale = 0.5f64.powi(n as i32);
        let (mut coefficient, mut sum) = (1.0f64, 1.0f64);
        for i in 1..=k {
            // C(n, i) = C(n, i - 1) * (n - i + 1) / i; the product is divisible by i, so this is
            // exact for as long as the values are exactly representable.
            coefficient = coefficient * (n - i + 1) as f64 / i as f64;
            sum += coefficient;
        }
        return (sum * scale, coefficient * scale);
    }
    let at_k = (ln_binomial(n, k) - n as f64 * std::f64::consts::LN_2).exp();
    let (mut ratio, mut sum) = (1.0f64, 1.0f64);
    for i in (1..=k).rev() {
        // P(X = i - 1) / P(X = i) = i / (n - i + 1) <= 1 for i <= n / 2.
        ratio *= i as f64 / (n - i + 1) as f64;
        if ratio <= sum * f64::EPSILON * 0.25 {
            break;
        }
        sum += ratio;
    }
    (at_k * sum, at_k)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tables `(n01, n10)` with the expected values, computed by hand and checked with python3's
    /// exact rational arithmetic (`/tmp/ref.py` in the report; scipy is not installed):
    /// ```python
    /// from math import comb, erfc, sqrt; from fractions import Fraction
    /// s = max(abs(b - c) - 1, 0)**2 / (b + c); p_chi = erfc(sqrt(s / 2))
    /// t = sum(Fraction(comb(n, i), 2**n) for i in range(min(b, c) + 1))
    /// exact = float(min(1, 2 * t)); midp = float(2 * t - Fraction(comb(n, k), 2**n))
    /// ```
    /// Columns: n01, n10, statistic, chi-squared p, exact p, mid-p.
    const CASES: &[(u64, u64, f64, f64, f64, f64)] = &[
        // By hand: s = (|1-2|-1)^2/3 = 0; exact 2*(1+3)/8 = 1; mid-p 1 - 3/8 = 0.625.
        (1, 2, 0.0, 1.0, 1.0, 0.625),
        // By hand: s = 16/5 = 3.2; exact 2/32 = 0.0625; mid-p 1/32 = 0.03125.
        (0, 5, 3.2, 0.073_638_270_120_302_66, 0.0625, 0.03125),
        // By hand: s = (|2-9|-1)^2/11 = 36/11; exact 2*(1+11+55)/2048 = 134/2048 = 0.0654296875.
        (
            2,
            9,
            36.0 / 11.0,
            0.070_440_429_272_087_99,
            0.065_429_687_5,
            0.038_574_218_75,
        ),
        // By hand: s = 81/12 = 6.75; exact 2*(1+12)/4096 = 0.00634765625.
        (
            11,
            1,
            6.75,
            0.009_374_768_459_434_885,
            0.006_347_656_25,
            0.003_417_968_75,
        ),
        // Ties: statistic clamped to 0, every p-value 1.
        (3, 3, 0.0, 1.0, 1.0, 1.0),
        (500, 500, 0.0, 1.0, 1.0, 1.0),
        // s = (|7-18|-1)^2/25 = 100/25 = 4; exactly 25 discordant pairs.
        (
            7,
            18,
            4.0,
            0.045_500_263_896_358_396,
            0.043_285_250_663_757_324,
            0.028_959_274_291_992_188,
        ),
        // s = 9^2/40 = 2.025.
        (
            25,
            15,
            2.025,
            0.154_728_923_485_378_5,
            0.153_859_944_162_832_1,
            0.117_275_205_957_412_25,
        ),
        // s = 19^2/40 = 9.025.
        (
            10,
            30,
            9.025,
            0.002_663_119_259_138_554,
            0.002_221_433_773_229_364_3,
            0.001_450_491_014_111_321_4,
        ),
        // s = 24^2/25 = 23.04; exact 2/2^25.
        (
            0,
            25,
            23.04,
            1.586_656_303_951_189_6e-6,
            5.960_464_477_539_063e-8,
            2.980_232_238_769_531_2e-8,
        ),
        // s = 19^2/100 = 3.61.
        (
            40,
            60,
            3.61,
            0.057_433_119_632_003_59,
            0.056_887_933_640_980_79,
            0.046_044_066_929_342_806,
        ),
        // s = 29^2/270.
        (
            120,
            150,
            841.0 / 270.0,
            0.077_583_297_485_131_49,
            0.077_389_398_980_218_5,
            0.068_201_293_350_987_51,
        ),
        // s = 999^2/1000 = 998.001; exact 2/2^1000 (deep tails keep relative precision).
        (
            0,
            1000,
            998.001,
            4.884_013_735_521_507e-219,
            1.866_527_237_006_437_8e-301,
            9.332_636_185_032_189e-302,
        ),
    ];

    fn close(found: f64, expected: f64, rel: f64) -> bool {
        if expected == 0.0 {
            found == 0.0
        } else {
            ((found - expected) / expected).abs() <= rel
        }
    }

    #[test]
    fn matches_hand_computed_tables() {
        for &(n01, n10, statistic, p_chi, p_exact, p_mid) in CASES {
            let table = Contingency::new(100, n01, n10, 100);
            let chi = mcnemar(&table, Method::ChiSquared);
            let exact = mcnemar(&table, Method::Exact);
            let mid = mcnemar(&table, Method::MidP);
            let case = format!("n01={n01} n10={n10}");
            assert_eq!(chi.method, Test::ChiSquared, "{case}");
            assert_eq!(exact.method, Test::Exact, "{case}");
            assert_eq!(mid.method, Test::MidP, "{case}");
            assert!(close(chi.statistic, statistic, 1e-12), "{case}: {chi:?}");
            assert_eq!(exact.statistic, chi.statistic, "{case}");
            assert!(
                close(chi.p_value, p_chi, 1e-12),
                "{case}: {chi:?} vs {p_chi}"
            );
            assert!(
                close(exact.p_value, p_exact, 1e-12),
                "{case}: {exact:?} vs {p_exact}"
            );
            assert!(
                close(mid.p_value, p_mid, 1e-12),
                "{case}: {mid:?} vs {p_mid}"
            );
            assert_eq!((chi.n01, chi.n10), (n01, n10));
        }
    }

    #[test]
    fn exact_test_is_precise_on_both_sides_of_the_direct_sum_limit() {
        // python3: t = sum(comb(n, i) for i in range(k + 1));
        // float(Fraction(2 * t, 2**n)), float(Fraction(2 * t - comb(n, k), 2**n))
        // n = 1020 uses the direct sum, the others the log-space path.
        let cases: &[(u64, u64, f64, f64)] = &[
            (
                1020,
                480,
                0.064_641_976_387_294_85,
                0.060_362_002_781_130_124,
            ),
            (
                1021,
                480,
                0.060_362_002_781_130_124,
                0.056_323_321_587_142_89,
            ),
            (
                2000,
                950,
                0.026_824_146_240_280_695,
                0.025_359_525_784_663_77,
            ),
            (
                30000,
                14800,
                0.021_242_010_259_197_877,
                0.020_921_928_086_711_856,
            ),
        ];
        for &(n, k, p_exact, p_mid) in cases {
            let table = Contingency::new(0, k, n - k, 0);
            let exact = mcnemar(&table, Method::Exact).p_value;
            let mid = mcnemar(&table, Method::MidP).p_value;
            assert!(
                close(exact, p_exact, 1e-10),
                "n={n} k={k}: {exact} vs {p_exact}"
            );
            assert!(close(mid, p_mid, 1e-10), "n={n} k={k}: {mid} vs {p_mid}");
        }
        // Small tables come out exactly: 2 / 2^5.
        let r = mcnemar(&Contingency::new(0, 5, 0, 0), Method::Exact);
        assert_eq!(r.p_value, 0.0625);
    }

    #[test]
    fn exact_test_agrees_with_statrs_binomial() {
        // Independent cross-check against statrs' incomplete-Beta binomial cdf.
        use statrs::distribution::{Binomial, DiscreteCDF};
        for n in [1u64, 2, 7, 24, 25, 100, 1000, 1500, 10_000] {
            for k in [0, n / 10, n / 4, n / 3, n / 2] {
                let binomial = Binomial::new(0.5, n).unwrap();
                let expected = (2.0 * binomial.cdf(k)).min(1.0);
                let table = Contingency::new(0, k, n - k, 0);
                let found = mcnemar(&table, Method::Exact).p_value;
                assert!(
                    close(found, expected, 1e-9),
                    "n={n} k={k}: {found} vs {expected}"
                );
            }
        }
    }

    #[test]
    fn absurd_hand_made_tables_do_not_panic() {
        let t = Contingency::new(u64::MAX, u64::MAX, 1, u64::MAX);
        assert_eq!(t.total(), u64::MAX);
        for method in [
            Method::Auto,
            Method::ChiSquared,
            Method::Exact,
            Method::MidP,
        ] {
            let r = mcnemar(&t, method);
            assert!((0.0..=1.0).contains(&r.p_value), "{method:?}: {r:?}");
            assert!(r.p_value < 1e-300, "{method:?}: {r:?}");
        }
    }

    #[test]
    fn auto_switches_at_25_discordant_pairs() {
        // 24 discordant: exact.
        let below = Contingency::new(0, 6, 18, 0);
        let r = mcnemar(&below, Method::Auto);
        assert_eq!(r.method, Test::Exact);
        assert_eq!(r.p_value, mcnemar(&below, Method::Exact).p_value);
        // 25 discordant: chi-squared.
        let at = Contingency::new(0, 7, 18, 0);
        let r = mcnemar(&at, Method::Auto);
        assert_eq!(r.method, Test::ChiSquared);
        assert!(close(r.p_value, 0.045_500_263_896_358_396, 1e-9));
        assert_eq!(Method::default(), Method::Auto);
    }

    #[test]
    fn no_discordant_pairs_gives_p_one() {
        let table = Contingency::new(10, 0, 0, 990);
        for method in [
            Method::Auto,
            Method::ChiSquared,
            Method::Exact,
            Method::MidP,
        ] {
            let r = mcnemar(&table, method);
            assert_eq!(r.statistic, 0.0, "{method:?}");
            assert_eq!(r.p_value, 1.0, "{method:?}");
            assert!(!r.is_significant(0.01).unwrap());
        }
    }

    #[test]
    fn exact_agrees_with_chi_squared_for_many_discordant_pairs() {
        // The corrected chi-squared statistic approximates the binomial well for large n:
        // compare across a range of imbalances, p-values from ~0.9 down to ~1e-4.
        for n in [400u64, 1000, 4000] {
            for z in [0.2f64, 1.0, 2.0, 3.0, 3.9] {
                let d = (z * (n as f64).sqrt()).round() as u64;
                let n01 = (n - d) / 2;
                let n10 = n - n01;
                let table = Contingency::new(0, n01, n10, 0);
                let chi = mcnemar(&table, Method::ChiSquared).p_value;
                let exact = mcnemar(&table, Method::Exact).p_value;
                assert!(
                    (chi - exact).abs() <= 0.05 * exact + 1e-6,
                    "n={n} n01={n01} n10={n10}: chi {chi} vs exact {exact}"
                );
            }
        }
    }

    #[test]
    fn mid_p_is_below_exact() {
        for &(n01, n10, ..) in CASES {
            let table = Contingency::new(0, n01, n10, 0);
            let exact = mcnemar(&table, Method::Exact).p_value;
            let mid = mcnemar(&table, Method::MidP).p_value;
            assert!(mid <= exact, "n01={n01} n10={n10}");
        }
    }

    #[test]
    fn significance_and_direction() {
        let r = mcnemar(&Contingency::new(0, 30, 10, 0), Method::Auto);
        assert!(r.is_significant(0.01).unwrap()); // p = 0.00266
        assert!(!r.is_significant(0.001).unwrap());
        assert_eq!(r.direction(), std::cmp::Ordering::Less);
        for alpha in [0.0, 1.0, -0.5, 2.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                r.is_significant(alpha),
                Err(crate::StatsError::InvalidAlpha(_))
            ));
        }
    }
}
