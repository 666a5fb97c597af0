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
    clip_to_ball, validate_inputs, Criterion, FixedEpsilonAttack, Norm, Pgd, PgdConfig,
};
use eabs_core::Differentiable;
use eabs_datasets::DatasetKind;
use eabs_models::ModelKind;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::experiment::{with_eot, Experiment};
use crate::lock::DirLock;
use crate::preset::Preset;
use crate::provenance::Provenance;
use crate::suite::pgd_config;
use crate::suite::Epsilon;
use crate::targets::figure3::pgd_seed;
use crate::targets::table::column_of;
use crate::RunSpec;

/// Columns of the paper's figures (and of `quick`); `smoke` shows four.
pub fn n_columns(preset: Preset) -> usize {
    match preset {
        Preset::Smoke => 4,
        Preset::Quick | Preset::Paper => 10,
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

/// A finished Figure 4 / 5 run, not yet written: the report and the clean and adversarial
/// images `(n, c, h, w)`, for the caller to draw the grid and call [`write_data`].
pub struct ExamplesRun {
    /// `results.json`.
    pub report: ExamplesReport,
    /// Clean images.
    pub clean: Tensor,
    /// Their adversarials.
    pub adversarial: Tensor,
    /// The results folder.
    pub out_dir: PathBuf,
    /// Held until the outputs are written.
    pub lock: DirLock,
}

/// Computes Figure 4 (`figure` `fig4`, `default` MNIST) or 5 (`fig5`, SVHN) for `spec`.
pub fn run(figure: &str, default: DatasetKind, spec: &RunSpec) -> Result<ExamplesRun> {
    let (kind, dir_name) = spec.experiment_dataset(figure, default);
    let sizes = spec.eval_sizes();
    // Nothing is journaled: a rerun recomputes the same images, and its stages are its own.
    let mut exp = Experiment::open_with(spec, &dir_name, kind, sizes.n_samples, false)?;
    let ds = exp.dataset;
    // The tables' evaluation subset; the figure shows its first columns.
    let idx: Vec<usize> = exp.subset[..n_columns(spec.preset).min(exp.subset.len())].to_vec();

    let mk = ModelKind::E_ABS;
    let m_idx = column_of(mk).context("E-ABS is not a column of the tables")?;
    let obtained = exp.obtain(mk)?;
    let column = exp.column(m_idx, mk.name(), obtained, &sizes, None)?;
    let clf = column.classifier();
    let stochastic = column.is_stochastic();
    let eot_samples = if stochastic { sizes.eot_samples } else { 1 };
    let pgd = pgd_config(&sizes, ds, Norm::L2, pgd_seed(spec.seed, Norm::L2)?);
    let eps = ds.epsilon(Norm::L2);
    let labels: Vec<u32> = idx.iter().map(|&i| u32::from(exp.test.labels[i])).collect();
    let xs = exp.test.images_tensor(&idx, &exp.device)?;

    let label = format!("{} l2 pgd, {} images", mk.name(), idx.len());
    let (adv, clean_pred, adv_pred, l2, linf) = exp.timer.stage(&label, || {
        let mut parts = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (k, chunk) in idx.chunks(sizes.batch_size.max(1)).enumerate() {
            let start = k * sizes.batch_size.max(1);
            let xb = xs.narrow(0, start, chunk.len())?;
            let lb = &labels[start..start + chunk.len()];
            let (a, cp, ap, d2, di) = with_eot(clf, sizes.eot_samples, |m| {
                attack_batch(m, &xb, lb, &pgd, eps)
            })?;
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
            label_name: exp
                .test
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

    let shape = exp.test.image_shape();
    let config = serde_json::json!({
        "figure": figure,
        "dataset": kind.name(),
        "preset": spec.preset,
        "seed": spec.seed,
        "sizes": sizes,
        "columns": idx.len(),
        "epsilon": eps,
        "pgd": pgd,
        "eot_samples": eot_samples,
        "model": mk.name(),
        "inference_seed": column.inference_seed,
        "train": exp.train_config(mk),
        "checkpoint": column.checkpoint,
        "test_data_sha256": exp.test_sha256,
        "checkpoints": exp.store,
    });
    let (provenance, out_dir, lock) = exp.finish();
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
    Ok(ExamplesRun {
        report,
        clean: xs,
        adversarial: adv,
        out_dir,
        lock,
    })
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
        crate::report::trim_number(r.epsilon),
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

/// Writes the images (`adversarials.safetensors`), `results.json` and `figure.md`, each
/// atomically; the caller writes the grid image the Markdown links.
pub fn write_data(dir: &Path, report: &ExamplesReport, clean: &Tensor, adv: &Tensor) -> Result<()> {
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
    crate::write_json(&dir.join("results.json"), report)?;
    crate::write_text(&dir.join("figure.md"), &to_markdown(report))
}

/// The data half of `verify-results` for a Figure 4 / 5 directory: the files present and
/// well-formed; the saved images consistent with `results.json` (shapes, labels, test indices,
/// in [0, 1]); every distance recomputed and within the epsilon; success equal to "prediction
/// != label". Returns the report and the saved clean and adversarial images, from which the
/// caller redraws the grid to compare with the PNG.
pub fn verify_data(dir: &Path) -> Result<(ExamplesReport, Tensor, Tensor)> {
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
    ensure!(
        !r.provenance.commit.is_empty() && !r.provenance.stages.is_empty(),
        "results.json has no commit or no stage wall times in its provenance"
    );
    Ok((r, clean.clone(), adv.clone()))
}

/// A small synthetic result (no model involved), for tests of code that renders or checks
/// these results, here and in the tools built on them: two columns of 1x2x2 images, column 0
/// moved by 0.3 in one pixel (L_2 0.3), column 1 unchanged.
#[doc(hidden)]
pub fn synthetic() -> Result<(ExamplesReport, Tensor, Tensor)> {
    use crate::provenance::{Hardware, Stage};
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
                started_over: false,
            }],
            command: "cargo xtask reproduce fig4".into(),
        },
    };
    Ok((report, clean, adv))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_verifies_and_tampering_is_caught() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (report, clean, adv) = synthetic()?;
        write_data(dir.path(), &report, &clean, &adv)?;
        std::fs::write(dir.path().join("fig4.png"), b"drawn by the caller")?;
        verify_data(dir.path())?;
        let md = std::fs::read_to_string(dir.path().join("figure.md"))?;
        assert!(
            md.contains("| 1 | 7 | 3 (Dress) | 3 | 6 | 0.300 | 0.300 | succeeded |"),
            "{md}"
        );
        assert!(md.contains("succeeded on 1 of 2 images"), "{md}");
        assert!(md.contains("clean accuracy 2/2"), "{md}");
        // A wrong distance, a success flag that contradicts the prediction.
        let mut bad = report.clone();
        bad.columns[0].l2_distance = 0.2;
        crate::write_json(&dir.path().join("results.json"), &bad)?;
        let err = verify_data(dir.path()).expect_err("a wrong distance must fail");
        assert!(format!("{err:#}").contains("column 0"), "{err:#}");
        let mut bad = report.clone();
        bad.columns[1].success = true;
        crate::write_json(&dir.path().join("results.json"), &bad)?;
        assert!(verify_data(dir.path()).is_err());
        Ok(())
    }

    #[test]
    fn columns_per_preset() {
        assert_eq!(n_columns(Preset::Paper), 10);
        assert_eq!(n_columns(Preset::Quick), 10);
        assert!(n_columns(Preset::Smoke) < 10);
    }
}
