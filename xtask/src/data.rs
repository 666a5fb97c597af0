//! `cargo xtask data info <dataset>` and `cargo xtask data build-supertraffic`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use eabs_datasets::traffic::cache::read_manifest;
use eabs_datasets::traffic::{build, BuildConfig, ClassMap};
use eabs_datasets::{load_official, DatasetKind, SplitStats};
use serde::Serialize;

/// Data subcommands.
#[derive(Subcommand)]
pub enum DataCommand {
    /// Per split: number of images, image shape, per-class counts, pixel mean/std in [0, 1].
    Info(InfoArgs),
    /// Build SuperTraffic-10 from any subset of GTSRB, DFG and BelgiumTSC.
    BuildSupertraffic(BuildArgs),
}

/// Arguments of `data info`.
#[derive(Args)]
pub struct InfoArgs {
    /// mnist, fashion-mnist, svhn or supertraffic-10.
    dataset: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Data directory (else $EABS_DATA_DIR, system locations, ./data).
    #[arg(long, env = "EABS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Seed of the 10% validation split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Skip checksum verification (for modified copies).
    #[arg(long)]
    no_verify: bool,
}

/// Arguments of `data build-supertraffic`.
#[derive(Args)]
pub struct BuildArgs {
    /// GTSRB root (holds Final_Training/ and Final_Test/).
    #[arg(long)]
    gtsrb: Option<PathBuf>,
    /// DFG root (holds DFG-tsd-annot-json/ and JPEGImages/).
    #[arg(long)]
    dfg: Option<PathBuf>,
    /// BelgiumTSC root (holds Training/ and Testing/).
    #[arg(long)]
    bts: Option<PathBuf>,
    /// Output directory.
    #[arg(long, default_value = "data/supertraffic-10")]
    out: PathBuf,
    /// Class map (default: the checked-in datasets/supertraffic10-classmap.csv).
    #[arg(long)]
    class_map: Option<PathBuf>,
    /// Number of sign types to keep.
    #[arg(long, default_value_t = 10)]
    n_classes: usize,
}

/// The workspace root (xtask's parent directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Writes to stdout; a closed pipe (`| head`) ends the output quietly instead of panicking.
fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

#[derive(Serialize)]
struct Info {
    dataset: String,
    dir: String,
    /// SuperTraffic-10 only: the sources its build used.
    #[serde(skip_serializing_if = "Option::is_none")]
    sources_used: Option<Vec<String>>,
    checksums_verified: bool,
    validation_seed: u64,
    splits: Vec<SplitStats>,
}

/// Runs a data subcommand.
pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Info(a) => info(&a),
        DataCommand::BuildSupertraffic(a) => build_supertraffic(&a),
    }
}

fn info(a: &InfoArgs) -> anyhow::Result<()> {
    let kind: DatasetKind = a.dataset.parse()?;
    let official = load_official(kind, a.data_dir.as_deref(), !a.no_verify)?;
    let (train, val) = official.train.split_validation(a.seed);
    let splits = vec![
        SplitStats::compute(&official.train, "official-train"),
        SplitStats::compute(&train, "train"),
        SplitStats::compute(&val, "validation"),
        SplitStats::compute(&official.test, "test"),
    ];
    let sources_used = match kind {
        DatasetKind::SuperTraffic10 => Some(read_manifest(&official.dir)?.sources_used),
        _ => None,
    };
    let info = Info {
        dataset: kind.name().into(),
        dir: official.dir.display().to_string(),
        sources_used,
        checksums_verified: !a.no_verify,
        validation_seed: a.seed,
        splits,
    };
    let text = if a.json {
        format!("{}\n", serde_json::to_string_pretty(&info)?)
    } else {
        render_table(&info)
    };
    write_stdout(&text)
}

fn render_table(info: &Info) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let verified = if info.checksums_verified {
        "checksums verified"
    } else {
        "checksums NOT verified"
    };
    let _ = writeln!(
        s,
        "{} from {} ({verified}; validation = seeded 10% of official train, seed {})",
        info.dataset, info.dir, info.validation_seed
    );
    if let Some(src) = &info.sources_used {
        let _ = writeln!(s, "built from: {}", src.join(", "));
    }
    let _ = writeln!(
        s,
        "{:<16} {:>8} {:>10} {:>8} {:>8}  per-channel mean / std",
        "split", "images", "shape", "mean", "std"
    );
    for sp in &info.splits {
        let [c, h, w] = sp.image_shape;
        let chan = if c > 1 {
            let m: Vec<String> = sp.channel_mean.iter().map(|v| format!("{v:.4}")).collect();
            let d: Vec<String> = sp.channel_std.iter().map(|v| format!("{v:.4}")).collect();
            format!("[{}] / [{}]", m.join(", "), d.join(", "))
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "{:<16} {:>8} {:>10} {:>8.4} {:>8.4}  {chan}",
            sp.split,
            sp.n_images,
            format!("{c}x{h}x{w}"),
            sp.mean,
            sp.std
        );
    }
    let _ = writeln!(s, "\nimages per class:");
    let _ = write!(s, "{:<4} {:<34}", "", "class");
    for sp in &info.splits {
        let _ = write!(s, " {:>14}", sp.split);
    }
    let _ = writeln!(s);
    if let Some(first) = info.splits.first() {
        for (i, cc) in first.class_counts.iter().enumerate() {
            let name = &cc.name;
            let _ = write!(s, "{i:<4} {name:<34}");
            for sp in &info.splits {
                let _ = write!(
                    s,
                    " {:>14}",
                    sp.class_counts.get(i).map(|c| c.count).unwrap_or(0)
                );
            }
            let _ = writeln!(s);
        }
    }
    s
}

fn build_supertraffic(a: &BuildArgs) -> anyhow::Result<()> {
    let map_path = a
        .class_map
        .clone()
        .unwrap_or_else(|| workspace_root().join("datasets/supertraffic10-classmap.csv"));
    let class_map = ClassMap::from_path(&map_path)?;
    let cfg = BuildConfig {
        gtsrb: a.gtsrb.clone(),
        dfg: a.dfg.clone(),
        bts: a.bts.clone(),
        out: a.out.clone(),
        class_map,
        n_classes: a.n_classes,
    };
    let m = build(&cfg)
        .with_context(|| format!("building SuperTraffic-10 into {}", a.out.display()))?;
    println!("SuperTraffic-10 written to {}", a.out.display());
    println!(
        "sources used: {}; missing: {}",
        m.sources_used.join(", "),
        if m.sources_missing.is_empty() {
            "none".into()
        } else {
            m.sources_missing.join(", ")
        }
    );
    println!(
        "class map: {} (sha256 {})",
        map_path.display(),
        m.class_map_sha256
    );
    println!("{:<4} {:<34} {:>8} {:>8}", "", "class", "train", "test");
    for (i, c) in m.class_names.iter().enumerate() {
        println!(
            "{i:<4} {c:<34} {:>8} {:>8}",
            m.train.per_class.get(c).unwrap_or(&0),
            m.test.per_class.get(c).unwrap_or(&0)
        );
    }
    println!(
        "per source (train/test): {:?} / {:?}",
        m.train.per_source, m.test.per_source
    );
    println!(
        "dropped: too small {:?}, unmapped {:?}, not in top {} {:?}",
        m.dropped.too_small, m.dropped.unmapped, a.n_classes, m.dropped.not_in_top_classes
    );
    for f in &m.files {
        println!("{}  {}", f.sha256.as_deref().unwrap_or("-"), f.name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use eabs_datasets::{Dataset, Split};

    #[test]
    fn table_shows_counts_and_moments() {
        // Three 1x1x2 RGB-less images: pixels (0, 255), (255, 255), (0, 0): mean 0.5, std 0.5.
        let d = Dataset::new(
            "toy",
            Split::Test,
            vec![0, 255, 255, 255, 0, 0],
            vec![0, 1, 1],
            (1, 1, 2),
            vec!["cat".into(), "dog".into()],
            Path::new("toy"),
        )
        .unwrap();
        let info = Info {
            dataset: "toy".into(),
            dir: "/x".into(),
            sources_used: Some(vec!["gtsrb".into()]),
            checksums_verified: true,
            validation_seed: 3,
            splits: vec![SplitStats::compute(&d, "test")],
        };
        let t = render_table(&info);
        assert!(
            t.contains("test                    3      1x1x2   0.5000   0.5000"),
            "{t}"
        );
        assert!(
            t.contains("dog") && t.contains("built from: gtsrb") && t.contains("seed 3"),
            "{t}"
        );
        let j = serde_json::to_value(&info).unwrap();
        assert_eq!(j["splits"][0]["class_counts"][1]["count"], 2);
    }
}
