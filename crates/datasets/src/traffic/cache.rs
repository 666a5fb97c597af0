//! The cached form of SuperTraffic-10: `train-images-idx4-ubyte` `(n, 3, 32, 32)`,
//! `train-labels-idx1-ubyte`, the same for `test`, and `manifest.json` (see
//! [`super::BuildManifest`]) holding class names, counts and the sha256 of each file. Loading
//! verifies every file against the manifest.

use std::path::Path;

use crate::dataset::{Dataset, Split};
use crate::error::{Error, Result};
use crate::idx::{expect_rank, parse_idx};
use crate::manifest::verify;
use crate::traffic::build::BuildManifest;

/// Name of the manifest inside a SuperTraffic-10 directory.
pub const MANIFEST_NAME: &str = "manifest.json";

/// File names of a split's images and labels.
pub fn file_names(test: bool) -> (&'static str, &'static str) {
    if test {
        ("test-images-idx4-ubyte", "test-labels-idx1-ubyte")
    } else {
        ("train-images-idx4-ubyte", "train-labels-idx1-ubyte")
    }
}

/// Reads the manifest of the SuperTraffic-10 directory `dir`.
pub fn read_manifest(dir: &Path) -> Result<BuildManifest> {
    let path = dir.join(MANIFEST_NAME);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::malformed(&path, format!("SuperTraffic-10 manifest: {e}")))
}

/// Loads the official train (`test = false`) or test part from `dir`.
pub fn load_part(dir: &Path, test: bool, verify_it: bool) -> Result<Dataset> {
    let manifest = read_manifest(dir)?;
    let (img_name, lbl_name) = file_names(test);
    let read = |name: &str| -> Result<crate::idx::IdxArray> {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let entry = manifest
            .files
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| {
                Error::malformed(dir.join(MANIFEST_NAME), format!("no entry for {name}"))
            })?;
        if verify_it {
            verify(&bytes, entry, &path)?;
        }
        parse_idx(&bytes, &path)
    };
    let images = read(img_name)?;
    let labels = read(lbl_name)?;
    let img_path = dir.join(img_name);
    expect_rank(&images, 4, &img_path)?;
    expect_rank(&labels, 1, &dir.join(lbl_name))?;
    let shape = (images.dims[1], images.dims[2], images.dims[3]);
    if shape != (3, 32, 32) {
        return Err(Error::mismatch(
            &img_path,
            "image shape",
            "(3, 32, 32)",
            format!("{shape:?}"),
        ));
    }
    if labels.dims[0] != images.dims[0] {
        return Err(Error::mismatch(
            dir.join(lbl_name),
            "number of labels",
            images.dims[0],
            labels.dims[0],
        ));
    }
    let split = if test { Split::Test } else { Split::Train };
    Dataset::new(
        "supertraffic-10",
        split,
        images.data,
        labels.data,
        shape,
        manifest.class_names.clone(),
        &dir.join(lbl_name),
    )
}
