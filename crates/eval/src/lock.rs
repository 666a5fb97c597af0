//! Exclusive locks on the folders a run writes (a results folder, a checkpoint directory while
//! training), so that two runs never append to the same journal or checkpoint.
//!
//! The lock is an OS file lock (`flock`) on `<dir>/.lock`, which the kernel releases when the
//! holder exits, however it exits (`kill -9` included): a lock left by a killed process is stale
//! by construction and the next run takes it over (and says so). The file holds the holder's
//! pid, start time and command line, for the message a second run gets.

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Name of the lock file inside a locked folder.
pub const LOCK_FILE: &str = ".lock";

/// An exclusive lock on a folder, held until dropped.
#[derive(Debug)]
pub struct DirLock {
    file: File,
}

impl DirLock {
    /// Takes the lock of `dir` (created if needed) or fails at once, naming the holder.
    /// `what` says what the folder is ("results folder", "checkpoint directory").
    pub fn acquire(dir: &Path, what: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating {what} {}", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                bail!(
                    "{what} {} is in use by another run ({}); wait for it to finish or stop it \
                     (the lock is released when that process exits)",
                    dir.display(),
                    if holder.is_empty() {
                        "holder unknown"
                    } else {
                        holder
                    }
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
        let mut previous = String::new();
        file.read_to_string(&mut previous)
            .with_context(|| format!("reading the lock file {}", path.display()))?;
        if !previous.trim().is_empty() {
            tracing::warn!(
                lock = %path.display(),
                previous = previous.trim(),
                "taking over a stale lock (its holder exited without releasing it)"
            );
        }
        let holder = format!(
            "pid {}, since unix time {}, `{}`",
            std::process::id(),
            crate::provenance::unix_time(),
            std::env::args().collect::<Vec<_>>().join(" ")
        );
        file.set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(holder.as_bytes()))
            .and_then(|_| file.sync_data())
            .with_context(|| format!("writing the lock file {}", path.display()))?;
        Ok(Self { file })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // A clean exit leaves an empty, unlocked file: nothing to take over next time.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_by_pid_and_a_stale_lock_is_taken_over() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let first = DirLock::acquire(dir.path(), "results folder")?;
        let err = DirLock::acquire(dir.path(), "results folder").unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("is in use by another run")
                && msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        // Released: the next run gets it.
        drop(DirLock::acquire(dir.path(), "results folder")?);
        // A killed holder leaves its pid in an unlocked file: stale, taken over.
        std::fs::write(
            dir.path().join(LOCK_FILE),
            "pid 999999999, since unix time 0",
        )?;
        let lock = DirLock::acquire(dir.path(), "results folder")?;
        let now = std::fs::read_to_string(dir.path().join(LOCK_FILE))?;
        drop(lock);
        assert!(
            now.starts_with(&format!("pid {},", std::process::id())),
            "{now}"
        );
        Ok(())
    }
}
