//! Table 5, the ablation study (Section 4.4): all eight combinations of E-ABS's three extensions
//! to ABS under bounded PGD on SVHN (or `--dataset`).
//!
//! The extensions are A (adversarial autoencoders instead of VAEs, Section 3.1), D (a shared
//! encoder and the discriminative loss of eq. (4), Section 3.2) and V (variational inference of
//! mean and variance instead of exact inference of the mean, Section 3.3, eq. (6)). A and D are
//! training-time choices, V an inference-time one, so the eight columns come from four trained
//! models (ABS, A-ABS, D-ABS and AD-ABS = E-ABS's training), each evaluated with both
//! inference modes. ABS and E-ABS are trained in the checkpoint root of `reproduce table4`
//! ([`crate::zoo::checkpoint_root`]), so the two experiments share them.
//!
//! # Inference per column (our decisions where the paper is silent)
//! The paper states only exact versus variational inference. Everything else follows
//! [`eabs_inference::FrozenAbsModel::inference_config`] at the preset's sizes:
//!
//! | column | model | inference | encoder proposal `Q(Z|x)` among the candidates |
//! |---|---|---|---|
//! | ABS | ABS | exact (the reference's `get_ABS`) | no (as the reference) |
//! | A-ABS, D-ABS, AD-ABS | A-ABS, D-ABS, E-ABS | exact | yes |
//! | V-ABS | ABS | variational | no (ABS does not use its encoders at inference) |
//! | AV-ABS, DV-ABS, E-ABS | A-ABS, D-ABS, E-ABS | variational | yes |
//!
//! VAE models weight the Gaussian KL term with their training beta; AAE models use their
//! discriminator's `-log D(z)` term. Exact inference is deterministic; the four variational
//! columns are randomised, so PGD averages their gradients and logits with EOT exactly as
//! Tables 1-4 do (Section 4.2).
//!
//! # Rows and statistics
//! Clean accuracy and PGD at the dataset's L_inf and L_2 epsilons, with the settings of Tables
//! 1-4 ([`crate::suite::pgd_config`], same attack seeds). No "ALL" rows: each norm has one
//! attack. McNemar's test between every pair of columns is computed per row; since the shared
//! report renders matrices for "ALL" rows only, this module appends the per-row matrices to
//! `table.md`.
//!
//! The paper's numbers are shown beside ours only on SVHN, the dataset they were measured on.

use anyhow::{Context, Result};
use eabs_datasets::DatasetKind;
use eabs_inference::LatentInference;
use eabs_models::{ModelKind, Variant};
use std::path::PathBuf;

use crate::experiment::Experiment;
use crate::report::{build, to_markdown, write_outputs, Outcomes, TableReport};
use crate::suite::Epsilon;
use crate::suite::{AttackKind, AttackRow, RowKey, ATTACK_ROWS};
use crate::RunSpec;

/// One column of Table 5: a trained variant (A, D) and its latent inference (V).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// The trained model (A and D).
    pub variant: Variant,
    /// Exact, or variational (V).
    pub mode: LatentInference,
}

impl Column {
    /// The paper's name: the letters of the extensions in the order A, D, V before "-ABS";
    /// "ABS" with none and "E-ABS" with all three (the paper's "ADV-ABS (E-ABS)").
    pub fn name(self) -> String {
        let v = self.mode == LatentInference::Variational;
        let letters: String = [
            (self.variant.adversarial, 'A'),
            (self.variant.discriminative, 'D'),
            (v, 'V'),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, c)| *c)
        .collect();
        match letters.as_str() {
            "" => "ABS".into(),
            "ADV" => "E-ABS".into(),
            l => format!("{l}-ABS"),
        }
    }

    /// The trained model behind the column.
    pub fn kind(self) -> ModelKind {
        ModelKind::Abs(self.variant)
    }
}

const fn col(variant: Variant, variational: bool) -> Column {
    Column {
        variant,
        mode: if variational {
            LatentInference::Variational
        } else {
            LatentInference::Exact
        },
    }
}

/// The columns in the paper's order: ABS, A-ABS, D-ABS, V-ABS, AD-ABS, AV-ABS, DV-ABS, E-ABS.
pub const COLUMNS: [Column; 8] = [
    col(Variant::ABS, false),
    col(Variant::A_ABS, false),
    col(Variant::D_ABS, false),
    col(Variant::ABS, true),
    col(Variant::E_ABS, false),
    col(Variant::A_ABS, true),
    col(Variant::D_ABS, true),
    col(Variant::E_ABS, true),
];

/// The models to train, each once, in the order their first column appears.
pub fn trained_variants(columns: &[Column]) -> Vec<Variant> {
    let mut out: Vec<Variant> = Vec::new();
    for c in columns {
        if !out.contains(&c.variant) {
            out.push(c.variant);
        }
    }
    out
}

/// Table 5's attack rows with their index in [`ATTACK_ROWS`], which seeds the attack as in
/// Tables 1-4: PGD in L_inf, then in L_2.
pub fn pgd_rows() -> Vec<(usize, AttackRow)> {
    ATTACK_ROWS
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, r)| r.attack == AttackKind::Pgd)
        .collect()
}

/// Inserts `extra` sections into a table rendered by [`to_markdown`], before its provenance
/// (or at the end if it has none).
pub fn insert_before_provenance(md: &str, extra: &str) -> String {
    match md.find("\n## Provenance") {
        Some(at) => format!("{}{extra}{}", &md[..at], &md[at..]),
        None => format!("{md}{extra}"),
    }
}

/// McNemar's p-value matrix of every row but the "ALL" rows, which the shared renderer shows
/// already (Table 5 has none).
pub fn per_row_mcnemar(report: &TableReport) -> String {
    let mut s = String::new();
    for c in report.comparisons.iter().filter(|c| c.attack != "all") {
        let row = if c.norm == "none" {
            "clean".to_string()
        } else {
            format!(
                "{} {}",
                crate::report::norm_title(&c.norm),
                c.attack.to_uppercase()
            )
        };
        s.push_str(&format!(
            "\n## McNemar's test p-values, {row} (alpha = {})\n\n{}\n{}\n",
            c.mcnemar.alpha(),
            c.mcnemar.to_markdown(),
            c.mcnemar.summary()
        ));
    }
    s
}

/// Reproduces Table 5; returns the results directory.
pub fn run(spec: &RunSpec) -> Result<PathBuf> {
    let (kind, dir_name) = spec.experiment_dataset("table5", DatasetKind::Svhn);
    let sizes = spec.eval_sizes();
    let mut exp = Experiment::open(spec, &dir_name, kind, sizes.n_samples)?;
    let ds = exp.dataset;
    let rows = pgd_rows();

    let names: Vec<String> = COLUMNS.iter().map(|c| c.name()).collect();
    let mut outcomes: Outcomes = Outcomes::new();
    let mut column_config = Vec::new();
    for variant in trained_variants(&COLUMNS) {
        let mk = ModelKind::Abs(variant);
        let obtained = exp.obtain(mk)?;
        for (c_idx, spec_column) in COLUMNS.iter().enumerate() {
            if spec_column.variant != variant {
                continue;
            }
            let name = spec_column.name();
            let mut column = exp.column(
                c_idx,
                &name,
                obtained.clone(),
                &sizes,
                Some(spec_column.mode),
            )?;
            exp.bind_full_inference(&mut column, Some(&name))?;
            column_config.push(column.settings.clone());
            let clean = exp.clean(&column, &sizes)?;
            outcomes
                .entry(RowKey::Clean)
                .or_default()
                .insert(name.clone(), clean);
            for &(r_idx, row) in &rows {
                let robust = exp.suite_row(&column, row, r_idx, &sizes)?;
                outcomes
                    .entry(RowKey::Attack(row))
                    .or_default()
                    .insert(name.clone(), robust);
            }
        }
    }

    let mut order: Vec<(RowKey, f64)> = vec![(RowKey::Clean, 0.0)];
    for (_, row) in &rows {
        order.push((RowKey::Attack(*row), ds.epsilon(row.norm)));
    }
    let config = serde_json::json!({
        "table": "table5",
        "dataset": kind.name(),
        "preset": spec.preset,
        "seed": spec.seed,
        "sizes": sizes,
        "epsilons": { "linf": ds.linf_epsilon(), "l2": ds.l2_epsilon() },
        "models": names,
        "columns": column_config,
        "checkpoints": exp.store,
    });
    let subset = exp.subset.clone();
    let (provenance, out_dir, _lock) = exp.finish();
    let on_paper_dataset = kind == DatasetKind::Svhn;
    let paper = crate::paper::cells("table5", on_paper_dataset);
    let report = build(
        "table5",
        kind.name(),
        &names,
        subset,
        &order,
        &outcomes,
        &paper,
        config,
        provenance,
    )?;
    let title = if on_paper_dataset {
        "Table 5 (svhn): ablation study, accuracy under PGD".to_string()
    } else {
        format!(
            "Table 5's ablation study on {} (the paper's numbers are for SVHN and not shown)",
            kind.name()
        )
    };
    write_outputs(&out_dir, &report, &outcomes, &title)?;
    let md = insert_before_provenance(&to_markdown(&report, &title), &per_row_mcnemar(&report));
    crate::write_text(&out_dir.join("table.md"), &md)
        .with_context(|| format!("writing {}", out_dir.join("table.md").display()))?;
    Ok(out_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_named_and_ordered_as_the_paper() {
        let names: Vec<String> = COLUMNS.iter().map(|c| c.name()).collect();
        assert_eq!(names, crate::paper::ABLATIONS);
        // Every (variant, mode) pair exactly once.
        for (i, a) in COLUMNS.iter().enumerate() {
            assert!(COLUMNS[i + 1..].iter().all(|b| b != a), "{a:?} twice");
        }
    }

    #[test]
    fn v_is_the_inference_mode_and_a_d_are_the_trained_model() {
        let by_name =
            |n: &str| -> Column { *COLUMNS.iter().find(|c| c.name() == n).expect("column") };
        assert_eq!(by_name("V-ABS").variant, Variant::ABS);
        assert_eq!(by_name("V-ABS").mode, LatentInference::Variational);
        assert_eq!(by_name("AD-ABS").variant, Variant::E_ABS);
        assert_eq!(by_name("AD-ABS").mode, LatentInference::Exact);
        assert_eq!(by_name("E-ABS").kind(), ModelKind::E_ABS);
        assert_eq!(by_name("ABS").kind(), ModelKind::ABS);
        assert_eq!(by_name("DV-ABS").variant, Variant::D_ABS);
        // Four models to train, in the order their first column appears.
        assert_eq!(
            trained_variants(&COLUMNS),
            vec![Variant::ABS, Variant::A_ABS, Variant::D_ABS, Variant::E_ABS]
        );
        // The ABS and E-ABS columns use the inference Tables 1-4 use for those models.
        for n in ["ABS", "E-ABS"] {
            let c = by_name(n);
            assert_eq!(c.mode, crate::zoo::default_inference(c.variant));
        }
    }

    #[test]
    fn rows_are_clean_then_pgd_in_each_norm() {
        let rows = pgd_rows();
        let keys: Vec<(&str, &str)> = rows
            .iter()
            .map(|(_, r)| (RowKey::Attack(*r).norm_str(), r.attack.as_str()))
            .collect();
        assert_eq!(keys, crate::paper::TABLE5_ROWS[1..]);
        // The attack seeds index Tables 1-4's rows.
        assert!(rows.iter().all(|(i, r)| ATTACK_ROWS[*i].attack == r.attack));
    }

    #[test]
    fn fingerprint_drops_sample_count_and_batch_size_only() -> Result<()> {
        let sizes = crate::EvalSizes::of(crate::Preset::Smoke);
        let v = crate::experiment::attack_fingerprint(&sizes)?;
        assert!(v.get("n_samples").is_none() && v.get("batch_size").is_none());
        assert_eq!(v["pgd_steps"], serde_json::json!(sizes.pgd_steps));
        assert_eq!(v["eot_samples"], serde_json::json!(sizes.eot_samples));
        Ok(())
    }

    #[test]
    fn per_row_mcnemar_renders_every_row() -> Result<()> {
        let (report, _) = crate::report::tests::small_report()?;
        let md = per_row_mcnemar(&report);
        assert!(md.contains("p-values, clean"), "{md}");
        assert!(md.contains("p-values, L_inf PGD"), "{md}");
        assert!(md.contains("p-values, L_inf DEEPFOOL"), "{md}");
        assert!(!md.contains("ALL"), "{md}");
        let full = insert_before_provenance(&to_markdown(&report, "T"), &md);
        let (m, p) = (full.find("p-values, clean"), full.find("## Provenance"));
        assert!(m.is_some() && p.is_some() && m < p, "{full}");
        assert_eq!(insert_before_provenance("a", "b"), "ab");
        Ok(())
    }
}
