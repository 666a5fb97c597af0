//! Building SuperTraffic-10 from whichever of GTSRB, BelgiumTSC and DFG the user has (see the
//! module docs of [`crate::traffic`] for the recipe and why each choice was made).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::idx::{encode_idx, write_atomic};
use crate::manifest::{sha256_hex, FileEntry};
use crate::traffic::cache::{file_names, MANIFEST_NAME};
use crate::traffic::classmap::ClassMap;
use crate::traffic::sources::{collect, Sample, Source};

/// Side of the output images, and the minimum box side kept (E-ABS, Section 4.1).
pub const SIDE: u32 = 32;

/// What to build from.
#[derive(Debug, Clone)]
pub struct BuildConfig {
    /// GTSRB root, if available.
    pub gtsrb: Option<PathBuf>,
    /// DFG root, if available.
    pub dfg: Option<PathBuf>,
    /// BelgiumTSC root, if available.
    pub bts: Option<PathBuf>,
    /// Output directory (created).
    pub out: PathBuf,
    /// The class map.
    pub class_map: ClassMap,
    /// Number of sign types kept (10 for SuperTraffic-10).
    pub n_classes: usize,
}

impl BuildConfig {
    /// The paper's settings (10 classes) for the given sources and map.
    pub fn supertraffic10(
        gtsrb: Option<PathBuf>,
        dfg: Option<PathBuf>,
        bts: Option<PathBuf>,
        out: PathBuf,
        class_map: ClassMap,
    ) -> Self {
        BuildConfig {
            gtsrb,
            dfg,
            bts,
            out,
            class_map,
            n_classes: 10,
        }
    }

    fn root(&self, s: Source) -> Option<&Path> {
        match s {
            Source::Gtsrb => self.gtsrb.as_deref(),
            Source::Bts => self.bts.as_deref(),
            Source::Dfg => self.dfg.as_deref(),
        }
    }
}

/// Counts of one split.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCounts {
    /// Number of images.
    pub n_images: usize,
    /// Images per class name.
    pub per_class: BTreeMap<String, usize>,
    /// Images per source.
    pub per_source: BTreeMap<String, usize>,
    /// Images per source and class name.
    pub per_source_class: BTreeMap<String, BTreeMap<String, usize>>,
}

/// Signs left out, per source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// Box narrower or lower than 32 pixels.
    pub too_small: BTreeMap<String, usize>,
    /// Source class not in the class map.
    pub unmapped: BTreeMap<String, usize>,
    /// Mapped to a sign type outside the kept ones.
    pub not_in_top_classes: BTreeMap<String, usize>,
}

/// The manifest written beside the cached files. It contains no timestamps or absolute paths, so
/// equal inputs give a byte-identical manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildManifest {
    /// `supertraffic-10`.
    pub dataset: String,
    /// Version of this layout.
    pub format_version: u32,
    /// Class names by label (alphabetical).
    pub class_names: Vec<String>,
    /// Sources that went into the build.
    pub sources_used: Vec<String>,
    /// Sources that were not given.
    pub sources_missing: Vec<String>,
    /// sha256 of the class map text.
    pub class_map_sha256: String,
    /// How images were made.
    pub preprocessing: String,
    /// How the split was made.
    pub split_rule: String,
    /// Images per mapped sign type (both splits, after the size filter), before choosing the top
    /// classes: the ranking that chose them.
    pub candidate_counts: BTreeMap<String, usize>,
    /// Counts of the train split.
    pub train: SplitCounts,
    /// Counts of the test split.
    pub test: SplitCounts,
    /// What was left out.
    pub dropped: Dropped,
    /// The data files with size and sha256.
    pub files: Vec<FileEntry>,
}

fn bump(m: &mut BTreeMap<String, usize>, k: &str) {
    *m.entry(k.to_string()).or_default() += 1;
}

/// Decodes an image file to RGB.
fn decode(path: &Path) -> Result<image::RgbImage> {
    Ok(image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(|e| Error::Image {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?
        .to_rgb8())
}

/// Checks `img`'s size against `s`'s annotation, crops the box and resizes it to 32x32 RGB
/// (bilinear with a support scaled to the shrink factor, `FilterType::Triangle`, so large crops
/// are low-pass filtered rather than aliased). Returns CHW bytes.
fn crop_resize(img: &image::RgbImage, s: &Sample) -> Result<Vec<u8>> {
    if img.dimensions() != s.image_size {
        return Err(Error::mismatch(
            &s.image,
            "image size (width x height) declared by the annotation",
            format!("{}x{}", s.image_size.0, s.image_size.1),
            format!("{}x{}", img.width(), img.height()),
        ));
    }
    let b = s.bbox;
    let crop = image::imageops::crop_imm(img, b.x0, b.y0, b.width(), b.height()).to_image();
    let small = image::imageops::resize(&crop, SIDE, SIDE, FilterType::Triangle);
    let plane = (SIDE * SIDE) as usize;
    let mut chw = vec![0u8; 3 * plane];
    for (i, p) in small.pixels().enumerate() {
        for c in 0..3 {
            chw[c * plane + i] = p.0[c];
        }
    }
    Ok(chw)
}

/// A sample's index and its CHW bytes.
type Rendered = (usize, Vec<u8>);

/// Renders every sample, decoding each image file once (a DFG photo holds several signs), in
/// parallel over files; the result is in `samples` order and independent of thread timing.
fn render_all(samples: &[&Sample]) -> Result<Vec<Vec<u8>>> {
    let mut by_file: BTreeMap<&Path, Vec<usize>> = BTreeMap::new();
    for (i, s) in samples.iter().enumerate() {
        by_file.entry(s.image.as_path()).or_default().push(i);
    }
    let groups: Vec<(&Path, Vec<usize>)> = by_file.into_iter().collect();
    let rendered: Vec<Result<Vec<Rendered>>> = groups
        .par_iter()
        .map(|(path, idx)| {
            let img = decode(path)?;
            idx.iter()
                .map(|&i| Ok((i, crop_resize(&img, samples[i])?)))
                .collect()
        })
        .collect();
    let mut out = vec![Vec::new(); samples.len()];
    for group in rendered {
        for (i, chw) in group? {
            out[i] = chw;
        }
    }
    Ok(out)
}

/// Builds SuperTraffic-10 into `cfg.out` and returns its manifest (also written there).
pub fn build(cfg: &BuildConfig) -> Result<BuildManifest> {
    let used: Vec<Source> = Source::ALL
        .into_iter()
        .filter(|s| cfg.root(*s).is_some())
        .collect();
    if used.is_empty() {
        return Err(Error::InvalidArgument {
            name: "sources".into(),
            detail: "expected at least one of --gtsrb, --dfg, --bts; found none".into(),
        });
    }
    if cfg.n_classes == 0 || cfg.n_classes > 255 {
        return Err(Error::InvalidArgument {
            name: "n_classes".into(),
            detail: format!("expected 1..=255, found {}", cfg.n_classes),
        });
    }
    let mut dropped = Dropped::default();
    let mut kept: Vec<(Sample, String)> = Vec::new();
    for &src in &used {
        let root = cfg.root(src).unwrap_or(Path::new("."));
        for s in collect(src, root)? {
            let Some(common) = cfg.class_map.common_type(src, &s.class) else {
                bump(&mut dropped.unmapped, src.name());
                continue;
            };
            if s.bbox.width() < SIDE || s.bbox.height() < SIDE {
                bump(&mut dropped.too_small, src.name());
                continue;
            }
            let common = common.to_string();
            kept.push((s, common));
        }
    }
    let mut candidate_counts = BTreeMap::new();
    for (_, c) in &kept {
        bump(&mut candidate_counts, c);
    }
    let mut ranking: Vec<(&String, &usize)> = candidate_counts.iter().collect();
    ranking.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    if ranking.len() < cfg.n_classes {
        return Err(Error::mismatch(
            &cfg.out,
            format!(
                "number of mapped sign types with images of at least {SIDE}x{SIDE} (sources: {})",
                used.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
            ),
            cfg.n_classes,
            ranking.len(),
        ));
    }
    let mut class_names: Vec<String> = ranking[..cfg.n_classes]
        .iter()
        .map(|(n, _)| (*n).clone())
        .collect();
    class_names.sort();
    let label_of: BTreeMap<&str, u8> = class_names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i as u8))
        .collect();

    let mut selected: Vec<(Sample, u8)> = Vec::new();
    for (s, c) in kept {
        match label_of.get(c.as_str()) {
            Some(&l) => selected.push((s, l)),
            None => bump(&mut dropped.not_in_top_classes, s.source.name()),
        }
    }
    // Deterministic order whatever the file system's listing order.
    selected.sort_by(|a, b| {
        (a.0.test, a.0.source, &a.0.rel, a.0.bbox).cmp(&(b.0.test, b.0.source, &b.0.rel, b.0.bbox))
    });

    let refs: Vec<&Sample> = selected.iter().map(|(s, _)| s).collect();
    let rendered = render_all(&refs)?;
    let mut out = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut counts = (SplitCounts::default(), SplitCounts::default());
    for ((s, l), img) in selected.iter().zip(rendered) {
        let (imgs, lbls, c) = if s.test {
            (&mut out.2, &mut out.3, &mut counts.1)
        } else {
            (&mut out.0, &mut out.1, &mut counts.0)
        };
        imgs.extend_from_slice(&img);
        lbls.push(*l);
        let name = &class_names[*l as usize];
        c.n_images += 1;
        bump(&mut c.per_class, name);
        bump(&mut c.per_source, s.source.name());
        bump(
            c.per_source_class
                .entry(s.source.name().to_string())
                .or_default(),
            name,
        );
    }
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    let mut files = Vec::new();
    for (test, imgs, lbls) in [(false, &out.0, &out.1), (true, &out.2, &out.3)] {
        let (img_name, lbl_name) = file_names(test);
        for (name, bytes) in [
            (
                img_name,
                encode_idx(&[lbls.len(), 3, SIDE as usize, SIDE as usize], imgs)?,
            ),
            (lbl_name, encode_idx(&[lbls.len()], lbls)?),
        ] {
            write_atomic(&cfg.out.join(name), &bytes)?;
            files.push(FileEntry {
                name: name.to_string(),
                size: Some(bytes.len() as u64),
                sha256: Some(sha256_hex(&bytes)),
                md5: None,
                archive: None,
                archive_md5: None,
                archive_sha256: None,
                urls: Vec::new(),
            });
        }
    }
    let manifest = BuildManifest {
        dataset: "supertraffic-10".into(),
        format_version: 1,
        class_names,
        sources_used: used.iter().map(|s| s.name().to_string()).collect(),
        sources_missing: Source::ALL.iter().filter(|s| !used.contains(s)).map(|s| s.name().to_string()).collect(),
        class_map_sha256: cfg.class_map.sha256.clone(),
        preprocessing: format!(
            "crop to the annotated box (GTSRB/BTS Roi corners inclusive; DFG float bbox widened to whole pixels; clamped to the image); drop boxes narrower or lower than {SIDE} px; resize to {SIDE}x{SIDE} RGB with image::imageops::resize, FilterType::Triangle"
        ),
        split_rule: "each source's official train/test split; validation = seeded random 10% of train at load time".into(),
        candidate_counts,
        train: counts.0,
        test: counts.1,
        dropped,
        files,
    };
    let json = serde_json::to_string_pretty(&manifest).map_err(|e| {
        Error::malformed(
            cfg.out.join(MANIFEST_NAME),
            format!("cannot serialise manifest: {e}"),
        )
    })?;
    write_atomic(&cfg.out.join(MANIFEST_NAME), format!("{json}\n").as_bytes())?;
    Ok(manifest)
}
