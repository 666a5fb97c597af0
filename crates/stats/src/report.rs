//! One attack type of the paper's results tables: accuracy of every model under every attack,
//! the "ALL" row, and McNemar's test between every pair of models.
//!
//! Tables 1-4 of E-ABS list, per attack type (L_inf, then L_2), the accuracy of each model under
//! each attack, then "ALL L_inf" / "ALL L_2": the accuracy when a sample counts as robust only if
//! it survives every attack of the type (Section 4.5, "we report the model's accuracy under the
//! combination of all attacks of the same type"), and below the table one McNemar p-value table
//! per attack type. The paper does not say which outcomes its p-value tables compare; we compare
//! the "ALL" outcomes (the per-sample worst case, the quantity the paper calls robustness) and
//! say so in the rendered caption. Per-attack comparisons are one
//! [`PairwiseComparison::with_config`] call away.

use serde::{Deserialize, Serialize};

use crate::accuracy::{robust_to_all, Accuracy};
use crate::error::{Result, StatsError};
use crate::pairwise::{ComparisonConfig, PairwiseComparison};

/// Accuracies of N models under the attacks of one type, the "ALL" row, and the pairwise
/// McNemar tests on the "ALL" outcomes.
///
/// ```
/// use eabs_stats::{AttackTypeReport, ComparisonConfig};
/// // outcomes[model][attack][sample]: two models, two attacks, four samples.
/// let outcomes = [
///     vec![vec![true, false, false, true], vec![true, true, false, false]],
///     vec![vec![true, true, true, true], vec![true, true, true, false]],
/// ];
/// let report = AttackTypeReport::new(
///     "L_inf",
///     &["CNN", "E-ABS"],
///     &["PGD", "DeepFool"],
///     &outcomes,
///     ComparisonConfig::paper(),
/// )?;
/// assert_eq!(report.all()[0].correct, 1); // only sample 0 survives both attacks
/// assert_eq!(report.all()[1].correct, 3);
/// assert!(report.to_markdown().contains("| ALL L_inf | 25.0% | 75.0% |"));
/// # Ok::<(), eabs_stats::StatsError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ReportRepr")]
pub struct AttackTypeReport {
    attack_type: String,
    attacks: Vec<String>,
    per_attack: Vec<Vec<Accuracy>>,
    all: Vec<Accuracy>,
    comparison: PairwiseComparison,
}

#[derive(Deserialize)]
struct ReportRepr {
    attack_type: String,
    attacks: Vec<String>,
    per_attack: Vec<Vec<Accuracy>>,
    all: Vec<Accuracy>,
    comparison: PairwiseComparison,
}

impl AttackTypeReport {
    /// Builds the report for attack type `attack_type` (e.g. "L_inf", used in the "ALL" row's
    /// label) from `outcomes[model][attack][sample]` (true = still correct under that attack).
    ///
    /// # Shapes
    /// `models: (n_models,)`, `attacks: (n_attacks,)`,
    /// `outcomes: (n_models, n_attacks, n_samples)`, the same samples everywhere.
    ///
    /// # Errors
    /// [`StatsError::Empty`] for no models, attacks or samples; [`StatsError::NameCountMismatch`]
    /// when `outcomes` does not hold one entry per model; [`StatsError::LengthMismatch`] naming
    /// the model (and attack) with the wrong number of attacks or samples;
    /// [`StatsError::DuplicateName`] for repeated model or attack names; invalid levels in
    /// `config` as in [`PairwiseComparison::with_config`].
    pub fn new<S, T, O, A>(
        attack_type: &str,
        models: &[S],
        attacks: &[T],
        outcomes: &[O],
        config: ComparisonConfig,
    ) -> Result<Self>
    where
        S: AsRef<str>,
        T: AsRef<str>,
        O: AsRef<[A]>,
        A: AsRef<[bool]>,
    {
        if attacks.is_empty() {
            return Err(StatsError::Empty {
                what: format!("attacks of type {attack_type}"),
                unit: "attack",
            });
        }
        let attack_names: Vec<String> = attacks.iter().map(|a| a.as_ref().to_owned()).collect();
        crate::pairwise::check_unique(&attack_names)?;
        if models.len() != outcomes.len() {
            return Err(StatsError::NameCountMismatch {
                names: models.len(),
                outcomes: outcomes.len(),
            });
        }
        let mut all_outcomes = Vec::with_capacity(models.len());
        let mut per_attack = vec![Vec::with_capacity(models.len()); attacks.len()];
        for (model, per_model) in models.iter().zip(outcomes) {
            let model = model.as_ref();
            let per_model: Vec<&[bool]> = per_model.as_ref().iter().map(AsRef::as_ref).collect();
            if per_model.len() != attacks.len() {
                return Err(StatsError::LengthMismatch {
                    what: format!("attacks evaluated for model `{model}`"),
                    expected: attacks.len(),
                    found: per_model.len(),
                });
            }
            let all = robust_to_all(&per_model).map_err(|err| match err {
                StatsError::LengthMismatch {
                    expected, found, ..
                } => StatsError::LengthMismatch {
                    what: format!("outcomes of model `{model}` under some attack (paired with the first attack)"),
                    expected,
                    found,
                },
                StatsError::Empty { .. } => StatsError::Empty {
                    what: format!("outcomes of model `{model}`"),
                    unit: "sample",
                },
                other => other,
            })?;
            for (row, o) in per_attack.iter_mut().zip(&per_model) {
                row.push(crate::accuracy::accuracy(o, config.confidence)?);
            }
            all_outcomes.push(all);
        }
        // Checks names, sample counts across models, alpha and confidence.
        let comparison = PairwiseComparison::with_config(models, &all_outcomes, config)?;
        Ok(Self {
            attack_type: attack_type.to_owned(),
            attacks: attack_names,
            per_attack,
            all: comparison.accuracies().to_vec(),
            comparison,
        })
    }

    /// The attack type, e.g. "L_inf".
    pub fn attack_type(&self) -> &str {
        &self.attack_type
    }

    /// Model names, in column order.
    pub fn models(&self) -> &[String] {
        self.comparison.names()
    }

    /// Attack names, in row order.
    pub fn attacks(&self) -> &[String] {
        &self.attacks
    }

    /// `per_attack()[attack][model]`: accuracy of each model under each attack.
    pub fn per_attack(&self) -> &[Vec<Accuracy>] {
        &self.per_attack
    }

    /// The "ALL" row: accuracy of each model when every attack of the type must fail.
    pub fn all(&self) -> &[Accuracy] {
        &self.all
    }

    /// McNemar's test between every pair of models on the "ALL" outcomes.
    pub fn comparison(&self) -> &PairwiseComparison {
        &self.comparison
    }

    /// Writes the report as pretty JSON to `path` atomically (temporary file, then rename).
    ///
    /// # Errors
    /// [`StatsError::Io`] naming the file.
    pub fn save_json(&self, path: &std::path::Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(|source| StatsError::Json {
            path: path.to_owned(),
            source,
        })?;
        crate::io::write_atomic(path, json.as_bytes())
    }

    /// Reads and validates a report written by [`AttackTypeReport::save_json`].
    ///
    /// # Errors
    /// [`StatsError::Io`] or [`StatsError::Json`] (including inconsistent contents), naming the
    /// file.
    pub fn load_json(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| StatsError::Io {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| StatsError::Json {
            path: path.to_owned(),
            source,
        })
    }

    /// The accuracy rows as the paper prints them (attacks as rows, models as columns, "ALL
    /// `<type>`" last, one decimal), then the p-value table and the caption sentence.
    pub fn to_markdown(&self) -> String {
        let cell = |a: &Accuracy| format!("{:.1}%", a.percent());
        let mut out = format!("| {} |", escape(&self.attack_type));
        for model in self.models() {
            out.push_str(&format!(" {} |", escape(model)));
        }
        out.push_str("\n|---|");
        out.push_str(&"---|".repeat(self.models().len()));
        out.push('\n');
        for (attack, row) in self.attacks.iter().zip(&self.per_attack) {
            out.push_str(&format!("| {} |", escape(attack)));
            for acc in row {
                out.push_str(&format!(" {} |", cell(acc)));
            }
            out.push('\n');
        }
        out.push_str(&format!("| ALL {} |", escape(&self.attack_type)));
        for acc in &self.all {
            out.push_str(&format!(" {} |", cell(acc)));
        }
        out.push_str(&format!(
            "\n\nMcNemar's test p-values, {} attacks (on the ALL {} outcomes, {} samples):\n\n",
            escape(&self.attack_type),
            escape(&self.attack_type),
            self.comparison.n_samples()
        ));
        out.push_str(&self.comparison.to_markdown());
        out.push('\n');
        out.push_str(&self.comparison.summary());
        out.push('\n');
        out
    }
}

impl TryFrom<ReportRepr> for AttackTypeReport {
    type Error = StatsError;

    fn try_from(r: ReportRepr) -> Result<Self> {
        let bad = |reason: String| StatsError::Inconsistent {
            what: "attack type report",
            reason,
        };
        crate::pairwise::check_unique(&r.attacks)?;
        let n_models = r.comparison.names().len();
        let n_samples = r.comparison.n_samples();
        let confidence = r.comparison.config().confidence;
        if r.attacks.is_empty() || r.per_attack.len() != r.attacks.len() {
            return Err(bad(format!(
                "{} attacks but {} accuracy rows",
                r.attacks.len(),
                r.per_attack.len()
            )));
        }
        if r.all != r.comparison.accuracies() {
            return Err(bad(
                "the ALL row differs from the comparison's accuracies".into()
            ));
        }
        for (attack, row) in r.attacks.iter().zip(&r.per_attack) {
            if row.len() != n_models {
                return Err(bad(format!(
                    "attack `{attack}` has {} accuracies for {n_models} models",
                    row.len()
                )));
            }
            for (model, (acc, all)) in r.comparison.names().iter().zip(row.iter().zip(&r.all)) {
                let fresh = Accuracy::from_counts(acc.correct, acc.total, confidence)?;
                let consistent = acc.total == n_samples
                    && acc.correct >= all.correct
                    && crate::pairwise::same_accuracy(acc, &fresh);
                if !consistent {
                    return Err(bad(format!(
                        "accuracy of `{model}` under `{attack}` is inconsistent with its counts \
                         or the ALL row"
                    )));
                }
            }
        }
        Ok(Self {
            attack_type: r.attack_type,
            attacks: r.attacks,
            per_attack: r.per_attack,
            all: r.all,
            comparison: r.comparison,
        })
    }
}

fn escape(text: &str) -> String {
    crate::pairwise::escape_markdown(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes() -> Vec<Vec<Vec<bool>>> {
        // 3 models x 2 attacks x 6 samples.
        vec![
            vec![
                vec![false, false, false, false, true, true],
                vec![false, true, false, false, false, true],
            ],
            vec![
                vec![true, true, true, false, true, true],
                vec![true, true, false, true, true, true],
            ],
            vec![vec![true; 6], vec![true, true, true, true, true, false]],
        ]
    }

    #[test]
    fn rows_all_row_and_comparison() {
        let report = AttackTypeReport::new(
            "L_2",
            &["CNN", "ABS", "E-ABS"],
            &["PGD", "DDN"],
            &outcomes(),
            ComparisonConfig::paper(),
        )
        .unwrap();
        let correct: Vec<Vec<u64>> = report
            .per_attack()
            .iter()
            .map(|row| row.iter().map(|a| a.correct).collect())
            .collect();
        assert_eq!(correct, vec![vec![2, 5, 6], vec![2, 5, 5]]);
        let all: Vec<u64> = report.all().iter().map(|a| a.correct).collect();
        // CNN: only sample 5 survives both; ABS: samples 0, 1, 4, 5; E-ABS: samples 0..5.
        assert_eq!(all, vec![1, 4, 5]);
        // CNN vs E-ABS on ALL: n01 = 5 (samples 0-4), n10 = 1 (sample 5): exact
        // p = 2 (1 + 6) / 2^6 = 0.21875; CNN vs ABS: n01 = 3, n10 = 0: p = 2 / 2^3 = 0.25.
        assert_eq!(report.comparison().p_value(0, 2), 0.21875);
        assert_eq!(report.comparison().p_value(0, 1), 0.25);
        let md = report.to_markdown();
        assert!(md.starts_with(
            "| L_2 | CNN | ABS | E-ABS |\n|---|---|---|---|\n| PGD | 33.3% | 83.3% | 100.0% |\n\
             | DDN | 33.3% | 83.3% | 83.3% |\n| ALL L_2 | 16.7% | 66.7% | 83.3% |\n"
        ));
        assert!(md.contains("| **CNN** | - | 0.250 | 0.219 |"), "{md}");
        assert!(
            md.ends_with("no difference is significant (p < 0.01).\n"),
            "{md}"
        );

        let json = serde_json::to_string(&report).unwrap();
        let back: AttackTypeReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
        let dir = std::env::temp_dir().join(format!("eabs-stats-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("l2.json");
        report.save_json(&path).unwrap();
        assert_eq!(AttackTypeReport::load_json(&path).unwrap(), report);
        std::fs::remove_dir_all(&dir).unwrap();
        let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
        value["per_attack"][0][0]["correct"] = serde_json::json!(0);
        assert!(serde_json::from_str::<AttackTypeReport>(&value.to_string()).is_err());
    }

    #[test]
    fn names_the_model_with_wrong_shapes() {
        let mut o = outcomes();
        o[1].pop();
        let err = AttackTypeReport::new(
            "L_inf",
            &["CNN", "ABS", "E-ABS"],
            &["PGD", "DDN"],
            &o,
            ComparisonConfig::paper(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("model `ABS`"), "{err}");

        let mut o = outcomes();
        o[2][1].push(true);
        let err = AttackTypeReport::new(
            "L_inf",
            &["CNN", "ABS", "E-ABS"],
            &["PGD", "DDN"],
            &o,
            ComparisonConfig::paper(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("model `E-ABS`"), "{err}");

        let err = AttackTypeReport::new(
            "L_inf",
            &["CNN", "ABS", "E-ABS"],
            &["PGD", "PGD"],
            &outcomes(),
            ComparisonConfig::paper(),
        )
        .unwrap_err();
        assert!(matches!(err, StatsError::DuplicateName { .. }));

        let none: [&str; 0] = [];
        let err = AttackTypeReport::new(
            "L_inf",
            &["CNN", "ABS", "E-ABS"],
            &none,
            &outcomes(),
            ComparisonConfig::paper(),
        )
        .unwrap_err();
        assert!(matches!(err, StatsError::Empty { .. }));
    }
}
