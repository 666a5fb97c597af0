//! `cargo xtask gpu-check`: the CPU against a device on every layer, a training step, an
//! inference batch and a PGD step, then timings at the paper's sizes
//! ([`eabs_eval::device_check`] has the logic and says what is compared with what). This module
//! only parses the flags, writes the report and sets the exit status.

use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

use eabs_eval::device_check::{self, DeviceCheckSpec, SizeChoice};
use eabs_eval::DeviceChoice;

/// Arguments of `cargo xtask gpu-check`.
#[derive(Debug, Clone, Args)]
pub struct GpuCheckArgs {
    /// The device checked against the CPU: cuda (build with `--features xtask/cuda`), or cpu
    /// for the CPU half (the CPU with Candle's stock ops and the autodiff inference engine: the
    /// code path CUDA runs).
    #[arg(long, default_value = "cuda")]
    pub device: DeviceChoice,
    /// Sizes: full (timings at the paper's sizes; meant for a GPU) or ci (seconds on a CPU).
    #[arg(long, default_value = "full")]
    pub sizes: SizeChoice,
    /// Seed of every weight, input and noise draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Report path (default: results/gpu-check/<device>.json, <device>-ci.json at ci sizes).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs the check, writes the JSON report and prints the summary; fails when a check failed.
pub fn run(a: &GpuCheckArgs) -> Result<()> {
    let spec = DeviceCheckSpec {
        device: a.device,
        sizes: a.sizes,
        seed: a.seed,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let report = device_check::run(&spec)?;
    let path = a
        .out
        .clone()
        .unwrap_or_else(|| device_check::default_report_path(a.device, a.sizes));
    eabs_eval::write_json(&path, &report)?;
    print!("{}", report.summary());
    println!("report: {}", path.display());
    if !report.passed {
        bail!(
            "{} of {} checks failed (see {})",
            report.failures().len(),
            report.checks.len(),
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::{Cli, Command};
    use clap::Parser;

    #[test]
    fn flags_parse_with_their_defaults() {
        let cli = Cli::try_parse_from(["xtask", "gpu-check"]).unwrap();
        let Command::GpuCheck(a) = cli.command else {
            panic!("not gpu-check");
        };
        assert_eq!(a.device, eabs_eval::DeviceChoice::Cuda);
        assert_eq!(a.sizes, eabs_eval::device_check::SizeChoice::Full);
        assert!(a.out.is_none());
        let cli = Cli::try_parse_from([
            "xtask",
            "gpu-check",
            "--device",
            "cpu",
            "--sizes",
            "ci",
            "--out",
            "r.json",
        ])
        .unwrap();
        let Command::GpuCheck(a) = cli.command else {
            panic!("not gpu-check");
        };
        assert_eq!(a.device, eabs_eval::DeviceChoice::Cpu);
        assert_eq!(a.sizes, eabs_eval::device_check::SizeChoice::Ci);
        assert_eq!(a.out.as_deref(), Some(std::path::Path::new("r.json")));
        assert!(Cli::try_parse_from(["xtask", "gpu-check", "--sizes", "huge"]).is_err());
    }
}
