//! The trained models every experiment attacks: trained on demand (or resumed, or reused from a
//! matching checkpoint), then frozen into a classifier with the inference the paper prescribes.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use eabs_core::{Bounds, Differentiable};
use eabs_datasets::{Dataset, DatasetKind};
use eabs_inference::{
    AbsClassifier, AbsInference, FrozenAbsModel, InferenceConfig, LatentInference,
};
use eabs_models::{
    AbsModel, Model, ModelConfig, ModelKind, Trainer, TrainingData, Validator, Variant,
};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::preset::{train_config, EvalSizes, Preset};
use crate::provenance::Timer;

/// Where the checkpoints of one (family, preset, seed) live: `<root>/<family>/<preset>/seed<S>/`,
/// one directory per model kind below it.
pub fn checkpoint_root(root: &Path, family: DatasetKind, preset: Preset, seed: u64) -> PathBuf {
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
    /// Any other model: a user's own, evaluated with the same suite.
    Other(Box<dyn Differentiable>),
}

impl Evaluated {
    /// The model as the attacks see it.
    pub fn classifier(&self) -> &dyn Differentiable {
        match self {
            Evaluated::Cnn(c) => c.as_ref(),
            Evaluated::Abs(a) => a.as_ref(),
            Evaluated::Other(m) => m.as_ref(),
        }
    }
}

/// Where the models of one (family, preset, seed) come from: released weights (`weights/`,
/// see [`crate::weights`]) when present and matching, else the checkpoint tree, where they are
/// trained, resumed or reused.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStore {
    /// `<checkpoints>/<family>/<preset>/seed<S>/`: trained models, one directory per kind.
    pub checkpoints: PathBuf,
    /// `<weights>/<family>/<preset>/seed<S>/`, unless released weights are ignored (`--retrain`).
    pub released: Option<PathBuf>,
    /// Whether a model found in neither place (or unfinished) may be trained; when false,
    /// [`obtain`] fails instead.
    #[serde(skip)]
    pub train: bool,
}

impl ModelStore {
    /// The store of `family` under `preset` and `seed`; `weights: None` trains everything.
    pub fn new(
        checkpoints: &Path,
        weights: Option<&Path>,
        family: DatasetKind,
        preset: Preset,
        seed: u64,
    ) -> Self {
        Self {
            checkpoints: checkpoint_root(checkpoints, family, preset, seed),
            released: weights.map(|w| checkpoint_root(w, family, preset, seed)),
            train: true,
        }
    }

    /// The released best checkpoint of `kind` trained with `cfg`, if any (see
    /// [`crate::weights::released_best`]).
    fn released_best(
        &self,
        kind: ModelKind,
        cfg: &eabs_models::TrainConfig,
    ) -> Result<Option<PathBuf>> {
        match &self.released {
            Some(root) => crate::weights::released_best(root, kind, cfg),
            None => Ok(None),
        }
    }
}

/// Which checkpoint file a model came from, by content: what journals and results record, so
/// that a result is never reused for other weights at the same path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CheckpointId {
    /// The file.
    pub path: PathBuf,
    /// sha256 of the whole file (as `sha256sum` prints it).
    pub sha256: String,
}

impl CheckpointId {
    /// Digests the file at `path`.
    pub fn of(path: &Path) -> Result<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            sha256: crate::weights::sha256_file(path)?,
        })
    }
}

/// The training configuration `checkpoint` was trained with: the `train_config.json` that
/// [`Trainer`] (and a release) writes beside its checkpoints, or `None` where there is none (a
/// checkpoint copied out of its folder). A checkpoint's own metadata holds its architecture,
/// not its training, so a result that names the training must take it from here, never from a
/// preset the checkpoint may not have been trained under (`eval --checkpoint` of a custom run
/// recorded the preset's epochs and sample counts before 2026-12-07).
pub fn trained_with(checkpoint: &Path) -> Result<Option<eabs_models::TrainConfig>> {
    let file = checkpoint
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(eabs_models::train::TRAIN_CONFIG_FILE);
    if !file.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let config = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{}: not a training configuration (the `train_config.json` the trainer writes beside {})",
            file.display(),
            checkpoint.display()
        )
    })?;
    Ok(Some(config))
}

/// A model and the checkpoint it was loaded from.
#[derive(Debug, Clone)]
pub struct Obtained {
    /// The model.
    pub model: Model,
    /// Its checkpoint.
    pub checkpoint: CheckpointId,
}

/// Returns the best-by-validation checkpoint of `kind`: the released one when it matches the
/// preset's training configuration, else trained in `store.checkpoints/<kind name>` (resuming
/// an interrupted run, or reusing a finished one). Adversarially trained CNNs start from the
/// CNN's best checkpoint (Madry et al. via Section 4.3), released or trained, which must exist.
#[allow(clippy::too_many_arguments)]
pub fn obtain(
    kind: ModelKind,
    family: DatasetKind,
    preset: Preset,
    seed: u64,
    store: &ModelStore,
    train: &Dataset,
    val: &Dataset,
    device: &Device,
    timer: &mut Timer,
) -> Result<Obtained> {
    let cfg = train_config(preset, family, kind, seed);
    let expected = ModelConfig::paper(family, kind);
    if let Some(best) = store.released_best(kind, &cfg)? {
        let checkpoint = CheckpointId::of(&best)?;
        let model = Model::load_expecting(&best, &expected, device)
            .with_context(|| format!("loading released weights {}", best.display()))?;
        return Ok(Obtained { model, checkpoint });
    }
    let dir = store.checkpoints.join(kind.name());
    let trainer = Trainer::new(cfg, &dir)?
        .with_validator(Arc::new(InferenceValidator::new(EvalSizes::of(preset))));
    let best = trainer.best_path();
    if !store.train && !trainer.is_finished()? {
        bail!(
            "{}: no released weights match the {} preset's training configuration and {} holds no \
             finished training; run without --no-train to train it (or `cargo xtask train`)",
            kind.name(),
            preset.as_str(),
            dir.display()
        );
    }
    // One training per checkpoint directory at a time (a finished one only reloads its
    // checkpoint, under the lock too, so it never reads a file another run is replacing).
    // A run that may not train (`--no-train`, every shard of a sharded run) reads a finished
    // training only, which nothing replaces: it takes no lock, so shards load side by side.
    let _lock = if store.train {
        Some(crate::lock::DirLock::acquire(&dir, "checkpoint directory")?)
    } else {
        None
    };
    timer.stage(&format!("train {}", kind.name()), || {
        let mut model = match kind {
            ModelKind::AdvCnn(_) => {
                let cnn_cfg = train_config(preset, family, ModelKind::Cnn, seed);
                let cnn_best = match store.released_best(ModelKind::Cnn, &cnn_cfg)? {
                    Some(p) => p,
                    None => store
                        .checkpoints
                        .join(ModelKind::Cnn.name())
                        .join("best.safetensors"),
                };
                let cnn = Model::load_expecting(
                    &cnn_best,
                    &ModelConfig::paper(family, ModelKind::Cnn),
                    device,
                )
                .with_context(|| {
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
    let checkpoint = CheckpointId::of(&best)?;
    let model = Model::load_expecting(&best, &expected, device)
        .with_context(|| format!("loading {}", best.display()))?;
    Ok(Obtained { model, checkpoint })
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
            let inference = abs_inference(&a, sizes, mode)?;
            Evaluated::Abs(Box::new(AbsClassifier::new(inference, Bounds::UNIT, seed)))
        }
    })
}

/// The inference an ABS-like model is evaluated with: `mode` (default:
/// [`default_inference`]) at the candidate and Adam-step counts of `sizes`.
pub fn abs_inference(
    a: &AbsModel,
    sizes: &EvalSizes,
    mode: Option<LatentInference>,
) -> Result<AbsInference<FrozenAbsModel>> {
    let variant = a.variant();
    let frozen = FrozenAbsModel::new(a);
    let mode = mode.unwrap_or_else(|| default_inference(variant));
    // The plain ABS model with exact inference is the reference's configuration; every
    // other combination is the model's own (use_encoder, kl_beta) with the chosen mode.
    let base = if variant == Variant::ABS && mode == LatentInference::Exact {
        InferenceConfig::abs_reference()
    } else {
        frozen.inference_config(mode)
    };
    let cfg = sizes.inference(InferenceConfig { mode, ..base });
    Ok(AbsInference::new(frozen, cfg)?)
}

/// Checkpoint selection of ABS-like models by their real classifier: the inference they are
/// evaluated with (default mode, the preset's candidates and Adam steps), one draw per image
/// with the trainer's fixed validation seed (issue: the encoder-mean proxy reads ~20 points
/// above the real classifier and picks the wrong epochs).
#[derive(Debug, Clone)]
pub struct InferenceValidator {
    sizes: EvalSizes,
}

impl InferenceValidator {
    /// Validates at the inference sizes of `sizes`.
    pub fn new(sizes: EvalSizes) -> Self {
        Self { sizes }
    }
}

impl Validator for InferenceValidator {
    fn describe(&self) -> String {
        format!(
            "the real classifier (default inference, {} candidates, {} Adam steps)",
            self.sizes.n_candidates, self.sizes.n_adam_steps
        )
    }

    fn correct(
        &self,
        model: &Model,
        data: &dyn TrainingData,
        idx: &[usize],
        seed: u64,
    ) -> std::result::Result<Vec<bool>, Box<dyn std::error::Error + Send + Sync>> {
        let Model::Abs(a) = model else {
            return Err("the inference validator scores ABS-like models only".into());
        };
        // One candidate cache for all images, fixed batches of the attacks' size and one seed:
        // every epoch is scored on the same candidates and the same noise.
        let inference = abs_inference(a, &self.sizes, None)?;
        let device = a.store().device();
        let mut out = Vec::with_capacity(idx.len());
        for chunk in idx.chunks(self.sizes.batch_size.max(1)) {
            let xs = data.images(chunk, device)?;
            let predictions = inference
                .infer(&xs, seed)?
                .predictions()?
                .to_vec1::<u32>()?;
            out.extend(
                predictions
                    .iter()
                    .zip(data.labels(chunk))
                    .map(|(p, y)| *p == y),
            );
        }
        Ok(out)
    }
}
