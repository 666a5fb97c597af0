//! Where a result came from: commit, preset, seeds, device, hardware and wall time per stage.
//! Every file under `results/` carries one of these, so a number can always be traced to the run
//! that produced it.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::journal::{Journal, Record};

/// The machine a run used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hardware {
    /// CPU model name from `/proc/cpuinfo`, or "unknown".
    pub cpu: String,
    /// Logical cores available to the process.
    pub cores: usize,
    /// Total memory in GiB, from `/proc/meminfo`.
    pub memory_gib: f64,
    /// Operating system and architecture.
    pub os: String,
}

impl Hardware {
    /// Reads the current machine's description.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_gib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / (1024.0 * 1024.0))
            .unwrap_or(0.0);
        Self {
            cpu,
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory_gib: (memory_gib * 10.0).round() / 10.0,
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        }
    }
}

/// The git revision of the working tree, with `-dirty` when it has uncommitted changes outside
/// `results/` and `weights/`.
pub fn git_revision(repo: &Path) -> String {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(repo)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "HEAD"]) {
        Some(rev) => {
            // Dirty means code or data that the run reads differ from the commit: what runs
            // write (`results/`) and the released weights (each journal is bound to its
            // checkpoint's sha256 instead) do not count, so a run resumed while its own outputs
            // or a training's weights were being written still names a clean commit.
            let dirty = run(&[
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":(exclude)results",
                ":(exclude)weights",
            ])
            .map(|s| !s.is_empty())
            .unwrap_or(false);
            if dirty {
                format!("{rev}-dirty")
            } else {
                rev
            }
        }
        None => "unknown".into(),
    }
}

/// Seconds since the Unix epoch.
pub fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Wall time of one named stage of a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stage {
    /// e.g. "train CNN", "E-ABS linf pgd".
    pub name: String,
    /// Wall-clock seconds one invocation spent in this stage. A resumed run lists the stages of
    /// every invocation (see [`Timer::resumable`]), so the work an earlier invocation journaled
    /// is counted once, by the invocation that did it.
    pub seconds: f64,
    /// The commit of the invocation that ran the stage (absent in results written before
    /// resumable timing existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Unix time at which the stage finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_unix: Option<u64>,
    /// This invocation started the stage over (its inputs had changed, `--restart-changed`),
    /// so the times earlier invocations logged for it measured discarded work and were
    /// dropped ([`Timer::stage_restartable`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub started_over: bool,
}

/// A stage as logged on disk: numbered so that the journal machinery can check the log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct LoggedStage {
    index: usize,
    #[serde(flatten)]
    stage: Stage,
}

impl Record for LoggedStage {
    fn sample(&self) -> usize {
        self.index
    }
}

/// The provenance block written beside every result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Provenance {
    /// `git rev-parse HEAD` of the code that produced the numbers.
    pub commit: String,
    /// Preset name: smoke, quick or paper.
    pub preset: String,
    /// Master seed.
    pub seed: u64,
    /// Device the numerics ran on.
    pub device: String,
    /// Machine description.
    pub hardware: Hardware,
    /// Unix time at which the run (or its latest resumption) started.
    pub started_unix: u64,
    /// Unix time at which it finished.
    pub finished_unix: u64,
    /// Wall time per stage.
    pub stages: Vec<Stage>,
    /// The command line that produced the result.
    pub command: String,
}

impl Provenance {
    /// Total wall time over every stage of every invocation, in seconds.
    pub fn total_seconds(&self) -> f64 {
        self.stages.iter().map(|s| s.seconds).sum()
    }

    /// The distinct commits whose invocations ran stages of this result, in order of first use
    /// (more than one when a run was interrupted and resumed on newer code).
    pub fn stage_commits(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for c in self.stages.iter().filter_map(|s| s.commit.as_ref()) {
            if !out.contains(c) {
                out.push(c.clone());
            }
        }
        out
    }
}

/// Collects stage timings during a run.
pub struct Timer {
    stages: Vec<Stage>,
    log: Option<(Journal<LoggedStage>, String)>,
}

impl Default for Timer {
    fn default() -> Self {
        Self::new()
    }
}

impl Timer {
    /// A timer that keeps its stages in memory only.
    pub fn new() -> Self {
        Self {
            stages: Vec::new(),
            log: None,
        }
    }

    /// A timer that also appends every finished stage (with `commit`) to the log at `path`, and
    /// starts with the stages earlier invocations logged there: the provenance of a run that was
    /// interrupted and resumed then reports the wall time of all its invocations, not only of
    /// the last one. A stage interrupted mid-way is not logged; its journaled samples are
    /// counted by nobody's clock, which the Markdown report states.
    pub fn resumable(path: &Path, commit: &str) -> Result<Self> {
        let journal = Journal::<LoggedStage>::open(path)
            .with_context(|| format!("opening the stage log {}", path.display()))?;
        let mut stages = Vec::new();
        for logged in journal.records() {
            push_stage(&mut stages, logged.stage.clone());
        }
        Ok(Self {
            stages,
            log: Some((journal, commit.to_string())),
        })
    }

    /// Runs `f` as stage `name` and records its wall time.
    pub fn stage<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.stage_restartable(name, f, |_| false)
    }

    /// [`Timer::stage`] for a stage that may start its work over (a journal whose inputs
    /// changed): when `started_over` says so of `f`'s result, the times earlier invocations
    /// logged for `name` are dropped, here and whenever the log is read again, so the stage's
    /// time is that of the work its result holds. (A run interrupted inside the restarted
    /// stage logs nothing for it, and the invocation that finishes it resumes the new journal
    /// without knowing of the restart, so there the earlier times stay; the report's per-stage
    /// line names every commit that worked on the stage either way.)
    pub fn stage_restartable<T>(
        &mut self,
        name: &str,
        f: impl FnOnce() -> Result<T>,
        started_over: impl FnOnce(&T) -> bool,
    ) -> Result<T> {
        let t0 = Instant::now();
        let out = f().with_context(|| format!("stage '{name}'"))?;
        let mut stage = Stage {
            name: name.into(),
            seconds: t0.elapsed().as_secs_f64(),
            commit: None,
            finished_unix: Some(unix_time()),
            started_over: started_over(&out),
        };
        if let Some((journal, commit)) = &mut self.log {
            stage.commit = Some(commit.clone());
            journal.append(&[LoggedStage {
                index: journal.len(),
                stage: stage.clone(),
            }])?;
        }
        push_stage(&mut self.stages, stage);
        Ok(out)
    }

    /// The recorded stages, earlier invocations' first.
    pub fn into_stages(self) -> Vec<Stage> {
        self.stages
    }
}

/// Appends `stage`, first dropping the earlier stages of its name when it started over.
fn push_stage(stages: &mut Vec<Stage>, stage: Stage) {
    if stage.started_over {
        stages.retain(|s| s.name != stage.name);
    }
    stages.push(stage);
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    if path.is_dir() {
        anyhow::bail!(
            "{} is a directory; give a file name to write to",
            path.display()
        );
    }
    let Some(file_name) = path.file_name().map(|n| n.to_string_lossy().to_string()) else {
        anyhow::bail!("{} names no file to write to", path.display());
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let written = (|| -> Result<()> {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        drop(f);
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if written.is_err() {
        // Never leave the temporary file behind.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_refuses_a_directory_and_leaves_no_temporary_file() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let target = dir.path().join("out.json");
        std::fs::create_dir(&target)?;
        let err = write_atomic(&target, b"{}").unwrap_err();
        assert!(format!("{err:#}").contains("is a directory"), "{err:#}");
        let left: Vec<_> = std::fs::read_dir(dir.path())?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        assert_eq!(left, vec![std::ffi::OsString::from("out.json")]);
        Ok(())
    }

    #[test]
    fn atomic_write_replaces_whole_file() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("eabs-prov-{}", std::process::id()));
        let path = dir.join("r.json");
        write_atomic(&path, b"first, longer content")?;
        write_atomic(&path, b"second")?;
        assert_eq!(std::fs::read_to_string(&path)?, "second");
        let leftovers: Vec<_> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        Ok(())
    }

    #[test]
    fn resumable_timer_keeps_earlier_invocations() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("stages.jsonl");
        {
            let mut t = Timer::resumable(&log, "aaa")?;
            t.stage("train CNN", || Ok(()))?;
            // An interrupted stage is not logged.
            assert!(t
                .stage("CNN clean", || -> Result<()> { anyhow::bail!("killed") })
                .is_err());
        }
        let mut t = Timer::resumable(&log, "bbb")?;
        t.stage("CNN clean", || Ok(()))?;
        let stages = t.into_stages();
        let names: Vec<_> = stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["train CNN", "CNN clean"]);
        let commits: Vec<_> = stages.iter().map(|s| s.commit.clone().unwrap()).collect();
        assert_eq!(commits, ["aaa", "bbb"]);
        // A third invocation sees both.
        assert_eq!(Timer::resumable(&log, "ccc")?.into_stages(), stages);
        Ok(())
    }

    /// A stage started over (its journal's inputs changed) keeps only the time of the
    /// invocation that did the work its result holds, in memory and when the log is reread;
    /// the other stages keep every invocation's time.
    #[test]
    fn a_stage_started_over_drops_earlier_invocations_times() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("stages.jsonl");
        {
            let mut t = Timer::resumable(&log, "aaa")?;
            t.stage("E-ABS clean", || Ok(()))?;
            t.stage("E-ABS linf pgd", || Ok(()))?;
        }
        let mut t = Timer::resumable(&log, "bbb")?;
        t.stage_restartable("E-ABS clean", || Ok(true), |&over| over)?;
        t.stage_restartable("E-ABS linf pgd", || Ok(false), |&over| over)?;
        let stages = t.into_stages();
        let seen: Vec<_> = stages
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.commit.as_deref().unwrap(),
                    s.started_over,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("E-ABS linf pgd", "aaa", false),
                ("E-ABS clean", "bbb", true),
                ("E-ABS linf pgd", "bbb", false),
            ]
        );
        assert_eq!(Timer::resumable(&log, "ccc")?.into_stages(), stages);
        // Results written before the field existed read as not started over.
        let old: Stage = serde_json::from_str(r#"{"name": "x", "seconds": 1.0}"#)?;
        assert!(!old.started_over);
        assert!(!serde_json::to_string(&old)?.contains("started_over"));
        Ok(())
    }

    #[test]
    fn hardware_is_described() {
        let hw = Hardware::detect();
        assert!(hw.cores >= 1);
        assert!(!hw.os.is_empty());
    }
}
