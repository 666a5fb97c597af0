//! The per-sample worst case over every attack of a norm, and the checks an evaluation runs on
//! itself (Carlini et al. 2019, "On Evaluating Adversarial Robustness").
//!
//! The "ALL" rows of the paper count a sample as robust only if every attack of the norm failed
//! on it. The ledger keeps more: for each model, sample and norm, the smallest successful
//! perturbation any attack found and which attack found it (a sample misclassified when clean is
//! broken at distance 0 by `clean`). Its ALL row must equal the row-wise combination of the
//! outcomes; [`checks`] says so in every table, with the other checks that need no extra attack
//! runs.
//!
//! The ledger is read from the journals, which hold every attack's per-sample distance, so it
//! can be rebuilt from a results folder at any time.

use anyhow::{ensure, Context, Result};
use eabs_attacks::Norm;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

use crate::evaluate::SampleRecord;
use crate::journal::Journal;
use crate::report::Outcomes;
use crate::suite::{norm_str, AttackRow, RowKey};

/// The worst case of one sample in one norm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Worst {
    /// Position in the evaluation subset.
    pub sample: usize,
    /// Smallest perturbation of a successful attack, in the norm (`None`: no attack succeeded
    /// within the epsilon; 0 for a sample misclassified when clean).
    pub distance: Option<f64>,
    /// The attack that found it (`clean` for a clean misclassification).
    pub attack: Option<String>,
    /// For the L_2 entries of ABS-like models: the sample's certified radius of eq. (7) (no
    /// adversarial should be closer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound: Option<f64>,
}

/// `ledger[model][norm]`: one [`Worst`] per sample, in subset order.
pub type Ledger = BTreeMap<String, BTreeMap<String, Vec<Worst>>>;

/// Builds the ledger of `models` over `rows` from the journals below `journal_root`
/// (`<model>/<row key>.jsonl`, and `<model>/clean.jsonl`).
pub fn from_journals(journal_root: &Path, models: &[String], rows: &[AttackRow]) -> Result<Ledger> {
    let read = |model: &str, row: &str| -> Result<Vec<SampleRecord>> {
        let path = journal_root.join(model).join(format!("{row}.jsonl"));
        ensure!(path.is_file(), "no journal {}", path.display());
        let journal = Journal::<SampleRecord>::open(&path)?;
        let mut records: Vec<SampleRecord> = journal.records().cloned().collect();
        records.sort_by_key(|r| r.sample);
        Ok(records)
    };
    let mut ledger = Ledger::new();
    for m in models {
        let clean = read(m, "clean")?;
        let mut per_norm = BTreeMap::new();
        for norm in [Norm::Linf, Norm::L2] {
            let mut worst: Vec<Worst> = clean
                .iter()
                .map(|r| Worst {
                    sample: r.sample,
                    distance: (!r.robust[0]).then_some(0.0),
                    attack: (!r.robust[0]).then(|| "clean".to_string()),
                    bound: None,
                })
                .collect();
            if norm == Norm::L2 {
                let path = journal_root.join(m).join("bound-l2.jsonl");
                if path.is_file() {
                    let bounds = read(m, "bound-l2")?;
                    ensure!(
                        bounds.len() == worst.len(),
                        "{m}: {} certified bounds journaled, the clean row has {}",
                        bounds.len(),
                        worst.len()
                    );
                    for (w, b) in worst.iter_mut().zip(&bounds) {
                        w.bound = Some(b.distance[0]);
                    }
                }
            }
            let mut any = false;
            for row in rows.iter().filter(|r| r.norm == norm) {
                any = true;
                let records = read(m, &row.key())?;
                ensure!(
                    records.len() == worst.len(),
                    "{m} {row}: {} journaled samples, the clean row has {}",
                    records.len(),
                    worst.len()
                );
                for (w, r) in worst.iter_mut().zip(&records) {
                    if r.robust[0] {
                        continue;
                    }
                    if w.distance.is_none_or(|d| r.distance[0] < d) {
                        w.distance = Some(r.distance[0]);
                        w.attack = Some(row.attack.as_str().to_string());
                    }
                }
            }
            if any {
                per_norm.insert(norm_str(norm).to_string(), worst);
            }
        }
        ledger.insert(m.clone(), per_norm);
    }
    Ok(ledger)
}

/// One model's worst case in one norm, for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorstCase {
    /// Model.
    pub model: String,
    /// `linf` or `l2`.
    pub norm: String,
    /// Samples no attack broke.
    pub robust: usize,
    /// Samples evaluated.
    pub total: usize,
    /// Median smallest perturbation over the broken samples that were correct when clean.
    pub median_distance: Option<f64>,
    /// How many samples each attack gave the smallest perturbation for (`clean`: misclassified
    /// without attack).
    pub found_by: BTreeMap<String, usize>,
}

/// The per-(model, norm) summary of a ledger.
pub fn summary(ledger: &Ledger) -> Vec<WorstCase> {
    let mut out = Vec::new();
    for (model, per_norm) in ledger {
        for (norm, worst) in per_norm {
            let mut found_by = BTreeMap::new();
            let mut d: Vec<f64> = Vec::new();
            for w in worst {
                if let Some(a) = &w.attack {
                    *found_by.entry(a.clone()).or_insert(0) += 1;
                    if a != "clean" {
                        d.extend(w.distance);
                    }
                }
            }
            d.sort_by(f64::total_cmp);
            let median = match d.len() {
                0 => None,
                n if n % 2 == 1 => Some(d[n / 2]),
                n => Some((d[n / 2 - 1] + d[n / 2]) / 2.0),
            };
            out.push(WorstCase {
                model: model.clone(),
                norm: norm.clone(),
                robust: worst.iter().filter(|w| w.distance.is_none()).count(),
                total: worst.len(),
                median_distance: median,
                found_by,
            });
        }
    }
    out
}

/// One self-check of an evaluation, printed with pass/FAIL in every table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// What is checked.
    pub name: String,
    /// Whether it held.
    pub passed: bool,
    /// The numbers behind the verdict (and, when it failed, what that means).
    pub detail: String,
}

/// How many samples of `n` a check lets go before it fails: one, or 5% of them when that is
/// more (the checks compare attacks on the same samples, whose outcomes can differ by a
/// sample or two without meaning anything, most of all for randomised models).
pub fn allowance(n: usize) -> usize {
    (n / 20).max(1)
}

/// The extra attack runs of the sanity checks for one model and norm, on the first
/// `pgd.len()` samples of the subset (all under the verdict protocol and the clean row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtraRuns {
    /// The table's PGD row on those samples.
    pub pgd: Vec<bool>,
    /// PGD with twice the steps and twice the random starts.
    pub doubled: Vec<bool>,
    /// The epsilon of the large-budget run.
    pub large_epsilon: f64,
    /// PGD at `large_epsilon`.
    pub at_large: Vec<bool>,
}

/// `extra[model][norm]`.
pub type Extras = BTreeMap<String, BTreeMap<String, ExtraRuns>>;

/// Every check of a Tables 1-4 evaluation (Carlini et al. 2019, Section 5): the ALL rows equal
/// the ledger's; no attack row is above the clean row; gradient-free attacks are not stronger
/// than gradient-based ones; and, from `extra` where given, doubling PGD's steps and starts
/// changes little and PGD at a large epsilon leaves almost nothing.
pub fn checks(
    outcomes: &Outcomes,
    ledger: &Ledger,
    models: &[String],
    stochastic: &[String],
    extra: &Extras,
) -> Result<Vec<Check>> {
    let mut out = all_equals_ledger(outcomes, ledger, models)?;
    out.extend(not_above_clean(outcomes, models, stochastic)?);
    out.extend(gradient_free_not_stronger(outcomes, models)?);
    out.extend(doubling_and_large_epsilon(extra));
    out.extend(bound_not_undercut(ledger, stochastic));
    Ok(out)
}

/// No adversarial closer than its sample's certified L_2 radius (eq. (7)), for every model
/// whose ledger holds radii. Where one is, the attack's point was judged by the model itself
/// (its inference, the verdict protocol), so it is the bound that is wrong: the radius assumes
/// the global minima of exact inference (Appendix A.1), and inference that stops in a local
/// minimum overestimates the distances `d_k` to the other classes' manifolds; for a model
/// evaluated with variational inference (E-ABS) the radius of exact inference does not
/// describe the classifier attacked at all. The check says which applies.
pub fn bound_not_undercut(ledger: &Ledger, stochastic: &[String]) -> Vec<Check> {
    let mut out = Vec::new();
    for (model, per_norm) in ledger {
        let Some(worst) = per_norm.get("l2") else {
            continue;
        };
        if worst.iter().all(|w| w.bound.is_none()) {
            continue;
        }
        let mut below = Vec::new();
        let mut certified = 0;
        for w in worst {
            let Some(b) = w.bound else { continue };
            if b > 0.0 {
                certified += 1;
            }
            if let (Some(d), Some(a)) = (w.distance, &w.attack) {
                if a != "clean" && d < b * (1.0 - 1e-6) {
                    below.push(format!("sample {} {a} at {d:.3} < {b:.3}", w.sample));
                }
            }
        }
        let median = {
            let mut v: Vec<f64> = worst.iter().filter_map(|w| w.bound).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        let why = if stochastic.contains(model) {
            "this model is evaluated with variational inference, and the radius is exact \
             inference's (Appendix A.1), so it does not bound the classifier attacked"
        } else {
            "the adversarials were verified by the model's own inference, so the bound is wrong: \
             it assumes the global minima of exact inference, and inference stopped in local \
             minima overestimates the distances to the other classes' manifolds"
        };
        out.push(Check {
            name: format!("{model}: no L_2 adversarial closer than its certified radius (eq. 7)"),
            passed: below.is_empty(),
            detail: if below.is_empty() {
                format!(
                    "{certified} of {} samples certified, median radius {median:.3}; every \
                     adversarial found lies outside its sample's radius",
                    worst.len()
                )
            } else {
                format!(
                    "{} adversarials inside the radius ({}): {why}",
                    below.len(),
                    below.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
                )
            },
        });
    }
    out
}

/// Accuracy (percent) at each epsilon of `grid` from a model's ledger entries of one norm: a
/// sample counts as robust at `e` when no adversarial at distance `<= e` was found (an upper
/// bound on the true robust accuracy, valid up to the table's epsilon, where the attacks
/// stopped looking).
pub fn accuracy_curve(worst: &[Worst], grid: &[f64]) -> Vec<f64> {
    grid.iter()
        .map(|&e| {
            let robust = worst
                .iter()
                // Distances of float32 images may exceed the epsilon they were clipped to by a
                // rounding error: those count as within it.
                .filter(|w| w.distance.is_none_or(|d| d > e * (1.0 + 1e-5)))
                .count();
            100.0 * robust as f64 / worst.len().max(1) as f64
        })
        .collect()
}

/// The ledger's robust samples equal the row-wise ALL+ row where it exists (the ledger counts
/// every attack), else the ALL row.
pub fn all_equals_ledger(
    outcomes: &Outcomes,
    ledger: &Ledger,
    models: &[String],
) -> Result<Vec<Check>> {
    let mut out = Vec::new();
    for norm in [Norm::Linf, Norm::L2] {
        let (key, all) = match (
            outcomes.get(&RowKey::AllPlus(norm)),
            outcomes.get(&RowKey::All(norm)),
        ) {
            (Some(p), _) => (RowKey::AllPlus(norm), p),
            (None, Some(a)) => (RowKey::All(norm), a),
            (None, None) => continue,
        };
        let mut mismatches = Vec::new();
        for m in models {
            let from_ledger: Vec<bool> = ledger
                .get(m)
                .and_then(|p| p.get(norm_str(norm)))
                .with_context(|| format!("the ledger has no {} entries for {m}", norm_str(norm)))?
                .iter()
                .map(|w| w.distance.is_none())
                .collect();
            let rowwise = all
                .get(m)
                .with_context(|| format!("no {} outcomes for {m}", key.key()))?;
            let differ = from_ledger
                .iter()
                .zip(rowwise)
                .filter(|(a, b)| a != b)
                .count();
            if differ > 0 || from_ledger.len() != rowwise.len() {
                mismatches.push(format!("{m}: {differ} samples differ"));
            }
        }
        out.push(Check {
            name: format!(
                "{} {} from the per-sample ledger equals the row-wise one",
                if key.attack_str() == "all+" {
                    "ALL+"
                } else {
                    "ALL"
                },
                crate::suite::norm_title(norm)
            ),
            passed: mismatches.is_empty(),
            detail: if mismatches.is_empty() {
                format!("{} models agree sample for sample", models.len())
            } else {
                mismatches.join("; ")
            },
        });
    }
    Ok(out)
}

/// No attack row above the clean row. Rows built by [`crate::suite::and_clean`] hold it by
/// construction; the check guards everything else (a target of a user's own, a journal of an
/// older version).
pub fn not_above_clean(
    outcomes: &Outcomes,
    models: &[String],
    stochastic: &[String],
) -> Result<Vec<Check>> {
    let clean = outcomes
        .get(&RowKey::Clean)
        .context("no clean row in the outcomes")?;
    let mut out = Vec::new();
    for m in models {
        let count = |v: &Vec<bool>| v.iter().filter(|&&r| r).count();
        let clean_m = clean
            .get(m)
            .with_context(|| format!("no clean row for {m}"))?;
        let c = count(clean_m);
        let mut above = Vec::new();
        for (k, per) in outcomes
            .iter()
            .filter(|(k, _)| matches!(k, RowKey::Attack(_)))
        {
            let Some(v) = per.get(m) else { continue };
            let misjudged = v.iter().zip(clean_m).filter(|&(&r, &cl)| r && !cl).count();
            if misjudged > 0 {
                above.push(format!(
                    "{} counts {misjudged} samples robust that are misclassified when clean",
                    k.key()
                ));
            }
        }
        let randomised = stochastic.contains(m);
        out.push(Check {
            name: format!("{m}: no attack row above the clean row"),
            passed: above.is_empty(),
            detail: match (above.is_empty(), randomised) {
                (true, _) => format!(
                    "clean {c}; no attack row counts a sample robust that is misclassified when clean"
                ),
                (false, false) => format!(
                    "{}: the attack judged only the point it returned (Foolbox's semantics for \
                     fixed-epsilon attacks), not the clean image",
                    above.join(", ")
                ),
                (false, true) => format!(
                    "{}: the verdicts of this randomised model differ between draws, and the \
                     row was not judged by the clean row's verdict",
                    above.join(", ")
                ),
            },
        });
    }
    Ok(out)
}

/// Gradient-free attacks are not stronger than gradient-based ones (Carlini et al. 2019,
/// 5.9; Athalye et al. 2018): per model and norm, the samples a gradient-free attack of the
/// table broke (the additive noise) that no gradient-based attack broke, among those correct
/// when clean. More than [`allowance`] of them says the gradients the attacks follow are
/// masked or misleading.
pub fn gradient_free_not_stronger(outcomes: &Outcomes, models: &[String]) -> Result<Vec<Check>> {
    let mut out = Vec::new();
    let Some(clean) = outcomes.get(&RowKey::Clean) else {
        return Ok(out);
    };
    for norm in [Norm::Linf, Norm::L2] {
        let rows: Vec<(AttackRow, &BTreeMap<String, Vec<bool>>)> = outcomes
            .iter()
            .filter_map(|(k, v)| match k {
                RowKey::Attack(r) if r.norm == norm => Some((*r, v)),
                _ => None,
            })
            .collect();
        let (free, grad): (Vec<_>, Vec<_>) =
            rows.iter().partition(|(r, _)| !r.attack.gradient_based());
        if free.is_empty() || grad.is_empty() {
            continue;
        }
        let mut bad = Vec::new();
        let mut counts = Vec::new();
        for m in models {
            let Some(c) = clean.get(m) else { continue };
            let n = c.len();
            let only_free = (0..n)
                .filter(|&i| {
                    c[i] && free.iter().any(|(_, v)| v.get(m).is_some_and(|v| !v[i]))
                        && grad.iter().all(|(_, v)| v.get(m).is_none_or(|v| v[i]))
                })
                .count();
            counts.push(format!("{m} {only_free}"));
            if only_free > allowance(n) {
                bad.push(format!("{m}: {only_free} of {n}"));
            }
        }
        let names: Vec<&str> = free.iter().map(|(r, _)| r.attack.as_str()).collect();
        out.push(Check {
            name: format!(
                "{}: gradient-free attacks ({}) not stronger than the gradient-based ones",
                crate::suite::norm_title(norm),
                names.join(", ")
            ),
            passed: bad.is_empty(),
            detail: if bad.is_empty() {
                format!(
                    "samples broken only without gradients: {} (allowed: 5% or 1)",
                    counts.join(", ")
                )
            } else {
                format!(
                    "samples broken only without gradients: {}: the gradient-based attacks miss \
                     adversarials that random noise finds, the mark of masked gradients",
                    bad.join("; ")
                )
            },
        });
    }
    Ok(out)
}

/// From the extra runs: doubling PGD's steps and random starts breaks at most [`allowance`]
/// more samples than the table's PGD (else the table's budget is not converged), and PGD at a
/// large epsilon leaves at most [`allowance`] samples robust (else something stops the attack
/// rather than the model resisting it).
pub fn doubling_and_large_epsilon(extra: &Extras) -> Vec<Check> {
    let mut out = Vec::new();
    for norm in ["linf", "l2"] {
        let title = crate::suite::norm_title(parse_norm_str(norm));
        let runs: Vec<(&String, &ExtraRuns)> = extra
            .iter()
            .filter_map(|(m, per)| per.get(norm).map(|r| (m, r)))
            .collect();
        if runs.is_empty() {
            continue;
        }
        let count = |v: &[bool]| v.iter().filter(|&&r| r).count();
        let mut bad = Vec::new();
        let mut details = Vec::new();
        for (m, r) in &runs {
            let (base, doubled) = (count(&r.pgd), count(&r.doubled));
            details.push(format!("{m} {base} -> {doubled}"));
            if base > doubled + allowance(r.pgd.len()) {
                bad.push(format!("{m} {base} -> {doubled} of {}", r.pgd.len()));
            }
        }
        out.push(Check {
            name: format!("{title}: doubling PGD's steps and random starts changes little"),
            passed: bad.is_empty(),
            detail: if bad.is_empty() {
                format!(
                    "robust on the first {} samples, table budget -> doubled: {} (allowed drop: 5% or 1)",
                    runs[0].1.pgd.len(),
                    details.join(", ")
                )
            } else {
                format!(
                    "robust, table budget -> doubled: {}: the table's PGD has not converged; its \
                     rows overstate robustness",
                    bad.join("; ")
                )
            },
        });
        let mut bad = Vec::new();
        let mut details = Vec::new();
        for (m, r) in &runs {
            let left = count(&r.at_large);
            details.push(format!("{m} {left}"));
            if left > allowance(r.at_large.len()) {
                bad.push(format!("{m} {left} of {}", r.at_large.len()));
            }
        }
        let eps = runs[0].1.large_epsilon;
        out.push(Check {
            name: format!("{title}: accuracy reaches ~0 at a large epsilon ({eps})"),
            passed: bad.is_empty(),
            detail: if bad.is_empty() {
                format!(
                    "robust under PGD at eps = {eps}: {} (allowed: 5% or 1)",
                    details.join(", ")
                )
            } else {
                format!(
                    "still robust under PGD at eps = {eps}: {}: an unbounded attack should break \
                     everything; gradient masking or a too-small budget stops it",
                    bad.join("; ")
                )
            },
        });
    }
    out
}

fn parse_norm_str(norm: &str) -> Norm {
    if norm == "linf" {
        Norm::Linf
    } else {
        Norm::L2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::add_all_row;
    use crate::suite::AttackKind;

    fn write(root: &Path, model: &str, row: &str, robust: &[bool], dist: &[f64]) -> Result<()> {
        let dir = root.join(model);
        std::fs::create_dir_all(&dir)?;
        let mut j = Journal::<SampleRecord>::open(&dir.join(format!("{row}.jsonl")))?;
        let recs: Vec<SampleRecord> = robust
            .iter()
            .zip(dist)
            .enumerate()
            .map(|(i, (&r, &d))| SampleRecord {
                sample: i,
                test_index: 10 + i,
                label: 0,
                robust: vec![r],
                distance: vec![d],
            })
            .collect();
        j.append(&recs)
    }

    #[test]
    fn ledger_keeps_the_smallest_perturbation_and_its_all_row_is_the_rowwise_one() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        // Sample 0 misclassified clean; 1 broken by both L_inf attacks (DeepFool closer);
        // 2 broken by PGD only; 3 robust.
        write(root, "M", "clean", &[false, true, true, true], &[0.0; 4])?;
        write(
            root,
            "M",
            "linf-pgd",
            &[false, false, false, true],
            &[0.0, 0.1, 0.08, 0.1],
        )?;
        write(
            root,
            "M",
            "linf-deepfool",
            &[false, false, true, true],
            &[0.0, 0.05, 0.2, 0.3],
        )?;
        let rows = [
            AttackRow::new(Norm::Linf, AttackKind::Pgd),
            AttackRow::new(Norm::Linf, AttackKind::DeepFool),
        ];
        let models = vec!["M".to_string()];
        let ledger = from_journals(root, &models, &rows)?;
        let w = &ledger["M"]["linf"];
        assert_eq!(w[0].attack.as_deref(), Some("clean"));
        assert_eq!(
            (w[1].distance, w[1].attack.as_deref()),
            (Some(0.05), Some("deepfool"))
        );
        assert_eq!(
            (w[2].distance, w[2].attack.as_deref()),
            (Some(0.08), Some("pgd"))
        );
        assert_eq!(w[3].distance, None);
        let s = summary(&ledger);
        assert_eq!((s[0].robust, s[0].total), (1, 4));
        assert_eq!(s[0].median_distance, Some((0.05 + 0.08) / 2.0));

        let mut outcomes = Outcomes::new();
        let put = |o: &mut Outcomes, k: RowKey, v: Vec<bool>| {
            o.entry(k).or_default().insert("M".to_string(), v);
        };
        put(&mut outcomes, RowKey::Clean, vec![false, true, true, true]);
        put(
            &mut outcomes,
            RowKey::Attack(rows[0]),
            vec![false, false, false, true],
        );
        put(
            &mut outcomes,
            RowKey::Attack(rows[1]),
            vec![false, false, true, true],
        );
        add_all_row(&mut outcomes, Norm::Linf, &models)?;
        let c = checks(&outcomes, &ledger, &models, &[], &Extras::new())?;
        assert!(c.iter().all(|c| c.passed), "{c:?}");
        // A row above clean, and an ALL row that disagrees with the ledger, both fail.
        put(
            &mut outcomes,
            RowKey::Attack(rows[1]),
            vec![true, true, true, true],
        );
        let c = checks(&outcomes, &ledger, &models, &[], &Extras::new())?;
        let failed: Vec<&str> = c
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(failed, ["M: no attack row above the clean row"]);
        put(
            &mut outcomes,
            RowKey::All(Norm::Linf),
            vec![false, true, false, true],
        );
        let c = checks(
            &outcomes,
            &ledger,
            &models,
            &["M".to_string()],
            &Extras::new(),
        )?;
        assert!(
            !c[0].passed && c[0].detail.contains("1 samples differ"),
            "{c:?}"
        );
        assert!(
            c[1].detail.contains("randomised") || c[1].detail.contains("EOT"),
            "{c:?}"
        );
        Ok(())
    }

    fn worst(sample: usize, distance: Option<f64>, attack: &str, bound: Option<f64>) -> Worst {
        Worst {
            sample,
            distance,
            attack: distance.map(|_| attack.to_string()),
            bound,
        }
    }

    #[test]
    fn curve_counts_samples_not_broken_within_each_epsilon() {
        let w = vec![
            worst(0, Some(0.0), "clean", None),
            worst(1, Some(0.5), "pgd", None),
            worst(2, Some(1.5000001), "cw", None),
            worst(3, None, "", None),
        ];
        let acc = accuracy_curve(&w, &[0.0, 0.4, 1.0, 1.5]);
        assert_eq!(acc, vec![75.0, 75.0, 50.0, 25.0]);
    }

    #[test]
    fn an_adversarial_inside_the_certified_radius_fails_and_says_why() {
        let mut ledger = Ledger::new();
        let ok = vec![
            worst(0, Some(0.0), "clean", Some(0.0)),
            worst(1, Some(0.9), "ddn", Some(0.3)),
            worst(2, None, "", Some(0.4)),
        ];
        ledger.insert("ABS".into(), [("l2".to_string(), ok)].into_iter().collect());
        let c = bound_not_undercut(&ledger, &[]);
        assert!(c.len() == 1 && c[0].passed, "{c:?}");
        let bad = vec![worst(0, Some(0.2), "cw", Some(0.3))];
        ledger.insert(
            "E-ABS".into(),
            [("l2".to_string(), bad.clone())].into_iter().collect(),
        );
        ledger.insert(
            "ABS".into(),
            [("l2".to_string(), bad)].into_iter().collect(),
        );
        let c = bound_not_undercut(&ledger, &["E-ABS".to_string()]);
        assert!(c.iter().all(|c| !c.passed), "{c:?}");
        assert!(c[0].detail.contains("the bound is wrong"), "{c:?}");
        assert!(c[1].detail.contains("variational"), "{c:?}");
        // Models without radii (the CNNs) get no check.
        let mut cnn = Ledger::new();
        cnn.insert(
            "CNN".into(),
            [("l2".to_string(), vec![worst(0, Some(0.1), "pgd", None)])]
                .into_iter()
                .collect(),
        );
        assert!(bound_not_undercut(&cnn, &[]).is_empty());
    }
}
