//! `cargo xtask reproduce <table|figure>`: one command from data to the rendered table, with
//! every number's provenance, resumable at sample granularity.
//!
//! Output: `results/<table>/<preset>/` holds `table.md` (ours beside the paper's numbers),
//! `results.json` (every number, the configuration and the provenance), `outcomes.json`
//! (per-sample outcomes, so McNemar and the ALL rows can be recomputed), `config.json`, and
//! `journal/` (the per-sample journals that make an interrupted run resume).

mod ablation;
pub mod evaluate;
mod examples;
mod figure3;
mod gradient_free;
pub mod journal;
mod plot;
pub mod preset;
pub mod provenance;
pub mod report;
pub mod rows;
mod table;
pub mod verify;
pub mod weights;
pub mod zoo;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use eabs_datasets::DatasetKind;
use serde::Serialize;
use std::path::{Path, PathBuf};

use preset::PresetName;

/// What to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// MNIST: CNN, Adv-L_inf, Adv-L_2, ABS and E-ABS under every attack.
    Table1,
    /// Fashion-MNIST, as Table 1.
    Table2,
    /// SuperTraffic-10, as Table 1.
    Table3,
    /// SVHN, as Table 1.
    Table4,
    /// The ablation study on SVHN: the eight A/D/V variants under PGD L_inf and L_2.
    Table5,
    /// Accuracy as a function of epsilon under PGD L_inf and L_2 on SVHN (SVG and PNG).
    Fig3,
    /// Clean images above their PGD-L_2 adversarials for E-ABS on MNIST (PNG grid).
    Fig4,
    /// Clean images above their PGD-L_2 adversarials for E-ABS on SVHN (PNG grid).
    Fig5,
    /// Section 5's gradient-free check on SVHN: Boundary attack and PGD with estimated gradients.
    GradientFree,
    /// Tables 1-4.
    All,
}

/// Device for the numerics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum DeviceArg {
    /// The CPU (with eabs-kernels' fast convolutions).
    Cpu,
    /// The first CUDA GPU (build with `--features cuda`).
    Cuda,
}

impl DeviceArg {
    /// The Candle device.
    pub fn device(self) -> Result<candle_core::Device> {
        Ok(match self {
            DeviceArg::Cpu => candle_core::Device::Cpu,
            DeviceArg::Cuda => candle_core::Device::new_cuda(0)?,
        })
    }
}

/// Arguments of `cargo xtask reproduce`.
#[derive(Debug, Clone, Args)]
pub struct ReproduceArgs {
    /// Table or figure of the paper.
    #[arg(value_enum)]
    pub target: Target,
    /// Sizes of the run: smoke (CI), quick (a CPU run), paper (the paper's settings).
    #[arg(long, value_enum, default_value_t = PresetName::Quick)]
    pub preset: PresetName,
    /// Number of test samples to evaluate (default: the preset's; the paper uses 1000).
    #[arg(long)]
    pub samples: Option<usize>,
    /// Master seed of training, the sample subset and every attack.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Device.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// Directory holding the dataset files (default: known system locations).
    #[arg(long, env = "EABS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where results are written.
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Where checkpoints are written and reused.
    #[arg(long, default_value = "checkpoints")]
    pub checkpoints: PathBuf,
    /// Released weights (`weights/README.md`): a model released there is used instead of
    /// training when its training configuration is the preset's and its digests match.
    #[arg(long, default_value = "weights")]
    pub weights: PathBuf,
    /// Train every model into `--checkpoints`, ignoring released weights.
    #[arg(long)]
    pub retrain: bool,
    /// Never train: use released weights or finished checkpoints only, and stop with an error
    /// at the first model that has neither (journals of the models before it are kept, so a
    /// later run resumes there). For evaluating while a long training still runs elsewhere.
    #[arg(long, conflicts_with = "retrain")]
    pub no_train: bool,
    /// Start over every journal whose inputs (checkpoint, data, attack or inference settings)
    /// changed, instead of refusing to resume it; the log names what changed.
    #[arg(long)]
    pub restart_changed: bool,
    /// Run a single-dataset experiment (table5, fig3, fig4, fig5, gradient-free) on another
    /// dataset than the paper's (e.g. `fashion-mnist`, which is available offline). Results go to
    /// `<target>-<dataset>/` so they are never mistaken for the paper's setting.
    #[arg(long)]
    pub dataset: Option<DatasetKind>,
}

impl ReproduceArgs {
    /// Where this run's models of `family` come from.
    pub fn model_store(&self, family: eabs_models::Family) -> zoo::ModelStore {
        let weights = (!self.retrain).then_some(self.weights.as_path());
        let mut store =
            zoo::ModelStore::new(&self.checkpoints, weights, family, self.preset, self.seed);
        store.train = !self.no_train;
        store
    }

    /// The dataset of a single-dataset experiment and its results directory name: the paper's
    /// (`default`) unless `--dataset` names another.
    #[allow(dead_code)] // the single-dataset targets land next
    pub fn experiment_dataset(&self, target: &str, default: DatasetKind) -> (DatasetKind, String) {
        match self.dataset {
            Some(kind) if kind != default => (kind, format!("{target}-{}", kind.name())),
            _ => (default, target.to_string()),
        }
    }
}

/// Runs `cargo xtask reproduce`.
pub fn run(args: &ReproduceArgs) -> Result<()> {
    evaluate::restart_changed_journals(args.restart_changed);
    let command = std::iter::once("cargo xtask".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let tables: Vec<(&str, DatasetKind)> = match args.target {
        Target::Table1 => vec![("table1", DatasetKind::Mnist)],
        Target::Table2 => vec![("table2", DatasetKind::FashionMnist)],
        Target::Table3 => vec![("table3", DatasetKind::SuperTraffic10)],
        Target::Table4 => vec![("table4", DatasetKind::Svhn)],
        Target::Fig3 => return figure3::run(args, &command),
        Target::Fig4 => return examples::run("fig4", DatasetKind::Mnist, args, &command),
        Target::Fig5 => return examples::run("fig5", DatasetKind::Svhn, args, &command),
        Target::Table5 | Target::GradientFree => {
            let dir = if args.target == Target::Table5 {
                ablation::run(args, &command)?
            } else {
                gradient_free::run(args, &command)?
            };
            println!("{}", std::fs::read_to_string(dir.join("table.md"))?);
            println!("results written to {}", dir.display());
            return Ok(());
        }
        Target::All => vec![
            ("table1", DatasetKind::Mnist),
            ("table2", DatasetKind::FashionMnist),
            ("table3", DatasetKind::SuperTraffic10),
            ("table4", DatasetKind::Svhn),
        ],
    };
    if args.dataset.is_some() {
        bail!(
            "--dataset applies to table5, fig3, fig4, fig5 and gradient-free; tables 1-4 are \
             per dataset already (table1 MNIST, table2 Fashion-MNIST, table3 SuperTraffic-10, \
             table4 SVHN)"
        );
    }
    for (table, kind) in tables {
        let dir = table::run(table, kind, args, &command)?;
        println!("{}", std::fs::read_to_string(dir.join("table.md"))?);
        println!("results written to {}", dir.display());
    }
    Ok(())
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
