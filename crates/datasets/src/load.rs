//! Finding a dataset's files and loading them with the paper's split.
//!
//! Search order (the first directory that holds any of the dataset's files wins):
//! 1. the explicit `data_dir` (only it, when given),
//! 2. `$EABS_DATA_DIR` (only it, when set),
//! 3. the system locations of [`system_dirs`] (Debian's `dataset-fashion-mnist` installs
//!    `/usr/share/datasets/fashion-mnist/`),
//! 4. `./data` (where `cargo xtask fetch` puts downloads).
//!
//! Inside a directory `D` the files may sit in `D/<name>/` or directly in `D/`.

use std::path::{Path, PathBuf};

use crate::dataset::{check_labels, Dataset, Split};
use crate::error::{Error, Result};
use crate::idx::{expect_rank, parse_idx, read_maybe_gz_limited};
use crate::manifest::{verify, Manifest};
use crate::svhn::parse_svhn;
use crate::traffic::cache;
use crate::DatasetKind;

/// The environment variable naming a data directory.
pub const DATA_DIR_ENV: &str = "EABS_DATA_DIR";

/// How to load.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions<'a> {
    /// Explicit data directory; `None` searches the default locations.
    pub data_dir: Option<&'a Path>,
    /// Seed of the validation split.
    pub seed: u64,
    /// Verify checksums of the decompressed files (on by default in [`load`]; switching it off
    /// is for modified copies of a dataset).
    pub verify: bool,
}

/// The official train and test sets of a dataset, before the validation split.
#[derive(Debug, Clone)]
pub struct Official {
    /// The whole official training set (split [`Split::Train`]).
    pub train: Dataset,
    /// The official test set.
    pub test: Dataset,
    /// Where the files were found.
    pub dir: PathBuf,
}

/// Known system-wide install locations for `kind` (Debian packages).
pub fn system_dirs(kind: DatasetKind) -> Vec<PathBuf> {
    vec![PathBuf::from("/usr/share/datasets").join(kind.name())]
}

/// File names accepted for an IDX file `base` (e.g. `train-images-idx3-ubyte`): official names
/// with or without `.gz`, and the `train-images.idx3-ubyte` spelling of some mirrors.
fn idx_names(base: &str) -> Vec<String> {
    let dotted = base.replacen("-idx", ".idx", 1);
    vec![
        base.to_string(),
        format!("{base}.gz"),
        dotted.clone(),
        format!("{dotted}.gz"),
    ]
}

/// The file names whose presence marks a directory as holding `kind`.
fn marker_names(kind: DatasetKind) -> Vec<String> {
    match kind {
        DatasetKind::Mnist | DatasetKind::FashionMnist => {
            ["train-images-idx3-ubyte", "t10k-images-idx3-ubyte"]
                .iter()
                .flat_map(|b| idx_names(b))
                .collect()
        }
        DatasetKind::Svhn => vec!["train_32x32.mat".into(), "test_32x32.mat".into()],
        DatasetKind::SuperTraffic10 => vec![cache::MANIFEST_NAME.into()],
    }
}

/// The directories searched for `kind`, in order, and where the user should put the files when
/// none holds them.
fn candidate_dirs(kind: DatasetKind, data_dir: Option<&Path>) -> (Vec<PathBuf>, PathBuf) {
    let user_root = data_dir.map(Path::to_path_buf).or_else(|| {
        std::env::var_os(DATA_DIR_ENV)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
    });
    match user_root {
        Some(r) => (vec![r.join(kind.name()), r.clone()], r.join(kind.name())),
        None => {
            // System directories are dataset-specific already; ./data holds one folder per dataset.
            let mut dirs = system_dirs(kind);
            dirs.extend([
                PathBuf::from("data").join(kind.name()),
                PathBuf::from("data"),
            ]);
            (dirs, PathBuf::from("data").join(kind.name()))
        }
    }
}

fn not_found_hint(kind: DatasetKind, target: &Path) -> String {
    match kind {
        DatasetKind::SuperTraffic10 => format!(
            "build it with `cargo xtask data build-supertraffic --gtsrb DIR --dfg DIR --bts DIR --out {}` (any subset of the three sources)",
            target.display()
        ),
        _ => {
            let urls: Vec<String> = Manifest::builtin(kind)
                .map(|m| m.files.iter().filter_map(|f| f.urls.first().cloned()).collect())
                .unwrap_or_default();
            format!(
                "run `cargo xtask fetch {}`, or download {} by hand into {}",
                kind.name(),
                urls.join(", "),
                target.display()
            )
        }
    }
}

/// The directory holding `kind`'s files (see the module docs for the search order).
pub fn find_dataset_dir(kind: DatasetKind, data_dir: Option<&Path>) -> Result<PathBuf> {
    let (candidates, target) = candidate_dirs(kind, data_dir);
    let markers = marker_names(kind);
    for dir in &candidates {
        if markers.iter().any(|m| dir.join(m).is_file()) {
            return Ok(dir.clone());
        }
    }
    let searched: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    Err(Error::NotFound {
        dataset: kind.name().into(),
        searched: searched.join(", "),
        hint: not_found_hint(kind, &target),
    })
}

/// Finds the first existing spelling of `names` in `dir`. Something other than a file under
/// one of the names (a directory, say) is reported as what it is, not as a missing file.
fn find_file(dir: &Path, names: &[String], dataset: &str) -> Result<PathBuf> {
    if let Some(p) = names.iter().map(|n| dir.join(n)).find(|p| p.is_file()) {
        return Ok(p);
    }
    if let Some(p) = names.iter().map(|n| dir.join(n)).find(|p| p.exists()) {
        return Err(Error::malformed(
            &p,
            "is a directory (or another non-file), where the dataset file should be",
        ));
    }
    names
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::NotFound {
            dataset: dataset.into(),
            searched: dir.display().to_string(),
            hint: format!("missing file: expected one of {}", names.join(", ")),
        })
}

/// Reads one IDX file of an MNIST-format dataset, verifying its decompressed bytes.
fn read_verified_idx(
    dir: &Path,
    base: &str,
    kind: DatasetKind,
    verify_it: bool,
) -> Result<(PathBuf, crate::idx::IdxArray)> {
    let path = find_file(dir, &idx_names(base), kind.name())?;
    let entry = Manifest::builtin(kind)
        .as_ref()
        .and_then(|m| m.file(base).cloned());
    // Decompression stops at the manifest's size (a gzip bomb fails after that many bytes, not
    // after filling the memory); without a size, at the general cap.
    // With verification off (a modified copy), only the general cap applies.
    let limit = entry
        .as_ref()
        .filter(|_| verify_it)
        .and_then(|e| e.size)
        .unwrap_or(crate::idx::MAX_DECOMPRESSED);
    let bytes = read_maybe_gz_limited(&path, limit)?;
    if verify_it {
        if let Some(entry) = entry {
            verify(&bytes, &entry, &path)?;
        }
    }
    Ok((path.clone(), parse_idx(&bytes, &path)?))
}

/// Loads one official part (`train` or `t10k`) of MNIST or Fashion-MNIST from `dir`.
pub fn load_mnist_part(
    kind: DatasetKind,
    dir: &Path,
    test: bool,
    verify_it: bool,
) -> Result<Dataset> {
    let prefix = if test { "t10k" } else { "train" };
    let (img_path, images) =
        read_verified_idx(dir, &format!("{prefix}-images-idx3-ubyte"), kind, verify_it)?;
    let (lbl_path, labels) =
        read_verified_idx(dir, &format!("{prefix}-labels-idx1-ubyte"), kind, verify_it)?;
    expect_rank(&images, 3, &img_path)?;
    expect_rank(&labels, 1, &lbl_path)?;
    let (n, h, w) = (images.dims[0], images.dims[1], images.dims[2]);
    if (h, w) != (28, 28) {
        return Err(Error::mismatch(
            &img_path,
            "image size",
            "28 x 28",
            format!("{h} x {w}"),
        ));
    }
    if labels.dims[0] != n {
        return Err(Error::mismatch(
            &lbl_path,
            format!("number of labels (images in {})", img_path.display()),
            n,
            labels.dims[0],
        ));
    }
    check_labels(&labels.data, 10, &lbl_path)?;
    let split = if test { Split::Test } else { Split::Train };
    let names = kind.class_names().unwrap_or_default();
    Dataset::new(
        kind.name(),
        split,
        images.data,
        labels.data,
        (1, h, w),
        names,
        &img_path,
    )
}

/// Loads one official part of SVHN from `dir`.
pub fn load_svhn_part(dir: &Path, test: bool, verify_it: bool) -> Result<Dataset> {
    let name = if test {
        "test_32x32.mat"
    } else {
        "train_32x32.mat"
    };
    let path = find_file(dir, &[name.to_string()], "svhn")?;
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    if verify_it {
        if let Some(entry) = Manifest::builtin(DatasetKind::Svhn)
            .as_ref()
            .and_then(|m| m.file(name).cloned())
        {
            verify(&bytes, &entry, &path)?;
        }
    }
    let (images, labels) = parse_svhn(&bytes, &path)?;
    let split = if test { Split::Test } else { Split::Train };
    let names = DatasetKind::Svhn.class_names().unwrap_or_default();
    Dataset::new("svhn", split, images, labels, (3, 32, 32), names, &path)
}

fn load_part(kind: DatasetKind, dir: &Path, test: bool, verify_it: bool) -> Result<Dataset> {
    match kind {
        DatasetKind::Mnist | DatasetKind::FashionMnist => {
            load_mnist_part(kind, dir, test, verify_it)
        }
        DatasetKind::Svhn => load_svhn_part(dir, test, verify_it),
        DatasetKind::SuperTraffic10 => cache::load_part(dir, test, verify_it),
    }
}

/// Loads the official train and test sets (no validation split).
pub fn load_official(
    kind: DatasetKind,
    data_dir: Option<&Path>,
    verify_it: bool,
) -> Result<Official> {
    let dir = find_dataset_dir(kind, data_dir)?;
    let train = load_part(kind, &dir, false, verify_it)?;
    let test = load_part(kind, &dir, true, verify_it)?;
    Ok(Official { train, test, dir })
}

/// Loads one split with explicit options (see [`load`]).
pub fn load_with(kind: DatasetKind, split: Split, opts: &LoadOptions<'_>) -> Result<Dataset> {
    let dir = find_dataset_dir(kind, opts.data_dir)?;
    match split {
        Split::Test => load_part(kind, &dir, true, opts.verify),
        Split::Train | Split::Validation => {
            let (train, val) =
                load_part(kind, &dir, false, opts.verify)?.split_validation(opts.seed);
            Ok(if split == Split::Train { train } else { val })
        }
    }
}

/// Loads one split of `kind` with checksum verification: `Test` is the official test set;
/// `Validation` is a random 10% of the official training set drawn with `seed`, `Train` the
/// other 90% (E-ABS, Section 4.1). See the module docs for where files are looked for.
pub fn load(
    kind: DatasetKind,
    split: Split,
    data_dir: Option<&Path>,
    seed: u64,
) -> Result<Dataset> {
    load_with(
        kind,
        split,
        &LoadOptions {
            data_dir,
            seed,
            verify: true,
        },
    )
}
