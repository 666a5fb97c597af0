//! `eabs-eval`: the experiment engine of the E-ABS reproduction, as a library.
//!
//! Everything between trained weights and a results folder lives here, so that a researcher can
//! evaluate their own model exactly the way `cargo xtask reproduce` evaluates the paper's:
//!
//! * [`preset`]: the three presets (`smoke`, `quick`, `paper`), which change training and
//!   evaluation sizes together and never the algorithm.
//! * [`suite`]: the paper's attack suite as typed rows ([`AttackRow`]: a [`Norm`] and an
//!   [`AttackKind`]), each attack configured at a preset's sizes, and [`RowKey`], the rows of a
//!   results table (clean, one attack, the per-type "ALL").
//! * [`journal`] and [`evaluate`]: the resumable per-sample evaluation. Every finished batch is
//!   appended to a journal that is bound to its inputs (checkpoint digest, test-data digest,
//!   exact attack configuration), so an interrupted run resumes at its first unfinished sample and
//!   a run with other inputs is refused, naming what changed.
//! * [`zoo`] and [`weights`]: the trained models (released weights, or trained / resumed on
//!   demand) behind the inference the paper prescribes.
//! * [`experiment`]: the one skeleton every target is a configuration of (load data, draw the
//!   sample subset, then per model: obtain, clean row, attack rows), with the seed rule in one
//!   place ([`seeds`]).
//! * [`report`], [`provenance`], [`verify`]: accuracies with exact intervals, the "ALL" rows and
//!   McNemar's test (on [`eabs_stats::AttackTypeReport`]), where every number came from, and a
//!   check that a results folder is complete and self-consistent.
//! * [`targets`]: the paper's tables and figures as experiments.
//! * [`device_check`]: `cargo xtask gpu-check`, the CPU against another device (or the CPU's own
//!   stock-op path) on every layer, a training step, an inference batch and a PGD step, and
//!   timings at the paper's sizes.
//!
//! No command-line parsing and no plotting: `xtask` parses flags into a [`RunSpec`], calls into
//! this crate, and draws the figures.

pub mod device_check;
pub mod evaluate;
pub mod experiment;
pub mod journal;
pub mod ledger;
pub mod lock;
pub mod paper;
pub mod preset;
pub mod provenance;
pub mod report;
pub mod seeds;
pub mod shard;
pub mod suite;
pub mod targets;
pub mod verify;
pub mod weights;
pub mod zoo;

pub use eabs_attacks::Norm;
pub use eabs_datasets::DatasetKind;
pub use evaluate::{
    evaluate, evaluate_covering, select_subset, BatchResult, Coverage, Journaled, ResumePolicy,
    SampleRecord,
};
pub use experiment::{Experiment, ModelColumn};
pub use preset::{EvalSizes, Preset};
pub use report::{Outcomes, TableReport};
pub use shard::Shard;
pub use suite::{AttackKind, AttackRow, RowKey, ATTACK_ROWS, BEYOND_ROWS};

use anyhow::{bail, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Where the numerics run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// The CPU (with eabs-kernels' fast convolutions).
    Cpu,
    /// The first CUDA GPU (needs the `cuda` feature).
    Cuda,
}

impl DeviceChoice {
    /// The Candle device.
    pub fn device(self) -> Result<candle_core::Device> {
        Ok(match self {
            DeviceChoice::Cpu => candle_core::Device::Cpu,
            DeviceChoice::Cuda => candle_core::Device::new_cuda(0)?,
        })
    }

    /// Lower-case name, as provenance records it.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Cuda => "cuda",
        }
    }
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            other => Err(format!("unknown device `{other}` (cpu or cuda)")),
        }
    }
}

/// A plain description of one run: what the command line of `cargo xtask reproduce` says, with
/// no parser in sight. Every target takes one.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Sizes of the run.
    pub preset: Preset,
    /// Number of test samples (default: the preset's).
    pub samples: Option<usize>,
    /// Master seed of training, the sample subset and every attack.
    pub seed: u64,
    /// Where the numerics run.
    pub device: DeviceChoice,
    /// Directory holding the dataset files (default: the loaders' known locations).
    pub data_dir: Option<PathBuf>,
    /// Where results folders are written.
    pub out: PathBuf,
    /// Where checkpoints are trained and reused.
    pub checkpoints: PathBuf,
    /// Released weights used when they match the preset (`None`: train everything).
    pub weights: Option<PathBuf>,
    /// Whether models that are neither released nor finished may be trained.
    pub train: bool,
    /// What to do with a journal whose inputs changed.
    pub resume: ResumePolicy,
    /// Run a single-dataset experiment on another dataset than the paper's.
    pub dataset: Option<DatasetKind>,
    /// The command line, for provenance.
    pub command: String,
    /// Evaluate only this shard's samples, into the shard's own journals, training nothing
    /// ([`shard`]).
    pub shard: Option<Shard>,
    /// Gather this many finished shards into the results folder and render from their
    /// journals, computing nothing ([`shard::gather`]).
    pub merge: Option<usize>,
    /// Obtain (train) every model of the target and stop: the training stage of a sharded run.
    pub train_only: bool,
}

impl RunSpec {
    /// A run of `preset` with `seed` writing below `out`, training into `checkpoints`, with
    /// released weights from `weights` and every other setting at its default (CPU, the preset's
    /// sample count, journals refused when their inputs changed).
    pub fn new(preset: Preset, seed: u64, out: &Path, checkpoints: &Path) -> Self {
        Self {
            preset,
            samples: None,
            seed,
            device: DeviceChoice::Cpu,
            data_dir: None,
            out: out.to_path_buf(),
            checkpoints: checkpoints.to_path_buf(),
            weights: None,
            train: true,
            resume: ResumePolicy::Refuse,
            dataset: None,
            command: String::new(),
            shard: None,
            merge: None,
            train_only: false,
        }
    }

    /// Which samples this run's evaluations compute.
    pub fn coverage(&self) -> Coverage {
        match (self.shard, self.merge) {
            (Some(shard), _) => Coverage::Shard(shard),
            (None, Some(_)) => Coverage::JournaledOnly,
            (None, None) => Coverage::All,
        }
    }

    /// Refuses the sharding flags for targets that do not support them (`what` names them).
    pub fn refuse_sharding(&self, what: &str) -> Result<()> {
        if self.shard.is_some() || self.merge.is_some() || self.train_only {
            bail!(
                "--shard, --merge and --train-only apply to tables 1-4 (the long runs), not to {what}"
            );
        }
        Ok(())
    }

    /// Where this run's models of `family` come from.
    pub fn model_store(&self, family: eabs_models::DatasetKind) -> zoo::ModelStore {
        let mut store = zoo::ModelStore::new(
            &self.checkpoints,
            self.weights.as_deref(),
            family,
            self.preset,
            self.seed,
        );
        // Shards and merges never train: a shard could otherwise train a model another shard
        // is training, and the merge renders what the shards evaluated.
        store.train = self.train && self.shard.is_none() && self.merge.is_none();
        store
    }

    /// The dataset of a single-dataset experiment and its results folder name: the paper's
    /// (`default`) unless [`RunSpec::dataset`] names another, which goes to
    /// `<target>-<dataset>/` so it is never mistaken for the paper's setting.
    pub fn experiment_dataset(&self, target: &str, default: DatasetKind) -> (DatasetKind, String) {
        match self.dataset {
            Some(kind) if kind != default => (kind, format!("{target}-{}", kind.name())),
            _ => (default, target.to_string()),
        }
    }

    /// The evaluation sizes of the preset, with [`RunSpec::samples`] applied.
    pub fn eval_sizes(&self) -> EvalSizes {
        let mut s = EvalSizes::of(self.preset);
        if let Some(n) = self.samples {
            s.n_samples = n;
        }
        s
    }

    /// Refuses `dataset` for targets that are per dataset already.
    pub fn refuse_dataset(&self, what: &str) -> Result<()> {
        if self.dataset.is_some() {
            bail!("--dataset does not apply to {what}");
        }
        Ok(())
    }
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    provenance::write_atomic(path, &bytes)
}

/// Writes `text` atomically.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    provenance::write_atomic(path, text.as_bytes())
}
