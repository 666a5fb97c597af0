//! Turns per-sample outcomes into the paper's table: accuracies with Clopper-Pearson intervals,
//! the "ALL" rows, McNemar's test between every pair of models per attack type, and the Markdown
//! and JSON renderings written to `results/`.

use anyhow::{bail, Context, Result};
use eabs_attacks::Norm;
use eabs_stats::{
    accuracy, robust_to_all, Accuracy, AttackTypeReport, ComparisonConfig, PairwiseComparison,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::ledger::{Check, WorstCase};
use crate::provenance::Provenance;
use crate::suite::RowKey;

/// One cell: a model's accuracy on one row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cell {
    /// Samples still classified correctly.
    pub correct: u64,
    /// Samples evaluated.
    pub total: u64,
    /// Accuracy in percent.
    pub percent: f64,
    /// Clopper-Pearson 95% interval, in percent.
    pub interval: (f64, f64),
    /// The paper's number for this cell, in percent, if it reports one.
    pub paper: Option<f64>,
}

/// One row of the table (clean, or one attack at one epsilon, or an "ALL" combination).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// "none", "linf" or "l2".
    pub norm: String,
    /// "clean", "pgd", "deepfool", "noise", "ddn", "cw", "all", ...
    pub attack: String,
    /// Epsilon of the row (0 for clean).
    pub epsilon: f64,
    /// One cell per model, in the table's model order.
    pub cells: Vec<Cell>,
}

/// McNemar's test among all models on one row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    /// Row norm.
    pub norm: String,
    /// Row attack.
    pub attack: String,
    /// The full pairwise comparison (p-values, significance, contingencies).
    pub mcnemar: PairwiseComparison,
}

/// Everything a table run produced, as written to `results/<table>/<preset>/results.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableReport {
    /// "table1" ... "table5".
    pub table: String,
    /// Dataset name.
    pub dataset: String,
    /// Column names.
    pub models: Vec<String>,
    /// Test-split indices of the evaluated samples (the same for every model).
    pub samples: Vec<usize>,
    /// The rows, in the paper's order.
    pub rows: Vec<Row>,
    /// McNemar's test per attack type (the paper's "ALL" rows) and per row.
    pub comparisons: Vec<Comparison>,
    /// The exact configuration of the run.
    pub config: serde_json::Value,
    /// Where the numbers came from.
    pub provenance: Provenance,
    /// Per model and norm, the per-sample worst case over every attack ([`crate::ledger`];
    /// absent from results of before 2026-12-02).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub worst_case: Vec<WorstCase>,
    /// The evaluation's checks of itself, with their verdicts ([`crate::ledger::checks`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
}

/// Per-sample outcomes: `outcomes[row][model]` = robust flags over the samples.
pub type Outcomes = BTreeMap<RowKey, BTreeMap<String, Vec<bool>>>;

/// The attack rows of `norm` in `outcomes` (not its ALL rows), in key order: the paper's
/// attacks, and with `beyond` ours beyond the paper too.
fn attacks_of(outcomes: &Outcomes, norm: Norm, beyond: bool) -> Vec<RowKey> {
    outcomes
        .keys()
        .copied()
        .filter(|k| {
            matches!(k, RowKey::Attack(r) if r.norm == norm && (beyond || !r.attack.beyond_paper()))
        })
        .collect()
}

/// Adds the "ALL" row of `norm` to `outcomes`: per sample and model, robust only if every
/// attack of the paper's suite in that norm failed (clean misclassifications count as failures
/// of every attack); where rows beyond the paper exist (Auto-PGD), also the "ALL+" row over
/// every attack of the norm.
pub fn add_all_row(outcomes: &mut Outcomes, norm: Norm, models: &[String]) -> Result<()> {
    add_combined(outcomes, norm, models, false)?;
    let paper_rows = attacks_of(outcomes, norm, false).len();
    if attacks_of(outcomes, norm, true).len() > paper_rows {
        add_combined(outcomes, norm, models, true)?;
    }
    Ok(())
}

fn add_combined(outcomes: &mut Outcomes, norm: Norm, models: &[String], plus: bool) -> Result<()> {
    let rows = attacks_of(outcomes, norm, plus);
    let mut all = BTreeMap::new();
    for m in models {
        let per_attack: Vec<&[bool]> = rows
            .iter()
            .filter_map(|r| outcomes[r].get(m).map(|v| v.as_slice()))
            .collect();
        if per_attack.is_empty() {
            continue;
        }
        all.insert(m.clone(), robust_to_all(&per_attack)?);
    }
    if !all.is_empty() {
        let key = if plus {
            RowKey::AllPlus(norm)
        } else {
            RowKey::All(norm)
        };
        outcomes.insert(key, all);
    }
    Ok(())
}

fn cell(acc: &Accuracy, paper: Option<f64>) -> Cell {
    Cell {
        correct: acc.correct,
        total: acc.total,
        percent: acc.percent(),
        interval: (acc.lower * 100.0, acc.upper * 100.0),
        paper,
    }
}

/// Builds the report's rows and comparisons from per-sample outcomes, in `row_order` (rows
/// with their epsilons; rows without outcomes are left out). Each "ALL" row, with its McNemar
/// test, is [`AttackTypeReport`]'s over the attacks of its norm; every other row gets its own
/// pairwise McNemar test (rendered for Table 5 and the gradient-free check).
#[allow(clippy::too_many_arguments)]
pub fn build(
    table: &str,
    dataset: &str,
    models: &[String],
    samples: Vec<usize>,
    row_order: &[(RowKey, f64)],
    outcomes: &Outcomes,
    paper: &dyn Fn(&str, RowKey) -> Option<f64>,
    config: serde_json::Value,
    provenance: Provenance,
) -> Result<TableReport> {
    let mut rows = Vec::new();
    let mut comparisons = Vec::new();
    for &(key, epsilon) in row_order {
        let Some(per_model) = outcomes.get(&key) else {
            continue;
        };
        let vecs: Vec<&Vec<bool>> = models
            .iter()
            .map(|m| {
                per_model
                    .get(m)
                    .with_context(|| format!("no outcomes for {m} on {}", key.key()))
            })
            .collect::<Result<_>>()?;
        let (accuracies, mcnemar) = match key {
            RowKey::All(norm) | RowKey::AllPlus(norm) => {
                let attacks = attacks_of(outcomes, norm, matches!(key, RowKey::AllPlus(_)));
                let names: Vec<String> = attacks.iter().map(|r| r.key()).collect();
                let per_model: Vec<Vec<&[bool]>> = models
                    .iter()
                    .map(|m| {
                        attacks
                            .iter()
                            .map(|r| {
                                outcomes[r]
                                    .get(m)
                                    .map(|v| v.as_slice())
                                    .with_context(|| format!("no outcomes for {m} on {}", r.key()))
                            })
                            .collect::<Result<Vec<_>>>()
                    })
                    .collect::<Result<_>>()?;
                let report = AttackTypeReport::new(
                    norm_title(key.norm_str()),
                    models,
                    &names,
                    &per_model,
                    ComparisonConfig::paper(),
                )?;
                // The journaled ALL outcomes and the report's must agree sample for sample.
                for (m, (acc, v)) in models.iter().zip(report.all().iter().zip(&vecs)) {
                    let journaled = v.iter().filter(|&&r| r).count() as u64;
                    if acc.correct != journaled || acc.total != v.len() as u64 {
                        bail!(
                            "{m} on {}: the ALL outcomes count {journaled}/{} robust, the \
                             attacks' combination {}/{}",
                            key.key(),
                            v.len(),
                            acc.correct,
                            acc.total
                        );
                    }
                }
                (report.all().to_vec(), Some(report.comparison().clone()))
            }
            _ => {
                let accs = vecs
                    .iter()
                    .map(|v| accuracy(v, ComparisonConfig::paper().confidence))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                let mcnemar = (models.len() >= 2)
                    .then(|| {
                        PairwiseComparison::with_config(models, &vecs, ComparisonConfig::paper())
                    })
                    .transpose()?;
                (accs, mcnemar)
            }
        };
        if let Some(mcnemar) = mcnemar.filter(|_| models.len() >= 2) {
            comparisons.push(Comparison {
                norm: key.norm_str().into(),
                attack: key.attack_str().into(),
                mcnemar,
            });
        }
        rows.push(Row {
            norm: key.norm_str().into(),
            attack: key.attack_str().into(),
            epsilon,
            cells: models
                .iter()
                .zip(&accuracies)
                .map(|(m, acc)| cell(acc, paper(m, key)))
                .collect(),
        });
    }
    Ok(TableReport {
        table: table.into(),
        dataset: dataset.into(),
        models: models.to_vec(),
        samples,
        rows,
        comparisons,
        config,
        provenance,
        worst_case: Vec::new(),
        checks: Vec::new(),
    })
}

pub(crate) fn norm_title(norm: &str) -> &str {
    match norm {
        "linf" => "L_inf",
        "l2" => "L_2",
        _ => "",
    }
}

pub(crate) fn attack_title(attack: &str) -> String {
    match attack {
        "clean" => "Clean".into(),
        "pgd" => "PGD".into(),
        "deepfool" => "DeepFool".into(),
        "noise" => "Noise".into(),
        "ddn" => "DDN".into(),
        "cw" => "CW".into(),
        "all" => "ALL".into(),
        "all+" => "ALL+".into(),
        "apgd-ce" => "APGD-CE (beyond the paper)".into(),
        "apgd-dlr" => "APGD-DLR (beyond the paper)".into(),
        other => other.to_uppercase(),
    }
}

/// Renders the report as Markdown: our accuracy with the paper's in parentheses, the McNemar
/// matrices of the "ALL" rows (the paper's two p-value tables), and the provenance.
pub fn to_markdown(r: &TableReport, title: &str) -> String {
    let mut s = format!("# {title}\n\n");
    let p = &r.provenance;
    s.push_str(&format!(
        "Preset `{}`, seed {}, {} test samples, device {}, commit `{}`.\n\
         Each cell: our accuracy (the paper's). Brackets under the table give 95% Clopper-Pearson intervals.\n\n",
        p.preset,
        p.seed,
        r.samples.len(),
        p.device,
        p.commit
    ));
    s.push_str("| |");
    for m in &r.models {
        s.push_str(&format!(" {m} |"));
    }
    s.push_str("\n|---|");
    for _ in &r.models {
        s.push_str("---|");
    }
    s.push('\n');
    let mut last_norm = String::new();
    for row in &r.rows {
        if row.norm != last_norm && row.norm != "none" {
            s.push_str(&format!(
                "| **{} attacks (eps = {})** |",
                norm_title(&row.norm),
                fmt_eps(row.epsilon)
            ));
            for _ in &r.models {
                s.push_str(" |");
            }
            s.push('\n');
        }
        last_norm = row.norm.clone();
        let name = if row.attack == "all" {
            format!("ALL {}", norm_title(&row.norm))
        } else if row.attack == "all+" {
            format!(
                "ALL+ {} (with ours beyond the paper)",
                norm_title(&row.norm)
            )
        } else {
            attack_title(&row.attack)
        };
        s.push_str(&format!("| {name} |"));
        for c in &row.cells {
            match c.paper {
                Some(pp) => s.push_str(&format!(" {:.1}% ({pp:.1}%) |", c.percent)),
                None => s.push_str(&format!(" {:.1}% |", c.percent)),
            }
        }
        s.push('\n');
    }
    s.push_str("\n95% intervals:\n\n");
    for row in &r.rows {
        let cells: Vec<String> = r
            .models
            .iter()
            .zip(&row.cells)
            .map(|(m, c)| format!("{m} [{:.1}, {:.1}]", c.interval.0, c.interval.1))
            .collect();
        let name = format!("{} {}", norm_title(&row.norm), attack_title(&row.attack));
        s.push_str(&format!("- {}: {}\n", name.trim(), cells.join(", ")));
    }
    for c in r.comparisons.iter().filter(|c| c.attack == "all") {
        s.push_str(&format!(
            "\n## McNemar's test p-values, {} attacks (ALL row, alpha = {})\n\n{}\n{}\n",
            norm_title(&c.norm),
            c.mcnemar.alpha(),
            c.mcnemar.to_markdown(),
            c.mcnemar.summary()
        ));
    }
    if !r.worst_case.is_empty() {
        s.push_str(
            "\n## Per-sample worst case (`ledger.json`)\n\nPer model and norm: samples no attack \
             broke, the median smallest successful perturbation over the broken samples that \
             were correct when clean, and which attack found the smallest one how often.\n\n\
             | model | norm | robust | median smallest perturbation | smallest found by |\n\
             |---|---|---|---|---|\n",
        );
        for w in &r.worst_case {
            let by: Vec<String> = w.found_by.iter().map(|(a, n)| format!("{a} {n}")).collect();
            s.push_str(&format!(
                "| {} | {} | {}/{} | {} | {} |\n",
                w.model,
                norm_title(&w.norm),
                w.robust,
                w.total,
                w.median_distance
                    .map_or("-".to_string(), |d| format!("{d:.4}")),
                if by.is_empty() {
                    "-".to_string()
                } else {
                    by.join(", ")
                }
            ));
        }
    }
    if !r.checks.is_empty() {
        let failed = r.checks.iter().filter(|c| !c.passed).count();
        s.push_str(&format!(
            "\n## Sanity checks: {}\n\n",
            if failed == 0 {
                "all passed".to_string()
            } else {
                format!("**{failed} FAILED**")
            }
        ));
        for c in &r.checks {
            s.push_str(&format!(
                "- {} {}: {}\n",
                if c.passed { "pass" } else { "**FAIL**" },
                c.name,
                c.detail
            ));
        }
    }
    s.push_str("\n## Provenance\n\n");
    s.push_str(&format!(
        "- command: `{}`\n- commit: `{}`\n- hardware: {} ({} cores, {} GiB), {}\n- wall time per stage:\n",
        p.command, p.commit, p.hardware.cpu, p.hardware.cores, p.hardware.memory_gib, p.hardware.os
    ));
    // One line per stage, in the order stages first ran: a resumed run logs every stage again
    // (in well under a second, from its journal), so the line sums the invocations and names
    // the commits of those that did work (more than 0.05 s).
    let mut order: Vec<&str> = Vec::new();
    let mut by_name: std::collections::HashMap<&str, (f64, Vec<&str>, usize)> =
        std::collections::HashMap::new();
    for st in &p.stages {
        let e = by_name.entry(st.name.as_str()).or_insert_with(|| {
            order.push(st.name.as_str());
            (0.0, Vec::new(), 0)
        });
        e.0 += st.seconds;
        if st.seconds > 0.05 {
            e.2 += 1;
            if let Some(c) = st.commit.as_deref() {
                if c != p.commit && !e.1.contains(&c) {
                    e.1.push(c);
                }
            }
        }
    }
    for name in order {
        let (seconds, commits, worked) = &by_name[name];
        let mut notes = Vec::new();
        if *worked > 1 {
            notes.push(format!("{worked} invocations"));
        }
        if !commits.is_empty() {
            let c: Vec<String> = commits.iter().map(|c| format!("`{c}`")).collect();
            notes.push(format!("commit {}", c.join(", ")));
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join("; "))
        };
        s.push_str(&format!("  - {name}: {seconds:.1} s{notes}\n"));
    }
    s.push_str(&format!(
        "- total: {:.1} s ({:.2} h)\n",
        p.total_seconds(),
        p.total_seconds() / 3600.0
    ));
    let commits = p.stage_commits();
    if commits.len() > 1 {
        s.push_str(&format!(
            "- this run was interrupted and resumed; its stages ran on commits {}\n",
            commits
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    s
}

/// Writes `table.md`, `results.json`, `config.json` and `outcomes.json` (per-sample outcomes,
/// keyed `"<norm>-<attack>"` then by model) into `dir`, each atomically.
pub fn write_outputs(
    dir: &std::path::Path,
    report: &TableReport,
    outcomes: &Outcomes,
    title: &str,
) -> Result<()> {
    crate::write_text(&dir.join("table.md"), &to_markdown(report, title))?;
    crate::write_json(&dir.join("results.json"), report)?;
    crate::write_json(&dir.join("config.json"), &report.config)?;
    let per_sample: BTreeMap<String, BTreeMap<String, &Vec<bool>>> = outcomes
        .iter()
        .map(|(key, per_model)| {
            (
                key.key(),
                per_model.iter().map(|(m, v)| (m.clone(), v)).collect(),
            )
        })
        .collect();
    crate::write_json(
        &dir.join("outcomes.json"),
        &serde_json::json!({ "samples": report.samples, "outcomes": per_sample }),
    )
}

/// A number as tables and axes print it: at most three decimals, trailing zeros dropped (`0.25`,
/// `8`).
pub fn trim_number(x: f64) -> String {
    let s = format!("{x:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

fn fmt_eps(e: f64) -> String {
    if (e * 255.0 - (e * 255.0).round()).abs() < 1e-9 && e < 0.1 && e > 0.0 {
        format!("{}/255", (e * 255.0).round())
    } else {
        format!("{e}")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::provenance::Hardware;
    use crate::suite::{AttackKind, AttackRow};

    /// A two-model, four-sample report with its outcomes (for the tests here and in `verify`).
    pub(crate) fn small_report() -> Result<(TableReport, Outcomes)> {
        let models = vec!["CNN".to_string(), "E-ABS".to_string()];
        let mut o: Outcomes = BTreeMap::new();
        let put = |o: &mut Outcomes, key: RowKey, cnn: Vec<bool>, eabs: Vec<bool>| {
            let mut m = BTreeMap::new();
            m.insert("CNN".to_string(), cnn);
            m.insert("E-ABS".to_string(), eabs);
            o.insert(key, m);
        };
        let linf = |a| RowKey::Attack(AttackRow::new(Norm::Linf, a));
        put(
            &mut o,
            RowKey::Clean,
            vec![true, true, true, false],
            vec![true, true, true, true],
        );
        put(
            &mut o,
            linf(AttackKind::Pgd),
            vec![false, true, true, false],
            vec![true, true, false, true],
        );
        put(
            &mut o,
            linf(AttackKind::DeepFool),
            vec![true, false, true, false],
            vec![true, true, true, true],
        );
        add_all_row(&mut o, Norm::Linf, &models)?;
        let order = vec![
            (RowKey::Clean, 0.0),
            (linf(AttackKind::Pgd), 0.1),
            (linf(AttackKind::DeepFool), 0.1),
            (RowKey::All(Norm::Linf), 0.1),
        ];
        let prov = Provenance {
            commit: "abc".into(),
            preset: "smoke".into(),
            seed: 0,
            device: "cpu".into(),
            hardware: Hardware::detect(),
            started_unix: 0,
            finished_unix: 1,
            stages: vec![crate::provenance::Stage {
                name: "train CNN".into(),
                seconds: 1.0,
                commit: Some("abc".into()),
                finished_unix: Some(1),
                started_over: false,
            }],
            command: "cargo xtask reproduce table2".into(),
        };
        let paper = crate::paper::cells("table2", true);
        let r = build(
            "table2",
            "fashion-mnist",
            &models,
            vec![0, 1, 2, 3],
            &order,
            &o,
            &paper,
            serde_json::json!({}),
            prov,
        )?;
        Ok((r, o))
    }

    #[test]
    fn all_rows_and_markdown() -> Result<()> {
        let (r, o) = small_report()?;
        assert_eq!(
            o[&RowKey::All(Norm::Linf)]["CNN"],
            vec![false, false, true, false]
        );
        assert_eq!(
            o[&RowKey::All(Norm::Linf)]["E-ABS"],
            vec![true, true, false, true]
        );
        assert_eq!(r.rows.len(), 4);
        assert_eq!(r.rows[3].cells[0].correct, 1);
        assert_eq!(r.rows[3].cells[1].paper, Some(43.5));
        let md = to_markdown(&r, "Table 2");
        assert!(
            md.contains("| ALL L_inf | 25.0% (9.4%) | 75.0% (43.5%) |"),
            "{md}"
        );
        assert!(md.contains("McNemar"));
        let json = serde_json::to_string(&r)?;
        let back: TableReport = serde_json::from_str(&json)?;
        assert_eq!(back.rows.len(), 4);
        Ok(())
    }
}
