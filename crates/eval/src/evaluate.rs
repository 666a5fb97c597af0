//! Journaled evaluation of one model under one attack over the evaluation subset.
//!
//! Every finished batch is appended to a per-(model, attack) journal before the next starts, so an
//! interrupted run resumes at the first unfinished sample, and no sample is lost or counted twice.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use eabs_datasets::Dataset;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::journal::{Journal, Record};

/// Outcome of one sample under one attack, at each epsilon of the evaluation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SampleRecord {
    /// Position in the evaluation subset (0..n_samples).
    pub sample: usize,
    /// Index in the test split.
    pub test_index: usize,
    /// True label.
    pub label: u32,
    /// Per epsilon: still classified correctly after the attack (`true` = robust).
    pub robust: Vec<bool>,
    /// Per epsilon: size of the returned perturbation in the attack's norm (NaN-free; 0 when the
    /// attack returned the clean image).
    pub distance: Vec<f64>,
}

impl Record for SampleRecord {
    fn sample(&self) -> usize {
        self.sample
    }
}

/// What an attack returns for a batch: per epsilon, per sample, (robust, distance).
pub type BatchResult = Vec<Vec<(bool, f64)>>;

/// Which samples of the subset an [`evaluate_covering`] call computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Coverage {
    /// Every sample the journal lacks.
    #[default]
    All,
    /// Only the samples of this shard (the others are neither computed nor returned).
    Shard(crate::shard::Shard),
    /// None: the journal must hold every sample already (a merge of shards renders from
    /// journals only, and names any sample a shard failed to deliver).
    JournaledOnly,
}

/// Evaluates `subset` (test indices) in batches, resuming from the journal at `journal_path`.
/// `attack` receives the images `(b, c, h, w)` in [0, 1], the labels and returns one row per
/// epsilon (`n_eps` of them). Returns the records of all samples, in subset order.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    journal_path: &Path,
    settings: &serde_json::Value,
    resume: ResumePolicy,
    label: &str,
    test: &Dataset,
    subset: &[usize],
    n_eps: usize,
    batch_size: usize,
    device: &Device,
    attack: &mut dyn FnMut(&Tensor, &[u32]) -> Result<BatchResult>,
) -> Result<Vec<SampleRecord>> {
    evaluate_covering(
        journal_path,
        settings,
        resume,
        label,
        test,
        subset,
        n_eps,
        batch_size,
        device,
        Coverage::All,
        attack,
    )
    .map(|j| j.records)
}

/// The records of an evaluation, and whether its journal was started over because its inputs
/// changed ([`ResumePolicy::RestartChanged`]): the time earlier invocations spent on the
/// stage then measured work that is gone ([`crate::provenance::Timer::stage_restartable`]).
#[derive(Debug, Clone)]
pub struct Journaled {
    /// One record per evaluated sample.
    pub records: Vec<SampleRecord>,
    /// The journal was discarded and begun again by this call.
    pub started_over: bool,
}

/// [`evaluate`] of the samples `coverage` names. With [`Coverage::Shard`] it returns the
/// shard's records only (in subset order).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_covering(
    journal_path: &Path,
    settings: &serde_json::Value,
    resume: ResumePolicy,
    label: &str,
    test: &Dataset,
    subset: &[usize],
    n_eps: usize,
    batch_size: usize,
    device: &Device,
    coverage: Coverage,
    attack: &mut dyn FnMut(&Tensor, &[u32]) -> Result<BatchResult>,
) -> Result<Journaled> {
    if coverage == Coverage::JournaledOnly && !settings_path(journal_path).exists() {
        bail!(
            "{label}: no journal {} to render from: no shard ran this row (were the shards run \
             with the same target, preset and flags?)",
            journal_path.display()
        );
    }
    let started_over = check_settings(journal_path, settings, resume)?;
    let mut journal = Journal::<SampleRecord>::open(journal_path)?;
    for r in journal.records() {
        if r.sample >= subset.len() || subset[r.sample] != r.test_index || r.robust.len() != n_eps {
            bail!(
                "journal {} records sample {} (test index {}, {} epsilons), which does not match this \
                 evaluation (a different --samples, --seed or epsilon list?); delete it to start over",
                journal_path.display(),
                r.sample,
                r.test_index,
                r.robust.len()
            );
        }
    }
    let owned = |s: usize| match coverage {
        Coverage::Shard(shard) => shard.owns(s),
        Coverage::All | Coverage::JournaledOnly => true,
    };
    let todo: Vec<usize> = (0..subset.len())
        .filter(|&s| owned(s) && !journal.contains(s))
        .collect();
    if coverage == Coverage::JournaledOnly && !todo.is_empty() {
        bail!(
            "{label}: journal {} lacks {} of {} samples (first: sample {}), so the shards did not \
             cover this row; rerun the shards that own them",
            journal_path.display(),
            todo.len(),
            subset.len(),
            todo[0]
        );
    }
    let bar = progress_bar(label, subset.len() as u64, journal.len() as u64);
    for chunk in todo.chunks(batch_size.max(1)) {
        let idx: Vec<usize> = chunk.iter().map(|&s| subset[s]).collect();
        let xs = test.images_tensor(&idx, device)?;
        let labels: Vec<u32> = idx.iter().map(|&i| test.labels[i] as u32).collect();
        let result = attack(&xs, &labels)
            .with_context(|| format!("{label}: batch starting at sample {}", chunk[0]))?;
        if result.len() != n_eps || result.iter().any(|row| row.len() != chunk.len()) {
            bail!("{label}: attack returned a result of the wrong shape");
        }
        let records: Vec<SampleRecord> = chunk
            .iter()
            .enumerate()
            .map(|(j, &s)| SampleRecord {
                sample: s,
                test_index: subset[s],
                label: labels[j],
                robust: result.iter().map(|row| row[j].0).collect(),
                distance: result
                    .iter()
                    .map(|row| {
                        if row[j].1.is_finite() {
                            row[j].1
                        } else {
                            f64::MAX
                        }
                    })
                    .collect(),
            })
            .collect();
        journal.append(&records)?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(Journaled {
        records: journal
            .records()
            .filter(|r| r.sample < subset.len() && owned(r.sample))
            .cloned()
            .collect(),
        started_over,
    })
}

/// What [`evaluate`] does with a journal whose saved inputs differ from this evaluation's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResumePolicy {
    /// Refuse, naming the inputs that changed (the default: results of two configurations
    /// never mix silently).
    #[default]
    Refuse,
    /// Log what changed and start the journal over under the new inputs
    /// (`--restart-changed`).
    RestartChanged,
}

/// Path of the settings file that sits beside a journal.
fn settings_path(journal_path: &Path) -> std::path::PathBuf {
    journal_path.with_extension("settings.json")
}

/// A journal may only be resumed by the evaluation that wrote it: the model's training
/// configuration, the attack and its settings are saved beside it when it is created and must
/// match on every later run. Otherwise results of two configurations would mix silently.
/// Returns whether the journal was started over.
fn check_settings(
    journal_path: &Path,
    settings: &serde_json::Value,
    resume: ResumePolicy,
) -> Result<bool> {
    let meta = settings_path(journal_path);
    let started = journal_path
        .metadata()
        .map(|m| m.len() > 0)
        .unwrap_or(false);
    if meta.exists() {
        let text = std::fs::read_to_string(&meta)
            .with_context(|| format!("reading {}", meta.display()))?;
        let saved: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", meta.display()))?;
        if &saved != settings {
            let mut changed = Vec::new();
            json_differences("", &saved, settings, &mut changed);
            if resume == ResumePolicy::RestartChanged {
                tracing::warn!(
                    journal = %journal_path.display(),
                    changed = changed.join("; "),
                    "inputs changed: starting this stage over (--restart-changed)"
                );
                for f in [journal_path, meta.as_path()] {
                    if f.exists() {
                        std::fs::remove_file(f)
                            .with_context(|| format!("removing {}", f.display()))?;
                    }
                }
                crate::write_json(&meta, settings)?;
                return Ok(true);
            }
            bail!(
                "journal {} was written by an evaluation with other inputs: {} (saved in {}); \
                 rerun with the original inputs, or with --restart-changed to start this stage over",
                journal_path.display(),
                changed.join("; "),
                meta.display(),
            );
        }
    } else if started {
        bail!(
            "journal {} has no settings file beside it ({}), so it cannot be checked against this \
             evaluation; delete it to start this stage over",
            journal_path.display(),
            meta.display()
        );
    } else {
        crate::write_json(&meta, settings)?;
    }
    Ok(false)
}

/// Where `new` differs from `old`, as `path: was X, now Y` (leaves of objects; arrays and
/// values compared whole), so that a refusal names the input that changed, e.g.
/// `model.checkpoint.sha256: was "ab..", now "cd.."`.
pub fn json_differences(
    at: &str,
    old: &serde_json::Value,
    new: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => json_differences(&path, x, y, out),
                    (Some(x), None) => out.push(format!("{path}: was {x}, now absent")),
                    (None, Some(y)) => out.push(format!("{path}: was absent, now {y}")),
                    (None, None) => {}
                }
            }
        }
        (a, b) if a != b => out.push(format!(
            "{}: was {a}, now {b}",
            if at.is_empty() { "(settings)" } else { at }
        )),
        _ => {}
    }
}

fn progress_bar(label: &str, len: u64, done: u64) -> ProgressBar {
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressBar::new(len)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{msg:32} [{bar:30}] {pos}/{len} samples, ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar.set_position(done);
    bar
}

/// A seeded random subset of `n` test indices out of `n_test` (sorted), the same for every model.
pub fn select_subset(n_test: usize, n: usize, seed: u64) -> Result<Vec<usize>> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    if n == 0 || n > n_test {
        bail!("cannot draw {n} evaluation samples from a test split of {n_test} images");
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_7E57);
    let mut all: Vec<usize> = (0..n_test).collect();
    all.shuffle(&mut rng);
    let mut chosen = all[..n].to_vec();
    chosen.sort_unstable();
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journals_refuse_other_settings() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("eabs-eval-settings-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let journal = dir.join("pgd.jsonl");
        let a = serde_json::json!({"attack": "pgd", "steps": 20});
        check_settings(&journal, &a, ResumePolicy::Refuse)?;
        std::fs::write(&journal, "{}\n")?;
        check_settings(&journal, &a, ResumePolicy::Refuse)?; // same settings: resume
        let b = serde_json::json!({"attack": "pgd", "steps": 80});
        let err = check_settings(&journal, &b, ResumePolicy::Refuse)
            .expect_err("other settings must not resume");
        assert!(
            format!("{err:#}").contains("other inputs: steps: was 20, now 80"),
            "{err:#}"
        );
        // Another checkpoint at the same path: named by the field that changed.
        let c = serde_json::json!({"attack": "pgd", "steps": 20,
            "model": {"checkpoint": {"path": "best.safetensors", "sha256": "aa"}}});
        let d = serde_json::json!({"attack": "pgd", "steps": 20,
            "model": {"checkpoint": {"path": "best.safetensors", "sha256": "bb"}}});
        let mut changed = Vec::new();
        json_differences("", &c, &d, &mut changed);
        assert_eq!(
            changed,
            vec![r#"model.checkpoint.sha256: was "aa", now "bb""#]
        );
        changed.clear();
        json_differences("", &a, &c, &mut changed);
        assert_eq!(changed.len(), 1);
        assert!(changed[0].starts_with("model: was absent"), "{changed:?}");
        // With --restart-changed the stage starts over under the new settings.
        assert!(
            check_settings(&journal, &b, ResumePolicy::RestartChanged)?,
            "a journal started over says so (the stage's earlier times are dropped)"
        );
        assert!(!journal.exists(), "the old journal must be gone");
        // The new settings now resume, and resuming is not starting over.
        assert!(!check_settings(&journal, &b, ResumePolicy::Refuse)?);
        assert!(!check_settings(&journal, &b, ResumePolicy::RestartChanged)?);
        std::fs::write(&journal, "{}\n")?;
        std::fs::remove_file(settings_path(&journal))?;
        assert!(
            check_settings(&journal, &a, ResumePolicy::Refuse).is_err(),
            "a started journal without settings"
        );
        Ok(())
    }

    #[test]
    fn subset_is_seeded_and_sorted() -> Result<()> {
        let a = select_subset(10_000, 100, 7)?;
        assert_eq!(a, select_subset(10_000, 100, 7)?);
        assert_ne!(a, select_subset(10_000, 100, 8)?);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert!(select_subset(10, 11, 0).is_err());
        Ok(())
    }
}
