//! The in-memory dataset: u8 images in NCHW order plus labels, converted to Candle tensors only at
//! the edge (as burn-dataset and candle's `mnist::load_dir` keep parsing free of tensors).
//!
//! Also the paper's protocol pieces that act on a loaded dataset (E-ABS, Section 4.1): the seeded
//! 10% validation split, seeded shuffled batching and additive Gaussian noise clipped to [0, 1].
//!
//! All randomness goes through [`ChaCha8Rng`] and a hand-written Fisher-Yates shuffle over
//! `next_u64`, because ChaCha's stream is fixed by its specification while `rand`'s
//! `SliceRandom::shuffle` and `random_range` may change their algorithm between releases: a
//! published split or batch order must stay the same when dependencies are updated.

use candle_core::{DType, Device, Tensor};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which part of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Split {
    /// The official training set minus the validation part (90% of it).
    Train,
    /// A seeded random 10% of the official training set (E-ABS, Section 4.1).
    Validation,
    /// The official test set.
    Test,
}

impl Split {
    /// Lowercase name: `train`, `validation`, `test`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }

    /// All splits, in the order above.
    pub const ALL: [Split; 3] = [Split::Train, Split::Validation, Split::Test];
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Split {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "train" | "training" => Ok(Split::Train),
            "validation" | "val" | "valid" => Ok(Split::Validation),
            "test" | "testing" => Ok(Split::Test),
            _ => Err(Error::InvalidArgument {
                name: "split".into(),
                detail: format!("expected one of train, validation, test; found `{s}`"),
            }),
        }
    }
}

/// Images (u8, NCHW, row-major) with their labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// Dataset name, e.g. `fashion-mnist`.
    pub name: String,
    /// Which split this is.
    pub split: Split,
    /// Pixel values, `len() * channels * height * width` bytes, image-major then NCHW.
    pub images: Vec<u8>,
    /// One label per image, each `< class_names.len()`.
    pub labels: Vec<u8>,
    /// Channels per image (1 or 3).
    pub channels: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Class names; label `i` means `class_names[i]`.
    pub class_names: Vec<String>,
}

impl Dataset {
    /// Builds a dataset after checking that the parts fit together (byte count, label count,
    /// label range); `origin` names the data in errors.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: impl Into<String>,
        split: Split,
        images: Vec<u8>,
        labels: Vec<u8>,
        shape: (usize, usize, usize),
        class_names: Vec<String>,
        origin: &std::path::Path,
    ) -> Result<Self> {
        let (c, h, w) = shape;
        let per = c * h * w;
        if per == 0 {
            return Err(Error::mismatch(
                origin,
                "image shape",
                "non-zero (c, h, w)",
                format!("{shape:?}"),
            ));
        }
        if images.len() != labels.len() * per {
            return Err(Error::mismatch(
                origin,
                format!("image bytes for {} labels of shape {shape:?}", labels.len()),
                labels.len() * per,
                images.len(),
            ));
        }
        check_labels(&labels, class_names.len(), origin)?;
        Ok(Dataset {
            name: name.into(),
            split,
            images,
            labels,
            channels: c,
            height: h,
            width: w,
            class_names,
        })
    }

    /// sha256 of the content (shape, pixels, labels): identifies the data an evaluation saw,
    /// whatever file or format it was read from, so that results can be bound to it.
    pub fn content_sha256(&self) -> String {
        let mut h = crate::manifest::Sha256Stream::new();
        for d in [self.channels, self.height, self.width, self.len()] {
            h.update(&(d as u64).to_le_bytes());
        }
        h.update(&self.images);
        h.update(&self.labels);
        h.finish_hex()
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of classes.
    pub fn n_classes(&self) -> usize {
        self.class_names.len()
    }

    /// `(channels, height, width)`.
    pub fn image_shape(&self) -> (usize, usize, usize) {
        (self.channels, self.height, self.width)
    }

    /// Bytes per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The bytes of image `i` (CHW).
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// Images `idx` as an f32 tensor `(idx.len(), c, h, w)` with values `byte / 255` in [0, 1].
    pub fn images_tensor(&self, idx: &[usize], device: &Device) -> candle_core::Result<Tensor> {
        let n = self.image_len();
        let mut out = Vec::with_capacity(idx.len() * n);
        for &i in idx {
            if i >= self.len() {
                candle_core::bail!(
                    "image index {i} out of range for {} images of {}",
                    self.len(),
                    self.name
                );
            }
            out.extend(self.image(i).iter().map(|&b| f32::from(b) / 255.0));
        }
        Tensor::from_vec(
            out,
            (idx.len(), self.channels, self.height, self.width),
            device,
        )
    }

    /// Labels `idx` as a u32 tensor `(idx.len(),)`.
    pub fn labels_tensor(&self, idx: &[usize], device: &Device) -> candle_core::Result<Tensor> {
        let mut out = Vec::with_capacity(idx.len());
        for &i in idx {
            match self.labels.get(i) {
                Some(&l) => out.push(u32::from(l)),
                None => candle_core::bail!(
                    "label index {i} out of range for {} labels of {}",
                    self.len(),
                    self.name
                ),
            }
        }
        Tensor::from_vec(out, idx.len(), device)
    }

    /// The whole dataset as `(images, labels)` tensors (see [`Dataset::images_tensor`]).
    pub fn to_tensors(&self, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let all: Vec<usize> = (0..self.len()).collect();
        Ok((
            self.images_tensor(&all, device)?,
            self.labels_tensor(&all, device)?,
        ))
    }

    /// A random permutation of `0..len()` cut into batches of `batch_size` (the last one may be
    /// shorter). A pure function of `(seed, epoch)`: epoch `e` uses ChaCha stream `e` of key
    /// `seed`, so epochs are independent and any epoch can be replayed alone.
    ///
    /// # Panics
    /// If `batch_size == 0`.
    pub fn batches(&self, batch_size: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
        assert!(batch_size > 0, "batch_size must be positive");
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(epoch);
        let perm = permutation(self.len(), &mut rng);
        perm.chunks(batch_size).map(<[usize]>::to_vec).collect()
    }

    /// The images `idx`, in that order (repeats allowed), same name, split and classes.
    ///
    /// # Panics
    /// If an index is `>= self.len()`.
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(idx.len() * self.image_len());
        let mut labels = Vec::with_capacity(idx.len());
        for &i in idx {
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Dataset {
            name: self.name.clone(),
            split: self.split,
            images,
            labels,
            channels: self.channels,
            height: self.height,
            width: self.width,
            class_names: self.class_names.clone(),
        }
    }

    /// Number of images per class, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.n_classes()];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }

    /// Splits the official training set into (Train, Validation): a seeded random
    /// `round(len / 10)` images become validation (E-ABS, Section 4.1: "a random 10% of each
    /// dataset's training set as a validation set"), the rest train. Both keep the file order.
    pub fn split_validation(&self, seed: u64) -> (Dataset, Dataset) {
        let n_val = (self.len() + 5) / 10;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let perm = permutation(self.len(), &mut rng);
        let mut is_val = vec![false; self.len()];
        for &i in &perm[..n_val] {
            is_val[i] = true;
        }
        let train_idx: Vec<usize> = (0..self.len()).filter(|&i| !is_val[i]).collect();
        let val_idx: Vec<usize> = (0..self.len()).filter(|&i| is_val[i]).collect();
        let mut train = self.subset(&train_idx);
        train.split = Split::Train;
        let mut val = self.subset(&val_idx);
        val.split = Split::Validation;
        (train, val)
    }
}

/// Checks every label is `< n_classes`.
pub(crate) fn check_labels(
    labels: &[u8],
    n_classes: usize,
    origin: &std::path::Path,
) -> Result<()> {
    if let Some((index, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= n_classes)
    {
        return Err(Error::LabelOutOfRange {
            path: origin.to_path_buf(),
            index,
            label: l.to_string(),
            expected: format!("0..={}", n_classes.saturating_sub(1)),
        });
    }
    Ok(())
}

/// Uniform integer in `0..n` (n > 0) by rejection sampling on `next_u64`: unbiased, and fixed by
/// the generator's output alone.
fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    let zone = u64::MAX - (u64::MAX - n + 1) % n;
    loop {
        let v = rng.next_u64();
        if v <= zone {
            return v % n;
        }
    }
}

/// A Fisher-Yates permutation of `0..n`.
pub fn permutation(n: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = below(rng, i as u64 + 1) as usize;
        p.swap(i, j);
    }
    p
}

/// `x + N(0, std^2)` noise, clipped to [0, 1]: the paper's training augmentation (E-ABS, Section
/// 4.3: std 0.2 for MNIST and Fashion-MNIST, 0.01 for SVHN and SuperTraffic-10).
///
/// The noise is drawn on the CPU from ChaCha8 seeded with `seed` (row-major over `x`), then moved
/// to `x`'s device and dtype, so the result is the same on every device for a given seed.
pub fn add_gaussian_noise(x: &Tensor, std: f64, seed: u64) -> candle_core::Result<Tensor> {
    if !(std.is_finite() && std >= 0.0) {
        candle_core::bail!("noise std must be finite and >= 0, found {std}");
    }
    if matches!(x.dtype(), DType::U8 | DType::U32 | DType::I64) {
        candle_core::bail!(
            "add_gaussian_noise expects a float tensor, found {:?}",
            x.dtype()
        );
    }
    let normal = Normal::new(0f32, std as f32)
        .map_err(|e| candle_core::Error::Msg(format!("noise std {std}: {e}")))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let noise: Vec<f32> = (0..x.elem_count())
        .map(|_| normal.sample(&mut rng))
        .collect();
    let noise = Tensor::from_vec(noise, x.shape(), &Device::Cpu)?
        .to_device(x.device())?
        .to_dtype(x.dtype())?;
    (x + noise)?.clamp(0f32, 1f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn toy(n: usize) -> Dataset {
        // Image i is filled with byte i, labels cycle 0, 1, 2.
        let images: Vec<u8> = (0..n)
            .flat_map(|i| std::iter::repeat_n(i as u8, 2 * 2))
            .collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
        let names = vec!["a".into(), "b".into(), "c".into()];
        Dataset::new(
            "toy",
            Split::Train,
            images,
            labels,
            (1, 2, 2),
            names,
            Path::new("toy"),
        )
        .unwrap()
    }

    #[test]
    fn tensors_have_shape_and_range() {
        let d = toy(5);
        let x = d.images_tensor(&[4, 0], &Device::Cpu).unwrap();
        assert_eq!(x.dims(), &[2, 1, 2, 2]);
        let v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(
            v,
            vec![4.0 / 255.0; 4]
                .into_iter()
                .chain(vec![0.0; 4])
                .collect::<Vec<_>>()
        );
        let y = d.labels_tensor(&[4, 0], &Device::Cpu).unwrap();
        assert_eq!(y.to_vec1::<u32>().unwrap(), vec![1, 0]);
        assert!(d.images_tensor(&[5], &Device::Cpu).is_err());
        assert!(d.labels_tensor(&[5], &Device::Cpu).is_err());
    }

    #[test]
    fn new_rejects_bad_parts() {
        let e = Dataset::new(
            "t",
            Split::Test,
            vec![0; 7],
            vec![0, 1],
            (1, 2, 2),
            vec!["a".into(), "b".into()],
            Path::new("f"),
        );
        assert!(e.unwrap_err().to_string().contains("expected 8, found 7"));
        let e = Dataset::new(
            "t",
            Split::Test,
            vec![0; 8],
            vec![0, 2],
            (1, 2, 2),
            vec!["a".into(), "b".into()],
            Path::new("f"),
        );
        assert!(matches!(e, Err(Error::LabelOutOfRange { index: 1, .. })));
    }

    #[test]
    fn batches_are_a_pure_permutation() {
        let d = toy(23);
        let b = d.batches(5, 7, 0);
        assert_eq!(
            b.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![5, 5, 5, 5, 3]
        );
        let mut all: Vec<usize> = b.concat();
        all.sort_unstable();
        assert_eq!(all, (0..23).collect::<Vec<_>>());
        assert_eq!(b, d.batches(5, 7, 0), "same (seed, epoch), same batches");
        assert_ne!(b, d.batches(5, 7, 1), "epochs differ");
        assert_ne!(b, d.batches(5, 8, 0), "seeds differ");
        assert!(toy(0).batches(4, 0, 0).is_empty());
    }

    #[test]
    fn split_is_disjoint_ten_percent_and_seeded() {
        let d = toy(101);
        let (tr, va) = d.split_validation(3);
        assert_eq!((tr.len(), va.len()), (91, 10));
        assert_eq!((tr.split, va.split), (Split::Train, Split::Validation));
        let mut seen: Vec<u8> = tr
            .images
            .chunks(4)
            .chain(va.images.chunks(4))
            .map(|c| c[0])
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..101).map(|i| i as u8).collect::<Vec<_>>());
        assert_eq!(d.split_validation(3), (tr.clone(), va.clone()));
        assert_ne!(d.split_validation(4).1, va);
    }

    #[test]
    fn subset_copies_images_and_labels() {
        let d = toy(6);
        let s = d.subset(&[5, 5, 1]);
        assert_eq!(s.labels, vec![2, 2, 1]);
        assert_eq!(s.images, vec![5, 5, 5, 5, 5, 5, 5, 5, 1, 1, 1, 1]);
        assert_eq!(s.class_counts(), vec![0, 1, 2]);
        assert_eq!(s.name, "toy");
    }

    #[test]
    fn noise_is_seeded_clipped_and_has_the_right_std() {
        let x = Tensor::full(0.5f32, (4, 1, 50, 50), &Device::Cpu).unwrap();
        let a = add_gaussian_noise(&x, 0.1, 1).unwrap();
        let b = add_gaussian_noise(&x, 0.1, 1).unwrap();
        let c = add_gaussian_noise(&x, 0.1, 2).unwrap();
        let va = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(va, b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert_ne!(va, c.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let mean = va.iter().sum::<f32>() / va.len() as f32;
        let var = va.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / va.len() as f32;
        assert!(
            (mean - 0.5).abs() < 0.01 && (var.sqrt() - 0.1).abs() < 0.01,
            "{mean} {var}"
        );
        let big = add_gaussian_noise(&x, 5.0, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(big.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(big.contains(&0.0) && big.contains(&1.0));
        assert!(add_gaussian_noise(&x, -1.0, 1).is_err());
        assert!(add_gaussian_noise(&x, f64::NAN, 1).is_err());
    }
}
