//! `cargo xtask`: the workspace's runner. `main` only parses flags and dispatches; each task
//! lives in its own module (rust-analyzer's xtask layout).
//!
//! The alias in `.cargo/config.toml` builds this binary in release mode, because the numeric
//! tasks need optimised code.

mod data;
mod eval;
mod fetch;
mod gpu_check;
mod reproduce;
mod slurm;
mod train;

use clap::{Parser, Subcommand};

/// The E-ABS workspace runner.
#[derive(Parser)]
#[command(name = "xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect datasets and build SuperTraffic-10.
    Data {
        #[command(subcommand)]
        command: data::DataCommand,
    },
    /// Download a dataset from its official URLs, resuming and checksum-verifying.
    Fetch(fetch::FetchArgs),
    /// Reproduce a table of the paper end to end: train, attack, compare, write results/.
    Reproduce(reproduce::ReproduceArgs),
    /// Train one model (or resume, or reuse it) into the checkpoint tree `reproduce` uses.
    Train(train::TrainArgs),
    /// Evaluate one model under one attack: one accuracy with its 95% interval.
    Eval(eval::EvalArgs),
    /// Release trained models into `weights/` (with sha256 manifests), or verify a release.
    Weights {
        #[command(subcommand)]
        command: train::WeightsCommand,
    },
    /// Compare a device (cuda, or the CPU's stock-op path) with the CPU on every layer, a
    /// training step, an inference batch and a PGD step; time them at the paper's sizes; write
    /// results/gpu-check/<device>.json. Fails when a check fails.
    GpuCheck(gpu_check::GpuCheckArgs),
    /// Write (and with --submit, submit) the Slurm job scripts of a sharded table run: training,
    /// an evaluation array, and the merge, chained with afterok dependencies.
    Slurm(slurm::SlurmArgs),
    /// Check that a results directory of `reproduce` is complete and self-consistent.
    VerifyResults {
        /// e.g. results/table2/smoke
        dir: std::path::PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Training and attacks free and reallocate hundreds of MB per step: keep that memory in the
    // process instead of page-faulting it back; and leave the cores to rayon's pool instead of
    // two pools fighting for them (eabs_kernels::allocator and ::threads explain the numbers).
    eabs_kernels::tune_process();
    // An empty `EABS_DATA_DIR=` means "not set", as the datasets crate reads it; clap would
    // otherwise take it as an empty `--data-dir` and refuse every command.
    if std::env::var_os(eabs_datasets::load::DATA_DIR_ENV).is_some_and(|v| v.is_empty()) {
        std::env::remove_var(eabs_datasets::load::DATA_DIR_ENV);
    }
    match Cli::parse().command {
        Command::Data { command } => data::run(command),
        Command::Fetch(args) => fetch::run(&args),
        Command::Reproduce(args) => reproduce::run(&args),
        Command::Train(args) => train::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Weights { command } => train::run_weights(&command),
        Command::GpuCheck(args) => gpu_check::run(&args),
        Command::Slurm(args) => slurm::run(&args),
        Command::VerifyResults { dir } => reproduce::verify(&dir),
    }
}
