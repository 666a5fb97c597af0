//! Summary statistics of a dataset split, so a user can check a download at a glance: counts
//! per class and the pixel mean and standard deviation in [0, 1] units (Fashion-MNIST's training
//! set has mean 0.2860 and std 0.3530).

use serde::Serialize;

use crate::dataset::Dataset;

/// The number of images of one class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassCount {
    /// The label.
    pub label: usize,
    /// The class name.
    pub name: String,
    /// Number of images.
    pub count: usize,
}

/// Statistics of one split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitStats {
    /// Split name.
    pub split: String,
    /// Number of images.
    pub n_images: usize,
    /// `[channels, height, width]`.
    pub image_shape: [usize; 3],
    /// Images per class, by label.
    pub class_counts: Vec<ClassCount>,
    /// Mean of all pixel values, in [0, 1] units.
    pub mean: f64,
    /// Population standard deviation of all pixel values, in [0, 1] units.
    pub std: f64,
    /// Mean per channel.
    pub channel_mean: Vec<f64>,
    /// Standard deviation per channel.
    pub channel_std: Vec<f64>,
}

impl SplitStats {
    /// Computes the statistics of `d`, labelled `split`. Sums are exact integers, so the result
    /// does not depend on summation order.
    pub fn compute(d: &Dataset, split: &str) -> Self {
        let (c, h, w) = d.image_shape();
        let plane = h * w;
        let mut sum = vec![0u64; c];
        let mut sq = vec![0u64; c];
        for img in d.images.chunks_exact(c * plane) {
            for ch in 0..c {
                for &b in &img[ch * plane..(ch + 1) * plane] {
                    sum[ch] += u64::from(b);
                    sq[ch] += u64::from(b) * u64::from(b);
                }
            }
        }
        let per_channel = (d.len() * plane) as f64;
        let moments = |s: u64, q: u64, n: f64| -> (f64, f64) {
            if n == 0.0 {
                return (0.0, 0.0);
            }
            let m = s as f64 / n / 255.0;
            let v = q as f64 / n / (255.0 * 255.0) - m * m;
            (m, v.max(0.0).sqrt())
        };
        let (channel_mean, channel_std): (Vec<f64>, Vec<f64>) = (0..c)
            .map(|ch| moments(sum[ch], sq[ch], per_channel))
            .unzip();
        let (mean, std) = moments(sum.iter().sum(), sq.iter().sum(), per_channel * c as f64);
        let counts = d.class_counts();
        SplitStats {
            split: split.to_string(),
            n_images: d.len(),
            image_shape: [c, h, w],
            class_counts: d
                .class_names
                .iter()
                .zip(counts)
                .enumerate()
                .map(|(label, (name, count))| ClassCount {
                    label,
                    name: name.clone(),
                    count,
                })
                .collect(),
            mean,
            std,
            channel_mean,
            channel_std,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Split;
    use std::path::Path;

    #[test]
    fn hand_checked_moments() {
        // Two 1x1x2 images: pixels 0, 255, 255, 255 -> mean 0.75, std sqrt(0.75 - 0.5625) = 0.4330.
        let d = Dataset::new(
            "t",
            Split::Test,
            vec![0, 255, 255, 255],
            vec![1, 1],
            (1, 1, 2),
            vec!["a".into(), "b".into()],
            Path::new("t"),
        )
        .unwrap();
        let s = SplitStats::compute(&d, "test");
        assert_eq!(s.mean, 0.75);
        assert!((s.std - 0.1875f64.sqrt()).abs() < 1e-12);
        assert_eq!(
            s.class_counts.iter().map(|c| c.count).collect::<Vec<_>>(),
            vec![0, 2]
        );
        assert_eq!(s.class_counts[1].name, "b");
    }
}
