//! `cargo xtask train`: trains one model, for users who want a checkpoint rather than a table.
//!
//! It trains into the same checkpoint tree as `reproduce` (`<checkpoints>/<dataset>/<preset>/
//! seed<S>/<model>/`), so a model trained here is reused by `reproduce` and `eval`, and vice
//! versa. An interrupted run resumes from `last.safetensors`.

use anyhow::{bail, Result};
use clap::Args;
use eabs_datasets::{load, DatasetKind, Split};
use eabs_models::{AdvNorm, Family, ModelKind, Variant};
use std::path::PathBuf;

use crate::reproduce::preset::{train_config, PresetName};
use crate::reproduce::provenance::Timer;
use crate::reproduce::zoo::{checkpoint_root, obtain};
use crate::reproduce::DeviceArg;

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
    #[arg(long, value_enum, default_value_t = PresetName::Quick)]
    pub preset: PresetName,
    /// Training seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Device.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
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
        checkpoint_root(
            &self.checkpoints,
            Family::from(self.dataset),
            self.preset,
            self.seed,
        )
        .join(self.model.name())
    }
}

/// Arguments of `cargo xtask train`.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Trains (or resumes, or reuses) the model; adversarially trained CNNs first train (or reuse)
/// the CNN they start from (Section 4.3).
pub fn run(args: &TrainArgs) -> Result<()> {
    let a = &args.model;
    let device = a.device.device()?;
    let family = Family::from(a.dataset);
    let data_dir = a.data_dir.as_deref();
    let train = load(a.dataset, Split::Train, data_dir, a.seed)?;
    let val = load(a.dataset, Split::Validation, data_dir, a.seed)?;
    let root = checkpoint_root(&a.checkpoints, family, a.preset, a.seed);
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

#[cfg(test)]
mod tests {
    use super::*;

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
