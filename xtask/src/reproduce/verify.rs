//! `cargo xtask verify-results DIR`: checks that a reproduce run's files are complete and
//! consistent, by recomputing every accuracy and the "ALL" rows from the per-sample outcomes.
//! CI runs it after the smoke pipeline; users can run it on results they receive.

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

use super::report::TableReport;

#[derive(Deserialize)]
struct OutcomesFile {
    samples: Vec<usize>,
    outcomes: BTreeMap<String, BTreeMap<String, Vec<bool>>>,
}

fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not well-formed", path.display()))
}

/// Verifies the results directory `dir` (e.g. `results/table2/smoke`).
pub fn run(dir: &Path) -> Result<()> {
    if dir.join("figure.md").is_file() {
        return super::plot::verify(dir);
    }
    for f in ["table.md", "results.json", "outcomes.json", "config.json"] {
        ensure!(dir.join(f).is_file(), "{} is missing {f}", dir.display());
    }
    let report: TableReport = read(&dir.join("results.json"))?;
    let outcomes: OutcomesFile = read(&dir.join("outcomes.json"))?;
    let n = report.samples.len();
    ensure!(n > 0, "{}: no samples evaluated", dir.display());
    ensure!(
        outcomes.samples == report.samples,
        "outcomes.json and results.json list different samples"
    );
    ensure!(!report.models.is_empty(), "results.json lists no models");
    ensure!(!report.rows.is_empty(), "results.json has no rows");
    for row in &report.rows {
        let key = format!("{}-{}", row.norm, row.attack);
        let per_model = outcomes
            .outcomes
            .get(&key)
            .with_context(|| format!("outcomes.json has no row {key}"))?;
        ensure!(
            row.cells.len() == report.models.len(),
            "row {key}: {} cells for {} models",
            row.cells.len(),
            report.models.len()
        );
        for (m, cell) in report.models.iter().zip(&row.cells) {
            let v = per_model
                .get(m)
                .with_context(|| format!("outcomes.json has no {m} on {key}"))?;
            ensure!(
                v.len() == n,
                "{m} on {key}: {} outcomes for {n} samples",
                v.len()
            );
            let correct = v.iter().filter(|&&b| b).count() as u64;
            ensure!(
                cell.correct == correct && cell.total == n as u64,
                "{m} on {key}: results.json says {}/{}, the outcomes give {correct}/{n}",
                cell.correct,
                cell.total
            );
            ensure!(
                cell.interval.0 <= cell.percent + 1e-9 && cell.percent <= cell.interval.1 + 1e-9,
                "{m} on {key}: accuracy {} outside its interval {:?}",
                cell.percent,
                cell.interval
            );
        }
    }
    // The ALL rows: robust only where every attack of the norm failed.
    for norm in ["linf", "l2"] {
        let Some(all) = outcomes.outcomes.get(&format!("{norm}-all")) else {
            continue;
        };
        for m in &report.models {
            let attacks: Vec<&Vec<bool>> = outcomes
                .outcomes
                .iter()
                .filter(|(k, _)| k.starts_with(&format!("{norm}-")) && !k.ends_with("-all"))
                .filter_map(|(_, pm)| pm.get(m))
                .collect();
            let expect: Vec<bool> = (0..n).map(|i| attacks.iter().all(|a| a[i])).collect();
            if all.get(m) != Some(&expect) {
                bail!("{m}: the ALL {norm} row is not the per-sample AND of the {norm} attacks");
            }
        }
    }
    ensure!(
        !report.provenance.commit.is_empty(),
        "results.json has no commit in its provenance"
    );
    ensure!(
        !report.provenance.stages.is_empty(),
        "results.json records no stage wall times"
    );
    println!(
        "{}: complete and consistent ({} models, {} rows, {n} samples, {} McNemar comparisons)",
        dir.display(),
        report.models.len(),
        report.rows.len(),
        report.comparisons.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reproduce::report::{tests::small_report, write_outputs};

    #[test]
    fn accepts_consistent_results_and_rejects_tampering() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("eabs-verify-{}", std::process::id()));
        let (report, outcomes) = small_report()?;
        write_outputs(&dir, &report, &outcomes, "Table 2")?;
        run(&dir)?;
        // An edited accuracy no longer matches the per-sample outcomes.
        let path = dir.join("results.json");
        let text = std::fs::read_to_string(&path)?;
        let mut json: serde_json::Value = serde_json::from_str(&text)?;
        json["rows"][1]["cells"][0]["correct"] = serde_json::json!(4);
        std::fs::write(&path, serde_json::to_string(&json)?)?;
        let err = run(&dir).expect_err("tampered results must fail");
        assert!(format!("{err:#}").contains("CNN on linf-pgd"), "{err:#}");
        // A missing file is named.
        write_outputs(&dir, &report, &outcomes, "Table 2")?;
        std::fs::remove_file(dir.join("outcomes.json"))?;
        assert!(format!("{:#}", run(&dir).unwrap_err()).contains("outcomes.json"));
        Ok(())
    }
}
