//! `cargo xtask train`: trains one model, for users who want a checkpoint rather than a table.
//!
//! It trains into the same checkpoint tree as `reproduce` (`<checkpoints>/<dataset>/<preset>/
//! seed<S>/<model>/`), so a model trained here is reused by `reproduce` and `eval`, and vice
//! versa. An interrupted run resumes from `last.safetensors`.

use anyhow::{bail, Result};
use clap::Args;
use eabs_datasets::{load, DatasetKind, Split};
use eabs_models::{AdvNorm, Model, ModelConfig, ModelKind, TrainConfig, Trainer, Variant};
use std::path::PathBuf;
use std::sync::Arc;

use eabs_eval::preset::{train_config, EvalSizes, Preset};
use eabs_eval::provenance::Timer;
use eabs_eval::weights::{self, Release};
use eabs_eval::zoo::{checkpoint_root, obtain, InferenceValidator, ModelStore};
use eabs_eval::DeviceChoice;

/// Parses a model name: `cnn`, `adv-linf`, `adv-l2`, `abs`, `a-abs`, `d-abs`, `e-abs` (case and
/// `_`/`-` insensitive; `ad-abs` is E-ABS, as in Table 5).
pub fn parse_model_kind(s: &str) -> Result<ModelKind> {
    let norm = s.trim().to_ascii_lowercase().replace('_', "-");
    Ok(match norm.as_str() {
        "cnn" => ModelKind::Cnn,
        "adv-linf" | "adv-l-inf" => ModelKind::AdvCnn(AdvNorm::Linf),
        "adv-l2" => ModelKind::AdvCnn(AdvNorm::L2),
        "abs" => ModelKind::Abs(Variant::ABS),
        "a-abs" => ModelKind::Abs(Variant::A_ABS),
        "d-abs" => ModelKind::Abs(Variant::D_ABS),
        "e-abs" | "ad-abs" | "eabs" => ModelKind::Abs(Variant::E_ABS),
        _ => {
            bail!("unknown model '{s}': expected cnn, adv-linf, adv-l2, abs, a-abs, d-abs or e-abs")
        }
    })
}

/// Which model, trained how: shared by `train` and `eval`.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Dataset: mnist, fashion-mnist, svhn, supertraffic-10.
    #[arg(long)]
    pub dataset: DatasetKind,
    /// Model: cnn, adv-linf, adv-l2, abs, a-abs, d-abs, e-abs.
    #[arg(long, value_parser = |s: &str| parse_model_kind(s).map_err(|e| e.to_string()))]
    pub model: ModelKind,
    /// Training sizes: smoke, quick or paper (the paper's protocol).
    #[arg(long, default_value = "quick")]
    pub preset: Preset,
    /// Training seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Device: cpu, or cuda (build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Directory holding the dataset files (default: known system locations).
    #[arg(long, env = "EABS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Root of the checkpoint tree shared with `reproduce`.
    #[arg(long, default_value = "checkpoints")]
    pub checkpoints: PathBuf,
}

impl ModelArgs {
    /// The directory holding this model's `best.safetensors` / `last.safetensors`.
    pub fn model_dir(&self) -> PathBuf {
        checkpoint_root(&self.checkpoints, self.dataset, self.preset, self.seed)
            .join(self.model.name())
    }
}

/// Arguments of `cargo xtask train`.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub protocol: ProtocolArgs,
}

/// Changes to the preset's training protocol, for measuring candidate protocols: any of them
/// makes a custom run, named `<preset>+custom` in its `train_config.json`, that trains into
/// `--out` (never into the shared checkpoint tree, which holds the presets' models only).
#[derive(Debug, Clone, Default, PartialEq, Args)]
pub struct ProtocolArgs {
    /// Batch size (the paper: 512).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Number of epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Initial learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Halve the learning rate every this many epochs (0: constant).
    #[arg(long)]
    pub lr_halve_every: Option<usize>,
    /// Training samples (a seeded subset; 0: all).
    #[arg(long)]
    pub train_samples: Option<usize>,
    /// Validation images the real classifier scores every epoch (ABS family; 0: all).
    #[arg(long)]
    pub selection_samples: Option<usize>,
    /// Output directory of a custom run.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl ProtocolArgs {
    /// Whether any protocol flag is set (`--out` alone changes nothing).
    fn is_custom(&self) -> bool {
        ProtocolArgs {
            out: None,
            ..self.clone()
        } != ProtocolArgs::default()
    }

    /// `base` with these changes.
    fn apply(&self, base: TrainConfig) -> TrainConfig {
        let nonzero = |n: usize| (n > 0).then_some(n);
        TrainConfig {
            preset: format!("{}+custom", base.preset),
            batch_size: self.batch_size.unwrap_or(base.batch_size),
            epochs: self.epochs.unwrap_or(base.epochs),
            lr: self.lr.unwrap_or(base.lr),
            lr_halve_every: self.lr_halve_every.map_or(base.lr_halve_every, nonzero),
            max_train_samples: self.train_samples.map_or(base.max_train_samples, nonzero),
            selection_samples: self
                .selection_samples
                .map_or(base.selection_samples, nonzero),
            ..base
        }
    }
}

/// A custom-protocol run of one CNN or ABS-family model into `--out`.
fn run_custom(a: &ModelArgs, p: &ProtocolArgs) -> Result<()> {
    let Some(out) = &p.out else {
        bail!("a changed training protocol trains into --out DIR (the checkpoint tree holds the presets' models only)");
    };
    if matches!(a.model, ModelKind::AdvCnn(_)) {
        bail!("a custom protocol is for the CNN and the ABS family; adversarial training starts from the preset's CNN");
    }
    let device = a.device.device()?;
    let family = a.dataset;
    let train = load(a.dataset, Split::Train, a.data_dir.as_deref(), a.seed)?;
    let val = load(a.dataset, Split::Validation, a.data_dir.as_deref(), a.seed)?;
    let cfg = p.apply(train_config(a.preset, family, a.model, a.seed));
    tracing::info!(config = ?cfg, "custom training protocol");
    let _lock = eabs_eval::lock::DirLock::acquire(out, "checkpoint directory")?;
    let trainer = Trainer::new(cfg, out)?
        .with_validator(Arc::new(InferenceValidator::new(EvalSizes::of(a.preset))));
    let mut model = Model::new(&ModelConfig::paper(family, a.model), a.seed, &device)?;
    let summary = trainer.run(&mut model, &train, &val)?;
    println!(
        "{} on {}: {} epochs, best validation accuracy {:?} at epoch {:?}; metrics in {}",
        a.model.name(),
        a.dataset.name(),
        summary.epochs_done,
        summary.best_val_accuracy,
        summary.best_epoch,
        trainer.metrics_path().display()
    );
    Ok(())
}

/// Trains (or resumes, or reuses) the model; adversarially trained CNNs first train (or reuse)
/// the CNN they start from (Section 4.3).
pub fn run(args: &TrainArgs) -> Result<()> {
    let a = &args.model;
    if args.protocol.is_custom() {
        return run_custom(a, &args.protocol);
    }
    if args.protocol.out.is_some() {
        bail!("--out is for a changed training protocol; the preset's models train into --checkpoints");
    }
    let device = a.device.device()?;
    let family = a.dataset;
    let data_dir = a.data_dir.as_deref();
    let train = load(a.dataset, Split::Train, data_dir, a.seed)?;
    let val = load(a.dataset, Split::Validation, data_dir, a.seed)?;
    // `train` always trains (into --checkpoints); released weights are for `reproduce`.
    let root = ModelStore::new(&a.checkpoints, None, family, a.preset, a.seed);
    let mut timer = Timer::new();
    let mut kinds = vec![a.model];
    if matches!(a.model, ModelKind::AdvCnn(_)) {
        kinds.insert(0, ModelKind::Cnn);
    }
    for kind in kinds {
        let cfg = train_config(a.preset, family, kind, a.seed);
        tracing::info!(model = kind.name(), epochs = cfg.epochs, "training");
        obtain(
            kind, family, a.preset, a.seed, &root, &train, &val, &device, &mut timer,
        )?;
    }
    let dir = a.model_dir();
    for st in timer.into_stages() {
        println!("{}: {:.1} s", st.name, st.seconds);
    }
    println!(
        "{} on {}: best checkpoint {} (metrics per epoch in {})",
        a.model.name(),
        a.dataset.name(),
        dir.join("best.safetensors").display(),
        dir.join("metrics.jsonl").display()
    );
    Ok(())
}

/// `cargo xtask weights ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum WeightsCommand {
    /// Copy the models of a preset's checkpoint tree into the released tree and write each
    /// one's `release.json` (sha256 of every file, training configuration, best epoch).
    /// Unfinished trainings are released too, so a long run continues from the repository;
    /// `reproduce` uses only finished ones.
    Release {
        /// Dataset: mnist, fashion-mnist, svhn, supertraffic-10.
        #[arg(long)]
        dataset: DatasetKind,
        /// The preset whose models are released.
        #[arg(long, default_value = "quick")]
        preset: Preset,
        /// Training seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Models (default: every model of the tree).
        #[arg(long, value_delimiter = ',', value_parser = |s: &str| parse_model_kind(s).map_err(|e| e.to_string()))]
        models: Vec<ModelKind>,
        /// The checkpoint tree trained into (may be the released tree itself).
        #[arg(long, default_value = "checkpoints")]
        checkpoints: PathBuf,
        /// The released tree.
        #[arg(long, default_value = "weights")]
        weights: PathBuf,
        /// Keep a finished training's optimiser state (`last.safetensors`) in the release;
        /// by default it is left out (and removed when releasing in place: git history keeps
        /// it), since `reproduce` needs only the best checkpoint.
        #[arg(long)]
        keep_optimizer_state: bool,
    },
    /// Check every `release.json` below the released tree against its files.
    Verify {
        /// The released tree.
        #[arg(long, default_value = "weights")]
        weights: PathBuf,
    },
}

/// Runs `cargo xtask weights`.
pub fn run_weights(cmd: &WeightsCommand) -> Result<()> {
    let show = |dir: &std::path::Path, r: &Release| {
        println!(
            "{}: {} {} epochs {}/{}, best epoch {:?}, validation accuracy {:?} ({}), {:.0} s of training",
            dir.display(),
            r.model,
            r.family.name(),
            r.epochs_done,
            r.train_config.epochs,
            r.best_epoch,
            r.best_val_accuracy,
            r.selected_by.as_deref().unwrap_or("built-in validation"),
            r.train_seconds
        )
    };
    match cmd {
        WeightsCommand::Release {
            dataset,
            preset,
            seed,
            models,
            checkpoints,
            weights,
            keep_optimizer_state,
        } => {
            let kinds = if models.is_empty() {
                ALL_KINDS.to_vec()
            } else {
                models.clone()
            };
            let family = *dataset;
            let optimizer = if *keep_optimizer_state {
                weights::OptimizerState::Keep
            } else {
                weights::OptimizerState::DropWhenFinished
            };
            let done = weights::release(
                checkpoints,
                weights,
                family,
                *preset,
                *seed,
                &kinds,
                optimizer,
            )?;
            if done.is_empty() {
                bail!(
                    "nothing to release: no model of {kinds:?} has a last.safetensors under {}",
                    checkpoint_root(checkpoints, family, *preset, *seed).display()
                );
            }
            for (dir, r) in &done {
                show(dir, r);
            }
        }
        WeightsCommand::Verify { weights } => {
            let found = weights::verify_tree(weights)?;
            if found.is_empty() {
                bail!("no release.json below {}", weights.display());
            }
            for (dir, r) in &found {
                show(dir, r);
            }
            println!("{} releases verified", found.len());
        }
    }
    Ok(())
}

/// Every model kind, in the order of the tables and then the ablations.
const ALL_KINDS: [ModelKind; 7] = [
    ModelKind::Cnn,
    ModelKind::AdvCnn(AdvNorm::Linf),
    ModelKind::AdvCnn(AdvNorm::L2),
    ModelKind::ABS,
    ModelKind::E_ABS,
    ModelKind::Abs(Variant::A_ABS),
    ModelKind::Abs(Variant::D_ABS),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_flags_make_a_labelled_custom_run() {
        let base = train_config(
            Preset::Quick,
            DatasetKind::FashionMnist,
            ModelKind::E_ABS,
            0,
        );
        let none = ProtocolArgs {
            out: Some("x".into()),
            ..Default::default()
        };
        assert!(!none.is_custom(), "--out alone changes nothing");
        let p = ProtocolArgs {
            batch_size: Some(128),
            lr_halve_every: Some(0),
            train_samples: Some(0),
            ..Default::default()
        };
        assert!(p.is_custom());
        let c = p.apply(base.clone());
        assert_eq!(c.preset, "quick+custom");
        assert_eq!(
            (c.batch_size, c.lr_halve_every, c.max_train_samples),
            (128, None, None)
        );
        assert_eq!(
            (c.epochs, c.lr, c.selection_samples),
            (base.epochs, base.lr, base.selection_samples)
        );
    }

    #[test]
    fn model_names_parse() {
        assert_eq!(parse_model_kind("E-ABS").unwrap(), ModelKind::E_ABS);
        assert_eq!(parse_model_kind("ad_abs").unwrap(), ModelKind::E_ABS);
        assert_eq!(
            parse_model_kind("adv-linf").unwrap(),
            ModelKind::AdvCnn(AdvNorm::Linf)
        );
        assert_eq!(parse_model_kind("abs").unwrap(), ModelKind::ABS);
        let err = parse_model_kind("resnet").unwrap_err().to_string();
        assert!(err.contains("resnet") && err.contains("e-abs"), "{err}");
        // Every kind's display name parses back to itself.
        for k in [
            ModelKind::Cnn,
            ModelKind::AdvCnn(AdvNorm::Linf),
            ModelKind::AdvCnn(AdvNorm::L2),
            ModelKind::ABS,
            ModelKind::Abs(Variant::A_ABS),
            ModelKind::Abs(Variant::D_ABS),
            ModelKind::E_ABS,
        ] {
            assert_eq!(parse_model_kind(k.name()).unwrap(), k);
        }
    }
}
