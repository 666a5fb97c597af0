//! `cargo xtask reproduce <table|figure>`: flags into an [`eabs_eval::RunSpec`], the target's
//! experiment from `eabs-eval`, then the figures drawn and the tables printed.
//!
//! Output: `results/<table>/<preset>/` holds `table.md` (ours beside the paper's numbers),
//! `results.json` (every number, the configuration and the provenance), `outcomes.json`
//! (per-sample outcomes, so McNemar and the ALL rows can be recomputed), `config.json`, and
//! `journal/` (the per-sample journals that make an interrupted run resume).

pub mod figures;
mod plot;

use anyhow::Result;
use clap::{Args, ValueEnum};
use eabs_datasets::DatasetKind;
use eabs_eval::targets::{ablation, gradient_free, table};
use eabs_eval::{DeviceChoice, Preset, ResumePolicy, RunSpec};
use std::path::{Path, PathBuf};

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

/// Arguments of `cargo xtask reproduce`.
#[derive(Debug, Clone, Args)]
pub struct ReproduceArgs {
    /// Table or figure of the paper.
    #[arg(value_enum)]
    pub target: Target,
    /// Sizes of the run: smoke (CI), quick (a CPU run), paper (the paper's settings).
    #[arg(long, default_value = "quick")]
    pub preset: Preset,
    /// Number of test samples to evaluate (default: the preset's; the paper uses 1000).
    #[arg(long)]
    pub samples: Option<usize>,
    /// Master seed of training, the sample subset and every attack.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Device: cpu, or cuda (build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
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
    /// Evaluate only shard I of N (0-based; samples at subset positions p with p mod N = I)
    /// into `<out>/<table>/<preset>/shards/shard-I-of-N/`, training nothing (tables 1-4;
    /// `cargo xtask slurm` writes the job scripts).
    #[arg(long, value_name = "I/N", conflicts_with_all = ["merge", "train_only"])]
    pub shard: Option<eabs_eval::Shard>,
    /// Gather the N finished shards' journals into the results folder and render the table
    /// from them, computing nothing; refuses if a shard is missing or the shards disagree.
    #[arg(long, value_name = "N", conflicts_with = "train_only")]
    pub merge: Option<usize>,
    /// Train (or find) every model of the table and stop: the first stage of a sharded run.
    #[arg(long)]
    pub train_only: bool,
}

/// The command line as run, for provenance.
pub fn command_line() -> String {
    std::iter::once("cargo xtask".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The policy `--restart-changed` asks for.
pub fn resume_policy(restart_changed: bool) -> ResumePolicy {
    if restart_changed {
        ResumePolicy::RestartChanged
    } else {
        ResumePolicy::Refuse
    }
}

impl ReproduceArgs {
    /// The run these flags describe.
    pub fn spec(&self) -> RunSpec {
        RunSpec {
            preset: self.preset,
            samples: self.samples,
            seed: self.seed,
            device: self.device,
            data_dir: self.data_dir.clone(),
            out: self.out.clone(),
            checkpoints: self.checkpoints.clone(),
            weights: (!self.retrain).then(|| self.weights.clone()),
            train: !self.no_train,
            resume: resume_policy(self.restart_changed),
            dataset: self.dataset,
            command: command_line(),
            shard: self.shard,
            merge: self.merge,
            train_only: self.train_only,
        }
    }
}

/// Prints a results folder's rendering (`table.md` or `figure.md`) and where it is.
fn show(dir: &Path, file: &str) -> Result<()> {
    println!("{}", std::fs::read_to_string(dir.join(file))?);
    println!("results written to {}", dir.display());
    Ok(())
}

/// Runs `cargo xtask reproduce`.
pub fn run(args: &ReproduceArgs) -> Result<()> {
    let spec = args.spec();
    if !matches!(
        args.target,
        Target::Table1 | Target::Table2 | Target::Table3 | Target::Table4 | Target::All
    ) {
        spec.refuse_sharding(&format!("{:?}", args.target).to_lowercase())?;
    }
    if spec.merge == Some(0) {
        anyhow::bail!("--merge N: N is the number of shards, at least 1");
    }
    let tables: Vec<DatasetKind> = match args.target {
        Target::Table1 => vec![DatasetKind::Mnist],
        Target::Table2 => vec![DatasetKind::FashionMnist],
        Target::Table3 => vec![DatasetKind::SuperTraffic10],
        Target::Table4 => vec![DatasetKind::Svhn],
        Target::Fig3 => return show(&figures::figure3(&spec)?, "figure.md"),
        Target::Fig4 => {
            return show(
                &figures::examples("fig4", DatasetKind::Mnist, &spec)?,
                "figure.md",
            )
        }
        Target::Fig5 => {
            return show(
                &figures::examples("fig5", DatasetKind::Svhn, &spec)?,
                "figure.md",
            )
        }
        Target::Table5 => return show(&ablation::run(&spec)?, "table.md"),
        Target::GradientFree => return show(&gradient_free::run(&spec)?, "table.md"),
        Target::All => vec![
            DatasetKind::Mnist,
            DatasetKind::FashionMnist,
            DatasetKind::SuperTraffic10,
            DatasetKind::Svhn,
        ],
    };
    spec.refuse_dataset(
        "tables 1-4, which are per dataset already (table1 MNIST, table2 Fashion-MNIST, table3 \
         SuperTraffic-10, table4 SVHN); it applies to table5, fig3, fig4, fig5 and gradient-free",
    )?;
    for kind in tables {
        let dir = table::run(kind, &spec)?;
        if spec.train_only {
            println!(
                "{}: every model is trained ({})",
                table::table_of(kind),
                dir.display()
            );
            continue;
        }
        if let Some(shard) = spec.shard {
            println!(
                "{}: shard {shard} finished: {} (merge with `--merge {}` once every shard has)",
                table::table_of(kind),
                dir.join(eabs_eval::shard::MANIFEST).display(),
                shard.count
            );
            continue;
        }
        figures::ledger_charts(&dir)?;
        show(&dir, "table.md")?;
    }
    Ok(())
}

/// `cargo xtask verify-results DIR`: a figure's data and images, or a table's files.
pub fn verify(dir: &Path) -> Result<()> {
    let summary = if dir.join("figure.md").is_file() {
        figures::verify(dir)?
    } else {
        let summary = eabs_eval::verify::run(dir)?;
        let charts = figures::verify_ledger_charts(dir)?;
        format!("{summary}; {charts} ledger charts checked")
    };
    println!("{summary}");
    Ok(())
}
