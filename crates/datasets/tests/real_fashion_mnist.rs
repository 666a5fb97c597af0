//! The real Fashion-MNIST from Debian's `dataset-fashion-mnist`
//! (`/usr/share/datasets/fashion-mnist/`, installed in CI): checksums, sizes, the 90/10 split,
//! balanced classes and the published pixel statistics (mean 0.2860, std 0.3530 over the
//! training set). Skipped with a note where the package is absent.

use std::path::Path;

use eabs_datasets::{load, load_official, DatasetKind, Split, SplitStats};

const DEBIAN_DIR: &str = "/usr/share/datasets/fashion-mnist";

#[test]
fn debian_fashion_mnist() {
    let dir = Path::new(DEBIAN_DIR);
    if !dir.join("train-images-idx3-ubyte.gz").is_file() {
        eprintln!("note: {DEBIAN_DIR} is absent (install dataset-fashion-mnist); skipping");
        return;
    }
    let off = load_official(DatasetKind::FashionMnist, Some(dir), true).unwrap();
    assert_eq!((off.train.len(), off.test.len()), (60_000, 10_000));
    assert_eq!(off.train.class_counts(), vec![6_000; 10]);
    assert_eq!(off.test.class_counts(), vec![1_000; 10]);
    let s = SplitStats::compute(&off.train, "train");
    assert!((s.mean - 0.2860).abs() < 5e-4, "mean {}", s.mean);
    assert!((s.std - 0.3530).abs() < 5e-4, "std {}", s.std);
    let train = load(DatasetKind::FashionMnist, Split::Train, Some(dir), 0).unwrap();
    let val = load(DatasetKind::FashionMnist, Split::Validation, Some(dir), 0).unwrap();
    assert_eq!((train.len(), val.len()), (54_000, 6_000));
    assert_eq!(train.class_names[9], "Ankle boot");
    // The random 10% is close to balanced: every class has 600 +- 100 validation images.
    assert!(
        val.class_counts().iter().all(|&c| (500..=700).contains(&c)),
        "{:?}",
        val.class_counts()
    );
}
