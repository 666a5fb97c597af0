//! `verify-results DIR` for tables: checks that a reproduce run's files are complete and
//! consistent, by recomputing every accuracy and the "ALL" rows from the per-sample outcomes.
//! CI runs it after the smoke pipeline; users can run it on results they receive.

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

use crate::report::TableReport;

#[derive(Deserialize)]
struct OutcomesFile {
    samples: Vec<usize>,
    outcomes: BTreeMap<String, BTreeMap<String, Vec<bool>>>,
}

/// Reads and parses a JSON file, naming it in errors.
pub fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not well-formed", path.display()))
}

/// Verifies the table results directory `dir` (e.g. `results/table2/smoke`; Tables 1-5 and the
/// gradient-free check) and returns a one-line summary. Figure folders have their own checks
/// ([`crate::targets::figure3::verify_data`], [`crate::targets::examples::verify_data`]).
pub fn run(dir: &Path) -> Result<String> {
    if dir.join("figure.md").is_file() {
        bail!(
            "{} holds a figure (figure.md), not a table; verify it as a figure",
            dir.display()
        );
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
    // The ALL rows: robust only where every attack of the paper's suite in the norm failed;
    // the ALL+ rows: every attack of the norm, ours beyond the paper included.
    for norm in ["linf", "l2"] {
        for plus in [false, true] {
            let key = format!("{norm}-all{}", if plus { "+" } else { "" });
            let Some(all) = outcomes.outcomes.get(&key) else {
                continue;
            };
            for m in &report.models {
                let attacks: Vec<&Vec<bool>> = outcomes
                    .outcomes
                    .iter()
                    .filter(|(k, _)| match crate::suite::RowKey::parse_key(k) {
                        Some(crate::suite::RowKey::Attack(r)) => {
                            crate::suite::norm_str(r.norm) == norm
                                && (plus || !r.attack.beyond_paper())
                        }
                        _ => false,
                    })
                    .filter_map(|(_, pm)| pm.get(m))
                    .collect();
                let expect: Vec<bool> = (0..n).map(|i| attacks.iter().all(|a| a[i])).collect();
                if all.get(m) != Some(&expect) {
                    bail!("{m}: the {key} row is not the per-sample AND of its {norm} attacks");
                }
            }
        }
    }
    check_markdown(dir, &report)?;
    let journals = check_journals(dir, &report, &outcomes)?;
    check_ledger(dir, &report)?;
    let checkpoints = check_checkpoints(&report.config)?;
    ensure!(
        !report.provenance.commit.is_empty(),
        "results.json has no commit in its provenance"
    );
    ensure!(
        !report.provenance.stages.is_empty(),
        "results.json records no stage wall times"
    );
    Ok(format!(
        "{}: complete and consistent ({} models, {} rows, {n} samples, {} McNemar comparisons; \
         table.md re-rendered; {journals} journals and {checkpoints} checkpoint digests checked)",
        dir.display(),
        report.models.len(),
        report.rows.len(),
        report.comparisons.len()
    ))
}

/// `ledger.json`, where present: rebuilt from the journals when they are there, its summary and
/// checks equal to the ones `results.json` records.
fn check_ledger(dir: &Path, report: &TableReport) -> Result<()> {
    let path = dir.join("ledger.json");
    if !path.is_file() {
        ensure!(
            report.worst_case.is_empty() && report.checks.is_empty(),
            "results.json has a worst-case summary but {} is missing",
            path.display()
        );
        return Ok(());
    }
    let ledger: crate::ledger::Ledger = read(&path)?;
    ensure!(
        crate::ledger::summary(&ledger) == report.worst_case,
        "{}: its summary differs from results.json's worst_case",
        path.display()
    );
    let journal_root = dir
        .join("journal")
        .join(format!("seed{}", report.provenance.seed));
    if journal_root.is_dir() {
        let rows: Vec<crate::AttackRow> = report
            .rows
            .iter()
            .filter_map(|r| match crate::RowKey::parse(&r.norm, &r.attack) {
                Ok(crate::RowKey::Attack(a)) => Some(a),
                _ => None,
            })
            .collect();
        let again = crate::ledger::from_journals(&journal_root, &report.models, &rows)?;
        ensure!(
            again == ledger,
            "{} is not what the journals give",
            path.display()
        );
    }
    Ok(())
}

/// `table.md` must be exactly what `results.json` renders to (its title line aside, which is
/// taken from the file): an edited cell fails.
fn check_markdown(dir: &Path, report: &TableReport) -> Result<()> {
    let path = dir.join("table.md");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let title = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("# "))
        .with_context(|| format!("{}: no `# title` first line", path.display()))?;
    let base = crate::report::to_markdown(report, title);
    // Table 5 adds per-row McNemar matrices (recomputable from results.json, so checked too);
    // the gradient-free check adds sections from `boundary.json`, so there only what
    // results.json renders (everything before and the provenance after those sections) is
    // compared.
    let (expected, text) = match report.table.as_str() {
        "table5" => (
            crate::targets::ablation::insert_before_provenance(
                &base,
                &crate::targets::ablation::per_row_mcnemar(report),
            ),
            text,
        ),
        "gradient-free" => match (base.find("\n## Provenance"), text.find("\n## Provenance")) {
            (Some(b), Some(t)) => {
                let head_len = b.min(t);
                let kept = format!("{}{}", &text[..head_len], &text[t..]);
                (format!("{}{}", &base[..head_len], &base[b..]), kept)
            }
            _ => (base, text),
        },
        _ => (base, text),
    };
    if expected != text {
        let (line, (want, got)) = expected
            .lines()
            .chain(std::iter::repeat(""))
            .zip(text.lines().chain(std::iter::repeat("")))
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .map(|(i, p)| (i + 1, p))
            .unwrap_or((0, ("", "")));
        bail!(
            "{}: line {line} differs from what results.json renders to: `{got}` instead of `{want}` \
             (edited by hand?)",
            path.display()
        );
    }
    Ok(())
}

/// Journal file of a row: `clean` or `<norm>-<attack>`, as the runs name them.
fn journal_row(key: &str) -> &str {
    if key == "none-clean" {
        "clean"
    } else {
        key
    }
}

/// When the run's journals are present (`<dir>/journal/seed<S>/<model>/<row>.jsonl`), every
/// per-sample outcome must be the journal's: a deleted line or a flipped outcome fails. Returns
/// how many journals were compared.
fn check_journals(dir: &Path, report: &TableReport, outcomes: &OutcomesFile) -> Result<usize> {
    let root = dir
        .join("journal")
        .join(format!("seed{}", report.provenance.seed));
    if !root.is_dir() {
        return Ok(0);
    }
    let mut checked = 0;
    for (key, per_model) in &outcomes.outcomes {
        if key.ends_with("-all") || key.ends_with("-all+") {
            continue;
        }
        for (model, v) in per_model {
            let journaled = read_journal(
                &root.join(model).join(format!("{}.jsonl", journal_row(key))),
                model,
                key,
                v.len(),
            )?;
            // An attack row counts a sample robust only when its clean image is classified
            // correctly too (the verdict protocol): the outcome is the clean journal's verdict
            // and the row journal's.
            let clean = if key == "none-clean" {
                None
            } else {
                Some(read_journal(
                    &root.join(model).join("clean.jsonl"),
                    model,
                    "none-clean",
                    v.len(),
                )?)
            };
            for (i, &robust) in v.iter().enumerate() {
                let r = &journaled[i];
                let expect = r.robust.first() == Some(&true)
                    && clean
                        .as_ref()
                        .is_none_or(|c| c[i].robust.first() == Some(&true));
                ensure!(
                    r.test_index == outcomes.samples[i] && expect == robust,
                    "{}/{}.jsonl: sample {i} (test index {}) journaled as {}, outcomes.json says {} for {model} on {key}",
                    root.join(model).display(),
                    journal_row(key),
                    r.test_index,
                    if expect { "robust" } else { "not robust" },
                    if robust { "robust" } else { "not robust" }
                );
            }
            checked += 1;
        }
    }
    Ok(checked)
}

/// The records of one journal, one per sample `0..n` in order, or why not.
fn read_journal(
    path: &Path,
    model: &str,
    key: &str,
    n: usize,
) -> Result<Vec<crate::evaluate::SampleRecord>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "{}: the journal of {model} on {key} is missing, so outcomes.json cannot be checked against it",
            path.display()
        )
    })?;
    let mut by_sample: BTreeMap<usize, crate::evaluate::SampleRecord> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let r: crate::evaluate::SampleRecord = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not a record", path.display(), i + 1))?;
        let s = r.sample;
        ensure!(
            by_sample.insert(s, r).is_none(),
            "{} line {}: sample {s} recorded twice",
            path.display(),
            i + 1
        );
    }
    ensure!(
        by_sample.len() == n,
        "{}: {} samples journaled, outcomes.json has {n} for {model} on {key}",
        path.display(),
        by_sample.len(),
    );
    (0..n)
        .map(|i| {
            by_sample
                .remove(&i)
                .with_context(|| format!("{}: sample {i} is not journaled", path.display()))
        })
        .collect()
}

/// The checkpoints the results record (`config.json` `checkpoint_files`) must still be the
/// files at those paths, where present. Returns how many were compared.
fn check_checkpoints(config: &serde_json::Value) -> Result<usize> {
    let Some(files) = config.get("checkpoint_files") else {
        return Ok(0);
    };
    let files: Vec<crate::zoo::CheckpointId> = serde_json::from_value(files.clone())
        .context("config.json: checkpoint_files is not a list of {path, sha256}")?;
    let mut checked = 0;
    for f in files {
        if !f.path.is_file() {
            continue;
        }
        let now = crate::weights::sha256_file(&f.path)?;
        ensure!(
            now == f.sha256,
            "{}: sha256 {now}, but these results were made with a checkpoint of sha256 {}: the \
             file changed since (retrained or replaced), so the results are not its results",
            f.path.display(),
            f.sha256
        );
        checked += 1;
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{tests::small_report, write_outputs};

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
        // An edited table.md cell is caught.
        write_outputs(&dir, &report, &outcomes, "Table 2")?;
        let md = std::fs::read_to_string(dir.join("table.md"))?;
        let cell = format!("{:.1}", report.rows[0].cells[0].percent);
        assert!(md.contains(&cell), "{md}");
        std::fs::write(dir.join("table.md"), md.replacen(&cell, "99.0", 1))?;
        let err = run(&dir).expect_err("an edited table.md must fail");
        assert!(format!("{err:#}").contains("table.md: line"), "{err:#}");
        // Journals present: a flipped or deleted outcome is caught.
        write_outputs(&dir, &report, &outcomes, "Table 2")?;
        let root = dir
            .join("journal")
            .join(format!("seed{}", report.provenance.seed));
        for (row, per_model) in &outcomes {
            if matches!(row, crate::suite::RowKey::All(_)) {
                continue;
            }
            let key = row.key();
            for (m, v) in per_model {
                let lines: Vec<String> = v
                    .iter()
                    .enumerate()
                    .map(|(i, &r)| {
                        serde_json::to_string(&crate::evaluate::SampleRecord {
                            sample: i,
                            test_index: report.samples[i],
                            label: 0,
                            robust: vec![r],
                            distance: vec![0.0],
                        })
                    })
                    .collect::<serde_json::Result<_>>()?;
                let path = root.join(m).join(format!("{}.jsonl", journal_row(&key)));
                std::fs::create_dir_all(path.parent().unwrap())?;
                std::fs::write(&path, lines.join("\n") + "\n")?;
            }
        }
        run(&dir)?;
        let m0 = &report.models[0];
        let j = root.join(m0).join("linf-pgd.jsonl");
        let text = std::fs::read_to_string(&j)?;
        let flipped = if text.contains("[true]") {
            text.replacen("[true]", "[false]", 1)
        } else {
            text.replacen("[false]", "[true]", 1)
        };
        std::fs::write(&j, &flipped)?;
        let err = run(&dir).expect_err("a flipped journal outcome must fail");
        assert!(format!("{err:#}").contains("journaled as"), "{err:#}");
        let first_dropped: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
        std::fs::write(&j, first_dropped)?;
        let err = run(&dir).expect_err("a deleted journal line must fail");
        assert!(format!("{err:#}").contains("samples journaled"), "{err:#}");
        std::fs::remove_dir_all(dir.join("journal"))?;
        // Table 5's extra per-row McNemar sections are re-rendered and checked too.
        let mut t5 = report.clone();
        t5.table = "table5".into();
        write_outputs(&dir, &t5, &outcomes, "Table 5")?;
        let md = crate::targets::ablation::insert_before_provenance(
            &crate::report::to_markdown(&t5, "Table 5"),
            &crate::targets::ablation::per_row_mcnemar(&t5),
        );
        std::fs::write(dir.join("table.md"), &md)?;
        run(&dir)?;
        let section = md.find("clean (alpha").expect("a per-row section");
        let mut edited = md.clone();
        edited.insert_str(section, "edited ");
        std::fs::write(dir.join("table.md"), edited)?;
        assert!(run(&dir).is_err(), "an edited per-row section must fail");
        // A missing file is named.
        write_outputs(&dir, &report, &outcomes, "Table 2")?;
        std::fs::remove_file(dir.join("outcomes.json"))?;
        assert!(format!("{:#}", run(&dir).unwrap_err()).contains("outcomes.json"));
        Ok(())
    }
}
