//! The one skeleton every target is a configuration of.
//!
//! Every experiment of the paper does the same thing: take the results folder (one run at a
//! time), load the dataset, draw the evaluation subset, then for each model obtain it (released
//! weights, or trained on demand), freeze it behind the inference the paper prescribes, journal
//! its clean row, and journal each attack row, every journal bound to its inputs. An
//! [`Experiment`] does all of that; a target says only which models, which rows and how to
//! render the result.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use eabs_eval::{Experiment, Preset, RunSpec, ATTACK_ROWS};
//! use eabs_eval::DatasetKind;
//! use eabs_models::ModelKind;
//! use std::path::Path;
//!
//! let run = RunSpec::new(Preset::Smoke, 0, Path::new("results"), Path::new("checkpoints"));
//! let mut exp = Experiment::open(&run, "my-study", DatasetKind::FashionMnist, 8)?;
//! let sizes = run.eval_sizes();
//! let obtained = exp.obtain(ModelKind::E_ABS)?;
//! let column = exp.column(0, ModelKind::E_ABS.name(), obtained, &sizes, None)?;
//! let clean = exp.clean(&column, &sizes)?;
//! let pgd = exp.suite_row(&column, ATTACK_ROWS[0], 0, &sizes)?;
//! println!("{} of {} clean, {} under PGD", clean.iter().filter(|&&c| c).count(), clean.len(),
//!     pgd.iter().filter(|&&r| r).count());
//! # Ok(()) }
//! ```

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use eabs_core::Differentiable;
use eabs_datasets::{load, Dataset, DatasetKind, Split};
use eabs_inference::LatentInference;
use eabs_models::ModelKind;
use std::path::{Path, PathBuf};

use crate::evaluate::{evaluate_covering, select_subset, BatchResult, Coverage, SampleRecord};
use crate::lock::DirLock;
use crate::preset::{train_config, EvalSizes};
use crate::provenance::{git_revision, unix_time, Provenance, Timer};
use crate::suite::Epsilon;
use crate::suite::{and_clean, clean_row, row_config, run_row, AttackRow};
use crate::zoo::{obtain, to_evaluated, CheckpointId, Evaluated, ModelStore, Obtained};
use crate::RunSpec;

/// A running experiment: its results folder (locked), its data and evaluation subset, its model
/// store and its clock.
pub struct Experiment<'r> {
    run: &'r RunSpec,
    /// The results folder's name below `--out` (e.g. `table2`, `table5-fashion-mnist`).
    pub id: String,
    /// The dataset.
    pub dataset: DatasetKind,
    /// Where the numerics run.
    pub device: Device,
    /// `<out>/<id>/<preset>/`.
    pub out_dir: PathBuf,
    /// `<out_dir>/journal/seed<S>/`: one folder of journals per model column (for shard `I`
    /// of `N`, `<out_dir>/shards/shard-I-of-N/journal/seed<S>/`).
    pub journal_root: PathBuf,
    /// The shard's folder when this run is one shard of a sharded run ([`crate::shard`]).
    pub shard_dir: Option<PathBuf>,
    /// Stage wall times (resumable: a resumed run reports every invocation's time).
    pub timer: Timer,
    /// Training split (for models trained on demand).
    pub train: Dataset,
    /// Validation split (checkpoint selection).
    pub val: Dataset,
    /// Test split.
    pub test: Dataset,
    /// Test indices evaluated, the same for every model (sorted).
    pub subset: Vec<usize>,
    /// Digest of the test images and labels, which every journal is bound to.
    pub test_sha256: String,
    /// Where the models come from.
    pub store: ModelStore,
    commit: String,
    started: u64,
    lock: DirLock,
    /// Clean verdicts per column, once journaled: every attack row requires them.
    clean_verdicts: std::collections::BTreeMap<String, Vec<bool>>,
}

/// One evaluated column of an experiment: a frozen model, its name and the settings every one
/// of its journals is bound to.
pub struct ModelColumn {
    /// Column name (e.g. `E-ABS`, or Table 5's `AV-ABS`).
    pub name: String,
    /// The trained model of the paper it evaluates (`None` for a model of the caller's own).
    pub kind: Option<ModelKind>,
    /// The frozen model behind its inference.
    pub evaluated: Evaluated,
    /// The checkpoint it was loaded from (`None` for a model of the caller's own).
    pub checkpoint: Option<CheckpointId>,
    /// The seed of its randomised inference ([`crate::seeds::inference`]).
    pub inference_seed: u64,
    /// The model part of every journal's settings: what may not change for a journal to
    /// resume (training configuration, checkpoint and test-data digests, inference settings).
    pub settings: serde_json::Value,
}

impl ModelColumn {
    /// A column for a model of the caller's own (any [`Differentiable`]), named `name`. Its
    /// journals are bound to `identity` (say, the digest of its weights and its configuration)
    /// and to the test data: change either and the journals refuse to resume.
    pub fn custom(
        experiment: &Experiment<'_>,
        name: &str,
        model: Box<dyn Differentiable>,
        identity: serde_json::Value,
    ) -> Self {
        let settings = serde_json::json!({
            "model": name,
            "identity": identity,
            "test_data_sha256": experiment.test_sha256,
            "seed": experiment.run().seed,
        });
        Self {
            name: name.to_string(),
            kind: None,
            evaluated: Evaluated::Other(model),
            checkpoint: None,
            inference_seed: 0,
            settings,
        }
    }

    /// The model as the attacks see it.
    pub fn classifier(&self) -> &dyn Differentiable {
        self.evaluated.classifier()
    }

    /// Whether its predictions are randomised (then attacks average with EOT).
    pub fn is_stochastic(&self) -> bool {
        self.classifier().is_stochastic()
    }
}

pub use crate::suite::with_eot;

/// The evaluation sizes that fingerprint an attack journal: all but the number of samples and
/// the batch size, which the per-sample records check themselves, and the sizes that a
/// journal records where they matter (the PGD losses, Auto-PGD's steps and CW's abort in the
/// row's attack configuration, the verdict draws for randomised models only, the checks'
/// subset in the checks' own journals), so that a journal of one row is not invalidated by a
/// change to another.
pub fn attack_fingerprint(sizes: &impl serde::Serialize) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(sizes)?;
    if let Some(o) = v.as_object_mut() {
        for k in [
            "n_samples",
            "batch_size",
            "pgd_losses",
            "apgd_steps",
            "verdict_draws",
            "cw_abort",
            "check_samples",
        ] {
            o.remove(k);
        }
    }
    Ok(v)
}

/// The verdict protocol a journal of `column` is bound to: the number of draws for a randomised
/// model, nothing for a deterministic one (its verdict is one prediction, as before the
/// protocol existed, so its journals keep their settings).
pub fn verdict_settings(column: &ModelColumn, sizes: &EvalSizes) -> Option<serde_json::Value> {
    column
        .is_stochastic()
        .then(|| serde_json::json!({ "majority_of_draws": sizes.verdict_draws }))
}

/// How a randomised model's inference draws its noise, recorded in the settings of every
/// journal of a randomised column: journals written under the earlier rule (a call counter and
/// the image's position in its batch, which made a sample's result depend on its batch) do not
/// resume under this one.
pub const INFERENCE_NOISE: &str =
    "per image, keyed by its content and its occurrences in the unit (batch of a row)";

/// Adds [`INFERENCE_NOISE`] to `settings` (an object) when `stochastic`.
pub fn bind_inference_noise(settings: &mut serde_json::Value, stochastic: bool) {
    if let (true, Some(map)) = (stochastic, settings.as_object_mut()) {
        map.insert("inference_noise".into(), INFERENCE_NOISE.into());
    }
}

/// The full inference configuration of an evaluated model (null for CNNs), for fingerprints
/// and `config.json`.
pub fn inference_settings(e: &Evaluated) -> Result<serde_json::Value> {
    Ok(match e {
        Evaluated::Cnn(_) | Evaluated::Other(_) => serde_json::Value::Null,
        Evaluated::Abs(a) => serde_json::to_value(a.inference().config())?,
    })
}

impl<'r> Experiment<'r> {
    /// Opens the results folder `<out>/<id>/<preset>/` of `run` (failing at once if another
    /// run holds it), loads the three splits of `dataset` and draws `n_samples` test samples
    /// with the run's seed.
    pub fn open(
        run: &'r RunSpec,
        id: &str,
        dataset: DatasetKind,
        n_samples: usize,
    ) -> Result<Self> {
        Self::open_with(run, id, dataset, n_samples, true)
    }

    /// [`Experiment::open`], with the stage log kept on disk (`resumable_stages`: the
    /// provenance of a resumed run then lists every invocation's stages) or in memory only (for
    /// experiments that journal nothing and recompute everything on a rerun, Figures 4-5).
    pub fn open_with(
        run: &'r RunSpec,
        id: &str,
        dataset: DatasetKind,
        n_samples: usize,
        resumable_stages: bool,
    ) -> Result<Self> {
        let started = unix_time();
        // The revision of the code that runs: read now, since the tree may change during a
        // long run.
        let commit = git_revision(Path::new("."));
        let device = run.device.device()?;
        let out_dir = run.out.join(id).join(run.preset.as_str());
        let seed_dir = format!("seed{}", run.seed);
        // A shard locks and writes its own folder only, so shards run side by side.
        let shard_dir = run.shard.map(|s| s.dir(&out_dir));
        let lock = match &shard_dir {
            Some(dir) => DirLock::acquire(dir, "shard folder")?,
            None => DirLock::acquire(&out_dir, "results folder")?,
        };
        let journal_root = shard_dir
            .as_deref()
            .unwrap_or(&out_dir)
            .join("journal")
            .join(&seed_dir);
        if let Some(count) = run.merge {
            let expect = crate::shard::ShardManifest {
                target: id.to_string(),
                preset: run.preset.as_str().into(),
                seed: run.seed,
                n_samples,
                shard: crate::shard::Shard::new(0, count)?,
                commit: String::new(),
                finished_unix: 0,
                journals: Default::default(),
            };
            let summary = crate::shard::gather(&out_dir, &journal_root, &expect, count)?;
            tracing::info!(
                shards = summary.shards,
                journals_written = summary.written,
                journals_unchanged = summary.unchanged,
                records = summary.records,
                "gathered the shards' journals"
            );
        }
        let mut timer = if resumable_stages {
            Timer::resumable(&journal_root.join("stages.jsonl"), &commit)?
        } else {
            Timer::new()
        };
        let data_dir = run.data_dir.as_deref();
        let seed = crate::seeds::subset(run.seed);
        let (train, val, test) = timer.stage("load data", || {
            Ok((
                load(dataset, Split::Train, data_dir, seed)?,
                load(dataset, Split::Validation, data_dir, seed)?,
                load(dataset, Split::Test, data_dir, seed)?,
            ))
        })?;
        let subset = select_subset(test.len(), n_samples, seed)?;
        let test_sha256 = test.content_sha256();
        Ok(Self {
            run,
            id: id.to_string(),
            dataset,
            device,
            out_dir,
            journal_root,
            shard_dir,
            timer,
            train,
            val,
            test,
            subset,
            test_sha256,
            store: run.model_store(dataset),
            commit,
            started,
            lock,
            clean_verdicts: Default::default(),
        })
    }

    /// The run this experiment belongs to.
    pub fn run(&self) -> &RunSpec {
        self.run
    }

    /// The best checkpoint of `kind`: released, reused, resumed or trained
    /// ([`crate::zoo::obtain`]).
    pub fn obtain(&mut self, kind: ModelKind) -> Result<Obtained> {
        obtain(
            kind,
            self.dataset,
            self.run.preset,
            self.run.seed,
            &self.store,
            &self.train,
            &self.val,
            &self.device,
            &mut self.timer,
        )
    }

    /// The preset's training configuration of `kind`, with the run's seed.
    pub fn train_config(&self, kind: ModelKind) -> eabs_models::TrainConfig {
        train_config(self.run.preset, self.dataset, kind, self.run.seed)
    }

    /// Freezes `obtained` as column `index` named `name`, with inference `mode` (default: the
    /// paper's for the model) at `sizes`, and its inference seed from [`crate::seeds`]. Its
    /// journal settings are the tables' (model, training configuration, checkpoint and test
    /// digests, inference sizes, seed); targets with more columns per model extend them with
    /// [`ModelColumn::settings`].
    pub fn column(
        &self,
        index: usize,
        name: &str,
        obtained: Obtained,
        sizes: &EvalSizes,
        mode: Option<LatentInference>,
    ) -> Result<ModelColumn> {
        let kind = obtained.model.config().kind;
        let inference_seed = crate::seeds::inference(self.run.seed, index);
        let evaluated = to_evaluated(obtained.model, sizes, mode, inference_seed)?;
        let settings = serde_json::json!({
            "model": kind.name(),
            "train": self.train_config(kind),
            "checkpoint_sha256": obtained.checkpoint.sha256,
            "test_data_sha256": self.test_sha256,
            "inference_sizes": { "n_candidates": sizes.n_candidates, "n_adam_steps": sizes.n_adam_steps },
            "seed": self.run.seed,
        });
        let mut settings = settings;
        bind_inference_noise(&mut settings, evaluated.classifier().is_stochastic());
        Ok(ModelColumn {
            name: name.to_string(),
            kind: Some(kind),
            evaluated,
            checkpoint: Some(obtained.checkpoint),
            inference_seed,
            settings,
        })
    }

    /// Binds `column`'s journals to its full inference configuration rather than only its
    /// sizes, as Table 5 (whose columns differ in inference alone; `table5_column` names the
    /// column) and the gradient-free check do.
    pub fn bind_full_inference(
        &self,
        column: &mut ModelColumn,
        table5_column: Option<&str>,
    ) -> Result<()> {
        let kind = column
            .kind
            .context("only the paper's models have training settings to bind")?;
        let mut settings = serde_json::json!({
            "model": kind.name(),
            "train": self.train_config(kind),
            "checkpoint_sha256": column.checkpoint.as_ref().map(|c| c.sha256.clone()),
            "test_data_sha256": self.test_sha256,
            "inference": inference_settings(&column.evaluated)?,
            "inference_seed": column.inference_seed,
            "seed": self.run.seed,
        });
        if let (Some(name), Some(map)) = (table5_column, settings.as_object_mut()) {
            map.insert("column".into(), name.into());
        }
        bind_inference_noise(&mut settings, column.is_stochastic());
        column.settings = settings;
        Ok(())
    }

    /// The journal of `row` (`clean`, `linf-pgd`, ...) of column `column`.
    pub fn journal(&self, column: &str, row: &str) -> PathBuf {
        self.journal_root.join(column).join(format!("{row}.jsonl"))
    }

    /// Evaluates `column` on the subset as the timed stage `label`, journaled at
    /// `<journal_root>/<column>/<row>.jsonl` under `settings`: `attack` gets each batch and
    /// returns `n_eps` rows of per-sample (robust, distance).
    #[allow(clippy::too_many_arguments)]
    pub fn journaled(
        &mut self,
        column: &str,
        row: &str,
        label: &str,
        settings: &serde_json::Value,
        n_eps: usize,
        batch_size: usize,
        attack: &mut dyn FnMut(&Tensor, &[u32]) -> Result<BatchResult>,
    ) -> Result<Vec<SampleRecord>> {
        let n = self.subset.len();
        self.journaled_first(n, column, row, label, settings, n_eps, batch_size, attack)
    }

    /// [`Experiment::journaled`] on the first `n` samples of the subset only (the sanity
    /// checks' extra runs).
    #[allow(clippy::too_many_arguments)]
    pub fn journaled_first(
        &mut self,
        n: usize,
        column: &str,
        row: &str,
        label: &str,
        settings: &serde_json::Value,
        n_eps: usize,
        batch_size: usize,
        attack: &mut dyn FnMut(&Tensor, &[u32]) -> Result<BatchResult>,
    ) -> Result<Vec<SampleRecord>> {
        let journal = self.journal(column, row);
        let resume = self.run.resume;
        let n = n.min(self.subset.len());
        let (test, subset, device) = (&self.test, &self.subset[..n], &self.device);
        let coverage = self.run.coverage();
        let records = self
            .timer
            .stage_restartable(
                label,
                || {
                    evaluate_covering(
                        &journal, settings, resume, label, test, subset, n_eps, batch_size, device,
                        coverage, attack,
                    )
                },
                |j| j.started_over,
            )?
            .records;
        Ok(match coverage {
            // A shard returns full-length results so that the targets' bookkeeping runs as
            // unsharded; the other shards' samples read as not robust. A shard renders
            // nothing: only its journals count ([`crate::shard`]).
            Coverage::Shard(_) => {
                let mut by_sample: std::collections::BTreeMap<usize, SampleRecord> =
                    records.into_iter().map(|r| (r.sample, r)).collect();
                (0..n)
                    .map(|s| {
                        by_sample.remove(&s).unwrap_or_else(|| SampleRecord {
                            sample: s,
                            test_index: subset[s],
                            label: self.test.labels[subset[s]] as u32,
                            robust: vec![false; n_eps],
                            distance: vec![0.0; n_eps],
                        })
                    })
                    .collect()
            }
            Coverage::All | Coverage::JournaledOnly => records,
        })
    }

    /// Ends a shard's run: writes its manifest ([`crate::shard::ShardManifest`]), which a merge
    /// requires, and returns the shard's folder. Errors unless this run is a shard.
    pub fn finish_shard(self) -> Result<PathBuf> {
        let (Some(shard), Some(dir)) = (self.run.shard, self.shard_dir.clone()) else {
            anyhow::bail!("finish_shard: this run is not a shard");
        };
        let manifest = crate::shard::ShardManifest {
            target: self.id.clone(),
            preset: self.run.preset.as_str().into(),
            seed: self.run.seed,
            n_samples: self.subset.len(),
            shard,
            commit: self.commit.clone(),
            finished_unix: unix_time(),
            journals: Default::default(),
        };
        crate::shard::write_manifest(&dir, &self.journal_root, manifest)?;
        Ok(dir)
    }

    /// The clean row of `column`: per sample of the subset, whether it is classified correctly
    /// under the verdict protocol ([`crate::suite::verdicts`]).
    pub fn clean(&mut self, column: &ModelColumn, sizes: &EvalSizes) -> Result<Vec<bool>> {
        if let Some(v) = self.clean_verdicts.get(&column.name) {
            return Ok(v.clone());
        }
        let mut settings = serde_json::json!({ "row": "clean", "model": column.settings });
        if let (Some(v), Some(map)) = (verdict_settings(column, sizes), settings.as_object_mut()) {
            map.insert("verdict".into(), v);
        }
        let clf = column.classifier();
        let draws = sizes.verdict_draws;
        let records = self.journaled(
            &column.name,
            "clean",
            &format!("{} clean", column.name),
            &settings,
            1,
            sizes.batch_size,
            &mut |xs, ys| clean_row(clf, xs, ys, draws),
        )?;
        let v: Vec<bool> = records.iter().map(|r| r.robust[0]).collect();
        self.clean_verdicts.insert(column.name.clone(), v.clone());
        Ok(v)
    }

    /// The journal settings of attack row `row` of `column` seeded with `seed`.
    pub fn row_settings(
        &self,
        column: &ModelColumn,
        row: AttackRow,
        seed: u64,
        sizes: &EvalSizes,
    ) -> Result<serde_json::Value> {
        let ds = self.dataset;
        let mut settings = serde_json::json!({
            "row": row.key(),
            "epsilon": ds.epsilon(row.norm),
            "attack_seed": seed,
            "attack": row_config(row, sizes, ds, seed)?,
            "sizes": attack_fingerprint(sizes)?,
            "eot": column.is_stochastic(),
            "model": column.settings,
        });
        if let (Some(v), Some(map)) = (verdict_settings(column, sizes), settings.as_object_mut()) {
            map.insert("verdict".into(), v);
        }
        Ok(settings)
    }

    /// Attack row `row` of the suite on `column` at the dataset's epsilon, with its seed from
    /// row index `row_index` ([`crate::seeds::attack`]; for Tables 1-4 the index in
    /// [`crate::ATTACK_ROWS`], then [`crate::suite::BEYOND_ROWS`]), EOT for randomised
    /// models. Per sample: robust or not, which requires the clean image to be classified
    /// correctly too ([`crate::suite::and_clean`]; the journal records the attack's own
    /// verdict).
    pub fn suite_row(
        &mut self,
        column: &ModelColumn,
        row: AttackRow,
        row_index: usize,
        sizes: &EvalSizes,
    ) -> Result<Vec<bool>> {
        let clean = self.clean(column, sizes)?;
        let ds = self.dataset;
        let seed = crate::seeds::attack(self.run.seed, row_index);
        let settings = self.row_settings(column, row, seed, sizes)?;
        let clf = column.classifier();
        let records = self.journaled(
            &column.name,
            &row.key(),
            &format!("{} {row}", column.name),
            &settings,
            1,
            sizes.batch_size,
            &mut |xs, ys| run_row(row, sizes, ds, clf, xs, ys, seed),
        )?;
        let attack: Vec<bool> = records.iter().map(|r| r.robust[0]).collect();
        Ok(and_clean(&clean, &attack))
    }

    /// Tables 1-4's protocol for one column: its clean row, every row of
    /// [`crate::ATTACK_ROWS`] and of [`crate::suite::BEYOND_ROWS`] (seeded by their index in
    /// that order), each journaled, recorded in `outcomes`
    /// under the column's name. Add the ALL rows with [`crate::report::add_all_row`] once every
    /// column is in.
    pub fn table_protocol(
        &mut self,
        column: &ModelColumn,
        sizes: &EvalSizes,
        outcomes: &mut crate::Outcomes,
    ) -> Result<()> {
        let clean = self.clean(column, sizes)?;
        outcomes
            .entry(crate::RowKey::Clean)
            .or_default()
            .insert(column.name.clone(), clean);
        let rows = crate::ATTACK_ROWS
            .iter()
            .chain(crate::suite::BEYOND_ROWS.iter());
        for (r_idx, row) in rows.enumerate() {
            let robust = self.suite_row(column, *row, r_idx, sizes)?;
            outcomes
                .entry(crate::RowKey::Attack(*row))
                .or_default()
                .insert(column.name.clone(), robust);
        }
        Ok(())
    }

    /// [`Experiment::table_protocol`], then the sanity checks' extra runs
    /// ([`Experiment::sanity_runs`]) on the column's PGD rows.
    pub fn table_protocol_checked(
        &mut self,
        column: &ModelColumn,
        sizes: &EvalSizes,
        outcomes: &mut crate::Outcomes,
    ) -> Result<std::collections::BTreeMap<String, crate::ledger::ExtraRuns>> {
        self.table_protocol(column, sizes, outcomes)?;
        let pgd_rows: Vec<(AttackRow, usize, Vec<bool>)> = crate::ATTACK_ROWS
            .iter()
            .enumerate()
            .filter(|(_, r)| r.attack == crate::AttackKind::Pgd)
            .map(|(i, r)| {
                let v = outcomes[&crate::RowKey::Attack(*r)][&column.name].clone();
                (*r, i, v)
            })
            .collect();
        self.sanity_runs(column, sizes, &pgd_rows)
    }

    /// The extra attack runs of the sanity checks ([`crate::ledger::doubling_and_large_epsilon`])
    /// for `column`, on the first `sizes.check_samples` samples, per norm: PGD with twice the
    /// steps and random starts (the row's seed, so its first starts are the row's), and PGD at
    /// four times the epsilon. `pgd_rows` holds the column's PGD row outcomes per norm (from
    /// [`Experiment::suite_row`]). Each run is journaled as `check-double-<norm>-pgd` /
    /// `check-large-<norm>-pgd`.
    pub fn sanity_runs(
        &mut self,
        column: &ModelColumn,
        sizes: &EvalSizes,
        pgd_rows: &[(AttackRow, usize, Vec<bool>)],
    ) -> Result<std::collections::BTreeMap<String, crate::ledger::ExtraRuns>> {
        let clean = self.clean(column, sizes)?;
        let ds = self.dataset;
        let k = sizes.check_samples.min(self.subset.len());
        let mut doubled_sizes = sizes.clone();
        doubled_sizes.pgd_steps = 2 * sizes.pgd_steps;
        doubled_sizes.pgd_restarts =
            Some(2 * sizes.pgd_restarts.unwrap_or_else(|| ds.pgd_random_starts()));
        let mut out = std::collections::BTreeMap::new();
        let clf = column.classifier();
        for (row, row_index, table_row) in pgd_rows {
            let row = *row;
            let eps = ds.epsilon(row.norm);
            let large = 4.0 * eps;
            // (journal, label, sizes, seed, epsilon, what the check is)
            let runs = [
                (
                    format!("check-double-{}", row.key()),
                    format!("{} check: {row} doubled", column.name),
                    &doubled_sizes,
                    crate::seeds::attack(self.run.seed, *row_index),
                    eps,
                    "twice the steps and random starts",
                ),
                (
                    format!("check-large-{}", row.key()),
                    format!("{} check: {row} at eps {large}", column.name),
                    sizes,
                    crate::seeds::check_attack(self.run.seed, 1, *row_index),
                    large,
                    "four times the epsilon",
                ),
            ];
            let mut verdicts = Vec::new();
            for (journal, label, run_sizes, seed, eps, check) in runs {
                let mut settings = self.row_settings(column, row, seed, run_sizes)?;
                settings["epsilon"] = eps.into();
                settings["check"] = check.into();
                let records = self.journaled_first(
                    k,
                    &column.name,
                    &journal,
                    &label,
                    &settings,
                    1,
                    sizes.batch_size,
                    &mut |xs, ys| {
                        crate::suite::run_row_at(row, run_sizes, ds, clf, xs, ys, seed, eps)
                    },
                )?;
                let v: Vec<bool> = records.iter().map(|r| r.robust[0]).collect();
                verdicts.push(and_clean(&clean[..k], &v));
            }
            let norm = crate::suite::norm_str(row.norm);
            let at_large = verdicts.pop().unwrap_or_default();
            let doubled = verdicts.pop().unwrap_or_default();
            out.insert(
                norm.to_string(),
                crate::ledger::ExtraRuns {
                    pgd: table_row[..k.min(table_row.len())].to_vec(),
                    doubled,
                    large_epsilon: large,
                    at_large,
                },
            );
        }
        Ok(out)
    }

    /// The certified L_2 radius of eq. (7) (Appendix A's form, [`eabs_inference::bound`]) of
    /// every sample for an ABS-like `column`, journaled as `bound-l2` (the radius as the
    /// record's distance; `robust` says whether it is positive). `None` for other models. The
    /// bound assumes exact inference whatever the column's mode (Appendix A.1).
    pub fn certified_bounds(
        &mut self,
        column: &ModelColumn,
        sizes: &EvalSizes,
    ) -> Result<Option<Vec<f64>>> {
        let Evaluated::Abs(abs) = &column.evaluated else {
            return Ok(None);
        };
        let settings = serde_json::json!({
            "row": "bound-l2",
            "bound": "eq. (7), Appendix A: min_k (d_k^2 - l_y*) / (2 d_k + 2 r_y), exact inference",
            "model": column.settings,
        });
        let inference = abs.inference();
        let records = self.journaled(
            &column.name,
            "bound-l2",
            &format!("{} certified L_2 bound", column.name),
            &settings,
            1,
            sizes.batch_size,
            &mut |xs, ys| {
                let labels: Vec<usize> = ys.iter().map(|&y| y as usize).collect();
                let b = inference.certified_bounds(xs, &labels)?;
                Ok(vec![b.epsilons.iter().map(|&e| (e > 0.0, e)).collect()])
            },
        )?;
        Ok(Some(records.iter().map(|r| r.distance[0]).collect()))
    }

    /// Ends the experiment: its provenance (this machine, the run's preset, seed and device, and
    /// the stages of every invocation) and the still-held lock of its results folder, to be
    /// dropped once the outputs are written.
    pub fn finish(self) -> (Provenance, PathBuf, DirLock) {
        let provenance = Provenance {
            commit: self.commit,
            preset: self.run.preset.as_str().into(),
            seed: self.run.seed,
            device: self.run.device.as_str().into(),
            hardware: crate::provenance::Hardware::detect(),
            started_unix: self.started,
            finished_unix: unix_time(),
            stages: self.timer.into_stages(),
            command: self.run.command.clone(),
        };
        (provenance, self.out_dir, self.lock)
    }
}
