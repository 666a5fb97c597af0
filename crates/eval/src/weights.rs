//! Released weights: trained checkpoints committed under `weights/` so that a new user gets a
//! preset's tables without retraining, and a long training continues from the repository alone.
//!
//! `weights/` has the layout of the checkpoint tree (`<family>/<preset>/seed<S>/<model>/`).
//! A model directory is *released* when it holds `release.json` ([`Release`]): the training
//! configuration it was trained with, the sha256 of every file, the best epoch and its
//! validation accuracy, and the commit. `reproduce` and `train` use a released model only when
//! its configuration equals the preset's (so weights of an older protocol are never passed
//! off as the current one) and every digest matches (a damaged file is an error, not a silent
//! retrain); `--retrain` ignores releases.

use anyhow::{bail, Context, Result};
use eabs_models::{DatasetKind, ModelKind, TrainConfig, TrainState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::preset::Preset;
use crate::provenance::{git_revision, unix_time};
use crate::zoo::checkpoint_root;

/// The manifest of one released model (`release.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    /// Model name (`ModelKind::name`).
    pub model: String,
    /// Dataset family.
    pub family: DatasetKind,
    /// Preset whose training sizes made it.
    pub preset: Preset,
    /// Training seed.
    pub seed: u64,
    /// The full training configuration.
    pub train_config: TrainConfig,
    /// Completed epochs (equal to `train_config.epochs` for a finished training).
    pub epochs_done: usize,
    /// Epoch of the best checkpoint and its validation accuracy.
    pub best_epoch: Option<usize>,
    /// See `best_epoch`.
    pub best_val_accuracy: Option<f64>,
    /// What selected the best checkpoint (the real classifier for ABS-like models).
    pub selected_by: Option<String>,
    /// Total training wall time over all epochs (seconds, from `metrics.jsonl`).
    pub train_seconds: f64,
    /// sha256 (hex) of each file of the directory, by file name.
    pub sha256: BTreeMap<String, String>,
    /// The label the training ran under when it differs from the preset's: a custom run
    /// (`train --out` with flags) whose configuration equals the preset's in every field but
    /// the label, released as the preset's (checked by [`release`]; `train_config` then holds
    /// the preset's label, and the checkpoints' own metadata keeps the original).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained_as: Option<String>,
    /// Epochs done by the longer run this release is the start of, when it is one. The
    /// learning-rate schedule, the data order and every draw depend on the epoch index only (a
    /// run may be extended), so the first `train_config.epochs` epochs of a longer run of the
    /// same configuration *are* the preset's run; when its best epoch lies within them, its
    /// `best.safetensors` is the preset's best checkpoint. Such a release holds the first
    /// epochs' metrics and no optimiser state (the longer run's is of a later epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_of_epochs: Option<usize>,
    /// Commit the release was made at.
    pub commit: String,
    /// When (Unix seconds).
    pub released_at: u64,
}

/// The files a release holds: the best checkpoint (what is evaluated), the last one with the
/// optimiser state (what a longer training resumes from), metrics and configuration.
pub const RELEASE_FILES: [&str; 4] = [
    "best.safetensors",
    "last.safetensors",
    "metrics.jsonl",
    eabs_models::train::TRAIN_CONFIG_FILE,
];

/// What a release does with the optimiser state (`last.safetensors`, two thirds of a release's
/// bytes) of a finished training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerState {
    /// Keep it: the training can be extended from the release.
    Keep,
    /// Leave it out of a finished training's release (removing it from the folder when the
    /// checkpoint tree is the released tree): `reproduce` needs only the best checkpoint, and git
    /// history keeps the file. Unfinished trainings always keep it, so they resume.
    DropWhenFinished,
}

/// Name of the manifest file.
pub const MANIFEST: &str = "release.json";

/// sha256 of a file, hex (the datasets' digest function, so one implementation serves both).
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(eabs_datasets::manifest::sha256_hex(&bytes))
}

impl Release {
    /// Reads `dir/release.json`, or `None` when the directory holds no release.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(MANIFEST);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let r = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a release manifest", path.display()))?;
        Ok(Some(r))
    }

    /// Whether the training ran all its epochs.
    pub fn is_finished(&self) -> bool {
        self.epochs_done >= self.train_config.epochs
    }

    /// The files this release must hold: [`RELEASE_FILES`], without `last.safetensors` for a
    /// finished training released without its optimiser state.
    pub fn files(&self) -> Vec<&'static str> {
        RELEASE_FILES
            .into_iter()
            .filter(|&f| {
                f != "last.safetensors" || !self.is_finished() || self.sha256.contains_key(f)
            })
            .collect()
    }

    /// Checks every recorded digest against the files in `dir`, naming the first that differs.
    pub fn verify(&self, dir: &Path) -> Result<()> {
        for name in self.files() {
            let Some(want) = self.sha256.get(name) else {
                bail!(
                    "{}: no sha256 recorded for {name}",
                    dir.join(MANIFEST).display()
                );
            };
            let path = dir.join(name);
            if !path.is_file() {
                bail!(
                    "{}: released file missing (listed in {MANIFEST})",
                    path.display()
                );
            }
            let got = sha256_file(&path)?;
            if &got != want {
                bail!(
                    "{}: sha256 {got} differs from {want} recorded in {MANIFEST}: the file was changed or damaged (restore it with git, or pass --retrain)",
                    path.display()
                );
            }
        }
        Ok(())
    }
}

/// The released `best.safetensors` of `kind` under `weights_root` (the `weights/` tree), if a
/// release exists whose training configuration is `expected` and whose digests match. A
/// release of another configuration is skipped with a log line; a damaged one is an error.
pub fn released_best(
    weights_root: &Path,
    kind: ModelKind,
    expected: &TrainConfig,
) -> Result<Option<PathBuf>> {
    let dir = weights_root.join(kind.name());
    let Some(release) = Release::read(&dir)? else {
        return Ok(None);
    };
    if &release.train_config != expected {
        tracing::warn!(
            dir = %dir.display(),
            "released weights were trained with another configuration than the preset's; training instead"
        );
        return Ok(None);
    }
    if release.epochs_done != expected.epochs {
        tracing::warn!(
            dir = %dir.display(),
            epochs_done = release.epochs_done,
            epochs = expected.epochs,
            "released weights are of an unfinished training; training instead"
        );
        return Ok(None);
    }
    release.verify(&dir)?;
    tracing::info!(dir = %dir.display(), "using released weights");
    Ok(Some(dir.join("best.safetensors")))
}

/// Releases every model of `kinds` found in the checkpoint tree at `checkpoints` into
/// `weights` (copying its files, unless the two trees are the same) and writes its manifest.
/// Unfinished trainings are released too (marked by `epochs_done`): they are what a long run
/// resumes from, but `reproduce` uses only finished ones. A run is released as the preset's
/// when its configuration is the preset's up to the label (`trained_as`), or when it is a
/// longer run of the preset's configuration that has done the preset's epochs with its best
/// epoch among them (`prefix_of_epochs`; released into another tree only, as its metrics are
/// cut to the preset's epochs and its optimiser state left out).
pub fn release(
    checkpoints: &Path,
    weights: &Path,
    family: DatasetKind,
    preset: Preset,
    seed: u64,
    kinds: &[ModelKind],
    optimizer: OptimizerState,
) -> Result<Vec<(PathBuf, Release)>> {
    let src_root = checkpoint_root(checkpoints, family, preset, seed);
    let dst_root = checkpoint_root(weights, family, preset, seed);
    let commit = git_revision(Path::new("."));
    let mut out = Vec::new();
    for &kind in kinds {
        let (src, dst) = (src_root.join(kind.name()), dst_root.join(kind.name()));
        if !src.join("last.safetensors").is_file() {
            continue;
        }
        let expected = crate::preset::train_config(preset, family, kind, seed);
        let r = release_model(
            &src,
            &dst,
            (family, preset, seed, kind),
            &expected,
            optimizer,
            &commit,
        )?;
        out.push((dst, r));
    }
    Ok(out)
}

/// Releases the model directory `src` into `dst` as the run of `expected` when it is one (see
/// [`release`] and [`Release::prefix_of_epochs`]), else under its own configuration.
fn release_model(
    src: &Path,
    dst: &Path,
    (family, preset, seed, kind): (DatasetKind, Preset, u64, ModelKind),
    expected: &TrainConfig,
    optimizer: OptimizerState,
    commit: &str,
) -> Result<Release> {
    std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
    let same = std::fs::canonicalize(src)? == std::fs::canonicalize(dst)?;
    let ckpt =
        eabs_models::Checkpoint::read(&src.join("last.safetensors"), &candle_core::Device::Cpu)?;
    let state: TrainState = serde_json::from_str(
        ckpt.meta(eabs_models::checkpoint::KEY_TRAIN_STATE)?,
    )
    .with_context(|| {
        format!(
            "{}: bad train_state metadata",
            src.join("last.safetensors").display()
        )
    })?;
    // A custom run of exactly the preset's configuration is the preset's run: released
    // under the preset's label, with the label it ran under recorded. Anything else keeps
    // its own configuration (and `reproduce` will not use it for this preset).
    let mut config = state.config.clone();
    let mut trained_as = None;
    let mut epochs_done = state.epochs_done;
    let mut prefix_of_epochs = None;
    let same_but = |epochs: usize| {
        (TrainConfig {
            preset: expected.preset.clone(),
            epochs,
            ..config.clone()
        }) == *expected
    };
    if config.epochs > expected.epochs && same_but(expected.epochs) {
        // A longer run of the preset's protocol: its start is the preset's run, usable
        // only if the best checkpoint it kept lies within that start.
        let within = state.best_epoch.is_some_and(|b| b <= expected.epochs);
        if state.epochs_done < expected.epochs || !within {
            bail!(
                "{}: a {}-epoch run of the preset's protocol ({} done, best epoch {:?}) is \
                 the preset's {}-epoch run only once it has done {} epochs and its best \
                 epoch lies within them",
                src.display(),
                config.epochs,
                state.epochs_done,
                state.best_epoch,
                expected.epochs,
                expected.epochs
            );
        }
        if same {
            bail!(
                "{}: releasing a longer run as the preset's shortens its record (metrics, \
                 optimiser state): release it into another tree",
                src.display()
            );
        }
        trained_as = Some(config.preset.clone());
        prefix_of_epochs = Some(state.epochs_done);
        epochs_done = expected.epochs;
        config = expected.clone();
    } else if config.preset != expected.preset && same_but(config.epochs) {
        trained_as = Some(std::mem::replace(
            &mut config.preset,
            expected.preset.clone(),
        ));
    }
    let drop_last = prefix_of_epochs.is_some()
        || (optimizer == OptimizerState::DropWhenFinished
            && state.epochs_done >= state.config.epochs);
    let files: Vec<&str> = RELEASE_FILES
        .into_iter()
        .filter(|&f| !(drop_last && f == "last.safetensors"))
        .collect();
    if !same {
        for name in &files {
            let (from, to) = (src.join(name), dst.join(name));
            let bytes =
                std::fs::read(&from).with_context(|| format!("reading {}", from.display()))?;
            crate::provenance::write_atomic(&to, &bytes)?;
        }
    }
    if trained_as.is_some() {
        crate::write_json(&dst.join(eabs_models::train::TRAIN_CONFIG_FILE), &config)?;
    }
    if prefix_of_epochs.is_some() {
        // The metrics of the preset's epochs only (one line per epoch, in order).
        let path = dst.join("metrics.jsonl");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let kept: String = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(epochs_done)
            .map(|l| format!("{l}\n"))
            .collect();
        crate::provenance::write_atomic(&path, kept.as_bytes())?;
    }
    let metrics = eabs_models::train::read_metrics_file(&dst.join("metrics.jsonl"))?;
    if prefix_of_epochs.is_some() && metrics.iter().map(|m| m.epoch).ne(1..=epochs_done) {
        bail!(
            "{}: its metrics do not hold epochs 1..={epochs_done} in order",
            src.join("metrics.jsonl").display()
        );
    }
    let mut sha256 = BTreeMap::new();
    for name in &files {
        sha256.insert(name.to_string(), sha256_file(&dst.join(name))?);
    }
    let r = Release {
        model: kind.name().into(),
        family,
        preset,
        seed,
        train_config: config,
        epochs_done,
        best_epoch: state.best_epoch,
        best_val_accuracy: state.best_val_accuracy,
        selected_by: state.selected_by.clone(),
        train_seconds: metrics.iter().map(|m| m.seconds).sum(),
        sha256,
        trained_as,
        prefix_of_epochs,
        commit: commit.to_string(),
        released_at: unix_time(),
    };
    crate::write_json(&dst.join(MANIFEST), &r)?;
    let stale = dst.join("last.safetensors");
    if drop_last && stale.is_file() {
        // After the manifest, so an interruption never leaves a release without either.
        std::fs::remove_file(&stale).with_context(|| format!("removing {}", stale.display()))?;
    }
    Ok(r)
}

/// Every `release.json` below `root`, verified: `(directory, manifest)`.
pub fn verify_tree(root: &Path) -> Result<Vec<(PathBuf, Release)>> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?;
        for e in entries {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            }
        }
        if let Some(r) = Release::read(&dir)? {
            r.verify(&dir)?;
            found.push((dir, r));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use eabs_models::{Model, ModelConfig, TensorData, Trainer};

    /// One epoch of a CNN on 16 random Fashion-MNIST-shaped images into the checkpoint tree.
    fn train_tiny(checkpoints: &Path, cfg: &TrainConfig) -> Result<()> {
        let dir =
            checkpoint_root(checkpoints, cfg.family, Preset::Smoke, cfg.seed).join(cfg.kind.name());
        let images = Tensor::rand(0f32, 1f32, (16, 1, 28, 28), &Device::Cpu)?;
        let data = TensorData::new(images, (0..16).map(|i| i % 10).collect(), "tiny")?;
        let mut model = Model::new(&ModelConfig::paper(cfg.family, cfg.kind), 0, &Device::Cpu)?;
        Trainer::new(cfg.clone(), dir)?.run(&mut model, &data, &data)?;
        Ok(())
    }

    #[test]
    fn a_release_is_used_only_when_it_matches_and_is_intact() -> Result<()> {
        let tmp = tempfile::tempdir()?;
        let (ckpts, weights) = (tmp.path().join("checkpoints"), tmp.path().join("weights"));
        let (family, kind) = (DatasetKind::FashionMnist, ModelKind::Cnn);
        let cfg = TrainConfig {
            epochs: 1,
            batch_size: 8,
            max_train_samples: None,
            max_val_samples: None,
            ..TrainConfig::smoke(family, kind)
        };
        train_tiny(&ckpts, &cfg)?;
        let done = release(
            &ckpts,
            &weights,
            family,
            Preset::Smoke,
            0,
            &[kind],
            OptimizerState::Keep,
        )?;
        assert_eq!(done.len(), 1);
        let (dir, r) = &done[0];
        assert_eq!((r.epochs_done, r.train_config.clone()), (1, cfg.clone()));
        assert_eq!(r.sha256.len(), RELEASE_FILES.len());
        let root = checkpoint_root(&weights, family, Preset::Smoke, 0);
        assert_eq!(
            released_best(&root, kind, &cfg)?,
            Some(dir.join("best.safetensors"))
        );
        assert_eq!(verify_tree(&weights)?.len(), 1);
        // Another protocol: not used (trained instead).
        let other = TrainConfig {
            batch_size: 4,
            ..cfg.clone()
        };
        assert_eq!(released_best(&root, kind, &other)?, None);
        // A damaged file: an error naming it, never a silent retrain.
        let best = dir.join("best.safetensors");
        let mut bytes = std::fs::read(&best)?;
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&best, bytes)?;
        let err = released_best(&root, kind, &cfg).unwrap_err().to_string();
        assert!(
            err.contains("best.safetensors") && err.contains("sha256"),
            "{err}"
        );
        assert!(verify_tree(&weights).is_err());
        // Releasing a tree onto itself rewrites only the manifest.
        let done = release(
            &ckpts,
            &ckpts,
            family,
            Preset::Smoke,
            0,
            &[kind],
            OptimizerState::Keep,
        )?;
        assert_eq!(done.len(), 1);
        // Without the optimiser state: a finished training's release is used and verifies
        // without last.safetensors, which is gone from the folder.
        let done = release(
            &ckpts,
            &ckpts,
            family,
            Preset::Smoke,
            0,
            &[kind],
            OptimizerState::DropWhenFinished,
        )?;
        let (dir, r) = &done[0];
        assert!(!r.sha256.contains_key("last.safetensors"));
        assert!(!dir.join("last.safetensors").exists());
        r.verify(dir)?;
        let root = checkpoint_root(&ckpts, family, Preset::Smoke, 0);
        assert_eq!(
            released_best(&root, kind, &cfg)?,
            Some(dir.join("best.safetensors"))
        );
        Ok(())
    }

    #[test]
    fn a_custom_run_of_the_presets_exact_configuration_is_released_as_the_presets() -> Result<()> {
        let tmp = tempfile::tempdir()?;
        let (family, kind) = (DatasetKind::FashionMnist, ModelKind::Cnn);
        let preset_cfg = crate::preset::train_config(Preset::Smoke, family, kind, 0);
        // The same sizes under a custom label (what `train --out` with flags records)...
        let custom = TrainConfig {
            preset: "smoke+custom".into(),
            epochs: 1,
            ..preset_cfg.clone()
        };
        let tiny = TrainConfig {
            epochs: 1,
            ..preset_cfg.clone()
        };
        // ... is released under the preset's label only when nothing else differs: here the
        // epochs differ, so it keeps its label and is not the preset's.
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        train_tiny(&a, &custom)?;
        let done = release(
            &a,
            &a,
            family,
            Preset::Smoke,
            0,
            &[kind],
            OptimizerState::Keep,
        )?;
        assert_eq!(done[0].1.train_config, custom);
        assert_eq!(done[0].1.trained_as, None);
        let root = checkpoint_root(&a, family, Preset::Smoke, 0);
        assert_eq!(released_best(&root, kind, &tiny)?, None);
        // With the preset's exact configuration (two epochs of batch 512 on 16 images).
        let exact = TrainConfig {
            preset: "smoke+custom".into(),
            ..preset_cfg.clone()
        };
        train_tiny(&b, &exact)?;
        let done = release(
            &b,
            &b,
            family,
            Preset::Smoke,
            0,
            &[kind],
            OptimizerState::Keep,
        )?;
        let (dir, r) = &done[0];
        assert_eq!(r.train_config, preset_cfg);
        assert_eq!(r.trained_as.as_deref(), Some("smoke+custom"));
        r.verify(dir)?;
        let written: TrainConfig =
            serde_json::from_slice(&std::fs::read(dir.join("train_config.json"))?)?;
        assert_eq!(written, preset_cfg);
        let root = checkpoint_root(&b, family, Preset::Smoke, 0);
        assert_eq!(
            released_best(&root, kind, &preset_cfg)?,
            Some(dir.join("best.safetensors"))
        );
        Ok(())
    }

    /// [`release_model`] of one model of the smoke tree under `ckpts` into `weights`, judged
    /// against `expected`.
    fn release_as(
        ckpts: &Path,
        weights: &Path,
        family: DatasetKind,
        preset: Preset,
        seed: u64,
        kind: ModelKind,
        expected: &TrainConfig,
    ) -> Result<Release> {
        let src = checkpoint_root(ckpts, family, preset, seed).join(kind.name());
        let dst = checkpoint_root(weights, family, preset, seed).join(kind.name());
        release_model(
            &src,
            &dst,
            (family, preset, seed, kind),
            expected,
            OptimizerState::Keep,
            "test",
        )
    }

    #[test]
    fn the_start_of_a_longer_run_is_released_as_the_presets_run() -> Result<()> {
        let tmp = tempfile::tempdir()?;
        let (family, kind) = (DatasetKind::FashionMnist, ModelKind::Cnn);
        // A learning rate so small that validation never improves: the best epoch is the first.
        let preset_cfg = TrainConfig {
            lr: 1e-12,
            ..crate::preset::train_config(Preset::Smoke, family, kind, 0)
        };
        let longer = TrainConfig {
            preset: "smoke+custom".into(),
            epochs: preset_cfg.epochs + 2,
            ..preset_cfg.clone()
        };
        let (a, w) = (tmp.path().join("a"), tmp.path().join("w"));
        train_tiny(&a, &longer)?;
        let src = checkpoint_root(&a, family, Preset::Smoke, 0).join(kind.name());
        let run = |to: &Path| {
            // `release` compares with the preset's configuration: give it this test's.
            release_as(&a, to, family, Preset::Smoke, 0, kind, &preset_cfg)
        };
        // In place it would shorten the longer run's record: refused.
        let err = format!("{:#}", run(&a).unwrap_err());
        assert!(err.contains("another tree"), "{err}");
        let r = run(&w)?;
        let dst = checkpoint_root(&w, family, Preset::Smoke, 0).join(kind.name());
        assert_eq!(r.train_config, preset_cfg);
        assert_eq!(r.epochs_done, preset_cfg.epochs);
        assert_eq!(r.prefix_of_epochs, Some(longer.epochs));
        assert_eq!(r.trained_as.as_deref(), Some("smoke+custom"));
        assert_eq!(r.best_epoch, Some(1));
        assert!(!dst.join("last.safetensors").exists());
        let metrics = eabs_models::train::read_metrics_file(&dst.join("metrics.jsonl"))?;
        assert_eq!(metrics.len(), preset_cfg.epochs);
        assert_eq!(
            std::fs::read(dst.join("best.safetensors"))?,
            std::fs::read(src.join("best.safetensors"))?
        );
        r.verify(&dst)?;
        let root = checkpoint_root(&w, family, Preset::Smoke, 0);
        assert_eq!(
            released_best(&root, kind, &preset_cfg)?,
            Some(dst.join("best.safetensors"))
        );
        // A longer run of another protocol stays itself.
        let other = TrainConfig {
            batch_size: 4,
            ..preset_cfg.clone()
        };
        let w2 = tmp.path().join("w2");
        let r = release_as(&a, &w2, family, Preset::Smoke, 0, kind, &other)?;
        assert_eq!((r.train_config, r.prefix_of_epochs), (longer, None));
        Ok(())
    }
}
