//! Atomic file writes: a temporary file in the target's directory, then a rename.
//!
//! A results file that is half written (crash, full disk, Ctrl-C) must never look like a valid
//! result; `rename` within one directory replaces the target in a single step on POSIX systems.

use std::io::Write;
use std::path::Path;

use crate::error::{Result, StatsError};

/// Writes `bytes` to `path` atomically.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| StatsError::Io { path, source }
    };
    let file_name = path.file_name().ok_or_else(|| StatsError::Io {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name"),
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(bytes).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if result.is_err() {
        // Best effort: the original error is what the caller needs to see.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
