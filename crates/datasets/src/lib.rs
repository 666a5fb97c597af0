//! Checksum-verified loaders for the four datasets of E-ABS (Ju & Wagner, AISec 2020, Section
//! 4.1): MNIST, Fashion-MNIST, SVHN (cropped digits) and SuperTraffic-10, with the paper's
//! protocol: the official train/test split, a seeded random 10% of train as validation, and
//! additive Gaussian noise augmentation clipped to [0, 1] (std 0.2 for MNIST and Fashion-MNIST,
//! 0.01 for SVHN and SuperTraffic-10; Section 4.3).
//!
//! Parsers return bytes and shapes; tensors appear only at the edge
//! ([`Dataset::images_tensor`], [`Dataset::labels_tensor`]). The library has no network code:
//! downloads live in the workspace's `xtask fetch`.
//!
//! ```no_run
//! use eabs_datasets::{load, DatasetKind, Split};
//! let train = load(DatasetKind::FashionMnist, Split::Train, None, 0)?;
//! assert_eq!(train.len(), 54_000);
//! let batch = &train.batches(512, 0, 0)[0];
//! let x = train.images_tensor(batch, &candle_core::Device::Cpu)?; // (512, 1, 28, 28) in [0, 1]
//! let x = eabs_datasets::add_gaussian_noise(&x, DatasetKind::FashionMnist.noise_std(), 1)?;
//! # Ok::<(), eabs_datasets::Error>(())
//! ```
//!
//! # Where the files are found
//! In order: the `data_dir` argument, else `$EABS_DATA_DIR`, else the system locations
//! ([`system_dirs`], e.g. `/usr/share/datasets/fashion-mnist` from Debian's
//! `dataset-fashion-mnist`), else `./data/<name>`. Inside a directory `D`, files are looked for in
//! `D/<name>/` and then `D/`.
#![warn(missing_docs)]

pub mod dataset;
pub mod error;
pub mod idx;
pub mod load;
pub mod manifest;
pub mod mat;
pub mod stats;
pub mod svhn;
pub mod traffic;

pub use dataset::{add_gaussian_noise, Dataset, Split};
pub use error::{Error, Result};
pub use load::{
    find_dataset_dir, load, load_official, load_with, system_dirs, LoadOptions, Official,
};
pub use manifest::Manifest;
pub use stats::{ClassCount, SplitStats};

use serde::{Deserialize, Serialize};

/// The four datasets of the paper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DatasetKind {
    /// MNIST handwritten digits, 28x28 grey.
    Mnist,
    /// Fashion-MNIST (Xiao et al. 2017), 28x28 grey.
    FashionMnist,
    /// SVHN cropped digits (Netzer et al. 2011), 32x32 RGB.
    Svhn,
    /// SuperTraffic-10 (E-ABS, Section 4.1): GTSRB + DFG + BelgiumTS, 32x32 RGB, built locally by
    /// [`traffic::build()`].
    SuperTraffic10,
}

/// Fashion-MNIST's class names, by label (zalandoresearch/fashion-mnist README).
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

impl DatasetKind {
    /// All kinds.
    pub const ALL: [DatasetKind; 4] = [
        DatasetKind::Mnist,
        DatasetKind::FashionMnist,
        DatasetKind::Svhn,
        DatasetKind::SuperTraffic10,
    ];

    /// Canonical name, also the directory name under a data directory.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Svhn => "svhn",
            DatasetKind::SuperTraffic10 => "supertraffic-10",
        }
    }

    /// Standard deviation of the training noise (E-ABS, Section 4.3).
    pub fn noise_std(self) -> f64 {
        match self {
            DatasetKind::Mnist | DatasetKind::FashionMnist => 0.2,
            DatasetKind::Svhn | DatasetKind::SuperTraffic10 => 0.01,
        }
    }

    /// The L_inf radius the paper evaluates at (Tables 1-4; also adversarial training's, Section
    /// 4.3): 0.3 for MNIST, 0.1 for Fashion-MNIST, 8/255 for SVHN and SuperTraffic-10.
    pub fn linf_epsilon(self) -> f64 {
        match self {
            DatasetKind::Mnist => 0.3,
            DatasetKind::FashionMnist => 0.1,
            DatasetKind::Svhn | DatasetKind::SuperTraffic10 => 8.0 / 255.0,
        }
    }

    /// The L_2 radius the paper evaluates at (Tables 1-4): 1.5 for every dataset.
    pub fn l2_epsilon(self) -> f64 {
        1.5
    }

    /// PGD's random starts in the paper's evaluation (Section 4.2; Appendix B.2, Table 7): 5 for
    /// MNIST and Fashion-MNIST, 20 for SVHN and SuperTraffic-10.
    pub fn pgd_random_starts(self) -> usize {
        match self {
            DatasetKind::Mnist | DatasetKind::FashionMnist => 5,
            DatasetKind::Svhn | DatasetKind::SuperTraffic10 => 20,
        }
    }

    /// `(channels, height, width)`.
    pub fn image_shape(self) -> (usize, usize, usize) {
        match self {
            DatasetKind::Mnist | DatasetKind::FashionMnist => (1, 28, 28),
            DatasetKind::Svhn | DatasetKind::SuperTraffic10 => (3, 32, 32),
        }
    }

    /// Number of classes (10 for all four).
    pub fn n_classes(self) -> usize {
        10
    }

    /// Class names, except for SuperTraffic-10 whose names come from its build manifest.
    pub fn class_names(self) -> Option<Vec<String>> {
        match self {
            DatasetKind::Mnist | DatasetKind::Svhn => {
                Some((0..10).map(|d| d.to_string()).collect())
            }
            DatasetKind::FashionMnist => Some(
                FASHION_MNIST_CLASSES
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            ),
            DatasetKind::SuperTraffic10 => None,
        }
    }
}

impl std::fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DatasetKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let norm: String = s
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        match norm.as_str() {
            "mnist" => Ok(DatasetKind::Mnist),
            "fashionmnist" | "fmnist" => Ok(DatasetKind::FashionMnist),
            "svhn" => Ok(DatasetKind::Svhn),
            "supertraffic10" | "supertraffic" | "st10" => Ok(DatasetKind::SuperTraffic10),
            _ => Err(Error::InvalidArgument {
                name: "dataset".into(),
                detail: format!(
                    "expected one of mnist, fashion-mnist, svhn, supertraffic-10; found `{s}`"
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_describe_themselves() {
        for k in DatasetKind::ALL {
            assert_eq!(k.name().parse::<DatasetKind>().unwrap(), k);
        }
        assert_eq!(
            "Fashion_MNIST".parse::<DatasetKind>().unwrap(),
            DatasetKind::FashionMnist
        );
        assert_eq!(
            "SuperTraffic10".parse::<DatasetKind>().unwrap(),
            DatasetKind::SuperTraffic10
        );
        assert!("cifar10"
            .parse::<DatasetKind>()
            .unwrap_err()
            .to_string()
            .contains("cifar10"));
        assert_eq!(DatasetKind::Mnist.noise_std(), 0.2);
        assert_eq!(DatasetKind::Svhn.noise_std(), 0.01);
        assert_eq!(DatasetKind::SuperTraffic10.image_shape(), (3, 32, 32));
        assert_eq!("val".parse::<Split>().unwrap(), Split::Validation);
    }
}
