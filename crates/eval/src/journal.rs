//! Per-sample journal of an evaluation, so that an interrupted run (Ctrl-C, kill, crash) resumes
//! where it stopped with no sample lost or counted twice.
//!
//! One JSON object per line, appended and flushed to disk after every batch. A line cut short by a
//! crash is dropped on reopening (it was never acknowledged); a line for a sample already seen, or
//! a malformed line in the middle of the file, is an error naming the file and the line: the
//! journal is not silently repaired.

use anyhow::{bail, Context, Result};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// One journaled record: the outcome of one sample.
pub trait Record: Serialize + DeserializeOwned + Clone {
    /// Index of the sample in the evaluation subset; unique within a journal.
    fn sample(&self) -> usize;
}

/// An append-only journal of per-sample records.
pub struct Journal<R: Record> {
    path: PathBuf,
    file: File,
    done: BTreeMap<usize, R>,
}

impl<R: Record> Journal<R> {
    /// Opens (or creates) the journal at `path` and reads what a previous run recorded.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating journal directory {}", dir.display()))?;
        }
        let mut done = BTreeMap::new();
        let mut valid_len: u64 = 0;
        if path.exists() {
            let reader = BufReader::new(
                File::open(path).with_context(|| format!("opening journal {}", path.display()))?,
            );
            let lines: Vec<(String, bool)> = {
                let mut out = Vec::new();
                let mut reader = reader;
                loop {
                    let mut buf = String::new();
                    let n = reader
                        .read_line(&mut buf)
                        .with_context(|| format!("reading journal {}", path.display()))?;
                    if n == 0 {
                        break;
                    }
                    let complete = buf.ends_with('\n');
                    out.push((buf, complete));
                }
                out
            };
            let n_lines = lines.len();
            for (i, (line, complete)) in lines.into_iter().enumerate() {
                if !complete {
                    // A crash mid-write: the last line was never acknowledged. Drop it.
                    if i + 1 == n_lines {
                        break;
                    }
                }
                let record: R = match serde_json::from_str(line.trim_end()) {
                    Ok(r) => r,
                    Err(e) => bail!(
                        "journal {} line {}: not a valid record ({e}); delete the file to start this stage over",
                        path.display(),
                        i + 1
                    ),
                };
                if done.insert(record.sample(), record).is_some() {
                    bail!(
                        "journal {} line {}: sample recorded twice; delete the file to start this stage over",
                        path.display(),
                        i + 1
                    );
                }
                valid_len += line.len() as u64;
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening journal {} for appending", path.display()))?;
        // Cut a torn last line off so that the next append starts on a fresh line.
        if file.metadata()?.len() != valid_len {
            file.set_len(valid_len)
                .with_context(|| format!("truncating torn line of {}", path.display()))?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            done,
        })
    }

    /// Whether `sample` already has a record.
    pub fn contains(&self, sample: usize) -> bool {
        self.done.contains_key(&sample)
    }

    /// Whether nothing is recorded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of recorded samples.
    pub fn len(&self) -> usize {
        self.done.len()
    }

    /// Records in sample order.
    pub fn records(&self) -> impl Iterator<Item = &R> {
        self.done.values()
    }

    /// Appends a batch of records and makes them durable before returning.
    pub fn append(&mut self, records: &[R]) -> Result<()> {
        let mut buf = Vec::new();
        for r in records {
            if self.done.contains_key(&r.sample()) {
                bail!(
                    "journal {}: sample {} recorded twice",
                    self.path.display(),
                    r.sample()
                );
            }
            serde_json::to_writer(&mut buf, r)?;
            buf.push(b'\n');
        }
        self.file
            .write_all(&buf)
            .and_then(|_| self.file.sync_data())
            .with_context(|| format!("appending to journal {}", self.path.display()))?;
        for r in records {
            self.done.insert(r.sample(), r.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    struct Outcome {
        sample: usize,
        correct: bool,
    }
    impl Record for Outcome {
        fn sample(&self) -> usize {
            self.sample
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("eabs-journal-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("j.jsonl")
    }

    #[test]
    fn resumes_and_drops_a_torn_last_line() -> Result<()> {
        let path = tmp("torn");
        let mut j = Journal::<Outcome>::open(&path)?;
        j.append(&[
            Outcome {
                sample: 0,
                correct: true,
            },
            Outcome {
                sample: 3,
                correct: false,
            },
        ])?;
        drop(j);
        // Simulate a crash in the middle of writing sample 4.
        let mut f = OpenOptions::new().append(true).open(&path)?;
        f.write_all(b"{\"sample\":4,\"corr")?;
        drop(f);
        let mut j = Journal::<Outcome>::open(&path)?;
        assert_eq!(j.len(), 2);
        assert!(j.contains(3) && !j.contains(4));
        j.append(&[Outcome {
            sample: 4,
            correct: true,
        }])?;
        drop(j);
        let j = Journal::<Outcome>::open(&path)?;
        let samples: Vec<usize> = j.records().map(|r| r.sample).collect();
        assert_eq!(samples, vec![0, 3, 4]);
        Ok(())
    }

    #[test]
    fn refuses_duplicates_and_garbage() -> Result<()> {
        let path = tmp("dup");
        let mut j = Journal::<Outcome>::open(&path)?;
        j.append(&[Outcome {
            sample: 1,
            correct: true,
        }])?;
        assert!(j
            .append(&[Outcome {
                sample: 1,
                correct: false
            }])
            .is_err());
        drop(j);
        std::fs::write(
            &path,
            "{\"sample\":1,\"correct\":true}\nnot json\n{\"sample\":2,\"correct\":true}\n",
        )?;
        let err = Journal::<Outcome>::open(&path)
            .err()
            .expect("garbage must be an error");
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
        Ok(())
    }
}
