//! Readers for the raw layouts of the three SuperTraffic-10 sources. They list annotated signs
//! (image file, box, class, official split); decoding happens in [`super::build()`].
//!
//! Expected layouts (the official archives, unpacked; the directory given may be the one shown
//! or its parent):
//! - GTSRB (<https://benchmark.ini.rub.de/gtsrb_dataset.html>):
//!   `Final_Training/Images/000NN/GT-000NN.csv` + `.ppm` images (from
//!   `GTSRB_Final_Training_Images.zip`), `Final_Test/Images/*.ppm` (from
//!   `GTSRB_Final_Test_Images.zip`) and `GT-final_test.csv` with the test `ClassId`s (from
//!   `GTSRB_Final_Test_GT.zip`) in the GTSRB directory or in `Final_Test/Images/`. CSVs are
//!   `;`-separated with `Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId`, the box
//!   corners inclusive.
//! - BelgiumTS classification (BelgiumTSC, <https://btsd.ethz.ch/shareddata/>):
//!   `Training/000NN/GT-000NN.csv` and `Testing/000NN/GT-000NN.csv` (from
//!   `BelgiumTSC_Training.zip`, `BelgiumTSC_Testing.zip`) in the same CSV format, `.ppm` images.
//! - DFG (<https://www.vicos.si/resources/dfg/>): `DFG-tsd-annot-json/train.json` and
//!   `test.json` (COCO style: `images[{id, file_name, width, height}]`,
//!   `annotations[{image_id, category_id, bbox: [x, y, w, h]}]`, `categories[{id, name}]`) and the
//!   images under `JPEGImages/`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// A source dataset of SuperTraffic-10.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// German Traffic Sign Recognition Benchmark, 43 classes.
    Gtsrb,
    /// BelgiumTS classification (BelgiumTSC), 62 classes.
    Bts,
    /// DFG traffic-sign dataset (Slovenia), 200 categories.
    Dfg,
}

impl Source {
    /// All sources, in build order.
    pub const ALL: [Source; 3] = [Source::Gtsrb, Source::Bts, Source::Dfg];

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Source::Gtsrb => "gtsrb",
            Source::Bts => "bts",
            Source::Dfg => "dfg",
        }
    }

    /// Number of numeric class ids, or `None` where classes are named (DFG).
    pub fn n_numeric_classes(self) -> Option<usize> {
        match self {
            Source::Gtsrb => Some(43),
            Source::Bts => Some(62),
            Source::Dfg => None,
        }
    }
}

impl std::str::FromStr for Source {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "gtsrb" | "gts" => Ok(Source::Gtsrb),
            "bts" | "btsc" | "belgiumts" => Ok(Source::Bts),
            "dfg" => Ok(Source::Dfg),
            _ => Err(Error::InvalidArgument {
                name: "source".into(),
                detail: format!("expected gtsrb, bts or dfg; found `{s}`"),
            }),
        }
    }
}

/// A half-open pixel box `[x0, x1) x [y0, y1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BBox {
    /// Left column.
    pub x0: u32,
    /// Top row.
    pub y0: u32,
    /// One past the right column.
    pub x1: u32,
    /// One past the bottom row.
    pub y1: u32,
}

impl BBox {
    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.x1.saturating_sub(self.x0)
    }
    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.y1.saturating_sub(self.y0)
    }
}

/// One annotated sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The source.
    pub source: Source,
    /// Whether it belongs to the source's official test split.
    pub test: bool,
    /// The image file.
    pub image: PathBuf,
    /// The image path relative to the source root, `/`-separated (sort key, stable across
    /// machines).
    pub rel: String,
    /// The image size the annotation declares.
    pub image_size: (u32, u32),
    /// The sign's box, clamped to the declared image size.
    pub bbox: BBox,
    /// The source class (numeric id as text, or DFG category name).
    pub class: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

/// Sorted entries of `dir` that are directories.
fn sorted_subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    Ok(v)
}

fn rel_path(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Clamps an inclusive-corner box to an image of `w x h`; errors when nothing is left.
fn clamp_box(
    x0: i64,
    y0: i64,
    x1: i64,
    y1: i64,
    (w, h): (u32, u32),
    path: &Path,
    line: usize,
) -> Result<BBox> {
    let b = BBox {
        x0: x0.clamp(0, w as i64) as u32,
        y0: y0.clamp(0, h as i64) as u32,
        x1: x1.clamp(0, w as i64) as u32,
        y1: y1.clamp(0, h as i64) as u32,
    };
    if b.width() == 0 || b.height() == 0 {
        return Err(Error::malformed(
            path,
            format!(
                "record {line}: box ({x0}, {y0})-({x1}, {y1}) is empty inside the {w}x{h} image"
            ),
        ));
    }
    Ok(b)
}

/// Parses a GTSRB/BelgiumTSC ground-truth CSV read from `csv_path`; image file names are
/// relative to `image_dir`, and `rel` paths relative to `root`.
pub fn parse_gt_csv(
    text: &str,
    csv_path: &Path,
    image_dir: &Path,
    root: &Path,
    source: Source,
    test: bool,
) -> Result<Vec<Sample>> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let header: Vec<&str> = match lines.next() {
        Some((_, h)) => h
            .trim()
            .trim_start_matches('\u{feff}')
            .split(';')
            .map(str::trim)
            .collect(),
        None => return Err(Error::malformed(csv_path, "empty ground-truth CSV")),
    };
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                Error::mismatch(
                    csv_path,
                    format!("CSV header (column `{name}` missing)"),
                    "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId",
                    header.join(";"),
                )
            })
    };
    let cols = [
        col("Filename")?,
        col("Width")?,
        col("Height")?,
        col("Roi.X1")?,
        col("Roi.Y1")?,
        col("Roi.X2")?,
        col("Roi.Y2")?,
        col("ClassId")?,
    ];
    let mut out = Vec::new();
    for (i, line) in lines {
        let f: Vec<&str> = line.trim().split(';').map(str::trim).collect();
        let get = |k: usize| -> Result<&str> {
            f.get(cols[k]).copied().ok_or_else(|| {
                Error::malformed(
                    csv_path,
                    format!(
                        "line {}: expected {} fields, found {}",
                        i + 1,
                        header.len(),
                        f.len()
                    ),
                )
            })
        };
        let num = |k: usize| -> Result<i64> {
            let s = get(k)?;
            s.parse::<i64>().map_err(|_| {
                Error::malformed(
                    csv_path,
                    format!(
                        "line {}: field {} is not an integer: `{s}`",
                        i + 1,
                        cols[k] + 1
                    ),
                )
            })
        };
        let (w, h) = (num(1)?, num(2)?);
        if w <= 0 || h <= 0 || w > u32::MAX as i64 || h > u32::MAX as i64 {
            return Err(Error::malformed(
                csv_path,
                format!("line {}: image size {w}x{h} is not positive", i + 1),
            ));
        }
        let size = (w as u32, h as u32);
        // Roi.X2/Roi.Y2 are inclusive corners.
        let bbox = clamp_box(
            num(3)?,
            num(4)?,
            num(5)?.saturating_add(1),
            num(6)?.saturating_add(1),
            size,
            csv_path,
            i + 1,
        )?;
        let class = num(7)?;
        if let Some(max) = source.n_numeric_classes() {
            if class < 0 || class as usize >= max {
                return Err(Error::LabelOutOfRange {
                    path: csv_path.to_path_buf(),
                    index: i + 1,
                    label: class.to_string(),
                    expected: format!("0..={} ({} classes)", max - 1, source.name()),
                });
            }
        }
        let image = image_dir.join(get(0)?);
        out.push(Sample {
            source,
            test,
            rel: rel_path(root, &image),
            image,
            image_size: size,
            bbox,
            class: class.to_string(),
        });
    }
    Ok(out)
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(io(path))
}

/// The first of `candidates` that is a directory.
fn first_dir(candidates: &[PathBuf]) -> Option<PathBuf> {
    candidates.iter().find(|p| p.is_dir()).cloned()
}

fn layout_error(source: Source, root: &Path, expected: &str) -> Error {
    Error::NotFound {
        dataset: source.name().into(),
        searched: root.display().to_string(),
        hint: format!("expected {expected}"),
    }
}

/// Reads the per-class `GT-*.csv` files under `classes_dir/000NN/`.
fn per_class_csvs(
    classes_dir: &Path,
    root: &Path,
    source: Source,
    test: bool,
) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for d in sorted_subdirs(classes_dir)? {
        let Some(name) = d.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        let csv = d.join(format!("GT-{name}.csv"));
        if !csv.is_file() {
            return Err(Error::NotFound {
                dataset: source.name().into(),
                searched: d.display().to_string(),
                hint: format!("missing ground truth {}", csv.display()),
            });
        }
        let samples = parse_gt_csv(&read_text(&csv)?, &csv, &d, root, source, test)?;
        if let Ok(folder_class) = name.parse::<usize>() {
            if let Some(s) = samples.iter().find(|s| s.class != folder_class.to_string()) {
                return Err(Error::mismatch(
                    &csv,
                    format!("ClassId of {}", s.rel),
                    folder_class,
                    &s.class,
                ));
            }
        }
        out.extend(samples);
    }
    Ok(out)
}

/// Lists GTSRB's annotated signs (train and test).
pub fn gtsrb(root: &Path) -> Result<Vec<Sample>> {
    let base = [root.to_path_buf(), root.join("GTSRB")]
        .into_iter()
        .find(|b| b.join("Final_Training").is_dir())
        .ok_or_else(|| {
            layout_error(
                Source::Gtsrb,
                root,
                "Final_Training/Images/000NN/GT-000NN.csv (GTSRB_Final_Training_Images.zip)",
            )
        })?;
    let mut out = per_class_csvs(
        &base.join("Final_Training/Images"),
        &base,
        Source::Gtsrb,
        false,
    )?;
    let test_dir = base.join("Final_Test/Images");
    let gt = [
        base.join("GT-final_test.csv"),
        test_dir.join("GT-final_test.csv"),
        root.join("GT-final_test.csv"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .ok_or_else(|| {
        layout_error(
            Source::Gtsrb,
            root,
            "GT-final_test.csv with ClassId (GTSRB_Final_Test_GT.zip) next to Final_Test/",
        )
    })?;
    // The test CSV names images relative to Final_Test/Images.
    let test = parse_gt_csv(&read_text(&gt)?, &gt, &test_dir, &base, Source::Gtsrb, true)?;
    out.extend(test);
    Ok(out)
}

/// Lists BelgiumTSC's annotated signs (train and test).
pub fn bts(root: &Path) -> Result<Vec<Sample>> {
    let find = |split: &str| {
        first_dir(&[
            root.join(split),
            root.join(format!("BelgiumTSC_{split}")).join(split),
            root.join(format!("BelgiumTSC_{split}")),
        ])
    };
    let (Some(train), Some(test)) = (find("Training"), find("Testing")) else {
        return Err(layout_error(Source::Bts, root, "Training/000NN/GT-000NN.csv and Testing/000NN/GT-000NN.csv (BelgiumTSC_Training.zip, BelgiumTSC_Testing.zip)"));
    };
    let mut out = per_class_csvs(&train, root, Source::Bts, false)?;
    out.extend(per_class_csvs(&test, root, Source::Bts, true)?);
    Ok(out)
}

#[derive(Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
    width: u32,
    height: u32,
}

#[derive(Deserialize)]
struct CocoAnnotation {
    image_id: u64,
    category_id: u64,
    bbox: [f64; 4],
}

#[derive(Deserialize)]
struct CocoCategory {
    id: u64,
    name: String,
}

#[derive(Deserialize)]
struct Coco {
    images: Vec<CocoImage>,
    annotations: Vec<CocoAnnotation>,
    categories: Vec<CocoCategory>,
}

/// Parses a DFG (COCO-style) annotation file; images are looked up in `image_dir`.
pub fn parse_dfg_json(
    text: &str,
    json_path: &Path,
    image_dir: &Path,
    root: &Path,
    test: bool,
) -> Result<Vec<Sample>> {
    let coco: Coco = serde_json::from_str(text).map_err(|e| {
        Error::malformed(
            json_path,
            format!("expected COCO-style JSON with images, annotations, categories: {e}"),
        )
    })?;
    let cats: std::collections::HashMap<u64, &str> = coco
        .categories
        .iter()
        .map(|c| (c.id, c.name.as_str()))
        .collect();
    let imgs: std::collections::HashMap<u64, &CocoImage> =
        coco.images.iter().map(|i| (i.id, i)).collect();
    let mut out = Vec::with_capacity(coco.annotations.len());
    for (k, a) in coco.annotations.iter().enumerate() {
        let img = imgs.get(&a.image_id).ok_or_else(|| {
            Error::malformed(
                json_path,
                format!("annotation {k}: image_id {} is not in `images`", a.image_id),
            )
        })?;
        let class = cats.get(&a.category_id).ok_or_else(|| {
            Error::malformed(
                json_path,
                format!(
                    "annotation {k}: category_id {} is not in `categories`",
                    a.category_id
                ),
            )
        })?;
        let [x, y, w, h] = a.bbox;
        if !(x.is_finite() && y.is_finite() && w.is_finite() && h.is_finite())
            || w <= 0.0
            || h <= 0.0
        {
            return Err(Error::malformed(
                json_path,
                format!(
                    "annotation {k}: bbox {:?} is not a positive finite box",
                    a.bbox
                ),
            ));
        }
        // Float boxes: the pixels the box touches, clamped to the image.
        let bbox = clamp_box(
            x.floor() as i64,
            y.floor() as i64,
            (x + w).ceil() as i64,
            (y + h).ceil() as i64,
            (img.width, img.height),
            json_path,
            k,
        )?;
        let image = image_dir.join(&img.file_name);
        out.push(Sample {
            source: Source::Dfg,
            test,
            rel: rel_path(root, &image),
            image,
            image_size: (img.width, img.height),
            bbox,
            class: class.to_string(),
        });
    }
    Ok(out)
}

/// Lists DFG's annotated signs (train and test).
pub fn dfg(root: &Path) -> Result<Vec<Sample>> {
    let ann = [root.join("DFG-tsd-annot-json"), root.to_path_buf()]
        .into_iter()
        .find(|d| d.join("train.json").is_file() && d.join("test.json").is_file())
        .ok_or_else(|| {
            layout_error(
                Source::Dfg,
                root,
                "DFG-tsd-annot-json/train.json and test.json",
            )
        })?;
    let images = first_dir(&[root.join("JPEGImages"), root.to_path_buf()])
        .unwrap_or_else(|| root.to_path_buf());
    let mut out = Vec::new();
    for (name, test) in [("train.json", false), ("test.json", true)] {
        let p = ann.join(name);
        out.extend(parse_dfg_json(&read_text(&p)?, &p, &images, root, test)?);
    }
    Ok(out)
}

/// Lists the annotated signs of `source` under `root`.
pub fn collect(source: Source, root: &Path) -> Result<Vec<Sample>> {
    match source {
        Source::Gtsrb => gtsrb(root),
        Source::Bts => bts(root),
        Source::Dfg => dfg(root),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_errors_name_file_and_line() {
        let p = Path::new("/d/GT-00001.csv");
        let ok =
            "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\na.ppm;40;50;5;6;36;45;1\n";
        let s = parse_gt_csv(
            ok,
            p,
            Path::new("/d"),
            Path::new("/d"),
            Source::Gtsrb,
            false,
        )
        .unwrap();
        assert_eq!(
            s[0].bbox,
            BBox {
                x0: 5,
                y0: 6,
                x1: 37,
                y1: 46
            }
        );
        assert_eq!((s[0].bbox.width(), s[0].rel.as_str()), (32, "a.ppm"));
        let e = parse_gt_csv(
            &ok.replace(";1\n", ";43\n"),
            p,
            Path::new("/d"),
            Path::new("/d"),
            Source::Gtsrb,
            false,
        )
        .unwrap_err();
        assert!(matches!(e, Error::LabelOutOfRange { .. }), "{e}");
        let e = parse_gt_csv(
            &ok.replace("40;50", "40;x"),
            p,
            Path::new("/d"),
            Path::new("/d"),
            Source::Gtsrb,
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("GT-00001.csv") && e.contains("line 2"), "{e}");
        let e = parse_gt_csv(
            "Filename;Width\n",
            p,
            Path::new("/d"),
            Path::new("/d"),
            Source::Gtsrb,
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("Roi.X1"), "{e}");
    }

    #[test]
    fn dfg_json_boxes_and_errors() {
        let j = r#"{"images":[{"id":1,"file_name":"0001.jpg","width":100,"height":80}],
                   "annotations":[{"image_id":1,"category_id":7,"bbox":[10.5,20.0,40.0,70.0]}],
                   "categories":[{"id":7,"name":"II-2"}]}"#;
        let p = Path::new("train.json");
        let s = parse_dfg_json(j, p, Path::new("/r/JPEGImages"), Path::new("/r"), false).unwrap();
        assert_eq!(
            s[0].bbox,
            BBox {
                x0: 10,
                y0: 20,
                x1: 51,
                y1: 80
            },
            "clamped to the 80-row image"
        );
        assert_eq!(
            (s[0].class.as_str(), s[0].rel.as_str()),
            ("II-2", "JPEGImages/0001.jpg")
        );
        assert!(parse_dfg_json(
            &j.replace("\"category_id\":7", "\"category_id\":8"),
            p,
            Path::new("/"),
            Path::new("/"),
            false
        )
        .is_err());
        assert!(
            parse_dfg_json("{}", p, Path::new("/"), Path::new("/"), false)
                .unwrap_err()
                .to_string()
                .contains("train.json")
        );
    }
}
