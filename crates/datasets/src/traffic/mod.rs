//! SuperTraffic-10 (E-ABS, Section 4.1): European traffic signs merged from GTSRB (Stallkamp et
//! al. 2012), the DFG traffic-sign dataset (Tabernik & Skočaj 2019) and BelgiumTS (Timofte et al.
//! 2014). The paper: "We filter out small images (images that are smaller than 32×32 pixels) and
//! choose the top 10 classes with the most images. All images in SuperTraffic-10 are 32×32 RGB."
//!
//! The paper's dataset was never published, so this is a reproducible rebuild:
//! - [`classmap`]: a checked-in map (`datasets/supertraffic10-classmap.csv`) from each source's
//!   class ids to common sign types; its sha256 goes into the build manifest.
//! - [`sources`]: readers for the three raw layouts (GTSRB and BelgiumTSC per-class `GT-*.csv`
//!   with `Roi.X1..Roi.Y2` boxes, DFG's COCO-style JSON with `bbox`), any subset of them.
//! - [`build()`]: crop each sign to its annotated box; drop it when the box is narrower or lower
//!   than 32 pixels; map its class; keep the 10 common types with the most images (ties by name);
//!   resize to 32x32 RGB; label the kept types in alphabetical order.
//! - Split: each source's own train/test split (all three publish one); the validation set is
//!   then a seeded 10% of train at load time, as for the other datasets.
//! - [`cache`]: the result as uncompressed IDX files plus `manifest.json` (per-class, per-source
//!   counts, sha256 of every file), written atomically; rebuilding from the same sources with the
//!   same class map gives byte-identical files, which the manifest lets anyone check.

pub mod build;
pub mod cache;
pub mod classmap;
pub mod sources;

pub use build::{build, BuildConfig, BuildManifest};
pub use classmap::ClassMap;
pub use sources::Source;
