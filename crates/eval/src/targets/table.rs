//! Tables 1-4: train (or reuse) CNN, Adv-L_inf, Adv-L_2, ABS and E-ABS on one dataset, attack each
//! with the paper's suite at the dataset's epsilons, and compare them with McNemar's test.

use anyhow::Result;
use eabs_attacks::Norm;
use eabs_datasets::DatasetKind;
use eabs_models::{AdvNorm, ModelKind};
use std::path::PathBuf;

use crate::experiment::Experiment;
use crate::report::{add_all_row, build, write_outputs, Outcomes};
use crate::suite::Epsilon;
use crate::suite::{RowKey, ATTACK_ROWS, BEYOND_ROWS};
use crate::RunSpec;

/// The models of Tables 1-4, in column order (their index seeds their inference).
pub const MODEL_KINDS: [ModelKind; 5] = [
    ModelKind::Cnn,
    ModelKind::AdvCnn(AdvNorm::Linf),
    ModelKind::AdvCnn(AdvNorm::L2),
    ModelKind::ABS,
    ModelKind::E_ABS,
];

/// The column of `kind` in Tables 1-4, if it is one.
pub fn column_of(kind: ModelKind) -> Option<usize> {
    MODEL_KINDS.iter().position(|&k| k == kind)
}

/// The table of a dataset: `table1` MNIST, `table2` Fashion-MNIST, `table3` SuperTraffic-10,
/// `table4` SVHN.
pub fn table_of(kind: DatasetKind) -> &'static str {
    match kind {
        DatasetKind::Mnist => "table1",
        DatasetKind::FashionMnist => "table2",
        DatasetKind::SuperTraffic10 => "table3",
        DatasetKind::Svhn => "table4",
    }
}

/// The rows of a table in the paper's order: clean, then per norm its attacks and its ALL
/// row, then ours beyond the paper (Auto-PGD) and the ALL+ row, each with its epsilon.
pub fn table_rows(ds: DatasetKind) -> Vec<(RowKey, f64)> {
    let mut order = vec![(RowKey::Clean, 0.0)];
    for norm in [Norm::Linf, Norm::L2] {
        let eps = ds.epsilon(norm);
        for row in ATTACK_ROWS.iter().filter(|r| r.norm == norm) {
            order.push((RowKey::Attack(*row), eps));
        }
        order.push((RowKey::All(norm), eps));
        for row in BEYOND_ROWS.iter().filter(|r| r.norm == norm) {
            order.push((RowKey::Attack(*row), eps));
        }
        order.push((RowKey::AllPlus(norm), eps));
    }
    order
}

/// Reproduces the table of `kind` (one of Tables 1-4); returns its results folder.
pub fn run(kind: DatasetKind, spec: &RunSpec) -> Result<PathBuf> {
    let table = table_of(kind);
    let sizes = spec.eval_sizes();
    let mut exp = Experiment::open(spec, table, kind, sizes.n_samples)?;
    let ds = exp.dataset;
    let mut outcomes: Outcomes = Outcomes::new();
    let names: Vec<String> = MODEL_KINDS.iter().map(|k| k.name().to_string()).collect();
    let mut checkpoint_files = Vec::new();
    let mut stochastic = Vec::new();
    let mut extras = crate::ledger::Extras::new();
    if spec.train_only {
        // The training stage of a sharded run: every model obtained (trained where needed,
        // under the checkpoint directory's lock), nothing evaluated.
        for &mk in &MODEL_KINDS {
            let obtained = exp.obtain(mk)?;
            tracing::info!(model = mk.name(), checkpoint = %obtained.checkpoint.path.display(), "ready");
        }
        return Ok(spec.checkpoints.clone());
    }
    for (m_idx, &mk) in MODEL_KINDS.iter().enumerate() {
        let obtained = exp.obtain(mk)?;
        let column = exp.column(m_idx, mk.name(), obtained, &sizes, None)?;
        checkpoint_files.extend(column.checkpoint.clone());
        if column.is_stochastic() {
            stochastic.push(column.name.clone());
        }
        let runs = exp.table_protocol_checked(&column, &sizes, &mut outcomes)?;
        extras.insert(column.name.clone(), runs);
        exp.certified_bounds(&column, &sizes)?;
    }
    if spec.shard.is_some() {
        // A shard's results are its journals; `--merge` renders the table from all of them.
        return exp.finish_shard();
    }
    add_all_row(&mut outcomes, Norm::Linf, &names)?;
    add_all_row(&mut outcomes, Norm::L2, &names)?;

    let config = serde_json::json!({
        "table": table,
        "dataset": kind.name(),
        "preset": spec.preset,
        "seed": spec.seed,
        "sizes": sizes,
        "epsilons": { "linf": ds.linf_epsilon(), "l2": ds.l2_epsilon() },
        "models": names,
        "train": MODEL_KINDS.iter().map(|&k| exp.train_config(k)).collect::<Vec<_>>(),
        "checkpoints": exp.store,
        "checkpoint_files": checkpoint_files,
        "test_data_sha256": exp.test_sha256,
    });
    let all_rows: Vec<_> = ATTACK_ROWS
        .iter()
        .chain(BEYOND_ROWS.iter())
        .copied()
        .collect();
    let ledger = crate::ledger::from_journals(&exp.journal_root, &names, &all_rows)?;
    let checks = crate::ledger::checks(&outcomes, &ledger, &names, &stochastic, &extras)?;
    let subset = exp.subset.clone();
    let (provenance, out_dir, _lock) = exp.finish();
    let paper = crate::paper::cells(table, true);
    let mut report = build(
        table,
        kind.name(),
        &names,
        subset,
        &table_rows(ds),
        &outcomes,
        &paper,
        config,
        provenance,
    )?;
    let dataset_name = crate::paper::TABLES
        .iter()
        .find(|t| t.id == table)
        .map_or(kind.name(), |t| t.dataset);
    let title = format!(
        "{} ({dataset_name}): accuracy under attack",
        table.replace("table", "Table ")
    );
    report.worst_case = crate::ledger::summary(&ledger);
    report.checks = checks;
    crate::write_json(&out_dir.join("ledger.json"), &ledger)?;
    crate::write_json(&out_dir.join("sanity-runs.json"), &extras)?;
    write_outputs(&out_dir, &report, &outcomes, &title)?;
    Ok(out_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_the_papers_in_order() {
        let rows = table_rows(DatasetKind::FashionMnist);
        let keys: Vec<(&str, &str)> = rows
            .iter()
            .filter(|(r, _)| {
                !matches!(r, RowKey::AllPlus(_))
                    && !matches!(r, RowKey::Attack(a) if a.attack.beyond_paper())
            })
            .map(|(r, _)| (r.norm_str(), r.attack_str()))
            .collect();
        assert_eq!(keys, crate::paper::ROWS);
        assert_eq!(column_of(ModelKind::E_ABS), Some(4));
        assert_eq!(table_of(DatasetKind::Svhn), "table4");
    }
}
