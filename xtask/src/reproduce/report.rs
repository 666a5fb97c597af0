//! Turns per-sample outcomes into the paper's table: accuracies with Clopper-Pearson intervals,
//! the "ALL" rows, McNemar's test between every pair of models per attack type, and the Markdown
//! and JSON renderings written to `results/`.

use anyhow::{Context, Result};
use eabs_stats::{accuracy, robust_to_all, ComparisonConfig, PairwiseComparison};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::provenance::Provenance;

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
}

/// Per-sample outcomes: `outcomes[(norm, attack)][model]` = robust flags over the samples.
pub type Outcomes = BTreeMap<(String, String), BTreeMap<String, Vec<bool>>>;

/// Adds the "ALL" row of `norm` to `outcomes`: per sample and model, robust only if every
/// attack of that norm failed (clean misclassifications count as failures of every attack).
pub fn add_all_row(outcomes: &mut Outcomes, norm: &str, models: &[String]) -> Result<()> {
    let mut all = BTreeMap::new();
    for m in models {
        let per_attack: Vec<&[bool]> = outcomes
            .iter()
            .filter(|((n, a), _)| n == norm && a != "all")
            .filter_map(|(_, per_model)| per_model.get(m).map(|v| v.as_slice()))
            .collect();
        if per_attack.is_empty() {
            continue;
        }
        all.insert(m.clone(), robust_to_all(&per_attack)?);
    }
    if !all.is_empty() {
        outcomes.insert((norm.to_string(), "all".to_string()), all);
    }
    Ok(())
}

/// Builds the report's rows and comparisons from per-sample outcomes, in `row_order`.
#[allow(clippy::too_many_arguments)]
pub fn build(
    table: &str,
    dataset: &str,
    models: &[String],
    samples: Vec<usize>,
    row_order: &[(String, String, f64)],
    outcomes: &Outcomes,
    paper: &dyn Fn(&str, &str, &str) -> Option<f64>,
    config: serde_json::Value,
    provenance: Provenance,
) -> Result<TableReport> {
    let mut rows = Vec::new();
    let mut comparisons = Vec::new();
    for (norm, attack, epsilon) in row_order {
        let Some(per_model) = outcomes.get(&(norm.clone(), attack.clone())) else {
            continue;
        };
        let mut cells = Vec::new();
        let mut names = Vec::new();
        let mut vecs = Vec::new();
        for m in models {
            let v = per_model
                .get(m)
                .with_context(|| format!("no outcomes for {m} on {norm} {attack}"))?;
            let acc = accuracy(v, 0.95)?;
            cells.push(Cell {
                correct: acc.correct,
                total: acc.total,
                percent: acc.percent(),
                interval: (acc.lower * 100.0, acc.upper * 100.0),
                paper: paper(m, norm, attack),
            });
            names.push(m.clone());
            vecs.push(v.clone());
        }
        if names.len() >= 2 {
            let mcnemar =
                PairwiseComparison::with_config(&names, &vecs, ComparisonConfig::paper())?;
            comparisons.push(Comparison {
                norm: norm.clone(),
                attack: attack.clone(),
                mcnemar,
            });
        }
        rows.push(Row {
            norm: norm.clone(),
            attack: attack.clone(),
            epsilon: *epsilon,
            cells,
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
    })
}

fn norm_title(norm: &str) -> &str {
    match norm {
        "linf" => "L_inf",
        "l2" => "L_2",
        _ => "",
    }
}

fn attack_title(attack: &str) -> String {
    match attack {
        "clean" => "Clean".into(),
        "pgd" => "PGD".into(),
        "deepfool" => "DeepFool".into(),
        "noise" => "Noise".into(),
        "ddn" => "DDN".into(),
        "cw" => "CW".into(),
        "all" => "ALL".into(),
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
    s.push_str("\n## Provenance\n\n");
    s.push_str(&format!(
        "- command: `{}`\n- commit: `{}`\n- hardware: {} ({} cores, {} GiB), {}\n- wall time per stage:\n",
        p.command, p.commit, p.hardware.cpu, p.hardware.cores, p.hardware.memory_gib, p.hardware.os
    ));
    for st in &p.stages {
        let commit = match &st.commit {
            Some(c) if c != &p.commit => format!(" (commit `{c}`)"),
            _ => String::new(),
        };
        s.push_str(&format!("  - {}: {:.1} s{commit}\n", st.name, st.seconds));
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
    super::write_text(&dir.join("table.md"), &to_markdown(report, title))?;
    super::write_json(&dir.join("results.json"), report)?;
    super::write_json(&dir.join("config.json"), &report.config)?;
    let per_sample: BTreeMap<String, BTreeMap<String, &Vec<bool>>> = outcomes
        .iter()
        .map(|((n, a), per_model)| {
            (
                format!("{n}-{a}"),
                per_model.iter().map(|(m, v)| (m.clone(), v)).collect(),
            )
        })
        .collect();
    super::write_json(
        &dir.join("outcomes.json"),
        &serde_json::json!({ "samples": report.samples, "outcomes": per_sample }),
    )
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
    use crate::reproduce::provenance::Hardware;

    /// A two-model, four-sample report with its outcomes (for the tests here and in `verify`).
    pub(crate) fn small_report() -> Result<(TableReport, Outcomes)> {
        let models = vec!["CNN".to_string(), "E-ABS".to_string()];
        let mut o: Outcomes = BTreeMap::new();
        let put = |o: &mut Outcomes, n: &str, a: &str, cnn: Vec<bool>, eabs: Vec<bool>| {
            let mut m = BTreeMap::new();
            m.insert("CNN".to_string(), cnn);
            m.insert("E-ABS".to_string(), eabs);
            o.insert((n.into(), a.into()), m);
        };
        put(
            &mut o,
            "none",
            "clean",
            vec![true, true, true, false],
            vec![true, true, true, true],
        );
        put(
            &mut o,
            "linf",
            "pgd",
            vec![false, true, true, false],
            vec![true, true, false, true],
        );
        put(
            &mut o,
            "linf",
            "deepfool",
            vec![true, false, true, false],
            vec![true, true, true, true],
        );
        add_all_row(&mut o, "linf", &models)?;
        let order = vec![
            ("none".to_string(), "clean".to_string(), 0.0),
            ("linf".to_string(), "pgd".to_string(), 0.1),
            ("linf".to_string(), "deepfool".to_string(), 0.1),
            ("linf".to_string(), "all".to_string(), 0.1),
        ];
        let prov = Provenance {
            commit: "abc".into(),
            preset: "smoke".into(),
            seed: 0,
            device: "cpu".into(),
            hardware: Hardware::detect(),
            started_unix: 0,
            finished_unix: 1,
            stages: vec![super::super::provenance::Stage {
                name: "train CNN".into(),
                seconds: 1.0,
                commit: Some("abc".into()),
                finished_unix: Some(1),
            }],
            command: "cargo xtask reproduce table2".into(),
        };
        let paper = |m: &str, n: &str, a: &str| crate::paper::paper_accuracy("table2", m, n, a);
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
            o[&("linf".into(), "all".into())]["CNN"],
            vec![false, false, true, false]
        );
        assert_eq!(
            o[&("linf".into(), "all".into())]["E-ABS"],
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
