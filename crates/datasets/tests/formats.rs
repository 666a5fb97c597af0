//! End-to-end loading of small files written in the real formats: IDX (raw and gzipped) for
//! MNIST and Fashion-MNIST, MAT v5 (plain and miCOMPRESSED) for SVHN, through the public `load`
//! API with the paper's split, and the errors a user gets for bad files.

use std::path::Path;

use candle_core::Device;
use eabs_datasets::idx::{encode_idx, gzip};
use eabs_datasets::mat::write::{mat_file, Values};
use eabs_datasets::{load, load_official, load_with, DatasetKind, Error, LoadOptions, Split};

/// Writes an MNIST-format dataset: `n` images where image i is filled with byte i and has label
/// i mod 10.
fn write_mnist(dir: &Path, prefix: &str, n: usize, gz: bool) {
    let images: Vec<u8> = (0..n)
        .flat_map(|i| std::iter::repeat_n(i as u8, 28 * 28))
        .collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let files = [
        (
            format!("{prefix}-images-idx3-ubyte"),
            encode_idx(&[n, 28, 28], &images).unwrap(),
        ),
        (
            format!("{prefix}-labels-idx1-ubyte"),
            encode_idx(&[n], &labels).unwrap(),
        ),
    ];
    for (name, bytes) in files {
        if gz {
            std::fs::write(dir.join(format!("{name}.gz")), gzip(&bytes)).unwrap();
        } else {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

fn no_verify(dir: &Path, seed: u64) -> LoadOptions<'_> {
    LoadOptions {
        data_dir: Some(dir),
        seed,
        verify: false,
    }
}

#[test]
fn mnist_idx_raw_and_gz_with_validation_split() {
    for gz in [false, true] {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("mnist");
        std::fs::create_dir_all(&dir).unwrap();
        write_mnist(&dir, "train", 50, gz);
        write_mnist(&dir, "t10k", 20, !gz);
        let opts = no_verify(root.path(), 9);
        let train = load_with(DatasetKind::Mnist, Split::Train, &opts).unwrap();
        let val = load_with(DatasetKind::Mnist, Split::Validation, &opts).unwrap();
        let test = load_with(DatasetKind::Mnist, Split::Test, &opts).unwrap();
        assert_eq!((train.len(), val.len(), test.len()), (45, 5, 20));
        assert_eq!(train.image_shape(), (1, 28, 28));
        assert_eq!(test.class_counts(), vec![2; 10]);
        // Each image still carries its own label (image i is filled with i, label i mod 10).
        for d in [&train, &val, &test] {
            for k in 0..d.len() {
                assert_eq!(d.image(k)[0] as usize % 10, d.labels[k] as usize);
            }
        }
        let x = train.images_tensor(&[0, 1], &Device::Cpu).unwrap();
        assert_eq!(x.dims(), &[2, 1, 28, 28]);
        // Validation is disjoint from train.
        let firsts: std::collections::BTreeSet<u8> =
            train.images.chunks(784).map(|c| c[0]).collect();
        assert!(val.images.chunks(784).all(|c| !firsts.contains(&c[0])));
    }
}

#[test]
fn checksum_verification_rejects_foreign_files() {
    let root = tempfile::tempdir().unwrap();
    write_mnist(root.path(), "t10k", 10, true);
    let e = load(DatasetKind::FashionMnist, Split::Test, Some(root.path()), 0).unwrap_err();
    match &e {
        Error::Length {
            path,
            expected,
            found,
            ..
        } => {
            assert!(path.ends_with("t10k-images-idx3-ubyte.gz"));
            assert_eq!((*expected, *found), (7_840_016, 7_856));
        }
        other => panic!("expected a size mismatch, got {other}"),
    }
}

#[test]
fn label_count_and_range_errors() {
    let root = tempfile::tempdir().unwrap();
    let d = root.path();
    write_mnist(d, "train", 10, false);
    write_mnist(d, "t10k", 10, false);
    std::fs::write(
        d.join("t10k-labels-idx1-ubyte"),
        encode_idx(&[9], &[0; 9]).unwrap(),
    )
    .unwrap();
    let e = load_with(DatasetKind::Mnist, Split::Test, &no_verify(d, 0))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("t10k-labels-idx1-ubyte") && e.contains("expected 10, found 9"),
        "{e}"
    );
    std::fs::write(
        d.join("t10k-labels-idx1-ubyte"),
        encode_idx(&[10], &[10; 10]).unwrap(),
    )
    .unwrap();
    let e = load_with(DatasetKind::Mnist, Split::Test, &no_verify(d, 0)).unwrap_err();
    assert!(matches!(e, Error::LabelOutOfRange { index: 0, .. }), "{e}");
    let mut trunc = encode_idx(&[10, 28, 28], &[0; 7840]).unwrap();
    trunc.truncate(5000);
    std::fs::write(d.join("train-images-idx3-ubyte"), gzip(&trunc)).unwrap();
    let e = load_with(DatasetKind::Mnist, Split::Train, &no_verify(d, 0))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train-images-idx3-ubyte") && e.contains("expected 7840 bytes, found 4984"),
        "{e}"
    );
}

#[test]
fn missing_dataset_says_where_it_looked_and_what_to_do() {
    let root = tempfile::tempdir().unwrap();
    let e = load(DatasetKind::Svhn, Split::Test, Some(root.path()), 0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&root.path().join("svhn").display().to_string()),
        "{e}"
    );
    assert!(
        e.contains("cargo xtask fetch svhn") && e.contains("test_32x32.mat"),
        "{e}"
    );
    let e = load(
        DatasetKind::SuperTraffic10,
        Split::Test,
        Some(root.path()),
        0,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("build-supertraffic"), "{e}");
}

fn svhn_file(n: usize, compressed: bool, y_as_u8: bool) -> Vec<u8> {
    // Pixel (r, c, ch) of image k is (r + c + ch + k) mod 256, column-major.
    let mut x = vec![0u8; 3072 * n];
    for k in 0..n {
        for ch in 0..3 {
            for c in 0..32 {
                for r in 0..32 {
                    x[r + 32 * c + 1024 * ch + 3072 * k] = ((r + c * 3 + ch + k) % 256) as u8;
                }
            }
        }
    }
    let y: Vec<u8> = (0..n).map(|k| (k % 10 + 1) as u8).collect();
    let yf: Vec<f64> = y.iter().map(|&v| f64::from(v)).collect();
    let yv = if y_as_u8 {
        Values::F64AsU8(&y)
    } else {
        Values::F64(&yf)
    };
    mat_file(
        &[("X", &[32, 32, 3, n], Values::U8(&x)), ("y", &[n, 1], yv)],
        compressed,
    )
}

#[test]
fn svhn_mat_plain_and_compressed() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("svhn");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("train_32x32.mat"), svhn_file(30, true, true)).unwrap();
    std::fs::write(dir.join("test_32x32.mat"), svhn_file(12, false, false)).unwrap();
    let off = load_official(DatasetKind::Svhn, Some(root.path()), false).unwrap();
    assert_eq!((off.train.len(), off.test.len()), (30, 12));
    assert_eq!(off.test.labels[..10], [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]);
    // Image 2, channel 1, row 5, column 4 = 5 + 12 + 1 + 2.
    assert_eq!(off.test.image(2)[1024 + 5 * 32 + 4], 20);
    let val = load_with(
        DatasetKind::Svhn,
        Split::Validation,
        &no_verify(root.path(), 1),
    )
    .unwrap();
    assert_eq!(val.len(), 3);
    // With verification on, the fixture is not the published file.
    let e = load(DatasetKind::Svhn, Split::Test, Some(root.path()), 0).unwrap_err();
    assert!(
        matches!(&e, Error::Checksum { algorithm: "md5", expected, .. } if expected == "eb5a983be6a315427106f1b164d9cef3"),
        "{e}"
    );
}

#[test]
fn search_prefers_the_named_subdirectory_and_accepts_mirror_spellings() {
    let root = tempfile::tempdir().unwrap();
    let sub = root.path().join("mnist");
    std::fs::create_dir_all(&sub).unwrap();
    // D/ holds 30 test images, D/mnist/ holds 20 under the `t10k-images.idx3-ubyte` spelling.
    write_mnist(root.path(), "t10k", 30, false);
    write_mnist(&sub, "t10k", 20, true);
    for name in ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
        let dotted = name.replacen("-idx", ".idx", 1);
        std::fs::rename(
            sub.join(format!("{name}.gz")),
            sub.join(format!("{dotted}.gz")),
        )
        .unwrap();
    }
    let dir = eabs_datasets::find_dataset_dir(DatasetKind::Mnist, Some(root.path())).unwrap();
    assert_eq!(dir, sub);
    let test = load_with(DatasetKind::Mnist, Split::Test, &no_verify(root.path(), 0)).unwrap();
    assert_eq!(test.len(), 20);
    // The train files are missing: the error names the directory and the expected names.
    let e = load_with(DatasetKind::Mnist, Split::Train, &no_verify(root.path(), 0))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train-images-idx3-ubyte.gz") && e.contains(&sub.display().to_string()),
        "{e}"
    );
}

#[test]
fn a_gzip_bomb_stops_at_the_manifests_size() {
    // 64 MB of zeros compress to ~64 KB; the manifest expects 7,840,016 bytes for the
    // Fashion-MNIST test images, so decompression must stop just past that, not at 64 MB.
    let root = tempfile::tempdir().unwrap();
    write_mnist(root.path(), "t10k", 10, true);
    let zeros = vec![0u8; 64 << 20];
    std::fs::write(root.path().join("t10k-images-idx3-ubyte.gz"), gzip(&zeros)).unwrap();
    let e = load(DatasetKind::FashionMnist, Split::Test, Some(root.path()), 0).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("t10k-images-idx3-ubyte.gz")
            && msg.contains("decompresses to more than 7840016 bytes"),
        "{msg}"
    );
    // Without a manifest size the general cap applies; a small explicit limit shows it works.
    let path = root.path().join("t10k-images-idx3-ubyte.gz");
    let e = eabs_datasets::idx::read_maybe_gz_limited(&path, 1000).unwrap_err();
    assert!(e.to_string().contains("more than 1000 bytes"), "{e}");
}

#[test]
fn a_directory_in_a_files_place_is_named_as_such() {
    let root = tempfile::tempdir().unwrap();
    write_mnist(root.path(), "train", 10, false);
    std::fs::create_dir(root.path().join("t10k-images-idx3-ubyte.gz")).unwrap();
    write_mnist(root.path(), "t10k", 10, false);
    std::fs::remove_file(root.path().join("t10k-images-idx3-ubyte")).unwrap();
    let e = load_with(DatasetKind::Mnist, Split::Test, &no_verify(root.path(), 0))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("t10k-images-idx3-ubyte.gz") && e.contains("is a directory"),
        "{e}"
    );
}
