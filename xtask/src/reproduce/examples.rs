//! Figures 4 and 5: "E-ABS's adversarial examples on MNIST [SVHN] under PGD-L_2 attack. Top:
//! Clean images. Bottom: Adversarial examples." (Section 4.6, where the paper argues that E-ABS's
//! adversarials are semantically meaningful on MNIST but not on SVHN.)
//!
//! E-ABS is the tables' own model (same checkpoint root as Table 1 for `fig4`, Table 4 for
//! `fig5`, or the `--dataset`'s table), frozen with its variational inference and the tables'
//! inference seed, and attacked through EOT with the tables' PGD-L_2 (Section 4.2, at the
//! preset's sizes, the tables' seed for that row) at the dataset's L_2 epsilon, on the first
//! columns of the seeded evaluation subset the tables use.
//!
//! One draw of the EOT-averaged model classifies the clean and the adversarial images of a batch
//! together, so the predictions shown and the success flags come from the same evaluation
//! (calling a randomised model twice could disagree with itself). Success is Foolbox's
//! untargeted criterion: the adversarial is classified other than the label (a misclassified
//! clean image counts as a success, as in the tables).
//!
//! Output in `results/<fig4 | fig4-<dataset> | fig5 | ...>/<preset>/`: `<figure>.png` (clean
//! row above adversarial row, 4x nearest-neighbour, 2-pixel gray separators, a bar under each
//! column: red where the attack succeeded, green where E-ABS resisted), `adversarials.safetensors`
//! (clean and adversarial images in f32, labels, test indices: lossless, to re-check),
//! `results.json` (per column: test index, label, predictions, distances, success) and
//! `figure.md` (the caption). Nothing is journaled: the ten attacks take seconds to minutes, and
//! a rerun with the same arguments recomputes the same images (every seed is fixed).

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use eabs_attacks::{
    clip_to_ball, validate_inputs, Criterion, Eot, FixedEpsilonAttack, Norm, Pgd, PgdConfig,
};
use eabs_core::Differentiable;
use eabs_datasets::{load, DatasetKind, Split};
use eabs_models::{Family, ModelKind};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::evaluate::select_subset;
use super::plot::{self, GridLayout};
use super::preset::{train_config, EvalSizes, PresetName};
use super::provenance::{git_revision, unix_time, Provenance, Timer};
use super::rows::pgd_config;
use super::table::MODEL_KINDS;
use super::zoo::{attack_dataset, obtain, to_evaluated, Obtained};
use super::ReproduceArgs;

/// Columns of the paper's figures (and of `quick`); `smoke` shows four.
pub fn n_columns(preset: PresetName) -> usize {
    match preset {
        PresetName::Smoke => 4,
        PresetName::Quick | PresetName::Paper => 10,
    }
}

/// Layout of the grid: 4x nearest-neighbour, 2-pixel separators, a 6-pixel success bar.
pub fn layout(shape: (usize, usize, usize)) -> GridLayout {
    GridLayout {
        shape,
        scale: 4,
        sep: 2,
        mark_height: 6,
    }
}

/// Bar colour under a column whose attack succeeded (tab10 red) or failed (tab10 green).
pub fn mark(success: bool) -> [u8; 3] {
    if success {
        [214, 39, 40]
    } else {
        [44, 160, 44]
    }
}

/// One column of the figure.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Column {
    /// Position in the figure, from 0.
    pub column: usize,
    /// Index in the test split.
    pub test_index: usize,
    /// True label.
    pub label: u32,
    /// Name of the true label's class.
    pub label_name: String,
    /// E-ABS's prediction on the clean image.
    pub clean_prediction: u32,
    /// E-ABS's prediction on the adversarial image.
    pub adversarial_prediction: u32,
    /// L_2 distance of the adversarial from the clean image (at most the epsilon).
    pub l2_distance: f64,
    /// L_inf distance, for reference.
    pub linf_distance: f64,
    /// The adversarial is misclassified (`adversarial_prediction != label`).
    pub success: bool,
}

/// `results.json` of a Figure 4 / 5 run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExamplesReport {
    /// `fig4` or `fig5` (how `verify-results` recognises the directory).
    pub figure: String,
    /// Dataset name.
    pub dataset: String,
    /// The attacked model (`E-ABS`).
    pub model: String,
    /// L_2 epsilon of the attack (the tables').
    pub epsilon: f64,
    /// The PGD configuration, seed included.
    pub pgd: PgdConfig,
    /// EOT passes per gradient and per prediction (1: the model is deterministic, no EOT).
    pub eot_samples: usize,
    /// `(channels, height, width)` of the images.
    pub shape: (usize, usize, usize),
    /// The columns, left to right.
    pub columns: Vec<Column>,
    /// The grid image's file name.
    pub image: String,
    /// The exact configuration of the run.
    pub config: serde_json::Value,
    /// Where the numbers came from.
    pub provenance: Provenance,
}

/// Attacks a batch with PGD at `eps` and classifies its clean and adversarial images in one
/// draw of `model`. Returns the adversarials `(b, c, h, w)` and the per-sample clean and
/// adversarial predictions, L_2 and L_inf distances.
#[allow(clippy::type_complexity)]
fn attack_batch<M: Differentiable + ?Sized>(
    model: &M,
    xs: &Tensor,
    labels: &[u32],
    cfg: &PgdConfig,
    eps: f64,
) -> Result<(Tensor, Vec<u32>, Vec<u32>, Vec<f64>, Vec<f64>)> {
    let c = Criterion::misclassification(labels.to_vec());
    validate_inputs(model, xs, &c)?;
    let pgd = Pgd::new(cfg.clone())?;
    let raw = FixedEpsilonAttack::run(&pgd, model, xs, &c, eps)?;
    // Foolbox's scoring (`attack_fixed`): project onto the ball and into the bounds.
    let adv = clip_to_ball(model, Norm::L2, xs, &raw, eps)?;
    let both = Tensor::cat(&[xs, &adv], 0)?;
    let pred = model
        .logits(&both)?
        .argmax(D::Minus1)?
        .to_dtype(DType::U32)?
        .to_vec1::<u32>()?;
    let b = labels.len();
    let l2 = Norm::L2.distances(&adv, xs)?;
    let linf = Norm::Linf.distances(&adv, xs)?;
    Ok((adv, pred[..b].to_vec(), pred[b..].to_vec(), l2, linf))
}

/// Runs `cargo xtask reproduce fig4` (`default` MNIST) or `fig5` (`default` SVHN).
pub fn run(figure: &str, default: DatasetKind, args: &ReproduceArgs, command: &str) -> Result<()> {
    let dir = reproduce(figure, default, args, command)?;
    println!("{}", std::fs::read_to_string(dir.join("figure.md"))?);
    println!("results written to {}", dir.display());
    Ok(())
}

fn reproduce(
    figure: &str,
    default: DatasetKind,
    args: &ReproduceArgs,
    command: &str,
) -> Result<PathBuf> {
    let started = unix_time();
    let commit = git_revision(Path::new("."));
    let (kind, dir_name) = args.experiment_dataset(figure, default);
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
    let ckpt_root = args.model_store(family);
    let mut timer = Timer::new();
    let (train, val, test) = timer.stage("load data", || {
        Ok((
            load(kind, Split::Train, data_dir, args.seed)?,
            load(kind, Split::Validation, data_dir, args.seed)?,
            load(kind, Split::Test, data_dir, args.seed)?,
        ))
    })?;
    // The tables' evaluation subset; the figure shows its first columns.
    let subset = select_subset(test.len(), sizes.n_samples, args.seed)?;
    // What the journals are bound to: the test images and labels, by content.
    let test_sha256 = test.content_sha256();
    let idx: Vec<usize> = subset[..n_columns(args.preset).min(subset.len())].to_vec();

    let mk = ModelKind::E_ABS;
    let m_idx = MODEL_KINDS
        .iter()
        .position(|&k| k == mk)
        .context("E-ABS is not a column of the tables")?;
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
    let evaluated = to_evaluated(model, &sizes, None, args.seed.wrapping_add(m_idx as u64))?;
    let clf = evaluated.classifier();
    let stochastic = clf.is_stochastic();
    let eot_samples = if stochastic { sizes.eot_samples } else { 1 };
    let pgd = pgd_config(
        &sizes,
        ds,
        Norm::L2,
        super::figure3::pgd_seed(args.seed, "l2")?,
    );
    let eps = ds.epsilon(Norm::L2);
    let labels: Vec<u32> = idx.iter().map(|&i| u32::from(test.labels[i])).collect();
    let xs = test.images_tensor(&idx, &device)?;

    let label = format!("{} l2 pgd, {} images", mk.name(), idx.len());
    let (adv, clean_pred, adv_pred, l2, linf) = timer.stage(&label, || {
        let mut parts = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (k, chunk) in idx.chunks(sizes.batch_size.max(1)).enumerate() {
            let start = k * sizes.batch_size.max(1);
            let xb = xs.narrow(0, start, chunk.len())?;
            let lb = &labels[start..start + chunk.len()];
            let (a, cp, ap, d2, di) = if stochastic {
                attack_batch(&Eot::new(clf, sizes.eot_samples)?, &xb, lb, &pgd, eps)?
            } else {
                attack_batch(clf, &xb, lb, &pgd, eps)?
            };
            parts.0.push(a);
            parts.1.extend(cp);
            parts.2.extend(ap);
            parts.3.extend(d2);
            parts.4.extend(di);
        }
        Ok((
            Tensor::cat(&parts.0, 0)?,
            parts.1,
            parts.2,
            parts.3,
            parts.4,
        ))
    })?;
    let columns: Vec<Column> = (0..idx.len())
        .map(|j| Column {
            column: j,
            test_index: idx[j],
            label: labels[j],
            label_name: test
                .class_names
                .get(labels[j] as usize)
                .cloned()
                .unwrap_or_else(|| labels[j].to_string()),
            clean_prediction: clean_pred[j],
            adversarial_prediction: adv_pred[j],
            l2_distance: l2[j],
            linf_distance: linf[j],
            success: adv_pred[j] != labels[j],
        })
        .collect();

    let shape = test.image_shape();
    let config = serde_json::json!({
        "figure": figure,
        "dataset": kind.name(),
        "preset": args.preset,
        "seed": args.seed,
        "sizes": sizes,
        "columns": idx.len(),
        "epsilon": eps,
        "pgd": pgd,
        "eot_samples": eot_samples,
        "model": mk.name(),
        "inference_seed": args.seed.wrapping_add(m_idx as u64),
        "train": train_config(args.preset, family, mk, args.seed),
            "checkpoint": checkpoint,
            "test_data_sha256": test_sha256,
        "checkpoints": ckpt_root,
    });
    let provenance = Provenance::of_reproduce(commit, args, started, timer, command);
    let report = ExamplesReport {
        figure: figure.into(),
        dataset: kind.name().into(),
        model: mk.name().into(),
        epsilon: eps,
        pgd,
        eot_samples,
        shape,
        columns,
        image: format!("{figure}.png"),
        config,
        provenance,
    };
    write_outputs(&out_dir, &report, &xs, &adv)?;
    Ok(out_dir)
}

/// The grid: clean images above their adversarials, a success bar under each column.
fn grid_png(report: &ExamplesReport, clean: &Tensor, adv: &Tensor) -> Result<Vec<u8>> {
    let n = report.columns.len();
    let clean = clean.flatten_from(1)?.to_vec2::<f32>()?;
    let adv = adv.flatten_from(1)?.to_vec2::<f32>()?;
    ensure!(
        clean.len() == n && adv.len() == n,
        "{} clean and {} adversarial images for {n} columns",
        clean.len(),
        adv.len()
    );
    let rows: Vec<Vec<&[f32]>> = vec![
        clean.iter().map(|v| v.as_slice()).collect(),
        adv.iter().map(|v| v.as_slice()).collect(),
    ];
    let marks: Vec<[u8; 3]> = report.columns.iter().map(|c| mark(c.success)).collect();
    plot::encode_png(&plot::image_grid(&rows, layout(report.shape), &marks)?)
}

/// Renders `figure.md`: the caption, the image, and one table row per column.
pub fn to_markdown(r: &ExamplesReport) -> String {
    let number = if r.figure == "fig4" { "4" } else { "5" };
    let n = r.columns.len();
    let n_success = r.columns.iter().filter(|c| c.success).count();
    let n_clean = r
        .columns
        .iter()
        .filter(|c| c.clean_prediction == c.label)
        .count();
    let p = &r.provenance;
    let eot = if r.eot_samples > 1 {
        format!(", through EOT with {} passes", r.eot_samples)
    } else {
        String::new()
    };
    let mut s = format!(
        "# Figure {number} ({}): {}'s adversarial examples under PGD-L_2\n\n\
         ![Figure {number}]({})\n\n\
         Top: clean images. Bottom: adversarial examples (PGD-L_2 at epsilon = {}, {} steps, {} \
         random start(s){eot}). The bar under each column is red where the attack succeeded \
         (the adversarial is misclassified) and green where {} still classifies it correctly. \
         The attack succeeded on {n_success} of {n} images (Foolbox's criterion: a clean image \
         that is already misclassified counts as a success); clean accuracy {n_clean}/{n}. Preset `{}`, seed {}, commit `{}`.\n\n\
         | column | test index | label | clean prediction | adversarial prediction | L_2 | L_inf | attack |\n\
         |---|---|---|---|---|---|---|---|\n",
        r.dataset,
        r.model,
        r.image,
        plot::trim_number(r.epsilon),
        r.pgd.steps,
        r.pgd.restarts,
        r.model,
        p.preset,
        p.seed,
        p.commit
    );
    for c in &r.columns {
        s.push_str(&format!(
            "| {} | {} | {} ({}) | {} | {} | {:.3} | {:.3} | {} |\n",
            c.column + 1,
            c.test_index,
            c.label,
            c.label_name,
            c.clean_prediction,
            c.adversarial_prediction,
            c.l2_distance,
            c.linf_distance,
            match (c.success, c.clean_prediction == c.label) {
                (false, _) => "failed",
                (true, true) => "succeeded",
                (true, false) => "succeeded (clean misclassified)",
            }
        ));
    }
    s.push_str(&format!(
        "\nThe images are in `adversarials.safetensors` (`clean`, `adversarial`: f32 (n, c, h, w) \
         in [0, 1]; `labels`, `test_indices`: u32).\n\n## Provenance\n\n- command: `{}`\n- \
         hardware: {} ({} cores, {} GiB), {}\n- wall time per stage:\n",
        p.command, p.hardware.cpu, p.hardware.cores, p.hardware.memory_gib, p.hardware.os
    ));
    for st in &p.stages {
        s.push_str(&format!("  - {}: {:.1} s\n", st.name, st.seconds));
    }
    s
}

/// Writes the grid, the images, `results.json` and `figure.md`, each atomically.
fn write_outputs(dir: &Path, report: &ExamplesReport, clean: &Tensor, adv: &Tensor) -> Result<()> {
    let cpu = Device::Cpu;
    let n = report.columns.len();
    let u32s = |v: Vec<u32>| Tensor::from_vec(v, n, &cpu);
    let tensors: HashMap<String, Tensor> = [
        ("clean".to_string(), clean.to_device(&cpu)?),
        ("adversarial".to_string(), adv.to_device(&cpu)?),
        (
            "labels".to_string(),
            u32s(report.columns.iter().map(|c| c.label).collect())?,
        ),
        (
            "test_indices".to_string(),
            u32s(
                report
                    .columns
                    .iter()
                    .map(|c| u32::try_from(c.test_index))
                    .collect::<std::result::Result<_, _>>()?,
            )?,
        ),
    ]
    .into_iter()
    .collect();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Atomic: written beside, then renamed over.
    let path = dir.join("adversarials.safetensors");
    let tmp = dir.join(format!(
        ".adversarials.safetensors.{}.tmp",
        std::process::id()
    ));
    candle_core::safetensors::save(&tensors, &tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    super::provenance::write_atomic(&dir.join(&report.image), &grid_png(report, clean, adv)?)?;
    super::write_json(&dir.join("results.json"), report)?;
    super::write_text(&dir.join("figure.md"), &to_markdown(report))
}

/// `verify-results` for a Figure 4 / 5 directory: the files present and well-formed; the saved
/// images consistent with `results.json` (shapes, labels, test indices, in [0, 1]); every
/// distance recomputed and within the epsilon; success equal to "prediction != label"; and the
/// PNG pixel-identical to the grid redrawn from the saved images.
pub fn verify(dir: &Path) -> Result<()> {
    let results = dir.join("results.json");
    let text = std::fs::read_to_string(&results)
        .with_context(|| format!("reading {}", results.display()))?;
    let r: ExamplesReport = serde_json::from_str(&text)
        .with_context(|| format!("{} is not well-formed", results.display()))?;
    for f in ["figure.md", "adversarials.safetensors", r.image.as_str()] {
        ensure!(dir.join(f).is_file(), "{} is missing {f}", dir.display());
    }
    let n = r.columns.len();
    ensure!(n > 0, "{}: no columns", results.display());
    let st_path = dir.join("adversarials.safetensors");
    let t = candle_core::safetensors::load(&st_path, &Device::Cpu)
        .with_context(|| format!("reading {}", st_path.display()))?;
    let get = |name: &str| {
        t.get(name)
            .with_context(|| format!("{} has no tensor `{name}`", st_path.display()))
    };
    let (clean, adv) = (get("clean")?, get("adversarial")?);
    let (c, h, w) = r.shape;
    for (name, x) in [("clean", clean), ("adversarial", adv)] {
        ensure!(
            x.dims() == [n, c, h, w] && x.dtype() == DType::F32,
            "{}: `{name}` is {:?} {:?}, expected f32 {:?}",
            st_path.display(),
            x.dtype(),
            x.dims(),
            [n, c, h, w]
        );
        let (lo, hi) = (
            x.flatten_all()?.min(0)?.to_scalar::<f32>()?,
            x.flatten_all()?.max(0)?.to_scalar::<f32>()?,
        );
        ensure!(
            lo >= 0.0 && hi <= 1.0,
            "{}: `{name}` leaves [0, 1] ({lo}..{hi})",
            st_path.display()
        );
    }
    let labels = get("labels")?.to_vec1::<u32>()?;
    let test_indices = get("test_indices")?.to_vec1::<u32>()?;
    let l2 = Norm::L2.distances(adv, clean)?;
    let linf = Norm::Linf.distances(adv, clean)?;
    for (j, col) in r.columns.iter().enumerate() {
        ensure!(col.column == j, "column {j} is numbered {}", col.column);
        ensure!(
            labels[j] == col.label && test_indices[j] as usize == col.test_index,
            "column {j}: results.json says test index {} label {}, the saved images {} / {}",
            col.test_index,
            col.label,
            test_indices[j],
            labels[j]
        );
        ensure!(
            col.success == (col.adversarial_prediction != col.label),
            "column {j}: success {} but adversarial prediction {} and label {}",
            col.success,
            col.adversarial_prediction,
            col.label
        );
        // f32 images: the distances agree to f32 rounding.
        ensure!(
            (l2[j] - col.l2_distance).abs() <= 1e-4 * (1.0 + col.l2_distance)
                && (linf[j] - col.linf_distance).abs() <= 1e-4,
            "column {j}: the saved images are {} (L_2) / {} (L_inf) apart, results.json says {} / {}",
            l2[j],
            linf[j],
            col.l2_distance,
            col.linf_distance
        );
        ensure!(
            l2[j] <= r.epsilon * (1.0 + 1e-4),
            "column {j}: L_2 distance {} exceeds epsilon {}",
            l2[j],
            r.epsilon
        );
    }
    let png_path = dir.join(&r.image);
    let png = image::open(&png_path)
        .with_context(|| format!("decoding {}", png_path.display()))?
        .to_rgb8();
    let redrawn = image::load_from_memory(&grid_png(&r, clean, adv)?)?.to_rgb8();
    ensure!(
        png == redrawn,
        "{} is not the grid of the saved images ({}x{} vs {}x{} pixels, or other pixels)",
        png_path.display(),
        png.width(),
        png.height(),
        redrawn.width(),
        redrawn.height()
    );
    ensure!(
        !r.provenance.commit.is_empty() && !r.provenance.stages.is_empty(),
        "results.json has no commit or no stage wall times in its provenance"
    );
    println!(
        "{}: complete and consistent ({}, {n} columns, {} attacks succeeded)",
        dir.display(),
        r.figure,
        r.columns.iter().filter(|c| c.success).count()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reproduce::provenance::{Hardware, Stage};

    /// A two-column report on 1x2x2 images: column 0 moved by 0.3 in one pixel (L_2 0.3),
    /// column 1 unchanged.
    fn synthetic() -> Result<(ExamplesReport, Tensor, Tensor)> {
        let cpu = Device::Cpu;
        let clean = Tensor::from_vec(
            vec![0.0f32, 0.5, 1.0, 0.25, 0.1, 0.2, 0.3, 0.4],
            (2, 1, 2, 2),
            &cpu,
        )?;
        let adv = Tensor::from_vec(
            vec![0.3f32, 0.5, 1.0, 0.25, 0.1, 0.2, 0.3, 0.4],
            (2, 1, 2, 2),
            &cpu,
        )?;
        let col = |j: usize, pred: u32, d: f64| Column {
            column: j,
            test_index: 10 * j + 7,
            label: 3,
            label_name: "Dress".into(),
            clean_prediction: 3,
            adversarial_prediction: pred,
            l2_distance: d,
            linf_distance: d,
            success: pred != 3,
        };
        let report = ExamplesReport {
            figure: "fig4".into(),
            dataset: "fashion-mnist".into(),
            model: "E-ABS".into(),
            epsilon: 1.5,
            pgd: PgdConfig::paper(Norm::L2, 1),
            eot_samples: 2,
            shape: (1, 2, 2),
            columns: vec![col(0, 6, 0.3), col(1, 3, 0.0)],
            image: "fig4.png".into(),
            config: serde_json::json!({}),
            provenance: Provenance {
                commit: "abc".into(),
                preset: "smoke".into(),
                seed: 0,
                device: "cpu".into(),
                hardware: Hardware::detect(),
                started_unix: 0,
                finished_unix: 1,
                stages: vec![Stage {
                    name: "E-ABS l2 pgd".into(),
                    seconds: 1.0,
                    commit: Some("abc".into()),
                    finished_unix: Some(1),
                }],
                command: "cargo xtask reproduce fig4".into(),
            },
        };
        Ok((report, clean, adv))
    }

    #[test]
    fn outputs_verify_and_tampering_is_caught() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (report, clean, adv) = synthetic()?;
        write_outputs(dir.path(), &report, &clean, &adv)?;
        super::super::plot::verify(dir.path())?;
        let md = std::fs::read_to_string(dir.path().join("figure.md"))?;
        assert!(
            md.contains("| 1 | 7 | 3 (Dress) | 3 | 6 | 0.300 | 0.300 | succeeded |"),
            "{md}"
        );
        assert!(md.contains("succeeded on 1 of 2 images"), "{md}");
        assert!(md.contains("clean accuracy 2/2"), "{md}");
        // The grid: 2 rows x 2 columns of 8x8 cells, separators, the success bars.
        let png = image::open(dir.path().join("fig4.png"))?.to_rgb8();
        assert_eq!((png.width(), png.height()), layout((1, 2, 2)).size(2, 2));
        let bar_y = png.height() - 2 - 3;
        assert_eq!(png.get_pixel(3, bar_y).0, mark(true));
        assert_eq!(png.get_pixel(2 + 8 + 2 + 3, bar_y).0, mark(false));
        // The adversarial's first pixel (row 1, column 0) is 0.3 -> 77.
        assert_eq!(png.get_pixel(2, 2 + 8 + 2).0, [77; 3]);

        // A wrong distance, a success flag that contradicts the prediction, a redrawn PNG.
        let mut bad = report.clone();
        bad.columns[0].l2_distance = 0.2;
        super::super::write_json(&dir.path().join("results.json"), &bad)?;
        let err = verify(dir.path()).expect_err("a wrong distance must fail");
        assert!(format!("{err:#}").contains("column 0"), "{err:#}");
        let mut bad = report.clone();
        bad.columns[1].success = true;
        super::super::write_json(&dir.path().join("results.json"), &bad)?;
        assert!(verify(dir.path()).is_err());
        super::super::write_json(&dir.path().join("results.json"), &report)?;
        let mut img = png.clone();
        img.put_pixel(2, 2, image::Rgb([1, 2, 3]));
        img.save(dir.path().join("fig4.png"))?;
        let err = verify(dir.path()).expect_err("an edited PNG must fail");
        assert!(format!("{err:#}").contains("not the grid"), "{err:#}");
        Ok(())
    }

    #[test]
    fn columns_per_preset() {
        assert_eq!(n_columns(PresetName::Paper), 10);
        assert_eq!(n_columns(PresetName::Quick), 10);
        assert!(n_columns(PresetName::Smoke) < 10);
    }
}
