//! The SuperTraffic-10 builder end to end on tiny sources in the real layouts: GTSRB
//! (per-class GT-*.csv + PPM, test GT-final_test.csv), BelgiumTSC (Training/Testing per-class
//! GT-*.csv + PPM) and DFG (COCO JSON + JPEG). Checks cropping, the size filter, the class map,
//! the top-k choice, per-source counts, byte-identical rebuilds, loading through `load`, and the
//! errors for corrupt inputs.

use std::path::{Path, PathBuf};

use eabs_datasets::traffic::{build, BuildConfig, ClassMap};
use eabs_datasets::{load, DatasetKind, Error, Split};

/// Writes a binary PPM (P6) of `w x h` filled with `outer`, with the box `[x0, x1) x [y0, y1)`
/// filled with `inner`.
fn ppm(path: &Path, (w, h): (u32, u32), b: (u32, u32, u32, u32), inner: [u8; 3], outer: [u8; 3]) {
    let mut bytes = format!("P6\n{w} {h}\n255\n").into_bytes();
    for y in 0..h {
        for x in 0..w {
            let inside = x >= b.0 && x < b.2 && y >= b.1 && y < b.3;
            bytes.extend_from_slice(if inside { &inner } else { &outer });
        }
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

const HEADER: &str = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n";

/// One sign: (file name, image size, inclusive box, class, colour).
type Sign = (&'static str, (u32, u32), (u32, u32, u32, u32), u32, [u8; 3]);

fn write_csv_class(dir: &Path, class: u32, signs: &[Sign]) {
    let mut csv = HEADER.to_string();
    for (name, size, b, c, colour) in signs {
        assert_eq!(*c, class);
        ppm(
            &dir.join(name),
            *size,
            (b.0, b.1, b.2 + 1, b.3 + 1),
            *colour,
            [0, 0, 255],
        );
        csv.push_str(&format!(
            "{name};{};{};{};{};{};{};{c}\n",
            size.0, size.1, b.0, b.1, b.2, b.3
        ));
    }
    std::fs::write(dir.join(format!("GT-{class:05}.csv")), csv).unwrap();
}

const RED: [u8; 3] = [200, 10, 10];
const WHITE: [u8; 3] = [250, 250, 250];

fn gtsrb(root: &Path) {
    let tr = root.join("GTSRB/Final_Training/Images");
    // Stop (14): two big, one too small (31 px wide box).
    write_csv_class(
        &tr.join("00014"),
        14,
        &[
            ("00000_00000.ppm", (48, 50), (5, 6, 44, 45), 14, RED),
            ("00000_00001.ppm", (40, 40), (4, 4, 35, 35), 14, RED),
            ("00000_00002.ppm", (40, 40), (4, 4, 34, 36), 14, RED),
        ],
    );
    // Yield (13): one.
    write_csv_class(
        &tr.join("00013"),
        13,
        &[("00000_00000.ppm", (40, 40), (2, 2, 37, 37), 13, WHITE)],
    );
    // Speed limit 80 (5): mapped only in the full map, unmapped in the test map.
    write_csv_class(
        &tr.join("00005"),
        5,
        &[("00000_00000.ppm", (40, 40), (2, 2, 37, 37), 5, WHITE)],
    );
    // Test split: images in Final_Test/Images, ground truth with ClassId next to them.
    let te = root.join("GTSRB/Final_Test/Images");
    ppm(
        &te.join("00000.ppm"),
        (36, 36),
        (1, 1, 35, 35),
        RED,
        [0, 0, 255],
    );
    ppm(
        &te.join("00001.ppm"),
        (36, 36),
        (1, 1, 35, 35),
        WHITE,
        [0, 0, 255],
    );
    std::fs::write(
        root.join("GTSRB/GT-final_test.csv"),
        format!("{HEADER}00000.ppm;36;36;1;1;34;34;14\n00001.ppm;36;36;1;1;34;34;13\n"),
    )
    .unwrap();
}

fn bts(root: &Path) {
    write_csv_class(
        &root.join("Training/00021"),
        21,
        &[("01.ppm", (33, 33), (0, 0, 32, 32), 21, RED)],
    );
    write_csv_class(
        &root.join("Training/00061"),
        61,
        &[
            ("01.ppm", (33, 33), (0, 0, 32, 32), 61, WHITE),
            ("02.ppm", (40, 40), (0, 0, 39, 39), 61, WHITE),
        ],
    );
    write_csv_class(
        &root.join("Testing/00061"),
        61,
        &[("01.ppm", (33, 33), (0, 0, 32, 32), 61, WHITE)],
    );
}

fn dfg(root: &Path) {
    let img_dir = root.join("JPEGImages");
    std::fs::create_dir_all(&img_dir).unwrap();
    for (name, colour) in [("a.jpg", RED), ("b.jpg", WHITE)] {
        let img = image::RgbImage::from_pixel(80, 60, image::Rgb(colour));
        img.save_with_format(img_dir.join(name), image::ImageFormat::Jpeg)
            .unwrap();
    }
    let ann = root.join("DFG-tsd-annot-json");
    std::fs::create_dir_all(&ann).unwrap();
    let cats =
        r#""categories":[{"id":0,"name":"II-2"},{"id":1,"name":"II-3"},{"id":2,"name":"I-1"}]"#;
    let train = format!(
        r#"{{"images":[{{"id":5,"file_name":"a.jpg","width":80,"height":60}},{{"id":6,"file_name":"b.jpg","width":80,"height":60}}],
        "annotations":[{{"id":1,"image_id":5,"category_id":0,"bbox":[1.5,2.0,40.0,40.0]}},
                       {{"id":2,"image_id":6,"category_id":1,"bbox":[0,0,70,50]}},
                       {{"id":3,"image_id":6,"category_id":1,"bbox":[0,0,20,50]}},
                       {{"id":4,"image_id":6,"category_id":2,"bbox":[0,0,50,50]}}],{cats}}}"#
    );
    let test = format!(
        r#"{{"images":[{{"id":1,"file_name":"a.jpg","width":80,"height":60}}],
        "annotations":[{{"id":1,"image_id":1,"category_id":0,"bbox":[10,10,45,45]}}],{cats}}}"#
    );
    std::fs::write(ann.join("train.json"), train).unwrap();
    std::fs::write(ann.join("test.json"), test).unwrap();
}

const MAP: &str = "# test map\nstop,gtsrb,14\nstop,bts,21\nstop,dfg,II-2\ngive_way,gtsrb,13\npriority_road,bts,61\npriority_road,dfg,II-3\ncurve_left,dfg,I-1\n";

struct Sources {
    _tmp: tempfile::TempDir,
    g: PathBuf,
    b: PathBuf,
    d: PathBuf,
    out_root: PathBuf,
}

fn sources() -> Sources {
    let tmp = tempfile::tempdir().unwrap();
    let (g, b, d) = (
        tmp.path().join("gtsrb"),
        tmp.path().join("bts"),
        tmp.path().join("dfg"),
    );
    gtsrb(&g);
    bts(&b);
    dfg(&d);
    let out_root = tmp.path().join("data");
    Sources {
        g,
        b,
        d,
        out_root,
        _tmp: tmp,
    }
}

fn config(s: &Sources, out: &str, n_classes: usize) -> BuildConfig {
    BuildConfig {
        gtsrb: Some(s.g.clone()),
        dfg: Some(s.d.clone()),
        bts: Some(s.b.clone()),
        out: s.out_root.join(out),
        class_map: ClassMap::parse(MAP, Path::new("map.csv")).unwrap(),
        n_classes,
    }
}

#[test]
fn builds_all_three_sources_reproducibly_and_loads() {
    let s = sources();
    let m = build(&config(&s, "supertraffic-10", 3)).unwrap();
    // Candidates (train + test, >= 32x32): stop 2 gtsrb + 1 gtsrb test + 1 bts + 2 dfg = 6,
    // priority_road 3 bts + 1 dfg = 4, give_way 1 + 1 = 2, curve_left 1.
    assert_eq!(m.candidate_counts.get("stop"), Some(&6));
    assert_eq!(m.candidate_counts.get("priority_road"), Some(&4));
    assert_eq!(m.candidate_counts.get("give_way"), Some(&2));
    assert_eq!(m.candidate_counts.get("curve_left"), Some(&1));
    assert_eq!(m.class_names, vec!["give_way", "priority_road", "stop"]);
    assert_eq!(m.sources_used, vec!["gtsrb", "bts", "dfg"]);
    assert!(m.sources_missing.is_empty());
    assert_eq!((m.train.n_images, m.test.n_images), (8, 4));
    assert_eq!(m.train.per_source.get("gtsrb"), Some(&3));
    assert_eq!(m.train.per_source.get("bts"), Some(&3));
    assert_eq!(m.train.per_source.get("dfg"), Some(&2));
    assert_eq!(m.test.per_class.get("stop"), Some(&2));
    assert_eq!(m.dropped.too_small.get("gtsrb"), Some(&1));
    assert_eq!(m.dropped.too_small.get("dfg"), Some(&1));
    assert_eq!(m.dropped.unmapped.get("gtsrb"), Some(&1));
    assert_eq!(m.dropped.not_in_top_classes.get("dfg"), Some(&1));

    // A rebuild is byte-identical, manifest included.
    build(&config(&s, "again", 3)).unwrap();
    for f in [
        "manifest.json",
        "train-images-idx4-ubyte",
        "train-labels-idx1-ubyte",
        "test-images-idx4-ubyte",
        "test-labels-idx1-ubyte",
    ] {
        let a = std::fs::read(s.out_root.join("supertraffic-10").join(f)).unwrap();
        let b = std::fs::read(s.out_root.join("again").join(f)).unwrap();
        assert!(a == b, "{f} differs between builds");
    }

    // Load through the public API: official test = 4, train 8 -> 7 + 1 validation.
    let test = load(
        DatasetKind::SuperTraffic10,
        Split::Test,
        Some(&s.out_root),
        0,
    )
    .unwrap();
    assert_eq!(test.len(), 4);
    assert_eq!(test.image_shape(), (3, 32, 32));
    assert_eq!(test.class_names, vec!["give_way", "priority_road", "stop"]);
    let train = load(
        DatasetKind::SuperTraffic10,
        Split::Train,
        Some(&s.out_root),
        0,
    )
    .unwrap();
    let val = load(
        DatasetKind::SuperTraffic10,
        Split::Validation,
        Some(&s.out_root),
        0,
    )
    .unwrap();
    assert_eq!((train.len(), val.len()), (7, 1));
    // Crops hold only the sign's colour: GTSRB test image 0 (stop, red box inside a blue border).
    // Test order: gtsrb, bts, dfg; gtsrb test images sorted by path: 00000 (stop), 00001 (yield).
    let stop = test.image(0);
    assert_eq!(test.labels[0], 2);
    for c in 0..3 {
        assert!(
            stop[c * 1024..(c + 1) * 1024]
                .iter()
                .all(|&v| (v as i32 - RED[c] as i32).abs() <= 1),
            "channel {c}"
        );
    }
    assert_eq!(test.labels[1], 0);
    // DFG JPEG crop: close to red.
    let dfg_stop = test.image(3);
    assert!((dfg_stop[0] as i32 - 200).abs() < 12 && (dfg_stop[2048] as i32 - 10).abs() < 12);

    // Tampering is caught by the manifest's sha256.
    let f = s.out_root.join("supertraffic-10/test-images-idx4-ubyte");
    let mut bytes = std::fs::read(&f).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&f, bytes).unwrap();
    let e = load(
        DatasetKind::SuperTraffic10,
        Split::Test,
        Some(&s.out_root),
        0,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Checksum { .. }), "{e}");
}

#[test]
fn works_with_a_subset_of_sources_and_says_which() {
    let s = sources();
    let mut cfg = config(&s, "gtsrb-only", 2);
    cfg.bts = None;
    cfg.dfg = None;
    let m = build(&cfg).unwrap();
    assert_eq!(m.sources_used, vec!["gtsrb"]);
    assert_eq!(m.sources_missing, vec!["bts", "dfg"]);
    assert_eq!(m.class_names, vec!["give_way", "stop"]);
    // Too few sign types for the requested number of classes is an error, not a smaller dataset.
    cfg.n_classes = 3;
    let e = build(&cfg).unwrap_err().to_string();
    assert!(e.contains("expected 3, found 2"), "{e}");
    cfg.gtsrb = None;
    assert!(build(&cfg).unwrap_err().to_string().contains("--gtsrb"));
}

#[test]
fn the_checked_in_map_builds_from_all_sources() {
    let s = sources();
    let map = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/supertraffic10-classmap.csv");
    let mut cfg = config(&s, "full-map", 4);
    cfg.class_map = ClassMap::from_path(&map).unwrap();
    let m = build(&cfg).unwrap();
    // With the real map GTSRB 5 is speed_limit_80, DFG I-1 dangerous_curve_left.
    assert_eq!(
        m.class_names,
        vec!["dangerous_curve_left", "give_way", "priority_road", "stop"]
    );
    assert_eq!(m.class_map_sha256.len(), 64);
}

#[test]
fn corrupt_inputs_name_the_file() {
    let s = sources();
    // An unreadable image.
    let bad = s.b.join("Training/00061/02.ppm");
    std::fs::write(&bad, b"P6\n40 40\n255\nshort").unwrap();
    let e = build(&config(&s, "x", 3)).unwrap_err();
    assert!(
        matches!(&e, Error::Image { path, .. } if path == &bad),
        "{e}"
    );
    // An image whose size disagrees with its annotation.
    ppm(&bad, (41, 40), (0, 0, 41, 40), WHITE, WHITE);
    let e = build(&config(&s, "x", 3)).unwrap_err().to_string();
    assert!(
        e.contains("02.ppm") && e.contains("expected 40x40, found 41x40"),
        "{e}"
    );
    // A missing ground truth file.
    std::fs::remove_file(s.b.join("Training/00061/GT-00061.csv")).unwrap();
    let e = build(&config(&s, "x", 3)).unwrap_err().to_string();
    assert!(e.contains("GT-00061.csv"), "{e}");
    // A layout that is not BelgiumTSC at all.
    let mut cfg = config(&s, "x", 3);
    cfg.bts = Some(s.d.clone());
    assert!(build(&cfg)
        .unwrap_err()
        .to_string()
        .contains("Training/000NN/GT-000NN.csv"));
}
