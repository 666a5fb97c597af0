//! Journals written before the experiment engine moved out of xtask (commit 13e4c30: the smoke
//! Table 2's CNN column, with its checkpoint) resume under `eabs-eval` without a single sample
//! being recomputed, and give the outcomes that run recorded.

use eabs_eval::{DatasetKind, Experiment, Outcomes, Preset, RunSpec};
use eabs_models::ModelKind;
use std::path::Path;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/table2-smoke-13e4c30"
);

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

#[test]
fn journals_of_the_old_layout_resume_unchanged() -> anyhow::Result<()> {
    if !Path::new("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").is_file() {
        eprintln!(
            "skipped: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)"
        );
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let fixture = Path::new(FIXTURE);
    let cnn = "fashion-mnist/smoke/seed0/CNN";
    copy_dir(
        &fixture.join("checkpoints").join(cnn),
        &dir.path().join("checkpoints").join(cnn),
    )?;
    let journals = dir.path().join("results/table2/smoke/journal/seed0/CNN");
    copy_dir(&fixture.join("journal/seed0/CNN"), &journals)?;

    let mut spec = RunSpec::new(
        Preset::Smoke,
        0,
        &dir.path().join("results"),
        &dir.path().join("checkpoints"),
    );
    spec.train = false; // the finished training is reused, never redone
    let sizes = spec.eval_sizes();
    let mut exp = Experiment::open(&spec, "table2", DatasetKind::FashionMnist, sizes.n_samples)?;
    let obtained = exp.obtain(ModelKind::Cnn)?;
    let column = exp.column(0, "CNN", obtained, &sizes, None)?;
    let mut outcomes = Outcomes::new();
    exp.table_protocol(&column, &sizes, &mut outcomes)?;

    let recorded: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("cnn-outcomes.json"))?)?;
    assert_eq!(recorded["samples"], serde_json::json!(exp.subset));
    for (row, per_model) in &outcomes {
        assert_eq!(
            serde_json::json!(per_model["CNN"]),
            recorded["outcomes"][row.key()],
            "{}",
            row.key()
        );
    }
    assert_eq!(outcomes.len(), 9, "clean and the eight attack rows");
    // Resumed, not redone: every journal is byte for byte the old one.
    for entry in std::fs::read_dir(fixture.join("journal/seed0/CNN"))? {
        let entry = entry?;
        let now = std::fs::read(journals.join(entry.file_name()))?;
        assert_eq!(now, std::fs::read(entry.path())?, "{:?}", entry.file_name());
    }
    Ok(())
}
