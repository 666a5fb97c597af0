//! The trained models every experiment attacks: trained on demand (or resumed, or reused from a
//! matching checkpoint), then frozen into a classifier with the inference the paper prescribes.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use eabs_core::{Bounds, Differentiable};
use eabs_datasets::{Dataset, DatasetKind};
use eabs_inference::{
    AbsClassifier, AbsInference, FrozenAbsModel, InferenceConfig, LatentInference,
};
use eabs_models::{Family, Model, ModelConfig, ModelKind, Trainer, Variant};
use std::path::{Path, PathBuf};

use super::preset::{train_config, EvalSizes, PresetName};
use super::provenance::Timer;

/// The attack library's name for a dataset (its epsilons and PGD restarts).
pub fn attack_dataset(kind: DatasetKind) -> eabs_attacks::paper::Dataset {
    use eabs_attacks::paper::Dataset as D;
    match kind {
        DatasetKind::Mnist => D::Mnist,
        DatasetKind::FashionMnist => D::FashionMnist,
        DatasetKind::Svhn => D::Svhn,
        DatasetKind::SuperTraffic10 => D::SuperTraffic10,
    }
}

/// Where the checkpoints of one (family, preset, seed) live: `<root>/<family>/<preset>/seed<S>/`,
/// one directory per model kind below it.
pub fn checkpoint_root(root: &Path, family: Family, preset: PresetName, seed: u64) -> PathBuf {
    root.join(family.name())
        .join(preset.as_str())
        .join(format!("seed{seed}"))
}

/// A trained model ready to be attacked.
pub enum Evaluated {
    /// CNN or adversarially trained CNN (deterministic, autodiff gradients).
    Cnn(Box<eabs_models::Cnn>),
    /// An ABS-like model behind its inference, with the adaptive gradient of eq. (8).
    Abs(Box<AbsClassifier<FrozenAbsModel>>),
}

impl Evaluated {
    /// The model as the attacks see it.
    pub fn classifier(&self) -> &dyn Differentiable {
        match self {
            Evaluated::Cnn(c) => c.as_ref(),
            Evaluated::Abs(a) => a.as_ref(),
        }
    }
}

/// Trains `kind` in `ckpt_root/<kind name>` (resuming an interrupted run, or reusing a finished
/// one), and returns its best-by-validation checkpoint. Adversarially trained CNNs start from
/// the CNN's best checkpoint in the same root (Madry et al. via Section 4.3), which must exist.
#[allow(clippy::too_many_arguments)]
pub fn obtain(
    kind: ModelKind,
    family: Family,
    preset: PresetName,
    seed: u64,
    ckpt_root: &Path,
    train: &Dataset,
    val: &Dataset,
    device: &Device,
    timer: &mut Timer,
) -> Result<Model> {
    let dir = ckpt_root.join(kind.name());
    let cfg = train_config(preset, family, kind, seed);
    let trainer = Trainer::new(cfg, &dir)?;
    let best = trainer.best_path();
    timer.stage(&format!("train {}", kind.name()), || {
        let mut model = match kind {
            ModelKind::AdvCnn(_) => {
                let cnn_best = ckpt_root
                    .join(ModelKind::Cnn.name())
                    .join("best.safetensors");
                let cnn = Model::load(&cnn_best, device).with_context(|| {
                    format!(
                        "loading the CNN to adversarially train from {} (train the CNN first)",
                        cnn_best.display()
                    )
                })?;
                match cnn {
                    Model::Cnn(mut c) => {
                        c.set_kind(kind)?;
                        Model::Cnn(c)
                    }
                    Model::Abs(_) => bail!(
                        "{} holds an ABS model, expected the CNN",
                        cnn_best.display()
                    ),
                }
            }
            _ => Model::new(&ModelConfig::paper(family, kind), seed, device)?,
        };
        let summary = trainer.run(&mut model, train, val)?;
        tracing::info!(
            model = kind.name(),
            epochs = summary.epochs_done,
            best_epoch = ?summary.best_epoch,
            best_val_accuracy = ?summary.best_val_accuracy,
            "training done"
        );
        Ok(())
    })?;
    Model::load(&best, device).with_context(|| format!("loading {}", best.display()))
}

/// The latent inference the paper uses for a variant: exact for ABS (the reference), variational
/// for every other variant (Section 3.3). Table 5's V flag overrides it.
pub fn default_inference(variant: Variant) -> LatentInference {
    if variant == Variant::ABS {
        LatentInference::Exact
    } else {
        LatentInference::Variational
    }
}

/// Freezes `model` for evaluation. ABS-like models get ABS-style inference at `sizes` with
/// `mode` (default: [`default_inference`]); `seed` drives the inference's random candidates.
pub fn to_evaluated(
    model: Model,
    sizes: &EvalSizes,
    mode: Option<LatentInference>,
    seed: u64,
) -> Result<Evaluated> {
    Ok(match model {
        Model::Cnn(c) => Evaluated::Cnn(Box::new(c.frozen())),
        Model::Abs(a) => {
            let variant = a.variant();
            let frozen = FrozenAbsModel::new(&a);
            let mode = mode.unwrap_or_else(|| default_inference(variant));
            // The plain ABS model with exact inference is the reference's configuration; every
            // other combination is the model's own (use_encoder, kl_beta) with the chosen mode.
            let base = if variant == Variant::ABS && mode == LatentInference::Exact {
                InferenceConfig::abs_reference()
            } else {
                frozen.inference_config(mode)
            };
            let cfg = sizes.inference(InferenceConfig { mode, ..base });
            let inference = AbsInference::new(frozen, cfg)?;
            Evaluated::Abs(Box::new(AbsClassifier::new(inference, Bounds::UNIT, seed)))
        }
    })
}
