//! The README's example (`examples/own_model.rs`) runs: two models of the user's own through
//! Table 2's suite on the installed Fashion-MNIST, journaled, resumed, compared by McNemar.

#[path = "../examples/own_model.rs"]
#[allow(dead_code)] // its `main`
mod own_model;

#[test]
fn the_own_model_example_runs_and_resumes() -> anyhow::Result<()> {
    if !std::path::Path::new("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
        .is_file()
    {
        eprintln!(
            "skipped: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)"
        );
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let table = own_model::run(dir.path(), 4)?;
    assert!(table.contains("| ALL L_inf |"), "{table}");
    assert!(table.contains("McNemar's test p-values, L_inf"), "{table}");
    let journal = dir
        .path()
        .join("own-model/smoke/journal/seed0/Means-100/linf-pgd.jsonl");
    assert_eq!(
        std::fs::read_to_string(&journal)?.lines().count(),
        4,
        "a record per sample"
    );
    // A second run resumes every journal and gives the same table.
    let again = own_model::run(dir.path(), 4)?;
    println!("{again}");
    let cells = |t: &str| {
        t.lines()
            .filter(|l| l.starts_with("| "))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(cells(&table), cells(&again));
    Ok(())
}
