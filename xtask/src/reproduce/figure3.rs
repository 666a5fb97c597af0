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
use eabs_attacks::{attack_fixed, Criterion, Eot, Norm, Pgd};
use eabs_datasets::{load, DatasetKind, Split};
use eabs_models::Family;
use eabs_stats::accuracy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::evaluate::{evaluate, select_subset};
use super::plot::{self, LineChart, Series};
use super::preset::{train_config, EvalSizes, PresetName};
use super::provenance::{git_revision, unix_time, Provenance, Timer};
use super::rows::{evaluate_clean, pgd_config, rows_of, ATTACK_ROWS};
use super::table::MODEL_KINDS;
use super::zoo::{attack_dataset, obtain, to_evaluated, Obtained};
use super::ReproduceArgs;

/// The two panels: (a) L_inf and (b) L_2, with the names used in files and JSON.
pub const PANELS: [(&str, Norm); 2] = [("linf", Norm::Linf), ("l2", Norm::L2)];

/// The epsilons of one panel, starting at 0 (clean) and containing the dataset's table epsilon.
///
/// SVHN and SuperTraffic-10 (L_inf 8/255): {0, 1, 2, 4, 6, 8, 10, 12, 16}/255; MNIST (0.3):
/// 0 to 0.4 in steps of 0.05; Fashion-MNIST (0.1): 0 to 0.12 in steps of 0.02, then 0.15 and
/// 0.2. L_2 (1.5 everywhere): 0 to 3 in steps of 0.25. The smoke preset keeps four points: 0,
/// the grid point nearest half the table epsilon, the table epsilon and the largest.
pub fn epsilon_grid(kind: DatasetKind, norm: Norm, preset: PresetName) -> Vec<f64> {
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
    if preset != PresetName::Smoke {
        return full;
    }
    let eps = attack_dataset(kind).epsilon(norm);
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

/// The seed of the tables' PGD row for `norm` (`linf` or `l2`), so that Figure 3 attacks a
/// deterministic model at the table's epsilon exactly as the table does.
pub fn pgd_seed(seed: u64, norm: &str) -> Result<u64> {
    let r_idx = ATTACK_ROWS
        .iter()
        .position(|r| r.norm == norm && r.attack == "pgd")
        .with_context(|| format!("the tables have no PGD row for {norm}"))?;
    Ok(seed.wrapping_mul(1000).wrapping_add(r_idx as u64))
}

/// Checks a grid: starts at 0, strictly increasing, contains `table_epsilon`.
fn check_grid(grid: &[f64], table_epsilon: f64) -> Result<()> {
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
fn x_axis(kind: DatasetKind, norm: &str) -> (f64, String) {
    match (norm, kind) {
        ("linf", DatasetKind::Svhn | DatasetKind::SuperTraffic10) => {
            (255.0, "L∞ perturbation size ε (× 1/255)".into())
        }
        ("linf", _) => (1.0, "L∞ perturbation size ε".into()),
        _ => (1.0, "L₂ perturbation size ε".into()),
    }
}

/// The chart of one panel.
fn chart(report: &Figure3Report, panel_idx: usize, kind: DatasetKind) -> LineChart {
    let panel = &report.panels[panel_idx];
    let (scale, x_label) = x_axis(kind, &panel.norm);
    let (letter, title) = if panel.norm == "linf" {
        ("a", "L∞")
    } else {
        ("b", "L₂")
    };
    let last = panel.epsilons.last().copied().unwrap_or(1.0);
    LineChart {
        title: format!(
            "Figure 3({letter}): accuracy under {title} PGD, {} ({} samples)",
            report.dataset,
            report.samples.len()
        ),
        x_label,
        y_label: "accuracy (%)".into(),
        x_range: (0.0, last * scale),
        // A little room around 0% and 100%, so markers there are not cut in half.
        y_range: (-3.0, 103.0),
        series: panel
            .curves
            .iter()
            .map(|c| Series {
                name: c.model.clone(),
                points: c
                    .points
                    .iter()
                    .map(|p| (p.epsilon * scale, p.percent))
                    .collect(),
            })
            .collect(),
        marker: Some((
            panel.table_epsilon * scale,
            format!("table ε = {}", fmt_eps(panel.table_epsilon, scale)),
        )),
    }
}

fn fmt_eps(e: f64, scale: f64) -> String {
    if scale == 255.0 {
        format!("{}/255", plot::trim_number(e * 255.0))
    } else {
        plot::trim_number(e)
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
fn panels(outcomes: &Figure3Outcomes, models: &[String], kind: DatasetKind) -> Result<Vec<Panel>> {
    let ds = attack_dataset(kind);
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

/// Runs `cargo xtask reproduce fig3`.
pub fn run(args: &ReproduceArgs, command: &str) -> Result<()> {
    let dir = reproduce(args, command)?;
    println!("{}", std::fs::read_to_string(dir.join("figure.md"))?);
    println!("results written to {}", dir.display());
    Ok(())
}

fn reproduce(args: &ReproduceArgs, command: &str) -> Result<PathBuf> {
    let started = unix_time();
    // The revision of the code that runs: read now, since the tree may change during a long run.
    let commit = git_revision(Path::new("."));
    let (kind, dir_name) = args.experiment_dataset("fig3", DatasetKind::Svhn);
    let device = args.device.device()?;
    let sizes = {
        let mut s = EvalSizes::of(args.preset);
        if let Some(n) = args.samples {
            s.n_samples = n;
        }
        s
    };
    let family = Family::from(kind);
    let ds = attack_dataset(kind);
    let data_dir = args.data_dir.as_deref();
    let out_dir = args.out.join(&dir_name).join(args.preset.as_str());
    // One run per results folder: a second fails at once, naming the first.
    let _lock = crate::lock::DirLock::acquire(&out_dir, "results folder")?;
    // The tables' checkpoint root: Table 4 (or the --dataset's table) and Figure 3 share models.
    let ckpt_root = args.model_store(family);
    let journal_root = out_dir.join("journal").join(format!("seed{}", args.seed));
    // Stage times survive interruptions: a resumed run reports every invocation's time.
    let mut timer = Timer::resumable(&journal_root.join("stages.jsonl"), &commit)?;
    let grids: BTreeMap<String, Vec<f64>> = PANELS
        .iter()
        .map(|&(name, norm)| (name.to_string(), epsilon_grid(kind, norm, args.preset)))
        .collect();
    for &(name, norm) in &PANELS {
        check_grid(&grids[name], ds.epsilon(norm))?;
    }
    let (train, val, test) = timer.stage("load data", || {
        Ok((
            load(kind, Split::Train, data_dir, args.seed)?,
            load(kind, Split::Validation, data_dir, args.seed)?,
            load(kind, Split::Test, data_dir, args.seed)?,
        ))
    })?;
    let subset = select_subset(test.len(), sizes.n_samples, args.seed)?;
    // What the journals are bound to: the test images and labels, by content.
    let test_sha256 = test.content_sha256();
    // The journal may be resumed by any run with the same attack sizes (not the batch size or
    // the number of samples, which the per-sample records check themselves).
    let mut attack_sizes = serde_json::to_value(&sizes)?;
    if let Some(o) = attack_sizes.as_object_mut() {
        o.remove("n_samples");
        o.remove("batch_size");
    }

    let names: Vec<String> = MODEL_KINDS.iter().map(|k| k.name().to_string()).collect();
    let mut outcomes = Figure3Outcomes {
        samples: subset.clone(),
        epsilons: grids.clone(),
        robust: BTreeMap::new(),
    };
    for (m_idx, &mk) in MODEL_KINDS.iter().enumerate() {
        let Obtained { model, checkpoint } = obtain(
            mk,
            family,
            args.preset,
            args.seed,
            &ckpt_root,
            &train,
            &val,
            &device,
            &mut timer,
        )?;
        // The tables' inference seed for this column.
        let evaluated = to_evaluated(model, &sizes, None, args.seed.wrapping_add(m_idx as u64))?;
        let clf = evaluated.classifier();
        let stochastic = clf.is_stochastic();
        let journal = |row: &str| journal_root.join(mk.name()).join(format!("{row}.jsonl"));
        let model_settings = serde_json::json!({
            "model": mk.name(),
            "train": train_config(args.preset, family, mk, args.seed),
            "checkpoint_sha256": checkpoint.sha256,
            "test_data_sha256": test_sha256,
            "inference_sizes": { "n_candidates": sizes.n_candidates, "n_adam_steps": sizes.n_adam_steps },
            "seed": args.seed,
        });
        let label = format!("{} clean", mk.name());
        let clean = evaluate_clean(
            &mut timer,
            &label,
            &journal("clean"),
            &model_settings,
            &test,
            &subset,
            sizes.batch_size,
            &device,
            clf,
        )?;
        for &(name, norm) in &PANELS {
            let positive = &grids[name][1..];
            let pgd_cfg = pgd_config(&sizes, ds, norm, pgd_seed(args.seed, name)?);
            let label = format!("{} {name} pgd x{}", mk.name(), positive.len());
            let rec = timer.stage(&label, || {
                evaluate(
                    &journal(&format!("{name}-pgd-grid")),
                    &serde_json::json!({
                        "figure": "fig3",
                        "row": format!("{name}-pgd"),
                        "epsilons": positive,
                        "pgd": pgd_cfg,
                        "sizes": attack_sizes,
                        "eot": stochastic,
                        "model": model_settings,
                    }),
                    &label,
                    &test,
                    &subset,
                    positive.len(),
                    sizes.batch_size,
                    &device,
                    &mut |xs, ys| {
                        let c = Criterion::misclassification(ys.to_vec());
                        let pgd = Pgd::new(pgd_cfg.clone())?;
                        let outs = if stochastic {
                            let eot = Eot::new(clf, sizes.eot_samples)?;
                            attack_fixed(&pgd, &eot, xs, &c, positive)?
                        } else {
                            attack_fixed(&pgd, clf, xs, &c, positive)?
                        };
                        Ok(rows_of(&outs))
                    },
                )
            })?;
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
        "preset": args.preset,
        "seed": args.seed,
        "sizes": sizes,
        "epsilons": grids,
        "table_epsilons": { "linf": ds.epsilon(Norm::Linf), "l2": ds.epsilon(Norm::L2) },
        "pgd": PANELS
            .iter()
            .map(|&(name, norm)| Ok((name, pgd_config(&sizes, ds, norm, pgd_seed(args.seed, name)?))))
            .collect::<Result<BTreeMap<_, _>>>()?,
        "eot_samples_for_randomised_models": sizes.eot_samples,
        "models": names,
        "train": MODEL_KINDS.iter().map(|&k| train_config(args.preset, family, k, args.seed)).collect::<Vec<_>>(),
        "checkpoints": ckpt_root,
    });
    let provenance = Provenance::of_reproduce(commit, args, started, timer, command);
    let report = Figure3Report {
        figure: "fig3".into(),
        dataset: kind.name().into(),
        models: names.clone(),
        samples: subset,
        panels: panels(&outcomes, &names, kind)?,
        charts_have_text: plot::font().is_some(),
        config,
        provenance,
    };
    write_outputs(&out_dir, &report, &outcomes, kind)?;
    Ok(out_dir)
}

/// Writes the charts, `results.json`, `outcomes.json` and `figure.md`, each atomically.
fn write_outputs(
    dir: &Path,
    report: &Figure3Report,
    outcomes: &Figure3Outcomes,
    kind: DatasetKind,
) -> Result<()> {
    for (i, panel) in report.panels.iter().enumerate() {
        let c = chart(report, i, kind);
        super::write_text(&dir.join(format!("fig3-{}.svg", panel.norm)), &c.to_svg()?)?;
        super::provenance::write_atomic(
            &dir.join(format!("fig3-{}.png", panel.norm)),
            &c.to_png()?,
        )?;
    }
    super::write_json(&dir.join("outcomes.json"), outcomes)?;
    super::write_json(&dir.join("results.json"), report)?;
    super::write_text(&dir.join("figure.md"), &to_markdown(report, kind))
}

fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not well-formed", path.display()))
}

/// `verify-results` for a Figure 3 directory: every file present and well-formed, every point
/// recomputed from `outcomes.json`, the clean points shared by both panels, each chart drawn
/// with one polyline per model with one vertex per epsilon.
pub fn verify(dir: &Path) -> Result<()> {
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
        let svg_path = dir.join(format!("fig3-{norm}.svg"));
        let svg = std::fs::read_to_string(&svg_path)
            .with_context(|| format!("reading {}", svg_path.display()))?;
        let lines = plot::svg_polylines(&svg);
        for (i, m) in report.models.iter().enumerate() {
            let (r, g, b) = plot::PALETTE[i % plot::PALETTE.len()];
            let colour = format!("#{r:02X}{g:02X}{b:02X}");
            let mine: Vec<usize> = lines
                .iter()
                .filter(|(c, _)| *c == colour)
                .map(|(_, k)| *k)
                .collect();
            ensure!(
                mine == [panel.epsilons.len()],
                "{}: {m}'s curve should be one polyline of {} points, found {mine:?}",
                svg_path.display(),
                panel.epsilons.len()
            );
        }
        let png_path = dir.join(format!("fig3-{norm}.png"));
        let img =
            image::open(&png_path).with_context(|| format!("decoding {}", png_path.display()))?;
        ensure!(
            (img.width(), img.height()) == plot::CHART_SIZE,
            "{}: {}x{} pixels, expected {:?}",
            png_path.display(),
            img.width(),
            img.height(),
            plot::CHART_SIZE
        );
    }
    if outcomes.robust.len() != PANELS.len() {
        bail!("outcomes.json has norms {:?}", outcomes.robust.keys());
    }
    ensure!(
        !report.provenance.commit.is_empty() && !report.provenance.stages.is_empty(),
        "results.json has no commit or no stage wall times in its provenance"
    );
    println!(
        "{}: complete and consistent (Figure 3, {} models, {} + {} epsilons, {n} samples)",
        dir.display(),
        report.models.len(),
        report.panels[0].epsilons.len(),
        report.panels[1].epsilons.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reproduce::provenance::{Hardware, Stage};

    #[test]
    fn grids_bracket_the_table_epsilons() -> Result<()> {
        for kind in DatasetKind::ALL {
            for &(_, norm) in &PANELS {
                let eps = attack_dataset(kind).epsilon(norm);
                for preset in [PresetName::Smoke, PresetName::Quick, PresetName::Paper] {
                    let grid = epsilon_grid(kind, norm, preset);
                    check_grid(&grid, eps)?;
                    assert!(*grid.last().unwrap() > eps, "{kind} {norm:?}: {grid:?}");
                    if preset == PresetName::Smoke {
                        assert_eq!(grid.len(), 4, "{kind} {norm:?}: {grid:?}");
                    }
                }
            }
        }
        let svhn: Vec<f64> = epsilon_grid(DatasetKind::Svhn, Norm::Linf, PresetName::Paper)
            .iter()
            .map(|e| (e * 255.0).round())
            .collect();
        assert_eq!(svhn, [0.0, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0]);
        assert_eq!(
            epsilon_grid(DatasetKind::Svhn, Norm::L2, PresetName::Smoke),
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

    /// A two-model report on synthetic outcomes (for the tests here).
    fn synthetic() -> Result<(Figure3Report, Figure3Outcomes)> {
        let kind = DatasetKind::FashionMnist;
        let models = vec!["CNN".to_string(), "E-ABS".to_string()];
        let mut o = Figure3Outcomes {
            samples: vec![3, 5, 9],
            epsilons: BTreeMap::new(),
            robust: BTreeMap::new(),
        };
        for &(name, norm) in &PANELS {
            let grid = epsilon_grid(kind, norm, PresetName::Smoke);
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
            }],
            command: "cargo xtask reproduce fig3".into(),
        };
        let report = Figure3Report {
            figure: "fig3".into(),
            dataset: kind.name().into(),
            models: models.clone(),
            samples: o.samples.clone(),
            panels: panels(&o, &models, kind)?,
            charts_have_text: plot::font().is_some(),
            config: serde_json::json!({}),
            provenance: prov,
        };
        Ok((report, o))
    }

    #[test]
    fn outputs_verify_and_tampering_is_caught() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (report, outcomes) = synthetic()?;
        let kind = DatasetKind::FashionMnist;
        assert_eq!(report.panels[0].curves[0].points[1].correct, 1);
        assert_eq!(report.panels[0].curves[1].points[3].correct, 2);
        write_outputs(dir.path(), &report, &outcomes, kind)?;
        super::super::plot::verify(dir.path())?;
        let md = std::fs::read_to_string(dir.path().join("figure.md"))?;
        assert!(
            md.contains("| 0.1 * | 0.0% [0.0, 70.8] | 66.7% [9.4, 99.2] |"),
            "{md}"
        );
        assert!(md.contains("![L_2 PGD](fig3-l2.svg)"), "{md}");
        // A flipped outcome no longer matches results.json.
        let mut bad = outcomes.clone();
        bad.robust.get_mut("l2").unwrap().get_mut("E-ABS").unwrap()[2][0] = false;
        super::super::write_json(&dir.path().join("outcomes.json"), &bad)?;
        let err = verify(dir.path()).expect_err("tampered outcomes must fail");
        assert!(format!("{err:#}").contains("E-ABS on l2"), "{err:#}");
        // A chart that lost a curve is caught.
        write_outputs(dir.path(), &report, &outcomes, kind)?;
        let svg_path = dir.path().join("fig3-linf.svg");
        let svg = std::fs::read_to_string(&svg_path)?;
        std::fs::write(&svg_path, svg.replace("#1F77B4", "#000001"))?;
        let err = verify(dir.path()).expect_err("a chart without the CNN curve must fail");
        assert!(format!("{err:#}").contains("CNN's curve"), "{err:#}");
        Ok(())
    }
}
