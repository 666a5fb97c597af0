//! McNemar's test on every pair among N models, rendered like the paper's p-value tables.
//!
//! E-ABS (Section 4.5) runs "McNemar's test on every pair of models" on the same 1000 samples,
//! per attack type, at alpha = 0.01, and prints the p-values as a models x models table under
//! each of Tables 1-4 ("McNEMAR'S TEST P VALUES", one table for L_inf and one for L_2 attacks).
//! [`PairwiseComparison`] computes that table (plus each model's accuracy with a Clopper-Pearson
//! interval, and the raw 2x2 counts of every pair so that a reader can re-run any test), renders
//! it as Markdown, writes the captions' sentence ("all differences are significant (p < 0.01)
//! except for: ..."), and round-trips through JSON.
//!
//! No correction for multiple comparisons is applied, as in the paper: with 5 models there are
//! 10 tests per table, so a reader who wants a family-wise error rate of 0.01 should compare the
//! p-values with 0.001 (Bonferroni) instead; [`ComparisonConfig::alpha`] is the knob.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::accuracy::{Accuracy, DEFAULT_CONFIDENCE};
use crate::contingency::Contingency;
use crate::error::{check_alpha, check_confidence, Result, StatsError};
use crate::mcnemar::{mcnemar, McNemar, Method};

/// The significance level of the paper (Section 4.5: "We choose alpha = 0.01").
pub const PAPER_ALPHA: f64 = 0.01;

/// Settings of a [`PairwiseComparison`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ComparisonConfig {
    /// Significance level: a pair differs significantly when `p < alpha`.
    pub alpha: f64,
    /// Which McNemar test to run on each pair.
    pub method: Method,
    /// Confidence level of the per-model accuracy intervals.
    pub confidence: f64,
}

impl ComparisonConfig {
    /// The paper's settings (E-ABS Section 4.5): alpha = 0.01; McNemar's test with
    /// [`Method::Auto`] (the paper cites Dietterich's chi-squared test; with 1000 samples and
    /// models this different, nearly every pair has 25 or more discordant samples, where Auto
    /// runs exactly that test); 95% Clopper-Pearson intervals (our addition, not in the paper).
    pub fn paper() -> Self {
        Self {
            alpha: PAPER_ALPHA,
            method: Method::Auto,
            confidence: DEFAULT_CONFIDENCE,
        }
    }

    fn check(&self) -> Result<()> {
        check_alpha(self.alpha)?;
        check_confidence(self.confidence)
    }
}

/// One tested pair of models `a` (earlier in the model list) and `b` (later).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairTest {
    /// Name of model A.
    pub a: String,
    /// Name of model B.
    pub b: String,
    /// Paired counts, A first (`n01`: A wrong, B right).
    pub contingency: Contingency,
    /// McNemar's test on `contingency`.
    pub mcnemar: McNemar,
    /// `mcnemar.p_value < alpha`.
    pub significant: bool,
}

/// McNemar's test on every pair among N models evaluated on the same samples.
///
/// Rows and columns follow the order of the names given; the matrices are symmetric with a
/// diagonal of p = 1 / not significant, which [`PairwiseComparison::to_markdown`] shows as "-".
///
/// ```
/// use eabs_stats::{Method, PairwiseComparison};
/// // Three models on the same 6 samples (true = still correct under attack).
/// let names = ["CNN", "ADV", "E-ABS"];
/// let outcomes = [
///     vec![false, false, false, false, true, true],
///     vec![true, true, false, false, true, true],
///     vec![true, true, true, false, true, true],
/// ];
/// let cmp = PairwiseComparison::new(&names, &outcomes, 0.01, Method::Auto)?;
/// assert_eq!(cmp.p_value(0, 2), cmp.p_value(2, 0));
/// // CNN vs E-ABS: 3 discordant samples all favouring E-ABS, exact test p = 2 / 2^3 = 0.25.
/// assert_eq!(cmp.p_value(0, 2), 0.25);
/// assert!(!cmp.is_significant(0, 2));
/// println!("{}", cmp.to_markdown());
/// # Ok::<(), eabs_stats::StatsError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ComparisonRepr")]
pub struct PairwiseComparison {
    names: Vec<String>,
    config: ComparisonConfig,
    accuracies: Vec<Accuracy>,
    p_values: Vec<Vec<f64>>,
    significant: Vec<Vec<bool>>,
    pairs: Vec<PairTest>,
}

/// What JSON deserialises into before [`PairwiseComparison`] checks its consistency.
#[derive(Deserialize)]
struct ComparisonRepr {
    names: Vec<String>,
    config: ComparisonConfig,
    accuracies: Vec<Accuracy>,
    p_values: Vec<Vec<f64>>,
    significant: Vec<Vec<bool>>,
    pairs: Vec<PairTest>,
}

impl PairwiseComparison {
    /// Tests every pair among `names.len()` models, with `outcomes[m][i]` saying whether model
    /// `m` classifies sample `i` correctly; accuracies get 95% intervals. See
    /// [`PairwiseComparison::with_config`] for the errors.
    ///
    /// # Shapes
    /// `names: (n_models,)`, `outcomes: (n_models, n_samples)`.
    pub fn new<S: AsRef<str>, O: AsRef<[bool]>>(
        names: &[S],
        outcomes: &[O],
        alpha: f64,
        method: Method,
    ) -> Result<Self> {
        let config = ComparisonConfig {
            alpha,
            method,
            confidence: DEFAULT_CONFIDENCE,
        };
        Self::with_config(names, outcomes, config)
    }

    /// Tests every pair among `names.len()` models with the given settings.
    ///
    /// # Errors
    /// [`StatsError::InvalidAlpha`] / [`StatsError::InvalidConfidence`] for levels outside
    /// (0, 1); [`StatsError::Empty`] for no models or no samples;
    /// [`StatsError::NameCountMismatch`] when there are not as many outcome vectors as names;
    /// [`StatsError::DuplicateName`]; [`StatsError::LengthMismatch`] (naming the model) when the
    /// models were not evaluated on the same number of samples.
    pub fn with_config<S: AsRef<str>, O: AsRef<[bool]>>(
        names: &[S],
        outcomes: &[O],
        config: ComparisonConfig,
    ) -> Result<Self> {
        config.check()?;
        if names.is_empty() {
            return Err(StatsError::Empty {
                what: "model names".into(),
                unit: "model",
            });
        }
        if names.len() != outcomes.len() {
            return Err(StatsError::NameCountMismatch {
                names: names.len(),
                outcomes: outcomes.len(),
            });
        }
        let names: Vec<String> = names.iter().map(|s| s.as_ref().to_owned()).collect();
        check_unique(&names)?;
        let outcomes: Vec<&[bool]> = outcomes.iter().map(AsRef::as_ref).collect();
        let n_samples = outcomes[0].len();
        if n_samples == 0 {
            return Err(StatsError::Empty {
                what: format!("outcomes of model `{}`", names[0]),
                unit: "sample",
            });
        }
        for (name, o) in names.iter().zip(&outcomes).skip(1) {
            if o.len() != n_samples {
                return Err(StatsError::LengthMismatch {
                    what: format!(
                        "outcomes of model `{name}` (paired with model `{}`)",
                        names[0]
                    ),
                    expected: n_samples,
                    found: o.len(),
                });
            }
        }

        let accuracies = outcomes
            .iter()
            .map(|o| crate::accuracy::accuracy(o, config.confidence))
            .collect::<Result<Vec<_>>>()?;
        let n = names.len();
        let mut p_values = vec![vec![1.0; n]; n];
        let mut significant = vec![vec![false; n]; n];
        let mut pairs = Vec::with_capacity(n * (n - 1) / 2);
        for i in 0..n {
            for j in i + 1..n {
                let contingency = Contingency::count(outcomes[i], outcomes[j]);
                let result = mcnemar(&contingency, config.method);
                let is_significant = result.p_value < config.alpha;
                p_values[i][j] = result.p_value;
                p_values[j][i] = result.p_value;
                significant[i][j] = is_significant;
                significant[j][i] = is_significant;
                pairs.push(PairTest {
                    a: names[i].clone(),
                    b: names[j].clone(),
                    contingency,
                    mcnemar: result,
                    significant: is_significant,
                });
            }
        }
        Ok(Self {
            names,
            config,
            accuracies,
            p_values,
            significant,
            pairs,
        })
    }

    /// Model names, in row/column order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The settings used.
    pub fn config(&self) -> &ComparisonConfig {
        &self.config
    }

    /// The significance level.
    pub fn alpha(&self) -> f64 {
        self.config.alpha
    }

    /// Number of samples every model was evaluated on.
    pub fn n_samples(&self) -> u64 {
        self.accuracies.first().map_or(0, |a| a.total)
    }

    /// Accuracy of each model, in row order, with Clopper-Pearson intervals.
    pub fn accuracies(&self) -> &[Accuracy] {
        &self.accuracies
    }

    /// Position of a model by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// The symmetric p-value matrix, `n_models x n_models`, with 1 on the diagonal.
    pub fn p_values(&self) -> &[Vec<f64>] {
        &self.p_values
    }

    /// The symmetric "significant at alpha" matrix, with `false` on the diagonal.
    pub fn significance(&self) -> &[Vec<bool>] {
        &self.significant
    }

    /// p-value of models `i` and `j` (1 when `i == j`).
    ///
    /// # Panics
    /// When `i` or `j` is not below the number of models (an indexing bug in the caller).
    pub fn p_value(&self, i: usize, j: usize) -> f64 {
        self.p_values[i][j]
    }

    /// Whether models `i` and `j` differ significantly (`false` when `i == j`).
    ///
    /// # Panics
    /// When `i` or `j` is not below the number of models.
    pub fn is_significant(&self, i: usize, j: usize) -> bool {
        self.significant[i][j]
    }

    /// Every tested pair, in row-major order of the upper triangle ((0,1), (0,2), ..., (1,2), ...).
    pub fn pairs(&self) -> &[PairTest] {
        &self.pairs
    }

    /// The test of models `i` and `j` oriented with model `i` as A (its contingency table is
    /// transposed when `i > j`); `None` on the diagonal or out of range.
    pub fn pair(&self, i: usize, j: usize) -> Option<PairTest> {
        let n = self.names.len();
        if i == j || i >= n || j >= n {
            return None;
        }
        let (lo, hi) = (i.min(j), i.max(j));
        // Row-major upper triangle: rows before `lo` hold (n-1) + (n-2) + ... + (n-lo) pairs.
        let idx = lo * (2 * n - lo - 1) / 2 + (hi - lo - 1);
        let pair = self.pairs.get(idx)?.clone();
        if i < j {
            return Some(pair);
        }
        Some(PairTest {
            a: pair.b,
            b: pair.a,
            contingency: pair.contingency.transpose(),
            mcnemar: McNemar {
                n01: pair.mcnemar.n10,
                n10: pair.mcnemar.n01,
                ..pair.mcnemar
            },
            significant: pair.significant,
        })
    }

    /// Pairs whose difference is *not* significant, as (A, B) names: the exceptions the paper's
    /// captions list.
    pub fn non_significant_pairs(&self) -> Vec<(&str, &str)> {
        self.pairs
            .iter()
            .filter(|p| !p.significant)
            .map(|p| (p.a.as_str(), p.b.as_str()))
            .collect()
    }

    /// The p-value table as Markdown, as printed under the paper's Tables 1-4: models as rows
    /// and columns in the given order, p-values by [`format_p_value`] ("<0.001", "0.023",
    /// "1.000"), "-" on the diagonal. `|` in names is escaped.
    ///
    /// ```text
    /// |  | CNN | E-ABS |
    /// |---|---|---|
    /// | **CNN** | - | <0.001 |
    /// | **E-ABS** | <0.001 | - |
    /// ```
    pub fn to_markdown(&self) -> String {
        self.render(|i, j| format_p_value(self.p_values[i][j]))
    }

    /// The "significant at alpha" table as Markdown: "yes" / "no", "-" on the diagonal.
    pub fn significance_to_markdown(&self) -> String {
        self.render(|i, j| if self.significant[i][j] { "yes" } else { "no" }.to_owned())
    }

    fn render(&self, cell: impl Fn(usize, usize) -> String) -> String {
        let names: Vec<String> = self.names.iter().map(|n| escape_markdown(n)).collect();
        let mut out = String::from("|  |");
        for name in &names {
            out.push_str(&format!(" {name} |"));
        }
        out.push_str("\n|---|");
        out.push_str(&"---|".repeat(names.len()));
        out.push('\n');
        for (i, name) in names.iter().enumerate() {
            out.push_str(&format!("| **{name}** |"));
            for j in 0..names.len() {
                let text = if i == j { "-".to_owned() } else { cell(i, j) };
                out.push_str(&format!(" {text} |"));
            }
            out.push('\n');
        }
        out
    }

    /// The sentence of the paper's captions, e.g. "McNemar's test shows that all differences
    /// are significant (p < 0.01) except for: CNN and ABS, ABS and E-ABS."
    pub fn summary(&self) -> String {
        let alpha = self.config.alpha;
        let exceptions = self.non_significant_pairs();
        if self.pairs.is_empty() {
            "McNemar's test: only one model, no pair to compare.".to_owned()
        } else if exceptions.is_empty() {
            format!("McNemar's test shows that all differences are significant (p < {alpha}).")
        } else if exceptions.len() == self.pairs.len() {
            format!("McNemar's test shows that no difference is significant (p < {alpha}).")
        } else {
            let list: Vec<String> = exceptions
                .iter()
                .map(|(a, b)| format!("{a} and {b}"))
                .collect();
            format!(
                "McNemar's test shows that all differences are significant (p < {alpha}) \
                 except for: {}.",
                list.join(", ")
            )
        }
    }

    /// Pretty-printed JSON of the whole comparison (names, settings, accuracies, both matrices,
    /// every pair's counts and test).
    pub fn to_json(&self) -> String {
        // Serialising plain structs of strings, finite floats, integers and bools cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses and validates JSON written by [`PairwiseComparison::to_json`].
    ///
    /// # Errors
    /// [`StatsError::Inconsistent`] (via serde) when the parts contradict each other, e.g. a
    /// p-value matrix that disagrees with the pairs; any serde error otherwise.
    pub fn from_json(json: &str) -> std::result::Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// Writes [`PairwiseComparison::to_json`] to `path` atomically (a temporary file in the
    /// same directory, then a rename), so a crash never leaves a truncated result.
    ///
    /// # Errors
    /// [`StatsError::Io`] naming the file.
    pub fn save_json(&self, path: &Path) -> Result<()> {
        crate::io::write_atomic(path, self.to_json().as_bytes())
    }

    /// Reads and validates a comparison written by [`PairwiseComparison::save_json`].
    ///
    /// # Errors
    /// [`StatsError::Io`] or [`StatsError::Json`], naming the file.
    pub fn load_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| StatsError::Io {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| StatsError::Json {
            path: path.to_owned(),
            source,
        })
    }
}

impl TryFrom<ComparisonRepr> for PairwiseComparison {
    type Error = StatsError;

    /// Checks everything [`PairwiseComparison::with_config`] guarantees, so hand-edited or
    /// truncated JSON is refused instead of rendering a wrong table.
    fn try_from(r: ComparisonRepr) -> Result<Self> {
        let bad = |reason: String| StatsError::Inconsistent {
            what: "pairwise comparison",
            reason,
        };
        r.config.check()?;
        let n = r.names.len();
        if n == 0 {
            return Err(StatsError::Empty {
                what: "model names".into(),
                unit: "model",
            });
        }
        check_unique(&r.names)?;
        if r.accuracies.len() != n {
            return Err(bad(format!(
                "{n} models but {} accuracies",
                r.accuracies.len()
            )));
        }
        let n_samples = r.accuracies[0].total;
        for (name, acc) in r.names.iter().zip(&r.accuracies) {
            let expected = Accuracy::from_counts(acc.correct, acc.total, r.config.confidence)?;
            if acc.total != n_samples || !same_accuracy(acc, &expected) {
                return Err(bad(format!(
                    "accuracy of `{name}` is not {} correct of {n_samples} at confidence {}",
                    acc.correct, r.config.confidence
                )));
            }
        }
        let square = |rows: usize, lens: Vec<usize>| rows == n && lens.iter().all(|&l| l == n);
        if !square(r.p_values.len(), r.p_values.iter().map(Vec::len).collect())
            || !square(
                r.significant.len(),
                r.significant.iter().map(Vec::len).collect(),
            )
        {
            return Err(bad(format!(
                "p-value and significance matrices must be {n} x {n}"
            )));
        }
        if r.pairs.len() != n * (n - 1) / 2 {
            return Err(bad(format!(
                "{n} models need {} pairs, found {}",
                n * (n - 1) / 2,
                r.pairs.len()
            )));
        }
        let index: HashMap<&str, usize> = r
            .names
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i))
            .collect();
        let expected_order = (0..n).flat_map(|i| (i + 1..n).map(move |j| (i, j)));
        for (pair, (i, j)) in r.pairs.iter().zip(expected_order) {
            let (a, b) = (index.get(pair.a.as_str()), index.get(pair.b.as_str()));
            if (a, b) != (Some(&i), Some(&j)) {
                return Err(bad(format!(
                    "pair `{}` / `{}` is out of order: expected `{}` / `{}`",
                    pair.a, pair.b, r.names[i], r.names[j]
                )));
            }
            let t = &pair.contingency;
            let expected = mcnemar(t, r.config.method);
            let consistent = t.total() == n_samples
                && t.correct_a() == r.accuracies[i].correct
                && t.correct_b() == r.accuracies[j].correct
                && same_test(&pair.mcnemar, &expected)
                && pair.significant == (expected.p_value < r.config.alpha)
                && r.p_values[i][j] == pair.mcnemar.p_value
                && r.p_values[j][i] == pair.mcnemar.p_value
                && r.significant[i][j] == pair.significant
                && r.significant[j][i] == pair.significant;
            if !consistent {
                return Err(bad(format!(
                    "pair `{}` / `{}` disagrees with its counts, the accuracies or the matrices",
                    pair.a, pair.b
                )));
            }
        }
        for i in 0..n {
            if r.p_values[i][i] != 1.0 || r.significant[i][i] {
                return Err(bad(format!(
                    "diagonal entry {i} must be p = 1, not significant"
                )));
            }
        }
        Ok(Self {
            names: r.names,
            config: r.config,
            accuracies: r.accuracies,
            p_values: r.p_values,
            significant: r.significant,
            pairs: r.pairs,
        })
    }
}

/// Floats that went through JSON may differ in the last bit from a fresh computation.
fn approx(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(f64::MIN_POSITIVE)
}

pub(crate) fn same_accuracy(a: &Accuracy, b: &Accuracy) -> bool {
    a.correct == b.correct
        && a.total == b.total
        && approx(a.rate, b.rate)
        && approx(a.lower, b.lower)
        && approx(a.upper, b.upper)
}

fn same_test(a: &McNemar, b: &McNemar) -> bool {
    a.method == b.method
        && a.n01 == b.n01
        && a.n10 == b.n10
        && approx(a.statistic, b.statistic)
        && approx(a.p_value, b.p_value)
}

pub(crate) fn check_unique(names: &[String]) -> Result<()> {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(names.len());
    for (idx, name) in names.iter().enumerate() {
        if let Some(&first) = seen.get(name.as_str()) {
            return Err(StatsError::DuplicateName {
                name: name.clone(),
                first,
                second: idx,
            });
        }
        seen.insert(name, idx);
    }
    Ok(())
}

/// Formats a p-value as the paper's tables do: "<0.001" below 0.001, otherwise three decimals
/// ("0.023", "1.000").
///
/// ```
/// use eabs_stats::format_p_value;
/// assert_eq!(format_p_value(0.0004), "<0.001");
/// assert_eq!(format_p_value(0.0234), "0.023");
/// assert_eq!(format_p_value(1.0), "1.000");
/// ```
pub fn format_p_value(p: f64) -> String {
    if p < 0.001 {
        "<0.001".to_owned()
    } else {
        format!("{p:.3}")
    }
}

/// Makes a model name safe inside a Markdown table cell.
pub(crate) fn escape_markdown(name: &str) -> String {
    name.replace('|', "\\|").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Five models on 40 samples, built so that every pair's discordant counts are known:
    /// model m is correct on samples `0..correct[m]` (nested sets), so for m < k with
    /// correct[m] < correct[k] the table has n01 = correct[k] - correct[m], n10 = 0.
    fn nested(correct: &[usize], n: usize) -> Vec<Vec<bool>> {
        correct
            .iter()
            .map(|&c| (0..n).map(|i| i < c).collect())
            .collect()
    }

    #[test]
    fn nested_models_have_known_p_values() {
        let names = ["CNN", "ADV-Linf", "ADV-L2", "ABS", "E-ABS"];
        let outcomes = nested(&[0, 10, 11, 30, 40], 40);
        let cmp = PairwiseComparison::new(&names, &outcomes, 0.01, Method::Auto).unwrap();
        // CNN vs ADV-Linf: 10 discordant, exact: 2 / 2^10 = 0.001953125.
        assert!((cmp.p_value(0, 1) / (2.0 / 1024.0) - 1.0).abs() < 1e-12);
        assert!(cmp.is_significant(0, 1));
        // ADV-Linf vs ADV-L2: 1 discordant, exact: min(1, 2 * 1/2) = 1.
        assert_eq!(cmp.p_value(1, 2), 1.0);
        assert!(!cmp.is_significant(1, 2));
        // CNN vs E-ABS: 40 discordant, chi-squared: 39^2 / 40 = 38.025, python
        // math.erfc(math.sqrt(38.025 / 2)) = 6.984393061522158e-10.
        let pair = cmp.pair(0, 4).unwrap();
        assert_eq!(pair.mcnemar.method, crate::Test::ChiSquared);
        assert!((pair.mcnemar.statistic - 38.025).abs() < 1e-12);
        assert!((cmp.p_value(0, 4) / 6.984_393_061_522_158e-10 - 1.0).abs() < 1e-12);
        assert_eq!(cmp.n_samples(), 40);
        assert_eq!(cmp.accuracies()[3].correct, 30);
        assert_eq!(cmp.non_significant_pairs(), vec![("ADV-Linf", "ADV-L2")]);
        assert_eq!(
            cmp.summary(),
            "McNemar's test shows that all differences are significant (p < 0.01) except for: \
             ADV-Linf and ADV-L2."
        );
    }

    #[test]
    fn matrices_are_symmetric_with_a_trivial_diagonal() {
        let outcomes = [
            vec![true, false, true, true, false, false, true],
            vec![false, false, true, false, true, false, true],
            vec![true, true, true, true, false, true, false],
            vec![false, true, false, true, true, true, true],
        ];
        let cmp =
            PairwiseComparison::new(&["a", "b", "c", "d"], &outcomes, 0.05, Method::MidP).unwrap();
        for i in 0..4 {
            assert_eq!(cmp.p_value(i, i), 1.0);
            assert!(!cmp.is_significant(i, i));
            assert!(cmp.pair(i, i).is_none());
            for j in 0..4 {
                assert_eq!(cmp.p_value(i, j), cmp.p_value(j, i));
                if i != j {
                    let (ij, ji) = (cmp.pair(i, j).unwrap(), cmp.pair(j, i).unwrap());
                    assert_eq!(ij.contingency, ji.contingency.transpose());
                    assert_eq!(ij.a, cmp.names()[i]);
                    let direct = Contingency::from_outcomes(&outcomes[i], &outcomes[j]).unwrap();
                    assert_eq!(ij.contingency, direct);
                    assert_eq!(ij.mcnemar.n01, direct.n01);
                }
            }
        }
        assert!(cmp.pair(0, 4).is_none());
    }

    #[test]
    fn markdown_matches_the_papers_layout() {
        let names = ["CNN", "A|B"];
        // 30 discordant samples all favouring model 1: chi-squared p ~ 1.2e-7 -> "<0.001".
        let outcomes = nested(&[0, 30], 30);
        let cmp = PairwiseComparison::new(&names, &outcomes, 0.01, Method::Auto).unwrap();
        assert_eq!(
            cmp.to_markdown(),
            "|  | CNN | A\\|B |\n|---|---|---|\n| **CNN** | - | <0.001 |\n| **A\\|B** | <0.001 | - |\n"
        );
        assert_eq!(
            cmp.significance_to_markdown(),
            "|  | CNN | A\\|B |\n|---|---|---|\n| **CNN** | - | yes |\n| **A\\|B** | yes | - |\n"
        );
        assert_eq!(
            cmp.summary(),
            "McNemar's test shows that all differences are significant (p < 0.01)."
        );
    }

    #[test]
    fn p_value_formatting() {
        assert_eq!(format_p_value(0.0), "<0.001");
        assert_eq!(format_p_value(0.000_999_9), "<0.001");
        assert_eq!(format_p_value(0.001), "0.001");
        assert_eq!(format_p_value(0.0234), "0.023");
        assert_eq!(format_p_value(0.0235), "0.024");
        assert_eq!(format_p_value(0.5), "0.500");
        assert_eq!(format_p_value(0.99996), "1.000");
        assert_eq!(format_p_value(1.0), "1.000");
    }

    #[test]
    fn summary_when_nothing_or_one_model() {
        let same = [vec![true, false, true], vec![true, false, true]];
        let cmp = PairwiseComparison::new(&["x", "y"], &same, 0.01, Method::Auto).unwrap();
        assert_eq!(
            cmp.summary(),
            "McNemar's test shows that no difference is significant (p < 0.01)."
        );
        let one = PairwiseComparison::new(&["x"], &same[..1], 0.01, Method::Auto).unwrap();
        assert!(one.pairs().is_empty());
        assert_eq!(one.to_markdown(), "|  | x |\n|---|---|\n| **x** | - |\n");
        assert!(one.summary().contains("only one model"));
    }

    #[test]
    fn rejects_bad_input() {
        let o = [vec![true, false], vec![false, true]];
        let err = PairwiseComparison::new(&["a", "a"], &o, 0.01, Method::Auto).unwrap_err();
        assert!(matches!(
            err,
            StatsError::DuplicateName {
                first: 0,
                second: 1,
                ..
            }
        ));
        assert!(err.to_string().contains("`a`"), "{err}");
        for alpha in [0.0, 1.0, -1.0, f64::NAN] {
            assert!(matches!(
                PairwiseComparison::new(&["a", "b"], &o, alpha, Method::Auto),
                Err(StatsError::InvalidAlpha(_))
            ));
        }
        let config = ComparisonConfig {
            confidence: 1.0,
            ..ComparisonConfig::paper()
        };
        assert!(matches!(
            PairwiseComparison::with_config(&["a", "b"], &o, config),
            Err(StatsError::InvalidConfidence(_))
        ));
        let none: [Vec<bool>; 0] = [];
        let no_names: [&str; 0] = [];
        assert!(matches!(
            PairwiseComparison::new(&no_names, &none, 0.01, Method::Auto),
            Err(StatsError::Empty { .. })
        ));
        assert!(matches!(
            PairwiseComparison::new(&["a", "b", "c"], &o, 0.01, Method::Auto),
            Err(StatsError::NameCountMismatch {
                names: 3,
                outcomes: 2
            })
        ));
        let ragged = [vec![true, false], vec![true]];
        let err = PairwiseComparison::new(&["a", "b"], &ragged, 0.01, Method::Auto).unwrap_err();
        assert!(matches!(
            err,
            StatsError::LengthMismatch {
                expected: 2,
                found: 1,
                ..
            }
        ));
        assert!(err.to_string().contains("model `b`"), "{err}");
        let empty = [Vec::<bool>::new(), Vec::new()];
        assert!(matches!(
            PairwiseComparison::new(&["a", "b"], &empty, 0.01, Method::Auto),
            Err(StatsError::Empty { .. })
        ));
    }

    #[test]
    fn json_round_trip_and_validation() {
        let names = ["CNN", "ABS", "E-ABS"];
        let outcomes = nested(&[3, 20, 35], 40);
        let cmp =
            PairwiseComparison::with_config(&names, &outcomes, ComparisonConfig::paper()).unwrap();
        let json = cmp.to_json();
        let back = PairwiseComparison::from_json(&json).unwrap();
        assert_eq!(back, cmp);
        assert!(json.contains("\"method\": \"auto\""), "{json}");

        // Tampering with one p-value is caught.
        let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
        value["p_values"][0][1] = serde_json::json!(0.5);
        let err = PairwiseComparison::from_json(&value.to_string()).unwrap_err();
        assert!(err.to_string().contains("disagrees"), "{err}");
        // So is a contingency table that does not match the accuracies.
        let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
        value["pairs"][0]["contingency"]["n11"] = serde_json::json!(0);
        assert!(PairwiseComparison::from_json(&value.to_string()).is_err());
        // And a duplicated name.
        let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
        value["names"][1] = serde_json::json!("CNN");
        let err = PairwiseComparison::from_json(&value.to_string()).unwrap_err();
        assert!(err.to_string().contains("duplicated"), "{err}");
    }

    #[test]
    fn save_and_load_json_atomically() {
        let dir = std::env::temp_dir().join(format!("eabs-stats-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("comparison.json");
        let cmp = PairwiseComparison::new(
            &["a", "b"],
            &nested(&[5, 30], 30),
            PAPER_ALPHA,
            Method::Exact,
        )
        .unwrap();
        cmp.save_json(&path).unwrap();
        assert_eq!(PairwiseComparison::load_json(&path).unwrap(), cmp);
        // No temporary file is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
        let missing = dir.join("missing.json");
        let err = PairwiseComparison::load_json(&missing).unwrap_err();
        assert!(matches!(err, StatsError::Io { .. }));
        assert!(err.to_string().contains("missing.json"), "{err}");
        std::fs::write(&path, "{ not json").unwrap();
        let err = PairwiseComparison::load_json(&path).unwrap_err();
        assert!(matches!(err, StatsError::Json { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
