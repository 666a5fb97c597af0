//! An experiment split over machines: shard `I` of `N` evaluates the samples at positions
//! `p` of the evaluation subset with `p mod N = I`, into journals of its own, and a merge
//! gathers the shards' journals into the results folder, where the unsharded code renders the
//! table from them (computing nothing).
//!
//! The unit of distribution is the per-sample journal record: a sample's outcome does not
//! depend on which other samples share its batch, because every random draw is keyed by the
//! sample's content (the attacks' streams, [`eabs_attacks::seeding`], and the inference noise
//! of randomised models, [`eabs_inference::AbsClassifier`]). A sharded run therefore renders the
//! same table as an unsharded one, for any `N` (`scripts/slurm-test.sh` checks it on a real
//! Slurm cluster).
//!
//! Layout: shard `I` of `N` of `<out>/<target>/<preset>/` writes
//! `shards/shard-I-of-N/journal/seed<S>/<column>/<row>.jsonl` (its own files: shards never
//! write the same file, and each holds the lock of its own folder only) and, once every row of
//! every column is journaled, `shards/shard-I-of-N/shard.json` ([`ShardManifest`]). A shard
//! never trains: the models come from a training stage run before (`--train-only`), so no two
//! shards can train the same model.
//!
//! [`gather`] refuses when a shard is missing or unfinished, when shards disagree on the run
//! (target, preset, seed, samples, shard count) or on any journal's settings (which bind the
//! checkpoint and test-data digests and every attack setting), when a shard holds a sample it
//! does not own or misses one, and when the results folder already holds a different journal.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::evaluate::SampleRecord;
use crate::journal::Journal;

/// Shard `index` of `count` (0-based): `--shard I/N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// Which shard, `0..count`.
    pub index: usize,
    /// How many shards.
    pub count: usize,
}

impl Shard {
    /// Shard `index` of `count`, checked.
    pub fn new(index: usize, count: usize) -> Result<Self> {
        if count == 0 || index >= count {
            bail!("shard {index}/{count}: need 0 <= I < N (shards are numbered from 0)");
        }
        Ok(Self { index, count })
    }

    /// Whether the sample at `position` of the evaluation subset is this shard's.
    pub fn owns(&self, position: usize) -> bool {
        position % self.count == self.index
    }

    /// The shard's folder name below `shards/`.
    pub fn dir_name(&self) -> String {
        format!("shard-{}-of-{}", self.index, self.count)
    }

    /// The folder of this shard in the results folder `out_dir`.
    pub fn dir(&self, out_dir: &Path) -> PathBuf {
        out_dir.join(SHARDS_DIR).join(self.dir_name())
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not a shard: write I/N, e.g. 0/4"))?;
        let parse = |v: &str, what: &str| {
            v.trim()
                .parse::<usize>()
                .map_err(|e| format!("shard `{s}`: {what} `{v}` is not a number ({e})"))
        };
        Shard::new(parse(i, "I")?, parse(n, "N")?).map_err(|e| e.to_string())
    }
}

/// Folder of the shards inside a results folder.
pub const SHARDS_DIR: &str = "shards";

/// Name of a finished shard's manifest inside its folder.
pub const MANIFEST: &str = "shard.json";

/// What a finished shard wrote: the run it belongs to and its journals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardManifest {
    /// The results folder's name (`table2`, ...).
    pub target: String,
    /// Preset name.
    pub preset: String,
    /// Master seed.
    pub seed: u64,
    /// Size of the evaluation subset.
    pub n_samples: usize,
    /// Which shard.
    pub shard: Shard,
    /// Code revision that ran it.
    pub commit: String,
    /// When it finished (Unix seconds).
    pub finished_unix: u64,
    /// Journals, by path relative to the shard's `journal/seed<S>/`, with their record counts.
    pub journals: BTreeMap<String, usize>,
}

/// The sample journals (`<column>/<row>.jsonl`) below `root`, as relative paths.
fn sample_journals(root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let Ok(columns) = std::fs::read_dir(root) else {
        return Ok(out);
    };
    for column in columns {
        let column = column.with_context(|| format!("listing {}", root.display()))?;
        if !column.file_type()?.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(column.path())
            .with_context(|| format!("listing {}", column.path().display()))?
        {
            let file = file?;
            let name = file.file_name().to_string_lossy().into_owned();
            if name.ends_with(".jsonl") {
                out.push(format!("{}/{name}", column.file_name().to_string_lossy()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Writes the manifest of a finished shard whose journals are in `journal_root`.
pub fn write_manifest(
    shard_dir: &Path,
    journal_root: &Path,
    mut manifest: ShardManifest,
) -> Result<PathBuf> {
    for rel in sample_journals(journal_root)? {
        let journal = Journal::<SampleRecord>::open(&journal_root.join(&rel))?;
        if let Some(r) = journal.records().find(|r| !manifest.shard.owns(r.sample)) {
            bail!(
                "journal {} of shard {} holds sample {}, which is not the shard's",
                journal_root.join(&rel).display(),
                manifest.shard,
                r.sample
            );
        }
        manifest.journals.insert(rel, journal.len());
    }
    let path = shard_dir.join(MANIFEST);
    crate::write_json(&path, &manifest)?;
    Ok(path)
}

/// What [`gather`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GatherSummary {
    /// Number of shards gathered.
    pub shards: usize,
    /// Journals written to the results folder.
    pub written: usize,
    /// Journals the results folder already held, identical.
    pub unchanged: usize,
    /// Sample records in all gathered journals.
    pub records: usize,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
}

fn settings_of(journal: &Path) -> Result<serde_json::Value> {
    read_json(&journal.with_extension("settings.json"))
}

/// Gathers the `count` shards of the results folder `out_dir` (run `target` at `preset`,
/// `seed`, `n_samples`) into its journal folder `journal_root`; see the module docs for what
/// it refuses.
pub fn gather(
    out_dir: &Path,
    journal_root: &Path,
    expect: &ShardManifest,
    count: usize,
) -> Result<GatherSummary> {
    let seed_dir = format!("seed{}", expect.seed);
    let mut manifests = Vec::with_capacity(count);
    for index in 0..count {
        let shard = Shard::new(index, count)?;
        let dir = shard.dir(out_dir);
        let path = dir.join(MANIFEST);
        if !path.is_file() {
            let started = dir.join("journal").is_dir();
            bail!(
                "shard {shard} has not finished: {} is missing ({}); run or resubmit that shard \
                 (`--shard {shard}`), then merge again",
                path.display(),
                if started {
                    "its journals exist: it was interrupted or is still running"
                } else {
                    "it never ran here"
                }
            );
        }
        let m: ShardManifest = read_json(&path)?;
        let same_run = m.target == expect.target
            && m.preset == expect.preset
            && m.seed == expect.seed
            && m.n_samples == expect.n_samples
            && m.shard == shard;
        if !same_run {
            bail!(
                "{} is shard {} of a run of {} at preset {} seed {} with {} samples; this merge \
                 is {shard} of {} at preset {} seed {} with {} samples",
                path.display(),
                m.shard,
                m.target,
                m.preset,
                m.seed,
                m.n_samples,
                expect.target,
                expect.preset,
                expect.seed,
                expect.n_samples
            );
        }
        manifests.push((shard, dir.join("journal").join(&seed_dir), m));
    }
    if let Some(extra) = std::fs::read_dir(out_dir.join(SHARDS_DIR))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| !name.ends_with(&format!("-of-{count}")))
    {
        bail!(
            "{} also holds {extra}, a shard of another split; merge the split it belongs to, or \
             remove it",
            out_dir.join(SHARDS_DIR).display()
        );
    }
    let paths: BTreeSet<&String> = manifests[0].2.journals.keys().collect();
    for (shard, _, m) in &manifests[1..] {
        let other: BTreeSet<&String> = m.journals.keys().collect();
        if other != paths {
            let diff: Vec<&&String> = paths.symmetric_difference(&other).collect();
            bail!(
                "shards 0/{count} and {shard} hold different journals (differing: {diff:?}): \
                 they did not run the same experiment"
            );
        }
    }
    let mut summary = GatherSummary {
        shards: count,
        ..Default::default()
    };
    for rel in paths {
        let (_, root0, _) = &manifests[0];
        let settings = settings_of(&root0.join(rel))?;
        let mut records: BTreeMap<usize, SampleRecord> = BTreeMap::new();
        for (shard, root, m) in &manifests {
            let path = root.join(rel);
            let s = settings_of(&path)?;
            if s != settings {
                let mut changed = Vec::new();
                crate::evaluate::json_differences("", &settings, &s, &mut changed);
                bail!(
                    "journal {rel}: shard {shard} ran other settings than shard 0/{count}: {}",
                    changed.join("; ")
                );
            }
            let journal = Journal::<SampleRecord>::open(&path)?;
            if journal.len() != m.journals[rel] {
                bail!(
                    "journal {} holds {} records, its shard's manifest {}: it changed after the \
                     shard finished",
                    path.display(),
                    journal.len(),
                    m.journals[rel]
                );
            }
            for r in journal.records() {
                if !shard.owns(r.sample) {
                    bail!(
                        "journal {} holds sample {}, which belongs to shard {}/{count}",
                        path.display(),
                        r.sample,
                        r.sample % count
                    );
                }
                records.insert(r.sample, r.clone());
            }
        }
        // Every shard covers its own samples below the journal's extent.
        let extent = records.keys().next_back().map_or(0, |&s| s + 1);
        if let Some(missing) = (0..extent).find(|s| !records.contains_key(s)) {
            bail!(
                "journal {rel}: no shard holds sample {missing} (shard {}/{count}'s), below the \
                 last gathered sample {}",
                missing % count,
                extent - 1
            );
        }
        summary.records += records.len();
        let dest = journal_root.join(rel);
        let merged: Vec<SampleRecord> = records.into_values().collect();
        if dest.exists() {
            let held = Journal::<SampleRecord>::open(&dest)?;
            let held: Vec<SampleRecord> = held.records().cloned().collect();
            let held_settings = settings_of(&dest).ok();
            if held == merged && held_settings.as_ref() == Some(&settings) {
                summary.unchanged += 1;
                continue;
            }
            bail!(
                "{} already holds a journal that differs from the shards' (an earlier or an \
                 unsharded run); move it away or merge into another --out",
                dest.display()
            );
        }
        let mut text = Vec::new();
        for r in &merged {
            serde_json::to_writer(&mut text, r)?;
            text.push(b'\n');
        }
        crate::write_json(&dest.with_extension("settings.json"), &settings)?;
        crate::provenance::write_atomic(&dest, &text)?;
        summary.written += 1;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_partition() {
        let s: Shard = "1/4".parse().unwrap();
        assert_eq!(s, Shard::new(1, 4).unwrap());
        assert_eq!(s.to_string(), "1/4");
        assert!("4/4".parse::<Shard>().is_err());
        assert!("1-4".parse::<Shard>().is_err());
        assert!("a/4".parse::<Shard>().is_err());
        assert!("0/0".parse::<Shard>().is_err());
        // Every position belongs to exactly one shard.
        for p in 0..20 {
            let owners = (0..4)
                .filter(|&i| Shard::new(i, 4).unwrap().owns(p))
                .count();
            assert_eq!(owners, 1);
        }
        assert_eq!(s.dir_name(), "shard-1-of-4");
    }

    const COUNT: usize = 3;
    const N: usize = 8;
    const REL: &str = "E-ABS/l2-pgd.jsonl";

    fn expect() -> ShardManifest {
        ShardManifest {
            target: "table2".into(),
            preset: "smoke".into(),
            seed: 0,
            n_samples: N,
            shard: Shard::new(0, 1).unwrap(),
            commit: "test".into(),
            finished_unix: 0,
            journals: BTreeMap::new(),
        }
    }

    fn record(sample: usize) -> SampleRecord {
        SampleRecord {
            sample,
            test_index: 100 + sample,
            label: (sample % 10) as u32,
            robust: vec![sample.is_multiple_of(2)],
            distance: vec![0.25 * sample as f64],
        }
    }

    fn settings(digest: &str) -> serde_json::Value {
        serde_json::json!({ "checkpoint_sha256": digest, "epsilons": [1.5] })
    }

    /// Writes shard `index`'s journal (samples `samples`, settings `digest`) and, when
    /// `finish`, its manifest.
    fn write_shard(out: &Path, index: usize, samples: &[usize], digest: &str, finish: bool) {
        let shard = Shard::new(index, COUNT).unwrap();
        let root = shard.dir(out).join("journal").join("seed0");
        let path = root.join(REL);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        crate::write_json(&path.with_extension("settings.json"), &settings(digest)).unwrap();
        if path.exists() {
            std::fs::remove_file(&path).unwrap();
        }
        let mut journal = Journal::<SampleRecord>::open(&path).unwrap();
        let records: Vec<SampleRecord> = samples.iter().map(|&s| record(s)).collect();
        journal.append(&records).unwrap();
        if finish {
            let manifest = ShardManifest { shard, ..expect() };
            // `write_manifest` itself refuses a foreign sample: bypass it for those cases.
            if samples.iter().all(|&s| shard.owns(s)) {
                write_manifest(&shard.dir(out), &root, manifest).unwrap();
            } else {
                let mut manifest = manifest;
                manifest.journals.insert(REL.into(), samples.len());
                crate::write_json(&shard.dir(out).join(MANIFEST), &manifest).unwrap();
            }
        }
    }

    fn owned(index: usize) -> Vec<usize> {
        (0..N).filter(|s| s % COUNT == index).collect()
    }

    fn gather_into(out: &Path) -> Result<GatherSummary> {
        let journal_root = out.join("journal").join("seed0");
        gather(out, &journal_root, &expect(), COUNT)
    }

    fn error_of(out: &Path) -> String {
        format!("{:#}", gather_into(out).expect_err("the merge must refuse"))
    }

    fn complete(out: &Path) {
        for i in 0..COUNT {
            write_shard(out, i, &owned(i), "abc", true);
        }
    }

    #[test]
    fn gather_merges_each_sample_once_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        complete(dir.path());
        let summary = gather_into(dir.path()).unwrap();
        assert_eq!(
            (summary.written, summary.unchanged, summary.records),
            (1, 0, N)
        );
        let merged =
            Journal::<SampleRecord>::open(&dir.path().join("journal/seed0").join(REL)).unwrap();
        let got: Vec<SampleRecord> = merged.records().cloned().collect();
        assert_eq!(got, (0..N).map(record).collect::<Vec<_>>());
        // A second merge finds the same journal and writes nothing.
        let again = gather_into(dir.path()).unwrap();
        assert_eq!((again.written, again.unchanged), (0, 1));
    }

    #[test]
    fn gather_refuses_a_missing_or_unfinished_shard() {
        let dir = tempfile::tempdir().unwrap();
        write_shard(dir.path(), 0, &owned(0), "abc", true);
        write_shard(dir.path(), 1, &owned(1)[..1], "abc", false);
        let e = error_of(dir.path());
        assert!(e.contains("shard 1/3 has not finished"), "{e}");
        assert!(e.contains("interrupted"), "{e}");
        write_shard(dir.path(), 1, &owned(1), "abc", true);
        let e = error_of(dir.path());
        assert!(e.contains("shard 2/3 has not finished"), "{e}");
        assert!(e.contains("never ran"), "{e}");
    }

    #[test]
    fn gather_refuses_shards_with_other_settings() {
        let dir = tempfile::tempdir().unwrap();
        write_shard(dir.path(), 0, &owned(0), "abc", true);
        write_shard(dir.path(), 1, &owned(1), "def", true);
        write_shard(dir.path(), 2, &owned(2), "abc", true);
        let e = error_of(dir.path());
        assert!(e.contains("shard 1/3 ran other settings"), "{e}");
        assert!(e.contains("checkpoint_sha256"), "{e}");
        assert!(!dir.path().join("journal/seed0").join(REL).exists());
    }

    #[test]
    fn gather_refuses_a_manifest_of_another_run() {
        let dir = tempfile::tempdir().unwrap();
        complete(dir.path());
        let path = Shard::new(2, COUNT).unwrap().dir(dir.path()).join(MANIFEST);
        let mut m: ShardManifest = read_json(&path).unwrap();
        m.n_samples = 2 * N;
        crate::write_json(&path, &m).unwrap();
        let e = error_of(dir.path());
        assert!(e.contains("16 samples") && e.contains("8 samples"), "{e}");
    }

    #[test]
    fn gather_refuses_a_foreign_or_missing_sample() {
        let dir = tempfile::tempdir().unwrap();
        complete(dir.path());
        // Shard 1 also holds sample 3, shard 0's.
        let mut samples = owned(1);
        samples.push(3);
        write_shard(dir.path(), 1, &samples, "abc", true);
        let e = error_of(dir.path());
        assert!(
            e.contains("holds sample 3, which belongs to shard 0/3"),
            "{e}"
        );

        let dir = tempfile::tempdir().unwrap();
        complete(dir.path());
        // Shard 1's journal grew after its manifest was written.
        let path = Shard::new(1, COUNT)
            .unwrap()
            .dir(dir.path())
            .join("journal/seed0")
            .join(REL);
        let mut extra = owned(1);
        extra.push(N + 2);
        std::fs::remove_file(&path).unwrap();
        let mut journal = Journal::<SampleRecord>::open(&path).unwrap();
        journal
            .append(&extra.iter().map(|&s| record(s)).collect::<Vec<_>>())
            .unwrap();
        let e = error_of(dir.path());
        assert!(e.contains("changed after the shard finished"), "{e}");

        // A finished shard without one of its samples below the others' extent.
        let dir = tempfile::tempdir().unwrap();
        complete(dir.path());
        write_shard(dir.path(), 2, &owned(2)[1..], "abc", true);
        let e = error_of(dir.path());
        assert!(e.contains("no shard holds sample 2"), "{e}");
    }

    #[test]
    fn gather_refuses_another_split_and_a_different_existing_journal() {
        let dir = tempfile::tempdir().unwrap();
        complete(dir.path());
        std::fs::create_dir_all(dir.path().join(SHARDS_DIR).join("shard-0-of-2")).unwrap();
        let e = error_of(dir.path());
        assert!(e.contains("shard-0-of-2, a shard of another split"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        complete(dir.path());
        let dest = dir.path().join("journal/seed0").join(REL);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        crate::write_json(&dest.with_extension("settings.json"), &settings("abc")).unwrap();
        let mut held = Journal::<SampleRecord>::open(&dest).unwrap();
        let mut other = record(0);
        other.robust = vec![!other.robust[0]];
        held.append(&[other]).unwrap();
        let e = error_of(dir.path());
        assert!(e.contains("already holds a journal that differs"), "{e}");
    }
}
