//! Checksum manifests of the downloadable datasets, and verification against them.
//!
//! The manifests are the JSON files checked in under `datasets/` at the repository root
//! (`crates/datasets/manifests` is a symbolic link to it, so the published crate embeds the same
//! bytes). Each lists, per file, the digest of the DECOMPRESSED bytes, which is what a loader can
//! check whatever gzip produced the archive: Debian's `dataset-fashion-mnist` re-gzips the
//! official files, so only the decompressed digests agree between the two. Archive digests are
//! kept as well, for checking a fresh download before it is unpacked.

use std::path::Path;

use md5::Md5;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::DatasetKind;

/// One file of a dataset, as listed in its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The decompressed file name, e.g. `train-images-idx3-ubyte` or `train_32x32.mat`.
    pub name: String,
    /// Size in bytes of the decompressed file, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// sha256 (hex) of the decompressed file, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// md5 (hex) of the decompressed file, where known (some sources publish only md5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    /// The name of the file as downloaded, when it is an archive (e.g. `....gz`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
    /// md5 (hex) of the official archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_md5: Option<String>,
    /// sha256 (hex) of the official archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_sha256: Option<String>,
    /// Download locations, tried in order.
    #[serde(default)]
    pub urls: Vec<String>,
}

impl FileEntry {
    /// The name the file has on disk after a download (the archive name when there is one).
    pub fn download_name(&self) -> &str {
        self.archive.as_deref().unwrap_or(&self.name)
    }
}

/// The manifest of one dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The dataset name, as in [`DatasetKind::name`].
    pub dataset: String,
    /// Where the dataset is published.
    pub homepage: String,
    /// How the digests were obtained.
    pub notes: String,
    /// The files.
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// Parses a manifest; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self> {
        serde_json::from_str(text)
            .map_err(|e| Error::malformed(origin, format!("manifest JSON: {e}")))
    }

    /// The manifest compiled into this crate for `kind`; `None` for SuperTraffic-10, which is
    /// built locally and carries its own manifest.
    pub fn builtin(kind: DatasetKind) -> Option<Self> {
        let (text, name) = match kind {
            DatasetKind::Mnist => (include_str!("../manifests/mnist.json"), "mnist.json"),
            DatasetKind::FashionMnist => (
                include_str!("../manifests/fashion-mnist.json"),
                "fashion-mnist.json",
            ),
            DatasetKind::Svhn => (include_str!("../manifests/svhn.json"), "svhn.json"),
            DatasetKind::SuperTraffic10 => return None,
        };
        // The embedded manifests are parsed in this crate's tests, so this cannot fail at run time.
        Manifest::parse(text, Path::new(name)).ok()
    }

    /// The entry named `name`.
    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Incremental sha256, for digests over several pieces (a checkpoint's tensors, a dataset's
/// images and labels) without concatenating them. The project's one sha256 lives here.
#[derive(Debug, Clone, Default)]
pub struct Sha256Stream(Sha256);

impl Sha256Stream {
    /// An empty digest.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The hex digest of everything fed.
    pub fn finish_hex(self) -> String {
        hex::encode(self.0.finalize())
    }
}

/// Hex md5 of `bytes`.
pub fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(Md5::digest(bytes))
}

/// Checks decompressed `bytes` (read from `path`) against `entry`: size, then sha256 when the
/// manifest has one, else md5. An entry with neither digest is an error, so a manifest cannot
/// silently switch verification off.
pub fn verify(bytes: &[u8], entry: &FileEntry, path: &Path) -> Result<()> {
    if let Some(size) = entry.size {
        if bytes.len() as u64 != size {
            return Err(Error::length(
                path,
                "decompressed file size",
                size,
                bytes.len() as u64,
            ));
        }
    }
    if let Some(expected) = &entry.sha256 {
        let found = sha256_hex(bytes);
        if !found.eq_ignore_ascii_case(expected) {
            return Err(Error::Checksum {
                path: path.to_path_buf(),
                algorithm: "sha256",
                expected: expected.clone(),
                found,
            });
        }
        return Ok(());
    }
    if let Some(expected) = &entry.md5 {
        let found = md5_hex(bytes);
        if !found.eq_ignore_ascii_case(expected) {
            return Err(Error::Checksum {
                path: path.to_path_buf(),
                algorithm: "md5",
                expected: expected.clone(),
                found,
            });
        }
        return Ok(());
    }
    Err(Error::malformed(
        path,
        format!("manifest entry `{}` has neither sha256 nor md5", entry.name),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_manifests_parse_and_are_complete() {
        for kind in [
            DatasetKind::Mnist,
            DatasetKind::FashionMnist,
            DatasetKind::Svhn,
        ] {
            let m = Manifest::builtin(kind).expect("embedded manifest parses");
            assert_eq!(m.dataset, kind.name());
            for f in &m.files {
                assert!(
                    f.sha256.is_some() || f.md5.is_some(),
                    "{}: {} has no digest",
                    m.dataset,
                    f.name
                );
                assert!(!f.urls.is_empty(), "{}: {} has no url", m.dataset, f.name);
                for d in [&f.sha256, &f.md5, &f.archive_md5, &f.archive_sha256]
                    .into_iter()
                    .flatten()
                {
                    assert!(hex::decode(d).is_ok(), "{d} is not hex");
                }
            }
        }
        assert!(Manifest::builtin(DatasetKind::SuperTraffic10).is_none());
    }

    #[test]
    fn verify_reports_expected_and_found() {
        let entry = FileEntry {
            name: "x".into(),
            size: Some(3),
            sha256: Some(sha256_hex(b"abc")),
            md5: None,
            archive: None,
            archive_md5: None,
            archive_sha256: None,
            urls: vec![],
        };
        let p = Path::new("dir/x");
        verify(b"abc", &entry, p).unwrap();
        let e = verify(b"abd", &entry, p).unwrap_err().to_string();
        assert!(
            e.contains("dir/x") && e.contains("sha256") && e.contains(&sha256_hex(b"abd")),
            "{e}"
        );
        assert!(verify(b"abcd", &entry, p)
            .unwrap_err()
            .to_string()
            .contains("expected 3 bytes, found 4"));
        let md5_only = FileEntry {
            sha256: None,
            md5: Some(md5_hex(b"abc")),
            ..entry.clone()
        };
        verify(b"abc", &md5_only, p).unwrap();
        assert!(matches!(
            verify(b"abx", &md5_only, p),
            Err(Error::Checksum {
                algorithm: "md5",
                ..
            })
        ));
        let none = FileEntry {
            sha256: None,
            md5: None,
            ..entry
        };
        assert!(verify(b"abc", &none, p).is_err());
    }
}
