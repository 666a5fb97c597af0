//! `cargo xtask slurm <table>`: the job scripts of a sharded run on a Slurm cluster (an existing
//! scheduler, not one of ours): a training job, an evaluation array of N shards that depends
//! on it (`afterok`), and a merge job that depends on the array, renders the table and verifies
//! it. It writes the scripts and prints the `sbatch` command; `--submit` submits them.
//!
//! Each job runs the prebuilt `xtask` binary (`--binary`, default: this one), so the jobs never
//! rebuild or contend for the cargo target folder. Every job is resumable from its journals: a
//! task that was killed is resubmitted alone (`sbatch --array=I eval.sbatch`) and continues
//! where it stopped, and the merge refuses until every shard has finished.

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::reproduce::Target;
use std::path::{Path, PathBuf};

/// The name of a table target (`table1` ... `table4`): the only targets that shard (their
/// evaluation is per (model, row, sample)); anything else is refused.
fn table_name(target: Target) -> Result<&'static str> {
    Ok(match target {
        Target::Table1 => "table1",
        Target::Table2 => "table2",
        Target::Table3 => "table3",
        Target::Table4 => "table4",
        other => bail!(
            "cargo xtask slurm: {other:?} is not sharded; only table1..table4 are (run the \
             others with `cargo xtask reproduce`)"
        ),
    })
}

/// Arguments of `cargo xtask slurm`.
#[derive(Debug, Clone, Args)]
pub struct SlurmArgs {
    /// The table (`table1` ... `table4`; `reproduce`'s target names).
    #[arg(value_enum)]
    pub target: Target,
    /// Preset of the run.
    #[arg(long, default_value = "paper")]
    pub preset: eabs_eval::Preset,
    /// Number of evaluation shards (array tasks).
    #[arg(long)]
    pub shards: usize,
    /// Slurm partition (default: the cluster's).
    #[arg(long)]
    pub partition: Option<String>,
    /// GPUs per task (`--gres=gpu:G`; 0 for CPU-only tasks). With GPUs the jobs run on
    /// `--device cuda`.
    #[arg(long, default_value_t = 1)]
    pub gpus_per_task: usize,
    /// CPU cores per task.
    #[arg(long, default_value_t = 4)]
    pub cpus_per_task: usize,
    /// Memory per task (Slurm syntax, e.g. 32G).
    #[arg(long, default_value = "32G")]
    pub mem: String,
    /// Time limit of each evaluation task (Slurm syntax, e.g. 2-00:00:00).
    #[arg(long, default_value = "2-00:00:00")]
    pub time: String,
    /// Time limit of the training job.
    #[arg(long, default_value = "3-00:00:00")]
    pub train_time: String,
    /// Master seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of test samples (default: the preset's).
    #[arg(long)]
    pub samples: Option<usize>,
    /// Results root (on a filesystem every node sees).
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Checkpoint root (shared, as `--out`).
    #[arg(long, default_value = "checkpoints")]
    pub checkpoints: PathBuf,
    /// Released weights (`reproduce --weights`).
    #[arg(long, default_value = "weights")]
    pub weights: PathBuf,
    /// Dataset directory (`reproduce --data-dir`).
    #[arg(long, env = "EABS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The xtask binary the jobs run (default: this one).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Where the scripts go (default: `<out>/slurm/<table>-<preset>/`).
    #[arg(long)]
    pub scripts: Option<PathBuf>,
    /// Extra `#SBATCH` lines, verbatim (repeatable), e.g. `--sbatch=--account=abc`.
    #[arg(long = "sbatch", value_name = "OPTION")]
    pub extra: Vec<String>,
    /// Submit the scripts (`bash <scripts>/submit.sh`) instead of printing the command.
    #[arg(long)]
    pub submit: bool,
}

/// The job scripts: file name and content.
#[derive(Debug)]
pub struct Scripts {
    /// `(file name, content)`, the submit script last.
    pub files: Vec<(String, String)>,
}

fn quote(p: &Path) -> String {
    let s = p.display().to_string();
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,".contains(c))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn absolute(p: &Path, cwd: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    }
}

/// Renders the scripts of `args`, with `cwd` as every job's working directory and `binary` as
/// the program they run.
pub fn render(args: &SlurmArgs, cwd: &Path, binary: &Path, scripts: &Path) -> Result<Scripts> {
    if args.shards == 0 {
        bail!("--shards N: at least 1");
    }
    let t = table_name(args.target)?;
    let preset = args.preset.as_str();
    let device = if args.gpus_per_task > 0 {
        "cuda"
    } else {
        "cpu"
    };
    let mut common = format!(
        "{t} --preset {preset} --seed {} --device {device} --out {} --checkpoints {} --weights {}",
        args.seed,
        quote(&args.out),
        quote(&args.checkpoints),
        quote(&args.weights)
    );
    if let Some(n) = args.samples {
        common += &format!(" --samples {n}");
    }
    if let Some(d) = &args.data_dir {
        common += &format!(" --data-dir {}", quote(&absolute(d, cwd)));
    }
    let bin = quote(binary);
    let logs = scripts.join("logs");
    let header = |name: &str, time: &str, array: Option<usize>| {
        let mut h = format!(
            "#!/usr/bin/env bash\n#SBATCH --job-name=eabs-{t}-{preset}-{name}\n#SBATCH --chdir={}\n\
             #SBATCH --time={time}\n#SBATCH --cpus-per-task={}\n#SBATCH --mem={}\n",
            quote(cwd),
            args.cpus_per_task,
            args.mem
        );
        match array {
            Some(n) => {
                h += &format!("#SBATCH --array=0-{}\n", n - 1);
                h += &format!("#SBATCH --output={}/%x-%a.out\n", quote(&logs));
            }
            None => h += &format!("#SBATCH --output={}/%x.out\n", quote(&logs)),
        }
        if let Some(p) = &args.partition {
            h += &format!("#SBATCH --partition={p}\n");
        }
        if args.gpus_per_task > 0 {
            h += &format!("#SBATCH --gres=gpu:{}\n", args.gpus_per_task);
        }
        for e in &args.extra {
            h += &format!("#SBATCH {e}\n");
        }
        // One thread pool of the task's size, as `xtask` expects (eabs_kernels::threads).
        h += "set -euo pipefail\nexport RAYON_NUM_THREADS=\"${SLURM_CPUS_PER_TASK:-1}\"\n";
        h
    };
    let n = args.shards;
    let train = format!(
        "{}# Stage 1: every model of the table, trained once (or found released / finished).\n\
         {bin} reproduce {common} --train-only\n",
        header("train", &args.train_time, None)
    );
    let eval = format!(
        "{}# Stage 2: shard $SLURM_ARRAY_TASK_ID of {n}; resumes from its journals when resubmitted\n\
         # alone: sbatch --array=I {}\n\
         {bin} reproduce {common} --no-train --shard \"${{SLURM_ARRAY_TASK_ID}}/{n}\"\n",
        header("eval", &args.time, Some(n)),
        quote(&scripts.join("eval.sbatch"))
    );
    let results = quote(&args.out.join(t).join(preset));
    let merge = format!(
        "{}# Stage 3: the shards' journals gathered, the table rendered and verified.\n\
         {bin} reproduce {common} --no-train --merge {n}\n{bin} verify-results {results}\n",
        header("merge", "02:00:00", None)
    );
    let s = |f: &str| quote(&scripts.join(f));
    let submit = format!(
        "#!/usr/bin/env bash\n# Submits the three stages of {t} at preset {preset} in {n} shards, each \
         after the\n# previous succeeded. Prints the job ids.\nset -euo pipefail\n\
         mkdir -p {logs}\n\
         train=$(sbatch --parsable {train})\n\
         eval=$(sbatch --parsable --dependency=afterok:\"$train\" {eval})\n\
         merge=$(sbatch --parsable --dependency=afterok:\"$eval\" {merge})\n\
         echo \"train $train eval $eval merge $merge\"\n",
        logs = quote(&logs),
        train = s("train.sbatch"),
        eval = s("eval.sbatch"),
        merge = s("merge.sbatch"),
    );
    Ok(Scripts {
        files: vec![
            ("train.sbatch".into(), train),
            ("eval.sbatch".into(), eval),
            ("merge.sbatch".into(), merge),
            ("submit.sh".into(), submit),
        ],
    })
}

/// Runs `cargo xtask slurm`.
pub fn run(args: &SlurmArgs) -> Result<()> {
    let cwd = std::env::current_dir().context("reading the working directory")?;
    let table = table_name(args.target)?;
    let binary = match &args.binary {
        Some(b) => absolute(b, &cwd),
        None => std::env::current_exe().context("locating the xtask binary")?,
    };
    let scripts = absolute(
        &args.scripts.clone().unwrap_or_else(|| {
            args.out
                .join("slurm")
                .join(format!("{table}-{}", args.preset.as_str()))
        }),
        &cwd,
    );
    let rendered = render(args, &cwd, &binary, &scripts)?;
    std::fs::create_dir_all(scripts.join("logs"))
        .with_context(|| format!("creating {}", scripts.display()))?;
    for (name, text) in &rendered.files {
        let path = scripts.join(name);
        eabs_eval::write_text(&path, text)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", path.display()))?;
    }
    let submit = scripts.join("submit.sh");
    println!(
        "wrote {} (train, eval array of {}, merge)",
        scripts.display(),
        args.shards
    );
    if !args.submit {
        println!("submit with: bash {}", quote(&submit));
        return Ok(());
    }
    let out = std::process::Command::new("bash")
        .arg(&submit)
        .output()
        .context("running bash to submit (is sbatch on PATH?)")?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            submit.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    print!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SlurmArgs,
    }

    #[test]
    fn only_tables_shard() -> Result<()> {
        let cli = Cli::try_parse_from(["slurm", "table5", "--shards", "2"])?;
        let err = render(&cli.args, Path::new("/r"), Path::new("/x"), Path::new("/s"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("only table1..table4"), "{err}");
        assert!(Cli::try_parse_from(["slurm", "table9", "--shards", "2"]).is_err());
        Ok(())
    }

    #[test]
    fn scripts_chain_train_array_and_merge() -> Result<()> {
        let cli = Cli::try_parse_from([
            "slurm",
            "table4",
            "--shards",
            "8",
            "--partition",
            "gpu",
            "--time",
            "12:00:00",
            "--sbatch=--account=lab",
        ])?;
        let s = render(
            &cli.args,
            Path::new("/repo"),
            Path::new("/repo/target/release/xtask"),
            Path::new("/repo/results/slurm/table4-paper"),
        )?;
        let file = |n: &str| &s.files.iter().find(|(f, _)| f == n).unwrap().1;
        let eval = file("eval.sbatch");
        for want in [
            "#SBATCH --array=0-7",
            "#SBATCH --partition=gpu",
            "#SBATCH --gres=gpu:1",
            "#SBATCH --time=12:00:00",
            "#SBATCH --account=lab",
            "#SBATCH --chdir=/repo",
            "--shard \"${SLURM_ARRAY_TASK_ID}/8\"",
            "--device cuda",
            "--no-train",
        ] {
            assert!(eval.contains(want), "eval.sbatch lacks {want}:\n{eval}");
        }
        assert!(file("train.sbatch").contains("--train-only"));
        assert!(file("merge.sbatch").contains("--merge 8"));
        assert!(file("merge.sbatch").contains("verify-results results/table4/paper"));
        let submit = file("submit.sh");
        assert!(submit.contains("--dependency=afterok:\"$train\""));
        assert!(submit.contains("--dependency=afterok:\"$eval\""));
        cli_zero_shards_is_refused()
    }

    fn cli_zero_shards_is_refused() -> Result<()> {
        let cli = Cli::try_parse_from(["slurm", "table2", "--shards", "0"])?;
        assert!(render(
            &cli.args,
            Path::new("/r"),
            Path::new("/r/x"),
            Path::new("/r/s")
        )
        .is_err());
        Ok(())
    }

    #[test]
    fn odd_paths_are_quoted() {
        assert_eq!(quote(Path::new("/a b/it's")), r"'/a b/it'\''s'");
        assert_eq!(quote(Path::new("/plain/path_1.x")), "/plain/path_1.x");
    }
}
