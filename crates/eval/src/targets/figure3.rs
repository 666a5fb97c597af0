//! Figure 3: "Model accuracy under PGD attack, as a function of perturbation size, on SVHN",
//! panel (a) L_inf PGD and panel (b) L_2 PGD, for the five models of Table 4 (Section 4.4).
//!
//! The models are the tables' own: trained (or reused) in the same checkpoint root as
//! `reproduce table4` (or the table of the `--dataset` given), frozen with the paper's inference,
//! randomised ones attacked through EOT exactly as in the tables. PGD is the paper's (Section 4.2)
//! at the preset's steps and restarts, run once per epsilon of a grid that brackets the
//! dataset's table epsilon (Foolbox's fixed-epsilon semantics: no epsilon reuses another's
//! adversarials). PGD uses the table's seed for its row, so for a deterministic model the point
//! at the table's epsilon repeats the table's PGD cell on the same samples. The epsilon-0 point
//! is the clean accuracy, evaluated as the tables' clean row.
//!
//! Output in `results/<fig3 | fig3-<dataset>>/<preset>/`: `fig3-linf.{svg,png}`,
//! `fig3-l2.{svg,png}`, `results.json` (every point with its Clopper-Pearson interval, the
//! configuration and provenance), `outcomes.json` (per-sample robust flags, from which
//! `verify-results` recomputes every point), `figure.md`, and `journal/` (resumable evaluation).

use anyhow::{bail, ensure, Context, Result};
use eabs_attacks::{attack_fixed, Criterion, Norm, Pgd};
use eabs_datasets::DatasetKind;
use eabs_stats::accuracy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::experiment::{attack_fingerprint, with_eot, Experiment};
use crate::lock::DirLock;
use crate::preset::Preset;
use crate::provenance::Provenance;
use crate::suite::Epsilon;
use crate::suite::{pgd_config, rows_of, AttackKind, AttackRow};
use crate::targets::table::MODEL_KINDS;
use crate::RunSpec;

/// The two panels: (a) L_inf and (b) L_2, with the names used in files and JSON.
pub const PANELS: [(&str, Norm); 2] = [("linf", Norm::Linf), ("l2", Norm::L2)];

/// The epsilons of one panel, starting at 0 (clean) and containing the dataset's table epsilon.
///
/// SVHN and SuperTraffic-10 (L_inf 8/255): {0, 1, 2, 4, 6, 8, 10, 12, 16}/255; MNIST (0.3):
/// 0 to 0.4 in steps of 0.05; Fashion-MNIST (0.1): 0 to 0.12 in steps of 0.02, then 0.15 and
/// 0.2. L_2 (1.5 everywhere): 0 to 3 in steps of 0.25. The smoke preset keeps four points: 0,
/// the grid point nearest half the table epsilon, the table epsilon and the largest.
pub fn epsilon_grid(kind: DatasetKind, norm: Norm, preset: Preset) -> Vec<f64> {
    let full: Vec<f64> = match (norm, kind) {
        (Norm::Linf, DatasetKind::Svhn | DatasetKind::SuperTraffic10) => {
            [0, 1, 2, 4, 6, 8, 10, 12, 16]
                .iter()
                .map(|&k| k as f64 / 255.0)
                .collect()
        }
        (Norm::Linf, DatasetKind::Mnist) => {
            vec![0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4]
        }
        (Norm::Linf, DatasetKind::FashionMnist) => {
            vec![0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2]
        }
        (Norm::L2, _) => (0..=12).map(|k| k as f64 * 0.25).collect(),
    };
    if preset != Preset::Smoke {
        return full;
    }
    let eps = kind.epsilon(norm);
    let half = full
        .iter()
        .copied()
        .filter(|&e| e > 0.0 && e < eps)
        .min_by(|a, b| (a - eps / 2.0).abs().total_cmp(&(b - eps / 2.0).abs()));
    let mut grid = vec![0.0];
    grid.extend(half);
    grid.push(eps);
    grid.push(*full.last().unwrap_or(&eps));
    grid.dedup();
    grid
}

/// One point of a curve.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Point {
    /// Perturbation size (0: clean accuracy).
    pub epsilon: f64,
    /// Samples still classified correctly.
    pub correct: u64,
    /// Samples evaluated.
    pub total: u64,
    /// Accuracy in percent.
    pub percent: f64,
    /// Clopper-Pearson 95% interval, in percent.
    pub interval: (f64, f64),
}

/// One model's curve on one panel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Curve {
    /// Model name (Table 4's column).
    pub model: String,
    /// One point per epsilon of the panel.
    pub points: Vec<Point>,
    /// Samples that survive some epsilon after being broken at a smaller one. Every adversarial
    /// of a smaller ball lies in the larger one, so each such sample is a miss of the attack
    /// (or, for a randomised model, a different draw of its inference).
    pub non_monotone_samples: usize,
}

/// One panel: a norm, its epsilon grid and one curve per model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Panel {
    /// `linf` or `l2`.
    pub norm: String,
    /// The dataset's epsilon in Tables 1-4 (marked on the chart).
    pub table_epsilon: f64,
    /// The grid, starting at 0.
    pub epsilons: Vec<f64>,
    /// One curve per model, in Table 4's column order.
    pub curves: Vec<Curve>,
}

/// `results.json` of a Figure 3 run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure3Report {
    /// Always `fig3` (how `verify-results` recognises the directory).
    pub figure: String,
    /// Dataset name.
    pub dataset: String,
    /// Models, in Table 4's column order (the charts' colour order).
    pub models: Vec<String>,
    /// Test-split indices of the evaluated samples (the same for every model and epsilon).
    pub samples: Vec<usize>,
    /// (a) L_inf, (b) L_2.
    pub panels: Vec<Panel>,
    /// Whether the charts have text (a font was found; see `plot`).
    pub charts_have_text: bool,
    /// The exact configuration of the run.
    pub config: serde_json::Value,
    /// Where the numbers came from.
    pub provenance: Provenance,
}

/// `outcomes.json` of a Figure 3 run: everything needed to recompute the curves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Figure3Outcomes {
    /// Test-split indices of the samples.
    pub samples: Vec<usize>,
    /// Per norm, the epsilon grid (first 0, the clean point).
    pub epsilons: BTreeMap<String, Vec<f64>>,
    /// `robust[norm][model][epsilon index][sample]`: still classified correctly.
    pub robust: BTreeMap<String, BTreeMap<String, Vec<Vec<bool>>>>,
}

/// The accuracy curve of per-sample robust flags `robust[epsilon index][sample]`.
pub fn curve(epsilons: &[f64], robust: &[Vec<bool>]) -> Result<Vec<Point>> {
    ensure!(
        epsilons.len() == robust.len(),
        "{} epsilons but outcomes for {}",
        epsilons.len(),
        robust.len()
    );
    epsilons
        .iter()
        .zip(robust)
        .map(|(&epsilon, flags)| {
            let acc = accuracy(flags, 0.95)?;
            Ok(Point {
                epsilon,
                correct: acc.correct,
                total: acc.total,
                percent: acc.percent(),
                interval: (acc.lower * 100.0, acc.upper * 100.0),
            })
        })
        .collect()
}

/// Samples robust at some epsilon index after being attacked successfully at a smaller one.
pub fn non_monotone_samples(robust: &[Vec<bool>]) -> usize {
    let n = robust.first().map_or(0, |r| r.len());
    (0..n)
        .filter(|&i| {
            let mut broken = false;
            robust.iter().any(|row| {
                if !row[i] {
                    broken = true;
                    false
                } else {
                    broken
                }
            })
        })
        .count()
}

/// The seed of the tables' PGD row for `norm` ([`crate::seeds::table_attack`]), so that Figure 3
/// attacks a deterministic model at the table's epsilon exactly as the table does.
pub fn pgd_seed(seed: u64, norm: Norm) -> Result<u64> {
    crate::seeds::table_attack(seed, AttackRow::new(norm, AttackKind::Pgd))
        .with_context(|| format!("the tables have no PGD row for {norm:?}"))
}

/// Checks a grid: starts at 0, strictly increasing, contains `table_epsilon`.
pub fn check_grid(grid: &[f64], table_epsilon: f64) -> Result<()> {
    ensure!(
        grid.first() == Some(&0.0),
        "the epsilon grid must start at 0 (clean), found {grid:?}"
    );
    ensure!(
        grid.windows(2).all(|w| w[0] < w[1]),
        "the epsilon grid must increase strictly: {grid:?}"
    );
    ensure!(
        grid.contains(&table_epsilon),
        "the epsilon grid {grid:?} misses the table's epsilon {table_epsilon}"
    );
    Ok(())
}

/// How the x axis shows a norm's epsilons: L_inf on colour data in units of 1/255 (as the SVHN
/// literature quotes them), everything else as is. Returns (scale, axis label).
pub fn x_axis(kind: DatasetKind, norm: &str) -> (f64, String) {
    match (norm, kind) {
        ("linf", DatasetKind::Svhn | DatasetKind::SuperTraffic10) => {
            (255.0, "L∞ perturbation size ε (× 1/255)".into())
        }
        ("linf", _) => (1.0, "L∞ perturbation size ε".into()),
        _ => (1.0, "L₂ perturbation size ε".into()),
    }
}

/// An epsilon as the figure prints it: in units of 1/255 where the axis is scaled so.
pub fn fmt_eps(e: f64, scale: f64) -> String {
    if scale == 255.0 {
        format!("{}/255", crate::report::trim_number(e * 255.0))
    } else {
        crate::report::trim_number(e)
    }
}

/// Renders `figure.md`: per panel, the images and a table of the curve (accuracy and interval
/// per epsilon and model), then the monotonicity check and the provenance.
pub fn to_markdown(r: &Figure3Report, kind: DatasetKind) -> String {
    let p = &r.provenance;
    let mut s = format!(
        "# Figure 3 ({}): model accuracy under PGD as a function of perturbation size\n\n\
         Preset `{}`, seed {}, {} test samples, device {}, commit `{}`. Each cell: accuracy \
         [95% Clopper-Pearson interval]; epsilon 0 is clean accuracy; `*` marks the epsilon of \
         the tables.\n",
        r.dataset,
        p.preset,
        p.seed,
        r.samples.len(),
        p.device,
        p.commit
    );
    if !r.charts_have_text {
        s.push_str(
            "\nNo TrueType font was found, so the charts carry no text: the curves are coloured \
             in the column order of the tables below (blue, orange, green, red, purple), the \
             gray lines are every 20 percentage points from 0%, and the dashed line is the table \
             epsilon.\n",
        );
    }
    for panel in &r.panels {
        let (scale, _) = x_axis(kind, &panel.norm);
        let (letter, title) = if panel.norm == "linf" {
            ("a", "L_inf")
        } else {
            ("b", "L_2")
        };
        s.push_str(&format!(
            "\n## ({letter}) {title} PGD\n\n![{title} PGD](fig3-{0}.svg) ([PNG](fig3-{0}.png))\n\n| epsilon |",
            panel.norm
        ));
        for c in &panel.curves {
            s.push_str(&format!(" {} |", c.model));
        }
        s.push_str("\n|---|");
        for _ in &panel.curves {
            s.push_str("---|");
        }
        s.push('\n');
        for (k, &eps) in panel.epsilons.iter().enumerate() {
            let star = if eps == panel.table_epsilon { " *" } else { "" };
            s.push_str(&format!("| {}{star} |", fmt_eps(eps, scale)));
            for c in &panel.curves {
                let pt = &c.points[k];
                s.push_str(&format!(
                    " {:.1}% [{:.1}, {:.1}] |",
                    pt.percent, pt.interval.0, pt.interval.1
                ));
            }
            s.push('\n');
        }
        let misses: Vec<String> = panel
            .curves
            .iter()
            .filter(|c| c.non_monotone_samples > 0)
            .map(|c| format!("{} {}", c.model, c.non_monotone_samples))
            .collect();
        s.push_str(&if misses.is_empty() {
            "\nEvery sample broken at some epsilon stays broken at every larger one.\n".to_string()
        } else {
            format!(
                "\nSamples that survive a larger epsilon after being broken at a smaller one \
                 (PGD misses, or another draw of a randomised model): {}.\n",
                misses.join(", ")
            )
        });
    }
    s.push_str(&format!(
        "\n## Provenance\n\n- command: `{}`\n- commit: `{}`\n- hardware: {} ({} cores, {} GiB), {}\n- wall time per stage:\n",
        p.command, p.commit, p.hardware.cpu, p.hardware.cores, p.hardware.memory_gib, p.hardware.os
    ));
    for st in &p.stages {
        s.push_str(&format!("  - {}: {:.1} s\n", st.name, st.seconds));
    }
    s.push_str(&format!(
        "- total: {:.1} s (a resumed run lists the stages of every invocation)\n",
        p.total_seconds()
    ));
    s
}

/// Builds the report's panels from per-sample outcomes.
pub fn panels(
    outcomes: &Figure3Outcomes,
    models: &[String],
    kind: DatasetKind,
) -> Result<Vec<Panel>> {
    let ds = kind;
    PANELS
        .iter()
        .map(|&(name, norm)| {
            let epsilons = outcomes
                .epsilons
                .get(name)
                .with_context(|| format!("no epsilon grid for {name}"))?
                .clone();
            let per_model = outcomes
                .robust
                .get(name)
                .with_context(|| format!("no outcomes for {name}"))?;
            let curves = models
                .iter()
                .map(|m| {
                    let robust = per_model
                        .get(m)
                        .with_context(|| format!("no {name} outcomes for {m}"))?;
                    Ok(Curve {
                        model: m.clone(),
                        points: curve(&epsilons, robust)?,
                        non_monotone_samples: non_monotone_samples(robust),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Panel {
                norm: name.into(),
                table_epsilon: ds.epsilon(norm),
                epsilons,
                curves,
            })
        })
        .collect()
}

/// A finished Figure 3 run: its report and outcomes, not yet written (the caller draws the
/// charts, then calls [`write_data`]), and the still-held lock of its results folder.
pub struct Figure3Run {
    /// `results.json`.
    pub report: Figure3Report,
    /// `outcomes.json`.
    pub outcomes: Figure3Outcomes,
    /// The dataset.
    pub dataset: DatasetKind,
    /// The results folder.
    pub out_dir: PathBuf,
    /// Held until the outputs are written.
    pub lock: DirLock,
}

/// Computes Figure 3 for `spec` (on SVHN, or `spec.dataset`); `charts_have_text` is recorded in
/// the report for the caller's charts.
pub fn run(spec: &RunSpec, charts_have_text: bool) -> Result<Figure3Run> {
    let (kind, dir_name) = spec.experiment_dataset("fig3", DatasetKind::Svhn);
    let sizes = spec.eval_sizes();
    let ds = kind;
    let grids: BTreeMap<String, Vec<f64>> = PANELS
        .iter()
        .map(|&(name, norm)| (name.to_string(), epsilon_grid(kind, norm, spec.preset)))
        .collect();
    for &(name, norm) in &PANELS {
        check_grid(&grids[name], ds.epsilon(norm))?;
    }
    // The tables' checkpoint root: Table 4 (or the --dataset's table) and Figure 3 share models.
    let mut exp = Experiment::open(spec, &dir_name, kind, sizes.n_samples)?;
    let attack_sizes = attack_fingerprint(&sizes)?;
    let names: Vec<String> = MODEL_KINDS.iter().map(|k| k.name().to_string()).collect();
    let mut outcomes = Figure3Outcomes {
        samples: exp.subset.clone(),
        epsilons: grids.clone(),
        robust: BTreeMap::new(),
    };
    for (m_idx, &mk) in MODEL_KINDS.iter().enumerate() {
        let obtained = exp.obtain(mk)?;
        // The tables' column, inference seed and journal settings.
        let column = exp.column(m_idx, mk.name(), obtained, &sizes, None)?;
        let clean = exp.clean(&column, &sizes)?;
        let clf = column.classifier();
        let stochastic = column.is_stochastic();
        for &(name, norm) in &PANELS {
            let positive = &grids[name][1..];
            let pgd_cfg = pgd_config(&sizes, ds, norm, pgd_seed(spec.seed, norm)?);
            let label = format!("{} {name} pgd x{}", mk.name(), positive.len());
            let settings = serde_json::json!({
                "figure": "fig3",
                "row": format!("{name}-pgd"),
                "epsilons": positive,
                "pgd": pgd_cfg,
                "sizes": attack_sizes,
                "eot": stochastic,
                "model": column.settings,
            });
            let rec = exp.journaled(
                mk.name(),
                &format!("{name}-pgd-grid"),
                &label,
                &settings,
                positive.len(),
                sizes.batch_size,
                &mut |xs, ys| {
                    clf.begin_unit();
                    let c = Criterion::misclassification(ys.to_vec());
                    let pgd = Pgd::new(pgd_cfg.clone())?;
                    let outs = with_eot(clf, sizes.eot_samples, |m| {
                        Ok(attack_fixed(&pgd, m, xs, &c, positive)?)
                    })?;
                    Ok(rows_of(&outs))
                },
            )?;
            let mut robust = vec![clean.clone()];
            robust.extend(
                (0..positive.len()).map(|k| rec.iter().map(|r| r.robust[k]).collect::<Vec<_>>()),
            );
            outcomes
                .robust
                .entry(name.to_string())
                .or_default()
                .insert(mk.name().to_string(), robust);
        }
    }

    let config = serde_json::json!({
        "figure": "fig3",
        "dataset": kind.name(),
        "preset": spec.preset,
        "seed": spec.seed,
        "sizes": sizes,
        "epsilons": grids,
        "table_epsilons": { "linf": ds.epsilon(Norm::Linf), "l2": ds.epsilon(Norm::L2) },
        "pgd": PANELS
            .iter()
            .map(|&(name, norm)| Ok((name, pgd_config(&sizes, ds, norm, pgd_seed(spec.seed, norm)?))))
            .collect::<Result<BTreeMap<_, _>>>()?,
        "eot_samples_for_randomised_models": sizes.eot_samples,
        "models": names,
        "train": MODEL_KINDS.iter().map(|&k| exp.train_config(k)).collect::<Vec<_>>(),
        "checkpoints": exp.store,
    });
    let subset = exp.subset.clone();
    let (provenance, out_dir, lock) = exp.finish();
    let report = Figure3Report {
        figure: "fig3".into(),
        dataset: kind.name().into(),
        models: names.clone(),
        samples: subset,
        panels: panels(&outcomes, &names, kind)?,
        charts_have_text,
        config,
        provenance,
    };
    Ok(Figure3Run {
        report,
        outcomes,
        dataset: kind,
        out_dir,
        lock,
    })
}

/// Writes `outcomes.json`, `results.json` and `figure.md` (which links the charts the caller
/// writes beside them), each atomically.
pub fn write_data(dir: &Path, report: &Figure3Report, outcomes: &Figure3Outcomes) -> Result<()> {
    let kind: DatasetKind = report
        .dataset
        .parse()
        .with_context(|| format!("unknown dataset {}", report.dataset))?;
    crate::write_json(&dir.join("outcomes.json"), outcomes)?;
    crate::write_json(&dir.join("results.json"), report)?;
    crate::write_text(&dir.join("figure.md"), &to_markdown(report, kind))
}

pub use crate::verify::read;

/// The data half of `verify-results` for a Figure 3 directory: every file present and
/// well-formed, every point recomputed from `outcomes.json`, the clean points shared by both
/// panels. Returns the report, whose charts the caller checks.
pub fn verify_data(dir: &Path) -> Result<Figure3Report> {
    for f in ["figure.md", "results.json", "outcomes.json"] {
        ensure!(dir.join(f).is_file(), "{} is missing {f}", dir.display());
    }
    let report: Figure3Report = read(&dir.join("results.json"))?;
    let outcomes: Figure3Outcomes = read(&dir.join("outcomes.json"))?;
    let kind: DatasetKind = report
        .dataset
        .parse()
        .with_context(|| format!("results.json names an unknown dataset {}", report.dataset))?;
    let n = report.samples.len();
    ensure!(n > 0, "{}: no samples evaluated", dir.display());
    ensure!(
        outcomes.samples == report.samples,
        "outcomes.json and results.json list different samples"
    );
    ensure!(!report.models.is_empty(), "results.json lists no models");
    let names: Vec<String> = report.panels.iter().map(|p| p.norm.clone()).collect();
    ensure!(
        names == ["linf", "l2"],
        "expected panels linf and l2, found {names:?}"
    );
    let recomputed = panels(&outcomes, &report.models, kind)?;
    for (panel, again) in report.panels.iter().zip(&recomputed) {
        let norm = &panel.norm;
        check_grid(&panel.epsilons, panel.table_epsilon)
            .with_context(|| format!("panel {norm}"))?;
        ensure!(
            panel.epsilons == again.epsilons && panel.table_epsilon == again.table_epsilon,
            "panel {norm}: epsilons differ between results.json and outcomes.json"
        );
        ensure!(
            panel.curves.len() == report.models.len(),
            "panel {norm}: {} curves for {} models",
            panel.curves.len(),
            report.models.len()
        );
        for (c, c2) in panel.curves.iter().zip(&again.curves) {
            let m = &c.model;
            ensure!(m == &c2.model, "panel {norm}: curve {m} out of model order");
            let robust = &outcomes.robust[norm][m];
            ensure!(
                robust.iter().all(|r| r.len() == n),
                "{m} on {norm}: outcomes for other than {n} samples"
            );
            ensure!(
                robust[0] == outcomes.robust["linf"][m][0],
                "{m}: the clean point differs between the panels"
            );
            for (p, q) in c.points.iter().zip(&c2.points) {
                ensure!(
                    p.correct == q.correct
                        && p.total == q.total
                        && (p.percent - q.percent).abs() < 1e-9
                        && (p.interval.0 - q.interval.0).abs() < 1e-9
                        && (p.interval.1 - q.interval.1).abs() < 1e-9,
                    "{m} on {norm} at epsilon {}: results.json says {}/{} ({:.3}%, {:?}), the \
                     outcomes give {}/{} ({:.3}%, {:?})",
                    p.epsilon,
                    p.correct,
                    p.total,
                    p.percent,
                    p.interval,
                    q.correct,
                    q.total,
                    q.percent,
                    q.interval
                );
            }
            ensure!(
                c.points.len() == c2.points.len(),
                "{m} on {norm}: {} points for {} epsilons",
                c.points.len(),
                c2.points.len()
            );
            ensure!(
                c.non_monotone_samples == c2.non_monotone_samples,
                "{m} on {norm}: non-monotone count {} but the outcomes give {}",
                c.non_monotone_samples,
                c2.non_monotone_samples
            );
        }
    }
    if outcomes.robust.len() != PANELS.len() {
        bail!("outcomes.json has norms {:?}", outcomes.robust.keys());
    }
    ensure!(
        !report.provenance.commit.is_empty() && !report.provenance.stages.is_empty(),
        "results.json has no commit or no stage wall times in its provenance"
    );
    Ok(report)
}

/// A small synthetic result (no model involved), for tests of code that renders or checks
/// these results, here and in the tools built on them.
#[doc(hidden)]
pub fn synthetic() -> Result<(Figure3Report, Figure3Outcomes)> {
    use crate::provenance::{Hardware, Stage};
    let kind = DatasetKind::FashionMnist;
    let models = vec!["CNN".to_string(), "E-ABS".to_string()];
    let mut o = Figure3Outcomes {
        samples: vec![3, 5, 9],
        epsilons: BTreeMap::new(),
        robust: BTreeMap::new(),
    };
    for &(name, norm) in &PANELS {
        let grid = epsilon_grid(kind, norm, Preset::Smoke);
        let clean = vec![true, true, false];
        let per: BTreeMap<String, Vec<Vec<bool>>> = models
            .iter()
            .enumerate()
            .map(|(m, name)| {
                let mut rows = vec![clean.clone()];
                // CNN loses one sample per epsilon, E-ABS keeps its clean accuracy.
                rows.extend((1..grid.len()).map(|k| {
                    (0..3)
                        .map(|i| clean[i] && (m == 1 || i + k < 2))
                        .collect::<Vec<_>>()
                }));
                (name.clone(), rows)
            })
            .collect();
        o.epsilons.insert(name.into(), grid);
        o.robust.insert(name.into(), per);
    }
    let prov = Provenance {
        commit: "abc".into(),
        preset: "smoke".into(),
        seed: 0,
        device: "cpu".into(),
        hardware: Hardware::detect(),
        started_unix: 0,
        finished_unix: 1,
        stages: vec![Stage {
            name: "train CNN".into(),
            seconds: 1.0,
            commit: Some("abc".into()),
            finished_unix: Some(1),
            started_over: false,
        }],
        command: "cargo xtask reproduce fig3".into(),
    };
    let report = Figure3Report {
        figure: "fig3".into(),
        dataset: kind.name().into(),
        models: models.clone(),
        samples: o.samples.clone(),
        panels: panels(&o, &models, kind)?,
        charts_have_text: true,
        config: serde_json::json!({}),
        provenance: prov,
    };
    Ok((report, o))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_bracket_the_table_epsilons() -> Result<()> {
        for kind in DatasetKind::ALL {
            for &(_, norm) in &PANELS {
                let eps = kind.epsilon(norm);
                for preset in [Preset::Smoke, Preset::Quick, Preset::Paper] {
                    let grid = epsilon_grid(kind, norm, preset);
                    check_grid(&grid, eps)?;
                    assert!(*grid.last().unwrap() > eps, "{kind} {norm:?}: {grid:?}");
                    if preset == Preset::Smoke {
                        assert_eq!(grid.len(), 4, "{kind} {norm:?}: {grid:?}");
                    }
                }
            }
        }
        let svhn: Vec<f64> = epsilon_grid(DatasetKind::Svhn, Norm::Linf, Preset::Paper)
            .iter()
            .map(|e| (e * 255.0).round())
            .collect();
        assert_eq!(svhn, [0.0, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0]);
        assert_eq!(
            epsilon_grid(DatasetKind::Svhn, Norm::L2, Preset::Smoke),
            [0.0, 0.75, 1.5, 3.0]
        );
        assert!(check_grid(&[0.0, 0.2, 0.1], 0.1).is_err());
        assert!(check_grid(&[0.0, 0.2], 0.1).is_err());
        Ok(())
    }

    #[test]
    fn curve_counts_and_brackets_accuracy() -> Result<()> {
        // Four samples over three epsilons: 4/4, 2/4, 0/4 robust.
        let robust = vec![
            vec![true, true, true, true],
            vec![true, false, true, false],
            vec![false, false, false, false],
        ];
        let pts = curve(&[0.0, 0.5, 1.0], &robust)?;
        let got: Vec<(u64, f64)> = pts.iter().map(|p| (p.correct, p.percent)).collect();
        assert_eq!(got, [(4, 100.0), (2, 50.0), (0, 0.0)]);
        assert!(pts.iter().all(|p| p.total == 4));
        // R: binom.test(2, 4)$conf.int = 0.06758599 0.93241401
        assert!((pts[1].interval.0 - 6.758599).abs() < 1e-5);
        assert!((pts[1].interval.1 - 93.241401).abs() < 1e-5);
        assert_eq!(pts[0].interval.1, 100.0);
        assert_eq!(pts[2].interval.0, 0.0);
        assert!(curve(&[0.0, 0.5], &robust).is_err());
        Ok(())
    }

    #[test]
    fn non_monotone_samples_are_counted_once() {
        // Sample 0 monotone; 1 broken at eps 1 and robust at 2 (a miss); 2 broken clean and
        // robust twice later (one sample); 3 always robust.
        let robust = vec![
            vec![true, true, false, true],
            vec![true, false, true, true],
            vec![false, true, true, true],
        ];
        assert_eq!(non_monotone_samples(&robust), 2);
        assert_eq!(non_monotone_samples(&[]), 0);
    }

    #[test]
    fn data_verifies_and_tampering_is_caught() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (report, outcomes) = synthetic()?;
        assert_eq!(report.panels[0].curves[0].points[1].correct, 1);
        assert_eq!(report.panels[0].curves[1].points[3].correct, 2);
        write_data(dir.path(), &report, &outcomes)?;
        verify_data(dir.path())?;
        let md = std::fs::read_to_string(dir.path().join("figure.md"))?;
        assert!(
            md.contains("| 0.1 * | 0.0% [0.0, 70.8] | 66.7% [9.4, 99.2] |"),
            "{md}"
        );
        assert!(md.contains("![L_2 PGD](fig3-l2.svg)"), "{md}");
        // A flipped outcome no longer matches results.json.
        let mut bad = outcomes.clone();
        bad.robust.get_mut("l2").unwrap().get_mut("E-ABS").unwrap()[2][0] = false;
        crate::write_json(&dir.path().join("outcomes.json"), &bad)?;
        let err = verify_data(dir.path()).expect_err("tampered outcomes must fail");
        assert!(format!("{err:#}").contains("E-ABS on l2"), "{err:#}");
        Ok(())
    }
}
