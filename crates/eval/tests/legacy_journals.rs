//! Journals written before the experiment engine moved out of xtask (commit 13e4c30: the smoke
//! Table 2's CNN column, with its checkpoint) resume under `eabs-eval` without a single sample
//! being recomputed, and give the outcomes that run recorded (each attack row now also requiring
//! the clean verdict). The rows whose attack changed since (PGD, which now ascends the margin
//! too; CW, whose early abort is now Foolbox's) are refused, naming what changed.

use eabs_eval::suite::and_clean;
use eabs_eval::{AttackKind, DatasetKind, Experiment, Preset, RunSpec, ATTACK_ROWS};
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
    let recorded: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("cnn-outcomes.json"))?)?;
    assert_eq!(recorded["samples"], serde_json::json!(exp.subset));
    let as_bools = |v: &serde_json::Value| -> Vec<bool> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_bool().unwrap())
            .collect()
    };
    let clean = exp.clean(&column, &sizes)?;
    assert_eq!(clean, as_bools(&recorded["outcomes"]["none-clean"]));
    let mut resumed = vec!["clean.jsonl".to_string()];
    for (i, row) in ATTACK_ROWS.iter().enumerate() {
        let result = exp.suite_row(&column, *row, i, &sizes);
        if row.attack == AttackKind::Pgd || row.attack == AttackKind::Cw {
            let err = format!(
                "{:#}",
                result.expect_err("a changed attack must not resume")
            );
            assert!(
                err.contains("was written by an evaluation with other inputs")
                    && err.contains("attack"),
                "{row}: {err}"
            );
            continue;
        }
        let expect = and_clean(&clean, &as_bools(&recorded["outcomes"][row.key()]));
        assert_eq!(result?, expect, "{row}");
        resumed.push(format!("{}.jsonl", row.key()));
    }
    assert_eq!(resumed.len(), 6, "clean and five unchanged attack rows");
    // Resumed, not redone: every journal is byte for byte the old one.
    for name in &resumed {
        let now = std::fs::read(journals.join(name))?;
        let then = std::fs::read(fixture.join("journal/seed0/CNN").join(name))?;
        assert_eq!(now, then, "{name}");
    }
    Ok(())
}
