//! `cargo xtask gpu-check`: does a device compute what the CPU computes, and how fast?
//!
//! On the CPU our models run the custom kernels of `eabs-kernels` (convolution, transposed
//! convolution, BatchNorm, LeakyReLU, sigmoid as Candle custom ops) and ABS-style inference takes
//! the hand-written fast engine (`eabs_inference::fast`). On CUDA neither applies: every kernel
//! falls back to Candle's own ("stock") op, and inference takes the generic Candle autodiff
//! engine. Nothing else in the workspace compares the two paths end to end on the device that
//! will run the paper's settings, so a wrong CUDA kernel (or a CPU-only assumption in our code)
//! would surface only as odd accuracies after days of training. This module compares them in a
//! few minutes, then times the three workloads that dominate a `paper` run.
//!
//! # Reference and subject
//! - **Reference**: the CPU, default path (custom kernels, fast inference engine): what every
//!   result in `results/` was computed with.
//! - **Subject**: the requested device running what that device runs.
//!   - `--device cuda`: Candle's CUDA ops and the autodiff inference engine.
//!   - `--device cpu` (the *CPU half*, what CI runs): the CPU with
//!     [`eabs_kernels::set_stock_ops`]`(true)` and the autodiff inference engine
//!     ([`AbsInference::set_fast_engine`]`(false)`): exactly the op set and code path CUDA runs,
//!     on the CPU. It checks the algorithm of the CUDA path (the fallbacks' semantics, the
//!     autodiff engine) against our kernels, on every machine; only the CUDA kernels themselves
//!     need the GPU.
//!
//! Both sides build the same models from the same seed (weights are drawn on the host from a
//! ChaCha stream, so they are bit-identical on every device) and feed them the same host-drawn
//! inputs and noise; every difference is float rounding or a bug.
//!
//! # Checks
//! Each [`Check`] compares named tensors and records the largest absolute difference, the
//! reference's magnitude, the [`Tolerance`] with a one-line reason, and whether it passed:
//! 1. every conv / transposed-conv / BatchNorm (training and evaluation mode) / LeakyReLU /
//!    sigmoid layer of the three Table 9 architectures (MNIST family 28x28, SuperTraffic-10 and
//!    SVHN 32x32), with the arguments the layers of `eabs-models` pass: the forward output, and
//!    the gradients with respect to the input and every parameter of a random linear functional
//!    of it;
//! 2. one E-ABS training step (Algorithm 1: encoder, the K decoders on every latent, eq. (5),
//!    backward, Adam; discriminator loss, backward, Adam) on MNIST and SVHN: the loss terms, the
//!    gradients, the updated parameters and the BatchNorm running statistics;
//! 3. one E-ABS inference batch (variational inference from cached candidates and the encoder
//!    proposal, then Adam on the latents): the starting and final losses, the optimised latent
//!    means and log-variances, and whether the predictions agree;
//! 4. one PGD step (L_inf and L_2, no random start) on the CNN: the adversarial images.
//!
//! `eabs-models`' trainer has no one-step entry point (the step is the body of
//! `Trainer::run_until`'s loop), so the training step here repeats that body, as the
//! `train_step` benchmark does: the same calls in the same order.
//!
//! # Tolerances
//! A value passes when `|subject - reference| <= atol + rtol * max|reference|`, the maximum
//! taken over the compared tensor (one scale per tensor, so that a gradient's small entries are
//! judged against its large ones, as rounding errors of a sum scale with its largest terms).
//! Where a discontinuity turns a rounding difference into a finite jump, two relaxations apply,
//! each stated in the report:
//! - a small share of values may exceed the bound where single values jump: the sign of a
//!   gradient entry that is zero up to rounding (L_inf PGD moves such a pixel by `±step`,
//!   Adam's first update moves such a parameter by `±lr`);
//! - the whole-model gradients of the training step are judged by their relative L2 error:
//!   a decoder pre-activation within rounding of its ReLU kink takes the other branch on the
//!   other side (about one per step among the 10^7 activations of the SVHN decoders at batch
//!   32), and through BatchNorm's batch statistics that moves many of that decoder's gradient
//!   entries, by up to 3% of their largest (measured on the CPU half over three seeds: relative
//!   L2 4e-5 to 1.1e-3, one decoder each time). The layer checks hold every backward kernel to
//!   elementwise bounds, where no activation sits between two roundings.
//!
//! Each bound lies at least ten times above the largest error the CPU half measured at both
//! sizes (each reason quotes the measurement), or is the bound the fast-path tests of
//! `eabs-inference` set for the same comparison; CUDA sums in yet another order, which the
//! margin is for. A wrong kernel gives errors of the order of the values themselves.
//!
//! # Timings
//! Timed on the subject device with *its default path* (on the CPU: custom kernels and the fast
//! engine, what a CPU run uses; on CUDA: what the subject runs): the E-ABS training step at the
//! paper's batch of 512, E-ABS inference at the paper's settings (8000 candidates, 49 Adam steps,
//! [`InferenceConfig::paper`], on a batch of the `paper` preset's 100 images, [`EvalSizes`]) and
//! PGD on the CNN (the paper's 80 steps, one start, batch 100). Each workload runs once as a
//! warm-up (CUDA loads its kernels on first use) and the device is synchronised after every
//! repetition. [`SizeChoice::Ci`] shrinks every size so that the CPU half finishes in seconds
//! (a test runs it); the full sizes are meant for a GPU.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use eabs_attacks::{Criterion, FixedEpsilonAttack, Norm, Pgd, PgdConfig};
use eabs_inference::{AbsInference, FrozenAbsModel, InferenceConfig, LatentInference};
use eabs_models::{AbsModel, Adam, ArchConfig, Cnn, DatasetKind, ModelConfig, ModelKind};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::preset::{EvalSizes, Preset};
use crate::provenance::{git_revision, unix_time, Hardware};
use crate::DeviceChoice;

/// The sizes of a run: tiny for CI, or the paper's for the timings on a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SizeChoice {
    /// Seconds on the CPU: every check and timing at a handful of samples.
    Ci,
    /// Timings at the paper's sizes (batch 512 training step, 8000-candidate inference of 100
    /// images, 80-step PGD on 100 images) and checks at a few dozen samples.
    Full,
}

impl SizeChoice {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            SizeChoice::Ci => "ci",
            SizeChoice::Full => "full",
        }
    }
}

impl std::str::FromStr for SizeChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "ci" => Ok(SizeChoice::Ci),
            "full" => Ok(SizeChoice::Full),
            other => Err(format!("unknown sizes `{other}` (ci or full)")),
        }
    }
}

/// Every size of a run, recorded in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sizes {
    /// Which set.
    pub choice: SizeChoice,
    /// Images per layer check.
    pub layer_batch: usize,
    /// Batch of the training-step checks.
    pub train_check_batch: usize,
    /// Images of the inference checks.
    pub inference_check_images: usize,
    /// Candidates of the inference checks.
    pub inference_check_candidates: usize,
    /// Adam steps of the inference checks.
    pub inference_check_adam_steps: usize,
    /// Images of the PGD checks.
    pub pgd_check_batch: usize,
    /// Dataset family of the timings (its Table 9 architecture).
    pub timing_family: DatasetKind,
    /// Batch of the timed training step (the paper's: 512, Section 4.3).
    pub train_batch: usize,
    /// Images of the timed inference batch (the `paper` preset's batch: 100).
    pub inference_images: usize,
    /// Candidates of the timed inference (the paper's: 8000).
    pub inference_candidates: usize,
    /// Adam steps of the timed inference (the paper's: 49).
    pub inference_adam_steps: usize,
    /// Images of the timed PGD (the `paper` preset's batch: 100).
    pub pgd_batch: usize,
    /// Steps of the timed PGD (the paper's: 80), one start.
    pub pgd_steps: usize,
    /// Timed repetitions of the training step and of PGD (after one warm-up run).
    pub reps: usize,
    /// Timed repetitions of the inference batch (after a one-image warm-up).
    pub inference_reps: usize,
}

impl Sizes {
    /// The sizes of `choice`.
    pub fn of(choice: SizeChoice) -> Self {
        match choice {
            SizeChoice::Ci => Self {
                choice,
                layer_batch: 3,
                train_check_batch: 8,
                inference_check_images: 2,
                inference_check_candidates: 32,
                inference_check_adam_steps: 3,
                pgd_check_batch: 4,
                timing_family: DatasetKind::Mnist,
                train_batch: 16,
                inference_images: 2,
                inference_candidates: 64,
                inference_adam_steps: 3,
                pgd_batch: 4,
                pgd_steps: 3,
                reps: 1,
                inference_reps: 1,
            },
            SizeChoice::Full => {
                let paper = EvalSizes::of(Preset::Paper);
                let inference = paper.inference(InferenceConfig::paper());
                Self {
                    choice,
                    layer_batch: 8,
                    train_check_batch: 32,
                    inference_check_images: 4,
                    inference_check_candidates: 256,
                    inference_check_adam_steps: 10,
                    pgd_check_batch: 16,
                    timing_family: DatasetKind::Mnist,
                    train_batch: eabs_models::TrainConfig::paper(
                        DatasetKind::Mnist,
                        ModelKind::E_ABS,
                    )
                    .batch_size,
                    inference_images: paper.batch_size,
                    inference_candidates: inference.n_candidates,
                    inference_adam_steps: inference.n_adam_steps,
                    pgd_batch: paper.batch_size,
                    pgd_steps: paper.pgd_steps,
                    reps: 3,
                    inference_reps: 1,
                }
            }
        }
    }
}

/// What a run is asked to do.
#[derive(Debug, Clone)]
pub struct DeviceCheckSpec {
    /// The subject device.
    pub device: DeviceChoice,
    /// Sizes.
    pub sizes: SizeChoice,
    /// Seed of every weight, input and noise draw.
    pub seed: u64,
    /// The command line, for the report.
    pub command: String,
}

/// When a subject value is close enough to the reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tolerance {
    /// Absolute part of the bound.
    pub atol: f64,
    /// Relative part, times the largest reference magnitude of the compared tensor.
    pub rtol: f64,
    /// Share of the values that may exceed the bound (0 for most checks; see the module docs).
    pub max_mismatch_fraction: f64,
    /// Where set, the check is judged by the relative L2 error over every compared value,
    /// `||subject - reference|| / ||reference||`, instead of value by value (the elementwise
    /// counts are then informative): for whole-model gradients, where a discontinuity moves
    /// many values at once (module docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_relative_l2: Option<f64>,
    /// Why this bound.
    pub why: String,
}

impl Tolerance {
    /// `atol + rtol * max|reference|`, no value beyond it.
    pub fn new(atol: f64, rtol: f64, why: &str) -> Self {
        Self {
            atol,
            rtol,
            max_mismatch_fraction: 0.0,
            max_relative_l2: None,
            why: why.into(),
        }
    }

    /// Judged by the relative L2 error over all values (at most `max`) instead of value by
    /// value; `atol` and `rtol` still give the elementwise counts of the report.
    pub fn relative_l2(mut self, max: f64) -> Self {
        self.max_relative_l2 = Some(max);
        self
    }

    /// The same bound with a share of the values allowed beyond it.
    pub fn allowing(mut self, fraction: f64) -> Self {
        self.max_mismatch_fraction = fraction;
        self
    }
}

/// One comparison of the subject's tensors with the reference's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// `<kind>/<family>/<what>`, e.g. `layer/mnist/encoder.conv0/backward`.
    pub name: String,
    /// The compared tensors and their shapes (the subject's where they differ).
    pub shapes: String,
    /// Number of compared values.
    pub n_values: usize,
    /// Largest `|subject - reference|` over the finite pairs.
    pub max_abs_diff: f64,
    /// Largest finite `|reference|`.
    pub max_abs_reference: f64,
    /// `||subject - reference|| / ||reference||` over every finite pair (0 when the reference
    /// is all zeros and the subject equals it).
    pub relative_l2: f64,
    /// The compared tensor whose worst value came closest to (or went furthest past) its bound.
    pub worst: String,
    /// How much of the deciding bound the check used, at most 1 to pass: the worst value's
    /// `|diff| / bound`; where a share of values may exceed it and some do, their number over
    /// the number allowed; `relative_l2 / max_relative_l2` where that decides.
    pub worst_fraction_of_bound: f64,
    /// Values beyond their elementwise bound.
    pub n_mismatched: usize,
    /// Values that are not finite on either side (always a failure).
    pub n_non_finite: usize,
    /// The bound.
    pub tolerance: Tolerance,
    /// Anything else worth knowing (e.g. shapes that differ, predictions that differ in a tie).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Whether the subject agrees with the reference.
    pub passed: bool,
}

/// Wall time of one workload on the subject device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// e.g. `eabs_train_step`.
    pub name: String,
    /// The workload and its sizes.
    pub what: String,
    /// Timed repetitions (after the warm-up).
    pub reps: usize,
    /// Fastest repetition, seconds.
    pub seconds_min: f64,
    /// Mean repetition, seconds.
    pub seconds_mean: f64,
    /// Items one repetition processes.
    pub items: usize,
    /// What an item is (`samples`, `images`, `latents`).
    pub unit: String,
    /// `items / seconds_min`.
    pub items_per_second: f64,
}

/// The subject device, described.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// `cpu` or `cuda`.
    pub choice: String,
    /// The GPU (from `nvidia-smi`) or the CPU model and cores.
    pub description: String,
    /// Whether this binary was built with the `cuda` feature.
    pub cuda_compiled: bool,
    /// Candle's reduced-precision (TF32) f32 GEMM switch (off unless a program turns it on).
    pub tf32_gemm: bool,
    /// The host machine.
    pub hardware: Hardware,
}

/// The report `cargo xtask gpu-check` writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceCheckReport {
    /// The subject device.
    pub device: DeviceInfo,
    /// The reference's code path.
    pub reference: String,
    /// The subject's code path in the checks.
    pub subject: String,
    /// The code path of the timings.
    pub timed: String,
    /// `git rev-parse HEAD` (with `-dirty`), or `unknown`.
    pub commit: String,
    /// Start of the run, UTC, ISO 8601.
    pub utc: String,
    /// Start of the run, Unix seconds.
    pub unix_time: u64,
    /// Seed of every draw.
    pub seed: u64,
    /// The command line.
    pub command: String,
    /// Every size.
    pub sizes: Sizes,
    /// The comparisons.
    pub checks: Vec<Check>,
    /// The timings.
    pub timings: Vec<Timing>,
    /// Wall time of the whole run, seconds.
    pub wall_seconds: f64,
    /// Whether every check passed.
    pub passed: bool,
}

/// `results/gpu-check/<device>.json`, with a `-ci` suffix at CI sizes so that the CPU half of
/// CI does not overwrite a full-size report.
pub fn default_report_path(device: DeviceChoice, sizes: SizeChoice) -> PathBuf {
    let stem = match sizes {
        SizeChoice::Full => device.as_str().to_string(),
        SizeChoice::Ci => format!("{}-ci", device.as_str()),
    };
    Path::new("results")
        .join("gpu-check")
        .join(format!("{stem}.json"))
}

// ---------------------------------------------------------------------------------------------
// Tolerances: each reason is one line, as the report prints it, with what the CPU half measured
// (largest over the ci and full sizes).

fn tol_forward() -> Tolerance {
    Tolerance::new(
        1e-6,
        3e-5,
        "one op, the same sums in another f32 order (im2col GEMM blocks, CUDA reductions): measured up to 2.5e-6 of the largest value",
    )
}

fn tol_backward() -> Tolerance {
    Tolerance::new(
        1e-6,
        1e-4,
        "gradients sum over batch and positions (weights) or taps (inputs) in another f32 order: measured up to 4e-6 of the largest entry",
    )
}

fn tol_train_losses() -> Tolerance {
    Tolerance::new(
        1e-6,
        1e-5,
        "scalars summed over the batch, the K decoders and every pixel: rounding only (measured 2e-7 relative)",
    )
}

fn tol_train_gradients() -> Tolerance {
    Tolerance::new(
        1e-7,
        1e-4,
        "relative L2 over all gradients: a decoder pre-activation within rounding of its ReLU kink takes the other branch on the other side (~1 per step in 1e7 activations), moving that decoder's gradients by up to 3% of their largest (measured relative L2: 4e-5 to 1.1e-3)",
    )
    .relative_l2(1e-2)
}

fn tol_train_parameters() -> Tolerance {
    Tolerance::new(
        1e-6,
        0.0,
        "Adam's first step moves each parameter by lr g / (|g| + 1e-8): equal to rounding except where g is zero up to rounding, whose sign decides a step of ±lr (measured: 2 to 80 values of 0.75 to 2.4 million)",
    )
    .allowing(1e-3)
}

fn tol_running_stats() -> Tolerance {
    Tolerance::new(
        1e-6,
        1e-5,
        "batch means and variances, one reduction each (measured 6e-8)",
    )
}

fn tol_inference_start() -> Tolerance {
    Tolerance::new(
        1e-6,
        1e-5,
        "candidate search (one GEMM per class) and the encoder proposal, no iteration (measured: equal)",
    )
}

fn tol_inference_losses() -> Tolerance {
    Tolerance::new(
        1e-5,
        1e-3,
        "after the Adam steps the two engines' rounding has compounded: the fast-path tests' bound, 1e-3 relative after 49 steps (measured here 1.5e-8 absolute)",
    )
}

fn tol_inference_latents() -> Tolerance {
    Tolerance::new(
        1e-3,
        0.0,
        "Adam divides by sqrt(v) + 1e-8, so a coordinate with a gradient near 1e-8 moves by a rounding-decided share of lr: the fast-path tests' bound (measured here 1.1e-4 after 10 steps)",
    )
}

fn tol_pgd_l2() -> Tolerance {
    Tolerance::new(
        1e-6,
        0.0,
        "x + step g / ||g||, clipped: the gradient's rounding times the step (measured 6e-8)",
    )
}

fn tol_pgd_linf() -> Tolerance {
    Tolerance::new(
        1e-6,
        0.0,
        "x + step sign(g), clipped: exact except where g is zero up to rounding, whose sign moves the pixel by ±step (measured: none)",
    )
    .allowing(1e-3)
}

// ---------------------------------------------------------------------------------------------
// Comparison.

fn host_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// Compares each `(label, reference, subject)` pair under `tolerance` (its bound per tensor:
/// `atol + rtol * max|reference|` of that tensor) into one [`Check`] named `name`. A check with
/// tensors of different shapes, non-finite values, no values, or more values beyond their bound
/// than the tolerance allows fails.
pub fn compare_tensors(
    name: &str,
    pairs: &[(&str, &Tensor, &Tensor)],
    tolerance: Tolerance,
) -> Result<Check> {
    let mut shapes = Vec::with_capacity(pairs.len());
    let mut notes = Vec::new();
    let (mut n_values, mut n_mismatched, mut n_non_finite) = (0usize, 0usize, 0usize);
    let (mut max_abs_diff, mut max_abs_reference) = (0f64, 0f64);
    let (mut sq_diff, mut sq_reference) = (0f64, 0f64);
    let (mut worst, mut worst_fraction) = (String::new(), -1f64);
    for &(label, reference, subject) in pairs {
        if reference.dims() != subject.dims() {
            shapes.push(format!(
                "{label} {:?} (subject {:?})",
                reference.dims(),
                subject.dims()
            ));
            notes.push(format!(
                "{label}: shapes differ, reference {:?}, subject {:?}",
                reference.dims(),
                subject.dims()
            ));
            continue;
        }
        shapes.push(format!("{label} {:?}", reference.dims()));
        let r = host_f32(reference).with_context(|| format!("{name}: reading {label}"))?;
        let s = host_f32(subject).with_context(|| format!("{name}: reading {label}"))?;
        let scale = r
            .iter()
            .filter(|v| v.is_finite())
            .fold(0f64, |m, &v| m.max(f64::from(v).abs()));
        max_abs_reference = max_abs_reference.max(scale);
        let bound = tolerance.atol + tolerance.rtol * scale;
        let mut tensor_worst = 0f64;
        for (&a, &b) in r.iter().zip(&s) {
            n_values += 1;
            if !(a.is_finite() && b.is_finite()) {
                n_non_finite += 1;
                continue;
            }
            let d = (f64::from(a) - f64::from(b)).abs();
            sq_diff += d * d;
            sq_reference += f64::from(a) * f64::from(a);
            max_abs_diff = max_abs_diff.max(d);
            tensor_worst = tensor_worst.max(d);
            if d > bound {
                n_mismatched += 1;
            }
        }
        let fraction = if bound > 0.0 {
            tensor_worst / bound
        } else if tensor_worst > 0.0 {
            f64::MAX
        } else {
            0.0
        };
        if fraction > worst_fraction {
            worst_fraction = fraction;
            worst = label.to_string();
        }
    }
    if n_non_finite > 0 {
        notes.push(format!("{n_non_finite} values are not finite"));
    }
    if n_values == 0 {
        notes.push("nothing compared".into());
    }
    let relative_l2 = if sq_reference > 0.0 {
        (sq_diff / sq_reference).sqrt()
    } else if sq_diff > 0.0 {
        f64::MAX
    } else {
        0.0
    };
    let allowed = (tolerance.max_mismatch_fraction * n_values as f64).floor() as usize;
    let shapes_ok = notes.iter().all(|n| !n.contains("shapes differ"));
    let within = match tolerance.max_relative_l2 {
        Some(max) => {
            if n_mismatched > 0 {
                notes.push(format!(
                    "{n_mismatched} of {n_values} values beyond the elementwise bound; judged by the relative L2 error"
                ));
            }
            worst_fraction = relative_l2 / max;
            relative_l2 <= max
        }
        None => {
            if n_mismatched > 0 && tolerance.max_mismatch_fraction > 0.0 {
                notes.push(format!(
                    "{n_mismatched} of {n_values} values beyond the bound (the largest {worst_fraction:.3e} times it), {allowed} allowed"
                ));
                worst_fraction = n_mismatched as f64 / allowed.max(1) as f64;
            }
            n_mismatched <= allowed
        }
    };
    let passed = shapes_ok && n_values > 0 && n_non_finite == 0 && within;
    Ok(Check {
        name: name.to_string(),
        shapes: shapes.join(", "),
        n_values,
        max_abs_diff,
        max_abs_reference,
        relative_l2,
        worst,
        worst_fraction_of_bound: worst_fraction.max(0.0),
        n_mismatched,
        n_non_finite,
        tolerance,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
        passed,
    })
}

/// Compares two lists of named tensors (the same names in the same order) into one check.
fn compare_named(
    name: &str,
    reference: &[(String, Tensor)],
    subject: &[(String, Tensor)],
    tolerance: Tolerance,
) -> Result<Check> {
    ensure!(
        reference.len() == subject.len() && reference.iter().zip(subject).all(|(a, b)| a.0 == b.0),
        "{name}: the two sides produced different tensors ({:?} against {:?})",
        reference.iter().map(|p| &p.0).collect::<Vec<_>>(),
        subject.iter().map(|p| &p.0).collect::<Vec<_>>()
    );
    let pairs: Vec<(&str, &Tensor, &Tensor)> = reference
        .iter()
        .zip(subject)
        .map(|(a, b)| (a.0.as_str(), &a.1, &b.1))
        .collect();
    let mut check = compare_tensors(name, &pairs, tolerance)?;
    if pairs.len() > 4 {
        // Dozens of parameter tensors: the count says enough.
        check.shapes = format!(
            "{} tensors, {} values (e.g. {})",
            pairs.len(),
            check.n_values,
            check.shapes.split(", ").next().unwrap_or("")
        );
    }
    Ok(check)
}

/// The predicted classes of the subject against the reference's: a differing prediction fails
/// unless it is a tie under the reference's own losses, i.e. the reference's loss of the
/// subject's class exceeds its loss of its own class by no more than `tolerance` allows.
/// `losses`: `(batch, K)`, prediction = argmin.
pub fn compare_predictions(
    name: &str,
    reference_losses: &Tensor,
    subject_losses: &Tensor,
    tolerance: Tolerance,
) -> Result<Check> {
    let (b, k) = reference_losses.dims2()?;
    ensure!(
        subject_losses.dims() == [b, k],
        "{name}: losses of shape {:?} against the reference's {:?}",
        subject_losses.dims(),
        reference_losses.dims()
    );
    let r = host_f32(reference_losses)?;
    let s = host_f32(subject_losses)?;
    let argmin = |row: &[f32]| {
        row.iter()
            .enumerate()
            .fold((0usize, f32::INFINITY), |(bi, bv), (i, &v)| {
                if v < bv {
                    (i, v)
                } else {
                    (bi, bv)
                }
            })
            .0
    };
    let scale = r
        .iter()
        .filter(|v| v.is_finite())
        .fold(0f64, |m, &v| m.max(f64::from(v).abs()));
    let bound = tolerance.atol + tolerance.rtol * scale;
    let (mut differ, mut beyond, mut worst_gap) = (0usize, 0usize, 0f64);
    for i in 0..b {
        let (rr, sr) = (&r[i * k..(i + 1) * k], &s[i * k..(i + 1) * k]);
        let (pr, ps) = (argmin(rr), argmin(sr));
        if pr != ps {
            differ += 1;
            let gap = f64::from(rr[ps]) - f64::from(rr[pr]);
            worst_gap = worst_gap.max(gap);
            if gap > bound {
                beyond += 1;
            }
        }
    }
    let n_non_finite = r.iter().chain(&s).filter(|v| !v.is_finite()).count();
    Ok(Check {
        name: name.to_string(),
        shapes: format!("predictions [{b}] from losses [{b}, {k}]"),
        n_values: b,
        max_abs_diff: worst_gap,
        max_abs_reference: scale,
        relative_l2: 0.0,
        worst: "reference loss of the subject's class minus of its own".into(),
        worst_fraction_of_bound: if bound > 0.0 { worst_gap / bound } else { 0.0 },
        n_mismatched: beyond,
        n_non_finite,
        tolerance,
        note: (differ > 0)
            .then(|| format!("{differ} of {b} predictions differ, {beyond} beyond a tie")),
        passed: b > 0 && beyond == 0 && n_non_finite == 0,
    })
}

// ---------------------------------------------------------------------------------------------
// The two sides.

/// One side of the comparison: a device and the code path it takes there.
#[derive(Debug, Clone)]
struct Side {
    device: Device,
    /// [`eabs_kernels::set_stock_ops`] while this side computes.
    stock_ops: bool,
    /// Whether ABS-style inference may take the fast CPU engine.
    fast_engine: bool,
}

/// Sets the stock-op switch for a scope and restores it on drop (also on an error).
struct StockOps {
    previous: bool,
}

impl StockOps {
    fn set(on: bool) -> Self {
        Self {
            previous: eabs_kernels::set_stock_ops(on),
        }
    }
}

impl Drop for StockOps {
    fn drop(&mut self) {
        eabs_kernels::set_stock_ops(self.previous);
    }
}

impl Side {
    /// Runs `f` with this side's op set; forward and backward passes both happen inside.
    fn run<T>(&self, f: impl FnOnce(&Side) -> Result<T>) -> Result<T> {
        let _switch = StockOps::set(self.stock_ops);
        let out = f(self)?;
        self.device.synchronize()?;
        Ok(out)
    }
}

/// Runs `f` on both sides: `(reference, subject)`.
fn both<T>(reference: &Side, subject: &Side, f: impl Fn(&Side) -> Result<T>) -> Result<(T, T)> {
    Ok((reference.run(&f)?, subject.run(&f)?))
}

/// A generator for one named draw: the same stream on both sides.
fn rng(seed: u64, what: &str) -> ChaCha8Rng {
    // FNV-1a of the name picks the stream.
    let stream = what.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream);
    r
}

/// `n` values from `U(lo, hi)`.
fn uniform(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

fn tensor(values: &[f32], shape: &[usize], device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(values, shape, device)?)
}

fn var(values: &[f32], shape: &[usize], device: &Device) -> Result<Var> {
    Ok(Var::from_tensor(&tensor(values, shape, device)?)?)
}

/// Named tensors: the outputs one side computed, in a fixed order.
type Named = Vec<(String, Tensor)>;

/// A layer's forward outputs and its gradients.
type Passes = (Named, Named);

/// Tensors moved to the CPU (the subject's may live on the GPU).
fn to_cpu(named: Named) -> Result<Named> {
    named
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_device(&Device::Cpu)?)))
        .collect()
}

fn grad_of(
    grads: &candle_core::backprop::GradStore,
    v: &Var,
    what: &str,
    name: &str,
) -> Result<Tensor> {
    grads
        .get(v.as_tensor())
        .cloned()
        .with_context(|| format!("{name}: no gradient reached {what}"))
}

// ---------------------------------------------------------------------------------------------
// 1. Layers.

#[derive(Debug, Clone, Copy)]
enum ConvKind {
    Conv,
    Transposed,
}

/// One convolution layer as `eabs-models` calls it: `Conv2d` (no bias) or `ConvTranspose2d`
/// (bias on the last layer only, output padding 0).
struct ConvLayer {
    name: String,
    kind: ConvKind,
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    bias: bool,
    stride: usize,
    padding: usize,
}

fn conv_case(layer: &ConvLayer, seed: u64, reference: &Side, subject: &Side) -> Result<[Check; 2]> {
    let n_x: usize = layer.x_shape.iter().product();
    let n_w: usize = layer.w_shape.iter().product();
    // PyTorch's fan-in, as `eabs-models` initialises: `c_in k^2` for a convolution
    // (`(c_out, c_in, k, k)`), `c_out k^2` for a transposed one (`(c_in, c_out, k, k)`).
    let fan_in = layer.w_shape[1] * layer.w_shape[2] * layer.w_shape[3];
    let bound = 1.0 / (fan_in as f32).sqrt();
    let mut g = rng(seed, &layer.name);
    let xv = uniform(&mut g, n_x, -1.0, 1.0);
    let wv = uniform(&mut g, n_w, -bound, bound);
    let c_out = match layer.kind {
        ConvKind::Conv => layer.w_shape[0],
        ConvKind::Transposed => layer.w_shape[1],
    };
    let bv = uniform(&mut g, c_out, -bound, bound);
    let cot_seed = format!("{}/cotangent", layer.name);
    let run = |side: &Side| -> Result<Passes> {
        let dev = &side.device;
        let x = var(&xv, &layer.x_shape, dev)?;
        let w = var(&wv, &layer.w_shape, dev)?;
        let b = if layer.bias {
            Some(var(&bv, &[c_out], dev)?)
        } else {
            None
        };
        let bt = b.as_ref().map(|b| b.as_tensor());
        let y = match layer.kind {
            ConvKind::Conv => eabs_kernels::conv2d(
                x.as_tensor(),
                w.as_tensor(),
                bt,
                layer.stride,
                layer.padding,
            )?,
            ConvKind::Transposed => eabs_kernels::conv_transpose2d(
                x.as_tensor(),
                w.as_tensor(),
                bt,
                layer.stride,
                layer.padding,
                0,
            )?,
        };
        // A random linear functional of the output: its gradient is the backward pass of a
        // random output gradient.
        let cot = uniform(&mut rng(seed, &cot_seed), y.elem_count(), -1.0, 1.0);
        let loss = (&y * tensor(&cot, y.dims(), dev)?)?.sum_all()?;
        let grads = loss.backward()?;
        let mut back = vec![
            (
                "dL/dx".to_string(),
                grad_of(&grads, &x, "the input", &layer.name)?,
            ),
            (
                "dL/dw".to_string(),
                grad_of(&grads, &w, "the weight", &layer.name)?,
            ),
        ];
        if let Some(b) = &b {
            back.push((
                "dL/db".to_string(),
                grad_of(&grads, b, "the bias", &layer.name)?,
            ));
        }
        Ok((to_cpu(vec![("y".to_string(), y)])?, to_cpu(back)?))
    };
    let ((rf, rb), (sf, sb)) = both(reference, subject, run)?;
    Ok([
        compare_named(&format!("{}/forward", layer.name), &rf, &sf, tol_forward())?,
        compare_named(
            &format!("{}/backward", layer.name),
            &rb,
            &sb,
            tol_backward(),
        )?,
    ])
}

/// BatchNorm after a convolution, in training mode (batch statistics) and evaluation mode
/// (running statistics, folded into one affine pass on the CPU), then the activation that
/// follows it in the encoder (LeakyReLU; the decoder's ReLU is a stock op on both sides).
fn batch_norm_cases(
    name: &str,
    shape: [usize; 4],
    arch: &ArchConfig,
    seed: u64,
    reference: &Side,
    subject: &Side,
) -> Result<Vec<Check>> {
    let c = shape[1];
    let n: usize = shape.iter().product();
    let mut g = rng(seed, name);
    // Off-centre activations, so that the statistics are not trivial.
    let xv: Vec<f32> = uniform(&mut g, n, -1.5, 2.5);
    let gamma = uniform(&mut g, c, 0.5, 1.5);
    let beta = uniform(&mut g, c, -0.5, 0.5);
    let mean = uniform(&mut g, c, -0.5, 0.5);
    let var_v = uniform(&mut g, c, 0.5, 1.5);
    let eps = arch.bn_eps;
    let cot_seed = format!("{name}/cotangent");
    let train = |side: &Side| -> Result<Passes> {
        let dev = &side.device;
        let (x, ga, be) = (
            var(&xv, &shape, dev)?,
            var(&gamma, &[c], dev)?,
            var(&beta, &[c], dev)?,
        );
        let (y, m, v) =
            eabs_kernels::batch_norm_train(x.as_tensor(), ga.as_tensor(), be.as_tensor(), eps)?;
        let cot = uniform(&mut rng(seed, &cot_seed), n, -1.0, 1.0);
        let grads = (&y * tensor(&cot, &shape, dev)?)?.sum_all()?.backward()?;
        let fwd = vec![
            ("y".to_string(), y),
            ("batch mean".to_string(), m),
            ("batch variance".to_string(), v),
        ];
        let back = vec![
            ("dL/dx".to_string(), grad_of(&grads, &x, "the input", name)?),
            (
                "dL/dgamma".to_string(),
                grad_of(&grads, &ga, "gamma", name)?,
            ),
            ("dL/dbeta".to_string(), grad_of(&grads, &be, "beta", name)?),
        ];
        Ok((to_cpu(fwd)?, to_cpu(back)?))
    };
    let eval = |side: &Side| -> Result<Passes> {
        let dev = &side.device;
        let (x, ga, be) = (
            var(&xv, &shape, dev)?,
            var(&gamma, &[c], dev)?,
            var(&beta, &[c], dev)?,
        );
        let y = eabs_kernels::batch_norm_eval(
            x.as_tensor(),
            ga.as_tensor(),
            be.as_tensor(),
            &tensor(&mean, &[c], dev)?,
            &tensor(&var_v, &[c], dev)?,
            eps,
        )?;
        let cot = uniform(&mut rng(seed, &cot_seed), n, -1.0, 1.0);
        let grads = (&y * tensor(&cot, &shape, dev)?)?.sum_all()?.backward()?;
        let back = vec![
            ("dL/dx".to_string(), grad_of(&grads, &x, "the input", name)?),
            (
                "dL/dgamma".to_string(),
                grad_of(&grads, &ga, "gamma", name)?,
            ),
            ("dL/dbeta".to_string(), grad_of(&grads, &be, "beta", name)?),
        ];
        Ok((to_cpu(vec![("y".to_string(), y)])?, to_cpu(back)?))
    };
    let mut out = Vec::with_capacity(4);
    let ((rf, rb), (sf, sb)) = both(reference, subject, train)?;
    out.push(compare_named(
        &format!("{name}.train/forward"),
        &rf,
        &sf,
        tol_forward(),
    )?);
    out.push(compare_named(
        &format!("{name}.train/backward"),
        &rb,
        &sb,
        tol_backward(),
    )?);
    let ((rf, rb), (sf, sb)) = both(reference, subject, eval)?;
    out.push(compare_named(
        &format!("{name}.eval/forward"),
        &rf,
        &sf,
        tol_forward(),
    )?);
    out.push(compare_named(
        &format!("{name}.eval/backward"),
        &rb,
        &sb,
        tol_backward(),
    )?);
    Ok(out)
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    LeakyRelu(f64),
    Sigmoid,
}

fn activation_case(
    name: &str,
    shape: [usize; 4],
    act: Activation,
    seed: u64,
    reference: &Side,
    subject: &Side,
) -> Result<Vec<Check>> {
    let n: usize = shape.iter().product();
    let mut g = rng(seed, name);
    let xv = match act {
        Activation::LeakyRelu(_) => uniform(&mut g, n, -1.0, 1.0),
        // Into both tails, where sigmoid's rounding is worst.
        Activation::Sigmoid => uniform(&mut g, n, -8.0, 8.0),
    };
    let cot = uniform(&mut g, n, -1.0, 1.0);
    let run = |side: &Side| -> Result<Passes> {
        let dev = &side.device;
        let x = var(&xv, &shape, dev)?;
        let y = match act {
            Activation::LeakyRelu(slope) => eabs_kernels::leaky_relu(x.as_tensor(), slope)?,
            Activation::Sigmoid => eabs_kernels::sigmoid(x.as_tensor())?,
        };
        let grads = (&y * tensor(&cot, &shape, dev)?)?.sum_all()?.backward()?;
        let back = vec![("dL/dx".to_string(), grad_of(&grads, &x, "the input", name)?)];
        Ok((to_cpu(vec![("y".to_string(), y)])?, to_cpu(back)?))
    };
    let ((rf, rb), (sf, sb)) = both(reference, subject, run)?;
    Ok(vec![
        compare_named(&format!("{name}/forward"), &rf, &sf, tol_forward())?,
        compare_named(&format!("{name}/backward"), &rb, &sb, tol_backward())?,
    ])
}

/// The dataset families whose Table 9 architectures differ (Fashion-MNIST shares MNIST's).
const FAMILIES: [DatasetKind; 3] = [
    DatasetKind::Mnist,
    DatasetKind::SuperTraffic10,
    DatasetKind::Svhn,
];

/// Every custom-op layer of every architecture, with the shapes the model feeds it.
fn layer_checks(sizes: &Sizes, seed: u64, reference: &Side, subject: &Side) -> Result<Vec<Check>> {
    let n = sizes.layer_batch;
    let mut out = Vec::new();
    for family in FAMILIES {
        let arch = ArchConfig::for_family(family);
        let f = family.name();
        // Encoder: conv (no bias), BatchNorm, LeakyReLU.
        let sides = arch.encoder_sides();
        let mut c_in = arch.image_shape.0;
        for (i, s) in arch.encoder.iter().enumerate() {
            let layer = ConvLayer {
                name: format!("layer/{f}/encoder.conv{i}"),
                kind: ConvKind::Conv,
                x_shape: [n, c_in, sides[i], sides[i]],
                w_shape: [s.channels, c_in, s.kernel, s.kernel],
                bias: false,
                stride: s.stride,
                padding: s.padding,
            };
            out.extend(conv_case(&layer, seed, reference, subject)?);
            let y_shape = [n, s.channels, sides[i + 1], sides[i + 1]];
            out.extend(batch_norm_cases(
                &format!("layer/{f}/encoder.bn{i}"),
                y_shape,
                &arch,
                seed,
                reference,
                subject,
            )?);
            out.extend(activation_case(
                &format!("layer/{f}/encoder.leaky_relu{i}"),
                y_shape,
                Activation::LeakyRelu(arch.leaky_slope),
                seed,
                reference,
                subject,
            )?);
            c_in = s.channels;
        }
        // Decoder: transposed conv, BatchNorm (+ ReLU) on all but the last, which has a bias
        // and a sigmoid.
        let sides = arch.decoder_sides();
        let mut c_in = arch.decoder.first().map_or(0, |s| s.channels);
        let last = arch.decoder.len().saturating_sub(1);
        for (i, s) in arch.decoder.iter().enumerate() {
            let layer = ConvLayer {
                name: format!("layer/{f}/decoder.convt{i}"),
                kind: ConvKind::Transposed,
                x_shape: [n, c_in, sides[i], sides[i]],
                w_shape: [c_in, s.channels, s.kernel, s.kernel],
                bias: i == last,
                stride: s.stride,
                padding: s.padding,
            };
            out.extend(conv_case(&layer, seed, reference, subject)?);
            let y_shape = [n, s.channels, sides[i + 1], sides[i + 1]];
            if i == last {
                out.extend(activation_case(
                    &format!("layer/{f}/decoder.sigmoid"),
                    y_shape,
                    Activation::Sigmoid,
                    seed,
                    reference,
                    subject,
                )?);
            } else {
                out.extend(batch_norm_cases(
                    &format!("layer/{f}/decoder.bn{i}"),
                    y_shape,
                    &arch,
                    seed,
                    reference,
                    subject,
                )?);
            }
            c_in = s.channels;
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// 2. The E-ABS training step.

/// Images in `[0, 1]` and labels `i mod K`, drawn on the host.
fn batch_data(
    family: DatasetKind,
    n: usize,
    seed: u64,
    what: &str,
) -> (Vec<f32>, [usize; 4], Vec<u32>) {
    let (c, h, w) = family.image_shape();
    let k = family.n_classes() as u32;
    let mut g = rng(seed, what);
    let xs = uniform(&mut g, n * c * h * w, 0.0, 1.0);
    let labels = (0..n as u32).map(|i| i % k).collect();
    (xs, [n, c, h, w], labels)
}

/// The parameter groups of the trainer: everything but the discriminator, and the
/// discriminator (`eabs-models`' `train.rs` splits them by this prefix).
const DISC_PREFIX: &str = "discriminator";

/// Optimiser state of the E-ABS training step.
struct TrainState {
    adam: Adam,
    disc_adam: Adam,
    main: Vec<(String, Var)>,
    disc: Vec<(String, Var)>,
}

impl TrainState {
    fn new(model: &AbsModel) -> Self {
        Self {
            adam: Adam::new(),
            disc_adam: Adam::new(),
            main: model.store().params_without_prefix(DISC_PREFIX),
            disc: model.store().params_with_prefix(DISC_PREFIX),
        }
    }
}

/// What one training step computed: the loss terms `[total, reconstruction, prior,
/// discriminative, discriminator]` and the gradients it applied (main group, then
/// discriminator), taken before the updates.
struct StepOutput {
    losses: Tensor,
    gradients: Named,
}

/// One step of Algorithm 1 as `Trainer::run_until` makes it for an ABS-family model (dropout
/// reseeded, reparameterisation and prior noise from `step_seed`; Adam at the paper's lr 1e-3):
/// encoder/decoder loss, backward, Adam on the main group; discriminator loss on the detached
/// latents against as many prior samples, backward, Adam on the discriminator.
fn train_step(
    model: &AbsModel,
    xs: &Tensor,
    labels: &Tensor,
    step_seed: u64,
    state: &mut TrainState,
    keep_gradients: bool,
) -> Result<StepOutput> {
    let lr = 1e-3;
    model.dropout_rng().reseed(step_seed);
    let mut rng = ChaCha8Rng::seed_from_u64(step_seed);
    let (parts, latents) = model.training_loss(xs, labels, &mut rng)?;
    let grads = parts.total.backward()?;
    let mut gradients = Vec::new();
    if keep_gradients {
        for (name, v) in &state.main {
            if let Some(g) = grads.get(v.as_tensor()) {
                gradients.push((format!("d total / d {name}"), g.clone()));
            }
        }
    }
    state.adam.step(&grads, &state.main, lr)?;
    drop(grads);
    let dl = match model.discriminator_loss(&latents, xs.dim(0)?, &mut rng)? {
        Some(dl) => {
            let grads = dl.backward()?;
            if keep_gradients {
                for (name, v) in &state.disc {
                    if let Some(g) = grads.get(v.as_tensor()) {
                        gradients.push((format!("d disc / d {name}"), g.clone()));
                    }
                }
            }
            state.disc_adam.step(&grads, &state.disc, lr)?;
            dl
        }
        None => Tensor::zeros((), DType::F32, xs.device())?,
    };
    let losses = Tensor::stack(
        &[
            parts.total.detach(),
            parts.reconstruction.detach(),
            parts.prior.detach(),
            parts.discriminative.detach(),
            dl.detach(),
        ],
        0,
    )?;
    Ok(StepOutput { losses, gradients })
}

fn train_checks(sizes: &Sizes, seed: u64, reference: &Side, subject: &Side) -> Result<Vec<Check>> {
    let mut out = Vec::new();
    for family in [DatasetKind::Mnist, DatasetKind::Svhn] {
        let f = family.name();
        let what = format!("train_step/{f}");
        let (xv, shape, labels) = batch_data(family, sizes.train_check_batch, seed, &what);
        let step_seed = rng(seed, &format!("{what}/step")).random::<u64>();
        let run = |side: &Side| -> Result<[Named; 4]> {
            let dev = &side.device;
            let cfg = ModelConfig::paper(family, ModelKind::E_ABS);
            let model = AbsModel::new(&cfg, seed, dev)?;
            let xs = tensor(&xv, &shape, dev)?;
            let ys = Tensor::from_slice(&labels, labels.len(), dev)?;
            let mut state = TrainState::new(&model);
            let step = train_step(&model, &xs, &ys, step_seed, &mut state, true)?;
            let params = model
                .store()
                .params()
                .iter()
                .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
                .collect();
            let buffers = model
                .store()
                .buffers()
                .iter()
                .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
                .collect();
            Ok([
                to_cpu(vec![("losses".to_string(), step.losses)])?,
                to_cpu(step.gradients)?,
                to_cpu(params)?,
                to_cpu(buffers)?,
            ])
        };
        let ([rl, rg, rp, rb], [sl, sg, sp, sb]) = both(reference, subject, run)?;
        let mut losses = compare_named(&format!("{what}/losses"), &rl, &sl, tol_train_losses())?;
        losses.shapes =
            "losses [5]: total, reconstruction, prior, discriminative, discriminator".into();
        out.push(losses);
        out.push(compare_named(
            &format!("{what}/gradients"),
            &rg,
            &sg,
            tol_train_gradients(),
        )?);
        out.push(compare_named(
            &format!("{what}/updated_parameters"),
            &rp,
            &sp,
            tol_train_parameters(),
        )?);
        out.push(compare_named(
            &format!("{what}/bn_running_stats"),
            &rb,
            &sb,
            tol_running_stats(),
        )?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// 3. E-ABS inference.

/// E-ABS inference on `side`'s device and engine, at `n_candidates` and `n_adam_steps`.
fn inference_engine(
    model: &AbsModel,
    side: &Side,
    n_candidates: usize,
    n_adam_steps: usize,
) -> Result<AbsInference<FrozenAbsModel>> {
    let frozen = FrozenAbsModel::new(model);
    let cfg = InferenceConfig {
        n_candidates,
        n_adam_steps,
        ..frozen.inference_config(LatentInference::Variational)
    };
    let mut inference = AbsInference::new(frozen, cfg)?;
    inference.set_fast_engine(side.fast_engine);
    let on_fast = inference.fast_engine().is_some();
    let want_fast = side.fast_engine && side.device.is_cpu() && !side.stock_ops;
    ensure!(
        on_fast == want_fast,
        "inference takes the {} engine where this side should take the {} one",
        if on_fast { "fast" } else { "autodiff" },
        if want_fast { "fast" } else { "autodiff" }
    );
    Ok(inference)
}

fn inference_checks(
    sizes: &Sizes,
    seed: u64,
    reference: &Side,
    subject: &Side,
) -> Result<Vec<Check>> {
    let mut out = Vec::new();
    for family in [DatasetKind::Mnist, DatasetKind::Svhn] {
        let f = family.name();
        let what = format!("inference/{f}");
        let (xv, shape, _) = batch_data(family, sizes.inference_check_images, seed, &what);
        let run = |side: &Side| -> Result<(Named, Tensor)> {
            let dev = &side.device;
            let model = AbsModel::new(&ModelConfig::paper(family, ModelKind::E_ABS), seed, dev)?;
            let inference = inference_engine(
                &model,
                side,
                sizes.inference_check_candidates,
                sizes.inference_check_adam_steps,
            )?;
            let o = inference.infer(&tensor(&xv, &shape, dev)?, seed)?;
            let lv = o
                .log_variances
                .clone()
                .context("variational inference returned no log-variances")?;
            let named = vec![
                ("initial losses".to_string(), o.initial_losses),
                ("losses".to_string(), o.losses.clone()),
                ("logits".to_string(), o.logits),
                ("means".to_string(), o.means),
                ("log-variances".to_string(), lv),
            ];
            Ok((to_cpu(named)?, o.losses.to_device(&Device::Cpu)?))
        };
        let ((r, r_losses), (s, s_losses)) = both(reference, subject, run)?;
        out.push(compare_named(
            &format!("{what}/initial_losses"),
            &r[..1],
            &s[..1],
            tol_inference_start(),
        )?);
        out.push(compare_named(
            &format!("{what}/losses_and_logits"),
            &r[1..3],
            &s[1..3],
            tol_inference_losses(),
        )?);
        out.push(compare_named(
            &format!("{what}/latents"),
            &r[3..],
            &s[3..],
            tol_inference_latents(),
        )?);
        out.push(compare_predictions(
            &format!("{what}/predictions"),
            &r_losses,
            &s_losses,
            tol_inference_losses(),
        )?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// 4. PGD on the CNN.

/// One L_inf and one L_2 PGD step from the clean images (no random start), the paper's step
/// sizes at the dataset's epsilons.
fn pgd_checks(sizes: &Sizes, seed: u64, reference: &Side, subject: &Side) -> Result<Vec<Check>> {
    let mut out = Vec::new();
    for family in [DatasetKind::Mnist, DatasetKind::Svhn] {
        let f = family.name();
        for norm in [Norm::Linf, Norm::L2] {
            let what = format!("pgd/{f}/{}_step", norm.name());
            let (xv, shape, labels) = batch_data(family, sizes.pgd_check_batch, seed, &what);
            let epsilon = match norm {
                Norm::Linf => family.linf_epsilon(),
                Norm::L2 => family.l2_epsilon(),
            };
            let pgd = Pgd::new(PgdConfig {
                steps: 1,
                random_start: false,
                restarts: 1,
                ..PgdConfig::paper(norm, 1)
            })?;
            let criterion = Criterion::misclassification(labels.clone());
            let run = |side: &Side| -> Result<Named> {
                let dev = &side.device;
                let cnn =
                    Cnn::new(&ModelConfig::paper(family, ModelKind::Cnn), seed, dev)?.frozen();
                let xs = tensor(&xv, &shape, dev)?;
                let adv = pgd.run(&cnn, &xs, &criterion, epsilon)?;
                to_cpu(vec![("adversarial images".to_string(), adv)])
            };
            let (r, s) = both(reference, subject, run)?;
            let tol = match norm {
                Norm::Linf => tol_pgd_linf(),
                Norm::L2 => tol_pgd_l2(),
            };
            out.push(compare_named(&what, &r, &s, tol)?);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Timings.

/// `f(true)` once as a warm-up, then `f(false)` `reps` times, the device synchronised after
/// each run: `(fastest, mean)` seconds of the timed runs.
fn time_reps(
    device: &Device,
    reps: usize,
    f: &mut dyn FnMut(bool) -> Result<()>,
) -> Result<(f64, f64)> {
    f(true)?;
    device.synchronize()?;
    let mut times = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f(false)?;
        device.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    Ok((min, mean))
}

fn timing(
    name: &str,
    what: String,
    reps: usize,
    (min, mean): (f64, f64),
    items: usize,
    unit: &str,
) -> Timing {
    Timing {
        name: name.into(),
        what,
        reps: reps.max(1),
        seconds_min: min,
        seconds_mean: mean,
        items,
        unit: unit.into(),
        items_per_second: items as f64 / min.max(1e-12),
    }
}

fn timings(sizes: &Sizes, seed: u64, side: &Side) -> Result<Vec<Timing>> {
    let _switch = StockOps::set(side.stock_ops);
    let dev = &side.device;
    let family = sizes.timing_family;
    let f = family.name();
    let mut out = Vec::new();

    // The E-ABS training step.
    let model = AbsModel::new(&ModelConfig::paper(family, ModelKind::E_ABS), seed, dev)?;
    let (xv, shape, labels) = batch_data(family, sizes.train_batch, seed, "timing/train");
    let xs = tensor(&xv, &shape, dev)?;
    let ys = Tensor::from_slice(&labels, labels.len(), dev)?;
    let mut state = TrainState::new(&model);
    let mut step = 0u64;
    let t = time_reps(dev, sizes.reps, &mut |_warm_up| {
        step += 1;
        let o = train_step(&model, &xs, &ys, step, &mut state, false)?;
        o.losses.to_device(&Device::Cpu)?;
        Ok(())
    })?;
    out.push(timing(
        "eabs_train_step",
        format!(
            "one E-ABS training step (Algorithm 1: encoder, {} decoders, discriminator, both Adam updates), {f}, batch {}",
            family.n_classes(),
            sizes.train_batch
        ),
        sizes.reps,
        t,
        sizes.train_batch,
        "samples",
    ));
    drop(state);

    // E-ABS inference: the candidate cache (once per model), then one batch.
    let t0 = Instant::now();
    let inference = inference_engine(
        &model,
        side,
        sizes.inference_candidates,
        sizes.inference_adam_steps,
    )?;
    dev.synchronize()?;
    let cache_s = t0.elapsed().as_secs_f64();
    out.push(timing(
        "eabs_inference_cache",
        format!(
            "decoding the {} candidates with the {} decoders (once per model), {f}",
            sizes.inference_candidates,
            family.n_classes()
        ),
        1,
        (cache_s, cache_s),
        sizes.inference_candidates * family.n_classes(),
        "latents",
    ));
    let (xv, shape, _) = batch_data(family, sizes.inference_images, seed, "timing/inference");
    let xs = tensor(&xv, &shape, dev)?;
    let first = xs.narrow(0, 0, 1)?;
    let t = time_reps(dev, sizes.inference_reps, &mut |warm_up| {
        // The warm-up runs every kernel of the timed batch on one image.
        let batch = if warm_up { &first } else { &xs };
        inference
            .infer(batch, seed)?
            .losses
            .to_device(&Device::Cpu)?;
        Ok(())
    })?;
    out.push(timing(
        "eabs_inference_batch",
        format!(
            "E-ABS variational inference of {} images: best of {} candidates + the encoder proposal, {} Adam steps, {f}",
            sizes.inference_images, sizes.inference_candidates, sizes.inference_adam_steps
        ),
        sizes.inference_reps,
        t,
        sizes.inference_images,
        "images",
    ));
    drop(inference);

    // PGD on the CNN: the paper's L_inf PGD, one start.
    let cnn = Cnn::new(&ModelConfig::paper(family, ModelKind::Cnn), seed, dev)?.frozen();
    let (xv, shape, labels) = batch_data(family, sizes.pgd_batch, seed, "timing/pgd");
    let xs = tensor(&xv, &shape, dev)?;
    let criterion = Criterion::misclassification(labels);
    let pgd = Pgd::new(PgdConfig {
        steps: sizes.pgd_steps,
        restarts: 1,
        seed,
        ..PgdConfig::paper(Norm::Linf, 1)
    })?;
    let warm = Pgd::new(PgdConfig {
        steps: 1,
        ..pgd.config.clone()
    })?;
    let epsilon = family.linf_epsilon();
    let t = time_reps(dev, sizes.reps, &mut |warm_up| {
        // The warm-up is one step of the same attack.
        let attack = if warm_up { &warm } else { &pgd };
        attack
            .run(&cnn, &xs, &criterion, epsilon)?
            .to_device(&Device::Cpu)?;
        Ok(())
    })?;
    out.push(timing(
        "cnn_pgd_linf",
        format!(
            "L_inf PGD on the CNN, {} steps, one random start, epsilon {epsilon}, {f}, batch {}",
            sizes.pgd_steps, sizes.pgd_batch
        ),
        sizes.reps,
        t,
        sizes.pgd_batch,
        "images",
    ));
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The run.

/// The subject device opened, with a clear error where this binary cannot reach it.
fn open(device: DeviceChoice) -> Result<Device> {
    if device == DeviceChoice::Cuda && !cfg!(feature = "cuda") {
        bail!(
            "--device cuda: this binary was built without CUDA support; build it with the `cuda` feature \
             (`cargo run --release -p xtask --features xtask/cuda -- gpu-check --device cuda`, needs a CUDA \
             toolkit), or run the CPU half with `--device cpu`"
        );
    }
    device
        .device()
        .with_context(|| format!("opening the {} device", device.as_str()))
}

fn describe(device: DeviceChoice, hardware: &Hardware) -> String {
    match device {
        DeviceChoice::Cpu => format!("{} ({} logical cores)", hardware.cpu, hardware.cores),
        DeviceChoice::Cuda => std::process::Command::new("nvidia-smi")
            .args([
                "--query-gpu=name,memory.total,driver_version",
                "--format=csv,noheader",
                "--id=0",
            ])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| {
                format!(
                    "CUDA device 0: {}",
                    String::from_utf8_lossy(&o.stdout).trim()
                )
            })
            .unwrap_or_else(|| "CUDA device 0 (nvidia-smi gave no description)".into()),
    }
}

/// `YYYY-MM-DDThh:mm:ssZ` of a Unix time (the civil-from-days algorithm of H. Hinnant).
pub fn utc_string(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Runs every check and timing of `spec` (module docs) and returns the report; writing it is
/// the caller's ([`crate::write_json`]). A failed check is a report with `passed: false`, not
/// an error; errors are runs that could not be made (no CUDA, a model that failed to build).
pub fn run(spec: &DeviceCheckSpec) -> Result<DeviceCheckReport> {
    let t0 = Instant::now();
    let started = unix_time();
    let subject_device = open(spec.device)?;
    let sizes = Sizes::of(spec.sizes);
    let hardware = Hardware::detect();
    let reference = Side {
        device: Device::Cpu,
        stock_ops: false,
        fast_engine: true,
    };
    let (subject, subject_path, timed, timed_path) = match spec.device {
        DeviceChoice::Cpu => (
            Side {
                device: Device::Cpu,
                stock_ops: true,
                fast_engine: false,
            },
            "cpu with Candle's stock ops (eabs_kernels::set_stock_ops(true)) and the autodiff inference engine: the op set and code path CUDA runs",
            reference.clone(),
            "cpu default path: eabs-kernels' custom ops and the fast inference engine",
        ),
        DeviceChoice::Cuda => {
            let s = Side {
                device: subject_device.clone(),
                stock_ops: false,
                fast_engine: false,
            };
            (
                s.clone(),
                "cuda:0 with Candle's CUDA ops (eabs-kernels falls back to them off the CPU) and the autodiff inference engine",
                s,
                "cuda:0 default path: Candle's CUDA ops and the autodiff inference engine",
            )
        }
    };
    let seed = spec.seed;
    let mut checks = Vec::new();
    tracing::info!(
        device = spec.device.as_str(),
        sizes = spec.sizes.as_str(),
        "gpu-check: layers"
    );
    checks.extend(layer_checks(&sizes, seed, &reference, &subject).context("layer checks")?);
    tracing::info!("gpu-check: training step");
    checks
        .extend(train_checks(&sizes, seed, &reference, &subject).context("training-step checks")?);
    tracing::info!("gpu-check: inference");
    checks
        .extend(inference_checks(&sizes, seed, &reference, &subject).context("inference checks")?);
    tracing::info!("gpu-check: PGD");
    checks.extend(pgd_checks(&sizes, seed, &reference, &subject).context("PGD checks")?);
    tracing::info!("gpu-check: timings");
    let timings = timings(&sizes, seed, &timed).context("timings")?;
    let passed = checks.iter().all(|c| c.passed);
    Ok(DeviceCheckReport {
        device: DeviceInfo {
            choice: spec.device.as_str().into(),
            description: describe(spec.device, &hardware),
            cuda_compiled: cfg!(feature = "cuda"),
            tf32_gemm: candle_core::cuda::gemm_reduced_precision_f32(),
            hardware,
        },
        reference: "cpu default path: eabs-kernels' custom ops (conv2d, conv_transpose2d, batch norm, LeakyReLU, sigmoid) and the fast inference engine".into(),
        subject: subject_path.into(),
        timed: timed_path.into(),
        commit: git_revision(Path::new(".")),
        utc: utc_string(started),
        unix_time: started,
        seed,
        command: spec.command.clone(),
        sizes,
        checks,
        timings,
        wall_seconds: t0.elapsed().as_secs_f64(),
        passed,
    })
}

impl DeviceCheckReport {
    /// The check names every run produces, in order, and the timing names: what a complete
    /// report holds.
    pub fn expected_names() -> (Vec<String>, Vec<&'static str>) {
        let mut checks = Vec::new();
        for family in FAMILIES {
            let arch = ArchConfig::for_family(family);
            let f = family.name();
            for i in 0..arch.encoder.len() {
                for part in [
                    format!("encoder.conv{i}"),
                    format!("encoder.bn{i}.train"),
                    format!("encoder.bn{i}.eval"),
                    format!("encoder.leaky_relu{i}"),
                ] {
                    for pass in ["forward", "backward"] {
                        checks.push(format!("layer/{f}/{part}/{pass}"));
                    }
                }
            }
            let last = arch.decoder.len().saturating_sub(1);
            for i in 0..arch.decoder.len() {
                let mut parts = vec![format!("decoder.convt{i}")];
                if i == last {
                    parts.push("decoder.sigmoid".into());
                } else {
                    parts.push(format!("decoder.bn{i}.train"));
                    parts.push(format!("decoder.bn{i}.eval"));
                }
                for part in parts {
                    for pass in ["forward", "backward"] {
                        checks.push(format!("layer/{f}/{part}/{pass}"));
                    }
                }
            }
        }
        for (kind, parts) in [
            (
                "train_step",
                [
                    "losses",
                    "gradients",
                    "updated_parameters",
                    "bn_running_stats",
                ],
            ),
            (
                "inference",
                [
                    "initial_losses",
                    "losses_and_logits",
                    "latents",
                    "predictions",
                ],
            ),
        ] {
            for family in [DatasetKind::Mnist, DatasetKind::Svhn] {
                for part in parts {
                    checks.push(format!("{kind}/{}/{part}", family.name()));
                }
            }
        }
        for family in [DatasetKind::Mnist, DatasetKind::Svhn] {
            for norm in [Norm::Linf, Norm::L2] {
                checks.push(format!("pgd/{}/{}_step", family.name(), norm.name()));
            }
        }
        let timings = vec![
            "eabs_train_step",
            "eabs_inference_cache",
            "eabs_inference_batch",
            "cnn_pgd_linf",
        ];
        (checks, timings)
    }

    /// The failed checks.
    pub fn failures(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| !c.passed).collect()
    }

    /// A short plain-text table: checks grouped by kind and family (passed / total, largest
    /// difference, closest approach to a bound), every failed check in full, the timings.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut groups: BTreeMap<String, Vec<&Check>> = BTreeMap::new();
        for c in &self.checks {
            let key = c.name.splitn(3, '/').take(2).collect::<Vec<_>>().join("/");
            groups.entry(key).or_default().push(c);
        }
        let mut s = String::new();
        let _ = writeln!(
            s,
            "device:    {} ({})",
            self.device.choice, self.device.description
        );
        let _ = writeln!(s, "reference: {}", self.reference);
        let _ = writeln!(s, "subject:   {}", self.subject);
        // "of bound": how much of its deciding bound the worst check used
        // (`Check::worst_fraction_of_bound`, at most 1 to pass); "beyond": values past their
        // elementwise bound in the checks judged value by value, which only those with an
        // allowed share (module docs) may have and still pass.
        let _ = writeln!(
            s,
            "\n{:<24} {:>7} {:>11} {:>10} {:>7}  worst",
            "checks", "passed", "max |diff|", "of bound", "beyond"
        );
        for (key, cs) in &groups {
            let n_ok = cs.iter().filter(|c| c.passed).count();
            let max_diff = cs.iter().map(|c| c.max_abs_diff).fold(0f64, f64::max);
            let beyond: usize = cs
                .iter()
                .filter(|c| c.tolerance.max_relative_l2.is_none())
                .map(|c| c.n_mismatched)
                .sum();
            let worst = cs.iter().max_by(|a, b| {
                a.worst_fraction_of_bound
                    .total_cmp(&b.worst_fraction_of_bound)
            });
            let (frac, name) =
                worst.map_or((0.0, ""), |c| (c.worst_fraction_of_bound, c.name.as_str()));
            let _ = writeln!(
                s,
                "{key:<24} {:>7} {max_diff:>11.3e} {frac:>10.3} {beyond:>7}  {name}",
                format!("{n_ok}/{}", cs.len())
            );
        }
        for c in self.failures() {
            let _ = writeln!(
                s,
                "FAILED {}: max |diff| {:.3e} (reference up to {:.3e}), {} of {} values beyond atol {:.1e} + rtol {:.1e} * max|ref|, {} non-finite{}",
                c.name,
                c.max_abs_diff,
                c.max_abs_reference,
                c.n_mismatched,
                c.n_values,
                c.tolerance.atol,
                c.tolerance.rtol,
                c.n_non_finite,
                c.note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
            );
        }
        let _ = writeln!(s, "\ntimings ({}):", self.timed);
        for t in &self.timings {
            let _ = writeln!(
                s,
                "{:<22} {:>9.3} s  {:>10.1} {}/s  {}",
                t.name, t.seconds_min, t.items_per_second, t.unit, t.what
            );
        }
        let n_failed = self.failures().len();
        let _ = writeln!(
            s,
            "\n{}: {} of {} checks passed, {:.1} s",
            if self.passed { "PASSED" } else { "FAILED" },
            self.checks.len() - n_failed,
            self.checks.len(),
            self.wall_seconds
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_strings_follow_the_calendar() {
        assert_eq!(utc_string(0), "1970-01-01T00:00:00Z");
        // 2000-02-29 (a leap day of a century year divisible by 400), 12:34:56.
        assert_eq!(utc_string(951_827_696), "2000-02-29T12:34:56Z");
        assert_eq!(utc_string(1_709_251_199), "2024-02-29T23:59:59Z");
    }

    #[test]
    fn sizes_and_paths() {
        let full = Sizes::of(SizeChoice::Full);
        assert_eq!(
            (
                full.train_batch,
                full.inference_candidates,
                full.inference_adam_steps
            ),
            (512, 8000, 49)
        );
        assert_eq!((full.pgd_steps, full.pgd_batch), (80, 100));
        assert_eq!(
            default_report_path(DeviceChoice::Cuda, SizeChoice::Full),
            Path::new("results/gpu-check/cuda.json")
        );
        assert_eq!(
            default_report_path(DeviceChoice::Cpu, SizeChoice::Ci),
            Path::new("results/gpu-check/cpu-ci.json")
        );
        assert_eq!("CI".parse::<SizeChoice>(), Ok(SizeChoice::Ci));
        assert!("paper".parse::<SizeChoice>().is_err());
    }

    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        if cfg!(feature = "cuda") {
            return;
        }
        let err = open(DeviceChoice::Cuda).unwrap_err();
        assert!(
            format!("{err:#}").contains("without CUDA support"),
            "{err:#}"
        );
    }
}
