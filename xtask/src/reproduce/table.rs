//! Tables 1-4: train (or reuse) CNN, Adv-L_inf, Adv-L_2, ABS and E-ABS on one dataset, attack each
//! with the paper's suite at the dataset's epsilons, and compare them with McNemar's test.

use anyhow::Result;
use eabs_attacks::{Eot, Norm};
use eabs_datasets::{load, DatasetKind, Split};
use eabs_models::{AdvNorm, Family, ModelKind};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::evaluate::{evaluate, select_subset};
use super::preset::{train_config, EvalSizes};
use super::provenance::{git_revision, unix_time, Provenance, Timer};
use super::report::{add_all_row, build, write_outputs, Outcomes};
use super::rows::{evaluate_clean, row_config, run_row, ATTACK_ROWS};
use super::zoo::{attack_dataset, obtain, to_evaluated, Obtained};
use super::ReproduceArgs;

/// The models of Tables 1-4, in column order.
pub const MODEL_KINDS: [ModelKind; 5] = [
    ModelKind::Cnn,
    ModelKind::AdvCnn(AdvNorm::Linf),
    ModelKind::AdvCnn(AdvNorm::L2),
    ModelKind::ABS,
    ModelKind::E_ABS,
];

/// Reproduces one of Tables 1-4.
pub fn run(table: &str, kind: DatasetKind, args: &ReproduceArgs, command: &str) -> Result<PathBuf> {
    let started = unix_time();
    // The revision of the code that runs: read now, since the tree may change during a long run.
    let commit = git_revision(Path::new("."));
    let device = args.device.device()?;
    let sizes = {
        let mut s = EvalSizes::of(args.preset);
        if let Some(n) = args.samples {
            s.n_samples = n;
        }
        s
    };
    let family = Family::from(kind);
    let data_dir = args.data_dir.as_deref();
    let out_dir = args.out.join(table).join(args.preset.as_str());
    // One run per results folder: a second fails at once, naming the first.
    let _lock = crate::lock::DirLock::acquire(&out_dir, "results folder")?;
    let ckpt_root = args.model_store(family);
    let journal_root = out_dir.join("journal").join(format!("seed{}", args.seed));
    // Stage times survive interruptions: a resumed run reports every invocation's time.
    let mut timer = Timer::resumable(&journal_root.join("stages.jsonl"), &commit)?;
    let (train, val, test) = timer.stage("load data", || {
        Ok((
            load(kind, Split::Train, data_dir, args.seed)?,
            load(kind, Split::Validation, data_dir, args.seed)?,
            load(kind, Split::Test, data_dir, args.seed)?,
        ))
    })?;
    let subset = select_subset(test.len(), sizes.n_samples, args.seed)?;
    // What the journals are bound to: the test images and labels, by content.
    let test_sha256 = test.content_sha256();
    let ds = attack_dataset(kind);

    let mut outcomes: Outcomes = BTreeMap::new();
    let names: Vec<String> = MODEL_KINDS.iter().map(|k| k.name().to_string()).collect();
    let mut checkpoint_files = Vec::new();
    for (m_idx, &mk) in MODEL_KINDS.iter().enumerate() {
        let Obtained { model, checkpoint } = obtain(
            mk,
            family,
            args.preset,
            args.seed,
            &ckpt_root,
            &train,
            &val,
            &device,
            &mut timer,
        )?;
        checkpoint_files.push(checkpoint.clone());
        let evaluated = to_evaluated(model, &sizes, None, args.seed.wrapping_add(m_idx as u64))?;
        let clf = evaluated.classifier();
        let stochastic = clf.is_stochastic();
        let journal = |row: &str| journal_root.join(mk.name()).join(format!("{row}.jsonl"));
        let label = format!("{} clean", mk.name());
        // What a journal may be resumed with: the model's training and inference settings, and
        // for attack rows the attack, its epsilon and sizes (not the batch size or the number of
        // samples, which the per-sample records check themselves).
        let mut attack_sizes = serde_json::to_value(&sizes)?;
        if let Some(o) = attack_sizes.as_object_mut() {
            o.remove("n_samples");
            o.remove("batch_size");
        }
        let model_settings = serde_json::json!({
            "model": mk.name(),
            "train": train_config(args.preset, family, mk, args.seed),
            "checkpoint_sha256": checkpoint.sha256,
            "test_data_sha256": test_sha256,
            "inference_sizes": { "n_candidates": sizes.n_candidates, "n_adam_steps": sizes.n_adam_steps },
            "seed": args.seed,
        });
        let clean = evaluate_clean(
            &mut timer,
            &label,
            &journal("clean"),
            &model_settings,
            &test,
            &subset,
            sizes.batch_size,
            &device,
            clf,
        )?;
        outcomes
            .entry(("none".into(), "clean".into()))
            .or_default()
            .insert(mk.name().into(), clean);
        for (r_idx, row) in ATTACK_ROWS.iter().enumerate() {
            let label = format!("{} {} {}", mk.name(), row.norm, row.attack);
            let seed = args.seed.wrapping_mul(1000).wrapping_add(r_idx as u64);
            let rec = timer.stage(&label, || {
                evaluate(
                    &journal(&format!("{}-{}", row.norm, row.attack)),
                    &serde_json::json!({
                        "row": format!("{}-{}", row.norm, row.attack),
                        "epsilon": ds.epsilon(if row.norm == "linf" { Norm::Linf } else { Norm::L2 }),
                        "attack_seed": seed,
                        "attack": row_config(*row, &sizes, ds, seed)?,
                        "sizes": attack_sizes,
                        "eot": stochastic,
                        "model": model_settings,
                    }),
                    &label,
                    &test,
                    &subset,
                    1,
                    sizes.batch_size,
                    &device,
                    &mut |xs, ys| {
                        if stochastic {
                            let eot = Eot::new(clf, sizes.eot_samples)?;
                            run_row(*row, &sizes, ds, &eot, xs, ys, seed)
                        } else {
                            run_row(*row, &sizes, ds, clf, xs, ys, seed)
                        }
                    },
                )
            })?;
            outcomes
                .entry((row.norm.into(), row.attack.into()))
                .or_default()
                .insert(mk.name().into(), rec.iter().map(|r| r.robust[0]).collect());
        }
    }
    add_all_row(&mut outcomes, "linf", &names)?;
    add_all_row(&mut outcomes, "l2", &names)?;

    let linf = ds.epsilon(Norm::Linf);
    let l2 = ds.epsilon(Norm::L2);
    let mut order: Vec<(String, String, f64)> = vec![("none".into(), "clean".into(), 0.0)];
    for (norm, eps) in [("linf", linf), ("l2", l2)] {
        for row in ATTACK_ROWS.iter().filter(|r| r.norm == norm) {
            order.push((norm.into(), row.attack.into(), eps));
        }
        order.push((norm.into(), "all".into(), eps));
    }
    let config = serde_json::json!({
        "table": table,
        "dataset": kind.name(),
        "preset": args.preset,
        "seed": args.seed,
        "sizes": sizes,
        "epsilons": { "linf": linf, "l2": l2 },
        "models": names,
        "train": MODEL_KINDS.iter().map(|&k| train_config(args.preset, family, k, args.seed)).collect::<Vec<_>>(),
        "checkpoints": ckpt_root,
        "checkpoint_files": checkpoint_files,
        "test_data_sha256": test_sha256,
    });
    let provenance = Provenance::of_reproduce(commit, args, started, timer, command);
    let paper = |m: &str, n: &str, a: &str| crate::paper::paper_accuracy(table, m, n, a);
    let report = build(
        table,
        kind.name(),
        &names,
        subset.clone(),
        &order,
        &outcomes,
        &paper,
        config.clone(),
        provenance,
    )?;
    let dataset_name = crate::paper::TABLES
        .iter()
        .find(|t| t.id == table)
        .map_or(kind.name(), |t| t.dataset);
    let title = format!(
        "{} ({dataset_name}): accuracy under attack",
        table.replace("table", "Table ")
    );
    write_outputs(&out_dir, &report, &outcomes, &title)?;
    Ok(out_dir)
}
